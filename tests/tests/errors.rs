//! Bad input gets a clear error, never a crash. Manifest cases are data:
//! tests/cases/manifests/NAME/atoll.toml with the expected error lines in expect.txt.

use std::path::Path;
use std::process::Command;

use atoll::{LoadedApp, Manifest};
use atoll_tests::{TestHost, manifest_text, repo_root};

async fn error_of(case: &Path) -> String {
    let text = manifest_text(&std::fs::read_to_string(case.join("atoll.toml")).unwrap());
    let manifest = match Manifest::parse(&text, "atoll.toml", case) {
        Ok(m) => m,
        Err(e) => return e.to_string(),
    };
    let data = tempfile::tempdir().unwrap();
    let mut manifest = manifest;
    manifest.host.data_dir = data.path().to_path_buf();
    match LoadedApp::load(manifest).await {
        Ok(_) => "loaded without error".to_string(),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_cases() {
    let root = repo_root().join("tests/cases/manifests");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "cases went missing");
    let mut failures = Vec::new();
    for case in &cases {
        let got = error_of(case).await;
        let expect = std::fs::read_to_string(case.join("expect.txt")).unwrap();
        for want in expect.lines().filter(|l| !l.is_empty()) {
            let want = want.replace("CASE", &case.display().to_string());
            if !got.contains(&want) {
                failures.push(format!(
                    "{}:\n  expected: {want}\n  got:      {got}",
                    case.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let mut m = atoll_tests::load_manifest(
        r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]
"#,
        data.path(),
    )
    .unwrap();
    m.host.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let e = match atoll::RunningHost::start(m).await {
        Ok(_) => panic!("started on a taken port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.starts_with(&format!(
            "cannot listen on 127.0.0.1:{port}: Address already in use"
        )),
        "{e}"
    );
    assert!(
        e.contains("choose another port with `[host] listen` in atoll.toml or `--listen`"),
        "{e}"
    );
    // The host is not wedged by the failure: another start works.
    let h =
        TestHost::start("[components.hello]\nsource = \"{hello}\"\nroutes = [\"/hello\"]\n").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_in_use_is_named_and_a_failed_start_lets_go_of_it() {
    const HELLO: &str = "[components.hello]\nsource = \"{hello}\"\nroutes = [\"/hello\"]\n";
    let data = tempfile::tempdir().unwrap();
    let running = TestHost::start_in(HELLO, data.path()).await.unwrap();
    // A second host on the same data dir: it waits a moment for the lock
    // (a host that is stopping lets go of it), then says who holds it.
    let e = match TestHost::start_in(HELLO, data.path()).await {
        Ok(_) => panic!("two hosts opened one data dir"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.starts_with(&format!(
            "opening key-value store at {} (is another atoll using this data_dir?)",
            data.path().join("kv").display()
        )),
        "{e}"
    );
    running.shutdown().await.unwrap();
    // A start that fails after opening the stores (here: a JWKS that cannot
    // be fetched), then one that works, on the same data dir at once.
    let broken = format!(
        "[auth.idp]\njwks_url = \"http://127.0.0.1:1/jwks.json\"\nissuer = \"i\"\naudience = \"a\"\n\
         [routes.\"/hello\"]\nauth = \"idp\"\n{HELLO}"
    );
    for _ in 0..3 {
        let e = match TestHost::start_in(&broken, data.path()).await {
            Ok(_) => panic!("started without its JWKS"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("cannot fetch the JWKS"), "{e}");
        let host = TestHost::start_in(HELLO, data.path()).await.unwrap();
        host.shutdown().await.unwrap();
    }
}

fn atoll(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_atoll-cli"))
        .args(args)
        .env("ATOLL_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_reports_errors_with_exit_code() {
    let (code, _, err) = atoll(&["up", "/nonexistent/atoll.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "error: /nonexistent/atoll.toml: cannot read manifest: No such file or directory"
        ),
        "{err}"
    );
    let case = repo_root().join("tests/cases/manifests/unknown-host-key/atoll.toml");
    let (code, _, err) = atoll(&["check", case.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("atoll.toml:3:1: unknown field `port`"),
        "{err}"
    );
    // Bad arguments: clap's usage error, exit 2.
    let (code, _, err) = atoll(&["up", "--listen", "not-an-address"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid value 'not-an-address' for '--listen <LISTEN>'"),
        "{err}"
    );
}

#[test]
fn build_without_a_toolchain_says_how_to_get_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_atoll-cli"))
        .args(["build", repo_root().join("guests/hello").to_str().unwrap()])
        .env("ATOLL_GUEST_TOOLCHAIN", "rustup")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("rustup target add wasm32-wasip2"), "{err}");
}
