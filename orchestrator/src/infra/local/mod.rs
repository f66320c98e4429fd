//! The `local` provider: hosts are network namespaces on this machine.
//!
//! ```text
//!   <prefix>-ul  (the underlay router: one bridge per provider, routing between them)
//!     br0 10.210.0.1/24 ── host-1 (ul0 10.210.0.10) ── kangaroo-switch ── VMs' ports
//!                      └─ host-2 (ul0 10.210.0.11) ── kangaroo-switch ── …
//!     br1 10.211.0.1/24 ── host-3 (ul0 10.211.0.10) ── …
//! ```
//!
//! Each provider has its own underlay subnet, as two clouds would; the router namespace joins
//! them. Every host runs its own `kangaroo-switch` with the host's underlay interface as its
//! uplink and every other host as a peer; a VM's NIC becomes a port of its host's switch, with
//! port security set to the VM's MAC and address, and every switch holds a static FDB entry for
//! every VM, so a VM that moves is found at its new host at once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

mod rendezvous;
mod switch;

use crate::driver::{HostRef, MigrationStats, VmDriver, VmSpec, VmStatus};
use crate::sys::{self, short_hash, InfraError, Result};
use kangaroo_control::api::{FdbRequest, PeerRequest, PortRequest};
use kangaroo_control::client::Client;
use kangaroo_control::config::{
    self, MemberSection, RendezvousFile, SecureSection, SwitchFile, UplinkSection,
};
use kangaroo_control::Mode;

/// Settings of the local provider.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Prefix of every namespace and of nothing else (letters and digits, ≤ 8).
    pub prefix: String,
    /// Directory for the hosts' files (switch configurations, sockets, pid files, logs).
    pub state_dir: PathBuf,
    /// The `kangaroo-switch` binary.
    pub switch_bin: PathBuf,
    /// The switches' datapath mode (`tc`, `xdp`, `afxdp`, `packet`).
    pub switch_mode: Mode,
    /// Which tunnels between hosts are encrypted.
    pub secure: SecurePolicy,
}

/// Which tunnels between hosts are secure tunnels (the WireGuard protocol; the switch's
/// `encryption = "required"`), and which plain VXLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SecurePolicy {
    /// None: every tunnel is plain VXLAN (the switches get no key).
    Off,
    /// Between hosts of different providers (their underlay crosses networks the tenant does
    /// not control); plain VXLAN inside a provider.
    #[default]
    BetweenProviders,
    /// Every tunnel.
    Always,
}

impl SecurePolicy {
    /// Whether the tunnel between a host of provider `a` and one of `b` is encrypted.
    pub fn requires(self, a: &str, b: &str) -> bool {
        match self {
            SecurePolicy::Off => false,
            SecurePolicy::BetweenProviders => a != b,
            SecurePolicy::Always => true,
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SecurePolicy::Off => "off",
            SecurePolicy::BetweenProviders => "between-providers",
            SecurePolicy::Always => "always",
        }
    }
}

/// Underlay MTU: room for VXLAN's 50 bytes, a secure tunnel's 60 and the relay's 12 over the
/// VMs' 1500, so guests keep 1500 on every tunnel and every path.
pub const UNDERLAY_MTU: u32 = 1500 + 50 + 60 + 12;

/// Where the local cloud's rendezvous listens: an address of the router namespace outside every
/// provider's subnet, reached by every host through its default route.
pub const RENDEZVOUS: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(Ipv4Addr::new(10, 209, 0, 1), 51820);

/// A process that did not come up: `step` failed with the last line of its `log`.
fn not_started(step: impl Into<String>, log: &Path) -> InfraError {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    InfraError::new(
        step,
        text.lines()
            .last()
            .unwrap_or("it exited without a message")
            .to_owned(),
    )
}

/// Writes `text` to `path` through a temporary file and a rename (readers see the old or the
/// new file, never half of one).
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| InfraError::new(format!("writing {}", path.display()), e))
}

/// A peer a host's switch is to have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedPeer {
    /// The other host's underlay address (its VTEP).
    pub address: Ipv4Addr,
    /// Its public key when the tunnel to it is a secure one (`encryption = "required"`).
    pub public_key: Option<String>,
}

