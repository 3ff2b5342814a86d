//! Hash formats and password file parsing.

use std::path::Path;

use crate::auth::password_file::{constant_time_eq, HashFormatError, PasswordFile, PasswordHash};
use crate::auth::AuthFileError;

/// Written by Mosquitto 2.0.11's `mosquitto_passwd -b` (password `secret`).
const MOSQ_PBKDF2: &str = "$7$101$k3j3KbNrhWR6L5pp$YcsRjdbOC1lWI2VaQVSAx6w0MFZ23Nlz9ZbL7V3fNsS4lIQrext0kfL+gcWpFviRX8i16ZjNyvbMxit4WbyCzg==";
/// Written by `mosquitto_passwd -H sha512 -b` (password `hunter2`).
const MOSQ_SHA512: &str = "$6$XY6Z3UHbrTNymfyX$dKInXaf/rHJkiRVqU9ImKldOzhJCWTCtqq2BdyYYTZmGo/7w4wMjjWHdFMCssOQ5v1t2/SlhSKMa6ArLBeSNeQ==";

#[test]
fn mosquitto_hashes_verify() {
    let h = PasswordHash::parse(MOSQ_PBKDF2).unwrap();
    assert!(matches!(h, PasswordHash::Pbkdf2Sha512 { iterations: 101, .. }));
    assert!(h.verify(b"secret"));
    assert!(!h.verify(b"Secret"));
    assert!(!h.verify(b""));
    let h = PasswordHash::parse(MOSQ_SHA512).unwrap();
    assert!(matches!(h, PasswordHash::Sha512 { .. }));
    assert!(h.verify(b"hunter2"));
    assert!(!h.verify(b"hunter3"));
}

#[test]
fn new_hashes_have_mosquittos_shape_and_round_trip() {
    let h = PasswordHash::new_pbkdf2(b"pw", 1000).unwrap();
    let text = h.to_string();
    let fields: Vec<&str> = text.split('$').collect();
    assert_eq!(fields[..3], ["", "7", "1000"], "{text}");
    assert_eq!(fields[3].len(), 16, "12-byte salt in base64: {text}");
    assert_eq!(fields[4].len(), 88, "64-byte hash in base64: {text}");
    let back = PasswordHash::parse(&text).unwrap();
    assert_eq!(back, h);
    assert!(back.verify(b"pw"));
    assert!(!back.verify(b"pw2"));

    let h = PasswordHash::new_sha512(b"pw").unwrap();
    let text = h.to_string();
    assert!(text.starts_with("$6$"), "{text}");
    assert!(PasswordHash::parse(&text).unwrap().verify(b"pw"));
}

#[test]
fn salts_are_random() {
    let a = PasswordHash::new_pbkdf2(b"pw", 1).unwrap().to_string();
    let b = PasswordHash::new_pbkdf2(b"pw", 1).unwrap().to_string();
    assert_ne!(a, b);
}

#[test]
fn only_many_iterations_are_costly() {
    assert!(!PasswordHash::parse(MOSQ_PBKDF2).unwrap().is_costly());
    assert!(!PasswordHash::parse(MOSQ_SHA512).unwrap().is_costly());
    assert!(PasswordHash::new_pbkdf2(b"pw", 10_000).unwrap().is_costly());
}

#[test]
fn debug_output_hides_the_hash() {
    let h = PasswordHash::parse(MOSQ_PBKDF2).unwrap();
    let shown = format!("{h:?}");
    assert!(!shown.contains("YcsRjd"), "{shown}");
    assert!(shown.contains("101"), "{shown}");
}

#[test]
fn malformed_hashes_are_refused() {
    let hash88 = MOSQ_PBKDF2.rsplit('$').next().unwrap();
    let cases: Vec<(String, HashFormatError)> = vec![
        ("plaintext".into(), HashFormatError::UnknownFormat),
        ("$5$abc$def".into(), HashFormatError::UnknownFormat),
        (
            "$7$101$c2FsdA==".into(),
            HashFormatError::Fields {
                scheme: 7,
                expected: "`$7$<iterations>$<salt>$<hash>`",
            },
        ),
        (
            "$6$c2FsdA==".into(),
            HashFormatError::Fields {
                scheme: 6,
                expected: "`$6$<salt>$<hash>`",
            },
        ),
        (
            format!("$7$0$c2FsdA==${hash88}"),
            HashFormatError::Iterations("0".into()),
        ),
        (
            format!("$7$-5$c2FsdA==${hash88}"),
            HashFormatError::Iterations("-5".into()),
        ),
        (
            format!("$7$x$c2FsdA==${hash88}"),
            HashFormatError::Iterations("x".into()),
        ),
        (format!("$7$101$!!${hash88}"), HashFormatError::Base64("salt")),
        ("$7$101$c2FsdA==$*".into(), HashFormatError::Base64("hash")),
        (
            "$6$c2FsdA==$c2hvcnQ=".into(),
            HashFormatError::Length {
                what: "hash",
                got: 5,
                expected: "64",
            },
        ),
        (
            format!("$6$${hash88}"),
            HashFormatError::Length {
                what: "salt",
                got: 0,
                expected: "at least 1",
            },
        ),
    ];
    for (input, want) in cases {
        assert_eq!(PasswordHash::parse(&input), Err(want), "{input}");
    }
    // Unpadded base64 is read too.
    let unpadded = MOSQ_PBKDF2.trim_end_matches('=');
    assert!(PasswordHash::parse(unpadded).unwrap().verify(b"secret"));
}

