//! Every packager against the real thing: images made and compared by
//! `qemu-img`, a real PostgreSQL and MariaDB (found or started by the
//! testkit), a live etcd. Nothing here is skipped: a missing tool fails
//! the test with what to install.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use backstop_backend::{Backend, LocalBackend};
use backstop_repo::backup::{self, BackupOptions, BackupOutcome, BackupSource};
use backstop_repo::crypto::keyslot::KdfParams;
use backstop_repo::{CancelToken, Config as RepoConfig, InitOptions, NoProgress, Password, Progress, Repository};
use backstop_source::{Config, Reach};
use backstop_testkit::mysql::Mysql;
use backstop_testkit::postgres::Postgres;
use serde_json::json;

struct Fixture {
    dir: tempfile::TempDir,
    repo: Repository,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("repo")));
    let options =
        InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, config: RepoConfig::new() };
    let repo = Repository::init(backend, &Password::new("pw"), options).unwrap();
    Fixture { dir, repo }
}

#[derive(Default)]
struct Notes(Mutex<Vec<String>>);

impl Progress for Notes {
    fn info(&self, message: &str) {
        self.0.lock().unwrap().push(message.to_string());
    }
}

fn config(v: serde_json::Value) -> Config {
    v.as_object().unwrap().clone()
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn backup(&self, kind: &str, cfg: &Config) -> backstop_source::Result<BackupOutcome> {
        self.backup_with(kind, cfg, &NoProgress)
    }

    fn backup_with(&self, kind: &str, cfg: &Config, progress: &dyn Progress) -> backstop_source::Result<BackupOutcome> {
        self.backup_in(kind, cfg, &Reach::any(), progress)
    }

    fn backup_in(
        &self,
        kind: &str,
        cfg: &Config,
        reach: &Reach,
        progress: &dyn Progress,
    ) -> backstop_source::Result<BackupOutcome> {
        let source = backstop_source::backup(backstop_source::kind(kind)?, cfg, reach)?;
        let options = BackupOptions::default();
        Ok(backup::run(&self.repo, source, &options, progress, &CancelToken::new())?)
    }

    fn restore(
        &self,
        out: &BackupOutcome,
        kind: &str,
        cfg: &Config,
    ) -> backstop_source::Result<backstop_source::RestoreReport> {
        self.restore_in(out, kind, cfg, &Reach::any())
    }

    fn restore_in(
        &self,
        out: &BackupOutcome,
        kind: &str,
        cfg: &Config,
        reach: &Reach,
    ) -> backstop_source::Result<backstop_source::RestoreReport> {
        let kind = backstop_source::kind(kind)?;
        backstop_source::restore(&self.repo, &out.snapshot, kind, cfg, reach, &NoProgress, &CancelToken::new())
    }
}

/// Run a tool that must be installed; its standard output.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed by this test (scripts/test installs it): {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_io(image: &Path, format: &str, commands: &[&str]) {
    let mut args = vec!["-f", format];
    for c in commands {
        args.extend(["-c", c]);
    }
    let image = image.to_str().unwrap();
    args.push(image);
    tool("qemu-io", &args);
}

fn compare(a: &Path, b: &Path) {
    tool("qemu-img", &["compare", a.to_str().unwrap(), b.to_str().unwrap()]);
}

#[test]
fn a_raw_image_round_trips_and_its_incremental_reads_only_the_changed_blocks() {
    let f = fixture();
    let disk = f.path("vm1.raw");
    tool("qemu-img", &["create", "-q", "-f", "raw", disk.to_str().unwrap(), "64M"]);
    qemu_io(&disk, "raw", &["write -P 0x11 0 1M", "write -P 0x22 20M 3M", "write -P 0x33 60M 64k"]);
    let cfg = config(json!({"path": disk, "generation": "1"}));
    let first = f.backup("image", &cfg).unwrap();
    assert!(first.snapshot.summary.bytes_read <= 5 << 20, "holes are skipped: {}", first.snapshot.summary.bytes_read);

    // The hypervisor's writes and its map of them.
    qemu_io(&disk, "raw", &["write -P 0x44 4k 4k", "write -P 0x55 40M 4k", "write -P 0x66 21M 8k"]);
    let map = f.path("vm1.cbt.json");
    let extents = json!([[4096, 4096], [21 << 20, 8192], [40 << 20, 4096]]);
    fs::write(&map, json!({"generation": 2, "parent_generation": 1, "extents": extents}).to_string()).unwrap();
    let notes = Notes::default();
    let second = f.backup_with("image", &config(json!({"path": disk, "cbt": map})), &notes).unwrap();
    assert_eq!(second.parent, Some(first.id));
    assert!(second.snapshot.summary.bytes_read <= 2 * 16384, "read {}", second.snapshot.summary.bytes_read);
    assert!(notes.0.lock().unwrap().iter().any(|n| n.contains("changed-block map from generation 1 to 2")));

    let restored = f.path("restored.raw");
    f.restore(&second, "image", &config(json!({"path": restored}))).unwrap();
    compare(&disk, &restored);
    // Never through a symlink at the target.
    let link = f.path("link.raw");
    std::os::unix::fs::symlink(f.path("elsewhere.raw"), &link).unwrap();
    let err = f.restore(&second, "image", &config(json!({"path": link}))).unwrap_err();
    assert!(err.to_string().contains("is a symlink"), "{err}");
    assert!(!f.path("elsewhere.raw").exists());

    let allocated = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&restored).unwrap()) * 512;
    assert!(allocated < 8 << 20, "the restored raw file is sparse ({allocated} bytes allocated)");

    // Into qcow2, through qemu-img.
    let as_qcow2 = f.path("restored.qcow2");
    f.restore(&second, "image", &config(json!({"path": as_qcow2}))).unwrap();
    assert!(tool("qemu-img", &["info", as_qcow2.to_str().unwrap()]).contains("file format: qcow2"));
    compare(&disk, &as_qcow2);

    // A map listed out of order (two maps concatenated) loses nothing.
    qemu_io(&disk, "raw", &["write -P 0x77 50M 4k", "write -P 0x78 8k 4k"]);
    let extents = json!([[52428800, 4096], [8192, 4096]]);
    fs::write(&map, json!({"generation": 3, "parent_generation": 2, "extents": extents}).to_string()).unwrap();
    let third = f.backup("image", &config(json!({"path": disk, "cbt": map}))).unwrap();
    assert!(third.snapshot.summary.bytes_read <= 2 * 8192, "read {}", third.snapshot.summary.bytes_read);
    f.restore(&third, "image", &config(json!({"path": restored}))).unwrap();
    compare(&disk, &restored);
}

