//! Ids across the two worlds: Moleculer's (a span's id is its context's
//! id, its trace id is the request id, both UUID text) and OpenTelemetry's
//! (16-byte trace ids, 8-byte span ids), and the W3C `traceparent` header.
//!
//! The mapping is the one Moleculer's own exporters use (Zipkin's
//! `convertID`: the id without dashes, its first 16 hex digits, for a
//! span), so a Node.js span and ours name the same parent the same way:
//! a UUID request id is the trace id whole; any other text is hashed.

use crate::context::ContextId;

/// The trace id of a request id: the UUID itself, else a hash of the text.
pub fn trace_id(request_id: &str) -> u128 {
    match uuid::Uuid::try_parse(request_id) {
        Ok(u) => u.as_u128(),
        Err(_) => hashed(request_id) | 1,
    }
}

/// The span id of a context id: its first 8 bytes as a UUID (or the 16
/// hex digits a `traceparent` gave), else a hash of the text.
pub fn span_id(id: &ContextId) -> u64 {
    match id {
        ContextId::Uuid(n) => high(n.as_u128()),
        ContextId::Given(text) => span_id_of(text),
    }
}

/// [`span_id`] of an id as text.
pub fn span_id_of(text: &str) -> u64 {
    if text.len() == 16
        && let Ok(n) = u64::from_str_radix(text, 16)
    {
        return nonzero(n);
    }
    match uuid::Uuid::try_parse(text) {
        Ok(u) => high(u.as_u128()),
        Err(_) => nonzero(hashed(text) as u64),
    }
}

fn high(n: u128) -> u64 {
    nonzero((n >> 64) as u64)
}

/// An all-zero span id is invalid in W3C and OTLP.
fn nonzero(n: u64) -> u64 {
    if n == 0 { 1 } else { n }
}

fn hashed(text: &str) -> u128 {
    let hash = blake3::hash(text.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_be_bytes(bytes)
}

/// A trace id written as a request id (a hyphenated UUID), so that the
/// trace a `traceparent` names is the request id Node.js peers trace by.
pub fn request_id_of(trace: u128) -> String {
    uuid::Uuid::from_u128(trace).hyphenated().to_string()
}

/// A W3C trace context, as read from or written to `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace (never zero).
    pub trace_id: u128,
    /// The caller's span (never zero).
    pub span_id: u64,
    /// The caller's sampling decision.
    pub sampled: bool,
}

impl TraceParent {
    /// Reads a `traceparent` header value (version 00, or a later version
    /// read as 00 says); `None` for anything malformed.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let header = header.trim();
        let mut parts = header.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let lower_hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !lower_hex(version, 2) || version == "ff" || !lower_hex(flags, 2) {
            return None;
        }
        if (version == "00" && parts.next().is_some()) || !lower_hex(trace, 32) {
            return None;
        }
        if !lower_hex(span, 16) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_what_w3c_rejects() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(h).expect("valid");
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.span_id, 0x00f067aa0ba902b7);
        assert!(t.sampled);
        assert_eq!(t.header(), h);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert!(TraceParent::parse(later).is_some_and(|t| !t.sampled));
    }

    #[test]
    fn moleculer_ids_map_as_its_exporters_map_them() {
        let uuid = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736";
        assert_eq!(trace_id(uuid), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        // Zipkin's convertID: dashes out, the first 16 hex digits.
        assert_eq!(span_id_of(uuid), 0x4bf92f3577b34da6);
        let ours = ContextId::new();
        assert_eq!(span_id(&ours), span_id_of(&ours.to_string()));
        assert_eq!(span_id_of("00f067aa0ba902b7"), 0x00f067aa0ba902b7);
        assert_eq!(trace_id(&request_id_of(42)), 42);
        assert_ne!(trace_id("req-1"), trace_id("req-2"));
        assert_ne!(span_id_of("0000000000000000"), 0);
    }
}
