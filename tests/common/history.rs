//! A history of client operations on the database and its check for linearizability, per
//! group of keys, with `stateright`'s linearizability tester (a checker we did not write).
//!
//! A group is a few adjacent keys of one shard (`History::grouped`; one key per group with
//! `History::new`), holding a row or nothing per key; the operations are the contract's:
//! a `/write` of one or more rows of the group (one shard's write is all or nothing),
//! update, delete, and a `/read` of a range inside the group (one shard's read is one
//! replica's state). Every operation touches one group, so checking each group on its own
//! is exact (linearizability is compositional). Every operation is recorded when invoked
//! and when it completes. An operation whose outcome is unknown (no answer, a 5xx, a
//! timeout) stays *in flight* forever: the checker may place it anywhere after its
//! invocation or leave it out, which is exactly "it may or may not have happened". Its client
//! continues under a new thread id, as a Jepsen process does after a crash.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// One group's rows: the name of each key's row; a key without a row is absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group(pub BTreeMap<i64, String>);

/// An operation on one group.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// One `/write` of these rows (key, name): refused whole when one of the keys exists.
    Insert(Vec<(i64, String)>),
    /// `/update` of a key to this name (404 when the key does not exist).
    Update(i64, String),
    /// `/del` of a key (404 when the key does not exist).
    Delete(i64),
    /// `/read` of the keys `low..=high`.
    Read(i64, i64),
}

impl Op {
    /// A key the operation touches (they are all in one group).
    pub fn key(&self) -> i64 {
        match self {
            Op::Insert(rows) => rows.first().map_or(0, |r| r.0),
            Op::Update(k, _) | Op::Delete(k) | Op::Read(k, _) => *k,
        }
    }

    /// Every key it touches, for the recorder's check that they share a group.
    fn keys(&self) -> Vec<i64> {
        match self {
            Op::Insert(rows) => rows.iter().map(|r| r.0).collect(),
            Op::Update(k, _) | Op::Delete(k) => vec![*k],
            Op::Read(low, high) => vec![*low, *high],
        }
    }
}

/// A definite outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Ret {
    /// The change was made.
    Done,
    /// Refused: a key exists (insert).
    Exists,
    /// Refused: no such key (update, delete).
    Missing,
    /// What a read returned: (key, name) in key order.
    Rows(Vec<(i64, String)>),
}

impl SequentialSpec for Group {
    type Op = Op;
    type Ret = Ret;

    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Insert(rows) if rows.iter().any(|(k, _)| self.0.contains_key(k)) => Ret::Exists,
            Op::Insert(rows) => {
                self.0.extend(rows.iter().cloned());
                Ret::Done
            }
            Op::Update(k, v) => match self.0.get_mut(k) {
                Some(old) => {
                    *old = v.clone();
                    Ret::Done
                }
                None => Ret::Missing,
            },
            Op::Delete(k) => match self.0.remove(k) {
                Some(_) => Ret::Done,
                None => Ret::Missing,
            },
            Op::Read(low, high) => {
                Ret::Rows(self.0.range(*low..=*high).map(|(k, v)| (*k, v.clone())).collect())
            }
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
    group: i64,
    op: Op,
    invoked_ms: f64,
    completed_ms: Option<f64>,
    outcome: Option<Outcome>,
}

struct Inner {
    testers: BTreeMap<i64, LinearizabilityTester<u64, Group>>,
    entries: Vec<Entry>,
    /// Invalid use of the recorder (a thread with two operations in flight on one group, an
    /// operation across groups).
    misuse: Option<String>,
}

/// What the checker found (groups by their number: a key divided by the group size).
#[derive(Debug, Default)]
pub struct Verdict {
    /// Groups whose history is not linearizable.
    pub wrong: Vec<i64>,
    /// Groups the checker did not decide within its budget.
    pub undecided: Vec<i64>,
}

/// The shared history of a test run.
pub struct History {
    start: Instant,
    /// Keys per group: key `k` is in group `k.div_euclid(group_size)`.
    group_size: i64,
    /// The rows before the first operation (a history that continues an earlier one).
    initial: BTreeMap<i64, String>,
    inner: Mutex<Inner>,
}

