//! The eBPF side of `kangaroo-switch`: the compiled XDP program and `#[repr(C)]` mirrors of the
//! map layouts in `bpf/abi.h`.
//!
//! [`OBJECT`] is the BPF object `build.rs` compiles from `bpf/switch.bpf.c`, 8-byte aligned as
//! ELF parsers expect. Every type below has the size and field offsets of its C twin, asserted at
//! compile time; a change to `abi.h` that is not mirrored here fails the build (or, for map sizes,
//! fails loudly when user space opens the map).

#![cfg_attr(not(test), no_std)]

/// Ports the program can steer (slots in the port table).
pub const MAX_PORTS: u32 = 1024;
/// Receive queues per port that can have an AF_XDP socket.
pub const MAX_QUEUES: u32 = 16;
/// Entries in the XSKMAP: one per (port slot, queue).
pub const MAX_SOCKETS: u32 = MAX_PORTS * MAX_QUEUES;

/// Name of the benchmarks' frame generator program (run in live-frames mode, never attached).
pub const GEN_PROGRAM: &str = "kangaroo_gen";
/// Name of the generator's target (entry 0: the ifindex frames go out of).
pub const GEN_TARGET_MAP: &str = "kg_gen_target";

/// Name of the XDP program attached to ports.
pub const PORT_PROGRAM: &str = "kangaroo_port";
/// Name of the port table (ifindex → [`Port`]).
pub const PORTS_MAP: &str = "kg_ports";
/// Name of the XSKMAP.
pub const XSKS_MAP: &str = "kg_xsks";
/// Name of the tc (clsact ingress) program attached to ports in mode "tc".
pub const TC_PORT_PROGRAM: &str = "kangaroo_tc_port";
/// Name of the tc (clsact ingress) program attached to the uplink in mode "tc".
pub const TC_UPLINK_PROGRAM: &str = "kangaroo_tc_uplink";
/// Name of the XDP program attached to the uplink.
pub const UPLINK_PROGRAM: &str = "kangaroo_uplink";
/// Name of the uplink configuration array (one [`Uplink`]).
pub const UPLINK_MAP: &str = "kg_uplink_cfg";
/// The storm limits (`kg_storm_cfg`, one [`StormCfg`]).
pub const STORM_CFG_MAP: &str = "kg_storm_cfg";
/// Per-port, per-CPU storm buckets (`kg_storm`), made by the programs.
pub const STORM_MAP: &str = "kg_storm";
/// Name of the peer set (IPv4 address in network byte order → 1).
pub const PEERS_MAP: &str = "kg_peers";
/// Name of the per-CPU counter array.
pub const COUNTERS_MAP: &str = "kg_counters";

/// Port-security IPv4 addresses per port the fast path checks.
pub const MAX_IPS: usize = 4;
/// FDB entries the kernel mirror holds by default (the loader resizes it to the switch's
/// `fdb.capacity`).
pub const FDB_ENTRIES: u32 = 262_144;
/// ARP entries the kernel mirror holds.
pub const ARP_ENTRIES: u32 = 65_536;
/// Peer VTEPs.
pub const MAX_PEERS: u32 = 4096;
/// Bytes of outer headers a VXLAN encapsulation adds.
pub const OUTER_LEN: usize = 50;

/// Name of the DEVMAP of redirect targets (ports and the uplink, by ifindex).
pub const DEVS_MAP: &str = "kg_devs";
/// Name of the FDB mirror.
pub const FDB_MAP: &str = "kg_fdb";
/// Name of the ARP mirror.
pub const ARP_MAP: &str = "kg_arp";
/// Name of the peer templates array.
pub const VTEPS_MAP: &str = "kg_vteps";
/// Name of the (peer, VNI) set.
pub const PEER_VNIS_MAP: &str = "kg_peer_vnis";

/// `struct kg_port`: what the program knows about a port interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Port {
    /// The port's slot: its sockets sit at XSKMAP index `slot * MAX_QUEUES + queue`.
    pub slot: u32,
    /// `PORT_F_*` flags.
    pub flags: u32,
    /// The port's network.
    pub vni: u32,
    /// Port security MAC ([`PORT_F_MAC`]).
    pub mac: [u8; 6],
    /// Entries of `ips` in use ([`PORT_F_IPS`]).
    pub n_ips: u8,
    /// Padding.
    pub pad: u8,
    /// Port security IPv4 addresses, network order.
    pub ips: [u32; MAX_IPS],
    /// Mode "tc": the ifindex of the port's punt device (0: none).
    pub punt: u32,
}

