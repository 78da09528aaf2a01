//! Flags of the doors' guards, shared by `node`, `up` and `lb`: the HTTP admin token, the
//! connection, row and idle limits; and the warnings for a door opened beyond loopback
//! without them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use protocol::auth::AdminToken;
use protocol::limits::{DoorLimits, RowLimits};

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
        let (text, from) = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => (t.clone(), "--admin-token".to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the admin token from {}: {e}", path.display())
                })?;
                (text, format!("the admin token file {}", path.display()))
            }
            (None, None) => return Ok(None),
        };
        AdminToken::new(&text).map(Some).ok_or_else(|| format!("{from} is empty"))
    }
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
            "listening on {addr}, beyond loopback, without a cluster secret: anyone who can \
             reach this port can configure, promote, write and read; start every process of the \
             cluster with SHARDGATE_SECRET_FILE=/path/to/secret"
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
}
