//! The JSON Schema (2020-12, as OpenAPI 3.1 uses) of a WIT type: exactly
//! the JSON the codec writes for it, and so JSON the codec accepts. The
//! encoding's choices come from the front ([`map_is_object`], [`is_bytes`],
//! [`FLOAT_WORDS`]); this file only describes them and must not decide any.

use serde_json::{Map, Value, json};
use wasmtime::component::Type;

use super::{FLOAT_WORDS, integer_range, is_bytes, map_is_object};

/// The JSON Schema of a WIT type, in the codec's JSON encoding.
pub fn json_schema(ty: &Type) -> Value {
    if let Some((min, max)) = integer_range(ty) {
        return json!({ "type": "integer", "minimum": min, "maximum": max });
    }
    match ty {
        Type::Bool => json!({ "type": "boolean" }),
        // NaN and the infinities have no JSON number: the codec writes words.
        Type::Float32 | Type::Float64 => {
            json!({ "anyOf": [{ "type": "number" }, { "enum": FLOAT_WORDS }] })
        }
        Type::Char => json!({ "type": "string", "minLength": 1, "maxLength": 1 }),
        Type::String => json!({ "type": "string" }),
        Type::Enum(e) => json!({ "type": "string", "enum": e.names().collect::<Vec<_>>() }),
        Type::Flags(f) => {
            json!({ "type": "array", "uniqueItems": true, "items": { "type": "string", "enum": f.names().collect::<Vec<_>>() } })
        }
        _ => compound(ty),
    }
}

/// The schema of a type made of other types.
fn compound(ty: &Type) -> Value {
    match ty {
        Type::List(l) if is_bytes(l) => json!({ "type": "string", "contentEncoding": "base64" }),
        Type::List(l) => json!({ "type": "array", "items": json_schema(&l.ty()) }),
        Type::FixedLengthList(l) => {
            json!({ "type": "array", "items": json_schema(&l.ty()), "minItems": l.len(), "maxItems": l.len() })
        }
        Type::Record(r) => {
            let fields: Vec<(String, Type)> =
                r.fields().map(|f| (f.name.to_string(), f.ty)).collect();
            params_schema(&fields)
        }
        Type::Tuple(t) => exact_array(t.types().map(|t| json_schema(&t)).collect()),
        Type::Variant(v) => {
            let cases: Vec<Value> = v
                .cases()
                .map(|c| match &c.ty {
                    None => json!({ "const": c.name }),
                    Some(t) => single_key(c.name, json_schema(t)),
                })
                .collect();
            json!({ "oneOf": cases })
        }
        // `anyOf`: `option<option<T>>` writes `null` for both `none`s.
        Type::Option(o) => json!({ "anyOf": [{ "type": "null" }, json_schema(&o.ty())] }),
        Type::Result(r) => {
            let side = |t: Option<Type>| t.map_or(json!({ "type": "null" }), |t| json_schema(&t));
            json!({ "oneOf": [single_key("ok", side(r.ok())), single_key("err", side(r.err()))] })
        }
        Type::Map(m) if map_is_object(&m.key()) => {
            json!({ "type": "object", "additionalProperties": json_schema(&m.value()) })
        }
        Type::Map(m) => {
            let pair = exact_array(vec![json_schema(&m.key()), json_schema(&m.value())]);
            json!({ "type": "array", "items": pair })
        }
        // Refused when a package loads; nothing can be written for them.
        _ => json!({ "not": {}, "description": "not representable in JSON" }),
    }
}

/// The schema of a function's parameters (or a record's fields) as an
/// object by name; an `option` may be left out.
pub fn params_schema(params: &[(String, Type)]) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for (name, ty) in params {
        props.insert(name.clone(), json_schema(ty));
        if !matches!(ty, Type::Option(_)) {
            required.push(json!(name));
        }
    }
    json!({ "type": "object", "properties": props, "required": required, "additionalProperties": false })
}

/// An array of exactly these items, in order.
fn exact_array(items: Vec<Value>) -> Value {
    let n = items.len();
    json!({ "type": "array", "prefixItems": items, "minItems": n, "maxItems": n })
}

fn single_key(key: &str, value: Value) -> Value {
    json!({ "type": "object", "properties": { key: value }, "required": [key], "additionalProperties": false })
}
