//! A session's inbox: two unbounded queues (commands, and replays from
//! storage plugins) that allocate nothing until something is sent.
//!
//! A tokio mpsc channel allocates a 32-slot block per channel up front,
//! kilobytes per idle connection; these are `VecDeque`s behind `std` mutexes
//! (held only to push or pop, never across an await) and one
//! [`AtomicWaker`] to wake the owner. Both lanes share one allocation (an
//! idle connection's session keeps 128 bytes here, where two mailboxes took
//! 192). The session polls both on every turn of its loop, so waiting must
//! be cheap: registering the waker is an atomic exchange, where a
//! `tokio::sync::Notify` waiter takes a lock to enter and leave a list.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::delivery::{Replay, SessionCmd};

/// The two lanes of a session's inbox and what the owner tells its senders.
pub struct Shared {
    cmds: Mutex<VecDeque<SessionCmd>>,
    replays: Mutex<VecDeque<Replay>>,
    waker: AtomicWaker,
    /// The receiver is gone, or has taken the last values of a lane: sends
    /// are refused from then on (both lanes: a session ends as a whole).
    closed: AtomicBool,
    /// Set by the owner for its senders to read (a session: whether a
    /// connection is attached). Kept here so the owner needs no allocation
    /// of its own for it.
    attached: AtomicBool,
}

/// What travels in one lane of the inbox.
pub trait Lane: Sized {
    /// This lane's queue.
    fn queue(shared: &Shared) -> &Mutex<VecDeque<Self>>;
}

impl Lane for SessionCmd {
    fn queue(shared: &Shared) -> &Mutex<VecDeque<Self>> {
        &shared.cmds
    }
}

impl Lane for Replay {
    fn queue(shared: &Shared) -> &Mutex<VecDeque<Self>> {
        &shared.replays
    }
}

/// The sending side of one lane; cheap to clone.
pub struct Sender<T: Lane>(Arc<Shared>, PhantomData<fn(T)>);

/// The receiving side of both lanes, owned by the session task (one
/// pointer in every session, where a receiver per lane and a sender of its
/// own took three). Dropping it closes the inbox.
pub struct Receiver(Arc<Shared>);

/// The senders of both lanes of a new, empty inbox, and its receiver.
pub struct Inbox {
    /// Commands.
    pub tx: Sender<SessionCmd>,
    /// Replays.
    pub replay_tx: Sender<Replay>,
    /// The owner's side of both lanes.
    pub rx: Receiver,
}

/// A new, empty inbox.
pub fn inbox() -> Inbox {
    let shared = Arc::new(Shared {
        cmds: Mutex::new(VecDeque::new()),
        replays: Mutex::new(VecDeque::new()),
        waker: AtomicWaker::new(),
        closed: AtomicBool::new(false),
        attached: AtomicBool::new(false),
    });
    Inbox {
        tx: Sender(Arc::clone(&shared), PhantomData),
        replay_tx: Sender(Arc::clone(&shared), PhantomData),
        rx: Receiver(shared),
    }
}

impl<T: Lane> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(Arc::clone(&self.0), PhantomData)
    }
}

fn lock<T: Lane>(shared: &Shared) -> MutexGuard<'_, VecDeque<T>> {
    T::queue(shared).lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Lane> Sender<T> {
    /// Queues a value; gives it back when the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        {
            let mut queue = lock::<T>(&self.0);
            // Checked under the lock, so a value is never queued after the
            // receiver drained the lane for the last time.
            if self.0.closed.load(Ordering::Acquire) {
                return Err(value);
            }
            queue.push_back(value);
        }
        self.0.waker.wake();
        Ok(())
    }

    /// True once the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// What the owner last said with [`Receiver::set_attached`].
    pub fn is_attached(&self) -> bool {
        self.0.attached.load(Ordering::Relaxed)
    }
}

impl Receiver {
    /// Tells the senders whether the owner is attached (a session: has a connection).
    pub fn set_attached(&self, attached: bool) {
        self.0.attached.store(attached, Ordering::Relaxed);
    }

    /// A sender to lane `T` of this inbox (the session's own address, for
    /// the routes of its subscriptions).
    pub fn sender<T: Lane>(&self) -> Sender<T> {
        Sender(Arc::clone(&self.0), PhantomData)
    }

    /// The next value of lane `T`, or `Pending` with the task registered
    /// for a wake-up (by either lane).
    pub fn poll_recv<T: Lane>(&self, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(v) = lock::<T>(&self.0).pop_front() {
            return Poll::Ready(v);
        }
        self.0.waker.register(cx.waker());
        // Looked at again after registering: a value sent between the first
        // look and the registration found no waker to wake.
        let mut queue = lock::<T>(&self.0);
        match queue.pop_front() {
            Some(v) => Poll::Ready(v),
            None => {
                // The owner is about to wait: an idle session keeps no
                // buffer (a queue keeps its capacity, 256 bytes or more, after
                // the first value). A busy one allocates it again per burst.
                if queue.capacity() > 0 {
                    *queue = VecDeque::new();
                }
                Poll::Pending
            }
        }
    }

