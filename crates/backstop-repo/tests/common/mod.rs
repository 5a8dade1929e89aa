//! Shared helpers for the engine's integration tests: repositories with
//! cheap key derivation, plus the testkit's directory fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstop_backend::{Backend, LocalBackend};
use backstop_repo::backup::{self, BackupOptions, BackupOutcome, BackupSource};
use backstop_repo::crypto::keyslot::KdfParams;
use backstop_repo::restore::{self, RestoreOptions, RestoreSummary};
use backstop_repo::{CancelToken, Config, InitOptions, NoProgress, Password, Repository};

pub const PASSWORD: &str = "test password";

pub fn cheap_init() -> InitOptions {
    let mut config = Config::new();
    // Small packs so that tests exercise many of them.
    config.pack_size = 1 << 20;
    config.tree_pack_size = 256 << 10;
    InitOptions { kdf: KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }, config }
}

pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
}

impl TestRepo {
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("repo")));
        let repo = Repository::init(backend, &Password::new(PASSWORD), cheap_init()).unwrap();
        TestRepo { dir, repo }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn reopen(&self) -> Repository {
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(self.root()));
        Repository::open(backend, &Password::new(PASSWORD)).unwrap()
    }

    pub fn backup(&self, paths: &[&Path]) -> BackupOutcome {
        self.backup_with(paths, &BackupOptions::default())
    }

    pub fn backup_with(&self, paths: &[&Path], options: &BackupOptions) -> BackupOutcome {
        let source = BackupSource::Paths(paths.iter().map(|p| p.to_path_buf()).collect());
        backup::run(&self.repo, source, options, &NoProgress, &CancelToken::new()).unwrap()
    }

    pub fn restore(&self, snapshot: &str, target: &Path) -> RestoreSummary {
        let (_, snap) = self.repo.find_snapshot(snapshot).unwrap();
        restore::run(&self.repo, &snap, &RestoreOptions::new(target), &NoProgress, &CancelToken::new()).unwrap()
    }
}

pub use backstop_testkit::fixture::*;
