//! `backend.pgsql.msg_retention.<N> = <topic filter> <duration>`: retention
//! by topic filter.
//!
//! Each rule keeps the messages whose topic matches its filter for its
//! duration (`infinity`: for ever). Rules are tried in ascending `N` and the
//! first that matches decides; a message no rule matches is kept for
//! `backend.pgsql.msg_retention`, the default.

use std::time::Duration;

use hooks_spec::{ConfEntry, ConfError, ConfFile};

use crate::rules::validate_topic_filter;

/// One `backend.pgsql.msg_retention.<N>` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRetention {
    /// Its number `N`: rules are tried in ascending order.
    pub n: u32,
    /// The MQTT topic filter (wildcards allowed).
    pub filter: String,
    /// How long matching messages are kept; `None`: for ever (`infinity`).
    pub retention: Option<Duration>,
    /// The key's line in the file.
    pub line: usize,
}

impl TopicRetention {
    /// Reads the rule of `e`, whose key is `backend.pgsql.msg_retention.<n>`.
    pub(crate) fn from_entry(conf: &ConfFile, e: &ConfEntry, n: &str) -> Result<TopicRetention, ConfError> {
        let n: u32 = n.parse().map_err(|_| {
            conf.error(
                e,
                format!(
                    "`msg_retention` cannot be a pool name: `backend.pgsql.msg_retention.<N>` is a \
                     retention rule by topic filter, with N a number (got `{n}`)"
                ),
            )
        })?;
        let expected = |what: String| {
            conf.error(
                e,
                format!(
                    "expected `<topic filter> <duration>` such as `alerts/# 30d` or `telemetry/+/raw 1h` \
                     (or `infinity`): {what}"
                ),
            )
        };
        let mut words = e.value.split_whitespace();
        let (Some(filter), Some(duration), None) = (words.next(), words.next(), words.next()) else {
            return Err(expected(format!("got `{}`", e.value)));
        };
        validate_topic_filter(filter).map_err(expected)?;
        let retention = match duration {
            "infinity" => None,
            d => match humantime::parse_duration(d) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => return Err(expected("the duration must be greater than 0".to_string())),
                Err(err) => return Err(expected(format!("`{d}` is not a duration ({err})"))),
            },
        };
        Ok(TopicRetention {
            n,
            filter: filter.to_string(),
            retention,
            line: e.line,
        })
    }
}
