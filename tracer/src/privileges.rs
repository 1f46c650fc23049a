//! What the eBPF backend needs from the machine, checked up front so that the user gets
//! one message naming what is missing instead of a libbpf error.

use std::path::Path;

use anyhow::{bail, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN also does), and kernel BTF. Mounts
/// tracefs when it is missing and we may (the tracer's tp_btf programs do not need it,
/// but bpftool, perf and the exporter's users do; failure is not fatal).
pub fn check_ebpf() -> Result<Vec<String>> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        missing.push("root or the capabilities CAP_BPF and CAP_PERFMON");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y)");
    }
    if !missing.is_empty() {
        bail!(
            "the eBPF backend needs {}; use `--backend ptrace` instead",
            missing.join(" and ")
        );
    }
    let mut notes = Vec::new();
    let tracefs = Path::new("/sys/kernel/tracing/events");
    if !tracefs.exists() {
        let r = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
        if !matches!(r, Ok(s) if s.success()) || !tracefs.exists() {
            notes.push("tracefs is not mounted at /sys/kernel/tracing and could not be".into());
        }
    }
    Ok(notes)
}

/// What `auto` means wherever a backend is chosen for the user: eBPF where
/// [`check_ebpf`] passes, else ptrace, with a note saying why and what that costs.
pub fn auto_backend() -> (crate::Backend, Option<String>) {
    match check_ebpf() {
        Ok(_) => (crate::Backend::Ebpf, None),
        Err(error) => (
            crate::Backend::Ptrace,
            Some(format!(
                "eBPF tracing not permitted ({error:#}); traced with ptrace, which is slower, approximate, and cannot see io_uring ring operations or blocked time"
            )),
        ),
    }
}
