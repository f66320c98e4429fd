//! Crash safety: `kill -9` of `kangaroo serve` during a burst of creates leaves a store that
//! reopens consistent, with every acknowledged VM in it and no half-written one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kangaroo_orchestrator::packing::PackOptions;
use kangaroo_orchestrator::store::{RedbStore, Store};
use serde_json::json;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &std::path::Path, port: u16) -> Serve {
    let server = Serve(
        Command::new(env!("CARGO_BIN_EXE_kangaroo"))
            .args([
                "--data-dir",
                dir.to_str().unwrap(),
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if agent
            .get(&format!("http://127.0.0.1:{port}/health"))
            .call()
            .is_ok()
        {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("kangaroo serve did not come up on port {port}");
}

#[test]
fn kill_9_during_a_burst_of_creates_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = serve(dir.path(), port);
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    let url = format!("http://127.0.0.1:{port}");

    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, url, token) = (acked.clone(), stop.clone(), url.clone(), token.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            // Bounded: at most 5000 creates, and only until the server dies.
            for i in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("vm-{i}");
                let body = json!({"name": name, "vcpus": 0.5, "memory": "512MiB", "network": "default", "affinity": format!("g{}", i % 7)});
                match agent
                    .post(&format!("{url}/v1/vms"))
                    .header("Authorization", &format!("Bearer {token}"))
                    .send_json(body)
                {
                    Ok(r) if r.status().is_success() => acked.lock().unwrap().push(name),
                    Ok(r) => panic!("create {name} refused: {}", r.status()),
                    Err(_) => break, // the server is gone
                }
            }
        })
    };
    // Let the burst run, then kill -9 mid-flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 150 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.0.kill().unwrap(); // SIGKILL
    server.0.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 150,
        "the burst made progress before the kill ({} acked)",
        acked.len()
    );

    // The store reopens and is consistent.
    let (state, rev) = RedbStore::open(dir.path()).unwrap().load().unwrap();
    let names: BTreeSet<String> = state.vms.keys().map(|k| k.to_string()).collect();
    for a in &acked {
        assert!(names.contains(a), "acknowledged {a} is in the store");
    }
    assert!(
        names.len() <= acked.len() + 1,
        "at most the one in-flight create landed unacknowledged ({} stored, {} acked)",
        names.len(),
        acked.len()
    );
    assert!(
        rev as usize >= names.len(),
        "every create was its own transaction"
    );
    let mut ips = BTreeSet::new();
    let opts = PackOptions::default();
    for vm in state.vms.values() {
        let host = state
            .hosts
            .get(&vm.host)
            .unwrap_or_else(|| panic!("{} is on a host the store knows", vm.name));
        assert!(
            state.networks.contains_key(&vm.network),
            "{} has its network",
            vm.name
        );
        assert!(
            ips.insert((vm.network.clone(), vm.ip)),
            "{} has a unique address",
            vm.name
        );
        let used = state.vms.values().filter(|v| v.host == host.name).fold(
            Default::default(),
            |a: kangaroo_orchestrator::model::Resources, v| a.plus(&v.resources()),
        );
        assert!(
            used.fits_in(&opts.usable(&host.instance_type)),
            "host {} within capacity",
            host.name
        );
    }

    // A restarted server serves the same state and keeps going.
    let _again = serve(dir.path(), port);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(&format!("{url}/v1/vms"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let listed: Vec<serde_json::Value> = r.body_mut().read_json().unwrap();
    assert_eq!(listed.len(), names.len());
    let r = agent
        .post(&format!("{url}/v1/vms"))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(
            json!({"name": "after-restart", "vcpus": 1, "memory": "1GiB", "network": "default"}),
        )
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// An agent that talks to the API keeps going while its controller is gone (`kill -9`), and
/// catches up when it is back: it reports again (the host stays running) and learns the VM
/// assigned to its host meanwhile, by revision.
#[test]
fn an_api_agent_outlives_its_controller_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = serve(dir.path(), port);
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    let api: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let call =
        |method: &str, path: &str, body: Option<serde_json::Value>| -> (u16, serde_json::Value) {
            let req = api_request(method, &format!("{url}{path}"), &token, body);
            let mut r = api.run(req).unwrap();
            let status = r.status().as_u16();
            let text = r.body_mut().read_to_string().unwrap();
            (status, serde_json::from_str(&text).unwrap_or_default())
        };
    let (st, v) = call(
        "POST",
        "/v1/hosts",
        Some(json!({"instance_type": "m5.large", "name": "h1"})),
    );
    assert_eq!(st, 200, "{v}");
    let o = Command::new(env!("CARGO_BIN_EXE_kangaroo"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "host",
            "join-token",
            "h1",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let token_file = agent_dir.path().join("join-token");
    std::fs::write(&token_file, &o.stdout).unwrap();
    let log = agent_dir.path().join("agent.log");
    let mut agent = Serve(
        Command::new(env!("CARGO_BIN_EXE_kangaroo"))
            .args(["--data-dir", agent_dir.path().to_str().unwrap()])
            .args([
                "agent",
                "--controller",
                &url,
                "--host",
                "h1",
                "--join-token-file",
            ])
            .arg(&token_file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let host = || {
        let (_, v) = call("GET", "/v1/hosts", None);
        v.as_array()
            .and_then(|a| a.iter().find(|h| h["name"] == "h1").cloned())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while host()["agent"] != true && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(host()["agent"], true, "the agent reported");

    // The controller dies; the agent does not.
    drop(server);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent stopped without its controller:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    // Back: a VM for h1 reaches the agent, and the host is running (not lost).
    let _server = serve(dir.path(), port);
    let (st, v) = call(
        "POST",
        "/v1/vms",
        Some(
            json!({"name": "late", "vcpus": 0.5, "memory": "512MiB", "network": "default", "host": "h1"}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap();
        if text.contains("1 VMs: late") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        text.contains("1 VMs: late"),
        "the agent did not catch up:\n{text}"
    );
    assert!(text.contains("the controller answers again"), "{text}");
    assert_eq!(host()["state"], "running");
    let _ = agent.0.kill();
}

fn api_request(
    method: &str,
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> ureq::http::Request<Vec<u8>> {
    ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {}", token.trim()))
        .header("content-type", "application/json")
        .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
        .unwrap()
}
