//! `postgres` and `mysql`: databases through their own dump and restore
//! tools. Connection details go to the tools in environment variables and
//! arguments; a password never appears on a command line (it travels in
//! `PGPASSWORD` / `MYSQL_PWD`) and never in the snapshot's label.
//!
//! PostgreSQL: `pg_dump -Fc` per database, plus `pg_dumpall --globals-only`
//! (roles, tablespaces) when the whole cluster is backed up; restore with
//! `pg_restore` into the same or another database or server.
//! MariaDB/MySQL: `mariadb-dump --single-transaction` (or `mysqldump`) per
//! database; restore with `mariadb` (or `mysql`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use backstop_confine::NetScope;
use backstop_repo::backup::BackupSource;
use backstop_repo::backup::source::{EntryData, SourceEntry, SourceTree};
use backstop_secret::Secret;
use url::Url;

use crate::packager::{ConfigField, Packager, SourceKind};
use crate::process::{ChildStream, run, run_with_input};
use crate::{
    Config, Error, Reach, RestoreContext, RestoreReport, Result, Touches, known_keys, opt_bool, opt_list, opt_str,
    req_str,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mysql,
}

impl Engine {
    /// The port a server listens on when its URL names none.
    fn default_port(self) -> u16 {
        match self {
            Engine::Postgres => 5432,
            Engine::Mysql => 3306,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }
}

/// Where the server is and what to dump.
#[derive(Clone, Debug)]
pub struct DbConfig {
    pub engine: Engine,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    password: Option<Secret<String>>,
    /// From the URL's path: one database.
    pub database: Option<String>,
    /// `databases=a,b`: these databases (no globals).
    pub databases: Vec<String>,
    /// A Unix socket (`?host=/run/postgresql` or `?socket=/run/mysqld/mysqld.sock`).
    pub socket: Option<String>,
    pub sslmode: Option<String>,
    /// A confined tenant's: the one address the tools connect to (checked
    /// against its grants), and nothing of the workers' own setup (service
    /// files, password files, option files) is read.
    confined: Option<Confined>,
}

#[derive(Clone, Debug)]
struct Confined {
    /// `None` for a granted Unix socket.
    addr: Option<SocketAddr>,
}

/// Names Backstop passes to the tools: letters, digits, `_`, `-`, `.`, `$`
/// (nothing a tool could read as a connection string or SQL).
fn valid_db_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        && name != "."
        && name != ".."
}

