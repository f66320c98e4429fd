//! The OpenStack-compatible face of the tenant API: a subset of Identity v3, Compute v2.1
//! (microversions 2.1–2.30), Image v2 and Network v2.0, mapped onto the same [`Service`]
//! operations as the native API, so that the `openstack` client and `openstacksdk` drive
//! Kangaroo unmodified.
//!
//! Everything lives on the native API's listener under four prefixes: `/identity/v3`,
//! `/compute/v2.1`, `/image/v2` and `/network/v2.0`. The tenant is one Keystone project in the
//! `Default` domain; its one user's password is the API token. Tokens are signed (HMAC-SHA256
//! keyed by the API token), so they stay valid across a restart until they expire.
//!
//! Objects that OpenStack names by UUID (servers, images, networks, subnets) get a UUID derived
//! from their Kangaroo name, so an id never changes while the object exists and needs no
//! storage. Every lookup by id also accepts the name.

mod compute;
pub mod flavors;
mod identity;
mod image;
mod network;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::service::Service;

pub use identity::Tokens;

/// The path prefixes this face serves; the native API's bearer-token check skips them.
pub const PREFIXES: [&str; 4] = ["/identity", "/compute", "/image", "/network"];

/// Whether `path` belongs to the OpenStack face.
pub fn is_openstack_path(path: &str) -> bool {
    PREFIXES.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Whether a request is answered without a token: version discovery, and asking for a token
/// (whose credentials are in the body).
pub fn is_public(method: &str, path: &str) -> bool {
    const DISCOVERY: [&str; 15] = [
        "/identity",
        "/identity/",
        "/identity/v3",
        "/identity/v3/",
        "/compute",
        "/compute/",
        "/compute/v2.1",
        "/compute/v2.1/",
        "/image",
        "/image/",
        "/image/versions",
        "/network",
        "/network/",
        "/network/v2.0",
        "/network/v2.0/",
    ];
    DISCOVERY.contains(&path) || (method == "POST" && path == "/identity/v3/auth/tokens")
}

/// Settings of the OpenStack face.
#[derive(Debug, Clone)]
pub struct OpenStackConfig {
    /// The project (and user) name of the tenant.
    pub project: String,
    /// The user's password: the API token.
    pub password: String,
    /// How long an issued token is valid.
    pub token_ttl: Duration,
    /// The flavors offered.
    pub flavors: Vec<flavors::Flavor>,
}

impl OpenStackConfig {
    /// The defaults for a server whose API token is `token`: project and user `kangaroo`,
    /// tokens valid one hour.
    pub fn new(token: &str) -> OpenStackConfig {
        OpenStackConfig {
            project: "kangaroo".to_owned(),
            password: token.to_owned(),
            token_ttl: Duration::from_secs(3600),
            flavors: flavors::default_flavors(),
        }
    }
}

/// Shared state of the OpenStack handlers.
pub(crate) struct Os {
    service: Arc<Service>,
    cfg: OpenStackConfig,
    tokens: Tokens,
}

type Shared = Arc<Os>;

impl Os {
    fn project_id(&self) -> String {
        hex_id("project", &self.cfg.project)
    }

    fn user_id(&self) -> String {
        hex_id("user", &self.cfg.project)
    }
}

/// The routes of the four services (merged into the native API's router).
pub fn router(service: Arc<Service>, cfg: OpenStackConfig) -> Router {
    let tokens = Tokens::new(&cfg.password, cfg.token_ttl);
    let os = Arc::new(Os {
        service,
        cfg,
        tokens,
    });
    Router::new()
        .merge(identity::routes(os.clone()))
        .merge(compute::routes(os.clone()))
        .merge(image::routes(os.clone()))
        .merge(network::routes(os))
}

/// The answer to a request under an OpenStack prefix that no route takes: 404, or 405 when
/// the path exists with other methods, in the style of the service the prefix names.
pub fn unrouted(path: &str, method_not_allowed: bool) -> Response {
    let style = style_of(path);
    if method_not_allowed {
        OsError::new(
            style,
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for the requested URL.",
        )
        .into_response()
    } else {
        OsError::new(
            style,
            StatusCode::NOT_FOUND,
            format!("Kangaroo does not implement {path}."),
        )
        .with_kind("HTTPNotFound")
        .into_response()
    }
}

/// A UUID (version-5 layout) derived from an object's kind and name.
pub(crate) fn uuid(kind: &str, name: &str) -> String {
    let d = Sha256::digest(format!("kangaroo:{kind}:{name}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A Keystone-style id (32 hex digits) derived from an object's kind and name.
pub(crate) fn hex_id(kind: &str, name: &str) -> String {
    uuid(kind, name).replace('-', "")
}

/// `secs` since the epoch as ISO 8601 UTC, e.g. `2026-12-02T04:05:06Z`.
pub(crate) fn iso8601(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of day `days` since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01, in 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The base URL clients reached this server at (from the `Host` header), for links and the
/// service catalog.
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
        })
        .unwrap_or("127.0.0.1");
    // `https` when the request came over TLS (the server sets this header itself on TLS
    // connections) or through a TLS proxy that says so; anything else is `http`.
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

/// How a service spells its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// Keystone and keystonemiddleware: `{"error": {"code", "title", "message"}}`.
    Keystone,
    /// Nova: `{"<faultName>": {"code", "message"}}`.
    Nova,
    /// Neutron: `{"NeutronError": {"type", "message", "detail"}}`.
    Neutron,
    /// Glance (its JSON form): `{"error": {"code", "title", "message"}}`.
    Glance,
}

/// An error answered in the style of the service it came from.
#[derive(Debug)]
pub(crate) struct OsError {
    status: StatusCode,
    style: Style,
    message: String,
    /// Neutron's error type, e.g. `NetworkNotFound`.
    kind: &'static str,
}

impl OsError {
    pub(crate) fn new(style: Style, status: StatusCode, message: impl Into<String>) -> OsError {
        OsError {
            status,
            style,
            message: message.into(),
            kind: "",
        }
    }

    pub(crate) fn with_kind(mut self, kind: &'static str) -> OsError {
        self.kind = kind;
        self
    }

    pub(crate) fn unauthorized(style: Style) -> OsError {
        OsError::new(
            style,
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        )
    }
}

fn nova_fault_name(s: StatusCode) -> &'static str {
    match s.as_u16() {
        400 => "badRequest",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "itemNotFound",
        405 => "badMethod",
        409 => "conflictingRequest",
        413 | 429 => "overLimit",
        415 => "badMediaType",
        501 => "notImplemented",
        503 => "serviceUnavailable",
        _ => "computeFault",
    }
}

impl IntoResponse for OsError {
    fn into_response(self) -> Response {
        let code = self.status.as_u16();
        // 401s come from the token check, which is keystonemiddleware's in every service.
        let style = if code == 401 {
            Style::Keystone
        } else {
            self.style
        };
        let body = match style {
            Style::Keystone | Style::Glance => json!({"error": {
                "code": code,
                "title": self.status.canonical_reason().unwrap_or("Error"),
                "message": self.message,
            }}),
            Style::Nova => {
                json!({ nova_fault_name(self.status): {"code": code, "message": self.message} })
            }
            Style::Neutron => json!({"NeutronError": {
                "type": if self.kind.is_empty() { "HTTPError" } else { self.kind },
                "message": self.message,
                "detail": "",
            }}),
        };
        let mut r = (self.status, Json(body)).into_response();
        if code == 401 {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Keystone uri=\"/identity/v3\""),
            );
        }
        r
    }
}

