//! The hook chain: an ordered list of callbacks for one hook point.
//!
//! Ordering and stop semantics follow EMQX's `emqx_hooks`: callbacks run by
//! priority, higher first, and in registration order among equal priorities.
//! Every hook is a fold: a callback receives the accumulator and returns
//! [`Flow::Continue`] with the (possibly changed) value for the next callback,
//! or [`Flow::Stop`] to end the chain with that value. Notification hooks are
//! folds over `()`: returning `Stop` ends the chain.
//!
//! A callback that returns an error, panics or exceeds its time limit never
//! breaks the chain: the failure is logged and counted and the callback's
//! failure policy decides the outcome. The default policy continues with the
//! accumulator unchanged; hooks where that is unsafe (authentication and
//! authorization) default to stopping with a denial, and a callback may bring
//! its own policy (a storage callback marks a message as not stored).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::metrics::CallStats;
use crate::HookPoint;

/// A boxed, sendable future: what every callback returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a callback tells the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow<Acc> {
    /// Go on with the next callback, passing this accumulator.
    Continue(Acc),
    /// End the chain; this is its result.
    Stop(Acc),
}

impl<Acc> Flow<Acc> {
    /// The accumulator, whether the chain stops or goes on.
    pub fn into_inner(self) -> Acc {
        match self {
            Flow::Continue(a) | Flow::Stop(a) => a,
        }
    }

    /// True for [`Flow::Stop`].
    pub fn is_stop(&self) -> bool {
        matches!(self, Flow::Stop(_))
    }
}

/// A callback's failure, logged by the chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HookError(pub String);

impl HookError {
    /// An error with a message.
    pub fn new(msg: impl Into<String>) -> HookError {
        HookError(msg.into())
    }
}

/// A registered callback: gets the hook's arguments and the accumulator.
pub type Callback<A, Acc> = Arc<dyn Fn(Arc<A>, Acc) -> BoxFuture<Result<Flow<Acc>, HookError>> + Send + Sync>;

/// A callback that does its work at once, in memory (bookkeeping): it gets
/// the accumulator by reference and changes it in place, and returns whether
/// the chain goes on (`true`) or stops. The chain neither copies the
/// accumulator for it nor boxes a future, which an asynchronous callback
/// costs on every call. If it panics, the failure policy gets the
/// accumulator as the callback left it.
pub type SyncCallback<A, Acc> = Arc<dyn Fn(&A, &mut Acc) -> bool + Send + Sync>;

/// What replaces a failed callback's result, given the accumulator it was called with.
pub type FailurePolicy<Acc> = Arc<dyn Fn(Acc) -> Flow<Acc> + Send + Sync>;

/// A callback's filter (EMQX's hook filter): the chain calls the callback
/// only when it returns true, and otherwise passes the accumulator on
/// untouched. It runs synchronously and must not fail: a callback that does
/// not apply to most calls (a rule for retained messages, say) then costs a
/// function call, not a copy of the accumulator, a boxed future and a move
/// of the accumulator in and out.
pub type Filter<A, Acc> = Arc<dyn Fn(&A, &Acc) -> bool + Send + Sync>;

/// How a callback is registered.
pub struct Registration<A, Acc> {
    /// Who registered it (a plugin name); [`Chain::remove_owner`] removes by it.
    pub owner: String,
    /// Higher runs first.
    pub priority: i32,
    /// Time limit for one call; `None`: the chain's default;
    /// `Some(Duration::MAX)`: none (no timer is armed for the call).
    pub timeout: Option<Duration>,
    /// Outcome when the call fails; `None`: the chain's default.
    pub on_failure: Option<FailurePolicy<Acc>>,
    /// Call only when this returns true; `None`: always.
    pub filter: Option<Filter<A, Acc>>,
    /// The callback itself.
    pub callback: Callback<A, Acc>,
}

/// A registered callback of either kind.
enum Callee<A, Acc> {
    Async(Callback<A, Acc>),
    Sync(SyncCallback<A, Acc>),
}

impl<A, Acc> Clone for Callee<A, Acc> {
    fn clone(&self) -> Self {
        match self {
            Callee::Async(c) => Callee::Async(Arc::clone(c)),
            Callee::Sync(c) => Callee::Sync(Arc::clone(c)),
        }
    }
}

struct Entry<A, Acc> {
    owner: String,
    priority: i32,
    seq: u64,
    timeout: Duration,
    on_failure: Option<FailurePolicy<Acc>>,
    filter: Option<Filter<A, Acc>>,
    callback: Callee<A, Acc>,
    /// Shared by every callback of this owner on this chain.
    stats: CallStats,
}

