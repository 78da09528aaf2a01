//! The power-cut filesystem of the crash tests keeps exactly what was made durable.
//!
//! Each test mounts a fresh `PowerCutFs` on a temp dir, makes the calls a node makes (write,
//! fsync, rename, mmap + msync, set_len, fallocate), cuts the power and checks what is left.
//! Without FUSE (not root, no /dev/fuse, no fusermount3) they skip, except under CI.

mod common;
#[path = "common/powercut.rs"]
mod powercut;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use memmap2::MmapMut;
use powercut::PowerCutFs;
use tempfile::TempDir;

/// Longest one test may take: a hung FUSE request fails that test instead of hanging the run.
const TEST_TIME_LIMIT: Duration = Duration::from_secs(60);
/// The WAL's segment size.
const SEGMENT_LEN: u64 = 32 << 20;
const PAGE: u64 = 4096;

/// A mount on its own temp dir; the fields drop in order, so it is unmounted before the
/// directory is removed.
struct Mounted {
    fs: PowerCutFs,
    _dir: TempDir,
}

impl Deref for Mounted {
    type Target = PowerCutFs;
    fn deref(&self) -> &PowerCutFs {
        &self.fs
    }
}

fn mounted() -> Mounted {
    let dir = tempfile::tempdir().unwrap();
    let fs = {
        let _forking = forking();
        PowerCutFs::mount(dir.path()).unwrap()
    };
    Mounted { fs, _dir: dir }
}

/// A fork copies every open descriptor of this process into the child until it execs, and a
/// file's RELEASE reaches the filesystem only when the last copy is closed. Tests that check
/// what a close frees hold this shared; mounting (which runs fusermount3) and spawning a
/// `Mapper` hold it exclusively.
static FORKS: RwLock<()> = RwLock::new(());

fn no_forks() -> RwLockReadGuard<'static, ()> {
    FORKS.read().unwrap_or_else(PoisonError::into_inner)
}

fn forking() -> RwLockWriteGuard<'static, ()> {
    FORKS.write().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `test` on another thread and fails if it takes longer than `TEST_TIME_LIMIT`; skips
/// (or panics under CI) where FUSE cannot be mounted.
fn within_limit(test: impl FnOnce() + Send + 'static) {
    if powercut::require().is_none() {
        return;
    }
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        test();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(TEST_TIME_LIMIT) {
        Ok(()) => worker.join().unwrap(),
        Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => panic!("the test took longer than {TEST_TIME_LIMIT:?}"),
    }
}

/// `within_limit` with a fresh mount.
fn on_mount(test: impl FnOnce(&Mounted) + Send + 'static) {
    within_limit(move || test(&mounted()));
}

/// Makes one request and waits for it: a close sends its RELEASE without waiting, and the
/// single session thread handles requests in order, so after this every close is applied.
fn settle(m: &Mounted) {
    fs::metadata(m.path()).unwrap();
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

/// Creates `path` holding `data`, with the file and its directory synced.
fn durable_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    sync_dir(path.parent().unwrap());
}

