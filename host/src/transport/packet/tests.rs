//! Packets read and written as Moleculer peers expect.
use super::*;
use crate::context::CallError;
use serde_json::json;

#[test]
fn every_call_error_round_trips_as_its_moleculer_error() {
    let cases = [
        CallError::NotFound("x".into()),
        CallError::InvalidParams("params.name: expected string".into()),
        CallError::Timeout("slow".into()),
        CallError::Crashed("trap".into()),
        CallError::Overloaded("busy".into()),
        CallError::Denied("no".into()),
        CallError::Failed("own error".into()),
    ];
    for e in cases {
        let wire = error_to_wire(&e, "a.b", "n1");
        let back = error_from_wire(wire, "a.b", "n1");
        assert_eq!(back.kind(), e.kind(), "{e}");
        assert!(back.message().contains(e.message()), "{back}");
    }
    let v = serde_json::to_value(error_to_wire(
        &CallError::InvalidParams("p".into()),
        "a.b",
        "n1",
    ))
    .unwrap();
    assert_eq!(v["name"], "ValidationError");
    assert_eq!(v["code"], 422);
    assert_eq!(v["type"], "VALIDATION_ERROR");
}

#[test]
fn a_moleculer_validation_error_names_its_fields() {
    let wire: WireError = serde_json::from_value(json!({
        "name": "ValidationError",
        "message": "Parameters validation error!",
        "code": 422,
        "type": "VALIDATION_ERROR",
        "data": [
            { "type": "number", "field": "b", "message": "The 'b' field must be a number.", "actual": "x" },
            { "type": "required", "field": "c", "message": "The 'c' field is required." }
        ]
    }))
    .unwrap();
    let e = error_from_wire(wire, "node-math.add", "node-a");
    assert_eq!(
        e,
        CallError::InvalidParams(
            "node-math.add on node `node-a`: ValidationError: Parameters validation error! \
             (The 'b' field must be a number.; The 'c' field is required.)"
                .into()
        )
    );
}

