//! The port through which `/admin` asks the app to deploy, upgrade and
//! remove packages: the app implements [`Operator`]; the gateway holds one.
//!
//! A leaf: it names what is asked and how it can fail, and must not know
//! HTTP or how the app does it.

use bytes::Bytes;

/// What the `/admin` API asks of the app: deploy, upgrade and remove packages.
pub trait Operator: Send + Sync + 'static {
    /// Deploys `name` (or upgrades it when it exists) to `component`.
    /// Returns a one-line description of what happened.
    fn deploy(
        &self,
        name: String,
        component: Bytes,
        settings: Vec<(String, String)>,
    ) -> BoxFuture<'_, Result<String, OperatorError>>;
    /// Removes `name`.
    fn remove(&self, name: String) -> BoxFuture<'_, Result<String, OperatorError>>;
}

/// A boxed future, as [`Operator`] returns them.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why an operation was refused; the old version, if any, keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The request is wrong (bad component, bad setting, incompatible types).
    #[error("{0}")]
    Invalid(String),
    /// No such package.
    #[error("{0}")]
    NotFound(String),
    /// The new version loaded but did not start.
    #[error("{0}")]
    Start(String),
}
