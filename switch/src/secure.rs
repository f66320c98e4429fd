//! Secure tunnels: VXLAN carried inside the WireGuard protocol between two switches.
//!
//! The protocol (Noise IK handshake, ChaCha20-Poly1305, the replay window, rekeying, cookies
//! under load) is boringtun's; this module only moves packets in and out of it. What one secure
//! tunnel carries is the IPv4 part of a plain VXLAN packet (outer IPv4, UDP to the VXLAN port,
//! VXLAN header, inner frame), so the receiving switch runs the same underlay checks on a
//! decrypted packet as on a plain one, and a kernel or Open vSwitch peer sees nothing new.
//!
//! Contract:
//! - A peer with `encryption = "required"` is reached only through its tunnel: the switch never
//!   sends it plain VXLAN, and plain VXLAN from its address is dropped and counted
//!   (`cleartext_dropped`) before the switch looks at it.
//! - A decrypted packet is accepted only if its IPv4 source is the VTEP address of the peer whose
//!   key authenticated it (`spoofed` otherwise): one peer cannot speak for another.
//! - The peer's endpoint (address and port its datagrams come from) follows every authenticated
//!   packet, the way WireGuard roams: a host behind NAT is answered where its packets come from.
//! - Nothing here panics on input: every datagram either goes through boringtun or is counted as
//!   one of the reasons in [`SecureCounters`].
//!
//! One [`Secure`] is shared by every datapath worker: its socket is non-blocking and read by
//! whichever worker is polling, each peer's session state sits behind its own mutex, and the
//! workers find peers through a per-worker cache refreshed when the peer set changes
//! ([`Secure::generation`]), so plain traffic takes no lock.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;

/// The UDP port secure tunnels use unless configured otherwise (WireGuard's).
pub const DEFAULT_PORT: u16 = 51820;

/// Bytes a secure tunnel adds in front of and behind a plain VXLAN packet's IPv4 part: an outer
/// IPv4 header (20), UDP (8), the WireGuard data header (16) and the Poly1305 tag (16).
pub const SECURE_OVERHEAD: usize = 60;

/// Handshakes answered per second across all peers before cookies are demanded.
const HANDSHAKE_RATE_LIMIT: u64 = 1000;
/// How often each tunnel's timers run (retries, rekeying, keepalives).
const TICK: Duration = Duration::from_millis(250);
/// A tunnel with no authenticated packet for this long reports its path as down.
const DOWN_AFTER: Duration = Duration::from_secs(30);
/// Bytes in front of a WireGuard message relayed through the rendezvous:
/// `[kind, 0, 0, 0, source VTEP (4), destination VTEP (4)]`.
pub const RELAY_HEADER: usize = 12;
/// Room for a handshake message or an encrypted packet of the largest datagram, relayed.
pub const BUFFER: usize = 65_536 + SECURE_OVERHEAD + RELAY_HEADER;
/// WireGuard's cookie reply (message type 3).
const COOKIE_REPLY: u8 = 3;
/// A datagram for the relay to pass on (first byte; WireGuard's own types are 1 to 4).
const RELAY_TO: u8 = 0xf0;
/// A datagram the relay passed on.
const RELAY_FROM: u8 = 0xf1;
/// A datagram that only opens this side's NAT toward a peer (`[PUNCH, 0, 0, 0]`).
const PUNCH: u8 = 0xf2;
/// The inner UDP port of rendezvous messages (inside the tunnel to the rendezvous).
pub const CONTROL_PORT: u16 = 51821;
/// A peer never heard from directly this long after it was added goes through the relay.
const RELAY_AFTER: Duration = Duration::from_secs(5);
/// While a peer is relayed (or not yet heard directly), a direct probe this often.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often a peer without a session, not relayed and no longer new, is tried directly
/// (WireGuard's rekey timeout).
const RETRY_UNREACHABLE: Duration = Duration::from_secs(5);
/// Rendezvous queries this often while some peer has no direct path, and otherwise.
const QUERY_EVERY: Duration = Duration::from_secs(2);
const QUERY_IDLE: Duration = Duration::from_secs(20);
/// After the rendezvous tells where a peer is, the lower address waits this long before it
/// sends there, so the other side's punches have opened its NAT first.
const HEAD_START: Duration = Duration::from_millis(500);
/// TTL of packets that should open this host's NAT without reaching the peer's (2: the NAT is
/// this host's first hop, and the peer's NAT is further than one hop beyond it).
pub const DEFAULT_PUNCH_TTL: u32 = 2;

/// A peer's public key (Curve25519), written in base64 as WireGuard tools do.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

/// Text that is not a base64 32-byte key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a key: expected 32 bytes in base64 (44 characters, as `wg pubkey` prints)")]
pub struct KeyParseError;

impl std::str::FromStr for PublicKey {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| KeyParseError)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyParseError)?;
        Ok(PublicKey(key))
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub use kangaroo_control::config::Encryption;

/// This host's static key pair.
pub struct KeyPair {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
}

impl KeyPair {
    /// A key pair from a private key's bytes.
    pub fn from_private(bytes: [u8; 32]) -> KeyPair {
        let secret = x25519::StaticSecret::from(bytes);
        let public = x25519::PublicKey::from(&secret);
        KeyPair { secret, public }
    }

    /// A fresh key pair from the kernel's random source.
    ///
    /// # Errors
    /// The I/O error reading `/dev/urandom`.
    pub fn generate() -> io::Result<KeyPair> {
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(KeyPair::from_private(b))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(*self.public.as_bytes())
    }
}

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or writing it failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Group or others may read it.
    #[error("{path}: mode {mode:04o} lets others read the private key; chmod 600 it")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a base64 32-byte key.
    #[error("{path}: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: KeyParseError,
    },
}

/// Loads this host's private key from `path`, or creates it there (mode 0600, in a directory
/// made 0700 if missing) on first start. Returns the pair and whether it was created.
///
/// # Errors
/// [`KeyFileError`] naming the file.
pub fn load_or_create_key(path: &Path) -> Result<(KeyPair, bool), KeyFileError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io_err = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
            let text = std::fs::read_to_string(path).map_err(io_err)?;
            let key: PublicKey = text.parse().map_err(|source| KeyFileError::Malformed {
                path: path.to_owned(),
                source,
            })?;
            Ok((KeyPair::from_private(key.0), false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err)?;
            }
            let pair = KeyPair::generate().map_err(io_err)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err)?;
            let text = base64::engine::general_purpose::STANDARD.encode(pair.secret.to_bytes());
            f.write_all(format!("{text}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_err)?;
            Ok((pair, true))
        }
        Err(e) => Err(io_err(e)),
    }
}

/// A secure peer as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its VTEP address (the source of the VXLAN packets it tunnels).
    pub vtep: Ipv4Addr,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where to send until it is heard from (default: its VTEP address, this host's port).
    pub endpoint: Option<SocketAddrV4>,
}

