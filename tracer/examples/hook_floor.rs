//! The price of the syscall tracepoints alone: attaches `src/bpf/floor.bpf.c` (sys_enter and
//! sys_exit programs that stop after the tgid test) for one process until SIGINT or SIGTERM,
//! then prints how many of its calls the programs saw.
//!
//! `tracer/bench/overhead.sh` measures it as mode `hook-floor`, next to the real tracer: the
//! tracer's loss minus this one is what its own programs cost; this one is what any tracer
//! built on these two tracepoints costs on this kernel, because attaching them slows every
//! syscall of every process (the load generator's too).
//!
//!   cargo build --release -p tracer --examples
//!   target/release/examples/hook_floor --pid PID        (root, or CAP_BPF + CAP_PERFMON)

use std::mem::MaybeUninit;

use anyhow::{anyhow, bail, Context as _, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use nix::sys::signal::{SigSet, Signal};

mod skel {
    #![allow(
        clippy::all,
        clippy::pedantic,
        non_camel_case_types,
        dead_code,
        unused_imports
    )]
    include!(concat!(env!("OUT_DIR"), "/floor.skel.rs"));
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hook_floor: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pid: i32 = match args.as_slice() {
        [flag, pid] if flag == "--pid" => pid
            .parse()
            .map_err(|_| anyhow!("--pid takes a process id, not {pid:?}"))?,
        _ => bail!("usage: hook_floor --pid PID"),
    };
    tracer::context::check_pid(pid)?;
    // Block the stop signals before attaching, then wait for one of them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block().context("blocking SIGINT and SIGTERM")?;

    let mut storage = MaybeUninit::uninit();
    let mut open = skel::FloorSkelBuilder::default()
        .open(&mut storage)
        .context("opening the BPF object")?;
    open.maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow!("the BPF object has no rodata"))?
        .targ_tgid = pid as u32;
    let mut skel = open
        .load()
        .context("loading the BPF programs (root, or CAP_BPF + CAP_PERFMON)")?;
    skel.attach()
        .context("attaching to the syscall tracepoints")?;
    eprintln!("hook_floor: empty programs on sys_enter/sys_exit for pid {pid} (Ctrl-C to stop)");
    stop.wait().context("waiting for SIGINT or SIGTERM")?;
    let (enters, exits) = skel
        .maps
        .bss_data
        .as_deref()
        .map_or((0, 0), |bss| (bss.target_enters, bss.target_exits));
    println!("{exits} calls of pid {pid} went through the hooks ({enters} entries)");
    Ok(())
}
