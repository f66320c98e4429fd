//! `kangaroo`: the orchestrator's server and command-line client.
//!
//! Exit codes: 0 success, 1 the operation failed (the server's message is printed), 2 bad
//! command-line usage.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kangaroo_orchestrator::catalog::Catalog;
use kangaroo_orchestrator::model::{format_memory, format_vcpus};
use kangaroo_orchestrator::packing::{self, PackOptions, Plan};
use kangaroo_orchestrator::server::{self, ServeConfig};
use kangaroo_orchestrator::workload::Workload;
use serde_json::{json, Value};

/// Kangaroo: run nested VMs on the infrastructure VMs you rent, packed for cost.
#[derive(Debug, Parser)]
#[command(name = "kangaroo", version, about)]
struct Cli {
    /// API address of a running `kangaroo serve`.
    #[arg(
        long,
        global = true,
        env = "KANGAROO_URL",
        default_value = "http://127.0.0.1:7878"
    )]
    url: String,
    /// API token (default: read from the data directory).
    #[arg(long, global = true, env = "KANGAROO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory (state database and API token).
    #[arg(long, global = true, env = "KANGAROO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API server (listens on 127.0.0.1:7878 by default).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// A provider as NAME=CATALOG (a built-in catalog or a file; simulated) or
        /// NAME=local:CATALOG (hosts are namespaces on this machine with their own switches,
        /// VMs run under --vm-driver; needs root); repeatable. The first is the default for
        /// placement.
        #[arg(long = "provider", value_parser = parse_provider, default_value = "sim=ec2-2026")]
        providers: Vec<(String, String)>,
        /// Nested-VM driver of local providers: `qemu` (real VMs, live migration) or `netns`
        /// (a namespace and a process; moves restart it).
        #[arg(long, default_value = "netns")]
        vm_driver: String,
        /// Datapath mode of the local hosts' switches.
        #[arg(long, value_enum, default_value_t = kangaroo_control::mode::DEFAULT_MODE)]
        switch_mode: kangaroo_control::Mode,
        /// Guest image directory of the `qemu` driver (scripts/build-guest-image.sh builds it).
        #[arg(
            long,
            env = "KANGAROO_GUEST_DIR",
            default_value = "/var/cache/kangaroo/guest"
        )]
        guest_image: PathBuf,
        /// Seconds between reconciler passes over local hosts (0: start-up and on request only).
        #[arg(long, default_value_t = 10)]
        reconcile_secs: u64,
        /// Which tunnels between local hosts are encrypted and authenticated (secure tunnels,
        /// the WireGuard protocol): `between-providers`, `always` or `off` (plain VXLAN).
        #[arg(long, default_value = "between-providers")]
        secure_tunnels: kangaroo_orchestrator::infra::local::SecurePolicy,
        /// The tenant's project and user name in the OpenStack-compatible API (its password is
        /// the API token).
        #[arg(long, default_value = "kangaroo")]
        openstack_project: String,
        /// Seconds an OpenStack token is valid.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(60..=604_800))]
        openstack_token_ttl: u64,
        /// The OpenStack flavors, a TOML file of `[[flavor]]` entries with `name`, `vcpus` and
        /// `memory` (default: m1.tiny to m1.xlarge).
        #[arg(long)]
        flavors: Option<PathBuf>,
        /// Where the state lives: `embedded` (a database in the data directory, one
        /// controller) or `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (several controllers on one
        /// etcd; the elected leader writes, the others stand by).
        #[arg(long, env = "KANGAROO_STORE", default_value = "embedded")]
        store: server::StoreChoice,
        /// The API URL other controllers send writes to while this one leads (etcd store;
        /// default: http:// and the listening address).
        #[arg(long, env = "KANGAROO_ADVERTISE")]
        advertise: Option<String>,
        /// Seconds of the leader's lease (etcd store): a standby takes over this long after
        /// the leader stopped renewing it.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
        lease_secs: u64,
        /// What the leader does with the VMs of a host whose `kangaroo agent` stopped renewing
        /// its lease (etcd store): `leave` them marked lost, or `recreate` them on other hosts
        /// of the provider.
        #[arg(long, value_enum, default_value = "leave")]
        on_host_lost: kangaroo_orchestrator::service::HostLostPolicy,
        /// Give every local host its own `kangaroo agent` (etcd store), started when the host
        /// is rented: the agent drives the host's switch and VMs, the controllers rent hosts,
        /// run migrations and settle what crosses hosts. Without it the leader drives every
        /// local host itself.
        #[arg(long, env = "KANGAROO_LOCAL_AGENTS")]
        local_agents: bool,
        /// A TOML file of these settings: each key is a flag's long name (`store =
        /// "etcd://10.0.0.5:2379"`, `lease_secs = 5`, `local_agents = true`, `provider =
        /// ["cloud-a=local:ec2-2026"]`). A flag given on the command line wins over the file,
        /// the file over the environment.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The agent of one host (etcd store): holds the host's heartbeat lease, watches the
    /// desired state of its host, makes it so and reports what it observes. `--driver local`
    /// drives a host of a local provider (its switch, peers, FDB entries and VMs; a controller
    /// with --local-agents starts it when it rents the host); `sim` observes what is assigned
    /// (simulated hosts; for scale tests).
    Agent {
        /// Where the state lives: etcd://HOST:PORT[/PREFIX].
        #[arg(long, env = "KANGAROO_STORE")]
        store: String,
        /// The host this agent is for.
        #[arg(long)]
        host: String,
        /// Seconds of the heartbeat lease: the host is lost this long after the agent stops.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
        lease_secs: u64,
        /// How the host is driven: `local` or `sim`.
        #[arg(long, default_value = "sim")]
        driver: String,
        /// A local provider, in the order the controllers name them (repeatable; `local`).
        #[arg(long = "local-provider")]
        local_providers: Vec<String>,
        /// Nested-VM driver (`local`): `qemu` or `netns`, as the controllers'.
        #[arg(long, default_value = "netns")]
        vm_driver: String,
        /// Datapath mode of the host's switch (`local`).
        #[arg(long, value_enum, default_value_t = kangaroo_control::mode::DEFAULT_MODE)]
        switch_mode: kangaroo_control::Mode,
        /// Guest image directory of the `qemu` driver (`local`).
        #[arg(
            long,
            env = "KANGAROO_GUEST_DIR",
            default_value = "/var/cache/kangaroo/guest"
        )]
        guest_image: PathBuf,
        /// Which tunnels are secure tunnels (`local`), as the controllers'.
        #[arg(long, default_value = "between-providers")]
        secure_tunnels: kangaroo_orchestrator::infra::local::SecurePolicy,
    },
    /// The service a `netns` nested VM runs: HTTP on ADDR answering `/` with
    /// `name=NAME boot=ID counter=N` (N: tenths of a second since start) and `/cgi-bin/hits`
    /// with a request counter, like the QEMU guest image.
    #[command(hide = true)]
    GuestService {
        /// The VM's name.
        #[arg(long)]
        name: String,
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Plan a workload file locally: hosts to rent, placement, cost vs one VM per instance.
    Plan {
        /// Workload file (TOML).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Apply a workload file: rent the planned hosts and create the VMs.
    Apply {
        /// Workload file (TOML).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Propose migrations that free whole hosts.
    Consolidate {
        /// Only show the proposal (executing migrations needs real drivers).
        #[arg(long, required = true)]
        dry_run: bool,
    },
    /// Make local hosts and VMs match the state now (adopt, repair, finish interrupted work).
    Reconcile,
    /// Rented hosts.
    #[command(subcommand)]
    Host(HostCmd),
    /// Tenant networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Nested VMs.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Applications (the VMs labelled with one `app`).
    #[command(subcommand)]
    App(AppCmd),
    /// Provider catalogs (built in).
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Cost of the rented hosts.
    Billing,
    /// This controller: the only one, the leader or a standby (and the leader's address), where
    /// the state lives and the revision it serves.
    Controller,
}

#[derive(Debug, Subcommand)]
enum HostCmd {
    /// List hosts.
    Ls,
    /// Rent a host.
    Add {
        /// Instance type.
        instance_type: String,
        /// Host name (generated if absent).
        #[arg(long)]
        name: Option<String>,
        /// Provider.
        #[arg(long)]
        provider: Option<String>,
    },
    /// Release a host that runs no VM.
    Rm {
        /// Host name.
        name: String,
    },
    /// The tunnels of a local host's switch: peers, encryption, path and round trip.
    Tunnels {
        /// Host name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum NetworkCmd {
    /// List networks.
    Ls,
    /// Create a network.
    Create {
        /// Name.
        name: String,
        /// VNI (1–16777215).
        #[arg(long)]
        vni: u32,
        /// IPv4 subnet, e.g. 192.168.10.0/24.
        #[arg(long)]
        subnet: String,
    },
    /// Delete a network.
    Rm {
        /// Name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum VmCmd {
    /// List VMs.
    Ls,
    /// Create a VM, placed cost-aware.
    Create {
        /// Name.
        name: String,
        /// vCPUs (multiples of 0.25).
        #[arg(long)]
        vcpus: f64,
        /// Memory, e.g. 2GiB.
        #[arg(long)]
        memory: String,
        /// Network.
        #[arg(long, default_value = "default")]
        network: String,
        /// Affinity group.
        #[arg(long)]
        affinity: Option<String>,
        /// Anti-affinity group.
        #[arg(long)]
        anti_affinity: Option<String>,
        /// Guest image.
        #[arg(long)]
        image: Option<String>,
        /// Nested-VM driver on local hosts: `qemu` or `netns` (default: the server's).
        #[arg(long)]
        driver: Option<String>,
        /// The application it belongs to.
        #[arg(long)]
        app: Option<String>,
        /// Host to place on.
        #[arg(long)]
        host: Option<String>,
        /// Provider whose hosts placement uses (and rents from when none has room).
        #[arg(long)]
        provider: Option<String>,
    },
    /// Show a VM.
    Show {
        /// Name.
        name: String,
    },
    /// Start a VM.
    Start {
        /// Name.
        name: String,
    },
    /// Stop a VM.
    Stop {
        /// Name.
        name: String,
    },
    /// Delete a VM.
    Rm {
        /// Name.
        name: String,
    },
    /// Run a command inside a `netns` VM on a local host of this machine (as root), e.g.
    /// `kangaroo vm exec client -- ping -c 3 192.168.100.2`.
    Exec {
        /// Name.
        name: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Move a VM to another host.
    Migrate {
        /// Name.
        name: String,
        /// Destination host.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum AppCmd {
    /// Move every VM of an application to new hosts of another provider (packed for cost),
    /// live where the driver can, and release the hosts it leaves empty.
    Migrate {
        /// The application.
        name: String,
        /// Destination provider.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogCmd {
    /// List built-in catalogs.
    Ls,
    /// Show a catalog (built-in name or file).
    Show {
        /// Name or path.
        name: String,
    },
}

fn parse_provider(s: &str) -> Result<(String, String), String> {
    let (n, c) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=CATALOG"))?;
    Ok((n.to_owned(), c.to_owned()))
}

/// A client of the API.
struct Client {
    url: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(cli: &Cli) -> anyhow::Result<Client> {
        let token = match &cli.token {
            Some(t) => t.clone(),
            None => {
                let dir = cli
                    .data_dir
                    .clone()
                    .unwrap_or_else(server::default_data_dir);
                let p = dir.join(kangaroo_orchestrator::token::TOKEN_FILE);
                std::fs::read_to_string(&p)
                    .with_context(|| format!("reading the API token from {} (is `kangaroo serve` using this data directory? or pass --token)", p.display()))?
                    .trim()
                    .to_owned()
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            url: cli.url.trim_end_matches('/').to_owned(),
            token,
            agent,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.url, path);
        let auth = format!("Bearer {}", self.token);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut resp = resp.with_context(|| {
            format!(
                "cannot reach the Kangaroo API at {} (is `kangaroo serve` running?)",
                self.url
            )
        })?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            bail!(
                "{} {}: {msg}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
        }
        Ok(v)
    }
}

/// Until SIGINT or SIGTERM.
fn until_signalled() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    });
    Ok(())
}

fn local_agent(
    store: &str,
    host: &str,
    lease_secs: u64,
    locals: &[String],
    data_dir: &std::path::Path,
    settings: &server::LocalSettings,
) -> anyhow::Result<()> {
    use kangaroo_orchestrator::store::etcd::{EtcdStore, EtcdUrl};
    let url: EtcdUrl = store
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--store {e}"))?;
    kangaroo_orchestrator::model::Name::new(host)
        .map_err(|e| anyhow::anyhow!("--host {host:?}: {e}"))?;
    if locals.is_empty() {
        bail!("--driver local needs the local providers (--local-provider NAME, in the controllers' order)");
    }
    let realizer = std::sync::Arc::new(server::local_realizer(
        locals.to_vec(),
        data_dir,
        settings,
        true,
    )?);
    let e = EtcdStore::connect(&url)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = until_signalled();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    eprintln!("kangaroo agent {host}: driving local host {host} from {url} (lease {lease_secs} s)");
    kangaroo_orchestrator::agent::run_local_agent(
        &e,
        host,
        realizer,
        std::time::Duration::from_secs(lease_secs),
        stop,
    )
}

fn agent(store: &str, host: &str, lease_secs: u64, driver: &str) -> anyhow::Result<()> {
    use kangaroo_orchestrator::store::etcd::{EtcdStore, EtcdUrl};
    if driver != "sim" {
        bail!("--driver {driver:?}: use \"local\" (a host of a local provider) or \"sim\"");
    }
    let url: EtcdUrl = store
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--store {e}"))?;
    kangaroo_orchestrator::model::Name::new(host)
        .map_err(|e| anyhow::anyhow!("--host {host:?}: {e}"))?;
    let e = EtcdStore::connect(&url)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = host.to_owned();
    e.run_agent(
        host.to_owned(),
        std::time::Duration::from_secs(lease_secs),
        std::sync::Arc::new(move |desired| {
            let names: Vec<String> = desired.keys().cloned().collect();
            eprintln!(
                "kangaroo agent {h}: {} VMs: {}",
                names.len(),
                names.join(" ")
            );
            names
        }),
        stop.clone(),
    );
    eprintln!("kangaroo agent {host}: running on {url} (lease {lease_secs} s)");
    until_signalled()?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

fn s(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

fn print_plan(p: &Plan, currency: &str) {
    let rows = p
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            vec![
                format!("{}", i + 1),
                h.instance_type.to_string(),
                format!("{:.4}", h.price_per_hour),
                format!(
                    "{}/{}",
                    format_vcpus(h.used.cpu_quarters),
                    format_vcpus(h.capacity.cpu_quarters)
                ),
                format!(
                    "{}/{}",
                    format_memory(h.used.memory_mib),
                    format_memory(h.capacity.memory_mib)
                ),
                h.vms
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table(&["host", "type", "$/h", "vcpu", "memory", "vms"], rows);
    println!();
    println!(
        "cost:                   {:.4} {currency}/h",
        p.cost_per_hour
    );
    println!(
        "one VM per instance:    {:.4} {currency}/h",
        p.baseline_cost_per_hour
    );
    println!(
        "saving:                 {:.4} {currency}/h ({:.1}%)",
        p.saving_per_hour, p.saving_percent
    );
    println!(
        "utilisation:            {:.1}% vCPU, {:.1}% memory",
        100.0 * p.cpu_utilisation,
        100.0 * p.memory_utilisation
    );
    for g in &p.split_groups {
        println!(
            "affinity group {} split over {} hosts: {}",
            g.group, g.parts, g.reason
        );
    }
    for u in &p.unplaced {
        println!("unplaced {}: {}", u.name, u.reason);
    }
}

fn read_workload(file: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("reading workload file {}", file.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let json_out = cli.json;
    let emit = |v: &Value, human: &dyn Fn(&Value)| {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    };
    match &cli.command {
        Command::Serve {
            listen,
            providers,
            vm_driver,
            switch_mode,
            guest_image,
            reconcile_secs,
            secure_tunnels,
            openstack_project,
            openstack_token_ttl,
            flavors,
            store,
            advertise,
            lease_secs,
            on_host_lost,
            local_agents,
            config: _,
        } => {
            let cfg = ServeConfig {
                on_host_lost: *on_host_lost,
                local_agents: *local_agents,
                store: store.clone(),
                advertise: advertise.clone(),
                lease: std::time::Duration::from_secs(*lease_secs),
                openstack: server::OpenStackSettings {
                    project: openstack_project.clone(),
                    token_ttl: std::time::Duration::from_secs(*openstack_token_ttl),
                    flavors: match flavors {
                        Some(f) => kangaroo_orchestrator::openstack::flavors::load_flavors(f)
                            .with_context(|| format!("--flavors {}", f.display()))?,
                        None => kangaroo_orchestrator::openstack::flavors::default_flavors(),
                    },
                },
                local: server::LocalSettings {
                    driver: vm_driver.clone(),
                    switch_mode: *switch_mode,
                    guest_image: guest_image.clone(),
                    reconcile_secs: *reconcile_secs,
                    secure: *secure_tunnels,
                },
                data_dir: cli
                    .data_dir
                    .clone()
                    .unwrap_or_else(server::default_data_dir),
                listen: *listen,
                providers: providers.clone(),
                options: PackOptions::default(),
            };
            let rt = tokio::runtime::Runtime::new()?;
            let dir = cfg.data_dir.clone();
            rt.block_on(server::serve(cfg, |addr| {
                eprintln!(
                    "kangaroo: serving the API on http://{addr} (state and token in {})",
                    dir.display()
                );
            }))
        }
        Command::GuestService { name, listen } => guest_service(name, *listen),
        Command::Agent {
            store,
            host,
            lease_secs,
            driver,
            local_providers,
            vm_driver,
            switch_mode,
            guest_image,
            secure_tunnels,
        } => match driver.as_str() {
            "local" => local_agent(
                store,
                host,
                *lease_secs,
                local_providers,
                &cli.data_dir
                    .clone()
                    .unwrap_or_else(server::default_data_dir),
                &server::LocalSettings {
                    driver: vm_driver.clone(),
                    switch_mode: *switch_mode,
                    guest_image: guest_image.clone(),
                    reconcile_secs: 0,
                    secure: *secure_tunnels,
                },
            ),
            _ => agent(store, host, *lease_secs, driver),
        },
        Command::Vm(VmCmd::Exec { name, command }) => {
            let dir = cli
                .data_dir
                .clone()
                .unwrap_or_else(server::default_data_dir);
            let ns = format!("{}-v-{name}", server::local_prefix(&dir));
            if !std::path::Path::new("/run/netns").join(&ns).exists() {
                bail!(
                    "VM {name} is not a netns VM on a local host of the server using {}",
                    dir.display()
                );
            }
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(command)
                .status()
                .context("running ip netns exec")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Command::Plan { file } => {
            let text = read_workload(file)?;
            let w = Workload::parse(&text)?;
            let c = Catalog::load(&w.catalog)?;
            if std::io::stderr().is_terminal() && w.vms.len() > 1000 {
                eprintln!("planning {} VMs on catalog {}…", w.vms.len(), c.name);
            }
            let p = packing::plan(&w.demands(), &c.instances, &w.options);
            emit(&serde_json::to_value(&p)?, &|_| print_plan(&p, &c.currency));
            Ok(())
        }
        Command::Catalog(CatalogCmd::Ls) => {
            let cats = Catalog::builtins()?;
            let v = serde_json::to_value(&cats)?;
            emit(&v, &|_| {
                table(
                    &["catalog", "provider", "region", "types"],
                    cats.iter()
                        .map(|c| {
                            vec![
                                c.name.clone(),
                                c.provider.clone(),
                                c.region.clone(),
                                c.instances.len().to_string(),
                            ]
                        })
                        .collect(),
                )
            });
            Ok(())
        }
        Command::Catalog(CatalogCmd::Show { name }) => {
            let c = Catalog::load(name)?;
            let v = serde_json::to_value(&c)?;
            emit(&v, &|_| {
                table(
                    &["type", "vcpus", "memory", "$/h"],
                    c.instances
                        .iter()
                        .map(|i| {
                            vec![
                                i.name.to_string(),
                                i.vcpus.to_string(),
                                format_memory(i.memory_mib),
                                format!("{}", i.price_per_hour),
                            ]
                        })
                        .collect(),
                )
            });
            Ok(())
        }
        cmd => {
            let c = Client::new(&cli)?;
            let vm_row = |v: &Value| {
                let q = v["cpu_quarters"]
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .unwrap_or(0);
                let m = v["memory_mib"].as_u64().unwrap_or(0);
                vec![
                    s(v, "/name"),
                    s(v, "/state"),
                    s(v, "/host"),
                    s(v, "/network"),
                    s(v, "/ip"),
                    format_vcpus(q),
                    format_memory(m),
                ]
            };
            let vm_headers = ["name", "state", "host", "network", "ip", "vcpus", "memory"];
            match cmd {
                Command::Apply { file } => {
                    let text = read_workload(file)?;
                    if std::io::stderr().is_terminal() {
                        eprintln!("applying {}…", file.display());
                    }
                    let v = c.call("POST", "/v1/plans/apply", Some(json!({ "workload": text })))?;
                    emit(&v, &|v| {
                        println!(
                            "rented {} hosts, created {} VMs ({} already existed)",
                            v["rented"].as_array().map_or(0, Vec::len),
                            v["created"].as_array().map_or(0, Vec::len),
                            v["existing"].as_array().map_or(0, Vec::len)
                        );
                        if let Ok(p) = serde_json::from_value::<PlanView>(v["plan"].clone()) {
                            println!(
                                "cost {:.4}/h, one VM per instance {:.4}/h, saving {:.1}%",
                                p.cost_per_hour, p.baseline_cost_per_hour, p.saving_percent
                            );
                        }
                    });
                }
                Command::App(AppCmd::Migrate { name, to }) => {
                    if std::io::stderr().is_terminal() {
                        eprintln!("moving application {name} to {to}…");
                    }
                    let v = c.call(
                        "POST",
                        &format!("/v1/apps/{name}/migrate"),
                        Some(json!({ "to": to })),
                    )?;
                    emit(&v, &|v| {
                        let n =
                            |x: &Value, p: &str| x.pointer(p).and_then(Value::as_u64).unwrap_or(0);
                        let rows = v["moved"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|m| {
                                        let mig = &m["migration"];
                                        vec![
                                            s(m, "/vm"),
                                            s(m, "/from"),
                                            s(m, "/to"),
                                            match mig.get("live").and_then(Value::as_bool) {
                                                Some(true) => "live".to_owned(),
                                                Some(false) => "restarted".to_owned(),
                                                None => "-".to_owned(),
                                            },
                                            format!("{}", n(mig, "/stats/total_ms")),
                                            format!("{}", n(mig, "/stats/downtime_ms")),
                                        ]
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        table(&["vm", "from", "to", "move", "ms", "paused ms"], rows);
                        let list = |p: &str| {
                            v.pointer(p)
                                .and_then(Value::as_array)
                                .map(|a| {
                                    a.iter()
                                        .filter_map(Value::as_str)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                })
                                .unwrap_or_default()
                        };
                        println!("rented: {}", list("/rented"));
                        println!("released: {}", list("/released"));
                        println!(
                            "cost: {:.4}/h -> {:.4}/h; took {} ms",
                            v["cost_per_hour_before"].as_f64().unwrap_or(0.0),
                            v["cost_per_hour_after"].as_f64().unwrap_or(0.0),
                            n(v, "/total_ms")
                        );
                    });
                }
                Command::Reconcile => {
                    let v = c.call("POST", "/v1/reconcile", None)?;
                    emit(&v, &|v| {
                        let lines = |p: &str| {
                            v.pointer(p)
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default()
                        };
                        for a in lines("/adopted") {
                            println!("adopted: VM {} on {}", s(&a, "/0"), s(&a, "/1"));
                        }
                        for r in lines("/repaired") {
                            println!("repaired: {}", r.as_str().unwrap_or(""));
                        }
                        for e in lines("/errors") {
                            println!("error: {}", e.as_str().unwrap_or(""));
                        }
                        if lines("/adopted").is_empty()
                            && lines("/repaired").is_empty()
                            && lines("/errors").is_empty()
                        {
                            println!("everything matches the state");
                        }
                    });
                }
                Command::Consolidate { .. } => {
                    let v = c.call("GET", "/v1/consolidation", None)?;
                    emit(&v, &|v| {
                        let rows = v["migrations"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|m| vec![s(m, "/vm"), s(m, "/from"), s(m, "/to")])
                            .collect();
                        table(&["vm", "from", "to"], rows);
                        println!(
                            "\nreleases {} hosts: {:.4}/h -> {:.4}/h",
                            v["released"].as_array().map_or(0, Vec::len),
                            v["cost_before"].as_f64().unwrap_or(0.0),
                            v["cost_after"].as_f64().unwrap_or(0.0)
                        );
                    });
                }
                Command::Host(HostCmd::Ls) => {
                    let v = c.call("GET", "/v1/hosts", None)?;
                    emit(&v, &|v| {
                        let rows = v
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|h| {
                                vec![
                                    s(h, "/name"),
                                    s(h, "/provider"),
                                    s(h, "/instance_type/name"),
                                    s(h, "/state"),
                                    s(h, "/instance_type/price_per_hour"),
                                ]
                            })
                            .collect();
                        table(&["name", "provider", "type", "state", "$/h"], rows);
                    });
                }
                Command::Host(HostCmd::Add {
                    instance_type,
                    name,
                    provider,
                }) => {
                    let v = c.call("POST", "/v1/hosts", Some(json!({ "instance_type": instance_type, "name": name, "provider": provider })))?;
                    emit(&v, &|v| {
                        println!("rented {} ({})", s(v, "/name"), s(v, "/instance_type/name"))
                    });
                }
                Command::Host(HostCmd::Tunnels { name }) => {
                    let v = c.call("GET", &format!("/v1/hosts/{name}/tunnels"), None)?;
                    emit(&v, &|v| {
                        let rows = v
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|t| {
                                [
                                    "/peer",
                                    "/address",
                                    "/encryption",
                                    "/path",
                                    "/rtt_ms",
                                    "/tx_packets",
                                    "/rx_packets",
                                ]
                                .iter()
                                .map(|p| s(t, p))
                                .collect()
                            })
                            .collect();
                        table(
                            &[
                                "peer",
                                "address",
                                "encryption",
                                "path",
                                "rtt ms",
                                "tx",
                                "rx",
                            ],
                            rows,
                        );
                    });
                }
                Command::Host(HostCmd::Rm { name }) => {
                    c.call("DELETE", &format!("/v1/hosts/{name}"), None)?;
                    emit(&json!({ "released": name }), &|_| {
                        println!("released {name}")
                    });
                }
                Command::Network(NetworkCmd::Ls) => {
                    let v = c.call("GET", "/v1/networks", None)?;
                    emit(&v, &|v| {
                        let rows = v
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|n| {
                                vec![
                                    s(n, "/name"),
                                    s(n, "/vni"),
                                    format!("{}/{}", s(n, "/subnet"), s(n, "/prefix")),
                                ]
                            })
                            .collect();
                        table(&["name", "vni", "subnet"], rows);
                    });
                }
                Command::Network(NetworkCmd::Create { name, vni, subnet }) => {
                    let v = c.call(
                        "POST",
                        "/v1/networks",
                        Some(json!({ "name": name, "vni": vni, "subnet": subnet })),
                    )?;
                    emit(&v, &|v| {
                        println!("created network {} (VNI {})", s(v, "/name"), s(v, "/vni"))
                    });
                }
                Command::Network(NetworkCmd::Rm { name }) => {
                    c.call("DELETE", &format!("/v1/networks/{name}"), None)?;
                    emit(&json!({ "deleted": name }), &|_| {
                        println!("deleted network {name}")
                    });
                }
                Command::Vm(VmCmd::Ls) => {
                    let v = c.call("GET", "/v1/vms", None)?;
                    emit(&v, &|v| {
                        table(
                            &vm_headers,
                            v.as_array()
                                .cloned()
                                .unwrap_or_default()
                                .iter()
                                .map(vm_row)
                                .collect(),
                        )
                    });
                }
                Command::Vm(VmCmd::Create {
                    name,
                    vcpus,
                    memory,
                    network,
                    affinity,
                    anti_affinity,
                    image,
                    driver,
                    app,
                    host,
                    provider,
                }) => {
                    let body = json!({ "name": name, "vcpus": vcpus, "memory": memory, "network": network, "affinity": affinity, "anti_affinity": anti_affinity, "image": image, "driver": driver, "app": app, "host": host, "provider": provider });
                    let v = c.call("POST", "/v1/vms", Some(body))?;
                    emit(&v, &|v| {
                        println!(
                            "created {} on {} with {} ({})",
                            s(v, "/name"),
                            s(v, "/host"),
                            s(v, "/ip"),
                            s(v, "/mac")
                        )
                    });
                }
                Command::Vm(VmCmd::Show { name }) => {
                    let v = c.call("GET", &format!("/v1/vms/{name}"), None)?;
                    emit(&v, &|v| table(&vm_headers, vec![vm_row(v)]));
                }
                Command::Vm(VmCmd::Start { name }) | Command::Vm(VmCmd::Stop { name }) => {
                    let action = if matches!(cmd, Command::Vm(VmCmd::Start { .. })) {
                        "start"
                    } else {
                        "stop"
                    };
                    let v = c.call("POST", &format!("/v1/vms/{name}/{action}"), None)?;
                    emit(&v, &|v| println!("{} is {}", s(v, "/name"), s(v, "/state")));
                }
                Command::Vm(VmCmd::Rm { name }) => {
                    c.call("DELETE", &format!("/v1/vms/{name}"), None)?;
                    emit(&json!({ "deleted": name }), &|_| println!("deleted {name}"));
                }
                Command::Vm(VmCmd::Migrate { name, to }) => {
                    let v = c.call(
                        "POST",
                        &format!("/v1/vms/{name}/migrate"),
                        Some(json!({ "to": to })),
                    )?;
                    emit(&v, &|v| {
                        println!("{} is now on {}", s(v, "/name"), s(v, "/host"));
                        if let Some(m) = v.get("migration").filter(|m| !m.is_null()) {
                            let n = |p: &str| m.pointer(p).and_then(Value::as_u64).unwrap_or(0);
                            if m.get("live").and_then(Value::as_bool) == Some(true) {
                                println!(
                                    "live migration: {} ms, VM paused {} ms, {} MiB of memory sent",
                                    n("/stats/total_ms"),
                                    n("/stats/downtime_ms"),
                                    n("/stats/transferred_bytes") >> 20
                                );
                            } else {
                                println!(
                                    "moved by stop-and-start in {} ms (the driver cannot migrate live)",
                                    n("/stats/total_ms")
                                );
                            }
                        }
                    });
                }
                Command::Billing => {
                    let v = c.call("GET", "/v1/billing", None)?;
                    emit(&v, &|v| {
                        println!(
                            "hosts now:             {:.4}/h",
                            v["cost_per_hour"].as_f64().unwrap_or(0.0)
                        );
                        println!(
                            "one VM per instance:   {:.4}/h",
                            v["baseline_cost_per_hour"].as_f64().unwrap_or(0.0)
                        );
                        println!(
                            "accrued:               {:.4} over {} s",
                            v["accrued"].as_f64().unwrap_or(0.0),
                            s(v, "/clock_secs")
                        );
                    });
                }
                Command::Controller => {
                    let v = c.call("GET", "/v1/controller", None)?;
                    emit(&v, &|v| {
                        println!("role:     {}", s(v, "/role"));
                        if v.get("leader").is_some() {
                            println!("leader:   {}", s(v, "/leader"));
                        }
                        println!("store:    {}", s(v, "/store"));
                        println!("revision: {}", s(v, "/revision"));
                    });
                }
                Command::Serve { .. }
                | Command::Agent { .. }
                | Command::GuestService { .. }
                | Command::Vm(VmCmd::Exec { .. })
                | Command::Plan { .. }
                | Command::Catalog(_) => {}
            }
            Ok(())
        }
    }
}

#[derive(serde::Deserialize)]
struct PlanView {
    cost_per_hour: f64,
    baseline_cost_per_hour: f64,
    saving_percent: f64,
}

/// `kangaroo serve --config FILE`: the file's settings become the flags the command line does
/// not give.
fn with_serve_config(args: Vec<String>) -> anyhow::Result<Vec<String>> {
    use clap::CommandFactory;
    let Some(at) = args.iter().position(|a| a == "serve") else {
        return Ok(args);
    };
    let file = args[at..].iter().enumerate().find_map(|(i, a)| {
        if a == "--config" {
            args.get(at + i + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_owned)
        }
    });
    let Some(file) = file else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&file).with_context(|| format!("--config {file}"))?;
    let cmd = Cli::command();
    let serve = cmd
        .find_subcommand("serve")
        .ok_or_else(|| anyhow::anyhow!("no serve command"))?;
    let flags: Vec<(String, bool)> = serve
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_owned();
            Some((long, !a.get_action().takes_values()))
        })
        .collect();
    expand_config(args, at, &file, &text, &flags).map_err(|e| anyhow::anyhow!(e))
}

/// Appends to `args` (whose `serve` is at `at`) the settings of the TOML `text` (of `file`)
/// for `flags` (long name, whether it is a switch taking no value) the command line lacks.
fn expand_config(
    mut args: Vec<String>,
    at: usize,
    file: &str,
    text: &str,
    flags: &[(String, bool)],
) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("--config {file}: {e}"))?;
    let given = |flag: &str| {
        args[at..]
            .iter()
            .any(|a| a == &format!("--{flag}") || a.starts_with(&format!("--{flag}=")))
    };
    let mut extra = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        let Some((_, switch)) = flags.iter().find(|(f, _)| *f == flag && f != "config") else {
            return Err(format!(
                "--config {file}: unknown key {key:?} (the keys are serve's flags: {})",
                flags
                    .iter()
                    .filter(|(f, _)| f != "config" && f != "help")
                    .map(|(f, _)| f.replace('-', "_"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if given(&flag) {
            continue;
        }
        let scalar = |v: &toml::Value| -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                _ => Err(format!(
                    "--config {file}: {key} must be a string or a number, not {}",
                    v.type_str()
                )),
            }
        };
        match (value, switch) {
            (toml::Value::Boolean(true), true) => extra.push(format!("--{flag}")),
            (toml::Value::Boolean(false), true) => {}
            (_, true) => return Err(format!("--config {file}: {key} must be true or false")),
            (toml::Value::Array(items), false) => {
                for v in items {
                    extra.push(format!("--{flag}"));
                    extra.push(scalar(v)?);
                }
            }
            (v, false) => {
                extra.push(format!("--{flag}"));
                extra.push(scalar(v)?);
            }
        }
    }
    args.extend(extra);
    Ok(args)
}

fn main() -> ExitCode {
    let args = match with_serve_config(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kangaroo: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kangaroo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `kangaroo guest-service`: a tiny HTTP responder, one request per connection.
fn guest_service(name: &str, listen: SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("guest-service: binding {listen}"))?;
    let boot: String = (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let started = std::time::Instant::now();
    let mut hits: u64 = 0;
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let mut buf = [0u8; 2048];
        let n = c.read(&mut buf).unwrap_or(0);
        let req = String::from_utf8_lossy(&buf[..n]);
        let path = req.split_whitespace().nth(1).unwrap_or("/");
        let body = if path == "/cgi-bin/hits" {
            hits += 1;
            format!("name={name} boot={boot} hits={hits}\n")
        } else {
            format!(
                "name={name} boot={boot} counter={}\n",
                started.elapsed().as_millis() / 100
            )
        };
        let _ = write!(
            c,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn flags() -> Vec<(String, bool)> {
        [
            ("store", false),
            ("lease-secs", false),
            ("local-agents", true),
            ("provider", false),
            ("config", false),
        ]
        .iter()
        .map(|(f, s)| ((*f).to_owned(), *s))
        .collect()
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_serve_config_file_gives_the_flags_the_command_line_lacks() {
        let text = "store = \"etcd://10.0.0.5:2379\"\nlease_secs = 3\nlocal_agents = true\nprovider = [\"a=local:ec2-2026\", \"b=ec2-2014\"]\n";
        let got = expand_config(
            argv(&[
                "kangaroo",
                "serve",
                "--config",
                "f.toml",
                "--lease-secs",
                "9",
            ]),
            1,
            "f.toml",
            text,
            &flags(),
        )
        .unwrap();
        let cli = Cli::try_parse_from(&got).unwrap();
        let Command::Serve {
            store,
            lease_secs,
            local_agents,
            providers,
            ..
        } = cli.command
        else {
            panic!("{got:?}")
        };
        let server::StoreChoice::Etcd(url) = store else {
            panic!("{got:?}")
        };
        assert_eq!(url.to_string(), "etcd://10.0.0.5:2379/kangaroo");
        assert_eq!(lease_secs, 9, "the command line wins");
        assert!(local_agents);
        assert_eq!(providers.len(), 2, "{providers:?}");
    }

    #[test]
    fn a_serve_config_file_with_a_bad_key_or_value_is_rejected_by_name() {
        let bad = |text: &str| {
            expand_config(argv(&["kangaroo", "serve"]), 1, "f.toml", text, &flags()).unwrap_err()
        };
        let e = bad("stor = \"x\"\n");
        assert!(
            e.contains("f.toml") && e.contains("\"stor\"") && e.contains("store"),
            "{e}"
        );
        let e = bad("local_agents = \"yes\"\n");
        assert!(e.contains("local_agents must be true or false"), "{e}");
        let e = bad("store = { a = 1 }\n");
        assert!(
            e.contains("store must be a string or a number, not table"),
            "{e}"
        );
        let e = bad("store = \n");
        assert!(e.starts_with("--config f.toml:"), "{e}");
    }
}
