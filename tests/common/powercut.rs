//! A FUSE filesystem that simulates a power cut: everything written but not made durable is
//! lost at `PowerCutFs::cut()`.
//!
//! Killing a process with SIGKILL cannot show a missing fsync, because its writes already
//! sit in the kernel's page cache and outlive it. Here they do not: the filesystem keeps two
//! copies of everything, the *live* one that processes see and the *durable* one that a
//! disk would hold after losing power, and a cut throws the live copy away. The rules are a
//! strict reading of POSIX, as crash-consistency checkers such as ALICE and CrashMonkey use:
//!
//! - A regular file's data, size and attributes are durable as of its last `fsync` or
//!   `fdatasync` (one FUSE `FSYNC` request, datasync or not; `msync(MS_SYNC)` of a shared
//!   mapping arrives as `WRITE`s and then `FSYNC`). Close, flush and write-back are not
//!   durability.
//! - A directory's entries (create, mkdir, unlink, rmdir, either side of a rename, a rename
//!   over an existing name) are durable as of the last fsync of that directory (FUSE
//!   `FSYNCDIR`). A file that was fsynced but whose directory never was is gone after a cut.
//!   The mount root always exists.
//! - The two sides of a rename across directories are two independent changes: after a cut
//!   a file can be under both names (one file with two links, as after `link`) or under
//!   neither (lost). A directory reachable under two durable names keeps only the first met
//!   walking breadth-first from the root in name order; one reachable under none is lost.
//! - `cut()` makes the durable state the live state: the files reachable from the root
//!   through durable entries, with their durable contents. Every inode then gets a new
//!   number, and every file handle opened before the cut is dead: a request naming an old
//!   inode or handle fails with `EIO`. So the kernel's dentries, attributes and page cache for
//!   the old numbers are never used again, and write-back of dirty mmap pages of a killed
//!   process that arrives after the cut is refused rather than applied. The root keeps
//!   number 1 (FUSE fixes it); its old directory handles die like the others.
//!
//! File contents are sparse 4 KiB pages shared copy-on-write between the live and durable
//! copies, so a 32 MiB preallocated segment holding a few KiB costs a few pages, and an fsync
//! costs what changed since the last one. Entry and attribute TTLs are zero, so every path
//! lookup reaches this code. Locking (`flock`, `fcntl`) is left to the kernel: the filesystem
//! does not ask for lock requests, and the kernel then keeps locks locally.
//!
//! The filesystem is served by a thread of the process that mounts it, so that process must
//! not map its files: munmap writes dirty pages back while holding the process's mmap lock,
//! which the serving thread may need to take (to allocate, or to fault in its buffer). Node processes (and the helper process of
//! tests/powercut_fs.rs) do the mapping.
//!
//! Include it with `#[path = "common/powercut.rs"] mod powercut;` next to `mod common;` (it
//! needs the `fuser` dev-dependency, which the other tests do not).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, Notifier, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

/// Bytes in one stored page of file contents.
const PAGE_SIZE: usize = 4096;
const PAGE_SIZE_U64: u64 = PAGE_SIZE as u64;
/// Zero, so that the kernel asks again for every lookup and stat instead of trusting what it
/// saw before a cut.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = INodeNo::ROOT.0;
const MAX_NAME_LEN: usize = 255;
/// Session threads serving the kernel's requests. One, so that requests are applied in the
/// order the kernel queued them: the RELEASE that a close sends without waiting is applied
/// before the closing process's next request (every request takes the one state lock
/// anyway, so more threads would overlap little).
const FS_THREADS: usize = 1;
/// What `statfs` reports, in 4 KiB blocks and inodes: plenty, the data lives in memory.
const STATFS_BLOCKS: u64 = 1 << 24;
const STATFS_FILES: u64 = 1 << 20;

/// What a power cut threw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutStats {
    /// Bytes of file data written since the file's last fsync, plus every stored byte of the
    /// files whose name did not survive.
    pub bytes_dropped: u64,
    /// Entries of the live directory tree that are gone after the cut or name another file.
    pub entries_dropped: u64,
    /// Surviving files whose contents went back to what their last fsync saw.
    pub files_reverted: u64,
}

