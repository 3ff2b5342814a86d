//! Cluster chaos: three Postbox nodes on one PostgreSQL database (each with
//! the PostgreSQL plugin and the shipped rules: EMQX's defaults plus
//! persistent sessions), persistent subscribers and publishers that connect
//! to a node chosen at random on every (re)connect, so that clients keep
//! moving between nodes, while nodes are SIGKILLed and clients moved,
//! alone and in combination:
//!
//! * a node SIGKILLed and started again at once (back before the others'
//!   `node_timeout`: never declared down, it joins again at a new address),
//!   or only once the others have declared it down (no heartbeat for
//!   `node_timeout`, 2 s: its routes and clients released); its clients
//!   reconnect to the other nodes;
//! * two nodes SIGKILLed at once (one node serves everyone for a while);
//! * a subscriber moving to another node while connected: it connects there
//!   with the same client id and the cluster takes the session over (the
//!   first node closes the old connection, the session follows with what it
//!   missed), and sometimes the node it moved to is SIGKILLed right after;
//! * subscribers losing their connections at random moments, in the middle
//!   of the replay of what they missed, and just before the node they come
//!   back to is SIGKILLed (so inside their replay there).
//!
//! The database is never faulted here: the single-node chaos test
//! (`tests/chaos/main.rs`) restarts PostgreSQL under the same kind of load;
//! this one is about the nodes.
//!
//! The clients are rumqttc, MQTT 3.1.1: subscribers with persistent sessions
//! (clean session 0, manual acks: each PUBLISH acknowledged as soon as it is
//! polled) that subscribed once before the run and rely on their session on
//! every reconnect, wherever it lands (they subscribe again only when told
//! session present 0); QoS 1 publishers, one message at a time, that give up
//! on a message without PUBACK after [`PUBACK_TIMEOUT`] and publish it again
//! as a new attempt on a new connection, and otherwise move to another node
//! every few dozen messages: half the time with a DISCONNECT first, half the
//! time by connecting there while still connected (a takeover).
//!
//! At the end, printed as counts and asserted:
//!
//! * every message the cluster acknowledged to a publisher (PUBACK received)
//!   reached every subscriber, within [`DRAIN_TIMEOUT`] after the faults
//!   stopped, while connected (a message that comes only after the final
//!   move below is lost for the subscriber that waited for it);
//! * no subscriber received a message again after the cluster had recorded
//!   its acknowledgement. A session that moves (takeover, or a reconnect
//!   elsewhere) takes what the client acknowledged with it: the node it
//!   leaves records the acknowledgements first. So a repeat is allowed only
//!   when the acknowledgement never reached that record: the node the
//!   PUBACK was written to was SIGKILLed after it, before the session left
//!   that node, and the read position read from `mqtt_acked` just before
//!   the SIGKILL did not cover the message (in flight, or held in the
//!   node's memory); or, without a SIGKILL, that node closed the PUBACK's
//!   connection to hand the session over less than 100 ms after the PUBACK
//!   was written (still in flight, or unread in its socket: a node that
//!   lets a connection go reads no more from it). See
//!   [`report::RepeatKind`];
//! * one live connection per client id: no subscriber receives a PUBLISH on
//!   a connection after a later connection of its own got its CONNACK.
//!   During a move both connections are polled, and the old one is read
//!   to its end before each event of the new one is looked at, so the order
//!   of arrivals is the order in which the nodes sent them. And a connection
//!   taken over (subscriber or publisher) is closed by its node within
//!   [`TAKEOVER_LIMIT`] of the new connection's CONNACK (the cluster closes
//!   it before it answers the new CONNECT);
//! * a node SIGKILLed and kept down is declared down (its row gone from
//!   `postbox_node`) within `node_timeout` plus [`DOWN_MARGIN`].
//!
//! After the drain every subscriber moves to another node once more, with
//! everything acknowledged: what comes then is a repeat (a violation: no
//! node died) or was lost before.
//!
//! The fault schedule is pseudo-random from a seed that is printed;
//! `POSTBOX_CHAOS_SEED` replays it (the clients' choices of node come from
//! the seed too, but the interleaving with the traffic is not
//! deterministic). Faults come in rounds, each every kind once in an order
//! drawn from the seed ([`schedule::ROUND`]); the first round always runs
//! whole, later ones stop when `POSTBOX_CHAOS_SECS` have passed (default 20
//! s; the whole test takes about 30 s on a 2-core machine). On a failure the
//! report is followed by the events and the nodes' log lines around each
//! subscriber's first lost message, first violating repeat and first
//! overlap, then the whole timeline.
//!
//! Its own test binary (`cargo test -p postbox-broker --test chaos_cluster
//! -- --nocapture` shows the report), so that it never runs at the same time
//! as the single-node chaos test on a 2-core machine. The modules:
//! [`rig`] (the database, the nodes, SIGKILLs and restarts), [`clients`]
//! (the subscribers), [`publishers`], [`schedule`] (the kinds of fault and
//! their rounds), [`drain`] (the end of the run), [`report`] and
//! [`diagnosis`]; [`world`] (randomness, settings, clock, timeline, the
//! publishers' records and what every subscriber records), [`logs`],
//! [`shared_clients`] (what the clients of both chaos tests have in common)
//! and [`shared_run`] (the rounds of the schedule, and the drain) are shared
//! with the single-node test (`tests/chaos/`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

