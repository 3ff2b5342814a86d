//! A forwarded message on a link between nodes: an MQTT 5 PUBLISH carrying
//! the message as published (topic, payload, QoS, retain, properties, the
//! expiry it has left) and, as user properties after the message's own,
//! what the receiving node needs: the publisher, the message id, the storage
//! row id, and what it is forwarded for (the node's plain subscribers, the
//! shared groups it won, or only the retained store).

use std::sync::Arc;
use std::time::SystemTime;

use hooks_spec::{Message, QoS};

use crate::codec::Publish;

/// Key prefix of the properties this module adds (the last one says how
/// many there are, so a message's own properties are never mistaken for them).
const PREFIX: &str = "$postbox/";
const FROM: &str = "$postbox/from";
const ID: &str = "$postbox/id";
const STORED: &str = "$postbox/stored";
const PLAIN: &str = "$postbox/plain";
const GROUP: &str = "$postbox/group";
const QOS: &str = "$postbox/qos";
const COUNT: &str = "$postbox/n";

/// What a node receives a message for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ForwardFor {
    /// Its sessions' plain subscriptions.
    pub plain: bool,
    /// The shared groups (filter, group) it delivers to one member of.
    pub groups: Vec<(String, Arc<str>)>,
}

/// The PUBLISH for `msg` (packet id `pkid`, QoS at most 1 between nodes).
pub(crate) fn encode(msg: &Message, to: &ForwardFor, pkid: u16) -> Publish {
    let now = SystemTime::now();
    let mut properties = msg.properties.clone();
    let before = properties.user_properties.len();
    let mut add = |k: &str, v: String| properties.user_properties.push((k.to_string(), v));
    if let Some(p) = &msg.publisher {
        add(FROM, p.to_string());
    }
    add(ID, format!("{:032x}", msg.id));
    if msg.qos == QoS::ExactlyOnce {
        // Carried at QoS 1 between nodes, delivered at its own QoS.
        add(QOS, "2".to_string());
    }
    if let Some(id) = msg.headers.stored_id {
        add(STORED, id.to_string());
    }
    if to.plain {
        add(PLAIN, String::new());
    }
    for (filter, group) in &to.groups {
        // `<group length>:<group><filter>` (MQTT strings have no NUL to split on).
        add(GROUP, format!("{}:{group}{filter}", group.len()));
    }
    let n = properties.user_properties.len() - before + 1;
    properties
        .user_properties
        .push((COUNT.to_string(), n.to_string()));
    let qos = msg.qos.min(QoS::AtLeastOnce);
    Publish {
        dup: false,
        qos,
        retain: msg.retain,
        topic: msg.topic.to_string(),
        pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
        payload: msg.payload.clone(),
        properties,
        // What it has left, counted from now on the other node.
        message_expiry: msg
            .remaining_expiry(now)
            .map(|d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)),
        topic_alias: None,
        subscription_ids: Vec::new(),
    }
}

/// The message and what it was forwarded for; `None` for a PUBLISH that
/// did not come from a node (no trailing count property).
pub(crate) fn decode(p: Publish) -> Option<(Message, ForwardFor)> {
    let mut properties = p.properties;
    let (key, count) = properties.user_properties.last()?;
    if key != COUNT {
        return None;
    }
    let n: usize = count.parse().ok()?;
    let split = properties.user_properties.len().checked_sub(n)?;
    let internal = properties.user_properties.split_off(split);
    let mut msg = Message::new(Arc::<str>::from(p.topic.as_str()), p.payload, p.qos, p.retain);
    msg.expiry_interval = p
        .message_expiry
        .map(|s| std::time::Duration::from_secs(u64::from(s)));
    let mut to = ForwardFor::default();
    for (k, v) in internal {
        if !k.starts_with(PREFIX) {
            return None;
        }
        match k.as_str() {
            FROM => msg.publisher = Some(Arc::from(v.as_str())),
            ID => msg.id = u128::from_str_radix(&v, 16).ok()?,
            STORED => msg.headers.stored_id = Some(v.parse().ok()?),
            PLAIN => to.plain = true,
            QOS => msg.qos = QoS::from_u8(v.parse().ok()?)?,
            GROUP => {
                let (len, rest) = v.split_once(':')?;
                let len: usize = len.parse().ok()?;
                let (group, filter) = (rest.get(..len)?, rest.get(len..)?);
                to.groups.push((filter.to_string(), Arc::from(group)));
            }
            _ => {}
        }
    }
    msg.properties = properties;
    Some((msg, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_message_arrives_as_it_was_published() {
        let mut m = Message::new("a/b", "payload", QoS::ExactlyOnce, true);
        m.publisher = Some(Arc::from("pub-1"));
        m.headers.stored_id = Some(42);
        m.expiry_interval = Some(std::time::Duration::from_secs(60));
        m.properties.content_type = Some("text/plain".into());
        m.properties.user_properties = vec![("k".into(), "v".into()), ("$postbox/n".into(), "x".into())];
        let to = ForwardFor {
            plain: true,
            groups: vec![("a/#".into(), Arc::from("g"))],
        };
        let p = encode(&m, &to, 7);
        assert_eq!(
            (p.qos, p.pkid),
            (QoS::AtLeastOnce, 7),
            "at most QoS 1 between nodes"
        );
        let (back, got_to) = decode(p).expect("a node's PUBLISH");
        assert_eq!(got_to, to);
        assert_eq!(back.id, m.id);
        assert_eq!(back.publisher, m.publisher);
        assert_eq!(back.headers.stored_id, Some(42));
        assert_eq!(
            back.properties, m.properties,
            "the message's own properties, untouched"
        );
        assert_eq!(back.qos, QoS::ExactlyOnce);
        assert!(back.retain);
        assert!(back.expiry_interval.is_some_and(|d| d.as_secs() >= 59));
    }

    #[test]
    fn a_publish_without_the_trailer_is_not_a_forward() {
        let p = Publish {
            topic: "a".into(),
            ..Publish::default()
        };
        assert!(decode(p).is_none());
    }
}
