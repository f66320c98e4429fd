//! The tenant API (the paper's "Skippy"): REST + JSON over HTTP, with an OpenAPI document
//! generated from the handlers and served at `/openapi.json`.
//!
//! Every route but `/health` requires `Authorization: Bearer <token>`. Request bodies are typed
//! and reject unknown fields; every error is a JSON body `{"error": {"status", "code", "message",
//! "field"?}}` naming what was wrong. Handlers never panic on input.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use kangaroo_control::extract::Param;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::catalog::Catalog;
use crate::infra::realize::ConvergeReport;
use crate::model::{Host, NestedVm, Network};
use crate::packing::{Consolidation, Plan};
use crate::service::{
    AppMigrateRequest, AppMigrateResult, ApplyResult, Billing, ClockRequest, HostRequest,
    MigrateRequest, NetworkRequest, Provider, Service, ServiceError, VmRequest, WorkloadRequest,
};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Api {
    service: Arc<Service>,
    token: Arc<str>,
    /// The OpenStack face's token checker (same key and lifetime as the face's own), for the
    /// requests a standby forwards.
    os_tokens: Arc<crate::openstack::Tokens>,
    /// The CA this controller serves HTTPS with (what agents fetch and check, and what it
    /// trusts when it forwards to the leader, which shares it).
    ca_pem: Option<Arc<str>>,
}

/// The JSON error body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code: `invalid`, `not_found`, `conflict`, `unauthorized`, `internal`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError(StatusCode, &'static str, String, Option<String>);

impl kangaroo_control::extract::PathRejection for ApiError {
    fn bad_path(message: String) -> ApiError {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            message,
            Some("path".to_owned()),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                status: self.0.as_u16(),
                code: self.1.to_owned(),
                message: self.2,
                field: self.3,
            },
        };
        (self.0, Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        match &e {
            ServiceError::Invalid { field, .. } => ApiError(
                StatusCode::BAD_REQUEST,
                "invalid",
                e.to_string(),
                Some(field.clone()),
            ),
            ServiceError::NotFound { .. } => {
                ApiError(StatusCode::NOT_FOUND, "not_found", e.to_string(), None)
            }
            ServiceError::Conflict(_) => {
                ApiError(StatusCode::CONFLICT, "conflict", e.to_string(), None)
            }
            ServiceError::Infra(_) | ServiceError::Provider(_) => ApiError(
                StatusCode::BAD_GATEWAY,
                "infrastructure",
                e.to_string(),
                None,
            ),
            ServiceError::Store(
                crate::store::StoreError::NotLeader { .. }
                | crate::store::StoreError::Unavailable(_)
                | crate::store::StoreError::Etcd { .. },
            ) => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{:#}", anyhow::Error::from(e)),
                None,
            ),
            ServiceError::Store(_) => ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{:#}", anyhow::Error::from(e)),
                None,
            ),
        }
    }
}

/// Decodes a JSON body, naming the field on error.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> std::result::Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        let field = if path != "." && !path.is_empty() {
            Some(path)
        } else if msg.starts_with("unknown field") || msg.starts_with("missing field") {
            // serde names the field itself in these messages: "unknown field `x`, ...".
            msg.split('`').nth(1).map(str::to_owned)
        } else {
            None
        };
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("request body: {msg}"),
            field,
        )
    })
}

type JsonResult<T> = std::result::Result<Json<T>, ApiError>;

/// A controller's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ControllerRole {
    /// The only controller (embedded store).
    Sole,
    /// The elected leader (etcd).
    Leader,
    /// A standby that forwards writes to the leader (etcd).
    Standby,
}

/// Which controller this is: the only one (embedded store), the leader or a standby (etcd).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ControllerStatus {
    /// Its part.
    pub role: ControllerRole,
    /// The leader's API address, when this is a standby that knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Where the state lives: `embedded` or the etcd URL.
    pub store: String,
    /// The revision of the state this controller serves.
    pub revision: u64,
}

