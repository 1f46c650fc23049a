//! The drivers that run `db`'s SQL for the servers.
//!
//! - [`sqlx_pool`]: async, for the epoll and io_uring variants (the default).
//! - [`pipelined`]: async, this project's own client (over `postgres-protocol`):
//!   connections shared by all requests with their queries pipelined (`--db-client
//!   pipelined`).
//! - [`blocking`]: the `postgres` crate, for thread-per-request and thread-pool.
//!
//! The SQL itself lives in the `db` crate; a driver only prepares and runs it.

use crate::app::{AsyncStore, DatabaseError};
use crate::render::{Fortune, World};

pub mod blocking;
pub mod pipelined;
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
    /// The pipelined client's reader is woken once the oldest waiting request's answers
    /// can all be in (`SO_RCVLOWAT`), not at each answer (`pipelined::connection::Wake`).
    pub wake_per_request: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            prepared: true,
            bulk_updates: true,
            queries_in_flight: false,
            wake_per_request: false,
        }
    }
}

/// Which client the async variants use (`--db-client`).
pub enum AsyncDatabase {
    /// A pool of connections, each lent to one request at a time (the default).
    Sqlx(sqlx_pool::SqlxPool),
    /// Connections shared by every request, queries pipelined.
    Pipelined(pipelined::Pipelined),
}

impl AsyncDatabase {
    /// `pool_size` connections for sqlx, `shared` connections for the pipelined client.
    pub fn new(
        client: crate::cli::DbClient,
        url: &str,
        pool_size: usize,
        shared: usize,
        knobs: Knobs,
    ) -> anyhow::Result<Self> {
        Ok(match client {
            crate::cli::DbClient::Sqlx => {
                AsyncDatabase::Sqlx(sqlx_pool::SqlxPool::new(url, pool_size, knobs)?)
            }
            crate::cli::DbClient::Pipelined => {
                AsyncDatabase::Pipelined(pipelined::Pipelined::new(url, shared, knobs)?)
            }
        })
    }

    /// Tries the database at start-up until it answers (the server serves meanwhile).
    pub async fn wait_until_reachable(&self, url: String) {
        match self {
            AsyncDatabase::Sqlx(pool) => pool.wait_until_reachable(url).await,
            AsyncDatabase::Pipelined(shared) => shared.wait_until_reachable(url).await,
        }
    }
}

impl AsyncStore for AsyncDatabase {
    async fn world(&self, id: i32) -> Result<World, DatabaseError> {
        match self {
            AsyncDatabase::Sqlx(pool) => pool.world(id).await,
            AsyncDatabase::Pipelined(shared) => shared.world(id).await,
        }
    }

    async fn worlds(&self, ids: &[i32]) -> Result<Vec<World>, DatabaseError> {
        match self {
            AsyncDatabase::Sqlx(pool) => pool.worlds(ids).await,
            AsyncDatabase::Pipelined(shared) => shared.worlds(ids).await,
        }
    }

    async fn fortunes(&self) -> Result<Vec<Fortune>, DatabaseError> {
        match self {
            AsyncDatabase::Sqlx(pool) => pool.fortunes().await,
            AsyncDatabase::Pipelined(shared) => shared.fortunes().await,
        }
    }

    async fn update(&self, changes: &[World]) -> Result<Vec<World>, DatabaseError> {
        match self {
            AsyncDatabase::Sqlx(pool) => pool.update(changes).await,
            AsyncDatabase::Pipelined(shared) => shared.update(changes).await,
        }
    }

    async fn ping(&self) -> Result<(), DatabaseError> {
        match self {
            AsyncDatabase::Sqlx(pool) => pool.ping().await,
            AsyncDatabase::Pipelined(shared) => shared.ping().await,
        }
    }

    fn pool_state(&self) -> (usize, usize) {
        match self {
            AsyncDatabase::Sqlx(pool) => pool.pool_state(),
            AsyncDatabase::Pipelined(shared) => shared.pool_state(),
        }
    }

    fn keeps_deadline(&self) -> bool {
        match self {
            AsyncDatabase::Sqlx(pool) => pool.keeps_deadline(),
            AsyncDatabase::Pipelined(shared) => shared.keeps_deadline(),
        }
    }
}
