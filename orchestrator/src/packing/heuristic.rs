//! The packing heuristic: best-fit decreasing into bins of each candidate instance type, every
//! bin right-sized to the cheapest type that holds its load, a pass that merges pairs of hosts
//! when one cheaper type holds both, and the cheapest result kept.
//!
//! One candidate is always "each unit on its own right-sized host", so the result never costs
//! more than running each VM (or kept-together affinity group) alone.

use crate::model::{InstanceType, Name, Resources};

use super::{cheapest_fit, finish, items, slack, Demand, Item, PackOptions, Plan, PlannedHost};

/// A host being filled.
#[derive(Debug, Clone)]
struct Bin {
    used: Resources,
    anti: Vec<Name>,
    items: Vec<usize>,
}

impl Bin {
    /// A bin holding item `idx` alone.
    fn with(idx: usize, item: &Item) -> Bin {
        let mut b = Bin {
            used: Resources::default(),
            anti: Vec::new(),
            items: Vec::new(),
        };
        b.add(idx, item);
        b
    }

    fn accepts(&self, item: &Item, cap: &Resources) -> bool {
        self.used.plus(&item.resources).fits_in(cap) && !item.conflicts(&self.anti)
    }

    fn add(&mut self, idx: usize, item: &Item) {
        self.used = self.used.plus(&item.resources);
        for a in &item.anti {
            if let Err(p) = self.anti.binary_search(a) {
                self.anti.insert(p, a.clone());
            }
        }
        self.items.push(idx);
    }
}

/// Hosts above this count skip the quadratic merge pass.
const MERGE_LIMIT: usize = 1500;

/// Strategies whose result goes through the merge pass.
const TOP_STRATEGIES: usize = 3;

/// Bins above this count skip the move pass.
const MOVE_LIMIT: usize = 1500;

/// Sweeps of the merge pass.
const MERGE_PASSES: usize = 3;

/// Packs `demands` onto hosts from `catalog`.
///
/// Affinity groups are kept whole when they fit. If that makes the plan cost more than running
/// each VM on its own right-sized host, the groups that cost more together than apart are split
/// (and reported), so a plan never costs more than one VM per instance.
pub fn pack(demands: &[Demand], catalog: &[InstanceType], opts: &PackOptions) -> Plan {
    pack_detailed(demands, catalog, opts).0
}

/// [`pack`], also saying whether costly affinity groups had to be split (the exact solver uses
/// the same packing units).
pub(crate) fn pack_detailed(
    demands: &[Demand],
    catalog: &[InstanceType],
    opts: &PackOptions,
) -> (Plan, bool) {
    let p = pack_with(demands, catalog, opts, false);
    let apart: f64 = demands
        .iter()
        .filter_map(|d| cheapest_fit(catalog, opts, &d.resources))
        .map(|t| t.price_per_hour)
        .sum();
    if p.cost_per_hour <= apart + 1e-9 {
        return (p, false);
    }
    (pack_with(demands, catalog, opts, true), true)
}

