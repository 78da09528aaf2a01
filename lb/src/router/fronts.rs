//! The router's HTTP connections run on "front" threads, one single-threaded runtime each
//! (thread per core, as nginx workers or Envoy's worker threads do), not on the process's
//! shared work-stealing runtime.
//!
//! Why: a forwarded request is a chain of wake-ups (the client's connection task, the
//! writer of the pipelined connection to the replica, its reader, back to the client's
//! task). On a work-stealing runtime these tasks sit on different worker threads, so every
//! link can be a cross-thread wake (a futex and a context switch). On a front, a client
//! connection and the front's own connections to the replicas share one thread: the chain
//! runs without leaving it, and requests of many clients still share one write to a replica.
//!
//! Connections are handed to the fronts in turn by the one accept loop, so the fronts carry
//! about the same number each. Everything else of the process (the manager, the membership
//! and catalog watches, the binary door) stays on the shared runtime.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// One front thread: its runtime's handle, and its own pipelined connections to the nodes.
struct Front {
    handle: Handle,
    /// Forwards made by this front's connections go through these connections, whose reader
    /// and writer tasks run on this front too.
    nodes: client::Pool,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The front threads of one HTTP door, stopped (and joined) when dropped.
pub(crate) struct Fronts {
    fronts: Vec<Front>,
    next: usize,
}

impl Fronts {
    /// Starts `n` front threads (at least one); `pool` makes each front's pool of node
    /// connections.
    pub fn start(n: usize, pool: impl Fn() -> client::Pool) -> std::io::Result<Fronts> {
        let mut fronts = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread =
                std::thread::Builder::new().name(format!("router-front-{i}")).spawn(move || {
                    // Runs the front's tasks until told to stop (or the door is dropped);
                    // dropping the runtime then drops whatever is left on it.
                    let _ = runtime.block_on(stopped);
                })?;
            fronts.push(Front { handle, nodes: pool(), stop: Some(stop), thread: Some(thread) });
        }
        Ok(Fronts { fronts, next: 0 })
    }

    /// Runs `task` on the next front in turn, giving it that front's node connections.
    pub fn spawn<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(client::Pool) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let front = &self.fronts[self.next % self.fronts.len()];
        self.next = self.next.wrapping_add(1);
        // Sockets the task registers when it first runs belong to the front's reactor.
        front.handle.spawn(task(front.nodes.clone()));
    }

    /// How many front threads run.
    pub fn len(&self) -> usize {
        self.fronts.len()
    }
}

impl Drop for Fronts {
    fn drop(&mut self) {
        for f in &mut self.fronts {
            if let Some(stop) = f.stop.take() {
                let _ = stop.send(());
            }
        }
        for f in &mut self.fronts {
            if let Some(t) = f.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use super::*;

    #[test]
    fn connections_go_to_the_fronts_in_turn_and_drop_stops_them() {
        let mut fronts = Fronts::start(2, || client::Pool::new("test")).unwrap();
        assert_eq!(fronts.len(), 2);
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            fronts.spawn(move |_nodes| async move {
                let _ = tx.send(std::thread::current().name().map(str::to_string));
            });
        }
        let mut names: Vec<Option<String>> =
            (0..4).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        names.sort();
        let expected = ["router-front-0", "router-front-0", "router-front-1", "router-front-1"];
        assert_eq!(names, expected.map(|n| Some(n.to_string())));

        // A task that never ends is dropped with its front, which drop joins.
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        fronts.spawn(move |_nodes| async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        drop(fronts);
        assert!(dropped.load(Ordering::SeqCst), "the pending task outlived its front");
    }

    #[test]
    fn at_least_one_front_runs() {
        assert_eq!(Fronts::start(0, || client::Pool::new("test")).unwrap().len(), 1);
    }
}
