//! Progress bars, signals and formatting.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_repo::{CancelToken, Progress};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    bytes: AtomicU64,
    total_files: AtomicU64,
    total_bytes: AtomicU64,
    done: AtomicBool,
}

/// A [`Progress`] for the terminal: a bar on standard error when it is a
/// TTY (files, bytes, throughput, ETA), warnings always, info lines unless
/// quiet. The engine only bumps counters; a ticker thread draws.
pub struct Reporter {
    counters: Arc<Counters>,
    bar: Option<ProgressBar>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
    info: bool,
}

/// What a [`Reporter`] shows on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Show {
    /// A progress bar (on a terminal only).
    pub bar: bool,
    /// Informational lines (warnings always show).
    pub info: bool,
}

impl Reporter {
    pub fn new(show: Show) -> Reporter {
        let Show { bar: with_bar, info } = show;
        let counters = Arc::new(Counters::default());
        let bar = (with_bar && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
            bar.set_style(
                ProgressStyle::with_template(
                    "[{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} \
                     ETA {eta} {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        let ticker = bar.clone().map(|bar| {
            let c = counters.clone();
            std::thread::spawn(move || {
                while !c.done.load(Ordering::Relaxed) {
                    bar.set_length(c.total_bytes.load(Ordering::Relaxed).max(c.bytes.load(Ordering::Relaxed)));
                    bar.set_position(c.bytes.load(Ordering::Relaxed));
                    let total = c.total_files.load(Ordering::Relaxed);
                    let files = c.files.load(Ordering::Relaxed);
                    bar.set_message(if total > 0 {
                        format!("{files}/{total} files")
                    } else {
                        format!("{files} files")
                    });
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        });
        Reporter { counters, bar, ticker: Mutex::new(ticker), info }
    }

    /// Whether a progress bar is drawn (totals and ETA are only worth
    /// counting for one).
    pub fn draws_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// Stop drawing and clear the bar.
    pub fn finish(&self) {
        self.counters.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.lock().expect("ticker lock").take() {
            let _ = t.join();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Progress for Reporter {
    fn total(&self, files: u64, bytes: u64) {
        self.counters.total_files.store(files, Ordering::Relaxed);
        self.counters.total_bytes.store(bytes, Ordering::Relaxed);
    }

    fn advance(&self, files: u64, bytes: u64) {
        self.counters.files.fetch_add(files, Ordering::Relaxed);
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn warning(&self, path: &Path, message: &str) {
        self.print(&format!("warning: {}: {message}", path.display()));
    }

    fn info(&self, message: &str) {
        if self.info {
            self.print(message);
        }
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if SIGNALLED.swap(true, Ordering::SeqCst) {
        // Second signal: the user does not want to wait for a checkpoint.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Turn SIGINT and SIGTERM into a cancellation that operations honour
/// (a backup saves a checkpoint first); a second signal exits at once.
pub fn cancel_on_signals(cancel: CancelToken) {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only touches an atomic and calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    std::thread::spawn(move || {
        while !SIGNALLED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("\nstopping (saving what is done; press Ctrl-C again to quit at once)");
        cancel.cancel();
    });
}

pub fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}.{:01}", s / 60, s % 60, ms % 1000 / 100)
    }
}

pub fn local_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `ls -l` style type and permission letters.
pub fn mode_string(node_type: backstop_repo::tree::NodeType, mode: u32) -> String {
    use backstop_repo::tree::NodeType;
    let kind = match node_type {
        NodeType::File => '-',
        NodeType::Dir => 'd',
        NodeType::Symlink => 'l',
        NodeType::BlockDevice => 'b',
        NodeType::CharDevice => 'c',
        NodeType::Fifo => 'p',
        NodeType::Socket => 's',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Print a value as pretty JSON on standard output.
pub fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("serialisable"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_repo::tree::NodeType;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(NodeType::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(NodeType::File, 0o640), "-rw-r-----");
        assert_eq!(mode_string(NodeType::Symlink, 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration_ms(1_234), "0:01.2");
        assert_eq!(duration_ms(3_723_000), "1:02:03");
    }
}
