//! Moving VMs: one VM to another host (live where its driver can), a whole application to
//! another provider.

use serde::{Deserialize, Serialize};

use super::*;
use crate::infra::local::MigrationReport;
use crate::model::{HostState, Name, NestedVm, Resources};
use crate::packing::{self, Demand};
use crate::store::{Op, State};

/// Request to move a VM.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// Destination host.
    pub to: String,
}

/// Request to move a whole application to another provider.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppMigrateRequest {
    /// The destination provider.
    pub to: String,
}

/// One VM of an application migration.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppMove {
    /// The VM.
    pub vm: Name,
    /// Where it was.
    pub from: Name,
    /// Where it is.
    pub to: Name,
    /// How the move went (absent for a simulated provider or a stopped VM).
    pub migration: Option<MigrationReport>,
}

/// What an application migration did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppMigrateResult {
    /// The application.
    pub app: Name,
    /// The destination provider.
    pub to: Name,
    /// Hosts rented at the destination (packed for cost).
    pub rented: Vec<Name>,
    /// Every VM moved, in order.
    pub moved: Vec<AppMove>,
    /// Source hosts released because they were left empty.
    pub released: Vec<Name>,
    /// Hourly cost of every rented host before and after.
    pub cost_per_hour_before: f64,
    /// After.
    pub cost_per_hour_after: f64,
    /// Wall time of the whole operation, milliseconds.
    pub total_ms: u64,
}

impl Service {
    /// Moves a VM to another host (in the model; live migration comes with real drivers).
    ///
    /// # Errors
    /// Not found, no room or anti-affinity at the destination.
    pub fn migrate_vm(&self, name: &str, req: &MigrateRequest) -> Result<NestedVm, ServiceError> {
        self.migrate_vm_report(name, req).map(|(vm, _)| vm)
    }

    /// As [`Service::migrate_vm`], with the migration's figures when something ran.
    ///
    /// # Errors
    /// As [`Service::migrate_vm`].
    pub fn migrate_vm_report(
        &self,
        name: &str,
        req: &MigrateRequest,
    ) -> Result<(NestedVm, Option<MigrationReport>), ServiceError> {
        let to = name_field("to", &req.to)?;
        let mut g = self.lock();
        let mut vm = vm_record(&g.state, name)?;
        if vm.host == to {
            return Err(ServiceError::Conflict(format!(
                "VM {name} is already on {to}"
            )));
        }
        let mut existing = Self::existing_hosts(&g.state);
        let Some(dest) = existing.iter_mut().find(|e| e.name == to) else {
            return Err(ServiceError::NotFound {
                kind: "host",
                name: req.to.clone(),
            });
        };
        check_fits(&demand_of(&vm), dest, &self.opts)?;
        let _task = self.begin(&vm.name, Task::Migrating)?;
        // Where the VM goes is recorded before anything moves: hosts' agents leave it alone
        // meanwhile, and a controller that takes over after a crash knows what was in
        // flight. The record's host changes only when the move succeeded; the reconciler
        // settles a move a crash interrupted from the copies it finds.
        let real = self.realizer.is_some();
        if real {
            vm.moving_to = Some(to.clone());
            self.commit(&mut g, vec![Op::PutVm(vm.clone())])?;
        }
        let state = g.state.clone();
        drop(g);
        let moved = match &self.realizer {
            Some(r) => r.migrate(&state, &vm, &to, &mut |line| {
                log_progress(&format!("migrate {name}: {line}"));
            }),
            None => Ok(None),
        };
        let mut g = self.lock();
        // What another change (a reconcile pass) made of the record meanwhile is kept.
        if let Some(cur) = g.state.vms.get(&vm.name) {
            vm = cur.clone();
        }
        vm.moving_to = None;
        let report = match moved {
            Ok(report) => {
                vm.host = to;
                report
            }
            Err(e) => {
                if real {
                    let _ = self.commit(&mut g, vec![Op::PutVm(vm)]);
                }
                return Err(e.into());
            }
        };
        self.commit(&mut g, vec![Op::PutVm(vm.clone())])?;
        Ok((vm, report))
    }

