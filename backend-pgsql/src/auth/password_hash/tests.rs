//! Known vectors: digests from FIPS/RFC values (and Python's hashlib for the
//! salted forms), PBKDF2 from RFC 6070, bcrypt from OpenBSD/crypt_blowfish.

use super::*;

fn scheme(s: &str) -> HashScheme {
    HashScheme::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn check(s: &str, password: &str, stored: &str, salt: &str) -> bool {
    scheme(s)
        .verify(password.as_bytes(), stored, salt)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn parses_emqx_syntax() {
    assert_eq!(scheme("plain"), HashScheme::Plain(SaltPosition::None));
    assert_eq!(
        scheme("sha"),
        HashScheme::Digest(DigestAlg::Sha1, SaltPosition::None)
    );
    assert_eq!(
        scheme("salt,sha256"),
        HashScheme::Digest(DigestAlg::Sha256, SaltPosition::Prefix)
    );
    assert_eq!(
        scheme("sha256, salt"),
        HashScheme::Digest(DigestAlg::Sha256, SaltPosition::Suffix)
    );
    assert_eq!(scheme("salt,bcrypt"), HashScheme::Bcrypt);
    assert_eq!(
        scheme("pbkdf2,sha256,1000,20"),
        HashScheme::Pbkdf2 {
            mac: DigestAlg::Sha256,
            iterations: 1000,
            dklen: 20
        }
    );
    for s in [
        "plain",
        "md5",
        "sha",
        "sha512",
        "salt,sha256",
        "sha256,salt",
        "pbkdf2,sha,4096,20",
        "bcrypt",
    ] {
        assert_eq!(scheme(s).to_string(), s);
    }
    for bad in [
        "",
        "sha3",
        "salt",
        "salt,salt",
        "bcrypt,salt",
        "pbkdf2,md4,1000,20",
        "pbkdf2,sha256,0,20",
        "pbkdf2,sha256,10,0",
        "pbkdf2,sha256,10",
    ] {
        assert!(HashScheme::parse(bad).is_err(), "{bad:?} should be refused");
    }
    assert!(scheme("salt,md5").needs_salt());
    assert!(scheme("pbkdf2,sha,1,20").needs_salt());
    assert!(!scheme("sha256").needs_salt());
    assert!(!scheme("bcrypt").needs_salt());
}

#[test]
fn plain_digests() {
    assert!(check("plain", "password", "password", ""));
    assert!(!check("plain", "password", "Password", ""));
    assert!(check("md5", "password", "5f4dcc3b5aa765d61d8327deb882cf99", ""));
    assert!(check(
        "sha",
        "password",
        "5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8",
        ""
    ));
    assert!(check(
        "sha224",
        "password",
        "d63dc919e201d7bc4c825630d2cf25fdc93d4b2f0d46706d29038d01",
        ""
    ));
    assert!(check(
        "sha256",
        "password",
        "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
        ""
    ));
    // Upper-case hex is the same hash.
    assert!(check(
        "sha256",
        "password",
        "5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8",
        ""
    ));
    assert!(check(
        "sha512",
        "password",
        "b109f3bbbc244eb82441917ed06d618b9008dd09b3befd1b5e07394c706a8bb980b1d7785e5976ec049b46df5f1326af5a2ea6d103fd07c95385ffab0cacbc86",
        ""
    ));
    assert!(!check("md5", "passwore", "5f4dcc3b5aa765d61d8327deb882cf99", ""));
}

#[test]
fn salt_position() {
    let prefix = "13601bda4ea78e55a07b98866d2be6be0744e3866f13c00c811cab608a28f322"; // sha256("saltpassword")
    let suffix = "7a37b85c8918eac19a9089c0fa5a2ab4dce3f90528dcdeec108b23ddf3607b99"; // sha256("passwordsalt")
    assert!(check("salt,sha256", "password", prefix, "salt"));
    assert!(!check("salt,sha256", "password", suffix, "salt"));
    assert!(check("sha256,salt", "password", suffix, "salt"));
    assert!(!check("sha256,salt", "password", prefix, "salt"));
    assert!(!check("salt,sha256", "password", prefix, "pepper"));
    assert!(check("salt,plain", "password", "saltpassword", "salt"));
}

#[test]
fn pbkdf2_rfc6070_and_others() {
    assert!(check(
        "pbkdf2,sha,1,20",
        "password",
        "0c60c80f961f0e71f3a9b524af6012062fe037a6",
        "salt"
    ));
    assert!(check(
        "pbkdf2,sha,4096,20",
        "password",
        "4b007901b765489abead49d926f721d065a429c1",
        "salt"
    ));
    assert!(!check(
        "pbkdf2,sha,4096,20",
        "passwort",
        "4b007901b765489abead49d926f721d065a429c1",
        "salt"
    ));
    assert!(check(
        "pbkdf2,sha256,1000,20",
        "password",
        "632c2812e46d4604102ba7618e9d6d7d2f8128f6",
        "salt"
    ));
    assert!(check(
        "pbkdf2,sha512,2,32",
        "secret",
        "05617bba74b47f9491846a31d360fa2a63f33573c9fb11bf7e754dd53892a3e1",
        "NaCl"
    ));
}

#[test]
fn bcrypt_vectors() {
    // crypt_blowfish's test vectors.
    assert!(check(
        "bcrypt",
        "U*U",
        "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        ""
    ));
    assert!(check(
        "bcrypt",
        "U*U*",
        "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK",
        ""
    ));
    assert!(!check(
        "bcrypt",
        "U*U",
        "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK",
        ""
    ));
    // EMQX's `salt,bcrypt` ignores the salt column: the hash carries it.
    assert!(check(
        "salt,bcrypt",
        "U*U",
        "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        "$2a$05$CCCCCCCCCCCCCCCCCCCCC."
    ));
}

#[test]
fn malformed_stored_values_are_errors_not_matches() {
    let s = scheme("sha256");
    assert!(s.verify(b"password", "5e88", "").is_err());
    assert!(s.verify(b"password", &"zz".repeat(32), "").is_err());
    assert!(scheme("bcrypt")
        .verify(b"password", "not a bcrypt hash", "")
        .is_err());
    assert!(scheme("pbkdf2,sha,1,20").verify(b"password", "", "salt").is_err());
}

#[test]
fn constant_time_eq() {
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abc", b"abd"));
    assert!(!ct_eq(b"abc", b"ab"));
    assert!(ct_eq(b"", b""));
}