#[test]
fn a_qcow2_chain_with_compressed_and_zero_clusters_is_stored_as_the_guest_sees_it() {
    let f = fixture();
    let base = f.path("base.qcow2");
    let top = f.path("top.qcow2");
    tool("qemu-img", &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "32M"]);
    qemu_io(&base, "qcow2", &["write -P 0x01 0 2M", "write -c -P 0x02 8M 64k", "write -P 0x03 16M 1M"]);
    let backing = base.to_str().unwrap();
    tool("qemu-img", &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, top.to_str().unwrap()]);
    // Overwrite part of the base, zero another part, write new data.
    qemu_io(&top, "qcow2", &["write -P 0x04 1M 64k", "write -z 16M 512k", "write -P 0x05 30M 100k"]);

    let out = f.backup("image", &config(json!({"path": top}))).unwrap();
    let restored = f.path("guest.raw");
    f.restore(&out, "image", &config(json!({"path": restored, "entry": "top.qcow2.raw"}))).unwrap();
    compare(&top, &restored);
    assert!(out.snapshot.summary.bytes_read < 6 << 20, "unallocated clusters are not read");

    // Small clusters: one L2 table covers 2 MiB, so most tables are absent.
    let small = f.path("small-clusters.qcow2");
    tool("qemu-img", &["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", small.to_str().unwrap(), "40M"]);
    qemu_io(&small, "qcow2", &["write -P 0x08 0 10k", "write -c -P 0x09 13M 8k", "write -P 0x0a 39M 1M"]);
    let out = f.backup("image", &config(json!({"path": small}))).unwrap();
    assert!(out.snapshot.summary.bytes_read < 2 << 20, "read {}", out.snapshot.summary.bytes_read);
    let restored = f.path("small.raw");
    f.restore(&out, "image", &config(json!({"path": restored}))).unwrap();
    compare(&small, &restored);

    // zstd-compressed clusters, several in a row (each read runs into the next).
    let zstd = f.path("zstd.qcow2");
    tool("qemu-img", &["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", zstd.to_str().unwrap(), "8M"]);
    qemu_io(&zstd, "qcow2", &["write -c -P 0x0b 0 64k", "write -c -P 0x0c 64k 64k", "write -c -P 0x0d 128k 64k"]);
    let out = f.backup("image", &config(json!({"path": zstd}))).unwrap();
    let restored = f.path("zstd.raw");
    f.restore(&out, "image", &config(json!({"path": restored}))).unwrap();
    compare(&zstd, &restored);

    // A backing file outside the image's directory is refused unless allowed.
    let elsewhere = f.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let outside = elsewhere.join("top.qcow2");
    tool("qemu-img", &["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, outside.to_str().unwrap()]);
    let err = f.backup("image", &config(json!({"path": outside}))).unwrap_err();
    assert!(err.to_string().contains("backing_outside=true"), "{err}");
    f.backup("image", &config(json!({"path": outside, "backing_outside": "true"}))).unwrap();

    // An encrypted image is refused up front, with what to do.
    let secret = f.path("secret.qcow2");
    let luks = [
        "create",
        "-q",
        "--object",
        "secret,id=s0,data=pw",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0",
        secret.to_str().unwrap(),
        "8M",
    ];
    // QEMU 7.2 times its key derivation by the thread's CPU clock and gives
    // up ("Unable to get accurate CPU usage") when a fast machine's first
    // round measures 0 ms — about one run in three here; again, then.
    let mut made = Err(String::new());
    for _ in 0..10 {
        let out = Command::new("qemu-img").args(luks).output().expect("qemu-img (scripts/test installs it)");
        made = if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) };
        if made.as_ref().err().is_none_or(|e| !e.contains("accurate CPU usage")) {
            break;
        }
    }
    made.expect("qemu-img makes an encrypted image");
    let err = f.backup("image", &config(json!({"path": secret}))).unwrap_err();
    assert!(err.to_string().contains("encrypted"), "{err}");
}

