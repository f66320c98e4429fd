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
    let Command::Packing(a) = cli.command;
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
