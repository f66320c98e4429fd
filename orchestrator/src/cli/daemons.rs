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
