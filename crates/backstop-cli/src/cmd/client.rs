//! The service's command-line client: `backstop plans|jobs|repos|sources|
//! tokens|tenants|catalog … --server URL` with `BACKSTOP_TOKEN`.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use backstop_client::{ApiClient, CallOptions};
use backstop_types::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::global::Context;
use crate::output::print_json;

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// The coordinator's address (`backstop serve` prints it).
    #[arg(long, env = "BACKSTOP_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// API token (prefer BACKSTOP_TOKEN: command lines are visible to other users).
    #[arg(long, env = "BACKSTOP_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// The API client ([`backstop_client`], which the workers use too), called
/// from the CLI's synchronous commands.
pub struct Client {
    api: ApiClient,
    rt: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(args: &ServerArgs) -> Result<Client> {
        let base =
            args.server.clone().ok_or_else(|| anyhow!("no server given: pass --server URL or set BACKSTOP_SERVER"))?;
        let token = args.token.clone().ok_or_else(|| {
            anyhow!("no token given: set BACKSTOP_TOKEN (the admin token is printed on the server's first start)")
        })?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Client { api: ApiClient::new(&base, token.into())?, rt })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.rt.block_on(self.api.get(path))?)
    }

    /// Every item of a paginated list, following the cursors.
    pub fn all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit=1000&cursor={c}"),
                None => format!("{path}{sep}limit=1000"),
            };
            let page: Page<T> = self.get(&url)?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize, key: Option<&str>) -> Result<T> {
        let options = CallOptions { idempotency_key: key, ..CallOptions::default() };
        Ok(self.rt.block_on(self.api.post(path, body, &options))?)
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        Ok(self.rt.block_on(self.api.delete(path))?)
    }

    /// Follow a job's event stream (SSE), calling `each` per event, until the job ends.
    pub fn follow(&self, job: &str, each: impl FnMut(&JobEvent)) -> Result<()> {
        let reconnect = |e: &backstop_client::ClientError| eprintln!("(connection lost: {e}; reconnecting)");
        self.rt.block_on(self.api.follow(job, 0, each, reconnect)).with_context(|| format!("following job {job}"))
    }
}

fn print_table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

fn short(id: &str) -> String {
    id.chars().take(13).collect()
}

fn when(t: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.as_ref().map(crate::output::local_time).unwrap_or_else(|| "-".into())
}

fn print_jobs(jobs: &[Job]) {
    let mut rows = vec![vec![
        "ID".into(),
        "KIND".into(),
        "STATE".into(),
        "ATTEMPT".into(),
        "CREATED".into(),
        "WHY WAITING / ERROR".into(),
    ]];
    for j in jobs {
        let note = match j.state {
            JobState::Queued => j.wait_reason.clone().unwrap_or_default(),
            JobState::Failed | JobState::Dead => j.error.clone().unwrap_or_default(),
            _ => String::new(),
        };
        rows.push(vec![
            j.id.clone(),
            j.kind.as_str().into(),
            j.state.as_str().into(),
            format!("{}/{}", j.attempt, j.max_attempts),
            crate::output::local_time(&j.created),
            note,
        ]);
    }
    print_table(rows);
}

fn print_job(j: &Job) {
    println!("job {}", j.id);
    println!("  kind:        {}", j.kind.as_str());
    println!("  state:       {}", j.state.as_str());
    if let Some(w) = &j.wait_reason {
        println!("  waiting:     {w}");
    }
    println!("  attempt:     {} of {}", j.attempt, j.max_attempts);
    println!("  repository:  {}  region {}", j.repository, j.region);
    if let Some(p) = &j.plan {
        println!("  plan:        {p}");
    }
    println!("  created:     {}", crate::output::local_time(&j.created));
    println!("  started:     {}", when(&j.started));
    println!("  finished:    {}", when(&j.finished));
    if let Some(p) = &j.progress {
        println!(
            "  progress:    {} of {} files, {} of {} ({} new, {} reused)",
            p.files_done,
            p.files_total,
            crate::output::bytes(p.bytes_done),
            crate::output::bytes(p.bytes_total),
            crate::output::bytes(p.bytes_new),
            crate::output::bytes(p.bytes_reused)
        );
        if let Some(eta) = p.eta_seconds {
            println!("  rate:        {}/s, about {eta} s left", crate::output::bytes(p.rate));
        }
    }
    if let Some(e) = &j.error {
        println!("  error:       {e}");
    }
    if let Some(r) = &j.result {
        println!("  result:      {r}");
    }
}

