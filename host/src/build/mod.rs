//! `atoll build`: compile a Rust guest crate to a WASI 0.2 component.
//!
//! Uses the user's rustup `wasm32-wasip2` target when it is installed, and
//! otherwise the offline toolchain of Debian packages (rustc-web, cargo-web,
//! rust-web-src, lld-16, wasi-libc) plus `wasm-component-ld` from crates.io,
//! building std from source. With neither, the error says how to get one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The target every guest is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Which compiler builds guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup with the wasm32-wasip2 target installed.
    Rustup,
    /// Debian's rustc-web with std built from source (see GUEST-TOOLCHAIN.md).
    Offline(OfflineTools),
}

/// Paths of the offline toolchain's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineTools {
    cargo: PathBuf,
    component_ld: PathBuf,
    wasm_ld: PathBuf,
    wasi_libc: PathBuf,
}

/// Options of one build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Cargo target dir (default: cargo's own choice, or `CARGO_TARGET_DIR`).
    pub target_dir: Option<PathBuf>,
    /// Build unoptimized.
    pub debug: bool,
    /// Build every member of the crate's workspace, not just the crate.
    pub workspace: bool,
    /// Print nothing but errors.
    pub quiet: bool,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn home_cargo_bin(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin").join(name)).filter(|p| p.is_file())
}

/// Finds a toolchain that can build guests (`ATOLL_GUEST_TOOLCHAIN=rustup|offline` forces one).
pub fn detect() -> anyhow::Result<Toolchain> {
    let forced = std::env::var("ATOLL_GUEST_TOOLCHAIN").ok();
    if forced.as_deref() != Some("offline") && rustup_has_target() {
        return Ok(Toolchain::Rustup);
    }
    if forced.as_deref() == Some("rustup") {
        bail!(
            "ATOLL_GUEST_TOOLCHAIN=rustup, but rustup has no {TARGET} target: run `rustup target add {TARGET}`"
        );
    }
    let offline = OfflineTools {
        cargo: PathBuf::from("/usr/bin/cargo"),
        component_ld: home_cargo_bin("wasm-component-ld")
            .or_else(|| find_in_path("wasm-component-ld"))
            .unwrap_or_default(),
        wasm_ld: find_in_path("wasm-ld-16")
            .or_else(|| find_in_path("wasm-ld"))
            .unwrap_or_default(),
        wasi_libc: PathBuf::from("/usr/lib/wasm32-wasi"),
    };
    let missing: Vec<&str> = [
        (
            offline.cargo.is_file() && Path::new("/usr/bin/rustc").is_file(),
            "rustc-web cargo-web",
        ),
        (
            Path::new("/usr/lib/rustlib/src/rust/library").is_dir(),
            "rust-web-src",
        ),
        (offline.wasm_ld.is_file(), "lld-16"),
        (
            offline.wasi_libc.join("crt1-command.o").is_file(),
            "wasi-libc",
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() && offline.component_ld.is_file() {
        return Ok(Toolchain::Offline(offline));
    }
    let mut steps = Vec::new();
    if !missing.is_empty() {
        steps.push(format!("apt-get install {}", missing.join(" ")));
    }
    if !offline.component_ld.is_file() {
        steps.push("cargo install wasm-component-ld --locked".to_string());
    }
    bail!(
        "no toolchain can build {TARGET} components: either run `rustup target add {TARGET}`, or set up the offline toolchain with `{}`",
        steps.join(" && ")
    )
}

fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false)
}

/// Builds the crate (or workspace) in `dir`; returns the component of the crate
/// in `dir` (for a workspace build, the first component built).
pub fn build_crate(dir: &Path, opts: &BuildOptions) -> anyhow::Result<PathBuf> {
    let built = build(dir, opts)?;
    built.into_iter().next().with_context(|| {
        format!(
            "building {} produced no .wasm component; is it a `cdylib` or binary crate?",
            dir.display()
        )
    })
}

/// Builds and returns every .wasm produced, in cargo's order.
pub fn build(dir: &Path, opts: &BuildOptions) -> anyhow::Result<Vec<PathBuf>> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} has no Cargo.toml; `atoll build` takes a Rust crate directory",
            dir.display()
        );
    }
    // cargo runs in `dir`: no path handed to it may depend on our own cwd.
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let manifest = dir.join("Cargo.toml");
    let toolchain = detect()?;
    let mut cmd = match &toolchain {
        Toolchain::Rustup => Command::new(find_in_path("cargo").unwrap_or_else(|| "cargo".into())),
        Toolchain::Offline(t) => Command::new(&t.cargo),
    };
    clean_env(&mut cmd);
    cmd.current_dir(dir)
        .arg("build")
        .args([
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdout(Stdio::piped());
    if !opts.debug {
        cmd.arg("--release");
    }
    if opts.workspace {
        cmd.arg("--workspace");
    }
    if opts.quiet {
        cmd.arg("--quiet");
    }
    let target_dir = opts
        .target_dir
        .clone()
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from));
    if let Some(t) = target_dir {
        cmd.arg("--target-dir").arg(t);
    }
    if let Toolchain::Offline(t) = &toolchain {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![PathBuf::from("/usr/bin")];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs)?)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("ATOLL_OFFLINE_WASI", "1")
            .env("CARGO_TARGET_WASM32_WASIP2_LINKER", &t.component_ld)
            .env(
                "RUSTFLAGS",
                format!(
                    "-C link-self-contained=no -L {} -C link-arg=--wasm-ld-path={}",
                    t.wasi_libc.display(),
                    t.wasm_ld.display()
                ),
            )
            .arg("-Zbuild-std=std,panic_abort");
    }
    let output = cmd
        .spawn()
        .with_context(|| format!("running cargo for {}", dir.display()))?
        .wait_with_output()
        .context("waiting for cargo")?;
    if !output.status.success() {
        bail!(
            "cargo build failed for {} (see the compiler output above)",
            dir.display()
        );
    }
    let mut wasm = Vec::new();
    for line in output.stdout.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                wasm.push(PathBuf::from(f));
            }
        }
    }
    Ok(wasm)
}

/// Removes what an outer cargo (tests, build scripts) sets and would leak into
/// the nested build: flags, wrappers and the toolchain override.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = matches!(key, "CARGO_HOME" | "RUSTUP_HOME")
            || key.starts_with("CARGO_HTTP_")
            || key.starts_with("CARGO_NET_")
            || key.starts_with("CARGO_REGISTR");
        let drop = (key.starts_with("CARGO") || key.starts_with("RUST")) && !keep;
        if drop {
            cmd.env_remove(key);
        }
    }
}
