//! Serves the router: the accept loop, per-connection limits and shutdown.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout never fires and a client
//! that sends half a request line holds its connection forever; this loop gives it one. Each
//! connection's socket is wrapped in [`StallTimeout`]: a write that cannot proceed for
//! `write_timeout` (the client stopped reading a stream) fails and the connection closes.
//!
//! Shutdown: when `shutdown` turns true the listener closes, every connection is told to
//! finish its current response (SSE streams end on the same signal), and whatever is still
//! open after `grace` is dropped, so the process can flush its store and exit.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// A request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// A write that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// How long shutdown waits for open responses before dropping them.
    pub grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(2),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true (or its sender is dropped).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let (close_tx, close_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "Cannot accept an HTTP connection.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(StallTimeout::new(stream, options.write_timeout));
                let service = TowerToHyperService::new(app.clone());
                let mut close = close_rx.clone();
                connections.spawn(async move {
                    let mut builder = Builder::new(TokioExecutor::new());
                    builder
                        .http1()
                        .timer(TokioTimer::new())
                        .header_read_timeout(options.header_read_timeout);
                    builder.http2().timer(TokioTimer::new());
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    tokio::pin!(conn);
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "HTTP connection ended with an error.");
                            }
                            return;
                        }
                        _ = turned_true(&mut close) => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = turned_true(&mut shutdown) => break,
        }
    }
    drop(listener);
    let _ = close_tx.send(true);
    let deadline = tokio::time::sleep(options.grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(
                    open = connections.len(),
                    "Closing HTTP connections still open after the shutdown grace period."
                );
                connections.abort_all();
                break;
            }
        }
    }
    Ok(())
}

/// Resolves when the flag turns true or its sender is gone.
async fn turned_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|on| *on).await;
}

/// A socket whose writes fail with `TimedOut` once one has been pending for `limit`.
pub struct StallTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write (or flush) is pending; reset when it completes.
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> StallTimeout<S> {
        StallTimeout {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// After the inner write returned `poll`: arm, check or disarm the stall timer.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server of one route on a free loopback port, and its shutdown switch.
    async fn start(
        options: ServerOptions,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/", axum::routing::get(|| async { "hi" }))
            .route(
                "/forever",
                axum::routing::get(|| async {
                    // A body that never ends (and ignores shutdown).
                    axum::body::Body::from_stream(futures::stream::pending::<
                        Result<Vec<u8>, io::Error>,
                    >())
                }),
            );
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, app, options, stopped));
        (addr, stop, server)
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_cut_off() {
        use tokio::io::AsyncReadExt;
        let (addr, _stop, _server) = start(ServerOptions {
            header_read_timeout: Duration::from_millis(300),
            ..ServerOptions::default()
        })
        .await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the half-sent request held its connection");
    }

    #[tokio::test]
    async fn shutdown_drops_connections_still_open_after_the_grace_period() {
        let (addr, stop, server) = start(ServerOptions {
            grace: Duration::from_millis(300),
            ..ServerOptions::default()
        })
        .await;
        // A response whose body never ends is streaming when the shutdown comes.
        use tokio::io::AsyncReadExt;
        let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
        open.write_all(b"GET /forever HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 64];
        let n = open.read(&mut head).await.unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"));
        stop.send(true).unwrap();
        let done = tokio::time::timeout(Duration::from_secs(3), server).await;
        assert!(done.is_ok(), "serve() outlived its grace period");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening"
        );
    }

    #[tokio::test]
    async fn a_write_the_peer_never_takes_times_out() {
        // A duplex pipe with a 16-byte buffer nobody reads: the second write stalls.
        let (a, _b) = tokio::io::duplex(16);
        let mut io = StallTimeout::new(a, Duration::from_millis(200));
        io.write_all(&[0; 16]).await.unwrap();
        let err = io.write_all(&[0; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
