//! The one task that reads a connection's answers and completes the waiting calls.
//!
//! It holds a `Framed` over the read half only (never used as a sink) because that is the
//! one codec wrapper that can take over the bytes the handshake already buffered; its codec
//! is the receiving half of the connection's (it opens sealed answers, and a frame that does
//! not open ends the connection).

use std::sync::Arc;

use futures::StreamExt;
use protocol::ResponseFrame;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::pending::{Delivery, Pending};

/// Reads answers until the peer closes, a frame is bad, or `shutdown` fires; then fails the
/// waiting calls and tells the writer to stop. A bad frame ends the connection because after
/// one we can no longer trust which answer belongs to which call.
pub(crate) async fn run(
    mut stream: protocol::Framed<OwnedReadHalf>,
    pending: Arc<Pending>,
    shutdown: CancellationToken,
    server: String,
) {
    let outcome = tokio::select! {
        outcome = read_answers(&mut stream, &pending, &server) => outcome,
        () = shutdown.cancelled() => Ok(()),
    };
    match outcome {
        Ok(()) => debug!(%server, "connection reader stopped"),
        Err(e) => warn!(%server, error = %e, "connection read failed; closing the connection"),
    }
    // Closing before cancelling: once the writer is told to stop, no call may still hope
    // for an answer.
    pending.close();
    shutdown.cancel();
}

async fn read_answers(
    stream: &mut protocol::Framed<OwnedReadHalf>,
    pending: &Pending,
    server: &str,
) -> protocol::Result<()> {
    while let Some(frame) = stream.next().await {
        let frame = frame?;
        let answer: ResponseFrame = protocol::wire::decode(&frame)?;
        let id = answer.id;
        match pending.complete(answer) {
            Delivery::Delivered => {}
            Delivery::Late => debug!(%server, id, "answer arrived after its call gave up"),
            Delivery::Unknown => warn!(%server, id, "answer for a request never sent; ignored"),
        }
    }
    debug!(%server, "peer closed the connection");
    Ok(())
}
