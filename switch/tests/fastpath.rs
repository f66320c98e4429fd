//! The kernel fast paths on synthetic frames (`BPF_PROG_TEST_RUN`, root): every branch of the
//! XDP and the tc port and uplink programs, byte for byte against what user space produces for
//! the same input, and frames cut at every length never upset the (verifier-approved) programs
//! and are counted.
//!
//! Two veth ends (`fpa`, `fpb`) in the test's own network namespace stand for the port and the uplink (they are
//! needed as real ifindexes; no frame is sent). Without root the tests print `skipping: ...`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;

use common::*;
use kangaroo_switch::mac::MacAddr;
use kangaroo_switch::tunnel::{EncapTemplate, LocalVtep, Vni};
use kangaroo_switch::xdp::{AttachMode, Attachment, Hook, Program, XdpSteering};
use kangaroo_xdp as abi;

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
const IP_A: [u8; 4] = [192, 168, 5, 1];
const IP_B: [u8; 4] = [192, 168, 5, 2];
const IP_C: [u8; 4] = [192, 168, 5, 3];
const VNI: u32 = 100;

/// A namespace with a veth pair `a`/`b` in it, and the programs loaded from inside it.
struct Bench {
    _ns: Netns,
    steer: XdpSteering,
    a: u32,
    b: u32,
}

fn ifindex(ns: &Netns, name: &str) -> u32 {
    let o = ns.exec(&["cat", &format!("/sys/class/net/{name}/ifindex")]);
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn bench() -> Option<Bench> {
    bench_at(Hook::Xdp)
}

fn bench_at(hook: Hook) -> Option<Bench> {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return None;
    }
    let ns = Netns::new("fp");
    ok(&[
        "ip", "-n", &ns.0, "link", "add", "fpa", "type", "veth", "peer", "name", "fpb",
    ]);
    ok(&["ip", "-n", &ns.0, "link", "set", "fpa", "up"]);
    ok(&["ip", "-n", &ns.0, "link", "set", "fpb", "up"]);
    let (a, b) = (ifindex(&ns, "fpa"), ifindex(&ns, "fpb"));
    // The maps resolve ifindexes in the namespace of the process that updates them, and test
    // runs look the ingress device up there too: enter the namespace for the whole test.
    let file = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
    nix_setns(&file);
    let mut steer = XdpSteering::load_hook(hook, false, true, None).unwrap();
    let port = abi::Port {
        slot: 0,
        flags: abi::PORT_F_STEER | abi::PORT_F_FAST,
        vni: VNI,
        ..Default::default()
    };
    steer.set_port_entry(a, &port).unwrap();
    steer.add_redirect_target(a).unwrap();
    steer.add_redirect_target(b).unwrap();
    steer
        .fdb_set(VNI, MAC_A, Some((abi::DEST_PORT, a)))
        .unwrap();
    Some(Bench {
        _ns: ns,
        steer,
        a,
        b,
    })
}

/// Moves this test's thread into the network namespace `f`.
fn nix_setns(f: &std::fs::File) {
    kangaroo_switch::sys::enter_netns(f).unwrap();
}

fn counter(s: &XdpSteering, c: abi::Counter) -> u64 {
    s.counters()[c as usize]
}

fn tcp(src: ([u8; 6], [u8; 4]), dst: ([u8; 6], [u8; 4]), payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src.1, dst.1, 64)
        .tcp(40000, 5201, 1, 65535);
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    f
}

/// `f` with its TCP checksum replaced by the pseudo-header sum, as a guest with checksum offload
/// hands it over.
fn partial(f: &[u8]) -> Vec<u8> {
    use kangaroo_switch::checksum::{add, fold};
    let mut p = f.to_vec();
    let l4_len = (p.len() - 34) as u16;
    let s = fold(add(add(add(0, &p[26..34]), &[0, 6]), &l4_len.to_be_bytes()));
    p[50..52].copy_from_slice(&s.to_be_bytes());
    p
}

