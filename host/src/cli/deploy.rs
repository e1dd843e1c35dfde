//! `atoll deploy`, `promote`, `rollback` and `remove`: change which version of
//! a component a running host serves, without restarting it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::client::{AdminArgs, ServerError, segment, with_query};
use crate::admin::MAX_UPLOAD;
use crate::engine::check_component_bytes;
use crate::registry::{ComponentView, DeployReport};

/// How long a deploy (or a rollback) may take: the host compiles the
/// component before it answers, which takes a while for a big one.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a remove may take: the host waits up to 30 s for in-flight work.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Deploy a new version of a component to a running host, without a restart.
///
/// The host compiles FILE (or reuses its cached compiled artifact), links it,
/// checks that it still exports what the manifest's routes and subscriptions
/// need, and GETs its health route if the manifest declares one (it must
/// answer 2xx). Only then does it switch: requests in flight finish on the
/// old version, new ones go to the new one. If any step fails, nothing
/// changes and the old version keeps serving; the error lists each problem.
///
/// Refused unless --force: a version older than the active one, and the
/// active version number with different bytes. Deploying the active version
/// again with the same bytes changes nothing (but ends a canary, if one
/// runs). What a deploy changes is recorded in the host's data_dir: it
/// survives restarts (until the manifest's `source` for the component
/// changes), and `atoll rollback` can return to the versions it kept.
#[derive(Debug, Args)]
#[command(
    disable_version_flag = true,
    after_help = "Examples:
  atoll deploy orders target/wasm32-wasip2/release/orders.wasm --version 1.3.0
  atoll deploy orders orders.wasm --version 1.4.0 --canary 10
  atoll promote orders"
)]
pub struct Deploy {
    /// The component: a `[components.NAME]` of the host's manifest.
    name: String,
    /// The component binary: a .wasm component for wasm32-wasip2 (as
    /// `atoll build` prints), at most 256 MiB.
    file: PathBuf,
    /// The new version, as semver (e.g. 1.3.0).
    #[arg(long, value_name = "SEMVER", value_parser = parse_version)]
    version: semver::Version,
    /// Run it as a canary next to the active version, with this percent
    /// (1-99) of requests and messages, instead of replacing it. `atoll
    /// promote` makes it active, `atoll rollback` drops it; the host drops it
    /// on its own when its error rate passes the component's
    /// `canary.max_error_rate` (over `canary.window`, once it has
    /// `canary.min_requests`).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=99))]
    canary: Option<u8>,
    /// Allow a downgrade (a version older than the active one), or new bytes
    /// under the active version number.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

fn parse_version(v: &str) -> Result<semver::Version, String> {
    v.trim()
        .parse()
        .map_err(|e| format!("`{v}` is not a semver version ({e}); write it like 1.3.0"))
}

impl Deploy {
    pub fn execute(self) -> anyhow::Result<()> {
        let bytes = self.read_component()?;
        let client = self.admin.connect()?;
        // Asking first costs a round trip and saves uploading the binary when
        // the token is wrong or the component unknown.
        let current: ComponentView =
            client.get(&format!("/v1/components/{}", segment(&self.name)))?;
        let client = client.with_timeout(DEPLOY_TIMEOUT);
        let canary = self.canary.map(|p| p.to_string());
        let path = with_query(
            &format!("/v1/components/{}/versions", segment(&self.name)),
            [
                ("version", Some(self.version.to_string().as_str())),
                ("canary", canary.as_deref()),
                ("force", self.force.then_some("true")),
            ],
        );
        let progress = upload_bar(bytes.len() as u64, current.health.is_some());
        let bar = progress.clone();
        let result: anyhow::Result<DeployReport> =
            client.upload(&path, bytes, move |sent| bar.sent(sent));
        progress.done();
        let (name, version) = (&self.name, &self.version);
        let report = result.map_err(|e| {
            let what = match (e.is::<ServerError>(), &current.active) {
                // The host refused it: nothing changed.
                (true, Some(active)) => {
                    format!("{name} {version} was not deployed; {} keeps serving", active.version)
                }
                (true, None) => format!("{name} {version} was not deployed; `{name}` stays removed"),
                // No answer: the host may still be working on it.
                (false, _) => format!(
                    "deploying {name} {version}: no answer, so the outcome is unknown; `atoll ps` shows which version of `{name}` serves"
                ),
            };
            e.context(what)
        })?;
        println!("{}", report.message);
        if let Some(timings) = timings(&report) {
            println!("{timings}");
        }
        Ok(())
    }

