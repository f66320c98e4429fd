//! Mode "tc" ports: the kernel forwards what the maps decide, user space gets the rest through
//! the port's punt device.
//!
//! The tc program at the port's clsact ingress switches known unicast, answers ARP and
//! encapsulates toward peers on the socket buffer itself, so a guest's 64 KiB TSO super-frames
//! and partial checksums go through untouched. Every frame it does not handle (learning, BUM,
//! unknown destinations, port-security cases) it redirects to the port's *punt device*: a tap
//! owned by this backend (created without `IFF_PERSIST`, so it disappears with the switch, even
//! after `kill -9`), read with `IFF_VNET_HDR` so offload metadata comes along. A frame therefore
//! reaches user space at most once, and only when the fast path did not forward it. Frames user
//! space sends to the port go out through a transmit-only AF_PACKET socket on the interface.
//!
//! One tap per port keeps the demultiplexing in the kernel: the tap a frame arrives on names its
//! port. With several datapath workers the tap is multi-queue, one queue per worker; the kernel
//! spreads frames over the queues by flow.
//!
//! All `unsafe` of this backend is in this module.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::packet::PacketPort;
use super::{Offload, PortBackend, PortError, RxBatch};
use crate::xdp::{Attachment, Program, XdpSteering};

/// Frames the punt device queues toward user space before the kernel drops (its `txqueuelen`).
const PUNT_QUEUE: libc::c_int = 4096;
/// Name pattern of punt devices (the kernel fills in the number).
const PUNT_NAME: &str = "kgpunt%d";

/// A punt device: one queue of a tap that the tc program redirects a port's slow-path frames to.
pub struct PuntTap {
    name: String,
    ifindex: u32,
    fd: OwnedFd,
    /// This queue created the device (the others joined it).
    created: bool,
}

fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long or contains NUL"),
        ));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(ifr)
}

/// `ioctl(fd, req, &mut ifr)`.
fn ioctl_ifreq(fd: libc::c_int, req: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY:
    // - `fd` is an open descriptor for the duration of the call;
    // - every request passed here (TUNSETIFF, SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFTXQLEN) reads
    //   and writes at most one `struct ifreq`, and `ifr` is a live, exclusive one.
    let r = unsafe { libc::ioctl(fd, req, ifr as *mut libc::ifreq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl PuntTap {
    /// Creates a punt device (`name` `None`) or, with `Some(name)`, attaches one more queue to
    /// the multi-queue punt device `name`. `multi_queue` must be the same for every queue of a
    /// device. A new device is brought up with IPv6 and ARP off (so the host never sends on it)
    /// and offloads on (so super-frames arrive whole).
    ///
    /// # Errors
    /// The OS error of the step that failed (no `/dev/net/tun`, no `CAP_NET_ADMIN`).
    pub fn open(name: Option<&str>, multi_queue: bool) -> io::Result<PuntTap> {
        let name_given = name;
        let ctx = |what: &str| {
            let what = what.to_owned();
            move |e: io::Error| io::Error::new(e.kind(), format!("punt device: {what}: {e}"))
        };
        // SAFETY: a NUL-terminated constant path and constant flags; the result is checked.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(ctx("opening /dev/net/tun")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut ifr = ifreq_named(name.unwrap_or(PUNT_NAME))?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        ioctl_ifreq(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr).map_err(ctx("TUNSETIFF"))?;
        // SAFETY: the kernel wrote a NUL-terminated name into `ifr_name` (at most IFNAMSIZ
        // bytes including the NUL).
        let name = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is the tap just set up.
        let r = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(offloads),
            )
        };
        if r < 0 {
            return Err(ctx("TUNSETOFFLOAD")(io::Error::last_os_error()));
        }
        let ifindex = crate::xdp::sysfs_u32(&name, "ifindex")
            .map_err(|e| io::Error::other(format!("punt device {name}: {e}")))?;
        let created = name_given.is_none();
        let tap = PuntTap {
            name,
            ifindex,
            fd,
            created,
        };
        if created {
            tap.bring_up().map_err(ctx("bringing it up"))?;
        }
        Ok(tap)
    }

    fn bring_up(&self) -> io::Result<()> {
        // The host must never send on the device: whatever it sends would be read as a frame
        // from the port.
        let v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.name);
        if std::path::Path::new(&v6).exists() {
            std::fs::write(&v6, "1")?;
        }
        // SAFETY: plain socket(2) with constant arguments; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut ifr = ifreq_named(&self.name)?;
        ifr.ifr_ifru.ifru_metric = PUNT_QUEUE;
        // SIOCSIFTXQLEN reads `ifr_qlen`, the same int slot as `ifru_metric`.
        ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFTXQLEN, &mut ifr)?;
        let mut ifr = ifreq_named(&self.name)?;
        ioctl_ifreq(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr)?;
        // SAFETY: SIOCGIFFLAGS filled in `ifru_flags`.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_NOARP) as libc::c_short;
        ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's ifindex (the tc program's redirect target).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Reads queued frames into `batch` (appending); returns how many were appended. Frames
    /// larger than a slot are consumed and not delivered.
    ///
    /// # Errors
    /// The OS error, unless some frames were read first.
    pub fn recv_more(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        let before = batch.len();
        let mut error = None;
        while !batch.is_full() {
            let mut got = false;
            batch.push_with_offload(|slot| {
                let mut hdr = [0u8; Offload::LEN];
                let iov = [
                    libc::iovec {
                        iov_base: hdr.as_mut_ptr().cast(),
                        iov_len: hdr.len(),
                    },
                    libc::iovec {
                        iov_base: slot.as_mut_ptr().cast(),
                        iov_len: slot.len(),
                    },
                ];
                // SAFETY:
                // - `fd` is the tap's open descriptor for the duration of the call;
                // - `iov` holds two iovecs over live, writable buffers of the stated lengths
                //   (`hdr` and the batch slot), which outlive the call.
                let n = unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        error = Some(e);
                    }
                    return (0, Offload::NONE);
                }
                got = true;
                let n = n as usize;
                if n < Offload::LEN {
                    return (0, Offload::NONE);
                }
                (n - Offload::LEN, Offload::from_bytes(&hdr))
            });
            if !got {
                batch.truncate(batch.len() - 1);
                break;
            }
        }
        let read = batch.len() - before;
        match error {
            Some(e) if read == 0 => Err(e),
            _ => Ok(read),
        }
    }

    /// The descriptor that becomes readable when frames are queued.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// A port in mode "tc": the tc program on the interface, its punt device for receiving, and a
