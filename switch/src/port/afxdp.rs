//! AF_XDP ports: frames steered by the XDP program into per-queue AF_XDP sockets.
//!
//! Each receive queue of the interface gets one socket with its own UMEM: half of the UMEM's
//! frames sit on the fill ring (returned to it as soon as a received frame has been copied into
//! the switch's batch, so the ring never runs dry), the other half are transmit buffers
//! recycled from the completion ring. The kernel picks zero-copy where the driver supports it
//! and copy mode otherwise (veth); `XDP_USE_NEED_WAKEUP` keeps system calls off the fast path
//! when the kernel does not need them.
//!
//! XDP hands frames over without the kernel's checksum metadata, so a guest's offloaded
//! (partial) TCP/UDP checksums arrive unfinished: every received frame goes through
//! [`crate::checksum::repair_partial`], which completes them.
//!
//! All `unsafe` of this backend is in this module.
#![allow(unsafe_code)]

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::{Offload, PortBackend, PortError, RxBatch};
use crate::checksum::{repair_partial, Repair};
use crate::xdp::{Attachment, Program, XdpSteering};

/// Sizing of an AF_XDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfXdpConfig {
    /// Frames per UMEM (one UMEM per receive queue): half for receiving, half for sending.
    /// A power of two.
    pub frames: u32,
    /// Frames per receive/transmit batch.
    pub batch: usize,
}

impl Default for AfXdpConfig {
    fn default() -> Self {
        AfXdpConfig {
            frames: 2048,
            batch: 64,
        }
    }
}

/// Bytes the kernel reserves in front of every received frame (`XDP_PACKET_HEADROOM`).
const XDP_HEADROOM: u32 = 256;
/// Frames the kernel transmits per `sendto` in copy mode (`TX_BATCH_SIZE` in xsk.c).
const KERNEL_TX_BATCH: usize = 32;
const SOL_XDP: libc::c_int = 283;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

/// The UMEM frame size for an interface MTU: the smallest power of two (2048 or 4096) that
/// holds the kernel's headroom and a full frame.
///
/// # Errors
/// A message if the MTU needs more than 4096-byte frames.
pub fn frame_size_for_mtu(mtu: u32) -> Result<u32, String> {
    // Ethernet header and one VLAN tag on top of the MTU.
    let need = mtu + 18 + XDP_HEADROOM;
    [2048, 4096]
        .into_iter()
        .find(|s| need <= *s)
        .ok_or_else(|| {
            format!(
                "MTU {mtu} needs AF_XDP frames over 4096 bytes; use an MTU of at most {} or mode = \"packet\"",
                4096 - 18 - XDP_HEADROOM
            )
        })
}

/// Counters kept by an AF_XDP port.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct AfXdpCounters {
    /// Partial checksums completed on receive.
    pub checksums_completed: u64,
    /// Frames dropped on transmit because every transmit buffer was in flight.
    pub tx_no_buffer: u64,
    /// Frames dropped on transmit because they exceed the frame size.
    pub tx_too_big: u64,
    /// Times received frames could not go back on the fill ring at once (they are offered
    /// again on the next receive).
    pub fill_deferred: u64,
}

struct Queue {
    id: u32,
    umem: Umem,
    fill: FillQueue,
    comp: CompQueue,
    tx: TxQueue,
    rx: RxQueue,
    rx_descs: Vec<FrameDesc>,
    /// Received frames, copied out, waiting for room on the fill ring.
    refill: Vec<FrameDesc>,
    free_tx: Vec<FrameDesc>,
    pending: Vec<FrameDesc>,
    completed: Vec<FrameDesc>,
    frame_room: usize,
    /// Frames are VXLAN: the checksum to repair is the inner frame's.
    vxlan: bool,
}

/// Where the inner frame of a VXLAN packet starts (after Ethernet, IPv4 with options, UDP and
/// VXLAN headers), if the frame holds one.
fn inner_offset(frame: &[u8]) -> Option<usize> {
    let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
    let off = 14 + ihl + 8 + 8;
    (off <= frame.len()).then_some(off)
}

