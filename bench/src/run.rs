//! `kangaroo-bench run`: every contender on the same topology, workloads repeated with the
//! contenders alternating (A B C … A B C …) so drift hits all alike; medians with min/max and
//! ratios to the Linux bridge (one host) and the kernel's VXLAN (two hosts), written as
//! `results.json`, `report.md` and one SVG chart per workload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::gen::Generator;
use crate::measure::{bounded, frames, generator_of, median, rr, spawn_in};
use crate::net::{Contender, Tools, Topology, VM2};

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// One TCP stream (iperf3), guests with default offloads.
    Tcp1,
    /// Four TCP streams.
    Tcp4,
    /// One TCP stream with the guests' transmit offloads off.
    Tcp1NoOffload,
    /// UDP request/response round trips, one at a time.
    Rr,
    /// 64-byte frames, as fast as one core sends them.
    Frames64,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 5] = [
        Workload::Tcp1,
        Workload::Tcp4,
        Workload::Tcp1NoOffload,
        Workload::Rr,
        Workload::Frames64,
    ];

    /// Name in results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Tcp1 => "tcp-1",
            Workload::Tcp4 => "tcp-4",
            Workload::Tcp1NoOffload => "tcp-1-no-offload",
            Workload::Rr => "udp-rr",
            Workload::Frames64 => "frames-64",
        }
    }

    /// Parses a name.
    ///
    /// # Errors
    /// An unknown name, with the list.
    pub fn parse(s: &str) -> anyhow::Result<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown workload {s:?}; known: {}",
                    Workload::ALL.map(Workload::name).join(", ")
                )
            })
    }

    /// The unit of its main figure, and whether more is better.
    pub fn unit(self) -> (&'static str, bool) {
        match self {
            Workload::Tcp1 | Workload::Tcp4 | Workload::Tcp1NoOffload => ("Gbit/s", true),
            Workload::Rr => ("us p50", false),
            Workload::Frames64 => ("Mpps", true),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// `quick` or `full` (recorded).
    pub suite: String,
    /// Contenders, in the order they alternate.
    pub contenders: Vec<Contender>,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Repetitions of every (contender, workload).
    pub reps: usize,
    /// Seconds per throughput measurement.
    pub seconds: f64,
    /// Round trips per latency measurement.
    pub round_trips: u32,
    /// Output directory.
    pub out: PathBuf,
    /// Scale sweeps, run after the contenders.
    pub sweeps: Vec<crate::sweep::SweepSpec>,
    /// Datapath modes the sweeps run in.
    pub sweep_modes: Vec<crate::net::Mode>,
    /// Repetitions of every sweep point.
    pub sweep_reps: usize,
}

/// One measurement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Workload name.
    pub workload: String,
    /// Contender name.
    pub contender: String,
    /// Repetition (from 0).
    pub rep: usize,
    /// The main figure (`NaN`, written as `null`, for a failed measurement).
    #[serde(deserialize_with = "crate::measure::nan_if_null")]
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Further figures (p99, loss, frames sent, …).
    pub extra: Value,
    /// The frame generator that sent the traffic (frame-rate figures only): figures from
    /// different generators are different measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<Generator>,
}

/// Median, min and max of one (workload, contender, generator).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Workload name.
    pub workload: String,
    /// Contender name.
    pub contender: String,
    /// Unit.
    pub unit: String,
    /// Whether more is better.
    pub higher_is_better: bool,
    /// Median of the samples.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub n: usize,
    /// The baseline contender (bridge on one host, kernel-vxlan across hosts).
    pub baseline: String,
    /// median / baseline median, when the baseline was measured with the same generator.
    pub ratio: Option<f64>,
    /// The frame generator of these samples (frame-rate figures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<Generator>,
}

