//! VXLAN (RFC 7348) over IPv4/UDP: the 8-byte VXLAN header view, encapsulation from per-peer
//! header templates, checked decapsulation, and the peer (VTEP) table.
//!
//! Contract:
//! - [`VxlanPacket::new_checked`] proves the buffer holds a whole header; no accessor panics after.
//! - Encapsulation writes exactly [`OUTER_LEN`] bytes of outer Ethernet/IPv4/UDP/VXLAN headers in
//!   front of the inner frame. The IPv4 checksum is completed per frame from the template's
//!   precomputed partial sum; the UDP checksum is zero (allowed for IPv4, RFC 7348 §5); the UDP
//!   source port is a hash of the inner flow in 49152–65535 for ECMP entropy.
//! - Decapsulation accepts only an unfragmented IPv4/UDP datagram to our VTEP address and port,
//!   with a valid IPv4 header checksum, a UDP length that matches the IPv4 payload, a valid UDP
//!   checksum when one is present, and VXLAN flags of exactly `I`. Anything else is an error naming
//!   why, which the pipeline counts as a drop reason.

use std::net::Ipv4Addr;

use etherparse::{EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, UdpHeaderSlice};

use crate::checksum;
use crate::mac::MacAddr;

/// The IANA-assigned VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;

/// A 24-bit VXLAN Network Identifier: one tenant L2 network.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Vni(u32);

/// A number that does not fit in 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VNI {0} is out of range: a VNI is a 24-bit number (0..=16777215)")]
pub struct VniError(pub u32);

impl Vni {
    /// The largest VNI.
    pub const MAX: u32 = 0x00ff_ffff;

    /// A VNI from a number.
    ///
    /// # Errors
    /// [`VniError`] if `v` does not fit in 24 bits.
    pub const fn new(v: u32) -> Result<Vni, VniError> {
        if v > Self::MAX {
            Err(VniError(v))
        } else {
            Ok(Vni(v))
        }
    }

