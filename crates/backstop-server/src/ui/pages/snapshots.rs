//! Snapshots: the list, and one snapshot's files like a file manager —
//! browse its directories, download a file, restore what is selected
//! through a restore job (whose page then shows it running).

use backstop_types::params::RestoreParams;
use backstop_types::{SnapshotDir, SnapshotEntry};

use super::*;
use crate::handlers::snapshots::PathQuery;
use crate::ui::UiForm;

/// The snapshot list's filters as a browser's form sends them (empty: any).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsQuery {
    #[serde(default)]
    repository: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    cursor: String,
}

pub async fn snapshots(
    State(state): State<AppState>,
    session: UiSession,
    Query(q): Query<SnapshotsQuery>,
) -> PageResult {
    let api_q = SnapshotQuery {
        repository: given(&q.repository),
        plan: given(&q.plan),
        host: given(&q.host),
        cursor: given(&q.cursor),
        limit: Some(100),
    };
    let Json(page) = handlers::resources::list_snapshots(State(state.clone()), session.caller(), Query(api_q))
        .await
        .map_err(fail)?;
    let names = Names::load(&state, &session).await?;
    let body = html! {
        h1 { "Snapshots" }
        form.filters method="get" action="/snapshots" {
            label { "Repository " input type="text" name="repository" value=(q.repository); }
            label { "Plan " input type="text" name="plan" value=(q.plan); }
            label { "Host " input type="text" name="host" value=(q.host); }
            button type="submit" { "Filter" }
        }
        @if page.items.is_empty() {
            p.empty { "No snapshot matches." }
        } @else {
            table.snapshots {
                thead { tr { th { "Snapshot" } th { "Time" } th { "Host" } th { "Paths" } th { "Tags" } th { "Repository" } th { "Plan" } th { "Size" } th { "Added" } th { "Job" } } }
                tbody {
                    @for snap in &page.items {
                        tr data-snapshot=(snap.info.id) {
                            td title=(snap.info.id) {
                                a href={ "/snapshots/" (urlencode(&snap.info.id)) } { code { (snap.info.id.get(..8).unwrap_or(&snap.info.id)) } }
                            }
                            td { (when(&snap.info.time)) }
                            td { (snap.info.hostname) }
                            td { @for p in &snap.info.paths { (p) br; } }
                            td { (snap.info.tags.join(", ")) }
                            td { (names.of(Some(&snap.repository))) }
                            td { (names.of(snap.plan.as_deref())) }
                            td { (bytes(summary_u64(&snap.info, "bytes_total"))) }
                            td { (bytes(summary_u64(&snap.info, "bytes_added_stored"))) }
                            td { @if let Some(job) = &snap.job { a href=(job_url(job)) { "job" } } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page.next_cursor {
            @let fields = [("repository", &q.repository), ("plan", &q.plan), ("host", &q.host)];
            p { a.next href=(query_url("/snapshots", &fields, next)) { "More snapshots →" } }
        }
    };
    Ok(render("Snapshots", &session, body))
}

/// `/snapshots/{id}?path=…` of a directory, or `/snapshots/{id}/download?path=…` of a file;
/// inside a disk image with `&image=…`.
fn snapshot_url(id: &str, what: &str, path: &str, image: Option<&str>) -> String {
    let mut url = format!("/snapshots/{}{what}?path={}", urlencode(id), urlencode(path));
    if let Some(image) = image {
        url.push_str("&image=");
        url.push_str(&urlencode(image));
    }
    url
}

/// The packagers whose snapshots hold disk images, with files inside them.
fn holds_disks(source_kind: Option<&str>) -> bool {
    matches!(source_kind, Some("image" | "qemu"))
}

/// `path` joined with an entry's `name`.
fn child(path: &str, name: &str) -> String {
    if path.ends_with('/') { format!("{path}{name}") } else { format!("{path}/{name}") }
}

/// Links to each directory above `path`, the root first (inside a disk
/// image: the snapshot's root, the image, then the path inside it).
fn breadcrumbs(id: &str, path: &str, image: Option<&str>) -> Markup {
    let mut crumbs = Vec::new();
    let mut at = String::from("/");
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at = child(&at, part);
        crumbs.push((part, at.clone()));
    }
    html! {
        nav.breadcrumbs {
            @if let Some(image) = image {
                a href=(snapshot_url(id, "", "/", None)) { "/" } " "
                a.image href=(snapshot_url(id, "", "/", Some(image))) { (image.trim_start_matches('/')) } " ▸ "
            }
            a href=(snapshot_url(id, "", "/", image)) { "/" }
            @for (part, at) in &crumbs { " " a href=(snapshot_url(id, "", at, image)) { (part) } " /" }
        }
    }
}

fn entry_row(id: &str, dir: &SnapshotDir, e: &SnapshotEntry, select: bool) -> Markup {
    let path = child(&dir.path, &e.name);
    let image = dir.image.as_deref();
    // A disk of an image or VM snapshot: its files can be browsed.
    let disk = image.is_none() && e.kind == "file" && holds_disks(dir.source_kind.as_deref());
    html! {
        tr data-entry=(e.name) {
            td { @if select { input type="checkbox" name="select" value=(path) aria-label={ "select " (e.name) }; } }
            td.name {
                @match e.kind.as_str() {
                    "dir" => { a href=(snapshot_url(id, "", &path, image)) { (e.name) "/" } }
                    "file" => { a href=(snapshot_url(id, "/download", &path, image)) download { (e.name) } }
                    _ => { (e.name) @if let Some(t) = &e.target { " → " (t) } }
                }
                @if disk { " " a.inside href=(snapshot_url(id, "", "/", Some(&path))) { "files inside" } }
            }
            td { (e.kind) }
            td { @if e.kind == "file" { (bytes(e.size)) } }
            td { (format!("{:o}", e.mode)) }
            td { (when(&e.mtime)) }
        }
    }
}

pub async fn snapshot(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> PageResult {
    let Json(dir) = handlers::snapshots::tree(State(state.clone()), session.caller(), Path(id.clone()), Query(q))
        .await
        .map_err(fail)?;
    let Json(s) =
        handlers::snapshots::get(State(state.clone()), session.caller(), Path(id.clone())).await.map_err(fail)?;
    let names = Names::load(&state, &session).await?;
    let operator = session.may(Role::Operator);
    let body = html! {
        h1 { "Snapshot " code { (id.get(..8).unwrap_or(&id)) } }
        dl.facts {
            dt { "Time" } dd { (when(&s.info.time)) }
            dt { "Host" } dd { (s.info.hostname) }
            dt { "Paths" } dd { (s.info.paths.join(", ")) }
            dt { "Repository" } dd { (names.of(Some(&s.repository))) }
            dt { "Plan" } dd { (names.of(s.plan.as_deref())) }
            dt { "Size" } dd { (bytes(summary_u64(&s.info, "bytes_total"))) }
            @if let Some(kind) = &dir.source_kind { dt { "Made by" } dd { "the " (kind) " packager" } }
        }
        h2 { "Files" @if let Some(image) = &dir.image { " inside " code { (image.trim_start_matches('/')) } } }
        (breadcrumbs(&id, &dir.path, dir.image.as_deref()))
        form #restore method="post" action={ "/snapshots/" (urlencode(&id)) "/restore" } {
            input type="hidden" name="csrf" value=(session.session.csrf);
            input type="hidden" name="path" value=(dir.path);
            @if let Some(image) = &dir.image { input type="hidden" name="image" value=(image); }
            @if dir.entries.is_empty() {
                p.empty { "This directory is empty." }
            } @else {
                table.entries {
                    thead { tr { th { "" } th { "Name" } th { "Kind" } th { "Size" } th { "Mode" } th { "Modified" } } }
                    tbody { @for e in &dir.entries { (entry_row(&id, &dir, e, operator)) } }
                }
            }
            @if operator && (dir.source_kind.is_none() || dir.image.is_some()) {
                fieldset.restore {
                    legend { "Restore" }
                    p.help { "The selected files and directories — or, with none selected, all of " code { (dir.path) } " — are restored by a worker into a directory on its host, with their paths as backed up"
                        @if dir.image.is_some() { " (inside the disk: " code { "/p1/etc" } " becomes " code { "TARGET/p1/etc" } ")" } "." }
                    label { "Into directory " input #target type="text" name="target" required placeholder="/srv/restore"; }
                    @if dir.image.is_none() { label.inline { input type="checkbox" name="verify"; " read every file back and compare" } }
                    button.primary type="submit" name="restore" { "Restore" }
                }
            }
        }
        @if operator && dir.image.is_none() && dir.source_kind.as_deref() == Some("image") {
            @let disks: Vec<&SnapshotEntry> = dir.entries.iter().filter(|e| e.kind == "file").collect();
            @if !disks.is_empty() {
                form #restore-disk method="post" action={ "/snapshots/" (urlencode(&id)) "/restore-disk" } {
                    input type="hidden" name="csrf" value=(session.session.csrf);
                    fieldset.restore {
                        legend { "Restore a disk" }
                        p.help { "A worker writes the disk to a raw file (sparse), a block device, or a qcow2 file on its host." }
                        label { "Disk "
                            select name="entry" {
                                @for d in &disks { option value=(child(&dir.path, &d.name).trim_start_matches('/')) { (d.name) " (" (bytes(d.size)) ")" } }
                            }
                        }
                        label { "To " input #disk-path type="text" name="path" required placeholder="/srv/restore/vm1.raw"; }
                        label { "Format "
                            select name="format" { option value="raw" { "raw" } option value="qcow2" { "qcow2" } }
                        }
                        button.primary type="submit" name="restore-disk" { "Restore disk" }
                    }
                }
            }
        }
        @if operator && dir.image.is_none() && !holds_disks(dir.source_kind.as_deref()) && dir.source_kind.is_some() {
            p.help { "This snapshot was made by the " (dir.source_kind.as_deref().unwrap_or_default()) " packager: restore it into its system with " code { "backstop restore --to" } " or a restore job (" code { "POST /api/v1/jobs" } ")." }
        }
    };
    Ok(render(&format!("Snapshot {}", id.get(..8).unwrap_or(&id)), &session, body))
}

pub async fn download(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> PageResult {
    handlers::snapshots::file(State(state), session.caller(), Path(id), Query(q)).await.map_err(fail)
}

/// A pattern that matches exactly `path` (and what is below it): the
/// pattern language's special characters are bracketed.
fn literal(path: &str) -> String {
    path.chars().map(|c| if "*?[]{}\\".contains(c) { format!("[{c}]") } else { c.to_string() }).collect()
}

/// Restore the selected paths (or the directory shown) through a restore job.
pub async fn restore(
    State(state): State<AppState>,
    Path(id): Path<String>,
    UiForm(session, form): UiForm<Vec<(String, String)>>,
) -> PageResult {
    let value = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_string());
    let mut include: Vec<String> = form.iter().filter(|(k, _)| k == "select").map(|(_, v)| literal(v)).collect();
    // Nothing selected: the directory shown (at `/`, the whole snapshot).
    if include.is_empty()
        && let Some(dir) = value("path").filter(|p| p != "/")
    {
        include.push(literal(&dir));
    }
    let repository = repository_of(&state, &session, &id).await?;
    let params = RestoreParams {
        snapshot: Some(id),
        target: value("target").filter(|t| !t.is_empty()),
        include,
        verify: value("verify").is_some_and(|v| v == "on"),
        image: value("image").filter(|i| !i.is_empty()),
        ..RestoreParams::default()
    };
    submit_job(&state, &session, JobKind::Restore, repository, &params).await
}

/// A disk of an image snapshot as a restore form sends it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DiskForm {
    entry: String,
    path: String,
    format: String,
}

/// Restore one disk of an image snapshot to a path, through a restore job.
pub async fn restore_disk(
    State(state): State<AppState>,
    Path(id): Path<String>,
    UiForm(session, form): UiForm<DiskForm>,
) -> PageResult {
    let repository = repository_of(&state, &session, &id).await?;
    let mut config = serde_json::Map::new();
    config.insert("path".into(), form.path.trim().into());
    if let Some(entry) = given(&form.entry) {
        config.insert("entry".into(), entry.into());
    }
    if let Some(format) = given(&form.format) {
        config.insert("format".into(), format.into());
    }
    let params = RestoreParams {
        snapshot: Some(id),
        to: Some(backstop_types::params::RestoreTo { kind: backstop_types::SourceKind::Image, config }),
        ..RestoreParams::default()
    };
    submit_job(&state, &session, JobKind::Restore, repository, &params).await
}

/// The repository of snapshot `id`, as the session may see it.
async fn repository_of(state: &AppState, session: &UiSession, id: &str) -> Result<String, Response> {
    let Json(snapshot) =
        handlers::snapshots::get(State(state.clone()), session.caller(), Path(id.to_string())).await.map_err(fail)?;
    Ok(snapshot.repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selected_path_is_matched_as_it_is() {
        assert_eq!(literal("/srv/a b/x.txt"), "/srv/a b/x.txt");
        assert_eq!(literal("/srv/*[1]?.{a}"), "/srv/[*][[]1[]][?].[{]a[}]");
    }
}
