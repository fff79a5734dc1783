//! The metrics endpoint: a tiny HTTP/1.1 server (one request per connection) answering
//! `GET /metrics` with the Prometheus text of [`crate::metrics`]. It is a plain task on the
//! delivery arbiter, next to the QueueManager it asks for queue counts.
//!
//! Hardening: a request head is at most [`MAX_REQUEST`] bytes and must arrive within
//! [`READ_TIMEOUT`]; at most [`MAX_CONCURRENT`] scrapes are served at once (the rest wait in
//! the accept backlog); every answer carries `Connection: close`.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::queue_manager::{Counts, QueueCounts, QueueManager};
use crate::metrics::{metrics, render_prometheus, PROMETHEUS_CONTENT_TYPE};

/// Largest request head accepted (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time allowed for the whole request head to arrive.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for writing the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scrape waits for the queue manager's counts before leaving them out.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once.
pub const MAX_CONCURRENT: usize = 32;

/// Accept and answer scrapes until the arbiter stops.
pub async fn serve(listener: TcpListener, queue: Option<Addr<QueueManager>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let queue = queue.clone();
                actix::spawn(async move {
                    handle(stream, queue).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

async fn handle(mut stream: TcpStream, queue: Option<Addr<QueueManager>>) {
    let route = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => route(&head),
        Ok(Ok(None)) => Route::BadRequest, // too large
        Ok(Err(_)) => return,              // closed or reset before a full head
        Err(_) => return,                  // too slow: just close
    };
    let (status, extra, body, head_only) = match route {
        Route::Metrics { head_only } => {
            let counts = queue_counts(queue).await;
            (
                "200 OK",
                format!("Content-Type: {PROMETHEUS_CONTENT_TYPE}\r\n"),
                render_prometheus(metrics(), counts),
                head_only,
            )
        }
        Route::NotFound => ("404 Not Found", plain(), "not found\n".to_string(), false),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            format!("{}Allow: GET, HEAD\r\n", plain()),
            "method not allowed\n".to_string(),
            false,
        ),
        Route::BadRequest => ("400 Bad Request", plain(), "bad request\n".to_string(), false),
    };
    let mut answer = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        answer.extend_from_slice(body.as_bytes());
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
}

fn plain() -> String {
    "Content-Type: text/plain; charset=utf-8\r\n".to_string()
}

async fn queue_counts(queue: Option<Addr<QueueManager>>) -> Option<QueueCounts> {
    let q = queue?;
    match tokio::time::timeout(QUEUE_TIMEOUT, q.send(Counts)).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// Read up to the blank line ending the request head. `Ok(None)`: over [`MAX_REQUEST`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Where the head ends (`\r\n\r\n`, or `\n\n` from lenient clients), if it is all there
/// within the size limit.
fn head_end(buf: &[u8]) -> Option<usize> {
    let limit = &buf[..buf.len().min(MAX_REQUEST)];
    let crlf = memchr::memmem::find(limit, b"\r\n\r\n");
    let lf = memchr::memmem::find(limit, b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::MethodNotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0"), Route::Metrics { head_only: false });
        assert_eq!(route(b"HEAD /metrics HTTP/1.1"), Route::Metrics { head_only: true });
        assert_eq!(route(b"GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET /metrics"), Route::BadRequest);
        assert_eq!(route(b"GET  /metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SMTP/1.0"), Route::BadRequest);
        assert_eq!(route(b"GET metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route(b"\xff /metrics HTTP/1.1"), Route::BadRequest);
    }

    #[test]
    fn head_end_within_limit() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        let mut big = vec![b'a'; MAX_REQUEST + 10];
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head_end(&big), None);
    }
}
