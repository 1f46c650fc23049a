//! Builds the BPF programs (src/bpf/tracer.bpf.c, and floor.bpf.c for the hook-floor
//! benchmark) into libbpf-rs skeletons, and the x86_64 syscall name table from the kernel
//! headers (linux-libc-dev's asm/unistd_64.h).
//!
//! Needs clang (any version with the BPF target, 14 works) and the libbpf headers that
//! libbpf-cargo extracts itself; no bpftool and no vmlinux.h: the kernel types the
//! program reads are declared by hand in src/bpf/core.h (CO-RE relocated at load time).

use std::env;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/tracer.bpf.c";
/// The hook-floor programs: the tracepoints' own cost (examples/hook_floor.rs).
const FLOOR_SRC: &str = "src/bpf/floor.bpf.c";
const UNISTD: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch != "x86_64" {
        panic!("tracer: only x86_64 is supported (the BPF program reads x86_64 pt_regs)");
    }

    for (src, skel) in [(SRC, "tracer.skel.rs"), (FLOOR_SRC, "floor.skel.rs")] {
        if let Err(e) = SkeletonBuilder::new()
            .source(src)
            // v3: atomic fetch-and-add and compare-and-swap that return a value (kernel 5.12).
            .clang_args(["-I", "src/bpf", "-mcpu=v3", "-Wall", "-Wno-unused-function"])
            .build_and_generate(out.join(skel))
        {
            panic!(
                "tracer: compiling {src} failed: {e:#}\n\
                 The build needs clang with the BPF target (Debian: clang, llvm), \
                 plus libelf-dev, zlib1g-dev and pkg-config for libbpf."
            );
        }
        println!("cargo:rerun-if-changed={src}");
    }
    println!("cargo:rerun-if-changed=src/bpf/core.h");

    let unistd = fs::read_to_string(UNISTD).unwrap_or_else(|e| {
        panic!("tracer: reading {UNISTD}: {e} (Debian package linux-libc-dev)")
    });
    let mut names = Vec::new();
    for line in unistd.lines() {
        let mut it = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(nr)) = (it.next(), it.next(), it.next()) {
            if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<u32>()) {
                names.push((nr, name.to_string()));
            }
        }
    }
    names.sort();
    let mut src = String::from("/// x86_64 syscall numbers and names, from asm/unistd_64.h.\n");
    src.push_str("pub const SYSCALL_NAMES: &[(u32, &str)] = &[\n");
    for (nr, name) in &names {
        src.push_str(&format!("    ({nr}, \"{name}\"),\n"));
    }
    src.push_str("];\n");
    fs::write(out.join("syscall_names.rs"), src).expect("writing syscall_names.rs");
    println!("cargo:rerun-if-changed={UNISTD}");
}
