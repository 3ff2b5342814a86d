//! Keep-alive checks of every connection, from one task.
//!
//! A server closes a connection that sends nothing for 1.5 times its keep
//! alive (MQTT 3.1.1 and 5, 3.1.2.10). A tokio timer per connection costs
//! every idle connection 112 bytes (a boxed `Sleep`); here a session asks
//! for a check at a whole second counted from the broker's start, and one
//! task keeps the requests in buckets by second, 8 bytes each (a sender to
//! the session's inbox). Each second it sends every session whose check is
//! due a [`SessionCmd::KeepaliveCheck`] naming the second. The session
//! compares it with the check it asked for last (an older one is stale: it
//! asked again since) and with when its last packet came, then closes the
//! connection or asks again. A check is never early and at most a second
//! late (Mosquitto, too, looks once per pass of its loop). A request whose
//! connection closed meanwhile stays until its second (keeping the inbox,
//! 128 bytes, that long); the session ignores the check.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::delivery::{SessionCmd, SessionTx};

/// The handle sessions ask for checks through.
pub struct KeepaliveChecks {
    start: Instant,
    tx: mpsc::UnboundedSender<(u32, SessionTx)>,
}

impl KeepaliveChecks {
    /// Starts the task; it ends when the broker shuts down.
    pub fn spawn(shutdown: watch::Receiver<bool>) -> KeepaliveChecks {
        let start = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(start, rx, shutdown));
        KeepaliveChecks { start, tx }
    }

    /// Asks for a check of `session` at `at` or at most a second after;
    /// returns the second the check will name.
    pub fn arm(&self, at: Instant, session: SessionTx) -> u32 {
        let second = self.second_of(at);
        // Refused only when the task has ended (shutdown): no check needed.
        let _ = self.tx.send((second, session));
        second
    }

    /// The first whole second since the start at or after `at`.
    fn second_of(&self, at: Instant) -> u32 {
        let since = at.saturating_duration_since(self.start);
        // Rounded up on the whole duration: a part of a millisecond counts.
        let second = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        u32::try_from(second).unwrap_or(u32::MAX)
    }
}

/// The task: requests in, checks out when their second comes.
async fn run(
    start: Instant,
    mut requests: mpsc::UnboundedReceiver<(u32, SessionTx)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut due: BTreeMap<u32, Vec<SessionTx>> = BTreeMap::new();
    // One timer, moved only when the earliest second changes (not made
    // again for every request).
    let timer = tokio::time::sleep_until(start);
    tokio::pin!(timer);
    let mut armed_for = None;
    loop {
        let next = due.keys().next().copied();
        if let Some(second) = next.filter(|s| armed_for != Some(*s)) {
            timer
                .as_mut()
                .reset(start + Duration::from_secs(u64::from(second)));
            armed_for = Some(second);
        }
        tokio::select! {
            request = requests.recv() => match request {
                Some((second, session)) => due.entry(second).or_default().push(session),
                None => return,
            },
            () = &mut timer, if next.is_some() => {
                let now = Instant::now().saturating_duration_since(start).as_secs();
                while let Some(entry) = due.first_entry() {
                    if u64::from(*entry.key()) > now {
                        break;
                    }
                    let second = *entry.key();
                    for session in entry.remove() {
                        // A session that ended refuses it: nothing to check.
                        let _ = session.send(SessionCmd::KeepaliveCheck(second));
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{inbox, Receiver};

    /// The next check `rx` hears of, and when; `None` within `within`.
    async fn next_check(rx: &Receiver, within: Duration) -> Option<(u32, Instant)> {
        let cmd = tokio::time::timeout(within, std::future::poll_fn(|cx| rx.poll_recv::<SessionCmd>(cx)))
            .await
            .ok()?;
        match cmd {
            SessionCmd::KeepaliveCheck(second) => Some((second, Instant::now())),
            _ => None,
        }
    }

    /// Each session hears of its check at the second it asked for, rounded
    /// up, never before; one asked for later hears later; once each.
    #[tokio::test]
    async fn checks_come_at_their_second_and_not_before() {
        let (_stop, shutdown) = watch::channel(false);
        let checks = KeepaliveChecks::spawn(shutdown);
        let (a, b) = (inbox(), inbox());
        let t0 = checks.start;
        let at_a = Instant::now() + Duration::from_millis(500);
        let second_a = checks.arm(at_a, a.tx.clone());
        let second_b = checks.arm(at_a + Duration::from_secs(1), b.tx.clone());
        assert_eq!(second_b, second_a + 1);
        let (named, came) = next_check(&a.rx, Duration::from_secs(3))
            .await
            .expect("a's check");
        assert_eq!(named, second_a);
        assert!(came >= at_a, "{:?} early", at_a - came);
        assert!(came >= t0 + Duration::from_secs(u64::from(second_a)));
        let (named, came_b) = next_check(&b.rx, Duration::from_secs(3))
            .await
            .expect("b's check");
        assert_eq!(named, second_b);
        assert!(came_b >= at_a + Duration::from_secs(1));
        assert_eq!(
            next_check(&a.rx, Duration::from_millis(1200)).await,
            None,
            "one check per request"
        );
    }

    /// A session that ended does not stop the others' checks.
    #[tokio::test]
    async fn an_ended_session_is_skipped() {
        let (_stop, shutdown) = watch::channel(false);
        let checks = KeepaliveChecks::spawn(shutdown);
        let (gone, stays) = (inbox(), inbox());
        let at = Instant::now() + Duration::from_millis(200);
        let second = checks.arm(at, gone.tx.clone());
        checks.arm(at, stays.tx.clone());
        drop(gone.rx);
        let (named, _) = next_check(&stays.rx, Duration::from_secs(3))
            .await
            .expect("the check");
        assert_eq!(named, second);
    }
}
