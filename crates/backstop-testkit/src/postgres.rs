//! A PostgreSQL server for tests, found or started — never skipped.
//!
//! In order: the server named by `BACKSTOP_TEST_POSTGRES` (a URL of a
//! role that may create databases, or `private` to skip the search); one on 127.0.0.1:5432 that lets
//! `postgres` in without a password (Debian's packaged server with trust
//! auth); otherwise a private cluster made with `initdb` from Debian's
//! `postgresql` package (`scripts/test` installs it when missing), started
//! on a free port under a temporary directory, and stopped when the test
//! process exits. Each test gets a fresh database of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the tests' PostgreSQL server is.
#[derive(Debug)]
pub struct Postgres {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    /// Where psql and friends are.
    bin: Option<PathBuf>,
}

static SERVER: OnceLock<Postgres> = OnceLock::new();

impl Postgres {
    /// The shared server, found or started on first use. Panics with what
    /// to do when there is no way to get one.
    pub fn get() -> &'static Postgres {
        SERVER.get_or_init(|| {
            match std::env::var("BACKSTOP_TEST_POSTGRES") {
                Ok(v) if v == "private" => return start_private_cluster(),
                Ok(url) => return Postgres::from_url(&url),
                Err(_) => {}
            }
            let local = Postgres {
                host: "127.0.0.1".into(),
                port: 5432,
                user: "postgres".into(),
                password: None,
                bin: pg_bin_dir(),
            };
            if local.psql("postgres", "SELECT 1").is_ok() {
                return local;
            }
            start_private_cluster()
        })
    }

    fn from_url(url: &str) -> Postgres {
        // postgres://user[:password]@host[:port][/db]
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
        let (auth, hostpart) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
        let (user, password) = match auth.split_once(':') {
            Some((u, p)) => (u.to_string(), Some(p.to_string())),
            None => (auth.to_string(), None),
        };
        let hostport = hostpart.split('/').next().unwrap_or("127.0.0.1");
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().expect("BACKSTOP_TEST_POSTGRES: port is a number")),
            None => (hostport.to_string(), 5432),
        };
        Postgres { host, port, user, password, bin: pg_bin_dir() }
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.as_ref().map(|b| b.join(name)).filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from(name))
    }

    /// Run one SQL statement with psql against `database`.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.tool("psql"));
        cmd.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.host, "-p", &self.port.to_string(), "-U", &self.user, "-d", database, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null());
        match &self.password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
        let out = cmd.output().map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A new, empty database; returns its URL.
    pub fn fresh_database(&self) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("backstop_test_{}_{}_{n}", std::process::id(), nanos());
        self.psql("postgres", &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        let auth = match &self.password {
            Some(p) => format!("{}:{p}", self.user),
            None => self.user.clone(),
        };
        format!("postgres://{auth}@{}:{}/{database}", self.host, self.port)
    }
}

pub(crate) fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() % 1_000_000).unwrap_or(0)
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The uid/gid PostgreSQL runs as: ours, or `postgres`'s when we are root
/// (initdb refuses to run as root).
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: name is NUL-terminated; the result is read before any other getpw call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "tests run as root need the `postgres` user to start a private PostgreSQL (apt-get install postgresql)"
    );
    // SAFETY: pw is non-null and points to a valid passwd entry.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

pub(crate) fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: c is NUL-terminated.
    unsafe { libc::chown(c.as_ptr(), uid, gid) };
}

fn as_server_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn start_private_cluster() -> Postgres {
    let bin = pg_bin_dir().unwrap_or_else(|| {
        panic!(
            "the tests need PostgreSQL: none answers on 127.0.0.1:5432 and initdb is not installed. \
             Install it with `apt-get install postgresql` (scripts/test does), or point \
             BACKSTOP_TEST_POSTGRES at a server."
        )
    });
    let user = server_user();
    let dir = std::env::temp_dir().join(format!("backstop-test-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the private cluster's directory");
    let data = dir.join("data");
    if let Some((uid, gid)) = user {
        chown_tree(&dir, uid, gid);
    }
    let mut initdb = Command::new(bin.join("initdb"));
    initdb.args(["-D"]).arg(&data).args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]);
    initdb.stdout(Stdio::null()).stderr(Stdio::piped());
    as_server_user(&mut initdb, user);
    let out = initdb.output().expect("run initdb");
    assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));

    let port = free_port();
    // The postmaster is started from a thread that lives as long as the
    // process, with a parent-death signal: it stops when the tests end.
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D").arg(&data).args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"]);
    cmd.arg("-c").arg(format!("unix_socket_directories={}", dir.display()));
    cmd.args(["-c", "fsync=off", "-c", "max_connections=200"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    as_server_user(&mut cmd, user);
    crate::server::spawn_for_process_life(cmd, "postgres");
    crate::server::remove_at_exit(dir);
    let pg = Postgres { host: "127.0.0.1".into(), port, user: "postgres".into(), password: None, bin: Some(bin) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match pg.psql("postgres", "SELECT 1") {
            Ok(_) => return pg,
            Err(e) if Instant::now() > deadline => panic!("the private PostgreSQL did not come up: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
