//! Datapath workers: one thread per configured core, each running its own [`Switch`].
//!
//! Every worker owns a complete switch: its own tables and its own sockets on every port (AF_XDP:
//! its share of the receive queues; AF_PACKET: one socket per port in the port's fanout group),
//! so the hot path shares nothing and takes no lock. What must be common is kept common without
//! locks:
//! - configuration changes from the control API are jobs queued to every worker and applied
//!   between two batches, all or nothing;
//! - what one worker learns (new or moved stations, ARP bindings, and a refresh once per quarter
//!   of the aging time) goes to the others through bounded lock-free queues, applied before
//!   their next batch, so a flow whose two directions land on different workers is switched,
//!   not flooded;
//! - counters are shared atomics.
//!
//! An idle worker sleeps in `poll(2)` on its sockets and its job queue (AF_XDP sockets become
//! readable when frames arrive, the need_wakeup protocol keeps the kernel doing the rest); with
//! `busy_poll` it spins instead, trading a core for latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::clock::MonotonicClock;
use crate::config::{PeerSettings, PortSettings, UplinkSettings};
use crate::control::JobQueue;
use crate::port::opener::PortOpener;
use crate::stats::Stats;
use crate::switch::{Replica, Switch, SwitchConfig};

/// Learned entries a worker's inbox holds; beyond that they are dropped (and counted).
const INBOX: usize = 1 << 16;
/// Learned entries journaled per batch before they are handed on.
const JOURNAL: usize = 4096;
/// Longest idle sleep: bounds how late a stop request or an aging step is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// How to run the workers.
pub struct Options {
    /// One worker per entry, pinned to that CPU; empty: one unpinned worker.
    pub cores: Vec<usize>,
    /// Spin when idle.
    pub busy_poll: bool,
    /// The switch settings every worker uses.
    pub switch: SwitchConfig,
    /// The uplink and the peers reached through it, if tunnels are used.
    pub uplink: Option<(UplinkSettings, Vec<PeerSettings>)>,
    /// Secure tunnels (shared by every worker), if this host has a key.
    pub secure: Option<Arc<crate::secure::Secure>>,
}

/// Running workers.
pub struct Workers {
    threads: Vec<JoinHandle<Option<Switch>>>,
    stop: Arc<AtomicBool>,
}

