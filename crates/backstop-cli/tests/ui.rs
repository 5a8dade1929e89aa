//! The web UI in a real headless Chromium (through ChromeDriver) against a
//! real `backstop serve` and `backstop worker`: logging in, watching a
//! backup run live, a failure on the dashboard, cancelling from a job's
//! page, and the boundaries — tenants, roles, CSRF, escaping. Screenshots
//! of the pages go to `target/ui-screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use backstop_testkit::browser::Browser;
use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots")
}

/// A service with no in-process workers (the tests start theirs, slowed
/// down so that a backup runs long enough to watch), a repository and an
/// fs source of `mib` MiB with a plan of one attempt.
struct Site {
    dir: tempfile::TempDir,
    serve: Serve,
    admin: String,
    worker_token: String,
}

impl Site {
    fn start(mib: usize) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let args: Vec<String> = ["--data-dir", data.to_str().unwrap(), "--workers", "0", "--backoff-seconds", "1"]
            .map(String::from)
            .to_vec();
        let (serve, admin) = Serve::start(free_port(), &args);
        let admin = admin.expect("the first start prints an admin token");
        let server = serve.url();
        let repo = dir.path().join("repo");
        Cli::at(repo.to_str().unwrap()).ok(&["init", "--pack-size-kib", "1024"]);
        client(&server, &admin, &["repos", "add", "main", "--location", repo.to_str().unwrap()]);
        let src = dir.path().join("src");
        for i in 0..mib {
            let f = src.join(format!("d{}/f{i:03}.bin", i % 3));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, noise(1 << 20, i as u64)).unwrap();
        }
        client(&server, &admin, &["sources", "add", "data", "--path", src.to_str().unwrap()]);
        let site = Site { dir, serve, admin, worker_token: String::new() };
        site.plan("nightly", "data");
        let token = client(&server, &site.admin, &["tokens", "create", "workers", "--role", "worker"]);
        Site { worker_token: token["secret"].as_str().unwrap().to_string(), ..site }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.serve.url())
    }

    fn plan(&self, name: &str, source: &str) {
        let plan = self.dir.path().join(format!("{name}.json"));
        let spec = json!({"name": name, "source": source, "repository": "main", "max_attempts": 1});
        std::fs::write(&plan, spec.to_string()).unwrap();
        client(&self.serve.url(), &self.admin, &["plans", "put", plan.to_str().unwrap()]);
    }

    fn run(&self, plan: &str) -> String {
        client(&self.serve.url(), &self.admin, &["plans", "run", plan])["id"].as_str().unwrap().to_string()
    }

    fn job(&self, id: &str) -> Value {
        job(&self.serve.url(), &self.admin, id)
    }

    /// A worker whose uploads are held to `kib_per_s`.
    fn worker(&self, kib_per_s: Option<u32>) -> Worker {
        let mut cmd = bin();
        if let Some(limit) = kib_per_s {
            cmd.args(["--limit-upload", &limit.to_string()]);
        }
        let child = cmd
            .args(["worker", "--server", &self.serve.url(), "--region", "default", "--concurrency", "1"])
            .env("BACKSTOP_TOKEN", &self.worker_token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Worker(child)
    }
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn login(browser: &Browser, site: &Site, token: &str) {
    browser.goto(&site.url("/"));
    browser.wait_until("the login form", WAIT, |b| b.url().ends_with("/login"));
    browser.fill("#token", token);
    browser.click("form.login button[type=submit]");
    browser.wait_until("the dashboard", WAIT, |b| b.try_find("#running").is_some());
}

/// A mark in the page's JavaScript state: gone if the page reloads.
fn mark(browser: &Browser) {
    browser.execute("window.__kept = true;", json!([]));
}

fn marked(browser: &Browser) -> bool {
    browser.execute("return window.__kept === true;", json!([])) == json!(true)
}

fn progress_value(browser: &Browser, css: &str) -> f64 {
    browser.try_find(css).map(|e| browser.property(&e, "value").as_f64().unwrap_or(0.0)).unwrap_or(0.0)
}

#[test]
fn an_operator_logs_in_and_watches_a_backup_run_live_to_its_end() {
    let site = Site::start(32);
    let browser = Browser::start();
    login(&browser, &site, &site.admin);
    browser.screenshot(&screenshots().join("login-dashboard-empty.png"));
    assert!(browser.text("#running").contains("Nothing is running"));
    let unprotected = browser.text("#protection");
    assert!(unprotected.contains("(1 of 1)") && unprotected.contains("data"), "{unprotected}");
    assert!(!browser.source().contains(&site.admin), "the token is not in the page");
    assert!(!browser.url().contains("bst_"), "nor in the address");

    // The plan has never run; "Run now" makes its job and shows its page.
    browser.goto(&site.url("/plans"));
    assert!(browser.text("tr[data-plan=nightly]").contains("never"));
    browser.click("tr[data-plan=nightly] button[name=run]");
    browser.wait_until("the new job's page", WAIT, |b| b.try_find("#job[data-job]").is_some());
    let id = browser.attribute(&browser.find("#job"), "data-job").expect("the job's id");
    assert_eq!(site.job(&id)["kind"], "backup");

    // The job's page, open while the job waits for a worker: its state, bar
    // and log follow the event stream once one takes it. 32 MiB at 1 MiB/s
    // is about thirty seconds of backup to watch; the source is read ahead
    // of the uploads by a few MiB only, so the bar moves for most of them.
    mark(&browser);
    let bar = "#job [data-progress] progress";
    let lines = browser.find_all("ol.events li").len();
    let _worker = site.worker(Some(1024));
    browser.wait_until("the job page's bar to move", WAIT, |b| progress_value(b, bar) > 0.0);
    assert_eq!(browser.text("#job [data-field=state]"), "running");
    let first = progress_value(&browser, bar);
    browser.wait_until("the job page's bar to move on", WAIT, |b| progress_value(b, bar) > first);
    assert!(marked(&browser), "live, not reloaded");
    let facts = browser.text("#job dl.facts");
    assert!(facts.contains("nightly") && facts.contains("data") && facts.contains("main"), "names, not ids: {facts}");
    let moved_bytes = browser.text("#job [data-field=bytes]");
    assert!(moved_bytes.contains(" of 32.0 MiB"), "{moved_bytes}");
    browser.screenshot(&screenshots().join("job-running.png"));

    // The dashboard shows it running, and its bar moves without reloading.
    browser.goto(&site.url("/"));
    let row = format!("#running tr[data-job='{id}'] progress");
    browser.wait_until("the job running on the dashboard", WAIT, |b| progress_value(b, &row) > 0.0);
    mark(&browser);
    let before = progress_value(&browser, &row);
    browser.wait_until("the dashboard's bar to move", WAIT, |b| progress_value(b, &row) > before);
    assert!(marked(&browser), "the bar moved without reloading the page");
    browser.screenshot(&screenshots().join("dashboard-running.png"));
    browser.click(&format!("#running tr[data-job='{id}'] a"));
    browser.wait_until("the job page", WAIT, |b| b.try_find("#job").is_some());

    // At its end the page shows it succeeded, with its log and result.
    browser.wait_until("the job to succeed", WAIT, |b| b.try_find("#job[data-state=succeeded]").is_some());
    let log = browser.text("ol.events");
    assert!(browser.find_all("ol.events li").len() > lines, "the log grew: {log}");
    assert!(log.contains("succeeded"), "{log}");
    let result = browser.text("pre.result");
    assert!(result.contains("snapshot_id"), "{result}");
    assert_eq!(site.job(&id)["state"], "succeeded");
    browser.screenshot(&screenshots().join("job-succeeded.png"));

    // The plan's last backup is the one that ran, and its source is protected now.
    browser.goto(&site.url("/plans"));
    assert!(browser.text("tr[data-plan=nightly]").contains("succeeded"));
    browser.screenshot(&screenshots().join("plans.png"));
    browser.goto(&site.url("/sources"));
    assert!(browser.try_find("tr[data-source=data]").is_some());
    assert!(browser.try_find("tr.unprotected[data-source=data]").is_none(), "backed up: not flagged");
    assert!(browser.text("tr[data-source=data]").contains("ago"));
    browser.screenshot(&screenshots().join("sources.png"));
    browser.goto(&site.url("/"));
    assert!(browser.text("#protection").contains("(0 of 1)"));

    // Its snapshot is listed, and the filters narrow the list.
    let snapshot = site.job(&id)["result"]["snapshot_id"].as_str().unwrap().to_string();
    browser.goto(&site.url("/snapshots"));
    let row = browser.text(&format!("tr[data-snapshot='{snapshot}']"));
    assert!(row.contains("nightly") && row.contains("main") && row.contains("32.0 MiB"), "{row}");
    browser.screenshot(&screenshots().join("snapshots.png"));
    browser.goto(&site.url("/snapshots?plan=nightly&host=elsewhere"));
    assert!(browser.text("main").contains("No snapshot matches"));

    // Browsed like a file manager: from the list into its source directory.
    browser.goto(&site.url("/snapshots"));
    browser.click(&format!("tr[data-snapshot='{snapshot}'] a"));
    browser.wait_until("the snapshot's page", WAIT, |b| b.try_find("table.entries").is_some());
    let src = site.dir.path().join("src");
    browser.goto(&site.url(&format!("/snapshots/{snapshot}?path={}", src.display())));
    assert_eq!(browser.find_all("tr[data-entry]").len(), 3, "d0, d1, d2");
    browser.click("tr[data-entry=d1] a");
    browser.wait_until("the directory d1", WAIT, |b| b.try_find("tr[data-entry='f001.bin']").is_some());
    browser.screenshot(&screenshots().join("snapshot-browse.png"));
    // A file downloads with the session, byte for byte.
    let link = browser.attribute(&browser.find("tr[data-entry='f001.bin'] a"), "href").unwrap();
    let fetched = browser.fetch(&link);
    assert_eq!(fetched.status, 200);
    assert!(fetched.disposition.as_deref().is_some_and(|d| d.starts_with("attachment")), "{fetched:?}");
    assert_eq!(
        fetched.body,
        std::fs::read(src.join("d1/f001.bin")).unwrap(),
        "the downloaded file is the backed-up one"
    );

    // A selected directory is restored by a restore job, watched on its page.
    browser.goto(&site.url(&format!("/snapshots/{snapshot}?path={}", src.display())));
    browser.click("tr[data-entry=d1] input[type=checkbox]");
    let target = site.dir.path().join("restored");
    browser.fill("#target", target.to_str().unwrap());
    browser.click("form#restore button[name=restore]");
    browser.wait_until("the restore job's page", WAIT, |b| b.try_find("#job[data-job]").is_some());
    let restore = browser.attribute(&browser.find("#job"), "data-job").unwrap();
    assert_eq!(site.job(&restore)["kind"], "restore");
    browser.wait_until("the restore to succeed", WAIT, |b| b.try_find("#job[data-state=succeeded]").is_some());
    let back = target.join(src.strip_prefix("/").unwrap());
    for i in (1..32).step_by(3) {
        let name = format!("d1/f{i:03}.bin");
        assert_eq!(std::fs::read(back.join(&name)).unwrap(), std::fs::read(src.join(&name)).unwrap(), "{name}");
    }
    assert!(!back.join("d0").exists() && !back.join("d2").exists(), "only the selected directory");

    // The jobs list finds it by its filters.
    browser.goto(&site.url("/jobs?state=succeeded&kind=backup"));
    assert!(browser.try_find(&format!("tr[data-job='{id}']")).is_some());
    browser.goto(&site.url("/jobs?state=failed"));
    assert!(browser.try_find(&format!("tr[data-job='{id}']")).is_none());
    browser.screenshot(&screenshots().join("jobs.png"));

    // Logging out ends the session: the pages want a login again.
    browser.goto(&site.url("/"));
    browser.click("header form button[type=submit]");
    browser.wait_until("the login form", WAIT, |b| b.url().ends_with("/login"));
    browser.goto(&site.url("/jobs"));
    assert!(browser.url().ends_with("/login"));
}

#[test]
fn a_failing_job_shows_its_error_on_the_dashboard_and_a_running_one_is_cancelled_from_its_page() {
    let site = Site::start(24);
    // A source whose path is gone, named with markup in its path: the error shows it as text.
    let gone = site.dir.path().join("gone/<img src=x onerror=alert(1)>");
    client(&site.serve.url(), &site.admin, &["sources", "add", "lost", "--path", gone.to_str().unwrap()]);
    site.plan("broken", "lost");
    let browser = Browser::start();
    login(&browser, &site, &site.admin);

    let worker = site.worker(Some(2048));
    let failed = site.run("broken");
    wait_for(&site.serve.url(), &site.admin, &failed, "failed", |j| j["state"] == "failed" || j["state"] == "dead");
    browser.goto(&site.url("/"));
    let row = browser.text(&format!("#failures tr[data-job='{failed}']"));
    assert!(row.contains("<img src=x onerror=alert(1)>"), "the error, as text: {row}");
    assert!(browser.find_all("main img").is_empty(), "no markup from the error became an element");
    assert!(browser.try_find("#protection tr.unprotected[data-source=lost]").is_some(), "a failed source stands out");
    browser.screenshot(&screenshots().join("dashboard-failure.png"));

    let id = site.run("nightly");
    wait_for(&site.serve.url(), &site.admin, &id, "running", |j| j["state"] == "running");
    browser.goto(&site.url(&format!("/jobs/{id}")));
    browser.click("button[name=cancel]");
    browser.wait_until("the job to be cancelled", WAIT, |b| b.try_find("#job[data-state=cancelled]").is_some());
    assert_eq!(site.job(&id)["state"], "cancelled");
    drop(worker);
}

#[test]
fn tenants_roles_and_csrf_hold_in_the_browser() {
    let site = Site::start(1);
    let server = site.serve.url();
    let id = site.run("nightly"); // stays queued: no worker
    let viewer = client(&server, &site.admin, &["tokens", "create", "watcher", "--role", "viewer"]);
    client(&server, &site.admin, &["tenants", "create", "tb"]);
    let other = client(&server, &site.admin, &["tokens", "create", "b-admin", "--role", "admin", "--tenant", "tb"]);

    // Tenant B's session sees nothing of the system tenant's.
    let browser = Browser::start();
    login(&browser, &site, other["secret"].as_str().unwrap());
    for path in ["/", "/jobs", "/jobs?state=queued"] {
        browser.goto(&site.url(path));
        assert!(!browser.source().contains(&id), "{path} shows another tenant's job");
    }
    browser.goto(&site.url(&format!("/jobs/{id}")));
    assert!(browser.try_find("#job").is_none(), "another tenant's job page");
    assert!(browser.text("main").contains("not found"));
    browser.delete_cookies();

    // A viewer sees the job but no control, and a forged POST (with its own session's CSRF token) is refused.
    login(&browser, &site, viewer["secret"].as_str().unwrap());
    browser.goto(&site.url(&format!("/jobs/{id}")));
    assert!(browser.try_find("#job").is_some());
    assert!(browser.try_find("button[name=cancel]").is_none() && browser.try_find("form[action$='/cancel']").is_none());
    let status = browser.execute_async(
        "const done = arguments[arguments.length - 1];
         const csrf = document.querySelector('input[name=csrf]').value;
         fetch(arguments[0], {method: 'POST', body: new URLSearchParams({csrf})}).then(r => done(r.status));",
        json!([format!("/jobs/{id}/cancel")]),
    );
    assert_eq!(status, json!(403));
    browser.delete_cookies();

    // An admin's session: a post without the CSRF token is refused, and so is a form another site posts.
    login(&browser, &site, &site.admin);
    browser.goto(&site.url(&format!("/jobs/{id}")));
    let status = browser.execute_async(
        "const done = arguments[arguments.length - 1];
         fetch(arguments[0], {method: 'POST', body: new URLSearchParams({})}).then(r => done(r.status));",
        json!([format!("/jobs/{id}/cancel")]),
    );
    assert_eq!(status, json!(403));
    let target = site.url(&format!("/jobs/{id}/cancel"));
    let evil = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n\
         <form id=f method=post action=\"{target}\"><input name=csrf value=x></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    let (evil_port, _) = backstop_testkit::canned_http(evil);
    browser.goto(&format!("http://localhost:{evil_port}/"));
    browser.wait_until("the cross-site post's answer", WAIT, |b| b.url().starts_with(&server));
    let job = site.job(&id);
    assert_eq!(job["state"], "queued", "the cross-site form changed nothing");
    assert_eq!(job["cancel_requested"], false);
}

#[test]
fn an_operator_registers_a_source_and_a_plan_through_the_forms() {
    let site = Site::start(1);
    let docs = site.dir.path().join("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    std::fs::write(docs.join("sub/readme.txt"), b"read me").unwrap();
    let browser = Browser::start();
    login(&browser, &site, &site.admin);

    // A source through its kind's form.
    browser.goto(&site.url("/sources"));
    browser.click("a[href='/sources/new']");
    browser.wait_until("the source form", WAIT, |b| b.try_find("form#source").is_some());
    browser.fill("#name", "docs");
    browser.fill("textarea[name='config.paths']", docs.to_str().unwrap());
    browser.click("form#source button[type=submit]");
    browser.wait_until("the source list", WAIT, |b| b.url().ends_with("/sources"));
    assert!(browser.try_find("tr[data-source=docs]").is_some(), "{}", browser.text("main"));

    // A plan: the schedule's next runs show while it is typed, an error too.
    browser.goto(&site.url("/plans/new"));
    browser.fill("#name", "weekly");
    browser.click("#source option[value=docs]");
    browser.click("#repository option[value=main]");
    browser.fill("#schedule", "30 4 * * 1");
    browser.wait_until("the schedule's next runs", WAIT, |b| b.find_all("#fires li").len() == 5);
    assert!(browser.text("#fires").contains("04:30:00Z") || browser.text("#fires").contains(":30:00Z"));
    browser.fill("#schedule", "30 4 * * 9");
    browser.wait_until("the schedule's error", WAIT, |b| {
        b.try_find("#fires .error").is_some_and(|e| b.text_of(&e).contains("day-of-week"))
    });
    assert!(browser.find_all("#fires li").is_empty());
    browser.screenshot(&screenshots().join("plan-form.png"));
    // Sent as it is, the API refuses it and the form says so next to the schedule.
    browser.click("form#plan button[type=submit]");
    browser.wait_until("the refused form", WAIT, |b| b.try_find(".field.invalid[data-field=schedule]").is_some());
    assert_eq!(browser.property(&browser.find("#name"), "value"), json!("weekly"), "what was typed is kept");
    browser.fill("#schedule", "30 4 * * 1");
    browser.click("form#plan button[type=submit]");
    browser.wait_until("the plan list", WAIT, |b| b.try_find("tr[data-plan=weekly]").is_some());
    assert!(browser.text("tr[data-plan=weekly]").contains("30 4 * * 1"));
    let plan = client(&site.serve.url(), &site.admin, &["plans", "get", "weekly"]);
    assert_eq!(plan["schedule"], "30 4 * * 1");

    // Run now: the backup of the new source succeeds.
    browser.click("tr[data-plan=weekly] button[name=run]");
    browser.wait_until("the new job's page", WAIT, |b| b.try_find("#job[data-job]").is_some());
    let id = browser.attribute(&browser.find("#job"), "data-job").unwrap();
    let _worker = site.worker(None);
    browser.wait_until("the job to succeed", WAIT, |b| b.try_find("#job[data-state=succeeded]").is_some());
    assert_eq!(site.job(&id)["state"], "succeeded");

    // A second run: the repository's page draws how its stored data grew, and the dashboard sums it up.
    let again = site.run("weekly");
    wait_for(&site.serve.url(), &site.admin, &again, "succeeded", |j| j["state"] == "succeeded");
    browser.goto(&site.url("/repositories"));
    assert!(
        browser.try_find("section[data-repository=main] svg.growth polyline").is_some(),
        "{}",
        browser.text("main")
    );
    let stored = browser.text("section[data-repository=main] [data-field=stored]");
    assert!(!stored.starts_with("0 B"), "{stored}");
    // Its size on the storage is what its last check found.
    assert!(browser.text("section[data-repository=main] [data-field=size]").contains("after a check"));
    browser.click("section[data-repository=main] button[name=check]");
    browser.wait_until("the check's page", WAIT, |b| b.try_find("#job[data-job]").is_some());
    browser.wait_until("the check to succeed", WAIT, |b| b.try_find("#job[data-state=succeeded]").is_some());
    browser.goto(&site.url("/repositories"));
    let size = browser.text("section[data-repository=main] [data-field=size]");
    assert!(size.contains("of packs, at its last check") && !size.starts_with("0 B"), "{size}");
    browser.screenshot(&screenshots().join("repositories.png"));
    browser.goto(&site.url("/"));
    assert!(browser.try_find("#repositories tr[data-repository=main]").is_some());
    assert!(browser.text("#workers tr[data-region=default]").contains('1'), "{}", browser.text("#workers"));
    browser.screenshot(&screenshots().join("dashboard.png"));
    browser.goto(&site.url("/admin/tokens"));
    assert!(browser.try_find("tr[data-token=workers]").is_some());
    browser.screenshot(&screenshots().join("tokens.png"));
}

#[test]
fn files_inside_a_vm_disk_are_browsed_downloaded_and_restored_in_the_browser() {
    let site = Site::start(1);
    let files: [(&str, &[u8]); 3] =
        [("etc/hostname", b"vm1\n"), ("etc/motd", b"<b>welcome</b>\n"), ("var/log/x", b"x")];
    let disk = backstop_testkit::fixture::gpt_disk_with_files(site.dir.path(), "vm1.raw", &files);
    let spec = format!("image:{}", disk.display());
    client(&site.serve.url(), &site.admin, &["sources", "add", "vm1", "--source", &spec]);
    site.plan("vm1-nightly", "vm1");
    let _worker = site.worker(None);
    let id = site.run("vm1-nightly");
    let deadline = std::time::Instant::now() + WAIT;
    while site.job(&id)["state"] != "succeeded" {
        assert!(std::time::Instant::now() < deadline, "{}", site.job(&id));
        std::thread::sleep(Duration::from_millis(100));
    }
    let snapshot = site.job(&id)["result"]["snapshot_id"].as_str().unwrap().to_string();

    let browser = Browser::start();
    login(&browser, &site, &site.admin);
    // The disk of the snapshot, then its partitions, then a directory inside.
    browser.goto(&site.url(&format!("/snapshots/{snapshot}")));
    browser.click("tr[data-entry='vm1.raw'] a.inside");
    browser.wait_until("the disk's partitions", WAIT, |b| b.try_find("tr[data-entry=p2]").is_some());
    assert!(browser.text("h2").contains("inside vm1.raw"), "{}", browser.text("h2"));
    browser.click("tr[data-entry=p2] a");
    browser.wait_until("p2's root", WAIT, |b| b.try_find("tr[data-entry=etc]").is_some());
    browser.click("tr[data-entry=etc] a");
    browser.wait_until("/p2/etc", WAIT, |b| b.try_find("tr[data-entry=motd]").is_some());
    browser.screenshot(&screenshots().join("snapshot-inside-disk.png"));
    assert!(browser.text("nav.breadcrumbs").contains("vm1.raw"), "{}", browser.text("nav.breadcrumbs"));
    // A file inside downloads with the session.
    let link = browser.attribute(&browser.find("tr[data-entry=motd] a"), "href").unwrap();
    let fetched = browser.fetch(&link);
    assert_eq!((fetched.status, fetched.body.as_slice()), (200, &b"<b>welcome</b>\n"[..]));

    // The selected file is restored by a restore job, into TARGET/p2/etc.
    browser.click("tr[data-entry=motd] input[type=checkbox]");
    let target = site.dir.path().join("from-disk");
    browser.fill("#target", target.to_str().unwrap());
    browser.click("form#restore button[name=restore]");
    browser.wait_until("the restore job's page", WAIT, |b| b.try_find("#job[data-job]").is_some());
    let restore = browser.attribute(&browser.find("#job"), "data-job").unwrap();
    assert_eq!(site.job(&restore)["params"]["image"], "/vm1.raw");
    browser.wait_until("the restore to succeed", WAIT, |b| b.try_find("#job[data-state=succeeded]").is_some());
    assert_eq!(std::fs::read(target.join("p2/etc/motd")).unwrap(), b"<b>welcome</b>\n");
    assert!(!target.join("p2/etc/hostname").exists(), "only the selected file");
}