/// The whole result file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    /// `kangaroo-bench/1`.
    pub schema: String,
    /// The machine and software measured.
    pub machine: Value,
    /// `quick` or `full`.
    pub suite: String,
    /// Repetitions.
    pub reps: usize,
    /// Seconds per throughput measurement.
    pub seconds: f64,
    /// Whether the run was interrupted (then the samples are those taken).
    pub interrupted: bool,
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Per (workload, contender).
    pub summary: Vec<Summary>,
    /// Every sweep sample.
    #[serde(default)]
    pub sweeps: Vec<crate::sweep::SweepSample>,
    /// Per (sweep, mode, figure, point).
    #[serde(default)]
    pub sweep_summary: Vec<crate::sweep::SweepSummary>,
}

/// The schema name written in `results.json`.
pub const SCHEMA: &str = "kangaroo-bench/1";

fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "kernel": kernel,
        "cpu_model": cpu,
        "cores": cores,
        "git_revision": git,
        "started_unix": started,
    })
}

/// Medians, extremes and ratios of `samples`, per (workload, contender, generator): a ratio
/// compares figures from the same generator only.
pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    type Key = (String, String, Option<Generator>);
    let mut groups: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.value.is_finite()) {
        groups
            .entry((s.workload.clone(), s.contender.clone(), s.generator))
            .or_default()
            .push(s.value);
    }
    let medians: BTreeMap<Key, f64> = groups
        .iter()
        .map(|(k, v)| (k.clone(), median(&mut v.clone())))
        .collect();
    let mut out: Vec<Summary> = groups
        .into_iter()
        .map(|((w, c, g), v)| {
            let wl = Workload::parse(&w).ok();
            let (unit, higher) = wl.map_or(("", true), Workload::unit);
            let baseline =
                Contender::parse(&c).map_or_else(|_| String::new(), |x| x.baseline().name());
            let m = medians[&(w.clone(), c.clone(), g)];
            let ratio = medians
                .get(&(w.clone(), baseline.clone(), g))
                .filter(|b| **b > 0.0)
                .map(|b| m / b);
            Summary {
                workload: w,
                contender: c,
                unit: unit.to_owned(),
                higher_is_better: higher,
                median: m,
                min: v.iter().copied().fold(f64::INFINITY, f64::min),
                max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                n: v.len(),
                baseline,
                ratio,
                generator: g,
            }
        })
        .collect();
    // Workloads and contenders in their documented order (unknown names last).
    let rank_w = |w: &str| {
        Workload::ALL
            .iter()
            .position(|x| x.name() == w)
            .unwrap_or(usize::MAX)
    };
    let rank_c = |c: &str| {
        Contender::ALL
            .iter()
            .position(|x| x.name() == c)
            .unwrap_or(usize::MAX)
    };
    out.sort_by_key(|s| (rank_w(&s.workload), rank_c(&s.contender)));
    out
}

