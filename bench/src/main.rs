//! `kangaroo-bench`: Kangaroo's benchmark harness.
//!
//! Exit codes: 0 success, 1 a failed measurement, 2 bad command-line usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kangaroo_bench::packing;

/// Measure Kangaroo and print results a person can read at a glance (or JSON for scripts).
#[derive(Debug, Parser)]
#[command(name = "kangaroo-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Packing quality and speed on seeded synthetic workloads: heuristic vs the exact solver,
    /// saving vs one VM per instance, cost vs the LP lower bound, time per placement decision.
    Packing(PackingArgs),
    /// Send minimum-size (64-byte) UDP frames out of an interface as fast as one core can, for a
    /// fixed time (run it inside a test namespace); prints frames sent and the rate.
    Flood(FloodArgs),
    /// Build the topologies (namespaces, unique names, always removed, also on Ctrl-C), run
    /// every contender on them with the contenders alternating, and write `results.json`,
    /// `report.md` and one SVG chart per workload (root).
    Run(RunArgs),
    /// Ratios between two `results.json` files (B / A).
    Compare {
        /// The reference run.
        a: std::path::PathBuf,
        /// The run compared with it.
        b: std::path::PathBuf,
    },
    /// Writes `report.md` and the charts again from a `results.json` (into its directory, or
    /// `--out`).
    Report {
        /// The result file.
        results: std::path::PathBuf,
        /// Output directory (default: the result file's).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// UDP request/response latency tool (`serve` in one VM, `client` in another).
    #[command(subcommand)]
    Pingpong(PingpongCmd),
}

