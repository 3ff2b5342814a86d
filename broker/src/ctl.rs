//! `postbox ctl`: the management API from the command line (like `emqx_ctl`,
//! but over HTTP, so it works against any node it can reach).
//!
//! `postbox ctl [--url URL] [--user ID] [--password SECRET] <command>`, with
//! `POSTBOX_API_URL`, `POSTBOX_API_USER` and `POSTBOX_API_PASSWORD` as
//! defaults (then `http://127.0.0.1:8081`, `admin`, `public`: EMQX 4's).
//! Commands: `status`, `clients [--page N] [--limit N]`, `kick <clientid>`,
//! `subscriptions [clientid]`, `publish <topic> <payload> [--qos N] [--retain]`,
//! `drain` (send the node's clients to `mqtt.server_reference`).
//! Exit status 0 on success, 1 when the API refused or the node is
//! unhealthy, 2 when the API cannot be reached or answers nonsense.

use std::process::ExitCode;

use base64::Engine;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};

/// `postbox ctl` arguments.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The HTTP listener of the node (`management.listener.http`).
    #[arg(long, env = "POSTBOX_API_URL", default_value = "http://127.0.0.1:8081")]
    url: String,
    /// `management.default_application.id`.
    #[arg(long, env = "POSTBOX_API_USER", default_value = "admin")]
    user: String,
    /// `management.default_application.secret`.
    #[arg(
        long,
        env = "POSTBOX_API_PASSWORD",
        default_value = "public",
        hide_env_values = true
    )]
    password: String,
    #[command(subcommand)]
    command: CtlCmd,
}

/// What `postbox ctl` does.
#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// Whether the node runs (its `/status`), and its counts.
    Status,
    /// The node's clients, by client id.
    Clients {
        /// Page, from 1.
        #[arg(long, default_value_t = 1)]
        page: usize,
        /// Clients per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Closes a client's connection (its session stays for its expiry).
    Kick {
        /// The client id.
        clientid: String,
    },
    /// Drains the node: its clients are sent to `mqtt.server_reference`
    /// (MQTT 5: DISCONNECT 0x9D) and new connections are refused until it
    /// restarts. Sessions stay.
    Drain,
    /// Subscriptions: all of the node's, or one client's.
    Subscriptions {
        /// Only this client's.
        clientid: Option<String>,
    },
    /// Publishes a message (stored first when the PostgreSQL backend runs).
    Publish {
        /// Topic name.
        topic: String,
        /// Payload (text).
        payload: String,
        /// QoS: 0, 1 or 2.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        /// Retain the message.
        #[arg(long)]
        retain: bool,
    },
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("`{0}` is not an http:// URL with host and port")]
    Url(String),
    #[error("cannot reach {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("HTTP exchange with {url} failed: {message}")]
    Http { url: String, message: String },
}

