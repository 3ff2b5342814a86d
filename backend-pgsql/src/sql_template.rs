//! `sql` actions: statements with `${placeholder}`s, run with bind parameters.
//!
//! A rule such as
//!
//! ```text
//! {"action": {"sql": ["delete from mqtt_acked where clientid = ${clientid} and topic = ${topic}"]}, ...}
//! ```
//!
//! is parsed once at startup by [`parse_template`] into a [`SqlTemplate`]:
//! each `${name}` becomes a PostgreSQL parameter (`$1`, `$2`, ...) and the
//! value is sent separately as a [`SqlValue`]. Values are never spliced into
//! the statement text, so a client id such as `x'); drop table t; --` is just
//! a string to the database.
//!
//! Because placeholders are parameters, they must stand where a value may
//! stand: `'${clientid}'` (inside a string literal) is refused, as are
//! `$1`-style parameters written by hand and dollar-quoted strings (`$$...$$`).
//!
//! [`SqlValue`] implements [`ToSql`] for whatever type PostgreSQL inferred for
//! the parameter (an `integer` column gets an `INT4`, a `text` column a
//! `TEXT`, ...), converting between the broker's values and that type.

use std::error::Error;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use hooks_spec::HookPoint;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// A `${name}` that an `sql` action may use; what it is bound to depends on
/// the hook (see [`Placeholder::available_on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Placeholder {
    /// `${clientid}`: the client's id (on `message.publish`, the publisher's).
    ClientId,
    /// `${username}`: the client's user name.
    Username,
    /// `${peerhost}`: the client's IP address.
    PeerHost,
    /// `${node}`: the broker node's name.
    Node,
    /// `${topic}`: the subscription's filter (`session.*`) or the message's
    /// topic (`message.*`).
    Topic,
    /// `${qos}`: the subscription's or the message's QoS.
    Qos,
    /// `${msgid}`: the message's id.
    MsgId,
    /// `${retain}`: the message's retain flag.
    Retain,
    /// `${payload}`: the message's payload.
    Payload,
    /// `${timestamp}`: when the message was published.
    Timestamp,
}

impl Placeholder {
    /// Every placeholder.
    pub const ALL: &'static [Placeholder] = &[
        Placeholder::ClientId,
        Placeholder::Username,
        Placeholder::PeerHost,
        Placeholder::Node,
        Placeholder::Topic,
        Placeholder::Qos,
        Placeholder::MsgId,
        Placeholder::Retain,
        Placeholder::Payload,
        Placeholder::Timestamp,
    ];

    /// The name written between `${` and `}`, such as `clientid`.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::ClientId => "clientid",
            Placeholder::Username => "username",
            Placeholder::PeerHost => "peerhost",
            Placeholder::Node => "node",
            Placeholder::Topic => "topic",
            Placeholder::Qos => "qos",
            Placeholder::MsgId => "msgid",
            Placeholder::Retain => "retain",
            Placeholder::Payload => "payload",
            Placeholder::Timestamp => "timestamp",
        }
    }

    /// The placeholder called `s` (case-sensitive, as in EMQX), if any.
    pub fn from_name(s: &str) -> Option<Placeholder> {
        Placeholder::ALL.iter().copied().find(|p| p.name() == s)
    }

    /// The placeholders an `sql` action bound to `hook` may use; empty for a
    /// hook rules cannot bind to.
    pub fn available_on(hook: HookPoint) -> &'static [Placeholder] {
        use Placeholder::*;
        match hook {
            HookPoint::ClientConnected | HookPoint::ClientDisconnected => {
                &[ClientId, Username, PeerHost, Node]
            }
            HookPoint::SessionSubscribed | HookPoint::SessionUnsubscribed => {
                &[ClientId, Topic, Qos, Username, PeerHost, Node]
            }
            HookPoint::MessagePublish => &[
                MsgId, ClientId, Topic, Qos, Retain, Payload, Timestamp, Username, PeerHost, Node,
            ],
            HookPoint::MessageAcked | HookPoint::MessageDelivered => &[
                ClientId, Topic, MsgId, Qos, Retain, Payload, Timestamp, Username, PeerHost, Node,
            ],
            _ => &[],
        }
    }
}

impl fmt::Display for Placeholder {
    /// Shows the placeholder as written in SQL: `${clientid}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${{{}}}", self.name())
    }
}

