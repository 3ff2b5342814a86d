//! MQTT topic names and topic filters: validation, shared-subscription parsing and matching.
//!
//! Implements the rules of MQTT 3.1.1 / 5.0 section 4.7 without relying on any MQTT crate:
//!
//! * a *topic name* (used in PUBLISH) is a non-empty UTF-8 string of at most 65535 bytes with no
//!   U+0000 and no wildcard characters;
//! * a *topic filter* (used in SUBSCRIBE) may contain `+` (single-level wildcard, occupying a whole
//!   level) and `#` (multi-level wildcard, occupying the whole last level);
//! * a *shared subscription* filter has the form `$share/<group>/<filter>`;
//! * topics starting with `$` are never matched by a filter whose first level is a wildcard.

/// Maximum length in bytes of a topic name or filter (the MQTT UTF-8 string limit).
pub const MAX_TOPIC_LEN: usize = 65535;

/// Prefix that marks a shared-subscription filter.
const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or topic filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic name or filter is the empty string.
    #[error("topic must not be empty")]
    Empty,
    /// The topic name or filter is longer than 65535 bytes.
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    /// The topic name or filter contains the null character U+0000.
    #[error("topic must not contain the null character")]
    ContainsNul,
    /// A topic name (as opposed to a filter) contains `+` or `#`.
    #[error("topic name must not contain wildcard characters")]
    WildcardInTopic,
    /// `#` is used other than as the whole last level of a filter.
    #[error("'#' must occupy an entire level and be the last level of a filter")]
    BadMultiLevelWildcard,
    /// `+` is used other than as a whole level of a filter.
    #[error("'+' must occupy an entire level of a filter")]
    BadSingleLevelWildcard,
    /// A `$share/` filter has an empty or invalid share name, or no filter after it.
    #[error("invalid shared subscription: expected $share/<group>/<filter>")]
    BadShareGroup,
    /// The topic has more levels than the configured maximum.
    #[error("topic has too many levels")]
    TooManyLevels,
}

/// Checks the rules common to topic names and filters: non-empty, length limit, no U+0000.
fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.as_bytes().contains(&0) {
        return Err(TopicError::ContainsNul);
    }
    Ok(())
}

/// Number of `/`-separated levels of `s` (an empty string has one, empty, level).
fn level_count(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'/').count() + 1
}

/// Validates a topic name as used in PUBLISH (and in wills).
///
/// The name must be non-empty, at most 65535 bytes, free of U+0000 and of the wildcard
/// characters `+` and `#`. When `max_levels` is non-zero the name may have at most that many
/// `/`-separated levels; `0` means unlimited.
pub fn validate_topic_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInTopic);
    }
    if max_levels != 0 && level_count(topic) > max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// Validates a topic filter as used in SUBSCRIBE / UNSUBSCRIBE.
///
/// The filter must be non-empty, at most 65535 bytes and free of U+0000; `#` may only appear
/// as the entire last level and `+` only as an entire level. When `max_levels` is non-zero the
/// filter may have at most that many levels; `0` means unlimited.
///
/// Shared-subscription filters (`$share/...`) should be split with [`parse_shared`] first; this
/// function treats `$share` as an ordinary level.
pub fn validate_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut count = 0usize;
    let mut it = levels(filter).peekable();
    while let Some(level) = it.next() {
        count += 1;
        if level.contains('#') && (level != "#" || it.peek().is_some()) {
            return Err(TopicError::BadMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevelWildcard);
        }
    }
    if max_levels != 0 && count > max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// A shared-subscription filter `$share/<group>/<filter>` split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedFilter<'a> {
    /// The share name (the `<group>` part); non-empty, without `/`, `+` or `#`.
    pub group: &'a str,
    /// The topic filter the group subscribes to (the `<filter>` part); already validated.
    pub filter: &'a str,
}

