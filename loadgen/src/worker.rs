//! One worker thread: a hand-written edge-triggered epoll loop over its share of the
//! connections. It issues requests (closed loop: when a connection has room; open loop:
//! when the schedule says they are due), reads and frames responses, handles timeouts and
//! reconnects, and records into its own [`Stats`]. The clock is read once per wake-up.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use crate::config::{Error, Plan, NAP_MIN_IN_FLIGHT};
use crate::conn::{self, Conn, InFlight, State, READ_BUF};
use crate::schedule::{Rng, Schedule};
use crate::stats::{ErrorKind, Interval, Stats};

const MAX_EVENTS: usize = 1024;
/// How often timeouts and connect retries are checked.
const SCAN_NS: u64 = 10_000_000;
/// Pause before reconnecting after a failed connect.
const RETRY_NS: u64 = 10_000_000;
/// Longest sleep, so a stop request is seen quickly.
const MAX_WAIT_NS: u64 = 50_000_000;
const SEC: u64 = 1_000_000_000;

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * SEC + ts.tv_nsec as u64
}

/// Live counters one thread publishes for the progress display (one cache line each).
#[repr(align(64))]
#[derive(Default)]
pub struct Live {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// What a worker shares with the run.
pub struct Shared {
    pub stop: AtomicBool,
    pub live: Vec<Live>,
    /// Monotonic ns when measuring starts (after warm-up).
    pub measure_start: u64,
    /// Monotonic ns when measuring ends (None: run until the request count is done).
    pub measure_end: Option<u64>,
}

/// What a worker hands back.
pub struct Outcome {
    pub stats: Stats,
    /// Monotonic ns when the worker finished.
    pub finished: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Drain,
}

struct Worker<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    id: usize,
    epfd: i32,
    conns: Vec<Conn>,
    stats: Stats,
    rng: Rng,
    depth: usize,
    sched: Option<Schedule>,
    ready: VecDeque<u32>,
    dirty: Vec<u32>,
    /// Measured requests this thread may still issue (-n).
    budget: Option<u64>,
    outstanding: u64,
    now: u64,
    phase: Phase,
    drain_end: u64,
    next_scan: u64,
    interval: u64,
    tx: Sender<Interval>,
    single_target: bool,
}

/// Runs one worker until the run ends; `conns` connections, `requests` its share of -n.
pub fn run(
    plan: &Plan,
    shared: &Shared,
    id: usize,
    conns: usize,
    requests: Option<u64>,
    tx: Sender<Interval>,
) -> Result<Outcome, Error> {
    // SAFETY: plain epoll_create1 call.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(Error::Io(format!(
            "epoll_create1: {}",
            io::Error::last_os_error()
        )));
    }
    let depth = plan.pipeline as usize;
    let start = now_ns();
    let sched = plan.rate.map(|r| {
        let per_thread = r / f64::from(plan.threads);
        // Stagger the threads so their constant schedules interleave.
        let offset = (id as f64 / f64::from(plan.threads) * 1e9 / per_thread) as u64;
        Schedule::new(
            start + offset,
            per_thread,
            plan.arrivals,
            0x5EED + id as u64,
        )
    });
    let mut w = Worker {
        plan,
        shared,
        id,
        epfd,
        conns: (0..conns).map(|_| Conn::new(depth)).collect(),
        stats: Stats::new(plan.targets.len(), plan.rate.is_some()),
        rng: Rng::new(start ^ (id as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)),
        depth,
        sched,
        ready: VecDeque::with_capacity(conns),
        dirty: Vec::with_capacity(conns),
        budget: requests,
        outstanding: 0,
        now: start,
        phase: if start >= shared.measure_start {
            Phase::Measure
        } else {
            Phase::Warmup
        },
        drain_end: u64::MAX,
        next_scan: start + SCAN_NS,
        interval: 0,
        tx,
        single_target: plan.targets.len() == 1 && plan.targets[0].requests.len() == 1,
    };
    if plan.nap_ns > 0 {
        // Naps are short: without this a sleep may overrun by the default 50 µs of slack.
        // SAFETY: prctl with an integer argument, this thread only.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    }
    let r = w.event_loop();
    // SAFETY: epfd is ours; connections close their own sockets on drop.
    unsafe { libc::close(epfd) };
    r?;
    Ok(Outcome {
        stats: w.stats,
        finished: w.now,
    })
}

