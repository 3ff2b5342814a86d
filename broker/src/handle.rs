//! The [`BrokerHandle`] plugins use to act on the broker.

use std::sync::Arc;

use async_trait::async_trait;
use hooks_spec::{BrokerHandle, ClientInfo, Delivery, HandleError, Message, SubOpts};

use crate::delivery::{Replay, Routed, SessionCmd};
use crate::shared::Shared;
use crate::topic;

/// The broker side of [`BrokerHandle`].
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// A handle on a broker's shared state.
    pub fn new(shared: Arc<Shared>) -> Handle {
        Handle { shared }
    }

    fn send(&self, clientid: &str, cmd: SessionCmd) -> Result<(), HandleError> {
        let entry = self
            .shared
            .registry
            .get(clientid)
            .ok_or_else(|| HandleError::NoSession(clientid.to_string()))?;
        entry
            .tx
            .send(cmd)
            .map_err(|_| HandleError::NoSession(clientid.to_string()))
    }
}

#[async_trait]
impl BrokerHandle for Handle {
    fn node_name(&self) -> &str {
        &self.shared.config.node_name
    }

    fn lookup(&self, clientid: &str) -> Option<ClientInfo> {
        self.shared
            .registry
            .get(clientid)
            .map(|e| ClientInfo::clone(&e.client))
    }

    async fn deliver(&self, clientid: &str, delivery: Delivery) -> Result<(), HandleError> {
        self.send(clientid, SessionCmd::Deliver(routed_from(delivery)))
    }

    async fn replay(
        &self,
        clientid: &str,
        filter: &str,
        deliveries: Vec<Delivery>,
        complete_through: Option<i64>,
    ) -> Result<(), HandleError> {
        let entry = self
            .shared
            .registry
            .get(clientid)
            .ok_or_else(|| HandleError::NoSession(clientid.to_string()))?;
        let deliveries = deliveries.into_iter().map(routed_from).collect();
        let replay = Replay {
            filter: filter.to_string(),
            deliveries,
            complete_through,
        };
        entry
            .replay_tx
            .send(replay)
            .map_err(|_| HandleError::NoSession(clientid.to_string()))
    }

    /// Queues the subscription to the session and returns: the session applies
    /// it (and fires session.subscribed) in order with its other work, so a
    /// hook running in that session may call this without waiting on itself.
    async fn subscribe(&self, clientid: &str, filter: &str, opts: SubOpts) -> Result<(), HandleError> {
        topic::validate_subscription(filter, self.shared.config.mqtt.max_topic_levels)
            .map_err(|_| HandleError::InvalidFilter(filter.to_string()))?;
        self.send(
            clientid,
            SessionCmd::Subscribe(Box::new((filter.to_string(), opts))),
        )
    }

    fn shared_members_elsewhere(&self, group: &str, filter: &str) -> bool {
        self.shared
            .router
            .has_member_node(&(filter.to_string(), Arc::from(group)))
    }

    async fn publish(&self, message: Message) -> Result<usize, HandleError> {
        crate::publish::from_plugin(&self.shared, message)
    }
}

fn routed_from(delivery: Delivery) -> Routed {
    Routed {
        qos: delivery.qos.min(delivery.message.qos),
        message: Arc::new(delivery.message),
        retain: delivery.retain,
        subscription_ids: Vec::new(),
        filter: delivery.filter.map(Arc::from),
        share: None,
    }
}
