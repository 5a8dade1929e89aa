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
    /// runs commands on the workers (command sources, hooks, restores into
    /// commands). `what` says what was asked, for the message.
    pub fn require_system_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.scope() == Scope::All && self.require(Role::Admin).is_ok() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{what} runs commands on the workers; only an admin of the system tenant may ask for it"
            )))
        }
    }

    /// A local path the caller names for a source, a restore target or a
    /// repository: anyone of the system tenant may use any; another
    /// tenant's callers only paths under `<root>/<tenant>/` of a configured
    /// tenant root, since workers run with the service's privileges.
    pub fn confine_path(&self, state: &AppState, path: &str) -> Result<(), ApiError> {
        if self.scope() == Scope::All {
            return Ok(());
        }
        let p = std::path::Path::new(path);
        let clean = p.is_absolute()
            && p.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
        let tenant = &self.token.tenant;
        if clean && state.tenant_roots.iter().any(|root| p.starts_with(root.join(tenant)) && p != root.join(tenant)) {
            return Ok(());
        }
        let allowed: Vec<String> = state.tenant_roots.iter().map(|r| format!("{}/{tenant}/", r.display())).collect();
        Err(ApiError::forbidden(if allowed.is_empty() {
            format!(
                "tenant {tenant} may not use local paths on the service's hosts ({path}); an administrator can \
                 allow a directory per tenant with `backstop serve --tenant-root DIR`"
            )
        } else {
            format!("tenant {tenant} may only use paths under {} ({path} is not)", allowed.join(" or "))
        }))
    }

    /// A repository location the caller names: local paths are confined
    /// like [`confine_path`](Self::confine_path); an S3 repository of a
    /// tenant must bring its own credentials (the service's own are not lent).
    pub fn confine_location(
        &self,
        state: &AppState,
        location: &str,
        options: &[(String, String)],
    ) -> Result<(), ApiError> {
        if self.scope() == Scope::All {
            return Ok(());
        }
        if location.starts_with("s3://") {
            let has = |k: &str| options.iter().any(|(n, v)| n == k && !v.is_empty());
            if has("access_key_id") && has("secret_access_key") && has("endpoint") {
                return Ok(());
            }
            return Err(ApiError::forbidden(
                "an S3 repository of a tenant needs its own endpoint, access_key_id and secret_access_key options",
            ));
        }
        self.confine_path(state, location.strip_prefix("file:").unwrap_or(location))
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