/// `struct kg_storm_cfg`: the per-port storm limits (a rate of 0 turns a limit off).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StormCfg {
    /// BUM frames per second.
    pub bum_rate: u32,
    /// BUM frames at once.
    pub bum_burst: u32,
    /// New stations per second.
    pub new_rate: u32,
    /// New stations at once.
    pub new_burst: u32,
}

impl StormCfg {
    /// The value as the kernel reads it.
    pub fn to_ne_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (i, v) in [self.bum_rate, self.bum_burst, self.new_rate, self.new_burst]
            .into_iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// Frames on this interface go to user space through its AF_XDP sockets.
pub const PORT_F_STEER: u32 = 1;
/// Frames whose fate the maps decide are handled in the kernel (mode "xdp").
pub const PORT_F_FAST: u32 = 2;
/// Port security: only `mac` may be the source MAC.
pub const PORT_F_MAC: u32 = 4;
/// Port security: only `ips` may be the source IPv4.
pub const PORT_F_IPS: u32 = 8;

impl Port {
    /// The XSKMAP index of this port's socket for `queue`.
    pub const fn socket_index(&self, queue: u32) -> u32 {
        self.slot * MAX_QUEUES + queue
    }

    /// The map value's bytes, as the kernel stores them (native byte order, C layout).
    pub fn to_ne_bytes(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0..4].copy_from_slice(&self.slot.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.vni.to_ne_bytes());
        b[12..18].copy_from_slice(&self.mac);
        b[18] = self.n_ips;
        b[19] = self.pad;
        for (i, ip) in self.ips.iter().enumerate() {
            b[20 + 4 * i..24 + 4 * i].copy_from_slice(&ip.to_ne_bytes());
        }
        b[36..40].copy_from_slice(&self.punt.to_ne_bytes());
        b
    }
}

/// `struct kg_uplink`: where VXLAN for this host arrives.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Uplink {
    /// This host's VTEP address, network byte order.
    pub addr: u32,
    /// The VXLAN UDP port, network byte order.
    pub port: u16,
    /// Padding.
    pub pad: u16,
    /// The uplink's slot in the XSKMAP.
    pub slot: u32,
    /// `UPLINK_F_*` flags.
    pub flags: u32,
}

/// The uplink program hands VXLAN from peers to user space.
pub const UPLINK_F_ENABLED: u32 = 1;
/// The uplink program decapsulates known traffic itself (mode "xdp").
pub const UPLINK_F_FAST: u32 = 2;

/// `struct kg_fdb_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FdbKey {
    /// The network.
    pub vni: u32,
    /// The station.
    pub mac: [u8; 6],
    /// Padding.
    pub pad: u16,
}

impl FdbKey {
    /// The key's bytes, as the kernel stores them.
    pub fn to_ne_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.vni.to_ne_bytes());
        b[4..10].copy_from_slice(&self.mac);
        b
    }
}

/// `KG_DEST_PORT`.
pub const DEST_PORT: u32 = 1;
/// `KG_DEST_VTEP`.
pub const DEST_VTEP: u32 = 2;

/// `struct kg_fdb_val`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FdbVal {
    /// `DEST_*`.
    pub kind: u32,
    /// The port's ifindex or the peer's id.
    pub target: u32,
    /// Set by the programs when the station is seen as a source.
    pub hit: u32,
    /// `FDB_F_*`.
    pub flags: u32,
}

/// `KG_FDB_F_PEER`: the destination port is one end of a veth pair (mode "tc" forwards into
/// the other end directly).
pub const FDB_F_PEER: u32 = 1;

impl FdbVal {
    /// The value's bytes, as the kernel stores them.
    pub fn to_ne_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.kind.to_ne_bytes());
        b[4..8].copy_from_slice(&self.target.to_ne_bytes());
        b[8..12].copy_from_slice(&self.hit.to_ne_bytes());
        b[12..16].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }

    /// Decodes the kernel's bytes.
    pub fn from_ne_bytes(b: &[u8; 16]) -> FdbVal {
        let u = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        FdbVal {
            kind: u(0),
            target: u(4),
            hit: u(8),
            flags: u(12),
        }
    }
}

/// `struct kg_arp_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArpKey {
    /// The network.
    pub vni: u32,
    /// The address, network order.
    pub ip: u32,
}

impl ArpKey {
    /// The key's bytes, as the kernel stores them.
    pub fn to_ne_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&self.vni.to_ne_bytes());
        b[4..8].copy_from_slice(&self.ip.to_ne_bytes());
        b
    }
}

