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
}

/// AF_PACKET ports.
#[derive(Debug, Default)]
pub struct PacketOpener;

impl PortOpener for PacketOpener {
    fn mode(&self) -> &'static str {
        "packet"
    }

    fn open(&mut self, interface: &str) -> Result<Box<dyn PortBackend>, String> {
        super::packet::PacketPort::open(interface)
            .map(|p| Box::new(p) as Box<dyn PortBackend>)
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    }
}

/// AF_XDP ports steered by the XDP program.
#[cfg(target_os = "linux")]
pub struct AfXdpOpener {
    steering: Arc<Mutex<crate::xdp::XdpSteering>>,
    config: super::afxdp::AfXdpConfig,
}

#[cfg(target_os = "linux")]
impl AfXdpOpener {
    /// Loads the XDP program (attached to each port as it opens).
    ///
    /// # Errors
    /// [`crate::xdp::XdpError`] if the kernel refuses the program.
    pub fn new(config: super::afxdp::AfXdpConfig) -> Result<AfXdpOpener, crate::xdp::XdpError> {
        Ok(AfXdpOpener {
            steering: Arc::new(Mutex::new(crate::xdp::XdpSteering::load(false)?)),
            config,
        })
    }
}

#[cfg(target_os = "linux")]
impl PortOpener for AfXdpOpener {
    fn mode(&self) -> &'static str {
        "afxdp"
    }

    fn open(&mut self, interface: &str) -> Result<Box<dyn PortBackend>, String> {
        super::afxdp::AfXdpPort::open(interface, self.steering.clone(), &self.config)
            .map(|p| Box::new(p) as Box<dyn PortBackend>)
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
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
