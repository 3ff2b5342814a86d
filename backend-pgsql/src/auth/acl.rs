//! ACL rows in EMQX 4's `mqtt_acl` layout, and how they decide.
//!
//! `acl_query` returns rows of `allow, ipaddr, username, clientid, access,
//! topic`:
//!
//! - `allow`: 1 allow, 0 deny (an integer, a boolean or the text `1`/`0`);
//! - who: `username = '$all'` is everybody; otherwise every column of
//!   `ipaddr` (an address or a CIDR block such as `10.0.0.0/8`), `username`,
//!   `clientid` that is not NULL or empty must match the client;
//! - `access`: 1 subscribe, 2 publish, 3 both;
//! - `topic`: a topic filter in which `%u` / `${username}` and `%c` /
//!   `${clientid}` stand for the client's user name and id, or `eq <topic>`
//!   for a literal comparison (`eq #` is the filter `#` itself, not everything).
//!
//! Rows are tried in the order the query returns them (write `ORDER BY`) and
//! the first that matches decides. A PUBLISH topic matches an ACL filter as
//! MQTT matches topics. A SUBSCRIBE filter matches an allow row when the ACL
//! filter *covers* it: every topic the subscription could receive is matched
//! by the ACL filter (`a/#` covers `a/+/b`; `a/+` does not cover `a/#`); it
//! matches a deny row when it could receive any topic the row's filter
//! matches (a deny row `a/secret` refuses `a/#` and `a/+`, not `a/public`),
//! because subscriptions are checked once and deliveries are not filtered.
//!
//! A row that names a `%u` placeholder does not match a client without a user
//! name. An allow row does not match a client whose user name (or client id,
//! for `%c`) contains `/`, `+` or `#`: substituted values never widen what is
//! allowed; a deny row takes such a value as it is, since it can only refuse
//! more. Substituted values are not searched for placeholders again. A
//! malformed row (allow or access out of range, no topic, no who, a bad
//! address) is an error: the check fails closed rather than skipping what
//! might have been a deny.

use std::net::IpAddr;

use hooks_spec::AclAction;

use crate::mqtt_matches;

/// Which actions a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// 1.
    Subscribe,
    /// 2.
    Publish,
    /// 3.
    Both,
}

/// An IP address with a prefix length (a plain address has the full length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, or the IPv6 forms.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.trim(), Some(p.trim())),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|n| *n <= max)?,
        };
        Some(Cidr { addr, prefix })
    }

    /// True when `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u8) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let (want, want_len) = bits(self.addr);
        let (got, got_len) = bits(ip.to_canonical());
        if want_len != got_len {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        want & mask == got & mask
    }
}

/// Who a row applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// `username = '$all'`.
    All,
    /// Every condition that is set must hold.
    Match {
        /// `ipaddr`.
        ipaddr: Option<Cidr>,
        /// `username`.
        username: Option<String>,
        /// `clientid`.
        clientid: Option<String>,
    },
}

/// A row's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclTopic {
    /// `eq <topic>`: compared literally.
    Eq(String),
    /// A filter, possibly with placeholders.
    Filter(String),
}

/// One compiled ACL row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// Allow (true) or deny.
    pub allow: bool,
    /// Who it applies to.
    pub who: Who,
    /// Which actions.
    pub access: Access,
    /// Which topics.
    pub topic: AclTopic,
}

/// The client an ACL check is about.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// User name, if any.
    pub username: Option<&'a str>,
    /// Client id.
    pub clientid: &'a str,
    /// IP address.
    pub ip: IpAddr,
}

