//! Soak (root, in namespaces): two hosts running `kangaroo-switch` in its default mode, eight
//! nested VMs, four steady UDP flows (two across hosts, one local on each host), and churn
//! every second for the whole run: a port added and removed, a peer added and removed, a MAC
//! moving between the hosts, static FDB and ARP entries changed over the control API.
//!
//! Held, and printed: no steady flow loses more than 0.1% of its frames; each switch's memory
//! (RSS) after warm-up stays flat (start and end printed); and the counters add up on each
//! switch: every frame its ports and uplink received entered its eBPF programs once, and every
//! frame those programs handed to user space was received there.
//!
//! `KGR_SOAK_SECS` sets the length (default 60, CI; 600 for the long run). Every loop is
//! bounded by that time and by a count. Without root the test prints `skipping: <reason>`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const FRAMES_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/frames.py");

/// Frames per second of each steady flow.
const FLOW_PPS: u64 = 2000;
/// Payload bytes of each flow's datagrams.
const FLOW_LEN: u64 = 400;

/// No IPv6 in `ns`: nothing but the test's own traffic crosses its interfaces, so the frame
/// accounting below covers every frame.
fn quiet(ns: &Netns) {
    let _ = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    let _ = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
}

fn tenant_vm(host: &Netns, idx: u32, ip: &str) -> Vm {
    let v = vm(host, idx, ip);
    quiet(&v.ns);
    ok(&["ip", "-n", &v.ns.0, "link", "set", "eth0", "mtu", "1450"]);
    v
}

