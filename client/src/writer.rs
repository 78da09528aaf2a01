//! The one task that writes a connection's request frames.
//!
//! Callers encode their frame themselves (in parallel, on their own tasks) and queue the
//! bytes here. The writer takes everything queued, feeds it into the socket buffer and
//! flushes once, so under load many requests share one `write` syscall, and a lone request
//! is still flushed at once.

use std::sync::Arc;

use bytes::Bytes;
use futures::SinkExt;
use protocol::FrameCodec;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::pending::Pending;

/// Bytes buffered before a feed flushes on its own; larger than the default 8 KiB so a batch
/// of small requests goes out in one write.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Writes queued frames with `codec` (the sending half of the connection's codec: it seals
/// them when the session has keys) until every sender is gone, the socket fails, or `shutdown` fires;
/// then fails the waiting calls, tells the reader to stop, and closes the write half
/// (the peer sees end of stream).
pub(crate) async fn run(
    half: OwnedWriteHalf,
    codec: FrameCodec,
    mut queue: mpsc::Receiver<Bytes>,
    pending: Arc<Pending>,
    shutdown: CancellationToken,
    server: String,
) {
    let mut sink = FramedWrite::new(half, codec);
    sink.set_backpressure_boundary(WRITE_BUFFER_BYTES);
    let outcome = tokio::select! {
        // A peer that stops reading would block a flush forever; shutdown must still win.
        outcome = write_batches(&mut sink, &mut queue) => outcome,
        () = shutdown.cancelled() => Ok(()),
    };
    match outcome {
        Ok(()) => debug!(%server, "connection writer stopped"),
        Err(e) => warn!(%server, error = %e, "connection write failed; closing the connection"),
    }
    pending.close();
    shutdown.cancel();
}

async fn write_batches(
    sink: &mut FramedWrite<OwnedWriteHalf, FrameCodec>,
    queue: &mut mpsc::Receiver<Bytes>,
) -> protocol::Result<()> {
    loop {
        let Some(first) = queue.recv().await else {
            // Every Connection clone is gone: nobody can wait for an answer any more.
            return Ok(());
        };
        sink.feed(first).await?;
        while let Ok(next) = queue.try_recv() {
            sink.feed(next).await?;
        }
        // Woken by the first request of a batch, the writer would otherwise run before the
        // callers of the rest have queued theirs (tokio runs a woken task next): one pass of
        // the scheduler lets them join this write instead of each paying a syscall.
        tokio::task::yield_now().await;
        while let Ok(next) = queue.try_recv() {
            sink.feed(next).await?;
        }
        SinkExt::<Bytes>::flush(sink).await?;
    }
}
