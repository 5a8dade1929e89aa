//! `fs`: local file trees, which the engine walks itself. Its packager
//! checks the configuration and says which paths it reads; a restore of
//! an `fs` snapshot goes into a directory (the engine's restore), never
//! into a system.

use std::path::PathBuf;

use backstop_repo::backup::BackupSource;
use serde_json::Value;

use crate::packager::{ConfigField, Packager, SourceKind};
use crate::{Config, Error, Reach, RestoreContext, RestoreReport, Result, Touches};

/// The settings of an `fs` source.
const KEYS: &[&str] = &["paths", "excludes", "one_file_system", "exclude_caches"];

pub struct Fs;

fn not_a_system() -> Error {
    Error::Invalid("a file tree is restored into a directory (target), not into an fs system".into())
}

/// The source's absolute paths.
fn paths(config: &Config) -> Result<Vec<PathBuf>> {
    let paths = config
        .get("paths")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Invalid("an fs source needs config.paths: a list of absolute paths".into()))?;
    if paths.is_empty() {
        return Err(Error::Invalid("an fs source needs at least one path in config.paths".into()));
    }
    paths
        .iter()
        .map(|p| match p.as_str() {
            Some(s) if s.starts_with('/') => Ok(PathBuf::from(s)),
            _ => Err(Error::Invalid(format!("fs source path {p} is not an absolute path"))),
        })
        .collect()
}

impl Packager for Fs {
    fn kind(&self) -> SourceKind {
        SourceKind::Fs
    }

    fn target_key(&self) -> Option<&'static str> {
        None
    }

    fn validate(&self, config: &Config) -> Result<()> {
        paths(config)?;
        if let Some(ex) = config.get("excludes")
            && !ex.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err(Error::Invalid("config.excludes must be a list of patterns".into()));
        }
        for flag in ["one_file_system", "exclude_caches"] {
            if config.get(flag).is_some_and(|v| !v.is_boolean()) {
                return Err(Error::Invalid(format!("config.{flag} is true or false")));
            }
        }
        if let Some(extra) = config.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(Error::Invalid(format!(
                "unknown fs source setting {extra:?} (known: {}, hooks)",
                KEYS.join(", ")
            )));
        }
        Ok(())
    }

    fn fields(&self) -> &'static [ConfigField] {
        const FIELDS: &[ConfigField] = &[
            ConfigField::lines("paths", "Paths", "absolute paths of files and directories, one per line").required(),
            ConfigField::lines("excludes", "Excludes", "gitignore-style patterns, one per line"),
            ConfigField::flag("one_file_system", "One file system", "do not cross into other file systems"),
            ConfigField::flag(
                "exclude_caches",
                "Leave out caches",
                "directories with a CACHEDIR.TAG keep only the tag",
            ),
        ];
        FIELDS
    }

    fn touches(&self, config: &Config, _restore: bool) -> Result<Touches> {
        Ok(Touches { paths: paths(config)?, ..Touches::default() })
    }

    fn backup(&self, config: &Config, _reach: &Reach) -> Result<BackupSource> {
        // The engine opens each path through the job's reach as it walks.
        Ok(BackupSource::Paths(paths(config)?))
    }

    fn restore_connection(&self) -> Option<&'static [&'static str]> {
        None
    }

    fn validate_restore(&self, _: &Config) -> Result<()> {
        Err(not_a_system())
    }

    fn restore(&self, _: &RestoreContext, _: &Config, _: &Reach) -> Result<RestoreReport> {
        Err(not_a_system())
    }
}
