//! # Postbox broker
//!
//! An MQTT 3.1 / 3.1.1 / 5.0 broker built for devices that go offline, with
//! EMQX-style hooks (see the `hooks-spec` crate) through which plugins such
//! as the PostgreSQL backend store and replay messages.
//!
//! ## Main types
//! - [`Server`]: binds listeners, starts plugins, shuts down gracefully.
//! - [`config::Config`], read from `etc/postbox.conf`.
//! - `Session` (module [`session`]): one task per client id that owns the
//!   session's state and, while connected, its socket.
//! - [`router::Router`]: the subscription tries and fan-out;
//!   [`retain::RetainStore`]: retained messages;
//!   [`registry::Registry`]: client id to session task.
//! - [`keepalive::KeepaliveChecks`]: one task checks every connection's
//!   keep-alive (no timer per connection).
//!
//! ## Data flow of a PUBLISH
//! socket → session task (decode in [`codec`], topic alias, ACL,
//! `message.publish` chain, which may hold the acknowledgement) →
//! [`publish`] (one pipeline for client publishes, wills and plugin
//! publishes: ACL, `message.publish`, the outcome) → [`publish::route`]
//! (retain store, router match) → each receiving
//! session task's channel → inflight window / queue → `message.delivered` →
//! encode into that session's output buffer → socket. The publisher's PUBACK
//! is written once the chain has finished. `docs/ARCHITECTURE.md` draws it.
//!
//! Shutdown is a `watch` channel every task listens to; tasks register in a
//! counter so [`Server::shutdown`] can wait for them.

pub mod auth;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod delivery;
pub mod enhanced_auth;
pub mod handle;
pub mod http;
pub mod keepalive;
pub mod listener;
pub mod mailbox;
pub mod metrics;
pub mod publish;
pub mod rate_limit;
pub mod registry;
pub mod retain;
pub mod router;
pub mod server;
pub mod session;
pub mod shared;
pub mod sys;
#[cfg(test)]
mod test_rng;
pub mod tls;
pub mod topic;
pub mod transport;
pub mod trie;
pub mod websocket;

use std::net::SocketAddr;

pub use server::Server;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A configuration file is wrong.
    #[error("{0}")]
    Config(#[from] hooks_spec::ConfError),
    /// A listener could not bind.
    #[error("listener `{name}` cannot bind {addr}: {source}")]
    Bind {
        /// The listener's key (`listener.tcp.<name>` or `listener.ssl.<name>`).
        name: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster could not start (its listener binds as `Bind`).
    #[error("{0}")]
    Cluster(String),
    /// A plugin failed to load its configuration or to start.
    #[error("plugin `{name}` failed to start: {message}")]
    PluginStart {
        /// The plugin.
        name: String,
        /// What went wrong.
        message: String,
    },
}
