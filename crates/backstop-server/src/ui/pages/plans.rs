//! Plans: the list (Run now, enable or disable, delete) and the form that
//! creates or edits one, with the schedule's next fires shown before it
//! is saved. Saving goes through the API's `plans::put`, so the form
//! meets the API's own checks, each error shown next to its field.

use std::str::FromStr;

use backstop_types::{Chain, PlanSpec, Retention, ScheduleFires};

use backstop_types::Per;

use super::*;
use crate::handlers::plans::ScheduleQuery;
use crate::ui::UiForm;

/// `?page=N` of a list.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageNumber {
    page: usize,
}

pub async fn plans(State(state): State<AppState>, session: UiSession, Query(q): Query<PageNumber>) -> PageResult {
    let catalogue = Catalogue::load(&state, &session).await?;
    let last = newest(&state, &session, JobKind::Backup, Per::Plan).await?;
    let (all, names) = (page_of(&catalogue.plans, q.page), catalogue.names());
    let operator = session.may(Role::Operator);
    let csrf = &session.session.csrf;
    let body = html! {
        h1 { "Plans" }
        @if operator { p { a.button href="/plans/new" { "New plan" } } }
        @if all.is_empty() {
            p.empty { "No plan yet." }
        } @else {
            table.plans {
                thead { tr { th { "Plan" } th { "Source" } th { "Repository" } th { "Schedule" } th { "Next run" } th { "Last successful backup" } th { "" } } }
                tbody {
                    @for plan in all {
                        @let url = format!("/plans/{}", urlencode(&plan.id));
                        tr data-plan=(plan.name) {
                            td { (plan.name) @if !plan.enabled { " " span.state { "disabled" } } }
                            td { (names.of(Some(&plan.source))) }
                            td { (names.of(Some(&plan.repository))) }
                            td { (plan.schedule.as_deref().unwrap_or("on demand")) " (" (plan.timezone) ")" }
                            td { (plan.next_fire.as_ref().map(when).unwrap_or_else(|| "–".into())) }
                            td {
                                @if let Some(job) = last.get(&plan.id) {
                                    a href=(job_url(&job.id)) { (state_badge(job.state)) } " " (ago(&job.created))
                                } @else {
                                    span.error { "never succeeded" }
                                }
                            }
                            td.actions-cell {
                                @if operator {
                                    form.inline method="post" action={ (url) "/run" } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button type="submit" name="run" { "Run now" }
                                    }
                                    // A plan is put into the session's own tenant: another
                                    // tenant's (an admin of the system tenant sees them) is
                                    // run or deleted here, not edited.
                                    @if plan.tenant == session.session.token.tenant {
                                    " " a href={ (url) "/edit" } { "Edit" } " "
                                    form.inline method="post" action={ (url) "/enabled" } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        @if plan.enabled {
                                            input type="hidden" name="enabled" value="false";
                                            button type="submit" name="disable" { "Disable" }
                                        } @else {
                                            input type="hidden" name="enabled" value="true";
                                            button type="submit" name="enable" { "Enable" }
                                        }
                                    }
                                    }
                                    " "
                                    form.inline method="post" action={ (url) "/delete" } data-confirm={ "Delete plan " (plan.name) "? Its snapshots stay." } {
                                        input type="hidden" name="csrf" value=(csrf);
                                        button.danger type="submit" name="delete" { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (pager(q.page, catalogue.plans.len(), |page| format!("/plans?page={page}")))
        }
    };
    Ok(render("Plans", &session, body))
}

pub async fn run_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    UiAction(session): UiAction,
) -> PageResult {
    let (_, Json(job)) =
        handlers::plans::run(State(state), session.caller(), Path(id), HeaderMap::new()).await.map_err(fail)?;
    Ok(see_other(&job_url(&job.id)))
}

/// The plan form as a browser sends it: every value a string, empty when
/// not given (a checkbox sends `on` when it is ticked, nothing otherwise).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct PlanForm {
    name: String,
    source: String,
    repository: String,
    schedule: String,
    timezone: String,
    jitter_seconds: String,
    misfire: String,
    overlap: String,
    keep_last: String,
    keep_hourly: String,
    keep_daily: String,
    keep_weekly: String,
    keep_monthly: String,
    keep_yearly: String,
    verify_percent: String,
    chain_retention: String,
    tags: String,
    max_attempts: String,
    deadline_seconds: String,
    enabled: String,
    /// Set when an existing plan is edited: its name stays.
    editing: String,
}

/// A number field: empty is none; anything else must be a whole number.
fn number<T: FromStr>(field: &str, text: &str) -> Result<Option<T>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| ApiError::invalid(format!("{text:?} is not a whole number in range")).on(field))
}

fn ticked(value: &str) -> bool {
    matches!(value, "on" | "true")
}

impl PlanForm {
    /// The form of a new plan: enabled, times in UTC.
    fn new_plan() -> PlanForm {
        PlanForm { enabled: "on".into(), timezone: "UTC".into(), ..PlanForm::default() }
    }

    /// The form showing `plan` as it is (its source and repository by name).
    fn of(plan: &Plan, names: &Names) -> PlanForm {
        let n = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
        let r = &plan.retention;
        PlanForm {
            name: plan.name.clone(),
            source: names.of(Some(&plan.source)).to_string(),
            repository: names.of(Some(&plan.repository)).to_string(),
            schedule: plan.schedule.clone().unwrap_or_default(),
            timezone: plan.timezone.clone(),
            jitter_seconds: plan.jitter_seconds.to_string(),
            misfire: enum_text(&plan.misfire),
            overlap: enum_text(&plan.overlap),
            keep_last: n(r.keep_last),
            keep_hourly: n(r.keep_hourly),
            keep_daily: n(r.keep_daily),
            keep_weekly: n(r.keep_weekly),
            keep_monthly: n(r.keep_monthly),
            keep_yearly: n(r.keep_yearly),
            verify_percent: plan.chain.verify_percent.to_string(),
            chain_retention: if plan.chain.retention { "on".into() } else { String::new() },
            tags: plan.tags.join(", "),
            max_attempts: plan.max_attempts.to_string(),
            deadline_seconds: plan.deadline_seconds.map(|d| d.to_string()).unwrap_or_default(),
            enabled: if plan.enabled { "on".into() } else { String::new() },
            editing: plan.name.clone(),
        }
    }

    /// The plan the form describes; a value that is not even of the
    /// right shape is an error on its field (the API checks the rest).
    fn to_spec(&self) -> Result<PlanSpec, ApiError> {
        let keep = |field: &str, text: &str| number::<u32>(field, text).map_err(|e| e.on("retention"));
        let retention = Retention {
            keep_last: keep("keep_last", &self.keep_last)?,
            keep_hourly: keep("keep_hourly", &self.keep_hourly)?,
            keep_daily: keep("keep_daily", &self.keep_daily)?,
            keep_weekly: keep("keep_weekly", &self.keep_weekly)?,
            keep_monthly: keep("keep_monthly", &self.keep_monthly)?,
            keep_yearly: keep("keep_yearly", &self.keep_yearly)?,
        };
        Ok(PlanSpec {
            name: if self.editing.is_empty() { self.name.trim().to_string() } else { self.editing.clone() },
            source: self.source.clone(),
            repository: self.repository.clone(),
            schedule: given(&self.schedule),
            timezone: given(&self.timezone),
            jitter_seconds: number("jitter_seconds", &self.jitter_seconds)?.unwrap_or(0),
            misfire: parse_enum("misfire", &self.misfire)?,
            overlap: parse_enum("overlap", &self.overlap)?,
            retention,
            chain: Chain {
                verify_percent: number("chain.verify_percent", &self.verify_percent)?.unwrap_or(0),
                retention: ticked(&self.chain_retention),
            },
            tags: self.tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
            max_attempts: number("max_attempts", &self.max_attempts)?,
            deadline_seconds: number("deadline_seconds", &self.deadline_seconds)?,
            enabled: ticked(&self.enabled),
        })
    }
}

/// How a unit enum is written in the API (`run_once`).
fn enum_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// A unit enum from its API name; empty is its default.
fn parse_enum<T: serde::de::DeserializeOwned + Default>(field: &str, text: &str) -> Result<T, ApiError> {
    if text.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| ApiError::invalid(format!("{text:?} is not one of the choices")).on(field))
}

/// When `form`'s schedule fires next, if it is one that does.
async fn fires(session: &UiSession, form: &PlanForm) -> Vec<DateTime<Utc>> {
    let Some(schedule) = given(&form.schedule) else { return Vec::new() };
    let q = ScheduleQuery { schedule, timezone: given(&form.timezone), count: Some(5) };
    match handlers::plans::schedule(session.caller(), Query(q)).await {
        Ok(Json(answer)) => answer.fires,
        Err(_) => Vec::new(),
    }
}

/// The list of a schedule's next fires, which the page's script keeps up to date.
fn fires_list(fires: &[DateTime<Utc>]) -> Markup {
    html! {
        div #fires data-fires {
            span.label { "Next five runs (UTC): " }
            ol {
                @for t in fires { li { (when(t)) } }
            }
            @if fires.is_empty() { span.empty data-note { "none: the plan runs only when asked" } }
        }
    }
}

