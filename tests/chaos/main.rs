//! Chaos durability: publishers and persistent subscribers run against Postbox
//! with the PostgreSQL plugin, on a private PostgreSQL server of the test's own
//! ([`PgCluster`](support::pg_cluster::PgCluster)), while real faults are
//! injected, alone and in combination:
//!
//! * PostgreSQL restarted, `pg_ctl restart -m fast` and `-m immediate` (every
//!   server process killed at once, crash recovery on start), sometimes while
//!   a subscriber that just came back is being replayed to;
//! * PostgreSQL stopped (fast or immediate) for 1-3 s, then started again;
//! * the plugin's PostgreSQL connections terminated (`pg_terminate_backend`);
//! * the broker SIGKILLed and started again, alone, shortly after a
//!   PostgreSQL restart (the combination after which subscribers once missed
//!   everything published after the kill), or while PostgreSQL is stopped (it
//!   then starts without the database);
//! * subscribers losing their connections at random moments, and in the
//!   middle of a paged offline replay (after a drop or after a broker restart).
//!
//! The clients are rumqttc, independent of the broker's code, MQTT 3.1.1:
//! subscribers with persistent sessions (clean session 0) that subscribed once
//! before the run and, on every reconnect, rely on their session (kept in
//! PostgreSQL across broker restarts, the shipped `on_session_restore`), or
//! subscribe again when the broker says it has none (session present 0, as an
//! MQTT client must: PostgreSQL was down when the broker restarted); QoS 1
//! publishers, one message at a time, that give up on a message without
//! PUBACK after [`PUBACK_TIMEOUT`] and carry on with a new connection (so a
//! stuck broker fails an assertion instead of hanging the test).
//!
//! At the end, printed as counts and asserted:
//!
//! * every message the broker acknowledged to a publisher (PUBACK received)
//!   reached every subscriber (all subscribed before the first publish);
//! * no subscriber received a message again after the broker had recorded
//!   its acknowledgement: neither without a broker crash in between, nor
//!   after a crash when the subscriber's `mqtt_acked` position read just
//!   before the SIGKILL already covered the message;
//! * publishing resumes within [`STALL_LIMIT`] (2 s) once PostgreSQL answers
//!   again: after every restart and every start after a stop, the time from
//!   `pg_ctl` returning (the server accepts connections) to the next PUBACK
//!   any publisher receives is printed, and the longest per kind of fault
//!   (after a termination of the plugin's connections too, from the query
//!   returning). A window in which the broker was SIGKILLed (or the database
//!   faulted again) before that PUBACK came is printed as excluded, not
//!   judged. The
//!   longest gap between two PUBACKs outside the SIGKILL windows is printed
//!   too, with and without PostgreSQL's outages (informative: an outage of
//!   1-3 s is a gap by design).
//!
//! What "acknowledged" means here is deliberate. A QoS 1 PUBACK has no reply:
//! a subscriber cannot know whether the broker read and recorded it before a
//! SIGKILL, so no broker can promise never to resend a message whose PUBACK
//! died with it. Those redeliveries (MQTT's at-least-once) are counted and
//! printed by cause, and do not fail the test; an acknowledgement the broker
//! recorded and then forgot does. Out-of-order acknowledgements above a
//! subscription's position are held in memory only (README, "Offline
//! delivery, exactly"), and so are positions the broker could not write while
//! PostgreSQL was down: they belong to the first kind.
//!
//! The database's own faults add no cause of repeats. A restart loses
//! nothing that was committed (the private server runs with fsync off, but
//! only its processes are killed, never the machine: the kernel keeps what
//! was written), and the broker's sessions keep in memory what it could not
//! write meanwhile. So a repeat with no broker SIGKILL between the PUBACK and
//! the repeat is a violation whatever PostgreSQL did; the report says, for
//! the allowed ones, how many had a PostgreSQL fault between the PUBACK and
//! the SIGKILL.
//!
//! Repeats are sorted by cause ([`RepeatKind`](report::RepeatKind)): against
//! the SIGKILLs between the PUBACK and the repeat, and each subscriber's
//! `mqtt_acked` position read just before each SIGKILL.
//!
//! The fault schedule is pseudo-random from a seed that is printed;
//! `POSTBOX_CHAOS_SEED` replays it (the interleaving with the traffic is not
//! deterministic). Faults come in rounds: each round is every kind of fault
//! once ([`ROUND`](faults::ROUND)), in an order drawn from the seed; the
//! first round always runs whole, later ones stop when `POSTBOX_CHAOS_SECS`
//! have passed (default 20 s: a round and a bit, the whole test about 25 s
//! on a 2-core machine; a longer run is just a bigger value, e.g.
//! `POSTBOX_CHAOS_SECS=600`).
//!
//! Part of the normal test suite; to watch the report run
//! `cargo test -p postbox-broker --test chaos -- --nocapture`. On a failure
//! the report is followed by the events and the broker's log lines around
//! each subscriber's first lost message and first repeat (the first that is a
//! violation, if any), and around the first stall.
//!
//! The modules: [`world`] (the seeded schedule's random numbers, the
//! settings from the environment, the clock, timeline and records the run
//! shares), [`clients`] (the subscribers and publishers), [`db`] (the test's
//! own connection to the private server), [`faults`] (the kinds of fault,
//! the schedule, and the rig they are injected into), [`drain`] (the end of
//! the run, after the faults), [`report`] (the counts, stalls and repeats
//! printed, and the verdict), [`diagnosis`] (what is printed on a failure)
//! and [`logs`] (the broker's log lines of a moment); [`shared_clients`]
//! (what the subscribers and publishers of both chaos tests have in common)
//! and [`shared_run`] (the rounds of the schedule, and the drain at the
//! end, as both chaos tests run them).
//!
//! The cluster chaos test (`tests/chaos/cluster/`, its own test binary)
//! shares [`world`], [`logs`], [`shared_clients`] and [`shared_run`].
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

