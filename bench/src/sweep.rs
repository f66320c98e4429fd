//! Scale sweeps of `kangaroo-bench run`: how the switch's 64-byte frame rate and request/response
//! latency change with the number of learned MACs (FDB size), of ports on one host, and of peers
//! (BUM head-end replication). Each point gets a fresh topology; points alternate within a
//! repetition (1k 10k 100k 1M, 1k 10k …) so drift hits all alike.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::net::{configure_vm, host_end, ns_sh, sh, Mode, Tools, Topology, VM1, VM2};

/// Storm control off: the sweeps measure broadcast replication and learning at full speed, which
/// the switch's default limits would (rightly) cut.
const STORM_OFF: &str = "[storm]\nbum_per_sec = 0\nnew_macs_per_sec = 0\n";
use crate::gen::Generator;
use crate::measure::{self, sink_attach, sink_detach};

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SweepKind {
    /// MACs the switch has learned (1k → 1M), two VMs on one host.
    Fdb,
    /// Ports on one host (2 → 32), two of them exchanging traffic.
    Ports,
    /// Peer hosts (1 → 64), broadcast replicated to every one.
    Peers,
}

impl SweepKind {
    /// Every sweep, in report order.
    pub const ALL: [SweepKind; 3] = [SweepKind::Fdb, SweepKind::Ports, SweepKind::Peers];

    /// Name in results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SweepKind::Fdb => "fdb-size",
            SweepKind::Ports => "ports",
            SweepKind::Peers => "peers",
        }
    }

    /// What the x axis counts.
    pub fn axis(self) -> &'static str {
        match self {
            SweepKind::Fdb => "learned MACs",
            SweepKind::Ports => "ports on the host",
            SweepKind::Peers => "peers (broadcast copies per frame)",
        }
    }

    /// Parses a name.
    ///
    /// # Errors
    /// An unknown name, with the list.
    pub fn parse(s: &str) -> anyhow::Result<SweepKind> {
        SweepKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown sweep {s:?}; known: {}",
                    SweepKind::ALL.map(SweepKind::name).join(", ")
                )
            })
    }

    /// The points of the `full` suite (`quick` takes the first and the last).
    pub fn points(self, full: bool) -> Vec<u32> {
        let all: &[u32] = match self {
            SweepKind::Fdb => &[1_000, 10_000, 100_000, 1_000_000],
            SweepKind::Ports => &[2, 8, 16, 32],
            SweepKind::Peers => &[1, 4, 16, 64],
        };
        if full {
            all.to_vec()
        } else {
            vec![all[0], all[all.len() - 1]]
        }
    }

    /// Smallest and largest point accepted.
    pub fn bounds(self) -> (u32, u32) {
        match self {
            SweepKind::Fdb => (1, 1 << 20),
            SweepKind::Ports => (2, 64),
            SweepKind::Peers => (1, 200),
        }
    }

    /// The figures measured at each point: (name, unit, more is better).
    pub fn figures(self) -> [(&'static str, &'static str, bool); 2] {
        let frames = match self {
            SweepKind::Peers => ("bum-64", "Mpps", true),
            _ => ("frames-64", "Mpps", true),
        };
        [frames, ("udp-rr", "us p50", false)]
    }
}

/// How long and how often each point is measured.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Repetitions of every point.
    pub reps: usize,
    /// Seconds per frame-rate figure.
    pub seconds: f64,
    /// Round trips per latency figure.
    pub round_trips: u32,
}

/// One sweep to run.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// What it varies.
    pub kind: SweepKind,
    /// The points, in the order they alternate.
    pub points: Vec<u32>,
}

/// One measurement at one point of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepSample {
    /// Sweep name.
    pub sweep: String,
    /// Datapath mode of the switch.
    pub mode: String,
    /// The point (MACs, ports or peers).
    pub x: u64,
    /// Repetition (from 0).
    pub rep: usize,
    /// Figure name (`frames-64`, `bum-64`, `udp-rr`).
    pub figure: String,
    /// The figure (`NaN`, written as `null`, for a failed measurement).
    #[serde(deserialize_with = "crate::measure::nan_if_null")]
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Further figures (loss, copies, entries learned, …).
    pub extra: Value,
    /// The frame generator that sent the traffic (frame-rate figures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<Generator>,
}

