//! End-to-end simulation: smoltcp hosts on in-memory ports talk through one or two switches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use kangaroo_switch::fdb::Dest;
use kangaroo_switch::port::PortBackend;
use kangaroo_switch::sim::{HostId, Sim, SwitchId};
use kangaroo_switch::tunnel::{self, PeerVnis, Vni, OUTER_LEN};
use kangaroo_switch::{DropReason, MacAddr, PortConfig, SwitchConfig};

fn vni(v: u32) -> Vni {
    Vni::new(v).unwrap()
}
fn mac(last: u8, tenant: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, tenant, last])
}
fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, last)
}
fn vtep(i: u8) -> (Ipv4Addr, MacAddr) {
    (
        Ipv4Addr::new(10, 10, 0, i),
        MacAddr([0x02, 0xee, 0, 0, 0, i]),
    )
}

/// A pattern that differs at every offset within any window smaller than its period.
fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

/// Two switches joined by the underlay, each peered with the other for all VNIs.
fn two_switches(sim: &mut Sim) -> (SwitchId, SwitchId) {
    let a = sim.add_switch(SwitchConfig::default());
    let b = sim.add_switch(SwitchConfig::default());
    let (va, ma) = vtep(1);
    let (vb, mb) = vtep(2);
    sim.connect_underlay(a, va, ma);
    sim.connect_underlay(b, vb, mb);
    sim.switch(a).add_peer(vb, mb, PeerVnis::All).unwrap();
    sim.switch(b).add_peer(va, ma, PeerVnis::All).unwrap();
    (a, b)
}

/// smoltcp drops an automatic echo reply while it resolves the requester's MAC (Linux would
/// queue it). When the switch answers ARP on a host's behalf, that host has not seen the
/// requester's ARP, so the first echo in each direction may be lost: resolve both ways first.
fn resolve_both_ways(sim: &mut Sim, a: HostId, b: HostId) {
    let (ia, ib) = (sim.host(a).ip(), sim.host(b).ip());
    sim.ping(a, ib, 1, 2000);
    sim.ping(b, ia, 1, 2000);
}

fn host(sim: &mut Sim, sw: SwitchId, name: &str, last: u8, tenant: u32) -> HostId {
    sim.add_host(
        sw,
        name,
        mac(last, tenant as u8),
        ip(last),
        24,
        PortConfig::open(vni(tenant)),
    )
    .unwrap()
}

#[test]
fn one_switch_arp_ping_and_a_byte_exact_tcp_stream() {
    let mut sim = Sim::new();
    let sw = sim.add_switch(SwitchConfig::default());
    let h1 = host(&mut sim, sw, "h1", 1, 100);
    let h2 = host(&mut sim, sw, "h2", 2, 100);

    let p = sim.ping(h1, ip(2), 5, 2000);
    assert_eq!(p.received, 5, "every ping answered: {p:?}");
    let p = sim.ping(h2, ip(1), 3, 2000);
    assert_eq!(p.received, 3, "ping works the other way: {p:?}");

    let data = payload(1 << 20);
    let r = sim.tcp_transfer(h1, h2, 5001, &data, 200_000);
    assert_eq!(r.received.len(), data.len(), "whole stream received");
    assert!(r.received == data, "stream content is byte-exact");
    assert!(r.closed, "connection closed cleanly");

    let stats = sim.switch(sw).stats().clone();
    assert_eq!(
        stats.total_drops(),
        0,
        "no drops: {:?}",
        stats.drop_counts()
    );
    let ev = stats.events.snapshot();
    assert!(
        ev.forwarded > 700,
        "known unicast forwarded, not flooded: {ev:?}"
    );
    assert!(ev.flooded <= 4, "only ARP/unknown frames flood: {ev:?}");
}

