//! End to end on real interfaces (root): nested VMs as network namespaces with veth pairs into a
//! host namespace that runs `kangaroo-switch run` in packet mode. Ping both ways, TCP with the
//! guests' default offloads, UDP, and port security against spoofed MAC and IP addresses.
//!
//! Without root (or without `ip`/`iperf3`) the tests print `skipping: <reason>` and pass; CI
//! runs as root, so there they run. Every namespace is created with a name unique to this process
//! and removed on drop, also when a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn ok(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("needs root for network namespaces and AF_PACKET".into());
    }
    for tool in ["ip", "iperf3", "ping"] {
        if Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!(
                "{tool} is not installed (scripts/install-deps.sh installs it)"
            ));
        }
    }
    None
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace removed on drop.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Netns {
        let name = format!(
            "kgr{}-{}-{role}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ok(&["ip", "netns", "add", &name]);
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A nested VM: a namespace whose eth0 is one end of a veth pair; the other end, `host_if`, is in
/// the host namespace.
struct Vm {
    ns: Netns,
    host_if: String,
    ip: String,
}

fn vm(host: &Netns, idx: u32, ip: &str) -> Vm {
    vm_with_queues(host, idx, ip, 1)
}

/// A VM whose veth pair has `queues` receive and transmit queues on each end.
fn vm_with_queues(host: &Netns, idx: u32, ip: &str, queues: u32) -> Vm {
    let ns = Netns::new(&format!("vm{idx}"));
    let host_if = format!("kgr{}p{idx}", SEQ.load(Ordering::Relaxed));
    let q = queues.to_string();
    ok(&[
        "ip",
        "link",
        "add",
        &host_if,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "netns",
        &host.0,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "netns",
        &ns.0,
    ]);
    ok(&["ip", "-n", &host.0, "link", "set", &host_if, "up"]);
    ok(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip",
        "-n",
        &ns.0,
        "link",
        "set",
        "eth0",
        "address",
        &format!("02:00:00:00:00:{idx:02x}"),
    ]);
    ok(&["ip", "-n", &ns.0, "link", "set", "eth0", "up"]);
    Vm {
        ns,
        host_if,
        ip: ip.to_owned(),
    }
}

/// The switch daemon, stopped on drop.
struct Daemon(Option<Child>);

impl Daemon {
    /// Starts the daemon with `config` plus a control socket in a fresh directory.
    fn start(host: &Netns, config: &str) -> (Daemon, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("switch.toml");
        let socket = dir.0.join("switch.sock");
        std::fs::write(
            &path,
            format!("control_socket = {:?}\n{config}", socket.to_str().unwrap()),
        )
        .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &host.0,
                env!("CARGO_BIN_EXE_kangaroo-switch"),
                "run",
                "--config",
                path.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the control socket (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            socket.exists(),
            "control socket {} appeared",
            socket.display()
        );
        (Daemon(Some(child)), dir)
    }

    /// SIGTERM, wait, and return the counters it printed.
    fn stop(mut self) -> Value {
        let child = self.0.take().unwrap();
        ok(&["kill", "-TERM", &child.id().to_string()]);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "daemon exit: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "daemon report: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let d = std::env::temp_dir().join(format!(
                "kgr-netns-{}-{:x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `kangaroo-switch ctl --socket <dir>/switch.sock ARGS`; returns success and output.
fn ctl(dir: &tempdir::Dir, args: &[&str]) -> (bool, String) {
    let socket = dir.0.join("switch.sock");
    let mut full = vec!["--socket", socket.to_str().unwrap()];
    full.extend_from_slice(args);
    let mut cmd = vec!["ctl"];
    cmd.extend(full);
    let out = Command::new(env!("CARGO_BIN_EXE_kangaroo-switch"))
        .args(&cmd)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ping(from: &Vm, to: &str, count: u32) -> bool {
    from.ns
        .exec(&["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "1", to])
        .status
        .success()
}

/// Runs iperf3 from `client` to `server` for `secs`; returns the received bits/s.
fn iperf(client: &Vm, server: &Vm, secs: u32, udp: bool) -> (f64, Value) {
    let port = 5201 + SEQ.fetch_add(1, Ordering::Relaxed) % 1000;
    let mut srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.ns.0,
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut args = vec!["timeout", "60", "iperf3", "-J", "-c", &server.ip, "-t"];
    let secs_s = secs.to_string();
    let port_s = port.to_string();
    args.extend_from_slice(&[&secs_s, "-p", &port_s]);
    if udp {
        args.extend_from_slice(&["-u", "-b", "100M"]);
    }
    let out = client.ns.exec(&args);
    let _ = srv.kill();
    let _ = srv.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let bps = if udp {
        v.pointer("/end/sum/bits_per_second")
    } else {
        v.pointer("/end/sum_received/bits_per_second")
    };
    (bps.and_then(Value::as_f64).unwrap_or(0.0), v)
}

/// True if an XDP program is attached to `ifname` in `ns`.
fn xdp_attached(ns: &Netns, ifname: &str) -> bool {
    let o = sh(&["ip", "-n", &ns.0, "-d", "link", "show", "dev", ifname]);
    let text = String::from_utf8_lossy(&o.stdout);
    text.contains("prog/xdp") || text.contains(" xdp ") || text.contains("xdpgeneric")
}

#[test]
fn packet_mode_switches_real_traffic_and_enforces_port_security() {
    switches_real_traffic("packet");
}

#[test]
fn afxdp_mode_switches_real_traffic_and_enforces_port_security() {
    switches_real_traffic("afxdp");
}

fn switches_real_traffic(mode: &str) {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let started = Instant::now();
    let host = Netns::new("host");
    let vm1 = vm(&host, 1, "192.168.77.1");
    let vm2 = vm(&host, 2, "192.168.77.2");
    let config = format!(
        "mode = \"{mode}\"\n[[port]]\ninterface = \"{}\"\nvni = 100\n[[port]]\ninterface = \"{}\"\nvni = 100\nmac = \"02:00:00:00:00:02\"\nips = [\"192.168.77.2\"]\n",
        vm1.host_if, vm2.host_if
    );
    let vm3 = vm(&host, 3, "192.168.77.3");
    let (daemon, dir) = Daemon::start(&host, &config);
    if mode == "afxdp" {
        assert!(
            xdp_attached(&host, &vm1.host_if) && xdp_attached(&host, &vm2.host_if),
            "the XDP program is attached to every port"
        );
    }

    assert!(ping(&vm1, &vm2.ip, 3), "vm1 pings vm2 through the switch");
    assert!(ping(&vm2, &vm1.ip, 3), "vm2 pings vm1");
    let tso = vm1.ns.exec(&["ethtool", "-k", "eth0"]);
    let offloads = String::from_utf8_lossy(&tso.stdout).to_string();
    let (tcp, _) = iperf(&vm1, &vm2, 2, false);
    println!(
        "TCP vm1 -> vm2 through kangaroo-switch ({mode} mode): {:.2} Gbit/s",
        tcp / 1e9
    );
    assert!(
        tcp > 50e6,
        "TCP with default offloads flows ({tcp} bit/s); guest offloads: {offloads}"
    );
    let (udp, v) = iperf(&vm2, &vm1, 1, true);
    let lost = v
        .pointer("/end/sum/lost_percent")
        .and_then(Value::as_f64)
        .unwrap_or(100.0);
    println!(
        "UDP vm2 -> vm1: {:.0} Mbit/s offered, {lost:.2}% lost",
        udp / 1e6
    );
    assert!(
        udp > 10e6 && lost < 10.0,
        "UDP flows: {udp} bit/s, {lost}% lost"
    );

    // Hot-add vm3's port through the control API; vm3 is reachable at once.
    assert!(
        !ping(&vm3, &vm1.ip, 1),
        "vm3 is not switched before its port is added"
    );
    let (added, out) = ctl(&dir, &["add-port", &vm3.host_if, "--vni", "100"]);
    assert!(added, "add-port: {out}");
    assert!(ping(&vm3, &vm1.ip, 3), "vm3 reaches vm1 after the hot add");
    let (_, ports) = ctl(&dir, &["--json", "ports"]);
    let ports: Value = serde_json::from_str(&ports).unwrap();
    assert_eq!(ports.as_array().map(Vec::len), Some(3), "{ports}");
    // Bad requests are refused with a message naming the problem; the data plane keeps running.
    let (ok1, out) = ctl(&dir, &["add-port", &vm3.host_if, "--vni", "100"]);
    assert!(
        !ok1 && out.contains("409") && out.contains("already a port"),
        "{out}"
    );
    let (ok2, out) = ctl(&dir, &["add-port", "kgr-nonexistent", "--vni", "100"]);
    assert!(!ok2 && out.contains("400"), "{out}");
    let (ok3, out) = ctl(&dir, &["add-port", "x", "--vni", "99999999"]);
    assert!(!ok3 && out.contains("VNI"), "{out}");
    let (ok4, out) = ctl(&dir, &["remove-port", "kgr-nonexistent"]);
    assert!(!ok4 && out.contains("404"), "{out}");
    assert!(
        ping(&vm1, &vm2.ip, 1),
        "the data plane still works after bad requests"
    );
    let (removed, out) = ctl(&dir, &["remove-port", &vm3.host_if]);
    assert!(removed, "{out}");
    assert!(
        !ping(&vm3, &vm1.ip, 1),
        "vm3 is cut off once its port is removed"
    );
    assert!(
        !xdp_attached(&host, &vm3.host_if),
        "removing a port detaches the XDP program"
    );

    // Spoofed source IP from vm2: an extra address used as the ping source.
    ok(&[
        "ip",
        "-n",
        &vm2.ns.0,
        "addr",
        "add",
        "192.168.77.66/24",
        "dev",
        "eth0",
    ]);
    assert!(
        !vm2.ns
            .exec(&[
                "ping",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                "192.168.77.66",
                &vm1.ip
            ])
            .status
            .success(),
        "spoofed IP must not get through"
    );
    ok(&[
        "ip",
        "-n",
        &vm2.ns.0,
        "addr",
        "del",
        "192.168.77.66/24",
        "dev",
        "eth0",
    ]);
    // Spoofed MAC on vm2.
    ok(&[
        "ip",
        "-n",
        &vm2.ns.0,
        "link",
        "set",
        "eth0",
        "address",
        "02:00:00:00:00:66",
    ]);
    ok(&["ip", "-n", &vm2.ns.0, "neigh", "flush", "all"]);
    assert!(!ping(&vm2, &vm1.ip, 2), "spoofed MAC must not get through");

    // The rest of the control API, straight over the socket.
    let socket = dir.0.join("switch.sock");
    let (_, fdb) = ctl(&dir, &["--json", "fdb"]);
    assert!(
        fdb.contains("02:00:00:00:00:01"),
        "vm1's MAC is learned: {fdb}"
    );
    let req = kangaroo_switch::control::request;
    let (st, _) = req(
        &socket,
        "POST",
        "/v1/fdb",
        Some(
            &serde_json::json!({"vni": 100, "mac": "02:00:00:00:00:aa", "interface": vm1.host_if}),
        ),
    )
    .unwrap();
    assert_eq!(st, 204);
    let (st, _) = req(&socket, "DELETE", "/v1/fdb/100/02:00:00:00:00:aa", None).unwrap();
    assert_eq!(st, 204);
    let (st, body) = req(&socket, "DELETE", "/v1/fdb/100/02:00:00:00:00:aa", None).unwrap();
    assert_eq!(st, 404, "{body}");
    let (st, _) = req(
        &socket,
        "POST",
        "/v1/arp",
        Some(&serde_json::json!({"vni": 100, "ip": "192.168.77.9", "mac": "02:00:00:00:00:09"})),
    )
    .unwrap();
    assert_eq!(st, 204);
    let (st, body) = req(
        &socket,
        "POST",
        "/v1/arp",
        Some(&serde_json::json!({"vni": 100, "ip": "x", "mac": "02:00:00:00:00:09"})),
    )
    .unwrap();
    assert!(st == 400 && body.contains("\"field\":\"ip\""), "{body}");
    let (st, body) = req(
        &socket,
        "POST",
        "/v1/ports",
        Some(&serde_json::json!({"interface": "a", "vni": 1, "colour": 1})),
    )
    .unwrap();
    assert!(st == 400 && body.contains("unknown field"), "{body}");
    let (st, metrics) = req(&socket, "GET", "/metrics", None).unwrap();
    assert_eq!(st, 200);
    assert!(
        metrics.contains("kangaroo_switch_drops_total{reason=\"spoofed_ip\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "kangaroo_switch_port_rx_packets_total{{interface=\"{}\"}}",
            vm1.host_if
        )),
        "{metrics}"
    );
    assert_eq!(req(&socket, "GET", "/v1/health", None).unwrap().0, 200);
    assert_eq!(req(&socket, "GET", "/v1/nothing", None).unwrap().0, 404);

    let (_, live) = ctl(&dir, &["--json", "stats"]);
    let live: Value = serde_json::from_str(&live).unwrap();
    assert!(
        live["drops"]["spoofed_ip"].as_u64().unwrap_or(0) > 0,
        "the spoofed IP shows in live counters: {live}"
    );
    if mode == "afxdp" {
        let to_socket = live["datapath"]["counters"]["to_socket"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            to_socket > 100,
            "the XDP program steers frames to AF_XDP: {live}"
        );
        let completed: u64 = live["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["backend"]["checksums_completed"].as_u64())
            .sum();
        assert!(
            completed > 0,
            "partial checksums from guests with default offloads are completed: {live}"
        );
    }
    let report = daemon.stop();
    for v in [&vm1, &vm2, &vm3] {
        assert!(
            !xdp_attached(&host, &v.host_if),
            "no XDP program is left on {} after shutdown",
            v.host_if
        );
    }
    assert!(
        !dir.0.join("switch.sock").exists(),
        "the control socket is removed on shutdown"
    );
    let drops = &report["drops"];
    assert!(
        drops["spoofed_ip"].as_u64().unwrap_or(0) > 0,
        "spoofed IP counted: {report}"
    );
    assert!(
        drops["spoofed_mac"].as_u64().unwrap_or(0) > 0,
        "spoofed MAC counted: {report}"
    );
    assert!(
        report["events"]["forwarded"].as_u64().unwrap_or(0) > 100,
        "{report}"
    );
    println!("netns test took {:?}", started.elapsed());
}

#[test]
fn two_datapath_workers_in_each_mode() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    for mode in ["packet", "afxdp"] {
        let host = Netns::new("host");
        let vm1 = vm_with_queues(&host, 1, "192.168.78.1", 2);
        let vm2 = vm_with_queues(&host, 2, "192.168.78.2", 2);
        let config = format!(
            "mode = \"{mode}\"\n[datapath]\ncores = [0, 1]\n[[port]]\ninterface = \"{}\"\nvni = 5\n[[port]]\ninterface = \"{}\"\nvni = 5\n",
            vm1.host_if, vm2.host_if
        );
        let (daemon, dir) = Daemon::start(&host, &config);
        assert!(ping(&vm1, &vm2.ip, 3), "{mode}: vm1 pings vm2");
        assert!(ping(&vm2, &vm1.ip, 3), "{mode}: vm2 pings vm1");
        let (tcp, _) = iperf(&vm1, &vm2, 2, false);
        println!("TCP through two {mode} workers: {:.2} Gbit/s", tcp / 1e9);
        assert!(
            tcp > 50e6,
            "{mode}: TCP flows through two workers ({tcp} bit/s)"
        );
        let (_, live) = ctl(&dir, &["--json", "stats"]);
        let live: Value = serde_json::from_str(&live).unwrap();
        assert_eq!(live["workers"].as_u64(), Some(2), "{live}");
        assert!(
            live["events"]["replicated"].as_u64().unwrap_or(0) > 0,
            "{mode}: what one worker learns reaches the other: {live}"
        );
        // A hot-added port opens on both workers.
        let vm3 = vm_with_queues(&host, 3, "192.168.78.3", 2);
        let (added, out) = ctl(&dir, &["add-port", &vm3.host_if, "--vni", "5"]);
        assert!(added, "{mode}: {out}");
        assert!(ping(&vm3, &vm1.ip, 3), "{mode}: vm3 reaches vm1");
        // One queue cannot feed two AF_XDP workers: refused, and nothing is left half-open.
        if mode == "afxdp" {
            let vm4 = vm(&host, 4, "192.168.78.4");
            let (added, out) = ctl(&dir, &["add-port", &vm4.host_if, "--vni", "5"]);
            assert!(!added && out.contains("receive queue"), "{out}");
            assert!(!xdp_attached(&host, &vm4.host_if), "rolled back");
            let (_, ports) = ctl(&dir, &["--json", "ports"]);
            assert!(!ports.contains(&vm4.host_if), "{ports}");
        }
        let report = daemon.stop();
        assert!(report["events"]["forwarded"].as_u64().unwrap_or(0) > 0);
        for v in [&vm1, &vm2, &vm3] {
            assert!(!xdp_attached(&host, &v.host_if), "{mode}: detached on stop");
        }
    }
}
