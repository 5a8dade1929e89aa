//! Test helpers shared by Backstop's test suites.
//!
//! [`S3Server`] runs a real S3-protocol server (the `s3s-fs` implementation,
//! with SigV4 authentication) on `127.0.0.1` on a free port, storing objects in
//! a temporary directory, for as long as the value lives. Tests talk to it over
//! HTTP exactly as they would to MinIO or Ceph RGW; it counts what it is
//! asked ([`S3Stats`]) and can delay every answer, and the
//! `backstop-s3-server` binary runs it standalone for the benchmarks. [`postgres::Postgres`]
//! finds or starts a PostgreSQL server and hands out fresh databases,
//! [`mysql::Mysql`] a MariaDB one; [`kubernetes::FakeCluster`] stands in for
//! a Kubernetes API server.

pub mod browser;
pub mod fixture;
pub mod kubernetes;
pub mod mysql;
pub mod postgres;
mod s3;
mod server;
pub mod tls;

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

pub use s3::{ACCESS_KEY, REGION, S3Server, S3ServerOptions, S3Stats, SECRET_KEY};
