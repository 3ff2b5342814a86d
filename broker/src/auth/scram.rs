//! SCRAM (RFC 5802; SHA-256 per RFC 7677, and SHA-512 the same way) over
//! MQTT 5 enhanced authentication, for the users of the password file.
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
//!
//! The exchange: client-first (`n,,n=<user>,r=<nonce>`) in CONNECT's
//! Authentication Data; server-first (`r=<nonce+ours>,s=<salt>,i=<n>`) in
//! AUTH 0x18; client-final (`c=biws,r=...,p=<proof>`) in AUTH 0x18;
//! server-final (`v=<signature>`) in CONNACK (or AUTH 0x00 when
//! re-authenticating). Not supported: channel binding (`p=`), an
//! authorization identity (`a=`), SASLprep of non-ASCII passwords (the
//! password's bytes are used as they are, as the file hashed them). The
//! CONNECT's user name, when given, must be the SCRAM user; when not given,
//! the SCRAM user becomes the client's user name.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use hooks_spec::{AuthExchange, AuthMethod, AuthStep, ClientInfo};
use sha2::{Digest, Sha256, Sha512};

use super::password_file::PasswordHash;
use super::InForce;

/// The hash a SCRAM method uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// `SCRAM-SHA-256`, over `$SCRAM-SHA-256$` entries.
    Sha256,
    /// `SCRAM-SHA-512`, over `$7$` entries.
    Sha512,
}

