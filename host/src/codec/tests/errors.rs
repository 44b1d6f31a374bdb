//! What the codec refuses and how it says so: ranges, wrong types,
//! unknown and missing fields, cases and parameters, broken input,
//! unsupported types, ill-typed values to encode, and WIT text.

use super::values::Item;
use super::*;
use crate::types::{wit_signature, wit_type};

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
