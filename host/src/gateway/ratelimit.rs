//! Per-route token buckets (governor's GCRA), keyed by client IP, token
//! subject or a header such as an API key.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::{GatewayBody, text_response};
use crate::config::{RateKey, RateLimitSpec};

/// One route's buckets.
pub struct RateLimiter {
    spec: RateLimitSpec,
    buckets: DefaultKeyedRateLimiter<Key>,
    clock: DefaultClock,
}

/// Whose bucket: kept small so a check allocates only for header keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(IpAddr),
    Text(Box<str>),
    /// Requests without the keying header share this one.
    Missing,
}

impl RateLimiter {
    /// Buckets for a route's `rate_limit`.
    pub fn new(spec: &RateLimitSpec) -> RateLimiter {
        // `rate` per `per` is one token every `per / rate`.
        let period = (spec.per / spec.rate).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(spec.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .expect("period is above zero")
            .allow_burst(burst);
        RateLimiter {
            spec: spec.clone(),
            buckets: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// The bucket a request takes from.
    pub fn key(&self, client: IpAddr, subject: Option<&str>, headers: &HeaderMap) -> Key {
        match &self.spec.key {
            RateKey::Ip => Key::Ip(client),
            RateKey::Subject => match subject {
                Some(s) => Key::Text(s.into()),
                None => Key::Ip(client),
            },
            RateKey::Header(name) => match headers.get(name.as_str()) {
                Some(v) => Key::Text(String::from_utf8_lossy(v.as_bytes()).into()),
                None => Key::Missing,
            },
        }
    }

    /// Takes a token, or says how many whole seconds until one is there.
    pub fn check(&self, key: &Key) -> Result<(), u64> {
        match self.buckets.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                // Retry-After is whole seconds; round up so a retry then succeeds.
                Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
        }
    }

    /// Forgets buckets that are full again (bounded memory under many clients).
    pub fn forget_idle(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }

    /// Buckets held now.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }
}

/// The 429 answer.
pub fn too_many_requests(retry_after: u64, route: &str) -> Response<GatewayBody> {
    let retry_after = retry_after.max(1);
    let mut res = text_response(
        StatusCode::TOO_MANY_REQUESTS,
        format!("atoll: rate limit of route {route} reached; retry after {retry_after}s"),
    );
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_per_key() {
        let limiter = RateLimiter::new(&RateLimitSpec {
            rate: 1,
            per: Duration::from_secs(60),
            burst: 3,
            key: RateKey::Ip,
        });
        let a = Key::Ip("10.0.0.1".parse().unwrap());
        let b = Key::Ip("10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(limiter.check(&a), Ok(()));
        }
        let wait = limiter.check(&a).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(limiter.check(&b), Ok(()), "other clients are isolated");
    }
}