    /// The number.
    #[inline]
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Vni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for Vni {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Vni {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vni::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Index of a peer in the [`PeerTable`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize)]
pub struct PeerId(u16);

impl PeerId {
    /// A peer id from an index.
    pub const fn new(i: u16) -> PeerId {
        PeerId(i)
    }

    /// The index.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// Byte ranges of the VXLAN header (RFC 7348 §5).
pub mod field {
    use std::ops::Range;
    /// Flags; only `I` (0x08) is defined.
    pub const FLAGS: usize = 0;
    /// Reserved, zero on transmit, ignored on receipt.
    pub const RESERVED1: Range<usize> = 1..4;
    /// The 24-bit VNI.
    pub const VNI: Range<usize> = 4..7;
    /// Reserved, zero on transmit, ignored on receipt.
    pub const RESERVED2: usize = 7;
    /// The inner Ethernet frame.
    pub const PAYLOAD: usize = 8;
}

/// The `I` flag: the VNI field is valid.
pub const FLAG_VNI_VALID: u8 = 0x08;
/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = field::PAYLOAD;

/// Why a VXLAN header is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    /// Fewer than 8 bytes.
    #[error("VXLAN header truncated")]
    Truncated,
    /// Flags other than exactly `I`.
    #[error("VXLAN flags {0:#04x}: expected exactly the I flag (0x08)")]
    BadFlags(u8),
}

/// A checked view of a VXLAN header and its payload.
#[derive(Debug, Clone, Copy)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps a buffer without checking its length; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps a buffer after [`VxlanPacket::check_len`].
    ///
    /// # Errors
    /// [`VxlanError::Truncated`] if the buffer is shorter than the header.
    pub fn new_checked(buffer: T) -> Result<Self, VxlanError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures the buffer holds a whole header.
    ///
    /// # Errors
    /// [`VxlanError::Truncated`] if it does not.
    pub fn check_len(&self) -> Result<(), VxlanError> {
        if self.buffer.as_ref().len() < VXLAN_HEADER_LEN {
            Err(VxlanError::Truncated)
        } else {
            Ok(())
        }
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The raw 24-bit VNI field.
    #[inline]
    pub fn vni_raw(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The inner frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI field.
    #[inline]
    pub fn set_vni(&mut self, vni: Vni) {
        let b = vni.get().to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }

    /// Zeroes both reserved fields.
    #[inline]
    pub fn clear_reserved(&mut self) {
        let buf = self.buffer.as_mut();
        buf[field::RESERVED1].fill(0);
        buf[field::RESERVED2] = 0;
    }

    /// The inner frame, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The meaning of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// The network the inner frame belongs to.
    pub vni: Vni,
}

impl VxlanRepr {
    /// Parses a checked header.
    ///
    /// # Errors
    /// [`VxlanError::BadFlags`] unless the flags are exactly `I`.
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> Result<VxlanRepr, VxlanError> {
        let flags = p.flags();
        if flags != FLAG_VNI_VALID {
            return Err(VxlanError::BadFlags(flags));
        }
        // A 24-bit field always fits.
        Ok(VxlanRepr {
            vni: Vni(p.vni_raw()),
        })
    }

    /// Bytes [`VxlanRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        VXLAN_HEADER_LEN
    }

    /// Writes the header (flags, zero reserved fields, VNI).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut VxlanPacket<T>) {
        p.set_flags(FLAG_VNI_VALID);
        p.clear_reserved();
        p.set_vni(self.vni);
    }
}

/// Byte offsets of the outer headers an encapsulated frame starts with.
pub mod outer {
    /// Ethernet header length.
    pub const ETH_LEN: usize = 14;
    /// IPv4 header length (no options).
    pub const IPV4_LEN: usize = 20;
    /// UDP header length.
    pub const UDP_LEN: usize = 8;
    /// Start of the IPv4 header.
    pub const IPV4: usize = ETH_LEN;
    /// IPv4 total length field.
    pub const IPV4_TOTAL_LEN: usize = IPV4 + 2;
    /// IPv4 header checksum field.
    pub const IPV4_CHECKSUM: usize = IPV4 + 10;
    /// Start of the UDP header.
    pub const UDP: usize = IPV4 + IPV4_LEN;
    /// UDP source port field.
    pub const UDP_SRC_PORT: usize = UDP;
    /// UDP length field.
    pub const UDP_LEN_FIELD: usize = UDP + 4;
    /// Start of the VXLAN header.
    pub const VXLAN: usize = UDP + UDP_LEN;
    /// Start of the inner frame.
    pub const INNER: usize = VXLAN + super::VXLAN_HEADER_LEN;
}

/// Bytes of outer headers in front of every encapsulated frame.
pub const OUTER_LEN: usize = outer::INNER;

/// This host's end of the tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVtep {
    /// The VTEP's IPv4 address on the underlay.
    pub addr: Ipv4Addr,
    /// The underlay interface's MAC address.
    pub mac: MacAddr,
    /// The UDP port VXLAN is sent to and received on.
    pub udp_port: u16,
}

/// Precomputed outer headers toward one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapTemplate {
    bytes: [u8; OUTER_LEN],
    /// Sum of the IPv4 header with zero total length and zero checksum.
    ip_partial_sum: u32,
}

/// The encapsulated frame would not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// The output buffer is too small for headers plus the inner frame.
    #[error("output buffer of {have} bytes cannot hold {need}")]
    NoRoom {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The result would exceed the largest IPv4 datagram.
    #[error("inner frame of {0} bytes is too large to encapsulate")]
    TooLarge(usize),
}

/// Time to live of outer IPv4 headers.
pub const OUTER_TTL: u8 = 64;

