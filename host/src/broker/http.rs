//! HTTP served by packages: a request for a package that exports
//! `wasi:http/incoming-handler` runs on one of its pooled instances, as a
//! call does: the package's timeout (bounded by the caller's deadline),
//! its queue, scaling, and the lifecycle's restart when the handler
//! faults. The handler runs on the request's own task until the guest sets
//! the response head; when it is still running then (its body streaming),
//! it goes on in a task of its own, the instance checked out until it
//! returns, then back to the pool (or retired).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Body;
use tokio::sync::oneshot;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::call::{unavailable, within};
use super::lifecycle::Lease;
use super::{Broker, DEADLINE_GRACE, InFlight, Service};
use crate::context::{CallContext, CallError};
use crate::http::{Outcome, WatchedBody};
use crate::package::{Fault, HttpAnswer, LiveInstance};
use crate::pool::{Checkout, Refusal, Unserved};

/// The name a package's served HTTP goes by in metrics and errors.
pub const HTTP_HANDLER: &str = "incoming-handler";

impl Broker {
    /// Hands `req` to `package`'s `wasi:http/incoming-handler`; its
    /// response, whose body streams while the handler runs.
    pub async fn serve_http<B>(
        self: &Arc<Self>,
        package: &str,
        req: hyper::Request<B>,
        ctx: CallContext,
    ) -> Result<hyper::Response<WatchedBody>, CallError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let Some(service) = self.service(package) else {
            return Err(CallError::NotFound(format!(
                "package `{package}` is not running (see /health)"
            )));
        };
        if !service.package.ty.serves_http() {
            return Err(CallError::NotFound(format!(
                "package `{package}` does not export `wasi:http/incoming-handler`"
            )));
        }
        let outcome = self.serve_on(&service, req, ctx, started).await;
        // The handler's metrics follow the actions'.
        service.record(service.package.ty.actions.len(), started, &outcome);
        outcome
    }

    async fn serve_on<B>(
        self: &Arc<Self>,
        service: &Arc<Service>,
        req: hyper::Request<B>,
        ctx: CallContext,
        now: Instant,
    ) -> Result<hyper::Response<WatchedBody>, CallError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        if self.closing.load(Ordering::Acquire) {
            return Err(CallError::Overloaded(format!(
                "{}: the host is shutting down",
                label_of(service)
            )));
        }
        let in_flight = InFlight::new(&self.in_flight);
        let budget = service
            .package
            .spec
            .timeout
            .min(ctx.deadline.saturating_duration_since(now));
        let ctx = CallContext {
            deadline: now + budget,
            ..ctx
        };
        let mut instance = self.http_instance(service, ctx.deadline).await?;
        let (answer, answered) = oneshot::channel::<HttpAnswer>();
        let call = match instance.http_request(req, Scheme::Http, answer) {
            Ok(call) => call,
            Err(why) => {
                service.pool.checkin(instance);
                return Err(CallError::InvalidParams(format!(
                    "{}: the request cannot be handed to the package: {why}",
                    label_of(service)
                )));
            }
        };
        let (broker, svc) = (self.clone(), service.clone());
        let run = async move {
            let _in_flight = in_flight;
            let deadline = ctx.deadline;
            let mut lease = Lease::new(&broker, &svc, instance);
            let ran = {
                let run = std::pin::pin!(lease.get().run_http(call, ctx));
                within(deadline + DEADLINE_GRACE, run).await
            };
            match ran {
                Some(Ok(())) if svc.package.spec.http.instance_per_request => {
                    // The response is whole; a fresh instance takes the slot
                    // without holding it up.
                    let used = lease.take();
                    tokio::spawn(async move { Lease::new(&broker, &svc, used).renew().await });
                    Ok(())
                }
                Some(Ok(())) => {
                    lease.release();
                    Ok(())
                }
                Some(Err(fault)) => Err(lease.fault(fault, &label_of(&svc), budget)),
                None => Err(lease.fault(Fault::Timeout, &label_of(&svc), budget)),
            }
        };
        answer_of(service, Handler(Some(Box::pin(run))), answered).await
    }

    /// An idle instance of `service`, now or once one comes back.
    async fn http_instance(
        &self,
        service: &Arc<Service>,
        deadline: Instant,
    ) -> Result<LiveInstance, CallError> {
        let label = || label_of(service);
        match service.pool.checkout(true, deadline) {
            Ok(Checkout::Ready(i)) => Ok(i),
            Ok(Checkout::Queued(wait)) => {
                self.scale_up(service);
                match wait.await {
                    Ok(i) => Ok(i),
                    Err(Unserved::Released) => Err(unavailable(service, &label())),
                    Err(Unserved::Expired) => Err(CallError::Timeout(format!(
                        "{}: no instance became idle before the deadline ({} instances busy)",
                        label(),
                        service.package.spec.instances
                    ))),
                }
            }
            Err(Refusal::QueueFull) => Err(CallError::Overloaded(format!(
                "{}: {} requests are already waiting (queue limit)",
                label(),
                service.package.spec.queue
            ))),
            Err(Refusal::NoInstance | Refusal::Busy) => Err(unavailable(service, &label())),
        }
    }
}

