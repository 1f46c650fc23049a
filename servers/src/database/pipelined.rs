//! The async variants' other database client (`--db-client pipelined`): tokio-postgres
//! connections that many requests share at once, with their queries pipelined.
//!
//! # The lesson
//! A pool of N connections (the [`super::sqlx_pool`] default) lends each request a
//! connection of its own: the request sends one query, waits for its answer, sends the
//! next. Each query then costs, on the server's side, a `sendto` plus a `recvfrom` (and
//! usually an `epoll_wait`), and on PostgreSQL's side a backend that was asleep in
//! `epoll_wait` must be woken, scheduled, read one message, answer, and sleep again: a
//! context switch and a wake-up per query, which is where most of PostgreSQL's CPU goes
//! at tens of thousands of queries a second on 2 cores.
//!
//! Here a runtime thread owns **one** connection that every request on that thread
//! shares. tokio-postgres writes a query's Bind/Execute/Sync when its future is first
//! polled and matches answers to queries in order, so the queries of all the requests
//! that are in flight at that moment leave in one `write` and their answers come back in
//! one or a few reads. The backend wakes once for the whole batch, finds several queries in
//! its socket buffer, and answers them without sleeping in between. Fewer wake-ups and
//! fewer syscalls per query on both sides; each query is still its own statement with its
//! own Sync (an implicit transaction of its own), as `shared/spec/workloads.md` asks: no
//! statements are merged.
//!
//! A request's own queries (`/queries`, the reads of `/updates`) are all issued before any
//! is awaited (a join), so a 20-query request is one batch, not 20 round trips. `/updates`
//! sends its bulk UPDATE in the same batch, after its reads: the new numbers do not depend
//! on what the reads return, so the request is one round trip, not two, and PostgreSQL
//! still runs every read before the write (one connection's statements run in order).
//!
//! # Which connection
//! io-uring builds one [`Pipelined`] per tokio-uring runtime, with one connection: its
//! socket is driven by that runtime's epoll, and only that thread touches it. epoll builds
//! one [`Pipelined`] with one connection per worker thread, and requests take them
//! round-robin. Not "the current worker's": tokio's work stealing moves tasks (the
//! request's and the connection's driver task alike) between workers, so a per-worker pick
//! buys no locality, while round-robin keeps the connections equally loaded whatever the
//! scheduler does.
//!
//! # Faults
//! A connection is opened on first use, and statements are prepared once when it opens.
//! When it breaks (the database went away), its client reports closed, in-flight queries
//! fail, and the route answers 503; the next request reconnects. Reconnecting is
//! serialised per connection, so a burst of requests during an outage makes one connect
//! attempt at a time, each bounded by [`CONNECT_TIMEOUT`]; `app::DATABASE_DEADLINE` bounds
//! every request as for the pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::future::try_join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::Knobs;
use crate::app::{bulk_update_arrays, AsyncStore, DatabaseError};
use crate::render::{Fortune, World};
use db::sql;

