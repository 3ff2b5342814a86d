//! The `listener.*` keys: `listener.tcp.<name>`, `listener.ssl.<name>`,
//! `listener.ws.<name>` and `listener.wss.<name>`, each an address line plus
//! optional settings `listener.<kind>.<name>.<setting>`.
//!
//! A listener's settings may come before or after its address line (the file
//! is read whole, then each listener is assembled); a setting whose listener
//! has no address line is an error, and so is a setting the kind does not
//! know. Listeners are kept in the order of their address lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hooks_spec::{ConfEntry, ConfError, ConfFile};

use super::{shown, ConfPath, Listener, PeerCertField, TlsSettings, WebSocketSettings};
use crate::rate_limit::Rate;

/// The settings every listener takes.
const COMMON_SETTINGS: &[&str] = &["max_conn_rate", "rate_limit.conn_bytes_in"];
/// The settings a WebSocket listener (`ws`, `wss`) adds.
const WS_SETTINGS: &[&str] = &["mqtt_path"];
/// The settings a TLS listener (`ssl`, `wss`) adds.
const TLS_SETTINGS: &[&str] = &[
    "keyfile",
    "certfile",
    "cacertfile",
    "verify",
    "fail_if_no_peer_cert",
    "peer_cert_as_username",
];

/// The HTTP path a WebSocket listener upgrades on when `mqtt_path` is not set.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// The four kinds of MQTT listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Tcp,
    Ssl,
    Ws,
    Wss,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Ssl => "ssl",
            Kind::Ws => "ws",
            Kind::Wss => "wss",
        }
    }

    /// The settings this kind takes, for error messages.
    fn settings(self) -> Vec<&'static str> {
        let mut all = COMMON_SETTINGS.to_vec();
        if self.websocket() {
            all.extend(WS_SETTINGS);
        }
        if self.tls() {
            all.extend(TLS_SETTINGS);
        }
        all
    }

    fn tls(self) -> bool {
        matches!(self, Kind::Ssl | Kind::Wss)
    }

    fn websocket(self) -> bool {
        matches!(self, Kind::Ws | Kind::Wss)
    }
}

