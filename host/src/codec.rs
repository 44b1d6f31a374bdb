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
//!     codec::wit_signature(&params, result.as_ref()),
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
pub use crate::types::{wit_signature, wit_type};

/// Accepts base64 with or without padding; [`STANDARD`] writes it padded.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Upper bound on what a length prefix may preallocate: the prefix is input.
const MAX_PREALLOCATED: usize = 4096;

/// Host memory decoded values may take when the caller gives no limit:
/// wasmtime's default hostcall fuel, which counts the same way.
pub const DEFAULT_BUDGET: usize = 128 << 20;

/// How deeply MessagePack input may nest, as JSON's parser allows.
const MAX_DEPTH: usize = 128;

/// 2^53: past it not every integer is a float, so an integral float may be
/// another integer than the one its writer meant.
const MAX_EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

/// What one component value costs the host: the `Val` itself (wasmtime
/// charges hostcall fuel the same way when it lifts values from a guest).
const VAL_COST: usize = size_of::<Val>();

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Where an error happened
// ---------------------------------------------------------------------------

/// The path to an error, collected while the error unwinds (so a call that
/// succeeds pays nothing), the message when this module raised it, and the
/// host memory the decoded values may still take.
struct Trail {
    /// Innermost first.
    segments: Vec<Segment>,
    message: Option<String>,
    /// Bytes of host memory left for decoded values.
    budget: usize,
    /// The budget at the start, for the message when it runs out.
    limit: usize,
}

impl Default for Trail {
    fn default() -> Self {
        Trail::with_budget(DEFAULT_BUDGET)
    }
}

enum Segment {
    /// A record field, parameter, variant case or `ok` / `err`.
    Name(String),
    /// A list, tuple or array position.
    Index(usize),
    /// A string key of a `map`.
    Key(String),
    /// Any element of a list or map (type paths, no value at hand).
    Each,
}

impl Trail {
    fn with_budget(budget: usize) -> Self {
        Trail {
            segments: Vec::new(),
            message: None,
            budget,
            limit: budget,
        }
    }

    /// Takes `cost` bytes of host memory from the budget, or fails before
    /// they are allocated.
    fn charge<E: de::Error>(&mut self, cost: usize) -> Result<(), E> {
        match self.budget.checked_sub(cost) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(self.too_large()),
        }
    }

    #[cold]
    fn too_large<E: de::Error>(&mut self) -> E {
        let limit = bytesize::ByteSize::b(self.limit as u64).display().iec();
        self.fail(format!(
            "too large: the decoded values would take more than {limit} of host memory"
        ))
    }

    /// Records `message` as the cause and returns it as the format's error.
    #[cold]
    fn fail<E: de::Error>(&mut self, message: String) -> E {
        let error = E::custom(&message);
        self.message = Some(message);
        error
    }

    /// Notes, while `error` unwinds, that it happened inside `segment`.
    #[cold]
    fn at<E>(&mut self, segment: Segment, error: E) -> E {
        self.segments.push(segment);
        error
    }

    fn path(&self, root: Option<&str>) -> String {
        let mut out = String::new();
        if self.segments.is_empty() {
            return out;
        }
        out.push_str(root.unwrap_or_default());
        for segment in self.segments.iter().rev() {
            let _ = match segment {
                Segment::Name(name) if out.is_empty() => write!(out, "{name}"),
                Segment::Name(name) => write!(out, ".{name}"),
                Segment::Index(i) => write!(out, "[{i}]"),
                Segment::Key(key) => write!(out, "[{key:?}]"),
                Segment::Each => write!(out, "[]"),
            };
        }
        out
    }

    /// The error, with `fallback` describing a failure of the format itself.
    fn into_error(self, root: Option<&str>, fallback: impl FnOnce() -> String) -> CodecError {
        let path = self.path(root);
        let message = self.message.unwrap_or_else(fallback);
        CodecError { path, message }
    }

    fn into_de_error<E: de::Error>(self, root: Option<&str>, error: E) -> E {
        if self.message.is_none() && self.segments.is_empty() {
            return error;
        }
        E::custom(self.into_error(root, || error.to_string()))
    }

    fn into_ser_error<E: ser::Error>(self, error: E) -> E {
        if self.message.is_none() && self.segments.is_empty() {
            return error;
        }
        E::custom(self.into_error(None, || error.to_string()))
    }
}

struct Location<'a>(&'a str);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => Ok(()),
            path => write!(f, "{path}: "),
        }
    }
}

/// What the input held where something else was expected.
#[derive(Clone, Copy)]
enum Found<'a> {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(&'a str),
    Bytes,
    Null,
    Seq,
    Map,
    Extension,
    Enum,
}

impl Found<'_> {
    fn describe(self, human: bool) -> String {
        match self {
            Found::Bool(v) => format!("boolean {v}"),
            Found::Unsigned(v) => format!("integer {v}"),
            Found::Signed(v) => format!("integer {v}"),
            Found::Float(v) => format!("float {v:?}"),
            Found::Str(v) => format!("string {}", Quoted(v)),
            Found::Bytes => "binary data".to_owned(),
            Found::Null => "null".to_owned(),
            Found::Seq => "array".to_owned(),
            Found::Map if human => "object".to_owned(),
            Found::Map => "map".to_owned(),
            Found::Extension => "a MessagePack extension".to_owned(),
            Found::Enum => "an enum".to_owned(),
        }
    }
}

/// A string from the input, quoted and cut short if long.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 40;
        match self.0.char_indices().nth(SHOWN) {
            None => write!(f, "{:?}", self.0),
            Some((end, _)) => write!(f, "{:?}...", &self.0[..end]),
        }
    }
}

/// `expected one of `a`, `b`` for the names a lookup could have matched.
fn one_of<'a>(mut names: impl ExactSizeIterator<Item = &'a str>, none: &str) -> String {
    match names.len() {
        0 => none.to_owned(),
        1 => format!("expected `{}`", names.next().unwrap_or_default()),
        _ => format!("expected one of {}", ticked(names)),
    }
}

/// `` `a`, `b` ``.
fn ticked<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, name) in names.enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}`{name}`");
    }
    out
}

/// `missing field `a`` or `missing fields `a`, `b``.
fn missing(what: &str, names: &[&str]) -> String {
    let plural = if names.len() == 1 { "" } else { "s" };
    format!("missing {what}{plural} {}", ticked(names.iter().copied()))
}

fn unsupported(ty: &Type) -> String {
    format!(
        "unsupported type `{}`: resources, futures, streams and error contexts cannot be sent as JSON or MessagePack",
        Wit::short(ty)
    )
}

/// The `message` of the first unsupported type inside `ty`, its path in `trail`.
fn find_unsupported(ty: &Type, trail: &mut Trail) -> Option<String> {
    let nested = |trail: &mut Trail, segment: Segment, ty: &Type| {
        let message = find_unsupported(ty, trail)?;
        trail.segments.push(segment);
        Some(message)
    };
    match ty {
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => {
            Some(unsupported(ty))
        }
        Type::List(list) => nested(trail, Segment::Each, &list.ty()),
        Type::FixedLengthList(list) => nested(trail, Segment::Each, &list.ty()),
        Type::Option(option) => find_unsupported(&option.ty(), trail),
        Type::Map(map) => find_unsupported(&map.key(), trail)
            .or_else(|| nested(trail, Segment::Each, &map.value())),
        Type::Record(record) => record
            .fields()
            .find_map(|f| nested(trail, Segment::Name(f.name.to_owned()), &f.ty)),
        Type::Tuple(tuple) => tuple
            .types()
            .enumerate()
            .find_map(|(i, ty)| nested(trail, Segment::Index(i), &ty)),
        Type::Variant(variant) => variant.cases().find_map(|case| {
            let ty = case.ty?;
            nested(trail, Segment::Name(case.name.to_owned()), &ty)
        }),
        Type::Result(result) => {
            let ok = result
                .ok()
                .and_then(|ty| nested(trail, Segment::Name("ok".into()), &ty));
            ok.or_else(|| {
                let ty = result.err()?;
                nested(trail, Segment::Name("err".into()), &ty)
            })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// A root seed that reports into a caller-owned [`Trail`].
trait RootSeed {
    type Value;
    fn deserialize_in<'de, D: de::Deserializer<'de>>(
        self,
        de: D,
        trail: &mut Trail,
    ) -> Result<Self::Value, D::Error>;
}

struct ValueRoot<'t>(&'t Type);
struct ParamsRoot<'p> {
    params: &'p [(String, Type)],
    /// Top-level `list<u8>` parameters as [`Arg::Bytes`].
    bytes: bool,
}

impl RootSeed for ValueRoot<'_> {
    type Value = Val;
    fn deserialize_in<'de, D: de::Deserializer<'de>>(
        self,
        de: D,
        trail: &mut Trail,
    ) -> Result<Val, D::Error> {
        let at = At::Here;
        Decode::new(self.0, at, trail).deserialize(de)
    }
}

impl RootSeed for ParamsRoot<'_> {
    type Value = Vec<Arg>;
    fn deserialize_in<'de, D: de::Deserializer<'de>>(
        self,
        de: D,
        trail: &mut Trail,
    ) -> Result<Vec<Arg>, D::Error> {
        let human = de.is_human_readable();
        de.deserialize_any(ParamsVisitor {
            params: self.params,
            bytes: self.bytes,
            trail,
            human,
        })
    }
}

fn decode<S: RootSeed>(
    seed: S,
    root: Option<&str>,
    format: Format,
    bytes: &[u8],
    budget: usize,
) -> Result<S::Value, CodecError> {
    let mut trail = Trail::with_budget(budget);
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let value = seed
                .deserialize_in(&mut de, &mut trail)
                .map_err(|e| trail.into_error(root, || invalid(format, e)))?;
            de.end().map_err(|e| trailing_data(Some(&e)))?;
            Ok(value)
        }
        Format::MessagePack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            // rmp-serde's default of 1,024 levels overflows a 2 MiB stack
            // while skipping input; serde_json stops at 128 too.
            de.set_max_depth(MAX_DEPTH);
            let value = seed
                .deserialize_in(&mut de, &mut trail)
                .map_err(|e| trail.into_error(root, || invalid(format, msgpack_cause(e))))?;
            msgpack_end(&mut de)?;
            Ok(value)
        }
    }
}

fn invalid(format: Format, cause: impl fmt::Display) -> String {
    format!("invalid {}: {cause}", format.name())
}

fn msgpack_cause(error: rmp_serde::decode::Error) -> String {
    use rmp_serde::decode::Error;
    match error {
        Error::InvalidMarkerRead(e) | Error::InvalidDataRead(e)
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            "unexpected end of data".to_owned()
        }
        Error::TypeMismatch(marker) => format!("unexpected marker {marker:?}"),
        Error::Utf8Error(_) => "string is not valid UTF-8".to_owned(),
        Error::DepthLimitExceeded => "nested too deeply".to_owned(),
        other => other.to_string(),
    }
}

fn trailing_data(json: Option<&serde_json::Error>) -> CodecError {
    let message = match json {
        Some(e) => format!(
            "trailing data after the value at line {} column {}",
            e.line(),
            e.column()
        ),
        None => "trailing data after the value".to_owned(),
    };
    CodecError {
        path: String::new(),
        message,
    }
}

