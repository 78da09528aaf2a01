//! Flags of the doors' guards, shared by `node`, `up`, `manager` and `lb`: the cluster
//! secret (`--secret-file`, `--insecure`), the HTTP admin token, the connection, row and
//! idle limits; and the warnings for a door opened beyond loopback without them.
//!
//! Secure by default: without `--secret-file`, `up`, `manager` and `node` use (and on first
//! start create) `DATA_DIR/cluster.secret`, and `lb` uses the manager's default location or
//! refuses to start. Running without a secret takes `--insecure`, which says loudly what it
//! leaves open and is refused together with an admin token (see `protocol::authz`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::auth::AdminToken;
use protocol::limits::{DoorLimits, RowLimits};

use crate::secret_file::{self, SECRET_FILE_NAME};

/// The manager's default data directory (`--data-dir` of `up` and `manager`), where `lb`
/// looks for the cluster secret when it is given none.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// `--admin-token` / `--admin-token-file`: the bearer token the HTTP admin endpoints require.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AdminTokenArgs {
    /// Require `Authorization: Bearer TOKEN` on the HTTP admin endpoints (`/init`, `/add`,
    /// `/rm`, `/primary_elect`; a node's `/config`); without it or with another token they
    /// answer 401 and change nothing. Data endpoints stay open. Prefer --admin-token-file or
    /// the environment: a command line is visible to every local user.
    #[arg(long, env = "SHARDGATE_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// A file holding the admin token (surrounding whitespace ignored).
    #[arg(
        long,
        env = "SHARDGATE_ADMIN_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,
}

impl AdminTokenArgs {
    /// The token, if one was given; an empty one or an unreadable file is an error.
    pub fn token(&self) -> Result<Option<AdminToken>, String> {
        let Some((text, from)) = self.text()? else { return Ok(None) };
        AdminToken::new(&text).map(Some).ok_or_else(|| format!("{from} is empty"))
    }

    /// The token as given (for the nodes a spawner starts), checked as [`Self::token`] does.
    pub fn node_token(&self) -> Result<Option<lb::spawner::NodeToken>, String> {
        self.token()?;
        Ok(self.text()?.map(|(t, _)| lb::spawner::NodeToken(t.trim().to_string())))
    }

    /// The token's text and where it came from, if one was given.
    fn text(&self) -> Result<Option<(String, String)>, String> {
        Ok(Some(match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => (t.clone(), "--admin-token".to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the admin token from {}: {e}", path.display())
                })?;
                (text, format!("the admin token file {}", path.display()))
            }
            (None, None) => return Ok(None),
        }))
    }
}

/// `--secret-file` / `--insecure`: how a process's binary doors and calls authenticate.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecretArgs {
    /// The cluster secret: every binary-protocol connection (nodes, routers, the manager)
    /// proves that both ends know it, without sending it. Default: `up`, `manager` and `node`
    /// use DATA_DIR/cluster.secret, created on first start (32 random bytes, hex, mode
    /// 0600); `lb` uses ./data/cluster.secret (the manager's default) when it exists.
    #[arg(long, env = "SHARDGATE_SECRET_FILE", value_name = "PATH", conflicts_with = "insecure")]
    pub secret_file: Option<PathBuf>,
    /// Run without a cluster secret: every binary door (nodes, the router's --binary, the
    /// manager's control port) then serves anyone who can connect: reads, writes,
    /// configuration, promotions, snapshots, membership changes. Only for a network you
    /// trust completely; refused together with an admin token.
    #[arg(long)]
    pub insecure: bool,
}

/// The cluster secret a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// The secret in this file (an absolute path, so children find it from anywhere).
    File(PathBuf),
    /// None: `--insecure`.
    Insecure,
}