/// A new, empty file at `path` of `SEGMENT_LEN` bytes (not synced), open for reading and
/// writing.
fn new_segment(path: &Path) -> File {
    let f =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    f.set_len(SEGMENT_LEN).unwrap();
    f
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn fallocate(f: &File, mode: i32, offset: u64, len: u64) {
    // SAFETY: a valid open descriptor and plain integers.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    assert_eq!(rc, 0, "fallocate(mode {mode}): {}", std::io::Error::last_os_error());
}

/// Creates `path` with `len` zero bytes (set_len, no data written), durable.
fn preallocated(path: &Path, len: u64) {
    let f = File::create(path).unwrap();
    f.set_len(len).unwrap();
    f.sync_all().unwrap();
    sync_dir(path.parent().unwrap());
}

/// Environment variable that turns `mapper_child_process` into the mapper.
const MAPPER_ENV: &str = "POWERCUT_MAPPER_CHILD";
/// Prefix of the mapper's answers on its stdout, which libtest shares.
const MAPPER_ACK: &str = "powercut-mapper:";

/// A child process (this test binary, running `mapper_child_process`) that maps a file of
/// the mount with memmap2, as the WAL does. The test process serves the mount, so it must
/// not map its files itself (see powercut.rs).
struct Mapper {
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Mapper {
    fn spawn() -> Mapper {
        let _forking = forking();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "mapper_child_process", "--nocapture", "--test-threads=1"])
            .env(MAPPER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let commands = child.stdin.take().unwrap();
        let answers = BufReader::new(child.stdout.take().unwrap());
        Mapper { child, commands, answers }
    }

    /// Sends one command (see `mapper_child_process`) and waits for its answer.
    fn call(&mut self, command: &str) -> Result<String, String> {
        writeln!(self.commands, "{command}").unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.answers.read_line(&mut line).unwrap();
            assert!(n > 0, "the mapper exited during {command:?}");
            // libtest's own "test ... " may stand before the answer on the first line.
            let Some(at) = line.find(MAPPER_ACK) else {
                continue;
            };
            let answer = line[at + MAPPER_ACK.len()..].trim_end();
            return match answer.strip_prefix("ok") {
                Some(value) => Ok(value.trim().to_string()),
                None => Err(answer.to_string()),
            };
        }
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Does nothing in a normal run: spawned by `Mapper`, it maps a file and obeys one command
/// a line from stdin: `map PATH`, `write OFFSET TEXT` (a store into the mapping), `pwrite
/// OFFSET TEXT` (through the mapped file's descriptor, as the WAL appends), `sum_pages`
/// (reads every page, answers the sum of their first bytes), `flush [OFFSET LEN]` (msync),
/// `unmap`.
#[test]
fn mapper_child_process() {
    if std::env::var_os(MAPPER_ENV).is_none() {
        return;
    }
    let mut mapped: Option<(File, MmapMut)> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split(' ').collect();
        let (file, map) = match mapped.as_mut() {
            Some((file, map)) => (Some(&*file), Some(map)),
            None => (None, None),
        };
        let answer: Result<String, String> = match (&words[..], map) {
            (["map", path], _) => {
                let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
                // SAFETY: the parent test does not truncate the file while it is mapped.
                let map = unsafe { MmapMut::map_mut(&f) }.unwrap();
                mapped = Some((f, map));
                Ok(String::new())
            }
            (["pwrite", offset, text], Some(_)) => file
                .unwrap()
                .write_all_at(text.as_bytes(), offset.parse().unwrap())
                .map(|()| String::new())
                .map_err(|e| e.to_string()),
            (["write", offset, text], Some(map)) => {
                let offset: usize = offset.parse().unwrap();
                map[offset..offset + text.len()].copy_from_slice(text.as_bytes());
                Ok(String::new())
            }
            (["sum_pages"], Some(map)) => {
                let sum: u64 = map.iter().step_by(PAGE as usize).map(|&b| u64::from(b)).sum();
                Ok(sum.to_string())
            }
            (["flush", offset, len], Some(map)) => map
                .flush_range(offset.parse().unwrap(), len.parse().unwrap())
                .map(|()| String::new())
                .map_err(|e| e.to_string()),
            (["flush"], Some(map)) => {
                map.flush().map(|()| String::new()).map_err(|e| e.to_string())
            }
            (["unmap"], _) => {
                mapped = None;
                Ok(String::new())
            }
            _ => Err(format!("bad command {line:?}")),
        };
        match answer {
            Ok(value) => println!("{MAPPER_ACK}ok {value}"),
            Err(error) => println!("{MAPPER_ACK}err {error}"),
        }
    }
}

fn is_eio(result: std::io::Result<impl Sized>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::EIO))
}

