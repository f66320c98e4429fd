//! AF_PACKET ports: the portable datapath, for kernels or privileges without AF_XDP.
//!
//! One `SOCK_RAW` packet socket per port, bound to the interface, non-blocking, promiscuous,
//! not receiving its own transmissions (`PACKET_IGNORE_OUTGOING`), bypassing the qdisc on
//! transmit (`PACKET_QDISC_BYPASS`), and with `PACKET_VNET_HDR`: every frame carries the kernel's
//! offload header, so a guest's TSO super-frames and partial checksums pass from port to port
//! intact and bulk TCP keeps its offloads (see [`super::Offload`]).
//!
//! All `unsafe` of this backend is in this module.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{Offload, PortBackend, PortError, RxBatch};

/// Socket buffer size asked for, bytes.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// An AF_PACKET port.
pub struct PacketPort {
    name: String,
    fd: OwnedFd,
}

/// `setsockopt(2)` with an `int` value on any socket.
///
/// # Errors
/// The OS error.
pub(crate) fn setsockopt_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY:
    // - `fd` is an open socket borrowed by the caller for the duration of the call;
    // - the option value points at a live `c_int` and its exact size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl PacketPort {
    /// Opens a packet socket on interface `name`.
    ///
    /// # Errors
    /// [`PortError::Io`] if the interface does not exist or the socket cannot be set up (AF_PACKET
    /// needs `CAP_NET_RAW`).
    pub fn open(name: &str) -> Result<PacketPort, PortError> {
        PacketPort::open_in_fanout(name, false)
    }

    /// As [`PacketPort::open`]; with `fanout`, the socket joins the interface's fanout group
    /// (`PACKET_FANOUT_HASH`, group id = ifindex): with one socket per datapath worker, the
    /// kernel spreads received frames over them by flow hash.
    ///
    /// # Errors
    /// As [`PacketPort::open`].
    pub fn open_in_fanout(name: &str, fanout: bool) -> Result<PacketPort, PortError> {
        PacketPort::open_with(name, fanout, true)
    }

    /// A transmit-only packet socket on `name` (bound with protocol 0, so the kernel delivers it
    /// nothing): for ports whose frames reach user space another way (mode "tc").
    ///
    /// # Errors
    /// As [`PacketPort::open`].
    pub fn open_tx_only(name: &str) -> Result<PacketPort, PortError> {
        PacketPort::open_with(name, false, false)
    }

    fn open_with(name: &str, fanout: bool, receive: bool) -> Result<PacketPort, PortError> {
        let io_err = |source: io::Error| PortError::Io {
            name: name.to_owned(),
            source,
        };
        let cname =
            CString::new(name).map_err(|_| io_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        let proto = if receive {
            (libc::ETH_P_ALL as u16).to_be()
        } else {
            0
        };
        // SAFETY: plain socket(2) call with constant arguments; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(proto),
            )
        };
        if raw < 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a freshly created, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1).map_err(io_err)?;
        setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1).map_err(io_err)?;
        // Room for a burst of 64 KiB GSO frames: the default receive buffer (~200 KiB) holds three
        // and overflows silently. FORCE lifts the rmem_max cap when privileged; else ask within it.
        if setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_BUFFER);
        }
        if setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SOCKET_BUFFER);
        }
        // Best effort: bypassing the qdisc is an optimisation only.
        let _ = setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
        // SAFETY: `sockaddr_ll` is plain old data; all-zero is a valid value to start from.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY:
        // - `fd` is a valid packet socket;
        // - `sll` is a fully initialised `sockaddr_ll` and its exact size is passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        if !receive {
            return Ok(PacketPort {
                name: name.to_owned(),
                fd,
            });
        }
        if fanout {
            let group = (ifindex & 0xffff) as libc::c_int
                | ((libc::PACKET_FANOUT_HASH as libc::c_int) << 16);
            setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_FANOUT, group).map_err(io_err)?;
        }
        // SAFETY: `packet_mreq` is plain old data; all-zero is valid.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = ifindex as i32;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY:
        // - `fd` is a valid packet socket;
        // - `mreq` is initialised and its exact size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mreq as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        Ok(PacketPort {
            name: name.to_owned(),
            fd,
        })
    }

    /// Sends `frame` (no offloads) `count` times (at most 64) with one `sendmmsg`; returns how
    /// many the kernel took. For traffic generators: one system call per batch.
    ///
    /// # Errors
    /// The OS error, except a full queue (`EAGAIN`, `ENOBUFS`), which returns `Ok(0)`.
    pub fn send_repeated(&mut self, frame: &[u8], count: usize) -> io::Result<usize> {
        let frames = [frame; 64];
        self.send_batch(&frames[..count.min(64)])
    }

    /// Sends each of `frames` (no offloads; at most 64, the rest are ignored) with one
    /// `sendmmsg`; returns how many the kernel took, in order. For traffic generators.
    ///
    /// # Errors
    /// The OS error, except a full queue (`EAGAIN`, `ENOBUFS`), which returns `Ok(0)`.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        let hdr = Offload::NONE.to_bytes();
        let n = frames.len().min(64);
        let mut iovs = [[libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2]; 64];
        for (iov, f) in iovs.iter_mut().zip(&frames[..n]) {
            *iov = [
                libc::iovec {
                    iov_base: hdr.as_ptr() as *mut libc::c_void,
                    iov_len: hdr.len(),
                },
                libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                },
            ];
        }
        // SAFETY: `mmsghdr` is plain old data; all-zero is valid.
        let mut msgs: [libc::mmsghdr; 64] = unsafe { std::mem::zeroed() };
        for (m, iov) in msgs[..n].iter_mut().zip(&iovs) {
            m.msg_hdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = iov.len();
        }
        // SAFETY:
        // - `self.fd` is a valid, bound packet socket;
        // - the first `n` headers each point at their own two iovecs in `iovs`, over `hdr` and
        //   one of `frames`, live buffers of the stated lengths that the kernel only reads; it
        //   writes only `msg_len` of each header.
        let r = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) {
            Ok(0)
        } else {
            Err(e)
        }
    }

    fn err(&self, source: io::Error) -> PortError {
        PortError::Io {
            name: self.name.clone(),
            source,
        }
    }
}

