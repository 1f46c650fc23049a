//! Starting the target command ourselves, held before exec until the tracer is ready.
//!
//! `std::process::Command::spawn` waits for the exec, so a child that must wait for us
//! before it execs would deadlock it: we fork by hand. Between fork and exec the child
//! only makes async-signal-safe calls on data prepared before the fork.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

use anyhow::{bail, Context, Result};

/// How the child waits before exec.
pub enum Hold {
    /// Reads one byte from this pipe (the eBPF backend writes it once loaded).
    Pipe(i32),
    /// PTRACE_TRACEME, SIGSTOP itself, then installs this seccomp filter and execs.
    Ptrace(Vec<libc::sock_filter>),
}

pub struct Argv {
    // Keeps the strings the pointers point into alive.
    _strings: Vec<CString>,
    ptrs: Vec<*const libc::c_char>,
}

impl Argv {
    pub fn new(cmd: &[OsString]) -> Result<Argv> {
        if cmd.is_empty() {
            bail!("no command to start");
        }
        let strings: Vec<CString> = cmd
            .iter()
            .map(|a| CString::new(a.as_bytes()).context("argument contains a NUL byte"))
            .collect::<Result<_>>()?;
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Ok(Argv {
            _strings: strings,
            ptrs,
        })
    }
}

/// Forks; the child waits as `hold` says, then execs `argv` (PATH searched). Returns the
/// child's pid in the parent.
pub fn fork_held(argv: &Argv, hold: &Hold) -> Result<i32> {
    // Filter program prepared before the fork (no allocation in the child).
    let prog = match hold {
        Hold::Ptrace(f) => Some(libc::sock_fprog {
            len: f.len() as u16,
            filter: f.as_ptr() as *mut libc::sock_filter,
        }),
        Hold::Pipe(_) => None,
    };
    let not_root = unsafe { libc::geteuid() } != 0;
    // SAFETY: the child runs only async-signal-safe libc calls before exec or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(pid);
    }
    unsafe {
        // Die with the tracer rather than run on unobserved.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        match hold {
            Hold::Pipe(fd) => {
                let mut b = 0u8;
                libc::read(*fd, &mut b as *mut u8 as *mut libc::c_void, 1);
                if b != 1 {
                    libc::_exit(126);
                }
            }
            Hold::Ptrace(_) => {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                    libc::_exit(126);
                }
                libc::raise(libc::SIGSTOP);
                // The tracer has set PTRACE_O_TRACESECCOMP by now: a RET_TRACE syscall
                // without it would fail with ENOSYS.
                if not_root {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                }
                let p = prog.as_ref().expect("ptrace hold has a filter");
                if libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    p as *const libc::sock_fprog,
                ) != 0
                {
                    libc::_exit(126);
                }
            }
        }
        libc::execvp(argv.ptrs[0], argv.ptrs.as_ptr());
        libc::_exit(127);
    }
}
