//! Property tests of the decoders over arbitrary input: JSON and
//! MessagePack, by every WIT type of the fixture, as values and as
//! parameters. Nothing panics, nothing decodes past its memory budget, and
//! whatever decodes encodes back to a form that decodes to the same.
//!
//! `cargo test` runs a short round (256 cases each); `PROPTEST_CASES=100000`
//! runs a longer one.

use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Words the fixture's types know, so that arbitrary input often gets past
/// the first check.
const WORDS: &[&str] = &[
    "red",
    "green",
    "ok",
    "err",
    "Ok",
    "sku",
    "qty",
    "id",
    "items",
    "note",
    "in-stock",
    "discontinued",
    "backordered",
    "read",
    "exec",
    "NaN",
    "-Infinity",
    "AQID/w==",
    "AQID",
    "é",
    "",
    "bool",
    "u8",
    "s64",
    "string",
    "bytes",
    "order",
    "stock",
    "colour",
    "perms",
    "map",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

/// JSON-like values: what a caller could send, typed or not.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![any::<f64>(), -300.0..300.0f64]
            .prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
                .map(Value::Number)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// MessagePack made from a JSON-like value, then perhaps damaged: cut
/// short, a byte flipped, or a length prefix that claims up to 4 GiB.
fn msgpack_input() -> impl Strategy<Value = Vec<u8>> {
    (
        json_value(),
        any::<u8>(),
        any::<u32>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(value, damage, claim, at)| {
            let mut bytes = rmp_serde::to_vec(&value).unwrap_or_default();
            if bytes.is_empty() {
                return bytes;
            }
            let i = at.index(bytes.len());
            match damage % 4 {
                0 => {}
                1 => bytes.truncate(i),
                2 => bytes[i] ^= 1 << (damage % 8),
                _ => {
                    // array 32 / map 32 / bin 32 / str 32 with an arbitrary claim.
                    let marker = [0xdd, 0xdf, 0xc6, 0xdb][usize::from(damage / 4 % 4)];
                    let mut lie = vec![marker];
                    lie.extend(claim.to_be_bytes());
                    bytes.splice(i..i, lie);
                }
            }
            bytes
        })
}

/// Host memory a decoded value holds, counted as the budget counts it at
/// the least: a `Val` each, plus the text of strings.
fn held(val: &Val) -> usize {
    let inner = match val {
        Val::String(s) => s.len(),
        Val::List(items) | Val::FixedLengthList(items) | Val::Tuple(items) => {
            items.iter().map(held).sum()
        }
        Val::Record(fields) => fields.iter().map(|(_, v)| held(v)).sum(),
        Val::Map(entries) => entries.iter().map(|(k, v)| held(k) + held(v)).sum(),
        Val::Option(Some(v)) | Val::Result(Ok(Some(v))) | Val::Result(Err(Some(v))) => held(v),
        Val::Variant(_, Some(v)) => held(v),
        _ => 0,
    };
    VAL_COST + inner
}

/// The published schema of every kind, compiled once.
static SCHEMAS: LazyLock<HashMap<&'static str, jsonschema::Validator>> = LazyLock::new(|| {
    kinds()
        .map(|(kind, ty)| {
            let schema = crate::types::json_schema(ty);
            let validator = jsonschema::draft202012::new(&schema).expect("a valid schema");
            (kind.as_str(), validator)
        })
        .collect()
});

fn kinds() -> impl Iterator<Item = (&'static String, &'static Type)> {
    TYPES
        .kinds
        .iter()
        .filter(|(_, ty)| check_supported(ty).is_ok())
}

/// Decodes `bytes` as every kind, in `format`; what decodes must encode,
/// and its encoding must decode to the same encoding again.
fn every_kind(format: Format, bytes: &[u8]) -> Result<(), TestCaseError> {
    for (kind, ty) in kinds() {
        let Ok(val) = decode_value(ty, format, bytes) else {
            continue;
        };
        let encoded = encode_value(ty, &val, format)
            .map_err(|e| TestCaseError::fail(format!("{kind}: {val:?} does not encode: {e}")))?;
        let again = decode_value(ty, format, &encoded)
            .map_err(|e| TestCaseError::fail(format!("{kind}: own encoding refused: {e}")))?;
        let twice = encode_value(ty, &again, format)
            .map_err(|e| TestCaseError::fail(format!("{kind}: {e}")))?;
        prop_assert_eq!(&encoded, &twice, "{} does not round-trip", kind);
        if format == Format::Json {
            let written: Value = serde_json::from_slice(&encoded)
                .map_err(|e| TestCaseError::fail(format!("{kind}: {e}")))?;
            prop_assert!(
                SCHEMAS[kind.as_str()].is_valid(&written),
                "{}: the codec wrote {}, which its published schema refuses",
                kind,
                written
            );
        }
    }
    Ok(())
}

