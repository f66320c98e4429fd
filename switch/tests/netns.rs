//! End to end on real interfaces (root): nested VMs as network namespaces with veth pairs into a
//! host namespace that runs `kangaroo-switch run` in packet mode. Ping both ways, TCP with the
//! guests' default offloads, UDP, and port security against spoofed MAC and IP addresses.
//!
//! Without root (or without `ip`/`iperf3`) the tests print `skipping: <reason>` and pass; CI
//! runs as root, so there they run. Every namespace is created with a name unique to this process
//! and removed on drop, also when a test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::*;
use serde_json::Value;

#[test]
fn packet_mode_switches_real_traffic_and_enforces_port_security() {
    switches_real_traffic("packet");
}

#[test]
fn afxdp_mode_switches_real_traffic_and_enforces_port_security() {
    switches_real_traffic("afxdp");
}

#[test]
fn xdp_mode_switches_real_traffic_and_enforces_port_security() {
    switches_real_traffic("xdp");
}

#[test]
fn tc_mode_switches_real_traffic_and_enforces_port_security() {
    switches_real_traffic("tc");
}

fn switches_real_traffic(mode: &str) {
    let _cores = shared();
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
    if mode == "xdp" {
        for v in [&vm1, &vm2, &vm3] {
            xdp_pass(&v.ns, "eth0");
        }
    }
    let (daemon, dir) = Daemon::start(&host, &config);
    if mode != "packet" {
        assert!(
            program_attached(&host, &vm1.host_if) && program_attached(&host, &vm2.host_if),
            "the {mode} program is attached to every port"
        );
    }

    assert!(ping(&vm1, &vm2.ip, 3), "vm1 pings vm2 through the switch");
    assert!(ping(&vm2, &vm1.ip, 3), "vm2 pings vm1");
    let tso = vm1.ns.exec(&["ethtool", "-k", "eth0"]);
    let offloads = String::from_utf8_lossy(&tso.stdout).to_string();
    // In mode "tc" the guests keep TSO, and the switch sees (and forwards) super-frames.
    let capture = (mode == "tc").then(|| {
        let (ns, port) = (host.0.clone(), vm1.host_if.clone());
        std::thread::spawn(move || tcp_frame_lengths(&ns, &port, 400, 4))
    });
    let (tcp, _) = iperf(&vm1, &vm2, 2, false);
    if let Some(c) = capture {
        let lengths = c.join().unwrap();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        println!(
            "tc: {} TCP frames captured on {}, longest {longest} bytes",
            lengths.len(),
            vm1.host_if
        );
        assert!(
            offloads.contains("tcp-segmentation-offload: on"),
            "the guest keeps TSO in mode tc: {offloads}"
        );
        assert!(
            longest > 1514,
            "GSO super-frames larger than the MTU cross the port: {lengths:?}"
        );
    }
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
        !program_attached(&host, &vm3.host_if),
        "removing a port detaches the program"
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
    let req = kangaroo_control::client::request;
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
    if mode == "xdp" || mode == "tc" {
        let c = &live["datapath"]["counters"];
        assert!(
            c["fast_local"].as_u64().unwrap_or(0) > 1000,
            "known unicast stays in the kernel: {c}"
        );
        if mode == "xdp" {
            assert!(
                c["fast_csum"].as_u64().unwrap_or(0) > 0,
                "partial checksums completed in the kernel: {c}"
            );
        } else {
            assert_eq!(
                c["fast_csum"].as_u64(),
                Some(0),
                "tc keeps checksum offload metadata: nothing to complete: {c}"
            );
        }
        // Steady state: once learned, unicast between two VMs bypasses user space.
        let user_rx = |v: &Value| -> u64 {
            v["ports"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["counters"]["rx_packets"].as_u64())
                .sum()
        };
        let fast = |v: &Value| {
            v["datapath"]["counters"]["fast_local"]
                .as_u64()
                .unwrap_or(0)
        };
        // vm2 back to its own MAC (it spoofed one above).
        ok(&[
            "ip",
            "-n",
            &vm2.ns.0,
            "link",
            "set",
            "eth0",
            "address",
            "02:00:00:00:00:02",
        ]);
        for v in [&vm1, &vm2] {
            ok(&["ip", "-n", &v.ns.0, "neigh", "flush", "all"]);
        }
        assert!(ping(&vm1, &vm2.ip, 3), "vm2 reachable again");
        let before = serde_json::from_str::<Value>(&ctl(&dir, &["--json", "stats"]).1).unwrap();
        assert!(vm1
            .ns
            .exec(&["ping", "-c", "30", "-i", "0.02", "-q", &vm2.ip])
            .status
            .success());
        let after = serde_json::from_str::<Value>(&ctl(&dir, &["--json", "stats"]).1).unwrap();
        let (du, df) = (
            user_rx(&after) - user_rx(&before),
            fast(&after) - fast(&before),
        );
        println!("steady state: {df} frames in the kernel fast path, {du} through user space");
        assert!(df >= 60, "60 echo frames took the fast path ({df})");
        assert!(du <= 4, "user space saw almost none of them ({du})");
    } else if mode == "afxdp" {
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
            !program_attached(&host, &v.host_if),
            "no program is left on {} after shutdown",
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
    // Known unicast was switched: by user space, or (mode "xdp") by the kernel fast path.
    let forwarded = report["events"]["forwarded"].as_u64().unwrap_or(0)
        + report["datapath"]["counters"]["fast_local"]
            .as_u64()
            .unwrap_or(0);
    assert!(forwarded > 100, "{report}");
    println!("netns test took {:?}", started.elapsed());
}

#[test]
fn two_datapath_workers_in_each_mode() {
    let _cores = shared();
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    for mode in ["packet", "afxdp", "xdp", "tc"] {
        let host = Netns::new("host");
        let vm1 = vm_with_queues(&host, 1, "192.168.78.1", 2);
        let vm2 = vm_with_queues(&host, 2, "192.168.78.2", 2);
        if mode == "xdp" {
            xdp_pass(&vm1.ns, "eth0");
            xdp_pass(&vm2.ns, "eth0");
        }
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
        if mode == "xdp" {
            xdp_pass(&vm3.ns, "eth0");
        }
        let (added, out) = ctl(&dir, &["add-port", &vm3.host_if, "--vni", "5"]);
        assert!(added, "{mode}: {out}");
        assert!(ping(&vm3, &vm1.ip, 3), "{mode}: vm3 reaches vm1");
        // Removed and added again: every worker opens it afresh (in tc, a new punt device that
        // both workers share, not a stale name). Not in the AF_XDP modes: the kernel releases
        // an AF_XDP socket's queue asynchronously, and an immediate re-add can find it busy.
        if mode == "tc" || mode == "packet" {
            let (removed, out) = ctl(&dir, &["remove-port", &vm3.host_if]);
            assert!(removed, "{mode}: {out}");
            let (added, out) = ctl(&dir, &["add-port", &vm3.host_if, "--vni", "5"]);
            assert!(added, "{mode}: {out}");
            assert!(
                ping(&vm3, &vm1.ip, 3),
                "{mode}: vm3 reaches vm1 after a re-add"
            );
        }
        // One queue cannot feed two AF_XDP workers: refused, and nothing is left half-open.
        // (Packet sockets share a queue through fanout, tc ports through a multi-queue punt
        // device.)
        if mode == "afxdp" || mode == "xdp" {
            let vm4 = vm(&host, 4, "192.168.78.4");
            let (added, out) = ctl(&dir, &["add-port", &vm4.host_if, "--vni", "5"]);
            assert!(!added && out.contains("receive queue"), "{out}");
            assert!(!program_attached(&host, &vm4.host_if), "rolled back");
            let (_, ports) = ctl(&dir, &["--json", "ports"]);
            assert!(!ports.contains(&vm4.host_if), "{ports}");
        }
        let report = daemon.stop();
        assert!(report["events"]["forwarded"].as_u64().unwrap_or(0) > 0);
        for v in [&vm1, &vm2, &vm3] {
            assert!(
                !program_attached(&host, &v.host_if),
                "{mode}: detached on stop"
            );
        }
    }
}

/// Storm control (default limits, default mode): a VM floods broadcast from ever-changing source
/// MACs as fast as a core sends while two other VMs keep a TCP stream; both figures in one run.
#[test]
fn a_broadcast_and_mac_flood_does_not_starve_other_vms() {
    // Alone: the figures compare TCP with and without a storm, not with other tests' traffic.
    let _cores = exclusive();
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let host = Netns::new("host");
    let vm1 = vm(&host, 1, "192.168.79.1");
    let vm2 = vm(&host, 2, "192.168.79.2");
    let vm3 = vm(&host, 3, "192.168.79.3");
    let config = format!(
        "[[port]]\ninterface = \"{}\"\nvni = 9\n[[port]]\ninterface = \"{}\"\nvni = 9\n[[port]]\ninterface = \"{}\"\nvni = 9\n",
        vm1.host_if, vm2.host_if, vm3.host_if
    );
    let (daemon, dir) = Daemon::start(&host, &config);
    assert!(ping(&vm1, &vm2.ip, 3), "vm1 pings vm2");
    assert!(ping(&vm3, &vm1.ip, 3), "vm3 pings vm1");
    let frames_py = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/frames.py");
    // The storm's sender competes with iperf3 for this machine's two cores. To tell that from
    // the switch's doing, the same storm is also sent where the switch never sees it (a veth
    // pair inside vm3 with nothing behind it): the switch is held to >= 80% of the TCP figure
    // under that control storm. Three figures, three times, alternating; the best of each kept
    // (one CI run with two rounds saw 79% on a busy machine; rounds here measure 86-97%).
    ok(&[
        "ip", "-n", &vm3.ns.0, "link", "add", "st0", "type", "veth", "peer", "name", "st1",
    ]);
    ok(&["ip", "-n", &vm3.ns.0, "link", "set", "st0", "up"]);
    ok(&["ip", "-n", &vm3.ns.0, "link", "set", "st1", "up"]);
    let storm_on = |dev: &str| {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &vm3.ns.0, "python3", frames_py, "storm", dev, "5",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut base, mut control, mut stormy, mut sent) = (0.0f64, 0.0f64, 0.0f64, 0u64);
    for _ in 0..3 {
        base = base.max(iperf(&vm1, &vm2, 3, false).0);
        for (dev, figure) in [("st0", &mut control), ("eth0", &mut stormy)] {
            let storm = storm_on(dev);
            std::thread::sleep(std::time::Duration::from_millis(700));
            *figure = figure.max(iperf(&vm1, &vm2, 3, false).0);
            let out = storm.wait_with_output().unwrap();
            if dev == "eth0" {
                sent += String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    let (_, live) = ctl(&dir, &["--json", "stats"]);
    let live: Value = serde_json::from_str(&live).unwrap();
    // Dropped by user space, and (default mode tc) by the kernel before user space.
    let user = |r: &str| live["drops"][r].as_u64().unwrap_or(0);
    let kernel = |r: &str| live["datapath"]["counters"][r].as_u64().unwrap_or(0);
    let drops = |r: &str| user(r) + kernel(r);
    println!(
        "storm: {sent} broadcast frames from new MACs in 3 x 5 s; TCP vm1 -> vm2 {:.2} Gbit/s without a storm, {:.2} with the control storm the switch does not see, {:.2} with the storm through the switch ({:.0}% of the control, {:.0}% of no storm); dropped storm_bum {} (kernel {}), storm_new_mac {} (kernel {}); FDB {} entries",
        base / 1e9,
        control / 1e9,
        stormy / 1e9,
        100.0 * stormy / control.max(1.0),
        100.0 * stormy / base.max(1.0),
        drops("storm_bum"),
        kernel("storm_bum"),
        drops("storm_new_mac"),
        kernel("storm_new_mac"),
        live["fdb_entries"]
    );
    assert!(sent > 100_000, "the storm was a storm ({sent} frames)");
    assert!(
        drops("storm_new_mac") > sent / 2,
        "most of the flood's new MACs are refused: {live}"
    );
    assert!(
        live["fdb_entries"].as_u64().unwrap_or(u64::MAX) < 10_000,
        "the FDB did not fill with the flood's MACs: {live}"
    );
    // The kernel drops the storm's excess before user space (per-CPU buckets in the port
    // program), so the storm costs the other VMs about what the same storm costs where the
    // switch never sees it.
    assert!(
        stormy >= 0.8 * control,
        "TCP during the storm through the switch ({stormy} bit/s) is at least 80% of TCP during \
         the same storm outside it ({control} bit/s)"
    );
    assert!(ping(&vm3, &vm1.ip, 2), "the storming VM itself still works");
    daemon.stop();
}

/// kill -9 under traffic: a supervisor that restarts the switch like the systemd unit does
/// (`packaging/kangaroo-switch.service`: `Restart=always`, `RestartSec=200ms`) brings it back,
/// nothing stale blocks the new process, and pings resume within 2 s.
#[test]
fn kill_9_under_traffic_the_supervisor_restarts_it_and_traffic_resumes() {
    let _cores = shared();
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let host = Netns::new("host");
    let vm1 = vm(&host, 1, "192.168.81.1");
    let vm2 = vm(&host, 2, "192.168.81.2");
    let dir = tempdir::Dir::new();
    let config = dir.0.join("switch.toml");
    let socket = dir.0.join("switch.sock");
    std::fs::write(
        &config,
        format!(
            "control_socket = {:?}\n[[port]]\ninterface = \"{}\"\nvni = 3\n[[port]]\ninterface = \"{}\"\nvni = 3\n",
            socket.to_str().unwrap(),
            vm1.host_if,
            vm2.host_if
        ),
    )
    .unwrap();
    // At most 5 starts, 200 ms apart, as the unit's Restart=always / RestartSec=200ms.
    let supervisor = format!(
        "for i in 1 2 3 4 5; do {} run --config {} >/dev/null 2>>{}/switch.log; sleep 0.2; done",
        env!("CARGO_BIN_EXE_kangaroo-switch"),
        config.display(),
        dir.0.display()
    );
    /// Stops the supervisor, then the switch it started, also when the test fails.
    struct Supervised(std::process::Child, String);
    impl Drop for Supervised {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = sh(&["pkill", "-TERM", "-f", &self.1]);
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
    // Anchored: the supervisor's own command line holds the same words.
    let pattern = format!(
        "^{} run --config {}",
        env!("CARGO_BIN_EXE_kangaroo-switch"),
        config.display()
    );
    let sup = Supervised(
        std::process::Command::new("ip")
            .args(["netns", "exec", &host.0, "bash", "-c", &supervisor])
            .spawn()
            .unwrap(),
        pattern.clone(),
    );
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        ping(&vm1, &vm2.ip, 3),
        "vm1 pings vm2 through the supervised switch"
    );
    let pinger = std::process::Command::new("ip")
        .args([
            "netns", "exec", &vm1.ns.0, "ping", "-D", "-i", "0.02", "-c", "250", "-W", "1", &vm2.ip,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pids = sh(&["pgrep", "-f", &pattern]);
    let pid = String::from_utf8_lossy(&pids.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    assert!(!pid.is_empty(), "the switch runs");
    ok(&["kill", "-9", &pid]);
    let out = pinger.wait_with_output().unwrap();
    let times = reply_times(&String::from_utf8_lossy(&out.stdout));
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    let log = std::fs::read_to_string(dir.0.join("switch.log")).unwrap_or_default();
    let restarts = log.matches("kangaroo-switch running").count();
    println!(
        "kill -9 under traffic: {} of 250 pings answered, longest gap {gap:.3} s, {restarts} starts",
        times.len()
    );
    drop(sup);
    assert_eq!(restarts, 2, "started, killed, started again: {log}");
    assert!(
        times.len() > 150,
        "pings flowed before and after: {}",
        times.len()
    );
    assert!(
        gap < 2.0,
        "traffic resumed within 2 s of the kill ({gap:.3} s)"
    );
}
