//! Random sequences of operations against the log and against a plain in-memory model.

mod common;

use common::{payload_for, read_all, small};
use proptest::prelude::*;
use wal::{Error, Wal};

#[derive(Clone, Debug)]
enum Op {
    Append { bump_epoch: bool, kind: u8, len: usize },
    Batch { n: usize },
    Sync,
    TruncateBack(usize),
    Purge(usize),
    Reset { gap: u64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), any::<u8>(), 0..400usize)
            .prop_map(|(b, kind, len)| Op::Append { bump_epoch: b && len % 5 == 0, kind, len }),
        2 => (1..20usize).prop_map(|n| Op::Batch { n }),
        2 => Just(Op::Sync),
        1 => (0..30usize).prop_map(Op::TruncateBack),
        1 => (0..100usize).prop_map(Op::Purge),
        1 => (0..50u64).prop_map(|gap| Op::Reset { gap }),
        1 => Just(Op::Reopen),
    ]
}

/// What the log should hold.
struct Model {
    first: u64,
    /// (lsn, epoch, kind, payload) of every record held, from `first`.
    records: Vec<(u64, u64, u8, Vec<u8>)>,
    /// Epoch of the last record (or of the record before `first`).
    epoch: u64,
    /// Epoch of record `first - 1`.
    prev_epoch: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.first + self.records.len() as u64 - 1
    }
}

fn check(log: &Wal, m: &Model) {
    assert_eq!(log.last(), (m.last(), m.epoch));
    assert_eq!(log.first_lsn(), m.first);
    let got: Vec<_> =
        read_all(log).into_iter().map(|r| (r.lsn, r.epoch, r.kind, r.payload)).collect();
    assert_eq!(got, m.records);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let opts = small(2048);
        let mut log = Wal::open(dir.path(), opts.clone()).unwrap();
        let mut m = Model { first: 1, records: Vec::new(), epoch: 0, prev_epoch: 0 };
        let mut salt = 0u64;
        for op in ops {
            match op {
                Op::Append { bump_epoch, kind, len } => {
                    if bump_epoch { m.epoch += 1; }
                    salt += 1;
                    let mut p = payload_for(salt, 400);
                    p.truncate(len);
                    let lsn = log.append(m.epoch, kind, &p).unwrap();
                    prop_assert_eq!(lsn, m.last() + 1);
                    m.records.push((lsn, m.epoch, kind, p));
                }
                Op::Batch { n } => {
                    let ps: Vec<Vec<u8>> = (0..n).map(|_| { salt += 1; payload_for(salt, 200) }).collect();
                    let (a, b) = log.append_batch(m.epoch, ps.iter().map(|p| (9u8, p.as_slice()))).unwrap();
                    prop_assert_eq!((a, b), (m.last() + 1, m.last() + n as u64));
                    for (i, p) in ps.into_iter().enumerate() {
                        m.records.push((a + i as u64, m.epoch, 9, p));
                    }
                }
                Op::Sync => {
                    let d = log.sync().unwrap();
                    prop_assert_eq!(d, m.last());
                    prop_assert_eq!(log.durable_lsn(), m.last());
                }
                Op::TruncateBack(k) => {
                    let k = k.min(m.records.len());
                    let to = m.last() - k as u64;
                    log.truncate_after(to).unwrap();
                    m.records.truncate(m.records.len() - k);
                    m.epoch = m.records.last().map_or(m.prev_epoch, |r| r.1);
                    prop_assert!(log.durable_lsn() <= to);
                }
                Op::Purge(pct) => {
                    let upto = m.first + (m.records.len() * pct / 100) as u64;
                    log.purge_before(upto).unwrap();
                    let first = log.first_lsn();
                    prop_assert!(first >= m.first && first <= upto.max(m.first), "first {} upto {}", first, upto);
                    if let Some(r) = m.records.drain(..(first - m.first) as usize).next_back() {
                        m.prev_epoch = r.1;
                    }
                    m.first = first;
                }
                Op::Reset { gap } => {
                    let to = m.last() + gap;
                    m.epoch += gap % 3;
                    log.reset(to, m.epoch).unwrap();
                    m.records.clear();
                    m.first = to + 1;
                    m.prev_epoch = m.epoch;
                }
                Op::Reopen => {
                    drop(log);
                    log = Wal::open(dir.path(), opts.clone()).unwrap();
                }
            }
            check(&log, &m);
        }
        // Appending with an older epoch is always refused.
        if m.epoch > 0 {
            prop_assert!(matches!(log.append(m.epoch - 1, 0, b"x"), Err(Error::EpochRegression { .. })), "older epoch accepted");
        }
    }
}
