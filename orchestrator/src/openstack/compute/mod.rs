//! Compute v2.1 (microversions 2.1–2.30): flavors, servers and their actions, hypervisors (the
//! rented hosts) and availability zones (the providers).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};

use super::flavors::{find_flavor, flavor_of, Flavor};
use super::{
    base_url, iso8601, links, ok_json, path_param, query_pairs, uuid, OsError, OsResult, Shared,
    Style,
};
use crate::model::{Host, HostState, NestedVm, VmState, QUARTERS_PER_VCPU};
use crate::service::{MigrateRequest, ServiceError, Task, VmRequest};

mod create;
mod hypervisors;

use create::vm_request;
use hypervisors::*;

const NOVA: Style = Style::Nova;

/// The highest microversion served. Every change up to it that touches what Kangaroo
/// implements is honoured: 2.3 (extended server attributes), 2.9 (`locked`), 2.16
/// (`host_status`), 2.19 (`description`), 2.25 (`block_migration: "auto"`), 2.26 (`tags`), 2.28
/// (`cpu_info` as an object) and 2.30 (`force` on live migration).
pub const MAX_MINOR: u16 = 30;

/// The microversion of a request: 2.`minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Micro(pub u16);

/// Parses the request's microversion headers (`OpenStack-API-Version: compute 2.x` wins over
/// `X-OpenStack-Nova-API-Version: 2.x`); absent means 2.1, `latest` the maximum.
pub fn microversion(h: &HeaderMap) -> Result<Micro, OsError> {
    let new = h
        .get_all("openstack-api-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|part| {
            let mut w = part.split_whitespace();
            match (w.next(), w.next()) {
                (Some(s), Some(v)) if s.eq_ignore_ascii_case("compute") => Some(v.to_owned()),
                _ => None,
            }
        });
    let old = h
        .get("x-openstack-nova-api-version")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned());
    let Some(v) = new.or(old) else {
        return Ok(Micro(1));
    };
    if v.eq_ignore_ascii_case("latest") {
        return Ok(Micro(MAX_MINOR));
    }
    let bad = || {
        OsError::new(
            NOVA,
            StatusCode::BAD_REQUEST,
            format!(
                "API Version String {v} is of invalid format. Must be of format MajorNum.MinorNum."
            ),
        )
    };
    let (maj, min) = v.split_once('.').ok_or_else(bad)?;
    let (Ok(maj), Ok(min)) = (maj.parse::<u16>(), min.parse::<u16>()) else {
        return Err(bad());
    };
    if maj != 2 || !(1..=MAX_MINOR).contains(&min) {
        return Err(OsError::new(
            NOVA,
            StatusCode::NOT_ACCEPTABLE,
            format!("Version {v} is not supported by the API. Minimum is 2.1 and maximum is 2.{MAX_MINOR}."),
        ));
    }
    Ok(Micro(min))
}

async fn versioned(mut req: Request, next: Next) -> Response {
    let m = match microversion(req.headers()) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(m);
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("compute 2.{}", m.0)) {
        h.insert("openstack-api-version", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("2.{}", m.0)) {
        h.insert("x-openstack-nova-api-version", v);
    }
    h.insert(
        "vary",
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    r
}

pub(super) fn routes(os: Shared) -> Router {
    let v = "/compute/v2.1";
    let authed = Router::new()
        .route(&format!("{v}/flavors"), get(list_flavors))
        .route(&format!("{v}/flavors/detail"), get(list_flavors_detail))
        .route(&format!("{v}/flavors/{{id}}"), get(show_flavor))
        .route(
            &format!("{v}/servers"),
            get(list_servers).post(create_server),
        )
        .route(&format!("{v}/servers/detail"), get(list_servers_detail))
        .route(
            &format!("{v}/servers/{{id}}"),
            get(show_server).delete(delete_server).put(update_server),
        )
        .route(&format!("{v}/servers/{{id}}/action"), post(server_action))
        .route(&format!("{v}/os-hypervisors"), get(list_hypervisors))
        .route(
            &format!("{v}/os-hypervisors/detail"),
            get(list_hypervisors_detail),
        )
        .route(
            &format!("{v}/os-hypervisors/statistics"),
            get(hypervisor_statistics),
        )
        .route(&format!("{v}/os-hypervisors/{{id}}"), get(show_hypervisor))
        .route(
            &format!("{v}/os-hypervisors/{{id}}/uptime"),
            get(hypervisor_uptime),
        )
        .route(&format!("{v}/os-aggregates"), get(list_aggregates))
        .route(&format!("{v}/os-availability-zone"), get(list_zones))
        .route(
            &format!("{v}/os-availability-zone/detail"),
            get(list_zones_detail),
        )
        .route_layer(middleware::from_fn(versioned))
        .route_layer(middleware::from_fn_with_state(
            (os.clone(), NOVA),
            super::require_token,
        ))
        .with_state(os);
    Router::new()
        .route("/compute", get(versions))
        .route("/compute/", get(versions))
        .route("/compute/v2.1", get(version))
        .route("/compute/v2.1/", get(version))
        .merge(authed)
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": format!("2.{MAX_MINOR}"),
        "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{base}/compute/v2.1/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}],
    })
}

