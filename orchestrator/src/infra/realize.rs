//! Makes the orchestrator's state real on the local cloud: hosts of `local` providers become
//! namespaces with switches, their VMs become VMs of the configured driver.
//!
//! Every step is idempotent. [`Realizer::converge`] walks the whole state (at start-up and
//! periodically): it adopts what is running, restarts what died, re-adds missing ports, peers
//! and FDB entries, finishes or undoes interrupted migrations (a VM never runs twice), and
//! removes what the state no longer has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use super::local::{
    host_address, provider_subnet, FdbDest, LocalCloud, MigrationReport, SecurePolicy, WantedPeer,
};
use crate::driver::{HostRef, VmDriver, VmDriverKind, VmSpec, VmStatus};
use crate::model::{Host, HostState, Name, NestedVm, VmState};
use crate::store::State;
use crate::sys::{InfraError, Result};

/// The local cloud with its driver, serialising every change.
pub struct Realizer {
    cloud: LocalCloud,
    drivers: BTreeMap<VmDriverKind, Arc<dyn VmDriver>>,
    default_driver: Option<VmDriverKind>,
    /// Names of the `local` providers, in order (the index picks the underlay subnet).
    providers: Vec<String>,
    /// The switches' public keys, by host, as last read from them (a switch that is down
    /// keeps its key file, so its key stays usable).
    keys: Mutex<BTreeMap<String, String>>,
    drive: Drive,
    lock: Mutex<()>,
}

/// Who drives the local hosts' switches and VMs: one code path (the host's part of
/// [`Realizer::converge_host`]), two deployments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// This process drives every local host: each host's agent logic runs inside it (the
    /// embedded single-machine mode, and controllers without agents).
    Whole,
    /// Every local host has its own `kangaroo agent`, started when the host is rented (as an
    /// infrastructure VM's boot would start it). This process, a controller, rents and
    /// releases hosts, runs the rendezvous and live migrations, and settles what crosses
    /// hosts; it never starts a switch or a VM on a host itself.
    Controller(AgentLaunch),
    /// This process is the agent of one host.
    Agent,
}

/// How a controller starts a host's agent: the program and its arguments, to which
/// `--host NAME` is appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLaunch {
    /// The command line, program first.
    pub command: Vec<String>,
}

/// One tunnel of a host's switch, as the switch reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Tunnel {
    /// The host at the other end (its underlay address when it is not in the state), or
    /// `rendezvous` for the switch's tunnel to the rendezvous.
    pub peer: String,
    /// Its underlay address.
    pub address: String,
    /// `required` (a secure tunnel: encrypted and authenticated) or `off` (plain VXLAN).
    pub encryption: String,
    /// A secure tunnel's path: `direct`, `relayed` or `down`.
    pub path: Option<String>,
    /// A secure tunnel's last handshake round trip, milliseconds.
    pub rtt_ms: Option<u64>,
    /// Packets through a secure tunnel, sent and received.
    pub tx_packets: Option<u64>,
    /// See `tx_packets`.
    pub rx_packets: Option<u64>,
}

/// What a convergence pass did.
#[derive(
    Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct ConvergeReport {
    /// VMs found running on another host than recorded (a migration completed, its record
    /// did not): (vm, host). The caller records them.
    pub adopted: Vec<(String, String)>,
    /// Repairs made, one line each.
    pub repaired: Vec<String>,
    /// Steps that failed (retried on the next pass).
    pub errors: Vec<String>,
    /// VMs whose recorded migration is over with the VM where its record says (the
    /// interrupted move was undone or never started). The caller clears the mark.
    pub settled: Vec<String>,
}

/// What the hosts' part of a pass leaves alone, or no longer needs to.
#[derive(Debug, Default)]
struct Skip {
    /// Adopted where they run (their records change first), or busy with an operation of
    /// this process.
    adopted: BTreeSet<String>,
    /// Migration marks found stale: treated as not moving.
    settled: BTreeSet<String>,
}

impl Realizer {
    /// A realizer over `cloud` with `drivers` (the first is the default) for the `local`
    /// providers named in `providers`.
    pub fn new(
        cloud: LocalCloud,
        drivers: Vec<Arc<dyn VmDriver>>,
        providers: Vec<String>,
    ) -> Realizer {
        let default_driver = drivers.first().map(|d| d.kind());
        Realizer {
            cloud,
            drivers: drivers.into_iter().map(|d| (d.kind(), d)).collect(),
            default_driver,
            providers,
            keys: Mutex::new(BTreeMap::new()),
            drive: Drive::Whole,
            lock: Mutex::new(()),
        }
    }

    /// The same realizer, driving hosts as `drive` says.
    #[must_use]
    pub fn with_drive(mut self, drive: Drive) -> Realizer {
        self.drive = drive;
        self
    }

