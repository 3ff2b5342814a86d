//! The tracks of shared groups ([`crate::groups`]): one track per group,
//! reached by its key, never through a client's id.

use super::{ack_track, PageDue, Paging, TrackKey, Tracks};

impl Tracks {
    /// [`Tracks::acked`] (`settle_page`) or [`Tracks::done_unsent`] for one
    /// track only: a shared group's, whose member acknowledged (the caller
    /// checked that the topic matches). Returns the key if its position
    /// should be recomputed.
    pub fn acked_key(&self, key: &TrackKey, id: i64, settle_page: bool) -> Option<TrackKey> {
        let mut map = self.lock();
        let t = map.get_mut(key)?;
        let (mut dirty, mut due) = (Vec::new(), Vec::new());
        ack_track(t, (&key.0, &key.1), id, settle_page, &mut dirty, &mut due);
        drop(map);
        for d in due {
            self.queue_page(d);
        }
        dirty.pop()
    }

    /// [`Tracks::delivered`] for one track only (a shared group's).
    pub fn delivered_key(&self, key: &TrackKey, id: i64) {
        if let Some(t) = self.lock().get_mut(key) {
            if t.active && id > t.position {
                t.delivered.insert(id);
            }
        }
    }

    /// The member a shared group's backlog goes to (for any other track:
    /// its own client).
    pub fn replay_to(&self, key: &TrackKey) -> Option<String> {
        self.lock().get(key).and_then(|t| t.replay_to.clone())
    }

    /// Sets the member a shared group's backlog goes to (the track is made
    /// if there is none; [`Tracks::start`] keeps it).
    pub fn set_replay_to(&self, key: &TrackKey, member: Option<String>) {
        self.lock().entry(key.clone()).replay_to = member;
    }

    /// The last id of a shared group's backlog in its current run, if set.
    pub fn run_bound(&self, key: &TrackKey) -> Option<i64> {
        self.lock().get(key).and_then(|t| t.run_bound)
    }

    /// Sets the last id of a shared group's backlog for its current run.
    pub fn bound_run(&self, key: &TrackKey, newest: i64) {
        self.lock().entry(key.clone()).run_bound = Some(newest);
    }

    /// A shared group's run here that got live messages only is to replay
    /// its backlog now (this node took the group's claim over): its bound
    /// goes, so the next read of its position sets it anew. Returns its QoS
    /// and fetch options, if a member subscribed with QoS 1 or 2 started it.
    pub fn reopen_run(&self, key: &TrackKey) -> Option<(i32, super::FetchOpts)> {
        let mut map = self.lock();
        let t = map.get_mut(key).filter(|t| t.active)?;
        t.run_bound = None;
        Some((t.qos, t.opts))
    }

    /// A shared group's page read above `from` in `epoch` could not be
    /// handed to member `tried` (its session had ended): the replay resumes
    /// there with another member. Returns that read at once when another
    /// member was set meanwhile; else [`Tracks::resume`] gives it once one is.
    pub fn interrupted(&self, key: &TrackKey, epoch: u64, from: i64, tried: &str) -> Option<PageDue> {
        {
            let mut map = self.lock();
            let t = map.get_mut(key).filter(|t| t.active && t.epoch == epoch)?;
            t.interrupted_at = Some(t.interrupted_at.map_or(from, |f| f.min(from)));
            if t.replay_to.as_deref() == Some(tried) {
                return None;
            }
        }
        self.resume(key)
    }

    /// The page read that resumes an interrupted replay, if there is one
    /// (and no read is running).
    pub fn resume(&self, key: &TrackKey) -> Option<PageDue> {
        let mut map = self.lock();
        let t = map.get_mut(key).filter(|t| t.active && !t.paging.reading)?;
        let from = t.interrupted_at.take()?;
        t.paging.reading = true;
        Some(PageDue {
            key: key.clone(),
            from,
            epoch: t.epoch,
        })
    }

    /// A member's session dropped stored message `id` of the group (its
    /// queue was full): the group delivers it again ([`Tracks::take_missed`]).
    pub fn missed(&self, key: &TrackKey, id: i64) {
        if let Some(t) = self.lock().get_mut(key) {
            if t.active && id > t.position && !t.acked.contains(&id) {
                t.missed.insert(id);
            }
        }
    }

