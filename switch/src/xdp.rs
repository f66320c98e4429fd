//! The switch's eBPF programs on port interfaces and the uplink: loading, attaching, steering
//! table, the kernel's mirror of the tables, counters.
//!
//! Two hooks, one object and one set of maps: [`Hook::Xdp`] attaches the XDP programs (modes
//! "xdp" and "afxdp"); [`Hook::Tc`] attaches the tc programs at clsact ingress (mode "tc"), which
//! keep the guests' segmentation and checksum offloads. In mode "tc" a port's slow path is its
//! punt device ([`crate::port::tc`]), entered in the port table as `punt`.
//!
//! One [`XdpSteering`] loads `kangaroo-xdp`'s object once and attaches its port program to every
//! port interface, in driver (native) mode where the driver supports it and in generic (skb) mode
//! otherwise, with the reason logged. A port's AF_XDP sockets are entered in the XSKMAP at
//! `slot * MAX_QUEUES + queue`, and only then is the port marked as steered in the port table, so
//! no frame is redirected to a socket that does not exist yet. Releasing a port (or dropping the
//! whole [`XdpSteering`]) detaches the program: nothing stays attached after the switch exits.

use std::collections::HashMap;
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, XskMap};
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::xdp::XdpLinkId;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use kangaroo_xdp as abi;

/// XDP set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Loading the object or the program into the kernel failed.
    #[error("eBPF program: {0}")]
    Load(String),
    /// Attaching to an interface failed in every mode.
    #[error("attaching XDP to {interface}: {reason}")]
    Attach {
        /// The interface.
        interface: String,
        /// Why (driver mode, then skb mode).
        reason: String,
    },
    /// A map update failed.
    #[error("updating the XDP map {map}: {reason}")]
    Map {
        /// The map.
        map: &'static str,
        /// Why.
        reason: String,
    },
    /// No free port slot.
    #[error("all {0} XDP port slots are in use")]
    NoSlot(u32),
    /// The interface's attributes could not be read.
    #[error("interface {interface}: {reason}")]
    Interface {
        /// The interface.
        interface: String,
        /// Why.
        reason: String,
    },
}

/// How the program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver, before an skb is allocated.
    Driver,
    /// Generic XDP, after the skb is built (every driver supports it).
    Skb,
    /// The tc program at clsact ingress (mode "tc").
    Tc,
}

/// Which hook the programs run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// XDP (modes "xdp" and "afxdp").
    Xdp,
    /// tc, clsact ingress (mode "tc").
    Tc,
}

/// A port attached to the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// The interface index.
    pub ifindex: u32,
    /// The port's slot in the XSKMAP.
    pub slot: u32,
    /// How the program is attached.
    pub mode: AttachMode,
}

/// Which of the object's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// Steers a port's frames to its sockets.
    Port,
    /// Steers VXLAN from peers to the uplink's sockets, passes the rest.
    Uplink,
}

impl Program {
    fn name(self, hook: Hook) -> &'static str {
        match (self, hook) {
            (Program::Port, Hook::Xdp) => abi::PORT_PROGRAM,
            (Program::Uplink, Hook::Xdp) => abi::UPLINK_PROGRAM,
            (Program::Port, Hook::Tc) => abi::TC_PORT_PROGRAM,
            (Program::Uplink, Hook::Tc) => abi::TC_UPLINK_PROGRAM,
        }
    }
}

