//! Secure tunnels across NAT (root, in namespaces). An "internet" router namespace joins a
//! rendezvous host and two sites; a site is either a host on a public address or a host behind
//! a NAT namespace doing nftables masquerade (`fully-random` for a symmetric NAT, which gives
//! every flow its own port). One nested VM behind each host; the hosts know each other's keys
//! and VTEP addresses but not where they are: the rendezvous tells them.
//!
//! - One host behind a NAT: the path opens direct, and the public host sees the NAT's address.
//! - Both behind separate NATs: hole punching opens a direct path.
//! - Both behind symmetric NATs: no direct path opens; the relay carries the tunnel.
//!
//! In each case the VMs ping and exchange TCP. Without root the test prints `skipping: <reason>`
//! and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Guest MTU on a 1500-byte underlay when a relay may carry the tunnel: 1500 − 50 − 60 − 12.
const GUEST_MTU: &str = "1378";
const RV_IP: &str = "198.51.102.2";

/// A veth pair between `a` (`a_if`, `a_ip`/24) and `b` (`b_if`, `b_ip`/24), both up.
fn link(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    ok(&[
        "ip", "link", "add", a_if, "netns", &a.0, "type", "veth", "peer", "name", b_if, "netns",
        &b.0,
    ]);
    for (ns, ifname, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
        ok(&[
            "ip",
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            ifname,
        ]);
        ok(&["ip", "-n", &ns.0, "link", "set", ifname, "up"]);
    }
}

fn default_route(ns: &Netns, via: &str) {
    ok(&["ip", "-n", &ns.0, "route", "add", "default", "via", via]);
}

fn forwarding(ns: &Netns) {
    ok(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
}

/// How a site reaches the internet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Site {
    Public,
    Nat,
    Symmetric,
}

/// A site: the host (and its NAT, if any). `n` numbers the site's subnets.
struct Host {
    ns: Netns,
    _nat: Option<Netns>,
    vtep: String,
    /// The address the internet sees it at.
    public_ip: String,
}

