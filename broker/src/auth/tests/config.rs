//! `auth_file.conf` loading and the plugin's decisions on the hooks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hooks_spec::{AclAction, AclArgs, AclResult, AuthArgs, ClientInfo, Flow, ProtocolVersion};

use super::temp_dir;
use crate::auth::{authenticate, check_acl, AuthFileConfig, InForce, NoMatch, Stats};

/// `secret`, hashed by mosquitto_passwd.
const ALICE: &str = "alice:$7$101$k3j3KbNrhWR6L5pp$YcsRjdbOC1lWI2VaQVSAx6w0MFZ23Nlz9ZbL7V3fNsS4lIQrext0kfL+gcWpFviRX8i16ZjNyvbMxit4WbyCzg==\n";

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn load(files: &[(&str, &str)]) -> Result<AuthFileConfig, String> {
    let dir = temp_dir("conf");
    write(&dir, files);
    let r = AuthFileConfig::load(&dir.join("auth_file.conf")).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    r.map_err(|e| e.replace(&format!("{}/", dir.display()), ""))
}

#[test]
fn loads_files_relative_to_the_conf_file() {
    let cfg = load(&[
        (
            "auth_file.conf",
            "auth.file.password_file = passwd\nauth.file.acl_file = acl\nauth.file.acl_nomatch = ignore\n",
        ),
        ("passwd", ALICE),
        ("acl", "user alice\ntopic a/#\n"),
    ])
    .unwrap();
    assert_eq!(cfg.passwords.as_ref().unwrap().len(), 1);
    assert_eq!(cfg.acl.as_ref().unwrap().rule_count(), 1);
    assert_eq!(cfg.acl_nomatch, NoMatch::Ignore);
}

#[test]
fn the_shipped_files_load() {
    let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc");
    let read = |name: &str| std::fs::read_to_string(etc.join(name)).unwrap();
    let conf = read("auth_file.conf");
    let acl = read("acl");
    let cfg = load(&[("auth_file.conf", &conf), ("acl", &acl), ("passwd", "")]).unwrap();
    assert!(cfg.passwords.as_ref().unwrap().is_empty());
    assert_eq!(cfg.acl_nomatch, NoMatch::Deny);
    let acl = cfg.acl.unwrap();
    assert!(acl.users.contains_key("admin"));
    assert_eq!(
        acl.check("d1", Some("alice"), AclAction::Publish, "sensors/alice/kitchen"),
        crate::auth::acl_file::Decision::Allow
    );
}

#[test]
fn keys_are_optional_and_empty_values_turn_a_provider_off() {
    let cfg = load(&[("auth_file.conf", "# nothing\n")]).unwrap();
    assert!(cfg.passwords.is_none() && cfg.acl.is_none());
    assert_eq!(cfg.acl_nomatch, NoMatch::Deny);
    let cfg = load(&[(
        "auth_file.conf",
        "auth.file.password_file =\nauth.file.acl_file =\n",
    )])
    .unwrap();
    assert!(cfg.passwords.is_none() && cfg.acl.is_none());
}

#[test]
fn errors_name_the_conf_line_and_the_bad_file_line() {
    let e = load(&[
        ("auth_file.conf", "## x\nauth.file.acl_file = acl\n"),
        ("acl", "user a\ntopic read a/#/b\n"),
    ])
    .unwrap_err();
    assert!(
        e.starts_with("auth_file.conf:2: `auth.file.acl_file`: acl:2: `a/#/b` is not a valid topic filter"),
        "{e}"
    );

    let e = load(&[
        ("auth_file.conf", "auth.file.password_file = passwd\n"),
        ("passwd", "bob:plain\n"),
    ])
    .unwrap_err();
    assert!(
        e.starts_with("auth_file.conf:1: `auth.file.password_file`: passwd:1: user `bob`"),
        "{e}"
    );

    let e = load(&[("auth_file.conf", "auth.file.password_file = missing\n")]).unwrap_err();
    assert!(e.contains("missing: cannot read:"), "{e}");
    assert!(e.contains("postbox passwd -c"), "{e}");

    let e = load(&[("auth_file.conf", "auth.file.acl_nomatch = maybe\n")]).unwrap_err();
    assert!(
        e.contains(":1: `auth.file.acl_nomatch`: expected `deny`, `allow` or `ignore`, got `maybe`"),
        "{e}"
    );

    let e = load(&[("auth_file.conf", "auth.file.passwd = x\n")]).unwrap_err();
    assert!(e.contains(":1: `auth.file.passwd`: unknown key"), "{e}");
}

fn client(id: &str, username: Option<&str>) -> ClientInfo {
    ClientInfo {
        clientid: Arc::from(id),
        username: username.map(str::to_string),
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        protocol: ProtocolVersion::V311,
        clean_start: true,
        session_expiry: 0,
        keepalive: 30,
        cert_common_name: None,
    }
}

#[tokio::test]
async fn authentication_allows_denies_and_ignores() {
    let cfg =
        InForce::from(load(&[("auth_file.conf", "auth.file.password_file = p\n"), ("p", ALICE)]).unwrap());
    let auth = |user: Option<&str>, pw: Option<&str>| AuthArgs {
        client: client("c", user),
        password: pw.map(|p| Bytes::from(p.to_string())),
    };
    assert_eq!(
        authenticate(&cfg, &auth(Some("alice"), Some("secret")))
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(
        authenticate(&cfg, &auth(Some("alice"), Some("wrong")))
            .await
            .unwrap(),
        Some(false)
    );
    assert_eq!(
        authenticate(&cfg, &auth(Some("alice"), None)).await.unwrap(),
        Some(false)
    );
    assert_eq!(
        authenticate(&cfg, &auth(Some("bob"), Some("secret")))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        authenticate(&cfg, &auth(None, Some("secret"))).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn costly_hashes_are_verified_too() {
    let hash = crate::auth::password_file::PasswordHash::new_pbkdf2(b"pw", 2000).unwrap();
    assert!(hash.is_costly());
    let cfg = InForce::from(
        load(&[
            ("auth_file.conf", "auth.file.password_file = p\n"),
            ("p", &format!("u:{hash}\n")),
        ])
        .unwrap(),
    );
    let args = |pw: &str| AuthArgs {
        client: client("c", Some("u")),
        password: Some(Bytes::from(pw.to_string())),
    };
    assert_eq!(authenticate(&cfg, &args("pw")).await.unwrap(), Some(true));
    assert_eq!(authenticate(&cfg, &args("px")).await.unwrap(), Some(false));
}

#[test]
fn acl_nomatch_decides_what_no_rule_does() {
    let acl = "topic read open\ntopic deny shut\n";
    let args = |topic: &str| AclArgs {
        client: client("c", None),
        action: AclAction::Subscribe,
        topic: topic.to_string(),
    };
    let stats = Stats::default();
    for (nomatch, unmatched) in [
        ("deny", Flow::Stop(AclResult::Deny)),
        ("allow", Flow::Stop(AclResult::Allow)),
        ("ignore", Flow::Continue(AclResult::Allow)),
    ] {
        let conf = format!("auth.file.acl_file = acl\nauth.file.acl_nomatch = {nomatch}\n");
        let cfg = InForce::from(load(&[("auth_file.conf", &conf), ("acl", acl)]).unwrap());
        let run = |topic: &str| check_acl(&cfg, &stats, &args(topic), AclResult::Allow);
        assert_eq!(run("open"), Flow::Stop(AclResult::Allow), "{nomatch}");
        assert_eq!(run("shut"), Flow::Stop(AclResult::Deny), "{nomatch}");
        assert_eq!(run("other"), unmatched, "{nomatch}");
    }
}
