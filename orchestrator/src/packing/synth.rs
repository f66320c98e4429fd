//! Seeded synthetic workloads for measuring packing: mixed VM shapes, affinity groups of two to
//! four, and anti-affinity groups of three. The same seed always gives the same workload.

use crate::model::{Name, Resources};

use super::Demand;

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// VM shapes (vCPU quarters, MiB) and their weights: many small services, some mid-size,
/// memory-heavy and CPU-heavy ones, a few large.
const SHAPES: &[((u32, u64), u64)] = &[
    ((1, 256), 6),
    ((2, 512), 10),
    ((2, 1024), 14),
    ((4, 1024), 10),
    ((4, 2048), 14),
    ((4, 4096), 10),
    ((8, 2048), 6),
    ((8, 4096), 8),
    ((8, 8192), 8),
    ((4, 8192), 5),
    ((16, 8192), 4),
    ((16, 16384), 3),
    ((8, 16384), 3),
    ((32, 32768), 1),
];

fn vm_name(i: usize) -> Name {
    // "vm-" followed by digits is always a valid name.
    Name::new(&format!("vm-{i}")).unwrap_or_else(|_| unreachable!("vm-{i} is a valid name"))
}

/// `n` VMs from `seed`.
pub fn workload(seed: u64, n: usize) -> Vec<Demand> {
    let mut rng = Rng::new(seed);
    let total: u64 = SHAPES.iter().map(|(_, w)| w).sum();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n {
        // One time in five, a small affinity group of 2–4 (an application's tiers).
        let group = if rng.below(5) == 0 {
            2 + rng.below(3) as usize
        } else {
            1
        };
        let aff = (group > 1)
            .then(|| Name::new(&format!("app-{i}")).ok())
            .flatten();
        for _ in 0..group.min(n - out.len()) {
            let mut pick = rng.below(total);
            let mut shape = SHAPES[0].0;
            for (s, w) in SHAPES {
                if pick < *w {
                    shape = *s;
                    break;
                }
                pick -= w;
            }
            // One time in ten, a replica of one of a few spread groups.
            let anti = (rng.below(10) == 0)
                .then(|| Name::new(&format!("spread-{}", rng.below(1 + n as u64 / 30))).ok())
                .flatten();
            out.push(Demand {
                name: vm_name(i),
                resources: Resources::new(shape.0, shape.1),
                affinity: aff.clone(),
                anti_affinity: anti,
            });
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_workload() {
        assert_eq!(workload(7, 50), workload(7, 50));
        assert_ne!(workload(7, 50), workload(8, 50));
        assert_eq!(workload(1, 123).len(), 123);
    }
}
