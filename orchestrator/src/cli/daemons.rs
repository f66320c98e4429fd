//! The long-running subcommands: the API server, host agents, and the service a `netns` VM
//! runs.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};
use kangaroo_orchestrator::server::{self, ServeConfig};
use kangaroo_orchestrator::store::etcd::{EtcdStore, EtcdUrl};

/// `kangaroo serve`.
///
/// # Errors
/// The server fails to start (address in use, store unreachable, a bad provider).
pub fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(server::serve(cfg, |_| {}))
}

/// `kangaroo vm exec NAME -- COMMAND…`: runs the command in a `netns` VM of a local host here
/// and exits with its status.
///
/// # Errors
/// No such VM here, or the command cannot be started.
pub fn vm_exec(data_dir: &Path, name: &str, command: &[String]) -> anyhow::Result<()> {
    let ns = format!("{}-v-{name}", server::local_prefix(data_dir));
    if !Path::new("/run/netns").join(&ns).exists() {
        bail!(
            "VM {name} is not a netns VM on a local host of the server using {}",
            data_dir.display()
        );
    }
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(command)
        .status()
        .context("running ip netns exec")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Until SIGINT or SIGTERM.
///
/// # Errors
/// No runtime could be made.
pub fn until_signalled() -> anyhow::Result<()> {
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

/// `kangaroo agent --driver local`: drives one host of a local provider from the followed
/// state.
///
/// # Errors
/// A bad `--store` or `--host`, no local providers, or the host's realizer cannot be made.
pub fn local_agent(
    store: &str,
    host: &str,
    lease_secs: u64,
    locals: &[String],
    data_dir: &Path,
    settings: &server::LocalSettings,
) -> anyhow::Result<()> {
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

/// `kangaroo agent --driver sim`: holds the host's lease and logs what is assigned to it.
///
/// # Errors
/// A bad `--store` or `--host`, or etcd cannot be reached.
pub fn sim_agent(store: &str, host: &str, lease_secs: u64) -> anyhow::Result<()> {
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

/// `kangaroo agent --controller URL --driver sim`: joins the controller (with the join token,
/// the first time; the credential and the controller's CA are kept in `DATA_DIR/agent/`), then
/// watches its host's desired state through the API and reports what is assigned to it.
///
/// # Errors
/// The join is refused (which part of the token, or the CA, is named), or the credential is
/// revoked later.
pub fn api_agent(
    url: &str,
    host: &str,
    join_token_file: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<()> {
    use kangaroo_orchestrator::agentapi::{AgentClient, Desired};
    use kangaroo_orchestrator::service::AgentReport;
    kangaroo_orchestrator::model::Name::new(host)
        .map_err(|e| anyhow::anyhow!("--host {host:?}: {e}"))?;
    let dir = data_dir.join("agent");
    let (cred_file, ca_file) = (dir.join("credential"), dir.join("ca.pem"));
    let client = match std::fs::read_to_string(&cred_file) {
        Ok(cred) => {
            let ca = std::fs::read_to_string(&ca_file).ok();
            AgentClient::new(url, host, ca.as_deref(), cred.trim())?
        }
        Err(_) => {
            let f = join_token_file.with_context(|| {
                format!("no credential in {} yet: join with --join-token-file (kangaroo host join-token {host} on the controller)", cred_file.display())
            })?;
            let token = std::fs::read_to_string(f)
                .with_context(|| format!("reading the join token from {}", f.display()))?;
            let (client, ca, credential) = AgentClient::join(url, host, token.trim())
                .with_context(|| format!("joining {url} as host {host}"))?;
            kangaroo_orchestrator::sys::private_dir(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            if let Some(ca) = ca {
                std::fs::write(&ca_file, ca)
                    .with_context(|| format!("writing {}", ca_file.display()))?;
            }
            kangaroo_orchestrator::sys::write_private(&cred_file, &credential)
                .with_context(|| format!("writing {}", cred_file.display()))?;
            eprintln!("kangaroo agent {host}: joined {url}");
            client
        }
    };
    eprintln!("kangaroo agent {host}: watching {url}");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let h = host.to_owned();
    kangaroo_orchestrator::agentapi::run_agent(&client, &stop, |d: &Desired| {
        let names: Vec<String> = d
            .vms
            .iter()
            .filter(|v| v.host.as_str() == h)
            .map(|v| v.name.to_string())
            .collect();
        eprintln!(
            "kangaroo agent {h}: revision {}: {} VMs: {}",
            d.revision,
            names.len(),
            names.join(" ")
        );
        AgentReport {
            observed: names,
            ..AgentReport::default()
        }
    })
    .with_context(|| format!("kangaroo agent {host}"))?;
    Ok(())
}

/// `kangaroo guest-service`: a tiny HTTP responder, one request per connection.
pub fn guest_service(name: &str, listen: SocketAddr) -> anyhow::Result<()> {
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
