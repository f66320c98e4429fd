//! A deterministic simulation: real TCP/IP stacks (smoltcp) as nested VMs on in-memory ports,
//! switches, and an in-memory underlay that carries the switches' real VXLAN/UDP/IPv4 bytes.
//!
//! Time is simulated ([`Sim::step`] advances it by [`STEP`]), every hash seed is fixed, and every
//! run loop is bounded by a step budget, so a scenario replays identically and never hangs. The
//! simulation allocates freely (it is a harness); the switches inside it do not.

use std::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr,
};

use crate::clock::Timestamp;
use crate::mac::MacAddr;
use crate::pipeline::PortConfig;
use crate::port::memory::{self, LinkConfig, MemoryPort};
use crate::port::{Offload, PortBackend, PortId};
use crate::switch::{Switch, SwitchConfig, SwitchError};
use crate::tunnel::{LocalVtep, VXLAN_PORT};

/// Simulated time per step.
pub const STEP: std::time::Duration = std::time::Duration::from_micros(100);

/// Largest Ethernet frame a simulated host sends: fits a VXLAN tunnel over a 1500-byte underlay
/// (inner IP MTU 1450).
pub const HOST_FRAME_MTU: usize = 1464;

/// Index of a host in a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostId(pub usize);

/// Index of a switch in a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchId(pub usize);

/// A smoltcp device on one end of an in-memory link, optionally recording what it receives.
struct HostDevice {
    port: MemoryPort,
    capture: Option<Vec<Vec<u8>>>,
}

struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxToken<'a>(&'a mut MemoryPort);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        // A full ring drops the frame, as a real NIC would; TCP recovers.
        let _ = self.0.send(&buf, &Offload::NONE);
        r
    }
}

impl Device for HostDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let mut frame = None;
        self.port.recv_with(|f| frame = Some(f.to_vec()));
        let frame = frame?;
        if let Some(c) = &mut self.capture {
            c.push(frame.clone());
        }
        Some((RxToken(frame), TxToken(&mut self.port)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.port))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = HOST_FRAME_MTU;
        caps
    }
}

/// A simulated nested VM: a smoltcp interface on a port of a switch.
pub struct Host {
    name: String,
    mac: MacAddr,
    ip: Ipv4Addr,
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: HostDevice,
    /// Where the host is attached.
    pub attached: Option<(SwitchId, PortId)>,
}

impl Host {
    /// The host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's MAC.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The host's IPv4 address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Frames the host received since capture was enabled (see [`Sim::capture_host`]).
    pub fn captured(&self) -> &[Vec<u8>] {
        self.dev.capture.as_deref().unwrap_or(&[])
    }

    fn poll(&mut self, now: Timestamp) {
        let t = smol_now(now);
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
    }
}

fn smol_now(now: Timestamp) -> SmolInstant {
    SmolInstant::from_micros(i64::try_from(now.as_nanos() / 1000).unwrap_or(i64::MAX))
}

/// An L2 segment joining switches' uplinks: delivers each frame to the uplink whose MAC is the
/// destination (all others for group addresses), and can record everything it carries.
pub struct Underlay {
    ends: Vec<(SwitchId, MacAddr, MemoryPort)>,
    /// Every frame carried while capturing, in order.
    pub capture: Vec<Vec<u8>>,
    capturing: bool,
}

impl Underlay {
    fn relay(&mut self) -> usize {
        let mut moved = 0;
        for i in 0..self.ends.len() {
            loop {
                let mut frame = None;
                self.ends[i].2.recv_with(|f| frame = Some(f.to_vec()));
                let Some(frame) = frame else { break };
                moved += 1;
                let dst = MacAddr::from_slice(&frame).unwrap_or(MacAddr::BROADCAST);
                for j in 0..self.ends.len() {
                    if j != i && (dst.is_multicast() || self.ends[j].1 == dst) {
                        let _ = self.ends[j].2.send(&frame, &Offload::NONE);
                    }
                }
                if self.capturing {
                    self.capture.push(frame);
                }
            }
        }
        moved
    }

