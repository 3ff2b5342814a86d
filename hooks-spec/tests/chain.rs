//! Hook engine behaviour: ordering, stop, fold, failure isolation.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hooks_spec::{
    AuthArgs, AuthResult, Chain, Flow, HookError, HookPoint, Hooks, Message, PublishArgs, QoS, Registration,
};

type Log = Arc<Mutex<Vec<&'static str>>>;

fn recorder(chain: &Chain<(), ()>, log: &Log, owner: &str, priority: i32, name: &'static str, stop: bool) {
    let log = Arc::clone(log);
    chain.add(owner, priority, move |_, ()| {
        let log = Arc::clone(&log);
        async move {
            log.lock().unwrap().push(name);
            Ok(if stop { Flow::Stop(()) } else { Flow::Continue(()) })
        }
    });
}

#[tokio::test]
async fn higher_priority_first_then_registration_order() {
    let chain: Chain<(), ()> = Chain::new(HookPoint::ClientConnected, Duration::from_secs(1));
    let log: Log = Arc::default();
    recorder(&chain, &log, "p", 0, "low-a", false);
    recorder(&chain, &log, "p", 10, "high", false);
    recorder(&chain, &log, "p", 0, "low-b", false);
    recorder(&chain, &log, "p", 5, "mid", false);
    assert!(!chain.run(Arc::new(())).await);
    assert_eq!(*log.lock().unwrap(), vec!["high", "mid", "low-a", "low-b"]);
}

#[tokio::test]
async fn notification_stop_ends_the_chain() {
    let chain: Chain<(), ()> = Chain::new(HookPoint::ClientConnected, Duration::from_secs(1));
    let log: Log = Arc::default();
    recorder(&chain, &log, "p", 3, "first", false);
    recorder(&chain, &log, "p", 2, "stopper", true);
    recorder(&chain, &log, "p", 1, "never", false);
    assert!(chain.run(Arc::new(())).await, "run reports the stop");
    assert_eq!(*log.lock().unwrap(), vec!["first", "stopper"]);
}

#[tokio::test]
async fn fold_passes_the_accumulator_and_stop_returns_it() {
    let chain: Chain<(), Vec<u32>> = Chain::new(HookPoint::ClientSubscribe, Duration::from_secs(1));
    chain.add("p", 3, |_, mut acc: Vec<u32>| async move {
        acc.push(1);
        Ok(Flow::Continue(acc))
    });
    chain.add("p", 2, |_, mut acc: Vec<u32>| async move {
        acc.push(2);
        Ok(Flow::Stop(acc))
    });
    chain.add("p", 1, |_, mut acc: Vec<u32>| async move {
        acc.push(3);
        Ok(Flow::Continue(acc))
    });
    assert_eq!(
        chain.run_fold(Arc::new(()), vec![0]).await,
        Flow::Stop(vec![0, 1, 2])
    );
}

#[tokio::test]
async fn publish_fold_rewrites_or_drops_a_message() {
    let hooks = Hooks::new(Duration::from_secs(1));
    hooks
        .message_publish
        .add("rewriter", 10, |_, mut m: Message| async move {
            m.topic = Arc::from(format!("rewritten/{}", m.topic));
            m.headers.stored_id = Some(42);
            Ok(Flow::Continue(m))
        });
    hooks
        .message_publish
        .add("dropper", 5, |_, m: Message| async move {
            if m.payload.as_ref() == b"drop me" {
                Ok(Flow::Stop(m))
            } else {
                Ok(Flow::Continue(m))
            }
        });
    let args = Arc::new(PublishArgs {
        client: None,
        will: false,
    });
    let kept = hooks
        .message_publish
        .run_fold(
            Arc::clone(&args),
            Message::new("a/b", "hi", QoS::AtLeastOnce, false),
        )
        .await;
    match kept {
        Flow::Continue(m) => {
            assert_eq!(&*m.topic, "rewritten/a/b");
            assert_eq!(m.headers.stored_id, Some(42));
        }
        Flow::Stop(_) => panic!("message should pass"),
    }
    let dropped = hooks
        .message_publish
        .run_fold(args, Message::new("a/b", "drop me", QoS::AtMostOnce, false))
        .await;
    assert!(dropped.is_stop());
}

