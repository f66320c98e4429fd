//! A transmit-only AF_XDP socket that sends one frame over and over: the traffic generator of
//! the benchmarks (`kangaroo-bench flood`), not a switch port.
//!
//! Every UMEM frame is written once, at open, with the same bytes, and never written again; the
//! generator then only moves descriptors: it produces them on the tx ring and counts them back
//! off the completion ring, keeping at most a ring's worth in flight. So a frame costs the
//! kernel's transmit and nothing in user space, and one `sendto` moves a batch (32 frames in
//! copy mode, as on veth). No XDP program is needed: the socket never receives.
//!
//! All `unsafe` of the sender is in this module.
#![allow(unsafe_code)]

use std::num::NonZeroU32;

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FrameDesc, TxQueue, Umem};

/// Frames in the UMEM and slots of the tx and completion rings.
const FRAMES: u32 = 2048;
/// Bytes per UMEM frame (the largest frame sent is this less the kernel's headroom).
const FRAME_SIZE: u32 = 2048;
/// Frames the kernel transmits per wake-up in copy mode.
const KERNEL_TX_BATCH: usize = 32;

/// Why the sender could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// A step of setting up the socket failed.
    #[error("AF_XDP sender on {interface}: {step}")]
    Setup {
        /// The interface.
        interface: String,
        /// What failed, with the reason.
        step: String,
    },
}

/// The sender: one socket on queue 0 of an interface.
pub struct AfXdpSender {
    /// The frames' memory: the socket needs it for as long as it lives.
    _umem: Umem,
    tx: TxQueue,
    comp: CompQueue,
    /// Every frame, written with the frame's bytes.
    descs: Vec<FrameDesc>,
    /// Scratch for the completion ring.
    completed: Vec<FrameDesc>,
    /// Next descriptor to produce (round robin).
    next: usize,
    /// Produced and not yet completed.
    in_flight: usize,
}

impl AfXdpSender {
    /// Opens a transmit-only socket on queue 0 of `interface` whose every frame holds `frame`.
    ///
    /// # Errors
    /// [`SenderError::Setup`] naming the step: the frame is too large, the UMEM cannot be
    /// registered, or the kernel refuses the socket (no AF_XDP support).
    pub fn open(interface: &str, frame: &[u8]) -> Result<AfXdpSender, SenderError> {
        let fail = |step: String| SenderError::Setup {
            interface: interface.to_owned(),
            step,
        };
        let ring = QueueSize::new(FRAMES).map_err(|e| fail(format!("ring size: {e}")))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| fail(format!("frame size: {e}")))?)
            .fill_queue_size(QueueSize::new(64).map_err(|e| fail(format!("fill ring: {e}")))?)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| fail(format!("UMEM config: {e}")))?;
        let frames = NonZeroU32::new(FRAMES).ok_or_else(|| fail("zero frames".into()))?;
        let (umem, mut descs) =
            Umem::new(umem_cfg, frames, false).map_err(|e| fail(format!("UMEM: {e}")))?;
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(64).map_err(|e| fail(format!("rx ring: {e}")))?)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let ifname: Interface = interface
            .parse()
            .map_err(|_| fail("not a valid interface name".into()))?;
        // SAFETY: the UMEM is fresh and used by this socket only, and the program-load inhibit
        // flag is set (the socket never receives), as `Socket::new` requires.
        let (tx, _rx, fq_cq) = unsafe { xsk_rs::Socket::new(sock_cfg, &umem, &ifname, 0) }
            .map_err(|e| fail(format!("socket: {e}")))?;
        let (_fill, comp) = fq_cq.ok_or_else(|| fail("no completion ring".into()))?;
        for desc in &mut descs {
            // SAFETY: the descriptors come from this UMEM and none has been handed to the
            // kernel yet, so nothing else reads or writes the frame.
            let mut data = unsafe { umem.data_mut(desc) };
            std::io::Write::write_all(&mut data.cursor(), frame)
                .map_err(|e| fail(format!("a {}-byte frame does not fit: {e}", frame.len())))?;
        }
        Ok(AfXdpSender {
            _umem: umem,
            tx,
            comp,
            completed: descs.clone(),
            descs,
            next: 0,
            in_flight: 0,
        })
    }

    /// Queues up to `count` more copies of the frame and wakes the kernel to send them; returns
    /// how many were queued (fewer when a ring's worth is still in flight).
    ///
    /// # Errors
    /// The wake-up failed with anything but a busy or full device.
    pub fn send_repeated(&mut self, count: usize) -> std::io::Result<usize> {
        // SAFETY: descriptors written by `consume` name frames of this UMEM; they are only
        // counted, never used to write.
        let done = unsafe { self.comp.consume(&mut self.completed) };
        self.in_flight = self.in_flight.saturating_sub(done);
        let room = (FRAMES as usize - self.in_flight).min(count);
        let mut queued = 0;
        while queued < room {
            let k = (room - queued).min(self.descs.len() - self.next);
            let slice = &self.descs[self.next..self.next + k];
            // SAFETY: the frames belong to this UMEM and hold the frame written at open; they
            // are never written again, so the kernel reading one that is still in flight reads
            // the same, finished bytes. At most a ring's worth is in flight.
            let n = unsafe { self.tx.produce(slice) };
            queued += n;
            self.next = (self.next + n) % self.descs.len();
            if n < k {
                break;
            }
        }
        self.in_flight += queued;
        if self.tx.needs_wakeup() {
            for _ in 0..queued.div_ceil(KERNEL_TX_BATCH).max(1) {
                if let Err(e) = self.tx.wakeup() {
                    match e.raw_os_error() {
                        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS) => break,
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(queued)
    }

    /// Frames produced and not yet reported sent by the kernel.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}
