//! The `narpush` binary: parses the command line and hands off to `cli`.
//!
//! Exit codes: 0 success; 1 the command ran but some paths failed (they are listed);
//! 2 nothing was done because of bad input (usage, config, keys, paths) or an unusable target.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(outcome) => outcome.exit_code(),
        Err(error) => {
            eprintln!("narpush: error: {error:#}");
            ExitCode::from(2)
        }
    }
}
