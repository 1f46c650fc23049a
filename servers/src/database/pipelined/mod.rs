//! The async variants' other database client (`--db-client pipelined`): PostgreSQL
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
//! shares. A request appends its query's Bind/Execute/Sync to the connection's output
//! buffer when it asks ([`connection`]), and a writer task sends what has accumulated and
//! answers are matched to queries in order, so the queries of all the requests that ran
//! since the last write leave in one `write` and their answers come back in one or a few
//! reads. The backend wakes once for the whole batch, finds several queries in
//! its socket buffer, and answers them without sleeping in between. Fewer wake-ups and
//! fewer syscalls per query on both sides; each query is still its own statement with its
//! own Sync (an implicit transaction of its own), as `shared/spec/workloads.md` asks: no
//! statements are merged.
//!
//! A request's own queries (`/queries`, the reads of `/updates`) are all queued before any
//! is awaited, so a 20-query request is one batch, not 20 round trips. `/updates`
//! sends its bulk UPDATE in the same batch, after its reads: the new numbers do not depend
//! on what the reads return, so the request is one round trip, not two, and PostgreSQL
//! still runs every read before the write (one connection's statements run in order).
//!
//! PostgreSQL still flushes at every Sync, so the answers come back one segment each, and
//! a reader asleep in `epoll_wait` is woken by every one. `--db-wake per-request` sets the
//! socket's receive low-water mark (`SO_RCVLOWAT`) to the fewest bytes the oldest waiting
//! request's answers can take, so the kernel wakes the reader when that request can be
//! complete: a few wake-ups for a twenty-query request instead of one per answer
//! ([`connection::Wake`]).
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
//! # The client
//! [`connection`] is the pipeline (a lock, an output buffer, a queue of reply slots, a
//! reader and a writer task), [`wire`] the messages, [`startup`] connecting and
//! authenticating. It is this project's own rather than tokio-postgres because the lesson
//! is the batching, and tokio-postgres's per-query machinery cost more CPU than PostgreSQL
//! spent answering (see [`connection`] and docs/benchmarks.md); the wire format and the
//! authentication come from `postgres-protocol`, tokio-postgres's own codec.
//!
//! # Faults
//! A connection is opened on first use, and statements are prepared once when it opens.
//! When it breaks (the database went away), it reports closed, in-flight queries fail,
//! and the route answers 503; the next request reconnects. Reconnecting is
//! serialised per connection, so a burst of requests during an outage makes one connect
//! attempt at a time, each bounded by 2 s; `app::DATABASE_DEADLINE` bounds
//! every request as for the pool.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures_util::future::try_join_all;
use tokio_postgres::Config;

use super::Knobs;
use crate::app::{bulk_update_arrays, AsyncStore, DatabaseError};
use crate::render::{Fortune, World};
use connection::{Connection, Expect, Reply};
use wire::{Statement, Value};

mod connection;
mod startup;
mod wire;

/// Shared PostgreSQL connections with pipelined queries. See the module docs.
pub struct Pipelined {
    config: Config,
    knobs: Knobs,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    /// Names for statements parsed for one query only (`--prepared off`).
    one_off: AtomicU64,
}

/// One shared connection, opened on demand.
struct Slot {
    /// The open connection, if any: cloned out under a short lock, never held across an await.
    current: Mutex<Option<Arc<Connection>>>,
    /// Held while (re)connecting, so that one attempt runs at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl Pipelined {
    /// `connections` shared connections, opened on first use: the server starts even
    /// when the database is down.
    pub fn new(url: &str, connections: usize, knobs: Knobs) -> Result<Self> {
        let config: Config = url
            .parse()
            .with_context(|| format!("invalid database URL {}", db::redact(url)))?;
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
            one_off: AtomicU64::new(0),
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
        let connection =
            Arc::new(startup::connect(&self.config, self.knobs.wake_per_request).await?);
        *slot.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    /// Queues `statement` (prepared) with `values`: it leaves with the next batch.
    /// `ends_request`: the request queues nothing more before awaiting.
    fn submit(
        connection: &Connection,
        statement: &Statement,
        values: &[Value<'_>],
        expect: Expect,
        ends_request: bool,
    ) -> Result<Reply, DatabaseError> {
        connection.submit(expect, ends_request, |buf| {
            wire::execute(statement.name, values, false, buf)
        })
    }

    /// Runs `statement` prepared, or (`--prepared off`) parsed anew for this query: a
    /// Parse round trip first, then the query, which closes the statement again.
    async fn run(
        &self,
        connection: &Connection,
        statement: &Statement,
        values: &[Value<'_>],
        expect: Expect,
    ) -> Result<Reply, DatabaseError> {
        if self.knobs.prepared {
            return Self::submit(connection, statement, values, expect, true);
        }
        let name = format!("once{}", self.one_off.fetch_add(1, Ordering::Relaxed));
        connection
            .submit(Expect::Nothing, true, |buf| {
                wire::parse(&name, statement, buf)?;
                postgres_protocol::message::frontend::sync(buf);
                Ok(())
            })?
            .done()
            .await?;
        connection.submit(expect, true, |buf| wire::execute(&name, values, true, buf))
    }

    /// One `world` row, prepared or not.
    async fn world_on(&self, connection: &Connection, id: i32) -> Result<World, DatabaseError> {
        let select = [Value::Int4(id)];
        let reply = self.run(connection, &wire::SELECT_WORLD, &select, Expect::World);
        reply.await?.world(id).await
    }

    /// One query per id, all queued before any is awaited: one batch on the wire.
    async fn worlds_on(
        &self,
        connection: &Connection,
        ids: &[i32],
    ) -> Result<Vec<World>, DatabaseError> {
        if !self.knobs.prepared {
            return try_join_all(ids.iter().map(|&id| self.world_on(connection, id))).await;
        }
        let replies = queue_worlds(connection, ids, true)?;
        read_worlds(replies, ids).await
    }
}

/// Queues one prepared `world` query per id; `ends_request`: the request queues nothing
/// after them.
fn queue_worlds(
    connection: &Connection,
    ids: &[i32],
    ends_request: bool,
) -> Result<Vec<Reply>, DatabaseError> {
    let last = ids.len().saturating_sub(1);
    ids.iter()
        .enumerate()
        .map(|(i, &id)| {
            let select = [Value::Int4(id)];
            let ends = ends_request && i == last;
            Pipelined::submit(
                connection,
                &wire::SELECT_WORLD,
                &select,
                Expect::World,
                ends,
            )
        })
        .collect()
}

async fn read_worlds(replies: Vec<Reply>, ids: &[i32]) -> Result<Vec<World>, DatabaseError> {
    let mut worlds = Vec::with_capacity(ids.len());
    for (reply, &id) in replies.into_iter().zip(ids) {
        worlds.push(reply.world(id).await?);
    }
    Ok(worlds)
}

impl Slot {
    fn open(&self) -> Option<Arc<Connection>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|c| !c.is_closed()).cloned()
    }
}

impl AsyncStore for Pipelined {
    async fn world(&self, id: i32) -> Result<World, DatabaseError> {
        let connection = self.connection().await?;
        self.world_on(&connection, id).await
    }