    /// Starts (or stops) recording underlay frames.
    pub fn set_capture(&mut self, on: bool) {
        self.capturing = on;
    }
}

/// Result of [`Sim::ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingResult {
    /// Echo requests sent.
    pub sent: u16,
    /// Matching echo replies received.
    pub received: u16,
}

/// Result of [`Sim::tcp_transfer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpResult {
    /// What the server read, in order.
    pub received: Vec<u8>,
    /// Whether the connection closed cleanly after all data.
    pub closed: bool,
    /// Simulation steps used.
    pub steps: usize,
}

/// Links for simulated hosts.
const HOST_LINK: LinkConfig = LinkConfig {
    ring_size: 2048,
    max_frame: 2048,
};

/// A simulated network.
pub struct Sim {
    /// Simulated time.
    pub now: Timestamp,
    /// The switches.
    pub switches: Vec<Switch>,
    /// The hosts.
    pub hosts: Vec<Host>,
    /// The underlay.
    pub underlay: Underlay,
    next_port: u16,
    /// Frames each link holds per direction, when not the defaults (2048 for hosts, 4096 for
    /// the underlay).
    ring_size: Option<usize>,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    /// An empty simulation at time zero.
    pub fn new() -> Sim {
        Sim {
            now: Timestamp::from_secs(1),
            switches: Vec::new(),
            hosts: Vec::new(),
            underlay: Underlay {
                ends: Vec::new(),
                capture: Vec::new(),
                capturing: false,
            },
            next_port: 40000,
            ring_size: None,
        }
    }

    /// An empty simulation whose links hold `frames` frames per direction: short runs with
    /// few frames in flight (fuzzing) need not set up deep rings.
    pub fn with_ring_size(frames: usize) -> Sim {
        Sim {
            ring_size: Some(frames.max(1)),
            ..Sim::new()
        }
    }

    fn host_link(&self) -> LinkConfig {
        LinkConfig {
            ring_size: self.ring_size.unwrap_or(HOST_LINK.ring_size),
            ..HOST_LINK
        }
    }

    /// Adds a switch; its tables use a seed derived from its index, so runs repeat.
    pub fn add_switch(&mut self, mut config: SwitchConfig) -> SwitchId {
        let id = self.switches.len();
        config.seed.get_or_insert(0x5eed_0000 + id as u64);
        self.switches.push(Switch::new(config));
        SwitchId(id)
    }

    /// The switch `id`.
    ///
    /// # Panics
    /// If `id` is not a switch of this simulation.
    pub fn switch(&mut self, id: SwitchId) -> &mut Switch {
        &mut self.switches[id.0]
    }

    /// The host `id`.
    ///
    /// # Panics
    /// If `id` is not a host of this simulation.
    pub fn host(&self, id: HostId) -> &Host {
        &self.hosts[id.0]
    }

    /// Joins switch `sw` to the underlay with VTEP address `addr` and uplink MAC `mac`.
    pub fn connect_underlay(&mut self, sw: SwitchId, addr: Ipv4Addr, mac: MacAddr) {
        let (switch_end, wire_end) = memory::link(
            &format!("uplink{}", sw.0),
            &format!("underlay{}", sw.0),
            LinkConfig {
                ring_size: self.ring_size.unwrap_or(4096),
                max_frame: 9216 + crate::tunnel::OUTER_LEN,
            },
        );
        self.switches[sw.0].set_uplink(
            Box::new(switch_end),
            LocalVtep {
                addr,
                mac,
                udp_port: VXLAN_PORT,
            },
        );
        self.underlay.ends.push((sw, mac, wire_end));
    }

