//! The command line: flags named like wrk's where wrk has them (-c -t -d --timeout -H
//! --latency), plus -n -p -R/--rate --json and the rest; turned into a [`Config`].

use std::path::PathBuf;

use clap::Parser;

use crate::config::{parse_duration, Arrivals, Config, Error, SweepConfig};

fn duration_arg(s: &str) -> Result<f64, String> {
    parse_duration(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArrivalsArg {
    Constant,
    Poisson,
}

/// HTTP/1.1 load generator: closed loop like wrk, open loop corrected for coordinated
/// omission like wrk2 (--rate), and a capacity search (--sweep).
///
/// Examples:
///   loadgen -t1 -c64 -d10s http://127.0.0.1:8080/plaintext
///   loadgen -t1 -c256 -p16 -d10s http://127.0.0.1:8080/plaintext
///   loadgen -c32 -d30s --rate 5000 --arrivals poisson --json run.json http://127.0.0.1:8080/db
///   loadgen -c64 -d10s --sweep --rate 1000 --sweep-factor 1.5 --slo 20ms --mix tfb.mix http://127.0.0.1:8080
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    allow_negative_numbers = true,
    verbatim_doc_comment
)]
pub struct Cli {
    /// Target URL, http://host[:port]/path (with --mix only host and port are used)
    pub url: String,

    /// Connections to keep open (shared out over the threads)
    #[arg(short = 'c', long, default_value_t = 10, value_name = "N")]
    pub connections: u32,

    /// Threads, each running its own event loop (pin with taskset for benchmarks)
    #[arg(short = 't', long, default_value_t = 2, value_name = "N")]
    pub threads: u32,

    /// Duration of the measurement, e.g. 10s, 1m, 500ms (wrk syntax)
    #[arg(short = 'd', long, default_value = "10s", value_parser = duration_arg, value_name = "T", allow_hyphen_values = true)]
    pub duration: f64,

    /// Stop after exactly N measured requests instead of after --duration (a failed connect
    /// uses up one of the N)
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,

    /// Load applied before measuring; all statistics are reset after it
    #[arg(long, default_value = "0s", value_parser = duration_arg, value_name = "T", allow_hyphen_values = true)]
    pub warmup: f64,

    /// A request without a complete response after T is a timeout error (the connection is
    /// closed and reopened)
    #[arg(long, default_value = "2s", value_parser = duration_arg, value_name = "T", allow_hyphen_values = true)]
    pub timeout: f64,

    /// Pipelining depth: requests in flight per connection (16 for the TFB plaintext test)
    #[arg(short = 'p', long, default_value_t = 1, value_name = "DEPTH")]
    pub pipeline: u32,

    /// Open a new connection for every request (sends Connection: close)
    #[arg(long)]
    pub no_keepalive: bool,

    /// Open loop: offer R requests/s in total; latency is measured from each request's due
    /// time (corrected for coordinated omission) and also from its send time. Without it:
    /// closed loop, each connection sends when its previous answer arrived (as wrk)
    #[arg(short = 'R', long, value_name = "R")]
    pub rate: Option<f64>,

    /// Open-loop arrivals: evenly spaced, or a Poisson process
    #[arg(long, value_enum, default_value = "constant")]
    pub arrivals: ArrivalsArg,

    /// Capacity search: open-loop steps from --rate upwards until achieved < offered,
    /// errors appear or the corrected p99 passes --slo; each step lasts --duration
    #[arg(long)]
    pub sweep: bool,

    /// Sweep: each step offers FACTOR times the previous rate
    #[arg(long, default_value_t = 1.5, value_name = "FACTOR")]
    pub sweep_factor: f64,

    /// Sweep: explicit offered rates instead of --rate/--sweep-factor, e.g. 1000,2000,5000
    #[arg(long, value_delimiter = ',', value_name = "R,R,...")]
    pub sweep_rates: Vec<f64>,

    /// Sweep: at most N steps
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub sweep_steps: u32,

    /// Sweep: an achieved rate below (1 - TOL) x offered means the server did not keep up
    #[arg(long, default_value_t = 0.03, value_name = "TOL")]
    pub sweep_tolerance: f64,

    /// Sweep: service level objective for the corrected p99 latency, e.g. 10ms
    #[arg(long, default_value = "100ms", value_parser = duration_arg, value_name = "T", allow_hyphen_values = true)]
    pub slo: f64,

    /// Weighted mix of paths, one '[WEIGHT] /path' per line, {1..20} and {1,5,10}
    /// placeholders (see docs/loadgen.md)
    #[arg(long, value_name = "FILE")]
    pub mix: Option<PathBuf>,

    /// Statuses that count as success (default: any 2xx), e.g. 200,404
    #[arg(long, value_delimiter = ',', value_name = "CODE,...")]
    pub expect_status: Vec<u16>,

    /// Add a request header, e.g. -H 'Accept: text/plain' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "H")]
    pub headers: Vec<String>,

    /// Write the full report as JSON (schema loadgen/1) to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write an HdrHistogram interval log (one histogram per second, microseconds) to FILE
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,

    /// Closed loop with 64+ requests in flight on a thread: when nothing is ready to read,
    /// sleep T on a timer rather than wait to be woken by the next response. The server
    /// then wakes the generator far less often (in a VM each wake-up costs the server
    /// ~10-20 us of CPU); a response that arrives during a nap is timed up to T late.
    /// 0 turns naps off; the open loop (--rate) never naps
    #[arg(long, default_value = "50us", value_parser = duration_arg, value_name = "T", allow_hyphen_values = true)]
    pub nap: f64,

    /// Accepted for wrk compatibility: the latency distribution is always printed
    #[arg(long)]
    pub latency: bool,

    /// No progress bar
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

impl Cli {
    /// The run configuration these flags describe (reads the mix file).
    pub fn to_config(&self) -> Result<Config, Error> {
        let mut c = Config::new(self.url.clone());
        c.connections = self.connections;
        c.threads = self.threads;
        c.duration_s = self.duration;
        c.requests = self.requests;
        c.warmup_s = self.warmup;
        c.timeout_s = self.timeout;
        c.pipeline = self.pipeline;
        c.keepalive = !self.no_keepalive;
        c.rate = self.rate;
        c.arrivals = match self.arrivals {
            ArrivalsArg::Constant => Arrivals::Constant,
            ArrivalsArg::Poisson => Arrivals::Poisson,
        };
        if let Some(p) = &self.mix {
            c.mix = crate::mix::load(p).map_err(Error::Input)?;
        }
        c.expect_status = self.expect_status.clone();
        c.headers = self.headers.clone();
        c.hdr_log = self.hdr_log.clone();
        c.nap_s = self.nap;
        if self.sweep {
            let start = match (self.rate, self.sweep_rates.first()) {
                (Some(r), _) => r,
                (None, Some(&r)) => r,
                (None, None) => {
                    return Err(Error::Input(
                        "--sweep needs a start rate (--rate R) or --sweep-rates".into(),
                    ))
                }
            };
            c.sweep = Some(SweepConfig {
                start,
                factor: self.sweep_factor,
                rates: self.sweep_rates.clone(),
                max_steps: self.sweep_steps,
                slo_p99_ms: self.slo * 1000.0,
                tolerance: self.sweep_tolerance,
            });
        } else if !self.sweep_rates.is_empty() {
            return Err(Error::Input("--sweep-rates needs --sweep".into()));
        }
        Ok(c)
    }
}
