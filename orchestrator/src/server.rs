//! `kangaroo serve`: the data directory (state database, API token), and the HTTP server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::driver::netns::NetnsDriver;
use crate::driver::qemu::{QemuConfig, QemuDriver};
use crate::driver::{VmDriver, VmDriverKind};
use crate::infra::local::{LocalCloud, LocalConfig};
use crate::infra::realize::{AgentLaunch, Drive, Realizer};
use crate::packing::PackOptions;
use crate::service::Service;
use crate::store::etcd::{EtcdStore, EtcdUrl};
use crate::store::{RedbStore, Store};

/// The default data directory: `$XDG_STATE_HOME/kangaroo`, else `/var/lib/kangaroo` for root,
/// else `~/.local/state/kangaroo`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("kangaroo");
    }
    let root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::env::var_os("HOME").is_none_or(|h| h == "/root");
    if root {
        return PathBuf::from("/var/lib/kangaroo");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".kangaroo"),
        |h| PathBuf::from(h).join(".local/state/kangaroo"),
    )
}

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded database in the data directory (one controller).
    Embedded,
    /// etcd (several controllers, one elected leader).
    Etcd(EtcdUrl),
}

impl std::str::FromStr for StoreChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<StoreChoice, String> {
        if s == "embedded" {
            return Ok(StoreChoice::Embedded);
        }
        if s.starts_with("etcd://") {
            return s.parse().map(StoreChoice::Etcd);
        }
        Err(format!(
            "{s:?}: use \"embedded\" or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
        ))
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where state and the token live.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Providers: (name, catalog name or path).
    pub providers: Vec<(String, String)>,
    /// Packing options.
    pub options: PackOptions,
    /// How `local` providers' hosts and VMs are made.
    pub local: LocalSettings,
    /// The OpenStack-compatible API's tenant and tokens.
    pub openstack: OpenStackSettings,
    /// Where the state lives.
    pub store: StoreChoice,
    /// The API address other controllers forward writes to when this one leads (etcd store;
    /// default `http://` and the listening address).
    pub advertise: Option<String>,
    /// The leader's lease (etcd store): a standby takes over this long after the leader died.
    pub lease: std::time::Duration,
    /// What the leader does with the VMs of a host whose agent's lease expired (etcd store).
    pub on_host_lost: crate::service::HostLostPolicy,
    /// Every local host gets its own `kangaroo agent` (etcd store), which drives its switch
    /// and VMs; otherwise the leader drives them itself.
    pub local_agents: bool,
    /// Connections and header deadline of the API's HTTP server.
    pub http: crate::http::HttpLimits,
    /// Serve plain HTTP on an address other than loopback (the bearer token then crosses the
    /// network in clear); without it such an address gets HTTPS.
    pub plain_http_off_loopback: bool,
    /// HTTPS on loopback too (off loopback it is the default).
    pub tls_on_loopback: bool,
    /// More names and addresses for the serving certificate (besides the listening and
    /// advertised addresses, loopback, `localhost` and the host name).
    pub tls_names: Vec<String>,
}

/// Settings of the OpenStack-compatible API (its password is the API token).
#[derive(Debug, Clone)]
pub struct OpenStackSettings {
    /// The tenant's project and user name.
    pub project: String,
    /// How long a token is valid.
    pub token_ttl: std::time::Duration,
    /// The flavors offered (the defaults, or `--flavors FILE`).
    pub flavors: Vec<crate::openstack::flavors::Flavor>,
}

impl Default for OpenStackSettings {
    fn default() -> OpenStackSettings {
        OpenStackSettings {
            project: "kangaroo".to_owned(),
            token_ttl: std::time::Duration::from_secs(3600),
            flavors: crate::openstack::flavors::default_flavors(),
        }
    }
}

/// Settings of the `local` providers.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// The default nested-VM driver.
    pub driver: crate::driver::VmDriverKind,
    /// The switches' datapath mode.
    pub switch_mode: kangaroo_control::Mode,
    /// The guest image directory (the `qemu` driver).
    pub guest_image: PathBuf,
    /// Seconds between reconciler passes (0: only at start-up and on request).
    pub reconcile_secs: u64,
    /// Which tunnels between hosts are encrypted.
    pub secure: crate::infra::local::SecurePolicy,
}

impl Default for LocalSettings {
    fn default() -> LocalSettings {
        LocalSettings {
            driver: crate::driver::VmDriverKind::Netns,
            switch_mode: kangaroo_control::mode::DEFAULT_MODE,
            guest_image: crate::driver::qemu::QemuConfig::default().image_dir,
            reconcile_secs: 10,
            secure: crate::infra::local::SecurePolicy::default(),
        }
    }
}

