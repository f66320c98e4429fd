//! An exact solver for small cases: a mixed-integer program (good_lp with the pure-Rust microlp
//! backend) over the same packing units as the heuristic (kept-together affinity groups and lone
//! VMs, with the same affinity groups split), used to measure the heuristic's quality. The
//! heuristic's plan is the solver's starting incumbent, so the result is never worse than it.
//!
//! Variables: `y[b][t]` = bin `b` is a host of type `t`; `x[i][b]` = unit `i` is on bin `b`.
//! Minimise Σ price·y subject to: each unit on exactly one bin; at most one type per bin; per-bin
//! vCPU and memory within the chosen type's usable capacity; at most one member of each
//! anti-affinity group per bin; and unit `i` only on bins `0..=i` (bins are interchangeable, so
//! this removes symmetric solutions without losing any optimum). Types dominated by another (no
//! more capacity, no cheaper) are left out.

use std::time::Duration;

use good_lp::{
    microlp, variable, Expression, ProblemVariables, Solution, SolutionStatus, SolverModel,
    Variable, WithInitialSolution, WithTimeLimit,
};

use crate::model::InstanceType;

use super::{cheapest_fit, finish, items, Demand, PackOptions, Plan, PlannedHost};

/// Outcome of the exact solver.
#[derive(Debug, Clone, PartialEq)]
pub struct Exact {
    /// The best plan found.
    pub plan: Plan,
    /// True if proven optimal within the time limit.
    pub optimal: bool,
}

/// Errors of the exact solver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExactError {
    /// The solver failed or found nothing in time.
    #[error("exact solver: {0}")]
    Solver(String),
}

/// Solves the packing exactly (or as well as possible within `time_limit`).
///
/// # Errors
/// [`ExactError`] if the solver finds no feasible solution in time.
pub fn solve(
    demands: &[Demand],
    catalog: &[InstanceType],
    opts: &PackOptions,
    time_limit: Duration,
) -> Result<Exact, ExactError> {
    let (heuristic, split_costly) = super::heuristic::pack_detailed(demands, catalog, opts);
    let (units, unplaced, split) = items(demands, catalog, opts, split_costly);
    let types: Vec<&InstanceType> = catalog
        .iter()
        .filter(|t| {
            let u = opts.usable(t);
            !catalog.iter().any(|o| {
                let v = opts.usable(o);
                o.name != t.name
                    && u.fits_in(&v)
                    && o.price_per_hour <= t.price_per_hour
                    && (o.price_per_hour < t.price_per_hour || u != v || o.name < t.name)
            })
        })
        .collect();
    let n = units.len();
    if n == 0 {
        return Ok(Exact {
            plan: finish(demands, catalog, Vec::new(), unplaced, split),
            optimal: true,
        });
    }
    let mut vars = ProblemVariables::new();
    let y: Vec<Vec<Variable>> = (0..n)
        .map(|_| {
            types
                .iter()
                .map(|_| vars.add(variable().binary()))
                .collect()
        })
        .collect();
    let x: Vec<Vec<Option<Variable>>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|b| (b <= i).then(|| vars.add(variable().binary())))
                .collect()
        })
        .collect();
    let objective: Expression = y
        .iter()
        .flat_map(|row| row.iter().zip(&types).map(|(v, t)| t.price_per_hour * *v))
        .sum();
    // The heuristic's plan as the starting incumbent: each host becomes the bin numbered by its
    // lowest unit (so the symmetry-breaking rule holds), typed with the cheapest listed type.
    let mut start: Vec<(Variable, f64)> = Vec::new();
    let host_of_unit: Vec<Option<usize>> = units
        .iter()
        .map(|u| {
            let first = &demands[u.members[0]].name;
            heuristic.hosts.iter().position(|h| h.vms.contains(first))
        })
        .collect();
    for (k, h) in heuristic.hosts.iter().enumerate() {
        let members: Vec<usize> = (0..n).filter(|&i| host_of_unit[i] == Some(k)).collect();
        let Some(&b) = members.first() else { continue };
        for &i in &members {
            if let Some(v) = x[i][b] {
                start.push((v, 1.0));
            }
        }
        let t = types
            .iter()
            .enumerate()
            .filter(|(_, t)| h.used.fits_in(&opts.usable(t)))
            .min_by(|a, b| a.1.price_per_hour.total_cmp(&b.1.price_per_hour));
        if let Some((ti, _)) = t {
            start.push((y[b][ti], 1.0));
        }
    }
    let mut model = vars
        .minimise(objective)
        .using(microlp)
        .with_time_limit(time_limit.as_secs_f64())
        .with_initial_solution(start);
    for xi in &x {
        let e: Expression = xi.iter().flatten().map(|v| Expression::from(*v)).sum();
        model = model.with(e.eq(1));
    }
    let mut anti_groups: Vec<&crate::model::Name> =
        units.iter().flat_map(|u| u.anti.iter()).collect();
    anti_groups.sort();
    anti_groups.dedup();
    for b in 0..n {
        let one_type: Expression = y[b].iter().map(|v| Expression::from(*v)).sum();
        model = model.with(one_type.leq(1));
        let mut cpu = Expression::from(0);
        let mut mem = Expression::from(0);
        for (i, xi) in x.iter().enumerate() {
            if let Some(v) = xi[b] {
                cpu += f64::from(units[i].resources.cpu_quarters) * v;
                mem += units[i].resources.memory_mib as f64 * v;
            }
        }
        for (k, t) in types.iter().enumerate() {
            let u = opts.usable(t);
            cpu -= f64::from(u.cpu_quarters) * y[b][k];
            mem -= u.memory_mib as f64 * y[b][k];
        }
        model = model.with(cpu.leq(0)).with(mem.leq(0));
        for g in &anti_groups {
            let e: Expression = units
                .iter()
                .enumerate()
                .filter(|(_, u)| u.anti.contains(g))
                .filter_map(|(i, _)| x[i][b])
                .map(Expression::from)
                .sum();
            model = model.with(e.leq(1));
        }
    }
    let sol = match model.solve() {
        Ok(s) => s,
        // Interrupted before the solver could report a solution: the incumbent stands.
        Err(good_lp::ResolutionError::Other(_)) => {
            return Ok(Exact { plan: heuristic, optimal: false })
        }
        Err(e) => return Err(ExactError::Solver(e.to_string())),
    };
    let optimal = matches!(sol.status(), SolutionStatus::Optimal);
    let mut hosts = Vec::new();
    for b in 0..n {
        let members: Vec<usize> = (0..n)
            .filter(|&i| x[i][b].is_some_and(|v| sol.value(v) > 0.5))
            .collect();
        if members.is_empty() {
            continue;
        }
        let used = members
            .iter()
            .fold(crate::model::Resources::default(), |a, &i| {
                a.plus(&units[i].resources)
            });
        // Right-size as the heuristic does, so costs compare like for like.
        let Some(t) = cheapest_fit(catalog, opts, &used) else {
            return Err(ExactError::Solver(format!(
                "bin {b} holds more than any type"
            )));
        };
        let mut vms: Vec<_> = members
            .iter()
            .flat_map(|&i| units[i].members.iter().map(|&m| demands[m].name.clone()))
            .collect();
        vms.sort();
        hosts.push(PlannedHost {
            instance_type: t.name.clone(),
            price_per_hour: t.price_per_hour,
            capacity: opts.usable(t),
            used,
            vms,
        });
    }
    hosts.sort_by(|a, b| a.vms.first().cmp(&b.vms.first()));
    Ok(Exact {
        plan: finish(demands, catalog, hosts, unplaced, split),
        optimal,
    })
}