impl WantedPeer {
    /// A plain VXLAN peer.
    pub fn plain(address: Ipv4Addr) -> WantedPeer {
        WantedPeer {
            address,
            public_key: None,
        }
    }
}

/// Where a static FDB entry sends a MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdbDest {
    /// A port of this switch (its interface).
    Port(String),
    /// A peer switch (its VTEP address).
    Vtep(Ipv4Addr),
}

/// The underlay subnet of the `index`th local provider: 10.(210+index).0.0/24.
pub fn provider_subnet(index: usize) -> Result<Ipv4Addr> {
    let i = u8::try_from(index)
        .ok()
        .filter(|i| *i < 40)
        .ok_or_else(|| InfraError::new("the local underlay", "at most 40 local providers"))?;
    Ok(Ipv4Addr::new(10, 210 + i, 0, 0))
}

/// The address of the `n`th host (from 0) in a provider subnet.
pub fn host_address(subnet: Ipv4Addr, n: usize) -> Result<Ipv4Addr> {
    let n = u8::try_from(n + 10)
        .ok()
        .filter(|n| *n < 255)
        .ok_or_else(|| InfraError::new("the local underlay", "at most 245 hosts per provider"))?;
    let o = subnet.octets();
    Ok(Ipv4Addr::new(o[0], o[1], o[2], n))
}

/// The local cloud.
pub struct LocalCloud {
    cfg: LocalConfig,
    next_port: AtomicU16,
    /// Used by a host's agent: it reads the rendezvous' key but never starts the rendezvous
    /// or edits its members (the controller does).
    agent: bool,
}

