//! The Internet checksum (RFC 1071): ones'-complement sums over 16-bit big-endian words.
//!
//! Sums are carried in a `u32` accumulator and folded at the end, so partial sums of header
//! templates can be precomputed and extended per frame (RFC 1624 style).

/// Adds `data` (as big-endian 16-bit words; an odd trailing byte is padded with zero) to `sum`.
///
/// Eight bytes at a time into a 64-bit accumulator (ones'-complement sums of wider words fold to
/// the same 16-bit value, since 2^32 = 1 modulo 0xffff).
#[inline]
pub fn add(sum: u32, data: &[u8]) -> u32 {
    let mut acc = u64::from(sum);
    let mut words = data.chunks_exact(8);
    for c in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_be_bytes(w);
        // Two 32-bit halves: each addition is below 2^33, so 2^31 of them cannot overflow.
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for c in &mut pairs {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    // The loop leaves at most 32 bits.
    acc as u32
}

/// Folds a sum to 16 bits (not complemented).
#[inline]
pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    sum as u16
}

/// The checksum field value for data whose sum is `sum`.
#[inline]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// True when `data`, checksum field included, sums to all ones (a valid checksum).
#[inline]
pub fn verify(data: &[u8]) -> bool {
    fold(add(0, data)) == 0xffff
}

/// What [`repair_partial`] found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Not an unfragmented TCP or UDP segment over IPv4 or IPv6 (nothing to check).
    NotApplicable,
    /// The L4 checksum is finished: not the pseudo-header sum a sender leaves for offload (it
    /// is not verified: a wrong one is for the receiver to drop).
    NotPartial,
    /// The L4 checksum field held the pseudo-header sum but the segment verifies as it is (or
    /// the checksum is absent: UDP over IPv4 with a zero checksum).
    Valid,
    /// The checksum field held only the pseudo-header sum (a checksum the sender left to
    /// offload); it has been completed in place.
    Completed,
}

