//! `lab db up|down|status|url|reset`: the lab's own PostgreSQL, or the one `DATABASE_URL`
//! names.
//!
//! With `DATABASE_URL` set, nothing is started or stopped: `up` and `reset` migrate and
//! seed that database, `url` prints it back.
//!
//! `up` and `status` also say whether the database counts queries (pg_stat_statements),
//! and what to install or restart when it does not.
//!
//! A cluster keeps the port it was started on until `down`: when it runs on another port
//! than `LAB_PGPORT` (or the default) asks for, every subcommand uses the port it really
//! listens on and says so, naming both.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use db::{Cluster, Database, QueryCounting, UpOutcome};
use serde::Serialize;

#[derive(Subcommand)]
pub enum DbCommand {
    /// Start the lab's PostgreSQL (initialising it on first use), apply migrations and
    /// seed. With DATABASE_URL set, only migrate and seed that database.
    Up,
    /// Stop the lab's PostgreSQL (fast shutdown; the data stays).
    Down,
    /// Say whether the lab's PostgreSQL runs, where it keeps its data, and what it holds.
    Status {
        /// Write the status as JSON to FILE (`-` for standard output).
        #[arg(long, value_name = "FILE")]
        json: Option<String>,
    },
    /// Print the DATABASE_URL the servers should use.
    Url,
    /// Re-seed: draw every world row anew, rewrite the fortunes, clear query statistics.
    Reset,
}

#[derive(Serialize)]
struct StatusReport {
    kind: &'static str,
    url: String,
    running: bool,
    pid: Option<u32>,
    data_dir: Option<String>,
    /// The port it listens on when it runs (else the one `up` would start it on).
    port: Option<u16>,
    /// Set when it runs on another port than `LAB_PGPORT` (or the default) asks for.
    port_notice: Option<String>,
    worlds: Option<i64>,
    fortunes: Option<i64>,
    query_counting: QueryCountingReport,
}

/// `db::QueryCounting` as `lab db status --json` writes it.
#[derive(Serialize)]
struct QueryCountingReport {
    available: bool,
    enabled: bool,
    reason: Option<String>,
    /// The same in one line, for the terminal.
    #[serde(skip)]
    line: String,
}

impl From<QueryCounting> for QueryCountingReport {
    fn from(q: QueryCounting) -> Self {
        QueryCountingReport {
            line: q.describe(),
            available: q.available,
            enabled: q.enabled,
            reason: q.reason,
        }
    }
}

