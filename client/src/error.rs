//! The crate's errors: [`Error`] for opening a connection, [`CallError`] for one call on it.
//!
//! They are separate because they are handled differently: a failed connect says nothing was
//! sent, while a failed call may or may not have reached the server.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::{ErrorBody, ErrorKind};

/// Why a connection could not be opened. Nothing was sent to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address did not resolve to any socket address.
    #[error("cannot resolve address; {0}")]
    Resolve(std::io::Error),
    /// TCP connect failed (refused, unreachable, ...).
    #[error("connect to {addr} failed; {source}")]
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// What the OS reported.
        source: std::io::Error,
    },
    /// TCP connect did not finish in time.
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// The address being tried when time ran out.
        addr: SocketAddr,
        /// The connect timeout.
        after: Duration,
    },
    /// The handshake failed: the peer is not a shardgate peer, speaks another protocol
    /// version, or dropped the connection.
    #[error("cannot open a session with {addr}; {source}")]
    Handshake {
        /// The server's address.
        addr: SocketAddr,
        /// What went wrong, with the server's refusal message if it sent one.
        source: protocol::Error,
    },
    /// The server accepted the TCP connection but did not answer the handshake in time.
    #[error("handshake with {addr} timed out after {after:?}")]
    HandshakeTimeout {
        /// The server's address.
        addr: SocketAddr,
        /// The handshake timeout.
        after: Duration,
    },
}

/// The crate's result type for opening connections.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Whether trying again later may succeed. A protocol mismatch will not go away by
    /// itself; a refused or slow server may.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Handshake { source: protocol::Error::Handshake(_), .. } => false,
            Error::Resolve(_)
            | Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Handshake { .. }
            | Error::HandshakeTimeout { .. } => true,
        }
    }
}

impl From<Error> for ErrorBody {
    /// A server that forwards a request and cannot reach the next hop answers 503, so its
    /// caller retries rather than blaming its own request.
    fn from(e: Error) -> ErrorBody {
        ErrorBody::unavailable(e.to_string())
    }
}

/// Why one call on a [`crate::Connection`] did not return a response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with a typed error.
    #[error("{0}")]
    Remote(ErrorBody),
    /// The connection broke before the answer arrived, or was already closed. The request may
    /// or may not have been executed.
    #[error("connection closed before the answer arrived")]
    Disconnected,
    /// No answer within the call's timeout. The request may still be executed; a late answer
    /// is dropped.
    #[error("no answer within the request timeout")]
    Timeout,
    /// The request could not be encoded or is larger than a frame may be; nothing was sent.
    #[error("request not sent; {0}")]
    Protocol(protocol::Error),
}

impl CallError {
    /// Whether the same request may succeed on another try (or another connection): the
    /// failure was the transport's, not the request's. Mind that a write may already have
    /// been executed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CallError::Disconnected | CallError::Timeout)
    }

    /// The server's error, if the server answered with one.
    pub fn as_remote(&self) -> Option<&ErrorBody> {
        match self {
            CallError::Remote(body) => Some(body),
            _ => None,
        }
    }

    /// The kind of the server's error, if the server answered with one.
    pub fn remote_kind(&self) -> Option<&ErrorKind> {
        self.as_remote().map(|body| &body.kind)
    }

    /// The error to hand on to our own caller: the server's error as it was, a transport
    /// failure as 503 (try again), a local encoding failure as 500.
    pub fn into_error_body(self) -> ErrorBody {
        match self {
            CallError::Remote(body) => body,
            CallError::Disconnected | CallError::Timeout => {
                ErrorBody::unavailable(self.to_string())
            }
            CallError::Protocol(e) => ErrorBody::internal(format!("request not sent; {e}")),
        }
    }
}

impl From<ErrorBody> for CallError {
    fn from(body: ErrorBody) -> CallError {
        CallError::Remote(body)
    }
}

impl From<protocol::Error> for CallError {
    fn from(e: protocol::Error) -> CallError {
        CallError::Protocol(e)
    }
}

impl From<CallError> for ErrorBody {
    fn from(e: CallError) -> ErrorBody {
        e.into_error_body()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_failures_are_retryable() {
        assert!(CallError::Disconnected.is_retryable());
        assert!(CallError::Timeout.is_retryable());
        assert!(!CallError::Remote(ErrorBody::not_found("x")).is_retryable());
        let encode = protocol::Error::Encode { detail: "x".into() };
        assert!(!CallError::Protocol(encode).is_retryable());
    }

    #[test]
    fn error_bodies_keep_remote_errors_and_map_local_ones() {
        let remote = CallError::from(ErrorBody::not_primary(Some("S2".into()), "not primary"));
        assert_eq!(
            remote.remote_kind(),
            Some(&ErrorKind::NotPrimary { primary: Some("S2".into()) })
        );
        let body = remote.into_error_body();
        assert_eq!(body.message, "<Error> not primary");

        let lost = ErrorBody::from(CallError::Disconnected);
        assert_eq!(lost.kind, ErrorKind::Unavailable);
        assert_eq!(lost.message, "<Error> connection closed before the answer arrived");
        assert_eq!(ErrorBody::from(CallError::Timeout).http_status(), 503);

        let encode = CallError::from(protocol::Error::Encode { detail: "bad".into() });
        assert_eq!(encode.into_error_body().kind, ErrorKind::Internal);
    }

    #[test]
    fn a_version_mismatch_is_not_retryable_but_a_refused_connect_is() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let mismatch = Error::Handshake {
            addr,
            source: protocol::Error::Handshake("protocol version 9 not supported".into()),
        };
        assert!(!mismatch.is_retryable());
        let refused = Error::Connect {
            addr,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(refused.is_retryable());
        let body = ErrorBody::from(refused);
        assert_eq!(body.kind, ErrorKind::Unavailable);
        assert!(
            body.message.starts_with("<Error> connect to 127.0.0.1:1 failed; "),
            "{}",
            body.message
        );
    }
}