/// How long connecting may take (a firewalled host would otherwise hang for minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared PostgreSQL connections with pipelined queries. See the module docs.
pub struct Pipelined {
    config: Config,
    knobs: Knobs,
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

/// One shared connection, opened on demand.
struct Slot {
    /// The open connection, if any: cloned out under a short lock, never held across an await.
    current: Mutex<Option<Arc<Connection>>>,
    /// Held while (re)connecting, so that one attempt runs at a time.
    connecting: tokio::sync::Mutex<()>,
}

/// A client and its statements, prepared once when the connection opened.
struct Connection {
    client: Client,
    statements: Statements,
}

struct Statements {
    world: Statement,
    fortunes: Statement,
    update_bulk: Statement,
    update_one: Statement,
}

impl Pipelined {
    /// `connections` shared connections, opened on first use: the server starts even
    /// when the database is down.
    pub fn new(url: &str, connections: usize, knobs: Knobs) -> Result<Self> {
        let mut config: Config = url
            .parse()
            .with_context(|| format!("invalid database URL {}", db::redact(url)))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let slots = (0..connections.max(1))
            .map(|_| Slot {
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        Ok(Pipelined {
            config,
            knobs,
            slots,
            next: AtomicUsize::new(0),
        })
    }

    /// Tries the database at start-up until it answers (the server serves meanwhile).
    pub async fn wait_until_reachable(&self, url: String) {
        for attempt in 0.. {
            if crate::app::log_database_attempt(&url, attempt, &self.ping().await) {
                return;
            }
            tokio::time::sleep(crate::app::DATABASE_RETRY).await;
        }
    }

    /// The next connection in turn, opened (again) if it is not open.
    async fn connection(&self) -> Result<Arc<Connection>, DatabaseError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(open) = slot.open() {
            return Ok(open);
        }
        let _connecting = slot.connecting.lock().await;
        // Another request may have reconnected while this one waited.
        if let Some(open) = slot.open() {
            return Ok(open);
        }
        let connection = Arc::new(self.connect().await?);
        *slot.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(&self) -> Result<Connection, DatabaseError> {
        let (client, driver) = self.config.connect(NoTls).await.map_err(driver_error)?;
        // The driver task owns the socket: it writes queued queries and reads answers. It
        // runs on the runtime that opened the connection (the one tokio-uring thread, for
        // io-uring) and ends when the socket breaks or the client is dropped.
        tokio::spawn(async move {
            if let Err(error) = driver.await {
                tracing::debug!("database connection closed: {error}");
            }
        });
        // The four statements go out together and cost one round trip.
        let (world, fortunes, update_bulk, update_one) = futures_util::future::try_join4(
            client.prepare(sql::SELECT_WORLD),
            client.prepare(sql::SELECT_FORTUNES),
            client.prepare(sql::UPDATE_WORLDS_BULK),
            client.prepare(sql::UPDATE_WORLD_ONE),
        )
        .await
        .map_err(driver_error)?;
        Ok(Connection {
            client,
            statements: Statements {
                world,
                fortunes,
                update_bulk,
                update_one,
            },
        })
    }
}

impl Slot {
    fn open(&self) -> Option<Arc<Connection>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|c| !c.client.is_closed()).cloned()
    }
}

impl Connection {
    /// Runs `statement`, prepared, or (`--prepared off`) parsed anew from its SQL: an
    /// unnamed statement, one more round trip.
    async fn query(
        &self,
        prepared: bool,
        statement: &Statement,
        text: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DatabaseError> {
        let rows = if prepared {
            self.client.query(statement, params).await
        } else {
            self.client.query(text, params).await
        };
        rows.map_err(driver_error)
    }

    /// One row by id: read straight from the answer's stream, without collecting a `Vec`
    /// of rows for it (20 of these per `/queries?queries=20` request).
    async fn world(&self, prepared: bool, id: i32) -> Result<World, DatabaseError> {
        let row = if prepared {
            self.client.query_opt(&self.statements.world, &[&id]).await
        } else {
            self.client.query_opt(sql::SELECT_WORLD, &[&id]).await
        };
        let row = row
            .map_err(driver_error)?
            .ok_or_else(|| DatabaseError::Driver(format!("no world row {id}")))?;
        Ok(World {
            id: column(&row, 0)?,
            random_number: column(&row, 1)?,
        })
    }

    async fn update_one(&self, prepared: bool, id: i32, number: i32) -> Result<(), DatabaseError> {
        let statement = &self.statements.update_one;
        self.query(prepared, statement, sql::UPDATE_WORLD_ONE, &[&id, &number])
            .await
            .map(drop)
    }

    /// Every query issued before any is awaited: one batch on the wire.
    async fn worlds(&self, prepared: bool, ids: &[i32]) -> Result<Vec<World>, DatabaseError> {
        try_join_all(ids.iter().map(|&id| self.world(prepared, id))).await
    }
}

fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, DatabaseError> {
    row.try_get(index)
        .map_err(|error| DatabaseError::Driver(format!("unexpected column {index}: {error}")))
}

fn driver_error(error: tokio_postgres::Error) -> DatabaseError {
    let text = match error.as_db_error() {
        Some(db) => format!("database error: {}", db.message()),
        None => error.to_string(),
    };
    DatabaseError::Driver(text)
}

impl AsyncStore for Pipelined {
    async fn world(&self, id: i32) -> Result<World, DatabaseError> {
        let connection = self.connection().await?;
        connection.world(self.knobs.prepared, id).await
    }

    async fn worlds(&self, ids: &[i32]) -> Result<Vec<World>, DatabaseError> {
        let connection = self.connection().await?;
        connection.worlds(self.knobs.prepared, ids).await
    }

    async fn fortunes(&self) -> Result<Vec<Fortune>, DatabaseError> {
        let connection = self.connection().await?;
        let rows = connection
            .query(
                self.knobs.prepared,
                &connection.statements.fortunes,
                sql::SELECT_FORTUNES,
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Fortune {
                    id: column(row, 0)?,
                    message: column(row, 1)?,
                })
            })
            .collect()
    }

    async fn update(&self, changes: &[World]) -> Result<Vec<World>, DatabaseError> {
        let connection = self.connection().await?;
        let prepared = self.knobs.prepared;
        let ids: Vec<i32> = changes.iter().map(|w| w.id).collect();
        let (sorted_ids, numbers) = bulk_update_arrays(changes);
        if prepared && self.knobs.bulk_updates {
            // One round trip: the reads and then the bulk write, in one batch. The new
            // numbers do not depend on what the reads return, and PostgreSQL runs one
            // connection's statements in the order they were sent, so every row is still
            // read before it is written; the join polls the reads first, which is the order
            // tokio-postgres sends them in. A failed read fails the request (503), as it
            // would have before the write.
            let params: [&(dyn ToSql + Sync); 2] = [&sorted_ids, &numbers];
            let write = connection.query(
                prepared,
                &connection.statements.update_bulk,
                sql::UPDATE_WORLDS_BULK,
                &params,
            );
            futures_util::future::try_join(connection.worlds(prepared, &ids), write).await?;
            return Ok(changes.to_vec());
        }
        connection.worlds(prepared, &ids).await?;
        let (ids, numbers) = (sorted_ids, numbers);
        if self.knobs.bulk_updates {
            connection
                .query(
                    prepared,
                    &connection.statements.update_bulk,
                    sql::UPDATE_WORLDS_BULK,
                    &[&ids, &numbers],
                )
                .await?;
        } else {
            // Each row its own statement and Sync, all in flight together; in id order, so
            // that concurrent requests take row locks in the same order.
            try_join_all(
                ids.iter()
                    .zip(&numbers)
                    .map(|(&id, &number)| connection.update_one(prepared, id, number)),
            )
            .await?;
        }
        Ok(changes.to_vec())
    }

    async fn ping(&self) -> Result<(), DatabaseError> {
        let connection = self.connection().await?;
        connection
            .client
            .simple_query(sql::PING)
            .await
            .map_err(driver_error)?;
        Ok(())
    }

    /// Connections open now as "in use", none "idle": a shared connection is never lent
    /// out, so the pool's two states do not apply; the open count is what is worth seeing.
    fn pool_state(&self) -> (usize, usize) {
        let open = self.slots.iter().filter(|s| s.open().is_some()).count();
        (open, 0)
    }
}
