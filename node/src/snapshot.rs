//! Checkpoint files: every row of a shard as of one LSN, so the log below it can be purged
//! and a restart replays only what came after.
//!
//! Format (integers little-endian):
//! ```text
//! { magic:[u8;8] = "SGSNAP02" | lsn:u64 | epoch:u64 }
//! { len:u32 | crc32:u32 | ids:[u8; len] }        ids = wire-encoded Vec<(RequestId, Lsn)>
//! { len:u32 | crc32:u32 | chunk:[u8; len] }*     chunk = wire-encoded Vec<Row>, at most ROWS_PER_CHUNK
//! { len:u32 = 0 | crc32:u32 = crc of the 24 header bytes | rows:u64 }
//! ```
//! The ids are those of the changes at or below `lsn` that a replica remembers
//! (`shard::Seen`): a retry of such a change after a restart is still answered from them
//! instead of being applied twice. Files of the first version (`SGSNAP01`) have no ids.
//! Each chunk carries its own checksum and the end marker proves the file is whole; the file
//! is written as `snapshot.tmp`, synced, and renamed over `snapshot`, so a reader sees either
//! the old checkpoint or the new one.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use protocol::{Epoch, Lsn, RequestId, Row};

/// Magic number at the start of a checkpoint file.
const MAGIC: [u8; 8] = *b"SGSNAP02";
/// Magic number of the first version (no ids), still read.
const MAGIC_V1: [u8; 8] = *b"SGSNAP01";
/// Rows per chunk; bounds the memory one decode needs.
const ROWS_PER_CHUNK: usize = 4096;
/// File name of the current checkpoint inside a shard directory.
pub(crate) const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
/// Rows of a snapshot being received (see [`Staging`]).
const SNAPSHOT_INCOMING: &str = "snapshot.incoming";

/// A checkpoint read back from disk.
pub(crate) struct Snapshot {
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub rows: Vec<Row>,
    /// Ids of the changes up to `lsn` that were remembered, oldest first.
    pub ids: Vec<(RequestId, Lsn)>,
}

/// Writes the checkpoint of `rows` and `ids` at `(lsn, epoch)` into `dir`, durably.
pub(crate) fn write(
    dir: &Path,
    lsn: Lsn,
    epoch: Epoch,
    rows: &[Row],
    ids: &[(RequestId, Lsn)],
) -> std::io::Result<()> {
    write_with(dir, lsn, epoch, ids, rows.len() as u64, |w| {
        for chunk in rows.chunks(ROWS_PER_CHUNK) {
            write_chunk(w, &protocol::wire::encode(&chunk).map_err(std::io::Error::other)?)?;
        }
        Ok(())
    })
}

/// Writes a checkpoint whose row chunks `body` writes (`rows` rows in all) as
/// `snapshot.tmp`, syncs it and renames it over `snapshot`.
fn write_with(
    dir: &Path,
    lsn: Lsn,
    epoch: Epoch,
    ids: &[(RequestId, Lsn)],
    rows: u64,
    body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let file = File::create(&tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut header = [0u8; 24];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..16].copy_from_slice(&lsn.to_le_bytes());
    header[16..24].copy_from_slice(&epoch.to_le_bytes());
    w.write_all(&header)?;
    write_chunk(&mut w, &protocol::wire::encode(&ids).map_err(std::io::Error::other)?)?;
    body(&mut w)?;
    w.write_all(&0u32.to_le_bytes())?;
    w.write_all(&crc32fast::hash(&header).to_le_bytes())?;
    w.write_all(&rows.to_le_bytes())?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    File::open(dir)?.sync_all()
}

/// One chunk: `{ len:u32 | crc32:u32 | bytes }`.
fn write_chunk(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&crc32fast::hash(bytes).to_le_bytes())?;
    w.write_all(bytes)
}

/// A checkpoint arriving from a primary in chunks. Its rows go to a staging file as they
/// come, so a replica holds one chunk in memory however large the snapshot (or however many
/// chunks a peer sends); [`Staging::finish`] makes the file the shard's checkpoint. The
/// rows must come in strictly increasing key order, inside the shard's range when it has one.
pub(crate) struct Staging {
    file: BufWriter<File>,
    path: std::path::PathBuf,
    rows: u64,
    last_key: Option<i64>,
    spec: protocol::ShardSpec,
}

impl Staging {
    /// Starts (or starts over) the staging file of `dir`.
    pub(crate) fn create(dir: &Path, spec: protocol::ShardSpec) -> std::io::Result<Staging> {
        let path = dir.join(SNAPSHOT_INCOMING);
        let file = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        Ok(Staging { file, path, rows: 0, last_key: None, spec })
    }

