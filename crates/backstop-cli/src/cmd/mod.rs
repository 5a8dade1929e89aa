//! One module per group of subcommands. Each `run` returns the exit code.

pub mod backup;
pub mod browse;
pub mod client;
pub mod init;
pub mod key;
pub mod maintain;
pub mod restore;
pub mod service;
