//! The tenant API over HTTP: every endpoint, every error path, authentication, and the OpenAPI
//! document against the routes actually served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::mpsc;

use kangaroo_orchestrator::packing::PackOptions;
use kangaroo_orchestrator::server::{self, ServeConfig};
use serde_json::{json, Value};

struct Server {
    addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    token: String,
    agent: ureq::Agent,
    _dir: tempfile::TempDir,
}

fn start() -> Server {
    start_with(server::OpenStackSettings::default())
}

fn start_with(openstack: server::OpenStackSettings) -> Server {
    start_cfg(openstack, Default::default(), false)
}

fn start_cfg(
    openstack: server::OpenStackSettings,
    http: kangaroo_orchestrator::http::HttpLimits,
    tls: bool,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServeConfig {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        providers: vec![
            ("sim".into(), "ec2-2026".into()),
            ("old".into(), "ec2-2014".into()),
        ],
        options: PackOptions::default(),
        local: server::LocalSettings::default(),
        openstack,
        store: server::StoreChoice::Embedded,
        advertise: None,
        lease: std::time::Duration::from_secs(5),
        on_host_lost: Default::default(),
        local_agents: false,
        http,
        plain_http_off_loopback: false,
        tls_on_loopback: tls,
        tls_names: Vec::new(),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(server::serve(cfg, move |a| tx.send(a).unwrap()))
            .unwrap();
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("server started");
    let token = kangaroo_orchestrator::token::load_or_create(dir.path()).unwrap();
    // A fresh connection per request: the server may close a connection after refusing a
    // request whose body it did not read, and a pooled one would then fail the next request.
    let mut agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        // Keystone's version list answers 300 Multiple Choices; it is not a redirect to follow.
        .max_redirects(0);
    if tls {
        let ca = std::fs::read_to_string(kangaroo_orchestrator::tls::ca_path(dir.path())).unwrap();
        agent = agent.tls_config(kangaroo_orchestrator::tls::ureq_tls(&ca).unwrap());
    }
    let agent: ureq::Agent = agent.build().into();
    Server {
        scheme: if tls { "https" } else { "http" },
        addr,
        token,
        agent,
        _dir: dir,
    }
}

impl Server {
    /// Runs the `kangaroo` CLI against this server (its URL and data directory).
    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_kangaroo"))
            .args([
                "--url",
                &format!("{}://{}", self.scheme, self.addr),
                "--data-dir",
            ])
            .arg(self._dir.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn req(&self, method: &str, path: &str, body: Option<Value>, auth: bool) -> (u16, Value) {
        let url = format!("{}://{}{}", self.scheme, self.addr, path);
        let bearer = format!("Bearer {}", self.token);
        let resp = match method {
            "GET" => {
                let r = self.agent.get(&url);
                if auth {
                    r.header("Authorization", &bearer).call()
                } else {
                    r.call()
                }
            }
            "DELETE" => {
                let r = self.agent.delete(&url);
                if auth {
                    r.header("Authorization", &bearer).call()
                } else {
                    r.call()
                }
            }
            _ => {
                let r = self.agent.post(&url);
                let r = if auth {
                    r.header("Authorization", &bearer)
                } else {
                    r
                };
                match body {
                    Some(b) => r.send_json(b),
                    None => r.send_empty(),
                }
            }
        };
        let mut resp = resp.unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    fn get(&self, p: &str) -> (u16, Value) {
        self.req("GET", p, None, true)
    }
    fn post(&self, p: &str, b: Value) -> (u16, Value) {
        self.req("POST", p, Some(b), true)
    }
    fn delete(&self, p: &str) -> (u16, Value) {
        self.req("DELETE", p, None, true)
    }
    fn raw_post(&self, p: &str, body: &str) -> (u16, Value) {
        let url = format!("{}://{}{}", self.scheme, self.addr, p);
        let mut r = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn err(v: &Value) -> (&str, &str) {
    (
        v["error"]["code"].as_str().unwrap_or("?"),
        v["error"]["message"].as_str().unwrap_or("?"),
    )
}

const WORKLOAD: &str = r#"
catalog = "ec2-2026"
[[vm]]
name = "app"
count = 4
vcpus = 0.5
memory = "512MiB"
network = "blue"
"#;

#[test]
fn every_endpoint_works() {
    let s = start();
    assert_eq!(s.req("GET", "/health", None, false).0, 200);
    let (st, v) = s.get("/v1/providers");
    assert_eq!(st, 200);
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["name"], "sim");
    assert_eq!(s.get("/v1/catalogs").1, json!(["ec2-2014", "ec2-2026"]));
    let (st, v) = s.get("/v1/catalogs/ec2-2014");
    assert_eq!((st, v.as_array().unwrap().len()), (200, 9));

    let (st, n) = s.post(
        "/v1/networks",
        json!({"name": "blue", "vni": 100, "subnet": "192.168.10.0/24"}),
    );
    assert_eq!((st, n["vni"].as_u64()), (200, Some(100)));
    assert_eq!(s.get("/v1/networks").1.as_array().unwrap().len(), 1);

    let (st, h) = s.post(
        "/v1/hosts",
        json!({"instance_type": "m5.xlarge", "name": "big"}),
    );
    assert_eq!((st, h["name"].as_str()), (200, Some("big")));
    let (st, h2) = s.post(
        "/v1/hosts",
        json!({"instance_type": "m3.large", "provider": "old"}),
    );
    assert_eq!((st, h2["provider"].as_str()), (200, Some("old")));
    assert_eq!(s.get("/v1/hosts").1.as_array().unwrap().len(), 2);

    // Placement prefers the existing host with room.
    let (st, vm) = s.post(
        "/v1/vms",
        json!({"name": "web", "vcpus": 1, "memory": "2GiB", "network": "blue", "affinity": "shop"}),
    );
    assert_eq!(st, 200, "{vm}");
    assert_eq!(vm["ip"], "192.168.10.2");
    assert_eq!(vm["state"], "running");
    let placed_on = vm["host"].as_str().unwrap().to_owned();
    let (st, db) = s.post(
        "/v1/vms",
        json!({"name": "db", "vcpus": 1, "memory": "2GiB", "network": "blue", "affinity": "shop"}),
    );
    assert_eq!(st, 200);
    assert_eq!(
        db["host"].as_str(),
        Some(placed_on.as_str()),
        "affinity keeps the group together"
    );
    assert_eq!(db["ip"], "192.168.10.3");
    assert_eq!(s.get("/v1/vms/web").1["name"], "web");
    assert_eq!(s.get("/v1/vms").1.as_array().unwrap().len(), 2);
    assert_eq!(
        s.req("POST", "/v1/vms/web/stop", None, true).1["state"],
        "stopped"
    );
    assert_eq!(
        s.req("POST", "/v1/vms/web/start", None, true).1["state"],
        "running"
    );
    let other = if placed_on == "big" {
        h2["name"].as_str().unwrap().to_owned()
    } else {
        "big".to_owned()
    };
    let (st, m) = s.post("/v1/vms/web/migrate", json!({"to": other}));
    assert_eq!((st, m["host"].as_str()), (200, Some(other.as_str())));

    let (st, plan) = s.post("/v1/plans", json!({"workload": WORKLOAD}));
    assert_eq!(st, 200, "{plan}");
    assert!(
        plan["cost_per_hour"].as_f64().unwrap() <= plan["baseline_cost_per_hour"].as_f64().unwrap()
    );
    let (st, applied) = s.post("/v1/plans/apply", json!({"workload": WORKLOAD}));
    assert_eq!(st, 200, "{applied}");
    assert_eq!(applied["created"].as_array().unwrap().len(), 4);
    let (st, again) = s.post("/v1/plans/apply", json!({"workload": WORKLOAD}));
    assert_eq!(
        (st, again["existing"].as_array().unwrap().len()),
        (200, 4),
        "apply is idempotent"
    );
    assert_eq!(s.get("/v1/vms").1.as_array().unwrap().len(), 6);

    let (st, c) = s.get("/v1/consolidation");
    assert_eq!(st, 200);
    assert!(c["cost_after"].as_f64().unwrap() <= c["cost_before"].as_f64().unwrap());
    let (st, b) = s.post("/v1/billing/clock", json!({"advance_secs": 3600}));
    assert_eq!(st, 200);
    let hourly = b["cost_per_hour"].as_f64().unwrap();
    assert!(
        (b["accrued"].as_f64().unwrap() - hourly).abs() < 1e-9,
        "one hour accrues one hour's cost: {b}"
    );
    assert_eq!(s.get("/v1/billing").1["clock_secs"], 3600);

    assert_eq!(s.delete("/v1/vms/db").0, 204);
    assert_eq!(s.get("/v1/vms/db").0, 404);
    let empty = s.post("/v1/hosts", json!({"instance_type": "t3.micro"})).1["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.delete(&format!("/v1/hosts/{empty}")).0, 204);
    let (st, _) = s.post(
        "/v1/networks",
        json!({"name": "tmp", "vni": 7, "subnet": "10.7.0.0/24"}),
    );
    assert_eq!(st, 200);
    assert_eq!(s.delete("/v1/networks/tmp").0, 204);
}

/// Method, path, body, expected status, text the message must contain, field it must name.
type ErrorCase = (
    &'static str,
    &'static str,
    Value,
    u16,
    &'static str,
    Option<&'static str>,
);

#[test]
fn every_error_path_names_the_problem() {
    let s = start();
    s.post(
        "/v1/networks",
        json!({"name": "blue", "vni": 100, "subnet": "192.168.10.0/24"}),
    );
    s.post(
        "/v1/hosts",
        json!({"instance_type": "t3.small", "name": "small"}),
    );
    let cases: Vec<ErrorCase> = vec![
        (
            "GET",
            "/v1/hosts/small/tunnels",
            json!(null),
            409,
            "simulated",
            None,
        ),
        (
            "GET",
            "/v1/hosts/nope/tunnels",
            json!(null),
            404,
            "no host named nope",
            None,
        ),
        (
            "POST",
            "/v1/networks",
            json!({"name": "x", "vni": 1, "subnet": "10.0.0.0/24", "colour": 1}),
            400,
            "unknown field",
            Some("colour"),
        ),
        (
            "POST",
            "/v1/networks",
            json!({"name": "x", "vni": 1}),
            400,
            "missing field",
            Some("subnet"),
        ),
        (
            "POST",
            "/v1/networks",
            json!({"name": "x", "vni": 0, "subnet": "10.0.0.0/24"}),
            400,
            "VNI",
            Some("vni"),
        ),
        (
            "POST",
            "/v1/networks",
            json!({"name": "x", "vni": 5, "subnet": "10.0.0.0"}),
            400,
            "subnet",
            Some("subnet"),
        ),
        (
            "POST",
            "/v1/networks",
            json!({"name": "X!", "vni": 5, "subnet": "10.0.0.0/24"}),
            400,
            "invalid name",
            Some("name"),
        ),
        (
            "POST",
            "/v1/networks",
            json!({"name": "blue", "vni": 5, "subnet": "10.0.0.0/24"}),
            409,
            "already exists",
            None,
        ),
        (
            "POST",
            "/v1/networks",
            json!({"name": "green", "vni": 100, "subnet": "10.0.0.0/24"}),
            409,
            "VNI 100",
            None,
        ),
        (
            "POST",
            "/v1/hosts",
            json!({"instance_type": "z9.huge"}),
            400,
            "not in catalog",
            Some("instance_type"),
        ),
        (
            "POST",
            "/v1/hosts",
            json!({"instance_type": "t3.micro", "provider": "nope"}),
            404,
            "provider",
            None,
        ),
        (
            "POST",
            "/v1/hosts",
            json!({"instance_type": "t3.micro", "name": "small"}),
            409,
            "already exists",
            None,
        ),
        (
            "POST",
            "/v1/vms",
            json!({"name": "a", "vcpus": 0.3, "memory": "1GiB", "network": "blue"}),
            400,
            "vcpus",
            Some("vcpus"),
        ),
        (
            "POST",
            "/v1/vms",
            json!({"name": "a", "vcpus": 1, "memory": "1GB", "network": "blue"}),
            400,
            "memory",
            Some("memory"),
        ),
        (
            "POST",
            "/v1/vms",
            json!({"name": "a", "vcpus": 1, "memory": "100MiB", "network": "blue"}),
            400,
            "256 MiB",
            Some("memory"),
        ),
        (
            "POST",
            "/v1/vms",
            json!({"name": "a", "vcpus": 1, "memory": "1GiB", "network": "red"}),
            400,
            "no network",
            Some("network"),
        ),
        (
            "POST",
            "/v1/vms",
            json!({"name": "a", "vcpus": 1, "memory": "1GiB", "network": "blue", "host": "nope"}),
            404,
            "host",
            None,
        ),
        (
            "POST",
            "/v1/vms",
            json!({"name": "a", "vcpus": 8, "memory": "1GiB", "network": "blue", "host": "small"}),
            409,
            "free",
            None,
        ),
        (
            "POST",
            "/v1/vms",
            json!({"name": "a", "vcpus": 1000, "memory": "1GiB", "network": "blue"}),
            409,
            "fits no instance type",
            None,
        ),
        ("GET", "/v1/vms/nope", Value::Null, 404, "no VM", None),
        ("DELETE", "/v1/vms/nope", Value::Null, 404, "no VM", None),
        (
            "POST",
            "/v1/vms/nope/start",
            Value::Null,
            404,
            "no VM",
            None,
        ),
        ("POST", "/v1/vms/nope/stop", Value::Null, 404, "no VM", None),
        (
            "POST",
            "/v1/vms/nope/migrate",
            json!({"to": "small"}),
            404,
            "no VM",
            None,
        ),
        (
            "DELETE",
            "/v1/hosts/nope",
            Value::Null,
            404,
            "no host",
            None,
        ),
        (
            "DELETE",
            "/v1/networks/nope",
            Value::Null,
            404,
            "no network",
            None,
        ),
        (
            "GET",
            "/v1/catalogs/nope",
            Value::Null,
            404,
            "catalog",
            None,
        ),
        (
            "POST",
            "/v1/plans",
            json!({"workload": "catalog = 'ec2-2026'\n[[vm]]\nname='a'\nvcpus=0.3\nmemory='1GiB'\n"}),
            400,
            "vm[0] (a): vcpus",
            Some("workload"),
        ),
        (
            "POST",
            "/v1/plans",
            json!({"workload": "catalog = 'nope'\n[[vm]]\nname='a'\nvcpus=1\nmemory='1GiB'\n"}),
            400,
            "not a built-in catalog",
            Some("workload"),
        ),
        (
            "POST",
            "/v1/plans/apply",
            json!({"workload": "not toml ["}),
            400,
            "workload",
            Some("workload"),
        ),
        (
            "POST",
            "/v1/billing/clock",
            json!({"advance_secs": -1}),
            400,
            "invalid value",
            Some("advance_secs"),
        ),
        (
            "GET",
            "/v1/nothing-here",
            Value::Null,
            404,
            "no such route",
            None,
        ),
    ];
    for (m, p, b, status, needle, field) in cases {
        let body = if b.is_null() { None } else { Some(b.clone()) };
        let (st, v) = s.req(m, p, body, true);
        let (_, msg) = err(&v);
        assert_eq!(st, status, "{m} {p} {b}: {v}");
        assert!(
            msg.contains(needle),
            "{m} {p}: message {msg:?} should mention {needle:?}"
        );
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{m} {p}: {v}");
        }
    }
    // Malformed JSON.
    let (st, v) = s.raw_post("/v1/vms", "{not json");
    assert_eq!((st, err(&v).0), (400, "invalid"));
    // Conflicts that need state.
    assert_eq!(s.post("/v1/vms", json!({"name": "w1", "vcpus": 0.5, "memory": "512MiB", "network": "blue", "host": "small", "anti_affinity": "spread"})).0, 200);
    assert_eq!(
        s.post(
            "/v1/vms",
            json!({"name": "w1", "vcpus": 0.5, "memory": "512MiB", "network": "blue"})
        )
        .0,
        409
    );
    let (st, v) = s.post("/v1/vms", json!({"name": "w2", "vcpus": 0.5, "memory": "512MiB", "network": "blue", "host": "small", "anti_affinity": "spread"}));
    assert_eq!(st, 409);
    assert!(err(&v).1.contains("anti-affinity"), "{v}");
    let (st, v) = s.post("/v1/vms/w1/migrate", json!({"to": "small"}));
    assert_eq!(st, 409, "{v}");
    let (st, v) = s.delete("/v1/hosts/small");
    assert!(st == 409 && err(&v).1.contains("w1"), "{v}");
    let (st, v) = s.delete("/v1/networks/blue");
    assert!(st == 409 && err(&v).1.contains("w1"), "{v}");
}

/// Clients that open connections and send nothing, or half a request, hold them no longer than
/// the header deadline, and beyond the connection limit clients wait instead of using up the
/// controller's file descriptors; the API answers throughout. (With `axum::serve`, which has
/// no timer, the header deadline never fired: such connections stayed open for good.)
#[test]
fn idle_and_slow_connections_are_closed_and_the_api_keeps_answering() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let s = start_cfg(
        server::OpenStackSettings::default(),
        kangaroo_orchestrator::http::HttpLimits {
            max_connections: 8,
            header_timeout: Duration::from_secs(1),
        },
        false,
    );
    let mut idle: Vec<std::net::TcpStream> = (0..8)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(s.addr).unwrap();
            if i % 2 == 0 {
                c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
            }
            c
        })
        .collect();
    // Every slot is taken: a ninth client waits until the deadline closed the idle ones.
    let t = Instant::now();
    let mut ninth = std::net::TcpStream::connect(s.addr).unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    ninth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = ninth.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "no answer within 5 s while idle connections held every slot: {answer:?}"
    );
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    for (i, c) in idle.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("idle connection {i} still open after 3 s more: {e}"),
        }
    }
    // Connections that do send get their answers, one after the other, through the limit.
    for _ in 0..20 {
        assert_eq!(s.req("GET", "/health", None, false).0, 200);
    }
}

