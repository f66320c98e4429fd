//! Identity v3: version discovery, password authentication with a project scope, token
//! validation and revocation, and the tenant's one project.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use super::{base_url, hex_id, iso8601, ok_json, OsError, OsResult, Shared, Style};
use crate::service::now_secs;
use crate::token::constant_time_eq;

const ID: Style = Style::Keystone;

/// The domain every tenant's project and user are in.
const DOMAIN_ID: &str = "default";
const DOMAIN_NAME: &str = "Default";

/// Issues and checks signed tokens: `kgo2.<issued>.<expires>.<scope>.<chain>.<nonce>.<mac>`,
/// the MAC an HMAC-SHA256 over the rest keyed from the API token. `scope` is `p` (the project)
/// or `u` (unscoped); `chain` is the nonce of the token a password authentication issued, which
/// every token made from it with the `token` method carries on, with its expiry (as Keystone
/// keeps the original expiry). Nothing is stored but revoked chains, kept in memory until they
/// expire.
pub struct Tokens {
    key: Vec<u8>,
    api_token: String,
    ttl: Duration,
    revoked: Mutex<HashMap<String, u64>>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token this server issued, or tampered with.
    Invalid,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

/// A valid token's times, scope and chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Issued at, seconds since the epoch.
    pub issued: u64,
    /// Expires at.
    pub expires: u64,
    /// Scoped to the tenant's project (else unscoped: identity only).
    pub scoped: bool,
    /// The token's own id for audits (its nonce).
    pub audit: String,
    /// The chain it belongs to: the audit id of the token a password issued (Keystone's
    /// audit chain id); revoking any token of a chain revokes all of it.
    pub chain: String,
}

impl TokenInfo {
    /// The API token's: scoped, never expires, no chain.
    fn api_token() -> TokenInfo {
        TokenInfo {
            issued: 0,
            expires: u64::MAX,
            scoped: true,
            audit: String::new(),
            chain: String::new(),
        }
    }
}

