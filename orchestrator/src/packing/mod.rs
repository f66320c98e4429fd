//! Cost-aware packing: which hosts to rent and where each nested VM goes.
//!
//! Objective: minimise the hourly cost of the rented hosts, subject to every host's usable
//! capacity (its instance type's vCPUs × overcommit and memory, less a per-host reserve), keeping
//! each affinity group on one host when it fits, and never putting two members of an
//! anti-affinity group on one host.
//!
//! - [`plan`] runs the heuristic ([`heuristic`]) on any size.
//! - [`exact::solve`] is a MILP (good_lp + microlp) for small cases, used to measure the heuristic.
//! - [`bound::lower_bound`] is the fractional (LP) lower bound on any plan's cost.
//! - [`place_one`] places one more VM into an existing deployment without moving others.
//! - [`consolidate`] proposes migrations that free whole hosts.
//!
//! Every function here is deterministic: the same input gives the same plan.

pub mod bound;
pub mod exact;
pub mod heuristic;
pub mod synth;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{InstanceType, Name, Resources, QUARTERS_PER_VCPU};

/// Packing options.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackOptions {
    /// Held back on every host for the hypervisor and the switch.
    pub reserve: Resources,
    /// vCPUs that may be placed per physical vCPU (1 = no overcommit).
    pub cpu_overcommit: f64,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            reserve: Resources::default(),
            cpu_overcommit: 1.0,
        }
    }
}

impl PackOptions {
    /// What a host of type `t` offers to nested VMs.
    pub fn usable(&self, t: &InstanceType) -> Resources {
        let cpu = (f64::from(t.vcpus * QUARTERS_PER_VCPU) * self.cpu_overcommit).floor();
        // Bounded by 4096 vCPUs × 16 overcommit × 4 quarters, well within u32.
        Resources::new(cpu as u32, t.memory_mib).minus(&self.reserve)
    }
}

/// One nested VM to place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Demand {
    /// Its name.
    pub name: Name,
    /// What it needs.
    pub resources: Resources,
    /// Affinity group.
    pub affinity: Option<Name>,
    /// Anti-affinity group.
    pub anti_affinity: Option<Name>,
}

/// A host in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlannedHost {
    /// The instance type to rent.
    pub instance_type: Name,
    /// Its hourly price.
    pub price_per_hour: f64,
    /// What it offers to nested VMs.
    pub capacity: Resources,
    /// What the placed VMs use.
    pub used: Resources,
    /// The VMs placed on it.
    pub vms: Vec<Name>,
}

/// A VM that could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Unplaced {
    /// The VM.
    pub name: Name,
    /// Why.
    pub reason: String,
}

/// An affinity group that could not be kept on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SplitGroup {
    /// The group.
    pub group: Name,
    /// How many hosts it spans.
    pub parts: usize,
    /// Why.
    pub reason: String,
}

/// A packing result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    /// Hosts to rent, with their VMs.
    pub hosts: Vec<PlannedHost>,
    /// VMs that fit no instance type.
    pub unplaced: Vec<Unplaced>,
    /// Affinity groups spread over more than one host.
    pub split_groups: Vec<SplitGroup>,
    /// Cost of the plan per hour.
    pub cost_per_hour: f64,
    /// Cost of running each placed VM alone on the cheapest type that fits it (no nesting, no
    /// reserve): what the tenant pays without Kangaroo.
    pub baseline_cost_per_hour: f64,
    /// `baseline - cost`.
    pub saving_per_hour: f64,
    /// Saving as a percentage of the baseline.
    pub saving_percent: f64,
    /// Placed vCPUs / usable vCPUs over all hosts.
    pub cpu_utilisation: f64,
    /// Placed memory / usable memory over all hosts.
    pub memory_utilisation: f64,
}

/// An affinity group (or a lone VM) packed as one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    /// Indexes into the demand list.
    pub members: Vec<usize>,
    pub resources: Resources,
    /// Anti-affinity groups of the members (sorted, deduplicated).
    pub anti: Vec<Name>,
}

impl Item {
    pub(crate) fn conflicts(&self, anti: &[Name]) -> bool {
        self.anti.iter().any(|a| anti.binary_search(a).is_ok())
    }
}

/// The cheapest type whose usable capacity holds `r`.
pub(crate) fn cheapest_fit<'a>(
    catalog: &'a [InstanceType],
    opts: &PackOptions,
    r: &Resources,
) -> Option<&'a InstanceType> {
    catalog
        .iter()
        .filter(|t| r.fits_in(&opts.usable(t)))
        .min_by(|a, b| {
            a.price_per_hour
                .total_cmp(&b.price_per_hour)
                .then_with(|| a.name.cmp(&b.name))
        })
}

