//! Test helpers shared by Backstop's test suites.
//!
//! [`S3Server`] runs a real S3-protocol server (the `s3s-fs` implementation,
//! with SigV4 authentication) on `127.0.0.1` on a free port, storing objects in
//! a temporary directory, for as long as the value lives. Tests talk to it over
//! HTTP exactly as they would to MinIO or Ceph RGW. [`postgres::Postgres`]
//! finds or starts a PostgreSQL server and hands out fresh databases,
//! [`mysql::Mysql`] a MariaDB one; [`kubernetes::FakeCluster`] stands in for
//! a Kubernetes API server.

pub mod fixture;
pub mod kubernetes;
pub mod mysql;
pub mod postgres;
mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// An HTTP server on 127.0.0.1 that answers every request with `reply`
/// (a whole response, status line to body), for tests of what a client
/// does with an answer. Returns its port and a count of the connections it
/// took.
pub fn canned_http(reply: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    (port, hits)
}

pub const ACCESS_KEY: &str = "backstop-test-key";
pub const SECRET_KEY: &str = "backstop-test-secret";
pub const REGION: &str = "us-east-1";

pub struct S3Server {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _server: server::ServerThread,
}

impl S3Server {
    /// Start a server with the given buckets (created empty).
    pub fn start(buckets: &[&str]) -> S3Server {
        S3Server::start_with_keys(buckets, ACCESS_KEY, SECRET_KEY)
    }

    /// [`start`](S3Server::start) with these credentials instead of the
    /// usual test ones.
    pub fn start_with_keys(buckets: &[&str], access_key: &str, secret_key: &str) -> S3Server {
        let (access_key, secret_key) = (access_key.to_string(), secret_key.to_string());
        let dir = tempfile::tempdir().expect("create the S3 server's directory");
        for bucket in buckets {
            std::fs::create_dir(dir.path().join(bucket)).expect("create bucket directory");
        }
        let root = dir.path().to_path_buf();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let server = server::ServerThread::spawn("s3-test-server", move |mut shutdown_rx| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("start the S3 server runtime");
            runtime.block_on(async move {
                let fs = s3s_fs::FileSystem::new(&root).expect("open the S3 server's directory");
                let mut builder = S3ServiceBuilder::new(fs);
                builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
                let service = builder.build();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
                addr_tx.send(listener.local_addr().expect("local address")).expect("report the address");
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let service = service.clone();
                            let http = http.clone();
                            tokio::spawn(async move {
                                let _ = http.serve_connection(TokioIo::new(socket), service).await;
                            });
                        }
                        _ = &mut shutdown_rx => break,
                    }
                }
            });
        });
        let addr = addr_rx.recv().expect("the S3 server failed to start");
        S3Server { addr, dir, _server: server }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory holding the buckets (one subdirectory each), for tests
    /// that damage objects behind the server's back.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Environment variables that point an S3 client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }
}
