// The pure answers of test:calls/quote, shared by every pricing test guest
// that exports a 1.x release (`pricing`, `pricing-next`, `pricing-backup`).
// Each `include!`s this file after its `wit_bindgen::generate!`, whose
// bindings provide `Item` and `Outcome` under the same Rust path for every
// 1.x release.

use exports::test::calls::quote::{Item, Outcome};

/// qty * 100 summed over the items; `empty` for none, `unknown sku x` for
/// an item whose sku is `x`.
fn total_of(items: &[Item]) -> Result<u64, String> {
    if items.is_empty() {
        return Err("empty".to_string());
    }
    let mut sum: u64 = 0;
    for item in items {
        if item.sku == "x" {
            return Err(format!("unknown sku {}", item.sku));
        }
        sum = sum.saturating_add(u64::from(item.qty) * 100);
    }
    Ok(sum)
}

/// n > 0: priced(n * 10); 0: free; n < 0: unknown("negative <n>").
fn classify_of(n: i32) -> Outcome {
    match n {
        1.. => Outcome::Priced(u64::from(n.unsigned_abs()) * 10),
        0 => Outcome::Free,
        _ => Outcome::Unknown(format!("negative {n}")),
    }
}

/// A length as WIT's u32 (saturating; nothing here comes near 4 GiB).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