impl EncapTemplate {
    /// Outer headers from `local` to the peer at `remote` reached via next-hop MAC `next_hop`.
    pub fn new(local: &LocalVtep, remote: Ipv4Addr, next_hop: MacAddr) -> EncapTemplate {
        let mut b = [0u8; OUTER_LEN];
        let eth = etherparse::Ethernet2Header {
            source: local.mac.octets(),
            destination: next_hop.octets(),
            ether_type: EtherType::IPV4,
        };
        b[..outer::ETH_LEN].copy_from_slice(&eth.to_bytes());
        let ip = etherparse::Ipv4Header {
            total_len: 0,
            dont_fragment: false,
            time_to_live: OUTER_TTL,
            protocol: IpNumber::UDP,
            source: local.addr.octets(),
            destination: remote.octets(),
            header_checksum: 0,
            ..Default::default()
        };
        let ip_bytes = ip.to_bytes();
        b[outer::IPV4..outer::UDP].copy_from_slice(&ip_bytes[..outer::IPV4_LEN]);
        let udp = etherparse::UdpHeader {
            source_port: 0,
            destination_port: local.udp_port,
            length: 0,
            checksum: 0,
        };
        b[outer::UDP..outer::VXLAN].copy_from_slice(&udp.to_bytes());
        b[outer::VXLAN] = FLAG_VNI_VALID;
        let ip_partial_sum = checksum::add(0, &b[outer::IPV4..outer::UDP]);
        EncapTemplate {
            bytes: b,
            ip_partial_sum,
        }
    }

    /// The template bytes (length, checksum, source port and VNI fields zero).
    pub fn bytes(&self) -> &[u8; OUTER_LEN] {
        &self.bytes
    }

    /// Writes outer headers for `vni` and the `inner` frame into `out`; returns the total length.
    ///
    /// # Errors
    /// [`EncapError`] if `out` is too small or the datagram would exceed 65535 bytes.
    #[inline]
    pub fn encapsulate(&self, vni: Vni, inner: &[u8], out: &mut [u8]) -> Result<usize, EncapError> {
        let total = OUTER_LEN + inner.len();
        let Some(dst) = out.get_mut(..total) else {
            return Err(EncapError::NoRoom {
                need: total,
                have: out.len(),
            });
        };
        dst[OUTER_LEN..].copy_from_slice(inner);
        self.write_headers(vni, flow_hash(inner), &mut dst[..OUTER_LEN], inner.len())?;
        Ok(total)
    }

    /// Writes the outer headers into `hdr` (exactly [`OUTER_LEN`] bytes) for an inner frame of
    /// `inner_len` bytes with flow hash `hash`.
    ///
    /// # Errors
    /// [`EncapError::TooLarge`] if the datagram would exceed 65535 bytes.
    #[inline]
    pub fn write_headers(
        &self,
        vni: Vni,
        hash: u32,
        hdr: &mut [u8],
        inner_len: usize,
    ) -> Result<(), EncapError> {
        let ip_total = u16::try_from(OUTER_LEN - outer::ETH_LEN + inner_len)
            .map_err(|_| EncapError::TooLarge(inner_len))?;
        // Cannot overflow: ip_total already fits and UDP length is smaller.
        let udp_len = ip_total - outer::IPV4_LEN as u16;
        hdr.copy_from_slice(&self.bytes);
        hdr[outer::IPV4_TOTAL_LEN..outer::IPV4_TOTAL_LEN + 2]
            .copy_from_slice(&ip_total.to_be_bytes());
        let csum = checksum::finish(self.ip_partial_sum + u32::from(ip_total));
        hdr[outer::IPV4_CHECKSUM..outer::IPV4_CHECKSUM + 2].copy_from_slice(&csum.to_be_bytes());
        hdr[outer::UDP_SRC_PORT..outer::UDP_SRC_PORT + 2]
            .copy_from_slice(&source_port(hash).to_be_bytes());
        hdr[outer::UDP_LEN_FIELD..outer::UDP_LEN_FIELD + 2].copy_from_slice(&udp_len.to_be_bytes());
        VxlanPacket::new_unchecked(&mut hdr[outer::VXLAN..]).set_vni(vni);
        Ok(())
    }
}

/// The UDP source port for a flow hash: 49152–65535 (RFC 7348 §5 recommends the dynamic range).
#[inline]
pub fn source_port(hash: u32) -> u16 {
    // 16384 ports: the low 14 bits pick one.
    49152 | (hash & 0x3fff) as u16
}

/// Inner Ethernet offsets used by [`flow_hash`].
mod inner {
    use std::ops::Range;
    pub const MACS: Range<usize> = 0..12;
    pub const ETHER_TYPE: Range<usize> = 12..14;
    pub const IPV4: usize = 14;
    pub const IPV4_PROTO: usize = IPV4 + 9;
    pub const IPV4_FRAG: Range<usize> = IPV4 + 6..IPV4 + 8;
    pub const IPV4_ADDRS: Range<usize> = IPV4 + 12..IPV4 + 20;
}

