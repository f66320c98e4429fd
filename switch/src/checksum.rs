//! The Internet checksum (RFC 1071): ones'-complement sums over 16-bit big-endian words.
//!
//! Sums are carried in a `u32` accumulator and folded at the end, so partial sums of header
//! templates can be precomputed and extended per frame (RFC 1624 style).

/// Adds `data` (as big-endian 16-bit words; an odd trailing byte is padded with zero) to `sum`.
#[inline]
pub fn add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early enough that the accumulator never overflows on any frame size.
        if sum & 0x8000_0000 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
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

    #[test]
    fn large_buffers_do_not_overflow() {
        let data = vec![0xff; 70_000];
        assert_eq!(fold(add(0, &data)), 0xffff);
    }
}