fn pack_with(
    demands: &[Demand],
    catalog: &[InstanceType],
    opts: &PackOptions,
    split_costly: bool,
) -> Plan {
    let (items, unplaced, split) = items(demands, catalog, opts, split_costly);
    let mut types: Vec<&InstanceType> = catalog.iter().collect();
    types.sort_by(|a, b| a.name.cmp(&b.name));

    // Candidate 0: one host per item.
    let mut best: Vec<Bin> = items
        .iter()
        .enumerate()
        .map(|(i, it)| Bin::with(i, it))
        .collect();
    let mut best_cost = cost(&best, catalog, opts);
    // The cheapest few strategies (before merging), in order of cost; merging is quadratic, so it
    // runs on these only.
    let mut top: Vec<(f64, Vec<Bin>)> = Vec::new();
    let mut consider = |bins: Vec<Bin>| {
        let c = cost(&bins, catalog, opts);
        let pos = top.partition_point(|(x, _)| *x <= c);
        if pos < TOP_STRATEGIES {
            top.insert(pos, (c, bins));
            top.truncate(TOP_STRATEGIES);
        }
    };
    let all: Vec<usize> = (0..items.len()).collect();

    // Every type as the bin size.
    for t in &types {
        let cap = opts.usable(t);
        if cap.cpu_quarters > 0 && cap.memory_mib > 0 {
            consider(best_fit_decreasing(&items, &all, &cap));
        }
    }

    // Two bin types at once, as the LP optimum does: memory-heavy items into bins of a
    // memory-rich type, the rest into bins of a CPU-rich type, at several split points.
    let bin_types = largest_per_family(&types, opts);
    let ratio = |r: &Resources| r.memory_mib as f64 / f64::from(r.cpu_quarters.max(1));
    let mut ratios: Vec<f64> = items.iter().map(|i| ratio(&i.resources)).collect();
    ratios.sort_by(f64::total_cmp);
    let cuts = if items.len() > 2000 { 6 } else { 12 };
    let thresholds: Vec<f64> = (1..cuts)
        .filter_map(|k| ratios.get(k * ratios.len() / cuts).copied())
        .collect();
    for (a, ca) in &bin_types {
        for (b, cb) in &bin_types {
            if ratio(ca) <= ratio(cb) || a.name == b.name {
                continue;
            }
            for &theta in &thresholds {
                let (rich, lean): (Vec<usize>, Vec<usize>) = all
                    .iter()
                    .partition(|&&i| ratio(&items[i].resources) >= theta);
                let mut bins = best_fit_decreasing(&items, &rich, ca);
                bins.extend(best_fit_decreasing(&items, &lean, cb));
                consider(bins);
            }
        }
    }
    for (_, mut bins) in top {
        merge_pass(&mut bins, &items, catalog, opts);
        move_pass(&mut bins, &items, catalog, opts);
        let c = cost(&bins, catalog, opts);
        if c < best_cost - 1e-9 {
            best = bins;
            best_cost = c;
        }
    }
    let hosts = best
        .into_iter()
        .filter_map(|b| {
            let t = cheapest_fit(catalog, opts, &b.used)?;
            let mut vms: Vec<Name> = b
                .items
                .iter()
                .flat_map(|&i| items[i].members.iter().map(|&m| demands[m].name.clone()))
                .collect();
            vms.sort();
            Some(PlannedHost {
                instance_type: t.name.clone(),
                price_per_hour: t.price_per_hour,
                capacity: opts.usable(t),
                used: b.used,
                vms,
            })
        })
        .collect::<Vec<_>>();
    let mut hosts = hosts;
    hosts.sort_by(|a, b| a.vms.first().cmp(&b.vms.first()));
    finish(demands, catalog, hosts, unplaced, split)
}

fn cost(bins: &[Bin], catalog: &[InstanceType], opts: &PackOptions) -> f64 {
    bins.iter()
        .map(|b| cheapest_fit(catalog, opts, &b.used).map_or(f64::INFINITY, |t| t.price_per_hour))
        .sum()
}

/// Best-fit decreasing of the items `subset` into bins of capacity `cap`; items larger than
/// `cap` get bins of their own. Bins too full to take the smallest item left are closed, so the
/// best-fit scan only visits bins that can still take something.
fn best_fit_decreasing(items: &[Item], subset: &[usize], cap: &Resources) -> Vec<Bin> {
    let size = |r: &Resources| {
        (f64::from(r.cpu_quarters) / f64::from(cap.cpu_quarters))
            .max(r.memory_mib as f64 / cap.memory_mib as f64)
    };
    let mut order: Vec<usize> = subset.to_vec();
    order.sort_by(|&a, &b| {
        size(&items[b].resources)
            .total_cmp(&size(&items[a].resources))
            .then(a.cmp(&b))
    });
    // Smallest demand of each resource among the items still to place, from the end backwards.
    let mut min_left = vec![Resources::new(u32::MAX, u64::MAX); order.len() + 1];
    for k in (0..order.len()).rev() {
        let r = items[order[k]].resources;
        min_left[k] = Resources::new(
            min_left[k + 1].cpu_quarters.min(r.cpu_quarters),
            min_left[k + 1].memory_mib.min(r.memory_mib),
        );
    }
    let mut bins: Vec<Bin> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let it = &items[i];
        if !it.resources.fits_in(cap) {
            bins.push(Bin::with(i, it));
            continue;
        }
        let mut chosen: Option<(usize, f64)> = None;
        for (slot, &bi) in open.iter().enumerate() {
            let b = &bins[bi];
            if b.accepts(it, cap) {
                let s = slack(cap, &b.used.plus(&it.resources));
                if chosen.is_none_or(|(_, best)| s < best) {
                    chosen = Some((slot, s));
                }
            }
        }
        let slot = match chosen {
            Some((slot, _)) => {
                bins[open[slot]].add(i, it);
                slot
            }
            None => {
                bins.push(Bin::with(i, it));
                open.push(bins.len() - 1);
                open.len() - 1
            }
        };
        let left = cap.minus(&bins[open[slot]].used);
        let next = min_left[k + 1];
        if left.cpu_quarters < next.cpu_quarters || left.memory_mib < next.memory_mib {
            open.swap_remove(slot);
        }
    }
    bins
}