/// The prefix of every namespace the local providers of the server with `data_dir` make.
pub fn local_prefix(data_dir: &Path) -> String {
    let abs = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!(
        "k{:07x}",
        crate::sys::short_hash(&abs.display().to_string()) & 0x0fff_ffff
    )
}

/// The realizer for the local providers of `service`, with names derived from `data_dir` (so
/// one data directory always finds its own namespaces).
///
/// # Errors
/// A bad driver name, a missing guest image, or an unusable state directory.
pub fn realizer(
    service: &Service,
    data_dir: &Path,
    settings: &LocalSettings,
) -> anyhow::Result<Option<Arc<Realizer>>> {
    let locals = service.local_providers();
    if locals.is_empty() {
        return Ok(None);
    }
    local_realizer(locals, data_dir, settings, false).map(|r| Some(Arc::new(r)))
}

/// The realizer of the local providers `locals` (in the order the servers name them: the
/// index picks the underlay subnet) for the data directory `data_dir`; `agent` for a host's
/// agent (it does not run the rendezvous).
///
/// # Errors
/// As [`realizer`].
pub fn local_realizer(
    locals: Vec<String>,
    data_dir: &Path,
    settings: &LocalSettings,
    agent: bool,
) -> anyhow::Result<Realizer> {
    let prefix = local_prefix(data_dir);
    let exe = std::env::current_exe().context("locating the kangaroo binary")?;
    let mut cloud = LocalCloud::new(LocalConfig {
        prefix: prefix.clone(),
        state_dir: data_dir.join("local"),
        switch_bin: LocalCloud::find_switch_bin(&exe),
        switch_mode: settings.switch_mode,
        secure: settings.secure,
    })?;
    if agent {
        cloud = cloud.for_agent();
    }
    let netns: Arc<dyn VmDriver> = Arc::new(NetnsDriver {
        prefix,
        service_bin: exe,
    });
    let qemu = QemuDriver::new(QemuConfig {
        image_dir: settings.guest_image.clone(),
        ..QemuConfig::default()
    });
    // The default driver first; `qemu` is offered as a second driver when its image exists.
    let drivers: Vec<Arc<dyn VmDriver>> = match (settings.driver, qemu) {
        (VmDriverKind::Qemu, Ok(q)) => vec![Arc::new(q), netns],
        (VmDriverKind::Qemu, Err(e)) => {
            return Err(anyhow::Error::new(e).context("--vm-driver qemu"))
        }
        (VmDriverKind::Netns, Ok(q)) => vec![netns, Arc::new(q)],
        (VmDriverKind::Netns, Err(_)) => vec![netns],
    };
    let drive = if agent { Drive::Agent } else { Drive::Whole };
    Ok(Realizer::new(cloud, drivers, locals).with_drive(drive))
}

/// The command line a controller starts a local host's agent with (`--host NAME` follows):
/// the same binary, data directory, store and local settings as this server's.
pub fn agent_command(
    cfg: &ServeConfig,
    url: &EtcdUrl,
    locals: &[String],
) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("locating the kangaroo binary")?;
    let mut c: Vec<String> = vec![
        exe.display().to_string(),
        "--data-dir".into(),
        cfg.data_dir.display().to_string(),
        "agent".into(),
        "--driver".into(),
        crate::provider::ProviderKind::Local.name().into(),
        "--store".into(),
        url.to_string(),
        "--lease-secs".into(),
        cfg.lease.as_secs().max(1).to_string(),
        "--vm-driver".into(),
        cfg.local.driver.to_string(),
        "--switch-mode".into(),
        cfg.local.switch_mode.to_string(),
        "--guest-image".into(),
        cfg.local.guest_image.display().to_string(),
        "--secure-tunnels".into(),
        cfg.local.secure.name().to_owned(),
    ];
    for l in locals {
        c.push("--local-provider".into());
        c.push(l.clone());
    }
    Ok(c)
}

fn log_reconcile(r: &Result<crate::infra::realize::ConvergeReport, crate::service::ServiceError>) {
    match r {
        Ok(r) => {
            for line in r.repaired.iter().chain(r.errors.iter()) {
                eprintln!("kangaroo: reconcile: {line}");
            }
            for (vm, host) in &r.adopted {
                eprintln!("kangaroo: reconcile: VM {vm} adopted on {host}");
            }
        }
        Err(e) => eprintln!("kangaroo: reconcile: {e}"),
    }
}