/// This controller's role and the state's revision it serves.
#[utoipa::path(get, path = "/v1/controller", responses((status = 200, body = ControllerStatus)))]
async fn controller(State(a): State<Api>) -> Json<ControllerStatus> {
    let (role, leader) = match a.service.role() {
        crate::store::Role::Sole => (ControllerRole::Sole, None),
        crate::store::Role::Leader { .. } => (ControllerRole::Leader, None),
        crate::store::Role::Standby { leader } => (ControllerRole::Standby, leader),
    };
    Json(ControllerStatus {
        role,
        leader,
        store: a.service.store_description(),
        revision: a.service.revision(),
    })
}

/// Liveness.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "alive", body = String)))]
async fn health() -> &'static str {
    "ok"
}

/// Providers and their catalogs.
#[utoipa::path(get, path = "/v1/providers", responses((status = 200, body = Vec<Provider>)))]
async fn list_providers(State(a): State<Api>) -> Json<Vec<Provider>> {
    Json(a.service.providers().to_vec())
}

/// Built-in catalogs.
#[utoipa::path(get, path = "/v1/catalogs", responses((status = 200, body = Vec<String>)))]
async fn list_catalogs() -> Json<Vec<String>> {
    Json(
        crate::catalog::BUILTIN
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect(),
    )
}

/// One built-in catalog.
#[utoipa::path(get, path = "/v1/catalogs/{name}", params(("name" = String, Path)), responses((status = 200, body = Vec<crate::model::InstanceType>), (status = 404, body = ErrorBody)))]
async fn get_catalog(
    Param(name, _): Param<String, ApiError>,
) -> JsonResult<Vec<crate::model::InstanceType>> {
    if !crate::catalog::BUILTIN.iter().any(|(n, _)| *n == name) {
        return Err(ServiceError::NotFound {
            kind: "catalog",
            name,
        }
        .into());
    }
    let c = Catalog::load(&name).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
            None,
        )
    })?;
    Ok(Json(c.instances))
}

/// Rented hosts.
#[utoipa::path(get, path = "/v1/hosts", responses((status = 200, body = Vec<Host>)))]
async fn list_hosts(State(a): State<Api>) -> Json<Vec<Host>> {
    Json(a.service.hosts())
}

/// Rent a host.
#[utoipa::path(post, path = "/v1/hosts", request_body = HostRequest, responses((status = 200, body = Host), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_host(State(a): State<Api>, b: Bytes) -> JsonResult<Host> {
    let req: HostRequest = body(&b)?;
    Ok(Json(blocking(&a, move |s| s.add_host(&req)).await?))
}

/// Release a host that runs no VM.
#[utoipa::path(delete, path = "/v1/hosts/{name}", params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_host(
    State(a): State<Api>,
    Param(name, _): Param<String, ApiError>,
) -> std::result::Result<StatusCode, ApiError> {
    blocking(&a, move |s| s.remove_host(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the credential of a host's agent (the agent is refused from then on, and the host
/// is lost after the lease unless it joins again with a new token).
#[utoipa::path(delete, path = "/v1/hosts/{name}/agent", params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke_agent(
    State(a): State<Api>,
    Param(name, _): Param<String, ApiError>,
) -> std::result::Result<StatusCode, ApiError> {
    let n = name.clone();
    if blocking(&a, move |s| s.revoke_agent_credential(&n)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("host {name} has no agent credential"),
            None,
        ))
    }
}

/// The tunnels of a local host's switch: the hosts it peers with, whether each tunnel is
/// encrypted (`required`) or plain VXLAN (`off`), and a secure tunnel's path and round trip.
#[utoipa::path(get, path = "/v1/hosts/{name}/tunnels", params(("name" = String, Path)), responses((status = 200, body = Vec<crate::infra::realize::Tunnel>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn host_tunnels(
    State(a): State<Api>,
    Param(name, _): Param<String, ApiError>,
) -> JsonResult<Vec<crate::infra::realize::Tunnel>> {
    Ok(Json(blocking(&a, move |s| s.host_tunnels(&name)).await?))
}