/// An HTTP answer.
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Runs `postbox ctl`.
pub fn main(args: &CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postbox ctl: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postbox ctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters stay).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn run(args: &CtlArgs) -> Result<ExitCode, CtlError> {
    let api = |a: &Answer| -> Result<(), ExitCode> {
        if a.status == 200 && a.json()["code"] == 0 {
            return Ok(());
        }
        let message = a.json()["message"].as_str().map(str::to_string);
        eprintln!(
            "postbox ctl: HTTP {}: {}",
            a.status,
            message.unwrap_or_else(|| a.body.trim().to_string())
        );
        Err(ExitCode::from(1))
    };
    match &args.command {
        CtlCmd::Status => {
            let status = request(args, "GET", "/status", None).await?;
            print!("{}", status.body);
            if status.status != 200 {
                return Ok(ExitCode::from(1));
            }
            let stats = request(args, "GET", "/api/v4/stats", None).await?;
            if let Err(code) = api(&stats) {
                return Ok(code);
            }
            if let Some(map) = stats.json()["data"][0]["stats"].as_object() {
                for (k, v) in map {
                    println!("{k}: {v}");
                }
            }
        }
        CtlCmd::Clients { page, limit } => {
            let a = request(
                args,
                "GET",
                &format!("/api/v4/clients?_page={page}&_limit={limit}"),
                None,
            )
            .await?;
            if let Err(code) = api(&a) {
                return Ok(code);
            }
            let v = a.json();
            for c in v["data"].as_array().into_iter().flatten() {
                println!(
                    "{} username={} connected={} address={}:{} subscriptions={} inflight={} queued={}",
                    c["clientid"].as_str().unwrap_or(""),
                    c["username"].as_str().unwrap_or("-"),
                    c["connected"],
                    c["ip_address"].as_str().unwrap_or(""),
                    c["port"],
                    c["subscriptions_cnt"],
                    c["inflight"],
                    c["mqueue_len"],
                );
            }
            let m = &v["meta"];
            println!(
                "page {} ({} per page) of {} clients",
                m["page"], m["limit"], m["count"]
            );
        }
        CtlCmd::Kick { clientid } => {
            let a = request(
                args,
                "DELETE",
                &format!("/api/v4/clients/{}", segment(clientid)),
                None,
            )
            .await?;
            if let Err(code) = api(&a) {
                return Ok(code);
            }
            println!("kicked {clientid}");
        }
        CtlCmd::Drain => {
            // The node's name, for the path: the API drains only itself.
            let node = request(args, "GET", "/api/v4/nodes", None).await?;
            if let Err(code) = api(&node) {
                return Ok(code);
            }
            let name = node.json()["data"][0]["node"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let path = format!("/api/v4/nodes/{}/drain", segment(&name));
            let a = request(args, "POST", &path, None).await?;
            if let Err(code) = api(&a) {
                return Ok(code);
            }
            let d = &a.json()["data"];
            println!(
                "{name} drains: {} clients disconnected, sent to {}",
                d["disconnected"],
                d["server_reference"].as_str().unwrap_or("(no server reference)")
            );
        }
        CtlCmd::Subscriptions { clientid } => {
            let path = match clientid {
                Some(id) => format!("/api/v4/subscriptions/{}", segment(id)),
                None => "/api/v4/subscriptions".to_string(),
            };
            let a = request(args, "GET", &path, None).await?;
            if let Err(code) = api(&a) {
                return Ok(code);
            }
            for s in a.json()["data"].as_array().into_iter().flatten() {
                println!(
                    "{} {} qos={}",
                    s["clientid"].as_str().unwrap_or(""),
                    s["topic"].as_str().unwrap_or(""),
                    s["qos"]
                );
            }
        }
        CtlCmd::Publish {
            topic,
            payload,
            qos,
            retain,
        } => {
            let body = json!({"topic": topic, "payload": payload, "qos": qos, "retain": retain});
            let a = request(args, "POST", "/api/v4/mqtt/publish", Some(body.to_string())).await?;
            if let Err(code) = api(&a) {
                return Ok(code);
            }
            println!("published to {topic}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One request on its own connection.
async fn request(args: &CtlArgs, method: &str, path: &str, body: Option<String>) -> Result<Answer, CtlError> {
    let url = args.url.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| CtlError::Url(args.url.clone()))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || !authority.contains(':') {
        return Err(CtlError::Url(args.url.clone()));
    }
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|source| CtlError::Connect {
            url: args.url.clone(),
            source,
        })?;
    let http_error = |e: &dyn std::fmt::Display| CtlError::Http {
        url: args.url.clone(),
        message: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| http_error(&e))?;
    let driver = tokio::spawn(conn);
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", args.user, args.password));
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header("host", authority)
        .header("authorization", format!("Basic {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| http_error(&e))?;
    let answer = async {
        let resp = sender.send_request(req).await.map_err(|e| http_error(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http_error(&e))?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), answer)
        .await
        .map_err(|_| http_error(&"no answer within 30 s"))?;
    driver.abort();
    answer
}
