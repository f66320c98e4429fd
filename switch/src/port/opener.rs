//! Opening ports by interface name, for the configured datapath mode.
//!
//! The daemon opens its configured ports and the control API hot-adds more through the same
//! [`PortOpener`], so a port added at run time works exactly like one from the config file.

use std::sync::{Arc, Mutex};

use super::PortBackend;
use crate::mac::MacAddr;
use crate::tunnel::Vni;

/// Where a mirrored FDB entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorDest<'a> {
    /// The local port on this interface.
    Port(&'a str),
    /// The peer with this id.
    Vtep(crate::tunnel::PeerId),
}

/// A peer as the kernel's fast path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPeer {
    /// Its id.
    pub id: crate::tunnel::PeerId,
    /// Its VTEP address.
    pub addr: std::net::Ipv4Addr,
    /// Outer headers toward it (next-hop MAC not filled in).
    pub template: [u8; crate::tunnel::OUTER_LEN],
    /// The networks it shares that have local ports.
    pub vnis: Vec<Vni>,
    /// The uplink interface.
    pub uplink: String,
    /// Longest inner frame that fits the underlay.
    pub max_inner: usize,
}

/// Opens ports of one datapath mode.
pub trait PortOpener: Send {
    /// The mode's name (`packet`, `afxdp`).
    fn mode(&self) -> &'static str;

    /// Takes over `interface` as a port.
    ///
    /// # Errors
    /// A message naming what failed.
    fn open(&mut self, interface: &str) -> Result<Box<dyn PortBackend>, String>;

    /// Counters of the mode's shared machinery (the XDP program), as (name, value).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// A peer VTEP was added (the uplink XDP program must let its VXLAN through).
    fn peer_added(&mut self, _addr: std::net::Ipv4Addr, _id: crate::tunnel::PeerId) {}

    /// A port was opened on `interface` with `config` (the fast path must know its network and
    /// port security).
    fn port_configured(&mut self, _interface: &str, _config: &crate::pipeline::PortConfig) {}

    /// True if this opener keeps the kernel's mirror of the tables (mode "xdp", first worker).
    fn mirrors(&self) -> bool {
        false
    }

    /// Mirrors an FDB entry (`None`: removes it).
    fn mirror_fdb(&mut self, _vni: Vni, _mac: MacAddr, _dest: Option<MirrorDest<'_>>) {}

    /// Empties the FDB mirror.
    fn mirror_fdb_clear(&mut self) {}

    /// True if the kernel saw the station send since the last call.
    fn mirror_seen(&mut self, _vni: Vni, _mac: MacAddr) -> bool {
        false
    }

    /// Mirrors an ARP entry (`None`: removes it).
    fn mirror_arp(&mut self, _vni: Vni, _ip: std::net::Ipv4Addr, _mac: Option<MacAddr>) {}

    /// Empties the ARP mirror.
    fn mirror_arp_clear(&mut self) {}

    /// Mirrors the peers: how to reach each, and the networks each shares.
    fn mirror_peers(&mut self, _peers: &[MirrorPeer]) {}

    /// A peer VTEP was removed.
    fn peer_removed(&mut self, _addr: std::net::Ipv4Addr) {}

    /// True when several workers open the same interfaces (sockets must share them).
    fn shared(&self) -> bool {
        false
    }

    /// Opens the uplink on `interface` with this host's VTEP address and port: VXLAN through the
    /// host's IP stack ([`super::underlay::UnderlayPort`]).
    ///
    /// # Errors
    /// A message naming what failed.
    fn open_uplink(
        &mut self,
        interface: &str,
        local: std::net::SocketAddrV4,
        mac: crate::mac::MacAddr,
        inner_mtu: usize,
    ) -> Result<Box<dyn PortBackend>, String> {
        super::underlay::UnderlayPort::open(interface, local, mac, inner_mtu, self.shared())
            .map(|p| Box::new(p) as Box<dyn PortBackend>)
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    }
}

/// AF_PACKET ports. With several datapath workers each opens its own socket per port, all in
/// one fanout group.
#[derive(Debug, Default)]
pub struct PacketOpener {
    /// Join the interface's fanout group.
    pub fanout: bool,
}

impl PortOpener for PacketOpener {
    fn mode(&self) -> &'static str {
        "packet"
    }

