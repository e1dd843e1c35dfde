//! Placeholder: JWT verification (issue 6, being written).

pub const LOCAL_ISSUER: &str = "atoll-local";
pub const LOCAL_AUDIENCE: &str = "atoll";
