//! Opening a pipelined connection: connect (TCP or Unix socket, from the database URL),
//! start-up, authentication (trust, password, MD5 or SCRAM-SHA-256, with
//! `postgres-protocol`'s implementations), and the statements prepared in one round trip.
//!
//! No TLS: the lab's PostgreSQL is on loopback or the lab's own network namespaces, as for
//! the other clients (they connect with `NoTls` / `sslmode` unset too).

use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;
use tokio_postgres::Config;

use super::connection::{Connection, Wake};
use super::wire;
use crate::app::DatabaseError;

/// How long connecting may take (a firewalled host would otherwise hang for minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a connection and prepares [`wire::STATEMENTS`] on it.
/// `wake_per_request`: see [`Wake::PerRequest`] (TCP only: a Unix socket's readiness does
/// not look at the low-water mark).
pub async fn connect(config: &Config, wake_per_request: bool) -> Result<Connection, DatabaseError> {
    tokio::time::timeout(CONNECT_TIMEOUT, open(config, wake_per_request))
        .await
        .unwrap_or_else(|_| {
            Err(DatabaseError::Driver(format!(
                "connecting to PostgreSQL took over {} s",
                CONNECT_TIMEOUT.as_secs()
            )))
        })
}

async fn open(config: &Config, wake_per_request: bool) -> Result<Connection, DatabaseError> {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let io = |what: String| {
        move |error: std::io::Error| DatabaseError::Driver(format!("{what}: {error}"))
    };
    match config.get_hosts().first() {
        Some(Host::Unix(dir)) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let mut stream = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(io(format!("connecting to {}", path.display())))?;
            let received = handshake(&mut stream, config).await?;
            let (reader, writer) = stream.into_split();
            Ok(Connection::start(reader, writer, received, Wake::PerAnswer))
        }
        host => {
            let name = match host {
                Some(Host::Tcp(name)) => name.as_str(),
                _ => "localhost",
            };
            let mut stream = tokio::net::TcpStream::connect((name, port))
                .await
                .map_err(io(format!("connecting to {name}:{port}")))?;
            // Queries are small writes whose answers are awaited: Nagle would hold them.
            stream
                .set_nodelay(true)
                .map_err(io("setting TCP_NODELAY".into()))?;
            let received = handshake(&mut stream, config).await?;
            let wake = if wake_per_request {
                Wake::PerRequest(stream.as_raw_fd())
            } else {
                Wake::PerAnswer
            };
            let (reader, writer) = stream.into_split();
            Ok(Connection::start(reader, writer, received, wake))
        }
    }
}

/// Start-up, authentication and preparing the statements; returns bytes read past the
/// last message.
async fn handshake<S>(stream: &mut S, config: &Config) -> Result<BytesMut, DatabaseError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = match config.get_user() {
        Some(user) => user.to_string(),
        None => std::env::var("USER").map_err(|_| {
            DatabaseError::Driver("the database URL names no user, and USER is not set".into())
        })?,
    };
    let mut params = vec![
        ("user", user.as_str()),
        ("client_encoding", "UTF8"),
        (
            "application_name",
            config.get_application_name().unwrap_or("syscall-lab"),
        ),
    ];
    if let Some(dbname) = config.get_dbname() {
        params.push(("database", dbname));
    }
    let mut out = BytesMut::new();
    frontend::startup_message(params, &mut out).map_err(encode_error)?;
    let mut link = Link {
        stream,
        received: BytesMut::with_capacity(8 * 1024),
    };
    link.send(&mut out).await?;
    authenticate(&mut link, config, &user).await?;
    // Start-up ends with ReadyForQuery, after the server's settings and key data.
    loop {
        match link.next().await? {
            (b'E', body) => return Err(DatabaseError::Driver(wire::error_text(&body))),
            (b'Z', _) => break,
            _ => {}
        }
    }

    for statement in wire::STATEMENTS {
        wire::parse(statement.name, statement, &mut out)?;
    }
    frontend::sync(&mut out);
    link.send(&mut out).await?;
    loop {
        let (tag, body) = link.next().await?;
        match tag {
            b'E' => return Err(DatabaseError::Driver(wire::error_text(&body))),
            b'Z' => break,
            _ => {}
        }
    }
    Ok(link.received)
}

