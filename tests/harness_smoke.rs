#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]
//! Smoke test of the test harness itself: needs PostgreSQL (POSTBOX_TEST_PG),
//! not the broker.

mod support;

use support::{pg_admin_url, pg_connect, pg_url_with_db, temp_dir, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_db_create_use_and_drop() {
    let db = TestDb::create().await;
    assert!(db.name.starts_with("postbox_t_"), "{}", db.name);
    assert!(db.url.ends_with(&format!("/{}", db.name)), "{}", db.url);

    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO t (id, v) VALUES ($1, $2), ($3, $4)",
            &[&1i32, &"one", &2i32, &"two"],
        )
        .await
        .unwrap();
    let rows = client
        .query("SELECT id, v FROM t ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, "one".to_string()), (2, "two".to_string())]);
    let current: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, db.name);
    assert_eq!(db.query_one_i64("SELECT count(*) FROM t").await, 2);

    // Drop while a connection to the database is still open: WITH (FORCE)
    // must still remove it.
    let name = db.name.clone();
    drop(db);
    let admin = pg_connect(&pg_admin_url()).await;
    let n: i64 = admin
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "database {name} still exists after drop");
    drop(client);
}

#[tokio::test]
async fn test_db_drop_works_from_current_thread_runtime() {
    let name = {
        let db = TestDb::create().await;
        db.batch_execute("CREATE TABLE x (a int); INSERT INTO x VALUES (1)")
            .await;
        db.name.clone()
    };
    let admin = pg_connect(&pg_admin_url()).await;
    let n: i64 = admin
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[test]
fn url_and_temp_dir_helpers() {
    assert_eq!(
        pg_url_with_db("postgres://postgres@127.0.0.1:5432/postgres", "abc"),
        "postgres://postgres@127.0.0.1:5432/abc"
    );
    assert_eq!(
        pg_url_with_db("postgres://u:p@h:1/db?sslmode=disable", "x"),
        "postgres://u:p@h:1/x?sslmode=disable"
    );
    assert_eq!(pg_url_with_db("postgres://h:1", "x"), "postgres://h:1/x");
    let a = temp_dir("smoke");
    let b = temp_dir("smoke");
    assert_ne!(a, b);
    assert!(a.is_dir() && b.is_dir());
    std::fs::remove_dir_all(a).unwrap();
    std::fs::remove_dir_all(b).unwrap();
}

#[test]
fn raw_encoders() {
    let c = support::connect_v4_bytes("c1", true, 30);
    assert_eq!(
        c,
        vec![0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 2, b'c', b'1']
    );
    let c5 = support::connect_v5_bytes("c1", false, 60);
    assert_eq!(
        c5,
        vec![0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x00, 0, 60, 0, 0, 2, b'c', b'1']
    );
    let big = support::packet(0x30, &[0u8; 200]);
    assert_eq!(&big[..3], &[0x30, 0xC8, 0x01]);
    assert_eq!(support::packet_type(&big), support::ptype::PUBLISH);
}
