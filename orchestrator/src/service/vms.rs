//! Nested VMs: placement on create, start, stop, delete, and the address and MAC each gets.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::*;
use crate::model::{self, HostState, Name, NestedVm, Network, Resources, VmState};
use crate::packing::{self, Decision, Demand, ExistingHost, PackOptions};
use crate::store::{Op, State};

/// Request to create a nested VM.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmRequest {
    /// Name.
    pub name: String,
    /// vCPUs, a multiple of 0.25.
    pub vcpus: f64,
    /// Memory, e.g. `2GiB` (multiple of 256 MiB).
    pub memory: String,
    /// Network to attach to.
    pub network: String,
    /// Guest image.
    pub image: Option<String>,
    /// Nested-VM driver on local hosts: `qemu` or `netns` (the server's default when absent).
    pub driver: Option<crate::driver::VmDriverKind>,
    /// The application it belongs to.
    pub app: Option<String>,
    /// Affinity group.
    pub affinity: Option<String>,
    /// Anti-affinity group.
    pub anti_affinity: Option<String>,
    /// Host to place on (placement chooses when absent).
    pub host: Option<String>,
    /// Provider whose hosts placement may use or rent (the first configured when absent;
    /// ignored when `host` is given).
    #[serde(default)]
    pub provider: Option<String>,
}

impl Service {
    /// Nested VMs.
    pub fn vms(&self) -> Vec<NestedVm> {
        self.lock().state.vms.values().cloned().collect()
    }

    /// One VM.
    ///
    /// # Errors
    /// Not found.
    pub fn vm(&self, name: &str) -> Result<NestedVm, ServiceError> {
        vm_record(&self.lock().state, name)
    }

    /// The hosts placement may use (not lost ones), each with its VMs' demands; one pass over
    /// the VMs, so placing stays linear in hosts plus VMs.
    pub(super) fn existing_hosts(state: &State) -> Vec<ExistingHost> {
        let mut by_host: std::collections::BTreeMap<&Name, Vec<Demand>> =
            std::collections::BTreeMap::new();
        for v in state.vms.values() {
            by_host.entry(&v.host).or_default().push(demand_of(v));
        }
        state
            .hosts
            .values()
            .filter(|h| h.state != HostState::Lost)
            .map(|h| ExistingHost {
                name: h.name.clone(),
                instance_type: h.instance_type.clone(),
                vms: by_host.remove(&h.name).unwrap_or_default(),
            })
            .collect()
    }