impl Queue {
    fn open(
        interface: &str,
        queue: u32,
        frame_size: u32,
        cfg: &AfXdpConfig,
        vxlan: bool,
    ) -> Result<Queue, String> {
        let half = cfg.frames / 2;
        let ring =
            QueueSize::new(half.next_power_of_two()).map_err(|e| format!("ring size: {e}"))?;
        // The kernel publishes how far it has read the fill ring lazily (in copy mode, when its
        // cached entries run out), so a fill ring only as large as the receive frames can look
        // full while every frame is back in user space. Twice as large leaves room; frames that
        // still do not fit wait in `refill`.
        let fill_ring = QueueSize::new(half.next_power_of_two() * 2)
            .map_err(|e| format!("fill ring size: {e}"))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(frame_size).map_err(|e| format!("frame size: {e}"))?)
            .fill_queue_size(fill_ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| format!("UMEM config: {e}"))?;
        let frames = NonZeroU32::new(cfg.frames).ok_or("zero UMEM frames")?;
        let (umem, mut descs) = Umem::new(umem_cfg, frames, false).map_err(|e| {
            format!(
                "creating a {} KiB UMEM: {e} (registering it needs CAP_IPC_LOCK or room under `ulimit -l`)",
                u64::from(cfg.frames) * u64::from(frame_size) / 1024
            )
        })?;
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let ifname: Interface = interface
            .parse()
            .map_err(|_| format!("{interface:?} is not a valid interface name"))?;
        // SAFETY: the UMEM is fresh and not shared with any other socket, and the program-load
        // inhibit flag is set (our own XDP program steers), as `Socket::new` requires.
        let (tx, rx, fq_cq) = unsafe { Socket::new(sock_cfg, &umem, &ifname, queue) }
            .map_err(|e| format!("creating the AF_XDP socket on queue {queue}: {e}"))?;
        let (mut fill, comp) = fq_cq.ok_or("the kernel gave no fill/completion rings")?;
        let free_tx = descs.split_off(half as usize);
        // SAFETY: the descriptors come from this UMEM and none is in use anywhere else.
        let filled = unsafe { fill.produce(&descs) };
        if filled != descs.len() {
            return Err(format!(
                "the fill ring took {filled} of {} frames",
                descs.len()
            ));
        }
        let mut rx_descs = descs;
        rx_descs.truncate(cfg.batch);
        Ok(Queue {
            id: queue,
            frame_room: (frame_size - XDP_HEADROOM) as usize,
            vxlan,
            umem,
            fill,
            comp,
            tx,
            rx,
            refill: Vec::with_capacity(rx_descs.capacity()),
            rx_descs,
            completed: free_tx.clone(),
            pending: Vec::with_capacity(free_tx.len()),
            free_tx,
        })
    }

    fn zero_copy(&self) -> bool {
        let mut opts: u32 = 0;
        let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
        // SAFETY: the descriptor is the live socket of this queue; `opts` and `len` are valid
        // for writes of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                self.rx.fd().as_raw_fd(),
                SOL_XDP,
                XDP_OPTIONS,
                (&mut opts as *mut u32).cast(),
                &mut len,
            )
        };
        r == 0 && opts & XDP_OPTIONS_ZEROCOPY != 0
    }

    /// Moves transmitted buffers back to the free list.
    fn reclaim(&mut self) {
        let room = self.completed.len();
        // SAFETY: descriptors written by `consume` come from this queue's UMEM.
        let n = unsafe { self.comp.consume(&mut self.completed[..room]) };
        self.free_tx.extend_from_slice(&self.completed[..n]);
    }

    /// Hands copied-out frames back to the kernel. The ring takes all of them or none; those
    /// it does not take are offered again on the next call.
    fn refill(&mut self, counters: &mut AfXdpCounters) {
        if self.refill.is_empty() {
            return;
        }
        // SAFETY: the frames in `refill` were taken off this UMEM's rx ring and copied out; no
        // reference to their contents remains.
        let back = unsafe { self.fill.produce(&self.refill) };
        if back == self.refill.len() {
            self.refill.clear();
        } else {
            counters.fill_deferred += 1;
        }
        if self.fill.needs_wakeup() {
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
    }

    fn recv(&mut self, batch: &mut RxBatch, counters: &mut AfXdpCounters) -> usize {
        self.refill(counters);
        let room = (batch.capacity() - batch.len()).min(self.rx_descs.len());
        if room == 0 {
            return 0;
        }
        // SAFETY: `rx_descs` are plain descriptors the call overwrites; the frames they then
        // name belong to this queue's UMEM.
        let n = unsafe { self.rx.consume(&mut self.rx_descs[..room]) };
        for desc in &self.rx_descs[..n] {
            // SAFETY: the kernel handed this frame to user space on the rx ring; it is not on
            // the fill ring until the `produce` below, so nothing writes it meanwhile.
            let data = unsafe { self.umem.data(desc) };
            let frame = data.contents();
            let vxlan = self.vxlan;
            batch.push_with(|slot| {
                let len = frame.len().min(slot.len());
                slot[..len].copy_from_slice(&frame[..len]);
                let start = if vxlan {
                    // The outer UDP checksum can be partial too (a sender over virtual links
                    // leaves it to offload); then the inner frame is checked.
                    if repair_partial(&mut slot[..len]) == Repair::Completed {
                        counters.checksums_completed += 1;
                    }
                    inner_offset(&slot[..len]).unwrap_or(len)
                } else {
                    0
                };
                match repair_partial(&mut slot[start..len]) {
                    Repair::Completed => counters.checksums_completed += 1,
                    Repair::Valid | Repair::NotPartial | Repair::NotApplicable => {}
                }
                len
            });
        }
        if n > 0 {
            self.refill.extend_from_slice(&self.rx_descs[..n]);
            self.refill(counters);
        }
        n
    }

    fn send(&mut self, frame: &[u8], counters: &mut AfXdpCounters) -> bool {
        if frame.len() > self.frame_room {
            counters.tx_too_big += 1;
            return false;
        }
        if self.free_tx.is_empty() {
            self.reclaim();
        }
        let Some(mut desc) = self.free_tx.pop() else {
            counters.tx_no_buffer += 1;
            return false;
        };
        // SAFETY: the buffer came off the free list: it is neither on the tx ring nor being
        // written by the kernel.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let mut cursor = data.cursor();
        if std::io::Write::write_all(&mut cursor, frame).is_err() {
            self.free_tx.push(desc);
            counters.tx_too_big += 1;
            return false;
        }
        self.pending.push(desc);
        true
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // SAFETY: the pending buffers belong to this UMEM and were written above; they are not
        // touched again until the completion ring returns them.
        let n = unsafe { self.tx.produce(&self.pending) };
        // The tx ring is as large as the transmit half of the UMEM, so everything fits; frames
        // that do not are returned to the free list (dropped).
        self.free_tx.extend(self.pending.drain(n..));
        self.pending.clear();
        if self.tx.needs_wakeup() {
            // Copy mode transmits at most KERNEL_TX_BATCH frames per system call.
            for _ in 0..n.div_ceil(KERNEL_TX_BATCH) {
                self.tx.wakeup()?;
            }
        }
        self.reclaim();
        Ok(())
    }
}

