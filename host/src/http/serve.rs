//! The bodies of HTTP a package serves, as they stream through hyper: the
//! request body handed to the guest, held to the gateway's size and time
//! limits as it arrives ([`LimitedBody`]), and the response body the guest
//! writes, which ends in an error rather than cleanly when the handler
//! faulted before finishing it ([`WatchedBody`]), so a client never takes a
//! truncated body for a whole one. Neither buffers: a frame goes through
//! as it comes (wasmtime-wasi-http holds at most two chunks of a response).
//! Also the check, at load, that every `[gateway.http]` route names a
//! package that serves HTTP ([`check_routes`]).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::Error;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::context::CallError;
use crate::manifest::HttpRoute;

/// Why a served response body stopped short.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body held to `max` bytes and to a deadline of `timeout`
/// plus one second per `rate` bytes received (the gateway's `max_body`,
/// `body_timeout` and `min_body_rate`). Past either, the guest reads an
/// error (`HTTP-request-body-size` or `connection-read-timeout`).
pub struct LimitedBody<B> {
    inner: B,
    left: u64,
    max: u64,
    timeout: Duration,
    rate: u64,
    received: u64,
    started: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> LimitedBody<B> {
    /// `inner`, limited as the gateway limits the bodies of actions.
    pub fn new(inner: B, max: u64, timeout: Duration, rate: u64) -> LimitedBody<B> {
        LimitedBody {
            inner,
            left: max,
            max,
            timeout,
            rate: rate.max(1),
            received: 0,
            started: Instant::now(),
            timer: None,
        }
    }

    fn due(&self) -> Instant {
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / self.rate);
        self.started + self.timeout.saturating_add(earned)
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Error>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.left {
                        this.left = 0;
                        return Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(
                            this.max.saturating_add(1),
                        )))));
                    }
                    this.left -= n;
                    this.received += n;
                    let due = this.due();
                    if let Some(timer) = this.timer.as_mut() {
                        timer.as_mut().reset(due);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let due = this.due();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a handler ended, or the channel its outcome will come by.
pub enum Outcome {
    /// The handler already returned (or faulted).
    Known(Result<(), CallError>),
    /// The handler runs on; its outcome comes here when it ends.
    Pending(oneshot::Receiver<Result<(), CallError>>),
}

/// The response body a guest writes, watched: when it ends, the handler's
/// outcome decides whether it ended whole (the handler returned) or must
/// end in an error (the handler faulted, or its package stopped it).
pub struct WatchedBody {
    inner: HyperOutgoingBody,
    outcome: Option<Outcome>,
}

impl WatchedBody {
    /// `inner`, ending as `outcome` says once the guest stops writing.
    pub fn new(inner: HyperOutgoingBody, outcome: Outcome) -> Self {
        WatchedBody {
            inner,
            outcome: Some(outcome),
        }
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(e)) => {
                this.outcome = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                let result = match this.outcome.take() {
                    None => return Poll::Ready(None),
                    Some(Outcome::Known(result)) => Some(result),
                    Some(Outcome::Pending(mut rx)) => match Pin::new(&mut rx).poll(cx) {
                        Poll::Ready(result) => result.ok(),
                        Poll::Pending => {
                            this.outcome = Some(Outcome::Pending(rx));
                            return Poll::Pending;
                        }
                    },
                };
                match result {
                    Some(Ok(())) => Poll::Ready(None),
                    Some(Err(e)) => Poll::Ready(Some(Err(e.message().to_string().into()))),
                    None => Poll::Ready(Some(Err("the handler ended without an outcome".into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.outcome.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Every route of `routes` names a package that serves HTTP: `serves`
/// answers, for a package that loaded, whether it exports
/// `wasi:http/incoming-handler` (`None` for one that did not load: its
/// own failure says why, and its routes answer 503).
pub fn check_routes(
    routes: &[HttpRoute],
    serves: impl Fn(&str) -> Option<bool>,
) -> Result<(), (String, String)> {
    for route in routes {
        if serves(&route.package) == Some(false) {
            let reason = format!(
                "{}: gateway.http.\"{}\": package `{}` does not export \
                 `wasi:http/incoming-handler@0.2`, so it cannot serve HTTP (build it for the \
                 `wasi:http/proxy` world, or route this path elsewhere)",
                route.at, route.path, route.package
            );
            return Err((route.package.clone(), reason));
        }
    }
    Ok(())
}
