//! Read positions: `mqtt_acked.mid` per (client, subscription filter).
//!
//! The position only moves forward, and only over a contiguous range: it
//! becomes the largest N such that every stored message matching the filter
//! with an id in (position, N] has been acknowledged by the client. The
//! database is the judge of which ids match (the flusher reads the matching
//! ids in the range, the first one not acknowledged is the gap, and the
//! position is updated with `GREATEST`), so out-of-order acknowledgements,
//! messages written by another broker that never reached this one live, and
//! messages a full queue dropped can never be skipped. Failed writes are
//! retried until the database answers.
//!
//! The per-subscription bookkeeping ([`Track`]) lives behind a `std` mutex
//! held only for short, await-free updates; one task ([`Flusher`]) owns the
//! writes of positions and batches them: whatever acknowledgements arrived
//! while it was writing are folded into the next write per subscription.
//!
//! A shared group (`$share/<group>/<filter>`) has one track of its own, keyed
//! ([`crate::groups::group_key`]) so that no client's track or row can be
//! it: its members' acknowledgements move it, and its backlog is replayed
//! to one member ([`Track::replay_to`]). See [`crate::groups`].
//!
//! A backlog is replayed in pages, pipelined: the next page is read as soon
//! as the previous one has been handed to the session, as long as fewer than
//! [`PAGES_AHEAD`] handed pages still wait for acknowledgements (counted in
//! memory, so paging never waits for a position write). Pages are read one
//! after another from the last id handed out, so each stored message is
//! handed over once and in order; the position, as above, only follows what
//! the database confirms.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, OnceLock};

use tokio::sync::mpsc;

/// (client id, subscription filter).
pub type TrackKey = (String, String);

/// What the plugin knows of one subscription's stored messages.
#[derive(Debug, Default, Clone)]
pub struct Track {
    /// Persisted (or about to be) position.
    pub position: i64,
    /// Stored ids above the position delivered and not yet acknowledged.
    pub delivered: BTreeSet<i64>,
    /// Stored ids above the position acknowledged.
    pub acked: BTreeSet<i64>,
    /// The backlog being replayed, page by page.
    pub paging: Paging,
    /// Counts the subscriptions started on this key: a page read queued for an
    /// earlier one is dropped.
    pub epoch: u64,
    /// The subscription's QoS (for the deliveries of later pages).
    pub qos: i32,
    /// Page size and age limit of the rule that fetches for it.
    pub opts: FetchOpts,
    /// A session is subscribed (false: kept after the session ended only to
    /// remember what the client acknowledged above the position).
    pub active: bool,
    /// In the flusher's queue (sent, not yet taken): further acknowledgements
    /// need not queue it again.
    pub queued: bool,
    /// Subscribed while the database did not answer: acknowledgements are
    /// collected, but no position is computed or written (the position is
    /// not known) until [`Tracks::start`] registers it.
    pub unregistered: bool,
    /// A shared group's track: the member its backlog is replayed to.
    pub replay_to: Option<String>,
    /// A shared group's page was not taken (the member's session had
    /// ended): the replay stopped there, reading above this id.
    pub interrupted_at: Option<i64>,
    /// A shared group's run here: the newest stored id when it began. Its
    /// backlog ends there (what was stored later went live to a member).
    pub run_bound: Option<i64>,
    /// A shared group's stored messages a member's session dropped (its
    /// queue was full), to be delivered again from the store.
    pub missed: BTreeSet<i64>,
    /// Those handed to a member again and not yet acknowledged: the next
    /// ones wait for them.
    pub missed_out: BTreeSet<i64>,
    /// Missed messages are being read and handed over.
    pub missed_reading: bool,
}

/// Full pages handed to a session that may wait for acknowledgements at
/// once: the session holds at most this many pages (plus the one being
/// read), and the next read overlaps the delivery of the previous page.
pub const PAGES_AHEAD: usize = 2;

