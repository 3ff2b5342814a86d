//! Tests of the `listener.*` settings and `mqtt.publish_limit`.

use super::*;

fn err_at(text: &str, line: usize, key: &str) -> ConfError {
    match parse(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => {
            assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
            e
        }
    }
}

fn conf_path(path: &str, line: usize, key: &str) -> ConfPath {
    ConfPath {
        path: PathBuf::from(path),
        line,
        key: key.into(),
    }
}

const SSL: &str = "listener.ssl.secure = 0.0.0.0:8883\n\
                   listener.ssl.secure.certfile = certs/server.pem\n\
                   listener.ssl.secure.keyfile = /keys/server.key\n";

#[test]
fn publish_limit() {
    let r = ok("mqtt.publish_limit = 100,10s").mqtt.publish_limit;
    assert_eq!(
        r,
        Some(Rate {
            count: 100,
            per: Duration::from_secs(10)
        })
    );
    let r = ok("mqtt.publish_limit = 5 , 1m 30s").mqtt.publish_limit;
    assert_eq!(
        r,
        Some(Rate {
            count: 5,
            per: Duration::from_secs(90)
        })
    );
    for v in ["100", "0,10s", "10,0s", "x,1s", "10,fast", "-1,1s", ",", ""] {
        let e = bad("mqtt.publish_limit", v);
        assert!(
            e.message
                .starts_with("expected `<count>,<duration>` with both greater than 0, such as `100,10s`"),
            "{v}: {e}"
        );
    }
}

#[test]
fn conn_bytes_in_on_every_kind_of_listener() {
    let c = ok(&format!(
        "listener.tcp.a = 127.0.0.1:1883\n\
         listener.tcp.a.rate_limit.conn_bytes_in = 100KB,10s\n\
         listener.ws.w = 127.0.0.1:8083\n\
         listener.ws.w.rate_limit.conn_bytes_in = 512 , 1m 30s\n\
         {SSL}listener.ssl.secure.rate_limit.conn_bytes_in = 1MB,1s\n"
    ));
    let rates: Vec<_> = c.listeners.iter().map(|l| l.conn_bytes_in).collect();
    let rate = |count, secs| {
        Some(Rate {
            count,
            per: Duration::from_secs(secs),
        })
    };
    assert_eq!(rates, [rate(102_400, 10), rate(512, 90), rate(1 << 20, 1)]);
    assert_eq!(
        ok("listener.tcp.a = 127.0.0.1:1883\n").listeners[0].conn_bytes_in,
        None
    );
    for v in [
        "100KB", "0,10s", "1KB,0s", "x,1s", "1KB,fast", "4GB,1s", "-1,1s", ",", "",
    ] {
        let text =
            format!("listener.tcp.a = 127.0.0.1:1883\n\nlistener.tcp.a.rate_limit.conn_bytes_in = {v}\n");
        let e = err_at(&text, 3, "listener.tcp.a.rate_limit.conn_bytes_in");
        assert_eq!(e.file, PathBuf::from(FILE));
        assert!(
            e.message
                .starts_with("expected `<bytes>,<duration>` with both greater than 0, such as `100KB,10s`"),
            "{v}: {e}"
        );
    }
}

#[test]
fn max_conn_rate_before_or_after_the_address_line() {
    let after = ok("listener.tcp.a = 127.0.0.1:1883\nlistener.tcp.a.max_conn_rate = 50\n");
    let before = ok("listener.tcp.a.max_conn_rate = 50\nlistener.tcp.a = 127.0.0.1:1883\n");
    assert_eq!(after.listeners, before.listeners);
    assert_eq!(after.listeners[0].max_conn_rate, Some(50));
    assert_eq!(after.listeners[0].key(), "listener.tcp.a");
    for v in ["0", "-1", "x", "1.5", ""] {
        let e = bad("listener.tcp.a.max_conn_rate", v);
        assert!(
            e.message
                .starts_with("expected connections per second, an integer greater than 0"),
            "{v}: {e}"
        );
    }
}

#[test]
fn a_setting_without_its_listener_is_an_error() {
    let e = err_at(
        "listener.tcp.a = 127.0.0.1:1883\n\nlistener.tcp.b.max_conn_rate = 5\n",
        3,
        "listener.tcp.b.max_conn_rate",
    );
    assert_eq!(
        e.message,
        "this setting belongs to no listener: there is no `listener.tcp.b = <ip:port>` line"
    );
    // A tcp listener's address does not serve an ssl listener of the same name.
    err_at(
        "listener.tcp.a = 127.0.0.1:1883\nlistener.ssl.a.certfile = c.pem\n",
        2,
        "listener.ssl.a.certfile",
    );
}

