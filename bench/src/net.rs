//! The benchmark topologies: two nested VMs (namespaces) joined by each contender, on one host
//! or across two hosts. Every name carries a prefix unique to the run; everything is removed
//! when the topology is dropped (also after a failed measurement or an interrupt).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How the two VMs are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// A direct veth pair between the VMs: the ceiling on this machine.
    Veth,
    /// A Linux bridge on one host.
    Bridge,
    /// Open vSwitch on one host: its userspace (netdev) datapath with AF_XDP ports, the one
    /// that runs here (this kernel has no `openvswitch` module for the kernel datapath).
    Ovs,
    /// Linux bridges and the kernel's VXLAN across two hosts.
    KernelVxlan,
    /// kangaroo-switch on one host, in a datapath mode.
    Kangaroo(Mode),
    /// kangaroo-switch on two hosts joined by its VXLAN overlay.
    KangarooOverlay(Mode),
    /// The same through a secure tunnel (VXLAN inside the WireGuard protocol).
    KangarooSecure(Mode),
}

/// A switch datapath mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// eBPF fast path at XDP + AF_XDP.
    Xdp,
    /// eBPF fast path at tc (clsact ingress) + punt devices; keeps the guests' offloads.
    Tc,
    /// AF_XDP.
    Afxdp,
    /// AF_PACKET.
    Packet,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 4] = [Mode::Xdp, Mode::Tc, Mode::Afxdp, Mode::Packet];

    /// Parses a mode name.
    ///
    /// # Errors
    /// An unknown name, with the list.
    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown mode {s:?}; known: xdp, tc, afxdp, packet"))
    }

    /// Its name in the switch's configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::Tc => "tc",
            Mode::Afxdp => "afxdp",
            Mode::Packet => "packet",
        }
    }
}

impl Contender {
    /// Every contender.
    pub const ALL: [Contender; 13] = [
        Contender::Veth,
        Contender::Bridge,
        Contender::Ovs,
        Contender::Kangaroo(Mode::Xdp),
        Contender::Kangaroo(Mode::Tc),
        Contender::Kangaroo(Mode::Afxdp),
        Contender::Kangaroo(Mode::Packet),
        Contender::KernelVxlan,
        Contender::KangarooOverlay(Mode::Xdp),
        Contender::KangarooOverlay(Mode::Tc),
        Contender::KangarooOverlay(Mode::Afxdp),
        Contender::KangarooOverlay(Mode::Packet),
        Contender::KangarooSecure(Mode::Tc),
    ];

    /// Its name in results and on the command line.
    pub fn name(self) -> String {
        match self {
            Contender::Veth => "veth".into(),
            Contender::Bridge => "bridge".into(),
            Contender::Ovs => "ovs".into(),
            Contender::KernelVxlan => "kernel-vxlan".into(),
            Contender::Kangaroo(m) => format!("kangaroo-{}", m.as_str()),
            Contender::KangarooOverlay(m) => format!("kangaroo-{}-overlay", m.as_str()),
            Contender::KangarooSecure(m) => format!("kangaroo-{}-secure", m.as_str()),
        }
    }

    /// Parses a name.
    ///
    /// # Errors
    /// An unknown name, with the list of known ones.
    pub fn parse(s: &str) -> anyhow::Result<Contender> {
        Contender::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown contender {s:?}; known: {}",
                    Contender::ALL.map(Contender::name).join(", ")
                )
            })
    }

    /// Whether the VMs are on two hosts.
    pub fn across_hosts(self) -> bool {
        matches!(
            self,
            Contender::KernelVxlan | Contender::KangarooOverlay(_) | Contender::KangarooSecure(_)
        )
    }

    /// The contender its ratios are taken against.
    pub fn baseline(self) -> Contender {
        if self.across_hosts() {
            Contender::KernelVxlan
        } else {
            Contender::Bridge
        }
    }
}

/// Runs a command; an error names it and carries its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let (p, rest) = args.split_first().context("empty command")?;
    let o = Command::new(p)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .with_context(|| args.join(" "))?;
    if !o.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs `args` in namespace `ns`.
