//! Secure tunnels across hosts (root, in namespaces): hosts A and B on an underlay bridge, each
//! with a key and the other as a peer with `encryption = "required"`, one nested VM behind each.
//! Checked in each mode: ping and TCP across; a capture on the underlay holds no byte of the
//! inner payload (while a capture on the VM holds it, so the search can find it) and no plain
//! VXLAN between the hosts; plain VXLAN sent with A's own address is dropped and counted on B; a
//! captured datagram sent again is dropped as a replay; a peer configured with the wrong key gets
//! no traffic through and B counts the failed handshakes; B restarted with its key on file is
//! reached again.
//!
//! Without root the tests print `skipping: <reason>` and pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Guest MTU that fits a secure tunnel on a 1500-byte underlay: 1500 − 50 (VXLAN) − 60.
const SECURE_GUEST_MTU: &str = "1390";
/// The pattern the pings carry (`ping -p`): "kangaroo-secret-".
const PATTERN_HEX: &str = "6b616e6761726f6f2d7365637265742d";

/// A capture written to a file, stopped on drop.
struct Pcap(Option<Child>, std::path::PathBuf);

impl Pcap {
    fn start(ns: &Netns, ifname: &str, path: std::path::PathBuf, filter: &[&str]) -> Pcap {
        let mut args = vec![
            "netns", "exec", &ns.0, "timeout", "120", "tcpdump", "-i", ifname, "-nn", "-U", "-s",
            "0", "-w",
        ];
        let p = path.to_str().unwrap().to_owned();
        args.push(&p);
        args.extend_from_slice(filter);
        let c = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // tcpdump needs a moment before it captures.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        Pcap(Some(c), path)
    }

    /// Stops the capture; returns the file's bytes.
    fn stop(mut self) -> Vec<u8> {
        if let Some(c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait_with_output();
        }
        std::fs::read(&self.1).unwrap_or_default()
    }
}

impl Drop for Pcap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The packets of a pcap file (classic format, Ethernet link type).
fn pcap_packets(file: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        if at + len > file.len() {
            break;
        }
        out.push(&file[at..at + len]);
        at += len;
    }
    out
}

/// UDP payloads to `dport` in a list of Ethernet/IPv4 packets.
/// UDP payloads to `dst` (an IPv4 address's four bytes) and `dport`.
fn udp_payloads_to<'a>(packets: &[&'a [u8]], dst: &[u8], dport: u16) -> Vec<&'a [u8]> {
    packets
        .iter()
        .filter(|p| p.get(30..34) == Some(dst))
        .flat_map(|p| udp_payloads(&[*p], dport))
        .collect()
}