/// A mounted power-cut filesystem. Dropping it aborts and unmounts it even while files are
/// open; if the process dies instead, fusermount3 (auto_unmount) removes the mount.
pub struct PowerCutFs {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    /// The canonical mount point, which is what the kernel's mount table knows.
    mount_point: PathBuf,
    notifier: Notifier,
    session: Option<BackgroundSession>,
}

impl PowerCutFs {
    /// Checks that a FUSE mount can be made here (root, /dev/fuse, fusermount3): Err(reason) if not.
    pub fn available() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting the power-cut filesystem needs root".into());
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
        // The auto-unmount helper that removes the mount if the test process dies.
        let on_path = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join("fusermount3").is_file())
        });
        if !on_path {
            return Err("fusermount3 is not installed (Debian package fuse3)".into());
        }
        Ok(())
    }

    /// Mounts a new, empty, in-memory filesystem at `at` (an existing empty directory).
    pub fn mount(at: &Path) -> io::Result<PowerCutFs> {
        if std::fs::read_dir(at)?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mount point {} is not empty", at.display()),
            ));
        }
        let mount_point = at.canonicalize()?;
        // SAFETY: getuid and getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let state = Arc::new(Mutex::new(State::new(uid, gid)));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut".into()),
            MountOption::Subtype("powercut".into()),
            // fusermount3 stays behind and unmounts if this process dies without dropping us.
            MountOption::AutoUnmount,
            MountOption::NoAtime,
        ];
        // auto_unmount needs allow_other; this also lets node processes of other users in.
        config.acl = SessionACL::All;
        config.n_threads = Some(FS_THREADS);
        let ops = PowerCutOps { state: state.clone() };
        let session = fuser::spawn_mount(ops, &mount_point, &config)?;
        let notifier = session.notifier();
        Ok(PowerCutFs {
            state,
            path: at.to_path_buf(),
            mount_point,
            notifier,
            session: Some(session),
        })
    }

    /// The power cut: from now on the filesystem holds only what was durable; returns what was dropped.
    pub fn cut(&self) -> CutStats {
        let (stats, old_files) = lock(&self.state).cut();
        // Drop the kernel's cached pages of the old inodes, so that even a read through a
        // descriptor opened before the cut reaches us (and fails). Dirty pages are written
        // back first and refused. Best effort: an inode the kernel forgot is ENOENT.
        for ino in old_files {
            let _ = self.notifier.inval_inode(INodeNo(ino), 0, 0);
        }
        stats
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Distinct 4 KiB pages stored for file contents, live and durable together.
    pub fn resident_pages(&self) -> u64 {
        lock(&self.state).resident_pages()
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if let Ok(path) = CString::new(self.mount_point.as_os_str().as_bytes()) {
            // A forced unmount aborts the FUSE connection, so nothing (a stopped node, a
            // request stuck behind a dead session thread) keeps waiting on it, but it fails
            // while files are open; detaching then takes the mount out of the table anyway.
            // SAFETY: `path` is a valid NUL-terminated string that outlives both calls.
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_FORCE);
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        }
        // Not joined: the session thread ends on its own once the connection is gone.
        drop(self.session.take());
    }
}

