//! The uplink with secure tunnels: wraps any mode's uplink so that VXLAN toward a secure peer is
//! encrypted ([`crate::secure`]) and only decrypted VXLAN is taken from one.
//!
//! - Sending: a VXLAN packet whose outer destination is a secure peer goes through that peer's
//!   tunnel on the secure socket; every other packet goes to the wrapped uplink unchanged.
//! - Receiving: frames from the wrapped uplink that are plain VXLAN from a secure peer's address
//!   are dropped and counted (`cleartext_dropped`); then datagrams from the secure socket are
//!   decrypted in place into the batch, behind an Ethernet header addressed to this host, so the
//!   switch's underlay checks run on them as on any VXLAN packet.
//! - Sending: datagrams to one peer in a row leave together in one segmented send (UDP GSO)
//!   when the worker flushes its batch.
//! - The tunnels' timers run from here, on whichever worker polls.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Offload, PortBackend, PortError, RxBatch};
use crate::mac::MacAddr;
use crate::secure::{Received, Secure, SecurePeer, TxBatch, BUFFER};
use crate::tunnel::outer;

/// Datagrams taken from the secure socket per poll, at most.
const RECV_BUDGET: usize = 64;

/// An uplink whose secure peers are reached through their tunnels.
pub struct SecureUplink {
    inner: Box<dyn PortBackend>,
    secure: Arc<Secure>,
    local_mac: MacAddr,
    vxlan_port: u16,
    peers: HashMap<Ipv4Addr, Arc<SecurePeer>>,
    generation: u64,
    out: Vec<u8>,
    datagram: Vec<u8>,
    scratch: Vec<u8>,
    /// Encrypted datagrams to one peer, sent together at the end of the worker's batch.
    batch: TxBatch,
}

impl SecureUplink {
    /// Wraps `inner`, the uplink of the host whose underlay MAC is `local_mac` and whose VXLAN
    /// port is `vxlan_port`.
    pub fn new(
        inner: Box<dyn PortBackend>,
        secure: Arc<Secure>,
        local_mac: MacAddr,
        vxlan_port: u16,
    ) -> SecureUplink {
        let generation = secure.generation();
        let peers = secure.snapshot();
        SecureUplink {
            inner,
            secure,
            local_mac,
            vxlan_port,
            peers,
            generation,
            out: vec![0; BUFFER],
            datagram: vec![0; BUFFER],
            scratch: vec![0; BUFFER],
            batch: TxBatch::default(),
        }
    }

    #[inline]
    fn refresh(&mut self) {
        let g = self.secure.generation();
        if g != self.generation {
            self.generation = g;
            self.peers = self.secure.snapshot();
        }
    }
}

/// The IPv4 source of `frame` if it is a UDP datagram to `port` (plain VXLAN).
#[inline]
fn vxlan_source(frame: &[u8], port: u16) -> Option<Ipv4Addr> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(outer::ETH_LEN..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 17 || ihl < 20 {
        return None;
    }
    let dport = ip.get(ihl + 2..ihl + 4)?;
    if u16::from_be_bytes([dport[0], dport[1]]) != port {
        return None;
    }
    let s = ip.get(12..16)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

impl PortBackend for SecureUplink {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn recv_batch(&mut self, batch: &mut RxBatch) -> Result<usize, PortError> {
        self.refresh();
        let inner = self.inner.recv_batch(batch);
        if !self.peers.is_empty() {
            let (peers, port) = (&self.peers, self.vxlan_port);
            let dropped =
                batch.retain(|f| vxlan_source(f, port).is_none_or(|s| !peers.contains_key(&s)));
            if dropped > 0 {
                self.secure
                    .counters()
                    .cleartext_dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
            }
        }
        let mac = self.local_mac.octets();
        let (secure, datagram, scratch) = (&self.secure, &mut self.datagram, &mut self.scratch);
        for _ in 0..RECV_BUDGET {
            if batch.is_full() {
                break;
            }
            let mut empty = false;
            batch.try_push_with(|slot| {
                let (eth, rest) = slot.split_at_mut(outer::ETH_LEN.min(slot.len()));
                match secure.receive_one(datagram, rest, scratch) {
                    None => {
                        empty = true;
                        None
                    }
                    Some(Received::Nothing) => None,
                    Some(Received::Packet(n)) if eth.len() == outer::ETH_LEN => {
                        eth[0..6].copy_from_slice(&mac);
                        eth[6..12].fill(0);
                        eth[12..14].copy_from_slice(&[0x08, 0x00]);
                        Some(outer::ETH_LEN + n)
                    }
                    Some(Received::Packet(_)) => None,
                }
            });
            if empty {
                break;
            }
        }
        secure.tick(scratch);
        match inner {
            Err(e) if batch.is_empty() => Err(e),
            _ => Ok(batch.len()),
        }
    }

    fn send(&mut self, frame: &[u8], offload: &Offload) -> Result<bool, PortError> {
        if !self.peers.is_empty() {
            if let Some(d) = frame.get(outer::IPV4 + 16..outer::IPV4 + 20) {
                let dst = Ipv4Addr::new(d[0], d[1], d[2], d[3]);
                if let Some(p) = self.peers.get(&dst) {
                    let ip = &frame[outer::IPV4..];
                    return Ok(self.secure.encrypt_and_queue(
                        p,
                        ip,
                        &mut self.out,
                        &mut self.batch,
                    ));
                }
            }
        }
        self.inner.send(frame, offload)
    }

    fn carries_offloads(&self) -> bool {
        self.inner.carries_offloads()
    }

    fn readable_fds(&self) -> Vec<std::os::fd::RawFd> {
        let mut fds = self.inner.readable_fds();
        fds.push(self.secure.fd());
        fds
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.inner.counters()
    }

    fn flush(&mut self) -> Result<(), PortError> {
        self.secure.flush(&mut self.batch);
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_source_reads_plain_vxlan_only() {
        let mut f = vec![0u8; 64];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 2]);
        f[36..38].copy_from_slice(&4789u16.to_be_bytes());
        assert_eq!(vxlan_source(&f, 4789), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(vxlan_source(&f, 4790), None);
        f[23] = 6;
        assert_eq!(vxlan_source(&f, 4789), None);
        assert_eq!(vxlan_source(&f[..20], 4789), None);
        assert_eq!(vxlan_source(&[], 4789), None);
    }
}
