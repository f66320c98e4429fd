//! The tenant operations (the paper's Skippy API), over the store: providers and catalogs,
//! hosts, networks, nested VMs with cost-aware placement, plans, consolidation and billing.
//!
//! Every mutation validates first, then commits all of its changes in one store transaction
//! (compare-and-swap on the revision), then updates the in-memory copy: a crash between two
//! operations loses nothing, and a crash inside one leaves no half of it.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::infra::local::MigrationReport;
use crate::infra::realize::{ConvergeReport, Realizer};
use crate::model::{self, Host, HostState, Name, NestedVm, Network, Resources, VmState};
use crate::packing::{self, Consolidation, Decision, Demand, ExistingHost, PackOptions, Plan};
use crate::store::{Op, State, Store, StoreError};
use crate::workload::Workload;

/// A provider hosts can be rented from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Provider {
    /// Name.
    pub name: Name,
    /// Kind: `sim` (instant, billed on a simulated clock) or `local` (hosts are namespaces on
    /// this machine with their own switches; VMs run under the configured driver).
    pub kind: String,
    /// Region.
    pub region: String,
    /// Name of its catalog.
    pub catalog: String,
    /// Its instance types.
    pub instance_types: Vec<model::InstanceType>,
}

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
    /// The infrastructure failed (what was being done and why); nothing was changed.
    #[error("{0}")]
    Infra(String),
}

impl From<crate::infra::InfraError> for ServiceError {
    fn from(e: crate::infra::InfraError) -> ServiceError {
        ServiceError::Infra(e.to_string())
    }
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

/// Request to rent a host.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostRequest {
    /// Name (generated when absent).
    pub name: Option<String>,
    /// Provider (the first configured when absent).
    pub provider: Option<String>,
    /// Instance type from the provider's catalog.
    pub instance_type: String,
}

/// Request to create a network.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// Name.
    pub name: String,
    /// VNI (1–16777215).
    pub vni: u32,
    /// IPv4 subnet, e.g. `192.168.10.0/24`.
    pub subnet: String,
}

/// Request to create a nested VM.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
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
    pub driver: Option<String>,
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

/// Request to move a VM.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// Destination host.
    pub to: String,
}

/// A workload (the TOML text of a workload file).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRequest {
    /// Workload file contents (TOML).
    pub workload: String,
}

/// Result of applying a workload.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// Request to move a whole application to another provider.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppMigrateRequest {
    /// The destination provider.
    pub to: String,
}

/// One VM of an application migration.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// Request to advance the simulated billing clock.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockRequest {
    /// Seconds to advance.
    pub advance_secs: u64,
}

/// What the rented hosts cost.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

struct Inner {
    state: State,
    rev: u64,
}

/// The orchestrator's operations.
pub struct Service {
    store: Box<dyn Store>,
    inner: Mutex<Inner>,
    providers: Vec<Provider>,
    opts: PackOptions,
    realizer: Option<Arc<Realizer>>,
    tasks: Mutex<std::collections::HashMap<Name, Task>>,
}

/// An operation in progress on a VM (not persisted: after a restart the reconciler finishes or
/// rolls back whatever was in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// The nested-VM drivers a VM may ask for.
pub const VM_DRIVERS: [&str; 2] = ["qemu", "netns"];

