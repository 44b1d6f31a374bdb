//! The error of a RES: Moleculer's error as it travels ([`WireError`]),
//! and the host's [`CallError`] to and from it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::context::{CallError, ErrorKind, Failure};
use crate::guest_log::escape;

/// The error of a RES, as Moleculer's `Regenerator` writes and reads it.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct WireError {
    /// The error class: `ValidationError`, `ServiceNotFoundError`, ...
    #[serde(default)]
    pub name: Option<String>,
    /// The message.
    #[serde(default)]
    pub message: Option<String>,
    /// An HTTP-like status.
    #[serde(default)]
    pub code: Option<Value>,
    /// A machine-readable kind: `VALIDATION_ERROR`, `CRASHED`, ...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Whether a retry may succeed.
    #[serde(default)]
    pub retryable: Option<bool>,
    /// The node that raised it.
    #[serde(rename = "nodeID", default)]
    pub node_id: Option<String>,
    /// Details.
    #[serde(default)]
    pub data: Option<Value>,
    /// A stack trace, when the node sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

/// The Moleculer error a Node.js caller expects for `error`, raised by
/// `node` serving `action`: its kind's name, code and type, and only the
/// message's public part (no host paths: see [`CallError::public_message`]).
pub fn error_to_wire(error: &CallError, action: &str, node: &str) -> WireError {
    let kind = error.kind();
    let m = kind.moleculer();
    let message = error.public_message().into_owned();
    let data = match kind {
        ErrorKind::InvalidParams => {
            json!([{ "type": "wit", "message": message, "action": action, "nodeID": node }])
        }
        _ => json!({ "action": action, "nodeID": node, "reason": message }),
    };
    WireError {
        name: Some(m.name.into()),
        message: Some(message),
        code: Some(m.code.into()),
        kind: Some(m.kind.into()),
        retryable: Some(m.retryable),
        node_id: Some(node.into()),
        data: Some(data),
        stack: None,
    }
}

/// A Moleculer error from `node` as the caller's [`CallError`]; the
/// peer's text is escaped (one line, no control characters) before
/// anything logs or shows it.
pub fn error_from_wire(error: WireError, action: &str, node: &str) -> CallError {
    let name = error.name.as_deref().unwrap_or("Error");
    let kind = error.kind.as_deref().unwrap_or("");
    let code = error.code.as_ref().and_then(Value::as_u64).unwrap_or(500);
    let text = error.message.as_deref().unwrap_or("no message");
    let mut message = format!("{action} on node `{node}`: {name}: {text}");
    // A validation error lists what was wrong with which field in `data`.
    let details: Vec<&str> = match &error.data {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.get("message").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    };
    if !details.is_empty() {
        message = format!("{message} ({})", details.join("; "));
    }
    match ErrorKind::from_moleculer(name, kind, code) {
        // The peer's own error: its code is the status it names, as data.
        ErrorKind::Failed => {
            let code = error.code.as_ref().and_then(Value::as_u64);
            CallError::Failed(Failure::with_status(escape(&message), code))
        }
        other => CallError::new(other, escape(&message)),
    }
}