async fn versions(h: HeaderMap) -> Response {
    ok_json(json!({"versions": [version_doc(&base_url(&h))]}))
}

async fn version(h: HeaderMap) -> Response {
    ok_json(json!({"version": version_doc(&base_url(&h))}))
}

// ---- flavors ----

fn flavor_view(f: &Flavor, base: &str, detail: bool) -> Value {
    let mut v = json!({
        "id": f.id,
        "name": f.id,
        "links": links(base, "compute", "v2.1", &format!("flavors/{}", f.id)),
    });
    if detail {
        v["vcpus"] = json!(f.cpu_quarters.div_ceil(QUARTERS_PER_VCPU));
        v["ram"] = json!(f.ram_mib);
        v["disk"] = json!(0);
        v["swap"] = json!("");
        v["rxtx_factor"] = json!(1.0);
        v["OS-FLV-EXT-DATA:ephemeral"] = json!(0);
        v["os-flavor-access:is_public"] = json!(!f.id.starts_with("kg-"));
        v["OS-FLV-DISABLED:disabled"] = json!(false);
    }
    v
}

fn flavor_list(os: &Shared, h: &HeaderMap, uri: &Uri, detail: bool) -> Json<Value> {
    let base = base_url(h);
    let q = query_pairs(uri.query());
    let min = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (min_ram, min_disk) = (min("minRam"), min("minDisk"));
    let list: Vec<Value> = os
        .cfg
        .flavors
        .iter()
        .filter(|f| f.ram_mib >= min_ram && min_disk == 0)
        .map(|f| flavor_view(f, &base, detail))
        .collect();
    Json(json!({ "flavors": list }))
}

async fn list_flavors(State(os): State<Shared>, h: HeaderMap, uri: Uri) -> Json<Value> {
    flavor_list(&os, &h, &uri, false)
}

async fn list_flavors_detail(State(os): State<Shared>, h: HeaderMap, uri: Uri) -> Json<Value> {
    flavor_list(&os, &h, &uri, true)
}

