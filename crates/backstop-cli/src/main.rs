//! `backstop`: back up files and streams into a deduplicated, compressed,
//! encrypted repository, and restore them.
//!
//! Each subcommand lives in `cmd/`; `global` opens the repository and asks
//! for passwords, `output` draws progress and formats figures. Exit codes
//! are in [`exit`] and in `--help`.

mod cmd;
mod global;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::global::GlobalArgs;

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    error (for `check`: the repository is damaged)
  2    wrong usage
  3    finished, but some files could not be read (backup) or written
       (restore); the snapshot or the rest of the restore is complete
  10   there is no repository at the location
  11   the repository is busy (another prune is running)
  12   wrong password
  130  interrupted (Ctrl-C or SIGTERM); an interrupted backup leaves a
       checkpoint that the next backup resumes from

Environment:
  BACKSTOP_REPOSITORY      repository location (directory, file:/path or s3://bucket/prefix)
  BACKSTOP_PASSWORD_FILE   file whose first line is the password
  BACKSTOP_PASSWORD        the password itself (prefer the file)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
  AWS_ENDPOINT_URL, AWS_ALLOW_HTTP
                           S3 credentials and endpoint
  BACKSTOP_SERVER          the service's address, for plans, jobs, repos, sources,
                           tokens, tenants, catalog and `snapshots --server`
  BACKSTOP_TOKEN           the service's API token
  BACKSTOP_DATA_DIR        where `backstop serve` keeps its catalog and local repository";

#[derive(Parser)]
#[command(
    name = "backstop",
    version,
    about = "Deduplicating, compressed, encrypted backups of files and streams",
    long_about = "Backstop backs up directories and streams into a repository on a local \
                  directory, a network share or S3-compatible object storage. Data is cut into \
                  content-defined chunks, deduplicated across every backup, compressed with zstd \
                  and encrypted with AES-256-GCM. Several backups may write into one repository at \
                  the same time; prune never blocks them.",
    after_long_help = EXIT_CODES,
    after_help = "Run `backstop help <command>` for details; `backstop --help` lists exit codes."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new repository.
    Init(cmd::init::Args),
    /// Back up files and directories, or standard input, into a new snapshot.
    Backup(cmd::backup::Args),
    /// List snapshots.
    Snapshots(cmd::browse::SnapshotsArgs),
    /// List the files of a snapshot.
    Ls(cmd::browse::LsArgs),
    /// Show what changed between two snapshots.
    Diff(cmd::browse::DiffArgs),
    /// Restore a snapshot into a directory.
    Restore(cmd::restore::Args),
    /// Write one file of a snapshot (or a backed-up stream) to standard output.
    Dump(cmd::browse::DumpArgs),
    /// Remove snapshots by id or by a retention policy.
    Forget(cmd::maintain::ForgetArgs),
    /// Delete data that no snapshot needs any more.
    Prune(cmd::maintain::PruneArgs),
    /// Verify the repository's structure and, optionally, its data.
    Check(cmd::maintain::CheckArgs),
    /// Manage the passwords (key slots) that open the repository.
    #[command(subcommand)]
    Key(cmd::key::KeyCommand),
    /// Repair a damaged repository.
    #[command(subcommand)]
    Repair(cmd::maintain::RepairCommand),
    /// Run the service: HTTP API, scheduler, job queue and in-process workers.
    Serve(cmd::service::ServeArgs),
    /// Run a worker that claims jobs of a region from a coordinator.
    Worker(cmd::service::WorkerArgs),
    /// The service's plans: list, put, run now.
    Plans {
        #[command(flatten)]
        server: cmd::client::ServerArgs,
        #[command(subcommand)]
        command: cmd::client::PlansCommand,
    },
    /// The service's jobs: list, get, logs (--follow), cancel, wait.
    Jobs {
        #[command(flatten)]
        server: cmd::client::ServerArgs,
        #[command(subcommand)]
        command: cmd::client::JobsCommand,
    },
    /// The service's repositories.
    Repos {
        #[command(flatten)]
        server: cmd::client::ServerArgs,
        #[command(subcommand)]
        command: cmd::client::ReposCommand,
    },
    /// The service's sources.
    Sources {
        #[command(flatten)]
        server: cmd::client::ServerArgs,
        #[command(subcommand)]
        command: cmd::client::SourcesCommand,
    },
    /// The service's API tokens.
    Tokens {
        #[command(flatten)]
        server: cmd::client::ServerArgs,
        #[command(subcommand)]
        command: cmd::client::TokensCommand,
    },
    /// The service's tenants.
    Tenants {
        #[command(flatten)]
        server: cmd::client::ServerArgs,
        #[command(subcommand)]
        command: cmd::client::TenantsCommand,
    },
    /// The service's catalog.
    Catalog {
        #[command(flatten)]
        server: cmd::client::ServerArgs,
        #[command(subcommand)]
        command: cmd::client::CatalogCommand,
    },
}

