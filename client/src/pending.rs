//! The table of calls waiting for their answer, keyed by request id.
//!
//! Callers register before their frame is queued; the reader removes an entry when its answer
//! arrives. Closing the table and registering happen under one lock, so every call either
//! registered before the close (and is failed by it) or sees the table closed and fails at
//! once: no call can wait on a connection nobody reads any more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use protocol::{ErrorBody, Response, ResponseFrame};
use tokio::sync::oneshot;

/// What the server answered to one request.
pub(crate) type Answer = std::result::Result<Response, ErrorBody>;

/// What became of an answer handed to [`Pending::complete`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// A waiting call got it.
    Delivered,
    /// Its call is no longer waiting (timed out or cancelled): a late answer.
    Late,
    /// No request with that id was ever sent on this connection: a confused peer.
    Unknown,
}

pub(crate) struct Pending {
    state: Mutex<State>,
    /// Mirrors `State::closed` so the fast paths need no lock.
    closed: AtomicBool,
    next_id: AtomicU64,
}

struct State {
    closed: bool,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
}

impl Pending {
    pub(crate) fn new() -> Pending {
        Pending {
            state: Mutex::new(State { closed: false, waiting: HashMap::new() }),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        }
    }

    /// A request id not used before on this connection.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts waiting for the answer to `id`; `None` if the connection is closed.
    pub(crate) fn register(&self, id: u64) -> Option<oneshot::Receiver<Answer>> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        state.waiting.insert(id, tx);
        Some(rx)
    }

    /// Hands `frame` to the call waiting for it.
    pub(crate) fn complete(&self, frame: ResponseFrame) -> Delivery {
        let waiter = self.lock().waiting.remove(&frame.id);
        match waiter {
            // A failed send means the caller gave up between our removal and now, which is
            // the same as having given up before.
            Some(tx) => match tx.send(frame.body) {
                Ok(()) => Delivery::Delivered,
                Err(_) => Delivery::Late,
            },
            None if frame.id != 0 && frame.id < self.next_id.load(Ordering::Relaxed) => {
                Delivery::Late
            }
            None => Delivery::Unknown,
        }
    }

    /// Stops waiting for `id` (timeout or a cancelled call), so the table does not grow with
    /// calls that will never read their answer.
    pub(crate) fn forget(&self, id: u64) {
        self.lock().waiting.remove(&id);
    }

    /// Fails every waiting call with "disconnected" (their senders are dropped) and refuses
    /// new ones.
    pub(crate) fn close(&self) {
        let waiting = {
            let mut state = self.lock();
            state.closed = true;
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut state.waiting)
        };
        // Dropped outside the lock: waking hundreds of callers need not hold it.
        drop(waiting);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// How many calls are waiting for an answer.
    pub(crate) fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, and the table stays consistent even if
        // something did, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(id: u64) -> ResponseFrame {
        ResponseFrame::ok(id, Response::Home { name: format!("answer {id}") })
    }

    #[test]
    fn answers_reach_their_own_caller_in_any_order() {
        let pending = Pending::new();
        let (a, b) = (pending.next_id(), pending.next_id());
        assert_ne!(a, b);
        let (mut rx_a, mut rx_b) = (pending.register(a).unwrap(), pending.register(b).unwrap());
        assert_eq!(pending.complete(home(b)), Delivery::Delivered);
        assert_eq!(pending.complete(home(a)), Delivery::Delivered);
        assert_eq!(rx_a.try_recv().unwrap(), Ok(Response::Home { name: format!("answer {a}") }));
        assert_eq!(rx_b.try_recv().unwrap(), Ok(Response::Home { name: format!("answer {b}") }));
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn late_and_unknown_answers_are_told_apart() {
        let pending = Pending::new();
        let id = pending.next_id();
        let _rx = pending.register(id).unwrap();
        pending.forget(id);
        assert_eq!(pending.complete(home(id)), Delivery::Late);
        assert_eq!(pending.complete(home(id + 100)), Delivery::Unknown);
        assert_eq!(pending.complete(home(0)), Delivery::Unknown);
    }

    #[test]
    fn a_dropped_receiver_makes_the_answer_late() {
        let pending = Pending::new();
        let id = pending.next_id();
        drop(pending.register(id).unwrap());
        assert_eq!(pending.complete(home(id)), Delivery::Late);
    }

    #[test]
    fn close_fails_waiting_calls_and_refuses_new_ones() {
        let pending = Pending::new();
        let id = pending.next_id();
        let mut rx = pending.register(id).unwrap();
        assert!(!pending.is_closed());
        pending.close();
        assert!(pending.is_closed());
        assert!(matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
        assert!(pending.register(pending.next_id()).is_none());
        assert_eq!(pending.len(), 0);
    }
}
