//! The agents' side of the controller's API (`/agent/v1/…`): how an agent on another machine
//! joins, watches its host's desired state and reports, without ever reaching the store.
//!
//! - **Join tokens** are made on the controller (`kangaroo host join-token HOST`): `K1.<CA
//!   fingerprint>.<expiry>.<MAC>.<host>`, the MAC an HMAC-SHA256 keyed from the API token over
//!   the rest, so the controller stores none; a token names one host and expires (1 h by
//!   default). The CA fingerprint lets the agent trust the controller without copying files:
//!   it fetches the CA (`GET /agent/v1/ca`), checks its SHA-256 against the token, and from
//!   then on trusts only that CA (as kubeadm's discovery hash does). `none` stands for a
//!   controller on plain HTTP (loopback).
//! - **Joining** (`POST /agent/v1/join`) with a valid token issues the host's credential, a
//!   random secret of which the state keeps only the SHA-256; a new join replaces it, and
//!   `DELETE /v1/hosts/{name}/agent` (tenant API) revokes it.
//! - **Watching** (`GET /agent/v1/desired?after=REV&wait=SECS`, `Authorization: Agent HOST
//!   SECRET`) answers at once when the state's revision is past `after`, else when it changes
//!   or `wait` (at most 30 s) passes: a long poll that resumes by revision after a lost
//!   connection.
//! - **Reports** (`POST /agent/v1/report`) are the heartbeat: the VMs it runs, its switch's
//!   public key, the revision it applied. A host whose agent stops reporting for the lease is
//!   lost, as with agents on etcd.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::model::{Host, NestedVm, Network};
use crate::service::{AgentReport, Service};

/// Where the agents' routes live.
pub const PREFIX: &str = "/agent/v1";
/// The longest a watch waits for a change.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How long a join token is valid unless said otherwise.
pub const JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Why a join token was refused; the message says which part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Not of the form `K1.<fingerprint>.<expiry>.<mac>.<host>`.
    #[error("not a join token (K1.<CA fingerprint>.<expiry>.<MAC>.<host>)")]
    Malformed,
    /// The MAC does not match: made by another controller, or changed.
    #[error("the join token was not made by this controller (or was changed)")]
    Forged,
    /// Past its expiry.
    #[error("the join token expired; make a new one with `kangaroo host join-token {0}`")]
    Expired(String),
    /// Made for another host.
    #[error("the join token is for host {token}, not {asked}")]
    OtherHost {
        /// The host the token names.
        token: String,
        /// The host that tried to join with it.
        asked: String,
    },
    /// No such host in the state.
    #[error("no host named {0}: add it first (kangaroo host add … --name {0})")]
    NoHost(String),
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The CA's fingerprint (`sha256:…`), or `None` for a controller on plain HTTP.
    pub fingerprint: Option<String>,
    /// Expiry, seconds since the epoch.
    pub expires: u64,
    /// The host it lets join.
    pub host: String,
    mac: String,
}

fn join_key(api_token: &str) -> Vec<u8> {
    let mut key = b"kangaroo join tokens v1\0".to_vec();
    key.extend_from_slice(api_token.as_bytes());
    key
}

fn join_mac(api_token: &str, fingerprint: &str, expires: u64, host: &str) -> String {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&join_key(api_token)) else {
        return String::new();
    };
    m.update(format!("{fingerprint}|{expires}|{host}").as_bytes());
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A join token for `host`, valid until `expires`, naming the CA `fingerprint`.
pub fn mint_join_token(
    api_token: &str,
    fingerprint: Option<&str>,
    host: &str,
    expires: u64,
) -> String {
    let fp = fingerprint.unwrap_or("none");
    let mac = join_mac(api_token, fp, expires, host);
    format!("K1.{fp}.{expires}.{mac}.{host}")
}