/// A broadcast ARP request from A (MAC_A, IP_A) for IP_B.
fn arp_request() -> Vec<u8> {
    let mut req = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A, [0xff; 6])
        .arp(
            etherparse::ArpPacket::new(
                etherparse::ArpHardwareId::ETHERNET,
                etherparse::EtherType::IPV4,
                etherparse::ArpOperation::REQUEST,
                &MAC_A,
                &IP_A,
                &[0; 6],
                &IP_B,
            )
            .unwrap(),
        )
        .write(&mut req)
        .unwrap();
    req
}

fn local(mac: [u8; 6]) -> LocalVtep {
    LocalVtep {
        addr: Ipv4Addr::new(10, 0, 0, 1),
        mac: MacAddr::from_slice(&mac).unwrap(),
        udp_port: 4789,
    }
}

#[test]
fn known_local_unicast_is_redirected_with_its_checksum_completed() {
    let Some(mut t) = bench() else { return };
    t.steer
        .fdb_set(VNI, MAC_B, Some((abi::DEST_PORT, t.b)))
        .unwrap();
    let good = tcp(
        (MAC_A, IP_A),
        (MAC_B, IP_B),
        b"payload through the fast path",
    );
    let (action, out) = t
        .steer
        .test_run(Program::Port, &partial(&good), t.a)
        .unwrap();
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        out, good,
        "the partial checksum is completed to the real one"
    );
    assert_eq!(counter(&t.steer, abi::Counter::FastLocal), 1);
    assert_eq!(counter(&t.steer, abi::Counter::FastCsum), 1);
    // A finished checksum is left alone.
    let (action, out) = t.steer.test_run(Program::Port, &good, t.a).unwrap();
    assert_eq!((action, out), (XDP_REDIRECT, good.clone()));
    assert_eq!(counter(&t.steer, abi::Counter::FastCsum), 1);
    // Unknown destination, unlearned source, broadcast: user space's (no socket here: passed).
    for f in [
        tcp((MAC_A, IP_A), (MAC_C, IP_C), b"x"),
        tcp((MAC_C, IP_C), (MAC_B, IP_B), b"x"),
        tcp((MAC_A, IP_A), ([0xff; 6], IP_B), b"x"),
    ] {
        let (action, out) = t.steer.test_run(Program::Port, &f, t.a).unwrap();
        assert_eq!(
            (action, out),
            (XDP_PASS, f),
            "left untouched for user space"
        );
    }
    assert_eq!(counter(&t.steer, abi::Counter::NoSocket), 3);
}

#[test]
fn arp_requests_are_answered_like_user_space_answers_them() {
    let Some(mut t) = bench() else { return };
    t.steer
        .arp_set(VNI, Ipv4Addr::from(IP_B), Some(MAC_B))
        .unwrap();
    let req = arp_request();
    let (action, out) = t.steer.test_run(Program::Port, &req, t.a).unwrap();
    assert_eq!(action, XDP_REDIRECT, "back out of the port");
    let msg = kangaroo_switch::arp::parse(&req[14..]).unwrap();
    let mut expected = [0u8; 64];
    let n = kangaroo_switch::arp::build_reply(
        &msg,
        MacAddr::from_slice(&MAC_B).unwrap(),
        &mut expected,
    )
    .unwrap();
    assert_eq!(
        &out[..n],
        &expected[..n],
        "byte-identical to user space's reply"
    );
    assert_eq!(counter(&t.steer, abi::Counter::FastArpReply), 1);
    // An address the map does not know goes to user space.
    let mut other = req.clone();
    other[38..42].copy_from_slice(&[192, 168, 5, 99]);
    assert_eq!(
        t.steer.test_run(Program::Port, &other, t.a).unwrap().0,
        XDP_PASS
    );
}

