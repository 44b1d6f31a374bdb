//! `ctx.meta` as values, and the ids of a context: what [`CallContext`]
//! carries across every hop, as Moleculer carries it.
//!
//! [`Meta`] is a JSON object (any JSON value under each key, with its JSON
//! type: objects, numbers, booleans, null, arrays), shared between the
//! contexts of one call tree until one of them changes it (copy on write:
//! a call that changes nothing costs no copy). Packages see it as
//! MessagePack ([`Meta::to_msgpack`], [`decode_meta`]); a meta a package
//! hands the host is bounded by [`MAX_META_BYTES`] encoded.
//!
//! [`ReplyMeta`] is where a callee leaves its meta when its call ends, so
//! that its caller merges it into its own (Moleculer merges a call's reply
//! meta into the caller's `ctx.meta`). [`ContextId`] is a context's id: a
//! UUID v4 for the contexts this host makes, the text a peer sent for the
//! ones it made.
//!
//! [`CallContext`]: super::CallContext

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// A `ctx.meta` object.
pub type MetaMap = serde_json::Map<String, Value>;

/// The most bytes a meta a package sets (or passes on a call) may take as
/// MessagePack, after it is merged: it travels in every packet of the call
/// tree below.
pub const MAX_META_BYTES: usize = 64 * 1024;

/// `ctx.meta`: a JSON object, shared until changed.
#[derive(Clone, Debug, Default)]
pub struct Meta(Option<Arc<MetaMap>>);

impl PartialEq for Meta {
    fn eq(&self, other: &Meta) -> bool {
        self.map() == other.map()
    }
}

impl Meta {
    /// No meta (`{}`), without allocating.
    pub const EMPTY: Meta = Meta(None);

    /// `map` as a meta.
    pub fn from_map(map: MetaMap) -> Meta {
        match map.is_empty() {
            true => Meta::EMPTY,
            false => Meta(Some(Arc::new(map))),
        }
    }

    /// The meta a packet carries: its object, or nothing when it is absent
    /// or not an object (a peer's odd meta is not an error of the call).
    pub fn from_wire(value: Option<&Value>) -> Meta {
        match value {
            Some(Value::Object(map)) if !map.is_empty() => Meta::from_map(map.clone()),
            _ => Meta::EMPTY,
        }
    }

    /// The object.
    pub fn map(&self) -> &MetaMap {
        static EMPTY: OnceLock<MetaMap> = OnceLock::new();
        match &self.0 {
            Some(map) => map,
            None => EMPTY.get_or_init(MetaMap::new),
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.as_ref().and_then(|m| m.get(key))
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    /// Whether `self` and `other` are the same shared object (so merging
    /// one into the other changes nothing).
    pub fn same(&self, other: &Meta) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// `Object.assign(meta, over)`: each key of `over` set over this one's.
    pub fn merge(&mut self, over: &MetaMap) {
        if over.is_empty() {
            return;
        }
        let map = Arc::make_mut(self.0.get_or_insert_with(Default::default));
        for (k, v) in over {
            map.insert(k.clone(), v.clone());
        }
    }

    /// Merges a callee's reply meta in, unless it is this very meta.
    pub fn merge_reply(&mut self, reply: &Meta) {
        if !self.same(reply) {
            self.merge(reply.map());
        }
    }

    /// The object as MessagePack (`{}` when empty).
    pub fn to_msgpack(&self) -> Vec<u8> {
        match &self.0 {
            None => vec![0x80],
            // A JSON value always has a MessagePack form.
            Some(map) => rmp_serde::to_vec_named(&**map).unwrap_or_else(|_| vec![0x80]),
        }
    }

    /// Its MessagePack size, refused past [`MAX_META_BYTES`].
    pub fn check_size(&self) -> Result<(), MetaError> {
        let size = self.to_msgpack().len();
        match size > MAX_META_BYTES {
            true => Err(MetaError::TooLarge { size }),
            false => Ok(()),
        }
    }
}

/// Why a meta a package handed the host was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Over [`MAX_META_BYTES`] as MessagePack.
    #[error("meta is {size} bytes as MessagePack, over the limit of {MAX_META_BYTES}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// A value that is not a map (meta is an object of keys to values).
    #[error("meta must be an object (a MessagePack map), not {0}")]
    NotAnObject(&'static str),
    /// Bytes that are not MessagePack of a JSON-like value.
    #[error("meta is not MessagePack of a JSON-like value: {0}")]
    Malformed(String),
}

/// A meta object from a package's MessagePack `bytes`, bounded by
/// [`MAX_META_BYTES`].
pub fn decode_meta(bytes: &[u8]) -> Result<MetaMap, MetaError> {
    if bytes.len() > MAX_META_BYTES {
        return Err(MetaError::TooLarge { size: bytes.len() });
    }
    let value: Value = rmp_serde::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        MetaError::Malformed(text.chars().take(200).collect())
    })?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Err(MetaError::NotAnObject("nil")),
        Value::Bool(_) => Err(MetaError::NotAnObject("a boolean")),
        Value::Number(_) => Err(MetaError::NotAnObject("a number")),
        Value::String(_) => Err(MetaError::NotAnObject("a string")),
        Value::Array(_) => Err(MetaError::NotAnObject("an array")),
    }
}

