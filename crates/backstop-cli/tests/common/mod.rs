//! Drive the real `backstop` binary against a repository in a temporary
//! directory (or on an S3 server), with cheap key derivation.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

#[allow(unused_imports)] // not every test binary uses the fixtures
pub use backstop_testkit::fixture::*;

mod serve;
#[allow(unused_imports)] // not every test binary runs the service
pub use serve::*;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Cli {
    pub dir: tempfile::TempDir,
    pub location: String,
    env: Vec<(String, String)>,
}

impl Cli {
    /// A repository location in a fresh temporary directory (not created).
    pub fn local() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("repo").to_string_lossy().into_owned();
        Cli { dir, location, env: Vec::new() }
    }

    /// An existing repository at `location` (scratch space in a new temporary directory).
    pub fn at(location: &str) -> Cli {
        Cli { dir: tempfile::tempdir().unwrap(), location: location.to_string(), env: Vec::new() }
    }

    /// A repository on an S3 server.
    pub fn s3(server: &backstop_testkit::S3Server, bucket: &str) -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let env = server.env().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Cli { dir, location: format!("s3://{bucket}/repo"), env }
    }

    /// The repository's directory (local repositories only).
    pub fn repo_dir(&self) -> PathBuf {
        PathBuf::from(&self.location)
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backstop"));
        cmd.args(args)
            .env("BACKSTOP_REPOSITORY", &self.location)
            .env("BACKSTOP_PASSWORD", PASSWORD)
            .env("BACKSTOP_KDF_MEMORY_KIB", "64")
            // Each test's own cache, used as a user's would be.
            .env("BACKSTOP_CACHE_DIR", self.dir.path().join("cache"))
            .env("RUST_BACKTRACE", "0")
            .env_remove("BACKSTOP_PASSWORD_FILE")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "backstop {args:?} panicked:\n{stderr}");
        out
    }

    /// Run and require success; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "backstop {args:?} failed with {}:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
    }

    pub fn init(&self) {
        self.ok(&["init"]);
    }

    /// Back up and return the new snapshot's JSON report.
    pub fn backup(&self, paths: &[&Path]) -> serde_json::Value {
        let mut args = vec!["backup"];
        let strs: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        args.extend(strs.iter().map(String::as_str));
        self.json(&args)
    }

    pub fn check_clean(&self, read_data: bool) {
        let args: &[&str] = if read_data { &["check", "--read-data"] } else { &["check"] };
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "check found damage:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Run `script` with `sh` while a fresh tmpfs is mounted at `mnt`, seen by
/// the script only or unmounted after it. As root (with `CAP_SYS_ADMIN`: in
/// a chroot too) the tmpfs is mounted here and unmounted after; otherwise
/// the script runs in a mount namespace of its own, as root of an
/// unprivileged user namespace. Where neither is allowed (Docker's default
/// capabilities and seccomp profile, `kernel.unprivileged_userns_clone=0`),
/// this fails and says what the host lacks: the test is never skipped.
pub fn with_tmpfs_at(mnt: &Path, script: &str, envs: &[(std::ffi::OsString, std::ffi::OsString)]) -> Output {
    // `sh -c script`, behind `wrapper` (a command and its arguments).
    let sh = |wrapper: &[&str], script: &str| {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg("sh");
                cmd
            }
            None => Command::new("sh"),
        };
        cmd.args(["-c", script]).envs(envs.iter().map(|(k, v)| (k, v)));
        cmd.output().unwrap()
    };
    let mut refusals = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mount = Command::new("mount").args(["-t", "tmpfs", "none"]).arg(mnt).output().unwrap();
        if mount.status.success() {
            let out = sh(&[], script);
            let umount = Command::new("umount").arg(mnt).output().unwrap();
            assert!(umount.status.success(), "umount {}: {}", mnt.display(), output_text(&umount));
            return out;
        }
        refusals.push(format!("mount as root: {}", String::from_utf8_lossy(&mount.stderr).trim()));
    }
    match Command::new("unshare").args(["--mount", "--map-root-user", "true"]).output() {
        Ok(p) if p.status.success() => {
            let inner = format!("mount -t tmpfs none {} && {script}", mnt.display());
            return sh(&["unshare", "--mount", "--map-root-user"], &inner);
        }
        Ok(p) => {
            refusals.push(format!("unshare --mount --map-root-user: {}", String::from_utf8_lossy(&p.stderr).trim()))
        }
        Err(e) => refusals.push(format!("unshare (util-linux): {e}")),
    }
    panic!(
        "this test needs a file system mounted below the backed-up path, and this host allows no mount ({}). \
         Run the suite as root with CAP_SYS_ADMIN (in Docker: --cap-add SYS_ADMIN, or --privileged), or where \
         unprivileged user namespaces are allowed (sysctl kernel.unprivileged_userns_clone=1, \
         user.max_user_namespaces > 0; none are allowed in a chroot)",
        refusals.join("; ")
    )
}

/// A tmpfs of `size` mounted at `dir` (the test runs as root, as CI
/// does), unmounted when dropped.
pub struct SmallFs(pub PathBuf);

impl SmallFs {
    pub fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output();
        let out = out.expect("mount (util-linux) is needed");
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
