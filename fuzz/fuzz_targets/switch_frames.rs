//! The whole switch on arbitrary frames from its ports and from the tunnel, interleaved with
//! table changes and time passing, so every frame meets tables in some reachable state.
//!
//! Two switches share an in-memory underlay. Switch A has three ports: two in VNI 100 (one of
//! them with port security) and one in VNI 200; switch B one port in VNI 100. Oracles, besides
//! "never panics":
//! - isolation: every frame a port receives was sent into that port's VNI (on a port, or
//!   through the tunnel under that VNI), or is one the switch makes itself (an ARP reply, an
//!   ICMP error);
//! - the FDB never holds more than its capacity, nor the ARP table.

#![no_main]
#![deny(unsafe_code)]

use std::collections::HashSet;
use std::time::Duration;

use arbitrary::Arbitrary;
use kangaroo_fuzz::{small_switch, vtep};
use kangaroo_switch::port::memory::MemoryPort;
use kangaroo_switch::port::{Offload, PortBackend};
use kangaroo_switch::sim::{Sim, SwitchId};
use kangaroo_switch::tunnel::{decapsulate, EncapTemplate, LocalVtep, PeerVnis, VXLAN_PORT};
use kangaroo_switch::{Dest, MacAddr, PortConfig, PortId, Vni};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A frame from port `port % 4` (3 is switch B's port).
    Port { port: u8, frame: Vec<u8> },
    /// A VXLAN datagram from switch B's VTEP to switch A, VNI 100 or 200 (or `raw_vni`).
    Tunnel {
        vni: u8,
        raw_vni: u32,
        inner: Vec<u8>,
    },
    /// Raw bytes on switch A's uplink.
    RawUnderlay(Vec<u8>),
    /// Time passes (aging).
    Tick(u16),
    /// A static FDB entry toward a port or the peer, or its removal.
    StaticFdb {
        vni: bool,
        mac: [u8; 6],
        to_peer: bool,
        port: u8,
        remove: bool,
    },
    /// A static ARP entry.
    StaticArp { vni: bool, ip: u32, mac: [u8; 6] },
    /// The peer removed, or added back.
    TogglePeer,
}

const VNIS: [u32; 2] = [100, 200];

fn vni(v: u32) -> Vni {
    match Vni::new(v) {
        Ok(v) => v,
        Err(_) => unreachable!("constant VNI"),
    }
}

fn mac(i: u8) -> MacAddr {
    MacAddr([2, 0, 0x99, 0, 0, i])
}

/// Whether the switch itself may have made `f` (an ARP reply or an ICMP error), which is the
/// only kind of frame a port may receive without it having been sent into its VNI.
fn switch_made(f: &[u8]) -> bool {
    let et = f.get(12..14);
    let arp_reply = et == Some(&[0x08, 0x06]) && f.get(20..22) == Some(&[0, 2]);
    let icmp = et == Some(&[0x08, 0x00]) && f.get(23) == Some(&1);
    arp_reply || icmp
}

struct World {
    sim: Sim,
    a: SwitchId,
    b: SwitchId,
    /// Far ends of the ports, with the VNI each is in and its id on its switch.
    ports: Vec<(MemoryPort, u32, SwitchId, PortId)>,
    /// Every frame sent into each VNI.
    sent: [HashSet<Vec<u8>>; 2],
    peer_on: bool,
}

impl World {
    fn new() -> Option<World> {
        let mut sim = Sim::with_ring_size(64);
        let a = sim.add_switch(small_switch());
        let b = sim.add_switch(small_switch());
        sim.connect_underlay(a, vtep(1), mac(0xa1));
        sim.connect_underlay(b, vtep(2), mac(0xa2));
        sim.switch(a)
            .add_peer(vtep(2), mac(0xa2), PeerVnis::All)
            .ok()?;
        sim.switch(b)
            .add_peer(vtep(1), mac(0xa1), PeerVnis::All)
            .ok()?;
        let mut ports = Vec::new();
        let secured = PortConfig {
            vni: vni(100),
            mac: Some(mac(2)),
            ips: vec![std::net::Ipv4Addr::new(10, 0, 0, 2)],
        };
        for (i, (sw, cfg)) in [
            (a, PortConfig::open(vni(100))),
            (a, secured),
            (a, PortConfig::open(vni(200))),
            (b, PortConfig::open(vni(100))),
        ]
        .into_iter()
        .enumerate()
        {
            let v = cfg.vni.get();
            let (id, far) = sim.add_raw_port(sw, &format!("p{i}"), cfg).ok()?;
            ports.push((far, v, sw, id));
        }
        Some(World {
            sim,
            a,
            b,
            ports,
            sent: [HashSet::new(), HashSet::new()],
            peer_on: true,
        })
    }