    /// The next value of lane `T` if one is queued.
    pub fn try_recv<T: Lane>(&self) -> Option<T> {
        lock::<T>(&self.0).pop_front()
    }

    /// True when nothing is queued in lane `T`.
    pub fn is_empty<T: Lane>(&self) -> bool {
        lock::<T>(&self.0).is_empty()
    }

    /// Refuses further sends (on both lanes) and returns what lane `T` still holds.
    pub fn close<T: Lane>(&self) -> VecDeque<T> {
        let mut queue = lock::<T>(&self.0);
        self.0.closed.store(true, Ordering::Release);
        std::mem::take(&mut *queue)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(n: usize) -> Replay {
        Replay {
            filter: format!("t/{n}"),
            deliveries: Vec::new(),
            complete_through: None,
        }
    }

    #[tokio::test]
    async fn values_arrive_in_order_and_a_waiting_receiver_wakes() {
        let Inbox { replay_tx, rx, .. } = inbox();
        let waiter = tokio::spawn(async move {
            let a = std::future::poll_fn(|cx| rx.poll_recv::<Replay>(cx)).await;
            let b = std::future::poll_fn(|cx| rx.poll_recv::<Replay>(cx)).await;
            (a.filter, b.filter, rx)
        });
        tokio::task::yield_now().await;
        assert!(replay_tx.send(replay(1)).is_ok());
        assert!(replay_tx.send(replay(2)).is_ok());
        let (a, b, rx) = waiter.await.unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("t/1", "t/2"));
        assert!(rx.try_recv::<Replay>().is_none());
    }

    /// The lanes are separate queues: a command never comes out as a
    /// replay, and each lane keeps its own order.
    #[test]
    fn the_two_lanes_keep_their_values_apart() {
        let inbox = inbox();
        assert!(inbox.replay_tx.send(replay(1)).is_ok());
        assert!(inbox.tx.send(SessionCmd::HandOverShared).is_ok());
        assert!(inbox.replay_tx.send(replay(2)).is_ok());
        assert!(matches!(
            inbox.rx.try_recv::<SessionCmd>(),
            Some(SessionCmd::HandOverShared)
        ));
        assert!(inbox.rx.try_recv::<SessionCmd>().is_none());
        assert_eq!(
            inbox.rx.try_recv::<Replay>().map(|r| r.filter).as_deref(),
            Some("t/1")
        );
        assert_eq!(
            inbox.rx.try_recv::<Replay>().map(|r| r.filter).as_deref(),
            Some("t/2")
        );
    }

    /// An idle connection's session waits on both lanes: once drained,
    /// they hold no buffer (BENCHMARKS.md, idle connections).
    #[tokio::test]
    async fn a_drained_mailbox_keeps_no_buffer() {
        let Inbox {
            replay_tx: tx, rx, ..
        } = inbox();
        for i in 0..10 {
            assert!(tx.send(replay(i)).is_ok());
        }
        for i in 0..10 {
            assert_eq!(
                std::future::poll_fn(|cx| rx.poll_recv::<Replay>(cx)).await.filter,
                format!("t/{i}")
            );
        }
        assert!(
            lock::<Replay>(&rx.0).capacity() > 0,
            "still holds the buffer before waiting"
        );
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv::<Replay>(&mut cx).is_pending());
        assert_eq!(lock::<Replay>(&rx.0).capacity(), 0);
        assert!(tx.send(replay(10)).is_ok());
        assert_eq!(rx.try_recv::<Replay>().map(|r| r.filter).as_deref(), Some("t/10"));
    }

    #[test]
    fn a_closed_mailbox_gives_values_back() {
        let inbox = inbox();
        assert!(inbox.replay_tx.send(replay(1)).is_ok());
        let back: Vec<String> = inbox.rx.close::<Replay>().into_iter().map(|r| r.filter).collect();
        assert_eq!(back, vec!["t/1".to_string()]);
        assert!(inbox.replay_tx.send(replay(2)).is_err());
        // A session ends as a whole: its command lane refuses too.
        assert!(inbox.tx.send(SessionCmd::HandOverShared).is_err());
        assert!(inbox.tx.is_closed());
        let other = super::inbox();
        assert!(!other.tx.is_closed());
        drop(other.rx);
        assert!(other.tx.is_closed(), "the owner is gone");
        assert!(other.replay_tx.send(replay(3)).is_err());
    }
}
