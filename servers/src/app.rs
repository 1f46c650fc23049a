//! The application layer every variant shares: which route a request names, how
//! `queries` is clamped, and the response each route gets. Nothing here knows how bytes
//! reach the client; the I/O modules call in with a method and a target and write out the
//! [`Response`] they get back.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::metrics::{self, METRICS};
use crate::render::{self, Fortune, World};

pub const TEXT_PLAIN: &str = "text/plain";
pub const APPLICATION_JSON: &str = "application/json";
pub const TEXT_HTML: &str = "text/html; charset=utf-8";

/// The `Server` header of every response.
pub const SERVER_NAME: &str = "syscall-lab";

/// The most rows `/queries` and `/updates` touch per request.
pub const MAX_QUERIES: usize = 500;

/// How long a database route may take before it answers 503: a database that went away
/// must not hang clients.
pub const DATABASE_DEADLINE: Duration = Duration::from_secs(5);

/// The routes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Plaintext,
    Json,
    Db,
    Queries(usize),
    Fortunes,
    Updates(usize),
    Health,
    Metrics,
    /// `/debug/pprof/profile` and `/debug/pprof/flamegraph` ([`crate::profile`]).
    Profile(crate::profile::Request),
}

/// What a request line resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Route(Route),
    NotFound,
    MethodNotAllowed,
}

impl Resolved {
    /// The `route` label of the request metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Resolved::Route(route) => route.label(),
            Resolved::NotFound => "not_found",
            Resolved::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl Route {
    pub fn label(&self) -> &'static str {
        match self {
            Route::Plaintext => "plaintext",
            Route::Json => "json",
            Route::Db => "db",
            Route::Queries(_) => "queries",
            Route::Fortunes => "fortunes",
            Route::Updates(_) => "updates",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Profile(_) => "pprof",
        }
    }

    /// Whether answering needs the database.
    pub fn uses_database(&self) -> bool {
        matches!(
            self,
            Route::Db | Route::Queries(_) | Route::Fortunes | Route::Updates(_) | Route::Health
        )
    }
}

/// Resolves a method and request target (`/path?query`). Only GET is served; another
/// method on a known path is 405, an unknown path is 404 whatever the method.
pub fn resolve(method: &str, target: &str) -> Resolved {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let route = match path {
        "/plaintext" => Route::Plaintext,
        "/json" => Route::Json,
        "/db" => Route::Db,
        "/queries" => Route::Queries(clamp_queries(query)),
        "/fortunes" => Route::Fortunes,
        "/updates" => Route::Updates(clamp_queries(query)),
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        _ => match crate::profile::Request::resolve(path, query) {
            Some(request) => Route::Profile(request),
            None => return Resolved::NotFound,
        },
    };
    if method == "GET" {
        Resolved::Route(route)
    } else {
        Resolved::MethodNotAllowed
    }
}

/// The `queries` parameter: missing, empty, not an integer or below 1 gives 1; above
/// [`MAX_QUERIES`] gives 500. Never an error.
pub fn clamp_queries(query: Option<&str>) -> usize {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("queries="))
        .unwrap_or("");
    match value.parse::<i64>() {
        Ok(n) => n.clamp(1, MAX_QUERIES as i64) as usize,
        // Digits too many for i64 are still a number, and a huge one.
        Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => MAX_QUERIES,
        Err(_) => 1,
    }
}

/// A response, ready for any I/O model to frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: &'static str) -> Self {
        Response::new(status, TEXT_PLAIN, Bytes::from_static(body.as_bytes()))
    }

    pub fn not_found() -> Self {
        Response::text(404, "not found\n")
    }

    pub fn method_not_allowed() -> Self {
        Response::text(405, "only GET is served here\n")
    }

    /// A database failure: 503 with a short plain-text reason.
    pub fn database_unavailable(error: &DatabaseError) -> Self {
        Response::new(503, TEXT_PLAIN, format!("database unavailable: {error}\n"))
    }
}

/// The reason phrase of every status the servers send.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A complete response that closes the connection, for requests rejected before a route
/// was known (malformed, too large, too slow). Every variant sends the same bytes.
pub fn error_response_bytes(status: u16) -> Vec<u8> {
    let body = match status {
        400 => "malformed request\n",
        408 => "request head not received in time\n",
        413 => "request body too large\n",
        431 => "request head too large\n",
        501 => "transfer encoding not supported\n",
        503 => "server busy: every thread is taken; try again\n",
        _ => "request rejected\n",
    };
    let date = crate::date::now();
    format!(
        "HTTP/1.1 {status} {}\r\nServer: {SERVER_NAME}\r\nDate: {}\r\nContent-Type: {TEXT_PLAIN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        std::str::from_utf8(&date).unwrap_or_default(),
        body.len()
    )
    .into_bytes()
}

