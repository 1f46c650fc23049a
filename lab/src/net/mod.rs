//! Separate hosts on one machine: `lab run --hosts separate` and `lab net`.
//!
//! Three network namespaces stand for three machines: `<prefix>-client` (the load
//! generator), `<prefix>-server` (the server under test) and `<prefix>-db` (the lab's
//! PostgreSQL); the prefix is `lab` unless `LAB_NET_PREFIX` says otherwise. Two links join
//! them, each its own /24 of the benchmarking range 198.18.0.0/15 (RFC 2544, RFC 6890:
//! reserved for testing network devices, never routed on the internet, used by neither
//! Docker's default pools nor common LANs); `LAB_NET_SUBNET` moves it:
//!
//! ```text
//!  client 198.18.1.2 ──── 198.18.1.1 server 198.18.2.1 ──── 198.18.2.2 db
//!         (client-server link)                  (server-db link)
//! ```
//!
//! A link without added latency is a veth pair. With latency, it is a veth pair with
//! netem on both ends where the kernel has netem, else two veth pairs into the
//! `<prefix>-wire` namespace with the lab's delaying forwarder between them ([`wire`]).
//! Nothing is created in the host's own namespace and no namespace has a default route, so
//! nothing the lab sends can leave the machine; the lab refuses to start when one of its
//! addresses is already routed on the host ([`check_host_routes`]).
//!
//! Clean-up: [`Network::down`] (also on drop) at the end of a run; SIGINT, SIGTERM and
//! SIGHUP are taken by a thread that tears the namespaces down before the lab exits; and
//! after a crash, the next `--hosts separate` run or `lab net down` removes what is left:
//! the processes still inside the namespaces first (a namespace lives as long as one of
//! its processes does), then the namespaces, which takes their links and qdiscs with them.
//!
//! | module | owns |
//! |---|---|
//! | [`ns`] | namespaces through iproute2 and setns(2), the processes inside them |
//! | [`wire`] | the delaying forwarder |
//! | [`probe`] | a link's round trip, measured before the load |
//! | [`cmd`] | `lab net down|status` |

pub mod cmd;
pub mod ns;
pub mod probe;
pub mod wire;

use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use nix::fcntl::{Flock, FlockArg};

use crate::results::{NetHost, NetLink, Topology};

/// Where the run's processes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Hosts {
    /// Everything on this host, over loopback.
    Same,
    /// Load generator, server and PostgreSQL each in a network namespace of its own.
    Separate,
}

impl Hosts {
    pub fn name(self) -> &'static str {
        match self {
            Hosts::Same => "same",
            Hosts::Separate => "separate",
        }
    }
}

/// How added latency is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DelayChoice {
    /// netem where the kernel has it, else the forwarder.
    Auto,
    /// The kernel's netem qdisc (fails where the kernel lacks it).
    Netem,
    /// The lab's delaying forwarder in a namespace of its own.
    Forwarder,
}

/// What `--hosts separate` asks for.
#[derive(Debug, Clone, Copy)]
pub struct NetOptions {
    /// Round trips added (half each way).
    pub client_latency: Duration,
    pub db_latency: Duration,
    /// Each frame's one-way delay varies uniformly by up to this much.
    pub jitter: Duration,
    pub delay: DelayChoice,
}

/// The `lab run` flags that place the hosts and shape their links.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// Where the load generator, the server and PostgreSQL run: `same` (this host, over
    /// loopback) or `separate` (a network namespace each, joined by veth links, with
    /// addresses from 198.18.0.0/16; needs root; docs/hosts.md).
    #[arg(long, value_enum, default_value_t = Hosts::Same)]
    pub hosts: Hosts,
    /// Round trip added between the server and PostgreSQL, half each way (e.g. 2ms, 500us;
    /// with --hosts separate). Measured before the load and recorded in run.json.
    #[arg(long, value_name = "DURATION", value_parser = parse_latency)]
    pub db_latency: Option<Duration>,
    /// Round trip added between the load generator and the server, half each way (with
    /// --hosts separate).
    #[arg(long, value_name = "DURATION", value_parser = parse_latency)]
    pub client_latency: Option<Duration>,
    /// Each frame's one-way delay varies uniformly by up to ± this much on every delayed
    /// link (the forwarder keeps frames in order; netem may reorder them).
    #[arg(long, value_name = "DURATION", value_parser = parse_latency)]
    pub jitter: Option<Duration>,
    /// How latency is added: `netem` (the kernel's qdisc), `forwarder` (the lab's delaying
    /// forwarder, in a namespace between the two hosts), or `auto` (netem where the kernel
    /// has it).
    #[arg(long, value_enum, default_value_t = DelayChoice::Auto)]
    pub delay: DelayChoice,
}