async fn authenticate<S>(
    link: &mut Link<'_, S>,
    config: &Config,
    user: &str,
) -> Result<(), DatabaseError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let password = || {
        config.get_password().ok_or_else(|| {
            DatabaseError::Driver(
                "PostgreSQL asks for a password and the database URL has none".into(),
            )
        })
    };
    let mut scram: Option<sasl::ScramSha256> = None;
    let mut out = BytesMut::new();
    loop {
        let (tag, body) = link.next().await?;
        if tag == b'E' {
            return Err(DatabaseError::Driver(wire::error_text(&body)));
        }
        if tag != b'R' || body.len() < 4 {
            return Err(unexpected(tag));
        }
        let data = &body[4..];
        match i32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
            0 => return Ok(()),
            3 => frontend::password_message(password()?, &mut out).map_err(encode_error)?,
            5 => {
                let salt: [u8; 4] = data.try_into().map_err(|_| unexpected(tag))?;
                let hash = md5_hash(user.as_bytes(), password()?, salt);
                frontend::password_message(hash.as_bytes(), &mut out).map_err(encode_error)?;
            }
            10 => {
                let offered = data
                    .split(|&b| b == 0)
                    .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                if !offered {
                    return Err(DatabaseError::Driver(
                        "PostgreSQL offers no SASL mechanism this client has (SCRAM-SHA-256)"
                            .into(),
                    ));
                }
                let session =
                    sasl::ScramSha256::new(password()?, sasl::ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, session.message(), &mut out)
                    .map_err(encode_error)?;
                scram = Some(session);
            }
            11 => {
                let session = scram.as_mut().ok_or_else(|| unexpected(tag))?;
                session.update(data).map_err(auth_error)?;
                frontend::sasl_response(session.message(), &mut out).map_err(encode_error)?;
            }
            12 => {
                let session = scram.as_mut().ok_or_else(|| unexpected(tag))?;
                session.finish(data).map_err(auth_error)?;
                continue;
            }
            method => {
                return Err(DatabaseError::Driver(format!(
                "PostgreSQL asks for an authentication method this client has not (code {method})"
            )))
            }
        }
        link.send(&mut out).await?;
    }
}

/// The socket during start-up, one message at a time.
struct Link<'a, S> {
    stream: &'a mut S,
    received: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<'_, S> {
    async fn send(&mut self, out: &mut BytesMut) -> Result<(), DatabaseError> {
        self.stream
            .write_all(out)
            .await
            .map_err(|e| DatabaseError::Driver(format!("writing to PostgreSQL: {e}")))?;
        out.clear();
        Ok(())
    }

    async fn next(&mut self) -> Result<(u8, Vec<u8>), DatabaseError> {
        loop {
            if let Some((tag, body, length)) =
                wire::next_message(&self.received).map_err(DatabaseError::Driver)?
            {
                let message = (tag, body.to_vec());
                bytes::Buf::advance(&mut self.received, length);
                return Ok(message);
            }
            let read = self
                .stream
                .read_buf(&mut self.received)
                .await
                .map_err(|e| DatabaseError::Driver(format!("reading from PostgreSQL: {e}")))?;
            if read == 0 {
                return Err(DatabaseError::Driver(
                    "PostgreSQL closed the connection during start-up".into(),
                ));
            }
        }
    }
}

fn unexpected(tag: u8) -> DatabaseError {
    DatabaseError::Driver(format!(
        "unexpected message {:?} from PostgreSQL during start-up",
        tag as char
    ))
}

fn encode_error(error: std::io::Error) -> DatabaseError {
    DatabaseError::Driver(format!("encoding a start-up message: {error}"))
}

fn auth_error(error: std::io::Error) -> DatabaseError {
    DatabaseError::Driver(format!("SCRAM authentication failed: {error}"))
}
