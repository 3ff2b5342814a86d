//! SCRAM (RFC 5802; SHA-256 per RFC 7677, and SHA-512 the same way) over
//! MQTT 5 enhanced authentication, for the users of the password file. The
//! exchange itself is [`hooks_spec::scram`]'s; this module supplies the keys.
//!
//! The server side needs each user's SCRAM keys, derived from the salted
//! password `Hi(password, salt, i)` (PBKDF2 with the mechanism's hash):
//!
//! - `SCRAM-SHA-512`: a Mosquitto `$7$` entry is exactly PBKDF2-HMAC-SHA512
//!   with a 64-byte result, so it *is* the SCRAM-SHA-512 salted password:
//!   every user `mosquitto_passwd` or `postbox passwd` made can use it, and
//!   the file stays Mosquitto's.
//! - `SCRAM-SHA-256`: needs PBKDF2-HMAC-SHA256, which a Mosquitto file does
//!   not hold; users with a `$SCRAM-SHA-256$` entry (`postbox passwd -H
//!   scram-sha256`, which Mosquitto does not read) can use it.
//!
//! A user whose entry is of another kind is refused (0x86), as is one the
//! file does not have (at client-first).

use std::sync::Arc;

use async_trait::async_trait;
use hooks_spec::scram::{ScramAlg, ScramKeys, ScramSource};
use hooks_spec::ClientInfo;

use super::password_file::PasswordHash;
use super::InForce;

/// The user's keys for `alg`, when the entry serves it.
fn keys(alg: ScramAlg, entry: &PasswordHash) -> Option<ScramKeys> {
    match (alg, entry) {
        (
            ScramAlg::Sha512,
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            },
        ) => Some(ScramKeys::from_salted_password(alg, hash, salt, *iterations)),
        (
            ScramAlg::Sha256,
            PasswordHash::ScramSha256 {
                iterations,
                salt,
                stored_key,
                server_key,
            },
        ) => Some(ScramKeys {
            iterations: *iterations,
            salt: salt.clone(),
            stored_key: stored_key.clone(),
            server_key: server_key.clone(),
        }),
        _ => None,
    }
}

/// The password file in force, as a source of SCRAM keys.
pub struct PasswordFileScram(pub Arc<InForce>);

#[async_trait]
impl ScramSource for PasswordFileScram {
    async fn keys(&self, alg: ScramAlg, _client: &ClientInfo, user: &str) -> Result<ScramKeys, String> {
        let Some(passwords) = &self.0.passwords else {
            return Err("no password file".into());
        };
        let passwords = passwords.get();
        let Some(entry) = passwords.get(user) else {
            return Err(format!("user {user:?} is not in the password file"));
        };
        keys(alg, entry).ok_or_else(|| {
            format!(
                "the password file entry of {user:?} cannot serve {} (see auth_file's scram module)",
                alg.method()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `$7$` entry gives the keys of its password under its salt.
    #[test]
    fn pbkdf2_sha512_entries_are_salted_passwords() {
        let salt = b"0123456789ab".to_vec();
        let hash = ScramAlg::Sha512.salted_password(b"secret", &salt, 101);
        let entry = PasswordHash::Pbkdf2Sha512 {
            iterations: 101,
            salt: salt.clone(),
            hash,
        };
        let want = ScramKeys::from_password(ScramAlg::Sha512, b"secret", &salt, 101);
        assert_eq!(keys(ScramAlg::Sha512, &entry), Some(want));
        assert_eq!(keys(ScramAlg::Sha256, &entry), None);
    }
}
