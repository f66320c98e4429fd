//! Opening ports by interface name, for the configured datapath mode.
//!
//! The daemon opens its configured ports and the control API hot-adds more through the same
//! [`PortOpener`], so a port added at run time works exactly like one from the config file.

use std::sync::{Arc, Mutex};

use super::PortBackend;

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
    fn peer_added(&mut self, _addr: std::net::Ipv4Addr) {}

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

/// AF_XDP ports steered by the XDP program. With several datapath workers, worker `w` of `n`
/// owns receive queues `q` with `q % n == w` of every port (one socket each); all workers share
/// the one loaded program.
#[cfg(target_os = "linux")]
pub struct AfXdpOpener {
    steering: Arc<Mutex<crate::xdp::XdpSteering>>,
    config: super::afxdp::AfXdpConfig,
    worker: u32,
    workers: u32,
}

#[cfg(target_os = "linux")]
impl AfXdpOpener {
    /// Loads the XDP program (attached to each port as it opens), for a single worker.
    ///
    /// # Errors
    /// [`crate::xdp::XdpError`] if the kernel refuses the program.
    pub fn new(config: super::afxdp::AfXdpConfig) -> Result<AfXdpOpener, crate::xdp::XdpError> {
        Ok(AfXdpOpener {
            steering: Arc::new(Mutex::new(crate::xdp::XdpSteering::load(false)?)),
            config,
            worker: 0,
            workers: 1,
        })
    }

    /// The opener for worker `worker` of `workers`, sharing this one's program.
    pub fn for_worker(&self, worker: u32, workers: u32) -> AfXdpOpener {
        AfXdpOpener {
            steering: self.steering.clone(),
            config: self.config,
            worker,
            workers: workers.max(1),
        }
    }
}

#[cfg(target_os = "linux")]
impl PortOpener for AfXdpOpener {
    fn mode(&self) -> &'static str {
        "afxdp"
    }

    fn open(&mut self, interface: &str) -> Result<Box<dyn PortBackend>, String> {
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

    fn peer_added(&mut self, addr: std::net::Ipv4Addr) {
        if let Ok(mut s) = self.steering.lock() {
            if let Err(e) = s.add_peer(addr) {
                tracing::warn!(peer = %addr, error = %e, "the uplink XDP program will not see this peer");
            }
        }
    }

    fn peer_removed(&mut self, addr: std::net::Ipv4Addr) {
        if let Ok(mut s) = self.steering.lock() {
            s.remove_peer(addr);
        }
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