/// The columns of one row, as read from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclRow {
    /// `allow`.
    pub allow: Option<i64>,
    /// `ipaddr`.
    pub ipaddr: Option<String>,
    /// `username`.
    pub username: Option<String>,
    /// `clientid`.
    pub clientid: Option<String>,
    /// `access`.
    pub access: Option<i64>,
    /// `topic`.
    pub topic: Option<String>,
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl AclRule {
    /// Compiles a row; the error describes what is wrong with it.
    pub fn compile(row: &AclRow) -> Result<AclRule, String> {
        let allow = match row.allow {
            Some(1) => true,
            Some(0) => false,
            other => return Err(format!("allow must be 0 or 1, got {other:?}")),
        };
        let access = match row.access {
            Some(1) => Access::Subscribe,
            Some(2) => Access::Publish,
            Some(3) => Access::Both,
            other => {
                return Err(format!(
                    "access must be 1 (subscribe), 2 (publish) or 3 (both), got {other:?}"
                ))
            }
        };
        let topic = match non_empty(&row.topic) {
            None => return Err("topic is empty".to_string()),
            Some(t) => match t.strip_prefix("eq ") {
                Some(literal) => AclTopic::Eq(literal.trim().to_string()),
                None => AclTopic::Filter(t),
            },
        };
        let who = if row.username.as_deref() == Some("$all") {
            Who::All
        } else {
            let ipaddr = match non_empty(&row.ipaddr) {
                None => None,
                Some(s) => Some(
                    Cidr::parse(&s).ok_or_else(|| format!("ipaddr `{s}` is not an address or CIDR block"))?,
                ),
            };
            let (username, clientid) = (non_empty(&row.username), non_empty(&row.clientid));
            if ipaddr.is_none() && username.is_none() && clientid.is_none() {
                return Err(
                    "ipaddr, username and clientid are all empty (write username = '$all' for everybody)"
                        .into(),
                );
            }
            Who::Match {
                ipaddr,
                username,
                clientid,
            }
        };
        Ok(AclRule {
            allow,
            who,
            access,
            topic,
        })
    }

    /// `Some(allow)` when the row applies to this client, action and topic.
    pub fn decide(&self, who: &Subject<'_>, action: AclAction, topic: &str) -> Option<bool> {
        let access_ok = matches!(
            (self.access, action),
            (Access::Both, _)
                | (Access::Subscribe, AclAction::Subscribe)
                | (Access::Publish, AclAction::Publish)
        );
        if !access_ok || !self.applies_to(who) {
            return None;
        }
        let hit = match &self.topic {
            AclTopic::Eq(literal) => literal == topic,
            AclTopic::Filter(pattern) => {
                let filter = substitute(pattern, who, !self.allow)?;
                match action {
                    AclAction::Publish => mqtt_matches(&filter, topic),
                    // Subscriptions are checked once, not each delivery: an
                    // allow row must grant everything the filter can receive,
                    // a deny row refuses a filter that could receive any of its topics.
                    AclAction::Subscribe if self.allow => filter_covers(&filter, topic),
                    AclAction::Subscribe => filters_overlap(&filter, topic),
                }
            }
        };
        hit.then_some(self.allow)
    }

    fn applies_to(&self, who: &Subject<'_>) -> bool {
        match &self.who {
            Who::All => true,
            Who::Match {
                ipaddr,
                username,
                clientid,
            } => {
                ipaddr.is_none_or(|c| c.contains(who.ip))
                    && username.as_deref().is_none_or(|u| who.username == Some(u))
                    && clientid.as_deref().is_none_or(|c| who.clientid == c)
            }
        }
    }
}

/// The first decision of `rules` for this check, in order; `None` when no rule matches.
pub fn evaluate(rules: &[AclRule], who: &Subject<'_>, action: AclAction, topic: &str) -> Option<bool> {
    rules.iter().find_map(|r| r.decide(who, action, topic))
}

/// The filter with the client's values put in; `None` (the row does not
/// match) when a value it needs is missing, empty or, for an allow row
/// (`deny` false), would change the filter's structure. A deny row takes
/// such a value as it is: it can only refuse more, and skipping it would let
/// a later row allow what it was written to refuse.
fn substitute(pattern: &str, who: &Subject<'_>, deny: bool) -> Option<String> {
    if !pattern.contains('%') && !pattern.contains("${") {
        return Some(pattern.to_string());
    }
    let safe = |v: Option<&str>| -> Option<String> {
        v.filter(|s| !s.is_empty() && (deny || !s.contains(['/', '+', '#'])))
            .map(str::to_string)
    };
    let mut levels = Vec::new();
    for level in pattern.split('/') {
        // EMQX 4 replaces `%u` / `%c` only as a whole level; `${...}` anywhere.
        // One pass over the pattern: a substituted value is never read for
        // placeholders again (a user name `${clientid}` stays that text).
        let level = match level {
            "%u" => safe(who.username)?,
            "%c" => safe(Some(who.clientid))?,
            other => {
                let mut out = String::with_capacity(other.len());
                let mut rest = other;
                while let Some(at) = rest.find("${") {
                    out.push_str(&rest[..at]);
                    let var = &rest[at..];
                    if let Some(after) = var.strip_prefix("${username}") {
                        out.push_str(&safe(who.username)?);
                        rest = after;
                    } else if let Some(after) = var.strip_prefix("${clientid}") {
                        out.push_str(&safe(Some(who.clientid))?);
                        rest = after;
                    } else {
                        out.push_str("${");
                        rest = &var[2..];
                    }
                }
                out.push_str(rest);
                out
            }
        };
        levels.push(level);
    }
    Some(levels.join("/"))
}

/// True when some topic is matched by both filters.
pub fn filters_overlap(x: &str, y: &str) -> bool {
    // A wildcard at the first level does not reach `$` topics (MQTT 4.7.2).
    let dollar_vs_wild = |a: &str, b: &str| a.starts_with('$') && (b.starts_with('+') || b.starts_with('#'));
    if dollar_vs_wild(x, y) || dollar_vs_wild(y, x) {
        return false;
    }
    let mut a = x.split('/');
    let mut b = y.split('/');
    loop {
        match (a.next(), b.next()) {
            // `#` matches the rest, including the parent level (`a/#` matches `a`).
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            _ => return false,
        }
    }
}

/// True when every topic that filter `sub` matches is matched by filter `acl`.
pub fn filter_covers(acl: &str, sub: &str) -> bool {
    // A wildcard at the first level does not reach `$` topics (MQTT 4.7.2).
    if sub.starts_with('$') && (acl.starts_with('+') || acl.starts_with('#')) {
        return false;
    }
    let mut a = acl.split('/');
    let mut s = sub.split('/');
    loop {
        match (a.next(), s.next()) {
            // `#` covers the rest, including the parent level (`a/#` covers `a`).
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y => {}
            // Different levels, or the subscription ended where the ACL goes
            // on (a trailing `#` was handled above), or the other way round.
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests;
