//! Reloading the password and ACL files (what SIGHUP does).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hooks_spec::{
    AclAction, AclArgs, AclResult, AuthArgs, ClientInfo, Flow, Plugin, PluginError, ProtocolVersion,
};

use super::temp_dir;
use crate::auth::{authenticate, check_acl, AuthFile, AuthFileConfig, InForce, Stats};

/// `secret`, hashed by mosquitto_passwd.
const SECRET: &str = "$7$101$k3j3KbNrhWR6L5pp$YcsRjdbOC1lWI2VaQVSAx6w0MFZ23Nlz9ZbL7V3fNsS4lIQrext0kfL+gcWpFviRX8i16ZjNyvbMxit4WbyCzg==";

const CONF: &str = "auth.file.password_file = passwd\nauth.file.acl_file = acl\n";

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// A directory with `auth_file.conf`, a password file with `users` and an ACL file.
fn setup(users: &[&str], acl: &str) -> std::path::PathBuf {
    let dir = temp_dir("reload");
    write(&dir, "auth_file.conf", CONF);
    write(&dir, "passwd", &passwd(users));
    write(&dir, "acl", acl);
    dir
}

fn passwd(users: &[&str]) -> String {
    users.iter().map(|u| format!("{u}:{SECRET}\n")).collect()
}

fn client(username: &str) -> ClientInfo {
    ClientInfo {
        clientid: Arc::from("c"),
        username: Some(username.to_string()),
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        protocol: ProtocolVersion::V311,
        clean_start: true,
        session_expiry: 0,
        keepalive: 30,
        cert_common_name: None,
    }
}

/// What the password file says about `user` logging in with `secret`.
async fn login(state: &InForce, user: &str) -> Option<bool> {
    let args = AuthArgs {
        client: client(user),
        password: Some(Bytes::from_static(b"secret")),
    };
    authenticate(state, &args).await.unwrap()
}

/// Whether the ACL lets `user` subscribe to `filter`.
fn may_subscribe(state: &InForce, user: &str, filter: &str) -> bool {
    let args = AclArgs {
        client: client(user),
        action: AclAction::Subscribe,
        topic: filter.to_string(),
    };
    check_acl(state, &Stats::default(), &args, AclResult::Allow) == Flow::Stop(AclResult::Allow)
}

fn load(dir: &Path) -> InForce {
    InForce::from(AuthFileConfig::load(&dir.join("auth_file.conf")).unwrap())
}

#[tokio::test]
async fn good_files_replace_the_ones_in_force() {
    let dir = setup(&["alice"], "user alice\ntopic read a/#\n");
    let state = load(&dir);
    assert_eq!(login(&state, "bob").await, None);

    write(&dir, "passwd", &passwd(&["bob"]));
    write(&dir, "acl", "user alice\ntopic read b/#\n");
    assert!(state.reload().is_empty());
    assert_eq!(login(&state, "bob").await, Some(true));
    assert_eq!(login(&state, "alice").await, None);
    assert!(may_subscribe(&state, "alice", "b/x"));
    assert!(!may_subscribe(&state, "alice", "a/x"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_file_keeps_the_old_one_and_the_other_file_still_reloads() {
    let dir = setup(&["alice"], "user alice\ntopic read a/#\n");
    let state = load(&dir);

    write(&dir, "passwd", &format!("{}bob:plain\n", passwd(&["alice"])));
    write(&dir, "acl", "user alice\ntopic read b/#\n");
    let errors = state.reload();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("/passwd:2: user `bob`") && errors[0].contains("stays in force"),
        "{errors:?}"
    );
    assert_eq!(login(&state, "alice").await, Some(true));
    assert!(may_subscribe(&state, "alice", "b/x"));

    write(&dir, "passwd", &passwd(&["alice", "bob"]));
    write(&dir, "acl", "user alice\ntopic read c/#\ntopik d\n");
    let errors = state.reload();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("/acl:3: unknown keyword `topik`"),
        "{errors:?}"
    );
    assert_eq!(login(&state, "bob").await, Some(true));
    assert!(may_subscribe(&state, "alice", "b/x"));
    assert!(!may_subscribe(&state, "alice", "c/x"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_plugin_reports_every_file_it_kept() {
    let dir = setup(&["alice"], "user alice\ntopic read a/#\n");
    let mut plugin = AuthFile::new();
    plugin.load_config(&dir.join("auth_file.conf")).unwrap();
    assert!(plugin.reload().await.is_ok());

    std::fs::remove_file(dir.join("passwd")).unwrap();
    write(&dir, "acl", "pattern read x/%c/#/y\n");
    let message = match plugin.reload().await {
        Err(PluginError::Reload(m)) => m,
        other => panic!("expected a reload error, got {other:?}"),
    };
    assert!(message.contains("/passwd: cannot read:"), "{message}");
    assert!(
        message.contains("/acl:1: `x/%c/#/y` is not a valid topic filter"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
