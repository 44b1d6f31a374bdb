//! The Moleculer packets on the wire, and how errors cross it.
//!
//! Incoming packets are read into owned structs whose payload fields
//! (`params`, `data`) stay as the JSON text they came in ([`Data::Raw`]),
//! so a request's params reach the codec without being parsed twice.
//! Outgoing packets are borrowed structs written in one pass. With the
//! MessagePack serializer (between steedos-wasm nodes only) the same
//! structs go through rmp-serde and payloads are values ([`Data::Value`]).
//!
//! [`error_to_wire`] and [`error_from_wire`] map a [`CallError`] to the
//! Moleculer error a Node.js caller expects (`ValidationError` 422,
//! `ServiceNotFoundError` 404, `RequestTimeoutError` 504, a crash as
//! `MoleculerServerError` 500 `CRASHED`, ...) and back, through the one
//! table in [`ErrorKind`](crate::context::ErrorKind).
//!
//! Types and their encoding only: it must not send, keep state, or reach
//! the broker.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::context::MetaMap;
use crate::manifest::Serializer;

/// A packet that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// Not a packet of this kind in this serializer.
    #[error("malformed {kind} packet: {message}")]
    Malformed {
        /// DISCOVER, INFO, REQ, ...
        kind: &'static str,
        /// What the deserializer said.
        message: String,
    },
    /// A payload that cannot be written in this serializer.
    #[error("cannot encode a {kind} packet: {message}")]
    Encode {
        /// DISCOVER, INFO, REQ, ...
        kind: &'static str,
        /// What the serializer said.
        message: String,
    },
}

/// A payload (`params`, `data`): JSON text (borrowed from the packet as
/// it arrived, or owned), or a value.
#[derive(Debug)]
pub enum Data<'a> {
    /// JSON text inside a packet being read, never parsed (JSON serializer).
    Raw(&'a RawValue),
    /// JSON text of our own (JSON serializer).
    Json(Box<RawValue>),
    /// A value (either serializer).
    Value(Value),
}

impl Serialize for Data<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Raw(raw) => raw.serialize(s),
            Data::Json(raw) => raw.serialize(s),
            Data::Value(v) => v.serialize(s),
        }
    }
}

impl Data<'_> {
    fn text(&self) -> Option<&str> {
        match self {
            Data::Raw(raw) => Some(raw.get()),
            Data::Json(raw) => Some(raw.get()),
            Data::Value(_) => None,
        }
    }

    /// The payload as a value.
    pub fn into_value(self) -> Result<Value, serde_json::Error> {
        match self {
            Data::Value(v) => Ok(v),
            other => serde_json::from_str(other.text().unwrap_or("null")),
        }
    }

    /// The payload as JSON text.
    pub fn to_json(&self) -> Result<std::borrow::Cow<'_, [u8]>, serde_json::Error> {
        match (self, self.text()) {
            (_, Some(text)) => Ok(text.as_bytes().into()),
            (Data::Value(v), None) => serde_json::to_vec(v).map(Into::into),
            _ => Ok(b"null".as_slice().into()),
        }
    }

    /// The payload as MessagePack, for a package.
    pub fn to_msgpack(&self) -> Result<Vec<u8>, String> {
        match (self, self.text()) {
            (_, Some(text)) => json_to_msgpack(text),
            (Data::Value(v), None) => rmp_serde::to_vec_named(v).map_err(|e| e.to_string()),
            _ => Ok(vec![0xc0]),
        }
    }
}