/// How often start-up tries an unreachable database again.
pub const DATABASE_RETRY: Duration = Duration::from_secs(2);

/// Logs one start-up attempt to reach the database, in the same words for every variant:
/// a warning at the first failure, a line once it answers. True when it answered.
pub fn log_database_attempt(url: &str, attempt: u32, outcome: &Result<(), DatabaseError>) -> bool {
    match outcome {
        Ok(()) => {
            tracing::info!("database {url} reachable");
            true
        }
        Err(error) => {
            if attempt == 0 {
                tracing::warn!(
                    "database {url} not reachable ({error}); serving /plaintext and /json, database routes answer 503, retrying every {} s",
                    DATABASE_RETRY.as_secs()
                );
            }
            false
        }
    }
}

/// Why a database route failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseError {
    /// The driver failed (connection refused, reset, closed pool...).
    Driver(String),
    /// No answer within [`DATABASE_DEADLINE`].
    Timeout,
}

impl std::fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseError::Driver(reason) => f.write_str(reason),
            DatabaseError::Timeout => {
                write!(f, "no answer within {} s", DATABASE_DEADLINE.as_secs())
            }
        }
    }
}

/// The database as the async variants see it. Each method performs real round trips:
/// nothing is cached between requests.
pub trait AsyncStore: Sync {
    fn world(&self, id: i32) -> impl Future<Output = Result<World, DatabaseError>> + Send;
    /// One query per id, each its own statement.
    fn worlds(&self, ids: &[i32])
        -> impl Future<Output = Result<Vec<World>, DatabaseError>> + Send;
    fn fortunes(&self) -> impl Future<Output = Result<Vec<Fortune>, DatabaseError>> + Send;
    /// Reads each id, then writes every new number in one bulk UPDATE.
    fn update(
        &self,
        changes: &[World],
    ) -> impl Future<Output = Result<Vec<World>, DatabaseError>> + Send;
    fn ping(&self) -> impl Future<Output = Result<(), DatabaseError>> + Send;
    /// Pool connections (in use, idle), for `/metrics`.
    fn pool_state(&self) -> (usize, usize);
    /// Whether the store fails a query that waits over [`DATABASE_DEADLINE`] by itself, so
    /// that [`respond`] need not arm a timer of its own per request.
    fn keeps_deadline(&self) -> bool {
        false
    }
}

/// The database as the blocking variants see it: the same operations as [`AsyncStore`],
/// each blocking the calling thread until PostgreSQL has answered.
pub trait BlockingStore {
    fn world(&mut self, id: i32) -> Result<World, DatabaseError>;
    /// One query per id, each its own statement.
    fn worlds(&mut self, ids: &[i32]) -> Result<Vec<World>, DatabaseError>;
    fn fortunes(&mut self) -> Result<Vec<Fortune>, DatabaseError>;
    /// Reads each id, then writes every new number in one bulk UPDATE.
    fn update(&mut self, changes: &[World]) -> Result<Vec<World>, DatabaseError>;
    fn ping(&mut self) -> Result<(), DatabaseError>;
    /// Database connections (in use, idle), for `/metrics`.
    fn pool_state(&self) -> (usize, usize);
}

/// The response an async variant sends for a route.
pub async fn respond<S: AsyncStore>(route: Route, store: &S) -> Response {
    if let Route::Profile(request) = route {
        // Boxed: a profile's future is large and rare; unboxed, every request's future
        // would be as large and copied as often.
        return Box::pin(crate::profile::respond_async(request)).await;
    }
    if !route.uses_database() {
        return respond_without_database(route, store.pool_state());
    }
    // Boxed: the driver's futures (sqlx's above all) run to kilobytes, and unboxed they
    // are copied into the timeout and again as hyper moves the request's future; one
    // small allocation costs less than those copies (memmove was 8% of the epoll
    // variant's user time on /db).
    let body = Box::pin(async {
        Ok(match route {
            Route::Db => render::world_json(&store.world(random_id()).await?),
            Route::Queries(n) => render::worlds_json(&store.worlds(&random_ids(n)).await?),
            Route::Fortunes => render::fortunes_html(store.fortunes().await?),
            Route::Updates(n) => render::worlds_json(&store.update(&planned_updates(n)).await?),
            _ => {
                store.ping().await?;
                Vec::new()
            }
        })
    });
    let outcome = if store.keeps_deadline() {
        // The store fails a query that waits past the deadline by itself: no timer of
        // our own (arming one is a timer-wheel insertion, a clock read and a removal).
        body.await
    } else {
        tokio::time::timeout(DATABASE_DEADLINE, body)
            .await
            .unwrap_or(Err(DatabaseError::Timeout))
    };
    database_response(route, outcome)
}

