//! Dump and restore tools as child processes: their output read as a
//! stream whose end is an error when the tool failed, their input fed from
//! a snapshot. A tool's standard error is kept (the last few KiB) for the
//! error message and the job log.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::Error;

const STDERR_TAIL: usize = 4096;

/// The last `limit` bytes a child wrote to one of its outputs.
#[derive(Clone)]
struct Tail(Arc<Mutex<Vec<u8>>>, usize);

impl Tail {
    fn new(limit: usize) -> Tail {
        Tail(Arc::new(Mutex::new(Vec::new())), limit)
    }

    fn collect(&self, mut from: impl Read + Send + 'static) -> JoinHandle<()> {
        let tail = self.clone();
        let limit = self.1;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.0.lock().unwrap_or_else(|e| e.into_inner());
                t.extend_from_slice(&buf[..n]);
                if t.len() > limit {
                    let cut = t.len() - limit;
                    t.drain(..cut);
                }
            }
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).trim().to_string()
    }
}

/// What a failed tool said, for an error message.
fn failure(program: &str, status: ExitStatus, stderr: &str) -> String {
    let said = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
    format!("{program} failed ({status}){said}")
}

/// Stop `child` and everything it started (it leads its own process
/// group): a tool's leftover children must not hold its pipes open.
fn kill_group(child: &Child) {
    // SAFETY: signalling the child's own process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
}

fn spawn_error(program: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::Invalid(format!("{program} is not installed (not found on PATH)"))
    } else {
        Error::Invalid(format!("cannot run {program}: {e}"))
    }
}

/// A child's standard output. Reading past its end waits for the child:
/// a non-zero exit is a read error, so the backup fails.
pub struct ChildStream {
    program: String,
    child: Child,
    stdout: ChildStdout,
    stderr: Tail,
    stderr_thread: Option<JoinHandle<()>>,
    done: bool,
}

impl ChildStream {
    pub fn spawn(mut command: Command) -> Result<ChildStream, Error> {
        let program = command.get_program().to_string_lossy().into_owned();
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child = command.spawn().map_err(|e| spawn_error(&program, e))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = Tail::new(STDERR_TAIL);
        let stderr_thread = Some(stderr.collect(child.stderr.take().expect("stderr is piped")));
        Ok(ChildStream { program, child, stdout, stderr, stderr_thread, done: false })
    }
}

impl Read for ChildStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        let status = self.child.wait()?;
        kill_group(&self.child);
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        self.done = true;
        if status.success() {
            Ok(0)
        } else {
            Err(std::io::Error::other(failure(&self.program, status, &self.stderr.text())))
        }
    }
}

impl Drop for ChildStream {
    fn drop(&mut self) {
        if !self.done {
            // Abandoned (cancelled, or the backup failed elsewhere).
            kill_group(&self.child);
            let _ = self.child.wait();
        }
    }
}

/// Run `command` to its end with `feed` writing its standard input; fails
/// when the tool exits non-zero. Returns what it wrote to standard output.
pub fn run_with_input(
    mut command: Command,
    feed: impl FnOnce(&mut dyn Write) -> Result<(), Error>,
) -> Result<String, Error> {
    let program = command.get_program().to_string_lossy().into_owned();
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = command.spawn().map_err(|e| spawn_error(&program, e))?;
    let stderr = Tail::new(STDERR_TAIL);
    let stderr_thread = stderr.collect(child.stderr.take().expect("stderr is piped"));
    let out = Tail::new(64 << 20);
    let out_thread = out.collect(child.stdout.take().expect("stdout is piped"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let fed = feed(&mut stdin);
    if fed.is_err() {
        // Killed before it sees the end of its input: a restore tool must
        // not commit half a dump as if it were whole.
        kill_group(&child);
    }
    drop(stdin);
    let status = child.wait().map_err(|e| Error::Invalid(format!("waiting for {program}: {e}")))?;
    kill_group(&child);
    let _ = stderr_thread.join();
    let _ = out_thread.join();
    // A tool that failed on its own says why (our write then only broke
    // its pipe); one we killed failed because the feed did.
    let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL);
    if !(status.success() || killed && fed.is_err()) {
        return Err(Error::Tool(failure(&program, status, &stderr.text())));
    }
    fed?;
    Ok(out.text())
}

/// Run `command` to its end without input; its standard output.
pub fn run(command: Command) -> Result<String, Error> {
    run_with_input(command, |_| Ok(()))
}

/// Give the child `files` as its descriptors 3, 4, … (for `/proc/self/fd/N`
/// paths): the tool then opens exactly the files the caller opened, and
/// resolves no path of its own.
pub(crate) fn pass_fds(command: &mut Command, files: &[&std::fs::File]) {
    use std::os::fd::AsRawFd;
    const MOST: usize = 8;
    assert!(files.len() <= MOST, "pass_fds takes at most {MOST} files");
    let mut fds = [-1i32; MOST];
    for (slot, f) in fds.iter_mut().zip(files) {
        *slot = f.as_raw_fd();
    }
    let n = files.len();
    // SAFETY: between fork and exec the closure only calls fcntl and dup2,
    // which are async-signal-safe, and allocates nothing; the descriptors
    // stay open in the parent for the whole call.
    unsafe {
        command.pre_exec(move || {
            // Moved out of the way first (close-on-exec copies), so no target
            // number is overwritten before it is read.
            let mut moved = [-1i32; MOST];
            for i in 0..n {
                moved[i] = libc::fcntl(fds[i], libc::F_DUPFD_CLOEXEC, 100);
                if moved[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in moved.iter().enumerate().take(n) {
                // dup2 clears close-on-exec on the new descriptor.
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