#[test]
fn an_exported_vm_directory_is_one_source_with_disks_as_images() {
    let f = fixture();
    let export = f.path("export");
    fs::create_dir(&export).unwrap();
    let disk = export.join("disk0.qcow2");
    tool("qemu-img", &["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "16M"]);
    qemu_io(&disk, "qcow2", &["write -P 0x07 0 1M"]);
    fs::write(export.join("vm.ovf"), "<Envelope><VirtualSystem id=\"vm\"/></Envelope>\n").unwrap();
    let out = f.backup("image", &config(json!({"path": export}))).unwrap();
    let into = f.path("back");
    fs::create_dir(&into).unwrap();
    let report = f.restore(&out, "image", &config(json!({"path": into}))).unwrap();
    assert_eq!(report.restored.len(), 2, "{report:?}");
    assert_eq!(fs::read(into.join("vm.ovf")).unwrap(), fs::read(export.join("vm.ovf")).unwrap());
    compare(&disk, &into.join("disk0.qcow2.raw"));
}

#[test]
fn a_command_is_stored_and_a_failing_command_fails_the_backup() {
    let f = fixture();
    let out = f
        .backup("command", &config(json!({"command": "printf 'hello\\n'; seq 1 100000", "filename": "out.txt"})))
        .unwrap();
    let sink = f.path("sink.txt");
    let cmd = format!("cat > {}", sink.display());
    f.restore(&out, "command", &config(json!({"command": cmd}))).unwrap();
    let text = fs::read_to_string(&sink).unwrap();
    assert!(text.starts_with("hello\n1\n") && text.ends_with("100000\n"));

    let before = f.repo.snapshots().unwrap().len();
    let err = f.backup("command", &config(json!({"command": "echo partial; echo boom >&2; exit 3"}))).unwrap_err();
    assert!(err.to_string().contains("exit status: 3") && err.to_string().contains("boom"), "{err}");
    assert_eq!(f.repo.snapshots().unwrap().len(), before, "no snapshot of a failed command");

    // A restore command that fails is an error too.
    let err = f.restore(&out, "command", &config(json!({"command": "cat >/dev/null; exit 5"}))).unwrap_err();
    assert!(err.to_string().contains("exit status: 5"), "{err}");
}

#[test]
fn etcd_snapshotted_by_a_command_comes_back_with_its_keys() {
    let f = fixture();
    let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
    let free = || port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let start = |data: &Path, client: u16, peer: u16| {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new("etcd");
        c.arg("--data-dir")
            .arg(data)
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl only affects this child.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        c.spawn().expect("etcd is needed by this test (apt-get install etcd-server etcd-client)")
    };
    let ctl = |client: u16, args: &[&str]| {
        let endpoint = format!("--endpoints=http://127.0.0.1:{client}");
        let mut all = vec![endpoint.as_str()];
        all.extend(args);
        let out = Command::new("etcdctl").env("ETCDCTL_API", "3").args(&all).output().expect("etcdctl");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let wait = |client: u16| {
        for _ in 0..100 {
            if ctl(client, &["endpoint", "health"]).0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("etcd did not come up");
    };
    let (client, peer) = (free(), free());
    let mut live = start(&f.path("etcd-data"), client, peer);
    wait(client);
    assert!(ctl(client, &["put", "/cluster/config", "v1"]).0);
    assert!(ctl(client, &["put", "/cluster/nodes/a", "10.0.0.1"]).0);

    let tmp = f.path("etcd-snap.db");
    let backup_cmd = format!(
        "ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:{client} snapshot save {0} >/dev/null && cat {0} && rm {0}",
        tmp.display()
    );
    let out = f.backup("command", &config(json!({"command": backup_cmd, "filename": "etcd.db"}))).unwrap();
    live.kill().unwrap();
    live.wait().unwrap();

    let restored_data = f.path("etcd-restored");
    let (client2, peer2) = (free(), free());
    let file = f.path("from-backstop.db");
    let restore_cmd = format!(
        "cat > {file} && ETCDCTL_API=3 etcdctl snapshot restore {file} --data-dir {data} \
         --initial-cluster default=http://127.0.0.1:{peer2} --initial-advertise-peer-urls http://127.0.0.1:{peer2} >/dev/null",
        file = file.display(),
        data = restored_data.display()
    );
    f.restore(&out, "command", &config(json!({"command": restore_cmd}))).unwrap();
    let mut again = start(&restored_data, client2, peer2);
    wait(client2);
    let (ok, keys) = ctl(client2, &["get", "--prefix", "/cluster/"]);
    again.kill().unwrap();
    let _ = again.wait();
    assert!(ok);
    assert_eq!(keys, "/cluster/config\nv1\n/cluster/nodes/a\n10.0.0.1\n");
}

#[test]
fn postgres_rows_survive_a_drop_and_restore_into_the_same_and_another_database() {
    let f = fixture();
    let pg = Postgres::get();
    let url = pg.fresh_database();
    let db = url.rsplit('/').next().unwrap().to_string();
    let rows = "CREATE TABLE t (id int PRIMARY KEY, name text); \
                INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g;";
    pg.psql(&db, rows).unwrap();
    let digest =
        |db: &str| pg.psql(db, "SELECT count(*) || ':' || md5(string_agg(name, ',' ORDER BY id)) FROM t").unwrap();
    let want = digest(&db);

    let out = f.backup("postgres", &config(json!({"url": url}))).unwrap();
    pg.psql("postgres", &format!("DROP DATABASE {db}")).unwrap();

    // Into the same name: created again.
    f.restore(&out, "postgres", &config(json!({"url": url}))).unwrap();
    assert_eq!(digest(&db), want);
    // Into another database.
    let other = format!("{db}_copy");
    let other_url = format!("{}/{other}", url.rsplit_once('/').unwrap().0);
    f.restore(&out, "postgres", &config(json!({"url": other_url}))).unwrap();
    assert_eq!(digest(&other), want);
    // Again into the same one: objects exist, so it fails unless clean=true.
    let err = f.restore(&out, "postgres", &config(json!({"url": other_url}))).unwrap_err();
    assert!(err.to_string().contains("pg_restore failed"), "{err}");
    f.restore(&out, "postgres", &config(json!({"url": other_url, "clean": "true"}))).unwrap();
    assert_eq!(digest(&other), want);
    pg.psql("postgres", &format!("DROP DATABASE {other}")).unwrap();
    pg.psql("postgres", &format!("DROP DATABASE {db}")).unwrap();

    // A database that does not exist fails the backup: no snapshot.
    let before = f.repo.snapshots().unwrap().len();
    let missing = format!("{}/no_such_database_here", url.rsplit_once('/').unwrap().0);
    let err = f.backup("postgres", &config(json!({"url": missing}))).unwrap_err();
    assert!(err.to_string().contains("pg_dump failed"), "{err}");
    assert_eq!(f.repo.snapshots().unwrap().len(), before);
}

#[test]
fn mariadb_rows_survive_a_drop_and_restore() {
    let f = fixture();
    let my = Mysql::get();
    let db = my.fresh_database();
    my.sql(&db, "CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(40), data BLOB)").unwrap();
    let values: Vec<String> = (1..=2000).map(|i| format!("({i}, 'row {i}', UNHEX('00FF{i:04X}'))")).collect();
    my.sql(&db, &format!("INSERT INTO t VALUES {}", values.join(","))).unwrap();
    let digest =
        |db: &str| my.sql(db, "SELECT COUNT(*), MD5(GROUP_CONCAT(name, HEX(data) ORDER BY id)) FROM t").unwrap();
    let want = digest(&db);

    let out = f.backup("mysql", &config(json!({"url": my.url(&db)}))).unwrap();
    my.sql("", &format!("DROP DATABASE {db}")).unwrap();
    f.restore(&out, "mysql", &config(json!({"url": my.url(&db)}))).unwrap();
    assert_eq!(digest(&db), want);
    my.sql("", &format!("DROP DATABASE {db}")).unwrap();

    let err = f.backup("mysql", &config(json!({"url": my.url("no_such_db_here")}))).unwrap_err();
    assert!(err.to_string().contains("failed"), "{err}");
}

#[test]
fn configurations_are_checked_before_anything_runs() {
    for (kind, cfg, expect) in [
        ("image", json!({"path": "relative.raw"}), "must be absolute"),
        ("image", json!({"path": "/x.raw", "chunk_size": "3k"}), "power of two"),
        ("image", json!({"path": "/x.raw", "bogus": 1}), "unknown option \"bogus\""),
        ("command", json!({}), "needs command"),
        ("command", json!({"command": "true", "filename": "a/b"}), "plain file name"),
        ("postgres", json!({"url": "mysql://x/y"}), "starts with postgres://"),
        ("postgres", json!({"url": "postgres://h/db", "databases": "a"}), "not both"),
        ("mysql", json!({"url": "mysql://h/db`x"}), "not a database name"),
        ("postgres", json!({"url": "postgres://h/a%20host%3Devil"}), "not a database name"),
        ("zfs", json!({}), "unknown source kind"),
        ("ftp", json!({}), "unknown source kind"),
        ("fs", json!({"paths": ["relative/path"]}), "not an absolute path"),
        ("fs", json!({"paths": ["/srv"], "one_file_system": "yes"}), "config.one_file_system is true or false"),
        ("fs", json!({"paths": ["/srv"], "bogus": 1}), "unknown fs source setting \"bogus\""),
    ] {
        let err = backstop_source::kind(kind).and_then(|k| backstop_source::validate(k, &config(cfg))).unwrap_err();
        assert!(err.to_string().contains(expect), "{kind}: {err}");
    }
    let missing = config(json!({"path": "/does/not/exist.raw"}));
    let err = backstop_source::backup(backstop_source::SourceKind::Image, &missing, &Reach::any()).err().unwrap();
    assert!(err.to_string().contains("cannot back up the image"), "{err}");
    // A password never shows in the label.
    let (_, cfg) = backstop_source::from_spec("postgres://app:s3cret@db1:5432/app", &[]).unwrap();
    let tree = backstop_source::db::DbConfig::parse(backstop_source::db::Engine::Postgres, &cfg).unwrap();
    assert_eq!(tree.label(), "postgres://app@db1:5432/app");
    assert!(!format!("{tree:?}").contains("s3cret"));
    assert_eq!(backstop_source::redact_spec("postgres://app:s3cret@db1/app"), "postgres://app:***@db1/app");
    // Percent-decoding only: `+` stays a plus.
    let (_, cfg) = backstop_source::from_spec("mysql://a+b@h/app", &[]).unwrap();
    let db = backstop_source::db::DbConfig::parse(backstop_source::db::Engine::Mysql, &cfg).unwrap();
    assert_eq!(db.label(), "mysql://a+b@h/app");
}

#[test]
fn hooks_run_around_the_backup_with_a_timeout_and_an_error_policy() {
    use backstop_source::hooks::{Hook, Hooks};
    let f = fixture();
    let marker = f.path("post.txt");
    let disk = f.path("made-by-the-pre-hook.raw");
    let env = vec![("BACKSTOP_SOURCE".to_string(), "vm1".to_string())];
    let post = format!(
        "echo \"$BACKSTOP_HOOK $BACKSTOP_STATUS $BACKSTOP_SOURCE $BACKSTOP_SNAPSHOT_ID\" > {}",
        marker.display()
    );
    let hooks = Hooks {
        // The pre hook makes what the source reads (as a volume snapshot would).
        pre: vec![
            Hook::new(&format!("echo freezing; head -c 65536 /dev/urandom > {}", disk.display()), 30, "fail").unwrap(),
        ],
        post: vec![Hook::new(&post, 30, "fail").unwrap()],
    };
    let notes = Notes::default();
    let cfg = config(json!({"path": disk}));
    let work = || f.backup_with("image", &cfg, &notes);
    let out = hooks.around(&env, &notes, work, |o| vec![("BACKSTOP_SNAPSHOT_ID".into(), o.id.to_string())]).unwrap();
    assert_eq!(fs::read_to_string(&marker).unwrap().trim(), format!("post succeeded vm1 {}", out.id));
    assert!(notes.0.lock().unwrap().iter().any(|l| l == "pre hook: freezing"), "hook output goes to the log");

    // A failing pre hook stops the backup; the post hook still runs (a thaw is never skipped).
    let hooks = Hooks {
        pre: vec![Hook::new("echo cannot freeze >&2; exit 9", 30, "fail").unwrap()],
        post: vec![Hook::new(&post, 30, "fail").unwrap()],
    };
    let ran = std::cell::Cell::new(false);
    let err = hooks
        .around(
            &env,
            &notes,
            || -> backstop_source::Result<()> {
                ran.set(true);
                Ok(())
            },
            |_| Vec::new(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("pre hook") && err.to_string().contains("exit status: 9"), "{err}");
    assert!(!ran.get(), "the backup did not run");
    assert!(fs::read_to_string(&marker).unwrap().starts_with("post failed"));

    // on_error: continue goes on; a hook past its timeout is killed.
    let hooks = Hooks { pre: vec![Hook::new("exit 1", 30, "continue").unwrap()], post: Vec::new() };
    assert!(hooks.around(&env, &notes, || -> backstop_source::Result<u8> { Ok(7) }, |_| Vec::new()).unwrap() == 7);
    let started = std::time::Instant::now();
    let hooks = Hooks { pre: vec![Hook::new("sleep 30", 1, "fail").unwrap()], post: Vec::new() };
    let err = hooks.around(&env, &notes, || -> backstop_source::Result<()> { Ok(()) }, |_| Vec::new()).unwrap_err();
    assert!(err.to_string().contains("did not finish within 1 s"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    assert!(Hook::new("true", 0, "fail").is_err());
    assert!(Hook::new("true", 5, "maybe").is_err());
    assert!(Hooks::parse(Some(&json!({"pre": [{"command": "x"}], "during": []}))).is_err());
}

// ---- kubernetes -------------------------------------------------------------
//
// No cluster runs on these machines: the testkit's FakeCluster serves the
// real API paths and JSON for the kinds the tests use (see its docs for
// what it does and does not do).

#[cfg(feature = "kubernetes")]
mod kubernetes {
    use super::*;
    use backstop_testkit::kubernetes::FakeCluster;

    /// Seed a shop: a namespace with config, a secret, a service, a
    /// deployment with the replica set it owns, a role binding, an event;
    /// something in `default` too.
    fn seed(cluster: &FakeCluster) {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", "namespace": "shop", "labels": {"app": "web"}},
                   "data": {"yes": "yes", "octal": "0123", "empty": "", "multi": "line one\nline two\n", "colon": "a: b", "hash": "#x", "null": "null", "unicode": "grüße ✓"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other", "namespace": "shop", "labels": {"app": "db"}}, "data": {"k": "v"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"}, "type": "Opaque", "data": {"password": "aHVudGVyMg=="}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                   "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]}}),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "shop"},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": "shop"},
                   "spec": {"template": {"metadata": {"labels": {"app": "migrate"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "busybox"}]}}}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "widgets.example.com"},
                   "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
                            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": "shop"}, "spec": {"size": 3}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                   "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}),
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-5d8f", "namespace": "shop", "labels": {"app": "web"},
                   "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-1", "controller": true}]},
                   "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "deployer", "namespace": "shop"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                   "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "shop"}]}),
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.1", "namespace": "shop"}, "reason": "Scheduled"}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "unrelated", "namespace": "default"},
                   "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}}}}),
        ];
        for o in objects {
            cluster.apply(o);
        }
    }

    fn entries(f: &Fixture, out: &BackupOutcome) -> Vec<String> {
        let index = f.repo.load_index().unwrap();
        let mut files = Vec::new();
        backstop_repo::ops::ls::walk(&f.repo, &index, &out.snapshot, Path::new("/"), &mut |path, node| {
            if node.node_type == backstop_repo::tree::NodeType::File {
                files.push(path.display().to_string().trim_start_matches('/').to_string());
            }
        })
        .unwrap();
        files
    }

    fn manifest(f: &Fixture, out: &BackupOutcome, path: &str) -> (String, serde_json::Value) {
        let index = f.repo.load_index().unwrap();
        let mut yaml = Vec::new();
        backstop_repo::ops::dump::dump(&f.repo, &index, &out.snapshot, Path::new(&format!("/{path}")), &mut yaml)
            .unwrap();
        let text = String::from_utf8(yaml).unwrap();
        let value = backstop_source::kubernetes::from_yaml(text.as_bytes()).unwrap();
        (text, value)
    }

    #[test]
    fn resources_are_stored_clean_and_restored_with_namespace_mapping_and_a_conflict_policy() {
        let f = fixture();
        let cluster = FakeCluster::start();
        seed(&cluster);
        let kubeconfig = f.path("kubeconfig");
        cluster.write_kubeconfig(&kubeconfig, "fake");
        let kc = kubeconfig.display().to_string();
        let notes = Notes::default();
        let out = f
            .backup_with(
                "kubernetes",
                &config(json!({"context": "fake", "kubeconfig": kc, "namespaces": "shop"})),
                &notes,
            )
            .unwrap();
        assert_eq!(out.snapshot.paths, vec!["kubernetes:fake".to_string()]);
        let mut names = entries(&f, &out);
        names.sort();
        assert_eq!(
            names,
            [
                "_cluster/customresourcedefinitions.apiextensions.k8s.io/widgets.example.com.yaml",
                "_cluster/namespaces/shop.yaml",
                "shop/configmaps/kube-root-ca.crt.yaml",
                "shop/configmaps/other.yaml",
                "shop/configmaps/web-config.yaml",
                "shop/deployments.apps/web.yaml",
                "shop/jobs.batch/migrate.yaml",
                "shop/persistentvolumeclaims/data.yaml",
                "shop/rolebindings.rbac.authorization.k8s.io/deployer.yaml",
                "shop/secrets/db.yaml",
                "shop/serviceaccounts/default.yaml",
                "shop/services/web.yaml",
                "shop/widgets.example.com/w1.yaml",
            ],
            "owned replica sets, events and other namespaces stay out; a custom kind brings its definition"
        );
        let said = notes.0.lock().unwrap().join("\n");
        assert!(
            said.contains(backstop_testkit::kubernetes::BROKEN_GROUP) && said.contains("did not answer discovery"),
            "{said}"
        );
        // Clean manifests, in kubectl's order.
        let (text, svc) = manifest(&f, &out, "shop/services/web.yaml");
        assert!(text.starts_with("apiVersion: v1\nkind: Service\nmetadata:"), "{text}");
        for server_field in [
            "/metadata/uid",
            "/metadata/resourceVersion",
            "/metadata/creationTimestamp",
            "/metadata/managedFields",
            "/metadata/generation",
            "/spec/clusterIP",
            "/spec/clusterIPs",
            "/spec/ports/0/nodePort",
            "/status",
        ] {
            assert!(svc.pointer(server_field).is_none(), "{server_field} in {text}");
        }
        let (text, job) = manifest(&f, &out, "shop/jobs.batch/migrate.yaml");
        assert!(job.pointer("/spec/selector").is_none() && !text.contains("controller-uid"), "{text}");
        assert_eq!(job["spec"]["template"]["metadata"]["labels"]["job-name"], "migrate");
        let (text, pvc) = manifest(&f, &out, "shop/persistentvolumeclaims/data.yaml");
        assert!(pvc.pointer("/spec/volumeName").is_none(), "{text}");
        let (_, deployment) = manifest(&f, &out, "shop/deployments.apps/web.yaml");
        assert_eq!(deployment["spec"]["replicas"], 3);
        assert!(deployment.get("status").is_none());

        // A label selector goes to the server.
        let selected = f
            .backup("kubernetes", &config(json!({"context": "fake", "kubeconfig": kc, "selector": "app=web", "kinds": "configmaps,services,Deployment"})))
            .unwrap();
        let mut names = entries(&f, &selected);
        names.sort();
        assert_eq!(
            names,
            [
                "_cluster/namespaces/shop.yaml",
                "shop/configmaps/web-config.yaml",
                "shop/deployments.apps/web.yaml",
                "shop/services/web.yaml"
            ]
        );
        assert!(cluster.requests().iter().any(|r| r.contains("labelSelector=app%3Dweb")), "{:?}", cluster.requests());

        // Into another namespace of the same cluster: created, but what the
        // new namespace already has (its default service account) is skipped.
        let to = config(json!({"context": "fake", "kubeconfig": kc, "namespace_map": "shop:shop-copy"}));
        let report = f.restore(&out, "kubernetes", &to).unwrap();
        let outcome =
            |entry: &str| report.restored.iter().find(|(e, _)| e == entry).map(|(_, o)| o.clone()).unwrap_or_default();
        assert_eq!(outcome("shop/configmaps/web-config.yaml"), "kubernetes:shop-copy/configmaps/web-config (created)");
        assert_eq!(
            outcome("shop/serviceaccounts/default.yaml"),
            "kubernetes:shop-copy/serviceaccounts/default (skipped: it exists)"
        );
        let original = cluster.get("configmaps", Some("shop"), "web-config").unwrap();
        let copy = cluster.get("configmaps", Some("shop-copy"), "web-config").unwrap();
        assert_eq!(copy["data"], original["data"], "values YAML could misread come back as the same strings");
        let ns = cluster.get("namespaces", None, "shop-copy").unwrap();
        assert_eq!(ns["metadata"]["labels"]["team"], "a");
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "shop-copy");
        let binding = cluster.get("rolebindings.rbac.authorization.k8s.io", Some("shop-copy"), "deployer").unwrap();
        assert_eq!(binding["subjects"][0]["namespace"], "shop-copy");
        let (a, b) = (
            cluster.get("services", Some("shop"), "web").unwrap(),
            cluster.get("services", Some("shop-copy"), "web").unwrap(),
        );
        assert_ne!(a["spec"]["clusterIP"], b["spec"]["clusterIP"], "the copy got an address of its own");
        assert_eq!(cluster.names("deployments.apps", Some("shop-copy")), ["web"]);
        assert_eq!(cluster.names("widgets.example.com", Some("shop-copy")), ["w1"]);
        assert_eq!(
            outcome("_cluster/customresourcedefinitions.apiextensions.k8s.io/widgets.example.com.yaml"),
            "kubernetes:_cluster/customresourcedefinitions.apiextensions.k8s.io/widgets.example.com (skipped: it exists)"
        );
        let job = cluster.get("jobs.batch", Some("shop-copy"), "migrate").unwrap();
        let old_selector = &cluster.get("jobs.batch", Some("shop"), "migrate").unwrap()["spec"]["selector"];
        assert_ne!(&job["spec"]["selector"], old_selector, "the copy has a selector of its own");
        assert!(cluster.names("replicasets.apps", Some("shop-copy")).is_empty());

        // The namespace lost, restored as it was.
        cluster.delete_namespace("shop");
        f.restore(&out, "kubernetes", &config(json!({"context": "fake", "kubeconfig": kc}))).unwrap();
        assert_eq!(cluster.get("configmaps", Some("shop"), "web-config").unwrap()["data"], original["data"]);
        assert_eq!(
            cluster.get("deployments.apps", Some("shop"), "web").unwrap()["spec"]["template"]["spec"]["containers"][0]
                ["image"],
            "nginx:1.27"
        );
        assert_eq!(cluster.get("secrets", Some("shop"), "db").unwrap()["data"]["password"], "aHVudGVyMg==");

        // Changed since: skip leaves the change, overwrite puts the snapshot's back.
        let mut changed = cluster.get("configmaps", Some("shop"), "web-config").unwrap();
        changed["data"] = json!({"yes": "no"});
        cluster.apply(changed);
        let ip = cluster.get("services", Some("shop"), "web").unwrap()["spec"]["clusterIP"].clone();
        let only_config = config(
            json!({"context": "fake", "kubeconfig": kc, "kinds": "ConfigMap,services,jobs.batch,persistentvolumeclaims"}),
        );
        f.restore(&out, "kubernetes", &only_config).unwrap();
        assert_eq!(cluster.get("configmaps", Some("shop"), "web-config").unwrap()["data"], json!({"yes": "no"}));
        let mut overwrite = only_config.clone();
        overwrite.insert("conflict".into(), json!("overwrite"));
        let report = f.restore(&out, "kubernetes", &overwrite).unwrap();
        assert!(
            report.restored.iter().any(|(e, o)| e == "shop/configmaps/web-config.yaml" && o.ends_with("(replaced)")),
            "{:?}",
            report.restored
        );
        assert_eq!(cluster.get("configmaps", Some("shop"), "web-config").unwrap()["data"], original["data"]);
        assert_eq!(
            cluster.get("services", Some("shop"), "web").unwrap()["spec"]["clusterIP"],
            ip,
            "a replaced Service keeps its address"
        );
        assert!(!report.restored.iter().any(|(e, _)| e.contains("deployments")), "kinds= limits the restore");
        for replaced in ["shop/jobs.batch/migrate.yaml", "shop/persistentvolumeclaims/data.yaml"] {
            assert!(
                report.restored.iter().any(|(e, o)| e == replaced && o.ends_with("(replaced)")),
                "immutable fields kept: {:?}",
                report.restored
            );
        }
    }

    #[test]
    fn a_server_and_token_reach_the_cluster_and_lists_are_read_page_by_page() {
        let f = fixture();
        let cluster = FakeCluster::start();
        cluster.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bulk"}}));
        for i in 0..1203 {
            cluster.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i:04}"), "namespace": "bulk"}, "data": {"i": i.to_string()}}));
        }
        let token_file = f.path("token");
        fs::write(&token_file, format!("{}\n", cluster.token())).unwrap();
        let cfg = config(
            json!({"server": cluster.url(), "token_file": token_file.display().to_string(), "kinds": "configmaps"}),
        );
        let out = f.backup("kubernetes", &cfg).unwrap();
        let names = entries(&f, &out);
        // 1203 + kube-root-ca.crt in bulk, default and kube-system; the namespaces.
        assert_eq!(names.iter().filter(|n| n.starts_with("bulk/configmaps/")).count(), 1204);
        assert_eq!(names.iter().filter(|n| n.starts_with("_cluster/namespaces/")).count(), 3);
        let pages = cluster.requests().iter().filter(|r| r.starts_with("GET /api/v1/configmaps?")).count();
        assert_eq!(pages, 3, "500 a page: {:?}", cluster.requests());
        assert!(format!("{:?}", backstop_source::kubernetes::BackupConfig::parse(&cfg).unwrap()).contains("server"));
        let shown = format!(
            "{:?}",
            backstop_source::kubernetes::BackupConfig::parse(&config(
                json!({"server": cluster.url(), "token": "s3cret"})
            ))
            .unwrap()
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_tenant_cluster_is_reached_only_at_a_granted_address_with_its_own_token() {
        let f = fixture();
        let cluster = FakeCluster::start();
        let (root, _) = super::tenant_tree(&f);
        let port = cluster.url().rsplit(':').next().unwrap().trim_end_matches('/').to_string();
        let cfg = config(json!({"server": cluster.url(), "token": cluster.token(), "kinds": "namespaces"}));
        let err = f.backup_in("kubernetes", &cfg, &super::tenant(&root, &["0.0.0.0/0"]), &NoProgress).unwrap_err();
        assert!(err.to_string().contains("may not connect"), "{err}");
        let granted = super::tenant(&root, &[&format!("127.0.0.1/32:{port}")]);
        let out = f.backup_in("kubernetes", &cfg, &granted, &NoProgress).unwrap();
        assert!(entries(&f, &out).iter().any(|n| n.starts_with("_cluster/namespaces/")));
        // The workers' own files are theirs, not a tenant's.
        let token_file = f.path("token");
        fs::write(&token_file, cluster.token()).unwrap();
        let theirs = config(json!({"server": cluster.url(), "token_file": token_file.display().to_string()}));
        let err = f.backup_in("kubernetes", &theirs, &granted, &NoProgress).unwrap_err();
        assert!(err.to_string().contains("server= and token="), "{err}");
    }

    #[test]
    fn https_clusters_are_trusted_through_their_ca_only() {
        let f = fixture();
        let cluster = FakeCluster::start_tls();
        assert!(cluster.url().starts_with("https://"));
        cluster.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "default"}, "data": {"a": "1"}}));
        let only = json!({"namespaces": "default", "kinds": "configmaps"});
        let with = |extra: serde_json::Value| {
            let mut c = config(only.clone());
            c.extend(extra.as_object().unwrap().clone());
            c
        };
        let ca = cluster.ca_data().unwrap();
        let out = f
            .backup(
                "kubernetes",
                &with(json!({"server": cluster.url(), "token": cluster.token(), "certificate_authority_data": ca})),
            )
            .unwrap();
        assert!(entries(&f, &out).contains(&"default/configmaps/app.yaml".to_string()));
        let kubeconfig = f.path("kubeconfig");
        cluster.write_kubeconfig(&kubeconfig, "tls");
        f.backup("kubernetes", &with(json!({"kubeconfig": kubeconfig.display().to_string(), "context": "tls"})))
            .unwrap();
        // Without the CA the server is not trusted, unless told not to check.
        let err =
            f.backup("kubernetes", &with(json!({"server": cluster.url(), "token": cluster.token()}))).unwrap_err();
        assert!(err.to_string().contains("kubernetes: discovering the API"), "{err}");
        assert!(err.to_string().contains("UnknownIssuer"), "the cause is said: {err}");
        let insecure = json!({"server": cluster.url(), "token": cluster.token(), "insecure_skip_tls_verify": "true"});
        f.backup("kubernetes", &with(insecure)).unwrap();
    }

    #[test]
    fn failures_say_what_went_wrong_and_leave_no_snapshot() {
        let f = fixture();
        let cluster = FakeCluster::start();
        seed(&cluster);
        let before = f.repo.snapshots().unwrap().len();
        let wrong = config(json!({"server": cluster.url(), "token": "wrong"}));
        let err = f.backup("kubernetes", &wrong).unwrap_err().to_string();
        assert!(err.contains("refused the credentials"), "{err}");
        let right = |extra: serde_json::Value| {
            let mut c = config(json!({"server": cluster.url(), "token": cluster.token()}));
            c.extend(extra.as_object().unwrap().clone());
            c
        };
        let err = f.backup("kubernetes", &right(json!({"kinds": "gadgets"}))).unwrap_err().to_string();
        assert!(err.contains("serves no resource \"gadgets\""), "{err}");
        let err = f.backup("kubernetes", &right(json!({"namespaces": "nope"}))).unwrap_err().to_string();
        assert!(err.contains("has no namespace nope"), "{err}");
        // Nothing listens on a port just closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = f
            .backup("kubernetes", &config(json!({"server": format!("http://127.0.0.1:{port}")})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubernetes: discovering the API"), "{err}");
        assert_eq!(f.repo.snapshots().unwrap().len(), before);

        for (cfg, expect) in [
            (json!({"selector": "app in (a,b"}), "not a label selector"),
            (json!({"namespaces": "Shop"}), "not a namespace name"),
            (json!({"kinds": "deploy/ments"}), "not a resource name"),
            (json!({"server": "ftp://x"}), "http(s)://"),
            (json!({"server": "https://x", "kubeconfig": "/k"}), "not both"),
            (json!({"token": "t"}), "go with server"),
            (json!({"owned": "maybe"}), "not true or false"),
            (json!({"namespace_map": "a:b"}), "unknown option \"namespace_map\""),
        ] {
            let err = backstop_source::validate(backstop_source::SourceKind::Kubernetes, &config(cfg)).unwrap_err();
            assert!(err.to_string().contains(expect), "{err}");
        }
        // Restore options are checked too, and a snapshot of something else is refused.
        let out = f.backup("kubernetes", &right(json!({"namespaces": "shop"}))).unwrap();
        for (opts, expect) in
            [(json!({"conflict": "merge"}), "not skip or overwrite"), (json!({"namespace_map": "shop"}), "not OLD:NEW")]
        {
            let err = f.restore(&out, "kubernetes", &right(opts)).unwrap_err();
            assert!(err.to_string().contains(expect), "{err}");
        }
        let err = f.restore(&out, "kubernetes", &right(json!({"namespaces": "elsewhere"}))).unwrap_err();
        assert!(err.to_string().contains("nothing in the snapshot matches"), "{err}");
        let other = f.backup("command", &config(json!({"command": "echo hi"}))).unwrap();
        let err = f.restore(&other, "kubernetes", &right(json!({}))).unwrap_err();
        assert!(err.to_string().contains("is no manifest"), "{err}");

        // A kind this account may not list: said and left out by default, an error when asked for.
        cluster.forbid("secrets");
        let notes = Notes::default();
        let out = f.backup_with("kubernetes", &right(json!({"namespaces": "shop"})), &notes).unwrap();
        assert!(!entries(&f, &out).iter().any(|e| e.contains("/secrets/")));
        assert!(notes.0.lock().unwrap().iter().any(|n| n.contains("listing secrets is forbidden")), "{:?}", notes.0);
        let err = f.backup("kubernetes", &right(json!({"namespaces": "shop", "kinds": "secrets"}))).unwrap_err();
        assert!(err.to_string().contains("forbidden (403)"), "{err}");

        // Into a namespace that is being deleted: one clear reason.
        cluster.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "going"}}));
        cluster.terminate_namespace("going");
        let into_going = right(json!({"namespace_map": "shop:going", "kinds": "configmaps"}));
        let err = f.restore(&out, "kubernetes", &into_going).unwrap_err();
        assert!(err.to_string().contains("namespace going is being deleted"), "{err}");

        // A manifest whose content does not match its place is refused
        // before anything reaches the cluster.
        use backstop_repo::backup::source::{EntryData, SourceEntry, SourceTree};
        let sneaky =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "kube-system"}});
        let tree = SourceTree {
            kind: "kubernetes".into(),
            label: "kubernetes:forged".into(),
            entries: vec![SourceEntry {
                path: "shop/configmaps/x.yaml".into(),
                mode: 0o600,
                data: EntryData::Bytes(backstop_source::kubernetes::to_yaml(&sneaky).unwrap()),
            }],
            image_chunk_size: 8192,
            notes: Vec::new(),
            capture: None,
        };
        let options = BackupOptions::default();
        let forged =
            backup::run(&f.repo, BackupSource::Tree(tree), &options, &NoProgress, &CancelToken::new()).unwrap();
        let posts = || cluster.requests().iter().filter(|r| r.starts_with("POST")).count();
        let before = posts();
        let err = f.restore(&forged, "kubernetes", &right(json!({}))).unwrap_err();
        assert!(err.to_string().contains("do not match its place"), "{err}");
        assert_eq!(posts(), before);
        assert!(cluster.get("configmaps", Some("kube-system"), "x").is_none());
    }
}

