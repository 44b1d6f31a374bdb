//! Values of every kind through JSON and MessagePack: canonical forms,
//! hand-written and lenient input, Rust types through rmp-serde, parameters
//! by name and by position, and the seeds with any serde format.

use super::*;

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
pub(super) fn serde_bytes_like(bytes: &[u8]) -> impl Serialize + '_ {
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
pub(super) struct Item {
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