impl Default for HostArgs {
    fn default() -> Self {
        HostArgs {
            hosts: Hosts::Same,
            db_latency: None,
            client_latency: None,
            jitter: None,
            delay: DelayChoice::Auto,
        }
    }
}

/// A latency flag: a duration with its unit, at most 1 s.
fn parse_latency(s: &str) -> Result<Duration, String> {
    if s.trim().chars().all(|c| c.is_ascii_digit() || c == '.') && s.trim() != "0" {
        return Err(format!("{s:?}: give a unit, e.g. {s}ms or {s}us"));
    }
    let seconds = loadgen::config::parse_duration(s)?;
    if !(0.0..=1.0).contains(&seconds) {
        return Err(format!("{s:?}: between 0 and 1s"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl HostArgs {
    /// What to build, None for `--hosts same`; latency flags without `--hosts separate`
    /// are an error rather than silently ignored.
    pub fn options(&self) -> Result<Option<NetOptions>> {
        let options = NetOptions {
            client_latency: self.client_latency.unwrap_or_default(),
            db_latency: self.db_latency.unwrap_or_default(),
            jitter: self.jitter.unwrap_or_default(),
            delay: self.delay,
        };
        match self.hosts {
            Hosts::Separate => Ok(Some(options)),
            Hosts::Same => {
                if self.db_latency.is_some()
                    || self.client_latency.is_some()
                    || self.jitter.is_some()
                    || self.delay != DelayChoice::Auto
                {
                    bail!(
                        "--db-latency, --client-latency, --jitter and --delay shape the links                          between separate hosts: add --hosts separate"
                    );
                }
                Ok(None)
            }
        }
    }

    /// Milliseconds, for run.json's configuration.
    pub fn millis(d: Option<Duration>) -> f64 {
        d.unwrap_or_default().as_secs_f64() * 1e3
    }
}

/// One of the three hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Client,
    Server,
    Db,
}

/// Namespace roles, in the order they are created; `wire` only with the forwarder.
const ROLES: [&str; 4] = ["client", "server", "db", "wire"];

/// Names and addresses: the one place that knows them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub prefix: String,
    /// The first address of the /16 the links are cut from.
    pub base: Ipv4Addr,
}

/// The two links: name, the /24 (third octet), the namespaces and interfaces of each end.
/// The first end is the one that connects (client → server, server → db).
struct LinkPlan {
    name: &'static str,
    octet: u8,
    near: Host,
    near_if: &'static str,
    far: Host,
    far_if: &'static str,
}

const LINKS: [LinkPlan; 2] = [
    LinkPlan {
        name: "client-server",
        octet: 1,
        near: Host::Client,
        near_if: "to-server",
        far: Host::Server,
        far_if: "to-client",
    },
    LinkPlan {
        name: "server-db",
        octet: 2,
        near: Host::Server,
        near_if: "to-db",
        far: Host::Db,
        far_if: "to-server",
    },
];

impl Plan {
    /// `LAB_NET_PREFIX` (default `lab`) and `LAB_NET_SUBNET` (default 198.18.0.0/16).
    pub fn from_env() -> Result<Plan> {
        let prefix = std::env::var("LAB_NET_PREFIX")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "lab".into());
        if prefix.len() > 20
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("LAB_NET_PREFIX={prefix:?}: use at most 20 letters, digits, '-' or '_'");
        }
        let subnet = std::env::var("LAB_NET_SUBNET")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "198.18.0.0/16".into());
        let base = subnet
            .strip_suffix("/16")
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
            .filter(|a| a.octets()[2] == 0 && a.octets()[3] == 0)
            .with_context(|| {
                format!("LAB_NET_SUBNET={subnet:?}: give a /16 such as 198.18.0.0/16")
            })?;
        Ok(Plan { prefix, base })
    }

    pub fn namespace(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub fn host_namespace(&self, host: Host) -> String {
        self.namespace(match host {
            Host::Client => "client",
            Host::Server => "server",
            Host::Db => "db",
        })
    }

    /// Every namespace name this plan may create.
    pub fn namespaces(&self) -> Vec<String> {
        ROLES.iter().map(|r| self.namespace(r)).collect()
    }

    fn address(&self, octet: u8, host: u8) -> Ipv4Addr {
        let [a, b, _, _] = self.base.octets();
        Ipv4Addr::new(a, b, octet, host)
    }

    fn subnet(&self) -> String {
        format!("{}/16", self.base)
    }

    /// The link's /24.
    fn link_cidr(&self, link: &LinkPlan) -> String {
        format!("{}/24", self.address(link.octet, 0))
    }

    /// The addresses of the near and far end: the server is .1 on both links, the
    /// client and PostgreSQL are .2.
    fn ends(&self, link: &LinkPlan) -> (Ipv4Addr, Ipv4Addr) {
        let of = |host| if host == Host::Server { 1 } else { 2 };
        (
            self.address(link.octet, of(link.near)),
            self.address(link.octet, of(link.far)),
        )
    }

    /// The server's address on the client link: where the load goes.
    pub fn server_address(&self) -> Ipv4Addr {
        self.ends(&LINKS[0]).1
    }

    /// PostgreSQL's address on the database link.
    pub fn db_address(&self) -> Ipv4Addr {
        self.ends(&LINKS[1]).1
    }

    /// The database link's /24, which PostgreSQL trusts.
    pub fn db_link_cidr(&self) -> String {
        self.link_cidr(&LINKS[1])
    }

    fn addresses(&self) -> Vec<Ipv4Addr> {
        LINKS
            .iter()
            .flat_map(|l| {
                let (a, b) = self.ends(l);
                [a, b]
            })
            .collect()
    }

    /// The lock that makes one prefix's namespaces one run's at a time.
    fn lock(&self) -> Result<Flock<File>> {
        let dir = std::path::Path::new("/run/lock");
        let dir = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("syscall-lab-net-{}.lock", self.prefix));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            anyhow::anyhow!(
                "another lab is using the namespaces {}-* (it holds {}): wait for it to \
                 finish, or give this one other names with LAB_NET_PREFIX=...",
                self.prefix,
                path.display()
            )
        })
    }
}

