//! The secure-tunnel receive path, against an attacker on the underlay who saw one whole
//! session (initiation, response, data) and knows both public keys.
//!
//! Each input is a list of forged datagrams: captured messages replayed and mutated, cookie
//! replies made from the captured initiation with the peer's public key (which is all a
//! cookie's key derives from), and raw bytes with any WireGuard message type (1–4), each sent
//! to either side from an address that is not the peer's.
//!
//! Oracles: no forged datagram moves a peer's endpoint or decrypts to a packet, and afterwards
//! the genuine session still carries a packet each way.

#![no_main]
#![deny(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use arbitrary::Arbitrary;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::TunnResult;
use boringtun::x25519;
use kangaroo_switch::secure::{KeyPair, PeerSpec, Received, Secure, BUFFER};
use libfuzzer_sys::fuzz_target;

const A_VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B_VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

#[derive(Arbitrary, Debug)]
struct Forgery {
    /// Sent to a (else to b).
    to_a: bool,
    /// 0 initiation, 1 response, 2 data a→b, 3 data b→a, 4 forged cookie reply, else raw.
    template: u8,
    /// The WireGuard message type to write over the first byte (1–4), if any.
    kind: Option<u8>,
    flips: Vec<(u16, u8)>,
    cut: Option<u16>,
    raw: Vec<u8>,
    /// Which attacker address it comes from.
    source: u8,
}

/// One side of the tunnel and the socket that stands for its address on the wire: the peer's
/// endpoint points there, so what the side sends is read back and handed on by hand.
struct Side {
    secure: Secure,
    wire: UdpSocket,
}

impl Side {
    fn new() -> Side {
        let secure = Secure::open(
            KeyPair::generate().expect("a key"),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            0,
        )
        .expect("a loopback socket");
        let wire = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        wire.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("a timeout");
        Side { secure, wire }
    }

    fn wire_addr(&self) -> SocketAddrV4 {
        match self.wire.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            other => panic!("not IPv4: {other:?}"),
        }
    }

    /// The next datagram sent toward this side.
    fn sent_here(&self) -> Vec<u8> {
        let mut buf = vec![0u8; BUFFER];
        let n = self.wire.recv(&mut buf).expect("a datagram on the wire");
        buf.truncate(n);
        buf
    }

    fn take(&self, d: &[u8], from: SocketAddrV4) -> Option<Vec<u8>> {
        let (mut out, mut scratch) = (vec![0u8; BUFFER], vec![0u8; BUFFER]);
        match self.secure.take(d, from, &mut out, &mut scratch) {
            Received::Packet(n) => Some(out[..n].to_vec()),
            Received::Nothing => None,
        }
    }

    fn endpoint(&self) -> SocketAddrV4 {
        self.secure.status()[0].endpoint
    }
}

/// An IPv4/UDP packet from `src` to `dst` (the tunnel checks the inner source).
fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (28 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0xc0, 0, 0x12, 0xb5]);
    p.extend_from_slice(&(total - 20).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn send(from: &Side, vtep: Ipv4Addr, packet: &[u8]) {
    let mut buf = vec![0u8; BUFFER];
    let peer = from
        .secure
        .snapshot()
        .get(&vtep)
        .cloned()
        .expect("the peer");
    assert!(from.secure.encrypt_and_send(&peer, packet, &mut buf));
}

fuzz_target!(|forgeries: Vec<Forgery>| {
    let (a, b) = (Side::new(), Side::new());
    for (me, other, vtep) in [(&a, &b, B_VTEP), (&b, &a, A_VTEP)] {
        me.secure
            .add_peer(&PeerSpec {
                vtep,
                public_key: other.secure.public_key(),
                endpoint: Some(other.wire_addr()),
            })
            .expect("the peer");
    }
    let (a_at, b_at) = (a.wire_addr(), b.wire_addr());

    // One genuine session, captured: initiation, response, keepalive, data each way.
    let a_to_b = ip_packet(A_VTEP, B_VTEP, b"genuine a");
    send(&a, B_VTEP, &a_to_b);
    let init = b.sent_here();
    assert_eq!(b.take(&init, a_at), None);
    let response = a.sent_here();
    assert_eq!(a.take(&response, b_at), None);
    let mut data_ab = b.sent_here();
    if b.take(&data_ab, a_at).is_none() {
        // The keepalive that completed the handshake; the queued packet follows.
        data_ab = b.sent_here();
        assert_eq!(b.take(&data_ab, a_at).as_deref(), Some(&a_to_b[..]));
    }
    let b_to_a = ip_packet(B_VTEP, A_VTEP, b"genuine b");
    send(&b, A_VTEP, &b_to_a);
    let data_ba = a.sent_here();
    assert_eq!(a.take(&data_ba, b_at).as_deref(), Some(&b_to_a[..]));
    assert_eq!((a.endpoint(), b.endpoint()), (b_at, a_at));

    let forger = RateLimiter::new(&x25519::PublicKey::from(b.secure.public_key().0), 0);
    let attackers = [
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 7), 4444),
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 8), 51820),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9),
    ];
    for f in forgeries.iter().take(64) {
        let from = attackers[usize::from(f.source) % attackers.len()];
        let mut d = match f.template % 6 {
            0 => init.clone(),
            1 => response.clone(),
            2 => data_ab.clone(),
            3 => data_ba.clone(),
            4 => {
                let mut cookie = vec![0u8; 64];
                match forger.verify_packet(Some(IpAddr::V4(*from.ip())), &init, &mut cookie) {
                    Err(TunnResult::WriteToNetwork(c)) => c.to_vec(),
                    _ => panic!("the forger made no cookie reply"),
                }
            }
            _ => f.raw.clone(),
        };
        if let (Some(k), Some(first)) = (f.kind, d.first_mut()) {
            *first = 1 + k % 4;
        }
        for &(at, x) in &f.flips {
            let len = d.len();
            if let Some(byte) = d.get_mut(usize::from(at) % len.max(1)) {
                *byte ^= x;
            }
        }
        if let Some(cut) = f.cut {
            d.truncate(usize::from(cut));
        }
        let side = if f.to_a { &a } else { &b };
        assert_eq!(side.take(&d, from), None, "a forgery decrypted: {f:?}");
        assert_eq!(
            (a.endpoint(), b.endpoint()),
            (b_at, a_at),
            "a forgery moved an endpoint: {f:?}"
        );
    }
    for s in [&a, &b] {
        let changes = s
            .secure
            .counters()
            .snapshot()
            .into_iter()
            .find(|(k, _)| *k == "endpoint_changes");
        assert_eq!(changes, Some(("endpoint_changes", 0)));
    }

    // The genuine session outlives every forgery.
    send(&a, B_VTEP, &a_to_b);
    assert_eq!(b.take(&b.sent_here(), a_at).as_deref(), Some(&a_to_b[..]));
    send(&b, A_VTEP, &b_to_a);
    assert_eq!(a.take(&a.sent_here(), b_at).as_deref(), Some(&b_to_a[..]));
});
