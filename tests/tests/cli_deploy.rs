//! `atoll ps`, `deploy`, `promote`, `rollback` and `remove` end to end: a real
//! `atoll up` child process, the real CLI, real traffic through the gateway.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use atoll_tests::{ChildHost, get, guest, manifest_file};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_atoll-cli"))
}

/// One run of the CLI.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts success with a clean stderr (no progress bar, no log line)
    /// and returns stdout's lines.
    fn lines(&self) -> Vec<&str> {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert_eq!(self.stderr, "", "stdout: {}", self.stdout);
        self.stdout.lines().collect()
    }

    /// Asserts failure with `code` and nothing on stdout; returns stderr.
    fn failed(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert_eq!(self.stdout, "", "stderr: {}", self.stderr);
        &self.stderr
    }
}

/// Runs `atoll ARGS --manifest MANIFEST`.
fn atoll(manifest: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .arg("--manifest")
        .arg(manifest)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn path(guest_name: &str) -> String {
    guest(guest_name).to_str().unwrap().to_string()
}

/// `atoll ps` split into the cells of its table (by the header's column
/// starts) and the event lines under it.
struct Ps {
    rows: Vec<BTreeMap<String, String>>,
    events: Vec<String>,
}

impl Ps {
    fn parse(out: &str) -> Ps {
        let mut lines = out.lines();
        let header = lines.next().expect("a header");
        let mut starts: Vec<(usize, &str)> = Vec::new();
        let mut at = 0;
        for name in header.split_whitespace() {
            let start = at + header[at..].find(name).unwrap();
            starts.push((start, name));
            at = start + name.len();
        }
        let mut rows = Vec::new();
        for line in lines.by_ref() {
            if line.is_empty() {
                break;
            }
            let mut row = BTreeMap::new();
            for (i, (start, name)) in starts.iter().enumerate() {
                let end = starts.get(i + 1).map_or(line.len(), |(s, _)| *s);
                let cell = line.get(*start..end.min(line.len())).unwrap_or("");
                row.insert(name.to_string(), cell.trim().to_string());
            }
            rows.push(row);
        }
        Ps {
            rows,
            events: lines.map(str::to_string).collect(),
        }
    }

    fn row(&self, name: &str) -> &BTreeMap<String, String> {
        self.rows
            .iter()
            .find(|r| r["NAME"] == name)
            .unwrap_or_else(|| panic!("no row {name}"))
    }

    fn cell(&self, name: &str, column: &str) -> &str {
        &self.row(name)[column]
    }
}

fn ps(manifest: &Path) -> Ps {
    let run = atoll(manifest, &["ps"]);
    run.lines();
    Ps::parse(&run.stdout)
}

/// Which version answered `GET /`, checking that status, body and header agree.
async fn serving(host: &ChildHost) -> String {
    let r = get(&host.url("/")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let version = r.body.trim().to_string();
    assert_eq!(r.headers["x-swap-version"], version.as_str());
    version
}

/// The manifest: swap-v1 as 1.0.0.
fn manifest() -> (tempfile::TempDir, std::path::PathBuf) {
    manifest_file(MANIFEST)
}

const MANIFEST: &str = r#"
[components.swap]
source = "{swap-v1}"
version = "1.0.0"
routes = ["/..."]
health = "/healthz"

[components.swap.canary]
min_requests = 10
"#;

/// The second line of a deploy: compile, link and health timings.
fn assert_timings(line: &str, ending: &str) {
    assert!(
        line.starts_with("compiled in ") || line.starts_with("cached artifact in "),
        "{line}"
    );
    assert!(line.contains(" ms, linked in "), "{line}");
    assert!(line.contains(", health 200 in "), "{line}");
    assert!(line.contains(&format!("; {ending} after ")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_canary_promote_rollback_remove() {
    let (_dir, manifest) = manifest();
    let m = manifest.as_path();
    let host = ChildHost::spawn(bin(), m, &[]).unwrap();
    assert_eq!(serving(&host).await, "v1");

    // A new version: active once its health check passes.
    let run = atoll(
        m,
        &["deploy", "swap", &path("swap-v2"), "--version", "1.1.0"],
    );
    let lines = run.lines();
    assert_eq!(lines[0], "swap 1.1.0 is active (was 1.0.0)");
    assert_timings(lines[1], "serving");
    assert_eq!(lines.len(), 2);
    assert_eq!(serving(&host).await, "v2");

    let run = atoll(m, &["ps"]);
    println!("atoll ps after the deploy:\n{}", run.stdout);
    let table = Ps::parse(&run.stdout);
    assert_eq!(
        run.stdout.lines().next().unwrap(),
        "NAME  VERSION  DIGEST               CANARY  ROUTES  SUBSCRIPTIONS  IN-FLIGHT  REQ/S  ERR%  HEALTH  CALLS"
    );
    assert_eq!(table.cell("swap", "VERSION"), "1.1.0");
    assert_eq!(table.cell("swap", "HEALTH"), "ok 200");
    assert_eq!(table.cell("swap", "CANARY"), "-");
    assert_eq!(table.cell("swap", "ROUTES"), "/...");
    assert_eq!(table.cell("swap", "SUBSCRIPTIONS"), "-");
    assert_eq!(table.cell("swap", "ERR%"), "0.0");
    let digest = table.cell("swap", "DIGEST");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 19,
        "{digest}"
    );
    assert_eq!(table.events.len(), 1, "{:?}", table.events);
    assert!(
        table.events[0].starts_with("swap: ")
            && table.events[0].ends_with(" deploy: 1.1.0 is active (was 1.0.0)"),
        "{:?}",
        table.events
    );

    // Refused versions change nothing: a failing health check, a downgrade.
    let run = atoll(
        m,
        &["deploy", "swap", &path("swap-sick"), "--version", "1.2.0"],
    );
    assert_eq!(
        run.failed(1),
        "error: swap 1.2.0 was not deployed; 1.1.0 keeps serving\n  caused by: version 1.2.0 of `swap` was refused; nothing changed:\n  - its health check GET /healthz answered 503: v4-sick health 503\n"
    );
    assert_eq!(serving(&host).await, "v2");
    let table = ps(m);
    assert_eq!(table.cell("swap", "VERSION"), "1.1.0");
    // The active version is healthy; the refusal is an event.
    assert_eq!(table.cell("swap", "HEALTH"), "ok 200");
    assert!(
        table.events.iter().any(|e| e.contains(
            "refused: version 1.2.0 of `swap`: its health check GET /healthz answered 503"
        )),
        "{:?}",
        table.events
    );

    let run = atoll(
        m,
        &["deploy", "swap", &path("swap-v1"), "--version", "1.0.5"],
    );
    assert_eq!(
        run.failed(1),
        "error: swap 1.0.5 was not deployed; 1.1.0 keeps serving\n  caused by: 1.0.5 is older than the active swap 1.1.0; pass --force to downgrade, or `atoll rollback swap --to 1.0.5` if it is kept\n"
    );
    assert_eq!(serving(&host).await, "v2");

    // A canary takes its share; rollback without --to drops it.
    let canary = ["deploy", "swap", &path("swap-v1"), "--version", "1.3.0"];
    let run = atoll(m, &[&canary[..], &["--canary", "50"]].concat());
    let lines = run.lines();
    assert_eq!(lines[0], "swap 1.3.0 is a canary with 50% of traffic");
    assert_timings(lines[1], "taking 50% of traffic");
    let mut seen = BTreeMap::new();
    for _ in 0..10 {
        *seen.entry(serving(&host).await).or_insert(0) += 1;
    }
    assert_eq!(seen, BTreeMap::from([("v1".into(), 5), ("v2".into(), 5)]));
    let run = atoll(m, &["ps"]);
    println!("atoll ps with a canary:\n{}", run.stdout);
    let table = Ps::parse(&run.stdout);
    assert_eq!(table.cell("swap", "VERSION"), "1.1.0");
    assert_eq!(table.cell("swap", "CANARY"), "1.3.0 50%");
    assert_eq!(table.cell("swap", "ERR%"), "0.0/0.0");
    assert_eq!(table.cell("swap", "HEALTH"), "ok 200/ok 200");
    assert_eq!(
        atoll(m, &["rollback", "swap"]).lines(),
        ["swap: canary 1.3.0 rolled back; 1.1.0 serves all traffic"]
    );
    assert_eq!(serving(&host).await, "v2");
    assert_eq!(ps(m).cell("swap", "CANARY"), "-");

    // Again, and promote it.
    let run = atoll(m, &[&canary[..], &["--canary", "50"]].concat());
    run.lines();
    assert_eq!(
        atoll(m, &["promote", "swap"]).lines(),
        ["swap 1.3.0 is active (promoted from canary)"]
    );
    assert_eq!(serving(&host).await, "v1");
    assert_eq!(ps(m).cell("swap", "VERSION"), "1.3.0");

    // Back to kept versions.
    assert_eq!(
        atoll(m, &["rollback", "swap", "--to", "1.1.0"]).lines(),
        ["swap 1.1.0 is active (rolled back from 1.3.0)"]
    );
    assert_eq!(serving(&host).await, "v2");
    assert_eq!(
        atoll(m, &["rollback", "swap", "--to", "1.0.0"]).lines(),
        ["swap 1.0.0 is active (rolled back from 1.1.0)"]
    );
    assert_eq!(serving(&host).await, "v1");

    // Removed: 503 until a deploy brings it back.
    assert_eq!(
        atoll(m, &["remove", "swap"]).lines(),
        ["swap removed: 1.0.0 no longer serves; 0 in-flight invocations finished"]
    );
    let r = get(&host.url("/")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("component `swap` is removed"), "{}", r.body);
    let table = ps(m);
    assert_eq!(table.cell("swap", "VERSION"), "removed");
    assert_eq!(table.cell("swap", "DIGEST"), "-");
    assert!(
        table.events[0].ends_with(" remove: removed (was 1.0.0)"),
        "{:?}",
        table.events
    );
    let v2 = ["deploy", "swap", &path("swap-v2"), "--version", "1.4.0"];
    let lines = atoll(m, &v2).lines().join("\n");
    assert!(lines.starts_with("swap 1.4.0 is active\n"), "{lines}");
    assert_eq!(serving(&host).await, "v2");
    // The same bytes again: nothing to do, one line.
    let lines = atoll(m, &v2).lines().join("\n");
    assert!(
        lines.starts_with("swap 1.4.0 (sha256:")
            && lines.ends_with(") is already active; nothing changed"),
        "{lines}"
    );

    // A canary that fails is rolled back by the host, and ps says so.
    let run = atoll(
        m,
        &[
            "deploy",
            "swap",
            &path("swap-flaky"),
            "--version",
            "1.5.0",
            "--canary",
            "50",
        ],
    );
    run.lines();
    let until = Instant::now() + Duration::from_secs(30);
    let table = loop {
        for _ in 0..4 {
            get(&host.url("/")).await;
        }
        let table = ps(m);
        if table.cell("swap", "CANARY") == "-" {
            break table;
        }
        assert!(Instant::now() < until, "the canary was not rolled back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(table.cell("swap", "VERSION"), "1.4.0");
    let auto = table
        .events
        .iter()
        .find(|e| e.contains(" auto-rollback: "))
        .unwrap_or_else(|| panic!("{:?}", table.events));
    assert!(
        auto.starts_with("swap: ")
            && auto.contains(" auto-rollback: canary 1.5.0 rolled back automatically: error rate "),
        "{auto}"
    );
    assert_eq!(serving(&host).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_reason() {
    let (dir, manifest) = manifest();
    let m = manifest.as_path();
    let v2 = path("swap-v2");

    // Checked before anything is sent: no host needed.
    let run = atoll(m, &["deploy", "swap", &v2, "--version", "banana"]);
    let e = run.failed(2);
    assert!(
        e.contains(
            "invalid value 'banana' for '--version <SEMVER>': `banana` is not a semver version"
        ),
        "{e}"
    );
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not a component").unwrap();
    let run = atoll(
        m,
        &[
            "deploy",
            "swap",
            text.to_str().unwrap(),
            "--version",
            "1.1.0",
        ],
    );
    assert_eq!(
        run.failed(1),
        format!(
            "error: {} is not a WebAssembly component; nothing was uploaded\n  caused by: not a WebAssembly binary (it does not start with the `\\0asm` magic); give a .wasm component built for wasm32-wasip2\n",
            text.display()
        )
    );
    let missing = dir.path().join("missing.wasm");
    let run = atoll(
        m,
        &[
            "deploy",
            "swap",
            missing.to_str().unwrap(),
            "--version",
            "1.1.0",
        ],
    );
    let e = run.failed(1);
    assert!(
        e.starts_with(&format!(
            "error: cannot read {}\n  caused by: ",
            missing.display()
        )),
        "{e}"
    );

    let host = ChildHost::spawn(bin(), m, &[]).unwrap();
    let run = atoll(m, &["deploy", "nope", &v2, "--version", "1.1.0"]);
    assert_eq!(
        run.failed(1),
        "error: unknown component `nope`; the manifest declares: swap\n"
    );
    for args in [
        &["promote", "nope"][..],
        &["rollback", "nope"],
        &["remove", "nope"],
    ] {
        let run = atoll(m, args);
        assert_eq!(
            run.failed(1),
            "error: unknown component `nope`; the manifest declares: swap\n",
            "{args:?}"
        );
    }
    let run = atoll(
        m,
        &[
            "deploy",
            "swap",
            &v2,
            "--version",
            "1.1.0",
            "--token",
            "wrong",
        ],
    );
    let e = run.failed(1);
    assert!(e.starts_with("error: wrong bearer token;"), "{e}");
    let e = atoll(m, &["ps", "--token", "wrong"]).failed(1).to_string();
    assert!(e.starts_with("error: wrong bearer token;"), "{e}");

    // Refused by the host: no HTTP handler for its routes.
    let run = atoll(
        m,
        &["deploy", "swap", &path("no-handler"), "--version", "2.0.0"],
    );
    let e = run.failed(1);
    assert!(
        e.starts_with("error: swap 2.0.0 was not deployed; 1.0.0 keeps serving\n  caused by: version 2.0.0 of `swap` was refused; nothing changed:\n  - "),
        "{e}"
    );
    assert!(e.contains("wasi:http/incoming-handler"), "{e}");
    assert_eq!(serving(&host).await, "v1");

    let e = atoll(m, &["promote", "swap"]).failed(1).to_string();
    assert!(
        e.starts_with("error: `swap` has no canary to promote;"),
        "{e}"
    );
    let e = atoll(m, &["rollback", "swap", "--to", "9.9.9"])
        .failed(1)
        .to_string();
    assert_eq!(e, "error: swap 9.9.9 is not kept; kept versions: 1.0.0\n");
    let e = atoll(m, &["rollback", "swap", "--to", "x"])
        .failed(2)
        .to_string();
    assert!(e.contains("`x` is not a semver version"), "{e}");
    let e = atoll(
        m,
        &[
            "deploy",
            "swap",
            &v2,
            "--version",
            "1.1.0",
            "--canary",
            "100",
        ],
    )
    .failed(2)
    .to_string();
    assert!(e.contains("--canary <PERCENT>"), "{e}");

    // Nothing changed through all of that.
    let run = atoll(m, &["ps", "--json"]);
    run.lines();
    let view: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let swap = &view["components"][0];
    assert_eq!(swap["name"], "swap");
    assert_eq!(swap["active"]["version"], "1.0.0");
    assert_eq!(swap["kept"].as_array().unwrap().len(), 1, "{swap}");
    let table = ps(m);
    assert_eq!(table.cell("swap", "VERSION"), "1.0.0");
    // The one refusal (no-handler, at link) is the only event shown.
    assert_eq!(table.events.len(), 1, "{:?}", table.events);
    assert!(
        table.events[0].contains("refused: version 2.0.0 of `swap`: the component does not export `wasi:http/incoming-handler`"),
        "{:?}",
        table.events
    );
}
