//! Private database servers for tests: started for the life of the test
//! process, their files removed when it exits.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Start `cmd` from a thread that lives as long as the test process, with
/// a parent-death signal (which follows the spawning thread, not the
/// process): the server stops when the tests end. Panics with `name` if it
/// cannot start.
pub(crate) fn spawn_for_process_life(mut cmd: Command, name: &str) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only this child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("test-{name}"))
        .spawn(move || {
            let child = cmd.spawn();
            let ok = child.is_ok();
            let _ = tx.send(child.map(|_| ()).map_err(|e| e.to_string()));
            if ok {
                loop {
                    std::thread::park();
                }
            }
        })
        .expect("spawn the server's thread");
    rx.recv().expect("the server's thread reports").unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
}

static AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Remove `dir` when the test process exits.
pub(crate) fn remove_at_exit(dir: PathBuf) {
    extern "C" fn remove_all() {
        for dir in AT_EXIT.lock().map(|d| d.clone()).unwrap_or_default() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let mut dirs = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    if dirs.is_empty() {
        // SAFETY: registering a handler with no preconditions.
        unsafe { libc::atexit(remove_all) };
    }
    dirs.push(dir);
}

/// A test server running on a thread of its own: told to stop and joined
/// when dropped.
pub(crate) struct ServerThread {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Run `serve` on a thread named `name`; it gets the signal to stop.
    pub(crate) fn spawn(name: &str, serve: impl FnOnce(tokio::sync::oneshot::Receiver<()>) + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(rx))
            .unwrap_or_else(|e| panic!("spawn the {name} thread: {e}"));
        ServerThread { shutdown: Some(tx), thread: Some(thread) }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
