//! Cluster authentication: every process of one cluster shares a secret, and the handshake
//! of every binary-protocol connection proves on both sides that they know it, without
//! sending it (HMAC-SHA256 over both sides' random nonces; the proofs are compared in
//! constant time).
//!
//! ```text
//! caller  -> Hello { magic, version, peer, nonce_c }
//! server  -> HelloReply::Challenge { nonce_s, proof_s = HMAC(k, "server" | nonce_c | nonce_s) }
//! caller     checks proof_s (the server knows the secret), then
//! caller  -> AuthProof { proof_c = HMAC(k, "client" | nonce_s | nonce_c) }
//! server     checks proof_c, then
//! server  -> HelloReply::Ok { version, name }
//! ```
//!
//! Both sides then derive the session's keys from the secret and the two nonces
//! ([`session_keys`]), one per direction, and every later frame is sealed with them (see
//! [`crate::codec`]): the handshake proves who is at the other end, the keys make sure every
//! frame after it comes from there, unchanged, unread by anyone on the way, and in order.
//!
//! The secret is per process ([`set_cluster_secret`], done once at start from a file or the
//! environment). A server with a secret refuses callers that cannot prove it; a caller with a
//! secret refuses a server that does not prove it. Without a secret on either side the
//! handshake is the plain one.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Length of the nonces each side picks.
pub const NONCE_LEN: usize = 16;
/// Length of a proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;

/// The process's cluster secret, if any.
static SECRET: OnceLock<Vec<u8>> = OnceLock::new();

/// Sets this process's cluster secret (the first call wins; returns whether this one did).
/// An empty secret is refused.
pub fn set_cluster_secret(secret: &[u8]) -> bool {
    !secret.is_empty() && SECRET.set(secret.to_vec()).is_ok()
}

/// Whether this process has a cluster secret.
pub fn has_cluster_secret() -> bool {
    SECRET.get().is_some()
}

pub(crate) fn secret() -> Option<&'static [u8]> {
    SECRET.get().map(Vec::as_slice)
}

/// The keys of one authenticated connection, one per direction.
pub struct SessionKeys {
    /// Seals the caller's frames (requests).
    pub caller_to_server: [u8; crate::codec::SESSION_KEY_LEN],
    /// Seals the server's frames (answers).
    pub server_to_caller: [u8; crate::codec::SESSION_KEY_LEN],
}

/// The session keys of the connection whose handshake used the caller nonce `caller` and the
/// server nonce `server`: HKDF-SHA256 (RFC 5869) with the cluster secret as input key
/// material, both nonces as salt, and a label per direction as info. Fresh nonces on both
/// sides make fresh keys for every connection, so frames of one cannot be replayed into
/// another, even one between the same two processes.
pub fn session_keys(secret: &[u8], caller: &[u8], server: &[u8]) -> SessionKeys {
    let mut salt = [0u8; 2 * NONCE_LEN];
    let (c, s) = salt.split_at_mut(NONCE_LEN);
    c.copy_from_slice(&caller[..NONCE_LEN.min(caller.len())]);
    s.copy_from_slice(&server[..NONCE_LEN.min(server.len())]);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), secret);
    let key = |label: &[u8]| {
        let mut k = [0u8; crate::codec::SESSION_KEY_LEN];
        // 32 bytes are far below HKDF-SHA256's limit of 255 * 32; `expand` cannot fail.
        if hk.expand(label, &mut k).is_err() {
            unreachable!("HKDF-SHA256 gives up to 8160 bytes");
        }
        k
    };
    SessionKeys {
        caller_to_server: key(b"shardgate-session-v1 caller->server"),
        server_to_caller: key(b"shardgate-session-v1 server->caller"),
    }
}

/// The caller's answer to a challenge.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuthProof {
    /// HMAC(secret, "client" | server nonce | caller nonce).
    pub proof: [u8; PROOF_LEN],
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

fn mac(secret: &[u8], role: &[u8], first: &[u8], second: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    m.update(b"shardgate-auth-v1 ");
    m.update(role);
    m.update(first);
    m.update(second);
    m
}

/// The server's proof for a caller nonce and its own.
pub fn server_proof(secret: &[u8], caller: &[u8], server: &[u8]) -> [u8; PROOF_LEN] {
    mac(secret, b"server", caller, server).finalize().into_bytes().into()
}

/// The caller's proof for the server's nonce and its own.
pub fn caller_proof(secret: &[u8], server: &[u8], caller: &[u8]) -> [u8; PROOF_LEN] {
    mac(secret, b"client", server, caller).finalize().into_bytes().into()
}

/// Checks the server's proof, in constant time.
pub fn verify_server(secret: &[u8], caller: &[u8], server: &[u8], proof: &[u8]) -> bool {
    mac(secret, b"server", caller, server).verify_slice(proof).is_ok()
}

/// Checks the caller's proof, in constant time.
pub fn verify_caller(secret: &[u8], server: &[u8], caller: &[u8], proof: &[u8]) -> bool {
    mac(secret, b"client", server, caller).verify_slice(proof).is_ok()
}