/// JSON text to MessagePack, without building a value in between.
fn json_to_msgpack(text: &str) -> Result<Vec<u8>, String> {
    let mut from = serde_json::Deserializer::from_str(text);
    let mut out = Vec::with_capacity(text.len());
    serde_transcode::transcode(&mut from, &mut rmp_serde::Serializer::new(&mut out))
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// MessagePack to JSON text, without building a value in between.
fn msgpack_to_json(bytes: &[u8]) -> Result<Box<RawValue>, String> {
    let mut from = rmp_serde::Deserializer::from_read_ref(bytes);
    // Written by serde_json itself, so not parsed again to be checked.
    serde_json::value::to_raw_value(&serde_transcode::Transcoder::new(&mut from))
        .map_err(|e| e.to_string())
}

/// How packets are written and read: Moleculer's JSON, or MessagePack.
#[derive(Clone, Copy, Debug)]
pub struct Wire(pub Serializer);

/// Reads one packet kind, keeping its payload as [`Data`] borrowed from the bytes.
macro_rules! decoder {
    ($(#[$doc:meta])* $fn:ident, $packet:ident, $kind:literal) => {
        $(#[$doc])*
        pub fn $fn<'a>(self, bytes: &'a [u8]) -> Result<$packet<'a, Data<'a>>, PacketError> {
            match self.0 {
                Serializer::Json => self
                    .decode_borrowed::<$packet<'a, &'a RawValue>>($kind, bytes)
                    .map(|p| p.map_data(Data::Raw)),
                Serializer::MessagePack => self
                    .decode_borrowed::<$packet<'a, Value>>($kind, bytes)
                    .map(|p| p.map_data(Data::Value)),
            }
        }
    };
}

impl Wire {
    /// Writes a packet.
    pub fn encode<T: Serialize>(
        self,
        kind: &'static str,
        packet: &T,
    ) -> Result<Vec<u8>, PacketError> {
        let encoded = match self.0 {
            Serializer::Json => serde_json::to_vec(packet).map_err(|e| e.to_string()),
            Serializer::MessagePack => rmp_serde::to_vec_named(packet).map_err(|e| e.to_string()),
        };
        encoded.map_err(|message| PacketError::Encode { kind, message })
    }

    /// Reads a packet without payload fields.
    pub fn decode<T: DeserializeOwned>(
        self,
        kind: &'static str,
        bytes: &[u8],
    ) -> Result<T, PacketError> {
        self.decode_borrowed(kind, bytes)
    }

    fn decode_borrowed<'a, T: Deserialize<'a>>(
        self,
        kind: &'static str,
        bytes: &'a [u8],
    ) -> Result<T, PacketError> {
        let decoded = match self.0 {
            Serializer::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Serializer::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        };
        decoded.map_err(|message| PacketError::Malformed { kind, message })
    }

    decoder!(
        /// Reads a REQ.
        decode_request,
        Request,
        "REQ"
    );
    decoder!(
        /// Reads a RES.
        decode_response,
        Response,
        "RES"
    );
    decoder!(
        /// Reads an EVENT.
        decode_event,
        Event,
        "EVENT"
    );

    /// A payload given as JSON text (`b""` for none), in the form this wire writes.
    pub fn data_from_json(self, json: &[u8]) -> Result<Data<'static>, String> {
        let json = if json.iter().all(u8::is_ascii_whitespace) {
            b"{}".as_slice()
        } else {
            json
        };
        match self.0 {
            Serializer::Json => {
                let text = std::str::from_utf8(json).map_err(|e| e.to_string())?;
                RawValue::from_string(text.to_owned())
                    .map(Data::Json)
                    .map_err(|e| e.to_string())
            }
            Serializer::MessagePack => serde_json::from_slice(json)
                .map(Data::Value)
                .map_err(|e| e.to_string()),
        }
    }

    /// A payload given as MessagePack (`b""` for `empty`).
    pub fn data_from_msgpack(self, bytes: &[u8], empty: Value) -> Result<Data<'static>, String> {
        match (self.0, bytes.is_empty()) {
            (_, true) => Ok(Data::Value(empty)),
            (Serializer::Json, false) => msgpack_to_json(bytes).map(Data::Json),
            (Serializer::MessagePack, false) => rmp_serde::from_slice::<Value>(bytes)
                .map(Data::Value)
                .map_err(|e| e.to_string()),
        }
    }
}

/// The packets this node listens for, by subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// DISCOVER
    Discover,
    /// INFO
    Info,
    /// HEARTBEAT
    Heartbeat,
    /// REQ
    Request,
    /// RES
    Response,
    /// EVENT
    Event,
    /// PING
    Ping,
    /// PONG
    Pong,
    /// DISCONNECT
    Disconnect,
}

impl Kind {
    /// Its name on the wire (`REQ`, `INFO`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Discover => "DISCOVER",
            Kind::Info => "INFO",
            Kind::Heartbeat => "HEARTBEAT",
            Kind::Request => "REQ",
            Kind::Response => "RES",
            Kind::Event => "EVENT",
            Kind::Ping => "PING",
            Kind::Pong => "PONG",
            Kind::Disconnect => "DISCONNECT",
        }
    }
}