/// A tenant's reach: paths beneath `root`, the network `grants`.
fn tenant(root: &Path, grants: &[&str]) -> Reach {
    Reach {
        paths: backstop_confine::PathScope::Beneath { roots: vec![root.to_path_buf()] },
        net: backstop_confine::NetScope::Granted {
            grants: grants.iter().map(|g| g.parse().unwrap()).collect(),
            own: vec![],
        },
    }
}

/// `/…/tenants/tb` with a link to the service's data directory in it.
fn tenant_tree(f: &Fixture) -> (PathBuf, PathBuf) {
    let root = f.path("tenants/tb");
    let service = f.path("service");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&service).unwrap();
    fs::write(service.join("server.key"), b"the service's key").unwrap();
    std::os::unix::fs::symlink(&service, root.join("svcdir")).unwrap();
    (root, service)
}

#[test]
fn a_tenant_image_source_never_reads_through_a_link_out_of_its_root() {
    let f = fixture();
    let (root, _service) = tenant_tree(&f);
    let reach = tenant(&root, &[]);
    // The repro: an image source on a link to the data directory.
    for path in [root.join("svcdir"), root.join("svcdir/server.key")] {
        let err =
            f.backup_in("image", &config(json!({"path": path, "format": "raw"})), &reach, &NoProgress).unwrap_err();
        assert!(err.to_string().contains("leads outside"), "{}: {err}", path.display());
    }
    // An export directory's links are left out; its own files keep their modes.
    let vm = root.join("vm");
    fs::create_dir_all(&vm).unwrap();
    std::os::unix::fs::symlink(f.path("service/server.key"), vm.join("stolen.ovf")).unwrap();
    fs::write(vm.join("vm.ovf"), b"<Envelope/>").unwrap();
    fs::set_permissions(vm.join("vm.ovf"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let disk = vm.join("disk0.raw");
    tool("qemu-img", &["create", "-q", "-f", "raw", disk.to_str().unwrap(), "4M"]);
    qemu_io(&disk, "raw", &["write -P 0x5a 0 64k"]);
    let out = f.backup_in("image", &config(json!({"path": vm})), &reach, &NoProgress).unwrap();
    let into = root.join("back");
    fs::create_dir(&into).unwrap();
    let report = f.restore_in(&out, "image", &config(json!({"path": into})), &reach).unwrap();
    assert_eq!(report.restored.len(), 2, "the link was not backed up: {report:?}");
    let mode = fs::metadata(into.join("vm.ovf")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o640, "the recorded mode comes back");
    compare(&disk, &into.join("disk0.raw"));
    // A qcow2 whose backing file is reached through a link out of its directory.
    let top = vm.join("top.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", "../svcdir/server.key", "-F", "raw", top.to_str().unwrap(), "4M"],
    );
    let err = f.backup_in("image", &config(json!({"path": top})), &reach, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
}

#[test]
fn a_tenant_image_restore_never_writes_through_a_link_out_of_its_root() {
    let f = fixture();
    let disk = f.path("d.raw");
    tool("qemu-img", &["create", "-q", "-f", "raw", disk.to_str().unwrap(), "4M"]);
    qemu_io(&disk, "raw", &["write -P 0x42 0 64k"]);
    let out = f.backup("image", &config(json!({"path": disk}))).unwrap();
    let (root, service) = tenant_tree(&f);
    let reach = tenant(&root, &[]);
    // The repro: `DIR/tb/link/file` overwrote a file outside.
    for target in [root.join("svcdir/server.key"), root.join("svcdir/new.raw"), root.join("svcdir/new.qcow2")] {
        let err = f.restore_in(&out, "image", &config(json!({"path": target})), &reach).unwrap_err();
        assert!(err.to_string().contains("leads outside"), "{}: {err}", target.display());
    }
    assert_eq!(fs::read(service.join("server.key")).unwrap(), b"the service's key");
    assert_eq!(fs::read_dir(&service).unwrap().count(), 1, "nothing new outside the root");
    // Beneath the root, raw and qcow2 (qemu-img gets the files by descriptor).
    f.restore_in(&out, "image", &config(json!({"path": root.join("r.raw")})), &reach).unwrap();
    compare(&disk, &root.join("r.raw"));
    f.restore_in(&out, "image", &config(json!({"path": root.join("r.qcow2")})), &reach).unwrap();
    compare(&disk, &root.join("r.qcow2"));
    let names: Vec<String> =
        fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.contains(".backstop-")), "no temporary files left: {names:?}");
}