fn print_event(e: &JobEvent) {
    let time = crate::output::local_time(&e.time);
    match e.kind {
        EventKind::Log => println!(
            "{time} {:<7} {}",
            e.data.get("level").and_then(Value::as_str).unwrap_or("info"),
            e.data.get("message").and_then(Value::as_str).unwrap_or_default()
        ),
        EventKind::State => {
            let mut line = format!("{time} state   {}", e.data.get("state").and_then(Value::as_str).unwrap_or("?"));
            if let Some(err) = e.data.get("error").and_then(Value::as_str) {
                line.push_str(&format!(": {err}"));
            }
            if let Some(w) = e.data.get("wait_reason").and_then(Value::as_str) {
                line.push_str(&format!(" ({w})"));
            }
            println!("{line}");
        }
        EventKind::Progress => {
            if let Ok(p) = serde_json::from_value::<JobProgress>(e.data.clone()) {
                println!(
                    "{time} progress {} files, {} of {} ({}/s)",
                    p.files_done,
                    crate::output::bytes(p.bytes_done),
                    crate::output::bytes(p.bytes_total),
                    crate::output::bytes(p.rate)
                );
            }
        }
    }
}

/// Exit status of a finished job: 0 succeeded, 1 otherwise.
fn job_exit(j: &Job) -> u8 {
    if j.state == JobState::Succeeded { 0 } else { crate::exit::ERROR }
}

