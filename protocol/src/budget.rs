//! The memory an HTTP door may hold for request bodies and for answers not yet sent, one
//! budget per process shared by all its connections. Without it, 40 requests declaring
//! 16 MiB bodies, or 40 reads of a whole table whose answers the clients never read, grew a
//! router by 600-770 MiB.
//!
//! - A request body reserves its declared length before it is read; when the budget is
//!   spent it waits (the body stays in the client's socket: back-pressure), and after
//!   [`RESERVE_WAIT`] the request gets a 503.
//! - An answer reserves its size once built and holds it in its body ([`Answer`]) until
//!   hyper has sent it or the connection is gone; when the budget is spent it waits the same
//!   way, and the answer is dropped for a 503.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default of the process's budget: bytes of bodies and unsent answers held at once.
pub const DEFAULT_HTTP_MEMORY: usize = 128 * 1024 * 1024;
/// How long a request waits for its share before it gets a 503.
pub const RESERVE_WAIT: Duration = Duration::from_secs(5);
/// Unit of the semaphore (its permits are counted in u32): 1 KiB.
const UNIT: usize = 1024;

/// A budget of bytes.
#[derive(Debug)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total_units: usize,
}

/// Bytes held from a [`MemoryBudget`]; returned when dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl MemoryBudget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: usize) -> MemoryBudget {
        let total_units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        MemoryBudget { units: Arc::new(Semaphore::new(total_units)), total_units }
    }

    /// Holds `bytes`, waiting up to `wait` for them; `None` when they did not free up in
    /// time. More than the whole budget is held as the whole budget (one such request at a
    /// time, rather than none ever).
    pub async fn reserve(&self, bytes: usize, wait: Duration) -> Option<Held> {
        if bytes == 0 {
            return Some(Held(None));
        }
        let units = bytes.div_ceil(UNIT).min(self.total_units);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let acquire = self.units.clone().acquire_many_owned(units);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(Held(Some(permit))),
            _ => None,
        }
    }

    /// Bytes not held now.
    pub fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }
}

/// The budget of this process's HTTP doors.
pub fn http_memory() -> &'static MemoryBudget {
    static BUDGET: OnceLock<MemoryBudget> = OnceLock::new();
    BUDGET.get_or_init(|| MemoryBudget::new(DEFAULT_HTTP_MEMORY))
}

/// Bodies and answers up to this size hold no budget (the connection cap bounds them).
pub const FREE_BYTES: usize = 64 * 1024;

/// Holds the budget for a request body of `declared` bytes (its `Content-Length`, capped at
/// `max`); a 503 when it does not free up within [`RESERVE_WAIT`].
async fn hold_body(declared: Option<usize>, max: usize) -> Result<Held, crate::ErrorBody> {
    let bytes = declared.unwrap_or(0).min(max);
    if bytes <= FREE_BYTES {
        return Ok(Held(None));
    }
    http_memory().reserve(bytes, RESERVE_WAIT).await.ok_or_else(|| {
        crate::ErrorBody::unavailable(format!(
            "too many large requests in progress: no memory for a {bytes}-byte body within \
             {RESERVE_WAIT:?}; try again"
        ))
    })
}

/// `answer` holding the budget for its body until sent; a 503 in its place when the budget
/// does not free up within [`RESERVE_WAIT`] (the answer is dropped at once).
async fn hold_answer(
    answer: hyper::Response<Answer>,
) -> Result<hyper::Response<Answer>, crate::ErrorBody> {
    let bytes = answer.body().len();
    if bytes <= FREE_BYTES {
        return Ok(answer);
    }
    match http_memory().reserve(bytes, RESERVE_WAIT).await {
        Some(held) => Ok(answer.map(|b| b.holding(held))),
        None => Err(crate::ErrorBody::unavailable(format!(
            "too many large answers not yet taken by their clients: no memory for a {bytes}-byte \
             answer within {RESERVE_WAIT:?}; try again"
        ))),
    }
}

/// Serves one HTTP request within the budget: its body's declared length (capped at `max`)
/// is held while `serve` runs, and its answer's size until sent; when either does not free
/// up in time the answer is the 503 that `refuse` builds.
pub async fn within_budget(
    headers: &hyper::HeaderMap,
    max: usize,
    serve: impl std::future::Future<Output = hyper::Response<Answer>>,
    refuse: impl Fn(&crate::ErrorBody) -> hyper::Response<Answer>,
) -> hyper::Response<Answer> {
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let answer = match hold_body(declared, max).await {
        Ok(_held) => serve.await,
        Err(e) => return refuse(&e),
    };
    match hold_answer(answer).await {
        Ok(a) => a,
        Err(e) => refuse(&e),
    }
}

/// The body of an HTTP answer: its bytes in one frame, and the budget they hold until the
/// body is dropped (sent, or its connection gone).
#[derive(Debug, Default)]
pub struct Answer {
    data: Option<Bytes>,
    held: Option<Held>,
}

impl Answer {
    /// An answer of `data`, holding nothing yet.
    pub fn new(data: impl Into<Bytes>) -> Answer {
        let data: Bytes = data.into();
        Answer { data: (!data.is_empty()).then_some(data), held: None }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.data.as_ref().map_or(0, Bytes::len)
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same answer, holding `held` until it is dropped.
    pub fn holding(mut self, held: Held) -> Answer {
        self.held = Some(held);
        self
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_held_wait_for_bytes_returned() {
        let b = MemoryBudget::new(10 * UNIT);
        let a = b.reserve(6 * UNIT, Duration::ZERO).await.unwrap();
        assert_eq!(b.available(), 4 * UNIT);
        assert!(b.reserve(5 * UNIT, Duration::from_millis(20)).await.is_none());
        let answer = Answer::new(vec![1u8; 100]).holding(a);
        assert_eq!(answer.len(), 100);
        drop(answer);
        assert_eq!(b.available(), 10 * UNIT);
        // More than the whole budget holds the whole budget.
        let all = b.reserve(1 << 30, Duration::ZERO).await.unwrap();
        assert_eq!(b.available(), 0);
        drop(all);
        assert!(b.reserve(0, Duration::ZERO).await.is_some());
    }
}
