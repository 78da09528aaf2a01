//! The serving side of the binary protocol, shared by every process that has a binary door
//! (nodes, routers, the manager): accept, handshake (bounded before trust: see
//! [`accept_peers`]), then pipelined requests. A request that is done at
//! once (`/home`, heartbeats, forwards) is answered by the connection's task; any other runs
//! in a task of its own and is answered when ready, so answers may leave in another order
//! than the requests came. Everything answered meanwhile goes out with one flush.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::Framed;
use crate::limits::{ConnectionLimit, HandshakePool};
use crate::{ErrorBody, Hello, Request, RequestFrame, Response, ResponseFrame};

/// Encodes an answer for its frame. An answer too large for one frame (a read of a huge
/// range, say) becomes a 413 for the same request: the codec would refuse the frame, the
/// connection's writer would stop, and the caller (and every later caller on the connection)
/// would wait for an answer that never comes.
pub fn encode_answer(frame: &ResponseFrame) -> crate::Result<bytes::Bytes> {
    let bytes = crate::wire::encode(frame)?;
    if bytes.len() <= crate::MAX_FRAME_LEN {
        return Ok(bytes);
    }
    let too_large = ErrorBody::too_large(format!(
        "the answer is {} bytes, more than the {} bytes one answer may carry; ask for less \
         (a narrower range)",
        bytes.len(),
        crate::MAX_FRAME_LEN
    ));
    crate::wire::encode(&ResponseFrame::err(frame.id, too_large))
}

/// A peer must complete the handshake within this time (a real one needs two round trips).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections of one door in their handshake at once; a new one beyond it evicts the oldest
/// (see [`HandshakePool`]).
pub const MAX_HANDSHAKING: usize = 1024;
/// How long a cancelled connection may still take to send the answers it owes.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Requests one connection may have in progress; more wait (back-pressure on the socket).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;
/// Answers of requests running in tasks of their own, queued for the connection's task.
const RESPONSE_QUEUE: usize = 1024;

/// What answers the requests of a binary door.
pub trait Handler: Send + Sync + 'static {
    /// The name this side gives in the handshake.
    fn name(&self) -> &str;

    /// Answers one request.
    fn handle(
        &self,
        req: Request,
    ) -> impl Future<Output = std::result::Result<Response, ErrorBody>> + Send;

    /// Whether `req` may be answered in the connection's own task when it is done at its
    /// first poll (requests that do no storage work, such as `/home` and heartbeats), saving
    /// a task per request; everything else runs in a task of its own, so a large request
    /// runs beside the others instead of before them.
    fn answers_in_place(&self, _req: &Request) -> bool {
        false
    }
}

/// Accepts binary-protocol connections on `listener` until `cancel`; every connection and
/// request task is spawned on `tracker`, so a caller can wait for them to finish. At most
/// [`DEFAULT_MAX_CONNECTIONS`](crate::limits::DEFAULT_MAX_CONNECTIONS) connections at once
/// (see [`serve_with_limit`]).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = ConnectionLimit::new("binary", crate::limits::DEFAULT_MAX_CONNECTIONS);
    serve_with_limit(listener, handler, cancel, tracker, limit).await
}

/// [`serve`] with at most `limit` authenticated connections at once. A connection beyond
/// the cap gets a `HelloReply::Err` saying so in place of the handshake's `Ok` and is
/// closed; the connections already open are served as before.
pub async fn serve_with_limit<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    limit: Arc<ConnectionLimit>,
) {
    let name = handler.name().to_string();
    let t = tracker.clone();
    let c = cancel.clone();
    accept_peers(listener, &name, limit, cancel, tracker, move |peer| {
        let (h, c, t) = (handler.clone(), c.clone(), t.clone());
        async move {
            let addr = peer.addr;
            if let Err(e) = connection(peer.framed, h, c, t).await {
                tracing::debug!(peer = %addr, error = %e, "binary connection ended");
            }
            // The connection's place is free once it has ended (its requests answered).
            drop(peer.permit);
        }
    })
    .await
}

/// A connection whose caller has completed the handshake (proved the cluster secret, when
/// this process has one) and holds a place of the door's [`ConnectionLimit`].
pub struct Peer {
    /// The connection, its session started.
    pub framed: Framed<TcpStream>,
    /// The caller's hello.
    pub hello: Hello,
    /// The caller's address.
    pub addr: SocketAddr,
    /// The connection's place under the cap; the place is free once it drops.
    pub permit: OwnedSemaphorePermit,
}