/// Median, min and max at one point, and the ratio to the sweep's first point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepSummary {
    /// Sweep name.
    pub sweep: String,
    /// Datapath mode.
    pub mode: String,
    /// Figure name.
    pub figure: String,
    /// Unit.
    pub unit: String,
    /// Whether more is better.
    pub higher_is_better: bool,
    /// The point.
    pub x: u64,
    /// Median of the samples.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub n: usize,
    /// median / the median at the smallest point of the same sweep, mode, figure and generator.
    pub ratio_to_first: Option<f64>,
    /// The frame generator of these samples (frame-rate figures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<Generator>,
}

/// Medians per (sweep, mode, figure, generator, point).
pub fn summarize(samples: &[SweepSample]) -> Vec<SweepSummary> {
    type Key = (usize, String, String, Option<Generator>, u64);
    let rank = |s: &str| {
        SweepKind::ALL
            .iter()
            .position(|k| k.name() == s)
            .unwrap_or(usize::MAX)
    };
    let mut groups: BTreeMap<Key, (String, Vec<f64>)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.value.is_finite()) {
        groups
            .entry((
                rank(&s.sweep),
                s.mode.clone(),
                s.figure.clone(),
                s.generator,
                s.x,
            ))
            .or_insert_with(|| (s.sweep.clone(), Vec::new()))
            .1
            .push(s.value);
    }
    let mut out: Vec<SweepSummary> = Vec::new();
    for ((_, mode, figure, generator, x), (sweep, mut v)) in groups {
        let higher = SweepKind::parse(&sweep).map_or(true, |k| {
            k.figures()
                .iter()
                .find(|f| f.0 == figure)
                .is_none_or(|f| f.2)
        });
        let unit = samples
            .iter()
            .find(|s| s.sweep == sweep && s.figure == figure)
            .map(|s| s.unit.clone())
            .unwrap_or_default();
        let median = measure::median(&mut v);
        // Groups come in ascending x per (sweep, mode, figure, generator): the first one seen
        // is the base.
        let first = out
            .iter()
            .find(|o| {
                o.sweep == sweep && o.mode == mode && o.figure == figure && o.generator == generator
            })
            .map(|o| o.median);
        out.push(SweepSummary {
            ratio_to_first: Some(first.unwrap_or(median))
                .filter(|b| *b > 0.0)
                .map(|b| median / b),
            sweep,
            mode,
            figure,
            unit,
            higher_is_better: higher,
            x,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: v.len(),
            median,
            generator,
        });
    }
    out
}

/// Runs every sweep of `specs` in `mode`, `opts.reps` times with the points alternating; appends to
/// `samples`. Returns false if `stop` cut it short.
///
/// # Errors
/// A topology that cannot be built; failed measurements are recorded as `NaN` with the reason.
pub fn run(
    specs: &[SweepSpec],
    mode: Mode,
    opts: &Settings,
    tools: &Tools,
    stop: &AtomicBool,
    samples: &mut Vec<SweepSample>,
) -> anyhow::Result<bool> {
    // The run's prefix, as for the contenders, so one prefix finds everything a run made.
    let base = format!("kb{:x}-s", std::process::id());
    let mut n = 0;
    for rep in 0..opts.reps {
        for spec in specs {
            for &x in &spec.points {
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                n += 1;
                let prefix = format!("{base}-{n}");
                eprintln!(
                    "kangaroo-bench: rep {}/{} sweep {} ({}) at {x}",
                    rep + 1,
                    opts.reps,
                    spec.kind.name(),
                    mode.as_str()
                );
                let point = Point {
                    kind: spec.kind,
                    x,
                    mode,
                };
                let (topo, built) = match point.build(&prefix, tools, stop) {
                    Ok(b) => b,
                    // Ctrl-C reaches the switches being started too: not a failure.
                    Err(_) if stop.load(Ordering::Relaxed) => return Ok(false),
                    Err(e) => {
                        return Err(e.context(format!("building sweep {} at {x}", spec.kind.name())))
                    }
                };
                for (figure, unit, _) in spec.kind.figures() {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(false);
                    }
                    let r = if figure == "udp-rr" {
                        measure::rr(&topo, opts.round_trips, tools, stop)
                    } else if spec.kind == SweepKind::Peers {
                        bum(&topo, x, opts.seconds, tools, stop)
                    } else {
                        measure::frames(&topo, opts.seconds, tools, stop)
                    };
                    let (value, mut extra) = match r {
                        Ok(v) => v,
                        Err(_) if stop.load(Ordering::Relaxed) => return Ok(false),
                        Err(e) => (f64::NAN, json!({ "error": format!("{e:#}") })),
                    };
                    if let (Some(o), Value::Object(b)) = (extra.as_object_mut(), &built) {
                        o.extend(b.clone());
                    }
                    eprintln!("  {figure:<10} {value:>10.3} {unit}");
                    samples.push(SweepSample {
                        sweep: spec.kind.name().to_owned(),
                        mode: mode.as_str().to_owned(),
                        x: u64::from(x),
                        rep,
                        figure: figure.to_owned(),
                        value,
                        unit: unit.to_owned(),
                        generator: measure::generator_of(&extra),
                        extra,
                    });
                }
                drop(topo);
            }
        }
    }
    Ok(true)
}

