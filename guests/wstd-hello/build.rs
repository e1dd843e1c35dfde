//! A binary needs the C start file (`_start`). rustup's wasm32-wasip2 target
//! links it itself; the offline toolchain (Debian's rustc with
//! `-C link-self-contained=no` and Debian's wasi-libc) does not, so link it
//! here when that toolchain is in use: ATOLL_OFFLINE_WASI is set, or the
//! target's RUSTFLAGS turn self-contained linking off. Only for a WASI target
//! and when the file exists, so a rustup build never gets it twice.

const CRT1: &str = "/usr/lib/wasm32-wasi/crt1-command.o";

fn main() {
    println!("cargo:rerun-if-env-changed=ATOLL_OFFLINE_WASI");
    println!("cargo:rerun-if-changed={CRT1}");
    let asked = std::env::var_os("ATOLL_OFFLINE_WASI").is_some_and(|v| !v.is_empty() && v != "0");
    let not_self_contained = std::env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| {
        flags
            .split('\x1f')
            .any(|f| f.contains("link-self-contained=no"))
    });
    let wasi = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "wasi");
    if (asked || not_self_contained) && wasi && std::path::Path::new(CRT1).exists() {
        println!("cargo:rustc-link-arg-bins={CRT1}");
    }
}
