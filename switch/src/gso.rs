//! Software segmentation of TCP super-frames (GSO), for destinations that cannot take them.
//!
//! A guest with TSO hands the switch TCP frames of up to 64 KiB with the kernel's offload header
//! saying how to cut them (`gso_size`). A local port passes them on as they are; a VXLAN tunnel
//! cannot (the underlay MTU bounds every packet), so the switch cuts them here into segments of
//! at most `gso_size` payload bytes, each a complete frame with finished IPv4 and TCP checksums,
//! exactly as the kernel's own GSO would: sequence numbers advance, the IPv4 identification
//! increments, FIN and PSH stay on the last segment only, CWR on the first only.

use crate::checksum;
use crate::port::Offload;

/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` (a flag on the type).
pub const GSO_ECN: u8 = 0x80;

const ETH_LEN: usize = 14;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a super-frame could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    /// Not TCP over untagged IPv4/IPv6 (UDP fragmentation offload, tunnels in the frame, VLAN).
    #[error("unsupported GSO type {0:#x}")]
    Unsupported(u8),
    /// Headers shorter than they claim, or a zero segment size.
    #[error("malformed GSO frame")]
    Malformed,
    /// A segment does not fit the scratch buffer.
    #[error("segment larger than the buffer")]
    TooBig,
}

/// Cuts `frame` (described by `off`) into segments, builds each in `buf` and hands it to `emit`;
/// returns the number of segments.
///
/// # Errors
/// [`GsoError`]; nothing is emitted for a frame rejected before its first segment.
pub fn segment(
    frame: &[u8],
    off: &Offload,
    buf: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, GsoError> {
    let kind = off.gso_type & !GSO_ECN;
    let v4 = match kind {
        GSO_TCPV4 => true,
        GSO_TCPV6 => false,
        other => return Err(GsoError::Unsupported(other)),
    };
    let ethertype = frame.get(12..14).ok_or(GsoError::Malformed)?;
    if ethertype != if v4 { [0x08, 0x00] } else { [0x86, 0xdd] } {
        return Err(GsoError::Unsupported(off.gso_type));
    }
    let ip_len = if v4 {
        let b = *frame.get(ETH_LEN).ok_or(GsoError::Malformed)?;
        if b >> 4 != 4 {
            return Err(GsoError::Malformed);
        }
        usize::from(b & 0x0f) * 4
    } else {
        if frame.get(ETH_LEN + 6) != Some(&6) {
            // Extension headers before TCP are not segmented here.
            return Err(GsoError::Unsupported(off.gso_type));
        }
        40
    };
    if v4 && (ip_len < 20 || frame.get(ETH_LEN + 9) != Some(&6)) {
        return Err(GsoError::Malformed);
    }
    let tcp = ETH_LEN + ip_len;
    let doff = usize::from(*frame.get(tcp + 12).ok_or(GsoError::Malformed)? >> 4) * 4;
    let hdr = tcp + doff;
    if doff < 20 || hdr > frame.len() {
        return Err(GsoError::Malformed);
    }
    let mss = usize::from(off.gso_size);
    if mss == 0 {
        return Err(GsoError::Malformed);
    }
    let payload = &frame[hdr..];
    if hdr + mss.min(payload.len()) > buf.len() {
        return Err(GsoError::TooBig);
    }
    let seq0 = u32::from_be_bytes([
        frame[tcp + 4],
        frame[tcp + 5],
        frame[tcp + 6],
        frame[tcp + 7],
    ]);
    let id0 = if v4 {
        u16::from_be_bytes([frame[ETH_LEN + 4], frame[ETH_LEN + 5]])
    } else {
        0
    };
    let flags0 = frame[tcp + 13];
    let chunks = payload.len().div_ceil(mss).max(1);
    for (i, start) in (0..chunks).map(|i| (i, i * mss)) {
        let chunk = &payload[start..(start + mss).min(payload.len())];
        let len = hdr + chunk.len();
        let seg = &mut buf[..len];
        seg[..hdr].copy_from_slice(&frame[..hdr]);
        seg[hdr..].copy_from_slice(chunk);
        let l4_len = doff + chunk.len();
        if v4 {
            let ip = &mut seg[ETH_LEN..tcp];
            ip[2..4].copy_from_slice(&((ip_len + l4_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            ip[10..12].fill(0);
            let sum = checksum::finish(checksum::add(0, ip));
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
        } else {
            seg[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let last = i + 1 == chunks;
        let t = &mut seg[tcp..];
        t[4..8].copy_from_slice(&seq0.wrapping_add(start as u32).to_be_bytes());
        let mut flags = flags0;
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        t[13] = flags;
        t[16..18].fill(0);
        let mut sum = if v4 {
            checksum::add(0, &frame[ETH_LEN + 12..ETH_LEN + 20])
        } else {
            checksum::add(0, &frame[ETH_LEN + 8..ETH_LEN + 40])
        };
        sum = checksum::add(sum, &[0, 6]);
        sum = checksum::add(sum, &(l4_len as u16).to_be_bytes());
        sum = checksum::add(sum, &seg[tcp..]);
        let c = checksum::finish(sum);
        seg[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
        emit(seg);
    }
    Ok(chunks)
}

/// Describes a TCP frame longer than `inner_mtu` (IP bytes) as a super-frame to be cut into
/// segments that fit, and turns its checksum into the partial form that segmentation expects
/// (the pseudo-header sum over the whole frame). Returns `None`, leaving the frame unchanged, for
/// anything else.
///
/// A Linux sender whose VXLAN packets cross only virtual links (veth) can deliver a whole TCP
/// super-frame in one UDP datagram (nothing on the path segmented it); the receiving switch
/// must not hand such a frame to a guest as if it were one packet.
pub fn mark_super_frame(frame: &mut [u8], inner_mtu: usize) -> Option<Offload> {
    let v4 = match frame.get(12..14)? {
        [0x08, 0x00] => true,
        [0x86, 0xdd] => false,
        _ => return None,
    };
    let l3_len = frame.len().checked_sub(ETH_LEN)?;
    if l3_len <= inner_mtu {
        return None;
    }
    let (ip_len, proto) = if v4 {
        let ip = frame.get(ETH_LEN..ETH_LEN + 20)?;
        let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
        if ip[0] >> 4 != 4 || fragmented {
            return None;
        }
        (usize::from(ip[0] & 0x0f) * 4, ip[9])
    } else {
        (40, *frame.get(ETH_LEN + 6)?)
    };
    if proto != 6 || ip_len < 20 {
        return None;
    }
    let tcp = ETH_LEN + ip_len;
    let doff = usize::from(*frame.get(tcp + 12)? >> 4) * 4;
    let hdr = tcp + doff;
    if doff < 20 || hdr >= frame.len() || inner_mtu <= ip_len + doff {
        return None;
    }
    let l4_len = frame.len() - tcp;
    let mut sum = if v4 {
        checksum::add(0, &frame[ETH_LEN + 12..ETH_LEN + 20])
    } else {
        checksum::add(0, &frame[ETH_LEN + 8..ETH_LEN + 40])
    };
    sum = checksum::add(sum, &[0, 6]);
    sum = checksum::add(sum, &(l4_len as u32).to_be_bytes());
    frame[tcp + 16..tcp + 18].copy_from_slice(&checksum::fold(sum).to_be_bytes());
    Some(Offload {
        flags: Offload::F_NEEDS_CSUM,
        gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
        hdr_len: hdr as u16,
        gso_size: (inner_mtu - ip_len - doff) as u16,
        csum_start: tcp as u16,
        csum_offset: 16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn super_frame(v6: bool, payload: &[u8], flags_fin_psh: bool) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v6 {
            b.ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        let mut b = b.tcp(40000, 5201, 1_000_000, 65535).ack(77).cwr();
        if flags_fin_psh {
            b = b.fin().psh();
        }
        let mut f = Vec::new();
        b.write(&mut f, payload).unwrap();
        f
    }

    fn check(v6: bool) {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
        let f = super_frame(v6, &payload, true);
        let off = Offload {
            flags: Offload::F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            gso_size: 1448,
            ..Offload::NONE
        };
        let mut buf = vec![0u8; 2048];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = segment(&f, &off, &mut buf, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let p = etherparse::SlicedPacket::from_ethernet(s).unwrap();
            let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
                panic!("segment {i} is not TCP");
            };
            assert_eq!(t.sequence_number(), 1_000_000 + (i as u32) * 1448);
            assert_eq!(t.acknowledgment_number(), 77);
            assert_eq!(t.fin(), i == 2, "FIN only on the last");
            assert_eq!(t.psh(), i == 2, "PSH only on the last");
            assert_eq!(t.cwr(), i == 0, "CWR only on the first");
            // Checksums verify, as a receiver would check them.
            let expected = match &p.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    assert!(checksum::verify(ip.header().slice()), "IPv4 checksum");
                    assert_eq!(ip.header().identification(), i as u16);
                    assert_eq!(usize::from(ip.header().total_len()), s.len() - 14);
                    t.to_header()
                        .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                        .unwrap()
                }
                Some(etherparse::NetSlice::Ipv6(ip)) => {
                    assert_eq!(usize::from(ip.header().payload_length()), s.len() - 54);
                    t.to_header()
                        .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                        .unwrap()
                }
                _ => panic!("no IP"),
            };
            assert_eq!(t.checksum(), expected, "TCP checksum of segment {i}");
            assert!(t.payload().len() <= 1448);
            joined.extend_from_slice(t.payload());
        }
        assert_eq!(joined, payload, "the payload survives, in order");
    }

    #[test]
    fn tcp_over_ipv4_is_cut_like_the_kernel_does() {
        check(false);
    }

    #[test]
    fn tcp_over_ipv6_is_cut_like_the_kernel_does() {
        check(true);
    }

    #[test]
    fn unsupported_and_malformed_frames_are_refused_without_output() {
        let f = super_frame(false, &[1; 3000], false);
        let mut buf = vec![0u8; 2048];
        let mut emitted = 0;
        let udp = Offload {
            gso_type: 3,
            gso_size: 1400,
            ..Offload::NONE
        };
        assert_eq!(
            segment(&f, &udp, &mut buf, |_| emitted += 1),
            Err(GsoError::Unsupported(3))
        );
        let zero = Offload {
            gso_type: GSO_TCPV4,
            gso_size: 0,
            ..Offload::NONE
        };
        assert_eq!(
            segment(&f, &zero, &mut buf, |_| emitted += 1),
            Err(GsoError::Malformed)
        );
        let ok = Offload {
            gso_type: GSO_TCPV4,
            gso_size: 1448,
            ..Offload::NONE
        };
        assert_eq!(
            segment(&f[..40], &ok, &mut buf, |_| emitted += 1),
            Err(GsoError::Malformed)
        );
        assert_eq!(
            segment(&f, &ok, &mut buf[..100], |_| emitted += 1),
            Err(GsoError::TooBig)
        );
        assert_eq!(emitted, 0);
    }

    #[test]
    fn a_received_super_frame_is_described_for_segmentation() {
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let f = super_frame(false, &payload, false);
        let mut marked = f.clone();
        let off = mark_super_frame(&mut marked, 1450).unwrap();
        assert!(off.is_gso() && off.needs_csum());
        assert_eq!(off.gso_size, 1450 - 20 - 20);
        assert_eq!((off.csum_start, off.csum_offset), (34, 16));
        // Completing the partial checksum gives the frame's real checksum back.
        let mut done = marked.clone();
        assert!(off.complete_checksum(&mut done));
        assert_eq!(done, f);
        // Segmenting it with that description yields frames that fit.
        let mut buf = vec![0u8; 2048];
        let mut sizes = Vec::new();
        segment(&marked, &off, &mut buf, |s| sizes.push(s.len() - 14)).unwrap();
        assert!(sizes.iter().all(|l| *l <= 1450), "{sizes:?}");
        // Frames that fit, and non-TCP frames, are left alone.
        let small = super_frame(false, &[1; 100], false);
        let mut s2 = small.clone();
        assert_eq!(mark_super_frame(&mut s2, 1450), None);
        assert_eq!(s2, small);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000), size in 0u16..2000, v6 in proptest::bool::ANY) {
            let off = Offload { gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 }, gso_size: size, ..Offload::NONE };
            let mut buf = vec![0u8; 2048];
            let _ = segment(&data, &off, &mut buf, |_| {});
            let mut copy = data.clone();
            let _ = mark_super_frame(&mut copy, usize::from(size));
        }
    }
}
