//! The binary door: length-prefixed frames, a handshake, then pipelined requests; each
//! request is handled in its own task and its answer is sent when ready, so answers may
//! leave in another order than requests came.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{ErrorBody, RequestFrame, ResponseFrame};
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
            sink.feed(protocol::wire::encode(&first)?).await?;
            // Everything already queued goes out with one flush.
            while let Ok(more) = rx.try_recv() {
                sink.feed(protocol::wire::encode(&more)?).await?;
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
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break Ok(()) };
        let (node, tx) = (node.clone(), tx.clone());
        tracker.spawn(async move {
            let body = node.handle(req.body).await;
            let _ = tx.send(ResponseFrame { id: req.id, body }).await;
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
