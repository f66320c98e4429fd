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

/// What an agent that talks to the API reports with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    /// The VMs running on its host.
    #[serde(default)]
    pub observed: Vec<String>,
    /// Its switch's public key for secure tunnels.
    #[serde(default)]
    pub public_key: Option<String>,
    /// The revision of the state it last applied.
    #[serde(default)]
    pub revision: u64,
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Service {
    /// Issues a new credential for `host`'s agent (replacing any earlier one, which stops
    /// working): a random secret, of which the state keeps only the SHA-256.
    ///
    /// # Errors
    /// No such host, or the store failed.
    pub fn issue_agent_credential(&self, host: &str) -> Result<String, ServiceError> {
        let mut g = self.lock();
        if !g.state.hosts.values().any(|h| h.name.as_str() == host) {
            return Err(ServiceError::NotFound {
                kind: "host",
                name: host.to_owned(),
            });
        }
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut meta = g.state.meta.clone();
        meta.agent_credentials
            .insert(host.to_owned(), sha256_hex(&secret));
        self.commit(&mut g, vec![Op::PutMeta(meta)])?;
        Ok(secret)
    }

    /// Whether `secret` is the credential of `host`'s agent (compared in constant time).
    pub fn check_agent_credential(&self, host: &str, secret: &str) -> bool {
        let g = self.lock();
        g.state.meta.agent_credentials.get(host).is_some_and(|h| {
            crate::token::constant_time_eq(h.as_bytes(), sha256_hex(secret).as_bytes())
        })
    }

    /// Revokes the credential of `host`'s agent; true if it had one. Its reports stop
    /// counting at once, so the host is lost after the lease unless it joins again.
    ///
    /// # Errors
    /// The store failed.
    pub fn revoke_agent_credential(&self, host: &str) -> Result<bool, ServiceError> {
        let mut g = self.lock();
        if !g.state.meta.agent_credentials.contains_key(host) {
            return Ok(false);
        }
        let mut meta = g.state.meta.clone();
        meta.agent_credentials.remove(host);
        self.commit(&mut g, vec![Op::PutMeta(meta)])?;
        drop(g);
        self.heartbeats_lock().remove(host);
        Ok(true)
    }

    fn heartbeats_lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::BTreeMap<String, (std::time::Instant, Option<String>)>,
    > {
        // Plain values: a panic elsewhere cannot leave the map half-updated.
        self.heartbeats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat of `host`'s agent (already authenticated).
    pub fn agent_reported(&self, host: &str, report: &AgentReport) {
        self.heartbeats_lock().insert(
            host.to_owned(),
            (std::time::Instant::now(), report.public_key.clone()),
        );
    }

    /// The hosts whose agent reported through the API within `lease`, with the public key
    /// each reported: what [`Service::sweep_agents`] takes.
    pub fn api_agents_alive(
        &self,
        lease: std::time::Duration,
    ) -> std::collections::BTreeMap<String, Option<String>> {
        let now = std::time::Instant::now();
        self.heartbeats_lock()
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) <= lease)
            .map(|(h, (_, k))| (h.clone(), k.clone()))
            .collect()
    }
}
