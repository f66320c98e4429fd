//! Tests of packing: worked examples and properties over random workloads.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::catalog::Catalog;
use crate::model::{InstanceType, Name, Resources};

fn cat(name: &str) -> Vec<InstanceType> {
    Catalog::load(name).unwrap().instances
}

fn d(name: &str, vcpus_q: u32, mib: u64, aff: Option<&str>, anti: Option<&str>) -> Demand {
    Demand {
        name: Name::new(name).unwrap(),
        resources: Resources::new(vcpus_q, mib),
        affinity: aff.map(|a| Name::new(a).unwrap()),
        anti_affinity: anti.map(|a| Name::new(a).unwrap()),
    }
}

fn host_of(p: &Plan, vm: &str) -> usize {
    p.hosts
        .iter()
        .position(|h| h.vms.iter().any(|v| v.as_str() == vm))
        .unwrap()
}

#[test]
fn half_used_instances_are_packed_together() {
    // Four services of half a vCPU and 1 GiB: one instance each costs 4 × t3.micro? No: 1 GiB
    // fits t3.micro (2 vCPU, 1 GiB) exactly; packed, two t3.small-class hosts or one t3.medium.
    let vms: Vec<Demand> = (1..=4)
        .map(|i| d(&format!("svc-{i}"), 2, 1024, None, None))
        .collect();
    let p = plan(&vms, &cat("ec2-2026"), &PackOptions::default());
    assert_eq!(p.baseline_cost_per_hour, 4.0 * 0.0104);
    assert!(p.cost_per_hour <= p.baseline_cost_per_hour);
    assert!(p.unplaced.is_empty());
    let placed: usize = p.hosts.iter().map(|h| h.vms.len()).sum();
    assert_eq!(placed, 4);
}

#[test]
fn paper_era_consolidation_saves_money() {
    // Ten small services (0.5 vCPU, 1 GiB) on the 2014 catalog: alone, each needs an m3.medium
    // ($0.067); packed onto larger instances they cost less.
    let vms: Vec<Demand> = (1..=10)
        .map(|i| d(&format!("s{i}"), 2, 1024, None, None))
        .collect();
    let p = plan(&vms, &cat("ec2-2014"), &PackOptions::default());
    assert!((p.baseline_cost_per_hour - 0.67).abs() < 1e-9);
    assert!(p.cost_per_hour < 0.67 * 0.6, "{p:#?}");
    assert!(p.saving_percent > 40.0);
}

#[test]
fn affinity_groups_share_a_host_and_anti_affinity_spreads() {
    let vms = vec![
        d("web-1", 4, 2048, Some("shop"), Some("web")),
        d("web-2", 4, 2048, None, Some("web")),
        d("web-3", 4, 2048, None, Some("web")),
        d("db", 8, 8192, Some("shop"), None),
        d("cache", 2, 1024, Some("shop"), None),
    ];
    let p = plan(&vms, &cat("ec2-2014"), &PackOptions::default());
    let shop = host_of(&p, "web-1");
    assert_eq!(host_of(&p, "db"), shop);
    assert_eq!(host_of(&p, "cache"), shop);
    let webs: Vec<usize> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|v| host_of(&p, v))
        .collect();
    assert!(
        webs[0] != webs[1] && webs[1] != webs[2] && webs[0] != webs[2],
        "{p:#?}"
    );
    assert!(p.split_groups.is_empty());
    assert!(p.cost_per_hour <= p.baseline_cost_per_hour);
}

#[test]
fn groups_that_would_raise_the_bill_above_one_vm_per_instance_are_split() {
    // On 2026 prices the burstable t3 types make these three cheaper apart than on one m5.xlarge.
    let vms = vec![
        d("web", 4, 2048, Some("shop"), None),
        d("db", 8, 8192, Some("shop"), None),
        d("cache", 2, 1024, Some("shop"), None),
    ];
    let p = plan(&vms, &cat("ec2-2026"), &PackOptions::default());
    assert!(p.cost_per_hour <= p.baseline_cost_per_hour + 1e-9);
    assert_eq!(p.split_groups.len(), 1, "{p:#?}");
    assert!(p.split_groups[0]
        .reason
        .contains("more than one VM per instance"));
}

