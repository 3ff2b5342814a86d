//! One log line per connect and one per disconnect, naming the client id,
//! its address and (for a disconnect) the reason; `log.format = json`
//! writes every line as one JSON object.

use std::net::SocketAddr;

use rumqttc::QoS;

use crate::support::*;

/// Every line of the broker's stderr, parsed as JSON (panics on one that is not).
fn json_lines(broker: &Broker) -> Vec<serde_json::Value> {
    broker
        .logs()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect()
}

/// The JSON lines with this `message` and `clientid`.
fn lines_of<'a>(lines: &'a [serde_json::Value], message: &str, clientid: &str) -> Vec<&'a serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["message"] == message && l["clientid"] == clientid)
        .collect()
}

/// Connects a raw MQTT 3.1.1 client with `keepalive` and reads its CONNACK.
async fn raw_connected(addr: SocketAddr, clientid: &str, keepalive: u16) -> RawClient {
    let mut raw = RawClient::connect(addr).await;
    raw.send(&connect_v4_bytes(clientid, true, keepalive)).await;
    let connack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(connack, vec![0x20, 0x02, 0x00, 0x00], "{clientid}: CONNACK");
    raw
}

#[tokio::test]
async fn json_logs_have_one_line_per_connect_and_disconnect_with_the_reason() {
    let broker = Broker::start("log.format = json\nsys.interval = 0s\n").await;

    // A clean DISCONNECT.
    let (clean, _) = V4Client::connect(v4_options(broker.addr, "log-clean", true)).await;
    clean.disconnect().await;
    // The socket dropped without DISCONNECT.
    let dropped = raw_connected(broker.addr, "log-dropped", 60).await;
    drop(dropped);
    // Silent past 1.5 times a 1 s keep alive.
    let mut idle = raw_connected(broker.addr, "log-idle", 1).await;
    idle.expect_closed().await;
    broker.wait_for_log_count("\"client disconnected\"", 3).await;

    let lines = json_lines(&broker);
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "no `{field}` in {line}");
        }
    }
    for (clientid, reason) in [
        ("log-clean", "normal"),
        ("log-dropped", "closed"),
        ("log-idle", "keepalive_timeout"),
    ] {
        let connected = lines_of(&lines, "client connected", clientid);
        assert_eq!(connected.len(), 1, "{clientid}: {connected:?}");
        let disconnected = lines_of(&lines, "client disconnected", clientid);
        assert_eq!(disconnected.len(), 1, "{clientid}: {disconnected:?}");
        let (c, d) = (connected[0], disconnected[0]);
        assert_eq!(c["level"], "INFO", "{c}");
        assert_eq!(d["level"], "INFO", "{d}");
        assert_eq!(d["reason"], reason, "{d}");
        let peer: SocketAddr = c["peer"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no peer address in {c}"));
        assert!(peer.ip().is_loopback(), "{c}");
        assert_eq!(d["peer"], c["peer"], "the same connection: {c} {d}");
        assert_eq!(c["protocol"], "3.1.1", "{c}");
    }
    let idle_line = lines_of(&lines, "client connected", "log-idle")[0];
    assert_eq!(idle_line["keepalive"], 1, "{idle_line}");
    // Nothing else reports the keep-alive timeout at info.
    let about_idle = lines
        .iter()
        .filter(|l| l["level"] == "INFO" && l.to_string().contains("log-idle"))
        .count();
    assert_eq!(about_idle, 2, "{lines:#?}");
}

#[tokio::test]
async fn text_logs_name_takeover_protocol_errors_and_shutdown() {
    let mut broker = Broker::start("sys.interval = 0s\n").await;

    // The same client id twice: the first connection is taken over.
    let (mut first, _) = V4Client::connect(v4_options(broker.addr, "log-twin", true)).await;
    let (mut second, _) = V4Client::connect(v4_options(broker.addr, "log-twin", true)).await;
    first.expect_disconnected().await;
    broker.wait_for_log("client disconnected clientid=log-twin").await;
    // A second CONNECT is a protocol error.
    let mut raw = raw_connected(broker.addr, "log-rude", 60).await;
    raw.send(&connect_v4_bytes("log-rude", true, 60)).await;
    raw.expect_closed().await;
    broker.wait_for_log("client disconnected clientid=log-rude").await;
    // Still connected at shutdown.
    second.subscribe("a/b", QoS::AtMostOnce).await;
    broker.terminate().await;

    let logs = broker.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" INFO ") && (l.contains("log-twin") || l.contains("log-rude")))
        .collect();
    let with = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(with("client connected clientid=log-twin"), 2, "{lines:#?}");
    assert_eq!(with("client connected clientid=log-rude"), 1, "{lines:#?}");
    let twin_gone: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("client disconnected clientid=log-twin"))
        .collect();
    assert_eq!(twin_gone.len(), 2, "{lines:#?}");
    assert!(twin_gone[0].contains("reason=takenover"), "{twin_gone:?}");
    assert!(twin_gone[1].contains("reason=shutdown"), "{twin_gone:?}");
    let rude: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("client disconnected clientid=log-rude"))
        .collect();
    assert_eq!(rude.len(), 1, "{lines:#?}");
    assert!(rude[0].contains("reason=protocol_error"), "{rude:?}");
    assert!(rude[0].contains("second CONNECT"), "{rude:?}");
    // One line per event: nothing else about these clients at info.
    assert_eq!(lines.len(), 6, "{lines:#?}");
}