/// A hash of the inner frame's flow: MACs, and for unfragmented IPv4 the addresses, protocol and
/// (TCP/UDP) ports. Frames of one flow hash alike, so one flow keeps one underlay path.
#[inline]
pub fn flow_hash(frame: &[u8]) -> u32 {
    let macs = frame.get(inner::MACS).unwrap_or(&[]);
    let mut a = 0u64;
    for (i, b) in macs.iter().enumerate() {
        a ^= u64::from(*b) << ((i % 8) * 8);
    }
    let mut b = 0u64;
    if frame.get(inner::ETHER_TYPE) == Some(&[0x08, 0x00]) {
        if let (Some(addrs), Some(&proto), Some(&vihl), Some(frag)) = (
            frame.get(inner::IPV4_ADDRS),
            frame.get(inner::IPV4_PROTO),
            frame.get(inner::IPV4),
            frame.get(inner::IPV4_FRAG),
        ) {
            let mut x = [0u8; 8];
            x.copy_from_slice(addrs);
            b = u64::from_be_bytes(x) ^ (u64::from(proto) << 56);
            let ihl = usize::from(vihl & 0x0f) * 4;
            let unfragmented = frag[0] & 0x3f == 0 && frag[1] == 0;
            if unfragmented && (proto == 6 || proto == 17) {
                let l4 = inner::IPV4 + ihl;
                if let Some(ports) = frame.get(l4..l4 + 4) {
                    let p = u32::from_be_bytes([ports[0], ports[1], ports[2], ports[3]]);
                    a ^= u64::from(p) << 16;
                }
            }
        }
    }
    let h = crate::table::mix(a, b, 0x9e37_79b9_7f4a_7c15);
    (h ^ (h >> 32)) as u32
}

/// Why an underlay frame was not accepted as VXLAN for this VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// Too short for the headers it claims.
    #[error("truncated")]
    Truncated,
    /// Not IPv4/UDP to our VTEP address and port: not tunnel traffic.
    #[error("not VXLAN for this VTEP")]
    NotVxlan,
    /// IPv4 header checksum wrong.
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    /// IPv4 total length beyond the frame or below the header.
    #[error("bad IPv4 total length")]
    BadIpLength,
    /// A fragment (reassembly is not done on the tunnel path).
    #[error("fragmented outer IPv4")]
    Fragmented,
    /// UDP length does not match the IPv4 payload.
    #[error("UDP length does not match the IPv4 payload")]
    BadUdpLength,
    /// UDP checksum present and wrong.
    #[error("bad UDP checksum")]
    BadUdpChecksum,
    /// VXLAN flags other than exactly `I`.
    #[error("bad VXLAN flags")]
    BadVxlanFlags,
}

/// A decapsulated frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decap<'a> {
    /// Outer source address: the sending VTEP.
    pub src: Ipv4Addr,
    /// The network.
    pub vni: Vni,
    /// The inner Ethernet frame.
    pub inner: &'a [u8],
}