    /// Who drives the hosts.
    pub fn drive(&self) -> &Drive {
        &self.drive
    }

    /// Whether hosts are driven by their own agents (this process does not touch their
    /// switches and VMs).
    pub fn agents_drive(&self) -> bool {
        matches!(self.drive, Drive::Controller(_))
    }

    /// The driver of `vm` (its own, else the default).
    ///
    /// # Errors
    /// The driver is not available on this server.
    pub fn driver_of(&self, vm: &NestedVm) -> Result<Arc<dyn VmDriver>> {
        let have = || {
            self.drivers
                .keys()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let kind = vm.driver.or(self.default_driver).ok_or_else(|| {
            InfraError::new(format!("VM {}", vm.name), "this server has no VM driver")
        })?;
        self.drivers.get(&kind).cloned().ok_or_else(|| {
            InfraError::new(
                format!("VM {}", vm.name),
                format!("driver {kind} is not available here (have: {})", have()),
            )
        })
    }

    /// The cloud.
    pub fn cloud(&self) -> &LocalCloud {
        &self.cloud
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `provider` is one of the local ones.
    pub fn is_local(&self, provider: &str) -> bool {
        self.providers.iter().any(|p| p == provider)
    }

    fn index(&self, provider: &str) -> Result<usize> {
        self.providers
            .iter()
            .position(|p| p == provider)
            .ok_or_else(|| InfraError::new("the local cloud", format!("{provider} is not local")))
    }

    /// The hosts of `provider` that exist on this machine now (a namespace whose underlay
    /// address is in the provider's subnet), whether or not the state has them.
    ///
    /// # Errors
    /// `provider` is not local.
    pub fn owned_hosts(&self, provider: &str) -> Result<Vec<String>> {
        let subnet = crate::infra::local::provider_subnet(self.index(provider)?)?.octets();
        let prefix = self.cloud.host_netns("");
        let mut out: Vec<String> = crate::sys::netns_with_prefix(&prefix)
            .into_iter()
            .filter(|ns| {
                crate::sys::run(&["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "ul0"])
                    .ok()
                    .and_then(|o| {
                        let cidr = o.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
                        cidr.split('/').next()?.parse::<Ipv4Addr>().ok()
                    })
                    .is_some_and(|a| a.octets()[..3] == subnet[..3])
            })
            .filter_map(|ns| ns.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The lowest free underlay address for a new host of `provider`.
    ///
    /// # Errors
    /// Not a local provider, or its subnet is full.
    pub fn allocate_underlay(&self, state: &State, provider: &str) -> Result<Ipv4Addr> {
        let subnet = provider_subnet(self.index(provider)?)?;
        let used: BTreeSet<Ipv4Addr> = state.hosts.values().filter_map(|h| h.underlay).collect();
        (0..245)
            .map(|n| host_address(subnet, n))
            .find(|a| a.as_ref().is_ok_and(|a| !used.contains(a)))
            .unwrap_or_else(|| {
                Err(InfraError::new(
                    "the local underlay",
                    format!("{provider}'s subnet is full"),
                ))
            })
    }

    fn host_ref(&self, h: &Host) -> Option<HostRef> {
        if !self.is_local(h.provider.as_str()) {
            return None;
        }
        h.underlay.map(|a| self.cloud.host_ref(h.name.as_str(), a))
    }

    /// Every local host of `state`.
    pub fn hosts(&self, state: &State) -> Vec<HostRef> {
        state
            .hosts
            .values()
            .filter_map(|h| self.host_ref(h))
            .collect()
    }

    fn spec(state: &State, vm: &NestedVm) -> Result<VmSpec> {
        let net = state.networks.get(&vm.network).ok_or_else(|| {
            InfraError::new(
                format!("VM {}", vm.name),
                format!("network {} is missing", vm.network),
            )
        })?;
        Ok(VmSpec {
            name: vm.name.to_string(),
            cpu_quarters: vm.cpu_quarters,
            memory_mib: vm.memory_mib,
            mac: vm.mac.clone(),
            ip: vm.ip,
            prefix: net.prefix,
            vni: net.vni,
            probe: None,
        })
    }

    /// The peers of `h` among `all`: every other host, through a secure tunnel where the
    /// policy asks for one between their providers. A host whose key is not known yet (its
    /// switch is not up) is left out of the secure ones, never added in clear: it is added when
    /// its switch comes up.
    fn peers_of(
        &self,
        state: &State,
        all: &[HostRef],
        keys: &BTreeMap<String, String>,
        h: &HostRef,
    ) -> Vec<WantedPeer> {
        let policy = self.cloud.config().secure;
        let provider = |name: &str| {
            Name::new(name)
                .ok()
                .and_then(|n| state.hosts.get(&n))
                .map(|x| x.provider.to_string())
                .unwrap_or_default()
        };
        let mine = provider(&h.name);
        all.iter()
            .filter(|o| o.name != h.name)
            .filter_map(|o| {
                if !policy.requires(&mine, &provider(&o.name)) {
                    return Some(WantedPeer::plain(o.underlay));
                }
                // Both ends need the other's key.
                keys.get(&h.name)?;
                Some(WantedPeer {
                    address: o.underlay,
                    public_key: Some(keys.get(&o.name)?.clone()),
                })
            })
            .collect()
    }

    /// The tunnels of local host `name`'s switch.
    ///
    /// # Errors
    /// Not a local host of `state`, or its switch does not answer.
    pub fn tunnels(&self, state: &State, name: &Name) -> Result<Vec<Tunnel>> {
        let host = state
            .hosts
            .get(name)
            .and_then(|h| self.host_ref(h))
            .ok_or_else(|| {
                InfraError::new(
                    format!("host {name}"),
                    "not a host of a local provider: it has no switch here",
                )
            })?;
        let by_address: BTreeMap<Ipv4Addr, &str> = state
            .hosts
            .values()
            .filter_map(|h| Some((h.underlay?, h.name.as_str())))
            .collect();
        let tunnel = |peer: String, address: String, encryption: &str, secure: Option<&Value>| {
            let field = |k: &str| secure.and_then(|s| s.get(k));
            Tunnel {
                peer,
                address,
                encryption: encryption.to_owned(),
                path: field("path").and_then(Value::as_str).map(str::to_owned),
                rtt_ms: field("rtt_ms").and_then(Value::as_u64),
                tx_packets: field("tx_packets").and_then(Value::as_u64),
                rx_packets: field("rx_packets").and_then(Value::as_u64),
            }
        };
        let mut out: Vec<Tunnel> = self
            .cloud
            .peer_status(&host)?
            .iter()
            .filter_map(|p| {
                let address = p.get("address")?.as_str()?.to_owned();
                let peer = address
                    .parse()
                    .ok()
                    .and_then(|a| by_address.get(&a))
                    .map_or_else(|| address.clone(), |n| (*n).to_owned());
                let encryption = p.get("encryption").and_then(Value::as_str).unwrap_or("off");
                let secure = p.get("secure").filter(|s| !s.is_null());
                Some(tunnel(peer, address, encryption, secure))
            })
            .collect();
        // The rendezvous, when the switch has one: its own secure tunnel.
        if let Some(r) = self.cloud.rendezvous_status(&host)? {
            let address = r
                .get("endpoint")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            out.push(tunnel("rendezvous".into(), address, "required", Some(&r)));
        }
        Ok(out)
    }

    /// The public keys of the hosts in `all`. Where this process drives every host, read
    /// from the switches that answer and remembered for the others; where agents drive them,
    /// as the agents reported them in the hosts' records (an agent reads its own switch's).
    fn keys(&self, state: &State, all: &[HostRef]) -> BTreeMap<String, String> {
        if self.cloud.config().secure == SecurePolicy::Off {
            return BTreeMap::new();
        }
        if self.drive != Drive::Whole {
            let mut keys: BTreeMap<String, String> = state
                .hosts
                .values()
                .filter_map(|h| Some((h.name.to_string(), h.public_key.clone()?)))
                .collect();
            if self.drive == Drive::Agent {
                for h in all {
                    if let Ok(Some(k)) = self.cloud.public_key(h) {
                        keys.insert(h.name.clone(), k);
                    }
                }
            }
            return keys;
        }
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|name, _| all.iter().any(|h| &h.name == name));
        for h in all {
            if let Ok(Some(k)) = self.cloud.public_key(h) {
                keys.insert(h.name.clone(), k);
            }
        }
        keys.clone()
    }

    /// Gives every live switch in `all` (and `also`'s, even if the check says otherwise) its
    /// peers, and the rendezvous its members.
    fn set_all_peers(&self, state: &State, all: &[HostRef], also: Option<&str>) -> Result<()> {
        let keys = self.keys(state, all);
        let mut first = None;
        if self.cloud.config().secure != SecurePolicy::Off {
            let members: Vec<(Ipv4Addr, String)> = all
                .iter()
                .filter_map(|h| Some((h.underlay, keys.get(&h.name)?.clone())))
                .collect();
            if let Err(e) = self.cloud.set_rendezvous_members(&members) {
                first.get_or_insert(e);
            }
        }
        for h in all {
            if Some(h.name.as_str()) == also || self.cloud.switch_alive(h) {
                if let Err(e) = self
                    .cloud
                    .set_peers(h, &self.peers_of(state, all, &keys, h))
                {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Rents `host` (of a local provider, in `state` with its underlay address) and makes
    /// every switch peer with every other.
    ///
    /// # Errors
    /// The step that failed (what was made for this host is removed again).
    pub fn ensure_host(&self, state: &State, host: &Host) -> Result<()> {
        let _g = self.guard();
        self.ensure_host_locked(state, host)
    }

    fn ensure_host_locked(&self, state: &State, host: &Host) -> Result<()> {
        let addr = host
            .underlay
            .ok_or_else(|| InfraError::new(format!("host {}", host.name), "no underlay address"))?;
        let index = self.index(host.provider.as_str())?;
        if let Drive::Controller(launch) = &self.drive {
            // The infrastructure VM, then what its boot would start: the rendezvous its switch
            // needs first, and its agent, which does the rest.
            let hr = self.cloud.provision_host(host.name.as_str(), index, addr)?;
            if self.cloud.config().secure != SecurePolicy::Off {
                self.cloud.ensure_rendezvous()?;
                self.sync_rendezvous(state)?;
            }
            return self.cloud.ensure_agent(&hr, &launch.command);
        }
        if self.drive == Drive::Agent {
            return Err(InfraError::new(
                format!("host {}", host.name),
                "an agent does not rent hosts",
            ));
        }
        self.cloud.rent_host(host.name.as_str(), index, addr)?;
        // Every host peers with every other, including hosts still being rented (their
        // switches are configured when they come up).
        self.set_all_peers(state, &self.hosts(state), Some(host.name.as_str()))
    }

    /// Releases host `name` (its VMs' traces go with its namespace); the other switches stop
    /// peering with it. `state` is the state without it.
    ///
    /// # Errors
    /// The namespace cannot be removed.
    pub fn release_host(&self, state: &State, name: &str) -> Result<()> {
        let _g = self.guard();
        if self.agents_drive() {
            self.cloud
                .stop_agent(&self.cloud.host_ref(name, Ipv4Addr::UNSPECIFIED));
        }
        self.cloud.release_host(name)?;
        let all = self.hosts(state);
        if self.agents_drive() {
            // The other hosts' agents drop it from their peers when they see it gone.
            let _ = self.sync_rendezvous(state);
        } else {
            let _ = self.set_all_peers(state, &all, None);
        }
        if all.is_empty() {
            self.cloud.release_underlay()?;
        }
        Ok(())
    }

    /// Makes `vm` (in `state`) what its record says: running or stopped on its host.
    ///
    /// # Errors
    /// The step that failed.
    pub fn ensure_vm(&self, state: &State, vm: &NestedVm) -> Result<()> {
        if self.agents_drive() {
            // Its host's agent makes it so when it sees the record.
            return Ok(());
        }
        let _g = self.guard();
        self.ensure_vm_locked(state, vm)
    }

    fn ensure_vm_locked(&self, state: &State, vm: &NestedVm) -> Result<()> {
        let Some(host) = state.hosts.get(&vm.host).and_then(|h| self.host_ref(h)) else {
            return Ok(());
        };
        let spec = Self::spec(state, vm)?;
        let driver = self.driver_of(vm)?;
        match vm.state {
            VmState::Running => {
                self.cloud
                    .create_vm(driver.as_ref(), &self.hosts(state), &host, &spec)
            }
            VmState::Stopped => driver.stop(&host, &spec),
            // Its host is gone: nothing there to make or stop.
            VmState::Lost => Ok(()),
        }
    }

    /// Removes `vm` from its host and from every switch.
    ///
    /// # Errors
    /// The driver's error.
    pub fn destroy_vm(&self, state: &State, vm: &NestedVm) -> Result<()> {
        if self.agents_drive() {
            // Its host's agent removes it when the record is gone.
            return Ok(());
        }
        let _g = self.guard();
        let Some(host) = state.hosts.get(&vm.host).and_then(|h| self.host_ref(h)) else {
            return Ok(());
        };
        let spec = Self::spec(state, vm)?;
        let driver = self.driver_of(vm)?;
        self.cloud
            .destroy_vm(driver.as_ref(), &self.hosts(state), &host, &spec)
    }

    /// Moves running `vm` to host `to` (live when the driver can). The VM stays where it was
    /// if this fails.
    ///
    /// # Errors
    /// The step that failed.
    pub fn migrate(
        &self,
        state: &State,
        vm: &NestedVm,
        to: &Name,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Option<MigrationReport>> {
        let _g = self.guard();
        let src = state.hosts.get(&vm.host).and_then(|h| self.host_ref(h));
        let dst = state.hosts.get(to).and_then(|h| self.host_ref(h));
        let (src, dst) = match (src, dst) {
            (Some(s), Some(d)) => (s, d),
            // Both simulated: nothing runs anywhere.
            (None, None) => return Ok(None),
            _ => {
                return Err(InfraError::new(
                    format!("moving {} to {to}", vm.name),
                    "between a local and a simulated provider a VM cannot move",
                ))
            }
        };
        let spec = Self::spec(state, vm)?;
        let driver = self.driver_of(vm)?;
        if self.agents_drive() {
            // A host rented a moment ago: its agent is still starting its switch.
            crate::sys::wait_for(
                &format!("the switch of {} (its agent starts it)", dst.name),
                std::time::Duration::from_secs(20),
                || self.cloud.switch_alive(&dst),
            )?;
        }
        if vm.state == VmState::Stopped {
            // Nothing runs: it only changes host.
            self.cloud
                .destroy_vm(driver.as_ref(), &self.hosts(state), &src, &spec)?;
            return Ok(None);
        }
        self.cloud
            .migrate_vm(
                driver.as_ref(),
                &self.hosts(state),
                &src,
                &dst,
                &spec,
                progress,
            )
            .map(Some)
    }

    /// The rendezvous' members made the hosts' keys as their records hold them (agents
    /// report them). Only when agents drive the hosts.
    ///
    /// # Errors
    /// The rendezvous' file cannot be written.
    pub fn sync_rendezvous(&self, state: &State) -> Result<()> {
        if !self.agents_drive()
            || self.cloud.config().secure == SecurePolicy::Off
            || !self.cloud.rendezvous_configured()
        {
            return Ok(());
        }
        let members: Vec<(Ipv4Addr, String)> = state
            .hosts
            .values()
            .filter(|h| self.is_local(h.provider.as_str()))
            .filter_map(|h| Some((h.underlay?, h.public_key.clone()?)))
            .collect();
        self.cloud.set_rendezvous_members(&members)
    }

    /// One convergence pass over the whole `state` (see the module documentation). Where
    /// this process drives every host, each host's part ([`Realizer::converge_host`]) runs
    /// here; where agents drive them, only what crosses hosts does: interrupted migrations,
    /// stray copies, the rendezvous and what released hosts left behind.
    pub fn converge(&self, state: &State) -> ConvergeReport {
        let mut r = self.converge_except(state, &BTreeSet::new());
        let more = self.remove_leftovers(&|| state.clone());
        r.repaired.extend(more.repaired);
        r.errors.extend(more.errors);
        r
    }

    /// As [`Realizer::converge`], leaving the VMs named in `busy` (operations of this process
    /// in flight on them) as they are, and without removing leftovers
    /// ([`Realizer::remove_leftovers`]).
    pub fn converge_except(&self, state: &State, busy: &BTreeSet<String>) -> ConvergeReport {
        let _g = self.guard();
        let mut r = ConvergeReport::default();
        let hosts = self.hosts(state);
        let whole = self.drive == Drive::Whole;
        // The rendezvous runs while there are hosts to serve (restarted with its key if it died).
        if !hosts.is_empty()
            && self.cloud.config().secure != SecurePolicy::Off
            && !self.cloud.rendezvous_alive()
        {
            match self.cloud.ensure_rendezvous() {
                Ok(_) => r.repaired.push("the rendezvous (re)started".into()),
                Err(e) => r.errors.push(e.to_string()),
            }
        }
        if let Err(e) = self.sync_rendezvous(state) {
            r.errors.push(e.to_string());
        }
        let local: Vec<(&Host, HostRef)> = state
            .hosts
            .values()
            .filter_map(|h| Some((h, self.host_ref(h)?)))
            .collect();
        if whole {
            for (h, hr) in &local {
                self.host_level(state, h, hr, &mut r);
            }
        }
        let mut skip = self.settle_copies(state, &hosts, busy, &mut r);
        skip.adopted.extend(busy.iter().cloned());
        if whole {
            for (_, hr) in &local {
                self.vm_level(state, hr, &skip, &mut r);
            }
        }
        r
    }

    /// Stops every VM of lost host `name` where it can still be reached, before its VMs are
    /// re-created elsewhere: fencing, so that a host that only lost its agent (or its link to
    /// the store) keeps no running copy. Answers what it did, a line each.
    pub fn fence(&self, state: &State, name: &str) -> Vec<String> {
        // No realizer lock: its caller holds the state's lock, which is taken before this
        // one, never after; a reconcile pass at most removes the same copies.
        let mut out = Vec::new();
        let Some(hr) = state
            .hosts
            .values()
            .find(|h| h.name.as_str() == name)
            .and_then(|h| self.host_ref(h))
        else {
            return out;
        };
        for vm in state.vms.values().filter(|v| v.host.as_str() == name) {
            let (Ok(spec), Ok(d)) = (Self::spec(state, vm), self.driver_of(vm)) else {
                continue;
            };
            if d.status(&hr, &spec) == VmStatus::Absent {
                continue;
            }
            let _ = self.cloud.detach(&hr, &d.port_name(&spec));
            out.push(match d.destroy(&hr, &spec) {
                Ok(()) => format!("VM {}: stopped on lost host {name} (fenced)", vm.name),
                Err(e) => format!("VM {}: fencing it on lost host {name} failed: {e}", vm.name),
            });
        }
        out
    }

    /// The VMs of `state` its driver reports running on local host `h`.
    pub fn running_on(&self, state: &State, h: &Host) -> Vec<String> {
        let Some(hr) = self.host_ref(h) else {
            return Vec::new();
        };
        state
            .vms
            .values()
            .filter(|v| v.host == h.name)
            .filter(|v| {
                matches!(
                    (Self::spec(state, v), self.driver_of(v)),
                    (Ok(spec), Ok(d)) if d.status(&hr, &spec) == VmStatus::Running
                )
            })
            .map(|v| v.name.to_string())
            .collect()
    }

    /// The public key of local host `h`'s switch, when it has one and answers.
    pub fn public_key_of(&self, h: &Host) -> Option<String> {
        self.host_ref(h)
            .and_then(|hr| self.cloud.public_key(&hr).ok().flatten())
    }

    /// One host's part of convergence: what its agent does, and what this process does for
    /// every local host when it drives them all. Its switch runs and peers with every other
    /// host; its VMs run or are stopped as recorded (one with a migration in flight is left
    /// to the migration); its switch's static FDB entries say where every running VM is; VMs
    /// on it that the state does not have go.
    pub fn converge_host(&self, state: &State, name: &str) -> ConvergeReport {
        let _g = self.guard();
        let mut r = ConvergeReport::default();
        let Some((h, hr)) = state
            .hosts
            .values()
            .find(|h| h.name.as_str() == name)
            .and_then(|h| Some((h, self.host_ref(h)?)))
        else {
            return r;
        };
        if self.host_level(state, h, &hr, &mut r) {
            self.vm_level(state, &hr, &Skip::default(), &mut r);
        }
        r
    }

    /// The host's switch and its peers. Whether the switch is up.
    fn host_level(&self, state: &State, h: &Host, hr: &HostRef, r: &mut ConvergeReport) -> bool {
        let was_alive = self.cloud.switch_alive(hr);
        let res = if self.drive == Drive::Whole {
            self.ensure_host_locked(state, h)
        } else {
            self.cloud.ensure_switch(hr).and_then(|()| {
                let all = self.hosts(state);
                let keys = self.keys(state, &all);
                self.cloud
                    .set_peers(hr, &self.peers_of(state, &all, &keys, hr))
            })
        };
        match res {
            Ok(()) => {
                if !was_alive {
                    r.repaired
                        .push(format!("host {}: switch (re)started", h.name));
                }
                true
            }
            Err(e) => {
                r.errors.push(e.to_string());
                self.cloud.switch_alive(hr)
            }
        }
    }

    /// The VMs of host `hr`, its static FDB entries, and VMs on it the state does not have.
    fn vm_level(&self, state: &State, hr: &HostRef, skip: &Skip, r: &mut ConvergeReport) {
        let moving =
            |v: &NestedVm| v.moving_to.is_some() && !skip.settled.contains(v.name.as_str());
        for vm in state.vms.values().filter(|v| {
            v.host.as_str() == hr.name && !moving(v) && !skip.adopted.contains(v.name.as_str())
        }) {
            let (spec, driver) =
                match Self::spec(state, vm).and_then(|s| Ok((s, self.driver_of(vm)?))) {
                    Ok(s) => s,
                    Err(e) => {
                        r.errors.push(e.to_string());
                        continue;
                    }
                };
            let res = match vm.state {
                VmState::Running => {
                    if driver.status(hr, &spec) != VmStatus::Running {
                        r.repaired
                            .push(format!("VM {}: started on {}", vm.name, hr.name));
                    }
                    // Where it is, every switch learns below (this one) or from its own agent.
                    self.cloud.create_vm(driver.as_ref(), &[], hr, &spec)
                }
                VmState::Stopped => driver.stop(hr, &spec),
                // Its host was lost: nothing there to make or stop.
                VmState::Lost => Ok(()),
            };
            if let Err(e) = res {
                r.errors.push(e.to_string());
            }
        }
        if let Err(e) = self.sync_fdb(state, hr, skip, &moving) {
            r.errors.push(e.to_string());
        }
        // VMs on it the state does not have at all (deleted while nobody drove this host).
        for d in self.drivers.values() {
            for name in d.list(hr) {
                if state.vms.keys().any(|k| k.as_str() == name) {
                    continue;
                }
                let spec = VmSpec {
                    name: name.clone(),
                    cpu_quarters: 0,
                    memory_mib: 0,
                    mac: String::new(),
                    ip: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    vni: 0,
                    probe: None,
                };
                let _ = self.cloud.detach(hr, &d.port_name(&spec));
                match d.destroy(hr, &spec) {
                    Ok(()) => r.repaired.push(format!(
                        "VM {name}: removed from {} (not in the state)",
                        hr.name
                    )),
                    Err(e) => r.errors.push(e.to_string()),
                }
            }
        }
    }

    /// Host `hr`'s static FDB entries: every running VM, at its port here or at its host's
    /// VTEP (hosts this switch peers with). A VM being moved keeps whatever entry it has: the
    /// migration updates it.
    fn sync_fdb(
        &self,
        state: &State,
        hr: &HostRef,
        skip: &Skip,
        moving: &dyn Fn(&NestedVm) -> bool,
    ) -> Result<()> {
        let peers: BTreeSet<Ipv4Addr> = self
            .cloud
            .peers(hr)?
            .into_iter()
            .map(|p| p.address)
            .collect();
        let underlay: BTreeMap<&str, Ipv4Addr> = state
            .hosts
            .values()
            .filter(|h| self.is_local(h.provider.as_str()))
            .filter_map(|h| Some((h.name.as_str(), h.underlay?)))
            .collect();
        let mut want = BTreeMap::new();
        let mut keep = BTreeSet::new();
        for vm in state.vms.values() {
            let Some(net) = state.networks.get(&vm.network) else {
                continue;
            };
            let key = (net.vni, vm.mac.to_ascii_lowercase());
            if moving(vm) || skip.adopted.contains(vm.name.as_str()) {
                keep.insert(key);
                continue;
            }
            if vm.state != VmState::Running {
                continue;
            }
            if vm.host.as_str() == hr.name {
                if let (Ok(spec), Ok(d)) = (Self::spec(state, vm), self.driver_of(vm)) {
                    want.insert(key, FdbDest::Port(d.port_name(&spec)));
                }
            } else if let Some(a) = underlay.get(vm.host.as_str()).filter(|a| peers.contains(a)) {
                want.insert(key, FdbDest::Vtep(*a));
            }
        }
        self.cloud.sync_static_fdb(hr, &want, &keep)
    }

    /// Copies of VMs found on other hosts than their records name: an interrupted migration
    /// (finished: the VM is adopted where it runs; undone: the copy goes) or a stray (it
    /// goes, so that no VM runs twice). Answers what the hosts' part must leave alone this
    /// pass.
    fn settle_copies(
        &self,
        state: &State,
        hosts: &[HostRef],
        busy: &BTreeSet<String>,
        r: &mut ConvergeReport,
    ) -> Skip {
        let mut skip = Skip::default();
        let whole = self.drive == Drive::Whole;
        for vm in state
            .vms
            .values()
            .filter(|v| !busy.contains(v.name.as_str()))
        {
            let Some(home) = state.hosts.get(&vm.host).and_then(|h| self.host_ref(h)) else {
                continue;
            };
            let (spec, driver) =
                match Self::spec(state, vm).and_then(|s| Ok((s, self.driver_of(vm)?))) {
                    Ok(s) => s,
                    Err(e) => {
                        r.errors.push(e.to_string());
                        continue;
                    }
                };
            // Where agents drive the hosts, a copy counts only on the recorded destination of
            // a migration or on a lost host: anywhere else it may be a change (a re-creation)
            // committed after `state` was read, which its host's agent is making now.
            let counts = |h: &HostRef| {
                whole
                    || vm.moving_to.as_ref().is_some_and(|m| m.as_str() == h.name)
                    || state
                        .hosts
                        .values()
                        .any(|x| x.name.as_str() == h.name && x.state == HostState::Lost)
            };
            let copies = |driver: &dyn VmDriver| -> Vec<(&HostRef, VmStatus)> {
                hosts
                    .iter()
                    .filter(|h| h.name != home.name && counts(h))
                    .map(|h| (h, driver.status(h, &spec)))
                    .filter(|(_, s)| *s != VmStatus::Absent)
                    .collect()
            };
            // Copies elsewhere: an interrupted migration. It may still be transferring (QEMU
            // goes on without the orchestrator): it is brought to an end first, so that the
            // statuses judged below are final and the decision cannot race the hand-over.
            // The record names the source (it changes only once a migration succeeded), so
            // the source's side is settled; a destination that received everything is then
            // given a moment to start running.
            let mut elsewhere = copies(driver.as_ref());
            if !elsewhere.is_empty() {
                driver.settle(&home, &spec);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                loop {
                    elsewhere = copies(driver.as_ref());
                    let final_ = driver.status(&home, &spec) == VmStatus::Running
                        || elsewhere.iter().all(|(_, s)| *s != VmStatus::Incoming);
                    if final_ || std::time::Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            let here = driver.status(&home, &spec);
            // Where agents drive the hosts, only the recorded destination of a migration is
            // adopted; any other copy is a stray (a lost host's, whose VMs were re-created).
            let running_elsewhere = elsewhere
                .iter()
                .filter(|(h, _)| {
                    whole || vm.moving_to.as_ref().is_some_and(|m| m.as_str() == h.name)
                })
                .find(|(_, s)| *s == VmStatus::Running)
                .map(|(h, _)| (*h).clone());
            if here != VmStatus::Running && vm.state == VmState::Running {
                if let Some(h) = running_elsewhere {
                    // The migration completed; the record did not.
                    let port = driver.port_name(&spec);
                    let _ = self.cloud.destroy_vm(driver.as_ref(), &[], &home, &spec);
                    match self
                        .cloud
                        .attach(&h, &port, &spec)
                        .and_then(|()| self.cloud.publish_location(hosts, &spec, &h, &port))
                    {
                        Ok(()) => r.adopted.push((vm.name.to_string(), h.name.clone())),
                        Err(e) => r.errors.push(e.to_string()),
                    }
                    skip.adopted.insert(vm.name.to_string());
                    continue;
                }
            }
            for (h, _) in &elsewhere {
                if let Err(e) = self.cloud.destroy_vm(driver.as_ref(), &[], h, &spec) {
                    r.errors.push(e.to_string());
                } else {
                    r.repaired
                        .push(format!("VM {}: stray copy on {} removed", vm.name, h.name));
                }
            }
            if vm.moving_to.is_some() {
                // Its migration is over: it stays where its record says.
                r.settled.push(vm.name.to_string());
                skip.settled.insert(vm.name.to_string());
            }
        }
        skip
    }

    /// Removes namespaces of hosts and VMs the state does not have (released or deleted while
    /// the orchestrator was down or interrupted). The namespaces are listed first and `current`
    /// read after: a namespace exists only once its record was committed, so one made by an
    /// agent for a VM created meanwhile is in that state and stays.
    pub fn remove_leftovers(&self, current: &dyn Fn() -> State) -> ConvergeReport {
        let found = self.cloud.leftovers();
        // Read before the realizer's lock is taken: callers hold their state's lock before
        // this one, never after.
        let state = current();
        let _g = self.guard();
        let mut r = ConvergeReport::default();
        let known: BTreeSet<String> = self.hosts(&state).into_iter().map(|h| h.netns).collect();
        let host_prefix = format!("{}-h-", self.cloud.config().prefix);
        let vm_prefix = format!("{}-v-", self.cloud.config().prefix);
        for ns in found {
            if let Some(name) = ns.strip_prefix(&vm_prefix) {
                if !state.vms.keys().any(|k| k.as_str() == name) {
                    match crate::sys::delete_netns(&ns) {
                        Ok(()) => r.repaired.push(format!("VM {name}: namespace removed")),
                        Err(e) => r.errors.push(e.to_string()),
                    }
                }
                continue;
            }
            if let Some(name) = ns.strip_prefix(&host_prefix) {
                if !known.contains(&ns) {
                    if self.agents_drive() {
                        self.cloud
                            .stop_agent(&self.cloud.host_ref(name, Ipv4Addr::UNSPECIFIED));
                    }
                    match self.cloud.release_host(name) {
                        Ok(()) => r
                            .repaired
                            .push(format!("host {name}: released (not in the state)")),
                        Err(e) => r.errors.push(e.to_string()),
                    }
                }
            }
        }
        r
    }

    /// Releases everything of every local host in `state` and the underlay (for `kangaroo
    /// down`-style teardown and tests).
    pub fn release_all(&self, state: &State) {
        let _g = self.guard();
        for vm in state.vms.values() {
            if let (Some(h), Ok(spec), Ok(d)) = (
                state.hosts.get(&vm.host).and_then(|h| self.host_ref(h)),
                Self::spec(state, vm),
                self.driver_of(vm),
            ) {
                let _ = d.destroy(&h, &spec);
            }
        }
        for h in self.hosts(state) {
            let _ = self.cloud.release_host(&h.name);
        }
        let _ = self.cloud.release_underlay();
    }
}