fn stats(dir: &tempdir::Dir) -> Value {
    let (ok, out) = ctl(dir, &["--json", "stats"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

/// Frames `ifname` in `ns` received, and dropped on receive, by the kernel's counters.
fn rx_packets(ns: &Netns, ifname: &str) -> (u64, u64) {
    let read = |what: &str| {
        let o = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/statistics/{what}")]);
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    (read("rx_packets"), read("rx_dropped"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What one switch's counters say, at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Frames received by the kernel on the switch's ports and uplink.
    wire_rx: u64,
    /// Of those, dropped before any program saw them.
    wire_dropped: u64,
    /// Frames the eBPF programs decided on, by any outcome.
    programs: u64,
    /// Of those, the ones handed to user space (punt device, or the UDP socket).
    handed_up: u64,
    /// Frames user space received on ports and uplink.
    user_rx: u64,
}

/// The eBPF programs' outcome counters: one per frame (`fast_csum` and `malformed` annotate
/// a frame that also has an outcome).
const OUTCOMES: [&str; 14] = [
    "storm_bum",
    "storm_new_mac",
    "to_socket",
    "no_socket",
    "not_port",
    "redirect_failed",
    "uplink_to_socket",
    "uplink_not_peer",
    "uplink_pass",
    "fast_local",
    "fast_arp_reply",
    "fast_encap",
    "fast_decap",
    "fast_redirect_failed",
];

fn tally(host: &Netns, dir: &tempdir::Dir, ifaces: &[&str]) -> Tally {
    let s = stats(dir);
    let c = &s["datapath"]["counters"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let mut t = Tally {
        programs: OUTCOMES.iter().map(|k| n(k)).sum(),
        handed_up: n("to_socket") + n("uplink_to_socket") + n("uplink_not_peer"),
        user_rx: s["uplink"]["rx_packets"].as_u64().unwrap_or(0),
        ..Tally::default()
    };
    for p in s["ports"].as_array().unwrap() {
        t.user_rx += p["counters"]["rx_packets"].as_u64().unwrap_or(0);
    }
    for i in ifaces {
        let (rx, dropped) = rx_packets(host, i);
        t.wire_rx += rx;
        t.wire_dropped += dropped;
    }
    t
}

/// A UDP stream from `client` to `server` for `secs` seconds at [`FLOW_PPS`].
struct Flow {
    name: String,
    server: Child,
    client: Child,
}

fn flow(name: &str, client: &Vm, server: &Vm, port: u16, secs: u64) -> Flow {
    let p = port.to_string();
    let server_p = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.ns.0,
            "iperf3",
            "-s",
            "-1",
            "-J",
            "-p",
            &p,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let rate = (FLOW_PPS * FLOW_LEN * 8).to_string();
    let client_p = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client.ns.0,
            "iperf3",
            "-u",
            "-c",
            &server.ip,
            "-p",
            &p,
            "-b",
            &rate,
            "-l",
            &FLOW_LEN.to_string(),
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Flow {
        name: name.to_owned(),
        server: server_p,
        client: client_p,
    }
}

impl Flow {
    /// (packets sent, packets lost) as the receiving side counted them.
    fn finish(self) -> (u64, u64) {
        let c = self.client.wait_with_output().unwrap();
        let s = self.server.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&s.stdout).unwrap_or(Value::Null);
        let sum = &v["end"]["sum"];
        let (packets, lost) = (sum["packets"].as_u64(), sum["lost_packets"].as_u64());
        assert!(
            packets.is_some() && lost.is_some(),
            "flow {}: no receiver report; client said {}",
            self.name,
            String::from_utf8_lossy(&c.stdout)
        );
        (packets.unwrap_or(0), lost.unwrap_or(0))
    }
}

#[test]
fn soak_with_churn_keeps_flows_memory_and_counters() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let secs: u64 = std::env::var("KGR_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .max(20);
    let ul = underlay_bridge();
    let (a_ip, b_ip, ghost) = ("10.203.0.1", "10.203.0.2", "10.203.0.9");
    let ha = underlay_host(&ul, "ha", a_ip, false);
    let hb = underlay_host(&ul, "hb", b_ip, false);
    quiet(&ha);
    quiet(&hb);
    quiet(&ul);
    let net = |i: u32| format!("192.168.93.{i}");
    // Four VMs on each host; the fourth of each is the roamer's launch pad.
    let a: Vec<Vm> = (1..=4).map(|i| tenant_vm(&ha, i, &net(i))).collect();
    let b: Vec<Vm> = (5..=8).map(|i| tenant_vm(&hb, i, &net(i))).collect();
    // The churned port: a VM on A whose port comes and goes.
    let churn = tenant_vm(&ha, 9, &net(9));
    let config = |me: &str, vms: &[Vm], peer: &str| {
        let mut c = String::new();
        for v in vms {
            c += &format!("[[port]]\ninterface = \"{}\"\nvni = 100\n", v.host_if);
        }
        c += &format!(
            "[uplink]\ninterface = \"ul0\"\naddress = \"{me}\"\n[[peer]]\naddress = \"{peer}\"\n"
        );
        c
    };
    let (da, dir_a) = Daemon::start(&ha, &config(a_ip, &a, b_ip));
    let (db, dir_b) = Daemon::start(&hb, &config(b_ip, &b, a_ip));
    let pid_a = da.0.as_ref().unwrap().id();
    let pid_b = db.0.as_ref().unwrap().id();
    // Everyone learns everyone.
    for (x, y) in [
        (&a[0], &b[0]),
        (&b[1], &a[1]),
        (&a[2], &a[3]),
        (&b[2], &b[3]),
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(x, &y.ip, 1) && Instant::now() < deadline {}
        assert!(ping(x, &y.ip, 2), "{} reaches {}", x.ip, y.ip);
    }
    let ifs_a: Vec<&str> = a
        .iter()
        .chain([&churn])
        .map(|v| v.host_if.as_str())
        .chain(["ul0"])
        .collect();
    let ifs_b: Vec<&str> = b
        .iter()
        .map(|v| v.host_if.as_str())
        .chain(["ul0"])
        .collect();
    let t0 = (tally(&ha, &dir_a, &ifs_a), tally(&hb, &dir_b, &ifs_b));

    let flows = vec![
        flow("A1->B1 (across)", &a[0], &b[0], 5301, secs),
        flow("B2->A2 (across)", &b[1], &a[1], 5302, secs),
        flow("A3->A4 (on A)", &a[2], &a[3], 5303, secs),
        flow("B3->B4 (on B)", &b[2], &b[3], 5304, secs),
    ];
    let started = Instant::now();
    let warmup = Duration::from_secs((secs / 6).clamp(5, 30));
    let end = started + Duration::from_secs(secs);
    let mut rss_start = None;
    let mut ops = 0u32;
    let mut failed_ops = Vec::new();
    let roamer = "02:00:00:00:00:77";
    let static_mac = "02:00:00:00:00:88";
    // One churn step per second, bounded by the run's length and a count.
    for tick in 0..(secs as u32 + 5) {
        if Instant::now() + Duration::from_millis(1500) > end {
            break;
        }
        if rss_start.is_none() && started.elapsed() >= warmup {
            rss_start = Some((rss_kib(pid_a), rss_kib(pid_b)));
        }
        let step = |ok_: bool, what: String, failed: &mut Vec<String>| {
            if !ok_ {
                failed.push(what);
            }
        };
        // A port added, then removed.
        let (o, out) = if tick % 2 == 0 {
            ctl(&dir_a, &["add-port", &churn.host_if, "--vni", "100"])
        } else {
            ctl(&dir_a, &["remove-port", &churn.host_if])
        };
        step(o, format!("tick {tick} port: {out}"), &mut failed_ops);
        // A peer that does not exist added, then removed.
        let (o, out) = if tick % 2 == 0 {
            ctl(&dir_a, &["add-peer", ghost])
        } else {
            ctl(&dir_a, &["remove-peer", ghost])
        };
        step(o, format!("tick {tick} peer: {out}"), &mut failed_ops);
        // A MAC announcing itself on A, then on B: it moves between the hosts.
        let (host_vm, ip) = if tick % 2 == 0 {
            (&a[3], net(77))
        } else {
            (&b[3], net(77))
        };
        let o = host_vm
            .ns
            .exec(&["python3", FRAMES_PY, "garp", "eth0", roamer, &ip]);
        step(
            o.status.success(),
            format!("tick {tick} garp: {}", String::from_utf8_lossy(&o.stderr)),
            &mut failed_ops,
        );
        // Static entries over the API: an FDB entry and an ARP entry added, the FDB one removed.
        let body = if tick % 2 == 0 {
            format!(
                r#"{{"vni": 100, "mac": "{static_mac}", "interface": "{}"}}"#,
                a[2].host_if
            )
        } else {
            String::new()
        };
        let (o, out) = if tick % 2 == 0 {
            api(&dir_a, "POST", "/v1/fdb", &body)
        } else {
            api(&dir_a, "DELETE", &format!("/v1/fdb/100/{static_mac}"), "")
        };
        step(o, format!("tick {tick} fdb: {out}"), &mut failed_ops);
        let arp = format!(
            r#"{{"vni": 100, "ip": "{}", "mac": "02:00:00:00:01:{:02x}"}}"#,
            net(100 + tick % 50),
            tick % 250
        );
        let (o, out) = api(&dir_b, "POST", "/v1/arp", &arp);
        step(o, format!("tick {tick} arp: {out}"), &mut failed_ops);
        ops += 5;
        let next = started + Duration::from_secs(u64::from(tick) + 1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let rss_end = (rss_kib(pid_a), rss_kib(pid_b));
    // The roamer's last announcement was from B: A has it behind B's address.
    let o = b[3]
        .ns
        .exec(&["python3", FRAMES_PY, "garp", "eth0", roamer, &net(77)]);
    assert!(o.status.success());
    let roamer_at_a = {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let (o, out) = ctl(&dir_a, &["--json", "fdb"]);
            assert!(o, "{out}");
            let v: Value = serde_json::from_str(&out).unwrap();
            let e = v
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["mac"] == roamer)
                .cloned();
            if e.as_ref().is_some_and(|e| e["dest"]["vtep"] == b_ip) || Instant::now() > deadline {
                break e;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut results = Vec::new();
    for f in flows {
        let name = f.name.clone();
        results.push((name, f.finish()));
    }
    // Quiet: nothing in flight when the counters are read.
    std::thread::sleep(Duration::from_secs(1));
    let t1 = (tally(&ha, &dir_a, &ifs_a), tally(&hb, &dir_b, &ifs_b));

    println!(
        "soak: {secs} s, {ops} churn operations ({} failed)",
        failed_ops.len()
    );
    for (name, (packets, lost)) in &results {
        println!(
            "  flow {name}: {packets} frames, {lost} lost ({:.3}%)",
            100.0 * *lost as f64 / (*packets).max(1) as f64
        );
    }
    let rss_start = rss_start.unwrap_or((0, 0));
    println!(
        "  RSS after {} s warm-up -> end: A {} -> {} KiB, B {} -> {} KiB",
        warmup.as_secs(),
        rss_start.0,
        rss_end.0,
        rss_start.1,
        rss_end.1
    );
    let mut accounts = Vec::new();
    for (name, before, after) in [("A", t0.0, t1.0), ("B", t0.1, t1.1)] {
        let d = |f: fn(&Tally) -> u64| f(&after) - f(&before);
        let (wire, dropped, progs, up, user) = (
            d(|t| t.wire_rx),
            d(|t| t.wire_dropped),
            d(|t| t.programs),
            d(|t| t.handed_up),
            d(|t| t.user_rx),
        );
        println!(
            "  switch {name}: {wire} frames received on its interfaces ({dropped} dropped before the programs), {progs} decided by its programs, {up} handed to user space, {user} received there"
        );
        accounts.push((name, wire, dropped, progs, up, user));
    }
    for (name, st) in [("A", stats(&dir_a)), ("B", stats(&dir_b))] {
        let drops: Vec<String> = st["drops"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("  switch {name} drops: {}", drops.join(", "));
    }

    assert!(
        failed_ops.is_empty(),
        "churn operations failed: {failed_ops:?}"
    );
    assert_eq!(
        roamer_at_a.as_ref().map(|e| e["dest"]["vtep"].clone()),
        Some(Value::from(b_ip)),
        "the roaming MAC is found where it last spoke: {roamer_at_a:?}"
    );
    for (name, (packets, lost)) in &results {
        let expected = FLOW_PPS * secs / 2;
        assert!(
            *packets > expected,
            "flow {name} carried {packets} frames, expected about {}",
            FLOW_PPS * secs
        );
        assert!(
            *lost * 1000 <= *packets,
            "flow {name} lost {lost} of {packets} frames (over 0.1%)"
        );
    }
    for ((start, end), name) in [
        ((rss_start.0, rss_end.0), "A"),
        ((rss_start.1, rss_end.1), "B"),
    ] {
        assert!(start > 0 && end > 0, "RSS of switch {name} read");
        assert!(
            end <= start + start / 20 + 1024,
            "switch {name}'s RSS grew after warm-up: {start} -> {end} KiB"
        );
    }
    for (name, wire, dropped, progs, up, user) in accounts {
        assert_eq!(
            wire - dropped,
            progs,
            "switch {name}: every frame received entered the programs once"
        );
        assert_eq!(
            up, user,
            "switch {name}: every frame handed to user space was received there"
        );
    }
    drop(churn);
    da.stop();
    db.stop();
}

/// A raw control API request through `kangaroo-switch ctl`'s socket, with curl.
fn api(dir: &tempdir::Dir, method: &str, path: &str, body: &str) -> (bool, String) {
    let sock = dir.0.join("switch.sock");
    let mut args = vec![
        "-sS".to_owned(),
        "-o".to_owned(),
        "/dev/stdout".to_owned(),
        "-w".to_owned(),
        " %{http_code}".to_owned(),
        "--unix-socket".to_owned(),
        sock.display().to_string(),
        "-X".to_owned(),
        method.to_owned(),
    ];
    if !body.is_empty() {
        args.extend([
            "-H".to_owned(),
            "content-type: application/json".to_owned(),
            "-d".to_owned(),
            body.to_owned(),
        ]);
    }
    args.push(format!("http://switch{path}"));
    let o = Command::new("curl").args(&args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let code = out.rsplit(' ').next().unwrap_or("").trim().to_owned();
    (o.status.success() && code.starts_with('2'), out)
}
