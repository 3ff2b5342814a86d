//! `auth.pgsql.password_hash`: how the stored password is compared with the
//! one a client sends, in EMQX 4's syntax.
//!
//! | value | stored (first column of `auth_query`) |
//! |---|---|
//! | `plain` | the password itself |
//! | `md5`, `sha` (SHA-1), `sha224`, `sha256`, `sha384`, `sha512` | hex digest of the password |
//! | `salt,sha256` / `sha256,salt` (any digest, or `plain`) | hex digest of salt + password / password + salt (salt: second column) |
//! | `pbkdf2,<mac>,<iterations>,<dklen>` (mac: `md5`, `sha`, `sha224`, `sha256`, `sha384`, `sha512`) | hex of PBKDF2-HMAC(password, salt) with `dklen` bytes |
//! | `bcrypt` (or EMQX's `salt,bcrypt`) | the bcrypt string (`$2b$12$...`), which carries its own salt |
//!
//! Hex digits may be upper or lower case. Comparisons of digests take the same
//! time whatever bytes differ. bcrypt and PBKDF2 are slow on purpose:
//! [`HashScheme::is_expensive`] tells the caller to run them off the async
//! workers.

use std::fmt;

use md5::Md5;
use sha1::Sha1;
use sha2::{Sha224, Sha256, Sha384, Sha512};

/// Largest PBKDF2 output accepted (bytes): far above any real use, it only
/// stops a typo from allocating without bound.
const MAX_DKLEN: usize = 1024;

/// A message digest, as EMQX names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    /// `md5`.
    Md5,
    /// `sha` (SHA-1; `sha1` is accepted too).
    Sha1,
    /// `sha224`.
    Sha224,
    /// `sha256`.
    Sha256,
    /// `sha384`.
    Sha384,
    /// `sha512`.
    Sha512,
}

impl DigestAlg {
    fn from_name(s: &str) -> Option<DigestAlg> {
        Some(match s {
            "md5" => DigestAlg::Md5,
            "sha" | "sha1" => DigestAlg::Sha1,
            "sha224" => DigestAlg::Sha224,
            "sha256" => DigestAlg::Sha256,
            "sha384" => DigestAlg::Sha384,
            "sha512" => DigestAlg::Sha512,
            _ => return None,
        })
    }

    /// The digest of the concatenated parts.
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: sha2::Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            DigestAlg::Md5 => run::<Md5>(parts),
            DigestAlg::Sha1 => run::<Sha1>(parts),
            DigestAlg::Sha224 => run::<Sha224>(parts),
            DigestAlg::Sha256 => run::<Sha256>(parts),
            DigestAlg::Sha384 => run::<Sha384>(parts),
            DigestAlg::Sha512 => run::<Sha512>(parts),
        }
    }

    fn pbkdf2(self, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
        match self {
            DigestAlg::Md5 => pbkdf2::pbkdf2_hmac::<Md5>(password, salt, rounds, out),
            DigestAlg::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, rounds, out),
            DigestAlg::Sha224 => pbkdf2::pbkdf2_hmac::<Sha224>(password, salt, rounds, out),
            DigestAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, rounds, out),
            DigestAlg::Sha384 => pbkdf2::pbkdf2_hmac::<Sha384>(password, salt, rounds, out),
            DigestAlg::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, rounds, out),
        }
    }
}

/// Where the salt goes relative to the password before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaltPosition {
    /// Unsalted.
    None,
    /// `salt,<alg>`: salt + password.
    Prefix,
    /// `<alg>,salt`: password + salt.
    Suffix,
}

/// A parsed `auth.pgsql.password_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashScheme {
    /// The stored value is the password (optionally salted, as EMQX allows).
    Plain(SaltPosition),
    /// Hex digest of the (salted) password.
    Digest(DigestAlg, SaltPosition),
    /// `pbkdf2,<mac>,<iterations>,<dklen>`: hex of the derived key.
    Pbkdf2 {
        /// The HMAC's digest.
        mac: DigestAlg,
        /// Iterations (> 0).
        iterations: u32,
        /// Derived key length in bytes (> 0).
        dklen: usize,
    },
    /// A bcrypt string.
    Bcrypt,
}

/// Why a stored hash could not be checked (the row is wrong, not the password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored password hash is not usable: {0}")]
pub struct BadStoredHash(pub String);

const SYNTAX: &str = "expected `plain`, `md5`, `sha`, `sha256`, `sha512` (also `sha224`, `sha384`), \
     a salted form such as `salt,sha256` or `sha256,salt`, `pbkdf2,<mac>,<iterations>,<dklen>` \
     (such as `pbkdf2,sha256,1000,20`) or `bcrypt`";

