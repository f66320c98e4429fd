//! Image v2: the guest images the nested-VM drivers boot, read-only.

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

const GLANCE: Style = Style::Glance;

/// A guest image.
pub(super) struct Image {
    pub(super) name: &'static str,
    description: &'static str,
}

/// The images every driver can boot: `busybox` is a shell in a namespace under the `netns`
/// driver and a kernel with a busybox initramfs under `qemu`.
const IMAGES: [Image; 1] = [Image {
    name: "busybox",
    description: "busybox userland: a network namespace (netns driver) or a Linux kernel with a busybox initramfs (qemu driver)",
}];

/// The image with id or name `id`.
pub(super) fn find(id: &str) -> Option<&'static Image> {
    IMAGES
        .iter()
        .find(|i| i.name == id || uuid("image", i.name) == id)
}

pub(super) fn routes(os: Shared) -> Router {
    let authed = Router::new()
        .route("/image/v2/images", get(list).post(not_implemented))
        .route(
            "/image/v2/images/{id}",
            get(show).delete(not_implemented).patch(not_implemented),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            (os.clone(), GLANCE),
            super::require_token,
        ))
        .with_state(os);
    Router::new()
        .route("/image", get(versions))
        .route("/image/", get(versions))
        .route("/image/versions", get(versions))
        .merge(authed)
}

async fn versions(h: HeaderMap) -> Response {
    let base = base_url(&h);
    ok_json(json!({"versions": [{
        "id": "v2.9",
        "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{base}/image/v2/")}],
    }]}))
}

fn view(os: &Shared, i: &Image) -> Value {
    let id = uuid("image", i.name);
    json!({
        "id": id,
        "name": i.name,
        "status": "active",
        "visibility": "public",
        "protected": true,
        "os_hidden": false,
        "disk_format": "raw",
        "container_format": "bare",
        "size": null,
        "virtual_size": null,
        "min_disk": 0,
        "min_ram": 0,
        "checksum": null,
        "os_hash_algo": null,
        "os_hash_value": null,
        "owner": os.project_id(),
        "description": i.description,
        "created_at": iso8601(0),
        "updated_at": iso8601(0),
        "tags": [],
        "self": format!("/v2/images/{id}"),
        "file": format!("/v2/images/{id}/file"),
        "schema": "/v2/schemas/image",
    })
}

async fn list(State(os): State<Shared>, uri: Uri) -> Json<Value> {
    let q = query_pairs(uri.query());
    // Glance's filters: `name=X`, or `name=in:X,Y` (one of them).
    let want = |k: &str, v: &str| {
        q.iter()
            .filter(|(n, _)| n == k)
            .all(|(_, x)| match x.strip_prefix("in:") {
                Some(list) => list.split(',').any(|i| i.trim_matches('"') == v),
                None => x == v,
            })
    };
    let images: Vec<Value> = IMAGES
        .iter()
        .filter(|i| {
            want("name", i.name) && want("id", &uuid("image", i.name)) && want("status", "active")
        })
        .map(|i| view(&os, i))
        .collect();
    Json(json!({"images": images, "schema": "/v2/schemas/images", "first": "/v2/images"}))
}

async fn show(
    State(os): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> OsResult<Json<Value>> {
    let id = path_param(p, GLANCE)?;
    let i = find(&id).ok_or_else(|| {
        OsError::new(
            GLANCE,
            StatusCode::NOT_FOUND,
            format!("No image found with ID {id}"),
        )
    })?;
    Ok(Json(view(&os, i)))
}

async fn not_implemented() -> OsError {
    OsError::new(
        GLANCE,
        StatusCode::NOT_IMPLEMENTED,
        "Kangaroo's images are the guests its drivers boot; they cannot be uploaded, changed or deleted here.",
    )
}
