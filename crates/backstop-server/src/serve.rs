//! Serving connections, over plain HTTP or HTTPS, with the limits that keep
//! slow and greedy clients from holding the service: a cap on connections
//! (more are closed as they arrive), a deadline for a request's head and a
//! TLS handshake (which also closes idle keep-alive connections), and an
//! idle timeout on every connection (nothing moved either way for that
//! long). Tokens are not needed to be subject to any of it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use backstop_repo::CancelToken;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// What one coordinator lets its clients hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// A request's head, and a TLS handshake, must arrive within this; a
    /// keep-alive connection waiting for its next request is closed after it.
    pub header_timeout: Duration,
    /// A connection on which nothing moved for this long is closed: longer
    /// than the longest claim long-poll (60 s) and than the event streams'
    /// keep-alive (15 s).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_connections: 1024, header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(90) }
    }
}

/// An I/O stream that fails with `TimedOut` once neither reads nor writes
/// have made progress for `idle`.
struct Idle<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Idle<T> {
    fn new(inner: T, idle: Duration) -> Idle<T> {
        Idle { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// After a `Pending` from the stream: has it been idle too long?
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the connection was idle too long")
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve `app` on `listener` (over TLS with `tls`) until `stop`; then stop
/// accepting, let connections finish their requests, and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    stop: CancelToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    while !stop.is_cancelled() {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => break,
        };
        let Ok((tcp, _)) = accepted else { continue };
        // Over the cap: closed at once, not queued.
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let _ = tcp.set_nodelay(true);
        let (tls, app, limits, mut closed) = (tls.clone(), app.clone(), limits.clone(), closed.clone());
        connections.spawn(async move {
            let _permit = permit;
            let io = Idle::new(tcp, limits.idle_timeout);
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await else {
                        return;
                    };
                    connection(stream, app, &limits, &mut closed).await
                }
                None => connection(io, app, &limits, &mut closed).await,
            }
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    let _ = closing.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
}

async fn connection<I>(io: I, app: Router, limits: &Limits, closed: &mut tokio::sync::watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // HTTP/1.1 only (what the API and its event streams use): its header
    // deadline starts with the connection, where a protocol sniffer would
    // wait for a first byte with none.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let service = TowerToHyperService::new(app);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = closed.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
