//! The faults: their kinds and the schedule of rounds drawn from the seed,
//! and the [`Rig`] (the broker, the private PostgreSQL server, the
//! subscribers) they are injected into.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::clients::{Sub, SubCmd, Subscriber};
use crate::db::Db;
use crate::shared_clients::{start_subscribers, subscribe_before_the_run};
use crate::shared_run::{Rounds, ScheduleRun};
use crate::support::pg_cluster::{PgCluster, StopMode};
use crate::support::pgsql::{EMQX_DEFAULT_RULES, SESSION_RULE};
use crate::support::{Broker, TIMEOUT};
use crate::world::{lock, DbFault, DbFaultKind, Kill, Rng, World};
use crate::{DB, OUTAGE_MS, PAGE, SUBSCRIBERS};

/// How many faults of each kind were injected.
#[derive(Default)]
pub(crate) struct Faults {
    pub(crate) sub_drops: usize,
    pub(crate) mid_stream_armed: usize,
    pub(crate) pg_terminations: usize,
    pub(crate) pg_connections_terminated: usize,
    pub(crate) pg_restarts_fast: usize,
    pub(crate) pg_restarts_immediate: usize,
    pub(crate) pg_stop_starts: usize,
    /// PostgreSQL faults timed to land in a subscriber's replay.
    pub(crate) db_faults_in_replay: usize,
    pub(crate) broker_kills: usize,
    /// Broker SIGKILLs shortly after a PostgreSQL restart.
    pub(crate) restart_then_kill: usize,
    /// Broker SIGKILLs while PostgreSQL is stopped.
    pub(crate) kill_in_outage: usize,
}

/// The kinds of fault of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// A subscriber loses its connection at a random moment.
    SubDrop,
    /// ... and, back, loses it again inside the replay of what it missed.
    SubDropMidReplay,
    /// The plugin's connections are terminated (sometimes while a subscriber
    /// that just came back is being replayed to).
    PgTerminate,
    /// `pg_ctl restart` (sometimes while a subscriber is being replayed to).
    PgRestart(StopMode),
    /// `pg_ctl stop`, 1-3 s down, `pg_ctl start`.
    PgStopStart,
    /// SIGKILL and restart; sometimes a subscriber then drops inside its replay.
    BrokerKill,
    /// A PostgreSQL restart, then within 0.5 s a broker SIGKILL and restart.
    PgRestartThenKill,
    /// PostgreSQL stopped; up to 1 s before it is started again the broker
    /// is SIGKILLed and started (without the database): subscribers that
    /// reconnect then get a new session (the stored one cannot be read) and
    /// subscribe again; the subscription is registered, and what they missed
    /// replayed, once the database answers.
    PgStopWithKill,
}

/// One round of the schedule: every kind of fault once.
const ROUND: [Fault; 9] = [
    Fault::SubDrop,
    Fault::SubDropMidReplay,
    Fault::PgTerminate,
    Fault::PgRestart(StopMode::Fast),
    Fault::PgRestart(StopMode::Immediate),
    Fault::PgStopStart,
    Fault::BrokerKill,
    Fault::PgRestartThenKill,
    Fault::PgStopWithKill,
];

/// Everything the fault schedule acts on.
pub(crate) struct Rig {
    pub(crate) world: Arc<World>,
    // Declared before `db`: on a failure the broker's logs are printed
    // before the server's.
    pub(crate) broker: Broker,
    pub(crate) db: Db,
    addr_tx: watch::Sender<SocketAddr>,
    pub(crate) sub_ids: Vec<String>,
    pub(crate) subs: Vec<Sub>,
    pub(crate) faults: Faults,
}

/// A private PostgreSQL server, and the broker with the PostgreSQL plugin on
/// it, its offline replays in pages of [`PAGE`].
async fn start_db_and_broker() -> (Broker, Db) {
    let cluster = PgCluster::start().await;
    cluster.create_db(DB).await;
    let fetch = r##""action": {"function": "on_message_fetch"}, "pool""##;
    let rules = EMQX_DEFAULT_RULES.replace(
        fetch,
        &format!(
            r##""action": {{"function": "on_message_fetch"}}, "offline_opts": {{"max_returned_count": {PAGE}}}, "pool""##
        ),
    );
    assert_ne!(rules, EMQX_DEFAULT_RULES, "the fetch rule was not found");
    let conf = format!(
        "backend.pgsql.pool1.server = {}\nbackend.pgsql.pool1.pool_size = 4\n\
         backend.pgsql.pool1.username = postgres\nbackend.pgsql.pool1.database = {DB}\n{rules}\n{SESSION_RULE}\n",
        cluster.server()
    );
    let broker =
        Broker::start_with_files("plugins.load = backend_pgsql\n", &[("backend_pgsql.conf", &conf)]).await;
    let db = Db {
        cluster,
        client: None,
        last_positions: vec![None; SUBSCRIBERS],
    };
    (broker, db)
}

