//! The per-request cost of a fresh instance, without HTTP or sockets: for the
//! `hello` component as a running host loaded it (same engine, pool, linker
//! and grants), time
//!
//! - the store alone (`sandbox::new_store`),
//! - store + `InstancePre::instantiate_async` (what the issue's 10 µs goal is about),
//! - dropping that store (the instance's pool slot is reset and returned),
//! - a whole invocation: store, instantiate, `incoming-handler.handle` of an
//!   empty-bodied `GET /hello` built the way the gateway builds it, reading the
//!   response head and body through the outparam, and dropping the store.
//!
//! `cargo bench -p atoll-tests --bench instantiate`; `ATOLL_BENCH_ITERS`
//! (default 20000) measured iterations per row after `ATOLL_BENCH_WARMUP_ITERS`
//! (default 2000).

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use atoll::registry::ComponentRuntime;
use atoll::sandbox::{self, InstanceState};
use atoll_tests::TestHost;
use bytes::Bytes;
use common::{fmt_ns, histogram, print_table, record};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

const MANIFEST: &str = r#"
[components.hello]
source = "{hello}"
routes = ["/hello"]
"#;

/// The issue's goal for the median of store + instantiate.
const GOAL: Duration = Duration::from_micros(10);

fn main() -> anyhow::Result<()> {
    common::print_machine();
    let iters: u64 = common::env_parse("ATOLL_BENCH_ITERS", 20_000);
    let warmup: u64 = common::env_parse("ATOLL_BENCH_WARMUP_ITERS", 2_000);
    // One thread: the measured code runs where the loop runs, with no other
    // request competing (the epoch ticker and flusher threads still exist).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let host = TestHost::start(MANIFEST).await;
        let rt = host
            .host
            .registry()
            .components()
            .first()
            .cloned()
            .context("the host loaded no component")?;
        println!("component `{}` sha256:{}", rt.name, &rt.digest[..12]);
        println!("{iters} measured iterations per row after {warmup} warm-up iterations");

        let deadline = || Instant::now() + rt.limits.deadline;
        let mut rows = Vec::new();

        let mut h = histogram();
        for i in 0..warmup + iters {
            let t = Instant::now();
            let store = sandbox::new_store(&rt.engine, &rt.grants, deadline());
            let took = t.elapsed();
            drop(store);
            if i >= warmup {
                record(&mut h, took);
            }
        }
        rows.push(row("new_store", &h));

        let mut inst = histogram();
        let mut dropped = histogram();
        for i in 0..warmup + iters {
            let t = Instant::now();
            let mut store = sandbox::new_store(&rt.engine, &rt.grants, deadline());
            let _proxy = rt.pre.instantiate_async(&mut store).await?;
            let took = t.elapsed();
            let t = Instant::now();
            drop(store);
            let took_drop = t.elapsed();
            if i >= warmup {
                record(&mut inst, took);
                record(&mut dropped, took_drop);
            }
        }
        rows.push(row("new_store + instantiate_async", &inst));
        rows.push(row("drop store (slot back to pool)", &dropped));

        let mut full = histogram();
        for i in 0..warmup + iters {
            let t = Instant::now();
            let body = invoke(&rt, deadline()).await?;
            let took = t.elapsed();
            if i == 0 {
                anyhow::ensure!(
                    body == "hello from atoll: /hello\n",
                    "unexpected response body {body:?}"
                );
            }
            if i >= warmup {
                record(&mut full, took);
            }
        }
        rows.push(row("store + instantiate + handle + drop", &full));

        print_table(
            "one fresh instance of `hello`",
            &["step", "p50", "p90", "p99", "mean"],
            &rows,
        );
        let p50 = Duration::from_nanos(inst.value_at_quantile(0.5));
        println!(
            "\ngoal: p50 of store + instantiate under {GOAL:?}: {} ({})",
            if p50 < GOAL { "met" } else { "NOT met" },
            fmt_ns(p50.as_nanos() as f64)
        );
        host.stop().await;
        anyhow::Ok(())
    })
}

fn row(step: &str, h: &Histogram<u64>) -> Vec<String> {
    vec![
        step.to_string(),
        fmt_ns(h.value_at_quantile(0.5) as f64),
        fmt_ns(h.value_at_quantile(0.9) as f64),
        fmt_ns(h.value_at_quantile(0.99) as f64),
        fmt_ns(h.mean()),
    ]
}

/// One invocation as `gateway/dispatch.rs` runs it, minus the socket, the
/// spawned task and the deadline timer: returns the response body.
async fn invoke(rt: &ComponentRuntime, deadline: Instant) -> anyhow::Result<String> {
    let mut store: Store<InstanceState> = sandbox::new_store(&rt.engine, &rt.grants, deadline);
    let req = http::Request::get("http://localhost/hello")
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let (head_tx, head_rx) = oneshot::channel();
    let (req, out) = {
        let mut http = store.data_mut().http();
        let req = http.new_incoming_request(Scheme::Http, req)?;
        let out = http.new_response_outparam(head_tx)?;
        (req, out)
    };
    let call = async {
        let instance = rt
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(anyhow::Error::from)?;
        let proxy = rt
            .http
            .as_ref()
            .expect("hello exports wasi:http")
            .load(&mut store, &instance)
            .map_err(anyhow::Error::from)?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
            .map_err(anyhow::Error::from)
    };
    // The guest writes its body while `handle` runs: read it concurrently, as
    // the gateway does, so a body bigger than the pipe's buffer cannot stall.
    let read = async {
        let res = head_rx
            .await
            .map_err(|_| anyhow!("no response"))?
            .map_err(|code| anyhow!("guest error {code:?}"))?;
        anyhow::ensure!(res.status() == 200, "status {}", res.status());
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|code| anyhow!("body error {code:?}"))?;
        anyhow::Ok(body.to_bytes())
    };
    let ((), body) = tokio::try_join!(call, read)?;
    drop(store);
    Ok(String::from_utf8_lossy(&body).into_owned())
}