fn plan_form(
    session: &UiSession,
    catalogue: &Catalogue,
    form: &PlanForm,
    error: Option<&ApiError>,
    fires: &[DateTime<Utc>],
) -> Markup {
    let editing = !form.editing.is_empty();
    let err = |field: &str| field_error(error, field);
    let choice = |value: &str, current: &str, label: &str| {
        html! { option value=(value) selected[current == value] { (label) } }
    };
    html! {
        @if let Some(e) = error.filter(|e| e.field.is_none()) { p.error role="alert" { (e.message) } }
        form #plan.form method="post" action="/plans" {
            input type="hidden" name="csrf" value=(session.session.csrf);
            @if editing { input type="hidden" name="editing" value=(form.editing); }
            (labelled("name", "Name", err("name"), html! {
                input #name type="text" name="name" value=(form.name) required disabled[editing]
                    pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,127}";
            }, "letters, digits, . _ -; a plan of the same name is replaced"))
            (labelled("source", "Source", err("source"), html! {
                select #source name="source" required {
                    @for s in &catalogue.sources { (choice(&s.name, &form.source, &format!("{} ({})", s.name, s.kind.as_str()))) }
                }
            }, ""))
            (labelled("repository", "Repository", err("repository"), html! {
                select #repository name="repository" required {
                    @for r in &catalogue.repositories { (choice(&r.name, &form.repository, &r.name)) }
                }
            }, ""))
            (labelled("schedule", "Schedule", err("schedule"), html! {
                input #schedule type="text" name="schedule" value=(form.schedule) placeholder="0 2 * * *";
                (fires_list(fires))
            }, "cron: minute hour day month weekday (or @daily); empty: only when run by hand"))
            (labelled("timezone", "Time zone", err("timezone"), html! {
                input #timezone type="text" name="timezone" value=(form.timezone) placeholder="UTC";
            }, "an IANA name, e.g. Europe/Berlin"))
            (labelled("jitter_seconds", "Jitter (seconds)", err("jitter_seconds"), html! {
                input #jitter_seconds type="number" min="0" max="86400" name="jitter_seconds" value=(form.jitter_seconds);
            }, "start up to this long after each fire, spread evenly"))
            (labelled("misfire", "Missed runs", err("misfire"), html! {
                select #misfire name="misfire" {
                    (choice("skip", &form.misfire, "skip them"))
                    (choice("run_once", &form.misfire, "run once for all"))
                }
            }, "what to do with fires missed while the service was down"))
            (labelled("overlap", "Overlap", err("overlap"), html! {
                select #overlap name="overlap" {
                    (choice("skip", &form.overlap, "skip a run while the last one is queued or running"))
                    (choice("queue", &form.overlap, "queue it"))
                }
            }, ""))
            fieldset.field.invalid[err("retention").is_some()] data-field="retention" {
                legend { "Retention" }
                @for (key, label, value) in [
                    ("keep_last", "last", &form.keep_last), ("keep_hourly", "hourly", &form.keep_hourly),
                    ("keep_daily", "daily", &form.keep_daily), ("keep_weekly", "weekly", &form.keep_weekly),
                    ("keep_monthly", "monthly", &form.keep_monthly), ("keep_yearly", "yearly", &form.keep_yearly),
                ] {
                    label.inline { "keep " (label) " " input type="number" min="0" name=(key) value=(value); }
                }
                @if let Some(e) = err("retention") { p.field-error role="alert" { (e) } }
            }
            (labelled("verify_percent", "Verify after each backup (%)", err("chain.verify_percent"), html! {
                input #verify_percent type="number" min="0" max="100" name="verify_percent" value=(form.verify_percent);
            }, "read back this share of the new snapshot's data; 0: no verify step"))
            (labelled("chain_retention", "Retention after each backup", None, html! {
                input #chain_retention type="checkbox" name="chain_retention" checked[ticked(&form.chain_retention)];
            }, "forget by the retention above, then prune"))
            (labelled("tags", "Tags", err("tags"), html! {
                input #tags type="text" name="tags" value=(form.tags);
            }, "comma-separated, recorded with each snapshot"))
            (labelled("max_attempts", "Attempts", err("max_attempts"), html! {
                input #max_attempts type="number" min="1" name="max_attempts" value=(form.max_attempts);
            }, "how often a failing backup is tried (empty: the service's default)"))
            (labelled("deadline_seconds", "Deadline (seconds)", err("deadline_seconds"), html! {
                input #deadline_seconds type="number" min="1" name="deadline_seconds" value=(form.deadline_seconds);
            }, "a run still going after this long is stopped"))
            (labelled("enabled", "Enabled", err("enabled"), html! {
                input #enabled type="checkbox" name="enabled" checked[ticked(&form.enabled)];
            }, "a disabled plan runs only when asked"))
            div.actions { button.primary type="submit" name="save" { "Save plan" } a href="/plans" { "Cancel" } }
        }
    }
}

