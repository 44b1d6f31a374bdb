//! Component values as JSON and MessagePack, driven by their WIT type.
//!
//! Every dynamic call crosses this module twice: the caller's parameters
//! arrive as JSON (HTTP, the CLI, Moleculer peers) or MessagePack
//! (`broker.call` from a package) and become [`Val`]s for wasmtime; the
//! result goes back the other way. The WIT type is the schema, so a payload
//! that does not fit is refused here, before it enters the sandbox, with an
//! error that says where and what.
//!
//! # One code path
//!
//! Decoding is a [`serde::de::DeserializeSeed`] ([`ValueSeed`],
//! [`ParamsSeed`]) and encoding a [`serde::Serialize`] ([`TypedVal`],
//! [`TypedParams`]), so both formats share one implementation and any serde
//! format works. Nothing goes through an intermediate `serde_json::Value`.
//! [`decode_value`], [`decode_params`], [`encode_value`], [`encode_params`]
//! and [`to_json_value`] wrap them for [`Format::Json`] and
//! [`Format::MessagePack`] and return a [`CodecError`].
//!
//! # The encoding
//!
//! | WIT | JSON | MessagePack |
//! | --- | --- | --- |
//! | `bool`, integers, `f32`, `f64` | number (range-checked; floats accept integers; NaN and infinities as `"NaN"`, `"Infinity"`, `"-Infinity"`) | number |
//! | `char`, `string` | string (a `char` is one character) | str |
//! | `list<u8>` | base64 string | bin |
//! | `list<T>`, `list<T, N>`, `tuple<..>` | array | array |
//! | `record` | object by field name | map by field name |
//! | `variant`, `enum` | `"case"` or `{"case": payload}` | the same |
//! | `option<T>` | `null` or the value | nil or the value |
//! | `result<T, E>` | `{"ok": v}` or `{"err": e}` (`null` for a side without a type) | the same |
//! | `flags` | array of the set flag names | the same |
//! | `map<string, V>` / `map<K, V>` | object / array of `[k, v]` pairs | the same |
//!
//! Variants use serde's externally tagged form, which is what a Rust
//! `#[serde(rename_all = "kebab-case")] enum` produces through `serde_json`
//! and `rmp-serde`. Decoding is lenient where a writer has a good reason to
//! differ: `list<u8>` also accepts bytes, base64 or an array of numbers in
//! either format; `result` also accepts Rust's `"Ok"` / `"Err"`; a missing
//! `option` field or parameter is `none`; MessagePack records may also be
//! arrays by position (what `rmp_serde::to_vec` writes for a struct).
//!
//! Resources, futures, streams and error contexts cannot be written down and
//! are refused as unsupported ([`check_supported`] finds them ahead of time).
//! `option<option<T>>` cannot tell `some(none)` from `none`, as in serde.
//!
//! # Errors
//!
//! A [`CodecError`] carries a path (`order.items[2].qty`, `params.sku`) and a
//! message written for the package author on the other end of an HTTP call:
//! `expected u32, found string "x"`, ``unknown field `colour`, expected one
//! of `sku`, `qty` ``, ``missing parameter `sku` ``, `trailing data after the
//! value`, `invalid MessagePack: unexpected end of data`.
//!
//! # Where things are
//!
//! This file holds the public API and the seeds' serde impls; `decode`
//! (with `decode/compound.rs` and `decode/params.rs`) reads JSON or
//! MessagePack into [`Val`]s, `encode` writes them back, and `trail` keeps
//! what both directions share: the error path, the memory budget, the depth
//! limit. How a WIT type looks as JSON is decided in [`types`](crate::types)
//! (which also describes it as JSON Schema), not here. The codec knows
//! nothing of packages, the broker or the wire around a payload.
//!
//! # Example
//!
//! ```
//! use steedos_wasm::codec::{self, Format};
//! use wasmtime::component::{Component, types::ComponentItem};
//! use wasmtime::{Config, Engine};
//!
//! let engine = Engine::new(&Config::new())?;
//! let component = Component::new(&engine, r#"(component
//!     (import "reserve" (func (param "sku" string) (param "qty" u32)
//!                             (result (result u64 (error string))))))"#)?;
//! let component_type = component.component_type();
//! let (_, item) = component_type.imports(&engine).next().unwrap();
//! let ComponentItem::ComponentFunc(func) = item.ty else { unreachable!() };
//! let params: Vec<_> = func.params().map(|(n, t)| (n.to_string(), t)).collect();
//! let result = func.results().next();
//!
//! assert_eq!(
//!     steedos_wasm::types::wit_signature(&params, result.as_ref()),
//!     "func(sku: string, qty: u32) -> result<u64, string>"
//! );
//! let args = codec::decode_params(&params, Format::Json, br#"{"sku": "A1", "qty": 2}"#)?;
//! assert_eq!(args.len(), 2);
//!
//! let err = codec::decode_params(&params, Format::Json, br#"{"sku": "A1", "qty": "x"}"#)
//!     .unwrap_err();
//! assert_eq!(err.to_string(), r#"params.qty: expected u32, found string "x""#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, SerializeTuple, Serializer};
use wasmtime::component::types::{Enum, Field, Flags, List, Record, ResultType, Tuple, Variant};
use wasmtime::component::{Type, Val};