/// packet socket for sending. Dropping it detaches the program (when no other worker uses the
/// port) and closes the punt queue (the device goes with its last queue).
pub struct TcPort {
    name: String,
    punt: PuntTap,
    /// Held while the port is open: other workers join this port's punt device only while it
    /// lives (see [`TcPort::liveness`]).
    alive: Arc<()>,
    tx: PacketPort,
    steering: Arc<Mutex<XdpSteering>>,
    attachment: Attachment,
}

impl TcPort {
    /// Takes over `interface`: attaches the tc program, opens (or joins, for a later worker)
    /// the port's punt device and starts steering the slow path to it. `punt_name` is the
    /// device an earlier worker created for this port; `multi_queue` is set when several
    /// workers share ports.
    ///
    /// # Errors
    /// [`PortError::Io`] naming the step that failed (the program is detached again).
    pub fn open(
        interface: &str,
        steering: Arc<Mutex<XdpSteering>>,
        punt_name: Option<&str>,
        multi_queue: bool,
    ) -> Result<TcPort, PortError> {
        let fail = |m: String| PortError::Io {
            name: interface.to_owned(),
            source: io::Error::other(m),
        };
        let poisoned = || fail("the eBPF state is poisoned".into());
        let tx = PacketPort::open_tx_only(interface)?;
        let attachment = steering
            .lock()
            .map_err(|_| poisoned())?
            .attach(interface, Program::Port)
            .map_err(|e| fail(e.to_string()))?;
        let punt = match PuntTap::open(punt_name, multi_queue) {
            Ok(p) => p,
            Err(e) => {
                if let Ok(mut s) = steering.lock() {
                    s.release(attachment.ifindex, &[]);
                }
                return Err(fail(e.to_string()));
            }
        };
        // From here on, dropping `port` detaches the program again.
        let port = TcPort {
            name: interface.to_owned(),
            punt,
            alive: Arc::new(()),
            tx,
            steering,
            attachment,
        };
        {
            let mut s = port.steering.lock().map_err(|_| poisoned())?;
            s.set_punt(attachment.ifindex, port.punt.ifindex());
            s.steer(&attachment).map_err(|e| fail(e.to_string()))?;
        }
        tracing::info!(
            interface,
            punt = port.punt.name(),
            "tc port open (slow path through the punt device)"
        );
        Ok(port)
    }

