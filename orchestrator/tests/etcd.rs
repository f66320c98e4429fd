//! The etcd store against a real etcd on loopback: compare-and-swap commits, the election and
//! its fence, watches that survive an etcd restart, and controllers failing over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Etcd;
use kangaroo_orchestrator::model::{Host, HostState, InstanceType, Name};
use kangaroo_orchestrator::packing::PackOptions;
use kangaroo_orchestrator::service::{Service, VmRequest};
use kangaroo_orchestrator::store::etcd::{EtcdStore, EtcdUrl, Followed};
use kangaroo_orchestrator::store::{Op, Role, Store, StoreError};

fn host(name: &str) -> Host {
    Host {
        name: Name::new(name).unwrap(),
        provider: Name::new("sim").unwrap(),
        instance_type: InstanceType {
            name: Name::new("m5.large").unwrap(),
            vcpus: 2,
            memory_mib: 8192,
            price_per_hour: 0.096,
        },
        state: HostState::Running,
        underlay: None,
        rented_at: 0,
        agent: false,
        public_key: None,
    }
}

fn etcd_or_skip() -> Option<Etcd> {
    match Etcd::start() {
        Ok(e) => Some(e),
        Err(why) => {
            println!("skipping: {why}");
            None
        }
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if f() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within {secs} s");
}

fn is_leader(s: &EtcdStore) -> bool {
    matches!(s.role(), Role::Leader { .. })
}

#[test]
fn commits_are_compare_and_swap_fenced_by_the_election_and_survive_an_etcd_restart() {
    let Some(mut etcd) = etcd_or_skip() else {
        return;
    };
    let url: EtcdUrl = format!("{}/t1", etcd.url()).parse().unwrap();
    let a = EtcdStore::connect(&url).unwrap();
    assert_eq!(a.load().unwrap().1, 0, "a fresh prefix is empty");
    // Not elected yet: no write.
    assert!(matches!(
        a.commit(0, &[Op::PutHost(host("h0"))]),
        Err(StoreError::NotLeader { leader: None })
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    a.campaign(
        "http://a".into(),
        Duration::from_secs(30),
        Arc::new(move |l| {
            let _ = tx.send(l);
        }),
    );
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
    assert!(is_leader(&a));

    // Compare-and-swap on the revision.
    assert_eq!(a.commit(0, &[Op::PutHost(host("h1"))]).unwrap(), 1);
    assert!(matches!(
        a.commit(0, &[Op::PutHost(host("h2"))]),
        Err(StoreError::Conflict {
            expected: 0,
            found: 1
        })
    ));
    assert_eq!(
        a.commit(
            1,
            &[
                Op::PutHost(host("h2")),
                Op::DeleteHost(Name::new("h1").unwrap())
            ]
        )
        .unwrap(),
        2
    );

    // A second controller stands by, names the leader, cannot write, and sees every commit.
    let b = EtcdStore::connect(&url).unwrap();
    b.campaign("http://b".into(), Duration::from_secs(30), Arc::new(|_| {}));
    wait_for("b knows the leader", 10, || {
        b.role()
            == Role::Standby {
                leader: Some("http://a".into()),
            }
    });
    assert!(matches!(
        b.commit(2, &[Op::PutHost(host("h3"))]),
        Err(StoreError::NotLeader { leader: Some(l) }) if l == "http://a"
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        b.follow(Arc::new(move |c| {
            if let Followed::Commit { rev, .. } = c {
                if rev > 0 {
                    seen.lock().unwrap().push(rev);
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (st, rev) = b.load().unwrap();
    assert_eq!(rev, 2);
    assert_eq!(
        st.hosts.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["h2"]
    );

    // etcd restarts (kill -9): the leader keeps its lease, commits succeed again once etcd
    // is back, and b's watch resumes without missing the commit made right after.
    assert_eq!(a.commit(2, &[Op::PutHost(host("h3"))]).unwrap(), 3);
    wait_for("b's watch sees revision 3", 10, || {
        seen.lock().unwrap().last() == Some(&3)
    });
    etcd.restart();
    let t0 = Instant::now();
    let mut r = a.commit(3, &[Op::PutHost(host("h4"))]);
    while r.is_err() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        r = a.commit(3, &[Op::PutHost(host("h4"))]);
    }
    assert_eq!(r.unwrap(), 4, "{}", etcd.log());
    println!("first commit after the etcd restart: {:?}", t0.elapsed());
    wait_for("b's watch resumes and sees revision 4", 20, || {
        seen.lock().unwrap().last() == Some(&4)
    });
    let revs = seen.lock().unwrap().clone();
    let mut sorted = revs.clone();
    sorted.dedup();
    assert_eq!(sorted, revs, "no commit delivered twice: {revs:?}");
    assert!(revs.ends_with(&[3, 4]), "{revs:?}");

    // The fence: revoke a's lease behind its back (as if it had been paused past the
    // lease). Its next renewal is 10 s away, so it still believes it leads; its commit is
    // refused by etcd all the same, and b takes over.
    let revoked = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut c =
                etcd_client::Client::connect([format!("http://127.0.0.1:{}", etcd.port)], None)
                    .await
                    .unwrap();
            let g = c.get("/t1/leader", None).await.unwrap();
            let lease = g.kvs()[0].lease();
            c.lease_revoke(lease).await.unwrap();
        });
        Instant::now()
    };
    assert!(is_leader(&a), "a has not noticed yet");
    assert!(matches!(
        a.commit(4, &[Op::PutHost(host("h5"))]),
        Err(StoreError::NotLeader { .. })
    ));
    wait_for("b leads", 10, || is_leader(&b));
    println!(
        "b took over {:?} after a's lease was revoked",
        revoked.elapsed()
    );
    assert_eq!(b.commit(4, &[Op::PutHost(host("h5"))]).unwrap(), 5);
    let (st, _) = a.load().unwrap();
    assert_eq!(
        st.hosts.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["h2", "h3", "h4", "h5"]
    );
}

#[test]
fn a_resigning_leader_hands_over_to_the_standby_at_once() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let url: EtcdUrl = format!("{}/t2", etcd.url()).parse().unwrap();
    let a = EtcdStore::connect(&url).unwrap();
    a.campaign("http://a".into(), Duration::from_secs(2), Arc::new(|_| {}));
    wait_for("a leads", 10, || is_leader(&a));
    let b = EtcdStore::connect(&url).unwrap();
    b.campaign("http://b".into(), Duration::from_secs(2), Arc::new(|_| {}));
    wait_for("b stands by", 10, || {
        b.role()
            == Role::Standby {
                leader: Some("http://a".into()),
            }
    });
    // Stepping down hands over at once.
    let t0 = Instant::now();
    a.resign();
    wait_for("b leads after a resigned", 5, || is_leader(&b));
    println!("hand-over after a resignation: {:?}", t0.elapsed());
    assert!(!is_leader(&a));
    // A leader that just dies is replaced once its lease runs out: the kill -9 test in
    // tests/failover.rs measures that with whole controllers.
}

#[test]
fn a_standby_service_follows_the_leaders_commits_change_by_change() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let url: EtcdUrl = format!("{}/t3", etcd.url()).parse().unwrap();
    let providers = [("sim".to_owned(), "ec2-2026".to_owned())];
    let la = EtcdStore::connect(&url).unwrap();
    la.campaign("http://a".into(), Duration::from_secs(30), Arc::new(|_| {}));
    wait_for("a leads", 10, || is_leader(&la));
    let leader = Service::new(Box::new(la), &providers, PackOptions::default()).unwrap();
    let sb = EtcdStore::connect(&url).unwrap();
    sb.campaign("http://b".into(), Duration::from_secs(30), Arc::new(|_| {}));
    let standby =
        Arc::new(Service::new(Box::new(sb.clone()), &providers, PackOptions::default()).unwrap());
    let reloads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (standby, reloads) = (standby.clone(), reloads.clone());
        sb.follow(Arc::new(move |c| match c {
            Followed::Commit { ops, rev } => standby.follow(&ops, rev).unwrap(),
            Followed::Reload => {
                reloads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                standby.refresh().unwrap();
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let vm = |name: &str| -> VmRequest {
        serde_json::from_value(
            serde_json::json!({"name": name, "vcpus": 0.5, "memory": "1GiB", "network": "default"}),
        )
        .unwrap()
    };
    for i in 0..30 {
        leader.create_vm(&vm(&format!("v{i}"))).unwrap();
    }
    for i in (0..30).step_by(3) {
        leader.delete_vm(&format!("v{i}")).unwrap();
    }
    leader.stop_vm("v1").unwrap();
    let to = leader
        .add_host(
            &serde_json::from_value(serde_json::json!({"instance_type": "m5.large"})).unwrap(),
        )
        .unwrap();
    leader
        .migrate_vm(
            "v2",
            &serde_json::from_value(serde_json::json!({"to": to.name.as_str()})).unwrap(),
        )
        .unwrap();
    wait_for("the standby has every commit", 10, || {
        standby.revision() == leader.revision()
    });
    assert_eq!(
        standby.snapshot(),
        leader.snapshot(),
        "change by change, the same state"
    );
    assert_eq!(
        reloads.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no whole reload was needed"
    );
    println!("the standby followed {} commits", leader.revision());
}

#[test]
fn a_bad_etcd_url_or_a_dead_etcd_is_a_clear_error() {
    let e = "etcd://nohost".parse::<EtcdUrl>().unwrap_err();
    assert!(e.contains("HOST:PORT"), "{e}");
    // Nothing listens on port 1.
    let url: EtcdUrl = "etcd://127.0.0.1:1".parse().unwrap();
    let e = EtcdStore::connect(&url).err().unwrap();
    assert!(
        e.to_string().contains("etcd://127.0.0.1:1"),
        "the error names the store: {e}"
    );
}

/// An empty API token in etcd (which made the OpenStack password "" and its signing key a
/// constant) stops a controller from starting, with a message that says so.
#[test]
fn an_empty_token_in_etcd_is_refused() {
    let Some(etcd) = etcd_or_skip() else { return };
    let url: EtcdUrl = format!("{}/t-token", etcd.url()).parse().unwrap();
    let e = EtcdStore::connect(&url).unwrap();
    assert_eq!(e.shared_value("token", String::new).unwrap(), "");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kangaroo"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--provider", "sim=ec2-2026", "--store", &url.to_string()])
        .env("KANGAROO_DATA_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a controller started (or ran 15 s): {err}"
    );
    assert!(
        err.contains("the token in etcd") && err.contains("0 characters"),
        "{err}"
    );
    assert!(
        !dir.path().join("token").exists(),
        "nothing written from it"
    );
}

/// `kangaroo serve` on etcd with one simulated provider, as a child process.
struct Controller {
    child: std::process::Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Controller {
    fn start(etcd: &Etcd, extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kangaroo"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--provider", "sim=ec2-2026", "--store", &etcd.url()])
            .args(["--lease-secs", "2"])
            .args(extra)
            .env("KANGAROO_DATA_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = common::served_url(&mut child, &dir.path().join("serve.log"));
        let c = Controller { child, url, dir };
        wait_for("the controller leads", 20, || {
            c.cli(&["--json", "controller"])
                .map(|v| v["role"] == "leader")
                .unwrap_or(false)
        });
        c
    }

    fn cli(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_kangaroo"))
            .args(args)
            .env("KANGAROO_DATA_DIR", self.dir.path())
            .env("KANGAROO_URL", &self.url)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        if !o.status.success() {
            return Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr)));
        }
        Ok(serde_json::from_str(&out).unwrap_or(serde_json::Value::String(out)))
    }

    fn ok(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        self.cli(&full)
            .unwrap_or_else(|e| panic!("kangaroo {args:?}: {e}\n{}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Agent(std::process::Child);

impl Agent {
    fn start(etcd: &Etcd, host: &str) -> Agent {
        Agent(
            std::process::Command::new(env!("CARGO_BIN_EXE_kangaroo"))
                .args(["agent", "--store", &etcd.url(), "--host", host])
                .args(["--lease-secs", "2"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What each agent last reported observing, read from etcd.
fn observed(etcd: &Etcd) -> std::collections::BTreeMap<String, Vec<String>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([format!("http://127.0.0.1:{}", etcd.port)], None)
            .await
            .unwrap();
        let r = c
            .get(
                "/kangaroo/agents/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                let host = kv
                    .key_str()
                    .unwrap()
                    .trim_start_matches("/kangaroo/agents/")
                    .to_owned();
                let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
                let mut names: Vec<String> = v["observed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_owned())
                    .collect();
                names.sort();
                (host, names)
            })
            .collect()
    })
}

fn host_states(c: &Controller) -> std::collections::BTreeMap<String, (String, bool)> {
    c.ok(&["host", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_owned(),
                (
                    h["state"].as_str().unwrap().to_owned(),
                    h["agent"].as_bool().unwrap_or(false),
                ),
            )
        })
        .collect()
}

fn vm_hosts(c: &Controller) -> std::collections::BTreeMap<String, (String, String)> {
    c.ok(&["vm", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                (
                    v["host"].as_str().unwrap().to_owned(),
                    v["state"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

#[test]
fn agents_follow_their_hosts_and_a_host_whose_agent_dies_is_lost_and_its_vms_recreated() {
    let Some(mut etcd) = etcd_or_skip() else {
        return;
    };
    let c = Controller::start(&etcd, &["--on-host-lost", "recreate"]);
    for h in ["h1", "h2", "h3"] {
        c.ok(&["host", "add", "m5.xlarge", "--name", h]);
    }
    let mut agents: std::collections::BTreeMap<&str, Agent> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| (*h, Agent::start(&etcd, h)))
        .collect();
    wait_for("every host has its agent", 15, || {
        host_states(&c).values().all(|(_, agent)| *agent)
    });
    for (vm, host) in [("a", "h1"), ("b", "h1"), ("c", "h2"), ("d", "h3")] {
        c.ok(&[
            "vm", "create", vm, "--vcpus", "1", "--memory", "2GiB", "--host", host,
        ]);
    }
    let want = |m: &[(&str, &[&str])]| {
        m.iter()
            .map(|(h, vms)| {
                (
                    h.to_string(),
                    vms.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    wait_for("each agent observes its host's VMs", 10, || {
        observed(&etcd) == want(&[("h1", &["a", "b"]), ("h2", &["c"]), ("h3", &["d"])])
    });

    // A move shows at both ends.
    c.ok(&["vm", "migrate", "d", "--to", "h2"]);
    wait_for("the move reaches both agents", 10, || {
        observed(&etcd) == want(&[("h1", &["a", "b"]), ("h2", &["c", "d"]), ("h3", &[])])
    });

    // kill -9 h1's agent: within its 2 s lease and the leader's 1 s sweep, h1 is lost and its
    // VMs are re-created on the hosts left, whose agents pick them up.
    let t0 = Instant::now();
    agents.get_mut("h1").unwrap().kill9();
    let took = wait_for("h1 is marked lost", 15, || {
        host_states(&c).get("h1").map(|s| s.0.as_str()) == Some("lost")
    });
    println!(
        "host lost {:.2} s after its agent was killed (lease 2 s)",
        took.as_secs_f64()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "not before the lease ran out"
    );
    let vms = vm_hosts(&c);
    for vm in ["a", "b"] {
        let (host, state) = &vms[vm];
        assert!(
            host == "h2" || host == "h3",
            "{vm} re-created elsewhere: {vms:?}"
        );
        assert_eq!(state, "running", "{vms:?}");
    }
    wait_for("the agents left observe every VM exactly once", 10, || {
        let o = observed(&etcd);
        let mut all: Vec<String> = o
            .iter()
            .filter(|(h, _)| *h != "h1")
            .flat_map(|(_, v)| v.clone())
            .collect();
        all.sort();
        all == ["a", "b", "c", "d"] && !o.contains_key("h1")
    });
    assert!(
        c.log().contains("re-created on"),
        "the policy's action is logged: {}",
        c.log()
    );

    // etcd restarts: the agents and the controller reconnect; a new VM reaches its agent.
    etcd.restart();
    let t0 = Instant::now();
    wait_for("a create succeeds after the etcd restart", 30, || {
        c.cli(&[
            "vm", "create", "e", "--vcpus", "1", "--memory", "2GiB", "--host", "h3",
        ])
        .is_ok()
    });
    wait_for("h3's agent observes it", 15, || {
        observed(&etcd)
            .get("h3")
            .is_some_and(|v| v.contains(&"e".to_owned()))
    });
    println!(
        "after the etcd restart, a new VM reached its agent in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        host_states(&c)["h2"].0,
        "running",
        "h2 was not lost across the restart"
    );
    assert_eq!(
        host_states(&c)["h3"].0,
        "running",
        "h3 was not lost across the restart"
    );

    // h1's agent comes back: the host runs again (its VMs are elsewhere now).
    agents.insert("h1", Agent::start(&etcd, "h1"));
    wait_for("h1 runs again", 15, || {
        host_states(&c).get("h1").map(|s| s.0.as_str()) == Some("running")
    });
}