impl HashScheme {
    /// Parses EMQX's syntax (ASCII case and spaces around commas ignored).
    pub fn parse(value: &str) -> Result<HashScheme, String> {
        let lower = value.to_ascii_lowercase();
        let parts: Vec<&str> = lower.split(',').map(str::trim).collect();
        let bad = || format!("{SYNTAX}, got `{value}`");
        let single = |name: &str, salt: SaltPosition| -> Result<HashScheme, String> {
            match name {
                "plain" => Ok(HashScheme::Plain(salt)),
                "bcrypt" => Ok(HashScheme::Bcrypt),
                _ => DigestAlg::from_name(name)
                    .map(|d| HashScheme::Digest(d, salt))
                    .ok_or_else(bad),
            }
        };
        match parts.as_slice() {
            [name] => single(name, SaltPosition::None),
            // bcrypt's salt is inside the stored string: EMQX's `salt,bcrypt` is bcrypt.
            ["salt", "bcrypt"] => Ok(HashScheme::Bcrypt),
            ["salt", name] if *name != "bcrypt" && *name != "salt" => single(name, SaltPosition::Prefix),
            [name, "salt"] if *name != "bcrypt" && *name != "salt" => single(name, SaltPosition::Suffix),
            ["pbkdf2", mac, iterations, dklen] => {
                let mac = DigestAlg::from_name(mac).ok_or_else(|| {
                    format!(
                        "pbkdf2: unsupported mac `{mac}`; expected md5, sha, sha224, sha256, sha384 or sha512"
                    )
                })?;
                let iterations = match iterations.parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Err(format!(
                            "pbkdf2: iterations must be a number above 0, got `{iterations}`"
                        ))
                    }
                };
                let dklen = match dklen.parse::<usize>() {
                    Ok(n) if n > 0 && n <= MAX_DKLEN => n,
                    _ => {
                        return Err(format!(
                            "pbkdf2: dklen (bytes) must be a number from 1 to {MAX_DKLEN}, got `{dklen}`"
                        ))
                    }
                };
                Ok(HashScheme::Pbkdf2 {
                    mac,
                    iterations,
                    dklen,
                })
            }
            _ => Err(bad()),
        }
    }

    /// True when the scheme reads the salt (the second column of `auth_query`).
    pub fn needs_salt(&self) -> bool {
        match self {
            HashScheme::Plain(s) | HashScheme::Digest(_, s) => *s != SaltPosition::None,
            HashScheme::Pbkdf2 { .. } => true,
            HashScheme::Bcrypt => false,
        }
    }

    /// True for the deliberately slow schemes (bcrypt, PBKDF2): run
    /// [`HashScheme::verify`] on a blocking thread.
    pub fn is_expensive(&self) -> bool {
        matches!(self, HashScheme::Pbkdf2 { .. } | HashScheme::Bcrypt)
    }

    /// Whether `password` matches the `stored` hash (with `salt`, empty when
    /// the row has none). `Err` when the stored value cannot be a hash of
    /// this scheme (wrong length, not hex, not a bcrypt string).
    pub fn verify(&self, password: &[u8], stored: &str, salt: &str) -> Result<bool, BadStoredHash> {
        let salt = salt.as_bytes();
        match *self {
            HashScheme::Plain(pos) => {
                let candidate = salted(pos, password, salt).concat();
                Ok(ct_eq(&candidate, stored.as_bytes()))
            }
            HashScheme::Digest(alg, pos) => {
                let computed = alg.digest(&salted(pos, password, salt));
                let expected = decode_hex(stored.trim(), computed.len())?;
                Ok(ct_eq(&computed, &expected))
            }
            HashScheme::Pbkdf2 {
                mac,
                iterations,
                dklen,
            } => {
                let expected = decode_hex(stored.trim(), dklen)?;
                let mut computed = vec![0u8; dklen];
                mac.pbkdf2(password, salt, iterations, &mut computed);
                Ok(ct_eq(&computed, &expected))
            }
            HashScheme::Bcrypt => {
                bcrypt::verify(password, stored.trim()).map_err(|e| BadStoredHash(format!("bcrypt: {e}")))
            }
        }
    }
}

impl fmt::Display for HashScheme {
    /// The scheme in EMQX's syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alg = |d: DigestAlg| match d {
            DigestAlg::Md5 => "md5",
            DigestAlg::Sha1 => "sha",
            DigestAlg::Sha224 => "sha224",
            DigestAlg::Sha256 => "sha256",
            DigestAlg::Sha384 => "sha384",
            DigestAlg::Sha512 => "sha512",
        };
        let with_salt = |f: &mut fmt::Formatter<'_>, name: &str, pos: SaltPosition| match pos {
            SaltPosition::None => f.write_str(name),
            SaltPosition::Prefix => write!(f, "salt,{name}"),
            SaltPosition::Suffix => write!(f, "{name},salt"),
        };
        match *self {
            HashScheme::Plain(pos) => with_salt(f, "plain", pos),
            HashScheme::Digest(d, pos) => with_salt(f, alg(d), pos),
            HashScheme::Pbkdf2 {
                mac,
                iterations,
                dklen,
            } => write!(f, "pbkdf2,{},{iterations},{dklen}", alg(mac)),
            HashScheme::Bcrypt => f.write_str("bcrypt"),
        }
    }
}

fn salted<'a>(pos: SaltPosition, password: &'a [u8], salt: &'a [u8]) -> Vec<&'a [u8]> {
    match pos {
        SaltPosition::None => vec![password],
        SaltPosition::Prefix => vec![salt, password],
        SaltPosition::Suffix => vec![password, salt],
    }
}

/// Decodes `len` bytes of hex (either case).
pub(crate) fn decode_hex(s: &str, len: usize) -> Result<Vec<u8>, BadStoredHash> {
    if s.len() != len * 2 {
        return Err(BadStoredHash(format!(
            "expected {} hex digits, got {} characters",
            len * 2,
            s.len()
        )));
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(BadStoredHash("not hexadecimal".to_string())),
        })
        .collect()
}

/// Equality whose time depends only on the lengths, so a client cannot learn
/// how many leading bytes of its guess were right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
