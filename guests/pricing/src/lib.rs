//! Exists to test component-to-component calls from the callee's side:
//! exports `test:calls/quote@1.2.0` and nothing else (no HTTP handler).
//! `greet` answers `hello, <name>`; `total`, `classify`, `maybe` and `size`
//! exercise records, lists, results, variants and options; `spin(ms)`
//! busy-loops for ms milliseconds (forever for 0, without any host call);
//! `fail(code)` traps unless code is 0; `flaky(key)` increments
//! `flaky/<key>` in its `"default"` bucket and traps when the new count is
//! odd (the 1st, 3rd... call), else answers `ok <count>`.

wit_bindgen::generate!({
    inline: "
        package atoll-test:pricing;

        world pricing {
            export test:calls/quote@1.2.0;
        }
    ",
    path: ["../wit-calls/calls-1.2.0"],
});

fn greeting(name: &str) -> String {
    format!("hello, {name}")
}

include!("../../pricing-common/answers.rs");
include!("../../pricing-common/quote.rs");
