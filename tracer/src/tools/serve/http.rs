//! Just enough HTTP/1.1 for a metrics endpoint: GET and HEAD, keep-alive, `Content-Length`
//! bodies, no chunked encoding, no TLS. Each connection is a task that parses requests and
//! hands them to the serve loop over a channel; the loop owns the collectors (the BPF maps)
//! and answers through a oneshot. Slow or idle clients time out without holding anything up.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

/// A parsed request: what the serve loop needs to answer it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub accept: String,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

pub type Exchange = (Request, oneshot::Sender<Response>);

const MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 64;
/// A request must arrive completely within this time once it started.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections are closed after this (longer than any sane scrape interval).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Accepts connections on `listener` until the receiving side of `requests` is gone.
pub fn spawn(listener: TcpListener, requests: mpsc::Sender<Exchange>) {
    let open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if requests.is_closed() {
                return;
            }
            let requests = requests.clone();
            let open = open.clone();
            if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut stream = stream;
                    let busy = Response::text(503, "too many connections\n");
                    let _ = write_response(&mut stream, &busy, false, false).await;
                });
                continue;
            }
            tokio::spawn(async move {
                let _ = connection(stream, requests).await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
}

/// Serves requests on one connection until it closes, errs or times out.
async fn connection(
    mut stream: TcpStream,
    requests: mpsc::Sender<Exchange>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // Wait (idle) for the first byte of the next request, then for the whole head.
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEADER_BYTES {
                let r = Response::text(431, "request header too large\n");
                return write_response(&mut stream, &r, false, false).await;
            }
            let limit = if buf.is_empty() {
                IDLE_TIMEOUT
            } else {
                REQUEST_TIMEOUT
            };
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(limit, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Err(_) => return Ok(()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e),
            };
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let Some(parsed) = parse_head(&head) else {
            let r = Response::text(400, "bad request\n");
            return write_response(&mut stream, &r, false, false).await;
        };
        if parsed.chunked || parsed.content_length > MAX_BODY_BYTES {
            let r = Response::text(400, "request bodies are not accepted\n");
            return write_response(&mut stream, &r, false, false).await;
        }
        // Skip a (pointless) body so the next request on this connection parses.
        while buf.len() < parsed.content_length {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Err(_) => return Ok(()),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e),
            }
        }
        buf.drain(..parsed.content_length);
        let head_only = parsed.request.method == "HEAD";
        let (tx, rx) = oneshot::channel();
        if requests.send((parsed.request, tx)).await.is_err() {
            return Ok(());
        }
        let Ok(response) = rx.await else {
            return Ok(());
        };
        write_response(&mut stream, &response, parsed.keep_alive, head_only).await?;
        if !parsed.keep_alive {
            return Ok(());
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

struct Head {
    request: Request,
    keep_alive: bool,
    content_length: usize,
    chunked: bool,
}

fn parse_head(head: &str) -> Option<Head> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    if first.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut accept = String::new();
    let mut connection = String::new();
    let mut content_length = 0;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "accept" => accept = value.to_string(),
            "connection" => connection = value.to_ascii_lowercase(),
            "content-length" => content_length = value.parse().ok()?,
            "transfer-encoding" => chunked = !value.eq_ignore_ascii_case("identity"),
            _ => {}
        }
    }
    // HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes unless asked to keep it.
    let keep_alive = if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    let path = target.split('?').next().unwrap_or(target).to_string();
    Some(Head {
        request: Request {
            method: method.to_string(),
            path,
            accept,
        },
        keep_alive,
        content_length,
        chunked,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    if response.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head(
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text",
        )
        .unwrap();
        assert_eq!(h.request.path, "/metrics");
        assert_eq!(h.request.accept, "application/openmetrics-text");
        assert!(h.keep_alive);
        assert!(!parse_head("GET / HTTP/1.0").unwrap().keep_alive);
        assert!(
            !parse_head("GET / HTTP/1.1\r\nConnection: close")
                .unwrap()
                .keep_alive
        );
        assert!(parse_head("GET /").is_none());
        assert!(parse_head("GET / HTTP/1.1\r\nbroken").is_none());
        assert!(parse_head("GET / HTTP/1.1\r\nContent-Length: x").is_none());
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
    }
}