use crate::types::{self, Wit, is_bytes};

mod decode;
mod encode;
mod trail;

use decode::*;
use encode::*;
use trail::*;

/// Host memory decoded values may take when the caller gives no limit:
/// wasmtime's default hostcall fuel, which counts the same way.
pub const DEFAULT_BUDGET: usize = 128 << 20;

/// A wire format the host speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON text (HTTP, the CLI, Moleculer peers).
    Json,
    /// MessagePack (`broker.call` and events between packages).
    MessagePack,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::MessagePack => "MessagePack",
        }
    }
}

/// A payload that does not fit its WIT type, or a value that cannot be
/// written down.
///
/// Displays as `path: message`, or just `message` when the problem is the
/// payload as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", Location(.path))]
pub struct CodecError {
    /// Where: `order.items[2].qty`, `params.sku`; empty for the whole payload.
    pub path: String,
    /// What: `expected u32, found string "x"`.
    pub message: String,
}

/// Decodes one value of type `.0` from any serde [`de::Deserializer`].
///
/// Errors are the deserializer's own, carrying a [`CodecError`]'s text.
pub struct ValueSeed<'a>(pub &'a Type);

/// Decodes a function's parameters, in declaration order, from a map of
/// parameter name to value or from a sequence by position.
///
/// Parameters of an `option` type may be left out; unknown and missing names
/// are errors that name them. Errors are the deserializer's own, carrying a
/// [`CodecError`]'s text.
pub struct ParamsSeed<'a>(pub &'a [(String, Type)]);

/// A value with its WIT type, serializable into any serde format.
pub struct TypedVal<'a> {
    /// The WIT type of `val`.
    pub ty: &'a Type,
    /// The value, as wasmtime returned it.
    pub val: &'a Val,
}

/// A function's parameters with their types, serializable as a map of
/// parameter name to value.
pub struct TypedParams<'a> {
    /// The parameter names and types, in declaration order.
    pub params: &'a [(String, Type)],
    /// One value per parameter, in the same order.
    pub vals: &'a [Val],
}

/// One decoded parameter: a component value, or a top-level `list<u8>`
/// kept as the bytes it is (a `Val` per byte would cost the host 40 times
/// the payload).
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// Any parameter, as wasmtime takes it.
    Val(Val),
    /// A `list<u8>` parameter, when the caller asked for bytes.
    Bytes(Vec<u8>),
}

impl Arg {
    /// The parameter as a component value (a `list<u8>` becomes a `Val` per byte).
    pub fn into_val(self) -> Val {
        match self {
            Arg::Val(val) => val,
            Arg::Bytes(bytes) => bytes_val(&bytes),
        }
    }

    /// What [`Arg::into_val`] would cost the host, in bytes.
    pub fn val_cost(&self) -> usize {
        match self {
            Arg::Val(_) => 0,
            Arg::Bytes(bytes) => bytes.len().saturating_mul(VAL_COST),
        }
    }
}

/// How [`decode_args`] decodes: its memory budget and what stays bytes.
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions {
    /// Host memory, in bytes, the decoded values may take (a `Val` counts
    /// its size, strings and names their length); past it the payload is
    /// refused as too large, before more is allocated.
    pub budget: usize,
    /// Top-level `list<u8>` parameters become [`Arg::Bytes`] instead of a
    /// `Val` per byte.
    pub bytes: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            budget: DEFAULT_BUDGET,
            bytes: false,
        }
    }
}

/// Decodes a function's parameters from `bytes`: a map by name or an array
/// by position. Empty input (or `null`) means no parameters were given.
/// The values may take at most [`DEFAULT_BUDGET`] of host memory.
pub fn decode_params(
    params: &[(String, Type)],
    format: Format,
    bytes: &[u8],
) -> Result<Vec<Val>, CodecError> {
    let args = decode_args(params, format, bytes, DecodeOptions::default())?;
    Ok(args.into_iter().map(Arg::into_val).collect())
}

/// [`decode_params`] with a memory budget of the caller's choosing, and
/// top-level `list<u8>` parameters kept as bytes when asked.
pub fn decode_args(
    params: &[(String, Type)],
    format: Format,
    bytes: &[u8],
    options: DecodeOptions,
) -> Result<Vec<Arg>, CodecError> {
    let empty = match format {
        Format::Json => bytes.iter().all(u8::is_ascii_whitespace),
        Format::MessagePack => bytes.is_empty(),
    };
    if empty {
        let mut trail = Trail::default();
        return absent_params::<de::value::Error>(params, &mut trail)
            .map_err(|e| trail.into_error(None, || e.to_string()));
    }
    let root = ParamsRoot {
        params,
        bytes: options.bytes,
    };
    decode(root, Some("params"), format, bytes, options.budget)
}