/// `<package>.incoming-handler`, for messages.
fn label_of(service: &Service) -> String {
    format!("{}.{HTTP_HANDLER}", service.name())
}

/// A handler's run: what it ends with (the instance is back in its pool,
/// renewed, or retired by then).
type Run = Pin<Box<dyn Future<Output = Result<(), CallError>> + Send>>;

/// A handler run, polled on the request's own task until the guest
/// answers (a small response is usually whole by then, with no task
/// spawned nor woken across threads). Still running then, its body
/// streaming, it goes on in a task of its own ([`Handler::detach`]); so
/// does one whose request is dropped: a handler always runs to its end or
/// its deadline, never cancelled mid-run by a client going away.
struct Handler(Option<Run>);

impl Future for Handler {
    type Output = Result<(), CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(run) = self.0.as_mut() else {
            return Poll::Ready(Err(CallError::Crashed(
                "the handler's outcome was already taken".into(),
            )));
        };
        let outcome = ready!(run.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(outcome)
    }
}

impl Handler {
    /// Goes on in a task of its own: its outcome, once it ends.
    fn detach(mut self) -> Outcome {
        let (done, outcome) = oneshot::channel();
        if let Some(run) = self.0.take() {
            tokio::spawn(async move {
                let _ = done.send(run.await);
            });
        }
        Outcome::Pending(outcome)
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        if let Some(run) = self.0.take() {
            // Without a runtime (the host is going down) the lease retires it.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(run);
            }
        }
    }
}

/// What happened first: the handler ended, or the guest answered.
enum Step {
    Ended(Result<(), CallError>),
    Answered(Option<HttpAnswer>),
}

/// The guest's response once it sets one, or why there is none: its
/// `wasi:http` error code, or the handler's fault, or its returning
/// without answering. The body ends as the handler does (see [`WatchedBody`]).
async fn answer_of(
    service: &Service,
    mut handler: Handler,
    mut answered: oneshot::Receiver<HttpAnswer>,
) -> Result<hyper::Response<WatchedBody>, CallError> {
    // The handler first: an answer it set just before ending is there once it ends.
    let step = std::future::poll_fn(|cx| {
        if let Poll::Ready(outcome) = Pin::new(&mut handler).poll(cx) {
            return Poll::Ready(Step::Ended(outcome));
        }
        Pin::new(&mut answered)
            .poll(cx)
            .map(|answer| Step::Answered(answer.ok()))
    })
    .await;
    let (answer, outcome) = match step {
        Step::Ended(ended) => match answered.try_recv() {
            Ok(answer) => (answer, Outcome::Known(ended)),
            Err(_) => return Err(ended.err().unwrap_or_else(|| no_answer(service))),
        },
        Step::Answered(Some(answer)) => (answer, handler.detach()),
        // The outparam went without a response: the handler says why.
        Step::Answered(None) => {
            return Err(handler.await.err().unwrap_or_else(|| no_answer(service)));
        }
    };
    match answer {
        Ok(response) => Ok(response.map(|body| WatchedBody::new(body, outcome))),
        Err(code) => Err(CallError::Crashed(format!(
            "{} answered with the error {code:?} instead of a response",
            label_of(service)
        ))),
    }
}

fn no_answer(service: &Service) -> CallError {
    CallError::Crashed(format!(
        "{} returned without setting a response (`response-outparam.set`)",
        label_of(service)
    ))
}