async fn show_flavor(
    State(os): State<Shared>,
    h: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> OsResult<Json<Value>> {
    let id = path_param(p, NOVA)?;
    let f = find_flavor(&os.cfg.flavors, &id).ok_or_else(|| {
        OsError::new(
            NOVA,
            StatusCode::NOT_FOUND,
            format!("Flavor {id} could not be found."),
        )
    })?;
    Ok(Json(
        json!({"flavor": flavor_view(&f, &base_url(&h), true)}),
    ))
}

// ---- servers ----

fn find_vm(os: &Shared, id: &str) -> OsResult<NestedVm> {
    os.service
        .vms()
        .into_iter()
        .find(|v| v.name.as_str() == id || uuid("server", v.name.as_str()) == id)
        .ok_or_else(|| {
            OsError::new(
                NOVA,
                StatusCode::NOT_FOUND,
                format!("Instance {id} could not be found."),
            )
        })
}

/// Nova's status, vm_state, task_state and power_state of a VM.
fn states(
    vm: &NestedVm,
    task: Option<Task>,
    host: Option<&Host>,
) -> (&'static str, &'static str, Value, u8) {
    let host_ok = host.is_some_and(|h| !matches!(h.state, HostState::Releasing | HostState::Lost));
    match (task, vm.state) {
        _ if !host_ok => ("ERROR", "error", Value::Null, 0),
        (Some(Task::Building), _) => ("BUILD", "building", json!("spawning"), 0),
        (Some(Task::Migrating), _) => ("MIGRATING", "active", json!("migrating"), 1),
        (Some(Task::Deleting), VmState::Running) => ("ACTIVE", "active", json!("deleting"), 1),
        (Some(Task::Deleting), VmState::Stopped) => ("SHUTOFF", "stopped", json!("deleting"), 4),
        // The record already says where the VM is going; the task says it is not there yet.
        (Some(Task::Stopping), _) => ("ACTIVE", "active", json!("powering-off"), 1),
        (Some(Task::Starting), _) => ("SHUTOFF", "stopped", json!("powering-on"), 4),
        (None, VmState::Running) => ("ACTIVE", "active", Value::Null, 1),
        (None, VmState::Stopped) => ("SHUTOFF", "stopped", Value::Null, 4),
        (_, VmState::Lost) => ("ERROR", "error", Value::Null, 0),
    }
}

fn server_view(
    os: &Shared,
    base: &str,
    vm: &NestedVm,
    hosts: &BTreeMap<String, Host>,
    m: Micro,
    detail: bool,
) -> Value {
    let id = uuid("server", vm.name.as_str());
    let mut v = json!({
        "id": id,
        "name": vm.name.as_str(),
        "links": links(base, "compute", "v2.1", &format!("servers/{id}")),
    });
    if !detail {
        return v;
    }
    let host = hosts.get(vm.host.as_str());
    let task = os.service.task(vm.name.as_str());
    let (status, vm_state, task_state, power) = states(vm, task, host);
    let project = os.project_id();
    let image = uuid("image", &vm.image);
    let flavor = flavor_of(&os.cfg.flavors, vm.cpu_quarters, vm.memory_mib);
    let created = iso8601(vm.created_at);
    let fields = json!({
        "status": status,
        "tenant_id": project,
        "user_id": os.user_id(),
        "metadata": {},
        "hostId": host_id(&project, vm.host.as_str()),
        "image": {"id": image, "links": [{"rel": "bookmark", "href": format!("{base}/compute/images/{image}")}]},
        "flavor": {"id": flavor.id, "links": [{"rel": "bookmark", "href": format!("{base}/compute/flavors/{}", flavor.id)}]},
        "created": created,
        "updated": created,
        "addresses": {vm.network.as_str(): [{
            "version": 4,
            "addr": vm.ip.to_string(),
            "OS-EXT-IPS:type": "fixed",
            "OS-EXT-IPS-MAC:mac_addr": vm.mac,
        }]},
        "accessIPv4": "",
        "accessIPv6": "",
        "OS-DCF:diskConfig": "MANUAL",
        "progress": 0,
        "OS-EXT-AZ:availability_zone": host.map_or("", |h| h.provider.as_str()),
        "config_drive": "",
        "key_name": null,
        "OS-SRV-USG:launched_at": if vm.created_at > 0 { json!(created) } else { Value::Null },
        "OS-SRV-USG:terminated_at": null,
        "OS-EXT-SRV-ATTR:host": vm.host.as_str(),
        "OS-EXT-SRV-ATTR:hypervisor_hostname": vm.host.as_str(),
        "OS-EXT-SRV-ATTR:instance_name": vm.name.as_str(),
        "OS-EXT-STS:vm_state": vm_state,
        "OS-EXT-STS:task_state": task_state,
        "OS-EXT-STS:power_state": power,
        "os-extended-volumes:volumes_attached": [],
        "security_groups": [{"name": "default"}],
    });
    if let (Some(o), Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
        if m >= Micro(3) {
            o.insert(
                "OS-EXT-SRV-ATTR:reservation_id".into(),
                json!(format!("r-{}", &id[..8])),
            );
            o.insert("OS-EXT-SRV-ATTR:launch_index".into(), json!(0));
            o.insert("OS-EXT-SRV-ATTR:hostname".into(), json!(vm.name.as_str()));
            o.insert("OS-EXT-SRV-ATTR:kernel_id".into(), json!(""));
            o.insert("OS-EXT-SRV-ATTR:ramdisk_id".into(), json!(""));
            o.insert("OS-EXT-SRV-ATTR:root_device_name".into(), Value::Null);
            o.insert("OS-EXT-SRV-ATTR:user_data".into(), Value::Null);
        }
        if m >= Micro(9) {
            o.insert("locked".into(), json!(false));
        }
        if m >= Micro(16) {
            let up = host.is_some_and(|h| h.state == HostState::Running);
            o.insert("host_status".into(), json!(if up { "UP" } else { "DOWN" }));
        }
        if m >= Micro(19) {
            o.insert("description".into(), Value::Null);
        }
        if m >= Micro(26) {
            o.insert("tags".into(), json!([]));
        }
    }
    v
}

/// Nova's `hostId`: SHA-224 of the project id and the host name, so a tenant can tell which of
/// its servers share a host without learning the host.
fn host_id(project: &str, host: &str) -> String {
    use sha2::Digest;
    sha2::Sha224::digest(format!("{project}{host}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn host_map(os: &Shared) -> BTreeMap<String, Host> {
    os.service
        .hosts()
        .into_iter()
        .map(|h| (h.name.to_string(), h))
        .collect()
}

fn server_list(
    os: &Shared,
    h: &HeaderMap,
    uri: &Uri,
    m: Micro,
    detail: bool,
) -> OsResult<Json<Value>> {
    let base = base_url(h);
    let hosts = host_map(os);
    let q = query_pairs(uri.query());
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let name_re = get("name")
        .map(|p| {
            regex::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    OsError::new(
                        NOVA,
                        StatusCode::BAD_REQUEST,
                        format!("Invalid name filter: {e}"),
                    )
                })
        })
        .transpose()?;
    let mut vms = os.service.vms();
    // Kangaroo keeps no deleted servers.
    if get("deleted").is_some_and(|d| d.eq_ignore_ascii_case("true") || d == "1") {
        vms.clear();
    }
    // Nova's default order: newest first.
    vms.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.name.cmp(&b.name)));
    let mut views: Vec<Value> = Vec::new();
    for vm in &vms {
        if name_re
            .as_ref()
            .is_some_and(|r| !r.is_match(vm.name.as_str()))
        {
            continue;
        }
        if get("host").is_some_and(|x| x != vm.host.as_str()) {
            continue;
        }
        let full = server_view(os, &base, vm, &hosts, m, true);
        if let Some(st) = get("status") {
            if !full["status"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case(st))
            {
                continue;
            }
        }
        views.push(if detail {
            full
        } else {
            server_view(os, &base, vm, &hosts, m, false)
        });
    }
    if let Some(marker) = get("marker") {
        let at = views
            .iter()
            .position(|v| v["id"] == marker || v["name"] == marker)
            .ok_or_else(|| {
                OsError::new(
                    NOVA,
                    StatusCode::BAD_REQUEST,
                    format!("marker [{marker}] not found"),
                )
            })?;
        views.drain(..=at);
    }
    if let Some(l) = get("limit") {
        let n: usize = l.parse().map_err(|_| {
            OsError::new(
                NOVA,
                StatusCode::BAD_REQUEST,
                format!("Invalid input for query parameters limit. Value: {l}. is not an integer"),
            )
        })?;
        views.truncate(n);
    }
    Ok(Json(json!({ "servers": views })))
}

