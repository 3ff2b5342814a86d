//! ACL file parsing, filter coverage and decisions.

use std::path::Path;

use hooks_spec::AclAction::{Publish, Subscribe};

use crate::auth::acl_file::{covers, overlaps, Access, AclFile, Decision};
use crate::auth::AuthFileError;

fn acl(text: &str) -> AclFile {
    AclFile::parse(Path::new("acl"), text).unwrap()
}

fn parse_error(text: &str) -> (usize, String) {
    match AclFile::parse(Path::new("/etc/acl"), text) {
        Err(e @ AuthFileError::Parse { .. }) => {
            let shown = e.to_string();
            let AuthFileError::Parse { line, message, .. } = e else {
                unreachable!()
            };
            assert!(shown.starts_with(&format!("/etc/acl:{line}: ")), "{shown}");
            (line, message)
        }
        other => panic!("expected a parse error for {text:?}, got {other:?}"),
    }
}

#[test]
fn filter_covers_filter() {
    let yes = [
        ("#", "#"),
        ("#", "a/+/c"),
        ("sensors/#", "sensors/+/temp"),
        ("sensors/#", "sensors"),
        ("sensors/#", "sensors/#"),
        ("sensors/+", "sensors/a"),
        ("sensors/+", "sensors/+"),
        ("+/+", "a/b"),
        ("a/b", "a/b"),
        ("$SYS/#", "$SYS/broker/+"),
        ("+/b", "+/b"),
    ];
    for (rule, filter) in yes {
        assert!(covers(rule, filter), "{rule} should cover {filter}");
    }
    let no = [
        ("sensors/+", "sensors/#"),
        ("sensors/+", "sensors/a/b"),
        ("sensors/a", "sensors/+"),
        ("a/b", "a"),
        ("a", "a/b"),
        ("a/+/c", "a/#"),
        ("#", "$SYS/#"),
        ("+/broker", "$SYS/broker"),
        ("a/b/#", "a/+/c"),
        ("sensors/#", "other/#"),
    ];
    for (rule, filter) in no {
        assert!(!covers(rule, filter), "{rule} should not cover {filter}");
    }
}

#[test]
fn filters_overlap() {
    let yes = [
        ("a/b", "a/+"),
        ("a/+", "+/b"),
        ("a/#", "a"),
        ("a", "a/#"),
        ("#", "x/y"),
        ("sensors/secret", "sensors/#"),
    ];
    for (x, y) in yes {
        assert!(overlaps(x, y), "{x} and {y} overlap");
        assert!(overlaps(y, x), "{y} and {x} overlap");
    }
    let no = [
        ("a/b", "a/c"),
        ("a/+", "a"),
        ("a/+/c", "a/b"),
        ("#", "$SYS/x"),
        ("+/x", "$SYS/x"),
    ];
    for (x, y) in no {
        assert!(!overlaps(x, y), "{x} and {y} do not overlap");
        assert!(!overlaps(y, x), "{y} and {x} do not overlap");
    }
}

#[test]
fn parses_sections_access_words_and_spaces() {
    let a = acl("# comment\n\
         topic public/#\n\
         topic read news\n\
         \n\
         user alice\n\
         topic write a/b\n\
         topic readwrite with space/x\n\
         pattern deny p/%c\n\
         user bob smith\n\
         topic deny secret\n\
         user alice\n\
         topic read more\r\n\
         \t  topic   read   indented  \n");
    let rules = |v: &[crate::auth::acl_file::AclRule]| -> Vec<(Access, String, usize)> {
        v.iter().map(|r| (r.access, r.topic.clone(), r.line)).collect()
    };
    assert_eq!(
        rules(&a.anonymous),
        vec![
            (Access::ReadWrite, "public/#".into(), 2),
            (Access::Read, "news".into(), 3)
        ]
    );
    assert_eq!(
        rules(&a.users["alice"]),
        vec![
            (Access::Write, "a/b".into(), 6),
            (Access::ReadWrite, "with space/x".into(), 7),
            (Access::Read, "more".into(), 12),
            (Access::Read, "indented".into(), 13),
        ]
    );
    assert_eq!(
        rules(&a.users["bob smith"]),
        vec![(Access::Deny, "secret".into(), 10)]
    );
    assert_eq!(rules(&a.patterns), vec![(Access::Deny, "p/%c".into(), 8)]);
    assert_eq!(a.users.len(), 2);
    assert_eq!(a.rule_count(), 8);
}

