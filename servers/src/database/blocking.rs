//! The blocking variants' database: the `postgres` crate.
//!
//! Each [`LazyConnection`] is one PostgreSQL connection with the statements prepared once
//! (a query is then one Bind/Execute/Sync round trip; `query_one` with a SQL string would
//! Parse it every time, one more round trip). It connects on first use and, after any
//! failure, drops the connection and connects afresh on the next request, which is how a
//! blocking server recovers from a database outage by itself.
//!
//! A lesson worth knowing: the `postgres` crate is `tokio-postgres` behind a private
//! current-thread runtime per client, so even a "blocking" query is `sendto`, then an
//! `epoll_wait` on that client's own epoll instance, then `recvfrom`. The thread blocks in
//! `epoll_wait`, not in `recvfrom`.
//!
//! [`ConnectionPool`] shares connections between the threads of `thread-per-request`;
//! `thread-pool` gives each worker its own [`LazyConnection`] instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use postgres::{Client, NoTls, Statement};

use super::Knobs;
use crate::app::{bulk_update_arrays, BlockingStore, DatabaseError};
use crate::render::{Fortune, World};
use db::sql;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const LEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections open and in use across a process, for `/metrics`.
#[derive(Debug, Default)]
pub struct Gauge {
    open: AtomicUsize,
    in_use: AtomicUsize,
}

impl Gauge {
    /// (in use, idle).
    pub fn state(&self) -> (usize, usize) {
        let open = self.open.load(Ordering::Relaxed);
        let in_use = self.in_use.load(Ordering::Relaxed).min(open);
        (in_use, open - in_use)
    }
}

/// The settings every blocking client connects with.
pub struct Settings {
    pub config: postgres::Config,
    pub knobs: Knobs,
}

/// The configuration the blocking clients connect with.
pub fn settings(url: &str, knobs: Knobs) -> Result<Arc<Settings>> {
    let mut config: postgres::Config = url
        .parse()
        .with_context(|| format!("invalid database URL {}", db::redact(url)))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    Ok(Arc::new(Settings { config, knobs }))
}

/// A connected client, its statements prepared once (unless the `prepared` knob is off:
/// then each query passes its SQL text, which the `postgres` crate prepares as an
/// unnamed statement first, one more round trip per query).
struct Prepared {
    client: Client,
    knobs: Knobs,
    select_world: Statement,
    select_fortunes: Statement,
    update_bulk: Statement,
    update_one: Statement,
    ping: Statement,
}

impl Prepared {
    fn connect(settings: &Settings) -> Result<Self, postgres::Error> {
        let mut client = settings.config.connect(NoTls)?;
        Ok(Prepared {
            select_world: client.prepare(sql::SELECT_WORLD)?,
            select_fortunes: client.prepare(sql::SELECT_FORTUNES)?,
            update_bulk: client.prepare(sql::UPDATE_WORLDS_BULK)?,
            update_one: client.prepare(sql::UPDATE_WORLD_ONE)?,
            ping: client.prepare(sql::PING)?,
            knobs: settings.knobs,
            client,
        })
    }

    fn world(&mut self, id: i32) -> Result<World, postgres::Error> {
        let row = if self.knobs.prepared {
            self.client.query_one(&self.select_world, &[&id])?
        } else {
            self.client.query_one(sql::SELECT_WORLD, &[&id])?
        };
        Ok(World {
            id: row.get(0),
            random_number: row.get(1),
        })
    }

    fn fortunes(&mut self) -> Result<Vec<Fortune>, postgres::Error> {
        let rows = if self.knobs.prepared {
            self.client.query(&self.select_fortunes, &[])?
        } else {
            self.client.query(sql::SELECT_FORTUNES, &[])?
        };
        Ok(rows
            .iter()
            .map(|row| Fortune {
                id: row.get(0),
                message: row.get(1),
            })
            .collect())
    }