impl DbConfig {
    pub fn parse(engine: Engine, config: &Config) -> Result<DbConfig> {
        let kind = engine.kind();
        known_keys(config, kind, &["url", "password", "databases"])?;
        let text = req_str(config, "url", kind)?;
        let url = Url::parse(&text).map_err(|e| Error::Invalid(format!("{kind} url: {e}")))?;
        let schemes: &[&str] =
            if engine == Engine::Postgres { &["postgres", "postgresql"] } else { &["mysql", "mariadb"] };
        if !schemes.contains(&url.scheme()) {
            return Err(Error::Invalid(format!("a {kind} url starts with {}://", schemes[0])));
        }
        // Percent-decoding only: a `+` in a password or name is a `+`.
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|v| v.into_owned());
        let database = match url.path().trim_start_matches('/') {
            "" => None,
            db => Some(decode(db).unwrap_or_default()),
        };
        let mut socket = None;
        let mut sslmode = None;
        for (k, v) in url.query_pairs() {
            match (engine, k.as_ref()) {
                // One socket: a libpq host list would hide other hosts behind it.
                (Engine::Postgres, "host") | (Engine::Mysql, "socket") if v.contains(',') => {
                    return Err(Error::Invalid(format!("{kind} url: {k} names one socket (no commas)")));
                }
                (Engine::Postgres, "host") | (Engine::Mysql, "socket") => socket = Some(v.into_owned()),
                (Engine::Postgres, "sslmode") => sslmode = Some(v.into_owned()),
                (_, other) => return Err(Error::Invalid(format!("unknown {kind} url parameter {other:?}"))),
            }
        }
        let databases = opt_list(config, "databases", |_| Ok(()))?.unwrap_or_default();
        for db in database.iter().chain(&databases) {
            if !valid_db_name(db) {
                return Err(Error::Invalid(format!("{db:?} is not a database name Backstop can use")));
            }
        }
        if database.is_some() && !databases.is_empty() {
            return Err(Error::Invalid("give the database in the url or in databases=, not both".into()));
        }
        let password = match opt_str(config, "password")? {
            Some(p) => Some(p),
            None => url.password().and_then(decode),
        };
        Ok(DbConfig {
            engine,
            host: url.host_str().filter(|h| !h.is_empty()).map(str::to_string),
            port: url.port(),
            user: Some(url.username()).filter(|u| !u.is_empty()).and_then(decode),
            password: password.map(Secret::new),
            database,
            databases,
            socket,
            sslmode,
            confined: None,
        })
    }

    /// This configuration as a job confined to `net` may use it: its
    /// socket must be granted, or its host named and resolved to a granted
    /// address, which is the one the tools then connect to (no second
    /// lookup, no default socket). Unchanged for [`NetScope::Any`].
    pub fn confined(mut self, net: &NetScope) -> Result<DbConfig> {
        if net.is_any() {
            return Ok(self);
        }
        let refused = |e: backstop_confine::NetError| Error::Invalid(e.to_string());
        if let Some(socket) = &self.socket {
            net.check_unix(Path::new(socket)).map_err(refused)?;
            self.confined = Some(Confined { addr: None });
            return Ok(self);
        }
        let Some(host) = self.host.clone() else {
            return Err(Error::Invalid(format!(
                "{} names no host: a tenant's database is reached over the network (give {}://HOST[:PORT]/…)",
                self.label(),
                self.engine.kind()
            )));
        };
        let port = self.port.unwrap_or(match self.engine {
            Engine::Postgres => 5432,
            Engine::Mysql => 3306,
        });
        let addr = net.resolve(&host, port).map_err(refused)?[0];
        self.confined = Some(Confined { addr: Some(addr) });
        Ok(self)
    }

    /// The URL without its password.
    pub fn label(&self) -> String {
        let user = self.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
        let host = self.host.clone().unwrap_or_default();
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let db = self.database.clone().unwrap_or_default();
        format!("{}://{user}{host}{port}/{db}", self.engine.kind())
    }

    /// A tool with the connection in its environment (PostgreSQL) or
    /// arguments (MariaDB), the password in the environment.
    fn tool(&self, program: &str, database: Option<&str>) -> Command {
        let mut c = Command::new(program);
        if self.confined.is_some() {
            // Nothing of the workers' own: no PG*/MYSQL* variables, no
            // ~/.pgpass or service files, no option files.
            c.env_clear();
            if let Some(path) = std::env::var_os("PATH") {
                c.env("PATH", path);
            }
            c.env("HOME", "/nonexistent").env("PGPASSFILE", "/dev/null").env("PGSYSCONFDIR", "/nonexistent");
            c.env("PGSERVICEFILE", "/dev/null");
            if self.engine == Engine::Mysql {
                // Must come first.
                c.arg("--no-defaults");
            }
        }
        if self.engine == Engine::Mysql && program != Self::program(&["mariadb-dump", "mysqldump"]) {
            // A server must not read the worker's files through the client.
            c.arg("--local-infile=0");
        }
        let pinned = self.confined.as_ref().and_then(|c| c.addr);
        match self.engine {
            Engine::Postgres => {
                for (var, value) in [
                    ("PGHOST", self.socket.clone().or_else(|| self.host.clone())),
                    ("PGHOSTADDR", pinned.map(|a| a.ip().to_string())),
                    ("PGPORT", pinned.map(|a| a.port()).or(self.port).map(|p| p.to_string())),
                    ("PGUSER", self.user.clone()),
                    ("PGPASSWORD", self.password.as_ref().map(|p| p.expose().clone())),
                    ("PGSSLMODE", self.sslmode.clone()),
                    ("PGDATABASE", database.map(str::to_string)),
                ] {
                    if let Some(value) = value {
                        c.env(var, value);
                    }
                }
                c.env("PGCONNECT_TIMEOUT", "30");
            }
            Engine::Mysql => {
                if let Some(socket) = &self.socket {
                    c.arg(format!("--socket={socket}"));
                } else if let Some(addr) = pinned {
                    // An address, over TCP: `localhost` would mean the socket.
                    c.arg(format!("--host={}", addr.ip())).arg("--protocol=TCP").arg(format!("--port={}", addr.port()));
                } else if let Some(host) = &self.host {
                    c.arg(format!("--host={host}"));
                }
                if let (Some(port), None) = (self.port, pinned) {
                    c.arg(format!("--port={port}"));
                }
                if let Some(user) = &self.user {
                    c.arg(format!("--user={user}"));
                }
                if let Some(password) = &self.password {
                    c.env("MYSQL_PWD", password.expose());
                }
            }
        }
        c
    }

    /// The first of `programs` that is installed.
    fn program(programs: &[&'static str]) -> &'static str {
        let on_path = |p: &str| {
            std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(p).is_file()))
        };
        programs.iter().copied().find(|p| on_path(p)).unwrap_or(programs[0])
    }

    fn client(&self) -> &'static str {
        match self.engine {
            Engine::Postgres => "psql",
            Engine::Mysql => Self::program(&["mariadb", "mysql"]),
        }
    }

    /// Every database a whole-server backup includes.
    fn list_databases(&self) -> Result<Vec<String>> {
        let out = match self.engine {
            Engine::Postgres => {
                let mut c = self.tool("psql", Some("postgres"));
                c.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
                    .arg("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname");
                run(c)?
            }
            Engine::Mysql => {
                let mut c = self.tool(self.client(), None);
                c.args(["-N", "-B", "-e", "SHOW DATABASES"]);
                run(c)?
            }
        };
        let system = ["information_schema", "performance_schema", "sys", "mysql"];
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|d| !(d.is_empty() || self.engine == Engine::Mysql && system.contains(d)))
            .map(str::to_string)
            .collect())
    }

    fn dump_command(&self, database: &str) -> Command {
        match self.engine {
            Engine::Postgres => {
                let mut c = self.tool("pg_dump", Some(database));
                c.args(["--format=custom", "--no-password"]);
                c
            }
            Engine::Mysql => {
                let mut c = self.tool(Self::program(&["mariadb-dump", "mysqldump"]), None);
                c.args(["--single-transaction", "--routines", "--triggers", "--events", "--hex-blob", "--"])
                    .arg(database);
                c
            }
        }
    }

    fn extension(&self) -> &'static str {
        match self.engine {
            Engine::Postgres => "dump",
            Engine::Mysql => "sql",
        }
    }
}

