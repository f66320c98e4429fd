//! Port backends: how frames enter and leave the switch.
//!
//! Every backend (in-memory here; AF_XDP and AF_PACKET on real interfaces) implements
//! [`PortBackend`]: receive a batch into an [`RxBatch`] allocated once, queue frames for
//! transmission, and commit the queue once per batch with [`PortBackend::flush`].

pub mod memory;

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

/// Frames received in one batch, in buffers allocated once.
pub struct RxBatch {
    buf: Box<[u8]>,
    lens: Box<[u16]>,
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

    /// Appends a frame by letting `fill` write into the next slot and return the length it wrote.
    /// Returns false (and appends nothing) when the batch is full. A length beyond the slot is
    /// clamped to it.
    #[inline]
    pub fn push_with(&mut self, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if self.count >= self.lens.len() {
            return false;
        }
        let start = self.count * self.frame_size;
        let slot = &mut self.buf[start..start + self.frame_size];
        let n = fill(slot).min(self.frame_size);
        // frame_size <= u16::MAX, so n fits.
        self.lens[self.count] = n as u16;
        self.count += 1;
        true
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

    /// Queues `frame` for transmission. Returns false if the transmit queue is full and the frame
    /// was dropped.
    ///
    /// # Errors
    /// [`PortError`] when the port can no longer transmit.
    fn send(&mut self, frame: &[u8]) -> Result<bool, PortError>;

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
