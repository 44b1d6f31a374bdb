//! Sending OTLP requests (spans, metrics, log records) to a collector:
//! protobuf bodies over HTTP (the hyper client of `opentelemetry-http`) or
//! gRPC over tonic (the generated clients of `opentelemetry-proto` for
//! metrics and logs; spans come already encoded, see `otlp_span`). Every
//! signal is read from the host's own records (ended spans, counters, log
//! events) and turned straight into OTLP messages, with no SDK objects in
//! between: the OpenTelemetry SDK's exporters take only what its own
//! tracers, instruments and loggers make, and going through them cost a
//! copy of every span (measured in `just bench`'s telemetry part).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_http::HttpClient as _;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::config::OtlpConfig;
use crate::manifest::OtlpProtocol;

/// A string attribute.
pub(super) fn attribute(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    key_value(key, any_value::Value::StringValue(value.into()))
}

/// An attribute of any value.
pub(super) fn key_value(key: impl Into<String>, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// This host's resource: its `service.name`.
pub(super) fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![attribute("service.name", service_name)],
        ..Resource::default()
    }
}

/// This host as the instrumentation scope.
pub(super) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "steedos-wasm".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    }
}

/// Nanoseconds since the epoch.
pub(super) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One collector endpoint for one signal.
pub(super) enum Wire {
    Http {
        client: Box<opentelemetry_http::hyper::HyperClient>,
        endpoint: String,
    },
    Grpc {
        channel: tonic::transport::Channel,
        timeout: Duration,
    },
}

impl Wire {
    /// A wire to `otlp`'s endpoint (a gRPC channel connects when first used).
    pub(super) fn new(otlp: &OtlpConfig) -> Result<Wire, String> {
        match otlp.protocol {
            OtlpProtocol::HttpProtobuf => Ok(Wire::Http {
                client: Box::new(
                    opentelemetry_http::hyper::HyperClient::with_default_connector(
                        otlp.timeout,
                        None,
                    ),
                ),
                endpoint: otlp.endpoint.clone(),
            }),
            OtlpProtocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(otlp.endpoint.clone())
                    .map_err(|e| e.to_string())?
                    .timeout(otlp.timeout)
                    .connect_timeout(otlp.timeout);
                Ok(Wire::Grpc {
                    channel: endpoint.connect_lazy(),
                    timeout: otlp.timeout,
                })
            }
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let Wire::Http { client, endpoint } = self else {
            return Err("not HTTP".into());
        };
        let request = http::Request::post(endpoint.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Bytes::from(body))
            .map_err(|e| e.to_string())?;
        let response = client
            .send_bytes(request)
            .await
            .map_err(|e| e.to_string())?;
        match response.status().is_success() {
            true => Ok(()),
            false => Err(format!("the collector answered {}", response.status())),
        }
    }

    /// Exports spans: `request` is an `ExportTraceServiceRequest`'s bytes
    /// (see `otlp_span`), sent as they are.
    pub(super) async fn traces(&self, request: Vec<u8>) -> Result<(), String> {
        match self {
            Wire::Http { .. } => self.post(request).await,
            Wire::Grpc { channel, timeout } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                let call = async move {
                    grpc.ready()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    let path = http::uri::PathAndQuery::from_static(TRACE_EXPORT);
                    let request = tonic::Request::new(Bytes::from(request));
                    grpc.unary(request, path, Encoded).await
                };
                within(*timeout, call).await
            }
        }
    }

    /// Exports metrics.
    pub(super) async fn metrics(&self, request: ExportMetricsServiceRequest) -> Result<(), String> {
        match self {
            Wire::Http { .. } => self.post(request.encode_to_vec()).await,
            Wire::Grpc { channel, timeout } => {
                let mut client = MetricsServiceClient::new(channel.clone());
                within(*timeout, client.export(request)).await
            }
        }
    }

    /// Exports log records.
    pub(super) async fn logs(&self, request: ExportLogsServiceRequest) -> Result<(), String> {
        match self {
            Wire::Http { .. } => self.post(request.encode_to_vec()).await,
            Wire::Grpc { channel, timeout } => {
                let mut client = LogsServiceClient::new(channel.clone());
                within(*timeout, client.export(request)).await
            }
        }
    }
}

/// The gRPC method spans are exported by (OTLP's `TraceService.Export`).
const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A gRPC codec for messages already encoded: the request's bytes go out
/// as they are, and the answer's bytes are read whole (an
/// `ExportTraceServiceResponse`, which says nothing an export acts on).
#[derive(Clone, Copy, Default)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

/// A gRPC export's outcome, given `timeout` to answer.
async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