fn stream(command: Command) -> EntryData {
    EntryData::Stream(Box::new(move || {
        let s = ChildStream::spawn(command).map_err(std::io::Error::other)?;
        Ok(Box::new(s) as Box<dyn std::io::Read + Send>)
    }))
}

pub fn tree(config: &DbConfig) -> Result<SourceTree> {
    let mut entries = Vec::new();
    let databases = match (&config.database, config.databases.is_empty()) {
        (Some(db), _) => vec![db.clone()],
        (None, false) => config.databases.clone(),
        (None, true) => {
            // The whole server: this also proves we can connect, before the backup starts.
            let all = config.list_databases()?;
            if config.engine == Engine::Postgres {
                let mut c = config.tool("pg_dumpall", None);
                c.args(["--globals-only", "--no-password"]);
                entries.push(SourceEntry { path: "globals.sql".into(), mode: 0o600, data: stream(c) });
            }
            all
        }
    };
    if databases.is_empty() && entries.is_empty() {
        return Err(Error::Invalid(format!("{} has no databases to back up", config.label())));
    }
    for db in databases {
        entries.push(SourceEntry {
            path: format!("databases/{db}.{}", config.extension()),
            mode: 0o600,
            data: stream(config.dump_command(&db)),
        });
    }
    Ok(SourceTree {
        kind: config.engine.kind().into(),
        label: config.label(),
        entries,
        image_chunk_size: crate::image::DEFAULT_CHUNK,
        notes: Vec::new(),
        capture: None,
    })
}

/// Whether `client` takes `--sandbox` (no shell commands or file access
/// from the SQL it reads), asked once.
fn client_has_sandbox(client: &str) -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(has) = HAS.get() {
        return *has;
    }
    let Ok(out) = Command::new(client).arg("--help").stdin(std::process::Stdio::null()).output() else {
        return false; // not known yet: asked again next time
    };
    let has = String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some("--sandbox"));
    *HAS.get_or_init(|| has)
}

