//! Exists to test hot swap and canaries: passes its health check (/healthz 200) but answers every other request with 500.

const VERSION: &str = "v3-flaky";
const STATUS: u16 = 500;
const HEALTH: u16 = 200;

include!("../../swap-common/serve.rs");