/// Networks.
#[utoipa::path(get, path = "/v1/networks", responses((status = 200, body = Vec<Network>)))]
async fn list_networks(State(a): State<Api>) -> Json<Vec<Network>> {
    Json(a.service.networks())
}

/// Create a network.
#[utoipa::path(post, path = "/v1/networks", request_body = NetworkRequest, responses((status = 200, body = Network), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_network(State(a): State<Api>, b: Bytes) -> JsonResult<Network> {
    Ok(Json(a.service.create_network(&body(&b)?)?))
}

/// Delete a network no VM uses.
#[utoipa::path(delete, path = "/v1/networks/{name}", params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_network(
    State(a): State<Api>,
    Param(name, _): Param<String, ApiError>,
) -> std::result::Result<StatusCode, ApiError> {
    a.service.delete_network(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Nested VMs.
#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = Vec<NestedVm>)))]
async fn list_vms(State(a): State<Api>) -> Json<Vec<NestedVm>> {
    Json(a.service.vms())
}

/// Create a nested VM, placed cost-aware.
#[utoipa::path(post, path = "/v1/vms", request_body = VmRequest, responses((status = 200, body = NestedVm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_vm(State(a): State<Api>, b: Bytes) -> JsonResult<NestedVm> {
    let req: VmRequest = body(&b)?;
    Ok(Json(blocking(&a, move |s| s.create_vm(&req)).await?))
}

/// One nested VM.
#[utoipa::path(get, path = "/v1/vms/{name}", params(("name" = String, Path)), responses((status = 200, body = NestedVm), (status = 404, body = ErrorBody)))]
async fn get_vm(
    State(a): State<Api>,
    Param(name, _): Param<String, ApiError>,
) -> JsonResult<NestedVm> {
    Ok(Json(a.service.vm(&name)?))
}

/// Delete a nested VM.
#[utoipa::path(delete, path = "/v1/vms/{name}", params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_vm(
    State(a): State<Api>,
    Param(name, _): Param<String, ApiError>,
) -> std::result::Result<StatusCode, ApiError> {
    blocking(&a, move |s| s.delete_vm(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start a nested VM.
#[utoipa::path(post, path = "/v1/vms/{name}/start", params(("name" = String, Path)), responses((status = 200, body = NestedVm), (status = 404, body = ErrorBody)))]
async fn start_vm(
    State(a): State<Api>,
    Param(name, _): Param<String, ApiError>,
) -> JsonResult<NestedVm> {
    Ok(Json(blocking(&a, move |s| s.start_vm(&name)).await?))
}

/// Stop a nested VM.
#[utoipa::path(post, path = "/v1/vms/{name}/stop", params(("name" = String, Path)), responses((status = 200, body = NestedVm), (status = 404, body = ErrorBody)))]
async fn stop_vm(
    State(a): State<Api>,
    Param(name, _): Param<String, ApiError>,
) -> JsonResult<NestedVm> {
    Ok(Json(blocking(&a, move |s| s.stop_vm(&name)).await?))
}

/// The moved VM and, for a VM that ran on local hosts, how the move went.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrateResult {
    /// The VM, at its new host.
    #[serde(flatten)]
    pub vm: NestedVm,
    /// The migration's figures (absent when nothing ran: a simulated provider, a stopped VM).
    pub migration: Option<crate::infra::local::MigrationReport>,
}

/// Move a nested VM to another host: live (it keeps running) with the `qemu` driver on local
/// hosts; the VM stays where it was if the move fails.
#[utoipa::path(post, path = "/v1/vms/{name}/migrate", params(("name" = String, Path)), request_body = MigrateRequest, responses((status = 200, body = MigrateResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn migrate_vm(
    State(a): State<Api>,
    Param(name, _): Param<String, ApiError>,
    b: Bytes,
) -> JsonResult<MigrateResult> {
    let req: MigrateRequest = body(&b)?;
    Ok(Json(
        blocking(&a, move |s| {
            let (vm, migration) = s.migrate_vm_report(&name, &req)?;
            Ok(MigrateResult { vm, migration })
        })
        .await?,
    ))
}

/// Move every VM of an application (labelled by `app` in its workload or request) to hosts of
/// another provider, packed for cost there; source hosts left empty are released.
#[utoipa::path(post, path = "/v1/apps/{app}/migrate", params(("app" = String, Path)), request_body = AppMigrateRequest, responses((status = 200, body = AppMigrateResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn migrate_app(
    State(a): State<Api>,
    Param(app, _): Param<String, ApiError>,
    b: Bytes,
) -> JsonResult<AppMigrateResult> {
    let req: AppMigrateRequest = body(&b)?;
    Ok(Json(
        blocking(&a, move |s| s.migrate_app(&app, &req)).await?,
    ))
}