/// A handle on one invoked operation.
pub struct Pending {
    index: usize,
    thread: u64,
    group: i64,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// A history of single keys (each key its own group).
    pub fn new() -> History {
        History::grouped(1)
    }

    /// A history whose groups are the aligned blocks of `group_size` keys.
    pub fn grouped(group_size: i64) -> History {
        History::grouped_from(group_size, BTreeMap::new())
    }

    /// [`History::grouped`] starting from `initial` rows (key, name) instead of none.
    pub fn grouped_from(group_size: i64, initial: BTreeMap<i64, String>) -> History {
        History {
            start: Instant::now(),
            group_size: group_size.max(1),
            initial,
            inner: Mutex::new(Inner {
                testers: BTreeMap::new(),
                entries: Vec::new(),
                misuse: None,
            }),
        }
    }

    /// The group of `key`.
    pub fn group_of(&self, key: i64) -> i64 {
        key.div_euclid(self.group_size)
    }

    fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// Records that `thread` invokes `op`.
    pub fn invoke(&self, thread: u64, op: Op) -> Pending {
        let t = self.now_ms();
        let group = self.group_of(op.key());
        let mut g = self.inner.lock().unwrap();
        if op.keys().iter().any(|k| self.group_of(*k) != group) {
            g.misuse.get_or_insert(format!("{op:?} spans groups of {} keys", self.group_size));
        }
        let initial = || {
            let rows = self.initial.iter().filter(|(k, _)| self.group_of(**k) == group);
            Group(rows.map(|(k, v)| (*k, v.clone())).collect())
        };
        let tester =
            g.testers.entry(group).or_insert_with(|| LinearizabilityTester::new(initial()));
        if let Err(e) = tester.on_invoke(thread, op.clone()) {
            g.misuse.get_or_insert(e);
        }
        g.entries.push(Entry {
            thread,
            group,
            op,
            invoked_ms: t,
            completed_ms: None,
            outcome: None,
        });
        Pending { index: g.entries.len() - 1, thread, group }
    }

    /// Records how the operation ended; an unknown outcome stays in flight.
    pub fn complete(&self, p: Pending, outcome: Outcome) {
        let t = self.now_ms();
        let mut g = self.inner.lock().unwrap();
        if let Outcome::Ok(ret) = &outcome {
            if let Some(tester) = g.testers.get_mut(&p.group) {
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

    /// The groups whose history is not linearizable (empty when all are).
    pub fn non_linearizable_groups(&self) -> Result<Vec<i64>, String> {
        let verdict = self.check(std::time::Duration::MAX)?;
        Ok(verdict.wrong)
    }

    /// Checks every group's history, each on its own thread, for at most `budget`: the
    /// checker's search is exponential in the worst case (mostly when it must prove that no
    /// order works), so a group it has not decided by then is reported as such.
    pub fn check(&self, budget: std::time::Duration) -> Result<Verdict, String> {
        let testers: Vec<(i64, LinearizabilityTester<u64, Group>)> = {
            let g = self.inner.lock().unwrap();
            if let Some(m) = &g.misuse {
                return Err(format!("the recorder was misused: {m}"));
            }
            g.testers.iter().map(|(k, t)| (*k, t.clone())).collect()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        for (group, tester) in testers.iter().cloned() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send((group, tester.is_consistent()));
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
            let Some((group, ok)) = next else { break };
            decided.insert(group);
            if !ok {
                verdict.wrong.push(group);
            }
        }
        verdict.wrong.sort();
        verdict.undecided =
            testers.iter().map(|(k, _)| *k).filter(|k| !decided.contains(k)).collect();
        Ok(verdict)
    }

    /// The operations on `groups` (all when empty) as text, one per line, in invocation
    /// order.
    pub fn render(&self, groups: &[i64]) -> String {
        let g = self.inner.lock().unwrap();
        let mut out = String::new();
        for e in g.entries.iter().filter(|e| groups.is_empty() || groups.contains(&e.group)) {
            let done = e.completed_ms.map_or("...".to_string(), |t| format!("{t:.1}"));
            let _ = writeln!(
                out,
                "group {:>5}  thread {:>6}  [{:>9.1} .. {:>9}]  {:?} -> {:?}",
                e.group, e.thread, e.invoked_ms, done, e.op, e.outcome
            );
        }
        out
    }
}
