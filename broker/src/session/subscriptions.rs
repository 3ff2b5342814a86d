//! SUBSCRIBE and UNSUBSCRIBE from the client, and subscriptions made on
//! its behalf (plugins, a restored session): the ACL, `client.subscribe`,
//! the router, retained messages and `session.subscribed`.

use std::sync::Arc;
use std::time::SystemTime;

use hooks_spec::{AclAction, ClientSubArgs, SubOpts, SubscribedArgs, TopicFilter};

use super::inbound::rc;
use super::{Session, Subscription};
use crate::codec::{Packet, SubAck, Subscribe, UnsubAck, Unsubscribe};
use crate::topic;

impl Session {
    /// SUBSCRIBE: validate each filter, run client.subscribe and the ACL,
    /// add to the router (session.subscribed fires), SUBACK, then retained messages.
    pub(super) async fn client_subscribe(&mut self, s: Subscribe) {
        let limits = &self.shared.config.mqtt;
        let max_levels = limits.max_topic_levels;
        let max_subs = limits.max_subscriptions;
        let mut codes: Vec<Option<u8>> = vec![None; s.filters.len()];
        let mut wanted: Vec<TopicFilter> = Vec::new();
        let replay_from = match replay_from(&s.user_properties, SystemTime::now()) {
            Ok(t) => t,
            Err(bad) => {
                tracing::debug!(clientid = %self.client.clientid, "SUBSCRIBE refused: {bad}");
                codes.fill(Some(rc::IMPLEMENTATION_SPECIFIC_ERROR));
                None
            }
        };
        for (i, f) in s.filters.iter().enumerate() {
            if codes[i].is_some() {
                continue;
            }
            let share = match topic::parse_shared(&f.filter) {
                Ok(share) => share,
                Err(_) => {
                    codes[i] = Some(rc::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            let inner = share.as_ref().map(|sh| sh.filter).unwrap_or(&f.filter);
            if topic::validate_filter(inner, max_levels).is_err() {
                codes[i] = Some(rc::TOPIC_FILTER_INVALID);
                continue;
            }
            wanted.push(TopicFilter {
                filter: f.filter.clone(),
                opts: SubOpts {
                    qos: f.qos,
                    no_local: f.no_local,
                    retain_as_published: f.retain_as_published,
                    retain_handling: f.retain_handling,
                    subscription_id: s.subscription_id,
                    share_group: share.map(|sh| sh.group.to_string()),
                    is_new: true,
                    replay_from,
                },
            });
        }
        let hooks = Arc::clone(&self.shared.hooks);
        if !hooks.client_subscribe.is_empty() && !wanted.is_empty() {
            let args = Arc::new(ClientSubArgs {
                client: hooks_spec::ClientInfo::clone(&self.client),
                user_properties: s.user_properties.clone(),
            });
            wanted = hooks.client_subscribe.run_fold(args, wanted).await.into_inner();
        }
        let mut retained = Vec::new();
        for (i, f) in s.filters.iter().enumerate() {
            if codes[i].is_some() {
                continue;
            }
            let Some(tf) = wanted.iter().find(|w| w.filter == f.filter).cloned() else {
                // Removed by a client.subscribe callback: refused.
                codes[i] = Some(rc::NOT_AUTHORIZED);
                continue;
            };
            if !self.acl_allows(AclAction::Subscribe, &f.filter).await {
                tracing::info!(clientid = %self.client.clientid, filter = %f.filter, "subscribe denied by ACL");
                crate::metrics::Metrics::bump(&self.shared.metrics.acl_denied_subscribe);
                codes[i] = Some(rc::NOT_AUTHORIZED);
                continue;
            }
            if max_subs > 0
                && self.subscriptions.len() >= max_subs
                && !self.subscriptions.contains_key(&f.filter)
            {
                codes[i] = Some(rc::QUOTA_EXCEEDED);
                continue;
            }
            codes[i] = Some(tf.opts.qos.as_u8());
            retained.extend(self.add_subscription(tf.filter, tf.opts, false).await);
        }
        let codes = codes.into_iter().map(|c| c.unwrap_or(rc::UNSPECIFIED)).collect();
        self.send(Packet::SubAck(SubAck {
            pkid: s.pkid,
            codes,
            reason_string: None,
        }));
        // Replays a plugin made from session.subscribed: after SUBACK, before
        // anything routed later (the command channel is not read until we return).
        self.drain_replays().await;
        for r in retained {
            self.deliver_own_retained(r).await;
        }
    }

    /// A plugin subscribes the client (for example, restoring stored
    /// subscriptions), subject to the ACL like a SUBSCRIBE.
    pub(super) async fn subscribe_for_plugin(&mut self, filter: String, opts: SubOpts) {
        self.subscribe_on_behalf(filter, opts, false).await;
    }

    /// Subscribes the client without a SUBSCRIBE from it: for a plugin
    /// (`BrokerHandle::subscribe`), or `restored` with a stored session.
    /// A restored subscription gets no retained messages (the client did
    /// not subscribe again).
    pub(super) async fn subscribe_on_behalf(&mut self, filter: String, mut opts: SubOpts, restored: bool) {
        let max_levels = self.shared.config.mqtt.max_topic_levels;
        let inner = match topic::parse_shared(&filter) {
            Ok(Some(share)) => {
                opts.share_group = Some(share.group.to_string());
                share.filter.to_string()
            }
            Ok(None) => filter.clone(),
            Err(e) => {
                tracing::warn!(clientid = %self.client.clientid, %filter, "plugin subscription refused: {e}");
                return;
            }
        };
        if let Err(e) = topic::validate_filter(&inner, max_levels) {
            tracing::warn!(clientid = %self.client.clientid, %filter, "plugin subscription refused: {e}");
            return;
        }
        // As if the client had sent SUBSCRIBE: the ACL decides (a stored
        // subscription may have been made by another user of this client id).
        if !self.acl_allows(AclAction::Subscribe, &filter).await {
            tracing::info!(clientid = %self.client.clientid, %filter, "plugin subscription denied by ACL");
            crate::metrics::Metrics::bump(&self.shared.metrics.acl_denied_subscribe);
            return;
        }
        let retained = self.add_subscription(filter, opts, restored).await;
        self.drain_replays().await;
        for r in retained {
            self.deliver_own_retained(r).await;
        }
    }

    /// Puts a subscription in the router and the session, fires
    /// session.subscribed, and returns the retained messages it should get
    /// (none for a `restored` one).
    async fn add_subscription(
        &mut self,
        full_filter: String,
        mut opts: SubOpts,
        restored: bool,
    ) -> Vec<super::Routed> {
        // Each subscription gets the retained messages again; duplicates are only suppressed within one.
        if let Some(t) = self.ids.existing_mut() {
            t.retained_sent.clear();
        }
        let inner = match (&opts.share_group, topic::parse_shared(&full_filter)) {
            (Some(_), Ok(Some(share))) => share.filter.to_string(),
            _ => full_filter.clone(),
        };
        opts.is_new = !self.subscriptions.contains_key(&full_filter);
        let route = crate::router::Route {
            tx: self.self_tx(),
            opts: opts.clone(),
        };
        self.shared.router.subscribe(&self.client.clientid, &inner, route);
        self.subscriptions.insert(
            full_filter,
            Subscription {
                filter: inner.clone(),
                opts: opts.clone(),
            },
        );
        if opts.replay_from.is_some() {
            // The client asked for stored messages again, delivered or not.
            self.stored.forget_seen();
        }
        if opts.share_group.is_some() && self.conn.is_some() {
            // A connected member: what offline members of the group hold comes here.
            self.call_offline_members();
        }
        let hooks = Arc::clone(&self.shared.hooks);
        hooks
            .session_subscribed
            .run(Arc::new(SubscribedArgs {
                client: hooks_spec::ClientInfo::clone(&self.client),
                filter: inner.clone(),
                opts: opts.clone(),
                restored,
            }))
            .await;
        // Retained messages: never for shared subscriptions (MQTT 5 4.8.2);
        // retain handling 1 only for a new subscription, 2 never.
        let send_retained = !restored
            && opts.share_group.is_none()
            && match opts.retain_handling {
                0 => true,
                1 => opts.is_new,
                _ => false,
            };
        if !send_retained || !self.shared.config.mqtt.retain_available {
            return Vec::new();
        }
        self.shared
            .retain
            .matching(&inner)
            .into_iter()
            .map(|m| super::Routed {
                qos: m.qos.min(opts.qos),
                message: m,
                retain: true,
                subscription_ids: opts.subscription_id.into_iter().collect(),
                filter: None,
                share: None,
            })
            .collect()
    }

    pub(super) async fn client_unsubscribe(&mut self, u: Unsubscribe) {
        let hooks = Arc::clone(&self.shared.hooks);
        let mut filters = u.filters.clone();
        if !hooks.client_unsubscribe.is_empty() {
            let args = Arc::new(ClientSubArgs {
                client: hooks_spec::ClientInfo::clone(&self.client),
                user_properties: u.user_properties.clone(),
            });
            filters = hooks
                .client_unsubscribe
                .run_fold(args, filters)
                .await
                .into_inner();
        }
        let mut codes = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            if !filters.contains(f) {
                codes.push(rc::NOT_AUTHORIZED);
                continue;
            }
            match self.subscriptions.remove(f) {
                Some(sub) => {
                    self.stop_replay(f).await;
                    self.shared.router.unsubscribe(
                        &self.client.clientid,
                        &sub.filter,
                        sub.opts.share_group.as_deref(),
                    );
                    if let Some(group) = sub.opts.share_group.as_deref() {
                        self.redispatch_group(&(sub.filter.clone(), Arc::from(group)));
                    }
                    hooks
                        .session_unsubscribed
                        .run(Arc::new(SubscribedArgs {
                            client: hooks_spec::ClientInfo::clone(&self.client),
                            filter: sub.filter,
                            opts: sub.opts,
                            restored: false,
                        }))
                        .await;
                    codes.push(0);
                }
                None => codes.push(rc::NO_SUBSCRIPTION_EXISTED),
            }
        }
        self.send(Packet::UnsubAck(UnsubAck { pkid: u.pkid, codes }));
    }
}

/// The time a SUBSCRIBE's `replay-from` user property asks stored messages
/// to be replayed from: an RFC 3339 time, or a duration before `now`.
fn replay_from(props: &[(String, String)], now: SystemTime) -> Result<Option<SystemTime>, String> {
    let Some((_, value)) = props.iter().find(|(k, _)| k == hooks_spec::REPLAY_FROM) else {
        return Ok(None);
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(value) {
        return Ok(Some(t));
    }
    match humantime::parse_duration(value) {
        Ok(ago) => Ok(Some(now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH))),
        Err(_) => Err(format!(
            "user property `{}` is `{value}`: expected an RFC 3339 time (2026-12-07T10:00:00Z) or a duration \
             ago (90m)",
            hooks_spec::REPLAY_FROM
        )),
    }
}

#[cfg(test)]
mod replay_from_tests {
    use std::time::Duration;

    use super::*;

    fn props(v: &str) -> Vec<(String, String)> {
        vec![
            ("other".into(), "x".into()),
            (hooks_spec::REPLAY_FROM.into(), v.into()),
        ]
    }

    #[test]
    fn times_and_durations_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(replay_from(&[], now), Ok(None));
        assert_eq!(
            replay_from(&props("90m"), now),
            Ok(Some(now - Duration::from_secs(5400)))
        );
        assert_eq!(
            replay_from(&props("2027-01-15T08:00:00Z"), now),
            Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)))
        );
        assert!(replay_from(&props("yesterday"), now).is_err());
    }
}
