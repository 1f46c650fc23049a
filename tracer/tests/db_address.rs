//! The database is told by its address and port, not its port alone (issue 18, point 1): a
//! traced process talks to the database and to other listeners on the same port number at
//! other loopback addresses, and only the database's connection is `database`, under eBPF
//! and under ptrace. A bare port (`--db PORT`) still means any address, and the profile
//! says so in its notes. Needs root: see common::require_root.

mod common;

use std::net::{SocketAddr, TcpListener};

use common::*;
use tracer::{start, Backend, Category, DbEndpoint, Kind, Options, Overrides, Profile, Target};

/// Exchanges per connection.
const N: u64 = 20;

/// Listeners that answer queries on one port number at each of `hosts` (`::1` needs IPv6
/// on loopback); returns the port. 127.0.0.0/8 is all loopback on Linux: 127.0.0.2 needs
/// no setup.
fn same_port_at(hosts: &[&str]) -> u16 {
    for _ in 0..50 {
        let port = free_port();
        let bound: Result<Vec<TcpListener>, _> = hosts
            .iter()
            .map(|h| TcpListener::bind((*h, port)))
            .collect();
        match bound {
            Ok(ls) => {
                ls.into_iter().for_each(answer_queries);
                return port;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!(
                "listening on {hosts:?}, port {port}: {e} (this test needs 127.0.0.2 and, for \
                 its IPv6 part, ::1 on the loopback interface: `ip addr show lo`; \
                 `sysctl net.ipv6.conf.lo.disable_ipv6=0`)"
            ),
        }
    }
    panic!("no port free at all of {hosts:?} in 50 tries");
}

/// `tracer-workload peers N ADDR...` spawned under `backend` with `db` as the database,
/// traced until it exits.
fn trace_peers(backend: Backend, db: DbEndpoint, peers: &[SocketAddr]) -> Profile {
    let mut cmd = vec![
        workload_bin().into_os_string(),
        "peers".into(),
        N.to_string().into(),
    ];
    cmd.extend(peers.iter().map(|a| a.to_string().into()));
    let o = Options {
        backend,
        overrides: Overrides {
            db: Some(db),
            ..Overrides::default()
        },
        variant: None,
        children: true,
        companions: Vec::new(),
    };
    let session = start(Target::Command(cmd), o).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !session.target_exited() {
        assert!(
            std::time::Instant::now() < deadline,
            "tracer-workload peers did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    session.stop().unwrap()
}

/// Calls of `name` in `cat`.
fn count(p: &Profile, name: &str, cat: Category) -> u64 {
    p.call(Kind::Syscall, name, cat)
        .map(|r| r.stats.count)
        .unwrap_or(0)
}

/// The connects, the queries (sendto: one per exchange, exact under both backends) and
/// the answers (recvfrom) of `db` connections are `database`, those of `other` ones are
/// `other` (an outgoing connection that is neither the database's nor on a listening
/// port: the call's own category).
fn expect(p: &Profile, backend: Backend, what: &str, db: u64, other: u64) {
    let got = |cat| {
        (
            count(p, "connect", cat),
            count(p, "sendto", cat),
            count(p, "recvfrom", cat),
        )
    };
    assert_eq!(
        (got(Category::Database), got(Category::Other)),
        ((db, db * N, db * N), (other, other * N, other * N)),
        "{} ({what}): (connect, sendto, recvfrom) as (database, other); expected {db} \
         connection(s) to the database and {other} to others, {N} exchanges each\n{}",
        backend.name(),
        tracer::render::table(p)
    );
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn port_only_note(p: &Profile) -> bool {
    p.notes
        .iter()
        .any(|n| n.contains("by its port alone") || n.contains("by port alone"))
}

/// The database at 127.0.0.1:PORT; another service on 127.0.0.2:PORT is not it. Given as
/// a bare port, both are (any address), and the notes say the address was not compared.
fn told_apart_by_address(backend: Backend) {
    require_root();
    let port = same_port_at(&["127.0.0.1", "127.0.0.2"]);
    let peers = [
        addr(&format!("127.0.0.1:{port}")),
        addr(&format!("127.0.0.2:{port}")),
    ];
    let db = DbEndpoint::parse(&format!("127.0.0.1:{port}")).unwrap();
    let p = trace_peers(backend, db, &peers);
    expect(&p, backend, "--db 127.0.0.1:PORT", 1, 1);
    assert!(!port_only_note(&p), "{:?}", p.notes);

    let db = DbEndpoint::parse(&port.to_string()).expect("a bare port is accepted");
    let p = trace_peers(backend, db, &peers);
    expect(&p, backend, "--db PORT: any address", 2, 0);
    assert!(
        port_only_note(&p),
        "the notes say the database is recognised by its port alone: {:?}",
        p.notes
    );
}

#[test]
fn ebpf_tells_the_database_by_address_and_port() {
    told_apart_by_address(Backend::Ebpf);
}

#[test]
fn ptrace_tells_the_database_by_address_and_port() {
    told_apart_by_address(Backend::Ptrace);
}

/// IPv6: `localhost` is both loopback addresses; 127.0.0.1 as an IPv4-mapped IPv6
/// address (a dual-stack socket) is still 127.0.0.1; ::1 is not 127.0.0.1.
#[test]
fn ipv6_peers_are_told_apart_too() {
    require_root();
    let port = same_port_at(&["127.0.0.1", "127.0.0.2", "::1"]);
    for backend in [Backend::Ebpf, Backend::Ptrace] {
        let localhost = DbEndpoint::parse(&format!("localhost:{port}")).unwrap();
        let peers = [
            addr(&format!("127.0.0.1:{port}")),
            addr(&format!("[::1]:{port}")),
            addr(&format!("127.0.0.2:{port}")),
        ];
        let p = trace_peers(backend, localhost, &peers);
        expect(&p, backend, "--db localhost:PORT", 2, 1);

        let v4 = DbEndpoint::parse(&format!("127.0.0.1:{port}")).unwrap();
        let peers = [
            addr(&format!("[::ffff:127.0.0.1]:{port}")),
            addr(&format!("[::1]:{port}")),
        ];
        let p = trace_peers(backend, v4, &peers);
        expect(&p, backend, "--db 127.0.0.1:PORT, IPv6 peers", 1, 1);
    }
}
