//! The queries of `auth.pgsql.*_query`: placeholders become bind parameters.
//!
//! Both spellings are understood:
//!
//! | EMQX 4 | `${...}` | value |
//! |---|---|---|
//! | `%u` | `${username}` | the CONNECT user name (NULL when none) |
//! | `%c` | `${clientid}` | the client id |
//! | `%a` | `${peerhost}` | the client's IP address |
//! | `%C` | `${cert_common_name}` | the TLS client certificate's common name |
//! | `%d` | `${cert_subject}` | the TLS client certificate's subject |
//!
//! EMQX 4 writes them inside quotes (`username = '%u'`): a string literal
//! that is exactly one placeholder becomes that parameter, quotes and all.
//! Unquoted `%u` and `${username}` work too. Each becomes `$k` and its value
//! is sent separately (as `text`), never spliced into the SQL, so a user name
//! such as `x' or '1'='1` is only a string to PostgreSQL. Other `%` text inside
//! a literal (`like 'dev%u%'`) is left alone; `${...}` inside a longer literal,
//! hand-written `$1` parameters and dollar-quoted strings are refused.
//!
//! The certificate values are NULL for a client without a verified TLS
//! client certificate; `%d` is always NULL (the broker passes only the
//! common name to hooks).

use std::net::IpAddr;

use hooks_spec::ClientInfo;

/// A value a query can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// `%u`, `${username}`.
    Username,
    /// `%c`, `${clientid}`.
    ClientId,
    /// `%a`, `${peerhost}`.
    PeerHost,
    /// `%C`, `${cert_common_name}`.
    CertCommonName,
    /// `%d`, `${cert_subject}`.
    CertSubject,
}

impl Placeholder {
    fn from_name(name: &str) -> Option<Placeholder> {
        Some(match name {
            "username" => Placeholder::Username,
            "clientid" => Placeholder::ClientId,
            "peerhost" => Placeholder::PeerHost,
            "cert_common_name" => Placeholder::CertCommonName,
            "cert_subject" => Placeholder::CertSubject,
            _ => return None,
        })
    }

    fn from_percent(c: char) -> Option<Placeholder> {
        Some(match c {
            'u' => Placeholder::Username,
            'c' => Placeholder::ClientId,
            'a' => Placeholder::PeerHost,
            'C' => Placeholder::CertCommonName,
            'd' => Placeholder::CertSubject,
            _ => return None,
        })
    }

    /// The value for one client.
    pub fn value(self, client: &ClientInfo) -> Option<String> {
        match self {
            Placeholder::Username => client.username.clone(),
            Placeholder::ClientId => Some(client.clientid.to_string()),
            Placeholder::PeerHost => Some(peer_ip(client).to_string()),
            Placeholder::CertCommonName => client.cert_common_name.as_deref().map(str::to_string),
            // The broker does not pass the certificate's subject to hooks:
            // NULL, which matches no row, as EMQX binds unknown values.
            Placeholder::CertSubject => None,
        }
    }
}

/// The client's IP address; an IPv4 client on a dual-stack socket
/// (`::ffff:a.b.c.d`) is shown as `a.b.c.d`, as operators write it.
pub fn peer_ip(client: &ClientInfo) -> IpAddr {
    client.peer.ip().to_canonical()
}

/// A query ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// As written in the configuration file.
    pub original: String,
    /// As sent to PostgreSQL (`$1`, `$2`, ... in place of placeholders).
    pub sql: String,
    /// `params[k - 1]` is the value of `$k`.
    pub params: Vec<Placeholder>,
}

