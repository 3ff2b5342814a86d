//! Unit tests of the position bookkeeping.

use super::flusher::{acked_above_literal, first_gap};
use super::*;

#[test]
fn the_first_unacknowledged_matching_id_is_the_gap() {
    assert_eq!(first_gap([3, 5, 8].into_iter(), &[3, 5, 8]), None);
    assert_eq!(first_gap([3, 5, 8].into_iter(), &[3, 8]), Some(5));
    assert_eq!(first_gap([3, 5, 8].into_iter(), &[4, 5, 8, 9]), Some(3));
    assert_eq!(first_gap(std::iter::empty(), &[1]), None);
}

fn key() -> TrackKey {
    ("c".into(), "a/#".into())
}

#[test]
fn positions_never_go_back_on_restart() {
    let t = Tracks::default();
    assert_eq!(t.start(key(), 10, &[], 1, FetchOpts::default()).0, 10);
    assert_eq!(
        t.start(key(), 4, &[], 1, FetchOpts::default()).0,
        10,
        "a stale database position does not move it back"
    );
}

#[test]
fn acks_are_tracked_per_matching_subscription() {
    let t = Tracks::default();
    t.start(key(), 10, &[], 1, FetchOpts::default());
    t.start(("c".into(), "b".into()), 0, &[], 1, FetchOpts::default());
    t.delivered("c", "a/x", 12);
    assert_eq!(t.acked("c", "a/x", 12), vec![key()]);
    assert!(
        t.acked("c", "a/x", 9).is_empty(),
        "an id at or below the position changes nothing"
    );
    let c = t.candidate(&key()).unwrap();
    assert_eq!((c.from, c.high, c.acked), (10, 12, vec![12]));
}

#[test]
fn a_gap_not_in_flight_asks_for_a_page_and_an_in_flight_one_does_not() {
    let t = Tracks::default();
    t.start(key(), 10, &[], 1, FetchOpts::default());
    t.delivered("c", "a/x", 11);
    t.acked("c", "a/x", 12);
    assert_eq!(t.advanced(&key(), 10, Some(11)), None, "11 is on its way");
    t.acked("c", "a/x", 11);
    assert_eq!(t.advanced(&key(), 12, None), None);
    t.acked("c", "a/x", 15);
    assert_eq!(
        t.advanced(&key(), 12, Some(13)),
        Some(PageDue {
            key: key(),
            from: 12,
            epoch: 1
        })
    );
}

#[test]
fn acks_above_the_position_outlive_the_session() {
    let t = Tracks::default();
    t.start(key(), 10, &[], 1, FetchOpts::default());
    t.start(("c".into(), "b".into()), 3, &[], 1, FetchOpts::default());
    t.delivered("c", "a/x", 11);
    t.delivered("c", "a/x", 12);
    t.acked("c", "a/x", 12);
    t.forget_client("c");
    assert_eq!(
        t.settings(&("c".into(), "b".into()), 1),
        None,
        "nothing to remember"
    );
    assert_eq!(t.advanced(&key(), 10, Some(11)), None, "no session to page to");
    assert_eq!(t.start(key(), 10, &[], 1, FetchOpts::default()).0, 10);
    assert_eq!(
        t.acked_within(&key(), 11, 20),
        HashSet::from([12]),
        "left out of the next session's replay"
    );
    assert!(t.acked_within(&key(), 13, 20).is_empty());
    assert!(t.lock().get(&key()).unwrap().delivered.is_empty());
}

/// Reads page `ids` (full when `last` is set) for `key` and hands it over.
fn read_page(t: &Tracks, epoch: u64, ids: &[i64], last: Option<i64>) -> Option<PageDue> {
    let _ = t.page_read(&key(), epoch, ids, last, ids.last().copied().unwrap_or(0));
    t.page_handed(&key(), epoch, true)
}

fn due(from: i64, epoch: u64) -> Option<PageDue> {
    Some(PageDue {
        key: key(),
        from,
        epoch,
    })
}

#[test]
fn the_next_page_is_read_while_the_previous_one_is_delivered() {
    let t = Tracks::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = t.pages.set(tx);
    let (from, epoch) = t.start(key(), 0, &[], 1, FetchOpts::default());
    assert_eq!(from, 0);
    t.begin_read(&key(), epoch);
    assert_eq!(
        read_page(&t, epoch, &[1, 2], Some(2)),
        due(2, epoch),
        "a second page is read at once"
    );
    assert_eq!(
        read_page(&t, epoch, &[3, 4], Some(4)),
        None,
        "two pages out: wait"
    );
    t.acked("c", "a/x", 1);
    assert_eq!(t.paging_of(&key()).out.len(), 2);
    t.acked("c", "a/x", 2);
    assert_eq!(t.paging_of(&key()).out.len(), 1, "the first page is done");
    assert_eq!(rx.try_recv().ok(), due(4, epoch), "and the third page was queued");
    assert_eq!(read_page(&t, epoch, &[5], None), None, "the backlog is drained");
    t.acked("c", "a/x", 4);
    t.acked("c", "a/x", 3);
    let p = t.paging_of(&key());
    assert!(p.out.is_empty() && p.next_from.is_none() && !p.reading);
}

