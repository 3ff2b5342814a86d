//! Hooks seen from a plugin: the broker library runs in-process with a test
//! plugin, and real MQTT clients talk to it over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hooks_spec::{
    BrokerHandle, ConfFile, Delivery, Flow, Hooks, Message, Plugin, PluginContext, PluginError, QoS as HQoS,
    SubOpts,
};
use postbox::config::Config;
use postbox::Server;
use rumqttc::QoS;
use support::*;
use tokio::sync::{mpsc, Notify};

/// Reports (client id, storage id) of each message.acked.
type AckedTx = mpsc::UnboundedSender<(String, Option<i64>)>;

/// What the test plugin does, and what it observed.
#[derive(Default)]
struct Probe {
    /// Publishes to `held/#` wait until this is notified.
    release: Notify,
    /// Records of hooks that fired.
    events: Mutex<Vec<String>>,
    handle: Mutex<Option<Arc<dyn BrokerHandle>>>,
    /// Notified each time session.subscribed fires.
    subscribed: Notify,
    acked_tx: Mutex<Option<AckedTx>>,
}

struct TestPlugin(Arc<Probe>);

#[async_trait]
impl Plugin for TestPlugin {
    fn name(&self) -> &str {
        "test_plugin"
    }

    fn load_config(&mut self, _path: &Path) -> Result<(), PluginError> {
        Ok(())
    }

    async fn start(&self, ctx: PluginContext) -> Result<(), PluginError> {
        *self.0.handle.lock().unwrap() = Some(Arc::clone(&ctx.broker));
        let probe = Arc::clone(&self.0);
        ctx.hooks
            .message_publish
            .add("test_plugin", 0, move |_, mut m: Message| {
                let probe = Arc::clone(&probe);
                async move {
                    if m.topic.starts_with("held/") {
                        probe.release.notified().await;
                    }
                    if m.topic.starts_with("blocked/") {
                        return Ok(Flow::Stop(m));
                    }
                    m.headers.stored_id = Some(1000);
                    Ok(Flow::Continue(m))
                }
            });
        let probe = Arc::clone(&self.0);
        ctx.hooks.message_acked.add("test_plugin", 0, move |args, ()| {
            let probe = Arc::clone(&probe);
            async move {
                if let Some(tx) = probe.acked_tx.lock().unwrap().as_ref() {
                    let _ = tx.send((args.client.clientid.to_string(), args.message.headers.stored_id));
                }
                Ok(Flow::Continue(()))
            }
        });
        let probe = Arc::clone(&self.0);
        ctx.hooks
            .session_subscribed
            .add("test_plugin", 0, move |args, ()| {
                let probe = Arc::clone(&probe);
                async move {
                    probe
                        .events
                        .lock()
                        .unwrap()
                        .push(format!("subscribed {} {}", args.client.clientid, args.filter));
                    probe.subscribed.notify_one();
                    Ok(Flow::Continue(()))
                }
            });
        Ok(())
    }

    async fn stop(&self, hooks: &Hooks) -> Result<(), PluginError> {
        hooks.remove_owner("test_plugin");
        Ok(())
    }
}

async fn start_with_probe() -> (Server, Arc<Probe>) {
    let conf = ConfFile::parse(
        Path::new("inprocess.conf"),
        "listener.tcp.external = 127.0.0.1:0\n",
    )
    .unwrap();
    let config = Config::from_conf(&conf).unwrap();
    let probe = Arc::new(Probe::default());
    let server = Server::start(config, vec![Box::new(TestPlugin(Arc::clone(&probe)))])
        .await
        .unwrap();
    (server, probe)
}