const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Completes a TCP/UDP checksum that a sender left partial, in place.
///
/// A guest whose NIC offloads checksums hands its frames over with the checksum field holding
/// only the folded pseudo-header sum, and a flag in the kernel's metadata saying so. AF_XDP and
/// XDP lose that metadata, so the switch recognises such frames by their contents: a checksum
/// field equal to the pseudo-header sum is partial unless the segment verifies as it is (a
/// 1-in-65536 coincidence), and is completed. Frames with any other checksum cost only the
/// header reads: they are finished, and a wrong one is left for the receiver to drop.
pub fn repair_partial(frame: &mut [u8]) -> Repair {
    let Some(ethertype) = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return Repair::NotApplicable;
    };
    let (pseudo, proto, l4_start, l4_end) = match ethertype {
        ETHERTYPE_IPV4 => {
            let Some(ip) = frame.get(ETH_LEN..ETH_LEN + 20) else {
                return Repair::NotApplicable;
            };
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || fragmented {
                return Repair::NotApplicable;
            }
            let proto = ip[9];
            let l4_len = total - ihl;
            let mut pseudo = add(0, &ip[12..20]);
            pseudo = add(pseudo, &[0, proto]);
            // l4_len < 65536.
            pseudo = add(pseudo, &(l4_len as u16).to_be_bytes());
            (pseudo, proto, ETH_LEN + ihl, ETH_LEN + total)
        }
        ETHERTYPE_IPV6 => {
            let Some(ip) = frame.get(ETH_LEN..ETH_LEN + 40) else {
                return Repair::NotApplicable;
            };
            if ip[0] >> 4 != 6 {
                return Repair::NotApplicable;
            }
            let proto = ip[6];
            let l4_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let mut pseudo = add(0, &ip[8..40]);
            pseudo = add(pseudo, &(l4_len as u32).to_be_bytes());
            pseudo = add(pseudo, &[0, 0, 0, proto]);
            (pseudo, proto, ETH_LEN + 40, ETH_LEN + 40 + l4_len)
        }
        _ => return Repair::NotApplicable,
    };
    let field = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return Repair::NotApplicable,
    };
    let Some(l4) = frame.get_mut(l4_start..l4_end) else {
        return Repair::NotApplicable;
    };
    if l4.len() < field + 2 {
        return Repair::NotApplicable;
    }
    let current = u16::from_be_bytes([l4[field], l4[field + 1]]);
    if proto == PROTO_UDP && current == 0 && ethertype == ETHERTYPE_IPV4 {
        return Repair::Valid;
    }
    let partial = fold(pseudo);
    // 0x0000 and 0xffff are the same number in ones' complement.
    let may_be_partial =
        current == partial || (current ^ partial == 0xffff && (partial == 0 || partial == 0xffff));
    if !may_be_partial {
        // Not partial: valid, or wrong for the receiver to drop. Not summed here, so frames
        // with finished checksums cost no pass over their payload.
        return Repair::NotPartial;
    }
    let body = add(0, l4);
    if fold(add(body, &partial.to_be_bytes())) == 0xffff {
        // A finished checksum that happens to equal the pseudo-header sum.
        return Repair::Valid;
    }
    // The field holds the pseudo-header sum, so the body's sum already includes it.
    let mut sum = finish(body);
    if proto == PROTO_UDP && sum == 0 {
        sum = 0xffff;
    }
    l4[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Repair::Completed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
    }

    #[test]
    fn ipv4_header_checksum_matches_a_known_header() {
        // A real IPv4 header (checksum 0xb861) from the Wikipedia example.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(add(0, &h)), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verify(&h));
        h[3] ^= 1;
        assert!(!verify(&h));
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(add(0, &[0x12])), 0x1200);
    }

    fn reference(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for c in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
        }
        fold((sum & 0xffff_ffff) as u32 + (sum >> 32) as u32)
    }

    proptest::proptest! {
        #[test]
        fn matches_a_word_at_a_time_sum(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300), seed in 0u32..) {
            proptest::prop_assert_eq!(fold(add(0, &data)), reference(&data));
            // Extending a partial sum equals summing the concatenation (even split).
            let split = (data.len() / 2) & !1;
            proptest::prop_assert_eq!(
                fold(add(add(seed, &data[..split]), &data[split..])),
                fold(add(seed, &data))
            );
        }
    }

    fn tcp_v4(payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 5201, 7, 65535);
        let mut f = Vec::new();
        b.write(&mut f, payload).unwrap();
        f
    }

    fn udp_v6(payload: &[u8]) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5353, 53);
        let mut f = Vec::new();
        b.write(&mut f, payload).unwrap();
        f
    }

    /// Replaces the L4 checksum at `field` with the folded pseudo-header sum, as a sender that
    /// offloads checksums leaves it.
    fn make_partial(f: &mut [u8], field: usize, pseudo: &[&[u8]]) {
        let mut s = 0;
        for p in pseudo {
            s = add(s, p);
        }
        f[field..field + 2].copy_from_slice(&fold(s).to_be_bytes());
    }

    #[test]
    fn partial_tcp_over_ipv4_is_completed_to_the_real_checksum() {
        let good = tcp_v4(b"hello, nested world");
        let mut f = good.clone();
        assert_eq!(repair_partial(&mut f), Repair::NotPartial);
        assert_eq!(f, good, "a finished frame is left alone");
        let l4_len = (good.len() - 34) as u16;
        make_partial(
            &mut f,
            34 + 16,
            &[&good[26..34], &[0, 6], &l4_len.to_be_bytes()],
        );
        assert_ne!(f, good);
        assert_eq!(repair_partial(&mut f), Repair::Completed);
        assert_eq!(f, good, "completion yields the sender's checksum");
        f[60] ^= 0x40;
        let corrupt = f.clone();
        assert_eq!(repair_partial(&mut f), Repair::NotPartial);
        assert_eq!(
            f, corrupt,
            "corruption is not repaired, for the receiver to drop"
        );
    }

    #[test]
    fn a_finished_checksum_equal_to_the_pseudo_header_sum_is_left_alone() {
        let mut f = tcp_v4(&[0u8; 16]);
        let l4_len = (f.len() - 34) as u16;
        let pseudo = fold(add(add(add(0, &f[26..34]), &[0, 6]), &l4_len.to_be_bytes()));
        f[50..52].copy_from_slice(&pseudo.to_be_bytes());
        // Adjust a payload word so that the segment verifies with that checksum.
        let s = fold(add(add(0, &f[34..]), &pseudo.to_be_bytes()));
        let w = fold(u32::from(u16::from_be_bytes([f[60], f[61]])) + u32::from(!s));
        f[60..62].copy_from_slice(&w.to_be_bytes());
        assert_eq!(fold(add(add(0, &f[34..]), &pseudo.to_be_bytes())), 0xffff);
        let before = f.clone();
        assert_eq!(repair_partial(&mut f), Repair::Valid);
        assert_eq!(f, before);
    }

    #[test]
    fn partial_udp_over_ipv6_is_completed() {
        let good = udp_v6(b"query");
        let mut f = good.clone();
        assert_eq!(repair_partial(&mut f), Repair::NotPartial);
        let l4_len = (good.len() - 54) as u32;
        make_partial(
            &mut f,
            54 + 6,
            &[&good[22..54], &l4_len.to_be_bytes(), &[0, 0, 0, 17]],
        );
        assert_eq!(repair_partial(&mut f), Repair::Completed);
        assert_eq!(f, good);
    }

    #[test]
    fn frames_without_a_checkable_segment_are_not_touched() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(repair_partial(&mut arp), Repair::NotApplicable);
        let good = tcp_v4(b"x");
        let mut short = good[..40].to_vec();
        assert_eq!(repair_partial(&mut short), Repair::NotApplicable);
        let mut frag = good.clone();
        frag[20] |= 0x20; // more fragments
        assert_eq!(repair_partial(&mut frag), Repair::NotApplicable);
        // UDP over IPv4 may carry no checksum at all.
        let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2);
        let mut u = Vec::new();
        b.write(&mut u, b"abc").unwrap();
        u[40..42].copy_from_slice(&[0, 0]);
        assert_eq!(repair_partial(&mut u), Repair::Valid);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(mut data in proptest::collection::vec(proptest::num::u8::ANY, 0..200), v6 in proptest::bool::ANY) {
            if data.len() > 14 {
                data[12] = if v6 { 0x86 } else { 0x08 };
                data[13] = if v6 { 0xdd } else { 0x00 };
                data[14] = if v6 { 0x60 } else { 0x45 };
            }
            let _ = repair_partial(&mut data);
        }
    }

    #[test]
    fn large_buffers_do_not_overflow() {
        let data = vec![0xff; 70_000];
        assert_eq!(fold(add(0, &data)), 0xffff);
    }
}
