//! Exists to test hot swap and canaries: fails its health check (/healthz 503); must never take traffic.

const VERSION: &str = "v4-sick";
const STATUS: u16 = 200;
const HEALTH: u16 = 503;

include!("../../swap-common/serve.rs");
