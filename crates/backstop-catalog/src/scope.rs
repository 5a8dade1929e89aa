//! Whose rows a caller may see: every query of the catalog that a request
//! makes is confined by one.

/// Whose rows a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant (administrators of the system tenant, the scheduler).
    All,
    Tenant(String),
}

impl Scope {
    /// ` AND {column} = ?` and its value, for a tenant scope.
    pub(crate) fn clause(&self, column: &str) -> (String, Option<&str>) {
        match self {
            Scope::All => (String::new(), None),
            Scope::Tenant(t) => (format!(" AND {column} = ?"), Some(t.as_str())),
        }
    }

    /// The tenant new objects belong to.
    pub fn tenant(&self) -> &str {
        match self {
            Scope::All => SYSTEM_TENANT,
            Scope::Tenant(t) => t,
        }
    }
}

/// The tenant whose administrators administer every tenant.
pub const SYSTEM_TENANT: &str = "system";
