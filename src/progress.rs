//! A progress indicator on stderr for the long commands (`bench db`, `analyze ...`).
//!
//! On a terminal one status line is redrawn a few times a second (`[  12.3s] A-1 write
//! 3456/10000`); otherwise (CI logs, pipes) each stage prints one line when it starts, so logs
//! stay short. Stdout is left alone: the results go there.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the terminal line is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// A handle on the indicator; clones share it (tasks call [`Progress::inc`]).
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: Mutex<String>,
    done: AtomicU64,
    /// 0 when the stage has no known size.
    total: AtomicU64,
    started: Instant,
    tty: bool,
    stopped: AtomicBool,
}

impl Progress {
    /// Starts the indicator (the redraw task only when stderr is a terminal).
    pub fn start() -> Progress {
        let inner = Arc::new(Inner {
            label: Mutex::new(String::new()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            stopped: AtomicBool::new(false),
        });
        if inner.tty {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                // Ends once every handle is gone or `finish` was called.
                while let Some(inner) = weak.upgrade() {
                    if inner.stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    inner.draw();
                    drop(inner);
                    tokio::time::sleep(REDRAW_EVERY).await;
                }
            });
        }
        Progress { inner }
    }

    /// A new stage of `total` steps (0: unknown).
    pub fn stage(&self, label: impl Into<String>, total: u64) {
        let label = label.into();
        self.inner.done.store(0, Ordering::Relaxed);
        self.inner.total.store(total, Ordering::Relaxed);
        if !self.inner.tty {
            let size = if total > 0 { format!(" ({total})") } else { String::new() };
            eprintln!("[{:>7.1}s] {label}{size}", self.inner.started.elapsed().as_secs_f64());
        }
        *self.inner.label.lock().unwrap_or_else(|e| e.into_inner()) = label;
    }

    /// `n` more steps of the current stage done.
    pub fn inc(&self, n: u64) {
        self.inner.done.fetch_add(n, Ordering::Relaxed);
    }

    /// A line of its own (kept above the status line on a terminal).
    pub fn note(&self, text: &str) {
        if self.inner.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("[{:>7.1}s] {text}", self.inner.started.elapsed().as_secs_f64());
    }

    /// Stops the redraws and clears the status line.
    pub fn finish(&self) {
        self.inner.stopped.store(true, Ordering::Relaxed);
        if self.inner.tty {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

impl Drop for Inner {
    /// The last handle is gone (also on an interrupted run): leave no half-drawn line.
    fn drop(&mut self) {
        if self.tty && !self.stopped.load(Ordering::Relaxed) {
            eprint!("\r\x1b[2K");
        }
    }
}

impl Inner {
    fn draw(&self) {
        let label = self.label.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let count = match total {
            0 if done == 0 => String::new(),
            0 => format!(" {done}"),
            t => format!(" {done}/{t}"),
        };
        eprint!("\r\x1b[2K[{:>7.1}s] {label}{count}", self.started.elapsed().as_secs_f64());
        let _ = std::io::stderr().flush();
    }
}
