//! A minimal HTTP/1.1 client for `demo` and `bench store`, and waiting for a child server to
//! answer.
//!
//! The client is std-only on purpose: one `GET` per connection (`Connection: close`), which is
//! what a browser's first request of a page costs, and no HTTP client in the product binary.

use super::sandbox::Proc;
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// An HTTP answer: status and body (de-chunked).
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET path` on `127.0.0.1:port`, one connection, read to the end.
pub fn get(port: u16, path: &str) -> anyhow::Result<Answer> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok(Answer { status, body })
}

fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = raw.get(..size).context("truncated chunk")?;
        out.extend_from_slice(chunk);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
}

/// Waits until `GET path` answers 200, failing early when `server` exits.
pub fn wait_http(
    server: &mut Proc,
    port: u16,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("taskscope serve exited ({status}) before answering");
        }
        if let Ok(a) = get(port, path) {
            if a.status == 200 {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("{path} on port {port} did not answer 200 within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the child's `/healthz` says Redis is connected and keyspace notifications are
/// on (so nothing the generator writes next goes unseen), failing early when it exits.
pub fn wait_ready(server: &mut Proc, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("taskscope exited during start ({status})");
        }
        if let Ok(a) = get(port, "/healthz") {
            let health: serde_json::Value =
                serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
            if a.status == 200
                && health["redis"] == "connected"
                && health["change_feed"] == "notifications"
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("taskscope was not ready within {timeout:?} (127.0.0.1:{port}/healthz)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
