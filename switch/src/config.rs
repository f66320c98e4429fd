//! The switch's configuration file (TOML), validated into typed settings.
//!
//! Parsing rejects unknown keys and malformed values, naming the key (`port[1].vni`) and the
//! file; validation rejects what parses but cannot work: duplicate ports, a port that is also the
//! uplink, peers repeated or equal to this host, peers for VNIs with no local port, and (in
//! [`Config::check_interfaces`]) interfaces that do not exist on this host.
//!
//! ```toml
//! mode = "tc"                             # "tc" (default) | "xdp" | "afxdp" | "packet"
//! control_socket = "/run/kangaroo/switch.sock"
//! [datapath]                              # optional
//! cores = [1]                             # one worker thread per core, pinned; default: one unpinned
//! busy_poll = false                       # spin when idle instead of sleeping in poll(2)
//! [storm]                                 # optional; per port, a rate of 0 turns a limit off
//! bum_per_sec = 5000                      # broadcast/unknown/multicast frames (burst: bum_burst)
//! new_macs_per_sec = 1000                 # newly learned stations (burst: new_macs_burst = 2000)
//! [fdb]                                   # optional
//! capacity = 1048576
//! aging_secs = 300
//! max_per_source = 4096
//! [[port]]
//! interface = "vm1-host"
//! vni = 100
//! mac = "02:00:00:00:01:01"               # optional port security
//! ips = ["192.168.100.11"]                # optional port security
//! [uplink]                                # optional
//! interface = "eth0"
//! address = "10.10.0.1"
//! udp_port = 4789
//! mtu = 1500
//! [secure]                               # optional: secure tunnels (WireGuard protocol)
//! key_file = "/var/lib/kangaroo-switch/private.key"   # created 0600 at first start
//! port = 51820                            # UDP port of the tunnels
//! keepalive_secs = 25                     # persistent keepalive (0: off)
//! rendezvous = "203.0.113.10:51820"       # optional: tells peers' endpoints (NAT traversal)
//! rendezvous_key = "base64…"              # its public key (with rendezvous)
//! relay = true                            # it relays when no direct path opens (default)
//! punch_ttl = 2                           # TTL of hole punches: past this NAT, not the peer's
//! [[peer]]
//! address = "10.10.0.2"
//! vnis = [100]                            # default: every VNI of a local port
//! public_key = "base64…"                  # the peer's key (needs [secure])
//! encryption = "required"                 # default "required" with a key, else "off"
//! endpoint = "198.51.100.7:51820"         # optional; default: address, [secure].port
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kangaroo_control::config::SwitchFile as File;

use crate::fdb::FdbConfig;
use crate::mac::MacAddr;
use crate::pipeline::PortConfig;
use crate::tunnel::{Vni, VXLAN_PORT};

pub use kangaroo_control::mode::{Mode, DEFAULT_MODE};

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/kangaroo/switch.sock";

/// A validated port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSettings {
    /// The interface to take over.
    pub interface: String,
    /// Network and port security.
    pub port: PortConfig,
}

/// A validated uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSettings {
    /// The underlay interface.
    pub interface: String,
    /// This host's VTEP address.
    pub address: Ipv4Addr,
    /// VXLAN UDP port.
    pub udp_port: u16,
    /// Underlay MTU.
    pub mtu: usize,
}

/// A validated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// Its VTEP address.
    pub address: Ipv4Addr,
    /// Shared VNIs (`None`: every local VNI).
    pub vnis: Option<Vec<Vni>>,
    /// Its secure tunnel, when encryption is required.
    pub secure: Option<SecurePeerSettings>,
}

/// A peer reached through a secure tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurePeerSettings {
    /// Its public key.
    pub public_key: crate::secure::PublicKey,
    /// Where to send first (default: its address, this host's secure port).
    pub endpoint: Option<std::net::SocketAddrV4>,
}

impl PeerSettings {
    /// The secure tunnel's specification, if the peer has one.
    pub fn secure_spec(&self) -> Option<crate::secure::PeerSpec> {
        self.secure.as_ref().map(|s| crate::secure::PeerSpec {
            vtep: self.address,
            public_key: s.public_key,
            endpoint: s.endpoint,
        })
    }
}

