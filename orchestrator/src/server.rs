//! `kangaroo serve`: the data directory (state database, API token), and the HTTP server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::packing::PackOptions;
use crate::service::Service;
use crate::store::RedbStore;

/// Name of the token file in the data directory.
pub const TOKEN_FILE: &str = "token";

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

/// Reads the API token from `dir`, creating one (mode 0600) if there is none.
///
/// # Errors
/// If the directory or file cannot be created or read.
pub fn token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let t: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let tmp = dir.join(format!("{TOKEN_FILE}.tmp"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(t.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(t)
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
}

/// Runs the API server until SIGINT or SIGTERM.
///
/// # Errors
/// If the store, token or socket cannot be opened.
pub async fn serve(cfg: ServeConfig, ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let store = RedbStore::open(&cfg.data_dir)?;
    let service = Arc::new(Service::new(Box::new(store), &cfg.providers, cfg.options)?);
    let token = token(&cfg.data_dir)?;
    let (app, _) = crate::api::router(service, &token);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    ready(listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        })
        .await?;
    Ok(())
}
