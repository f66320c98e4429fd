//! What the fuzz targets share: an in-memory port opener, small switch tables, and a way to
//! drive an axum router with one request at a time.

#![deny(unsafe_code)]

use std::net::Ipv4Addr;

use axum::body::Body;
use http_body_util::BodyExt;
use kangaroo_switch::fdb::FdbConfig;
use kangaroo_switch::port::memory::{self, LinkConfig};
use kangaroo_switch::port::opener::PortOpener;
use kangaroo_switch::port::PortBackend;
use kangaroo_switch::SwitchConfig;
use tower::ServiceExt;

/// Tables small enough to fill: capacity and per-source limits bite within one input.
pub fn small_switch() -> SwitchConfig {
    let mut c = SwitchConfig::default();
    c.fdb = FdbConfig {
        capacity: 64,
        aging: std::time::Duration::from_secs(5),
        max_per_source: 16,
    };
    c.arp.capacity = 32;
    c.arp.aging = std::time::Duration::from_secs(5);
    c.aging_budget = 16;
    c.seed = Some(7);
    c
}

/// Opens every interface name as an in-memory port whose far end is dropped (what the switch
/// sends there is discarded), so the control API can add ports without real interfaces.
pub struct MemoryOpener;

impl PortOpener for MemoryOpener {
    fn mode(&self) -> &'static str {
        "memory"
    }

    fn open(&mut self, interface: &str) -> Result<Box<dyn PortBackend>, String> {
        if interface.starts_with("missing") {
            return Err(format!("no interface {interface}"));
        }
        let (near, _far) = memory::link(
            interface,
            "far",
            LinkConfig {
                ring_size: 16,
                max_frame: 9216,
            },
        );
        Ok(Box::new(near))
    }
}

/// One HTTP request of a fuzz input.
///
/// An input is requests separated by a line `%%`. Each starts with a line
/// `METHOD PATH [noauth|badauth]` and the rest, up to the separator, is its body. Seed files are
/// so readable and writable by hand (`fuzz/seeds/*_api/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as given.
    pub method: String,
    /// The path and query, as given.
    pub path: String,
    /// `None`: the right credentials; `Some(false)`: none; `Some(true)`: wrong ones.
    pub bad_auth: Option<bool>,
    /// The body.
    pub body: Vec<u8>,
}

/// Splits a fuzz input into requests (at most `max`).
pub fn requests(data: &[u8], max: usize) -> Vec<Request> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && out.len() < max {
        let (chunk, next) = match find(rest, b"\n%%\n") {
            Some(i) => (&rest[..i], &rest[i + 4..]),
            None => (rest, &[][..]),
        };
        rest = next;
        let (line, body) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], &chunk[i + 1..]),
            None => (chunk, &[][..]),
        };
        let line = String::from_utf8_lossy(line);
        let mut words = line.split(' ');
        let method = words.next().unwrap_or("GET").to_owned();
        let path = words.next().unwrap_or("/").to_owned();
        let bad_auth = match words.next() {
            Some("noauth") => Some(false),
            Some("badauth") => Some(true),
            _ => None,
        };
        out.push(Request {
            method,
            path,
            bad_auth,
            body: body.to_vec(),
        });
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Request {
    /// The HTTP request, with `auth` as its Authorization header when given; `None` if the
    /// method or path is not valid HTTP (the server never sees such a request).
    pub fn build(&self, auth: Option<&str>) -> Option<axum::http::Request<Body>> {
        let mut b = axum::http::Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str())
            .header("content-type", "application/json");
        if let Some(a) = auth {
            b = b.header("authorization", a);
            // The OpenStack face takes the same token as X-Auth-Token.
            if let Some(t) = a.strip_prefix("Bearer ") {
                b = b.header("x-auth-token", t);
            }
        }
        b.body(Body::from(self.body.clone())).ok()
    }
}

/// Sends `req` through `router` and returns the status and the whole body.
pub async fn call(router: &axum::Router, req: axum::http::Request<Body>) -> (u16, Vec<u8>) {
    let resp = match router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) => panic!("response body failed: {e}"),
    };
    (status, body)
}

/// Asserts that an error answer to `req` is the API's JSON error with a message (a HEAD
/// answer has no body, by HTTP's rules).
pub fn assert_json_error(req: &Request, status: u16, body: &[u8]) {
    if status < 400 || req.method == "HEAD" {
        return;
    }
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => panic!(
            "{req:?}: error body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        ),
    };
    // The OpenStack face answers in each service's format: one member (`error`, Nova's fault
    // name, or `NeutronError`) holding the message.
    let m = if kangaroo_orchestrator::openstack::is_openstack_path(&req.path) {
        v.as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.values().next())
            .and_then(|e| e.get("message"))
    } else {
        v.get("error").and_then(|e| e.get("message"))
    };
    assert!(
        m.is_some_and(|m| m.is_string()),
        "{req:?}: no error message in {v}"
    );
}

/// A current-thread runtime with timers and a blocking pool, as the servers use.
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    }
}

/// A VTEP address in the fuzz underlay.
pub fn vtep(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, i)
}
