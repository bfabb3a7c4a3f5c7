//! hv-core's partition bookkeeping, kept free of hardware so it is tested on
//! the host:
//!
//! - [`PartitionState`]: the TLFS partition lifecycle (create → initialize →
//!   finalize → delete) with the status each illegal step gets;
//! - [`Table`]: fixed-capacity partition (or VP) slots with monotonic ids;
//! - [`PageBitmap`]: a bitmap over page frames, used both as hv-core's region
//!   allocator (VMCBs, NPT tables) and as the record of which root pages are
//!   mapped into a child, so no page is ever given to two partitions;
//! - [`PinTable`]: root pages hv-core writes on its own, counted per user,
//!   which are never lent.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod bitmap;
mod pins;
mod state;
mod table;

pub use bitmap::{BitmapError, PageBitmap};
pub use pins::{PinError, PinTable};
pub use state::{PartitionState, StateError};
pub use table::{Table, TableError};
