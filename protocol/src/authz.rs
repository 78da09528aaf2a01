//! The one authorization rule of every door: who may change the cluster.
//!
//! Whatever can change the cluster, rather than just its data (a node's configuration; a
//! shard's epoch, role or log through the replication commands; membership; the database
//! admin operations), is allowed only to
//! - a binary-protocol session authenticated with the cluster secret: in a process that has
//!   one, every session is (its handshake refused anyone who could not prove the secret, see
//!   [`crate::auth`]);
//! - an HTTP request that carries the admin token, when the door has one (without one the
//!   HTTP admin endpoints are open: the contract's clients send no credentials).
//!
//! A process without a cluster secret (`--insecure`) has unauthenticated sessions: it takes
//! such requests from them only while no admin token is set, since the token would
//! otherwise be one binary connection away from useless. (The command line refuses
//! `--insecure` with `--admin-token` outright; this keeps library users to the same rule.)
//!
//! Every door calls [`authorize`]: the router's HTTP and binary doors, a node's HTTP `/config`
//! and its binary door, the shard manager's control port.

use crate::auth::{AdminRefusal, AdminToken};
use crate::{AdminOp, ErrorBody, Request};

/// The HTTP endpoints that change the cluster, on a router (`/init`, `/add`, `/rm`,
/// `/primary_elect`; and `/config`, which a router forwards to a node) and on a node
/// (`/config`).
pub const ADMIN_PATHS: &[&str] = &["/init", "/add", "/rm", "/primary_elect", "/config"];

/// Who asks, as the door saw them.
#[derive(Clone, Copy, Debug)]
pub enum Caller<'a> {
    /// A binary-protocol session (authenticated by its handshake when this process has a
    /// cluster secret).
    Session,
    /// An HTTP request, with the value of its `Authorization` header.
    Http {
        /// The `Authorization` header, if any.
        authorization: Option<&'a [u8]>,
    },
}

/// Whether `caller` may make the change `what` (an endpoint's path or a request's name, for
/// the refusal's message) at a door guarded by `admin_token`; the refusal (a 401) otherwise.
/// See the module doc for the rule.
pub fn authorize(
    caller: Caller<'_>,
    what: &str,
    admin_token: Option<&AdminToken>,
) -> Result<(), AdminRefusal> {
    match (caller, admin_token) {
        (_, None) => Ok(()),
        (Caller::Http { authorization }, Some(token)) => token.check(authorization, what),
        (Caller::Session, Some(_)) if crate::auth::has_cluster_secret() => Ok(()),
        (Caller::Session, Some(_)) => Err(AdminRefusal {
            error: ErrorBody::unauthorized(format!(
                "'{what}' changes the cluster: this process has no cluster secret, so its \
                 binary sessions are unauthenticated, and with an admin token set it takes \
                 such requests only over HTTP with the token"
            )),
            challenge: "Bearer realm=\"shardgate\"",
        }),
    }
}

/// Whether `path` is an HTTP endpoint that changes the cluster ([`ADMIN_PATHS`]).
pub fn is_admin_path(path: &str) -> bool {
    ADMIN_PATHS.contains(&path)
}

/// Whether a database admin operation changes something (all but `/status`).
pub fn admin_op_changes(op: AdminOp) -> bool {
    !matches!(op, AdminOp::Status)
}

/// Whether a binary-protocol request can change the cluster rather than just its data:
/// a node's configuration, the replication commands, a router's admin operations, and a
/// stage-1 forward of an admin path.
pub fn changes_cluster(req: &Request) -> bool {
    match req {
        Request::Config(_)
        | Request::Adopt(_)
        | Request::Promote(_)
        | Request::Follow(_)
        | Request::Append(_)
        | Request::Snapshot(_) => true,
        Request::DbAdmin(a) => admin_op_changes(a.op),
        Request::Forward(f) => {
            is_admin_path(f.path.split_once('?').map_or(f.path.as_str(), |(p, _)| p))
        }
        _ => false,
    }
}

/// [`authorize`] of a binary-protocol request: requests that only touch data pass; the
/// others need an authenticated session (or no admin token). The refusal is a 401 answer.
pub fn authorize_request(req: &Request, admin_token: Option<&AdminToken>) -> Result<(), ErrorBody> {
    if !changes_cluster(req) {
        return Ok(());
    }
    authorize(Caller::Session, req.name(), admin_token).map_err(|r| r.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdoptReq, CopyReq, DbAdminReq, ForwardReq};

    #[test]
    fn what_changes_the_cluster() {
        let adopt = Request::Adopt(AdoptReq { shard: "sh1".into(), epoch: 1 });
        assert!(changes_cluster(&adopt));
        assert!(!changes_cluster(&Request::Copy(CopyReq { shards: vec![] })));
        assert!(!changes_cluster(&Request::Home));
        let admin = |op| Request::DbAdmin(DbAdminReq { op, body: String::new() });
        assert!(changes_cluster(&admin(AdminOp::PrimaryElect)));
        assert!(!changes_cluster(&admin(AdminOp::Status)));
        let forward = |path: &str| {
            Request::Forward(ForwardReq { method: "POST".into(), path: path.into(), body: vec![] })
        };
        assert!(changes_cluster(&forward("/config")));
        assert!(changes_cluster(&forward("/config?x=1")));
        assert!(!changes_cluster(&forward("/home")));
    }

    #[test]
    fn http_needs_the_token_when_there_is_one() {
        let t = AdminToken::new("tok").unwrap();
        let http = |h: Option<&'static [u8]>| Caller::Http { authorization: h };
        assert!(authorize(http(None), "/init", None).is_ok());
        assert!(authorize(http(None), "/init", Some(&t)).is_err());
        assert!(authorize(http(Some(b"Bearer nope")), "/init", Some(&t)).is_err());
        assert!(authorize(http(Some(b"Bearer tok")), "/init", Some(&t)).is_ok());
        // Sessions: open without a token; with one, only when the handshake authenticated
        // them with the process's cluster secret.
        assert!(authorize(Caller::Session, "promote", None).is_ok());
        let session = authorize(Caller::Session, "promote", Some(&t));
        assert_eq!(session.is_ok(), crate::auth::has_cluster_secret());
    }
}
