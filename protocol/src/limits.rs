//! Limits every door applies, so that a client that misbehaves (or many of them) costs a
//! bounded amount and everyone else keeps being served:
//!
//! - connections per listener ([`ConnectionLimit`]): each connection task holds an owned
//!   semaphore permit; a connection beyond the cap is refused at once with a short answer
//!   (HTTP: a 503 with the contract's JSON error, [`http_refusal`]; binary: a
//!   `HelloReply::Err` in place of the handshake, [`binary_refusal`]) and closed, counted,
//!   and logged at most once per [`REFUSAL_LOG_INTERVAL`];
//! - before authentication, on a binary door: a connection holds no place of the cap, only
//!   one of a bounded pool of its own ([`HandshakePool`], the oldest evicted when it is
//!   full) for at most the handshake's timeout, and may send only small frames (see
//!   [`crate::codec`]); the cap's place is taken once the caller has authenticated, and one
//!   beyond the cap is told so in place of the handshake's `Ok`;
//! - rows per write and rows per read answer ([`RowLimits`]): beyond them a 413
//!   (`ErrorKind::TooLarge`) and nothing written;
//! - the idle timeout of HTTP connections: hyper's header timeout covers a request head that
//!   does not arrive (slowloris, and idle keep-alive connections); [`WriteStall`] covers a
//!   client that stops taking its answers.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handshake::HelloReply;
use crate::ErrorBody;

/// Default cap on concurrent connections, per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on rows in one write request.
pub const DEFAULT_MAX_WRITE_ROWS: usize = 10_000;
/// Default cap on rows in one read answer.
pub const DEFAULT_MAX_READ_ROWS: usize = 100_000;
/// Default idle timeout of an HTTP connection: its next request head must be complete
/// within this time (from the connection's start or the end of the previous answer), and
/// a write of an answer may make no progress for at most this long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused connection is given to take its refusal and close before it is
/// dropped.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Refusals delivered at once, per listener; a connection refused beyond it is closed
/// without a word, so a flood cannot make refusals the new way to hold resources.
const MAX_REFUSALS_IN_PROGRESS: usize = 64;
/// Pause after a failed accept before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one warning per this interval about refused connections (with the count).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The limits of one process's doors, as given by its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoorLimits {
    /// Concurrent connections per listener.
    pub max_connections: usize,
    /// Idle timeout of HTTP connections (see [`DEFAULT_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Rows per write and per read answer.
    pub rows: RowLimits,
}

impl Default for DoorLimits {
    fn default() -> DoorLimits {
        DoorLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            rows: RowLimits::default(),
        }
    }
}

/// Caps on the rows of one request: how many one write may carry, how many one read may
/// answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLimits {
    /// Most rows in one write.
    pub max_write_rows: usize,
    /// Most rows in one read answer.
    pub max_read_rows: usize,
}

impl Default for RowLimits {
    fn default() -> RowLimits {
        RowLimits { max_write_rows: DEFAULT_MAX_WRITE_ROWS, max_read_rows: DEFAULT_MAX_READ_ROWS }
    }
}

impl RowLimits {
    /// The 413 for a write of `rows` rows above the cap.
    pub fn check_write(&self, rows: usize) -> Result<(), ErrorBody> {
        if rows <= self.max_write_rows {
            return Ok(());
        }
        Err(ErrorBody::too_large(format!(
            "too many rows in one write: {rows}, at most {} are accepted per request; \
             split it into several writes (nothing was written)",
            self.max_write_rows
        )))
    }

    /// The 413 for a read answer of `rows` rows above the cap.
    pub fn check_read(&self, rows: usize) -> Result<(), ErrorBody> {
        if rows <= self.max_read_rows {
            return Ok(());
        }
        Err(ErrorBody::too_large(format!(
            "the read matches {rows} rows, more than the {} one answer may carry; ask for a \
             narrower range",
            self.max_read_rows
        )))
    }
}

