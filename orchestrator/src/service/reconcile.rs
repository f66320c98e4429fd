//! The reconciler's pass over the service: hosts whose renting was interrupted are finished,
//! the infrastructure is converged on the state, and VMs found moved are recorded.

use std::sync::Arc;

use super::*;
use crate::infra::realize::{ConvergeReport, Realizer};
use crate::model::{HostState, Name};
use crate::store::Op;

impl Service {
    /// Makes hosts of `local` providers and their VMs real through `realizer`.
    pub fn with_realizer(mut self, realizer: Arc<Realizer>) -> Service {
        for (p, r) in self.providers.iter().zip(self.renters.iter_mut()) {
            if p.kind == ProviderKind::Local {
                *r = Arc::new(crate::provider::local::LocalProvider::new(
                    p.clone(),
                    realizer.clone(),
                ));
            }
        }
        self.realizer = Some(realizer);
        self
    }

    /// The realizer, when local providers are real.
    pub fn realizer(&self) -> Option<&Arc<Realizer>> {
        self.realizer.as_ref()
    }

    /// One pass of the reconciler: makes the infrastructure match the state (adopting,
    /// repairing, finishing interrupted work) and records VMs found to have moved.
    ///
    /// # Errors
    /// The store failed while recording.
    pub fn reconcile(&self) -> Result<ConvergeReport, ServiceError> {
        let Some(r) = &self.realizer else {
            return Ok(ConvergeReport::default());
        };
        // Hosts whose renting was interrupted are finished first.
        let pending = self.realize_pending_hosts();
        // VMs this process is migrating (or otherwise changing) are left to that operation
        // (read after the state: an operation that recorded a change in it is still listed).
        let state = self.snapshot();
        let busy: std::collections::BTreeSet<String> =
            self.tasks_lock().keys().map(|k| k.to_string()).collect();
        let mut report = r.converge_except(&state, &busy);
        let left = r.remove_leftovers(&|| self.snapshot());
        report.repaired.extend(left.repaired);
        report.errors.extend(left.errors);
        if let Err(e) = pending {
            report.errors.push(e.to_string());
        }
        if !report.adopted.is_empty() || !report.settled.is_empty() {
            let mut g = self.lock();
            let mut ops = Vec::new();
            for (vm, host) in &report.adopted {
                if let (Ok(vn), Ok(hn)) = (Name::new(vm), Name::new(host)) {
                    if let Some(mut v) = g.state.vms.get(&vn).cloned() {
                        if g.state.hosts.contains_key(&hn) {
                            v.host = hn;
                            v.moving_to = None;
                            ops.push(Op::PutVm(v));
                        }
                    }
                }
            }
            for vm in &report.settled {
                if let Some(mut v) = Name::new(vm)
                    .ok()
                    .and_then(|n| g.state.vms.get(&n).cloned())
                {
                    if v.moving_to.take().is_some() {
                        ops.push(Op::PutVm(v));
                    }
                }
            }
            self.commit(&mut g, ops)?;
        }
        Ok(report)
    }

    /// Rents, for real, every host still marked provisioning (through its provider); marks
    /// it running.
    pub(super) fn realize_pending_hosts(&self) -> Result<(), ServiceError> {
        let state = self.snapshot();
        let mut first = None;
        for h in state
            .hosts
            .values()
            .filter(|h| h.state == HostState::Provisioning)
        {
            // Every pending host is tried; the first failure is reported.
            if let Err(e) = self.renter(&h.provider).rent(&state, h) {
                first.get_or_insert(ServiceError::from(e));
                continue;
            }
            let mut g = self.lock();
            if let Some(mut cur) = g.state.hosts.get(&h.name).cloned() {
                cur.state = HostState::Running;
                self.commit(&mut g, vec![Op::PutHost(cur)])?;
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Makes `vms` real (after their records were committed).
    pub(super) fn realize_vms(&self, vms: &[Name]) -> Result<(), ServiceError> {
        let Some(r) = &self.realizer else {
            return Ok(());
        };
        self.realize_pending_hosts()?;
        let state = self.snapshot();
        for n in vms {
            if let Some(vm) = state.vms.get(n) {
                r.ensure_vm(&state, vm)?;
            }
        }
        Ok(())
    }
}