/// A form field: its label, its input, the error about it (if any) and a line of help.
pub(super) fn labelled(name: &str, label: &str, error: Option<&str>, input: Markup, help: &str) -> Markup {
    html! {
        div.field.invalid[error.is_some()] data-field=(name) {
            label for=(name) { (label) }
            div.input {
                (input)
                @if let Some(e) = error { p.field-error role="alert" { (e) } }
                @if !help.is_empty() { small.help { (help) } }
            }
        }
    }
}

/// The form page, with `status` (a refused form is answered with the API's status).
async fn form_page(state: &AppState, session: &UiSession, form: &PlanForm, error: Option<&ApiError>) -> PageResult {
    let catalogue = Catalogue::load(state, session).await?;
    let fires = fires(session, form).await;
    let title = if form.editing.is_empty() { "New plan".to_string() } else { format!("Plan {}", form.editing) };
    let body = html! {
        h1 { (title) }
        @if catalogue.sources.is_empty() || catalogue.repositories.is_empty() {
            p.error { "A plan needs a source and a repository: " a href="/sources/new" { "add a source" } " first." }
        }
        (plan_form(session, &catalogue, form, error, &fires))
    };
    Ok(with_status(render(&title, session, body), error))
}

pub async fn new_plan(State(state): State<AppState>, session: UiSession) -> PageResult {
    session.caller().require(Role::Operator).map_err(fail)?;
    form_page(&state, &session, &PlanForm::new_plan(), None).await
}

