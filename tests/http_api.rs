//! The HTTP listener (`management.listener.http`): `/metrics` moves with
//! traffic, `/status`, the management API `/api/v4` (auth, clients, paging,
//! kick, subscriptions, publish, the OpenAPI document), graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use support::http::*;
use support::*;

async fn broker() -> Broker {
    Broker::start(HTTP_CONF).await
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let b = broker().await;
    let http = b.http_addr().await;
    let before = scrape(http).await;
    assert_eq!(value(&before, "postbox_connections"), 0.0);

    let (mut sub, _) = V4Client::connect(v4_options(b.addr, "m-sub", true)).await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = V4Client::connect(v4_options(b.addr, "m-pub", true)).await;
    const N: usize = 25;
    for i in 0..N {
        publ.publish_acked(&format!("m/{i}"), QoS::AtLeastOnce, false, "x")
            .await;
    }
    for _ in 0..N {
        sub.next_publish().await;
    }
    // No subscriber: dropped, by reason.
    publ.publish_acked("nobody/here", QoS::AtLeastOnce, false, "x")
        .await;

    let after = scrape(http).await;
    let moved = |key: &str| value(&after, key) - value(&before, key);
    assert_eq!(
        moved("postbox_messages_received_total{qos=\"1\"}"),
        (N + 1) as f64
    );
    assert_eq!(moved("postbox_messages_sent_total{qos=\"1\"}"), N as f64);
    assert_eq!(moved("postbox_messages_received_total{qos=\"0\"}"), 0.0);
    assert_eq!(
        moved("postbox_messages_dropped_total{reason=\"no_subscribers\"}"),
        1.0
    );
    assert_eq!(value(&after, "postbox_connections"), 2.0);
    assert_eq!(value(&after, "postbox_sessions"), 2.0);
    assert_eq!(value(&after, "postbox_subscriptions"), 1.0);
    // Each PUBLISH "m/NN" + "x" is more than 8 bytes, each way.
    assert!(
        moved("postbox_received_bytes_total") > (8 * N) as f64,
        "{after:?}"
    );
    assert!(moved("postbox_sent_bytes_total") > (8 * N) as f64, "{after:?}");
    // The text format: TYPE lines with _total counters and seconds histograms.
    let text = request(http, "GET", "/metrics", None, None).await.body;
    assert!(
        text.contains("# TYPE postbox_messages_received_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE postbox_hook_callback_duration_seconds histogram"),
        "{text}"
    );
}

#[tokio::test]
async fn status_answers_running_and_the_api_needs_credentials() {
    let b = broker().await;
    let http = b.http_addr().await;
    let status = request(http, "GET", "/status", None, None).await;
    assert_eq!(status.status, 200);
    assert!(
        status.body.contains("Node postbox@127.0.0.1 is started"),
        "{}",
        status.body
    );
    assert!(status.body.contains("postbox is running"), "{}", status.body);

    let none = request(http, "GET", "/api/v4/clients", None, None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["code"], 103);
    let wrong = request(http, "GET", "/api/v4/clients", Some(("admin", "public")), None).await;
    assert_eq!(wrong.status, 401);
    let right = get(http, "/api/v4/clients").await;
    assert_eq!(right.status, 200, "{}", right.body);
    assert_eq!(right.json()["code"], 0);

    let doc = get(http, "/api/v4/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.json()["paths"]["/api/v4/clients/{clientid}"]["delete"].is_object());
    let nodes = get(http, "/api/v4/nodes").await.json();
    assert_eq!(nodes["data"][0]["node"], "postbox@127.0.0.1");
    assert_eq!(nodes["data"][0]["node_status"], "Running");
}

#[tokio::test]
async fn clients_are_listed_paged_searched_and_kicked() {
    let b = broker().await;
    let http = b.http_addr().await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut opts = v4_options(b.addr, &format!("dev-{i}"), true);
        opts.set_credentials(if i == 3 { "carol" } else { "other" }, "pw");
        let (mut c, _) = V4Client::connect(opts).await;
        c.subscribe(&format!("devices/{i}/#"), QoS::AtLeastOnce).await;
        clients.push(c);
    }
    let page = get(http, "/api/v4/clients?_page=2&_limit=2").await.json();
    assert_eq!(page["meta"]["count"], 5);
    assert_eq!(page["meta"]["page"], 2);
    assert_eq!(page["meta"]["limit"], 2);
    assert_eq!(page["meta"]["hasnext"], true);
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["clientid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dev-2", "dev-3"]);
    assert_eq!(page["data"][0]["connected"], true);
    assert_eq!(page["data"][0]["subscriptions_cnt"], 1);
    assert_eq!(page["data"][0]["proto_ver"], 4);

    let carol = get(http, "/api/v4/clients?username=carol").await.json();
    assert_eq!(carol["meta"]["count"], 1);
    assert_eq!(carol["data"][0]["clientid"], "dev-3");
    let by_id = get(http, "/api/v4/clients/dev-4").await.json();
    assert_eq!(by_id["data"][0]["username"], "other");
    assert_eq!(get(http, "/api/v4/clients/nobody").await.status, 404);
    assert_eq!(get(http, "/api/v4/clients?_limit=0").await.status, 400);

    let subs = get(http, "/api/v4/subscriptions/dev-1").await.json();
    assert_eq!(subs["data"][0]["topic"], "devices/1/#");
    assert_eq!(subs["data"][0]["qos"], 1);
    let all = get(http, "/api/v4/subscriptions?_limit=3").await.json();
    assert_eq!(all["meta"]["count"], 5);
    assert_eq!(all["data"].as_array().unwrap().len(), 3);

    // Kick: the client's connection closes; the others stay.
    let kicked = request(
        http,
        "DELETE",
        "/api/v4/clients/dev-0",
        Some(("admin", "s3cret")),
        None,
    )
    .await;
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    assert_eq!(kicked.json()["code"], 0);
    let mut first = clients.remove(0);
    first.expect_disconnected().await;
    b.wait_for_log("client disconnected clientid=dev-0").await;
    assert!(
        b.logs()
            .lines()
            .any(|l| l.contains("client disconnected clientid=dev-0") && l.contains("reason=kicked")),
        "the log names the kick"
    );
    let left = get(http, "/api/v4/clients?conn_state=connected").await.json();
    assert_eq!(left["meta"]["count"], 4);
    let again = request(
        http,
        "DELETE",
        "/api/v4/clients/dev-0",
        Some(("admin", "s3cret")),
        None,
    )
    .await;
    assert_eq!(again.status, 404);
}

