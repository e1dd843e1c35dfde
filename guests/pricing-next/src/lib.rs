//! Exists to test that an import of `test:calls/quote@1.2.0` links to a
//! compatible newer release: exports `test:calls/quote@1.3.0` (the same
//! functions and types) and behaves like `pricing` except that `greet`
//! answers `hello, <name> (1.3)`.

wit_bindgen::generate!({
    inline: "
        package atoll-test:pricing-next;

        world pricing-next {
            export test:calls/quote@1.3.0;
        }
    ",
    path: ["../wit-calls/calls-1.3.0"],
});

fn greeting(name: &str) -> String {
    format!("hello, {name} (1.3)")
}

include!("../../pricing-common/answers.rs");
include!("../../pricing-common/quote.rs");
