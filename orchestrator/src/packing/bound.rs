//! The fractional lower bound on the cost of hosting a set of demands: the optimum of the linear
//! program "rent real-valued amounts of each type so that total usable vCPU and memory cover the
//! total demand". No plan, whatever its packing, can cost less.
//!
//! With two resources the LP optimum sits at a vertex using at most two types, so the bound is
//! found exactly by checking every type alone and every pair.

use crate::model::{InstanceType, Resources};

use super::{Demand, PackOptions};

/// The LP lower bound, or `None` if no type has usable capacity.
pub fn lower_bound(
    demands: &[Demand],
    catalog: &[InstanceType],
    opts: &PackOptions,
) -> Option<f64> {
    let total = demands
        .iter()
        .fold(Resources::default(), |a, d| a.plus(&d.resources));
    let (c, m) = (f64::from(total.cpu_quarters), total.memory_mib as f64);
    let types: Vec<(f64, f64, f64)> = catalog
        .iter()
        .map(|t| {
            let u = opts.usable(t);
            (
                f64::from(u.cpu_quarters),
                u.memory_mib as f64,
                t.price_per_hour,
            )
        })
        .filter(|(uc, um, _)| *uc > 0.0 && *um > 0.0)
        .collect();
    let mut best: Option<f64> = None;
    let mut consider = |v: f64| {
        if v.is_finite() && best.is_none_or(|b| v < b) {
            best = Some(v);
        }
    };
    for &(c1, m1, p1) in &types {
        consider(p1 * (c / c1).max(m / m1));
    }
    for (i, &(c1, m1, p1)) in types.iter().enumerate() {
        for &(c2, m2, p2) in &types[i + 1..] {
            let det = c1 * m2 - c2 * m1;
            if det.abs() < 1e-12 {
                continue;
            }
            let n1 = (c * m2 - c2 * m) / det;
            let n2 = (c1 * m - c * m1) / det;
            if n1 >= 0.0 && n2 >= 0.0 {
                consider(p1 * n1 + p2 * n2);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Name;

    fn t(name: &str, vcpus: u32, gib: u64, price: f64) -> InstanceType {
        InstanceType {
            name: Name::new(name).unwrap(),
            vcpus,
            memory_mib: gib * 1024,
            price_per_hour: price,
        }
    }
    fn d(q: u32, mib: u64) -> Demand {
        Demand {
            name: Name::new("x").unwrap(),
            resources: Resources::new(q, mib),
            affinity: None,
            anti_affinity: None,
        }
    }

    #[test]
    fn single_type_bound() {
        let cat = [t("a", 2, 4, 1.0)];
        // 4 vCPU and 4 GiB: CPU binds, 2 hosts' worth.
        assert_eq!(
            lower_bound(&[d(16, 4096)], &cat, &PackOptions::default()),
            Some(2.0)
        );
    }

    #[test]
    fn mixing_a_cpu_and_a_memory_type_beats_either_alone() {
        let cat = [t("cpu", 4, 2, 1.0), t("mem", 1, 8, 1.0)];
        // Demand 5 vCPU, 10 GiB: cpu alone needs 5 hosts (memory), mem alone 5 (cpu); a mix
        // (n1=1, n2=1) covers 5 vCPU / 10 GiB for 2.
        let b = lower_bound(&[d(20, 10 * 1024)], &cat, &PackOptions::default()).unwrap();
        assert!((b - 2.0).abs() < 1e-9, "{b}");
    }
}