/// The hosts and links of one run. Dropping it tears everything down.
pub struct Network {
    pub plan: Plan,
    pub topology: Topology,
    wires: Vec<wire::Wire>,
    /// Leftovers of an earlier run that `up` removed first.
    pub removed: Vec<String>,
    _lock: Flock<File>,
    down: bool,
}

/// The plan of the network that is up, for the signal thread.
static ACTIVE: Mutex<Option<Plan>> = Mutex::new(None);

impl Network {
    /// Creates the hosts and links, measures each link's round trip, and returns.
    pub fn up(options: &NetOptions) -> Result<Network> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!(
                "--hosts separate creates network namespaces and veth links: run the lab as \
                 root (or with CAP_NET_ADMIN and CAP_SYS_ADMIN)"
            );
        }
        let plan = Plan::from_env()?;
        let lock = plan.lock()?;
        let removed = teardown(&plan);
        check_host_routes(&plan)?;
        watch_signals();
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan.clone());
        let mut network = Network {
            plan,
            topology: Topology::default(),
            wires: Vec::new(),
            removed,
            _lock: lock,
            down: false,
        };
        // On an error, dropping `network` removes whatever was made.
        network.build(options)?;
        Ok(network)
    }

    fn build(&mut self, options: &NetOptions) -> Result<()> {
        let plan = self.plan.clone();
        let delayed = |l: &LinkPlan| latency_of(options, l) > Duration::ZERO;
        let mut roles = vec!["client", "server", "db"];
        let mut delay = if LINKS.iter().any(delayed) {
            options.delay
        } else {
            DelayChoice::Netem
        };
        if delay == DelayChoice::Forwarder {
            roles.push("wire");
        }
        for role in &roles {
            self.add_namespace(&plan.namespace(role))?;
        }
        let mut links = Vec::new();
        for l in &LINKS {
            let latency = latency_of(options, l);
            let (near_ns, far_ns) = (plan.host_namespace(l.near), plan.host_namespace(l.far));
            let (near_addr, far_addr) = plan.ends(l);
            let half = latency / 2;
            let mut mechanism = "none";
            if latency > Duration::ZERO && delay != DelayChoice::Forwarder {
                veth(&near_ns, l.near_if, &far_ns, l.far_if)?;
                match netem(&near_ns, l.near_if, half, options.jitter)
                    .and_then(|_| netem(&far_ns, l.far_if, half, options.jitter))
                {
                    Ok(()) => mechanism = "netem",
                    Err(e) if delay == DelayChoice::Netem => {
                        return Err(e).context(
                            "adding latency with netem (this kernel may lack it: \
                             CONFIG_NET_SCH_NETEM); --delay forwarder or auto uses the lab's \
                             forwarder instead",
                        );
                    }
                    Err(_) => {
                        // Auto: no netem here. Start over with the forwarder for every link.
                        ns::ip(&["-n", &near_ns, "link", "delete", l.near_if])?;
                        delay = DelayChoice::Forwarder;
                        self.add_namespace(&plan.namespace("wire"))?;
                    }
                }
            }
            if latency > Duration::ZERO && delay == DelayChoice::Forwarder {
                let wire_ns = plan.namespace("wire");
                // At most 15 characters, as every interface name.
                let (wa, wb) = (format!("{}-a", l.name), format!("{}-b", l.name));
                veth(&near_ns, l.near_if, &wire_ns, &wa)?;
                veth(&far_ns, l.far_if, &wire_ns, &wb)?;
                for i in [&wa, &wb] {
                    ns::ip(&["-n", &wire_ns, "link", "set", i, "up"])?;
                }
                self.wires.push(wire::Wire::start(
                    l.name,
                    &wire_ns,
                    &wa,
                    &wb,
                    wire::Delay {
                        one_way: half,
                        jitter: options.jitter,
                    },
                )?);
                mechanism = "forwarder";
            } else if mechanism == "none" {
                veth(&near_ns, l.near_if, &far_ns, l.far_if)?;
            }
            for (ns_name, dev, addr) in [
                (&near_ns, l.near_if, near_addr),
                (&far_ns, l.far_if, far_addr),
            ] {
                ns::ip(&[
                    "-n",
                    ns_name,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    dev,
                ])?;
                ns::ip(&["-n", ns_name, "link", "set", dev, "up"])?;
            }
            links.push(NetLink {
                name: l.name.into(),
                from: near_addr.to_string(),
                to: far_addr.to_string(),
                added_rtt_ms: latency.as_secs_f64() * 1e3,
                jitter_ms: if latency > Duration::ZERO {
                    options.jitter.as_secs_f64() * 1e3
                } else {
                    0.0
                },
                delay: mechanism.into(),
                measured: Default::default(),
            });
        }
        for (l, link) in LINKS.iter().zip(&mut links) {
            let (_, far_addr) = plan.ends(l);
            link.measured = probe::measure(
                &plan.host_namespace(l.far),
                far_addr,
                &plan.host_namespace(l.near),
            )
            .with_context(|| format!("measuring the {} link", l.name))?;
        }
        let addresses = |host: Host| -> Vec<String> {
            LINKS
                .iter()
                .flat_map(|l| {
                    let (n, f) = plan.ends(l);
                    [(l.near, n), (l.far, f)]
                })
                .filter(|(h, _)| *h == host)
                .map(|(_, a)| a.to_string())
                .collect()
        };
        self.topology = Topology {
            subnet: plan.subnet(),
            hosts: [
                (Host::Client, "client"),
                (Host::Server, "server"),
                (Host::Db, "db"),
            ]
            .into_iter()
            .map(|(h, role)| NetHost {
                role: role.into(),
                namespace: plan.host_namespace(h),
                addresses: addresses(h),
            })
            .collect(),
            links,
        };
        Ok(())
    }

    /// A namespace with loopback up, no IPv6 (no router solicitations or duplicate address
    /// probes on the links) and no forwarding.
    fn add_namespace(&mut self, name: &str) -> Result<()> {
        ns::add(name)?;
        for (key, value) in [
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.ip_forward", "0"),
        ] {
            ns::sysctl(name, key, value)?;
        }
        ns::ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The lab's PostgreSQL on the database host: the data directory of `lab db up`
    /// (`LAB_PGDATA`) with `-<prefix>-db` appended (a cluster per prefix, so that two labs
    /// with different prefixes never share one), listening on the database address and
    /// trusting the database link.
    pub fn database(&self) -> db::ClusterConfig {
        db::ClusterConfig::standard().on_network(
            &format!("-{}", self.plan.host_namespace(Host::Db)),
            self.plan.db_address().into(),
            &self.plan.db_link_cidr(),
        )
    }

    /// Starts (initialising and seeding on first use) the lab's PostgreSQL inside the
    /// database namespace; its URL, as the server reaches it.
    pub fn start_database(&self) -> Result<String> {
        let config = self.database();
        ns::in_netns(&self.plan.host_namespace(Host::Db), || -> Result<()> {
            let cluster = db::Cluster::new(config.clone())?;
            // One left running elsewhere (its namespace removed by hand) would hold the
            // data directory while listening where nobody can reach it.
            cluster.down()?;
            cluster.up().map(drop)
        })?
        .with_context(|| {
            format!(
                "starting PostgreSQL in {} ({})",
                self.plan.host_namespace(Host::Db),
                config.data_dir.display()
            )
        })?;
        Ok(config.url())
    }

    /// Moves the calling thread into a host's namespace until the guard drops.
    pub fn enter(&self, host: Host) -> Result<ns::Entered> {
        ns::enter(&self.plan.host_namespace(host))
    }

    /// Frames each forwarder carried and lost, for the notes.
    pub fn forwarder_counts(&self) -> Vec<(String, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        self.wires
            .iter()
            .map(|w| {
                let c = &w.counters;
                (
                    w.name.clone(),
                    c.frames[0].load(Relaxed) + c.frames[1].load(Relaxed),
                    c.dropped[0].load(Relaxed) + c.dropped[1].load(Relaxed),
                )
            })
            .collect()
    }

    /// Stops the forwarders, ends the processes still inside, removes the namespaces.
    pub fn down(mut self) {
        self.tear_down();
    }

    fn tear_down(&mut self) {
        if self.down {
            return;
        }
        self.down = true;
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        for w in self.wires.drain(..) {
            w.stop();
        }
        teardown(&self.plan);
        *active = None;
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.tear_down();
    }
}