/// Run the reconciler now: make the infrastructure match the state (it also runs at start-up
/// and every few seconds).
#[utoipa::path(post, path = "/v1/reconcile", responses((status = 200, body = ConvergeReport)))]
async fn reconcile(State(a): State<Api>) -> JsonResult<ConvergeReport> {
    Ok(Json(blocking(&a, |s| s.reconcile()).await?))
}

/// Runs `f` on the blocking pool: infrastructure steps take seconds.
async fn blocking<T: Send + 'static>(
    a: &Api,
    f: impl FnOnce(&Service) -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ApiError> {
    let s = a.service.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the operation did not finish: {e}"),
                None,
            )
        })?
        .map_err(ApiError::from)
}

/// Plan a workload (changes nothing).
#[utoipa::path(post, path = "/v1/plans", request_body = WorkloadRequest, responses((status = 200, body = Plan), (status = 400, body = ErrorBody)))]
async fn compute_plan(State(a): State<Api>, b: Bytes) -> JsonResult<Plan> {
    Ok(Json(a.service.plan(&body(&b)?)?))
}

/// Apply a workload: rent the planned hosts and create the VMs, in one transaction.
#[utoipa::path(post, path = "/v1/plans/apply", request_body = WorkloadRequest, responses((status = 200, body = ApplyResult), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn apply_plan(State(a): State<Api>, b: Bytes) -> JsonResult<ApplyResult> {
    let req: WorkloadRequest = body(&b)?;
    Ok(Json(blocking(&a, move |s| s.apply(&req)).await?))
}

/// Migrations that would free whole hosts (a dry run).
#[utoipa::path(get, path = "/v1/consolidation", responses((status = 200, body = Consolidation)))]
async fn consolidation(State(a): State<Api>) -> Json<Consolidation> {
    Json(a.service.consolidation())
}

/// What the rented hosts cost.
#[utoipa::path(get, path = "/v1/billing", responses((status = 200, body = Billing)))]
async fn billing(State(a): State<Api>) -> Json<Billing> {
    Json(a.service.billing())
}

/// Advance the simulated billing clock (sim providers).
#[utoipa::path(post, path = "/v1/billing/clock", request_body = ClockRequest, responses((status = 200, body = Billing), (status = 400, body = ErrorBody)))]
async fn advance_clock(State(a): State<Api>, b: Bytes) -> JsonResult<Billing> {
    Ok(Json(a.service.advance_clock(&body(&b)?)?))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Kangaroo tenant API", description = "Nested VMs on rented infrastructure VMs, placed for cost."),
    modifiers(&Security),
    security(("bearer" = []))
)]
struct Doc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and the OpenAPI document describing exactly them, with the OpenStack-compatible
/// face at its defaults (project `kangaroo`, tokens valid an hour).
pub fn router(service: Arc<Service>, token: &str) -> (Router, utoipa::openapi::OpenApi) {
    router_with(
        service,
        token,
        crate::openstack::OpenStackConfig::new(token),
        None,
    )
}