    /// Up to `n` missed messages to hand to a member, oldest first, with the
    /// group's QoS: when some are missed, none handed before waits for an
    /// acknowledgement, no read of them runs, and the backlog is all
    /// handed over (its pages come first).
    pub fn take_missed(&self, key: &TrackKey, n: usize) -> Option<(Vec<i64>, i32)> {
        let mut map = self.lock();
        let t = map.get_mut(key).filter(|t| t.active)?;
        if t.missed.is_empty() || !t.missed_out.is_empty() || t.missed_reading || t.paging.active() {
            return None;
        }
        let ids: Vec<i64> = t.missed.iter().copied().take(n.max(1)).collect();
        // Out from now (the read may take a while): what is being handed is
        // never recorded as missed again meanwhile ([`Tracks::recover`]).
        for id in &ids {
            t.missed.remove(id);
            t.missed_out.insert(*id);
        }
        t.missed_reading = true;
        Some((ids, t.qos))
    }

    /// The missed messages `ids` were read: `handed` are now with a member
    /// (they wait for acknowledgements); the others had expired or were
    /// deleted (nothing to deliver). When the read or the hand-over
    /// `failed`, they all go back to be tried again. (`handed` is in id
    /// order, as read.)
    pub fn missed_handed(&self, key: &TrackKey, ids: &[i64], handed: &[i64], failed: bool) {
        let mut map = self.lock();
        let Some(t) = map.get_mut(key) else { return };
        t.missed_reading = false;
        for id in ids {
            // Acknowledged meanwhile, it left `missed_out` already.
            if t.missed_out.contains(id) && (failed || handed.binary_search(id).is_err()) {
                t.missed_out.remove(id);
                if failed && *id > t.position {
                    t.missed.insert(*id);
                }
            }
        }
    }

    /// A shared group lost its last member here: as [`Tracks::forget_client`]
    /// for its one track (what members acknowledged stays until written).
    pub fn forget_group(&self, key: &TrackKey) {
        let mut map = self.lock();
        let Some(t) = map.get_mut(key) else { return };
        t.active = false;
        t.delivered.clear();
        t.paging = Paging::default();
        t.replay_to = None;
        t.run_bound = None;
        t.missed.clear();
        t.missed_out.clear();
        if t.acked.is_empty() && !t.queued {
            map.remove(key);
        }
    }

    /// Where to look for a shared group's messages lost with another node
    /// ([`Tracks::recover`]), if its run here replays: (position, the ids
    /// still to be paged, as an exclusive-inclusive range, the fetch
    /// options). `None` when the run has no bound yet (its replay, when it
    /// starts, reads everything above the position anyway).
    pub fn lost_scope(&self, key: &TrackKey) -> Option<(i64, (i64, i64), super::FetchOpts)> {
        let map = self.lock();
        let t = map.get(key).filter(|t| t.active && !t.unregistered)?;
        let bound = t.run_bound?;
        // Paging: ids in (read_to, bound] come with the next pages.
        let unread = if t.paging.active() && t.paging.read_to < bound {
            (t.paging.read_to, bound)
        } else {
            (0, 0)
        };
        Some((t.position, unread, t.opts))
    }

    /// Another node went down: of `ids` (the group's stored messages above
    /// its position that no node recorded as acknowledged), those this
    /// node's members do not hold and its replay does not still bring are
    /// delivered again ([`Tracks::take_missed`]). Returns how many.
    pub fn recover(&self, key: &TrackKey, ids: &[i64], unread: (i64, i64)) -> usize {
        let mut map = self.lock();
        let Some(t) = map.get_mut(key).filter(|t| t.active) else {
            return 0;
        };
        let in_pages = |id: i64| {
            t.paging
                .out
                .iter()
                .any(|p| p.ids.binary_search_by_key(&id, |e| e.0).is_ok())
        };
        let lost: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|&id| {
                let held = t.acked.contains(&id)
                    || t.delivered.contains(&id)
                    || t.missed.contains(&id)
                    || t.missed_out.contains(&id)
                    || in_pages(id);
                let to_page = id > unread.0 && id <= unread.1;
                id > t.position && !to_page && !held
            })
            .collect();
        t.missed.extend(lost.iter().copied());
        lost.len()
    }
}
