//! The measurements both the contenders' runs ([`crate::run`]) and the sweeps
//! ([`crate::sweep`]) take, in a topology's namespaces: 64-byte frames (through
//! `kangaroo-bench flood`, counted by an XDP or tc sink), UDP request/response latency, and the
//! commands behind them, each bounded in time and cut short by Ctrl-C.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::gen::{Choice, Generator};
use crate::net::{ns_sh, Tools, Topology, VM1, VM2};

/// The generator a measurement's `extra` names (`extra.generator`).
pub fn generator_of(extra: &Value) -> Option<Generator> {
    Generator::parse(extra.get("generator")?.as_str()?).ok()
}

/// Reads a figure that JSON holds as `null` when it was `NaN` (a failed measurement).
///
/// # Errors
/// Neither a number nor `null`.
pub fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The median of `v` (sorted in place); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `args` in namespace `ns` and returns its output, killing it when `limit` passes or
/// `stop` is set (so Ctrl-C ends a measurement at once).
pub fn bounded(
    t: &Topology,
    ns: &str,
    args: &[&str],
    limit: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<String> {
    let out_path = t.dir().join("cmd.out");
    let err_path = t.dir().join("cmd.err");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| args.join(" "))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            if stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            bail!("{} did not finish in {:?}", args.join(" "), limit);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "{}: {status}: {}",
            args.join(" "),
            std::fs::read_to_string(&err_path)
                .unwrap_or_default()
                .trim()
        );
    }
    Ok(out)
}

/// A child process killed when dropped.
pub struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `args` in namespace `ns`, its output discarded; it is killed when the guard drops.
///
/// # Errors
/// The command cannot be started.
pub fn spawn_in(ns: &str, args: &[&str]) -> anyhow::Result<Guard> {
    let c = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| args.join(" "))?;
    Ok(Guard(c))
}