#[test]
fn encapsulation_is_byte_identical_to_user_space() {
    let Some(mut t) = bench() else { return };
    let remote = Ipv4Addr::new(10, 0, 0, 2);
    let next_hop = MacAddr::from_slice(&[2, 0, 0, 0, 9, 9]).unwrap();
    let template = EncapTemplate::new(&local([2, 0, 0, 0, 9, 1]), remote, next_hop);
    t.steer
        .vtep_set(
            0,
            Some(&abi::Vtep {
                hdr: *template.bytes(),
                valid: 1,
                addr: u32::from_ne_bytes(remote.octets()),
                uplink: t.b,
                max_inner: 1464,
            }),
        )
        .unwrap();
    t.steer.peer_vnis_set(&[(remote, VNI)]);
    t.steer
        .fdb_set(VNI, MAC_C, Some((abi::DEST_VTEP, 0)))
        .unwrap();
    for payload in [&b"short"[..], &[0x42; 1300][..]] {
        let inner = tcp((MAC_A, IP_A), (MAC_C, IP_C), payload);
        let (action, out) = t
            .steer
            .test_run(Program::Port, &partial(&inner), t.a)
            .unwrap();
        assert_eq!(action, XDP_REDIRECT);
        let mut expected = vec![0u8; inner.len() + 64];
        let n = template
            .encapsulate(Vni::new(VNI).unwrap(), &inner, &mut expected)
            .unwrap();
        assert_eq!(out, expected[..n], "byte-identical to tunnel::encapsulate");
    }
    assert_eq!(counter(&t.steer, abi::Counter::FastEncap), 2);
    // Too big for the underlay: user space (which answers with ICMP).
    let big = tcp((MAC_A, IP_A), (MAC_C, IP_C), &[1; 1460]);
    assert_eq!(
        t.steer.test_run(Program::Port, &big, t.a).unwrap().0,
        XDP_PASS
    );
    // A VNI the peer does not share: user space.
    t.steer.peer_vnis_set(&[(remote, VNI + 1)]);
    let inner = tcp((MAC_A, IP_A), (MAC_C, IP_C), b"x");
    assert_eq!(
        t.steer.test_run(Program::Port, &inner, t.a).unwrap().0,
        XDP_PASS
    );
}

#[test]
fn decapsulation_delivers_the_inner_frame_and_rogue_vxlan_is_left_to_the_kernel() {
    let Some(mut t) = bench() else { return };
    let me = Ipv4Addr::new(10, 0, 0, 1);
    let peer = Ipv4Addr::new(10, 0, 0, 2);
    let up = Attachment {
        ifindex: t.b,
        slot: 1,
        mode: AttachMode::Driver,
    };
    t.steer.set_uplink(&up, me, 4789).unwrap();
    t.steer.add_peer(peer, 0).unwrap();
    t.steer.peer_vnis_set(&[(peer, VNI)]);
    t.steer
        .fdb_set(VNI, MAC_C, Some((abi::DEST_VTEP, 0)))
        .unwrap();
    // The peer's view: from `peer` to us.
    let from_peer = EncapTemplate::new(
        &LocalVtep {
            addr: peer,
            mac: MacAddr::from_slice(&[2, 0, 0, 0, 9, 2]).unwrap(),
            udp_port: 4789,
        },
        me,
        MacAddr::from_slice(&[2, 0, 0, 0, 9, 1]).unwrap(),
    );
    let inner = tcp((MAC_C, IP_C), (MAC_A, IP_A), b"from across the underlay");
    let mut pkt = vec![0u8; inner.len() + 64];
    let n = from_peer
        .encapsulate(Vni::new(VNI).unwrap(), &inner, &mut pkt)
        .unwrap();
    pkt.truncate(n);
    let (action, out) = t.steer.test_run(Program::Uplink, &pkt, t.b).unwrap();
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, inner, "the inner frame, unchanged");
    assert_eq!(counter(&t.steer, abi::Counter::FastDecap), 1);
    // From a stranger: passed to the kernel (the switch's UDP socket drops and counts it).
    let stranger = EncapTemplate::new(
        &LocalVtep {
            addr: Ipv4Addr::new(10, 0, 0, 66),
            mac: MacAddr::from_slice(&[2, 0, 0, 0, 9, 6]).unwrap(),
            udp_port: 4789,
        },
        me,
        MacAddr::from_slice(&[2, 0, 0, 0, 9, 1]).unwrap(),
    );
    let n = stranger
        .encapsulate(Vni::new(VNI).unwrap(), &inner, &mut pkt)
        .unwrap();
    assert_eq!(
        t.steer.test_run(Program::Uplink, &pkt[..n], t.b).unwrap().0,
        XDP_PASS
    );
    assert_eq!(counter(&t.steer, abi::Counter::UplinkNotPeer), 1);
    // The host's own traffic passes untouched.
    let own = tcp((MAC_A, [10, 0, 0, 9]), (MAC_B, [10, 0, 0, 1]), b"ssh");
    let (action, out) = t.steer.test_run(Program::Uplink, &own, t.b).unwrap();
    assert_eq!((action, out), (XDP_PASS, own));
}

