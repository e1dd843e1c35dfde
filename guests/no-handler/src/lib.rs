//! Exists to test the error for a component that exports no
//! `wasi:http/incoming-handler`: it only exports a `run: func()`.

wit_bindgen::generate!({
    inline: "
        package atoll-test:no-handler;

        world no-handler {
            export run: func();
        }
    ",
});

struct Component;

impl Guest for Component {
    fn run() {}
}

export!(Component);