#[tokio::test]
async fn puback_waits_for_the_publish_chain() {
    let (server, probe) = start_with_probe().await;
    let addr = server.local_addrs()[0];
    let (mut sub, _) = V4Client::connect(v4_options(addr, "sub", true)).await;
    sub.subscribe("held/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = V4Client::connect(v4_options(addr, "pub", true)).await;
    publ.client
        .publish("held/x", QoS::AtLeastOnce, false, "wait")
        .await
        .unwrap();
    // While the callback holds the message: no PUBACK, no delivery.
    let early = tokio::time::timeout(
        Duration::from_millis(400),
        publ.poll_until(|ev| {
            matches!(ev, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
        }),
    )
    .await;
    assert!(early.is_err(), "PUBACK must wait for the message.publish chain");
    sub.expect_no_publish(Duration::from_millis(100)).await;
    probe.release.notify_one();
    publ.poll_until(|ev| matches!(ev, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(()))
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"wait");
    server.shutdown().await;
}

#[tokio::test]
async fn a_stopped_publish_is_not_routed() {
    let (server, _probe) = start_with_probe().await;
    let addr = server.local_addrs()[0];
    let (mut sub, _) = V4Client::connect(v4_options(addr, "sub", true)).await;
    sub.subscribe("blocked/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = V4Client::connect(v4_options(addr, "pub", true)).await;
    publ.publish("blocked/x", QoS::AtLeastOnce, false, "no").await;
    sub.expect_no_publish(Duration::from_millis(300)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn message_acked_fires_on_puback_with_the_plugin_headers() {
    let (server, probe) = start_with_probe().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    *probe.acked_tx.lock().unwrap() = Some(tx);
    let addr = server.local_addrs()[0];
    let (mut sub, _) = V4Client::connect(v4_options(addr, "acker", true)).await;
    sub.subscribe("acks", QoS::AtLeastOnce).await;
    let (mut publ, _) = V4Client::connect(v4_options(addr, "pub", true)).await;
    publ.publish("acks", QoS::AtLeastOnce, false, "ack me").await;
    sub.next_publish().await; // rumqttc acknowledges automatically
    let (who, stored) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((who.as_str(), stored), ("acker", Some(1000)));
    server.shutdown().await;
}

#[tokio::test]
async fn the_handle_delivers_into_a_session_and_subscribes_on_behalf() {
    let (server, probe) = start_with_probe().await;
    let addr = server.local_addrs()[0];
    let (mut c, _) = V4Client::connect(v4_options(addr, "target", true)).await;
    let handle = probe.handle.lock().unwrap().clone().unwrap();
    assert_eq!(handle.lookup("target").unwrap().clientid.as_ref(), "target");
    assert!(handle.lookup("nobody").is_none());

    let msg = Message::new("direct/line", "from plugin", HQoS::AtLeastOnce, false);
    handle
        .deliver(
            "target",
            Delivery {
                message: msg,
                qos: HQoS::AtLeastOnce,
                retain: false,
                filter: None,
            },
        )
        .await
        .unwrap();
    let p = c.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.qos, &p.payload[..]),
        ("direct/line", QoS::AtLeastOnce, &b"from plugin"[..])
    );
    assert!(p.pkid > 0, "a packet id from the session");

    handle
        .subscribe("target", "restored/#", SubOpts::with_qos(HQoS::AtLeastOnce))
        .await
        .unwrap();
    // The session applies it and fires session.subscribed.
    tokio::time::timeout(Duration::from_secs(5), probe.subscribed.notified())
        .await
        .unwrap();
    let (mut publ, _) = V4Client::connect(v4_options(addr, "pub", true)).await;
    publ.publish("restored/1", QoS::AtLeastOnce, false, "via restored sub")
        .await;
    assert_eq!(c.next_publish().await.topic, "restored/1");
    assert!(probe
        .events
        .lock()
        .unwrap()
        .contains(&"subscribed target restored/#".to_string()));
    server.shutdown().await;
}

/// A plugin that counts its reloads, and fails them when told to.
struct Reloading {
    name: &'static str,
    fail: bool,
    reloads: Arc<Mutex<u32>>,
}

#[async_trait]
impl Plugin for Reloading {
    fn name(&self) -> &str {
        self.name
    }

    fn load_config(&mut self, _path: &Path) -> Result<(), PluginError> {
        Ok(())
    }

    async fn start(&self, _ctx: PluginContext) -> Result<(), PluginError> {
        Ok(())
    }

    async fn stop(&self, _hooks: &Hooks) -> Result<(), PluginError> {
        Ok(())
    }

    async fn reload(&self) -> Result<(), PluginError> {
        *self.reloads.lock().unwrap() += 1;
        if self.fail {
            return Err(PluginError::Reload("broken on purpose".into()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn every_plugin_reloads_even_after_one_fails() {
    let conf = ConfFile::parse(
        Path::new("inprocess.conf"),
        "listener.tcp.external = 127.0.0.1:0\n",
    )
    .unwrap();
    let config = Config::from_conf(&conf).unwrap();
    let failing = Arc::new(Mutex::new(0));
    let working = Arc::new(Mutex::new(0));
    let plugins: Vec<Box<dyn Plugin>> = vec![
        Box::new(Reloading {
            name: "failing",
            fail: true,
            reloads: Arc::clone(&failing),
        }),
        // Without a reload of its own: the default does nothing.
        Box::new(TestPlugin(Arc::new(Probe::default()))),
        Box::new(Reloading {
            name: "working",
            fail: false,
            reloads: Arc::clone(&working),
        }),
    ];
    let server = Server::start(config, plugins).await.unwrap();
    assert_eq!(server.reload_plugins().await, 1, "one plugin failed");
    assert_eq!(server.reload_plugins().await, 1);
    assert_eq!((*failing.lock().unwrap(), *working.lock().unwrap()), (2, 2));
    // The broker still serves clients.
    let (mut c, _) = V4Client::connect(v4_options(server.local_addrs()[0], "c", true)).await;
    c.subscribe("t", QoS::AtMostOnce).await;
    server.shutdown().await;
}
