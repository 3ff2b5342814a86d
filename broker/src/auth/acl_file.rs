//! Mosquitto ACL files.
//!
//! ```text
//! # Lines before any `user` line are for anonymous clients (no user name).
//! topic read public/#
//!
//! user alice
//! topic readwrite sensors/#
//! topic deny sensors/secret
//!
//! # For every client: %c is its client id, %u its user name.
//! pattern write devices/%c/status
//! pattern read users/%u/#
//! ```
//!
//! - `user <name>` starts the rules of one user (the name runs to the end of
//!   the line); the same user may have several sections.
//! - `topic [read|write|readwrite|deny] <topic>`: access to a topic filter
//!   (default `readwrite`); with an access word the topic runs to the end of
//!   the line, so it may contain spaces.
//! - `pattern [read|write|readwrite|deny] <topic>`: the same for every client,
//!   wherever the line is, with `%c` and `%u` replaced. A pattern that uses
//!   `%c` (`%u`) does not apply to a client whose id (user name) contains
//!   `+`, `#` or `/`, which could widen the rule, except a `deny` pattern,
//!   which is applied with the value as it is (it can only refuse more); a
//!   `%u` pattern does not apply to a client without a user name (or with an
//!   empty one). Substituted values are not searched for `%c`/`%u` again.
//!
//! Decisions: a matching `deny` rule refuses, whatever else matches. A PUBLISH
//! needs a `write`/`readwrite` rule whose filter matches the topic. A
//! SUBSCRIBE needs a `read`/`readwrite` rule whose filter covers the
//! subscription's filter (every topic the subscription can receive is allowed
//! by it: `sensors/#` covers `sensors/+/temp`, `sensors/+` does not cover
//! `sensors/#`); a `deny` rule refuses a subscription whose filter could
//! receive any topic it denies, because the broker checks subscriptions once
//! and does not filter deliveries afterwards. `$share/<group>/` is taken off
//! a filter before it is checked. Otherwise no rule decided
//! ([`Decision::NoMatch`]); the plugin applies `auth.file.acl_nomatch`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hooks_spec::AclAction;

use super::AuthFileError;
use crate::topic;

/// Access a rule grants (or `Deny`, which it refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Subscribe.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Neither, and no other rule can grant it.
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn grants(self, action: AclAction) -> bool {
        matches!(
            (self, action),
            (Access::Read | Access::ReadWrite, AclAction::Subscribe)
                | (Access::Write | Access::ReadWrite, AclAction::Publish)
        )
    }
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// What it grants.
    pub access: Access,
    /// The topic filter (with `%c`/`%u` still in it for patterns).
    pub topic: String,
    /// 1-based line number in the file.
    pub line: usize,
}

/// What the rules say about one access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A rule grants it and no `deny` rule refuses it.
    Allow,
    /// A `deny` rule refuses it.
    Deny,
    /// No rule applies.
    NoMatch,
}

/// A loaded ACL file.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// `topic` lines before any `user` line: clients without a user name.
    pub anonymous: Vec<AclRule>,
    /// `topic` lines per user.
    pub users: HashMap<String, Vec<AclRule>>,
    /// `pattern` lines: every client.
    pub patterns: Vec<AclRule>,
}

/// Splits off the first whitespace-separated word.
fn first_word(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

impl AclFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<AclFile, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        AclFile::parse(path, &text)
    }

    /// Parses `text` as the contents of the file at `path` (used in errors).
    pub fn parse(path: &Path, text: &str) -> Result<AclFile, AuthFileError> {
        let err = |line: usize, message: String| AuthFileError::Parse {
            file: path.to_path_buf(),
            line,
            message,
        };
        let mut acl = AclFile {
            path: path.to_path_buf(),
            ..AclFile::default()
        };
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (keyword, rest) = first_word(content);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err(line, "`user` needs a user name".to_string()));
                    }
                    acl.users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(keyword, rest, line).map_err(|m| err(line, m))?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(u) = &user {
                        acl.users.entry(u.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => {
                    return Err(err(
                        line,
                        format!("unknown keyword `{other}`: expected `user`, `topic` or `pattern`"),
                    ))
                }
            }
        }
        Ok(acl)
    }

    /// Number of `topic` and `pattern` rules.
    pub fn rule_count(&self) -> usize {
        self.anonymous.len() + self.patterns.len() + self.users.values().map(Vec::len).sum::<usize>()
    }

    /// What the rules say about `action` on `topic` (a topic name for
    /// publish, a filter for subscribe) by the client with this id and user name.
    pub fn check(&self, clientid: &str, username: Option<&str>, action: AclAction, topic: &str) -> Decision {
        let target = match action {
            AclAction::Publish => topic,
            AclAction::Subscribe => match topic::parse_shared(topic) {
                Ok(Some(share)) => share.filter,
                _ => topic,
            },
        };
        let own: &[AclRule] = match username {
            None => &self.anonymous,
            Some(u) => self.users.get(u).map_or(&[], Vec::as_slice),
        };
        let rules = own
            .iter()
            .map(|r| (r.access, Cow::Borrowed(r.topic.as_str())))
            .chain(self.patterns.iter().filter_map(|r| {
                expand(&r.topic, clientid, username, r.access == Access::Deny).map(|t| (r.access, t))
            }));
        let mut allowed = false;
        for (access, filter) in rules {
            if access == Access::Deny {
                let hit = match action {
                    AclAction::Publish => topic::matches(&filter, target),
                    AclAction::Subscribe => overlaps(&filter, target),
                };
                if hit {
                    return Decision::Deny;
                }
            } else if !allowed && access.grants(action) {
                allowed = match action {
                    AclAction::Publish => topic::matches(&filter, target),
                    AclAction::Subscribe => covers(&filter, target),
                };
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::NoMatch
        }
    }
}

