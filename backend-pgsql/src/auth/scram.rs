//! SCRAM (MQTT 5 enhanced authentication) over the users `auth_query` finds,
//! where `password_hash` lets the server compute SCRAM's keys. The exchange
//! is [`hooks_spec::scram`]'s (the same as auth_file's); this module reads
//! the row and derives the keys.
//!
//! SCRAM's server keys come from `SaltedPassword = Hi(password, salt, i)`,
//! which is PBKDF2-HMAC-H(password, salt, i) truncated to H's output length
//! (its first block). So:
//!
//! | `password_hash` | methods offered |
//! |---|---|
//! | `pbkdf2,sha256,<i>,<dklen>` with dklen ≥ 32 | `SCRAM-SHA-256`, from the stored hash (its first 32 bytes): the salt column's bytes as they are (as EMQX hashes them) and `<i>` are sent to the client |
//! | `pbkdf2,sha512,<i>,<dklen>` with dklen ≥ 64 | `SCRAM-SHA-512`, the same way with 64 bytes |
//! | `plain` (also `salt,plain` / `plain,salt`) | both, from the stored password: a fresh random salt and 4096 iterations ([`PLAIN_ITERATIONS`], RFC 7677's minimum) each exchange; PBKDF2 runs off the async workers |
//! | any other (`md5`, `sha*`, salted digests, other pbkdf2 macs or a shorter dklen, `bcrypt`) | none: a plain digest or bcrypt cannot be turned into `Hi(password, ...)` without the password, so such clients log in with a password (CONNACK 0x8C for a SCRAM CONNECT) |
//!
//! A user `auth_query` does not find is refused (0x86), unlike a password
//! login, which leaves an unknown user to the next provider: the method is
//! this plugin's, no other provider takes part in the exchange. A database
//! error refuses too. After a successful proof `super_query` runs as after a
//! password login.

use std::sync::Arc;

use async_trait::async_trait;
use hooks_spec::scram::{ScramAlg, ScramKeys, ScramSource};
use hooks_spec::ClientInfo;

use super::db;
use super::password_hash::{decode_hex, DigestAlg, HashScheme, SaltPosition};
use super::Engine;

/// Iterations for keys computed from a `plain` stored password.
pub const PLAIN_ITERATIONS: u32 = 4096;
/// Bytes of the random salt for a `plain` stored password.
const PLAIN_SALT_LEN: usize = 16;

/// The SCRAM methods `scheme` can serve (see the module docs).
pub fn offered(scheme: HashScheme) -> Vec<ScramAlg> {
    match scheme {
        HashScheme::Pbkdf2 {
            mac: DigestAlg::Sha256,
            dklen,
            ..
        } if dklen >= ScramAlg::Sha256.output_len() => vec![ScramAlg::Sha256],
        HashScheme::Pbkdf2 {
            mac: DigestAlg::Sha512,
            dklen,
            ..
        } if dklen >= ScramAlg::Sha512.output_len() => vec![ScramAlg::Sha512],
        HashScheme::Plain(_) => vec![ScramAlg::Sha256, ScramAlg::Sha512],
        _ => Vec::new(),
    }
}

/// The keys for `alg` from a row's `stored` hash and `salt` column. For
/// `plain`, PBKDF2 runs here (slow: call it off the async workers).
pub fn keys_from_row(
    scheme: HashScheme,
    alg: ScramAlg,
    stored: &str,
    salt: &str,
) -> Result<ScramKeys, String> {
    if !offered(scheme).contains(&alg) {
        return Err(format!("password_hash = {scheme} cannot serve {}", alg.method()));
    }
    match scheme {
        HashScheme::Pbkdf2 {
            iterations, dklen, ..
        } => {
            let derived = decode_hex(stored.trim(), dklen).map_err(|e| e.to_string())?;
            // PBKDF2's first block is Hi(): the rest of a longer key is not needed.
            let salted = &derived[..alg.output_len()];
            Ok(ScramKeys::from_salted_password(
                alg,
                salted,
                salt.as_bytes(),
                iterations,
            ))
        }
        HashScheme::Plain(pos) => {
            let password = match pos {
                SaltPosition::None => Some(stored),
                SaltPosition::Prefix => stored.strip_prefix(salt),
                SaltPosition::Suffix => stored.strip_suffix(salt),
            }
            .ok_or("the stored password does not hold the salt as password_hash says")?;
            let mut salt = [0u8; PLAIN_SALT_LEN];
            getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness for a SCRAM salt: {e}"))?;
            Ok(ScramKeys::from_password(
                alg,
                password.as_bytes(),
                &salt,
                PLAIN_ITERATIONS,
            ))
        }
        _ => Err(format!("password_hash = {scheme} cannot serve {}", alg.method())),
    }
}

/// The client as the SCRAM user: `%u` / `${username}` in the queries and
/// the cache entry are the user who authenticated.
fn as_user(client: &ClientInfo, user: &str) -> ClientInfo {
    ClientInfo {
        username: Some(user.to_string()),
        ..client.clone()
    }
}

/// `auth_query`'s users as a source of SCRAM keys.
pub(super) struct PgsqlScram(pub(super) Arc<Engine>);

#[async_trait]
impl ScramSource for PgsqlScram {
    async fn keys(&self, alg: ScramAlg, client: &ClientInfo, user: &str) -> Result<ScramKeys, String> {
        let e = &self.0;
        let Some(q) = &e.cfg.auth_query else {
            return Err("auth_pgsql: no auth_query".into());
        };
        let client = as_user(client, user);
        // A new login from this address: whatever was cached for it is gone.
        e.cache.authenticated(&client, false);
        let rows = db::run(&e.pool, &q.key, &q.query, &q.query.values(&client))
            .await
            .map_err(|err| format!("auth_pgsql: {}", crate::error_chain(&err)))?;
        let Some(row) = rows.first() else {
            return Err(format!("auth_pgsql: no user {user:?} (auth_query found no row)"));
        };
        let (stored, salt) = match (db::text(row, 0), db::text(row, 1)) {
            (Ok(Some(stored)), Ok(salt)) => (stored, salt.unwrap_or_default()),
            (Ok(None), _) => {
                return Err(format!(
                    "auth_pgsql: the stored password hash of {user:?} is NULL"
                ))
            }
            (Err(err), _) | (_, Err(err)) => return Err(format!("auth_pgsql: {}: {err}", q.key)),
        };
        let scheme = e.cfg.password_hash;
        let keys = if matches!(scheme, HashScheme::Plain(_)) {
            // PBKDF2 on the password, slow on purpose.
            tokio::task::spawn_blocking(move || keys_from_row(scheme, alg, &stored, &salt))
                .await
                .map_err(|err| format!("auth_pgsql: SCRAM key derivation failed: {err}"))?
        } else {
            // A stored PBKDF2 hash: two HMACs and a hash.
            keys_from_row(scheme, alg, &stored, &salt)
        };
        keys.map_err(|why| format!("auth_pgsql: {user:?}: {why} (password_hash = {scheme})"))
    }

    async fn authenticated(&self, client: &ClientInfo, user: &str) {
        let client = as_user(client, user);
        let superuser = self.0.is_superuser(&client).await;
        self.0.cache.authenticated(&client, superuser);
        tracing::debug!(clientid = %client.clientid, superuser, "auth_pgsql: SCRAM proof matches");
    }
}

#[cfg(test)]
mod tests;