/// This host's secure tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureSettings {
    /// The private key's file (created at first start).
    pub key_file: PathBuf,
    /// The UDP port.
    pub port: u16,
    /// Persistent keepalive, seconds (0: off).
    pub keepalive_secs: u16,
    /// The rendezvous (NAT traversal), if any.
    pub rendezvous: Option<crate::secure::RendezvousSpec>,
    /// TTL of hole-punching packets (0: the normal TTL).
    pub punch_ttl: u32,
}

/// Where the private key lives unless configured.
pub const DEFAULT_KEY_FILE: &str = "/var/lib/kangaroo-switch/private.key";
/// Persistent keepalive unless configured: under the 30 s many NATs keep a UDP mapping.
pub const DEFAULT_KEEPALIVE_SECS: u16 = 25;

/// The datapath's worker threads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatapathSettings {
    /// One worker per entry, pinned to that CPU; empty: one worker, not pinned.
    pub cores: Vec<usize>,
    /// Spin when idle instead of sleeping until a frame arrives.
    pub busy_poll: bool,
}

impl DatapathSettings {
    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.cores.len().max(1)
    }
}

impl PeerSettings {
    /// The networks shared with the peer, as the switch takes them.
    pub fn vnis(&self) -> crate::tunnel::PeerVnis {
        match &self.vnis {
            None => crate::tunnel::PeerVnis::All,
            Some(v) => crate::tunnel::PeerVnis::Only(v.clone()),
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Datapath mode.
    pub mode: Mode,
    /// True when the file named the mode (false: the default).
    pub mode_configured: bool,
    /// Control API socket.
    pub control_socket: PathBuf,
    /// Worker threads.
    pub datapath: DatapathSettings,
    /// FDB sizing.
    pub fdb: FdbConfig,
    /// Storm control on every port.
    pub storm: crate::storm::StormConfig,
    /// Ports.
    pub ports: Vec<PortSettings>,
    /// Uplink, if tunnels are used.
    pub uplink: Option<UplinkSettings>,
    /// Peers.
    pub peers: Vec<PeerSettings>,
    /// Secure tunnels, if configured.
    pub secure: Option<SecureSettings>,
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {message}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// TOML syntax, an unknown key, or a wrongly typed value (the message names line and key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The key, e.g. `port[1].vni`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// True for a name Linux accepts as an interface name.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && !s
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

impl Config {
    /// Why the switch runs in its mode: configured or the default, and the mode's trade-off.
    pub fn mode_reason(&self) -> String {
        let origin = if self.mode_configured {
            "set in the config file"
        } else {
            "the default"
        };
        format!("{origin}: {}", self.mode.trade_off())
    }

    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Config::parse(&path.display().to_string(), &text)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let bad = |key: String, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            message,
        };

        let mut datapath = DatapathSettings::default();
        if let Some(d) = f.datapath {
            let online = std::thread::available_parallelism().map_or(1, usize::from);
            for (i, c) in d.cores.iter().enumerate() {
                if d.cores[..i].contains(c) {
                    return Err(bad(
                        format!("datapath.cores[{i}]"),
                        format!("core {c} is listed twice"),
                    ));
                }
                if *c >= 1024 {
                    return Err(bad(
                        format!("datapath.cores[{i}]"),
                        format!("core {c} is not a CPU number (this host has {online})"),
                    ));
                }
            }
            if d.cores.len() > 64 {
                return Err(bad(
                    "datapath.cores".into(),
                    format!("{} workers; at most 64 are supported", d.cores.len()),
                ));
            }
            datapath = DatapathSettings {
                cores: d.cores,
                busy_poll: d.busy_poll,
            };
        }

        let mut storm = crate::storm::StormConfig::DAEMON_DEFAULT;
        if let Some(s) = f.storm {
            for (key, per_sec, burst, rate) in [
                ("bum", s.bum_per_sec, s.bum_burst, &mut storm.bum),
                (
                    "new_macs",
                    s.new_macs_per_sec,
                    s.new_macs_burst,
                    &mut storm.new_macs,
                ),
            ] {
                if let Some(p) = per_sec {
                    rate.per_sec = p;
                    // A new rate without a burst: one second's worth.
                    rate.burst = p;
                }
                if let Some(b) = burst {
                    if b == 0 {
                        return Err(bad(
                            format!("storm.{key}_burst"),
                            "must be at least 1 (turn the limit off with a rate of 0)".into(),
                        ));
                    }
                    rate.burst = b;
                }
            }
        }

        let mut fdb = FdbConfig::default();
        if let Some(x) = f.fdb {
            if let Some(c) = x.capacity {
                if !(1..=1 << 26).contains(&c) {
                    return Err(bad(
                        "fdb.capacity".into(),
                        format!("{c} is not between 1 and {}", 1 << 26),
                    ));
                }
                fdb.capacity = c;
            }
            if let Some(a) = x.aging_secs {
                if a == 0 {
                    return Err(bad("fdb.aging_secs".into(), "must be at least 1".into()));
                }
                fdb.aging = Duration::from_secs(a);
            }
            if let Some(m) = x.max_per_source {
                if m == 0 {
                    return Err(bad(
                        "fdb.max_per_source".into(),
                        "must be at least 1".into(),
                    ));
                }
                fdb.max_per_source = m;
            }
        }

        let mut ports: Vec<PortSettings> = Vec::new();
        for (i, p) in f.port.iter().enumerate() {
            let key = |k: &str| format!("port[{i}].{k}");
            if !valid_ifname(&p.interface) {
                return Err(bad(
                    key("interface"),
                    format!("{:?} is not a valid interface name", p.interface),
                ));
            }
            if let Some(j) = ports.iter().position(|q| q.interface == p.interface) {
                return Err(bad(
                    key("interface"),
                    format!("{} is already port[{j}]", p.interface),
                ));
            }
            let vni = Vni::new(p.vni).map_err(|e| bad(key("vni"), e.to_string()))?;
            let mac = p
                .mac
                .as_deref()
                .map(|m| {
                    m.parse::<MacAddr>()
                        .map_err(|e| bad(key("mac"), e.to_string()))
                })
                .transpose()?;
            if let Some(m) = mac {
                if !m.is_valid_source() {
                    return Err(bad(
                        key("mac"),
                        format!("{m} is not a unicast station address"),
                    ));
                }
            }
            let mut ips = Vec::new();
            for (k, ip) in p.ips.iter().enumerate() {
                let a: Ipv4Addr = ip.parse().map_err(|_| {
                    bad(
                        format!("port[{i}].ips[{k}]"),
                        format!("{ip:?} is not an IPv4 address"),
                    )
                })?;
                ips.push(a);
            }
            ports.push(PortSettings {
                interface: p.interface.clone(),
                port: PortConfig { vni, mac, ips },
            });
        }

        let uplink = match f.uplink {
            None => None,
            Some(u) => {
                if !valid_ifname(&u.interface) {
                    return Err(bad(
                        "uplink.interface".into(),
                        format!("{:?} is not a valid interface name", u.interface),
                    ));
                }
                if let Some(j) = ports.iter().position(|q| q.interface == u.interface) {
                    return Err(bad(
                        "uplink.interface".into(),
                        format!("{} is also port[{j}]", u.interface),
                    ));
                }
                let address: Ipv4Addr = u.address.parse().map_err(|_| {
                    bad(
                        "uplink.address".into(),
                        format!("{:?} is not an IPv4 address", u.address),
                    )
                })?;
                let udp_port = u.udp_port.unwrap_or(VXLAN_PORT);
                if udp_port == 0 {
                    return Err(bad("uplink.udp_port".into(), "must not be 0".into()));
                }
                let mtu = u.mtu.unwrap_or(1500);
                if !(576..=9000).contains(&mtu) {
                    return Err(bad(
                        "uplink.mtu".into(),
                        format!("{mtu} is not between 576 and 9000"),
                    ));
                }
                Some(UplinkSettings {
                    interface: u.interface,
                    address,
                    udp_port,
                    mtu,
                })
            }
        };

        let secure = match f.secure {
            None => None,
            Some(sf) => {
                let Some(up) = &uplink else {
                    return Err(bad(
                        "secure".into(),
                        "secure tunnels need an [uplink]".into(),
                    ));
                };
                let port = sf.port.unwrap_or(crate::secure::DEFAULT_PORT);
                if port == 0 || port == up.udp_port {
                    return Err(bad(
                        "secure.port".into(),
                        format!(
                            "{port} cannot be used: it must be non-zero and not the VXLAN port"
                        ),
                    ));
                }
                let key_file = sf
                    .key_file
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE));
                if key_file.as_os_str().is_empty() {
                    return Err(bad("secure.key_file".into(), "must not be empty".into()));
                }
                let rendezvous = match (&sf.rendezvous, &sf.rendezvous_key) {
                    (None, None) if sf.relay.is_none() => None,
                    (None, _) => {
                        return Err(bad(
                            "secure.rendezvous".into(),
                            "rendezvous_key and relay need a rendezvous (address:port)".into(),
                        ))
                    }
                    (Some(_), None) => {
                        return Err(bad(
                            "secure.rendezvous_key".into(),
                            "a rendezvous needs its public key".into(),
                        ))
                    }
                    (Some(e), Some(k)) => {
                        let endpoint = e.parse::<std::net::SocketAddrV4>().map_err(|_| {
                            bad(
                                "secure.rendezvous".into(),
                                format!("{e:?} is not an IPv4 address:port"),
                            )
                        })?;
                        let public_key = k
                            .parse::<crate::secure::PublicKey>()
                            .map_err(|err| bad("secure.rendezvous_key".into(), err.to_string()))?;
                        Some(crate::secure::RendezvousSpec {
                            endpoint,
                            public_key,
                            relay: sf.relay.unwrap_or(true),
                        })
                    }
                };
                Some(SecureSettings {
                    key_file,
                    port,
                    keepalive_secs: sf.keepalive_secs.unwrap_or(DEFAULT_KEEPALIVE_SECS),
                    rendezvous,
                    punch_ttl: sf
                        .punch_ttl
                        .map_or(crate::secure::DEFAULT_PUNCH_TTL, u32::from),
                })
            }
        };