/// Whether a test can use a power-cut mount: `Some(())` if so; if not, `None` after
/// `common::cannot_run` said why (which fails the test under CI instead).
pub fn require() -> Option<()> {
    match PowerCutFs::available() {
        Ok(()) => Some(()),
        Err(reason) => {
            super::common::cannot_run(&reason);
            None
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in one request must not take every later request down with it.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Page = Arc<[u8; PAGE_SIZE]>;

/// One copy of a file's data: pages absent from `pages` read as zeros.
#[derive(Clone, Default)]
struct Contents {
    pages: BTreeMap<u64, Page>,
    size: u64,
}

impl Contents {
    fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        if offset >= self.size || len == 0 {
            return Vec::new();
        }
        let end = self.size.min(offset.saturating_add(len));
        let mut out = vec![0u8; (end - offset) as usize];
        let first = offset / PAGE_SIZE_U64;
        let last = (end - 1) / PAGE_SIZE_U64;
        for (&idx, page) in self.pages.range(first..=last) {
            let page_start = idx * PAGE_SIZE_U64;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE_SIZE_U64);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&page[(from - page_start) as usize..(to - page_start) as usize]);
        }
        out
    }

    /// Every page whose content changes is put in `dirty`.
    fn write(&mut self, offset: u64, data: &[u8], dirty: &mut BTreeSet<u64>) {
        let mut done = 0;
        while done < data.len() {
            let pos = offset + done as u64;
            let idx = pos / PAGE_SIZE_U64;
            let within = (pos % PAGE_SIZE_U64) as usize;
            let n = (PAGE_SIZE - within).min(data.len() - done);
            let chunk = &data[done..done + n];
            let zeros = chunk.iter().all(|&b| b == 0);
            match self.pages.get_mut(&idx) {
                // A hole already reads as zeros: preallocating by writing zeros stores nothing.
                None if zeros => {}
                None => {
                    let mut page = [0u8; PAGE_SIZE];
                    page[within..within + n].copy_from_slice(chunk);
                    self.pages.insert(idx, Arc::new(page));
                    dirty.insert(idx);
                }
                Some(page) => {
                    let bytes = Arc::make_mut(page);
                    bytes[within..within + n].copy_from_slice(chunk);
                    if zeros && bytes.iter().all(|&b| b == 0) {
                        self.pages.remove(&idx);
                    }
                    dirty.insert(idx);
                }
            }
            done += n;
        }
        self.size = self.size.max(offset + data.len() as u64);
    }

    fn set_size(&mut self, size: u64, dirty: &mut BTreeSet<u64>) {
        if size < self.size {
            let kept = size.div_ceil(PAGE_SIZE_U64);
            let gone: Vec<u64> = self.pages.range(kept..).map(|(&idx, _)| idx).collect();
            for idx in gone {
                self.pages.remove(&idx);
                dirty.insert(idx);
            }
            // Bytes past the new end must read as zeros if the file grows again.
            let tail = (size % PAGE_SIZE_U64) as usize;
            if tail != 0 {
                self.zero_in_page(size / PAGE_SIZE_U64, tail, PAGE_SIZE, dirty);
            }
        }
        self.size = size;
    }

    /// Zeros `[offset, offset + len)` within the current size (punch hole, zero range).
    fn zero_range(&mut self, offset: u64, len: u64, dirty: &mut BTreeSet<u64>) {
        let end = self.size.min(offset.saturating_add(len));
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE_SIZE_U64;
            let within = (pos % PAGE_SIZE_U64) as usize;
            let to = (end - idx * PAGE_SIZE_U64).min(PAGE_SIZE_U64) as usize;
            self.zero_in_page(idx, within, to, dirty);
            pos = (idx + 1) * PAGE_SIZE_U64;
        }
    }

    fn zero_in_page(&mut self, idx: u64, from: usize, to: usize, dirty: &mut BTreeSet<u64>) {
        let Some(page) = self.pages.get_mut(&idx) else {
            return;
        };
        let bytes = Arc::make_mut(page);
        bytes[from..to].fill(0);
        if bytes.iter().all(|&b| b == 0) {
            self.pages.remove(&idx);
        }
        dirty.insert(idx);
    }

    /// Bytes of stored pages that lie within the size.
    fn stored_bytes(&self) -> u64 {
        self.pages.keys().map(|&idx| page_bytes_within(idx, self.size)).sum()
    }
}

fn page_bytes_within(idx: u64, size: u64) -> u64 {
    size.saturating_sub(idx * PAGE_SIZE_U64).min(PAGE_SIZE_U64)
}

