//! `backstop serve` as a separate process, and the CLI client against it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::PASSWORD;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backstop"));
    cmd.env("RUST_BACKTRACE", "0")
        .env("BACKSTOP_KDF_MEMORY_KIB", "64")
        .env_remove("BACKSTOP_REPOSITORY")
        .env_remove("BACKSTOP_PASSWORD_FILE")
        .stdin(Stdio::null());
    cmd
}

/// A `backstop serve` process.
pub struct Serve {
    pub child: Child,
    pub port: u16,
    args: Vec<String>,
}

impl Serve {
    /// Start serve with `args`; returns it and the admin token if this was
    /// a first start.
    pub fn start(port: u16, args: &[String]) -> (Serve, Option<String>) {
        let mut child = bin()
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(t) = line.split_whitespace().find(|w| w.starts_with("bst_")) {
                    let _ = tx.send(t.to_string());
                }
            }
        });
        let serve = Serve { child, port, args: args.to_vec() };
        serve.wait_ready();
        let token = rx.recv_timeout(Duration::from_millis(500)).ok();
        (serve, token)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "backstop serve did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn restart(&mut self) {
        self.kill9();
        let (again, _) = Serve::start(self.port, &self.args);
        *self = again;
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the CLI client against `server` with `token`; returns JSON (or the raw text).
pub fn client(server: &str, token: &str, args: &[&str]) -> Value {
    let out = bin()
        .arg("--json")
        .args(args)
        .env("BACKSTOP_SERVER", server)
        .env("BACKSTOP_TOKEN", token)
        .env("BACKSTOP_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "backstop {args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or(Value::String(stdout))
}

pub fn job(server: &str, token: &str, id: &str) -> Value {
    client(server, token, &["jobs", "get", id])
}

pub fn wait_for(server: &str, token: &str, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = job(server, token, id);
        if pred(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} never became {what}: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