pub fn ns_sh(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}

/// Network namespaces whose names start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Where the binaries and the XDP object are.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `kangaroo-switch`.
    pub switch: PathBuf,
    /// `kangaroo-bench` (the traffic tools).
    pub bench: PathBuf,
    /// The XDP object (for the frame sink), written out of the binary.
    pub xdp_object: PathBuf,
    /// Which frame generator the run's floods use.
    pub generator: crate::gen::Choice,
    /// The generator the run's first flood used: every later flood uses it too.
    pub generator_used: std::sync::OnceLock<crate::gen::Generator>,
}

/// The two VMs' addresses.
pub const VM1: (&str, &str) = ("02:00:00:00:0b:01", "10.97.0.1");
/// The second VM.
pub const VM2: (&str, &str) = ("02:00:00:00:0b:02", "10.97.0.2");

/// One built topology.
pub struct Topology {
    /// Namespace of VM 1 (the sender).
    pub vm1: String,
    /// Namespace of VM 2 (the receiver).
    pub vm2: String,
    /// True when the switch forwards into VM 2 with `bpf_redirect_peer` (mode "tc"): frames
    /// then enter VM 2 past its XDP hook, so the frame sink is a tc one.
    pub peer_fed: bool,
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Topology {
    /// A topology with nothing built yet: namespaces `{prefix}-v1` and `{prefix}-v2` are to be
    /// VM 1 and VM 2; what is added later is removed on drop.
    ///
    /// # Errors
    /// The scratch directory cannot be made.
    pub fn empty(prefix: &str) -> anyhow::Result<Topology> {
        let dir = std::env::temp_dir().join(format!("{prefix}-files"));
        std::fs::create_dir_all(&dir)?;
        Ok(Topology {
            vm1: format!("{prefix}-v1"),
            vm2: format!("{prefix}-v2"),
            peer_fed: false,
            prefix: prefix.to_owned(),
            namespaces: Vec::new(),
            children: Vec::new(),
            dir,
        })
    }

    /// Creates namespace `name` (removed on drop) with its loopback up.
    ///
    /// # Errors
    /// `ip netns add` failed.
    pub fn add_ns(&mut self, name: &str) -> anyhow::Result<()> {
        sh(&["ip", "netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        sh(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Builds the topology of `c` with names starting with `prefix`.
    ///
    /// # Errors
    /// The step that failed (what was made is removed).
    pub fn build(c: Contender, prefix: &str, tools: &Tools) -> anyhow::Result<Topology> {
        let mut t = Topology::empty(prefix)?;
        t.peer_fed = matches!(
            c,
            Contender::Kangaroo(Mode::Tc) | Contender::KangarooOverlay(Mode::Tc)
        );
        let (v1, v2) = (t.vm1.clone(), t.vm2.clone());
        t.add_ns(&v1)?;
        t.add_ns(&v2)?;
        // Across hosts: 1500 − 50 (VXLAN); through a secure tunnel a further 60.
        let mtu = match c {
            Contender::KangarooSecure(_) => "1390",
            _ if c.across_hosts() => "1450",
            _ => "1500",
        };
        match c {
            Contender::Veth => {
                sh(&[
                    "ip", "link", "add", "eth0", "netns", &v1, "type", "veth", "peer", "name",
                    "eth0", "netns", &v2,
                ])?;
            }
            Contender::Bridge | Contender::Ovs | Contender::Kangaroo(_) => {
                let h = format!("{prefix}-h");
                t.add_ns(&h)?;
                for (i, v) in [(1, &v1), (2, &v2)] {
                    let port = format!("p{i}");
                    sh(&[
                        "ip", "link", "add", &port, "netns", &h, "type", "veth", "peer", "name",
                        "eth0", "netns", v,
                    ])?;
                    sh(&["ip", "-n", &h, "link", "set", &port, "up"])?;
                    host_end(&h, &port)?;
                }
                match c {
                    Contender::Bridge => {
                        sh(&["ip", "-n", &h, "link", "add", "br0", "type", "bridge"])?;
                        for p in ["p1", "p2"] {
                            sh(&["ip", "-n", &h, "link", "set", p, "master", "br0"])?;
                        }
                        sh(&["ip", "-n", &h, "link", "set", "br0", "up"])?;
                    }
                    Contender::Ovs => t.start_ovs(&h, &["p1", "p2"])?,
                    Contender::Kangaroo(m) => {
                        let cfg = format!(
                            "mode = \"{}\"\ncontrol_socket = \"{}\"\n[[port]]\ninterface = \"p1\"\nvni = 1\n[[port]]\ninterface = \"p2\"\nvni = 1\n",
                            m.as_str(),
                            t.dir.join("h.sock").display()
                        );
                        t.start_switch(&h, &cfg, "h", tools)?;
                    }
                    _ => {}
                }
            }
            Contender::KernelVxlan
            | Contender::KangarooOverlay(_)
            | Contender::KangarooSecure(_) => {
                let u = format!("{prefix}-u");
                t.add_ns(&u)?;
                sh(&["ip", "-n", &u, "link", "add", "br0", "type", "bridge"])?;
                sh(&["ip", "-n", &u, "link", "set", "br0", "up"])?;
                let hosts = [
                    (format!("{prefix}-ha"), "10.96.0.1", "10.96.0.2", &v1, "u1"),
                    (format!("{prefix}-hb"), "10.96.0.2", "10.96.0.1", &v2, "u2"),
                ];
                for (h, local, _, v, up) in &hosts {
                    t.add_ns(h)?;
                    sh(&[
                        "ip", "link", "add", "ul0", "netns", h, "type", "veth", "peer", "name", up,
                        "netns", &u,
                    ])?;
                    sh(&["ip", "-n", &u, "link", "set", up, "master", "br0", "up"])?;
                    // Frames an XDP program redirects into a veth need GRO (or XDP) there.
                    ns_sh(&u, &["ethtool", "-K", up, "gro", "on"])?;
                    sh(&[
                        "ip",
                        "-n",
                        h,
                        "addr",
                        "add",
                        &format!("{local}/24"),
                        "dev",
                        "ul0",
                    ])?;
                    sh(&["ip", "-n", h, "link", "set", "ul0", "up"])?;
                    sh(&[
                        "ip", "link", "add", "vm", "netns", h, "type", "veth", "peer", "name",
                        "eth0", "netns", v,
                    ])?;
                    sh(&["ip", "-n", h, "link", "set", "vm", "up"])?;
                    host_end(h, "vm")?;
                }
                // Secure tunnels: each host's key pair, made first so each can name the other's.
                let mut keys = Vec::new();
                if let Contender::KangarooSecure(_) = c {
                    for (h, ..) in &hosts {
                        let tag = &h[h.len() - 2..];
                        let file = t.dir.join(format!("{tag}.key"));
                        let cfg = t.dir.join(format!("{tag}-key.toml"));
                        std::fs::write(
                            &cfg,
                            format!(
                                "[uplink]\ninterface = \"ul0\"\naddress = \"10.96.0.9\"\n[secure]\nkey_file = \"{}\"\n",
                                file.display()
                            ),
                        )?;
                        let key = sh(&[
                            &tools.switch.to_string_lossy(),
                            "public-key",
                            "--config",
                            &cfg.to_string_lossy(),
                        ])?;
                        keys.push((file, key.trim().to_owned()));
                    }
                }
                for (i, (h, local, remote, _, _)) in hosts.iter().enumerate() {
                    match c {
                        Contender::KernelVxlan => {
                            sh(&[
                                "ip",
                                "-n",
                                h,
                                "link",
                                "add",
                                "vx1",
                                "type",
                                "vxlan",
                                "id",
                                "1",
                                "dstport",
                                "4789",
                                "local",
                                local,
                                "dev",
                                "ul0",
                                "nolearning",
                            ])?;
                            sh(&["ip", "-n", h, "link", "add", "br1", "type", "bridge"])?;
                            sh(&["ip", "-n", h, "link", "set", "vx1", "master", "br1", "up"])?;
                            sh(&["ip", "-n", h, "link", "set", "vm", "master", "br1"])?;
                            sh(&["ip", "-n", h, "link", "set", "br1", "up"])?;
                            sh(&[
                                "bridge",
                                "-n",
                                h,
                                "fdb",
                                "append",
                                "00:00:00:00:00:00",
                                "dev",
                                "vx1",
                                "dst",
                                remote,
                            ])?;
                        }
                        Contender::KangarooOverlay(m) => {
                            let tag = &h[h.len() - 2..];
                            let cfg = format!(
                                "mode = \"{}\"\ncontrol_socket = \"{}\"\n[[port]]\ninterface = \"vm\"\nvni = 1\n[uplink]\ninterface = \"ul0\"\naddress = \"{local}\"\n[[peer]]\naddress = \"{remote}\"\n",
                                m.as_str(),
                                t.dir.join(format!("{tag}.sock")).display()
                            );
                            t.start_switch(h, &cfg, tag, tools)?;
                        }
                        Contender::KangarooSecure(m) => {
                            let tag = &h[h.len() - 2..];
                            let (file, _) = &keys[i];
                            let (_, other) = &keys[1 - i];
                            let cfg = format!(
                                "mode = \"{}\"\ncontrol_socket = \"{}\"\n[[port]]\ninterface = \"vm\"\nvni = 1\n[uplink]\ninterface = \"ul0\"\naddress = \"{local}\"\n[secure]\nkey_file = \"{}\"\n[[peer]]\naddress = \"{remote}\"\npublic_key = \"{other}\"\n",
                                m.as_str(),
                                t.dir.join(format!("{tag}.sock")).display(),
                                file.display()
                            );
                            t.start_switch(h, &cfg, tag, tools)?;
                        }
                        _ => {}
                    }
                }
            }
        }
        for (v, (mac, ip)) in [(&v1, VM1), (&v2, VM2)] {
            configure_vm(v, mac, ip, mtu)?;
        }
        t.await_vms(&c.name())?;
        Ok(t)
    }

    /// Waits (bounded) until VM 1 and VM 2 reach each other, so every switch between them has
    /// learned both.
    ///
    /// # Errors
    /// They do not within 10 s.
    pub fn await_vms(&self, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ns_sh(&self.vm1, &["ping", "-c", "1", "-W", "1", VM2.1]).is_err() {
            if Instant::now() > deadline {
                bail!("{what}: VM1 cannot reach VM2");
            }
        }
        ns_sh(&self.vm2, &["ping", "-c", "1", "-W", "1", VM1.1])?;
        Ok(())
    }

    /// Starts `kangaroo-switch run` with configuration `cfg` in namespace `ns` (stopped on
    /// drop) and waits for its control socket, `{dir}/{tag}.sock`.
    ///
    /// # Errors
    /// It cannot be started or its socket does not appear within 10 s.
    pub fn start_switch(
        &mut self,
        ns: &str,
        cfg: &str,
        tag: &str,
        tools: &Tools,
    ) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{tag}.toml"));
        std::fs::write(&path, cfg)?;
        let sock = self.dir.join(format!("{tag}.sock"));
        let log = self.dir.join(format!("{tag}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&tools.switch)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting kangaroo-switch")?;
        self.children.push(child);
        let tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(8)..].join("\n")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            let exited = self
                .children
                .last_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!("kangaroo-switch in {ns} exited ({status}):\n{}", tail());
            }
            if Instant::now() > deadline {
                bail!("kangaroo-switch in {ns} did not start in 30 s:\n{}", tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts Open vSwitch in namespace `ns` (its database and `ovs-vswitchd` as children of
    /// this process, stopped on drop, with every file in the scratch directory) with one
    /// userspace-datapath bridge over `ports` as AF_XDP ports in native mode.
    ///
    /// # Errors
    /// Open vSwitch is not installed, or a step failed (its log is in the message).
    pub fn start_ovs(&mut self, ns: &str, ports: &[&str]) -> anyhow::Result<()> {
        let d = self.dir.join("ovs");
        std::fs::create_dir_all(&d)?;
        let ds = d.display().to_string();
        let db = format!("{ds}/conf.db");
        sh(&[
            "ovsdb-tool",
            "create",
            &db,
            "/usr/share/openvswitch/vswitch.ovsschema",
        ])
        .context("ovsdb-tool (Debian package openvswitch-switch)")?;
        let sock = format!("unix:{ds}/db.sock");
        let spawn = |args: &[String], log: &str| -> anyhow::Result<Child> {
            Command::new("ip")
                .args(["netns", "exec", ns])
                .args(args)
                .envs([("OVS_RUNDIR", &ds), ("OVS_DBDIR", &ds), ("OVS_LOGDIR", &ds)])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join(log))?)
                .spawn()
                .with_context(|| args.join(" "))
        };
        let c = spawn(
            &[
                "ovsdb-server".into(),
                format!("--remote=punix:{ds}/db.sock"),
                format!("--unixctl={ds}/db.ctl"),
                db.clone(),
            ],
            "ovsdb.log",
        )?;
        self.children.push(c);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.join("db.sock").exists() {
            if Instant::now() > deadline {
                bail!("ovsdb-server did not start: {}", ovs_log(&d, "ovsdb.log"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let db_arg = format!("--db={sock}");
        sh(&["ovs-vsctl", &db_arg, "--no-wait", "init"])?;
        let c = spawn(
            &[
                "ovs-vswitchd".into(),
                sock.clone(),
                format!("--unixctl={ds}/vs.ctl"),
            ],
            "vswitchd.log",
        )?;
        self.children.push(c);
        sh(&[
            "ovs-vsctl",
            &db_arg,
            "--timeout=10",
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ])
        .with_context(|| ovs_log(&d, "vswitchd.log"))?;
        for p in ports {
            sh(&[
                "ovs-vsctl",
                &db_arg,
                "--timeout=10",
                "add-port",
                "br0",
                p,
                "--",
                "set",
                "interface",
                p,
                "type=afxdp",
                "options:xdp-mode=native",
            ])
            .with_context(|| ovs_log(&d, "vswitchd.log"))?;
        }
        Ok(())
    }

    /// The prefix every name of this topology starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The control socket of the switch started with `tag`.
    pub fn switch_socket(&self, tag: &str) -> PathBuf {
        self.dir.join(format!("{tag}.sock"))
    }

    /// Turns the VMs' transmit offloads (checksum, TSO) off or back on.
    ///
    /// # Errors
    /// `ethtool` failed.
    pub fn offloads(&self, on: bool) -> anyhow::Result<()> {
        let v = if on { "on" } else { "off" };
        for ns in [&self.vm1, &self.vm2] {
            ns_sh(ns, &["ethtool", "-K", "eth0", "tx", v, "tso", v])?;
        }
        Ok(())
    }

    /// The run's scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Gives a VM's `eth0` (in namespace `ns`) its MAC, IPv4 address (/24) and MTU, brings it up
/// and turns GRO on.
///
/// # Errors
/// An `ip` or `ethtool` command failed.
pub fn configure_vm(ns: &str, mac: &str, ip: &str, mtu: &str) -> anyhow::Result<()> {
    sh(&[
        "ip", "-n", ns, "link", "set", "eth0", "address", mac, "mtu", mtu,
    ])?;
    sh(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ])?;
    sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
    ns_sh(ns, &["ethtool", "-K", "eth0", "gro", "on"])?;
    Ok(())
}

/// The last lines of an Open vSwitch log in `dir`, for error messages.
fn ovs_log(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "{name}: {}",
        lines[lines.len().saturating_sub(5)..].join(" | ")
    )
}

/// Readies the host end of a VM's veth for every contender alike: GRO on, so frames the
/// generator transmits as XDP frames (and fast-path redirects) are taken in even where no XDP
/// program is attached (a veth drops them otherwise).
///
/// # Errors
/// `ethtool` failed.
pub fn host_end(ns: &str, dev: &str) -> anyhow::Result<()> {
    ns_sh(ns, &["ethtool", "-K", dev, "gro", "on"])?;
    Ok(())
}
