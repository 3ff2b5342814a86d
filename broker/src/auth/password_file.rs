//! Mosquitto password files: one `username:hash` per line.
//!
//! Two hash formats are read, the two `mosquitto_passwd` writes:
//!
//! - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 with
//!   a 64-byte result (Mosquitto 2's default, `-H sha512-pbkdf2`);
//! - `$6$<base64 salt>$<base64 hash>`: SHA-512 of the password followed by
//!   the salt (Mosquitto 1.6 and earlier, `-H sha512`).
//!
//! And one of Postbox's own, which Mosquitto does not read:
//!
//! - `$SCRAM-SHA-256$<iterations>$<base64 salt>$<base64 StoredKey>$<base64
//!   ServerKey>`: the SCRAM-SHA-256 keys (RFC 5802/7677) of the password,
//!   for clients that log in with MQTT 5 enhanced authentication
//!   `SCRAM-SHA-256` (a plain password login checks against StoredKey too).
//!   `postbox passwd -H scram-sha256` writes it.
//!
//! Blank lines and lines starting with `#` are skipped. Anything else that is
//! not `username:<one of the formats>` (a plain-text password, a bad base64
//! field, a repeated user) is an error naming the file and the line: a
//! password file Postbox only half understands must not start the broker.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hooks_spec::scram::{ScramAlg, ScramKeys};
use sha2::{Digest, Sha512};

use super::AuthFileError;

/// PBKDF2 iterations `postbox passwd` uses unless told otherwise (`-I`).
///
/// `mosquitto_passwd` uses 101. Each iteration makes guessing from a stolen
/// file slower and each CONNECT of a known user costlier by the same factor;
/// 10000 costs a few milliseconds per CONNECT (off the async runtime, see
/// `PasswordHash::is_costly`). Mosquitto reads any count.
pub const DEFAULT_ITERATIONS: u32 = 10_000;

/// Salt length of new hashes (what `mosquitto_passwd` uses).
const SALT_LEN: usize = 12;
/// Length of a SHA-512 / PBKDF2-HMAC-SHA512 hash.
const HASH_LEN: usize = 64;
/// Above this many PBKDF2 iterations a verification is moved off the async
/// worker threads: it takes long enough to stall other connections.
const INLINE_ITERATIONS: u32 = 1_000;

/// Reads base64 with or without padding (Mosquitto writes it padded).
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A password hash as a Mosquitto password file stores it.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2Sha512 {
        /// PBKDF2 iteration count (at least 1).
        iterations: u32,
        /// The salt bytes (decoded).
        salt: Vec<u8>,
        /// The 64-byte derived key.
        hash: Vec<u8>,
    },
    /// `$SCRAM-SHA-256$`: SCRAM-SHA-256 keys of the password.
    ScramSha256 {
        /// PBKDF2-HMAC-SHA256 iteration count (at least 1).
        iterations: u32,
        /// The salt bytes (decoded).
        salt: Vec<u8>,
        /// SHA-256(HMAC(SaltedPassword, "Client Key")), 32 bytes.
        stored_key: Vec<u8>,
        /// HMAC(SaltedPassword, "Server Key"), 32 bytes.
        server_key: Vec<u8>,
    },
    /// `$6$`: SHA-512 over the password followed by the salt.
    Sha512 {
        /// The salt bytes (decoded).
        salt: Vec<u8>,
        /// The 64-byte digest.
        hash: Vec<u8>,
    },
}

impl fmt::Debug for PasswordHash {
    // The hash stays out of logs and panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "PasswordHash::Pbkdf2Sha512 {{ iterations: {iterations}, .. }}")
            }
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash::Sha512 { .. }"),
            PasswordHash::ScramSha256 { iterations, .. } => {
                write!(f, "PasswordHash::ScramSha256 {{ iterations: {iterations}, .. }}")
            }
        }
    }
}