/// Runs the API server until SIGINT or SIGTERM.
///
/// With the embedded store this is the only controller. With etcd it campaigns to lead: the
/// leader writes and runs the reconciler; a standby answers reads from a copy it refreshes on
/// every commit and forwards writes to the leader, and takes over (reloading the state, then
/// reconciling, which finishes what the old leader left in flight) when the leader's lease
/// expires.
///
/// # Errors
/// If the store, token or socket cannot be opened.
pub async fn serve(cfg: ServeConfig, ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let use_tls = if cfg.listen.ip().is_loopback() {
        cfg.tls_on_loopback
    } else {
        !cfg.plain_http_off_loopback
    };
    let open_files = crate::sys::process::raise_open_files_limit();
    let http = cfg.http.within(open_files);
    let (store, etcd): (Box<dyn Store>, Option<EtcdStore>) = match &cfg.store {
        StoreChoice::Embedded => (Box::new(RedbStore::open(&cfg.data_dir)?), None),
        StoreChoice::Etcd(url) => {
            let url = url.clone();
            let e = tokio::task::spawn_blocking(move || EtcdStore::connect(&url))
                .await
                .context("connecting to etcd")??;
            (Box::new(e.clone()), Some(e))
        }
    };
    let mut service = Service::new(store, &cfg.providers, cfg.options)?;
    let locals = service.local_providers();
    match (&cfg.store, cfg.local_agents) {
        (StoreChoice::Etcd(url), true) if !locals.is_empty() => {
            // Every local host gets its own agent when it is rented.
            let command = agent_command(&cfg, url, &locals)?;
            let r = local_realizer(locals, &cfg.data_dir, &cfg.local, false)?
                .with_drive(Drive::Controller(AgentLaunch { command }));
            service = service.with_realizer(Arc::new(r));
        }
        (StoreChoice::Embedded, true) => anyhow::bail!(
            "--local-agents needs --store etcd://…: with the embedded store this server drives its local hosts itself"
        ),
        _ => {
            if let Some(r) = realizer(&service, &cfg.data_dir, &cfg.local)? {
                service = service.with_realizer(r);
            }
        }
    }
    let service = Arc::new(service);
    let token = match &etcd {
        // Every controller on one etcd accepts the same token; the first one made it.
        Some(e) => {
            let e = e.clone();
            let t = tokio::task::spawn_blocking(move || {
                e.shared_value("token", crate::token::generate)
            })
            .await
            .context("reading the token from etcd")??;
            crate::token::check(&t).context("the token in etcd")?;
            crate::token::write(&cfg.data_dir, &t)?;
            t
        }
        None => crate::token::load_or_create(&cfg.data_dir)?,
    };
    // The CA: made at first start, or shared by the controllers on etcd (as the token is).
    let authority = match &etcd {
        _ if !use_tls && !crate::tls::ca_path(&cfg.data_dir).exists() => None,
        Some(e) => {
            let e = e.clone();
            let pem = tokio::task::spawn_blocking(move || {
                e.shared_value("tls-ca", || {
                    crate::tls::Authority::generate_pem().unwrap_or_default()
                })
            })
            .await
            .context("reading the CA from etcd")??;
            let a = crate::tls::Authority::from_pem(&pem).context("the CA in etcd")?;
            a.save(&cfg.data_dir)?;
            Some(a)
        }
        None => Some(crate::tls::Authority::load_or_create(&cfg.data_dir)?),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if use_tls { "https" } else { "http" };
    let tls =
        match (&authority, use_tls) {
            (Some(a), true) => {
                let (names, ips) =
                    crate::tls::serving_names(addr, cfg.advertise.as_deref(), &cfg.tls_names);
                eprintln!(
                "kangaroo: TLS with the controller's CA {} ({}); the certificate names {} and {}",
                a.fingerprint(),
                crate::tls::ca_path(&cfg.data_dir).display(),
                names.join(", "),
                ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            );
                Some(a.server_config(&names, &ips)?)
            }
            _ => None,
        };
    let reconciles = service.realizer().is_some();
    match &etcd {
        None if reconciles => {
            // Adopt what runs, repair what drifted, finish what a crash interrupted.
            let s = service.clone();
            let first = tokio::task::spawn_blocking(move || s.reconcile())
                .await
                .context("the reconciler")?;
            log_reconcile(&first);
        }
        None => {}
        Some(e) => {
            let s = service.clone();
            e.follow(Arc::new(move |c| {
                let r = match c {
                    crate::store::etcd::Followed::Commit { ops, rev } => s.follow(&ops, rev),
                    crate::store::etcd::Followed::Reload => s.refresh().map(|_| ()),
                };
                if let Err(err) = r {
                    eprintln!("kangaroo: following the store: {err}");
                }
            }));
            let s = service.clone();
            let advertise = cfg
                .advertise
                .clone()
                .unwrap_or(format!("{scheme}://{addr}"));
            e.campaign(
                advertise,
                cfg.lease,
                Arc::new(move |leading| {
                    if !leading {
                        return;
                    }
                    // What the old leader committed last is what this one continues from.
                    if let Err(err) = s.refresh() {
                        eprintln!("kangaroo: leader: reloading the state: {err}");
                    }
                    if s.realizer().is_some() {
                        log_reconcile(&s.reconcile());
                    }
                }),
            );
        }
    }
    if let Some(e) = &etcd {
        // Agents' heartbeats: every second, and whenever one expires, the leader compares the
        // hosts with a live agent lease against the hosts that had one.
        let (s, e, policy, lease) = (service.clone(), e.clone(), cfg.on_host_lost, cfg.lease);
        // An expired heartbeat wakes the sweep at once.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        e.watch_agents_gone(Arc::new(move || {
            let _ = tx.send(());
        }));
        std::thread::spawn(move || loop {
            if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                rx.recv_timeout(std::time::Duration::from_secs(1))
            {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            while rx.try_recv().is_ok() {}
            if !matches!(s.role(), crate::store::Role::Leader { .. }) {
                continue;
            }
            // Agents on etcd hold leases; agents on the API report to the leader.
            let alive = e.live_agents().map(|mut alive| {
                alive.extend(s.api_agents_alive(lease));
                alive
            });
            match alive.map(|alive| s.sweep_agents(&alive, policy)) {
                Ok(Ok(lines)) => {
                    for l in lines {
                        eprintln!("kangaroo: agents: {l}");
                    }
                    // Keys the agents reported reach the rendezvous.
                    if let Some(r) = s.realizer().filter(|r| r.agents_drive()) {
                        if let Err(err) = r.sync_rendezvous(&s.snapshot()) {
                            eprintln!("kangaroo: agents: {}", crate::sys::report(&err));
                        }
                    }
                }
                Ok(Err(err)) => eprintln!("kangaroo: agents: {err}"),
                Err(err) => eprintln!("kangaroo: agents: {err}"),
            }
        });
    }
    if etcd.is_none() {
        // Agents that report through the API: a host whose agent stops for the lease is lost.
        let (s, policy, lease) = (service.clone(), cfg.on_host_lost, cfg.lease);
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            match s.sweep_agents(&s.api_agents_alive(lease), policy) {
                Ok(lines) => {
                    for l in lines {
                        eprintln!("kangaroo: agents: {l}");
                    }
                }
                Err(err) => eprintln!("kangaroo: agents: {err}"),
            }
        });
    }
    if reconciles && cfg.local.reconcile_secs > 0 {
        let s = service.clone();
        let every = std::time::Duration::from_secs(cfg.local.reconcile_secs);
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            if s.is_writer() {
                log_reconcile(&s.reconcile());
            }
        });
    }
    let os = crate::openstack::OpenStackConfig {
        project: cfg.openstack.project.clone(),
        password: token.clone(),
        token_ttl: cfg.openstack.token_ttl,
        flavors: cfg.openstack.flavors.clone(),
    };
    // The CA: what agents fetch and check against their join token, and what a standby
    // trusts when it forwards to the leader (they share it).
    let ca_pem = authority.as_ref().map(|a| a.ca_pem.as_str());
    let (app, _) = crate::api::router_with(service, &token, os, ca_pem);
    eprintln!(
        "kangaroo: serving the API on {scheme}://{addr} (state and token in {})",
        cfg.data_dir.display()
    );
    ready(addr);
    eprintln!(
        "kangaroo: API limits: at most {} connections (open files {open_files}), {} s for a request's headers",
        http.max_connections,
        http.header_timeout.as_secs_f64()
    );
    crate::http::serve(listener, app, http, tls, async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    })
    .await?;
    if let Some(e) = &etcd {
        // Hand over now rather than after the lease.
        let e = e.clone();
        let _ = tokio::task::spawn_blocking(move || e.resign()).await;
    }
    Ok(())
}