/// The cap on concurrent connections of one listener, with its count of refusals.
pub struct ConnectionLimit {
    /// Which listener, for logs and metrics (`"http"`, `"binary"`).
    listener: &'static str,
    max: usize,
    open: Arc<Semaphore>,
    /// Refusals being delivered now (see [`MAX_REFUSALS_IN_PROGRESS`]).
    refusing: Arc<Semaphore>,
    refused: AtomicU64,
    /// When the last warning about refusals was logged, and the count then.
    last_log: Mutex<Option<(Instant, u64)>>,
}

impl ConnectionLimit {
    /// A cap of `max` connections (at least 1) for the listener named `listener`.
    pub fn new(listener: &'static str, max: usize) -> Arc<ConnectionLimit> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnectionLimit {
            listener,
            max,
            open: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSALS_IN_PROGRESS)),
            refused: AtomicU64::new(0),
            last_log: Mutex::new(None),
        })
    }

    /// The listener's name.
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.open.available_permits()
    }

    /// Connections refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A place for one more connection, held until the permit drops; `None` at the cap.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }

    /// The next connection on `listener` within the cap, with its place: one over the cap is
    /// refused with `refusal` (see [`refuse`](Self::refuse)) and the wait goes on. As
    /// [`accept_any`](Self::accept_any) otherwise.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        refusal: &Bytes,
        tracker: &TaskTracker,
    ) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            let (stream, peer) = self.accept_any(listener).await;
            let Some(permit) = self.try_admit() else {
                self.refuse(stream, peer, refusal.clone(), tracker);
                continue;
            };
            return (stream, peer, permit);
        }
    }

    /// The next connection on `listener`, without a place yet (a binary door gives one only
    /// once the caller has authenticated; see [`crate::server`]). A failed accept (out of
    /// descriptors and the like) is logged and followed by a short pause instead of a spin.
    /// The stream comes with `TCP_NODELAY` set (every door answers small messages it has
    /// already batched). Cancel-safe: dropped while waiting, it has taken no connection.
    pub async fn accept_any(&self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, peer);
                }
                Err(e) => {
                    tracing::warn!(listener = self.listener, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    /// A place for a connection whose caller has just authenticated, or the message to refuse
    /// it with at the cap (counted and logged as a refusal).
    pub fn admit_or_refuse(&self, peer: SocketAddr) -> Result<OwnedSemaphorePermit, String> {
        self.try_admit().ok_or_else(|| {
            let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            self.log_refusal(peer, total);
            binary_refusal_message(self)
        })
    }

    /// Refuses `stream`: counts and logs it, then sends `answer`, closes its side and waits
    /// (briefly, on `tracker`) for the peer to close, so that the answer is not lost to a
    /// reset; when too many refusals are in progress the stream is closed at once.
    pub fn refuse(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        answer: Bytes,
        tracker: &TaskTracker,
    ) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        self.log_refusal(peer, total);
        let Ok(permit) = self.refusing.clone().try_acquire_owned() else {
            drop(stream);
            return;
        };
        tracker.spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_LINGER, deliver(stream, &answer)).await;
            drop(permit);
        });
    }

    /// A warning on the first refusal and then at most once per [`REFUSAL_LOG_INTERVAL`];
    /// the others at debug level.
    fn log_refusal(&self, peer: SocketAddr, total: u64) {
        let now = Instant::now();
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|(at, _)| now.duration_since(at) >= REFUSAL_LOG_INTERVAL);
        if due {
            let since = last.map_or(total, |(_, then)| total - then);
            *last = Some((now, total));
            tracing::warn!(
                listener = self.listener,
                max_connections = self.max,
                %peer,
                refused_since_last_warning = since,
                refused_total = total,
                "connection refused: the listener is at its connection cap"
            );
        } else {
            tracing::debug!(listener = self.listener, %peer, "connection refused: at the cap");
        }
    }
}

