//! The `lab` command's library: each subcommand is one module, and [`results`] holds the
//! types every report is made from.
//!
//! | module | owns |
//! |---|---|
//! | [`check`] | `lab check`: syscalls per request against a budget, a CI gate |
//! | [`clock`] | UTC dates and times from Unix seconds (run ids, the report's dates) |
//! | [`dashboards`] | `lab dashboards check`: every dashboard query against a Prometheus |
//! | [`db_cmd`] | `lab db up|down|status|url|reset` |
//! | [`db_side`] | `lab run --trace-db`: the database's postmaster and its CPU over a window |
//! | [`net`] | `lab run --hosts separate` and `lab net`: hosts in network namespaces, links with latency |
//! | [`placement`] | which CPUs the server and the load generator run on |
//! | [`report`] | the HTML report of a run (`report.html`) |
//! | [`results`] | the result types of a run (`run.json`) |
//! | [`run_cmd`] | `lab run`: every variant under load and tracing |
//! | [`table`] | the terminal tables |
//! | [`compare_cmd`] | `lab compare A B` |
//! | [`syscost`] | `lab syscost`: what single system calls cost here |
//! | [`workshop`] | `lab workshop N`: the workshop exercises, their before/after and expected effects |

pub mod check;
pub mod clock;
pub mod compare_cmd;
pub mod dashboards;
pub mod db_cmd;
pub mod db_side;
pub mod net;
pub mod placement;
pub mod report;
pub mod results;
pub mod run_cmd;
pub mod syscost;
pub mod table;
pub mod workshop;
