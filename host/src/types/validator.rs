//! WIT types in fastest-validator's words, the parameter rules of the
//! actions in a Moleculer INFO packet (what Moleculer nodes and tools such
//! as moleculer-web expect): `string` is `{ type: "string" }`, a `u8` is
//! `{ type: "number", integer: true, min: 0, max: 255 }`, a record is an
//! `object` with `props`, an `option` is `optional`. And the way back: the
//! JSON Schema of a rule another node announced. It describes; the choices
//! of the encoding are the front's ([`map_is_object`], [`is_bytes`]).

use serde_json::{Map, Value, json};
use wasmtime::component::Type;

use super::{integer_range, is_bytes, map_is_object};

/// The type a fastest-validator rule names (`"number|optional"`,
/// `{ type: "number" }`), `"any"` when it names none, and whether the
/// parameter is optional. A list of rules (any of them) is `"multi"`.
pub fn rule_type(rule: &Value) -> (&str, bool) {
    match rule {
        Value::String(s) => {
            let mut parts = s.split('|').map(str::trim);
            let ty = parts.next().filter(|t| !t.is_empty()).unwrap_or("any");
            (ty, parts.any(|p| p == "optional" || p == "optional:true"))
        }
        Value::Object(o) => (
            o.get("type").and_then(Value::as_str).unwrap_or("any"),
            o.get("optional").and_then(Value::as_bool).unwrap_or(false),
        ),
        Value::Array(_) => ("multi", false),
        _ => ("any", false),
    }
}

/// The JSON Schema of a fastest-validator rule, as far as it says.
pub fn rule_schema(rule: &Value) -> Value {
    if let Value::Array(rules) = rule {
        return json!({ "anyOf": rules.iter().map(rule_schema).collect::<Vec<_>>() });
    }
    let integer = rule.get("integer").and_then(Value::as_bool) == Some(true);
    match rule_type(rule).0 {
        "number" if integer => json!({ "type": "integer" }),
        "number" => json!({ "type": "number" }),
        "boolean" => json!({ "type": "boolean" }),
        "string" | "date" | "mac" | "luhn" | "currency" => json!({ "type": "string" }),
        "email" => json!({ "type": "string", "format": "email" }),
        "url" => json!({ "type": "string", "format": "uri" }),
        "uuid" => json!({ "type": "string", "format": "uuid" }),
        "object" => json!({ "type": "object" }),
        "array" => json!({ "type": "array" }),
        "enum" => match rule.get("values") {
            Some(Value::Array(values)) => json!({ "enum": values }),
            _ => json!({}),
        },
        _ => json!({}),
    }
}

/// The fastest-validator rule of a WIT type.
pub fn rule(ty: &Type) -> Value {
    // 64-bit integers are below: their bounds pass 2^53.
    if let Some((min, max)) = integer_range(ty).filter(|_| !matches!(ty, Type::S64 | Type::U64)) {
        return json!({ "type": "number", "integer": true, "min": min, "max": max });
    }
    match ty {
        Type::Bool => json!({ "type": "boolean" }),
        // Past 2^53 a JavaScript number is not exact: no bounds beyond the sign.
        Type::S64 => json!({ "type": "number", "integer": true }),
        Type::U64 => json!({ "type": "number", "integer": true, "min": 0 }),
        Type::Float32 | Type::Float64 => json!({ "type": "number" }),
        Type::Char => json!({ "type": "string", "length": 1 }),
        Type::String => json!({ "type": "string" }),
        Type::List(l) if is_bytes(l) => json!({ "type": "string", "base64": true }),
        Type::List(l) => json!({ "type": "array", "items": rule(&l.ty()) }),
        Type::FixedLengthList(l) => {
            json!({ "type": "array", "items": rule(&l.ty()), "length": l.len() })
        }
        Type::Record(r) => {
            let props: Map<String, Value> = r
                .fields()
                .map(|f| (f.name.to_string(), rule(&f.ty)))
                .collect();
            json!({ "type": "object", "props": props, "strict": "remove" })
        }
        Type::Tuple(t) => {
            json!({ "type": "tuple", "items": t.types().map(|t| rule(&t)).collect::<Vec<_>>() })
        }
        Type::Enum(e) => json!({ "type": "enum", "values": e.names().collect::<Vec<_>>() }),
        Type::Variant(v) => {
            let mut rules = Vec::new();
            let units: Vec<&str> = v
                .cases()
                .filter(|c| c.ty.is_none())
                .map(|c| c.name)
                .collect();
            if !units.is_empty() {
                rules.push(json!({ "type": "enum", "values": units }));
            }
            for case in v.cases() {
                if let Some(t) = &case.ty {
                    rules.push(json!({ "type": "object", "props": { case.name: rule(t) }, "strict": true }));
                }
            }
            json!({ "type": "multi", "rules": rules })
        }
        Type::Option(o) => {
            let mut inner = rule(&o.ty());
            if let Value::Object(m) = &mut inner {
                m.insert("optional".into(), json!(true));
                m.insert("nullable".into(), json!(true));
            }
            inner
        }
        Type::Flags(f) => {
            json!({ "type": "array", "items": { "type": "enum", "values": f.names().collect::<Vec<_>>() } })
        }
        Type::Map(m) if map_is_object(&m.key()) => {
            json!({ "type": "record", "key": rule(&m.key()), "value": rule(&m.value()) })
        }
        Type::Map(m) => {
            let pair = json!({ "type": "tuple", "items": [rule(&m.key()), rule(&m.value())] });
            json!({ "type": "array", "items": pair })
        }
        _ => json!({ "type": "any" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastest_validator_rules_become_json_schemas() {
        assert_eq!(rule_schema(&json!("number")), json!({ "type": "number" }));
        assert_eq!(
            rule_schema(&json!({ "type": "number", "integer": true })),
            json!({ "type": "integer" })
        );
        assert_eq!(
            rule_schema(&json!("email|optional")),
            json!({ "type": "string", "format": "email" })
        );
        assert_eq!(
            rule_schema(&json!({ "type": "enum", "values": ["a", "b"] })),
            json!({ "enum": ["a", "b"] })
        );
        assert_eq!(
            rule_schema(&json!(["string", "boolean"])),
            json!({ "anyOf": [{ "type": "string" }, { "type": "boolean" }] })
        );
        assert_eq!(rule_schema(&json!({ "type": "custom" })), json!({}));
        assert_eq!(rule_type(&json!("number|optional")), ("number", true));
        assert_eq!(
            rule_type(&json!({ "type": "string", "optional": true })),
            ("string", true)
        );
        assert_eq!(rule_type(&json!("string|min:3")), ("string", false));
        assert_eq!(rule_type(&json!(null)), ("any", false));
    }

    #[test]
    fn rules_of_simple_types() {
        assert_eq!(rule(&Type::String), json!({ "type": "string" }));
        assert_eq!(
            rule(&Type::U8),
            json!({ "type": "number", "integer": true, "min": 0, "max": 255 })
        );
        assert_eq!(rule(&Type::Bool), json!({ "type": "boolean" }));
    }
}
