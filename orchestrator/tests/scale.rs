//! Scale simulation of the control plane on one etcd: simulated hosts, each with an agent
//! (tasks in this process, on a few etcd connections), and nested VMs created through the API
//! of one `kangaroo serve`. It measures the time to deploy, API latency of reads and creates,
//! the delay from a create to the host's agent seeing it, and etcd's size.
//!
//! The CI runs a short form (20 hosts, 200 VMs). The figures in docs/benchmarks.md come from
//! `KGR_SCALE_HOSTS=100 KGR_SCALE_VMS=1000` and `KGR_SCALE_HOSTS=1000 KGR_SCALE_VMS=10000`, with
//! `cargo test --release -p kangaroo-orchestrator --test scale -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Etcd;
use kangaroo_orchestrator::store::etcd::{EtcdStore, EtcdUrl};
use serde_json::{json, Value};

fn env_or(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

struct Api {
    url: String,
    token: String,
}

impl Api {
    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into()
    }

    fn call(&self, a: &ureq::Agent, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let r = match (method, body) {
            ("GET", _) => a.get(&url).header("Authorization", &auth).call(),
            (_, Some(b)) => a.post(&url).header("Authorization", &auth).send_json(b),
            (_, None) => a.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut r = r.unwrap();
        let st = r.status().as_u16();
        let v = r
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_json()
            .unwrap_or(Value::Null);
        (st, v)
    }
}

#[test]
fn scale_simulation_of_hosts_with_agents_and_vms_on_one_etcd() {
    let hosts = env_or("KGR_SCALE_HOSTS", 20);
    let vms = env_or("KGR_SCALE_VMS", 200);
    let clients = env_or("KGR_SCALE_CLIENTS", 4);
    assert!(
        vms <= hosts * 16,
        "m5.2xlarge hosts hold 16 VMs of 0.5 vCPU / 1 GiB each"
    );
    let etcd = match Etcd::start() {
        Ok(e) => e,
        Err(why) => {
            println!("skipping: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_kangaroo"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--provider", "sim=ec2-2026", "--store", &etcd.url()])
        .env("KANGAROO_DATA_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let url = common::served_url(&mut serve, &dir.path().join("serve.log"));
    let _serve = Kill(serve);
    let token = std::fs::read_to_string(dir.path().join("token"))
        .unwrap()
        .trim()
        .to_owned();
    let api = Arc::new(Api { url, token });
    let a = Api::agent();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.call(&a, "GET", "/v1/controller", None).1["role"] != "leader" {
        assert!(Instant::now() < deadline, "kangaroo serve leads");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t_all = Instant::now();

    // Rent the hosts.
    let t0 = Instant::now();
    let host_names: Vec<String> = (0..hosts).map(|i| format!("sh-{i}")).collect();
    std::thread::scope(|s| {
        for c in 0..clients {
            let (api, names) = (api.clone(), &host_names);
            s.spawn(move || {
                let a = Api::agent();
                for n in names.iter().skip(c).step_by(clients) {
                    let (st, v) = api.call(
                        &a,
                        "POST",
                        "/v1/hosts",
                        Some(json!({"name": n, "instance_type": "m5.2xlarge"})),
                    );
                    assert_eq!(st, 200, "renting {n}: {v}");
                }
            });
        }
    });
    let rent_s = t0.elapsed().as_secs_f64();

    // One agent per host, as tasks on a few etcd connections.
    let url: EtcdUrl = etcd.url().parse().unwrap();
    let conns: Vec<EtcdStore> = (0..hosts.div_ceil(250).max(1))
        .map(|_| EtcdStore::connect(&url).unwrap())
        .collect();
    let seen: Arc<Mutex<HashMap<String, (String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    for (i, h) in host_names.iter().enumerate() {
        let (seen, host) = (seen.clone(), h.clone());
        conns[i % conns.len()].run_agent(
            h.clone(),
            Duration::from_secs(10),
            Arc::new(move |desired: &BTreeMap<String, _>| {
                let now = Instant::now();
                let mut s = seen.lock().unwrap();
                for name in desired.keys() {
                    s.entry(name.clone()).or_insert((host.clone(), now));
                }
                desired.keys().cloned().collect()
            }),
            stop.clone(),
        );
    }
    loop {
        let (_, v) = api.call(&a, "GET", "/v1/hosts", None);
        let up = v
            .as_array()
            .map_or(0, |h| h.iter().filter(|h| h["agent"] == true).count());
        if up == hosts {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{up} of {hosts} agents reported"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let agents_s = t0.elapsed().as_secs_f64();

    // Create the VMs, placed by the orchestrator, from several clients at once.
    let t_deploy = Instant::now();
    let acks: Arc<Mutex<HashMap<String, (Instant, Instant)>>> = Arc::default();
    let create_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    std::thread::scope(|s| {
        for c in 0..clients {
            let (api, acks, create_ms) = (api.clone(), acks.clone(), create_ms.clone());
            s.spawn(move || {
                let a = Api::agent();
                for i in (c..vms).step_by(clients) {
                    let name = format!("vm-{i}");
                    let t = Instant::now();
                    let (st, v) = api.call(&a, "POST", "/v1/vms", Some(json!({"name": name, "vcpus": 0.5, "memory": "1GiB", "network": "default"})));
                    let done = Instant::now();
                    assert_eq!(st, 200, "creating {name}: {v}");
                    create_ms.lock().unwrap().push((done - t).as_secs_f64() * 1e3);
                    acks.lock().unwrap().insert(name, (t, done));
                }
            });
        }
    });
    let created_s = t_deploy.elapsed().as_secs_f64();
    loop {
        if seen.lock().unwrap().len() >= vms {
            break;
        }
        assert!(
            t_deploy.elapsed() < Duration::from_secs(600),
            "agents saw {} of {vms} VMs",
            seen.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deploy_s = t_deploy.elapsed().as_secs_f64();

    // Every VM was seen by the agent of the host the state names.
    let (_, listed) = api.call(&a, "GET", "/v1/vms", None);
    let listed = listed.as_array().unwrap().clone();
    assert_eq!(listed.len(), vms);
    let seen = seen.lock().unwrap().clone();
    for v in &listed {
        let name = v["name"].as_str().unwrap();
        let (host, _) = &seen[name];
        assert_eq!(
            v["host"].as_str().unwrap(),
            host,
            "{name} seen by its host's agent"
        );
    }
    let acks = acks.lock().unwrap().clone();
    // The commit happens between the request and its reply: the delay to the agent is at
    // most (seen - request sent) and at least (seen - reply received), 0 when the agent saw
    // the VM before the client had its reply.
    let mut fanout_max: Vec<f64> = acks
        .iter()
        .map(|(n, (sent, _))| seen[n].1.saturating_duration_since(*sent).as_secs_f64() * 1e3)
        .collect();
    let mut fanout_min: Vec<f64> = acks
        .iter()
        .map(|(n, (_, ack))| seen[n].1.saturating_duration_since(*ack).as_secs_f64() * 1e3)
        .collect();

    // Reads, from several clients at once: one VM, and the host list.
    let read_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let list_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let reads = 200.min(vms * 2);
    std::thread::scope(|s| {
        for c in 0..clients {
            let (api, read_ms, list_ms) = (api.clone(), read_ms.clone(), list_ms.clone());
            s.spawn(move || {
                let a = Api::agent();
                for i in (c..reads).step_by(clients) {
                    let t = Instant::now();
                    let (st, _) =
                        api.call(&a, "GET", &format!("/v1/vms/vm-{}", (i * 7919) % vms), None);
                    assert_eq!(st, 200);
                    read_ms
                        .lock()
                        .unwrap()
                        .push(t.elapsed().as_secs_f64() * 1e3);
                    if i % 10 == 0 {
                        let t = Instant::now();
                        let (st, _) = api.call(&a, "GET", "/v1/hosts", None);
                        assert_eq!(st, 200);
                        list_ms
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
            });
        }
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut create_ms = create_ms.lock().unwrap().clone();
    let mut read_ms = read_ms.lock().unwrap().clone();
    let mut list_ms = list_ms.lock().unwrap().clone();
    let summary = json!({
        "hosts": hosts,
        "vms": vms,
        "clients": clients,
        "rent_hosts_s": rent_s,
        "agents_reporting_s": agents_s,
        "create_all_s": created_s,
        "deploy_until_agents_saw_all_s": deploy_s,
        "creates_per_s": vms as f64 / created_s,
        "create_ms_p50": pct(&mut create_ms, 0.5),
        "create_ms_p99": pct(&mut create_ms, 0.99),
        "get_vm_ms_p50": pct(&mut read_ms, 0.5),
        "get_vm_ms_p99": pct(&mut read_ms, 0.99),
        "list_hosts_ms_p50": pct(&mut list_ms, 0.5),
        "list_hosts_ms_p99": pct(&mut list_ms, 0.99),
        "fanout_from_request_ms_p50": pct(&mut fanout_max, 0.5),
        "fanout_from_request_ms_p99": pct(&mut fanout_max, 0.99),
        "fanout_after_reply_ms_p50": pct(&mut fanout_min, 0.5),
        "fanout_after_reply_ms_p99": pct(&mut fanout_min, 0.99),
        "etcd_db_kib": etcd.db_bytes() / 1024,
        "total_s": t_all.elapsed().as_secs_f64(),
    });
    println!("scale: {summary}");
}
