//! `lab net down` and `lab net status`: the namespaces of `lab run --hosts separate`.

use std::process::ExitCode;

use anyhow::Result;

use super::{ns, teardown, Plan};

/// The lab's network namespaces (`lab run --hosts separate`).
#[derive(Debug, clap::Subcommand)]
pub enum NetCommand {
    /// Remove the lab's namespaces and what is in them: processes (a server or PostgreSQL
    /// left by a killed run), links, qdiscs. Only the names of this prefix
    /// (`LAB_NET_PREFIX`, default `lab`): `<prefix>-client`, `-server`, `-db`, `-wire`.
    Down,
    /// Show the lab's namespaces, their links, qdiscs and processes; exit 3 when none exists.
    Status,
}

pub fn run(cmd: NetCommand) -> Result<ExitCode> {
    let plan = Plan::from_env()?;
    match cmd {
        NetCommand::Down => {
            // Waits for nothing: a run that holds the namespaces would lose them under
            // its feet, so say so instead.
            let _lock = plan.lock()?;
            let removed = teardown(&plan);
            if removed.is_empty() {
                println!("no namespace of {}-* to remove", plan.prefix);
            } else {
                println!("removed {}", removed.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        NetCommand::Status => {
            let mut any = false;
            for name in plan.namespaces() {
                if !ns::exists(&name) {
                    continue;
                }
                any = true;
                println!("{name}");
                let links = ns::ip(&["-n", &name, "-br", "addr"]).unwrap_or_default();
                for l in links.lines() {
                    println!("  link   {l}");
                }
                let qdiscs = ns::run("tc", &["-n", &name, "qdisc", "show"]).unwrap_or_default();
                for q in qdiscs.lines().filter(|q| q.contains("netem")) {
                    println!("  qdisc  {q}");
                }
                for pid in ns::pids(&name) {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    println!("  pid    {pid} {}", comm.trim());
                }
            }
            if any {
                Ok(ExitCode::SUCCESS)
            } else {
                println!("no namespace of {}-*", plan.prefix);
                Ok(ExitCode::from(3))
            }
        }
    }
}