/// Why a hash field could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashFormatError {
    /// Neither `$7$` nor `$6$`; most often a plain-text password.
    #[error(
        "the password is not a `$7$` (PBKDF2-SHA512), `$6$` (SHA-512) or `$SCRAM-SHA-256$` hash; \
         a plain-text password must be hashed with `postbox passwd` or `mosquitto_passwd -U`"
    )]
    UnknownFormat,
    /// The `$`-separated fields are not the expected ones.
    #[error("malformed `${scheme}$` hash: expected {expected}")]
    Fields {
        /// `6` or `7`.
        scheme: u8,
        /// What the fields should be.
        expected: &'static str,
    },
    /// A `$SCRAM-SHA-256$` entry without its four fields, or with keys
    /// that are not 32 bytes of base64.
    #[error(
        "malformed `$SCRAM-SHA-256$` entry: expected \
         `$SCRAM-SHA-256$<iterations>$<salt>$<StoredKey>$<ServerKey>` (base64, 32-byte keys)"
    )]
    Scram,
    /// The iteration count is not a number from 1 to 4294967295.
    #[error("bad iteration count `{0}`: expected a number from 1 to 4294967295")]
    Iterations(String),
    /// A field is not valid base64.
    #[error("the {0} is not valid base64")]
    Base64(&'static str),
    /// The salt is empty or the hash is not 64 bytes.
    #[error("the {what} is {got} bytes long, expected {expected}")]
    Length {
        /// `salt` or `hash`.
        what: &'static str,
        /// Decoded length.
        got: usize,
        /// What was expected.
        expected: &'static str,
    },
}

impl PasswordHash {
    /// Parses the part of a password file line after `username:`.
    pub fn parse(s: &str) -> Result<PasswordHash, HashFormatError> {
        if let Some(rest) = s.strip_prefix(SCRAM_SHA256_PREFIX) {
            let fields: Vec<&str> = rest.split('$').collect();
            let [iterations, salt, stored, server] = fields[..] else {
                return Err(HashFormatError::Scram);
            };
            let iterations = parse_iterations(iterations)?;
            let decode = |v: &str| B64_LENIENT.decode(v).map_err(|_| HashFormatError::Scram);
            let (salt, stored_key, server_key) = (decode(salt)?, decode(stored)?, decode(server)?);
            if salt.is_empty() || stored_key.len() != 32 || server_key.len() != 32 {
                return Err(HashFormatError::Scram);
            }
            Ok(PasswordHash::ScramSha256 {
                iterations,
                salt,
                stored_key,
                server_key,
            })
        } else if let Some(rest) = s.strip_prefix("$7$") {
            let fields: Vec<&str> = rest.split('$').collect();
            let [iterations, salt, hash] = fields[..] else {
                return Err(HashFormatError::Fields {
                    scheme: 7,
                    expected: "`$7$<iterations>$<salt>$<hash>`",
                });
            };
            let iterations = parse_iterations(iterations)?;
            let (salt, hash) = decode_salt_hash(salt, hash)?;
            Ok(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            })
        } else if let Some(rest) = s.strip_prefix("$6$") {
            let fields: Vec<&str> = rest.split('$').collect();
            let [salt, hash] = fields[..] else {
                return Err(HashFormatError::Fields {
                    scheme: 6,
                    expected: "`$6$<salt>$<hash>`",
                });
            };
            let (salt, hash) = decode_salt_hash(salt, hash)?;
            Ok(PasswordHash::Sha512 { salt, hash })
        } else {
            Err(HashFormatError::UnknownFormat)
        }
    }

    /// A new `$7$` hash of `password` with a fresh random salt.
    pub fn new_pbkdf2(password: &[u8], iterations: u32) -> Result<PasswordHash, getrandom::Error> {
        let salt = new_salt()?;
        let iterations = iterations.max(1);
        let hash = pbkdf2_sha512(password, &salt, iterations);
        Ok(PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        })
    }

    /// A new `$SCRAM-SHA-256$` entry for `password` with a fresh random salt.
    pub fn new_scram_sha256(password: &[u8], iterations: u32) -> Result<PasswordHash, getrandom::Error> {
        let salt = new_salt()?;
        let iterations = iterations.max(1);
        let (stored_key, server_key) = scram_sha256_keys(password, &salt, iterations);
        Ok(PasswordHash::ScramSha256 {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// A new `$6$` hash of `password` with a fresh random salt (for files
    /// that must stay readable by Mosquitto 1.6 and earlier).
    pub fn new_sha512(password: &[u8]) -> Result<PasswordHash, getrandom::Error> {
        let salt = new_salt()?;
        let hash = sha512_salted(password, &salt);
        Ok(PasswordHash::Sha512 { salt, hash })
    }

    /// True when `password` is the one this hash was made from. The hashes
    /// are compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => constant_time_eq(&pbkdf2_sha512(password, salt, *iterations), hash),
            PasswordHash::Sha512 { salt, hash } => constant_time_eq(&sha512_salted(password, salt), hash),
            PasswordHash::ScramSha256 {
                iterations,
                salt,
                stored_key,
                ..
            } => constant_time_eq(&scram_sha256_keys(password, salt, *iterations).0, stored_key),
        }
    }

    /// True when verifying takes long enough (many PBKDF2 iterations) that
    /// it should run on a blocking thread rather than an async worker.
    pub fn is_costly(&self) -> bool {
        match self {
            PasswordHash::Pbkdf2Sha512 { iterations, .. } | PasswordHash::ScramSha256 { iterations, .. } => {
                *iterations > INLINE_ITERATIONS
            }
            PasswordHash::Sha512 { .. } => false,
        }
    }
}

