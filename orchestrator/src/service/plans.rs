//! Plans for whole workloads, applying them, consolidation, and the bill.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::*;
use crate::model::{Name, NestedVm, VmState};
use crate::packing::{self, Consolidation, Demand, Plan};
use crate::store::Op;
use crate::workload::Workload;

/// A workload (the TOML text of a workload file).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRequest {
    /// Workload file contents (TOML).
    pub workload: String,
}

/// Result of applying a workload.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplyResult {
    /// The plan for the VMs that did not exist yet.
    pub plan: Plan,
    /// Hosts rented.
    pub rented: Vec<Name>,
    /// VMs created.
    pub created: Vec<Name>,
    /// VMs of the workload that already existed (left as they are).
    pub existing: Vec<Name>,
}

/// Request to advance the simulated billing clock.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockRequest {
    /// Seconds to advance.
    pub advance_secs: u64,
}

/// What the rented hosts cost.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Billing {
    /// The simulated clock, seconds.
    pub clock_secs: u64,
    /// Cost per hour of the hosts rented now.
    pub cost_per_hour: f64,
    /// Accrued cost of the hosts rented now, since each was rented.
    pub accrued: f64,
    /// One VM per instance per hour, for the VMs placed now.
    pub baseline_cost_per_hour: f64,
}

impl Service {
    /// Plans a workload (does not change anything).
    ///
    /// # Errors
    /// An invalid workload or catalog.
    pub fn plan(&self, req: &WorkloadRequest) -> Result<Plan, ServiceError> {
        let w = Workload::parse(&req.workload).map_err(|e| invalid("workload", e))?;
        let c = Catalog::load(&w.catalog).map_err(|e| invalid("workload", e))?;
        Ok(packing::plan(&w.demands(), &c.instances, &w.options))
    }

    /// Applies a workload: plans the VMs that do not exist yet onto new hosts of the first
    /// provider, rents them, and creates the VMs, all in one transaction.
    ///
    /// # Errors
    /// An invalid workload, unknown networks, or nothing placeable.
    pub fn apply(&self, req: &WorkloadRequest) -> Result<ApplyResult, ServiceError> {
        let w = Workload::parse(&req.workload).map_err(|e| invalid("workload", e))?;
        let provider = self.provider(None)?;
        // The plan is computed outside the state's lock (other operations go on meanwhile); it
        // depends only on which of the workload's VMs exist, which is checked again under the
        // lock before anything is committed.
        let mut attempts = 0;
        let (mut g, existing, new, plan) = loop {
            let exists: Vec<bool> = {
                let g = self.lock();
                w.vms
                    .iter()
                    .map(|v| g.state.vms.contains_key(&v.demand.name))
                    .collect()
            };
            let (existing, new): (Vec<_>, Vec<_>) =
                w.vms.iter().zip(&exists).partition(|(_, e)| **e);
            let existing: Vec<_> = existing.into_iter().map(|(v, _)| v).collect();
            let new: Vec<_> = new.into_iter().map(|(v, _)| v).collect();
            let demands: Vec<Demand> = new.iter().map(|v| v.demand.clone()).collect();
            let plan = packing::plan(&demands, &provider.instance_types, &w.options);
            let g = self.lock();
            let unchanged = w
                .vms
                .iter()
                .zip(&exists)
                .all(|(v, e)| g.state.vms.contains_key(&v.demand.name) == *e);
            if unchanged {
                break (g, existing, new, plan);
            }
            attempts += 1;
            if attempts == 3 {
                return Err(ServiceError::Conflict(
                    "the workload's VMs kept changing while it was planned: apply it again".into(),
                ));
            }
        };
        let mut ops = Vec::new();
        let mut meta = g.state.meta.clone();
        let mut rented = Vec::new();
        let mut created = Vec::new();
        let mut taken: Vec<(Name, Ipv4Addr)> = g
            .state
            .vms
            .values()
            .map(|v| (v.network.clone(), v.ip))
            .collect();
        for ph in &plan.hosts {
            let ty = provider
                .instance_types
                .iter()
                .find(|t| t.name == ph.instance_type)
                .ok_or_else(|| {
                    ServiceError::Conflict(format!("type {} vanished", ph.instance_type))
                })?;
            let host = self.new_host(&g, &mut meta, provider, ty, None, &ops)?;
            rented.push(host.name.clone());
            for vname in &ph.vms {
                let Some(v) = new.iter().find(|v| &v.demand.name == vname) else {
                    continue;
                };
                let net = self.network_or_default(&g.state, &v.network, &mut ops)?;
                let used: Vec<Ipv4Addr> = taken
                    .iter()
                    .filter(|(n, _)| *n == net.name)
                    .map(|(_, ip)| *ip)
                    .collect();
                let ip = free_ip(&net, &used).ok_or_else(|| {
                    ServiceError::Conflict(format!("network {} has no free address", net.name))
                })?;
                taken.push((net.name.clone(), ip));
                created.push(v.demand.name.clone());
                ops.push(Op::PutVm(NestedVm {
                    name: v.demand.name.clone(),
                    cpu_quarters: v.demand.resources.cpu_quarters,
                    memory_mib: v.demand.resources.memory_mib,
                    image: v.image.clone(),
                    driver: None,
                    app: w.app.clone(),
                    network: net.name.clone(),
                    mac: mac_for(&ip),
                    ip,
                    affinity: v.demand.affinity.clone(),
                    anti_affinity: v.demand.anti_affinity.clone(),
                    state: VmState::Running,
                    created_at: now_secs(),
                    moving_to: None,
                    host: host.name.clone(),
                }));
            }
            ops.push(Op::PutHost(host));
        }
        ops.push(Op::PutMeta(meta));
        self.commit(&mut g, ops)?;
        drop(g);
        // Recorded first, then made real; a step that fails here is retried by the
        // reconciler, and the error says which.
        self.realize_vms(&created)?;
        Ok(ApplyResult {
            plan,
            rented,
            created,
            existing: existing.iter().map(|v| v.demand.name.clone()).collect(),
        })
    }

    /// Proposes migrations that free whole hosts (changes nothing).
    pub fn consolidation(&self) -> Consolidation {
        let g = self.lock();
        packing::consolidate(&Self::existing_hosts(&g.state), &self.opts)
    }

    /// Advances the simulated billing clock.
    ///
    /// # Errors
    /// The store failed.
    pub fn advance_clock(&self, req: &ClockRequest) -> Result<Billing, ServiceError> {
        let mut g = self.lock();
        let mut meta = g.state.meta.clone();
        meta.clock_secs = meta.clock_secs.saturating_add(req.advance_secs);
        self.commit(&mut g, vec![Op::PutMeta(meta)])?;
        drop(g);
        Ok(self.billing())
    }

    /// The current bill.
    pub fn billing(&self) -> Billing {
        let g = self.lock();
        let now = g.state.meta.clock_secs;
        let per_hour: f64 = g
            .state
            .hosts
            .values()
            .map(|h| h.instance_type.price_per_hour)
            .sum();
        let accrued: f64 = g
            .state
            .hosts
            .values()
            .map(|h| {
                h.instance_type.price_per_hour * now.saturating_sub(h.rented_at) as f64 / 3600.0
            })
            .sum();
        let demands: Vec<Demand> = g.state.vms.values().map(demand_of).collect();
        let baseline = self
            .providers
            .first()
            .map_or(0.0, |p| packing::baseline_cost(&demands, &p.instance_types));
        Billing {
            clock_secs: now,
            cost_per_hour: per_hour,
            accrued,
            baseline_cost_per_hour: baseline,
        }
    }
}