/// Where the replay of one subscription's backlog stands.
#[derive(Debug, Default, Clone)]
pub struct Paging {
    /// Full pages handed to the session whose messages are not all
    /// acknowledged yet, oldest first.
    pub out: VecDeque<PageOut>,
    /// The next page starts above this id (the last one handed out); `None`
    /// when no backlog is paging (the last page read was not full).
    pub next_from: Option<i64>,
    /// A page read is queued or running, and its page not yet handed over:
    /// no other read may start (pages must reach the session in order).
    pub reading: bool,
    /// Every stored id up to this one was read (or is at or below the
    /// position) in this subscription's epoch.
    pub read_to: i64,
    /// The highest stored id the session reported dropped (its queue was
    /// full): the backlog is not complete before a read covers it.
    pub need: i64,
}

/// A page handed to the session.
#[derive(Debug, Clone)]
pub struct PageOut {
    /// Its last stored id.
    pub last: i64,
    /// Its ids to wait for, ascending (a page is read in id order), each
    /// with whether it is done (acknowledged, or otherwise finished).
    ids: Vec<(i64, bool)>,
    /// How many of `ids` are not done.
    left: usize,
}

impl PageOut {
    fn new(last: i64, mut ids: Vec<i64>) -> PageOut {
        ids.sort_unstable();
        ids.dedup();
        PageOut {
            last,
            left: ids.len(),
            ids: ids.into_iter().map(|id| (id, false)).collect(),
        }
    }

    /// Marks `id` done; true when that finished the page. (Called for every
    /// acknowledgement of a replay: a binary search, no hashing.)
    fn done(&mut self, id: i64) -> bool {
        if let Ok(i) = self.ids.binary_search_by_key(&id, |e| e.0) {
            if !self.ids[i].1 {
                self.ids[i].1 = true;
                self.left -= 1;
                return self.left == 0;
            }
        }
        false
    }

    /// Every id is done.
    pub fn is_done(&self) -> bool {
        self.left == 0
    }
}

impl Paging {
    /// A backlog is being replayed (a page out, or more to read).
    fn active(&self) -> bool {
        self.next_from.is_some() || self.reading || !self.out.is_empty()
    }

    /// The next page read, when one is due: more to read, no read running,
    /// and room ahead.
    fn due(&mut self, key: &TrackKey, epoch: u64) -> Option<PageDue> {
        let from = self.next_from?;
        if self.reading || self.out.len() >= PAGES_AHEAD {
            return None;
        }
        self.reading = true;
        Some(PageDue {
            key: key.clone(),
            from,
            epoch,
        })
    }

    /// Drops the pages that are done: all acknowledged, or at or below the position.
    fn retire(&mut self, position: i64) {
        while self
            .out
            .front()
            .is_some_and(|p| p.is_done() || p.last <= position)
        {
            self.out.pop_front();
        }
    }
}

/// `offline_opts` of a fetch rule, with the globals filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FetchOpts {
    /// Messages per page.
    pub max_returned_count: usize,
    /// Only messages that arrived within this many seconds; `None`: no limit.
    pub time_range_secs: Option<f64>,
    /// MQTT 5 no local: the client's own messages are not for it (not
    /// replayed, and no gap for its position).
    pub no_local: bool,
}

impl Default for FetchOpts {
    fn default() -> Self {
        FetchOpts {
            max_returned_count: 500,
            time_range_secs: None,
            no_local: false,
        }
    }
}

/// Every tracked subscription.
#[derive(Default)]
pub struct Tracks {
    map: Mutex<TrackMap>,
    /// The page server's queue (set once by [`Flusher::spawn`]): pages that
    /// become due when an acknowledgement completes a page go there.
    pages: OnceLock<mpsc::UnboundedSender<PageDue>>,
}

/// Tracks by client id, then filter: every stored message delivered or
/// acknowledged looks only at its own client's subscriptions.
#[derive(Default)]
struct TrackMap(HashMap<String, HashMap<String, Track>>);