#[test]
fn no_page_is_read_while_another_is_on_its_way_to_the_session() {
    let t = Tracks::default();
    let (_, epoch) = t.start(key(), 0, &[], 1, FetchOpts::default());
    t.begin_read(&key(), epoch);
    assert_eq!(read_page(&t, epoch, &[1], Some(1)), due(1, epoch));
    // Page 2 is read but not yet handed over when page 1 completes: no read
    // of page 3 may start before page 2 is in the session's mailbox.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = t.pages.set(tx);
    assert!(t.page_read(&key(), epoch, &[2], Some(2), 2).is_some());
    t.acked("c", "a/x", 1);
    assert!(
        rx.try_recv().is_err(),
        "no read queued while page 2 is on its way"
    );
    assert_eq!(t.page_handed(&key(), epoch, true), due(2, epoch));
}

#[test]
fn pages_of_an_earlier_subscription_are_dropped() {
    let t = Tracks::default();
    let (_, old) = t.start(key(), 0, &[], 1, FetchOpts::default());
    t.begin_read(&key(), old);
    let (_, new) = t.start(key(), 0, &[], 1, FetchOpts::default());
    assert_ne!(old, new);
    assert_eq!(
        t.settings(&key(), old),
        None,
        "a queued read for the old one is skipped"
    );
    assert_eq!(read_page(&t, old, &[1], Some(1)), None);
    assert!(t.paging_of(&key()).out.is_empty());
}

#[test]
fn a_page_acknowledged_before_it_was_read_does_not_hold_the_next() {
    let t = Tracks::default();
    let (_, epoch) = t.start(key(), 0, &[], 1, FetchOpts::default());
    t.begin_read(&key(), epoch);
    assert_eq!(read_page(&t, epoch, &[1, 2], Some(2)), due(2, epoch));
    t.acked("c", "a/x", 3);
    assert_eq!(
        read_page(&t, epoch, &[3], Some(3)),
        None,
        "page 1 is still out; page 2 holds nothing to wait for"
    );
    t.acked("c", "a/x", 1);
    t.acked("c", "a/x", 2);
    assert!(t.paging_of(&key()).out.is_empty(), "both retired");
}

#[test]
fn the_position_passing_a_page_retires_it() {
    let t = Tracks::default();
    let (_, epoch) = t.start(key(), 0, &[], 1, FetchOpts::default());
    t.begin_read(&key(), epoch);
    assert_eq!(read_page(&t, epoch, &[1, 2], Some(2)), due(2, epoch));
    assert_eq!(read_page(&t, epoch, &[3, 4], Some(4)), None);
    // Say id 2 was deleted by retention: never acknowledged, the database
    // position still passes it.
    t.acked("c", "a/x", 1);
    assert_eq!(t.advanced(&key(), 2, None), due(4, epoch));
}

#[test]
fn a_page_read_for_an_ended_or_replaced_subscription_is_not_handed_over() {
    let t = Tracks::default();
    let (_, epoch) = t.start(key(), 0, &[], 1, FetchOpts::default());
    t.begin_read(&key(), epoch);
    t.forget_client("c");
    assert!(
        t.page_read(&key(), epoch, &[1], Some(1), 1).is_none(),
        "the session ended"
    );
    let (_, old) = t.start(key(), 0, &[], 1, FetchOpts::default());
    t.begin_read(&key(), old);
    let (_, new) = t.start(key(), 0, &[], 1, FetchOpts::default());
    assert!(
        t.page_read(&key(), old, &[1], Some(1), 1).is_none(),
        "subscribed again"
    );
    t.begin_read(&key(), new);
    assert!(t.page_read(&key(), new, &[1], Some(1), 1).is_some());
    t.forget(&key());
    assert!(
        t.page_read(&key(), new, &[2], Some(2), 2).is_none(),
        "unsubscribed"
    );
}