pub async fn edit_plan(State(state): State<AppState>, session: UiSession, Path(id): Path<String>) -> PageResult {
    session.caller().require(Role::Operator).map_err(fail)?;
    let Json(plan) = handlers::plans::get(State(state.clone()), session.caller(), Path(id)).await.map_err(fail)?;
    let names = Names::load(&state, &session).await?;
    form_page(&state, &session, &PlanForm::of(&plan, &names), None).await
}

/// Save the form through the API; a refusal shows the form again, the
/// error next to its field.
pub async fn save_plan(State(state): State<AppState>, UiForm(session, form): UiForm<PlanForm>) -> PageResult {
    let saved = match form.to_spec() {
        Ok(spec) => handlers::plans::put(State(state.clone()), session.caller(), Json(spec)).await.map(drop),
        Err(e) => Err(e),
    };
    match saved {
        Ok(()) => Ok(see_other("/plans")),
        Err(e) if e.code == backstop_types::ErrorCode::Forbidden => Err(fail(e)),
        Err(e) => form_page(&state, &session, &form, Some(&e)).await,
    }
}

#[derive(Deserialize)]
pub struct EnabledForm {
    enabled: bool,
}

/// Enable or disable a plan: the same plan, put again with `enabled` changed.
pub async fn set_enabled(
    State(state): State<AppState>,
    Path(id): Path<String>,
    UiForm(session, form): UiForm<EnabledForm>,
) -> PageResult {
    let Json(plan) = handlers::plans::get(State(state.clone()), session.caller(), Path(id)).await.map_err(fail)?;
    let spec = PlanSpec { enabled: form.enabled, ..PlanSpec::from(&plan) };
    handlers::plans::put(State(state), session.caller(), Json(spec)).await.map_err(fail)?;
    Ok(see_other("/plans"))
}