    /// Creates a host with `mac` and `ip`/`prefix` on a new port of switch `sw`.
    ///
    /// # Errors
    /// If the switch refuses the port.
    pub fn add_host(
        &mut self,
        sw: SwitchId,
        name: &str,
        mac: MacAddr,
        ip: Ipv4Addr,
        prefix: u8,
        port: PortConfig,
    ) -> Result<HostId, SwitchError> {
        let (switch_end, host_end) = memory::link(&format!("{name}-host"), name, self.host_link());
        let pid = self.switches[sw.0].add_port(Box::new(switch_end), port)?;
        let mut dev = HostDevice {
            port: host_end,
            capture: None,
        };
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac.octets())));
        cfg.random_seed = 0x1234_5678 ^ (self.hosts.len() as u64);
        let mut iface = Interface::new(cfg, &mut dev, smol_now(self.now));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), prefix));
        });
        self.hosts.push(Host {
            name: name.to_owned(),
            mac,
            ip,
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            attached: Some((sw, pid)),
        });
        Ok(HostId(self.hosts.len() - 1))
    }

    /// Creates a port on switch `sw` and returns its far end, for injecting raw frames.
    ///
    /// # Errors
    /// If the switch refuses the port.
    pub fn add_raw_port(
        &mut self,
        sw: SwitchId,
        name: &str,
        port: PortConfig,
    ) -> Result<(PortId, MemoryPort), SwitchError> {
        let (switch_end, far_end) = memory::link(&format!("{name}-host"), name, self.host_link());
        let pid = self.switches[sw.0].add_port(Box::new(switch_end), port)?;
        Ok((pid, far_end))
    }

    /// Re-attaches host `h` to a new port of switch `sw` (a station move). With `keep_old_port`
    /// the old port stays configured (as when a VM is re-plugged elsewhere and its old port lingers),
    /// so nothing but the host's next frame can tell the switches it moved.
    ///
    /// # Errors
    /// If the switch refuses the port.
    pub fn move_host(
        &mut self,
        h: HostId,
        sw: SwitchId,
        port: PortConfig,
        keep_old_port: bool,
    ) -> Result<PortId, SwitchError> {
        let name = self.hosts[h.0].name.clone();
        let (switch_end, host_end) = memory::link(
            &format!(
                "{name}-host-{}",
                self.switches[sw.0].tables().ports().count()
            ),
            &name,
            self.host_link(),
        );
        let pid = self.switches[sw.0].add_port(Box::new(switch_end), port)?;
        let host = &mut self.hosts[h.0];
        let old = host.attached.replace((sw, pid));
        let capture = host.dev.capture.take();
        host.dev = HostDevice {
            port: host_end,
            capture,
        };
        if let (Some((osw, opid)), false) = (old, keep_old_port) {
            self.switches[osw.0].remove_port(opid)?;
        }
        Ok(pid)
    }

    /// Delivers `frame` from the underlay to switch `sw`'s uplink, as if some host on the
    /// underlay had sent it. Returns false if `sw` has no uplink here or the link is full.
    pub fn underlay_inject(&mut self, sw: SwitchId, frame: &[u8]) -> bool {
        self.underlay
            .ends
            .iter_mut()
            .find(|(s, _, _)| *s == sw)
            .is_some_and(|(_, _, end)| {
                // The wire end's transmit ring is the switch's receive ring.
                end.send(frame, &Offload::NONE).unwrap_or(false)
            })
    }

    /// Starts recording what host `h` receives.
    pub fn capture_host(&mut self, h: HostId) {
        self.hosts[h.0].dev.capture.get_or_insert_with(Vec::new);
    }

    /// One step: hosts transmit, switches forward, the underlay carries, switches deliver, and
    /// time advances by [`STEP`].
    pub fn step(&mut self) {
        let now = self.now;
        for h in &mut self.hosts {
            h.poll(now);
        }
        for s in &mut self.switches {
            s.poll(now);
        }
        if self.underlay.relay() > 0 {
            for s in &mut self.switches {
                s.poll(now);
            }
        }
        self.now = self.now.plus(STEP);
    }

    /// Runs `steps` steps.
    pub fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.step();
        }
    }

    /// Pings `to` from host `from`, `count` times, one at a time; a request not answered within
    /// `timeout_steps` counts as lost. Bounded by `count * timeout_steps` steps.
    pub fn ping(
        &mut self,
        from: HostId,
        to: Ipv4Addr,
        count: u16,
        timeout_steps: usize,
    ) -> PingResult {
        let ident = 0x4b47;
        let handle = {
            let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 1024]);
            let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 1024]);
            let mut s = icmp::Socket::new(rx, tx);
            let _ = s.bind(icmp::Endpoint::Ident(ident));
            self.hosts[from.0].sockets.add(s)
        };
        let mut result = PingResult {
            sent: 0,
            received: 0,
        };
        let payload = *b"kangaroo-ping-payload";
        for seq in 0..count {
            {
                let host = &mut self.hosts[from.0];
                let s = host.sockets.get_mut::<icmp::Socket>(handle);
                let repr = Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no: seq,
                    data: &payload,
                };
                if let Ok(buf) = s.send(repr.buffer_len(), IpAddress::Ipv4(to)) {
                    let mut pkt = Icmpv4Packet::new_unchecked(buf);
                    repr.emit(&mut pkt, &smoltcp::phy::ChecksumCapabilities::default());
                    result.sent += 1;
                }
            }
            for _ in 0..timeout_steps {
                self.step();
                if self.take_echo_reply(from, handle, ident, seq) {
                    result.received += 1;
                    break;
                }
            }
        }
        self.hosts[from.0].sockets.remove(handle);
        result
    }

    fn take_echo_reply(
        &mut self,
        from: HostId,
        handle: SocketHandle,
        ident: u16,
        seq: u16,
    ) -> bool {
        let s = self.hosts[from.0].sockets.get_mut::<icmp::Socket>(handle);
        let mut found = false;
        while s.can_recv() {
            let Ok((data, _)) = s.recv() else { break };
            let Ok(pkt) = Icmpv4Packet::new_checked(data) else {
                continue;
            };
            if let Ok(Icmpv4Repr::EchoReply {
                ident: i, seq_no, ..
            }) = Icmpv4Repr::parse(&pkt, &smoltcp::phy::ChecksumCapabilities::default())
            {
                found |= i == ident && seq_no == seq;
            }
        }
        found
    }

    /// Sends `data` over TCP from `client` to a listener on `server` port `port`, then closes.
    /// Returns what the server read. Bounded by `max_steps`.
    pub fn tcp_transfer(
        &mut self,
        client: HostId,
        server: HostId,
        port: u16,
        data: &[u8],
        max_steps: usize,
    ) -> TcpResult {
        let sock = || {
            tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 65535]),
                tcp::SocketBuffer::new(vec![0; 65535]),
            )
        };
        let mut srv = sock();
        let _ = srv.listen(port);
        let sh = self.hosts[server.0].sockets.add(srv);
        let server_ip = self.hosts[server.0].ip;
        let local_port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(40000);
        let ch = {
            let host = &mut self.hosts[client.0];
            let mut c = sock();
            let _ = c.connect(
                host.iface.context(),
                (IpAddress::Ipv4(server_ip), port),
                local_port,
            );
            host.sockets.add(c)
        };
        let mut sent = 0;
        let mut received = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; 65536];
        let mut closed = false;
        let mut steps = 0;
        while steps < max_steps {
            self.step();
            steps += 1;
            {
                let c = self.hosts[client.0].sockets.get_mut::<tcp::Socket>(ch);
                if c.can_send() && sent < data.len() {
                    sent += c.send_slice(&data[sent..]).unwrap_or(0);
                }
                if sent == data.len() && c.may_send() {
                    c.close();
                }
            }
            let s = self.hosts[server.0].sockets.get_mut::<tcp::Socket>(sh);
            while s.can_recv() {
                match s.recv_slice(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
            if received.len() == data.len() && !s.may_recv() && s.state() != tcp::State::Listen {
                s.close();
                closed = true;
                break;
            }
        }
        // Let the FIN/ACK exchange finish, then release both sockets.
        self.run(20);
        self.hosts[client.0].sockets.remove(ch);
        self.hosts[server.0].sockets.remove(sh);
        TcpResult {
            received,
            closed,
            steps,
        }
    }
}