/// A port on an interface, through AF_XDP.
pub struct AfXdpPort {
    name: String,
    queues: Vec<Queue>,
    steering: Arc<Mutex<XdpSteering>>,
    attachment: Attachment,
    counters: AfXdpCounters,
    zero_copy: bool,
}

impl AfXdpPort {
    /// Takes over `interface`: attaches the XDP program, opens one socket per receive queue,
    /// enters them in the XSKMAP and starts steering.
    ///
    /// # Errors
    /// [`PortError::Io`] naming the step that failed (the program is detached again).
    pub fn open(
        interface: &str,
        steering: Arc<Mutex<XdpSteering>>,
        cfg: &AfXdpConfig,
        workers: (u32, u32),
    ) -> Result<AfXdpPort, PortError> {
        AfXdpPort::open_with(interface, steering, cfg, workers, Program::Port)
    }

    /// As [`AfXdpPort::open`], attaching `program` (the uplink program for an uplink, whose
    /// frames are VXLAN: their inner checksums are the ones repaired).
    ///
    /// # Errors
    /// As [`AfXdpPort::open`].
    pub fn open_with(
        interface: &str,
        steering: Arc<Mutex<XdpSteering>>,
        cfg: &AfXdpConfig,
        (worker, workers): (u32, u32),
        program: Program,
    ) -> Result<AfXdpPort, PortError> {
        let fail = |m: String| PortError::Io {
            name: interface.to_owned(),
            source: std::io::Error::other(m),
        };
        let mtu = crate::xdp::sysfs_u32(interface, "mtu").map_err(|e| fail(e.to_string()))?;
        let frame_size = frame_size_for_mtu(mtu).map_err(fail)?;
        let all = crate::xdp::rx_queues(interface);
        let mine: Vec<u32> = all
            .iter()
            .copied()
            .filter(|q| q % workers.max(1) == worker)
            .collect();
        if mine.is_empty() {
            return Err(fail(format!(
                "{} receive queue(s) for {workers} datapath workers: every worker needs one \
                 (veth: create it with numrxqueues {workers} numtxqueues {workers}; NICs: ethtool -L)",
                all.len()
            )));
        }
        let attachment = steering
            .lock()
            .map_err(|_| fail("the XDP state is poisoned".into()))?
            .attach(interface, program)
            .map_err(|e| fail(e.to_string()))?;
        // From here on, dropping `port` detaches the program again.
        let mut port = AfXdpPort {
            name: interface.to_owned(),
            queues: Vec::new(),
            steering,
            attachment,
            counters: AfXdpCounters::default(),
            zero_copy: false,
        };
        for q in mine {
            let queue = Queue::open(interface, q, frame_size, cfg, program == Program::Uplink)
                .map_err(fail)?;
            port.steering
                .lock()
                .map_err(|_| fail("the XDP state is poisoned".into()))?
                .register_socket(&attachment, q, queue.rx.fd().as_raw_fd())
                .map_err(|e| fail(e.to_string()))?;
            port.queues.push(queue);
        }
        port.zero_copy = port.queues.iter().all(Queue::zero_copy);
        port.steering
            .lock()
            .map_err(|_| fail("the XDP state is poisoned".into()))?
            .steer(&attachment)
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!(
            interface,
            queues = port.queues.len(),
            frame_size,
            zero_copy = port.zero_copy,
            mode = ?attachment.mode,
            "AF_XDP port open"
        );
        Ok(port)
    }

