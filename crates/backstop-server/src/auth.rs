//! Authentication and authorisation. Every API call carries a token
//! (`Authorization: Bearer bst_…`), stored hashed in the catalog. Roles:
//! viewers read, operators also run, cancel and configure, admins also
//! manage tokens (and, in the system tenant, tenants); worker tokens only
//! claim and report jobs. A token of the system tenant sees every tenant;
//! any other token sees only its own tenant's objects — others' are
//! simply not found.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use backstop_catalog::now_ms;
use backstop_catalog::resources::{SYSTEM_TENANT, Scope};
use backstop_types::{Role, Token};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: Token,
}

impl Caller {
    pub fn scope(&self) -> Scope {
        if self.token.tenant == SYSTEM_TENANT { Scope::All } else { Scope::Tenant(self.token.tenant.clone()) }
    }

    /// Refuse unless the caller has at least `role` (workers only `Worker`).
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        let ok = match (self.token.role, role) {
            (Role::Worker, Role::Worker) => true,
            (Role::Worker, _) | (_, Role::Worker) => false,
            (have, need) => have >= need,
        };
        if ok {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs a token with the {} role; this one is {}",
                role.as_str(),
                self.token.role.as_str()
            )))
        }
    }

    /// Refuse unless the caller is an admin of the system tenant: for what
    /// runs commands on the workers or uses their own credentials (command
    /// sources, hooks, restores into commands, the workers' kubeconfig).
    /// `what` says what was asked, for the message.
    pub fn require_system_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.scope() == Scope::All && self.require(Role::Admin).is_ok() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("{what}: only an admin of the system tenant may ask for it")))
        }
    }

    /// Who did it, for the audit trail.
    pub fn actor(&self) -> String {
        format!("token/{}", self.token.id)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        state.metrics.request();
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let secret =
            header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).ok_or_else(ApiError::unauthorized)?;
        match state.catalog.authenticate(secret, now_ms()).await? {
            Some(token) => Ok(Caller { token }),
            None => Err(ApiError::unauthorized()),
        }
    }
}
