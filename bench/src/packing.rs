//! Packing quality and speed on seeded synthetic workloads.

use std::time::{Duration, Instant};

use kangaroo_orchestrator::catalog::Catalog;
use kangaroo_orchestrator::packing::{
    self, bound, exact, synth, Decision, ExistingHost, PackOptions,
};
use serde::Serialize;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    /// Catalog name or path.
    pub catalog: String,
    /// Small instances compared with the exact solver.
    pub exact_instances: usize,
    /// VMs per small instance, inclusive range.
    pub exact_vms: (usize, usize),
    /// Workload sizes for the saving and bound figures.
    pub sizes: Vec<usize>,
    /// New VMs placed one by one into the largest deployment to time a decision.
    pub decisions: usize,
    /// Base seed.
    pub seed: u64,
}

/// Heuristic against exact.
#[derive(Debug, Clone, Serialize)]
pub struct ExactComparison {
    /// Instances solved.
    pub instances: usize,
    /// Median of heuristic cost / exact cost.
    pub median_ratio: f64,
    /// Worst (largest) ratio.
    pub worst_ratio: f64,
    /// Mean ratio.
    pub mean_ratio: f64,
    /// Mean exact solve time, ms.
    pub mean_exact_ms: f64,
    /// Every ratio, in instance order.
    pub ratios: Vec<f64>,
}

/// One workload size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    /// VMs.
    pub vms: usize,
    /// Hosts rented.
    pub hosts: usize,
    /// Plan cost per hour.
    pub cost_per_hour: f64,
    /// One VM per instance, per hour.
    pub baseline_cost_per_hour: f64,
    /// Saving, percent of baseline.
    pub saving_percent: f64,
    /// LP lower bound per hour.
    pub lp_bound_per_hour: f64,
    /// Plan cost / LP bound.
    pub cost_over_bound: f64,
    /// vCPU utilisation of the rented hosts.
    pub cpu_utilisation: f64,
    /// Memory utilisation.
    pub memory_utilisation: f64,
    /// Affinity groups split.
    pub split_groups: usize,
    /// Time to compute the whole plan, ms.
    pub plan_ms: f64,
}

/// Timing of incremental placement decisions.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionTiming {
    /// VMs already deployed.
    pub deployed_vms: usize,
    /// Hosts in the deployment.
    pub hosts: usize,
    /// Decisions timed.
    pub decisions: usize,
    /// Median decision time, µs.
    pub median_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Of the decisions, how many rented a new host.
    pub rented: usize,
}

/// All packing results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The catalog used.
    pub catalog: String,
    /// Heuristic against exact.
    pub exact: ExactComparison,
    /// Per workload size.
    pub sizes: Vec<SizeResult>,
    /// Incremental placement.
    pub decision: DecisionTiming,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Runs the measurements.