async fn list_servers(
    State(os): State<Shared>,
    Extension(m): Extension<Micro>,
    h: HeaderMap,
    uri: Uri,
) -> OsResult<Json<Value>> {
    server_list(&os, &h, &uri, m, false)
}

async fn list_servers_detail(
    State(os): State<Shared>,
    Extension(m): Extension<Micro>,
    h: HeaderMap,
    uri: Uri,
) -> OsResult<Json<Value>> {
    server_list(&os, &h, &uri, m, true)
}

async fn show_server(
    State(os): State<Shared>,
    Extension(m): Extension<Micro>,
    h: HeaderMap,
    p: Result<Path<String>, PathRejection>,
) -> OsResult<Json<Value>> {
    let id = path_param(p, NOVA)?;
    let vm = find_vm(&os, &id)?;
    Ok(Json(
        json!({"server": server_view(&os, &base_url(&h), &vm, &host_map(&os), m, true)}),
    ))
}

/// Maps a service refusal onto Nova's faults; `no_host` rewords a placement conflict the way
/// Nova's scheduler reports it.
fn nova_error(e: ServiceError, no_host: bool) -> OsError {
    let msg = e.to_string();
    match e {
        ServiceError::Invalid { field, message } => OsError::new(
            NOVA,
            StatusCode::BAD_REQUEST,
            format!("Invalid input for field/attribute {field}: {message}"),
        ),
        ServiceError::NotFound { .. } => {
            OsError::new(NOVA, StatusCode::NOT_FOUND, format!("{msg}."))
        }
        ServiceError::Conflict(_) if no_host => OsError::new(
            NOVA,
            StatusCode::CONFLICT,
            format!("No valid host was found. {msg}."),
        ),
        ServiceError::Conflict(_) => OsError::new(NOVA, StatusCode::CONFLICT, msg),
        ServiceError::Infra(_) | ServiceError::Provider(_) | ServiceError::Store(_) => {
            OsError::new(NOVA, StatusCode::INTERNAL_SERVER_ERROR, msg)
        }
    }
}