/// One statement of an `sql` action, ready to be run with bind parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlTemplate {
    /// The statement as written in the configuration file.
    pub original: String,
    /// The statement sent to PostgreSQL: each `${name}` replaced by `$k`.
    pub sql: String,
    /// What each parameter binds: `params[k - 1]` is the value of `$k`. A
    /// placeholder used several times appears once (its `$k` is reused).
    pub params: Vec<Placeholder>,
}

impl SqlTemplate {
    /// The parameter values, in `$1..$n` order, with `value` giving the value
    /// of each placeholder.
    pub fn values(&self, mut value: impl FnMut(Placeholder) -> SqlValue) -> Vec<SqlValue> {
        self.params.iter().map(|p| value(*p)).collect()
    }
}

/// `true` for characters that may continue an SQL identifier or number
/// (PostgreSQL counts `$` and non-ASCII letters as identifier characters).
fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

fn known_names() -> String {
    Placeholder::ALL
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn quoted_placeholder_error(rest: &str) -> String {
    // `rest` starts with `${`; show the placeholder the user wrote when it is
    // complete, else a generic example.
    let shown = match rest.find('}') {
        Some(end)
            if rest[2..end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && end > 2 =>
        {
            rest[..=end].to_string()
        }
        _ => "${clientid}".to_string(),
    };
    format!(
        "{shown} is inside a quoted string or identifier; placeholders are bind parameters: \
         write {shown} without quotes"
    )
}

/// Parses one statement of an `sql` action.
///
/// Each `${name}` becomes `$k`, numbered in order of first use; using the same
/// placeholder again reuses its number. When the character before or after a
/// placeholder would otherwise run into the parameter (`a${x}` or `${x}1`), a
/// space is put between them. Text inside comments (`-- ...`, `/* ... */`) is
/// left as it is.
///
/// Errors (the message says what to write instead): an unknown name, `${`
/// without `}`, a placeholder inside a `'...'` string literal or a `"..."`
/// identifier, a `$1`-style parameter written in the text, a dollar-quoted
/// string (`$$...$$`, `$tag$...$tag$`), and an unterminated quoted string or
/// comment. Whether a placeholder is available on the rule's hook is checked
/// by the caller, with [`Placeholder::available_on`].
pub fn parse_template(sql: &str) -> Result<SqlTemplate, String> {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut params: Vec<Placeholder> = Vec::new();
    let mut rest = sql;
    // The last character written to `out` outside comments (None at start).
    let mut prev: Option<char> = None;

    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        match c {
            '\'' => {
                // A string literal; `E'...'` strings also have backslash escapes.
                let mut before = out.chars().rev();
                let escapes =
                    matches!(before.next(), Some('e' | 'E')) && !before.next().is_some_and(is_ident_char);
                let end = scan_quoted(after, '\'', escapes)?;
                let (body, tail) = after.split_at(end);
                out.push('\'');
                out.push_str(body);
                prev = Some('\'');
                rest = tail;
            }
            '"' => {
                let end = scan_quoted(after, '"', false)?;
                let (body, tail) = after.split_at(end);
                out.push('"');
                out.push_str(body);
                prev = Some('"');
                rest = tail;
            }
            '-' if after.starts_with('-') => {
                let end = rest.find('\n').unwrap_or(rest.len());
                out.push_str(&rest[..end]);
                prev = Some(' ');
                rest = &rest[end..];
            }
            '/' if after.starts_with('*') => {
                let end = scan_block_comment(rest)?;
                out.push_str(&rest[..end]);
                prev = Some(' ');
                rest = &rest[end..];
            }
            '$' if after.starts_with('{') => {
                let Some(close) = after.find('}') else {
                    return Err("`${` without a closing `}`: write placeholders as ${clientid}".to_string());
                };
                let name = &after[1..close];
                let Some(p) = Placeholder::from_name(name) else {
                    return Err(format!(
                        "unknown placeholder `${{{name}}}`; the placeholders are: {}",
                        known_names()
                    ));
                };
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
                prev = Some('0');
                rest = &after[close + 1..];
                if rest.chars().next().is_some_and(is_ident_char) && !rest.starts_with("${") {
                    out.push(' ');
                    prev = Some(' ');
                }
            }
            '$' if !prev.is_some_and(is_ident_char) => {
                if after.starts_with(|d: char| d.is_ascii_digit()) {
                    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
                    return Err(format!(
                        "`${digits}`: positional parameters cannot be mixed with placeholders; \
                         write ${{clientid}}, ${{topic}}, ... instead"
                    ));
                }
                // `$$` or `$tag$` opens a dollar-quoted string.
                let tag_len = after
                    .find(|t: char| !(t.is_alphanumeric() || t == '_'))
                    .unwrap_or(after.len());
                if after[tag_len..].starts_with('$') {
                    return Err(format!(
                        "dollar-quoted strings (`${}$`) are not supported in `sql` actions; \
                         use '...' string literals",
                        &after[..tag_len]
                    ));
                }
                out.push('$');
                prev = Some('$');
                rest = after;
            }
            _ => {
                out.push(c);
                prev = Some(c);
                rest = after;
            }
        }
    }

    Ok(SqlTemplate {
        original: sql.to_string(),
        sql: out,
        params,
    })
}

/// Scans the body of a quoted string or identifier; `s` starts just after the
/// opening quote. Returns the length of the body including the closing quote.
/// A doubled quote is an escaped quote; with `backslash`, `\x` escapes `x`.
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
            continue;
        }
        if c == '$' && s[i..].starts_with("${") {
            return Err(quoted_placeholder_error(&s[i..]));
        }
    }
    Err(if quote == '\'' {
        "unterminated string literal: a `'` is not closed".to_string()
    } else {
        "unterminated quoted identifier: a `\"` is not closed".to_string()
    })
}

