//! The round trip of a link, measured before the load starts.
//!
//! A listener in one host's namespace and a client in the other's: the client times a few
//! TCP connects (a connect returns when the SYN-ACK is back: one round trip, answered by
//! the far kernel with no program in the way), then a one-byte echo over one connection
//! (TCP_NODELAY; a round trip through both stacks and a thread on the far side). Neither
//! involves the server or PostgreSQL, so the figures are the link's.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::ns;
use crate::results::{LinkProbe, Spread};

const CONNECTS: usize = 5;
const ECHOES: usize = 50;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Measures the link from the namespace `client` to `listen` in the namespace `server`.
pub fn measure(server: &str, listen: Ipv4Addr, client: &str) -> Result<LinkProbe> {
    let listener = ns::in_netns(server, || TcpListener::bind((listen, 0)))?
        .with_context(|| format!("probe: listening on {listen} in {server}"))?;
    let addr = listener.local_addr()?;
    std::thread::scope(|s| {
        // A socket keeps the namespace it was made in: accept needs no setns.
        let echo = s.spawn(move || -> std::io::Result<()> {
            for _ in 0..CONNECTS + 1 {
                let (mut conn, _) = listener.accept()?;
                conn.set_read_timeout(Some(TIMEOUT))?;
                conn.set_nodelay(true)?;
                let mut byte = [0u8; 1];
                while conn.read(&mut byte)? == 1 {
                    conn.write_all(&byte)?;
                }
            }
            Ok(())
        });
        let measured = ns::in_netns(client, || probe(addr))?;
        let echoed = echo.join();
        let probe = measured.with_context(|| format!("probe: {client} → {addr}"))?;
        match echoed {
            Ok(Ok(())) => Ok(probe),
            Ok(Err(e)) => Err(e).context(format!("probe: the echo in {server}")),
            Err(_) => anyhow::bail!("probe: the echo thread panicked"),
        }
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn probe(addr: SocketAddr) -> std::io::Result<LinkProbe> {
    let mut connects = Vec::new();
    for _ in 0..CONNECTS {
        let start = Instant::now();
        let conn = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        connects.push(millis(start.elapsed()));
        drop(conn);
    }
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    let mut echoes = Vec::new();
    let mut byte = [7u8; 1];
    // One round trip first, not counted: the far thread's first wake-up.
    for i in 0..=ECHOES {
        let start = Instant::now();
        conn.write_all(&byte)?;
        conn.read_exact(&mut byte)?;
        if i > 0 {
            echoes.push(millis(start.elapsed()));
        }
    }
    Ok(LinkProbe {
        connect_ms: Spread::of(&connects),
        echo_rtt_ms: Spread::of(&echoes),
        samples: (CONNECTS + ECHOES) as u32,
    })
}