impl Tokens {
    /// Tokens keyed from `api_token`, valid `ttl` each.
    pub fn new(api_token: &str, ttl: Duration) -> Tokens {
        let mut key = b"kangaroo openstack tokens v1\0".to_vec();
        key.extend_from_slice(api_token.as_bytes());
        Tokens {
            key,
            api_token: api_token.to_owned(),
            ttl,
            revoked: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, body: &str) -> String {
        // HMAC accepts a key of any length.
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        m.update(body.as_bytes());
        m.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A new token issued at `now`: for a password authentication (`parent` `None`), a new
    /// chain with the full lifetime; for the `token` method, one of the parent's chain that
    /// expires with it (the API token as the parent starts a new chain).
    pub fn issue_at(
        &self,
        now: u64,
        parent: Option<&TokenInfo>,
        scoped: bool,
    ) -> (String, TokenInfo) {
        let nonce: String = (0..12)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let fresh = now.saturating_add(self.ttl.as_secs());
        let (expires, chain) = match parent {
            Some(p) if !p.chain.is_empty() => (p.expires.min(fresh), p.chain.clone()),
            _ => (fresh, nonce.clone()),
        };
        let scope = if scoped { "p" } else { "u" };
        let body = format!("kgo2.{now}.{expires}.{scope}.{chain}.{nonce}");
        let mac = self.mac(&body);
        (
            format!("{body}.{mac}"),
            TokenInfo {
                issued: now,
                expires,
                scoped,
                audit: nonce,
                chain,
            },
        )
    }

    /// Checks `token` at `now`. The API token itself is accepted too (it never expires).
    pub fn validate_at(&self, token: &str, now: u64) -> Result<TokenInfo, TokenError> {
        if !self.api_token.is_empty()
            && constant_time_eq(token.as_bytes(), self.api_token.as_bytes())
        {
            return Ok(TokenInfo::api_token());
        }
        let (body, mac) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        if !constant_time_eq(mac.as_bytes(), self.mac(body).as_bytes()) {
            return Err(TokenError::Invalid);
        }
        let f: Vec<&str> = body.split('.').collect();
        let ["kgo2", i, e, scope, chain, nonce] = f[..] else {
            return Err(TokenError::Invalid);
        };
        let (Ok(issued), Ok(expires)) = (i.parse::<u64>(), e.parse::<u64>()) else {
            return Err(TokenError::Invalid);
        };
        let scoped = match scope {
            "p" => true,
            "u" => false,
            _ => return Err(TokenError::Invalid),
        };
        if now >= expires {
            return Err(TokenError::Expired);
        }
        if self.revoked_lock().contains_key(chain) {
            return Err(TokenError::Revoked);
        }
        Ok(TokenInfo {
            issued,
            expires,
            scoped,
            audit: nonce.to_owned(),
            chain: chain.to_owned(),
        })
    }

    /// Checks `token` now.
    pub fn validate(&self, token: &str) -> Result<TokenInfo, TokenError> {
        self.validate_at(token, now_secs())
    }

    /// Revokes a valid token and its whole chain: the token a password issued and every token
    /// made from any of them. Every token of a chain expires with it, so the revocation is kept
    /// until then.
    pub fn revoke(&self, token: &str) -> Result<(), TokenError> {
        let now = now_secs();
        let info = self.validate_at(token, now)?;
        if info.chain.is_empty() {
            // The API token is not revocable here; it is rotated by replacing its file.
            return Err(TokenError::Invalid);
        }
        let mut r = self.revoked_lock();
        r.retain(|_, exp| *exp > now);
        r.insert(info.chain, info.expires);
        Ok(())
    }

    fn revoked_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // Plain values: a panic elsewhere cannot leave the map half-updated.
        self.revoked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn routes(os: Shared) -> Router {
    Router::new()
        .route("/identity", get(versions))
        .route("/identity/", get(versions))
        .route("/identity/v3", get(version))
        .route("/identity/v3/", get(version))
        .route(
            "/identity/v3/auth/tokens",
            get(check_token)
                .head(check_token)
                .post(issue_token)
                .delete(revoke_token),
        )
        .route("/identity/v3/auth/catalog", get(catalog))
        .route("/identity/v3/auth/projects", get(projects))
        .route("/identity/v3/projects", get(projects))
        .route("/identity/v3/projects/{id}", get(project))
        .route("/identity/v3/users/{id}/projects", get(projects))
        .route("/identity/v3/{*rest}", get(not_found).post(not_found))
        .with_state(os)
}

fn version_doc(base: &str) -> Value {
    json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{base}/identity/v3/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    })
}

async fn versions(h: HeaderMap) -> Response {
    let v = json!({"versions": {"values": [version_doc(&base_url(&h))]}});
    (StatusCode::MULTIPLE_CHOICES, Json(v)).into_response()
}

async fn version(h: HeaderMap) -> Response {
    ok_json(json!({"version": version_doc(&base_url(&h))}))
}

async fn not_found() -> OsError {
    OsError::new(
        ID,
        StatusCode::NOT_FOUND,
        "Kangaroo's Identity service implements tokens and projects only.",
    )
}

/// `POST /v3/auth/tokens`'s body (unknown members are ignored, as Keystone does).
#[derive(Deserialize)]
struct AuthBody {
    auth: Auth,
}

#[derive(Deserialize)]
struct Auth {
    identity: Identity,
    #[serde(default)]
    scope: Option<Value>,
}

#[derive(Deserialize)]
struct Identity {
    methods: Vec<String>,
    #[serde(default)]
    password: Option<PasswordAuth>,
    #[serde(default)]
    token: Option<TokenAuth>,
}

#[derive(Deserialize)]
struct PasswordAuth {
    user: UserRef,
}

#[derive(Deserialize)]
struct UserRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    domain: Option<DomainRef>,
    password: String,
}

#[derive(Deserialize, Default)]
struct DomainRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct TokenAuth {
    id: String,
}

