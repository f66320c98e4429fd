//! Several datapath workers, each with its own tables: what one learns, the others learn through
//! the journal, so a flow whose two directions are handled by different workers is switched, not
//! flooded. Each VM has one link per worker here, as a NIC has one queue per worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kangaroo_switch::port::memory::{link, LinkConfig, MemoryPort};
use kangaroo_switch::{PortConfig, Switch, SwitchConfig, Timestamp, Vni};

fn frame(src: u8, dst: Option<u8>) -> Vec<u8> {
    let d = dst.map_or([0xff; 6], |d| [2, 0, 0, 0, 0, d]);
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, src], d)
        .ipv4([10, 0, 0, src], [10, 0, 0, dst.unwrap_or(255)], 64)
        .udp(1000, 2000);
    let mut f = Vec::new();
    b.write(&mut f, b"payload").unwrap();
    f
}

fn received(vm: &mut MemoryPort) -> usize {
    let mut n = 0;
    while vm.recv_with(|_| {}) {
        n += 1;
    }
    n
}

/// Two workers, three VMs on VNI 7; `vms[w][i]` is VM i's end of its link to worker w.
fn setup(journal: bool) -> (Vec<Switch>, Vec<Vec<MemoryPort>>) {
    let mut workers = Vec::new();
    let mut vms = Vec::new();
    for w in 0..2 {
        let mut sw = Switch::new(SwitchConfig {
            seed: Some(w),
            ..SwitchConfig::default()
        });
        if journal {
            sw.enable_journal(64);
        }
        let mut ends = Vec::new();
        for i in 0..3 {
            let (host, vm) = link(&format!("p{i}"), &format!("vm{i}"), LinkConfig::default());
            sw.add_port(
                Box::new(host),
                PortConfig {
                    vni: Vni::new(7).unwrap(),
                    mac: None,
                    ips: Vec::new(),
                },
            )
            .unwrap();
            ends.push(vm);
        }
        workers.push(sw);
        vms.push(ends);
    }
    (workers, vms)
}

fn exchange(workers: &mut [Switch], now: Timestamp) {
    let mut out = Vec::new();
    for (w, sw) in workers.iter_mut().enumerate() {
        sw.drain_journal(|r| out.push((w, r)));
    }
    for (from, r) in out {
        for (w, sw) in workers.iter_mut().enumerate() {
            if w != from {
                sw.apply_replica(r, now);
            }
        }
    }
}

fn reply_flooded(journal: bool) -> (usize, usize) {
    let (mut workers, mut vms) = setup(journal);
    let now = Timestamp::from_secs(1);
    use kangaroo_switch::port::PortBackend;
    // vm0 broadcasts through worker 0: worker 0 learns vm0.
    assert!(vms[0][0]
        .send(&frame(0, None), &Default::default())
        .unwrap());
    workers[0].poll(now);
    exchange(&mut workers, now);
    for vm in vms.iter_mut().flatten() {
        received(vm);
    }
    // vm1 answers vm0 through worker 1.
    assert!(vms[1][1]
        .send(&frame(1, Some(0)), &Default::default())
        .unwrap());
    workers[1].poll(now);
    (received(&mut vms[1][0]), received(&mut vms[1][2]))
}

#[test]
fn a_reply_handled_by_another_worker_is_switched_not_flooded() {
    let (to_vm0, to_vm2) = reply_flooded(true);
    assert_eq!(to_vm0, 1, "the reply reaches vm0");
    assert_eq!(to_vm2, 0, "and only vm0: worker 1 knows where vm0 is");
}

#[test]
fn without_the_journal_the_other_worker_floods() {
    // The contrast that shows the journal is what makes the difference.
    let (to_vm0, to_vm2) = reply_flooded(false);
    assert_eq!((to_vm0, to_vm2), (1, 1), "unknown unicast is flooded");
}