/// `lab run`'s side: builds the network for `--hosts separate` (None for `same`), says
/// what it measured, and notes what a reader of the report should know.
pub fn start_for_run(
    args: &crate::run_cmd::RunArgs,
    notes: &mut Vec<String>,
) -> Result<Option<Network>> {
    let Some(options) = args.hosts.options()? else {
        return Ok(None);
    };
    if args.export {
        bail!(
            "--export serves on this host's 127.0.0.1, which cannot reach a server in a \
             namespace: leave out --export or --hosts separate"
        );
    }
    // `--database-url` takes DATABASE_URL when it is set.
    if args.database_url.as_deref().is_some_and(|u| !u.is_empty()) {
        bail!(
            "--hosts separate runs the lab's own PostgreSQL on the database host; leave out \
             --database-url and unset DATABASE_URL (it names a database the namespaces cannot reach)"
        );
    }
    eprintln!("lab run: creating the hosts (network namespaces) and measuring the links");
    let network = Network::up(&options)?;
    if !network.removed.is_empty() {
        let note = format!(
            "removed what an earlier run left: {}",
            network.removed.join(", ")
        );
        eprintln!("lab run: note: {note}");
        notes.push(note);
    }
    for link in &network.topology.links {
        eprintln!("lab run: {}", describe_link(link));
    }
    if options.delay == DelayChoice::Auto
        && network
            .topology
            .links
            .iter()
            .any(|l| l.delay == "forwarder")
    {
        notes.push(
            "this kernel has no netem: the added latency comes from the lab's delaying \
             forwarder (a thread of the lab in the wire namespace; docs/hosts.md)"
                .into(),
        );
    }
    Ok(Some(network))
}