#[test]
fn bad_lines_name_the_line() {
    let (line, msg) = parse_error("topic a\ntopik b\n");
    assert_eq!(line, 2);
    assert!(msg.contains("unknown keyword `topik`"), "{msg}");

    let (line, msg) = parse_error("user\n");
    assert_eq!(line, 1);
    assert!(msg.contains("needs a user name"), "{msg}");

    let (line, msg) = parse_error("\n\ntopic read\n");
    assert_eq!(line, 3);
    assert!(msg.contains("needs a topic"), "{msg}");

    let (line, msg) = parse_error("pattern write a/#/b\n");
    assert_eq!(line, 1);
    assert!(msg.contains("`a/#/b` is not a valid topic filter"), "{msg}");

    let (line, msg) = parse_error("topic read a+/b\n");
    assert_eq!(line, 1);
    assert!(msg.contains("not a valid topic filter"), "{msg}");

    let (_, msg) = parse_error("topic $share/g/x\n");
    assert!(msg.contains("without `$share/<group>/`"), "{msg}");
}

#[test]
fn anonymous_rules_are_for_clients_without_a_user_name() {
    let a = acl("topic read public/#\nuser alice\ntopic read alice/#\n");
    assert_eq!(a.check("c", None, Subscribe, "public/x"), Decision::Allow);
    assert_eq!(
        a.check("c", Some("alice"), Subscribe, "public/x"),
        Decision::NoMatch
    );
    assert_eq!(a.check("c", Some("alice"), Subscribe, "alice/#"), Decision::Allow);
    assert_eq!(a.check("c", None, Subscribe, "alice/x"), Decision::NoMatch);
    assert_eq!(
        a.check("c", Some("bob"), Subscribe, "public/x"),
        Decision::NoMatch
    );
}

#[test]
fn read_is_for_subscribe_and_write_for_publish() {
    let a = acl("user u\ntopic read r/#\ntopic write w/#\ntopic rw/#\n");
    let u = Some("u");
    assert_eq!(a.check("c", u, Subscribe, "r/x"), Decision::Allow);
    assert_eq!(a.check("c", u, Publish, "r/x"), Decision::NoMatch);
    assert_eq!(a.check("c", u, Publish, "w/x"), Decision::Allow);
    assert_eq!(a.check("c", u, Subscribe, "w/x"), Decision::NoMatch);
    assert_eq!(a.check("c", u, Publish, "rw/x/y"), Decision::Allow);
    assert_eq!(a.check("c", u, Subscribe, "rw/+/y"), Decision::Allow);
}

#[test]
fn subscriptions_must_be_covered() {
    let a = acl("user u\ntopic read sensors/+/temp\ntopic read all/#\n");
    let u = Some("u");
    assert_eq!(
        a.check("c", u, Subscribe, "sensors/kitchen/temp"),
        Decision::Allow
    );
    assert_eq!(a.check("c", u, Subscribe, "sensors/+/temp"), Decision::Allow);
    assert_eq!(a.check("c", u, Subscribe, "sensors/#"), Decision::NoMatch);
    assert_eq!(a.check("c", u, Subscribe, "sensors/+/+"), Decision::NoMatch);
    assert_eq!(a.check("c", u, Subscribe, "all/#"), Decision::Allow);
    assert_eq!(a.check("c", u, Subscribe, "#"), Decision::NoMatch);
    // A shared subscription is checked by its filter.
    assert_eq!(a.check("c", u, Subscribe, "$share/g/all/x"), Decision::Allow);
    assert_eq!(a.check("c", u, Subscribe, "$share/g/other"), Decision::NoMatch);
}

#[test]
fn deny_wins_whatever_the_order() {
    for text in [
        "user u\ntopic deny s/secret\ntopic readwrite s/#\n",
        "user u\ntopic readwrite s/#\ntopic deny s/secret\n",
        "user u\ntopic readwrite s/#\npattern deny s/secret\n",
    ] {
        let a = acl(text);
        let u = Some("u");
        assert_eq!(a.check("c", u, Publish, "s/secret"), Decision::Deny, "{text}");
        assert_eq!(a.check("c", u, Publish, "s/open"), Decision::Allow, "{text}");
        // A subscription that could receive the denied topic is refused.
        assert_eq!(a.check("c", u, Subscribe, "s/#"), Decision::Deny, "{text}");
        assert_eq!(a.check("c", u, Subscribe, "s/+"), Decision::Deny, "{text}");
        assert_eq!(a.check("c", u, Subscribe, "s/open"), Decision::Allow, "{text}");
    }
}

#[test]
fn wildcard_rules_do_not_reach_dollar_topics() {
    let a = acl("topic readwrite #\n");
    assert_eq!(a.check("c", None, Publish, "a/b"), Decision::Allow);
    assert_eq!(a.check("c", None, Publish, "$SYS/x"), Decision::NoMatch);
    assert_eq!(a.check("c", None, Subscribe, "$SYS/#"), Decision::NoMatch);
    let a = acl("topic read $SYS/#\n");
    assert_eq!(a.check("c", None, Subscribe, "$SYS/broker/+"), Decision::Allow);
}

