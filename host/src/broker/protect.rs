//! The protections, as one layer around any route a call takes: the
//! circuit breaker, retries with backoff, the fallback and the per-action
//! bulkhead (the timeout is the call's deadline, clamped in `call.rs`).
//!
//! [`Layer::run`] wraps one attempt of a call, whatever runs it: an
//! instance of a local package or another node (`call.rs` puts it around
//! both routes, and calls the fallback it names).
//! A local action is protected by its own package's settings, whoever
//! calls it; an action on another node by the caller's: a package's
//! `circuit` (one breaker per remote action it calls), its `retry`, and the
//! `[packages.<caller>.actions."<package>.<action>"]` entry (`idempotent`,
//! `fallback`), as a Moleculer node applies its own breaker and retry
//! policy to the remote actions it calls; a call from outside (HTTP, the
//! host's API) by the same keys under `[gateway]`.
//!
//! The mechanisms themselves (breaker states, backoff delays) are in
//! [`resilience`](crate::resilience); this module only applies them. It
//! must not route, pick instances or decode parameters: it knows nothing
//! of the broker beyond the settings it is given (see `call.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::context::{CallContext, CallError, Human};
use crate::kv::cache::CachedAction;
use crate::manifest::{ActionPolicy, CallerProtection, CircuitPolicy, PackageSpec, RetryPolicy};
use crate::package::ActionType;
use crate::resilience::{self, Admission, CircuitBreaker};

/// The most remote actions one package keeps a circuit breaker for; past
/// it, calls to further actions go unguarded by a breaker (logged once).
const REMOTE_BREAKERS_MAX: usize = 1024;

/// How one local action is protected: its circuit breaker, whether it may
/// be retried, its fallback, and its own wait-queue bound.
pub(super) struct ActionProtection {
    pub(super) breaker: Option<CircuitBreaker>,
    pub(super) idempotent: bool,
    pub(super) fallback: Option<String>,
    /// Its `cache` property: answers kept in the app's cache (see `cache.rs`).
    pub(super) cache: Option<CachedAction>,
    queue: Option<usize>,
    waiting: AtomicUsize,
}

impl ActionProtection {
    /// The protections of `package`'s `action`.
    pub(super) fn new(spec: &PackageSpec, package: &str, action: &str) -> Self {
        let own = spec.actions.iter().find(|p| p.name == action);
        ActionProtection {
            breaker: spec.circuit.clone().map(CircuitBreaker::new),
            idempotent: own.is_some_and(|p| p.idempotent),
            fallback: own.and_then(|p| p.fallback.clone()),
            cache: own
                .and_then(|p| p.cache.clone())
                .map(|policy| CachedAction::new(policy, package, action)),
            queue: own.and_then(|p| p.queue),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Takes a place in this action's bulkhead: `Err` when its queue bound
    /// is reached; the place is given back when the guard drops.
    pub(super) fn enter_queue(
        &self,
        label: impl Fn() -> String,
    ) -> Result<impl Drop + '_, CallError> {
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let guard = Dec(&self.waiting);
        match self.queue {
            Some(limit) if waiting >= limit => Err(CallError::Overloaded(format!(
                "{}: {limit} calls of this action are already waiting (its queue limit)",
                label()
            ))),
            _ => Ok(guard),
        }
    }
}

/// Decrements a counter when dropped.
struct Dec<'a>(&'a AtomicUsize);

impl Drop for Dec<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a package's calls to actions on other nodes are protected: by its
/// own `circuit` and `retry`, and its entries named after those actions.
pub(super) struct RemoteProtection {
    circuit: Option<CircuitPolicy>,
    retry: RetryPolicy,
    /// Entries of `[packages.<name>.actions]` naming no action of the package.
    entries: Vec<ActionPolicy>,
    breakers: RwLock<HashMap<Box<str>, Arc<CircuitBreaker>>>,
    /// Whether running out of breakers was logged (once is enough).
    full_logged: AtomicBool,
}

/// The protections of one call to another node.
pub(super) struct RemoteGuard<'a> {
    pub(super) breaker: Option<Arc<CircuitBreaker>>,
    pub(super) retry: Option<&'a RetryPolicy>,
    pub(super) fallback: Option<&'a str>,
}

impl RemoteGuard<'_> {
    /// No protections: a call as it comes.
    pub(super) const NONE: RemoteGuard<'static> = RemoteGuard {
        breaker: None,
        retry: None,
        fallback: None,
    };

    pub(super) fn layer(&self) -> Layer<'_> {
        Layer {
            breaker: self.breaker.as_deref(),
            retry: self.retry,
        }
    }
}

impl RemoteProtection {
    pub(super) fn new(spec: &PackageSpec, own: &[ActionType]) -> Self {
        let entries = spec
            .actions
            .iter()
            .filter(|p| p.name.contains('.') && !own.iter().any(|a| a.name == p.name))
            .cloned()
            .collect();
        Self::of(spec.circuit.clone(), spec.retry.clone(), entries)
    }

