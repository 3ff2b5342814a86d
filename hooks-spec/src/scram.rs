//! The server side of SCRAM (RFC 5802; SHA-256 per RFC 7677, and SHA-512 the
//! same way) as an MQTT 5 enhanced authentication method, shared by the
//! plugins that offer it: each supplies the users' keys through a
//! [`ScramSource`] and registers a [`ScramMethod`] per hash.
//!
//! The exchange: client-first (`n,,n=<user>,r=<nonce>`) in CONNECT's
//! Authentication Data; server-first (`r=<nonce+ours>,s=<salt>,i=<n>`) in
//! AUTH 0x18; client-final (`c=biws,r=...,p=<proof>`) in AUTH 0x18;
//! server-final (`v=<signature>`) in CONNACK (or AUTH 0x00 when
//! re-authenticating). Not supported: channel binding (`p=`), an
//! authorization identity (`a=`), SASLprep of non-ASCII passwords (the
//! password's bytes are used as they are). The CONNECT's user name, when
//! given, must be the SCRAM user; when not given, the SCRAM user becomes the
//! client's user name.
//!
//! The server needs, per user, the salt, the iteration count and two keys
//! derived from the salted password `Hi(password, salt, i)`, which is
//! PBKDF2-HMAC-H with a derived key as long as H's output
//! ([`ScramKeys::from_salted_password`]): a store that keeps that PBKDF2
//! result can serve SCRAM without ever holding the password.

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use crate::{AuthExchange, AuthMethod, AuthStep, ClientInfo};

/// The hash of a SCRAM method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramAlg {
    /// `SCRAM-SHA-256`.
    Sha256,
    /// `SCRAM-SHA-512`.
    Sha512,
}

impl ScramAlg {
    /// The Authentication Method name.
    pub fn method(self) -> &'static str {
        match self {
            ScramAlg::Sha256 => "SCRAM-SHA-256",
            ScramAlg::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Bytes of the hash output (and of the salted password).
    pub fn output_len(self) -> usize {
        match self {
            ScramAlg::Sha256 => 32,
            ScramAlg::Sha512 => 64,
        }
    }

    /// H(data).
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramAlg::Sha256 => Sha256::digest(data).to_vec(),
            ScramAlg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// HMAC-H(key, data).
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length: new_from_slice cannot fail.
        match self {
            ScramAlg::Sha256 => Hmac::<Sha256>::new_from_slice(key)
                .map(|m| m.chain_update(data).finalize().into_bytes().to_vec())
                .unwrap_or_default(),
            ScramAlg::Sha512 => Hmac::<Sha512>::new_from_slice(key)
                .map(|m| m.chain_update(data).finalize().into_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    /// `Hi(password, salt, iterations)`: PBKDF2-HMAC-H, one block. Slow on
    /// purpose: run it off the async workers.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            ScramAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            ScramAlg::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }
}

/// What the server keeps of one user for one SCRAM hash.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// The iteration count sent to the client.
    pub iterations: u32,
    /// The salt (raw bytes; sent base64).
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys let anyone impersonate the server: never logged.
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramKeys {
    /// The keys from the salted password (`Hi(password, salt, iterations)`).
    pub fn from_salted_password(alg: ScramAlg, salted: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
        ScramKeys {
            iterations,
            salt: salt.to_vec(),
            stored_key: alg.hash(&alg.hmac(salted, b"Client Key")),
            server_key: alg.hmac(salted, b"Server Key"),
        }
    }

    /// The keys of `password` under `salt` (PBKDF2: run it off the async
    /// workers).
    pub fn from_password(alg: ScramAlg, password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
        let salted = alg.salted_password(password, salt, iterations);
        ScramKeys::from_salted_password(alg, &salted, salt, iterations)
    }
}

/// Where a [`ScramMethod`] finds its users.
#[async_trait]
pub trait ScramSource: Send + Sync {
    /// The keys of `user` for `alg`, asked at client-first; `client` is the
    /// connection (its user name is the CONNECT's, which is `user` when
    /// given). `Err` refuses the client (CONNACK 0x86), the text says why
    /// (logged, not sent): unknown user, an entry that cannot serve `alg`,
    /// a store that does not answer.
    async fn keys(&self, alg: ScramAlg, client: &ClientInfo, user: &str) -> Result<ScramKeys, String>;

    /// `user` proved the password, just before the success is sent.
    async fn authenticated(&self, _client: &ClientInfo, _user: &str) {}
}

/// Bytes of server nonce.
const NONCE_LEN: usize = 18;

/// A SCRAM method over a [`ScramSource`].
pub struct ScramMethod {
    alg: ScramAlg,
    source: Arc<dyn ScramSource>,
}

impl ScramMethod {
    /// `alg`'s method with the users of `source`.
    pub fn new(alg: ScramAlg, source: Arc<dyn ScramSource>) -> ScramMethod {
        ScramMethod { alg, source }
    }
}

impl AuthMethod for ScramMethod {
    fn name(&self) -> &str {
        self.alg.method()
    }

    fn start(&self, client: &ClientInfo) -> Box<dyn AuthExchange> {
        Box::new(Exchange {
            alg: self.alg,
            source: Arc::clone(&self.source),
            client: client.clone(),
            state: State::First,
        })
    }
}

enum State {
    First,
    Final {
        user: String,
        keys: ScramKeys,
        nonce: String,
        gs2_header: String,
        /// client-first-bare "," server-first
        auth_prefix: String,
    },
    Done,
}

struct Exchange {
    alg: ScramAlg,
    source: Arc<dyn ScramSource>,
    client: ClientInfo,
    state: State,
}

fn fail(why: impl Into<String>) -> AuthStep {
    AuthStep::Failure(why.into())
}

#[async_trait]
impl AuthExchange for Exchange {
    async fn step(&mut self, data: &[u8]) -> AuthStep {
        let state = std::mem::replace(&mut self.state, State::Done);
        let Ok(text) = std::str::from_utf8(data) else {
            return fail("SCRAM message is not UTF-8");
        };
        match state {
            State::First => self.client_first(text).await,
            State::Final {
                user,
                keys,
                nonce,
                gs2_header,
                auth_prefix,
            } => {
                let step = client_final(self.alg, text, &user, &keys, &nonce, (&gs2_header, &auth_prefix));
                if matches!(step, AuthStep::Success { .. }) {
                    self.source.authenticated(&self.client, &user).await;
                }
                step
            }
            State::Done => fail("SCRAM exchange already complete"),
        }
    }
}

impl Exchange {
    async fn client_first(&mut self, text: &str) -> AuthStep {
        let first = match parse_client_first(text) {
            Ok(f) => f,
            Err(why) => return fail(why),
        };
        if let Some(connect_user) = &self.client.username {
            if *connect_user != first.user {
                return fail(format!(
                    "SCRAM user {:?} is not the CONNECT user name {connect_user:?}",
                    first.user
                ));
            }
        }
        let keys = match self.source.keys(self.alg, &self.client, &first.user).await {
            Ok(keys) => keys,
            Err(why) => return fail(why),
        };
        let mut ours = [0u8; NONCE_LEN];
        if getrandom::getrandom(&mut ours).is_err() {
            return fail("no randomness for the server nonce");
        }
        let nonce = format!("{}{}", first.nonce, STANDARD.encode(ours));
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&keys.salt),
            keys.iterations
        );
        self.state = State::Final {
            user: first.user,
            keys,
            nonce,
            gs2_header: first.gs2_header.to_string(),
            auth_prefix: format!("{},{server_first}", first.bare),
        };
        AuthStep::Continue(Bytes::from(server_first))
    }
}

/// What client-first says.
struct ClientFirst<'a> {
    gs2_header: &'a str,
    bare: &'a str,
    user: String,
    nonce: &'a str,
}