#[test]
fn oversized_vms_are_unplaced_and_big_groups_split_with_a_reason() {
    let vms = vec![
        d("huge", 4 * 64, 1024, None, None),
        d("a", 4 * 20, 1024, Some("g"), None),
        d("b", 4 * 20, 1024, Some("g"), None),
    ];
    let p = plan(&vms, &cat("ec2-2026"), &PackOptions::default());
    assert_eq!(p.unplaced.len(), 1);
    assert_eq!(p.unplaced[0].name.as_str(), "huge");
    assert!(p.unplaced[0].reason.contains("no instance type"));
    assert_eq!(p.split_groups.len(), 1);
    assert_eq!(p.split_groups[0].parts, 2);
    assert!(
        p.split_groups[0].reason.contains("largest instance type"),
        "{:?}",
        p.split_groups
    );
    assert_ne!(host_of(&p, "a"), host_of(&p, "b"));
}

#[test]
fn affinity_group_with_internal_anti_affinity_is_split_and_says_why() {
    let vms = vec![
        d("a", 1, 256, Some("g"), Some("x")),
        d("b", 1, 256, Some("g"), Some("x")),
    ];
    let p = plan(&vms, &cat("ec2-2026"), &PackOptions::default());
    assert_eq!(p.split_groups.len(), 1);
    assert!(p.split_groups[0].reason.contains("anti-affinity"));
    assert_ne!(host_of(&p, "a"), host_of(&p, "b"));
}

#[test]
fn reserve_and_overcommit_change_capacity() {
    let t = &cat("ec2-2026")[0]; // t3.micro: 2 vCPU, 1 GiB
    let o = PackOptions {
        reserve: Resources::new(1, 256),
        cpu_overcommit: 2.0,
    };
    assert_eq!(o.usable(t), Resources::new(15, 768));
}

#[test]
fn exact_solver_matches_or_beats_the_heuristic_on_small_cases() {
    let vms = vec![
        d("a", 6, 3072, None, None),
        d("b", 6, 3072, None, None),
        d("c", 2, 6144, None, None),
        d("d", 4, 1024, Some("g"), None),
        d("e", 4, 1024, Some("g"), None),
        d("f", 8, 4096, None, Some("x")),
        d("g", 8, 4096, None, Some("x")),
    ];
    let catalog = cat("ec2-2026");
    let h = plan(&vms, &catalog, &PackOptions::default());
    let e = exact::solve(&vms, &catalog, &PackOptions::default()).unwrap();
    assert!(
        e.plan.cost_per_hour <= h.cost_per_hour + 1e-9,
        "exact {} heuristic {}",
        e.plan.cost_per_hour,
        h.cost_per_hour
    );
    let lb = bound::lower_bound(&vms, &catalog, &PackOptions::default()).unwrap();
    assert!(lb <= e.plan.cost_per_hour + 1e-9);
    check_plan(&vms, &e.plan, &PackOptions::default(), &catalog).unwrap();
}