/// As [`router`], with the OpenStack face's settings. The OpenAPI document covers the native
/// API only; the OpenStack face follows OpenStack's own API references.
pub fn router_with(
    service: Arc<Service>,
    token: &str,
    openstack: crate::openstack::OpenStackConfig,
    ca_pem: Option<&str>,
) -> (Router, utoipa::openapi::OpenApi) {
    let api = Api {
        service,
        token: Arc::from(token),
        os_tokens: Arc::new(crate::openstack::Tokens::new(
            &openstack.password,
            openstack.token_ttl,
        )),
        ca_pem: ca_pem.map(Arc::from),
    };
    let (routes, doc) = OpenApiRouter::with_openapi(Doc::openapi())
        .routes(routes!(list_providers))
        .routes(routes!(list_catalogs))
        .routes(routes!(get_catalog))
        .routes(routes!(list_hosts, add_host))
        .routes(routes!(remove_host))
        .routes(routes!(host_tunnels))
        .routes(routes!(revoke_agent))
        .routes(routes!(list_networks, create_network))
        .routes(routes!(delete_network))
        .routes(routes!(list_vms, create_vm))
        .routes(routes!(get_vm, delete_vm))
        .routes(routes!(start_vm))
        .routes(routes!(stop_vm))
        .routes(routes!(migrate_vm))
        .routes(routes!(reconcile))
        .routes(routes!(migrate_app))
        .routes(routes!(compute_plan))
        .routes(routes!(apply_plan))
        .routes(routes!(consolidation))
        .routes(routes!(billing))
        .routes(routes!(advance_clock))
        .routes(routes!(health))
        .routes(routes!(controller))
        .with_state(api.clone())
        .split_for_parts();
    let doc_json = Arc::new(doc.clone());
    let app = routes
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let d = doc_json.clone();
                async move { Json((*d).clone()) }
            }),
        )
        .merge(crate::openstack::router(api.service.clone(), openstack))
        .merge(crate::agentapi::routes(
            api.service.clone(),
            token,
            api.ca_pem.clone(),
        ))
        .fallback(|uri: axum::http::Uri| async move {
            if crate::openstack::is_openstack_path(uri.path()) {
                return crate::openstack::unrouted(uri.path(), false);
            }
            ApiError(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route".into(),
                None,
            )
            .into_response()
        })
        .method_not_allowed_fallback(|m: axum::http::Method, uri: axum::http::Uri| async move {
            if crate::openstack::is_openstack_path(uri.path()) {
                return crate::openstack::unrouted(uri.path(), true);
            }
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("method {m} is not allowed on this route"),
                None,
            )
            .into_response()
        })
        // The outermost layer runs first: nothing is forwarded (and no body read) before the
        // request is authenticated.
        .layer(middleware::from_fn_with_state(api.clone(), to_leader))
        .layer(middleware::from_fn_with_state(api, auth));
    (app, doc)
}

/// On a standby controller, sends every request that may change state to the leader and
/// answers with the leader's response; reads are answered here, from the copy the standby keeps
/// current by watching the store. With no leader elected yet, such requests get 503.
async fn to_leader(State(a): State<Api>, req: Request, next: Next) -> Response {
    let leader = match a.service.role() {
        crate::store::Role::Standby { leader } if is_write(req.method()) => leader,
        _ => return next.run(req).await,
    };
    let Some(leader) = leader else {
        let mut r = ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this controller is a standby and no leader is elected yet; retry in a few seconds"
                .into(),
            None,
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    };
    forward(&leader, a.ca_pem.as_deref(), req).await
}