enum Link {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

struct Attached {
    program: Program,
    link: Link,
    /// The interface is one end of a veth pair (mode "tc" forwards into the other end).
    veth: bool,
    slot: u32,
    mode: AttachMode,
    queues: Vec<u32>,
    /// Ports (one per datapath worker) using this attachment.
    users: u32,
    /// Mode "tc": the ifindex of the port's punt device.
    punt: u32,
}

/// The loaded XDP program and its maps.
pub struct XdpSteering {
    ebpf: Ebpf,
    hook: Hook,
    attached: HashMap<u32, Attached>,
    names: HashMap<String, u32>,
    free_slots: Vec<u32>,
    force_skb: bool,
    fast: bool,
}

/// An interface attribute from sysfs.
///
/// # Errors
/// [`XdpError::Interface`] if the interface does not exist or the value does not parse.
pub fn sysfs_u32(interface: &str, attr: &str) -> Result<u32, XdpError> {
    let path = Path::new("/sys/class/net").join(interface).join(attr);
    let err = |reason: String| XdpError::Interface {
        interface: interface.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| err(format!("reading {}: {e}", path.display())))?;
    text.trim()
        .parse()
        .map_err(|e| err(format!("{}: {e}", path.display())))
}

/// The receive queues of `interface` (`rx-N` under its sysfs `queues`), at least queue 0.
pub fn rx_queues(interface: &str) -> Vec<u32> {
    let dir = Path::new("/sys/class/net").join(interface).join("queues");
    let mut qs: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("rx-")?.parse().ok())
        .filter(|q| *q < abi::MAX_QUEUES)
        .collect();
    qs.sort_unstable();
    if qs.is_empty() {
        qs.push(0);
    }
    qs
}

/// The MAC of the next hop toward `addr` out of `interface`, from the kernel's routing table
/// (`/proc/net/route`: the gateway of the longest matching route, or `addr` itself when it is on
/// a connected subnet) and neighbour table (`/proc/net/arp`, complete entries only).
pub fn next_hop_mac(interface: &str, addr: std::net::Ipv4Addr) -> Option<crate::mac::MacAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let target = u32::from(addr);
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::swap_bytes);
    let mut best: Option<(u32, std::net::Ipv4Addr)> = None;
    for line in routes.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] != interface {
            continue;
        }
        let (Some(dst), Some(gw), Some(mask)) = (hex(f[1]), hex(f[2]), hex(f[7])) else {
            continue;
        };
        if target & mask == dst & mask && best.is_none_or(|(m, _)| mask.count_ones() > m) {
            let hop = if gw == 0 {
                addr
            } else {
                std::net::Ipv4Addr::from(gw)
            };
            best = Some((mask.count_ones(), hop));
        }
    }
    let hop = best?.1;
    let arp = std::fs::read_to_string("/proc/net/arp").ok()?;
    arp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let complete = f.get(2).is_some_and(|fl| {
            u32::from_str_radix(fl.trim_start_matches("0x"), 16).is_ok_and(|v| v & 0x2 != 0)
        });
        (f.len() >= 6 && f[0] == hop.to_string() && f[5] == interface && complete)
            .then(|| f[3].parse().ok())
            .flatten()
    })
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> XdpError {
    move |e| XdpError::Map {
        map,
        reason: e.to_string(),
    }
}

impl XdpSteering {
    /// Loads the program into the kernel (not yet attached anywhere). With `force_skb`, ports
    /// are attached in generic mode even where the driver supports native XDP. The kernel's FDB
    /// mirror is sized to hold `fdb_entries` (the user-space table's capacity, so every entry
    /// the switch knows can take the fast path); `None` keeps the object's default,
    /// [`abi::FDB_ENTRIES`].
    ///
    /// # Errors
    /// [`XdpError::Load`] if the kernel refuses the object (no BPF support, missing privileges,
    /// or not enough memory for the maps).
    pub fn load(
        force_skb: bool,
        fast: bool,
        fdb_entries: Option<u32>,
    ) -> Result<XdpSteering, XdpError> {
        XdpSteering::load_hook(Hook::Xdp, force_skb, fast, fdb_entries)
    }

