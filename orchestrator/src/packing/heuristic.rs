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
const MERGE_LIMIT: usize = 400;

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
pub(crate) fn pack_detailed(demands: &[Demand], catalog: &[InstanceType], opts: &PackOptions) -> (Plan, bool) {
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
        .map(|(i, it)| {
            let mut b = Bin {
                used: Resources::default(),
                anti: Vec::new(),
                items: Vec::new(),
            };
            b.add(i, it);
            b
        })
        .collect();
    let mut best_cost = cost(&best, catalog, opts);
    for t in types {
        let cap = opts.usable(t);
        if cap.cpu_quarters == 0 || cap.memory_mib == 0 {
            continue;
        }
        let mut bins = best_fit_decreasing(&items, &cap);
        merge_pass(&mut bins, &items, catalog, opts);
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

/// Best-fit decreasing into bins of capacity `cap`; items larger than `cap` get bins of their own.
fn best_fit_decreasing(items: &[Item], cap: &Resources) -> Vec<Bin> {
    let size = |r: &Resources| {
        (f64::from(r.cpu_quarters) / f64::from(cap.cpu_quarters))
            .max(r.memory_mib as f64 / cap.memory_mib as f64)
    };
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        size(&items[b].resources)
            .total_cmp(&size(&items[a].resources))
            .then(a.cmp(&b))
    });
    let mut bins: Vec<Bin> = Vec::new();
    for i in order {
        let it = &items[i];
        if !it.resources.fits_in(cap) {
            let mut b = Bin {
                used: Resources::default(),
                anti: Vec::new(),
                items: Vec::new(),
            };
            b.add(i, it);
            bins.push(b);
            continue;
        }
        let mut chosen: Option<(usize, f64)> = None;
        for (k, b) in bins.iter().enumerate() {
            if b.accepts(it, cap) {
                let s = slack(cap, &b.used.plus(&it.resources));
                if chosen.is_none_or(|(_, best)| s < best) {
                    chosen = Some((k, s));
                }
            }
        }
        match chosen {
            Some((k, _)) => bins[k].add(i, it),
            None => {
                let mut b = Bin {
                    used: Resources::default(),
                    anti: Vec::new(),
                    items: Vec::new(),
                };
                b.add(i, it);
                bins.push(b);
            }
        }
    }
    bins
}

/// Merges pairs of bins whenever one type that holds both costs less than the two separately.
fn merge_pass(bins: &mut Vec<Bin>, items: &[Item], catalog: &[InstanceType], opts: &PackOptions) {
    if bins.len() > MERGE_LIMIT {
        return;
    }
    let price = |r: &Resources| cheapest_fit(catalog, opts, r).map(|t| t.price_per_hour);
    let mut changed = true;
    while changed {
        changed = false;
        'outer: for i in 0..bins.len() {
            for j in (i + 1)..bins.len() {
                let combined = bins[i].used.plus(&bins[j].used);
                let clash = bins[j]
                    .items
                    .iter()
                    .any(|&k| items[k].conflicts(&bins[i].anti));
                if clash {
                    continue;
                }
                let (Some(pc), Some(pi), Some(pj)) =
                    (price(&combined), price(&bins[i].used), price(&bins[j].used))
                else {
                    continue;
                };
                if pc < pi + pj - 1e-9 {
                    let b = bins.swap_remove(j);
                    for k in b.items {
                        bins[i].add(k, &items[k]);
                    }
                    changed = true;
                    break 'outer;
                }
            }
        }
    }
}
