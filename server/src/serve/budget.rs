//! Memory budgets shared by every connection: the request bodies buffered at once, and the
//! message text the engine is ingesting at once.
//!
//! Why two: a body is held from its first byte until its handler ends
//! ([`BodyBudget`], `[limits] body_buffer_bytes_max`: beyond it a request is refused with
//! `503 server_busy` and `Retry-After`, so `connections_max` × `body_bytes_max` — 8 GiB
//! by default — is no longer what a flood of large bodies may hold). The engine's working
//! memory while it ingests is a multiple of the text it is given (chunks, their indexing
//! context and analysis, term counts, vectors, the WAL payload: issue 14 measured ~35×
//! the body at the peak of one 8 MiB ingest), so the text handed to the engine at once is
//! bounded too ([`IngestBudget`]): an ingest waits for its share instead of being refused,
//! since its body has been paid for already.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Seconds a client refused by the body budget is asked to wait before retrying: bodies
/// in flight are read and handled within seconds.
pub(crate) const SERVER_BUSY_RETRY_AFTER_SECS: u64 = 1;

/// The bytes of request bodies buffered at once, across all connections.
pub(crate) struct BodyBudget {
    /// Bytes reserved by live [`Reservation`]s.
    used: Arc<AtomicUsize>,
    /// `[limits] body_buffer_bytes_max`.
    max: usize,
    /// Requests refused for want of room, since start.
    refused: AtomicU64,
}

/// Bytes of a [`BodyBudget`] held by one request; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl BodyBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max,
            refused: AtomicU64::new(0),
        }
    }

    /// An empty reservation, to [`grow`](Reservation::grow) as a body of unknown length
    /// arrives.
    pub(crate) fn empty(&self) -> Reservation {
        Reservation {
            used: Arc::clone(&self.used),
            bytes: 0,
        }
    }

    /// Reserves `bytes`, or refuses with `503 server_busy` if that would take the bodies
    /// buffered at once past the budget.
    pub(crate) fn reserve(&self, bytes: usize) -> Result<Reservation, ApiError> {
        let mut reservation = self.empty();
        self.grow(&mut reservation, bytes)?;
        Ok(reservation)
    }

    /// Adds `bytes` to `reservation` (a chunked body's next frame), or refuses as
    /// [`reserve`](Self::reserve) does; a refused reservation keeps what it had.
    pub(crate) fn grow(&self, reservation: &mut Reservation, bytes: usize) -> Result<(), ApiError> {
        let max = self.max;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= max)
            })
            .map_err(|_| {
                self.refused.fetch_add(1, Ordering::Relaxed);
                busy(max)
            })?;
        reservation.bytes += bytes;
        Ok(())
    }

    /// Bytes reserved now (the `/metrics` gauge `memoryrouter_request_body_buffered_bytes`).
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The budget, `[limits] body_buffer_bytes_max`.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Requests refused with `503 server_busy` since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The answer to a body the budget has no room for.
fn busy(max: usize) -> ApiError {
    let mut error = ApiError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "server_busy",
        format!(
            "The server is buffering its limit of {max} bytes of request bodies; retry in \
             {SERVER_BUSY_RETRY_AFTER_SECS} s."
        ),
    );
    error.retry_after_secs = Some(SERVER_BUSY_RETRY_AFTER_SECS);
    error
}

/// The message text handed to the engine's ingest at once, in bytes. Small ingests share
/// it freely; one larger than the whole budget waits until it runs alone. FIFO, so a large
/// ingest is not starved by a stream of small ones.
pub(crate) struct IngestBudget {
    permits: Arc<Semaphore>,
    /// Permits of the whole budget (a semaphore's are `u32`).
    max: u32,
}

impl IngestBudget {
    pub(crate) fn new(max_bytes: usize) -> Self {
        let max = u32::try_from(max_bytes).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// Waits until `text_bytes` (at most the whole budget) can be handed to the engine.
    pub(crate) async fn acquire(&self, text_bytes: usize) -> OwnedSemaphorePermit {
        let wanted = u32::try_from(text_bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max);
        match Arc::clone(&self.permits).acquire_many_owned(wanted).await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("the ingest budget's semaphore is never closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_budget_refuses_beyond_its_bytes_and_gets_them_back() {
        let budget = BodyBudget::new(100);
        let a = budget.reserve(60).unwrap();
        let refused = budget.reserve(41).unwrap_err();
        assert_eq!(
            (
                refused.status.as_u16(),
                refused.code,
                refused.retry_after_secs
            ),
            (503, "server_busy", Some(SERVER_BUSY_RETRY_AFTER_SECS))
        );
        let mut b = budget.reserve(40).unwrap();
        assert_eq!(budget.used(), 100);
        assert!(budget.grow(&mut b, 1).is_err());
        drop(a);
        budget.grow(&mut b, 60).unwrap();
        assert_eq!(budget.used(), 100);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.reserve(usize::MAX).is_err());
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn the_ingest_budget_lets_small_ingests_share_and_a_large_one_run_alone() {
        let budget = IngestBudget::new(100);
        let a = budget.acquire(30).await;
        let b = budget.acquire(30).await;
        // Larger than the whole budget: clamped, so it waits for the others and then runs.
        let mut large = Box::pin(budget.acquire(1_000));
        assert!(
            futures_poll_once(&mut large).is_none(),
            "ran beside two others"
        );
        drop((a, b));
        let large = large.await;
        assert_eq!(large.num_permits(), 100);
    }

    /// Polls a future once with a no-op waker.
    fn futures_poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(future).poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }
}