#[tokio::test]
async fn publish_through_the_api_reaches_subscribers() {
    let b = broker().await;
    let http = b.http_addr().await;
    let (mut sub, _) = V4Client::connect(v4_options(b.addr, "api-sub", true)).await;
    sub.subscribe("cmd/#", QoS::AtLeastOnce).await;
    let body = r#"{"topic":"cmd/1","payload":"aGVsbG8=","encoding":"base64","qos":1}"#;
    let a = request(
        http,
        "POST",
        "/api/v4/mqtt/publish",
        Some(("admin", "s3cret")),
        Some(body),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["code"], 0);
    let p = sub.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("cmd/1", &b"hello"[..], QoS::AtLeastOnce)
    );

    let retained = r#"{"topic":"cmd/r","payload":"kept","retain":true}"#;
    let a = request(
        http,
        "POST",
        "/api/v4/mqtt/publish",
        Some(("admin", "s3cret")),
        Some(retained),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(&sub.next_publish().await.payload[..], b"kept");
    let (mut late, _) = V4Client::connect(v4_options(b.addr, "api-late", true)).await;
    late.subscribe("cmd/r", QoS::AtMostOnce).await;
    assert_eq!(&late.next_publish().await.payload[..], b"kept");

    for (bad, status) in [
        (r#"{"payload":"x"}"#, 400),
        (r#"{"topic":"a/+","payload":"x"}"#, 400),
        (r#"{"topic":"a","qos":3}"#, 400),
        ("not json", 400),
    ] {
        let a = request(
            http,
            "POST",
            "/api/v4/mqtt/publish",
            Some(("admin", "s3cret")),
            Some(bad),
        )
        .await;
        assert_eq!(a.status, status, "{bad}: {}", a.body);
        assert_ne!(a.json()["code"], 0);
    }
    sub.expect_no_publish(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_http_listener_stops_with_the_broker() {
    let mut b = broker().await;
    let http = b.http_addr().await;
    assert_eq!(request(http, "GET", "/status", None, None).await.status, 200);
    assert!(b.terminate().await.success());
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test]
async fn a_bad_management_key_stops_startup() {
    let (status, out) = Broker::start_expect_failure("management.listener.http = nowhere\n", &[]).await;
    assert!(!status.success());
    assert!(
        out.contains("`management.listener.http`: expected ip:port"),
        "{out}"
    );
}

/// `POST /api/v4/mqtt/subscribe` subscribes a client that is here at once;
/// without a plugin that keeps subscriptions for clients to come, a client
/// that is not here is 404, and a bad filter 400.
#[tokio::test]
async fn subscribe_through_the_api_subscribes_a_client_that_is_here() {
    let b = broker().await;
    let http = b.http_addr().await;
    let (mut dev, _) = V4Client::connect(v4_options(b.addr, "api-dev", true)).await;
    let post = |body: &'static str| {
        request(
            http,
            "POST",
            "/api/v4/mqtt/subscribe",
            Some(("admin", "s3cret")),
            Some(body),
        )
    };
    let a = post(r#"{"clientid":"api-dev","topic":"orders/+","qos":1}"#).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["data"]["provisioned"], false);
    // The subscription is in place once the session lists it.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let subs = request(
            http,
            "GET",
            "/api/v4/subscriptions/api-dev",
            Some(("admin", "s3cret")),
            None,
        )
        .await;
        if subs.body.contains("orders/+") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not subscribed: {}",
            subs.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut p, _) = V4Client::connect(v4_options(b.addr, "api-pub", true)).await;
    p.publish_acked("orders/7", QoS::AtLeastOnce, false, "ship").await;
    let got = dev.next_publish().await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("orders/7", &b"ship"[..]));

    let a = post(r#"{"clientid":"never-seen","topic":"orders/+","qos":1}"#).await;
    assert_eq!(
        (a.status, a.json()["code"].as_i64()),
        (404, Some(112)),
        "{}",
        a.body
    );
    let a = post(r#"{"clientid":"api-dev","topic":"orders/#/x"}"#).await;
    assert_eq!(
        (a.status, a.json()["code"].as_i64()),
        (400, Some(115)),
        "{}",
        a.body
    );
    let a = post(r#"{"topic":"orders/+"}"#).await;
    assert_eq!(a.status, 400, "{}", a.body);
}
