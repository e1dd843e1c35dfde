//! The store's resource limiter: wasmtime's [`StoreLimits`] decides, and each
//! memory growth it refuses is counted as the version's [`Limit::Memory`].

use std::sync::Arc;

use wasmtime::{ResourceLimiter, StoreLimits};

use crate::registry::{Limit, VersionStats};

/// [`StoreLimits`] that counts its refused memory growths.
pub(super) struct Limiter {
    /// What decides.
    pub(super) limits: StoreLimits,
    /// Where refusals are counted (`None`: nowhere).
    pub(super) stats: Option<Arc<VersionStats>>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum);
        // Refused whether it says no or fails (a trap, if it were configured to).
        if !matches!(allowed, Ok(true))
            && let Some(stats) = &self.stats
        {
            stats.limit(Limit::Memory);
        }
        allowed
    }

    // A growth failing after it was allowed (the host could not provide the
    // pages) is not a limit: not counted.
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::StoreLimitsBuilder;

    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn counts_each_refused_memory_growth_and_decides_as_store_limits() {
        let stats = Arc::new(VersionStats::default());
        let mut l = Limiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(4 * MIB)
                .table_elements(10)
                .instances(3)
                .build(),
            stats: Some(stats.clone()),
        };
        assert!(l.memory_growing(0, 4 * MIB, None).unwrap());
        assert_eq!(stats.limits(Limit::Memory), 0);
        assert!(!l.memory_growing(4 * MIB, 5 * MIB, None).unwrap());
        assert!(!l.memory_growing(4 * MIB, 5 * MIB, None).unwrap());
        assert_eq!(stats.limits(Limit::Memory), 2);
        // Past the memory's own maximum is refused too.
        assert!(!l.memory_growing(MIB, 2 * MIB, Some(MIB)).unwrap());
        assert_eq!(stats.limits(Limit::Memory), 3);
        // Tables and the rest are delegated, not counted.
        assert!(!l.table_growing(0, 11, None).unwrap());
        assert!(l.table_growing(0, 10, None).unwrap());
        assert_eq!(l.instances(), 3);
        assert_eq!(stats.limits(Limit::Memory), 3);
    }

    #[test]
    fn a_refusal_that_traps_is_counted_and_still_traps() {
        let stats = Arc::new(VersionStats::default());
        let mut l = Limiter {
            limits: StoreLimitsBuilder::new()
                .memory_size(MIB)
                .trap_on_grow_failure(true)
                .build(),
            stats: Some(stats.clone()),
        };
        assert!(l.memory_growing(0, 2 * MIB, None).is_err());
        assert_eq!(stats.limits(Limit::Memory), 1);
    }
}
