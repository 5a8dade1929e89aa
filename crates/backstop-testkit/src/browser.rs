//! A real headless Chromium, driven through ChromeDriver's W3C WebDriver
//! protocol (JSON over HTTP on 127.0.0.1), for the web UI's tests.
//!
//! [`Browser::start`] starts `chromedriver` on a free port and opens a
//! session of `/usr/bin/chromium` (or `$CHROMIUM`) with a fresh profile
//! and no background networking (this machine has no internet: Chromium
//! would keep trying). Without both programs it panics and says what to
//! install — a browser test never skips. The client is a few lines of
//! HTTP/1.1 over `std::net`: ChromeDriver answers every command with one
//! JSON body of known length.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver command that failed: its `error` code and message.
#[derive(Debug)]
pub struct WebDriverError {
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

fn find_program(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// What [`Browser::fetch`] got.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub disposition: Option<String>,
    pub body: Vec<u8>,
}

/// One element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// A headless Chromium with a window of 1280×900.
    pub fn start() -> Browser {
        let chromium = find_program("CHROMIUM", &["/usr/bin/chromium", "/usr/bin/chromium-browser"])
            .filter(|p| p.exists())
            .expect("no Chromium: install Debian's chromium and chromium-driver (scripts/test does)");
        let chromedriver = find_program("CHROMEDRIVER", &["/usr/bin/chromedriver"])
            .filter(|p| p.exists())
            .expect("no chromedriver: install Debian's chromium-driver (scripts/test does)");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser { driver, port, session: String::new(), _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let answer = browser.call("POST", "/session", Some(caps)).expect("open a Chromium session");
        browser.session = answer["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    /// One WebDriver command; `path` is below the driver's root.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to chromedriver");
        conn.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        conn.write_all(request.as_bytes()).expect("send to chromedriver");
        let mut reader = BufReader::new(conn);
        let mut length = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read chromedriver's answer");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let mut raw = Vec::new();
        match length {
            Some(n) => {
                raw.resize(n, 0);
                reader.read_exact(&mut raw).expect("read chromedriver's answer");
            }
            None => {
                reader.read_to_end(&mut raw).expect("read chromedriver's answer");
            }
        }
        let answer: Value = serde_json::from_slice(&raw).expect("chromedriver answers JSON");
        let value = answer["value"].clone();
        if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
            return Err(WebDriverError {
                error: error.to_string(),
                message: value["message"].as_str().unwrap_or_default().lines().next().unwrap_or_default().to_string(),
            });
        }
        Ok(value)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.session_call(method, path, body).unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.must("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// The page's HTML as the browser has it now.
    pub fn source(&self) -> String {
        self.must("GET", "/source", None).as_str().unwrap_or_default().to_string()
    }

    /// The first element matching a CSS selector, if any.
    pub fn try_find(&self, css: &str) -> Option<Element> {
        let found = self.session_call("POST", "/element", Some(json!({"using": "css selector", "value": css}))).ok()?;
        found[ELEMENT].as_str().map(|id| Element(id.to_string()))
    }

    pub fn find(&self, css: &str) -> Element {
        self.try_find(css).unwrap_or_else(|| panic!("no element {css:?} on {}", self.url()))
    }

    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let found = self.must("POST", "/elements", Some(json!({"using": "css selector", "value": css})));
        found
            .as_array()
            .map(|all| all.iter().filter_map(|e| e[ELEMENT].as_str()).map(|id| Element(id.to_string())).collect())
            .unwrap_or_default()
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        self.text_of(&self.find(css))
    }

    pub fn text_of(&self, e: &Element) -> String {
        self.must("GET", &format!("/element/{}/text", e.0), None).as_str().unwrap_or_default().to_string()
    }

    /// A DOM property (`value`, `max`, …) of an element, as JSON.
    pub fn property(&self, e: &Element, name: &str) -> Value {
        self.must("GET", &format!("/element/{}/property/{name}", e.0), None)
    }

    /// An HTML attribute of an element, if it has it.
    pub fn attribute(&self, e: &Element, name: &str) -> Option<String> {
        self.must("GET", &format!("/element/{}/attribute/{name}", e.0), None).as_str().map(str::to_string)
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.must("POST", &format!("/element/{}/click", e.0), Some(json!({})));
    }

    /// Clear a field and type `text` into it.
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.must("POST", &format!("/element/{}/clear", e.0), Some(json!({})));
        self.must("POST", &format!("/element/{}/value", e.0), Some(json!({ "text": text })));
    }

    /// Run `script` (a function body; `arguments` are `args`) and return its value.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.must("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    /// Run `script` as an async function body whose last argument is the callback to call with its result.
    pub fn execute_async(&self, script: &str, args: Value) -> Value {
        self.must("POST", "/execute/async", Some(json!({"script": script, "args": args})))
    }

    /// Fetch `url` from the page, with its cookies (a download, as the
    /// browser would make it): the status, the `Content-Disposition` and
    /// the body.
    pub fn fetch(&self, url: &str) -> Fetched {
        use base64::Engine;
        let answer = self.execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], {credentials: 'same-origin'}).then(async r => {
               const bytes = new Uint8Array(await r.arrayBuffer());
               let text = '';
               for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
               done({status: r.status, disposition: r.headers.get('content-disposition'), body: btoa(text)});
             });",
            json!([url]),
        );
        let body = answer["body"].as_str().unwrap_or_default();
        Fetched {
            status: answer["status"].as_u64().unwrap_or(0) as u16,
            disposition: answer["disposition"].as_str().map(str::to_string),
            body: base64::engine::general_purpose::STANDARD.decode(body).expect("base64 from the page"),
        }
    }

    /// The page as a PNG at `path` (its directory is made).
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.must("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap_or_default()).expect("base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Forget every cookie (log out without the server knowing).
    pub fn delete_cookies(&self) {
        self.must("DELETE", "/cookie", None);
    }

    /// Wait until `ready` holds (up to `timeout`), polling every 100 ms.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut ready: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ready(self) {
            assert!(Instant::now() < deadline, "waited {timeout:?} for {what} on {}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