impl JoinToken {
    /// Parses `s` (nothing is checked but its form).
    ///
    /// # Errors
    /// [`JoinError::Malformed`].
    pub fn parse(s: &str) -> Result<JoinToken, JoinError> {
        let mut f = s.trim().splitn(5, '.');
        let (Some("K1"), Some(fp), Some(exp), Some(mac), Some(host)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(JoinError::Malformed);
        };
        let expires = exp.parse().map_err(|_| JoinError::Malformed)?;
        let fingerprint = match fp {
            "none" => None,
            f if f.starts_with("sha256:") && f.len() == 71 => Some(f.to_owned()),
            _ => return Err(JoinError::Malformed),
        };
        if host.is_empty() || mac.len() != 64 {
            return Err(JoinError::Malformed);
        }
        Ok(JoinToken {
            fingerprint,
            expires,
            host: host.to_owned(),
            mac: mac.to_owned(),
        })
    }

    /// Checks the token against the controller's API token at `now` for `host`.
    ///
    /// # Errors
    /// Which check failed.
    pub fn verify(&self, api_token: &str, host: &str, now: u64) -> Result<(), JoinError> {
        let fp = self.fingerprint.as_deref().unwrap_or("none");
        let want = join_mac(api_token, fp, self.expires, &self.host);
        if !crate::token::constant_time_eq(want.as_bytes(), self.mac.as_bytes()) {
            return Err(JoinError::Forged);
        }
        if now >= self.expires {
            return Err(JoinError::Expired(self.host.clone()));
        }
        if self.host != host {
            return Err(JoinError::OtherHost {
                token: self.host.clone(),
                asked: host.to_owned(),
            });
        }
        Ok(())
    }
}

/// `POST /agent/v1/join`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The host joining.
    pub host: String,
    /// Its join token.
    pub token: String,
}

/// The answer to a join: the host's credential (keep it private; it is not shown again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The secret the agent authenticates with from now on.
    pub credential: String,
}

/// What a watch answers: the state at `revision`, as the agent needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Desired {
    /// The state's revision.
    pub revision: u64,
    /// Every host (an agent's switch peers with the others).
    pub hosts: Vec<Host>,
    /// Every network.
    pub networks: Vec<Network>,
    /// Every VM (those on other hosts for the FDB, its own to run).
    pub vms: Vec<NestedVm>,
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait: u64,
}

#[derive(Clone)]
struct AgentApi {
    service: Arc<Service>,
    api_token: Arc<str>,
    ca_pem: Option<Arc<str>>,
}

/// The agents' routes, with their own authentication (join tokens, host credentials; never the
/// tenant's token).
pub fn routes(service: Arc<Service>, api_token: &str, ca_pem: Option<Arc<str>>) -> Router {
    let a = AgentApi {
        service,
        api_token: Arc::from(api_token),
        ca_pem,
    };
    Router::new()
        .route(&format!("{PREFIX}/ca"), get(ca))
        .route(&format!("{PREFIX}/join"), post(join))
        .route(&format!("{PREFIX}/desired"), get(desired))
        .route(&format!("{PREFIX}/report"), post(report))
        .with_state(a)
}

/// An error in the API's JSON form.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"error": {"status": status.as_u16(), "code": code, "message": message.to_string()}});
    (status, Json(body)).into_response()
}

async fn ca(State(a): State<AgentApi>) -> Response {
    match a.ca_pem {
        Some(pem) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pem.to_string(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this controller serves plain HTTP: it has no CA",
        ),
    }
}

async fn join(State(a): State<AgentApi>, b: Bytes) -> Response {
    let req: JoinRequest = match serde_json::from_slice(&b) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid", format!("body: {e}")),
    };
    let token = match JoinToken::parse(&req.token) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::UNAUTHORIZED, "unauthorized", e),
    };
    let now = crate::service::now_secs();
    if let Err(e) = token.verify(&a.api_token, &req.host, now) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", e);
    }
    let s = a.service.clone();
    let host = req.host.clone();
    match tokio::task::spawn_blocking(move || s.issue_agent_credential(&host)).await {
        Ok(Ok(credential)) => Json(JoinResponse { credential }).into_response(),
        Ok(Err(crate::service::ServiceError::NotFound { .. })) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            JoinError::NoHost(req.host),
        ),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

