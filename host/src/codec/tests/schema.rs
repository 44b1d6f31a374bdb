//! The codec's JSON against the schemas OpenAPI publishes
//! ([`types::json_schema`](crate::types::json_schema)): every value the
//! codec writes fits its type's schema, and what the schema refuses the
//! codec refuses too, checked by a JSON Schema 2020-12 validator.

use serde_json::Value;

use super::*;
use crate::types::{json_schema, params_schema};

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::new(schema).unwrap_or_else(|e| panic!("{schema}: {e}"))
}

/// Values beyond the canonical ones whose schema is easy to get wrong.
const MORE: &[(&str, &str)] = &[
    ("f32", r#""NaN""#),
    ("f64", r#""Infinity""#),
    ("opt-opt", "null"),
    ("opt-opt", "3"),
    ("map", "{}"),
    ("map-u32", "[]"),
    ("map-u32", r#"[[4294967295,"max"]]"#),
    ("res-ok", r#"{"ok":1}"#),
    ("res-none", r#"{"err":null}"#),
    ("fixed", "[0,0,0,255]"),
];

#[test]
fn every_kind_as_the_codec_writes_it_fits_its_published_schema() {
    for (kind, text) in CANONICAL.iter().chain(MORE) {
        let val = json(kind, text).unwrap_or_else(|e| panic!("{kind} {text}: {e}"));
        let written = to_json_value(ty(kind), &val).unwrap();
        let schema = json_schema(ty(kind));
        if let Err(e) = validator(&schema).validate(&written) {
            panic!("{kind}: the codec wrote {written}, its schema {schema} says: {e}");
        }
    }
}

#[test]
fn parameters_as_the_codec_writes_them_fit_their_published_schema() {
    let (params, result) = func("reserve");
    let args = decode_params(params, Format::Json, br#"{"sku":"A1","qty":2}"#).unwrap();
    let written = encode_params(params, &args, Format::Json).unwrap();
    let written: Value = serde_json::from_slice(&written).unwrap();
    let schema = params_schema(params);
    assert!(
        validator(&schema).is_valid(&written),
        "{written} by {schema}"
    );

    let result = result.as_ref().unwrap();
    let ok = decode_value(result, Format::Json, br#"{"ok":18446744073709551615}"#).unwrap();
    let written = to_json_value(result, &ok).unwrap();
    assert!(
        validator(&json_schema(result)).is_valid(&written),
        "{written}"
    );
}

/// JSON that the schema refuses, for the codec to refuse as well.
const REFUSED: &[(&str, &str)] = &[
    ("u8", "256"),
    ("s8", "-129"),
    ("u64", "-1"),
    ("f64", r#""nan""#),
    ("char", r#""ab""#),
    ("char", r#""""#),
    ("colour", r#""pink""#),
    ("stock", r#""in-stock""#),
    ("stock", r#"{"gone":null}"#),
    ("tuple", "[1]"),
    ("tuple", r#"[1,"x",2]"#),
    ("fixed", "[1,2,3]"),
    ("perms", r#"["read","sudo"]"#),
    ("order", r#"{"id":1,"items":[],"colour":"red"}"#),
    ("order", r#"{"items":[]}"#),
    ("res", r#"{"ok":1,"err":"x"}"#),
    ("map-u32", r#"{"1":"a"}"#),
    ("map-u32", r#"[[1]]"#),
    ("map", r#"{"a":"b"}"#),
    ("list-string", r#""a""#),
];

#[test]
fn what_the_schema_refuses_the_codec_refuses() {
    for (kind, text) in REFUSED {
        let instance: Value = serde_json::from_str(text).unwrap();
        let schema = json_schema(ty(kind));
        assert!(
            !validator(&schema).is_valid(&instance),
            "{kind}: schema {schema} accepts {text}"
        );
        assert!(
            json(kind, text).is_err(),
            "{kind}: the codec accepts {text}"
        );
    }
}

/// The INFO packet's fastest-validator rules say what the codec writes for
/// a map too: an object by string key, else an array of `[key, value]`.
#[test]
fn info_rules_describe_maps_as_the_codec_writes_them() {
    let text = crate::types::rule(&Type::String);
    let pairs = serde_json::json!({
        "type": "array",
        "items": { "type": "tuple", "items": [crate::types::rule(&Type::U32), text] },
    });
    assert_eq!(crate::types::rule(ty("map-u32")), pairs);
    assert_eq!(crate::types::rule(ty("map"))["type"], "record");
    let written = to_json_value(ty("map-u32"), &json("map-u32", r#"[[1,"a"]]"#).unwrap());
    assert!(written.unwrap().is_array());
}
