//! The tenant operations (the paper's Skippy API), over the store: providers and catalogs,
//! hosts, networks, nested VMs with cost-aware placement, plans, consolidation and billing.
//!
//! Every mutation validates first, then commits all of its changes in one store transaction
//! (compare-and-swap on the revision), then updates the in-memory copy: a crash between two
//! operations loses nothing, and a crash inside one leaves no half of it.

mod agents;
mod hosts;
mod migrate;
mod networks;
mod plans;
mod providers;
mod reconcile;
mod vms;

pub use crate::provider::{ProviderInfo as Provider, ProviderKind};
pub use agents::{AgentReport, HostLostPolicy};
pub use hosts::HostRequest;
pub use migrate::{AppMigrateRequest, AppMigrateResult, AppMove, MigrateRequest};
pub use networks::{NetworkRequest, DEFAULT_NETWORK};
pub use plans::{ApplyResult, Billing, ClockRequest, WorkloadRequest};
pub use vms::VmRequest;
use vms::{check_fits, demand_of, free_ip, mac_for, vm_record};

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::infra::realize::Realizer;
use crate::model::Name;
use crate::packing::PackOptions;
use crate::store::{Op, State, Store, StoreError};

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such object.
    #[error("no {kind} named {name}")]
    NotFound {
        /// Kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The operation conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An infrastructure step failed; nothing was changed. The message is the step and every
    /// cause below it: this is where the error becomes what a tenant reads.
    #[error("{}", crate::sys::report(.0))]
    Infra(#[from] crate::sys::InfraError),
    /// A provider failed to rent, release or fence; nothing was changed.
    #[error("{}", crate::sys::report(.0))]
    Provider(#[from] crate::provider::ProviderError),
}

fn invalid(field: &str, message: impl ToString) -> ServiceError {
    ServiceError::Invalid {
        field: field.to_owned(),
        message: message.to_string(),
    }
}

fn name_field(field: &str, s: &str) -> Result<Name, ServiceError> {
    Name::new(s).map_err(|e| invalid(field, e))
}

struct Inner {
    state: State,
    rev: u64,
}

/// The orchestrator's operations.
pub struct Service {
    store: Box<dyn Store>,
    inner: Mutex<Inner>,
    providers: Vec<Provider>,
    /// The provider behind each of `providers`, in the same order.
    renters: Vec<Arc<dyn crate::provider::Provider>>,
    opts: PackOptions,
    realizer: Option<Arc<Realizer>>,
    tasks: Mutex<std::collections::HashMap<Name, Task>>,
    /// Reports of agents that talk to this controller's API: when each host's agent last
    /// reported, and the public key it reported (its heartbeat; not persisted).
    heartbeats: Mutex<std::collections::BTreeMap<String, (std::time::Instant, Option<String>)>>,
}

/// An operation in progress on a VM (not persisted: after a restart the reconciler finishes or
/// rolls back whatever was in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Being created.
    Building,
    /// Being started.
    Starting,
    /// Being stopped.
    Stopping,
    /// Being moved to another host.
    Migrating,
    /// Being deleted.
    Deleting,
}

/// Clears a VM's task when the operation ends, however it ends.
struct TaskGuard<'a> {
    service: &'a Service,
    vm: Name,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.service.tasks_lock().remove(&self.vm);
    }
}

