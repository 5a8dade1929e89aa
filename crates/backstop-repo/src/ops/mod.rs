//! Operations over a whole repository: listing and comparing snapshots,
//! checking, retention (forget) and garbage collection (prune), repair.

pub mod check;
pub mod diff;
pub mod dump;
pub mod forget;
pub mod ls;
pub mod prune;
pub mod repair;
mod used;

pub use used::{UsedBlobs, collect_used};
