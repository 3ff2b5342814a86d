//! Tests of the `management.*` keys.

use super::*;

#[test]
fn no_http_listener_unless_configured() {
    assert_eq!(ok("").management, None);
    // Credentials alone do not open a listener.
    assert_eq!(ok("management.default_application.secret = s\n").management, None);
}

#[test]
fn management_keys_and_defaults() {
    let m = ok("management.listener.http = 127.0.0.1:9081\n")
        .management
        .expect("on");
    assert_eq!(
        m,
        ManagementConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9081)),
            app_id: "admin".into(),
            app_secret: "public".into(),
            max_row_limit: 10_000,
        }
    );
    let m = ok(
        "management.listener.http = 8081\nmanagement.default_application.id = ops\n\
                management.default_application.secret = pw\nmanagement.max_row_limit = 50\n",
    )
    .management
    .expect("on");
    // A bare port listens on every IPv4 address, as EMQX 4 reads it.
    assert_eq!(m.listen, SocketAddr::from(([0, 0, 0, 0], 8081)));
    assert_eq!(
        (m.app_id.as_str(), m.app_secret.as_str(), m.max_row_limit),
        ("ops", "pw", 50)
    );
}

#[test]
fn bad_management_keys() {
    assert!(bad("management.listener.http", "nowhere")
        .message
        .contains("ip:port"));
    assert!(bad("management.default_application.id", "a:b")
        .message
        .contains("`:`"));
    assert!(bad("management.default_application.secret", "")
        .message
        .contains("empty"));
    assert!(bad("management.max_row_limit", "0")
        .message
        .contains("greater than 0"));
}