    fn sent_into(&mut self, v: u32, f: &[u8]) {
        if let Some(i) = VNIS.iter().position(|&x| x == v) {
            self.sent[i].insert(f.to_vec());
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Port { port, frame } => {
                let i = usize::from(port) % self.ports.len();
                let v = self.ports[i].1;
                self.sent_into(v, &frame);
                let _ = self.ports[i].0.send(&frame, &Offload::NONE);
            }
            Op::Tunnel {
                vni: sel,
                raw_vni,
                inner,
            } => {
                let v = match sel % 3 {
                    0 => 100,
                    1 => 200,
                    _ => raw_vni & 0x00ff_ffff,
                };
                self.sent_into(v, &inner);
                let b = LocalVtep {
                    addr: vtep(2),
                    mac: mac(0xa2),
                    udp_port: VXLAN_PORT,
                };
                let t = EncapTemplate::new(&b, vtep(1), mac(0xa1));
                let mut out = vec![0u8; inner.len() + 64];
                if let Ok(vn) = Vni::new(v) {
                    if let Ok(len) = t.encapsulate(vn, &inner, &mut out) {
                        self.sim.underlay_inject(self.a, &out[..len]);
                    }
                }
            }
            Op::RawUnderlay(bytes) => {
                // What decapsulates is inside the VNI its header names: count it as sent there.
                let a = LocalVtep {
                    addr: vtep(1),
                    mac: mac(0xa1),
                    udp_port: VXLAN_PORT,
                };
                if let Ok(d) = decapsulate(&bytes, &a) {
                    let inner = d.inner.to_vec();
                    self.sent_into(d.vni.get(), &inner);
                }
                self.sim.underlay_inject(self.a, &bytes);
            }
            Op::Tick(ms) => {
                self.sim.now = self.sim.now.plus(Duration::from_millis(u64::from(ms) * 8));
            }
            Op::StaticFdb {
                vni: sel,
                mac: m,
                to_peer,
                port,
                remove,
            } => {
                let v = vni(VNIS[usize::from(sel)]);
                let m = MacAddr(m);
                let now = self.sim.now;
                let (a, ports) = (self.a, &self.ports);
                let sw = self.sim.switch(a);
                if remove {
                    sw.remove_fdb(v, m);
                } else if to_peer {
                    if let Some(p) = sw.tables().peers().and_then(|t| t.id_of(vtep(2))) {
                        let _ = sw.add_static_fdb(v, m, Dest::Vtep(p), now);
                    }
                } else {
                    let local: Vec<PortId> =
                        ports.iter().filter(|p| p.2 == a).map(|p| p.3).collect();
                    let p = local[usize::from(port) % local.len()];
                    let _ = sw.add_static_fdb(v, m, Dest::Port(p), now);
                }
            }
            Op::StaticArp {
                vni: sel,
                ip,
                mac: m,
            } => {
                let now = self.sim.now;
                let v = vni(VNIS[usize::from(sel)]);
                let _ = self
                    .sim
                    .switch(self.a)
                    .add_static_arp(v, ip.into(), MacAddr(m), now);
            }
            Op::TogglePeer => {
                let a = self.a;
                if self.peer_on {
                    let _ = self.sim.switch(a).remove_peer(vtep(2));
                } else {
                    let _ = self
                        .sim
                        .switch(a)
                        .add_peer(vtep(2), mac(0xa2), PeerVnis::All);
                }
                self.peer_on = !self.peer_on;
            }
        }
        self.sim.step();
        self.sim.step();
        self.check();
    }

    fn check(&mut self) {
        for (far, v, _, _) in &mut self.ports {
            let i = VNIS.iter().position(|x| x == v).unwrap_or(0);
            let sent = &self.sent[i];
            while far.recv_with(|f| {
                assert!(
                    sent.contains(f) || switch_made(f),
                    "a port in VNI {v} received a frame never sent into VNI {v}: {f:02x?}"
                );
            }) {}
        }
        for id in [self.a, self.b] {
            let t = self.sim.switch(id).tables();
            assert!(t.fdb.len() <= t.fdb.capacity(), "FDB over capacity");
            assert!(t.arp.len() <= 32, "ARP table over capacity");
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let Some(mut w) = World::new() else {
        panic!("the fixture must build");
    };
    for op in ops.into_iter().take(64) {
        w.apply(op);
    }
});