/// Starts the workers: each pins itself, builds its switch with an opener from `opener(w, n)`,
/// opens every configured port, and reports; returns once all are running.
///
/// # Errors
/// The first worker's message if any could not start (the others are stopped again).
pub fn start(
    options: Options,
    opener: impl Fn(usize, usize) -> Box<dyn PortOpener>,
    ports: &[PortSettings],
    queues: Vec<JobQueue>,
    stop: Arc<AtomicBool>,
) -> Result<Workers, String> {
    let n = queues.len();
    let stats = Arc::new(Stats::default());
    let inboxes: Arc<Vec<ArrayQueue<Replica>>> =
        Arc::new((0..n).map(|_| ArrayQueue::new(INBOX)).collect());
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut threads = Vec::with_capacity(n);
    for (w, jobs) in queues.into_iter().enumerate() {
        let core = options.cores.get(w).copied();
        let mut sw = Switch::with_stats(options.switch, stats.clone());
        sw.set_opener(opener(w, n));
        if let Some(s) = &options.secure {
            sw.set_secure(s.clone());
        }
        if n > 1 {
            sw.enable_journal(JOURNAL);
        }
        let ports = ports.to_vec();
        let uplink = options.uplink.clone();
        let ready = ready_tx.clone();
        let inboxes = inboxes.clone();
        let stop_w = stop.clone();
        let busy_poll = options.busy_poll;
        let spawned = std::thread::Builder::new()
            .name(format!("kangaroo-dp{w}"))
            .spawn(move || {
                let setup = (|| {
                    if let Some(c) = core {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                            return Err(format!(
                                "datapath.cores[{w}]: cannot pin a worker to CPU {c} (is it online?)"
                            ));
                        }
                    }
                    for (i, p) in ports.iter().enumerate() {
                        sw.open_port(&p.interface, p.port.clone())
                            .map_err(|e| format!("port[{i}] ({}): {e}", p.interface))?;
                    }
                    if let Some((u, peers)) = &uplink {
                        sw.open_uplink(u).map_err(|e| format!("uplink ({}): {e}", u.interface))?;
                        for (i, p) in peers.iter().enumerate() {
                            sw.add_peer(p.address, crate::mac::MacAddr::ZERO, p.vnis())
                                .map_err(|e| format!("peer[{i}] ({}): {e}", p.address))?;
                        }
                    }
                    Ok(())
                })();
                let failed = setup.is_err();
                let _ = ready.send((w, setup));
                // Dropped now, so a worker that dies starting disconnects the channel.
                drop(ready);
                if failed {
                    return None;
                }
                tracing::info!(worker = w, core = ?core, "datapath worker running");
                run(w, &mut sw, jobs, &inboxes, &stop_w, busy_poll);
                Some(sw)
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                drop(Workers { threads, stop }.stop());
                return Err(format!("starting datapath worker {w}: {e}"));
            }
        }
    }
    drop(ready_tx);
    let workers = Workers { threads, stop };
    let mut first_error = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((w, Err(e))) => {
                first_error.get_or_insert(format!("worker {w}: {e}"));
            }
            Err(_) => {
                first_error.get_or_insert_with(|| "a datapath worker died starting".to_owned());
                break;
            }
        }
    }
    match first_error {
        None => Ok(workers),
        Some(e) => {
            drop(workers.stop());
            Err(e)
        }
    }
}

fn run(
    me: usize,
    sw: &mut Switch,
    mut jobs: JobQueue,
    inboxes: &[ArrayQueue<Replica>],
    stop: &AtomicBool,
    busy_poll: bool,
) {
    let clock = MonotonicClock::new();
    let stats = sw.stats().clone();
    let mut fds = sw.readable_fds();
    fds.push(jobs.wake_fd());
    let inbox = inboxes.get(me);
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now();
        if jobs.run(sw, now) > 0 {
            fds = sw.readable_fds();
            fds.push(jobs.wake_fd());
        }
        if let Some(inbox) = inbox {
            while let Some(r) = inbox.pop() {
                sw.apply_replica(r, now);
            }
        }
        let received = sw.poll(now);
        // The kernel's copy of the tables (mode "xdp"; the first worker keeps it).
        sw.sync_mirror(now);
        if inboxes.len() > 1 {
            sw.drain_journal(|r| {
                for (w, q) in inboxes.iter().enumerate() {
                    if w != me {
                        if q.push(r).is_ok() {
                            Stats::event(&stats.events.replicated);
                        } else {
                            Stats::event(&stats.events.replica_dropped);
                        }
                    }
                }
            });
        }
        if received == 0 {
            if busy_poll {
                std::hint::spin_loop();
            } else {
                crate::port::packet::wait_readable(&fds, IDLE_WAIT);
                jobs.drain_wake();
            }
        }
    }
}

impl Workers {
    /// The first worker whose thread has ended although no stop was asked for (it panicked:
    /// the panic message is on stderr). The daemon treats that as fatal so its supervisor
    /// restarts it, rather than serving a control API whose requests can no longer run.
    pub fn dead_worker(&self) -> Option<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        self.threads.iter().position(|t| t.is_finished())
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// True when there is no worker.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Stops every worker and waits for them; returns the first worker's switch (its counters
    /// are the daemon's: counters are shared). The other workers' ports are closed on the way.
    pub fn stop(self) -> Option<Switch> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = None;
        for (i, t) in self.threads.into_iter().enumerate() {
            let sw = t.join().ok().flatten();
            if i == 0 {
                first = sw;
            }
        }
        first
    }
}