/// Whether a request with `method` may change state (a standby forwards it).
fn is_write(method: &axum::http::Method) -> bool {
    !matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    )
}

/// The largest body a standby forwards: what the API itself accepts (axum's default limit).
pub const FORWARD_BODY_LIMIT: usize = 2 << 20;

/// Marks a request a standby forwarded, so it is never forwarded twice.
const FORWARDED: &str = "x-kangaroo-forwarded";

/// Sends `req` to the controller at `leader` and returns its answer (a standby's writes).
pub async fn forward(
    leader: &str,
    ca_pem: Option<&str>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let unavailable = |msg: String| {
        let body =
            serde_json::json!({"error": {"status": 503, "code": "unavailable", "message": msg}});
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    };
    if req.headers().contains_key(FORWARDED) {
        return unavailable(format!(
            "this controller is a standby too (forwarded here as the leader; the leader is {leader}); retry in a few seconds"
        ));
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, FORWARD_BODY_LIMIT).await else {
        let body = serde_json::json!({"error": {"status": 413, "code": "too_large",
            "message": format!("the request body is over {FORWARD_BODY_LIMIT} bytes or could not be read")}});
        return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
    };
    let url = format!(
        "{}{}",
        leader.trim_end_matches('/'),
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let leader = leader.to_owned();
    // Another controller on HTTPS shares this one's CA: trust it, and only it.
    let tls = ca_pem.and_then(|pem| crate::tls::ureq_tls(pem).ok());
    let sent = tokio::task::spawn_blocking(move || {
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(std::time::Duration::from_secs(3)))
            .timeout_global(Some(std::time::Duration::from_secs(900)));
        if let Some(tls) = tls {
            cfg = cfg.tls_config(tls);
        }
        let agent: ureq::Agent = cfg.build().into();
        let mut rb = axum::http::Request::builder()
            .method(parts.method.clone())
            .uri(&url)
            .header(FORWARDED, "1");
        for (k, v) in &parts.headers {
            if ![
                header::HOST,
                header::CONTENT_LENGTH,
                header::CONNECTION,
                header::TRANSFER_ENCODING,
            ]
            .contains(k)
            {
                rb = rb.header(k, v);
            }
        }
        let req = rb.body(bytes.to_vec()).map_err(|e| e.to_string())?;
        let mut resp = agent.run(req).map_err(|e| e.to_string())?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((resp.status(), resp.headers().clone(), body))
    })
    .await;
    match sent {
        Ok(Ok((status, headers, body))) => {
            let mut r = (status, body).into_response();
            for (k, v) in &headers {
                if ![
                    header::CONTENT_LENGTH,
                    header::CONNECTION,
                    header::TRANSFER_ENCODING,
                ]
                .contains(k)
                {
                    r.headers_mut().insert(k.clone(), v.clone());
                }
            }
            r
        }
        Ok(Err(e)) => unavailable(format!(
            "forwarding to the leader {leader}: {e}; retry in a few seconds"
        )),
        Err(e) => unavailable(format!("forwarding to the leader {leader}: {e}")),
    }
}

