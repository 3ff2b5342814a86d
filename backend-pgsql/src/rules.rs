//! Rules: what the plugin does on which hook, as in EMQX's `backend.pgsql.hook.*` keys.
//!
//! ```text
//! backend.pgsql.hook.message.publish.1 = {"topic": "#", "action": {"function": "on_message_publish"}, "pool": "pool1"}
//! ```
//!
//! A rule binds an action (a built-in [`Function`] or a list of `sql`
//! statements) to a hook point, runs it on a named pool, and may be limited to
//! topics matching a filter. [`Rule::from_entry`] parses and validates one
//! rule; every problem is a [`ConfError`] naming the file, line and key.

use std::time::Duration;

use hooks_spec::conf::{ConfEntry, ConfError, ConfFile};
use hooks_spec::HookPoint;
use serde_json::Value;

use crate::sql_template::{parse_template, Placeholder, SqlTemplate};

/// The prefix of rule keys: `backend.pgsql.hook.<hookpoint>.<N>`.
pub const RULE_KEY_PREFIX: &str = "backend.pgsql.hook.";

/// The hook points a rule may bind to (as in EMQX).
pub const BINDABLE_HOOKS: &[HookPoint] = &[
    HookPoint::ClientConnected,
    HookPoint::ClientDisconnected,
    HookPoint::SessionSubscribed,
    HookPoint::SessionUnsubscribed,
    HookPoint::SessionRestore,
    HookPoint::MessagePublish,
    HookPoint::MessageAcked,
    HookPoint::MessageDelivered,
];

/// A built-in action (`{"function": "<name>"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    /// `on_client_connected`: record the client as online in `mqtt_client`.
    OnClientConnected,
    /// `on_client_disconnected`: record the client as offline in `mqtt_client`.
    OnClientDisconnected,
    /// `on_subscribe_lookup`: subscribe the client to its `mqtt_sub` rows.
    OnSubscribeLookup,
    /// `on_message_publish`: store QoS 1/2 messages in `mqtt_msg` before the
    /// publisher is acknowledged.
    OnMessagePublish,
    /// `on_message_store`: store every message, QoS 0 included, in `mqtt_msg`.
    OnMessageStore,
    /// `on_message_retain`: keep retained messages in `mqtt_retain`.
    OnMessageRetain,
    /// `on_retain_delete`: delete from `mqtt_retain` on an empty retained message.
    OnRetainDelete,
    /// `on_retain_lookup`: deliver the retained messages matching a new subscription.
    OnRetainLookup,
    /// `on_message_fetch`: deliver the stored messages a subscriber missed.
    OnMessageFetch,
    /// `on_message_acked`: move the subscriber's `mqtt_acked` position.
    OnMessageAcked,
    /// `on_message_delivered`: does nothing (EMQX has it so that the hook exists).
    OnMessageDelivered,
    /// `on_subscribe_store` (Postbox): keep `mqtt_sub` in step with the
    /// client's subscriptions.
    OnSubscribeStore,
    /// `on_session_restore` (Postbox): keep persistent sessions in
    /// `mqtt_session` (their subscriptions in `mqtt_sub`) and hand them back
    /// to the broker after a restart.
    OnSessionRestore,
}

