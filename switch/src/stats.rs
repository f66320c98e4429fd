//! Counters: per-port traffic, one counter per drop reason, and switch-wide events.
//!
//! All counters are `AtomicU64` updated with relaxed ordering: the data path increments them
//! without locks and the control plane reads them at any time.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::port::PortId;

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Why a frame was dropped. Each has its own counter.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum DropReason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];

            /// The counter's name (snake case, as in `/metrics`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than the headers it needs.
    Truncated => "truncated",
    /// Source MAC is multicast or zero.
    InvalidSourceMac => "invalid_source_mac",
    /// Source MAC (Ethernet or ARP sender) not the one the port owns.
    SpoofedMac => "spoofed_mac",
    /// Source IPv4 (IP or ARP sender) not one the port owns.
    SpoofedIp => "spoofed_ip",
    /// VLAN-tagged frame on a port with IP port security.
    TaggedFrame => "tagged_frame",
    /// Malformed Ethernet/IPv4 ARP.
    MalformedArp => "malformed_arp",
    /// A source MAC that a static FDB entry places elsewhere.
    StaticMacConflict => "static_mac_conflict",
    /// Destination is the port the frame came from.
    SamePort => "same_port",
    /// The frame arrived on a port that is not configured.
    NoSuchPort => "no_such_port",
    /// Underlay frame that is not VXLAN for this VTEP.
    NotVxlan => "not_vxlan",
    /// Outer IPv4 header checksum wrong.
    BadIpChecksum => "bad_ip_checksum",
    /// Outer IPv4 total length inconsistent.
    BadIpLength => "bad_ip_length",
    /// Outer IPv4 fragment.
    Fragmented => "fragmented",
    /// UDP length does not match the IPv4 payload.
    BadUdpLength => "bad_udp_length",
    /// UDP checksum present and wrong.
    BadUdpChecksum => "bad_udp_checksum",
    /// VXLAN flags other than exactly I.
    BadVxlanFlags => "bad_vxlan_flags",
    /// VXLAN from an address that is not a configured peer.
    UnknownPeer => "unknown_peer",
    /// VXLAN for a VNI with no local port.
    UnknownVni => "unknown_vni",
    /// VXLAN for a VNI the sending peer does not share with us.
    VniNotShared => "vni_not_shared",
    /// A frame from a tunnel whose destination is behind another tunnel (split horizon).
    TunnelToTunnel => "tunnel_to_tunnel",
    /// The encapsulated frame would exceed the underlay MTU.
    TooBigForTunnel => "too_big_for_tunnel",
    /// No uplink is configured to tunnel through.
    NoUplink => "no_uplink",
    /// A GSO super-frame for a port or tunnel that cannot carry it.
    GsoUnsupported => "gso_unsupported",
    /// The destination port's transmit queue was full.
    TxQueueFull => "tx_queue_full",
    /// Storm control: a BUM frame beyond the port's limit.
    StormBum => "storm_bum",
    /// Storm control: a frame from a new station beyond the port's limit on new MACs.
    StormNewMac => "storm_new_mac",
    /// The destination is in another VNI (a stale entry; never delivered across networks).
    VniMismatch => "vni_mismatch",
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    #[inline]
    const fn index(self) -> usize {
        self as usize
    }
}

/// Traffic counters of one port (or the uplink).
#[derive(Debug, Default)]
pub struct PortStats {
    /// Frames received.
    pub rx_packets: AtomicU64,
    /// Bytes received.
    pub rx_bytes: AtomicU64,
    /// Frames transmitted.
    pub tx_packets: AtomicU64,
    /// Bytes transmitted.
    pub tx_bytes: AtomicU64,
}

