//! Deterministic fuzzing: random and mutated valid byte strings must never make
//! decoding panic, and whatever decodes must survive an encode / decode cycle.

use bytes::BytesMut;
use hooks_spec::ProtocolVersion;

use super::tests::{decode_one, encode, samples};
use super::*;

const ITERATIONS: usize = 200_000;

use crate::test_rng::Rng;

/// Bytes biased towards the values that matter in MQTT headers.
trait ByteSource {
    fn byte(&mut self) -> u8;
}

impl ByteSource for Rng {
    fn byte(&mut self) -> u8 {
        match self.below(4) {
            0 => [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF][self.below(6)],
            _ => self.next() as u8,
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.byte();
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.below(input.len() + 1);
                let b = rng.byte();
                input.insert(i, b);
            }
            3 if !input.is_empty() => {
                let i = rng.below(input.len());
                input.remove(i);
            }
            4 => {
                let n = rng.below(input.len() + 1);
                input.truncate(n);
            }
            _ => {
                // Rewrite the remaining length to something plausible.
                if input.len() > 1 {
                    input[1] = (input.len().saturating_sub(2) as u8)
                        .wrapping_add(rng.below(3) as u8)
                        .wrapping_sub(1);
                }
            }
        }
    }
}

/// Decodes everything in `bytes` as a connection would; checks that decoded
/// packets re-encode to something that decodes to the same packet.
fn exercise(protocol: ProtocolVersion, bytes: &[u8], max: usize) {
    let codec = Codec::new(protocol, max);
    let mut buf = BytesMut::from(bytes);
    let _ = decode_connect(&mut buf.clone(), max);
    for _ in 0..8 {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(p)) => {
                if matches!(p, Packet::Disconnect(_)) && protocol != ProtocolVersion::V5 {
                    continue;
                }
                let mut out = BytesMut::new();
                codec
                    .encode(&p, &mut out, None)
                    .unwrap_or_else(|e| panic!("re-encode {p:?}: {e}"));
                let again = decode_one(protocol, &mut out).unwrap_or_else(|e| panic!("{p:?} -> {e}"));
                assert_eq!(again.as_ref(), Some(&p));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                break;
            }
            Err(_) => break,
        }
    }
}

#[test]
fn fuzz_decoders_never_panic() {
    let mut corpus: Vec<(ProtocolVersion, Vec<u8>)> = Vec::new();
    for protocol in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for p in samples(protocol) {
            let wire = match &p {
                Packet::Connect(c) => c.protocol,
                _ => protocol,
            };
            corpus.push((protocol, encode(wire, &p).to_vec()));
        }
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let protocols = [ProtocolVersion::V311, ProtocolVersion::V5, ProtocolVersion::V31];
    for i in 0..ITERATIONS {
        let input = match i % 4 {
            0 => (0..rng.below(48)).map(|_| rng.byte()).collect(),
            1 => {
                // A valid packet followed by another, both possibly mutated.
                let (_, a) = &corpus[rng.below(corpus.len())];
                let (_, b) = &corpus[rng.below(corpus.len())];
                let mut v = a.clone();
                v.extend_from_slice(b);
                mutate(&mut rng, &mut v);
                v
            }
            _ => {
                let (_, a) = &corpus[rng.below(corpus.len())];
                let mut v = a.clone();
                mutate(&mut rng, &mut v);
                v
            }
        };
        let max = if rng.below(8) == 0 { rng.below(64) } else { 1 << 16 };
        for protocol in protocols {
            exercise(protocol, &input, max);
        }
        // A CONNECT, then what follows in its protocol.
        let mut buf = BytesMut::from(&input[..]);
        if let Ok(Some(c)) = decode_connect(&mut buf, max) {
            let packet = Packet::Connect(Box::new(c.clone()));
            let mut out = BytesMut::new();
            Codec::new(c.protocol, max)
                .encode(&packet, &mut out, None)
                .unwrap();
            let again = decode_connect(&mut out, usize::MAX).unwrap_or_else(|e| panic!("{c:?} -> {e}"));
            assert_eq!(again.as_ref(), Some(&c));
            exercise(c.protocol, &buf, max);
        }
    }
}