/// The response a blocking variant sends for a route.
pub fn respond_blocking<S: BlockingStore>(route: Route, store: &mut S) -> Response {
    if let Route::Profile(request) = route {
        return crate::profile::respond_blocking(request);
    }
    if !route.uses_database() {
        return respond_without_database(route, store.pool_state());
    }
    let outcome = (|| {
        Ok(match route {
            Route::Db => render::world_json(&store.world(random_id())?),
            Route::Queries(n) => render::worlds_json(&store.worlds(&random_ids(n))?),
            Route::Fortunes => render::fortunes_html(store.fortunes()?),
            Route::Updates(n) => render::worlds_json(&store.update(&planned_updates(n))?),
            _ => {
                store.ping()?;
                Vec::new()
            }
        })
    })();
    database_response(route, outcome)
}

fn respond_without_database(route: Route, pool_state: (usize, usize)) -> Response {
    match route {
        Route::Plaintext => Response::new(200, TEXT_PLAIN, Bytes::from_static(b"Hello, World!")),
        Route::Json => Response::new(200, APPLICATION_JSON, render::json_message()),
        _ => Response::new(200, metrics::CONTENT_TYPE, METRICS.render(pool_state)),
    }
}

/// Frames a database route's body, or its failure: 503 with a short reason.
fn database_response(route: Route, outcome: Result<Vec<u8>, DatabaseError>) -> Response {
    match (route, outcome) {
        (Route::Health, Ok(_)) => Response::text(200, "ok\n"),
        (Route::Health, Err(error)) => health_failed(&error),
        (Route::Fortunes, Ok(body)) => Response::new(200, TEXT_HTML, body),
        (_, Ok(body)) => Response::new(200, APPLICATION_JSON, body),
        (_, Err(error)) => Response::database_unavailable(&error),
    }
}

fn random_ids(n: usize) -> Vec<i32> {
    (0..n).map(|_| random_id()).collect()
}

fn health_failed(error: &DatabaseError) -> Response {
    Response::new(
        503,
        TEXT_PLAIN,
        format!("unhealthy: database unavailable: {error}\n"),
    )
}

fn random_id() -> i32 {
    crate::rng::world_number()
}

/// `n` distinct random ids, each with the new number it will get. Distinct ids keep the
/// response equal to what is persisted (one row cannot take two new values in one UPDATE).
pub fn planned_updates(n: usize) -> Vec<World> {
    let mut changes: Vec<World> = Vec::with_capacity(n);
    while changes.len() < n {
        let id = random_id();
        if !changes.iter().any(|w| w.id == id) {
            changes.push(World {
                id,
                random_number: crate::rng::world_number(),
            });
        }
    }
    changes
}

/// The arrays for `db::sql::UPDATE_WORLDS_BULK`, sorted by id so that concurrent requests
/// lock rows in one order and cannot deadlock.
pub fn bulk_update_arrays(changes: &[World]) -> (Vec<i32>, Vec<i32>) {
    let mut sorted = changes.to_vec();
    sorted.sort_unstable_by_key(|w| w.id);
    sorted.iter().map(|w| (w.id, w.random_number)).unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_clamped_never_rejected() {
        for (query, expected) in [
            (None, 1),
            (Some(""), 1),
            (Some("queries="), 1),
            (Some("queries=foo"), 1),
            (Some("queries=0"), 1),
            (Some("queries=-3"), 1),
            (Some("queries=2"), 2),
            (Some("queries=500"), 500),
            (Some("queries=501"), 500),
            (Some("queries=99999999999999999999999"), 500),
            (Some("x=1&queries=7"), 7),
        ] {
            assert_eq!(clamp_queries(query), expected, "{query:?}");
        }
    }

    #[test]
    fn resolution_tells_404_from_405() {
        assert_eq!(resolve("GET", "/db"), Resolved::Route(Route::Db));
        assert_eq!(
            resolve("GET", "/queries?queries=3"),
            Resolved::Route(Route::Queries(3))
        );
        assert_eq!(resolve("POST", "/json"), Resolved::MethodNotAllowed);
        assert_eq!(resolve("GET", "/nope"), Resolved::NotFound);
        assert_eq!(resolve("DELETE", "/nope"), Resolved::NotFound);
    }

    #[test]
    fn updates_touch_distinct_ids_written_in_id_order() {
        let changes = planned_updates(MAX_QUERIES);
        let (ids, numbers) = bulk_update_arrays(&changes);
        assert_eq!(ids.len(), MAX_QUERIES);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids not strictly increasing"
        );
        for (id, number) in ids.iter().zip(&numbers) {
            assert!(changes.contains(&World {
                id: *id,
                random_number: *number
            }));
        }
    }
}