/// Runs the suite; `stop` ends it early (the samples taken are kept and the topology removed).
///
/// # Errors
/// A topology that cannot be built or a tool that is missing; measurements that fail are
/// recorded as failed samples (`NaN`) with the reason, not fatal.
pub fn run(opts: &Options, tools: &Tools, stop: &Arc<AtomicBool>) -> anyhow::Result<Results> {
    let mut samples = Vec::new();
    let mut interrupted = false;
    let base = format!("kb{:x}", std::process::id());
    let mut n = 0;
    'reps: for rep in 0..opts.reps {
        for &c in &opts.contenders {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break 'reps;
            }
            n += 1;
            let prefix = format!("{base}-{n}");
            eprintln!("kangaroo-bench: rep {}/{} {}", rep + 1, opts.reps, c.name());
            let topo = match Topology::build(c, &prefix, tools) {
                Ok(t) => t,
                // Ctrl-C reaches the switches being started too: not a failure of the build.
                Err(_) if stop.load(Ordering::Relaxed) => {
                    interrupted = true;
                    break 'reps;
                }
                Err(e) => return Err(e.context(format!("building the {} topology", c.name()))),
            };
            for &w in &opts.workloads {
                if stop.load(Ordering::Relaxed) {
                    interrupted = true;
                    break 'reps;
                }
                let (value, extra) = match measure(w, &topo, opts, tools, stop) {
                    Ok(r) => r,
                    // A measurement cut short by Ctrl-C is not a result.
                    Err(_) if stop.load(Ordering::Relaxed) => {
                        interrupted = true;
                        break 'reps;
                    }
                    Err(e) => (f64::NAN, json!({ "error": format!("{e:#}") })),
                };
                eprintln!("  {:<18} {value:>10.3} {}", w.name(), w.unit().0);
                samples.push(Sample {
                    workload: w.name().to_owned(),
                    contender: c.name(),
                    rep,
                    value,
                    unit: w.unit().0.to_owned(),
                    generator: generator_of(&extra),
                    extra,
                });
            }
            drop(topo);
        }
    }
    let mut sweeps = Vec::new();
    if !interrupted && !opts.sweeps.is_empty() {
        for &mode in &opts.sweep_modes {
            if !crate::sweep::run(
                &opts.sweeps,
                mode,
                &crate::sweep::Settings {
                    reps: opts.sweep_reps,
                    seconds: opts.seconds,
                    round_trips: opts.round_trips,
                },
                tools,
                stop,
                &mut sweeps,
            )? {
                interrupted = true;
                break;
            }
        }
    }
    let summary = summarize(&samples);
    let sweep_summary = crate::sweep::summarize(&sweeps);
    Ok(Results {
        schema: SCHEMA.to_owned(),
        machine: machine(),
        suite: opts.suite.clone(),
        reps: opts.reps,
        seconds: opts.seconds,
        interrupted,
        samples,
        summary,
        sweeps,
        sweep_summary,
    })
}

fn measure(
    w: Workload,
    t: &Topology,
    o: &Options,
    tools: &Tools,
    stop: &AtomicBool,
) -> anyhow::Result<(f64, Value)> {
    match w {
        Workload::Tcp1 => tcp(t, 1, o.seconds, stop),
        Workload::Tcp4 => tcp(t, 4, o.seconds, stop),
        Workload::Tcp1NoOffload => {
            t.offloads(false)?;
            let r = tcp(t, 1, o.seconds, stop);
            t.offloads(true)?;
            r
        }
        Workload::Rr => rr(t, o.round_trips, tools, stop),
        Workload::Frames64 => frames(t, o.seconds, tools, stop),
    }
}

fn tcp(t: &Topology, streams: u32, secs: f64, stop: &AtomicBool) -> anyhow::Result<(f64, Value)> {
    let port = "5299";
    let _server = spawn_in(&t.vm2, &["iperf3", "-s", "-1", "-p", port])?;
    std::thread::sleep(Duration::from_millis(300));
    let secs_s = format!("{}", secs.ceil().max(1.0));
    let streams_s = streams.to_string();
    let out = bounded(
        t,
        &t.vm1,
        &[
            "iperf3",
            "-c",
            VM2.1,
            "-p",
            port,
            "-t",
            &secs_s,
            "-P",
            &streams_s,
            "-J",
            "--connect-timeout",
            "5000",
        ],
        Duration::from_secs_f64(secs + 20.0),
        stop,
    )?;
    let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 reported no received rate")?;
    let retr = v
        .pointer("/end/sum_sent/retransmits")
        .cloned()
        .unwrap_or(Value::Null);
    Ok((
        bps / 1e9,
        json!({ "retransmits": retr, "streams": streams }),
    ))
}

