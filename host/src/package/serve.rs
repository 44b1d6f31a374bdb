//! Serving HTTP on a live instance: a request handed to the component's
//! `wasi:http/incoming-handler@0.2` through wasmtime-wasi-http's own
//! resources (`new_incoming_request`, `new_response_outparam`). The
//! response head comes back through the outparam as soon as the guest sets
//! it; its body streams while the handler runs, so the instance is held
//! (and its deadline armed) until the handler returns.

use bytes::Bytes;
use hyper::body::Body;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use super::PackageError;
use super::instance::{Fault, LiveInstance, Package};
use crate::context::CallContext;

/// What a guest answers a request with: its response (head now, body
/// streaming), or the `wasi:http` error code it set instead.
pub type HttpAnswer = Result<hyper::Response<HyperOutgoingBody>, ErrorCode>;

/// Every `[gateway.http]` route names a package that serves HTTP, among
/// `packages` (one that did not load has its own failure, and its routes
/// answer 503).
pub fn check_http_routes(
    routes: &[crate::manifest::HttpRoute],
    packages: &[Package],
) -> Result<(), PackageError> {
    crate::http::check_routes(routes, |name| {
        let package = packages.iter().find(|p| p.spec.name == name)?;
        Some(package.ty.serves_http())
    })
    .map_err(|(package, reason)| PackageError::Unsupported {
        package,
        item: "[gateway.http]".to_string(),
        reason,
    })
}

/// A request handed into an instance's store, waiting for its handler to run.
pub struct HttpCall {
    request: Resource<HostIncomingRequest>,
    outparam: Resource<HostResponseOutparam>,
}

impl LiveInstance {
    /// Whether this instance exports `wasi:http/incoming-handler`.
    pub fn serves_http(&self) -> bool {
        self.http.is_some()
    }

    /// Hands `req` into the instance's store; its answer goes to `answer`.
    /// No guest code runs: on an error the instance is as it was.
    pub fn http_request<B>(
        &mut self,
        req: hyper::Request<B>,
        scheme: Scheme,
        answer: tokio::sync::oneshot::Sender<HttpAnswer>,
    ) -> Result<HttpCall, String>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let mut view = self.store.data_mut().http();
        let request = view
            .new_incoming_request(scheme, req)
            .map_err(|e| format!("{e:#}"))?;
        match view.new_response_outparam(answer) {
            Ok(outparam) => Ok(HttpCall { request, outparam }),
            Err(e) => {
                let _ = view.table.delete(request);
                Err(format!("{e:#}"))
            }
        }
    }

    /// Runs the handler on `call` under `ctx` (its deadline and request
    /// id); a [`Fault`] means this instance is dead.
    pub async fn run_http(&mut self, call: HttpCall, ctx: CallContext) -> Result<(), Fault> {
        if self.http.is_none() {
            return Err(Fault::Trap(
                "it does not export `wasi:http/incoming-handler`".into(),
            ));
        }
        self.arm(ctx);
        let r = match &self.http {
            Some(handler) => {
                handler
                    .call_handle(&mut self.store, call.request, call.outparam)
                    .await
            }
            None => Ok(()),
        };
        self.disarm();
        r.map_err(|e| self.fault(e))
    }
}