/// The accepting side of every binary door (nodes, routers, the manager): accepts on
/// `listener` until `cancel`, shakes hands as `name` with the process's cluster secret, and
/// hands each authenticated connection to `serve` in a task of `tracker`.
///
/// Bounded before trust: a connection in its handshake holds only a place in a pool of its
/// own ([`MAX_HANDSHAKING`], the oldest evicted when it is full), may send only small frames
/// (see [`crate::codec`]) and has [`HANDSHAKE_TIMEOUT`] to finish; it takes a place of
/// `limit` only once authenticated, and at the cap it is told so instead of `Ok`. So
/// neither large first frames nor a flood of bare connects can cost much memory or keep a
/// peer that knows the secret out.
pub async fn accept_peers<F, Fut>(
    listener: TcpListener,
    name: &str,
    limit: Arc<ConnectionLimit>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let pool = HandshakePool::new(MAX_HANDSHAKING);
    let serve = Arc::new(serve);
    let name: Arc<str> = name.into();
    loop {
        let (stream, addr) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = limit.accept_any(&listener) => a,
        };
        let slot = pool.enter();
        let (serve, name, limit, cancel) =
            (serve.clone(), name.clone(), limit.clone(), cancel.clone());
        tracker.spawn(async move {
            let mut framed = crate::framed(stream);
            let handshake = crate::handshake::server_handshake_admit(
                &mut framed,
                &name,
                crate::auth::secret(),
                || limit.admit_or_refuse(addr),
            );
            let outcome = tokio::select! {
                () = slot.evicted() => Err(crate::Error::Handshake(
                    "evicted by newer connections while in the handshake".into(),
                )),
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => r
                    .unwrap_or_else(|_| Err(crate::Error::Handshake("handshake timed out".into()))),
            };
            drop(slot);
            match outcome {
                Ok((hello, permit)) => {
                    tracing::debug!(peer = %hello.peer, %addr, "binary peer connected");
                    serve(Peer { framed, hello, addr, permit }).await;
                }
                Err(e) => tracing::debug!(%addr, error = %e, "binary handshake failed"),
            }
        });
    }
}

/// Serves one connection after its handshake until the peer closes it, a frame is
/// unreadable (or, in a session, does not open), or `cancel`.
///
/// One task reads the requests and writes the answers. Everything that is ready is taken
/// before anything is written: the requests already received (those answered in place are
/// answered at once) and the answers of requests that ran in tasks of their own; then one
/// flush sends all their answers. A batch of requests that came in one read so leaves in
/// one write, with no hand-over to a writer task (on a multi-threaded runtime, a wake-up of
/// another thread per batch). While a flush waits for the peer to read, no more requests
/// are read: the back-pressure a pipelined peer needs. Once `cancel` fires, no request is
/// read any more, and the answers still owed get a short linger (2 s) to leave.
pub async fn connection<H: Handler>(
    framed: Framed<TcpStream>,
    handler: Arc<H>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> crate::Result<()> {
    let (answers_tx, answers) = mpsc::channel::<ResponseFrame>(RESPONSE_QUEUE);
    let mut conn = Conn {
        framed,
        handler,
        tracker,
        answers_tx: Some(answers_tx),
        answers,
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION)),
        unflushed: false,
    };
    let served = async {
        let result = conn.serve(&cancel).await;
        // The answers of requests still running are sent before the connection closes.
        let drained = conn.drain_answers().await;
        result.and(drained)
    };
    // Once cancelled, the connection has a short while to send what it still owes; a peer
    // that does not read its answers must not keep it (and the shutdown) waiting.
    let linger = async {
        cancel.cancelled().await;
        tokio::time::sleep(CLOSE_LINGER).await;
    };
    tokio::select! {
        r = served => r,
        () = linger => {
            tracing::debug!("binary connection closed with answers unsent: the peer does not read");
            Ok(())
        }
    }
}

