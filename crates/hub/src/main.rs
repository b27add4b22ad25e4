//! `referral-hub`: parse the command line, run, and report a failure as one line with a non-zero
//! exit code (2 for bad usage, 1 otherwise).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // A bug should still end in one readable line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (this is a bug): {info}");
    }));
    let cli = referral_hub::Cli::parse();
    referral_hub::exit_code(referral_hub::run(cli))
}
