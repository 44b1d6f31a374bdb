//! WIT types as other languages see them: one mapping from a component's
//! WIT types to the JSON the codec writes, described three ways.
//!
//! - [`json_schema`]: JSON Schema 2020-12, for the OpenAPI document.
//! - [`rule`]: a fastest-validator rule, for the actions of the Moleculer
//!   INFO packet (and [`rule_schema`] / [`rule_type`], reading the rules
//!   other nodes announce).
//! - [`wit_type`] / [`wit_signature`]: the text of a type or a function in
//!   WIT syntax, for summaries and error messages.
//!
//! The choices the JSON encoding makes for a WIT type ([`map_is_object`],
//! [`is_bytes`], [`float_word`]) are made here once: the codec
//! ([`codec`](crate::codec)) asks these functions when it writes, and the
//! schemas are derived from the same answers, so the OpenAPI document and
//! the wire agree by construction.
//!
//! A leaf: it reads `wasmtime`'s component types and `serde_json` only, and
//! must not import the codec, the broker, the gateway or the transport.

use wasmtime::component::Type;
use wasmtime::component::types::List;

mod json_schema;
mod validator;
mod wit;

pub use json_schema::{json_schema, params_schema};
pub use validator::{rule, rule_schema, rule_type};
pub(crate) use wit::Wit;
pub use wit::{wit_signature, wit_type};

/// The words JSON uses for the floats it cannot write as numbers.
pub const FLOAT_WORDS: [&str; 3] = ["NaN", "Infinity", "-Infinity"];

/// Whether a `map<K, V>` is a JSON object (its keys are strings) or an
/// array of `[key, value]` pairs (any other key type).
pub fn map_is_object(key: &Type) -> bool {
    matches!(key, Type::String)
}

/// Whether a list is bytes: `list<u8>` is base64 text in JSON and `bin` in
/// MessagePack.
pub fn is_bytes(list: &List) -> bool {
    matches!(list.ty(), Type::U8)
}

/// The range of an integer type, `None` for any other type.
pub fn integer_range(ty: &Type) -> Option<(i128, i128)> {
    Some(match ty {
        Type::S8 => (i8::MIN.into(), i8::MAX.into()),
        Type::U8 => (0, u8::MAX.into()),
        Type::S16 => (i16::MIN.into(), i16::MAX.into()),
        Type::U16 => (0, u16::MAX.into()),
        Type::S32 => (i32::MIN.into(), i32::MAX.into()),
        Type::U32 => (0, u32::MAX.into()),
        Type::S64 => (i64::MIN.into(), i64::MAX.into()),
        Type::U64 => (0, u64::MAX.into()),
        _ => return None,
    })
}

/// The word JSON writes for `v` when it is not a finite number.
pub fn float_word(v: f64) -> Option<&'static str> {
    if v.is_finite() {
        return None;
    }
    Some(if v.is_nan() {
        FLOAT_WORDS[0]
    } else if v > 0.0 {
        FLOAT_WORDS[1]
    } else {
        FLOAT_WORDS[2]
    })
}
