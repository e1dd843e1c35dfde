//! Exists to test the call-depth limit of component-to-component calls,
//! with `cycle-left`: exports `test:cycle/right` and imports
//! `test:cycle/left` (no HTTP handler). `right.ping(d)` returns
//! `left.ping(d + 1) + 1`, and `cycle-left` calls back here: an endless
//! mutual recursion, one fresh instance per call, that the host must stop.

wit_bindgen::generate!({
    inline: "
        package atoll-test:cycle-right;

        world cycle-right {
            import test:cycle/left@0.1.0;
            export test:cycle/right@0.1.0;
        }
    ",
    path: ["../wit-calls/cycle-0.1.0"],
    // The interface lives in another package: generate its bindings here.
    generate_all,
});

use test::cycle::left;

struct Right;

impl exports::test::cycle::right::Guest for Right {
    fn ping(depth: u32) -> u32 {
        left::ping(depth.wrapping_add(1)).wrapping_add(1)
    }
}

export!(Right);
