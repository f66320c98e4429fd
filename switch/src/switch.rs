//! A switch: ports, an optional uplink, the tables, and the loop that moves frames between them.
//!
//! [`Switch::poll`] receives one batch from every port and from the uplink, runs the pipeline on
//! each frame, transmits (replicating floods and encapsulating tunnelled frames into a scratch
//! buffer allocated once), commits every port's transmit queue once, and ages a slice of the
//! tables. Nothing in it allocates after construction.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::arp::{self, ArpConfig};
use crate::clock::Timestamp;
use crate::fdb::{Dest, FdbConfig, FdbError};
use crate::mac::MacAddr;
use crate::pipeline::{PortConfig, Tables, TablesConfig, TablesError, Verdict};
use crate::port::{Offload, PortBackend, PortId, RxBatch};
use crate::stats::{DropReason, Stats};
use crate::tunnel::{self, LocalVtep, PeerId, PeerVnis, Vni};

/// Switch-wide settings.
#[derive(Debug, Clone, Copy)]
pub struct SwitchConfig {
    /// The FDB.
    pub fdb: FdbConfig,
    /// The ARP table.
    pub arp: ArpConfig,
    /// Storm control on every port (off by default; the daemon's configuration sets limits).
    pub storm: crate::storm::StormConfig,
    /// Frames received per port per poll.
    pub batch_size: usize,
    /// Largest frame handled.
    pub max_frame: usize,
    /// The underlay's IPv4 MTU: inner frames longer than `underlay_mtu - 36` bytes (an inner IP
    /// MTU of `underlay_mtu - 50`) cannot be tunnelled.
    pub underlay_mtu: usize,
    /// Table slots aged per aging step (one step every [`AGING_INTERVAL`]).
    pub aging_budget: usize,
    /// Hash seed for the tables; `None` picks a random one.
    pub seed: Option<u64>,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            fdb: FdbConfig::default(),
            arp: ArpConfig::default(),
            storm: crate::storm::StormConfig::OFF,
            batch_size: 64,
            max_frame: 9216,
            underlay_mtu: 1500,
            aging_budget: 4096,
            seed: None,
        }
    }
}