/// The largest type of each family (by usable vCPU, then memory), with its usable capacity.
fn largest_per_family<'a>(
    types: &[&'a InstanceType],
    opts: &PackOptions,
) -> Vec<(&'a InstanceType, Resources)> {
    let mut out: Vec<(&InstanceType, Resources)> = Vec::new();
    for t in types {
        let cap = opts.usable(t);
        if cap.cpu_quarters == 0 || cap.memory_mib == 0 {
            continue;
        }
        match out.iter_mut().find(|(o, _)| o.family() == t.family()) {
            Some(slot) => {
                if (cap.cpu_quarters, cap.memory_mib) > (slot.1.cpu_quarters, slot.1.memory_mib) {
                    *slot = (t, cap);
                }
            }
            None => out.push((t, cap)),
        }
    }
    out
}

/// Moves single items between bins whenever that lowers the total price after right-sizing
/// (a bin emptied this way is dropped): local search after the constructive strategies.
fn move_pass(bins: &mut Vec<Bin>, items: &[Item], catalog: &[InstanceType], opts: &PackOptions) {
    if bins.len() > MOVE_LIMIT {
        return;
    }
    let price = |r: &Resources| {
        if *r == Resources::default() {
            Some(0.0)
        } else {
            cheapest_fit(catalog, opts, r).map(|t| t.price_per_hour)
        }
    };
    for _ in 0..MERGE_PASSES {
        let mut changed = false;
        for i in 0..bins.len() {
            let mut pos = 0;
            while pos < bins[i].items.len() {
                let k = bins[i].items[pos];
                let it = &items[k];
                let src_left = bins[i].used.minus(&it.resources);
                let (Some(p_src), Some(p_src_left)) = (price(&bins[i].used), price(&src_left))
                else {
                    pos += 1;
                    continue;
                };
                let mut best: Option<(usize, f64)> = None;
                for (j, b) in bins.iter().enumerate() {
                    if j == i || b.items.is_empty() || it.conflicts(&b.anti) {
                        continue;
                    }
                    let (Some(p_dst), Some(p_dst_new)) =
                        (price(&b.used), price(&b.used.plus(&it.resources)))
                    else {
                        continue;
                    };
                    let delta = p_dst_new - p_dst + p_src_left - p_src;
                    if delta < -1e-9 && best.is_none_or(|(_, d)| delta < d) {
                        best = Some((j, delta));
                    }
                }
                match best {
                    Some((j, _)) => {
                        bins[i].items.swap_remove(pos);
                        bins[i].used = src_left;
                        bins[i].anti = bins[i]
                            .items
                            .iter()
                            .flat_map(|&m| items[m].anti.iter().cloned())
                            .collect();
                        bins[i].anti.sort();
                        bins[i].anti.dedup();
                        bins[j].add(k, it);
                        changed = true;
                    }
                    None => pos += 1,
                }
            }
        }
        bins.retain(|b| !b.items.is_empty());
        if !changed {
            break;
        }
    }
}

/// Merges pairs of bins whenever one type that holds both costs less than the two separately.
fn merge_pass(bins: &mut Vec<Bin>, items: &[Item], catalog: &[InstanceType], opts: &PackOptions) {
    if bins.len() > MERGE_LIMIT {
        return;
    }
    let price = |r: &Resources| cheapest_fit(catalog, opts, r).map(|t| t.price_per_hour);
    for _ in 0..MERGE_PASSES {
        let mut changed = false;
        let mut i = 0;
        while i < bins.len() {
            let mut j = i + 1;
            while j < bins.len() {
                let combined = bins[i].used.plus(&bins[j].used);
                let clash = bins[j]
                    .items
                    .iter()
                    .any(|&k| items[k].conflicts(&bins[i].anti));
                let cheaper = !clash
                    && match (price(&combined), price(&bins[i].used), price(&bins[j].used)) {
                        (Some(pc), Some(pi), Some(pj)) => pc < pi + pj - 1e-9,
                        _ => false,
                    };
                if cheaper {
                    let b = bins.swap_remove(j);
                    for k in b.items {
                        bins[i].add(k, &items[k]);
                    }
                    changed = true;
                } else {
                    j += 1;
                }
            }
            i += 1;
        }
        if !changed {
            break;
        }
    }
}
