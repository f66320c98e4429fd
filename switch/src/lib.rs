//! `kangaroo-switch`: an L2 virtual switch for nested VMs across infrastructure VMs.
//!
//! The core is allocation-free after start-up: fixed-capacity tables ([`fdb`], [`arp`]), a pure
//! switching decision ([`pipeline`]), VXLAN tunnels ([`tunnel`]), and a [`switch::Switch`] that
//! polls [`port`] backends in batches. [`sim`] runs real TCP/IP stacks (smoltcp) through switches
//! on in-memory ports, deterministically.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod arp;
pub mod checksum;
pub mod clock;
pub mod config;
pub mod control;
pub mod datapath;
pub mod fdb;
pub mod gso;
pub mod icmp;
pub mod mac;
pub mod pipeline;
pub mod port;
pub mod rendezvous;
pub mod secure;
pub mod sim;
pub mod stats;
pub mod storm;
pub mod switch;
#[cfg(target_os = "linux")]
pub mod sys;
pub mod table;
pub mod tunnel;
#[cfg(target_os = "linux")]
pub mod xdp;

pub use clock::Timestamp;
pub use fdb::Dest;
pub use mac::MacAddr;
pub use pipeline::{PortConfig, Verdict};
pub use port::PortId;
pub use stats::DropReason;
pub use switch::{Switch, SwitchConfig};
pub use tunnel::{PeerId, Vni};
