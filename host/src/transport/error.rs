//! What can go wrong starting the transport or doing what it is asked.
//!
//! A leaf: every room of the transport reports through [`TransportError`];
//! it imports none of them but the packet's own error.

use std::time::Duration;

use super::packet;
use crate::context::Human;

/// Why the transport could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The NATS server could not be reached, or refused us.
    #[error("cannot connect to the transporter {url}: {message}")]
    Connect {
        /// The transporter URL, without its password.
        url: String,
        /// The cause.
        message: String,
    },
    /// A credential or TLS file could not be read.
    #[error("NATS credentials: {0}")]
    Credentials(String),
    /// This node's id or namespace cannot be part of a subject.
    #[error("cluster setting `{key}`: {problem}")]
    Settings {
        /// `node_id`, `namespace`, or `node` (a node id given to ping).
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A packet was refused: it would pass a bound of this node.
    #[error("{kind} refused: {why}")]
    Refused {
        /// The packet kind.
        kind: &'static str,
        /// Which bound.
        why: String,
    },
    /// A subscription was refused.
    #[error("cannot subscribe to `{subject}`: {message}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The cause.
        message: String,
    },
    /// A packet could not be sent.
    #[error("cannot send {kind} to `{subject}`: {message}")]
    Publish {
        /// The packet kind.
        kind: &'static str,
        /// The subject.
        subject: String,
        /// The cause.
        message: String,
    },
    /// A packet could not be written.
    #[error(transparent)]
    Packet(#[from] packet::PacketError),
    /// No answer in time.
    #[error("node `{node}` did not answer {kind} within {}", Human(*.within))]
    NoAnswer {
        /// The packet kind.
        kind: &'static str,
        /// The node asked.
        node: String,
        /// How long we waited.
        within: Duration,
    },
}
