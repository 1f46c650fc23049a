//! The drivers that run `db`'s SQL for the servers.
//!
//! - [`sqlx_pool`]: async, for the epoll and io_uring variants.
//! - [`blocking`]: the `postgres` crate, for thread-per-request and thread-pool.
//!
//! The SQL itself lives in the `db` crate; a driver only prepares and runs it.

pub mod blocking;
pub mod sqlx_pool;

/// How the drivers talk to PostgreSQL: the knobs of the database workshop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    /// Statements prepared once per connection (one round trip per query), or parsed
    /// anew for every query (a Parse/Describe round trip first: two per query).
    pub prepared: bool,
    /// `/updates` writes with one bulk UPDATE, or one UPDATE per row.
    pub bulk_updates: bool,
    /// `/queries` sends all its queries at once over several connections (async variants
    /// only), or one after another on one connection.
    pub queries_in_flight: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            prepared: true,
            bulk_updates: true,
            queries_in_flight: false,
        }
    }
}
