//! Port backends: how frames enter and leave the switch.
//!
//! Every backend (in-memory here; AF_XDP and AF_PACKET on real interfaces) implements
//! [`PortBackend`]: receive a batch into an [`RxBatch`] allocated once, queue frames for
//! transmission, and commit the queue once per batch with [`PortBackend::flush`].

#[cfg(target_os = "linux")]
pub mod afxdp;
pub mod memory;
pub mod opener;
pub mod packet;
pub mod secure;
#[cfg(target_os = "linux")]
pub mod tc;
pub mod underlay;

/// Index of a port in the switch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize)]
pub struct PortId(u16);

impl PortId {
    /// A port id from an index.
    pub const fn new(i: u16) -> PortId {
        PortId(i)
    }

    /// The index.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A port backend failed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The other end is gone.
    #[error("port {name}: link is down")]
    Disconnected {
        /// The port.
        name: String,
    },
    /// An I/O error from the kernel.
    #[error("port {name}: I/O error")]
    Io {
        /// The port.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Offload metadata that travels with a frame (the kernel's `virtio_net_hdr`): a checksum the
/// sender left for later (`NEEDS_CSUM`), and segmentation of a frame larger than the MTU (GSO).
/// Ports that carry it (AF_PACKET with `PACKET_VNET_HDR`) hand it to the egress port unchanged, so
/// guests keep TSO and checksum offload through the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    /// `VIRTIO_NET_HDR_F_*` flags.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` type.
    pub gso_type: u8,
    /// Length of the headers to copy into every segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl Offload {
    /// No offload: a complete frame with valid checksums.
    pub const NONE: Offload = Offload {
        flags: 0,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };
    /// Size of `struct virtio_net_hdr`.
    pub const LEN: usize = 10;
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
    pub const F_NEEDS_CSUM: u8 = 1;

    /// True when the L4 checksum still has to be completed.
    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags & Self::F_NEEDS_CSUM != 0
    }

    /// True for a GSO super-frame.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type != 0
    }

    /// Decodes the kernel's header (little-endian fields on this platform).
    #[inline]
    pub fn from_bytes(b: &[u8; Self::LEN]) -> Offload {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Offload {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    /// Encodes the kernel's header.
    #[inline]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Completes a checksum the sender left partial, in place: sums `frame[csum_start..]` (the
    /// field holds the pseudo-header sum) and stores the result. Returns false if the offsets do
    /// not fit the frame (the frame is then left unchanged).
    pub fn complete_checksum(&self, frame: &mut [u8]) -> bool {
        let start = usize::from(self.csum_start);
        let field = start + usize::from(self.csum_offset);
        if field + 2 > frame.len() || start > frame.len() {
            return false;
        }
        let sum = crate::checksum::finish(crate::checksum::add(0, &frame[start..]));
        frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
        true
    }
}

/// Frames received in one batch, in buffers allocated once.
pub struct RxBatch {
    buf: Box<[u8]>,
    lens: Box<[u16]>,
    offloads: Box<[Offload]>,
    frame_size: usize,
    count: usize,
}

impl RxBatch {
    /// Room for `batch_size` frames of up to `frame_size` bytes each (`frame_size` is clamped to
    /// 65535).
    pub fn new(batch_size: usize, frame_size: usize) -> RxBatch {
        let frame_size = frame_size.min(usize::from(u16::MAX));
        RxBatch {
            buf: vec![0; batch_size * frame_size].into_boxed_slice(),
            lens: vec![0; batch_size].into_boxed_slice(),
            offloads: vec![Offload::NONE; batch_size].into_boxed_slice(),
            frame_size,
            count: 0,
        }
    }

    /// Maximum frames per batch.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Largest frame a slot holds.
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no frame was received.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Frame `i` (empty if `i` is out of range).
    #[inline]
    pub fn frame(&self, i: usize) -> &[u8] {
        if i >= self.count {
            return &[];
        }
        let start = i * self.frame_size;
        &self.buf[start..start + usize::from(self.lens[i])]
    }

    /// Offload metadata of frame `i` ([`Offload::NONE`] if out of range or not carried).
    #[inline]
    pub fn offload(&self, i: usize) -> Offload {
        if i >= self.count {
            return Offload::NONE;
        }
        self.offloads[i]
    }

    /// Appends a frame by letting `fill` write into the next slot and return the length it wrote.
    /// Returns false (and appends nothing) when the batch is full. A length beyond the slot is
    /// clamped to it.
    #[inline]
    pub fn push_with(&mut self, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        self.push_with_offload(|slot| (fill(slot), Offload::NONE))
    }

    /// As [`RxBatch::push_with`], with offload metadata.
    #[inline]
    pub fn push_with_offload(&mut self, fill: impl FnOnce(&mut [u8]) -> (usize, Offload)) -> bool {
        if self.count >= self.lens.len() {
            return false;
        }
        let start = self.count * self.frame_size;
        let slot = &mut self.buf[start..start + self.frame_size];
        let (n, off) = fill(slot);
        let n = n.min(self.frame_size);
        // frame_size <= u16::MAX, so n fits.
        self.lens[self.count] = n as u16;
        self.offloads[self.count] = off;
        self.count += 1;
        true
    }

    /// Appends a frame written by `fill` into the next slot if it returns its length; the slot
    /// is left free when it returns `None` (or the batch is full). Returns true if a frame was
    /// added.
    #[inline]
    pub fn try_push_with(&mut self, fill: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        if self.count >= self.lens.len() {
            return false;
        }
        let start = self.count * self.frame_size;
        let slot = &mut self.buf[start..start + self.frame_size];
        let Some(n) = fill(slot) else {
            return false;
        };
        self.lens[self.count] = n.min(self.frame_size) as u16;
        self.offloads[self.count] = Offload::NONE;
        self.count += 1;
        true
    }

    /// Keeps only the frames `keep` accepts, in order; returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) -> usize {
        let mut kept = 0;
        for i in 0..self.count {
            let start = i * self.frame_size;
            let len = usize::from(self.lens[i]);
            if !keep(&self.buf[start..start + len]) {
                continue;
            }
            if kept != i {
                let to = kept * self.frame_size;
                self.buf.copy_within(start..start + len, to);
                self.lens[kept] = self.lens[i];
                self.offloads[kept] = self.offloads[i];
            }
            kept += 1;
        }
        let removed = self.count - kept;
        self.count = kept;
        removed
    }

    /// Keeps only the first `n` frames.
    pub fn truncate(&mut self, n: usize) {
        self.count = self.count.min(n);
    }

    /// True when no more frames fit.
    pub fn is_full(&self) -> bool {
        self.count >= self.lens.len()
    }
}