/// `bytes` as a value of type `list<u8>`: MessagePack bin, or a base64
/// JSON string.
pub fn encode_bytes(bytes: &[u8], format: Format) -> Vec<u8> {
    match format {
        Format::Json => {
            let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4 + 2);
            out.push(b'"');
            let start = out.len();
            out.resize(
                start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
                0,
            );
            let written = STANDARD.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
            out.truncate(start + written);
            out.push(b'"');
            out
        }
        Format::MessagePack => {
            let mut out = Vec::with_capacity(bytes.len() + 5);
            let len = bytes.len();
            // bin 8 / bin 16 / bin 32 (a guest's list never reaches 4 GiB).
            if let Ok(n) = u8::try_from(len) {
                out.extend([0xc4, n]);
            } else if let Ok(n) = u16::try_from(len) {
                out.push(0xc5);
                out.extend(n.to_be_bytes());
            } else {
                out.push(0xc6);
                out.extend(u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
            }
            out.extend_from_slice(bytes);
            out
        }
    }
}

/// `bytes` as the JSON value of a `list<u8>`: a base64 string.
pub fn bytes_to_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::Value::String(STANDARD.encode(bytes))
}

/// Decodes one value of type `ty` from `bytes`, taking at most
/// [`DEFAULT_BUDGET`] of host memory.
pub fn decode_value(ty: &Type, format: Format, bytes: &[u8]) -> Result<Val, CodecError> {
    decode(ValueRoot(ty), None, format, bytes, DEFAULT_BUDGET)
}

/// Encodes `val`, of type `ty`, in `format`.
pub fn encode_value(ty: &Type, val: &Val, format: Format) -> Result<Vec<u8>, CodecError> {
    let trail = RefCell::new(Trail::default());
    encode(
        format,
        &Encode {
            ty,
            val,
            trail: &trail,
        },
        &trail,
    )
}

/// Encodes a function's parameters as a map of parameter name to value.
pub fn encode_params(
    params: &[(String, Type)],
    vals: &[Val],
    format: Format,
) -> Result<Vec<u8>, CodecError> {
    let trail = RefCell::new(Trail::default());
    let encode_params = EncodeParams {
        params,
        vals,
        trail: &trail,
    };
    encode(format, &encode_params, &trail)
}

/// Converts `val`, of type `ty`, into a `serde_json::Value` (for logs,
/// responses that embed it, tests).
pub fn to_json_value(ty: &Type, val: &Val) -> Result<serde_json::Value, CodecError> {
    let trail = RefCell::new(Trail::default());
    serde_json::to_value(Encode {
        ty,
        val,
        trail: &trail,
    })
    .map_err(|e| trail.into_inner().into_error(None, || e.to_string()))
}

/// Checks that values of `ty` can be written down at all: no resource,
/// future, stream or error context anywhere inside. Call it when a package
/// is loaded to refuse an action the codec could never serve.
pub fn check_supported(ty: &Type) -> Result<(), CodecError> {
    let mut trail = Trail::default();
    match find_unsupported(ty, &mut trail) {
        None => Ok(()),
        Some(message) => Err(CodecError {
            path: trail.path(None),
            message,
        }),
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Val;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Val, D::Error> {
        let mut trail = Trail::default();
        let result = Decode::new(self.0, At::Here, &mut trail).deserialize(de);
        result.map_err(|e| trail.into_de_error(None, e))
    }
}

impl<'de> DeserializeSeed<'de> for ParamsSeed<'_> {
    type Value = Vec<Val>;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Vec<Val>, D::Error> {
        let mut trail = Trail::default();
        let root = ParamsRoot {
            params: self.0,
            bytes: false,
        };
        let result = root.deserialize_in(de, &mut trail);
        let args = result.map_err(|e| trail.into_de_error(Some("params"), e))?;
        Ok(args.into_iter().map(Arg::into_val).collect())
    }
}

impl Serialize for TypedVal<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let trail = RefCell::new(Trail::default());
        let encode = Encode {
            ty: self.ty,
            val: self.val,
            trail: &trail,
        };
        encode
            .serialize(s)
            .map_err(|e| trail.into_inner().into_ser_error(e))
    }
}

impl Serialize for TypedParams<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let trail = RefCell::new(Trail::default());
        let encode = EncodeParams {
            params: self.params,
            vals: self.vals,
            trail: &trail,
        };
        encode
            .serialize(s)
            .map_err(|e| trail.into_inner().into_ser_error(e))
    }
}

#[cfg(test)]
mod tests;
