//! The OpenStack-compatible API driven by the unmodified clients (root): `openstack` and
//! `openstacksdk` from PyPI, installed into a virtualenv by scripts/openstack-client.sh, against
//! `kangaroo serve` with local providers. Every step is checked twice: in the client's output
//! and in Kangaroo's own state (the native CLI), and nested VMs are reached over the overlay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The virtualenv's `bin`, installed on first use.
fn client_bin() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/openstack-client.sh");
    let dir = target_dir().join("openstack-client");
    let o = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "installing the OpenStack clients from PyPI: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

/// The `openstack` client pointed at one server.
struct Osc {
    bin: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Osc {
    fn new(s: &Serve) -> Osc {
        Osc::at(&s.url, &s.dir)
    }

    /// The client of the server at `url` whose data directory is `dir` (its token).
    fn at(url: &str, dir: &std::path::Path) -> Osc {
        let token = std::fs::read_to_string(dir.join("token")).unwrap();
        Osc {
            bin: client_bin(),
            env: vec![
                ("OS_AUTH_URL", format!("{url}/identity/v3")),
                ("OS_USERNAME", "kangaroo".into()),
                ("OS_PASSWORD", token.trim().to_owned()),
                ("OS_PROJECT_NAME", "kangaroo".into()),
                ("OS_USER_DOMAIN_NAME", "Default".into()),
                ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
                ("OS_IDENTITY_API_VERSION", "3".into()),
            ],
        }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        // Nothing from the environment the test runs in (a clouds.yaml, OS_CLOUD) may steer it.
        c.env_remove("OS_CLOUD").env("HOME", std::env::temp_dir());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs `openstack ARGS`: (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let o = self.cmd("openstack").args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn ok(&self, s: &Serve, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(
            ok,
            "openstack {args:?}: {out}{err}\nserver log:\n{}",
            s.log()
        );
        out
    }

    fn json(&self, s: &Serve, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.extend(["-f", "json"]);
        let out = self.ok(s, &full);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("openstack {args:?}: {e}: {out}"))
    }

    /// Runs `openstack ARGS`, which must fail, and returns what it printed.
    fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(!ok, "openstack {args:?} should fail: {out}");
        format!("{out}{err}")
    }
}

/// A command line's words.
fn w(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn names(list: &Value, key: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// `page` of `to` (a `netns` VM's service) fetched from `from` over the overlay, within 20 s.
fn page_via(s: &Serve, from: &str, to: Ipv4Addr) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("http://{to}/");
        let (ok, out) = s.cli(&["vm", "exec", from, "--", "curl", "-s", "-m", "2", &url]);
        if ok && out.starts_with("name=") {
            return out;
        }
        assert!(Instant::now() < deadline, "{from} reaches {to}: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls one server's status through the compute API every 50 ms (at most 5 minutes) and
/// keeps each change, while a command runs.
struct Watch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Watch {
    fn start(s: &Serve, server: &str) -> Watch {
        let token = std::fs::read_to_string(s.dir.join("token")).unwrap();
        let url = format!("{}/compute/v2.1/servers/{server}", s.url);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: Vec<String> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(300);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let o = Command::new("curl")
                    .args([
                        "-s",
                        "-m",
                        "2",
                        "-H",
                        &format!("X-Auth-Token: {}", token.trim()),
                        &url,
                    ])
                    .output()
                    .unwrap();
                let status = serde_json::from_slice::<Value>(&o.stdout)
                    .ok()
                    .and_then(|v| v["server"]["status"].as_str().map(str::to_owned));
                if let Some(st) = status {
                    if seen.last() != Some(&st) {
                        seen.push(st);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        Watch { stop, thread }
    }

    /// The statuses seen, in order, ending with one read after the command returned.
    fn stop(self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn start(driver: &str, guest: &[(&str, &std::path::Path)]) -> (Serve, Teardown) {
    let dir = std::env::temp_dir().join(format!("kgr-os-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let teardown = Teardown(dir.clone());
    // Below the ephemeral range (32768-), where a restarted server could find its port taken
    // by an outgoing connection.
    let port = 20000 + (rand::random::<u16>() % 12000);
    (Serve::start_with(&dir, port, driver, guest), teardown)
}

#[test]
fn openstack_client_and_sdk_drive_nested_vms() {
    let _serial = serial();
    if let Some(why) = skip_reason(false) {
        println!("skipping: {why}");
        return;
    }
    let (s, _teardown) = start("netns", &[]);
    let os = Osc::new(&s);
    s.ok(&w("network create tnet --vni 300 --subnet 192.168.80.0/24"));

    // Catalog: flavors, images, networks and zones as OpenStack names them.
    let flavors = os.json(&s, &["flavor", "list"]);
    assert_eq!(
        names(&flavors, "Name"),
        ["m1.large", "m1.medium", "m1.small", "m1.tiny", "m1.xlarge"]
    );
    let small = flavors
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["Name"] == "m1.small")
        .unwrap();
    assert_eq!(
        (small["RAM"].as_u64(), small["VCPUs"].as_u64()),
        (Some(512), Some(1))
    );
    assert_eq!(names(&os.json(&s, &["image", "list"]), "Name"), ["busybox"]);
    let nets = os.json(&s, &["network", "list"]);
    assert_eq!(names(&nets, "Name"), ["tnet"]);
    let net = os.json(&s, &["network", "show", "tnet"]);
    assert_eq!(net["provider:segmentation_id"], 300);
    assert_eq!(net["mtu"], 1450);
    let subnet = os.json(&s, &["subnet", "show", "tnet"]);
    assert_eq!(subnet["cidr"], "192.168.80.0/24");
    let zones = os.json(&s, &["availability", "zone", "list", "--compute"]);
    assert_eq!(names(&zones, "Zone Name"), ["cloud-a", "cloud-b"]);

    // Boot two servers, one in each cloud.
    let vm1 = os.json(
        &s,
        &w("server create --flavor m1.small --image busybox --network tnet vm1 --wait"),
    );
    assert_eq!(vm1["status"], "ACTIVE", "{vm1}");
    assert_eq!(vm1["name"], "vm1");
    let vm2 = os.json(
        &s,
        &w("server create --flavor m1.tiny --image busybox --network tnet --availability-zone cloud-b vm2 --wait"),
    );
    assert_eq!(vm2["OS-EXT-AZ:availability_zone"], "cloud-b", "{vm2}");
    let native1 = s.json(&["vm", "show", "vm1"]);
    let native2 = s.json(&["vm", "show", "vm2"]);
    assert_eq!(native1["state"], "running");
    assert_eq!(native1["memory_mib"], 512);
    assert_eq!(native1["cpu_quarters"], 4);
    assert_eq!(native2["memory_mib"], 256);
    let hosts = s.json(&["host", "ls"]);
    let provider_of = |h: &Value| {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == *h)
            .map(|x| x["provider"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(provider_of(&native1["host"]), "cloud-a");
    assert_eq!(provider_of(&native2["host"]), "cloud-b");
    assert_eq!(vm1["OS-EXT-SRV-ATTR:host"], native1["host"]);
    let ip1: Ipv4Addr = native1["ip"].as_str().unwrap().parse().unwrap();
    let ip2: Ipv4Addr = native2["ip"].as_str().unwrap().parse().unwrap();
    assert!(
        vm1["addresses"].to_string().contains(&ip1.to_string()),
        "{}",
        vm1["addresses"]
    );
    // The two clouds' servers reach each other on the tenant network.
    assert!(page_via(&s, "vm1", ip2).starts_with("name=vm2"));

    let list = os.json(&s, &["server", "list"]);
    assert_eq!(names(&list, "Name"), ["vm1", "vm2"]);
    for row in list.as_array().unwrap() {
        assert_eq!(row["Status"], "ACTIVE", "{row}");
        assert_eq!(row["Image"], "busybox", "{row}");
    }
    let show = os.json(&s, &["server", "show", "vm1"]);
    assert_eq!(show["flavor"], "m1.small (m1.small)", "{show}");
    assert_eq!(show["OS-EXT-STS:vm_state"], "active");
    assert_eq!(show["id"], vm1["id"]);

    // The hypervisors are the rented hosts, with what the servers use.
    let hv = os.json(&s, &["hypervisor", "list"]);
    assert_eq!(names(&hv, "Hypervisor Hostname"), names(&hosts, "name"));
    let h1 = native1["host"].as_str().unwrap();
    let hv1 = os.json(&s, &["hypervisor", "show", h1]);
    assert_eq!(hv1["memory_mb_used"], 512, "{hv1}");
    assert_eq!(hv1["running_vms"], 1, "{hv1}");

    // Stop and start: the state and the VM itself follow.
    os.ok(&s, &["server", "stop", "vm1"]);
    assert_eq!(os.json(&s, &["server", "show", "vm1"])["status"], "SHUTOFF");
    assert_eq!(s.json(&["vm", "show", "vm1"])["state"], "stopped");
    let again = os.fails(&["server", "stop", "vm1"]);
    assert!(again.contains("vm_state stopped"), "{again}");
    os.ok(&s, &["server", "start", "vm1"]);
    assert_eq!(os.json(&s, &["server", "show", "vm1"])["status"], "ACTIVE");
    assert_eq!(s.json(&["vm", "show", "vm1"])["state"], "running");
    assert!(page_via(&s, "vm2", ip1).starts_with("name=vm1"));

    // Errors the client prints sensibly, and nothing changed by them.
    let e = os.fails(&w("server create --flavor m9.huge --image busybox x"));
    assert!(e.contains("No Flavor found for m9.huge"), "{e}");
    let e = os.fails(&w("server create --flavor m1.tiny --image nope x"));
    assert!(e.contains("No Image found for nope"), "{e}");
    let e = os.fails(&w(
        "server create --flavor m1.tiny --image busybox --network nonet x",
    ));
    assert!(e.contains("No Network found for nonet"), "{e}");
    let h2 = native2["host"].as_str().unwrap();
    let az = format!("cloud-b:{h2}");
    let e = os.fails(&[
        "server",
        "create",
        "--flavor",
        "m1.xlarge",
        "--image",
        "busybox",
        "--network",
        "tnet",
        "--availability-zone",
        &az,
        "big",
    ]);
    assert!(
        e.contains("No valid host was found") && e.contains(h2),
        "{e}"
    );
    let e = os.fails(&["--os-password", "wrong", "server", "list"]);
    assert!(
        e.contains("requires authentication") && e.contains("401"),
        "{e}"
    );
    let bad_token = Command::new("curl")
        .args([
            "-s",
            "-H",
            "X-Auth-Token: kgo2.1.9999999999.p.00.00.ff",
            &format!("{}/compute/v2.1/servers", s.url),
        ])
        .output()
        .unwrap();
    let body: Value = serde_json::from_slice(&bad_token.stdout).unwrap();
    assert_eq!(body["error"]["code"], 401, "{body}");
    assert_eq!(names(&s.json(&["vm", "ls"]), "name"), ["vm1", "vm2"]);

    // The same lifecycle through openstacksdk.
    let o = os
        .cmd("python")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openstack_sdk.py"))
        .args(["vm3", "tnet"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openstack_sdk.py: {}{}\nserver log:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        s.log()
    );
    let sdk: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(sdk["network_vni"], 300, "{sdk}");
    assert_eq!(sdk["created"]["status"], "ACTIVE", "{sdk}");
    assert_eq!(
        sdk["listed"],
        serde_json::json!(["vm1", "vm2", "vm3"]),
        "{sdk}"
    );
    assert_eq!(
        (sdk["stopped"].as_str(), sdk["started"].as_str()),
        (Some("SHUTOFF"), Some("ACTIVE"))
    );
    assert!(
        sdk["bad_flavor"]
            .as_str()
            .unwrap()
            .contains("no-such-flavor"),
        "{sdk}"
    );
    assert_eq!(
        sdk["after_delete"],
        serde_json::json!(["vm1", "vm2"]),
        "{sdk}"
    );

    // Delete: the servers go, and so do the VMs.
    os.ok(&s, &w("server delete --wait vm1 vm2"));
    assert_eq!(os.json(&s, &["server", "list"]), serde_json::json!([]));
    assert_eq!(s.json(&["vm", "ls"]), serde_json::json!([]));
}

#[test]
fn openstack_client_live_migrates_a_qemu_server() {
    let _serial = serial();
    let Some(image) = qemu_ready() else { return };
    let guest = [("KANGAROO_GUEST_DIR", image.as_path())];
    let (s, _teardown) = start("qemu", &guest);
    let os = Osc::new(&s);
    s.ok(&w("network create n --vni 310 --subnet 192.168.81.0/24"));
    for (h, t) in [("ha", "m5.large"), ("hb", "m5.large")] {
        s.ok(&["host", "add", t, "--name", h, "--provider", "cloud-a"]);
    }
    let watch = Watch::start(&s, "mover");
    // The new QEMU is frozen for a moment as soon as it exists, so the server is still being
    // built while the watcher polls, however fast this machine boots it.
    let pid_file = s.dir.join("local/hosts/ha/vms/mover/qemu.pid");
    let holder = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(pid) = kangaroo_orchestrator::sys::live_pid(&pid_file) {
                kangaroo_orchestrator::sys::process::signal_pid(pid, libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(600));
                kangaroo_orchestrator::sys::process::signal_pid(pid, libc::SIGCONT);
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    });
    let vm = os.json(
        &s,
        &w("server create --flavor m1.tiny --image busybox --network n --availability-zone cloud-a:ha mover --wait"),
    );
    assert!(holder.join().unwrap(), "the server's QEMU appeared");
    let seen = watch.stop();
    assert!(
        seen.contains(&"BUILD".to_owned()),
        "statuses while booting: {seen:?}"
    );
    assert_eq!(vm["OS-EXT-SRV-ATTR:host"], "ha", "{vm}");
    // A client on the other host watches the guest's boot id across the move.
    s.ok(&w(
        "vm create client --vcpus 0.25 --memory 256MiB --network n --host hb --driver netns",
    ));
    let ip: Ipv4Addr = s.json(&["vm", "show", "mover"])["ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let before = page_via(&s, "client", ip);
    assert!(before.starts_with("name=mover"), "{before}");

    let watch = Watch::start(&s, "mover");
    os.ok(
        &s,
        &w("server migrate --live-migration --host hb mover --wait"),
    );
    let seen = watch.stop();
    assert!(
        seen.contains(&"MIGRATING".to_owned()),
        "statuses while moving: {seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("ACTIVE"), "{seen:?}");
    let show = os.json(&s, &["server", "show", "mover"]);
    assert_eq!(show["OS-EXT-SRV-ATTR:host"], "hb", "{show}");
    assert_eq!(show["status"], "ACTIVE");
    assert_eq!(s.json(&["vm", "show", "mover"])["host"], "hb");
    let after = page_via(&s, "client", ip);
    assert_eq!(
        field(&after, "boot"),
        field(&before, "boot"),
        "the guest kept running: {before} / {after}"
    );
    let copies = qemu_copies(&s.dir, "mover");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].0, "hb", "{copies:?}");

    // A live migration to where it is, or of a stopped server, is refused as Nova does.
    let e = os.fails(&w("server migrate --live-migration --host hb mover"));
    assert!(e.contains("to current host"), "{e}");
    os.ok(&s, &["server", "delete", "--wait", "mover"]);
    assert!(qemu_copies(&s.dir, "mover").is_empty());
}

/// The unmodified client against a controller on HTTPS: with the controller's CA as `cacert`
/// (`OS_CACERT`) it authenticates and lists; without it, it refuses the certificate.
#[test]
fn openstack_client_trusts_the_controllers_ca_over_https() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = 20000 + (rand::random::<u16>() % 12000);
    let mut server = Command::new(env!("CARGO_BIN_EXE_kangaroo"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--tls", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ca = dir.path().join("tls/ca.pem");
    let url = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let up = loop {
        let ok = ca.exists()
            && Command::new("curl")
                .args(["-fsS", "-m", "1", "--cacert", ca.to_str().unwrap()])
                .arg(format!("{url}/health"))
                .output()
                .is_ok_and(|o| o.status.success());
        if ok || Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !up {
        let _ = server.kill();
        panic!("kangaroo serve --tls did not come up on {url}");
    }
    let mut os = Osc::at(&url, dir.path());
    let (ok, out, err) = os.run(&["flavor", "list", "-f", "json"]);
    assert!(!ok, "trusted a certificate no public CA signed: {out}");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("SSL"),
        "{err}"
    );
    os.env.push(("OS_CACERT", ca.display().to_string()));
    let (ok, out, err) = os.run(&["flavor", "list", "-f", "json"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(ok, "openstack flavor list with OS_CACERT: {out}{err}");
    let flavors: Value = serde_json::from_str(&out).unwrap();
    assert!(
        names(&flavors, "Name").contains(&"m1.small".to_owned()),
        "{out}"
    );
}