/// The bearer token of the HTTP admin endpoints (`--admin-token`). It is kept only as a keyed
/// hash (the key random per process), and a presented token is hashed the same way and
/// compared in constant time, so neither its bytes nor its length leak through timing.
/// `Debug` does not show it.
#[derive(Clone)]
pub struct AdminToken {
    key: [u8; 32],
    digest: [u8; PROOF_LEN],
}

impl AdminToken {
    /// The token `token` (surrounding whitespace removed); `None` when it is empty.
    pub fn new(token: &str) -> Option<AdminToken> {
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        let key: [u8; 32] = rand::random();
        let digest = Self::hash(&key, token.as_bytes()).finalize().into_bytes().into();
        Some(AdminToken { key, digest })
    }

    fn hash(key: &[u8], token: &[u8]) -> Hmac<Sha256> {
        let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        m.update(b"shardgate-admin-token-v1 ");
        m.update(token);
        m
    }

    /// Whether `presented` is the token, in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        Self::hash(&self.key, presented).verify_slice(&self.digest).is_ok()
    }

    /// Admits a request to the admin endpoint `path` whose `Authorization` header is
    /// `header`, or says why not (a 401 and its `WWW-Authenticate` challenge, RFC 6750).
    pub fn check(&self, header: Option<&[u8]>, path: &str) -> Result<(), AdminRefusal> {
        match header.and_then(bearer) {
            Some(presented) if self.matches(presented) => Ok(()),
            Some(_) => Err(AdminRefusal {
                error: crate::ErrorBody::unauthorized(format!(
                    "the admin token presented for '{path}' is wrong"
                )),
                challenge: "Bearer realm=\"shardgate\", error=\"invalid_token\"",
            }),
            None => Err(AdminRefusal {
                error: crate::ErrorBody::unauthorized(format!(
                    "'{path}' is an admin endpoint: send the admin token as \
                     'Authorization: Bearer TOKEN'"
                )),
                challenge: "Bearer realm=\"shardgate\"",
            }),
        }
    }
}

/// Why a request to an HTTP admin endpoint was refused.
#[derive(Clone, Debug)]
pub struct AdminRefusal {
    /// The 401 to answer with.
    pub error: crate::ErrorBody,
    /// The value of the answer's `WWW-Authenticate` header.
    pub challenge: &'static str,
}

/// The credentials of a `Bearer` `Authorization` header value, if it is one.
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_check_only_with_the_same_secret_and_nonces() {
        let (c, s) = (nonce(), nonce());
        let p = server_proof(b"k1", &c, &s);
        assert!(verify_server(b"k1", &c, &s, &p));
        assert!(!verify_server(b"k2", &c, &s, &p));
        assert!(!verify_server(b"k1", &s, &c, &p), "nonces in the other order");
        let q = caller_proof(b"k1", &s, &c);
        assert!(verify_caller(b"k1", &s, &c, &q));
        assert!(!verify_caller(b"k1", &s, &c, &p), "a server proof is not a caller proof");
        assert_ne!(nonce(), nonce());
    }

    #[test]
    fn session_keys_differ_per_direction_and_per_connection() {
        let (c, s) = (nonce(), nonce());
        let k = session_keys(b"k1", &c, &s);
        assert_ne!(k.caller_to_server, k.server_to_caller);
        let again = session_keys(b"k1", &c, &s);
        assert_eq!(k.caller_to_server, again.caller_to_server, "both sides derive the same");
        assert_ne!(k.caller_to_server, session_keys(b"k2", &c, &s).caller_to_server);
        assert_ne!(k.caller_to_server, session_keys(b"k1", &s, &c).caller_to_server);
        assert_ne!(k.caller_to_server, session_keys(b"k1", &c, &nonce()).caller_to_server);
    }

    #[test]
    fn admin_tokens_match_only_themselves_as_bearer_credentials() {
        assert!(AdminToken::new("  \n").is_none());
        let t = AdminToken::new(" s3cret\n").unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret "));
        assert!(!t.matches(b""));
        // `Bearer TOKEN`, the scheme in any case.
        let authorizes = |h: Option<&[u8]>| t.check(h, "/init").is_ok();
        assert!(authorizes(Some(b"Bearer s3cret")));
        assert!(authorizes(Some(b"bearer   s3cret ")));
        assert!(!authorizes(Some(b"Basic s3cret")));
        assert!(!authorizes(Some(b"Bearers3cret")));
        assert!(!authorizes(Some(b"Bearer")));
        assert!(!authorizes(Some(b"Bearer wrong")));
        assert!(!authorizes(None));
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
        let missing = t.check(None, "/init").unwrap_err();
        assert_eq!(missing.error.http_status(), 401);
        assert!(missing.error.message.contains("'/init' is an admin endpoint"));
        assert_eq!(missing.challenge, "Bearer realm=\"shardgate\"");
        let wrong = t.check(Some(b"Bearer nope"), "/rm").unwrap_err();
        assert!(wrong.challenge.contains("invalid_token"), "{}", wrong.challenge);
    }
}