impl Rig {
    /// The database and the broker started, every subscription made, the
    /// clock started, and every subscriber connected.
    pub(crate) async fn set_up() -> Rig {
        let (broker, mut db) = start_db_and_broker().await;
        let sub_ids: Vec<String> = (0..SUBSCRIBERS).map(|i| format!("chaos-sub-{i}")).collect();
        let pg = db.live(Instant::now() + TIMEOUT).await.unwrap();
        subscribe_before_the_run(pg, sub_ids.iter().map(|id| (broker.addr, id))).await;
        db.positions(&sub_ids, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("positions: {e}"));

        let world = Arc::new(World::start());
        let (addr_tx, addr_rx) = watch::channel(broker.addr);
        let subs = start_subscribers(&sub_ids, &world, |_| addr_rx.clone(), Subscriber::run).await;
        Rig {
            world,
            broker,
            db,
            addr_tx,
            sub_ids,
            subs,
            faults: Faults::default(),
        }
    }

    /// Where the clients find the broker (it moves when it restarts).
    pub(crate) fn broker_addr(&self) -> watch::Receiver<SocketAddr> {
        self.addr_tx.subscribe()
    }

    /// Faults, in [`Rounds`] of every kind for `secs`.
    pub(crate) async fn run_schedule(&mut self, rng: &mut Rng, secs: u64) -> ScheduleRun {
        let mut rounds = Rounds::new(&ROUND, secs);
        while let Some(fault) = rounds.next(&self.world, rng).await {
            self.inject(fault, rng).await;
        }
        rounds.finish(&self.world)
    }

    fn drop_sub(&self, s: usize, down: Duration) {
        let _ = self.subs[s].tx.send(SubCmd::Drop { down });
    }

    fn arm_mid_stream_drop(&mut self, s: usize, n: u64, down: Duration) {
        self.faults.mid_stream_armed += 1;
        self.world.note(format!(
            "schedule: {} will drop after {n} messages of its replay",
            self.sub_ids[s]
        ));
        let _ = self.subs[s].tx.send(SubCmd::DropAfter { n, down });
    }

    /// Drops subscriber `s` for `down` and lets `down` and `lag` pass (it
    /// reconnects after `down`), so that what comes next lands in its replay.
    async fn drop_for_replay(&mut self, s: usize, down: Duration, lag: Duration) {
        self.faults.sub_drops += 1;
        self.faults.db_faults_in_replay += 1;
        self.drop_sub(s, down);
        tokio::time::sleep(down + lag).await;
    }

    /// Runs one fault. Every random draw is made whatever the branch, so the
    /// schedule depends on the seed only.
    async fn inject(&mut self, fault: Fault, rng: &mut Rng) {
        let s = rng.below(SUBSCRIBERS as u64) as usize;
        let quick_down = rng.ms(0, 1500);
        let down = rng.ms(300, 1500);
        let lag = rng.ms(0, 300);
        let coin = rng.below(2) == 0;
        let n = 1 + rng.below(2 * PAGE + 5);
        let down_after = rng.ms(0, 800);
        let broker_down = rng.ms(0, 800);
        let mode = if rng.below(2) == 0 {
            StopMode::Fast
        } else {
            StopMode::Immediate
        };
        let outage = rng.ms(OUTAGE_MS.0, OUTAGE_MS.1);
        let gap = rng.ms(0, 500);
        let kill_lead = rng.ms(0, 1000);
        self.world.note(format!("schedule: {fault:?}"));
        match fault {
            Fault::SubDrop => {
                self.faults.sub_drops += 1;
                self.drop_sub(s, quick_down);
            }
            Fault::SubDropMidReplay => {
                self.faults.sub_drops += 1;
                self.drop_sub(s, down);
                self.arm_mid_stream_drop(s, n, down_after);
            }
            Fault::PgTerminate => {
                if coin {
                    self.drop_for_replay(s, down, lag).await;
                }
                self.terminate().await;
            }
            Fault::PgRestart(mode) => {
                if coin {
                    self.drop_for_replay(s, down, lag).await;
                }
                self.db_restart(mode).await;
            }
            Fault::PgStopStart => self.db_stop_start(mode, outage, None).await,
            Fault::PgStopWithKill => {
                self.db_stop_start(
                    mode,
                    outage,
                    Some((kill_lead, broker_down.min(Duration::from_millis(300)))),
                )
                .await;
            }
            Fault::BrokerKill => {
                self.crash_and_restart(broker_down, false).await;
                if coin {
                    self.arm_mid_stream_drop(s, n, down_after);
                }
            }
            Fault::PgRestartThenKill => {
                self.faults.restart_then_kill += 1;
                self.db_restart(mode).await;
                tokio::time::sleep(gap).await;
                self.crash_and_restart(broker_down.min(Duration::from_millis(300)), false)
                    .await;
                if coin {
                    self.arm_mid_stream_drop(s, n, down_after);
                }
            }
        }
    }

