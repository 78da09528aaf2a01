//! The serving side of the binary protocol, shared by every process that has a binary door
//! (nodes, routers): accept, handshake, then pipelined requests. Each request is handled in
//! its own task and answered when ready, so answers may leave in another order than the
//! requests came; everything queued goes out with one flush.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::ConnectionLimit;
use crate::{ErrorBody, Request, RequestFrame, Response, ResponseFrame};

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

/// A peer must complete the handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one connection may have in progress; more wait (back-pressure on the socket).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;
/// Answers queued for one connection's writer.
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

/// [`serve`] with at most `limit` connections at once. A connection beyond the cap gets a
/// `HelloReply::Err` saying so in place of the handshake and is closed; the connections
/// already open are served as before.
pub async fn serve_with_limit<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    limit: Arc<ConnectionLimit>,
) {
    let refusal = crate::limits::binary_refusal(&limit);
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "binary accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(permit) = limit.try_admit() else {
            limit.refuse(stream, peer, refusal.clone(), &tracker);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (h, cancel, t) = (handler.clone(), cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            if let Err(e) = connection(stream, h, cancel, t).await {
                tracing::debug!(%peer, error = %e, "binary connection ended");
            }
            // The connection's place is free once it has ended (its requests answered).
            drop(permit);
        });
    }
}

/// Serves one accepted connection until the peer closes it, a frame is unreadable, or
/// `cancel`.
pub async fn connection<H: Handler>(
    stream: TcpStream,
    handler: Arc<H>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> crate::Result<()> {
    let mut framed = crate::framed(stream);
    let hello = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        crate::handshake::server_handshake(&mut framed, handler.name()),
    )
    .await
    .map_err(|_| crate::Error::Handshake("handshake timed out".into()))??;
    tracing::debug!(peer = %hello.peer, "binary peer connected");
    let (mut sink, mut frames) = framed.split();
    let (tx, mut rx) = mpsc::channel::<ResponseFrame>(RESPONSE_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            sink.feed(encode_answer(&first)?).await?;
            while let Ok(more) = rx.try_recv() {
                sink.feed(encode_answer(&more)?).await?;
            }
            // Let the answers finishing right now join this write (see client/src/writer.rs).
            tokio::task::yield_now().await;
            while let Ok(more) = rx.try_recv() {
                sink.feed(encode_answer(&more)?).await?;
            }
            sink.flush().await?;
        }
        Ok::<(), crate::Error>(())
    });
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let result = loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            f = frames.next() => f,
        };
        let bytes = match frame {
            None => break Ok(()),
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                let e = crate::Error::from(e);
                if let crate::Error::Frame { detail } = &e {
                    // Say why before closing: the stream cannot be resynchronized.
                    let _ =
                        tx.send(ResponseFrame::err(0, ErrorBody::too_large(detail.clone()))).await;
                }
                break Err(e);
            }
        };
        let req: RequestFrame = match crate::wire::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let answer = ErrorBody::bad_request(format!("undecodable request: {e}"));
                let _ = tx.send(ResponseFrame::err(0, answer)).await;
                break Err(e);
            }
        };
        let RequestFrame { id, body } = req;
        let in_place = handler.answers_in_place(&body);
        let h = handler.clone();
        let mut answer = Box::pin(async move { h.handle(body).await });
        if in_place {
            if let std::task::Poll::Ready(body) = futures::poll!(answer.as_mut()) {
                let _ = tx.send(ResponseFrame { id, body }).await;
                continue;
            }
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break Ok(()) };
        let tx = tx.clone();
        tracker.spawn(async move {
            let body = answer.await;
            let _ = tx.send(ResponseFrame { id, body }).await;
            drop(permit);
        });
    };
    // The writer ends once every in-flight handler has sent its answer.
    drop(tx);
    match writer.await {
        Ok(Err(e)) => tracing::debug!(error = %e, "binary writer ended"),
        Err(e) => tracing::warn!(error = %e, "binary writer task failed"),
        Ok(Ok(())) => {}
    }
    result
}