#[path = "../support/mod.rs"]
mod support;

mod clients;
mod db;
mod diagnosis;
mod drain;
mod faults;
mod logs;
mod report;
mod shared_clients;
mod shared_run;
mod world;

use std::time::Duration;

use faults::Rig;
use world::{Rng, Settings};

const SUBSCRIBERS: usize = 3;
const PUBLISHERS: usize = 2;
const FILTER: &str = "chaos/#";
/// `max_returned_count` of the fetch rule: replays come in pages of this many.
const PAGE: u64 = 20;
const DEFAULT_SECS: u64 = 20;
/// A publish without PUBACK by then is given up (the connection is dropped
/// and the message published again under a new attempt number).
const PUBACK_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long, after the faults stop, subscribers may take to receive
/// everything that was acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two messages of one publisher (keeps the volume, and the time the
/// final replays take on a 2-core machine, bounded).
const PUBLISH_PAUSE: Duration = Duration::from_millis(3);
/// Pause before a subscriber or publisher tries again after a failed connect.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Once PostgreSQL answers again (after a restart, a start after a stop, or
/// the termination of the plugin's connections), some publisher must get a
/// PUBACK within this.
const STALL_LIMIT: Duration = Duration::from_secs(2);
/// Pause between two faults of the schedule (milliseconds, drawn uniformly).
const FAULT_PAUSE_MS: (u64, u64) = (800, 2200);
/// How long PostgreSQL stays stopped in a stop/start fault (milliseconds).
const OUTAGE_MS: (u64, u64) = (1000, 3000);
/// The test's own database name on the private server.
const DB: &str = "mqtt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_reach_every_subscriber_once_through_db_restarts_drops_and_crashes() {
    let settings = Settings::from_env();
    let mut rng = Rng::new(settings.seed);

    let mut rig = Rig::set_up().await;
    let publishers = clients::start_publishers(&rig.world, &rig.broker_addr());
    let schedule = rig.run_schedule(&mut rng, settings.secs).await;
    let end = drain::drain(&mut rig, publishers, schedule.faults_stopped).await;

    let verdict = report::report(&mut rig, &settings, &schedule, &end).await;
    if verdict.passed() {
        return;
    }
    diagnosis::diagnose(&mut rig, &end, &verdict).await;
    assert!(
        verdict.passed(),
        "seed {}: {} lost, {} repeated after the broker recorded the ack, {} PostgreSQL \
         faults without a PUBACK within {STALL_LIMIT:?} after (see the report above)",
        settings.seed,
        verdict.total_lost,
        verdict.violations,
        verdict.stall_failures().len()
    );
}
