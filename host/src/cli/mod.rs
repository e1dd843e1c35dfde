//! The `atoll` command line: one file per subcommand.

mod build;
mod bus;
mod check;
mod client;
mod publish;
mod up;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Atoll runs microservices as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "atoll", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Up(up::Up),
    Build(build::Build),
    Check(check::Check),
    Publish(publish::Publish),
    Bus(bus::Bus),
}

/// The whole `atoll` program: parse arguments, set up logging, run, and print
/// the error chain on failure.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init(cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(c) => c.execute(),
        Command::Build(c) => c.execute(),
        Command::Check(c) => c.execute(),
        Command::Publish(c) => c.execute(),
        Command::Bus(c) => c.execute(),
    }
}

/// The tokio runtime the host runs on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("atoll-worker")
        .build()?)
}
