//! One PostgreSQL connection that many requests use at once, their queries pipelined.
//!
//! A request encodes its query (Bind, Execute, Sync of a statement prepared when the
//! connection opened) straight into the connection's output buffer and queues a reply slot
//! behind those of the queries before it, under one short lock. A writer task sends
//! whatever has accumulated in one `write`; a reader task parses the answers in its receive
//! buffer and, at each query's ReadyForQuery, hands that query its row(s). PostgreSQL answers
//! one connection's queries in the order they arrived, so the queue's order is the answers'.
//!
//! Why not tokio-postgres, which pipelines too: per query it sends a request through a
//! channel to its connection task, gets a channel back, routes every backend message of the
//! answer through that channel as an owned message, and builds a `Row` (an `Arc` of the
//! statement and a list of column ranges) for each row: about 8-12k instructions per query
//! in callgrind (docs/benchmarks.md), for work that is a few hundred. Here a query costs one
//! lock, some 40 bytes appended, and one oneshot.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

use super::wire;
use crate::app::{DatabaseError, DATABASE_DEADLINE};
use crate::render::{Fortune, World};

/// What a query's rows are.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// At most one `world` row.
    World,
    /// `fortune` rows.
    Fortunes,
    /// Rows, if any, are not read (updates, Parse, `SELECT 1`).
    Nothing,
}

/// ReadyForQuery: tag, length, transaction status.
const READY_FOR_QUERY_BYTES: usize = 6;

impl Expect {
    /// The fewest bytes PostgreSQL can answer such a query with, error or not.
    fn least_answer_bytes(self) -> usize {
        match self {
            // BindComplete (5), CommandComplete "SELECT 0" (14), ReadyForQuery (6) with no
            // row; an ErrorResponse (at least 29: severity twice, code, message) with
            // ReadyForQuery is longer still.
            Expect::World | Expect::Fortunes => 25,
            // ParseComplete (5) and ReadyForQuery (6).
            Expect::Nothing => 11,
        }
    }
}

/// A query's answer, of the shape its [`Expect`] asked for.
pub enum Answer {
    World(Option<World>),
    Fortunes(Vec<Fortune>),
    Nothing,
}

type Outcome = Result<Answer, DatabaseError>;

/// When the kernel wakes the reader task for the answers arriving on its socket.
///
/// PostgreSQL flushes its output at every Sync, so each query's answer arrives as its own
/// segment, some 10-20 µs after the one before. A reader asleep in `epoll_wait` is woken
/// by each: a `/updates?queries=20` request costs its thread some twenty wake-ups, and
/// PostgreSQL, whose `send` does the wake-up (loopback delivers in the sender's context),
/// is often preempted by the thread it has just woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// At every segment (the kernel's default receive low-water mark of one byte).
    PerAnswer,
    /// Only once the socket holds enough bytes for every answer of the oldest request
    /// still waiting (`SO_RCVLOWAT` on this TCP socket, recomputed before each read from
    /// the fewest bytes those answers can take, so the kernel never waits for bytes that
    /// may not come). A one-query request is woken for as before; a twenty-query request
    /// a few times instead of twenty.
    PerRequest(RawFd),
}

/// A query sent (or about to be) and not yet answered.
struct Pending {
    expect: Expect,
    /// The last query its request queued before awaiting its answers.
    ends_request: bool,
    reply: oneshot::Sender<Outcome>,
}

/// The answer being read: its pending query, its rows so far, and its error if PostgreSQL
/// sent one (the rest of the query's messages up to ReadyForQuery still follow).
struct Reading {
    pending: Pending,
    answer: Answer,
    error: Option<DatabaseError>,
}

struct State {
    /// Queries encoded and not yet handed to the writer.
    out: BytesMut,
    /// One entry per Sync sent or in `out`, oldest first.
    pending: VecDeque<Pending>,
    /// Why the connection is unusable, once it is.
    closed: Option<DatabaseError>,
    /// When `pending` last went from empty to not empty: the deadline counts from then or
    /// from the last answer bytes, whichever is later.
    busy_since: Instant,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: `out` became non-empty, or the connection closed.
    writer: Notify,
    /// `state.closed.is_some()`, readable without the lock: every request asks whether
    /// its connection is still open before using it.
    is_closed: AtomicBool,
}

/// A connection whose tasks run on the runtime that opened it. Dropping the last handle
/// closes it: the writer sends Terminate and both tasks end.
pub struct Connection {
    shared: Arc<Shared>,
}