/// The callbacks of one hook point, in run order.
pub struct Chain<A, Acc> {
    point: HookPoint,
    // Copy-on-write: a run clones the Arc and never holds the lock across an await.
    entries: RwLock<Arc<Vec<Entry<A, Acc>>>>,
    default_timeout: Duration,
    default_failure: FailurePolicy<Acc>,
    next_seq: AtomicU64,
    failures: AtomicU64,
    /// Callbacks registered: read on every message by `is_empty`, so it is
    /// one relaxed load instead of a lock and a shared reference count.
    len: AtomicUsize,
    /// Failure logging: at most one line per [`FAILURE_LOG_EVERY`]. A
    /// database outage fails a storage callback for every message; the log
    /// says so once a second with the count, not once per message.
    created: Instant,
    /// Milliseconds after `created` of the last logged failure (`u64::MAX`: none yet).
    logged_at_ms: AtomicU64,
    /// `failures` when a failure was last logged.
    logged_failures: AtomicU64,
    /// Timing and failures per owner, kept after the owner's callbacks are
    /// removed (a plugin that starts again goes on counting).
    stats: RwLock<Vec<(String, CallStats)>>,
}

/// How often a chain logs its failed callbacks at most.
pub const FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);

impl<A, Acc> Chain<A, Acc>
where
    A: Send + Sync + 'static,
    Acc: Clone + Send + 'static,
{
    /// An empty chain whose failed callbacks continue with the accumulator unchanged.
    pub fn new(point: HookPoint, default_timeout: Duration) -> Self {
        Self::with_failure_policy(point, default_timeout, Arc::new(Flow::Continue))
    }

    /// An empty chain with its own default failure policy.
    pub fn with_failure_policy(
        point: HookPoint,
        default_timeout: Duration,
        policy: FailurePolicy<Acc>,
    ) -> Self {
        Chain {
            point,
            entries: RwLock::new(Arc::new(Vec::new())),
            default_timeout,
            default_failure: policy,
            next_seq: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            created: Instant::now(),
            logged_at_ms: AtomicU64::new(u64::MAX),
            logged_failures: AtomicU64::new(0),
            stats: RwLock::new(Vec::new()),
        }
    }

    /// The timing and failures of each owner's callbacks on this chain.
    pub fn call_stats(&self) -> Vec<(String, CallStats)> {
        self.stats.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stats_for(&self, owner: &str) -> CallStats {
        let mut all = self.stats.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = all.iter().find(|(o, _)| o == owner) {
            return s.clone();
        }
        let s = CallStats::default();
        all.push((owner.to_string(), s.clone()));
        s
    }

    /// The hook point this chain serves.
    pub fn point(&self) -> HookPoint {
        self.point
    }

    /// Adds a callback with the chain's default timeout and failure policy.
    pub fn add<F, Fut>(&self, owner: &str, priority: i32, f: F)
    where
        F: Fn(Arc<A>, Acc) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Flow<Acc>, HookError>> + Send + 'static,
    {
        self.register(Registration {
            owner: owner.to_string(),
            priority,
            timeout: None,
            on_failure: None,
            filter: None,
            callback: Arc::new(move |a, acc| Box::pin(f(a, acc))),
        });
    }

    /// Adds a callback with all options.
    pub fn register(&self, reg: Registration<A, Acc>) {
        let entry = self.entry(
            reg.owner,
            reg.priority,
            reg.timeout,
            reg.on_failure,
            reg.filter,
            Callee::Async(reg.callback),
        );
        self.insert(entry);
    }

    /// Adds a [`SyncCallback`] (no time limit applies: it does not wait),
    /// called only where `filter` says so (always when `None`), with the
    /// chain's default failure policy.
    pub fn register_sync(
        &self,
        owner: &str,
        priority: i32,
        filter: Option<Filter<A, Acc>>,
        callback: SyncCallback<A, Acc>,
    ) {
        let entry = self.entry(
            owner.to_string(),
            priority,
            None,
            None,
            filter,
            Callee::Sync(callback),
        );
        self.insert(entry);
    }

    fn entry(
        &self,
        owner: String,
        priority: i32,
        timeout: Option<Duration>,
        on_failure: Option<FailurePolicy<Acc>>,
        filter: Option<Filter<A, Acc>>,
        callback: Callee<A, Acc>,
    ) -> Entry<A, Acc> {
        Entry {
            stats: self.stats_for(&owner),
            owner,
            priority,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            timeout: timeout.unwrap_or(self.default_timeout),
            on_failure,
            filter,
            callback,
        }
    }

    fn insert(&self, entry: Entry<A, Acc>) {
        let mut guard = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<Entry<A, Acc>> = guard.iter().map(Entry::clone_entry).collect();
        next.push(entry);
        // Stable order: priority descending, then registration order.
        next.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.seq.cmp(&b.seq)));
        self.len.store(next.len(), Ordering::Release);
        *guard = Arc::new(next);
    }

    /// Removes every callback `owner` registered; returns how many.
    pub fn remove_owner(&self, owner: &str) -> usize {
        let mut guard = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let next: Vec<Entry<A, Acc>> = guard
            .iter()
            .filter(|e| e.owner != owner)
            .map(Entry::clone_entry)
            .collect();
        let removed = guard.len() - next.len();
        self.len.store(next.len(), Ordering::Release);
        *guard = Arc::new(next);
        removed
    }

    /// Number of registered callbacks.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True when no callback is registered (the broker skips the hook then).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Failed calls (errors, panics, time-outs) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Counts a failed call and logs it, unless another was logged less than
    /// [`FAILURE_LOG_EVERY`] ago (the next line then says how many were not).
    fn log_failure(&self, owner: &str, failure: &str) {
        let total = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.logged_at_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= FAILURE_LOG_EVERY.as_millis() as u64;
        if !due
            || self
                .logged_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let unlogged = total - self.logged_failures.swap(total, Ordering::Relaxed) - 1;
        if unlogged == 0 {
            tracing::warn!(hook = %self.point, owner = %owner, "hook callback {failure}");
        } else {
            tracing::warn!(
                hook = %self.point,
                owner = %owner,
                "hook callback {failure} ({unlogged} more failed calls of this hook since the last such message)"
            );
        }
    }

    fn snapshot(&self) -> Arc<Vec<Entry<A, Acc>>> {
        self.entries
            .read()
            .map(|g| Arc::clone(&g))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    /// Runs the chain: each callback in order, until one stops or all have run.
    /// Returns the final accumulator and whether a callback stopped the chain.
    pub async fn run_fold(&self, args: Arc<A>, acc: Acc) -> Flow<Acc> {
        let entries = self.snapshot();
        let mut acc = acc;
        for entry in entries.iter() {
            if entry.filter.as_ref().is_some_and(|applies| !applies(&args, &acc)) {
                continue;
            }
            // Two clock reads per call (tens of nanoseconds) for the latency
            // histogram; its update is atomics only.
            let started = Instant::now();
            let callback = match &entry.callback {
                Callee::Async(callback) => callback,
                Callee::Sync(callback) => {
                    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| callback(&args, &mut acc)));
                    entry.stats.latency.observe_duration(started.elapsed());
                    match outcome {
                        Ok(true) => continue,
                        Ok(false) => return Flow::Stop(acc),
                        Err(panic) => {
                            entry.stats.failures.inc();
                            self.log_failure(&entry.owner, &format!("panicked: {}", panic_text(&panic)));
                            let policy = entry.on_failure.as_ref().unwrap_or(&self.default_failure);
                            match policy(acc) {
                                Flow::Continue(next) => acc = next,
                                Flow::Stop(last) => return Flow::Stop(last),
                            }
                            continue;
                        }
                    }
                }
            };
            let saved = acc.clone();
            let mut call = AssertUnwindSafe(callback(Arc::clone(&args), acc)).catch_unwind();
            // Most callbacks finish on their first poll (in-memory work): only
            // those that wait get a timer, which costs a timer wheel entry per call.
            // A callback registered without a limit (`Duration::MAX`, as a
            // storage callback that waits for its commit) gets no timer either.
            let outcome = match (&mut call).now_or_never() {
                Some(done) => Ok(done),
                None if entry.timeout == Duration::MAX => Ok(call.await),
                None => tokio::time::timeout(entry.timeout, call).await,
            };
            entry.stats.latency.observe_duration(started.elapsed());
            let failure = match outcome {
                Ok(Ok(Ok(Flow::Continue(next)))) => {
                    acc = next;
                    continue;
                }
                Ok(Ok(Ok(Flow::Stop(last)))) => return Flow::Stop(last),
                Ok(Ok(Err(e))) => format!("returned an error: {e}"),
                Ok(Err(panic)) => format!("panicked: {}", panic_text(&panic)),
                Err(_) => format!("exceeded its time limit of {:?}", entry.timeout),
            };
            entry.stats.failures.inc();
            self.log_failure(&entry.owner, &failure);
            let policy = entry.on_failure.as_ref().unwrap_or(&self.default_failure);
            match policy(saved) {
                Flow::Continue(next) => acc = next,
                Flow::Stop(last) => return Flow::Stop(last),
            }
        }
        Flow::Continue(acc)
    }
}

impl<A> Chain<A, ()>
where
    A: Send + Sync + 'static,
{
    /// Runs a notification hook; true when a callback stopped it.
    pub async fn run(&self, args: Arc<A>) -> bool {
        if self.is_empty() {
            return false;
        }
        self.run_fold(args, ()).await.is_stop()
    }
}

impl<A, Acc> Entry<A, Acc> {
    fn clone_entry(&self) -> Self {
        Entry {
            owner: self.owner.clone(),
            priority: self.priority,
            seq: self.seq,
            timeout: self.timeout,
            on_failure: self.on_failure.clone(),
            filter: self.filter.clone(),
            callback: self.callback.clone(),
            stats: self.stats.clone(),
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_string()
    }
}