    /// A host `vm` could move to, for a move that names none: a running host other than its
    /// own with room, preferring its own provider, then the fullest such host (moves should
    /// not spread VMs over more hosts than needed).
    ///
    /// # Errors
    /// Not found, or no host has room.
    pub fn migration_target(&self, vm: &str) -> Result<Name, ServiceError> {
        let g = self.lock();
        let Some(v) = g.state.vms.values().find(|v| v.name.as_str() == vm) else {
            return Err(ServiceError::NotFound {
                kind: "VM",
                name: vm.to_owned(),
            });
        };
        let home = g.state.hosts.get(&v.host).map(|h| h.provider.clone());
        let d = demand_of(v);
        let mut best: Option<(bool, u64, Name)> = None;
        for e in Self::existing_hosts(&g.state) {
            let Some(h) = g.state.hosts.get(&e.name) else {
                continue;
            };
            if e.name == v.host
                || h.state != HostState::Running
                || check_fits(&d, &e, &self.opts).is_err()
            {
                continue;
            }
            let used = e
                .vms
                .iter()
                .fold(Resources::default(), |a, x| a.plus(&x.resources));
            let free = self.opts.usable(&e.instance_type).minus(&used).memory_mib;
            let key = (Some(&h.provider) != home.as_ref(), free, e.name.clone());
            if best.as_ref().is_none_or(|b| key < *b) {
                best = Some(key);
            }
        }
        best.map(|(_, _, n)| n)
            .ok_or_else(|| ServiceError::Conflict(format!("no other host has room for VM {vm}")))
    }

    /// Moves every VM of application `app` to hosts of provider `req.to`: packs them for cost
    /// onto new hosts there, migrates each (live where the driver can), and releases the source
    /// hosts left empty. A VM that fails to move stays where it was; the operation stops there,
    /// releases destination hosts left unused, and says which VMs moved.
    ///
    /// # Errors
    /// Unknown application or provider, nothing placeable, or the first move that failed.
    pub fn migrate_app(
        &self,
        app: &str,
        req: &AppMigrateRequest,
    ) -> Result<AppMigrateResult, ServiceError> {
        let started = std::time::Instant::now();
        let app_name = Name::new(app).map_err(|_| ServiceError::NotFound {
            kind: "application",
            name: app.to_owned(),
        })?;
        let provider = self.provider(Some(&req.to))?.clone();
        let state = self.snapshot();
        let members: Vec<NestedVm> = state
            .vms
            .values()
            .filter(|v| v.app.as_ref() == Some(&app_name))
            .cloned()
            .collect();
        if members.is_empty() {
            return Err(ServiceError::NotFound {
                kind: "application",
                name: app.to_owned(),
            });
        }
        let to_move: Vec<&NestedVm> = members
            .iter()
            .filter(|v| {
                state
                    .hosts
                    .get(&v.host)
                    .is_none_or(|h| h.provider != provider.name)
            })
            .collect();
        let cost = |s: &State| -> f64 {
            s.hosts
                .values()
                .map(|h| h.instance_type.price_per_hour)
                .sum()
        };
        let cost_before = cost(&state);
        let sources: std::collections::BTreeSet<Name> =
            to_move.iter().map(|v| v.host.clone()).collect();
        let demands: Vec<Demand> = to_move.iter().map(|v| demand_of(v)).collect();
        let plan = packing::plan(&demands, &provider.instance_types, &self.opts);
        if let Some(u) = plan.unplaced.first() {
            return Err(ServiceError::Conflict(format!(
                "{} cannot be placed at {}: {}",
                u.name, provider.name, u.reason
            )));
        }
        let mut rented = Vec::new();
        let mut moved = Vec::new();
        let mut failure = None;
        'hosts: for ph in &plan.hosts {
            let host = match self.add_host(&HostRequest {
                name: None,
                provider: Some(provider.name.to_string()),
                instance_type: ph.instance_type.to_string(),
            }) {
                Ok(h) => h,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            rented.push(host.name.clone());
            for vm in &ph.vms {
                let Some(v) = to_move.iter().find(|v| &v.name == vm) else {
                    continue;
                };
                match self.migrate_vm_report(
                    v.name.as_str(),
                    &MigrateRequest {
                        to: host.name.to_string(),
                    },
                ) {
                    Ok((_, migration)) => moved.push(AppMove {
                        vm: v.name.clone(),
                        from: v.host.clone(),
                        to: host.name.clone(),
                        migration,
                    }),
                    Err(e) => {
                        failure = Some(ServiceError::Conflict(format!(
                            "moving {}: {e} (moved so far: {})",
                            v.name,
                            moved
                                .iter()
                                .map(|m: &AppMove| m.vm.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                        break 'hosts;
                    }
                }
            }
        }
        // Hosts left empty: the sources the application vacated, and destinations unused
        // after a failure.
        let mut released = Vec::new();
        let now = self.snapshot();
        for h in sources.iter().chain(rented.iter()) {
            let empty = now.hosts.contains_key(h) && !now.vms.values().any(|v| &v.host == h);
            if empty && self.remove_host(h.as_str()).is_ok() {
                released.push(h.clone());
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(AppMigrateResult {
            app: app_name,
            to: provider.name.clone(),
            rented,
            moved,
            released,
            cost_per_hour_before: cost_before,
            cost_per_hour_after: cost(&self.snapshot()),
            total_ms: started.elapsed().as_millis() as u64,
        })
    }
}