/// With TLS the API answers HTTPS only, with a certificate from the controller's own CA: a
/// client that trusts that CA (the CLI reads it from the data directory) gets through, one
/// that trusts only the public roots or another CA does not, and plain HTTP gets no answer.
#[test]
fn the_api_serves_https_with_the_controllers_own_ca() {
    use std::io::{Read, Write};
    let s = start_cfg(
        server::OpenStackSettings::default(),
        Default::default(),
        true,
    );
    let ca = kangaroo_orchestrator::tls::ca_path(s._dir.path());
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let url = format!("https://{}", s.addr);
    let client =
        kangaroo_orchestrator::client::ApiClient::with_ca(&url, &s.token, &ca_pem).unwrap();
    assert!(client.vms().unwrap().is_empty());

    // The public roots do not vouch for it; nor does another controller's CA.
    let public: ureq::Agent = ureq::Agent::config_builder().build().into();
    let e = public.get(&format!("{url}/health")).call().unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    let other = kangaroo_orchestrator::tls::Authority::generate_pem().unwrap();
    let other = kangaroo_orchestrator::client::ApiClient::with_ca(&url, &s.token, &other).unwrap();
    assert!(other.vms().is_err());

    // Plain HTTP on the TLS port: no HTTP answer.
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // The CLI takes the CA from the data directory, or --ca-file; a wrong one is named.
    let cli = |args: &[&str]| s.cli(args);
    let o = cli(&["vm", "ls", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wrong = s._dir.path().join("other-ca.pem");
    std::fs::write(
        &wrong,
        kangaroo_orchestrator::tls::Authority::generate_pem().unwrap(),
    )
    .unwrap();
    let o = cli(&["--ca-file", wrong.to_str().unwrap(), "vm", "ls"]);
    assert!(!o.status.success());
    let missing = cli(&["--ca-file", "/nonexistent/ca.pem", "vm", "ls"]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

/// An agent on another machine joins with a join token that names the controller's CA,
/// watches its host's desired state through the API (a long poll by revision), reports, and is
/// refused once its credential is revoked; wrong tokens and a wrong CA are refused, each with a
/// message that says which.
#[test]
fn agents_join_with_a_token_watch_through_the_api_and_can_be_revoked() {
    use kangaroo_orchestrator::agentapi::{mint_join_token, AgentClient, AgentClientError};
    use kangaroo_orchestrator::service::AgentReport;
    use std::time::{Duration, Instant};
    let s = start_cfg(
        server::OpenStackSettings::default(),
        Default::default(),
        true,
    );
    let url = format!("https://{}", s.addr);
    let data = s._dir.path().to_owned();
    let cli = |args: &[&str]| s.cli(args);
    let (st, _) = s.req(
        "POST",
        "/v1/hosts",
        Some(json!({"instance_type": "m5.large", "name": "h1"})),
        true,
    );
    assert_eq!(st, 200);
    let o = cli(&["host", "join-token", "h1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    let ca = std::fs::read_to_string(kangaroo_orchestrator::tls::ca_path(&data)).unwrap();
    let fp = kangaroo_orchestrator::tls::pem_fingerprint(&ca).unwrap();
    assert!(token.starts_with(&format!("K1.{fp}.")), "{token}");

    // Refusals, each saying which part was wrong.
    let refused = |host: &str, t: &str| match AgentClient::join(&url, host, t) {
        Ok(_) => panic!("{host} joined with {t}"),
        Err(e) => e.to_string(),
    };
    let e = refused("h2", &token);
    assert!(e.contains("for host h1, not h2"), "{e}");
    let forged = token.replace(".h1", ".h2");
    let e = refused("h2", &forged);
    assert!(e.contains("not made by this controller"), "{e}");
    let other_ca = format!("sha256:{}", "00".repeat(32));
    let api_token = s.token.clone();
    let e = refused(
        "h1",
        &mint_join_token(&api_token, Some(&other_ca), "h1", u64::MAX / 2),
    );
    assert!(
        e.contains(&other_ca) && e.contains(&fp),
        "the CA mismatch names both: {e}"
    );
    let e = refused("h1", &mint_join_token(&api_token, Some(&fp), "h1", 1000));
    assert!(e.contains("expired"), "{e}");
    let e = refused("h1", "K1.nonsense");
    assert!(e.contains("not a join token"), "{e}");

    // The join: a credential, and a client that trusts the CA it checked.
    let (agent, ca_seen, _cred) = AgentClient::join(&url, "h1", &token).unwrap();
    assert_eq!(ca_seen.as_deref(), Some(ca.as_str()));
    let d = agent.desired(0, Duration::from_secs(1)).unwrap();
    assert!(d.hosts.iter().any(|h| h.name.as_str() == "h1"));
    // A long poll answers when the state changes, not at its end.
    let rev = d.revision;
    let t = Instant::now();
    let waiter = std::thread::spawn(move || {
        let d = agent.desired(rev, Duration::from_secs(20)).unwrap();
        (agent, d, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let (st, v) = s.req(
        "POST",
        "/v1/networks",
        Some(json!({"name": "n1", "vni": 7, "subnet": "10.9.0.0/24"})),
        true,
    );
    assert_eq!(st, 200, "{v}");
    let (agent, d, took) = waiter.join().unwrap();
    assert!(d.revision > rev && d.networks.iter().any(|n| n.name.as_str() == "n1"));
    assert!(
        took < Duration::from_secs(5),
        "the watch answered after {took:?}"
    );

    // Reports make the host an agent's; no reports for the lease (5 s here) make it lost.
    agent
        .report(&AgentReport {
            public_key: Some("key-of-h1".into()),
            ..AgentReport::default()
        })
        .unwrap();
    let host_field = |f: &str| {
        let (_, v) = s.req("GET", "/v1/hosts", None, true);
        v.as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == "h1")
            .unwrap()[f]
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while host_field("public_key") != "key-of-h1" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(host_field("public_key"), "key-of-h1");
    assert_eq!(host_field("agent"), true);
    let deadline = Instant::now() + Duration::from_secs(12);
    while host_field("state") != "lost" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(host_field("state"), "lost", "silent past the lease");
    agent.report(&AgentReport::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while host_field("state") != "running" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(host_field("state"), "running", "back when it reports again");

    // No credential, or a revoked one: refused.
    let stranger = AgentClient::new(&url, "h1", Some(&ca), "0".repeat(64).as_str()).unwrap();
    assert!(matches!(
        stranger.desired(0, Duration::from_secs(0)),
        Err(AgentClientError::Refused { status: 401, .. })
    ));
    let o = cli(&["host", "revoke", "h1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    match agent.desired(0, Duration::from_secs(0)) {
        Err(AgentClientError::Refused {
            status: 401,
            message,
        }) => {
            assert!(message.contains("revoked"), "{message}")
        }
        other => panic!("a revoked credential was taken: {other:?}"),
    }
    assert!(agent.report(&AgentReport::default()).is_err());
    // The agent binary: joins with a new token, reports; exits with a message when revoked.
    let o = cli(&["host", "join-token", "h1"]);
    let token_file = data.join("join-token");
    std::fs::write(&token_file, &o.stdout).unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kangaroo"))
        .args(["--data-dir"])
        .arg(agent_dir.path())
        .args([
            "agent",
            "--controller",
            &url,
            "--host",
            "h1",
            "--join-token-file",
        ])
        .arg(&token_file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent_dir.path().join("agent/credential").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(agent_dir.path().join("agent/credential"))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(cli(&["host", "revoke", "h1"]).status.code(), Some(0));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent went on with a revoked credential");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("joined") && err.contains("revoked"), "{err}");
}

#[test]
fn requests_without_the_token_are_rejected() {
    let s = start();
    let (_, doc) = s.get("/openapi.json");
    let paths = doc["paths"].as_object().unwrap();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{name}", "x").replace("{app}", "x");
            let m = method.to_uppercase();
            let (st, v) = s.req(&m, &concrete, Some(json!({})), false);
            if path == "/health" {
                assert_eq!(st, 200);
            } else {
                assert_eq!((st, err(&v).0), (401, "unauthorized"), "{m} {path}");
            }
        }
    }
    assert_eq!(s.req("GET", "/openapi.json", None, false).0, 401);
    // A wrong token is no better.
    let url = format!("http://{}/v1/vms", s.addr);
    let r = s
        .agent
        .get(&url)
        .header("Authorization", "Bearer nope")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[test]
fn the_openapi_document_matches_the_routes() {
    let s = start();
    let (st, doc) = s.get("/openapi.json");
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents its responses"
            );
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = [
        ("GET", "/health"),
        ("GET", "/v1/controller"),
        ("GET", "/v1/providers"),
        ("GET", "/v1/catalogs"),
        ("GET", "/v1/catalogs/{name}"),
        ("GET", "/v1/hosts"),
        ("POST", "/v1/hosts"),
        ("DELETE", "/v1/hosts/{name}"),
        ("GET", "/v1/hosts/{name}/tunnels"),
        ("DELETE", "/v1/hosts/{name}/agent"),
        ("GET", "/v1/networks"),
        ("POST", "/v1/networks"),
        ("DELETE", "/v1/networks/{name}"),
        ("GET", "/v1/vms"),
        ("POST", "/v1/vms"),
        ("GET", "/v1/vms/{name}"),
        ("DELETE", "/v1/vms/{name}"),
        ("POST", "/v1/vms/{name}/start"),
        ("POST", "/v1/vms/{name}/stop"),
        ("POST", "/v1/vms/{name}/migrate"),
        ("POST", "/v1/plans"),
        ("POST", "/v1/plans/apply"),
        ("GET", "/v1/consolidation"),
        ("GET", "/v1/billing"),
        ("POST", "/v1/billing/clock"),
        ("POST", "/v1/reconcile"),
        ("POST", "/v1/apps/{app}/migrate"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    expected.sort();
    assert_eq!(documented, expected);
    // Every documented operation is served: nothing answers 405 or falls through to "no such route".
    for (m, p) in &documented {
        let (st, v) = s.req(
            m,
            &p.replace("{name}", "x").replace("{app}", "x"),
            Some(json!({})),
            true,
        );
        assert_ne!(st, 405, "{m} {p}");
        assert!(
            !(st == 404 && err(&v).1 == "no such route"),
            "{m} {p} is documented but not routed"
        );
    }
    // And every referenced schema exists.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for part in text.split("#/components/schemas/").skip(1) {
        let name: String = part.chars().take_while(|c| *c != '"').collect();
        assert!(
            schemas.contains_key(&name),
            "schema {name} is referenced but not defined"
        );
    }
}

/// Found by the `tenant_api` fuzz target: a method no route has was answered 405 with an empty
/// body instead of the API's JSON error.
#[test]
fn fuzz_tenant_api_unknown_method_answers_json_405() {
    use std::io::{Read, Write};
    let s = start();
    for (method, route) in [("DELDTE", "/v1/vms"), ("PUT", "/v1/hosts")] {
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        write!(
            c,
            "{method} {route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            s.token
        )
        .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 405"), "{method} {route}: {head}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(method),
            "{v}"
        );
    }
}

/// The same class of finding as the switch's control API (its `control_api` fuzz target): a
/// path segment that is not UTF-8 is answered with the API's JSON error, not plain text.
#[test]
fn fuzz_tenant_api_bad_path_parameter_answers_json_400() {
    let s = start();
    for route in ["/v1/vms/%FF%FE", "/v1/hosts/%C3%28", "/v1/catalogs/%FF"] {
        let method = if route.starts_with("/v1/hosts") {
            "DELETE"
        } else {
            "GET"
        };
        let (st, v) = s.req(method, route, None, true);
        assert_eq!(st, 400, "{route}: {v}");
        assert_eq!(v["error"]["code"], "invalid", "{route}: {v}");
        assert_eq!(v["error"]["field"], "path", "{route}: {v}");
    }
}

/// One OpenStack response: status, the headers asked for, and the JSON body.
struct OsResp {
    status: u16,
    headers: std::collections::HashMap<String, String>,
    body: Value,
}

impl Server {
    /// A request to the OpenStack face with `headers` (no bearer token).
    fn os(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> OsResp {
        let url = format!("{}://{}{}", self.scheme, self.addr, path);
        let resp = match (method, body) {
            ("GET", _) | ("DELETE", _) => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            (_, b) => {
                let mut r = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                r = r.header("Content-Type", "application/json");
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send(b.unwrap_or(""))
            }
        };
        let mut resp = resp.unwrap();
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let text = resp.body_mut().read_to_string().unwrap();
        OsResp {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    /// A project-scoped token for the tenant.
    fn os_token(&self) -> String {
        let r = self.os(
            "POST",
            "/identity/v3/auth/tokens",
            &[],
            Some(&auth_body("kangaroo", &self.token, "kangaroo")),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.headers["x-subject-token"].clone()
    }
}

fn auth_body(user: &str, password: &str, project: &str) -> String {
    json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
    }})
    .to_string()
}

fn token_auth_body(token: &str, scoped: bool) -> String {
    let mut b = json!({"auth": {"identity": {"methods": ["token"], "token": {"id": token}}}});
    if scoped {
        b["auth"]["scope"] =
            json!({"project": {"name": "kangaroo", "domain": {"name": "Default"}}});
    }
    b.to_string()
}

/// A token from the `token` method keeps its parent's expiry (a stolen token cannot be renewed
/// forever), revoking any token of a chain revokes the chain, and the scope is bound into the
/// token: an unscoped token opens no service.
#[test]
fn openstack_tokens_from_tokens_keep_the_expiry_die_with_the_chain_and_carry_their_scope() {
    let s = start();
    let parent = s.os(
        "POST",
        "/identity/v3/auth/tokens",
        &[],
        Some(&auth_body("kangaroo", &s.token, "kangaroo")),
    );
    assert_eq!(parent.status, 201);
    let parent_token = parent.headers["x-subject-token"].clone();
    // A second later, so a fresh lifetime would end later than the parent's.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let child = s.os(
        "POST",
        "/identity/v3/auth/tokens",
        &[],
        Some(&token_auth_body(&parent_token, true)),
    );
    assert_eq!(child.status, 201, "{}", child.body);
    assert_eq!(
        child.body["token"]["expires_at"], parent.body["token"]["expires_at"],
        "a token renewed from a token expires with it"
    );
    let child_token = child.headers["x-subject-token"].clone();
    let grandchild = s.os(
        "POST",
        "/identity/v3/auth/tokens",
        &[],
        Some(&token_auth_body(&child_token, true)),
    );
    assert_eq!(grandchild.status, 201);
    let grandchild_token = grandchild.headers["x-subject-token"].clone();
    let servers = |t: &str| {
        s.os("GET", "/compute/v2.1/servers", &[("X-Auth-Token", t)], None)
            .status
    };
    assert_eq!(servers(&grandchild_token), 200);

    // Revoking the parent revokes what was made from it.
    let r = s.os(
        "DELETE",
        "/identity/v3/auth/tokens",
        &[
            ("X-Auth-Token", &s.os_token()),
            ("X-Subject-Token", &parent_token),
        ],
        None,
    );
    assert_eq!(r.status, 204);
    for t in [&parent_token, &child_token, &grandchild_token] {
        assert_eq!(
            servers(t),
            401,
            "a token of a revoked chain still opens compute"
        );
    }
    let r = s.os(
        "POST",
        "/identity/v3/auth/tokens",
        &[],
        Some(&token_auth_body(&child_token, true)),
    );
    assert_eq!(r.status, 401, "a revoked chain renews nothing");

    // An unscoped token opens identity only; scoping it to the project (token method) opens
    // the services.
    let unscoped = s.os(
        "POST",
        "/identity/v3/auth/tokens",
        &[],
        Some(
            &json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "kangaroo", "domain": {"name": "Default"}, "password": s.token}}}}})
                .to_string(),
        ),
    );
    assert_eq!(unscoped.status, 201);
    assert!(unscoped.body["token"].get("project").is_none());
    let unscoped_token = unscoped.headers["x-subject-token"].clone();
    assert_eq!(
        servers(&unscoped_token),
        401,
        "an unscoped token opened compute"
    );
    let r = s.os(
        "GET",
        "/identity/v3/auth/tokens",
        &[
            ("X-Auth-Token", &unscoped_token),
            ("X-Subject-Token", &unscoped_token),
        ],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body["token"].get("project").is_none(),
        "validating an unscoped token shows no project: {}",
        r.body
    );
    let scoped = s.os(
        "POST",
        "/identity/v3/auth/tokens",
        &[],
        Some(&token_auth_body(&unscoped_token, true)),
    );
    assert_eq!(scoped.status, 201);
    assert_eq!(scoped.body["token"]["project"]["name"], "kangaroo");
    assert_eq!(servers(&scoped.headers["x-subject-token"]), 200);
}

#[test]
fn openstack_identity_issues_checks_and_revokes_tokens() {
    let s = start();
    // Discovery needs no token.
    let r = s.os("GET", "/identity", &[], None);
    assert_eq!(r.status, 300);
    assert_eq!(r.body["versions"]["values"][0]["id"], "v3.14");
    let r = s.os("GET", "/identity/v3", &[], None);
    let host = format!("http://{}", s.addr);
    assert_eq!(
        r.body["version"]["links"][0]["href"],
        format!("{host}/identity/v3/")
    );

    // Wrong password, user, project or scope: 401 in Keystone's format.
    for body in [
        auth_body("kangaroo", "wrong", "kangaroo"),
        auth_body("someone", &s.token, "kangaroo"),
        auth_body("kangaroo", &s.token, "other"),
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "kangaroo", "domain": {"name": "Default"}, "password": s.token}}}, "scope": {"system": {"all": true}}}}).to_string(),
        json!({"auth": {"identity": {"methods": ["totp"]}}}).to_string(),
    ] {
        let r = s.os("POST", "/identity/v3/auth/tokens", &[], Some(&body));
        assert_eq!(r.status, 401, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["code"], 401);
        assert_eq!(r.body["error"]["title"], "Unauthorized");
        assert!(!r.headers.contains_key("x-subject-token"));
    }
    let r = s.os("POST", "/identity/v3/auth/tokens", &[], Some("{\"auth\": "));
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Malformed"),
        "{}",
        r.body
    );

    // The right ones: a token, and a catalog of the four services at the address asked.
    let r = s.os(
        "POST",
        "/identity/v3/auth/tokens",
        &[],
        Some(&auth_body("kangaroo", &s.token, "kangaroo")),
    );
    assert_eq!(r.status, 201);
    let token = r.headers["x-subject-token"].clone();
    let t = &r.body["token"];
    assert_eq!(t["project"]["name"], "kangaroo");
    assert_eq!(t["user"]["domain"]["id"], "default");
    assert!(t["expires_at"].as_str().unwrap().ends_with('Z'));
    let mut types: Vec<(String, String)> = t["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["endpoints"][0]["url"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            ("compute".to_owned(), format!("{host}/compute/v2.1")),
            ("identity".to_owned(), format!("{host}/identity/v3")),
            ("image".to_owned(), format!("{host}/image")),
            ("network".to_owned(), format!("{host}/network")),
        ]
    );

    // Validation, then revocation: a revoked token opens nothing.
    let r = s.os(
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &token), ("X-Subject-Token", &token)],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body["token"]["project"]["name"], "kangaroo");
    assert_eq!(
        s.os(
            "GET",
            "/compute/v2.1/servers",
            &[("X-Auth-Token", &token)],
            None
        )
        .status,
        200
    );
    let other = s.os_token();
    let r = s.os(
        "DELETE",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &other), ("X-Subject-Token", &token)],
        None,
    );
    assert_eq!(r.status, 204);
    let r = s.os(
        "GET",
        "/compute/v2.1/servers",
        &[("X-Auth-Token", &token)],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], 401);
    assert!(r.headers["www-authenticate"].starts_with("Keystone uri="));
    let r = s.os(
        "GET",
        "/identity/v3/auth/tokens",
        &[("X-Auth-Token", &other), ("X-Subject-Token", &token)],
        None,
    );
    assert_eq!(r.status, 404);
    // Every service refuses a missing or forged token.
    for p in [
        "/compute/v2.1/flavors",
        "/image/v2/images",
        "/network/v2.0/networks",
        "/identity/v3/projects",
    ] {
        assert_eq!(s.os("GET", p, &[], None).status, 401, "{p}");
        // The same token with its MAC's last digit changed.
        let last = if other.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{last}", &other[..other.len() - 1]);
        assert_eq!(
            s.os("GET", p, &[("X-Auth-Token", &forged)], None).status,
            401,
            "{p}"
        );
    }
    let r = s.os(
        "GET",
        "/identity/v3/projects",
        &[("X-Auth-Token", &other)],
        None,
    );
    assert_eq!(r.body["projects"][0]["name"], "kangaroo");
}

