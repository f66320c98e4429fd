//! Small system calls the standard library does not wrap. All `unsafe` here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Moves the calling thread into the network namespace `ns` (an open `/run/netns/NAME` or
/// `/proc/PID/ns/net`). Interface indexes in BPF map updates and XDP test runs then resolve
/// there.
///
/// # Errors
/// The OS error (`EPERM` without `CAP_SYS_ADMIN`, `EINVAL` for a file that is not a network
/// namespace).
pub fn enter_netns(ns: &std::fs::File) -> io::Result<()> {
    // SAFETY: `ns` is an open file for the duration of the call; setns only reads the
    // descriptor and changes this thread's namespace.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `packet` to `to` from `socket` with the IP TTL `ttl` for this datagram alone (the
/// socket's own TTL is unchanged).
///
/// # Errors
/// The system call's error.
pub fn send_to_with_ttl(
    socket: &std::net::UdpSocket,
    packet: &[u8],
    to: std::net::SocketAddrV4,
    ttl: u32,
) -> io::Result<usize> {
    let ttl = libc::c_int::try_from(ttl).unwrap_or(64);
    send_with_option(
        socket,
        packet,
        to,
        libc::IPPROTO_IP,
        libc::IP_TTL,
        &ttl.to_ne_bytes(),
    )
}

/// `UDP_SEGMENT` (linux/udp.h): the segment size of a UDP GSO send.
const UDP_SEGMENT: libc::c_int = 103;

/// Datagrams one [`send_segmented`] may carry (`UDP_MAX_SEGMENTS` of older kernels; newer ones
/// allow 128).
pub const MAX_SEGMENTS: usize = 64;

/// Sends `packets`, datagrams of `segment` bytes each (the last may be shorter), to `to` in one
/// call (UDP generic segmentation offload: the kernel cuts them as late as it can, in the
/// device if it can).
///
/// # Errors
/// The system call's error: `EIO` or `EINVAL` where the kernel or the route cannot segment.
pub fn send_segmented(
    socket: &std::net::UdpSocket,
    packets: &[u8],
    to: std::net::SocketAddrV4,
    segment: u16,
) -> io::Result<usize> {
    send_with_option(
        socket,
        packets,
        to,
        libc::SOL_UDP,
        UDP_SEGMENT,
        &segment.to_ne_bytes(),
    )
}

/// One `sendmsg` of `packet` to `to` with one ancillary value (at most 8 bytes).
fn send_with_option(
    socket: &std::net::UdpSocket,
    packet: &[u8],
    to: std::net::SocketAddrV4,
    level: libc::c_int,
    kind: libc::c_int,
    value: &[u8],
) -> io::Result<usize> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // One cmsghdr and its value, 8-byte aligned as the kernel's CMSG macros expect.
    #[repr(C, align(8))]
    struct Control {
        len: usize,
        level: libc::c_int,
        kind: libc::c_int,
        value: [u8; 8],
    }
    let mut control = Control {
        len: 0,
        level,
        kind,
        value: [0; 8],
    };
    let n = value.len().min(control.value.len());
    control.value[..n].copy_from_slice(&value[..n]);
    // CMSG_LEN(n): the header and the value, without the padding behind it.
    control.len = std::mem::size_of::<usize>() + 2 * std::mem::size_of::<libc::c_int>() + n;
    let mut iov = libc::iovec {
        iov_base: packet.as_ptr() as *mut libc::c_void,
        iov_len: packet.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &addr as *const libc::sockaddr_in as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = &mut control as *mut Control as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of::<Control>();
    // SAFETY:
    // - `msg` points at `addr`, `iov` (which points at `packet`) and `control`, all alive and
    //   unmoved for the whole call, with their sizes in `msg_namelen`, `iov_len`, and
    //   `msg_controllen`;
    // - sendmsg(2) only reads them; the descriptor is the open socket `socket` borrows.
    let r = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender, a receiver and the receiver's address, on loopback.
    fn loopback_pair() -> (
        std::net::UdpSocket,
        std::net::UdpSocket,
        std::net::SocketAddrV4,
    ) {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => unreachable!(),
        };
        (tx, rx, to)
    }

    #[test]
    fn a_datagram_with_its_own_ttl_arrives() {
        let (tx, rx, to) = loopback_pair();
        assert_eq!(send_to_with_ttl(&tx, b"punch", to, 2).unwrap(), 5);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"punch");
        assert_eq!(tx.ttl().unwrap(), 64, "the socket's own TTL is unchanged");
    }

    #[test]
    fn a_segmented_send_arrives_as_separate_datagrams() {
        let (tx, rx, to) = loopback_pair();
        let packets: Vec<u8> = (0..250u8).collect();
        match send_segmented(&tx, &packets, to, 100) {
            Ok(n) => assert_eq!(n, 250),
            Err(e) => {
                eprintln!("SKIP: this kernel does not segment UDP ({e}); the fallback sends each");
                return;
            }
        }
        rx.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 512];
        for want in [&packets[..100], &packets[100..200], &packets[200..]] {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
    }
}