#[test]
fn a_write_without_fsync_is_lost_at_a_cut() {
    on_mount(|m| {
        let path = m.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.sync_all().unwrap();
        sync_dir(m.path());
        f.write_all(b"hello").unwrap();
        drop(f);
        assert_eq!(fs::read(&path).unwrap(), b"hello");

        let stats = m.cut();
        assert_eq!(fs::read(&path).unwrap(), b"");
        assert_eq!(stats.bytes_dropped, 5, "{stats:?}");
        assert_eq!(stats.files_reverted, 1, "{stats:?}");
        assert_eq!(stats.entries_dropped, 0, "{stats:?}");
    });
}

#[test]
fn a_write_followed_by_fsync_or_fdatasync_survives_a_cut() {
    on_mount(|m| {
        let (synced, datasynced) = (m.path().join("synced"), m.path().join("datasynced"));
        durable_file(&synced, b"kept");
        let mut f = OpenOptions::new().create(true).append(true).open(&datasynced).unwrap();
        f.write_all(b"also kept").unwrap();
        f.sync_data().unwrap();
        sync_dir(m.path());
        f.write_all(b", but not this").unwrap();
        OpenOptions::new().append(true).open(&synced).unwrap().write_all(b" lost").unwrap();

        m.cut();
        assert_eq!(fs::read(&synced).unwrap(), b"kept");
        assert_eq!(fs::read(&datasynced).unwrap(), b"also kept");
    });
}

#[test]
fn a_synced_file_in_an_unsynced_directory_is_gone_after_a_cut() {
    on_mount(|m| {
        let path = m.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"data").unwrap();
        f.sync_all().unwrap();
        fs::create_dir(m.path().join("d")).unwrap();

        let stats = m.cut();
        assert!(!path.exists());
        assert!(!m.path().join("d").exists());
        assert_eq!(fs::read_dir(m.path()).unwrap().count(), 0);
        assert_eq!(stats.entries_dropped, 2, "{stats:?}");
        assert_eq!(stats.bytes_dropped, 4, "{stats:?}");
    });
}