/// `struct kg_vtep`: how to reach a peer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vtep {
    /// Outer headers (per-frame fields zero).
    pub hdr: [u8; OUTER_LEN],
    /// Nonzero when usable.
    pub valid: u16,
    /// The peer's address, network order.
    pub addr: u32,
    /// The uplink's ifindex.
    pub uplink: u32,
    /// Longest inner frame that fits the underlay MTU.
    pub max_inner: u32,
}

impl Vtep {
    /// The value's bytes, as the kernel stores them.
    pub fn to_ne_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..OUTER_LEN].copy_from_slice(&self.hdr);
        b[50..52].copy_from_slice(&self.valid.to_ne_bytes());
        b[52..56].copy_from_slice(&self.addr.to_ne_bytes());
        b[56..60].copy_from_slice(&self.uplink.to_ne_bytes());
        b[60..64].copy_from_slice(&self.max_inner.to_ne_bytes());
        b
    }
}

/// `struct kg_peer_vni`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerVni {
    /// The peer's address, network order.
    pub addr: u32,
    /// The network.
    pub vni: u32,
}

impl PeerVni {
    /// The key's bytes, as the kernel stores them.
    pub fn to_ne_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&self.addr.to_ne_bytes());
        b[4..8].copy_from_slice(&self.vni.to_ne_bytes());
        b
    }
}

impl Uplink {
    /// The map value's bytes, as the kernel stores them.
    pub fn to_ne_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[core::mem::offset_of!(Uplink, addr)..][..4].copy_from_slice(&self.addr.to_ne_bytes());
        b[core::mem::offset_of!(Uplink, port)..][..2].copy_from_slice(&self.port.to_ne_bytes());
        b[core::mem::offset_of!(Uplink, slot)..][..4].copy_from_slice(&self.slot.to_ne_bytes());
        b[core::mem::offset_of!(Uplink, flags)..][..4].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }
}

/// `enum kg_counter`: indices of the per-CPU counters.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Frames handed to an AF_XDP socket.
    ToSocket = 0,
    /// Frames on a port whose receive queue has no socket (passed to the kernel).
    NoSocket = 1,
    /// Frames on an interface that is not a port, or not steered (passed to the kernel).
    NotPort = 2,
    /// Frames the socket redirect failed for (dropped by the kernel).
    RedirectFailed = 3,
    /// Uplink: VXLAN from a configured peer handed to an AF_XDP socket.
    UplinkToSocket = 4,
    /// Uplink: VXLAN to our port from an address that is not a peer (passed to the kernel).
    UplinkNotPeer = 5,
    /// Uplink: anything else, passed to the kernel untouched.
    UplinkPass = 6,
    /// Fast path: known local unicast redirected to the destination port.
    FastLocal = 7,
    /// Fast path: ARP request answered from the ARP map.
    FastArpReply = 8,
    /// Fast path: known remote unicast encapsulated and redirected to the uplink.
    FastEncap = 9,
    /// Fast path: VXLAN decapsulated and redirected to the destination port.
    FastDecap = 10,
    /// Fast path: a partial TCP/UDP checksum completed in the kernel.
    FastCsum = 11,
    /// Frames cut short inside a header the program reads (handed to user space).
    Malformed = 12,
    /// Fast path: the redirect to a port or the uplink failed.
    FastRedirectFailed = 13,
    /// Storm control: a BUM frame over its port's limit, dropped before user space.
    StormBum = 14,
    /// Storm control: a frame from a station not in the FDB over its port's limit of new
    /// stations, dropped before user space.
    StormNewMac = 15,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::ToSocket,
        Counter::NoSocket,
        Counter::NotPort,
        Counter::RedirectFailed,
        Counter::UplinkToSocket,
        Counter::UplinkNotPeer,
        Counter::UplinkPass,
        Counter::FastLocal,
        Counter::FastArpReply,
        Counter::FastEncap,
        Counter::FastDecap,
        Counter::FastCsum,
        Counter::Malformed,
        Counter::FastRedirectFailed,
        Counter::StormBum,
        Counter::StormNewMac,
    ];

    /// The counter's name in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::ToSocket => "to_socket",
            Counter::NoSocket => "no_socket",
            Counter::NotPort => "not_port",
            Counter::RedirectFailed => "redirect_failed",
            Counter::UplinkToSocket => "uplink_to_socket",
            Counter::UplinkNotPeer => "uplink_not_peer",
            Counter::UplinkPass => "uplink_pass",
            Counter::FastLocal => "fast_local",
            Counter::FastArpReply => "fast_arp_reply",
            Counter::FastEncap => "fast_encap",
            Counter::FastDecap => "fast_decap",
            Counter::FastCsum => "fast_csum",
            Counter::Malformed => "malformed",
            Counter::FastRedirectFailed => "fast_redirect_failed",
            Counter::StormBum => "storm_bum",
            Counter::StormNewMac => "storm_new_mac",
        }
    }
}