type OsResult<T> = Result<T, OsError>;

/// The one path parameter of a route, or the service's error for one that is not UTF-8.
pub(crate) fn path_param(p: Result<Path<String>, PathRejection>, style: Style) -> OsResult<String> {
    p.map(|Path(s)| s)
        .map_err(|e| OsError::new(style, StatusCode::BAD_REQUEST, e.body_text()))
}

/// Parses a JSON body, naming the field at fault the way Nova's validator does.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8], style: Style) -> OsResult<T> {
    if bytes.is_empty() {
        return Err(OsError::new(
            style,
            StatusCode::BAD_REQUEST,
            "The request body is empty; a JSON object was expected.",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let msg = if inner.is_syntax() || inner.is_eof() {
            format!("Malformed request body: {inner}")
        } else if path.is_empty() || path == "." {
            format!("Invalid input: {inner}")
        } else {
            format!("Invalid input for field/attribute {path}: {inner}")
        };
        OsError::new(style, StatusCode::BAD_REQUEST, msg)
    })
}

/// The token check shared by the compute, image and network services: `X-Auth-Token` must be
/// a project-scoped token this server issued (or the API token itself); an unscoped token
/// opens identity only.
pub(crate) async fn require_token(
    State((os, style)): State<(Shared, Style)>,
    req: Request,
    next: Next,
) -> Response {
    let ok = req
        .headers()
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| os.tokens.validate(t).is_ok_and(|i| i.scoped));
    if ok {
        next.run(req).await
    } else {
        OsError::unauthorized(style).into_response()
    }
}

/// The error style of the service an OpenStack path belongs to.
fn style_of(path: &str) -> Style {
    if path.starts_with("/compute") {
        Style::Nova
    } else if path.starts_with("/network") {
        Style::Neutron
    } else if path.starts_with("/image") {
        Style::Glance
    } else {
        Style::Keystone
    }
}

/// The 401 of the service that `path` belongs to, in its own format.
pub fn unauthorized(path: &str) -> Response {
    OsError::unauthorized(style_of(path)).into_response()
}

/// A link pair (`self`, `bookmark`) as Nova and Glance write them.
pub(crate) fn links(base: &str, service: &str, version: &str, rest: &str) -> Value {
    json!([
        {"rel": "self", "href": format!("{base}/{service}/{version}/{rest}")},
        {"rel": "bookmark", "href": format!("{base}/{service}/{rest}")},
    ])
}

/// Query parameters as (name, value) pairs, percent-decoded.
pub(crate) fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        // Two hex digits make one byte.
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON of a version document list or single version, with status 200.
pub(crate) fn ok_json(v: Value) -> Response {
    (StatusCode::OK, Json(v)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = uuid("server", "vm1");
        assert_eq!(a, uuid("server", "vm1"));
        assert_ne!(a, uuid("server", "vm2"));
        assert_ne!(a, uuid("image", "vm1"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('5'), "{a}");
        assert!("89ab".contains(&parts[3][..1]), "{a}");
        assert_eq!(hex_id("project", "p").len(), 32);
    }

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_796_184_000), "2026-12-02T04:00:00Z");
        assert_eq!(iso8601(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn openstack_paths() {
        for p in ["/identity/v3", "/compute", "/image/v2/images", "/network/"] {
            assert!(is_openstack_path(p), "{p}");
        }
        for p in ["/v1/vms", "/computer", "/images", "/health"] {
            assert!(!is_openstack_path(p), "{p}");
        }
    }

    #[test]
    fn query_strings() {
        assert_eq!(
            query_pairs(Some("name=vm%201&x&status=ACTIVE+x&bad=%zz%4")),
            [
                ("name".to_owned(), "vm 1".to_owned()),
                ("x".to_owned(), String::new()),
                ("status".to_owned(), "ACTIVE x".to_owned()),
                ("bad".to_owned(), "%zz%4".to_owned()),
            ]
        );
    }
}
