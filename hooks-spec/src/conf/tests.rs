//! Tests of `conf`.

use super::*;

fn p(text: &str) -> Result<ConfFile, ConfError> {
    ConfFile::parse(Path::new("etc/test.conf"), text)
}

fn ok(text: &str) -> ConfFile {
    match p(text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(text: &str) -> ConfError {
    match p(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

fn entry(value: &str) -> (ConfFile, ConfEntry) {
    let c = ConfFile {
        path: PathBuf::from("x.conf"),
        entries: vec![],
    };
    (
        c,
        ConfEntry {
            key: "k.v".into(),
            value: value.into(),
            line: 7,
        },
    )
}

#[test]
fn parses_entries_comments_and_blank_lines() {
    let c =
        ok("# comment\n## doc comment\n\n   \n  a.b = 1\nc_d-e=  two words  \n\t# indented comment\nf =\n");
    assert_eq!(c.path, PathBuf::from("etc/test.conf"));
    assert_eq!(
        c.entries,
        vec![
            ConfEntry {
                key: "a.b".into(),
                value: "1".into(),
                line: 5
            },
            ConfEntry {
                key: "c_d-e".into(),
                value: "two words".into(),
                line: 6
            },
            ConfEntry {
                key: "f".into(),
                value: "".into(),
                line: 8
            },
        ]
    );
    assert_eq!(c.get("c_d-e").map(|e| e.value.as_str()), Some("two words"));
    assert!(c.get("missing").is_none());
}

#[test]
fn empty_file_has_no_entries() {
    assert!(ok("").entries.is_empty());
    assert!(ok("\n\n# only comments\n").entries.is_empty());
}

#[test]
fn crlf_and_bom_are_handled() {
    let c = ok("\u{feff}a = 1\r\nb = 2\r\n");
    assert_eq!(c.entries.len(), 2);
    assert_eq!(c.entries[0].key, "a");
    assert_eq!(c.entries[1].value, "2");
    assert_eq!(c.entries[1].line, 2);
}

#[test]
fn value_may_contain_equals_and_json() {
    let c = ok("url = postgres://u:p@h/db?sslmode=disable&a=b\njson = {\"a\": \"x=y\", \"b\": [1, 2]} \n");
    assert_eq!(c.entries[0].value, "postgres://u:p@h/db?sslmode=disable&a=b");
    assert_eq!(c.entries[1].value, "{\"a\": \"x=y\", \"b\": [1, 2]}");
}

#[test]
fn hash_inside_value_is_kept() {
    let c = ok("a = x # not a comment\n");
    assert_eq!(c.entries[0].value, "x # not a comment");
}

#[test]
fn line_without_equals_is_an_error() {
    let e = err("a = 1\n\njust some words\n");
    assert_eq!(e.line, 3);
    assert_eq!(e.key, "just some words");
    assert!(e.message.contains("key = value"), "{}", e.message);
    assert_eq!(e.file, PathBuf::from("etc/test.conf"));
}

#[test]
fn empty_key_is_an_error() {
    let e = err("# c\n  = value\n");
    assert_eq!(e.line, 2);
    assert_eq!(e.key, "");
    assert!(e.message.contains("missing key"), "{}", e.message);
}

#[test]
fn invalid_key_characters_are_an_error() {
    for (text, key) in [
        ("a b = 1", "a b"),
        ("a/b = 1", "a/b"),
        ("ключ = 1", "ключ"),
        ("a:b=1", "a:b"),
    ] {
        let e = err(&format!("ok = 1\n{text}\n"));
        assert_eq!(e.line, 2, "{text}");
        assert_eq!(e.key, key);
        assert!(e.message.contains("invalid key"), "{}", e.message);
    }
}

#[test]
fn duplicate_key_names_both_lines() {
    let e = err("a = 1\nb = 2\n# x\na = 3\n");
    assert_eq!(e.line, 4);
    assert_eq!(e.key, "a");
    assert!(e.message.contains("duplicate key"), "{}", e.message);
    assert!(e.message.contains("line 1"), "{}", e.message);
    assert!(e.message.contains("line 4"), "{}", e.message);
}

#[test]
fn display_formats() {
    let e = err("a = 1\na = 2\n");
    assert_eq!(
        e.to_string(),
        "etc/test.conf:2: `a`: duplicate key: set on line 1 and again on line 2"
    );
    let f = ConfError::file_error(Path::new("etc/x.conf"), "cannot read: boom");
    assert_eq!(f.to_string(), "etc/x.conf: cannot read: boom");
    assert_eq!(f.line, 0);
}

#[test]
fn load_reads_a_file() {
    let dir = std::env::temp_dir().join(format!("hooks-spec-conf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.conf");
    std::fs::write(&path, "## x\nk = v\n").unwrap();
    let c = ConfFile::load(&path).unwrap();
    assert_eq!(c.path, path);
    assert_eq!(
        c.entries,
        vec![ConfEntry {
            key: "k".into(),
            value: "v".into(),
            line: 2
        }]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_missing_file_is_a_line_zero_error() {
    let path = Path::new("/nonexistent/dir/postbox-missing.conf");
    let e = ConfFile::load(path).unwrap_err();
    assert_eq!(e.file, path);
    assert_eq!(e.line, 0);
    assert!(e.message.starts_with("cannot read: "), "{}", e.message);
    assert!(e
        .to_string()
        .starts_with("/nonexistent/dir/postbox-missing.conf: cannot read: "));
}

#[test]
fn error_names_the_entry() {
    let c = ok("\n\nx.y = 3\n");
    let e = c.error(&c.entries[0], "bad");
    assert_eq!(
        e,
        ConfError {
            file: "etc/test.conf".into(),
            line: 3,
            key: "x.y".into(),
            message: "bad".into()
        }
    );
    assert_eq!(e.to_string(), "etc/test.conf:3: `x.y`: bad");
}

#[test]
fn into_plugin_error() {
    let e = ConfError {
        file: "a.conf".into(),
        line: 3,
        key: "k".into(),
        message: "m".into(),
    };
    match PluginError::from(e) {
        PluginError::Config {
            file,
            line,
            key,
            message,
        } => {
            assert_eq!(
                (file, line, key, message),
                ("a.conf".into(), 3, "k".to_string(), "m".to_string())
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = ConfError::file_error(Path::new("a.conf"), "cannot read: x");
    let pe = PluginError::from(e.clone());
    assert_eq!(pe.to_string(), e.to_string());
    assert!(matches!(pe, PluginError::ConfigFile { .. }));
}

#[test]
fn bools() {
    for (v, want) in [
        ("true", true),
        ("on", true),
        ("false", false),
        ("off", false),
        ("TRUE", true),
    ] {
        let (c, e) = entry(v);
        assert_eq!(c.parse_bool(&e), Ok(want), "{v}");
    }
    for v in ["yes", "1", ""] {
        let (c, e) = entry(v);
        let err = c.parse_bool(&e).unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (7, "k.v"));
        assert!(
            err.message.contains("expected `true`, `false`, `on` or `off`"),
            "{}",
            err.message
        );
    }
}

#[test]
fn integers() {
    let (c, e) = entry("18446744073709551615");
    assert_eq!(c.parse_u64(&e), Ok(u64::MAX));
    let (c, e) = entry("0");
    assert_eq!(c.parse_u64(&e), Ok(0));
    assert_eq!(c.parse_u16(&e), Ok(0));
    let (c, e) = entry("65535");
    assert_eq!(c.parse_u16(&e), Ok(65535));
    assert_eq!(c.parse_u32(&e), Ok(65535));
    assert_eq!(c.parse_usize(&e), Ok(65535));
    let (c, e) = entry("65536");
    let err = c.parse_u16(&e).unwrap_err();
    assert_eq!(
        err.message,
        "expected an integer between 0 and 65535, got `65536`"
    );
    assert_eq!(err.line, 7);
    assert_eq!(c.parse_u32(&e), Ok(65536));
    let (c, e) = entry("4294967296");
    assert!(c
        .parse_u32(&e)
        .unwrap_err()
        .message
        .contains("between 0 and 4294967295"));
    for v in ["-1", "+1", "1.5", "abc", "", "1 000", "18446744073709551616"] {
        let (c, e) = entry(v);
        let err = c.parse_u64(&e).unwrap_err();
        assert!(
            err.message.starts_with("expected an integer between 0 and"),
            "{v}: {}",
            err.message
        );
        assert_eq!(err.line, 7);
    }
    let (c, e) = entry("");
    assert!(c
        .parse_u64(&e)
        .unwrap_err()
        .message
        .ends_with("got an empty value"));
}

#[test]
fn durations() {
    for (v, secs) in [
        ("15s", 15),
        ("2h", 7200),
        ("7d", 7 * 86400),
        ("1h 30m", 5400),
        ("0s", 0),
    ] {
        let (c, e) = entry(v);
        assert_eq!(c.parse_duration(&e), Ok(Duration::from_secs(secs)), "{v}");
        assert_eq!(
            c.parse_duration_or_infinity(&e),
            Ok(Some(Duration::from_secs(secs))),
            "{v}"
        );
    }
    let (c, e) = entry("500ms");
    assert_eq!(c.parse_duration(&e), Ok(Duration::from_millis(500)));
    let (c, e) = entry("infinity");
    assert_eq!(c.parse_duration_or_infinity(&e), Ok(None));
    assert!(c.parse_duration(&e).is_err());
    for v in ["15", "abc", "", "1 lightyear"] {
        let (c, e) = entry(v);
        let err = c.parse_duration(&e).unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (7, "k.v"));
        assert!(err.message.starts_with("expected a duration"), "{}", err.message);
        assert!(err.message.contains(&shown(v)), "{}", err.message);
        let err = c.parse_duration_or_infinity(&e).unwrap_err();
        assert!(
            err.message.starts_with("expected `infinity` or a duration"),
            "{}",
            err.message
        );
    }
}

#[test]
fn sizes() {
    for (v, want) in [
        ("1024", 1024),
        ("0", 0),
        ("10B", 10),
        ("64KB", 64 * 1024),
        ("64kb", 64 * 1024),
        ("64K", 64 * 1024),
        ("1MB", 1 << 20),
        ("1mb", 1 << 20),
        ("1M", 1 << 20),
        ("2GB", 2 << 30),
        ("2gb", 2 << 30),
        ("2G", 2 << 30),
        ("16 KB", 16 << 10),
    ] {
        let (c, e) = entry(v);
        assert_eq!(c.parse_size(&e), Ok(want), "{v}");
    }
    for v in [
        "",
        "KB",
        "1.5MB",
        "-1",
        "1TB",
        "1 MB x",
        "99999999999999999999",
        "17179869184GB",
    ] {
        let (c, e) = entry(v);
        let err = c.parse_size(&e).unwrap_err();
        assert_eq!(err.line, 7);
        assert!(
            err.message.starts_with("expected a size such as"),
            "{v}: {}",
            err.message
        );
    }
}

#[test]
fn lists() {
    let (c, e) = entry(" a, b ,,c ,");
    assert_eq!(c.parse_list(&e), vec!["a", "b", "c"]);
    let (c, e) = entry("");
    assert!(c.parse_list(&e).is_empty());
    let (c, e) = entry("single");
    assert_eq!(c.parse_list(&e), vec!["single"]);
}
