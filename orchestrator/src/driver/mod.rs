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

use crate::sys::{self, InfraError, Result};

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

/// An interface name on a host for `key` (a VM's or a host's name): `prefix` (two letters)
/// and 52 bits of SHA-256 of `key`, 15 characters (the kernel's limit). Two keys that hash
/// alike are refused when the second is made ([`claim_link`]), never confused.
pub fn interface_name(prefix: &str, key: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key.as_bytes());
    let hex: String = d.iter().take(7).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..13])
}

/// Whom interface `ifname` in namespace `ns` belongs to (its alias without the `kangaroo `
/// in front, e.g. `vm web-1`): `None` if it does not exist, `Some("")` if it carries no owner
/// (left by a create that stopped before marking it).
fn link_owner(ns: &str, ifname: &str) -> Option<String> {
    let out = sys::run(&["ip", "-n", ns, "-o", "link", "show", "dev", ifname]).ok()?;
    let owner = out
        .split('\\')
        .map(str::trim)
        .find_map(|l| l.strip_prefix("alias "))
        .and_then(|a| a.strip_prefix("kangaroo "))
        .unwrap_or("");
    Some(owner.to_owned())
}

/// Checks that interface `ifname` in `ns` may be `owner`'s (`vm NAME`, `host NAME`): true if
/// it exists and is (or carries no owner: an interrupted create of its own), false if it does
/// not exist.
///
/// # Errors
/// When another owner made it (their interface names collide).
pub fn claim_link(ns: &str, ifname: &str, owner: &str) -> Result<bool> {
    match link_owner(ns, ifname) {
        None => Ok(false),
        Some(o) if o.is_empty() || o == owner => Ok(true),
        Some(other) => Err(InfraError::new(
            format!("giving {owner} its interface {ifname} in {ns}"),
            format!(
                "{ifname} is {other}'s: the two names map to one interface name; rename one of them"
            ),
        )),
    }
}

/// Marks interface `ifname` in `ns` as `owner`'s.
pub fn mark_link(ns: &str, ifname: &str, owner: &str) -> Result<()> {
    let alias = format!("kangaroo {owner}");
    sys::run(&[
        "ip", "-n", ns, "link", "set", "dev", ifname, "alias", &alias,
    ])?;
    Ok(())
}

/// Deletes interface `ifname` in `ns` if it is `owner`'s (or carries no owner); another's is
/// left alone.
pub fn delete_own_link(ns: &str, ifname: &str, owner: &str) -> Result<()> {
    if sys::netns_exists(ns)
        && matches!(link_owner(ns, ifname), Some(o) if o.is_empty() || o == owner)
    {
        sys::run(&["ip", "-n", ns, "link", "del", ifname])?;
    }
    Ok(())
}

/// The owner of a VM's interfaces, for [`claim_link`].
pub fn vm_owner(vm: &VmSpec) -> String {
    format!("vm {}", vm.name)
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_and_carry_52_bits() {
        let a = interface_name("kn", "web-1");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("kn"));
        assert_eq!(a, interface_name("kn", "web-1"), "deterministic");
        assert_ne!(a, interface_name("kn", "web-2"));
        // The 32-bit FNV names collided for names a few thousand tries apart; 52 bits of
        // SHA-256 over 100,000 names do not.
        let names: std::collections::HashSet<String> = (0..100_000)
            .map(|i| interface_name("kn", &format!("vm-{i}")))
            .collect();
        assert_eq!(names.len(), 100_000);
    }
}
