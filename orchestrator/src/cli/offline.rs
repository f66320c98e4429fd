//! What runs without a server: plans for a workload file, and the built-in catalogs.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use kangaroo_orchestrator::catalog::Catalog;
use kangaroo_orchestrator::model::{format_memory, format_vcpus};
use kangaroo_orchestrator::packing::{self, Plan};
use kangaroo_orchestrator::workload::Workload;

use super::{table, Output};

/// The text of a workload file.
///
/// # Errors
/// It cannot be read.
pub fn read_workload(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("reading workload file {}", file.display()))
}

/// `kangaroo plan -f FILE`: the plan, computed here.
///
/// # Errors
/// The file cannot be read or parsed, or its catalog loaded.
pub fn plan(out: Output, file: &Path) -> anyhow::Result<()> {
    let text = read_workload(file)?;
    let w = Workload::parse(&text)?;
    let c = Catalog::load(&w.catalog)?;
    if std::io::stderr().is_terminal() && w.vms.len() > 1000 {
        eprintln!("planning {} VMs on catalog {}…", w.vms.len(), c.name);
    }
    let p = packing::plan(&w.demands(), &c.instances, &w.options);
    out.emit(&p, |p| print_plan(p, &c.currency))
}

/// `kangaroo catalog ls`.
///
/// # Errors
/// A built-in catalog does not load.
pub fn catalog_ls(out: Output) -> anyhow::Result<()> {
    let cats = Catalog::builtins()?;
    out.emit(&cats, |cats| {
        table(
            &["catalog", "provider", "region", "types"],
            cats.iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.provider.clone(),
                        c.region.clone(),
                        c.instances.len().to_string(),
                    ]
                })
                .collect(),
        )
    })
}

/// `kangaroo catalog show NAME`.
///
/// # Errors
/// No such catalog, or a file that is not one.
pub fn catalog_show(out: Output, name: &str) -> anyhow::Result<()> {
    let c = Catalog::load(name)?;
    out.emit(&c, |c| {
        table(
            &["type", "vcpus", "memory", "$/h"],
            c.instances
                .iter()
                .map(|i| {
                    vec![
                        i.name.to_string(),
                        i.vcpus.to_string(),
                        format_memory(i.memory_mib),
                        format!("{}", i.price_per_hour),
                    ]
                })
                .collect(),
        )
    })
}

/// A plan as a table of hosts and its cost lines.
pub fn print_plan(p: &Plan, currency: &str) {
    let rows = p
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            vec![
                format!("{}", i + 1),
                h.instance_type.to_string(),
                format!("{:.4}", h.price_per_hour),
                format!(
                    "{}/{}",
                    format_vcpus(h.used.cpu_quarters),
                    format_vcpus(h.capacity.cpu_quarters)
                ),
                format!(
                    "{}/{}",
                    format_memory(h.used.memory_mib),
                    format_memory(h.capacity.memory_mib)
                ),
                h.vms
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table(&["host", "type", "$/h", "vcpu", "memory", "vms"], rows);
    println!();
    println!(
        "cost:                   {:.4} {currency}/h",
        p.cost_per_hour
    );
    println!(
        "one VM per instance:    {:.4} {currency}/h",
        p.baseline_cost_per_hour
    );
    println!(
        "saving:                 {:.4} {currency}/h ({:.1}%)",
        p.saving_per_hour, p.saving_percent
    );
    println!(
        "utilisation:            {:.1}% vCPU, {:.1}% memory",
        100.0 * p.cpu_utilisation,
        100.0 * p.memory_utilisation
    );
    for g in &p.split_groups {
        println!(
            "affinity group {} split over {} hosts: {}",
            g.group, g.parts, g.reason
        );
    }
    for u in &p.unplaced {
        println!("unplaced {}: {}", u.name, u.reason);
    }
}

/// `kangaroo host join-token NAME`: a join token made from this controller's data directory
/// (its API token and, if it serves HTTPS, its CA's fingerprint).
///
/// # Errors
/// The data directory holds no token (not a controller's).
pub fn join_token(out: Output, data_dir: &Path, host: &str, ttl_secs: u64) -> anyhow::Result<()> {
    kangaroo_orchestrator::model::Name::new(host)
        .map_err(|e| anyhow::anyhow!("host {host:?}: {e}"))?;
    let p = data_dir.join(kangaroo_orchestrator::token::TOKEN_FILE);
    let token = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "reading the API token from {} (run this where `kangaroo serve` keeps its data)",
            p.display()
        )
    })?;
    let ca = kangaroo_orchestrator::tls::ca_path(data_dir);
    let fingerprint = match std::fs::read_to_string(&ca) {
        Ok(pem) => Some(
            kangaroo_orchestrator::tls::pem_fingerprint(&pem)
                .with_context(|| format!("the CA in {}", ca.display()))?,
        ),
        Err(_) => None,
    };
    let expires = kangaroo_orchestrator::service::now_secs() + ttl_secs;
    let t = kangaroo_orchestrator::agentapi::mint_join_token(
        token.trim(),
        fingerprint.as_deref(),
        host,
        expires,
    );
    out.emit(
        &serde_json::json!({ "host": host, "token": t, "expires": expires, "ca_fingerprint": fingerprint }),
        |_| println!("{t}"),
    )
}