#[test]
fn two_switches_over_vxlan_ping_and_tcp_with_real_encapsulation() {
    let mut sim = Sim::new();
    let (a, b) = two_switches(&mut sim);
    let h1 = host(&mut sim, a, "h1", 1, 100);
    let h2 = host(&mut sim, b, "h2", 2, 100);
    sim.underlay.set_capture(true);

    let p = sim.ping(h1, ip(2), 5, 2000);
    assert_eq!(p.received, 5, "{p:?}");
    let data = payload(1 << 20);
    let r = sim.tcp_transfer(h2, h1, 5001, &data, 400_000);
    assert!(
        r.received == data,
        "byte-exact across the tunnel ({} of {} bytes)",
        r.received.len(),
        data.len()
    );

    let (va, _) = vtep(1);
    let (vb, _) = vtep(2);
    let captured = std::mem::take(&mut sim.underlay.capture);
    assert!(
        captured.len() > 700,
        "traffic crossed the underlay: {} frames",
        captured.len()
    );
    let mut inner_tcp = 0;
    for f in &captured {
        // Every underlay frame is Ethernet/IPv4/UDP to 4789 with a VXLAN header for VNI 100.
        let sliced = etherparse::SlicedPacket::from_ethernet(f).expect("underlay frame parses");
        let Some(etherparse::NetSlice::Ipv4(ip4)) = &sliced.net else {
            panic!("not IPv4: {f:x?}")
        };
        let (src, dst) = (ip4.header().source_addr(), ip4.header().destination_addr());
        assert!(
            (src, dst) == (va, vb) || (src, dst) == (vb, va),
            "VTEP addresses {src} -> {dst}"
        );
        let Some(etherparse::TransportSlice::Udp(udp)) = &sliced.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.destination_port(), tunnel::VXLAN_PORT);
        assert!(udp.source_port() >= 49152, "source port from the flow hash");
        let vx = &f[tunnel::outer::VXLAN..];
        assert_eq!(vx[0], 0x08, "VXLAN I flag");
        assert_eq!(&vx[4..7], &[0, 0, 100], "VNI 100");
        let inner = &f[OUTER_LEN..];
        let inner_sliced =
            etherparse::SlicedPacket::from_ethernet(inner).expect("inner frame parses");
        if matches!(
            inner_sliced.transport,
            Some(etherparse::TransportSlice::Tcp(_))
        ) {
            inner_tcp += 1;
        }
    }
    assert!(
        inner_tcp > 700,
        "the TCP stream was carried inside VXLAN: {inner_tcp} segments"
    );

    for sw in [a, b] {
        let st = sim.switch(sw).stats().clone();
        assert_eq!(
            st.total_drops(),
            0,
            "switch {sw:?} drops: {:?}",
            st.drop_counts()
        );
    }
    // The stream flowed b -> a: b encapsulated the data segments, a decapsulated them.
    let (ea, eb) = (
        sim.switch(a).stats().events.snapshot(),
        sim.switch(b).stats().events.snapshot(),
    );
    assert!(
        eb.encapsulated > 700 && ea.decapsulated > 700,
        "data: a {ea:?} b {eb:?}"
    );
    assert!(
        ea.encapsulated > 0 && eb.decapsulated > 0,
        "ACKs: a {ea:?} b {eb:?}"
    );
}

#[test]
fn known_arp_is_answered_locally_and_never_crosses_the_underlay() {
    let mut sim = Sim::new();
    let (a, b) = two_switches(&mut sim);
    let h1 = host(&mut sim, a, "h1", 1, 100);
    let h2 = host(&mut sim, b, "h2", 2, 100);
    // The orchestrator knows where every VM lives: each switch gets static ARP and FDB entries
    // for the remote VM (behind the other VTEP).
    let now = sim.now;
    for (sw, remote_vtep, last) in [(a, 2u8, 2u8), (b, 1, 1)] {
        let peer = sim
            .switch(sw)
            .tables()
            .peers()
            .unwrap()
            .id_of(vtep(remote_vtep).0)
            .unwrap();
        sim.switch(sw)
            .add_static_arp(vni(100), ip(last), mac(last, 100), now)
            .unwrap();
        sim.switch(sw)
            .add_static_fdb(vni(100), mac(last, 100), Dest::Vtep(peer), now)
            .unwrap();
    }
    // Each switch also knows its own VM's port.
    for h in [h1, h2] {
        let (sw, port) = sim.host(h).attached.unwrap();
        let m = sim.host(h).mac();
        sim.switch(sw)
            .add_static_fdb(vni(100), m, Dest::Port(port), now)
            .unwrap();
    }

    sim.underlay.set_capture(true);
    resolve_both_ways(&mut sim, h1, h2);
    let p = sim.ping(h1, ip(2), 3, 2000);
    assert_eq!(p.received, 3, "{p:?}");
    let p = sim.ping(h2, ip(1), 3, 2000);
    assert_eq!(p.received, 3, "{p:?}");

    let arp_on_underlay = sim
        .underlay
        .capture
        .iter()
        .filter(|f| f.get(OUTER_LEN + 12..OUTER_LEN + 14) == Some(&[0x08, 0x06]))
        .count();
    assert_eq!(arp_on_underlay, 0, "no ARP crossed the underlay");
    assert!(
        !sim.underlay.capture.is_empty(),
        "the pings themselves did cross"
    );
    for sw in [a, b] {
        let ev = sim.switch(sw).stats().events.snapshot();
        assert!(ev.arp_replies >= 1, "switch answered ARP: {ev:?}");
        assert_eq!(
            ev.flooded, 0,
            "nothing flooded with full static state: {ev:?}"
        );
    }
}

