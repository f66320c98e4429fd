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
mod converge;

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

    /// The public key of local host `h`'s switch, when it has one and answers.
    pub fn public_key_of(&self, h: &Host) -> Option<String> {
        self.host_ref(h)
            .and_then(|hr| self.cloud.public_key(&hr).ok().flatten())
    }
}
