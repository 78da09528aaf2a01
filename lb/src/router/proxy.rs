//! Forwarding one stage-1 request to one replica: a [`Request::Forward`] over the binary
//! protocol, answered by the node exactly as its HTTP shim would answer (status and JSON
//! body). The call rides on the router's pipelined connection to that node (`client::Pool`,
//! shared with the database calls), so many requests are in flight on one socket and queued
//! ones share a write. The request is kept whole, so a failed attempt can be sent again to
//! the next replica.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use client::CallError;
use hyper::{Method, StatusCode};
use protocol::{ErrorBody, ForwardReq, Request, Response};
use tokio::time::Instant;

/// A request as the router forwards it.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub method: Method,
    /// Path and query, as the client sent them.
    pub path_and_query: String,
    pub body: Bytes,
}

/// A replica's answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: StatusCode,
    /// JSON text, or empty (`/heartbeat`).
    pub body: Bytes,
}

/// Why an attempt failed.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// No connection could be opened: nothing was sent.
    Connect(client::Error),
    /// The connection broke, or no answer came in time: the replica may have run it.
    Call(CallError),
    /// The replica refused the request with a typed error (its answer, not a failure of
    /// the transport).
    Refused(ErrorBody),
    /// The request cannot be sent at all (too large for a frame): nothing was sent, and no
    /// other replica would take it either.
    Unsendable(protocol::Error),
    /// The replica answered with something that is not an answer to a forward.
    Unexpected(String),
}

impl ForwardError {
    /// Whether the request may be tried on another replica: always when it was not sent,
    /// otherwise only for methods that are safe to repeat.
    pub fn retryable(&self, method: &Method) -> bool {
        match self {
            ForwardError::Connect(_) => true,
            ForwardError::Call(e) => e.is_retryable() && is_idempotent(method),
            ForwardError::Refused(_)
            | ForwardError::Unsendable(_)
            | ForwardError::Unexpected(_) => false,
        }
    }

    /// The answer the client gets when this was the last attempt, or `None` when it is a
    /// transport failure (the router then reports every replica it tried).
    pub fn into_answer(self) -> Option<ErrorBody> {
        match self {
            ForwardError::Refused(body) => Some(body),
            ForwardError::Unsendable(e) => {
                Some(ErrorBody::too_large(format!("cannot forward the request; {e}")))
            }
            ForwardError::Connect(_) | ForwardError::Call(_) | ForwardError::Unexpected(_) => None,
        }
    }
}

/// Methods that are safe to send again after an attempt that may have run.
fn is_idempotent(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::Connect(e) => write!(f, "cannot connect; {e}"),
            ForwardError::Call(e) => write!(f, "exchange failed; {e}"),
            ForwardError::Refused(e) => write!(f, "refused; {e}"),
            ForwardError::Unsendable(e) => write!(f, "cannot send; {e}"),
            ForwardError::Unexpected(d) => write!(f, "unexpected answer; {d}"),
        }
    }
}

impl Outgoing {
    fn request(&self) -> Request {
        Request::Forward(ForwardReq {
            method: self.method.as_str().to_string(),
            path: self.path_and_query.clone(),
            body: self.body.to_vec(),
        })
    }
}

/// Sends `out` to the node whose binary protocol listens on `addr` and waits for its answer,
/// all within `limit` (connecting included).
pub(crate) async fn send(
    nodes: &client::Pool,
    addr: SocketAddr,
    out: &Outgoing,
    limit: Duration,
) -> Result<Reply, ForwardError> {
    let deadline = Instant::now() + limit;
    let conn = match tokio::time::timeout_at(deadline, nodes.get(addr)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(ForwardError::Connect(e)),
        Err(_) => {
            return Err(ForwardError::Connect(client::Error::ConnectTimeout { addr, after: limit }))
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    match conn.call_with_timeout(out.request(), Some(left)).await {
        Ok(Response::Forwarded { status, body }) => match StatusCode::from_u16(status) {
            Ok(status) => Ok(Reply { status, body: Bytes::from(body) }),
            Err(_) => Err(ForwardError::Unexpected(format!("HTTP status {status}"))),
        },
        Ok(other) => Err(ForwardError::Unexpected(format!("a {other:?} answer"))),
        Err(CallError::Remote(body)) => Err(ForwardError::Refused(body)),
        Err(CallError::Protocol(e)) => Err(ForwardError::Unsendable(e)),
        Err(e) => Err(ForwardError::Call(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unsent_or_idempotent_requests_are_retried() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let refused = || {
            ForwardError::Connect(client::Error::Connect {
                addr,
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            })
        };
        assert!(refused().retryable(&Method::POST));
        assert!(refused().retryable(&Method::GET));
        let broken = || ForwardError::Call(CallError::Disconnected);
        assert!(broken().retryable(&Method::GET));
        assert!(broken().retryable(&Method::HEAD));
        assert!(!broken().retryable(&Method::POST));
        assert!(ForwardError::Call(CallError::Timeout).retryable(&Method::GET));
        assert!(!ForwardError::Refused(ErrorBody::bad_request("x")).retryable(&Method::GET));
        assert!(!ForwardError::Unexpected("x".into()).retryable(&Method::GET));
    }

    #[test]
    fn a_refusal_is_passed_on_and_transport_failures_are_not() {
        let body = ErrorBody::bad_request("no");
        assert_eq!(ForwardError::Refused(body.clone()).into_answer(), Some(body));
        assert_eq!(ForwardError::Call(CallError::Timeout).into_answer(), None);
        let big = ForwardError::Unsendable(protocol::Error::Frame { detail: "big".into() });
        assert_eq!(big.into_answer().map(|b| b.http_status()), Some(413));
    }
}
