//! The rendezvous: where hosts behind NAT learn each other's endpoints, and the relay between
//! them when no direct path opens (`kangaroo-switch rendezvous`).
//!
//! The rendezvous is itself a secure-tunnel peer of every member: a member's endpoint is the
//! source of its last authenticated packet, so nobody can move another member's endpoint, and
//! its messages cannot be read or forged on the way. A member asks (`{"want": [vteps]}`) every
//! 2 s while some peer has no direct path; the rendezvous answers with the member's own observed
//! endpoint and those of the members asked for, and tells each of those the asker's endpoint
//! at the same moment, so both sides send toward each other at once (UDP hole punching).
//!
//! The relay passes on WireGuard messages between members without opening them (they stay
//! encrypted end to end): only from a member at its observed endpoint, only to a member heard
//! from lately.
//!
//! `SIGHUP` makes a running rendezvous read its file again and take the new member list (members
//! gone or with another key are removed; `listen`, `key_file` and `relay` stay as they were).
//!
//! ```toml
//! listen = "203.0.113.10:51820"           # an address the members reach (not 0.0.0.0)
//! key_file = "/var/lib/kangaroo-rendezvous/private.key"
//! relay = true                            # default
//! [[member]]
//! vtep = "10.1.0.1"
//! public_key = "base64…"
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kangaroo_control::config::RendezvousFile as File;

use crate::secure::{
    control_payload, load_or_create_key, MemberEndpoint, PeerSpec, PublicKey, Received,
    RendezvousMessage, Secure, BUFFER,
};

/// A rendezvous configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousConfig {
    /// Where it listens.
    pub listen: SocketAddrV4,
    /// Its private key's file (created at first start).
    pub key_file: PathBuf,
    /// Whether it relays.
    pub relay: bool,
    /// The members: VTEP address and public key.
    pub members: Vec<(Ipv4Addr, PublicKey)>,
}

impl RendezvousConfig {
    /// Parses `text` (from `origin`, for messages).
    ///
    /// # Errors
    /// A message that names the file and the key.
    pub fn parse(origin: &str, text: &str) -> Result<RendezvousConfig, String> {
        let f: File = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        let bad = |key: &str, why: String| format!("{origin}: {key}: {why}");
        let listen: SocketAddrV4 = f.listen.parse().map_err(|_| {
            bad(
                "listen",
                format!("{:?} is not an IPv4 address:port", f.listen),
            )
        })?;
        if listen.ip().is_unspecified() || listen.port() == 0 {
            return Err(bad(
                "listen",
                "needs the address members reach, and a port (members check that messages come from it)".into(),
            ));
        }
        if f.key_file.as_os_str().is_empty() {
            return Err(bad("key_file", "must not be empty".into()));
        }
        let mut members: Vec<(Ipv4Addr, PublicKey)> = Vec::new();
        for (i, m) in f.member.iter().enumerate() {
            let vtep: Ipv4Addr = m.vtep.parse().map_err(|_| {
                bad(
                    &format!("member[{i}].vtep"),
                    format!("{:?} is not an IPv4 address", m.vtep),
                )
            })?;
            let key: PublicKey =
                m.public_key
                    .parse()
                    .map_err(|e: crate::secure::KeyParseError| {
                        bad(&format!("member[{i}].public_key"), e.to_string())
                    })?;
            if members.iter().any(|(v, k)| *v == vtep || *k == key) {
                return Err(bad(
                    &format!("member[{i}]"),
                    "its vtep or public_key is already another member's".into(),
                ));
            }
            members.push((vtep, key));
        }
        Ok(RendezvousConfig {
            listen,
            key_file: f.key_file,
            relay: f.relay.unwrap_or(true),
            members,
        })
    }

    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// As [`RendezvousConfig::parse`], or the read error.
    pub fn load(path: &Path) -> Result<RendezvousConfig, String> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: {e}"))?;
        Self::parse(&origin, &text)
    }
}

/// Opens the rendezvous of `cfg`: its key (created if new), its socket, its members.
///
/// # Errors
/// A message naming what failed.
pub fn open(cfg: &RendezvousConfig) -> Result<Secure, String> {
    let (keys, _) = load_or_create_key(&cfg.key_file).map_err(|e| format!("key_file: {e}"))?;
    let secure = Secure::open(keys, cfg.listen, 0)
        .map_err(|e| format!("listen: binding {}: {e}", cfg.listen))?;
    secure.serve_relay(cfg.relay);
    sync_members(&secure, cfg)?;
    Ok(secure)
}