impl DomainRef {
    fn is_default(&self) -> bool {
        match (&self.id, &self.name) {
            (Some(id), _) => id == DOMAIN_ID,
            (None, Some(n)) => n == DOMAIN_NAME,
            (None, None) => false,
        }
    }
}

fn bad(msg: impl Into<String>) -> OsError {
    OsError::new(ID, StatusCode::BAD_REQUEST, msg)
}

/// Checks the credentials and the scope; the error says what was wrong without telling which
/// part of a credential failed (Keystone's behaviour). With the `token` method alone, the
/// token's: the new token belongs to its chain.
fn authenticate(os: &Shared, a: &Auth) -> OsResult<Option<TokenInfo>> {
    let methods: Vec<&str> = a.identity.methods.iter().map(String::as_str).collect();
    if methods.is_empty() {
        return Err(bad(
            "Expecting to find identity.methods: at least one method.",
        ));
    }
    for m in &methods {
        if *m != "password" && *m != "token" {
            return Err(OsError::new(
                ID,
                StatusCode::UNAUTHORIZED,
                format!("Attempted to authenticate with an unsupported method: {m}."),
            ));
        }
    }
    if methods.contains(&"password") {
        let Some(p) = &a.identity.password else {
            return Err(bad("Expecting to find identity.password in the request."));
        };
        let u = &p.user;
        let user_ok = match (&u.id, &u.name) {
            (Some(id), _) => *id == os.user_id(),
            (None, Some(n)) => {
                *n == os.cfg.project && u.domain.as_ref().is_some_and(DomainRef::is_default)
            }
            (None, None) => {
                return Err(bad("Expecting to find identity.password.user.id or name."));
            }
        };
        if !(user_ok && constant_time_eq(u.password.as_bytes(), os.cfg.password.as_bytes())) {
            return Err(OsError::new(
                ID,
                StatusCode::UNAUTHORIZED,
                "The request you have made requires authentication.",
            ));
        }
    }
    let mut parent = None;
    if methods.contains(&"token") {
        let Some(t) = &a.identity.token else {
            return Err(bad("Expecting to find identity.token in the request."));
        };
        let Ok(info) = os.tokens.validate(&t.id) else {
            return Err(OsError::unauthorized(ID));
        };
        // With a password too, the password makes a new chain.
        if !methods.contains(&"password") {
            parent = Some(info);
        }
    }
    // Scope: the tenant's project (by id, or by name in the Default domain), or none.
    let Some(scope) = &a.scope else {
        return Ok(parent);
    };
    if scope.as_str() == Some("unscoped") {
        return Ok(parent);
    }
    let Some(p) = scope.get("project") else {
        return Err(OsError::new(
            ID,
            StatusCode::UNAUTHORIZED,
            "Only project scopes are supported.",
        ));
    };
    let id = p.get("id").and_then(Value::as_str);
    let name = p.get("name").and_then(Value::as_str);
    let domain: DomainRef = p
        .get("domain")
        .and_then(|d| serde_json::from_value(d.clone()).ok())
        .unwrap_or_default();
    let ok = match (id, name) {
        (Some(id), _) => id == os.project_id(),
        (None, Some(n)) => n == os.cfg.project && domain.is_default(),
        (None, None) => return Err(bad("Expecting to find scope.project.id or name.")),
    };
    if ok {
        Ok(parent)
    } else {
        Err(OsError::new(
            ID,
            StatusCode::UNAUTHORIZED,
            format!(
                "No project {} in this cloud: its one project is {:?} in domain {DOMAIN_NAME}.",
                id.or(name).unwrap_or(""),
                os.cfg.project
            ),
        ))
    }
}

