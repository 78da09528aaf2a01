//! The binary door: length-prefixed frames, a handshake, then pipelined requests; each
//! request is handled in its own task and its answer is sent when ready, so answers may
//! leave in another order than requests came.
//!
//! Two things keep the per-request cost low when a router forwards stage-1 requests at a
//! high rate (a frame each, many per read):
//! - a request that needs no storage work and is done at its first poll (`/home`,
//!   heartbeats) is answered in place, without a task of its own, and
//! - the writer lets the other ready tasks run once before it flushes, so the answers of a
//!   whole batch of requests leave in one write rather than one write each.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ErrorBody, Request, RequestFrame, ResponseFrame};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::Node;

/// A peer must complete the handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one connection may have in progress; more wait (back-pressure on the socket).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;
/// Answers queued for one connection's writer.
const RESPONSE_QUEUE: usize = 1024;

/// Accepts binary-protocol connections until `cancel`.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "binary accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (node, cancel, t) = (node.clone(), cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            if let Err(e) = connection(stream, node, cancel, t).await {
                tracing::debug!(%peer, error = %e, "binary connection ended");
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    node: Arc<Node>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> protocol::Result<()> {
    let mut framed = protocol::framed(stream);
    let hello = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        protocol::handshake::server_handshake(&mut framed, node.name()),
    )
    .await
    .map_err(|_| protocol::Error::Handshake("handshake timed out".into()))??;
    tracing::debug!(peer = %hello.peer, "binary peer connected");
    let (mut sink, mut frames) = framed.split();
    let (tx, mut rx) = mpsc::channel::<ResponseFrame>(RESPONSE_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            sink.feed(protocol::server::encode_answer(&first)?).await?;
            // Everything already queued goes out with one flush. Woken by the first answer of
            // a batch, the writer would otherwise run before the handlers of the rest.
            while let Ok(more) = rx.try_recv() {
                sink.feed(protocol::server::encode_answer(&more)?).await?;
            }
            tokio::task::yield_now().await;
            while let Ok(more) = rx.try_recv() {
                sink.feed(protocol::server::encode_answer(&more)?).await?;
            }
            sink.flush().await?;
        }
        Ok::<(), protocol::Error>(())
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
                let e = protocol::Error::from(e);
                if let protocol::Error::Frame { detail } = &e {
                    // Say why before closing: the stream cannot be resynchronized.
                    let _ =
                        tx.send(ResponseFrame::err(0, ErrorBody::too_large(detail.clone()))).await;
                }
                break Err(e);
            }
        };
        let req: RequestFrame = match protocol::wire::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let answer = ErrorBody::bad_request(format!("undecodable request: {e}"));
                let _ = tx.send(ResponseFrame::err(0, answer)).await;
                break Err(e);
            }
        };
        let RequestFrame { id, body } = req;
        let in_place = answers_in_place(&body);
        let n = node.clone();
        let mut answer = Box::pin(async move { n.handle(body).await });
        if in_place {
            if let Poll::Ready(body) = futures::poll!(answer.as_mut()) {
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

/// Requests answered in the connection's own task when done at their first poll: they do no
/// storage work, so they hold up the requests behind them no longer than a task switch
/// would. Stage 1's forwarded requests (`/home`; a router serves the data endpoints itself)
/// and heartbeats. Reads, writes and replication get tasks of their own, so a large one runs
/// beside the others instead of before them; so does a forward that has to wait.
fn answers_in_place(req: &Request) -> bool {
    matches!(req, Request::Home | Request::Heartbeat | Request::Forward(_))
}