/// What [`sync_members`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemberChanges {
    /// Members added (new, or with a new key).
    pub added: usize,
    /// Members removed (gone, or with a new key).
    pub removed: usize,
}

/// Makes `secure`'s members exactly `cfg`'s: members that are gone or whose key changed are
/// removed, new ones added. Members that stay keep their sessions and endpoints.
///
/// # Errors
/// A member that cannot be added (the ones before it are in).
pub fn sync_members(secure: &Secure, cfg: &RendezvousConfig) -> Result<MemberChanges, String> {
    let mut c = MemberChanges::default();
    for p in secure.status() {
        if !cfg.members.contains(&(p.vtep, p.public_key)) && secure.remove_peer(p.vtep) {
            c.removed += 1;
        }
    }
    let have: Vec<Ipv4Addr> = secure.status().iter().map(|p| p.vtep).collect();
    for (i, (vtep, key)) in cfg.members.iter().enumerate() {
        if have.contains(vtep) {
            continue;
        }
        secure
            .add_peer(&PeerSpec {
                vtep: *vtep,
                public_key: *key,
                endpoint: None,
            })
            .map_err(|e| format!("member[{i}].public_key: {e}"))?;
        c.added += 1;
    }
    Ok(c)
}

/// Most members one query may ask for.
pub const MAX_WANTED: usize = 256;

/// The members a query asks for: each VTEP once, never the asker itself, at most
/// [`MAX_WANTED`]; so one query makes at most one message per other member.
fn wanted(m: &RendezvousMessage, asker: Ipv4Addr) -> Vec<Ipv4Addr> {
    let mut seen = std::collections::BTreeSet::new();
    m.want
        .iter()
        .copied()
        .filter(|w| *w != asker && seen.insert(*w))
        .take(MAX_WANTED)
        .collect()
}

