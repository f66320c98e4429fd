//! `kangaroo-switch`: the L2 virtual switch of Kangaroo.
//!
//! Exit codes: 0 success, 1 a failed check or run, 2 bad command-line usage.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::{Parser, Subcommand};
use kangaroo_switch::config::Config;
use kangaroo_switch::sim::{HostId, Sim, SwitchId};
use kangaroo_switch::tunnel::PeerVnis;
use kangaroo_switch::{MacAddr, PortConfig, SwitchConfig, Vni};

/// Kangaroo's L2 virtual switch: MAC learning, ARP suppression, VXLAN tunnels between hosts,
/// per-tenant isolation.
#[derive(Debug, Parser)]
#[command(name = "kangaroo-switch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run two switches joined by a simulated VXLAN underlay, with two tenants whose nested VMs
    /// (real TCP/IP stacks) ping and stream TCP through them; print what happened. Needs no root.
    Simulate(SimulateArgs),
    /// Run the switch in the foreground on the interfaces of a configuration file until SIGINT or
    /// SIGTERM; then print the counters as JSON on stdout and exit 0.
    Run {
        /// The configuration file.
        #[arg(long, short = 'c')]
        config: std::path::PathBuf,
    },
    /// Talk to a running switch over its control socket.
    Ctl(CtlArgs),
    /// Print this host's public key for secure tunnels (the `[secure]` section's key file),
    /// creating the key pair first if the file does not exist yet.
    PublicKey {
        /// The configuration file.
        #[arg(long, short = 'c')]
        config: std::path::PathBuf,
    },
    /// Run a rendezvous for secure tunnels behind NAT (members learn each other's endpoints;
    /// it relays when no direct path opens) until SIGINT or SIGTERM, then print its counters.
    Rendezvous {
        /// Its configuration file (listen, key_file, relay, [[member]] vtep and public_key).
        #[arg(long, short = 'c')]
        config: std::path::PathBuf,
        /// Print its public key (creating the key pair if new) and exit.
        #[arg(long)]
        public_key: bool,
    },
    /// Validate a configuration file: syntax, keys, values, and that every interface exists.
    /// Exits 0 if the file is usable, 1 with a message naming the key otherwise.
    Check {
        /// The configuration file.
        #[arg(long, short = 'c')]
        config: std::path::PathBuf,
        /// Print the validated configuration as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct CtlArgs {
    /// The control socket.
    #[arg(long, default_value = kangaroo_switch::config::DEFAULT_CONTROL_SOCKET)]
    socket: std::path::PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    what: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// List ports with their counters.
    Ports,
    /// Take over another interface as a port.
    AddPort {
        /// The interface.
        interface: String,
        /// Its network.
        #[arg(long)]
        vni: u32,
        /// Port security: the only source MAC.
        #[arg(long)]
        mac: Option<String>,
        /// Port security: the only source IPv4 addresses (repeatable).
        #[arg(long = "ip")]
        ips: Vec<String>,
    },
    /// Release a port.
    RemovePort {
        /// The interface.
        interface: String,
    },
    /// List the forwarding database.
    Fdb,
    /// List the peer VTEPs.
    Peers,
    /// Add a peer VTEP.
    AddPeer {
        /// Its underlay address.
        address: String,
        /// Networks shared with it (repeatable; default: all).
        #[arg(long = "vni")]
        vnis: Vec<u32>,
        /// Its public key: its traffic is encrypted (a secure tunnel).
        #[arg(long)]
        public_key: Option<String>,
        /// Where its tunnel is reached first (default: its address, this host's secure port).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Remove a peer VTEP (and everything learned behind it).
    RemovePeer {
        /// Its underlay address.
        address: String,
    },
    /// All counters.
    Stats,
    /// This host's public key, the secure-tunnel counters and each secure peer's path.
    Secure,
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Bytes each tenant streams over TCP across the tunnel.
    #[arg(long, default_value_t = 1 << 20)]
    bytes: usize,
    /// Echo requests per ping.
    #[arg(long, default_value_t = 5)]
    pings: u16,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct TenantReport {
    vni: u32,
    ping_sent: u16,
    ping_received: u16,
    tcp_bytes_sent: usize,
    tcp_bytes_received: usize,
    tcp_byte_exact: bool,
    frames_from_other_tenants: usize,
}

#[derive(Debug, serde::Serialize)]
struct SwitchReport {
    name: &'static str,
    vtep: Ipv4Addr,
    fdb_entries: usize,
    arp_entries: usize,
    events: kangaroo_switch::stats::EventCounters,
    drops: Vec<(&'static str, u64)>,
}

#[derive(Debug, serde::Serialize)]
struct SimulateReport {
    tenants: Vec<TenantReport>,
    switches: Vec<SwitchReport>,
    underlay_frames: usize,
    underlay_arp_frames: usize,
    simulated_ms: u64,
    wall_ms: u128,
}

fn simulate(args: &SimulateArgs) -> anyhow::Result<SimulateReport> {
    let wall = Instant::now();
    let mut sim = Sim::new();
    let start = sim.now;
    let vteps = [
        (
            "switch-a",
            Ipv4Addr::new(10, 10, 0, 1),
            MacAddr([2, 0xee, 0, 0, 0, 1]),
        ),
        (
            "switch-b",
            Ipv4Addr::new(10, 10, 0, 2),
            MacAddr([2, 0xee, 0, 0, 0, 2]),
        ),
    ];
    let ids: Vec<SwitchId> = vteps
        .iter()
        .map(|&(_, addr, mac)| {
            let id = sim.add_switch(SwitchConfig::default());
            sim.connect_underlay(id, addr, mac);
            id
        })
        .collect();
    for (i, &id) in ids.iter().enumerate() {
        for (j, &(_, addr, mac)) in vteps.iter().enumerate() {
            if i != j {
                sim.switch(id).add_peer(addr, mac, PeerVnis::All)?;
            }
        }
    }
    // Two tenants with the same addresses on both switches.
    let tenants = [100u32, 200];
    let mut hosts: Vec<(u32, HostId, HostId)> = Vec::new();
    for (t, &v) in tenants.iter().enumerate() {
        let vni = Vni::new(v)?;
        let mut pair = Vec::new();
        for (s, &id) in ids.iter().enumerate() {
            let last = s as u8 + 1;
            let h = sim.add_host(
                id,
                &format!("t{v}-vm{last}"),
                MacAddr([2, 0, 0, t as u8 + 1, 0, last]),
                Ipv4Addr::new(192, 168, 1, last),
                24,
                PortConfig::open(vni),
            )?;
            sim.capture_host(h);
            pair.push(h);
        }
        hosts.push((v, pair[0], pair[1]));
    }
    sim.underlay.set_capture(true);

    let data: Vec<u8> = (0..args.bytes).map(|i| (i % 251) as u8).collect();
    let mut reports = Vec::new();
    for (t, &(v, h1, h2)) in hosts.iter().enumerate() {
        let ping = sim.ping(h1, sim.host(h2).ip(), args.pings, 5000);
        let tcp = sim.tcp_transfer(h1, h2, 5201, &data, 2_000_000);
        let own_octet = t as u8 + 1;
        let leaked = [h1, h2]
            .iter()
            .flat_map(|h| sim.host(*h).captured())
            .filter(|f| f.get(9) != Some(&own_octet))
            .count();
        reports.push(TenantReport {
            vni: v,
            ping_sent: ping.sent,
            ping_received: ping.received,
            tcp_bytes_sent: data.len(),
            tcp_bytes_received: tcp.received.len(),
            tcp_byte_exact: tcp.received == data,
            frames_from_other_tenants: leaked,
        });
    }
    let underlay_arp_frames = sim
        .underlay
        .capture
        .iter()
        .filter(|f| {
            let o = kangaroo_switch::tunnel::OUTER_LEN;
            f.get(o + 12..o + 14) == Some(&[0x08, 0x06])
        })
        .count();
    let switches = ids
        .iter()
        .zip(vteps.iter())
        .map(|(&id, &(name, vtep, _))| {
            let sw = sim.switch(id);
            SwitchReport {
                name,
                vtep,
                fdb_entries: sw.tables().fdb.len(),
                arp_entries: sw.tables().arp.len(),
                events: sw.stats().events.snapshot(),
                drops: sw.stats().drop_counts(),
            }
        })
        .collect();
    Ok(SimulateReport {
        tenants: reports,
        switches,
        underlay_frames: sim.underlay.capture.len(),
        underlay_arp_frames,
        simulated_ms: sim.now.since(start).as_millis() as u64,
        wall_ms: wall.elapsed().as_millis(),
    })
}

fn print_report(r: &SimulateReport) {
    println!("Two switches (VTEPs 10.10.0.1, 10.10.0.2) joined by a simulated VXLAN underlay;");
    println!(
        "two tenants, each with one nested VM behind each switch, using the same IP addresses.\n"
    );
    println!(
        "{:<6} {:>10} {:>14} {:>10} {:>16}",
        "VNI", "ping", "TCP bytes", "exact", "foreign frames"
    );
    for t in &r.tenants {
        println!(
            "{:<6} {:>10} {:>14} {:>10} {:>16}",
            t.vni,
            format!("{}/{}", t.ping_received, t.ping_sent),
            t.tcp_bytes_received,
            if t.tcp_byte_exact { "yes" } else { "NO" },
            t.frames_from_other_tenants
        );
    }
    println!();
    println!(
        "{:<10} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "switch", "fdb", "arp", "forwarded", "encap", "decap", "flooded", "drops"
    );
    for s in &r.switches {
        println!(
            "{:<10} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8} {:>8}",
            s.name,
            s.fdb_entries,
            s.arp_entries,
            s.events.forwarded,
            s.events.encapsulated,
            s.events.decapsulated,
            s.events.flooded,
            s.drops.iter().map(|(_, n)| n).sum::<u64>()
        );
    }
    println!(
        "\nunderlay: {} VXLAN frames carried ({} of them ARP); {} ms simulated in {} ms",
        r.underlay_frames, r.underlay_arp_frames, r.simulated_ms, r.wall_ms
    );
}

fn check(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let origin = path.display().to_string();
    let cfg = Config::load(path)?;
    cfg.check_interfaces(&origin, std::path::Path::new("/sys/class/net"))?;
    if json {
        let v = serde_json::json!({
            "mode": cfg.mode,
            "control_socket": cfg.control_socket,
            "ports": cfg.ports.iter().map(|p| serde_json::json!({
                "interface": p.interface, "vni": p.port.vni, "mac": p.port.mac, "ips": p.port.ips,
            })).collect::<Vec<_>>(),
            "uplink": cfg.uplink.as_ref().map(|u| serde_json::json!({
                "interface": u.interface, "address": u.address, "udp_port": u.udp_port, "mtu": u.mtu,
            })),
            "peers": cfg.peers.iter().map(|p| serde_json::json!({ "address": p.address, "vnis": p.vnis })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{origin}: ok ({:?} mode, {} ports, {}, {} peers)",
            cfg.mode,
            cfg.ports.len(),
            cfg.uplink
                .as_ref()
                .map_or("no uplink".to_owned(), |u| format!(
                    "uplink {} at {}",
                    u.interface, u.address
                )),
            cfg.peers.len()
        );
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run_switch(path: &std::path::Path) -> anyhow::Result<()> {
    use kangaroo_switch::config::Mode;
    use kangaroo_switch::port::opener::{EbpfOpener, PacketOpener, PortOpener};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    init_logging();
    let origin = path.display().to_string();
    let cfg = Config::load(path)?;
    cfg.check_interfaces(&origin, std::path::Path::new("/sys/class/net"))?;
    let workers = cfg.datapath.workers();
    // Receive slots hold a whole GSO super-frame (up to 64 KiB): guests with TSO send them to
    // packet ports, and peers whose packets crossed only virtual links send them in one datagram.
    let max_frame = usize::from(u16::MAX);
    let hook = match cfg.mode {
        Mode::Tc => kangaroo_switch::xdp::Hook::Tc,
        _ => kangaroo_switch::xdp::Hook::Xdp,
    };
    let afxdp = match cfg.mode {
        Mode::Packet => None,
        _ => Some(
            EbpfOpener::with_hook(
                hook,
                Default::default(),
                matches!(cfg.mode, Mode::Xdp | Mode::Tc),
                u32::try_from(cfg.fdb.capacity).unwrap_or(u32::MAX),
            )
            .with_context(|| format!("{origin}: mode: {:?}", cfg.mode))?,
        ),
    };
    if let Some(a) = &afxdp {
        // The kernel drops a storm's excess before it costs the slow path anything.
        a.set_storm(&cfg.storm)
            .with_context(|| format!("{origin}: storm: setting the kernel's limits"))?;
    }
    tracing::info!(mode = ?cfg.mode, why = %cfg.mode_reason(), "datapath mode");
    let opener = |w: usize, n: usize| -> Box<dyn PortOpener> {
        match &afxdp {
            Some(a) => Box::new(a.for_worker(w as u32, n as u32)),
            None => Box::new(PacketOpener { fanout: n > 1 }),
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let secure = match (&cfg.secure, &cfg.uplink) {
        (Some(sec), Some(up)) => Some(Arc::new(open_secure(&origin, sec, up, &cfg.peers)?)),
        _ => None,
    };
    let (handle, queues) =
        kangaroo_switch::control::job_queues(workers).context("creating the control channels")?;
    let running = kangaroo_switch::datapath::start(
        kangaroo_switch::datapath::Options {
            cores: cfg.datapath.cores.clone(),
            busy_poll: cfg.datapath.busy_poll,
            switch: SwitchConfig {
                fdb: cfg.fdb,
                storm: cfg.storm,
                max_frame,
                underlay_mtu: cfg.uplink.as_ref().map_or(1500, |u| u.mtu),
                ..SwitchConfig::default()
            },
            uplink: cfg.uplink.clone().map(|u| (u, cfg.peers.clone())),
            secure,
        },
        opener,
        &cfg.ports,
        queues,
        stop.clone(),
    )
    .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
    let control = match kangaroo_switch::control::serve(&cfg.control_socket, handle, shutdown_rx) {
        Ok(c) => c,
        Err(e) => {
            drop(running.stop());
            return Err(e);
        }
    };
    tracing::info!(
        ports = cfg.ports.len(),
        mode = ?cfg.mode,
        workers,
        control = %cfg.control_socket.display(),
        "kangaroo-switch running"
    );
    let mut died = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(w) = running.dead_worker() {
            died = Some(w);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = shutdown.send(());
    let _ = control.join();
    let sw = running.stop();
    if let Some(sw) = &sw {
        let report = kangaroo_switch::control::stats_json(sw);
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    drop(sw);
    if let Some(w) = died {
        anyhow::bail!("datapath worker {w} stopped unexpectedly (its panic is logged above)");
    }
    tracing::info!("kangaroo-switch stopped");
    Ok(())
}

/// Loads (or creates) this host's key, binds the secure tunnels' socket and registers the
/// configured secure peers.
fn open_secure(
    origin: &str,
    sec: &kangaroo_switch::config::SecureSettings,
    up: &kangaroo_switch::config::UplinkSettings,
    peers: &[kangaroo_switch::config::PeerSettings],
) -> anyhow::Result<kangaroo_switch::secure::Secure> {
    use kangaroo_switch::secure::{load_or_create_key, Secure};
    let (keys, created) =
        load_or_create_key(&sec.key_file).with_context(|| format!("{origin}: secure.key_file"))?;
    let public = keys.public();
    let bind = std::net::SocketAddrV4::new(up.address, sec.port);
    let secure = Secure::open(keys, bind, sec.keepalive_secs)
        .with_context(|| format!("{origin}: secure.port: binding {bind}"))?;
    if created {
        tracing::info!(key_file = %sec.key_file.display(), "created this host's private key");
    }
    tracing::info!(public_key = %public, port = sec.port, "secure tunnels");
    secure.set_punch_ttl(sec.punch_ttl);
    if let Some(rv) = &sec.rendezvous {
        secure
            .set_rendezvous(rv)
            .with_context(|| format!("{origin}: secure.rendezvous_key"))?;
        tracing::info!(rendezvous = %rv.endpoint, relay = rv.relay, "secure tunnels: rendezvous");
    }
    for (i, p) in peers.iter().enumerate() {
        if let Some(spec) = p.secure_spec() {
            secure
                .add_peer(&spec)
                .with_context(|| format!("{origin}: peer[{i}].public_key"))?;
        }
    }
    Ok(secure)
}

fn ctl(a: &CtlArgs) -> anyhow::Result<()> {
    use kangaroo_control::api::{PeerRequest, PortRequest};
    use serde_json::Value;
    let (method, path, body): (&str, String, Option<Value>) = match &a.what {
        CtlCommand::Ports => ("GET", "/v1/ports".to_owned(), None),
        CtlCommand::AddPort {
            interface,
            vni,
            mac,
            ips,
        } => (
            "POST",
            "/v1/ports".to_owned(),
            Some(serde_json::to_value(PortRequest {
                interface: interface.clone(),
                vni: *vni,
                mac: mac.clone(),
                ips: ips.clone(),
            })?),
        ),
        CtlCommand::RemovePort { interface } => ("DELETE", format!("/v1/ports/{interface}"), None),
        CtlCommand::Fdb => ("GET", "/v1/fdb".to_owned(), None),
        CtlCommand::Peers => ("GET", "/v1/peers".to_owned(), None),
        CtlCommand::AddPeer {
            address,
            vnis,
            public_key,
            endpoint,
        } => (
            "POST",
            "/v1/peers".to_owned(),
            Some(serde_json::to_value(PeerRequest {
                address: address.clone(),
                vnis: (!vnis.is_empty()).then(|| vnis.clone()),
                public_key: public_key.clone(),
                encryption: None,
                endpoint: endpoint.clone(),
            })?),
        ),
        CtlCommand::Secure => ("GET", "/v1/secure".to_owned(), None),
        CtlCommand::RemovePeer { address } => ("DELETE", format!("/v1/peers/{address}"), None),
        CtlCommand::Stats => ("GET", "/v1/stats".to_owned(), None),
    };
    let client = kangaroo_control::client::Client::new(&a.socket);
    let r = client.send(method, &path, body.as_ref())?;
    if !(200..300).contains(&r.status) {
        anyhow::bail!("{}: {}", r.status, r.message());
    }
    let v = r.json();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let cell = |x: &serde_json::Value, p: &str| match x.pointer(p) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".to_owned(),
        Some(o) => o.to_string(),
    };
    match &a.what {
        CtlCommand::Ports | CtlCommand::AddPort { .. } => {
            println!(
                "{:<16} {:>8} {:>12} {:>12} {:>12}",
                "INTERFACE", "VNI", "RX", "TX", "MAC"
            );
            for p in v.as_array().cloned().unwrap_or_default() {
                println!(
                    "{:<16} {:>8} {:>12} {:>12} {:>12}",
                    cell(&p, "/interface"),
                    cell(&p, "/vni"),
                    cell(&p, "/counters/rx_packets"),
                    cell(&p, "/counters/tx_packets"),
                    cell(&p, "/mac")
                );
            }
        }
        CtlCommand::RemovePort { interface } => println!("released {interface}"),
        CtlCommand::Peers | CtlCommand::AddPeer { .. } => {
            println!(
                "{:<16} {:<24} {:>8} {:<10} {:<8}",
                "PEER", "VNIS", "MACS", "ENCRYPTION", "PATH"
            );
            for p in v.as_array().cloned().unwrap_or_default() {
                println!(
                    "{:<16} {:<24} {:>8} {:<10} {:<8}",
                    cell(&p, "/address"),
                    cell(&p, "/vnis"),
                    cell(&p, "/learned_macs"),
                    cell(&p, "/encryption"),
                    cell(&p, "/secure/path")
                );
            }
        }
        CtlCommand::RemovePeer { address } => println!("removed peer {address}"),
        CtlCommand::Fdb => {
            println!(
                "{:<8} {:<18} {:<20} {:>8} {:>6}",
                "VNI", "MAC", "WHERE", "STATIC", "AGE"
            );
            for e in v.as_array().cloned().unwrap_or_default() {
                let place = e
                    .pointer("/dest/interface")
                    .or_else(|| e.pointer("/dest/vtep"))
                    .map(|x| x.to_string().trim_matches('"').to_owned())
                    .unwrap_or_default();
                println!(
                    "{:<8} {:<18} {:<20} {:>8} {:>6}",
                    cell(&e, "/vni"),
                    cell(&e, "/mac"),
                    place,
                    cell(&e, "/static"),
                    cell(&e, "/age_secs")
                );
            }
        }
        CtlCommand::Stats => {
            let nonzero = |m: &serde_json::Value| -> Vec<String> {
                m.as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            println!(
                "fdb entries: {}, arp entries: {}",
                cell(&v, "/fdb_entries"),
                cell(&v, "/arp_entries")
            );
            println!("events: {}", nonzero(&v["events"]).join(" "));
            println!("drops:  {}", nonzero(&v["drops"]).join(" "));
            if !v["secure"].is_null() {
                println!("secure: {}", nonzero(&v["secure"]).join(" "));
            }
        }
        CtlCommand::Secure => {
            println!("public key: {}", cell(&v, "/public_key"));
            println!("port:       {}", cell(&v, "/port"));
            if !v["rendezvous"].is_null() {
                println!(
                    "rendezvous: {} ({}, RTT {} ms); this host seen at {}",
                    cell(&v, "/rendezvous/endpoint"),
                    cell(&v, "/rendezvous/path"),
                    cell(&v, "/rendezvous/rtt_ms"),
                    cell(&v, "/public_endpoint")
                );
            }
            let c = &v["counters"];
            let counters: Vec<String> = c
                .as_object()
                .map(|o| o.iter().map(|(k, x)| format!("{k}={x}")).collect())
                .unwrap_or_default();
            println!("counters:   {}", counters.join(" "));
            println!(
                "{:<16} {:<22} {:<8} {:>8} {:>10} {:>10}",
                "PEER", "ENDPOINT", "PATH", "RTT_MS", "TX", "RX"
            );
            for p in v["peers"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{:<16} {:<22} {:<8} {:>8} {:>10} {:>10}",
                    cell(&p, "/vtep"),
                    cell(&p, "/endpoint"),
                    cell(&p, "/path"),
                    cell(&p, "/rtt_ms"),
                    cell(&p, "/tx_packets"),
                    cell(&p, "/rx_packets")
                );
            }
        }
    }
    Ok(())
}

fn public_key(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let Some(sec) = &cfg.secure else {
        anyhow::bail!(
            "{}: no [secure] section: this host has no key",
            path.display()
        );
    };
    let (keys, _) = kangaroo_switch::secure::load_or_create_key(&sec.key_file)
        .with_context(|| format!("{}: secure.key_file", path.display()))?;
    println!("{}", keys.public());
    Ok(())
}

fn rendezvous(path: &std::path::Path, print_key: bool) -> anyhow::Result<()> {
    use kangaroo_switch::rendezvous::{open, run, RendezvousConfig};
    init_logging();
    let cfg = RendezvousConfig::load(path).map_err(|e| anyhow::anyhow!(e))?;
    if print_key {
        let (keys, _) = kangaroo_switch::secure::load_or_create_key(&cfg.key_file)
            .with_context(|| format!("{}: key_file", path.display()))?;
        println!("{}", keys.public());
        return Ok(());
    }
    let secure = open(&cfg).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let reload = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing signal handlers")?;
    tracing::info!(
        listen = %cfg.listen,
        public_key = %secure.public_key(),
        members = cfg.members.len(),
        relay = cfg.relay,
        "rendezvous running"
    );
    // SIGHUP: the member list is read again; a file that does not parse changes nothing.
    let mut on_reload = || match RendezvousConfig::load(path)
        .and_then(|c| kangaroo_switch::rendezvous::sync_members(&secure, &c))
    {
        Ok(c) => tracing::info!(
            added = c.added,
            removed = c.removed,
            "rendezvous members reloaded"
        ),
        Err(e) => tracing::error!("reloading {}: {e}; members unchanged", path.display()),
    };
    run(&secure, &stop, &reload, &mut on_reload);
    let report = serde_json::json!({
        "counters": secure.counters().snapshot().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "members": secure.status(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Rendezvous { config, public_key } => rendezvous(&config, public_key),
        Command::Ctl(a) => ctl(&a),
        Command::Run { config } => run_switch(&config),
        Command::Check { config, json } => check(&config, json),
        Command::PublicKey { config } => public_key(&config),
        Command::Simulate(args) => {
            let r = simulate(&args).context("simulation failed to set up")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_report(&r);
            }
            for t in &r.tenants {
                ensure!(
                    t.ping_received == t.ping_sent
                        && t.tcp_byte_exact
                        && t.frames_from_other_tenants == 0,
                    "tenant VNI {} did not get clean connectivity: {t:?}",
                    t.vni
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kangaroo-switch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn simulate_reports_clean_isolated_connectivity() {
        let r = simulate(&SimulateArgs {
            bytes: 64 * 1024,
            pings: 2,
            json: true,
        })
        .unwrap();
        assert_eq!(r.tenants.len(), 2);
        for t in &r.tenants {
            assert_eq!(t.ping_received, 2, "{t:?}");
            assert!(t.tcp_byte_exact, "{t:?}");
            assert_eq!(t.frames_from_other_tenants, 0, "{t:?}");
        }
        assert!(r.underlay_frames > 0);
    }
}
