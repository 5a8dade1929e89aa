//! What a job may reach on the host its worker runs on.
//!
//! Workers run with the service's privileges, but a tenant's job may touch
//! only what its administrator granted. This crate is where that holds, at
//! the moment of use rather than when the API accepted the request (a
//! tenant can swap a directory for a link in between):
//!
//! - [`Dir`] is an open directory. Paths beneath it are resolved by the
//!   kernel (`openat2` with `RESOLVE_BENEATH`) or, where that call is
//!   missing, by a walk one component at a time with `O_NOFOLLOW`; either
//!   way neither a symbolic link nor `..` leads out of it, and with
//!   [`Links::Refuse`] no link is followed at all. Everything else a
//!   restore or a repository does to a directory (create, rename, link,
//!   set times) goes through a `Dir` and a single name, so no path is
//!   resolved except beneath a handle.
//! - [`PathScope`] says which absolute paths a job may name — any (the
//!   system tenant's administrators) or only those beneath a tenant's
//!   roots — and opens them through a [`Dir`] of the root.
//! - [`NetScope`] says which addresses a job may connect to: any, or only
//!   what a tenant was granted ([`NetGrant`]); names are resolved through
//!   it and callers connect to the addresses it returns, so there is no
//!   window between the check and the connection.

mod dir;
mod net;
mod paths;

pub use dir::{Dir, FileTimes, Links, force_walk_for_tests};
pub use net::{NetError, NetGrant, NetScope};
pub use paths::PathScope;

use serde::{Deserialize, Serialize};

/// Everything a job may reach: its local paths and its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Reach {
    pub paths: PathScope,
    pub net: NetScope,
}

impl Reach {
    /// Anything: the system tenant's jobs, and the CLI's own.
    pub fn any() -> Reach {
        Reach { paths: PathScope::Any, net: NetScope::Any }
    }

    /// Nothing local and no network: the starting point of a confined job.
    pub fn nothing() -> Reach {
        Reach { paths: PathScope::nowhere(), net: NetScope::nowhere() }
    }

    pub fn is_any(&self) -> bool {
        self.paths.is_any() && self.net.is_any()
    }
}