/// Splits demands into items: affinity groups that fit one host stay whole; others are cut into
/// as few parts as first-fit-decreasing finds (respecting anti-affinity inside the group). VMs
/// that fit no type are returned as unplaced.
pub(crate) fn items(
    demands: &[Demand],
    catalog: &[InstanceType],
    opts: &PackOptions,
    split_costly: bool,
) -> (Vec<Item>, Vec<Unplaced>, Vec<SplitGroup>) {
    let largest = catalog
        .iter()
        .map(|t| (opts.usable(t), t))
        .max_by(|(a, ta), (b, tb)| {
            (u64::from(a.cpu_quarters) * a.memory_mib)
                .cmp(&(u64::from(b.cpu_quarters) * b.memory_mib))
                .then_with(|| tb.name.cmp(&ta.name))
        });
    let mut unplaced = Vec::new();
    let mut groups: BTreeMap<&Name, Vec<usize>> = BTreeMap::new();
    let mut items = Vec::new();
    for (i, d) in demands.iter().enumerate() {
        if cheapest_fit(catalog, opts, &d.resources).is_none() {
            let biggest = largest
                .map(|(_, t)| t.name.to_string())
                .unwrap_or_else(|| "none".into());
            unplaced.push(Unplaced {
                name: d.name.clone(),
                reason: format!(
                    "needs {} vCPU / {} MiB; no instance type holds that after the host reserve (largest: {biggest})",
                    crate::model::format_vcpus(d.resources.cpu_quarters),
                    d.resources.memory_mib
                ),
            });
            continue;
        }
        match &d.affinity {
            Some(g) => groups.entry(g).or_default().push(i),
            None => items.push(single(demands, i)),
        }
    }
    let mut split = Vec::new();
    for (g, mut members) in groups {
        // First-fit decreasing within the largest usable capacity.
        members.sort_by(|&a, &b| {
            demands[b]
                .resources
                .cmp(&demands[a].resources)
                .then(a.cmp(&b))
        });
        let cap = largest.map(|(c, _)| c).unwrap_or_default();
        let mut parts: Vec<Item> = Vec::new();
        let mut anti_conflict = false;
        let mut too_big = false;
        for m in members {
            let one = single(demands, m);
            let slot = parts.iter().position(|p| {
                let fits = p.resources.plus(&one.resources).fits_in(&cap);
                let clash = p.conflicts(&one.anti);
                fits && !clash
            });
            match slot {
                Some(k) => merge(&mut parts[k], one),
                None => {
                    if let Some(p) = parts.first() {
                        if p.conflicts(&one.anti) {
                            anti_conflict = true;
                        } else {
                            too_big = true;
                        }
                    }
                    parts.push(one);
                }
            }
        }
        // A group kept together must not cost more than its members apart: affinity buys
        // performance, never a bill above one VM per instance.
        let price = |r: &Resources| {
            cheapest_fit(catalog, opts, r).map_or(f64::INFINITY, |t| t.price_per_hour)
        };
        let mut costly: Option<(f64, f64)> = None;
        let mut kept = Vec::new();
        for p in parts {
            let together = price(&p.resources);
            let apart: f64 = p
                .members
                .iter()
                .map(|&m| price(&demands[m].resources))
                .sum();
            if split_costly && p.members.len() > 1 && together > apart + 1e-9 {
                costly = Some((together, apart));
                kept.extend(p.members.iter().map(|&m| single(demands, m)));
            } else {
                kept.push(p);
            }
        }
        let parts = kept;
        if let Some((together, apart)) = costly {
            split.push(SplitGroup {
                group: g.clone(),
                parts: parts.len(),
                reason: format!("kept together it needs a host costing {together:.4}/h, more than its members apart ({apart:.4}/h), and the plan would cost more than one VM per instance"),
            });
        } else if parts.len() > 1 {
            let reason = match (anti_conflict, too_big) {
                (true, false) => "members are in a common anti-affinity group".to_owned(),
                (false, _) => format!(
                    "the group needs more than the largest instance type ({}) offers",
                    largest.map(|(_, t)| t.name.to_string()).unwrap_or_default()
                ),
                (true, true) => {
                    "anti-affinity between members, and more than the largest instance type offers"
                        .to_owned()
                }
            };
            split.push(SplitGroup {
                group: g.clone(),
                parts: parts.len(),
                reason,
            });
        }
        items.extend(parts);
    }
    (items, unplaced, split)
}