impl Worker<'_> {
    fn measuring(&self, t: u64) -> bool {
        t >= self.shared.measure_start
    }

    fn event_loop(&mut self) -> Result<(), Error> {
        for i in 0..self.conns.len() {
            self.start_connect(i);
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let mut timeout = 0;
        loop {
            let n = if self.may_nap(timeout) {
                self.nap_then_wait(&mut events, timeout)?
            } else {
                wait(self.epfd, &mut events, timeout)?
            };
            self.now = now_ns();
            for ev in &events[..n] {
                let (idx, gen) = ((ev.u64 & 0xFFFF_FFFF) as usize, (ev.u64 >> 32) as u32);
                if self.conns[idx].generation == gen {
                    self.on_event(idx, ev.events);
                }
            }
            if self.housekeeping() {
                break;
            }
            self.dispatch();
            self.flush_dirty();
            let live = &self.shared.live[self.id];
            live.requests.store(self.stats.requests, Ordering::Relaxed);
            live.errors
                .store(self.stats.errors.iter().sum(), Ordering::Relaxed);
            timeout = self.next_wake().saturating_sub(self.now);
        }
        Ok(())
    }

    /// Closed loop, deep in flight and nothing else due within the nap (see `Config::nap_s`).
    fn may_nap(&self, timeout: u64) -> bool {
        self.plan.nap_ns > 0
            && self.outstanding >= NAP_MIN_IN_FLIGHT
            && timeout > self.plan.nap_ns
            && self.phase != Phase::Drain
    }

    /// Waits for events, napping first if none is ready. Why: a thread asleep in epoll_wait
    /// is woken by the server's next response, and that wake-up is the server's cost (in a
    /// VM an inter-processor interrupt costs the sender a VM exit: with 256 connections 16
    /// deep the epoll server spent 10-24% more CPU per request than when the generator naps,
    /// 1.54 against 1.39 µs and 1.92 against 1.55 µs in two runs). Asleep on a
    /// timer, the generator is off the wait queue: responses queue up without waking it, and
    /// it reads them all at once. What it costs: a response that arrives during a nap is
    /// timed up to one nap late.
    fn nap_then_wait(
        &mut self,
        events: &mut [libc::epoll_event],
        timeout: u64,
    ) -> Result<usize, Error> {
        let n = wait(self.epfd, events, 0)?;
        if n > 0 {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_nanos(self.plan.nap_ns));
        if self.measuring(self.now) {
            self.stats.naps += 1;
        }
        let n = wait(self.epfd, events, 0)?;
        if n > 0 {
            return Ok(n);
        }
        wait(self.epfd, events, timeout - self.plan.nap_ns)
    }

    /// Phase changes, per-second intervals, timeouts and reconnects. True when done.
    fn housekeeping(&mut self) -> bool {
        let now = self.now;
        if self.phase == Phase::Warmup && self.measuring(now) {
            self.stats.reset();
            self.phase = Phase::Measure;
        }
        if self.phase == Phase::Measure {
            let end_reached = self.shared.measure_end.is_some_and(|e| now >= e);
            if end_reached || self.budget == Some(0) {
                self.phase = Phase::Drain;
                self.drain_end = match self.shared.measure_end {
                    Some(e) => e.max(now) + self.plan.timeout.as_nanos() as u64,
                    None => u64::MAX,
                };
                self.count_backlog();
            }
        }
        if self.phase != Phase::Warmup {
            let idx = (now - self.shared.measure_start) / SEC;
            while self.interval < idx {
                let iv = self.stats.take_interval(self.interval);
                let _ = self.tx.send(iv);
                self.interval += 1;
            }
        }
        if now >= self.next_scan {
            self.next_scan = now + SCAN_NS;
            self.scan();
        }
        let stopped = self.shared.stop.load(Ordering::Relaxed);
        let drained =
            self.phase == Phase::Drain && (self.outstanding == 0 || now >= self.drain_end);
        if stopped || drained {
            if stopped && self.phase != Phase::Drain {
                self.count_backlog();
            }
            // Whatever is still out: after the drain deadline it has waited at least the
            // timeout; after a stop it is simply unfinished.
            let kind = if stopped {
                None
            } else {
                Some(ErrorKind::Timeout)
            };
            for i in 0..self.conns.len() {
                let inflight: Vec<InFlight> = self.conns[i].inflight.drain(..).collect();
                for r in inflight {
                    if self.measuring(r.due) {
                        match kind {
                            Some(k) => self.stats.failure(k, Some(r.target as usize)),
                            None => self.stats.unfinished += 1,
                        }
                    }
                }
                self.conns[i].close();
            }
            if self.phase != Phase::Warmup {
                let iv = self.stats.take_interval(self.interval);
                let _ = self.tx.send(iv);
            }
            return true;
        }
        false
    }

    /// Open loop: requests due during the measurement that were never sent.
    fn count_backlog(&mut self) {
        let end = self.shared.measure_end.unwrap_or(self.now).min(self.now);
        if let Some(s) = &mut self.sched {
            s.skip_until(self.shared.measure_start);
            let mut n = s.skip_until(end);
            if let Some(b) = &mut self.budget {
                n = n.min(*b);
                *b -= n;
            }
            self.stats.backlog += n;
        }
    }

    fn next_wake(&self) -> u64 {
        let mut t = self.next_scan.min(self.now + MAX_WAIT_NS);
        match self.phase {
            Phase::Warmup => t = t.min(self.shared.measure_start),
            Phase::Measure => {
                t = t.min(self.shared.measure_start + (self.interval + 1) * SEC);
                if let Some(e) = self.shared.measure_end {
                    t = t.min(e);
                }
                if let (Some(s), false) = (&self.sched, self.ready.is_empty()) {
                    t = t.min(s.peek());
                }
            }
            Phase::Drain => t = t.min(self.drain_end),
        }
        if self.phase == Phase::Warmup {
            if let (Some(s), false) = (&self.sched, self.ready.is_empty()) {
                t = t.min(s.peek());
            }
        }
        t
    }

    fn issuing(&self) -> bool {
        self.phase != Phase::Drain
    }

    fn scan(&mut self) {
        let timeout = self.plan.timeout.as_nanos() as u64;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            match c.state {
                State::Closed => {
                    if self.issuing() && self.now >= c.at && self.may_issue(self.now) {
                        self.start_connect(i);
                    }
                }
                State::Connecting => {
                    if self.now.saturating_sub(c.at) > timeout {
                        self.connect_failed(i, libc::ETIMEDOUT);
                    }
                }
                State::Open => {
                    if c.inflight
                        .front()
                        .is_some_and(|f| self.now.saturating_sub(f.sent) > timeout)
                    {
                        self.drop_conn(i, ErrorKind::Timeout, ErrorKind::Timeout);
                    }
                }
            }
        }
    }

    fn start_connect(&mut self, i: usize) {
        match conn::connect(&self.plan.addr) {
            Ok((fd, done)) => {
                let c = &mut self.conns[i];
                c.generation = c.generation.wrapping_add(1);
                c.fd = fd;
                c.at = self.now;
                c.state = State::Connecting;
                let mut ev = libc::epoll_event {
                    events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET)
                        as u32,
                    u64: (u64::from(c.generation) << 32) | i as u64,
                };
                // SAFETY: epfd and fd are valid; ev is a valid event.
                if unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
                    let e = io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO);
                    self.connect_failed(i, e);
                } else if done {
                    self.connected(i);
                }
            }
            Err(e) => {
                self.conns[i].state = State::Closed;
                self.connect_failed(i, e.raw_os_error().unwrap_or(libc::EIO));
            }
        }
    }

    fn connect_failed(&mut self, i: usize, errno: i32) {
        let kind = match errno {
            libc::ECONNREFUSED => ErrorKind::ConnectRefused,
            libc::ETIMEDOUT => ErrorKind::ConnectTimeout,
            _ => ErrorKind::ConnectOther,
        };
        if self.measuring(self.now) && self.issuing() {
            self.stats.failure(kind, None);
            // With -n a failed connect uses up one attempt, so a dead server ends the run.
            if let Some(b) = &mut self.budget {
                *b = b.saturating_sub(1);
            }
        }
        let c = &mut self.conns[i];
        c.close();
        c.at = self.now + RETRY_NS;
    }

    fn connected(&mut self, i: usize) {
        let keepalive = self.plan.keepalive;
        let measuring = self.measuring(self.now);
        let c = &mut self.conns[i];
        c.state = State::Open;
        if measuring {
            self.stats.connects += 1;
            if c.ever_connected && keepalive {
                self.stats.reconnects += 1;
            }
        }
        c.ever_connected = true;
        self.on_room(i);
    }

    fn on_event(&mut self, i: usize, ev: u32) {
        let err = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        if self.conns[i].state == State::Connecting {
            if ev & (libc::EPOLLOUT as u32 | err) == 0 {
                return;
            }
            match conn::socket_error(self.conns[i].fd) {
                0 => self.connected(i),
                e => return self.connect_failed(i, e),
            }
        }
        if self.conns[i].state != State::Open {
            return;
        }
        let hup = ev & (libc::EPOLLRDHUP as u32 | err) != 0;
        if hup || ev & libc::EPOLLIN as u32 != 0 {
            self.on_readable(i, hup);
        }
        let c = &self.conns[i];
        if c.state == State::Open && ev & libc::EPOLLOUT as u32 != 0 && c.woff < c.wbuf.len() {
            self.flush(i);
        }
    }

    /// Reads until a short read (edge-triggered: more data brings a new event) or, when the
    /// peer has closed (`hup`: that edge will not come again), until end of stream.
    fn on_readable(&mut self, i: usize, hup: bool) {
        loop {
            let space = READ_BUF - self.conns[i].rlen;
            match self.conns[i].read() {
                Ok(0) => return self.on_eof(i),
                Ok(n) => {
                    if self.measuring(self.now) {
                        self.stats.bytes_received += n as u64;
                    }
                    if !self.parse(i) {
                        return;
                    }
                    if n < space && !hup {
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                Err(_) => return self.drop_conn(i, ErrorKind::Reset, ErrorKind::Reset),
            }
        }
        self.on_room(i);
    }

    /// Frames every complete response in the read buffer. False when the connection was
    /// dropped (malformed, unsolicited, or the server said it closes).
    fn parse(&mut self, i: usize) -> bool {
        let mut pos = 0;
        let mut close = false;
        loop {
            let c = &mut self.conns[i];
            let (k, done) = match c.parser.feed(&c.rbuf[pos..c.rlen]) {
                Ok(r) => r,
                Err(_) => {
                    self.drop_conn(i, ErrorKind::Malformed, ErrorKind::Reset);
                    return false;
                }
            };
            pos += k;
            let Some(done) = done else { break };
            let Some(req) = c.inflight.pop_front() else {
                // A response nobody asked for.
                self.drop_conn(i, ErrorKind::Malformed, ErrorKind::Reset);
                return false;
            };
            self.outstanding -= 1;
            self.complete(req, done.status);
            if done.close || !self.plan.keepalive {
                close = true;
                break;
            }
        }
        let c = &mut self.conns[i];
        if c.parser.until_close() {
            c.rlen = 0;
        } else if pos > 0 {
            c.rbuf.copy_within(pos..c.rlen, 0);
            c.rlen -= pos;
        }
        if close {
            // The server closes after this response: anything pipelined behind it is lost.
            self.drop_conn(i, ErrorKind::Reset, ErrorKind::Reset);
            return false;
        }
        true
    }

    fn complete(&mut self, req: InFlight, status: u16) {
        if !self.measuring(req.due) {
            return;
        }
        let ok = if self.plan.expect_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.plan.expect_status.contains(&status)
        };
        let now = self.now;
        self.stats.response(
            req.target as usize,
            status,
            now.saturating_sub(req.due),
            now.saturating_sub(req.sent),
            ok,
        );
    }

    fn on_eof(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.parser.until_close() {
            let done = c.parser.finish_at_eof();
            if let Some(req) = c.inflight.pop_front() {
                self.outstanding -= 1;
                self.complete(req, done.status);
            }
        }
        // A clean close between responses is not an error; mid-response or with requests
        // outstanding it is.
        self.drop_conn(i, ErrorKind::Reset, ErrorKind::Reset);
    }

    /// Closes the connection, counting each request still in flight as failed (`first` for
    /// the oldest, `rest` for the others), and reconnects.
    fn drop_conn(&mut self, i: usize, first: ErrorKind, rest: ErrorKind) {
        let c = &mut self.conns[i];
        let partial = !c.parser.at_start() || c.rlen > 0;
        let mut kind = first;
        let mut counted = false;
        while let Some(r) = c.inflight.pop_front() {
            self.outstanding -= 1;
            if r.due >= self.shared.measure_start {
                self.stats.failure(kind, Some(r.target as usize));
            }
            kind = rest;
            counted = true;
        }
        c.close();
        if !counted && first == ErrorKind::Malformed && partial && self.measuring(self.now) {
            self.stats.failure(ErrorKind::Malformed, None);
        }
        let c = &mut self.conns[i];
        c.at = self.now;
        if self.issuing() && self.may_issue(self.now) {
            self.start_connect(i);
        }
    }

    /// The connection can take more requests: closed loop fills it now, open loop queues it.
    fn on_room(&mut self, i: usize) {
        if !self.issuing() || self.conns[i].state != State::Open {
            return;
        }
        if self.sched.is_some() {
            let c = &mut self.conns[i];
            if !c.queued && c.inflight.len() < self.depth {
                c.queued = true;
                self.ready.push_back(i as u32);
            }
            return;
        }
        // Closed loop pipelines in batches, as wrk does: a connection writes `depth` requests
        // at once and the next batch when all are answered (one write per batch, not one per
        // response).
        if !self.conns[i].inflight.is_empty() && self.depth > 1 {
            return;
        }
        let now = self.now;
        while self.conns[i].inflight.len() < self.depth && self.may_issue(now) {
            self.issue(i, now);
        }
        self.mark_dirty(i);
    }

    /// Queues the connection's new requests for the write burst at the end of this wake-up.
    /// Writing all connections' requests back to back (rather than each right after its
    /// response was read) hands the server its work in one burst, as wrk's loop does.
    fn mark_dirty(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.dirty && !c.wbuf.is_empty() {
            c.dirty = true;
            self.dirty.push(i as u32);
        }
    }

    fn flush_dirty(&mut self) {
        let mut list = std::mem::take(&mut self.dirty);
        for &i in &list {
            let i = i as usize;
            self.conns[i].dirty = false;
            if self.conns[i].state == State::Open {
                self.flush(i);
            }
        }
        list.clear();
        // Connections re-marked while flushing (after a reconnect) wait for the next round.
        list.append(&mut self.dirty);
        self.dirty = list;
    }

    fn may_issue(&self, due: u64) -> bool {
        !self.measuring(due) || self.budget.is_none_or(|b| b > 0)
    }

    fn issue(&mut self, i: usize, due: u64) {
        let plan = self.plan;
        let (t, req) = if self.single_target {
            (0, &plan.targets[0].requests[0])
        } else {
            let total = *plan.cumulative.last().unwrap_or(&1);
            let x = self.rng.below(total);
            let t = plan.cumulative.iter().position(|&c| x < c).unwrap_or(0);
            let vs = &plan.targets[t].requests;
            (t, &vs[self.rng.below(vs.len() as u64) as usize])
        };
        let c = &mut self.conns[i];
        c.wbuf.extend_from_slice(req);
        c.inflight.push_back(InFlight {
            target: t as u16,
            due,
            sent: self.now,
        });
        self.outstanding += 1;
        if self.measuring(due) {
            self.stats.sent += 1;
            if let Some(b) = &mut self.budget {
                *b -= 1;
            }
        }
    }

    fn flush(&mut self, i: usize) {
        if self.conns[i].wbuf.is_empty() {
            return;
        }
        match self.conns[i].flush() {
            Ok(n) => {
                if self.measuring(self.now) {
                    self.stats.bytes_sent += n as u64;
                }
            }
            Err(_) => self.drop_conn(i, ErrorKind::Reset, ErrorKind::Reset),
        }
    }

    /// Open loop: hands every request that is due to a connection with room.
    fn dispatch(&mut self) {
        if !self.issuing() {
            return;
        }
        let Some(sched) = &self.sched else { return };
        let mut next = sched.peek();
        while next <= self.now && self.may_issue(next) {
            let Some(i) = self.ready.pop_front() else {
                break;
            };
            let i = i as usize;
            self.conns[i].queued = false;
            if self.conns[i].state != State::Open || self.conns[i].inflight.len() >= self.depth {
                continue;
            }
            let due = self.sched.as_mut().map_or(0, Schedule::pop);
            self.issue(i, due);
            let c = &mut self.conns[i];
            if c.inflight.len() < self.depth {
                c.queued = true;
                self.ready.push_back(i as u32);
            }
            self.mark_dirty(i);
            next = self.sched.as_ref().map_or(u64::MAX, Schedule::peek);
        }
    }
}

static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// epoll_pwait2 (nanosecond timeout) with a fallback to epoll_wait (milliseconds, rounded up).
fn wait(epfd: i32, events: &mut [libc::epoll_event], timeout_ns: u64) -> Result<usize, Error> {
    loop {
        let n = if !NO_PWAIT2.load(Ordering::Relaxed) {
            let ts = libc::timespec {
                tv_sec: (timeout_ns / SEC) as libc::time_t,
                tv_nsec: (timeout_ns % SEC) as libc::c_long,
            };
            // SAFETY: events is a valid buffer of events.len() entries; ts is valid.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    epfd,
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    &ts as *const libc::timespec,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                NO_PWAIT2.store(true, Ordering::Relaxed);
                continue;
            }
            r as i64
        } else {
            let ms = timeout_ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32;
            // SAFETY: events is a valid buffer of events.len() entries.
            i64::from(unsafe {
                libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, ms)
            })
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::Io(format!("epoll_wait: {e}")));
        }
    }
}
