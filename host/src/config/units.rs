//! Sizes (`64MiB`) and durations (`250ms`) as they are written in atoll.toml.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

pub use bytesize::ByteSize;

/// Parses a size such as `64MiB`, `512KiB`, `1GiB` or a plain byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| {
            format!("`{text}` is not a size; write it like `64MiB`, `512KiB` or `1048576`")
        })
}

/// Parses a duration such as `250ms`, `10s` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("`{text}` is not a duration; write it like `250ms`, `10s` or `2m`"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

pub(super) fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match SizeValue::deserialize(d)
        .map_err(|_| D::Error::custom("expected a size such as `64MiB` or a byte count"))?
    {
        SizeValue::Bytes(n) => Ok(Some(n)),
        SizeValue::Text(s) => parse_size(&s).map(Some).map_err(D::Error::custom),
    }
}

pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)
        .map_err(|_| D::Error::custom("expected a duration string such as `10s` or `250ms`"))?;
    parse_duration(&s).map(Some).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }
}
