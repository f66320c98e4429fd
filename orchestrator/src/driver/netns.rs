//! The `netns` nested-VM driver: a VM is a network namespace with one veth NIC (`eth0`, the
//! VM's MAC and address) and a process serving the same HTTP counter as the QEMU guest
//! (`kangaroo guest-service`). It starts in milliseconds, for tests and large demos. It cannot
//! migrate live: moving it stops it, moves its NIC to the destination host and starts it again
//! (the counter restarts), and the API reports that.

use std::path::PathBuf;
use std::time::Duration;

use super::{HostRef, MigrationStats, VmDriver, VmSpec, VmStatus};
use crate::sys;
use crate::sys::{InfraError, Result};

/// The driver.
#[derive(Debug, Clone)]
pub struct NetnsDriver {
    /// Prefix of the VMs' namespace names (the orchestrator instance's).
    pub prefix: String,
    /// The `kangaroo` binary (it runs `guest-service`).
    pub service_bin: PathBuf,
}

impl NetnsDriver {
    /// The VM's namespace.
    pub fn vm_netns(&self, vm: &VmSpec) -> String {
        format!("{}-v-{}", self.prefix, vm.name)
    }

    fn pidfile(host: &HostRef, vm: &VmSpec) -> PathBuf {
        host.dir.join("vms").join(&vm.name).join("service.pid")
    }

    fn start_service(&self, host: &HostRef, vm: &VmSpec) -> Result<()> {
        let pid = Self::pidfile(host, vm);
        if sys::live_pid(&pid).is_some() {
            return Ok(());
        }
        let dir = pid
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| host.dir.clone());
        crate::sys::private_dir(&dir)
            .map_err(|e| InfraError::new(format!("creating {}", dir.display()), e))?;
        let bin = self.service_bin.display().to_string();
        let listen = format!("{}:80", vm.ip);
        sys::spawn_detached(
            &self.vm_netns(vm),
            &[
                &bin,
                "guest-service",
                "--name",
                &vm.name,
                "--listen",
                &listen,
            ],
            &dir.join("service.log"),
            &pid,
        )?;
        Ok(())
    }
}

impl VmDriver for NetnsDriver {
    fn kind(&self) -> super::VmDriverKind {
        super::VmDriverKind::Netns
    }

    fn live_migration(&self) -> bool {
        false
    }

    fn port_name(&self, vm: &VmSpec) -> String {
        super::interface_name("kn", &vm.name)
    }

    fn create(&self, host: &HostRef, vm: &VmSpec) -> Result<()> {
        let ns = self.vm_netns(vm);
        let port = self.port_name(vm);
        sys::ensure_netns(&ns)?;
        if !super::claim_link(&host.netns, &port, &super::vm_owner(vm))? {
            // A NIC left from another host (an interrupted move) goes first.
            if sys::link_exists(&ns, "eth0") {
                sys::run(&["ip", "-n", &ns, "link", "del", "eth0"])?;
            }
            sys::run(&[
                "ip",
                "-n",
                &host.netns,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
        }
        super::mark_link(&host.netns, &port, &super::vm_owner(vm))?;
        let addr = format!("{}/{}", vm.ip, vm.prefix);
        sys::run(&["ip", "-n", &ns, "link", "set", "eth0", "address", &vm.mac])?;
        let _ = sys::run(&["ip", "-n", &ns, "addr", "replace", &addr, "dev", "eth0"]);
        sys::run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        // Frames the switch redirects from XDP into a veth need GRO (or XDP) on the receiving
        // end.
        let _ = sys::run_in(&ns, &["ethtool", "-K", "eth0", "gro", "on"]);
        sys::run(&["ip", "-n", &host.netns, "link", "set", &port, "up"])?;
        self.start_service(host, vm)
    }

    fn start(&self, host: &HostRef, vm: &VmSpec) -> Result<()> {
        self.create(host, vm)
    }

    fn stop(&self, host: &HostRef, vm: &VmSpec) -> Result<()> {
        sys::stop_pidfile(&Self::pidfile(host, vm), Duration::from_secs(2));
        Ok(())
    }

    fn destroy(&self, host: &HostRef, vm: &VmSpec) -> Result<()> {
        sys::stop_pidfile(&Self::pidfile(host, vm), Duration::from_secs(2));
        super::delete_own_link(&host.netns, &self.port_name(vm), &super::vm_owner(vm))?;
        sys::delete_netns(&self.vm_netns(vm))?;
        let _ = std::fs::remove_dir_all(host.dir.join("vms").join(&vm.name));
        Ok(())
    }

    fn status(&self, host: &HostRef, vm: &VmSpec) -> VmStatus {
        if !sys::netns_exists(&self.vm_netns(vm))
            || !sys::netns_exists(&host.netns)
            || !sys::link_exists(&host.netns, &self.port_name(vm))
        {
            return VmStatus::Absent;
        }
        if sys::live_pid(&Self::pidfile(host, vm)).is_some() {
            VmStatus::Running
        } else {
            VmStatus::Stopped
        }
    }

    fn list(&self, host: &HostRef) -> Vec<String> {
        super::vms_with_file(host, "service.pid")
    }

    fn prepare_incoming(&self, _dst: &HostRef, vm: &VmSpec, _port: u16) -> Result<()> {
        Err(InfraError::new(
            format!("preparing a live migration of {}", vm.name),
            "the netns driver moves VMs by stop-and-start, not live",
        ))
    }

    fn migrate_out(
        &self,
        _src: &HostRef,
        _dst: &HostRef,
        vm: &VmSpec,
        _port: u16,
        _progress: &mut dyn FnMut(&str),
    ) -> Result<MigrationStats> {
        Err(InfraError::new(
            format!("live-migrating {}", vm.name),
            "the netns driver moves VMs by stop-and-start, not live",
        ))
    }
}
