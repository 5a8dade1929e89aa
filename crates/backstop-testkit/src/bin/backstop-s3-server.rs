//! The benchmarks' S3-protocol server: the tests' `s3s-fs` server, run on
//! its own, counting requests and bytes (`GET /_stats`, `GET /_stats/reset`)
//! and optionally delaying every request.
//!
//! ```text
//! backstop-s3-server --root DIR [--port N] [--latency-ms MS] [--trace] [--bucket NAME]...
//! ```
//!
//! `--trace` prints a line per request on standard error: when it arrived
//! (ms since the start), how long it took (ms), its operation, path and query.
//!
//! The credentials it accepts are `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` from its environment. It prints its endpoint on
//! standard output and serves until it is killed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backstop_testkit::{S3Server, S3ServerOptions};

const USAGE: &str = "usage: backstop-s3-server --root DIR [--port N] [--latency-ms MS] [--trace] [--bucket NAME]...\n\
                     (credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)";

fn options() -> Result<S3ServerOptions, String> {
    let mut options = S3ServerOptions::new(&[]);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--root" => options.root = Some(PathBuf::from(value()?)),
            "--port" => options.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--latency-ms" => {
                options.latency = Duration::from_millis(value()?.parse().map_err(|e| format!("--latency-ms: {e}"))?)
            }
            "--bucket" => options.buckets.push(value()?),
            "--trace" => options.trace = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.root.is_none() {
        return Err("--root is required".into());
    }
    let key = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or(format!("set {name}"));
    options.access_key = key("AWS_ACCESS_KEY_ID")?;
    options.secret_key = key("AWS_SECRET_ACCESS_KEY")?;
    Ok(options)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("backstop-s3-server: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let server = match S3Server::try_start(options) {
        Ok(server) => server,
        Err(problem) => {
            eprintln!("backstop-s3-server: {problem}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", server.endpoint());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
