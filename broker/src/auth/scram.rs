//! `SCRAM-SHA-512` (RFC 5802, with SHA-512 as RFC 7677 does SHA-256) over
//! MQTT 5 enhanced authentication, for the users of the password file.
//!
//! Why SHA-512 and not SCRAM-SHA-256: SCRAM's server side needs the salted
//! password `Hi(password, salt, i)`, which is PBKDF2 with the mechanism's
//! hash. A Mosquitto `$7$` entry is exactly PBKDF2-HMAC-SHA512 with a 64-byte
//! result, so it *is* the SCRAM-SHA-512 salted password: every user
//! `mosquitto_passwd` or `postbox passwd` made can use SCRAM without a new
//! file format, and the file stays readable by Mosquitto. SCRAM-SHA-256 would
//! need PBKDF2-HMAC-SHA256 of each password, which the file does not hold
//! (an entry format of its own, which Mosquitto would not read). Users with
//! an old `$6$` (salted SHA-512) hash cannot use SCRAM (refused, 0x86).
//!
//! The exchange: client-first (`n,,n=<user>,r=<nonce>`) in CONNECT's
//! Authentication Data; server-first (`r=<nonce+ours>,s=<salt>,i=<n>`) in
//! AUTH 0x18; client-final (`c=biws,r=...,p=<proof>`) in AUTH 0x18;
//! server-final (`v=<signature>`) in CONNACK (or AUTH 0x00 when
//! re-authenticating). Not supported: channel binding (`p=`), an
//! authorization identity (`a=`), SASLprep of non-ASCII passwords (the
//! password's bytes are used as they are, as Mosquitto hashed them). The
//! CONNECT's user name, when given, must be the SCRAM user; when not given,
//! the SCRAM user becomes the client's user name. A user the file does not
//! have is refused at client-first.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use hooks_spec::{AuthExchange, AuthMethod, AuthStep, ClientInfo};
use sha2::{Digest, Sha512};

use super::password_file::PasswordHash;
use super::InForce;

/// The Authentication Method name.
pub const METHOD: &str = "SCRAM-SHA-512";

/// Bytes of server nonce.
const NONCE_LEN: usize = 18;

/// The method, answering from the password file in force.
pub struct ScramSha512 {
    cfg: Arc<InForce>,
}

impl ScramSha512 {
    /// The method over the plugin's files.
    pub fn new(cfg: Arc<InForce>) -> ScramSha512 {
        ScramSha512 { cfg }
    }
}

impl AuthMethod for ScramSha512 {
    fn name(&self) -> &str {
        METHOD
    }

    fn start(&self, client: &ClientInfo) -> Box<dyn AuthExchange> {
        Box::new(Exchange {
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
        salted: Vec<u8>,
        nonce: String,
        gs2_header: String,
        /// client-first-bare "," server-first
        auth_prefix: String,
    },
    Done,
}

struct Exchange {
    cfg: Arc<InForce>,
    connect_user: Option<String>,
    state: State,
}

type HmacSha512 = Hmac<Sha512>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    match HmacSha512::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
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
                salted,
                nonce,
                gs2_header,
                auth_prefix,
            } => client_final(text, &user, &salted, &nonce, &gs2_header, &auth_prefix),
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
        let (iterations, salt, salted) = match passwords.get(&user) {
            Some(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            }) => (*iterations, salt.clone(), hash.clone()),
            Some(PasswordHash::Sha512 { .. }) => {
                return fail(format!(
                    "user {user:?} has a `$6$` hash: SCRAM needs a `$7$` (PBKDF2-SHA512) one"
                ))
            }
            None => return fail(format!("user {user:?} is not in the password file")),
        };
        let mut ours = [0u8; NONCE_LEN];
        if getrandom::getrandom(&mut ours).is_err() {
            return fail("no randomness for the server nonce");
        }
        let nonce = format!("{client_nonce}{}", STANDARD.encode(ours));
        let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(&salt));
        self.state = State::Final {
            user,
            salted,
            nonce,
            gs2_header: gs2_header.to_string(),
            auth_prefix: format!("{bare},{server_first}"),
        };
        AuthStep::Continue(Bytes::from(server_first))
    }
}

fn client_final(
    text: &str,
    user: &str,
    salted: &[u8],
    nonce: &str,
    gs2_header: &str,
    auth_prefix: &str,
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
    let client_key = hmac(salted, b"Client Key");
    let stored_key = Sha512::digest(&client_key);
    let signature = hmac(&stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return fail("SCRAM proof of the wrong length");
    }
    let claimed: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
    if !same(&Sha512::digest(&claimed), &stored_key) {
        return fail(format!("wrong SCRAM proof for user {user:?}"));
    }
    let server_key = hmac(salted, b"Server Key");
    let server_signature = hmac(&server_key, auth_message.as_bytes());
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
}
