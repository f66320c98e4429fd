//! Nested-VM drivers: how a VM is made, started, stopped, observed and moved on a host.
//! [`netns`]: a network namespace and a process (fast; moves restart it). [`qemu`]: a real
//! virtual machine under QEMU (KVM where it works, else TCG), live-migrated over QMP.
//!
//! A driver touches only the host it is given (its namespace and directory): the orchestrator's
//! reconciler, or a host's agent, calls it for that host.

pub mod netns;
pub mod qemu;
pub mod qmp;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sys::Result;

/// Which driver runs a VM.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum VmDriverKind {
    /// A real virtual machine under QEMU; live migration.
    Qemu,
    /// A network namespace and a process; moves restart it.
    Netns,
}

impl VmDriverKind {
    /// Every driver.
    pub const ALL: [VmDriverKind; 2] = [VmDriverKind::Qemu, VmDriverKind::Netns];

    /// Name in the API, the state and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            VmDriverKind::Qemu => "qemu",
            VmDriverKind::Netns => "netns",
        }
    }
}

impl std::fmt::Display for VmDriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a driver needs to know about a nested VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Name (unique in the orchestrator).
    pub name: String,
    /// vCPUs in quarters.
    pub cpu_quarters: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// MAC address, `02:6b:…`.
    pub mac: String,
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length of its network.
    pub prefix: u8,
    /// The network's VNI.
    pub vni: u32,
    /// An address the guest keeps checking (ping and HTTP), publishing the tally at
    /// `/probe.txt` (QEMU guests), to observe VM-to-VM connectivity from outside.
    pub probe: Option<Ipv4Addr>,
}

/// Where a VM's host is, as a driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRef {
    /// Host name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its underlay address.
    pub underlay: Ipv4Addr,
    /// A directory for this host's files (pid files, sockets, logs).
    pub dir: PathBuf,
}

/// What a driver reports about a VM on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStatus {
    /// Not there.
    Absent,
    /// There, not running.
    Stopped,
    /// Running.
    Running,
    /// Waiting for an incoming migration.
    Incoming,
}

/// Figures of one live migration.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct MigrationStats {
    /// Wall time from start to completion, in milliseconds.
    pub total_ms: u64,
    /// The hypervisor's measured downtime (VM paused), in milliseconds.
    pub downtime_ms: u64,
    /// Bytes of memory transferred.
    pub transferred_bytes: u64,
}

/// A nested-VM driver: how VMs are made and moved on a host.
pub trait VmDriver: Send + Sync {
    /// Which driver this is.
    fn kind(&self) -> VmDriverKind;
    /// Whether `migrate_out` keeps the VM running (live) or restarts it at the destination.
    fn live_migration(&self) -> bool;
    /// The host-side interface of the VM's NIC on `host` (the switch port).
    fn port_name(&self, vm: &VmSpec) -> String;
    /// Creates the VM on `host` and starts it; its NIC's host side is `port_name`. Idempotent:
    /// a VM already running there is left as it is.
    fn create(&self, host: &HostRef, vm: &VmSpec) -> Result<()>;
    /// Starts a stopped VM.
    fn start(&self, host: &HostRef, vm: &VmSpec) -> Result<()>;
    /// Stops a VM (it keeps its disk/state where the driver has one).
    fn stop(&self, host: &HostRef, vm: &VmSpec) -> Result<()>;
    /// Removes every trace of the VM from `host`. Idempotent.
    fn destroy(&self, host: &HostRef, vm: &VmSpec) -> Result<()>;
    /// The VM's status on `host`.
    fn status(&self, host: &HostRef, vm: &VmSpec) -> VmStatus;
    /// Names of the VMs of this driver that have a trace on `host` (running or not).
    fn list(&self, host: &HostRef) -> Vec<String>;
    /// Prepares `dst` to receive the VM (its NIC's host side exists afterwards).
    fn prepare_incoming(&self, dst: &HostRef, vm: &VmSpec, port: u16) -> Result<()>;
    /// Moves the VM from `src` to the prepared `dst`; `progress` gets a line now and then.
    fn migrate_out(
        &self,
        src: &HostRef,
        dst: &HostRef,
        vm: &VmSpec,
        port: u16,
        progress: &mut dyn FnMut(&str),
    ) -> Result<MigrationStats>;
    /// Brings a migration that lost its orchestrator to an end: one still transferring from
    /// `host` is cancelled, and this waits until it has completed, failed or been cancelled, so
    /// that the copies' statuses afterwards are final. A driver whose migrations need no
    /// orchestrator-free step does nothing.
    fn settle(&self, _host: &HostRef, _vm: &VmSpec) {}
}

/// Names of the VMs whose directory on `host` (`<host dir>/vms/<name>`) holds `file`: how the
/// drivers find the VMs they made there.
pub fn vms_with_file(host: &HostRef, file: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(host.dir.join("vms"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(file).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}
