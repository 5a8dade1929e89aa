//! Sources: how well each is protected, and the form that registers one
//! of any kind — its fields are the kind's own (`backstop_source`'s
//! `ConfigField`s, which also make the API's schema), its credentials
//! write-only, and it is saved through the API's `create_source`.

use backstop_source::{ConfigField, FieldValue};
use backstop_types::{SourceKind, SourceSpec, SourceUpdate};
use serde_json::{Map, Value};

use super::plans::labelled;
use backstop_types::Per;

use super::*;
use crate::ui::UiForm;

/// Sources and how well each is protected; with `csrf` (an operator's
/// session), each row has Edit and Remove.
pub(super) fn protection_table(rows: &[&Protection], csrf: Option<&str>) -> Markup {
    html! {
        table.sources {
            thead { tr { th { "Source" } th { "Kind" } th { "Host" } th { "Plans" } th { "Last successful backup" } th { "Last verify" } th { "Next run" } @if csrf.is_some() { th { "" } } } }
            tbody {
                @for p in rows {
                    tr data-source=(p.source.name) class=[p.last_backup.is_none().then_some("unprotected")] {
                        td { (p.source.name) }
                        td { (p.source.kind.as_str()) }
                        td { (p.source.host.as_deref().unwrap_or("–")) }
                        td {
                            @if p.plans.is_empty() { span.error { "no plan" } }
                            @for (i, plan) in p.plans.iter().enumerate() {
                                @if i > 0 { ", " }
                                a href={ "/snapshots?plan=" (urlencode(&plan.name)) } title="its snapshots" { (plan.name) }
                            }
                        }
                        td {
                            @match p.last_backup {
                                Some(job) => { a href=(job_url(&job.id)) { (job.finished.as_ref().map(ago).unwrap_or_default()) } }
                                None => { strong.error { "never" } }
                            }
                        }
                        td {
                            @match p.last_verify {
                                Some(job) => { a href=(job_url(&job.id)) { (job.finished.as_ref().map(ago).unwrap_or_default()) } }
                                None => { "–" }
                            }
                        }
                        td { (p.next_run.as_ref().map(when).unwrap_or_else(|| "–".into())) }
                        @if let Some(csrf) = csrf {
                            td.actions-cell {
                                a.edit href={ "/sources/" (urlencode(&p.source.id)) "/edit" } { "Edit" } " "
                                form.inline method="post" action={ "/sources/" (urlencode(&p.source.id)) "/delete" }
                                    data-confirm={ "Remove source " (p.source.name) "? Its snapshots stay in their repository." } {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button.danger type="submit" name="delete" { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The source list's filters and page, as a browser sends them (empty: any).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesQuery {
    kind: String,
    host: String,
    page: usize,
}

pub async fn sources(State(state): State<AppState>, session: UiSession, Query(q): Query<SourcesQuery>) -> PageResult {
    let catalogue = Catalogue::load(&state, &session).await?;
    let backups = newest(&state, &session, JobKind::Backup, Per::Source).await?;
    let verifies = newest(&state, &session, JobKind::Verify, Per::Plan).await?;
    let rows: Vec<Protection> = protection(&catalogue, &backups, &verifies)
        .into_iter()
        .filter(|p| q.kind.is_empty() || p.source.kind.as_str() == q.kind)
        .filter(|p| q.host.is_empty() || p.source.host.as_deref() == Some(q.host.trim()))
        .collect();
    let operator = session.may(Role::Operator);
    let shown: Vec<&Protection> = page_of(&rows, q.page).iter().collect();
    let url = |page: usize| format!("/sources?kind={}&host={}&page={page}", urlencode(&q.kind), urlencode(&q.host));
    let body = html! {
        h1 { "Sources" }
        @if operator { p { a.button href="/sources/new" { "Add a source" } } }
        form.filters method="get" action="/sources" {
            label { "Kind "
                select name="kind" {
                    option value="" { "any" }
                    @for k in SourceKind::ALL { option value=(k.as_str()) selected[q.kind == k.as_str()] { (k.as_str()) } }
                }
            }
            label { "Host " input type="text" name="host" value=(q.host); }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p.empty { "No source matches." }
        } @else {
            (protection_table(&shown, operator.then_some(session.session.csrf.as_str())))
            (pager(q.page, rows.len(), url))
        }
    };
    Ok(render("Sources", &session, body))
}

/// The kind a new source's form is for (`fs` unless asked).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KindQuery {
    kind: String,
}

/// A field's name in the form: `config.KEY`, or `secret.KEY` for a credential.
fn input_name(field: &ConfigField) -> String {
    match field.value {
        FieldValue::Secret => format!("secret.{}", field.key),
        _ => format!("config.{}", field.key),
    }
}

/// The source the form describes: the kind's fields into `config`, its
/// credentials into `secrets`; empty fields are left out.
fn source_spec(form: &[(String, String)]) -> Result<SourceSpec, ApiError> {
    let kind =
        SourceKind::parse(sent(form, "kind")).ok_or_else(|| ApiError::invalid("choose one of the kinds").on("kind"))?;
    let (config, secrets) = config_and_secrets(kind, form);
    Ok(SourceSpec {
        name: sent(form, "name").trim().to_string(),
        kind,
        host: given(sent(form, "host")),
        config,
        secrets: secrets.into(),
    })
}

/// The kind's fields of the form: its `config`, and its `secrets` (null
/// when none was given).
fn config_and_secrets(kind: SourceKind, form: &[(String, String)]) -> (Value, Value) {
    let (mut config, mut secrets) = (Map::new(), Map::new());
    for field in backstop_source::packager(kind).fields() {
        let raw = sent(form, &input_name(field));
        let key = field.key.to_string();
        match field.value {
            FieldValue::Text if !raw.trim().is_empty() => {
                config.insert(key, Value::String(raw.trim().to_string()));
            }
            FieldValue::Lines => {
                let items: Vec<Value> =
                    raw.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| Value::String(l.into())).collect();
                if !items.is_empty() {
                    config.insert(key, Value::Array(items));
                }
            }
            FieldValue::Flag if matches!(raw, "on" | "true") => {
                config.insert(key, Value::Bool(true));
            }
            FieldValue::Secret if !raw.is_empty() => {
                secrets.insert(key, Value::String(raw.to_string()));
            }
            _ => {}
        }
    }
    let secrets = if secrets.is_empty() { Value::Null } else { Value::Object(secrets) };
    (Value::Object(config), secrets)
}

/// The form's values of an existing source: its configuration as the
/// form's fields (its credentials are never shown).
fn form_of(source: &Source) -> Vec<(String, String)> {
    let mut form = vec![("name".to_string(), source.name.clone())];
    form.push(("host".into(), source.host.clone().unwrap_or_default()));
    for field in backstop_source::packager(source.kind).fields() {
        let Some(value) = source.config.get(field.key) else { continue };
        let text = match (field.value, value) {
            (FieldValue::Secret, _) => continue,
            (FieldValue::Lines, Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                .collect::<Vec<_>>()
                .join("\n"),
            (FieldValue::Flag, v) => {
                if v == &Value::Bool(true) || v.as_str().is_some_and(|s| matches!(s, "true" | "yes" | "1")) {
                    "on".into()
                } else {
                    String::new()
                }
            }
            (_, Value::String(s)) => s.clone(),
            (_, other) => other.to_string(),
        };
        form.push((input_name(field), text));
    }
    form
}

/// The form of a new source of `kind`, or (with `editing`) of that source
/// (whose hooks, having no field here, it keeps).
fn source_form(
    session: &UiSession,
    kind: SourceKind,
    form: &[(String, String)],
    error: Option<&ApiError>,
    editing: Option<&Source>,
) -> Markup {
    let err = |field: &str| field_error(error, field);
    let action = match editing {
        Some(s) => format!("/sources/{}", urlencode(&s.id)),
        None => "/sources".to_string(),
    };
    html! {
        @if editing.is_none() {
            nav.kinds {
                "Kind: "
                @for k in SourceKind::ALL {
                    a href={ "/sources/new?kind=" (k.as_str()) } class=[(k == kind).then_some("current")] { (k.as_str()) }
                }
            }
        }
        @if let Some(e) = error.filter(|e| e.field.is_none()) { p.error role="alert" { (e.message) } }
        form #source.form method="post" action=(action) {
            input type="hidden" name="csrf" value=(session.session.csrf);
            input type="hidden" name="kind" value=(kind.as_str());
            (labelled("name", "Name", err("name"), html! {
                input #name type="text" name="name" value=(sent(form, "name")) required disabled[editing.is_some()]
                    pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,127}";
            }, "letters, digits, . _ -"))
            (labelled("host", "Host", err("host"), html! {
                input #host type="text" name="host" value=(sent(form, "host"));
            }, "the host whose data this is (limits per host); empty: the worker's own"))
            @for field in backstop_source::packager(kind).fields() {
                @let name = input_name(field);
                @let value = sent(form, &name);
                @let label = if field.required { format!("{} *", field.label) } else { field.label.to_string() };
                (labelled(&name, &label, err(&format!("config.{}", field.key)), html! {
                    @match field.value {
                        FieldValue::Text => { input id=(name) type="text" name=(name) value=(value) required[field.required]; }
                        FieldValue::Lines => { textarea id=(name) name=(name) rows="3" required[field.required] { (value) } }
                        FieldValue::Flag => { input id=(name) type="checkbox" name=(name) checked[matches!(value, "on" | "true")]; }
                        // Write-only: never shown again, not even after a refused form.
                        FieldValue::Secret => {
                            input id=(name) type="password" name=(name) autocomplete="new-password"
                                placeholder=[editing.map(|_| "empty: keep the stored one")];
                        }
                    }
                }, field.help))
            }
            div.actions {
                button.primary type="submit" name="save" { @if editing.is_some() { "Save source" } @else { "Add source" } }
                a href="/sources" { "Cancel" }
            }
        }
    }
}

fn source_page(
    session: &UiSession,
    kind: SourceKind,
    form: &[(String, String)],
    error: Option<&ApiError>,
    editing: Option<&Source>,
) -> Response {
    let title = match editing {
        Some(s) => format!("Source {}", s.name),
        None => format!("New {} source", kind.as_str()),
    };
    with_status(
        render(&title, session, html! { h1 { (title) } (source_form(session, kind, form, error, editing)) }),
        error,
    )
}

pub async fn new_source(session: UiSession, Query(q): Query<KindQuery>) -> PageResult {
    session.caller().require(Role::Operator).map_err(fail)?;
    let kind = match q.kind.as_str() {
        "" => SourceKind::Fs,
        k => SourceKind::parse(k).ok_or_else(|| fail(ApiError::invalid(format!("no source kind {k:?}"))))?,
    };
    Ok(source_page(&session, kind, &[], None, None))
}

/// Register the source through the API; a refusal shows the form again
/// (its credentials empty: they are never sent back).
pub async fn save_source(
    State(state): State<AppState>,
    UiForm(session, form): UiForm<Vec<(String, String)>>,
) -> PageResult {
    let created = match source_spec(&form) {
        Ok(spec) => handlers::resources::create_source(State(state), session.caller(), Json(spec)).await.map(drop),
        Err(e) => Err(e),
    };
    match created {
        Ok(()) => Ok(see_other("/sources")),
        Err(e) if e.code == backstop_types::ErrorCode::Forbidden => Err(fail(e)),
        Err(e) => {
            let kind = SourceKind::parse(sent(&form, "kind")).unwrap_or(SourceKind::Fs);
            let kept: Vec<(String, String)> = form.into_iter().filter(|(k, _)| !k.starts_with("secret.")).collect();
            Ok(source_page(&session, kind, &kept, Some(&e), None))
        }
    }
}

pub async fn edit_source(State(state): State<AppState>, session: UiSession, Path(id): Path<String>) -> PageResult {
    session.caller().require(Role::Operator).map_err(fail)?;
    let Json(source) = handlers::resources::get_source(State(state), session.caller(), Path(id)).await.map_err(fail)?;
    Ok(source_page(&session, source.kind, &form_of(&source), None, Some(&source)))
}

/// Save a changed source through the API; credentials left empty stay as stored.
pub async fn update_source(
    State(state): State<AppState>,
    Path(id): Path<String>,
    UiForm(session, form): UiForm<Vec<(String, String)>>,
) -> PageResult {
    let Json(source) =
        handlers::resources::get_source(State(state.clone()), session.caller(), Path(id)).await.map_err(fail)?;
    let (fields, secrets) = config_and_secrets(source.kind, &form);
    // The form owns the kind's fields; what it has no field for (the
    // source's hooks) stays as it was.
    let mut config = source.config.as_object().cloned().unwrap_or_default();
    for field in backstop_source::packager(source.kind).fields() {
        config.remove(field.key);
    }
    config.extend(fields.as_object().cloned().unwrap_or_default());
    let update =
        SourceUpdate { host: given(sent(&form, "host")), config: Value::Object(config), secrets: secrets.into() };
    match handlers::resources::update_source(State(state), session.caller(), Path(source.id.clone()), Json(update))
        .await
    {
        Ok(_) => Ok(see_other("/sources")),
        Err(e) if e.code == backstop_types::ErrorCode::Forbidden => Err(fail(e)),
        Err(e) => {
            let mut kept: Vec<(String, String)> = form.into_iter().filter(|(k, _)| !k.starts_with("secret.")).collect();
            kept.push(("name".into(), source.name.clone()));
            Ok(source_page(&session, source.kind, &kept, Some(&e), Some(&source)))
        }
    }
}

pub async fn delete_source(
    State(state): State<AppState>,
    Path(id): Path<String>,
    UiAction(session): UiAction,
) -> PageResult {
    handlers::resources::delete_source(State(state), session.caller(), Path(id)).await.map_err(fail)?;
    Ok(see_other("/sources"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_form_becomes_the_kinds_config_and_secrets() {
        let spec = source_spec(&form(&[
            ("kind", "fs"),
            ("name", " data "),
            ("config.paths", "/srv/a\r\n\r\n /srv/b \n"),
            ("config.one_file_system", "on"),
            ("config.excludes", ""),
        ]))
        .unwrap();
        assert_eq!(spec.name, "data");
        assert_eq!(spec.config, serde_json::json!({"paths": ["/srv/a", "/srv/b"], "one_file_system": true}));
        assert_eq!(spec.secrets.expose(), &Value::Null);

        let spec = source_spec(&form(&[
            ("kind", "postgres"),
            ("config.url", "postgres://db/app"),
            ("secret.password", " with spaces "),
            ("config.password", "ignored: not a config key of the kind"),
        ]))
        .unwrap();
        assert_eq!(spec.config, serde_json::json!({"url": "postgres://db/app"}));
        assert_eq!(spec.secrets.expose(), &serde_json::json!({"password": " with spaces "}));
    }

    #[test]
    fn an_unknown_kind_is_an_error_on_its_field() {
        assert_eq!(source_spec(&form(&[("kind", "floppy")])).unwrap_err().field.as_deref(), Some("kind"));
    }
}