    fn shared(&self) -> bool {
        self.fanout
    }

    fn open(&mut self, interface: &str) -> Result<Box<dyn PortBackend>, String> {
        super::packet::PacketPort::open_in_fanout(interface, self.fanout)
            .map(|p| Box::new(p) as Box<dyn PortBackend>)
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    }
}

/// Mode "tc": each port's punt device name, by port interface, with a token that is live while
/// an instance of the port is open.
#[cfg(target_os = "linux")]
type PuntRegistry = std::collections::HashMap<String, (String, std::sync::Weak<()>)>;

/// Ports driven by the switch's eBPF programs: AF_XDP ports steered by the XDP program (modes
/// "afxdp" and "xdp"), or tc ports with their punt devices (mode "tc"). With several datapath
/// workers, worker `w` of `n` owns receive queues `q` with `q % n == w` of every AF_XDP port (one
/// socket each), or one queue of every tc port's punt device; all workers share the one loaded
/// object, and the first keeps its maps in sync.
#[cfg(target_os = "linux")]
pub struct EbpfOpener {
    steering: Arc<Mutex<crate::xdp::XdpSteering>>,
    /// Mode "tc": each port's punt device, by port interface (the first worker to open a port
    /// creates it, the others join it). Held while a tc port opens.
    punts: Arc<Mutex<PuntRegistry>>,
    config: super::afxdp::AfXdpConfig,
    worker: u32,
    workers: u32,
    /// Next hops resolved for peers (address -> MAC), kept while the kernel forgets them.
    next_hops: std::collections::HashMap<std::net::Ipv4Addr, MacAddr>,
    /// Peer ids whose templates are installed.
    installed: Vec<crate::tunnel::PeerId>,
}

#[cfg(target_os = "linux")]
impl EbpfOpener {
    /// Loads the XDP program (attached to each port as it opens), for a single worker, with a
    /// kernel FDB mirror of `fdb_entries` entries.
    ///
    /// # Errors
    /// [`crate::xdp::XdpError`] if the kernel refuses the program.
    pub fn new(
        config: super::afxdp::AfXdpConfig,
        fast: bool,
        fdb_entries: u32,
    ) -> Result<EbpfOpener, crate::xdp::XdpError> {
        EbpfOpener::with_hook(crate::xdp::Hook::Xdp, config, fast, fdb_entries)
    }

    /// As [`EbpfOpener::new`], for the programs of `hook` (mode "tc": [`crate::xdp::Hook::Tc`],
    /// always fast).
    ///
    /// # Errors
    /// As [`EbpfOpener::new`].
    pub fn with_hook(
        hook: crate::xdp::Hook,
        config: super::afxdp::AfXdpConfig,
        fast: bool,
        fdb_entries: u32,
    ) -> Result<EbpfOpener, crate::xdp::XdpError> {
        Ok(EbpfOpener {
            steering: Arc::new(Mutex::new(crate::xdp::XdpSteering::load_hook(
                hook,
                false,
                fast,
                Some(fdb_entries),
            )?)),
            punts: Arc::default(),
            config,
            worker: 0,
            workers: 1,
            next_hops: std::collections::HashMap::new(),
            installed: Vec::new(),
        })
    }

    fn is_tc(&self) -> bool {
        self.with(|s| s.hook() == crate::xdp::Hook::Tc)
            .unwrap_or(false)
    }

    fn with<T>(&self, f: impl FnOnce(&mut crate::xdp::XdpSteering) -> T) -> Option<T> {
        self.steering.lock().ok().map(|mut s| f(&mut s))
    }

