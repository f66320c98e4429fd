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
}

fn flood(a: &FloodArgs) -> anyhow::Result<()> {
    use anyhow::Context;
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
    let mut port = kangaroo_switch::port::packet::PacketPort::open(&a.interface)
        .with_context(|| format!("opening {}", a.interface))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(a.seconds);
    let started = std::time::Instant::now();
    let (mut sent, mut refused) = (0u64, 0u64);
    while std::time::Instant::now() < deadline {
        for _ in 0..64 {
            // 64 frames per system call.
            let n = port.send_repeated(&frame, 64).context("sending")?;
            sent += n as u64;
            refused += 64 - n as u64;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({ "sent": sent, "refused": refused, "seconds": secs, "pps": sent as f64 / secs })
    );
    Ok(())
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
