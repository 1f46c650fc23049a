//! The async variants' database: sqlx `PgConnection`s in a small pool of our own.
//!
//! Why not `sqlx::PgPool`? It pings every connection it takes back (a Sync message and a
//! wait for ReadyForQuery, see `sqlx-core`'s `return_to_pool`), which adds a `sendto`, a
//! `recvfrom` and usually an `epoll_wait` to every request: exactly the kind of hidden
//! round trip this lab exists to show. This pool hands connections back as they are and
//! drops one only when an operation on it failed or was cancelled half-way (its protocol
//! state is then unknown); the next request connects afresh, which is also how the
//! servers recover by themselves when the database comes back.
//!
//! Statements are prepared once per connection (sqlx caches them), so a query is one
//! Bind/Execute/Sync round trip. sqlx cannot pipeline several queries on one connection,
//! so `/queries` sends its queries one after another on one connection: one round trip
//! per query, never more.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::Knobs;
use crate::app::{bulk_update_arrays, AsyncStore, DatabaseError};
use crate::render::{Fortune, World};
use db::sql;

/// How long a request waits for a free connection before it answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take (a firewalled host would otherwise hang for minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct SqlxPool {
    options: PgConnectOptions,
    knobs: Knobs,
    idle: Mutex<Vec<PgConnection>>,
    permits: Semaphore,
    size: usize,
}

impl SqlxPool {
    /// A pool of at most `size` connections, opened on first use: the server starts even
    /// when the database is down.
    pub fn new(url: &str, size: usize, knobs: Knobs) -> Result<Self> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .with_context(|| format!("invalid database URL {}", db::redact(url)))?
            .disable_statement_logging();
        Ok(SqlxPool {
            options,
            knobs,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
            size,
        })
    }

    async fn acquire(&self) -> Result<Lease<'_>, DatabaseError> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| DatabaseError::Driver(format!("all {} connections busy", self.size)))?
            .map_err(|_| DatabaseError::Driver("pool closed".into()))?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options))
                    .await
                    .map_err(|_| DatabaseError::Driver("connect timed out".into()))?
                    .map_err(driver_error)?
            }
        };
        Ok(Lease {
            pool: self,
            conn: Some(conn),
            _permit: permit,
        })
    }
}

/// A borrowed connection. [`Lease::release`] returns it to the pool; dropping the lease
/// without releasing (an error, a cancelled request) closes the connection instead.
struct Lease<'a> {
    pool: &'a SqlxPool,
    conn: Option<PgConnection>,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until released")
    }

    fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}

impl SqlxPool {
    /// Tries the database at start-up until it answers (the server serves meanwhile).
    pub async fn wait_until_reachable(&self, url: String) {
        for attempt in 0.. {
            if crate::app::log_database_attempt(&url, attempt, &self.ping().await) {
                return;
            }
            tokio::time::sleep(crate::app::DATABASE_RETRY).await;
        }
    }
}

fn driver_error(error: sqlx::Error) -> DatabaseError {
    let text = match &error {
        sqlx::Error::Io(io) => format!("i/o error: {io}"),
        sqlx::Error::Database(db) => format!("database error: {}", db.message()),
        other => other.to_string(),
    };
    DatabaseError::Driver(text)
}

impl AsyncStore for SqlxPool {
    async fn world(&self, id: i32) -> Result<World, DatabaseError> {
        let mut lease = self.acquire().await?;
        let world = select_world(lease.conn(), id, self.knobs.prepared).await?;
        lease.release();
        Ok(world)
    }

    async fn worlds(&self, ids: &[i32]) -> Result<Vec<World>, DatabaseError> {
        if self.knobs.queries_in_flight {
            // Every query at once, each on a connection of its own: sqlx cannot pipeline
            // several queries on one connection.
            return futures_util::future::try_join_all(ids.iter().map(|&id| self.world(id))).await;
        }
        let mut lease = self.acquire().await?;
        let mut worlds = Vec::with_capacity(ids.len());
        for &id in ids {
            worlds.push(select_world(lease.conn(), id, self.knobs.prepared).await?);
        }
        lease.release();
        Ok(worlds)
    }

    async fn fortunes(&self) -> Result<Vec<Fortune>, DatabaseError> {
        let mut lease = self.acquire().await?;
        let rows: Vec<(i32, String)> = sqlx::query_as(sql::SELECT_FORTUNES)
            .persistent(self.knobs.prepared)
            .fetch_all(&mut *lease.conn())
            .await
            .map_err(driver_error)?;
        lease.release();
        Ok(rows
            .into_iter()
            .map(|(id, message)| Fortune { id, message })
            .collect())
    }

    async fn update(&self, changes: &[World]) -> Result<Vec<World>, DatabaseError> {
        let mut lease = self.acquire().await?;
        for change in changes {
            select_world(lease.conn(), change.id, self.knobs.prepared).await?;
        }
        if self.knobs.bulk_updates {
            let (ids, numbers) = bulk_update_arrays(changes);
            sqlx::query(sql::UPDATE_WORLDS_BULK)
                .persistent(self.knobs.prepared)
                .bind(&ids)
                .bind(&numbers)
                .execute(&mut *lease.conn())
                .await
                .map_err(driver_error)?;
        } else {
            let (ids, numbers) = bulk_update_arrays(changes);
            for (id, number) in ids.iter().zip(&numbers) {
                sqlx::query(sql::UPDATE_WORLD_ONE)
                    .persistent(self.knobs.prepared)
                    .bind(id)
                    .bind(number)
                    .execute(&mut *lease.conn())
                    .await
                    .map_err(driver_error)?;
            }
        }
        lease.release();
        Ok(changes.to_vec())
    }

    async fn ping(&self) -> Result<(), DatabaseError> {
        let mut lease = self.acquire().await?;
        sqlx::query(sql::PING)
            .execute(&mut *lease.conn())
            .await
            .map_err(driver_error)?;
        lease.release();
        Ok(())
    }

    fn pool_state(&self) -> (usize, usize) {
        let idle = self.idle.lock().map(|i| i.len()).unwrap_or(0);
        let in_use = self.size - self.permits.available_permits();
        (in_use, idle)
    }
}

/// `prepared: false` makes sqlx parse the statement anew (an unnamed statement: a
/// Parse/Describe round trip before the Bind/Execute one).
async fn select_world(
    conn: &mut PgConnection,
    id: i32,
    prepared: bool,
) -> Result<World, DatabaseError> {
    let (id, random_number): (i32, i32) = sqlx::query_as(sql::SELECT_WORLD)
        .persistent(prepared)
        .bind(id)
        .fetch_one(conn)
        .await
        .map_err(driver_error)?;
    Ok(World { id, random_number })
}