impl LocalCloud {
    /// A local cloud with `cfg`.
    ///
    /// # Errors
    /// A bad prefix, or the state directory cannot be created.
    pub fn new(cfg: LocalConfig) -> Result<LocalCloud> {
        if cfg.prefix.is_empty()
            || cfg.prefix.len() > 8
            || !cfg
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(InfraError::new(
                "the local provider",
                format!("prefix {:?}: 1–8 lowercase letters or digits", cfg.prefix),
            ));
        }
        crate::sys::private_dir(&cfg.state_dir)
            .map_err(|e| InfraError::new(format!("creating {}", cfg.state_dir.display()), e))?;
        let seed = 40000 + (short_hash(&cfg.prefix) % 10000) as u16;
        Ok(LocalCloud {
            cfg,
            next_port: AtomicU16::new(seed),
            agent: false,
        })
    }

    /// The same cloud as a host's agent sees it (see the `agent` field).
    #[must_use]
    pub fn for_agent(mut self) -> LocalCloud {
        self.agent = true;
        self
    }

    /// The settings.
    pub fn config(&self) -> &LocalConfig {
        &self.cfg
    }

    /// The underlay router's namespace.
    pub fn router_netns(&self) -> String {
        format!("{}-ul", self.cfg.prefix)
    }

    /// A host's namespace.
    pub fn host_netns(&self, host: &str) -> String {
        format!("{}-h-{host}", self.cfg.prefix)
    }

    /// How drivers see host `name` at `underlay`.
    pub fn host_ref(&self, name: &str, underlay: Ipv4Addr) -> HostRef {
        HostRef {
            name: name.to_owned(),
            netns: self.host_netns(name),
            underlay,
            dir: self.cfg.state_dir.join("hosts").join(name),
        }
    }

    fn socket(host: &HostRef) -> PathBuf {
        host.dir.join("switch.sock")
    }

    /// Creates the router namespace and the bridge of provider `index` (idempotent).
    fn ensure_underlay(&self, index: usize) -> Result<Ipv4Addr> {
        let ns = self.router_netns();
        sys::ensure_netns(&ns)?;
        sys::run_in(&ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        let subnet = provider_subnet(index)?;
        let br = format!("br{index}");
        if !sys::link_exists(&ns, &br) {
            sys::run(&["ip", "-n", &ns, "link", "add", &br, "type", "bridge"])?;
            let o = subnet.octets();
            let gw = format!("{}.{}.{}.1/24", o[0], o[1], o[2]);
            sys::run(&["ip", "-n", &ns, "addr", "add", &gw, "dev", &br])?;
        }
        sys::run(&["ip", "-n", &ns, "link", "set", &br, "up"])?;
        Ok(subnet)
    }

    /// Rents host `name` of provider `index` at `underlay`: its namespace, its underlay link
    /// and its switch (idempotent: what exists is kept).
    ///
    /// # Errors
    /// The step that failed; what was made is removed again.
    pub fn rent_host(&self, name: &str, index: usize, underlay: Ipv4Addr) -> Result<HostRef> {
        self.released_on_error(name, || {
            let host = self.provision(name, index, underlay)?;
            self.ensure_switch(&host)?;
            Ok(host)
        })
    }

    /// `make`'s host, or its error with whatever it made of host `name` removed again.
    fn released_on_error(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<HostRef>,
    ) -> Result<HostRef> {
        let r = make();
        if r.is_err() {
            let _ = self.release_host(name);
        }
        r
    }

    /// Makes host `name` of provider `index` exist with address `underlay` on its provider's
    /// underlay (its namespace and link), without its switch: what renting an
    /// infrastructure VM gives before its own software runs. Idempotent; on failure what was
    /// made is removed again.
    ///
    /// # Errors
    /// The step that failed.
    pub fn provision_host(&self, name: &str, index: usize, underlay: Ipv4Addr) -> Result<HostRef> {
        self.released_on_error(name, || self.provision(name, index, underlay))
    }

    fn provision(&self, name: &str, index: usize, underlay: Ipv4Addr) -> Result<HostRef> {
        let subnet = self.ensure_underlay(index)?;
        let host = self.host_ref(name, underlay);
        crate::sys::private_dir(&host.dir)
            .map_err(|e| InfraError::new(format!("creating {}", host.dir.display()), e))?;
        sys::ensure_netns(&host.netns)?;
        let router = self.router_netns();
        let peer = crate::driver::interface_name("ku", &host.netns);
        let owner = format!("host {}", host.name);
        // Another host's uplink whose name collides is refused, never taken or deleted.
        let ours = crate::driver::claim_link(&router, &peer, &owner)?;
        if !sys::link_exists(&host.netns, "ul0") {
            if ours {
                sys::run(&["ip", "-n", &router, "link", "del", &peer])?;
            }
            sys::run(&[
                "ip",
                "-n",
                &router,
                "link",
                "add",
                &peer,
                "type",
                "veth",
                "peer",
                "name",
                "ul0",
                "netns",
                &host.netns,
            ])?;
        }
        crate::driver::mark_link(&router, &peer, &owner)?;
        let mtu = UNDERLAY_MTU.to_string();
        let br = format!("br{index}");
        sys::run(&[
            "ip", "-n", &router, "link", "set", &peer, "mtu", &mtu, "master", &br, "up",
        ])?;
        // The switch's XDP program may redirect frames out of ul0: the receiving end needs GRO.
        let _ = sys::run_in(&router, &["ethtool", "-K", &peer, "gro", "on"]);
        let addr = format!("{underlay}/24");
        sys::run(&[
            "ip",
            "-n",
            &host.netns,
            "link",
            "set",
            "ul0",
            "mtu",
            &mtu,
            "up",
        ])?;
        sys::run(&[
            "ip",
            "-n",
            &host.netns,
            "addr",
            "replace",
            &addr,
            "dev",
            "ul0",
        ])?;
        let o = subnet.octets();
        let gw = format!("{}.{}.{}.1", o[0], o[1], o[2]);
        sys::run(&[
            "ip",
            "-n",
            &host.netns,
            "route",
            "replace",
            "default",
            "via",
            &gw,
        ])?;
        Ok(host)
    }

    /// Releases host `name`: stops its switch, removes its namespace (and with it every link
    /// and the VMs' host-side NICs) and its files. Idempotent.
    ///
    /// # Errors
    /// If the namespace cannot be removed.
    pub fn release_host(&self, name: &str) -> Result<()> {
        let host = self.host_ref(name, Ipv4Addr::UNSPECIFIED);
        sys::stop_pidfile(&host.dir.join("switch.pid"), Duration::from_secs(3));
        // Processes still in the namespace (VMs a driver did not destroy) go with it.
        sys::delete_netns(&host.netns)?;
        let _ = std::fs::remove_dir_all(&host.dir);
        Ok(())
    }

    /// Removes the underlay router and the rendezvous (once no host is left). Idempotent.
    ///
    /// # Errors
    /// If the namespace cannot be removed.
    pub fn release_underlay(&self) -> Result<()> {
        let dir = self.rendezvous_dir();
        sys::stop_pidfile(&dir.join("rendezvous.pid"), Duration::from_secs(3));
        let _ = std::fs::remove_dir_all(&dir);
        sys::delete_netns(&self.router_netns())
    }

    fn agent_pidfile(host: &HostRef) -> PathBuf {
        host.dir.join("agent.pid")
    }

    /// Whether `host`'s agent process runs.
    pub fn agent_alive(&self, host: &HostRef) -> bool {
        sys::live_pid(&Self::agent_pidfile(host)).is_some()
    }

    /// Starts `host`'s agent (`command` and `--host NAME`, in this process's namespace, where
    /// the store is reachable) unless it runs; its output goes to `agent.log` in the host's
    /// directory.
    ///
    /// # Errors
    /// It cannot be started.
    pub fn ensure_agent(&self, host: &HostRef, command: &[String]) -> Result<()> {
        if self.agent_alive(host) {
            return Ok(());
        }
        crate::sys::private_dir(&host.dir)
            .map_err(|e| InfraError::new(format!("creating {}", host.dir.display()), e))?;
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.extend(["--host", host.name.as_str()]);
        sys::spawn_detached(
            "",
            &args,
            &host.dir.join("agent.log"),
            &Self::agent_pidfile(host),
        )?;
        Ok(())
    }

    /// Stops `host`'s agent, if it runs.
    pub fn stop_agent(&self, host: &HostRef) {
        sys::stop_pidfile(&Self::agent_pidfile(host), Duration::from_secs(3));
    }

    /// Every namespace this cloud made that still exists.
    pub fn leftovers(&self) -> Vec<String> {
        sys::netns_with_prefix(&format!("{}-", self.cfg.prefix))
    }

    /// Creates and starts `vm` on `host` with `driver`, attaches it and publishes where it is.
    ///
    /// # Errors
    /// The step that failed; the VM is destroyed again.
    pub fn create_vm(
        &self,
        driver: &dyn VmDriver,
        hosts: &[HostRef],
        host: &HostRef,
        vm: &VmSpec,
    ) -> Result<()> {
        let r = (|| {
            driver.create(host, vm)?;
            let port = driver.port_name(vm);
            self.attach(host, &port, vm)?;
            self.publish_location(hosts, vm, host, &port)
        })();
        if r.is_err() {
            let _ = self.destroy_vm(driver, hosts, host, vm);
        }
        r
    }

    /// Stops `vm`, detaches it and removes it from `host` and from every switch. Idempotent.
    ///
    /// # Errors
    /// The driver's error.
    pub fn destroy_vm(
        &self,
        driver: &dyn VmDriver,
        hosts: &[HostRef],
        host: &HostRef,
        vm: &VmSpec,
    ) -> Result<()> {
        let _ = self.detach(host, &driver.port_name(vm));
        self.unpublish(hosts, vm);
        driver.destroy(host, vm)
    }

    /// Moves `vm` from `src` to `dst`: live when the driver can (the destination prepared and
    /// attached first, the switches told the new location the moment the migration completes,
    /// the source cleaned up), otherwise stop, move, start. On failure the VM keeps running at
    /// the source and the destination is cleaned up.
    ///
    /// # Errors
    /// The step that failed.
    pub fn migrate_vm(
        &self,
        driver: &dyn VmDriver,
        hosts: &[HostRef],
        src: &HostRef,
        dst: &HostRef,
        vm: &VmSpec,
        progress: &mut dyn FnMut(&str),
    ) -> Result<MigrationReport> {
        let started = Instant::now();
        let port = driver.port_name(vm);
        if !driver.live_migration() {
            progress("stop-and-move: the VM restarts at the destination");
            self.destroy_vm(driver, hosts, src, vm)?;
            self.create_vm(driver, hosts, dst, vm)?;
            return Ok(MigrationReport {
                live: false,
                stats: MigrationStats {
                    total_ms: started.elapsed().as_millis() as u64,
                    ..MigrationStats::default()
                },
            });
        }
        let tcp_port = self.migration_port();
        let prepared = (|| {
            driver.prepare_incoming(dst, vm, tcp_port)?;
            self.attach(dst, &port, vm)
        })();
        if let Err(e) = prepared {
            self.abort_incoming(driver, dst, vm);
            return Err(e);
        }
        progress(&format!(
            "destination {} prepared, listening on {}:{tcp_port}",
            dst.name, dst.underlay
        ));
        match driver.migrate_out(src, dst, vm, tcp_port, progress) {
            Ok(stats) => {
                // The switches learn the new location first (the VM runs there already), then
                // the paused source goes.
                let published = self.publish_location(hosts, vm, dst, &port);
                progress("switches updated");
                let _ = self.detach(src, &port);
                let _ = driver.destroy(src, vm);
                progress("source cleaned up");
                published?;
                Ok(MigrationReport { live: true, stats })
            }
            Err(e) => {
                self.abort_incoming(driver, dst, vm);
                // The source keeps the VM; make sure the switches still say so.
                let _ = self.publish_location(hosts, vm, src, &port);
                Err(e)
            }
        }
    }

    fn abort_incoming(&self, driver: &dyn VmDriver, dst: &HostRef, vm: &VmSpec) {
        let _ = self.detach(dst, &driver.port_name(vm));
        let _ = driver.destroy(dst, vm);
    }

    fn migration_port(&self) -> u16 {
        let p = self.next_port.fetch_add(1, Ordering::Relaxed);
        if p >= 60000 {
            self.next_port.store(40000, Ordering::Relaxed);
        }
        p
    }

    /// The status of `vm` on `host`.
    pub fn vm_status(&self, driver: &dyn VmDriver, host: &HostRef, vm: &VmSpec) -> VmStatus {
        driver.status(host, vm)
    }

    /// Where the switch binary is expected: next to `exe`, else on `PATH`.
    pub fn find_switch_bin(exe: &Path) -> PathBuf {
        let beside = exe.with_file_name("kangaroo-switch");
        if beside.is_file() {
            beside
        } else {
            PathBuf::from("kangaroo-switch")
        }
    }
}