fn single(demands: &[Demand], i: usize) -> Item {
    Item {
        members: vec![i],
        resources: demands[i].resources,
        anti: demands[i].anti_affinity.iter().cloned().collect(),
    }
}

fn merge(into: &mut Item, other: Item) {
    into.members.extend(other.members);
    into.resources = into.resources.plus(&other.resources);
    for a in other.anti {
        if let Err(pos) = into.anti.binary_search(&a) {
            into.anti.insert(pos, a);
        }
    }
}

/// Cost of running each demand alone on the cheapest type that holds it, with no reserve.
pub fn baseline_cost(demands: &[Demand], catalog: &[InstanceType]) -> f64 {
    let raw = PackOptions::default();
    demands
        .iter()
        .filter_map(|d| cheapest_fit(catalog, &raw, &d.resources))
        .map(|t| t.price_per_hour)
        .sum()
}

/// Fills in the totals of a plan from its hosts.
pub(crate) fn finish(
    demands: &[Demand],
    catalog: &[InstanceType],
    hosts: Vec<PlannedHost>,
    unplaced: Vec<Unplaced>,
    split_groups: Vec<SplitGroup>,
) -> Plan {
    let placed: Vec<Demand> = demands
        .iter()
        .filter(|d| !unplaced.iter().any(|u| u.name == d.name))
        .cloned()
        .collect();
    let cost: f64 = hosts.iter().map(|h| h.price_per_hour).sum();
    let baseline = baseline_cost(&placed, catalog);
    let (mut uc, mut cc, mut um, mut cm) = (0u64, 0u64, 0u64, 0u64);
    for h in &hosts {
        uc += u64::from(h.used.cpu_quarters);
        cc += u64::from(h.capacity.cpu_quarters);
        um += h.used.memory_mib;
        cm += h.capacity.memory_mib;
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Plan {
        hosts,
        unplaced,
        split_groups,
        cost_per_hour: round6(cost),
        baseline_cost_per_hour: round6(baseline),
        saving_per_hour: round6(baseline - cost),
        saving_percent: if baseline > 0.0 {
            round6(100.0 * (baseline - cost) / baseline)
        } else {
            0.0
        },
        cpu_utilisation: round6(ratio(uc, cc)),
        memory_utilisation: round6(ratio(um, cm)),
    }
}

/// Capacity left after `used`, normalised per resource and summed (0 = exactly full).
pub(crate) fn slack(cap: &Resources, used: &Resources) -> f64 {
    let left = cap.minus(used);
    f64::from(left.cpu_quarters) / f64::from(cap.cpu_quarters.max(1))
        + left.memory_mib as f64 / cap.memory_mib.max(1) as f64
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Plans hosts and placement for `demands` with the heuristic.
pub fn plan(demands: &[Demand], catalog: &[InstanceType], opts: &PackOptions) -> Plan {
    heuristic::pack(demands, catalog, opts)
}

/// A host of an existing deployment, for incremental placement and consolidation.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingHost {
    /// Host name.
    pub name: Name,
    /// Its type.
    pub instance_type: InstanceType,
    /// The VMs on it.
    pub vms: Vec<Demand>,
}

/// Where [`place_one`] put a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Decision {
    /// On an existing host.
    Existing(Name),
    /// On a new host of this type.
    Rent(Name),
}

/// Places `vm` into `hosts` without moving anything: on the host of its affinity group if it fits
/// there, else on the fullest existing host where it fits without breaking anti-affinity (best
/// fit), else on a new host of the cheapest type that holds it.
///
/// # Errors
/// A message when no instance type can hold the VM.
pub fn place_one(
    vm: &Demand,
    hosts: &[ExistingHost],
    catalog: &[InstanceType],
    opts: &PackOptions,
) -> Result<Decision, String> {
    // Minimise (not with its group, normalised slack left, name).
    let mut best: Option<((bool, f64), &Name)> = None;
    for h in hosts {
        let cap = opts.usable(&h.instance_type);
        let used = h
            .vms
            .iter()
            .fold(Resources::default(), |a, d| a.plus(&d.resources));
        if !used.plus(&vm.resources).fits_in(&cap) {
            continue;
        }
        if vm.anti_affinity.is_some() && h.vms.iter().any(|d| d.anti_affinity == vm.anti_affinity) {
            continue;
        }
        let with_group = vm.affinity.is_some() && h.vms.iter().any(|d| d.affinity == vm.affinity);
        let key = (!with_group, slack(&cap, &used.plus(&vm.resources)));
        let better = match &best {
            None => true,
            Some(((g, s), n)) => key
                .0
                .cmp(g)
                .then(key.1.total_cmp(s))
                .then(h.name.cmp(n))
                .is_lt(),
        };
        if better {
            best = Some((key, &h.name));
        }
    }
    if let Some((_, n)) = best {
        return Ok(Decision::Existing(n.clone()));
    }
    cheapest_fit(catalog, opts, &vm.resources)
        .map(|t| Decision::Rent(t.name.clone()))
        .ok_or_else(|| format!("VM {} fits no instance type of the catalog", vm.name))
}

