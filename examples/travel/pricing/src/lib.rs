//! Prices trips: exports `travel:pricing/quote` (see `../wit/pricing.wit`)
//! and nothing else, so nothing reaches it over HTTP; `booking` calls it.
//! A night costs the destination's rate; a stay of 7 nights or more gets
//! 10% off. Pure computation, so calling it again is always safe (the
//! manifest marks `get-quote` idempotent).

wit_bindgen::generate!({
    path: "../wit",
    world: "travel:pricing/pricing",
});

use exports::travel::pricing::quote::Guest;

/// Cents per night.
const RATES: &[(&str, u64)] = &[
    ("kyoto", 14_000),
    ("lisbon", 9_500),
    ("nairobi", 8_000),
    ("reykjavik", 21_000),
];

/// The longest stay quoted.
const MAX_NIGHTS: u32 = 30;

struct Pricing;

impl Guest for Pricing {
    fn get_quote(destination: String, nights: u32) -> Result<u64, String> {
        if !(1..=MAX_NIGHTS).contains(&nights) {
            return Err(format!(
                "nights must be between 1 and {MAX_NIGHTS}, not {nights}"
            ));
        }
        let wanted = destination.to_lowercase();
        let Some(&(_, rate)) = RATES.iter().find(|(name, _)| *name == wanted) else {
            return Err(format!("no rates for {destination}"));
        };
        let total = rate * u64::from(nights);
        Ok(if nights >= 7 {
            total - total / 10
        } else {
            total
        })
    }
}

export!(Pricing);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes() {
        assert_eq!(Pricing::get_quote("kyoto".into(), 3), Ok(42_000));
        assert_eq!(Pricing::get_quote("Lisbon".into(), 7), Ok(59_850));
        assert_eq!(
            Pricing::get_quote("atlantis".into(), 2),
            Err("no rates for atlantis".into())
        );
        assert_eq!(
            Pricing::get_quote("kyoto".into(), 0),
            Err("nights must be between 1 and 30, not 0".into())
        );
    }
}
