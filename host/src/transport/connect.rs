//! Connecting to the NATS server: credentials (token, user and password,
//! NKey seed, `.creds` file), TLS (a CA file, a client certificate), and
//! keeping secrets out of logs and errors.
//!
//! Secrets are read when the node joins, from the environment or a file
//! named in `[cluster]`; the settings hold only where they come from. A
//! password in the transporter URL is shown as `***` wherever the URL is.
//! It opens the connection and must not publish or subscribe (`nats` does).

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use async_nats::{Client, ConnectOptions, Event};

use super::bounds::DropLog;
use super::error::TransportError;
use crate::manifest::{ClusterAuth, ClusterSettings, Secret};

pub use crate::manifest::redact;

/// Every secret in `url` (its user info), to scrub from a client's error text.
pub(super) fn scrub(message: &str, url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = message.replace(url, &redact(url));
    if let Some(at) = rest[..authority_end].rfind('@') {
        let info = &rest[..at];
        for part in info.split(':').chain([info]) {
            if part.len() >= 3 {
                out = out.replace(part, "***");
            }
        }
    }
    out
}

/// A secret's value (trimmed, not empty), for either bus; `Err` names its
/// source (`$VAR` or the file), never its value.
pub(super) fn secret_value(secret: &Secret) -> Result<String, String> {
    let (value, source) = match secret {
        Secret::Env(name) => (std::env::var(name).ok(), format!("${name}")),
        Secret::File(path) => (
            std::fs::read_to_string(path).ok(),
            path.display().to_string(),
        ),
    };
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(source),
    }
}

/// Reads a secret; the error names its source, never its value.
fn read_secret(secret: &Secret, what: &str) -> Result<String, TransportError> {
    secret_value(secret).map_err(|source| {
        TransportError::Credentials(format!("the NATS {what} from {source} is missing or empty"))
    })
}

fn readable(path: &Path, what: &str) -> Result<(), TransportError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        _ => Err(TransportError::Credentials(format!(
            "the {what} {} is not a readable file",
            path.display()
        ))),
    }
}

/// Connects with `settings`' credentials and TLS as `node_id`;
/// `capacity` is each subscription's buffer. A message the client drops
/// because a subscription's buffer is full is counted in `drops`, and the
/// connection's troubles are logged.
pub async fn connect(
    settings: &ClusterSettings,
    node_id: &str,
    capacity: usize,
    drops: Arc<DropLog>,
) -> Result<Client, TransportError> {
    let node: Arc<str> = node_id.into();
    let mut options = ConnectOptions::new()
        .name(format!("steedos-wasm {node_id}"))
        .no_echo()
        .subscription_capacity(capacity)
        .client_capacity(1 << 14)
        .connection_timeout(Duration::from_secs(10))
        .event_callback(move |event| {
            let (drops, node) = (drops.clone(), node.clone());
            async move { on_event(&drops, &node, event) }
        });
    options = match &settings.auth {
        ClusterAuth::None => options,
        ClusterAuth::Token(secret) => options.token(read_secret(secret, "token")?),
        ClusterAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), read_secret(password, "password")?)
        }
        ClusterAuth::NKey(secret) => options.nkey(read_secret(secret, "NKey seed")?),
        ClusterAuth::Credentials(path) => {
            readable(path, "credentials file")?;
            options.credentials_file(path).await.map_err(|e| {
                TransportError::Credentials(format!(
                    "the credentials file {} cannot be used: {e}",
                    path.display()
                ))
            })?
        }
    };
    let tls = &settings.tls;
    if let Some(ca) = &tls.ca {
        readable(ca, "TLS CA file")?;
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &tls.client {
        readable(cert, "TLS client certificate")?;
        readable(key, "TLS client key")?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if tls.required || tls.ca.is_some() || tls.client.is_some() {
        options = options.require_tls(true);
    }
    let url = &settings.transporter;
    options
        .connect(url.as_str())
        .await
        .map_err(|e| TransportError::Connect {
            url: redact(url),
            message: scrub(&e.to_string(), url),
        })
}

/// What the NATS client reports about the connection: each message it
/// dropped for a full subscription buffer is one packet dropped here.
fn on_event(drops: &DropLog, node: &str, event: Event) {
    match event {
        Event::SlowConsumer(sid) => drops.warn(
            node,
            "any",
            &format!("the NATS client's buffer of subscription {sid} was full: this node reads the bus more slowly than it is sent"),
        ),
        Event::Connected => tracing::debug!(node, "connected to NATS"),
        Event::Disconnected => {
            tracing::warn!(node, "disconnected from NATS; packets sent meanwhile are lost; reconnecting")
        }
        Event::ServerError(e) => tracing::warn!(node, error = %e, "NATS server error"),
        other => tracing::info!(node, event = %other, "NATS connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_secrets() {
        assert_eq!(
            redact("nats://app:s3cret@10.0.0.1:4222"),
            "nats://***@10.0.0.1:4222"
        );
        assert_eq!(
            redact("tls://tok3n@nats.example:4222/x"),
            "tls://***@nats.example:4222/x"
        );
        assert_eq!(redact("nats://10.0.0.1:4222"), "nats://10.0.0.1:4222");
        assert_eq!(redact("not a url"), "not a url");
        let url = "nats://app:s3cret@10.0.0.1:4222";
        let said = scrub(
            "failed nats://app:s3cret@10.0.0.1:4222 (user app:s3cret)",
            url,
        );
        assert!(!said.contains("s3cret"), "{said}");
    }

    #[test]
    fn a_missing_secret_names_its_source_only() {
        let e = read_secret(
            &Secret::Env("STEEDOS_TEST_SURELY_UNSET_VARIABLE".into()),
            "token",
        )
        .expect_err("unset");
        assert_eq!(
            e.to_string(),
            "NATS credentials: the NATS token from $STEEDOS_TEST_SURELY_UNSET_VARIABLE is missing or empty"
        );
    }
}
