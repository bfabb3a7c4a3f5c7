//! Hypercall dispatch (TLFS "Hypercall Interface"): decode the control word,
//! check privileges and every GPA, then run the call.

use crate::exits::Partition;
use crate::memory::GpaError;
use hv1_abi::cpuid::PartitionPrivileges;
use hv1_abi::hypercall::{HYPERCALL_PARAM_ALIGN, HvOutputGetPartitionId};
use hv1_abi::private::{self, CoreStats};
use hv1_abi::{HvCallCode, HvStatus, HypercallControl, HypercallResult};
use zerocopy::IntoBytes;

impl From<GpaError> for HvStatus {
    fn from(e: GpaError) -> Self {
        match e {
            GpaError::Misaligned => HvStatus::INVALID_ALIGNMENT,
            GpaError::OutOfRange => HvStatus::INVALID_PARAMETER,
        }
    }
}

/// Run the hypercall `control` with slow-call GPAs `input` and `output`.
pub fn dispatch(p: &mut Partition, control: u64, input: u64, output: u64) -> HypercallResult {
    let control = match HypercallControl::decode(control) {
        Ok(c) => c,
        Err(e) => return HypercallResult::status(e.status()),
    };
    let status = match control.code {
        HvCallCode::GET_PARTITION_ID => {
            let out = HvOutputGetPartitionId { partition_id: p.id };
            simple_output(p, &control, output, out.as_bytes())
        }
        private::GET_CORE_STATS if !p.privileges.contains(PartitionPrivileges::CPU_MANAGEMENT) => {
            HvStatus::ACCESS_DENIED
        }
        private::GET_CORE_STATS => {
            let stats = CoreStats {
                region_base: p.hv_region.start,
                region_size: p.hv_region.end - p.hv_region.start,
                region_used: p.alloc.used(),
                total_exits: p.stats.total,
                exits: p.stats.by_reason,
                injected_exceptions: p.stats.injected,
                failed_hypercalls: p.stats.failed_hypercalls,
            };
            simple_output(p, &control, output, stats.as_bytes())
        }
        _ => HvStatus::INVALID_HYPERCALL_CODE,
    };
    let _ = input; // no call implemented so far takes input
    HypercallResult::status(status)
}

/// A simple (non-rep, slow) call whose whole output is `bytes`.
fn simple_output(p: &Partition, control: &HypercallControl, output: u64, bytes: &[u8]) -> HvStatus {
    if control.rep_count != 0 || control.fast || control.variable_header_qwords != 0 {
        return HvStatus::INVALID_HYPERCALL_INPUT;
    }
    match p.ram.write(output, bytes, HYPERCALL_PARAM_ALIGN) {
        Ok(()) => HvStatus::SUCCESS,
        Err(e) => e.into(),
    }
}
