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

/// Name of the XDP program attached to ports.
pub const PORT_PROGRAM: &str = "kangaroo_port";
/// Name of the port table (ifindex → [`Port`]).
pub const PORTS_MAP: &str = "kg_ports";
/// Name of the XSKMAP.
pub const XSKS_MAP: &str = "kg_xsks";
/// Name of the XDP program attached to the uplink.
pub const UPLINK_PROGRAM: &str = "kangaroo_uplink";
/// Name of the uplink configuration array (one [`Uplink`]).
pub const UPLINK_MAP: &str = "kg_uplink_cfg";
/// Name of the peer set (IPv4 address in network byte order → 1).
pub const PEERS_MAP: &str = "kg_peers";
/// Name of the per-CPU counter array.
pub const COUNTERS_MAP: &str = "kg_counters";

/// `struct kg_port`: what the program knows about a port interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Port {
    /// The port's slot: its sockets sit at XSKMAP index `slot * MAX_QUEUES + queue`.
    pub slot: u32,
    /// `PORT_F_*` flags.
    pub flags: u32,
}

/// Frames on this interface go to user space through its AF_XDP sockets.
pub const PORT_F_STEER: u32 = 1;

impl Port {
    /// The XSKMAP index of this port's socket for `queue`.
    pub const fn socket_index(&self, queue: u32) -> u32 {
        self.slot * MAX_QUEUES + queue
    }

    /// The map value's bytes, as the kernel stores them (native byte order, C layout).
    pub fn to_ne_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[core::mem::offset_of!(Port, slot)..][..4].copy_from_slice(&self.slot.to_ne_bytes());
        b[core::mem::offset_of!(Port, flags)..][..4].copy_from_slice(&self.flags.to_ne_bytes());
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
        }
    }
}

/// `KG_CTR_COUNT`.
pub const COUNTER_COUNT: u32 = 7;

const _: () = {
    assert!(core::mem::size_of::<Port>() == 8);
    assert!(core::mem::offset_of!(Port, slot) == 0);
    assert!(core::mem::offset_of!(Port, flags) == 4);
    assert!(Counter::UplinkPass as u32 + 1 == COUNTER_COUNT);
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
        for (c, enumerator) in Counter::ALL.iter().zip([
            "KG_CTR_TO_SOCKET",
            "KG_CTR_NO_SOCKET",
            "KG_CTR_NOT_PORT",
            "KG_CTR_REDIRECT_FAILED",
            "KG_CTR_UPLINK_TO_SOCKET",
            "KG_CTR_UPLINK_NOT_PEER",
            "KG_CTR_UPLINK_PASS",
        ]) {
            assert!(
                h.contains(&format!("{enumerator} = {},", *c as u32)),
                "{enumerator} is {c:?} in abi.h"
            );
        }
        assert!(h.contains(&format!("KG_CTR_COUNT = {COUNTER_COUNT},")));
    }
}
