//! ARP parsing, replies and the ARP table under arbitrary messages and time.
//!
//! Oracles: a parsed request answered with `build_reply` parses back as the reply to it; the
//! table never exceeds its capacity and a lookup answers only from an entry within its lifetime.

#![no_main]
#![deny(unsafe_code)]

use std::time::Duration;

use arbitrary::Arbitrary;
use kangaroo_switch::arp::{self, ArpConfig, ArpTable};
use kangaroo_switch::{MacAddr, Timestamp, Vni};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Parse(Vec<u8>),
    Snoop { vni: u8, ip: u8, mac: [u8; 6] },
    Static { vni: u8, ip: u8, mac: [u8; 6] },
    Remove { vni: u8, ip: u8 },
    Lookup { vni: u8, ip: u8 },
    Age(u16),
    Flush(u8),
}

fuzz_target!(|ops: Vec<Op>| {
    let cfg = ArpConfig {
        capacity: 16,
        aging: Duration::from_secs(2),
    };
    let mut t = ArpTable::new(cfg, 3);
    let mut now = Timestamp::from_secs(1);
    let vni = |v: u8| Vni::new(u32::from(v % 3) + 1).unwrap_or_else(|_| unreachable!());
    let ip = |i: u8| std::net::Ipv4Addr::new(10, 0, 0, i);
    for op in ops.into_iter().take(256) {
        match op {
            Op::Parse(bytes) => {
                if let Ok(m) = arp::parse(&bytes) {
                    let mut out = [0u8; arp::REPLY_FRAME_LEN];
                    let owner = MacAddr([2, 0, 0, 0, 0, 9]);
                    if m.is_request() {
                        if let Some(n) = arp::build_reply(&m, owner, &mut out) {
                            let r = arp::parse(&out[arp::ETH_LEN..n]);
                            let r = r.unwrap_or_else(|e| panic!("own reply does not parse: {e:?}"));
                            assert_eq!((r.sha, r.spa, r.tha, r.tpa), (owner, m.tpa, m.sha, m.spa));
                        }
                    }
                }
            }
            Op::Snoop { vni: v, ip: i, mac } => {
                let _ = t.snoop(vni(v), ip(i), MacAddr(mac), now);
            }
            Op::Static { vni: v, ip: i, mac } => {
                let _ = t.insert_static(vni(v), ip(i), MacAddr(mac), now);
            }
            Op::Remove { vni: v, ip: i } => {
                let _ = t.remove(vni(v), ip(i));
            }
            Op::Lookup { vni: v, ip: i } => {
                let found = t.lookup(vni(v), ip(i), now);
                if let Some(m) = found {
                    let e = t.get(vni(v), ip(i));
                    let e = e.unwrap_or_else(|| panic!("lookup answered without an entry"));
                    assert_eq!(e.mac, m);
                    assert!(
                        e.is_static || now.since(e.last_seen) < cfg.aging,
                        "a stale entry answered"
                    );
                }
            }
            Op::Age(ms) => {
                now = now.plus(Duration::from_millis(u64::from(ms)));
                let _ = t.age_step(now, 4);
            }
            Op::Flush(v) => {
                let _ = t.flush_vni(vni(v));
            }
        }
        assert!(t.len() <= cfg.capacity, "ARP table over capacity");
    }
});
