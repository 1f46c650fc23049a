//! The drivers that run `db`'s SQL for the servers.
//!
//! - [`sqlx_pool`]: async, for the epoll and io_uring variants.
//!
//! The SQL itself lives in the `db` crate; a driver only prepares and runs it.

pub mod sqlx_pool;