        let mut peers: Vec<PeerSettings> = Vec::new();
        for (i, p) in f.peer.iter().enumerate() {
            let key = |k: &str| format!("peer[{i}].{k}");
            let Some(up) = &uplink else {
                return Err(bad(key("address"), "peers need an [uplink]".into()));
            };
            let address: Ipv4Addr = p.address.parse().map_err(|_| {
                bad(
                    key("address"),
                    format!("{:?} is not an IPv4 address", p.address),
                )
            })?;
            if address == up.address {
                return Err(bad(
                    key("address"),
                    format!("{address} is this host's own uplink address"),
                ));
            }
            if let Some(j) = peers.iter().position(|q| q.address == address) {
                return Err(bad(
                    key("address"),
                    format!("{address} is already peer[{j}]"),
                ));
            }
            let vnis = match &p.vnis {
                None => None,
                Some(v) => {
                    let mut out = Vec::new();
                    for (k, n) in v.iter().enumerate() {
                        let vni = Vni::new(*n)
                            .map_err(|e| bad(format!("peer[{i}].vnis[{k}]"), e.to_string()))?;
                        if !ports.iter().any(|p| p.port.vni == vni) {
                            return Err(bad(
                                format!("peer[{i}].vnis[{k}]"),
                                format!("VNI {vni} has no local port"),
                            ));
                        }
                        out.push(vni);
                    }
                    Some(out)
                }
            };
            let public_key = p
                .public_key
                .as_deref()
                .map(|k| k.parse::<crate::secure::PublicKey>())
                .transpose()
                .map_err(|e| bad(key("public_key"), e.to_string()))?;
            let encryption = match (p.encryption, public_key) {
                (Some(e), _) => e,
                (None, Some(_)) => crate::secure::Encryption::Required,
                (None, None) => crate::secure::Encryption::Off,
            };
            let endpoint = p
                .endpoint
                .as_deref()
                .map(|e| {
                    e.parse::<std::net::SocketAddrV4>().map_err(|_| {
                        bad(
                            key("endpoint"),
                            format!("{e:?} is not an IPv4 address and port"),
                        )
                    })
                })
                .transpose()?;
            let secure_peer = match encryption {
                crate::secure::Encryption::Off => {
                    if endpoint.is_some() {
                        return Err(bad(
                            key("endpoint"),
                            "an endpoint is only for a peer with encryption = \"required\"".into(),
                        ));
                    }
                    None
                }
                crate::secure::Encryption::Required => {
                    let Some(public_key) = public_key else {
                        return Err(bad(
                            key("encryption"),
                            "\"required\" needs the peer's public_key".into(),
                        ));
                    };
                    if secure.is_none() {
                        return Err(bad(
                            key("encryption"),
                            "\"required\" needs a [secure] section (this host's key)".into(),
                        ));
                    }
                    if let Some(j) = peers.iter().position(|q| {
                        q.secure
                            .as_ref()
                            .is_some_and(|s| s.public_key == public_key)
                    }) {
                        return Err(bad(
                            key("public_key"),
                            format!("{public_key} is already peer[{j}]'s"),
                        ));
                    }
                    Some(SecurePeerSettings {
                        public_key,
                        endpoint,
                    })
                }
            };
            peers.push(PeerSettings {
                address,
                vnis,
                secure: secure_peer,
            });
        }

