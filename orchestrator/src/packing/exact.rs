//! An exact solver for small cases, used to measure the heuristic: the optimal set partition of
//! the packing units (kept-together affinity groups and lone VMs, with the same groups split as
//! the heuristic splits) into hosts, by dynamic programming over subsets.
//!
//! For every subset of units it knows whether they can share a host (capacity of the largest
//! type, no two members of one anti-affinity group) and the cheapest type that holds them; then
//! `best(S) = min over host sets T ∋ lowest(S) of price(T) + best(S \ T)`. That is exact, and takes
//! O(3^n) steps for n units: 16 units (the limit) solve in well under a second.

use crate::model::{InstanceType, Resources};

use super::{cheapest_fit, finish, items, Demand, PackOptions, Plan, PlannedHost};

/// Most units the exact solver accepts.
pub const MAX_UNITS: usize = 16;

/// Outcome of the exact solver.
#[derive(Debug, Clone, PartialEq)]
pub struct Exact {
    /// The optimal plan.
    pub plan: Plan,
}

/// Errors of the exact solver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExactError {
    /// More units than [`MAX_UNITS`].
    #[error("exact solver: {0} packing units, more than the {MAX_UNITS} it handles")]
    TooLarge(usize),
}

/// Solves the packing exactly.
///
/// # Errors
/// [`ExactError::TooLarge`] beyond [`MAX_UNITS`] units.
pub fn solve(
    demands: &[Demand],
    catalog: &[InstanceType],
    opts: &PackOptions,
) -> Result<Exact, ExactError> {
    let (_, split_costly) = super::heuristic::pack_detailed(demands, catalog, opts);
    let (units, unplaced, split) = items(demands, catalog, opts, split_costly);
    let n = units.len();
    if n > MAX_UNITS {
        return Err(ExactError::TooLarge(n));
    }
    let full = 1usize << n;
    // Units that may not share a host with unit i.
    let conflict: Vec<usize> = (0..n)
        .map(|i| {
            (0..n)
                .filter(|&j| j != i && units[i].conflicts(&units[j].anti))
                .fold(0, |m, j| m | (1 << j))
        })
        .collect();
    let mut used = vec![Resources::default(); full];
    let mut ok = vec![true; full];
    let mut price = vec![f64::INFINITY; full];
    for s in 1..full {
        let low = s.trailing_zeros() as usize;
        let rest = s & (s - 1);
        used[s] = used[rest].plus(&units[low].resources);
        ok[s] = ok[rest] && conflict[low] & rest == 0;
        if ok[s] {
            if let Some(t) = cheapest_fit(catalog, opts, &used[s]) {
                price[s] = t.price_per_hour;
            }
        }
    }
    let mut best = vec![f64::INFINITY; full];
    let mut choice = vec![0usize; full];
    best[0] = 0.0;
    for s in 1..full {
        let low = s & s.wrapping_neg();
        let others = s ^ low;
        // Enumerate every subset `sub` of `others`; the host is `low | sub`.
        let mut sub = others;
        loop {
            let t = low | sub;
            let c = price[t] + best[s ^ t];
            if c < best[s] {
                best[s] = c;
                choice[s] = t;
            }
            if sub == 0 {
                break;
            }
            sub = (sub - 1) & others;
        }
    }
    let mut hosts = Vec::new();
    let mut s = full - 1;
    while s != 0 {
        let t = choice[s];
        if t == 0 {
            break;
        }
        if let Some(ty) = cheapest_fit(catalog, opts, &used[t]) {
            let mut vms: Vec<_> = (0..n)
                .filter(|i| t & (1 << i) != 0)
                .flat_map(|i| units[i].members.iter().map(|&m| demands[m].name.clone()))
                .collect();
            vms.sort();
            hosts.push(PlannedHost {
                instance_type: ty.name.clone(),
                price_per_hour: ty.price_per_hour,
                capacity: opts.usable(ty),
                used: used[t],
                vms,
            });
        }
        s ^= t;
    }
    hosts.sort_by(|a, b| a.vms.first().cmp(&b.vms.first()));
    Ok(Exact {
        plan: finish(demands, catalog, hosts, unplaced, split),
    })
}