/// Where a callee leaves its meta for its caller when its call ends.
#[derive(Clone, Debug, Default)]
pub struct ReplyMeta(Arc<Mutex<Option<Meta>>>);

impl ReplyMeta {
    /// Leaves `meta` (the last one left wins: a retried call's last try).
    pub fn set(&self, meta: Meta) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(meta);
    }

    /// What the callee left, if it left anything.
    pub fn take(&self) -> Option<Meta> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A context's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextId {
    /// Made here: a UUID v4 (bytes, not a `u128`: byte alignment keeps
    /// every context, and every call future holding one, 8-aligned).
    Uuid(uuid::Uuid),
    /// Made by a peer: the text it sent (cut to a sane length).
    Given(Arc<str>),
}

impl ContextId {
    /// A new random id (no allocation: formatted when it is sent).
    pub fn new() -> ContextId {
        ContextId::Uuid(uuid::Uuid::new_v4())
    }

    /// Its text (a UUID's hyphenated form), as one shared string: what
    /// `to_string().into()` gives, written without a `String` between.
    pub fn text(&self) -> Arc<str> {
        match self {
            ContextId::Uuid(id) => Arc::from(
                &*id.hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            ),
            ContextId::Given(text) => text.clone(),
        }
    }
}

impl ContextId {
    /// The id a context whose request id is `text` has when it is the
    /// request's first (Moleculer's root context: `id == requestID`): the
    /// UUID it spells, else the text.
    pub fn of_text(text: &Arc<str>) -> ContextId {
        match uuid::Uuid::try_parse(text) {
            Ok(u) => ContextId::Uuid(u),
            Err(_) => ContextId::Given(text.clone()),
        }
    }
}

impl Default for ContextId {
    fn default() -> Self {
        ContextId::new()
    }
}

impl fmt::Display for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextId::Uuid(id) => fmt::Display::fmt(&id.hyphenated(), f),
            ContextId::Given(text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `text` is the id as it is printed: a fresh id's hyphenated UUID
    /// (what peers parse back with `of_text`), a given id's own text.
    #[test]
    fn an_ids_text_is_how_it_prints() {
        let id = ContextId::new();
        assert_eq!(&*id.text(), id.to_string());
        assert_eq!(ContextId::of_text(&id.text()), id);
        let given = ContextId::Given("node-1-42".into());
        assert_eq!(&*given.text(), "node-1-42");
    }

    fn map(v: Value) -> MetaMap {
        match v {
            Value::Object(m) => m,
            _ => MetaMap::new(),
        }
    }

    #[test]
    fn values_keep_their_types_through_messagepack() {
        let v = json!({ "user": { "id": "u1", "roles": ["admin"] }, "n": 5, "f": 1.5,
                        "yes": true, "none": null, "list": [1, "two", false] });
        let meta = Meta::from_map(map(v.clone()));
        let back = decode_meta(&meta.to_msgpack()).expect("decodes");
        assert_eq!(Value::Object(back), v);
    }

    #[test]
    fn merging_is_object_assign_and_copies_only_on_change() {
        let caller = Meta::from_map(map(json!({ "a": 1, "b": 2 })));
        let mut callee = caller.clone();
        assert!(callee.same(&caller));
        callee.merge(&MetaMap::new());
        assert!(callee.same(&caller), "an empty merge copies nothing");
        callee.merge(&map(json!({ "b": "two", "c": null })));
        assert!(!callee.same(&caller));
        assert_eq!(
            caller.get("b"),
            Some(&json!(2)),
            "the caller's is untouched"
        );
        let mut back = caller.clone();
        back.merge_reply(&callee);
        assert_eq!(
            Value::Object(back.map().clone()),
            json!({ "a": 1, "b": "two", "c": null })
        );
    }

    #[test]
    fn bad_meta_is_refused_clearly() {
        let not_object = rmp_serde::to_vec(&json!([1, 2])).expect("encodes");
        assert_eq!(
            decode_meta(&not_object),
            Err(MetaError::NotAnObject("an array"))
        );
        assert!(matches!(decode_meta(&[0xc1]), Err(MetaError::Malformed(_))));
        let big = vec![0u8; MAX_META_BYTES + 1];
        assert!(matches!(decode_meta(&big), Err(MetaError::TooLarge { .. })));
        let huge = Meta::from_map(map(json!({ "x": "y".repeat(MAX_META_BYTES) })));
        assert!(matches!(huge.check_size(), Err(MetaError::TooLarge { .. })));
    }

    #[test]
    fn ids_are_uuids_and_unique() {
        let a = ContextId::new().to_string();
        let b = ContextId::new().to_string();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::try_parse(&a).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4);
    }
}
