//! Network v2.0: Kangaroo's networks and their subnets, read-only (create them with the native
//! API or `kangaroo network create`, which needs the VNI and subnet at once).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{
    base_url, iso8601, ok_json, path_param, query_pairs, uuid, OsError, OsResult, Shared, Style,
};
use crate::model::Network;

const NEUTRON: Style = Style::Neutron;

/// The MTU of a nested VM's port: the underlay's 1500 less VXLAN's 50 bytes.
const OVERLAY_MTU: u32 = 1450;

/// The network with id or name `id`.
pub(super) fn find_network(os: &Shared, id: &str) -> Option<Network> {
    os.service
        .networks()
        .into_iter()
        .find(|n| n.name.as_str() == id || uuid("network", n.name.as_str()) == id)
}

fn subnet_id(n: &Network) -> String {
    uuid("subnet", n.name.as_str())
}

pub(super) fn routes(os: Shared) -> Router {
    let v = "/network/v2.0";
    let authed = Router::new()
        .route(&format!("{v}/networks"), get(list_networks).post(read_only))
        .route(
            &format!("{v}/networks/{{id}}"),
            get(show_network).put(read_only).delete(read_only),
        )
        .route(&format!("{v}/subnets"), get(list_subnets).post(read_only))
        .route(
            &format!("{v}/subnets/{{id}}"),
            get(show_subnet).put(read_only).delete(read_only),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            (os.clone(), NEUTRON),
            super::require_token,
        ))
        .with_state(os);
    Router::new()
        .route("/network", get(versions))
        .route("/network/", get(versions))
        .route("/network/v2.0", get(version))
        .route("/network/v2.0/", get(version))
        .merge(authed)
}

fn version_doc(base: &str) -> Value {
    json!({"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": format!("{base}/network/v2.0/")}]})
}

async fn versions(h: HeaderMap) -> Response {
    ok_json(json!({"versions": [version_doc(&base_url(&h))]}))
}

async fn version(h: HeaderMap) -> Response {
    ok_json(json!({"version": version_doc(&base_url(&h))}))
}

fn network_view(os: &Shared, n: &Network) -> Value {
    let p = os.project_id();
    json!({
        "id": uuid("network", n.name.as_str()),
        "name": n.name.as_str(),
        "tenant_id": p,
        "project_id": p,
        "admin_state_up": true,
        "status": "ACTIVE",
        "subnets": [subnet_id(n)],
        "shared": false,
        "mtu": OVERLAY_MTU,
        "router:external": false,
        "port_security_enabled": true,
        "provider:network_type": "vxlan",
        "provider:physical_network": null,
        "provider:segmentation_id": n.vni,
        "availability_zones": [],
        "availability_zone_hints": [],
        "ipv4_address_scope": null,
        "ipv6_address_scope": null,
        "l2_adjacency": true,
        "is_default": false,
        "description": "",
        "tags": [],
        "revision_number": 0,
        "created_at": iso8601(0),
        "updated_at": iso8601(0),
    })
}

fn subnet_view(os: &Shared, n: &Network) -> Value {
    let p = os.project_id();
    let base = n.subnet.to_bits();
    let size = 1u32 << (32 - u32::from(n.prefix));
    let first = std::net::Ipv4Addr::from(base.saturating_add(1));
    let last = std::net::Ipv4Addr::from(base.saturating_add(size.saturating_sub(2)));
    json!({
        "id": subnet_id(n),
        "name": n.name.as_str(),
        "network_id": uuid("network", n.name.as_str()),
        "tenant_id": p,
        "project_id": p,
        "ip_version": 4,
        "cidr": format!("{}/{}", n.subnet, n.prefix),
        "gateway_ip": null,
        "enable_dhcp": false,
        "allocation_pools": [{"start": first.to_string(), "end": last.to_string()}],
        "dns_nameservers": [],
        "host_routes": [],
        "ipv6_ra_mode": null,
        "ipv6_address_mode": null,
        "subnetpool_id": null,
        "service_types": [],
        "description": "",
        "tags": [],
        "revision_number": 0,
        "created_at": iso8601(0),
        "updated_at": iso8601(0),
    })
}

/// Applies Neutron's list filters (`field=value`, repeated values are alternatives) and
/// `fields=` projections.
fn filtered(items: Vec<Value>, uri: &Uri) -> Vec<Value> {
    let q = query_pairs(uri.query());
    let fields: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "fields")
        .map(|(_, v)| v.as_str())
        .collect();
    items
        .into_iter()
        .filter(|item| {
            let mut keys: Vec<&str> = q
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !["fields", "limit", "marker", "sort_key", "sort_dir"].contains(k))
                .collect();
            keys.dedup();
            keys.iter().all(|k| {
                let Some(have) = item.get(*k) else {
                    return false;
                };
                q.iter()
                    .filter(|(n, _)| n == k)
                    .any(|(_, want)| match have {
                        Value::String(s) => s == want,
                        Value::Bool(b) => {
                            want.eq_ignore_ascii_case(if *b { "true" } else { "false" })
                        }
                        Value::Number(n) => n.to_string() == *want,
                        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(want)),
                        _ => false,
                    })
            })
        })
        .map(|item| {
            if fields.is_empty() {
                return item;
            }
            let Value::Object(o) = item else { return item };
            Value::Object(
                o.into_iter()
                    .filter(|(k, _)| fields.contains(&k.as_str()))
                    .collect(),
            )
        })
        .collect()
}

async fn list_networks(State(os): State<Shared>, uri: Uri) -> Json<Value> {
    let all = os
        .service
        .networks()
        .iter()
        .map(|n| network_view(&os, n))
        .collect();
    Json(json!({ "networks": filtered(all, &uri) }))
}

async fn list_subnets(State(os): State<Shared>, uri: Uri) -> Json<Value> {
    let all = os
        .service
        .networks()
        .iter()
        .map(|n| subnet_view(&os, n))
        .collect();
    Json(json!({ "subnets": filtered(all, &uri) }))
}

async fn show_network(
    State(os): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> OsResult<Json<Value>> {
    let id = path_param(p, NEUTRON)?;
    let n = find_network(&os, &id).ok_or_else(|| {
        OsError::new(
            NEUTRON,
            StatusCode::NOT_FOUND,
            format!("Network {id} could not be found."),
        )
        .with_kind("NetworkNotFound")
    })?;
    Ok(Json(json!({"network": network_view(&os, &n)})))
}

async fn show_subnet(
    State(os): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> OsResult<Json<Value>> {
    let id = path_param(p, NEUTRON)?;
    let n = os
        .service
        .networks()
        .into_iter()
        .find(|n| subnet_id(n) == id || n.name.as_str() == id)
        .ok_or_else(|| {
            OsError::new(
                NEUTRON,
                StatusCode::NOT_FOUND,
                format!("Subnet {id} could not be found."),
            )
            .with_kind("SubnetNotFound")
        })?;
    Ok(Json(json!({"subnet": subnet_view(&os, &n)})))
}

async fn read_only() -> OsError {
    OsError::new(
        NEUTRON,
        StatusCode::NOT_IMPLEMENTED,
        "Kangaroo's networks are created with their VNI and subnet at once: use `kangaroo network create` or POST /v1/networks.",
    )
    .with_kind("NotImplemented")
}
