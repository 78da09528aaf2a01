//! Forwarding one request to one replica's HTTP shim: HTTP/1.1 over keep-alive connections
//! pooled per replica (hyper's client connections, no pool library). The request and the
//! answer are buffered whole, so a failed attempt can be sent again elsewhere and the answer
//! is passed back as is (status, content type, body).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::MAX_HTTP_BODY_BYTES;

/// Idle connections kept per replica.
const MAX_IDLE_PER_REPLICA: usize = 256;
/// Limit on opening a connection to a replica (loopback or a local network).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A request as the router forwards it.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A replica's answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why an attempt failed.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// No connection could be opened: nothing was sent.
    Connect(String),
    /// The exchange failed; `sent` when the request may have reached the replica.
    Exchange { detail: String, sent: bool },
    /// No complete answer in time.
    Timeout(Duration),
}

impl ForwardError {
    /// Whether the request may be tried on another replica: always when it was not sent,
    /// otherwise only for methods that are safe to repeat.
    pub fn retryable(&self, method: &Method) -> bool {
        match self {
            ForwardError::Connect(_) | ForwardError::Exchange { sent: false, .. } => true,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::Connect(d) => write!(f, "cannot connect; {d}"),
            ForwardError::Exchange { detail, .. } => write!(f, "exchange failed; {detail}"),
            ForwardError::Timeout(t) => write!(f, "no answer within {t:?}"),
        }
    }
}

/// Keep-alive connections to one replica.
pub(crate) struct ConnPool {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

/// Headers that describe one hop, not the message, and are never passed on (RFC 9110 §7.6.1),
/// plus the ones hyper sets itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == header::HOST
        || name == header::CONTENT_LENGTH
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        if !hop_by_hop(k) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

impl Outgoing {
    /// From an incoming request's parts and its buffered body.
    pub fn new(method: Method, uri: &hyper::Uri, headers: &HeaderMap, body: Bytes) -> Outgoing {
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Outgoing { method, path_and_query, headers: end_to_end(headers), body }
    }

    fn to_request(&self, host: SocketAddr) -> hyper::Request<Full<Bytes>> {
        let mut req = hyper::Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() =
            self.path_and_query.parse().unwrap_or_else(|_| hyper::Uri::from_static("/"));
        *req.headers_mut() = self.headers.clone();
        if let Ok(h) = HeaderValue::from_str(&host.to_string()) {
            req.headers_mut().insert(header::HOST, h);
        }
        req
    }
}

impl ConnPool {
    pub fn new(addr: SocketAddr) -> ConnPool {
        ConnPool { addr, idle: Mutex::new(Vec::new()) }
    }

    /// The replica's HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, s: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_REPLICA && !s.is_closed() {
            idle.push(s);
        }
    }

    fn drop_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ForwardError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ForwardError::Connect(e.to_string())),
            Err(_) => {
                return Err(ForwardError::Connect(format!("timed out after {CONNECT_TIMEOUT:?}")))
            }
        };
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| ForwardError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "replica connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `out` and reads the whole answer, within `limit`. A pooled connection that turns
    /// out to be closed is replaced by a new one once.
    pub async fn send(&self, out: &Outgoing, limit: Duration) -> Result<Reply, ForwardError> {
        let deadline = Instant::now() + limit;
        let timeout = ForwardError::Timeout(limit);
        let mut may_reuse = true;
        loop {
            let pooled = if may_reuse { self.take_idle() } else { None };
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(s) => s,
                None => tokio::time::timeout_at(deadline, self.connect())
                    .await
                    .map_err(|_| ForwardError::Timeout(limit))??,
            };
            if sender.ready().await.is_err() {
                if reused {
                    may_reuse = false;
                    continue;
                }
                return Err(ForwardError::Exchange {
                    detail: "connection closed".into(),
                    sent: false,
                });
            }
            let answer = match tokio::time::timeout_at(
                deadline,
                sender.send_request(out.to_request(self.addr)),
            )
            .await
            {
                Err(_) => return Err(timeout),
                Ok(r) => r,
            };
            let resp = match answer {
                Ok(r) => r,
                Err(e) => {
                    let sent = !e.is_canceled();
                    if reused && !sent {
                        // A stale keep-alive connection: the others may be stale too.
                        self.drop_idle();
                        may_reuse = false;
                        continue;
                    }
                    return Err(ForwardError::Exchange { detail: e.to_string(), sent });
                }
            };
            let (parts, body) = resp.into_parts();
            let body = match tokio::time::timeout_at(
                deadline,
                Limited::new(body, MAX_HTTP_BODY_BYTES).collect(),
            )
            .await
            {
                Err(_) => return Err(timeout),
                Ok(Err(e)) => {
                    return Err(ForwardError::Exchange { detail: e.to_string(), sent: true })
                }
                Ok(Ok(b)) => b.to_bytes(),
            };
            self.put_idle(sender);
            return Ok(Reply { status: parts.status, headers: end_to_end(&parts.headers), body });
        }
    }
}