/// A proposed migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Migration {
    /// The VM.
    pub vm: Name,
    /// From host.
    pub from: Name,
    /// To host.
    pub to: Name,
}

/// A consolidation proposal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Consolidation {
    /// Migrations, in order.
    pub migrations: Vec<Migration>,
    /// Hosts that end up empty and can be released.
    pub released: Vec<Name>,
    /// Hourly cost before.
    pub cost_before: f64,
    /// Hourly cost after releasing.
    pub cost_after: f64,
}

/// Proposes migrations that empty whole hosts: hosts are tried from the least used; a host is
/// emptied only if every one of its VMs fits elsewhere (best fit, respecting anti-affinity and
/// without moving VMs onto hosts that are themselves being emptied).
pub fn consolidate(hosts: &[ExistingHost], opts: &PackOptions) -> Consolidation {
    let mut state: Vec<ExistingHost> = hosts.to_vec();
    let cost_before: f64 = hosts.iter().map(|h| h.instance_type.price_per_hour).sum();
    let util = |h: &ExistingHost| {
        let cap = opts.usable(&h.instance_type);
        let used = h
            .vms
            .iter()
            .fold(Resources::default(), |a, d| a.plus(&d.resources));
        let c = f64::from(used.cpu_quarters) / f64::from(cap.cpu_quarters.max(1));
        let m = used.memory_mib as f64 / cap.memory_mib.max(1) as f64;
        c.max(m)
    };
    let mut order: Vec<usize> = (0..state.len()).collect();
    order.sort_by(|&a, &b| {
        util(&state[a])
            .total_cmp(&util(&state[b]))
            .then(state[a].name.cmp(&state[b].name))
    });
    let mut released: Vec<Name> = Vec::new();
    let mut migrations = Vec::new();
    for &i in &order {
        if state[i].vms.is_empty() {
            released.push(state[i].name.clone());
            continue;
        }
        let targets: Vec<ExistingHost> = state
            .iter()
            .enumerate()
            .filter(|(j, h)| *j != i && !released.contains(&h.name))
            .map(|(_, h)| h.clone())
            .collect();
        let mut trial = targets.clone();
        let mut moves = Vec::new();
        let mut ok = true;
        let mut vms = state[i].vms.clone();
        vms.sort_by(|a, b| b.resources.cmp(&a.resources).then(a.name.cmp(&b.name)));
        for vm in &vms {
            match place_one(vm, &trial, &[], opts) {
                Ok(Decision::Existing(to)) => {
                    if let Some(t) = trial.iter_mut().find(|h| h.name == to) {
                        t.vms.push(vm.clone());
                    }
                    moves.push(Migration {
                        vm: vm.name.clone(),
                        from: state[i].name.clone(),
                        to,
                    });
                }
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            for t in trial {
                if let Some(s) = state.iter_mut().find(|h| h.name == t.name) {
                    *s = t;
                }
            }
            state[i].vms.clear();
            released.push(state[i].name.clone());
            migrations.extend(moves);
        }
    }
    // A VM moved twice (its first target was emptied later) migrates once, from where it was
    // to where it ends.
    let mut final_moves: Vec<Migration> = Vec::new();
    for m in migrations {
        if let Some(prev) = final_moves.iter_mut().find(|p| p.vm == m.vm) {
            prev.to = m.to;
        } else {
            final_moves.push(m);
        }
    }
    final_moves.retain(|m| m.from != m.to);
    let migrations = final_moves;
    let cost_after: f64 = state
        .iter()
        .filter(|h| !released.contains(&h.name))
        .map(|h| h.instance_type.price_per_hour)
        .sum();
    Consolidation {
        migrations,
        released,
        cost_before: round6(cost_before),
        cost_after: round6(cost_after),
    }
}

#[cfg(test)]
mod tests;
