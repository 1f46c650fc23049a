//! `lab`: the command that ties the lab together.
//!
//! This file only parses the command line and hands each subcommand to the module that
//! owns it; `lab db ...` is in [`db_cmd`].

mod db_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Db(cmd) => db_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