#[test]
fn ssl_listener_with_every_setting() {
    let c = ok("listener.ssl.secure.verify = verify_peer\n\
         listener.tcp.plain = 0.0.0.0:1883\n\
         listener.ssl.secure = [::]:8883\n\
         listener.ssl.secure.certfile = certs/server.pem\n\
         listener.ssl.secure.keyfile = /keys/server.key\n\
         listener.ssl.secure.cacertfile = ./ca.pem\n\
         listener.ssl.secure.fail_if_no_peer_cert = true\n\
         listener.ssl.secure.peer_cert_as_username = cn\n\
         listener.ssl.secure.max_conn_rate = 20\n");
    assert_eq!(
        c.listeners,
        vec![
            Listener::tcp("plain", "0.0.0.0:1883".parse().unwrap()),
            Listener {
                name: "secure".into(),
                addr: "[::]:8883".parse().unwrap(),
                max_conn_rate: Some(20),
                conn_bytes_in: None,
                websocket: None,
                tls: Some(TlsSettings {
                    certfile: conf_path(
                        "/opt/postbox/etc/certs/server.pem",
                        4,
                        "listener.ssl.secure.certfile"
                    ),
                    keyfile: conf_path("/keys/server.key", 5, "listener.ssl.secure.keyfile"),
                    cacertfile: Some(conf_path(
                        "/opt/postbox/etc/./ca.pem",
                        6,
                        "listener.ssl.secure.cacertfile"
                    )),
                    verify_peer: true,
                    fail_if_no_peer_cert: true,
                    peer_cert_as_username: Some(PeerCertField::Cn),
                }),
            },
        ]
    );
    assert_eq!(c.listeners[1].key(), "listener.ssl.secure");
}

#[test]
fn ssl_defaults_verify_none() {
    let c = ok(SSL);
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert!(!tls.verify_peer);
    assert!(!tls.fail_if_no_peer_cert);
    assert_eq!(tls.cacertfile, None);
    assert_eq!(tls.peer_cert_as_username, None);
    assert_eq!(c.listeners[0].max_conn_rate, None);
    // An ssl listener alone replaces the default tcp listener.
    assert_eq!(c.listeners.len(), 1);
    let c = ok(&format!("{SSL}listener.ssl.secure.verify = verify_none\n"));
    assert!(!c.listeners[0].tls.as_ref().unwrap().verify_peer);
}

#[test]
fn ssl_listener_needs_certfile_and_keyfile() {
    let e = err_at(
        "## x\nlistener.ssl.s = 0.0.0.0:8883\nlistener.ssl.s.keyfile = k.pem\n",
        2,
        "listener.ssl.s",
    );
    assert_eq!(
        e.message,
        "an ssl listener needs `listener.ssl.s.certfile` (the server's certificate chain, PEM), and it is not set"
    );
    let e = err_at(
        "listener.ssl.s.certfile = c.pem\nlistener.ssl.s = 0.0.0.0:8883\n",
        2,
        "listener.ssl.s",
    );
    assert!(e.message.contains("`listener.ssl.s.keyfile`"), "{e}");
    let e = bad("listener.ssl.s.certfile", "");
    assert!(e.message.starts_with("expected a PEM file"), "{e}");
}

#[test]
fn client_certificate_settings_need_verify_peer() {
    for (line, value) in [
        ("listener.ssl.secure.cacertfile", "ca.pem"),
        ("listener.ssl.secure.fail_if_no_peer_cert", "true"),
        ("listener.ssl.secure.peer_cert_as_username", "cn"),
    ] {
        let e = err_at(&format!("{SSL}{line} = {value}\n"), 4, line);
        assert_eq!(
            e.message,
            "takes effect only with `listener.ssl.secure.verify = verify_peer` (client certificates are \
             not requested with verify_none, the default)"
        );
    }
    // Saying false is harmless.
    ok(&format!(
        "{SSL}listener.ssl.secure.fail_if_no_peer_cert = false\n"
    ));
    let e = err_at(
        &format!("{SSL}listener.ssl.secure.verify = verify_peer\n"),
        4,
        "listener.ssl.secure.verify",
    );
    assert!(
        e.message
            .starts_with("`verify_peer` needs `listener.ssl.secure.cacertfile`"),
        "{e}"
    );
}