impl TrackMap {
    fn get(&self, (c, f): &TrackKey) -> Option<&Track> {
        self.0.get(c)?.get(f)
    }

    fn get_mut(&mut self, (c, f): &TrackKey) -> Option<&mut Track> {
        self.0.get_mut(c)?.get_mut(f)
    }

    fn entry(&mut self, (c, f): TrackKey) -> &mut Track {
        self.0.entry(c).or_default().entry(f).or_default()
    }

    fn remove(&mut self, (c, f): &TrackKey) {
        if let Some(by_filter) = self.0.get_mut(c) {
            by_filter.remove(f);
            if by_filter.is_empty() {
                self.0.remove(c);
            }
        }
    }

    /// One client's tracks (filter, track): never a shared group's (whose
    /// key a client id `$share/<group>` would reach).
    fn client_mut(&mut self, clientid: &str) -> impl Iterator<Item = (&String, &mut Track)> {
        self.0
            .get_mut(clientid)
            .into_iter()
            .flat_map(|m| m.iter_mut())
            .filter(|(f, _)| !crate::groups::is_group(f))
    }
}

/// A page read that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageDue {
    /// The subscription.
    pub key: TrackKey,
    /// Fetch ids above this.
    pub from: i64,
    /// The subscription it is for ([`Track::epoch`]).
    pub epoch: u64,
}

