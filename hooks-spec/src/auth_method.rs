//! MQTT 5 enhanced authentication methods (CONNECT / AUTH with an
//! Authentication Method), which plugins add.
//!
//! A plugin registers an [`AuthMethod`] under its name in
//! [`Hooks::auth_methods`](crate::Hooks::auth_methods) at start (and it is
//! removed with the plugin's other callbacks). When a CONNECT names a method,
//! the broker starts an [`AuthExchange`] for the connection and feeds it the
//! client's Authentication Data, first from CONNECT, then from each AUTH
//! (0x18); the exchange answers with an [`AuthStep`]. The same happens for a
//! re-authentication (AUTH 0x19) on a connected client. A CONNECT naming a
//! method no plugin registered is refused with CONNACK 0x8C (Bad
//! authentication method). `client.authenticate` does not run for a
//! connection authenticated this way: the method decides.
//!
//! A step is async: a method may look its credentials up (a database query)
//! while the connection waits; it must not block the thread. [`crate::scram`]
//! is SCRAM, for plugins that can supply the users' keys.

use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use bytes::Bytes;

use crate::ClientInfo;

/// What an exchange says after the client's latest Authentication Data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send this Authentication Data to the client (AUTH 0x18) and wait for
    /// its next AUTH.
    Continue(Bytes),
    /// Authenticated: CONNACK 0 (or AUTH 0x00 for a re-authentication)
    /// carries `data` as the method's last message.
    Success {
        /// Authentication Data for the client, if the method has a last word.
        data: Option<Bytes>,
        /// The user the method authenticated: it becomes the client's user
        /// name (for ACLs and sessions) when the CONNECT gave none.
        username: Option<String>,
    },
    /// Refused (CONNACK 0x86; for a re-authentication, DISCONNECT 0x87). The
    /// text is logged, not sent.
    Failure(String),
}

/// One authentication exchange of one connection.
#[async_trait]
pub trait AuthExchange: Send {
    /// The client's next Authentication Data (empty when it sent none).
    async fn step(&mut self, data: &[u8]) -> AuthStep;
}

/// An authentication method, such as `SCRAM-SHA-512`.
pub trait AuthMethod: Send + Sync {
    /// The Authentication Method name clients send (compared exactly).
    fn name(&self) -> &str;

    /// A new exchange for `client` (its user name as the CONNECT gave it).
    fn start(&self, client: &ClientInfo) -> Box<dyn AuthExchange>;
}

/// The registered methods, by owner (plugin name).
#[derive(Default)]
pub struct AuthMethods {
    entries: RwLock<Vec<(String, Arc<dyn AuthMethod>)>>,
}

impl AuthMethods {
    /// Registers `method` for `owner`; a method of the same name registered
    /// earlier stays first (the first registration wins).
    pub fn register(&self, owner: &str, method: Arc<dyn AuthMethod>) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.push((owner.to_string(), method));
    }

    /// The method named `name`, if one is registered.
    pub fn find(&self, name: &str) -> Option<Arc<dyn AuthMethod>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter()
            .find(|(_, m)| m.name() == name)
            .map(|(_, m)| Arc::clone(m))
    }

    /// The names of the registered methods, in registration order.
    pub fn names(&self) -> Vec<String> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.iter().map(|(_, m)| m.name().to_string()).collect()
    }

    /// Removes what `owner` registered; returns how many.
    pub fn remove_owner(&self, owner: &str) -> usize {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let before = entries.len();
        entries.retain(|(o, _)| o != owner);
        before - entries.len()
    }
}

impl std::fmt::Debug for AuthMethods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