        Ok(Config {
            mode_configured: f.mode.is_some(),
            mode: f.mode.unwrap_or(DEFAULT_MODE),
            control_socket: f
                .control_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            datapath,
            fdb,
            storm,
            ports,
            uplink,
            peers,
            secure,
        })
    }

    /// Checks that every configured interface exists, looking in `sys_class_net` (normally
    /// `/sys/class/net`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key of the first missing interface.
    pub fn check_interfaces(&self, origin: &str, sys_class_net: &Path) -> Result<(), ConfigError> {
        let missing = |key: String, ifname: &str| ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            message: format!("interface {ifname} does not exist on this host"),
        };
        for (i, p) in self.ports.iter().enumerate() {
            if !sys_class_net.join(&p.interface).exists() {
                return Err(missing(format!("port[{i}].interface"), &p.interface));
            }
        }
        if let Some(u) = &self.uplink {
            if !sys_class_net.join(&u.interface).exists() {
                return Err(missing("uplink.interface".into(), &u.interface));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
mode = "afxdp"
control_socket = "/tmp/k.sock"
[fdb]
capacity = 4096
aging_secs = 60
max_per_source = 10
[[port]]
interface = "vm1-host"
vni = 100
mac = "02:00:00:00:01:01"
ips = ["192.168.100.11"]
[[port]]
interface = "vm2-host"
vni = 200
[uplink]
interface = "eth0"
address = "10.10.0.1"
[[peer]]
address = "10.10.0.2"
vnis = [100]
[[peer]]
address = "10.10.0.3"
"#;

    #[test]
    fn a_full_config_parses() {
        let c = Config::parse("t.toml", FULL).unwrap();
        assert_eq!(c.mode, Mode::Afxdp);
        assert_eq!(c.control_socket, PathBuf::from("/tmp/k.sock"));
        assert_eq!(
            (c.fdb.capacity, c.fdb.aging, c.fdb.max_per_source),
            (4096, Duration::from_secs(60), 10)
        );
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].port.mac, Some(MacAddr([2, 0, 0, 0, 1, 1])));
        assert_eq!(c.ports[0].port.ips, vec![Ipv4Addr::new(192, 168, 100, 11)]);
        let u = c.uplink.as_ref().unwrap();
        assert_eq!((u.udp_port, u.mtu), (4789, 1500));
        assert_eq!(c.peers[0].vnis, Some(vec![Vni::new(100).unwrap()]));
        assert_eq!(c.peers[1].vnis, None);
    }

    #[test]
    fn defaults() {
        let c = Config::parse("t.toml", "").unwrap();
        assert_eq!(c.mode, Mode::Tc);
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.fdb, FdbConfig::default());
        assert_eq!(c.storm, crate::storm::StormConfig::DAEMON_DEFAULT);
    }

    #[test]
    fn storm_limits_parse_and_a_rate_of_zero_turns_one_off() {
        let c = Config::parse(
            "t.toml",
            "[storm]\nbum_per_sec = 100\nnew_macs_per_sec = 0\n",
        )
        .unwrap();
        assert_eq!(
            (c.storm.bum.per_sec, c.storm.bum.burst),
            (100, 100),
            "a burst of one second's worth"
        );
        assert!(!c.storm.new_macs.is_limited());
        let c = Config::parse("t.toml", "[storm]\nbum_burst = 7\n").unwrap();
        assert_eq!(c.storm.bum.burst, 7);
        assert_eq!(c.storm.bum.per_sec, 5_000);
    }

    const UP: &str = "[uplink]\ninterface = \"e\"\naddress = \"10.0.0.1\"\n";
    const KEY: &str = "mGXy4RC0mvbWC0jlpUbj0xcKzcFu3NQxS3GrnyhYhHE=";

    #[test]
    fn secure_tunnels_parse_with_their_defaults() {
        let c = Config::parse(
            "sw.toml",
            &format!(
                "{UP}[secure]\n[[peer]]\naddress = \"10.0.0.2\"\npublic_key = \"{KEY}\"\n\
                 [[peer]]\naddress = \"10.0.0.3\"\npublic_key = \"{KEY}\"\nencryption = \"off\"\n\
                 [[peer]]\naddress = \"10.0.0.4\"\n"
            ),
        )
        .unwrap();
        let s = c.secure.unwrap();
        assert_eq!(s.port, crate::secure::DEFAULT_PORT);
        assert_eq!(s.keepalive_secs, DEFAULT_KEEPALIVE_SECS);
        assert_eq!(s.key_file, PathBuf::from(DEFAULT_KEY_FILE));
        let sp = c.peers[0].secure_spec().unwrap();
        assert_eq!(sp.public_key.to_string(), KEY);
        assert_eq!(sp.endpoint, None);
        // A key with encryption off, and no key: plain VXLAN.
        assert!(c.peers[1].secure.is_none());
        assert!(c.peers[2].secure.is_none());
        assert_eq!(s.rendezvous, None);
        let c = Config::parse(
            "sw.toml",
            &format!(
                "{UP}[secure]\nrendezvous = \"203.0.113.10:51820\"\nrendezvous_key = \"{KEY}\"\n"
            ),
        )
        .unwrap();
        let r = c.secure.unwrap().rendezvous.unwrap();
        assert_eq!(r.endpoint.to_string(), "203.0.113.10:51820");
        assert!(r.relay, "a rendezvous relays unless told not to");
    }

    #[test]
    fn every_rejection_names_its_key() {
        let port = |extra: &str| format!("[[port]]\ninterface = \"a\"\nvni = 1\n{extra}");
        let cases: Vec<(String, &str)> = vec![
            ("colour = 1\n".into(), "colour"),
            ("mode = \"fast\"\n".into(), "mode"),
            (port("speed = 1\n"), "speed"),
            (format!("{}{}", port(""), port("")), "port[1].interface: a is already port[0]"),
            ("[[port]]\ninterface = \"a/b\"\nvni = 1\n".into(), "port[0].interface"),
            ("[[port]]\ninterface = \"abcdefghijklmnopq\"\nvni = 1\n".into(), "port[0].interface"),
            ("[[port]]\ninterface = \"a\"\nvni = 16777216\n".into(), "port[0].vni"),
            (port("mac = \"02:00\"\n"), "port[0].mac"),
            (port("mac = \"ff:ff:ff:ff:ff:ff\"\n"), "port[0].mac"),
            (port("ips = [\"1.2.3\"]\n"), "port[0].ips[0]"),
            ("[fdb]\ncapacity = 0\n".into(), "fdb.capacity"),
            ("[fdb]\naging_secs = 0\n".into(), "fdb.aging_secs"),
            ("[storm]\nbum_burst = 0\n".into(), "storm.bum_burst"),
            ("[storm]\nnew_macs_burst = 0\n".into(), "storm.new_macs_burst"),
            ("[storm]\nbum = 1\n".into(), "bum"),
            ("[uplink]\ninterface = \"e\"\naddress = \"x\"\n".into(), "uplink.address"),
            (format!("{}[uplink]\ninterface = \"a\"\naddress = \"10.0.0.1\"\n", port("")), "uplink.interface: a is also port[0]"),
            ("[uplink]\ninterface = \"e\"\naddress = \"10.0.0.1\"\nmtu = 100\n".into(), "uplink.mtu"),
            ("[[peer]]\naddress = \"10.0.0.2\"\n".into(), "peers need an [uplink]"),
            ("[uplink]\ninterface = \"e\"\naddress = \"10.0.0.1\"\n[[peer]]\naddress = \"10.0.0.1\"\n".into(), "peer[0].address"),
            ("[uplink]\ninterface = \"e\"\naddress = \"10.0.0.1\"\n[[peer]]\naddress = \"10.0.0.2\"\n[[peer]]\naddress = \"10.0.0.2\"\n".into(), "peer[1].address"),
            (format!("{}[uplink]\ninterface = \"e\"\naddress = \"10.0.0.1\"\n[[peer]]\naddress = \"10.0.0.2\"\nvnis = [7]\n", port("")), "peer[0].vnis[0]: VNI 7 has no local port"),
            ("[secure]\n".into(), "secure: secure tunnels need an [uplink]"),
            (format!("{UP}[secure]\nport = 4789\n"), "secure.port"),
            (format!("{UP}[secure]\nkey_file = \"\"\n"), "secure.key_file"),
            (format!("{UP}[secure]\nmystery = 1\n"), "unknown field `mystery`"),
            (format!("{UP}[secure]\nrelay = true\n"), "secure.rendezvous: rendezvous_key and relay need"),
            (format!("{UP}[secure]\nrendezvous = \"1.2.3.4:5\"\n"), "secure.rendezvous_key: a rendezvous needs"),
            (format!("{UP}[secure]\nrendezvous = \"1.2.3.4\"\nrendezvous_key = \"{KEY}\"\n"), "secure.rendezvous: \"1.2.3.4\" is not"),
            (format!("{UP}[secure]\nrendezvous = \"1.2.3.4:5\"\nrendezvous_key = \"x\"\n"), "secure.rendezvous_key: not a key"),
            (format!("{UP}[[peer]]\naddress = \"10.0.0.2\"\npublic_key = \"{KEY}\"\n"), "peer[0].encryption: \"required\" needs a [secure] section"),
            (format!("{UP}[secure]\n[[peer]]\naddress = \"10.0.0.2\"\npublic_key = \"nope\"\n"), "peer[0].public_key: not a key"),
            (format!("{UP}[secure]\n[[peer]]\naddress = \"10.0.0.2\"\nencryption = \"required\"\n"), "peer[0].encryption: \"required\" needs the peer's public_key"),
            (format!("{UP}[secure]\n[[peer]]\naddress = \"10.0.0.2\"\nendpoint = \"1.2.3.4:5\"\n"), "peer[0].endpoint: an endpoint is only for"),
            (format!("{UP}[secure]\n[[peer]]\naddress = \"10.0.0.2\"\npublic_key = \"{KEY}\"\nendpoint = \"1.2.3.4\"\n"), "peer[0].endpoint"),
            (format!("{UP}[secure]\n[[peer]]\naddress = \"10.0.0.2\"\npublic_key = \"{KEY}\"\nencryption = \"maybe\"\n"), "unknown variant `maybe`"),
            (format!("{UP}[secure]\n[[peer]]\naddress = \"10.0.0.2\"\npublic_key = \"{KEY}\"\n[[peer]]\naddress = \"10.0.0.3\"\npublic_key = \"{KEY}\"\n"), "peer[1].public_key"),
        ];
        for (text, needle) in cases {
            let e = Config::parse("sw.toml", &text).unwrap_err().to_string();
            assert!(e.starts_with("sw.toml"), "{e}");
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn missing_interfaces_are_named() {
        let dir = tempfile_dir();
        std::fs::create_dir_all(dir.join("vm1-host")).unwrap();
        let c = Config::parse("t.toml", FULL).unwrap();
        let e = c.check_interfaces("t.toml", &dir).unwrap_err().to_string();
        assert!(
            e.contains("port[1].interface") && e.contains("vm2-host"),
            "{e}"
        );
        std::fs::create_dir_all(dir.join("vm2-host")).unwrap();
        let e = c.check_interfaces("t.toml", &dir).unwrap_err().to_string();
        assert!(e.contains("uplink.interface") && e.contains("eth0"), "{e}");
        std::fs::create_dir_all(dir.join("eth0")).unwrap();
        c.check_interfaces("t.toml", &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kangaroo-config-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