/// Checks what a SUBSCRIBE may name: a filter, or a `$share/<group>/`
/// prefix and a filter.
pub fn validate_subscription(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    let inner = parse_shared(filter)?.map_or(filter, |share| share.filter);
    validate_filter(inner, max_levels)
}

/// Parses a shared-subscription filter.
///
/// Returns `Ok(None)` if `filter` does not start with `$share/` (it is then an ordinary filter,
/// to be checked with [`validate_filter`]). Otherwise returns the group and inner filter, or
/// [`TopicError::BadShareGroup`] if the group is empty or contains `+` or `#`, or if there is no
/// (or an empty) filter after it, as in `$share/g` and `$share/g/`. The inner filter is
/// validated with [`validate_filter`] without a level limit; callers enforcing a limit should
/// call [`validate_filter`] on [`SharedFilter::filter`] themselves.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    check_common(filter)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::BadShareGroup);
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::BadShareGroup);
    }
    validate_filter(inner, 0)?;
    Ok(Some(SharedFilter { group, filter: inner }))
}

/// Returns whether the topic name `topic` matches the topic filter `filter`.
///
/// Follows MQTT section 4.7: `+` matches exactly one level (possibly empty, so `a/+/c` matches
/// `a//c`), `#` matches any number of remaining levels including none (so `sport/#` matches
/// `sport`), and a topic starting with `$` is never matched by a filter whose first level is
/// `+` or `#`. Both arguments are assumed valid; shared-subscription prefixes must be stripped
/// beforehand (see [`parse_shared`]).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = levels(filter);
    let mut t = levels(topic);
    let mut first = true;
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return !(first && topic.starts_with('$')),
            (Some("+"), Some(_)) => {
                if first && topic.starts_with('$') {
                    return false;
                }
            }
            (Some(fl), Some(tl)) => {
                if fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Splits a topic name or filter into its `/`-separated levels.
///
/// An empty string yields a single empty level; leading, trailing and doubled `/` yield empty
/// levels.
pub fn levels(s: &str) -> std::str::Split<'_, char> {
    s.split('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        let valid = [
            "a",
            "/",
            "//",
            "/finance",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "$SYS/broker/clients",
            "a//c",
            " ",
            "ünïcödé/トピック",
            "$share/g/t",
        ];
        for t in valid {
            assert_eq!(validate_topic_name(t, 0), Ok(()), "{t:?}");
        }
        let invalid = [
            ("", TopicError::Empty),
            ("a\0b", TopicError::ContainsNul),
            ("\0", TopicError::ContainsNul),
            ("+", TopicError::WildcardInTopic),
            ("#", TopicError::WildcardInTopic),
            ("sport/+", TopicError::WildcardInTopic),
            ("sport/#", TopicError::WildcardInTopic),
            ("sport+", TopicError::WildcardInTopic),
            ("a#b", TopicError::WildcardInTopic),
        ];
        for (t, e) in invalid {
            assert_eq!(validate_topic_name(t, 0), Err(e), "{t:?}");
        }
    }

    #[test]
    fn lengths_and_levels() {
        let max = "a".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&max, 0), Ok(()));
        assert_eq!(validate_filter(&max, 0), Ok(()));
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(validate_topic_name(&long, 0), Err(TopicError::TooLong));
        assert_eq!(validate_filter(&long, 0), Err(TopicError::TooLong));

        assert_eq!(validate_topic_name("a/b/c", 3), Ok(()));
        assert_eq!(validate_topic_name("a/b/c", 2), Err(TopicError::TooManyLevels));
        assert_eq!(validate_topic_name("/", 2), Ok(()));
        assert_eq!(validate_topic_name("//", 2), Err(TopicError::TooManyLevels));
        assert_eq!(validate_filter("a/+/#", 3), Ok(()));
        assert_eq!(validate_filter("a/+/#", 2), Err(TopicError::TooManyLevels));
        assert_eq!(validate_filter("#", 1), Ok(()));
    }

    #[test]
    fn filters() {
        let valid = [
            "sport/tennis/player1/#",
            "sport/tennis/#",
            "sport/#",
            "#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "+/+",
            "/+",
            "/finance",
            "$SYS/#",
            "a//c",
            "/",
            "+/",
            "//#",
            "$share",
            "$share/g/t",
        ];
        for f in valid {
            assert_eq!(validate_filter(f, 0), Ok(()), "{f:?}");
        }
        let invalid = [
            ("", TopicError::Empty),
            ("a/\0", TopicError::ContainsNul),
            ("sport/tennis#", TopicError::BadMultiLevelWildcard),
            ("sport/#/ranking", TopicError::BadMultiLevelWildcard),
            ("#/", TopicError::BadMultiLevelWildcard),
            ("##", TopicError::BadMultiLevelWildcard),
            ("a#", TopicError::BadMultiLevelWildcard),
            ("#a", TopicError::BadMultiLevelWildcard),
            ("sport+", TopicError::BadSingleLevelWildcard),
            ("sport/+tennis", TopicError::BadSingleLevelWildcard),
            ("++", TopicError::BadSingleLevelWildcard),
            ("a/+b/c", TopicError::BadSingleLevelWildcard),
        ];
        for (f, e) in invalid {
            assert_eq!(validate_filter(f, 0), Err(e), "{f:?}");
        }
    }

    #[test]
    fn shared() {
        assert_eq!(parse_shared("sport/#"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(parse_shared("$SHARE/g/a"), Ok(None));
        assert_eq!(parse_shared("$shared/g/a"), Ok(None));
        assert_eq!(
            parse_shared("$share/g/sport/#"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "sport/#"
            }))
        );
        assert_eq!(
            parse_shared("$share/grp/+"),
            Ok(Some(SharedFilter {
                group: "grp",
                filter: "+"
            }))
        );
        assert_eq!(
            parse_shared("$share/g//"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "/"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/$share/h/x"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "$share/h/x"
            }))
        );
        for bad in [
            "$share/",
            "$share//a",
            "$share/g",
            "$share/g/",
            "$share/+/a",
            "$share/#/a",
            "$share/a+/b",
        ] {
            assert_eq!(parse_shared(bad), Err(TopicError::BadShareGroup), "{bad:?}");
        }
        assert_eq!(
            parse_shared("$share/g/a#"),
            Err(TopicError::BadMultiLevelWildcard)
        );
        assert_eq!(
            parse_shared("$share/g/a+"),
            Err(TopicError::BadSingleLevelWildcard)
        );
        assert_eq!(parse_shared("$share/g\0/a"), Err(TopicError::ContainsNul));
    }

    #[test]
    fn matching() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/tennis/player1/#", "sport/tennis/player2", false),
            ("sport/#", "sport", true),
            ("sport/#", "sports", false),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/tournament", false),
            ("sport/tennis/+", "sport/tennis", false),
            ("sport/tennis/+", "sport/tennis/", true),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+", "finance", true),
            ("#", "finance", true),
            ("#", "/finance", true),
            ("/finance", "/finance", true),
            ("/finance", "finance", false),
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("+/+/+", "//", true),
            ("+/#", "a", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a", "A", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/#", "$SYS", true),
            ("#", "$SYS/x", false),
            ("#", "$SYS", false),
            ("+", "$SYS", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("$SYS/+/Clients", "$SYS/monitor/Clients", true),
            ("a/#", "a/$b", true),
            ("a/+", "a/$b", true),
            ("+/$b", "a/$b", true),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f:?} vs {t:?}");
        }
    }

    #[test]
    fn levels_split() {
        assert_eq!(levels("a/b/c").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(levels("/a/").collect::<Vec<_>>(), ["", "a", ""]);
        assert_eq!(levels("").collect::<Vec<_>>(), [""]);
    }
}