impl Query {
    /// The parameter values for one client, in `$1..$n` order.
    pub fn values(&self, client: &ClientInfo) -> Vec<Option<String>> {
        self.params.iter().map(|p| p.value(client)).collect()
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// What a whole string literal body stands for, if it is one placeholder.
fn literal_placeholder(body: &str) -> Option<Placeholder> {
    if let Some(name) = body.strip_prefix("${").and_then(|b| b.strip_suffix('}')) {
        return Placeholder::from_name(name);
    }
    let mut chars = body.chars();
    match (chars.next(), chars.next(), chars.next()) {
        (Some('%'), Some(c), None) => Placeholder::from_percent(c),
        _ => None,
    }
}

/// Parses a query; the error says what is wrong and what to write instead.
pub fn parse(sql: &str) -> Result<Query, String> {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut params: Vec<Placeholder> = Vec::new();
    let mut rest = sql;
    let mut prev: Option<char> = None;

    let mut bind = |p: Placeholder, out: &mut String, prev: Option<char>| {
        let k = match params.iter().position(|q| *q == p) {
            Some(i) => i + 1,
            None => {
                params.push(p);
                params.len()
            }
        };
        if prev.is_some_and(is_ident_char) {
            out.push(' ');
        }
        out.push('$');
        out.push_str(&k.to_string());
    };

    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        // A parameter followed by a name character needs a space (`$1x` is not `$1 x`).
        if prev == Some('\0') && is_ident_char(c) && c != '$' {
            out.push(' ');
        }
        match c {
            '\'' | '"' => {
                let escapes = c == '\'' && matches!(prev, Some('e' | 'E'));
                let end = scan_quoted(after, c, escapes)?;
                let body = &after[..end - 1];
                match literal_placeholder(body) {
                    Some(p) if c == '\'' => {
                        bind(p, &mut out, prev);
                        prev = Some('\0');
                    }
                    _ => {
                        if body.contains("${") {
                            return Err(format!(
                                "a `${{...}}` placeholder inside the quoted text {c}{body}{c}: placeholders are \
                                 bind parameters; write `${{username}}` (or EMQX's '%u') as a value of its own"
                            ));
                        }
                        out.push(c);
                        out.push_str(&after[..end]);
                        prev = Some(c);
                    }
                }
                rest = &after[end..];
            }
            '-' if after.starts_with('-') => {
                let end = rest.find('\n').unwrap_or(rest.len());
                out.push_str(&rest[..end]);
                prev = Some(' ');
                rest = &rest[end..];
            }
            '/' if after.starts_with('*') => {
                let Some(end) = rest[2..].find("*/") else {
                    return Err("unterminated comment: a `/*` is not closed".to_string());
                };
                out.push_str(&rest[..end + 4]);
                prev = Some(' ');
                rest = &rest[end + 4..];
            }
            '$' if after.starts_with('{') => {
                let Some(close) = after.find('}') else {
                    return Err("`${` without a closing `}`: write placeholders as ${username}".to_string());
                };
                let name = &after[1..close];
                let p = Placeholder::from_name(name).ok_or_else(|| {
                    format!(
                        "unknown placeholder `${{{name}}}`; the placeholders are ${{username}}, ${{clientid}}, \
                         ${{peerhost}}, ${{cert_common_name}}, ${{cert_subject}} (or EMQX's %u, %c, %a, %C, %d)"
                    )
                })?;
                bind(p, &mut out, prev);
                prev = Some('\0');
                rest = &after[close + 1..];
            }
            '$' if !prev.is_some_and(is_ident_char) => {
                if after.starts_with(|d: char| d.is_ascii_digit()) {
                    return Err(
                        "positional parameters (`$1`) cannot be written by hand; use ${username}, %u, ..."
                            .to_string(),
                    );
                }
                let tag_len = after
                    .find(|t: char| !(t.is_alphanumeric() || t == '_'))
                    .unwrap_or(after.len());
                if after[tag_len..].starts_with('$') {
                    return Err("dollar-quoted strings (`$$...$$`) are not supported; use '...'".to_string());
                }
                out.push('$');
                prev = Some('$');
                rest = after;
            }
            '%' => {
                // `%u` outside quotes, unless it touches a name on either
                // side (`x %count`, `x%u`: the modulo operator).
                let mut it = after.chars();
                let p = it.next().and_then(Placeholder::from_percent);
                match p {
                    Some(p) if !it.next().is_some_and(is_ident_char) && !prev.is_some_and(is_ident_char) => {
                        bind(p, &mut out, prev);
                        prev = Some('\0');
                        rest = &after[1..];
                    }
                    _ => {
                        out.push('%');
                        prev = Some('%');
                        rest = after;
                    }
                }
            }
            _ => {
                out.push(c);
                prev = Some(c);
                rest = after;
            }
        }
    }
    Ok(Query {
        original: sql.to_string(),
        sql: out,
        params,
    })
}

/// The length of a quoted body including its closing quote; `s` starts just
/// after the opening quote. Doubled quotes are escaped quotes.
fn scan_quoted(s: &str, quote: char, backslash: bool) -> Result<usize, String> {
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            if chars.peek().is_some_and(|(_, n)| *n == quote) {
                chars.next();
                continue;
            }
            return Ok(i + c.len_utf8());
        }
        if backslash && c == '\\' {
            chars.next();
        }
    }
    Err(format!("unterminated quoted text: a `{quote}` is not closed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn emqx4_and_dollar_placeholders() {
        let a = q("select password from mqtt_user where username = '%u' limit 1");
        assert_eq!(
            a.sql,
            "select password from mqtt_user where username = $1 limit 1"
        );
        assert_eq!(a.params, vec![Placeholder::Username]);
        let b = q("select allow, ipaddr, username, clientid, access, topic from mqtt_acl where ipaddr = ${peerhost} or username = ${username} or username = '$all' or clientid = ${clientid}");
        assert_eq!(
            b.sql,
            "select allow, ipaddr, username, clientid, access, topic from mqtt_acl where ipaddr = $1 or username = $2 or username = '$all' or clientid = $3"
        );
        let c = q("select 1 where a = %c and b = %u and c = '%c' and d = %C and e='%d' and f = %a");
        assert_eq!(
            c.sql,
            "select 1 where a = $1 and b = $2 and c = $1 and d = $3 and e=$4 and f = $5"
        );
        assert_eq!(
            c.params,
            vec![
                Placeholder::ClientId,
                Placeholder::Username,
                Placeholder::CertCommonName,
                Placeholder::CertSubject,
                Placeholder::PeerHost
            ]
        );
    }

    #[test]
    fn other_text_is_left_alone() {
        let a = q("select 1 where name like '%user%' and x = 7 %count and z = u%u -- %u here\n and y = '${clientid}'");
        assert_eq!(
            a.sql,
            "select 1 where name like '%user%' and x = 7 %count and z = u%u -- %u here\n and y = $1"
        );
        assert_eq!(a.params, vec![Placeholder::ClientId]);
        let b = q("select \"%u\" from t where z = 'it''s' /* ${x} */");
        assert_eq!(b.sql, "select \"%u\" from t where z = 'it''s' /* ${x} */");
        assert!(b.params.is_empty());
    }

    #[test]
    fn refusals() {
        for bad in [
            "select 1 where a = ${nope}",
            "select 1 where a = 'x${username}'",
            "select 1 where a = $1",
            "select $$x$$",
            "select 'open",
            "select 1 /* open",
            "select ${username",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn values_come_from_the_client() {
        let client = ClientInfo {
            clientid: "c1".into(),
            username: None,
            peer: "[::ffff:10.1.2.3]:5000".parse().unwrap_or_else(|e| panic!("{e}")),
            protocol: hooks_spec::ProtocolVersion::V5,
            clean_start: true,
            session_expiry: 0,
            keepalive: 30,
            cert_common_name: None,
        };
        let a = q("select ${username}, ${clientid}, ${peerhost}, %C, %d");
        assert_eq!(
            a.values(&client),
            vec![
                None,
                Some("c1".to_string()),
                Some("10.1.2.3".to_string()),
                None,
                None
            ]
        );
        let with_cert = ClientInfo {
            cert_common_name: Some("device-7".into()),
            ..client
        };
        assert_eq!(a.values(&with_cert)[3].as_deref(), Some("device-7"));
    }
}
