//! Pre- and post-backup hooks per source: quiesce, snapshot, thaw (for
//! example `fsfreeze --freeze`, a hypervisor API call). Each runs by
//! `sh -c` with a timeout and an environment describing the job; its output
//! goes to the job log line by line. A failing pre hook with
//! `on_error: fail` (the default) stops the backup; post hooks run whenever
//! a pre hook was started, and see the outcome in `BACKSTOP_STATUS`.
//!
//! In a source's configuration:
//! `"hooks": {"pre": [{"command": "fsfreeze -f /data", "timeout_seconds": 30, "on_error": "fail"}], "post": […]}`

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backstop_repo::Progress;
use serde_json::Value;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Fail,
    Continue,
}

#[derive(Debug, Clone)]
pub struct Hook {
    pub command: String,
    pub timeout: Duration,
    pub on_error: OnError,
}

#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub pre: Vec<Hook>,
    pub post: Vec<Hook>,
}

/// Longest a hook may be given.
const MAX_TIMEOUT: u64 = 24 * 3600;

impl Hook {
    pub fn new(command: &str, timeout_seconds: u64, on_error: &str) -> Result<Hook> {
        if command.trim().is_empty() {
            return Err(Error::Invalid("a hook needs a command".into()));
        }
        if timeout_seconds == 0 || timeout_seconds > MAX_TIMEOUT {
            return Err(Error::Invalid(format!("a hook's timeout must be 1 to {MAX_TIMEOUT} seconds")));
        }
        let on_error = match on_error {
            "fail" => OnError::Fail,
            "continue" => OnError::Continue,
            other => return Err(Error::Invalid(format!("on_error {other:?} is not fail or continue"))),
        };
        Ok(Hook { command: command.to_string(), timeout: Duration::from_secs(timeout_seconds), on_error })
    }
}

impl Hooks {
    /// The `hooks` of a source's configuration (absent: none).
    pub fn parse(v: Option<&Value>) -> Result<Hooks> {
        let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Hooks::default()) };
        let obj = v.as_object().ok_or_else(|| Error::Invalid("hooks must be an object with pre and post".into()))?;
        if let Some(k) = obj.keys().find(|k| *k != "pre" && *k != "post") {
            return Err(Error::Invalid(format!("unknown hooks key {k:?} (known: pre, post)")));
        }
        let list = |key: &str| -> Result<Vec<Hook>> {
            let Some(items) = obj.get(key) else { return Ok(Vec::new()) };
            let items = items.as_array().ok_or_else(|| Error::Invalid(format!("hooks.{key} must be a list")))?;
            items
                .iter()
                .map(|h| {
                    let command = h.get("command").and_then(Value::as_str).unwrap_or_default();
                    let timeout = h.get("timeout_seconds").and_then(Value::as_u64).unwrap_or(300);
                    let on_error = h.get("on_error").and_then(Value::as_str).unwrap_or("fail");
                    Hook::new(command, timeout, on_error)
                })
                .collect()
        };
        Ok(Hooks { pre: list("pre")?, post: list("post")? })
    }

    pub fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.post.is_empty()
    }

    /// Run `work` between the pre and the post hooks. `env` describes the
    /// job (`BACKSTOP_*` variables); `outcome` tells the post hooks how it
    /// went (`BACKSTOP_STATUS`, and e.g. `BACKSTOP_SNAPSHOT_ID`).
    pub fn around<T, E: From<Error> + std::fmt::Display>(
        &self,
        env: &[(String, String)],
        progress: &dyn Progress,
        work: impl FnOnce() -> std::result::Result<T, E>,
        outcome: impl Fn(&T) -> Vec<(String, String)>,
    ) -> std::result::Result<T, E> {
        let mut pre_failed = None;
        for hook in &self.pre {
            if let Err(e) = run(hook, "pre", env, progress) {
                match hook.on_error {
                    OnError::Fail => {
                        pre_failed = Some(e);
                        break;
                    }
                    OnError::Continue => progress.info(&format!("{e}; going on (on_error: continue)")),
                }
            }
        }
        let result = match pre_failed {
            Some(e) => Err(E::from(e)),
            None => work(),
        };
        let mut post_env = env.to_vec();
        match &result {
            Ok(value) => {
                post_env.push(("BACKSTOP_STATUS".into(), "succeeded".into()));
                post_env.extend(outcome(value));
            }
            Err(_) => post_env.push(("BACKSTOP_STATUS".into(), "failed".into())),
        }
        let mut post_failed = None;
        for hook in &self.post {
            // Every post hook runs (a thaw must not be skipped).
            if let Err(e) = run(hook, "post", &post_env, progress) {
                match hook.on_error {
                    OnError::Fail => post_failed = post_failed.or(Some(e)),
                    OnError::Continue => progress.info(&format!("{e}; going on (on_error: continue)")),
                }
            }
        }
        match (result, post_failed) {
            (Ok(_), Some(e)) => Err(E::from(e)),
            (result, _) => result,
        }
    }
}

/// Run one hook to its end or its timeout; its output to the log.
pub fn run(hook: &Hook, phase: &str, env: &[(String, String)], progress: &dyn Progress) -> Result<()> {
    let mut c = Command::new("sh");
    c.arg("-c").arg(&hook.command).env("BACKSTOP_HOOK", phase).stdin(Stdio::null());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    // Its own process group, so a timeout stops what it started too.
    c.process_group(0);
    progress.info(&format!("{phase} hook: {}", hook.command));
    let mut child = c.spawn().map_err(|e| Error::Invalid(format!("cannot run the {phase} hook: {e}")))?;
    let pid = child.id() as i32;
    let mut readers = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                let _ = tx.send(line);
            }
        }));
    }
    drop(tx);
    let deadline = Instant::now() + hook.timeout;
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            progress.info(&format!("{phase} hook: {line}"));
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: signalling the hook's own process group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::Tool(format!("waiting for the {phase} hook: {e}"))),
        }
    };
    // Whatever the hook left running in the background goes with it (it
    // would hold the output pipes open, and outlive the timeout).
    // SAFETY: signalling the hook's own process group.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    for r in readers {
        let _ = r.join();
    }
    while let Ok(line) = rx.try_recv() {
        progress.info(&format!("{phase} hook: {line}"));
    }
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(Error::Tool(format!("the {phase} hook `{}` failed ({s})", hook.command))),
        None => Err(Error::Tool(format!(
            "the {phase} hook `{}` did not finish within {} s and was killed",
            hook.command,
            hook.timeout.as_secs()
        ))),
    }
}
