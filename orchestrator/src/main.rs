//! `kangaroo`: the orchestrator's server and command-line client.
//!
//! Exit codes: 0 success, 1 the operation failed (the server's message is printed), 2 bad
//! command-line usage.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cli::{daemons, offline, tenant, Output};
use kangaroo_control::Mode;
use kangaroo_orchestrator::driver::VmDriverKind;
use kangaroo_orchestrator::infra::local::SecurePolicy;
use kangaroo_orchestrator::packing::PackOptions;
use kangaroo_orchestrator::server::{self, LocalSettings, ServeConfig};
use kangaroo_orchestrator::service::{HostLostPolicy, HostRequest, NetworkRequest, VmRequest};

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
    /// A file holding the API token (default: the data directory's). The environment
    /// variable KANGAROO_TOKEN gives the token itself; it is not taken on the command line,
    /// where every user of the machine could read it in the process list.
    #[arg(long, global = true, env = "KANGAROO_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The CA certificate an `https://` API is checked against (default: the data
    /// directory's `tls/ca.pem`, which `kangaroo serve` makes).
    #[arg(long, global = true, env = "KANGAROO_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Refused: see --token-file.
    #[arg(long, global = true, hide = true)]
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
        #[command(flatten)]
        local: LocalFlags,
        /// Seconds between reconciler passes over local hosts (0: start-up and on request only).
        #[arg(long, default_value_t = 10)]
        reconcile_secs: u64,
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
        on_host_lost: HostLostPolicy,
        /// Give every local host its own `kangaroo agent` (etcd store), started when the host
        /// is rented: the agent drives the host's switch and VMs, the controllers rent hosts,
        /// run migrations and settle what crosses hosts. Without it the leader drives every
        /// local host itself.
        #[arg(long, env = "KANGAROO_LOCAL_AGENTS")]
        local_agents: bool,
        /// API connections open at once (lowered to what the open-file limit leaves room
        /// for); further clients wait until one closes.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_connections: u64,
        /// Seconds a client has to send a request's headers; idle connections close after it.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        header_timeout_secs: u64,
        /// Serve the API's plain HTTP on an address other than loopback (the bearer token then
        /// crosses the network in clear). Without it such an address gets HTTPS, with a
        /// certificate from the controller's own CA (`DATA_DIR/tls/ca.pem`).
        #[arg(long)]
        insecure_plain_http: bool,
        /// HTTPS on loopback too (elsewhere it is the default).
        #[arg(long)]
        tls: bool,
        /// Another name or address the API is reached at, for its certificate (repeatable;
        /// the listening and advertised addresses, loopback and the host name are in it).
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
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
        /// Where the state lives: etcd://HOST:PORT[/PREFIX] (an agent that reads the store
        /// itself; or --controller).
        #[arg(
            long,
            env = "KANGAROO_STORE",
            required_unless_present = "controller",
            conflicts_with = "controller"
        )]
        store: Option<String>,
        /// The controller's API (an agent that talks only to the API; `--driver sim`): it
        /// joins with --join-token-file the first time and keeps its credential in the data
        /// directory.
        #[arg(long, env = "KANGAROO_CONTROLLER")]
        controller: Option<String>,
        /// A file holding the join token (`kangaroo host join-token HOST` on the controller);
        /// needed until the agent has a credential.
        #[arg(long, env = "KANGAROO_JOIN_TOKEN_FILE")]
        join_token_file: Option<PathBuf>,
        /// The host this agent is for.
        #[arg(long)]
        host: String,
        /// Seconds of the heartbeat lease: the host is lost this long after the agent stops.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
        lease_secs: u64,
        /// How the host is driven.
        #[arg(long, value_enum, default_value_t = AgentDriver::Sim)]
        driver: AgentDriver,
        /// A local provider, in the order the controllers name them (repeatable; `local`).
        #[arg(long = "local-provider")]
        local_providers: Vec<String>,
        /// How the host is run (`local`): the same as the controllers'.
        #[command(flatten)]
        local: LocalFlags,
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
    /// Print a join token with which the agent of host NAME joins this controller (made from
    /// the data directory's API token and CA, on the controller's machine; nothing is stored).
    JoinToken {
        /// Host name.
        name: String,
        /// Seconds the token is valid.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(60..=604_800))]
        ttl_secs: u64,
    },
    /// Revoke the credential of host NAME's agent: it is refused from then on.
    Revoke {
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
        /// Nested-VM driver on local hosts (default: the server's).
        #[arg(long, value_enum)]
        driver: Option<VmDriverKind>,
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

/// How local hosts are run: the flags `serve` (for every local host) and `agent --driver
/// local` (for its one host) share, and must agree on.
#[derive(Debug, clap::Args)]
struct LocalFlags {
    /// Nested-VM driver on local hosts: `qemu` (real VMs, live migration) or `netns` (a
    /// namespace and a process; moves restart it).
    #[arg(long, value_enum, default_value_t = VmDriverKind::Netns)]
    vm_driver: VmDriverKind,
    /// Datapath mode of the local hosts' switches.
    #[arg(long, value_enum, default_value_t = kangaroo_control::mode::DEFAULT_MODE)]
    switch_mode: Mode,
    /// Guest image directory of the `qemu` driver (scripts/build-guest-image.sh builds it).
    #[arg(
        long,
        env = "KANGAROO_GUEST_DIR",
        default_value = "/var/cache/kangaroo/guest"
    )]
    guest_image: PathBuf,
    /// Which tunnels between local hosts are encrypted and authenticated (secure tunnels, the
    /// WireGuard protocol): `between-providers`, `always` or `off` (plain VXLAN).
    #[arg(long, value_enum, default_value_t = SecurePolicy::BetweenProviders)]
    secure_tunnels: SecurePolicy,
}

