//! kill -9: a child process appends and syncs from several threads and reports each durable
//! LSN; the parent kills it at a random moment and checks that every reported record is
//! there, byte for byte, after recovery.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use wal::Wal;

const CHILD_ENV: &str = "SHARDGATE_WAL_CRASH_CHILD_DIR";
const SEGMENT: usize = 64 * 1024;
const THREADS: u32 = 4;
/// Upper bound on the child's work if nobody kills it.
const CHILD_APPENDS_PER_THREAD: u32 = 50_000;
const ROUNDS: u64 = 20;

fn payload(thread: u32, n: u32) -> Vec<u8> {
    let mut p = format!("t{thread} n{n} ").into_bytes();
    p.extend(common::payload_for(((thread as u64) << 32) | n as u64, 600));
    p
}

/// The child's side; does nothing unless started by `kill_9_never_loses_a_durable_record`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let log = Arc::new(Wal::open(&dir, common::small(SEGMENT)).unwrap());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (log, out) = (log.clone(), out.clone());
            std::thread::spawn(move || {
                for n in 0..CHILD_APPENDS_PER_THREAD {
                    let lsn = log.append(1, t as u8, &payload(t, n)).unwrap();
                    log.make_durable(lsn).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "durable {lsn} {t} {n}").unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Kills the child when dropped, so a failing assertion leaves no process behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_never_loses_a_durable_record() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut reported: HashMap<u64, (u32, u32)> = HashMap::new();
    for round in 0..ROUNDS {
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args(["--exact", "crash_child", "--nocapture", "--test-threads", "1"])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let kill_after = rng.gen_range(1..400);
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.first() != Some(&"durable") {
                continue;
            }
            let lsn: u64 = parts[1].parse().unwrap();
            let (t, n): (u32, u32) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
            reported.insert(lsn, (t, n));
            seen += 1;
            if seen == kill_after {
                child.0.kill().unwrap(); // SIGKILL
                break;
            }
        }
        drop(child);
        // Recover and check every record any round ever reported durable.
        let log = Wal::open(dir.path(), common::small(SEGMENT)).unwrap();
        let (last, _) = log.last();
        let max_reported = reported.keys().copied().max().unwrap_or(0);
        assert!(last >= max_reported, "round {round}: last {last} < reported {max_reported}");
        let mut checked = 0;
        for rec in log.iter_from(1).unwrap() {
            let rec = rec.unwrap();
            if let Some(&(t, n)) = reported.get(&rec.lsn) {
                assert_eq!(rec.payload, payload(t, n), "round {round}: record {}", rec.lsn);
                checked += 1;
            }
        }
        assert_eq!(checked, reported.len(), "round {round}: reported records missing");
    }
}
