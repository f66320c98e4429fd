//! The AF_PACKET generator of `kangaroo-bench flood --generator packet`: the frame repeated 64
//! times per `sendmmsg` on a packet socket. Works wherever raw sockets do; every frame goes
//! through the socket layer and the interface's queue, so it is the slowest of the three.

use std::time::Instant;

use anyhow::Context;
use kangaroo_switch::port::packet::PacketPort;

/// Frames per `sendmmsg`.
const BATCH: usize = 64;

/// An open AF_PACKET generator.
pub struct PacketGen {
    port: PacketPort,
    frame: Vec<u8>,
}

impl PacketGen {
    /// Opens a packet socket on `interface`.
    ///
    /// # Errors
    /// The interface does not exist or raw sockets are not allowed.
    pub fn open(interface: &str, frame: &[u8]) -> anyhow::Result<PacketGen> {
        let port = PacketPort::open_tx_only(interface)
            .with_context(|| format!("opening a packet socket on {interface}"))?;
        Ok(PacketGen {
            port,
            frame: frame.to_vec(),
        })
    }

    /// Sends until `deadline`; returns (frames the kernel took, frames it refused because its
    /// queue was full).
    ///
    /// # Errors
    /// A send failed with an error other than a full queue.
    pub fn run_until(&mut self, deadline: Instant) -> anyhow::Result<(u64, u64)> {
        let (mut sent, mut refused) = (0u64, 0u64);
        while Instant::now() < deadline {
            // 64 system calls between clock reads.
            for _ in 0..64 {
                let n = self
                    .port
                    .send_repeated(&self.frame, BATCH)
                    .context("sending")?;
                sent += n as u64;
                refused += (BATCH - n) as u64;
            }
        }
        Ok((sent, refused))
    }
}