/// Writes `results.json`, `report.md` and the charts into `dir`.
///
/// # Errors
/// A file cannot be written.
pub fn write_outputs(r: &Results, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    let mut charts = Vec::new();
    for w in Workload::ALL {
        let rows: Vec<&Summary> = r
            .summary
            .iter()
            .filter(|s| s.workload == w.name())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let file = format!("{}.svg", w.name());
        crate::plot::bars(
            &dir.join(&file),
            &format!(
                "{} ({}, median of {}; whiskers min-max)",
                w.name(),
                w.unit().0,
                r.reps
            ),
            &rows
                .iter()
                .map(|s| (s.contender.clone(), s.median, s.min, s.max))
                .collect::<Vec<_>>(),
        )?;
        charts.push((w, file));
    }
    for kind in crate::sweep::SweepKind::ALL {
        for (figure, unit, _) in kind.figures() {
            let rows: Vec<&crate::sweep::SweepSummary> = r
                .sweep_summary
                .iter()
                .filter(|s| s.sweep == kind.name() && s.figure == figure)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut modes: Vec<&str> = rows.iter().map(|s| s.mode.as_str()).collect();
            modes.dedup();
            let series: Vec<crate::plot::Line> = modes
                .iter()
                .map(|m| {
                    (
                        format!("kangaroo-{m}"),
                        rows.iter()
                            .filter(|s| s.mode == *m)
                            .map(|s| (s.x as f64, s.median, s.min, s.max))
                            .collect(),
                    )
                })
                .collect();
            crate::plot::lines(
                &dir.join(sweep_chart(kind.name(), figure)),
                &format!("{} sweep: {figure} (median; whiskers min-max)", kind.name()),
                kind.axis(),
                unit,
                &series,
            )?;
        }
    }
    std::fs::write(dir.join("report.md"), report(r, &charts))?;
    Ok(())
}

