//! Arbitrary bytes through the MQTT codec (3.1, 3.1.1, 5.0 and CONNECT):
//! no panic, and whatever decodes re-encodes to the same packet.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postbox_fuzz::decode_packet(data));