#[test]
fn frames_cut_at_every_length_are_handled_and_counted() {
    let Some(mut t) = bench() else { return };
    t.steer
        .fdb_set(VNI, MAC_B, Some((abi::DEST_PORT, t.b)))
        .unwrap();
    t.steer
        .set_uplink(
            &Attachment {
                ifindex: t.b,
                slot: 1,
                mode: AttachMode::Driver,
            },
            Ipv4Addr::new(10, 0, 0, 1),
            4789,
        )
        .unwrap();
    let frame = partial(&tcp((MAC_A, IP_A), (MAC_B, IP_B), &[7; 200]));
    for len in 0..frame.len() {
        for which in [Program::Port, Program::Uplink] {
            let r = t.steer.test_run(which, &frame[..len], t.a);
            // The kernel refuses runs on frames shorter than an Ethernet header; the programs
            // themselves never fail.
            if len >= 14 {
                let (action, _) = r.unwrap();
                assert!(
                    action == XDP_PASS || action == XDP_REDIRECT,
                    "length {len}: action {action}"
                );
            }
        }
    }
    assert!(
        counter(&t.steer, abi::Counter::Malformed) > 0,
        "cuts inside a header the program reads are counted"
    );
}

// The tc programs: the same decisions on socket buffers, offload metadata left alone.

#[test]
fn tc_known_local_unicast_is_redirected_untouched_and_the_rest_is_punted() {
    let Some(mut t) = bench_at(Hook::Tc) else {
        return;
    };
    t.steer
        .fdb_set(VNI, MAC_B, Some((abi::DEST_PORT, t.b)))
        .unwrap();
    let good = tcp((MAC_A, IP_A), (MAC_B, IP_B), b"payload through the tc path");
    // A partial checksum stays partial: the socket buffer says so, the receiver's stack or NIC
    // completes it.
    let (action, out) = t
        .steer
        .test_run(Program::Port, &partial(&good), t.a)
        .unwrap();
    assert_eq!((action, out), (TC_ACT_REDIRECT, partial(&good)));
    assert_eq!(counter(&t.steer, abi::Counter::FastLocal), 1);
    assert_eq!(counter(&t.steer, abi::Counter::FastCsum), 0);
    let slow = [
        tcp((MAC_A, IP_A), (MAC_C, IP_C), b"x"),
        tcp((MAC_C, IP_C), (MAC_B, IP_B), b"x"),
        tcp((MAC_A, IP_A), ([0xff; 6], IP_B), b"x"),
    ];
    // No punt device yet: dropped and counted, never leaked to the host's stack.
    for f in &slow {
        let (action, out) = t.steer.test_run(Program::Port, f, t.a).unwrap();
        assert_eq!((action, &out), (TC_ACT_SHOT, f));
    }
    assert_eq!(counter(&t.steer, abi::Counter::NoSocket), 3);
    // With one: redirected there, unchanged.
    let port = abi::Port {
        slot: 0,
        flags: abi::PORT_F_STEER | abi::PORT_F_FAST,
        vni: VNI,
        punt: t.b,
        ..Default::default()
    };
    t.steer.set_port_entry(t.a, &port).unwrap();
    for f in &slow {
        let (action, out) = t.steer.test_run(Program::Port, f, t.a).unwrap();
        assert_eq!((action, &out), (TC_ACT_REDIRECT, f), "punted untouched");
    }
    assert_eq!(counter(&t.steer, abi::Counter::ToSocket), 3);
    // Not a port (or not steered): the host's stack has it.
    let (action, _) = t.steer.test_run(Program::Port, &good, t.b).unwrap();
    assert_eq!(action, TC_ACT_OK);
    assert_eq!(counter(&t.steer, abi::Counter::NotPort), 1);
}

