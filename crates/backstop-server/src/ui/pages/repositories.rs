//! Repositories: what each holds and how it grew (from the catalog's
//! snapshots), its last check and prune, the buttons that start a check,
//! a verify or a prune, and the form that registers one (a directory or
//! S3; its password and secret keys write-only).

use std::collections::HashMap;

use backstop_types::params::{CheckParams, PruneParams, VerifyParams};
use backstop_types::{RepositoryOption, RepositorySpec, RepositoryUsage, UsagePoint};

use super::plans::labelled;
use backstop_types::Per;

use super::*;
use crate::ui::UiForm;

/// What the API says each repository's snapshots hold, by repository id.
async fn usage(state: &AppState, session: &UiSession) -> Result<HashMap<String, RepositoryUsage>, Response> {
    let Json(all) =
        handlers::resources::repository_usage(State(state.clone()), session.caller()).await.map_err(fail)?;
    Ok(all.into_iter().map(|u| (u.repository.clone(), u)).collect())
}

/// A line of the stored bytes over time, as SVG (no script, no style: the
/// page's policy allows neither inline).
pub(super) fn growth_chart(growth: &[UsagePoint]) -> Markup {
    const W: f64 = 240.0;
    const H: f64 = 48.0;
    if growth.len() < 2 {
        return html! { span.empty { "–" } };
    }
    let (t0, t1) = (growth[0].time.timestamp() as f64, growth[growth.len() - 1].time.timestamp() as f64);
    let top = growth.iter().map(|p| p.stored_bytes).max().unwrap_or(1).max(1) as f64;
    let span = (t1 - t0).max(1.0);
    let points: Vec<String> = growth
        .iter()
        .map(|p| {
            let x = (p.time.timestamp() as f64 - t0) / span * W;
            let y = H - (p.stored_bytes as f64 / top) * (H - 2.0) - 1.0;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    html! {
        svg.growth width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-label={ "stored data grew to " (bytes(top as u64)) } {
            title { "Stored by its backups over time, up to " (bytes(top as u64)) }
            polyline points=(points.join(" ")) fill="none" stroke="#2458c6" stroke-width="2" {}
        }
    }
}

pub async fn repositories(State(state): State<AppState>, session: UiSession) -> PageResult {
    repositories_page(&state, &session, &[], None).await
}

async fn repositories_page(
    state: &AppState,
    session: &UiSession,
    form: &[(String, String)],
    error: Option<&ApiError>,
) -> PageResult {
    let catalogue = Catalogue::load(state, session).await?;
    let usage = usage(state, session).await?;
    let checks = newest(state, session, JobKind::Check, Per::Repository).await?;
    let prunes = newest(state, session, JobKind::Prune, Per::Repository).await?;
    let operator = session.may(Role::Operator);
    let csrf = &session.session.csrf;
    let body = html! {
        h1 { "Repositories" }
        @if catalogue.repositories.is_empty() { p.empty { "No repository yet." } }
        @for repo in &catalogue.repositories {
            @let u = usage.get(&repo.id);
            @let (count, stored, logical) = u.map(|u| (u.snapshots, u.stored_bytes, u.logical_bytes)).unwrap_or_default();
            section.repository data-repository=(repo.name) {
                h2 { (repo.name) }
                dl.facts {
                    dt { "Location" } dd { code { (repo.location) } " (region " (repo.region) ")" }
                    dt { "Snapshots" } dd { (count) }
                    dt { "Stored by the backups of its snapshots" } dd data-field="stored" { (bytes(stored)) " (before prunes)" }
                    dt { "Held by its snapshots" } dd { (bytes(logical)) }
                    dt { "Saved by dedup and compression" } dd data-field="savings" { (savings(stored, logical)) }
                    dt { "Growth" } dd { (growth_chart(u.map(|u| u.growth.as_slice()).unwrap_or_default())) }
                    dt { "On its storage" } dd data-field="size" {
                        @match checks.get(&repo.id).and_then(stored_size) {
                            Some(size) => { (bytes(size)) " of packs, at its last check" }
                            None => { "– (known after a check)" }
                        }
                    }
                    dt { "Last check" } dd { (last(checks.get(&repo.id))) }
                    dt { "Last prune" } dd { (last(prunes.get(&repo.id))) }
                }
                @if operator {
                    div.actions {
                        @for (kind, label) in [("check", "Check"), ("verify", "Verify 5 % of the data"), ("prune", "Prune")] {
                            form.inline method="post" action={ "/repositories/" (urlencode(&repo.id)) "/" (kind) } {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" name=(kind) { (label) }
                            }
                        }
                    }
                }
            }
        }
        @if operator { (register_form(session, form, error)) }
    };
    Ok(with_status(render("Repositories", session, body), error))
}

/// The share of what snapshots hold that their backups did not store.
pub(super) fn savings(stored: u64, logical: u64) -> String {
    if logical == 0 {
        "–".into()
    } else {
        format!("{:.0} %", 100.0 * (1.0 - stored as f64 / logical as f64).max(0.0))
    }
}

/// What a repository's packs took on its storage, as its check found them.
pub(super) fn stored_size(check: &Job) -> Option<u64> {
    check.result.as_ref()?.get("pack_bytes")?.as_u64()
}

fn last(job: Option<&Job>) -> Markup {
    html! {
        @match job {
            Some(j) => { a href=(job_url(&j.id)) { (j.finished.as_ref().map(ago).unwrap_or_default()) } }
            None => { "never" }
        }
    }
}

/// Options whose values are credentials: password inputs, never shown again.
fn secret_option(o: RepositoryOption) -> bool {
    matches!(o, RepositoryOption::SecretAccessKey | RepositoryOption::SessionToken)
}

fn register_form(session: &UiSession, form: &[(String, String)], error: Option<&ApiError>) -> Markup {
    let err = |f: &str| field_error(error, f);
    html! {
        h2 { "Register a repository" }
        @if let Some(e) = error.filter(|e| e.field.is_none()) { p.error role="alert" { (e.message) } }
        form #repository.form method="post" action="/repositories" {
            input type="hidden" name="csrf" value=(session.session.csrf);
            (labelled("name", "Name", err("name"), html! {
                input #name type="text" name="name" value=(sent(form, "name")) required pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,127}";
            }, ""))
            (labelled("location", "Location", err("location"), html! {
                input #location type="text" name="location" value=(sent(form, "location")) required placeholder="/srv/backup or s3://bucket/prefix";
            }, "a directory on the workers' hosts, or an S3 bucket and prefix"))
            (labelled("password", "Password", err("password"), html! {
                input #password type="password" name="password" required autocomplete="new-password";
            }, "the repository's password: stored sealed, never shown"))
            (labelled("region", "Region", err("region"), html! {
                input #region type="text" name="region" value=(sent(form, "region")) placeholder="default";
            }, "workers of this region back up into it"))
            (labelled("init", "Create it", None, html! {
                input #init type="checkbox" name="init" checked[form.is_empty() || sent(form, "init") == "on"];
            }, "make a new repository there if the location is empty"))
            fieldset.field {
                legend { "S3 (for s3:// locations)" }
                @for o in RepositoryOption::ALL {
                    @let name = format!("option.{}", o.as_str());
                    label.stacked {
                        (o.as_str()) " "
                        @if secret_option(o) {
                            input type="password" name=(name) autocomplete="new-password";
                        } @else if o == RepositoryOption::AllowHttp {
                            input type="checkbox" name=(name) checked[sent(form, &name) == "on"];
                        } @else {
                            input type="text" name=(name) value=(sent(form, &name));
                        }
                    }
                }
            }
            div.actions { button.primary type="submit" name="register" { "Register" } }
        }
    }
}

/// The repository the form describes.
fn repository_spec(form: &[(String, String)]) -> RepositorySpec {
    let mut options = Vec::new();
    for o in RepositoryOption::ALL {
        let value = sent(form, &format!("option.{}", o.as_str()));
        let value = match o {
            RepositoryOption::AllowHttp if value == "on" => "true",
            RepositoryOption::AllowHttp => "",
            _ if secret_option(o) => value,
            _ => value.trim(),
        };
        if !value.is_empty() {
            options.push((o.as_str().to_string(), value.to_string().into()));
        }
    }
    RepositorySpec {
        name: sent(form, "name").trim().to_string(),
        location: sent(form, "location").trim().to_string(),
        region: given(sent(form, "region")).unwrap_or_else(|| "default".into()),
        password: sent(form, "password").to_string().into(),
        options,
        max_concurrent: None,
        init: sent(form, "init") == "on",
    }
}

pub async fn register_repository(
    State(state): State<AppState>,
    UiForm(session, form): UiForm<Vec<(String, String)>>,
) -> PageResult {
    let spec = repository_spec(&form);
    match handlers::resources::create_repository(State(state.clone()), session.caller(), Json(spec)).await {
        Ok(_) => Ok(see_other("/repositories")),
        Err(e) if e.code == backstop_types::ErrorCode::Forbidden => Err(fail(e)),
        Err(e) => {
            // What was typed comes back, but no password or secret key.
            let kept: Vec<(String, String)> = form
                .into_iter()
                .filter(|(k, _)| {
                    k != "password"
                        && !RepositoryOption::ALL
                            .iter()
                            .any(|o| secret_option(*o) && *k == format!("option.{}", o.as_str()))
                })
                .collect();
            repositories_page(&state, &session, &kept, Some(&e)).await
        }
    }
}

/// Start a check, a verify (5 % of the data) or a prune of a repository.
pub async fn maintain(
    State(state): State<AppState>,
    Path((id, kind)): Path<(String, String)>,
    UiAction(session): UiAction,
) -> PageResult {
    match kind.as_str() {
        "check" => submit_job(&state, &session, JobKind::Check, id, &CheckParams::default()).await,
        "verify" => {
            let params = VerifyParams { percent: Some(5), ..Default::default() };
            submit_job(&state, &session, JobKind::Verify, id, &params).await
        }
        "prune" => submit_job(&state, &session, JobKind::Prune, id, &PruneParams::default()).await,
        other => Err(fail(ApiError::not_found(format!("a {other:?} job")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_into_the_spec_untrimmed_and_empty_options_stay_out() {
        let form: Vec<(String, String)> = [
            ("name", "offsite"),
            ("location", " s3://bucket/backstop "),
            ("password", " pass word "),
            ("option.endpoint", " http://127.0.0.1:9000 "),
            ("option.secret_access_key", " key "),
            ("option.allow_http", "on"),
            ("option.region", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let spec = repository_spec(&form);
        assert_eq!(spec.location, "s3://bucket/backstop");
        assert_eq!(spec.password.expose(), " pass word ");
        let options: Vec<(&str, &str)> = spec.options.iter().map(|(k, v)| (k.as_str(), v.expose().as_str())).collect();
        assert_eq!(
            options,
            [("endpoint", "http://127.0.0.1:9000"), ("secret_access_key", " key "), ("allow_http", "true")]
        );
        assert_eq!(spec.region, "default");
        assert!(!spec.init);
    }

    #[test]
    fn the_growth_chart_draws_a_line_from_the_first_snapshot_to_the_last() {
        let p = |s: i64, stored_bytes: u64| UsagePoint { time: DateTime::from_timestamp(s, 0).unwrap(), stored_bytes };
        let svg = growth_chart(&[p(0, 10), p(50, 20), p(100, 40)]).into_string();
        assert!(svg.contains("points=\"0.0,35.5 120.0,24.0 240.0,1.0\""), "{svg}");
        assert!(growth_chart(&[p(0, 10)]).into_string().contains("–"));
        assert_eq!(savings(25, 100), "75 %");
        assert_eq!(savings(0, 0), "–");
    }
}
