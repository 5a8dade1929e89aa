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
use backstop_source::Config;
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
        let tree = backstop_source::backup_tree(kind, cfg)?;
        let options = BackupOptions::default();
        Ok(backup::run(&self.repo, BackupSource::Tree(tree), &options, progress, &CancelToken::new())?)
    }

    fn restore(
        &self,
        out: &BackupOutcome,
        kind: &str,
        cfg: &Config,
    ) -> backstop_source::Result<backstop_source::RestoreReport> {
        backstop_source::restore(&self.repo, &out.snapshot, kind, cfg, &NoProgress, &CancelToken::new())
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
    tool(
        "qemu-img",
        &[
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
        ],
    );
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
    ] {
        let err = backstop_source::validate(kind, &config(cfg)).unwrap_err();
        assert!(err.to_string().contains(expect), "{kind}: {err}");
    }
    let err = backstop_source::backup_tree("image", &config(json!({"path": "/does/not/exist.raw"}))).err().unwrap();
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