/// File name of a sweep's chart.
fn sweep_chart(sweep: &str, figure: &str) -> String {
    format!("sweep-{sweep}-{figure}.svg")
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "failed".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The Markdown report.
pub fn report(r: &Results, charts: &[(Workload, String)]) -> String {
    let m = &r.machine;
    let mut s = format!(
        "# kangaroo-bench {} suite\n\nKernel {}, {} ({} cores), revision {}; {} repetitions, contenders alternating; {} s per throughput figure.{}\n",
        r.suite,
        m["kernel"].as_str().unwrap_or("?"),
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cores"],
        m["git_revision"].as_str().unwrap_or("?"),
        r.reps,
        r.seconds,
        if r.interrupted { " **Interrupted: partial results.**" } else { "" }
    );
    for w in Workload::ALL {
        let rows: Vec<&Summary> = r
            .summary
            .iter()
            .filter(|x| x.workload == w.name())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let (unit, higher) = w.unit();
        // Frame rates name their generator: a figure is only compared with one from the same.
        let generators = rows.iter().any(|x| x.generator.is_some());
        s += &format!(
            "\n## {}\n\n{}, {}.{}\n\n| contender |{} median | min | max | ratio to baseline |\n|---|{}---:|---:|---:|---|\n",
            w.name(),
            unit,
            if higher { "more is better" } else { "less is better" },
            if generators {
                " Frames sent by the generator named in each row; ratios compare rows of the same generator only."
            } else {
                ""
            },
            if generators { " generator |" } else { "" },
            if generators { "---|" } else { "" },
        );
        // Contenders whose every sample failed keep a row, so a reader sees them.
        let mut failed_only: Vec<&str> = r
            .samples
            .iter()
            .filter(|x| x.workload == w.name() && !x.value.is_finite())
            .map(|x| x.contender.as_str())
            .filter(|c| !rows.iter().any(|y| y.contender == *c))
            .collect();
        failed_only.dedup();
        for x in rows {
            s += &format!(
                "| {} |{} {} | {} | {} | {} |\n",
                x.contender,
                if generators {
                    format!(" {} |", generator_name(x.generator))
                } else {
                    String::new()
                },
                fmt(x.median),
                fmt(x.min),
                fmt(x.max),
                x.ratio
                    .map_or_else(|| "-".to_owned(), |q| format!("{q:.2}x {}", x.baseline))
            );
        }
        for c in failed_only {
            s += &format!(
                "| {c} |{} failed | - | - | every sample failed (see below) |\n",
                if generators { " - |" } else { "" }
            );
        }
        if let Some((_, f)) = charts.iter().find(|(cw, _)| *cw == w) {
            s += &format!("\n![{}]({f})\n", w.name());
        }
    }
    s += &sweep_report(r);
    let failed: Vec<&Sample> = r.samples.iter().filter(|x| !x.value.is_finite()).collect();
    let failed_sweeps: Vec<&crate::sweep::SweepSample> =
        r.sweeps.iter().filter(|x| !x.value.is_finite()).collect();
    if !failed.is_empty() || !failed_sweeps.is_empty() {
        s += "\n## Failed measurements\n\n";
        for f in failed {
            s += &format!(
                "- {} {} rep {}: {}\n",
                f.workload, f.contender, f.rep, f.extra["error"]
            );
        }
        for f in failed_sweeps {
            s += &format!(
                "- sweep {} ({}) at {} {} rep {}: {}\n",
                f.sweep, f.mode, f.x, f.figure, f.rep, f.extra["error"]
            );
        }
    }
    s
}

/// The sweeps' tables: one per (sweep, mode), a row per point, each figure with its ratio to
/// the smallest point.
fn sweep_report(r: &Results) -> String {
    let mut s = String::new();
    for kind in crate::sweep::SweepKind::ALL {
        let rows: Vec<&crate::sweep::SweepSummary> = r
            .sweep_summary
            .iter()
            .filter(|x| x.sweep == kind.name())
            .collect();
        if rows.is_empty() {
            continue;
        }
        let figures = kind.figures();
        s += &format!(
            "\n## Sweep: {}\n\nx: {}. Medians (min–max) and the ratio to the smallest point.\n",
            kind.name(),
            kind.axis()
        );
        let mut generators: Vec<&str> = rows
            .iter()
            .filter_map(|x| x.generator.map(Generator::name))
            .collect();
        generators.sort_unstable();
        generators.dedup();
        if !generators.is_empty() {
            s += &format!(
                "Frames sent by the {} generator.\n",
                generators.join(" and the ")
            );
        }
        let mut modes: Vec<&str> = rows.iter().map(|x| x.mode.as_str()).collect();
        modes.sort_unstable();
        modes.dedup();
        for m in modes {
            s += &format!("\n### kangaroo-{m}\n\n| {} |", kind.axis());
            for (f, unit, higher) in figures {
                s += &format!(
                    " {f} ({unit}, {}) | ratio |",
                    if higher {
                        "more is better"
                    } else {
                        "less is better"
                    }
                );
            }
            s += "\n|---:|";
            s += &"---:|---|".repeat(figures.len());
            s += "\n";
            let mut xs: Vec<u64> = rows.iter().filter(|x| x.mode == m).map(|x| x.x).collect();
            xs.sort_unstable();
            xs.dedup();
            for x in xs {
                s += &format!("| {x} |");
                for (f, _, _) in figures {
                    match rows
                        .iter()
                        .find(|y| y.mode == m && y.x == x && y.figure == f)
                    {
                        Some(y) => {
                            s += &format!(
                                " {} ({}–{}) | {} |",
                                fmt(y.median),
                                fmt(y.min),
                                fmt(y.max),
                                y.ratio_to_first
                                    .map_or_else(|| "-".to_owned(), |q| format!("{q:.2}x"))
                            );
                        }
                        None => s += " failed | - |",
                    }
                }
                s += "\n";
            }
        }
        s += "\n";
        for (f, _, _) in figures {
            s += &format!("![{} {f}]({})\n", kind.name(), sweep_chart(kind.name(), f));
        }
    }
    s
}

/// Reads a `results.json`.
///
/// # Errors
/// The file cannot be read, is not a result file, or has another schema.
pub fn load(p: &Path) -> anyhow::Result<Results> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let r: Results = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a kangaroo-bench result file", p.display()))?;
    if r.schema != SCHEMA {
        bail!(
            "{}: schema {:?}, expected {SCHEMA:?}",
            p.display(),
            r.schema
        );
    }
    Ok(r)
}