#[test]
fn tenants_with_the_same_addresses_never_see_each_other() {
    let mut sim = Sim::new();
    let (a, b) = two_switches(&mut sim);
    // Tenant 1 (VNI 100) and tenant 2 (VNI 200) use the same IPs; MACs differ in one octet so a
    // leaked frame is attributable.
    let t1a = host(&mut sim, a, "t1a", 1, 100);
    let t1b = host(&mut sim, b, "t1b", 2, 100);
    let t2a = host(&mut sim, a, "t2a", 1, 200);
    let t2b = host(&mut sim, b, "t2b", 2, 200);
    let t1c = host(&mut sim, a, "t1c", 3, 100);
    for h in [t1a, t1b, t2a, t2b, t1c] {
        sim.capture_host(h);
    }
    for (x, y) in [(t1a, t1b), (t2a, t2b), (t1c, t1b)] {
        resolve_both_ways(&mut sim, x, y);
    }
    assert_eq!(sim.ping(t1a, ip(2), 3, 2000).received, 3);
    assert_eq!(sim.ping(t2a, ip(2), 3, 2000).received, 3);
    assert_eq!(sim.ping(t2b, ip(1), 3, 2000).received, 3);
    assert_eq!(sim.ping(t1c, ip(2), 3, 2000).received, 3);
    let data = payload(64 * 1024);
    assert!(sim.tcp_transfer(t1a, t1b, 7, &data, 100_000).received == data);
    assert!(sim.tcp_transfer(t2b, t2a, 7, &data, 100_000).received == data);

    let tenant_of = |f: &Vec<u8>| f.get(10).copied(); // octet 4 of the source MAC
    for (h, tenant) in [(t1a, 100u8), (t1b, 100), (t1c, 100), (t2a, 200), (t2b, 200)] {
        let frames = sim.host(h).captured();
        assert!(
            !frames.is_empty(),
            "{} received traffic",
            sim.host(h).name()
        );
        let leaked = frames
            .iter()
            .filter(|f| tenant_of(f) != Some(tenant))
            .count();
        assert_eq!(
            leaked,
            0,
            "{} saw {leaked} frames of another tenant",
            sim.host(h).name()
        );
    }
}

