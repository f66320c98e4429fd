//! In-memory ports: a link is two ends joined by bounded rings, one per direction.
//!
//! Either end is a [`PortBackend`]: give one to the switch and the other to a simulated host
//! (see [`crate::sim`]) or to another switch's uplink. Frame buffers come from a pool filled at
//! creation, so steady-state traffic allocates nothing. A full ring drops the frame and counts it,
//! like a NIC's full transmit queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::{Offload, PortBackend, PortError, RxBatch};

/// Sizing of an in-memory link.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// Frames each direction can hold.
    pub ring_size: usize,
    /// Largest frame carried.
    pub max_frame: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            ring_size: 1024,
            max_frame: 2048,
        }
    }
}

/// One direction of a link.
struct Ring {
    frames: ArrayQueue<Vec<u8>>,
    pool: ArrayQueue<Vec<u8>>,
    dropped: AtomicU64,
    max_frame: usize,
}

impl Ring {
    fn new(cfg: &LinkConfig) -> Ring {
        let pool = ArrayQueue::new(cfg.ring_size.max(1));
        for _ in 0..cfg.ring_size.max(1) {
            // The pool was sized for exactly this many buffers. Each grows to the largest frame
            // it has carried and keeps that: a deep ring of large frames costs nothing unused.
            let _ = pool.push(Vec::new());
        }
        Ring {
            frames: ArrayQueue::new(cfg.ring_size.max(1)),
            pool,
            dropped: AtomicU64::new(0),
            max_frame: cfg.max_frame,
        }
    }

    fn push(&self, frame: &[u8]) -> bool {
        if frame.len() > self.max_frame {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let Some(mut buf) = self.pool.pop() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        buf.clear();
        buf.extend_from_slice(frame);
        match self.frames.push(buf) {
            Ok(()) => true,
            Err(buf) => {
                let _ = self.pool.push(buf);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn pop_into(&self, f: impl FnOnce(&[u8])) -> bool {
        let Some(buf) = self.frames.pop() else {
            return false;
        };
        f(&buf);
        // Every buffer came from the pool, so there is room to return it.
        let _ = self.pool.push(buf);
        true
    }
}

/// One end of an in-memory link.
pub struct MemoryPort {
    name: String,
    tx: Arc<Ring>,
    rx: Arc<Ring>,
}

/// A link: two connected ends. What one end sends, the other receives.
pub fn link(a: &str, b: &str, cfg: LinkConfig) -> (MemoryPort, MemoryPort) {
    let ab = Arc::new(Ring::new(&cfg));
    let ba = Arc::new(Ring::new(&cfg));
    (
        MemoryPort {
            name: a.to_owned(),
            tx: ab.clone(),
            rx: ba.clone(),
        },
        MemoryPort {
            name: b.to_owned(),
            tx: ba,
            rx: ab,
        },
    )
}

impl MemoryPort {
    /// Receives one frame, handing it to `f`; false if none is waiting.
    pub fn recv_with(&mut self, f: impl FnOnce(&[u8])) -> bool {
        self.rx.pop_into(f)
    }

    /// Frames this end sent that were dropped because the ring was full or the frame too large.
    pub fn tx_dropped(&self) -> u64 {
        self.tx.dropped.load(Ordering::Relaxed)
    }

    /// Frames waiting to be received by this end.
    pub fn rx_pending(&self) -> usize {
        self.rx.frames.len()
    }
}

impl PortBackend for MemoryPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn recv_batch(&mut self, batch: &mut RxBatch) -> Result<usize, PortError> {
        batch.clear();
        while !batch.is_full() {
            let rx = &self.rx;
            let got = rx.pop_into(|f| {
                batch.push_with(|slot| {
                    let len = f.len().min(slot.len());
                    slot[..len].copy_from_slice(&f[..len]);
                    len
                });
            });
            if !got {
                break;
            }
        }
        Ok(batch.len())
    }

    fn send(&mut self, frame: &[u8], _offload: &Offload) -> Result<bool, PortError> {
        Ok(self.tx.push(frame))
    }

    fn flush(&mut self) -> Result<(), PortError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_both_directions_in_order() {
        let (mut a, mut b) = link("a", "b", LinkConfig::default());
        assert!(a.send(&[1, 2, 3], &Offload::NONE).unwrap());
        assert!(a.send(&[4], &Offload::NONE).unwrap());
        assert!(b.send(&[9], &Offload::NONE).unwrap());
        let mut batch = RxBatch::new(8, 2048);
        assert_eq!(b.recv_batch(&mut batch).unwrap(), 2);
        assert_eq!(batch.frame(0), &[1, 2, 3]);
        assert_eq!(batch.frame(1), &[4]);
        assert_eq!(a.recv_batch(&mut batch).unwrap(), 1);
        assert_eq!(batch.frame(0), &[9]);
        assert_eq!(a.recv_batch(&mut batch).unwrap(), 0);
    }

    #[test]
    fn full_ring_drops_and_counts() {
        let (mut a, mut b) = link(
            "a",
            "b",
            LinkConfig {
                ring_size: 2,
                max_frame: 64,
            },
        );
        assert!(a.send(&[1], &Offload::NONE).unwrap());
        assert!(a.send(&[2], &Offload::NONE).unwrap());
        assert!(!a.send(&[3], &Offload::NONE).unwrap());
        assert!(!a.send(&[0; 65], &Offload::NONE).unwrap(), "too large");
        assert_eq!(a.tx_dropped(), 2);
        let mut batch = RxBatch::new(1, 64);
        assert_eq!(
            b.recv_batch(&mut batch).unwrap(),
            1,
            "batch size bounds a receive"
        );
        assert_eq!(b.rx_pending(), 1);
        assert!(
            a.send(&[4], &Offload::NONE).unwrap(),
            "buffers return to the pool"
        );
    }
}
