//! The partition lifecycle as hv-core enforces it (TLFS "Partition Management";
//! the order Linux's mshv_root uses: create, set properties, initialize, create
//! VPs and map memory, run, finalize, delete).

use hv1_abi::HvStatus;

/// Where a child partition is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Created: properties may be set; no VPs, no memory, cannot run.
    Created,
    /// Initialized: VPs can be created, memory mapped, VPs dispatched.
    Initialized,
    /// Finalized: torn down, nothing runs; only deletion remains.
    Finalized,
}

/// An operation refused in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateError {
    /// The state the partition was in.
    pub state: PartitionState,
    /// What was attempted.
    pub operation: &'static str,
}

impl StateError {
    /// The status the caller gets.
    pub fn status(&self) -> HvStatus {
        HvStatus::INVALID_PARTITION_STATE
    }
}

impl PartitionState {
    fn require(self, ok: bool, operation: &'static str) -> Result<(), StateError> {
        if ok {
            Ok(())
        } else {
            Err(StateError {
                state: self,
                operation,
            })
        }
    }

    /// HvCallInitializePartition.
    pub fn initialize(self) -> Result<Self, StateError> {
        self.require(self == Self::Created, "initialize")?;
        Ok(Self::Initialized)
    }

    /// HvCallFinalizePartition.
    pub fn finalize(self) -> Result<Self, StateError> {
        self.require(self != Self::Finalized, "finalize")?;
        Ok(Self::Finalized)
    }

    /// HvCallDeletePartition: allowed once finalized, or before initialization
    /// (nothing was built yet).
    pub fn check_delete(self) -> Result<(), StateError> {
        self.require(self != Self::Initialized, "delete")
    }

    /// HvCallSetPartitionProperty: only before initialization.
    pub fn check_set_property(self) -> Result<(), StateError> {
        self.require(self == Self::Created, "set property")
    }

    /// CreateVp, MapGpaPages, UnmapGpaPages, register access, DispatchVp.
    pub fn check_active(self, operation: &'static str) -> Result<(), StateError> {
        self.require(self == Self::Initialized, operation)
    }

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Initialized => "initialized",
            Self::Finalized => "finalized",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PartitionState::*;
    use super::*;

    #[test]
    fn the_normal_life() {
        let s = Created;
        s.check_set_property().unwrap();
        let s = s.initialize().unwrap();
        s.check_active("create vp").unwrap();
        assert!(s.check_delete().is_err(), "must finalize before delete");
        let s = s.finalize().unwrap();
        s.check_delete().unwrap();
    }

    #[test]
    fn illegal_steps_are_refused_with_invalid_partition_state() {
        assert_eq!(
            Initialized.initialize().unwrap_err().status(),
            HvStatus::INVALID_PARTITION_STATE
        );
        assert!(Finalized.initialize().is_err());
        assert!(Finalized.finalize().is_err());
        assert!(Created.check_active("dispatch").is_err());
        assert!(Finalized.check_active("map").is_err());
        assert!(Initialized.check_set_property().is_err());
        // A never-initialized partition can be deleted directly.
        Created.check_delete().unwrap();
        let e = Initialized.check_delete().unwrap_err();
        assert_eq!((e.state, e.operation), (Initialized, "delete"));
    }
}