    /// The file's bytes, once they look like a component.
    fn read_component(&self) -> anyhow::Result<Bytes> {
        let file = &self.file;
        let size = std::fs::metadata(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        if size > MAX_UPLOAD {
            bail!(
                "{} is {:.1} MiB; a deploy takes at most {} MiB",
                file.display(),
                size as f64 / (1 << 20) as f64,
                MAX_UPLOAD >> 20
            );
        }
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        check_component_bytes(&bytes).with_context(|| {
            format!(
                "{} is not a WebAssembly component; nothing was uploaded",
                file.display()
            )
        })?;
        Ok(Bytes::from(bytes))
    }
}

/// The second line of a deploy's output: where the time went.
fn timings(report: &DeployReport) -> Option<String> {
    if report.unchanged {
        return None;
    }
    let done = match report.canary {
        Some(p) => format!("taking {p}% of traffic after {}", ms(report.total_ms)),
        None => format!("serving after {}", ms(report.total_ms)),
    };
    // Ending a canary by deploying the active bytes again prepares nothing.
    if !report.prepared {
        return Some(format!("done in {}", ms(report.total_ms)));
    }
    let mut steps = vec![
        match report.compiled {
            true => format!("compiled in {}", ms(report.compile_ms)),
            false => format!("cached artifact in {}", ms(report.compile_ms)),
        },
        format!("linked in {}", ms(report.link_ms)),
    ];
    if let Some(health_ms) = report.health_ms {
        let status = report
            .health_status
            .map(|s| format!("{s} "))
            .unwrap_or_default();
        steps.push(format!("health {status}in {}", ms(health_ms)));
    }
    Some(format!("{}; {done}", steps.join(", ")))
}

/// Milliseconds, as precise as is useful: `0.2 ms`, `51 ms`, `1.4 s`.
fn ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal): bytes
/// sent, then a spinner while the host works.
#[derive(Clone)]
struct UploadBar {
    bar: ProgressBar,
    total: u64,
    working: &'static str,
}

fn upload_bar(total: u64, health: bool) -> UploadBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "uploading [{bar:30}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    UploadBar {
        bar,
        total,
        working: match health {
            true => "compiling, linking, checking health...",
            false => "compiling, linking...",
        },
    }
}

impl UploadBar {
    fn sent(&self, sent: u64) {
        self.bar.set_position(sent);
        if sent >= self.total {
            self.bar.set_style(spinner_style());
            self.bar.set_message(self.working);
            self.bar.enable_steady_tick(Duration::from_millis(100));
        }
    }