#[test]
fn tc_arp_replies_and_encapsulation_match_user_space() {
    let Some(mut t) = bench_at(Hook::Tc) else {
        return;
    };
    t.steer
        .arp_set(VNI, Ipv4Addr::from(IP_B), Some(MAC_B))
        .unwrap();
    let req = arp_request();
    let (action, out) = t.steer.test_run(Program::Port, &req, t.a).unwrap();
    assert_eq!(action, TC_ACT_REDIRECT, "back out of the port");
    let msg = kangaroo_switch::arp::parse(&req[14..]).unwrap();
    let mut expected = [0u8; 64];
    let n = kangaroo_switch::arp::build_reply(
        &msg,
        MacAddr::from_slice(&MAC_B).unwrap(),
        &mut expected,
    )
    .unwrap();
    assert_eq!(
        &out[..n],
        &expected[..n],
        "byte-identical to user space's reply"
    );
    assert_eq!(counter(&t.steer, abi::Counter::FastArpReply), 1);

    let remote = Ipv4Addr::new(10, 0, 0, 2);
    let template = EncapTemplate::new(
        &local([2, 0, 0, 0, 9, 1]),
        remote,
        MacAddr::from_slice(&[2, 0, 0, 0, 9, 9]).unwrap(),
    );
    t.steer
        .vtep_set(
            0,
            Some(&abi::Vtep {
                hdr: *template.bytes(),
                valid: 1,
                addr: u32::from_ne_bytes(remote.octets()),
                uplink: t.b,
                max_inner: 1464,
            }),
        )
        .unwrap();
    t.steer.peer_vnis_set(&[(remote, VNI)]);
    t.steer
        .fdb_set(VNI, MAC_C, Some((abi::DEST_VTEP, 0)))
        .unwrap();
    for payload in [&b"short"[..], &[0x42; 1300][..]] {
        let inner = tcp((MAC_A, IP_A), (MAC_C, IP_C), payload);
        let (action, out) = t.steer.test_run(Program::Port, &inner, t.a).unwrap();
        assert_eq!(action, TC_ACT_REDIRECT);
        let mut expected = vec![0u8; inner.len() + 64];
        let n = template
            .encapsulate(Vni::new(VNI).unwrap(), &inner, &mut expected)
            .unwrap();
        assert_eq!(out, expected[..n], "byte-identical to tunnel::encapsulate");
    }
    assert_eq!(counter(&t.steer, abi::Counter::FastEncap), 2);
    // Too big for the underlay: user space (which answers with ICMP); no punt device here.
    let big = tcp((MAC_A, IP_A), (MAC_C, IP_C), &[1; 1460]);
    let (action, out) = t.steer.test_run(Program::Port, &big, t.a).unwrap();
    assert_eq!((action, out), (TC_ACT_SHOT, big));
}