/// Fails unless the MessagePack input has been read to its end.
fn msgpack_end<'de, R: rmp_serde::decode::ReadSlice<'de>>(
    de: &mut rmp_serde::Deserializer<R>,
) -> Result<(), CodecError> {
    use rmp_serde::decode::Error;
    match de::Deserialize::deserialize(&mut *de) {
        Err(Error::InvalidMarkerRead(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Ok(IgnoredAny) | Err(_) => Err(trailing_data(None)),
    }
}

/// Where a seed sits in its parent; turned into a [`Segment`] only when
/// the seed fails (so a structural error of the parent, such as a missing
/// `]`, is not blamed on an element that was never read).
#[derive(Clone, Copy)]
enum At<'a> {
    Here,
    Name(&'a str),
    Index(usize),
    Key(&'a Val),
}

impl At<'_> {
    #[cold]
    fn note<E>(self, trail: &mut Trail, error: E) -> E {
        let segment = match self {
            At::Here => return error,
            At::Name(name) => Segment::Name(name.to_owned()),
            At::Index(i) => Segment::Index(i),
            At::Key(Val::String(key)) => Segment::Key(key.clone()),
            At::Key(_) => Segment::Each,
        };
        trail.at(segment, error)
    }
}

/// The recursive seed: one value of type `ty`.
struct Decode<'t, 'r> {
    ty: &'t Type,
    at: At<'t>,
    trail: &'r mut Trail,
}

impl<'t, 'r> Decode<'t, 'r> {
    fn new(ty: &'t Type, at: At<'t>, trail: &'r mut Trail) -> Self {
        Decode { ty, at, trail }
    }
}

impl<'de> DeserializeSeed<'de> for Decode<'_, '_> {
    type Value = Val;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Val, D::Error> {
        let Decode { ty, at, trail } = self;
        let result = match ty {
            Type::Option(option) => de.deserialize_option(OptionVisitor {
                inner: option.ty(),
                trail,
            }),
            Type::Own(_)
            | Type::Borrow(_)
            | Type::Future(_)
            | Type::Stream(_)
            | Type::ErrorContext => Err(trail.fail(unsupported(ty))),
            _ => {
                let human = de.is_human_readable();
                de.deserialize_any(ValueVisitor { ty, trail, human })
            }
        };
        // Every value decoded is one `Val` more for the host to hold.
        let result = result.and_then(|val| trail.charge(VAL_COST).map(|()| val));
        result.map_err(|e| at.note(trail, e))
    }
}

struct OptionVisitor<'r> {
    inner: Type,
    trail: &'r mut Trail,
}

impl<'de> Visitor<'de> for OptionVisitor<'_> {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "null or {}", Wit::short(&self.inner))
    }

    fn visit_none<E: de::Error>(self) -> Result<Val, E> {
        Ok(Val::Option(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Val, E> {
        Ok(Val::Option(None))
    }

    fn visit_some<D: de::Deserializer<'de>>(self, de: D) -> Result<Val, D::Error> {
        let value = Decode::new(&self.inner, At::Here, self.trail).deserialize(de)?;
        Ok(Val::Option(Some(Box::new(value))))
    }
}

/// Rejects what a visitor does not accept, through the visitor's own
/// `reject` (so every message reads `expected .., found ..`).
macro_rules! reject {
    ($($kind:ident)*) => { $(reject!(@ $kind);)* };
    (@ bool) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Err(self.reject(Found::Bool(v)))
        }
    };
    (@ i64) => {
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Err(self.reject(Found::Signed(v)))
        }
    };
    (@ u64) => {
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Err(self.reject(Found::Unsigned(v)))
        }
    };
    (@ f64) => {
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Err(self.reject(Found::Float(v)))
        }
    };
    (@ str) => {
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Err(self.reject(Found::Str(v)))
        }
    };
    (@ bytes) => {
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Err(self.reject(Found::Bytes))
        }
    };
    (@ null) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(self.reject(Found::Null))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(self.reject(Found::Null))
        }
    };
    (@ seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(self.reject(Found::Seq))
        }
    };
    (@ map) => {
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(self.reject(Found::Map))
        }
    };
    (@ ext) => {
        fn visit_newtype_struct<D: de::Deserializer<'de>>(self, _: D) -> Result<Self::Value, D::Error> {
            Err(self.reject(Found::Extension))
        }
        fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(self.reject(Found::Enum))
        }
    };
}

/// Every type but `option` and the unsupported ones.
struct ValueVisitor<'t, 'r> {
    ty: &'t Type,
    trail: &'r mut Trail,
    human: bool,
}

impl ValueVisitor<'_, '_> {
    fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let message = format!(
            "expected {}, found {}",
            Wit::short(self.ty),
            found.describe(self.human)
        );
        self.trail.fail(message)
    }

    fn number<E: de::Error>(self, v: i128, found: Found<'_>) -> Result<Val, E> {
        match number(self.ty, v) {
            Numeric::Fits(val) => Ok(val),
            Numeric::OutOfRange(range) => {
                let found = found.describe(self.human);
                let ty = Wit::short(self.ty);
                Err(self
                    .trail
                    .fail(format!("{found} is out of range for {ty} ({range})")))
            }
            Numeric::WrongType => Err(self.reject(found)),
        }
    }

    fn char<E: de::Error>(self, v: &str) -> Result<Val, E> {
        let mut chars = v.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(Val::Char(c)),
            _ => {
                let message = format!(
                    "expected char (a single character), found string {}",
                    Quoted(v)
                );
                Err(self.trail.fail(message))
            }
        }
    }

    fn float_word<E: de::Error>(self, v: &str) -> Result<Val, E> {
        let x = match v {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => return Err(self.reject(Found::Str(v))),
        };
        Ok(match self.ty {
            Type::Float32 => Val::Float32(x as f32),
            _ => Val::Float64(x),
        })
    }

    fn enum_case<E: de::Error>(self, cases: &Enum, v: &str) -> Result<Val, E> {
        if cases.names().any(|name| name == v) {
            return Ok(Val::Enum(v.to_owned()));
        }
        let expected = one_of(cases.names(), "it has none");
        let message = format!("unknown case `{v}` for enum, {expected}");
        Err(self.trail.fail(message))
    }

    fn bare_case<E: de::Error>(self, variant: &Variant, v: &str) -> Result<Val, E> {
        match variant.cases().find(|case| case.name == v) {
            Some(case) => match case.ty {
                None => Ok(Val::Variant(v.to_owned(), None)),
                Some(ty) => Err(self.trail.fail(format!(
                    "case `{v}` needs a payload of type {}",
                    Wit::short(&ty)
                ))),
            },
            None => Err(self.trail.fail(unknown_case(variant, v))),
        }
    }

    fn bare_result<E: de::Error>(self, result: &ResultType, v: &str) -> Result<Val, E> {
        let (is_ok, ty) = match v {
            "ok" | "Ok" => (true, result.ok()),
            "err" | "Err" => (false, result.err()),
            _ => return Err(self.trail.fail(unknown_result_case(v))),
        };
        match ty {
            None if is_ok => Ok(Val::Result(Ok(None))),
            None => Ok(Val::Result(Err(None))),
            Some(ty) => Err(self.trail.fail(format!(
                "case `{v}` needs a payload of type {}",
                Wit::short(&ty)
            ))),
        }
    }

    fn base64<E: de::Error>(self, v: &str) -> Result<Val, E> {
        let bytes = base64_bytes(v, self.trail)?;
        self.bytes(&bytes)
    }

    /// A `list<u8>` as a `Val` per byte, if the budget allows.
    fn bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Val, E> {
        self.trail.charge(bytes.len().saturating_mul(VAL_COST))?;
        Ok(bytes_val(bytes))
    }
}

