//! The AF_XDP transmit generator of `kangaroo-bench flood --generator afxdp`: one AF_XDP socket
//! on queue 0 of the interface, bound without an XDP program (it only transmits), its UMEM
//! filled once with copies of the frame. The loop puts every free buffer on the transmit ring,
//! kicks the kernel (copy mode sends at most 32 frames per `sendto`) and takes transmitted
//! buffers back off the completion ring: no copy and no allocation per frame. On veth the kernel
//! runs in copy mode (zero-copy is not supported there); that is the mode asked for, so the
//! same figures come out wherever AF_XDP exists.
//!
//! All `unsafe` of the generators is in this module.
#![allow(unsafe_code)]

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::Context;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FrameDesc, Socket, TxQueue, Umem};

/// Frames in the UMEM (2 KiB each: 2 MiB, well under an 8 MiB `ulimit -l`).
const FRAMES: u32 = 1024;
/// Bytes per UMEM frame.
const FRAME_SIZE: u32 = 2048;
/// The transmit and completion rings hold every frame.
const RING: u32 = FRAMES;
/// Frames the kernel transmits per `sendto` in copy mode (`TX_BATCH_SIZE` in xsk.c).
const KERNEL_TX_BATCH: usize = 32;

/// An open AF_XDP transmit generator.
pub struct AfXdpGen {
    // Field order is drop order: the socket's rings go before the UMEM they map.
    tx: TxQueue,
    comp: CompQueue,
    _umem: Umem,
    /// The written descriptor of every frame, by frame index (the completion ring returns
    /// addresses with their lengths cleared).
    written: Vec<FrameDesc>,
    /// Frames neither on the transmit ring nor in the kernel.
    free: Vec<FrameDesc>,
    /// Scratch for the completion ring.
    completed: Vec<FrameDesc>,
    in_flight: usize,
}

impl AfXdpGen {
    /// Opens the socket on queue 0 of `interface` and writes `frame` into every buffer.
    ///
    /// # Errors
    /// The kernel has no AF_XDP, the UMEM cannot be registered (locked-memory limit), the
    /// interface does not exist, or `frame` does not fit a buffer.
    pub fn open(interface: &str, frame: &[u8]) -> anyhow::Result<AfXdpGen> {
        anyhow::ensure!(
            frame.len() <= FRAME_SIZE as usize,
            "a {}-byte frame does not fit a {FRAME_SIZE}-byte AF_XDP buffer",
            frame.len()
        );
        let ring = QueueSize::new(RING).context("ring size")?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).context("frame size")?)
            .fill_queue_size(QueueSize::new(16).context("fill ring size")?)
            .comp_queue_size(ring)
            .build()
            .context("UMEM configuration")?;
        let frames = NonZeroU32::new(FRAMES).context("zero UMEM frames")?;
        let (umem, mut descs) = Umem::new(umem_cfg, frames, false).with_context(|| {
            format!(
                "creating a {} KiB UMEM (needs CAP_IPC_LOCK or room under `ulimit -l`)",
                FRAMES * FRAME_SIZE / 1024
            )
        })?;
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(16).context("rx ring size")?)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let ifname: Interface = interface
            .parse()
            .map_err(|_| anyhow::anyhow!("{interface:?} is not a valid interface name"))?;
        // SAFETY:
        // - the UMEM was created just above and is shared with no other socket;
        // - `XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD` is set: no XDP program is loaded for the socket
        //   (it only transmits), as `Socket::new` requires when the caller manages programs.
        let (tx, _rx, rings) = unsafe { Socket::new(sock_cfg, &umem, &ifname, 0) }
            .with_context(|| format!("creating an AF_XDP socket on {interface} queue 0"))?;
        let (_fill, comp) = rings.context("the kernel gave no fill/completion rings")?;
        for desc in &mut descs {
            // SAFETY: the descriptor names a frame of this UMEM that is on no ring yet, and no
            // other reference to its contents exists.
            let mut data = unsafe { umem.data_mut(desc) };
            std::io::Write::write_all(&mut data.cursor(), frame)
                .context("writing the frame into the UMEM")?;
        }
        Ok(AfXdpGen {
            tx,
            comp,
            _umem: umem,
            completed: descs.clone(),
            free: descs.clone(),
            written: descs,
            in_flight: 0,
        })
    }

    /// Sends until `deadline`; returns the frames the kernel transmitted (taken back off the
    /// completion ring, so none is counted before it left).
    ///
    /// # Errors
    /// A `sendto` failed with an error other than a full queue.
    pub fn run_until(&mut self, deadline: Instant) -> anyhow::Result<u64> {
        let mut sent = 0u64;
        while Instant::now() < deadline {
            sent += self.reclaim();
            // SAFETY: every descriptor in `free` names a frame of this socket's UMEM, written
            // in `open`, that is neither on the transmit ring nor held by the kernel.
            let n = unsafe { self.tx.produce(&self.free) };
            // The ring took the first `n`.
            self.free.drain(..n);
            self.in_flight += n;
            // Copy mode transmits up to KERNEL_TX_BATCH frames per kick.
            for _ in 0..n.div_ceil(KERNEL_TX_BATCH).max(1) {
                self.tx
                    .wakeup()
                    .context("kicking the AF_XDP transmit ring")?;
            }
        }
        // What is still on the ring leaves within moments; count what completes.
        let drain_until = Instant::now() + Duration::from_millis(100);
        while self.in_flight > 0 && Instant::now() < drain_until {
            self.tx
                .wakeup()
                .context("kicking the AF_XDP transmit ring")?;
            sent += self.reclaim();
        }
        Ok(sent)
    }

    /// Takes transmitted frames off the completion ring back onto the free list.
    fn reclaim(&mut self) -> u64 {
        // SAFETY: `completed` holds plain descriptors that the call overwrites with addresses
        // of this UMEM's frames.
        let n = unsafe { self.comp.consume(&mut self.completed) };
        for d in &self.completed[..n] {
            // Each frame starts at a multiple of the frame size (no headroom configured).
            if let Some(w) = self.written.get(d.addr() / FRAME_SIZE as usize) {
                self.free.push(*w);
            }
        }
        self.in_flight -= n.min(self.in_flight);
        n as u64
    }
}
