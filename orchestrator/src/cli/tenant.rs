//! The tenant operations over the API, with the server's own request and response types
//! ([`kangaroo_orchestrator::client::ApiClient`]): one function per subcommand.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use kangaroo_orchestrator::api::MigrateResult;
use kangaroo_orchestrator::client::ApiClient;
use kangaroo_orchestrator::model::{format_memory, format_vcpus, NestedVm};
use kangaroo_orchestrator::service::{
    AppMigrateRequest, HostRequest, MigrateRequest, NetworkRequest, VmRequest, WorkloadRequest,
};
use serde_json::json;

use super::{or_dash, table, Output};

/// A client of the API at `url`, with `token` (from the environment), else the one in
/// `token_file`, else the one in the data directory.
///
/// # Errors
/// No token given and none readable where it was looked for.
pub fn connect(
    url: &str,
    token: Option<&str>,
    token_file: Option<&Path>,
    ca_file: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<ApiClient> {
    let token = match (token, token_file) {
        (Some(t), _) => t.to_owned(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the API token from --token-file {}", f.display()))?
            .trim()
            .to_owned(),
        (None, None) => {
            let p = data_dir.join(kangaroo_orchestrator::token::TOKEN_FILE);
            std::fs::read_to_string(&p)
                .with_context(|| {
                    format!(
                        "reading the API token from {} (is `kangaroo serve` using this data directory? or set KANGAROO_TOKEN or --token-file)",
                        p.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    if !url.starts_with("https://") {
        return Ok(ApiClient::new(url, &token));
    }
    let ca = match ca_file {
        Some(f) => f.to_owned(),
        None => kangaroo_orchestrator::tls::ca_path(data_dir),
    };
    let pem = std::fs::read_to_string(&ca).with_context(|| {
        format!(
            "reading the controller's CA certificate from {} (copy it from the controller's data directory, tls/ca.pem, and pass --ca-file)",
            ca.display()
        )
    })?;
    ApiClient::with_ca(url, &token, &pem).with_context(|| format!("--ca-file {}", ca.display()))
}

fn progress(what: impl FnOnce() -> String) {
    if std::io::stderr().is_terminal() {
        eprintln!("{}", what());
    }
}

const VM_HEADERS: [&str; 7] = ["name", "state", "host", "network", "ip", "vcpus", "memory"];

fn vm_row(v: &NestedVm) -> Vec<String> {
    vec![
        v.name.to_string(),
        serde_plain(&v.state),
        v.host.to_string(),
        v.network.to_string(),
        v.ip.to_string(),
        format_vcpus(v.cpu_quarters),
        format_memory(v.memory_mib),
    ]
}

/// A unit enum variant as its serde name (`running`), for tables.
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "-".to_owned(),
    }
}

/// `kangaroo apply -f FILE`.
///
/// # Errors
/// The file cannot be read, or the API refuses.
pub fn apply(c: &ApiClient, out: Output, file: &Path) -> anyhow::Result<()> {
    let workload = super::offline::read_workload(file)?;
    progress(|| format!("applying {}…", file.display()));
    let r = c.apply(&WorkloadRequest { workload })?;
    out.emit(&r, |r| {
        println!(
            "rented {} hosts, created {} VMs ({} already existed)",
            r.rented.len(),
            r.created.len(),
            r.existing.len()
        );
        println!(
            "cost {:.4}/h, one VM per instance {:.4}/h, saving {:.1}%",
            r.plan.cost_per_hour, r.plan.baseline_cost_per_hour, r.plan.saving_percent
        );
    })
}

/// `kangaroo app migrate NAME --to PROVIDER`.
///
/// # Errors
/// The API refuses.
pub fn app_migrate(c: &ApiClient, out: Output, name: &str, to: &str) -> anyhow::Result<()> {
    progress(|| format!("moving application {name} to {to}…"));
    let r = c.migrate_app(name, &AppMigrateRequest { to: to.to_owned() })?;
    out.emit(&r, |r| {
        let rows = r
            .moved
            .iter()
            .map(|m| {
                vec![
                    m.vm.to_string(),
                    m.from.to_string(),
                    m.to.to_string(),
                    match m.migration.map(|x| x.live) {
                        Some(true) => "live".to_owned(),
                        Some(false) => "restarted".to_owned(),
                        None => "-".to_owned(),
                    },
                    m.migration.map_or(0, |x| x.stats.total_ms).to_string(),
                    m.migration.map_or(0, |x| x.stats.downtime_ms).to_string(),
                ]
            })
            .collect();
        table(&["vm", "from", "to", "move", "ms", "paused ms"], rows);
        let list = |v: &[kangaroo_orchestrator::model::Name]| {
            v.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
        };
        println!("rented: {}", list(&r.rented));
        println!("released: {}", list(&r.released));
        println!(
            "cost: {:.4}/h -> {:.4}/h; took {} ms",
            r.cost_per_hour_before, r.cost_per_hour_after, r.total_ms
        );
    })
}

/// `kangaroo reconcile`.
///
/// # Errors
/// The API refuses.
pub fn reconcile(c: &ApiClient, out: Output) -> anyhow::Result<()> {
    let r = c.reconcile()?;
    out.emit(&r, |r| {
        for (vm, host) in &r.adopted {
            println!("adopted: VM {vm} on {host}");
        }
        for x in &r.repaired {
            println!("repaired: {x}");
        }
        for e in &r.errors {
            println!("error: {e}");
        }
        if r.adopted.is_empty() && r.repaired.is_empty() && r.errors.is_empty() {
            println!("everything matches the state");
        }
    })
}

/// `kangaroo consolidate --dry-run`.
///
/// # Errors
/// The API refuses.
pub fn consolidate(c: &ApiClient, out: Output) -> anyhow::Result<()> {
    let r = c.consolidation()?;
    out.emit(&r, |r| {
        let rows = r
            .migrations
            .iter()
            .map(|m| vec![m.vm.to_string(), m.from.to_string(), m.to.to_string()])
            .collect();
        table(&["vm", "from", "to"], rows);
        println!(
            "\nreleases {} hosts: {:.4}/h -> {:.4}/h",
            r.released.len(),
            r.cost_before,
            r.cost_after
        );
    })
}

/// `kangaroo host ls`.
///
/// # Errors
/// The API refuses.
pub fn host_ls(c: &ApiClient, out: Output) -> anyhow::Result<()> {
    let hosts = c.hosts()?;
    out.emit(&hosts, |hosts| {
        let rows = hosts
            .iter()
            .map(|h| {
                vec![
                    h.name.to_string(),
                    h.provider.to_string(),
                    h.instance_type.name.to_string(),
                    serde_plain(&h.state),
                    h.instance_type.price_per_hour.to_string(),
                ]
            })
            .collect();
        table(&["name", "provider", "type", "state", "$/h"], rows);
    })
}

/// `kangaroo host add TYPE`.
///
/// # Errors
/// The API refuses.
pub fn host_add(c: &ApiClient, out: Output, req: &HostRequest) -> anyhow::Result<()> {
    let h = c.add_host(req)?;
    out.emit(&h, |h| {
        println!("rented {} ({})", h.name, h.instance_type.name)
    })
}

/// `kangaroo host tunnels NAME`.
///
/// # Errors
/// The API refuses.
pub fn host_tunnels(c: &ApiClient, out: Output, name: &str) -> anyhow::Result<()> {
    let tunnels = c.host_tunnels(name)?;
    out.emit(&tunnels, |tunnels| {
        let rows = tunnels
            .iter()
            .map(|t| {
                vec![
                    t.peer.clone(),
                    t.address.clone(),
                    t.encryption.clone(),
                    or_dash(t.path.as_ref()),
                    or_dash(t.rtt_ms),
                    or_dash(t.tx_packets),
                    or_dash(t.rx_packets),
                ]
            })
            .collect();
        table(
            &[
                "peer",
                "address",
                "encryption",
                "path",
                "rtt ms",
                "tx",
                "rx",
            ],
            rows,
        );
    })
}

/// `kangaroo host rm NAME`.
///
/// # Errors
/// The API refuses.
pub fn host_rm(c: &ApiClient, out: Output, name: &str) -> anyhow::Result<()> {
    c.remove_host(name)?;
    out.emit(&json!({ "released": name }), |_| {
        println!("released {name}")
    })
}

/// `kangaroo host revoke NAME`.
///
/// # Errors
/// The API refuses.
pub fn host_revoke(c: &ApiClient, out: Output, name: &str) -> anyhow::Result<()> {
    c.revoke_agent(name)?;
    out.emit(&json!({ "revoked": name }), |_| {
        println!("revoked the agent credential of {name}")
    })
}

/// `kangaroo network ls`.
///
/// # Errors
/// The API refuses.
pub fn network_ls(c: &ApiClient, out: Output) -> anyhow::Result<()> {
    let nets = c.networks()?;
    out.emit(&nets, |nets| {
        let rows = nets
            .iter()
            .map(|n| {
                vec![
                    n.name.to_string(),
                    n.vni.to_string(),
                    format!("{}/{}", n.subnet, n.prefix),
                ]
            })
            .collect();
        table(&["name", "vni", "subnet"], rows);
    })
}

/// `kangaroo network create NAME --vni N --subnet CIDR`.
///
/// # Errors
/// The API refuses.
pub fn network_create(c: &ApiClient, out: Output, req: &NetworkRequest) -> anyhow::Result<()> {
    let n = c.create_network(req)?;
    out.emit(&n, |n| {
        println!("created network {} (VNI {})", n.name, n.vni)
    })
}

/// `kangaroo network rm NAME`.
///
/// # Errors
/// The API refuses.
pub fn network_rm(c: &ApiClient, out: Output, name: &str) -> anyhow::Result<()> {
    c.delete_network(name)?;
    out.emit(&json!({ "deleted": name }), |_| {
        println!("deleted network {name}")
    })
}

/// `kangaroo vm ls`.
///
/// # Errors
/// The API refuses.
pub fn vm_ls(c: &ApiClient, out: Output) -> anyhow::Result<()> {
    let vms = c.vms()?;
    out.emit(&vms, |vms| {
        table(&VM_HEADERS, vms.iter().map(vm_row).collect())
    })
}

/// `kangaroo vm create NAME …`.
///
/// # Errors
/// The API refuses.
pub fn vm_create(c: &ApiClient, out: Output, req: &VmRequest) -> anyhow::Result<()> {
    let v = c.create_vm(req)?;
    out.emit(&v, |v| {
        println!("created {} on {} with {} ({})", v.name, v.host, v.ip, v.mac)
    })
}

/// `kangaroo vm show NAME`.
///
/// # Errors
/// The API refuses.
pub fn vm_show(c: &ApiClient, out: Output, name: &str) -> anyhow::Result<()> {
    let v = c.vm(name)?;
    out.emit(&v, |v| table(&VM_HEADERS, vec![vm_row(v)]))
}

/// `kangaroo vm start NAME` (`start`) or `kangaroo vm stop NAME`.
///
/// # Errors
/// The API refuses.
pub fn vm_start_stop(c: &ApiClient, out: Output, name: &str, start: bool) -> anyhow::Result<()> {
    let v = if start {
        c.start_vm(name)?
    } else {
        c.stop_vm(name)?
    };
    out.emit(&v, |v| println!("{} is {}", v.name, serde_plain(&v.state)))
}

/// `kangaroo vm rm NAME`.
///
/// # Errors
/// The API refuses.
pub fn vm_rm(c: &ApiClient, out: Output, name: &str) -> anyhow::Result<()> {
    c.delete_vm(name)?;
    out.emit(&json!({ "deleted": name }), |_| println!("deleted {name}"))
}

/// `kangaroo vm migrate NAME --to HOST`.
///
/// # Errors
/// The API refuses.
pub fn vm_migrate(c: &ApiClient, out: Output, name: &str, to: &str) -> anyhow::Result<()> {
    let r = c.migrate_vm(name, &MigrateRequest { to: to.to_owned() })?;
    out.emit(&r, |r: &MigrateResult| {
        println!("{} is now on {}", r.vm.name, r.vm.host);
        if let Some(m) = r.migration {
            if m.live {
                println!(
                    "live migration: {} ms, VM paused {} ms, {} MiB of memory sent",
                    m.stats.total_ms,
                    m.stats.downtime_ms,
                    m.stats.transferred_bytes >> 20
                );
            } else {
                println!(
                    "moved by stop-and-start in {} ms (the driver cannot migrate live)",
                    m.stats.total_ms
                );
            }
        }
    })
}

/// `kangaroo billing`.
///
/// # Errors
/// The API refuses.
pub fn billing(c: &ApiClient, out: Output) -> anyhow::Result<()> {
    let b = c.billing()?;
    out.emit(&b, |b| {
        println!("hosts now:             {:.4}/h", b.cost_per_hour);
        println!("one VM per instance:   {:.4}/h", b.baseline_cost_per_hour);
        println!(
            "accrued:               {:.4} over {} s",
            b.accrued, b.clock_secs
        );
    })
}

/// `kangaroo controller`.
///
/// # Errors
/// The API refuses.
pub fn controller(c: &ApiClient, out: Output) -> anyhow::Result<()> {
    let s = c.controller()?;
    out.emit(&s, |s| {
        println!("role:     {}", serde_plain(&s.role));
        if let Some(l) = &s.leader {
            println!("leader:   {l}");
        }
        println!("store:    {}", s.store);
        println!("revision: {}", s.revision);
    })
}