/// The MAC and address of VM `i` (from 1) of the ports sweep.
fn vm_addr(i: u32) -> (String, String) {
    match i {
        1 => (VM1.0.to_owned(), VM1.1.to_owned()),
        2 => (VM2.0.to_owned(), VM2.1.to_owned()),
        _ => (
            format!("02:00:00:00:0c:{i:02x}"),
            format!("10.97.0.{}", i + 10),
        ),
    }
}

/// The peers sweep's sink namespace, which answers for the further peers.
fn sink_ns(prefix: &str) -> String {
    format!("{prefix}-s")
}

/// Address of fake peer `k` (from 1) on the peers sweep's underlay.
fn fake_peer(k: u32) -> String {
    format!("10.96.{}.{}", k / 200, 10 + k % 200)
}

struct Point {
    kind: SweepKind,
    x: u32,
    mode: Mode,
}

impl Point {
    /// Builds the point's topology; returns it with figures about the build (entries learned).
    fn build(
        &self,
        prefix: &str,
        tools: &Tools,
        stop: &AtomicBool,
    ) -> anyhow::Result<(Topology, Value)> {
        let (lo, hi) = self.kind.bounds();
        if !(lo..=hi).contains(&self.x) {
            bail!(
                "{} sweep: {} is outside {lo}..={hi}",
                self.kind.name(),
                self.x
            );
        }
        let mut t = Topology::empty(prefix)?;
        t.peer_fed = self.mode == Mode::Tc;
        let built = match self.kind {
            SweepKind::Fdb => {
                self.one_host(&mut t, prefix, 2, tools)?;
                t.await_vms("fdb sweep")?;
                self.learn(&t, tools, stop)?
            }
            SweepKind::Ports => {
                self.one_host(&mut t, prefix, self.x, tools)?;
                t.await_vms("ports sweep")?;
                json!({})
            }
            SweepKind::Peers => {
                self.two_hosts(&mut t, prefix, tools)?;
                t.await_vms("peers sweep")?;
                json!({})
            }
        };
        Ok((t, built))
    }

    /// `ports` VMs behind one switch; VM 1 and VM 2 are the first two.
    fn one_host(
        &self,
        t: &mut Topology,
        prefix: &str,
        ports: u32,
        tools: &Tools,
    ) -> anyhow::Result<()> {
        let h = format!("{prefix}-h");
        t.add_ns(&h)?;
        // A table as large as the largest point at every point, so only occupancy varies;
        // storm control off, since the sweep's learning phase is a MAC flood by design.
        let mut cfg = format!(
            "mode = \"{}\"\ncontrol_socket = \"{}\"\n[fdb]\ncapacity = 1048576\nmax_per_source = 1048576\n{STORM_OFF}",
            self.mode.as_str(),
            t.switch_socket("h").display()
        );
        for i in 1..=ports {
            let v = format!("{prefix}-v{i}");
            t.add_ns(&v)?;
            let port = format!("p{i}");
            sh(&[
                "ip", "link", "add", &port, "netns", &h, "type", "veth", "peer", "name", "eth0",
                "netns", &v,
            ])?;
            sh(&["ip", "-n", &h, "link", "set", &port, "up"])?;
            host_end(&h, &port)?;
            let (mac, ip) = vm_addr(i);
            configure_vm(&v, &mac, &ip, "1500")?;
            cfg += &format!("[[port]]\ninterface = \"{port}\"\nvni = 1\n");
        }
        t.start_switch(&h, &cfg, "h", tools)
    }