    /// Sets the storm limits the kernel applies before the slow path (the switch's `[storm]`).
    ///
    /// # Errors
    /// [`crate::xdp::XdpError`] if the map cannot be written.
    pub fn set_storm(&self, cfg: &crate::storm::StormConfig) -> Result<(), crate::xdp::XdpError> {
        self.with(|s| s.set_storm(cfg)).unwrap_or_else(|| {
            Err(crate::xdp::XdpError::Load(
                "the program's lock is poisoned".into(),
            ))
        })
    }

    /// The opener for worker `worker` of `workers`, sharing this one's program.
    pub fn for_worker(&self, worker: u32, workers: u32) -> EbpfOpener {
        EbpfOpener {
            steering: self.steering.clone(),
            punts: self.punts.clone(),
            config: self.config,
            worker,
            workers: workers.max(1),
            next_hops: std::collections::HashMap::new(),
            installed: Vec::new(),
        }
    }
}

#[cfg(target_os = "linux")]
impl PortOpener for EbpfOpener {
    fn mode(&self) -> &'static str {
        match self.with(|s| (s.hook(), s.is_fast())) {
            Some((crate::xdp::Hook::Tc, _)) => "tc",
            Some((_, true)) => "xdp",
            _ => "afxdp",
        }
    }

    fn open(&mut self, interface: &str) -> Result<Box<dyn PortBackend>, String> {
        if self.is_tc() {
            let mut punts = self
                .punts
                .lock()
                .map_err(|_| "the punt registry is poisoned".to_owned())?;
            // Join the device of this port's open instance on another worker, if there is one.
            let live = punts
                .get(interface)
                .filter(|(_, alive)| alive.upgrade().is_some())
                .map(|(name, _)| name.clone());
            let port = super::tc::TcPort::open(
                interface,
                self.steering.clone(),
                live.as_deref(),
                self.workers > 1,
            )
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
            if live.is_none() {
                punts.insert(
                    interface.to_owned(),
                    (port.punt_name().to_owned(), port.liveness()),
                );
            }
            return Ok(Box::new(port));
        }
        super::afxdp::AfXdpPort::open(
            interface,
            self.steering.clone(),
            &self.config,
            (self.worker, self.workers),
        )
        .map(|p| Box::new(p) as Box<dyn PortBackend>)
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    }

    fn shared(&self) -> bool {
        self.workers > 1
    }

    fn peer_added(&mut self, addr: std::net::Ipv4Addr, id: crate::tunnel::PeerId) {
        if let Ok(mut s) = self.steering.lock() {
            if let Err(e) = s.add_peer(addr, u32::from(id.get())) {
                tracing::warn!(peer = %addr, error = %e, "the uplink XDP program will not see this peer");
            }
        }
    }

    fn port_configured(&mut self, interface: &str, config: &crate::pipeline::PortConfig) {
        if let Some(Err(e)) = self.with(|s| s.configure_port(interface, config)) {
            tracing::warn!(interface, error = %e, "the fast path will not handle this port");
        }
    }

    fn mirrors(&self) -> bool {
        self.worker == 0 && self.with(|s| s.is_fast()).unwrap_or(false)
    }

    fn mirror_fdb(&mut self, vni: Vni, mac: MacAddr, dest: Option<MirrorDest<'_>>) {
        let r = self.with(|s| {
            let d = match dest {
                None => None,
                // A port the program cannot redirect to is left to user space.
                Some(MirrorDest::Port(name)) => {
                    s.ifindex_of(name).map(|i| (kangaroo_xdp::DEST_PORT, i))
                }
                Some(MirrorDest::Vtep(p)) => Some((kangaroo_xdp::DEST_VTEP, u32::from(p.get()))),
            };
            s.fdb_set(vni.get(), mac.octets(), d)
        });
        if let Some(Err(e)) = r {
            tracing::debug!(%mac, error = %e, "FDB entry not mirrored (user space forwards it)");
        }
    }

    fn mirror_fdb_clear(&mut self) {
        self.with(|s| s.fdb_clear());
    }

    fn mirror_seen(&mut self, vni: Vni, mac: MacAddr) -> bool {
        self.with(|s| s.fdb_seen(vni.get(), mac.octets()))
            .unwrap_or(false)
    }

    fn mirror_arp(&mut self, vni: Vni, ip: std::net::Ipv4Addr, mac: Option<MacAddr>) {
        if let Some(Err(e)) = self.with(|s| s.arp_set(vni.get(), ip, mac.map(MacAddr::octets))) {
            tracing::debug!(%ip, error = %e, "ARP entry not mirrored");
        }
    }

    fn mirror_arp_clear(&mut self) {
        self.with(|s| s.arp_clear());
    }

    fn mirror_peers(&mut self, peers: &[MirrorPeer]) {
        let mut pairs = Vec::new();
        for p in peers {
            if let Some(mac) = crate::xdp::next_hop_mac(&p.uplink, p.addr) {
                self.next_hops.insert(p.addr, mac);
            }
            let hop = self.next_hops.get(&p.addr).copied();
            let uplink = self.with(|s| s.ifindex_of(&p.uplink)).flatten();
            let vtep = match (hop, uplink) {
                (Some(mac), Some(uplink)) => {
                    let mut hdr = p.template;
                    hdr[..6].copy_from_slice(&mac.octets());
                    Some(kangaroo_xdp::Vtep {
                        hdr,
                        valid: 1,
                        addr: u32::from_ne_bytes(p.addr.octets()),
                        uplink,
                        max_inner: p.max_inner as u32,
                    })
                }
                // No next hop yet: user space sends (the kernel then resolves it).
                _ => None,
            };
            self.with(|s| s.vtep_set(u32::from(p.id.get()), vtep.as_ref()));
            pairs.extend(p.vnis.iter().map(|v| (p.addr, v.get())));
        }
        self.with(|s| s.peer_vnis_set(&pairs));
        // Peers that are gone: withdraw their templates.
        for gone in self
            .installed
            .iter()
            .filter(|id| !peers.iter().any(|p| p.id == **id))
        {
            self.with(|s| s.vtep_set(u32::from(gone.get()), None));
        }
        self.installed = peers.iter().map(|p| p.id).collect();
    }

    fn peer_removed(&mut self, addr: std::net::Ipv4Addr) {
        self.with(|s| s.remove_peer(addr));
    }

    fn open_uplink(
        &mut self,
        interface: &str,
        local: std::net::SocketAddrV4,
        mac: crate::mac::MacAddr,
        inner_mtu: usize,
    ) -> Result<Box<dyn PortBackend>, String> {
        let fmt = |e: super::PortError| format!("{:#}", anyhow::Error::from(e));
        let ip =
            super::underlay::UnderlayPort::open(interface, local, mac, inner_mtu, self.shared())
                .map_err(fmt)?;
        if self.is_tc() {
            // One program per interface, shared by the workers' uplinks (attach counts them).
            return super::tc::TcUplink::open(ip, self.steering.clone(), local)
                .map(|u| Box::new(u) as Box<dyn PortBackend>)
                .map_err(fmt);
        }
        let xdp = super::afxdp::AfXdpPort::open_with(
            interface,
            self.steering.clone(),
            &self.config,
            (self.worker, self.workers),
            crate::xdp::Program::Uplink,
        )
        .map_err(fmt)?;
        self.steering
            .lock()
            .map_err(|_| "the XDP state is poisoned".to_owned())?
            .set_uplink(&xdp.attachment(), *local.ip(), local.port())
            .map_err(|e| e.to_string())?;
        Ok(Box::new(super::underlay::SteeredUplink { xdp, ip }))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let Ok(s) = self.steering.lock() else {
            return Vec::new();
        };
        kangaroo_xdp::Counter::ALL
            .iter()
            .zip(s.counters())
            .map(|(c, v)| (c.name(), v))
            .collect()
    }
}