impl Tracks {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or restarts, on a re-subscribe) tracking. The position never
    /// goes back below what this node already knew, and what the database
    /// records as acknowledged above it (`db_acked`: by this client, on
    /// whichever node) joins what this node knew; returns the position to
    /// fetch from and the subscription's epoch (any paging of an earlier
    /// subscription on this key is abandoned).
    pub fn start(
        &self,
        key: TrackKey,
        db_position: i64,
        db_acked: &[i64],
        qos: i32,
        opts: FetchOpts,
    ) -> (i64, u64) {
        let mut map = self.lock();
        let t = map.entry(key);
        t.opts = opts;
        t.position = t.position.max(db_position);
        let p = t.position;
        t.delivered.retain(|&id| id > p);
        t.acked.extend(db_acked.iter().copied());
        t.acked.retain(|&id| id > p);
        t.qos = qos;
        t.active = true;
        t.unregistered = false;
        t.interrupted_at = None;
        t.epoch += 1;
        t.paging = Paging {
            read_to: p,
            ..Paging::default()
        };
        (p, t.epoch)
    }

    /// Starts tracking from `position` even when this node knew a later one:
    /// the client asked to replay from a time (`replay-from`), so what it
    /// acknowledged since comes again. Returns the position and the epoch,
    /// as [`Tracks::start`].
    pub fn rewind(&self, key: TrackKey, position: i64, qos: i32, opts: FetchOpts) -> (i64, u64) {
        {
            let mut map = self.lock();
            let t = map.entry(key.clone());
            t.position = position;
            t.delivered.clear();
            t.acked.clear();
        }
        self.start(key, position, &[], qos, opts)
    }

    /// A subscription made while the database did not answer: tracked from
    /// now on, so that what the client acknowledges before [`Tracks::start`]
    /// registers it (when the database is back) is not forgotten. Its
    /// position stays what this node knew (nothing, for a new one).
    /// Returns the subscription's epoch (see [`Tracks::awaits_registration`]).
    pub fn start_unregistered(&self, key: TrackKey, qos: i32, opts: FetchOpts) -> u64 {
        let mut map = self.lock();
        let t = map.entry(key);
        t.opts = opts;
        t.qos = qos;
        t.active = true;
        t.unregistered = true;
        t.epoch += 1;
        t.paging = Paging {
            read_to: t.position,
            ..Paging::default()
        };
        t.epoch
    }

    /// True while the subscription started unregistered in `epoch` is still
    /// the client's and still waits for its registration.
    pub fn awaits_registration(&self, key: &TrackKey, epoch: u64) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|t| t.active && t.unregistered && t.epoch == epoch)
    }

    /// Marks the first page read of a subscription as running (its caller
    /// reads it now), so that no other read starts before it is handed over.
    pub fn begin_read(&self, key: &TrackKey, epoch: u64) {
        if let Some(t) = self.lock().get_mut(key) {
            if t.epoch == epoch {
                t.paging.reading = true;
            }
        }
    }

    /// Ids in `first..=last` this client already acknowledged above its
    /// position (left out of pages).
    pub fn acked_within(&self, key: &TrackKey, first: i64, last: i64) -> HashSet<i64> {
        self.lock()
            .get(key)
            .filter(|_| first <= last)
            .map(|t| t.acked.range(first..=last).copied().collect())
            .unwrap_or_default()
    }

    /// The subscription's QoS and fetch options, if `epoch` is still its
    /// current subscription.
    pub fn settings(&self, key: &TrackKey, epoch: u64) -> Option<(i32, FetchOpts)> {
        self.lock()
            .get(key)
            .filter(|t| t.active && t.epoch == epoch)
            .map(|t| (t.qos, t.opts))
    }

    /// A page was read: `ids` are the stored ids it hands to the session,
    /// `last` its last id when it was full (more may follow), `None` when it
    /// was not; `through`: the newest stored id when the read began (every id
    /// up to it that matches was in the page or before it). Reading stays
    /// marked until [`Tracks::page_handed`].
    ///
    /// Returns what to tell the session ([`BrokerHandle::replay`]'s
    /// `complete_through`: `None`, more pages follow), or `None` when `epoch`
    /// is no longer a subscribed session's subscription (it ended, was
    /// unsubscribed or made again while the page was read): the page must
    /// not be handed over.
    ///
    /// [`BrokerHandle::replay`]: hooks_spec::BrokerHandle::replay
    #[must_use]
    pub fn page_read(
        &self,
        key: &TrackKey,
        epoch: u64,
        ids: &[i64],
        last: Option<i64>,
        through: i64,
    ) -> Option<Option<i64>> {
        let mut map = self.lock();
        let t = map.get_mut(key).filter(|t| t.active && t.epoch == epoch)?;
        let paging = &mut t.paging;
        let read_last = ids.last().copied().unwrap_or(0).max(last.unwrap_or(0));
        if let Some(last) = last {
            paging.read_to = paging.read_to.max(last);
            paging.next_from = Some(last);
            // An id acknowledged meanwhile (a live copy) is done already; if one
            // slips through, the position passing the page end retires it.
            let pending: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| *id > t.position && !t.acked.contains(id))
                .collect();
            paging.out.push_back(PageOut::new(last, pending));
            let position = t.position;
            paging.retire(position);
            return Some(None);
        }
        let covered = through.max(read_last);
        paging.read_to = paging.read_to.max(covered);
        if covered < paging.need {
            // The session dropped a message this read may have begun before:
            // read on from here.
            paging.next_from = Some(covered);
            return Some(None);
        }
        paging.next_from = None;
        Some(Some(through))
    }

    /// The session dropped stored message `id` (its queue was full): every
    /// subscription of the client it matches must get it from the store.
    /// Returns the page reads that are due now.
    pub fn dropped(&self, clientid: &str, topic: &str, id: i64) -> Vec<PageDue> {
        let mut map = self.lock();
        let mut due = Vec::new();
        for (f, t) in map.client_mut(clientid) {
            if !t.active
                || t.unregistered
                || id <= t.position
                || t.acked.contains(&id)
                || !hooks_match(f, topic)
            {
                continue;
            }
            let position = t.position;
            let paging = &mut t.paging;
            paging.need = paging.need.max(id);
            if !paging.reading && paging.next_from.is_none() {
                // Not reading: read again after what was read (ids the session
                // has already are skipped by it).
                paging.next_from = Some(paging.read_to.max(position));
            }
            let key = (clientid.to_string(), f.clone());
            due.extend(paging.due(&key, t.epoch));
        }
        due
    }

    /// The page read last was handed to the session (`handed`: the session
    /// took it); returns the next read if it is due now. Call it after the
    /// page is in the session's mailbox, so pages arrive in order.
    pub fn page_handed(&self, key: &TrackKey, epoch: u64, handed: bool) -> Option<PageDue> {
        let mut map = self.lock();
        let t = map.get_mut(key).filter(|t| t.epoch == epoch)?;
        t.paging.reading = false;
        if !handed || !t.active {
            t.paging = Paging::default();
            return None;
        }
        t.paging.due(key, epoch)
    }

    /// A stored message was written to the client.
    pub fn delivered(&self, clientid: &str, topic: &str, id: i64) {
        let mut map = self.lock();
        for (f, t) in map.client_mut(clientid) {
            if t.active && id > t.position && hooks_match(f, topic) {
                t.delivered.insert(id);
            }
        }
    }

    /// The client acknowledged (or the broker gave up on, for a reason that
    /// makes it undeliverable) a stored message; returns the subscriptions
    /// whose position should be recomputed. A page this completes lets the
    /// next page be read (queued to the page server).
    pub fn acked(&self, clientid: &str, topic: &str, id: i64) -> Vec<TrackKey> {
        self.ack(clientid, topic, id, true)
    }

    /// A QoS 0 replay read from the database: done for the position (it is
    /// never acknowledged), but its page waits until the session wrote it
    /// (`message.delivered`, then [`Tracks::acked`]), so QoS 0 replays are
    /// paced by the client too.
    pub fn done_unsent(&self, clientid: &str, topic: &str, id: i64) -> Vec<TrackKey> {
        self.ack(clientid, topic, id, false)
    }

    fn ack(&self, clientid: &str, topic: &str, id: i64, settle_page: bool) -> Vec<TrackKey> {
        let mut map = self.lock();
        let mut dirty = Vec::new();
        let mut due = Vec::new();
        for (f, t) in map.client_mut(clientid) {
            if hooks_match(f, topic) {
                ack_track(t, (clientid, f), id, settle_page, &mut dirty, &mut due);
            }
        }
        drop(map);
        for d in due {
            self.queue_page(d);
        }
        dirty
    }

    /// Queues a page read to the page server.
    pub fn queue_page(&self, due: PageDue) {
        if let Some(pages) = self.pages.get() {
            let _ = pages.send(due);
        }
    }

    #[cfg(test)]
    fn paging_of(&self, key: &TrackKey) -> Paging {
        self.lock().get(key).map(|t| t.paging.clone()).unwrap_or_default()
    }

    /// The subscriptions tracked for a client.
    pub fn keys_of(&self, clientid: &str) -> Vec<TrackKey> {
        self.lock()
            .client_mut(clientid)
            .map(|(f, _)| (clientid.to_string(), f.clone()))
            .collect()
    }

    /// Forgets one subscription (unsubscribe).
    pub fn forget(&self, key: &TrackKey) {
        self.lock().remove(key);
    }

    /// A client's session ended. What it acknowledged above a position stays
    /// known, so that its next session is not sent those messages again (the
    /// position cannot pass an unacknowledged id below them); what was in
    /// flight or paged belonged to the session and is dropped.
    pub fn forget_client(&self, clientid: &str) {
        let mut map = self.lock();
        if let Some(by_filter) = map.0.get_mut(clientid) {
            by_filter.retain(|f, t| {
                if crate::groups::is_group(f) {
                    // A shared group's, not this client's (crate::groups).
                    return true;
                }
                t.active = false;
                t.delivered.clear();
                t.paging = Paging::default();
                !t.acked.is_empty()
            });
            if by_filter.is_empty() {
                map.0.remove(clientid);
            }
        }
    }

    /// The candidate advance of one subscription.
    fn candidate(&self, key: &TrackKey) -> Option<Candidate> {
        let mut map = self.lock();
        let t = map.get_mut(key)?;
        // Acknowledgements from now on are not in this candidate: they queue it again.
        t.queued = false;
        if t.unregistered {
            // start() queues it again once the position is known.
            return None;
        }
        // With a page out and nothing newly acknowledged, the page end is the candidate
        // (a page whose messages were all acknowledged before must still move on).
        let high = t.acked.last().copied().or(t.paging.out.back().map(|p| p.last))?;
        Some(Candidate {
            from: t.position,
            high,
            acked: t.acked.iter().copied().collect(),
            time_range_secs: t.opts.time_range_secs,
            no_local: t.opts.no_local,
        })
    }

    /// Applies a verified position; returns a page read that is due, if any:
    /// the next page of a backlog when the position passed a page out, or a
    /// page from the new position when the first unacknowledged matching id
    /// is not on its way to the client (a gap nothing else will fill).
    fn advanced(&self, key: &TrackKey, position: i64, first_gap: Option<i64>) -> Option<PageDue> {
        let mut map = self.lock();
        let t = map.get_mut(key)?;
        if position > t.position {
            t.position = position;
            t.acked.retain(|&id| id > position);
            t.delivered.retain(|&id| id > position);
        }
        if !t.active {
            // No session is subscribed: nothing to page to; once nothing is left
            // to record, the entry goes.
            if t.acked.is_empty() {
                map.remove(key);
            }
            return None;
        }
        let epoch = t.epoch;
        if t.paging.active() {
            t.paging.retire(t.position);
            return t.paging.due(key, epoch);
        }
        match first_gap {
            // Not for a shared group: the gap may be queued at another member.
            _ if crate::groups::is_group(&key.1) => None,
            Some(gap) if !t.delivered.contains(&gap) => {
                t.paging.reading = true;
                Some(PageDue {
                    key: key.clone(),
                    from: t.position,
                    epoch,
                })
            }
            _ => None,
        }
    }
}