    /// VM 1 behind host A, VM 2 behind host B; A's switch has B and `x - 1` further peers, whose
    /// addresses lead to a sink namespace on the underlay that drops and counts in XDP.
    fn two_hosts(&self, t: &mut Topology, prefix: &str, tools: &Tools) -> anyhow::Result<()> {
        let u = format!("{prefix}-u");
        t.add_ns(&u)?;
        sh(&["ip", "-n", &u, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &u, "link", "set", "br0", "up"])?;
        let hosts = [
            (format!("{prefix}-ha"), "10.96.0.1", "a", t.vm1.clone(), VM1),
            (format!("{prefix}-hb"), "10.96.0.2", "b", t.vm2.clone(), VM2),
        ];
        let sink = sink_ns(prefix);
        for (ns, addr, up) in hosts
            .iter()
            .map(|(h, a, tag, _, _)| (h.clone(), *a, format!("u{tag}")))
            .chain([(sink.clone(), "10.96.0.9", "us".to_owned())])
        {
            t.add_ns(&ns)?;
            sh(&[
                "ip", "link", "add", "ul0", "netns", &ns, "type", "veth", "peer", "name", &up,
                "netns", &u,
            ])?;
            sh(&["ip", "-n", &u, "link", "set", &up, "master", "br0", "up"])?;
            ns_sh(&u, &["ethtool", "-K", &up, "gro", "on"])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                "ul0",
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", "ul0", "up"])?;
        }
        // The sink's MAC is static on the bridge (it never sends once its XDP drops all) and
        // every fake peer resolves to it on host A.
        let sink_mac = ns_sh(&sink, &["cat", "/sys/class/net/ul0/address"])?
            .trim()
            .to_owned();
        sh(&[
            "bridge", "-n", &u, "fdb", "replace", &sink_mac, "dev", "us", "master", "static",
        ])?;
        let mut peers_a = String::from("[[peer]]\naddress = \"10.96.0.2\"\n");
        for k in 1..self.x {
            let addr = fake_peer(k);
            sh(&[
                "ip",
                "-n",
                &hosts[0].0,
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &sink_mac,
                "dev",
                "ul0",
                "nud",
                "permanent",
            ])?;
            peers_a += &format!("[[peer]]\naddress = \"{addr}\"\n");
        }
        sink_attach(&sink, "ul0", tools)?;
        for (i, (h, addr, tag, v, (mac, ip))) in hosts.iter().enumerate() {
            t.add_ns(v)?;
            sh(&[
                "ip", "link", "add", "vm", "netns", h, "type", "veth", "peer", "name", "eth0",
                "netns", v,
            ])?;
            sh(&["ip", "-n", h, "link", "set", "vm", "up"])?;
            host_end(h, "vm")?;
            configure_vm(v, mac, ip, "1450")?;
            let peers = if i == 0 {
                peers_a.clone()
            } else {
                "[[peer]]\naddress = \"10.96.0.1\"\n".to_owned()
            };
            let cfg = format!(
                "mode = \"{}\"\ncontrol_socket = \"{}\"\n{STORM_OFF}[[port]]\ninterface = \"vm\"\nvni = 1\n[uplink]\ninterface = \"ul0\"\naddress = \"{addr}\"\n{peers}",
                self.mode.as_str(),
                t.switch_socket(tag).display()
            );
            t.start_switch(h, &cfg, tag, tools)?;
        }
        Ok(())
    }