#[tokio::test]
async fn error_panic_and_timeout_are_isolated_and_counted() {
    let chain: Chain<(), Vec<&'static str>> =
        Chain::new(HookPoint::ClientSubscribe, Duration::from_millis(50));
    chain.add("bad", 4, |_, _acc: Vec<&'static str>| async move {
        Err(HookError::new("boom"))
    });
    chain.add("bad", 3, |_, acc: Vec<&'static str>| async move {
        if acc.is_empty() {
            panic!("callback panicked");
        }
        Ok(Flow::Continue(acc))
    });
    chain.add("bad", 2, |_, acc: Vec<&'static str>| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Flow::Continue(acc))
    });
    chain.add("good", 1, |_, mut acc: Vec<&'static str>| async move {
        acc.push("good ran");
        Ok(Flow::Continue(acc))
    });
    let out = chain.run_fold(Arc::new(()), Vec::new()).await;
    // Each failure continued with the accumulator as it was before the failing call.
    assert_eq!(out, Flow::Continue(vec!["good ran"]));
    assert_eq!(chain.failures(), 3);
}

#[tokio::test]
async fn failing_authentication_callback_denies() {
    let hooks = Hooks::new(Duration::from_millis(50));
    hooks.client_authenticate.add(
        "broken",
        0,
        |_, _acc| async move { Err(HookError::new("db down")) },
    );
    hooks
        .client_authenticate
        .add("allow-all", -1, |_, _acc| async move {
            Ok(Flow::Continue(AuthResult::Allow))
        });
    let args = Arc::new(AuthArgs {
        client: hooks_spec::ClientInfo {
            clientid: Arc::from("c"),
            username: Some("u".into()),
            peer: "127.0.0.1:1".parse().unwrap(),
            protocol: hooks_spec::ProtocolVersion::V311,
            clean_start: true,
            session_expiry: 0,
            keepalive: 30,
            cert_common_name: None,
        },
        password: None,
    });
    let out = hooks.client_authenticate.run_fold(args, AuthResult::Ignore).await;
    assert_eq!(
        out,
        Flow::Stop(AuthResult::Deny),
        "a broken auth provider must not let anyone in"
    );
}

#[tokio::test]
async fn a_callback_can_bring_its_own_failure_policy() {
    let chain: Chain<(), Message> = Chain::new(HookPoint::MessagePublish, Duration::from_millis(20));
    chain.register(Registration {
        owner: "store".into(),
        priority: 0,
        timeout: None,
        on_failure: Some(Arc::new(|mut m: Message| {
            m.headers.not_stored = true;
            Flow::Continue(m)
        })),
        filter: None,
        callback: Arc::new(|_, m: Message| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Flow::Continue(m))
            })
        }),
    });
    let out = chain
        .run_fold(Arc::new(()), Message::new("t", "p", QoS::AtLeastOnce, false))
        .await;
    assert!(out.into_inner().headers.not_stored);
}

#[tokio::test]
async fn a_publish_callback_holds_the_result_until_it_finishes() {
    let chain: Chain<(), Message> = Chain::new(HookPoint::MessagePublish, Duration::from_secs(5));
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<i64>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    chain.add("store", 0, move |_, mut m: Message| {
        let rx = release_rx.lock().unwrap().take();
        async move {
            let id = rx
                .ok_or_else(|| HookError::new("called twice"))?
                .await
                .map_err(|e| HookError::new(e.to_string()))?;
            m.headers.stored_id = Some(id);
            Ok(Flow::Continue(m))
        }
    });
    let run = chain.run_fold(Arc::new(()), Message::new("t", "p", QoS::AtLeastOnce, false));
    tokio::pin!(run);
    // Not finished while the callback waits.
    assert!(tokio::time::timeout(Duration::from_millis(50), &mut run)
        .await
        .is_err());
    release_tx.send(7).unwrap();
    assert_eq!(run.await.into_inner().headers.stored_id, Some(7));
}

#[tokio::test]
async fn remove_owner_unregisters_only_that_owner() {
    let hooks = Hooks::new(Duration::from_secs(1));
    hooks
        .message_acked
        .add("plugin-a", 0, |_, ()| async { Ok(Flow::Continue(())) });
    hooks
        .message_acked
        .add("plugin-b", 0, |_, ()| async { Ok(Flow::Continue(())) });
    hooks
        .message_publish
        .add("plugin-a", 0, |_, m| async { Ok(Flow::Continue(m)) });
    assert_eq!(hooks.remove_owner("nobody"), 0);
    assert_eq!(hooks.remove_owner("plugin-a"), 2);
    assert_eq!(hooks.message_acked.len(), 1);
    assert!(hooks.message_publish.is_empty());
}

