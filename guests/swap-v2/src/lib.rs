//! Exists to test hot swap and canaries: answers `v2`; /healthz 200.

const VERSION: &str = "v2";
const STATUS: u16 = 200;
const HEALTH: u16 = 200;

include!("../../swap-common/serve.rs");