#[test]
fn station_moves_converge_on_the_next_frame() {
    let mut sim = Sim::new();
    let (a, b) = two_switches(&mut sim);
    let h1 = host(&mut sim, a, "h1", 1, 100);
    let h2 = host(&mut sim, a, "h2", 2, 100);
    assert_eq!(sim.ping(h1, ip(2), 2, 2000).received, 2);
    let now = sim.now;
    let old = sim
        .switch(a)
        .tables()
        .fdb
        .lookup(vni(100), mac(2, 100), now);
    assert!(
        matches!(old, Some(Dest::Port(_))),
        "h2 learned on a local port: {old:?}"
    );

    // Move h2 to another port of the same switch, leaving the old port in place: only h2's next
    // frame can tell the switch.
    let new_port = sim
        .move_host(h2, a, PortConfig::open(vni(100)), true)
        .unwrap();
    assert_eq!(
        sim.ping(h2, ip(1), 1, 2000).received,
        1,
        "h2 reaches h1 from its new port"
    );
    let now = sim.now;
    assert_eq!(
        sim.switch(a)
            .tables()
            .fdb
            .lookup(vni(100), mac(2, 100), now),
        Some(Dest::Port(new_port))
    );
    assert_eq!(
        sim.ping(h1, ip(2), 2, 2000).received,
        2,
        "h1 reaches h2 at its new port"
    );

    // Move h2 across the underlay to switch b.
    sim.move_host(h2, b, PortConfig::open(vni(100)), false)
        .unwrap();
    assert_eq!(sim.ping(h2, ip(1), 1, 2000).received, 1);
    let now = sim.now;
    let peer_b = sim
        .switch(a)
        .tables()
        .peers()
        .unwrap()
        .id_of(vtep(2).0)
        .unwrap();
    assert_eq!(
        sim.switch(a)
            .tables()
            .fdb
            .lookup(vni(100), mac(2, 100), now),
        Some(Dest::Vtep(peer_b))
    );
    assert_eq!(
        sim.ping(h1, ip(2), 2, 2000).received,
        2,
        "h1 reaches h2 behind the tunnel"
    );
    assert!(
        sim.switch(a).stats().events.snapshot().fdb_moves >= 1,
        "the local move counted"
    );
}

#[test]
fn a_mac_flood_leaves_others_working_and_the_table_bounded() {
    let mut sim = Sim::new();
    let mut cfg = SwitchConfig::default();
    cfg.fdb.capacity = 50_000;
    cfg.fdb.max_per_source = 1024;
    let sw = sim.add_switch(cfg);
    let h1 = host(&mut sim, sw, "h1", 1, 100);
    let h2 = host(&mut sim, sw, "h2", 2, 100);
    let (_, mut attacker) = sim
        .add_raw_port(sw, "flood", PortConfig::open(vni(100)))
        .unwrap();

    // 100,000 frames from random source MACs, interleaved with simulation steps so they pass
    // through the switch in batches.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut frame = [0u8; 60];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let mut sent = 0;
    let batch_size = SwitchConfig::default().batch_size;
    while sent < 100_000 {
        for _ in 0..batch_size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut src = MacAddr::from_u64(x & 0xffff_ffff_ffff).octets();
            src[0] = (src[0] & 0xfe) | 0x02; // unicast, locally administered
            frame[6..12].copy_from_slice(&src);
            assert!(
                attacker
                    .send(&frame, &kangaroo_switch::port::Offload::NONE)
                    .unwrap(),
                "link accepts the flood"
            );
            sent += 1;
        }
        sim.step();
        // Drain what the flood delivered to the attacker's own port (nothing should come back).
        let mut batch = kangaroo_switch::port::RxBatch::new(64, 2048);
        while attacker.recv_batch(&mut batch).unwrap() > 0 {}
    }
    let data = payload(256 * 1024);
    assert_eq!(
        sim.ping(h1, ip(2), 3, 4000).received,
        3,
        "ping during/after the flood"
    );
    assert!(
        sim.tcp_transfer(h1, h2, 9, &data, 200_000).received == data,
        "TCP still works"
    );

    let flood_port = sim.switch(sw).port_id("flood-host").unwrap();
    let tables = sim.switch(sw).tables();
    assert!(tables.fdb.len() <= 50_000, "within capacity");
    assert_eq!(
        tables.fdb.owned_by(Dest::Port(flood_port)),
        1024,
        "flooder capped at its limit"
    );
    let ev = sim.switch(sw).stats().events.snapshot();
    assert!(
        ev.fdb_source_limit >= 98_000,
        "limit bit and was counted: {ev:?}"
    );
}