/// One connection's state while it is served.
struct Conn<H> {
    framed: Framed<TcpStream>,
    handler: Arc<H>,
    tracker: TaskTracker,
    /// Where requests that run in tasks of their own send their answers; dropped once no
    /// request is read any more, so `answers` ends when the last of them has answered.
    answers_tx: Option<mpsc::Sender<ResponseFrame>>,
    /// Answers of requests that run in tasks of their own.
    answers: mpsc::Receiver<ResponseFrame>,
    in_flight: Arc<Semaphore>,
    /// Answers fed to the socket's buffer since the last flush.
    unflushed: bool,
}

/// What the connection waits for when nothing is ready.
enum Event {
    Frame(Option<Result<bytes::BytesMut, std::io::Error>>),
    Answer(ResponseFrame),
    Cancelled,
}

impl<H: Handler> Conn<H> {
    /// Reads and answers requests until the peer closes, a frame is unreadable, or `cancel`.
    async fn serve(&mut self, cancel: &CancellationToken) -> crate::Result<()> {
        loop {
            // Everything ready now, without waiting: received requests, finished answers.
            while let Some(frame) = self.framed.next().now_or_never() {
                if !self.on_frame(frame).await? {
                    return Ok(());
                }
            }
            while let Ok(answer) = self.answers.try_recv() {
                self.feed(&answer).await?;
            }
            if self.unflushed {
                self.flush().await?;
                continue;
            }
            let event = tokio::select! {
                _ = cancel.cancelled() => Event::Cancelled,
                f = self.framed.next() => Event::Frame(f),
                Some(a) = self.answers.recv() => Event::Answer(a),
            };
            match event {
                Event::Cancelled => return Ok(()),
                Event::Frame(frame) => {
                    if !self.on_frame(frame).await? {
                        return Ok(());
                    }
                }
                Event::Answer(a) => self.feed(&a).await?,
            }
        }
    }

    /// Handles one frame (or the end of the stream); false when the connection is done.
    async fn on_frame(
        &mut self,
        frame: Option<Result<bytes::BytesMut, std::io::Error>>,
    ) -> crate::Result<bool> {
        let bytes = match frame {
            None => return Ok(false),
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                let e = crate::Error::from(e);
                if let crate::Error::Frame { detail } = &e {
                    // Say why before closing: the stream cannot be resynchronized.
                    let answer = ResponseFrame::err(0, ErrorBody::too_large(detail.clone()));
                    self.say_last(&answer).await;
                }
                return Err(e);
            }
        };
        let req: RequestFrame = match crate::wire::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let answer = ErrorBody::bad_request(format!("undecodable request: {e}"));
                self.say_last(&ResponseFrame::err(0, answer)).await;
                return Err(e);
            }
        };
        let RequestFrame { id, body } = req;
        let in_place = self.handler.answers_in_place(&body);
        let h = self.handler.clone();
        let mut answer = Box::pin(async move { h.handle(body).await });
        if in_place {
            if let std::task::Poll::Ready(body) = futures::poll!(answer.as_mut()) {
                self.feed(&ResponseFrame { id, body }).await?;
                return Ok(true);
            }
        }
        let Some(tx) = self.answers_tx.clone() else { return Ok(false) };
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else { return Ok(false) };
        self.tracker.spawn(async move {
            let body = answer.await;
            let _ = tx.send(ResponseFrame { id, body }).await;
            drop(permit);
        });
        Ok(true)
    }

    async fn feed(&mut self, answer: &ResponseFrame) -> crate::Result<()> {
        self.framed.feed(encode_answer(answer)?).await?;
        self.unflushed = true;
        Ok(())
    }

    /// Sends what is buffered.
    async fn flush(&mut self) -> crate::Result<()> {
        SinkExt::<bytes::Bytes>::flush(&mut self.framed).await?;
        self.unflushed = false;
        Ok(())
    }

    /// A last answer before the connection closes (best effort: it is closing anyway).
    async fn say_last(&mut self, answer: &ResponseFrame) {
        if let Ok(bytes) = encode_answer(answer) {
            let _ = self.framed.send(bytes).await;
        }
    }

    /// Sends the answers of requests still running, as they finish (each has its own task,
    /// tracked; none waits for this connection), and what is still buffered.
    async fn drain_answers(&mut self) -> crate::Result<()> {
        self.answers_tx = None;
        loop {
            if self.unflushed {
                self.flush().await?;
            }
            let Some(answer) = self.answers.recv().await else { return Ok(()) };
            self.feed(&answer).await?;
            while let Ok(more) = self.answers.try_recv() {
                self.feed(&more).await?;
            }
        }
    }
}