///
/// # Errors
/// If the catalog cannot be loaded or the exact solver fails on an instance.
pub fn run(p: &Params, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let catalog = Catalog::load(&p.catalog)?.instances;
    let opts = PackOptions::default();

    let mut ratios = Vec::new();
    let mut exact_time = Duration::ZERO;
    for k in 0..p.exact_instances {
        let span = (p.exact_vms.1 - p.exact_vms.0 + 1) as u64;
        let n = p.exact_vms.0 + (synth::Rng::new(p.seed + k as u64).below(span) as usize);
        let vms = synth::workload(p.seed + 1000 + k as u64, n);
        let h = packing::plan(&vms, &catalog, &opts);
        let t = Instant::now();
        let e = exact::solve(&vms, &catalog, &opts)?;
        exact_time += t.elapsed();
        ratios.push(h.cost_per_hour / e.plan.cost_per_hour);
        progress(&format!(
            "exact {}/{}: {} VMs, ratio {:.4}",
            k + 1,
            p.exact_instances,
            n,
            h.cost_per_hour / e.plan.cost_per_hour
        ));
    }
    let mean_ratio = if ratios.is_empty() {
        0.0
    } else {
        ratios.iter().sum::<f64>() / ratios.len() as f64
    };
    let worst_ratio = ratios.iter().copied().fold(0.0, f64::max);
    let mut sorted = ratios.clone();
    let exact = ExactComparison {
        instances: ratios.len(),
        median_ratio: median(&mut sorted),
        worst_ratio,
        mean_ratio,
        mean_exact_ms: exact_time.as_secs_f64() * 1000.0 / p.exact_instances.max(1) as f64,
        ratios,
    };

    let mut sizes = Vec::new();
    let mut largest: Option<(Vec<packing::Demand>, packing::Plan)> = None;
    for &n in &p.sizes {
        let vms = synth::workload(p.seed + n as u64, n);
        let t = Instant::now();
        let plan = packing::plan(&vms, &catalog, &opts);
        let plan_ms = t.elapsed().as_secs_f64() * 1000.0;
        let lb = bound::lower_bound(&vms, &catalog, &opts).unwrap_or(f64::NAN);
        progress(&format!(
            "plan {n} VMs: {:.3}/h vs baseline {:.3}/h in {plan_ms:.1} ms",
            plan.cost_per_hour, plan.baseline_cost_per_hour
        ));
        sizes.push(SizeResult {
            vms: n,
            hosts: plan.hosts.len(),
            cost_per_hour: plan.cost_per_hour,
            baseline_cost_per_hour: plan.baseline_cost_per_hour,
            saving_percent: plan.saving_percent,
            lp_bound_per_hour: lb,
            cost_over_bound: plan.cost_per_hour / lb,
            cpu_utilisation: plan.cpu_utilisation,
            memory_utilisation: plan.memory_utilisation,
            split_groups: plan.split_groups.len(),
            plan_ms,
        });
        if largest.as_ref().is_none_or(|(v, _)| v.len() < n) {
            largest = Some((vms, plan));
        }
    }

    let (vms, plan) = largest.unwrap_or_default_plan(&catalog, &opts);
    let by_name: std::collections::BTreeMap<_, _> =
        vms.iter().map(|d| (d.name.clone(), d.clone())).collect();
    let mut hosts: Vec<ExistingHost> = plan
        .hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let t = catalog.iter().find(|t| t.name == h.instance_type)?.clone();
            let name = kangaroo_orchestrator::model::Name::new(&format!("host-{i}")).ok()?;
            Some(ExistingHost {
                name,
                instance_type: t,
                vms: h
                    .vms
                    .iter()
                    .filter_map(|v| by_name.get(v).cloned())
                    .collect(),
            })
        })
        .collect();
    let newcomers = synth::workload(p.seed + 99, p.decisions);
    let mut times = Vec::with_capacity(newcomers.len());
    let mut rented = 0;
    for (k, vm) in newcomers.into_iter().enumerate() {
        let mut vm = vm;
        vm.name = kangaroo_orchestrator::model::Name::new(&format!("new-{k}"))?;
        let t = Instant::now();
        let d = packing::place_one(&vm, &hosts, &catalog, &opts);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        match d {
            Ok(Decision::Existing(h)) => {
                if let Some(x) = hosts.iter_mut().find(|x| x.name == h) {
                    x.vms.push(vm);
                }
            }
            Ok(Decision::Rent(t)) => {
                rented += 1;
                if let Some(it) = catalog.iter().find(|i| i.name == t) {
                    let name = kangaroo_orchestrator::model::Name::new(&format!("host-new-{k}"))?;
                    hosts.push(ExistingHost {
                        name,
                        instance_type: it.clone(),
                        vms: vec![vm],
                    });
                }
            }
            Err(_) => {}
        }
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted
        .get(sorted.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or(0.0);
    let decision = DecisionTiming {
        deployed_vms: vms.len(),
        hosts: plan.hosts.len(),
        decisions: times.len(),
        median_us: median(&mut times),
        p99_us: p99,
        rented,
    };
    Ok(Report {
        catalog: p.catalog.clone(),
        exact,
        sizes,
        decision,
    })
}

trait OrEmpty {
    fn unwrap_or_default_plan(
        self,
        catalog: &[kangaroo_orchestrator::model::InstanceType],
        opts: &PackOptions,
    ) -> (Vec<packing::Demand>, packing::Plan);
}

impl OrEmpty for Option<(Vec<packing::Demand>, packing::Plan)> {
    fn unwrap_or_default_plan(
        self,
        catalog: &[kangaroo_orchestrator::model::InstanceType],
        opts: &PackOptions,
    ) -> (Vec<packing::Demand>, packing::Plan) {
        self.unwrap_or_else(|| (Vec::new(), packing::plan(&[], catalog, opts)))
    }
}

/// The report as Markdown tables.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let e = &r.exact;
    s += &format!(
        "Heuristic vs exact (catalog {}, {} instances): median ratio {:.4}, mean {:.4}, worst {:.4}; exact solve {:.0} ms on average.\n\n",
        r.catalog, e.instances, e.median_ratio, e.mean_ratio, e.worst_ratio, e.mean_exact_ms
    );
    s += "| VMs | hosts | cost $/h | one VM per instance $/h | saving | LP bound $/h | cost / bound | vCPU util | memory util | groups split | plan time |\n";
    s += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for z in &r.sizes {
        s += &format!(
            "| {} | {} | {:.3} | {:.3} | {:.1}% | {:.3} | {:.3} | {:.1}% | {:.1}% | {} | {:.1} ms |\n",
            z.vms, z.hosts, z.cost_per_hour, z.baseline_cost_per_hour, z.saving_percent, z.lp_bound_per_hour, z.cost_over_bound,
            100.0 * z.cpu_utilisation, 100.0 * z.memory_utilisation, z.split_groups, z.plan_ms
        );
    }
    let d = &r.decision;
    s += &format!(
        "\nIncremental placement into a deployment of {} VMs on {} hosts: {} decisions, median {:.1} µs, p99 {:.1} µs ({} rented a new host).\n",
        d.deployed_vms, d.hosts, d.decisions, d.median_us, d.p99_us, d.rented
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_run_produces_a_complete_report() {
        let p = Params {
            catalog: "ec2-2014".into(),
            exact_instances: 3,
            exact_vms: (6, 8),
            sizes: vec![50, 120],
            decisions: 20,
            seed: 1,
        };
        let r = run(&p, &mut |_| {}).unwrap();
        assert_eq!(r.exact.instances, 3);
        assert!(
            r.exact.ratios.iter().all(|x| *x >= 1.0 - 1e-9),
            "the exact solver is never beaten: {:?}",
            r.exact.ratios
        );
        assert_eq!(r.sizes.len(), 2);
        for z in &r.sizes {
            assert!(z.cost_per_hour <= z.baseline_cost_per_hour + 1e-9);
            assert!(z.cost_over_bound >= 1.0 - 1e-9);
        }
        assert_eq!((r.decision.deployed_vms, r.decision.decisions), (120, 20));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in ["catalog", "exact", "sizes", "decision"] {
            assert!(v.get(key).is_some(), "JSON has {key}");
        }
        assert!(markdown(&r).contains("| 120 |"));
    }
}
