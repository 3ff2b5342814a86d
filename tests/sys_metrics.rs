//! Refusals are counted and published under `$SYS`: a failed
//! authentication, an ACL-denied PUBLISH and an ACL-denied SUBSCRIBE each
//! show up in `$SYS/brokers/<node>/metrics/...`, which an operator can
//! subscribe to. The broker runs in-process with a test plugin that refuses
//! the user `intruder` and denies `secret/#`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::path::Path;

use async_trait::async_trait;
use hooks_spec::{AclResult, AuthResult, ConfFile, Flow, Hooks, Plugin, PluginContext, PluginError};
use postbox::config::Config;
use postbox::Server;
use rumqttc::QoS;
use support::*;

struct Gatekeeper;

#[async_trait]
impl Plugin for Gatekeeper {
    fn name(&self) -> &str {
        "gatekeeper"
    }

    fn load_config(&mut self, _path: &Path) -> Result<(), PluginError> {
        Ok(())
    }

    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        ctx.hooks
            .client_authenticate
            .add("gatekeeper", 0, |args, _| async move {
                let denied = args.client.username.as_deref() == Some("intruder");
                Ok(Flow::Stop(if denied {
                    AuthResult::Deny
                } else {
                    AuthResult::Allow
                }))
            });
        ctx.hooks
            .client_check_acl
            .add("gatekeeper", 0, |args, _| async move {
                let denied = args.topic.starts_with("secret/");
                Ok(Flow::Stop(if denied {
                    AclResult::Deny
                } else {
                    AclResult::Allow
                }))
            });
        Ok(())
    }

    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
        hooks.remove_owner("gatekeeper");
        Ok(())
    }
}

async fn start(extra: &str) -> Server {
    let text = format!("listener.tcp.external = 127.0.0.1:0\nnode.name = pb@test\n{extra}");
    let conf = ConfFile::parse(Path::new("sys_metrics.conf"), &text).unwrap();
    let config = Config::from_conf(&conf).unwrap();
    Server::start(config, vec![Box::new(Gatekeeper)]).await.unwrap()
}

/// Waits until `topic` carries `want` (values are republished every interval).
async fn await_value(watcher: &mut V4Client, topic: &str, want: &str) {
    watcher
        .poll_until(|ev| match ev {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))
                if p.topic == topic && p.payload.as_ref() == want.as_bytes() =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
}

#[tokio::test]
async fn refusals_are_counted_under_sys() {
    let server = start("sys.interval = 100ms\n").await;
    let addr = server.local_addrs()[0];
    let (mut watcher, _) = V4Client::connect(v4_options(addr, "watcher", true)).await;
    assert_eq!(
        watcher
            .subscribe("$SYS/brokers/pb@test/metrics/+", QoS::AtMostOnce)
            .await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    await_value(
        &mut watcher,
        "$SYS/brokers/pb@test/metrics/client.auth.failure",
        "0",
    )
    .await;

    let mut opts = v4_options(addr, "intruder-device", true);
    opts.set_credentials("intruder", "guess");
    let refused = V4Client::try_connect(opts).await;
    assert!(refused.is_err(), "the intruder was let in");
    await_value(
        &mut watcher,
        "$SYS/brokers/pb@test/metrics/client.auth.failure",
        "1",
    )
    .await;

    let (mut device, _) = V4Client::connect(v4_options(addr, "device", true)).await;
    assert_eq!(
        device.subscribe("secret/#", QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    await_value(
        &mut watcher,
        "$SYS/brokers/pb@test/metrics/client.acl.deny.subscribe",
        "1",
    )
    .await;
    device
        .publish_acked("secret/plans", QoS::AtLeastOnce, false, "x")
        .await;
    await_value(
        &mut watcher,
        "$SYS/brokers/pb@test/metrics/client.acl.deny.publish",
        "1",
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn connected_clients_are_published_and_sys_is_not_matched_by_a_leading_wildcard() {
    let server = start("sys.interval = 100ms\n").await;
    let addr = server.local_addrs()[0];
    let (mut everything, _) = V4Client::connect(v4_options(addr, "everything", true)).await;
    everything.subscribe("#", QoS::AtMostOnce).await;
    let (mut watcher, _) = V4Client::connect(v4_options(addr, "watcher", true)).await;
    watcher
        .subscribe("$SYS/brokers/pb@test/clients/connected", QoS::AtMostOnce)
        .await;
    await_value(&mut watcher, "$SYS/brokers/pb@test/clients/connected", "2").await;
    // Several intervals have passed by now: `#` saw none of them.
    everything
        .publish("plain/topic", QoS::AtMostOnce, false, "hello")
        .await;
    let p = everything.next_publish().await;
    assert_eq!(p.topic, "plain/topic");
    server.shutdown().await;
}