/// One line per link for the terminal: asked for, made with, measured.
pub fn describe_link(link: &NetLink) -> String {
    let added = if link.added_rtt_ms > 0.0 {
        let jitter = if link.jitter_ms > 0.0 {
            format!(" ± {} ms", link.jitter_ms)
        } else {
            String::new()
        };
        format!(
            "+{} ms round trip{jitter} ({})",
            link.added_rtt_ms, link.delay
        )
    } else {
        "no added latency".into()
    };
    format!(
        "{} {} → {}: {added}; measured round trip {:.3} ms (echo median; {:.3}–{:.3}), connect {:.3} ms",
        link.name,
        link.from,
        link.to,
        link.measured.echo_rtt_ms.median,
        link.measured.echo_rtt_ms.min,
        link.measured.echo_rtt_ms.max,
        link.measured.connect_ms.median
    )
}

/// `lab run`'s end: notes what the forwarders carried, removes everything, and returns
/// the topology for run.json.
pub fn finish_for_run(network: Network, notes: &mut Vec<String>) -> Topology {
    for (name, frames, dropped) in network.forwarder_counts() {
        notes.push(format!(
            "forwarder on the {name} link: {frames} frames carried, {dropped} lost"
        ));
    }
    let topology = network.topology.clone();
    network.down();
    topology
}