/// Counts the log events emitted while it is the thread's subscriber.
struct CountEvents(Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for CountEvents {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A database outage fails a storage callback for every message: each
/// failure is counted, but the log gets one line, not one per message.
#[test]
fn a_burst_of_failures_is_counted_every_time_and_logged_once() {
    let events = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let chain: Chain<(), ()> = Chain::new(HookPoint::ClientConnected, Duration::from_secs(1));
    chain.add("p", 0, |_, ()| async { Err(HookError::new("db down")) });
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    tracing::subscriber::with_default(CountEvents(Arc::clone(&events)), || {
        runtime.block_on(async {
            for _ in 0..100 {
                assert!(
                    !chain.run(Arc::new(())).await,
                    "a failed callback continues the chain"
                );
            }
        })
    });
    assert_eq!(chain.failures(), 100);
    assert_eq!(
        events.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one line within a second"
    );
}

/// EMQX's hook filter: a callback whose filter says no is skipped, and the
/// accumulator goes on to the next callback unchanged.
#[tokio::test]
async fn a_filtered_callback_runs_only_where_its_filter_applies() {
    let chain: Chain<(), Message> = Chain::new(HookPoint::MessagePublish, Duration::from_secs(1));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    chain.register(Registration {
        owner: "retained-only".into(),
        priority: 10,
        timeout: None,
        on_failure: None,
        filter: Some(Arc::new(|_: &(), m: &Message| m.retain)),
        callback: Arc::new(move |_, mut m: Message| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            m.headers.extra.insert("seen".into(), "retained".into());
            Box::pin(async move { Ok(Flow::Continue(m)) })
        }),
    });
    chain.add("every", 0, |_, mut m: Message| async move {
        m.headers.extra.insert("every".into(), "yes".into());
        Ok(Flow::Continue(m))
    });
    let plain = Message::new("t", "x", QoS::AtLeastOnce, false);
    let out = chain.run_fold(Arc::new(()), plain).await.into_inner();
    assert_eq!(out.headers.extra.get("seen"), None, "skipped");
    assert_eq!(
        out.headers.extra.get("every").map(String::as_str),
        Some("yes"),
        "the next one ran"
    );
    let retained = Message::new("t", "x", QoS::AtLeastOnce, true);
    let out = chain.run_fold(Arc::new(()), retained).await.into_inner();
    assert_eq!(
        out.headers.extra.get("seen").map(String::as_str),
        Some("retained")
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn message_ids_carry_the_node_and_stay_unique_and_ordered() {
    hooks_spec::set_node_id(0x1234);
    let a = hooks_spec::new_message_id();
    let b = hooks_spec::new_message_id();
    assert!(b > a, "time-ordered within a node");
    assert_eq!(hooks_spec::message_id_node(a), 0x1234);
    assert_eq!(hooks_spec::message_id_node(b), 0x1234);
    assert_ne!(
        hooks_spec::node_id_from_name("postbox@10.0.0.1"),
        hooks_spec::node_id_from_name("postbox@10.0.0.2"),
        "different names, different numbers"
    );
}

#[tokio::test]
async fn synchronous_callbacks_run_in_order_change_the_accumulator_and_can_stop() {
    let chain: Chain<(), Vec<u32>> = Chain::new(HookPoint::ClientSubscribe, Duration::from_secs(1));
    chain.add("p", 4, |_, mut acc: Vec<u32>| async move {
        acc.push(1);
        Ok(Flow::Continue(acc))
    });
    chain.register_sync(
        "p",
        3,
        None,
        Arc::new(|_: &(), acc: &mut Vec<u32>| {
            acc.push(2);
            true
        }),
    );
    // Filtered out: never called.
    chain.register_sync(
        "p",
        2,
        Some(Arc::new(|_: &(), acc: &Vec<u32>| acc.len() > 5)),
        Arc::new(|_: &(), acc: &mut Vec<u32>| {
            acc.push(99);
            false
        }),
    );
    chain.register_sync(
        "p",
        1,
        None,
        Arc::new(|_: &(), acc: &mut Vec<u32>| {
            acc.push(3);
            false
        }),
    );
    chain.add("p", 0, |_, mut acc: Vec<u32>| async move {
        acc.push(4);
        Ok(Flow::Continue(acc))
    });
    assert_eq!(
        chain.run_fold(Arc::new(()), Vec::new()).await,
        Flow::Stop(vec![1, 2, 3])
    );
}

#[tokio::test]
async fn a_panicking_synchronous_callback_is_isolated_and_counted() {
    let chain: Chain<(), Vec<u32>> = Chain::new(HookPoint::ClientSubscribe, Duration::from_secs(1));
    chain.register_sync(
        "p",
        1,
        None,
        Arc::new(|_: &(), _: &mut Vec<u32>| panic!("bookkeeping bug")),
    );
    chain.add("p", 0, |_, mut acc: Vec<u32>| async move {
        acc.push(7);
        Ok(Flow::Continue(acc))
    });
    assert_eq!(
        chain.run_fold(Arc::new(()), vec![1]).await,
        Flow::Continue(vec![1, 7]),
        "the next callback runs with the accumulator"
    );
    assert_eq!(chain.failures(), 1);
}