/// Create `database` on the server unless it exists.
fn ensure_database(config: &DbConfig, database: &str) -> Result<()> {
    match config.engine {
        Engine::Postgres => {
            let mut c = config.tool("psql", Some("postgres"));
            c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v"]).arg(format!("name={database}"));
            // Variables are interpolated in a script, quoted by psql itself.
            run_with_input(c, |stdin| {
                stdin
                    .write_all(
                        b"SELECT format('CREATE DATABASE %I', :'name') WHERE NOT EXISTS \
                          (SELECT 1 FROM pg_database WHERE datname = :'name') \\gexec\n",
                    )
                    .map_err(|e| Error::Tool(format!("psql: {e}")))
            })?;
        }
        Engine::Mysql => {
            let mut c = config.tool(config.client(), None);
            c.arg("-e").arg(format!("CREATE DATABASE IF NOT EXISTS `{database}`"));
            run(c)?;
        }
    }
    Ok(())
}

/// `--to postgres://…/DB` or `--to mysql://…/DB` restores one dump into DB
/// (created when missing); without a database, every dump goes into a
/// database of its own name (and PostgreSQL's globals first).
pub(crate) fn restore(ctx: &RestoreContext, engine: Engine, config: &Config, net: &NetScope) -> Result<RestoreReport> {
    let mut db_config = config.clone();
    let chosen = opt_str(config, "entry")?;
    let clean = opt_bool(config, "clean")?;
    db_config.remove("entry");
    db_config.remove("clean");
    let target = DbConfig::parse(engine, &db_config)?.confined(net)?;
    let confined = !net.is_any();
    // A tenant's restore feeds a database only what a backup of that kind
    // made, never a file of its own choosing from another snapshot.
    let made_by = ctx.snapshot.source.as_ref().map(|s| s.kind.as_str());
    if confined && made_by != Some(engine.kind()) {
        return Err(Error::Invalid(format!(
            "the snapshot is not a {} backup (it holds {}); a tenant restores a database from its own dumps",
            engine.kind(),
            made_by.unwrap_or("files")
        )));
    }
    let ext = format!(".{}", target.extension());
    let dumps: Vec<&(String, _)> =
        ctx.entries.iter().filter(|(p, _)| p.starts_with("databases/") && p.ends_with(&ext)).collect();
    let mut report = RestoreReport::default();
    let mut plan: Vec<(String, String)> = Vec::new(); // (entry, database)
    match &target.database {
        Some(db) => {
            let entry = match chosen {
                Some(e) => ctx.single(Some(&e), "dump")?.0.clone(),
                None if dumps.len() == 1 => dumps[0].0.clone(),
                None => {
                    return Err(Error::Invalid(format!(
                        "the snapshot holds {} database dumps; choose one with the option entry=PATH (one of: {})",
                        dumps.len(),
                        dumps.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                }
            };
            plan.push((entry, db.clone()));
        }
        None => {
            if engine == Engine::Postgres && ctx.entries.iter().any(|(p, _)| p == "globals.sql") && confined {
                // Roles and tablespaces are the server's, and psql would run
                // whatever meta-commands (\!) the script holds.
                ctx.progress.info("globals.sql (roles, tablespaces) is not restored for a tenant");
            } else if engine == Engine::Postgres && ctx.entries.iter().any(|(p, _)| p == "globals.sql") {
                // Roles that exist already only warn: psql goes on.
                let c = target.tool("psql", Some("postgres"));
                let mut c = c;
                c.args(["-X", "-q"]);
                run_with_input(c, |stdin| ctx.dump("globals.sql", stdin).map(drop))?;
                report.restored.push(("globals.sql".into(), target.label()));
            }
            for (path, _) in &dumps {
                let name = path.trim_start_matches("databases/").trim_end_matches(&ext).to_string();
                plan.push((path.clone(), name));
            }
        }
    }
    // A target that names its databases (a source's `databases=`) takes only those.
    if !target.databases.is_empty() {
        plan.retain(|(_, db)| target.databases.contains(db));
    }
    if plan.is_empty() {
        return Err(Error::Invalid("the snapshot holds no database dumps (for the databases the target names)".into()));
    }
    // The dump is SQL text, and the client would run what client commands
    // it holds: shell escapes (\!, system), an editor (\e), files (source,
    // tee), connections to other servers (\r). --binary-mode turns all of
    // them off but DELIMITER; --sandbox refuses the file and shell ones
    // even so. Decided before anything is created.
    let sandbox = engine == Engine::Mysql && client_has_sandbox(target.client());
    if engine == Engine::Mysql && !sandbox && confined {
        return Err(Error::Invalid(format!(
            "{} has no --sandbox (MariaDB 10.5.25, 10.6.18, 10.11.8 or later): a tenant's SQL is not fed to a \
             client that could run its shell commands",
            target.client()
        )));
    }
    for (entry, db) in plan {
        if !valid_db_name(&db) {
            return Err(Error::Invalid(format!("{db:?} is not a database name Backstop can use")));
        }
        ensure_database(&target, &db)?;
        let c = match engine {
            Engine::Postgres => {
                let mut c = target.tool("pg_restore", None);
                c.args(["--no-owner", "--exit-on-error", "--no-password", "--dbname"]).arg(&db);
                if clean {
                    c.args(["--clean", "--if-exists"]);
                }
                c
            }
            Engine::Mysql => {
                let mut c = target.tool(target.client(), None);
                c.arg("--binary-mode").env("EDITOR", "false").env("VISUAL", "false");
                if sandbox {
                    c.arg("--sandbox");
                } else {
                    ctx.progress.info("the mysql client has no --sandbox: only --binary-mode holds its commands back");
                }
                c.arg("--").arg(&db);
                c
            }
        };
        run_with_input(c, |stdin| ctx.dump(&entry, stdin).map(drop))?;
        let mut where_to = target.clone();
        where_to.database = Some(db);
        ctx.progress.info(&format!("{entry} restored into {}", where_to.label()));
        report.restored.push((entry, where_to.label()));
    }
    Ok(report)
}

/// The `postgres` and `mysql` kinds: one packager per engine.
pub struct Database(Engine);

pub const POSTGRES: Database = Database(Engine::Postgres);
pub const MYSQL: Database = Database(Engine::Mysql);

impl Packager for Database {
    fn kind(&self) -> SourceKind {
        match self.0 {
            Engine::Postgres => SourceKind::Postgres,
            Engine::Mysql => SourceKind::Mysql,
        }
    }

    fn target_key(&self) -> Option<&'static str> {
        Some("url")
    }

    fn validate(&self, config: &Config) -> Result<()> {
        DbConfig::parse(self.0, config).map(drop)
    }

    fn fields(&self) -> &'static [ConfigField] {
        const FIELDS: &[ConfigField] = &[
            ConfigField::text(
                "url",
                "URL",
                "postgres://user@host:port/db or mysql://user@host:port/db, without the password",
            )
            .required(),
            ConfigField::lines("databases", "Databases", "one per line; none: the URL's database, or all of them"),
            ConfigField::secret("password", "Password", "the database user's password"),
        ];
        FIELDS
    }

    fn touches(&self, config: &Config, _restore: bool) -> Result<Touches> {
        let c = DbConfig::parse(self.0, config)?;
        let mut out = Touches::default();
        match (&c.socket, &c.host) {
            (Some(socket), _) => out.sockets.push(socket.into()),
            (None, Some(host)) => out.hosts.push((host.clone(), c.port.unwrap_or(self.0.default_port()))),
            (None, None) => {
                out.workers_own = Some(format!("a {} URL without a host uses the workers' local socket", self.0.kind()))
            }
        }
        Ok(out)
    }

    fn backup(&self, config: &Config, reach: &Reach) -> Result<BackupSource> {
        Ok(BackupSource::Tree(tree(&DbConfig::parse(self.0, config)?.confined(&reach.net)?)?))
    }

    fn restore_connection(&self) -> Option<&'static [&'static str]> {
        Some(&["url", "password", "databases"])
    }

    fn validate_restore(&self, config: &Config) -> Result<()> {
        self.validate(&crate::without_restore_keys(config))
    }

    fn restore(&self, ctx: &RestoreContext, config: &Config, reach: &Reach) -> Result<RestoreReport> {
        restore(ctx, self.0, config, &reach.net)
    }
}
