//! `command`: the standard output of any command, stored as one stream
//! (the escape hatch: `etcdctl snapshot`, `vzdump`, …). Restore pipes the
//! stream into a restore command.

use std::process::Command as Process;

use backstop_repo::backup::BackupSource;
use backstop_repo::backup::source::{EntryData, SourceEntry, SourceTree};

use crate::packager::{ConfigField, Packager, SourceKind};
use crate::process::{ChildStream, run_with_input};
use crate::{Config, Error, Reach, RestoreContext, RestoreReport, Result, Touches, known_keys, opt_str, req_str};

pub struct CommandConfig {
    /// Run by `sh -c`.
    pub command: String,
    /// The entry's name in the snapshot.
    pub filename: String,
}

impl CommandConfig {
    pub fn parse(config: &Config) -> Result<CommandConfig> {
        known_keys(config, "command", &["command", "filename"])?;
        let command = req_str(config, "command", "command")?;
        let filename = opt_str(config, "filename")?.unwrap_or_else(|| "stdout".into());
        if filename.contains('/') || filename == "." || filename == ".." || filename.is_empty() {
            return Err(Error::Invalid(format!("filename {filename:?} must be a plain file name")));
        }
        Ok(CommandConfig { command, filename })
    }
}

fn shell(command: &str) -> Process {
    let mut c = Process::new("sh");
    c.arg("-c").arg(command);
    c
}

pub fn tree(config: &CommandConfig) -> Result<SourceTree> {
    let command = config.command.clone();
    let open = move || {
        let stream = ChildStream::spawn(shell(&command)).map_err(std::io::Error::other)?;
        Ok(Box::new(stream) as Box<dyn std::io::Read + Send>)
    };
    Ok(SourceTree {
        kind: "command".into(),
        label: format!("command:{}", config.command),
        entries: vec![SourceEntry {
            path: config.filename.clone(),
            mode: 0o600,
            data: EntryData::Stream(Box::new(open)),
        }],
        image_chunk_size: crate::image::DEFAULT_CHUNK,
        notes: Vec::new(),
        capture: None,
    })
}

/// `--to command:CMD [entry=PATH]`: the entry on the command's standard input.
pub(crate) fn restore(ctx: &RestoreContext, config: &Config) -> Result<RestoreReport> {
    known_keys(config, "command", &["command", "entry"])?;
    let command = req_str(config, "command", "command")?;
    let chosen = opt_str(config, "entry")?;
    let (path, _) = ctx.single(chosen.as_deref(), "stream to pipe into the command")?;
    run_with_input(shell(&command), |stdin| ctx.dump(path, stdin).map(drop))?;
    Ok(RestoreReport { restored: vec![(path.clone(), format!("command:{command}"))] })
}

/// The `command` kind: it runs commands on the workers, which only the
/// system tenant may.
pub struct Command;

const SYSTEM_ONLY: &str = "a command runs on the workers";

impl Packager for Command {
    fn kind(&self) -> SourceKind {
        SourceKind::Command
    }

    fn target_key(&self) -> Option<&'static str> {
        Some("command")
    }

    fn validate(&self, config: &Config) -> Result<()> {
        CommandConfig::parse(config).map(drop)
    }

    fn fields(&self) -> &'static [ConfigField] {
        const FIELDS: &[ConfigField] = &[
            ConfigField::text("command", "Command", "run with sh -c on the worker; its standard output is backed up")
                .required(),
            ConfigField::text("filename", "Stream name", "the name the output is stored under (default stdout)"),
        ];
        FIELDS
    }

    fn touches(&self, _config: &Config, _restore: bool) -> Result<Touches> {
        Ok(Touches { workers_own: Some(SYSTEM_ONLY.into()), ..Touches::default() })
    }

    fn backup(&self, config: &Config, reach: &Reach) -> Result<BackupSource> {
        if !reach.is_any() {
            return Err(Error::Invalid("a command source is for the system tenant only".into()));
        }
        Ok(BackupSource::Tree(tree(&CommandConfig::parse(config)?)?))
    }

    fn restore_connection(&self) -> Option<&'static [&'static str]> {
        None
    }

    fn validate_restore(&self, config: &Config) -> Result<()> {
        self.validate(&crate::without_restore_keys(config))
    }

    fn restore(&self, ctx: &RestoreContext, config: &Config, reach: &Reach) -> Result<RestoreReport> {
        if !reach.is_any() {
            return Err(Error::Invalid("a restore into a command is for the system tenant only".into()));
        }
        restore(ctx, config)
    }
}
