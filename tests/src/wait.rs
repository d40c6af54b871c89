//! Polling with deadlines: the only way tests wait for something.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Some`, or the
/// deadline passes (then `None`).
pub async fn until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Like [`until`] for a boolean condition; panics with `what` on timeout.
pub async fn assert_eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let ok = until(timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
    assert!(
        ok.is_some(),
        "timed out after {timeout:?} waiting for: {what}"
    );
}