/// Exit codes, as documented in `--help`.
pub mod exit {
    pub const ERROR: u8 = 1;
    pub const INCOMPLETE: u8 = 3;
    pub const NO_REPOSITORY: u8 = 10;
    pub const BUSY: u8 = 11;
    pub const WRONG_PASSWORD: u8 = 12;
    pub const INTERRUPTED: u8 = 130;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = global::Context::new(cli.global);
    let result = match cli.command {
        Command::Init(args) => cmd::init::run(&ctx, args),
        Command::Backup(args) => cmd::backup::run(&ctx, args),
        Command::Snapshots(args) => cmd::browse::snapshots(&ctx, args),
        Command::Ls(args) => cmd::browse::ls(&ctx, args),
        Command::Diff(args) => cmd::browse::diff(&ctx, args),
        Command::Restore(args) => cmd::restore::run(&ctx, args),
        Command::Dump(args) => cmd::browse::dump(&ctx, args),
        Command::Forget(args) => cmd::maintain::forget(&ctx, args),
        Command::Prune(args) => cmd::maintain::prune(&ctx, args),
        Command::Check(args) => cmd::maintain::check(&ctx, args),
        Command::Key(command) => cmd::key::run(&ctx, command),
        Command::Repair(command) => cmd::maintain::repair(&ctx, command),
        Command::Serve(args) => cmd::service::serve(&ctx, args),
        Command::Worker(args) => cmd::service::worker(&ctx, args),
        Command::Plans { server, command } => cmd::client::plans(&ctx, &server, command),
        Command::Jobs { server, command } => cmd::client::jobs(&ctx, &server, command),
        Command::Repos { server, command } => cmd::client::repos(&ctx, &server, command),
        Command::Sources { server, command } => cmd::client::sources(&ctx, &server, command),
        Command::Tokens { server, command } => cmd::client::tokens(&ctx, &server, command),
        Command::Tenants { server, command } => cmd::client::tenants(&ctx, &server, command),
        Command::Catalog { server, command } => cmd::client::catalog(&ctx, &server, command),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let code = exit_code(&err);
            if code == exit::INTERRUPTED {
                eprintln!("interrupted");
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    use backstop_repo::Error;
    match err.chain().find_map(|e| e.downcast_ref::<Error>()) {
        Some(Error::NoRepository { .. }) => exit::NO_REPOSITORY,
        Some(Error::Busy(_)) => exit::BUSY,
        Some(Error::WrongPassword) => exit::WRONG_PASSWORD,
        Some(Error::Cancelled) => exit::INTERRUPTED,
        _ => exit::ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn engine_errors_map_to_documented_exit_codes() {
        use backstop_repo::Error;
        let wrapped = anyhow::Error::new(Error::WrongPassword).context("opening the repository");
        assert_eq!(exit_code(&wrapped), exit::WRONG_PASSWORD);
        assert_eq!(exit_code(&Error::NoRepository { location: "x".into() }.into()), exit::NO_REPOSITORY);
        assert_eq!(exit_code(&Error::Busy("prune".into()).into()), exit::BUSY);
        assert_eq!(exit_code(&Error::Cancelled.into()), exit::INTERRUPTED);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), exit::ERROR);
    }
}