async fn auth(State(a): State<Api>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    // The agents' routes check their own credentials (join tokens, host credentials) where
    // they answer. A standby forwards only a report whose credential it can check itself (the
    // state it follows holds the credentials' hashes) and joins, whose token the leader checks
    // (at most 2 MiB read, as every forwarded body).
    if let Some(rest) = req.uri().path().strip_prefix(crate::agentapi::PREFIX) {
        let standby_write = is_write(req.method())
            && matches!(a.service.role(), crate::store::Role::Standby { .. });
        if standby_write && rest != "/join" {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Agent "))
                .and_then(|v| v.split_once(' '))
                .is_some_and(|(h, s)| a.service.check_agent_credential(h, s));
            if !ok {
                return ApiError(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "no valid agent credential".into(),
                    None,
                )
                .into_response();
            }
        }
        return next.run(req).await;
    }
    // The OpenStack face checks its own tokens (X-Auth-Token) where it answers; a request a
    // standby forwards is checked here first, so that nobody unauthenticated makes a standby
    // read and relay a body. Token requests carry their credentials in the body: the leader
    // checks those.
    if crate::openstack::is_openstack_path(req.uri().path()) {
        let forwarded = is_write(req.method())
            && matches!(a.service.role(), crate::store::Role::Standby { .. })
            && req.uri().path() != "/identity/v3/auth/tokens";
        let token_ok = !forwarded
            || req
                .headers()
                .get("x-auth-token")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| a.os_tokens.validate(t).is_ok());
        if !token_ok {
            return crate::openstack::unauthorized(req.uri().path());
        }
        return next.run(req).await;
    }
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| crate::token::constant_time_eq(t.as_bytes(), a.token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token".into(),
            None,
        )
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Op, RedbStore, Role, State, Store, StoreError};

    /// The embedded store, acting as a standby whose leader is unreachable.
    struct Standby(RedbStore);

    impl Store for Standby {
        fn load(&self) -> Result<(State, u64), StoreError> {
            self.0.load()
        }
        fn commit(&self, expected: u64, ops: &[Op]) -> Result<u64, StoreError> {
            self.0.commit(expected, ops)
        }
        fn role(&self) -> Role {
            // Nothing listens on loopback's discard port: a forwarded request fails with 503.
            Role::Standby {
                leader: Some("http://127.0.0.1:9".into()),
            }
        }
    }

    fn call(
        url: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut b = axum::http::Request::builder()
            .method(method)
            .uri(format!("{url}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(body.to_vec()).unwrap();
        let mut r = agent.run(req).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    /// A standby authenticates before it forwards, and forwards no more than the API accepts.
    #[test]
    fn a_standby_forwards_nothing_unauthenticated_or_oversized() {
        let dir = tempfile::tempdir().unwrap();
        let store = Standby(RedbStore::open(dir.path()).unwrap());
        let service = Arc::new(
            Service::new(
                Box::new(store),
                &[("p".to_owned(), "ec2-2026".to_owned())],
                crate::packing::PackOptions::default(),
            )
            .unwrap(),
        );
        let (app, _) = router(service, "secret");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await });
        let bearer = [("authorization", "Bearer secret")];
        let vm = br#"{"name":"a","vcpus":1,"memory":"1GiB","network":"n"}"#;
        // Without the token: refused here, not forwarded (the unreachable leader would be 503).
        let (st, body) = call(&url, "POST", "/v1/vms", &[], vm);
        assert_eq!(st, 401, "{body}");
        let (st, body) = call(&url, "POST", "/compute/v2.1/servers", &[], b"{}");
        assert_eq!(st, 401, "{body}");
        let (st, body) = call(
            &url,
            "DELETE",
            "/compute/v2.1/servers/x",
            &[("x-auth-token", "forged")],
            b"",
        );
        assert_eq!(st, 401, "{body}");
        // With it, forwarded (and the leader is unreachable).
        let (st, body) = call(&url, "POST", "/v1/vms", &bearer, vm);
        assert_eq!(st, 503, "{body}");
        let (st, body) = call(
            &url,
            "POST",
            "/compute/v2.1/servers",
            &[("x-auth-token", "secret")],
            b"{}",
        );
        assert_eq!(st, 503, "{body}");
        // A body over what the API accepts is not read on, let alone forwarded.
        let big = vec![b' '; FORWARD_BODY_LIMIT + 1];
        let (st, body) = call(&url, "POST", "/v1/vms", &bearer, &big);
        assert_eq!(st, 413, "{body}");
        // Reads are answered by the standby itself.
        let (st, body) = call(&url, "GET", "/v1/vms", &bearer, b"");
        assert_eq!((st, body.as_str()), (200, "[]"));
    }
}
