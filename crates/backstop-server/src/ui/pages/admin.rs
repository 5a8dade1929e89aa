//! Administration, for admins: tokens (a new one's secret is shown once),
//! tenants and the audit trail — each through the API's own handlers, so
//! an operator or viewer gets the API's 403 here too.

use backstop_types::{NewToken, TenantSpec, TokenSpec};

use super::*;
use crate::handlers::PageQuery;
use crate::handlers::resources::AuditQuery;
use crate::ui::UiForm;

fn roles() -> [Role; 4] {
    [Role::Viewer, Role::Operator, Role::Admin, Role::Worker]
}

/// The token list and the form that makes one; after `made`, its secret, this once.
async fn tokens_page(
    state: &AppState,
    session: &UiSession,
    made: Option<&NewToken>,
    error: Option<&ApiError>,
) -> PageResult {
    let tokens = every(|cursor| {
        let q = PageQuery { cursor, limit: Some(1000) };
        handlers::resources::list_tokens(State(state.clone()), session.caller(), Query(q))
    })
    .await?;
    let csrf = &session.session.csrf;
    let body = html! {
        h1 { "Tokens" }
        @if let Some(new) = made {
            section #new-token.notice role="status" {
                p { "Token " strong { (new.token.name) } " (" (new.token.role.as_str()) ", tenant " (new.token.tenant) ") was made. Its secret is shown this once — copy it now:" }
                input #secret type="text" readonly value=(new.secret.expose());
            }
        }
        @if let Some(e) = error.filter(|e| e.field.is_none()) { p.error role="alert" { (e.message) } }
        form #token.form method="post" action="/admin/tokens" {
            input type="hidden" name="csrf" value=(csrf);
            (super::plans::labelled("name", "Name", field_error(error, "name"), html! {
                input #name type="text" name="name" required pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,127}";
            }, "who or what uses it"))
            (super::plans::labelled("role", "Role", None, html! {
                select #role name="role" { @for r in roles() { option value=(r.as_str()) { (r.as_str()) } } }
            }, "viewer reads; operator also runs and changes; admin also manages tokens and tenants; worker runs jobs"))
            (super::plans::labelled("tenant", "Tenant", field_error(error, "tenant"), html! {
                input #tenant type="text" name="tenant" placeholder=(session.session.token.tenant);
            }, "empty: your own"))
            div.actions { button.primary type="submit" name="create" { "Make token" } }
        }
        h2 { "Tokens (" (tokens.len()) ")" }
        table.tokens {
            thead { tr { th { "Name" } th { "Role" } th { "Tenant" } th { "Made" } th { "Last used" } th { "" } } }
            tbody {
                @for t in &tokens {
                    tr data-token=(t.name) {
                        td { (t.name) }
                        td { (t.role.as_str()) }
                        td { (t.tenant) }
                        td { (when(&t.created)) }
                        td { (t.last_used.as_ref().map(ago).unwrap_or_else(|| "never".into())) }
                        td {
                            form.inline method="post" action={ "/admin/tokens/" (urlencode(&t.id)) "/revoke" }
                                data-confirm={ "Revoke token " (t.name) "? Whatever uses it stops working." } {
                                input type="hidden" name="csrf" value=(csrf);
                                button.danger type="submit" name="revoke" { "Revoke" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(with_status(render("Tokens", session, body), error))
}

pub async fn tokens(State(state): State<AppState>, session: UiSession) -> PageResult {
    tokens_page(&state, &session, None, None).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TokenForm {
    name: String,
    role: String,
    tenant: String,
}

pub async fn create_token(State(state): State<AppState>, UiForm(session, form): UiForm<TokenForm>) -> PageResult {
    let role = match Role::parse(&form.role) {
        Some(role) => role,
        None => return tokens_page(&state, &session, None, Some(&ApiError::invalid("choose a role").on("role"))).await,
    };
    let spec = TokenSpec { name: form.name.trim().to_string(), role, tenant: given(&form.tenant) };
    match handlers::resources::create_token(State(state.clone()), session.caller(), Json(spec)).await {
        Ok((_, Json(made))) => {
            // The secret is in this answer only: never stored in a page another request shows.
            tokens_page(&state, &session, Some(&made), None).await
        }
        Err(e) if e.code == backstop_types::ErrorCode::Forbidden => Err(fail(e)),
        Err(e) => tokens_page(&state, &session, None, Some(&e)).await,
    }
}

pub async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    UiAction(session): UiAction,
) -> PageResult {
    handlers::resources::revoke_token(State(state), session.caller(), Path(id)).await.map_err(fail)?;
    Ok(see_other("/admin/tokens"))
}

pub async fn tenants(State(state): State<AppState>, session: UiSession) -> PageResult {
    tenants_page(&state, &session, None).await
}

async fn tenants_page(state: &AppState, session: &UiSession, error: Option<&ApiError>) -> PageResult {
    let tenants = every(|cursor| {
        let q = PageQuery { cursor, limit: Some(1000) };
        handlers::resources::list_tenants(State(state.clone()), session.caller(), Query(q))
    })
    .await?;
    let body = html! {
        h1 { "Tenants" }
        @if let Some(e) = error.filter(|e| e.field.is_none()) { p.error role="alert" { (e.message) } }
        form #tenant.form method="post" action="/admin/tenants" {
            input type="hidden" name="csrf" value=(session.session.csrf);
            (super::plans::labelled("id", "Id", field_error(error, "id"), html! {
                input #id type="text" name="id" required pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,127}";
            }, "letters, digits, . _ -; tokens and objects name their tenant by it"))
            (super::plans::labelled("name", "Name", field_error(error, "name"), html! {
                input #name type="text" name="name";
            }, "shown to people"))
            div.actions { button.primary type="submit" name="create" { "Make tenant" } }
        }
        table.tenants {
            thead { tr { th { "Id" } th { "Name" } th { "May connect to" } th { "Made" } } }
            tbody {
                @for t in &tenants {
                    tr data-tenant=(t.id) {
                        td { (t.id) }
                        td { (t.name) }
                        td { @if t.allow_net.is_empty() { "–" } @for g in &t.allow_net { code { (g.to_string()) } " " } }
                        td { (when(&t.created)) }
                    }
                }
            }
        }
    };
    Ok(with_status(render("Tenants", session, body), error))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TenantForm {
    id: String,
    name: String,
}

pub async fn create_tenant(State(state): State<AppState>, UiForm(session, form): UiForm<TenantForm>) -> PageResult {
    let spec = TenantSpec { id: form.id.trim().to_string(), name: given(&form.name), allow_net: None };
    match handlers::resources::create_tenant(State(state.clone()), session.caller(), Json(spec)).await {
        Ok(_) => Ok(see_other("/admin/tenants")),
        Err(e) if e.code == backstop_types::ErrorCode::Forbidden => Err(fail(e)),
        Err(e) => tenants_page(&state, &session, Some(&e)).await,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPageQuery {
    #[serde(default)]
    cursor: String,
}

pub async fn audit(State(state): State<AppState>, session: UiSession, Query(q): Query<AuditPageQuery>) -> PageResult {
    let cursor = match given(&q.cursor) {
        Some(c) => Some(c.parse::<i64>().map_err(|_| fail(ApiError::invalid("cursor is an event id")))?),
        None => None,
    };
    let query = AuditQuery { cursor, limit: Some(100) };
    let Json(page) =
        handlers::resources::list_audit(State(state.clone()), session.caller(), Query(query)).await.map_err(fail)?;
    let body = html! {
        h1 { "Audit trail" }
        @if page.items.is_empty() {
            p.empty { "Nothing recorded." }
        } @else {
            table.audit {
                thead { tr { th { "Time" } th { "Tenant" } th { "Actor" } th { "Action" } th { "Object" } th { "Detail" } } }
                tbody {
                    @for e in &page.items {
                        tr data-action=(e.action) {
                            td { (when(&e.time)) }
                            td { (e.tenant) }
                            td { code { (e.actor) } }
                            td { (e.action) }
                            td { (e.object) }
                            td { code { (e.detail.to_string()) } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page.next_cursor {
            p { a.next href={ "/admin/audit?cursor=" (urlencode(next)) } { "Older →" } }
        }
    };
    Ok(render("Audit trail", &session, body))
}