#[test]
fn a_tenant_cannot_back_up_or_restore_a_block_device() {
    let f = fixture();
    let (root, _) = tenant_tree(&f);
    let dev = root.join("sda");
    let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
    // A device node a tenant made on its own storage (as root in a VM, on a share without root_squash).
    // SAFETY: c is NUL-terminated.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) };
    assert_eq!(rc, 0, "this test makes a device node and needs root: {}", std::io::Error::last_os_error());
    let err = f.backup_in("image", &config(json!({"path": dev})), &tenant(&root, &[]), &NoProgress).unwrap_err();
    assert!(err.to_string().contains("block device"), "{err}");
}

#[test]
fn a_tenant_database_is_reached_only_at_granted_addresses() {
    let f = fixture();
    let (root, _) = tenant_tree(&f);
    let pg = Postgres::get();
    let url = pg.fresh_database();
    let hostport = url.split('@').nth(1).unwrap().split('/').next().unwrap().to_string();
    let port = hostport.rsplit(':').next().unwrap();
    let nothing = tenant(&root, &[]);
    let err = f.backup_in("postgres", &config(json!({"url": url})), &nothing, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("may not connect"), "{err}");
    // A wide grant does not open loopback; a grant naming it does.
    let wide = tenant(&root, &["0.0.0.0/0"]);
    assert!(f.backup_in("postgres", &config(json!({"url": url})), &wide, &NoProgress).is_err());
    let granted = tenant(&root, &[&format!("127.0.0.1/32:{port}"), &format!("[::1]:{port}")]);
    let out = f.backup_in("postgres", &config(json!({"url": url})), &granted, &NoProgress).unwrap();
    f.restore_in(&out, "postgres", &config(json!({"url": url, "clean": "true"})), &granted).unwrap();
    // A restore elsewhere is checked too.
    let err = f.restore_in(&out, "postgres", &config(json!({"url": url})), &nothing).unwrap_err();
    assert!(err.to_string().contains("may not connect"), "{err}");
    // Sockets, and the default socket of a URL without a host, need a grant.
    for (kind, u) in [
        ("postgres", "postgres:///postgres?host=/var/run/postgresql".to_string()),
        ("postgres", "postgres:///postgres".to_string()),
        ("mysql", "mysql://root@localhost/mysql?socket=/run/mysqld/mysqld.sock".to_string()),
        ("mysql", "mysql://root@127.0.0.1:3306/mysql".to_string()),
    ] {
        let err = f.backup_in(kind, &config(json!({"url": u})), &wide, &NoProgress).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("may not") || text.contains("names no host"), "{u}: {text}");
    }
}