fn latency_of(options: &NetOptions, link: &LinkPlan) -> Duration {
    match link.far {
        Host::Server => options.client_latency,
        _ => options.db_latency,
    }
}

/// A veth pair whose ends are made directly inside the two namespaces.
fn veth(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<()> {
    ns::ip(&[
        "link", "add", "name", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns",
        ns_b,
    ])
    .map(drop)
}

/// netem on an interface's egress: `delay` one way, ± `jitter`.
fn netem(netns: &str, dev: &str, delay: Duration, jitter: Duration) -> Result<()> {
    let delay = format!("{}us", delay.as_micros());
    let mut args = vec![
        "-n", netns, "qdisc", "add", "dev", dev, "root", "netem", "limit", "100000", "delay",
        &delay,
    ];
    let jitter = format!("{}us", jitter.as_micros());
    if jitter != "0us" {
        args.push(&jitter);
    }
    ns::run("tc", &args).map(drop)
}

/// Removes every namespace of the plan that exists, after ending the processes inside.
/// Returns the names removed.
pub fn teardown(plan: &Plan) -> Vec<String> {
    let mut removed = Vec::new();
    // The server before PostgreSQL, so that its connections are gone when PostgreSQL
    // shuts down. A server still under load may wait for its keep-alive connections: it
    // gets 3 s; PostgreSQL's fast shutdown gets 10.
    let mut names = plan.namespaces();
    names.sort_by_key(|n| n.ends_with("-db"));
    for name in names {
        if !ns::exists(&name) {
            continue;
        }
        let grace = if name.ends_with("-db") { 10 } else { 3 };
        ns::stop_processes(&name, Duration::from_secs(grace));
        if ns::delete(&name).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Refuses addresses that the host already routes (other than by its default route):
/// the lab's hosts would shadow, or be shadowed by, a network the machine really uses.
pub fn check_host_routes(plan: &Plan) -> Result<()> {
    let routes = ns::ip(&["-j", "-4", "route", "show", "table", "all"])?;
    if let Some(conflict) = route_conflict(&routes, &plan.addresses()) {
        bail!(
            "{conflict}: the lab's hosts would use addresses this machine already routes. \
             Choose another range with LAB_NET_SUBNET=A.B.0.0/16 (default 198.18.0.0/16)"
        );
    }
    Ok(())
}

/// The first route of `ip -j route` output covering one of `addresses`, described.
fn route_conflict(routes_json: &str, addresses: &[Ipv4Addr]) -> Option<String> {
    let routes: Vec<serde_json::Value> = serde_json::from_str(routes_json).unwrap_or_default();
    for r in routes {
        let Some(dst) = r.get("dst").and_then(|d| d.as_str()) else {
            continue;
        };
        if dst == "default" {
            continue;
        }
        let (net, len) = match dst.split_once('/') {
            Some((n, l)) => (n, l.parse::<u32>().unwrap_or(32)),
            None => (dst, 32),
        };
        let Ok(net) = net.parse::<Ipv4Addr>() else {
            continue;
        };
        let len = len.min(32);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        for a in addresses {
            if u32::from(*a) & mask == u32::from(net) & mask {
                let table = r.get("table").and_then(|t| t.as_str()).unwrap_or("main");
                let dev = r.get("dev").and_then(|t| t.as_str()).unwrap_or("?");
                return Some(format!(
                    "{a} is already routed on this host ({dst} dev {dev}, table {table})"
                ));
            }
        }
    }
    None
}

/// The write end of the pipe the signal handler writes to.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe; a failed write loses nothing worse than the
    // clean-up, which the next run or `lab net down` does.
    unsafe {
        libc::write(
            SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed),
            (&byte as *const u8).cast(),
            1,
        )
    };
}

/// SIGINT, SIGTERM and SIGHUP get a handler that wakes one thread: it removes the network
/// that is up, then exits as the signal would have (128 + its number). A handler rather
/// than a blocked mask, because a blocked mask is inherited by the server and PostgreSQL
/// (std does not reset it), while a handler is reset by exec.
fn watch_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let Ok((read, write)) = nix::unistd::pipe() else {
            return;
        };
        SIGNAL_PIPE.store(
            std::os::fd::IntoRawFd::into_raw_fd(write),
            std::sync::atomic::Ordering::Relaxed,
        );
        let spawned = std::thread::Builder::new()
            .name("lab-signals".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                if nix::unistd::read(&read, &mut byte) != Ok(1) {
                    return;
                }
                let plan = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(plan) = plan {
                    eprintln!(
                        "\nlab: signal {}: removing the namespaces {}-* before exiting",
                        byte[0], plan.prefix
                    );
                    teardown(&plan);
                }
                std::process::exit(128 + i32::from(byte[0]));
            });
        if spawned.is_err() {
            return;
        }
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            // SAFETY: the handler only calls write(2).
            let _ = unsafe { sigaction(s, &action) };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            prefix: "lab".into(),
            base: Ipv4Addr::new(198, 18, 0, 0),
        }
    }

    #[test]
    fn addresses_come_from_the_plan() {
        let p = plan();
        assert_eq!(p.server_address(), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(p.db_address(), Ipv4Addr::new(198, 18, 2, 2));
        assert_eq!(p.db_link_cidr(), "198.18.2.0/24");
        assert_eq!(
            p.namespaces(),
            ["lab-client", "lab-server", "lab-db", "lab-wire"]
        );
    }

    #[test]
    fn a_route_covering_an_address_is_a_conflict_and_the_default_route_is_not() {
        let addrs = plan().addresses();
        let routes = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0"},
            {"dst":"172.17.0.0/16","dev":"docker0"},
            {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local"}]"#;
        assert_eq!(route_conflict(routes, &addrs), None);
        let routes = r#"[{"dst":"198.18.0.0/15","dev":"tun0"}]"#;
        assert_eq!(
            route_conflict(routes, &addrs).as_deref(),
            Some("198.18.1.2 is already routed on this host (198.18.0.0/15 dev tun0, table main)")
        );
        let routes = r#"[{"dst":"198.18.2.2","dev":"eth1","table":"local"}]"#;
        assert!(route_conflict(routes, &addrs).is_some());
    }
}
