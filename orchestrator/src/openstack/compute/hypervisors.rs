//! Hypervisors (the rented hosts, as Nova shows compute nodes), their statistics, host
//! aggregates and availability zones (the providers).

use super::*;

pub(super) fn hypervisor_id(h: &Host) -> u32 {
    crate::sys::short_hash(h.name.as_str()) & 0x7fff_ffff
}

pub(super) fn hypervisor_view(
    os: &Shared,
    h: &Host,
    vms: &[NestedVm],
    m: Micro,
    detail: bool,
) -> Value {
    let up = h.state == HostState::Running;
    let mut v = json!({
        "id": hypervisor_id(h),
        "hypervisor_hostname": h.name.as_str(),
        "state": if up { "up" } else { "down" },
        "status": if h.state == HostState::Releasing { "disabled" } else { "enabled" },
    });
    if !detail {
        return v;
    }
    let on: Vec<&NestedVm> = vms.iter().filter(|x| x.host == h.name).collect();
    let used_q: u32 = on.iter().map(|x| x.cpu_quarters).sum();
    let used_m: u64 = on.iter().map(|x| x.memory_mib).sum();
    let cap = os.service.options().usable(&h.instance_type);
    let kind = os
        .service
        .providers()
        .iter()
        .find(|p| p.name == h.provider)
        .map_or(crate::service::ProviderKind::Sim, |p| p.kind);
    let cpu_info =
        json!({"instance_type": h.instance_type.name.as_str(), "provider": h.provider.as_str()});
    let fields = json!({
        "vcpus": cap.cpu_quarters / QUARTERS_PER_VCPU,
        "vcpus_used": used_q.div_ceil(QUARTERS_PER_VCPU),
        "memory_mb": cap.memory_mib,
        "memory_mb_used": used_m,
        "free_ram_mb": cap.memory_mib.saturating_sub(used_m),
        "local_gb": 0,
        "local_gb_used": 0,
        "free_disk_gb": 0,
        "disk_available_least": 0,
        "running_vms": on.iter().filter(|x| x.state == VmState::Running).count(),
        "current_workload": 0,
        "hypervisor_type": format!("kangaroo-{kind}"),
        "hypervisor_version": 1,
        "host_ip": h.underlay.map(|a| a.to_string()),
        "service": {"id": hypervisor_id(h), "host": h.name.as_str(), "disabled_reason": null},
        "cpu_info": if m >= Micro(28) { cpu_info } else { json!(cpu_info.to_string()) },
    });
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v
}

fn hypervisor_list(os: &Shared, m: Micro, detail: bool) -> Json<Value> {
    let vms = os.service.vms();
    let list: Vec<Value> = os
        .service
        .hosts()
        .iter()
        .map(|h| hypervisor_view(os, h, &vms, m, detail))
        .collect();
    Json(json!({ "hypervisors": list }))
}

pub(super) async fn list_hypervisors(
    State(os): State<Shared>,
    Extension(m): Extension<Micro>,
) -> Json<Value> {
    hypervisor_list(&os, m, false)
}

pub(super) async fn list_hypervisors_detail(
    State(os): State<Shared>,
    Extension(m): Extension<Micro>,
) -> Json<Value> {
    hypervisor_list(&os, m, true)
}

pub(super) async fn show_hypervisor(
    State(os): State<Shared>,
    Extension(m): Extension<Micro>,
    p: Result<Path<String>, PathRejection>,
) -> OsResult<Json<Value>> {
    let id = path_param(p, NOVA)?;
    let hosts = os.service.hosts();
    let h = hosts
        .iter()
        .find(|h| h.name.as_str() == id || hypervisor_id(h).to_string() == id)
        .ok_or_else(|| {
            OsError::new(
                NOVA,
                StatusCode::NOT_FOUND,
                format!("Hypervisor with ID {id} could not be found."),
            )
        })?;
    Ok(Json(
        json!({"hypervisor": hypervisor_view(&os, h, &os.service.vms(), m, true)}),
    ))
}

pub(super) async fn hypervisor_statistics(
    State(os): State<Shared>,
    Extension(m): Extension<Micro>,
) -> Json<Value> {
    let vms = os.service.vms();
    let hosts = os.service.hosts();
    let mut t = json!({"count": hosts.len(), "vcpus": 0, "vcpus_used": 0, "memory_mb": 0, "memory_mb_used": 0,
        "free_ram_mb": 0, "local_gb": 0, "local_gb_used": 0, "free_disk_gb": 0, "disk_available_least": 0,
        "running_vms": 0, "current_workload": 0});
    for h in &hosts {
        let v = hypervisor_view(&os, h, &vms, m, true);
        for k in [
            "vcpus",
            "vcpus_used",
            "memory_mb",
            "memory_mb_used",
            "free_ram_mb",
            "running_vms",
        ] {
            t[k] = json!(t[k].as_u64().unwrap_or(0) + v[k].as_u64().unwrap_or(0));
        }
    }
    Json(json!({ "hypervisor_statistics": t }))
}

pub(super) fn zones(os: &Shared, detail: bool) -> Json<Value> {
    let hosts = os.service.hosts();
    let list: Vec<Value> = os
        .service
        .providers()
        .iter()
        .map(|p| {
            let hs: Map<String, Value> = hosts
                .iter()
                .filter(|h| h.provider == p.name)
                .map(|h| {
                    let up = h.state == HostState::Running;
                    (h.name.to_string(), json!({"nova-compute": {"available": up, "active": up, "updated_at": null}}))
                })
                .collect();
            json!({
                "zoneName": p.name.as_str(),
                "zoneState": {"available": true},
                "hosts": if detail { Value::Object(hs) } else { Value::Null },
            })
        })
        .collect();
    Json(json!({ "availabilityZoneInfo": list }))
}

/// Nova answers 501 when the virt driver cannot tell a host's uptime; so does Kangaroo, whose
/// hosts are rented machines it does not log in to.
pub(super) async fn hypervisor_uptime() -> OsError {
    OsError::new(
        NOVA,
        StatusCode::NOT_IMPLEMENTED,
        "Kangaroo does not report the uptime of rented hosts.",
    )
}

/// One aggregate per provider, carrying its availability zone (how Nova defines zones).
pub(super) async fn list_aggregates(State(os): State<Shared>) -> Json<Value> {
    let hosts = os.service.hosts();
    let list: Vec<Value> = os
        .service
        .providers()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let members: Vec<&str> = hosts
                .iter()
                .filter(|h| h.provider == p.name)
                .map(|h| h.name.as_str())
                .collect();
            json!({
                "id": i + 1,
                "name": p.name.as_str(),
                "availability_zone": p.name.as_str(),
                "hosts": members,
                "metadata": {"availability_zone": p.name.as_str(), "region": p.region, "catalog": p.catalog},
                "created_at": iso8601(0),
                "updated_at": null,
                "deleted": false,
                "deleted_at": null,
            })
        })
        .collect();
    Json(json!({ "aggregates": list }))
}

pub(super) async fn list_zones(State(os): State<Shared>) -> Json<Value> {
    zones(&os, false)
}

pub(super) async fn list_zones_detail(State(os): State<Shared>) -> Json<Value> {
    zones(&os, true)
}
