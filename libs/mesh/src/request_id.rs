//! The request id every audit event carries, so that a caller's logs and the audit trail can be joined: the
//! caller's `x-request-id` when it sent a usable one, else a fresh UUIDv7. A tower layer makes it a
//! task-local of the call, which the audit scope reads when the call starts.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current call's request id, inside a handler.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// A caller's id is kept when it is short and printable; anything else gets a fresh one.
fn usable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Wraps the server's services so that each call runs with its request id.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = WithRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithRequestId { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct WithRequestId<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for WithRequestId<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| usable(v))
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        Box::pin(REQUEST_ID.scope(id, self.inner.call(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::usable;

    #[test]
    fn only_short_printable_ids_are_kept() {
        assert!(usable("req-42"));
        assert!(!usable(""));
        assert!(!usable("has space"));
        assert!(!usable(&"x".repeat(129)));
    }
}