impl PortBackend for PacketPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv_batch(&mut self, batch: &mut RxBatch) -> Result<usize, PortError> {
        batch.clear();
        let fd = self.fd.as_raw_fd();
        let mut error = None;
        while !batch.is_full() {
            let mut got = false;
            batch.push_with_offload(|slot| {
                let mut hdr = [0u8; Offload::LEN];
                let mut iov = [
                    libc::iovec {
                        iov_base: hdr.as_mut_ptr().cast(),
                        iov_len: hdr.len(),
                    },
                    libc::iovec {
                        iov_base: slot.as_mut_ptr().cast(),
                        iov_len: slot.len(),
                    },
                ];
                // SAFETY: `msghdr` is plain old data; all-zero is valid.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = iov.len();
                // SAFETY:
                // - `fd` is a valid socket for the duration of the call;
                // - `msg` points at two iovecs over live, writable buffers of the stated lengths
                //   (`hdr` and the batch slot), which outlive the call.
                let n =
                    unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        error = Some(e);
                    }
                    return (0, Offload::NONE);
                }
                let n = n as usize;
                if n < Offload::LEN || n - Offload::LEN > slot.len() {
                    // Truncated (larger than a slot) or no header: counted by the caller as a
                    // runt, never delivered.
                    got = true;
                    return (0, Offload::NONE);
                }
                got = true;
                (n - Offload::LEN, Offload::from_bytes(&hdr))
            });
            if !got {
                // Nothing was waiting: take back the empty entry appended for this attempt.
                batch.truncate(batch.len() - 1);
                break;
            }
        }
        match error {
            Some(e) if batch.is_empty() => Err(self.err(e)),
            _ => Ok(batch.len()),
        }
    }

    fn send(&mut self, frame: &[u8], offload: &Offload) -> Result<bool, PortError> {
        let hdr = offload.to_bytes();
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: `msghdr` is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len();
        // SAFETY:
        // - `self.fd` is a valid, bound packet socket;
        // - `msg` points at two iovecs over live buffers of the stated lengths which the kernel
        //   only reads (sendmsg does not write through `iov_base`).
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => Ok(false),
            // The kernel refuses a frame (for example, too large for the interface): count it
            // as not sent, keep the port.
            _ if e.raw_os_error() == Some(libc::EMSGSIZE)
                || e.raw_os_error() == Some(libc::EINVAL) =>
            {
                Ok(false)
            }
            _ => Err(self.err(e)),
        }
    }

    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }

    fn carries_offloads(&self) -> bool {
        true
    }

    fn readable_fds(&self) -> Vec<std::os::fd::RawFd> {
        vec![self.fd.as_raw_fd()]
    }
}

/// Sleeps until one of `fds` is readable or `timeout` passes. Returns false on a signal or error
/// (the caller just polls again).
pub fn wait_readable(fds: &[std::os::fd::RawFd], timeout: std::time::Duration) -> bool {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY:
    // - `pfds` is a live, initialised array of `pfds.len()` pollfd structs for the whole call;
    // - poll(2) only writes the `revents` fields inside it.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    r > 0
}