/// Writes `answer`, half-closes, and reads until the peer closes.
async fn deliver(mut stream: TcpStream, answer: &[u8]) -> io::Result<()> {
    stream.write_all(answer).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// The whole HTTP/1.1 answer to a connection refused at the cap: 503 with the contract's
/// JSON error, `Retry-After`, and `Connection: close`.
pub fn http_refusal(listener: &ConnectionLimit) -> Bytes {
    let body = serde_json::json!({
        "message": format!(
            "<Error> too many connections: this server takes at most {} at once; try again \
             later",
            listener.max()
        ),
        "status": "failure"
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    Bytes::from([head.into_bytes(), body.into_bytes()].concat())
}

/// The frame a binary door sends to a connection refused at the cap, in place of the
/// handshake's reply: a `HelloReply::Err`, so the caller's handshake fails with the reason.
pub fn binary_refusal(listener: &ConnectionLimit) -> Bytes {
    let reply = HelloReply::Err { message: binary_refusal_message(listener) };
    // Encoding a reply of a string cannot fail; an empty frame would still close cleanly.
    let payload = crate::wire::encode(&reply).unwrap_or_default();
    let mut frame = BytesMut::with_capacity(crate::codec::FRAME_HEADER_LEN + payload.len());
    frame.put_u32(payload.len() as u32);
    frame.put_slice(&payload);
    frame.freeze()
}

/// Why a binary door refuses a connection at its cap.
fn binary_refusal_message(listener: &ConnectionLimit) -> String {
    format!(
        "too many connections: this server takes at most {} binary-protocol connections at \
         once; try again later",
        listener.max()
    )
}

/// The connections of one binary door that are still in their handshake: a pool of its own,
/// apart from the door's [`ConnectionLimit`], so that callers that have not authenticated
/// (yet) cannot take the places of those that have. When it is full, a new connection
/// evicts the one that has been handshaking longest: a flood of bare connects then only
/// evicts itself, and a real peer, whose handshake takes a round trip, gets through.
pub struct HandshakePool {
    max: usize,
    /// The connections in their handshake, oldest first, each with the token that evicts it.
    waiting: Mutex<(u64, BTreeMap<u64, CancellationToken>)>,
    evicted: AtomicU64,
}

impl HandshakePool {
    /// A pool of at most `max` (at least 1) connections in their handshake.
    pub fn new(max: usize) -> Arc<HandshakePool> {
        Arc::new(HandshakePool {
            max: max.max(1),
            waiting: Mutex::new((0, BTreeMap::new())),
            evicted: AtomicU64::new(0),
        })
    }

    /// A place in the pool for a new connection, evicting the oldest one when it is full.
    pub fn enter(self: &Arc<Self>) -> HandshakeSlot {
        let token = CancellationToken::new();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (next, slots) = &mut *waiting;
        let id = *next;
        *next += 1;
        while slots.len() >= self.max {
            let Some((_, oldest)) = slots.pop_first() else { break };
            oldest.cancel();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        slots.insert(id, token.clone());
        HandshakeSlot { pool: self.clone(), id, evicted: token }
    }

    /// Connections in their handshake now.
    pub fn len(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).1.len()
    }

    /// Whether no connection is in its handshake.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections evicted since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// One connection's place in a [`HandshakePool`], given back on drop.
pub struct HandshakeSlot {
    pool: Arc<HandshakePool>,
    id: u64,
    evicted: CancellationToken,
}

impl HandshakeSlot {
    /// Completes when a newer connection has taken this place: the handshake must stop.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut waiting = self.pool.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.1.remove(&self.id);
    }
}

/// A stream whose writes fail with `TimedOut` once one has made no progress for `limit`: a
/// client that stops reading its answers (its window stays shut) cannot hold the connection
/// for ever. Reads pass through untouched (their timeouts are the header and body timeouts).
pub struct WriteStall<T> {
    inner: T,
    limit: Duration,
    /// Armed when a write is pending; disarmed by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteStall<T> {
    /// Wraps `inner`, allowing writes to stall for at most `limit`.
    pub fn new(inner: T, limit: Duration) -> WriteStall<T> {
        WriteStall { inner, limit, stalled: None }
    }

    /// Called when a write is pending: pending until the stall has lasted `limit`, then the
    /// error.
    fn poll_stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let limit = self.limit;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took no data for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(&mut self, r: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_stall(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(r, cx)
    }
}

/// Serves one HTTP/1.1 connection of an HTTP door with `service` (hyper; keep-alive) under
/// the door's guards: a request head must arrive within `idle` of the connection's start or
/// the previous answer (slowloris clients and idle keep-alive connections are closed), and
/// an answer's write may stall at most `idle` ([`WriteStall`]). When `cancel` fires, the
/// request in progress is finished and the connection closed.
pub async fn serve_http1<S>(
    stream: tokio::net::TcpStream,
    idle: Duration,
    service: S,
    cancel: &tokio_util::sync::CancellationToken,
) where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper's own answers to requests it cannot parse leave in the contract's JSON shape.
    let io = hyper_util::rt::TokioIo::new(crate::parse_errors::JsonErrors::new(WriteStall::new(
        stream, idle,
    )));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_limits_refuse_only_above_the_cap_with_a_413() {
        let l = RowLimits { max_write_rows: 3, max_read_rows: 5 };
        assert!(l.check_write(3).is_ok());
        let e = l.check_write(4).unwrap_err();
        assert_eq!(e.http_status(), 413);
        assert!(e.message.starts_with("<Error> too many rows in one write: 4"), "{}", e.message);
        assert!(l.check_read(5).is_ok());
        let e = l.check_read(6).unwrap_err();
        assert_eq!(e.http_status(), 413);
        assert!(e.message.contains("matches 6 rows"), "{}", e.message);
    }

    #[tokio::test]
    async fn permits_are_returned_when_connections_end() {
        let l = ConnectionLimit::new("test", 2);
        let a = l.try_admit().unwrap();
        let _b = l.try_admit().unwrap();
        assert_eq!(l.open(), 2);
        assert!(l.try_admit().is_none());
        drop(a);
        assert_eq!(l.open(), 1);
        assert!(l.try_admit().is_some());
        assert_eq!(ConnectionLimit::new("zero", 0).max(), 1, "a cap of 0 would refuse all");
    }

    #[tokio::test]
    async fn a_full_handshake_pool_evicts_its_oldest_connection() {
        let pool = HandshakePool::new(2);
        let a = pool.enter();
        let b = pool.enter();
        assert_eq!(pool.len(), 2);
        let c = pool.enter();
        assert_eq!((pool.len(), pool.evicted()), (2, 1));
        tokio::time::timeout(Duration::from_secs(5), a.evicted()).await.unwrap();
        assert!(!b.evicted.is_cancelled());
        drop(b);
        assert_eq!(pool.len(), 1, "a finished handshake gives its place back");
        let _d = pool.enter();
        assert!(!c.evicted.is_cancelled(), "room was left: nobody evicted");
        drop(a);
        assert_eq!(pool.len(), 2, "an evicted slot's drop removes nothing else");
    }

    #[test]
    fn refusals_are_an_http_503_and_a_handshake_error() {
        let l = ConnectionLimit::new("test", 8);
        let http = http_refusal(&l);
        let text = String::from_utf8_lossy(&http).to_string();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let j: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(j["status"], "failure");
        assert!(j["message"].as_str().unwrap().starts_with("<Error> too many connections"));

        let frame = binary_refusal(&l);
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        match crate::wire::decode::<HelloReply>(&frame[4..]).unwrap() {
            HelloReply::Err { message } => assert!(message.contains("at most 8"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_after_the_limit() {
        // A pipe whose reader never reads: the writer fills it, then stalls.
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WriteStall::new(a, Duration::from_millis(100));
        let started = Instant::now();
        let err = loop {
            if let Err(e) = w.write_all(&[0u8; 1024]).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
