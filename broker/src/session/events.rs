//! What the session task waits for between two turns of its loop.
//!
//! One hand-written poll looks at every source in turn (the socket both
//! ways, the mailboxes, finished publishes, the timer) instead of a
//! `select!` over futures: a select keeps each branch's future in the task
//! between turns (some 330 bytes for nine branches), and the task of every
//! idle connection would carry them. Each source here is polled through a
//! future made for that one poll and dropped, which is sound because none of
//! them holds state between polls: the state (timers, buffers, queues) lives
//! in the session. The start rotates each turn, as `select!` randomises it,
//! so a flood on one source does not starve the others.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{Conn, PublishDone, Replay, Session, SessionCmd};

/// One turn of the loop: what happened.
#[allow(clippy::large_enum_variant)] // lives on the stack for one turn; boxing would allocate per message
pub(super) enum Event {
    Cmd(SessionCmd),
    Replay(Replay),
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    /// The writer's own buffer was flushed.
    Flushed(std::io::Result<()>),
    Published(PublishDone),
    /// `bytes_in` has refilled: reading the connection resumes.
    ReadResume,
    Expired,
    WillDue,
    Shutdown,
}

/// The session's timer for its expiry and a delayed will, which run only
/// while no connection is attached. It is made when there is one of these
/// and dropped when there is none: a connected session keeps none (its
/// keep-alive is checked by `crate::keepalive`'s one task).
#[derive(Default)]
pub(super) struct Deadline(Option<Pin<Box<Sleep>>>);

impl Deadline {
    /// Points the timer at `at` (or drops it).
    pub(super) fn arm(&mut self, at: Option<Instant>) {
        match (at, self.0.as_mut()) {
            (None, _) => self.0 = None,
            (Some(at), Some(timer)) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            (Some(at), None) => self.0 = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.as_mut() {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Sources polled while connected, in the order of the first turn.
const CONNECTED_SOURCES: u8 = 6;

impl Session {
    /// The next event. Not an `async fn`: the future it returns is part of
    /// every session task while it waits, so it holds only what the poll
    /// needs (the session and where to start), not the locals of the setup.
    pub(super) fn next_event(&mut self) -> impl Future<Output = Event> + Send + '_ {
        // One atomic load a turn, where a shutdown signal polled with the
        // rest entered and left a shared waiter list every turn.
        let shutting_down = self.shared.is_shutting_down();
        if self.conn.is_none() {
            // Connected, there is no timer (`keepalive.rs` checks the
            // connection).
            let will_at = self.delayed_will.as_ref().map(|w| w.1);
            let due = match (will_at, self.expires_at) {
                (Some(w), Some(e)) => Some(w.min(e)),
                (w, e) => w.or(e),
            };
            self.deadline.arm(due);
        }
        let start = self.turn;
        self.turn = (self.turn + 1) % CONNECTED_SOURCES;
        std::future::poll_fn(move |cx| {
            if shutting_down {
                return Poll::Ready(Event::Shutdown);
            }
            self.poll_event(cx, start)
        })
    }

    /// Looks at every source once; the first with something to say wins.
    fn poll_event(&mut self, cx: &mut Context<'_>, start: u8) -> Poll<Event> {
        let Some(c) = self.conn.as_mut() else {
            // Without a connection, in a fixed order: finished publishes
            // first, then replays before commands (as they were queued for
            // a reason: a page answers a subscription made before).
            if let Poll::Ready(Some(done)) = self.pending.poll_next(cx) {
                return Poll::Ready(Event::Published(done));
            }
            if let Poll::Ready(r) = self.inbox.poll_recv(cx) {
                return Poll::Ready(Event::Replay(r));
            }
            if let Poll::Ready(cmd) = self.inbox.poll_recv(cx) {
                return Poll::Ready(Event::Cmd(cmd));
            }
            if self.deadline.poll(cx).is_ready() {
                let will_at = self.delayed_will.as_ref().map(|w| w.1);
                return Poll::Ready(deadline_event(will_at));
            }
            return Poll::Pending;
        };
        let throttled = c.bytes_in.as_ref().is_some_and(|t| t.paused());
        let read_allowed = self.pending.len() < c.read_limit as usize && !throttled;
        for i in 0..CONNECTED_SOURCES {
            let ready = match (start + i) % CONNECTED_SOURCES {
                0 if !c.outbuf.is_empty() => {
                    let mut write = pin!(c.stream.write_buf(&mut c.outbuf));
                    write.as_mut().poll(cx).map(Event::Wrote)
                }
                0 if c.unflushed => {
                    let mut flush = pin!(c.stream.flush());
                    flush.as_mut().poll(cx).map(Event::Flushed)
                }
                1 => match self.pending.poll_next(cx) {
                    Poll::Ready(Some(done)) => Poll::Ready(Event::Published(done)),
                    _ => Poll::Pending,
                },
                2 => self.inbox.poll_recv(cx).map(Event::Replay),
                3 => self.inbox.poll_recv(cx).map(Event::Cmd),
                4 if read_allowed && c.inbuf.capacity() == 0 => poll_read_unbuffered(c, cx),
                4 if read_allowed => {
                    let mut read = pin!(c.stream.read_buf(&mut c.inbuf));
                    read.as_mut().poll(cx).map(Event::Read)
                }
                5 => match c.bytes_in.as_mut().filter(|_| throttled) {
                    Some(t) => t.poll_wait(cx).map(|()| Event::ReadResume),
                    None => Poll::Pending,
                },
                _ => Poll::Pending,
            };
            if ready.is_ready() {
                return ready;
            }
        }
        Poll::Pending
    }
}

/// Reads a connection that has no input buffer (an idle one: reading
/// into an empty `BytesMut` would allocate one just to wait) through a
/// buffer on the stack; what arrives is copied into a new input buffer.
fn poll_read_unbuffered(c: &mut Conn, cx: &mut Context<'_>) -> Poll<Event> {
    let mut probe = [0u8; 1024];
    let mut buf = ReadBuf::new(&mut probe);
    match Pin::new(&mut c.stream).poll_read(cx, &mut buf) {
        Poll::Ready(Ok(())) => {
            c.inbuf.extend_from_slice(buf.filled());
            Poll::Ready(Event::Read(Ok(buf.filled().len())))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Event::Read(Err(e))),
        Poll::Pending => Poll::Pending,
    }
}

/// Which deadline the session's timer fired for: a delayed will that is
/// due goes first (the expiry publishes it too, as the session ends).
fn deadline_event(will_at: Option<Instant>) -> Event {
    match will_at {
        Some(at) if at <= Instant::now() => Event::WillDue,
        _ => Event::Expired,
    }
}
