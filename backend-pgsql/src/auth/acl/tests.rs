use super::*;

fn row(
    allow: i64,
    ipaddr: Option<&str>,
    username: Option<&str>,
    clientid: Option<&str>,
    access: i64,
    topic: &str,
) -> AclRule {
    AclRule::compile(&AclRow {
        allow: Some(allow),
        ipaddr: ipaddr.map(str::to_string),
        username: username.map(str::to_string),
        clientid: clientid.map(str::to_string),
        access: Some(access),
        topic: Some(topic.to_string()),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn subject<'a>(username: Option<&'a str>, clientid: &'a str, ip: &str) -> Subject<'a> {
    Subject {
        username,
        clientid,
        ip: ip.parse().unwrap(),
    }
}

const SUB: AclAction = AclAction::Subscribe;
const PUB: AclAction = AclAction::Publish;

#[test]
fn covers_as_filters() {
    assert!(filter_covers("a/#", "a/+/b"));
    assert!(filter_covers("a/#", "a"));
    assert!(filter_covers("a/#", "a/#"));
    assert!(filter_covers("#", "a/+/#"));
    assert!(filter_covers("a/+/b", "a/x/b"));
    assert!(filter_covers("a/+/b", "a/+/b"));
    assert!(filter_covers("a/b", "a/b"));
    assert!(!filter_covers("a/+", "a/#"));
    assert!(!filter_covers("a/+", "a"));
    assert!(!filter_covers("a/b", "a/+"));
    assert!(!filter_covers("a/x/b", "a/+/b"));
    assert!(!filter_covers("a/+/b", "a/x/b/c"));
    assert!(!filter_covers("a/b/c", "a/b"));
    assert!(!filter_covers("#", "$SYS/x"));
    assert!(!filter_covers("+/x", "$SYS/x"));
    assert!(filter_covers("$SYS/#", "$SYS/x"));
}

#[test]
fn overlaps_as_filters() {
    assert!(filters_overlap("a/secret", "a/#"));
    assert!(filters_overlap("a/secret", "a/+"));
    assert!(filters_overlap("a/#", "a"));
    assert!(filters_overlap("a/+/c", "+/b/#"));
    assert!(filters_overlap("#", "x/y"));
    assert!(filters_overlap("$SYS/#", "$SYS/+"));
    assert!(!filters_overlap("a/secret", "a/public"));
    assert!(!filters_overlap("a/secret", "a/+/temp"));
    assert!(!filters_overlap("a/+", "a"));
    assert!(!filters_overlap("$SYS/#", "#"));
    assert!(!filters_overlap("+/x", "$SYS/x"));
}

#[test]
fn deny_rows_refuse_subscriptions_that_could_receive_their_topics() {
    let rules = vec![
        row(0, None, Some("$all"), None, 1, "sensors/secret"),
        row(1, None, Some("$all"), None, 3, "sensors/#"),
    ];
    let who = subject(Some("u"), "c", "127.0.0.1");
    assert_eq!(evaluate(&rules, &who, SUB, "sensors/#"), Some(false));
    assert_eq!(evaluate(&rules, &who, SUB, "sensors/+"), Some(false));
    assert_eq!(evaluate(&rules, &who, SUB, "sensors/public"), Some(true));
    assert_eq!(evaluate(&rules, &who, SUB, "sensors/+/temp"), Some(true));
    assert_eq!(
        evaluate(&rules, &who, PUB, "sensors/secret"),
        Some(true),
        "subscribe-only row"
    );
}

#[test]
fn first_matching_row_decides_in_query_order() {
    let rules = vec![
        row(0, None, Some("$all"), None, 1, "secret/#"),
        row(1, None, Some("$all"), None, 3, "#"),
    ];
    let who = subject(Some("u"), "c", "127.0.0.1");
    assert_eq!(evaluate(&rules, &who, SUB, "secret/a"), Some(false));
    assert_eq!(evaluate(&rules, &who, SUB, "secret/+"), Some(false));
    // `#` could receive `secret/...`: the deny row refuses it (deliveries
    // are not filtered afterwards); `other/#` cannot, the allow row decides.
    assert_eq!(evaluate(&rules, &who, SUB, "#"), Some(false));
    assert_eq!(evaluate(&rules, &who, SUB, "+/a"), Some(false));
    assert_eq!(evaluate(&rules, &who, SUB, "other/#"), Some(true));
    assert_eq!(
        evaluate(&rules, &who, PUB, "secret/a"),
        Some(true),
        "the deny row is subscribe-only"
    );
    let reversed: Vec<AclRule> = rules.into_iter().rev().collect();
    assert_eq!(evaluate(&reversed, &who, SUB, "secret/a"), Some(true));
}

#[test]
fn access_kinds() {
    let sub_only = [row(1, None, Some("$all"), None, 1, "t")];
    let pub_only = [row(1, None, Some("$all"), None, 2, "t")];
    let who = subject(None, "c", "127.0.0.1");
    assert_eq!(evaluate(&sub_only, &who, SUB, "t"), Some(true));
    assert_eq!(evaluate(&sub_only, &who, PUB, "t"), None);
    assert_eq!(evaluate(&pub_only, &who, PUB, "t"), Some(true));
    assert_eq!(evaluate(&pub_only, &who, SUB, "t"), None);
}

#[test]
fn who_columns_must_all_match() {
    let rules = [row(1, Some("10.0.0.0/8"), Some("alice"), None, 3, "#")];
    assert_eq!(
        evaluate(&rules, &subject(Some("alice"), "c", "10.1.2.3"), PUB, "x"),
        Some(true)
    );
    assert_eq!(
        evaluate(&rules, &subject(Some("alice"), "c", "::ffff:10.1.2.3"), PUB, "x"),
        Some(true)
    );
    assert_eq!(
        evaluate(&rules, &subject(Some("alice"), "c", "11.1.2.3"), PUB, "x"),
        None
    );
    assert_eq!(
        evaluate(&rules, &subject(Some("bob"), "c", "10.1.2.3"), PUB, "x"),
        None
    );
    assert_eq!(evaluate(&rules, &subject(None, "c", "10.1.2.3"), PUB, "x"), None);
    let by_client = [row(0, Some(""), None, Some("dev1"), 2, "#")];
    assert_eq!(
        evaluate(&by_client, &subject(None, "dev1", "1.2.3.4"), PUB, "x"),
        Some(false)
    );
    assert_eq!(
        evaluate(&by_client, &subject(None, "dev2", "1.2.3.4"), PUB, "x"),
        None
    );
    let v6 = [row(1, Some("2001:db8::/32"), None, None, 3, "#")];
    assert_eq!(
        evaluate(&v6, &subject(None, "c", "2001:db8::1"), PUB, "x"),
        Some(true)
    );
    assert_eq!(evaluate(&v6, &subject(None, "c", "2001:db9::1"), PUB, "x"), None);
    assert_eq!(evaluate(&v6, &subject(None, "c", "10.0.0.1"), PUB, "x"), None);
}

#[test]
fn placeholders_in_topics() {
    let rules = [
        row(1, None, Some("$all"), None, 3, "users/%u/#"),
        row(1, None, Some("$all"), None, 3, "devices/%c"),
        row(1, None, Some("$all"), None, 2, "up/${clientid}-data"),
        row(0, None, Some("$all"), None, 3, "#"),
    ];
    let alice = subject(Some("alice"), "dev1", "127.0.0.1");
    assert_eq!(evaluate(&rules, &alice, SUB, "users/alice/+"), Some(true));
    assert_eq!(evaluate(&rules, &alice, SUB, "users/bob/+"), Some(false));
    assert_eq!(evaluate(&rules, &alice, PUB, "devices/dev1"), Some(true));
    assert_eq!(evaluate(&rules, &alice, PUB, "devices/dev2"), Some(false));
    assert_eq!(evaluate(&rules, &alice, PUB, "up/dev1-data"), Some(true));
    // No user name: the %u row does not apply.
    let anon = subject(None, "dev1", "127.0.0.1");
    assert_eq!(evaluate(&rules, &anon, SUB, "users/+/x"), Some(false));
    // A wildcard in a user name never widens a rule.
    let sneaky = subject(Some("+"), "#", "127.0.0.1");
    assert_eq!(evaluate(&rules, &sneaky, SUB, "users/bob/x"), Some(false));
    assert_eq!(evaluate(&rules, &sneaky, PUB, "devices/x"), Some(false));
    // A value is not read for placeholders again: a user name `${clientid}`
    // (or a client id `${username}`) is only text.
    let forger = subject(Some("${clientid}"), "alice", "127.0.0.1");
    assert_eq!(evaluate(&rules, &forger, SUB, "users/alice/#"), Some(false));
    let forger = subject(Some("alice"), "${username}", "127.0.0.1");
    assert_eq!(evaluate(&rules, &forger, PUB, "up/alice-data"), Some(false));
    assert_eq!(evaluate(&rules, &forger, PUB, "up/${username}-data"), Some(true));
    // `%u` inside a level is EMQX 4 literal text.
    let literal = [row(1, None, Some("$all"), None, 2, "a/x%u")];
    assert_eq!(evaluate(&literal, &alice, PUB, "a/x%u"), Some(true));
}

#[test]
fn deny_rows_apply_to_values_that_allow_rows_skip() {
    let rules = [
        row(0, None, Some("$all"), None, 3, "devices/%c/secret"),
        row(0, None, Some("$all"), None, 3, "inbox/${username}"),
        row(1, None, Some("$all"), None, 3, "devices/#"),
        row(1, None, Some("$all"), None, 3, "inbox/#"),
    ];
    let slash = subject(Some("a/b"), "x/y", "127.0.0.1");
    assert_eq!(evaluate(&rules, &slash, PUB, "devices/x/y/secret"), Some(false));
    assert_eq!(evaluate(&rules, &slash, SUB, "devices/#"), Some(false));
    assert_eq!(evaluate(&rules, &slash, PUB, "inbox/a/b"), Some(false));
    assert_eq!(evaluate(&rules, &slash, PUB, "devices/x/y/open"), Some(true));
    let plus = subject(Some("u"), "+", "127.0.0.1");
    assert_eq!(evaluate(&rules, &plus, PUB, "devices/any/secret"), Some(false));
    let plain = subject(Some("u"), "c", "127.0.0.1");
    assert_eq!(evaluate(&rules, &plain, PUB, "devices/x/y/secret"), Some(true));
}

#[test]
fn eq_topics_are_literal() {
    let rules = [
        row(0, None, Some("$all"), None, 1, "eq #"),
        row(1, None, Some("$all"), None, 1, "#"),
    ];
    let who = subject(None, "c", "127.0.0.1");
    assert_eq!(evaluate(&rules, &who, SUB, "#"), Some(false));
    assert_eq!(evaluate(&rules, &who, SUB, "a/#"), Some(true));
    let eq_plus = [row(1, None, Some("$all"), None, 3, "eq a/+")];
    assert_eq!(evaluate(&eq_plus, &who, SUB, "a/+"), Some(true));
    assert_eq!(evaluate(&eq_plus, &who, SUB, "a/b"), None);
}

#[test]
fn malformed_rows_are_errors() {
    let base = AclRow {
        allow: Some(1),
        ipaddr: None,
        username: Some("$all".into()),
        clientid: None,
        access: Some(1),
        topic: Some("#".into()),
    };
    assert!(AclRule::compile(&base).is_ok());
    for bad in [
        AclRow {
            allow: Some(2),
            ..base.clone()
        },
        AclRow {
            allow: None,
            ..base.clone()
        },
        AclRow {
            access: Some(4),
            ..base.clone()
        },
        AclRow {
            topic: None,
            ..base.clone()
        },
        AclRow {
            topic: Some(" ".into()),
            ..base.clone()
        },
        AclRow {
            username: None,
            ..base.clone()
        },
        AclRow {
            username: None,
            ipaddr: Some("not-an-ip".into()),
            ..base.clone()
        },
        AclRow {
            username: None,
            ipaddr: Some("10.0.0.0/33".into()),
            ..base.clone()
        },
    ] {
        assert!(AclRule::compile(&bad).is_err(), "{bad:?} should be refused");
    }
}