#[derive(Debug, Subcommand)]
enum PingpongCmd {
    /// Echo datagrams back for at most SECONDS.
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Seconds to serve for.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Send COUNT requests one at a time; print p50/p99 round trips (JSON).
    Client {
        /// Server address.
        #[arg(long)]
        to: std::net::SocketAddr,
        /// Requests (1 to 1,000,000).
        #[arg(long, default_value_t = 1000)]
        count: u32,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// `quick` (2 repetitions, 2 s per figure, sweeps at their end points once: under 5
    /// minutes) or `full` (5 repetitions, 5 s, every sweep point 3 times).
    #[arg(long, default_value = "quick")]
    suite: String,
    /// Output directory.
    #[arg(long, default_value = "bench-results")]
    out: std::path::PathBuf,
    /// Contenders, comma-separated (default: all), or `none` (sweeps only): veth, bridge, ovs,
    /// kangaroo-{xdp,tc,afxdp,packet}, kernel-vxlan, kangaroo-{xdp,tc,afxdp,packet}-overlay,
    /// kangaroo-tc-secure.
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
    /// Workloads, comma-separated (default: all): tcp-1, tcp-4, tcp-1-no-offload, udp-rr,
    /// frames-64.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Repetitions (overrides the suite's).
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per throughput figure (overrides the suite's).
    #[arg(long)]
    seconds: Option<f64>,
    /// Scale sweeps, comma-separated, or `none` (default: all): fdb-size (1k → 1M learned
    /// MACs), ports (2 → 32), peers (1 → 64, broadcast replication). `full` runs every point,
    /// `quick` the smallest and the largest.
    #[arg(long, value_delimiter = ',')]
    sweeps: Vec<String>,
    /// Datapath modes the sweeps run in, comma-separated (default: xdp).
    #[arg(long, value_delimiter = ',', default_value = "xdp")]
    sweep_modes: Vec<String>,
    /// Points of the fdb-size sweep (overrides the suite's), e.g. 1000,1000000.
    #[arg(long, value_delimiter = ',')]
    fdb_sizes: Vec<u32>,
    /// Points of the ports sweep (overrides the suite's).
    #[arg(long, value_delimiter = ',')]
    port_counts: Vec<u32>,
    /// Points of the peers sweep (overrides the suite's).
    #[arg(long, value_delimiter = ',')]
    peer_counts: Vec<u32>,
    /// The frame generator of the 64-byte figures: `auto` (the first the kernel allows of
    /// live-frames, afxdp, packet, chosen at the run's first flood and kept for the whole run),
    /// or one of them. Results record it with every figure.
    #[arg(long, default_value = "auto", value_parser = parse_choice)]
    generator: kangaroo_bench::gen::Choice,
}

fn run_suite(a: &RunArgs) -> anyhow::Result<bool> {
    use anyhow::Context;
    use kangaroo_bench::net::{Contender, Tools};
    use kangaroo_bench::run::{self, Workload};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let (reps, seconds, round_trips) = match a.suite.as_str() {
        "quick" => (2, 2.0, 500),
        "full" => (5, 5.0, 2000),
        other => anyhow::bail!("--suite {other:?}: use quick or full"),
    };
    let reps = a.reps.unwrap_or(reps);
    let seconds = a.seconds.unwrap_or(seconds);
    anyhow::ensure!((1..=100).contains(&reps), "--reps must be 1..=100");
    anyhow::ensure!(
        seconds > 0.0 && seconds <= 60.0,
        "--seconds must be in (0, 60]"
    );
    let contenders = if a.contenders.is_empty() {
        Contender::ALL.to_vec()
    } else if a.contenders == ["none"] {
        Vec::new()
    } else {
        a.contenders
            .iter()
            .map(|c| Contender::parse(c))
            .collect::<Result<_, _>>()?
    };
    let workloads = if a.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        a.workloads
            .iter()
            .map(|w| Workload::parse(w))
            .collect::<Result<_, _>>()?
    };
    use kangaroo_bench::sweep::{SweepKind, SweepSpec};
    let kinds: Vec<SweepKind> = match a.sweeps.as_slice() {
        [] => SweepKind::ALL.to_vec(),
        [none] if none == "none" => Vec::new(),
        names => names
            .iter()
            .map(|n| SweepKind::parse(n))
            .collect::<Result<_, _>>()?,
    };
    let mut sweeps = Vec::new();
    for kind in kinds {
        let given = match kind {
            SweepKind::Fdb => &a.fdb_sizes,
            SweepKind::Ports => &a.port_counts,
            SweepKind::Peers => &a.peer_counts,
        };
        let points = if given.is_empty() {
            kind.points(a.suite == "full")
        } else {
            given.clone()
        };
        let (lo, hi) = kind.bounds();
        if let Some(bad) = points.iter().find(|p| !(lo..=hi).contains(*p)) {
            anyhow::bail!("{} sweep: point {bad} is outside {lo}..={hi}", kind.name());
        }
        sweeps.push(SweepSpec { kind, points });
    }
    let sweep_modes = a
        .sweep_modes
        .iter()
        .map(|m| kangaroo_bench::net::Mode::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let exe = std::env::current_exe().context("locating kangaroo-bench")?;
    let switch = exe.with_file_name("kangaroo-switch");
    anyhow::ensure!(
        switch.is_file(),
        "{} is missing: build it with cargo build --release -p kangaroo-switch",
        switch.display()
    );
    let scratch = std::env::temp_dir().join(format!("kb{:x}-tools", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let xdp_object = scratch.join("switch.bpf.o");
    std::fs::write(&xdp_object, kangaroo_xdp::OBJECT)?;
    let tools = Tools {
        switch,
        bench: exe,
        xdp_object,
        generator: a.generator,
        generator_used: std::sync::OnceLock::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let opts = run::Options {
        suite: a.suite.clone(),
        contenders,
        workloads,
        reps,
        seconds,
        round_trips,
        out: a.out.clone(),
        sweeps,
        sweep_modes,
        // Sweeps have 12 points in the full suite, and the 1M-MAC point alone takes ≈ 30 s to
        // learn: the full suite measures each point 3 times, the quick one once; --reps sets
        // both.
        sweep_reps: a.reps.unwrap_or(if a.suite == "full" { 3 } else { 1 }),
    };
    let result = run::run(&opts, &tools, &stop);
    let _ = std::fs::remove_dir_all(&scratch);
    let r = result?;
    run::write_outputs(&r, &a.out)?;
    eprintln!(
        "kangaroo-bench: {} samples{}; wrote {}/results.json, report.md and the charts",
        r.samples.len(),
        if r.interrupted { " (interrupted)" } else { "" },
        a.out.display()
    );
    Ok(!r.interrupted)
}

#[derive(Debug, clap::Args)]
struct FloodArgs {
    /// The interface to send from.
    interface: String,
    /// Source MAC address.
    #[arg(long)]
    src_mac: String,
    /// Destination MAC address.
    #[arg(long)]
    dst_mac: String,
    /// Source IPv4 address.
    #[arg(long)]
    src_ip: std::net::Ipv4Addr,
    /// Destination IPv4 address.
    #[arg(long)]
    dst_ip: std::net::Ipv4Addr,
    /// Seconds to send for (at most 60).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Send from this many distinct source MACs (`0a:` followed by the frame's index), each
    /// once per pass, instead of from `--src-mac`: fills a switch's MAC table (at most 2^24).
    #[arg(long, default_value_t = 0)]
    sources: u32,
    /// With `--sources`: stop after this many passes over the sources (or at `--seconds`).
    #[arg(long, default_value_t = 1)]
    passes: u32,
    /// How frames are sent: `auto` (the first the kernel allows, in this order), `live-frames`
    /// (alias `xdp`: the generator program in BPF_PROG_TEST_RUN live-frames mode, the kernel
    /// transmits from a page pool with no socket buffers, the fastest; Linux >= 5.18, and some
    /// machines refuse it), `afxdp` (an AF_XDP socket's transmit ring, copy mode on veth) or
    /// `packet` (AF_PACKET, 64 frames per `sendmmsg`). `--sources` always uses `packet` (each
    /// frame differs). The output names the generator used: figures from different generators
    /// are not comparable.
    #[arg(long, default_value = "auto", value_parser = parse_choice)]
    generator: kangaroo_bench::gen::Choice,
}

fn parse_choice(s: &str) -> Result<kangaroo_bench::gen::Choice, String> {
    kangaroo_bench::gen::Choice::parse(s).map_err(|e| e.to_string())
}

/// The source MAC of frame `i` of a `--sources` flood.
fn source_mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x0a, 0, b[0], b[1], b[2], b[3]]
}

fn flood(a: &FloodArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use kangaroo_bench::gen;
    anyhow::ensure!(
        a.seconds > 0.0 && a.seconds <= 60.0,
        "--seconds must be in (0, 60]"
    );
    let mac = |s: &str| -> anyhow::Result<[u8; 6]> {
        let m: kangaroo_switch::MacAddr = s.parse().map_err(|e| anyhow::anyhow!("{s}: {e}"))?;
        Ok(m.octets())
    };
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(mac(&a.src_mac)?, mac(&a.dst_mac)?)
        .ipv4(a.src_ip.octets(), a.dst_ip.octets(), 64)
        .udp(9, 9)
        .write(&mut frame, &[0u8; 18])
        .context("building the frame")?;
    // 60 bytes on the wire plus the 4-byte FCS the NIC would add: the classic 64-byte frame.
    let report = if a.sources > 0 {
        flood_sources(a, &frame)?
    } else {
        let target = gen::Target::lookup(&a.interface)?;
        let refuse = gen::refused_by_env()?;
        gen::flood(
            a.generator,
            &target,
            &frame,
            a.seconds,
            &refuse,
            |g, why| {
                eprintln!("kangaroo-bench flood: not using the {g} generator: {why}");
            },
        )?
    };
    if !report.passed_over.is_empty() {
        eprintln!(
            "kangaroo-bench flood: sent with the {} generator",
            report.generator
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "sent": report.sent,
            "refused": report.refused,
            "seconds": report.seconds,
            "pps": report.pps(),
            "generator": report.generator,
            "passed_over": report
                .passed_over
                .iter()
                .map(|(g, why)| serde_json::json!({ "generator": g, "reason": why }))
                .collect::<Vec<_>>(),
        })
    );
    Ok(())
}

/// A `--sources` flood: every frame from a different source MAC, over AF_PACKET.
fn flood_sources(a: &FloodArgs, frame: &[u8]) -> anyhow::Result<kangaroo_bench::gen::Flood> {
    use anyhow::Context;
    anyhow::ensure!(a.sources <= 1 << 24, "--sources must be at most 2^24");
    anyhow::ensure!((1..=100).contains(&a.passes), "--passes must be 1..=100");
    let mut port = kangaroo_switch::port::packet::PacketPort::open_tx_only(&a.interface)
        .with_context(|| format!("opening {}", a.interface))?;
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs_f64(a.seconds);
    let mut sent = 0u64;
    let mut batch = vec![frame.to_vec(); 64];
    'passes: for _ in 0..a.passes {
        let mut next = 0u32;
        while next < a.sources {
            if std::time::Instant::now() >= deadline {
                break 'passes;
            }
            let k = (a.sources - next).min(64) as usize;
            for (j, f) in batch[..k].iter_mut().enumerate() {
                f[6..12].copy_from_slice(&source_mac(next + j as u32));
            }
            let views: Vec<&[u8]> = batch[..k].iter().map(Vec::as_slice).collect();
            let n = port.send_batch(&views).context("sending")?;
            if n == 0 {
                // The queue is full: let it drain rather than skip sources.
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            sent += n as u64;
            next += n as u32;
        }
    }
    Ok(kangaroo_bench::gen::Flood {
        generator: kangaroo_bench::gen::Generator::Packet,
        sent,
        refused: 0,
        seconds: started.elapsed().as_secs_f64(),
        passed_over: Vec::new(),
    })
}

#[derive(Debug, clap::Args)]
struct PackingArgs {
    /// Catalog: a built-in name (ec2-2014, ec2-2026) or a file.
    #[arg(long, default_value = "ec2-2026")]
    catalog: String,
    /// Small instances to compare with the exact solver.
    #[arg(long, default_value_t = 100)]
    exact_instances: usize,
    /// Fewest VMs in a small instance.
    #[arg(long, default_value_t = 8)]
    min_vms: usize,
    /// Most VMs in a small instance.
    #[arg(long, default_value_t = 16)]
    max_vms: usize,
    /// Workload sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    sizes: Vec<usize>,
    /// Placement decisions to time against the largest deployment.
    #[arg(long, default_value_t = 1000)]
    decisions: usize,
    /// Base seed.
    #[arg(long, default_value_t = 2015)]
    seed: u64,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let a = match cli.command {
        Command::Packing(a) => a,
        Command::Flood(f) => {
            return match flood(&f) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kangaroo-bench: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(r) => {
            return match run_suite(&r) {
                Ok(true) => ExitCode::SUCCESS,
                // Interrupted: partial results written, everything removed.
                Ok(false) => ExitCode::from(130),
                Err(e) => {
                    eprintln!("kangaroo-bench: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Compare { a, b } => {
            return match kangaroo_bench::run::compare(&a, &b) {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kangaroo-bench: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Report { results, out } => {
            let dir = out.unwrap_or_else(|| {
                results
                    .parent()
                    .map_or_else(|| ".".into(), std::path::Path::to_path_buf)
            });
            let r = kangaroo_bench::run::load(&results).and_then(|r| {
                kangaroo_bench::run::write_outputs(&r, &dir)?;
                Ok(r)
            });
            return match r {
                Ok(r) => {
                    eprintln!(
                        "kangaroo-bench: {} samples; wrote {}/report.md and the charts",
                        r.samples.len() + r.sweeps.len(),
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kangaroo-bench: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Pingpong(p) => {
            let r = match p {
                PingpongCmd::Serve { listen, seconds } => {
                    kangaroo_bench::pingpong::serve(listen, seconds)
                }
                PingpongCmd::Client { to, count } => {
                    if !(1..=1_000_000).contains(&count) {
                        eprintln!("kangaroo-bench: --count must be 1..=1000000");
                        return ExitCode::from(2);
                    }
                    kangaroo_bench::pingpong::client(to, count).map(|v| println!("{v}"))
                }
            };
            return match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kangaroo-bench: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    if a.min_vms == 0 || a.min_vms > a.max_vms || a.max_vms > 16 {
        eprintln!(
            "kangaroo-bench: need 1 <= --min-vms <= --max-vms <= 16 (the exact solver's limit)"
        );
        return ExitCode::from(2);
    }
    let params = packing::Params {
        catalog: a.catalog,
        exact_instances: a.exact_instances,
        exact_vms: (a.min_vms, a.max_vms),
        sizes: a.sizes,
        decisions: a.decisions,
        seed: a.seed,
    };
    let mut progress = |m: &str| eprintln!("{m}");
    match packing::run(&params, &mut progress) {
        Ok(r) => {
            if a.json {
                match serde_json::to_string_pretty(&r) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("kangaroo-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", packing::markdown(&r));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kangaroo-bench: {e:#}");
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
}