/// The answer to one submitted query, to await.
pub struct Reply(oneshot::Receiver<Outcome>);

impl Connection {
    /// Starts the reader and writer tasks on an open, authenticated connection. `received`
    /// holds bytes read during start-up beyond its last message (normally none).
    pub fn start<R, W>(reader: R, writer: W, received: BytesMut, wake: Wake) -> Connection
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: BytesMut::with_capacity(8 * 1024),
                pending: VecDeque::with_capacity(256),
                closed: None,
                busy_since: Instant::now(),
            }),
            writer: Notify::new(),
            is_closed: AtomicBool::new(false),
        });
        tokio::spawn(read_answers(shared.clone(), reader, received, wake));
        tokio::spawn(write_queries(shared.clone(), writer));
        Connection { shared }
    }

    /// Queues a query: `encode` appends its messages, ending with one Sync. It leaves in
    /// the writer's next `write`, with every other query queued by then, in queue order.
    /// `ends_request`: the request queues no more queries before it awaits their answers
    /// (with [`Wake::PerRequest`], the reader is woken once all of them can be in).
    pub fn submit(
        &self,
        expect: Expect,
        ends_request: bool,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), DatabaseError>,
    ) -> Result<Reply, DatabaseError> {
        let (reply, answer) = oneshot::channel();
        let mut state = self.shared.lock();
        if let Some(error) = &state.closed {
            return Err(error.clone());
        }
        if state.pending.is_empty() {
            // One clock read when the connection turns busy, none per query under load.
            state.busy_since = Instant::now();
        }
        let was_empty = state.out.is_empty();
        let before = state.out.len();
        if let Err(error) = encode(&mut state.out) {
            state.out.truncate(before);
            return Err(error);
        }
        state.pending.push_back(Pending {
            expect,
            ends_request,
            reply,
        });
        drop(state);
        // When `out` was not empty the writer has been woken already and has not taken it.
        if was_empty {
            self.shared.writer.notify_one();
        }
        Ok(Reply(answer))
    }

    pub fn is_closed(&self) -> bool {
        self.shared.is_closed.load(Ordering::Acquire)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close(DatabaseError::Driver(
            "the database connection was closed".into(),
        ));
    }
}

impl Reply {
    pub async fn answer(self) -> Outcome {
        self.0.await.unwrap_or_else(|_| {
            Err(DatabaseError::Driver(
                "the database connection closed before answering".into(),
            ))
        })
    }

    pub async fn world(self, id: i32) -> Result<World, DatabaseError> {
        match self.answer().await? {
            Answer::World(Some(world)) => Ok(world),
            _ => Err(DatabaseError::Driver(format!("no world row {id}"))),
        }
    }

    pub async fn fortunes(self) -> Result<Vec<Fortune>, DatabaseError> {
        match self.answer().await? {
            Answer::Fortunes(fortunes) => Ok(fortunes),
            _ => Err(DatabaseError::Driver("no fortunes answer".into())),
        }
    }

