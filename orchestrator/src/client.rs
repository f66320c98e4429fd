//! A typed client of the tenant API: the operations of [`crate::api`] with the same request
//! and response types the server uses, for the `kangaroo` CLI and for programs that drive a
//! controller. One request per call, bearer-token authenticated; a refusal carries the API's
//! status, code, message and the field at fault.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{ControllerStatus, ErrorBody, MigrateResult};
use crate::infra::realize::{ConvergeReport, Tunnel};
use crate::model::{Host, NestedVm, Network};
use crate::packing::{Consolidation, Plan};
use crate::service::{
    AppMigrateRequest, AppMigrateResult, ApplyResult, Billing, ClockRequest, HostRequest,
    MigrateRequest, NetworkRequest, Provider, VmRequest, WorkloadRequest,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (nothing listens, or the connection broke).
    #[error("cannot reach the Kangaroo API at {url} (is `kangaroo serve` running?)")]
    Unreachable {
        /// The API's base URL.
        url: String,
        /// Why.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The API refused the request.
    #[error("{status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The API's machine-readable code (`invalid`, `not_found`, `conflict`, …).
        code: String,
        /// Its message.
        message: String,
        /// The request field at fault, when there is one.
        field: Option<String>,
    },
    /// An answer that is not the JSON expected.
    #[error("{method} {path}: an answer that is not the expected JSON")]
    Body {
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A client of one controller.
#[derive(Debug, Clone)]
pub struct ApiClient {
    url: String,
    token: String,
    agent: ureq::Agent,
}

/// `s` as one path segment (everything but unreserved characters percent-encoded), so a name
/// with `/` or `?` cannot reach another route.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ApiClient {
    /// A client of the API at `url` (e.g. `http://127.0.0.1:7878`) with bearer `token`.
    pub fn new(url: &str, token: &str) -> ApiClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        ApiClient {
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            agent,
        }
    }

    /// A client of the API at an `https://` `url` that trusts only the CA in `ca_pem` (the
    /// controller's own, `tls/ca.pem` in its data directory).
    ///
    /// # Errors
    /// If `ca_pem` holds no certificate.
    pub fn with_ca(url: &str, token: &str, ca_pem: &str) -> anyhow::Result<ApiClient> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(crate::tls::ureq_tls(ca_pem)?)
            .build()
            .into();
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            agent,
        })
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.url, path);
        let auth = format!("Bearer {}", self.token);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut resp = sent.map_err(|e| ClientError::Unreachable {
            url: self.url.clone(),
            source: Box::new(e),
        })?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::Unreachable {
                url: self.url.clone(),
                source: Box::new(e),
            })?;
        if !status.is_success() {
            return Err(match serde_json::from_str::<ErrorBody>(&text) {
                Ok(b) => ClientError::Refused {
                    status: status.as_u16(),
                    code: b.error.code,
                    message: b.error.message,
                    field: b.error.field,
                },
                Err(_) => ClientError::Refused {
                    status: status.as_u16(),
                    code: status.canonical_reason().unwrap_or("").to_owned(),
                    message: text.trim().to_owned(),
                    field: None,
                },
            });
        }
        // A 204 carries nothing; `()` reads it from `null`.
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        serde_json::from_str(text).map_err(|source| ClientError::Body {
            method,
            path: path.to_owned(),
            source,
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>("GET", path, None)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call("POST", path, Some(body))
    }

    fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call::<(), ()>("DELETE", path, None)
    }

    /// The providers.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn providers(&self) -> Result<Vec<Provider>, ClientError> {
        self.get("/v1/providers")
    }

    /// The rented hosts.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn hosts(&self) -> Result<Vec<Host>, ClientError> {
        self.get("/v1/hosts")
    }

    /// Rents a host.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn add_host(&self, req: &HostRequest) -> Result<Host, ClientError> {
        self.post("/v1/hosts", req)
    }

    /// Releases a host.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn remove_host(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/hosts/{}", segment(name)))
    }

    /// Revokes the credential of a host's agent.
    ///
    /// # Errors
    /// [`ClientError`] (404 if it has none).
    pub fn revoke_agent(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/hosts/{}/agent", segment(name)))
    }

    /// A host's tunnels to its peers.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn host_tunnels(&self, name: &str) -> Result<Vec<Tunnel>, ClientError> {
        self.get(&format!("/v1/hosts/{}/tunnels", segment(name)))
    }

    /// The networks.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn networks(&self) -> Result<Vec<Network>, ClientError> {
        self.get("/v1/networks")
    }

    /// Creates a network.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn create_network(&self, req: &NetworkRequest) -> Result<Network, ClientError> {
        self.post("/v1/networks", req)
    }

    /// Deletes a network.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn delete_network(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/networks/{}", segment(name)))
    }

    /// The nested VMs.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn vms(&self) -> Result<Vec<NestedVm>, ClientError> {
        self.get("/v1/vms")
    }

    /// One nested VM.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn vm(&self, name: &str) -> Result<NestedVm, ClientError> {
        self.get(&format!("/v1/vms/{}", segment(name)))
    }

    /// Creates (places, and on local hosts boots) a nested VM.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn create_vm(&self, req: &VmRequest) -> Result<NestedVm, ClientError> {
        self.post("/v1/vms", req)
    }

    /// Starts a VM.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn start_vm(&self, name: &str) -> Result<NestedVm, ClientError> {
        self.call::<(), _>("POST", &format!("/v1/vms/{}/start", segment(name)), None)
    }

    /// Stops a VM.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn stop_vm(&self, name: &str) -> Result<NestedVm, ClientError> {
        self.call::<(), _>("POST", &format!("/v1/vms/{}/stop", segment(name)), None)
    }

    /// Deletes a VM.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn delete_vm(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/vms/{}", segment(name)))
    }

    /// Moves a VM to another host.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn migrate_vm(
        &self,
        name: &str,
        req: &MigrateRequest,
    ) -> Result<MigrateResult, ClientError> {
        self.post(&format!("/v1/vms/{}/migrate", segment(name)), req)
    }

    /// Moves a whole application to another provider.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn migrate_app(
        &self,
        app: &str,
        req: &AppMigrateRequest,
    ) -> Result<AppMigrateResult, ClientError> {
        self.post(&format!("/v1/apps/{}/migrate", segment(app)), req)
    }

    /// One reconciler pass now.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn reconcile(&self) -> Result<ConvergeReport, ClientError> {
        self.call::<(), _>("POST", "/v1/reconcile", None)
    }

    /// The plan for a workload (nothing changes).
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn plan(&self, req: &WorkloadRequest) -> Result<Plan, ClientError> {
        self.post("/v1/plans", req)
    }

    /// Applies a workload: rents the planned hosts and creates the VMs.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn apply(&self, req: &WorkloadRequest) -> Result<ApplyResult, ClientError> {
        self.post("/v1/plans/apply", req)
    }

    /// The migrations that would free whole hosts.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn consolidation(&self) -> Result<Consolidation, ClientError> {
        self.get("/v1/consolidation")
    }

    /// What the rented hosts cost.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn billing(&self) -> Result<Billing, ClientError> {
        self.get("/v1/billing")
    }

    /// Advances the simulated billing clock.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn advance_clock(&self, req: &ClockRequest) -> Result<Billing, ClientError> {
        self.post("/v1/billing/clock", req)
    }

    /// This controller's part, its store and revision.
    ///
    /// # Errors
    /// [`ClientError`].
    pub fn controller(&self) -> Result<ControllerStatus, ClientError> {
        self.get("/v1/controller")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_their_segment() {
        assert_eq!(segment("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