    /// The protections of calls from outside (HTTP, the host's API): the
    /// `circuit`, `retry` and `actions` of `[gateway]`.
    pub(super) fn outside(caller: &CallerProtection) -> Self {
        let entries = caller.actions.clone();
        Self::of(caller.circuit.clone(), caller.retry.clone(), entries)
    }

    fn of(circuit: Option<CircuitPolicy>, retry: RetryPolicy, entries: Vec<ActionPolicy>) -> Self {
        RemoteProtection {
            circuit,
            retry,
            entries,
            breakers: RwLock::new(HashMap::new()),
            full_logged: AtomicBool::new(false),
        }
    }

    /// The protections of a call to `action` on another node; `served`
    /// says whether a node serves it (only those get a breaker, so that
    /// names a guest makes up cost nothing).
    pub(super) fn guard(&self, action: &str, served: impl FnOnce() -> bool) -> RemoteGuard<'_> {
        let entry = self.entries.iter().find(|e| e.name == action);
        RemoteGuard {
            breaker: self.breaker(action, served),
            retry: entry.filter(|e| e.idempotent).map(|_| &self.retry),
            fallback: entry.and_then(|e| e.fallback.as_deref()),
        }
    }

    fn breaker(&self, action: &str, served: impl FnOnce() -> bool) -> Option<Arc<CircuitBreaker>> {
        let policy = self.circuit.as_ref()?;
        if let Some(b) = self
            .breakers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(action)
        {
            return Some(b.clone());
        }
        if !served() {
            return None;
        }
        let mut all = self.breakers.write().unwrap_or_else(|p| p.into_inner());
        if all.len() >= REMOTE_BREAKERS_MAX && !all.contains_key(action) {
            if self.full_logged.swap(true, Ordering::Relaxed) {
                return None;
            }
            tracing::warn!(
                action,
                limit = REMOTE_BREAKERS_MAX,
                "too many remote actions to keep a circuit breaker for each; this one has none"
            );
            return None;
        }
        let b = all
            .entry(action.into())
            .or_insert_with(|| Arc::new(CircuitBreaker::new(policy.clone())));
        Some(b.clone())
    }

    /// Remote actions and the state of their breaker, for reports.
    pub(super) fn circuits(&self) -> Vec<(String, &'static str)> {
        let all = self.breakers.read().unwrap_or_else(|p| p.into_inner());
        let mut circuits: Vec<_> = all
            .iter()
            .map(|(a, b)| (a.to_string(), b.state_name()))
            .collect();
        circuits.sort();
        circuits
    }
}

/// The breaker and retries around the attempts of one call.
pub(super) struct Layer<'a> {
    pub(super) breaker: Option<&'a CircuitBreaker>,
    /// The retry policy, when the action may be retried.
    pub(super) retry: Option<&'a RetryPolicy>,
}

impl Layer<'_> {
    /// Runs `attempt` (given when it begins) under the breaker, again
    /// after each failure while retries and the caller's deadline allow;
    /// `record` sees every attempt's outcome, a refusal by the breaker too.
    pub(super) async fn run<T, Fut>(
        &self,
        label: impl Fn() -> String,
        ctx: &CallContext,
        mut attempt: impl FnMut(Instant) -> Fut,
        mut record: impl FnMut(Instant, &Result<T, CallError>),
    ) -> Result<T, CallError>
    where
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut retries = 0;
        loop {
            let started = Instant::now();
            let admission = self.breaker.map_or(Admission::Pass, |b| b.admit(started));
            let outcome = match admission {
                Admission::Reject(after) => {
                    let outcome = Err(CallError::Overloaded(format!(
                        "{}: circuit open after repeated failures; the next probe in {}",
                        label(),
                        Human(after)
                    )));
                    record(started, &outcome);
                    return outcome;
                }
                Admission::Pass | Admission::Probe => attempt(started).await,
            };
            if let Some(b) = self.breaker {
                let failed = matches!(&outcome, Err(e) if resilience::is_failure(e));
                b.record(failed, Instant::now());
            }
            record(started, &outcome);
            let Some(retry) = self.retry else {
                return outcome;
            };
            match &outcome {
                Err(e) if resilience::is_failure(e) && retries < retry.max => {
                    retries += 1;
                    let delay = resilience::retry_delay(retry, retries);
                    if ctx.remaining() <= delay {
                        return outcome;
                    }
                    tracing::debug!(action = %label(), attempt = retries, "retrying an idempotent action");
                    // Boxed: a timer in place would grow every call's future.
                    Box::pin(tokio::time::sleep(delay)).await;
                }
                _ => return outcome,
            }
        }
    }
}

/// Whether a call to another node that ended in `e` goes to its fallback:
/// the callee's failures, and no node serving it any more.
pub(super) fn remote_fallback_applies(e: &CallError) -> bool {
    resilience::is_failure(e) || matches!(e, CallError::NotFound(_))
}