#[test]
fn exact_finds_the_known_optimum() {
    // Two memory-heavy and two CPU-heavy VMs: one r6i.large (2 vCPU, 16 GiB, $0.126) holds both
    // memory-heavy ones, one t3.medium (2 vCPU, 4 GiB, $0.0416) both CPU-heavy ones.
    let vms = vec![
        d("m1", 4, 7168, None, None),
        d("m2", 4, 7168, None, None),
        d("c1", 4, 1792, None, None),
        d("c2", 4, 1792, None, None),
    ];
    let e = exact::solve(&vms, &cat("ec2-2026"), &PackOptions::default()).unwrap();
    assert!(
        (e.plan.cost_per_hour - (0.126 + 0.0416)).abs() < 1e-9,
        "{:#?}",
        e.plan
    );
    let many: Vec<Demand> = (0..17)
        .map(|i| d(&format!("v{i}"), 1, 256, None, None))
        .collect();
    assert!(matches!(
        exact::solve(&many, &cat("ec2-2026"), &PackOptions::default()),
        Err(exact::ExactError::TooLarge(17))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The exact plan is valid and never costs more than the heuristic's, nor less than the bound.
    #[test]
    fn exact_is_valid_and_no_worse_than_the_heuristic(vms in workload().prop_filter("small", |v| v.len() <= 12)) {
        let catalog = cat("ec2-2026");
        let opts = PackOptions::default();
        let h = plan(&vms, &catalog, &opts);
        let e = exact::solve(&vms, &catalog, &opts).unwrap();
        if let Err(err) = check_plan(&vms, &e.plan, &opts, &catalog) {
            prop_assert!(false, "{}", err);
        }
        prop_assert!(e.plan.cost_per_hour <= h.cost_per_hour + 1e-9);
        let placed: Vec<Demand> = vms.iter().filter(|d| !h.unplaced.iter().any(|u| u.name == d.name)).cloned().collect();
        if let Some(lb) = bound::lower_bound(&placed, &catalog, &opts) {
            prop_assert!(e.plan.cost_per_hour + 1e-6 >= lb);
        }
    }
}

#[test]
fn place_one_prefers_the_group_then_best_fit_then_rents() {
    let catalog = cat("ec2-2026");
    let m5 = catalog
        .iter()
        .find(|t| t.name.as_str() == "m5.xlarge")
        .unwrap()
        .clone();
    let hosts = vec![
        ExistingHost {
            name: Name::new("h1").unwrap(),
            instance_type: m5.clone(),
            vms: vec![d("x", 4, 4096, None, None)],
        },
        ExistingHost {
            name: Name::new("h2").unwrap(),
            instance_type: m5.clone(),
            vms: vec![d("y", 12, 4096, Some("g"), None)],
        },
    ];
    let o = PackOptions::default();
    assert_eq!(
        place_one(&d("n", 4, 1024, Some("g"), None), &hosts, &catalog, &o),
        Ok(Decision::Existing(Name::new("h2").unwrap()))
    );
    assert_eq!(
        place_one(&d("n", 4, 1024, None, None), &hosts, &catalog, &o),
        Ok(Decision::Existing(Name::new("h2").unwrap())),
        "best fit: h2 is fuller"
    );
    assert_eq!(
        place_one(&d("n", 8, 1024, None, None), &hosts, &catalog, &o),
        Ok(Decision::Existing(Name::new("h1").unwrap()))
    );
    let big = place_one(&d("n", 16, 1024, None, None), &hosts, &catalog, &o).unwrap();
    assert!(matches!(big, Decision::Rent(_)), "{big:?}");
    assert!(place_one(&d("n", 4096, 1024, None, None), &hosts, &catalog, &o).is_err());
}

#[test]
fn consolidation_empties_underused_hosts() {
    let catalog = cat("ec2-2026");
    let m5 = catalog
        .iter()
        .find(|t| t.name.as_str() == "m5.xlarge")
        .unwrap()
        .clone();
    let hosts: Vec<ExistingHost> = (1..=3)
        .map(|i| ExistingHost {
            name: Name::new(&format!("h{i}")).unwrap(),
            instance_type: m5.clone(),
            vms: vec![d(&format!("v{i}"), 4, 4096, None, None)],
        })
        .collect();
    let c = consolidate(&hosts, &PackOptions::default());
    assert_eq!(c.released.len(), 2, "{c:#?}");
    assert_eq!(c.migrations.len(), 2);
    assert!((c.cost_after - 0.192).abs() < 1e-9);
    assert!((c.cost_before - 3.0 * 0.192).abs() < 1e-9);
    // Anti-affinity blocks it.
    let spread: Vec<ExistingHost> = hosts
        .iter()
        .map(|h| ExistingHost {
            vms: h
                .vms
                .iter()
                .map(|v| Demand {
                    anti_affinity: Some(Name::new("s").unwrap()),
                    ..v.clone()
                })
                .collect(),
            ..h.clone()
        })
        .collect();
    assert!(consolidate(&spread, &PackOptions::default())
        .migrations
        .is_empty());
}

/// Checks a plan's invariants; returns a description of the first violation.
pub(crate) fn check_plan(
    demands: &[Demand],
    p: &Plan,
    opts: &PackOptions,
    catalog: &[InstanceType],
) -> Result<(), String> {
    let by_name: BTreeMap<&Name, &Demand> = demands.iter().map(|d| (&d.name, d)).collect();
    let mut seen = BTreeMap::new();
    for (hi, h) in p.hosts.iter().enumerate() {
        let t = catalog
            .iter()
            .find(|t| t.name == h.instance_type)
            .ok_or("unknown type")?;
        let cap = opts.usable(t);
        let used = h
            .vms
            .iter()
            .fold(Resources::default(), |a, v| a.plus(&by_name[v].resources));
        if !used.fits_in(&cap) {
            return Err(format!(
                "host {hi} ({}) over capacity: {used:?} > {cap:?}",
                h.instance_type
            ));
        }
        let mut antis = Vec::new();
        for v in &h.vms {
            if seen.insert(v.clone(), hi).is_some() {
                return Err(format!("{v} placed twice"));
            }
            if let Some(a) = &by_name[v].anti_affinity {
                if antis.contains(&a) {
                    return Err(format!("anti-affinity group {a} twice on host {hi}"));
                }
                antis.push(a);
            }
        }
    }
    for d in demands {
        let placed = seen.contains_key(&d.name);
        let unplaced = p.unplaced.iter().any(|u| u.name == d.name);
        if placed == unplaced {
            return Err(format!("{} placed={placed} unplaced={unplaced}", d.name));
        }
    }
    Ok(())
}

/// A random workload: sizes drawn from realistic shapes, some affinity and anti-affinity groups.
pub(crate) fn workload() -> impl Strategy<Value = Vec<Demand>> {
    let shape = prop_oneof![
        Just((1u32, 256u64)),
        Just((2, 1024)),
        Just((4, 2048)),
        Just((4, 4096)),
        Just((8, 8192)),
        Just((8, 2048)),
        Just((16, 16384)),
        Just((2, 8192)),
        Just((24, 32768))
    ];
    proptest::collection::vec(
        (
            shape,
            proptest::option::weighted(0.3, 0u8..4),
            proptest::option::weighted(0.2, 0u8..3),
        ),
        1..40,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, ((q, m), aff, anti))| Demand {
                name: Name::new(&format!("vm-{i}")).unwrap(),
                resources: Resources::new(q, m),
                affinity: aff.map(|a| Name::new(&format!("aff-{a}")).unwrap()),
                anti_affinity: anti.map(|a| Name::new(&format!("anti-{a}")).unwrap()),
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No host over capacity, anti-affinity never violated, every VM placed exactly once or
    /// reported unplaced; the plan is never costlier than one VM per instance and never below
    /// the LP lower bound; and the same input gives the same plan.
    #[test]
    fn plans_are_valid_cheap_and_deterministic(vms in workload(), which in 0usize..2, reserve in prop_oneof![Just(false), Just(true)]) {
        let catalog = cat(["ec2-2014", "ec2-2026"][which]);
        let opts = if reserve { PackOptions { reserve: Resources::new(1, 256), cpu_overcommit: 1.5 } } else { PackOptions::default() };
        let p = plan(&vms, &catalog, &opts);
        if let Err(e) = check_plan(&vms, &p, &opts, &catalog) {
            prop_assert!(false, "{}", e);
        }
        if !reserve {
            prop_assert!(p.cost_per_hour <= p.baseline_cost_per_hour + 1e-9, "{} > {}", p.cost_per_hour, p.baseline_cost_per_hour);
        }
        let placed: Vec<Demand> = vms.iter().filter(|d| !p.unplaced.iter().any(|u| u.name == d.name)).cloned().collect();
        if let Some(lb) = bound::lower_bound(&placed, &catalog, &opts) {
            prop_assert!(p.cost_per_hour + 1e-6 >= lb, "cost {} below bound {}", p.cost_per_hour, lb);
        }
        prop_assert_eq!(plan(&vms, &catalog, &opts), p);
    }
}
