//! The tracer on a server nobody here wrote: Debian's nginx (nginx-light), one worker,
//! access log on, traced from its master process (the worker is its child). Needs root and
//! `nginx` on PATH (scripts/install-deps installs nginx-light).
//!
//! Issue 16, point 4: `lab trace` on an nginx worker left calls on client sockets in
//! `other`, for two reasons this test provokes on purpose:
//! - calls made while the tracer attached, before it had put the listening port and the
//!   log file into the program's maps (attached under load here);
//! - connections reset by the client: the kernel takes the port back from a reset socket
//!   (skc_num reads 0), so the `recvfrom` that reports ECONNRESET and the `close` after it
//!   lost their category (reset with SO_LINGER 0 here).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tracer::{start, Backend, Category, Kind, Options, Target};

struct Nginx {
    master: Reap,
    port: u16,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master stops its worker on SIGTERM (Reap's signal) before it exits.
        let _ = &self.master;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx in the foreground (`daemon off`: our child), one worker, access log on, every
/// path it writes in a temporary folder, on a free port.
fn nginx() -> Nginx {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tracer-test-nginx-{port}-{}", rand()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("nginx is not installed: apt-get install nginx-light (scripts/install-deps)");
    let n = Nginx {
        master: Reap(child),
        port,
        dir,
    };
    wait_http_ok(port, "/", Duration::from_secs(20));
    n
}

/// One keep-alive request, then a reset (SO_LINGER 0): nginx's next read on that
/// connection fails with ECONNRESET, and it closes the socket.
fn request_then_reset(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"hello\n") {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "nginx closed the connection early");
        got.extend_from_slice(&buf[..k]);
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

#[test]
fn nginx_client_socket_calls_are_network_from_attach_to_reset() {
    require_root();
    let n = nginx();
    let master = n.master.0.id() as i32;
    // Load first, then attach: calls keep coming while the tracer starts.
    let port = n.port;
    let load = std::thread::spawn(move || http_load(port, "/", 8, 8000));
    std::thread::sleep(Duration::from_millis(150));
    let session = start(Target::Pid(master), Options::new(Backend::Ebpf)).unwrap();
    let (sent, _) = load.join().unwrap();
    assert!(sent > 0);
    let resets = 20;
    for _ in 0..resets {
        request_then_reset(port);
    }
    std::thread::sleep(Duration::from_millis(300));
    let p = session.stop().unwrap();
    let table = tracer::render::table(&p);
    println!("{table}");

    let unclassified: Vec<String> = p
        .calls
        .iter()
        .filter(|c| c.category == Category::Other && c.stats.count > 0)
        .map(|c| format!("{} {}", c.name, c.stats.count))
        .collect();
    assert!(
        unclassified.is_empty(),
        "calls of nginx's worker left in `other` (its fds are client sockets and the log): \
         {unclassified:?}\n{table}"
    );
    let recv = p
        .call(Kind::Syscall, "recvfrom", Category::Network)
        .expect("network recvfrom");
    assert!(
        recv.stats.errors >= resets,
        "the {resets} resets' ECONNRESET reads are network calls: {} errors\n{table}",
        recv.stats.errors
    );
    let close = p
        .call(Kind::Syscall, "close", Category::Network)
        .map_or(0, |c| c.stats.count);
    assert!(
        close >= resets,
        "the reset connections' closes are network calls: {close}\n{table}"
    );
    let logged = p.category(Category::Logging).syscalls.count;
    assert!(
        logged as f64 >= 0.9 * recv.stats.count as f64 - resets as f64,
        "one access-log write per request: {logged} for {} reads\n{table}",
        recv.stats.count
    );
    // Traced from the master: the worker, its child, did the work.
    let worker = p
        .processes
        .iter()
        .find(|r| r.process == "worker process" && r.category == Category::Network)
        .unwrap_or_else(|| panic!("no network calls from nginx's worker process\n{table}"));
    assert_eq!(worker.pids, 1, "one worker\n{table}");
}