/// The host an `Authorization: Agent HOST SECRET` header authenticates.
fn authenticated(a: &AgentApi, h: &HeaderMap) -> Result<String, Box<Response>> {
    let refuse = |m: &str| Box::new(error(StatusCode::UNAUTHORIZED, "unauthorized", m));
    let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(refuse(
            "no credential: send Authorization: Agent HOST SECRET (from the host's join)",
        ));
    };
    let Some((host, secret)) = v.strip_prefix("Agent ").and_then(|r| r.split_once(' ')) else {
        return Err(refuse(
            "the credential is not of the form Agent HOST SECRET",
        ));
    };
    if a.service.check_agent_credential(host, secret) {
        Ok(host.to_owned())
    } else {
        Err(refuse(&format!(
            "not the credential of host {host} (revoked, replaced by a later join, or never issued): join again with a new token"
        )))
    }
}

async fn desired(State(a): State<AgentApi>, h: HeaderMap, q: Query<WatchQuery>) -> Response {
    if let Err(r) = authenticated(&a, &h) {
        return *r;
    }
    let wait = Duration::from_secs(q.wait).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    while a.service.revision() <= q.after && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revision = a.service.revision();
    let state = a.service.snapshot();
    Json(Desired {
        revision,
        hosts: state.hosts.into_values().collect(),
        networks: state.networks.into_values().collect(),
        vms: state.vms.into_values().collect(),
    })
    .into_response()
}

async fn report(State(a): State<AgentApi>, h: HeaderMap, b: Bytes) -> Response {
    let host = match authenticated(&a, &h) {
        Ok(host) => host,
        Err(r) => return *r,
    };
    let r: AgentReport = match serde_json::from_slice(&b) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid", format!("body: {e}")),
    };
    a.service.agent_reported(&host, &r);
    StatusCode::NO_CONTENT.into_response()
}

/// An agent's client of the controller's API.
pub struct AgentClient {
    url: String,
    host: String,
    credential: Option<String>,
    agent: ureq::Agent,
}

/// Why an agent's request failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// The controller answered with an error.
    #[error("the controller answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The controller's CA is not the one the join token names.
    #[error("the controller's CA is {got}, the join token names {want}: this is not the controller that made the token (or the token is for another one)")]
    WrongCa {
        /// The fingerprint the token names.
        want: String,
        /// The fingerprint of the CA the controller served.
        got: String,
    },
    /// The controller could not be reached, or answered something else.
    #[error("{0}")]
    Transport(String),
}

fn transport(e: impl std::fmt::Display) -> AgentClientError {
    AgentClientError::Transport(e.to_string())
}

impl AgentClient {
    fn with_agent(url: &str, host: &str, agent: ureq::Agent) -> AgentClient {
        AgentClient {
            url: url.trim_end_matches('/').to_owned(),
            host: host.to_owned(),
            credential: None,
            agent,
        }
    }