    /// The punt device's name.
    pub fn punt_name(&self) -> &str {
        self.punt.name()
    }

    /// A token that stays upgradable while this port is open: a worker opening the same port
    /// joins its punt device only then (after the port closed, the device is gone and its name
    /// may belong to another port's device).
    pub fn liveness(&self) -> std::sync::Weak<()> {
        Arc::downgrade(&self.alive)
    }

    /// How the program is attached to this port.
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }
}

impl PortBackend for TcPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv_batch(&mut self, batch: &mut RxBatch) -> Result<usize, PortError> {
        batch.clear();
        self.punt.recv_more(batch).map_err(|source| PortError::Io {
            name: self.name.clone(),
            source,
        })
    }

    fn send(&mut self, frame: &[u8], offload: &Offload) -> Result<bool, PortError> {
        self.tx.send(frame, offload)
    }

    fn carries_offloads(&self) -> bool {
        true
    }

    fn readable_fds(&self) -> Vec<std::os::fd::RawFd> {
        vec![self.punt.fd()]
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        // Frames the punt device could not queue for user space (its queue was full); reported
        // by the queue that created the device only, as counters are summed over workers.
        if !self.punt.created {
            return vec![("punt_dropped", 0)];
        }
        let path = format!("/sys/class/net/{}/statistics/tx_dropped", self.punt.name());
        let dropped = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        vec![("punt_dropped", dropped)]
    }

    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }
}

impl Drop for TcPort {
    fn drop(&mut self) {
        if let Ok(mut s) = self.steering.lock() {
            s.release(self.attachment.ifindex, &[]);
        }
    }
}

/// The uplink in mode "tc": the host-stack path ([`super::underlay::UnderlayPort`]) for
/// everything user space handles, and the tc uplink program, which decapsulates known traffic
/// before the host's stack sees it. Dropping it detaches the program.
pub struct TcUplink {
    ip: super::underlay::UnderlayPort,
    steering: Arc<Mutex<XdpSteering>>,
    attachment: Attachment,
}

impl TcUplink {
    /// Attaches the tc uplink program to `ip`'s interface and points it at this host's VTEP.
    ///
    /// # Errors
    /// [`PortError::Io`] naming the step that failed.
    pub fn open(
        ip: super::underlay::UnderlayPort,
        steering: Arc<Mutex<XdpSteering>>,
        local: std::net::SocketAddrV4,
    ) -> Result<TcUplink, PortError> {
        let interface = ip.name().to_owned();
        let fail = |m: String| PortError::Io {
            name: interface.clone(),
            source: io::Error::other(m),
        };
        let attachment = steering
            .lock()
            .map_err(|_| fail("the eBPF state is poisoned".into()))?
            .attach(&interface, Program::Uplink)
            .map_err(|e| fail(e.to_string()))?;
        let up = TcUplink {
            ip,
            steering,
            attachment,
        };
        up.steering
            .lock()
            .map_err(|_| fail("the eBPF state is poisoned".into()))?
            .set_uplink(&attachment, *local.ip(), local.port())
            .map_err(|e| fail(e.to_string()))?;
        Ok(up)
    }
}

impl PortBackend for TcUplink {
    fn name(&self) -> &str {
        self.ip.name()
    }

    fn recv_batch(&mut self, batch: &mut RxBatch) -> Result<usize, PortError> {
        self.ip.recv_batch(batch)
    }

    fn send(&mut self, frame: &[u8], offload: &Offload) -> Result<bool, PortError> {
        self.ip.send(frame, offload)
    }

    fn carries_offloads(&self) -> bool {
        self.ip.carries_offloads()
    }

    fn readable_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.ip.readable_fds()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.ip.counters()
    }

    fn flush(&mut self) -> Result<(), PortError> {
        self.ip.flush()
    }
}

impl Drop for TcUplink {
    fn drop(&mut self) {
        if let Ok(mut s) = self.steering.lock() {
            s.release(self.attachment.ifindex, &[]);
        }
    }
}