#[test]
fn a_dumps_client_commands_never_run_and_a_tenant_restores_only_its_own_dumps() {
    let f = fixture();
    let my = Mysql::get();
    let db = my.fresh_database();
    // "SQL" with the client's shell escape in it, backed up as a plain file.
    let marker = f.path("pwned");
    let tree = f.path("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("evil.sql"), format!("\\! touch {}\nSELECT 1;\n", marker.display())).unwrap();
    let source = BackupSource::Paths(vec![tree.clone()]);
    let out = backup::run(&f.repo, source, &BackupOptions::default(), &NoProgress, &CancelToken::new()).unwrap();
    let entry = tree.join("evil.sql").strip_prefix("/").unwrap().display().to_string();
    let to = config(json!({"url": my.url(&db), "entry": entry}));
    let err = f.restore(&out, "mysql", &to).unwrap_err();
    // Binary mode takes `\!` as an unknown command; an older client without it
    // still stops at the sandbox.
    let refused = err.to_string();
    assert!(
        refused.contains("Unknown command") || refused.contains("sandbox"),
        "the client refused the command: {refused}"
    );
    assert!(!marker.exists(), "the client ran the dump's shell command");
    // A tenant feeds a database only the dumps of a backup of that kind.
    let (root, _) = tenant_tree(&f);
    let port = my.url(&db).rsplit(':').next().unwrap().split('/').next().unwrap().to_string();
    let reach = tenant(&root, &[&format!("127.0.0.1/32:{port}")]);
    let err = f.restore_in(&out, "mysql", &to, &reach).unwrap_err();
    assert!(err.to_string().contains("not a mysql backup"), "{err}");
}
