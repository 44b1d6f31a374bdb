//! `probe`: a Swiss-army package for the host's tests. Each action does one
//! thing a package can ask of the host (a dynamic call, the call context,
//! a file, an env var, an event) and reports what came back, so a test can
//! assert on it from outside. JSON text stands in for typed values so that
//! one action can forward any call.

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:probe/probe-package",
});

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use serde::Serialize;
use steedos_sdk::wit::broker;
use steedos_sdk::{CallContext, CallError};

use exports::steedos::package::events::Guest as EventsGuest;
use exports::steedos::package::lifecycle::Guest as LifecycleGuest;
use exports::test::probe::probe::{CallFailure, Guest as ProbeGuest};

/// The env var naming a file `started` requires.
const REQUIRE_FILE: &str = "PROBE_REQUIRE_FILE";

impl From<CallError> for CallFailure {
    fn from(e: CallError) -> CallFailure {
        match e {
            CallError::NotFound(m) => CallFailure::NotFound(m),
            CallError::InvalidParams(m) => CallFailure::InvalidParams(m),
            CallError::Timeout => CallFailure::Timeout,
            CallError::Crashed(m) => CallFailure::Crashed(m),
            CallError::Overloaded(m) => CallFailure::Overloaded(m),
            CallError::Denied(m) => CallFailure::Denied(m),
            CallError::Failed(m) => CallFailure::Failed(m),
        }
    }
}

/// JSON text to MessagePack; empty text stands for `{}`.
fn json_to_msgpack(json: &str) -> Result<Vec<u8>, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let mut from = serde_json::Deserializer::from_str(json);
    let mut bytes = Vec::new();
    serde_transcode::transcode(&mut from, &mut rmp_serde::Serializer::new(&mut bytes))
        .map_err(|e| e.to_string())?;
    from.end().map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// MessagePack to JSON text (`bin` becomes an array of numbers).
fn msgpack_to_json(bytes: &[u8]) -> Result<String, String> {
    let mut from = rmp_serde::Deserializer::from_read_ref(bytes);
    let mut json = Vec::new();
    serde_transcode::transcode(&mut from, &mut serde_json::Serializer::new(&mut json))
        .map_err(|e| e.to_string())?;
    String::from_utf8(json).map_err(|e| e.to_string())
}

fn instance_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    // The first RandomState of an instance is seeded from WASI's random.
    *ID.get_or_init(|| RandomState::new().hash_one("probe"))
}

fn send(event: &str, payload_json: &str, send: fn(&str, &[u8])) {
    match json_to_msgpack(payload_json) {
        Ok(payload) => send(event, &payload),
        Err(e) => steedos_sdk::error!("event `{event}` not sent: payload-json is not JSON: {e}"),
    }
}

struct Probe;

impl ProbeGuest for Probe {
    fn forward(action: String, params_json: String) -> Result<String, CallFailure> {
        let params = json_to_msgpack(&params_json)
            .map_err(|e| CallFailure::InvalidParams(format!("params-json is not JSON: {e}")))?;
        let reply = broker::call(&action, &params)?;
        msgpack_to_json(&reply).map_err(|e| {
            CallFailure::Failed(format!("the reply of `{action}` has no JSON form: {e}"))
        })
    }

    fn context() -> (String, Option<String>, u32, String, String, Option<String>) {
        let ctx = steedos_sdk::context();
        let meta = serde_json::Value::Object(ctx.meta()).to_string();
        let CallContext {
            request_id,
            caller,
            level,
            id,
            parent_id,
            ..
        } = ctx;
        (request_id, caller, level, meta, id, parent_id)
    }

    fn forward_with(
        action: String,
        params_json: String,
        options_json: String,
    ) -> Result<String, CallFailure> {
        let params = json_to_msgpack(&params_json)
            .map_err(|e| CallFailure::InvalidParams(format!("params-json is not JSON: {e}")))?;
        let options: serde_json::Value = serde_json::from_str(&options_json)
            .map_err(|e| CallFailure::InvalidParams(format!("options-json is not JSON: {e}")))?;
        let options = broker::CallOptions {
            meta: match options.get("meta") {
                Some(meta) => Some(steedos_sdk::encode(meta).map_err(CallFailure::InvalidParams)?),
                None => None,
            },
            timeout_ms: options["timeout-ms"].as_u64().map(|ms| ms as u32),
            node_id: options["node-id"].as_str().map(str::to_string),
            retries: options["retries"].as_u64().map(|r| r as u32),
        };
        let reply = broker::call_with(&action, &params, &options)?;
        let reply: serde_json::Value = steedos_sdk::decode(&reply).map_err(|e| {
            CallFailure::Failed(format!("the reply of `{action}` has no JSON form: {e}"))
        })?;
        let ctx = steedos_sdk::context();
        let answer = serde_json::json!({
            "reply": reply,
            "meta": ctx.meta(),
            "id": ctx.id,
            "parent": ctx.parent_id,
        });
        Ok(answer.to_string())
    }

    fn set_meta(meta_json: String) -> Result<String, String> {
        let bytes = json_to_msgpack(&meta_json)?;
        broker::set_meta(&bytes)?;
        Ok(serde_json::Value::Object(steedos_sdk::meta()).to_string())
    }

    fn set_meta_raw(bytes: Vec<u8>) -> Result<(), String> {
        broker::set_meta(&bytes)
    }

    fn read_file(path: String) -> Result<String, String> {
        std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))
    }

    fn write_file(path: String, contents: String) -> Result<(), String> {
        std::fs::write(&path, contents).map_err(|e| format!("{path}: {e}"))
    }

    fn env(name: String) -> Option<String> {
        std::env::var(name).ok()
    }

    fn instance_id() -> u64 {
        instance_id()
    }

    fn emit(event: String, payload_json: String) {
        send(&event, &payload_json, broker::emit);
    }

    fn broadcast(event: String, payload_json: String) {
        send(&event, &payload_json, broker::broadcast);
    }
}

/// The parameters of `tally.record`.
#[derive(Serialize)]
struct Record<'a> {
    event: &'a str,
    instance: u64,
}

impl EventsGuest for Probe {
    fn handle(event: String, _payload: Vec<u8>, _ctx: CallContext) {
        let record = Record {
            event: &event,
            instance: instance_id(),
        };
        let params = match steedos_sdk::encode(&record) {
            Ok(params) => params,
            Err(e) => return steedos_sdk::error!("could not encode tally.record params: {e}"),
        };
        // The raw call: `tally.record` has no result to decode.
        if let Err(e) = broker::call("tally.record", &params) {
            steedos_sdk::warn!("tally.record for `{event}` failed: {e}");
        }
    }
}

impl LifecycleGuest for Probe {
    fn started() -> Result<(), String> {
        if let Some(path) = std::env::var_os(REQUIRE_FILE) {
            let path = path.to_string_lossy();
            if std::fs::read(path.as_ref()).is_err() {
                return Err(format!("required file {path} is missing"));
            }
        }
        Ok(())
    }

    fn stopped() {}
}

export!(Probe);