    /// Creates a VM, placing it cost-aware (renting a host only when nothing fits).
    ///
    /// # Errors
    /// Invalid fields, unknown network or host, a taken name, no room.
    pub fn create_vm(&self, req: &VmRequest) -> Result<NestedVm, ServiceError> {
        let name = name_field("name", &req.name)?;
        let cpu = model::parse_vcpus(req.vcpus).map_err(|e| invalid("vcpus", e))?;
        let mem = model::parse_memory(&req.memory).map_err(|e| invalid("memory", e))?;
        if mem % model::VM_MEMORY_GRANULARITY_MIB != 0 {
            return Err(invalid(
                "memory",
                format!("{} is not a multiple of 256 MiB", req.memory),
            ));
        }
        let network = name_field("network", &req.network)?;
        let affinity = req
            .affinity
            .as_deref()
            .map(|a| name_field("affinity", a))
            .transpose()?;
        let anti = req
            .anti_affinity
            .as_deref()
            .map(|a| name_field("anti_affinity", a))
            .transpose()?;
        let app = req
            .app
            .as_deref()
            .map(|a| name_field("app", a))
            .transpose()?;
        let demand = Demand {
            name: name.clone(),
            resources: Resources::new(cpu, mem),
            affinity,
            anti_affinity: anti,
        };
        let _task = self.begin(&name, Task::Building)?;
        let mut g = self.lock();
        if g.state.vms.contains_key(&name) {
            return Err(ServiceError::Conflict(format!("VM {name} already exists")));
        }
        let mut ops = Vec::new();
        let mut meta = g.state.meta.clone();
        let net = self.network_or_default(&g.state, &network, &mut ops)?;
        let host = match &req.host {
            Some(h) => {
                let hn = name_field("host", h)?;
                let existing = Self::existing_hosts(&g.state);
                let Some(eh) = existing.iter().find(|e| e.name == hn) else {
                    return Err(ServiceError::NotFound {
                        kind: "host",
                        name: h.clone(),
                    });
                };
                check_fits(&demand, eh, &self.opts)?;
                hn
            }
            None => {
                let provider = self.provider(req.provider.as_deref())?;
                let mut existing = Self::existing_hosts(&g.state);
                if req.provider.is_some() {
                    existing.retain(|e| {
                        g.state
                            .hosts
                            .get(&e.name)
                            .is_some_and(|h| h.provider == provider.name)
                    });
                }
                match packing::place_one(&demand, &existing, &provider.instance_types, &self.opts) {
                    Ok(Decision::Existing(h)) => h,
                    Ok(Decision::Rent(t)) => self.rent(&g, &mut meta, provider, &t, &mut ops)?,
                    Err(e) => return Err(ServiceError::Conflict(e)),
                }
            }
        };
        let taken: Vec<Ipv4Addr> = g
            .state
            .vms
            .values()
            .filter(|v| v.network == net.name)
            .map(|v| v.ip)
            .collect();
        let ip = free_ip(&net, &taken).ok_or_else(|| {
            ServiceError::Conflict(format!("network {} has no free address", net.name))
        })?;
        let vm = NestedVm {
            name,
            cpu_quarters: cpu,
            memory_mib: mem,
            image: req.image.clone().unwrap_or_else(|| "busybox".to_owned()),
            driver: req.driver,
            app,
            network: net.name.clone(),
            mac: mac_for(&ip),
            ip,
            affinity: demand.affinity,
            anti_affinity: demand.anti_affinity,
            state: VmState::Running,
            host,
            created_at: now_secs(),
            moving_to: None,
        };
        let rented: Option<Name> = ops.iter().find_map(|o| match o {
            Op::PutHost(h) => Some(h.name.clone()),
            _ => None,
        });
        ops.push(Op::PutMeta(meta));
        ops.push(Op::PutVm(vm.clone()));
        self.commit(&mut g, ops)?;
        drop(g);
        if let Err(e) = self.realize_vms(std::slice::from_ref(&vm.name)) {
            // Undo: the VM (and a host rented for it) go again.
            let state = self.snapshot();
            if let (Some(r), Some(v)) = (&self.realizer, state.vms.get(&vm.name)) {
                let _ = r.destroy_vm(&state, v);
            }
            let mut g = self.lock();
            let _ = self.commit(&mut g, vec![Op::DeleteVm(vm.name.clone())]);
            drop(g);
            if let Some(h) = rented {
                self.forget_host(&h);
            }
            return Err(e);
        }
        Ok(vm)
    }

    pub(super) fn network_or_default(
        &self,
        state: &State,
        name: &Name,
        ops: &mut Vec<Op>,
    ) -> Result<Network, ServiceError> {
        if let Some(n) = state.networks.get(name) {
            return Ok(n.clone());
        }
        if let Some(n) = ops.iter().find_map(|o| match o {
            Op::PutNetwork(n) if &n.name == name => Some(n.clone()),
            _ => None,
        }) {
            return Ok(n);
        }
        if name.as_str() == DEFAULT_NETWORK.0
            && !state.networks.values().any(|n| n.vni == DEFAULT_NETWORK.1)
        {
            let (subnet, prefix) =
                model::parse_subnet(DEFAULT_NETWORK.2).map_err(|e| invalid("network", e))?;
            let n = Network {
                name: name.clone(),
                vni: DEFAULT_NETWORK.1,
                subnet,
                prefix,
            };
            ops.push(Op::PutNetwork(n.clone()));
            return Ok(n);
        }
        Err(ServiceError::Invalid {
            field: "network".into(),
            message: format!("no network named {name}"),
        })
    }