fn wait(client: &Client, id: &str, timeout: Option<u64>) -> Result<Job> {
    let deadline = timeout.map(|t| std::time::Instant::now() + Duration::from_secs(t));
    loop {
        let job: Job = client.get(&format!("/api/v1/jobs/{id}"))?;
        if job.state.is_finished() {
            return Ok(job);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            bail!("job {id} is still {} after the timeout", job.state.as_str());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---- jobs -----------------------------------------------------------------

#[derive(clap::Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one job.
    Get { id: String },
    /// Print a job's log (and state changes); --follow streams it live until the job ends.
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a job (a running one stops within seconds).
    Cancel { id: String },
    /// Submit a job: backup, verify, check, prune, retention or restore; prints its id.
    Submit {
        /// backup, verify, check, prune, retention or restore.
        kind: String,
        /// Run on this plan's source and repository.
        #[arg(long)]
        plan: Option<String>,
        /// Or name the repository (and, for a backup, the source).
        #[arg(long)]
        repository: Option<String>,
        #[arg(long)]
        source: Option<String>,
        /// Job parameters, e.g. `target=/srv/restore snapshot=latest 'include=["/etc"]' verify=true`
        /// for a restore, `read_data=10%` for a check (repeatable; JSON values stay typed).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Make a repeated request return the first job instead of creating another.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// Wait for the job to end (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// Wait until a job ends; exit 0 if it succeeded, 1 otherwise.
    Wait {
        id: String,
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },
}

pub fn jobs(ctx: &Context, server: &ServerArgs, command: JobsCommand) -> Result<u8> {
    let client = Client::new(server)?;
    match command {
        JobsCommand::List { state, kind, plan, limit } => {
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [("state", state), ("kind", kind), ("plan", plan)] {
                if let Some(v) = v {
                    q.push(format!("{k}={v}"));
                }
            }
            let page: Page<Job> = client.get(&format!("/api/v1/jobs?{}", q.join("&")))?;
            if ctx.args.json {
                print_json(&page.items);
            } else {
                print_jobs(&page.items);
            }
        }
        JobsCommand::Get { id } => {
            let job: Job = client.get(&format!("/api/v1/jobs/{id}"))?;
            if ctx.args.json { print_json(&job) } else { print_job(&job) }
        }
        JobsCommand::Logs { id, follow } => {
            if follow {
                client.follow(&id, |e| if ctx.args.json { print_json(e) } else { print_event(e) })?;
                let job: Job = client.get(&format!("/api/v1/jobs/{id}"))?;
                return Ok(job_exit(&job));
            }
            let events: Vec<JobEvent> = client.get(&format!("/api/v1/jobs/{id}/events?limit=10000"))?;
            for e in events.iter().filter(|e| e.kind != EventKind::Progress) {
                if ctx.args.json { print_json(e) } else { print_event(e) }
            }
        }
        JobsCommand::Cancel { id } => {
            let job: Job = client.post(&format!("/api/v1/jobs/{id}/cancel"), &json!({}), None)?;
            if ctx.args.json {
                print_json(&job);
            } else if job.state == JobState::Running {
                println!("cancellation requested; job {} stops at its next heartbeat", job.id);
            } else {
                println!("job {} is {}", job.id, job.state.as_str());
            }
        }
        JobsCommand::Submit { kind, plan, repository, source, params, idempotency_key, wait: w } => {
            let kind = JobKind::parse(&kind).ok_or_else(|| {
                anyhow!("unknown job kind {kind:?}: backup, verify, check, prune, retention or restore")
            })?;
            let mut p = serde_json::Map::new();
            for kv in &params {
                let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--param {kv:?} is not NAME=VALUE"))?;
                // JSON values (`verify=true`, `include=["/etc"]`, `percent=5`) stay typed; anything else is text.
                let value = serde_json::from_str::<Value>(v).unwrap_or_else(|_| json!(v));
                p.insert(k.to_string(), value);
            }
            let spec = JobSpec {
                kind,
                plan,
                repository,
                source,
                params: Value::Object(p),
                max_attempts: None,
                deadline_seconds: None,
            };
            let job: Job = client.post("/api/v1/jobs", &spec, idempotency_key.as_deref())?;
            if ctx.args.json && !w {
                print_json(&job);
            } else {
                println!("{}", job.id);
            }
            if w {
                let done = wait(&client, &job.id, None)?;
                if !ctx.args.quiet {
                    eprintln!("job {} {}", done.id, done.state.as_str());
                }
                return Ok(job_exit(&done));
            }
        }
        JobsCommand::Wait { id, timeout } => {
            let job = wait(&client, &id, timeout)?;
            if ctx.args.json {
                print_json(&job)
            } else {
                println!("job {} {}", job.id, job.state.as_str())
            }
            return Ok(job_exit(&job));
        }
    }
    Ok(0)
}

// ---- plans ----------------------------------------------------------------

#[derive(clap::Subcommand)]
pub enum PlansCommand {
    /// List plans.
    List,
    /// Show one plan.
    Get { plan: String },
    /// Create or replace a plan from a JSON file (see the PlanSpec schema in /api/v1/openapi.json).
    Put { file: std::path::PathBuf },
    /// Delete a plan.
    Delete { plan: String },
    /// Run the plan's backup now; prints the job id at once.
    Run {
        plan: String,
        /// Wait for the job to end (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
        /// Stream the job's log until it ends.
        #[arg(short, long)]
        follow: bool,
        /// Make a repeated request return the first job instead of starting another.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
}

pub fn plans(ctx: &Context, server: &ServerArgs, command: PlansCommand) -> Result<u8> {
    let client = Client::new(server)?;
    match command {
        PlansCommand::List => {
            let plans: Vec<Plan> = client.all("/api/v1/plans")?;
            if ctx.args.json {
                print_json(&plans);
            } else {
                let mut rows = vec![vec![
                    "NAME".into(),
                    "SCHEDULE".into(),
                    "TIME ZONE".into(),
                    "NEXT RUN".into(),
                    "ENABLED".into(),
                ]];
                for p in &plans {
                    rows.push(vec![
                        p.name.clone(),
                        p.schedule.clone().unwrap_or_else(|| "-".into()),
                        p.timezone.clone(),
                        when(&p.next_fire),
                        p.enabled.to_string(),
                    ]);
                }
                print_table(rows);
            }
        }
        PlansCommand::Get { plan } => print_json(&client.get::<Plan>(&format!("/api/v1/plans/{plan}"))?),
        PlansCommand::Put { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let spec: PlanSpec =
                serde_json::from_str(&text).with_context(|| format!("{} is not a plan", file.display()))?;
            let plan: Plan = client.post("/api/v1/plans", &spec, None)?;
            if ctx.args.json {
                print_json(&plan)
            } else {
                println!("plan {} saved (next run {})", plan.name, when(&plan.next_fire))
            }
        }
        PlansCommand::Delete { plan } => client.delete(&format!("/api/v1/plans/{plan}"))?,
        PlansCommand::Run { plan, wait: w, follow, idempotency_key } => {
            let job: Job = client.post(&format!("/api/v1/plans/{plan}/run"), &json!({}), idempotency_key.as_deref())?;
            if ctx.args.json && !w && !follow {
                print_json(&job);
            } else {
                println!("{}", job.id);
            }
            if follow {
                client.follow(&job.id, print_event)?;
            }
            if w || follow {
                let done = wait(&client, &job.id, None)?;
                if !ctx.args.quiet {
                    eprintln!("job {} {}", done.id, done.state.as_str());
                }
                return Ok(job_exit(&done));
            }
        }
    }
    Ok(0)
}

// ---- repositories, sources ------------------------------------------------

#[derive(clap::Subcommand)]
pub enum ReposCommand {
    List,
    /// Register a repository with the service (password from BACKSTOP_PASSWORD_FILE, BACKSTOP_PASSWORD or a prompt).
    Add {
        name: String,
        #[arg(long)]
        location: String,
        #[arg(long, default_value = "default")]
        region: String,
        /// Create the repository when the location is empty.
        #[arg(long)]
        init: bool,
        /// Jobs that may run on it at once.
        #[arg(long)]
        max_concurrent: Option<u32>,
    },
    /// Forget a repository (its data stays where it is).
    Remove {
        name: String,
    },
}

pub fn repos(ctx: &Context, server: &ServerArgs, command: ReposCommand) -> Result<u8> {
    let client = Client::new(server)?;
    match command {
        ReposCommand::List => {
            let repos: Vec<Repository> = client.all("/api/v1/repositories")?;
            if ctx.args.json {
                print_json(&repos);
            } else {
                let mut rows = vec![vec!["NAME".into(), "REGION".into(), "LOCATION".into(), "MAX JOBS".into()]];
                for r in &repos {
                    rows.push(vec![r.name.clone(), r.region.clone(), r.location.clone(), r.max_concurrent.to_string()]);
                }
                print_table(rows);
            }
        }
        ReposCommand::Add { name, location, region, init, max_concurrent } => {
            let password = ctx.password(init)?;
            let spec = RepositorySpec {
                name,
                location,
                region,
                password: password.expose().into(),
                options: vec![],
                max_concurrent,
                init,
            };
            let repo: Repository = client.post("/api/v1/repositories", &spec, None)?;
            if ctx.args.json {
                print_json(&repo)
            } else {
                println!("repository {} registered ({})", repo.name, repo.id)
            }
        }
        ReposCommand::Remove { name } => client.delete(&format!("/api/v1/repositories/{name}"))?,
    }
    Ok(0)
}

#[derive(clap::Subcommand)]
pub enum SourcesCommand {
    List,
    /// Register a source: file-system paths (--path), or any kind as
    /// KIND:TARGET with its options, as `backup --source` takes them
    /// (credentials among the options go to the source's secrets).
    Add {
        name: String,
        /// Absolute paths to back up (repeatable).
        #[arg(long = "path", required_unless_present = "source", conflicts_with = "source")]
        paths: Vec<String>,
        #[arg(long = "exclude", conflicts_with = "source")]
        excludes: Vec<String>,
        /// A source of another kind: image:PATH, qemu:SOCKET, postgres://…, … (see `backup --help`).
        #[arg(long, value_name = "KIND:TARGET")]
        source: Option<String>,
        /// An option of --source (repeatable).
        #[arg(long = "source-opt", value_name = "KEY=VALUE", requires = "source")]
        source_opt: Vec<String>,
        /// The host the data lives on (per-host limits; default: the worker's).
        #[arg(long)]
        host: Option<String>,
    },
    Remove {
        name: String,
    },
}

pub fn sources(ctx: &Context, server: &ServerArgs, command: SourcesCommand) -> Result<u8> {
    let client = Client::new(server)?;
    match command {
        SourcesCommand::List => {
            let sources: Vec<Source> = client.all("/api/v1/sources")?;
            if ctx.args.json {
                print_json(&sources);
            } else {
                let mut rows = vec![vec!["NAME".into(), "KIND".into(), "HOST".into(), "CONFIG".into()]];
                for s in &sources {
                    rows.push(vec![
                        s.name.clone(),
                        s.kind.as_str().to_string(),
                        s.host.clone().unwrap_or_default(),
                        s.config.to_string(),
                    ]);
                }
                print_table(rows);
            }
        }
        SourcesCommand::Add { name, paths, excludes, source, source_opt, host } => {
            let spec = match source {
                None => SourceSpec {
                    name,
                    kind: SourceKind::Fs,
                    host,
                    config: json!({"paths": paths, "excludes": excludes}),
                    secrets: json!({}).into(),
                },
                Some(spec) => {
                    let (kind, mut config) = backstop_source::from_spec(&spec, &source_opt)?;
                    let mut secrets = serde_json::Map::new();
                    for field in backstop_source::packager(kind).fields() {
                        if field.value == backstop_source::FieldValue::Secret
                            && let Some(value) = config.remove(field.key)
                        {
                            secrets.insert(field.key.to_string(), value);
                        }
                    }
                    SourceSpec {
                        name,
                        kind,
                        host,
                        config: serde_json::Value::Object(config),
                        secrets: serde_json::Value::Object(secrets).into(),
                    }
                }
            };
            let source: Source = client.post("/api/v1/sources", &spec, None)?;
            if ctx.args.json { print_json(&source) } else { println!("source {} registered", source.name) }
        }
        SourcesCommand::Remove { name } => client.delete(&format!("/api/v1/sources/{name}"))?,
    }
    Ok(0)
}

/// `backstop snapshots --server …`: the catalog's view.
pub fn snapshots(ctx: &Context, server: &ServerArgs, repository: Option<&str>) -> Result<u8> {
    let client = Client::new(server)?;
    let path = match repository {
        Some(r) => format!("/api/v1/snapshots?repository={r}"),
        None => "/api/v1/snapshots".to_string(),
    };
    let snaps: Vec<Snapshot> = client.all(&path)?;
    if ctx.args.json {
        print_json(&snaps);
    } else {
        let mut rows = vec![vec!["ID".into(), "TIME".into(), "HOST".into(), "REPOSITORY".into(), "PATHS".into()]];
        for s in &snaps {
            rows.push(vec![
                s.info.id.chars().take(8).collect(),
                crate::output::local_time(&s.info.time),
                s.info.hostname.clone(),
                short(&s.repository),
                s.info.paths.join(" "),
            ]);
        }
        print_table(rows);
    }
    Ok(0)
}

// ---- tokens, tenants, catalog --------------------------------------------

#[derive(clap::Subcommand)]
pub enum TokensCommand {
    List,
    /// Create a token; its secret is printed once.
    Create {
        name: String,
        /// viewer, operator, admin or worker.
        #[arg(long, default_value = "operator")]
        role: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    Revoke {
        id: String,
    },
}

pub fn tokens(ctx: &Context, server: &ServerArgs, command: TokensCommand) -> Result<u8> {
    let client = Client::new(server)?;
    match command {
        TokensCommand::List => {
            let tokens: Vec<Token> = client.all("/api/v1/tokens")?;
            if ctx.args.json {
                print_json(&tokens);
            } else {
                let mut rows =
                    vec![vec!["ID".into(), "NAME".into(), "ROLE".into(), "TENANT".into(), "LAST USED".into()]];
                for t in &tokens {
                    rows.push(vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.role.as_str().into(),
                        t.tenant.clone(),
                        when(&t.last_used),
                    ]);
                }
                print_table(rows);
            }
        }
        TokensCommand::Create { name, role, tenant } => {
            let role = Role::parse(&role)
                .ok_or_else(|| anyhow!("unknown role {role:?}: viewer, operator, admin or worker"))?;
            let token: NewToken = client.post("/api/v1/tokens", &TokenSpec { name, role, tenant }, None)?;
            if ctx.args.json {
                print_json(&token);
            } else {
                println!("{}", token.secret.expose());
                eprintln!(
                    "token {} ({}, tenant {}): the secret above is shown only now",
                    token.token.id,
                    token.token.role.as_str(),
                    token.token.tenant
                );
            }
        }
        TokensCommand::Revoke { id } => client.delete(&format!("/api/v1/tokens/{id}"))?,
    }
    Ok(0)
}

#[derive(clap::Subcommand)]
pub enum TenantsCommand {
    List,
    /// Create a tenant (or change one, as `update` does).
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// What its jobs may connect to: CIDR[:PORT], HOST[:PORT] or unix:PATH (repeatable; none: nothing).
        /// Loopback and link-local addresses open only to a grant naming them (127.0.0.1/32:5432).
        #[arg(long = "allow-net", value_name = "GRANT")]
        allow_net: Vec<backstop_types::NetGrant>,
    },
    /// Change a tenant's name or its network grants (--allow-net replaces them; --no-allow-net clears them).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "allow-net", value_name = "GRANT")]
        allow_net: Vec<backstop_types::NetGrant>,
        #[arg(long, conflicts_with = "allow_net")]
        no_allow_net: bool,
    },
}

pub fn tenants(ctx: &Context, server: &ServerArgs, command: TenantsCommand) -> Result<u8> {
    let client = Client::new(server)?;
    match command {
        TenantsCommand::List => {
            let tenants: Vec<Tenant> = client.all("/api/v1/tenants")?;
            if ctx.args.json {
                print_json(&tenants);
            } else {
                let grants = |t: &Tenant| t.allow_net.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(" ");
                print_table(
                    std::iter::once(vec!["ID".into(), "NAME".into(), "ALLOW NET".into()])
                        .chain(tenants.iter().map(|t| vec![t.id.clone(), t.name.clone(), grants(t)]))
                        .collect(),
                );
            }
        }
        TenantsCommand::Create { id, name, allow_net } => {
            let spec = TenantSpec { id, name, allow_net: Some(allow_net) };
            let t: Tenant = client.post("/api/v1/tenants", &spec, None)?;
            if ctx.args.json { print_json(&t) } else { println!("tenant {} created", t.id) }
        }
        TenantsCommand::Update { id, name, allow_net, no_allow_net } => {
            let allow_net = if no_allow_net || !allow_net.is_empty() { Some(allow_net) } else { None };
            let t: Tenant = client.post("/api/v1/tenants", &TenantSpec { id, name, allow_net }, None)?;
            if ctx.args.json { print_json(&t) } else { println!("tenant {} updated", t.id) }
        }
    }
    Ok(0)
}

#[derive(clap::Subcommand)]
pub enum CatalogCommand {
    /// Recreate the catalog's snapshot list from the repositories themselves.
    Rebuild,
}

pub fn catalog(ctx: &Context, server: &ServerArgs, command: CatalogCommand) -> Result<u8> {
    let client = Client::new(server)?;
    match command {
        CatalogCommand::Rebuild => {
            let report: backstop_types::CatalogRebuild = client.post("/api/v1/catalog/rebuild", &json!({}), None)?;
            if ctx.args.json {
                print_json(&report);
            } else {
                for r in &report.repositories {
                    match &r.error {
                        Some(e) => println!("{}: {e}", r.repository),
                        None => println!(
                            "{}: {} snapshots ({} added, {} removed)",
                            r.repository,
                            r.snapshots.unwrap_or(0),
                            r.added.unwrap_or(0),
                            r.removed.unwrap_or(0)
                        ),
                    }
                }
            }
        }
    }
    Ok(0)
}