macro_rules! secure_counters {
    ($($(#[doc = $doc:expr])* $field:ident,)*) => {
        /// What happened to secure-tunnel traffic, switch-wide.
        #[derive(Debug, Default)]
        pub struct SecureCounters {
            $($(#[doc = $doc])* pub $field: AtomicU64,)*
        }

        impl SecureCounters {
            /// Every counter as (name, value).
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

secure_counters! {
    /// VXLAN packets encrypted and sent.
    encrypted,
    /// Datagrams decrypted into VXLAN packets.
    decrypted,
    /// Handshake messages sent (initiations, responses, cookie replies).
    handshakes_sent,
    /// Handshakes completed (either side).
    handshakes_completed,
    /// Keepalives received.
    keepalives,
    /// Plain VXLAN from a peer that requires encryption, dropped.
    cleartext_dropped,
    /// Datagrams whose authentication failed (wrong key, bad MAC or tag), dropped.
    auth_failed,
    /// Data packets whose counter was already seen or is outside the window (replays), dropped.
    replayed,
    /// Handshakes from a key that is no configured peer's, dropped.
    unknown_key,
    /// Decrypted packets whose source is not the peer's VTEP address, dropped.
    spoofed,
    /// Datagrams that are not the protocol's messages, or arrive out of turn, dropped.
    invalid,
    /// Handshake initiations refused while under load (a cookie was sent instead).
    under_load,
    /// Packets that could not be sent (socket full, no route).
    send_failed,
    /// Times a peer's endpoint changed (it roamed, or its NAT mapping did).
    endpoint_changes,
    /// Datagrams sent to a peer through the relay.
    relayed_tx,
    /// Datagrams from a peer that came through the relay.
    relayed_rx,
    /// Direct probes sent to peers without a direct path (hole punching).
    probes,
    /// Hole-punching datagrams received (they carry nothing).
    punches,
    /// Paths that became direct after being relayed or never open.
    direct_opened,
    /// Paths that fell back to the relay.
    relay_fallbacks,
    /// Messages from the rendezvous taken (endpoints learned).
    rendezvous_messages,
    /// Relay: datagrams passed on between members.
    relay_forwarded,
    /// Relay: datagrams refused (sender not a member at its observed endpoint, or the
    /// destination not a member heard from).
    relay_refused,
}

/// One secure peer's live state.
pub struct SecurePeer {
    vtep: Ipv4Addr,
    public_key: PublicKey,
    configured: SocketAddrV4,
    index: u32,
    /// The rendezvous (not a VXLAN peer: its packets are rendezvous messages).
    rendezvous: bool,
    tunn: Mutex<Tunn>,
    endpoint: Mutex<SocketAddrV4>,
    tx_packets: AtomicU64,
    rx_packets: AtomicU64,
    /// Milliseconds since [`Secure`] started of the last authenticated packet (0: never).
    last_rx_ms: AtomicU64,
    /// ... of the last one that came directly, not through the relay (0: never).
    last_direct_ms: AtomicU64,
    /// When the peer was added.
    added_ms: u64,
    /// Sent through the relay (no direct path).
    relayed: AtomicBool,
    /// When the next direct probe is due.
    next_probe_ms: AtomicU64,
    /// When the rendezvous last gave a new endpoint (0: never).
    learned_ms: AtomicU64,
    /// When this side last answered a handshake initiation, until the initiator's first packet
    /// (0: none pending).
    answered_ms: AtomicU64,
    /// The last handshake's round trip, milliseconds + 1 (0: none yet), on either side: the
    /// initiator's from boringtun, the responder's from its answer to the initiator's first
    /// packet.
    rtt_ms: AtomicU64,
}

/// Which way a datagram goes to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct(SocketAddrV4),
    Relay,
}

/// A secure peer's state, as the control API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// Its VTEP address.
    pub vtep: Ipv4Addr,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where its datagrams are sent now.
    pub endpoint: SocketAddrV4,
    /// `direct` while authenticated packets arrive from the peer itself, `relayed` while they
    /// come through the relay, `down` otherwise.
    pub path: &'static str,
    /// Seconds since the last authenticated packet that came directly.
    pub last_direct_secs: Option<u64>,
    /// Round-trip time of the last handshake, milliseconds.
    pub rtt_ms: Option<u32>,
    /// Seconds since the current session's handshake.
    pub handshake_age_secs: Option<u64>,
    /// Seconds since the last authenticated packet.
    pub last_rx_secs: Option<u64>,
    /// Packets sent through the tunnel.
    pub tx_packets: u64,
    /// Packets received through it.
    pub rx_packets: u64,
}

struct Peers {
    by_vtep: HashMap<Ipv4Addr, Arc<SecurePeer>>,
    by_index: HashMap<u32, Arc<SecurePeer>>,
    by_key: HashMap<[u8; 32], Arc<SecurePeer>>,
    next_index: u32,
}

/// Why a secure peer cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerSpecError {
    /// Another peer already has this key.
    #[error("public key {key} is already peer {vtep}'s")]
    KeyInUse {
        /// The key.
        key: PublicKey,
        /// The peer that has it.
        vtep: Ipv4Addr,
    },
    /// The key is this host's own.
    #[error("public key {0} is this host's own")]
    OwnKey(PublicKey),
    /// A rendezvous is already set.
    #[error("a rendezvous is already set")]
    RendezvousSet,
}

/// Where the rendezvous is and what it does for this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousSpec {
    /// Its address and port.
    pub endpoint: SocketAddrV4,
    /// Its public key.
    pub public_key: PublicKey,
    /// Whether it also relays, when no direct path opens.
    pub relay: bool,
}

struct Rendezvous {
    peer: Arc<SecurePeer>,
    relay: bool,
    next_query_ms: AtomicU64,
    /// This host's endpoint as the rendezvous sees it.
    public_endpoint: Mutex<Option<SocketAddrV4>>,
}

/// A rendezvous message (inside the tunnel, JSON over UDP to [`CONTROL_PORT`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RendezvousMessage {
    /// A member asks where these VTEPs' hosts are (and for them to be told where it is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub want: Vec<Ipv4Addr>,
    /// The rendezvous tells a member its own endpoint as observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub you: Option<SocketAddrV4>,
    /// ... and other members' observed endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<MemberEndpoint>,
}

/// A member's VTEP address and its endpoint as the rendezvous observes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberEndpoint {
    /// Its VTEP address.
    pub vtep: Ipv4Addr,
    /// Where its datagrams come from.
    pub endpoint: SocketAddrV4,
}

/// The secure tunnels of one switch: its key, its socket and its peers.
pub struct Secure {
    keys: KeyPair,
    vtep: Ipv4Addr,
    rendezvous: std::sync::OnceLock<Rendezvous>,
    relay_server: AtomicBool,
    punch_ttl: std::sync::atomic::AtomicU32,
    /// Sends to one peer are batched into segmented sends (until the kernel refuses one).
    segmented: AtomicBool,
    socket: UdpSocket,
    port: u16,
    keepalive: Option<u16>,
    /// Counts handshakes (once each, here in [`Self::take`]) and answers with cookies past the
    /// limit.
    rate_limiter: Arc<RateLimiter>,
    /// What each tunnel checks messages with again: the MACs only, never a second count (two
    /// counts halved the limit, and a cookie demanded inside the tunnel looked like a reply).
    verifier: Arc<RateLimiter>,
    peers: RwLock<Peers>,
    generation: AtomicU64,
    counters: SecureCounters,
    started: Instant,
    next_tick: Mutex<Instant>,
    next_reset: Mutex<Instant>,
}

/// Encrypted datagrams to one peer waiting to leave in one segmented send (UDP GSO): every one
/// the same size but the last. A datapath worker keeps one and flushes it at the end of each
/// batch of frames ([`Secure::flush`]).
pub struct TxBatch {
    buf: Vec<u8>,
    len: usize,
    segment: usize,
    count: usize,
    /// No more fit: the last one was shorter than the segment.
    closed: bool,
    to: Option<(SocketAddrV4, Arc<SecurePeer>)>,
}

/// Bytes one segmented send may carry: an IPv4 datagram's limit less its headers.
const TX_BATCH_BYTES: usize = 65_535 - 20 - 8;

impl Default for TxBatch {
    fn default() -> TxBatch {
        TxBatch {
            buf: vec![0; TX_BATCH_BYTES],
            len: 0,
            segment: 0,
            count: 0,
            closed: false,
            to: None,
        }
    }
}

impl TxBatch {
    /// True when a datagram of `n` bytes to `to` may join the ones waiting.
    fn takes(&self, to: SocketAddrV4, n: usize) -> bool {
        (self.count == 0 && n <= self.buf.len())
            || (!self.closed
                && self.to.as_ref().is_some_and(|(t, _)| *t == to)
                && self.count < crate::sys::MAX_SEGMENTS
                && n <= self.segment
                && self.len + n <= self.buf.len())
    }

    /// Adds a datagram; [`Self::takes`] said it may.
    fn push(&mut self, peer: &Arc<SecurePeer>, to: SocketAddrV4, datagram: &[u8]) {
        if self.count == 0 {
            self.segment = datagram.len();
            self.to = Some((to, peer.clone()));
        }
        let Some(dst) = self.buf.get_mut(self.len..self.len + datagram.len()) else {
            return;
        };
        dst.copy_from_slice(datagram);
        self.len += datagram.len();
        self.count += 1;
        self.closed = datagram.len() < self.segment;
    }
}

/// How one received datagram was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Nothing for the switch (a handshake, a keepalive, or a counted drop).
    Nothing,
    /// A decrypted VXLAN packet of this many bytes.
    Packet(usize),
}

/// True for a WireGuard transport data message (type 4), false for handshake messages.
fn is_data_message(m: &[u8]) -> bool {
    m.first() == Some(&4)
}

fn io_err_is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(libc::ENOBUFS | libc::EMSGSIZE | libc::EHOSTUNREACH | libc::ENETUNREACH)
            | Some(libc::ECONNREFUSED | libc::EPERM)
    )
}

impl SecurePeer {
    /// Its VTEP address.
    pub fn vtep(&self) -> Ipv4Addr {
        self.vtep
    }
}

impl Secure {
    /// Binds `bind` (this host's VTEP address and the secure port) with `keys`;
    /// `keepalive` (seconds, 0: off) keeps NAT mappings and the path state fresh.
    ///
    /// # Errors
    /// The socket's I/O error.
    pub fn open(keys: KeyPair, bind: SocketAddrV4, keepalive: u16) -> io::Result<Secure> {
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        let port = socket.local_addr()?.port();
        let rate_limiter = Arc::new(RateLimiter::new(&keys.public, HANDSHAKE_RATE_LIMIT));
        let verifier = Arc::new(RateLimiter::new(&keys.public, u64::MAX));
        let now = Instant::now();
        Ok(Secure {
            keys,
            vtep: *bind.ip(),
            rendezvous: std::sync::OnceLock::new(),
            relay_server: AtomicBool::new(false),
            punch_ttl: std::sync::atomic::AtomicU32::new(DEFAULT_PUNCH_TTL),
            segmented: AtomicBool::new(true),
            socket,
            port,
            keepalive: (keepalive > 0).then_some(keepalive),
            rate_limiter,
            verifier,
            peers: RwLock::new(Peers {
                by_vtep: HashMap::new(),
                by_index: HashMap::new(),
                by_key: HashMap::new(),
                next_index: 1,
            }),
            generation: AtomicU64::new(0),
            counters: SecureCounters::default(),
            started: now,
            next_tick: Mutex::new(now),
            next_reset: Mutex::new(now),
        })
    }

    /// Answers at most `per_second` handshakes a second before demanding cookies.
    #[cfg(test)]
    fn limit_handshakes(&mut self, per_second: u64) {
        self.rate_limiter = Arc::new(RateLimiter::new(&self.keys.public, per_second));
    }

