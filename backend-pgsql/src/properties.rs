//! MQTT 5 message expiry and properties in the columns `sql/V2__message_properties.sql`
//! adds to `mqtt_msg` and `mqtt_retain` (used only where a table has them,
//! [`crate::schema::SchemaInfo`]).

use std::time::Duration;

use hooks_spec::{Message, PublishProperties};

/// The columns a replay reads, in this order: the seconds the row has left
/// (computed by the server, whose clock wrote `expires_at`; NULL: never
/// expires), then the properties. Decoded by [`decode`].
pub(crate) const SELECT_COLUMNS: &str = "EXTRACT(EPOCH FROM expires_at - now())::float8, \
     payload_format::int4, content_type::text, response_topic::text, correlation_data, user_properties::text";

/// A row that has not expired (by the server's clock).
pub(crate) const NOT_EXPIRED: &str = "(expires_at IS NULL OR expires_at > now())";

/// `AND` [`NOT_EXPIRED`] for a store with message properties (it has
/// `expires_at`); nothing for one without.
pub(crate) fn and_not_expired(message_properties: bool) -> String {
    if message_properties {
        format!("AND {NOT_EXPIRED}")
    } else {
        String::new()
    }
}

/// What a stored message still has to live, in seconds: its Message Expiry
/// Interval less the time it has spent in the broker. `None`: it never expires.
pub(crate) fn expiry_secs(m: &Message) -> Option<f64> {
    m.remaining_expiry(std::time::SystemTime::now())
        .map(|d| d.as_secs_f64())
}

/// User properties as the JSON array of `[key, value]` pairs the
/// `user_properties` column holds (keys may repeat; order is kept); `None`
/// (NULL) when there are none.
pub(crate) fn user_properties_json(p: &PublishProperties) -> Option<String> {
    if p.user_properties.is_empty() {
        return None;
    }
    // Pairs of strings always serialize.
    serde_json::to_string(&p.user_properties).ok()
}

/// The expiry interval and properties of a row read with [`SELECT_COLUMNS`]
/// starting at column `first`. The interval is what is left, rounded up to
/// whole seconds and at least 1: the replayed message counts it from now,
/// so the broker forwards the remaining time (MQTT 5 3.3.2.3.3) and drops
/// the message if it expires while queued.
pub(crate) fn decode(
    row: &tokio_postgres::Row,
    first: usize,
) -> Result<(Option<Duration>, PublishProperties), tokio_postgres::Error> {
    let left: Option<f64> = row.try_get(first)?;
    let format: Option<i32> = row.try_get(first + 1)?;
    let user: Option<&str> = row.try_get(first + 5)?;
    let user_properties = match user.map(serde_json::from_str::<Vec<(String, String)>>) {
        None => Vec::new(),
        Some(Ok(pairs)) => pairs,
        Some(Err(e)) => {
            // Not written by us (edited by hand): the message still goes out.
            tracing::warn!("ignoring user_properties that are not [[key, value], ...]: {e}");
            Vec::new()
        }
    };
    let properties = PublishProperties {
        payload_format_indicator: format.and_then(|f| u8::try_from(f).ok()),
        content_type: row.try_get(first + 2)?,
        response_topic: row.try_get(first + 3)?,
        correlation_data: row
            .try_get::<_, Option<&[u8]>>(first + 4)?
            .map(bytes::Bytes::copy_from_slice),
        user_properties,
    };
    Ok((left.map(remaining), properties))
}

/// Seconds left as an expiry interval: rounded up, at least 1.
fn remaining(secs: f64) -> Duration {
    // `as` saturates (and maps NaN to 0); MQTT intervals fit in a u32.
    Duration::from_secs((secs.ceil() as u64).clamp(1, u64::from(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_properties_keep_their_order_and_repeated_keys() {
        let p = PublishProperties {
            user_properties: vec![
                ("b".into(), "1".into()),
                ("a".into(), "\"2\"".into()),
                ("b".into(), "3".into()),
            ],
            ..PublishProperties::default()
        };
        let json = user_properties_json(&p).unwrap();
        assert_eq!(json, r#"[["b","1"],["a","\"2\""],["b","3"]]"#);
        let back: Vec<(String, String)> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p.user_properties);
        assert_eq!(user_properties_json(&PublishProperties::default()), None);
    }

    #[test]
    fn what_is_left_is_rounded_up_to_at_least_a_second() {
        assert_eq!(remaining(3597.2), Duration::from_secs(3598));
        assert_eq!(remaining(0.001), Duration::from_secs(1));
        assert_eq!(remaining(5.0), Duration::from_secs(5));
        assert_eq!(remaining(1e12), Duration::from_secs(u64::from(u32::MAX)));
    }
}
