//! Options every command shares: where the repository is, how to get the
//! password, how to talk.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use backstop_backend::{Backend, Bandwidth, OpenOptions, S3Options};
use backstop_repo::crypto::keyslot::KdfParams;
use backstop_repo::{CancelToken, Password, Repository};

use crate::output::Reporter;

#[derive(clap::Args)]
pub struct GlobalArgs {
    /// Repository location: a directory, file:/path, or s3://bucket/prefix.
    #[arg(short = 'r', long = "repo", env = "BACKSTOP_REPOSITORY", global = true, value_name = "LOCATION")]
    repository: Option<String>,

    /// Read the password from the first line of this file (BACKSTOP_PASSWORD
    /// holds the password itself; without either you are asked on the terminal).
    #[arg(long, env = "BACKSTOP_PASSWORD_FILE", global = true, value_name = "FILE")]
    password_file: Option<PathBuf>,

    /// Print machine-readable JSON on standard output.
    #[arg(long, global = true)]
    pub json: bool,

    /// Print only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// S3 endpoint URL (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, global = true, value_name = "URL")]
    s3_endpoint: Option<String>,

    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, global = true, value_name = "REGION")]
    s3_region: Option<String>,

    /// Allow plain-HTTP S3 endpoints.
    #[arg(long, global = true)]
    s3_allow_http: bool,

    /// Maximum concurrent requests to the storage backend.
    #[arg(long, global = true, default_value_t = 8, value_name = "N")]
    connections: usize,

    /// Limit uploads to this many KiB/s.
    #[arg(long, global = true, value_name = "KIB_PER_SEC")]
    limit_upload: Option<u64>,

    /// Limit downloads to this many KiB/s.
    #[arg(long, global = true, value_name = "KIB_PER_SEC")]
    limit_download: Option<u64>,

    /// Keep a local copy of the repository's index, snapshot manifests and
    /// directory trees here (default: $XDG_CACHE_HOME/backstop, else
    /// ~/.cache/backstop): on object storage a backup then fetches only
    /// what changed since the last run. `check` and `repair` never use it.
    #[arg(long, env = "BACKSTOP_CACHE_DIR", global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Use no local cache (read every index file and tree from the repository).
    #[arg(long, global = true)]
    no_cache: bool,

    /// Argon2id memory cost in KiB for new key slots (tests use a small one).
    #[arg(long, env = "BACKSTOP_KDF_MEMORY_KIB", global = true, hide = true)]
    kdf_memory_kib: Option<u32>,
}

/// What a command runs with.
pub struct Context {
    pub args: GlobalArgs,
    pub cancel: CancelToken,
}

impl Context {
    pub fn new(args: GlobalArgs) -> Context {
        let cancel = CancelToken::new();
        crate::output::cancel_on_signals(cancel.clone());
        Context { args, cancel }
    }

    pub fn location(&self) -> Result<&str> {
        match self.args.repository.as_deref() {
            Some(l) if !l.is_empty() => Ok(l),
            _ => bail!("no repository given: pass --repo LOCATION or set BACKSTOP_REPOSITORY"),
        }
    }

    /// Backend settings from the command line (S3, limits, connections).
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            s3: S3Options {
                endpoint: self.args.s3_endpoint.clone(),
                region: self.args.s3_region.clone(),
                allow_http: self.args.s3_allow_http.then_some(true),
                ..S3Options::default()
            },
            connections: self.args.connections,
            bandwidth: Bandwidth::new(
                self.args.limit_upload.map(|k| k.saturating_mul(1024)),
                self.args.limit_download.map(|k| k.saturating_mul(1024)),
            ),
            // Ctrl-C stops throttled transfers and retries too (a worker
            // puts each job's own token here).
            cancel: Some(self.cancel.clone()),
            ..OpenOptions::default()
        }
    }

    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        let options = self.open_options();
        let location = self.location()?;
        backstop_backend::open(location, &options).with_context(|| format!("cannot use repository {location}"))
    }

    /// The repository, with its local cache unless `--no-cache` (see
    /// [`Context::open_uncached`] for what must judge the stored objects).
    pub fn open(&self) -> Result<Repository> {
        let repo = self.open_uncached()?;
        let Some(base) = self.cache_dir(backstop_repo::cache::default_base()) else { return Ok(repo) };
        match repo.open_cache(&base) {
            Ok(cache) => Ok(repo.with_cache(cache)),
            Err(e) => {
                eprintln!("warning: no local cache ({}: {e}); reading everything from the repository", base.display());
                Ok(repo)
            }
        }
    }

    /// Where the local caches are: `--cache-dir`, else `default`; none with `--no-cache`.
    pub fn cache_dir(&self, default: Option<PathBuf>) -> Option<PathBuf> {
        if self.args.no_cache { None } else { self.args.cache_dir.clone().or(default) }
    }

    /// The repository without a local cache: `check` and `repair` judge
    /// what is stored, not a copy of it.
    pub fn open_uncached(&self) -> Result<Repository> {
        let backend = self.backend()?;
        let password = self.password(false)?;
        Ok(Repository::open(backend, &password)?)
    }

    pub fn kdf(&self) -> KdfParams {
        let mut kdf = KdfParams::default();
        if let Some(kib) = self.args.kdf_memory_kib {
            kdf.memory_kib = kib;
        }
        kdf
    }

    /// The repository password; `new` asks twice on a terminal.
    pub fn password(&self, new: bool) -> Result<Password> {
        if let Some(file) = &self.args.password_file {
            return read_password_file(file);
        }
        if let Ok(p) = std::env::var("BACKSTOP_PASSWORD") {
            return Ok(Password::new(p));
        }
        let prompt = if new { "enter a password for the new repository: " } else { "enter the repository password: " };
        prompt_password(prompt, new)
    }

    pub fn reporter(&self, with_bar: bool) -> Reporter {
        let text = !self.args.quiet && !self.args.json;
        Reporter::new(crate::output::Show { bar: with_bar && text, info: text })
    }

    /// Whether to print human-readable text on standard output.
    pub fn text(&self) -> bool {
        !self.args.json && !self.args.quiet
    }
}

pub fn read_password_file(file: &std::path::Path) -> Result<Password> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read password file {}", file.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!("password file {} is empty", file.display());
    }
    Ok(Password::new(line))
}

/// Ask on the terminal (not standard input, which may carry backup data).
pub fn prompt_password(prompt: &str, confirm: bool) -> Result<Password> {
    let no_tty = |e: std::io::Error| {
        anyhow::anyhow!(
            "no password given and cannot ask for one ({e}): set BACKSTOP_PASSWORD_FILE or BACKSTOP_PASSWORD, \
             or run on a terminal"
        )
    };
    let first = rpassword::prompt_password(prompt).map_err(no_tty)?;
    if confirm {
        let second = rpassword::prompt_password("enter it again: ").map_err(no_tty)?;
        if first != second {
            bail!("the passwords do not match");
        }
    }
    Ok(Password::new(first))
}
