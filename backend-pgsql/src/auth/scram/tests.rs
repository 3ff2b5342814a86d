#![allow(clippy::unwrap_used)]

use super::*;

fn scheme(s: &str) -> HashScheme {
    HashScheme::parse(s).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What EMQX stores for `pbkdf2,sha256,<i>,<dklen>`: hex of the PBKDF2 key
/// of the password under the salt column's bytes.
fn stored_sha256(password: &str, salt: &str, iterations: u32, dklen: usize) -> String {
    let mut out = vec![0u8; dklen];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), salt.as_bytes(), iterations, &mut out);
    hex(&out)
}

#[test]
fn methods_follow_password_hash() {
    let offered = |s: &str| offered(scheme(s));
    assert_eq!(offered("pbkdf2,sha256,1000,32"), [ScramAlg::Sha256]);
    assert_eq!(offered("pbkdf2,sha256,1000,64"), [ScramAlg::Sha256]);
    assert_eq!(offered("pbkdf2,sha512,1000,64"), [ScramAlg::Sha512]);
    assert_eq!(offered("plain"), [ScramAlg::Sha256, ScramAlg::Sha512]);
    assert_eq!(offered("salt,plain"), [ScramAlg::Sha256, ScramAlg::Sha512]);
    for none in [
        "pbkdf2,sha256,1000,20",
        "pbkdf2,sha512,1000,32",
        "pbkdf2,sha,1000,20",
        "md5",
        "sha",
        "sha256",
        "salt,sha256",
        "sha512,salt",
        "bcrypt",
    ] {
        assert!(offered(none).is_empty(), "{none}");
    }
}

#[test]
fn pbkdf2_rows_give_the_keys_of_the_password() {
    let stored = stored_sha256("pencil", "NaCl-salt", 1000, 32);
    // The row auth_pgsql's password check accepts ...
    let s = scheme("pbkdf2,sha256,1000,32");
    assert_eq!(s.verify(b"pencil", &stored, "NaCl-salt"), Ok(true));
    // ... gives the SCRAM keys of that password under the salt's bytes.
    let want = ScramKeys::from_password(ScramAlg::Sha256, b"pencil", b"NaCl-salt", 1000);
    assert_eq!(
        keys_from_row(s, ScramAlg::Sha256, &stored.to_uppercase(), "NaCl-salt"),
        Ok(want.clone())
    );
    // A longer key starts with the same block.
    let long = stored_sha256("pencil", "NaCl-salt", 1000, 40);
    let s40 = scheme("pbkdf2,sha256,1000,40");
    assert_eq!(keys_from_row(s40, ScramAlg::Sha256, &long, "NaCl-salt"), Ok(want));
    // Wrong length, not hex, wrong method: refused with a reason.
    assert!(keys_from_row(s, ScramAlg::Sha256, &long, "NaCl-salt").is_err());
    assert!(keys_from_row(s, ScramAlg::Sha256, &"zz".repeat(32), "NaCl-salt").is_err());
    assert!(keys_from_row(s, ScramAlg::Sha512, &stored, "NaCl-salt").is_err());
}

#[test]
fn plain_rows_get_a_fresh_salt() {
    let a = keys_from_row(scheme("plain"), ScramAlg::Sha512, "sesame", "").unwrap();
    let b = keys_from_row(scheme("plain"), ScramAlg::Sha512, "sesame", "").unwrap();
    assert_ne!(a.salt, b.salt);
    assert_eq!(a.iterations, PLAIN_ITERATIONS);
    assert_eq!(
        a,
        ScramKeys::from_password(ScramAlg::Sha512, b"sesame", &a.salt, PLAIN_ITERATIONS)
    );
    // `salt,plain` stores salt + password.
    let c = keys_from_row(scheme("salt,plain"), ScramAlg::Sha256, "NaClsesame", "NaCl").unwrap();
    assert_eq!(
        c,
        ScramKeys::from_password(ScramAlg::Sha256, b"sesame", &c.salt, PLAIN_ITERATIONS)
    );
    assert!(keys_from_row(scheme("plain,salt"), ScramAlg::Sha256, "NaClsesame", "NaCl").is_err());
}

#[test]
fn digests_serve_nothing() {
    let md5 = scheme("md5");
    let err = keys_from_row(md5, ScramAlg::Sha256, "0".repeat(32).as_str(), "").unwrap_err();
    assert!(err.contains("cannot serve SCRAM-SHA-256"), "{err}");
}
