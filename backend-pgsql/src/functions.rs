//! EMQX's functions (and `sql` actions) against the database.
//!
//! Each runs in the hook it is bound to; a failure is returned to the
//! caller, which logs it with the rule and goes on (the hook chain is never
//! broken by a database problem).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hooks_spec::{ClientInfo, Delivery, Headers, Message, QoS, SubOpts};
use tokio_postgres::types::{ToSql, Type};

use crate::error::PgsqlError;
use crate::properties;
use crate::sql_template::{Placeholder, SqlValue};
use crate::topic_match::condition;
use crate::writer::StoreRequest;
use crate::Engine;

/// The values `${...}` placeholders bind to, for one hook call.
#[derive(Debug, Default, Clone)]
pub struct PlaceholderValues {
    /// `${clientid}`.
    pub clientid: Option<String>,
    /// `${username}`.
    pub username: Option<String>,
    /// `${peerhost}`.
    pub peerhost: Option<String>,
    /// `${node}`.
    pub node: Option<String>,
    /// `${topic}`: the message topic, or the subscription filter.
    pub topic: Option<String>,
    /// `${qos}`.
    pub qos: Option<i64>,
    /// `${msgid}`.
    pub msgid: Option<String>,
    /// `${retain}` (0/1).
    pub retain: Option<i64>,
    /// `${payload}`.
    pub payload: Option<Bytes>,
    /// `${timestamp}` (seconds since the epoch).
    pub timestamp: Option<i64>,
}

impl PlaceholderValues {
    /// Client fields.
    pub fn for_client(client: &ClientInfo, node: &str) -> PlaceholderValues {
        PlaceholderValues {
            clientid: Some(client.clientid.to_string()),
            username: client.username.clone(),
            peerhost: Some(client.peer.ip().to_string()),
            node: Some(node.to_string()),
            ..PlaceholderValues::default()
        }
    }

    /// Adds message fields.
    pub fn with_message(mut self, m: &Message) -> PlaceholderValues {
        self.topic = Some(m.topic.to_string());
        self.qos = Some(i64::from(m.qos.as_u8()));
        self.msgid = Some(m.id_hex());
        self.retain = Some(i64::from(m.retain));
        self.payload = Some(m.payload.clone());
        self.timestamp = Some(
            m.timestamp
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        );
        self
    }

    /// The value of one placeholder (NULL when the hook has none).
    pub fn value(&self, p: Placeholder) -> SqlValue {
        let text = |v: &Option<String>| v.clone().map(SqlValue::Text).unwrap_or(SqlValue::Null);
        match p {
            Placeholder::ClientId => text(&self.clientid),
            Placeholder::Username => text(&self.username),
            Placeholder::PeerHost => text(&self.peerhost),
            Placeholder::Node => text(&self.node),
            Placeholder::Topic => text(&self.topic),
            Placeholder::MsgId => text(&self.msgid),
            Placeholder::Qos => self.qos.map(SqlValue::Int).unwrap_or(SqlValue::Null),
            Placeholder::Retain => self.retain.map(SqlValue::Int).unwrap_or(SqlValue::Null),
            Placeholder::Timestamp => self.timestamp.map(SqlValue::Int).unwrap_or(SqlValue::Null),
            Placeholder::Payload => self
                .payload
                .clone()
                .map(SqlValue::Bytes)
                .unwrap_or(SqlValue::Null),
        }
    }
}

impl Engine {
    /// on_client_connected: the client is online on this node.
    pub(crate) async fn client_connected(&self, pool: &str, client: &ClientInfo) -> Result<(), PgsqlError> {
        let conn = self.pool(pool)?.get().await?;
        conn.execute_typed(
            "INSERT INTO mqtt_client (clientid, state, node, online_at, offline_at, created)
             VALUES ($1, 1, $2, now(), NULL, now())
             ON CONFLICT (clientid) DO UPDATE SET state = 1, node = EXCLUDED.node, online_at = now(), offline_at = NULL",
            &[(&&*client.clientid, Type::TEXT), (&self.node.as_str(), Type::TEXT)],
        )
        .await
        .map_err(PgsqlError::query("on_client_connected: upsert mqtt_client"))?;
        Ok(())
    }

    /// on_client_disconnected: the client is offline.
    pub(crate) async fn client_disconnected(
        &self,
        pool: &str,
        client: &ClientInfo,
    ) -> Result<(), PgsqlError> {
        let conn = self.pool(pool)?.get().await?;
        conn.execute_typed(
            "UPDATE mqtt_client SET state = 0, offline_at = now() WHERE clientid = $1",
            &[(&&*client.clientid, Type::TEXT)],
        )
        .await
        .map_err(PgsqlError::query("on_client_disconnected: update mqtt_client"))?;
        Ok(())
    }

