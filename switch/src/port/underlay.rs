//! The uplink through the host's own IP stack: VXLAN over a UDP socket and a raw IPv4 socket.
//!
//! Receiving: a UDP socket bound to this host's VTEP address and VXLAN port gets the datagrams
//! (the kernel has checked IP and UDP); the port writes outer Ethernet/IPv4/UDP headers in front
//! of each payload, with the sender's address, so the switch's underlay decision (peer, VNI,
//! flags, lengths, checksum) is the same in every mode. With several datapath workers the sockets
//! share the port with `SO_REUSEPORT` and the kernel spreads flows over them.
//!
//! Sending: the switch builds complete VXLAN packets (outer headers from the peer's template,
//! UDP source port from the inner flow hash, as RFC 7348 asks); the port hands their IPv4 part to
//! a raw socket, so the kernel routes them and resolves the next hop (a peer may sit behind a
//! router, and no neighbour table is kept here), and the host's own networking is untouched.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{Offload, PortBackend, PortError, RxBatch};
use crate::checksum::{self, repair_partial, Repair};
use crate::mac::MacAddr;
use crate::tunnel::outer;

/// Outer Ethernet + IPv4 + UDP header bytes written in front of a received payload.
const SYNTH: usize = outer::ETH_LEN + 20 + outer::UDP_LEN;
/// Socket buffers asked for, bytes.
const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// Bytes of the VXLAN header in front of the inner frame.
const VXLAN_LEN: usize = 8;

/// The uplink through the host's IP stack.
pub struct UnderlayPort {
    name: String,
    inner_mtu: usize,
    checksums_completed: u64,
    super_frames: u64,
    local: SocketAddrV4,
    local_mac: MacAddr,
    udp: UdpSocket,
    raw: Socket,
}

impl UnderlayPort {
    /// Binds `local` (this host's VTEP address and VXLAN port) on the interface `name`; inner
    /// IP packets longer than `inner_mtu` are TCP super-frames to be segmented.
    ///
    /// # Errors
    /// [`PortError::Io`] if the address is not this host's, the port is taken by another
    /// program (a kernel VXLAN device on the same port, say), or raw sockets are not allowed
    /// (`CAP_NET_RAW`).
    pub fn open(
        name: &str,
        local: SocketAddrV4,
        local_mac: MacAddr,
        inner_mtu: usize,
        shared: bool,
    ) -> Result<UnderlayPort, PortError> {
        let err = |what: &str, e: io::Error| PortError::Io {
            name: name.to_owned(),
            source: io::Error::new(e.kind(), format!("{what}: {e}")),
        };
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| err("UDP socket", e))?;
        if shared {
            udp.set_reuse_port(true)
                .map_err(|e| err("SO_REUSEPORT", e))?;
        }
        // FORCE lifts the rmem_max cap when privileged; otherwise ask within it.
        if super::packet::setsockopt_int(
            &udp,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            SOCKET_BUFFER,
        )
        .is_err()
        {
            let _ = udp.set_recv_buffer_size(SOCKET_BUFFER as usize);
        }
        udp.set_nonblocking(true)
            .map_err(|e| err("non-blocking UDP socket", e))?;
        udp.bind(&local.into())
            .map_err(|e| err(&format!("binding UDP {local}"), e))?;
        let raw = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .map_err(|e| err("raw IPv4 socket", e))?;
        if super::packet::setsockopt_int(
            &raw,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            SOCKET_BUFFER,
        )
        .is_err()
        {
            let _ = raw.set_send_buffer_size(SOCKET_BUFFER as usize);
        }
        raw.set_nonblocking(true)
            .map_err(|e| err("non-blocking raw socket", e))?;
        Ok(UnderlayPort {
            name: name.to_owned(),
            inner_mtu,
            checksums_completed: 0,
            super_frames: 0,
            local,
            local_mac,
            udp: udp.into(),
            raw,
        })
    }

    fn io(&self, source: io::Error) -> PortError {
        PortError::Io {
            name: self.name.clone(),
            source,
        }
    }
}

/// Writes outer Ethernet/IPv4/UDP headers for a `payload_len`-byte VXLAN payload from `src` to
/// `dst` into `out[..SYNTH]`.
fn synthesize(
    out: &mut [u8],
    dst_mac: MacAddr,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload_len: usize,
) {
    let udp_len = (outer::UDP_LEN + payload_len) as u16;
    let ip_len = 20 + udp_len;
    out[0..6].copy_from_slice(&dst_mac.octets());
    out[6..12].fill(0);
    out[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut out[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let sum = checksum::finish(checksum::add(0, ip));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut out[34..42];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].fill(0);
}

impl PortBackend for UnderlayPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv_batch(&mut self, batch: &mut RxBatch) -> Result<usize, PortError> {
        batch.clear();
        self.recv_more(batch)
    }

    fn send(&mut self, frame: &[u8], offload: &Offload) -> Result<bool, PortError> {
        self.send_ip(frame, offload)
    }

    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }

    fn readable_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        vec![self.udp.as_raw_fd()]
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("checksums_completed", self.checksums_completed),
            ("super_frames", self.super_frames),
        ]
    }
}