    /// As [`XdpSteering::load`], for the programs of `hook` (`force_skb` applies to XDP only).
    ///
    /// # Errors
    /// As [`XdpSteering::load`].
    pub fn load_hook(
        hook: Hook,
        force_skb: bool,
        fast: bool,
        fdb_entries: Option<u32>,
    ) -> Result<XdpSteering, XdpError> {
        let mut loader = EbpfLoader::new();
        if let Some(n) = fdb_entries {
            loader.map_max_entries(abi::FDB_MAP, n.max(1));
        }
        let mut ebpf = loader
            .load(abi::OBJECT)
            .map_err(|e| XdpError::Load(e.to_string()))?;
        let load_err = |name: &str| {
            let name = name.to_owned();
            move |e: aya::programs::ProgramError| XdpError::Load(format!("{name}: {e:#}"))
        };
        for which in [Program::Port, Program::Uplink] {
            let name = which.name(hook);
            let prog = ebpf
                .program_mut(name)
                .ok_or_else(|| XdpError::Load(format!("the object has no program {name}")))?;
            match hook {
                Hook::Xdp => {
                    let p: &mut Xdp = prog.try_into().map_err(load_err(name))?;
                    p.load().map_err(load_err(name))?;
                }
                Hook::Tc => {
                    let p: &mut SchedClassifier = prog.try_into().map_err(load_err(name))?;
                    p.load().map_err(load_err(name))?;
                }
            }
        }
        Ok(XdpSteering {
            ebpf,
            hook,
            attached: HashMap::new(),
            names: HashMap::new(),
            free_slots: (0..abi::MAX_PORTS).rev().collect(),
            force_skb,
            fast,
        })
    }

    fn program(&mut self, which: Program) -> Result<&mut Xdp, XdpError> {
        let name = which.name(Hook::Xdp);
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| XdpError::Load(format!("no program {name}")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpError::Load(e.to_string()))
    }

    fn classifier(&mut self, which: Program) -> Result<&mut SchedClassifier, XdpError> {
        let name = which.name(Hook::Tc);
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| XdpError::Load(format!("no program {name}")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpError::Load(e.to_string()))
    }