impl PortStats {
    /// Counts a received frame.
    #[inline]
    pub fn rx(&self, bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a transmitted frame.
    #[inline]
    pub fn tx(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A plain copy.
    pub fn snapshot(&self) -> PortCounters {
        PortCounters {
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for c in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.tx_packets,
            &self.tx_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A copy of a port's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortCounters {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
}

macro_rules! events {
    ($($(#[doc = $doc:literal])* $field:ident,)*) => {
        /// Switch-wide event counters.
        #[derive(Debug, Default)]
        pub struct Events {
            $($(#[doc = $doc])* pub $field: AtomicU64,)*
        }

        /// A copy of [`Events`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct EventCounters {
            $($(#[doc = $doc])* pub $field: u64,)*
        }

        impl Events {
            /// A plain copy.
            pub fn snapshot(&self) -> EventCounters {
                EventCounters { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

events! {
    /// Frames flooded (broadcast, multicast, unknown unicast).
    flooded,
    /// Of the flooded, unicast frames to an unknown destination.
    unknown_unicast,
    /// Frames forwarded to one known local port.
    forwarded,
    /// Frames sent into a tunnel (each copy of a replicated frame counts).
    encapsulated,
    /// Frames received from a tunnel and accepted.
    decapsulated,
    /// ARP requests answered by the switch.
    arp_replies,
    /// ARP sender addresses stored in the ARP table.
    arp_snooped,
    /// ARP messages not stored because the ARP table was full.
    arp_table_full,
    /// New FDB entries learned.
    fdb_learned,
    /// Station moves.
    fdb_moves,
    /// Source MACs not learned because the FDB was full.
    fdb_full,
    /// Source MACs not learned because the source owned its limit of entries.
    fdb_source_limit,
    /// FDB entries removed by aging.
    fdb_aged,
    /// Receive or transmit calls that failed on a port backend.
    port_errors,
    /// ICMP "fragmentation needed" answers to frames too large for the tunnel.
    icmp_frag_needed,
    /// Learned entries passed from one datapath worker to the others.
    replicated,
    /// Learned entries not passed on because a worker's inbox or journal was full (the other
    /// workers flood until they learn the station themselves).
    replica_dropped,
}

/// Maximum number of ports a switch has counters for.
pub const MAX_PORTS: usize = 4096;

/// All counters of one switch.
#[derive(Debug)]
pub struct Stats {
    drops: [AtomicU64; DropReason::COUNT],
    ports: Box<[PortStats]>,
    /// The uplink's traffic.
    pub uplink: PortStats,
    /// Switch-wide events.
    pub events: Events,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            ports: (0..MAX_PORTS).map(|_| PortStats::default()).collect(),
            uplink: PortStats::default(),
            events: Events::default(),
        }
    }
}

impl Stats {
    /// Counts a dropped frame.
    #[inline]
    pub fn drop(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Frames dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// Frames dropped for any reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Every non-zero drop counter by name.
    pub fn drop_counts(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drops(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Counters of `port`.
    #[inline]
    pub fn port(&self, port: PortId) -> &PortStats {
        // PortId is a u16 and the table has MAX_PORTS entries; the switch never hands out ids
        // beyond it, and an out-of-range id lands on the last entry rather than panicking.
        let i = usize::from(port.get()).min(MAX_PORTS - 1);
        &self.ports[i]
    }

    /// Zeroes a port's counters (the port was removed or re-added).
    pub fn reset_port(&self, port: PortId) {
        self.port(port).reset();
    }

    /// Bumps an event counter.
    #[inline]
    pub fn event(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_have_unique_names_and_counters() {
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
        let s = Stats::default();
        s.drop(DropReason::Truncated);
        s.drop(DropReason::Truncated);
        s.drop(DropReason::UnknownPeer);
        assert_eq!(s.drops(DropReason::Truncated), 2);
        assert_eq!(s.total_drops(), 3);
        assert_eq!(s.drop_counts(), vec![("truncated", 2), ("unknown_peer", 1)]);
    }

    #[test]
    fn port_counters() {
        let s = Stats::default();
        s.port(PortId::new(3)).rx(100);
        s.port(PortId::new(3)).tx(60);
        assert_eq!(
            s.port(PortId::new(3)).snapshot(),
            PortCounters {
                rx_packets: 1,
                rx_bytes: 100,
                tx_packets: 1,
                tx_bytes: 60
            }
        );
        s.reset_port(PortId::new(3));
        assert_eq!(s.port(PortId::new(3)).snapshot(), PortCounters::default());
        Stats::event(&s.events.flooded);
        assert_eq!(s.events.snapshot().flooded, 1);
    }
}
