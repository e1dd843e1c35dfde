//! Exists to test hot swap and canaries: answers `v1`; /healthz 200.

const VERSION: &str = "v1";
const STATUS: u16 = 200;
const HEALTH: u16 = 200;

include!("../../swap-common/serve.rs");