#[test]
fn tc_decapsulation_delivers_the_inner_frame_and_leaves_the_rest_to_the_host_stack() {
    let Some(mut t) = bench_at(Hook::Tc) else {
        return;
    };
    let me = Ipv4Addr::new(10, 0, 0, 1);
    let peer = Ipv4Addr::new(10, 0, 0, 2);
    let up = Attachment {
        ifindex: t.b,
        slot: 1,
        mode: AttachMode::Tc,
    };
    t.steer.set_uplink(&up, me, 4789).unwrap();
    t.steer.add_peer(peer, 0).unwrap();
    t.steer.peer_vnis_set(&[(peer, VNI)]);
    t.steer
        .fdb_set(VNI, MAC_C, Some((abi::DEST_VTEP, 0)))
        .unwrap();
    let from_peer = EncapTemplate::new(
        &LocalVtep {
            addr: peer,
            mac: MacAddr::from_slice(&[2, 0, 0, 0, 9, 2]).unwrap(),
            udp_port: 4789,
        },
        me,
        MacAddr::from_slice(&[2, 0, 0, 0, 9, 1]).unwrap(),
    );
    let inner = tcp((MAC_C, IP_C), (MAC_A, IP_A), b"from across the underlay");
    let mut pkt = vec![0u8; inner.len() + 64];
    let n = from_peer
        .encapsulate(Vni::new(VNI).unwrap(), &inner, &mut pkt)
        .unwrap();
    pkt.truncate(n);
    let (action, out) = t.steer.test_run(Program::Uplink, &pkt, t.b).unwrap();
    assert_eq!(
        (action, out),
        (TC_ACT_REDIRECT, inner.clone()),
        "the inner frame, unchanged"
    );
    assert_eq!(counter(&t.steer, abi::Counter::FastDecap), 1);
    // An unknown inner destination: up the host's stack to the switch's UDP socket, untouched.
    let unknown = tcp((MAC_C, IP_C), (MAC_B, IP_B), b"to a station not learned");
    let n = from_peer
        .encapsulate(Vni::new(VNI).unwrap(), &unknown, &mut pkt)
        .unwrap();
    let (action, out) = t.steer.test_run(Program::Uplink, &pkt[..n], t.b).unwrap();
    assert_eq!((action, out), (TC_ACT_OK, pkt[..n].to_vec()));
    assert_eq!(counter(&t.steer, abi::Counter::UplinkToSocket), 1);
    // The host's own traffic passes untouched.
    let own = tcp((MAC_A, [10, 0, 0, 9]), (MAC_B, [10, 0, 0, 1]), b"ssh");
    let (action, out) = t.steer.test_run(Program::Uplink, &own, t.b).unwrap();
    assert_eq!((action, out), (TC_ACT_OK, own));
}

#[test]
fn tc_frames_cut_at_every_length_are_handled() {
    let Some(mut t) = bench_at(Hook::Tc) else {
        return;
    };
    t.steer
        .fdb_set(VNI, MAC_B, Some((abi::DEST_PORT, t.b)))
        .unwrap();
    t.steer
        .set_uplink(
            &Attachment {
                ifindex: t.b,
                slot: 1,
                mode: AttachMode::Tc,
            },
            Ipv4Addr::new(10, 0, 0, 1),
            4789,
        )
        .unwrap();
    let frame = tcp((MAC_A, IP_A), (MAC_B, IP_B), &[7; 200]);
    let arp = arp_request();
    // VXLAN from a peer, for the uplink program's cuts.
    let (me, peer) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    t.steer.add_peer(peer, 0).unwrap();
    t.steer.peer_vnis_set(&[(peer, VNI)]);
    let from_peer = EncapTemplate::new(
        &LocalVtep {
            addr: peer,
            mac: MacAddr::from_slice(&[2, 0, 0, 0, 9, 2]).unwrap(),
            udp_port: 4789,
        },
        me,
        MacAddr::from_slice(&[2, 0, 0, 0, 9, 1]).unwrap(),
    );
    let mut vxlan = vec![0u8; frame.len() + 64];
    let n = from_peer
        .encapsulate(Vni::new(VNI).unwrap(), &frame, &mut vxlan)
        .unwrap();
    vxlan.truncate(n);
    let mut redirected = 0;
    // The kernel refuses skb test runs of IPv4 frames without a whole IPv4 header (34 bytes
    // with Ethernet) and of a bare Ethernet header; the ARP frame covers the shorter cuts.
    for (f, shortest) in [(&frame, 34), (&arp, 15), (&vxlan, 34)] {
        for len in shortest..f.len() {
            for which in [Program::Port, Program::Uplink] {
                let (action, _) = t
                    .steer
                    .test_run(which, &f[..len], t.a)
                    .unwrap_or_else(|e| panic!("length {len}, {which:?}: {e}"));
                assert!(
                    [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&action),
                    "length {len}: action {action}"
                );
                redirected += u32::from(action == TC_ACT_REDIRECT);
            }
        }
    }
    assert!(
        redirected > 0,
        "whole-enough frames still take the fast path"
    );
    assert!(
        counter(&t.steer, abi::Counter::Malformed) > 0,
        "cuts inside a header the program reads are counted"
    );
}

