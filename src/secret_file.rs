//! The cluster secret on disk: 32 random bytes written as 64 hex digits and a line end, in a
//! file of mode 0600, created once and then reused as it is. (Also compiled into the
//! end-to-end tests' harness, `tests/common`, which gives its clusters a secret the same way.)

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The secret's file name in a data directory.
pub const SECRET_FILE_NAME: &str = "cluster.secret";
/// Random bytes in a generated secret.
pub const SECRET_BYTES: usize = 32;

/// The secret in `path`: its text without surrounding whitespace (the bytes both ends of a
/// handshake key their proofs with). A missing, unreadable or empty file is an error.
pub fn load(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read the cluster secret from {}: {e}", path.display()))?;
    let secret = text.trim_ascii();
    if secret.is_empty() {
        return Err(format!("the cluster secret file {} is empty", path.display()));
    }
    Ok(secret.to_vec())
}

/// Whether the file at `path` may be read or written by others than its owner (a secret
/// should not be).
pub fn readable_by_others(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// [`load`], creating the file first (and its directory) when it does not exist; also says
/// whether it was created. Safe against another process creating it at the same moment: the
/// file is written whole under a temporary name, then linked to `path` only if nothing is
/// there yet, so every process ends up with the same secret.
pub fn load_or_create_reporting(path: &Path) -> Result<(Vec<u8>, bool), String> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => return load(path).map(|s| (s, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot look at {}: {e}", path.display())),
    }
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
    let nonce: u64 = rand::random();
    let tmp = dir.join(format!(".{SECRET_FILE_NAME}.{}.{nonce:016x}", std::process::id()));
    let written = (|| {
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let bytes: [u8; SECRET_BYTES] = rand::random();
        let mut text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    let created = match linked {
        Ok(()) => true,
        // Another process made it first: theirs is the secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(fail("create the cluster secret", e)),
    };
    if created {
        // The new name survives a power cut once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    load(path).map(|s| (s, created))
}
