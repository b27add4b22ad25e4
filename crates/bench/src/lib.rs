//! `referral-bench`: the issue-6 benchmarks against reference points, each measured beside its
//! reference in the same run so that the ratios hold on a noisy machine (BENCHMARKS.md):
//! `read-path` (the gateway against nginx and a direct call), `durable-k` (K submissions
//! against pgbench), `footprint` (start-up time and resident memory of `referral-hub up`).
//! Everything runs on loopback over real mTLS against the release binary as a child process.

#![forbid(unsafe_code)]

pub mod cpu;
pub mod durable_k;
pub mod footprint;
pub mod hub;
pub mod load;
pub mod nginx;
pub mod pg;
pub mod read_path;
pub mod stats;

use clap::{Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "referral-bench",
    about = "Benchmarks of referral-hub against reference points"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print one JSON object (every figure) on standard output instead of the tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// The gateway's cost on a read against nginx as a bare proxy and a direct call.
    ReadPath,
    /// Durable K submissions per second with 1, 16 and 128 clients, against pgbench.
    DurableK,
    /// Start-up time and resident memory of the all-in-one process.
    Footprint,
    /// Every benchmark above, in that order.
    All,
}

/// How long and how often to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Seconds of each load window (durable-k, footprint) and of each pgbench run.
    #[arg(long, global = true, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of load before durable-k's measured windows.
    #[arg(long, global = true, default_value_t = 3)]
    pub warmup: u64,
    /// read-path: rounds (each runs every path once, in a rotating order).
    #[arg(long, global = true, default_value_t = 20)]
    pub rounds: usize,
    /// read-path: calls per path per round.
    #[arg(long, global = true, default_value_t = 100)]
    pub calls_per_round: usize,
    /// read-path: unrecorded calls per path before the rounds.
    #[arg(long, global = true, default_value_t = 200)]
    pub warmup_calls: usize,
    /// durable-k: the back ends to measure (`sqlite`, `postgres`), comma-separated.
    #[arg(long, global = true, value_delimiter = ',', default_values_t = ["sqlite".to_owned(), "postgres".to_owned()])]
    pub backends: Vec<String>,
    /// durable-k: the client counts to measure, comma-separated.
    #[arg(long, global = true, value_delimiter = ',', default_values_t = durable_k::CLIENTS)]
    pub clients: Vec<usize>,
    /// durable-k: the aggregate rate (Ks a second) of the paced run at the largest client count;
    /// 0 skips it.
    #[arg(long, global = true, default_value_t = durable_k::PACED_RATE)]
    pub paced_rate: u32,
}

/// Runs the chosen benchmarks; prints tables (or the JSON object) on standard output.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    referral_core::tls::install_crypto_provider();
    let chosen: &[Command] = match cli.command {
        Command::All => &[Command::ReadPath, Command::DurableK, Command::Footprint],
        Command::ReadPath => &[Command::ReadPath],
        Command::DurableK => &[Command::DurableK],
        Command::Footprint => &[Command::Footprint],
    };
    let mut report = serde_json::Map::new();
    report.insert("machine".into(), machine());
    for command in chosen {
        let (name, (json, table)) = match command {
            Command::ReadPath => ("read_path", read_path::run(&cli.options).await?),
            Command::DurableK => ("durable_k", durable_k::run(&cli.options).await?),
            Command::Footprint => ("footprint", footprint::run(&cli.options).await?),
            Command::All => unreachable!("expanded above"),
        };
        if cli.json {
            eprint!("{table}");
        } else {
            println!("{table}");
        }
        report.insert(name.into(), json);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// What the figures were measured on.
fn machine() -> serde_json::Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    serde_json::json!({"cores": cores, "cpu": model, "memory": memory, "kernel": kernel})
}