impl Function {
    /// Every function.
    pub const ALL: &'static [Function] = &[
        Function::OnClientConnected,
        Function::OnClientDisconnected,
        Function::OnSubscribeLookup,
        Function::OnMessagePublish,
        Function::OnMessageStore,
        Function::OnMessageRetain,
        Function::OnRetainDelete,
        Function::OnRetainLookup,
        Function::OnMessageFetch,
        Function::OnMessageAcked,
        Function::OnMessageDelivered,
        Function::OnSubscribeStore,
        Function::OnSessionRestore,
    ];

    /// The name used in the configuration, such as `on_client_connected`.
    pub fn name(self) -> &'static str {
        match self {
            Function::OnClientConnected => "on_client_connected",
            Function::OnClientDisconnected => "on_client_disconnected",
            Function::OnSubscribeLookup => "on_subscribe_lookup",
            Function::OnMessagePublish => "on_message_publish",
            Function::OnMessageStore => "on_message_store",
            Function::OnMessageRetain => "on_message_retain",
            Function::OnRetainDelete => "on_retain_delete",
            Function::OnRetainLookup => "on_retain_lookup",
            Function::OnMessageFetch => "on_message_fetch",
            Function::OnMessageAcked => "on_message_acked",
            Function::OnMessageDelivered => "on_message_delivered",
            Function::OnSubscribeStore => "on_subscribe_store",
            Function::OnSessionRestore => "on_session_restore",
        }
    }

    /// The function called `s`, if any.
    pub fn from_name(s: &str) -> Option<Function> {
        Function::ALL.iter().copied().find(|f| f.name() == s)
    }

    /// The hook points this function can be bound to.
    pub fn hooks(self) -> &'static [HookPoint] {
        match self {
            Function::OnClientConnected | Function::OnSubscribeLookup => &[HookPoint::ClientConnected],
            Function::OnClientDisconnected => &[HookPoint::ClientDisconnected],
            Function::OnMessagePublish
            | Function::OnMessageStore
            | Function::OnMessageRetain
            | Function::OnRetainDelete => &[HookPoint::MessagePublish],
            Function::OnRetainLookup | Function::OnMessageFetch => &[HookPoint::SessionSubscribed],
            Function::OnMessageAcked => &[HookPoint::MessageAcked],
            Function::OnMessageDelivered => &[HookPoint::MessageDelivered],
            Function::OnSubscribeStore => &[HookPoint::SessionSubscribed, HookPoint::SessionUnsubscribed],
            Function::OnSessionRestore => &[HookPoint::SessionRestore],
        }
    }
}

impl std::fmt::Display for Function {
    /// The function's name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A built-in function.
    Function(Function),
    /// SQL statements, run in order with the hook's values as parameters.
    Sql(Vec<SqlTemplate>),
}

/// A rule's `offline_opts` (only for `on_message_fetch`); a field left out
/// takes the global `backend.pgsql.*` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OfflineOpts {
    /// The most stored messages delivered per fetch.
    pub max_returned_count: Option<usize>,
    /// Only messages that arrived within this long before the fetch.
    pub time_range: Option<Duration>,
}

/// One `backend.pgsql.hook.<hookpoint>.<N>` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The hook point the rule is bound to.
    pub hook: HookPoint,
    /// The `<N>` of its key: rules on one hook run in ascending `n`.
    pub n: u32,
    /// The line of the configuration file that set it.
    pub line: usize,
    /// Its key, such as `backend.pgsql.hook.message.publish.1`.
    pub key: String,
    /// The topic filter the rule is limited to (`None`: every topic). For
    /// `session.*` hooks it is matched against the subscription's filter, for
    /// `message.*` hooks against the message's topic.
    pub topic: Option<String>,
    /// What the rule does.
    pub action: Action,
    /// The pool it runs on.
    pub pool: String,
    /// Options of `on_message_fetch` (empty for other actions).
    pub offline_opts: OfflineOpts,
}

fn hook_list(hooks: &[HookPoint]) -> String {
    match hooks {
        [one] => one.as_str().to_string(),
        [first @ .., last] => format!(
            "{} and {}",
            first.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", "),
            last.as_str()
        ),
        [] => "no hook".to_string(),
    }
}

fn bindable_list() -> String {
    BINDABLE_HOOKS
        .iter()
        .map(|h| h.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks an MQTT topic filter: not empty, `#` only as the whole last level,
/// `+` only as a whole level, no NUL character, at most 65535 bytes.
pub fn validate_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("the topic filter is empty".to_string());
    }
    if filter.len() > 65535 {
        return Err("the topic filter is longer than 65535 bytes".to_string());
    }
    if filter.contains('\0') {
        return Err("the topic filter contains a NUL character".to_string());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "invalid topic filter `{filter}`: `#` must be a whole level and the last one (as in `a/#`)"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "invalid topic filter `{filter}`: `+` must be a whole level (as in `a/+/c`)"
            ));
        }
    }
    Ok(())
}

const ACTION_EXPECTED: &str = r#"expected {"function": "<name>"} or {"sql": ["<statement>", ...]}"#;

