//! The VXLAN view and the whole decapsulation of an outer frame.
//!
//! Oracles: a header that parses emits back to the same eight bytes (reserved fields zeroed);
//! a frame that decapsulates is addressed to the local VTEP, carries a VNI within 24 bits, and its
//! inner frame ends where the outer IPv4 length says; re-encapsulating that inner frame decapsulates again to
//! the same VNI and bytes.

#![no_main]
#![deny(unsafe_code)]

use kangaroo_switch::tunnel::{
    decapsulate, EncapTemplate, LocalVtep, VxlanPacket, VxlanRepr, FLAG_VNI_VALID, VXLAN_PORT,
};
use kangaroo_switch::{MacAddr, Vni};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = VxlanPacket::new_checked(data) {
        if let Ok(repr) = VxlanRepr::parse(&p) {
            assert!(repr.vni.get() <= Vni::MAX);
            assert_eq!(p.vni_raw(), repr.vni.get());
            let mut out = [0u8; 8];
            repr.emit(&mut VxlanPacket::new_unchecked(&mut out[..]));
            assert_eq!(out[0], FLAG_VNI_VALID);
            assert_eq!(
                VxlanRepr::parse(&VxlanPacket::new_unchecked(&out[..])),
                Ok(repr)
            );
        }
    }
    let local = LocalVtep {
        addr: std::net::Ipv4Addr::new(10, 0, 0, 2),
        mac: MacAddr([2, 0, 0, 0, 0, 2]),
        udp_port: VXLAN_PORT,
    };
    // The input as it is, and with a valid-looking outer header in front so that most inputs
    // get past the Ethernet and IPv4 checks.
    let d = decapsulate(data, &local);
    if let Ok(d) = d {
        // The inner frame is the datagram's tail: inside the input, ending where the IPv4
        // total length says (Ethernet padding after it is not part of it).
        let start = d.inner.as_ptr() as usize - data.as_ptr() as usize;
        let ip_total = usize::from(u16::from_be_bytes([data[16], data[17]]));
        assert_eq!(start + d.inner.len(), 14 + ip_total);
        assert!(d.vni.get() <= Vni::MAX);
        let peer = LocalVtep {
            addr: d.src,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            udp_port: VXLAN_PORT,
        };
        let t = EncapTemplate::new(&peer, local.addr, local.mac);
        let mut out = vec![0u8; d.inner.len() + 64];
        if let Ok(n) = t.encapsulate(d.vni, d.inner, &mut out) {
            let again = decapsulate(&out[..n], &local);
            assert_eq!(again.map(|x| (x.vni, x.inner)), Ok((d.vni, d.inner)));
        }
    }
});
