//! A session's inbox: an unbounded queue that allocates nothing until
//! something is sent.
//!
//! Every session has two (commands and replays). A tokio mpsc channel
//! allocates a 32-slot block per channel up front, kilobytes per idle
//! connection; this one is a `VecDeque` behind a `std` mutex (held only to
//! push or pop, never across an await) and an [`AtomicWaker`] to wake the
//! owner. The session polls its mailboxes on every turn of its loop, so
//! waiting must be cheap: registering the waker is an atomic exchange, where
//! a `tokio::sync::Notify` waiter takes a lock to enter and leave a list.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

struct Shared<T> {
    queue: Mutex<VecDeque<T>>,
    waker: AtomicWaker,
    closed: AtomicBool,
    /// Set by the owner for its senders to read (a session: whether a
    /// connection is attached). Kept here so the owner needs no allocation
    /// of its own for it.
    attached: AtomicBool,
}

/// The sending side; cheap to clone.
pub struct Sender<T>(Arc<Shared<T>>);

/// The receiving side, owned by the session task. Dropping it closes the mailbox.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A new, empty mailbox.
pub fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        waker: AtomicWaker::new(),
        closed: AtomicBool::new(false),
        attached: AtomicBool::new(false),
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(Arc::clone(&self.0))
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> Sender<T> {
    /// Queues a value; gives it back when the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        {
            let mut queue = self.0.lock();
            // Checked under the lock, so a value is never queued after the
            // receiver drained the mailbox for the last time.
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

impl<T> Receiver<T> {
    /// Tells the senders whether the owner is attached (a session: has a connection).
    pub fn set_attached(&self, attached: bool) {
        self.0.attached.store(attached, Ordering::Relaxed);
    }

    /// The next value, waiting for one.
    pub async fn recv(&self) -> T {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next value, or `Pending` with the task registered for a wake-up.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(v) = self.0.lock().pop_front() {
            return Poll::Ready(v);
        }
        self.0.waker.register(cx.waker());
        // Looked at again after registering: a value sent between the first
        // look and the registration found no waker to wake.
        let mut queue = self.0.lock();
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

    /// The next value if one is queued.
    pub fn try_recv(&self) -> Option<T> {
        self.0.lock().pop_front()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    /// Refuses further sends and returns what is still queued.
    pub fn close(&self) -> VecDeque<T> {
        let mut queue = self.0.lock();
        self.0.closed.store(true, Ordering::Release);
        std::mem::take(&mut *queue)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_arrive_in_order_and_a_waiting_receiver_wakes() {
        let (tx, rx) = mailbox();
        let waiter = tokio::spawn(async move {
            let a = rx.recv().await;
            let b = rx.recv().await;
            (a, b, rx)
        });
        tokio::task::yield_now().await;
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let (a, b, rx) = waiter.await.unwrap();
        assert_eq!((a, b), (1, 2));
        assert!(rx.try_recv().is_none());
    }

    /// An idle connection's session waits on two mailboxes: once drained,
    /// they hold no buffer (BENCHMARKS.md, idle connections).
    #[tokio::test]
    async fn a_drained_mailbox_keeps_no_buffer() {
        let (tx, rx) = mailbox();
        for i in 0..10 {
            tx.send(i).unwrap();
        }
        for i in 0..10 {
            assert_eq!(rx.recv().await, i);
        }
        assert!(
            rx.0.lock().capacity() > 0,
            "still holds the buffer before waiting"
        );
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert_eq!(rx.0.lock().capacity(), 0);
        tx.send(10).unwrap();
        assert_eq!(rx.try_recv(), Some(10));
    }

    #[test]
    fn a_closed_mailbox_gives_values_back() {
        let (tx, rx) = mailbox();
        tx.send("queued").unwrap();
        assert_eq!(rx.close().into_iter().collect::<Vec<_>>(), vec!["queued"]);
        assert_eq!(tx.send("late"), Err("late"));
        assert!(tx.is_closed());
        let (tx2, rx2) = mailbox::<u8>();
        drop(rx2);
        assert!(tx2.is_closed());
    }
}