/// The length of the (possibly nested) block comment at the start of `s`.
fn scan_block_comment(s: &str) -> Result<usize, String> {
    let mut depth = 0usize;
    let mut i = 0;
    let bytes = s.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err("unterminated comment: a `/*` is not closed".to_string())
}

/// A value bound to a parameter of an `sql` action (or of any statement the
/// plugin runs). Its [`ToSql`] implementation accepts every parameter type
/// and converts to the one PostgreSQL inferred, or fails with an error naming
/// that type.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL `NULL`, for any type.
    Null,
    /// A string.
    Text(String),
    /// An integer.
    Int(i64),
    /// Raw bytes (a payload).
    Bytes(bytes::Bytes),
    /// A boolean.
    Bool(bool),
    /// A point in time.
    Timestamp(SystemTime),
}

impl SqlValue {
    /// What kind of value this is, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            SqlValue::Null => "null",
            SqlValue::Text(_) => "a text value",
            SqlValue::Int(_) => "an integer",
            SqlValue::Bytes(_) => "a binary value",
            SqlValue::Bool(_) => "a boolean",
            SqlValue::Timestamp(_) => "a timestamp",
        }
    }

    fn mismatch(&self, ty: &Type) -> Box<dyn Error + Sync + Send> {
        format!(
            "cannot bind {} to a parameter of type {}; cast the parameter in the SQL \
             (such as ${{qos}}::text) or change the column type",
            self.kind(),
            ty.name()
        )
        .into()
    }

    /// The value as an integer, if it is one or converts to one.
    fn as_int(&self) -> Option<i64> {
        match self {
            SqlValue::Int(i) => Some(*i),
            SqlValue::Text(s) => s.trim().parse().ok(),
            SqlValue::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    fn int_to_sql<T>(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>>
    where
        T: TryFrom<i64> + ToSql,
    {
        let Some(i) = self.as_int() else {
            return Err(match self {
                SqlValue::Text(s) => format!(
                    "cannot bind text `{s}` to a parameter of type {}: not an integer",
                    ty.name()
                )
                .into(),
                _ => self.mismatch(ty),
            });
        };
        match T::try_from(i) {
            Ok(v) => v.to_sql(ty, out),
            Err(_) => Err(format!("{i} is out of range for a parameter of type {}", ty.name()).into()),
        }
    }

    /// The value as text, for text-like parameter types.
    fn as_text(&self, ty: &Type) -> Result<String, Box<dyn Error + Sync + Send>> {
        Ok(match self {
            SqlValue::Text(s) => s.clone(),
            SqlValue::Int(i) => i.to_string(),
            SqlValue::Bool(b) => b.to_string(),
            SqlValue::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => s.to_string(),
                Err(e) => {
                    return Err(format!(
                        "cannot bind a binary value that is not UTF-8 ({e}) to a parameter of type {}; \
                         use a bytea column",
                        ty.name()
                    )
                    .into())
                }
            },
            SqlValue::Timestamp(t) => humantime::format_rfc3339_micros(*t).to_string(),
            SqlValue::Null => String::new(),
        })
    }
}

impl ToSql for SqlValue {
    /// Converts to the parameter's type:
    ///
    /// - `INT2`/`INT4`/`INT8`: an integer (range-checked), text holding an
    ///   integer, a boolean as 0/1;
    /// - text types (`TEXT`, `VARCHAR`, `BPCHAR`, `NAME`, `UNKNOWN`, `citext`):
    ///   text, an integer in decimal, `true`/`false`, UTF-8 bytes (other bytes
    ///   are an error), a timestamp in RFC 3339;
    /// - `BYTEA`: bytes, or the bytes of a text;
    /// - `BOOL`: a boolean, or the integer 0 or 1;
    /// - `FLOAT4`/`FLOAT8`: an integer;
    /// - `TIMESTAMP`/`TIMESTAMPTZ`: a timestamp, or an integer (Unix seconds);
    /// - `JSON`/`JSONB`: text (or UTF-8 bytes) holding a JSON document;
    ///
    /// and fails with an error naming the type otherwise. `Null` is `NULL`
    /// for every type.
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if *self == SqlValue::Null {
            return Ok(IsNull::Yes);
        }
        match *ty {
            Type::INT2 => self.int_to_sql::<i16>(ty, out),
            Type::INT4 => self.int_to_sql::<i32>(ty, out),
            Type::INT8 => self.int_to_sql::<i64>(ty, out),
            Type::BYTEA => match self {
                SqlValue::Bytes(b) => b.as_ref().to_sql(ty, out),
                SqlValue::Text(s) => s.as_bytes().to_sql(ty, out),
                _ => Err(self.mismatch(ty)),
            },
            Type::BOOL => match self {
                SqlValue::Bool(b) => b.to_sql(ty, out),
                SqlValue::Int(0) => false.to_sql(ty, out),
                SqlValue::Int(1) => true.to_sql(ty, out),
                SqlValue::Int(i) => {
                    Err(format!("cannot bind {i} to a parameter of type bool: only 0 and 1 convert").into())
                }
                _ => Err(self.mismatch(ty)),
            },
            Type::FLOAT4 => match self {
                SqlValue::Int(i) => (*i as f32).to_sql(ty, out),
                _ => Err(self.mismatch(ty)),
            },
            Type::FLOAT8 => match self {
                SqlValue::Int(i) => (*i as f64).to_sql(ty, out),
                _ => Err(self.mismatch(ty)),
            },
            Type::TIMESTAMP | Type::TIMESTAMPTZ => match self {
                SqlValue::Timestamp(t) => t.to_sql(ty, out),
                SqlValue::Int(secs) => {
                    let magnitude = Duration::from_secs(secs.unsigned_abs());
                    let t = if *secs >= 0 {
                        UNIX_EPOCH.checked_add(magnitude)
                    } else {
                        UNIX_EPOCH.checked_sub(magnitude)
                    };
                    match t {
                        Some(t) => t.to_sql(ty, out),
                        None => Err(format!(
                            "{secs} seconds since 1970 is out of range for a parameter of type {}",
                            ty.name()
                        )
                        .into()),
                    }
                }
                _ => Err(self.mismatch(ty)),
            },
            Type::JSON | Type::JSONB => {
                let text = match self {
                    SqlValue::Text(_) | SqlValue::Bytes(_) => self.as_text(ty)?,
                    _ => return Err(self.mismatch(ty)),
                };
                if *ty == Type::JSONB {
                    // The binary form of jsonb: a version byte, then the text.
                    out.extend_from_slice(&[1]);
                }
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            _ if <&str as ToSql>::accepts(ty) => self.as_text(ty)?.as_str().to_sql(ty, out),
            _ => Err(format!(
                "parameters of type {} are not supported (the value is {}); cast the parameter in \
                 the SQL, such as ${{clientid}}::text or ${{qos}}::int",
                ty.name(),
                self.kind()
            )
            .into()),
        }
    }

    /// Every type: the conversion is decided (or refused) in `to_sql`.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests;
