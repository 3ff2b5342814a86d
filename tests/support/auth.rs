//! Helpers for the authentication tests (auth_file, auth_pgsql, security
//! regressions): client options with credentials, and the CONNACK code of a
//! refused connection.

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
use rumqttc::ConnectReturnCode as V4Code;

use super::*;

/// MQTT 3.1.1 options (clean session) with a user name and password.
pub fn v4_login(b: &Broker, id: &str, user: &str, pw: &str) -> rumqttc::MqttOptions {
    let mut o = v4_options(b.addr, id, true);
    o.set_credentials(user, pw);
    o
}

/// MQTT 5 options (clean start) with a user name and password.
pub fn v5_login(b: &Broker, id: &str, user: &str, pw: &str) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(b.addr, id, true);
    o.set_credentials(user, pw);
    o
}

/// The CONNACK return code of a 3.1.1 connection that must be refused.
pub async fn v4_refusal(o: rumqttc::MqttOptions) -> V4Code {
    match V4Client::try_connect(o).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e:?}"),
        Ok((_, ack)) => panic!("expected a refusal, got {ack:?}"),
    }
}

/// The CONNACK reason code of an MQTT 5 connection that must be refused.
pub async fn v5_refusal(o: rumqttc::v5::MqttOptions) -> V5Code {
    match V5Client::try_connect(o).await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e:?}"),
        Ok((_, ack)) => panic!("expected a refusal, got {ack:?}"),
    }
}

/// The CONNACK return code for a 3.1.1 CONNECT with a user name and no
/// password (rumqttc always sends both).
pub async fn connack_without_password(b: &Broker, user: &str) -> u8 {
    let mut body = Vec::new();
    encode_str("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x82, 0, 30]); // level 4; user name flag, clean session; keep alive 30
    encode_str("nopw", &mut body);
    encode_str(user, &mut body);
    let mut raw = RawClient::connect(b.addr).await;
    raw.send(&packet(0x10, &body)).await;
    let ack = raw.read_packet().await.expect("CONNACK");
    assert_eq!(packet_type(&ack), ptype::CONNACK, "{ack:02x?}");
    ack[3]
}

/// Publishes at QoS 1 (MQTT 5) and asserts the PUBACK refuses it with 0x87
/// "not authorized".
pub async fn expect_v5_publish_denied(c: &mut V5Client, topic: &str, payload: &str) {
    match c
        .publish_acked(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, payload)
        .await
    {
        Some(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(a))) => {
            assert_eq!(
                a.reason,
                rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized,
                "PUBACK for {topic}"
            )
        }
        other => panic!("expected PUBACK for {topic}, got {other:?}"),
    }
}