/// Where `--insecure` may not go: with an admin token, which the binary doors could not
/// enforce (see `protocol::authz`).
fn refuse_insecure_with_token(has_admin_token: bool) -> Result<(), String> {
    if has_admin_token {
        return Err("--insecure cannot be combined with --admin-token (or \
                    --admin-token-file, SHARDGATE_ADMIN_TOKEN): without a cluster secret the \
                    binary doors cannot tell who asks, so anyone could make the changes the \
                    token guards through them; drop --insecure (a cluster secret is then \
                    used, created in the data dir on first start)"
            .into());
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

impl SecretArgs {
    /// The secret of `up`, `manager` and `node`: `--secret-file` (created when missing if
    /// `create_given`), else `DATA_DIR/cluster.secret`, created on first start; or none
    /// with `--insecure`. Installs it as this process's secret (see [`install`]).
    pub fn establish(
        &self,
        data_dir: &Path,
        create_given: bool,
        has_admin_token: bool,
        role: &str,
    ) -> Result<Secret, String> {
        if self.insecure {
            refuse_insecure_with_token(has_admin_token)?;
            return install(Secret::Insecure, role);
        }
        let (path, create) = match &self.secret_file {
            Some(p) => (absolute(p)?, create_given),
            None => (absolute(&data_dir.join(SECRET_FILE_NAME))?, true),
        };
        if create {
            let (_, created) = secret_file::load_or_create_reporting(&path)?;
            if created {
                tracing::info!(
                    file = %path.display(),
                    "{role}: created the cluster secret; only processes given this file \
                     (--secret-file or SHARDGATE_SECRET_FILE) can talk to its binary doors"
                );
            }
        }
        install(Secret::File(path), role)
    }

    /// The secret of `lb`: `--secret-file`, else the manager's default location when the
    /// file is there; or none with `--insecure`. Without any of them: an error naming the
    /// flags.
    pub fn find(&self, has_admin_token: bool, role: &str) -> Result<Secret, String> {
        if self.insecure {
            refuse_insecure_with_token(has_admin_token)?;
            return install(Secret::Insecure, role);
        }
        if let Some(p) = &self.secret_file {
            return install(Secret::File(absolute(p)?), role);
        }
        let default = Path::new(DEFAULT_DATA_DIR).join(SECRET_FILE_NAME);
        if default.exists() {
            return install(Secret::File(absolute(&default)?), role);
        }
        Err(format!(
            "{role}: no cluster secret: give the manager's secret file with --secret-file PATH \
             (or SHARDGATE_SECRET_FILE; the manager creates DATA_DIR/cluster.secret, and \
             {} is looked for by default), or run without one with --insecure (every binary \
             door then serves anyone who can connect)",
            default.display()
        ))
    }
}

/// Makes `secret` this process's cluster secret (read from its file), or says loudly what
/// running without one leaves open.
pub fn install(secret: Secret, role: &str) -> Result<Secret, String> {
    match &secret {
        Secret::File(path) => {
            let bytes = secret_file::load(path)?;
            if secret_file::readable_by_others(path) {
                tracing::warn!(
                    file = %path.display(),
                    "the cluster secret file can be read by other users: chmod 600 it"
                );
            }
            if !protocol::auth::set_cluster_secret(&bytes) {
                return Err("a cluster secret was already set in this process".into());
            }
        }
        Secret::Insecure => tracing::warn!(
            "{role} runs with --insecure: no cluster secret. Every binary door of this process \
             and of the nodes it starts (nodes' --listen, the router's --binary, the shard \
             manager's control port) serves anyone who can connect: they can read and write \
             every row, configure nodes, promote replicas, install snapshots and add or remove \
             servers. Use it only on a network you trust completely."
        ),
    }
    Ok(secret)
}

/// The secret of a process that starts clusters of its own and talks to them (`bench`,
/// `analyze`): the one in `SHARDGATE_SECRET_FILE` if set (to reach a running cluster), else
/// a random one; installed as this process's secret on first use.
pub fn process_secret() -> Result<Vec<u8>, String> {
    static SECRET: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();
    SECRET
        .get_or_init(|| {
            let secret = match std::env::var_os("SHARDGATE_SECRET_FILE") {
                Some(p) => secret_file::load(Path::new(&p))?,
                None => {
                    let bytes: [u8; secret_file::SECRET_BYTES] = rand::random();
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes()
                }
            };
            protocol::auth::set_cluster_secret(&secret);
            Ok(secret)
        })
        .clone()
}

/// Writes [`process_secret`] to `dir/cluster.secret` (mode 0600) for the processes this
/// one starts there, and returns that file. A file already there must hold the same secret
/// (it is never overwritten: it may be another cluster's).
pub fn share_secret(dir: &Path) -> Result<PathBuf, String> {
    let secret = process_secret()?;
    let path = absolute(&dir.join(SECRET_FILE_NAME))?;
    if path.exists() {
        if secret_file::load(&path)? != secret {
            return Err(format!(
                "{} holds another cluster secret than this process's; give it in \
                 SHARDGATE_SECRET_FILE, or use another directory",
                path.display()
            ));
        }
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        f.write_all(&secret)?;
        f.write_all(b"\n")?;
        f.sync_all()
    };
    write().map_err(|e| format!("cannot write the cluster secret {}: {e}", path.display()))?;
    Ok(path)
}

/// The limits of a process's doors.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Most concurrent connections per listener (the HTTP door and the binary door each).
    /// Beyond it a new HTTP connection is answered 503 with a JSON error and closed, a new
    /// binary connection gets a handshake error; connections already open are unaffected.
    #[arg(long, default_value_t = protocol::limits::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// HTTP idle timeout, in milliseconds: a request's head must be complete within this
    /// time from the connection's start or the end of the previous answer (slowloris clients
    /// and idle keep-alive connections are closed), and an answer's write may stall this
    /// long. A body has its own limit of 10 s once the head is in.
    #[arg(long, default_value_t = protocol::limits::DEFAULT_IDLE_TIMEOUT.as_millis() as u64)]
    pub idle_timeout_ms: u64,
    /// Most rows in one `/write` (413 beyond it, nothing written).
    #[arg(long, default_value_t = protocol::limits::DEFAULT_MAX_WRITE_ROWS)]
    pub max_write_rows: usize,
    /// Most rows one `/read` answers with (413 beyond it: ask for a narrower range).
    #[arg(long, default_value_t = protocol::limits::DEFAULT_MAX_READ_ROWS)]
    pub max_read_rows: usize,
}

impl LimitArgs {
    /// The limits, checked.
    pub fn limits(&self) -> Result<DoorLimits, String> {
        for (flag, v) in [
            ("--max-connections", self.max_connections),
            ("--max-write-rows", self.max_write_rows),
            ("--max-read-rows", self.max_read_rows),
        ] {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.idle_timeout_ms == 0 {
            return Err("--idle-timeout-ms must be positive".into());
        }
        Ok(DoorLimits {
            max_connections: self.max_connections,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            rows: RowLimits {
                max_write_rows: self.max_write_rows,
                max_read_rows: self.max_read_rows,
            },
        })
    }
}

/// What a listener serves, for the warning about exposing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    /// A binary-protocol door (node, router, the manager's control door): guarded by the
    /// cluster secret.
    Binary,
    /// An HTTP door whose admin endpoints the admin token guards.
    Http,
}

/// Warns (on stderr, through tracing) when `addr` is not a loopback address and the door
/// listening there is open to anyone who reaches it: a binary door without the cluster
/// secret, an HTTP door without the admin token.
pub fn warn_if_exposed(what: &str, addr: SocketAddr, door: Door, has_admin_token: bool) {
    if let Some(warning) =
        exposure(addr, door, protocol::auth::has_cluster_secret(), has_admin_token)
    {
        tracing::warn!(listener = what, %addr, "{warning}");
    }
}

/// The warning for a door at `addr`, if it deserves one (pure, for the tests).
fn exposure(addr: SocketAddr, door: Door, has_secret: bool, has_token: bool) -> Option<String> {
    if addr.ip().is_loopback() {
        return None;
    }
    match door {
        Door::Binary if !has_secret => Some(format!(
            "listening on {addr}, beyond loopback, without a cluster secret (--insecure): \
             anyone who can reach this port can configure, promote, write and read; drop \
             --insecure to use the cluster secret"
        )),
        Door::Http if !has_token => Some(format!(
            "HTTP listening on {addr}, beyond loopback, without an admin token: anyone who can \
             reach it can call the admin endpoints (a balancer's /init, /add, /rm, \
             /primary_elect; a node's /config); give --admin-token-file PATH or \
             SHARDGATE_ADMIN_TOKEN"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_doors_beyond_loopback_without_their_guard_are_warned_about() {
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:5000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        let lan: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        assert_eq!(exposure(lo, Door::Binary, false, false), None);
        assert_eq!(exposure(lo6, Door::Http, false, false), None);
        assert!(exposure(any, Door::Binary, false, true).unwrap().contains("cluster secret"));
        assert_eq!(exposure(any, Door::Binary, true, false), None);
        assert!(exposure(lan, Door::Http, true, false).unwrap().contains("admin token"));
        assert_eq!(exposure(lan, Door::Http, false, true), None);
    }

    #[test]
    fn insecure_is_refused_with_an_admin_token() {
        assert!(refuse_insecure_with_token(false).is_ok());
        let e = refuse_insecure_with_token(true).unwrap_err();
        assert!(e.contains("--insecure") && e.contains("--admin-token"), "{e}");
    }

    #[test]
    fn the_token_comes_from_the_flag_or_a_file_and_is_never_empty() {
        assert!(AdminTokenArgs::default().token().unwrap().is_none());
        let flag = AdminTokenArgs { admin_token: Some("abc".into()), admin_token_file: None };
        assert!(flag.token().unwrap().unwrap().matches(b"abc"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let file = AdminTokenArgs { admin_token: None, admin_token_file: Some(path.clone()) };
        assert!(file.token().unwrap().unwrap().matches(b"from-file"));
        std::fs::write(&path, " \n").unwrap();
        assert!(file.token().unwrap_err().contains("is empty"));
        let missing =
            AdminTokenArgs { admin_token: None, admin_token_file: Some(dir.path().join("no")) };
        assert!(missing.token().unwrap_err().contains("cannot read"));
    }

    /// The secret file's own tests (in `secret_file.rs` they would run again in every
    /// end-to-end test binary, which includes that file).
    mod secret_files {
        use std::os::unix::fs::PermissionsExt;

        use crate::secret_file::*;
        #[test]
        fn a_secret_is_created_once_private_and_then_kept() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sub").join(SECRET_FILE_NAME);
            let (first, created) = load_or_create_reporting(&path).unwrap();
            assert!(created);
            assert_eq!(first.len(), 2 * SECRET_BYTES);
            assert!(first.iter().all(u8::is_ascii_hexdigit));
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert!(!readable_by_others(&path));
            let (again, created) = load_or_create_reporting(&path).unwrap();
            assert_eq!((again, created), (first.clone(), false));
            // Nothing but the secret is left in the directory.
            let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
            assert_eq!(names.len(), 1);
            // Many at once: one secret for all.
            let other = dir.path().join("race").join(SECRET_FILE_NAME);
            let all: Vec<Vec<u8>> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| load_or_create_reporting(&other).unwrap().0))
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert!(all.windows(2).all(|w| w[0] == w[1]));
        }

        #[test]
        fn an_empty_or_missing_secret_is_an_error() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(SECRET_FILE_NAME);
            assert!(load(&path).unwrap_err().contains("cannot read"));
            std::fs::write(&path, " \n").unwrap();
            assert!(load(&path).unwrap_err().contains("is empty"));
            assert!(load_or_create_reporting(&path).unwrap_err().contains("is empty"));
            std::fs::write(&path, "  pass phrase\n").unwrap();
            assert_eq!(load(&path).unwrap(), b"pass phrase");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(readable_by_others(&path));
        }
    }
}