#[test]
fn constant_time_eq_compares() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(constant_time_eq(b"", b""));
}

#[test]
fn file_with_comments_blank_lines_and_crlf() {
    let text = format!("# users\n\nalice:{MOSQ_PBKDF2}\r\n  \nbob:{MOSQ_SHA512}  \n");
    let f = PasswordFile::parse(Path::new("passwd"), &text).unwrap();
    assert_eq!(f.len(), 2);
    assert!(f.get("alice").unwrap().verify(b"secret"));
    assert!(f.get("bob").unwrap().verify(b"hunter2"));
    assert!(f.get("carol").is_none());
    assert!(PasswordFile::parse(Path::new("passwd"), "").unwrap().is_empty());
}

fn parse_error(text: &str) -> (usize, String) {
    match PasswordFile::parse(Path::new("/etc/pw"), text) {
        Err(AuthFileError::Parse { file, line, message }) => {
            assert_eq!(file, Path::new("/etc/pw"));
            (line, message)
        }
        other => panic!("expected a parse error for {text:?}, got {other:?}"),
    }
}

#[test]
fn bad_lines_name_the_line() {
    let (line, msg) = parse_error(&format!("alice:{MOSQ_PBKDF2}\ncarol:plain\n"));
    assert_eq!(line, 2);
    assert!(
        msg.contains("user `carol`") && msg.contains("mosquitto_passwd -U"),
        "{msg}"
    );

    let (line, msg) = parse_error("# c\nno colon here\n");
    assert_eq!(line, 2);
    assert!(msg.contains("username:password-hash"), "{msg}");

    let (line, msg) = parse_error(&format!(":{MOSQ_PBKDF2}\n"));
    assert_eq!(line, 1);
    assert!(msg.contains("empty user name"), "{msg}");

    let (line, msg) = parse_error(&format!("a:{MOSQ_PBKDF2}\n\na:{MOSQ_SHA512}\n"));
    assert_eq!(line, 3);
    assert!(msg.contains("already defined on line 1"), "{msg}");

    let e = PasswordFile::parse(Path::new("/etc/pw"), "x:$7$1$$\n").unwrap_err();
    assert!(e.to_string().starts_with("/etc/pw:1: user `x`: "), "{e}");
}

#[test]
fn a_missing_file_is_a_read_error() {
    let e = PasswordFile::load(Path::new("/nonexistent/passwd")).unwrap_err();
    assert!(matches!(e, AuthFileError::Read { .. }));
    assert!(
        e.to_string().starts_with("/nonexistent/passwd: cannot read:"),
        "{e}"
    );
}

#[test]
fn scram_sha256_entries_round_trip_and_verify() {
    let h = PasswordHash::new_scram_sha256(b"pencil", 4096).unwrap();
    let text = h.to_string();
    assert!(text.starts_with("$SCRAM-SHA-256$4096$"), "{text}");
    assert_eq!(text.split('$').count(), 6, "{text}");
    let back = PasswordHash::parse(&text).unwrap();
    assert_eq!(back, h);
    assert!(back.verify(b"pencil"));
    assert!(!back.verify(b"pencil2"));
    assert!(back.is_costly());
    assert!(!format!("{back:?}").contains(&text[20..]));
    for bad in [
        "$SCRAM-SHA-256$4096$c2FsdA==$AAAA",
        "$SCRAM-SHA-256$4096$c2FsdA==$AAAA$AAAA",
        "$SCRAM-SHA-256$x$c2FsdA==$AAAA$AAAA",
    ] {
        assert!(PasswordHash::parse(bad).is_err(), "{bad}");
    }
}
