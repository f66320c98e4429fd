//! Host agents' heartbeats: hosts whose agent appears, comes back or goes, and what happens to
//! the VMs of a lost host.

use super::*;
use crate::model::{HostState, Name, NestedVm, VmState};
use crate::packing::{self, Decision};
use crate::store::{Op, State};

/// Host records per commit when agents appear (each is two etcd operations or fewer).
const AGENT_BATCH: usize = 40;

/// What happens to the VMs of a host whose agent stopped reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HostLostPolicy {
    /// Mark them lost and leave them for the operator.
    #[default]
    Leave,
    /// Re-create them from their records on other hosts of the same provider (renting if
    /// none has room), keeping name, address and MAC.
    Recreate,
}

impl Service {
    /// Heartbeats of hosts with agents (etcd store): `alive` are the hosts whose agent holds a
    /// lease now, with the public key each reported for its switch (recorded in the host's
    /// record, where the other hosts' agents find it). A host that had an agent and has none is marked lost, and its VMs lost or
    /// re-created on other hosts of its provider by `policy`; a lost host whose agent is back
    /// runs again, with the VMs still assigned to it. Returns what changed, for the log.
    ///
    /// # Errors
    /// The store failed.
    pub fn sweep_agents(
        &self,
        alive: &std::collections::BTreeMap<String, Option<String>>,
        policy: HostLostPolicy,
    ) -> Result<Vec<String>, ServiceError> {
        let mut g = self.lock();
        let mut ops = Vec::new();
        let mut report = Vec::new();
        let mut lost = Vec::new();
        for h in g.state.hosts.values() {
            let reported = alive.get(h.name.as_str());
            let up = reported.is_some();
            let key = reported.cloned().flatten();
            if up
                && (!h.agent
                    || h.state == HostState::Lost
                    || (key.is_some() && key != h.public_key))
            {
                let mut h2 = h.clone();
                h2.agent = true;
                if key.is_some() {
                    h2.public_key = key;
                }
                if h.state == HostState::Lost {
                    h2.state = HostState::Running;
                    report.push(format!("host {} is back (its agent reports again)", h.name));
                    for v in g.state.vms.values().filter(|v| v.host == h.name) {
                        if v.state == VmState::Lost {
                            let mut v2 = v.clone();
                            v2.state = VmState::Running;
                            ops.push(Op::PutVm(v2));
                        }
                    }
                }
                ops.push(Op::PutHost(h2));
            } else if !up && h.agent && h.state == HostState::Running {
                let mut h2 = h.clone();
                h2.state = HostState::Lost;
                lost.push(h2.clone());
                ops.push(Op::PutHost(h2));
            }
        }
        if !lost.is_empty() {
            let mut view = g.state.clone();
            view.apply(&ops);
            let mut meta = g.state.meta.clone();
            for h in &lost {
                report.push(format!(
                    "host {} is lost (its agent's lease expired)",
                    h.name
                ));
                if policy == HostLostPolicy::Recreate {
                    report.extend(self.renter(&h.provider).power_off(&g.state, &h.name));
                }
                let vms: Vec<NestedVm> = view
                    .vms
                    .values()
                    .filter(|v| v.host == h.name)
                    .cloned()
                    .collect();
                for v in vms {
                    let mut v2 = v.clone();
                    let before = ops.len();
                    let placed = match policy {
                        HostLostPolicy::Leave => None,
                        HostLostPolicy::Recreate => {
                            self.place_elsewhere(&g, &view, &mut meta, &v, &h.provider, &mut ops)
                        }
                    };
                    match placed {
                        Some(Ok(to)) => {
                            report.push(format!(
                                "VM {} re-created on {to} from its spec (it was on lost host {})",
                                v.name, h.name
                            ));
                            v2.host = to;
                        }
                        Some(Err(e)) => {
                            report.push(format!(
                                "VM {} is lost with host {}: no room elsewhere ({e})",
                                v.name, h.name
                            ));
                            v2.state = VmState::Lost;
                        }
                        None => {
                            report.push(format!("VM {} is lost with host {}", v.name, h.name));
                            v2.state = VmState::Lost;
                        }
                    }
                    ops.push(Op::PutVm(v2));
                    // A host rented for it, and the VM itself, count for the next placement.
                    view.apply(&ops[before..]);
                }
            }
            if meta != g.state.meta {
                ops.push(Op::PutMeta(meta));
            }
        }
        if lost.is_empty() {
            // Only hosts whose agent appeared or came back: independent changes, committed in
            // batches that stay under etcd's default limit of 128 operations per transaction.
            for chunk in ops.chunks(AGENT_BATCH) {
                self.commit(&mut g, chunk.to_vec())?;
            }
        } else {
            self.commit(&mut g, ops)?;
        }
        Ok(report)
    }

    /// Places `vm` on a host of `provider` other than its own (renting one if none has room);
    /// the host rented, if any, is added to `ops` and `view`.
    pub(super) fn place_elsewhere(
        &self,
        g: &Inner,
        view: &State,
        meta: &mut crate::store::Meta,
        vm: &NestedVm,
        provider: &Name,
        ops: &mut Vec<Op>,
    ) -> Option<Result<Name, ServiceError>> {
        let p = self.providers.iter().find(|p| &p.name == provider)?;
        let mut existing = Self::existing_hosts(view);
        existing.retain(|e| {
            view.hosts
                .get(&e.name)
                .is_some_and(|h| &h.provider == provider && h.state == HostState::Running)
        });
        Some(
            match packing::place_one(&demand_of(vm), &existing, &p.instance_types, &self.opts) {
                Ok(Decision::Existing(h)) => Ok(h),
                Ok(Decision::Rent(t)) => self.rent(g, meta, p, &t, ops),
                Err(e) => Err(ServiceError::Conflict(e)),
            },
        )
    }
}