/// One listener while the file is being read.
struct Draft<'a> {
    kind: Kind,
    name: &'a str,
    /// The address line and the address.
    addr: Option<(&'a ConfEntry, SocketAddr)>,
    /// The first line naming this listener (for "no address line" errors).
    first: &'a ConfEntry,
    max_conn_rate: Option<u32>,
    conn_bytes_in: Option<Rate>,
    mqtt_path: Option<String>,
    certfile: Option<ConfPath>,
    keyfile: Option<ConfPath>,
    cacertfile: Option<(&'a ConfEntry, ConfPath)>,
    verify_peer: Option<(&'a ConfEntry, bool)>,
    fail_if_no_peer_cert: Option<(&'a ConfEntry, bool)>,
    peer_cert_as_username: Option<(&'a ConfEntry, PeerCertField)>,
}

impl<'a> Draft<'a> {
    fn new(kind: Kind, name: &'a str, first: &'a ConfEntry) -> Draft<'a> {
        Draft {
            kind,
            name,
            addr: None,
            first,
            max_conn_rate: None,
            conn_bytes_in: None,
            mqtt_path: None,
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify_peer: None,
            fail_if_no_peer_cert: None,
            peer_cert_as_username: None,
        }
    }

    fn key(&self) -> String {
        format!("listener.{}.{}", self.kind.name(), self.name)
    }
}

/// Collects the `listener.*` entries of one file.
pub(super) struct Listeners<'a> {
    dir: PathBuf,
    drafts: Vec<Draft<'a>>,
    /// (kind, name) to its index in `drafts`.
    index: HashMap<(Kind, &'a str), usize>,
}

impl<'a> Listeners<'a> {
    /// Relative file paths are taken relative to `dir` (the config file's directory).
    pub(super) fn new(dir: &Path) -> Listeners<'a> {
        Listeners {
            dir: dir.to_path_buf(),
            drafts: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Takes `e` if its key is a listener key (`Ok(true)`); `Ok(false)` for
    /// any other key, which the caller reports as unknown.
    pub(super) fn take(&mut self, conf: &ConfFile, e: &'a ConfEntry) -> Result<bool, ConfError> {
        let Some((kind, name, setting)) = split_key(&e.key) else {
            return Ok(false);
        };
        let at = match self.index.get(&(kind, name)) {
            Some(&at) => at,
            None => {
                self.drafts.push(Draft::new(kind, name, e));
                self.index.insert((kind, name), self.drafts.len() - 1);
                self.drafts.len() - 1
            }
        };
        let dir = self.dir.clone();
        let d = &mut self.drafts[at];
        match setting {
            None => d.addr = Some((e, parse_addr(conf, e)?)),
            Some("max_conn_rate") => {
                d.max_conn_rate = Some(match conf.parse_u32(e) {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Err(conf.error(
                            e,
                            format!(
                                "expected connections per second, an integer greater than 0, got {}",
                                shown(&e.value)
                            ),
                        ))
                    }
                });
            }
            Some("rate_limit.conn_bytes_in") => d.conn_bytes_in = Some(parse_byte_rate(conf, e)?),
            Some("mqtt_path") if kind.websocket() => {
                if !e.value.starts_with('/') || e.value.contains(char::is_whitespace) {
                    return Err(conf.error(
                        e,
                        format!(
                            "expected the HTTP path WebSocket clients connect to, starting with `/` \
                             (such as `/mqtt`), got {}",
                            shown(&e.value)
                        ),
                    ));
                }
                d.mqtt_path = Some(e.value.clone());
            }
            Some(_) if !kind.tls() => return Err(unknown_setting(conf, e, kind)),
            Some("certfile") => d.certfile = Some(conf_path(conf, e, &dir)?),
            Some("keyfile") => d.keyfile = Some(conf_path(conf, e, &dir)?),
            Some("cacertfile") => d.cacertfile = Some((e, conf_path(conf, e, &dir)?)),
            Some("verify") => {
                let v = match e.value.as_str() {
                    "verify_peer" => true,
                    "verify_none" => false,
                    _ => {
                        return Err(conf.error(
                            e,
                            format!("expected `verify_peer` or `verify_none`, got {}", shown(&e.value)),
                        ))
                    }
                };
                d.verify_peer = Some((e, v));
            }
            Some("fail_if_no_peer_cert") => d.fail_if_no_peer_cert = Some((e, conf.parse_bool(e)?)),
            Some("peer_cert_as_username") => {
                if e.value != "cn" {
                    return Err(conf.error(
                        e,
                        format!(
                            "expected `cn` (the client certificate's common name), got {}",
                            shown(&e.value)
                        ),
                    ));
                }
                d.peer_cert_as_username = Some((e, PeerCertField::Cn));
            }
            Some(_) => return Err(unknown_setting(conf, e, kind)),
        }
        Ok(true)
    }

    /// Checks each listener as a whole and returns them in the order of
    /// their address lines.
    pub(super) fn finish(self, conf: &ConfFile) -> Result<Vec<Listener>, ConfError> {
        let mut drafts = self.drafts;
        for d in &drafts {
            if d.addr.is_none() {
                return Err(conf.error(
                    d.first,
                    format!(
                        "this setting belongs to no listener: there is no `{} = <ip:port>` line",
                        d.key()
                    ),
                ));
            }
        }
        drafts.sort_by_key(|d| d.addr.map_or(0, |(e, _)| e.line));
        let mut out: Vec<Listener> = Vec::new();
        let mut lines: Vec<&ConfEntry> = Vec::new();
        for d in drafts {
            let Some((entry, addr)) = d.addr else { continue };
            // Port 0 (any free port) may be given to several listeners.
            if addr.port() != 0 {
                if let Some(i) = out.iter().position(|l| l.addr == addr) {
                    return Err(conf.error(
                        entry,
                        format!(
                            "address {addr} is already used by `{}` on line {}",
                            lines[i].key, lines[i].line
                        ),
                    ));
                }
            }
            let tls = if d.kind.tls() {
                Some(tls_settings(conf, entry, &d)?)
            } else {
                None
            };
            let websocket = d.kind.websocket().then(|| WebSocketSettings {
                path: d.mqtt_path.clone().unwrap_or_else(|| DEFAULT_WS_PATH.to_string()),
            });
            out.push(Listener {
                name: d.name.to_string(),
                addr,
                max_conn_rate: d.max_conn_rate,
                conn_bytes_in: d.conn_bytes_in,
                tls,
                websocket,
            });
            lines.push(entry);
        }
        Ok(out)
    }
}

fn unknown_setting(conf: &ConfFile, e: &ConfEntry, kind: Kind) -> ConfError {
    conf.error(
        e,
        format!(
            "unknown key (a `listener.{}` listener takes: {})",
            kind.name(),
            kind.settings().join(", ")
        ),
    )
}

/// `listener.<tcp|ssl|ws|wss>.<name>[.<setting>]` split into (kind, name, setting).
fn split_key(key: &str) -> Option<(Kind, &str, Option<&str>)> {
    let rest = key.strip_prefix("listener.")?;
    let (kind, rest) = [Kind::Tcp, Kind::Ssl, Kind::Ws, Kind::Wss]
        .into_iter()
        .find_map(|k| Some((k, rest.strip_prefix(k.name())?.strip_prefix('.')?)))?;
    let (name, setting) = match rest.split_once('.') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    if name.is_empty() || setting.is_some_and(str::is_empty) {
        return None;
    }
    Some((kind, name, setting))
}

/// `rate_limit.conn_bytes_in = <size>,<duration>` (EMQX's format, such as
/// `100KB,10s`): both greater than 0, the size at most 4GB - 1.
fn parse_byte_rate(conf: &ConfFile, e: &ConfEntry) -> Result<Rate, ConfError> {
    let bad = || {
        conf.error(
            e,
            format!(
                "expected `<bytes>,<duration>` with both greater than 0, such as `100KB,10s`, got {}",
                shown(&e.value)
            ),
        )
    };
    let (size, per) = e.value.split_once(',').ok_or_else(bad)?;
    let part = |value: &str| ConfEntry {
        value: value.trim().to_string(),
        ..e.clone()
    };
    let bytes = conf.parse_size(&part(size)).map_err(|_| bad())?;
    let per = conf.parse_duration(&part(per)).map_err(|_| bad())?;
    let count = u32::try_from(bytes).map_err(|_| bad())?;
    if count == 0 || per.is_zero() {
        return Err(bad());
    }
    Ok(Rate { count, per })
}

fn parse_addr(conf: &ConfFile, e: &ConfEntry) -> Result<SocketAddr, ConfError> {
    e.value.parse().map_err(|_| {
        conf.error(
            e,
            format!(
                "expected a listen address `ip:port`, such as `0.0.0.0:1883` or `[::]:1883`, got {}",
                shown(&e.value)
            ),
        )
    })
}

fn conf_path(conf: &ConfFile, e: &ConfEntry, dir: &Path) -> Result<ConfPath, ConfError> {
    if e.value.is_empty() {
        return Err(conf.error(
            e,
            "expected a PEM file (absolute, or relative to the config file's directory), got an empty value",
        ));
    }
    Ok(ConfPath {
        path: dir.join(&e.value),
        line: e.line,
        key: e.key.clone(),
    })
}

/// The TLS settings of an ssl listener, checked as a whole.
fn tls_settings(conf: &ConfFile, addr_entry: &ConfEntry, d: &Draft<'_>) -> Result<TlsSettings, ConfError> {
    let key = d.key();
    let listener = if d.kind == Kind::Wss {
        "a wss listener"
    } else {
        "an ssl listener"
    };
    let missing = |setting: &str, what: &str| {
        conf.error(
            addr_entry,
            format!("{listener} needs `{key}.{setting}` ({what}), and it is not set"),
        )
    };
    let certfile = d
        .certfile
        .clone()
        .ok_or_else(|| missing("certfile", "the server's certificate chain, PEM"))?;
    let keyfile = d
        .keyfile
        .clone()
        .ok_or_else(|| missing("keyfile", "the server's private key, PEM"))?;
    let verify_peer = d.verify_peer.is_some_and(|(_, v)| v);
    if !verify_peer {
        // Client-certificate settings do nothing without verify_peer: refuse
        // them rather than let an operator believe clients are checked.
        let needs_verify = [
            d.cacertfile.as_ref().map(|(e, _)| *e),
            d.fail_if_no_peer_cert.filter(|(_, v)| *v).map(|(e, _)| e),
            d.peer_cert_as_username.map(|(e, _)| e),
        ];
        if let Some(e) = needs_verify.into_iter().flatten().next() {
            return Err(conf.error(
                e,
                format!(
                    "takes effect only with `{key}.verify = verify_peer` (client certificates are \
                     not requested with verify_none, the default)"
                ),
            ));
        }
    }
    if let (Some((e, true)), None) = (d.verify_peer, &d.cacertfile) {
        return Err(conf.error(
            e,
            format!(
                "`verify_peer` needs `{key}.cacertfile` (the CA certificates that sign client certificates)"
            ),
        ));
    }
    Ok(TlsSettings {
        certfile,
        keyfile,
        cacertfile: d.cacertfile.as_ref().map(|(_, p)| p.clone()),
        verify_peer,
        fail_if_no_peer_cert: d.fail_if_no_peer_cert.is_some_and(|(_, v)| v),
        peer_cert_as_username: d.peer_cert_as_username.map(|(_, f)| f),
    })
}