    /// on_subscribe_lookup: subscribes the client to its rows of `mqtt_sub`,
    /// as if it had sent SUBSCRIBE (session.subscribed fires, and with it fetch).
    pub(crate) async fn subscribe_lookup(&self, pool: &str, client: &ClientInfo) -> Result<(), PgsqlError> {
        // Rows of a persistent session (schema V3) are the session's: it is
        // restored with them (on_session_restore), not on every connect.
        let sql = match self.pools.get(pool).and_then(|s| s.schema.get()) {
            Some(info) if info.sub_session => {
                "SELECT topic::text, qos FROM mqtt_sub WHERE clientid = $1 AND NOT session ORDER BY id"
            }
            _ => "SELECT topic::text, qos FROM mqtt_sub WHERE clientid = $1 ORDER BY id",
        };
        let conn = self.pool(pool)?.get().await?;
        let rows = conn
            .query_typed(sql, &[(&&*client.clientid, Type::TEXT)])
            .await
            .map_err(PgsqlError::query("on_subscribe_lookup: select mqtt_sub"))?;
        drop(conn);
        for row in rows {
            let topic: String = row.get(0);
            let qos = row
                .get::<_, Option<i32>>(1)
                .and_then(|q| QoS::from_u8(u8::try_from(q).ok()?))
                .unwrap_or(QoS::AtLeastOnce);
            if let Err(e) = self
                .handle
                .subscribe(&client.clientid, &topic, SubOpts::with_qos(qos))
                .await
            {
                tracing::warn!(clientid = %client.clientid, %topic, "on_subscribe_lookup: cannot restore subscription: {e}");
            }
        }
        Ok(())
    }

    /// on_subscribe_store: keeps `mqtt_sub` in step with the client's own subscriptions.
    pub(crate) async fn subscribe_store(
        &self,
        pool: &str,
        client: &ClientInfo,
        filter: &str,
        qos: QoS,
        subscribed: bool,
    ) -> Result<(), PgsqlError> {
        let conn = self.pool(pool)?.get().await?;
        if subscribed {
            let qos = i32::from(qos.as_u8());
            conn.execute_typed(
                "INSERT INTO mqtt_sub (clientid, topic, qos, created) VALUES ($1, $2, $3, now())
                 ON CONFLICT (clientid, topic) DO UPDATE SET qos = EXCLUDED.qos",
                &[
                    (&&*client.clientid, Type::TEXT),
                    (&filter, Type::TEXT),
                    (&qos, Type::INT4),
                ],
            )
            .await
            .map_err(PgsqlError::query("on_subscribe_store: upsert mqtt_sub"))?;
        } else {
            conn.execute_typed(
                "DELETE FROM mqtt_sub WHERE clientid = $1 AND topic = $2",
                &[(&&*client.clientid, Type::TEXT), (&filter, Type::TEXT)],
            )
            .await
            .map_err(PgsqlError::query("on_subscribe_store: delete mqtt_sub"))?;
        }
        Ok(())
    }

    /// on_message_publish / on_message_store: writes the message through the
    /// group-commit writer; returns its row id once committed.
    pub(crate) async fn store_message(&self, pool: &str, m: &Message) -> Result<i64, PgsqlError> {
        let state = self
            .pools
            .get(pool)
            .ok_or_else(|| PgsqlError::Store(format!("no pool `{pool}`")))?;
        let writer = state
            .writer
            .as_ref()
            .ok_or_else(|| PgsqlError::Store(format!("no writer for pool `{pool}`")))?;
        let req = StoreRequest {
            msgid: m.id_hex(),
            sender: m.publisher.clone(),
            topic: Arc::clone(&m.topic),
            qos: i32::from(m.qos.as_u8()),
            retain: i32::from(m.retain),
            payload: m.payload.clone(),
            expiry_secs: properties::expiry_secs(m),
            properties: m.properties.clone(),
        };
        writer.store(req).await
    }

    /// True when the pool's message payload column can hold this payload.
    pub(crate) fn payload_fits(&self, pool: &str, payload: &[u8]) -> bool {
        self.pools.get(pool).is_none_or(|s| {
            // A text column takes UTF-8 without NUL (PostgreSQL refuses U+0000 in text).
            // Not known yet (no answer since startup): our migrations make it
            // bytea; the writer checks again once it knows.
            s.schema.get().is_none_or(|info| info.payload_bytea)
                || (std::str::from_utf8(payload).is_ok() && !payload.contains(&0))
        })
    }