    async fn worlds(&self, ids: &[i32]) -> Result<Vec<World>, DatabaseError> {
        let connection = self.connection().await?;
        self.worlds_on(&connection, ids).await
    }

    async fn fortunes(&self) -> Result<Vec<Fortune>, DatabaseError> {
        let connection = self.connection().await?;
        self.run(&connection, &wire::SELECT_FORTUNES, &[], Expect::Fortunes)
            .await?
            .fortunes()
            .await
    }

    async fn update(&self, changes: &[World]) -> Result<Vec<World>, DatabaseError> {
        let connection = self.connection().await?;
        let ids: Vec<i32> = changes.iter().map(|w| w.id).collect();
        let (sorted_ids, numbers) = bulk_update_arrays(changes);
        let bulk = [Value::Int4Array(&sorted_ids), Value::Int4Array(&numbers)];
        if self.knobs.prepared && self.knobs.bulk_updates {
            // One round trip: the reads and then the bulk write, queued together. The new
            // numbers do not depend on what the reads return, and PostgreSQL runs one
            // connection's statements in the order they were sent, so every row is still
            // read before it is written. A failed read fails the request (503), as it
            // would have before the write.
            let reads = queue_worlds(&connection, &ids, false)?;
            let write = Self::submit(
                &connection,
                &wire::UPDATE_WORLDS_BULK,
                &bulk,
                Expect::Nothing,
                true,
            )?;
            read_worlds(reads, &ids).await?;
            write.done().await?;
            return Ok(changes.to_vec());
        }
        self.worlds_on(&connection, &ids).await?;
        if self.knobs.bulk_updates {
            self.run(
                &connection,
                &wire::UPDATE_WORLDS_BULK,
                &bulk,
                Expect::Nothing,
            )
            .await?
            .done()
            .await?;
        } else {
            // Each row its own statement and Sync, all in flight together; in id order, so
            // that concurrent requests take row locks in the same order.
            try_join_all(sorted_ids.iter().zip(&numbers).map(|(&id, &number)| {
                let connection = &connection;
                async move {
                    let values = [Value::Int4(id), Value::Int4(number)];
                    self.run(
                        connection,
                        &wire::UPDATE_WORLD_ONE,
                        &values,
                        Expect::Nothing,
                    )
                    .await?
                    .done()
                    .await
                }
            }))
            .await?;
        }
        Ok(changes.to_vec())
    }

    async fn ping(&self) -> Result<(), DatabaseError> {
        let connection = self.connection().await?;
        connection
            .submit(Expect::Nothing, true, |buf| {
                postgres_protocol::message::frontend::query(db::sql::PING, buf)
                    .map_err(|e| DatabaseError::Driver(format!("encoding a query: {e}")))
            })?
            .done()
            .await
    }

    /// Connections open now as "in use", none "idle": a shared connection is never lent
    /// out, so the pool's two states do not apply; the open count is what is worth seeing.
    fn pool_state(&self) -> (usize, usize) {
        let open = self.slots.iter().filter(|s| s.open().is_some()).count();
        (open, 0)
    }

    /// Each connection's reader fails what waits past the deadline (`connection`).
    fn keeps_deadline(&self) -> bool {
        true
    }
}
