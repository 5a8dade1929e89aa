//! A MariaDB (or MySQL) server for tests, found or started — never skipped.
//!
//! In order: the server named by `BACKSTOP_TEST_MYSQL` (`mysql://root@HOST:PORT`,
//! or `private`); one on 127.0.0.1:3306 that lets `root` in without a
//! password (Debian's packaged server as set up here); otherwise a private
//! server made with `mariadb-install-db` from Debian's `mariadb-server`
//! package (`scripts/test` installs it when missing), on a free port under
//! a temporary directory, stopped when the test process exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::postgres::{chown_tree, free_port, nanos};

#[derive(Debug)]
pub struct Mysql {
    host: String,
    port: u16,
}

static SERVER: OnceLock<Mysql> = OnceLock::new();

impl Mysql {
    pub fn get() -> &'static Mysql {
        SERVER.get_or_init(|| {
            match std::env::var("BACKSTOP_TEST_MYSQL") {
                Ok(v) if v == "private" => return start_private(),
                Ok(url) => {
                    let rest = url.rsplit_once('@').map(|(_, r)| r).unwrap_or(&url);
                    let rest = rest.trim_start_matches("mysql://").split('/').next().unwrap_or("127.0.0.1");
                    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "3306"));
                    return Mysql { host: host.into(), port: port.parse().expect("BACKSTOP_TEST_MYSQL: port") };
                }
                Err(_) => {}
            }
            let local = Mysql { host: "127.0.0.1".into(), port: 3306 };
            if local.sql("", "SELECT 1").is_ok() {
                return local;
            }
            start_private()
        })
    }

    /// Run SQL as root against `database` (may be empty); the output rows.
    pub fn sql(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(client());
        cmd.args(["--no-defaults", "-N", "-B", "--connect-timeout=5", "-uroot"])
            .arg(format!("--host={}", self.host))
            .arg(format!("--port={}", self.port))
            .args(["-e", sql])
            .env_remove("MYSQL_PWD")
            .stdin(Stdio::null());
        if !database.is_empty() {
            cmd.arg(database);
        }
        let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", client()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A new, empty database; returns its name.
    pub fn fresh_database(&self) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("backstop_test_{}_{}_{n}", std::process::id(), nanos());
        self.sql("", &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
        name
    }

    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@{}:{}/{database}", self.host, self.port)
    }
}

fn client() -> &'static str {
    if which("mariadb") { "mariadb" } else { "mysql" }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn start_private() -> Mysql {
    assert!(
        which("mariadb-install-db") && (which("mariadbd") || PathBuf::from("/usr/sbin/mariadbd").exists()),
        "the tests need MariaDB: none answers on 127.0.0.1:3306 and mariadb-install-db is not installed. \
         Install it with `apt-get install mariadb-server` (scripts/test does), or point BACKSTOP_TEST_MYSQL at a server."
    );
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        let name = std::ffi::CString::new("mysql").expect("no NUL");
        // SAFETY: name is NUL-terminated; the entry is read at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(!pw.is_null(), "tests run as root need the `mysql` user (apt-get install mariadb-server)");
        // SAFETY: pw is non-null.
        unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
    } else {
        None
    };
    let dir = std::env::temp_dir().join(format!("backstop-test-mysql-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).expect("create the private server's directory");
    if let Some((uid, gid)) = user {
        chown_tree(&dir, uid, gid);
        chown_tree(&dir.join("data"), uid, gid);
    }
    let mut install = Command::new("mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if user.is_some() {
        install.arg("--user=mysql");
    }
    let out = install.output().expect("run mariadb-install-db");
    assert!(out.status.success(), "mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
    let port = free_port();
    let server = if which("mariadbd") { PathBuf::from("mariadbd") } else { PathBuf::from("/usr/sbin/mariadbd") };
    let mut cmd = Command::new(server);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg(format!("--port={port}"))
        .args(["--bind-address=127.0.0.1", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Switched by us, not by mariadbd's --user: a credential change clears
    // the parent-death signal, and ours is set after it.
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    crate::server::spawn_for_process_life(cmd, "mariadbd");
    crate::server::remove_at_exit(dir);
    let db = Mysql { host: "127.0.0.1".into(), port };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match db.sql("", "SELECT 1") {
            Ok(_) => return db,
            Err(e) if Instant::now() > deadline => panic!("the private MariaDB did not come up: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
