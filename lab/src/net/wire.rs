//! The delaying forwarder: a wire with latency between two hosts, for kernels without
//! netem.
//!
//! Each delayed link is cut in two: host A's veth pair ends in the wire namespace as
//! interface `a`, host B's as `b`, and nothing else joins them. A thread of the lab, moved
//! into the wire namespace, reads every Ethernet frame arriving on `a` or `b` from an
//! `AF_PACKET` socket, holds it for the one-way delay and writes it out of the other side
//! unchanged. It works below IP: ARP, TCP handshakes, ACKs, retransmissions and window
//! updates cross it as they are, so the two hosts' TCP stacks talk to each other end to
//! end and see the full round trip, as on a cable with a switch that is slow. A TCP proxy
//! would have been simpler and dishonest: it acknowledges data the far side has not
//! received, so the server's writes would complete against the proxy's buffers and its
//! connection set-up, Nagle and flow control would meet a peer one hop away.
//!
//! Frames keep their order: a frame's release time is its arrival plus the delay (plus a
//! uniform draw in ±jitter), but never earlier than the frame before it in the same
//! direction. The sockets use `PACKET_VNET_HDR`, so segmentation and checksum offload
//! metadata (veth passes 64 KiB TCP segments with checksums left to do) go through with the
//! frame instead of being lost. The thread is the lab's, in a namespace of its own: none of
//! its syscalls is the server's, and the tracer never sees them. It costs CPU (two calls per
//! frame, a wake-up per release), which is why the run records the round trip measured
//! through it rather than the one asked for.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

// linux/if_packet.h
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// struct virtio_net_hdr, which `PACKET_VNET_HDR` puts before every frame.
const VNET_HDR_LEN: usize = 10;
/// A 64 KiB segment, its Ethernet header and the virtio header.
const FRAME_MAX: usize = 65_536 + 14 + VNET_HDR_LEN + 64;
/// The longest the thread sleeps without looking at its stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// How long each frame is held, one way.
#[derive(Debug, Clone, Copy)]
pub struct Delay {
    pub one_way: Duration,
    /// Each frame's delay is drawn uniformly from one_way ± jitter.
    pub jitter: Duration,
}

/// Frames carried and lost, per direction.
#[derive(Debug, Default)]
pub struct Counters {
    pub frames: [AtomicU64; 2],
    pub dropped: [AtomicU64; 2],
}

/// A running forwarder; [`Wire::stop`] ends it.
pub struct Wire {
    pub name: String,
    stop: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Wire {
    /// Starts forwarding between interfaces `a` and `b` of the namespace `netns`; returns
    /// once both sockets are open (or with why they could not be).
    pub fn start(name: &str, netns: &str, a: &str, b: &str, delay: Delay) -> Result<Wire> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = {
            let (stop, counters) = (stop.clone(), counters.clone());
            let (netns, a, b) = (netns.to_string(), a.to_string(), b.to_string());
            std::thread::Builder::new()
                .name(format!("wire-{name}"))
                .spawn(move || {
                    let opened = (|| {
                        // This thread lives in the wire namespace until it ends.
                        std::mem::forget(super::ns::enter(&netns)?);
                        // Sleeps end within a microsecond of the release time, not 50 µs.
                        // SAFETY: prctl with an integer argument, for this thread.
                        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
                        realtime();
                        Ok([open(&a)?, open(&b)?])
                    })();
                    match opened {
                        Ok(sockets) => {
                            let _ = ready_tx.send(Ok(()));
                            forward(&sockets, delay, &stop, &counters);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .context("starting the forwarder's thread")?
        };
        ready_rx
            .recv()
            .context("the forwarder's thread ended before opening its sockets")??;
        Ok(Wire {
            name: name.to_string(),
            stop,
            counters,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A wire is part of the network, not a program competing with the others: netem delays
/// frames in the kernel's softirq, which no process preempts. Under a busy machine (a
/// compiler on every core) a forwarder at normal priority waited for a CPU for hundreds of
/// milliseconds and the links it made were far longer than asked. SCHED_FIFO (a low
/// real-time priority) lets it run as soon as a frame is due; it sleeps in ppoll otherwise.
/// Without the privilege it stays at normal priority.
fn realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: pid 0 is the calling thread; a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

fn os_error(what: &str) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::last_os_error()).context(what.to_string())
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> Result<()> {
    // SAFETY: a valid socket and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_error(&format!("setsockopt({level}, {name})")));
    }
    Ok(())
}

/// An `AF_PACKET` socket that sees every frame arriving on `interface` (not the ones it
/// sends itself) and sends frames out of it, virtio header first.
fn open(interface: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {interface} in the wire namespace");
    }
    // Protocol 0: nothing is queued until bind() names the interface.
    // SAFETY: plain socket creation; the fd is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(os_error("opening an AF_PACKET socket (needs CAP_NET_RAW)"));
    }
    // SAFETY: raw is a new, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, 1)?;
    set_int(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
    // Room for a burst of full segments while the thread sleeps to the next release.
    set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20)?;
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = index as i32;
    // SAFETY: a valid socket and address of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_error(&format!("binding a packet socket to {interface}")));
    }
    Ok(fd)
}

/// A frame waiting for its release time.
struct Held {
    release: Instant,
    frame: Vec<u8>,
}

/// The forwarding loop: receive what arrived on either side, send what is due.
fn forward(sockets: &[OwnedFd; 2], delay: Delay, stop: &AtomicBool, counters: &Counters) {
    let mut queues: [VecDeque<Held>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut last_release = [Instant::now(); 2];
    let mut buf = vec![0u8; FRAME_MAX];
    let mut rng = fastrand::Rng::new();
    let jitter_ns = delay.jitter.as_nanos() as i64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Direction d carries what arrived on socket d out of socket 1 - d.
        for d in 0..2 {
            while queues[d].front().is_some_and(|h| h.release <= now) {
                let held = queues[d].pop_front().expect("checked above");
                // SAFETY: a valid socket and a buffer of the length given.
                let n = unsafe {
                    libc::send(
                        sockets[1 - d].as_raw_fd(),
                        held.frame.as_ptr().cast(),
                        held.frame.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                let counter = if n < 0 {
                    &counters.dropped[d]
                } else {
                    &counters.frames[d]
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        let next = queues
            .iter()
            .filter_map(|q| q.front().map(|h| h.release))
            .min();
        let wait = next.map_or(IDLE_WAIT, |t| {
            t.saturating_duration_since(now).min(IDLE_WAIT)
        });
        let mut fds = [0, 1].map(|i| libc::pollfd {
            fd: sockets[i].as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: two valid pollfds and a timespec; no signal mask change.
        let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &timeout, std::ptr::null()) };
        if ready <= 0 {
            continue;
        }
        for (d, pfd) in fds.iter().enumerate() {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                // SAFETY: a valid socket and a buffer of the length given.
                let n = unsafe {
                    libc::recv(
                        sockets[d].as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n <= 0 {
                    break;
                }
                let arrived = Instant::now();
                let mut hold = delay.one_way;
                if jitter_ns > 0 {
                    let offset = rng.i64(-jitter_ns..=jitter_ns);
                    hold = if offset >= 0 {
                        hold + Duration::from_nanos(offset as u64)
                    } else {
                        hold.saturating_sub(Duration::from_nanos(offset.unsigned_abs()))
                    };
                }
                let release = (arrived + hold).max(last_release[d]);
                last_release[d] = release;
                queues[d].push_back(Held {
                    release,
                    frame: buf[..n as usize].to_vec(),
                });
            }
        }
    }
}