// ------------------------------------------------------------ incoming

/// Fields every packet has.
#[derive(Debug, Deserialize)]
pub struct Header {
    /// Protocol version.
    pub ver: String,
    /// Sender node id.
    pub sender: String,
}

/// INFO: a node and its services.
#[derive(Debug, Deserialize)]
pub struct Info {
    /// Protocol version.
    pub ver: String,
    /// Sender node id.
    pub sender: String,
    /// Its services.
    #[serde(default)]
    pub services: Vec<ServiceInfo>,
    /// Changes every time the node process starts.
    #[serde(rename = "instanceID", default)]
    pub instance_id: Option<String>,
    /// Grows when the services change.
    #[serde(default)]
    pub seq: Option<u64>,
    /// The node's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `{ type, version, langVersion }`.
    #[serde(default)]
    pub client: Option<Value>,
}

/// A service in an INFO packet.
#[derive(Debug, Deserialize)]
pub struct ServiceInfo {
    /// The service name.
    pub name: String,
    /// `v2.<name>` for a versioned service (what `dependencies` name).
    #[serde(default, rename = "fullName")]
    pub full_name: Option<String>,
    /// Its actions by full name.
    #[serde(default)]
    pub actions: Option<Map<String, Value>>,
    /// Its event listeners by event name.
    #[serde(default)]
    pub events: Option<Map<String, Value>>,
}

/// What a REQ must hold to be answered: read when the rest of it cannot be.
#[derive(Debug, Deserialize)]
pub struct RequestHead {
    /// Protocol version.
    pub ver: String,
    /// Sender node id.
    pub sender: String,
    /// The context id, echoed in the RES.
    pub id: String,
    /// The action's full name, when it is one.
    #[serde(default)]
    pub action: Option<Value>,
}

/// HEARTBEAT.
#[derive(Debug, Deserialize)]
pub struct Heartbeat {
    /// Protocol version.
    pub ver: String,
    /// Sender node id.
    pub sender: String,
}

/// REQ: a call.
#[derive(Debug, Deserialize)]
pub struct Request<'a, D> {
    /// Protocol version.
    #[serde(borrow)]
    pub ver: Cow<'a, str>,
    /// Sender node id.
    #[serde(borrow)]
    pub sender: Cow<'a, str>,
    /// The context id, echoed in the RES.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The action's full name.
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    /// The params object.
    pub params: Option<D>,
    /// `ctx.meta`.
    #[serde(default)]
    pub meta: Option<Value>,
    /// Milliseconds the caller waits; 0 or absent: no limit from the caller.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Nesting level.
    #[serde(default)]
    pub level: Option<u32>,
    /// `ctx.requestID`.
    #[serde(borrow, rename = "requestID", default)]
    pub request_id: Option<Cow<'a, str>>,
    /// The caller's action or service name.
    #[serde(borrow, default)]
    pub caller: Option<Cow<'a, str>>,
    /// The caller's context id.
    #[serde(borrow, rename = "parentID", default)]
    pub parent_id: Option<Cow<'a, str>>,
    /// Moleculer's tracing flag (any other value reads as none).
    #[serde(default)]
    pub tracing: Option<Value>,
    /// A stream chunk (refused: streams are not supported).
    #[serde(default)]
    pub stream: Option<bool>,
}

impl<'a, D> Request<'a, D> {
    fn map_data<E>(self, f: impl FnOnce(D) -> E) -> Request<'a, E> {
        Request {
            ver: self.ver,
            sender: self.sender,
            id: self.id,
            action: self.action,
            params: self.params.map(f),
            meta: self.meta,
            timeout: self.timeout,
            level: self.level,
            request_id: self.request_id,
            caller: self.caller,
            parent_id: self.parent_id,
            tracing: self.tracing,
            stream: self.stream,
        }
    }
}