#[path = "../../support/mod.rs"]
mod support;

#[path = "../logs.rs"]
mod logs;
#[path = "../shared_clients.rs"]
mod shared_clients;
#[path = "../shared_run.rs"]
mod shared_run;
#[path = "../world.rs"]
mod world;

mod clients;
mod diagnosis;
mod drain;
mod publishers;
mod report;
mod rig;
mod schedule;

use std::time::Duration;

use rig::Rig;
use world::{Rng, Settings};

const NODES: usize = 3;
const SUBSCRIBERS: usize = 3;
const PUBLISHERS: usize = 2;
const FILTER: &str = "chaos/#";
/// QoS 0 probes: how the test knows every node routes to every subscriber
/// before the first publish (never stored, not counted).
const PROBE_TOPIC: &str = "chaos/probe";
const DEFAULT_SECS: u64 = 20;
/// `cluster.heartbeat` and `cluster.node_timeout` of the nodes.
const HEARTBEAT: Duration = Duration::from_millis(200);
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// A node kept down must be declared down within `NODE_TIMEOUT` plus this
/// (the heartbeat of the node that sees it first, and its transaction).
const DOWN_MARGIN: Duration = Duration::from_secs(2);
/// A publish without PUBACK by then is given up (published again as a new
/// attempt on a new connection).
const PUBACK_TIMEOUT: Duration = Duration::from_secs(3);
/// A CONNECT without CONNACK by then is given up. Above the cluster's wait
/// for a previous node to let a client go (3 s, for a node that died
/// without being declared down yet).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long, after the faults stop, subscribers may take to receive
/// everything that was acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Between two messages of one publisher.
const PUBLISH_PAUSE: Duration = Duration::from_millis(3);
/// A publisher moves to another node after this many acknowledged messages
/// (drawn uniformly).
const PUBLISHER_STAY: (u64, u64) = (20, 120);
/// Pause before a client tries again after a failed connect.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Pause between two faults of the schedule (milliseconds, drawn uniformly).
const FAULT_PAUSE_MS: (u64, u64) = (600, 1600);
/// A connection taken over (its client connected to another node) must be
/// closed by its node within this after the new connection's CONNACK (the
/// node closes it before the other answers the CONNECT).
const TAKEOVER_LIMIT: Duration = Duration::from_secs(1);
/// How long, after the final move, arrivals are counted.
const AFTER_FINAL_MOVE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_reach_every_subscriber_once_through_node_kills_and_moves() {
    let settings = Settings::from_env();
    let mut rng = Rng::new(settings.seed);

    let mut rig = Rig::set_up(settings.seed).await;
    let publishers = publishers::start_publishers(&rig.world, &rig.nodes_rx(), &rig.publog, settings.seed);
    let schedule = schedule::run(&mut rig, &mut rng, settings.secs).await;
    let end = drain::drain(&mut rig, publishers, schedule.faults_stopped).await;

    let verdict = report::report(&rig, &settings, &schedule, &end).await;
    if verdict.passed() {
        return;
    }
    diagnosis::diagnose(&rig, &end, &verdict).await;
    assert!(
        verdict.passed(),
        "seed {}: {} lost, {} repeated after the cluster recorded the ack, {} arrivals on a connection \
         after a later one's CONNACK, {} connections taken over and not closed within {TAKEOVER_LIMIT:?}, {} \
         nodes not declared down in time (see the report above)",
        settings.seed,
        verdict.total_lost,
        verdict.violations,
        verdict.overlaps,
        verdict.two_live.len(),
        verdict.down_late
    );
}