/// Answers one member's message: its own endpoint and the wanted members', and tells each
/// wanted member where the asker is.
pub fn answer(secure: &Secure, ip: &[u8]) {
    let Some(src) = ip.get(12..16) else {
        return;
    };
    let asker_vtep = Ipv4Addr::new(src[0], src[1], src[2], src[3]);
    let (Some(asker), Some(m)) = (
        secure.member(asker_vtep),
        control_payload(ip).and_then(|p| serde_json::from_slice::<RendezvousMessage>(p).ok()),
    ) else {
        secure.counters().invalid.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let asker_at = secure.observed(&asker);
    let mut found = Vec::new();
    for w in &wanted(&m, asker_vtep) {
        let Some(member) = secure.member(*w) else {
            continue;
        };
        let Some(at) = secure.observed(&member) else {
            continue;
        };
        found.push(MemberEndpoint {
            vtep: *w,
            endpoint: at,
        });
        if let Some(asker_at) = asker_at {
            secure.send_control(
                Some(&member),
                &RendezvousMessage {
                    you: Some(at),
                    peers: vec![MemberEndpoint {
                        vtep: asker_vtep,
                        endpoint: asker_at,
                    }],
                    ..Default::default()
                },
            );
        }
    }
    secure.send_control(
        Some(&asker),
        &RendezvousMessage {
            you: asker_at,
            peers: found,
            ..Default::default()
        },
    );
}

/// Runs the rendezvous until `stop` is set; each time `reload` is set, it is cleared and
/// `on_reload` runs (between datagrams, on this thread).
pub fn run(secure: &Secure, stop: &AtomicBool, reload: &AtomicBool, on_reload: &mut dyn FnMut()) {
    let (mut datagram, mut out, mut scratch) =
        (vec![0u8; BUFFER], vec![0u8; BUFFER], vec![0u8; BUFFER]);
    let fds = [secure.fd()];
    while !stop.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            on_reload();
        }
        crate::port::packet::wait_readable(&fds, Duration::from_millis(250));
        for _ in 0..1024 {
            match secure.receive_one(&mut datagram, &mut out, &mut scratch) {
                None => break,
                Some(Received::Nothing) => {}
                Some(Received::Packet(n)) => answer(secure, &out[..n]),
            }
        }
        secure.tick(&mut scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_each_other_member_once() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let m = RendezvousMessage {
            want: [vec![b; 256], vec![a; 10], vec![b]].concat(),
            ..Default::default()
        };
        assert_eq!(
            wanted(&m, a),
            vec![b],
            "one message to b, none to the asker"
        );
        let many: Vec<Ipv4Addr> = (0..1000u32)
            .map(|i| Ipv4Addr::from(0x0a01_0000 + i))
            .collect();
        let m = RendezvousMessage {
            want: many.clone(),
            ..Default::default()
        };
        assert_eq!(wanted(&m, a), many[..MAX_WANTED].to_vec());
    }

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn a_reload_adds_new_members_removes_old_ones_and_keeps_the_rest() {
        let key = |b: u8| crate::secure::KeyPair::from_private([b; 32]).public();
        let cfg = |members: &[(u8, u8)]| {
            let mut t = String::from("listen = \"127.0.0.1:1\"\nkey_file = \"k\"\n");
            for (last, k) in members {
                t.push_str(&format!(
                    "[[member]]\nvtep = \"10.1.0.{last}\"\npublic_key = \"{}\"\n",
                    key(*k)
                ));
            }
            RendezvousConfig::parse("rv.toml", &t).unwrap()
        };
        let secure = Secure::open(
            crate::secure::KeyPair::from_private([9; 32]),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            0,
        )
        .unwrap();
        let first = cfg(&[(1, 1), (2, 2), (3, 3)]);
        assert_eq!(
            sync_members(&secure, &first),
            Ok(MemberChanges {
                added: 3,
                removed: 0
            })
        );
        // 1 stays, 2 gets a new key, 3 goes, 4 comes.
        let second = cfg(&[(1, 1), (2, 5), (4, 4)]);
        assert_eq!(
            sync_members(&secure, &second),
            Ok(MemberChanges {
                added: 2,
                removed: 2
            })
        );
        let mut now: Vec<(Ipv4Addr, PublicKey)> = secure
            .status()
            .iter()
            .map(|p| (p.vtep, p.public_key))
            .collect();
        now.sort_by_key(|m| m.0);
        let mut want = second.members.clone();
        want.sort_by_key(|m| m.0);
        assert_eq!(now, want);
        assert_eq!(sync_members(&secure, &second), Ok(MemberChanges::default()));
    }

    #[test]
    fn configurations_parse_and_every_rejection_names_its_key() {
        let c = RendezvousConfig::parse(
            "rv.toml",
            &format!("listen = \"10.0.0.9:51820\"\nkey_file = \"/tmp/k\"\n[[member]]\nvtep = \"10.1.0.1\"\npublic_key = \"{KEY}\"\n"),
        )
        .unwrap();
        assert!(c.relay);
        assert_eq!(c.members.len(), 1);
        for (text, want) in [
            ("listen = \"0.0.0.0:1\"\nkey_file = \"k\"\n".to_owned(), "rv.toml: listen: needs"),
            ("listen = \"10.0.0.9\"\nkey_file = \"k\"\n".to_owned(), "rv.toml: listen: \"10.0.0.9\""),
            ("listen = \"10.0.0.9:1\"\nkey_file = \"\"\n".to_owned(), "rv.toml: key_file"),
            (format!("listen = \"10.0.0.9:1\"\nkey_file = \"k\"\n[[member]]\nvtep = \"x\"\npublic_key = \"{KEY}\"\n"), "member[0].vtep"),
            ("listen = \"10.0.0.9:1\"\nkey_file = \"k\"\n[[member]]\nvtep = \"10.1.0.1\"\npublic_key = \"x\"\n".to_owned(), "member[0].public_key: not a key"),
            (format!("listen = \"10.0.0.9:1\"\nkey_file = \"k\"\n[[member]]\nvtep = \"10.1.0.1\"\npublic_key = \"{KEY}\"\n[[member]]\nvtep = \"10.1.0.2\"\npublic_key = \"{KEY}\"\n"), "member[1]: its vtep or public_key"),
            ("listen = \"10.0.0.9:1\"\nkey_file = \"k\"\nmystery = 1\n".to_owned(), "unknown field `mystery`"),
        ] {
            let e = RendezvousConfig::parse("rv.toml", &text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