#[test]
fn acknowledgements_before_registration_are_kept_and_written_after_it() {
    let t = Tracks::default();
    t.start_unregistered(key(), 1, FetchOpts::default());
    t.delivered("c", "a/x", 3);
    assert_eq!(t.acked("c", "a/x", 3), vec![key()]);
    assert_eq!(
        t.candidate(&key()),
        None,
        "no position is computed before it is known"
    );
    assert!(
        t.dropped("c", "a/x", 4).is_empty(),
        "no replay before it is known"
    );
    t.start(key(), 2, &[], 1, FetchOpts::default());
    let c = t.candidate(&key()).expect("written once registered");
    assert_eq!((c.from, c.high, c.acked), (2, 3, vec![3]));
}

#[test]
fn a_dropped_message_makes_the_store_read_again_until_a_read_covers_it() {
    let t = Tracks::default();
    let (_, epoch) = t.start(key(), 5, &[], 1, FetchOpts::default());
    // Nothing paging: a drop of id 9 asks for a read after what was read (the position).
    assert_eq!(
        t.dropped("c", "a/x", 9),
        vec![PageDue {
            key: key(),
            from: 5,
            epoch
        }]
    );
    // That read began before id 9 was visible: not complete, read on.
    assert_eq!(t.page_read(&key(), epoch, &[6], None, 8), Some(None));
    assert_eq!(t.page_handed(&key(), epoch, true), due(8, epoch));
    assert_eq!(
        t.page_read(&key(), epoch, &[9], None, 9),
        Some(Some(9)),
        "complete through 9"
    );
    assert_eq!(t.page_handed(&key(), epoch, true), None);
    assert!(
        t.dropped("c", "a/x", 5).is_empty(),
        "at or below the position: nothing to read"
    );
}

#[test]
fn what_the_database_records_as_acknowledged_above_the_position_is_not_paged_again() {
    let t = Tracks::default();
    // Another node recorded position 10 with 12 and 13 acknowledged above it
    // (11 was still in flight when the session moved).
    let (from, _) = t.start(key(), 10, &[9, 12, 13], 1, FetchOpts::default());
    assert_eq!(from, 10);
    assert_eq!(
        t.acked_within(&key(), 11, 20),
        [12, 13].into_iter().collect(),
        "left out of the replay; 9 is below the position and dropped"
    );
    let c = t.candidate(&key()).unwrap();
    assert_eq!((c.from, c.high, c.acked), (10, 13, vec![12, 13]));
}

#[test]
fn acknowledgements_above_the_position_are_written_as_an_array() {
    assert_eq!(acked_above_literal(&[3, 5, 8], 8), None);
    assert_eq!(acked_above_literal(&[3, 5, 8], 4).as_deref(), Some("{5,8}"));
    assert_eq!(acked_above_literal(&[], 0), None);
}

#[test]
fn a_shared_groups_track_is_reached_by_its_key_not_by_a_client_of_its_name() {
    let t = Tracks::default();
    let group = crate::groups::group_key("g", "a/#");
    t.set_replay_to(&group, Some("member".into()));
    t.start(group.clone(), 10, &[], 1, FetchOpts::default());
    // A client whose id is the group's own `$share/g`, with a plain subscription.
    let own: TrackKey = (group.0.clone(), "a/#".into());
    t.start(own.clone(), 10, &[], 1, FetchOpts::default());
    assert_eq!(
        t.acked(&group.0, "a/x", 12),
        vec![own.clone()],
        "its own track only"
    );
    assert_eq!(t.keys_of(&group.0), vec![own.clone()]);
    assert_eq!(t.acked_key(&group, 13, true), Some(group.clone()));
    let c = t.candidate(&group).unwrap();
    assert_eq!((c.from, c.high, c.acked), (10, 13, vec![13]));
    t.forget_client(&group.0);
    assert_eq!(
        t.replay_to(&group).as_deref(),
        Some("member"),
        "the group's track stays"
    );
}

#[test]
fn an_interrupted_group_replay_resumes_with_the_next_member() {
    let t = Tracks::default();
    let group = crate::groups::group_key("g", "a/#");
    t.set_replay_to(&group, Some("a".into()));
    let (_, epoch) = t.start(group.clone(), 10, &[], 1, FetchOpts::default());
    t.begin_read(&group, epoch);
    assert_eq!(t.page_handed(&group, epoch, false), None);
    assert_eq!(t.interrupted(&group, epoch, 10, "a"), None, "no other member yet");
    t.set_replay_to(&group, Some("b".into()));
    let due = t.resume(&group).expect("resumes from the page not taken");
    assert_eq!((due.from, due.epoch), (10, epoch));
    assert_eq!(t.resume(&group), None, "once");
    // The other order: the next member is set before the failed hand-over is known.
    t.begin_read(&group, epoch);
    assert_eq!(t.page_handed(&group, epoch, false), None);
    let due = t.interrupted(&group, epoch, 14, "a").expect("at once: b is set");
    assert_eq!(due.from, 14);
}