/// Decodes `bytes` as the parameters of every function, within `budget`,
/// bytes kept or not; what decodes holds no more than the budget.
fn every_function(format: Format, bytes: &[u8], budget: usize) -> Result<(), TestCaseError> {
    for (name, (params, _)) in &TYPES.funcs {
        if params.iter().any(|(_, ty)| check_supported(ty).is_err()) {
            continue;
        }
        for keep_bytes in [false, true] {
            let options = DecodeOptions {
                budget,
                bytes: keep_bytes,
            };
            let Ok(args) = decode_args(params, format, bytes, options) else {
                continue;
            };
            prop_assert_eq!(args.len(), params.len());
            let used: usize = args
                .iter()
                .map(|arg| match arg {
                    Arg::Val(val) => held(val),
                    Arg::Bytes(bytes) => bytes.len(),
                })
                .sum();
            prop_assert!(used <= budget, "{name}: {used} bytes held, budget {budget}");
        }
    }
    Ok(())
}

/// Well-typed JSON for a few kinds, of a size that may pass a budget or not.
fn sized_input() -> impl Strategy<Value = (&'static str, String)> {
    let strings = (0usize..200, 0usize..40).prop_map(|(n, m)| {
        (
            "list-string",
            serde_json::to_string(&vec!["x".repeat(m); n]),
        )
    });
    let bytes = prop::collection::vec(any::<u8>(), 0..600)
        .prop_map(|b| ("bytes", serde_json::to_string(&bytes_to_json(&b))));
    let order = (0usize..60, 0usize..20).prop_map(|(n, m)| {
        let items: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"sku": "s".repeat(m), "qty": i}))
            .collect();
        let order = serde_json::json!({"id": 1, "items": items, "note": "n"});
        ("order", serde_json::to_string(&order))
    });
    prop_oneof![strings, bytes, order]
        .prop_filter_map("encodes", |(kind, text)| Some((kind, text.ok()?)))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_value_past_its_budget_is_refused_and_one_within_it_fits(
        (kind, text) in sized_input(),
        budget in 0usize..40_000,
    ) {
        let ty = ty(kind);
        let whole = decode_value(ty, Format::Json, text.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{kind}: {e}")))?;
        let cost = held(&whole);
        match decode(ValueRoot(ty), None, Format::Json, text.as_bytes(), budget) {
            Ok(val) => prop_assert!(held(&val) <= budget, "{kind}: {cost} held, budget {budget}"),
            Err(e) => {
                prop_assert!(e.message.starts_with("too large"), "{kind}: {e}");
                // Names and base64 are counted too, so only a little more may be refused.
                prop_assert!(cost + cost / 2 > budget, "{kind}: {cost} refused by {budget}");
            }
        }
        if cost > budget {
            prop_assert!(
                decode(ValueRoot(ty), None, Format::Json, text.as_bytes(), budget).is_err(),
                "{kind}: {cost} bytes accepted within {budget}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        every_kind(Format::Json, &bytes)?;
        every_kind(Format::MessagePack, &bytes)?;
        every_function(Format::Json, &bytes, DEFAULT_BUDGET)?;
        every_function(Format::MessagePack, &bytes, DEFAULT_BUDGET)?;
    }

    #[test]
    fn json_values_decode_or_are_refused_and_round_trip(value in json_value()) {
        let text = serde_json::to_vec(&value).unwrap_or_default();
        every_kind(Format::Json, &text)?;
    }

    #[test]
    fn damaged_messagepack_decodes_or_is_refused_and_round_trips(bytes in msgpack_input()) {
        every_kind(Format::MessagePack, &bytes)?;
    }

    #[test]
    fn decoded_params_hold_no_more_than_their_budget(
        value in json_value(),
        packed in msgpack_input(),
        budget in 0usize..4096,
    ) {
        let text = serde_json::to_vec(&value).unwrap_or_default();
        every_function(Format::Json, &text, budget)?;
        every_function(Format::MessagePack, &packed, budget)?;
    }
}
