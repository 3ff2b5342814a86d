//! MQTT 5 re-authentication (section 4.12.1): a client that authenticated
//! with a method at CONNECT sends AUTH 0x19 with the same method; the
//! exchange runs as at CONNECT (AUTH 0x18 both ways) and ends with AUTH 0x00
//! (success) or DISCONNECT 0x87 (failure). The connection carries on
//! meanwhile. AUTH from a client that used no method, with another method,
//! or 0x18 outside an exchange, is a protocol error (DISCONNECT 0x82).

use hooks_spec::{AuthExchange, AuthStep};

use super::{Exit, Session};
use crate::codec::{Auth, Packet};

/// AUTH reason codes.
const SUCCESS: u8 = 0x00;
const CONTINUE: u8 = 0x18;
const REAUTHENTICATE: u8 = 0x19;

/// The enhanced authentication of one connection.
pub(crate) struct ConnAuth {
    /// The method CONNECT named.
    method: String,
    /// A re-authentication under way.
    exchange: Option<Box<dyn AuthExchange>>,
}

impl ConnAuth {
    /// A connection authenticated with `method`.
    pub(crate) fn new(method: String) -> ConnAuth {
        ConnAuth {
            method,
            exchange: None,
        }
    }
}

impl Session {
    /// AUTH from the client.
    pub(super) async fn client_auth(&mut self, a: Auth) -> Option<Exit> {
        let hooks = std::sync::Arc::clone(&self.shared.hooks);
        let client = self.client.clone();
        let Some(auth) = self.conn.as_mut().and_then(|c| c.auth.as_mut()) else {
            return self
                .protocol_error("AUTH without enhanced authentication at CONNECT", 0x82)
                .await;
        };
        if a.method.as_deref() != Some(auth.method.as_str()) {
            return self
                .protocol_error("AUTH with another authentication method than CONNECT's", 0x82)
                .await;
        }
        let data = a.data.unwrap_or_default();
        // A method's lookup must not stall the session for long.
        let limit = self.shared.config.mqtt.connect_timeout;
        let step = match (a.reason, auth.exchange.as_mut()) {
            (REAUTHENTICATE, None) => match hooks.auth_methods.find(&auth.method) {
                Some(method) => {
                    let exchange = auth.exchange.insert(method.start(&client));
                    crate::enhanced_auth::bounded_step(exchange.as_mut(), &data, limit).await
                }
                None => AuthStep::Failure(format!("method {:?} is no longer offered", auth.method)),
            },
            (CONTINUE, Some(exchange)) => {
                crate::enhanced_auth::bounded_step(exchange.as_mut(), &data, limit).await
            }
            (REAUTHENTICATE, Some(_)) => {
                return self
                    .protocol_error("AUTH 0x19 during a re-authentication", 0x82)
                    .await
            }
            _ => {
                return self
                    .protocol_error("AUTH 0x18 or 0x00 outside a re-authentication", 0x82)
                    .await
            }
        };
        let method = Some(auth.method.clone());
        match step {
            AuthStep::Continue(data) => self.send(Packet::Auth(Auth {
                reason: CONTINUE,
                method,
                data: Some(data),
                ..Auth::default()
            })),
            AuthStep::Success { data, .. } => {
                auth.exchange = None;
                tracing::info!(clientid = %self.client.clientid, "re-authenticated");
                self.send(Packet::Auth(Auth {
                    reason: SUCCESS,
                    method,
                    data,
                    ..Auth::default()
                }));
            }
            AuthStep::Failure(why) => {
                tracing::info!(clientid = %self.client.clientid, "re-authentication failed: {why}");
                crate::metrics::Metrics::bump(&self.shared.metrics.auth_failures);
                return Box::pin(self.connection_lost(
                    hooks_spec::DisconnectReason::ProtocolError(format!("re-authentication failed: {why}")),
                    Some(0x87),
                ))
                .await;
            }
        }
        None
    }
}