/// `KG_CTR_COUNT`.
pub const COUNTER_COUNT: u32 = 16;

const _: () = {
    assert!(core::mem::offset_of!(Port, slot) == 0);
    assert!(core::mem::offset_of!(Port, flags) == 4);
    assert!(Counter::StormNewMac as u32 + 1 == COUNTER_COUNT);
    assert!(core::mem::size_of::<Port>() == 40);
    assert!(core::mem::size_of::<StormCfg>() == 16);
    assert!(core::mem::offset_of!(Port, punt) == 36);
    assert!(core::mem::offset_of!(Port, vni) == 8);
    assert!(core::mem::offset_of!(Port, mac) == 12);
    assert!(core::mem::offset_of!(Port, n_ips) == 18);
    assert!(core::mem::offset_of!(Port, ips) == 20);
    assert!(core::mem::size_of::<FdbKey>() == 12);
    assert!(core::mem::offset_of!(FdbKey, mac) == 4);
    assert!(core::mem::size_of::<FdbVal>() == 16);
    assert!(core::mem::offset_of!(FdbVal, hit) == 8);
    assert!(core::mem::offset_of!(FdbVal, flags) == 12);
    assert!(core::mem::size_of::<ArpKey>() == 8);
    assert!(core::mem::size_of::<Vtep>() == 64);
    assert!(core::mem::offset_of!(Vtep, valid) == 50);
    assert!(core::mem::offset_of!(Vtep, addr) == 52);
    assert!(core::mem::offset_of!(Vtep, uplink) == 56);
    assert!(core::mem::offset_of!(Vtep, max_inner) == 60);
    assert!(core::mem::size_of::<PeerVni>() == 8);
    assert!(core::mem::size_of::<Uplink>() == 16);
    assert!(core::mem::offset_of!(Uplink, addr) == 0);
    assert!(core::mem::offset_of!(Uplink, port) == 4);
    assert!(core::mem::offset_of!(Uplink, slot) == 8);
    assert!(core::mem::offset_of!(Uplink, flags) == 12);
    assert!(MAX_SOCKETS == 16384);
};

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT_ALIGNED: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/switch.bpf.o")));

/// The compiled BPF object (ELF, 8-byte aligned).
pub static OBJECT: &[u8] = &OBJECT_ALIGNED.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_an_aligned_bpf_elf() {
        assert_eq!(&OBJECT[..4], b"\x7fELF");
        assert_eq!(OBJECT.as_ptr() as usize % 8, 0);
        // e_machine (offset 18, little-endian) is EM_BPF = 247.
        assert_eq!(u16::from_le_bytes([OBJECT[18], OBJECT[19]]), 247);
    }

    #[test]
    fn abi_constants_match_the_header() {
        // abi.h is the source of truth: read the numbers out of it.
        let h = include_str!("../bpf/abi.h");
        let define = |name: &str| -> Option<&str> {
            h.lines().find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("#define") && w.next() == Some(name)).then(|| w.next())?
            })
        };
        assert_eq!(define("KG_MAX_PORTS"), Some("1024"));
        assert_eq!(define("KG_MAX_QUEUES"), Some("16"));
        assert_eq!(define("KG_PORT_F_STEER"), Some("1u"));
        assert_eq!(define("KG_FDB_F_PEER"), Some("1u"));
        for (c, enumerator) in Counter::ALL.iter().zip([
            "KG_CTR_TO_SOCKET",
            "KG_CTR_NO_SOCKET",
            "KG_CTR_NOT_PORT",
            "KG_CTR_REDIRECT_FAILED",
            "KG_CTR_UPLINK_TO_SOCKET",
            "KG_CTR_UPLINK_NOT_PEER",
            "KG_CTR_UPLINK_PASS",
            "KG_CTR_FAST_LOCAL",
            "KG_CTR_FAST_ARP_REPLY",
            "KG_CTR_FAST_ENCAP",
            "KG_CTR_FAST_DECAP",
            "KG_CTR_FAST_CSUM",
            "KG_CTR_MALFORMED",
            "KG_CTR_FAST_REDIRECT_FAILED",
            "KG_CTR_STORM_BUM",
            "KG_CTR_STORM_NEW_MAC",
        ]) {
            assert!(
                h.contains(&format!("{enumerator} = {},", *c as u32)),
                "{enumerator} is {c:?} in abi.h"
            );
        }
        assert!(h.contains(&format!("KG_CTR_COUNT = {COUNTER_COUNT},")));
    }
}
