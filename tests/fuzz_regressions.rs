//! The fuzz targets' inputs, replayed on stable without fuzzing flags: every
//! seed in `fuzz/corpus/<target>/` and every input that once crashed, kept in
//! `fuzz/regressions/<target>/`, goes through the same code as the libFuzzer
//! target (`fuzz/src/lib.rs`, included below), so CI catches a regression.
//!
//! `cargo test -p postbox-broker --test fuzz_regressions -- --ignored write_seed_corpus`
//! regenerates the seed corpus from `fuzz/src/lib.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

#[path = "../fuzz/src/lib.rs"]
mod fuzz;

/// `fuzz/` of this checkout.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none when it does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> Vec<u8> {
    match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Panics anywhere in the process, broker tasks included (tokio catches a
/// task's panic, so the replay would not see it otherwise; under libFuzzer
/// the panic hook aborts instead).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The connection tests share one broker, whose health check wants no other
/// client connected: they take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

#[test]
fn decode_packet_replays_corpus_and_regressions() {
    let seeds = inputs("corpus", "decode_packet");
    assert!(!seeds.is_empty(), "fuzz/corpus/decode_packet is empty");
    for path in seeds.iter().chain(&inputs("regressions", "decode_packet")) {
        let data = read(path);
        if std::panic::catch_unwind(|| fuzz::decode_packet(&data)).is_err() {
            panic!("decode_packet panics on {}", path.display());
        }
    }
}

#[test]
fn connection_replays_corpus_and_regressions() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    count_panics();
    let seeds = inputs("corpus", "connection");
    assert!(!seeds.is_empty(), "fuzz/corpus/connection is empty");
    for path in seeds.iter().chain(&inputs("regressions", "connection")) {
        let data = read(path);
        let before = PANICS.load(Ordering::SeqCst);
        let replay = std::panic::catch_unwind(|| {
            fuzz::connection(&data);
            // The health check after every input, not every 256th as in fuzzing.
            fuzz::health_check_now();
        });
        assert!(
            replay.is_ok() && PANICS.load(Ordering::SeqCst) == before,
            "the connection target panics on {}",
            path.display()
        );
    }
}

/// The connection seeds get past the handshake: each valid CONNECT is
/// answered with a successful CONNACK (the denied user, and the
/// authentication method nobody offers, with a refusal), and a
/// session's PINGREQ with PINGRESP.
#[test]
fn connection_seeds_reach_the_session() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    count_panics();
    for (name, data) in fuzz::seeds::connection_corpus() {
        let outputs = fuzz::connection_outputs(&data);
        let out = outputs.first().cloned().unwrap_or_default();
        if name.ends_with("-close") || name.starts_with("raw-not") || name == "raw-empty" {
            continue;
        }
        if name.starts_with("multi-") {
            assert!(outputs.len() > 1, "{name}: one connection");
            for o in &outputs {
                // CONNACK (0x20, one length byte, flags, code 0).
                let accepted = o.first() == Some(&0x20) && o.get(3) == Some(&0);
                assert!(accepted, "{name}: CONNACK expected in {o:02x?}");
            }
            continue;
        }
        let denied = name.contains("-denied");
        // CONNACK: 0x20, length, flags, code (0 = accepted on both versions).
        let code = out.get(3).copied();
        assert_eq!(out.first(), Some(&0x20), "{name}: no CONNACK in {out:02x?}");
        assert_eq!(code == Some(0), !denied, "{name}: CONNACK {out:02x?}");
        if !denied {
            assert!(
                out.windows(2).any(|w| w == [0xD0, 0x00]),
                "{name}: no PINGRESP in {out:02x?}"
            );
        }
    }
}

/// Every valid seed decodes as what it is: the seeds exercise the decoder,
/// not only its error paths.
#[test]
fn seed_packets_decode() {
    use fuzz::seeds;
    use hooks_spec::ProtocolVersion;
    use postbox::codec::{decode_connect, Codec};
    for (name, bytes) in seeds::decode_corpus() {
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let decoded = if name.contains("-connect") {
            decode_connect(&mut buf, usize::MAX).map(|c| c.is_some())
        } else if name.contains("-auth") {
            continue; // AUTH is refused by design (no enhanced authentication).
        } else {
            let protocol = if name.starts_with("v5-") {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V311
            };
            Codec::new(protocol, usize::MAX)
                .decode(&mut buf)
                .map(|p| p.is_some())
        };
        assert!(matches!(decoded, Ok(true)), "seed {name}: {decoded:?}");
        assert!(buf.is_empty(), "seed {name} has bytes after its packet");
    }
}

/// Writes the seed corpus (`fuzz/corpus/<target>/<name>`), replacing what is there.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after changing the seeds"]
fn write_seed_corpus() {
    for (target, files) in [
        ("decode_packet", fuzz::seeds::decode_corpus()),
        ("connection", fuzz::seeds::connection_corpus()),
    ] {
        let dir = fuzz_dir().join("corpus").join(target);
        for old in inputs("corpus", target) {
            if let Err(e) = std::fs::remove_file(&old) {
                panic!("{}: {e}", old.display());
            }
        }
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("{}: {e}", dir.display());
        }
        for (name, bytes) in files {
            let path = dir.join(name);
            if let Err(e) = std::fs::write(&path, bytes) {
                panic!("{}: {e}", path.display());
            }
        }
    }
}