/// Ratios between two result files: `b / a` per (workload, contender).
///
/// # Errors
/// A file cannot be read or is not a result file.
pub fn compare(a: &Path, b: &Path) -> anyhow::Result<String> {
    let (ra, rb) = (load(a)?, load(b)?);
    let mut s = format!(
        "{:<18} {:<26} {:>10} {:>10} {:>8}\n",
        "workload", "contender", "A", "B", "B/A"
    );
    for x in &ra.summary {
        let same = |y: &&Summary| y.workload == x.workload && y.contender == x.contender;
        if let Some(y) = rb.summary.iter().find(same) {
            if x.generator != y.generator
                && !rb
                    .summary
                    .iter()
                    .any(|y| same(&y) && y.generator == x.generator)
            {
                s += &format!(
                    "{:<18} {:<26} not comparable: frames from the {} generator in A, the {} generator in B\n",
                    x.workload,
                    x.contender,
                    generator_name(x.generator),
                    generator_name(y.generator)
                );
                continue;
            }
        }
        if let Some(y) = rb
            .summary
            .iter()
            .find(|y| same(y) && y.generator == x.generator)
        {
            s += &format!(
                "{:<18} {:<26} {:>10} {:>10} {:>7.2}x\n",
                x.workload,
                x.contender,
                fmt(x.median),
                fmt(y.median),
                y.median / x.median
            );
        }
    }
    for x in &ra.sweep_summary {
        if let Some(y) = rb.sweep_summary.iter().find(|y| {
            y.sweep == x.sweep
                && y.mode == x.mode
                && y.figure == x.figure
                && y.x == x.x
                && y.generator == x.generator
        }) {
            s += &format!(
                "{:<18} {:<26} {:>10} {:>10} {:>7.2}x\n",
                format!("{}/{}", x.sweep, x.figure),
                format!("kangaroo-{} @ {}", x.mode, x.x),
                fmt(x.median),
                fmt(y.median),
                y.median / x.median
            );
        }
    }
    Ok(s)
}

