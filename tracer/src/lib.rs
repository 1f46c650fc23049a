//! syscall-lab's tracer: attributes every syscall, io_uring ring operation and blocked
//! interval of a server to network, database, logging and the I/O machinery.
//!
//! One interface ([`start`] -> [`Session`] -> [`Profile`]), two backends: eBPF (in-kernel
//! classification and aggregation, [`ebpf`]) and ptrace (a portable approximation,
//! [`ptrace`]), plus Debian's `strace -f -c` as a third, foreign observer ([`strace`]) for
//! comparison. `lab trace` is [`cli::run`]; `lab run` uses [`start`] directly.

pub mod category;
pub mod cli;
pub mod context;
pub mod ebpf;
pub mod exporter;
pub mod privileges;
pub mod procfs;
pub mod procrole;
pub mod profile;
pub mod ptrace;
pub mod render;
mod session;
mod spawn;
pub mod strace;
pub mod syscalls;

pub use category::Category;
pub use context::{DbEndpoint, Overrides};
pub use profile::{Kind, Profile, Stats};
pub use session::{start, Backend, Options, Session, Target};