/// RES: the answer to a REQ.
#[derive(Debug, Deserialize)]
pub struct Response<'a, D> {
    /// Protocol version.
    #[serde(borrow)]
    pub ver: Cow<'a, str>,
    /// Sender node id.
    #[serde(borrow)]
    pub sender: Cow<'a, str>,
    /// The REQ's id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Whether `data` holds the result.
    #[serde(default)]
    pub success: bool,
    /// The result.
    pub data: Option<D>,
    /// The error, when not `success`.
    #[serde(default)]
    pub error: Option<WireError>,
    /// The callee's `ctx.meta`, merged into the caller's.
    #[serde(default)]
    pub meta: Option<Value>,
}

impl<'a, D> Response<'a, D> {
    fn map_data<E>(self, f: impl FnOnce(D) -> E) -> Response<'a, E> {
        Response {
            ver: self.ver,
            sender: self.sender,
            id: self.id,
            success: self.success,
            data: self.data.map(f),
            error: self.error,
            meta: self.meta,
        }
    }
}

/// EVENT.
#[derive(Debug, Deserialize)]
pub struct Event<'a, D> {
    /// Protocol version.
    #[serde(borrow)]
    pub ver: Cow<'a, str>,
    /// Sender node id.
    #[serde(borrow)]
    pub sender: Cow<'a, str>,
    /// The event name.
    #[serde(borrow)]
    pub event: Cow<'a, str>,
    /// The payload.
    pub data: Option<D>,
    /// For `emit`: the groups (services) this node is to serve.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// `broadcast` rather than `emit`.
    #[serde(default)]
    pub broadcast: bool,
    /// `ctx.meta`.
    #[serde(default)]
    pub meta: Option<Value>,
    /// `ctx.requestID`.
    #[serde(borrow, rename = "requestID", default)]
    pub request_id: Option<Cow<'a, str>>,
    /// The context id.
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// The emitter's context id.
    #[serde(borrow, rename = "parentID", default)]
    pub parent_id: Option<Cow<'a, str>>,
    /// Nesting level.
    #[serde(default)]
    pub level: Option<u32>,
    /// The emitting action or service.
    #[serde(borrow, default)]
    pub caller: Option<Cow<'a, str>>,
    /// Moleculer's tracing flag.
    #[serde(default)]
    pub tracing: Option<Value>,
}

impl<'a, D> Event<'a, D> {
    fn map_data<E>(self, f: impl FnOnce(D) -> E) -> Event<'a, E> {
        Event {
            ver: self.ver,
            sender: self.sender,
            event: self.event,
            data: self.data.map(f),
            groups: self.groups,
            broadcast: self.broadcast,
            meta: self.meta,
            request_id: self.request_id,
            id: self.id,
            parent_id: self.parent_id,
            level: self.level,
            caller: self.caller,
            tracing: self.tracing,
        }
    }
}

/// PING and PONG.
#[derive(Debug, Deserialize, Serialize)]
pub struct Ping {
    /// Protocol version.
    pub ver: String,
    /// Sender node id.
    pub sender: String,
    /// Matches a PONG to its PING.
    pub id: String,
    /// Milliseconds since the epoch when the PING left.
    pub time: i64,
    /// PONG only: when the PING arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived: Option<i64>,
}

// ------------------------------------------------------------ outgoing

/// DISCOVER, DISCONNECT and the like: only the header.
#[derive(Serialize)]
pub struct HeaderOut<'a> {
    /// Protocol version.
    pub ver: &'a str,
    /// This node.
    pub sender: &'a str,
}

/// INFO: this node and the services it announces.
#[derive(Serialize)]
pub struct InfoOut<'a> {
    /// Protocol version.
    pub ver: &'a str,
    /// This node.
    pub sender: &'a str,
    /// Its services (see `schema::services`).
    pub services: &'a Value,
    /// Its addresses.
    #[serde(rename = "ipList")]
    pub ip_list: [&'a str; 1],
    /// Its host name.
    pub hostname: &'a str,
    /// What software it runs.
    pub client: ClientOut,
    /// Its settings (none shared).
    pub config: &'a Value,
    /// Changes every time the node process starts.
    #[serde(rename = "instanceID")]
    pub instance_id: &'a str,
    /// Its metadata (none).
    pub metadata: &'a Value,
    /// Grows when the services change.
    pub seq: u64,
}

