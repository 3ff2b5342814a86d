//! A whole client connection fed arbitrary bytes (the first byte picks a valid
//! CONNECT to put in front): the broker must close it in bounded time without
//! a panic, and keep serving well-formed clients.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postbox_fuzz::connection(data));