impl<'de> Visitor<'de> for ValueVisitor<'_, '_> {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Wit::short(self.ty), f)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Val, E> {
        match self.ty {
            Type::Bool => Ok(Val::Bool(v)),
            _ => Err(self.reject(Found::Bool(v))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val, E> {
        self.number(v.into(), Found::Signed(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val, E> {
        self.number(v.into(), Found::Unsigned(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Val, E> {
        match self.ty {
            Type::Float64 => Ok(Val::Float64(v)),
            Type::Float32 if v.is_finite() && v.abs() > f64::from(f32::MAX) => {
                let found = Found::Float(v).describe(self.human);
                Err(self.trail.fail(format!("{found} is out of range for f32")))
            }
            Type::Float32 => Ok(Val::Float32(v as f32)),
            // Integral floats are integers to a JavaScript caller, exact up to 2^53.
            _ if v.fract() == 0.0 && v.abs() < 1e38 => {
                let fits = matches!(number(self.ty, v as i128), Numeric::Fits(_));
                if v.abs() > MAX_EXACT_FLOAT && fits {
                    let found = Found::Float(v).describe(self.human);
                    return Err(self.trail.fail(format!(
                        "{found} is past 2^53, where a float is not an exact integer: \
                         write the integer without a fraction or exponent"
                    )));
                }
                self.number(v as i128, Found::Float(v))
            }
            _ => Err(self.reject(Found::Float(v))),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Val, E> {
        match self.ty {
            Type::String => {
                self.trail.charge(v.len())?;
                Ok(Val::String(v.to_owned()))
            }
            Type::Char => self.char(v),
            Type::Enum(cases) => self.enum_case(cases, v),
            Type::Variant(variant) => self.bare_case(variant, v),
            Type::Result(result) => self.bare_result(result, v),
            Type::List(list) if is_bytes(list) => self.base64(v),
            Type::Float32 | Type::Float64 => self.float_word(v),
            _ => Err(self.reject(Found::Str(v))),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Val, E> {
        match self.ty {
            Type::String => {
                self.trail.charge(v.len())?;
                Ok(Val::String(v))
            }
            _ => self.visit_str(&v),
        }
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Val, E> {
        match self.ty {
            Type::List(list) if is_bytes(list) => self.bytes(v),
            // rmp-serde hands over a string that is not UTF-8 as bytes.
            Type::String | Type::Char => match std::str::from_utf8(v) {
                Ok(text) => self.visit_str(text),
                Err(_) => {
                    let ty = Wit::short(self.ty);
                    Err(self.trail.fail(format!(
                        "expected {ty}, found a string that is not valid UTF-8"
                    )))
                }
            },
            _ => Err(self.reject(Found::Bytes)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Val, E> {
        Err(self.reject(Found::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Val, E> {
        Err(self.reject(Found::Null))
    }

    fn visit_some<D: de::Deserializer<'de>>(self, de: D) -> Result<Val, D::Error> {
        Decode::new(self.ty, At::Here, self.trail).deserialize(de)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Val, A::Error> {
        let trail = &mut *self.trail;
        match self.ty {
            Type::List(list) => decode_list(seq, &list.ty(), trail).map(Val::List),
            Type::FixedLengthList(list) => {
                let items = decode_list(seq, &list.ty(), trail)?;
                let len = list.len() as usize;
                if items.len() != len {
                    return Err(wrong_length(trail, self.ty, len, &items.len()));
                }
                Ok(Val::FixedLengthList(items))
            }
            Type::Tuple(tuple) => decode_tuple(seq, tuple, self.ty, trail),
            Type::Flags(flags) => decode_flags(seq, flags, trail),
            Type::Map(map) => decode_map_pairs(seq, &map.key(), &map.value(), trail),
            Type::Record(record) if !self.human => decode_record_seq(seq, record, self.ty, trail),
            _ => Err(self.reject(Found::Seq)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Val, A::Error> {
        let trail = &mut *self.trail;
        match self.ty {
            Type::Record(record) => decode_record(map, record, trail),
            Type::Variant(variant) => decode_variant(map, variant, self.ty, trail),
            Type::Result(result) => decode_result(map, result, self.ty, trail),
            Type::Map(m) => decode_map_object(map, &m.key(), &m.value(), trail),
            _ => Err(self.reject(Found::Map)),
        }
    }

    reject!(ext);
}

enum Numeric {
    Fits(Val),
    OutOfRange(&'static str),
    WrongType,
}

/// `v` as a value of the numeric type `ty`, range-checked.
fn number(ty: &Type, v: i128) -> Numeric {
    fn fit<T: TryFrom<i128>>(v: i128, val: fn(T) -> Val, range: &'static str) -> Numeric {
        match T::try_from(v) {
            Ok(x) => Numeric::Fits(val(x)),
            Err(_) => Numeric::OutOfRange(range),
        }
    }
    match ty {
        Type::U8 => fit(v, Val::U8, "0 to 255"),
        Type::U16 => fit(v, Val::U16, "0 to 65535"),
        Type::U32 => fit(v, Val::U32, "0 to 4294967295"),
        Type::U64 => fit(v, Val::U64, "0 to 18446744073709551615"),
        Type::S8 => fit(v, Val::S8, "-128 to 127"),
        Type::S16 => fit(v, Val::S16, "-32768 to 32767"),
        Type::S32 => fit(v, Val::S32, "-2147483648 to 2147483647"),
        Type::S64 => fit(v, Val::S64, "-9223372036854775808 to 9223372036854775807"),
        Type::Float32 => Numeric::Fits(Val::Float32(v as f32)),
        Type::Float64 => Numeric::Fits(Val::Float64(v as f64)),
        _ => Numeric::WrongType,
    }
}

/// Base64 text as bytes, charged to the budget before it is decoded.
fn base64_bytes<E: de::Error>(v: &str, trail: &mut Trail) -> Result<Vec<u8>, E> {
    trail.charge(v.len() / 4 * 3)?;
    BASE64_LENIENT
        .decode(v)
        .map_err(|e| trail.fail(format!("invalid base64 for list<u8>: {e}")))
}

fn bytes_val(bytes: &[u8]) -> Val {
    Val::List(bytes.iter().map(|b| Val::U8(*b)).collect())
}

fn unknown_case(variant: &Variant, v: &str) -> String {
    let names = variant.cases().map(|case| case.name);
    format!(
        "unknown case `{v}` for variant, {}",
        one_of(names, "it has none")
    )
}

fn unknown_result_case(v: &str) -> String {
    format!("unknown case `{v}` for result, expected `ok` or `err`")
}

fn capacity(hint: Option<usize>) -> usize {
    hint.unwrap_or(0).min(MAX_PREALLOCATED)
}

fn decode_list<'de, A: SeqAccess<'de>>(
    mut seq: A,
    elem: &Type,
    trail: &mut Trail,
) -> Result<Vec<Val>, A::Error> {
    let mut items = Vec::with_capacity(capacity(seq.size_hint()));
    loop {
        let at = At::Index(items.len());
        match seq.next_element_seed(Decode::new(elem, at, trail))? {
            Some(item) => items.push(item),
            None => break,
        }
    }
    Ok(items)
}

#[cold]
fn wrong_length<E: de::Error>(
    trail: &mut Trail,
    ty: &Type,
    expected: usize,
    found: &dyn fmt::Display,
) -> E {
    let ty = Wit::short(ty);
    trail.fail(format!(
        "expected {expected} elements for {ty}, found {found}"
    ))
}

fn decode_tuple<'de, A: SeqAccess<'de>>(
    mut seq: A,
    tuple: &Tuple,
    ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let len = tuple.types().len();
    let mut items = Vec::with_capacity(len);
    for (i, elem) in tuple.types().enumerate() {
        let at = At::Index(i);
        match seq.next_element_seed(Decode::new(&elem, at, trail))? {
            Some(item) => items.push(item),
            None => return Err(wrong_length(trail, ty, len, &i)),
        }
    }
    if seq.next_element::<IgnoredAny>()?.is_some() {
        return Err(wrong_length(trail, ty, len, &"more"));
    }
    Ok(Val::Tuple(items))
}

fn decode_flags<'de, A: SeqAccess<'de>>(
    mut seq: A,
    flags: &Flags,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let mut set = Seen::new(flags.names().len());
    let mut i = 0;
    while let Some(name) = seq.next_element_seed(NameSeed {
        what: "a flag name",
        at: At::Index(i),
        trail,
    })? {
        let Some(bit) = flags.names().position(|flag| flag == name) else {
            let message = format!(
                "unknown flag `{name}`, {}",
                one_of(flags.names(), "the flags type has none")
            );
            trail.segments.push(Segment::Index(i));
            return Err(trail.fail(message));
        };
        set.insert(bit);
        i += 1;
    }
    // Declaration order, duplicates merged: the form wasmtime itself lifts.
    let names = flags.names().enumerate();
    let names = names.filter(|(bit, _)| set.contains(*bit));
    Ok(Val::Flags(names.map(|(_, name)| name.to_owned()).collect()))
}

fn decode_record<'de, A: MapAccess<'de>>(
    mut map: A,
    record: &Record,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let fields: Vec<Field<'_>> = record.fields().collect();
    trail.charge(record_cost(&fields))?;
    // Missing option fields stay `none`; missing others are reported below.
    let mut values: Vec<(String, Val)> = fields
        .iter()
        .map(|f| (f.name.to_owned(), Val::Option(None)))
        .collect();
    let mut seen = Seen::new(fields.len());
    while let Some(key) = map.next_key_seed(NameSeed {
        what: "a field name",
        at: At::Here,
        trail,
    })? {
        let Some(i) = fields.iter().position(|f| f.name == key) else {
            let names = fields.iter().map(|f| f.name);
            let expected = one_of(names, "the record has no fields");
            return Err(trail.fail(format!("unknown field `{key}`, {expected}")));
        };
        if !seen.insert(i) {
            return Err(trail.fail(format!("duplicate field `{key}`")));
        }
        let field = &fields[i];
        let at = At::Name(field.name);
        values[i].1 = map.next_value_seed(Decode::new(&field.ty, at, trail))?;
    }
    let absent = fields.iter().enumerate();
    let absent: Vec<&str> = absent
        .filter(|(i, f)| !seen.contains(*i) && !matches!(f.ty, Type::Option(_)))
        .map(|(_, f)| f.name)
        .collect();
    if !absent.is_empty() {
        return Err(trail.fail(missing("field", &absent)));
    }
    Ok(Val::Record(values))
}

/// A MessagePack record written by position (`rmp_serde::to_vec` of a struct).
fn decode_record_seq<'de, A: SeqAccess<'de>>(
    mut seq: A,
    record: &Record,
    ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let fields: Vec<Field<'_>> = record.fields().collect();
    trail.charge(record_cost(&fields))?;
    let mut values = Vec::with_capacity(fields.len());
    let mut absent = Vec::new();
    for field in record.fields() {
        let value = seq.next_element_seed(Decode::new(&field.ty, At::Name(field.name), trail))?;
        let value = match (value, &field.ty) {
            (Some(value), _) => value,
            (None, Type::Option(_)) => Val::Option(None),
            (None, _) => {
                absent.push(field.name);
                continue;
            }
        };
        values.push((field.name.to_owned(), value));
    }
    if !absent.is_empty() {
        return Err(trail.fail(missing("field", &absent)));
    }
    if seq.next_element::<IgnoredAny>()?.is_some() {
        let message = format!(
            "too many fields for {}, expected {}",
            Wit::short(ty),
            values.len()
        );
        return Err(trail.fail(message));
    }
    Ok(Val::Record(values))
}

fn decode_variant<'de, A: MapAccess<'de>>(
    mut map: A,
    variant: &Variant,
    ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let Some(key) = map.next_key_seed(NameSeed {
        what: "a case name",
        at: At::Here,
        trail,
    })?
    else {
        return Err(trail.fail(one_case(ty, "found none")));
    };
    let Some(case) = variant.cases().find(|case| case.name == key) else {
        return Err(trail.fail(unknown_case(variant, &key)));
    };
    let payload = decode_payload(&mut map, case.name, case.ty.as_ref(), trail)?;
    if map.next_key::<IgnoredAny>()?.is_some() {
        return Err(trail.fail(one_case(ty, "found more than one")));
    }
    Ok(Val::Variant(case.name.to_owned(), payload))
}

fn decode_result<'de, A: MapAccess<'de>>(
    mut map: A,
    result: &ResultType,
    ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let Some(key) = map.next_key_seed(NameSeed {
        what: "`ok` or `err`",
        at: At::Here,
        trail,
    })?
    else {
        return Err(trail.fail(one_case(ty, "found none")));
    };
    let (is_ok, name, side) = match &*key {
        "ok" | "Ok" => (true, "ok", result.ok()),
        "err" | "Err" => (false, "err", result.err()),
        _ => return Err(trail.fail(unknown_result_case(&key))),
    };
    let payload = decode_payload(&mut map, name, side.as_ref(), trail)?;
    if map.next_key::<IgnoredAny>()?.is_some() {
        return Err(trail.fail(one_case(ty, "found more than one")));
    }
    Ok(Val::Result(if is_ok { Ok(payload) } else { Err(payload) }))
}

/// The field names a `Val::Record` holds beside its values.
fn record_cost(fields: &[Field<'_>]) -> usize {
    let names: usize = fields.iter().map(|f| f.name.len()).sum();
    names + fields.len() * size_of::<String>()
}

fn one_case(ty: &Type, found: &str) -> String {
    format!("expected one case for {}, {found}", Wit::short(ty))
}

/// The value under a case key: the payload, or `null` for a case without one.
fn decode_payload<'de, A: MapAccess<'de>>(
    map: &mut A,
    case: &str,
    ty: Option<&Type>,
    trail: &mut Trail,
) -> Result<Option<Box<Val>>, A::Error> {
    let at = At::Name(case);
    match ty {
        Some(ty) => map
            .next_value_seed(Decode { ty, at, trail })
            .map(|v| Some(Box::new(v))),
        None => map.next_value_seed(NullSeed { case, trail }).map(|()| None),
    }
}

fn decode_map_object<'de, A: MapAccess<'de>>(
    mut map: A,
    key_ty: &Type,
    value_ty: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let mut entries = Vec::with_capacity(capacity(map.size_hint()));
    let at = At::Here;
    while let Some(key) = map.next_key_seed(Decode::new(key_ty, at, trail))? {
        let value = map.next_value_seed(Decode::new(value_ty, At::Key(&key), trail))?;
        entries.push((key, value));
    }
    Ok(Val::Map(entries))
}

fn decode_map_pairs<'de, A: SeqAccess<'de>>(
    mut seq: A,
    key: &Type,
    value: &Type,
    trail: &mut Trail,
) -> Result<Val, A::Error> {
    let mut entries = Vec::with_capacity(capacity(seq.size_hint()));
    loop {
        let at = At::Index(entries.len());
        let pair = PairSeed {
            key,
            value,
            at,
            trail,
        };
        match seq.next_element_seed(pair)? {
            Some(entry) => entries.push(entry),
            None => break,
        }
    }
    Ok(Val::Map(entries))
}

/// Tracks which of `n` fields, parameters or flags have been seen.
struct Seen {
    small: u64,
    large: Vec<bool>,
}

impl Seen {
    fn new(n: usize) -> Self {
        let large = if n > 64 { vec![false; n] } else { Vec::new() };
        Seen { small: 0, large }
    }

    /// Marks `i` seen; false if it already was.
    fn insert(&mut self, i: usize) -> bool {
        let fresh = !self.contains(i);
        match self.large.get_mut(i) {
            Some(slot) => *slot = true,
            None => self.small |= 1 << i,
        }
        fresh
    }

    fn contains(&self, i: usize) -> bool {
        match self.large.get(i) {
            Some(slot) => *slot,
            None => self.small & (1 << i) != 0,
        }
    }
}

/// A key or name from the input, borrowed from it when the format allows.
struct NameSeed<'a, 'r> {
    what: &'static str,
    at: At<'a>,
    trail: &'r mut Trail,
}

struct NameVisitor<'r> {
    what: &'static str,
    trail: &'r mut Trail,
    human: bool,
}

impl<'de> DeserializeSeed<'de> for NameSeed<'_, '_> {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let NameSeed { what, at, trail } = self;
        let human = de.is_human_readable();
        let result = de.deserialize_any(NameVisitor { what, trail, human });
        result.map_err(|e| at.note(trail, e))
    }
}

impl NameVisitor<'_> {
    fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let message = format!(
            "expected {}, found {}",
            self.what,
            found.describe(self.human)
        );
        self.trail.fail(message)
    }
}

impl<'de> Visitor<'de> for NameVisitor<'_> {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }

    reject!(bool i64 u64 f64 bytes null seq map ext);
}

/// The value of a case that has no payload: only `null` fits.
struct NullSeed<'c, 'r> {
    case: &'c str,
    trail: &'r mut Trail,
}

struct NullVisitor<'c, 'r> {
    case: &'c str,
    trail: &'r mut Trail,
    human: bool,
}

impl<'de> DeserializeSeed<'de> for NullSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        let NullSeed { case, trail } = self;
        let human = de.is_human_readable();
        let result = de.deserialize_any(NullVisitor { case, trail, human });
        result.map_err(|e| At::Name(case).note(trail, e))
    }
}

impl NullVisitor<'_, '_> {
    fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let found = found.describe(self.human);
        let message = format!(
            "case `{}` has no payload, expected null, found {found}",
            self.case
        );
        self.trail.fail(message)
    }
}

impl<'de> Visitor<'de> for NullVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    reject!(bool i64 u64 f64 str bytes seq map ext);
}

/// One `[key, value]` entry of a `map` written as an array of pairs.
struct PairSeed<'t, 'r> {
    key: &'t Type,
    value: &'t Type,
    at: At<'t>,
    trail: &'r mut Trail,
}

struct PairVisitor<'t, 'r> {
    key: &'t Type,
    value: &'t Type,
    trail: &'r mut Trail,
    human: bool,
}

impl<'de> DeserializeSeed<'de> for PairSeed<'_, '_> {
    type Value = (Val, Val);

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(Val, Val), D::Error> {
        let PairSeed {
            key,
            value,
            at,
            trail,
        } = self;
        let human = de.is_human_readable();
        let result = de.deserialize_any(PairVisitor {
            key,
            value,
            trail,
            human,
        });
        result.map_err(|e| at.note(trail, e))
    }
}

impl PairVisitor<'_, '_> {
    fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let message = format!(
            "expected a [key, value] pair, found {}",
            found.describe(self.human)
        );
        self.trail.fail(message)
    }
}

impl<'de> Visitor<'de> for PairVisitor<'_, '_> {
    type Value = (Val, Val);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [key, value] pair")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(Val, Val), A::Error> {
        let PairVisitor {
            key, value, trail, ..
        } = self;
        let key = seq.next_element_seed(Decode::new(key, At::Index(0), trail))?;
        let value = seq.next_element_seed(Decode::new(value, At::Index(1), trail))?;
        let (Some(key), Some(value)) = (key, value) else {
            return Err(
                trail.fail("expected a [key, value] pair, found a shorter array".to_owned())
            );
        };
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(trail.fail("expected a [key, value] pair, found a longer array".to_owned()));
        }
        Ok((key, value))
    }

    reject!(bool i64 u64 f64 str bytes null map ext);
}

/// A function's parameters: a map by name, an array by position, or null.
struct ParamsVisitor<'p, 'r> {
    params: &'p [(String, Type)],
    /// Top-level `list<u8>` parameters as [`Arg::Bytes`].
    bytes: bool,
    trail: &'r mut Trail,
    human: bool,
}

/// One parameter: as bytes when it is a `list<u8>` and bytes were asked
/// for, else as a value.
struct ArgSeed<'t, 'r> {
    ty: &'t Type,
    at: At<'t>,
    bytes: bool,
    trail: &'r mut Trail,
}

impl<'de> DeserializeSeed<'de> for ArgSeed<'_, '_> {
    type Value = Arg;

    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Arg, D::Error> {
        let ArgSeed {
            ty,
            at,
            bytes,
            trail,
        } = self;
        match ty {
            Type::List(list) if bytes && is_bytes(list) => {
                let human = de.is_human_readable();
                let result = de.deserialize_any(BytesVisitor { ty, trail, human });
                result.map(Arg::Bytes).map_err(|e| at.note(trail, e))
            }
            _ => Decode::new(ty, at, trail).deserialize(de).map(Arg::Val),
        }
    }
}

/// A `list<u8>` as bytes: MessagePack bin, base64 text, or an array of
/// numbers (as [`ValueVisitor`] takes them, with the same messages).
struct BytesVisitor<'t, 'r> {
    ty: &'t Type,
    trail: &'r mut Trail,
    human: bool,
}

impl BytesVisitor<'_, '_> {
    fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        ValueVisitor {
            ty: self.ty,
            trail: self.trail,
            human: self.human,
        }
        .reject(found)
    }
}

impl<'de> Visitor<'de> for BytesVisitor<'_, '_> {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("list<u8>")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        self.trail.charge(v.len())?;
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        self.trail.charge(v.len())?;
        Ok(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        base64_bytes(v, self.trail)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let trail = self.trail;
        let mut out = Vec::with_capacity(capacity(seq.size_hint()));
        loop {
            let at = At::Index(out.len());
            match seq.next_element_seed(Decode::new(&Type::U8, at, trail))? {
                Some(Val::U8(b)) => {
                    // Kept as one byte, not as the `Val` it was decoded to.
                    trail.budget += VAL_COST - 1;
                    out.push(b);
                }
                Some(_) => return Err(trail.fail("expected u8".to_owned())),
                None => break,
            }
        }
        Ok(out)
    }

    reject!(bool i64 u64 f64 null map ext);
}

impl ParamsVisitor<'_, '_> {
    fn reject<E: de::Error>(self, found: Found<'_>) -> E {
        let by_name = if self.human { "an object" } else { "a map" };
        let message = format!(
            "expected the parameters as {by_name} by name or an array by position, found {}",
            found.describe(self.human)
        );
        self.trail.fail(message)
    }
}

impl<'de> Visitor<'de> for ParamsVisitor<'_, '_> {
    type Value = Vec<Arg>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the parameters by name or by position")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<Arg>, E> {
        absent_params(self.params, self.trail)
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<Arg>, E> {
        absent_params(self.params, self.trail)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Arg>, A::Error> {
        let ParamsVisitor {
            params,
            bytes,
            trail,
            ..
        } = self;
        let mut values: Vec<Arg> = params.iter().map(|_| Arg::Val(Val::Option(None))).collect();
        let mut seen = Seen::new(params.len());
        while let Some(key) = map.next_key_seed(NameSeed {
            what: "a parameter name",
            at: At::Here,
            trail,
        })? {
            let Some(i) = params.iter().position(|(name, _)| *name == key) else {
                let names = params.iter().map(|(name, _)| name.as_str());
                let expected = one_of(names, "the function takes no parameters");
                return Err(trail.fail(format!("unknown parameter `{key}`, {expected}")));
            };
            if !seen.insert(i) {
                return Err(trail.fail(format!("duplicate parameter `{key}`")));
            }
            let (name, ty) = &params[i];
            let at = At::Name(name);
            values[i] = map.next_value_seed(ArgSeed {
                ty,
                at,
                bytes,
                trail,
            })?;
        }
        let absent = params.iter().enumerate();
        let absent: Vec<&str> = absent
            .filter(|(i, (_, ty))| !seen.contains(*i) && !matches!(ty, Type::Option(_)))
            .map(|(_, (name, _))| name.as_str())
            .collect();
        if !absent.is_empty() {
            return Err(trail.fail(missing("parameter", &absent)));
        }
        Ok(values)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Arg>, A::Error> {
        let ParamsVisitor {
            params,
            bytes,
            trail,
            ..
        } = self;
        let mut values = Vec::with_capacity(params.len());
        for (name, ty) in params {
            let at = At::Name(name);
            let value = seq.next_element_seed(ArgSeed {
                ty,
                at,
                bytes,
                trail,
            })?;
            match value {
                Some(value) => values.push(value),
                None => {
                    return absent_params(&params[values.len()..], trail).map(|rest| {
                        values.extend(rest);
                        values
                    });
                }
            }
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            let names = ticked(params.iter().map(|(name, _)| name.as_str()));
            let message = match params.len() {
                0 => "too many parameters: the function takes none".to_owned(),
                n => format!("too many parameters: the function takes {n} ({names})"),
            };
            return Err(trail.fail(message));
        }
        Ok(values)
    }

    reject!(bool i64 u64 f64 str bytes ext);
}

/// Parameters that were not given: `none` if they are all options.
fn absent_params<E: de::Error>(
    params: &[(String, Type)],
    trail: &mut Trail,
) -> Result<Vec<Arg>, E> {
    let required: Vec<&str> = params
        .iter()
        .filter(|(_, ty)| !matches!(ty, Type::Option(_)))
        .map(|(name, _)| name.as_str())
        .collect();
    if !required.is_empty() {
        return Err(trail.fail(missing("parameter", &required)));
    }
    Ok(params.iter().map(|_| Arg::Val(Val::Option(None))).collect())
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn encode<T: Serialize>(
    format: Format,
    value: &T,
    trail: &RefCell<Trail>,
) -> Result<Vec<u8>, CodecError> {
    let written = match format {
        Format::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        // Records are maps already; `_named` keeps any nested struct so too.
        Format::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
    };
    written.map_err(|cause| trail.take().into_error(None, || cause))
}

/// The recursive serializer: `val`, checked against `ty` as it goes.
struct Encode<'a> {
    ty: &'a Type,
    val: &'a Val,
    trail: &'a RefCell<Trail>,
}

impl<'a> Encode<'a> {
    /// A value inside this one, reporting into the same trail.
    fn child<'b>(&self, ty: &'b Type, val: &'b Val) -> Encode<'b>
    where
        'a: 'b,
    {
        let trail = self.trail;
        Encode { ty, val, trail }
    }

    #[cold]
    fn fail<E: ser::Error>(&self, message: String) -> E {
        let error = E::custom(&message);
        self.trail.borrow_mut().message = Some(message);
        error
    }

    /// Notes, while `error` unwinds, that it happened inside `segment`.
    #[cold]
    fn at<E>(&self, segment: Segment, error: E) -> E {
        self.trail.borrow_mut().segments.push(segment);
        error
    }

    fn mismatch<E: ser::Error>(&self) -> E {
        let message = format!(
            "cannot encode {} as {}",
            val_kind(self.val),
            Wit::short(self.ty)
        );
        self.fail(message)
    }
}

impl Serialize for Encode<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.ty, self.val) {
            (Type::Bool, Val::Bool(v)) => s.serialize_bool(*v),
            (Type::S8, Val::S8(v)) => s.serialize_i8(*v),
            (Type::U8, Val::U8(v)) => s.serialize_u8(*v),
            (Type::S16, Val::S16(v)) => s.serialize_i16(*v),
            (Type::U16, Val::U16(v)) => s.serialize_u16(*v),
            (Type::S32, Val::S32(v)) => s.serialize_i32(*v),
            (Type::U32, Val::U32(v)) => s.serialize_u32(*v),
            (Type::S64, Val::S64(v)) => s.serialize_i64(*v),
            (Type::U64, Val::U64(v)) => s.serialize_u64(*v),
            (Type::Float32, Val::Float32(v)) => match float_word(f64::from(*v), &s) {
                Some(word) => s.serialize_str(word),
                None => s.serialize_f32(*v),
            },
            (Type::Float64, Val::Float64(v)) => match float_word(*v, &s) {
                Some(word) => s.serialize_str(word),
                None => s.serialize_f64(*v),
            },
            (Type::Char, Val::Char(v)) => s.serialize_char(*v),
            (Type::String, Val::String(v)) => s.serialize_str(v),
            (Type::List(list), Val::List(items)) => self.list(s, list, items),
            (Type::FixedLengthList(list), Val::FixedLengthList(items)) => {
                self.elements(s, &list.ty(), items)
            }
            (Type::Tuple(tuple), Val::Tuple(items)) => self.tuple(s, tuple, items),
            (Type::Record(record), Val::Record(fields)) => self.record(s, record, fields),
            (Type::Variant(variant), Val::Variant(case, payload)) => {
                self.variant(s, variant, case, payload.as_deref())
            }
            (Type::Enum(_), Val::Enum(case)) => s.serialize_str(case),
            (Type::Option(option), Val::Option(value)) => match value {
                None => s.serialize_none(),
                Some(value) => s.serialize_some(&self.child(&option.ty(), value)),
            },
            (Type::Result(result), Val::Result(value)) => self.result(s, result, value),
            (Type::Flags(_), Val::Flags(names)) => s.collect_seq(names),
            (Type::Map(map), Val::Map(entries)) => self.map(s, &map.key(), &map.value(), entries),
            (
                Type::Own(_)
                | Type::Borrow(_)
                | Type::Future(_)
                | Type::Stream(_)
                | Type::ErrorContext,
                _,
            ) => Err(self.fail(unsupported(self.ty))),
            _ => Err(self.mismatch()),
        }
    }
}

/// The word for a float JSON cannot write as a number.
fn float_word<S: Serializer>(v: f64, s: &S) -> Option<&'static str> {
    match s.is_human_readable() {
        true => types::float_word(v),
        false => None,
    }
}

impl<'a> Encode<'a> {
    fn list<S: Serializer>(&self, s: S, list: &List, items: &'a [Val]) -> Result<S::Ok, S::Error> {
        let elem = list.ty();
        if !matches!(elem, Type::U8) {
            return self.elements(s, &elem, items);
        }
        if let Some(i) = items.iter().position(|v| !matches!(v, Val::U8(_))) {
            let error = self.child(&elem, &items[i]).mismatch();
            return Err(self.at(Segment::Index(i), error));
        }
        if s.is_human_readable() {
            s.collect_str(&Base64Vals(items))
        } else {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|v| match v {
                    Val::U8(b) => Some(*b),
                    _ => None,
                })
                .collect();
            s.serialize_bytes(&bytes)
        }
    }

    fn elements<S: Serializer>(
        &self,
        s: S,
        elem: &Type,
        items: &'a [Val],
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(items.len()))?;
        for (i, item) in items.iter().enumerate() {
            let item = self.child(elem, item);
            seq.serialize_element(&item)
                .map_err(|e| self.at(Segment::Index(i), e))?;
        }
        seq.end()
    }

    fn tuple<S: Serializer>(
        &self,
        s: S,
        tuple: &Tuple,
        items: &'a [Val],
    ) -> Result<S::Ok, S::Error> {
        if tuple.types().len() != items.len() {
            return Err(self.mismatch());
        }
        let mut seq = s.serialize_tuple(items.len())?;
        for (i, (ty, item)) in tuple.types().zip(items).enumerate() {
            let item = self.child(&ty, item);
            seq.serialize_element(&item)
                .map_err(|e| self.at(Segment::Index(i), e))?;
        }
        seq.end()
    }

    fn record<S: Serializer>(
        &self,
        s: S,
        record: &Record,
        fields: &'a [(String, Val)],
    ) -> Result<S::Ok, S::Error> {
        if record.fields().len() != fields.len() {
            return Err(self.mismatch());
        }
        let mut map = s.serialize_map(Some(fields.len()))?;
        for (field, (name, value)) in record.fields().zip(fields) {
            if field.name != name {
                let message = format!("expected field `{}`, found `{name}`", field.name);
                return Err(self.fail(message));
            }
            let value = self.child(&field.ty, value);
            map.serialize_entry(name.as_str(), &value)
                .map_err(|e| self.at(Segment::Name(name.clone()), e))?;
        }
        map.end()
    }

    fn variant<S: Serializer>(
        &self,
        s: S,
        variant: &Variant,
        case: &str,
        payload: Option<&'a Val>,
    ) -> Result<S::Ok, S::Error> {
        let Some(found) = variant.cases().find(|c| c.name == case) else {
            return Err(self.fail(unknown_case(variant, case)));
        };
        match (found.ty, payload) {
            (None, None) => s.serialize_str(case),
            (Some(ty), Some(payload)) => self.single_entry(s, case, Some((&ty, payload))),
            _ => Err(self.mismatch()),
        }
    }

    fn result<S: Serializer>(
        &self,
        s: S,
        result: &ResultType,
        value: &'a Result<Option<Box<Val>>, Option<Box<Val>>>,
    ) -> Result<S::Ok, S::Error> {
        let (case, ty, payload) = match value {
            Ok(payload) => ("ok", result.ok(), payload.as_deref()),
            Err(payload) => ("err", result.err(), payload.as_deref()),
        };
        match (ty, payload) {
            (None, None) => self.single_entry(s, case, None),
            (Some(ty), Some(payload)) => self.single_entry(s, case, Some((&ty, payload))),
            _ => Err(self.mismatch()),
        }
    }

    /// `{case: payload}`, with `null` for a case without a payload.
    fn single_entry<S: Serializer>(
        &self,
        s: S,
        case: &str,
        payload: Option<(&Type, &Val)>,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        let written = match payload {
            None => map.serialize_entry(case, &()),
            Some((ty, val)) => map.serialize_entry(case, &self.child(ty, val)),
        };
        written.map_err(|e| self.at(Segment::Name(case.to_owned()), e))?;
        map.end()
    }

    fn map<S: Serializer>(
        &self,
        s: S,
        key: &Type,
        value: &Type,
        entries: &'a [(Val, Val)],
    ) -> Result<S::Ok, S::Error> {
        if !types::map_is_object(key) {
            let mut seq = s.serialize_seq(Some(entries.len()))?;
            for (i, (k, v)) in entries.iter().enumerate() {
                let pair = (self.child(key, k), self.child(value, v));
                seq.serialize_element(&pair)
                    .map_err(|e| self.at(Segment::Index(i), e))?;
            }
            return seq.end();
        }
        let mut map = s.serialize_map(Some(entries.len()))?;
        for (k, v) in entries {
            let segment = || match k {
                Val::String(k) => Segment::Key(k.clone()),
                _ => Segment::Each,
            };
            map.serialize_entry(&self.child(key, k), &self.child(value, v))
                .map_err(|e| self.at(segment(), e))?;
        }
        map.end()
    }
}

/// A function's parameters as a map of name to value.
struct EncodeParams<'a> {
    params: &'a [(String, Type)],
    vals: &'a [Val],
    trail: &'a RefCell<Trail>,
}

impl Serialize for EncodeParams<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.params.len() != self.vals.len() {
            let message = format!(
                "expected {} parameter values, found {}",
                self.params.len(),
                self.vals.len()
            );
            let error = <S::Error as ser::Error>::custom(&message);
            self.trail.borrow_mut().message = Some(message);
            return Err(error);
        }
        let mut map = s.serialize_map(Some(self.params.len()))?;
        for ((name, ty), val) in self.params.iter().zip(self.vals) {
            let trail = self.trail;
            let value = Encode { ty, val, trail };
            map.serialize_entry(name.as_str(), &value)
                .map_err(|e| value.at(Segment::Name(name.clone()), e))?;
        }
        map.end()
    }
}

/// `list<u8>` as base64, written straight into the serializer in chunks.
struct Base64Vals<'a>(&'a [Val]);

impl fmt::Display for Base64Vals<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A multiple of 3, so only the last chunk carries padding.
        const CHUNK: usize = 768;
        let mut raw = [0u8; CHUNK];
        let mut text = [0u8; CHUNK / 3 * 4];
        for chunk in self.0.chunks(CHUNK) {
            for (byte, val) in raw.iter_mut().zip(chunk) {
                *byte = match val {
                    Val::U8(b) => *b,
                    _ => return Err(fmt::Error),
                };
            }
            let len = STANDARD
                .encode_slice(&raw[..chunk.len()], &mut text)
                .map_err(|_| fmt::Error)?;
            f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

fn val_kind(val: &Val) -> &'static str {
    match val {
        Val::Bool(_) => "a bool",
        Val::S8(_) => "an s8",
        Val::U8(_) => "a u8",
        Val::S16(_) => "an s16",
        Val::U16(_) => "a u16",
        Val::S32(_) => "an s32",
        Val::U32(_) => "a u32",
        Val::S64(_) => "an s64",
        Val::U64(_) => "a u64",
        Val::Float32(_) => "an f32",
        Val::Float64(_) => "an f64",
        Val::Char(_) => "a char",
        Val::String(_) => "a string",
        Val::List(_) => "a list",
        Val::FixedLengthList(_) => "a fixed-length list",
        Val::Map(_) => "a map",
        Val::Record(_) => "a record",
        Val::Tuple(_) => "a tuple",
        Val::Variant(..) => "a variant",
        Val::Enum(_) => "an enum",
        Val::Option(_) => "an option",
        Val::Result(_) => "a result",
        Val::Flags(_) => "flags",
        Val::Resource(_) => "a resource",
        Val::Future(_) => "a future",
        Val::Stream(_) => "a stream",
        Val::ErrorContext(_) => "an error context",
    }
}

#[cfg(test)]
mod tests {
    mod properties;
    mod schema;

    use super::*;
    use serde::{Deserialize, Serialize};
    use std::collections::HashMap;
    use std::sync::LazyLock;
    use wasmtime::component::Component;
    use wasmtime::component::types::ComponentItem;
    use wasmtime::{Config, Engine};

    /// Every type kind, as the parameters of one imported function (named
    /// after their kind), plus a few functions for the parameter tests.
    const FIXTURE: &str = r#"(component
        (type $item' (record (field "sku" string) (field "qty" u32)))
        (import "item" (type $item (eq $item')))
        (type $order' (record (field "id" u64) (field "items" (list $item))
                              (field "note" (option string))))
        (import "order" (type $order (eq $order')))
        (type $stock' (variant (case "in-stock" u32) (case "discontinued")
                               (case "backordered" (tuple u32 string))))
        (import "stock" (type $stock (eq $stock')))
        (type $colour' (enum "red" "green" "blue"))
        (import "colour" (type $colour (eq $colour')))
        (type $perms' (flags "read" "write" "exec"))
        (import "perms" (type $perms (eq $perms')))
        (import "handle" (type $handle (sub resource)))
        (import "kinds" (func
            (param "bool" bool) (param "s8" s8) (param "u8" u8) (param "s16" s16)
            (param "u16" u16) (param "s32" s32) (param "u32" u32) (param "s64" s64)
            (param "u64" u64) (param "f32" f32) (param "f64" f64) (param "char" char)
            (param "string" string) (param "list-string" (list string))
            (param "bytes" (list u8)) (param "tuple" (tuple u8 string))
            (param "opt" (option u64)) (param "opt-opt" (option (option u32))) (param "res" (result u64 (error string)))
            (param "res-ok" (result u64)) (param "res-err" (result (error string)))
            (param "res-none" (result)) (param "order" $order) (param "stock" $stock)
            (param "colour" $colour) (param "perms" $perms)
            (param "map" (map string u32)) (param "map-u32" (map u32 string))
            (param "fixed" (list u8 4)) (param "stocks" (list (option $stock)))
            (param "own" (own $handle)) (param "holder" (tuple u32 (list (own $handle))))))
        (import "reserve" (func (param "sku" string) (param "qty" u32)
                                (param "note" (option string))
                                (result (result u64 (error string)))))
        (import "ping" (func))
    )"#;

    /// A function's parameters and result.
    type Signature = (Vec<(String, Type)>, Option<Type>);

    struct Fixture {
        kinds: HashMap<String, Type>,
        funcs: HashMap<String, Signature>,
    }

    static TYPES: LazyLock<Fixture> = LazyLock::new(|| {
        let mut config = Config::new();
        config.wasm_component_model_map(true);
        config.wasm_component_model_fixed_length_lists(true);
        let engine = Engine::new(&config).expect("engine");
        let component = Component::new(&engine, FIXTURE).expect("fixture validates");
        let mut funcs = HashMap::new();
        for (name, item) in component.component_type().imports(&engine) {
            if let ComponentItem::ComponentFunc(func) = item.ty {
                let params: Vec<_> = func.params().map(|(n, t)| (n.to_owned(), t)).collect();
                funcs.insert(name.to_owned(), (params, func.results().next()));
            }
        }
        let kinds = funcs["kinds"].0.iter().cloned().collect();
        Fixture { kinds, funcs }
    });

    fn ty(kind: &str) -> &'static Type {
        &TYPES.kinds[kind]
    }

    fn func(name: &str) -> &'static Signature {
        &TYPES.funcs[name]
    }

    fn json(kind: &str, text: &str) -> Result<Val, CodecError> {
        decode_value(ty(kind), Format::Json, text.as_bytes())
    }

    fn json_error(kind: &str, text: &str) -> String {
        match json(kind, text) {
            Ok(val) => panic!("{kind} accepted {text} as {val:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn msgpack(kind: &str, bytes: &[u8]) -> Result<Val, CodecError> {
        decode_value(ty(kind), Format::MessagePack, bytes)
    }

    fn params_error(name: &str, format: Format, bytes: &[u8]) -> String {
        let (params, _) = func(name);
        match decode_params(params, format, bytes) {
            Ok(vals) => panic!("{name} accepted {bytes:?} as {vals:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn string(s: &str) -> Val {
        Val::String(s.to_owned())
    }

    fn some(val: Val) -> Val {
        Val::Option(Some(Box::new(val)))
    }

    /// The canonical JSON of one value of every kind.
    const CANONICAL: &[(&str, &str)] = &[
        ("bool", "true"),
        ("s8", "-128"),
        ("u8", "255"),
        ("s16", "-32768"),
        ("u16", "65535"),
        ("s32", "-2147483648"),
        ("u32", "4294967295"),
        ("s64", "-9223372036854775808"),
        ("u64", "18446744073709551615"),
        ("f32", "1.5"),
        ("f64", "-2.25"),
        ("f64", r#""NaN""#),
        ("f32", r#""-Infinity""#),
        ("char", r#""é""#),
        ("string", r#""hello \"world\"""#),
        ("list-string", r#"["a","b"]"#),
        ("list-string", "[]"),
        ("bytes", r#""AQID/w==""#),
        ("bytes", r#""""#),
        ("tuple", r#"[7,"x"]"#),
        ("opt", "null"),
        ("opt", "5"),
        ("res", r#"{"ok":5}"#),
        ("res", r#"{"err":"no"}"#),
        ("res-ok", r#"{"err":null}"#),
        ("res-err", r#"{"ok":null}"#),
        ("res-none", r#"{"ok":null}"#),
        (
            "order",
            r#"{"id":1,"items":[{"sku":"A","qty":2},{"sku":"B","qty":1}],"note":"gift"}"#,
        ),
        ("order", r#"{"id":1,"items":[],"note":null}"#),
        ("stock", r#"{"in-stock":3}"#),
        ("stock", r#""discontinued""#),
        ("stock", r#"{"backordered":[2,"May"]}"#),
        ("colour", r#""green""#),
        ("perms", r#"["read","exec"]"#),
        ("perms", "[]"),
        ("map", r#"{"a":1,"b":2}"#),
        ("map-u32", r#"[[1,"a"],[2,"b"]]"#),
        ("fixed", "[1,2,3,4]"),
        ("stocks", r#"[null,"discontinued",{"in-stock":1}]"#),
    ];

    #[test]
    fn every_kind_round_trips_through_json_and_messagepack() {
        for (kind, text) in CANONICAL {
            let val = json(kind, text).unwrap_or_else(|e| panic!("{kind} {text}: {e}"));
            let expected: serde_json::Value = serde_json::from_str(text).unwrap();

            let written = encode_value(ty(kind), &val, Format::Json).unwrap();
            let written: serde_json::Value = serde_json::from_slice(&written).unwrap();
            assert_eq!(written, expected, "{kind} {text} to JSON");
            assert_eq!(to_json_value(ty(kind), &val).unwrap(), expected, "{kind}");

            let packed = encode_value(ty(kind), &val, Format::MessagePack).unwrap();
            let unpacked = msgpack(kind, &packed).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(unpacked, val, "{kind} {text} through MessagePack");
        }
    }

    #[test]
    fn decodes_hand_written_json_into_the_values_wasmtime_expects() {
        let order = r#"{ "items": [ {"qty": 2, "sku": "A"} ], "id": 7 }"#;
        let item = Val::Record(vec![
            ("sku".into(), string("A")),
            ("qty".into(), Val::U32(2)),
        ]);
        let expected = Val::Record(vec![
            ("id".into(), Val::U64(7)),
            ("items".into(), Val::List(vec![item])),
            ("note".into(), Val::Option(None)),
        ]);
        assert_eq!(json("order", order).unwrap(), expected);

        let stock = Val::Variant("in-stock".into(), Some(Box::new(Val::U32(3))));
        assert_eq!(json("stock", r#"{"in-stock": 3}"#).unwrap(), stock);
        let gone = Val::Variant("discontinued".into(), None);
        assert_eq!(json("stock", r#""discontinued""#).unwrap(), gone);
        assert_eq!(json("stock", r#"{"discontinued": null}"#).unwrap(), gone);
        assert_eq!(
            json("colour", r#""blue""#).unwrap(),
            Val::Enum("blue".into())
        );
        let perms = Val::Flags(vec!["read".into(), "exec".into()]);
        assert_eq!(json("perms", r#"["exec", "read", "exec"]"#).unwrap(), perms);
        assert_eq!(json("opt", "null").unwrap(), Val::Option(None));
        assert_eq!(json("opt", "9").unwrap(), some(Val::U64(9)));
        assert_eq!(json("char", r#""x""#).unwrap(), Val::Char('x'));
        assert_eq!(json("f64", "3").unwrap(), Val::Float64(3.0));
        assert_eq!(json("u32", "3.0").unwrap(), Val::U32(3));
        let ok = Val::Result(Ok(Some(Box::new(Val::U64(5)))));
        assert_eq!(json("res", r#"{"Ok": 5}"#).unwrap(), ok);
        assert_eq!(
            json("res-none", r#""err""#).unwrap(),
            Val::Result(Err(None))
        );
        let map = Val::Map(vec![(string("a"), Val::U32(1))]);
        assert_eq!(json("map", r#"{"a": 1}"#).unwrap(), map);
    }

    #[test]
    fn list_u8_accepts_base64_bytes_or_numbers() {
        let bytes = Val::List(vec![Val::U8(1), Val::U8(2), Val::U8(3)]);
        assert_eq!(json("bytes", r#""AQID""#).unwrap(), bytes);
        assert_eq!(json("bytes", "[1, 2, 3]").unwrap(), bytes);
        assert_eq!(
            json("bytes", r#""AQI""#).unwrap(),
            json("bytes", r#""AQI=""#).unwrap()
        );
        let bin = rmp_serde::to_vec(&serde_bytes_like(&[1, 2, 3])).unwrap();
        assert_eq!(bin, [0xc4, 3, 1, 2, 3], "MessagePack bin");
        assert_eq!(msgpack("bytes", &bin).unwrap(), bytes);
        let array = rmp_serde::to_vec(&vec![1u8, 2, 3]).unwrap();
        assert_eq!(msgpack("bytes", &array).unwrap(), bytes);
        let text = rmp_serde::to_vec("AQID").unwrap();
        assert_eq!(msgpack("bytes", &text).unwrap(), bytes);
        assert_eq!(
            encode_value(ty("bytes"), &bytes, Format::MessagePack).unwrap(),
            bin
        );

        // Long enough to cross the encoder's chunk boundary.
        let long: Vec<u8> = (0..=255).cycle().take(2000).collect();
        let val = Val::List(long.iter().map(|b| Val::U8(*b)).collect());
        let text = encode_value(ty("bytes"), &val, Format::Json).unwrap();
        assert_eq!(text, serde_json::to_vec(&STANDARD.encode(&long)).unwrap());
        assert_eq!(decode_value(ty("bytes"), Format::Json, &text).unwrap(), val);
    }

    /// Serializes as MessagePack bin, as `serde_bytes` would.
    fn serde_bytes_like(bytes: &[u8]) -> impl Serialize + '_ {
        struct Bytes<'a>(&'a [u8]);
        impl Serialize for Bytes<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        Bytes(bytes)
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    struct Item {
        sku: String,
        qty: u32,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    struct Order {
        id: u64,
        items: Vec<Item>,
        note: Option<String>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Supply {
        InStock(u32),
        Discontinued,
        Backordered(u32, String),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    enum Colour {
        Red,
        Green,
        Blue,
    }

    /// What a Rust guest needs for a WIT `result`: serde's own `Result`
    /// spells its cases `Ok` / `Err`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum WitResult<T, E> {
        Ok(T),
        Err(E),
    }

    /// Rust value -> rmp-serde -> host `Val` -> rmp-serde -> the same Rust value.
    fn through_host<T>(kind: &str, value: &T, expected_json: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug,
    {
        let expected = json(kind, expected_json).unwrap();
        for packed in [rmp_serde::to_vec_named(value), rmp_serde::to_vec(value)] {
            let packed = packed.unwrap();
            let val = msgpack(kind, &packed).unwrap_or_else(|e| panic!("{kind} {value:?}: {e}"));
            assert_eq!(val, expected, "{kind} {value:?}");
        }
        let packed = encode_value(ty(kind), &expected, Format::MessagePack).unwrap();
        let back: T = rmp_serde::from_slice(&packed).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(&back, value);
    }

    #[test]
    fn rust_types_through_rmp_serde_meet_host_values() {
        let order = Order {
            id: 42,
            items: vec![Item {
                sku: "A".into(),
                qty: 2,
            }],
            note: Some("gift".into()),
        };
        let order_json = r#"{"id":42,"items":[{"sku":"A","qty":2}],"note":"gift"}"#;
        through_host("order", &order, order_json);
        let bare = Order {
            id: 1,
            items: vec![],
            note: None,
        };
        through_host("order", &bare, r#"{"id":1,"items":[]}"#);
        through_host("stock", &Supply::InStock(3), r#"{"in-stock":3}"#);
        through_host("stock", &Supply::Discontinued, r#""discontinued""#);
        let backordered = Supply::Backordered(2, "May".into());
        through_host("stock", &backordered, r#"{"backordered":[2,"May"]}"#);
        through_host("colour", &Colour::Green, r#""green""#);
        through_host("perms", &vec!["read".to_owned()], r#"["read"]"#);
        through_host("opt", &Some(7u64), "7");
        through_host("opt", &None::<u64>, "null");
        through_host("tuple", &(7u8, "x".to_owned()), r#"[7,"x"]"#);
        through_host("bytes", &vec![1u8, 2, 3], "[1,2,3]");
        through_host("res", &WitResult::<u64, String>::Ok(5), r#"{"ok":5}"#);
        through_host(
            "res",
            &WitResult::<u64, String>::Err("no".into()),
            r#"{"err":"no"}"#,
        );
        let map: HashMap<String, u32> = [("a".to_owned(), 1)].into();
        through_host("map", &map, r#"{"a":1}"#);
        through_host(
            "stocks",
            &vec![None, Some(Supply::Discontinued)],
            r#"[null,"discontinued"]"#,
        );

        // Rust's own `Result` decodes; the host answers with `ok` / `err`.
        let packed = rmp_serde::to_vec(&Ok::<u64, String>(5)).unwrap();
        let ok = Val::Result(Ok(Some(Box::new(Val::U64(5)))));
        assert_eq!(msgpack("res", &packed).unwrap(), ok);
    }

    #[test]
    fn params_by_name_by_position_and_omitted() {
        let (params, _) = func("reserve");
        let expected = vec![string("A1"), Val::U32(2), Val::Option(None)];
        let by_name = br#"{"qty": 2, "sku": "A1"}"#;
        assert_eq!(
            decode_params(params, Format::Json, by_name).unwrap(),
            expected
        );
        let by_position = br#"["A1", 2]"#;
        assert_eq!(
            decode_params(params, Format::Json, by_position).unwrap(),
            expected
        );
        let with_note = br#"["A1", 2, "gift"]"#;
        let noted = decode_params(params, Format::Json, with_note).unwrap();
        assert_eq!(noted[2], some(string("gift")));

        #[derive(Serialize)]
        struct Reserve<'a> {
            sku: &'a str,
            qty: u32,
        }
        let reserve = Reserve { sku: "A1", qty: 2 };
        for packed in [
            rmp_serde::to_vec_named(&reserve),
            rmp_serde::to_vec(&reserve),
        ] {
            let packed = packed.unwrap();
            let vals = decode_params(params, Format::MessagePack, &packed).unwrap();
            assert_eq!(vals, expected);
        }

        let (none, _) = func("ping");
        for empty in [&b""[..], b"  \n", b"null", b"{}", b"[]"] {
            assert_eq!(decode_params(none, Format::Json, empty).unwrap(), vec![]);
        }
        assert_eq!(
            decode_params(none, Format::MessagePack, b"").unwrap(),
            vec![]
        );
        assert_eq!(
            decode_params(none, Format::MessagePack, &[0xc0]).unwrap(),
            vec![]
        );
    }

    #[test]
    fn params_seed_and_value_seed_work_with_any_deserializer() {
        let (params, _) = func("reserve");
        let value = serde_json::json!({"sku": "A1", "qty": 2, "note": null});
        let vals = ParamsSeed(params).deserialize(value).unwrap();
        assert_eq!(vals, vec![string("A1"), Val::U32(2), Val::Option(None)]);

        let value = serde_json::json!({"sku": "A1", "qty": "x"});
        let error = ParamsSeed(params).deserialize(value).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"params.qty: expected u32, found string "x""#
        );

        let value = serde_json::json!({"id": 1, "items": [{"sku": "A", "qty": -1}]});
        let error = ValueSeed(ty("order")).deserialize(value).unwrap_err();
        let message = "items[0].qty: integer -1 is out of range for u32 (0 to 4294967295)";
        assert_eq!(error.to_string(), message);

        let mut de = serde_json::Deserializer::from_str(r#""red""#);
        let val = ValueSeed(ty("colour")).deserialize(&mut de).unwrap();
        assert_eq!(val, Val::Enum("red".into()));
    }

    #[test]
    fn typed_values_serialize_with_any_serializer() {
        let val = json("order", r#"{"id":1,"items":[],"note":null}"#).unwrap();
        let typed = TypedVal {
            ty: ty("order"),
            val: &val,
        };
        let text = serde_json::to_string(&typed).unwrap();
        assert_eq!(text, r#"{"id":1,"items":[],"note":null}"#);

        let (params, _) = func("reserve");
        let vals = [string("A1"), Val::U32(2), Val::Option(None)];
        let typed = TypedParams {
            params,
            vals: &vals,
        };
        let text = serde_json::to_string(&typed).unwrap();
        assert_eq!(text, r#"{"sku":"A1","qty":2,"note":null}"#);
        let packed = encode_params(params, &vals, Format::MessagePack).unwrap();
        assert_eq!(
            decode_params(params, Format::MessagePack, &packed).unwrap(),
            vals
        );
    }

    #[test]
    fn numbers_are_range_checked() {
        let cases = [
            ("u8", "300", "integer 300 is out of range for u8 (0 to 255)"),
            ("u8", "-1", "integer -1 is out of range for u8 (0 to 255)"),
            (
                "s8",
                "128",
                "integer 128 is out of range for s8 (-128 to 127)",
            ),
            (
                "u16",
                "65536",
                "integer 65536 is out of range for u16 (0 to 65535)",
            ),
            (
                "s16",
                "-32769",
                "integer -32769 is out of range for s16 (-32768 to 32767)",
            ),
            (
                "u32",
                "-5",
                "integer -5 is out of range for u32 (0 to 4294967295)",
            ),
            (
                "s32",
                "2147483648",
                "integer 2147483648 is out of range for s32 (-2147483648 to 2147483647)",
            ),
            (
                "u64",
                "-1",
                "integer -1 is out of range for u64 (0 to 18446744073709551615)",
            ),
            (
                "s64",
                "9223372036854775808",
                "integer 9223372036854775808 is out of range for s64 \
                 (-9223372036854775808 to 9223372036854775807)",
            ),
            ("u8", "2.5", "expected u8, found float 2.5"),
            ("f32", "1e300", "float 1e300 is out of range for f32"),
        ];
        for (kind, text, message) in cases {
            assert_eq!(json_error(kind, text), message, "{kind} {text}");
        }
        let packed = rmp_serde::to_vec(&300u16).unwrap();
        let error = msgpack("u8", &packed).unwrap_err().to_string();
        assert_eq!(error, "integer 300 is out of range for u8 (0 to 255)");
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_found() {
        let cases = [
            ("u32", r#""x""#, r#"expected u32, found string "x""#),
            ("bool", "1", "expected bool, found integer 1"),
            ("string", "null", "expected string, found null"),
            ("string", "true", "expected string, found boolean true"),
            ("list-string", "{}", "expected list<string>, found object"),
            ("u64", "[]", "expected u64, found array"),
            (
                "char",
                r#""ab""#,
                r#"expected char (a single character), found string "ab""#,
            ),
            (
                "char",
                r#""""#,
                r#"expected char (a single character), found string """#,
            ),
            (
                "tuple",
                "[1]",
                "expected 2 elements for tuple<u8, string>, found 1",
            ),
            (
                "tuple",
                r#"[1, "a", 2]"#,
                "expected 2 elements for tuple<u8, string>, found more",
            ),
            (
                "fixed",
                "[1, 2, 3]",
                "expected 4 elements for list<u8, 4>, found 3",
            ),
            (
                "bytes",
                r#""!!""#,
                "invalid base64 for list<u8>: Invalid symbol 33, offset 0.",
            ),
            (
                "bytes",
                "[1, 256]",
                "[1]: integer 256 is out of range for u8 (0 to 255)",
            ),
            (
                "order",
                r#""x""#,
                r#"expected record { id: u64, items: list<record { ... }>, note: option<string> }, found string "x""#,
            ),
            ("opt", r#""x""#, r#"expected u64, found string "x""#),
            (
                "perms",
                r#"["read", 1]"#,
                "[1]: expected a flag name, found integer 1",
            ),
            (
                "u32",
                r#""an overly long string that goes on and on and on""#,
                r#"expected u32, found string "an overly long string that goes on and o"..."#,
            ),
        ];
        for (kind, text, message) in cases {
            assert_eq!(json_error(kind, text), message, "{kind} {text}");
        }
        let packed = rmp_serde::to_vec(&HashMap::from([("a", 1)])).unwrap();
        let error = msgpack("u32", &packed).unwrap_err().to_string();
        assert_eq!(error, "expected u32, found map");
    }

    #[test]
    fn records_name_unknown_missing_and_duplicate_fields() {
        let cases = [
            (
                r#"{"id": 1, "items": [], "colour": "red"}"#,
                "unknown field `colour`, expected one of `id`, `items`, `note`",
            ),
            (r#"{"items": []}"#, "missing field `id`"),
            (r#"{"note": "x"}"#, "missing fields `id`, `items`"),
            (r#"{"id": 1, "id": 2, "items": []}"#, "duplicate field `id`"),
            (
                r#"{"id": 1, "items": [{"sku": "A"}]}"#,
                "items[0]: missing field `qty`",
            ),
            (
                r#"{"id": 1, "items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 1},
                                       {"sku": "C", "qty": "x"}]}"#,
                r#"items[2].qty: expected u32, found string "x""#,
            ),
            (
                r#"{"id": 1, "items": [], "note": 5}"#,
                "note: expected string, found integer 5",
            ),
            (
                r#"{"id": 1, "items": [], "7": 5}"#,
                "unknown field `7`, expected one of `id`, `items`, `note`",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(json_error("order", text), message, "{text}");
        }
        let packed = rmp_serde::to_vec(&(1u64, Vec::<Item>::new(), None::<String>, 4)).unwrap();
        let error = msgpack("order", &packed).unwrap_err().to_string();
        let message = "too many fields for record { id: u64, items: list<record { ... }>, \
                       note: option<string> }, expected 3";
        assert_eq!(error, message);
        let packed = rmp_serde::to_vec(&HashMap::from([(1, 2)])).unwrap();
        let error = msgpack("order", &packed).unwrap_err().to_string();
        assert_eq!(error, "expected a field name, found integer 1");
    }

    #[test]
    fn cases_name_unknown_and_malformed_cases() {
        let cases = [
            (
                "stock",
                r#""blue""#,
                "unknown case `blue` for variant, expected one of `in-stock`, `discontinued`, `backordered`",
            ),
            (
                "stock",
                r#"{"blue": 1}"#,
                "unknown case `blue` for variant, expected one of `in-stock`, `discontinued`, `backordered`",
            ),
            (
                "stock",
                r#""in-stock""#,
                "case `in-stock` needs a payload of type u32",
            ),
            (
                "stock",
                r#"{"discontinued": 1}"#,
                "discontinued: case `discontinued` has no payload, expected null, found integer 1",
            ),
            (
                "stock",
                r#"{"in-stock": "x"}"#,
                r#"in-stock: expected u32, found string "x""#,
            ),
            (
                "stock",
                "{}",
                "expected one case for variant { in-stock(u32), discontinued, backordered(tuple<u32, string>) }, found none",
            ),
            (
                "stock",
                r#"{"in-stock": 1, "discontinued": null}"#,
                "expected one case for variant { in-stock(u32), discontinued, backordered(tuple<u32, string>) }, found more than one",
            ),
            (
                "stocks",
                r#"[null, "gone"]"#,
                "[1]: unknown case `gone` for variant, expected one of `in-stock`, `discontinued`, `backordered`",
            ),
            (
                "colour",
                r#""pink""#,
                "unknown case `pink` for enum, expected one of `red`, `green`, `blue`",
            ),
            (
                "colour",
                "0",
                "expected enum { red, green, blue }, found integer 0",
            ),
            (
                "perms",
                r#"["read", "fly"]"#,
                "[1]: unknown flag `fly`, expected one of `read`, `write`, `exec`",
            ),
            (
                "res",
                r#"{"maybe": 1}"#,
                "unknown case `maybe` for result, expected `ok` or `err`",
            ),
            (
                "res",
                r#"{"ok": "x"}"#,
                r#"ok: expected u64, found string "x""#,
            ),
            ("res", r#""ok""#, "case `ok` needs a payload of type u64"),
            (
                "res-none",
                r#"{"ok": 1}"#,
                "ok: case `ok` has no payload, expected null, found integer 1",
            ),
        ];
        for (kind, text, message) in cases {
            assert_eq!(json_error(kind, text), message, "{kind} {text}");
        }
    }

    #[test]
    fn params_name_unknown_and_missing_parameters() {
        let json = Format::Json;
        let cases: [(&str, &[u8], &str); 9] = [
            (
                "reserve",
                br#"{"sku": "A", "qty": 1, "skew": 2}"#,
                "unknown parameter `skew`, expected one of `sku`, `qty`, `note`",
            ),
            ("reserve", br#"{"qty": 1}"#, "missing parameter `sku`"),
            ("reserve", b"{}", "missing parameters `sku`, `qty`"),
            ("reserve", b"", "missing parameters `sku`, `qty`"),
            ("reserve", br#"["A"]"#, "missing parameter `qty`"),
            (
                "reserve",
                br#"{"sku": "A", "sku": "B", "qty": 1}"#,
                "duplicate parameter `sku`",
            ),
            (
                "reserve",
                br#"["A", 1, null, 4]"#,
                "too many parameters: the function takes 3 (`sku`, `qty`, `note`)",
            ),
            (
                "reserve",
                br#""A""#,
                r#"expected the parameters as an object by name or an array by position, found string "A""#,
            ),
            (
                "ping",
                br#"{"x": 1}"#,
                "unknown parameter `x`, the function takes no parameters",
            ),
        ];
        for (name, bytes, message) in cases {
            assert_eq!(params_error(name, json, bytes), message, "{name}");
        }
        let error = params_error("reserve", json, br#"["A", "x"]"#);
        assert_eq!(error, r#"params.qty: expected u32, found string "x""#);
        let error = params_error("reserve", json, br#"{"sku": "A", "qty": 1, "note": 2}"#);
        assert_eq!(error, "params.note: expected string, found integer 2");
        let packed = rmp_serde::to_vec("A").unwrap();
        let error = params_error("reserve", Format::MessagePack, &packed);
        let message =
            r#"expected the parameters as a map by name or an array by position, found string "A""#;
        assert_eq!(error, message);
        // A space is the integer 32 in MessagePack, not "no parameters".
        let error = params_error("reserve", Format::MessagePack, b" ");
        let message = "expected the parameters as a map by name or an array by position, \
                       found integer 32";
        assert_eq!(error, message);
    }

    #[test]
    fn broken_input_is_reported_as_such() {
        assert_eq!(
            json_error("u32", "5 6"),
            "trailing data after the value at line 1 column 3"
        );
        assert_eq!(
            msgpack("u32", &[0x05, 0x06]).unwrap_err().to_string(),
            "trailing data after the value"
        );
        assert_eq!(
            json_error("u32", ""),
            "invalid JSON: EOF while parsing a value at line 1 column 0"
        );
        assert_eq!(
            json_error("list-string", r#"["a", "b""#),
            "invalid JSON: EOF while parsing a list at line 1 column 9"
        );
        assert_eq!(
            json_error("order", r#"{"id": 1, "items": [{"sku": }]}"#),
            "items[0].sku: invalid JSON: expected value at line 1 column 29"
        );
        let mut packed = rmp_serde::to_vec("hello").unwrap();
        packed.truncate(3);
        let error = msgpack("string", &packed).unwrap_err().to_string();
        assert_eq!(error, "invalid MessagePack: unexpected end of data");
        let error = msgpack("string", &[0xc1]).unwrap_err().to_string();
        assert_eq!(error, "invalid MessagePack: unexpected marker Reserved");
        let error = msgpack("string", &[0xa2, 0xff, 0xfe])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "expected string, found a string that is not valid UTF-8"
        );
        assert_eq!(msgpack("string", &[0xc4, 1, b'a']).unwrap(), string("a"));
        let error = params_error("reserve", Format::MessagePack, &[0x81, 0xa3]);
        assert_eq!(error, "invalid MessagePack: unexpected end of data");
    }

    #[test]
    fn resources_and_friends_are_unsupported() {
        let message = "unsupported type `own<resource>`: resources, futures, streams and \
                       error contexts cannot be sent as JSON or MessagePack";
        assert_eq!(json_error("own", "1"), message);
        let error = check_supported(ty("holder")).unwrap_err();
        assert_eq!(error.path, "[1][]");
        assert_eq!(error.message, message);
        for kind in ["order", "stock", "map-u32", "stocks", "res", "fixed"] {
            assert_eq!(check_supported(ty(kind)), Ok(()), "{kind}");
        }
    }

    #[test]
    fn encoding_checks_values_against_their_type() {
        let error = encode_value(ty("u32"), &string("x"), Format::Json).unwrap_err();
        assert_eq!(error.to_string(), "cannot encode a string as u32");
        let item = Val::Record(vec![
            ("sku".into(), string("A")),
            ("qty".into(), string("x")),
        ]);
        let order = Val::Record(vec![
            ("id".into(), Val::U64(1)),
            ("items".into(), Val::List(vec![item])),
            ("note".into(), Val::Option(None)),
        ]);
        for format in [Format::Json, Format::MessagePack] {
            let error = encode_value(ty("order"), &order, format).unwrap_err();
            assert_eq!(
                error.to_string(),
                "items[0].qty: cannot encode a string as u32"
            );
        }
        let gone = Val::Variant("gone".into(), None);
        let error = encode_value(ty("stock"), &gone, Format::Json).unwrap_err();
        let message = "unknown case `gone` for variant, expected one of `in-stock`, \
                       `discontinued`, `backordered`";
        assert_eq!(error.to_string(), message);
        let error = to_json_value(ty("bytes"), &Val::List(vec![Val::U32(1)])).unwrap_err();
        assert_eq!(error.to_string(), "[0]: cannot encode a u32 as u8");
        let typed = TypedVal {
            ty: ty("u8"),
            val: &Val::Bool(true),
        };
        let error = serde_json::to_string(&typed).unwrap_err().to_string();
        assert_eq!(error, "cannot encode a bool as u8");
    }

    #[test]
    fn wit_types_render_in_wit_syntax() {
        let cases = [
            ("f32", "f32"),
            ("list-string", "list<string>"),
            ("bytes", "list<u8>"),
            ("fixed", "list<u8, 4>"),
            ("tuple", "tuple<u8, string>"),
            ("opt", "option<u64>"),
            ("res", "result<u64, string>"),
            ("res-ok", "result<u64>"),
            ("res-err", "result<_, string>"),
            ("res-none", "result"),
            (
                "order",
                "record { id: u64, items: list<record { sku: string, qty: u32 }>, note: option<string> }",
            ),
            (
                "stock",
                "variant { in-stock(u32), discontinued, backordered(tuple<u32, string>) }",
            ),
            ("colour", "enum { red, green, blue }"),
            ("perms", "flags { read, write, exec }"),
            ("map", "map<string, u32>"),
            ("own", "own<resource>"),
        ];
        for (kind, wit) in cases {
            assert_eq!(wit_type(ty(kind)), wit);
        }
        let (params, result) = func("reserve");
        assert_eq!(
            wit_signature(params, result.as_ref()),
            "func(sku: string, qty: u32, note: option<string>) -> result<u64, string>"
        );
        let (params, result) = func("ping");
        assert_eq!(wit_signature(params, result.as_ref()), "func()");
    }

    /// `n` nested MessagePack arrays of one element around `inner`.
    fn nested_msgpack(n: usize, inner: &[u8]) -> Vec<u8> {
        let mut out = vec![0x91; n];
        out.extend_from_slice(inner);
        out
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        // Where the type expects something else, at the first bracket.
        assert_eq!(json_error("string", &deep), "expected string, found array");
        // Where the input is only skipped (an extra tuple element): serde_json
        // skips without recursing.
        let text = format!("[7, \"x\", {deep}]");
        assert_eq!(
            json_error("tuple", &text),
            "expected 2 elements for tuple<u8, string>, found more"
        );
        let packed = [
            &[0x93, 0x07, 0xa1, b'x'][..],
            &nested_msgpack(100_000, &[0xc0]),
        ]
        .concat();
        let error = msgpack("tuple", &packed).unwrap_err().to_string();
        assert_eq!(error, "invalid MessagePack: nested too deeply");
        // Trailing data after a complete value.
        let packed = [&[0x05][..], &nested_msgpack(100_000, &[0xc0])].concat();
        let error = msgpack("u32", &packed).unwrap_err().to_string();
        assert_eq!(error, "trailing data after the value");
        // Params by position, nested deeper than any type.
        let error = params_error(
            "reserve",
            Format::MessagePack,
            &nested_msgpack(100_000, &[]),
        );
        assert_eq!(error, "params.sku: expected string, found array");
    }

    #[test]
    fn huge_length_prefixes_allocate_nothing_they_do_not_find() {
        // array 32, bin 32, str 32, map 32 claiming 4 GiB with nothing after.
        let claims: [(&str, u8); 4] = [
            ("list-string", 0xdd),
            ("bytes", 0xc6),
            ("string", 0xdb),
            ("order", 0xdf),
        ];
        for (kind, marker) in claims {
            let packed = [marker, 0xff, 0xff, 0xff, 0xff];
            let error = msgpack(kind, &packed).unwrap_err().to_string();
            // A list or record fails at its first element, which is missing.
            let at = match kind {
                "list-string" => "[0]: ",
                _ => "",
            };
            assert_eq!(
                error,
                format!("{at}invalid MessagePack: unexpected end of data"),
                "{kind}"
            );
        }
        // The same for parameters kept as bytes.
        let (params, _) = func("kinds");
        let bytes_only = [params[14].clone()];
        assert_eq!(bytes_only[0].0, "bytes");
        let options = DecodeOptions {
            budget: DEFAULT_BUDGET,
            bytes: true,
        };
        let packed = [0x91, 0xc6, 0xff, 0xff, 0xff, 0xff];
        let error = decode_args(&bytes_only, Format::MessagePack, &packed, options).unwrap_err();
        assert_eq!(
            error.to_string(),
            "params.bytes: invalid MessagePack: unexpected end of data"
        );
        // A claim the payload does hold is still held to the budget.
        let mut packed = vec![0x91, 0xc6, 0x00, 0x10, 0x00, 0x01];
        packed.resize(6 + (1 << 20) + 1, 7);
        let small = DecodeOptions {
            budget: 1 << 20,
            bytes: true,
        };
        let error = decode_args(&bytes_only, Format::MessagePack, &packed, small).err();
        assert_eq!(
            error.expect("1 MiB + 1 is past the budget").to_string(),
            "params.bytes: too large: the decoded values would take more than 1.0 MiB of host memory"
        );
        let roomy = DecodeOptions {
            budget: 2 << 20,
            ..small
        };
        let args = decode_args(&bytes_only, Format::MessagePack, &packed, roomy).unwrap();
        assert!(args == [Arg::Bytes(vec![7; (1 << 20) + 1])]);
    }

    #[test]
    fn the_budget_counts_a_val_per_list_element() {
        // 1,000 bytes as values are 1,000 `Val`s (40 bytes each in wasmtime 48).
        let (params, _) = func("kinds");
        let bytes_only = [params[14].clone()];
        let packed = rmp_serde::to_vec(&(serde_bytes_like(&[1; 1000]),)).unwrap();
        let tight = DecodeOptions {
            budget: 1000 * VAL_COST,
            bytes: false,
        };
        let error = decode_args(&bytes_only, Format::MessagePack, &packed, tight).err();
        let error = error.expect("1,000 values are past the budget");
        let limit = bytesize::ByteSize::b(1000 * VAL_COST as u64)
            .display()
            .iec();
        assert_eq!(
            error.to_string(),
            format!(
                "params.bytes: too large: the decoded values would take more than {limit} of host memory"
            )
        );
        let enough = DecodeOptions {
            budget: 1001 * VAL_COST,
            ..tight
        };
        let args = decode_args(&bytes_only, Format::MessagePack, &packed, enough).unwrap();
        assert!(args == [Arg::Val(bytes_val(&[1; 1000]))]);
        // A list of strings counts each string's text too.
        let list = ty("list-string");
        let text = serde_json::to_string(&vec!["x".repeat(100); 100]).unwrap();
        let error = decode_list_within(list, &text, 100 * 100).unwrap_err();
        assert!(error.ends_with("of host memory"), "{error}");
        decode_list_within(list, &text, 101 * (100 + VAL_COST)).unwrap();
    }

    fn decode_list_within(ty: &Type, text: &str, budget: usize) -> Result<Val, String> {
        decode(ValueRoot(ty), None, Format::Json, text.as_bytes(), budget)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn option_of_option_cannot_tell_some_none_from_none() {
        let none = Val::Option(None);
        assert_eq!(json("opt-opt", "null").unwrap(), none);
        assert_eq!(json("opt-opt", "5").unwrap(), some(some(Val::U32(5))));
        assert_eq!(msgpack("opt-opt", &[0xc0]).unwrap(), none);
        assert_eq!(
            msgpack("opt-opt", &[0x05]).unwrap(),
            some(some(Val::U32(5)))
        );
        // `some(none)` is written as `null`, and reads back as `none`.
        let some_none = some(Val::Option(None));
        let text = encode_value(ty("opt-opt"), &some_none, Format::Json).unwrap();
        assert_eq!(text, b"null");
        assert_eq!(json("opt-opt", "null").unwrap(), none);
        let packed = encode_value(ty("opt-opt"), &some_none, Format::MessagePack).unwrap();
        assert_eq!(packed, [0xc0]);
    }

    #[test]
    fn enum_variant_and_flag_names_are_case_sensitive() {
        assert_eq!(
            json_error("colour", r#""Red""#),
            "unknown case `Red` for enum, expected one of `red`, `green`, `blue`"
        );
        assert_eq!(
            json_error("colour", r#""RED""#),
            "unknown case `RED` for enum, expected one of `red`, `green`, `blue`"
        );
        assert_eq!(
            json_error("stock", r#""Discontinued""#),
            "unknown case `Discontinued` for variant, expected one of `in-stock`, `discontinued`, `backordered`"
        );
        assert_eq!(
            json_error("stock", r#"{"In-Stock": 3}"#),
            "unknown case `In-Stock` for variant, expected one of `in-stock`, `discontinued`, `backordered`"
        );
        assert_eq!(
            json_error("perms", r#"["Read"]"#),
            "[0]: unknown flag `Read`, expected one of `read`, `write`, `exec`"
        );
        // Rust's `Ok` / `Err` are the one documented exception, for results.
        assert_eq!(
            json("res", r#"{"Ok": 5}"#).unwrap(),
            Val::Result(Ok(Some(Box::new(Val::U64(5)))))
        );
        assert_eq!(
            json_error("res", r#"{"OK": 5}"#),
            "unknown case `OK` for result, expected `ok` or `err`"
        );
    }

    #[test]
    fn json_integers_past_2_pow_53_are_exact_or_refused() {
        // Integers are read as integers, exactly, to the ends of u64 and s64.
        let past = 9_007_199_254_740_993_u64; // 2^53 + 1: no f64 holds it
        assert_eq!(json("u64", &past.to_string()).unwrap(), Val::U64(past));
        assert_eq!(
            json("s64", &format!("-{past}")).unwrap(),
            Val::S64(-(past as i64))
        );
        assert_eq!(
            json("u64", "18446744073709551615").unwrap(),
            Val::U64(u64::MAX)
        );
        assert_eq!(
            json("s64", "-9223372036854775808").unwrap(),
            Val::S64(i64::MIN)
        );
        // Past u64, JSON has only a float: out of range.
        assert_eq!(
            json_error("u64", "18446744073709551616"),
            "float 1.8446744073709552e19 is out of range for u64 (0 to 18446744073709551615)"
        );
        // An integral float past 2^53 may be another integer than meant: refused.
        assert_eq!(
            json_error("u64", "1e16"),
            "float 1e16 is past 2^53, where a float is not an exact integer: \
             write the integer without a fraction or exponent"
        );
        assert_eq!(
            json_error("s64", "-1e17"),
            "float -1e17 is past 2^53, where a float is not an exact integer: \
             write the integer without a fraction or exponent"
        );
        // Up to 2^53 an integral float is the integer it says.
        assert_eq!(
            json("u64", "9007199254740992.0").unwrap(),
            Val::U64(1 << 53)
        );
        assert_eq!(json("u32", "4e9").unwrap(), Val::U32(4_000_000_000));
        // A float type takes the nearest float, as JSON readers do.
        assert_eq!(
            json("f64", &past.to_string()).unwrap(),
            Val::Float64(9_007_199_254_740_992.0)
        );
        // MessagePack floats follow the same rule.
        let packed = rmp_serde::to_vec(&1e17_f64).unwrap();
        let error = msgpack("u64", &packed).unwrap_err().to_string();
        assert!(error.contains("is past 2^53"), "{error}");
    }

    #[test]
    fn negative_zero_keeps_its_sign_in_floats_and_is_zero_in_integers() {
        let Val::Float64(x) = json("f64", "-0.0").unwrap() else {
            panic!("not an f64")
        };
        assert!(x == 0.0 && x.is_sign_negative());
        let Val::Float32(x) = json("f32", "-0.0").unwrap() else {
            panic!("not an f32")
        };
        assert!(x == 0.0 && x.is_sign_negative());
        let text = encode_value(ty("f64"), &Val::Float64(-0.0), Format::Json).unwrap();
        assert_eq!(text, b"-0.0");
        let packed = encode_value(ty("f64"), &Val::Float64(-0.0), Format::MessagePack).unwrap();
        let Val::Float64(x) = msgpack("f64", &packed).unwrap() else {
            panic!("not an f64")
        };
        assert!(x == 0.0 && x.is_sign_negative());
        assert_eq!(json("u32", "-0.0").unwrap(), Val::U32(0));
        assert_eq!(json("s8", "-0").unwrap(), Val::S8(0));
    }

    #[test]
    fn invalid_utf8_in_json_text_is_refused() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"\"\xff\"",
                "invalid JSON: invalid unicode code point at line 1 column 2",
            ),
            (
                b"\"a\xc3\"",
                "invalid JSON: invalid unicode code point at line 1 column 3",
            ),
            (
                br#""\ud800""#,
                "invalid JSON: unexpected end of hex escape at line 1 column 8",
            ),
            (
                b"\xef\xbb\xbf\"a\"",
                "invalid JSON: expected value at line 1 column 1",
            ),
        ];
        for (bytes, message) in cases {
            let error = decode_value(ty("string"), Format::Json, bytes).unwrap_err();
            assert_eq!(error.to_string(), message, "{bytes:?}");
        }
        let (params, _) = func("reserve");
        let error =
            decode_params(params, Format::Json, b"{\"sku\": \"\xfe\", \"qty\": 1}").unwrap_err();
        assert_eq!(
            error.to_string(),
            "params.sku: invalid JSON: invalid unicode code point at line 1 column 10"
        );
        // Invalid UTF-8 outside any string is no JSON at all.
        let error = decode_params(params, Format::Json, b"\xff").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid JSON: expected value at line 1 column 1"
        );
    }
}