/// The network created on first use when a workload names none.
pub const DEFAULT_NETWORK: (&str, u32, &str) = ("default", 1, "10.0.0.0/16");

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
            let (kind, cat) = match cat.strip_prefix("local:") {
                Some(c) => ("local", c),
                None => ("sim", cat.as_str()),
            };
            let c = Catalog::load(cat)?;
            ps.push(Provider {
                name: Name::new(name)?,
                kind: kind.to_owned(),
                region: c.region.clone(),
                catalog: c.name.clone(),
                instance_types: c.instances,
            });
        }
        anyhow::ensure!(!ps.is_empty(), "at least one provider is needed");
        Ok(Service {
            store,
            inner: Mutex::new(Inner { state, rev }),
            providers: ps,
            opts,
            realizer: None,
            tasks: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The names of the `local` providers, in order.
    pub fn local_providers(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter(|p| p.kind == "local")
            .map(|p| p.name.to_string())
            .collect()
    }

    /// Makes hosts of `local` providers and their VMs real through `realizer`.
    pub fn with_realizer(mut self, realizer: Arc<Realizer>) -> Service {
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

    /// Rents, for real, every local host still marked provisioning; marks it running.
    fn realize_pending_hosts(&self) -> Result<(), ServiceError> {
        let Some(r) = &self.realizer else {
            return Ok(());
        };
        let state = self.snapshot();
        let mut first = None;
        for h in state
            .hosts
            .values()
            .filter(|h| h.state == HostState::Provisioning)
        {
            // Every pending host is tried; the first failure is reported.
            if let Err(e) = r.ensure_host(&state, h) {
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
    fn realize_vms(&self, vms: &[Name]) -> Result<(), ServiceError> {
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
                    if let Some(r) = &self.realizer {
                        report.extend(r.fence(&g.state, h.name.as_str()));
                    }
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
    fn place_elsewhere(
        &self,
        g: &Inner,
        view: &State,
        meta: &mut crate::store::Meta,
        vm: &NestedVm,
        provider: &Name,
        ops: &mut Vec<Op>,
    ) -> Option<Result<Name, String>> {
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
                Ok(Decision::Rent(t)) => self.rent(g, meta, p, &t, ops).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            },
        )
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

    /// The providers.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    fn provider(&self, name: Option<&str>) -> Result<&Provider, ServiceError> {
        match name {
            None => self
                .providers
                .first()
                .ok_or_else(|| ServiceError::Conflict("no provider configured".into())),
            Some(n) => self
                .providers
                .iter()
                .find(|p| p.name.as_str() == n)
                .ok_or_else(|| ServiceError::NotFound {
                    kind: "provider",
                    name: n.to_owned(),
                }),
        }
    }

    /// The packing options (what of each host VMs may use).
    pub fn options(&self) -> &PackOptions {
        &self.opts
    }

    /// Hosts.
    pub fn hosts(&self) -> Vec<Host> {
        self.lock().state.hosts.values().cloned().collect()
    }

    /// Rents a host of type `t` from `provider` for a placement: adds it to `ops` and names it.
    fn rent(
        &self,
        g: &Inner,
        meta: &mut crate::store::Meta,
        provider: &Provider,
        t: &Name,
        ops: &mut Vec<Op>,
    ) -> Result<Name, ServiceError> {
        let ty = provider
            .instance_types
            .iter()
            .find(|i| &i.name == t)
            .ok_or_else(|| ServiceError::Conflict(format!("type {t} vanished")))?;
        let host = self.new_host(g, meta, provider, ty, None, ops)?;
        let n = host.name.clone();
        ops.push(Op::PutHost(host));
        Ok(n)
    }

    fn new_host(
        &self,
        g: &Inner,
        meta: &mut crate::store::Meta,
        provider: &Provider,
        ty: &model::InstanceType,
        name: Option<Name>,
        pending: &[Op],
    ) -> Result<Host, ServiceError> {
        let (state, underlay) = match (&self.realizer, provider.kind.as_str()) {
            (Some(r), "local") => {
                // Addresses taken by hosts of this transaction count too.
                let mut view = State {
                    hosts: g.state.hosts.clone(),
                    ..State::default()
                };
                for op in pending {
                    if let Op::PutHost(h) = op {
                        view.hosts.insert(h.name.clone(), h.clone());
                    }
                }
                let a = r.allocate_underlay(&view, provider.name.as_str())?;
                (HostState::Provisioning, Some(a))
            }
            _ => (HostState::Running, None),
        };
        let name = name.unwrap_or_else(|| loop {
            meta.next_host += 1;
            if let Ok(n) = Name::new(&format!("host-{}", meta.next_host)) {
                if !g.state.hosts.contains_key(&n) {
                    break n;
                }
            }
        });
        Ok(Host {
            name,
            provider: provider.name.clone(),
            instance_type: ty.clone(),
            state,
            underlay,
            rented_at: meta.clock_secs,
            agent: false,
            public_key: None,
        })
    }

    /// Rents a host.
    ///
    /// # Errors
    /// Unknown provider or type, a taken name.
    pub fn add_host(&self, req: &HostRequest) -> Result<Host, ServiceError> {
        let provider = self.provider(req.provider.as_deref())?;
        let ty = provider
            .instance_types
            .iter()
            .find(|t| t.name.as_str() == req.instance_type)
            .ok_or_else(|| {
                invalid(
                    "instance_type",
                    format!(
                        "{} is not in catalog {}",
                        req.instance_type, provider.catalog
                    ),
                )
            })?;
        let name = req
            .name
            .as_deref()
            .map(|n| name_field("name", n))
            .transpose()?;
        let mut g = self.lock();
        if let Some(n) = &name {
            if g.state.hosts.contains_key(n) {
                return Err(ServiceError::Conflict(format!("host {n} already exists")));
            }
        }
        let mut meta = g.state.meta.clone();
        let host = self.new_host(&g, &mut meta, provider, ty, name, &[])?;
        self.commit(&mut g, vec![Op::PutMeta(meta), Op::PutHost(host.clone())])?;
        drop(g);
        if host.state == HostState::Provisioning {
            if let Err(e) = self.realize_pending_hosts() {
                // Nothing of it stays: neither the record nor what was made.
                self.forget_host(&host.name);
                return Err(e);
            }
        }
        Ok(self
            .lock()
            .state
            .hosts
            .get(&host.name)
            .cloned()
            .unwrap_or(host))
    }

    /// Releases `name` for real and removes its record (a failed rent's clean-up).
    fn forget_host(&self, name: &Name) {
        let mut g = self.lock();
        if g.state.hosts.contains_key(name) {
            let _ = self.commit(&mut g, vec![Op::DeleteHost(name.clone())]);
        }
        let state = g.state.clone();
        drop(g);
        if let Some(r) = &self.realizer {
            let _ = r.release_host(&state, name.as_str());
        }
    }

    /// The tunnels of local host `name`'s switch: to which hosts, encrypted or not, and a
    /// secure tunnel's path.
    ///
    /// # Errors
    /// No such host, a simulated one, or its switch does not answer.
    pub fn host_tunnels(
        &self,
        name: &str,
    ) -> Result<Vec<crate::infra::realize::Tunnel>, ServiceError> {
        let state = self.snapshot();
        let n = Name::new(name)
            .ok()
            .filter(|n| state.hosts.contains_key(n))
            .ok_or_else(|| ServiceError::NotFound {
                kind: "host",
                name: name.to_owned(),
            })?;
        let provider = state.hosts.get(&n).map_or("", |h| h.provider.as_str());
        let Some(r) = self.realizer.as_ref().filter(|r| r.is_local(provider)) else {
            return Err(ServiceError::Conflict(format!(
                "host {n} is simulated: it has no switch and no tunnels"
            )));
        };
        Ok(r.tunnels(&state, &n)?)
    }

    /// Releases a host that runs no VM.
    ///
    /// # Errors
    /// Not found, or VMs still on it.
    pub fn remove_host(&self, name: &str) -> Result<(), ServiceError> {
        let mut g = self.lock();
        let n = Name::new(name).map_err(|_| ServiceError::NotFound {
            kind: "host",
            name: name.to_owned(),
        })?;
        if !g.state.hosts.contains_key(&n) {
            return Err(ServiceError::NotFound {
                kind: "host",
                name: name.to_owned(),
            });
        }
        let on: Vec<String> = g
            .state
            .vms
            .values()
            .filter(|v| v.host == n)
            .map(|v| v.name.to_string())
            .collect();
        if !on.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "host {n} still runs {}: migrate or delete them first",
                on.join(", ")
            )));
        }
        self.commit(&mut g, vec![Op::DeleteHost(n.clone())])?;
        let state = g.state.clone();
        drop(g);
        if let Some(r) = &self.realizer {
            // The record is gone; a release that fails here is retried by the reconciler
            // (it removes namespaces of hosts the state does not have).
            r.release_host(&state, n.as_str())?;
        }
        Ok(())
    }

    /// Networks.
    pub fn networks(&self) -> Vec<Network> {
        self.lock().state.networks.values().cloned().collect()
    }

    /// Creates a network.
    ///
    /// # Errors
    /// Invalid fields, a taken name or VNI.
    pub fn create_network(&self, req: &NetworkRequest) -> Result<Network, ServiceError> {
        let name = name_field("name", &req.name)?;
        let vni = model::check_vni(req.vni).map_err(|e| invalid("vni", e))?;
        let (subnet, prefix) =
            model::parse_subnet(&req.subnet).map_err(|e| invalid("subnet", e))?;
        let mut g = self.lock();
        if g.state.networks.contains_key(&name) {
            return Err(ServiceError::Conflict(format!(
                "network {name} already exists"
            )));
        }
        if let Some(o) = g.state.networks.values().find(|n| n.vni == vni) {
            return Err(ServiceError::Conflict(format!(
                "VNI {vni} is already used by network {}",
                o.name
            )));
        }
        let n = Network {
            name,
            vni,
            subnet,
            prefix,
        };
        self.commit(&mut g, vec![Op::PutNetwork(n.clone())])?;
        Ok(n)
    }

    /// Deletes a network no VM uses.
    ///
    /// # Errors
    /// Not found, or in use.
    pub fn delete_network(&self, name: &str) -> Result<(), ServiceError> {
        let mut g = self.lock();
        let Some(n) = g
            .state
            .networks
            .keys()
            .find(|k| k.as_str() == name)
            .cloned()
        else {
            return Err(ServiceError::NotFound {
                kind: "network",
                name: name.to_owned(),
            });
        };
        if let Some(v) = g.state.vms.values().find(|v| v.network == n) {
            return Err(ServiceError::Conflict(format!(
                "network {n} is used by VM {}",
                v.name
            )));
        }
        self.commit(&mut g, vec![Op::DeleteNetwork(n)])
    }

    /// Nested VMs.
    pub fn vms(&self) -> Vec<NestedVm> {
        self.lock().state.vms.values().cloned().collect()
    }

    /// One VM.
    ///
    /// # Errors
    /// Not found.
    pub fn vm(&self, name: &str) -> Result<NestedVm, ServiceError> {
        self.lock()
            .state
            .vms
            .values()
            .find(|v| v.name.as_str() == name)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound {
                kind: "VM",
                name: name.to_owned(),
            })
    }

    /// The hosts placement may use (not lost ones), each with its VMs' demands; one pass over
    /// the VMs, so placing stays linear in hosts plus VMs.
    fn existing_hosts(state: &State) -> Vec<ExistingHost> {
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
        if let Some(d) = &req.driver {
            if !VM_DRIVERS.contains(&d.as_str()) {
                return Err(invalid(
                    "driver",
                    format!(
                        "{d:?} is not a driver: use one of {}",
                        VM_DRIVERS.join(", ")
                    ),
                ));
            }
        }
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
            driver: req.driver.clone(),
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

    fn network_or_default(
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

    fn set_state(&self, name: &str, st: VmState) -> Result<NestedVm, ServiceError> {
        let mut g = self.lock();
        let Some(mut vm) = g
            .state
            .vms
            .values()
            .find(|v| v.name.as_str() == name)
            .cloned()
        else {
            return Err(ServiceError::NotFound {
                kind: "VM",
                name: name.to_owned(),
            });
        };
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
        let Some(mut vm) = g
            .state
            .vms
            .values()
            .find(|v| v.name.as_str() == name)
            .cloned()
        else {
            return Err(ServiceError::NotFound {
                kind: "VM",
                name: name.to_owned(),
            });
        };
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
        let mut g = self.lock();
        let (existing, new): (Vec<_>, Vec<_>) = w
            .vms
            .iter()
            .partition(|v| g.state.vms.contains_key(&v.demand.name));
        let demands: Vec<Demand> = new.iter().map(|v| v.demand.clone()).collect();
        let plan = packing::plan(&demands, &provider.instance_types, &w.options);
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

fn demand_of(v: &NestedVm) -> Demand {
    Demand {
        name: v.name.clone(),
        resources: v.resources(),
        affinity: v.affinity.clone(),
        anti_affinity: v.anti_affinity.clone(),
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

fn check_fits(d: &Demand, h: &ExistingHost, opts: &PackOptions) -> Result<(), ServiceError> {
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
fn free_ip(net: &Network, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let base = net.subnet.to_bits();
    let size = 1u32 << (32 - u32::from(net.prefix));
    let taken: std::collections::HashSet<u32> = taken.iter().map(|ip| ip.to_bits()).collect();
    (2..size - 1)
        .map(|i| base + i)
        .find(|ip| !taken.contains(ip))
        .map(Ipv4Addr::from)
}

/// A locally administered MAC derived from the IPv4 address: unique within a network.
fn mac_for(ip: &Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:6b:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Progress of long infrastructure steps goes to the server's log (stderr).
fn log_progress(line: &str) {
    eprintln!("kangaroo: {line}");
}