#[test]
fn new_entries_survive_once_their_directory_is_synced() {
    on_mount(|m| {
        let deep = m.path().join("a/b/c");
        fs::create_dir_all(&deep).unwrap();
        durable_file(&deep.join("f"), b"deep");
        for dir in ["a/b", "a", ""] {
            sync_dir(&m.path().join(dir));
        }
        fs::create_dir_all(m.path().join("x/y")).unwrap();
        sync_dir(m.path());

        m.cut();
        assert_eq!(fs::read(deep.join("f")).unwrap(), b"deep");
        let names: Vec<_> = fs::read_dir(m.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(m.path().join("x").is_dir());
        assert!(!m.path().join("x/y").exists(), "x was never synced");
    });
}

#[test]
fn a_rename_without_a_directory_sync_is_undone() {
    on_mount(|m| {
        let (data, tmp) = (m.path().join("data"), m.path().join("data.tmp"));
        durable_file(&data, b"old");
        let mut f = File::create(&tmp).unwrap();
        f.write_all(b"new").unwrap();
        f.sync_all().unwrap();
        fs::rename(&tmp, &data).unwrap();
        assert_eq!(fs::read(&data).unwrap(), b"new");

        let stats = m.cut();
        assert_eq!(fs::read(&data).unwrap(), b"old");
        assert!(!tmp.exists());
        assert_eq!(stats.entries_dropped, 1, "{stats:?}");
    });
}

#[test]
fn write_fsync_rename_fsync_dir_survives_a_cut() {
    on_mount(|m| {
        let _no_forks = no_forks();
        let (data, tmp) = (m.path().join("data"), m.path().join("data.tmp"));
        durable_file(&data, b"old");
        let mut f = File::create(&tmp).unwrap();
        f.write_all(b"new").unwrap();
        f.sync_all().unwrap();
        fs::rename(&tmp, &data).unwrap();
        sync_dir(m.path());
        drop(f);
        assert_eq!(m.resident_pages(), 1, "the replaced file is freed");

        let stats = m.cut();
        assert_eq!(fs::read(&data).unwrap(), b"new");
        assert!(!tmp.exists());
        assert_eq!(stats, powercut::CutStats::default());
    });
}

#[test]
fn a_rename_across_directories_is_durable_side_by_side() {
    on_mount(|m| {
        let (a, b) = (m.path().join("a"), m.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        sync_dir(m.path());
        durable_file(&a.join("f"), b"moved");

        // Only the target synced: the file is under both names, one file with two links.
        fs::rename(a.join("f"), b.join("f")).unwrap();
        sync_dir(&b);
        m.cut();
        assert_eq!(fs::read(a.join("f")).unwrap(), b"moved");
        assert_eq!(fs::read(b.join("f")).unwrap(), b"moved");
        assert_eq!(fs::metadata(b.join("f")).unwrap().nlink(), 2);
        assert_eq!(
            fs::metadata(a.join("f")).unwrap().ino(),
            fs::metadata(b.join("f")).unwrap().ino()
        );

        // Only the source synced: the moved name is gone, the other one stays.
        fs::rename(b.join("f"), a.join("g")).unwrap();
        sync_dir(&b);
        m.cut();
        assert!(!b.join("f").exists());
        assert!(!a.join("g").exists());
        assert_eq!(fs::read(a.join("f")).unwrap(), b"moved");
    });
}

#[test]
fn rename_replaces_an_existing_name_unless_told_not_to() {
    on_mount(|m| {
        let (x, y) = (m.path().join("x"), m.path().join("y"));
        durable_file(&x, b"x");
        durable_file(&y, b"y");
        let (cx, cy) = (
            CString::new(x.as_os_str().as_bytes()).unwrap(),
            CString::new(y.as_os_str().as_bytes()).unwrap(),
        );
        // SAFETY: valid NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cx.as_ptr(),
                libc::AT_FDCWD,
                cy.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        assert_eq!(rc, -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EEXIST));

        fs::rename(&x, &y).unwrap();
        assert_eq!(fs::read(&y).unwrap(), b"x");
        sync_dir(m.path());
        m.cut();
        assert_eq!(fs::read(&y).unwrap(), b"x");
        assert!(!x.exists());
    });
}

#[test]
fn mmap_writes_survive_once_msynced() {
    on_mount(|m| {
        let path = m.path().join("segment");
        preallocated(&path, SEGMENT_LEN);
        let mut mapper = Mapper::spawn();
        mapper.call(&format!("map {}", path.display())).unwrap();
        mapper.call("write 0 first").unwrap();
        mapper.call(&format!("write {} second", 5 * PAGE)).unwrap();
        mapper.call(&format!("flush 0 {}", 6 * PAGE)).unwrap();
        mapper.call("unmap").unwrap();

        m.cut();
        assert_eq!(fs::metadata(&path).unwrap().len(), SEGMENT_LEN);
        assert_eq!(read_at(&path, 0, 5), b"first");
        assert_eq!(read_at(&path, 5 * PAGE, 6), b"second");
    });
}

#[test]
fn mmap_writes_without_msync_are_lost() {
    on_mount(|m| {
        let path = m.path().join("segment");
        preallocated(&path, SEGMENT_LEN);
        let mut mapper = Mapper::spawn();
        mapper.call(&format!("map {}", path.display())).unwrap();
        mapper.call("write 0 gone").unwrap();
        mapper.call(&format!("write {} gone", 100 * PAGE)).unwrap();
        // Unmapping writes the pages back; that is still not durable.
        mapper.call("unmap").unwrap();
        assert_eq!(read_at(&path, 0, 4), b"gone");

        m.cut();
        assert_eq!(read_at(&path, 0, 4), [0; 4]);
        assert_eq!(read_at(&path, PAGE * 100, 4), [0; 4]);
    });
}

#[test]
fn wal_style_pwrite_into_a_mapped_file_is_durable_at_msync() {
    on_mount(|m| {
        let path = m.path().join("segment");
        preallocated(&path, SEGMENT_LEN);
        let mut mapper = Mapper::spawn();
        mapper.call(&format!("map {}", path.display())).unwrap();
        mapper.call("pwrite 64 record-1").unwrap();
        mapper.call("flush 64 8").unwrap();
        mapper.call("pwrite 72 record-2").unwrap();

        m.cut();
        assert_eq!(read_at(&path, 64, 16), b"record-1\0\0\0\0\0\0\0\0");
    });
}

#[test]
fn write_back_of_a_mapping_from_before_the_cut_is_refused() {
    on_mount(|m| {
        let path = m.path().join("segment");
        preallocated(&path, 16 * PAGE);
        let mut mapper = Mapper::spawn();
        mapper.call(&format!("map {}", path.display())).unwrap();
        mapper.call("write 0 late").unwrap();

        // As in a crash test: the node is stopped with dirty pages when the power goes.
        m.cut();
        let flushed = mapper.call("flush 0 4096");
        assert!(flushed.is_err(), "msync of a pre-cut mapping must fail: {flushed:?}");
        mapper.call("unmap").unwrap();
        assert_eq!(read_at(&path, 0, 4), [0; 4]);
    });
}

#[test]
fn set_len_fallocate_and_partial_writes_survive_only_once_synced() {
    on_mount(|m| {
        let path = m.path().join("segment");
        let f = new_segment(&path);
        f.write_all_at(b"abc", 10_000).unwrap();
        fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 2 * SEGMENT_LEN);
        assert_eq!(f.metadata().unwrap().len(), SEGMENT_LEN);
        f.sync_all().unwrap();
        sync_dir(m.path());

        f.set_len(PAGE).unwrap();
        f.write_all_at(b"zzz", 20_000).unwrap();
        m.cut();
        assert_eq!(fs::metadata(&path).unwrap().len(), SEGMENT_LEN);
        assert_eq!(read_at(&path, 10_000, 3), b"abc");
        assert_eq!(read_at(&path, 20_000, 3), [0; 3]);
        assert_eq!(read_at(&path, SEGMENT_LEN - 1, 1), [0]);

        let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        fallocate(&f, 0, SEGMENT_LEN, SEGMENT_LEN);
        assert_eq!(f.metadata().unwrap().len(), 2 * SEGMENT_LEN);
        fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 10_001, 1);
        f.set_len(10_002).unwrap();
        f.set_len(SEGMENT_LEN).unwrap();
        f.sync_data().unwrap();
        m.cut();
        assert_eq!(fs::metadata(&path).unwrap().len(), SEGMENT_LEN);
        assert_eq!(read_at(&path, 10_000, 4), [b'a', 0, 0, 0]);
    });
}