    /// A client of the controller at `url` for `host`, trusting the CA in `ca_pem` (for an
    /// `https://` URL) and authenticating with `credential`.
    ///
    /// # Errors
    /// If `ca_pem` holds no certificate.
    pub fn new(
        url: &str,
        host: &str,
        ca_pem: Option<&str>,
        credential: &str,
    ) -> Result<AgentClient, AgentClientError> {
        let mut cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(MAX_WAIT + Duration::from_secs(15)));
        if let Some(pem) = ca_pem {
            cfg = cfg.tls_config(crate::tls::ureq_tls(pem).map_err(transport)?);
        }
        let mut c = AgentClient::with_agent(url, host, cfg.build().into());
        c.credential = Some(credential.to_owned());
        Ok(c)
    }

    /// Joins the controller at `url` as `host` with the join token `token`: fetches and checks
    /// the controller's CA against the token's fingerprint (for `https://`), then asks for a
    /// credential. Returns the client, the CA (PEM) it now trusts, and the credential.
    ///
    /// # Errors
    /// A malformed token, a CA other than the token's, or the controller's refusal (a
    /// forged, expired or other host's token), each with its message.
    pub fn join(
        url: &str,
        host: &str,
        token: &str,
    ) -> Result<(AgentClient, Option<String>, String), AgentClientError> {
        let t = JoinToken::parse(token).map_err(|e| AgentClientError::Refused {
            status: 0,
            message: e.to_string(),
        })?;
        let ca_pem = if url.starts_with("https://") {
            let Some(want) = t.fingerprint.clone() else {
                return Err(transport(
                    "the join token names no CA (its controller serves plain HTTP) but the URL is https://",
                ));
            };
            // Discovery: the CA is fetched without trusting anything, and believed only if
            // its hash is the token's.
            let blind: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(15)))
                .tls_config(
                    ureq::tls::TlsConfig::builder()
                        .disable_verification(true)
                        .build(),
                )
                .build()
                .into();
            let mut r = blind
                .get(&format!("{}{PREFIX}/ca", url.trim_end_matches('/')))
                .call()
                .map_err(transport)?;
            let pem = r.body_mut().read_to_string().map_err(transport)?;
            let got = crate::tls::pem_fingerprint(&pem)
                .map_err(|e| transport(format!("the controller's CA: {e:#}")))?;
            if got != want {
                return Err(AgentClientError::WrongCa { want, got });
            }
            Some(pem)
        } else {
            None
        };
        let mut c = AgentClient::new(url, host, ca_pem.as_deref(), "")?;
        c.credential = None;
        let body = serde_json::to_vec(&JoinRequest {
            host: host.to_owned(),
            token: token.to_owned(),
        })
        .map_err(transport)?;
        let r: JoinResponse = c.call("POST", "/join", Some(body))?;
        c.credential = Some(r.credential.clone());
        Ok((c, ca_pem, r.credential))
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AgentClientError> {
        let (status, text) = self.send(method, path, body)?;
        serde_json::from_str(&text).map_err(|e| transport(format!("{status}: {e}: {text}")))
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String), AgentClientError> {
        let mut b = axum::http::Request::builder()
            .method(method)
            .uri(format!("{}{PREFIX}{path}", self.url))
            .header("content-type", "application/json");
        if let Some(c) = &self.credential {
            b = b.header("authorization", format!("Agent {} {c}", self.host));
        }
        let req = b.body(body.unwrap_or_default()).map_err(transport)?;
        let mut resp = self.agent.run(req).map_err(transport)?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(transport)?;
        if status >= 400 {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(AgentClientError::Refused { status, message });
        }
        Ok((status, text))
    }

    /// The desired state once its revision is past `after`, waiting up to `wait`.
    ///
    /// # Errors
    /// The controller refused (a revoked credential) or could not be reached.
    pub fn desired(&self, after: u64, wait: Duration) -> Result<Desired, AgentClientError> {
        self.call(
            "GET",
            &format!("/desired?after={after}&wait={}", wait.as_secs()),
            None,
        )
    }

    /// Sends a heartbeat.
    ///
    /// # Errors
    /// The controller refused (a revoked credential) or could not be reached.
    pub fn report(&self, r: &AgentReport) -> Result<(), AgentClientError> {
        let body = serde_json::to_vec(r).map_err(transport)?;
        self.send("POST", "/report", Some(body)).map(|_| ())
    }
}

