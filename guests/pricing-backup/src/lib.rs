//! Exists to test fallbacks of component-to-component calls: exports
//! `test:calls/quote@1.2.0` like `pricing`, but every function succeeds at
//! once. `greet` answers `backup hello, <name>`, `fail(code)` returns code,
//! `spin(ms)` returns ms without waiting and `flaky(key)` answers
//! `backup ok <key>` (no key-value import); `total`, `classify`, `maybe` and
//! `size` answer as `pricing` does.

wit_bindgen::generate!({
    inline: "
        package atoll-test:pricing-backup;

        world pricing-backup {
            export test:calls/quote@1.2.0;
        }
    ",
    path: ["../wit-calls/calls-1.2.0"],
});

include!("../../pricing-common/answers.rs");

use exports::test::calls::quote::Guest;

struct Quote;

impl Guest for Quote {
    fn greet(name: String) -> String {
        format!("backup hello, {name}")
    }

    fn total(items: Vec<Item>) -> Result<u64, String> {
        total_of(&items)
    }

    fn classify(n: i32) -> Outcome {
        classify_of(n)
    }

    fn maybe(x: Option<String>) -> Option<u32> {
        x.map(|s| len_u32(s.len()))
    }

    fn spin(ms: u32) -> u32 {
        ms
    }

    fn fail(code: u32) -> u32 {
        code
    }

    fn size(data: Vec<u8>) -> u32 {
        len_u32(data.len())
    }

    fn flaky(key: String) -> String {
        format!("backup ok {key}")
    }
}

export!(Quote);