impl Alg {
    /// The Authentication Method name.
    pub fn method(self) -> &'static str {
        match self {
            Alg::Sha256 => "SCRAM-SHA-256",
            Alg::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Alg::Sha256 => Sha256::digest(data).to_vec(),
            Alg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length: new_from_slice cannot fail.
        match self {
            Alg::Sha256 => Hmac::<Sha256>::new_from_slice(key)
                .map(|m| m.chain_update(data).finalize().into_bytes().to_vec())
                .unwrap_or_default(),
            Alg::Sha512 => Hmac::<Sha512>::new_from_slice(key)
                .map(|m| m.chain_update(data).finalize().into_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    /// The user's iterations, salt, StoredKey and ServerKey, when the entry
    /// serves this method.
    fn keys(self, entry: &PasswordHash) -> Option<UserKeys> {
        match (self, entry) {
            (
                Alg::Sha512,
                PasswordHash::Pbkdf2Sha512 {
                    iterations,
                    salt,
                    hash,
                },
            ) => {
                let stored = self.hash(&self.hmac(hash, b"Client Key"));
                let server = self.hmac(hash, b"Server Key");
                Some((*iterations, salt.clone(), stored, server))
            }
            (
                Alg::Sha256,
                PasswordHash::ScramSha256 {
                    iterations,
                    salt,
                    stored_key,
                    server_key,
                },
            ) => Some((*iterations, salt.clone(), stored_key.clone(), server_key.clone())),
            _ => None,
        }
    }
}

/// Iterations, salt, StoredKey and ServerKey of one user.
type UserKeys = (u32, Vec<u8>, Vec<u8>, Vec<u8>);

/// Bytes of server nonce.
const NONCE_LEN: usize = 18;

/// A SCRAM method, answering from the password file in force.
pub struct Scram {
    alg: Alg,
    cfg: Arc<InForce>,
}

impl Scram {
    /// The method with `alg` over the plugin's files.
    pub fn new(alg: Alg, cfg: Arc<InForce>) -> Scram {
        Scram { alg, cfg }
    }
}

impl AuthMethod for Scram {
    fn name(&self) -> &str {
        self.alg.method()
    }

    fn start(&self, client: &ClientInfo) -> Box<dyn AuthExchange> {
        Box::new(Exchange {
            alg: self.alg,
            cfg: Arc::clone(&self.cfg),
            connect_user: client.username.clone(),
            state: State::First,
        })
    }
}

enum State {
    First,
    Final {
        user: String,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
        nonce: String,
        gs2_header: String,
        /// client-first-bare "," server-first
        auth_prefix: String,
    },
    Done,
}

struct Exchange {
    alg: Alg,
    cfg: Arc<InForce>,
    connect_user: Option<String>,
    state: State,
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A SCRAM `saslname`: `=2C` is `,` and `=3D` is `=`; another `=` is an error.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

fn fail(why: impl Into<String>) -> AuthStep {
    AuthStep::Failure(why.into())
}

impl AuthExchange for Exchange {
    fn step(&mut self, data: &[u8]) -> AuthStep {
        let state = std::mem::replace(&mut self.state, State::Done);
        let Ok(text) = std::str::from_utf8(data) else {
            return fail("SCRAM message is not UTF-8");
        };
        match state {
            State::First => self.client_first(text),
            State::Final {
                user,
                stored_key,
                server_key,
                nonce,
                gs2_header,
                auth_prefix,
            } => {
                let keys = (stored_key.as_slice(), server_key.as_slice());
                client_final(self.alg, text, &user, keys, &nonce, (&gs2_header, &auth_prefix))
            }
            State::Done => fail("SCRAM exchange already complete"),
        }
    }
}

impl Exchange {
    fn client_first(&mut self, text: &str) -> AuthStep {
        // gs2-header: "n,," or "y,," (no channel binding, no authzid).
        let (gs2_header, bare) = match text.get(..3) {
            Some("n,," | "y,,") => (&text[..3], &text[3..]),
            _ => return fail("SCRAM client-first without a plain gs2 header (n,,): channel binding and authzid are not supported"),
        };
        let mut attrs = bare.split(',');
        let user = match attrs.next().and_then(|a| a.strip_prefix("n=")).and_then(unescape) {
            Some(u) if !u.is_empty() => u,
            _ => return fail("SCRAM client-first without a user name (n=)"),
        };
        let client_nonce = match attrs.next().and_then(|a| a.strip_prefix("r=")) {
            Some(n) if !n.is_empty() && n.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b',') => n,
            _ => return fail("SCRAM client-first without a nonce (r=)"),
        };
        if let Some(connect_user) = &self.connect_user {
            if *connect_user != user {
                return fail(format!(
                    "SCRAM user {user:?} is not the CONNECT user name {connect_user:?}"
                ));
            }
        }
        let Some(passwords) = &self.cfg.passwords else {
            return fail("no password file");
        };
        let passwords = passwords.get();
        let Some(entry) = passwords.get(&user) else {
            return fail(format!("user {user:?} is not in the password file"));
        };
        let Some((iterations, salt, stored_key, server_key)) = self.alg.keys(entry) else {
            return fail(format!(
                "the password file entry of {user:?} cannot serve {} (see auth_file's scram module)",
                self.alg.method()
            ));
        };
        let mut ours = [0u8; NONCE_LEN];
        if getrandom::getrandom(&mut ours).is_err() {
            return fail("no randomness for the server nonce");
        }
        let nonce = format!("{client_nonce}{}", STANDARD.encode(ours));
        let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(&salt));
        self.state = State::Final {
            user,
            stored_key,
            server_key,
            nonce,
            gs2_header: gs2_header.to_string(),
            auth_prefix: format!("{bare},{server_first}"),
        };
        AuthStep::Continue(Bytes::from(server_first))
    }
}

/// Checks client-final against the keys; `(gs2_header, auth_prefix)`:
/// what client-first sent and `client-first-bare,server-first`.
fn client_final(
    alg: Alg,
    text: &str,
    user: &str,
    (stored_key, server_key): (&[u8], &[u8]),
    nonce: &str,
    (gs2_header, auth_prefix): (&str, &str),
) -> AuthStep {
    let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
        return fail("SCRAM client-final without a proof (p=)");
    };
    let mut attrs = without_proof.split(',');
    if attrs.next().and_then(|a| a.strip_prefix("c=")) != Some(STANDARD.encode(gs2_header).as_str()) {
        return fail("SCRAM client-final with the wrong channel binding (c=)");
    }
    if attrs.next().and_then(|a| a.strip_prefix("r=")) != Some(nonce) {
        return fail("SCRAM client-final with the wrong nonce (r=)");
    }
    let Ok(proof) = STANDARD.decode(proof) else {
        return fail("SCRAM proof is not base64");
    };
    let auth_message = format!("{auth_prefix},{without_proof}");
    let signature = alg.hmac(stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return fail("SCRAM proof of the wrong length");
    }
    let claimed: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
    if !same(&alg.hash(&claimed), stored_key) {
        return fail(format!("wrong SCRAM proof for user {user:?}"));
    }
    let server_signature = alg.hmac(server_key, auth_message.as_bytes());
    AuthStep::Success {
        data: Some(Bytes::from(format!("v={}", STANDARD.encode(server_signature)))),
        username: Some(user.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslnames_unescape() {
        assert_eq!(unescape("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(unescape("plain").as_deref(), Some("plain"));
        assert_eq!(unescape("bad=2"), None);
        assert_eq!(unescape("bad=41"), None);
    }

    /// RFC 7677 section 3's example exchange: user `user`, password
    /// `pencil`; the server's nonce and the client's proof as printed there.
    #[test]
    fn rfc7677_example_verifies() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (stored, server) = crate::auth::password_file::scram_sha256_keys(b"pencil", &salt, 4096);
        let nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let prefix = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        let final_msg = format!("c=biws,r={nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let step = client_final(
            Alg::Sha256,
            &final_msg,
            "user",
            (&stored, &server),
            nonce,
            ("n,,", &prefix),
        );
        assert_eq!(
            step,
            AuthStep::Success {
                data: Some(Bytes::from_static(
                    b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
                )),
                username: Some("user".into()),
            }
        );
        let wrong = final_msg.replace("dHzb", "dHzc");
        let step = client_final(
            Alg::Sha256,
            &wrong,
            "user",
            (&stored, &server),
            nonce,
            ("n,,", &prefix),
        );
        assert!(matches!(step, AuthStep::Failure(_)), "{step:?}");
    }
}
