//! `kangaroo agent --driver local`: the agent of one local host on the etcd store.
//!
//! It follows the whole state as the controllers commit it (change by change, like a
//! standby; a gap or a compaction reloads it), and after every change, and every two seconds
//! besides, runs its host's part of convergence ([`Realizer::converge_host`], the same code
//! the embedded server runs for each of its hosts): the switch, its peers and FDB entries,
//! the host's VMs. Its heartbeat lease carries what it observes: the VMs running on its host
//! and its switch's public key, which the leader records so that the other hosts' agents
//! can make secure tunnels to it. It stops when its host leaves the state (released) or its
//! directory is removed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::infra::realize::Realizer;
use crate::store::etcd::{EtcdStore, Followed};
use crate::store::{State, Store};

/// How often the agent converges when nothing changed (a switch or VM that died is brought
/// back within this).
pub const PASS_EVERY: Duration = Duration::from_secs(2);

/// The state an agent follows, with its revision, and a change flag its loop waits on.
struct Mirror {
    state: Mutex<(State, u64, bool)>,
    changed: Condvar,
}

impl Mirror {
    fn lock(&self) -> std::sync::MutexGuard<'_, (State, u64, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the agent last observed, for its heartbeat.
#[derive(Default)]
struct Observed {
    running: Vec<String>,
    public_key: Option<String>,
    revision: u64,
}

/// Runs the agent of `host` until `stop` is set, the host leaves the state after it was
/// seen, or the host's directory is removed.
///
/// # Errors
/// The state cannot be read at start.
pub fn run_local_agent(
    store: &EtcdStore,
    host: &str,
    realizer: Arc<Realizer>,
    lease: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (state, rev) = store.load()?;
    let shared = Arc::new(Mirror {
        state: Mutex::new((state, rev, true)),
        changed: Condvar::new(),
    });
    {
        let (shared, store) = (shared.clone(), store.clone());
        store.clone().follow(Arc::new(move |c| {
            let reload = match c {
                Followed::Commit { ops, rev } => {
                    let mut g = shared.lock();
                    if rev <= g.1 {
                        false
                    } else if rev == g.1 + 1 {
                        g.0.apply(&ops);
                        g.1 = rev;
                        g.2 = true;
                        false
                    } else {
                        true
                    }
                }
                Followed::Reload => true,
            };
            if reload {
                match store.load() {
                    Ok((s, r)) => *shared.lock() = (s, r, true),
                    Err(e) => eprintln!("kangaroo agent: reading the state: {e}"),
                }
            }
            shared.changed.notify_all();
        }));
    }
    let observed = Arc::new(Mutex::new(Observed::default()));
    let kick = Arc::new(tokio::sync::Notify::new());
    {
        let observed = observed.clone();
        store.heartbeat(
            host,
            lease,
            Arc::new(move || {
                let o = observed.lock().unwrap_or_else(|p| p.into_inner());
                json!({
                    "observed": o.running,
                    "public_key": o.public_key,
                    "revision": o.revision,
                    "at_ms": crate::service::now_secs() * 1000,
                })
            }),
            kick.clone(),
            stop.clone(),
        );
    }
    let dir = realizer
        .cloud()
        .host_ref(host, std::net::Ipv4Addr::UNSPECIFIED)
        .dir;
    let mut seen = false;
    while !stop.load(Ordering::SeqCst) {
        let (state, rev) = {
            let g = shared.lock();
            let (mut g, _) = shared
                .changed
                .wait_timeout_while(g, PASS_EVERY, |g| !g.2)
                .unwrap_or_else(|p| p.into_inner());
            g.2 = false;
            (g.0.clone(), g.1)
        };
        let Some(h) = state.hosts.values().find(|h| h.name.as_str() == host) else {
            if seen {
                eprintln!("kangaroo agent {host}: the host was released; stopping");
                break;
            }
            continue;
        };
        seen = true;
        if !dir.exists() {
            eprintln!("kangaroo agent {host}: {} is gone; stopping", dir.display());
            break;
        }
        let r = realizer.converge_host(&state, host);
        for line in r.repaired.iter().chain(r.errors.iter()) {
            eprintln!("kangaroo agent {host}: {line}");
        }
        let running = realizer.running_on(&state, h);
        let public_key = realizer.public_key_of(h);
        let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
        o.running = running;
        if public_key.is_some() {
            o.public_key = public_key;
        }
        o.revision = rev;
        drop(o);
        kick.notify_one();
    }
    stop.store(true, Ordering::SeqCst);
    Ok(())
}
