//! The lab's database, in one place.
//!
//! - [`sql`]: every statement the servers run.
//! - [`schema`]: migrations (`db/migrations/`, sqlx's format) and the idempotent seed.
//! - [`cluster`]: a private PostgreSQL cluster the lab starts itself (`lab db up`).
//! - [`last_user`]: the test suites' cluster, stopped by the last process that uses it.
//! - [`Database`]: which database to use, the lab's own or the one `DATABASE_URL` names.
//!
//! The functions that drive processes are synchronous and run any SQL on a private
//! current-thread runtime: call them from plain code, not from inside a tokio runtime.

pub mod cluster;
pub mod last_user;
pub mod schema;
pub mod sql;

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::PgPoolOptions;

pub use cluster::{Cluster, ClusterConfig, Postmaster, QueryCounting, UpOutcome};

/// The database the lab and its tests talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A server somebody else runs, named by `DATABASE_URL`: the lab only migrates and
    /// seeds it.
    External { url: String },
    /// The lab's own cluster.
    Embedded(ClusterConfig),
}

impl Database {
    /// `DATABASE_URL` when set, else the cluster of `lab db up`.
    pub fn from_env() -> Self {
        Self::external_from_env().unwrap_or_else(|| Database::Embedded(ClusterConfig::standard()))
    }

    /// `DATABASE_URL` when set, else the cluster the test suites share.
    pub fn for_tests() -> Self {
        Self::external_from_env().unwrap_or_else(|| Database::Embedded(ClusterConfig::for_tests()))
    }

    /// The test suites' database, ready, and its URL: `DATABASE_URL` when set (migrated
    /// and seeded), else the lab's test cluster, started if needed. This process then
    /// counts as a user of that cluster until it exits, and the last user to exit stops it
    /// ([`last_user`]), whether its tests passed, failed or panicked. Done once per
    /// process; later calls return the same URL.
    pub fn ready_for_tests() -> Result<String> {
        static READY: std::sync::OnceLock<std::result::Result<String, String>> =
            std::sync::OnceLock::new();
        READY
            .get_or_init(|| {
                match Self::for_tests() {
                    Database::Embedded(config) => {
                        last_user::join(&config).map(|_| config.as_running().url())
                    }
                    external => external.ensure_ready(),
                }
                .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow::anyhow!("preparing the test database: {e}"))
    }

    fn external_from_env() -> Option<Self> {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(|url| Database::External { url })
    }

    /// Its URL; for the lab's cluster, on the port its server listens on when it runs
    /// ([`ClusterConfig::as_running`]).
    pub fn url(&self) -> String {
        match self {
            Database::External { url } => url.clone(),
            Database::Embedded(config) => config.as_running().url(),
        }
    }

    /// When the lab's cluster runs on another port than `LAB_PGPORT` (or the default)
    /// asks for: what to tell the user ([`ClusterConfig::port_notice`]).
    pub fn port_notice(&self) -> Option<String> {
        match self {
            Database::External { .. } => None,
            Database::Embedded(config) => config.port_notice(&config.as_running()),
        }
    }

    /// Makes the database ready for the servers (starting the lab's cluster if it is
    /// ours) and returns its URL.
    pub fn ensure_ready(&self) -> Result<String> {
        match self {
            Database::External { url } => {
                let url = url.clone();
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(prepare_url(&url))?;
                Ok(url)
            }
            Database::Embedded(config) => {
                let (_, live) = Cluster::new(config.clone())?.up_as_running()?;
                Ok(live.url())
            }
        }
    }
}

/// Runs `f` with a one-connection pool to `url` on a private current-thread runtime, for
/// callers without a runtime of their own (`lab db`, the cluster code); closes the pool.
pub fn with_pool<T, F, Fut>(url: &str, f: F) -> Result<T>
where
    F: FnOnce(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .with_context(|| format!("connecting to {}", redact(url)))?;
            let out = f(pool.clone()).await;
            pool.close().await;
            out
        })
}

/// Migrates and seeds the database at `url`.
pub async fn prepare_url(url: &str) -> Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    schema::migrate(&pool)
        .await
        .context("applying migrations")?;
    schema::seed(&pool).await.context("seeding")?;
    pool.close().await;
    Ok(())
}

/// A URL with its password replaced, fit for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://u:secret@h:1/d"),
            "postgres://u:***@h:1/d"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact("postgres:///d?host=/tmp"), "postgres:///d?host=/tmp");
    }
}
