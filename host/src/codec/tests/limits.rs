//! The codec's limits and edges: nesting depth, length prefixes that lie,
//! the memory budget, `option<option<T>>`, case-sensitive names, integers
//! past 2^53, negative zero, invalid UTF-8.

use super::values::serde_bytes_like;
use super::*;

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
    decode(ValueRoot(ty), None, Format::Json, text.as_bytes(), budget).map_err(|e| e.to_string())
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
