//! The connections being served: each one's idle limit, and the graceful stop of them all.
//!
//! hyper's own tools for both cost something on every request: its header-read timeout
//! starts a tokio timer each time a connection waits for a request head and cancels it when
//! the head has come (a boxed `Sleep`, a clock read, a timer-wheel insertion and removal),
//! and hyper-util's `GracefulShutdown` makes every poll of every connection lock the one
//! mutex of its watch channel. Together ≈ 3 % of the server's CPU per GET in the benchmark's
//! profile. Here a connection is looked at by its own timer every [`WATCH_INTERVAL`]
//! instead, and learns of the stop from a flag it reads and a waker it registered once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// How often a connection's timer looks at it. A connection with no request in flight that
/// has started none for two looks in a row is closed, so an idle connection, or one whose
/// client never finishes a request head, goes after 2 to 3 intervals.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Looks in a row without a request before a connection is closed.
const QUIET_LOOKS: u8 = 2;

/// Requests started and finished on one connection, counted by its service.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Activity {
    /// Counts a request as started; the request counts as finished when the guard answered
    /// is dropped (its response is ready, or it was abandoned).
    pub fn start(self: &Arc<Self>) -> Finished {
        self.started.fetch_add(1, Ordering::Relaxed);
        Finished(Arc::clone(self))
    }

    /// Requests started so far, and whether one is still in flight.
    fn look(&self) -> (u64, bool) {
        let finished = self.finished.load(Ordering::Relaxed);
        let started = self.started.load(Ordering::Relaxed);
        (started, started != finished)
    }
}

/// Marks its request finished when dropped.
#[derive(Debug)]
pub struct Finished(Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every connection of one server, for its graceful stop.
#[derive(Debug)]
pub struct Connections {
    shared: Arc<Shared>,
    /// Each connection holds a clone; the receiver learns when the last one has ended.
    alive: Option<mpsc::Sender<()>>,
    ended: mpsc::Receiver<()>,
}

#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// The waker of every connection polled at least once, by its id.
    wakers: Mutex<HashMap<u64, Waker>>,
}

impl Default for Connections {
    fn default() -> Self {
        let (alive, ended) = mpsc::channel(1);
        Self {
            shared: Arc::default(),
            alive: Some(alive),
            ended,
        }
    }
}

impl Connections {
    /// Wraps a connection: it ends when its client closes it, when it has been idle past its
    /// limit, or, after [`Connections::stop`], once it has finished the request in flight.
    pub fn watch<C>(&self, conn: C, activity: Arc<Activity>) -> Watched<C> {
        Watched {
            conn: Box::pin(conn),
            activity,
            shared: Arc::clone(&self.shared),
            _alive: self.alive.clone(),
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            timer: Box::pin(tokio::time::sleep(WATCH_INTERVAL)),
            seen: 0,
            quiet: 0,
            polled: false,
            asked_to_stop: false,
        }
    }

    /// Asks every connection to finish the request in flight and close, then waits until
    /// they all have.
    pub async fn stop(mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self
            .shared
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, waker)| waker)
            .collect();
        wakers.into_iter().for_each(Waker::wake);
        self.alive = None;
        // Every sender gone: `None`.
        let _ = self.ended.recv().await;
    }
}

/// A connection under watch (see [`Connections::watch`]).
pub struct Watched<C> {
    conn: Pin<Box<C>>,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    _alive: Option<mpsc::Sender<()>>,
    id: u64,
    timer: Pin<Box<Sleep>>,
    /// Requests started at the last look.
    seen: u64,
    /// Looks in a row that found nothing started and nothing in flight.
    quiet: u8,
    /// Whether it has been polled: its waker is registered for the stop, and the timer holds
    /// it too.
    polled: bool,
    asked_to_stop: bool,
}

impl<C> Watched<C> {
    /// One look: whether the connection has been quiet long enough to be closed.
    fn idle_too_long(&mut self) -> bool {
        let (started, in_flight) = self.activity.look();
        if in_flight || started != self.seen {
            self.seen = started;
            self.quiet = 0;
            return false;
        }
        self.quiet += 1;
        self.quiet >= QUIET_LOOKS
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let first = !this.polled;
        if first {
            // Registered before the flag is read: a stop either sees this waker or is seen.
            this.shared
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(this.id, cx.waker().clone());
            this.polled = true;
        }
        if !this.asked_to_stop && this.shared.stopping.load(Ordering::Acquire) {
            this.asked_to_stop = true;
            this.conn.as_mut().graceful_shutdown();
        }
        if this.conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // Once polled, the timer holds this task's waker (a task's waker does not change), so
        // until it fires only its state is read; it is polled again to be re-armed.
        if !first && !this.timer.is_elapsed() {
            return Poll::Pending;
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            if this.idle_too_long() {
                // Dropping the connection closes its socket.
                return Poll::Ready(());
            }
            this.timer.as_mut().reset(Instant::now() + WATCH_INTERVAL);
        }
        Poll::Pending
    }
}

impl<C> Drop for Watched<C> {
    fn drop(&mut self) {
        if self.polled {
            self.shared
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_idle_only_after_two_quiet_looks_with_nothing_in_flight() {
        let activity = Arc::new(Activity::default());
        let connections = Connections::default();
        let mut watched = connections.watch((), Arc::clone(&activity));

        // A request in flight keeps it however long it takes.
        let request = activity.start();
        assert!(!watched.idle_too_long());
        assert!(!watched.idle_too_long());
        assert!(!watched.idle_too_long());
        drop(request);
        // Finished since the last look: the next look is the first quiet one.
        assert!(!watched.idle_too_long());
        assert!(watched.idle_too_long());

        // A request started between two looks starts the count again.
        watched.quiet = 0;
        assert!(!watched.idle_too_long());
        drop(activity.start());
        assert!(!watched.idle_too_long());
        assert!(!watched.idle_too_long());
        assert!(watched.idle_too_long());
    }
}