impl Rule {
    /// Parses and validates the rule set by `entry` (whose key starts with
    /// [`RULE_KEY_PREFIX`]); `pools` are the configured pool names.
    ///
    /// Refused, with an error naming the file, line and key: a key that is not
    /// `backend.pgsql.hook.<hookpoint>.<N>`, an unknown hook point or one rules
    /// cannot bind to ([`BINDABLE_HOOKS`]), a value that is not a JSON object
    /// with the fields `action`, `pool` and optionally `topic` and
    /// `offline_opts`, an unknown function or one that cannot serve the hook,
    /// an unknown pool, an invalid topic filter, an `sql` statement that
    /// [`parse_template`] refuses or that uses a placeholder the hook does not
    /// have, and `offline_opts` on anything but `on_message_fetch`.
    pub fn from_entry(conf: &ConfFile, entry: &ConfEntry, pools: &[&str]) -> Result<Rule, ConfError> {
        let err = |message: String| conf.error(entry, message);
        let shape = || {
            err(format!(
                "expected a rule key `{RULE_KEY_PREFIX}<hookpoint>.<N>` with N a decimal number, \
                 such as `{RULE_KEY_PREFIX}message.publish.1`"
            ))
        };
        let rest = entry.key.strip_prefix(RULE_KEY_PREFIX).ok_or_else(shape)?;
        let (hook_name, n) = rest.rsplit_once('.').ok_or_else(shape)?;
        if hook_name.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(shape());
        }
        let n: u32 = n.parse().map_err(|_| {
            err(format!(
                "the rule number `{n}` is too large (the largest is {})",
                u32::MAX
            ))
        })?;
        let hook: HookPoint = hook_name.parse().map_err(|_| {
            err(format!(
                "unknown hook point `{hook_name}`; rules may bind to: {}",
                bindable_list()
            ))
        })?;
        if !BINDABLE_HOOKS.contains(&hook) {
            return Err(err(format!(
                "rules cannot bind to hook point `{hook}`; they may bind to: {}",
                bindable_list()
            )));
        }

        let value: Value = serde_json::from_str(&entry.value).map_err(|e| {
            err(format!(
                r#"invalid JSON ({e}); expected an object such as {{"action": {{"function": "on_message_publish"}}, "pool": "pool1"}}"#
            ))
        })?;
        let Value::Object(fields) = value else {
            return Err(err(format!("expected a JSON object, got `{}`", entry.value)));
        };
        for name in fields.keys() {
            if !matches!(name.as_str(), "action" | "pool" | "topic" | "offline_opts") {
                return Err(err(format!(
                    "unknown field `{name}` in the rule; the fields are `action`, `pool`, `topic` and \
                     `offline_opts`"
                )));
            }
        }

        let action = match fields.get("action") {
            None => return Err(err(format!("missing field `action`: {ACTION_EXPECTED}"))),
            Some(a) => parse_action(a, hook).map_err(&err)?,
        };

        let pool = match fields.get("pool") {
            Some(Value::String(p)) => p.clone(),
            None => {
                return Err(err(
                    r#"missing field `pool`: expected "pool": "<pool name>""#.to_string()
                ))
            }
            Some(other) => return Err(err(format!("`pool` must be a string (a pool name), got {other}"))),
        };
        if !pools.contains(&pool.as_str()) {
            return Err(err(if pools.is_empty() {
                format!(
                    "unknown pool `{pool}`: no pool is configured (a pool is defined by a \
                     `backend.pgsql.<pool>.server` key)"
                )
            } else {
                format!(
                    "unknown pool `{pool}`; the configured pools are: {}",
                    pools.join(", ")
                )
            }));
        }

        let topic = match fields.get("topic") {
            None => None,
            Some(Value::String(t)) => {
                validate_topic_filter(t).map_err(|m| err(format!("`topic`: {m}")))?;
                Some(t.clone())
            }
            Some(other) => {
                return Err(err(format!(
                    "`topic` must be a string (an MQTT topic filter), got {other}"
                )))
            }
        };

        let offline_opts = match fields.get("offline_opts") {
            None => OfflineOpts::default(),
            Some(opts) => {
                if action != Action::Function(Function::OnMessageFetch) {
                    return Err(err(
                        "`offline_opts` is only allowed with the function on_message_fetch".to_string(),
                    ));
                }
                parse_offline_opts(opts).map_err(&err)?
            }
        };

