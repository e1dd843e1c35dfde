// Shared by the pricing test guests that implement every function of
// test:calls/quote for real (`pricing` at 1.2.0, `pricing-next` at 1.3.0).
// Each generates bindings for its own release of the interface (same
// functions, same types, so the same Rust names), defines
// `fn greeting(name: &str) -> String` and then `include!`s answers.rs and
// this file. Separate crates, so each is a different binary exporting a
// different version, the way two releases of one service are.

use std::hint::black_box;
use std::time::{Duration, Instant};

use atoll_sdk::kv::Store;
use exports::test::calls::quote::Guest;

struct Quote;

impl Guest for Quote {
    fn greet(name: String) -> String {
        greeting(&name)
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
        if ms == 0 {
            // Forever, and without a single host call: only the host's
            // interruption (epoch deadline, fuel) can end it.
            let mut n: u64 = 0;
            loop {
                n = black_box(n).wrapping_add(1);
            }
        }
        // Pure computation between reads of the monotonic clock (std's
        // Instant is wasi:clocks/monotonic-clock): never sleeps or yields.
        let until = Duration::from_millis(u64::from(ms));
        let start = Instant::now();
        let mut n: u64 = 0;
        while start.elapsed() < until {
            for _ in 0..10_000 {
                n = black_box(n).wrapping_add(1);
            }
        }
        ms
    }

    fn fail(code: u32) -> u32 {
        if code != 0 {
            // panic = "abort": the guest ends in an `unreachable` trap.
            panic!("fail({code}) traps on purpose");
        }
        0
    }

    fn size(data: Vec<u8>) -> u32 {
        len_u32(data.len())
    }

    fn flaky(key: String) -> String {
        let counter = format!("flaky/{key}");
        let count = match Store::open("default").and_then(|store| store.increment(&counter, 1)) {
            Ok(count) => count,
            Err(err) => return format!("kv error: {err}"),
        };
        if count % 2 == 1 {
            panic!("{counter} is now {count}: an odd count traps on purpose");
        }
        format!("ok {count}")
    }
}

export!(Quote);