fn udp_payloads<'a>(packets: &[&'a [u8]], dport: u16) -> Vec<&'a [u8]> {
    packets
        .iter()
        .filter_map(|p| {
            if p.get(12..14)? != [0x08, 0x00] || *p.get(23)? != 17 {
                return None;
            }
            let ihl = usize::from(p.get(14)? & 0x0f) * 4;
            let udp = p.get(14 + ihl..)?;
            (u16::from_be_bytes([*udp.first()?, *udp.get(1)?]) != 0).then_some(())?;
            (u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) == dport).then(|| &udp[8..])
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn counter(v: &Value, name: &str) -> u64 {
    v["counters"][name].as_u64().unwrap_or(0)
}

/// Sends `payload` as one UDP datagram from `ns` (bound to `from`) to `to`.
fn send_udp(ns: &Netns, from: &str, to: &str, port: u16, payload: &[u8]) {
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{from}',0))\ns.sendto(bytes.fromhex('{}'),('{to}',{port}))\n",
        hex(payload)
    );
    let o = ns.exec(&["python3", "-c", &code]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A host's configuration: one port, the uplink, a key, and its peer.
fn config(mode: &str, vm: &Vm, local: &str, key_file: &str, peer: Option<(&str, &str)>) -> String {
    let mut c = format!(
        "mode = \"{mode}\"\n[[port]]\ninterface = \"{}\"\nvni = 100\n\
         [uplink]\ninterface = \"ul0\"\naddress = \"{local}\"\n\
         [secure]\nkey_file = \"{key_file}\"\nkeepalive_secs = 2\n",
        vm.host_if
    );
    if let Some((addr, key)) = peer {
        c += &format!("[[peer]]\naddress = \"{addr}\"\npublic_key = \"{key}\"\n");
    }
    c
}

/// The host's public key (created in `key_file` if new), through `kangaroo-switch public-key`.
fn public_key(dir: &tempdir::Dir, text: &str) -> String {
    let path = dir.0.join("key-only.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kangaroo-switch"))
        .args(["public-key", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn secure_tunnels_encrypt_authenticate_and_survive_a_restart_in_every_mode() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    for tool in ["tcpdump", "python3"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            println!("skipping: {tool} is not installed (scripts/install-deps.sh installs it)");
            return;
        }
    }
    let _g = exclusive();
    for mode in modes(&["tc", "xdp", "packet", "afxdp"]) {
        secure_in(mode);
    }
}

fn secure_in(mode: &str) {
    let started = Instant::now();
    let ul = underlay_bridge();
    let (a_ip, b_ip) = ("10.201.0.1", "10.201.0.2");
    let ha = underlay_host(&ul, "sa", a_ip, mode == "xdp");
    let hb = underlay_host(&ul, "sb", b_ip, mode == "xdp");
    let a1 = vm(&ha, 1, "192.168.91.1");
    let b1 = vm(&hb, 2, "192.168.91.2");
    for v in [&a1, &b1] {
        ok(&[
            "ip",
            "-n",
            &v.ns.0,
            "link",
            "set",
            "eth0",
            "mtu",
            SECURE_GUEST_MTU,
        ]);
    }
    let keys = tempdir::Dir::new();
    let (ka, kb) = (keys.0.join("a.key"), keys.0.join("b.key"));
    let (ka, kb) = (ka.to_str().unwrap(), kb.to_str().unwrap());
    let pub_a = public_key(&keys, &config(mode, &a1, a_ip, ka, None));
    let pub_b = public_key(&keys, &config(mode, &b1, b_ip, kb, None));
    assert_ne!(pub_a, pub_b);
    let cfg_b = config(mode, &b1, b_ip, kb, Some((a_ip, &pub_a)));
    let (da, dir_a) = Daemon::start(&ha, &config(mode, &a1, a_ip, ka, Some((b_ip, &pub_b))));
    let (db, dir_b) = Daemon::start(&hb, &cfg_b);

    // Traffic crosses, and the underlay sees none of it in clear.
    let cap_ul = Pcap::start(&ul, "br0", keys.0.join("ul.pcap"), &["udp"]);
    let cap_vm = Pcap::start(&b1.ns, "eth0", keys.0.join("vm.pcap"), &["icmp"]);
    assert!(reachable(&a1, &b1.ip, 10), "{mode}: A's VM reaches B's");
    let o = a1.ns.exec(&[
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "-W",
        "1",
        "-p",
        PATTERN_HEX,
        "-s",
        "1200",
        &b1.ip,
    ]);
    assert!(o.status.success(), "{mode}: pings with the pattern");
    let (bps, _) = iperf(&a1, &b1, 3, false);
    println!(
        "{mode}: TCP through the secure tunnel: {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 1e6, "{mode}: TCP crosses ({bps} bit/s)");
    let ul_file = cap_ul.stop();
    let vm_file = cap_vm.stop();
    let pattern: Vec<u8> = (0..PATTERN_HEX.len() / 2)
        .map(|i| u8::from_str_radix(&PATTERN_HEX[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        contains(&vm_file, &pattern),
        "{mode}: the VM's capture holds the pattern (the search works)"
    );
    let ul_packets = pcap_packets(&ul_file);
    assert!(
        !contains(&ul_file, &pattern),
        "{mode}: the underlay capture holds no inner payload"
    );
    let tunnelled = udp_payloads(&ul_packets, 51820);
    assert!(
        tunnelled.len() > 10,
        "{mode}: the traffic went through the secure port ({} datagrams)",
        tunnelled.len()
    );
    assert!(
        udp_payloads(&ul_packets, 4789).is_empty(),
        "{mode}: no plain VXLAN between the hosts"
    );
    let sa = secure(&dir_a);
    assert_eq!(sa["public_key"], Value::String(pub_a.clone()));
    assert_eq!(sa["peers"][0]["path"], "direct", "{mode}: {sa}");
    assert!(counter(&sa, "encrypted") > 10, "{sa}");
    assert!(
        sa["peers"][0]["rtt_ms"].is_u64() || secure(&dir_b)["peers"][0]["rtt_ms"].is_u64(),
        "{mode}: a handshake round trip is measured: {sa}"
    );

    // Plain VXLAN with A's own address is dropped on B, however well-formed.
    let before = counter(&secure(&dir_b), "cleartext_dropped");
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 100, 0];
    vx.extend_from_slice(&[0xff; 6]);
    vx.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x06]);
    vx.extend_from_slice(&[0; 28]);
    for _ in 0..3 {
        send_udp(&ha, a_ip, b_ip, 4789, &vx);
    }
    std::thread::sleep(Duration::from_millis(300));
    let sb = secure(&dir_b);
    assert_eq!(
        counter(&sb, "cleartext_dropped") - before,
        3,
        "{mode}: plain VXLAN from a secure peer: {sb}"
    );

    // A captured data message from A to B sent again is a replay. (One from B to A would
    // name A's session index, which B does not know: `invalid`, not a replay.)
    let b_addr: Vec<u8> = b_ip.split('.').map(|o| o.parse::<u8>().unwrap()).collect();
    let data = udp_payloads_to(&ul_packets, &b_addr, 51820)
        .into_iter()
        .find(|p| p.first() == Some(&4) && p.len() > 100)
        .expect("a data message from A to B in the capture");
    let before = counter(&sb, "replayed");
    send_udp(&ha, a_ip, b_ip, 51820, data);
    std::thread::sleep(Duration::from_millis(300));
    let sb = secure(&dir_b);
    assert_eq!(
        counter(&sb, "replayed") - before,
        1,
        "{mode}: a replayed message is dropped and counted: {sb}"
    );

    // B restarts with the key on file: A is answered again.
    drop(db.stop());
    let (db, dir_b) = Daemon::start(&hb, &cfg_b);
    let t = Instant::now();
    assert!(
        reachable(&a1, &b1.ip, 15),
        "{mode}: B is reached after its restart"
    );
    println!(
        "{mode}: reached B {:.2} s after its restart",
        t.elapsed().as_secs_f64()
    );

    // A configured with a wrong key for B gets nothing through; B counts the handshakes.
    let rx_before = secure(&dir_b)["peers"][0]["rx_packets"].as_u64().unwrap();
    let (okr, out) = ctl(&dir_a, &["remove-peer", b_ip]);
    assert!(okr, "{out}");
    let wrong = public_key(
        &keys,
        &config(mode, &a1, a_ip, &format!("{ka}.other"), None),
    );
    let (oka, out) = ctl(&dir_a, &["add-peer", b_ip, "--public-key", &wrong]);
    assert!(oka, "{out}");
    assert!(
        !ping(&a1, &b1.ip, 3),
        "{mode}: nothing crosses with a wrong key"
    );
    let sb = secure(&dir_b);
    assert!(
        counter(&sb, "auth_failed") >= 1,
        "{mode}: B refused the handshakes: {sb}"
    );
    assert_eq!(
        sb["peers"][0]["rx_packets"].as_u64().unwrap(),
        rx_before,
        "{mode}: nothing was taken from the impostor: {sb}"
    );
    // The right key again.
    assert!(ctl(&dir_a, &["remove-peer", b_ip]).0);
    let (oka, out) = ctl(&dir_a, &["add-peer", b_ip, "--public-key", &pub_b]);
    assert!(oka, "{out}");
    assert!(reachable(&a1, &b1.ip, 10), "{mode}: the right key works");

    let report = db.stop();
    assert!(report["secure"]["decrypted"].as_u64().unwrap_or(0) > 0);
    drop(da.stop());
    println!(
        "{mode}: secure tunnel checks in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
