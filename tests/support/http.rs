//! HTTP for the tests of the management listener: a minimal HTTP/1.1
//! client (one request per connection, `Connection: close`), the listener's
//! address from the broker's `http listening on` line, and a parser for the
//! Prometheus text format.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Broker;

/// `management.listener.http` on a free port, with test credentials.
pub const HTTP_CONF: &str = "management.listener.http = 127.0.0.1:0\n\
management.default_application.id = admin\n\
management.default_application.secret = s3cret\n";

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Broker {
    /// The address of the `http listening on` line (waits up to 10 s).
    pub async fn http_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.stdout();
            let current = out
                .rsplit("===== harness: broker restart =====")
                .next()
                .unwrap_or("");
            if let Some(addr) = current
                .lines()
                .filter_map(|l| l.trim().strip_prefix("http listening on "))
                .find_map(|a| a.trim().parse().ok())
            {
                return addr;
            }
            assert!(Instant::now() < deadline, "no `http listening on` line:\n{out}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends one request; `auth`: basic-auth user and password; `body`: JSON.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> Answer {
    use base64::Engine;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((user, pass)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connect to the HTTP listener");
        s.write_all(req.as_bytes()).await.expect("send the request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read the answer");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 10 s"));
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer { status, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET path` with the test credentials.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, Some(("admin", "s3cret")), None).await
}

/// Every sample of a Prometheus text scrape: `name{labels}` to value.
pub fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Scrapes `/metrics` (checking the status and the content type's format).
pub async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let a = request(addr, "GET", "/metrics", None, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    samples(&a.body)
}

/// One sample (0 when absent).
pub fn value(s: &HashMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}