/// Runs for every stored message delivered or acknowledged, once per
/// subscription of its client: a filter without wildcards is a plain comparison.
fn hooks_match(filter: &str, topic: &str) -> bool {
    crate::mqtt_matches(crate::groups::match_filter(filter), topic)
}

/// Records that the client acknowledged (or is done with) `id` on track
/// `t` (`key`): the key goes to `dirty` when its position should be
/// recomputed, and a page read the acknowledgement makes due to `due`.
/// `key` is borrowed: the owned key is made only when it is queued (most
/// acknowledgements find their track queued already).
fn ack_track(
    t: &mut Track,
    key: (&str, &str),
    id: i64,
    settle_page: bool,
    dirty: &mut Vec<TrackKey>,
    due: &mut Vec<PageDue>,
) {
    let owned = || (key.0.to_string(), key.1.to_string());
    t.delivered.remove(&id);
    if !t.missed.is_empty() {
        t.missed.remove(&id);
    }
    if !t.missed_out.is_empty() {
        t.missed_out.remove(&id);
    }
    if id > t.position {
        t.acked.insert(id);
        if !t.queued {
            t.queued = true;
            dirty.push(owned());
        }
    }
    if !settle_page {
        return;
    }
    if let Some(page) = t.paging.out.iter_mut().find(|p| id <= p.last) {
        if page.done(id) {
            t.paging.retire(t.position);
            due.extend(t.paging.due(&owned(), t.epoch));
        }
    }
}

/// A position to verify and write.
#[derive(Debug, PartialEq)]
struct Candidate {
    from: i64,
    high: i64,
    acked: Vec<i64>,
    time_range_secs: Option<f64>,
    no_local: bool,
}

mod flusher;
mod group;

pub use flusher::{DrainHandle, Flusher, RETRY_DELAY};

#[cfg(test)]
mod tests;