    /// Fills the switch's FDB with `x` MACs learned from VM 1's port (frames from distinct
    /// sources to VM 2, which drops them in XDP); passes repeat (bounded) until the switch
    /// reports them all.
    fn learn(&self, t: &Topology, tools: &Tools, stop: &AtomicBool) -> anyhow::Result<Value> {
        let want = u64::from(self.x) + 2;
        let sock = t.switch_socket("h");
        let entries = || -> anyhow::Result<u64> {
            let out = sh(&[
                &tools.switch.display().to_string(),
                "ctl",
                "--socket",
                &sock.display().to_string(),
                "--json",
                "stats",
            ])?;
            let v: Value = serde_json::from_str(&out).context("ctl stats output")?;
            v.get("fdb_entries")
                .and_then(Value::as_u64)
                .context("ctl stats: no fdb_entries")
        };
        sink_attach(&t.vm2, "eth0", tools)?;
        let started = Instant::now();
        let result = (|| {
            let sources = self.x.to_string();
            let mut have = entries()?;
            let mut passes = 0;
            while have < want && passes < 8 {
                passes += 1;
                measure::flood_from_vm1(t, tools, stop, VM2, 30.0, &["--sources", &sources])?;
                // The switch drains its queues (bounded).
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    measure::sleep_unless(stop, 0.3);
                    let now = entries()?;
                    if now == have || now >= want || Instant::now() > deadline {
                        have = now;
                        break;
                    }
                    have = now;
                }
            }
            if have < want {
                bail!("the switch learned {have} of {want} MACs in {passes} passes");
            }
            Ok(
                json!({ "fdb_entries": have, "learn_passes": passes, "learn_seconds": started.elapsed().as_secs_f64() }),
            )
        })();
        sink_detach(&t.vm2, "eth0");
        result
    }
}

/// Broadcast 64-byte frames from VM 1 for `secs`: the copies VM 2 (behind host B) receives per
/// second, and every copy on the underlay (VM 2's and the sink's for the other peers).
fn bum(
    t: &Topology,
    peers: u32,
    secs: f64,
    tools: &Tools,
    stop: &AtomicBool,
) -> anyhow::Result<(f64, Value)> {
    let sink = sink_ns(t.prefix());
    sink_attach(&t.vm2, "eth0", tools)?;
    let result = (|| {
        let before = (
            measure::xdp_drops(&t.vm2, "eth0")?,
            measure::xdp_drops(&sink, "ul0")?,
        );
        let flood = measure::flood_from_vm1(
            t,
            tools,
            stop,
            ("ff:ff:ff:ff:ff:ff", "10.97.0.255"),
            secs,
            &[],
        )?;
        std::thread::sleep(Duration::from_millis(300));
        let after = (
            measure::xdp_drops(&t.vm2, "eth0")?,
            measure::xdp_drops(&sink, "ul0")?,
        );
        let at_b = after.0.saturating_sub(before.0);
        let elsewhere = after.1.saturating_sub(before.1);
        let secs = flood.seconds;
        Ok((
            at_b as f64 / secs / 1e6,
            json!({
                "sent": flood.sent,
                "received_at_peer_b": at_b,
                "copies_at_other_peers": elsewhere,
                "copies_per_second": (at_b + elsewhere) as f64 / secs,
                "expected_copies_per_frame": peers,
                "generator": flood.generator,
                "generator_pps": flood.pps,
            }),
        ))
    })();
    sink_detach(&t.vm2, "eth0");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sweep: &str, x: u64, figure: &str, v: f64) -> SweepSample {
        SweepSample {
            sweep: sweep.into(),
            mode: "xdp".into(),
            x,
            rep: 0,
            figure: figure.into(),
            value: v,
            unit: "Mpps".into(),
            extra: Value::Null,
            generator: None,
        }
    }

    #[test]
    fn ratios_are_to_the_smallest_point() {
        let sum = summarize(&[
            s("fdb-size", 1_000_000, "frames-64", 0.27),
            s("fdb-size", 1_000, "frames-64", 0.30),
            s("fdb-size", 1_000, "frames-64", 0.32),
            s("fdb-size", 1_000, "frames-64", 0.28),
            s("ports", 32, "frames-64", f64::NAN),
        ]);
        assert_eq!(sum.len(), 2, "{sum:?}");
        assert_eq!((sum[0].x, sum[0].median, sum[0].n), (1_000, 0.30, 3));
        assert_eq!(sum[0].ratio_to_first, Some(1.0));
        assert_eq!(sum[1].x, 1_000_000);
        assert!((sum[1].ratio_to_first.unwrap() - 0.9).abs() < 1e-9);
    }

    #[test]
    fn names_and_points() {
        for k in SweepKind::ALL {
            assert_eq!(SweepKind::parse(k.name()).unwrap(), k);
            let (lo, hi) = k.bounds();
            for full in [false, true] {
                assert!(k.points(full).iter().all(|p| (lo..=hi).contains(p)));
            }
        }
        assert!(SweepKind::parse("vlans").is_err());
        assert_eq!(fake_peer(1), "10.96.0.11");
        assert_eq!(fake_peer(199), "10.96.0.209");
        assert_eq!(fake_peer(200), "10.96.1.10");
    }
}
