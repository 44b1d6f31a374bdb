//! What a node id (or a cluster namespace) may be: one rule for this
//! node's own (the manifest, `--node-id`) and for every peer's, because an
//! id becomes part of NATS subjects. A leaf: the manifest checks its
//! `[cluster]` settings with it and the transport checks every sender.
//! It must not import any other module of the host.

/// The longest node id or namespace accepted (ours or a peer's).
pub const MAX_NODE_ID: usize = 128;

/// Why a node id or namespace cannot be used in a NATS subject; `None`
/// when it can. One rule for ours (manifest, `--node-id`) and peers'.
pub fn token_problem(text: &str) -> Option<String> {
    (!valid_node_id(text)).then(|| {
        format!(
            "{:?} cannot be part of a NATS subject (1 to {MAX_NODE_ID} characters, no whitespace, `.`, `*` or `>`)",
            shorten(text)
        )
    })
}

/// Whether a node id (ours or a peer's) may be used in a subject.
pub fn valid_node_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_NODE_ID && !text.contains(bad_in_token)
}

fn bad_in_token(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>')
}

/// `<hostname>-<pid>` with anything a subject cannot hold made `-`, cut to
/// [`MAX_NODE_ID`]: a host name like `web.example.com` is common.
pub fn sanitize_node_id(text: &str) -> String {
    let mut id: String = text
        .chars()
        .map(|c| if bad_in_token(c) { '-' } else { c })
        .collect();
    while id.len() > MAX_NODE_ID {
        id.pop();
    }
    if id.is_empty() {
        id.push_str("node");
    }
    id
}

/// The first 64 characters of a peer's text, for a log line or an error.
pub fn shorten(text: &str) -> &str {
    clip(text, 64)
}

/// The first `chars` characters of `text`.
pub fn clip(text: &str, chars: usize) -> &str {
    match text.char_indices().nth(chars) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_that_could_reach_a_subject_are_refused() {
        for bad in [
            "",
            "a b",
            "a\r\nUNSUB 1",
            "a.b",
            "*",
            ">",
            "a\0",
            "a\tb",
            &"x".repeat(MAX_NODE_ID + 1),
        ] {
            assert!(!valid_node_id(bad), "{bad:?}");
            assert!(token_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["node-1", "wasm_a", "Ünïcode-1", &"x".repeat(MAX_NODE_ID)] {
            assert!(valid_node_id(good), "{good:?}");
            assert!(token_problem(good).is_none(), "{good:?}");
        }
        assert_eq!(sanitize_node_id("web.example.com-12"), "web-example-com-12");
        assert!(valid_node_id(&sanitize_node_id(&"é.".repeat(200))));
        assert!(valid_node_id(&sanitize_node_id("")));
    }
}