    /// How the XDP program is attached to this port.
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// True if every socket runs in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The port's counters.
    pub fn afxdp_counters(&self) -> AfXdpCounters {
        self.counters
    }
}

impl PortBackend for AfXdpPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv_batch(&mut self, batch: &mut RxBatch) -> Result<usize, PortError> {
        batch.clear();
        for q in &mut self.queues {
            q.recv(batch, &mut self.counters);
            if batch.is_full() {
                break;
            }
        }
        Ok(batch.len())
    }

    fn send(&mut self, frame: &[u8], _offload: &Offload) -> Result<bool, PortError> {
        let Some(q) = self.queues.first_mut() else {
            return Ok(false);
        };
        Ok(q.send(frame, &mut self.counters))
    }

    fn flush(&mut self) -> Result<(), PortError> {
        for q in &mut self.queues {
            q.flush().map_err(|source| PortError::Io {
                name: self.name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn readable_fds(&self) -> Vec<RawFd> {
        self.queues.iter().map(|q| q.rx.fd().as_raw_fd()).collect()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("checksums_completed", c.checksums_completed),
            ("tx_no_buffer", c.tx_no_buffer),
            ("tx_too_big", c.tx_too_big),
        ]
    }
}

impl Drop for AfXdpPort {
    fn drop(&mut self) {
        let queues: Vec<u32> = self.queues.iter().map(|q| q.id).collect();
        if let Ok(mut s) = self.steering.lock() {
            s.release(self.attachment.ifindex, &queues);
        }
        tracing::info!(interface = %self.name, queues = ?self.queues.iter().map(|q| q.id).collect::<Vec<_>>(), "AF_XDP port closed");
    }
}