    fn write(&mut self, changes: &[World]) -> Result<(), postgres::Error> {
        let (ids, numbers) = bulk_update_arrays(changes);
        match (self.knobs.bulk_updates, self.knobs.prepared) {
            (true, true) => self
                .client
                .execute(&self.update_bulk, &[&ids, &numbers])
                .map(drop),
            (true, false) => self
                .client
                .execute(sql::UPDATE_WORLDS_BULK, &[&ids, &numbers])
                .map(drop),
            (false, prepared) => {
                for (id, number) in ids.iter().zip(&numbers) {
                    if prepared {
                        self.client.execute(&self.update_one, &[id, number])?;
                    } else {
                        self.client.execute(sql::UPDATE_WORLD_ONE, &[id, number])?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// One connection, opened on first use and reopened after a failure.
pub struct LazyConnection {
    settings: Arc<Settings>,
    gauge: Arc<Gauge>,
    connection: Option<Prepared>,
}

impl LazyConnection {
    pub fn new(settings: Arc<Settings>, gauge: Arc<Gauge>) -> Self {
        LazyConnection {
            settings,
            gauge,
            connection: None,
        }
    }

    /// Runs `operation` on the connection, connecting first if needed. Any error drops
    /// the connection: its protocol state is unknown afterwards.
    fn run<T>(
        &mut self,
        operation: impl FnOnce(&mut Prepared) -> Result<T, postgres::Error>,
    ) -> Result<T, DatabaseError> {
        if self.connection.is_none() {
            let connection = Prepared::connect(&self.settings).map_err(driver_error)?;
            self.gauge.open.fetch_add(1, Ordering::Relaxed);
            self.connection = Some(connection);
        }
        self.gauge.in_use.fetch_add(1, Ordering::Relaxed);
        let result = operation(self.connection.as_mut().expect("connected above"));
        self.gauge.in_use.fetch_sub(1, Ordering::Relaxed);
        result.map_err(|error| {
            self.disconnect();
            driver_error(error)
        })
    }

    fn disconnect(&mut self) {
        if self.connection.take().is_some() {
            self.gauge.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for LazyConnection {
    fn drop(&mut self) {
        self.disconnect();
    }
}

fn driver_error(error: postgres::Error) -> DatabaseError {
    match error.as_db_error() {
        Some(db) => DatabaseError::Driver(format!("database error: {}", db.message())),
        None if error.is_closed() => DatabaseError::Driver("connection closed".into()),
        None => DatabaseError::Driver(error.to_string()),
    }
}

impl BlockingStore for LazyConnection {
    fn world(&mut self, id: i32) -> Result<World, DatabaseError> {
        self.run(|c| c.world(id))
    }

    fn worlds(&mut self, ids: &[i32]) -> Result<Vec<World>, DatabaseError> {
        self.run(|c| ids.iter().map(|&id| c.world(id)).collect())
    }

    fn fortunes(&mut self) -> Result<Vec<Fortune>, DatabaseError> {
        self.run(|c| c.fortunes())
    }

    fn update(&mut self, changes: &[World]) -> Result<Vec<World>, DatabaseError> {
        self.run(|c| {
            for change in changes {
                c.world(change.id)?;
            }
            c.write(changes)?;
            Ok(changes.to_vec())
        })
    }

    fn ping(&mut self) -> Result<(), DatabaseError> {
        self.run(|c| c.client.execute(&c.ping, &[]).map(drop))
    }

    fn pool_state(&self) -> (usize, usize) {
        self.gauge.state()
    }
}

/// Connections shared by many threads: a thread leases one for an operation and gives it
/// back. At most `size` exist; a thread that finds none free waits up to 2 s (503 after).
pub struct ConnectionPool {
    idle: Mutex<Vec<LazyConnection>>,
    freed: Condvar,
    /// Threads waiting on `freed`. std's `notify_one` makes a FUTEX_WAKE syscall whether
    /// or not anyone waits; counting waiters saves that syscall on every request.
    waiting: AtomicUsize,
    gauge: Arc<Gauge>,
}

impl ConnectionPool {
    pub fn new(settings: Arc<Settings>, size: usize) -> Self {
        let gauge = Arc::new(Gauge::default());
        let idle = (0..size)
            .map(|_| LazyConnection::new(settings.clone(), gauge.clone()))
            .collect();
        ConnectionPool {
            idle: Mutex::new(idle),
            freed: Condvar::new(),
            waiting: AtomicUsize::new(0),
            gauge,
        }
    }

    fn with<T>(
        &self,
        operation: impl FnOnce(&mut LazyConnection) -> Result<T, DatabaseError>,
    ) -> Result<T, DatabaseError> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut connection = loop {
            if let Some(connection) = idle.pop() {
                break connection;
            }
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let (guard, timeout) = self
                .freed
                .wait_timeout(idle, LEASE_TIMEOUT)
                .unwrap_or_else(|e| e.into_inner());
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            idle = guard;
            if timeout.timed_out() && idle.is_empty() {
                return Err(DatabaseError::Driver(
                    "all database connections busy".into(),
                ));
            }
        };
        drop(idle);
        let result = operation(&mut connection);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push(connection);
        // Waiters register under the lock, so none is missed by this check.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
        drop(idle);
        result
    }
}

impl BlockingStore for &ConnectionPool {
    fn world(&mut self, id: i32) -> Result<World, DatabaseError> {
        self.with(|c| c.world(id))
    }

    fn worlds(&mut self, ids: &[i32]) -> Result<Vec<World>, DatabaseError> {
        self.with(|c| c.worlds(ids))
    }

    fn fortunes(&mut self) -> Result<Vec<Fortune>, DatabaseError> {
        self.with(|c| c.fortunes())
    }

    fn update(&mut self, changes: &[World]) -> Result<Vec<World>, DatabaseError> {
        self.with(|c| c.update(changes))
    }

    fn ping(&mut self) -> Result<(), DatabaseError> {
        self.with(|c| c.ping())
    }

    fn pool_state(&self) -> (usize, usize) {
        self.gauge.state()
    }
}
