//! Unit tests of the router.

use super::*;

fn local(router: &Router, clientid: &str, filter: &str, group: Option<&str>) -> crate::mailbox::Receiver {
    let crate::mailbox::Inbox { tx, rx, .. } = crate::mailbox::inbox();
    rx.set_attached(true);
    let mut opts = SubOpts::with_qos(QoS::AtLeastOnce);
    opts.share_group = group.map(str::to_string);
    let route = Route { tx, opts };
    router.subscribe(&Arc::from(clientid), filter, route);
    rx
}

fn msg(topic: &str) -> Arc<Message> {
    Arc::new(Message::new(topic, "x", QoS::AtLeastOnce, false))
}

fn got(rx: &mut crate::mailbox::Receiver) -> usize {
    let mut n = 0;
    while rx.try_recv::<SessionCmd>().is_some() {
        n += 1;
    }
    n
}

#[test]
fn a_node_with_matching_subscribers_gets_each_message_once() {
    let r = Router::new();
    let b: NodeName = Arc::from("b");
    r.add_node_route(&b, "a/#");
    r.add_node_route(&b, "a/+");
    let mut here = local(&r, "c1", "a/x", None);
    let routing = r.route(&msg("a/x"));
    assert_eq!(routing.local, 1);
    assert_eq!(
        routing.forwards,
        vec![Forward {
            node: Arc::clone(&b),
            plain: true,
            groups: vec![]
        }]
    );
    assert_eq!(routing.receivers(), 2);
    assert_eq!(got(&mut here), 1);
    assert!(r.route(&msg("z/x")).forwards.is_empty(), "no match, no forward");
    r.remove_node_route(&b, "a/#");
    r.remove_node_route(&b, "a/+");
    assert!(r.route(&msg("a/x")).forwards.is_empty());
}

#[test]
fn a_shared_group_takes_turns_between_members_here_and_on_other_nodes() {
    let r = Router::new();
    let b: NodeName = Arc::from("b");
    let mut here = local(&r, "c1", "s/#", Some("g"));
    r.add_node_member(&b, "s/#", "g");
    let (mut local_n, mut forwarded) = (0, 0);
    for _ in 0..10 {
        let routing = r.route(&msg("s/1"));
        local_n += routing.local;
        for f in &routing.forwards {
            assert!(!f.plain);
            assert_eq!(f.groups, vec![("s/#".to_string(), Arc::from("g"))]);
            forwarded += 1;
        }
        assert_eq!(routing.receivers(), 1, "one member per message, cluster-wide");
    }
    assert_eq!((local_n, forwarded), (5, 5), "in turn");
    assert_eq!(got(&mut here), 5);
}

fn local_online(
    router: &Router,
    clientid: &str,
    filter: &str,
    group: Option<&str>,
    online: bool,
) -> crate::mailbox::Receiver {
    let crate::mailbox::Inbox { tx, rx, .. } = crate::mailbox::inbox();
    rx.set_attached(online);
    let mut opts = SubOpts::with_qos(QoS::AtLeastOnce);
    opts.share_group = group.map(str::to_string);
    let route = Route { tx, opts };
    router.subscribe(&Arc::from(clientid), filter, route);
    rx
}

fn share_of(rx: &mut crate::mailbox::Receiver) -> Option<Option<Arc<ShareKey>>> {
    match rx.try_recv::<SessionCmd>()? {
        SessionCmd::Deliver(r) => Some(r.share),
        _ => None,
    }
}

#[test]
fn a_delivery_only_a_shared_group_chose_is_marked_with_the_group() {
    let r = Router::new();
    let mut m1 = local(&r, "m1", "s/#", Some("g"));
    let _shared = local(&r, "both", "s/#", Some("h"));
    // The same session's channel (the merged delivery goes to the first route's).
    let mut both = local(&r, "both", "s/1", None);
    r.route(&msg("s/1"));
    let key: ShareKey = ("s/#".to_string(), Arc::from("g"));
    assert_eq!(share_of(&mut m1), Some(Some(Arc::new(key))));
    assert_eq!(
        share_of(&mut both),
        Some(None),
        "a session a plain subscription also matched keeps its copy"
    );
}

#[test]
fn another_member_is_a_connected_one_unless_the_session_ends() {
    let r = Router::new();
    let key: ShareKey = ("s/#".to_string(), Arc::from("g"));
    let me: Arc<str> = Arc::from("me");
    let _me = local_online(&r, "me", "s/#", Some("g"), false);
    let _off = local_online(&r, "off", "s/#", Some("g"), false);
    assert!(r.other_member(&key, &me, true).is_none(), "nobody connected");
    assert!(r.other_member(&key, &me, false).is_some(), "ending: any member");
    assert_eq!(r.offline_members(&key, &me).len(), 1, "not itself");
    let _on = local_online(&r, "on", "s/#", Some("g"), true);
    let route = r.other_member(&key, &me, true).expect("the connected one");
    assert!(route.tx.is_attached());
    let other: ShareKey = ("s/#".to_string(), Arc::from("x"));
    assert!(r.other_member(&other, &me, false).is_none(), "another group");
}

#[test]
fn a_forwarded_message_reaches_the_members_here_and_goes_no_further() {
    let r = Router::new();
    let b: NodeName = Arc::from("b");
    r.add_node_route(&b, "#");
    r.add_node_member(&b, "s/#", "g");
    let mut plain = local(&r, "c1", "s/1", None);
    let mut m1 = local(&r, "m1", "s/#", Some("g"));
    let mut m2 = local(&r, "m2", "s/#", Some("g"));
    let groups = vec![("s/#".to_string(), Arc::from("g"))];
    for _ in 0..4 {
        assert_eq!(r.route_forwarded(&msg("s/1"), true, &groups), 2);
    }
    assert_eq!(got(&mut plain), 4);
    assert_eq!(got(&mut m1) + got(&mut m2), 4, "one local member per message");
    assert_eq!(
        r.route_forwarded(&msg("s/1"), false, &[]),
        0,
        "nothing asked, nothing delivered"
    );
}