fn parse_client_first(text: &str) -> Result<ClientFirst<'_>, &'static str> {
    // gs2-header: "n,," or "y,," (no channel binding, no authzid).
    let (gs2_header, bare) = match text.get(..3) {
        Some("n,," | "y,,") => (&text[..3], &text[3..]),
        _ => return Err("SCRAM client-first without a plain gs2 header (n,,): channel binding and authzid are not supported"),
    };
    let mut attrs = bare.split(',');
    let user = match attrs.next().and_then(|a| a.strip_prefix("n=")).and_then(unescape) {
        Some(u) if !u.is_empty() => u,
        _ => return Err("SCRAM client-first without a user name (n=)"),
    };
    let nonce = match attrs.next().and_then(|a| a.strip_prefix("r=")) {
        Some(n) if !n.is_empty() && n.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b',') => n,
        _ => return Err("SCRAM client-first without a nonce (r=)"),
    };
    Ok(ClientFirst {
        gs2_header,
        bare,
        user,
        nonce,
    })
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

/// Checks client-final against the keys; `(gs2_header, auth_prefix)`:
/// what client-first sent and `client-first-bare,server-first`.
fn client_final(
    alg: ScramAlg,
    text: &str,
    user: &str,
    keys: &ScramKeys,
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
    let signature = alg.hmac(&keys.stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return fail("SCRAM proof of the wrong length");
    }
    let claimed: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
    if !same(&alg.hash(&claimed), &keys.stored_key) {
        return fail(format!("wrong SCRAM proof for user {user:?}"));
    }
    let server_signature = alg.hmac(&keys.server_key, auth_message.as_bytes());
    AuthStep::Success {
        data: Some(Bytes::from(format!("v={}", STANDARD.encode(server_signature)))),
        username: Some(user.to_string()),
    }
}

#[cfg(test)]
mod tests;