#[derive(Clone, Copy)]
struct Meta {
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Meta {
    fn new(perm: u16, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta { perm, uid, gid, atime: now, mtime: now, ctime: now }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

enum Body {
    File {
        live: Contents,
        durable: Contents,
        /// Pages where `live` and `durable` may differ; everywhere else they share the page.
        dirty: BTreeSet<u64>,
        /// Live directory entries naming this file.
        links: u32,
    },
    Dir {
        live: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
        /// Live parent, for `..` and for refusing to move a directory into itself.
        parent: u64,
    },
}

struct Inode {
    meta: Meta,
    durable_meta: Meta,
    body: Body,
}

impl Inode {
    fn kind(&self) -> FileType {
        match self.body {
            Body::File { .. } => FileType::RegularFile,
            Body::Dir { .. } => FileType::Directory,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir { .. })
    }
}

enum Handle {
    File(u64),
    Dir {
        ino: u64,
        /// Taken when a listing starts (offset 0), so that offsets stay meaningful.
        listing: Vec<(u64, FileType, OsString)>,
    },
}

impl Handle {
    fn ino(&self) -> u64 {
        match *self {
            Handle::File(ino) | Handle::Dir { ino, .. } => ino,
        }
    }
}

type Fallible<T> = Result<T, Errno>;

/// The fields a SETATTR request asks to change.
struct AttrChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

struct State {
    inodes: HashMap<u64, Inode>,
    handles: HashMap<u64, Handle>,
    next_ino: u64,
    next_fh: u64,
    /// Inode numbers and file handles below these were issued before the last cut.
    first_ino: u64,
    first_fh: u64,
}

impl State {
    fn new(uid: u32, gid: u32) -> State {
        let meta = Meta::new(0o755, uid, gid);
        let root = Inode {
            meta,
            durable_meta: meta,
            body: Body::Dir { live: BTreeMap::new(), durable: BTreeMap::new(), parent: ROOT },
        };
        State {
            inodes: HashMap::from([(ROOT, root)]),
            handles: HashMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
            first_ino: ROOT + 1,
            first_fh: 1,
        }
    }

    fn inode(&self, ino: u64) -> Fallible<&Inode> {
        match self.inodes.get(&ino) {
            Some(inode) => Ok(inode),
            None if ino < self.first_ino => Err(Errno::EIO),
            None => Err(Errno::ENOENT),
        }
    }

    fn inode_mut(&mut self, ino: u64) -> Fallible<&mut Inode> {
        let first_ino = self.first_ino;
        match self.inodes.get_mut(&ino) {
            Some(inode) => Ok(inode),
            None if ino < first_ino => Err(Errno::EIO),
            None => Err(Errno::ENOENT),
        }
    }

    /// The handle `fh` of inode `ino`: one from before the cut, or an unknown one, is EIO.
    fn handle(&mut self, ino: u64, fh: u64) -> Fallible<&mut Handle> {
        self.inode(ino)?;
        match self.handles.get_mut(&fh) {
            Some(handle) if handle.ino() == ino => Ok(handle),
            _ => Err(Errno::EIO),
        }
    }

    fn entries(&self, dir: u64) -> Fallible<&BTreeMap<OsString, u64>> {
        match &self.inode(dir)?.body {
            Body::Dir { live, .. } => Ok(live),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Fallible<&mut BTreeMap<OsString, u64>> {
        match &mut self.inode_mut(dir)?.body {
            Body::Dir { live, .. } => Ok(live),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Fallible<(&mut Meta, &mut Contents, &mut BTreeSet<u64>)> {
        let inode = self.inode_mut(ino)?;
        match &mut inode.body {
            Body::File { live, dirty, .. } => Ok((&mut inode.meta, live, dirty)),
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    fn attr(&self, ino: u64) -> Fallible<FileAttr> {
        let inode = self.inode(ino)?;
        let (size, blocks, nlink) = match &inode.body {
            Body::File { live, links, .. } => (live.size, live.pages.len() as u64 * 8, *links),
            Body::Dir { live, .. } => {
                let subdirs = live
                    .values()
                    .filter(|child| self.inodes.get(child).is_some_and(Inode::is_dir))
                    .count();
                (PAGE_SIZE_U64, 8, 2 + subdirs as u32)
            }
        };
        let meta = &inode.meta;
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks,
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
            crtime: meta.ctime,
            kind: inode.kind(),
            perm: meta.perm,
            nlink,
            uid: meta.uid,
            gid: meta.gid,
            rdev: 0,
            blksize: PAGE_SIZE as u32,
            flags: 0,
        })
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Fallible<FileAttr> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        dir: bool,
        mode: u32,
        umask: u32,
        req: &Request,
    ) -> Fallible<u64> {
        if name.len() > MAX_NAME_LEN {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let meta = Meta::new((mode & !umask & 0o7777) as u16, req.uid(), req.gid());
        let body = if dir {
            Body::Dir { live: BTreeMap::new(), durable: BTreeMap::new(), parent }
        } else {
            Body::File {
                live: Contents::default(),
                durable: Contents::default(),
                dirty: BTreeSet::new(),
                links: 1,
            }
        };
        // A new inode's attributes are durable with the entry that names it.
        let inode = Inode { meta, durable_meta: meta, body };
        self.inodes.insert(ino, inode);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.inode_mut(parent)?.meta.touch();
        Ok(ino)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Fallible<()> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        match &mut self.inode_mut(ino)?.body {
            Body::File { .. } if dir => return Err(Errno::ENOTDIR),
            Body::File { links, .. } => *links = links.saturating_sub(1),
            Body::Dir { .. } if !dir => return Err(Errno::EISDIR),
            Body::Dir { live, .. } if !live.is_empty() => return Err(Errno::ENOTEMPTY),
            Body::Dir { .. } => {}
        }
        self.entries_mut(parent)?.remove(name);
        self.inode_mut(parent)?.meta.touch();
        self.collect_garbage();
        Ok(())
    }

    /// Whether `ino` is `ancestor` or lies below it in the live tree.
    fn is_within(&self, mut ino: u64, ancestor: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.inodes.get(&ino).map(|inode| &inode.body) {
                Some(Body::Dir { parent, .. }) if ino != ROOT => ino = *parent,
                _ => return false,
            }
        }
    }

    fn set_parent(&mut self, ino: u64, new_parent: u64) {
        if let Some(Inode { body: Body::Dir { parent, .. }, .. }) = self.inodes.get_mut(&ino) {
            *parent = new_parent;
        }
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Fallible<()> {
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let known = RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_NOREPLACE;
        if !known.contains(flags) || (exchange && noreplace) {
            return Err(Errno::EINVAL);
        }
        if new_name.len() > MAX_NAME_LEN {
            return Err(Errno::ENAMETOOLONG);
        }
        let src = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        let dst = self.entries(new_parent)?.get(new_name).copied();
        let src_dir = self.inode(src)?.is_dir();
        if src_dir && self.is_within(new_parent, src) {
            return Err(Errno::EINVAL);
        }
        if exchange {
            let dst = dst.ok_or(Errno::ENOENT)?;
            if self.inode(dst)?.is_dir() && self.is_within(parent, dst) {
                return Err(Errno::EINVAL);
            }
            self.entries_mut(parent)?.insert(name.to_owned(), dst);
            self.entries_mut(new_parent)?.insert(new_name.to_owned(), src);
            self.set_parent(src, new_parent);
            self.set_parent(dst, parent);
        } else {
            if dst == Some(src) {
                return Ok(());
            }
            if let Some(dst) = dst {
                if noreplace {
                    return Err(Errno::EEXIST);
                }
                match (&self.inode(dst)?.body, src_dir) {
                    (Body::File { .. }, true) => return Err(Errno::ENOTDIR),
                    (Body::Dir { .. }, false) => return Err(Errno::EISDIR),
                    (Body::Dir { live, .. }, true) if !live.is_empty() => {
                        return Err(Errno::ENOTEMPTY)
                    }
                    _ => {}
                }
                if let Body::File { links, .. } = &mut self.inode_mut(dst)?.body {
                    *links = links.saturating_sub(1);
                }
            }
            self.entries_mut(parent)?.remove(name);
            self.entries_mut(new_parent)?.insert(new_name.to_owned(), src);
            self.set_parent(src, new_parent);
        }
        self.inode_mut(parent)?.meta.touch();
        self.inode_mut(new_parent)?.meta.touch();
        self.inode_mut(src)?.meta.ctime = SystemTime::now();
        if dst.is_some() && !exchange {
            self.collect_garbage();
        }
        Ok(())
    }

    /// SETATTR: `fh` is given for ftruncate and friends.
    fn setattr(&mut self, ino: u64, fh: Option<u64>, change: AttrChange) -> Fallible<FileAttr> {
        if let Some(fh) = fh {
            self.handle(ino, fh)?;
        }
        if let Some(size) = change.size {
            let (meta, live, dirty) = self.file_mut(ino)?;
            live.set_size(size, dirty);
            meta.touch();
        }
        let meta = &mut self.inode_mut(ino)?.meta;
        let time = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        if let Some(mode) = change.mode {
            meta.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = change.uid {
            meta.uid = uid;
        }
        if let Some(gid) = change.gid {
            meta.gid = gid;
        }
        if let Some(atime) = change.atime {
            meta.atime = time(atime);
        }
        if let Some(mtime) = change.mtime {
            meta.mtime = time(mtime);
        }
        meta.ctime = SystemTime::now();
        self.attr(ino)
    }

    fn open(&mut self, ino: u64, dir: bool) -> Fallible<u64> {
        let handle = match (self.inode(ino)?.is_dir(), dir) {
            (false, false) => Handle::File(ino),
            (true, true) => Handle::Dir { ino, listing: Vec::new() },
            (true, false) => return Err(Errno::EISDIR),
            (false, true) => return Err(Errno::ENOTDIR),
        };
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, handle);
        Ok(fh)
    }

    fn release(&mut self, fh: u64) {
        if let Some(Handle::File(ino)) = self.handles.remove(&fh) {
            let unlinked = matches!(
                self.inodes.get(&ino),
                Some(Inode { body: Body::File { links: 0, .. }, .. })
            );
            if unlinked {
                self.collect_garbage();
            }
        }
    }

    fn read(&mut self, ino: u64, fh: u64, offset: u64, size: u32) -> Fallible<Vec<u8>> {
        self.handle(ino, fh)?;
        let (_, live, _) = self.file_mut(ino)?;
        Ok(live.read(offset, u64::from(size)))
    }

    fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Fallible<u32> {
        self.handle(ino, fh)?;
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > i64::MAX as u64) {
            return Err(Errno::EFBIG);
        }
        let (meta, live, dirty) = self.file_mut(ino)?;
        live.write(offset, data, dirty);
        meta.touch();
        Ok(len)
    }

    fn fallocate(&mut self, ino: u64, fh: u64, offset: u64, len: u64, mode: i32) -> Fallible<()> {
        self.handle(ino, fh)?;
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let (meta, live, dirty) = self.file_mut(ino)?;
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            // Space is never short here, so reserving it is only a size change.
            0 => {}
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => live.zero_range(offset, len, dirty),
            libc::FALLOC_FL_ZERO_RANGE => live.zero_range(offset, len, dirty),
            _ => return Err(Errno::EOPNOTSUPP),
        }
        if !keep_size && end > live.size {
            live.set_size(end, dirty);
        }
        meta.touch();
        Ok(())
    }

    /// The durable copy of `ino` becomes its live one: data and attributes for a file,
    /// entries and attributes for a directory.
    fn fsync(&mut self, ino: u64) -> Fallible<()> {
        let inode = self.inode_mut(ino)?;
        inode.durable_meta = inode.meta;
        let mut forgot_entries = false;
        match &mut inode.body {
            Body::File { live, durable, dirty, .. } => {
                for idx in std::mem::take(dirty) {
                    match live.pages.get(&idx) {
                        Some(page) => durable.pages.insert(idx, page.clone()),
                        None => durable.pages.remove(&idx),
                    };
                }
                durable.size = live.size;
            }
            Body::Dir { live, durable, .. } => {
                forgot_entries = durable.iter().any(|(name, ino)| live.get(name) != Some(ino));
                *durable = live.clone();
            }
        }
        if forgot_entries {
            self.collect_garbage();
        }
        Ok(())
    }

    fn listing(
        &mut self,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Fallible<Vec<(u64, FileType, OsString)>> {
        if offset == 0 {
            let (entries, parent) = match &self.inode(ino)?.body {
                Body::Dir { live, parent, .. } => (live, *parent),
                Body::File { .. } => return Err(Errno::ENOTDIR),
            };
            let mut listing = vec![
                (ino, FileType::Directory, OsString::from(".")),
                (parent, FileType::Directory, OsString::from("..")),
            ];
            for (name, &child) in entries {
                if let Some(inode) = self.inodes.get(&child) {
                    listing.push((child, inode.kind(), name.clone()));
                }
            }
            if let Handle::Dir { listing: kept, .. } = self.handle(ino, fh)? {
                *kept = listing;
            }
        }
        match self.handle(ino, fh)? {
            Handle::Dir { listing, .. } => {
                Ok(listing.iter().skip(offset as usize).cloned().collect())
            }
            Handle::File(_) => Err(Errno::ENOTDIR),
        }
    }

    /// Frees the inodes that no live or durable entry and no open handle can reach.
    fn collect_garbage(&mut self) {
        let mut reached: HashSet<u64> = HashSet::new();
        let mut stack: Vec<u64> = Vec::new();
        let roots = std::iter::once(ROOT).chain(self.handles.values().map(Handle::ino));
        for ino in roots {
            if reached.insert(ino) {
                stack.push(ino);
            }
        }
        while let Some(ino) = stack.pop() {
            if let Some(Inode { body: Body::Dir { live, durable, .. }, .. }) = self.inodes.get(&ino)
            {
                for &child in live.values().chain(durable.values()) {
                    if reached.insert(child) {
                        stack.push(child);
                    }
                }
            }
        }
        self.inodes.retain(|ino, _| reached.contains(ino));
    }

    /// Paths of the live tree, each with the inode it names.
    fn live_paths(&self) -> HashMap<PathBuf, u64> {
        let mut paths = HashMap::new();
        let mut stack = vec![(ROOT, PathBuf::new())];
        while let Some((dir, path)) = stack.pop() {
            let Some(Inode { body: Body::Dir { live, .. }, .. }) = self.inodes.get(&dir) else {
                continue;
            };
            for (name, &child) in live {
                let child_path = path.join(name);
                if self.inodes.get(&child).is_some_and(Inode::is_dir) {
                    stack.push((child, child_path.clone()));
                }
                paths.insert(child_path, child);
            }
        }
        paths
    }

    /// Replaces the live state by the durable one, under new inode numbers, and kills every
    /// open handle. Returns what was lost and the old numbers of the files.
    fn cut(&mut self) -> (CutStats, Vec<u64>) {
        let live_paths = self.live_paths();
        self.first_ino = self.next_ino;
        self.first_fh = self.next_fh;
        self.handles.clear();

        // Walk the durable tree breadth-first, by name, giving each inode its new number.
        let mut next_ino = self.next_ino;
        let mut renumbered: HashMap<u64, u64> = HashMap::from([(ROOT, ROOT)]);
        let mut new_entries: HashMap<u64, BTreeMap<OsString, u64>> = HashMap::new();
        let mut new_parents: HashMap<u64, u64> = HashMap::from([(ROOT, ROOT)]);
        let mut new_links: HashMap<u64, u32> = HashMap::new();
        let mut durable_paths: HashMap<PathBuf, u64> = HashMap::new();
        let mut queue = VecDeque::from([(ROOT, PathBuf::new())]);
        while let Some((old_dir, path)) = queue.pop_front() {
            let Some(&new_dir) = renumbered.get(&old_dir) else {
                continue;
            };
            let mut entries = BTreeMap::new();
            if let Some(Inode { body: Body::Dir { durable, .. }, .. }) = self.inodes.get(&old_dir) {
                for (name, &old) in durable {
                    let Some(child) = self.inodes.get(&old) else {
                        continue;
                    };
                    let new = match child.body {
                        Body::File { .. } => *renumbered.entry(old).or_insert_with(|| {
                            next_ino += 1;
                            next_ino - 1
                        }),
                        // A second name of one directory (or a cycle) is not kept.
                        Body::Dir { .. } if renumbered.contains_key(&old) => continue,
                        Body::Dir { .. } => {
                            let new = next_ino;
                            next_ino += 1;
                            renumbered.insert(old, new);
                            new_parents.insert(new, new_dir);
                            queue.push_back((old, path.join(name)));
                            new
                        }
                    };
                    *new_links.entry(new).or_default() += 1;
                    entries.insert(name.clone(), new);
                    durable_paths.insert(path.join(name), old);
                }
            }
            new_entries.insert(new_dir, entries);
        }
        self.next_ino = next_ino;

        let mut stats = CutStats {
            entries_dropped: live_paths
                .iter()
                .filter(|(path, ino)| durable_paths.get(*path) != Some(*ino))
                .count() as u64,
            ..CutStats::default()
        };
        let mut old_files = Vec::new();
        for (&old, inode) in &self.inodes {
            if let Body::File { live, durable, dirty, links } = &inode.body {
                old_files.push(old);
                if renumbered.contains_key(&old) {
                    let dirty_bytes: u64 =
                        dirty.iter().map(|&idx| page_bytes_within(idx, live.size)).sum();
                    stats.bytes_dropped += dirty_bytes;
                    if !dirty.is_empty() || live.size != durable.size {
                        stats.files_reverted += 1;
                    }
                } else if *links > 0 {
                    stats.bytes_dropped += live.stored_bytes();
                }
            }
        }

        let mut inodes = HashMap::with_capacity(renumbered.len());
        for (&old, &new) in &renumbered {
            let Some(inode) = self.inodes.get(&old) else {
                continue;
            };
            let body = match &inode.body {
                Body::File { durable, .. } => Body::File {
                    live: durable.clone(),
                    durable: durable.clone(),
                    dirty: BTreeSet::new(),
                    links: new_links.get(&new).copied().unwrap_or(0),
                },
                Body::Dir { .. } => {
                    let entries = new_entries.remove(&new).unwrap_or_default();
                    Body::Dir {
                        durable: entries.clone(),
                        live: entries,
                        parent: new_parents.get(&new).copied().unwrap_or(ROOT),
                    }
                }
            };
            let new_inode =
                Inode { meta: inode.durable_meta, durable_meta: inode.durable_meta, body };
            inodes.insert(new, new_inode);
        }
        self.inodes = inodes;
        (stats, old_files)
    }

    fn resident_pages(&self) -> u64 {
        let mut seen: HashSet<*const [u8; PAGE_SIZE]> = HashSet::new();
        for inode in self.inodes.values() {
            if let Body::File { live, durable, .. } = &inode.body {
                for page in live.pages.values().chain(durable.pages.values()) {
                    seen.insert(Arc::as_ptr(page));
                }
            }
        }
        seen.len() as u64
    }
}

/// The request side: each kernel request locks the state, applies, and replies.
struct PowerCutOps {
    state: Arc<Mutex<State>>,
}

impl PowerCutOps {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn reply_entry(reply: ReplyEntry, attr: Fallible<FileAttr>) {
    match attr {
        Ok(attr) => reply.entry_with_ttls(&TTL, &TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(reply: ReplyAttr, attr: Fallible<FileAttr>) {
    match attr {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Fallible<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for PowerCutOps {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.state().lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut state = self.state();
        let attr = match fh {
            Some(fh) => state.handle(ino.0, fh.0).map(|_| ()),
            None => Ok(()),
        }
        .and_then(|()| state.attr(ino.0));
        reply_attr(reply, attr);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange { mode, uid, gid, size, atime, mtime };
        let attr = self.state().setattr(ino.0, fh.map(|fh| fh.0), change);
        reply_attr(reply, attr);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let mut state = self.state();
        let attr =
            state.create(parent.0, name, false, mode, umask, req).and_then(|ino| state.attr(ino));
        reply_entry(reply, attr);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.state();
        let attr =
            state.create(parent.0, name, true, mode, umask, req).and_then(|ino| state.attr(ino));
        reply_entry(reply, attr);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.state().remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.state().rename(parent.0, name, newparent.0, newname, flags);
        reply_empty(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Never direct_io: shared writable mmap must go through the page cache.
        match self.state().open(ino.0, false) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(ino.0, fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(ino.0, fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Not durability: only tells a close of a descriptor from before the cut that it failed.
        let result = self.state().handle(ino.0, fh.0).map(|_| ());
        reply_empty(reply, result);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = state.handle(ino.0, fh.0).map(|_| ()).and_then(|()| state.fsync(ino.0));
        reply_empty(reply, result);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().open(ino.0, true) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.state().listing(ino.0, fh.0, offset) {
            Ok(listing) => listing,
            Err(e) => return reply.error(e),
        };
        for (i, (child, kind, name)) in listing.into_iter().enumerate() {
            let next_offset = offset + i as u64 + 1;
            if reply.add(INodeNo(child), next_offset, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state().release(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = state.handle(ino.0, fh.0).map(|_| ()).and_then(|()| state.fsync(ino.0));
        reply_empty(reply, result);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let state = self.state();
        if let Err(e) = state.inode(ino.0) {
            return reply.error(e);
        }
        let used_pages = state.resident_pages();
        let used_files = state.inodes.len() as u64;
        let free = STATFS_BLOCKS.saturating_sub(used_pages);
        let free_files = STATFS_FILES.saturating_sub(used_files);
        reply.statfs(
            STATFS_BLOCKS,
            free,
            free,
            STATFS_FILES,
            free_files,
            PAGE_SIZE as u32,
            MAX_NAME_LEN as u32,
            PAGE_SIZE as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply_empty(reply, self.state().inode(ino.0).map(|_| ()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let created = state.create(parent.0, name, false, mode, umask, req).and_then(|ino| {
            let fh = state.open(ino, false)?;
            Ok((state.attr(ino)?, fh))
        });
        match created {
            Ok((attr, fh)) => {
                reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.state().fallocate(ino.0, fh.0, offset, length, mode);
        reply_empty(reply, result);
    }
}
