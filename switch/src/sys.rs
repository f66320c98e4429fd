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

/// Sends `packet` on `socket` to `to` with IP TTL `ttl` for this datagram only (an `IP_TTL`
/// control message), leaving the socket's own TTL alone.
///
/// # Errors
/// The OS error of `sendmsg`.
pub fn send_to_with_ttl(
    socket: &std::net::UdpSocket,
    packet: &[u8],
    to: std::net::SocketAddrV4,
    ttl: u32,
) -> io::Result<usize> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // One cmsghdr carrying an int, 8-byte aligned as the kernel's CMSG macros expect.
    #[repr(C, align(8))]
    struct Control {
        len: usize,
        level: libc::c_int,
        kind: libc::c_int,
        value: libc::c_int,
        pad: libc::c_int,
    }
    let mut control = Control {
        len: std::mem::size_of::<usize>() + 3 * std::mem::size_of::<libc::c_int>(),
        level: libc::IPPROTO_IP,
        kind: libc::IP_TTL,
        value: libc::c_int::try_from(ttl).unwrap_or(64),
        pad: 0,
    };
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

    #[test]
    fn a_datagram_with_its_own_ttl_arrives() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = match rx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => unreachable!(),
        };
        assert_eq!(send_to_with_ttl(&tx, b"punch", to, 2).unwrap(), 5);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"punch");
        assert_eq!(tx.ttl().unwrap(), 64, "the socket's own TTL is unchanged");
    }
}