#[test]
fn patterns_substitute_client_id_and_user_name() {
    let a = acl("pattern readwrite devices/%c/#\npattern read users/%u/inbox\npattern write log/%u/%c\n");
    assert_eq!(
        a.check("dev1", None, Publish, "devices/dev1/temp"),
        Decision::Allow
    );
    assert_eq!(
        a.check("dev1", None, Publish, "devices/dev2/temp"),
        Decision::NoMatch
    );
    assert_eq!(
        a.check("dev1", Some("al"), Subscribe, "users/al/inbox"),
        Decision::Allow
    );
    assert_eq!(
        a.check("dev1", Some("al"), Subscribe, "users/bo/inbox"),
        Decision::NoMatch
    );
    assert_eq!(
        a.check("dev1", Some("al"), Publish, "log/al/dev1"),
        Decision::Allow
    );
    // %u needs a user name.
    assert_eq!(a.check("dev1", None, Publish, "log//dev1"), Decision::NoMatch);
    assert_eq!(
        a.check("dev1", None, Subscribe, "users/%u/inbox"),
        Decision::NoMatch
    );
}

#[test]
fn patterns_skip_ids_that_would_widen_them() {
    let a = acl("pattern readwrite devices/%c/#\npattern read users/%u\npattern read open/x\n");
    for id in ["+", "#", "a/b", "x+"] {
        assert_eq!(
            a.check(id, None, Subscribe, "devices/+/#"),
            Decision::NoMatch,
            "{id}"
        );
        assert_eq!(
            a.check(id, None, Subscribe, "devices/#"),
            Decision::NoMatch,
            "{id}"
        );
        assert_eq!(
            a.check(id, None, Publish, "devices/a/b/x"),
            Decision::NoMatch,
            "{id}"
        );
        assert_eq!(
            a.check("ok", Some(id), Subscribe, "users/+"),
            Decision::NoMatch,
            "{id}"
        );
        // Patterns without substitutions still apply.
        assert_eq!(
            a.check(id, Some(id), Subscribe, "open/x"),
            Decision::Allow,
            "{id}"
        );
    }
}

#[test]
fn deny_patterns_apply_even_to_unsafe_ids_that_skip_allow_patterns() {
    // The allow pattern is skipped for an unsafe id; the deny pattern is not:
    // it refuses its topic even where another rule would allow it.
    let a = acl("pattern deny d/%c\npattern read d/%c\n");
    assert_eq!(a.check("x/y", None, Subscribe, "d/x/y"), Decision::Deny);
    assert_eq!(a.check("ok", None, Subscribe, "d/ok"), Decision::Deny);
    let a = acl("user u\ntopic readwrite d/#\npattern deny d/%c/secret\npattern deny inbox/%u\n");
    assert_eq!(a.check("x/y", Some("u"), Subscribe, "d/#"), Decision::Deny);
    assert_eq!(a.check("x/y", Some("u"), Publish, "d/x/y/secret"), Decision::Deny);
    assert_eq!(a.check("+", Some("u"), Publish, "d/any/secret"), Decision::Deny);
    assert_eq!(a.check("x/y", Some("u"), Publish, "d/x/y/open"), Decision::Allow);
    assert_eq!(a.check("ok", Some("u"), Publish, "d/x/y/secret"), Decision::Allow);
}

#[test]
fn substituted_values_are_not_substituted_again() {
    let a = acl("pattern readwrite inbox/%u/%c\npattern read users/%c/%u\n");
    // A user name `%c` is the text `%c`, not the client id again.
    assert_eq!(
        a.check("bob", Some("%c"), Publish, "inbox/bob/bob"),
        Decision::NoMatch
    );
    assert_eq!(
        a.check("bob", Some("%c"), Publish, "inbox/%c/bob"),
        Decision::Allow
    );
    assert_eq!(
        a.check("%u", Some("al"), Subscribe, "users/al/al"),
        Decision::NoMatch
    );
    assert_eq!(
        a.check("%u", Some("al"), Subscribe, "users/%u/al"),
        Decision::Allow
    );
}

#[test]
fn an_empty_user_name_does_not_fill_a_pattern() {
    let a = acl("pattern readwrite %u/#\n");
    assert_eq!(a.check("c", Some(""), Subscribe, "/#"), Decision::NoMatch);
    assert_eq!(a.check("c", Some(""), Publish, "/x"), Decision::NoMatch);
    assert_eq!(a.check("c", Some("al"), Publish, "al/x"), Decision::Allow);
}
