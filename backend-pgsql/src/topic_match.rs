//! MQTT filters as SQL conditions, so offline fetch and retained lookup
//! honour wildcards (EMQX compared `topic = filter` literally).
//!
//! A filter without wildcards becomes `topic = $n` (uses the `(topic, id)`
//! index); one with wildcards becomes an anchored POSIX regular expression
//! bound as a parameter (`topic ~ $n`), with every literal level escaped.

/// How to select topics matching a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCondition {
    /// `topic = <value>`.
    Exact(String),
    /// `topic ~ <value>`.
    Regex(String),
}

impl TopicCondition {
    /// The SQL operator and the value to bind with it (`topic = $n` or
    /// `topic ~ $n`).
    pub fn into_sql(self) -> (&'static str, String) {
        match self {
            TopicCondition::Exact(t) => ("=", t),
            TopicCondition::Regex(r) => ("~", r),
        }
    }
}

/// The condition for a valid MQTT topic filter.
pub fn condition(filter: &str) -> TopicCondition {
    if !filter.contains(['+', '#']) {
        return TopicCondition::Exact(filter.to_string());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let mut re = String::from("^");
    // Topics starting with `$` are not matched by a leading wildcard.
    if matches!(levels.first(), Some(&"+") | Some(&"#")) {
        re.push_str("(?!\\$)");
    }
    for (i, level) in levels.iter().enumerate() {
        let last = i + 1 == levels.len();
        match *level {
            "#" => {
                // `a/#` also matches `a`: the separator before `#` is optional.
                if i == 0 {
                    re.push_str(".*");
                } else {
                    // Remove the '/' we appended for this level and make it part of the optional tail.
                    re.pop();
                    re.push_str("(/.*)?");
                }
            }
            "+" => re.push_str("[^/]*"),
            lit => re.push_str(&escape(lit)),
        }
        if !last {
            re.push('/');
        }
    }
    re.push('$');
    TopicCondition::Regex(re)
}

/// An anchored POSIX regular expression for any valid filter, with or
/// without wildcards (retention matches every rule the same way).
pub fn anchored_regex(filter: &str) -> String {
    match condition(filter) {
        TopicCondition::Regex(re) => re,
        TopicCondition::Exact(topic) => format!("^{}$", escape(&topic)),
    }
}

fn escape(lit: &str) -> String {
    let mut out = String::with_capacity(lit.len());
    for c in lit.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_filters_use_equality() {
        assert_eq!(condition("a/b"), TopicCondition::Exact("a/b".into()));
    }

    #[test]
    fn wildcards_become_anchored_regexes() {
        assert_eq!(condition("a/+/c"), TopicCondition::Regex("^a/[^/]*/c$".into()));
        assert_eq!(condition("a/#"), TopicCondition::Regex("^a(/.*)?$".into()));
        assert_eq!(condition("#"), TopicCondition::Regex("^(?!\\$).*$".into()));
        assert_eq!(condition("+/x"), TopicCondition::Regex("^(?!\\$)[^/]*/x$".into()));
        assert_eq!(condition("a.b/+"), TopicCondition::Regex("^a\\.b/[^/]*$".into()));
    }

    #[test]
    fn anchored_regexes_escape_exact_filters_too() {
        assert_eq!(anchored_regex("a.b/c"), "^a\\.b/c$");
        assert_eq!(anchored_regex("a/+"), "^a/[^/]*$");
    }
}