/// How often an agent reports (its heartbeat).
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Runs an agent against the controller until `stop` is set: watches the desired state (long
/// polls that resume by revision), hands each new one to `apply`, which makes it so on this
/// machine and returns what it observes, and reports that every [`REPORT_EVERY`]. While the
/// controller cannot be reached the agent keeps what runs and retries; it catches up when the
/// controller is back.
///
/// # Errors
/// The controller refused the credential (revoked, or replaced by a later join): the agent
/// must not go on.
pub fn run_agent(
    client: &AgentClient,
    stop: &std::sync::atomic::AtomicBool,
    mut apply: impl FnMut(&Desired) -> AgentReport,
) -> Result<(), AgentClientError> {
    use std::sync::atomic::Ordering;
    let last = std::sync::Mutex::new(AgentReport::default());
    let refused: std::sync::Mutex<Option<AgentClientError>> = std::sync::Mutex::new(None);
    let lock =
        |m: &std::sync::Mutex<AgentReport>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
    std::thread::scope(|scope| {
        // Heartbeats go on while a watch waits.
        scope.spawn(|| {
            let mut down = false;
            while !stop.load(Ordering::SeqCst) {
                match client.report(&lock(&last)) {
                    Ok(()) if down => {
                        eprintln!(
                            "kangaroo agent {}: the controller answers again",
                            client.host
                        );
                        down = false;
                    }
                    Ok(()) => {}
                    Err(e @ AgentClientError::Refused { status: 401, .. }) => {
                        *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        stop.store(true, Ordering::SeqCst);
                    }
                    Err(e) => {
                        if !down {
                            eprintln!(
                                "kangaroo agent {}: reporting: {e}; what runs keeps running",
                                client.host
                            );
                        }
                        down = true;
                    }
                }
                std::thread::sleep(REPORT_EVERY);
            }
        });
        let mut revision = 0;
        while !stop.load(Ordering::SeqCst) {
            match client.desired(revision, Duration::from_secs(10)) {
                Ok(d) => {
                    if d.revision != revision {
                        let mut r = apply(&d);
                        r.revision = d.revision;
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = r;
                        revision = d.revision;
                    }
                }
                Err(e @ AgentClientError::Refused { status: 401, .. }) => {
                    *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    stop.store(true, Ordering::SeqCst);
                }
                Err(_) => std::thread::sleep(REPORT_EVERY),
            }
        }
    });
    match refused.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_name_one_host_expire_and_cannot_be_forged() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        let t = mint_join_token("secret-api-token", Some(&fp), "h-1", 1000);
        let p = JoinToken::parse(&t).unwrap();
        assert_eq!(
            (p.fingerprint.as_deref(), p.expires, p.host.as_str()),
            (Some(fp.as_str()), 1000, "h-1")
        );
        assert_eq!(p.verify("secret-api-token", "h-1", 999), Ok(()));
        assert_eq!(
            p.verify("secret-api-token", "h-1", 1000),
            Err(JoinError::Expired("h-1".into()))
        );
        assert!(matches!(
            p.verify("secret-api-token", "h-2", 999),
            Err(JoinError::OtherHost { .. })
        ));
        assert_eq!(
            p.verify("another-token", "h-1", 999),
            Err(JoinError::Forged)
        );
        // Changing the host, the expiry or the fingerprint breaks the MAC.
        for forged in [
            t.replace(".h-1", ".h-2"),
            t.replace(".1000.", ".9999."),
            t.replace(&fp, &format!("sha256:{}", "cd".repeat(32))),
        ] {
            let f = JoinToken::parse(&forged).unwrap();
            assert_eq!(
                f.verify("secret-api-token", &f.host.clone(), 999),
                Err(JoinError::Forged),
                "{forged}"
            );
        }
        for bad in [
            "",
            "K1",
            "K2.none.1.aa.h",
            "K1.none.x.aa.h",
            "K1.md5:00.1.aa.h",
        ] {
            assert_eq!(JoinToken::parse(bad), Err(JoinError::Malformed), "{bad}");
        }
        let plain = mint_join_token("secret-api-token", None, "h-1", 1000);
        assert_eq!(JoinToken::parse(&plain).unwrap().fingerprint, None);
    }
}
