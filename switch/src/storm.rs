//! Storm control: per-port limits on broadcast/unknown-unicast/multicast (BUM) frames and on
//! newly learned MACs, so one tenant's broadcast storm or MAC flood cannot take the switch's
//! slow path (and the FDB) from the others.
//!
//! Each limit is a token bucket: `per_sec` tokens a second, at most `burst` saved up; a frame
//! that finds the bucket empty is dropped and counted (`storm_bum`, `storm_new_mac`). A rate of 0
//! turns the limit off. Time is passed in, so the buckets are tested without sleeping.
//!
//! The limits apply where the user-space switch decides: every BUM frame and every frame from a
//! station not yet learned reaches it in every mode (the kernel fast paths only forward known
//! unicast), so they hold in every mode. In the eBPF modes (`tc`, `xdp`, `afxdp`) the port
//! programs apply the same limits first, to the frames they would hand to user space, and drop
//! the excess there (counted as the kernel's `storm_bum` and `storm_new_mac`): a storm's excess
//! then costs a map lookup, not a trip through user space that competes with the other VMs'
//! traffic for the cores. A station is new to the kernel when its FDB mirror lacks it. With
//! several datapath workers each keeps its own buckets, and the kernel's are per CPU: a port's
//! effective limit is the configured one times the workers (or CPUs) its frames spread over.

use crate::clock::Timestamp;

/// One limit: `per_sec` events a second on average, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Sustained events per second; 0: unlimited.
    pub per_sec: u32,
    /// Events allowed at once (the bucket's size).
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate {
        per_sec: 0,
        burst: 0,
    };

    /// True if this is a limit at all.
    pub const fn is_limited(self) -> bool {
        self.per_sec > 0
    }
}

/// The storm-control settings every port gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StormConfig {
    /// BUM frames a port may send.
    pub bum: Rate,
    /// New stations a port may introduce (FDB entries learned from it).
    pub new_macs: Rate,
}

impl StormConfig {
    /// No limits (the library's default; the daemon's configuration sets real ones).
    pub const OFF: StormConfig = StormConfig {
        bum: Rate::UNLIMITED,
        new_macs: Rate::UNLIMITED,
    };

    /// The daemon's defaults: far above what a well-behaved VM sends (ARP, DHCP, neighbour
    /// discovery, a few new stations when it boots or a nested bridge fills), far below what a
    /// storm or a MAC flood does (hundreds of thousands a second).
    pub const DAEMON_DEFAULT: StormConfig = StormConfig {
        bum: Rate {
            per_sec: 5_000,
            burst: 5_000,
        },
        new_macs: Rate {
            per_sec: 1_000,
            burst: 2_000,
        },
    };
}

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig::OFF
    }
}

/// Nanoseconds of credit a full token is worth is `1e9 / per_sec`; the bucket keeps its credit
/// in nanosecond-tokens (tokens × 1e9) so any rate up to 1e9/s is exact.
const NANOS: u64 = 1_000_000_000;

/// A token bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rate: Rate,
    /// Credit, in tokens × 1e9.
    credit: u64,
    last: Timestamp,
}

impl TokenBucket {
    /// A full bucket for `rate`, as of `now`.
    pub fn new(rate: Rate, now: Timestamp) -> TokenBucket {
        TokenBucket {
            rate,
            credit: u64::from(rate.burst.max(1)) * NANOS,
            last: now,
        }
    }

    /// Takes one token at `now` if there is one; always true for an unlimited rate.
    #[inline]
    pub fn allow(&mut self, now: Timestamp) -> bool {
        if !self.rate.is_limited() {
            return true;
        }
        let cap = u64::from(self.rate.burst.max(1)) * NANOS;
        let elapsed = now.as_nanos().saturating_sub(self.last.as_nanos());
        // elapsed (ns) × per_sec tokens/s = tokens × 1e9: the unit of `credit`.
        let earned = elapsed.saturating_mul(u64::from(self.rate.per_sec));
        self.credit = self.credit.saturating_add(earned).min(cap);
        if now > self.last {
            self.last = now;
        }
        if self.credit >= NANOS {
            self.credit -= NANOS;
            true
        } else {
            false
        }
    }
}

/// One port's buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortStorm {
    /// BUM frames.
    pub bum: TokenBucket,
    /// New stations.
    pub new_macs: TokenBucket,
}

impl PortStorm {
    /// Full buckets for `config`.
    pub fn new(config: StormConfig, now: Timestamp) -> PortStorm {
        PortStorm {
            bum: TokenBucket::new(config.bum, now),
            new_macs: TokenBucket::new(config.new_macs, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(m: u64) -> Timestamp {
        Timestamp::from_millis(m)
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let mut b = TokenBucket::new(
            Rate {
                per_sec: 100,
                burst: 10,
            },
            ms(0),
        );
        assert_eq!((0..50).filter(|_| b.allow(ms(0))).count(), 10, "the burst");
        assert!(!b.allow(ms(5)), "half a token after 5 ms");
        assert!(b.allow(ms(10)), "one token after 10 ms at 100/s");
        assert!(!b.allow(ms(10)));
        // A long pause refills to the burst, no further.
        assert_eq!((0..50).filter(|_| b.allow(ms(10_000))).count(), 10);
    }

    #[test]
    fn unlimited_always_allows_and_time_going_backwards_earns_nothing() {
        let mut u = TokenBucket::new(Rate::UNLIMITED, ms(0));
        assert!((0..10_000).all(|_| u.allow(ms(0))));
        let mut b = TokenBucket::new(
            Rate {
                per_sec: 1,
                burst: 1,
            },
            ms(1000),
        );
        assert!(b.allow(ms(1000)));
        assert!(!b.allow(ms(0)), "an earlier timestamp earns no credit");
        assert!(!b.allow(ms(1500)));
        assert!(b.allow(ms(2000)));
    }

    proptest! {
        /// Over any span, a bucket allows at most burst + rate × span events.
        #[test]
        fn never_more_than_burst_plus_rate_times_time(
            per_sec in 1u32..100_000,
            burst in 1u32..10_000,
            steps in proptest::collection::vec(0u64..5_000_000, 1..400),
        ) {
            let mut b = TokenBucket::new(Rate { per_sec, burst }, Timestamp::ZERO);
            let mut now = 0u64;
            let mut allowed = 0u64;
            for s in steps {
                now += s;
                for _ in 0..4 {
                    allowed += u64::from(b.allow(Timestamp::from_nanos(now)));
                }
            }
            let bound = u64::from(burst) + now * u64::from(per_sec) / NANOS + 1;
            prop_assert!(allowed <= bound, "{allowed} > {bound}");
        }
    }
}