fn parse_rule(keyword: &str, rest: &str, line: usize) -> Result<AclRule, String> {
    let (word, after) = first_word(rest);
    let (access, topic) = match Access::parse(word) {
        Some(access) => (access, after),
        None => (Access::ReadWrite, rest),
    };
    if topic.is_empty() {
        return Err(format!(
            "`{keyword}` needs a topic: `{keyword} [read|write|readwrite|deny] <topic>`"
        ));
    }
    if topic.starts_with("$share/") {
        return Err(format!(
            "`{topic}`: write the filter without `$share/<group>/` (shared subscriptions are checked against their filter)"
        ));
    }
    topic::validate_filter(topic, 0).map_err(|e| format!("`{topic}` is not a valid topic filter: {e}"))?;
    Ok(AclRule {
        access,
        topic: topic.to_string(),
        line,
    })
}

/// Characters that would turn a substituted id into wildcards or extra levels.
fn unsafe_for_pattern(s: &str) -> bool {
    s.contains(['+', '#', '/'])
}

/// A pattern with `%c` and `%u` replaced, or `None` when it does not apply
/// to this client.
///
/// The pattern is read once: a substituted value is never searched for
/// `%c`/`%u` again (a user name `%c` stays the text `%c`). An empty user
/// name, like none, does not fill `%u`. A value with `+`, `#` or `/` makes
/// the pattern not apply, unless it is a `deny` pattern (`deny`): a wider
/// deny only refuses more, and skipping it would let other rules allow
/// what it was written to refuse.
fn expand<'a>(pattern: &'a str, clientid: &str, username: Option<&str>, deny: bool) -> Option<Cow<'a, str>> {
    let skip = |s: &str| !deny && unsafe_for_pattern(s);
    if !pattern.contains("%c") && !pattern.contains("%u") {
        return Some(Cow::Borrowed(pattern));
    }
    let mut out = String::with_capacity(pattern.len() + clientid.len());
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let var = &rest[at..];
        if let Some(after) = var.strip_prefix("%c") {
            if skip(clientid) {
                return None;
            }
            out.push_str(clientid);
            rest = after;
        } else if let Some(after) = var.strip_prefix("%u") {
            let u = username.filter(|u| !u.is_empty())?;
            if skip(u) {
                return None;
            }
            out.push_str(u);
            rest = after;
        } else {
            out.push('%');
            rest = &var[1..];
        }
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

/// True when a filter's first level is a wildcard and the other side's
/// first level is a `$` topic level, which wildcards never match.
fn dollar_excluded(wild: &str, other: &str) -> bool {
    other.starts_with('$') && (wild.starts_with('+') || wild.starts_with('#'))
}

/// True when every topic `filter` matches is matched by `acl` (both valid
/// filters): the subscription can receive nothing the rule does not allow.
pub fn covers(acl: &str, filter: &str) -> bool {
    if dollar_excluded(acl, filter) {
        return false;
    }
    let mut a = topic::levels(acl);
    let mut f = topic::levels(filter);
    loop {
        match (a.next(), f.next()) {
            // `x/#` also matches `x` itself, so it covers a filter that ends here.
            (Some("#"), _) => return true,
            (None, None) => return true,
            // A filter `#` needs a rule `#` at the same level (handled above).
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(al), Some(fl)) if al == fl => {}
            _ => return false,
        }
    }
}

/// True when some topic is matched by both filters.
pub fn overlaps(x: &str, y: &str) -> bool {
    if dollar_excluded(x, y) || dollar_excluded(y, x) {
        return false;
    }
    let mut a = topic::levels(x);
    let mut b = topic::levels(y);
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(al), Some(bl)) if al == bl => {}
            _ => return false,
        }
    }
}