impl fmt::Display for PasswordHash {
    /// The Mosquitto form, as it appears after `username:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            PasswordHash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            PasswordHash::ScramSha256 {
                iterations,
                salt,
                stored_key,
                server_key,
            } => write!(
                f,
                "{SCRAM_SHA256_PREFIX}{iterations}${}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(stored_key),
                STANDARD.encode(server_key)
            ),
        }
    }
}

/// What a SCRAM-SHA-256 entry starts with.
const SCRAM_SHA256_PREFIX: &str = "$SCRAM-SHA-256$";

fn parse_iterations(v: &str) -> Result<u32, HashFormatError> {
    match v.parse::<u32>() {
        Ok(n) if n >= 1 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(HashFormatError::Iterations(v.to_string())),
    }
}

/// SCRAM-SHA-256's StoredKey and ServerKey of `password` (RFC 5802 3).
pub fn scram_sha256_keys(password: &[u8], salt: &[u8], iterations: u32) -> (Vec<u8>, Vec<u8>) {
    let keys = ScramKeys::from_password(ScramAlg::Sha256, password, salt, iterations);
    (keys.stored_key, keys.server_key)
}

fn decode_salt_hash(salt: &str, hash: &str) -> Result<(Vec<u8>, Vec<u8>), HashFormatError> {
    let salt = B64_LENIENT
        .decode(salt)
        .map_err(|_| HashFormatError::Base64("salt"))?;
    let hash = B64_LENIENT
        .decode(hash)
        .map_err(|_| HashFormatError::Base64("hash"))?;
    if salt.is_empty() {
        return Err(HashFormatError::Length {
            what: "salt",
            got: 0,
            expected: "at least 1",
        });
    }
    if hash.len() != HASH_LEN {
        return Err(HashFormatError::Length {
            what: "hash",
            got: hash.len(),
            expected: "64",
        });
    }
    Ok((salt, hash))
}

fn new_salt() -> Result<Vec<u8>, getrandom::Error> {
    let mut salt = vec![0u8; SALT_LEN];
    getrandom::getrandom(&mut salt)?;
    Ok(salt)
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

fn sha512_salted(password: &[u8], salt: &[u8]) -> Vec<u8> {
    let mut h = Sha512::new();
    h.update(password);
    h.update(salt);
    h.finalize().to_vec()
}

/// Compares two byte strings in time that depends only on their lengths, so
/// a client cannot learn how much of a guessed hash was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// A loaded password file: user name to hash.
#[derive(Debug, Clone)]
pub struct PasswordFile {
    /// Where it was read from.
    pub path: PathBuf,
    users: HashMap<String, PasswordHash>,
}

impl PasswordFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        PasswordFile::parse(path, &text)
    }

    /// Parses `text` as the contents of the file at `path` (used in errors).
    pub fn parse(path: &Path, text: &str) -> Result<PasswordFile, AuthFileError> {
        let err = |line: usize, message: String| AuthFileError::Parse {
            file: path.to_path_buf(),
            line,
            message,
        };
        let mut users: HashMap<String, PasswordHash> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim_end();
            if content.trim_start().is_empty() || content.trim_start().starts_with('#') {
                continue;
            }
            let Some((username, hash)) = content.split_once(':') else {
                return Err(err(
                    line,
                    "expected `username:password-hash` (a `#` starts a comment)".to_string(),
                ));
            };
            if username.is_empty() {
                return Err(err(line, "empty user name before `:`".to_string()));
            }
            if let Some(first) = first_line.get(username) {
                return Err(err(
                    line,
                    format!("user `{username}` is already defined on line {first}"),
                ));
            }
            let hash = PasswordHash::parse(hash).map_err(|e| err(line, format!("user `{username}`: {e}")))?;
            first_line.insert(username.to_string(), line);
            users.insert(username.to_string(), hash);
        }
        Ok(PasswordFile {
            path: path.to_path_buf(),
            users,
        })
    }

    /// The hash of `username`, if the file has that user.
    pub fn get(&self, username: &str) -> Option<&PasswordHash> {
        self.users.get(username)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}