#[test]
fn openstack_compute_speaks_microversions_and_nova_faults() {
    let s = start();
    let tok = s.os_token();
    let t = ("X-Auth-Token", tok.as_str());
    let (st, _) = s.post(
        "/v1/networks",
        json!({"name": "blue", "vni": 100, "subnet": "192.168.10.0/24"}),
    );
    assert_eq!(st, 200);
    let create = |name: &str, extra: Value| {
        let mut server = json!({"name": name, "flavorRef": "m1.small", "imageRef": "busybox", "networks": [{"uuid": "blue"}]});
        if let (Some(o), Value::Object(e)) = (server.as_object_mut(), extra) {
            o.extend(e);
        }
        s.os(
            "POST",
            "/compute/v2.1/servers",
            &[t],
            Some(&json!({"server": server}).to_string()),
        )
    };
    let r = create("vm1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_owned();
    assert!(r.headers["location"].ends_with(&id));
    // The native API sees the same VM.
    let (_, vm) = s.get("/v1/vms/vm1");
    assert_eq!(
        (vm["memory_mib"].as_u64(), vm["cpu_quarters"].as_u64()),
        (Some(512), Some(4))
    );

    // Microversions: 2.1 by default, up to 2.30, echoed with Vary; fields appear with theirs.
    let path = format!("/compute/v2.1/servers/{id}");
    let r = s.os("GET", &path, &[t], None);
    assert_eq!(r.headers["openstack-api-version"], "compute 2.1");
    assert_eq!(r.headers["x-openstack-nova-api-version"], "2.1");
    assert!(r.headers["vary"].contains("OpenStack-API-Version"));
    assert_eq!(r.body["server"]["status"], "ACTIVE");
    assert!(r.body["server"].get("locked").is_none());
    let r = s.os(
        "GET",
        &path,
        &[t, ("OpenStack-API-Version", "compute 2.30")],
        None,
    );
    assert_eq!(r.headers["openstack-api-version"], "compute 2.30");
    for f in [
        "locked",
        "description",
        "tags",
        "host_status",
        "OS-EXT-SRV-ATTR:hostname",
    ] {
        assert!(r.body["server"].get(f).is_some(), "{f} at 2.30");
    }
    let r = s.os(
        "GET",
        &path,
        &[t, ("X-OpenStack-Nova-API-Version", "latest")],
        None,
    );
    assert_eq!(r.headers["x-openstack-nova-api-version"], "2.30");
    let r = s.os(
        "GET",
        &path,
        &[t, ("OpenStack-API-Version", "compute 2.31")],
        None,
    );
    assert_eq!(r.status, 406);
    assert!(r.body["computeFault"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum is 2.30"));
    let r = s.os("GET", "/compute/v2.1", &[], None);
    assert_eq!(
        (
            r.body["version"]["version"].as_str(),
            r.body["version"]["min_version"].as_str()
        ),
        (Some("2.30"), Some("2.1"))
    );
    // By name as well as by id.
    assert_eq!(
        s.os("GET", "/compute/v2.1/servers/vm1", &[t], None).body["server"]["id"],
        id
    );

    // Faults, each in Nova's shape: {"<name>": {"code", "message"}}.
    let fault = |r: &OsResp, name: &str, code: u16, needle: &str| {
        assert_eq!(r.status, code, "{}", r.body);
        assert_eq!(r.body[name]["code"], code, "{}", r.body);
        let m = r.body[name]["message"].as_str().unwrap_or("");
        assert!(m.contains(needle), "{needle:?} in {m:?}");
    };
    fault(
        &create("x", json!({"flavorRef": "m9.huge"})),
        "badRequest",
        400,
        "Flavor m9.huge could not be found",
    );
    fault(
        &create("x", json!({"imageRef": "windows"})),
        "badRequest",
        400,
        "Image windows could not be found",
    );
    fault(
        &create("x", json!({"networks": [{"uuid": "red"}]})),
        "badRequest",
        400,
        "Network red could not be found",
    );
    fault(
        &create(
            "x",
            json!({"networks": [{"uuid": "blue"}, {"uuid": "blue"}]}),
        ),
        "badRequest",
        400,
        "one network",
    );
    fault(
        &create("x", json!({"key_name": "mine"})),
        "badRequest",
        400,
        "key_name is not supported",
    );
    fault(
        &create("x", json!({"min_count": 2})),
        "badRequest",
        400,
        "min_count must be 1",
    );
    fault(
        &create("x", json!({"colour": "red"})),
        "badRequest",
        400,
        "'colour' was unexpected",
    );
    fault(
        &create("x", json!({"availability_zone": "mars"})),
        "badRequest",
        400,
        "availability zone is not available: mars",
    );
    fault(
        &create("Bad Name", json!({})),
        "badRequest",
        400,
        "invalid name",
    );
    fault(
        &create("vm1", json!({})),
        "conflictingRequest",
        409,
        "exists",
    );
    fault(
        &create("huge", json!({"flavorRef": "kg-4096q-65536"})),
        "conflictingRequest",
        409,
        "No valid host was found",
    );
    let action = |body: &str| s.os("POST", &format!("{path}/action"), &[t], Some(body));
    let act25 = |body: &str| {
        s.os(
            "POST",
            &format!("{path}/action"),
            &[t, ("OpenStack-API-Version", "compute 2.25")],
            Some(body),
        )
    };
    fault(
        &action(r#"{"os-start": null}"#),
        "conflictingRequest",
        409,
        "vm_state active",
    );
    fault(
        &action(r#"{"fly": null}"#),
        "badRequest",
        400,
        "There is no such action: fly",
    );
    fault(
        &action(r#"{"resize": {"flavorRef": "m1.large"}}"#),
        "notImplemented",
        501,
        "resize",
    );
    fault(
        &action(r#"{"os-stop": null, "os-start": null}"#),
        "badRequest",
        400,
        "exactly one",
    );
    fault(
        &action(r#"{"os-migrateLive": {"host": null, "block_migration": "auto"}}"#),
        "badRequest",
        400,
        "block_migration",
    );
    fault(
        &act25(
            r#"{"os-migrateLive": {"host": null, "block_migration": "auto", "disk_over_commit": false}}"#,
        ),
        "badRequest",
        400,
        "disk_over_commit",
    );
    fault(
        &act25(r#"{"os-migrateLive": {"host": "nowhere", "block_migration": "auto"}}"#),
        "badRequest",
        400,
        "Compute host nowhere could not be found",
    );
    fault(
        &s.os("GET", "/compute/v2.1/servers/nope", &[t], None),
        "itemNotFound",
        404,
        "Instance nope could not be found",
    );
    fault(
        &s.os("PUT", &path, &[t], Some(r#"{"server": {"name": "y"}}"#)),
        "notImplemented",
        501,
        "cannot update",
    );
    fault(
        &s.os("GET", "/compute/v2.1/os-keypairs", &[t], None),
        "itemNotFound",
        404,
        "does not implement",
    );
    fault(
        &s.os("DELETE", "/compute/v2.1/flavors", &[t], None),
        "badMethod",
        405,
        "not allowed",
    );
    fault(
        &s.os("POST", "/compute/v2.1/servers", &[t], Some("{")),
        "badRequest",
        400,
        "Malformed",
    );
    fault(
        &s.os("GET", "/compute/v2.1/servers/detail?name=(", &[t], None),
        "badRequest",
        400,
        "Invalid name filter",
    );

    // Stop, start and a live migration (sim hosts: the record moves) through actions.
    assert_eq!(action(r#"{"os-stop": null}"#).status, 202);
    assert_eq!(
        s.os("GET", &path, &[t], None).body["server"]["status"],
        "SHUTOFF"
    );
    fault(
        &act25(r#"{"os-migrateLive": {"host": null, "block_migration": "auto"}}"#),
        "conflictingRequest",
        409,
        "vm_state stopped",
    );
    assert_eq!(action(r#"{"reboot": {"type": "HARD"}}"#).status, 202);
    assert_eq!(s.get("/v1/vms/vm1").1["state"], "running");
    let (st, h) = s.post(
        "/v1/hosts",
        json!({"instance_type": "m5.large", "name": "other"}),
    );
    assert_eq!(st, 200, "{h}");
    assert_eq!(
        act25(r#"{"os-migrateLive": {"host": "other", "block_migration": "auto"}}"#).status,
        202
    );
    assert_eq!(s.get("/v1/vms/vm1").1["host"], "other");
    let home = s.os("GET", &path, &[t], None).body["server"]["OS-EXT-SRV-ATTR:host"].clone();
    assert_eq!(home, "other");

    // Lists: filters by name (a regular expression), status, limit and marker.
    assert_eq!(create("vm2", json!({})).status, 202);
    assert_eq!(
        create("web", json!({"availability_zone": "old"})).status,
        202
    );
    let list = |q: &str| -> Vec<String> {
        let r = s.os(
            "GET",
            &format!("/compute/v2.1/servers/detail{q}"),
            &[t],
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut all = list("");
    all.sort();
    assert_eq!(all, ["vm1", "vm2", "web"]);
    let mut vms = list("?name=%5Evm");
    vms.sort();
    assert_eq!(vms, ["vm1", "vm2"]);
    assert_eq!(list("?status=SHUTOFF"), Vec::<String>::new());
    let first = list("?limit=1");
    assert_eq!(first.len(), 1);
    assert_eq!(list(&format!("?marker={}", first[0])).len(), 2);
    let web = s.os("GET", "/compute/v2.1/servers/web", &[t], None);
    assert_eq!(web.body["server"]["OS-EXT-AZ:availability_zone"], "old");

    // Hypervisors and zones reflect the rented hosts and the providers.
    let hv = s.os("GET", "/compute/v2.1/os-hypervisors/detail", &[t], None);
    let used: u64 = hv.body["hypervisors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["memory_mb_used"].as_u64().unwrap())
        .sum();
    assert_eq!(used, 3 * 512);
    let stats = s.os("GET", "/compute/v2.1/os-hypervisors/statistics", &[t], None);
    assert_eq!(stats.body["hypervisor_statistics"]["running_vms"], 3);
    let az = s.os(
        "GET",
        "/compute/v2.1/os-availability-zone/detail",
        &[t],
        None,
    );
    let zones: Vec<&str> = az.body["availabilityZoneInfo"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["zoneName"].as_str().unwrap())
        .collect();
    assert_eq!(zones, ["sim", "old"]);

    assert_eq!(s.os("DELETE", &path, &[t], None).status, 204);
    assert_eq!(s.os("GET", &path, &[t], None).status, 404);
    assert_eq!(s.get("/v1/vms/vm1").0, 404);
}

#[test]
fn openstack_images_and_networks_are_read_only_views() {
    let s = start();
    let tok = s.os_token();
    let t = ("X-Auth-Token", tok.as_str());
    s.post(
        "/v1/networks",
        json!({"name": "blue", "vni": 100, "subnet": "192.168.10.0/24"}),
    );
    s.post(
        "/v1/networks",
        json!({"name": "red", "vni": 200, "subnet": "10.1.0.0/16"}),
    );
    let r = s.os("GET", "/network/v2.0/networks?name=blue", &[t], None);
    let nets = r.body["networks"].as_array().unwrap();
    assert_eq!(nets.len(), 1);
    let blue = &nets[0];
    assert_eq!(
        (
            blue["provider:segmentation_id"].as_u64(),
            blue["mtu"].as_u64()
        ),
        (Some(100), Some(1450))
    );
    let id = blue["id"].as_str().unwrap();
    assert_eq!(
        s.os("GET", &format!("/network/v2.0/networks/{id}"), &[t], None)
            .body["network"]["name"],
        "blue"
    );
    let r = s.os(
        "GET",
        "/network/v2.0/networks?fields=name&fields=id",
        &[t],
        None,
    );
    assert_eq!(r.body["networks"].as_array().unwrap().len(), 2);
    assert_eq!(
        r.body["networks"][0].as_object().unwrap().len(),
        2,
        "{}",
        r.body
    );
    let sub = s.os(
        "GET",
        &format!("/network/v2.0/subnets?network_id={id}"),
        &[t],
        None,
    );
    let sub = &sub.body["subnets"][0];
    assert_eq!(sub["cidr"], "192.168.10.0/24");
    assert_eq!(
        sub["allocation_pools"][0],
        json!({"start": "192.168.10.1", "end": "192.168.10.254"})
    );
    let r = s.os("GET", "/network/v2.0/networks/green", &[t], None);
    assert_eq!(r.status, 404);
    assert_eq!(r.body["NeutronError"]["type"], "NetworkNotFound");
    let r = s.os(
        "POST",
        "/network/v2.0/networks",
        &[t],
        Some(r#"{"network": {"name": "x"}}"#),
    );
    assert_eq!(r.status, 501);
    assert!(r.body["NeutronError"]["message"]
        .as_str()
        .unwrap()
        .contains("kangaroo network create"));

    let r = s.os("GET", "/image/v2/images", &[t], None);
    let img = &r.body["images"][0];
    assert_eq!(img["name"], "busybox");
    let iid = img["id"].as_str().unwrap();
    let q = format!("/image/v2/images?id=in:{iid},other");
    assert_eq!(
        s.os("GET", &q, &[t], None).body["images"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.os("GET", "/image/v2/images?name=ubuntu", &[t], None).body["images"],
        json!([])
    );
    assert_eq!(
        s.os("GET", &format!("/image/v2/images/{iid}"), &[t], None)
            .body["name"],
        "busybox"
    );
    let r = s.os("GET", "/image/v2/images/ubuntu", &[t], None);
    assert_eq!(
        (r.status, r.body["error"]["code"].as_u64()),
        (404, Some(404))
    );
    assert_eq!(
        s.os("POST", "/image/v2/images", &[t], Some("{}")).status,
        501
    );
}

#[test]
fn vm_create_places_on_the_named_provider() {
    let s = start();
    s.post(
        "/v1/networks",
        json!({"name": "blue", "vni": 100, "subnet": "192.168.10.0/24"}),
    );
    let vm = |name: &str, provider: Option<&str>| {
        s.post("/v1/vms", json!({"name": name, "vcpus": 0.5, "memory": "512MiB", "network": "blue", "provider": provider}))
    };
    let provider_of = |host: &Value| {
        let (_, hosts) = s.get("/v1/hosts");
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == *host)
            .unwrap()["provider"]
            .clone()
    };
    let (st, a) = vm("a", None);
    assert_eq!(st, 200, "{a}");
    assert_eq!(provider_of(&a["host"]), "sim");
    // Named: placed with that provider's hosts, although sim's host has room.
    let (st, b) = vm("b", Some("old"));
    assert_eq!(st, 200, "{b}");
    assert_eq!(provider_of(&b["host"]), "old");
    let (st, c) = vm("c", Some("old"));
    assert_eq!((st, &c["host"]), (200, &b["host"]));
    let (st, e) = vm("d", Some("mars"));
    assert_eq!(st, 404, "{e}");
    assert!(err(&e).1.contains("mars"), "{e}");
}

#[test]
fn openstack_flavors_are_the_tenants_sizes() {
    let flavors = kangaroo_orchestrator::openstack::flavors::parse_flavors(
        "[[flavor]]\nname = \"web\"\nvcpus = 0.5\nmemory = \"768MiB\"\n",
    )
    .unwrap();
    let s = start_with(server::OpenStackSettings {
        flavors,
        ..server::OpenStackSettings::default()
    });
    let tok = s.os_token();
    let t = ("X-Auth-Token", tok.as_str());
    let r = s.os("GET", "/compute/v2.1/flavors/detail", &[t], None);
    let list = r.body["flavors"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", r.body);
    // Nova counts whole vCPUs: half a vCPU shows as 1; the VM gets exactly half.
    assert_eq!(
        (
            list[0]["name"].as_str(),
            list[0]["vcpus"].as_u64(),
            list[0]["ram"].as_u64()
        ),
        (Some("web"), Some(1), Some(768))
    );
    assert_eq!(
        s.os("GET", "/compute/v2.1/flavors/m1.small", &[t], None)
            .status,
        404
    );
    s.post(
        "/v1/networks",
        json!({"name": "blue", "vni": 100, "subnet": "192.168.10.0/24"}),
    );
    let body =
        json!({"server": {"name": "w1", "flavorRef": "web", "imageRef": "busybox"}}).to_string();
    let r = s.os("POST", "/compute/v2.1/servers", &[t], Some(&body));
    assert_eq!(r.status, 202, "{}", r.body);
    let (_, vm) = s.get("/v1/vms/w1");
    assert_eq!(
        (
            vm["cpu_quarters"].as_u64(),
            vm["memory_mib"].as_u64(),
            vm["network"].as_str()
        ),
        (Some(2), Some(768), Some("blue"))
    );
    let r = s.os("GET", "/compute/v2.1/servers/w1", &[t], None);
    assert_eq!(r.body["server"]["flavor"]["id"], "web");
}
