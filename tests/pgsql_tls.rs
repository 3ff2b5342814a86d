//! TLS between the plugin and PostgreSQL (`backend.pgsql.<pool>.ssl`).
//! The test server runs with `ssl = on` (Debian's clusters do;
//! scripts/ensure-postgres turns it on for a private one).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use rumqttc::QoS;
use support::pgsql::*;
use support::*;

fn tls_conf(db: &TestDb, ssl_lines: &str) -> String {
    format!(
        "backend.pgsql.pool1.server = {}\nbackend.pgsql.pool1.pool_size = 2\nbackend.pgsql.pool1.username = postgres\nbackend.pgsql.pool1.database = {}\nbackend.pgsql.pool1.ssl = true\n{ssl_lines}\n{EMQX_DEFAULT_RULES}\n",
        pg_server(),
        db.name
    )
}

#[tokio::test]
async fn the_plugin_connects_over_tls_and_stores() {
    let db = TestDb::create().await;
    let admin = db.client().await;
    let server_ssl: String = admin.query_one("show ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        server_ssl, "on",
        "the test PostgreSQL must run with ssl = on (scripts/ensure-postgres sets it up)"
    );
    let conf = tls_conf(&db, "backend.pgsql.pool1.ssl.verify = false");
    let broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let (mut c, _) = V4Client::connect(v4_options(broker.addr, "tls-client", true)).await;
    c.publish("tls/t", QoS::AtLeastOnce, false, "over tls").await;
    let stored: i64 = admin
        .query_one("select count(*) from mqtt_msg", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    let encrypted: i64 = admin
        .query_one(
            "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid)
             where a.datname = current_database() and a.application_name = 'postbox' and s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let plain: i64 = admin
        .query_one(
            "select count(*) from pg_stat_ssl s join pg_stat_activity a using (pid)
             where a.datname = current_database() and a.application_name = 'postbox' and not s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        encrypted >= 1 && plain == 0,
        "plugin connections: {encrypted} encrypted, {plain} plain"
    );
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_refuses_startup() {
    let db = TestDb::create().await;
    // A CA file that did not sign the server's certificate: this very file is a
    // fresh self-signed certificate made for the test.
    let dir = temp_dir("tls-ca");
    let ca = dir.join("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "1",
            "-nodes",
            "-subj",
            "/CN=not-the-server",
        ])
        .args([
            "-keyout",
            dir.join("k.pem").to_str().unwrap(),
            "-out",
            ca.to_str().unwrap(),
        ])
        .output()
        .expect("openssl");
    assert!(made.status.success());
    let conf = tls_conf(
        &db,
        &format!("backend.pgsql.pool1.ssl.cacertfile = {}", ca.display()),
    );
    let (status, out) =
        Broker::start_expect_failure("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)])
            .await;
    assert!(!status.success());
    assert!(
        out.contains("cannot reach PostgreSQL at") && out.contains(&pg_server()),
        "{out}"
    );
    assert!(
        out.to_lowercase().contains("certificate"),
        "the reason is the certificate: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn verify_without_a_ca_file_is_a_clear_startup_error() {
    let db = TestDb::create().await;
    let conf = tls_conf(&db, "");
    let (status, out) =
        Broker::start_expect_failure("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)])
            .await;
    assert!(!status.success());
    assert!(out.contains("ssl.verify = true needs ssl.cacertfile"), "{out}");
}