#[test]
fn requests_keep_their_params_as_raw_json() {
    let bytes = br#"{"ver":"4","sender":"n","id":"1","action":"a.b","params":{"x": [1, 2]},"meta":{"k":"v","n":1},"timeout":500,"level":1,"requestID":"r"}"#;
    let req = Wire(Serializer::Json).decode_request(bytes).unwrap();
    match req.params {
        Some(Data::Raw(raw)) => assert_eq!(raw.get(), r#"{"x": [1, 2]}"#),
        other => panic!("{other:?}"),
    }
    // Meta keeps its JSON types: the number stays a number.
    let meta = crate::context::Meta::from_wire(req.meta.as_ref());
    assert_eq!(
        serde_json::Value::Object(meta.map().clone()),
        json!({"k": "v", "n": 1})
    );
    let mp = Wire(Serializer::MessagePack);
    let data = Data::Value(json!({"x": 1}));
    let out = RequestOut {
        ver: "4",
        sender: "n",
        id: "1",
        action: "a.b",
        params: &data,
        meta: crate::context::Meta::EMPTY.map(),
        headers: None,
        timeout: 1.0,
        level: 1,
        tracing: None,
        parent_id: None,
        request_id: "r",
        caller: None,
        stream: false,
    };
    let bytes = mp.encode("REQ", &out).unwrap();
    let back = mp.decode_request(&bytes).unwrap();
    assert_eq!(back.params.unwrap().into_value().unwrap(), json!({"x": 1}));
}

#[test]
fn payloads_cross_between_messagepack_and_json_text() {
    let msgpack = rmp_serde::to_vec_named(&json!({"n": 1, "s": "x", "l": [true, null]})).unwrap();
    let data = Wire(Serializer::Json)
        .data_from_msgpack(&msgpack, Value::Null)
        .unwrap();
    assert!(matches!(data, Data::Json(_)));
    assert_eq!(
        data.to_json().unwrap().as_ref(),
        br#"{"l":[true,null],"n":1,"s":"x"}"#
    );
    let back: Value = rmp_serde::from_slice(&data.to_msgpack().unwrap()).unwrap();
    assert_eq!(back, json!({"n": 1, "s": "x", "l": [true, null]}));
    assert!(Wire(Serializer::Json).data_from_json(b"{not json").is_err());
}

mod fuzz {
    //! The decoders over arbitrary input: whatever comes from the bus,
    //! reading it and using what was read never panics. A short run of
    //! each property is part of `cargo test`.
    use super::*;
    use crate::transport::bounds;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Any JSON value, with the numbers and strings that break code.
    fn hostile_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            Just(json!(1e300)),
            Just(json!(-1e300)),
            Just(json!(-1)),
            ".{0,40}".prop_map(Value::String),
            Just(Value::String(
                "x 0\r\n\r\nUNSUB 1\r\nPUB MOL.PWNED 1".into()
            )),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".{0,12}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A packet-shaped object: the real field names, hostile values.
    fn hostile_packet() -> impl Strategy<Value = Value> {
        const FIELDS: &[&str] = &[
            "ver",
            "sender",
            "id",
            "action",
            "params",
            "meta",
            "timeout",
            "level",
            "requestID",
            "caller",
            "stream",
            "success",
            "data",
            "error",
            "event",
            "groups",
            "broadcast",
            "services",
            "instanceID",
            "seq",
            "hostname",
            "client",
            "time",
            "arrived",
            "name",
            "message",
            "code",
            "type",
            "nodeID",
        ];
        prop::collection::vec((prop::sample::select(FIELDS), hostile_value()), 0..16).prop_map(
            |fields| {
                let mut packet = json!({ "ver": "4", "sender": "peer", "id": "1" });
                for (k, v) in fields {
                    packet[k] = v;
                }
                packet
            },
        )
    }

    /// Reads `bytes` as every packet kind in both serializers and uses
    /// each field the way the transport does.
    fn read_everything(bytes: &[u8]) {
        for wire in [Wire(Serializer::Json), Wire(Serializer::MessagePack)] {
            if let Ok(req) = wire.decode_request(bytes) {
                let _ = bounds::caller_timeout(req.timeout, Duration::from_secs(3600));
                let _ = bounds::valid_node_id(&req.sender);
                let _ = crate::context::Meta::from_wire(req.meta.as_ref());
                if let Some(p) = &req.params {
                    let _ = p.to_json();
                    let _ = p.to_msgpack();
                }
            }
            if let Ok(res) = wire.decode_response(bytes) {
                let _ = uuid::Uuid::try_parse(&res.id);
                if let Some(e) = res.error {
                    let _ = error_from_wire(e, "a.b", "n");
                }
                let _ = res.data.map(Data::into_value);
            }
            if let Ok(event) = wire.decode_event(bytes) {
                let _ = event.data.as_ref().map(Data::to_msgpack);
                let _ = crate::context::Meta::from_wire(event.meta.as_ref());
            }
            if let Ok(info) = wire.decode::<Info>("INFO", bytes) {
                let mut r = crate::transport::registry::Registry::new("MOL");
                let _ = r.apply_info(&info, bytes.len());
                let _ = r.reports();
                let _ = r.event_targets("a.b", true, &[]);
            }
            let _ = wire.decode::<Header>("DISCOVER", bytes);
            let _ = wire.decode::<Heartbeat>("HEARTBEAT", bytes);
            if let Ok(ping) = wire.decode::<Ping>("PONG", bytes) {
                let _ = 0i64.saturating_sub(ping.time);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            read_everything(&bytes);
        }

        #[test]
        fn hostile_json_packets_never_panic(packet in hostile_packet()) {
            read_everything(&serde_json::to_vec(&packet).expect("json"));
        }

        #[test]
        fn hostile_msgpack_packets_never_panic(packet in hostile_packet()) {
            read_everything(&rmp_serde::to_vec_named(&packet).expect("msgpack"));
        }

        #[test]
        fn mangled_packets_never_panic(packet in hostile_packet(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
            let mut bytes = serde_json::to_vec(&packet).expect("json");
            let at = cut.index(bytes.len().max(1)).min(bytes.len().saturating_sub(1));
            if let Some(b) = bytes.get_mut(at) {
                *b ^= flip;
            }
            read_everything(&bytes);
            read_everything(&bytes[..at]);
        }
    }

    #[test]
    fn the_packet_that_stopped_a_node_reads_safely() {
        let bytes =
            br#"{"ver":"4","sender":"x","id":"1","action":"a.b","params":{},"timeout":1e300}"#;
        let req = Wire(Serializer::Json).decode_request(bytes).expect("a REQ");
        assert_eq!(
            bounds::caller_timeout(req.timeout, Duration::from_secs(3600)),
            Duration::from_secs(3600)
        );
    }
}
