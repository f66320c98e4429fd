//! Offload metadata from a guest (virtio-net header) and the frames it describes: the header's
//! wire form, completing a partial checksum at the offsets it gives, recognising one by content,
//! marking a tunnelled super-frame and segmenting it in software.
//!
//! Oracles: the header round-trips through its bytes; a checksum completed by content verifies
//! afterwards (a second pass finds it finished); every software segment fits the buffer and the
//! segments carry, between them, no more payload than the frame.

#![no_main]
#![deny(unsafe_code)]

use arbitrary::Arbitrary;
use kangaroo_switch::checksum::{repair_partial, Repair};
use kangaroo_switch::gso;
use kangaroo_switch::port::Offload;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    header: [u8; Offload::LEN],
    /// Use a TCP GSO type rather than the header's, so segmentation is reached.
    force_tcp: Option<bool>,
    inner_mtu: u16,
    frame: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut off = Offload::from_bytes(&input.header);
    assert_eq!(Offload::from_bytes(&off.to_bytes()), off);

    let mut f = input.frame.clone();
    let _ = off.complete_checksum(&mut f);

    let mut f = input.frame.clone();
    if repair_partial(&mut f) == Repair::Completed {
        let again = repair_partial(&mut f);
        assert!(
            matches!(again, Repair::NotPartial | Repair::Valid),
            "a completed checksum was not finished: {again:?}"
        );
    }

    let mut f = input.frame.clone();
    let _ = gso::mark_super_frame(&mut f, usize::from(input.inner_mtu));

    if let Some(v6) = input.force_tcp {
        off.gso_type = if v6 { gso::GSO_TCPV6 } else { gso::GSO_TCPV4 };
    }
    let mut buf = vec![0u8; 2048];
    let cap = buf.len();
    let mut segments = 0usize;
    let mut bytes = 0usize;
    let r = gso::segment(&input.frame, &off, &mut buf, |s| {
        assert!(s.len() <= cap);
        segments += 1;
        bytes += s.len();
    });
    if let Ok(n) = r {
        assert_eq!(n, segments);
        // Each segment repeats the headers (at most 14 + 60 + 60 bytes, or an IPv6 header's
        // 40 in place of IPv4's 60); its payload is a distinct slice of the frame's.
        assert!(
            bytes <= input.frame.len() + segments * 134,
            "{bytes} bytes in {segments} segments from {}",
            input.frame.len()
        );
    }
});