impl Service {
    /// A service over `store` with `providers` (catalog per provider: `CATALOG` for a
    /// simulated provider, `local:CATALOG` for a local one).
    ///
    /// # Errors
    /// If the store cannot be read or a catalog cannot be loaded.
    pub fn new(
        store: Box<dyn Store>,
        providers: &[(String, String)],
        opts: PackOptions,
    ) -> anyhow::Result<Service> {
        let (state, rev) = store.load()?;
        let mut ps = Vec::new();
        for (name, cat) in providers {
            let (kind, cat) = ProviderKind::from_setting(cat);
            let c = Catalog::load(cat)?;
            ps.push(Provider {
                name: Name::new(name)?,
                kind,
                region: c.region.clone(),
                catalog: c.name.clone(),
                instance_types: c.instances,
            });
        }
        anyhow::ensure!(!ps.is_empty(), "at least one provider is needed");
        // Until a realizer makes local providers real, every provider's hosts are records.
        let renters: Vec<Arc<dyn crate::provider::Provider>> = ps
            .iter()
            .map(|p| {
                Arc::new(crate::provider::sim::SimProvider::new(p.clone()))
                    as Arc<dyn crate::provider::Provider>
            })
            .collect();
        Ok(Service {
            store,
            inner: Mutex::new(Inner { state, rev }),
            providers: ps,
            renters,
            opts,
            realizer: None,
            tasks: Mutex::new(std::collections::HashMap::new()),
            heartbeats: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    fn tasks_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Name, Task>> {
        // The map holds plain values; a panic elsewhere cannot leave it half-updated.
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `vm` as busy with `task` until the guard drops. A VM already busy is a conflict:
    /// two operations never run on one VM at once.
    fn begin(&self, vm: &Name, task: Task) -> Result<TaskGuard<'_>, ServiceError> {
        let mut t = self.tasks_lock();
        if let Some(other) = t.get(vm) {
            return Err(ServiceError::Conflict(format!(
                "VM {vm} is busy ({})",
                task_word(*other)
            )));
        }
        t.insert(vm.clone(), task);
        Ok(TaskGuard {
            service: self,
            vm: vm.clone(),
        })
    }

    /// The operation in progress on `vm`, if any.
    pub fn task(&self, vm: &str) -> Option<Task> {
        self.tasks_lock()
            .iter()
            .find(|(k, _)| k.as_str() == vm)
            .map(|(_, t)| *t)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the copy inconsistent with the store: the
        // copy is only changed after a successful commit, in one call.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits `ops` at the current revision and applies them to the in-memory copy.
    fn commit(&self, g: &mut Inner, ops: Vec<Op>) -> Result<(), ServiceError> {
        let rev = self.store.commit(g.rev, &ops)?;
        g.state.apply(&ops);
        g.rev = rev;
        Ok(())
    }

    /// Whether this controller writes (and runs the reconciler).
    pub fn role(&self) -> crate::store::Role {
        self.store.role()
    }

    /// True if this controller may change state: the only one, or the elected leader.
    pub fn is_writer(&self) -> bool {
        !matches!(self.store.role(), crate::store::Role::Standby { .. })
    }

    /// Where the state lives.
    pub fn store_description(&self) -> String {
        self.store.describe()
    }

    /// The revision of the in-memory copy.
    pub fn revision(&self) -> u64 {
        self.lock().rev
    }

    /// Re-reads the state if the store is ahead of (or differs from) the in-memory copy
    /// (another controller committed); true if it changed.
    ///
    /// # Errors
    /// The store failed.
    pub fn refresh(&self) -> Result<bool, ServiceError> {
        let mut g = self.lock();
        let (state, rev) = self.store.load()?;
        if rev == g.rev {
            return Ok(false);
        }
        g.state = state;
        g.rev = rev;
        Ok(true)
    }

    /// Applies a commit another controller made (a standby following the store): the next
    /// revision is applied, one already here (this controller's own) is skipped, and a gap
    /// reloads the whole state. `rev` 0 carries nothing.
    ///
    /// # Errors
    /// The store failed while reloading.
    pub fn follow(&self, ops: &[Op], rev: u64) -> Result<(), ServiceError> {
        let mut g = self.lock();
        if rev <= g.rev {
            return Ok(());
        }
        if rev == g.rev + 1 {
            g.state.apply(ops);
            g.rev = rev;
            return Ok(());
        }
        drop(g);
        self.refresh().map(|_| ())
    }

    /// A copy of the whole state.
    pub fn snapshot(&self) -> State {
        self.lock().state.clone()
    }

    /// The packing options (what of each host VMs may use).
    pub fn options(&self) -> &PackOptions {
        &self.opts
    }
}

/// Wall-clock seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn task_word(t: Task) -> &'static str {
    match t {
        Task::Building => "being created",
        Task::Starting => "being started",
        Task::Stopping => "being stopped",
        Task::Migrating => "being migrated",
        Task::Deleting => "being deleted",
    }
}

/// Progress of long infrastructure steps goes to the server's log (stderr).
fn log_progress(line: &str) {
    eprintln!("kangaroo: {line}");
}

#[cfg(test)]
mod tests;