fn bad(msg: impl Into<String>) -> OsError {
    OsError::new(NOVA, StatusCode::BAD_REQUEST, msg)
}

/// Runs a blocking service call off the async workers.
async fn blocking<T: Send + 'static>(
    os: &Shared,
    f: impl FnOnce(&crate::service::Service) -> Result<T, ServiceError> + Send + 'static,
    no_host: bool,
) -> OsResult<T> {
    let s = os.service.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| {
            OsError::new(
                NOVA,
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the operation did not finish: {e}"),
            )
        })?
        .map_err(|e| nova_error(e, no_host))
}

async fn create_server(
    State(os): State<Shared>,
    Extension(m): Extension<Micro>,
    h: HeaderMap,
    b: Bytes,
) -> OsResult<Response> {
    let body: Value = super::json_body(&b, NOVA)?;
    let req = vm_request(&os, &body, m)?;
    if os.service.vms().iter().any(|v| v.name.as_str() == req.name) {
        return Err(OsError::new(
            NOVA,
            StatusCode::CONFLICT,
            format!(
                "Kangaroo server names are unique: a server named {} exists.",
                req.name
            ),
        ));
    }
    let vm = blocking(&os, move |s| s.create_vm(&req), true).await?;
    let base = base_url(&h);
    let id = uuid("server", vm.name.as_str());
    let mut r = (
        StatusCode::ACCEPTED,
        Json(json!({"server": {
            "id": id,
            "links": links(&base, "compute", "v2.1", &format!("servers/{id}")),
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}],
        }})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/compute/v2.1/servers/{id}")) {
        r.headers_mut().insert("location", v);
    }
    Ok(r)
}