    /// Terminates the plugin's PostgreSQL connections.
    async fn terminate(&mut self) {
        self.faults.pg_terminations += 1;
        let down_at = self.world.now();
        let rows = self
            .db
            .rows(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'postbox'",
                &[&DB],
            )
            .await;
        let n = rows.iter().filter(|r| r.get::<_, bool>(0)).count();
        let back_at = self.world.now();
        self.faults.pg_connections_terminated += n;
        self.world
            .note(format!("postgres: terminated {n} plugin connections"));
        lock(&self.world.db_faults).push(DbFault {
            kind: DbFaultKind::Terminate,
            down_at,
            back_at,
        });
    }

    /// `pg_ctl restart -m <mode>`.
    async fn db_restart(&mut self, mode: StopMode) {
        let kind = DbFaultKind::Restart(mode);
        match mode {
            StopMode::Fast => self.faults.pg_restarts_fast += 1,
            StopMode::Immediate => self.faults.pg_restarts_immediate += 1,
        }
        self.world.note(format!("postgres: pg_ctl {}", kind.name()));
        let down_at = self.world.now();
        self.db.cluster.restart(mode).await;
        let back_at = self.world.now();
        self.db.client = None;
        self.world.note(format!(
            "postgres: answers again (pg_ctl restart took {:.0} ms)",
            (back_at - down_at) * 1000.0
        ));
        lock(&self.world.db_faults).push(DbFault {
            kind,
            down_at,
            back_at,
        });
    }

    /// `pg_ctl stop -m <mode>`, `outage`, `pg_ctl start`; with `kill`, the
    /// broker is SIGKILLed that long before the start (at the earliest right
    /// after the stop) and is down for the second duration.
    async fn db_stop_start(&mut self, mode: StopMode, outage: Duration, kill: Option<(Duration, Duration)>) {
        let kind = DbFaultKind::StopStart(mode);
        self.faults.pg_stop_starts += 1;
        self.world
            .note(format!("postgres: pg_ctl {} (down {outage:?})", kind.name()));
        let down_at = self.world.now();
        self.db.cluster.stop(mode).await;
        self.db.client = None;
        self.world.note("postgres: stopped");
        let stopped = Instant::now();
        if let Some((before_start, down)) = kill {
            self.faults.kill_in_outage += 1;
            tokio::time::sleep_until(stopped + outage.saturating_sub(before_start)).await;
            self.crash_and_restart(down, true).await;
        }
        tokio::time::sleep_until(stopped + outage).await;
        self.db.cluster.start_again().await;
        let back_at = self.world.now();
        self.world.note(format!(
            "postgres: answers again (stopped for {:.0} ms in all)",
            (back_at - down_at) * 1000.0
        ));
        lock(&self.world.db_faults).push(DbFault {
            kind,
            down_at,
            back_at,
        });
    }

    /// Reads the positions (unless the database is down: the last ones
    /// read stand in), SIGKILLs the broker, starts it again after `down`.
    pub(crate) async fn crash_and_restart(&mut self, down: Duration, db_down: bool) {
        self.faults.broker_kills += 1;
        let read = if db_down {
            Err("PostgreSQL is stopped".to_string())
        } else {
            self.db.positions(&self.sub_ids, Duration::from_secs(2)).await
        };
        let (positions, positions_read) = match read {
            Ok(p) => (p, true),
            Err(e) => {
                self.world.note(format!(
                    "positions cannot be read ({e}); the last ones read stand in"
                ));
                (self.db.last_positions.clone(), false)
            }
        };
        self.world.note(format!(
            "broker: SIGKILL (down {down:?}); positions just before: {positions:?}"
        ));
        let at = self.world.now();
        self.broker.kill().await;
        let done = self.world.now();
        tokio::time::sleep(down).await;
        self.broker.restart().await;
        self.addr_tx.send_replace(self.broker.addr);
        let restarted = self.world.now();
        lock(&self.world.kills).push(Kill {
            at,
            done,
            restarted,
            positions,
            positions_read,
        });
        self.world
            .note(format!("broker: restarted on {}", self.broker.addr));
    }
}