fn token_body(os: &Shared, base: &str, info: &TokenInfo) -> Value {
    let domain = json!({"id": DOMAIN_ID, "name": DOMAIN_NAME});
    let method = if info.audit == info.chain {
        "password"
    } else {
        "token"
    };
    let mut audit_ids = vec![info.audit.clone()];
    if info.chain != info.audit {
        audit_ids.push(info.chain.clone());
    }
    let mut t = json!({
        "methods": [method],
        "user": {"id": os.user_id(), "name": os.cfg.project, "domain": domain, "password_expires_at": null},
        "audit_ids": audit_ids,
        "issued_at": iso8601(info.issued),
        "expires_at": if info.expires == u64::MAX { Value::Null } else { iso8601(info.expires).into() },
    });
    if info.scoped {
        t["project"] = json!({"id": os.project_id(), "name": os.cfg.project, "domain": domain});
        t["roles"] = json!([{"id": hex_id("role", "member"), "name": "member"}, {"id": hex_id("role", "admin"), "name": "admin"}]);
        t["is_domain"] = json!(false);
        t["catalog"] = service_catalog(base);
    }
    json!({ "token": t })
}

fn service_catalog(base: &str) -> Value {
    let entry = |ty: &str, name: &str, url: String| {
        let endpoints: Vec<Value> = ["public", "internal", "admin"]
            .iter()
            .map(|i| {
                json!({
                    "id": hex_id("endpoint", &format!("{ty}/{i}")),
                    "interface": i,
                    "region": "kangaroo",
                    "region_id": "kangaroo",
                    "url": url,
                })
            })
            .collect();
        json!({
            "type": ty,
            "name": name,
            "id": hex_id("service", ty),
            "endpoints": endpoints,
        })
    };
    json!([
        entry("identity", "keystone", format!("{base}/identity/v3")),
        entry("compute", "nova", format!("{base}/compute/v2.1")),
        entry("image", "glance", format!("{base}/image")),
        entry("network", "neutron", format!("{base}/network")),
    ])
}

