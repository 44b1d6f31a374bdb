//! HTTP served by packages: a request for a package that exports
//! `wasi:http/incoming-handler` runs on one of its pooled instances, as a
//! call does: the package's timeout (bounded by the caller's deadline),
//! its queue, scaling, and the lifecycle's restart when the handler
//! faults. The response head comes back as soon as the guest sets it; the
//! instance stays checked out while the body streams and goes back to the
//! pool (or is retired) when the handler returns, in a task of its own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Body;
use tokio::sync::oneshot;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::call::{unavailable, within};
use super::lifecycle::Lease;
use super::{Broker, DEADLINE_GRACE, InFlight, Service};
use crate::context::{CallContext, CallError};
use crate::http::WatchedBody;
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
        let label: Arc<str> = format!("{}.{HTTP_HANDLER}", service.name()).into();
        if self.closing.load(Ordering::Acquire) {
            return Err(CallError::Overloaded(format!(
                "{label}: the host is shutting down"
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
        let mut instance = self.http_instance(service, &label, ctx.deadline).await?;
        let (answer, answered) = oneshot::channel::<HttpAnswer>();
        let call = match instance.http_request(req, Scheme::Http, answer) {
            Ok(call) => call,
            Err(why) => {
                service.pool.checkin(instance);
                return Err(CallError::InvalidParams(format!(
                    "{label}: the request cannot be handed to the package: {why}"
                )));
            }
        };
        let (done, outcome) = oneshot::channel::<Result<(), CallError>>();
        let (broker, svc, task_label) = (self.clone(), service.clone(), label.clone());
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let deadline = ctx.deadline;
            let mut lease = Lease::new(&broker, &svc, instance);
            let ran = {
                let run = std::pin::pin!(lease.get().run_http(call, ctx));
                within(deadline + DEADLINE_GRACE, run).await
            };
            let result = match ran {
                Some(Ok(())) if svc.package.spec.http.instance_per_request => {
                    // The body is complete before the next instance starts.
                    let _ = done.send(Ok(()));
                    lease.renew().await;
                    return;
                }
                Some(Ok(())) => {
                    lease.release();
                    Ok(())
                }
                Some(Err(fault)) => Err(lease.fault(fault, &task_label, budget)),
                None => Err(lease.fault(Fault::Timeout, &task_label, budget)),
            };
            let _ = done.send(result);
        });
        answer_of(&label, answered, outcome).await
    }

    /// An idle instance of `service`, now or once one comes back.
    async fn http_instance(
        &self,
        service: &Arc<Service>,
        label: &str,
        deadline: Instant,
    ) -> Result<LiveInstance, CallError> {
        match service.pool.checkout(true, deadline) {
            Ok(Checkout::Ready(i)) => Ok(i),
            Ok(Checkout::Queued(wait)) => {
                self.scale_up(service);
                match wait.await {
                    Ok(i) => Ok(i),
                    Err(Unserved::Released) => Err(unavailable(service, label)),
                    Err(Unserved::Expired) => Err(CallError::Timeout(format!(
                        "{label}: no instance became idle before the deadline ({} instances busy)",
                        service.package.spec.instances
                    ))),
                }
            }
            Err(Refusal::QueueFull) => Err(CallError::Overloaded(format!(
                "{label}: {} requests are already waiting (queue limit)",
                service.package.spec.queue
            ))),
            Err(Refusal::NoInstance | Refusal::Busy) => Err(unavailable(service, label)),
        }
    }
}

/// The guest's response once it sets one, or why there is none: its
/// `wasi:http` error code, or the handler's fault, or its returning
/// without answering. The body ends as the handler does (see [`WatchedBody`]).
async fn answer_of(
    label: &str,
    mut answered: oneshot::Receiver<HttpAnswer>,
    mut outcome: oneshot::Receiver<Result<(), CallError>>,
) -> Result<hyper::Response<WatchedBody>, CallError> {
    let answer = tokio::select! {
        biased;
        answer = &mut answered => answer.ok(),
        ended = &mut outcome => {
            // The handler ended first: an answer it set just before ending
            // is there now; otherwise it faulted or never answered.
            match answered.try_recv() {
                Ok(answer) => {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(ended.unwrap_or(Ok(())));
                    outcome = rx;
                    Some(answer)
                }
                Err(_) => {
                    return Err(match ended {
                        Ok(Err(e)) => e,
                        _ => no_answer(label),
                    });
                }
            }
        }
    };
    match answer {
        Some(Ok(response)) => Ok(response.map(|body| WatchedBody::new(body, outcome))),
        Some(Err(code)) => Err(CallError::Crashed(format!(
            "{label} answered with the error {code:?} instead of a response"
        ))),
        None => Err(match outcome.await {
            Ok(Err(e)) => e,
            _ => no_answer(label),
        }),
    }
}

fn no_answer(label: &str) -> CallError {
    CallError::Crashed(format!(
        "{label} returned without setting a response (`response-outparam.set`)"
    ))
}