#[test]
fn a_preallocated_segment_costs_only_the_pages_written() {
    on_mount(|m| {
        let path = m.path().join("segment");
        let f = new_segment(&path);
        fallocate(&f, 0, 0, SEGMENT_LEN);
        f.write_all_at(&[7; 3000], 0).unwrap();
        f.write_all_at(&[0; 1 << 20], 1 << 20).unwrap();
        f.write_all_at(b"middle", SEGMENT_LEN / 2).unwrap();
        f.sync_all().unwrap();
        assert_eq!(m.resident_pages(), 2);

        let mut mapper = Mapper::spawn();
        mapper.call(&format!("map {}", path.display())).unwrap();
        let sum = mapper.call("sum_pages").unwrap();
        assert_eq!(sum, (7 + u64::from(b'm')).to_string(), "first bytes of all pages");
        mapper.call(&format!("write {} x", SEGMENT_LEN / 4)).unwrap();
        mapper.call("flush").unwrap();
        mapper.call("unmap").unwrap();
        assert_eq!(m.resident_pages(), 3);
        assert_eq!(f.metadata().unwrap().blocks(), 3 * PAGE / 512);
    });
}

#[test]
fn a_descriptor_opened_before_a_cut_fails_afterwards() {
    on_mount(|m| {
        let path = m.path().join("f");
        durable_file(&path, b"data");
        let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut buf = [0; 4];
        // Now the page is in the kernel's cache, which a read could be served from.
        f.read_exact_at(&mut buf, 0).unwrap();
        let dir = File::open(m.path()).unwrap();
        let ino_before = fs::metadata(&path).unwrap().ino();

        m.cut();
        assert_ne!(fs::metadata(&path).unwrap().ino(), ino_before, "renumbered");
        assert!(is_eio(f.read_at(&mut buf, 0)));
        assert!(is_eio(f.write_at(b"x", 0)));
        assert!(is_eio(f.sync_all()));
        assert!(is_eio(f.metadata()));
        assert!(is_eio(dir.sync_all()));
        assert_eq!(fs::read(&path).unwrap(), b"data", "a new open sees the file");
    });
}

