//! ICMP "fragmentation needed" for frames too large for the tunnel, so TCP path-MTU discovery
//! works through the overlay.
//!
//! The switch answers on behalf of the destination (source addresses are the original
//! destination's), as a router on the path would: the sender's kernel lowers its path MTU for
//! that destination and resends in smaller segments.

use crate::checksum;

const ETH_LEN: usize = 14;
/// Bytes of Ethernet header between a frame's length and its IP MTU.
pub const ETH_HEADER: usize = ETH_LEN;
/// ICMP type "destination unreachable".
const DEST_UNREACH: u8 = 3;
/// ICMP code "fragmentation needed and DF set".
const FRAG_NEEDED: u8 = 4;

/// Builds into `out` the ICMP "fragmentation needed" answer to `frame` (an Ethernet frame carrying
/// IPv4 with DF set), announcing `mtu`; returns its length. `None` when no answer is due: not
/// IPv4, DF not set, a fragment, an ICMP error itself (never answered, RFC 1122), malformed, or
/// `out` too small.
pub fn frag_needed(frame: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(ETH_LEN..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    let flags = u16::from_be_bytes([ip[6], ip[7]]);
    let df = flags & 0x4000 != 0;
    let fragment = flags & 0x3fff != 0;
    if !df || fragment {
        return None;
    }
    if ip[9] == 1 {
        // ICMP: answer only echo requests and replies, never errors.
        let t = *ip.get(ihl)?;
        if t != 8 && t != 0 {
            return None;
        }
    }
    let quoted = (ihl + 8).min(ip.len());
    let icmp_len = 8 + quoted;
    let total = ETH_LEN + 20 + icmp_len;
    let o = out.get_mut(..total)?;
    // Ethernet: back to the sender, from the destination it tried to reach.
    o[0..6].copy_from_slice(&frame[6..12]);
    o[6..12].copy_from_slice(&frame[0..6]);
    o[12..14].copy_from_slice(&[0x08, 0x00]);
    let h = &mut o[ETH_LEN..ETH_LEN + 20];
    h.copy_from_slice(&[
        0x45, 0xc0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    h[2..4].copy_from_slice(&((20 + icmp_len) as u16).to_be_bytes());
    h[12..16].copy_from_slice(&ip[16..20]);
    h[16..20].copy_from_slice(&ip[12..16]);
    let sum = checksum::finish(checksum::add(0, h));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    let m = &mut o[ETH_LEN + 20..];
    m[0] = DEST_UNREACH;
    m[1] = FRAG_NEEDED;
    m[2..6].fill(0);
    m[6..8].copy_from_slice(&mtu.to_be_bytes());
    m[8..8 + quoted].copy_from_slice(&ip[..quoted]);
    let sum = checksum::finish(checksum::add(0, &m[..icmp_len]));
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_df(len: usize) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1000);
        let mut f = Vec::new();
        b.write(&mut f, &vec![7u8; len]).unwrap();
        f
    }

    #[test]
    fn answers_a_df_frame_with_a_valid_icmp_error() {
        let f = tcp_df(1400);
        let mut out = [0u8; 128];
        let n = frag_needed(&f, 1450, &mut out).unwrap();
        let p = etherparse::SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else {
            panic!()
        };
        assert_eq!(eth.destination(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(eth.source(), [2, 0, 0, 0, 0, 2]);
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        assert_eq!(ip.header().source(), [10, 0, 0, 2]);
        assert_eq!(ip.header().destination(), [10, 0, 0, 1]);
        assert!(checksum::verify(ip.header().slice()));
        let icmp = &out[34..n];
        assert!(checksum::verify(icmp), "ICMP checksum");
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450);
        assert_eq!(&icmp[8..36], &f[14..42], "quotes the IP header and 8 bytes");
    }

    #[test]
    fn no_answer_without_df_for_fragments_errors_or_non_ipv4() {
        let mut out = [0u8; 128];
        let mut f = tcp_df(100);
        f[20] &= !0x40;
        assert_eq!(frag_needed(&f, 1450, &mut out), None, "DF clear");
        let mut frag = tcp_df(100);
        frag[21] = 1;
        assert_eq!(frag_needed(&frag, 1450, &mut out), None, "fragment");
        let mut err = tcp_df(100);
        err[23] = 1;
        err[34] = 3;
        assert_eq!(frag_needed(&err, 1450, &mut out), None, "ICMP error");
        let mut arp = tcp_df(100);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(frag_needed(&arp, 1450, &mut out), None);
        assert_eq!(frag_needed(&tcp_df(100)[..20], 1450, &mut out), None);
        assert_eq!(frag_needed(&tcp_df(100), 1450, &mut out[..40]), None);
    }
}
