//! A history of client operations on the database and its check for linearizability, per
//! group of keys. The check is the memoized search of Lowe's "Testing for linearizability"
//! (as porcupine implements it): operations are linearized in real-time order with
//! backtracking, and a (set of linearized operations, state) already explored is never
//! explored again, which keeps long histories with many unknown outcomes tractable.
//! `stateright`'s linearizability tester (a checker we did not write, exhaustive without
//! memoization) checks the same histories in `cross_check`, which the checker's own test
//! uses to compare the two verdicts.
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
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

/// One recorded operation.
#[derive(Clone, Debug)]
struct Entry {
    thread: u64,
    group: i64,
    op: Op,
    invoked_ms: f64,
    completed_ms: Option<f64>,
    outcome: Option<Outcome>,
    /// Real-time order of the invocation and the completion among all events recorded.
    called: u64,
    returned: Option<u64>,
}

struct Inner {
    testers: BTreeMap<i64, LinearizabilityTester<u64, Group>>,
    entries: Vec<Entry>,
    /// Events recorded so far (invocations and completions).
    events: u64,
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
                events: 0,
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
        g.events += 1;
        let called = g.events;
        g.entries.push(Entry {
            thread,
            group,
            op,
            invoked_ms: t,
            completed_ms: None,
            outcome: None,
            called,
            returned: None,
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
        g.events += 1;
        let returned = g.events;
        let e = &mut g.entries[p.index];
        e.completed_ms = Some(t);
        // An unknown outcome never returns: the operation may take effect at any time after
        // its invocation, or never.
        if matches!(outcome, Outcome::Ok(_)) {
            e.returned = Some(returned);
        }
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
    /// search is exponential in the worst case (mostly when it must prove that no order
    /// works), so a group it has not decided by then is reported as such.
    pub fn check(&self, budget: std::time::Duration) -> Result<Verdict, String> {
        let (initial, groups) = self.by_group()?;
        let jobs: Vec<(i64, Box<dyn FnOnce() -> bool + Send>)> = groups
            .into_iter()
            .map(|(group, ops)| {
                let start = self.initial_of(&initial, group);
                let job: Box<dyn FnOnce() -> bool + Send> = Box::new(move || search(start, &ops));
                (group, job)
            })
            .collect();
        Ok(decide_all(jobs, budget))
    }

    /// The same verdict from `stateright`'s tester (slow on long histories).
    pub fn cross_check(&self, budget: std::time::Duration) -> Result<Verdict, String> {
        let testers: Vec<(i64, LinearizabilityTester<u64, Group>)> = {
            let g = self.inner.lock().unwrap();
            if let Some(m) = &g.misuse {
                return Err(format!("the recorder was misused: {m}"));
            }
            g.testers.iter().map(|(k, t)| (*k, t.clone())).collect()
        };
        let jobs: Vec<(i64, Box<dyn FnOnce() -> bool + Send>)> = testers
            .into_iter()
            .map(|(group, tester)| {
                let job: Box<dyn FnOnce() -> bool + Send> =
                    Box::new(move || tester.is_consistent());
                (group, job)
            })
            .collect();
        Ok(decide_all(jobs, budget))
    }

    /// The initial rows and every group's operations (op, definite return, call and return
    /// order).
    #[allow(clippy::type_complexity)]
    fn by_group(&self) -> Result<(BTreeMap<i64, String>, BTreeMap<i64, Vec<Recorded>>), String> {
        let g = self.inner.lock().unwrap();
        if let Some(m) = &g.misuse {
            return Err(format!("the recorder was misused: {m}"));
        }
        let mut groups: BTreeMap<i64, Vec<Recorded>> = BTreeMap::new();
        for e in &g.entries {
            let ret = match &e.outcome {
                Some(Outcome::Ok(r)) => Some(r.clone()),
                _ => None,
            };
            groups.entry(e.group).or_default().push(Recorded {
                op: e.op.clone(),
                ret,
                called: e.called,
                returned: e.returned,
            });
        }
        Ok((self.initial.clone(), groups))
    }

    fn initial_of(&self, initial: &BTreeMap<i64, String>, group: i64) -> Group {
        let rows = initial.iter().filter(|(k, _)| self.group_of(**k) == group);
        Group(rows.map(|(k, v)| (*k, v.clone())).collect())
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

/// One operation as the search sees it.
#[derive(Clone, Debug)]
struct Recorded {
    op: Op,
    /// `None`: unknown outcome (any return fits, and it may never have happened).
    ret: Option<Ret>,
    called: u64,
    /// `None`: never returned.
    returned: Option<u64>,
}

/// Runs each group's check on its own thread, for at most `budget` in all.
fn decide_all(
    jobs: Vec<(i64, Box<dyn FnOnce() -> bool + Send>)>,
    budget: std::time::Duration,
) -> Verdict {
    let groups: Vec<i64> = jobs.iter().map(|(g, _)| *g).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    for (group, job) in jobs {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((group, job()));
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
    verdict.undecided = groups.into_iter().filter(|g| !decided.contains(g)).collect();
    verdict
}

/// Whether `ops`, starting from `initial`, have a linearization. The events (calls, and
/// returns; an operation that never returned returns after everything) form a doubly
/// linked list in real-time order. Walking it, a call may be linearized now if the model
/// gives its recorded return; it then leaves the list with its return, and the walk starts
/// again from the head. Reaching a return means its call must have been linearized before:
/// undo the last choice and try the next call instead. A (linearized set, state) pair met
/// before failed then, and is skipped (the memoization that makes this fast).
fn search(initial: Group, ops: &[Recorded]) -> bool {
    use std::collections::HashSet;
    let n = ops.len();
    // Events: (order, op index, is call). Never-returned operations return after all.
    let mut events: Vec<(u64, usize, bool)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.called, i, true));
        events.push((o.returned.unwrap_or(u64::MAX), i, false));
    }
    events.sort_by_key(|e| (e.0, !e.2));
    // Nodes 1..=2n are events; 0 is the head sentinel, 2n + 1 the tail.
    let len = events.len();
    let (head, tail) = (0, len + 1);
    let mut next: Vec<usize> = (1..=len + 1).chain([tail]).collect();
    let mut prev: Vec<usize> = [0].into_iter().chain(0..=len).collect();
    let mut return_of = vec![0usize; n];
    for (pos, e) in events.iter().enumerate() {
        if !e.2 {
            return_of[e.1] = pos + 1;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, x) = (prev[node], next[node]);
        next[p] = x;
        prev[x] = p;
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, x) = (prev[node], next[node]);
        next[p] = node;
        prev[x] = node;
    };
    let mut state = initial;
    let mut done = vec![0u64; n.div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, Group)> = HashSet::new();
    let mut stack: Vec<(usize, Group)> = Vec::new();
    let mut at = next[head];
    while next[head] != tail {
        // A return (or, defensively, the end) reached: its call had to come first. Undo the
        // last choice and try the call after it instead.
        if at == tail || !events[at - 1].2 {
            let Some((call, old)) = stack.pop() else { return false };
            let i = events[call - 1].1;
            done[i / 64] &= !(1 << (i % 64));
            state = old;
            unlift(&mut next, &mut prev, return_of[i]);
            unlift(&mut next, &mut prev, call);
            at = next[call];
            continue;
        }
        let i = events[at - 1].1;
        let mut after = state.clone();
        let got = after.invoke(&ops[i].op);
        if ops[i].ret.as_ref().is_none_or(|r| *r == got) {
            done[i / 64] |= 1 << (i % 64);
            if seen.insert((done.clone(), after.clone())) {
                stack.push((at, std::mem::replace(&mut state, after)));
                lift(&mut next, &mut prev, at);
                lift(&mut next, &mut prev, return_of[i]);
                at = next[head];
                continue;
            }
            done[i / 64] &= !(1 << (i % 64));
        }
        at = next[at];
    }
    true
}