/// Storm control in the kernel, both hooks: over the limits, broadcast and frames from unknown
/// stations are dropped and counted before user space; known unicast is never limited.
#[test]
fn storm_excess_is_dropped_in_the_kernel_before_user_space() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let Some(mut t) = bench_at(hook) else {
            return;
        };
        // The buckets are per CPU: stay on one.
        assert!(core_affinity::set_for_current(core_affinity::CoreId {
            id: 0
        }));
        let (pass, drop, punted) = match hook {
            Hook::Xdp => (XDP_PASS, 1, abi::Counter::NoSocket),
            Hook::Tc => (TC_ACT_REDIRECT, TC_ACT_SHOT, abi::Counter::ToSocket),
        };
        if hook == Hook::Tc {
            let port = abi::Port {
                slot: 0,
                flags: abi::PORT_F_STEER | abi::PORT_F_FAST,
                vni: VNI,
                punt: t.b,
                ..Default::default()
            };
            t.steer.set_port_entry(t.a, &port).unwrap();
        }
        t.steer
            .fdb_set(VNI, MAC_B, Some((abi::DEST_PORT, t.b)))
            .unwrap();
        let mut storm = kangaroo_switch::storm::StormConfig::OFF;
        storm.bum = kangaroo_switch::storm::Rate {
            per_sec: 1,
            burst: 3,
        };
        storm.new_macs = kangaroo_switch::storm::Rate {
            per_sec: 1,
            burst: 2,
        };
        t.steer.set_storm(&storm).unwrap();
        let bcast = tcp((MAC_A, IP_A), ([0xff; 6], IP_B), b"storm");
        let actions: Vec<u32> = (0..5)
            .map(|_| t.steer.test_run(Program::Port, &bcast, t.a).unwrap().0)
            .collect();
        assert_eq!(
            actions,
            [pass, pass, pass, drop, drop],
            "{hook:?}: broadcast"
        );
        assert_eq!(counter(&t.steer, abi::Counter::StormBum), 2);
        let actions: Vec<u32> = (0..4u8)
            .map(|i| {
                let f = tcp(([2, 0, 0, 0, 1, i], IP_C), (MAC_B, IP_B), b"new");
                t.steer.test_run(Program::Port, &f, t.a).unwrap().0
            })
            .collect();
        assert_eq!(actions, [pass, pass, drop, drop], "{hook:?}: new stations");
        assert_eq!(counter(&t.steer, abi::Counter::StormNewMac), 2);
        assert_eq!(
            counter(&t.steer, punted),
            5,
            "{hook:?}: what passed went up"
        );
        // Known unicast takes the fast path whatever the buckets hold.
        let good = tcp((MAC_A, IP_A), (MAC_B, IP_B), b"known");
        for _ in 0..10 {
            let (action, _) = t.steer.test_run(Program::Port, &good, t.a).unwrap();
            assert_ne!(action, drop, "{hook:?}");
        }
        assert_eq!(counter(&t.steer, abi::Counter::FastLocal), 10);
        // Limits off: nothing more is dropped.
        t.steer
            .set_storm(&kangaroo_switch::storm::StormConfig::OFF)
            .unwrap();
        for _ in 0..5 {
            assert_eq!(
                t.steer.test_run(Program::Port, &bcast, t.a).unwrap().0,
                pass
            );
        }
        assert_eq!(counter(&t.steer, abi::Counter::StormBum), 2);
        // A port that is not fast (mode afxdp: no FDB mirror to tell new stations by) has
        // only its broadcast limited in the kernel: unknown sources all go up.
        t.steer.set_storm(&storm).unwrap();
        let slow_port = abi::Port {
            slot: 0,
            flags: abi::PORT_F_STEER,
            vni: VNI,
            punt: if hook == Hook::Tc { t.b } else { 0 },
            ..Default::default()
        };
        t.steer.set_port_entry(t.a, &slow_port).unwrap();
        let before = counter(&t.steer, abi::Counter::StormNewMac);
        for i in 0..6u8 {
            let f = tcp(([2, 0, 0, 0, 2, i], IP_C), (MAC_B, IP_B), b"new");
            let (action, _) = t.steer.test_run(Program::Port, &f, t.a).unwrap();
            assert_ne!(
                action, drop,
                "{hook:?}: not limited as new without a mirror"
            );
        }
        assert_eq!(counter(&t.steer, abi::Counter::StormNewMac), before);
    }
}