/// Control-plane errors.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// A table change failed.
    #[error(transparent)]
    Tables(#[from] TablesError),
    /// An FDB change failed.
    #[error(transparent)]
    Fdb(#[from] FdbError),
    /// An ARP table change failed.
    #[error(transparent)]
    Arp(#[from] arp::ArpTableError),
    /// A port name is taken.
    #[error("a port named {0:?} already exists")]
    DuplicatePort(String),
}

/// How often a slice of the tables is aged. Aging on every poll would cost microseconds per
/// batch when traffic arrives a frame at a time; expired entries are invisible to lookups at once
/// anyway, so sweeping only reclaims their slots.
pub const AGING_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Keys of changed entries remembered between two mirror syncs (beyond: a full resync).
const MIRROR_LOG: usize = 16_384;

/// Largest segment cut from a GSO super-frame (a 9000-byte MTU with room to spare).
const SEGMENT_MAX: usize = 9216;

/// Bytes of outer IPv4/UDP/VXLAN headers counted against the underlay MTU.
const TUNNEL_IP_OVERHEAD: usize = tunnel::OUTER_LEN - tunnel::outer::ETH_LEN;

/// An L2 switch.
pub struct Switch {
    config: SwitchConfig,
    tables: Tables,
    stats: Arc<Stats>,
    ports: Vec<Option<Box<dyn PortBackend>>>,
    uplink: Option<Box<dyn PortBackend>>,
    opener: Option<Box<dyn crate::port::opener::PortOpener>>,
    mirror_on: bool,
    mirror_full: bool,
    mirror_keys: Vec<crate::fdb::FdbKey>,
    next_peer_sync: Timestamp,
    rx: RxBatch,
    scratch: Box<[u8]>,
    /// One segment of a GSO super-frame cut for a tunnel.
    segment: Box<[u8]>,
    reply: [u8; arp::REPLY_FRAME_LEN],
    next_aging: Timestamp,
    /// Secure tunnels, when this host has a key.
    secure: Option<Arc<crate::secure::Secure>>,
}

/// What one datapath worker learned, for the others (see [`Switch::enable_journal`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Replica {
    /// An FDB entry.
    Fdb(crate::fdb::Learned),
    /// An ARP binding.
    Arp(arp::Snooped),
}

impl Switch {
    /// A switch with no ports.
    pub fn new(config: SwitchConfig) -> Switch {
        Switch::with_stats(config, Arc::new(Stats::default()))
    }

    /// A switch counting into `stats` (shared by the workers of one daemon).
    pub fn with_stats(config: SwitchConfig, stats: Arc<Stats>) -> Switch {
        let seed = config.seed.unwrap_or_else(rand::random);
        Switch {
            tables: Tables::new(
                TablesConfig {
                    fdb: config.fdb,
                    arp: config.arp,
                    storm: config.storm,
                },
                seed,
            ),
            stats,
            ports: Vec::new(),
            uplink: None,
            opener: None,
            mirror_on: false,
            mirror_full: false,
            mirror_keys: Vec::new(),
            next_peer_sync: Timestamp::ZERO,
            rx: RxBatch::new(config.batch_size.max(1), config.max_frame),
            scratch: vec![0; config.max_frame + tunnel::OUTER_LEN].into_boxed_slice(),
            segment: vec![0; SEGMENT_MAX].into_boxed_slice(),
            reply: [0; arp::REPLY_FRAME_LEN],
            next_aging: Timestamp::ZERO,
            secure: None,
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    /// The tables (read only; change them through the switch's methods).
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The counters, shareable with a control thread.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Attaches a port.
    ///
    /// # Errors
    /// [`SwitchError::DuplicatePort`] if the name is taken, or a full port table.
    pub fn add_port(
        &mut self,
        backend: Box<dyn PortBackend>,
        config: PortConfig,
    ) -> Result<PortId, SwitchError> {
        if self.port_id(backend.name()).is_some() {
            return Err(SwitchError::DuplicatePort(backend.name().to_owned()));
        }
        let id = self.tables.add_port(config)?;
        let i = usize::from(id.get());
        if self.ports.len() <= i {
            self.ports.resize_with(i + 1, || None);
        }
        self.ports[i] = Some(backend);
        self.stats.reset_port(id);
        Ok(id)
    }

    /// Journals what this switch learns (FDB and ARP), up to `capacity` events of each kind
    /// between two [`Switch::drain_journal`] calls: a daemon with several datapath workers, each
    /// with its own tables, passes them to the other workers so all know every station.
    pub fn enable_journal(&mut self, capacity: usize) {
        self.tables.fdb.enable_journal(capacity);
        self.tables.arp.enable_journal(capacity);
    }

    /// Hands what was learned since the last call to `f`.
    pub fn drain_journal(&mut self, mut f: impl FnMut(Replica)) {
        self.tables.fdb.drain_journal(|e| f(Replica::Fdb(e)));
        self.tables.arp.drain_journal(|e| f(Replica::Arp(e)));
    }

    /// Learns what another worker learned (never journaled again).
    pub fn apply_replica(&mut self, r: Replica, now: Timestamp) {
        match r {
            Replica::Fdb(e) => {
                // Only for ports and peers this switch has (a port removed meanwhile is skipped).
                let known = match e.dest {
                    Dest::Port(p) => self.tables.port(p).is_some(),
                    Dest::Vtep(p) => self.tables.peers().is_some_and(|t| t.get(p).is_some()),
                };
                if known {
                    let _ = self.tables.fdb.learn_remote(e, now);
                }
            }
            Replica::Arp(e) => {
                let _ = self.tables.arp.snoop_remote(e, now);
            }
        }
    }

    /// Opens the uplink with the opener and sets this host's VTEP (the interface's MAC is read
    /// from sysfs).
    ///
    /// # Errors
    /// A message: no opener, the interface's address unreadable, or the uplink cannot be opened.
    pub fn open_uplink(&mut self, u: &crate::config::UplinkSettings) -> Result<(), String> {
        let mac_path = std::path::Path::new("/sys/class/net")
            .join(&u.interface)
            .join("address");
        let mac: MacAddr = std::fs::read_to_string(&mac_path)
            .map_err(|e| format!("reading {}: {e}", mac_path.display()))?
            .trim()
            .parse()
            .map_err(|e| format!("{}: {e}", mac_path.display()))?;
        let opener = self
            .opener
            .as_mut()
            .ok_or("this switch has no datapath to open the uplink with")?;
        let mut backend = opener.open_uplink(
            &u.interface,
            std::net::SocketAddrV4::new(u.address, u.udp_port),
            mac,
            u.mtu.saturating_sub(tunnel::OUTER_LEN),
        )?;
        if let Some(s) = &self.secure {
            backend = Box::new(crate::port::secure::SecureUplink::new(
                backend,
                s.clone(),
                mac,
                u.udp_port,
            ));
        }
        self.set_uplink(
            backend,
            LocalVtep {
                addr: u.address,
                mac,
                udp_port: u.udp_port,
            },
        );
        Ok(())
    }

    /// Keeps the kernel's mirror of the tables in sync (mode "xdp", first worker): every FDB
    /// and ARP change since the last call, and every second the peers (next hops may change).
    /// Cheap when nothing changed.
    pub fn sync_mirror(&mut self, now: Timestamp) {
        let Some(opener) = self.opener.as_mut() else {
            return;
        };
        if !opener.mirrors() {
            return;
        }
        if !self.mirror_on {
            self.mirror_on = true;
            self.tables.fdb.enable_mirror(MIRROR_LOG);
            self.tables.arp.enable_mirror(MIRROR_LOG);
            self.mirror_full = true;
        }
        let aging = self.tables.fdb.config().aging;
        let mut keys = std::mem::take(&mut self.mirror_keys);
        keys.clear();
        let overflow = self.tables.fdb.drain_dirty(|k| keys.push(k));
        if overflow || self.mirror_full {
            opener.mirror_fdb_clear();
            keys.clear();
            keys.extend(self.tables.fdb.entries().map(|(k, _)| k));
        }
        for k in &keys {
            let dest = self
                .tables
                .fdb
                .get(k.vni, k.mac)
                .filter(|e| e.is_static || now.since(e.last_seen) < aging)
                .map(|e| e.dest);
            let port_name = match dest {
                Some(Dest::Port(p)) => self
                    .ports
                    .get(usize::from(p.get()))
                    .and_then(Option::as_ref)
                    .map(|b| b.name().to_owned()),
                _ => None,
            };
            let d = match dest {
                Some(Dest::Port(_)) => port_name
                    .as_deref()
                    .map(crate::port::opener::MirrorDest::Port),
                Some(Dest::Vtep(p)) => Some(crate::port::opener::MirrorDest::Vtep(p)),
                None => None,
            };
            opener.mirror_fdb(k.vni, k.mac, d);
        }
        self.mirror_keys = keys;
        let mut arp_keys = Vec::new();
        let overflow = self.tables.arp.drain_dirty(|k| arp_keys.push(k));
        if overflow || self.mirror_full {
            opener.mirror_arp_clear();
            arp_keys = self.tables.arp.entries().map(|(k, _)| k).collect();
        }
        for k in arp_keys {
            let mac = self.tables.arp.lookup(k.vni, k.ip, now);
            opener.mirror_arp(k.vni, k.ip, mac);
        }
        if self.mirror_full || now >= self.next_peer_sync {
            self.next_peer_sync = now.plus(std::time::Duration::from_secs(1));
            let peers = self.mirror_peers();
            if let Some(o) = self.opener.as_mut() {
                o.mirror_peers(&peers);
            }
        }
        self.mirror_full = false;
    }

    /// The peers as the kernel's fast path needs them.
    fn mirror_peers(&self) -> Vec<crate::port::opener::MirrorPeer> {
        let Some(t) = self.tables.peers() else {
            return Vec::new();
        };
        let Some(uplink) = self.uplink.as_ref().map(|u| u.name().to_owned()) else {
            return Vec::new();
        };
        let local: Vec<Vni> = self.tables.vnis().collect();
        // Secure peers are reached through user space only: the kernel neither encapsulates
        // toward them nor takes their (plain) VXLAN.
        t.iter()
            .filter(|(_, p)| p.overhead == 0)
            .map(|(id, p)| crate::port::opener::MirrorPeer {
                id,
                addr: p.addr,
                template: *p.template.bytes(),
                vnis: local
                    .iter()
                    .copied()
                    .filter(|v| p.vnis.contains(*v))
                    .collect(),
                uplink: uplink.clone(),
                max_inner: self.config.underlay_mtu.saturating_sub(TUNNEL_IP_OVERHEAD),
            })
            .collect()
    }

    /// Gives the switch its secure tunnels (before [`Switch::open_uplink`] and before any secure
    /// peer is added): peers registered there are reached only through them.
    pub fn set_secure(&mut self, secure: Arc<crate::secure::Secure>) {
        self.secure = Some(secure);
    }

    /// The secure tunnels, if this host has a key.
    pub fn secure(&self) -> Option<&Arc<crate::secure::Secure>> {
        self.secure.as_ref()
    }

    /// Sets how [`Switch::open_port`] opens ports (the daemon's datapath mode).
    pub fn set_opener(&mut self, opener: Box<dyn crate::port::opener::PortOpener>) {
        self.opener = Some(opener);
    }

    /// The datapath mode's name, if an opener is set.
    pub fn mode(&self) -> Option<&'static str> {
        self.opener.as_ref().map(|o| o.mode())
    }

    /// Counters of the datapath mode's shared machinery (the XDP program).
    pub fn datapath_counters(&self) -> Vec<(&'static str, u64)> {
        self.opener
            .as_ref()
            .map(|o| o.counters())
            .unwrap_or_default()
    }

    /// Counters kept by the uplink's backend.
    pub fn uplink_counters(&self) -> Vec<(&'static str, u64)> {
        self.uplink
            .as_ref()
            .map(|u| u.counters())
            .unwrap_or_default()
    }

    /// Counters kept by the backend of port `id`.
    pub fn port_counters(&self, id: PortId) -> Vec<(&'static str, u64)> {
        self.ports
            .get(usize::from(id.get()))
            .and_then(Option::as_ref)
            .map(|p| p.counters())
            .unwrap_or_default()
    }

    /// Takes over `interface` with the opener and attaches it as a port.
    ///
    /// # Errors
    /// A message: no opener set, the name is taken, the interface cannot be opened, or the
    /// port table is full.
    pub fn open_port(&mut self, interface: &str, config: PortConfig) -> Result<PortId, String> {
        if self.port_id(interface).is_some() {
            return Err(SwitchError::DuplicatePort(interface.to_owned()).to_string());
        }
        let opener = self
            .opener
            .as_mut()
            .ok_or("this switch has no datapath to open ports with")?;
        let backend = opener.open(interface)?;
        opener.port_configured(interface, &config);
        self.add_port(backend, config).map_err(|e| e.to_string())
    }

    /// Detaches a port, returning its backend.
    ///
    /// # Errors
    /// [`TablesError::NoSuchPort`].
    pub fn remove_port(&mut self, id: PortId) -> Result<Box<dyn PortBackend>, SwitchError> {
        self.tables.remove_port(id)?;
        self.ports
            .get_mut(usize::from(id.get()))
            .and_then(Option::take)
            .ok_or(SwitchError::Tables(TablesError::NoSuchPort(id)))
    }

    /// The name of port `id`.
    pub fn port_name(&self, id: PortId) -> Option<&str> {
        self.ports
            .get(usize::from(id.get()))?
            .as_ref()
            .map(|p| p.name())
    }

    /// The id of the port named `name`.
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports.iter().enumerate().find_map(|(i, p)| {
            p.as_ref()
                .filter(|p| p.name() == name)
                .map(|_| PortId::new(i as u16))
        })
    }

    /// Descriptors that become readable when any port or the uplink has frames (for ports backed
    /// by one).
    pub fn readable_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.ports
            .iter()
            .flatten()
            .chain(self.uplink.iter())
            .flat_map(|p| p.readable_fds())
            .collect()
    }

    /// Sets the uplink and this host's VTEP.
    pub fn set_uplink(&mut self, backend: Box<dyn PortBackend>, local: LocalVtep) {
        self.uplink = Some(backend);
        self.tables.set_local_vtep(local);
    }

    /// Adds a peer VTEP.
    ///
    /// # Errors
    /// No uplink, a duplicate, our own address, or a full peer table.
    pub fn add_peer(
        &mut self,
        addr: Ipv4Addr,
        next_hop: MacAddr,
        vnis: PeerVnis,
    ) -> Result<PeerId, SwitchError> {
        let id = self.tables.add_peer(addr, next_hop, vnis)?;
        let overhead = self
            .secure
            .as_ref()
            .filter(|s| s.is_secure(addr))
            .map(|s| s.overhead());
        if let Some(overhead) = overhead {
            self.tables.set_peer_overhead(id, overhead);
        } else if let Some(o) = self.opener.as_mut() {
            o.peer_added(addr, id);
        }
        Ok(id)
    }

    /// Removes a peer VTEP.
    ///
    /// # Errors
    /// No uplink or no such peer.
    pub fn remove_peer(&mut self, addr: Ipv4Addr) -> Result<PeerId, SwitchError> {
        let id = self.tables.remove_peer(addr)?;
        if let Some(o) = self.opener.as_mut() {
            o.peer_removed(addr);
        }
        Ok(id)
    }

    /// Installs a static FDB entry.
    ///
    /// # Errors
    /// [`FdbError`].
    pub fn add_static_fdb(
        &mut self,
        vni: Vni,
        mac: MacAddr,
        dest: Dest,
        now: Timestamp,
    ) -> Result<(), SwitchError> {
        Ok(self.tables.fdb.insert_static(vni, mac, dest, now)?)
    }

    /// Removes an FDB entry.
    pub fn remove_fdb(&mut self, vni: Vni, mac: MacAddr) -> bool {
        self.tables.fdb.remove(vni, mac).is_some()
    }

    /// Installs a static ARP entry.
    ///
    /// # Errors
    /// [`arp::ArpTableError`].
    pub fn add_static_arp(
        &mut self,
        vni: Vni,
        ip: Ipv4Addr,
        mac: MacAddr,
        now: Timestamp,
    ) -> Result<(), SwitchError> {
        Ok(self.tables.arp.insert_static(vni, ip, mac, now)?)
    }

    /// Moves frames: one batch from every port and from the uplink, then one transmit commit per
    /// port, then a slice of aging. Returns how many frames were received.
    pub fn poll(&mut self, now: Timestamp) -> usize {
        let Switch {
            config,
            tables,
            stats,
            ports,
            uplink,
            opener,
            mirror_on,
            mirror_full: _,
            mirror_keys: _,
            next_peer_sync: _,
            rx,
            scratch,
            segment,
            reply,
            next_aging,
            secure: _,
        } = self;
        let mut out = Out {
            ports,
            uplink,
            stats,
            scratch,
            segment,
            max_inner: config.underlay_mtu.saturating_sub(TUNNEL_IP_OVERHEAD),
        };
        let mut received = 0;

        for i in 0..out.ports.len() {
            let id = PortId::new(i as u16);
            let Some(port) = out.ports[i].as_mut() else {
                continue;
            };
            if port.recv_batch(rx).is_err() {
                Stats::event(&stats.events.port_errors);
                continue;
            }
            received += rx.len();
            for f in 0..rx.len() {
                let frame = rx.frame(f);
                stats.port(id).rx(frame.len());
                let verdict = tables.decide_port(id, frame, now, stats, reply);
                out.dispatch(tables, Some(id), frame, &rx.offload(f), verdict, reply);
            }
        }

        if let Some(up) = out.uplink.as_mut() {
            if up.recv_batch(rx).is_err() {
                Stats::event(&stats.events.port_errors);
            } else {
                received += rx.len();
                for f in 0..rx.len() {
                    let frame = rx.frame(f);
                    stats.uplink.rx(frame.len());
                    let r = tables.decide_underlay(frame, now, stats);
                    if !matches!(r.verdict, Verdict::Drop(_)) {
                        Stats::event(&stats.events.decapsulated);
                    }
                    // A super-frame a peer sent in one datagram keeps its description (offsets
                    // relative to the inner frame).
                    let off = rx.offload(f);
                    out.dispatch(tables, None, r.inner, &off, r.verdict, reply);
                }
            }
        }

        for p in out.ports.iter_mut().flatten() {
            if p.flush().is_err() {
                Stats::event(&stats.events.port_errors);
            }
        }
        if let Some(up) = out.uplink.as_mut() {
            if up.flush().is_err() {
                Stats::event(&stats.events.port_errors);
            }
        }

        if now >= *next_aging {
            // An idle worker polls every IDLE_WAIT, not every AGING_INTERVAL: sweep as many
            // slots as the steps it slept through would have (at most 32 steps' worth), so a
            // full sweep takes the same time busy or idle and an expired entry (one the kernel
            // may still forward to) is gone within a sweep of expiring.
            let late = now.since(*next_aging).as_nanos() / AGING_INTERVAL.as_nanos().max(1);
            let steps = usize::try_from(late)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
                .min(32);
            let budget = config.aging_budget.saturating_mul(steps);
            *next_aging = now.plus(AGING_INTERVAL);
            let aged = match opener.as_mut() {
                // The kernel forwards known stations without user space seeing them: ask it
                // before forgetting one.
                Some(o) if *mirror_on => tables
                    .fdb
                    .age_step_with(now, budget, |k, _| o.mirror_seen(k.vni, k.mac)),
                _ => tables.fdb.age_step(now, budget),
            };
            stats
                .events
                .fdb_aged
                .fetch_add(aged as u64, std::sync::atomic::Ordering::Relaxed);
            tables.arp.age_step(now, budget);
        }
        received
    }
}

