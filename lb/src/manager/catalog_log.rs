//! The shard manager's own log: every catalog change and every change of the process
//! membership, durable before anyone is told, replayed at start.
//!
//! Format: a `wal::Wal` in `<data-dir>/manager/catalog-wal` (synced on every append), one
//! record per entry, record epoch always 0:
//! `{ kind:u8 = 1 | payload: CatalogEvent }` or `{ kind:u8 = 2 | payload: MemberEvent }`,
//! payloads encoded by `protocol::wire` (bincode; enums by variant index, so variants are
//! only ever appended). The log is never cut: it grows by one small record per election or
//! admin operation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogEvent};

/// Record kind of a [`CatalogEvent`].
const KIND_CATALOG: u8 = 1;
/// Record kind of a [`MemberEvent`].
const KIND_MEMBER: u8 = 2;
/// Segment size of the manager's log: its records are small and few.
const SEGMENT_BYTES: usize = 1 << 20;

/// The directory of the manager's log under a data directory.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("manager").join("catalog-wal")
}

/// A change of the process membership (which node processes the manager runs).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum MemberEvent {
    /// Replicas started, with their ring ids.
    Added {
        /// `(name, id)` of each.
        members: Vec<(String, u64)>,
    },
    /// Replicas removed for good.
    Removed {
        /// Their names.
        names: Vec<String>,
    },
}

/// What the log held at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The catalog rebuilt from every [`CatalogEvent`].
    pub catalog: Catalog,
    /// The membership as `(name, id)` in order of addition; `None` when the log never
    /// recorded one (a new data directory).
    pub members: Option<Vec<(String, u64)>>,
    /// Records read.
    pub records: u64,
}

/// The manager's log (see the module doc).
pub struct CatalogLog {
    wal: wal::Wal,
}

impl CatalogLog {
    /// Opens (creating) the log in `dir` and replays it. Fails on a damaged record anywhere
    /// but the torn tail a crash leaves (which is cut).
    pub fn open(dir: &Path) -> Result<(CatalogLog, Recovered), String> {
        let opts = wal::Options {
            segment_size: SEGMENT_BYTES,
            prepare_spare_segments: false,
            ..wal::Options::default()
        };
        let wal = wal::Wal::open(dir, opts)
            .map_err(|e| format!("cannot open the manager's log in {}; {e}", dir.display()))?;
        let mut rec = Recovered::default();
        let mut members: Option<BTreeMap<usize, (String, u64)>> = None;
        let mut order = 0usize;
        if wal.last().0 >= wal.first_lsn() {
            let iter = wal
                .iter_from(wal.first_lsn())
                .map_err(|e| format!("cannot read the manager's log; {e}"))?;
            for r in iter {
                let r = r.map_err(|e| format!("cannot read the manager's log; {e}"))?;
                let bad = |e: protocol::Error| {
                    format!(
                        "undecodable record {} in the manager's log {}; {e}",
                        r.lsn,
                        dir.display()
                    )
                };
                match r.kind {
                    KIND_CATALOG => {
                        let ev: CatalogEvent = protocol::wire::decode(&r.payload).map_err(bad)?;
                        rec.catalog.apply(&ev);
                    }
                    KIND_MEMBER => {
                        let ev: MemberEvent = protocol::wire::decode(&r.payload).map_err(bad)?;
                        let m = members.get_or_insert_with(BTreeMap::new);
                        match ev {
                            MemberEvent::Added { members: added } => {
                                for (name, id) in added {
                                    m.retain(|_, (n, _)| *n != name);
                                    m.insert(order, (name, id));
                                    order += 1;
                                }
                            }
                            MemberEvent::Removed { names } => {
                                m.retain(|_, (n, _)| !names.contains(n));
                            }
                        }
                    }
                    k => {
                        return Err(format!(
                            "record {} of the manager's log {} has unknown kind {k}",
                            r.lsn,
                            dir.display()
                        ))
                    }
                }
                rec.records += 1;
            }
        }
        rec.members = members.map(|m| m.into_values().collect());
        Ok((CatalogLog { wal }, rec))
    }

    /// Appends a catalog event; durable when it returns.
    pub fn append_catalog(&self, ev: &CatalogEvent) -> Result<(), String> {
        self.append(KIND_CATALOG, &protocol::wire::encode(ev).map_err(|e| e.to_string())?)
    }

    /// Appends a membership event; durable when it returns.
    pub fn append_member(&self, ev: &MemberEvent) -> Result<(), String> {
        self.append(KIND_MEMBER, &protocol::wire::encode(ev).map_err(|e| e.to_string())?)
    }

    fn append(&self, kind: u8, payload: &[u8]) -> Result<(), String> {
        let lsn = self
            .wal
            .append(0, kind, payload)
            .map_err(|e| format!("cannot append to the manager's log; {e}"))?;
        self.wal.make_durable(lsn).map_err(|e| format!("cannot sync the manager's log; {e}"))
    }
}

impl std::fmt::Debug for CatalogLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogLog").field("dir", &self.wal.dir()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, rec) = CatalogLog::open(dir.path()).unwrap();
            assert!(rec.members.is_none());
            assert_eq!(rec.records, 0);
            log.append_member(&MemberEvent::Added {
                members: vec![("A".into(), 111111), ("B".into(), 222222)],
            })
            .unwrap();
            log.append_catalog(&CatalogEvent::Epoch { shard: "sh1".into(), epoch: 4 }).unwrap();
            log.append_member(&MemberEvent::Removed { names: vec!["A".into()] }).unwrap();
            log.append_member(&MemberEvent::Added { members: vec![("C".into(), 333333)] }).unwrap();
        }
        let (_log, rec) = CatalogLog::open(dir.path()).unwrap();
        assert_eq!(rec.records, 4);
        assert_eq!(rec.catalog.epoch_of("sh1"), 4);
        assert_eq!(rec.members.unwrap(), vec![("B".into(), 222222), ("C".into(), 333333)]);
    }

    #[test]
    fn a_second_manager_on_the_same_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, _) = CatalogLog::open(dir.path()).unwrap();
        let e = CatalogLog::open(dir.path()).unwrap_err();
        assert!(e.contains("cannot open the manager's log"), "{e}");
    }
}
