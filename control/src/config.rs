//! The switch's and the rendezvous' configuration files, as typed values.
//!
//! These are the files' shapes only: every key the file may hold, with serde's names, and
//! unknown keys refused (so a typo is an error that names the key). What a value must satisfy
//! (an interface name Linux accepts, a VNI in range, a key that decodes) is checked by the
//! switch when it turns a file into its settings (`kangaroo_switch::config`), where every
//! message names the file and the key. Writing a file: build the value, then
//! [`SwitchFile::to_toml`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mode::Mode;

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not valid TOML, or not the file's shape (the message names the key).
    #[error("{origin}: {source}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// What is wrong.
        #[source]
        source: toml::de::Error,
    },
    /// The value cannot be written as TOML.
    #[error("writing {what} as TOML")]
    Write {
        /// What was being written.
        what: &'static str,
        /// What is wrong.
        #[source]
        source: toml::ser::Error,
    },
}

/// Whether a peer's traffic must be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Plain VXLAN (the underlay is trusted).
    #[default]
    Off,
    /// Only through the secure tunnel; plain VXLAN from the peer is dropped.
    Required,
}

/// A `kangaroo-switch` configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchFile {
    /// Datapath mode (default [`crate::mode::DEFAULT_MODE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Path of the control socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// `[datapath]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathSection>,
    /// `[fdb]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fdb: Option<FdbSection>,
    /// `[storm]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormSection>,
    /// `[[port]]`, one per port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port: Vec<PortSection>,
    /// `[uplink]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkSection>,
    /// `[[peer]]`, one per peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer: Vec<PeerSection>,
    /// `[secure]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<SecureSection>,
}

/// `[secure]`: this host's key and how secure peers find each other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecureSection {
    /// The private key's file (made on first start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// UDP port of the secure tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Seconds between keepalives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_secs: Option<u16>,
    /// The rendezvous, `ADDRESS:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendezvous: Option<String>,
    /// The rendezvous' public key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendezvous_key: Option<String>,
    /// Whether the rendezvous may relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<bool>,
    /// TTL of hole-punching packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub punch_ttl: Option<u8>,
}

/// `[datapath]`: the worker threads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatapathSection {
    /// Cores to pin one worker each to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cores: Vec<usize>,
    /// Busy-poll instead of sleeping in `poll`.
    #[serde(default)]
    pub busy_poll: bool,
}

/// `[fdb]`: the MAC table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FdbSection {
    /// Entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<usize>,
    /// Seconds an unrefreshed learned entry lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aging_secs: Option<u64>,
    /// Entries one port or peer may teach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_source: Option<u32>,
}

/// `[storm]`: per-port limits on broadcast and new MACs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StormSection {
    /// Broadcast, multicast and unknown-unicast frames per second (0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bum_per_sec: Option<u32>,
    /// Their burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bum_burst: Option<u32>,
    /// New source MACs per second (0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_macs_per_sec: Option<u32>,
    /// Their burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_macs_burst: Option<u32>,
}

/// `[[port]]`: an interface the switch takes over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortSection {
    /// The interface.
    pub interface: String,
    /// Its network.
    pub vni: u32,
    /// The only source MAC it may send from (port security).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The only IPv4 addresses it may send from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
}

/// `[uplink]`: the interface toward the other hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// The interface.
    pub interface: String,
    /// This host's VTEP address.
    pub address: String,
    /// VXLAN's UDP port (default 4789).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_port: Option<u16>,
    /// The underlay MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<usize>,
}

/// `[[peer]]`: another host's switch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Its VTEP address.
    pub address: String,
    /// The VNIs it carries (default: every VNI of a local port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnis: Option<Vec<u32>>,
    /// Its public key (base64), for a secure tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Whether its traffic must be encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Where its secure tunnel ends, `ADDRESS:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// A rendezvous' configuration file (`kangaroo-switch rendezvous`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RendezvousFile {
    /// Where it listens, `ADDRESS:PORT`.
    pub listen: String,
    /// Its private key's file.
    pub key_file: PathBuf,
    /// Whether it relays between members that cannot reach each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<bool>,
    /// `[[member]]`, one per switch it serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member: Vec<MemberSection>,
}

/// `[[member]]` of a rendezvous.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    /// The member's VTEP address.
    pub vtep: String,
    /// Its public key (base64).
    pub public_key: String,
}