/// The transmit side of one poll: split borrows of the switch.
struct Out<'a> {
    ports: &'a mut Vec<Option<Box<dyn PortBackend>>>,
    uplink: &'a mut Option<Box<dyn PortBackend>>,
    stats: &'a Stats,
    scratch: &'a mut [u8],
    segment: &'a mut [u8],
    max_inner: usize,
}

impl Out<'_> {
    /// The longest inner frame the tunnel to `peer` carries.
    #[inline]
    fn max_inner_to(&self, tables: &Tables, peer: PeerId) -> usize {
        let overhead = tables
            .peers()
            .and_then(|t| t.get(peer))
            .map_or(0, |p| p.overhead);
        self.max_inner.saturating_sub(overhead)
    }

    /// Carries out `verdict` for `frame`, which came from port `ingress` (or from the underlay
    /// when `None`).
    #[inline]
    fn dispatch(
        &mut self,
        tables: &Tables,
        ingress: Option<PortId>,
        frame: &[u8],
        offload: &Offload,
        verdict: Verdict,
        reply: &[u8],
    ) {
        match verdict {
            Verdict::Drop(reason) => self.stats.drop(reason),
            Verdict::Forward(p) => {
                Stats::event(&self.stats.events.forwarded);
                self.send_to_port(p, frame, offload);
            }
            Verdict::Reply(n) => {
                if let (Some(p), Some(r)) = (ingress, reply.get(..n)) {
                    self.send_to_port(p, r, &Offload::NONE);
                }
            }
            Verdict::Tunnel { peer, vni } => {
                if let Some(p) = ingress {
                    let max_inner = self.max_inner_to(tables, peer);
                    if !offload.is_gso() && frame.len() > max_inner {
                        // Too big for the tunnel: tell the sender (IPv4 with DF), so TCP
                        // path-MTU discovery finds the overlay's MTU.
                        let mtu = max_inner.saturating_sub(crate::icmp::ETH_HEADER) as u16;
                        if let Some(n) = crate::icmp::frag_needed(frame, mtu, self.segment) {
                            Stats::event(&self.stats.events.icmp_frag_needed);
                            send_one(self.ports, self.stats, p, &self.segment[..n]);
                        }
                    }
                }
                self.send_to_peer(tables, peer, vni, frame, offload)
            }
            Verdict::Flood(vni) => {
                Stats::event(&self.stats.events.flooded);
                let Some(members) = tables.members(vni) else {
                    return;
                };
                for &p in &members.ports {
                    if Some(p) != ingress {
                        self.send_to_port(p, frame, offload);
                    }
                }
                // Split horizon: what came from a tunnel never goes back into one.
                if ingress.is_some() {
                    for &peer in &members.peers {
                        self.send_to_peer(tables, peer, vni, frame, offload);
                    }
                }
            }
        }
    }

    /// Sends to a local port. Offload metadata passes through to ports that carry it; for the
    /// others a partial checksum is completed here (in the scratch buffer) and a GSO super-frame,
    /// which they cannot segment, is dropped.
    #[inline]
    fn send_to_port(&mut self, id: PortId, frame: &[u8], offload: &Offload) {
        let Some(port) = self
            .ports
            .get_mut(usize::from(id.get()))
            .and_then(Option::as_mut)
        else {
            self.stats.drop(DropReason::NoSuchPort);
            return;
        };
        let sent = if port.carries_offloads() || *offload == Offload::NONE {
            port.send(frame, offload)
        } else if offload.is_gso() {
            // A port that cannot take a super-frame gets its segments.
            let stats = self.stats;
            let mut sent = 0;
            let r = crate::gso::segment(frame, offload, self.segment, |seg| {
                match port.send(seg, &Offload::NONE) {
                    Ok(true) => {
                        sent += 1;
                        stats.port(id).tx(seg.len());
                    }
                    Ok(false) => stats.drop(DropReason::TxQueueFull),
                    Err(_) => Stats::event(&stats.events.port_errors),
                }
            });
            if r.is_err() {
                self.stats.drop(DropReason::GsoUnsupported);
            }
            return;
        } else {
            let Some(copy) = self.scratch.get_mut(..frame.len()) else {
                self.stats.drop(DropReason::GsoUnsupported);
                return;
            };
            copy.copy_from_slice(frame);
            if offload.needs_csum() && !offload.complete_checksum(copy) {
                self.stats.drop(DropReason::Truncated);
                return;
            }
            port.send(copy, &Offload::NONE)
        };
        match sent {
            Ok(true) => self.stats.port(id).tx(frame.len()),
            Ok(false) => self.stats.drop(DropReason::TxQueueFull),
            Err(_) => Stats::event(&self.stats.events.port_errors),
        }
    }

    /// Encapsulates to a peer. Checksums left partial are completed in the encapsulated copy;
    /// TCP super-frames are cut into segments first (others are dropped as `gso_unsupported`).
    #[inline]
    fn send_to_peer(
        &mut self,
        tables: &Tables,
        peer: PeerId,
        vni: Vni,
        frame: &[u8],
        offload: &Offload,
    ) {
        let (Some(up), Some(p)) = (
            self.uplink.as_mut(),
            tables.peers().and_then(|t| t.get(peer)),
        ) else {
            self.stats.drop(DropReason::NoUplink);
            return;
        };
        let max_inner = self.max_inner.saturating_sub(p.overhead);
        if offload.is_gso() {
            // Cut into segments of at most gso_size bytes, each tunnelled on its own.
            let segment = &mut *self.segment;
            let scratch = &mut *self.scratch;
            let stats = self.stats;
            let r = crate::gso::segment(frame, offload, segment, |seg| {
                encapsulate_and_send(
                    up.as_mut(),
                    p,
                    vni,
                    seg,
                    &Offload::NONE,
                    scratch,
                    max_inner,
                    stats,
                );
            });
            if r.is_err() {
                self.stats.drop(DropReason::GsoUnsupported);
            }
            return;
        }
        encapsulate_and_send(
            up.as_mut(),
            p,
            vni,
            frame,
            offload,
            self.scratch,
            max_inner,
            self.stats,
        );
    }
}

