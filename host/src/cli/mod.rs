//! The `atoll` command line: one file per subcommand.

mod build;
mod bus;
mod check;
mod client;
mod deploy;
mod logs;
mod ps;
mod publish;
mod token;
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
    Ps(ps::Ps),
    Deploy(deploy::Deploy),
    Promote(deploy::Promote),
    Rollback(deploy::Rollback),
    Remove(deploy::Remove),
    Publish(publish::Publish),
    Bus(bus::Bus),
    Token(token::Token),
    Logs(logs::Logs),
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
        Command::Ps(c) => c.execute(),
        Command::Deploy(c) => c.execute(),
        Command::Promote(c) => c.execute(),
        Command::Rollback(c) => c.execute(),
        Command::Remove(c) => c.execute(),
        Command::Publish(c) => c.execute(),
        Command::Bus(c) => c.execute(),
        Command::Token(c) => c.execute(),
        Command::Logs(c) => c.execute(),
    }
}

/// The tokio runtime the host runs on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("atoll-worker")
        .build()?)
}

/// A text table: a header row and rows, each column as wide as its widest
/// cell, two spaces apart, no trailing spaces.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