    /// Adds the rows of one chunk; rows out of order or out of range are refused (the
    /// message says which) and nothing of them is kept.
    pub(crate) fn push(&mut self, rows: &[Row]) -> Result<(), String> {
        let mut last = self.last_key;
        for r in rows {
            if last.is_some_and(|l| r.key <= l) {
                return Err(format!("snapshot row {} is not after row {:?}", r.key, last));
            }
            if !self.spec.contains(r.key) {
                return Err(format!("snapshot row {} is outside the shard's range", r.key));
            }
            last = Some(r.key);
        }
        if rows.is_empty() {
            return Ok(());
        }
        let bytes = protocol::wire::encode(&rows).map_err(|e| e.to_string())?;
        write_chunk(&mut self.file, &bytes)
            .map_err(|e| format!("cannot stage the snapshot in {}: {e}", self.path.display()))?;
        self.last_key = last;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Makes the staged rows, with `ids`, the checkpoint of `dir` at `(lsn, epoch)`
    /// (durably, as [`write`] does), and removes the staging file.
    pub(crate) fn finish(
        self,
        dir: &Path,
        lsn: Lsn,
        epoch: Epoch,
        ids: &[(RequestId, Lsn)],
    ) -> std::io::Result<()> {
        let Staging { file, path, rows, .. } = self;
        drop(file.into_inner().map_err(|e| e.into_error())?);
        write_with(dir, lsn, epoch, ids, rows, |w| {
            std::io::copy(&mut File::open(&path)?, w).map(|_| ())
        })?;
        fs::remove_file(&path)
    }
}

/// Reads the checkpoint of `dir`, `None` when there is none. Damage is an error naming the
/// file and offset.
pub(crate) fn read(dir: &Path) -> std::io::Result<Option<Snapshot>> {
    let path = dir.join(SNAPSHOT_FILE);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |offset: usize, what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("corrupt checkpoint {} at offset {offset}; {what}", path.display()),
        )
    };
    if bytes.len() < 24 || (bytes[0..8] != MAGIC && bytes[0..8] != MAGIC_V1) {
        return Err(bad(0, "bad magic: not a shardgate checkpoint"));
    }
    let mut ids_pending = bytes[0..8] == MAGIC;
    let mut ids = Vec::new();
    let u64_at = |b: &[u8], at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let u32_at = |b: &[u8], at: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[at..at + 4]);
        u32::from_le_bytes(a)
    };
    let lsn = u64_at(&bytes, 8);
    let epoch = u64_at(&bytes, 16);
    let mut rows = Vec::new();
    let mut at = 24;
    loop {
        if at + 8 > bytes.len() {
            return Err(bad(at, "file ends before its end marker"));
        }
        let len = u32_at(&bytes, at) as usize;
        let crc = u32_at(&bytes, at + 4);
        if len == 0 {
            if crc != crc32fast::hash(&bytes[0..24]) || at + 16 != bytes.len() {
                return Err(bad(at, "bad end marker"));
            }
            if u64_at(&bytes, at + 8) != rows.len() as u64 {
                return Err(bad(at, "row count does not match"));
            }
            break;
        }
        let body = at + 8;
        if len > bytes.len() - body {
            return Err(bad(at, "chunk runs past the end of the file"));
        }
        let chunk = &bytes[body..body + len];
        if crc32fast::hash(chunk) != crc {
            return Err(bad(at, "chunk checksum mismatch"));
        }
        if ids_pending {
            ids = protocol::wire::decode(chunk).map_err(|e| bad(at, &e.to_string()))?;
            ids_pending = false;
        } else {
            let mut part: Vec<Row> =
                protocol::wire::decode(chunk).map_err(|e| bad(at, &e.to_string()))?;
            rows.append(&mut part);
        }
        at = body + len;
    }
    if ids_pending {
        return Err(bad(24, "the ids section is missing"));
    }
    Ok(Some(Snapshot { lsn, epoch, rows, ids }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Value;

    fn rows(n: i64) -> Vec<Row> {
        (0..n)
            .map(|k| Row {
                key: k,
                values: vec![Value::Int(k), Value::Str(format!("n{k}")), Value::Int(k % 100)],
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_round_trips_and_any_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        let rs = rows(10_000);
        let ids: Vec<(RequestId, Lsn)> =
            (1..=500).map(|i| (RequestId { client: 9, seq: i }, i + 10)).collect();
        write(dir.path(), 77, 3, &rs, &ids).unwrap();
        let s = read(dir.path()).unwrap().unwrap();
        assert_eq!((s.lsn, s.epoch), (77, 3));
        assert_eq!(s.rows, rs);
        assert_eq!(s.ids, ids);
        let path = dir.path().join(SNAPSHOT_FILE);
        let good = fs::read(&path).unwrap();
        for at in [0, 9, 30, good.len() / 2, good.len() - 9, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            assert!(read(dir.path()).is_err(), "damage at {at} accepted");
        }
        fs::write(&path, &good[..good.len() - 20]).unwrap();
        assert!(read(dir.path()).is_err(), "a cut file was accepted");
    }
}
