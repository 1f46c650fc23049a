//! `lab syscost`: what one system call costs on this machine, the first workshop's numbers.
//!
//! Each entry is a loop of one call: a raw `syscall(SYS_getpid)` (glibc cannot cache it),
//! `clock_gettime` (answered by the vDSO in user space: no trap), a 1-byte `write` to
//! /dev/null, a 1-byte `read` from a pipe kept full, an `io_uring_enter` that submits and
//! waits for nothing, a `futex` wake with no waiter, and an empty loop for reference.
//!
//! Method: `iterations / 10` calls of warm-up, then `--batches` batches of `--iterations`
//! calls each, timed with the monotonic clock around each batch; the figure is the median
//! batch's nanoseconds per call (min and max beside it). With `--verify` each entry also
//! runs in a child process traced with eBPF, and the syscalls it made per call are counted:
//! the "1 syscall per call" (and "0 for the vDSO") is measured, not assumed.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::results::Spread;

pub const SCHEMA: &str = "syscall-lab/syscost";
pub const SCHEMA_VERSION: u32 = 1;

/// Measure what single system calls cost here, in nanoseconds per call.
#[derive(Debug, Clone, clap::Args)]
pub struct SyscostArgs {
    /// Calls per timed batch (the warm-up is a tenth of this).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(100..=100_000_000))]
    pub iterations: u64,
    /// Timed batches per entry; the median batch is reported.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batches: u32,
    /// Only these entries (comma-separated); default all.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(ENTRY_NAMES))]
    pub only: Vec<String>,
    /// Also count, with the eBPF tracer, the syscalls each entry really makes per call
    /// (runs each entry once more in a traced child process; needs root).
    #[arg(long)]
    pub verify: bool,
    /// Write the results as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Internal: run one entry as the traced child of `--verify`.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

impl Default for SyscostArgs {
    fn default() -> Self {
        SyscostArgs {
            iterations: 200_000,
            batches: 7,
            only: Vec::new(),
            verify: false,
            json: None,
            child: None,
        }
    }
}

/// The entries, in the order they are run and shown.
pub const ENTRY_NAMES: [&str; 7] = [
    "loop",
    "clock_gettime",
    "getpid",
    "futex_wake",
    "write_devnull",
    "read_pipe",
    "io_uring_enter",
];

/// What an entry does, and the syscalls one call of it should make.
struct Entry {
    name: &'static str,
    call: &'static str,
    /// The syscall counted by `--verify` (None: count every syscall of the loop).
    syscall: Option<&'static str>,
    expected_syscalls_per_call: f64,
    note: &'static str,
}

const ENTRIES: [Entry; 7] = [
    Entry {
        name: "loop",
        call: "an empty loop iteration (std::hint::black_box), for reference",
        syscall: None,
        expected_syscalls_per_call: 0.0,
        note: "no kernel at all: what the loop itself costs",
    },
    Entry {
        name: "clock_gettime",
        call: "clock_gettime(CLOCK_MONOTONIC) through libc",
        syscall: Some("clock_gettime"),
        expected_syscalls_per_call: 0.0,
        note: "the vDSO: kernel code mapped into the process reads the clock from a shared page, no trap",
    },
    Entry {
        name: "getpid",
        call: "syscall(SYS_getpid), raw so glibc cannot cache it",
        syscall: Some("getpid"),
        expected_syscalls_per_call: 1.0,
        note: "the bare price of a trap: entry, syscall table, return; no work, no copy",
    },
    Entry {
        name: "futex_wake",
        call: "futex(FUTEX_WAKE_PRIVATE, 1) on a word nobody waits on",
        syscall: Some("futex"),
        expected_syscalls_per_call: 1.0,
        note: "a lock release that found a waiter-bit set costs this much even if nobody waits",
    },
    Entry {
        name: "write_devnull",
        call: "write(fd of /dev/null, 1 byte)",
        syscall: Some("write"),
        expected_syscalls_per_call: 1.0,
        note: "the trap plus a file lookup and the VFS; /dev/null copies nothing",
    },
    Entry {
        name: "read_pipe",
        call: "read(pipe, 1 byte) from a pipe kept full",
        syscall: Some("read"),
        expected_syscalls_per_call: 1.0,
        note: "the trap plus a copy from kernel to user memory and the pipe's lock; one refilling write per 64 KiB read",
    },
    Entry {
        name: "io_uring_enter",
        call: "io_uring_enter(ring, to_submit 0, min_complete 0, flags 0)",
        syscall: Some("io_uring_enter"),
        expected_syscalls_per_call: 1.0,
        note: "what a ring round trip costs before any operation: the floor of an io_uring server's syscalls",
    },
];

/// The whole result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Syscost {
    pub schema: String,
    pub schema_version: u32,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub method: String,
    pub warmup_iterations: u64,
    pub iterations_per_batch: u64,
    pub batches: u32,
    pub entries: Vec<SyscostEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyscostEntry {
    pub name: String,
    pub call: String,
    /// Median, min and max over batches, nanoseconds per call.
    pub ns_per_call: Spread,
    pub expected_syscalls_per_call: f64,
    /// Counted by the eBPF tracer with `--verify`.
    pub traced_syscalls_per_call: Option<f64>,
    pub note: String,
}

pub fn run(args: SyscostArgs) -> Result<ExitCode> {
    if let Some(name) = &args.child {
        child(name, args.iterations)?;
        return Ok(ExitCode::SUCCESS);
    }
    let result = measure(&args)?;
    match &args.json {
        Some(path) if path.as_os_str() == "-" => {
            println!("{}", serde_json::to_string_pretty(&result)?)
        }
        Some(path) => std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?,
        None => {}
    }
    if args.json.as_deref().map(|p| p.as_os_str()) != Some("-".as_ref()) {
        print!("{}", render(&result));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs every entry asked for (and traces it with `--verify`).
pub fn measure(args: &SyscostArgs) -> Result<Syscost> {
    let warmup = (args.iterations / 10).max(1);
    let env = crate::run_cmd::environment();
    let mut entries = Vec::new();
    for entry in &ENTRIES {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == entry.name) {
            continue;
        }
        let mut bench = Bench::new(entry.name)?;
        bench.calls(warmup);
        let mut per_batch = Vec::new();
        for _ in 0..args.batches {
            let start = Instant::now();
            bench.calls(args.iterations);
            per_batch.push(start.elapsed().as_nanos() as f64 / args.iterations as f64);
        }
        let traced = if args.verify {
            Some(verify(entry, args.iterations)?)
        } else {
            None
        };
        entries.push(SyscostEntry {
            name: entry.name.into(),
            call: entry.call.into(),
            ns_per_call: Spread::of(&per_batch),
            expected_syscalls_per_call: entry.expected_syscalls_per_call,
            traced_syscalls_per_call: traced,
            note: entry.note.into(),
        });
    }
    Ok(Syscost {
        schema: SCHEMA.into(),
        schema_version: SCHEMA_VERSION,
        kernel: env.kernel,
        cpu_model: env.cpu_model,
        // SAFETY: sysconf has no preconditions (not env.cpus: this thread may be pinned).
        cpus: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
        method: format!(
            "{warmup} calls of warm-up, then {} batches of {} calls on one thread (not pinned), each batch timed with CLOCK_MONOTONIC; ns/call is the median batch (min and max beside it)",
            args.batches, args.iterations
        ),
        warmup_iterations: warmup,
        iterations_per_batch: args.iterations,
        batches: args.batches,
        entries,
    })
}

pub fn render(s: &Syscost) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "What one call costs on this machine ({}, {} CPUs, Linux {})\n\n",
        s.cpu_model, s.cpus, s.kernel
    );
    let _ = writeln!(
        out,
        "{:<16} {:>10} {:>17}  {:>9} {:>9}  call",
        "entry", "ns/call", "(min-max)", "syscalls", "traced"
    );
    for e in &s.entries {
        let _ = writeln!(
            out,
            "{:<16} {:>10.1} {:>17}  {:>9} {:>9}  {}",
            e.name,
            e.ns_per_call.median,
            format!("({:.1}-{:.1})", e.ns_per_call.min, e.ns_per_call.max),
            format!("{}", e.expected_syscalls_per_call),
            e.traced_syscalls_per_call
                .map_or("-".into(), |t| format!("{t:.3}")),
            e.call
        );
    }
    let _ = writeln!(out, "\nmethod: {}", s.method);
    let _ = writeln!(
        out,
        "syscalls: expected per call; traced: counted by eBPF per call (--verify)"
    );
    out
}