async fn issue_token(State(os): State<Shared>, h: HeaderMap, b: Bytes) -> OsResult<Response> {
    let body: AuthBody = super::json_body(&b, ID)?;
    let parent = authenticate(&os, &body.auth)?;
    let scoped = body
        .auth
        .scope
        .as_ref()
        .is_some_and(|s| s.get("project").is_some());
    let (token, info) = os.tokens.issue_at(now_secs(), parent.as_ref(), scoped);
    let mut r = (
        StatusCode::CREATED,
        Json(token_body(&os, &base_url(&h), &info)),
    )
        .into_response();
    let v = HeaderValue::from_str(&token)
        .map_err(|e| OsError::new(ID, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    r.headers_mut().insert("x-subject-token", v);
    Ok(r)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn authorized(os: &Shared, h: &HeaderMap) -> OsResult<()> {
    match header(h, "x-auth-token").map(|t| os.tokens.validate(t)) {
        Some(Ok(_)) => Ok(()),
        _ => Err(OsError::unauthorized(ID)),
    }
}

async fn check_token(State(os): State<Shared>, h: HeaderMap) -> OsResult<Response> {
    authorized(&os, &h)?;
    let subject = header(&h, "x-subject-token")
        .ok_or_else(|| bad("Expecting to find X-Subject-Token in the request headers."))?;
    let info = os.tokens.validate(subject).map_err(|e| {
        OsError::new(
            ID,
            StatusCode::NOT_FOUND,
            format!(
                "Could not find token: {}",
                match e {
                    TokenError::Invalid => "not a token of this cloud",
                    TokenError::Expired => "it has expired",
                    TokenError::Revoked => "it has been revoked",
                }
            ),
        )
    })?;
    let mut r = ok_json(token_body(&os, &base_url(&h), &info));
    if let Ok(v) = HeaderValue::from_str(subject) {
        r.headers_mut().insert("x-subject-token", v);
    }
    Ok(r)
}

async fn revoke_token(State(os): State<Shared>, h: HeaderMap) -> OsResult<StatusCode> {
    authorized(&os, &h)?;
    let subject = header(&h, "x-subject-token")
        .ok_or_else(|| bad("Expecting to find X-Subject-Token in the request headers."))?;
    os.tokens
        .revoke(subject)
        .map_err(|_| OsError::new(ID, StatusCode::NOT_FOUND, "Could not find token."))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn catalog(State(os): State<Shared>, h: HeaderMap) -> OsResult<Json<Value>> {
    authorized(&os, &h)?;
    Ok(Json(
        json!({"catalog": service_catalog(&base_url(&h)), "links": {"self": format!("{}/identity/v3/auth/catalog", base_url(&h))}}),
    ))
}

fn project_doc(os: &Shared, base: &str) -> Value {
    let id = os.project_id();
    json!({
        "id": id,
        "name": os.cfg.project,
        "domain_id": DOMAIN_ID,
        "description": "The tenant of this Kangaroo orchestrator",
        "enabled": true,
        "is_domain": false,
        "parent_id": DOMAIN_ID,
        "tags": [],
        "options": {},
        "links": {"self": format!("{base}/identity/v3/projects/{id}")},
    })
}

async fn projects(State(os): State<Shared>, h: HeaderMap) -> OsResult<Json<Value>> {
    authorized(&os, &h)?;
    let base = base_url(&h);
    Ok(Json(json!({
        "projects": [project_doc(&os, &base)],
        "links": {"self": format!("{base}/identity/v3/projects"), "next": null, "previous": null},
    })))
}

async fn project(
    State(os): State<Shared>,
    h: HeaderMap,
    p: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> OsResult<Json<Value>> {
    authorized(&os, &h)?;
    let id = super::path_param(p, ID)?;
    if id != os.project_id() && id != os.cfg.project {
        return Err(OsError::new(
            ID,
            StatusCode::NOT_FOUND,
            format!("Could not find project: {id}."),
        ));
    }
    Ok(Json(json!({"project": project_doc(&os, &base_url(&h))})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_revoke() {
        let t = Tokens::new("secret", Duration::from_secs(60));
        let (tok, info) = t.issue_at(1000, None, true);
        assert_eq!(info.expires, 1060);
        assert_eq!(t.validate_at(&tok, 1059), Ok(info.clone()));
        assert_eq!(t.validate_at(&tok, 1060), Err(TokenError::Expired));
        // Another key, a changed expiry, or a cut token: all invalid.
        let other = Tokens::new("other", Duration::from_secs(60));
        assert_eq!(other.validate_at(&tok, 1001), Err(TokenError::Invalid));
        let forged = tok.replacen(".1060.", ".9999999999.", 1);
        assert_eq!(t.validate_at(&forged, 1001), Err(TokenError::Invalid));
        assert_eq!(t.validate_at("kgo2.1", 1001), Err(TokenError::Invalid));
        let rescoped = tok.replacen(".p.", ".u.", 1);
        assert_eq!(t.validate_at(&rescoped, 1001), Err(TokenError::Invalid));
        // A token from a token: same chain, same expiry, whatever its own lifetime.
        let (child, c) = t.issue_at(1030, Some(&info), false);
        assert_eq!((c.expires, &c.chain, c.scoped), (1060, &info.chain, false));
        assert_eq!(t.validate_at(&child, 1059), Ok(c));
        // From the API token: a new chain.
        let api = t.validate_at("secret", 1030).unwrap();
        let (_, fresh) = t.issue_at(1030, Some(&api), true);
        assert_eq!(fresh.expires, 1090);
        assert_eq!(fresh.chain, fresh.audit);
        assert_eq!(t.validate_at("", 1001), Err(TokenError::Invalid));
        // The API token itself is accepted and never expires.
        assert!(t.validate_at("secret", u64::MAX - 1).is_ok());
        // A token issued now can be revoked; the API token cannot.
        let (live, parent) = t.issue_at(now_secs(), None, true);
        let (child, _) = t.issue_at(now_secs(), Some(&parent), true);
        assert!(t.validate(&live).is_ok());
        t.revoke(&child).unwrap();
        assert_eq!(t.validate(&live), Err(TokenError::Revoked), "the chain");
        assert_eq!(t.validate(&child), Err(TokenError::Revoked));
        assert!(t.revoke("secret").is_err());
    }
}