        Ok(Rule {
            hook,
            n,
            line: entry.line,
            key: entry.key.clone(),
            topic,
            action,
            pool,
            offline_opts,
        })
    }
}

fn parse_action(value: &Value, hook: HookPoint) -> Result<Action, String> {
    let Value::Object(fields) = value else {
        return Err(format!("`action`: {ACTION_EXPECTED}, got {value}"));
    };
    if fields.len() != 1 {
        return Err(format!(
            "`action` must have exactly one field: {ACTION_EXPECTED}, got {value}"
        ));
    }
    if let Some(f) = fields.get("function") {
        let Value::String(name) = f else {
            return Err(format!(
                "`action.function` must be a function name (a string), got {f}"
            ));
        };
        let Some(function) = Function::from_name(name) else {
            return Err(format!(
                "unknown function `{name}`; the functions are: {}",
                Function::ALL
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if !function.hooks().contains(&hook) {
            return Err(format!(
                "function {function} cannot be bound to `{hook}`; it can only be bound to {}",
                hook_list(function.hooks())
            ));
        }
        return Ok(Action::Function(function));
    }
    if let Some(s) = fields.get("sql") {
        if hook == HookPoint::SessionRestore {
            return Err(format!(
                "`{hook}` takes the function {} only, not `sql`",
                Function::OnSessionRestore
            ));
        }
        return parse_sql(s, hook).map(Action::Sql);
    }
    Err(format!("`action`: {ACTION_EXPECTED}, got {value}"))
}

fn parse_sql(value: &Value, hook: HookPoint) -> Result<Vec<SqlTemplate>, String> {
    let expected = "`action.sql` must be a non-empty list of SQL statements (strings)";
    let Value::Array(items) = value else {
        return Err(format!("{expected}, got {value}"));
    };
    if items.is_empty() {
        return Err(format!("{expected}, got an empty list"));
    }
    let available = Placeholder::available_on(hook);
    let mut templates = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let which = i + 1;
        let Value::String(stmt) = item else {
            return Err(format!("{expected}; statement {which} is {item}"));
        };
        if stmt.trim().is_empty() {
            return Err(format!("{expected}; statement {which} is empty"));
        }
        let template = parse_template(stmt).map_err(|e| format!("sql statement {which}: {e}"))?;
        if let Some(p) = template.params.iter().find(|p| !available.contains(p)) {
            return Err(format!(
                "sql statement {which}: {p} is not available on {hook}; the placeholders there are: {}",
                available
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        templates.push(template);
    }
    Ok(templates)
}

fn parse_offline_opts(value: &Value) -> Result<OfflineOpts, String> {
    let Value::Object(fields) = value else {
        return Err(format!(
            r#"`offline_opts` must be an object such as {{"max_returned_count": 500, "time_range": "2h"}}, got {value}"#
        ));
    };
    let mut opts = OfflineOpts::default();
    for (name, v) in fields {
        match name.as_str() {
            "max_returned_count" => opts.max_returned_count = Some(positive_count(v)?),
            "time_range" => opts.time_range = Some(time_range(v)?),
            _ => {
                return Err(format!(
                    "unknown field `{name}` in `offline_opts`; the fields are `max_returned_count` and \
                     `time_range`"
                ))
            }
        }
    }
    Ok(opts)
}

fn positive_count(v: &Value) -> Result<usize, String> {
    match v.as_u64().map(usize::try_from) {
        Some(Ok(n)) if n > 0 => Ok(n),
        _ => Err(format!(
            "`offline_opts.max_returned_count` must be a positive integer (such as 500), got {v}"
        )),
    }
}

fn time_range(v: &Value) -> Result<Duration, String> {
    let expected = r#"`offline_opts.time_range` must be a duration such as "2h", "30m" or "7d""#;
    let Value::String(s) = v else {
        return Err(format!("{expected}, got {v}"));
    };
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{expected}, greater than 0, got \"{s}\"")),
        Err(e) => Err(format!("{expected}, got \"{s}\" ({e})")),
    }
}

#[cfg(test)]
mod tests;