/// Parses an underlay Ethernet frame as VXLAN addressed to `local`.
///
/// # Errors
/// [`DecapError`] saying why the frame is not acceptable tunnel traffic.
#[inline]
pub fn decapsulate<'a>(frame: &'a [u8], local: &LocalVtep) -> Result<Decap<'a>, DecapError> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| DecapError::Truncated)?;
    if eth.ether_type() != EtherType::IPV4 {
        return Err(DecapError::NotVxlan);
    }
    let l3 = &frame[outer::ETH_LEN..];
    let ip = Ipv4HeaderSlice::from_slice(l3).map_err(|e| match e {
        etherparse::err::ipv4::HeaderSliceError::Len(_) => DecapError::Truncated,
        etherparse::err::ipv4::HeaderSliceError::Content(_) => DecapError::NotVxlan,
    })?;
    if ip.protocol() != IpNumber::UDP || ip.destination_addr() != local.addr {
        return Err(DecapError::NotVxlan);
    }
    let ihl = ip.slice().len();
    let total = usize::from(ip.total_len());
    if total < ihl || total > l3.len() {
        return Err(DecapError::BadIpLength);
    }
    if !checksum::verify(ip.slice()) {
        return Err(DecapError::BadIpChecksum);
    }
    let datagram = &l3[ihl..total];
    let udp = UdpHeaderSlice::from_slice(datagram).map_err(|_| DecapError::Truncated)?;
    if udp.destination_port() != local.udp_port {
        return Err(DecapError::NotVxlan);
    }
    if ip.more_fragments() || ip.fragments_offset().value() != 0 {
        return Err(DecapError::Fragmented);
    }
    if usize::from(udp.length()) != datagram.len() {
        return Err(DecapError::BadUdpLength);
    }
    if udp.checksum() != 0 {
        let mut sum = checksum::add(0, &ip.source());
        sum = checksum::add(sum, &ip.destination());
        sum = checksum::add(sum, &[0, 17]);
        sum = checksum::add(sum, &udp.length().to_be_bytes());
        sum = checksum::add(sum, datagram);
        if checksum::fold(sum) != 0xffff {
            return Err(DecapError::BadUdpChecksum);
        }
    }
    let vx =
        VxlanPacket::new_checked(&datagram[outer::UDP_LEN..]).map_err(|_| DecapError::Truncated)?;
    let repr = VxlanRepr::parse(&vx).map_err(|_| DecapError::BadVxlanFlags)?;
    Ok(Decap {
        src: ip.source_addr(),
        vni: repr.vni,
        inner: &datagram[outer::UDP_LEN + VXLAN_HEADER_LEN..],
    })
}

/// Which networks a peer shares with this host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerVnis {
    /// Every network configured on this host.
    All,
    /// Only these.
    Only(Vec<Vni>),
}

impl PeerVnis {
    /// True if `vni` is shared.
    #[inline]
    pub fn contains(&self, vni: Vni) -> bool {
        match self {
            PeerVnis::All => true,
            PeerVnis::Only(v) => v.contains(&vni),
        }
    }
}

/// A remote switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its VTEP address.
    pub addr: Ipv4Addr,
    /// The underlay next-hop MAC toward it.
    pub next_hop: MacAddr,
    /// Networks shared with it.
    pub vnis: PeerVnis,
    /// Outer headers toward it.
    pub template: EncapTemplate,
    /// Bytes its path adds beyond plain VXLAN (a secure tunnel's), taken off the inner MTU.
    pub overhead: usize,
}

/// Errors changing the peer table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The address is already a peer.
    #[error("peer {0} already exists")]
    Duplicate(Ipv4Addr),
    /// A peer cannot be this host.
    #[error("peer {0} is this host's own VTEP address")]
    IsLocal(Ipv4Addr),
    /// No such peer.
    #[error("no peer {0}")]
    NotFound(Ipv4Addr),
    /// The table is full.
    #[error("peer table full ({0} peers)")]
    Full(usize),
}

/// Maximum number of peers.
pub const MAX_PEERS: usize = 4096;

/// The VTEPs this switch tunnels to, by [`PeerId`].
#[derive(Debug, Clone)]
pub struct PeerTable {
    local: LocalVtep,
    peers: Vec<Option<Peer>>,
    by_addr: std::collections::HashMap<Ipv4Addr, PeerId>,
}

impl PeerTable {
    /// An empty table for tunnels from `local`.
    pub fn new(local: LocalVtep) -> PeerTable {
        PeerTable {
            local,
            peers: Vec::new(),
            by_addr: std::collections::HashMap::new(),
        }
    }

    /// This host's VTEP.
    pub fn local(&self) -> &LocalVtep {
        &self.local
    }