impl UnderlayPort {
    /// Appends received datagrams to `batch` (which is not cleared).
    pub(crate) fn recv_more(&mut self, batch: &mut RxBatch) -> Result<usize, PortError> {
        let (local, mac) = (self.local, self.local_mac);
        let mut failure = None;
        let mut completed = 0;
        let mut supers = 0;
        let inner_mtu = self.inner_mtu;
        while !batch.is_full() {
            let mut got = false;
            batch.push_with_offload(|slot| {
                if slot.len() <= SYNTH {
                    return (0, Offload::NONE);
                }
                match self.udp.recv_from(&mut slot[SYNTH..]) {
                    Ok((n, std::net::SocketAddr::V4(from))) => {
                        got = true;
                        synthesize(slot, mac, from, local, n);
                        let mut off = Offload::NONE;
                        // A sender whose packets crossed only virtual links (a kernel VXLAN
                        // device over veth) can hand over a whole TCP super-frame, and inner
                        // checksums left to a NIC that is not there: describe the first for
                        // segmentation, finish the second, as for AF_XDP ports.
                        if let Some(inner) = slot.get_mut(SYNTH + VXLAN_LEN..SYNTH + n) {
                            if let Some(o) = crate::gso::mark_super_frame(inner, inner_mtu) {
                                supers += 1;
                                off = o;
                            } else if repair_partial(inner) == Repair::Completed {
                                completed += 1;
                            }
                        }
                        (SYNTH + n, off)
                    }
                    Ok((_, std::net::SocketAddr::V6(_))) => {
                        got = true;
                        (0, Offload::NONE)
                    }
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            failure = Some(e);
                        }
                        (0, Offload::NONE)
                    }
                }
            });
            if !got {
                // The slot was not used: take it back.
                let n = batch.len();
                batch.truncate(n.saturating_sub(1));
                break;
            }
        }
        self.checksums_completed += completed;
        self.super_frames += supers;
        // Zero-length entries (an IPv6 sender on a v4 socket cannot happen, but be safe) are
        // harmless: the switch counts them as truncated.
        match failure {
            Some(e) if batch.is_empty() => Err(self.io(e)),
            _ => Ok(batch.len()),
        }
    }

    /// Sends the IPv4 part of a complete VXLAN frame through the raw socket.
    pub(crate) fn send_ip(&mut self, frame: &[u8], _offload: &Offload) -> Result<bool, PortError> {
        let Some(ip) = frame.get(outer::ETH_LEN..) else {
            return Ok(false);
        };
        let Some(dst) = ip.get(16..20) else {
            return Ok(false);
        };
        let dst = Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]);
        match self
            .raw
            .send_to(ip, &SockAddr::from(SocketAddrV4::new(dst, 0)))
        {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory
                ) || e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.raw_os_error() == Some(libc::EMSGSIZE)
                    || e.raw_os_error() == Some(libc::EHOSTUNREACH)
                    || e.raw_os_error() == Some(libc::ENETUNREACH) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.io(e)),
        }
    }
}

/// The uplink in afxdp mode: the uplink XDP program hands VXLAN from configured peers to AF_XDP
/// sockets; everything else goes on to the kernel, where the UDP socket picks up VXLAN from
/// strangers (to count and drop it). Sending goes through the raw socket, as in packet mode.
#[cfg(target_os = "linux")]
pub struct SteeredUplink {
    /// The AF_XDP sockets on the uplink.
    pub xdp: super::afxdp::AfXdpPort,
    /// The host-stack path.
    pub ip: UnderlayPort,
}

#[cfg(target_os = "linux")]
impl PortBackend for SteeredUplink {
    fn name(&self) -> &str {
        self.ip.name()
    }

    fn recv_batch(&mut self, batch: &mut RxBatch) -> Result<usize, PortError> {
        self.xdp.recv_batch(batch)?;
        if !batch.is_full() {
            self.ip.recv_more(batch)?;
        }
        Ok(batch.len())
    }

    fn send(&mut self, frame: &[u8], offload: &Offload) -> Result<bool, PortError> {
        self.ip.send_ip(frame, offload)
    }

    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }

    fn readable_fds(&self) -> Vec<std::os::fd::RawFd> {
        let mut fds = self.xdp.readable_fds();
        fds.extend(self.ip.readable_fds());
        fds
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut c = PortBackend::counters(&self.xdp);
        for (k, v) in self.ip.counters() {
            match c.iter_mut().find(|(n, _)| *n == k) {
                Some((_, total)) => *total += v,
                None => c.push((k, v)),
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::{decapsulate, LocalVtep};

    #[test]
    fn synthesized_headers_pass_the_underlay_checks() {
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 4789);
        let peer = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 51000);
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        // A VXLAN payload: flags I, VNI 100, and a minimal inner frame.
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 100, 0];
        payload.extend_from_slice(&[0xff; 6]);
        payload.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
        payload.extend_from_slice(&[0x08, 0x06]);
        payload.extend_from_slice(&[0; 28]);
        let mut frame = vec![0u8; SYNTH + payload.len()];
        frame[SYNTH..].copy_from_slice(&payload);
        synthesize(&mut frame, mac, peer, local, payload.len());
        let d = decapsulate(
            &frame,
            &LocalVtep {
                addr: *local.ip(),
                mac,
                udp_port: 4789,
            },
        )
        .unwrap();
        assert_eq!(d.src, *peer.ip());
        assert_eq!(d.vni.get(), 100);
        assert_eq!(d.inner, &payload[8..]);
    }
}
