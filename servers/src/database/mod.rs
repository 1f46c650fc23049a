//! The drivers that run `db`'s SQL for the servers.
//!
//! - [`sqlx_pool`]: async, for the epoll and io_uring variants.
//! - [`blocking`]: the `postgres` crate, for thread-per-request and thread-pool.
//!
//! The SQL itself lives in the `db` crate; a driver only prepares and runs it.

pub mod blocking;
pub mod sqlx_pool;