/// UDP request/response between the VMs (`kangaroo-bench pingpong`, `count` round trips one
/// at a time): the p50 round trip in µs and the whole report.
///
/// # Errors
/// The server or client failed or did not finish in time, or `stop` was set.
pub fn rr(
    t: &Topology,
    count: u32,
    tools: &Tools,
    stop: &AtomicBool,
) -> anyhow::Result<(f64, Value)> {
    let bench = tools.bench.display().to_string();
    let listen = format!("{}:7301", VM2.1);
    let _server = spawn_in(
        &t.vm2,
        &[
            &bench,
            "pingpong",
            "serve",
            "--listen",
            &listen,
            "--seconds",
            "60",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let count_s = count.to_string();
    let out = bounded(
        t,
        &t.vm1,
        &[
            &bench, "pingpong", "client", "--to", &listen, "--count", &count_s,
        ],
        Duration::from_secs(120),
        stop,
    )?;
    let v: Value = serde_json::from_str(&out).context("pingpong output")?;
    let p50 = v.get("p50_us").and_then(Value::as_f64).context("no p50")?;
    Ok((p50, v))
}

/// Frames the XDP programs on `dev` in `ns` dropped (the sink's count).
pub fn xdp_drops(ns: &str, dev: &str) -> anyhow::Result<u64> {
    let out = ns_sh(ns, &["ethtool", "-S", dev])?;
    Ok(out
        .lines()
        .filter(|l| l.contains("xdp_drops"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum())
}

/// Frames `dev` in `ns` received (its `rx_packets`).
pub fn rx_packets(ns: &str, dev: &str) -> anyhow::Result<u64> {
    let out = ns_sh(
        ns,
        &[
            "cat",
            &format!("/sys/class/net/{dev}/statistics/rx_packets"),
        ],
    )?;
    out.trim()
        .parse()
        .with_context(|| format!("rx_packets of {dev}: {out:?}"))
}

/// 64-byte frames from VM 1 to VM 2 for `secs` (the run's generator): Mpps received, with
/// frames sent, loss and the generator.
///
/// # Errors
/// A sink could not be attached or the flood failed.
pub fn frames(
    t: &Topology,
    secs: f64,
    tools: &Tools,
    stop: &AtomicBool,
) -> anyhow::Result<(f64, Value)> {
    // VM2 counts and drops in XDP, so its own stack does not bound the figure; frames
    // forwarded into it past its XDP hook (mode "tc") are dropped at tc ingress and counted by
    // the interface.
    sink_attach(&t.vm2, "eth0", tools)?;
    if t.peer_fed {
        tc_sink_attach(&t.vm2, "eth0", tools)?;
    }
    let count = |t: &Topology| {
        if t.peer_fed {
            rx_packets(&t.vm2, "eth0")
        } else {
            xdp_drops(&t.vm2, "eth0")
        }
    };
    let result = (|| {
        let before = count(t)?;
        let flood = flood_from_vm1(t, tools, stop, VM2, secs, &[])?;
        std::thread::sleep(Duration::from_millis(200));
        let after = count(t)?;
        let got = after.saturating_sub(before);
        // The VMs' own few frames (ARP, neighbour discovery) can make `got` exceed `sent`.
        let loss = (1.0 - got as f64 / flood.sent.max(1) as f64).max(0.0);
        Ok((
            got as f64 / flood.seconds / 1e6,
            json!({
                "received": got,
                "sent": flood.sent,
                "loss": loss,
                "generator": flood.generator,
                "generator_pps": flood.pps,
            }),
        ))
    })();
    sink_detach(&t.vm2, "eth0");
    result
}

/// What one `kangaroo-bench flood` reported.
#[derive(Debug, Clone, Deserialize)]
pub struct FloodReport {
    /// Frames sent.
    pub sent: u64,
    /// Seconds spent sending.
    pub seconds: f64,
    /// Frames per second sent.
    pub pps: f64,
    /// The generator that sent them.
    pub generator: Generator,
}

/// Runs `kangaroo-bench flood` in VM 1 (from VM 1's addresses) to `(dst_mac, dst_ip)` for
/// `secs` seconds with `extra` arguments, bounded by `secs + 20` s. The first flood of a run
/// picks the generator ([`Tools::generator`]); every later one uses the same, so the figures of
/// one run come from one generator.
///
/// # Errors
/// The generator failed or did not finish in time, or `stop` was set.
pub fn flood_from_vm1(
    t: &Topology,
    tools: &Tools,
    stop: &AtomicBool,
    (dst_mac, dst_ip): (&str, &str),
    secs: f64,
    extra: &[&str],
) -> anyhow::Result<FloodReport> {
    let bench = tools.bench.display().to_string();
    let secs_s = format!("{secs}");
    let choice = tools
        .generator_used
        .get()
        .map_or(tools.generator, |g| Choice::Only(*g));
    let mut args = vec![
        bench.as_str(),
        "flood",
        "eth0",
        "--src-mac",
        VM1.0,
        "--dst-mac",
        dst_mac,
        "--src-ip",
        VM1.1,
        "--dst-ip",
        dst_ip,
        "--seconds",
        &secs_s,
        "--generator",
        choice.name(),
    ];
    args.extend_from_slice(extra);
    let out = bounded(t, &t.vm1, &args, Duration::from_secs_f64(secs + 20.0), stop)?;
    let report: FloodReport = serde_json::from_str(out.trim())
        .with_context(|| format!("kangaroo-bench flood printed {out:?}"))?;
    // `--sources` floods always use AF_PACKET: they do not choose the run's generator.
    if !extra.contains(&"--sources") && tools.generator_used.set(report.generator).is_ok() {
        eprintln!(
            "kangaroo-bench: frames are sent by the {} generator in this run",
            report.generator
        );
    }
    Ok(report)
}

/// Waits for `secs` unless `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, secs: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Attaches the counting XDP sink (`kangaroo_sink`) to `dev` in `ns`.
///
/// # Errors
/// `ip link set … xdpdrv` failed.
pub fn sink_attach(ns: &str, dev: &str, tools: &Tools) -> anyhow::Result<()> {
    let obj = tools.xdp_object.display().to_string();
    ns_sh(
        ns,
        &[
            "ip",
            "link",
            "set",
            "dev",
            dev,
            "xdpdrv",
            "obj",
            &obj,
            "sec",
            "xdp",
            "program",
            "kangaroo_sink",
        ],
    )?;
    Ok(())
}

/// Attaches the tc sink (`kangaroo_tc_sink`, drops every frame at clsact ingress) to `dev` in
/// `ns`; it goes with the interface.
///
/// # Errors
/// `tc` failed.
pub fn tc_sink_attach(ns: &str, dev: &str, tools: &Tools) -> anyhow::Result<()> {
    let obj = tools.xdp_object.display().to_string();
    ns_sh(ns, &["tc", "qdisc", "replace", "dev", dev, "clsact"])?;
    ns_sh(
        ns,
        &[
            "tc",
            "filter",
            "replace",
            "dev",
            dev,
            "ingress",
            "pref",
            "1",
            "bpf",
            "da",
            "obj",
            &obj,
            "sec",
            "classifier/sink",
        ],
    )?;
    Ok(())
}

/// Removes the XDP sink from `dev` in `ns` (best effort: the namespace may be gone).
pub fn sink_detach(ns: &str, dev: &str) {
    let _ = ns_sh(ns, &["ip", "link", "set", "dev", dev, "xdpdrv", "off"]);
    let _ = ns_sh(ns, &["tc", "qdisc", "del", "dev", dev, "clsact"]);
}