/// A source and sink of Ethernet frames.
pub trait PortBackend: Send {
    /// The port's name (the interface name for real ports).
    fn name(&self) -> &str;

    /// Clears `batch` and fills it with up to `batch.capacity()` received frames; returns how
    /// many. Never blocks.
    ///
    /// # Errors
    /// [`PortError`] when the port can no longer receive.
    fn recv_batch(&mut self, batch: &mut RxBatch) -> Result<usize, PortError>;

    /// Queues `frame` for transmission, with its offload metadata (ports that cannot carry
    /// offloads are only ever given frames with [`Offload::NONE`]; see
    /// [`PortBackend::carries_offloads`]). Returns false if the transmit queue is full and the
    /// frame was dropped.
    ///
    /// # Errors
    /// [`PortError`] when the port can no longer transmit.
    fn send(&mut self, frame: &[u8], offload: &Offload) -> Result<bool, PortError>;

    /// True if the port transmits offload metadata (checksums and GSO left to the kernel).
    fn carries_offloads(&self) -> bool {
        false
    }

    /// Descriptors that become readable when frames arrive, for ports backed by them; lets an
    /// idle datapath sleep in `poll(2)` instead of spinning.
    fn readable_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }

    /// The backend's own counters (name, value), for the stats and metrics endpoints.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Commits queued frames (one ring commit or syscall per batch).
    ///
    /// # Errors
    /// [`PortError`] when the port can no longer transmit.
    fn flush(&mut self) -> Result<(), PortError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_header_round_trip_and_checksum_completion() {
        let o = Offload {
            flags: 1,
            gso_type: 1,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(Offload::from_bytes(&o.to_bytes()), o);
        assert!(o.needs_csum() && o.is_gso());
        assert!(!Offload::NONE.needs_csum() && !Offload::NONE.is_gso());
        // A UDP datagram whose checksum field holds only the pseudo-header sum.
        let src = [10u8, 0, 0, 1];
        let dst = [10u8, 0, 0, 2];
        let mut udp = vec![
            0x30, 0x39, 0x00, 0x35, 0x00, 0x0c, 0, 0, b'a', b'b', b'c', b'd',
        ];
        let mut pseudo = crate::checksum::add(0, &src);
        pseudo = crate::checksum::add(pseudo, &dst);
        pseudo = crate::checksum::add(pseudo, &[0, 17, 0, 12]);
        udp[6..8].copy_from_slice(&crate::checksum::fold(pseudo).to_be_bytes());
        let partial = Offload {
            flags: Offload::F_NEEDS_CSUM,
            csum_start: 0,
            csum_offset: 6,
            ..Offload::NONE
        };
        assert!(partial.complete_checksum(&mut udp));
        let mut check = crate::checksum::add(0, &src);
        check = crate::checksum::add(check, &dst);
        check = crate::checksum::add(check, &[0, 17, 0, 12]);
        check = crate::checksum::add(check, &udp);
        assert_eq!(
            crate::checksum::fold(check),
            0xffff,
            "the completed checksum verifies"
        );
        let out_of_range = Offload {
            csum_start: 10,
            csum_offset: 6,
            ..partial
        };
        assert!(!out_of_range.complete_checksum(&mut udp));
    }

    #[test]
    fn batch_push_and_read_back() {
        let mut b = RxBatch::new(2, 16);
        assert!(b.push_with(|s| {
            s[..3].copy_from_slice(&[1, 2, 3]);
            3
        }));
        assert!(b.push_with(|_| 100), "oversized lengths are clamped");
        assert!(!b.push_with(|_| 1), "full");
        assert_eq!(b.frame(0), &[1, 2, 3]);
        assert_eq!(b.frame(1).len(), 16);
        assert_eq!(b.frame(2), &[] as &[u8]);
        b.clear();
        assert!(b.is_empty());
    }
}
