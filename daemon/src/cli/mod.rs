//! Command-line interface: the subcommands, their flags and `--help` text, and the mapping of
//! their results to exit codes. Each subcommand lives in its own file and only wires the
//! library modules together.

mod client_config;
mod daemon;
mod du;
mod exec;
mod filter_args;
mod gc;
mod keygen;
mod pin;
mod progress;
mod push;
mod resign;
mod retry;
mod status;
mod upload;
mod verify;
mod verify_repair;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// narpush puts Nix store paths into a signed binary cache on S3-compatible storage
/// (Cloudflare R2, AWS S3, ...) or in a local directory.
#[derive(Debug, Parser)]
#[command(name = "narpush", version, propagate_version = true)]
pub struct Cli {
    /// Config file (TOML). Default: $NARPUSH_CONFIG, else /etc/narpush/narpush.toml if it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log more (repeat for even more): -v info, -vv debug.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Daemon(daemon::DaemonArgs),
    Upload(upload::UploadArgs),
    Push(push::PushArgs),
    Status(status::StatusArgs),
    Wait(wait::WaitArgs),
    Retry(retry::RetryArgs),
    Keygen(keygen::KeygenArgs),
    Gc(gc::GcArgs),
    Du(du::DuArgs),
    ClientConfig(client_config::ClientConfigArgs),
    Exec(exec::ExecArgs),
    Pin(pin::PinArgs),
    Resign(resign::ResignArgs),
    Verify(verify::VerifyArgs),
}

/// How a command that ran ended.
pub enum Outcome {
    Success,
    /// Some of the work failed; the details were already printed.
    PartialFailure,
    /// The status of a command run on the user's behalf (`exec`), passed on.
    Code(u8),
}

impl Outcome {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::PartialFailure => ExitCode::from(1),
            Outcome::Code(code) => ExitCode::from(*code),
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Daemon(args) => daemon::run(&args, cli.config.as_deref()),
        Command::Upload(args) => upload::run(args, cli.config.as_deref()),
        Command::Push(args) => push::run(&args, cli.config.as_deref()),
        Command::Status(args) => status::run(&args, cli.config.as_deref()),
        Command::Wait(args) => wait::run(&args, cli.config.as_deref()),
        Command::Retry(args) => retry::run(&args, cli.config.as_deref()),
        Command::Keygen(args) => keygen::run(&args),
        Command::Gc(args) => gc::run(args, cli.config.as_deref()),
        Command::Du(args) => du::run(&args, cli.config.as_deref()),
        Command::ClientConfig(args) => client_config::run(&args, cli.config.as_deref()),
        Command::Exec(args) => exec::run(args, cli.config.as_deref()),
        Command::Pin(args) => pin::run(&args, cli.config.as_deref()),
        Command::Resign(args) => resign::run(&args, cli.config.as_deref()),
        Command::Verify(args) => verify::run(&args, cli.config.as_deref()),
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level chosen with `-v`.
pub fn init_logging(verbosity: u8) {
    let default = match verbosity {
        0 => "warn,narpush=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
