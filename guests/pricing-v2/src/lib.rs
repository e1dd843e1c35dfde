//! Exists to test that an import of `test:calls/quote@1.2.0` does not link
//! to an incompatible release: exports `test:calls/quote@2.0.0`, whose only
//! function is `greet` (answering `hello v2, <name>`).

wit_bindgen::generate!({
    inline: "
        package atoll-test:pricing-v2;

        world pricing-v2 {
            export test:calls/quote@2.0.0;
        }
    ",
    path: ["../wit-calls/calls-2.0.0"],
});

use exports::test::calls::quote::Guest;

struct Quote;

impl Guest for Quote {
    fn greet(name: String) -> String {
        format!("hello v2, {name}")
    }
}

export!(Quote);