    pub(super) fn set_state(&self, name: &str, st: VmState) -> Result<NestedVm, ServiceError> {
        let mut g = self.lock();
        let mut vm = vm_record(&g.state, name)?;
        let _task = self.begin(
            &vm.name,
            match st {
                VmState::Running | VmState::Lost => Task::Starting,
                VmState::Stopped => Task::Stopping,
            },
        )?;
        let before = vm.clone();
        vm.state = st;
        self.commit(&mut g, vec![Op::PutVm(vm.clone())])?;
        drop(g);
        if let Err(e) = self.realize_vms(std::slice::from_ref(&vm.name)) {
            let mut g = self.lock();
            let _ = self.commit(&mut g, vec![Op::PutVm(before)]);
            return Err(e);
        }
        Ok(vm)
    }

    /// Starts a VM.
    ///
    /// # Errors
    /// Not found.
    pub fn start_vm(&self, name: &str) -> Result<NestedVm, ServiceError> {
        self.set_state(name, VmState::Running)
    }

    /// Stops a VM.
    ///
    /// # Errors
    /// Not found.
    pub fn stop_vm(&self, name: &str) -> Result<NestedVm, ServiceError> {
        self.set_state(name, VmState::Stopped)
    }

    /// Deletes a VM.
    ///
    /// # Errors
    /// Not found.
    pub fn delete_vm(&self, name: &str) -> Result<(), ServiceError> {
        let mut g = self.lock();
        let Some(n) = g.state.vms.keys().find(|k| k.as_str() == name).cloned() else {
            return Err(ServiceError::NotFound {
                kind: "VM",
                name: name.to_owned(),
            });
        };
        let _task = self.begin(&n, Task::Deleting)?;
        let state = g.state.clone();
        if let (Some(r), Some(vm)) = (&self.realizer, state.vms.get(&n)) {
            r.destroy_vm(&state, vm)?;
        }
        self.commit(&mut g, vec![Op::DeleteVm(n)])
    }
}

pub(super) fn demand_of(v: &NestedVm) -> Demand {
    Demand {
        name: v.name.clone(),
        resources: v.resources(),
        affinity: v.affinity.clone(),
        anti_affinity: v.anti_affinity.clone(),
    }
}

pub(super) fn check_fits(
    d: &Demand,
    h: &ExistingHost,
    opts: &PackOptions,
) -> Result<(), ServiceError> {
    let used = h
        .vms
        .iter()
        .filter(|v| v.name != d.name)
        .fold(Resources::default(), |a, v| a.plus(&v.resources));
    let cap = opts.usable(&h.instance_type);
    if !used.plus(&d.resources).fits_in(&cap) {
        return Err(ServiceError::Conflict(format!(
            "host {} has {} vCPU / {} MiB free; {} needs {} vCPU / {} MiB",
            h.name,
            model::format_vcpus(cap.minus(&used).cpu_quarters),
            cap.minus(&used).memory_mib,
            d.name,
            model::format_vcpus(d.resources.cpu_quarters),
            d.resources.memory_mib
        )));
    }
    if let Some(a) = &d.anti_affinity {
        if let Some(o) = h
            .vms
            .iter()
            .find(|v| v.name != d.name && v.anti_affinity.as_ref() == Some(a))
        {
            return Err(ServiceError::Conflict(format!(
                "host {} runs {}, of the same anti-affinity group {a}",
                h.name, o.name
            )));
        }
    }
    Ok(())
}

/// The lowest free host address of `net`, from .2 (the first address is the gateway's).
/// The lowest free host address of `net` (one pass over `taken`, then a set lookup per
/// candidate: linear in the VMs, not quadratic).
pub(super) fn free_ip(net: &Network, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let base = net.subnet.to_bits();
    let size = 1u32 << (32 - u32::from(net.prefix));
    let taken: std::collections::HashSet<u32> = taken.iter().map(|ip| ip.to_bits()).collect();
    (2..size - 1)
        .map(|i| base + i)
        .find(|ip| !taken.contains(ip))
        .map(Ipv4Addr::from)
}

/// A locally administered MAC derived from the IPv4 address: unique within a network.
pub(super) fn mac_for(ip: &Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:6b:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The record of VM `name` in `state`.
pub(super) fn vm_record(state: &State, name: &str) -> Result<NestedVm, ServiceError> {
    state
        .vms
        .values()
        .find(|v| v.name.as_str() == name)
        .cloned()
        .ok_or_else(|| ServiceError::NotFound {
            kind: "VM",
            name: name.to_owned(),
        })
}
