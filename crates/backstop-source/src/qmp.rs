//! A client of QEMU's JSON protocols over a Unix socket: the monitor (QMP,
//! QEMU's `docs/interop/qmp-spec`) and the guest agent (QGA), which speak
//! the same `{"execute": …}` / `{"return": …}` lines.
//!
//! Synchronous, one command at a time; asynchronous events between
//! answers are skipped (jobs are polled instead). Every read has a
//! deadline, and so has every command's wait for its answer: a hung peer,
//! or one that talks on without ever answering, is an error, never a hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Answers longer than this are refused (a peer that is not QEMU).
const MAX_LINE: usize = 16 << 20;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// For messages: which socket this is.
    what: String,
    /// How long a read, and a command's wait for its answer, may take.
    timeout: Duration,
    /// An earlier read or write failed (a timeout among them): a late answer
    /// could be taken for the next command's, so the connection is not used again.
    broken: bool,
}

/// What went wrong talking to QEMU.
#[derive(Debug)]
pub enum QmpError {
    /// The socket could not be used, or the peer went away or is too slow.
    Io(std::io::Error),
    /// The peer said something that is not the protocol.
    Protocol(String),
    /// QEMU refused the command: its class and description.
    Command { class: String, desc: String },
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QmpError::Io(e) => write!(f, "{e}"),
            QmpError::Protocol(e) => write!(f, "not QEMU's protocol: {e}"),
            QmpError::Command { class, desc } => write!(f, "{desc} ({class})"),
        }
    }
}

impl From<std::io::Error> for QmpError {
    fn from(e: std::io::Error) -> QmpError {
        QmpError::Io(e)
    }
}

impl Qmp {
    /// Connect to a socket whose reads time out after `timeout`.
    fn open(socket: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            what: socket.display().to_string(),
            timeout,
            broken: false,
        })
    }

    /// Connect to QEMU's monitor: read its greeting and leave negotiation
    /// mode (`qmp_capabilities`).
    pub fn monitor(socket: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let mut qmp = Qmp::open(socket, timeout)?;
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("{} did not greet as a QEMU monitor", qmp.what)));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Connect to a guest agent and synchronise (`guest-sync` with a
    /// random id, answers to earlier requests skipped), so that the next
    /// answer read is to the next command.
    pub fn agent(socket: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let mut qga = Qmp::open(socket, timeout)?;
        let id = u32::from_le_bytes(backstop_repo::id::SessionId::random().as_bytes()[..4].try_into().expect("4"));
        qga.send("guest-sync", json!({"id": id}))?;
        let deadline = Instant::now() + timeout;
        loop {
            let message = qga.read_message()?;
            if message.get("return") == Some(&json!(id)) {
                return Ok(qga);
            }
            qga.check_deadline(deadline, "guest-sync")?;
        }
    }

    /// Past `deadline`, waiting for the answer to `command` is an error
    /// (the peer keeps sending other messages).
    fn check_deadline(&self, deadline: Instant, command: &str) -> Result<(), QmpError> {
        if Instant::now() <= deadline {
            return Ok(());
        }
        Err(QmpError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "{} sent other messages for {} s without answering {command}",
                self.what,
                self.timeout.as_secs_f64()
            ),
        )))
    }

    fn send(&mut self, command: &str, arguments: Value) -> Result<(), QmpError> {
        let mut line = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))
            .map_err(|e| QmpError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        Ok(())
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut self.reader).take(MAX_LINE as u64).read_until(b'\n', &mut line).map_err(|e| {
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                    QmpError::Io(std::io::Error::new(e.kind(), format!("{} did not answer in time", self.what)))
                } else {
                    QmpError::Io(e)
                }
            })?;
            if n == 0 {
                return Err(QmpError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} closed the connection", self.what),
                )));
            }
            if line.len() >= MAX_LINE {
                return Err(QmpError::Protocol(format!("an answer of {} longer than {MAX_LINE} bytes", self.what)));
            }
            // The agent may send a 0xff sentinel before a synchronised answer.
            let text: Vec<u8> = line.iter().copied().filter(|&b| b != 0xff).collect();
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(&text)
                .map_err(|e| QmpError::Protocol(format!("{}: {e}: {}", self.what, String::from_utf8_lossy(&text))));
        }
    }

    /// Run `command` and return its `return` value; events read meanwhile
    /// are skipped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        if self.broken {
            return Err(QmpError::Protocol(format!("{}: the connection failed earlier", self.what)));
        }
        let answer = self.answer(command, arguments);
        if matches!(answer, Err(QmpError::Io(_) | QmpError::Protocol(_))) {
            self.broken = true;
        }
        answer
    }

    fn answer(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.send(command, arguments)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let message = self.read_message()?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let text = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command { class: text("class"), desc: text("desc") });
            }
            if message.get("event").is_none() {
                return Err(QmpError::Protocol(format!("{}: unexpected message {message}", self.what)));
            }
            self.check_deadline(deadline, command)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// What a stand-in peer does with a line it reads.
    enum Reply {
        /// Writes this.
        Once(&'static str),
        /// Writes this, a millisecond apart, until the other end goes away.
        Forever(&'static str),
    }

    /// A peer on a fresh socket: `greet` is written at once, then each line
    /// read is replied to by `reply`.
    fn peer(greet: &'static str, reply: fn(&str) -> Reply) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let _ = writer.write_all(greet.as_bytes());
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                match reply(&line) {
                    Reply::Once(text) => {
                        if writer.write_all(text.as_bytes()).is_err() {
                            return;
                        }
                    }
                    Reply::Forever(text) => {
                        while writer.write_all(text.as_bytes()).is_ok() {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        return;
                    }
                }
            }
        });
        (dir, path)
    }

    /// Run `f` on a thread; its result, or `None` if it took over 20 s.
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(20)).ok()
    }

    #[test]
    fn an_agent_that_talks_without_answering_the_sync_times_out() {
        let (_dir, path) = peer("", |_| Reply::Forever("{\"return\": 1}\n"));
        let result = within(move || Qmp::agent(&path, Duration::from_millis(300)).map(drop));
        let err = result.expect("guest-sync returned, not hung").expect_err("no answer to the sync");
        assert!(err.to_string().contains("without answering guest-sync"), "{err}");
    }

    #[test]
    fn a_monitor_that_sends_only_events_times_out() {
        let (_dir, path) = peer("{\"QMP\": {}}\n", |line| {
            if line.contains("qmp_capabilities") {
                Reply::Once("{\"return\": {}}\n")
            } else {
                Reply::Forever("{\"event\": \"JOB_STATUS_CHANGE\"}\n")
            }
        });
        let result = within(move || {
            let mut qmp = Qmp::monitor(&path, Duration::from_millis(300))?;
            qmp.execute("query-jobs", json!({}))
        });
        let err = result.expect("the command returned, not hung").expect_err("no answer to the command");
        assert!(err.to_string().contains("without answering query-jobs"), "{err}");
    }
}