#[test]
fn malformed_underlay_frames_are_counted_by_reason_and_never_delivered() {
    let mut sim = Sim::new();
    let (a, b) = two_switches(&mut sim);
    let h1 = host(&mut sim, a, "h1", 1, 100);
    let h2 = host(&mut sim, b, "h2", 2, 100);
    sim.capture_host(h2);
    // Build a valid encapsulated frame a -> b, then corrupt it in each way.
    let (va, ma) = vtep(1);
    let (vb, mb) = vtep(2);
    let local_a = tunnel::LocalVtep {
        addr: va,
        mac: ma,
        udp_port: tunnel::VXLAN_PORT,
    };
    let mut inner = [0u8; 60];
    inner[0..6].copy_from_slice(&mac(2, 100).octets());
    inner[6..12].copy_from_slice(&mac(9, 100).octets());
    inner[12..14].copy_from_slice(&[0x88, 0xb5]);
    let template = tunnel::EncapTemplate::new(&local_a, vb, mb);
    let encap = |vni_v: u32, src: Option<tunnel::EncapTemplate>| {
        let mut out = vec![0u8; OUTER_LEN + inner.len()];
        src.unwrap_or(template)
            .encapsulate(vni(vni_v), &inner, &mut out)
            .unwrap();
        out
    };
    let good = encap(100, None);

    let mut cases: Vec<(Vec<u8>, DropReason)> = Vec::new();
    cases.push((good[..30].to_vec(), DropReason::Truncated));
    let mut f = good.clone();
    f[tunnel::outer::VXLAN] = 0x0c;
    cases.push((f, DropReason::BadVxlanFlags));
    let mut f = good.clone();
    f[tunnel::outer::UDP_LEN_FIELD + 1] ^= 0x10;
    cases.push((f, DropReason::BadUdpLength));
    cases.push((encap(300, None), DropReason::UnknownVni));
    let rogue = tunnel::LocalVtep {
        addr: Ipv4Addr::new(10, 10, 0, 99),
        mac: ma,
        udp_port: tunnel::VXLAN_PORT,
    };
    cases.push((
        encap(100, Some(tunnel::EncapTemplate::new(&rogue, vb, mb))),
        DropReason::UnknownPeer,
    ));
    let mut f = good.clone();
    f[tunnel::outer::IPV4 + 8] = 1; // TTL changed without fixing the checksum
    cases.push((f, DropReason::BadIpChecksum));
    let mut f = good.clone();
    f[tunnel::OUTER_LEN..].fill(0); // zero inner source MAC
    cases.push((f, DropReason::InvalidSourceMac));

    // Inject each case straight into switch b's uplink, as if from the underlay.
    for (frame, reason) in &cases {
        let before = sim.switch(b).stats().drops(*reason);
        sim.underlay_inject(b, frame);
        sim.run(3);
        let after = sim.switch(b).stats().drops(*reason);
        assert_eq!(after, before + 1, "{reason:?} counted once");
    }
    assert!(
        sim.host(h2)
            .captured()
            .iter()
            .all(|f| f.get(6..12) != Some(&mac(9, 100).octets()[..])),
        "no malformed frame was delivered"
    );
    // The good frame is delivered, proving the cases failed for their own reason.
    sim.underlay_inject(b, &good);
    sim.run(3);
    assert!(sim
        .host(h2)
        .captured()
        .iter()
        .any(|f| f.get(6..12) == Some(&mac(9, 100).octets()[..])));
    // And the network still works.
    assert_eq!(sim.ping(h1, ip(2), 2, 2000).received, 2);
}

#[test]
fn learned_entries_age_out_through_the_polling_loop() {
    let mut sim = Sim::new();
    let mut cfg = SwitchConfig::default();
    cfg.fdb.capacity = 1024;
    cfg.fdb.aging = std::time::Duration::from_secs(2);
    let sw = sim.add_switch(cfg);
    let h1 = host(&mut sim, sw, "h1", 1, 100);
    host(&mut sim, sw, "h2", 2, 100);
    assert_eq!(sim.ping(h1, ip(2), 1, 2000).received, 1);
    assert_eq!(sim.switch(sw).tables().fdb.len(), 2, "both hosts learned");
    // Jump past the aging time; the next polls sweep the table (one slice per aging interval).
    sim.now = sim.now.plus(std::time::Duration::from_secs(3));
    for _ in 0..3 {
        sim.now = sim.now.plus(kangaroo_switch::switch::AGING_INTERVAL);
        sim.step();
    }
    assert_eq!(
        sim.switch(sw).tables().fdb.len(),
        0,
        "idle entries were reclaimed"
    );
    assert_eq!(sim.switch(sw).stats().events.snapshot().fdb_aged, 2);
}