impl LocalFlags {
    /// The settings, with reconciler passes every `reconcile_secs` (0: none on a timer).
    fn settings(self, reconcile_secs: u64) -> LocalSettings {
        LocalSettings {
            driver: self.vm_driver,
            switch_mode: self.switch_mode,
            guest_image: self.guest_image,
            reconcile_secs,
            secure: self.secure_tunnels,
        }
    }
}

/// How `kangaroo agent` drives its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AgentDriver {
    /// A host of a local provider: its switch, peers, FDB entries and VMs.
    Local,
    /// A simulated host: holds the lease and logs what is assigned (scale tests).
    Sim,
}

fn parse_provider(s: &str) -> Result<(String, String), String> {
    let (n, c) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=CATALOG"))?;
    Ok((n.to_owned(), c.to_owned()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Output { json: cli.json };
    let data_dir = cli::data_dir(cli.data_dir.as_ref());
    anyhow::ensure!(
        cli.token.is_none(),
        "--token would show the API token to every user of this machine (in the process list): \
         set KANGAROO_TOKEN or use --token-file FILE"
    );
    let env_token = std::env::var("KANGAROO_TOKEN").ok();
    let token_file = cli.token_file.clone();
    let ca_file = cli.ca_file.clone();
    let api = || {
        tenant::connect(
            &cli.url,
            env_token.as_deref(),
            token_file.as_deref(),
            ca_file.as_deref(),
            &data_dir,
        )
    };
    match cli.command {
        Command::Serve {
            listen,
            providers,
            local,
            reconcile_secs,
            openstack_project,
            openstack_token_ttl,
            flavors,
            store,
            advertise,
            lease_secs,
            on_host_lost,
            local_agents,
            max_connections,
            header_timeout_secs,
            insecure_plain_http,
            tls,
            tls_names,
            config: _,
        } => daemons::serve(ServeConfig {
            http: kangaroo_orchestrator::http::HttpLimits {
                max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
                header_timeout: std::time::Duration::from_secs(header_timeout_secs),
            },
            plain_http_off_loopback: insecure_plain_http,
            tls_on_loopback: tls,
            tls_names,
            on_host_lost,
            local_agents,
            store,
            advertise,
            lease: std::time::Duration::from_secs(lease_secs),
            openstack: server::OpenStackSettings {
                project: openstack_project,
                token_ttl: std::time::Duration::from_secs(openstack_token_ttl),
                flavors: match flavors {
                    Some(f) => kangaroo_orchestrator::openstack::flavors::load_flavors(&f)
                        .with_context(|| format!("--flavors {}", f.display()))?,
                    None => kangaroo_orchestrator::openstack::flavors::default_flavors(),
                },
            },
            local: local.settings(reconcile_secs),
            data_dir,
            listen,
            providers,
            options: PackOptions::default(),
        }),
        Command::GuestService { name, listen } => daemons::guest_service(&name, listen),
        Command::Agent {
            controller: Some(url),
            host,
            join_token_file,
            driver: AgentDriver::Sim,
            ..
        } => daemons::api_agent(&url, &host, join_token_file.as_deref(), &data_dir),
        Command::Agent {
            controller: Some(_),
            ..
        } => anyhow::bail!("--controller: only --driver sim talks to the API yet; --driver local reads the store (--store)"),
        Command::Agent {
            store: Some(store),
            host,
            lease_secs,
            driver: AgentDriver::Local,
            local_providers,
            local,
            ..
        } => daemons::local_agent(
            &store,
            &host,
            lease_secs,
            &local_providers,
            &data_dir,
            &local.settings(0),
        ),
        Command::Agent {
            store: Some(store),
            host,
            lease_secs,
            driver: AgentDriver::Sim,
            ..
        } => daemons::sim_agent(&store, &host, lease_secs),
        Command::Agent { .. } => anyhow::bail!("kangaroo agent: --store or --controller"),
        Command::Host(HostCmd::JoinToken { name, ttl_secs }) => {
            offline::join_token(out, &data_dir, &name, ttl_secs)
        }
        Command::Host(HostCmd::Revoke { name }) => tenant::host_revoke(&api()?, out, &name),
        Command::Vm(VmCmd::Exec { name, command }) => daemons::vm_exec(&data_dir, &name, &command),
        Command::Plan { file } => offline::plan(out, &file),
        Command::Catalog(CatalogCmd::Ls) => offline::catalog_ls(out),
        Command::Catalog(CatalogCmd::Show { name }) => offline::catalog_show(out, &name),
        Command::Apply { file } => tenant::apply(&api()?, out, &file),
        Command::App(AppCmd::Migrate { name, to }) => tenant::app_migrate(&api()?, out, &name, &to),
        Command::Reconcile => tenant::reconcile(&api()?, out),
        Command::Consolidate { .. } => tenant::consolidate(&api()?, out),
        Command::Host(HostCmd::Ls) => tenant::host_ls(&api()?, out),
        Command::Host(HostCmd::Add {
            instance_type,
            name,
            provider,
        }) => tenant::host_add(
            &api()?,
            out,
            &HostRequest {
                name,
                provider,
                instance_type,
            },
        ),
        Command::Host(HostCmd::Tunnels { name }) => tenant::host_tunnels(&api()?, out, &name),
        Command::Host(HostCmd::Rm { name }) => tenant::host_rm(&api()?, out, &name),
        Command::Network(NetworkCmd::Ls) => tenant::network_ls(&api()?, out),
        Command::Network(NetworkCmd::Create { name, vni, subnet }) => {
            tenant::network_create(&api()?, out, &NetworkRequest { name, vni, subnet })
        }
        Command::Network(NetworkCmd::Rm { name }) => tenant::network_rm(&api()?, out, &name),
        Command::Vm(VmCmd::Ls) => tenant::vm_ls(&api()?, out),
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
        }) => tenant::vm_create(
            &api()?,
            out,
            &VmRequest {
                name,
                vcpus,
                memory,
                network,
                image,
                driver,
                app,
                affinity,
                anti_affinity,
                host,
                provider,
            },
        ),
        Command::Vm(VmCmd::Show { name }) => tenant::vm_show(&api()?, out, &name),
        Command::Vm(VmCmd::Start { name }) => tenant::vm_start_stop(&api()?, out, &name, true),
        Command::Vm(VmCmd::Stop { name }) => tenant::vm_start_stop(&api()?, out, &name, false),
        Command::Vm(VmCmd::Rm { name }) => tenant::vm_rm(&api()?, out, &name),
        Command::Vm(VmCmd::Migrate { name, to }) => tenant::vm_migrate(&api()?, out, &name, &to),
        Command::Billing => tenant::billing(&api()?, out),
        Command::Controller => tenant::controller(&api()?, out),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_token_is_never_taken_from_the_command_line() {
        let cli = Cli::try_parse_from(["kangaroo", "--token", "s3cret", "vm", "ls"]).unwrap();
        let e = run(cli).unwrap_err().to_string();
        assert!(
            e.contains("process list")
                && e.contains("KANGAROO_TOKEN")
                && e.contains("--token-file"),
            "{e}"
        );
        // --token-file is read; a missing one is named.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t");
        std::fs::write(&f, "from-the-file\n").unwrap();
        assert!(cli::tenant::connect("http://127.0.0.1:1", None, Some(&f), None, d.path()).is_ok());
        let missing = d.path().join("none");
        let e = cli::tenant::connect("http://127.0.0.1:1", None, Some(&missing), None, d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--token-file") && e.contains("none"), "{e}");
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