pub async fn delete_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    UiAction(session): UiAction,
) -> PageResult {
    handlers::plans::delete(State(state), session.caller(), Path(id)).await.map_err(fail)?;
    Ok(see_other("/plans"))
}

/// When a schedule fires next, for the form's script (the API's answer, errors too).
pub async fn live_schedule(session: UiSession, Query(q): Query<ScheduleQuery>) -> ApiResult<Json<ScheduleFires>> {
    handlers::plans::schedule(session.caller(), Query(q)).await
}

#[cfg(test)]
mod tests {
    use backstop_types::{Misfire, Overlap};

    use super::*;

    #[test]
    fn a_plan_reads_back_from_its_form() {
        let form = PlanForm {
            name: "nightly".into(),
            source: "data".into(),
            repository: "main".into(),
            schedule: "0 2 * * *".into(),
            keep_daily: "7".into(),
            verify_percent: "10".into(),
            chain_retention: "on".into(),
            tags: "a, b,,".into(),
            misfire: "run_once".into(),
            ..PlanForm::new_plan()
        };
        let spec = form.to_spec().unwrap();
        assert_eq!(spec.schedule.as_deref(), Some("0 2 * * *"));
        assert_eq!(spec.retention.keep_daily, Some(7));
        assert_eq!(spec.chain, Chain { verify_percent: 10, retention: true });
        assert_eq!(spec.tags, ["a", "b"]);
        assert_eq!(spec.misfire, Misfire::RunOnce);
        assert_eq!(spec.overlap, Overlap::Skip);
        assert!(spec.enabled);
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_an_error_on_its_field() {
        let bad = |form: PlanForm| form.to_spec().unwrap_err().field;
        assert_eq!(
            bad(PlanForm { jitter_seconds: "soon".into(), ..PlanForm::new_plan() }).as_deref(),
            Some("jitter_seconds")
        );
        assert_eq!(bad(PlanForm { keep_last: "-1".into(), ..PlanForm::new_plan() }).as_deref(), Some("retention"));
        assert_eq!(bad(PlanForm { overlap: "sometimes".into(), ..PlanForm::new_plan() }).as_deref(), Some("overlap"));
    }
}
