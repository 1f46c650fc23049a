//! The half-sent-heads attack of issue 16: `--connections` connections that each send the
//! start of a request head and then stay silent; meanwhile a new client asks for
//! `--target` and the tool prints how long its answer took, then what became of the
//! attackers (still open, shed with a status, closed). With `--pid`, it also counts the
//! server's descriptors and threads before the attack, under it, and after the attackers
//! have left, to show that nothing leaks.
//!
//!   cargo build --release --bins --examples -p servers
//!   target/release/server --variant thread-pool --listen 127.0.0.1:8080 &
//!   target/release/examples/half_sent_heads --connections 1500 --pid $! 127.0.0.1:8080
//!
//! It raises its own descriptor limit to the hard limit; the server needs one descriptor
//! per connection too (`ulimit -n` where it starts).

#[path = "../tests/support/attack.rs"]
#[allow(dead_code)] // the hostile suite uses more of it
mod attack;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Opens connections that send half a request head and stay silent, and times a new
/// client's request meanwhile.
#[derive(Debug, Parser)]
#[command(name = "half_sent_heads")]
struct Args {
    /// The server, HOST:PORT (an http:// prefix and a path are ignored).
    server: String,

    /// Attacking connections to open.
    #[arg(long, default_value_t = 1500, value_name = "N")]
    connections: usize,

    /// What the new client asks for.
    #[arg(long, default_value = "/plaintext", value_name = "PATH")]
    target: String,

    /// Seconds between opening the last attacking connection and the new client's request.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    settle: f64,

    /// Seconds the new client waits for its answer before the tool says it got none.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    timeout: u64,

    /// Ask again (every 100 ms, each time on a new connection) while the answer is a 503,
    /// and time the whole until a 2xx: how long a client that retries waits to be served.
    #[arg(long)]
    until_served: bool,

    /// Seconds to keep the attackers connected after the new client's answer.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    hold: f64,

    /// The server's process id: count its descriptors and threads before, during and after.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let addr = resolve(&args.server)?;
    let limit = attack::raise_fd_limit();
    if (limit as usize) < args.connections + 16 {
        bail!(
            "this process may open {limit} descriptors, fewer than --connections {}: raise the hard limit (ulimit -Hn)",
            args.connections
        );
    }
    let counts = |when: &str| {
        if let Some(pid) = args.pid {
            println!(
                "server {when}: {} descriptors, {} threads",
                count(pid, "fd"),
                count(pid, "task")
            );
        }
    };
    counts("before");

    let started = Instant::now();
    let attackers = attack::open(addr, args.connections);
    println!(
        "{} of {} attacking connections opened in {:.2} s",
        attackers.len(),
        args.connections,
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs_f64(args.settle));
    counts("under attack");

    let timeout = Duration::from_secs(args.timeout);
    let answer = if args.until_served {
        attack::until_served(addr, &args.target, timeout)
    } else {
        attack::new_client(addr, &args.target, timeout).map(|(status, elapsed)| attack::Served {
            status,
            refused: 0,
            elapsed,
        })
    };
    match answer {
        Ok(served) => println!(
            "new client: {} for {} after {:.3} s{}",
            served.status,
            args.target,
            served.elapsed.as_secs_f64(),
            match served.refused {
                0 => String::new(),
                n => format!(" from its first try ({n} answers 503 before)"),
            }
        ),
        Err(error) => println!("new client: {error}"),
    }
    std::thread::sleep(Duration::from_secs_f64(args.hold));
    println!("attackers: {}", attack::Fates::of(&attackers));
    counts("with the attackers still connected");
    drop(attackers);

    if let Some(pid) = args.pid {
        // Give the server time to see every connection close.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = (count(pid, "fd"), count(pid, "task"));
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            let now = (count(pid, "fd"), count(pid, "task"));
            if now == last {
                break;
            }
            last = now;
        }
        counts("after the attackers left");
    }
    Ok(())
}

fn resolve(server: &str) -> Result<SocketAddr> {
    let authority = server.strip_prefix("http://").unwrap_or(server);
    let authority = authority.split('/').next().unwrap_or(authority);
    authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("{authority:?} resolves to no address"))
}

/// Entries of /proc/PID/fd or /proc/PID/task.
fn count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}")).map_or(0, |d| d.count())
}