fn site(inet: &Netns, n: u8, kind: Site) -> Host {
    let (inet_ip, wan_ip) = (
        format!("198.51.{}.1", 100 + n),
        format!("198.51.{}.2", 100 + n),
    );
    let host = Netns::new(&format!("h{n}"));
    if kind == Site::Public {
        link(inet, &format!("s{n}"), &inet_ip, &host, "ul0", &wan_ip);
        default_route(&host, &inet_ip);
        return Host {
            ns: host,
            _nat: None,
            vtep: wan_ip.clone(),
            public_ip: wan_ip,
        };
    }
    let nat = Netns::new(&format!("nat{n}"));
    link(inet, &format!("s{n}"), &inet_ip, &nat, "wan0", &wan_ip);
    default_route(&nat, &inet_ip);
    let (lan_gw, vtep) = (format!("10.{n}.0.254"), format!("10.{n}.0.1"));
    link(&nat, "lan0", &lan_gw, &host, "ul0", &vtep);
    default_route(&host, &lan_gw);
    forwarding(&nat);
    let masquerade = if kind == Site::Symmetric {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    for cmd in [
        "add table ip nat".to_owned(),
        "add chain ip nat post { type nat hook postrouting priority 100 ; }".to_owned(),
        format!("add rule ip nat post oifname wan0 {masquerade}"),
    ] {
        let o = nat.exec(&["nft", &cmd]);
        assert!(
            o.status.success(),
            "nft {cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Host {
        ns: host,
        _nat: Some(nat),
        vtep,
        public_ip: wan_ip,
    }
}

/// The rendezvous process, stopped on drop.
struct Rendezvous(Option<Child>);

impl Rendezvous {
    /// Stops it; the counters it printed.
    fn stop(mut self) -> Value {
        let c = self.0.take().unwrap();
        ok(&["kill", "-TERM", &c.id().to_string()]);
        let out = c.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kangaroo-switch")
}

fn stdout_of(args: &[&str]) -> String {
    let o = Command::new(bin()).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn host_config(
    vm: &Vm,
    h: &Host,
    key_file: &str,
    rv_key: &str,
    peer: Option<(&str, &str)>,
) -> String {
    let mut c = format!(
        "mode = \"tc\"\n[[port]]\ninterface = \"{}\"\nvni = 100\n\
         [uplink]\ninterface = \"ul0\"\naddress = \"{}\"\n\
         [secure]\nkey_file = \"{key_file}\"\nkeepalive_secs = 2\n\
         rendezvous = \"{RV_IP}:51820\"\nrendezvous_key = \"{rv_key}\"\n",
        vm.host_if, h.vtep
    );
    if let Some((addr, key)) = peer {
        c += &format!("[[peer]]\naddress = \"{addr}\"\npublic_key = \"{key}\"\n");
    }
    c
}

fn path(dir: &tempdir::Dir) -> String {
    secure(dir)["peers"][0]["path"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn secure_tunnels_open_direct_through_nat_and_relay_through_symmetric_nat() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    if Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        println!("skipping: nft is not installed (scripts/install-deps.sh installs nftables)");
        return;
    }
    let _g = shared();
    for (a, b, want) in [
        (Site::Nat, Site::Public, "direct"),
        (Site::Nat, Site::Nat, "direct"),
        (Site::Symmetric, Site::Symmetric, "relayed"),
    ] {
        across(a, b, want);
    }
}

fn across(kind_a: Site, kind_b: Site, want: &str) {
    let started = Instant::now();
    let what = format!("{kind_a:?} to {kind_b:?}");
    let inet = Netns::new("inet");
    forwarding(&inet);
    let rv_ns = Netns::new("rv");
    link(&inet, "s2", "198.51.102.1", &rv_ns, "wan0", RV_IP);
    default_route(&rv_ns, "198.51.102.1");
    let ha = site(&inet, 0, kind_a);
    let hb = site(&inet, 1, kind_b);
    let a1 = vm(&ha.ns, 1, "192.168.93.1");
    let b1 = vm(&hb.ns, 2, "192.168.93.2");
    for v in [&a1, &b1] {
        ok(&["ip", "-n", &v.ns.0, "link", "set", "eth0", "mtu", GUEST_MTU]);
    }

    let keys = tempdir::Dir::new();
    let key = |name: &str| keys.0.join(name).to_str().unwrap().to_owned();
    let rv_cfg = keys.0.join("rv.toml");
    let write_rv = |members: &str| {
        std::fs::write(
            &rv_cfg,
            format!(
                "listen = \"{RV_IP}:51820\"\nkey_file = \"{}\"\n{members}",
                key("rv.key")
            ),
        )
        .unwrap();
    };
    write_rv("");
    let rv_key = stdout_of(&["rendezvous", "-c", rv_cfg.to_str().unwrap(), "--public-key"]);
    let key_only = |vm: &Vm, h: &Host, file: &str| {
        let p = keys.0.join(format!("{file}.toml"));
        std::fs::write(&p, host_config(vm, h, &key(file), &rv_key, None)).unwrap();
        stdout_of(&["public-key", "-c", p.to_str().unwrap()])
    };
    let (pub_a, pub_b) = (key_only(&a1, &ha, "a.key"), key_only(&b1, &hb, "b.key"));
    write_rv(&format!(
        "[[member]]\nvtep = \"{}\"\npublic_key = \"{pub_a}\"\n[[member]]\nvtep = \"{}\"\npublic_key = \"{pub_b}\"\n",
        ha.vtep, hb.vtep
    ));
    let rv = Rendezvous(Some(
        Command::new("ip")
            .args(["netns", "exec", &rv_ns.0, bin(), "rendezvous", "-c"])
            .arg(&rv_cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let (da, dir_a) = Daemon::start(
        &ha.ns,
        &host_config(&a1, &ha, &key("a.key"), &rv_key, Some((&hb.vtep, &pub_b))),
    );
    let (db, dir_b) = Daemon::start(
        &hb.ns,
        &host_config(&b1, &hb, &key("b.key"), &rv_key, Some((&ha.vtep, &pub_a))),
    );

    // The VMs reach each other, and the path settles to what the NATs allow.
    let t = Instant::now();
    let reached = reachable(&a1, &b1.ip, 30);
    assert!(
        reached,
        "{what}: A's VM reaches B's: {} {}",
        secure(&dir_a),
        secure(&dir_b)
    );
    let first = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && (path(&dir_a) != want || path(&dir_b) != want) {
        let _ = ping(&a1, &b1.ip, 1);
    }
    let (sa, sb) = (secure(&dir_a), secure(&dir_b));
    println!(
        "{what}: first ping after {:.1} s, path {} / {}; A sees itself at {}, B sees A at {}",
        first.as_secs_f64(),
        sa["peers"][0]["path"],
        sb["peers"][0]["path"],
        sa["public_endpoint"],
        sb["peers"][0]["endpoint"]
    );
    assert_eq!(sa["peers"][0]["path"], want, "{what}: A's path: {sa}");
    assert_eq!(sb["peers"][0]["path"], want, "{what}: B's path: {sb}");
    assert!(
        sa["public_endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("{}:", ha.public_ip))),
        "{what}: the rendezvous told A its public endpoint: {sa}"
    );
    assert_eq!(sa["rendezvous"]["path"], "direct", "{what}: {sa}");
    if want == "direct" {
        assert!(
            sb["peers"][0]["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with(&format!("{}:", ha.public_ip))),
            "{what}: B sends to A's public endpoint: {sb}"
        );
    }
    assert!(ping(&a1, &b1.ip, 3), "{what}: pings cross");
    let (bps, _) = iperf(&a1, &b1, 2, false);
    println!("{what}: TCP {:.1} Mbit/s ({want})", bps / 1e6);
    assert!(bps > 1e6, "{what}: TCP crosses ({bps} bit/s)");

    let (ra, rb) = (da.stop(), db.stop());
    let report = rv.stop();
    let relayed = report["counters"]["relay_forwarded"].as_u64().unwrap_or(0);
    println!(
        "{what}: rendezvous passed on {relayed} datagrams; A relayed_tx {} probes {}; {:.1} s",
        ra["secure"]["relayed_tx"],
        ra["secure"]["probes"],
        started.elapsed().as_secs_f64()
    );
    if want == "relayed" {
        assert!(
            relayed > 10,
            "{what}: the relay carried the traffic: {report}"
        );
        assert!(
            rb["secure"]["relayed_rx"].as_u64().unwrap_or(0) > 10,
            "{rb}"
        );
    }
}
