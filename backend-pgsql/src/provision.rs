//! Subscriptions provisioned through the management API
//! (`POST /api/v4/mqtt/subscribe` for a client that has no session): a row
//! in `mqtt_sub`, as an operator would insert by hand (EMQX's proxy
//! subscription). The client's first connect subscribes it
//! (`on_subscribe_lookup`) and replays what was stored since the row was
//! created (see [`crate::fetch`]).

use async_trait::async_trait;
use hooks_spec::{QoS, SubscriptionStore};
use tokio_postgres::types::Type;

use crate::pool::NamedPool;

/// `mqtt_sub` on the pool of the `on_subscribe_lookup` rule.
pub struct MqttSubStore {
    /// The pool the lookup reads `mqtt_sub` from.
    pub pool: NamedPool,
}

#[async_trait]
impl SubscriptionStore for MqttSubStore {
    async fn provision(&self, clientid: &str, filter: &str, qos: QoS) -> Result<(), String> {
        let conn = self.pool.get().await.map_err(|e| e.to_string())?;
        let qos = i32::from(qos.as_u8());
        // A row already there keeps its `created`: what was stored since
        // then is still the client's.
        conn.execute_typed(
            "INSERT INTO mqtt_sub (clientid, topic, qos, created) VALUES ($1, $2, $3, now())
             ON CONFLICT (clientid, topic) DO UPDATE SET qos = EXCLUDED.qos",
            &[(&clientid, Type::TEXT), (&filter, Type::TEXT), (&qos, Type::INT4)],
        )
        .await
        .map_err(|e| {
            format!(
                "provision `{filter}` for `{clientid}` in mqtt_sub ({}): {e}",
                self.pool.name
            )
        })?;
        Ok(())
    }
}