async fn delete_server(
    State(os): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> OsResult<StatusCode> {
    let id = path_param(p, NOVA)?;
    let vm = find_vm(&os, &id)?;
    blocking(&os, move |s| s.delete_vm(vm.name.as_str()), false).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn update_server(
    State(os): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> OsResult<StatusCode> {
    let id = path_param(p, NOVA)?;
    find_vm(&os, &id)?;
    Err(OsError::new(
        NOVA,
        StatusCode::NOT_IMPLEMENTED,
        "Kangaroo cannot update a server: its name is its identity, and it stores no description.",
    ))
}

/// Nova's actions that Kangaroo does not implement (answered 501, not "no such action").
const UNIMPLEMENTED_ACTIONS: [&str; 30] = [
    "migrate",
    "resize",
    "confirmResize",
    "revertResize",
    "rebuild",
    "createImage",
    "createBackup",
    "pause",
    "unpause",
    "suspend",
    "resume",
    "lock",
    "unlock",
    "shelve",
    "shelveOffload",
    "unshelve",
    "rescue",
    "unrescue",
    "changePassword",
    "os-resetPassword",
    "addFloatingIp",
    "removeFloatingIp",
    "addSecurityGroup",
    "removeSecurityGroup",
    "os-getConsoleOutput",
    "os-getVNCConsole",
    "os-getSerialConsole",
    "forceDelete",
    "evacuate",
    "os-resetState",
];

fn in_state(action: &str, id: &str, vm_state: &str) -> OsError {
    OsError::new(
        NOVA,
        StatusCode::CONFLICT,
        format!("Cannot '{action}' instance {id} while it is in vm_state {vm_state}"),
    )
}

async fn server_action(
    State(os): State<Shared>,
    Extension(m): Extension<Micro>,
    p: Result<Path<String>, PathRejection>,
    b: Bytes,
) -> OsResult<StatusCode> {
    let id = path_param(p, NOVA)?;
    let body: Value = super::json_body(&b, NOVA)?;
    let obj = body.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
        bad("An action request is a JSON object with exactly one member: the action.")
    })?;
    let Some((action, arg)) = obj.iter().next() else {
        return Err(bad("An action request names one action."));
    };
    let vm = find_vm(&os, &id)?;
    let name = vm.name.to_string();
    let running = vm.state == VmState::Running;
    let vm_state = if running { "active" } else { "stopped" };
    match action.as_str() {
        "os-stop" => {
            if !running {
                return Err(in_state(action, &id, vm_state));
            }
            blocking(&os, move |s| s.stop_vm(&name).map(drop), false).await?;
        }
        "os-start" => {
            if running {
                return Err(in_state(action, &id, vm_state));
            }
            blocking(&os, move |s| s.start_vm(&name).map(drop), false).await?;
        }
        "reboot" => {
            let hard = match arg.get("type").and_then(Value::as_str) {
                Some(t) if t.eq_ignore_ascii_case("HARD") => true,
                Some(t) if t.eq_ignore_ascii_case("SOFT") => false,
                _ => {
                    return Err(bad(
                        "Invalid input for field/attribute reboot: type must be SOFT or HARD",
                    ))
                }
            };
            if !running && !hard {
                return Err(in_state(action, &id, vm_state));
            }
            blocking(
                &os,
                move |s| {
                    if running {
                        s.stop_vm(&name)?;
                    }
                    s.start_vm(&name).map(drop)
                },
                false,
            )
            .await?;
        }
        "os-migrateLive" => {
            let a = arg.as_object().ok_or_else(|| {
                bad("Invalid input for field/attribute os-migrateLive: expected an object")
            })?;
            for k in a.keys() {
                let ok = match k.as_str() {
                    "host" | "block_migration" => true,
                    "disk_over_commit" => m < Micro(25),
                    "force" => m >= Micro(30),
                    _ => false,
                };
                if !ok {
                    return Err(bad(format!("Invalid input for field/attribute os-migrateLive: Additional properties are not allowed ('{k}' was unexpected)")));
                }
            }
            let bm = a.get("block_migration").ok_or_else(|| bad("Invalid input for field/attribute os-migrateLive: 'block_migration' is a required property"))?;
            let bm_ok = bm.is_boolean() || (m >= Micro(25) && bm.as_str() == Some("auto"));
            if !bm_ok {
                return Err(bad(format!(
                    "Invalid input for field/attribute block_migration. Value: {bm}."
                )));
            }
            if m < Micro(25) && !a.get("disk_over_commit").is_some_and(Value::is_boolean) {
                return Err(bad("Invalid input for field/attribute os-migrateLive: 'disk_over_commit' is a required property"));
            }
            let target = match a.get("host") {
                Some(Value::String(h)) => Some(h.clone()),
                Some(Value::Null) | None if m >= Micro(25) || a.contains_key("host") => None,
                _ => return Err(bad("Invalid input for field/attribute os-migrateLive: 'host' is a required property")),
            };
            if !running {
                return Err(in_state(action, &id, vm_state));
            }
            let to = match target {
                Some(h) => {
                    if !os.service.hosts().iter().any(|x| x.name.as_str() == h) {
                        return Err(bad(format!("Compute host {h} could not be found.")));
                    }
                    if h == vm.host.as_str() {
                        return Err(bad(format!(
                            "Unable to migrate instance ({id}) to current host ({h})."
                        )));
                    }
                    h
                }
                None => {
                    let n = name.clone();
                    blocking(&os, move |s| s.migration_target(&n), true)
                        .await?
                        .to_string()
                }
            };
            blocking(
                &os,
                move |s| s.migrate_vm(&name, &MigrateRequest { to }).map(drop),
                true,
            )
            .await?;
        }
        a if UNIMPLEMENTED_ACTIONS.contains(&a) => {
            return Err(OsError::new(
                NOVA,
                StatusCode::NOT_IMPLEMENTED,
                format!("Kangaroo does not implement the {a} action."),
            ));
        }
        a => return Err(bad(format!("There is no such action: {a}"))),
    }
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn microversions() {
        assert_eq!(microversion(&headers(&[])).ok(), Some(Micro(1)));
        assert_eq!(
            microversion(&headers(&[("openstack-api-version", "compute 2.25")])).ok(),
            Some(Micro(25))
        );
        assert_eq!(
            microversion(&headers(&[("x-openstack-nova-api-version", "2.9")])).ok(),
            Some(Micro(9))
        );
        assert_eq!(
            microversion(&headers(&[("openstack-api-version", "compute latest")])).ok(),
            Some(Micro(MAX_MINOR))
        );
        // The new header wins; another service's entry is ignored.
        assert_eq!(
            microversion(&headers(&[
                ("openstack-api-version", "image 2.5, compute 2.3"),
                ("x-openstack-nova-api-version", "2.9")
            ]))
            .ok(),
            Some(Micro(3))
        );
        let e = microversion(&headers(&[("openstack-api-version", "compute 2.31")])).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_ACCEPTABLE);
        let e = microversion(&headers(&[("openstack-api-version", "compute 3.0")])).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_ACCEPTABLE);
        let e = microversion(&headers(&[("openstack-api-version", "compute two")])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
