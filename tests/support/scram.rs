//! The client side of SCRAM (RFC 5802/7677) computed byte by byte with the
//! sha2/hmac/pbkdf2 crates, and the raw MQTT 5 CONNECT/AUTH packets that
//! carry it (tests/enhanced_auth.rs, tests/pgsql_scram.rs).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use super::*;

pub fn prop_str(id: u8, v: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
}

/// Authentication Method and Data as a property section.
pub fn auth_props(method: &str, data: Option<&[u8]>) -> Vec<u8> {
    let mut p = Vec::new();
    prop_str(0x15, method.as_bytes(), &mut p);
    if let Some(d) = data {
        prop_str(0x16, d, &mut p);
    }
    let mut out = Vec::new();
    encode_varint(p.len(), &mut out);
    out.extend_from_slice(&p);
    out
}

/// An MQTT 5 CONNECT (clean start, keep alive 30) with these properties.
pub fn connect(client_id: &str, username: Option<&str>, props: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.push(5);
    body.push(if username.is_some() { 0x82 } else { 0x02 });
    body.extend_from_slice(&30u16.to_be_bytes());
    body.extend_from_slice(props);
    encode_str(client_id, &mut body);
    if let Some(u) = username {
        encode_str(u, &mut body);
    }
    packet(0x10, &body)
}

pub fn auth(reason: u8, method: &str, data: &[u8]) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend_from_slice(&auth_props(method, Some(data)));
    packet(0xF0, &body)
}

/// The property section after `skip` bytes of variable header: (id, value)
/// for the string and binary properties (others are not expected here).
pub fn props(p: &[u8], skip: usize) -> Vec<(u8, Vec<u8>)> {
    let hdr = 1 + p[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    let body = &p[hdr + skip..];
    let (mut len, mut i, mut shift) = (0usize, 0usize, 0);
    loop {
        len |= usize::from(body[i] & 0x7F) << shift;
        i += 1;
        if body[i - 1] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut section = &body[i..i + len];
    let mut out = Vec::new();
    while let Some((&id, rest)) = section.split_first() {
        match id {
            0x15 | 0x16 | 0x1C | 0x1F | 0x12 | 0x1A => {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                out.push((id, rest[2..2 + n].to_vec()));
                section = &rest[2 + n..];
            }
            0x11 | 0x27 => section = &rest[4..],
            0x13 | 0x21 | 0x22 => section = &rest[2..],
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => section = &rest[1..],
            other => panic!("unexpected property 0x{other:02x} in {p:02x?}"),
        }
    }
    out
}

pub fn prop(props: &[(u8, Vec<u8>)], id: u8) -> Option<Vec<u8>> {
    props.iter().find(|(i, _)| *i == id).map(|(_, v)| v.clone())
}

/// The SCRAM hash: SHA-512 (`true`) or SHA-256.
#[derive(Clone, Copy)]
pub struct Alg(pub bool);

pub const SHA512: Alg = Alg(true);
pub const SHA256: Alg = Alg(false);

impl Alg {
    pub fn method(self) -> &'static str {
        if self.0 {
            "SCRAM-SHA-512"
        } else {
            "SCRAM-SHA-256"
        }
    }

    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        if self.0 {
            let mut m = Hmac::<Sha512>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        } else {
            let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        if self.0 {
            Sha512::digest(data).to_vec()
        } else {
            Sha256::digest(data).to_vec()
        }
    }

    pub fn salted(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        if self.0 {
            let mut out = [0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
            out.to_vec()
        } else {
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
            out.to_vec()
        }
    }
}

/// The client side of one SCRAM exchange.
pub struct Scram {
    alg: Alg,
    password: String,
    bare: String,
    auth_message: String,
    salted: Vec<u8>,
    /// The salt server-first sent.
    pub salt: Vec<u8>,
    /// The iteration count server-first sent.
    pub iterations: u32,
}

impl Scram {
    pub fn first(user: &str, password: &str, nonce: &str) -> (Scram, String) {
        Scram::first_with(SHA512, user, password, nonce)
    }

    pub fn first_with(alg: Alg, user: &str, password: &str, nonce: &str) -> (Scram, String) {
        let bare = format!("n={user},r={nonce}");
        let s = Scram {
            alg,
            password: password.into(),
            bare: bare.clone(),
            auth_message: String::new(),
            salted: Vec::new(),
            salt: Vec::new(),
            iterations: 0,
        };
        (s, format!("n,,{bare}"))
    }

    /// client-final for the server-first (whose salt and iterations it
    /// keeps in `salt` / `iterations`), checking the server's nonce extends ours.
    pub fn last(&mut self, server_first: &str, client_nonce: &str) -> String {
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for attr in server_first.split(',') {
            match attr.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = STANDARD.decode(v).unwrap(),
                ("i=", v) => iterations = v.parse().unwrap(),
                other => panic!("unexpected attribute {other:?} in {server_first}"),
            }
        }
        assert!(
            nonce.starts_with(client_nonce) && nonce.len() > client_nonce.len(),
            "{server_first}"
        );
        self.salted = self.alg.salted(self.password.as_bytes(), &salt, iterations);
        (self.salt, self.iterations) = (salt, iterations);
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let client_key = self.alg.hmac(&self.salted, b"Client Key");
        let stored_key = self.alg.hash(&client_key);
        let signature = self.alg.hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        format!("{without_proof},p={}", STANDARD.encode(proof))
    }

    /// The hash.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The server-final the server must send.
    pub fn expected_final(&self) -> Vec<u8> {
        let server_key = self.alg.hmac(&self.salted, b"Server Key");
        let signature = self.alg.hmac(&server_key, self.auth_message.as_bytes());
        format!("v={}", STANDARD.encode(signature)).into_bytes()
    }
}

/// Reads an AUTH 0x18 and returns its data, checking the method.
pub async fn read_continue_for(raw: &mut RawClient, method: &str) -> String {
    let p = raw.read_packet().await.expect("AUTH");
    assert_eq!(packet_type(&p), ptype::AUTH, "{p:02x?}");
    // A 1-byte remaining length here: the reason code is at 2.
    assert_eq!(p[2], 0x18, "{p:02x?}");
    let props = props(&p, 1);
    assert_eq!(prop(&props, 0x15).as_deref(), Some(method.as_bytes()));
    String::from_utf8(prop(&props, 0x16).expect("authentication data")).unwrap()
}