    fn done(&self) {
        self.bar.finish_and_clear();
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A spinner on stderr (hidden when stderr is not a terminal) while `f` runs.
fn with_spinner<T>(message: String, f: impl FnOnce() -> T) -> T {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(spinner_style());
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    let out = f();
    bar.finish_and_clear();
    out
}

/// Make a component's canary its active version.
///
/// All traffic goes to the canary from then on; the version it replaces
/// stays kept for `atoll rollback`.
#[derive(Debug, Args)]
pub struct Promote {
    /// The component.
    name: String,
    #[command(flatten)]
    admin: AdminArgs,
}

impl Promote {
    pub fn execute(self) -> anyhow::Result<()> {
        let client = self.admin.connect()?;
        let report: DeployReport = client.post(
            &format!("/v1/components/{}/promote", segment(&self.name)),
            Vec::new(),
            Bytes::new(),
        )?;
        println!("{}", report.message);
        Ok(())
    }
}

/// Drop a component's canary, or go back to an earlier version.
///
/// Without --to: drops the canary if one runs, else activates the version
/// deployed before the active one. With --to: activates that version (this
/// also brings back a removed component). Only kept versions qualify: the
/// host keeps the last `keep_versions` of each component (`atoll ps --json`
/// lists them under `kept`). A version rolled back to must pass its health
/// check first, like a deploy; if it fails, nothing changes.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  atoll rollback orders
  atoll rollback orders --to 1.2.0")]
pub struct Rollback {
    /// The component.
    name: String,
    /// The kept version to activate.
    #[arg(long, value_name = "SEMVER", value_parser = parse_version)]
    to: Option<semver::Version>,
    #[command(flatten)]
    admin: AdminArgs,
}

impl Rollback {
    pub fn execute(self) -> anyhow::Result<()> {
        // A kept version whose compiled artifact is gone is compiled again.
        let client = self.admin.connect()?.with_timeout(DEPLOY_TIMEOUT);
        let to = self.to.as_ref().map(ToString::to_string);
        let path = with_query(
            &format!("/v1/components/{}/rollback", segment(&self.name)),
            [("to", to.as_deref())],
        );
        let report = with_spinner(format!("rolling back {}...", self.name), || {
            client.post::<DeployReport>(&path, Vec::new(), Bytes::new())
        })?;
        println!("{}", report.message);
        Ok(())
    }
}

/// Stop serving a component, after its in-flight work finishes.
///
/// Its routes answer 503, and messages for its subscriptions wait in the bus
/// until a version serves again. The host waits up to 30 s for invocations
/// in flight. Its versions stay kept: `atoll deploy`, or `atoll rollback NAME
/// --to VERSION`, brings it back. Restarting the host does not (unless the
/// manifest's `source` for it changed).
#[derive(Debug, Args)]
pub struct Remove {
    /// The component.
    name: String,
    #[command(flatten)]
    admin: AdminArgs,
}

impl Remove {
    pub fn execute(self) -> anyhow::Result<()> {
        let client = self.admin.connect()?.with_timeout(REMOVE_TIMEOUT);
        let path = format!("/v1/components/{}", segment(&self.name));
        let report = with_spinner(
            format!("removing {} (waiting for in-flight work)...", self.name),
            || client.delete::<DeployReport>(&path),
        )?;
        println!("{}", report.message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        deploy: Deploy,
    }

    fn parse(args: &[&str]) -> Result<Deploy, String> {
        Cli::try_parse_from(std::iter::once("deploy").chain(args.iter().copied()))
            .map(|c| c.deploy)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn arguments_are_checked_before_anything_is_read() {
        let d = parse(&["swap", "a.wasm", "--version", "1.3.0", "--canary", "10"]).unwrap();
        assert_eq!(d.version, semver::Version::new(1, 3, 0));
        assert_eq!(d.canary, Some(10));
        let e = parse(&["swap", "a.wasm", "--version", "banana"]).unwrap_err();
        assert!(e.contains("`banana` is not a semver version"), "{e}");
        assert!(e.contains("write it like 1.3.0"), "{e}");
        for percent in ["0", "100", "x"] {
            let e =
                parse(&["swap", "a.wasm", "--version", "1.0.0", "--canary", percent]).unwrap_err();
            assert!(e.contains("--canary <PERCENT>"), "{percent}: {e}");
        }
        let e = parse(&["swap", "a.wasm"]).unwrap_err();
        assert!(e.contains("--version <SEMVER>"), "{e}");
    }

    #[test]
    fn the_file_must_be_a_component() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        let d = parse(&["swap", path.to_str().unwrap(), "--version", "1.0.0"]).unwrap();
        let e = format!("{:#}", d.read_component().unwrap_err());
        assert!(e.contains("a.wasm is not a WebAssembly component; nothing was uploaded: not a WebAssembly binary"), "{e}");
        let d = parse(&["swap", "/nonexistent/a.wasm", "--version", "1.0.0"]).unwrap();
        let e = format!("{:#}", d.read_component().unwrap_err());
        assert!(e.starts_with("cannot read /nonexistent/a.wasm: "), "{e}");
    }

    #[test]
    fn timings_say_where_the_time_went() {
        let report = DeployReport {
            message: "swap 1.1.0 is active (was 1.0.0)".into(),
            prepared: true,
            compiled: true,
            compile_ms: 51.234,
            link_ms: 0.213,
            health_status: Some(200),
            health_ms: Some(0.84),
            total_ms: 55.1,
            ..Default::default()
        };
        assert_eq!(
            timings(&report).unwrap(),
            "compiled in 51 ms, linked in 0.2 ms, health 200 in 0.8 ms; serving after 55 ms"
        );
        let canary = DeployReport {
            compiled: false,
            compile_ms: 3.0,
            health_ms: None,
            canary: Some(10),
            total_ms: 1500.0,
            ..report.clone()
        };
        assert_eq!(
            timings(&canary).unwrap(),
            "cached artifact in 3.0 ms, linked in 0.2 ms; taking 10% of traffic after 1.5 s"
        );
        let unchanged = DeployReport {
            unchanged: true,
            ..report
        };
        assert_eq!(timings(&unchanged), None);
        let nothing_prepared = DeployReport {
            total_ms: 2.0,
            ..Default::default()
        };
        assert_eq!(timings(&nothing_prepared).unwrap(), "done in 2.0 ms");
    }
}
