//! scheduler-core: pure placement logic (resources, constraints, fairness).
//!
//! Architecture invariant: this crate does no IO and knows nothing of Raft or gRPC.
//! Placement arrives with the registry and the scheduler (issue #3 and later); today it
//! holds the resource arithmetic those will share.

/// Resources of a node or a task, in whole units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpus_milli: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

impl Resources {
    /// True when `demand` fits in `self` on every dimension.
    pub fn fits(&self, demand: &Resources) -> bool {
        demand.cpus_milli <= self.cpus_milli && demand.memory_mb <= self.memory_mb && demand.disk_mb <= self.disk_mb
    }

    /// What is left after `demand` is placed, or `None` if it does not fit.
    pub fn checked_sub(&self, demand: &Resources) -> Option<Resources> {
        Some(Resources {
            cpus_milli: self.cpus_milli.checked_sub(demand.cpus_milli)?,
            memory_mb: self.memory_mb.checked_sub(demand.memory_mb)?,
            disk_mb: self.disk_mb.checked_sub(demand.disk_mb)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_demand_fits_only_if_every_dimension_fits() {
        let node = Resources { cpus_milli: 2000, memory_mb: 1024, disk_mb: 10 };
        assert!(node.fits(&Resources { cpus_milli: 2000, memory_mb: 1024, disk_mb: 10 }));
        assert!(!node.fits(&Resources { cpus_milli: 1, memory_mb: 1025, disk_mb: 0 }));
        assert_eq!(node.checked_sub(&Resources { cpus_milli: 0, memory_mb: 0, disk_mb: 11 }), None);
        assert_eq!(
            node.checked_sub(&Resources { cpus_milli: 500, memory_mb: 24, disk_mb: 10 }),
            Some(Resources { cpus_milli: 1500, memory_mb: 1000, disk_mb: 0 })
        );
    }
}
