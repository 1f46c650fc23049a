//! `lab`: the command that ties the lab together.
//!
//! This file only parses the command line and hands each subcommand to the module that
//! owns it: `lab db ...` is [`db_cmd`], `lab trace` is the tracer crate's own CLI.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lab::db_cmd;

/// syscall-lab: where a web server's syscalls and blocked time go.
#[derive(Parser)]
#[command(name = "lab", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The lab's PostgreSQL: start, stop, inspect, re-seed.
    #[command(subcommand)]
    Db(db_cmd::DbCommand),
    /// Attribute a running server's (or a started command's) syscalls, ring operations
    /// and blocked time to network, database, logging and the I/O machinery.
    Trace(tracer::cli::TraceArgs),
    /// Run every variant under the same load while tracing it; write run.json, the HTML
    /// report and a table.
    Run(lab::run_cmd::RunArgs),
    /// Rebuild the HTML report of a run and print its table.
    Report {
        /// The run: a results/<id> folder or its run.json.
        run: std::path::PathBuf,
    },
    /// Show two runs side by side: the change per variant and category.
    Compare(lab::compare_cmd::CompareArgs),
    /// What single system calls cost on this machine (ns per call), and how many each makes.
    Syscost(lab::syscost::SyscostArgs),
    /// The network namespaces of `lab run --hosts separate`: remove them, show them.
    #[command(subcommand)]
    Net(lab::net::cmd::NetCommand),
    /// Check a server's syscalls per request against a budget (a CI gate), or record one.
    Check(lab::check::CheckArgs),
    /// Run a workshop exercise: its before and after, the comparison, the expected effect.
    Workshop(lab::workshop::WorkshopArgs),
    /// Check the Grafana dashboards against a Prometheus: every query returns data for
    /// each variant.
    Dashboards(lab::dashboards::DashboardsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Db(cmd) => db_cmd::run(cmd),
        Command::Trace(args) => tracer::cli::run(args),
        Command::Run(args) => lab::run_cmd::run(args),
        Command::Report { run } => lab::run_cmd::report(&run),
        Command::Compare(args) => lab::compare_cmd::run(args),
        Command::Syscost(args) => lab::syscost::run(args),
        Command::Workshop(args) => lab::workshop::run(args),
        Command::Dashboards(args) => lab::dashboards::run(args),
        Command::Net(cmd) => lab::net::cmd::run(cmd),
        Command::Check(args) => lab::check::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
