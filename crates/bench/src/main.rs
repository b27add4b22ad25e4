//! `referral-bench`: parse the command line, run the chosen benchmarks, report a failure as one
//! line with a non-zero exit code.

#![forbid(unsafe_code)]

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = referral_bench::Cli::parse();
    match referral_bench::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