pub fn run(cmd: DbCommand) -> Result<ExitCode> {
    let database = Database::from_env();
    match cmd {
        DbCommand::Up => {
            let url = match &database {
                Database::External { .. } => {
                    let url = database.ensure_ready()?;
                    eprintln!(
                        "DATABASE_URL is set: migrated and seeded {}",
                        db::redact(&url)
                    );
                    eprintln!("{}", query_counting_of(&url).describe());
                    url
                }
                Database::Embedded(config) => {
                    let cluster = Cluster::new(config.clone())?;
                    let (outcome, live) = cluster.up_as_running()?;
                    let verb = match outcome {
                        UpOutcome::Started => "started",
                        UpOutcome::AlreadyRunning => "already running",
                    };
                    eprintln!(
                        "PostgreSQL {verb} on 127.0.0.1:{} (data in {}); migrated and seeded.",
                        live.port,
                        live.data_dir.display()
                    );
                    say_port_notice(config.port_notice(&live));
                    eprintln!("{}", cluster.query_counting().describe());
                    live.url()
                }
            };
            eprintln!("export DATABASE_URL={url}");
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Down => match &database {
            Database::External { .. } => {
                eprintln!(
                    "DATABASE_URL is set: that server is not the lab's to stop; nothing done."
                );
                Ok(ExitCode::SUCCESS)
            }
            Database::Embedded(config) => {
                let port = config.as_running().port;
                if Cluster::new(config.clone())?.down()? {
                    eprintln!("PostgreSQL on 127.0.0.1:{port} stopped.");
                } else {
                    eprintln!("PostgreSQL on 127.0.0.1:{port} was not running.");
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        DbCommand::Status { json } => {
            let report = status(&database)?;
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                if path == "-" {
                    println!("{text}");
                } else {
                    std::fs::write(&path, text + "\n")?;
                }
            } else {
                print_status(&report);
            }
            // Like `pg_ctl status`: exit 3 when the server is not running, for scripts.
            Ok(if report.running {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        DbCommand::Url => {
            say_port_notice(database.port_notice());
            println!("{}", database.url());
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Reset => {
            match &database {
                Database::External { url } => {
                    let url = url.clone();
                    database.ensure_ready()?;
                    reseed_url(&url)?;
                }
                Database::Embedded(config) => Cluster::new(config.clone())?.reset()?,
            }
            eprintln!("Re-seeded {}.", db::redact(&database.url()));
            say_port_notice(database.port_notice());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn status(database: &Database) -> Result<StatusReport> {
    Ok(match database {
        Database::External { url } => {
            let contents = contents_of(url).ok();
            let query_counting = query_counting_of(url);
            StatusReport {
                kind: "external",
                url: url.clone(),
                running: contents.is_some(),
                pid: None,
                data_dir: None,
                port: None,
                port_notice: None,
                worlds: contents.map(|c| c.worlds),
                fortunes: contents.map(|c| c.fortunes),
                query_counting: query_counting.into(),
            }
        }
        Database::Embedded(config) => {
            let status = Cluster::new(config.clone())?.status();
            StatusReport {
                kind: "embedded",
                url: status.config.url(),
                running: status.pid.is_some(),
                pid: status.pid,
                data_dir: Some(status.config.data_dir.display().to_string()),
                port: Some(status.config.port),
                port_notice: status.port_notice,
                worlds: status.contents.map(|c| c.worlds),
                fortunes: status.contents.map(|c| c.fortunes),
                query_counting: status.query_counting.into(),
            }
        }
    })
}

fn print_status(r: &StatusReport) {
    let state = if r.running { "running" } else { "not running" };
    match r.kind {
        "embedded" => println!(
            "lab PostgreSQL: {state}{}\n  data: {}\n  port: {}",
            r.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            r.data_dir.as_deref().unwrap_or("?"),
            r.port.unwrap_or_default()
        ),
        _ => println!(
            "DATABASE_URL server: {}",
            if r.running {
                "reachable"
            } else {
                "not reachable"
            }
        ),
    }
    println!("  url:  {}", db::redact(&r.url));
    if let Some(notice) = &r.port_notice {
        println!("  note: {notice}");
    }
    if let (Some(w), Some(f)) = (r.worlds, r.fortunes) {
        println!("  rows: {w} world, {f} fortune");
    }
    println!("  {}", r.query_counting.line);
    if !r.running && r.kind == "embedded" {
        println!("  start it with: lab db up");
    }
}

/// On standard error, so that `lab db url`'s output stays the URL alone.
fn say_port_notice(notice: Option<String>) {
    if let Some(notice) = notice {
        eprintln!("note: {notice}");
    }
}

fn contents_of(url: &str) -> Result<db::schema::Contents> {
    db::with_pool(url, |pool| async move { db::schema::contents(&pool).await })
}

/// Whether the server at `url` counts queries.
fn query_counting_of(url: &str) -> QueryCounting {
    match db::with_pool(url, |pool| async move {
        db::schema::statement_stats(&pool).await
    }) {
        Ok(stats) => QueryCounting::of_server(
            &stats,
            "set shared_preload_libraries = 'pg_stat_statements' on that server and restart it",
        ),
        Err(e) => QueryCounting {
            available: false,
            enabled: false,
            reason: Some(format!("the server did not say ({e:#})")),
        },
    }
}

fn reseed_url(url: &str) -> Result<()> {
    db::with_pool(url, |pool| async move { db::schema::reseed(&pool).await })
}