    /// Adds a peer.
    ///
    /// # Errors
    /// [`PeerError`] for a duplicate, our own address, or a full table.
    pub fn add(
        &mut self,
        addr: Ipv4Addr,
        next_hop: MacAddr,
        vnis: PeerVnis,
    ) -> Result<PeerId, PeerError> {
        if addr == self.local.addr {
            return Err(PeerError::IsLocal(addr));
        }
        if self.by_addr.contains_key(&addr) {
            return Err(PeerError::Duplicate(addr));
        }
        let slot = match self.peers.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.peers.len() < MAX_PEERS => {
                self.peers.push(None);
                self.peers.len() - 1
            }
            None => return Err(PeerError::Full(MAX_PEERS)),
        };
        // slot < MAX_PEERS <= u16::MAX.
        let id = PeerId(slot as u16);
        self.peers[slot] = Some(Peer {
            addr,
            next_hop,
            vnis,
            template: EncapTemplate::new(&self.local, addr, next_hop),
            overhead: 0,
        });
        self.by_addr.insert(addr, id);
        Ok(id)
    }

    /// Removes a peer.
    ///
    /// # Errors
    /// [`PeerError::NotFound`] if there is no such peer.
    pub fn remove(&mut self, addr: Ipv4Addr) -> Result<PeerId, PeerError> {
        let id = self
            .by_addr
            .remove(&addr)
            .ok_or(PeerError::NotFound(addr))?;
        self.peers[usize::from(id.0)] = None;
        Ok(id)
    }

    /// Sets the bytes the path to peer `id` adds beyond plain VXLAN.
    pub fn set_overhead(&mut self, id: PeerId, overhead: usize) {
        if let Some(Some(p)) = self.peers.get_mut(usize::from(id.0)) {
            p.overhead = overhead;
        }
    }

    /// The peer with `id`.
    #[inline]
    pub fn get(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(usize::from(id.0))?.as_ref()
    }

    /// The id of the peer at `addr`.
    #[inline]
    pub fn id_of(&self, addr: Ipv4Addr) -> Option<PeerId> {
        self.by_addr.get(&addr).copied()
    }

    /// All peers.
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, &Peer)> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (PeerId(i as u16), p)))
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// True when there are no peers.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static HEADER: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00];

    #[test]
    fn deconstruct() {
        let p = VxlanPacket::new_checked(&HEADER[..]).unwrap();
        assert_eq!(p.flags(), 0x08);
        assert_eq!(p.vni_raw(), 100);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn construct() {
        let mut buf = [0xa5u8; 8];
        let mut p = VxlanPacket::new_unchecked(&mut buf[..]);
        p.set_flags(FLAG_VNI_VALID);
        p.clear_reserved();
        p.set_vni(Vni::new(100).unwrap());
        assert_eq!(buf, HEADER);
    }

    #[test]
    fn parse() {
        let p = VxlanPacket::new_checked(&HEADER[..]).unwrap();
        assert_eq!(
            VxlanRepr::parse(&p),
            Ok(VxlanRepr {
                vni: Vni::new(100).unwrap()
            })
        );
        let mut bad = HEADER;
        bad[0] = 0x0c;
        let p = VxlanPacket::new_checked(&bad[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Err(VxlanError::BadFlags(0x0c)));
        let mut reserved = HEADER;
        reserved[1] = 0xff;
        reserved[7] = 0xff;
        let p = VxlanPacket::new_checked(&reserved[..]).unwrap();
        assert!(
            VxlanRepr::parse(&p).is_ok(),
            "reserved fields are ignored on receipt"
        );
    }

    #[test]
    fn emit() {
        let repr = VxlanRepr {
            vni: Vni::new(100).unwrap(),
        };
        let mut buf = [0xa5u8; 8];
        assert_eq!(repr.buffer_len(), buf.len());
        repr.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, HEADER);
    }

    #[test]
    fn short_buffers_are_rejected() {
        for n in 0..8 {
            assert_eq!(
                VxlanPacket::new_checked(&HEADER[..n]).unwrap_err(),
                VxlanError::Truncated
            );
        }
    }

    #[test]
    fn vni_range() {
        assert!(Vni::new(Vni::MAX).is_ok());
        assert_eq!(Vni::new(Vni::MAX + 1), Err(VniError(Vni::MAX + 1)));
    }

    fn local(addr: [u8; 4], mac: u8) -> LocalVtep {
        LocalVtep {
            addr: Ipv4Addr::from(addr),
            mac: MacAddr([2, 0, 0, 0, 0, mac]),
            udp_port: VXLAN_PORT,
        }
    }

    fn inner_frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 1, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 1, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        for (i, b) in f.iter_mut().enumerate().skip(14) {
            *b = i as u8;
        }
        f
    }

    #[test]
    fn encapsulated_frames_parse_with_etherparse_and_decapsulate() {
        let a = local([10, 0, 0, 1], 1);
        let b = local([10, 0, 0, 2], 2);
        let t = EncapTemplate::new(&a, b.addr, b.mac);
        let inner = inner_frame(100);
        let mut out = [0xa5u8; 256];
        let n = t
            .encapsulate(Vni::new(7).unwrap(), &inner, &mut out)
            .unwrap();
        assert_eq!(n, OUTER_LEN + 100);
        let frame = &out[..n];
        let parsed = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
        match parsed.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                assert_eq!(ip.header().source_addr(), a.addr);
                assert_eq!(ip.header().destination_addr(), b.addr);
                assert!(checksum::verify(ip.header().slice()));
            }
            other => panic!("expected IPv4, got {other:?}"),
        }
        match parsed.transport {
            Some(etherparse::TransportSlice::Udp(u)) => {
                assert_eq!(u.destination_port(), VXLAN_PORT);
                assert!(u.source_port() >= 49152);
                assert_eq!(usize::from(u.length()), 8 + 8 + 100);
            }
            other => panic!("expected UDP, got {other:?}"),
        }
        let d = decapsulate(frame, &b).unwrap();
        assert_eq!(d.src, a.addr);
        assert_eq!(d.vni.get(), 7);
        assert_eq!(d.inner, &inner[..]);
        assert_eq!(
            decapsulate(frame, &a),
            Err(DecapError::NotVxlan),
            "addressed to b, not a"
        );
    }

    #[test]
    fn decap_rejects_malformed_frames_by_reason() {
        let a = local([10, 0, 0, 1], 1);
        let b = local([10, 0, 0, 2], 2);
        let t = EncapTemplate::new(&a, b.addr, b.mac);
        let mut out = [0u8; 256];
        let n = t
            .encapsulate(Vni::new(7).unwrap(), &inner_frame(60), &mut out)
            .unwrap();
        let good = out[..n].to_vec();

        for cut in 0..OUTER_LEN {
            let r = decapsulate(&good[..cut], &b);
            assert!(r.is_err(), "truncated at {cut} must fail");
        }
        let mut f = good.clone();
        f[outer::VXLAN] = 0;
        assert_eq!(decapsulate(&f, &b), Err(DecapError::BadVxlanFlags));
        let mut f = good.clone();
        f[outer::UDP_LEN_FIELD + 1] ^= 1;
        assert_eq!(decapsulate(&f, &b), Err(DecapError::BadUdpLength));
        let mut f = good.clone();
        f[outer::IPV4 + 8] ^= 1; // TTL changes, checksum no longer matches
        assert_eq!(decapsulate(&f, &b), Err(DecapError::BadIpChecksum));
        let mut f = good.clone();
        f[outer::IPV4_TOTAL_LEN] = 0xff;
        assert_eq!(decapsulate(&f, &b), Err(DecapError::BadIpLength));
        let mut f = good.clone();
        f[outer::UDP + 2..outer::UDP + 4].copy_from_slice(&4790u16.to_be_bytes());
        assert_eq!(decapsulate(&f, &b), Err(DecapError::NotVxlan));
        let mut f = good.clone();
        f[outer::UDP + 6] = 0x12; // a wrong, non-zero UDP checksum
        assert_eq!(decapsulate(&f, &b), Err(DecapError::BadUdpChecksum));
        let mut f = good;
        f[12] = 0x86;
        f[13] = 0xdd;
        assert_eq!(decapsulate(&f, &b), Err(DecapError::NotVxlan));
    }

    #[test]
    fn valid_udp_checksum_is_accepted() {
        let a = local([10, 0, 0, 1], 1);
        let b = local([10, 0, 0, 2], 2);
        let t = EncapTemplate::new(&a, b.addr, b.mac);
        let mut out = [0u8; 256];
        let n = t
            .encapsulate(Vni::new(7).unwrap(), &inner_frame(61), &mut out)
            .unwrap();
        let f = &mut out[..n];
        let udp_len = (n - outer::UDP) as u16;
        let mut sum = checksum::add(0, &a.addr.octets());
        sum = checksum::add(sum, &b.addr.octets());
        sum = checksum::add(sum, &[0, 17]);
        sum = checksum::add(sum, &udp_len.to_be_bytes());
        sum = checksum::add(sum, &f[outer::UDP..]);
        f[outer::UDP + 6..outer::UDP + 8].copy_from_slice(&checksum::finish(sum).to_be_bytes());
        assert!(decapsulate(f, &b).is_ok());
    }

    #[test]
    fn flows_keep_their_source_port_and_flows_spread() {
        let mut f = inner_frame(60);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 6] = 0;
        f[14 + 7] = 0;
        f[14 + 9] = 17;
        let h1 = flow_hash(&f);
        assert_eq!(h1, flow_hash(&f));
        let mut ports = std::collections::HashSet::new();
        for p in 0..64u16 {
            f[34..36].copy_from_slice(&(1000 + p).to_be_bytes());
            ports.insert(source_port(flow_hash(&f)));
        }
        assert!(
            ports.len() > 32,
            "64 flows used only {} source ports",
            ports.len()
        );
        assert_eq!(
            flow_hash(&[]),
            flow_hash(&[]),
            "short frames hash without panicking"
        );
    }

    #[test]
    fn peer_table_add_remove_reuse() {
        let a = local([10, 0, 0, 1], 1);
        let mut t = PeerTable::new(a);
        let p2 = Ipv4Addr::new(10, 0, 0, 2);
        let p3 = Ipv4Addr::new(10, 0, 0, 3);
        let id2 = t
            .add(p2, MacAddr([2, 0, 0, 0, 0, 2]), PeerVnis::All)
            .unwrap();
        assert_eq!(
            t.add(p2, MacAddr::ZERO, PeerVnis::All),
            Err(PeerError::Duplicate(p2))
        );
        assert_eq!(
            t.add(a.addr, MacAddr::ZERO, PeerVnis::All),
            Err(PeerError::IsLocal(a.addr))
        );
        let id3 = t
            .add(
                p3,
                MacAddr::ZERO,
                PeerVnis::Only(vec![Vni::new(5).unwrap()]),
            )
            .unwrap();
        assert_ne!(id2, id3);
        assert!(t.get(id3).unwrap().vnis.contains(Vni::new(5).unwrap()));
        assert!(!t.get(id3).unwrap().vnis.contains(Vni::new(6).unwrap()));
        assert_eq!(t.remove(p2), Ok(id2));
        assert!(t.get(id2).is_none());
        assert_eq!(t.id_of(p2), None);
        let again = t.add(p2, MacAddr::ZERO, PeerVnis::All).unwrap();
        assert_eq!(again, id2, "freed ids are reused");
        assert_eq!(t.len(), 2);
    }

    proptest! {
        #[test]
        fn vxlan_parse_emit_round_trip(vni in 0u32..=Vni::MAX) {
            let repr = VxlanRepr { vni: Vni::new(vni).unwrap() };
            let mut buf = [0xa5u8; 8];
            repr.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
            let p = VxlanPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(VxlanRepr::parse(&p), Ok(repr));
        }

        #[test]
        fn encap_decap_round_trip(vni in 0u32..=Vni::MAX, inner in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let a = local([10, 1, 0, 1], 1);
            let b = local([10, 1, 0, 2], 2);
            let t = EncapTemplate::new(&a, b.addr, b.mac);
            let mut out = vec![0u8; OUTER_LEN + inner.len()];
            let vni = Vni::new(vni).unwrap();
            let n = t.encapsulate(vni, &inner, &mut out).unwrap();
            let d = decapsulate(&out[..n], &b).unwrap();
            prop_assert_eq!(d, Decap { src: a.addr, vni, inner: &inner[..] });
        }

        #[test]
        fn decap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decapsulate(&bytes, &local([10, 0, 0, 2], 2));
        }
    }
}
