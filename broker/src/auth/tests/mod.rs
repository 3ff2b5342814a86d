//! Unit tests of the `auth_file` plugin: parsing, matching, hashing, the
//! passwd command's file handling, and the plugin's decisions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acl_file;
mod config;
mod passwd_cli;
mod password_file;
mod reload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh empty directory under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("postbox-auth-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