/// INFO's `client`: which implementation a node runs.
#[derive(Serialize)]
pub struct ClientOut {
    /// `rust`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The host's version.
    pub version: &'static str,
    /// `steedos-wasm`.
    #[serde(rename = "langVersion")]
    pub lang_version: &'static str,
}

impl ClientOut {
    /// This host.
    pub const THIS: ClientOut = ClientOut {
        kind: "rust",
        version: env!("CARGO_PKG_VERSION"),
        lang_version: "steedos-wasm",
    };
}

/// HEARTBEAT.
#[derive(Serialize)]
pub struct HeartbeatOut<'a> {
    /// Protocol version.
    pub ver: &'a str,
    /// This node.
    pub sender: &'a str,
    /// CPU use, percent.
    pub cpu: f64,
}

/// REQ.
#[derive(Serialize)]
pub struct RequestOut<'a> {
    /// Protocol version.
    pub ver: &'a str,
    /// This node.
    pub sender: &'a str,
    /// Matches the RES.
    pub id: &'a str,
    /// The action's full name.
    pub action: &'a str,
    /// The params object.
    pub params: &'a Data<'a>,
    /// `ctx.meta`.
    pub meta: &'a MetaMap,
    /// Protocol 5: headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<&'a Value>,
    /// Milliseconds left.
    pub timeout: f64,
    /// Nesting level.
    pub level: u32,
    /// Moleculer's tracing flag, as the call got it.
    pub tracing: Option<bool>,
    /// The caller's context id.
    #[serde(rename = "parentID")]
    pub parent_id: Option<&'a str>,
    /// The request id of the whole request.
    #[serde(rename = "requestID")]
    pub request_id: &'a str,
    /// The calling package.
    pub caller: Option<&'a str>,
    /// Not a stream.
    pub stream: bool,
}

/// RES.
#[derive(Serialize)]
pub struct ResponseOut<'a> {
    /// Protocol version.
    pub ver: &'a str,
    /// This node.
    pub sender: &'a str,
    /// The REQ's id.
    pub id: &'a str,
    /// Whether `data` is the result.
    pub success: bool,
    /// The result.
    pub data: Option<&'a Data<'a>>,
    /// The error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a WireError>,
    /// The callee's `ctx.meta`, as it was when the call ended.
    pub meta: &'a MetaMap,
    /// Protocol 5: headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<&'a Value>,
    /// Not a stream.
    pub stream: bool,
}

/// EVENT.
#[derive(Serialize)]
pub struct EventOut<'a> {
    /// Protocol version.
    pub ver: &'a str,
    /// This node.
    pub sender: &'a str,
    /// The context id.
    pub id: &'a str,
    /// The event name.
    pub event: &'a str,
    /// The payload.
    pub data: &'a Data<'a>,
    /// For `emit`: the groups the receiver serves.
    pub groups: Option<&'a [String]>,
    /// `broadcast` rather than `emit`.
    pub broadcast: bool,
    /// `ctx.meta`.
    pub meta: &'a MetaMap,
    /// Protocol 5: headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<&'a Value>,
    /// Nesting level.
    pub level: u32,
    /// Moleculer's tracing flag, as the emitter's call got it.
    pub tracing: Option<bool>,
    /// The emitter's context id.
    #[serde(rename = "parentID")]
    pub parent_id: Option<&'a str>,
    /// The request id.
    #[serde(rename = "requestID")]
    pub request_id: &'a str,
    /// The emitting package.
    pub caller: Option<&'a str>,
    /// No acknowledgement is asked for.
    #[serde(rename = "needAck")]
    pub need_ack: Option<bool>,
    /// Not a stream.
    pub stream: bool,
}

// ------------------------------------------------------------ context

/// The tracing flag a packet carries: a boolean, or none.
pub fn tracing(value: Option<&Value>) -> Option<bool> {
    value.and_then(Value::as_bool)
}

/// Protocol 5 carries headers; 4 does not.
pub fn headers(ver: &str) -> Option<&'static Value> {
    static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    (ver != "4").then(|| EMPTY.get_or_init(|| Value::Object(Map::new())))
}

/// An empty `{}`.
pub fn empty_object() -> &'static Value {
    static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Value::Object(Map::new()))
}

mod wire_error;

pub use wire_error::{WireError, error_from_wire, error_to_wire};

#[cfg(test)]
mod tests;