    /// on_message_retain: upserts the retained message of the topic, with its
    /// expiry and properties where `mqtt_retain` has the columns.
    pub(crate) async fn retain_store(&self, pool: &str, m: &Message) -> Result<(), PgsqlError> {
        let state = self
            .pools
            .get(pool)
            .ok_or_else(|| PgsqlError::Store(format!("no pool `{pool}`")))?;
        let schema = state.schema.ready(pool)?;
        let conn = state.pool.get().await?;
        let qos = i32::from(m.qos.as_u8());
        let msgid = m.id_hex();
        let msgid = msgid.as_str();
        let sender = m.publisher.as_deref();
        let topic: &str = &m.topic;
        let text_payload;
        let payload: (&(dyn ToSql + Sync), Type) = if schema.retain_payload_bytea {
            (&m.payload.as_ref() as &(dyn ToSql + Sync), Type::BYTEA)
        } else {
            text_payload = std::str::from_utf8(&m.payload).map_err(|_| {
                PgsqlError::Store("retained payload is not UTF-8 and mqtt_retain.payload is text".into())
            })?;
            (&text_payload as &(dyn ToSql + Sync), Type::TEXT)
        };
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
            (&topic, Type::TEXT),
            (&msgid, Type::TEXT),
            (&sender, Type::TEXT),
            (&qos, Type::INT4),
            payload,
        ];
        let p = &m.properties;
        let expiry = properties::expiry_secs(m);
        let format = p.payload_format_indicator.map(i16::from);
        let (content_type, response_topic) = (p.content_type.as_deref(), p.response_topic.as_deref());
        let correlation = p.correlation_data.as_deref();
        let user = properties::user_properties_json(p);
        let sql = if schema.retain_properties {
            params.extend([
                (&expiry as &(dyn ToSql + Sync), Type::FLOAT8),
                (&format, Type::INT2),
                (&content_type, Type::TEXT),
                (&response_topic, Type::TEXT),
                (&correlation, Type::BYTEA),
                (&user, Type::TEXT),
            ]);
            "INSERT INTO mqtt_retain (topic, msgid, sender, qos, payload, arrived, expires_at,
                 payload_format, content_type, response_topic, correlation_data, user_properties)
             VALUES ($1, $2, $3, $4, $5, now(), now() + make_interval(secs => $6), $7, $8, $9, $10, $11::jsonb)
             ON CONFLICT (topic) DO UPDATE SET msgid = EXCLUDED.msgid, sender = EXCLUDED.sender,
                 qos = EXCLUDED.qos, payload = EXCLUDED.payload, arrived = now(),
                 expires_at = EXCLUDED.expires_at, payload_format = EXCLUDED.payload_format,
                 content_type = EXCLUDED.content_type, response_topic = EXCLUDED.response_topic,
                 correlation_data = EXCLUDED.correlation_data, user_properties = EXCLUDED.user_properties"
        } else {
            "INSERT INTO mqtt_retain (topic, msgid, sender, qos, payload, arrived)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (topic) DO UPDATE SET msgid = EXCLUDED.msgid, sender = EXCLUDED.sender,
                 qos = EXCLUDED.qos, payload = EXCLUDED.payload, arrived = now()"
        };
        conn.execute_typed(sql, &params)
            .await
            .map_err(PgsqlError::query("on_message_retain: upsert mqtt_retain"))?;
        Ok(())
    }

    /// on_retain_delete: a retained message with an empty payload deletes the topic's.
    pub(crate) async fn retain_delete(&self, pool: &str, topic: &str) -> Result<(), PgsqlError> {
        let conn = self.pool(pool)?.get().await?;
        conn.execute_typed(
            "DELETE FROM mqtt_retain WHERE topic = $1",
            &[(&topic, Type::TEXT)],
        )
        .await
        .map_err(PgsqlError::query("on_retain_delete: delete mqtt_retain"))?;
        Ok(())
    }

    /// on_retain_lookup: delivers the stored retained messages matching the
    /// new subscription's filter, wildcards included.
    pub(crate) async fn retain_lookup(
        &self,
        pool: &str,
        client: &ClientInfo,
        filter: &str,
        sub_qos: QoS,
    ) -> Result<(), PgsqlError> {
        let state = self
            .pools
            .get(pool)
            .ok_or_else(|| PgsqlError::Store(format!("no pool `{pool}`")))?;
        let (op, value) = condition(filter).into_sql();
        let schema = state.schema.ready(pool)?;
        let payload = if schema.retain_payload_bytea {
            "payload"
        } else {
            "convert_to(payload, 'UTF8')"
        };
        // An expired retained message is not delivered (as the broker's own
        // retained store does); the next retained message replaces its row.
        let sql = if schema.retain_properties {
            format!(
                "SELECT topic::text, msgid::text, sender::text, qos::int4, {payload}, {} FROM mqtt_retain
                 WHERE topic {op} $1 AND {} ORDER BY id",
                properties::SELECT_COLUMNS,
                properties::NOT_EXPIRED
            )
        } else {
            format!("SELECT topic::text, msgid::text, sender::text, qos::int4, {payload} FROM mqtt_retain WHERE topic {op} $1 ORDER BY id")
        };
        let conn = state.pool.get().await?;
        let rows = conn
            .query_typed(&sql, &[(&value, Type::TEXT)])
            .await
            .map_err(PgsqlError::query("on_retain_lookup: select mqtt_retain"))?;
        drop(conn);
        let bad_row = || PgsqlError::query("on_retain_lookup: read mqtt_retain");
        for row in rows {
            let qos = row
                .try_get::<_, Option<i32>>(3)
                .map_err(bad_row())?
                .and_then(|q| QoS::from_u8(u8::try_from(q).ok()?))
                .unwrap_or(QoS::AtMostOnce);
            let payload: Vec<u8> = row
                .try_get::<_, Option<Vec<u8>>>(4)
                .map_err(bad_row())?
                .unwrap_or_default();
            let topic: String = row.try_get(0).map_err(bad_row())?;
            let mut message = Message::new(topic, Bytes::from(payload), qos, true);
            // Keep the published message's id: the session recognises a retained
            // message its own retained store already delivered by that id.
            let msgid: Option<String> = row.try_get(1).map_err(bad_row())?;
            if let Some(original) = msgid.as_deref().and_then(|h| u128::from_str_radix(h, 16).ok()) {
                message.id = original;
            }
            let sender: Option<String> = row.try_get(2).map_err(bad_row())?;
            message.publisher = sender.map(Arc::from);
            message.headers = Headers::default();
            if schema.retain_properties {
                let (expiry, props) = properties::decode(&row, 5).map_err(bad_row())?;
                // Counted from now (Message::new's timestamp): what is left.
                message.expiry_interval = expiry;
                message.properties = props;
            }
            let delivery = Delivery {
                qos: sub_qos.min(qos),
                message,
                retain: true,
                filter: None,
            };
            if self.handle.deliver(&client.clientid, delivery).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// A `sql` action: its statements in one transaction, placeholders bound.
    pub(crate) async fn run_sql(&self, rule: usize, values: &PlaceholderValues) -> Result<(), PgsqlError> {
        let Some(action) = self.sql_actions.get(&rule) else {
            return Ok(());
        };
        let mut conn = self.pool(&action.pool)?.get().await?;
        // Prepared at start, or here on first use when the database did not
        // answer at start (then a statement that does not prepare fails the rule).
        for stmt in &action.statements {
            if stmt.types.get().is_none() {
                let prepared = conn
                    .prepare(&stmt.template.sql)
                    .await
                    .map_err(PgsqlError::query(format!(
                        "{}: prepare `{}`",
                        action.key, stmt.template.original
                    )))?;
                let _ = stmt.types.set(prepared.params().to_vec());
            }
        }
        let tx = conn
            .transaction()
            .await
            .map_err(PgsqlError::query(format!("BEGIN ({})", action.key)))?;
        for stmt in &action.statements {
            let params: Vec<SqlValue> = stmt.template.params.iter().map(|p| values.value(*p)).collect();
            let types: &[Type] = stmt.types.get().map_or(&[], |t| t.as_slice());
            let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                .iter()
                .zip(types)
                .map(|(v, t)| (v as &(dyn ToSql + Sync), t.clone()))
                .collect();
            tx.execute_typed(&stmt.template.sql, &typed)
                .await
                .map_err(PgsqlError::query(format!(
                    "{}: `{}`",
                    action.key, stmt.template.original
                )))?;
        }
        tx.commit()
            .await
            .map_err(PgsqlError::query(format!("COMMIT ({})", action.key)))?;
        Ok(())
    }

    fn pool(&self, name: &str) -> Result<&crate::pool::NamedPool, PgsqlError> {
        self.pools
            .get(name)
            .map(|s| &s.pool)
            .ok_or_else(|| PgsqlError::Store(format!("no pool `{name}`")))
    }
}

/// Seconds as the `f64` the queries bind for intervals.
pub fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}
