//! Operating the broker, with the real `postbox` binary: `$SYS` under
//! Mosquitto's names moving with traffic (`sys`), one log line per connect
//! and per disconnect with its reason, as text or JSON (`logs`), and the
//! packaging: `postbox --version` and the example configs of
//! `etc/examples/`, started as they are shipped (`packaging`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

#[path = "../support/mod.rs"]
mod support;

mod logs;
mod packaging;
mod sys;