/// What a migration did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MigrationReport {
    /// Whether the VM kept running (live) or was restarted.
    pub live: bool,
    /// Its figures.
    pub stats: MigrationStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(provider_subnet(1).ok(), Some(Ipv4Addr::new(10, 211, 0, 0)));
        assert!(provider_subnet(40).is_err());
        let s = Ipv4Addr::new(10, 210, 0, 0);
        assert_eq!(host_address(s, 0).ok(), Some(Ipv4Addr::new(10, 210, 0, 10)));
        assert!(host_address(s, 245).is_err());
    }

    #[test]
    fn secure_policies() {
        use SecurePolicy::*;
        assert!(!Off.requires("a", "b"));
        assert!(BetweenProviders.requires("a", "b") && !BetweenProviders.requires("a", "a"));
        assert!(Always.requires("a", "a"));
        for p in [Off, BetweenProviders, Always] {
            use clap::ValueEnum;
            assert_eq!(p.to_possible_value().unwrap().get_name(), p.name());
            assert_eq!(SecurePolicy::from_str(p.name(), false), Ok(p));
        }
        assert!(<SecurePolicy as clap::ValueEnum>::from_str("sometimes", false).is_err());
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for p in ["", "Abc", "a-b", "toolongprefix"] {
            let r = LocalCloud::new(LocalConfig {
                prefix: p.to_owned(),
                state_dir: std::env::temp_dir(),
                switch_bin: PathBuf::from("kangaroo-switch"),
                switch_mode: Mode::Packet,
                secure: SecurePolicy::default(),
            });
            assert!(r.is_err(), "{p:?}");
        }
    }
}