fn generator_name(g: Option<Generator>) -> &'static str {
    g.map_or("(none recorded)", Generator::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(w: &str, c: &str, v: f64) -> Sample {
        Sample {
            workload: w.into(),
            contender: c.into(),
            rep: 0,
            value: v,
            unit: String::new(),
            extra: Value::Null,
            generator: None,
        }
    }

    #[test]
    fn medians_and_ratios() {
        let s = vec![
            sample("tcp-1", "bridge", 10.0),
            sample("tcp-1", "bridge", 14.0),
            sample("tcp-1", "kangaroo-xdp", 3.0),
            sample("tcp-1", "kangaroo-xdp", 4.0),
            sample("tcp-1", "kangaroo-xdp", 5.0),
            sample("tcp-1", "kangaroo-xdp-overlay", f64::NAN),
        ];
        let sum = summarize(&s);
        let b = sum.iter().find(|x| x.contender == "bridge").unwrap();
        assert_eq!((b.median, b.min, b.max, b.n), (12.0, 10.0, 14.0, 2));
        let k = sum.iter().find(|x| x.contender == "kangaroo-xdp").unwrap();
        assert_eq!(k.median, 4.0);
        assert_eq!(k.ratio, Some(4.0 / 12.0));
        // A failed sample is not summarised, and without its baseline there is no ratio.
        assert!(sum.iter().all(|x| x.contender != "kangaroo-xdp-overlay"));
        assert!(report(
            &Results {
                schema: SCHEMA.into(),
                machine: json!({}),
                suite: "quick".into(),
                reps: 2,
                seconds: 1.0,
                interrupted: false,
                samples: s.clone(),
                summary: sum.clone(),
                sweeps: Vec::new(),
                sweep_summary: Vec::new(),
            },
            &[]
        )
        .contains("| kangaroo-xdp | 4.000 | 3.000 | 5.000 | 0.33x bridge |"));
    }

    #[test]
    fn failed_samples_survive_a_round_trip_and_keep_a_row() {
        let samples = vec![
            sample("tcp-1", "bridge", 10.0),
            sample("tcp-1", "ovs", f64::NAN),
        ];
        let r = results(samples);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"value\":null"), "{text}");
        let back: Results = serde_json::from_str(&text).unwrap();
        assert!(back.samples[1].value.is_nan());
        assert_eq!(back.samples[0], r.samples[0]);
        let md = report(&back, &[]);
        assert!(
            md.contains("| ovs | failed | - | - | every sample failed (see below) |"),
            "{md}"
        );
    }

    fn results(samples: Vec<Sample>) -> Results {
        Results {
            schema: SCHEMA.into(),
            machine: json!({}),
            suite: "quick".into(),
            reps: 1,
            seconds: 1.0,
            interrupted: false,
            summary: summarize(&samples),
            samples,
            sweeps: Vec::new(),
            sweep_summary: Vec::new(),
        }
    }

    fn frames(c: &str, v: f64, g: Generator) -> Sample {
        Sample {
            extra: json!({ "generator": g }),
            generator: Some(g),
            ..sample("frames-64", c, v)
        }
    }

    #[test]
    fn ratios_compare_figures_of_one_generator_only() {
        let r = results(vec![
            frames("bridge", 0.5, Generator::LiveFrames),
            frames("kangaroo-xdp", 1.5, Generator::LiveFrames),
            frames("kangaroo-tc", 0.8, Generator::Afxdp),
        ]);
        let row = |c: &str| r.summary.iter().find(|x| x.contender == c).unwrap();
        assert_eq!(row("kangaroo-xdp").ratio, Some(3.0));
        assert_eq!(row("kangaroo-xdp").generator, Some(Generator::LiveFrames));
        // The bridge was measured with another generator: no ratio.
        assert_eq!(row("kangaroo-tc").ratio, None);
        let md = report(&r, &[]);
        assert!(
            md.contains("| kangaroo-xdp | live-frames | 1.500 | 1.500 | 1.500 | 3.00x bridge |"),
            "{md}"
        );
        assert!(
            md.contains("| kangaroo-tc | afxdp | 0.800 | 0.800 | 0.800 | - |"),
            "{md}"
        );
        // The generator survives the result file.
        let back: Results = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.samples[2].generator, Some(Generator::Afxdp));
        assert_eq!(generator_of(&back.samples[2].extra), Some(Generator::Afxdp));
    }

    #[test]
    fn compare_refuses_figures_of_different_generators() {
        let dir = std::env::temp_dir().join(format!("kb-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.json"), dir.join("b.json"));
        let ra = results(vec![
            frames("bridge", 0.5, Generator::LiveFrames),
            sample("tcp-1", "bridge", 10.0),
        ]);
        let rb = results(vec![
            frames("bridge", 0.4, Generator::Packet),
            sample("tcp-1", "bridge", 12.0),
        ]);
        std::fs::write(&a, serde_json::to_string(&ra).unwrap()).unwrap();
        std::fs::write(&b, serde_json::to_string(&rb).unwrap()).unwrap();
        let out = compare(&a, &b).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.contains("not comparable: frames from the live-frames generator in A, the packet generator in B"),
            "{out}"
        );
        assert!(out.contains("1.20x"), "{out}");
        assert!(!out.contains("0.80x"), "{out}");
    }

    #[test]
    fn names_round_trip() {
        for c in Contender::ALL {
            assert_eq!(Contender::parse(&c.name()).unwrap(), c);
        }
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()).unwrap(), w);
        }
        assert!(Contender::parse("ovs-kernel").is_err());
    }
}
