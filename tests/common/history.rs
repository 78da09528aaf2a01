//! A history of client operations on the database and its check for linearizability, per
//! key, with `stateright`'s linearizability tester (a checker we did not write).
//!
//! Each key is a register that holds a row or nothing; the operations are the contract's:
//! insert (`/write`), update, delete and a read of the key. Every operation is recorded
//! when invoked and when it completes. An operation whose outcome is unknown (no answer, a
//! 5xx, a timeout) stays *in flight* forever: the checker may place it anywhere after its
//! invocation or leave it out, which is exactly "it may or may not have happened". Its client
//! continues under a new thread id, as a Jepsen process does after a crash.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// One key's value: the row's name, or no row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cell(pub Option<String>);

/// An operation on one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `/write` of a row with this name (refused when the key exists).
    Insert(String),
    /// `/update` to this name (404 when the key does not exist).
    Update(String),
    /// `/del` (404 when the key does not exist).
    Delete,
    /// `/read` of the key alone.
    Read,
}

/// A definite outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Ret {
    /// The change was made.
    Done,
    /// Refused: the key exists (insert).
    Exists,
    /// Refused: no such key (update, delete).
    Missing,
    /// What a read returned.
    Value(Option<String>),
}

impl SequentialSpec for Cell {
    type Op = Op;
    type Ret = Ret;

    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Insert(v) if self.0.is_none() => {
                self.0 = Some(v.clone());
                Ret::Done
            }
            Op::Insert(_) => Ret::Exists,
            Op::Update(v) if self.0.is_some() => {
                self.0 = Some(v.clone());
                Ret::Done
            }
            Op::Delete if self.0.is_some() => {
                self.0 = None;
                Ret::Done
            }
            Op::Update(_) | Op::Delete => Ret::Missing,
            Op::Read => Ret::Value(self.0.clone()),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A definite answer.
    Ok(Ret),
    /// Unknown: it may or may not have taken effect.
    Unknown(String),
}

/// One recorded operation, for the report.
#[derive(Clone, Debug)]
struct Entry {
    thread: u64,
    key: i64,
    op: Op,
    invoked_ms: f64,
    completed_ms: Option<f64>,
    outcome: Option<Outcome>,
}

struct Inner {
    testers: BTreeMap<i64, LinearizabilityTester<u64, Cell>>,
    entries: Vec<Entry>,
    /// Invalid use of the recorder (a thread with two operations in flight on one key).
    misuse: Option<String>,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Keys whose history is not linearizable.
    pub wrong: Vec<i64>,
    /// Keys the checker did not decide within its budget.
    pub undecided: Vec<i64>,
}

/// The shared history of a test run.
pub struct History {
    start: Instant,
    inner: Mutex<Inner>,
}

/// A handle on one invoked operation.
pub struct Pending {
    index: usize,
    thread: u64,
    key: i64,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                testers: BTreeMap::new(),
                entries: Vec::new(),
                misuse: None,
            }),
        }
    }

    fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// Records that `thread` invokes `op` on `key`.
    pub fn invoke(&self, thread: u64, key: i64, op: Op) -> Pending {
        let t = self.now_ms();
        let mut g = self.inner.lock().unwrap();
        let tester = g.testers.entry(key).or_insert_with(|| LinearizabilityTester::new(Cell(None)));
        if let Err(e) = tester.on_invoke(thread, op.clone()) {
            g.misuse.get_or_insert(e);
        }
        g.entries.push(Entry { thread, key, op, invoked_ms: t, completed_ms: None, outcome: None });
        Pending { index: g.entries.len() - 1, thread, key }
    }

    /// Records how the operation ended; an unknown outcome stays in flight.
    pub fn complete(&self, p: Pending, outcome: Outcome) {
        let t = self.now_ms();
        let mut g = self.inner.lock().unwrap();
        if let Outcome::Ok(ret) = &outcome {
            if let Some(tester) = g.testers.get_mut(&p.key) {
                if let Err(e) = tester.on_return(p.thread, ret.clone()) {
                    g.misuse.get_or_insert(e);
                }
            }
        }
        let e = &mut g.entries[p.index];
        e.completed_ms = Some(t);
        e.outcome = Some(outcome);
    }

    /// Operations recorded, and how many ended with an unknown outcome.
    pub fn counts(&self) -> (usize, usize) {
        let g = self.inner.lock().unwrap();
        let unknown =
            g.entries.iter().filter(|e| matches!(e.outcome, Some(Outcome::Unknown(_)))).count();
        (g.entries.len(), unknown)
    }

    /// The keys whose history is not linearizable (empty when all are), checking each key's
    /// history on its own (linearizability is compositional).
    pub fn non_linearizable_keys(&self) -> Result<Vec<i64>, String> {
        let verdict = self.check(std::time::Duration::MAX)?;
        Ok(verdict.wrong)
    }

    /// Checks every key's history, each on its own thread, for at most `budget`: the
    /// checker's search is exponential in the worst case (mostly when it must prove that no
    /// order works), so a key it has not decided by then is reported as such.
    pub fn check(&self, budget: std::time::Duration) -> Result<Verdict, String> {
        let testers: Vec<(i64, LinearizabilityTester<u64, Cell>)> = {
            let g = self.inner.lock().unwrap();
            if let Some(m) = &g.misuse {
                return Err(format!("the recorder was misused: {m}"));
            }
            g.testers.iter().map(|(k, t)| (*k, t.clone())).collect()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        for (key, tester) in testers.iter().cloned() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send((key, tester.is_consistent()));
            });
        }
        drop(tx);
        let deadline = Instant::now().checked_add(budget);
        let mut verdict = Verdict::default();
        let mut decided = std::collections::BTreeSet::new();
        loop {
            let next = match deadline {
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())).ok(),
                None => rx.recv().ok(),
            };
            let Some((key, ok)) = next else { break };
            decided.insert(key);
            if !ok {
                verdict.wrong.push(key);
            }
        }
        verdict.wrong.sort();
        verdict.undecided =
            testers.iter().map(|(k, _)| *k).filter(|k| !decided.contains(k)).collect();
        Ok(verdict)
    }

    /// The operations on `keys` (all when empty) as text, one per line, in invocation order.
    pub fn render(&self, keys: &[i64]) -> String {
        let g = self.inner.lock().unwrap();
        let mut out = String::new();
        for e in g.entries.iter().filter(|e| keys.is_empty() || keys.contains(&e.key)) {
            let done = e.completed_ms.map_or("...".to_string(), |t| format!("{t:.1}"));
            let _ = writeln!(
                out,
                "key {:>5}  thread {:>6}  [{:>9.1} .. {:>9}]  {:?} -> {:?}",
                e.key, e.thread, e.invoked_ms, done, e.op, e.outcome
            );
        }
        out
    }
}
