//! A small program with known I/O: the target of the tracer's tests (a bin, so that
//! integration tests always get it as CARGO_BIN_EXE_tracer-workload).
//!
//! - `serve PORT_FILE LOG_PATH [DB_PORT]`: a thread-per-connection line server on an
//!   ephemeral port (written to PORT_FILE). Per request line: one read from the client,
//!   one write + one read on the "database" connection (when DB_PORT is given), one write
//!   to the log file, one write to the client.
//! - `uring PORT_FILE`: the same line protocol (no database, no log) over io_uring: one
//!   ACCEPT, then per request one READ and one WRITE ring operation, each submitted and
//!   reaped with one io_uring_enter.
//! - `block DB_PORT N`: connects to DB_PORT and reads one byte N times; each read blocks
//!   for as long as the peer waits before sending.
//! - `epoll-dup DB_PORT N`: what mio does with a worker's epoll: creates an epoll set, dups
//!   its descriptor, registers a connection to DB_PORT through the first number and waits
//!   on the second, N times (`epoll_wait`, then a one-byte read).
//! - `peers N ADDR...`: connects to every ADDR (`IP:PORT`, `[V6]:PORT`) in turn, then per
//!   connection N exchanges like the database's of `serve` (a 6-byte write, a 4-byte
//!   read), and exits: one process talking to the database and to look-alikes of it.
//! - `churn`: starts and ends threads without pause (8 at a time), until killed: a target
//!   whose task list always holds threads that are exiting.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(&args[2], &args[3], args.get(4).map(|p| p.parse().unwrap())),
        Some("uring") => uring(&args[2]),
        Some("block") => block(args[2].parse().unwrap(), args[3].parse().unwrap()),
        Some("epoll-dup") => epoll_dup(args[2].parse().unwrap(), args[3].parse().unwrap()),
        Some("peers") => peers(args[2].parse().unwrap(), &args[3..]),
        Some("churn") => churn(),
        _ => panic!(
            "usage: tracer-workload serve PORT_FILE LOG_PATH [DB_PORT] | uring PORT_FILE | \
             block DB_PORT N | epoll-dup DB_PORT N | peers N ADDR... | churn"
        ),
    }
}

fn churn() -> ! {
    loop {
        let threads: Vec<_> = (0..8).map(|_| std::thread::spawn(|| {})).collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

fn serve(port_file: &str, log_path: &str, db_port: Option<u16>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    // Like a real server: the log is opened at start-up, before serving.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    std::fs::write(port_file, l.local_addr().unwrap().port().to_string()).unwrap();
    for conn in l.incoming() {
        let mut c = conn.unwrap();
        let mut log = log.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut db = db_port.map(|p| TcpStream::connect(("127.0.0.1", p)).unwrap());
            let mut buf = [0u8; 64];
            loop {
                // Requests are exactly 8 bytes ("request\n"), one per read.
                match c.read(&mut buf[..8]) {
                    Ok(8) => {}
                    _ => return,
                }
                if let Some(db) = db.as_mut() {
                    db.write_all(b"query\n").unwrap();
                    db.read_exact(&mut buf[..4]).unwrap();
                }
                log.write_all(b"served one request\n").unwrap();
                c.write_all(b"response\n").unwrap();
            }
        });
    }
}

fn peers(n: usize, addrs: &[String]) {
    let mut conns: Vec<TcpStream> = addrs
        .iter()
        .map(|a| TcpStream::connect(a.as_str()).unwrap_or_else(|e| panic!("connect {a}: {e}")))
        .collect();
    let mut buf = [0u8; 4];
    for c in &mut conns {
        for _ in 0..n {
            c.write_all(b"query\n").unwrap();
            c.read_exact(&mut buf).unwrap();
        }
    }
}

fn block(db_port: u16, n: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", db_port)).unwrap();
    let mut b = [0u8; 1];
    for _ in 0..n {
        s.read_exact(&mut b).unwrap();
    }
}

fn epoll_dup(db_port: u16, n: usize) {
    use std::os::fd::AsRawFd;

    let mut s = TcpStream::connect(("127.0.0.1", db_port)).unwrap();
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0, "epoll_create1");
        let dup = libc::fcntl(ep, libc::F_DUPFD_CLOEXEC, 0);
        assert!(dup >= 0, "dup");
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        assert_eq!(
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev),
            0
        );
        let mut b = [0u8; 1];
        for _ in 0..n {
            let mut out = [libc::epoll_event { events: 0, u64: 0 }; 1];
            assert_eq!(libc::epoll_wait(dup, out.as_mut_ptr(), 1, -1), 1);
            s.read_exact(&mut b).unwrap();
        }
    }
}

fn uring(port_file: &str) {
    use io_uring::{opcode, types, IoUring};
    use std::os::fd::AsRawFd;

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(port_file, l.local_addr().unwrap().port().to_string()).unwrap();
    let mut ring = IoUring::new(8).unwrap();
    let mut op = |e: io_uring::squeue::Entry| -> i32 {
        unsafe { ring.submission().push(&e).unwrap() };
        ring.submit_and_wait(1).unwrap();
        ring.completion().next().unwrap().result()
    };
    loop {
        let fd = op(opcode::Accept::new(
            types::Fd(l.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .build());
        assert!(fd >= 0, "accept: {fd}");
        let mut buf = [0u8; 8];
        loop {
            let n = op(opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), 8).build());
            if n != 8 {
                break;
            }
            let w = op(opcode::Write::new(types::Fd(fd), b"response\n".as_ptr(), 9).build());
            assert_eq!(w, 9);
        }
        unsafe { libc::close(fd) };
    }
}