    pub async fn done(self) -> Result<(), DatabaseError> {
        self.answer().await.map(drop)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection closed and fails every query still waiting (the first reason
    /// wins: a read error usually follows a write error).
    fn close(&self, error: DatabaseError) {
        let waiting = {
            let mut state = self.lock();
            state.closed.get_or_insert(error.clone());
            self.is_closed.store(true, Ordering::Release);
            state.out.clear();
            std::mem::take(&mut state.pending)
        };
        for pending in waiting {
            let _ = pending.reply.send(Err(error.clone()));
        }
        self.writer.notify_one();
    }

    fn next_pending(&self) -> Option<Pending> {
        self.lock().pending.pop_front()
    }
}

/// The writer task: sends what has accumulated, then waits for more.
async fn write_queries<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut writer: W) {
    let mut batch = BytesMut::with_capacity(8 * 1024);
    loop {
        shared.writer.notified().await;
        {
            let mut state = shared.lock();
            if state.closed.is_some() {
                break;
            }
            std::mem::swap(&mut state.out, &mut batch);
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(error) = writer.write_all(&batch).await {
            shared.close(DatabaseError::Driver(format!(
                "writing to PostgreSQL: {error}"
            )));
            return;
        }
        batch.clear();
    }
    // Closed on purpose (dropped) or after a read error: say goodbye, so that PostgreSQL
    // does not log an unexpected EOF; dropping the write half then shuts the socket down.
    let mut terminate = BytesMut::new();
    postgres_protocol::message::frontend::terminate(&mut terminate);
    let _ = writer.write_all(&terminate).await;
    let _ = writer.shutdown().await;
}

/// The reader task: matches each answer to its query, in order, and keeps the deadline.
///
/// The deadline ([`DATABASE_DEADLINE`]) is the connection's, not each request's: when
/// queries are waiting and PostgreSQL has sent nothing for that long (a stopped backend,
/// a lost network), every waiting query fails with `Timeout` (503) and the connection is
/// closed; the next request opens a new one. A request's own timer would cost a timer-wheel
/// insertion and removal per request; this one is a timer per connection, looked at when it
/// fires (every few seconds at most) and otherwise left alone.
async fn read_answers<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut reader: R,
    mut buf: BytesMut,
    wake: Wake,
) {
    // The socket's SO_RCVLOWAT as last set: the kernel's default is 1.
    let mut low_water = 1;
    let mut reading: Option<Reading> = None;
    let mut last_answer = Instant::now();
    let watchdog = tokio::time::sleep(DATABASE_DEADLINE);
    tokio::pin!(watchdog);
    let error = loop {
        if let Err(reason) = take_messages(&shared, &mut buf, &mut reading) {
            break DatabaseError::Driver(reason);
        }
        let wanted = wire::announced_length(&buf).unwrap_or(0).max(16 * 1024);
        buf.reserve(wanted.saturating_sub(buf.len()));
        if let Wake::PerRequest(socket) = wake {
            let wanted = low_water_mark(&shared.lock().pending, reading.as_ref(), buf.len());
            if wanted != low_water {
                match set_receive_low_water(socket, wanted) {
                    Ok(()) => low_water = wanted,
                    Err(error) => {
                        break DatabaseError::Driver(format!("setting SO_RCVLOWAT: {error}"))
                    }
                }
            }
        }
        tokio::select! {
            biased;
            // Cancel-safe: a read that has not completed has taken no bytes.
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => break DatabaseError::Driver("PostgreSQL closed the connection".into()),
                Ok(_) => last_answer = Instant::now(),
                Err(error) => break DatabaseError::Driver(format!("reading from PostgreSQL: {error}")),
            },
            () = &mut watchdog => {
                let (waiting, busy_since) = {
                    let state = shared.lock();
                    (!state.pending.is_empty() || reading.is_some(), state.busy_since)
                };
                let quiet_since = last_answer.max(busy_since);
                if waiting && quiet_since.elapsed() >= DATABASE_DEADLINE {
                    break DatabaseError::Timeout;
                }
                let next = if waiting { quiet_since } else { Instant::now() };
                watchdog
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(next + DATABASE_DEADLINE));
            }
        }
    };
    if let Some(reading) = reading {
        let _ = reading.pending.reply.send(Err(error.clone()));
    }
    shared.close(error);
}

/// Handles every complete message in `buf` and drops them from it.
fn take_messages(
    shared: &Shared,
    buf: &mut BytesMut,
    reading: &mut Option<Reading>,
) -> Result<(), String> {
    let mut used = 0;
    while let Some((tag, body, length)) = wire::next_message(&buf[used..])? {
        match tag {
            // Not part of any query's answer: settings changing, notices, notifications.
            b'S' | b'N' | b'A' => {}
            b'Z' => {
                let done = match reading.take() {
                    Some(done) => done,
                    None => start_reading(shared)?,
                };
                let outcome = match done.error {
                    Some(error) => Err(error),
                    None => Ok(done.answer),
                };
                // The request may have given up (client gone, deadline): nobody to tell.
                let _ = done.pending.reply.send(outcome);
            }
            b'E' if reading.is_none() && shared.lock().pending.is_empty() => {
                // An error outside any query: the backend is going away (administrator
                // shutdown, idle timeout).
                return Err(wire::error_text(body));
            }
            _ => {
                if reading.is_none() {
                    *reading = Some(start_reading(shared)?);
                }
                let current = reading.as_mut().expect("set above");
                match tag {
                    b'E' => current.error = Some(DatabaseError::Driver(wire::error_text(body))),
                    b'D' if current.error.is_none() => {
                        if let Err(error) = add_row(&mut current.answer, body) {
                            current.error = Some(error);
                        }
                    }
                    // ParseComplete, BindComplete, CloseComplete, CommandComplete, NoData,
                    // descriptions, PortalSuspended, EmptyQueryResponse: nothing to keep.
                    _ => {}
                }
            }
        }
        used += length;
    }
    buf.advance(used);
    Ok(())
}