/// Sends one complete frame (no offloads) to port `id`, counting it.
fn send_one(ports: &mut [Option<Box<dyn PortBackend>>], stats: &Stats, id: PortId, frame: &[u8]) {
    let Some(port) = ports
        .get_mut(usize::from(id.get()))
        .and_then(Option::as_mut)
    else {
        stats.drop(DropReason::NoSuchPort);
        return;
    };
    match port.send(frame, &Offload::NONE) {
        Ok(true) => stats.port(id).tx(frame.len()),
        Ok(false) => stats.drop(DropReason::TxQueueFull),
        Err(_) => Stats::event(&stats.events.port_errors),
    }
}

/// Encapsulates one frame (at most `max_inner` bytes) toward peer `p` and sends it.
#[allow(clippy::too_many_arguments)]
#[inline]
fn encapsulate_and_send(
    up: &mut dyn PortBackend,
    p: &tunnel::Peer,
    vni: Vni,
    frame: &[u8],
    offload: &Offload,
    scratch: &mut [u8],
    max_inner: usize,
    stats: &Stats,
) {
    if frame.len() > max_inner {
        stats.drop(DropReason::TooBigForTunnel);
        return;
    }
    let Ok(n) = p.template.encapsulate(vni, frame, scratch) else {
        stats.drop(DropReason::TooBigForTunnel);
        return;
    };
    if offload.needs_csum() && !offload.complete_checksum(&mut scratch[tunnel::OUTER_LEN..n]) {
        stats.drop(DropReason::Truncated);
        return;
    }
    match up.send(&scratch[..n], &Offload::NONE) {
        Ok(true) => {
            Stats::event(&stats.events.encapsulated);
            stats.uplink.tx(n);
        }
        Ok(false) => stats.drop(DropReason::TxQueueFull),
        Err(_) => Stats::event(&stats.events.port_errors),
    }
}