/// One entry's state: the file descriptors and ring it calls on.
struct Bench {
    name: &'static str,
    fd: libc::c_int,
    pipe_write: libc::c_int,
    in_pipe: usize,
    futex_word: u32,
    sink: u64,
}

const PIPE_CHUNK: usize = 64 * 1024;

impl Bench {
    fn new(name: &str) -> Result<Bench> {
        let name = ENTRY_NAMES
            .into_iter()
            .find(|n| *n == name)
            .with_context(|| format!("no entry {name:?}; the entries are {ENTRY_NAMES:?}"))?;
        let mut bench = Bench {
            name,
            fd: -1,
            pipe_write: -1,
            in_pipe: 0,
            futex_word: 0,
            sink: 0,
        };
        match name {
            "write_devnull" => {
                // SAFETY: a NUL-terminated path literal.
                bench.fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY) };
                if bench.fd < 0 {
                    bail!("open /dev/null: {}", std::io::Error::last_os_error());
                }
            }
            "read_pipe" => {
                let mut fds = [0 as libc::c_int; 2];
                // SAFETY: fds has room for the two descriptors.
                if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                    bail!("pipe2: {}", std::io::Error::last_os_error());
                }
                bench.fd = fds[0];
                bench.pipe_write = fds[1];
            }
            "io_uring_enter" => {
                // struct io_uring_params is 120 bytes; all zero asks for the defaults.
                let mut params = [0u8; 120];
                // SAFETY: params is as large as the kernel's struct io_uring_params.
                let fd =
                    unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
                if fd < 0 {
                    bail!(
                        "io_uring_setup: {} (io_uring disabled? see /proc/sys/kernel/io_uring_disabled)",
                        std::io::Error::last_os_error()
                    );
                }
                bench.fd = fd as libc::c_int;
            }
            _ => {}
        }
        Ok(bench)
    }

    fn refill(&mut self) {
        let chunk = [0u8; PIPE_CHUNK];
        // The pipe holds 64 KiB by default: one write fills it.
        // SAFETY: chunk is valid for PIPE_CHUNK bytes.
        let n = unsafe { libc::write(self.pipe_write, chunk.as_ptr().cast(), PIPE_CHUNK) };
        self.in_pipe = n.max(0) as usize;
    }

    /// `n` calls of this entry.
    #[inline(never)]
    fn calls(&mut self, n: u64) {
        let mut byte = [0u8; 1];
        match self.name {
            "loop" => {
                for i in 0..n {
                    self.sink = self.sink.wrapping_add(std::hint::black_box(i));
                }
            }
            "clock_gettime" => {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                for _ in 0..n {
                    // SAFETY: ts is a valid timespec.
                    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
                    self.sink = self.sink.wrapping_add(ts.tv_nsec as u64);
                }
            }
            "getpid" => {
                for _ in 0..n {
                    // SAFETY: getpid has no arguments and no preconditions.
                    let pid = unsafe { libc::syscall(libc::SYS_getpid) };
                    self.sink = self.sink.wrapping_add(pid as u64);
                }
            }
            "futex_wake" => {
                let word: *mut u32 = &mut self.futex_word;
                for _ in 0..n {
                    // SAFETY: word points to a live u32; waking nobody is harmless.
                    let woken = unsafe {
                        libc::syscall(
                            libc::SYS_futex,
                            word,
                            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                            1,
                            std::ptr::null::<libc::timespec>(),
                            std::ptr::null::<u32>(),
                            0,
                        )
                    };
                    self.sink = self.sink.wrapping_add(woken as u64);
                }
            }
            "write_devnull" => {
                for _ in 0..n {
                    // SAFETY: byte is valid for 1 byte; fd is open.
                    let w = unsafe { libc::write(self.fd, byte.as_ptr().cast(), 1) };
                    self.sink = self.sink.wrapping_add(w as u64);
                }
            }
            "read_pipe" => {
                for _ in 0..n {
                    if self.in_pipe == 0 {
                        self.refill();
                    }
                    // SAFETY: byte is valid for 1 byte; the pipe holds at least one.
                    let r = unsafe { libc::read(self.fd, byte.as_mut_ptr().cast(), 1) };
                    self.in_pipe = self.in_pipe.saturating_sub(r.max(0) as usize);
                    self.sink = self.sink.wrapping_add(r as u64);
                }
            }
            "io_uring_enter" => {
                for _ in 0..n {
                    // SAFETY: an enter that submits nothing and waits for nothing.
                    let r = unsafe {
                        libc::syscall(
                            libc::SYS_io_uring_enter,
                            self.fd,
                            0u32,
                            0u32,
                            0u32,
                            std::ptr::null::<libc::c_void>(),
                            0usize,
                        )
                    };
                    self.sink = self.sink.wrapping_add(r as u64);
                }
            }
            _ => unreachable!("checked in new"),
        }
        std::hint::black_box(self.sink);
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for fd in [self.fd, self.pipe_write] {
            if fd >= 0 {
                // SAFETY: our own descriptors, closed once.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// The traced child: set up, say "ready", wait for "go", make the calls, say "done", and
/// wait for standard input to close (so that the tracer stops while the process lives).
fn child(name: &str, iterations: u64) -> Result<()> {
    let mut bench = Bench::new(name)?;
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    stdin.lock().read_line(&mut line)?;
    bench.calls(iterations);
    writeln!(out, "done")?;
    out.flush()?;
    line.clear();
    stdin.lock().read_line(&mut line)?;
    Ok(())
}

/// Runs `entry` for `iterations` calls in a child traced with eBPF; returns the syscalls
/// it made per call (of the entry's syscall, or of all syscalls for the empty loop).
fn verify(entry: &Entry, iterations: u64) -> Result<f64> {
    tracer::privileges::check_ebpf().context("--verify traces with eBPF")?;
    // The `lab` binary: this one, or, from a test binary, the one built beside it.
    let exe = servers::launch::sibling_binary("lab").or_else(|_| std::env::current_exe())?;
    let mut child = std::process::Command::new(exe)
        .args(["syscost", "--child", entry.name, "--iterations"])
        .arg(iterations.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the traced child")?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("the traced child said {line:?} instead of ready");
    }
    let session = tracer::start(
        tracer::Target::Pid(child.id() as i32),
        tracer::Options {
            backend: tracer::Backend::Ebpf,
            overrides: tracer::Overrides::default(),
            variant: None,
            children: true,
            companions: Vec::new(),
        },
    );
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            return Err(e.context("starting the tracer"));
        }
    };
    writeln!(stdin, "go")?;
    stdin.flush()?;
    line.clear();
    stdout.read_line(&mut line)?;
    let profile = session.stop();
    drop(stdin);
    let _ = child.wait();
    let profile = profile?;
    let counted: u64 = profile
        .calls
        .iter()
        .filter(|c| c.kind == tracer::Kind::Syscall)
        .filter(|c| entry.syscall.is_none_or(|s| c.name == s))
        .map(|c| c.stats.count)
        .sum();
    Ok(counted as f64 / iterations as f64)
}
