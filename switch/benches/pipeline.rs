//! Hot-path benchmarks: the pipeline decision per frame, and the FDB at 1k and 1M entries.
//!
//! Run with `cargo bench -p kangaroo-switch --bench pipeline`; the figures are recorded in
//! docs/benchmarks.md.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kangaroo_switch::fdb::{Dest, Fdb, FdbConfig};
use kangaroo_switch::pipeline::{Tables, TablesConfig};
use kangaroo_switch::stats::Stats;
use kangaroo_switch::tunnel::{EncapTemplate, LocalVtep, PeerVnis, OUTER_LEN, VXLAN_PORT};
use kangaroo_switch::{MacAddr, PortConfig, PortId, Timestamp, Verdict, Vni};

const T0: Timestamp = Timestamp::ZERO;

fn mac(i: u64) -> MacAddr {
    MacAddr::from_u64(0x0200_0000_0000 | i)
}

fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&dst.octets());
    f[6..12].copy_from_slice(&src.octets());
    // IPv4/UDP so the flow hash does its full work on encapsulation.
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[23] = 17;
    f
}

fn vtep(i: u8) -> LocalVtep {
    LocalVtep {
        addr: Ipv4Addr::new(10, 0, 0, i),
        mac: MacAddr([2, 0xee, 0, 0, 0, i]),
        udp_port: VXLAN_PORT,
    }
}

/// Tables of VTEP 1 with two ports in VNI 100 and one peer (VTEP 2).
fn tables() -> (Tables, PortId, PortId) {
    let mut c = TablesConfig::default();
    c.fdb.capacity = 4096;
    c.arp.capacity = 4096;
    let mut t = Tables::new(c, 7);
    t.set_local_vtep(vtep(1));
    let v = Vni::new(100).unwrap();
    let p1 = t.add_port(PortConfig::open(v)).unwrap();
    let p2 = t.add_port(PortConfig::open(v)).unwrap();
    t.add_peer(vtep(2).addr, vtep(2).mac, PeerVnis::All)
        .unwrap();
    (t, p1, p2)
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    let stats = Stats::default();
    let mut reply = [0u8; 64];
    let v = Vni::new(100).unwrap();

    let (mut t, p1, p2) = tables();
    t.fdb.insert_static(v, mac(2), Dest::Port(p2), T0).unwrap();
    let f = frame(mac(2), mac(1));
    assert_eq!(
        t.decide_port(p1, &f, T0, &stats, &mut reply),
        Verdict::Forward(p2)
    );
    g.bench_function("known_unicast", |b| {
        b.iter(|| t.decide_port(p1, black_box(&f), T0, &stats, &mut reply))
    });

    let bcast = frame(MacAddr::BROADCAST, mac(1));
    assert_eq!(
        t.decide_port(p1, &bcast, T0, &stats, &mut reply),
        Verdict::Flood(v)
    );
    g.bench_function("flood_decision", |b| {
        b.iter(|| t.decide_port(p1, black_box(&bcast), T0, &stats, &mut reply))
    });

    // Decision plus encapsulation into a scratch buffer, as the switch does.
    let peer = t.peers().unwrap().id_of(vtep(2).addr).unwrap();
    t.fdb
        .insert_static(v, mac(3), Dest::Vtep(peer), T0)
        .unwrap();
    let remote = frame(mac(3), mac(1));
    let mut scratch = vec![0u8; 2048];
    g.bench_function("encap", |b| {
        b.iter(|| {
            let verdict = t.decide_port(p1, black_box(&remote), T0, &stats, &mut reply);
            let Verdict::Tunnel { peer, vni } = verdict else {
                panic!("{verdict:?}")
            };
            let p = t.peers().unwrap().get(peer).unwrap();
            p.template.encapsulate(vni, &remote, &mut scratch).unwrap()
        })
    });

    // A frame from VTEP 2 to a local MAC: decapsulate, check, learn, forward.
    let from = EncapTemplate::new(&vtep(2), vtep(1).addr, vtep(1).mac);
    let mut outer = vec![0u8; OUTER_LEN + 64];
    from.encapsulate(v, &frame(mac(2), mac(3)), &mut outer)
        .unwrap();
    assert_eq!(
        t.decide_underlay(&outer, T0, &stats).verdict,
        Verdict::Forward(p2)
    );
    g.bench_function("decap", |b| {
        b.iter(|| t.decide_underlay(black_box(&outer), T0, &stats).verdict)
    });
    g.finish();
}

fn fdb(c: &mut Criterion) {
    let mut g = c.benchmark_group("fdb");
    g.throughput(Throughput::Elements(1));
    let v = Vni::new(100).unwrap();
    for (label, n) in [("1k", 1_000u64), ("1M", 1_000_000u64)] {
        let cfg = FdbConfig {
            capacity: n as usize + 1,
            max_per_source: u32::MAX,
            ..FdbConfig::default()
        };
        let mut f = Fdb::new(cfg, 11);
        for i in 0..n {
            // Spread entries across sources so no per-source limit applies.
            f.learn(v, mac(i), Dest::Port(PortId::new((i % 4000) as u16)), T0);
        }
        assert_eq!(f.len(), n as usize);
        // Visit keys in a scrambled order, as real traffic would, so the 1M case pays its cache
        // misses honestly.
        let order: Vec<u64> = (0..n).map(|i| i.wrapping_mul(0x9e37_79b9) % n).collect();
        let mut k = 0usize;
        g.bench_function(format!("lookup/{label}"), |b| {
            b.iter(|| {
                k = (k + 1) % order.len();
                f.lookup(v, mac(order[k]), T0)
            })
        });
        let mut k = 0usize;
        g.bench_function(format!("learn_refresh/{label}"), |b| {
            b.iter(|| {
                k = (k + 1) % order.len();
                let i = order[k];
                f.learn(v, mac(i), Dest::Port(PortId::new((i % 4000) as u16)), T0)
            })
        });
        let mut fresh = n;
        g.bench_function(format!("learn_new_and_remove/{label}"), |b| {
            b.iter_batched(
                || {
                    fresh += 1;
                    mac(fresh)
                },
                |m| {
                    let r = f.learn(v, m, Dest::Port(PortId::new(1)), T0);
                    f.remove(v, m);
                    r
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Completing a guest's partial TCP checksum (afxdp mode), against recognising a finished one.
fn checksum(c: &mut Criterion) {
    use kangaroo_switch::checksum::{add, fold, repair_partial, Repair};
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 5201, 7, 65535);
    let mut finished = Vec::new();
    if b.write(&mut finished, &[0x5a; 1448]).is_err() {
        return;
    }
    let mut partial = finished.clone();
    let l4_len = (partial.len() - 34) as u16;
    let pseudo = fold(add(
        add(add(0, &partial[26..34]), &[0, 6]),
        &l4_len.to_be_bytes(),
    ));
    partial[50..52].copy_from_slice(&pseudo.to_be_bytes());
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Bytes(partial.len() as u64));
    g.bench_function("complete_partial_1500", |bch| {
        bch.iter_batched_ref(
            || partial.clone(),
            |f| assert_eq!(repair_partial(f), Repair::Completed),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("recognise_finished_1500", |bch| {
        bch.iter_batched_ref(
            || finished.clone(),
            |f| assert_eq!(repair_partial(f), Repair::NotPartial),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, pipeline, fdb, checksum);
criterion_main!(benches);