#[test]
fn bad_ssl_values() {
    let e = bad("listener.ssl.s.verify", "true");
    assert_eq!(e.message, "expected `verify_peer` or `verify_none`, got `true`");
    let e = bad("listener.ssl.s.fail_if_no_peer_cert", "yes");
    assert!(e.message.starts_with("expected `true`, `false`"), "{e}");
    let e = bad("listener.ssl.s.peer_cert_as_username", "dn");
    assert_eq!(
        e.message,
        "expected `cn` (the client certificate's common name), got `dn`"
    );
    let e = bad("listener.ssl.s", "8883");
    assert!(
        e.message.starts_with("expected a listen address `ip:port`"),
        "{e}"
    );
}

#[test]
fn addresses_are_unique_across_kinds_except_port_zero() {
    let e = err_at(
        &format!("{SSL}listener.tcp.b = 0.0.0.0:8883\n"),
        4,
        "listener.tcp.b",
    );
    assert_eq!(
        e.message,
        "address 0.0.0.0:8883 is already used by `listener.ssl.secure` on line 1"
    );
    let c = ok("listener.tcp.a = 127.0.0.1:0\nlistener.tcp.b = 127.0.0.1:0\n");
    assert_eq!(c.listeners.len(), 2);
    // The same name under tcp and ssl: two listeners.
    let c = ok(&format!(
        "listener.tcp.secure = 0.0.0.0:1883\n{}",
        SSL.replace("listener.ssl.secure = 0.0.0.0:8883\n", "") + "listener.ssl.secure = 0.0.0.0:8883\n"
    ));
    let keys: Vec<String> = c.listeners.iter().map(Listener::key).collect();
    assert_eq!(keys, ["listener.tcp.secure", "listener.ssl.secure"]);
}

#[test]
fn ws_and_wss_listeners_default_to_path_mqtt() {
    let c = ok("listener.ws.web = 0.0.0.0:8083\n\
                listener.wss.web = 0.0.0.0:8084\n\
                listener.wss.web.certfile = /c.pem\n\
                listener.wss.web.keyfile = /k.pem\n\
                listener.wss.web.mqtt_path = /mqtt/secure\n\
                listener.ws.web.max_conn_rate = 100\n");
    let keys: Vec<String> = c.listeners.iter().map(Listener::key).collect();
    assert_eq!(keys, ["listener.ws.web", "listener.wss.web"]);
    let ws = &c.listeners[0];
    assert_eq!(ws.websocket.as_ref().map(|w| w.path.as_str()), Some("/mqtt"));
    assert_eq!((ws.tls.is_none(), ws.max_conn_rate), (true, Some(100)));
    let wss = &c.listeners[1];
    assert_eq!(
        wss.websocket.as_ref().map(|w| w.path.as_str()),
        Some("/mqtt/secure")
    );
    assert_eq!(
        wss.tls.as_ref().map(|t| t.certfile.path.clone()),
        Some(PathBuf::from("/c.pem"))
    );
    // tcp and ssl listeners are not WebSocket listeners.
    assert!(ok(SSL).listeners[0].websocket.is_none());
}

#[test]
fn bad_websocket_settings_name_their_line() {
    let e = bad("listener.ws.web.mqtt_path", "mqtt");
    assert!(
        e.message
            .starts_with("expected the HTTP path WebSocket clients connect to"),
        "{e}"
    );
    let e = err_at(
        "listener.ws.web = 0.0.0.0:8083\nlistener.ws.web.certfile = c.pem\n",
        2,
        "listener.ws.web.certfile",
    );
    assert_eq!(
        e.message,
        "unknown key (a `listener.ws` listener takes: max_conn_rate, rate_limit.conn_bytes_in, mqtt_path)"
    );
    let e = err_at(
        "listener.tcp.a = 0.0.0.0:1883\nlistener.tcp.a.mqtt_path = /mqtt\n",
        2,
        "listener.tcp.a.mqtt_path",
    );
    assert!(
        e.message
            .starts_with("unknown key (a `listener.tcp` listener takes"),
        "{e}"
    );
    let e = err_at(
        "listener.wss.w = 0.0.0.0:8084\nlistener.wss.w.keyfile = k.pem\n",
        1,
        "listener.wss.w",
    );
    assert_eq!(
        e.message,
        "a wss listener needs `listener.wss.w.certfile` (the server's certificate chain, PEM), and it is not set"
    );
    let e = err_at(
        "listener.ws.a = 0.0.0.0:8083\nlistener.tcp.b = 0.0.0.0:8083\n",
        2,
        "listener.tcp.b",
    );
    assert_eq!(
        e.message,
        "address 0.0.0.0:8083 is already used by `listener.ws.a` on line 1"
    );
}