/// Reads a TOML file's text as `T`; `origin` names it in the error.
///
/// # Errors
/// [`FileError::Parse`], naming the key when one is wrong.
pub fn parse<T: serde::de::DeserializeOwned>(origin: &str, text: &str) -> Result<T, FileError> {
    toml::from_str(text).map_err(|source| FileError::Parse {
        origin: origin.to_owned(),
        source,
    })
}

/// `value` as TOML after a `# header` comment line (when `header` is not empty).
///
/// # Errors
/// [`FileError::Write`] (a value TOML cannot hold).
pub fn to_toml<T: Serialize>(
    what: &'static str,
    header: &str,
    value: &T,
) -> Result<String, FileError> {
    let body = toml::to_string(value).map_err(|source| FileError::Write { what, source })?;
    Ok(if header.is_empty() {
        body
    } else {
        let mut t = String::new();
        for line in header.lines() {
            t.push_str("# ");
            t.push_str(line);
            t.push('\n');
        }
        t.push('\n');
        t.push_str(&body);
        t
    })
}

impl SwitchFile {
    /// The file's text, after a `# header` comment.
    ///
    /// # Errors
    /// [`FileError::Write`].
    pub fn to_toml(&self, header: &str) -> Result<String, FileError> {
        to_toml("a switch configuration", header, self)
    }
}

impl RendezvousFile {
    /// The file's text, after a `# header` comment.
    ///
    /// # Errors
    /// [`FileError::Write`].
    pub fn to_toml(&self, header: &str) -> Result<String, FileError> {
        to_toml("a rendezvous configuration", header, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> SwitchFile {
        SwitchFile {
            mode: Some(Mode::Xdp),
            control_socket: Some("/run/k/s.sock".into()),
            datapath: Some(DatapathSection {
                cores: vec![0, 1],
                busy_poll: true,
            }),
            fdb: Some(FdbSection {
                capacity: Some(4096),
                aging_secs: Some(300),
                max_per_source: Some(100),
            }),
            storm: Some(StormSection {
                bum_per_sec: Some(0),
                ..StormSection::default()
            }),
            port: vec![PortSection {
                interface: "veth0".into(),
                vni: 100,
                mac: Some("02:00:00:00:00:01".into()),
                ips: vec!["10.0.0.2".into()],
            }],
            uplink: Some(UplinkSection {
                interface: "ul0".into(),
                address: "10.210.0.2".into(),
                udp_port: None,
                mtu: Some(1622),
            }),
            peer: vec![PeerSection {
                address: "10.210.0.3".into(),
                vnis: Some(vec![100]),
                public_key: Some("a2V5".into()),
                encryption: Some(Encryption::Required),
                endpoint: None,
            }],
            secure: Some(SecureSection {
                key_file: Some("/var/lib/k/private.key".into()),
                rendezvous: Some("10.209.0.1:51820".into()),
                ..SecureSection::default()
            }),
        }
    }

    #[test]
    fn a_written_file_reads_back_the_same() {
        let f = full();
        let text = f.to_toml("Written for host-1.\nDo not edit.").unwrap();
        assert!(
            text.starts_with("# Written for host-1.\n# Do not edit.\n\n"),
            "{text}"
        );
        assert!(text.contains("mode = \"xdp\""), "{text}");
        let back: SwitchFile = parse("test", &text).unwrap();
        assert_eq!(back, f);
        // An empty file is every default, and writes as nothing.
        assert_eq!(SwitchFile::default().to_toml("").unwrap().trim(), "");
        let empty: SwitchFile = parse("empty", "").unwrap();
        assert_eq!(empty, SwitchFile::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = parse::<SwitchFile>("s.toml", "[uplink]\ninterface = \"ul0\"\naddres = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.toml: ") && e.contains("addres"), "{e}");
        let e = parse::<SwitchFile>("s.toml", "mode = \"dpdk\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dpdk") && e.contains("xdp"), "{e}");
    }

    #[test]
    fn rendezvous_files_round_trip() {
        let r = RendezvousFile {
            listen: "10.209.0.1:51820".into(),
            key_file: "/k/rendezvous.key".into(),
            relay: Some(true),
            member: vec![MemberSection {
                vtep: "10.210.0.2".into(),
                public_key: "a2V5".into(),
            }],
        };
        let text = r.to_toml("the rendezvous").unwrap();
        assert_eq!(parse::<RendezvousFile>("r", &text).unwrap(), r);
    }
}