    /// This host's public key.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public()
    }

    /// The UDP port the tunnels use here.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The counters.
    pub fn counters(&self) -> &SecureCounters {
        &self.counters
    }

    /// Changes whenever the peer set does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The socket's descriptor (readable when datagrams arrive).
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }

    fn read_peers(&self) -> std::sync::RwLockReadGuard<'_, Peers> {
        self.peers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_peers(&self) -> std::sync::RwLockWriteGuard<'_, Peers> {
        self.peers.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the secure peer, or keeps it if it is already there with the same key (the call is
    /// idempotent: every datapath worker makes it); a new key replaces the old sessions.
    ///
    /// # Errors
    /// [`PeerSpecError`] if the key is another peer's or this host's own.
    pub fn add_peer(&self, spec: &PeerSpec) -> Result<(), PeerSpecError> {
        if spec.public_key == self.public_key() {
            return Err(PeerSpecError::OwnKey(spec.public_key));
        }
        let mut peers = self.write_peers();
        if let Some(other) = peers.by_key.get(&spec.public_key.0) {
            if other.vtep != spec.vtep {
                return Err(PeerSpecError::KeyInUse {
                    key: spec.public_key,
                    vtep: other.vtep,
                });
            }
        }
        let configured = spec
            .endpoint
            .unwrap_or(SocketAddrV4::new(spec.vtep, self.port));
        if let Some(p) = peers.by_vtep.get(&spec.vtep) {
            if p.public_key == spec.public_key && p.configured == configured {
                return Ok(());
            }
        }
        Self::remove_locked(&mut peers, spec.vtep);
        let peer = self.new_peer(&mut peers, spec.vtep, spec.public_key, configured, false);
        peers.by_vtep.insert(spec.vtep, peer.clone());
        peers.by_index.insert(peer.index, peer.clone());
        peers.by_key.insert(spec.public_key.0, peer);
        drop(peers);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn new_peer(
        &self,
        peers: &mut Peers,
        vtep: Ipv4Addr,
        public_key: PublicKey,
        configured: SocketAddrV4,
        rendezvous: bool,
    ) -> Arc<SecurePeer> {
        let index = peers.next_index;
        // Tunnel indices are 24 bits; 16 million peer changes wrap around.
        peers.next_index = (index % 0x00ff_ffff) + 1;
        let tunn = Tunn::new(
            self.keys.secret.clone(),
            x25519::PublicKey::from(public_key.0),
            None,
            self.keepalive,
            index,
            Some(self.verifier.clone()),
        );
        Arc::new(SecurePeer {
            vtep,
            public_key,
            configured,
            index,
            rendezvous,
            tunn: Mutex::new(tunn),
            endpoint: Mutex::new(configured),
            tx_packets: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
            last_rx_ms: AtomicU64::new(0),
            last_direct_ms: AtomicU64::new(0),
            added_ms: self.elapsed_ms(),
            relayed: AtomicBool::new(false),
            next_probe_ms: AtomicU64::new(0),
            learned_ms: AtomicU64::new(0),
            answered_ms: AtomicU64::new(0),
            rtt_ms: AtomicU64::new(0),
        })
    }

    /// Uses the rendezvous `spec` (once; later calls are refused): this host asks it where its
    /// peers are, and, if it relays, sends through it to peers no direct path reaches. Its
    /// messages come from its endpoint's address inside the tunnel.
    ///
    /// # Errors
    /// [`PeerSpecError`] if its key is a peer's or this host's own, or one is already set.
    pub fn set_rendezvous(&self, spec: &RendezvousSpec) -> Result<(), PeerSpecError> {
        if self.rendezvous.get().is_some() {
            return Err(PeerSpecError::RendezvousSet);
        }
        if spec.public_key == self.public_key() {
            return Err(PeerSpecError::OwnKey(spec.public_key));
        }
        let mut peers = self.write_peers();
        if let Some(other) = peers.by_key.get(&spec.public_key.0) {
            return Err(PeerSpecError::KeyInUse {
                key: spec.public_key,
                vtep: other.vtep,
            });
        }
        let peer = self.new_peer(
            &mut peers,
            *spec.endpoint.ip(),
            spec.public_key,
            spec.endpoint,
            true,
        );
        let rv = Rendezvous {
            peer: peer.clone(),
            relay: spec.relay,
            next_query_ms: AtomicU64::new(0),
            public_endpoint: Mutex::new(None),
        };
        if self.rendezvous.set(rv).is_err() {
            return Err(PeerSpecError::RendezvousSet);
        }
        peers.by_index.insert(peer.index, peer.clone());
        peers.by_key.insert(spec.public_key.0, peer);
        Ok(())
    }

    /// Sets the TTL of hole-punching packets (0: the normal TTL, no limit).
    pub fn set_punch_ttl(&self, ttl: u32) {
        self.punch_ttl.store(ttl, Ordering::Relaxed);
    }

    /// Makes this `Secure` a relay: datagrams a member (a peer heard from at its endpoint)
    /// addresses to another member are passed on, still encrypted end to end.
    pub fn serve_relay(&self, on: bool) {
        self.relay_server.store(on, Ordering::Relaxed);
    }

    /// Bytes a secure tunnel adds to a VXLAN packet's IPv4 part here (more when a relay may
    /// carry it).
    pub fn overhead(&self) -> usize {
        SECURE_OVERHEAD + if self.relays() { RELAY_HEADER } else { 0 }
    }

    fn relays(&self) -> bool {
        self.rendezvous.get().is_some_and(|r| r.relay)
    }

    /// This host's endpoint as the rendezvous last saw it.
    pub fn public_endpoint(&self) -> Option<SocketAddrV4> {
        self.rendezvous
            .get()
            .and_then(|r| *r.public_endpoint.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The rendezvous' endpoint, its path and its packet counts, if one is set.
    pub fn rendezvous_status(&self) -> Option<PeerStatus> {
        self.rendezvous.get().map(|r| self.peer_status(&r.peer))
    }

    /// Removes the secure peer at `vtep`; true if there was one.
    pub fn remove_peer(&self, vtep: Ipv4Addr) -> bool {
        let removed = Self::remove_locked(&mut self.write_peers(), vtep);
        if removed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        removed
    }

    fn remove_locked(peers: &mut Peers, vtep: Ipv4Addr) -> bool {
        let Some(p) = peers.by_vtep.remove(&vtep) else {
            return false;
        };
        peers.by_index.remove(&p.index);
        peers.by_key.remove(&p.public_key.0);
        true
    }

    /// True if `vtep` is a secure peer.
    pub fn is_secure(&self, vtep: Ipv4Addr) -> bool {
        self.read_peers().by_vtep.contains_key(&vtep)
    }

    /// The secure peers by VTEP address (for a worker's cache).
    pub fn snapshot(&self) -> HashMap<Ipv4Addr, Arc<SecurePeer>> {
        self.read_peers().by_vtep.clone()
    }

    /// Sets where the peer at `vtep` is reached (the rendezvous learned it); true if it is a
    /// secure peer.
    pub fn set_endpoint(&self, vtep: Ipv4Addr, endpoint: SocketAddrV4) -> bool {
        match self.read_peers().by_vtep.get(&vtep) {
            Some(p) => {
                self.move_endpoint(p, endpoint);
                true
            }
            None => false,
        }
    }

    fn move_endpoint(&self, p: &SecurePeer, to: SocketAddrV4) {
        let mut e = p.endpoint.lock().unwrap_or_else(|p| p.into_inner());
        if *e != to {
            *e = to;
            self.counters
                .endpoint_changes
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn elapsed_ms(&self) -> u64 {
        // Never 0, so 0 can mean "never".
        (self.started.elapsed().as_millis() as u64).max(1)
    }

    /// Each secure peer's state.
    pub fn status(&self) -> Vec<PeerStatus> {
        let peers: Vec<Arc<SecurePeer>> = self.read_peers().by_vtep.values().cloned().collect();
        let mut out: Vec<PeerStatus> = peers.iter().map(|p| self.peer_status(p)).collect();
        out.sort_by_key(|s| s.vtep);
        out
    }

    fn peer_status(&self, p: &SecurePeer) -> PeerStatus {
        let now = self.elapsed_ms();
        let (age, _, _, _, initiated) = p.tunn.lock().unwrap_or_else(|e| e.into_inner()).stats();
        let rtt = match p.rtt_ms.load(Ordering::Relaxed) {
            0 => initiated,
            ms => u32::try_from(ms - 1).ok(),
        };
        let ago = |ms: u64| (ms > 0).then(|| Duration::from_millis(now.saturating_sub(ms)));
        let since = ago(p.last_rx_ms.load(Ordering::Relaxed));
        let direct = ago(p.last_direct_ms.load(Ordering::Relaxed));
        PeerStatus {
            vtep: p.vtep,
            public_key: p.public_key,
            endpoint: Self::endpoint(p),
            path: match since {
                Some(s) if s < DOWN_AFTER && age.is_some() => {
                    if p.relayed.load(Ordering::Relaxed) {
                        "relayed"
                    } else {
                        "direct"
                    }
                }
                _ => "down",
            },
            last_direct_secs: direct.map(|s| s.as_secs()),
            rtt_ms: rtt,
            handshake_age_secs: age.map(|a| a.as_secs()),
            last_rx_secs: since.map(|s| s.as_secs()),
            tx_packets: p.tx_packets.load(Ordering::Relaxed),
            rx_packets: p.rx_packets.load(Ordering::Relaxed),
        }
    }

    fn route(&self, p: &SecurePeer) -> Route {
        if p.relayed.load(Ordering::Relaxed) && self.relays() {
            Route::Relay
        } else {
            Route::Direct(Self::endpoint(p))
        }
    }

    /// Sends the WireGuard message `framed[RELAY_HEADER..]` to `peer` along `route`;
    /// `framed[..RELAY_HEADER]` is room for the relay's header.
    fn send_framed(&self, peer: &SecurePeer, route: Route, framed: &mut [u8]) -> bool {
        match route {
            Route::Direct(to) => self.send_direct(peer, &framed[RELAY_HEADER..], to),
            Route::Relay => {
                let Some(rv) = self.rendezvous.get() else {
                    return false;
                };
                framed[..4].copy_from_slice(&[RELAY_TO, 0, 0, 0]);
                framed[4..8].copy_from_slice(&self.vtep.octets());
                framed[8..12].copy_from_slice(&peer.vtep.octets());
                let sent = self.send_to(framed, Self::endpoint(&rv.peer));
                if sent {
                    self.counters.relayed_tx.fetch_add(1, Ordering::Relaxed);
                }
                sent
            }
        }
    }

    /// [`Self::send_framed`] for a message without room in front.
    fn send_message(&self, peer: &SecurePeer, route: Route, message: &[u8]) -> bool {
        match route {
            Route::Direct(to) => self.send_direct(peer, message, to),
            Route::Relay => {
                let mut framed = vec![0u8; RELAY_HEADER + message.len()];
                framed[RELAY_HEADER..].copy_from_slice(message);
                self.send_framed(peer, route, &mut framed)
            }
        }
    }

    /// Sends straight to `peer` at `to`; with a short TTL while this side must only open its
    /// own NAT ([`Self::punch_only`]).
    fn send_direct(&self, peer: &SecurePeer, packet: &[u8], to: SocketAddrV4) -> bool {
        let ttl = self.punch_ttl.load(Ordering::Relaxed);
        if ttl > 0 && self.punch_only(peer) {
            let sent = crate::sys::send_to_with_ttl(&self.socket, packet, to, ttl);
            if sent.is_err() {
                self.counters.send_failed.fetch_add(1, Ordering::Relaxed);
            }
            return sent.is_ok();
        }
        self.send_to(packet, to)
    }

    /// True while what this host sends `peer` directly must not reach the peer's NAT: before
    /// the peer was ever heard directly, on the side with the higher address, and on the other
    /// side for a moment after the rendezvous told where the peer is. A packet that reaches a
    /// NAT before its host has sent the other way makes that NAT (Linux conntrack among them)
    /// track it and give the host's own packets another port, and the path never opens.
    fn punch_only(&self, p: &SecurePeer) -> bool {
        if self.rendezvous.get().is_none()
            || p.rendezvous
            || p.last_direct_ms.load(Ordering::Relaxed) > 0
        {
            return false;
        }
        let learned = p.learned_ms.load(Ordering::Relaxed);
        self.vtep > p.vtep
            || (learned > 0 && self.elapsed_ms() < learned + HEAD_START.as_millis() as u64)
    }

    fn send_to(&self, packet: &[u8], to: SocketAddrV4) -> bool {
        match self.socket.send_to(packet, to) {
            Ok(_) => true,
            Err(e) => {
                if !io_err_is_transient(&e) {
                    tracing::warn!(to = %to, error = %e, "secure tunnel send failed");
                }
                self.counters.send_failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn endpoint(p: &SecurePeer) -> SocketAddrV4 {
        *p.endpoint.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encrypts `ip` (the IPv4 part of a VXLAN packet) for `peer` and sends it, using `buf`
    /// (at least `ip.len()` + [`SECURE_OVERHEAD`] and 148 bytes) for the result. Without a
    /// session yet, the packet waits in the tunnel's queue while a handshake is sent. Returns
    /// false if it could not be sent.
    pub fn encrypt_and_send(&self, peer: &SecurePeer, ip: &[u8], buf: &mut [u8]) -> bool {
        self.encrypt(peer, ip, buf, None)
    }

    /// [`Self::encrypt_and_send`], except that a data packet going directly to the peer joins
    /// `batch`, to leave with the others in one system call at [`Self::flush`] (or when the
    /// next one cannot join). Returns false if it could not be encrypted or sent; a batched
    /// send that fails later is counted in `send_failed`.
    pub fn encrypt_and_queue(
        &self,
        peer: &Arc<SecurePeer>,
        ip: &[u8],
        buf: &mut [u8],
        batch: &mut TxBatch,
    ) -> bool {
        self.encrypt(peer, ip, buf, Some((peer, batch)))
    }

    fn encrypt(
        &self,
        peer: &SecurePeer,
        ip: &[u8],
        buf: &mut [u8],
        batch: Option<(&Arc<SecurePeer>, &mut TxBatch)>,
    ) -> bool {
        if buf.len() < ip.len() + SECURE_OVERHEAD + RELAY_HEADER || buf.len() < 148 + RELAY_HEADER {
            self.counters.send_failed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let route = self.route(peer);
        let mut tunn = peer.tunn.lock().unwrap_or_else(|e| e.into_inner());
        match tunn.encapsulate(ip, &mut buf[RELAY_HEADER..]) {
            TunnResult::WriteToNetwork(out) => {
                // A data message, or the handshake initiation the packet now waits for.
                let data = is_data_message(out);
                let n = out.len();
                drop(tunn);
                if let (true, Route::Direct(to), Some((p, batch))) = (data, route, batch) {
                    let punching = self.punch_ttl.load(Ordering::Relaxed) > 0 && self.punch_only(p);
                    if !punching && self.segmented.load(Ordering::Relaxed) {
                        if !batch.takes(to, n) {
                            self.flush(batch);
                        }
                        if batch.takes(to, n) {
                            batch.push(p, to, &buf[RELAY_HEADER..RELAY_HEADER + n]);
                            return true;
                        }
                    }
                    // Sent on its own, after what waits.
                    self.flush(batch);
                }
                let sent = self.send_framed(peer, route, &mut buf[..RELAY_HEADER + n]);
                if data {
                    if sent {
                        peer.tx_packets.fetch_add(1, Ordering::Relaxed);
                        self.counters.encrypted.fetch_add(1, Ordering::Relaxed);
                    }
                } else if sent {
                    self.counters
                        .handshakes_sent
                        .fetch_add(1, Ordering::Relaxed);
                }
                sent
            }
            TunnResult::Done => true,
            TunnResult::Err(e) => {
                drop(tunn);
                tracing::debug!(peer = %peer.vtep, error = ?e, "secure tunnel could not encrypt");
                self.counters.send_failed.fetch_add(1, Ordering::Relaxed);
                false
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => true,
        }
    }

    /// Sends what waits in `batch`: one segmented send, or one plain send for one datagram. A
    /// kernel or route that cannot segment turns batching off for good (it is said once in
    /// the log) and the datagrams go one by one.
    pub fn flush(&self, batch: &mut TxBatch) {
        let Some((to, peer)) = batch.to.take() else {
            return;
        };
        let (count, len, segment) = (batch.count, batch.len, batch.segment);
        batch.count = 0;
        batch.len = 0;
        batch.closed = false;
        let packets = &batch.buf[..len];
        let sent = if count == 1 {
            self.send_to(packets, to).then_some(1)
        } else {
            match crate::sys::send_segmented(
                &self.socket,
                packets,
                to,
                u16::try_from(segment).unwrap_or(u16::MAX),
            ) {
                Ok(_) => Some(count),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                    tracing::warn!(error = %e, "secure tunnel: the kernel does not segment UDP here; sending datagrams one by one");
                    self.segmented.store(false, Ordering::Relaxed);
                    let ok = packets
                        .chunks(segment.max(1))
                        .filter(|d| self.send_to(d, to))
                        .count();
                    Some(ok)
                }
                Err(e) => {
                    if !io_err_is_transient(&e) {
                        tracing::warn!(to = %to, error = %e, "secure tunnel send failed");
                    }
                    self.counters
                        .send_failed
                        .fetch_add(count as u64, Ordering::Relaxed);
                    None
                }
            }
        };
        if let Some(n) = sent {
            peer.tx_packets.fetch_add(n as u64, Ordering::Relaxed);
            self.counters
                .encrypted
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Receives one datagram from the socket into `datagram` and takes it: handshakes are
    /// answered, a data packet is decrypted into `out`. Returns `None` when the socket is empty.
    /// `datagram` and `scratch` (what is sent in reply) should hold [`BUFFER`] bytes.
    pub fn receive_one(
        &self,
        datagram: &mut [u8],
        out: &mut [u8],
        scratch: &mut [u8],
    ) -> Option<Received> {
        let (n, from) = match self.socket.recv_from(datagram) {
            Ok((n, SocketAddr::V4(from))) => (n, from),
            Ok((_, SocketAddr::V6(_))) => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                return Some(Received::Nothing);
            }
            Err(_) => return None,
        };
        Some(self.take(&datagram[..n], from, out, scratch))
    }

    /// Takes one datagram that came from `from` ([`Self::receive_one`] after its `recv`):
    /// `out` receives a decrypted packet, `scratch` (both at least [`BUFFER`] bytes) holds
    /// replies. A peer's endpoint moves to `from` only on a message that authenticates it.
    pub fn take(
        &self,
        datagram: &[u8],
        from: SocketAddrV4,
        out: &mut [u8],
        scratch: &mut [u8],
    ) -> Received {
        let c = &self.counters;
        let mut relayed_from = None;
        let datagram = match datagram.first() {
            Some(&RELAY_TO) => {
                self.pass_on(datagram, from, scratch);
                return Received::Nothing;
            }
            Some(&PUNCH) => {
                c.punches.fetch_add(1, Ordering::Relaxed);
                return Received::Nothing;
            }
            Some(&RELAY_FROM) => match (self.rendezvous.get(), datagram.get(4..8)) {
                (Some(rv), Some(src)) if rv.relay && Self::endpoint(&rv.peer) == from => {
                    relayed_from = Some(Ipv4Addr::new(src[0], src[1], src[2], src[3]));
                    &datagram[RELAY_HEADER.min(datagram.len())..]
                }
                _ => {
                    c.invalid.fetch_add(1, Ordering::Relaxed);
                    return Received::Nothing;
                }
            },
            _ => datagram,
        };
        let route = match relayed_from {
            Some(_) => Route::Relay,
            None => Route::Direct(from),
        };
        if datagram.len() > out.len() {
            // boringtun needs room for the whole ciphertext.
            c.invalid.fetch_add(1, Ordering::Relaxed);
            return Received::Nothing;
        }
        let src = Some(IpAddr::V4(*from.ip()));
        let packet = match self.rate_limiter.verify_packet(src, datagram, scratch) {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                c.under_load.fetch_add(1, Ordering::Relaxed);
                // The cookie goes back the way the handshake came: to a relayed peer through
                // the relay (its source here is the rendezvous, which would drop it).
                let sent = match relayed_from {
                    None => self.send_to(cookie, from),
                    Some(vtep) => {
                        let peer = self.read_peers().by_vtep.get(&vtep).cloned();
                        peer.is_some_and(|p| self.send_message(&p, Route::Relay, cookie))
                    }
                };
                if sent {
                    c.handshakes_sent.fetch_add(1, Ordering::Relaxed);
                }
                return Received::Nothing;
            }
            Err(TunnResult::Err(e)) => {
                self.count_error(&e);
                return Received::Nothing;
            }
            Err(_) => {
                c.invalid.fetch_add(1, Ordering::Relaxed);
                return Received::Nothing;
            }
        };
        let mut is_init = false;
        let (peer, is_data, is_handshake) = {
            let peers = self.read_peers();
            let (peer, is_data, is_handshake) = match &packet {
                Packet::HandshakeInit(init) => {
                    is_init = true;
                    match parse_handshake_anon(&self.keys.secret, &self.keys.public, init) {
                        Ok(half) => (
                            peers.by_key.get(&half.peer_static_public).cloned(),
                            false,
                            true,
                        ),
                        Err(e) => {
                            drop(peers);
                            self.count_error(&e);
                            return Received::Nothing;
                        }
                    }
                }
                Packet::HandshakeResponse(r) => (
                    peers.by_index.get(&(r.receiver_idx >> 8)).cloned(),
                    false,
                    true,
                ),
                Packet::PacketCookieReply(r) => (
                    peers.by_index.get(&(r.receiver_idx >> 8)).cloned(),
                    false,
                    false,
                ),
                Packet::PacketData(d) => (
                    peers.by_index.get(&(d.receiver_idx >> 8)).cloned(),
                    true,
                    false,
                ),
            };
            (peer, is_data, is_handshake)
        };
        let Some(peer) = peer else {
            if is_data || !is_handshake {
                c.invalid.fetch_add(1, Ordering::Relaxed);
            } else {
                c.unknown_key.fetch_add(1, Ordering::Relaxed);
            }
            return Received::Nothing;
        };
        if relayed_from.is_some_and(|v| v != peer.vtep || peer.rendezvous) {
            // The relay passes on only what the sender's own endpoint sent in its own name.
            c.spoofed.fetch_add(1, Ordering::Relaxed);
            return Received::Nothing;
        }
        let mut tunn = peer.tunn.lock().unwrap_or_else(|e| e.into_inner());
        // Ok((authenticated, replies)): `authenticated` when the message proved it came from
        // the peer (a data packet, or a handshake message the tunnel took); only then may the
        // peer's endpoint move. A cookie reply proves nothing: anyone who saw our initiation
        // and knows the peer's public key can make one.
        let result = match tunn.decapsulate(src, datagram, out) {
            TunnResult::Done => {
                let mut queue = Vec::new();
                if is_data {
                    // A keepalive; the first one confirms a session we answered, so what
                    // waited for it can go now.
                    c.keepalives.fetch_add(1, Ordering::Relaxed);
                    self.confirmed(&peer);
                    while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], scratch) {
                        queue.push(p.to_vec());
                    }
                } else if is_handshake {
                    c.handshakes_completed.fetch_add(1, Ordering::Relaxed);
                }
                Ok((is_data || is_handshake, queue))
            }
            TunnResult::WriteToNetwork(reply) if reply.first() == Some(&COOKIE_REPLY) => {
                // The tunnel's own check is never under load ([`Self::verifier`]); should it
                // demand a cookie all the same, that is no completed handshake.
                c.under_load.fetch_add(1, Ordering::Relaxed);
                Ok((false, vec![reply.to_vec()]))
            }
            TunnResult::WriteToNetwork(reply) => {
                // A handshake response (we answered an initiation) or the keepalive that
                // completes our own handshake; then whatever waited for the session.
                c.handshakes_completed.fetch_add(1, Ordering::Relaxed);
                if is_init {
                    peer.answered_ms
                        .store(self.elapsed_ms().max(1), Ordering::Relaxed);
                } else if let Some(rtt) = tunn.stats().4 {
                    peer.rtt_ms.store(u64::from(rtt) + 1, Ordering::Relaxed);
                }
                let reply_len = reply.len();
                let (first, _) = out.split_at_mut(reply_len);
                let mut queue = vec![first.to_vec()];
                // As the responder there is no session to send on until the initiator's
                // first packet: flushing now would start a handshake of our own, and two
                // sides doing that answer each other's initiations forever.
                if !is_init {
                    while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], scratch) {
                        queue.push(p.to_vec());
                    }
                }
                Ok((is_data || is_handshake, queue))
            }
            TunnResult::WriteToTunnelV4(ip, source) => {
                if source != peer.vtep {
                    c.spoofed.fetch_add(1, Ordering::Relaxed);
                    Err(())
                } else {
                    let n = ip.len();
                    drop(tunn);
                    self.confirmed(&peer);
                    self.heard(&peer, route);
                    peer.rx_packets.fetch_add(1, Ordering::Relaxed);
                    c.decrypted.fetch_add(1, Ordering::Relaxed);
                    if peer.rendezvous {
                        self.take_rendezvous_message(&out[..n]);
                        return Received::Nothing;
                    }
                    return Received::Packet(n);
                }
            }
            TunnResult::WriteToTunnelV6(..) => {
                c.spoofed.fetch_add(1, Ordering::Relaxed);
                Err(())
            }
            TunnResult::Err(e) => {
                self.count_error(&e);
                Err(())
            }
        };
        drop(tunn);
        if let Ok((authenticated, replies)) = result {
            if authenticated {
                self.heard(&peer, route);
            }
            for r in replies {
                let data = is_data_message(&r);
                if self.send_message(&peer, route, &r) {
                    if data {
                        peer.tx_packets.fetch_add(1, Ordering::Relaxed);
                        c.encrypted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        c.handshakes_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Received::Nothing
    }

    /// An authenticated packet came along `route`: if directly, the peer is at its source now,
    /// and a relayed path becomes direct.
    fn heard(&self, peer: &SecurePeer, route: Route) {
        let now = self.elapsed_ms();
        peer.last_rx_ms.store(now, Ordering::Relaxed);
        match route {
            Route::Direct(from) => {
                peer.last_direct_ms.store(now, Ordering::Relaxed);
                self.move_endpoint(peer, from);
                if peer.relayed.swap(false, Ordering::Relaxed) {
                    self.counters.direct_opened.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %peer.vtep, endpoint = %from, "secure tunnel: direct path open");
                }
            }
            Route::Relay => {
                self.counters.relayed_rx.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The relay's part: passes `datagram` (`[RELAY_TO, 0, 0, 0, src, dst, message]`) from a
    /// member at its observed endpoint on to the destination member's endpoint.
    fn pass_on(&self, datagram: &[u8], from: SocketAddrV4, scratch: &mut [u8]) {
        let c = &self.counters;
        let (Some(src), Some(dst)) = (datagram.get(4..8), datagram.get(8..12)) else {
            c.relay_refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let src = Ipv4Addr::new(src[0], src[1], src[2], src[3]);
        let dst = Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]);
        let to = {
            let peers = self.read_peers();
            let observed = |a: &Ipv4Addr| peers.by_vtep.get(a).and_then(|p| self.observed(p));
            match (observed(&src), observed(&dst)) {
                (Some(s), Some(d)) if self.relay_server.load(Ordering::Relaxed) && s == from => d,
                _ => {
                    c.relay_refused.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        };
        if datagram.len() > scratch.len() {
            c.relay_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let out = &mut scratch[..datagram.len()];
        out.copy_from_slice(datagram);
        out[0] = RELAY_FROM;
        if self.send_to(out, to) {
            c.relay_forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A message from the rendezvous: this host's public endpoint, and peers' endpoints to try.
    fn take_rendezvous_message(&self, ip: &[u8]) {
        let Some(rv) = self.rendezvous.get() else {
            return;
        };
        let Some(m) =
            control_payload(ip).and_then(|p| serde_json::from_slice::<RendezvousMessage>(p).ok())
        else {
            self.counters.invalid.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.counters
            .rendezvous_messages
            .fetch_add(1, Ordering::Relaxed);
        if let Some(you) = m.you {
            *rv.public_endpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(you);
        }
        let peers = self.snapshot();
        for e in m.peers {
            let Some(p) = peers.get(&e.vtep) else {
                continue;
            };
            if self.direct_fresh(p) || Self::endpoint(p) == e.endpoint {
                continue;
            }
            self.move_endpoint(p, e.endpoint);
            // Both sides hear of each other at about the same time: the higher address opens
            // its NAT now, the lower one sends after its head start.
            let now = self.elapsed_ms();
            p.learned_ms.store(now, Ordering::Relaxed);
            if self.vtep > p.vtep {
                p.next_probe_ms.store(0, Ordering::Relaxed);
                let mut scratch = vec![0u8; 512];
                self.probe(p, now, &mut scratch);
            } else {
                p.next_probe_ms
                    .store(now + HEAD_START.as_millis() as u64, Ordering::Relaxed);
            }
        }
    }

    /// True if an authenticated packet came directly from `p` lately.
    fn direct_fresh(&self, p: &SecurePeer) -> bool {
        let last = p.last_direct_ms.load(Ordering::Relaxed);
        last > 0 && self.elapsed_ms().saturating_sub(last) < self.silence_limit().as_millis() as u64
    }

    /// How long a direct path may stay silent before it counts as lost: the keepalive (which
    /// both sides send) and a margin.
    fn silence_limit(&self) -> Duration {
        Duration::from_secs(u64::from(self.keepalive.unwrap_or(25)) + 5)
    }

    /// Sends a rendezvous message (the IPv4/UDP packet is built here) through the tunnel to
    /// the rendezvous' member `to`, or (on a member) to the rendezvous if `to` is `None`.
    pub fn send_control(&self, to: Option<&SecurePeer>, message: &RendezvousMessage) -> bool {
        let peer = match (to, self.rendezvous.get()) {
            (Some(p), _) => p,
            (None, Some(rv)) => &rv.peer,
            (None, None) => return false,
        };
        let Ok(body) = serde_json::to_vec(message) else {
            return false;
        };
        let ip = control_packet(self.vtep, peer.vtep, &body);
        let mut buf = vec![0u8; ip.len() + SECURE_OVERHEAD + RELAY_HEADER + 148];
        self.encrypt_and_send(peer, &ip, &mut buf)
    }

    /// A member (for the rendezvous' own use).
    pub fn member(&self, vtep: Ipv4Addr) -> Option<Arc<SecurePeer>> {
        self.read_peers().by_vtep.get(&vtep).cloned()
    }

    /// An authenticated packet from `p`: if it is the first since we answered its initiation,
    /// the time since the answer is the handshake's round trip.
    fn confirmed(&self, p: &SecurePeer) {
        // Per packet: a read, and a write only for the first packet after an answer.
        if p.answered_ms.load(Ordering::Relaxed) == 0 {
            return;
        }
        let answered = p.answered_ms.swap(0, Ordering::Relaxed);
        if answered > 0 {
            let rtt = self.elapsed_ms().saturating_sub(answered);
            p.rtt_ms.store(rtt + 1, Ordering::Relaxed);
        }
    }

    /// The member's endpoint, if it was heard from lately (directly, not through the relay).
    pub fn observed(&self, p: &SecurePeer) -> Option<SocketAddrV4> {
        let last = p.last_direct_ms.load(Ordering::Relaxed);
        (last > 0 && self.elapsed_ms().saturating_sub(last) < DOWN_AFTER.as_millis() as u64)
            .then(|| Self::endpoint(p))
    }

    fn count_error(&self, e: &WireGuardError) {
        let c = &self.counters;
        let counter = match e {
            WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => &c.replayed,
            WireGuardError::WrongKey
            | WireGuardError::InvalidMac
            | WireGuardError::InvalidAeadTag
            | WireGuardError::WrongTai64nTimestamp
            | WireGuardError::InvalidTai64nTimestamp => &c.auth_failed,
            WireGuardError::UnderLoad => &c.under_load,
            _ => &c.invalid,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs every tunnel's timers when they are due (at most every 250 ms, by one caller at a
    /// time): handshake retries, rekeying, keepalives, expiry.
    pub fn tick(&self, scratch: &mut [u8]) {
        let now = Instant::now();
        {
            let Ok(mut next) = self.next_tick.try_lock() else {
                return;
            };
            if now < *next {
                return;
            }
            *next = now + TICK;
        }
        if let Ok(mut next) = self.next_reset.try_lock() {
            if now >= *next {
                *next = now + Duration::from_secs(1);
                self.rate_limiter.reset_count();
            }
        }
        let mut peers: Vec<Arc<SecurePeer>> = self.read_peers().by_vtep.values().cloned().collect();
        let rv = self.rendezvous.get();
        if let Some(rv) = rv {
            peers.push(rv.peer.clone());
        }
        let now_ms = self.elapsed_ms();
        let mut want = Vec::new();
        for p in peers {
            if !p.rendezvous && rv.is_some() {
                if !self.direct_fresh(&p) {
                    want.push(p.vtep);
                }
                self.path_timers(&p, now_ms, scratch);
            }
            let route = self.route(&p);
            let mut tunn = p.tunn.lock().unwrap_or_else(|e| e.into_inner());
            let to = Self::endpoint(&p);
            match tunn.update_timers(&mut scratch[RELAY_HEADER..]) {
                TunnResult::WriteToNetwork(packet) => {
                    let handshake = !is_data_message(packet);
                    let n = packet.len();
                    drop(tunn);
                    if self.send_framed(&p, route, &mut scratch[..RELAY_HEADER + n]) && handshake {
                        self.counters
                            .handshakes_sent
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    // Sessions are gone; the next packet starts a handshake. If the peer
                    // roamed away from its configured address and went silent, try that again.
                    drop(tunn);
                    if to != p.configured {
                        let mut e = p.endpoint.lock().unwrap_or_else(|e| e.into_inner());
                        *e = p.configured;
                    }
                }
                _ => {}
            }
        }
        if let Some(rv) = rv {
            let due = rv.next_query_ms.load(Ordering::Relaxed);
            if now_ms >= due {
                let every = if want.is_empty() {
                    QUERY_IDLE
                } else {
                    QUERY_EVERY
                };
                rv.next_query_ms
                    .store(now_ms + every.as_millis() as u64, Ordering::Relaxed);
                self.send_control(
                    None,
                    &RendezvousMessage {
                        want,
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// A peer's path when a rendezvous is set: falls back to the relay when no direct packet
    /// comes, and probes the direct path while there is none.
    fn path_timers(&self, p: &SecurePeer, now_ms: u64, scratch: &mut [u8]) {
        let relayed = p.relayed.load(Ordering::Relaxed);
        let last = p.last_direct_ms.load(Ordering::Relaxed);
        if !relayed && self.relays() {
            let lost = if last == 0 {
                now_ms.saturating_sub(p.added_ms) >= RELAY_AFTER.as_millis() as u64
            } else {
                !self.direct_fresh(p)
            };
            if lost {
                p.relayed.store(true, Ordering::Relaxed);
                self.counters
                    .relay_fallbacks
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(peer = %p.vtep, "secure tunnel: no direct path; through the relay");
                // Start the session through the relay now rather than at the next retry; one
                // side (the lower address) initiates, so the two do not cross.
                let mut tunn = p.tunn.lock().unwrap_or_else(|e| e.into_inner());
                if tunn.time_since_last_handshake().is_none() && self.vtep < p.vtep {
                    if let TunnResult::WriteToNetwork(init) =
                        tunn.format_handshake_initiation(&mut scratch[RELAY_HEADER..], true)
                    {
                        let n = init.len();
                        drop(tunn);
                        if self.send_framed(p, Route::Relay, &mut scratch[..RELAY_HEADER + n]) {
                            self.counters
                                .handshakes_sent
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                return;
            }
        }
        if self.direct_fresh(p) && !p.relayed.load(Ordering::Relaxed) {
            return;
        }
        self.probe(p, now_ms, scratch);
    }

    /// A direct probe of `p`'s path, if one is due.
    fn probe(&self, p: &SecurePeer, now_ms: u64, scratch: &mut [u8]) {
        if now_ms < p.next_probe_ms.load(Ordering::Relaxed) {
            return;
        }
        // Straight to the endpoint: through both NATs once each side has sent. With a session,
        // a keepalive; without one (and not relayed), the lower address initiates and the
        // other only opens its NAT, so the two initiations do not cross.
        let to = Self::endpoint(p);
        let mut tunn = p.tunn.lock().unwrap_or_else(|e| e.into_inner());
        let session = tunn.time_since_last_handshake().is_some();
        // Every second while a path may be opening (the peer or its endpoint is new); a peer
        // that stays unreachable gets WireGuard's own retry interval, not an initiation a second.
        let since = now_ms.saturating_sub(p.added_ms.max(p.learned_ms.load(Ordering::Relaxed)));
        let every = if session || since < RELAY_AFTER.as_millis() as u64 {
            PROBE_EVERY
        } else {
            RETRY_UNREACHABLE
        };
        p.next_probe_ms
            .store(now_ms + every.as_millis() as u64, Ordering::Relaxed);
        let probe = if session {
            tunn.encapsulate(&[], scratch)
        } else if p.relayed.load(Ordering::Relaxed) {
            return;
        } else if self.vtep < p.vtep {
            tunn.format_handshake_initiation(scratch, true)
        } else {
            drop(tunn);
            if self.send_direct(p, &[PUNCH, 0, 0, 0], to) {
                self.counters.probes.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        if let TunnResult::WriteToNetwork(probe) = probe {
            let n = probe.len();
            drop(tunn);
            if self.send_direct(p, &scratch[..n], to) {
                self.counters.probes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An IPv4/UDP packet from `src` to `dst`, port [`CONTROL_PORT`] both ways, carrying `body`.
fn control_packet(src: Ipv4Addr, dst: Ipv4Addr, body: &[u8]) -> Vec<u8> {
    let total = 28 + body.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for i in (0..20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&CONTROL_PORT.to_be_bytes());
    p[22..24].copy_from_slice(&CONTROL_PORT.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(body);
    p
}

/// The body of a rendezvous message packet ([`control_packet`]), if `ip` is one.
pub fn control_payload(ip: &[u8]) -> Option<&[u8]> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.first()? >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    if dport != CONTROL_PORT || len < 8 {
        return None;
    }
    udp.get(8..len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B_VTEP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn open() -> Secure {
        let keys = KeyPair::generate().unwrap();
        Secure::open(keys, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 0).unwrap()
    }

    fn addr(s: &Secure) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, s.port())
    }

    /// An IPv4/UDP datagram from `src` to `dst` carrying `payload` (a stand-in for VXLAN).
    fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let total = (28 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        let sum = crate::checksum::finish(crate::checksum::add(0, &p));
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(&49152u16.to_be_bytes());
        p.extend_from_slice(&4789u16.to_be_bytes());
        p.extend_from_slice(&(total - 20).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    /// Two switches that know each other: a (10.0.0.1) and b (10.0.0.2) on loopback.
    fn pair() -> (Secure, Secure) {
        pair_limited(HANDSHAKE_RATE_LIMIT)
    }

    /// Reads one datagram from `s`'s socket, waiting up to a second.
    fn raw_recv(s: &Secure) -> (Vec<u8>, SocketAddrV4) {
        let mut buf = vec![0u8; BUFFER];
        for _ in 0..1000 {
            if let Ok((n, SocketAddr::V4(from))) = s.socket.recv_from(&mut buf) {
                buf.truncate(n);
                return (buf, from);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("no datagram within a second");
    }

    /// Takes one datagram on `s`; the decrypted packet if it was data.
    fn take_one(s: &Secure) -> Option<Vec<u8>> {
        let (d, from) = raw_recv(s);
        let mut out = vec![0u8; BUFFER];
        let mut scratch = vec![0u8; BUFFER];
        match s.take(&d, from, &mut out, &mut scratch) {
            Received::Packet(n) => Some(out[..n].to_vec()),
            Received::Nothing => None,
        }
    }

    fn peer(s: &Secure, vtep: Ipv4Addr) -> Arc<SecurePeer> {
        s.snapshot().get(&vtep).cloned().unwrap()
    }

    fn count(s: &Secure, name: &str) -> u64 {
        s.counters()
            .snapshot()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
            .unwrap()
    }

    /// a sends `packet` to b; runs the handshake if needed; returns what b decrypted.
    fn deliver(a: &Secure, b: &Secure, packet: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; BUFFER];
        assert!(a.encrypt_and_send(&peer(a, B_VTEP), packet, &mut buf));
        if let Some(p) = take_one(b) {
            return p;
        }
        // b answered a handshake: a takes the response and sends a keepalive, then what waited.
        assert_eq!(take_one(a), None);
        for _ in 0..2 {
            if let Some(p) = take_one(b) {
                return p;
            }
        }
        panic!("nothing decrypted after the handshake");
    }

    /// Members at 127.0.0.11 and .12 that know each other's keys but not where they are
    /// (their endpoints point at nothing), and a rendezvous at .13 that relays.
    fn behind_nat() -> (Secure, Secure, Secure) {
        behind_nat_relaying(true)
    }

    fn behind_nat_relaying(relay: bool) -> (Secure, Secure, Secure) {
        let at = |last: u8| SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, last), 0);
        let nowhere = Some(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 99), 9));
        let open_at = |last| Secure::open(KeyPair::generate().unwrap(), at(last), 1).unwrap();
        let (a, b) = (open_at(11), open_at(12));
        let r = Secure::open(KeyPair::generate().unwrap(), at(13), 0).unwrap();
        r.serve_relay(relay);
        let rv = RendezvousSpec {
            endpoint: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 13), r.port()),
            public_key: r.public_key(),
            relay,
        };
        for (me, other) in [(&a, &b), (&b, &a)] {
            me.set_rendezvous(&rv).unwrap();
            assert_eq!(me.set_rendezvous(&rv), Err(PeerSpecError::RendezvousSet));
            me.add_peer(&PeerSpec {
                vtep: other.vtep,
                public_key: other.public_key(),
                endpoint: nowhere,
            })
            .unwrap();
            r.add_peer(&PeerSpec {
                vtep: me.vtep,
                public_key: me.public_key(),
                endpoint: None,
            })
            .unwrap();
        }
        (a, b, r)
    }

    /// Runs the three until `done` (or `max`): the members take datagrams and run their timers,
    /// the rendezvous relays and, if `answer`, answers. Returns what b decrypted.
    fn pump(
        a: &Secure,
        b: &Secure,
        r: &Secure,
        answer: bool,
        max: Duration,
        done: impl Fn(&[Vec<u8>]) -> bool,
    ) -> Vec<Vec<u8>> {
        let (mut d, mut o, mut sc) = (vec![0u8; BUFFER], vec![0u8; BUFFER], vec![0u8; BUFFER]);
        let mut got = Vec::new();
        let deadline = Instant::now() + max;
        while Instant::now() < deadline && !done(&got) {
            for s in [a, b, r] {
                while let Some(x) = s.receive_one(&mut d, &mut o, &mut sc) {
                    if let Received::Packet(n) = x {
                        if std::ptr::eq(s, r) {
                            if answer {
                                crate::rendezvous::answer(r, &o[..n]);
                            }
                        } else if std::ptr::eq(s, b) {
                            got.push(o[..n].to_vec());
                        }
                    }
                }
                s.tick(&mut sc);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn the_rendezvous_tells_both_sides_where_the_other_is_and_the_path_opens_direct() {
        let (a, b, r) = behind_nat();
        let direct = |s: &Secure| s.status().first().is_some_and(|p| p.path == "direct");
        pump(&a, &b, &r, true, Duration::from_secs(4), |_| {
            direct(&a) && direct(&b)
        });
        assert!(
            direct(&a) && direct(&b),
            "{:?} {:?}",
            a.status(),
            b.status()
        );
        assert_eq!(a.status()[0].endpoint, addr_of(&b));
        assert!(a.status()[0].rtt_ms.is_some() && b.status()[0].rtt_ms.is_some());
        assert_eq!(
            a.public_endpoint(),
            Some(addr_of(&a)),
            "the rendezvous saw a"
        );
        assert!(count(&a, "rendezvous_messages") >= 1);
        assert_eq!(count(&a, "relayed_tx"), 0);
        assert_eq!(a.overhead(), SECURE_OVERHEAD + RELAY_HEADER);
        let rs = a.rendezvous_status().unwrap();
        assert_eq!(rs.path, "direct", "{rs:?}");
        // Data crosses directly.
        let packet = ip_packet(a.vtep, b.vtep, b"direct");
        let mut buf = vec![0u8; BUFFER];
        assert!(a.encrypt_and_send(&peer(&a, b.vtep), &packet, &mut buf));
        let got = pump(&a, &b, &r, true, Duration::from_secs(2), |g| !g.is_empty());
        assert_eq!(got, vec![packet]);
        assert_eq!(count(&r, "relay_forwarded"), 0);
    }

    #[test]
    fn an_unreachable_peer_without_a_relay_is_retried_at_the_rekey_interval() {
        let (a, b, r) = behind_nat_relaying(false);
        // Nobody answers: a (the lower address) initiates toward an endpoint that is nowhere.
        pump(
            &a,
            &b,
            &r,
            false,
            RELAY_AFTER + Duration::from_millis(500),
            |_| false,
        );
        let tries = |s: &Secure| count(s, "handshakes_sent") + count(s, "probes");
        let early = tries(&a);
        pump(
            &a,
            &b,
            &r,
            false,
            RETRY_UNREACHABLE + Duration::from_millis(500),
            |_| false,
        );
        let later = tries(&a) - early;
        assert!(
            early >= 3,
            "while the path may be opening, about one a second: {early}"
        );
        assert!(
            (1..=2).contains(&later),
            "then one per {RETRY_UNREACHABLE:?}, not one a second: {later}"
        );
        assert_eq!(a.status()[0].path, "down");
    }

    #[test]
    fn without_a_direct_path_the_relay_carries_the_tunnel_and_cannot_be_abused() {
        let (a, b, r) = behind_nat();
        // The rendezvous does not answer: the members never learn a working endpoint.
        let relayed = |s: &Secure| s.status().first().is_some_and(|p| p.path == "relayed");
        pump(&a, &b, &r, false, Duration::from_secs(9), |_| {
            relayed(&a) && relayed(&b)
        });
        assert!(
            relayed(&a) && relayed(&b),
            "{:?} {:?} {:?} {:?} {:?}",
            a.status(),
            b.status(),
            a.counters().snapshot(),
            b.counters().snapshot(),
            r.counters().snapshot()
        );
        let packet = ip_packet(a.vtep, b.vtep, b"relayed");
        let mut buf = vec![0u8; BUFFER];
        assert!(a.encrypt_and_send(&peer(&a, b.vtep), &packet, &mut buf));
        let got = pump(&a, &b, &r, false, Duration::from_secs(2), |g| !g.is_empty());
        assert_eq!(got, vec![packet], "decrypted on b, end to end");
        assert!(count(&a, "relay_fallbacks") >= 1 && count(&a, "relayed_tx") >= 1);
        assert!(count(&b, "relayed_rx") >= 1);
        assert!(count(&r, "relay_forwarded") >= 2);
        assert!(
            count(&r, "decrypted") > 0,
            "the rendezvous decrypts its own messages, and passed the rest on"
        );
        // A stranger cannot use the relay, nor speak for a member.
        let stranger = UdpSocket::bind("127.0.0.14:0").unwrap();
        let mut fake = vec![RELAY_TO, 0, 0, 0];
        fake.extend_from_slice(&a.vtep.octets());
        fake.extend_from_slice(&b.vtep.octets());
        fake.extend_from_slice(&[4, 0, 0, 0, 1, 2, 3, 4]);
        let refused = count(&r, "relay_refused");
        stranger.send_to(&fake, addr_of(&r)).unwrap();
        fake.truncate(6);
        stranger.send_to(&fake, addr_of(&r)).unwrap();
        pump(&a, &b, &r, false, Duration::from_millis(300), |_| false);
        assert_eq!(count(&r, "relay_refused") - refused, 2);
        // "Relayed" datagrams that do not come from the rendezvous are not taken.
        let invalid = count(&b, "invalid");
        let mut forged = vec![RELAY_FROM, 0, 0, 0];
        forged.extend_from_slice(&a.vtep.octets());
        forged.extend_from_slice(&b.vtep.octets());
        stranger.send_to(&forged, addr_of(&b)).unwrap();
        pump(&a, &b, &r, false, Duration::from_millis(300), |_| false);
        assert_eq!(count(&b, "invalid") - invalid, 1);
    }

    fn addr_of(s: &Secure) -> SocketAddrV4 {
        SocketAddrV4::new(s.vtep, s.port())
    }

    #[test]
    fn rendezvous_messages_round_trip_through_their_packets() {
        let m = RendezvousMessage {
            want: vec![A_VTEP],
            ..Default::default()
        };
        let body = serde_json::to_vec(&m).unwrap();
        let p = control_packet(A_VTEP, B_VTEP, &body);
        assert_eq!(
            crate::checksum::finish(crate::checksum::add(0, &p[..20])),
            0
        );
        assert_eq!(control_payload(&p), Some(&body[..]));
        assert_eq!(control_payload(&p[..27]), None);
        assert_eq!(
            control_payload(&ip_packet(A_VTEP, B_VTEP, b"x")),
            None,
            "not the control port"
        );
        assert_eq!(control_payload(&[]), None);
    }

    #[test]
    fn packets_cross_after_one_handshake_and_the_endpoint_follows_the_sender() {
        let (a, b) = pair();
        let p1 = ip_packet(A_VTEP, B_VTEP, b"first frame");
        assert_eq!(deliver(&a, &b, &p1), p1);
        assert_eq!(count(&a, "handshakes_completed"), 1);
        assert_eq!(count(&b, "handshakes_completed"), 1);
        // The session is up: the next packet goes straight through, both ways.
        let p2 = ip_packet(A_VTEP, B_VTEP, b"second frame");
        assert_eq!(deliver(&a, &b, &p2), p2);
        let p3 = ip_packet(B_VTEP, A_VTEP, b"reply");
        let mut buf = vec![0u8; BUFFER];
        assert!(b.encrypt_and_send(&peer(&b, A_VTEP), &p3, &mut buf));
        assert_eq!(take_one(&a), Some(p3));
        let st = b.status();
        assert_eq!(st[0].path, "direct");
        assert_eq!(st[0].rx_packets, 2);
        // Both sides measured the handshake: a as its initiator, b from its answer to a's
        // first packet.
        assert!(st[0].rtt_ms.is_some(), "{st:?}");
        assert!(a.status()[0].rtt_ms.is_some(), "{:?}", a.status());
        assert_eq!(count(&b, "decrypted"), 2);
    }

    #[test]
    fn queued_packets_leave_together_and_arrive_one_by_one_in_order() {
        let (a, b) = pair();
        let first = ip_packet(A_VTEP, B_VTEP, b"handshake first");
        assert_eq!(deliver(&a, &b, &first), first);
        let to_b = peer(&a, B_VTEP);
        let (mut buf, mut batch) = (vec![0u8; BUFFER], TxBatch::default());
        // Five of one size and a shorter last one (a super-frame's segments), then one more
        // that cannot join a closed batch.
        let mut sent: Vec<Vec<u8>> = (0..5u8)
            .map(|i| ip_packet(A_VTEP, B_VTEP, &[i; 1000]))
            .collect();
        sent.push(ip_packet(A_VTEP, B_VTEP, &[9; 300]));
        sent.push(ip_packet(A_VTEP, B_VTEP, &[7; 1000]));
        let before = count(&a, "encrypted");
        for p in &sent {
            assert!(a.encrypt_and_queue(&to_b, p, &mut buf, &mut batch));
        }
        assert_eq!(
            count(&a, "encrypted"),
            before + 6,
            "the closed batch left when the seventh could not join"
        );
        a.flush(&mut batch);
        a.flush(&mut batch);
        assert_eq!(
            count(&a, "encrypted"),
            before + 7,
            "an empty flush sends nothing"
        );
        for p in &sent {
            assert_eq!(take_one(&b).as_ref(), Some(p));
        }
        assert_eq!(count(&b, "decrypted"), 8);
        assert_eq!(count(&a, "send_failed"), 0);
        assert!(
            a.segmented.load(Ordering::Relaxed),
            "the batch left in one segmented send"
        );
    }

    /// Two switches a and b as [`pair`], b answering at most `limit` handshakes a second.
    fn pair_limited(limit: u64) -> (Secure, Secure) {
        let (a, mut b) = (open(), open());
        b.limit_handshakes(limit);
        a.add_peer(&PeerSpec {
            vtep: B_VTEP,
            public_key: b.public_key(),
            endpoint: Some(addr(&b)),
        })
        .unwrap();
        b.add_peer(&PeerSpec {
            vtep: A_VTEP,
            public_key: a.public_key(),
            endpoint: Some(addr(&a)),
        })
        .unwrap();
        (a, b)
    }

    /// a's handshake initiation toward b, as anyone on the path sees it.
    fn sniff_initiation(a: &Secure, b: &Secure) -> (Vec<u8>, SocketAddrV4) {
        let mut buf = vec![0u8; BUFFER];
        assert!(a.encrypt_and_send(&peer(a, B_VTEP), &ip_packet(A_VTEP, B_VTEP, b"x"), &mut buf));
        let (init, from) = raw_recv(b);
        assert_eq!(init[0], 1, "a handshake initiation");
        (init, from)
    }

    fn take_from(s: &Secure, datagram: &[u8], from: SocketAddrV4) -> Received {
        let (mut out, mut scratch) = (vec![0u8; BUFFER], vec![0u8; BUFFER]);
        s.take(datagram, from, &mut out, &mut scratch)
    }

    #[test]
    fn a_forged_cookie_reply_does_not_move_the_endpoint() {
        let (a, b) = pair();
        let (init, _) = sniff_initiation(&a, &b);
        // A cookie reply is sealed with a key derived from b's public key alone: anyone who
        // saw the initiation makes one, here with the rate limiter b itself would use.
        let attacker = UdpSocket::bind("127.0.0.7:0").unwrap();
        let SocketAddr::V4(attacker_at) = attacker.local_addr().unwrap() else {
            unreachable!()
        };
        let forger = RateLimiter::new(&x25519::PublicKey::from(b.public_key().0), 0);
        let mut cookie = vec![0u8; 64];
        let forged =
            match forger.verify_packet(Some(IpAddr::V4(*attacker_at.ip())), &init, &mut cookie) {
                Err(TunnResult::WriteToNetwork(c)) => c.to_vec(),
                _ => panic!("the forger made no cookie reply"),
            };
        assert_eq!(forged[0], 3, "a cookie reply");
        assert!(matches!(
            take_from(&a, &forged, attacker_at),
            Received::Nothing
        ));
        assert_eq!(
            Secure::endpoint(&peer(&a, B_VTEP)),
            addr(&b),
            "the forged cookie reply moved b's endpoint"
        );
        assert_eq!(count(&a, "endpoint_changes"), 0);
        // The tunnel still comes up with the real b.
        assert!(matches!(take_from(&b, &init, addr(&a)), Received::Nothing));
        assert_eq!(take_one(&a), None);
        assert_eq!(count(&a, "handshakes_completed"), 1);
    }

    #[test]
    fn a_replayed_initiation_at_the_rate_limit_moves_nothing_and_the_limit_is_whole() {
        // The limit is the configured one: two initiations a second pass a limit of 2.
        let (a, b) = pair_limited(2);
        let c = open();
        c.add_peer(&PeerSpec {
            vtep: B_VTEP,
            public_key: b.public_key(),
            endpoint: Some(addr(&b)),
        })
        .unwrap();
        b.add_peer(&PeerSpec {
            vtep: Ipv4Addr::new(10, 0, 0, 3),
            public_key: c.public_key(),
            endpoint: Some(addr(&c)),
        })
        .unwrap();
        for s in [&a, &c] {
            let (init, from) = sniff_initiation(s, &b);
            take_from(&b, &init, from);
        }
        assert_eq!(count(&b, "under_load"), 0, "{:?}", b.counters().snapshot());
        assert_eq!(count(&b, "handshakes_completed"), 2);

        // At the limit's boundary, an initiation b took once and an attacker replays from
        // elsewhere moves nothing.
        let (a, b) = pair_limited(3);
        let (init, from) = sniff_initiation(&a, &b);
        take_from(&b, &init, from);
        assert_eq!(count(&b, "handshakes_completed"), 1);
        let attacker = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 7), 4444);
        take_from(&b, &init, attacker);
        assert_eq!(Secure::endpoint(&peer(&b, A_VTEP)), addr(&a));
        assert_eq!(count(&b, "endpoint_changes"), 0);
    }

    #[test]
    fn under_load_the_cookie_for_a_relayed_peer_goes_back_through_the_relay() {
        let (a, mut b, r) = behind_nat();
        b.limit_handshakes(0);
        // a's initiation toward b, as the relay hands it on.
        let sniffer = UdpSocket::bind("127.0.0.11:0").unwrap();
        let SocketAddr::V4(sniffer_at) = sniffer.local_addr().unwrap() else {
            unreachable!()
        };
        assert!(a.set_endpoint(b.vtep, sniffer_at));
        let mut buf = vec![0u8; BUFFER];
        assert!(a.encrypt_and_send(
            &peer(&a, b.vtep),
            &ip_packet(a.vtep, b.vtep, b"x"),
            &mut buf
        ));
        sniffer
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let n = sniffer.recv(&mut buf).unwrap();
        assert_eq!(buf[0], 1, "a handshake initiation");
        let mut relayed = vec![RELAY_FROM, 0, 0, 0];
        relayed.extend_from_slice(&a.vtep.octets());
        relayed.extend_from_slice(&b.vtep.octets());
        relayed.extend_from_slice(&buf[..n]);
        take_from(&b, &relayed, addr_of(&r));
        assert_eq!(count(&b, "under_load"), 1);
        // The cookie leaves for a through the relay, not as a bare message to the relay.
        let (sent, _) = raw_recv(&r);
        assert_eq!(sent[0], RELAY_TO, "{sent:?}");
        assert_eq!(&sent[4..8], &b.vtep.octets());
        assert_eq!(&sent[8..12], &a.vtep.octets());
        assert_eq!(sent[RELAY_HEADER], 3, "a cookie reply");
    }

    #[test]
    fn a_replayed_datagram_is_dropped_and_counted() {
        let (a, b) = pair();
        let p = ip_packet(A_VTEP, B_VTEP, b"once");
        deliver(&a, &b, &p);
        let mut buf = vec![0u8; BUFFER];
        assert!(a.encrypt_and_send(&peer(&a, B_VTEP), &p, &mut buf));
        let (d, from) = raw_recv(&b);
        let (mut out, mut scratch) = (vec![0u8; BUFFER], vec![0u8; BUFFER]);
        assert_eq!(
            b.take(&d, from, &mut out, &mut scratch),
            Received::Packet(p.len())
        );
        assert_eq!(b.take(&d, from, &mut out, &mut scratch), Received::Nothing);
        assert_eq!(count(&b, "replayed"), 1);
        // A flipped bit in a fresh packet's ciphertext fails authentication.
        assert!(a.encrypt_and_send(&peer(&a, B_VTEP), &p, &mut buf));
        let (d, from) = raw_recv(&b);
        let mut tampered = d.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            b.take(&tampered, from, &mut out, &mut scratch),
            Received::Nothing
        );
        assert_eq!(count(&b, "auth_failed"), 1);
    }

    #[test]
    fn wrong_keys_are_rejected() {
        let (a, b) = pair();
        // A stranger whose key b does not know.
        let c = open();
        c.add_peer(&PeerSpec {
            vtep: B_VTEP,
            public_key: b.public_key(),
            endpoint: Some(addr(&b)),
        })
        .unwrap();
        let mut buf = vec![0u8; BUFFER];
        assert!(c.encrypt_and_send(
            &peer(&c, B_VTEP),
            &ip_packet(A_VTEP, B_VTEP, b"x"),
            &mut buf
        ));
        assert_eq!(take_one(&b), None);
        assert_eq!(count(&b, "unknown_key"), 1);
        // A peer that has the wrong key for b: its handshake does not authenticate.
        let wrong = KeyPair::generate().unwrap().public();
        a.add_peer(&PeerSpec {
            vtep: B_VTEP,
            public_key: wrong,
            endpoint: Some(addr(&b)),
        })
        .unwrap();
        assert!(a.encrypt_and_send(
            &peer(&a, B_VTEP),
            &ip_packet(A_VTEP, B_VTEP, b"y"),
            &mut buf
        ));
        assert_eq!(take_one(&b), None);
        assert_eq!(count(&b, "auth_failed"), 1);
        assert_eq!(count(&b, "decrypted"), 0);
        assert!(b.status()[0].path == "down");
    }

    #[test]
    fn a_peer_cannot_speak_for_another_address() {
        let (a, b) = pair();
        let forged = ip_packet(Ipv4Addr::new(10, 0, 0, 9), B_VTEP, b"forged");
        let mut buf = vec![0u8; BUFFER];
        assert!(a.encrypt_and_send(&peer(&a, B_VTEP), &forged, &mut buf));
        // The handshake, a's response, the keepalive, then the forged packet.
        assert_eq!(take_one(&b), None);
        assert_eq!(take_one(&a), None);
        assert_eq!(take_one(&b), None);
        assert_eq!(take_one(&b), None);
        assert_eq!(count(&b, "spoofed"), 1);
        assert_eq!(count(&b, "decrypted"), 0);
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let (_, b) = pair();
        let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let (mut out, mut scratch) = (vec![0u8; BUFFER], vec![0u8; BUFFER]);
        for d in [
            &[][..],
            &[1, 0, 0, 0][..],
            &[4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[9; 200][..],
            &[1; 148][..],
            &[2; 92][..],
            &[3; 64][..],
        ] {
            assert_eq!(b.take(d, from, &mut out, &mut scratch), Received::Nothing);
        }
        // Longer than the slot it would be decrypted into.
        let mut big = vec![0u8; 300];
        big[0] = 4;
        assert_eq!(
            b.take(&big, from, &mut out[..200], &mut scratch),
            Received::Nothing
        );
        let c = b.counters();
        let dropped = c.invalid.load(Ordering::Relaxed)
            + c.auth_failed.load(Ordering::Relaxed)
            + c.unknown_key.load(Ordering::Relaxed);
        assert_eq!(dropped, 8);
    }

    #[test]
    fn peers_are_idempotent_and_keys_unique() {
        let (a, b) = pair();
        let spec = PeerSpec {
            vtep: B_VTEP,
            public_key: b.public_key(),
            endpoint: Some(addr(&b)),
        };
        let g = a.generation();
        a.add_peer(&spec).unwrap();
        assert_eq!(a.generation(), g, "the same peer again changes nothing");
        let taken = a.add_peer(&PeerSpec {
            vtep: Ipv4Addr::new(10, 0, 0, 3),
            ..spec.clone()
        });
        assert!(matches!(taken, Err(PeerSpecError::KeyInUse { .. })));
        let own = a.add_peer(&PeerSpec {
            public_key: a.public_key(),
            ..spec
        });
        assert!(matches!(own, Err(PeerSpecError::OwnKey(_))));
        assert!(a.remove_peer(B_VTEP));
        assert!(!a.is_secure(B_VTEP));
        assert!(!a.remove_peer(B_VTEP));
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let path = dir.join("keys/private.key");
        let (k1, created) = load_or_create_key(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = load_or_create_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.public(), k2.public());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_key(&path).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key\n").unwrap();
        let e = load_or_create_key(&path).err().unwrap().to_string();
        assert!(e.contains("base64"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kangaroo-secure-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn public_keys_round_trip_as_base64() {
        let k = KeyPair::generate().unwrap().public();
        let text = k.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<PublicKey>().unwrap(), k);
        assert!("abc".parse::<PublicKey>().is_err());
        assert!("AAAA".parse::<PublicKey>().is_err());
    }
}