#[test]
fn unlinked_files_are_freed_once_no_durable_entry_names_them() {
    on_mount(|m| {
        let _no_forks = no_forks();
        let path = m.path().join("f");
        durable_file(&path, &[1; 3 * PAGE as usize]);
        assert_eq!(m.resident_pages(), 3);
        fs::remove_file(&path).unwrap();
        assert_eq!(m.resident_pages(), 3, "the durable entry still names it");
        sync_dir(m.path());
        assert_eq!(m.resident_pages(), 0);

        // An open descriptor keeps an unlinked file alive, as on a disk.
        durable_file(&path, b"open");
        let mut f = File::open(&path).unwrap();
        fs::remove_file(&path).unwrap();
        sync_dir(m.path());
        let mut buf = String::new();
        f.read_to_string(&mut buf).unwrap();
        assert_eq!(buf, "open");
        drop(f);
        settle(m);
        assert_eq!(m.resident_pages(), 0);
    });
}

#[test]
fn flock_statfs_listing_and_metadata_work() {
    on_mount(|m| {
        let path = m.path().join("LOCK");
        durable_file(&path, b"");
        let (first, second) = (File::open(&path).unwrap(), File::open(&path).unwrap());
        // SAFETY: valid open descriptors.
        assert_eq!(unsafe { libc::flock(first.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, -1);
        assert_eq!(std::io::Error::last_os_error().kind(), ErrorKind::WouldBlock);

        let c_path = CString::new(m.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs is plain data, filled by the call; the path outlives it.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut st) }, 0);
        assert_eq!(st.f_bsize, PAGE);
        assert!(st.f_bavail > 0);

        fs::create_dir_all(m.path().join("d/e")).unwrap();
        fs::write(m.path().join("d/z"), b"12345").unwrap();
        let err = fs::remove_dir(m.path().join("d")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
        let mut names: Vec<_> = fs::read_dir(m.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["e", "z"]);
        assert_eq!(fs::metadata(m.path().join("d/z")).unwrap().len(), 5);
        assert!(fs::metadata(m.path().join("d/e")).unwrap().is_dir());
        fs::remove_dir(m.path().join("d/e")).unwrap();
        fs::remove_file(m.path().join("d/z")).unwrap();
        fs::remove_dir(m.path().join("d")).unwrap();
        assert!(!m.path().join("d").exists());
    });
}

#[test]
fn dropping_the_filesystem_unmounts_it_even_with_a_file_open() {
    within_limit(|| {
        let dir = tempfile::tempdir().unwrap();
        let fs = {
            let _forking = forking();
            PowerCutFs::mount(dir.path()).unwrap()
        };
        let mount_point = dir.path().canonicalize().unwrap();
        let listed = || {
            let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
            table.lines().any(|line| line.split(' ').nth(4) == Some(mount_point.to_str().unwrap()))
        };
        assert!(listed());
        let open = File::create(dir.path().join("f")).unwrap();
        drop(fs);
        assert!(!listed(), "the mount is still in the mount table");
        drop(open);
    });
}