    /// The hook the programs run at.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Attaches the program to `interface` (driver mode first, then skb mode) and reserves a
    /// slot; if it is attached already (another worker's port on the same interface), shares
    /// that attachment. Frames keep going to the kernel until [`XdpSteering::steer`] is called.
    ///
    /// # Errors
    /// [`XdpError`] if the interface is missing, no slot is free, or attaching fails.
    pub fn attach(&mut self, interface: &str, which: Program) -> Result<Attachment, XdpError> {
        let ifindex = sysfs_u32(interface, "ifindex")?;
        if let Some(a) = self.attached.get_mut(&ifindex) {
            a.users += 1;
            return Ok(Attachment {
                ifindex,
                slot: a.slot,
                mode: a.mode,
            });
        }
        let slot = self
            .free_slots
            .pop()
            .ok_or(XdpError::NoSlot(abi::MAX_PORTS))?;
        let force_skb = self.force_skb;
        let hook = self.hook;
        let attempt = (|| {
            if hook == Hook::Tc {
                let prog = self.classifier(which)?;
                return prog
                    .attach(interface, TcAttachType::Ingress)
                    .map(|l| (Link::Tc(l), AttachMode::Tc))
                    .map_err(|e| XdpError::Attach {
                        interface: interface.to_owned(),
                        reason: format!("clsact ingress: {e:#}"),
                    });
            }
            let prog = self.program(which)?;
            let driver_err = if force_skb {
                "skb mode was asked for".to_owned()
            } else {
                match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                    Ok(link) => return Ok((Link::Xdp(link), AttachMode::Driver)),
                    Err(e) => format!("{e:#}"),
                }
            };
            match prog.attach_to_if_index(ifindex, XdpMode::Skb) {
                Ok(link) => {
                    if !force_skb {
                        tracing::warn!(
                            interface,
                            reason = %driver_err,
                            "native XDP unavailable; attached in skb (generic) mode"
                        );
                    }
                    Ok((Link::Xdp(link), AttachMode::Skb))
                }
                Err(e) => Err(XdpError::Attach {
                    interface: interface.to_owned(),
                    reason: format!("driver mode: {driver_err}; skb mode: {e:#}"),
                }),
            }
        })();
        let (link, mode) = match attempt {
            Ok(v) => v,
            Err(e) => {
                self.free_slots.push(slot);
                return Err(e);
            }
        };
        self.attached.insert(
            ifindex,
            Attached {
                program: which,
                link,
                veth: XdpSteering::is_veth(interface),
                slot,
                mode,
                queues: Vec::new(),
                users: 1,
                punt: 0,
            },
        );
        self.names.insert(interface.to_owned(), ifindex);
        // A redirect target of the fast path.
        if let Err(e) = self.devs().and_then(|mut d| {
            d.insert(ifindex, ifindex, None, 0)
                .map_err(|e| XdpError::Map {
                    map: abi::DEVS_MAP,
                    reason: e.to_string(),
                })
        }) {
            tracing::warn!(interface, error = %e, "not a fast-path redirect target");
        }
        tracing::info!(interface, ifindex, slot, ?mode, "eBPF program attached");
        Ok(Attachment {
            ifindex,
            slot,
            mode,
        })
    }

    fn xsks(&mut self) -> Result<XskMap<&mut MapData>, XdpError> {
        let map = self
            .ebpf
            .map_mut(abi::XSKS_MAP)
            .ok_or_else(|| XdpError::Load(format!("no map {}", abi::XSKS_MAP)))?;
        XskMap::try_from(map).map_err(map_err(abi::XSKS_MAP))
    }

    fn ports(&mut self) -> Result<BpfHashMap<&mut MapData, u32, [u8; 40]>, XdpError> {
        let map = self
            .ebpf
            .map_mut(abi::PORTS_MAP)
            .ok_or_else(|| XdpError::Load(format!("no map {}", abi::PORTS_MAP)))?;
        BpfHashMap::try_from(map).map_err(map_err(abi::PORTS_MAP))
    }

    /// Enters the AF_XDP socket `fd` for receive queue `queue` of an attached port.
    ///
    /// # Errors
    /// [`XdpError::Map`] if the port is not attached or the kernel refuses the socket.
    pub fn register_socket(
        &mut self,
        at: &Attachment,
        queue: u32,
        fd: std::os::fd::RawFd,
    ) -> Result<(), XdpError> {
        if queue >= abi::MAX_QUEUES {
            return Err(XdpError::Map {
                map: abi::XSKS_MAP,
                reason: format!("queue {queue} is beyond the {} supported", abi::MAX_QUEUES),
            });
        }
        let index = at.slot * abi::MAX_QUEUES + queue;
        self.xsks()?
            .set(index, fd, 0)
            .map_err(map_err(abi::XSKS_MAP))?;
        if let Some(a) = self.attached.get_mut(&at.ifindex) {
            a.queues.push(queue);
        }
        Ok(())
    }

    /// Starts steering the port's frames to its sockets.
    ///
    /// # Errors
    /// [`XdpError::Map`] if the port table update fails.
    pub fn steer(&mut self, at: &Attachment) -> Result<(), XdpError> {
        let entry = abi::Port {
            slot: at.slot,
            flags: abi::PORT_F_STEER,
            punt: self.punt_of(at.ifindex),
            ..Default::default()
        };
        self.ports()?
            .insert(at.ifindex, entry.to_ne_bytes(), 0)
            .map_err(map_err(abi::PORTS_MAP))
    }

    /// Describes the port on `interface` to the fast path: its network and port security. In
    /// mode "xdp" the port turns fast unless its security rules exceed what the program checks
    /// (more than [`kangaroo_xdp::MAX_IPS`] addresses: such a port stays on the AF_XDP path).
    ///
    /// # Errors
    /// [`XdpError`] if the interface is not attached or the update fails.
    pub fn configure_port(
        &mut self,
        interface: &str,
        cfg: &crate::pipeline::PortConfig,
    ) -> Result<(), XdpError> {
        let ifindex = *self
            .names
            .get(interface)
            .ok_or_else(|| XdpError::Interface {
                interface: interface.to_owned(),
                reason: "not attached".into(),
            })?;
        let slot =
            self.attached
                .get(&ifindex)
                .map(|a| a.slot)
                .ok_or_else(|| XdpError::Interface {
                    interface: interface.to_owned(),
                    reason: "not attached".into(),
                })?;
        let mut entry = abi::Port {
            slot,
            flags: abi::PORT_F_STEER,
            vni: cfg.vni.get(),
            punt: self.punt_of(ifindex),
            ..Default::default()
        };
        if let Some(m) = cfg.mac {
            entry.flags |= abi::PORT_F_MAC;
            entry.mac = m.octets();
        }
        if !cfg.ips.is_empty() {
            entry.flags |= abi::PORT_F_IPS;
            for (slot, ip) in entry.ips.iter_mut().zip(&cfg.ips) {
                *slot = u32::from_ne_bytes(ip.octets());
            }
            entry.n_ips = cfg.ips.len().min(abi::MAX_IPS) as u8;
        }
        if self.fast && cfg.ips.len() <= abi::MAX_IPS {
            entry.flags |= abi::PORT_F_FAST;
            if self.hook == Hook::Xdp && XdpSteering::is_veth(interface) {
                tracing::info!(
                    interface,
                    "veth port: the VM's end must have an XDP program or GRO enabled to receive \
                     fast-path frames (see docs/datapath.md)"
                );
            }
        }
        self.ports()?
            .insert(ifindex, entry.to_ne_bytes(), 0)
            .map_err(map_err(abi::PORTS_MAP))
    }

    /// Mode "tc": records the punt device of the port on `ifindex` (its slow path). Takes effect
    /// at the next [`XdpSteering::steer`] or [`XdpSteering::configure_port`].
    pub fn set_punt(&mut self, ifindex: u32, punt: u32) {
        if let Some(a) = self.attached.get_mut(&ifindex) {
            a.punt = punt;
        }
    }

    fn punt_of(&self, ifindex: u32) -> u32 {
        self.attached.get(&ifindex).map_or(0, |a| a.punt)
    }

    /// True if the attached interface `ifindex` is one end of a veth pair.
    pub fn is_attached_veth(&self, ifindex: u32) -> bool {
        self.attached.get(&ifindex).is_some_and(|a| a.veth)
    }

    /// Writes the port-table entry for `ifindex` (normally done by [`XdpSteering::configure_port`]
    /// for attached ports; exposed for running the programs on synthetic frames).
    ///
    /// # Errors
    /// [`XdpError::Map`] if the update fails.
    pub fn set_port_entry(&mut self, ifindex: u32, entry: &abi::Port) -> Result<(), XdpError> {
        self.ports()?
            .insert(ifindex, entry.to_ne_bytes(), 0)
            .map_err(map_err(abi::PORTS_MAP))
    }

    /// Makes `ifindex` a redirect target of the fast path.
    ///
    /// # Errors
    /// [`XdpError::Map`] if the update fails (no such interface in this network namespace).
    pub fn add_redirect_target(&mut self, ifindex: u32) -> Result<(), XdpError> {
        self.devs()?
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| XdpError::Map {
                map: abi::DEVS_MAP,
                reason: e.to_string(),
            })
    }

    /// Runs `which` (of the loaded hook) once on `frame` as if it arrived on `ifindex`, queue 0
    /// (`BPF_PROG_TEST_RUN`), and returns the action and the frame as the program left it.
    ///
    /// # Errors
    /// [`XdpError::Load`] if the kernel refuses the run.
    pub fn test_run(
        &mut self,
        which: Program,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<(u32, Vec<u8>), XdpError> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; frame.len() + 256];
        let r = match self.hook {
            Hook::Xdp => {
                // struct xdp_md: data_end's slot carries the length, then ingress_ifindex.
                let mut ctx = [0u8; 24];
                ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                self.program(which)?.test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..TestRunOptions::new()
                })
            }
            Hook::Tc => {
                // struct __sk_buff up to ifindex: ingress_ifindex at 36, ifindex at 40 (the
                // fields before them must be zero in a test run).
                let mut ctx = [0u8; 44];
                ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
                ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
                self.classifier(which)?.test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..TestRunOptions::new()
                })
            }
        }
        .map_err(|e| XdpError::Load(format!("test run: {e:#}")))?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// True if `interface` looks like one end of a veth pair (no device, not a tap, linked to
    /// another interface): frames the fast path redirects to it reach the other end only if
    /// that end has an XDP program or GRO enabled.
    pub fn is_veth(interface: &str) -> bool {
        let dir = Path::new("/sys/class/net").join(interface);
        let read = |a: &str| std::fs::read_to_string(dir.join(a)).ok();
        !dir.join("device").exists()
            && !dir.join("tun_flags").exists()
            && read("iflink").is_some()
            && read("iflink") != read("ifindex")
    }

    /// The ifindex of an attached interface.
    pub fn ifindex_of(&self, interface: &str) -> Option<u32> {
        self.names.get(interface).copied()
    }

    /// True in mode "xdp" (the programs act on the maps themselves).
    pub fn is_fast(&self) -> bool {
        self.fast
    }

    fn devs(&mut self) -> Result<aya::maps::DevMapHash<&mut MapData>, XdpError> {
        let map = self
            .ebpf
            .map_mut(abi::DEVS_MAP)
            .ok_or_else(|| XdpError::Load(format!("no map {}", abi::DEVS_MAP)))?;
        aya::maps::DevMapHash::try_from(map).map_err(map_err(abi::DEVS_MAP))
    }

    fn bytes_map<const K: usize, const V: usize>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, [u8; K], [u8; V]>, XdpError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| XdpError::Load(format!("no map {name}")))?;
        BpfHashMap::try_from(map).map_err(map_err(name))
    }

    /// Mirrors an FDB entry: `Some((kind, target))` installs or replaces it (`DEST_PORT` with
    /// an ifindex, `DEST_VTEP` with a peer id), `None` removes it.
    ///
    /// # Errors
    /// [`XdpError::Map`] if an install fails (the kernel's table is full, say).
    pub fn fdb_set(
        &mut self,
        vni: u32,
        mac: [u8; 6],
        dest: Option<(u32, u32)>,
    ) -> Result<(), XdpError> {
        let flags = match dest {
            Some((abi::DEST_PORT, ifindex)) if self.is_attached_veth(ifindex) => abi::FDB_F_PEER,
            _ => 0,
        };
        let key = abi::FdbKey { vni, mac, pad: 0 }.to_ne_bytes();
        let mut m = self.bytes_map::<12, 16>(abi::FDB_MAP)?;
        match dest {
            Some((kind, target)) => m
                .insert(
                    key,
                    abi::FdbVal {
                        kind,
                        target,
                        hit: 0,
                        flags,
                    }
                    .to_ne_bytes(),
                    0,
                )
                .map_err(map_err(abi::FDB_MAP)),
            None => {
                let _ = m.remove(&key);
                Ok(())
            }
        }
    }

    /// Removes every mirrored FDB entry.
    pub fn fdb_clear(&mut self) {
        if let Ok(mut m) = self.bytes_map::<12, 16>(abi::FDB_MAP) {
            let keys: Vec<[u8; 12]> = m.keys().flatten().collect();
            for k in keys {
                let _ = m.remove(&k);
            }
        }
    }

    /// True if the programs saw the station send since the last call (and clears the mark).
    pub fn fdb_seen(&mut self, vni: u32, mac: [u8; 6]) -> bool {
        let key = abi::FdbKey { vni, mac, pad: 0 }.to_ne_bytes();
        let Ok(mut m) = self.bytes_map::<12, 16>(abi::FDB_MAP) else {
            return false;
        };
        let Ok(v) = m.get(&key, 0) else {
            return false;
        };
        let mut val = abi::FdbVal::from_ne_bytes(&v);
        if val.hit == 0 {
            return false;
        }
        val.hit = 0;
        let _ = m.insert(key, val.to_ne_bytes(), 0);
        true
    }

    /// Mirrors an ARP entry (`None` removes it).
    ///
    /// # Errors
    /// [`XdpError::Map`] if an install fails.
    pub fn arp_set(
        &mut self,
        vni: u32,
        ip: std::net::Ipv4Addr,
        mac: Option<[u8; 6]>,
    ) -> Result<(), XdpError> {
        let key = abi::ArpKey {
            vni,
            ip: u32::from_ne_bytes(ip.octets()),
        }
        .to_ne_bytes();
        let mut m = self.bytes_map::<8, 8>(abi::ARP_MAP)?;
        match mac {
            Some(mac) => {
                let mut v = [0u8; 8];
                v[..6].copy_from_slice(&mac);
                m.insert(key, v, 0).map_err(map_err(abi::ARP_MAP))
            }
            None => {
                let _ = m.remove(&key);
                Ok(())
            }
        }
    }

    /// Removes every mirrored ARP entry.
    pub fn arp_clear(&mut self) {
        if let Ok(mut m) = self.bytes_map::<8, 8>(abi::ARP_MAP) {
            let keys: Vec<[u8; 8]> = m.keys().flatten().collect();
            for k in keys {
                let _ = m.remove(&k);
            }
        }
    }

    /// Installs (or with `None`, withdraws) how to reach peer `id`.
    ///
    /// # Errors
    /// [`XdpError::Map`] if the update fails.
    pub fn vtep_set(&mut self, id: u32, vtep: Option<&abi::Vtep>) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(abi::VTEPS_MAP)
            .ok_or_else(|| XdpError::Load(format!("no map {}", abi::VTEPS_MAP)))?;
        let mut arr: aya::maps::Array<&mut MapData, [u8; 64]> =
            aya::maps::Array::try_from(map).map_err(map_err(abi::VTEPS_MAP))?;
        let bytes = vtep.map_or([0u8; 64], abi::Vtep::to_ne_bytes);
        arr.set(id, bytes, 0).map_err(map_err(abi::VTEPS_MAP))
    }

    /// Sets the (peer, VNI) pairs the fast path may tunnel: exactly `pairs` afterwards.
    pub fn peer_vnis_set(&mut self, pairs: &[(std::net::Ipv4Addr, u32)]) {
        let Ok(mut m) = self.bytes_map::<8, 4>(abi::PEER_VNIS_MAP) else {
            return;
        };
        let want: Vec<[u8; 8]> = pairs
            .iter()
            .map(|(a, v)| {
                abi::PeerVni {
                    addr: u32::from_ne_bytes(a.octets()),
                    vni: *v,
                }
                .to_ne_bytes()
            })
            .collect();
        let have: Vec<[u8; 8]> = m.keys().flatten().collect();
        for k in have.iter().filter(|k| !want.contains(k)) {
            let _ = m.remove(k);
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            let _ = m.insert(*k, 1u32.to_ne_bytes(), 0);
        }
    }

    /// Removes the sockets of `queues` from the XSKMAP; when no port uses the interface any
    /// more, also stops steering and detaches the program. Idempotent.
    pub fn release(&mut self, ifindex: u32, queues: &[u32]) {
        let Some(a) = self.attached.get_mut(&ifindex) else {
            return;
        };
        a.users = a.users.saturating_sub(1);
        a.queues.retain(|q| !queues.contains(q));
        let (slot, last) = (a.slot, a.users == 0);
        if last {
            if let Ok(mut ports) = self.ports() {
                let _ = ports.remove(&ifindex);
            }
        }
        if let Ok(mut xsks) = self.xsks() {
            for q in queues {
                let index = slot * abi::MAX_QUEUES + *q;
                let _ = xsks.unset(index);
            }
        }
        if !last {
            return;
        }
        let Some(a) = self.attached.remove(&ifindex) else {
            return;
        };
        self.names.retain(|_, i| *i != ifindex);
        if let Ok(mut d) = self.devs() {
            let _ = d.remove(ifindex);
        }
        let detached = match a.link {
            Link::Xdp(l) => self.program(a.program).map(|p| p.detach(l)),
            Link::Tc(l) => self.classifier(a.program).map(|p| p.detach(l)),
        };
        match detached {
            Ok(Ok(())) => tracing::info!(ifindex, "eBPF program detached"),
            Ok(Err(e)) => tracing::warn!(ifindex, error = %e, "detaching the eBPF program failed"),
            Err(e) => tracing::warn!(ifindex, error = %e, "detaching the eBPF program failed"),
        }
        self.free_slots.push(a.slot);
    }

    /// Points the uplink program at this host's VTEP (`addr`, `port`) and the uplink's slot, and
    /// enables it.
    ///
    /// # Errors
    /// [`XdpError::Map`] if the update fails.
    pub fn set_uplink(
        &mut self,
        at: &Attachment,
        addr: std::net::Ipv4Addr,
        port: u16,
    ) -> Result<(), XdpError> {
        let value = abi::Uplink {
            addr: u32::from_ne_bytes(addr.octets()),
            port: u16::from_ne_bytes(port.to_be_bytes()),
            pad: 0,
            slot: at.slot,
            flags: abi::UPLINK_F_ENABLED | if self.fast { abi::UPLINK_F_FAST } else { 0 },
        };
        self.set_config16(abi::UPLINK_MAP, value.to_ne_bytes())
    }

    /// Writes the one 16-byte entry of the configuration array `name`.
    fn set_config16(&mut self, name: &'static str, value: [u8; 16]) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| XdpError::Load(format!("no map {name}")))?;
        let mut arr: aya::maps::Array<&mut MapData, [u8; 16]> =
            aya::maps::Array::try_from(map).map_err(map_err(name))?;
        arr.set(0, value, 0).map_err(map_err(name))
    }

    /// Sets the storm limits the programs apply in front of the slow path (every port has
    /// the same; a rate of 0 turns a limit off).
    ///
    /// # Errors
    /// [`XdpError::Map`] if the update fails.
    pub fn set_storm(&mut self, cfg: &crate::storm::StormConfig) -> Result<(), XdpError> {
        let value = abi::StormCfg {
            bum_rate: cfg.bum.per_sec,
            bum_burst: cfg.bum.burst,
            new_rate: cfg.new_macs.per_sec,
            new_burst: cfg.new_macs.burst,
        };
        self.set_config16(abi::STORM_CFG_MAP, value.to_ne_bytes())
    }

    fn peers(&mut self) -> Result<BpfHashMap<&mut MapData, u32, u32>, XdpError> {
        let map = self
            .ebpf
            .map_mut(abi::PEERS_MAP)
            .ok_or_else(|| XdpError::Load(format!("no map {}", abi::PEERS_MAP)))?;
        BpfHashMap::try_from(map).map_err(map_err(abi::PEERS_MAP))
    }

    /// Lets VXLAN from `addr` (peer `id`) through to the uplink's sockets.
    ///
    /// # Errors
    /// [`XdpError::Map`] if the update fails.
    pub fn add_peer(&mut self, addr: std::net::Ipv4Addr, id: u32) -> Result<(), XdpError> {
        self.peers()?
            .insert(u32::from_ne_bytes(addr.octets()), id, 0)
            .map_err(map_err(abi::PEERS_MAP))
    }

    /// Stops handing VXLAN from `addr` to user space (it then reaches the UDP socket, which
    /// drops it as from an unknown peer). Idempotent.
    pub fn remove_peer(&mut self, addr: std::net::Ipv4Addr) {
        if let Ok(mut p) = self.peers() {
            let _ = p.remove(&u32::from_ne_bytes(addr.octets()));
        }
    }

    /// The program's counters, summed over CPUs, in [`kangaroo_xdp::Counter::ALL`] order.
    pub fn counters(&self) -> [u64; abi::COUNTER_COUNT as usize] {
        let mut out = [0u64; abi::COUNTER_COUNT as usize];
        let Some(map) = self.ebpf.map(abi::COUNTERS_MAP) else {
            return out;
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return out;
        };
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = arr.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// Interfaces the program is attached to (by index).
    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.attached.keys().copied()
    }
}

impl Drop for XdpSteering {
    fn drop(&mut self) {
        let all: Vec<(u32, Vec<u32>)> = self
            .attached
            .iter()
            .map(|(i, a)| (*i, a.queues.clone()))
            .collect();
        for (ifindex, queues) in all {
            if let Some(a) = self.attached.get_mut(&ifindex) {
                a.users = 1;
            }
            self.release(ifindex, &queues);
        }
    }
}
