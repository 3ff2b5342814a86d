//! Hook point names, as EMQX spells them.

use std::fmt;
use std::str::FromStr;

/// Whether a hook notifies (callbacks may only stop it) or folds an accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `run`: callbacks are told; one may stop the chain.
    Notification,
    /// `run_fold`: callbacks transform an accumulator.
    Fold,
}

macro_rules! hook_points {
    ($( $variant:ident => $name:literal, $kind:ident; )*) => {
        /// One of the broker's hook points.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum HookPoint {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl HookPoint {
            /// Every hook point, in the order of the hooks-spec documentation.
            pub const ALL: &'static [HookPoint] = &[$(HookPoint::$variant),*];

            /// EMQX's name, such as `message.publish`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(HookPoint::$variant => $name,)*
                }
            }

            /// Notification or fold.
            pub fn kind(self) -> HookKind {
                match self {
                    $(HookPoint::$variant => HookKind::$kind,)*
                }
            }
        }
    };
}

hook_points! {
    ClientConnect => "client.connect", Fold;
    ClientConnack => "client.connack", Fold;
    ClientConnected => "client.connected", Notification;
    ClientDisconnected => "client.disconnected", Notification;
    ClientAuthenticate => "client.authenticate", Fold;
    ClientCheckAcl => "client.check_acl", Fold;
    ClientSubscribe => "client.subscribe", Fold;
    ClientUnsubscribe => "client.unsubscribe", Fold;
    SessionRestore => "session.restore", Fold;
    SessionCreated => "session.created", Notification;
    SessionSubscribed => "session.subscribed", Notification;
    SessionUnsubscribed => "session.unsubscribed", Notification;
    SessionResumed => "session.resumed", Notification;
    SessionDiscarded => "session.discarded", Notification;
    SessionTakeovered => "session.takeovered", Notification;
    SessionTerminated => "session.terminated", Notification;
    MessagePublish => "message.publish", Fold;
    MessageDelivered => "message.delivered", Fold;
    MessageAcked => "message.acked", Notification;
    MessageDropped => "message.dropped", Notification;
    SessionBacklogExceeded => "session.backlog_exceeded", Notification;
    NodeDown => "node.down", Notification;
}

/// A string that names no hook point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hook point `{0}`")]
pub struct UnknownHookPoint(pub String);

impl FromStr for HookPoint {
    type Err = UnknownHookPoint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HookPoint::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownHookPoint(s.to_string()))
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        assert_eq!(HookPoint::ALL.len(), 22);
        for p in HookPoint::ALL {
            assert_eq!(p.as_str().parse::<HookPoint>(), Ok(*p));
            assert_eq!(p.to_string(), p.as_str());
        }
    }

    #[test]
    fn unknown_names_are_refused() {
        assert_eq!(
            "message.publsh".parse::<HookPoint>(),
            Err(UnknownHookPoint("message.publsh".into()))
        );
        assert_eq!(HookPoint::MessagePublish.kind(), HookKind::Fold);
        assert_eq!(HookPoint::MessageAcked.kind(), HookKind::Notification);
    }
}