/// The bytes the socket should hold before the reader is woken: the fewest that the
/// answers still owed to the oldest waiting request can take, less those already
/// received into `buffered` (never less than 1). Every queued query will be answered, so
/// the kernel is never asked to wait for bytes that cannot come.
fn low_water_mark(queue: &VecDeque<Pending>, reading: Option<&Reading>, buffered: usize) -> usize {
    let mut owed = 0;
    let mut request_complete = false;
    if let Some(current) = reading {
        // The answer being read still ends with a ReadyForQuery.
        owed += READY_FOR_QUERY_BYTES;
        request_complete = current.pending.ends_request;
    }
    if !request_complete {
        for next in queue {
            owed += next.expect.least_answer_bytes();
            if next.ends_request {
                break;
            }
        }
    }
    owed.saturating_sub(buffered).max(1)
}

/// `SO_RCVLOWAT`: the kernel wakes the socket's waiters (and reports it readable) only
/// once `bytes` are queued, or at end of stream. Lowering it wakes them at once if enough
/// is already there.
fn set_receive_low_water(socket: RawFd, bytes: usize) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    crate::sockopt::set_int(socket, libc::SOL_SOCKET, libc::SO_RCVLOWAT, value)
}

fn start_reading(shared: &Shared) -> Result<Reading, String> {
    let pending = shared
        .next_pending()
        .ok_or_else(|| "PostgreSQL answered a query that was not sent".to_string())?;
    let answer = match pending.expect {
        Expect::World => Answer::World(None),
        Expect::Fortunes => Answer::Fortunes(Vec::with_capacity(16)),
        Expect::Nothing => Answer::Nothing,
    };
    Ok(Reading {
        pending,
        answer,
        error: None,
    })
}

fn add_row(answer: &mut Answer, body: &[u8]) -> Result<(), DatabaseError> {
    match answer {
        Answer::World(row) => *row = Some(wire::world_row(body)?),
        Answer::Fortunes(rows) => rows.push(wire::fortune_row(body)?),
        Answer::Nothing => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(entries: &[(Expect, bool)]) -> VecDeque<Pending> {
        entries
            .iter()
            .map(|&(expect, ends_request)| Pending {
                expect,
                ends_request,
                reply: oneshot::channel().0,
            })
            .collect()
    }

    #[test]
    fn low_water_covers_the_oldest_request_only() {
        // A three-query request, then a one-query request.
        let mut waiting = vec![(Expect::World, false); 2];
        waiting.push((Expect::World, true));
        waiting.push((Expect::Fortunes, true));
        let waiting = queue(&waiting);
        assert_eq!(low_water_mark(&waiting, None, 0), 3 * 25);
        // Bytes already received count towards it.
        assert_eq!(low_water_mark(&waiting, None, 30), 3 * 25 - 30);
        assert_eq!(low_water_mark(&waiting, None, 500), 1);
    }

    #[test]
    fn low_water_while_an_answer_is_half_read() {
        let waiting = queue(&[(Expect::World, false), (Expect::Nothing, true)]);
        let reading = |ends_request| Reading {
            pending: queue(&[(Expect::World, ends_request)]).pop_front().unwrap(),
            answer: Answer::World(None),
            error: None,
        };
        // Its request has more queries queued: its ReadyForQuery and theirs.
        assert_eq!(
            low_water_mark(&waiting, Some(&reading(false)), 0),
            6 + 25 + 11
        );
        // It is its request's last: only its ReadyForQuery is owed.
        assert_eq!(low_water_mark(&waiting, Some(&reading(true)), 0), 6);
        assert_eq!(low_water_mark(&VecDeque::new(), None, 0), 1);
    }

    #[test]
    fn least_answer_bytes_are_no_more_than_real_answers() {
        use postgres_protocol::message::backend::Message;
        // The shortest real answers: a world query that found no row, a Parse.
        let mut no_row = BytesMut::new();
        for (tag, body) in [(b'2', &b""[..]), (b'C', b"SELECT 0\0"), (b'Z', b"I")] {
            no_row.extend_from_slice(&[tag]);
            no_row.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            no_row.extend_from_slice(body);
        }
        assert_eq!(no_row.len(), Expect::World.least_answer_bytes());
        let mut check = no_row.clone();
        while let Some(message) = Message::parse(&mut check).unwrap() {
            assert!(matches!(
                message,
                Message::BindComplete | Message::CommandComplete(_) | Message::ReadyForQuery(_)
            ));
        }
        let parse_only = 5 + 6;
        assert_eq!(parse_only, Expect::Nothing.least_answer_bytes());
    }
}
