//! How an OTLP export request reaches the collector: protobuf in an HTTP
//! POST (`http/protobuf`), or one unary gRPC call over HTTP/2 without TLS
//! (`grpc`). Both ride the host's hyper client; gRPC is written by hand (a
//! 5-byte frame header and the `grpc-status` trailer) so the host does not
//! build tonic for one call. Also here: the resource and scope every export
//! request names ([`resource`], [`scope`]), shared by traces and metrics.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::config::OtlpProtocol;

/// The instrumentation scope's name in every export.
pub const SCOPE: &str = "atoll";

/// A string attribute.
pub fn text_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

/// The resource every export names: `service.name` and `service.version`.
pub fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![
            text_attribute("service.name", service_name),
            text_attribute("service.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Resource::default()
    }
}

/// The instrumentation scope of everything the host exports.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..InstrumentationScope::default()
    }
}

/// How long one export may take before it counts as failed.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read from a collector.
const MAX_RESPONSE: usize = 1 << 20;

/// What is exported: it picks the gRPC service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `ExportTraceServiceRequest`.
    Traces,
    /// `ExportMetricsServiceRequest`.
    Metrics,
}

impl Signal {
    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
}

/// Sends encoded export requests of one signal to one collector.
pub struct Transport {
    /// Where requests go: the URL as configured for http/protobuf, the
    /// collector's address plus the service path for gRPC.
    url: http::Uri,
    protocol: OtlpProtocol,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transport({} {})", self.protocol.name(), self.url)
    }
}

impl Transport {
    /// A transport to `url`: for http/protobuf the full URL requests are
    /// posted to (`.../v1/traces`), for gRPC the collector's address (a
    /// path there is kept as a prefix of the service path).
    pub fn new(url: &http::Uri, protocol: OtlpProtocol, signal: Signal) -> anyhow::Result<Self> {
        let url = match protocol {
            OtlpProtocol::HttpProtobuf => url.clone(),
            OtlpProtocol::Grpc => {
                let mut parts = url.clone().into_parts();
                let base = parts
                    .path_and_query
                    .as_ref()
                    .map_or("", |p| p.path())
                    .trim_end_matches('/')
                    .to_string();
                parts.path_and_query = Some(format!("{base}{}", signal.grpc_path()).parse()?);
                http::Uri::from_parts(parts)?
            }
        };
        let mut client = Client::builder(TokioExecutor::new());
        if protocol == OtlpProtocol::Grpc {
            client.http2_only(true);
        }
        Ok(Transport {
            url,
            protocol,
            client: client.build_http(),
        })
    }

    /// Where requests go.
    pub fn url(&self) -> &http::Uri {
        &self.url
    }

    /// Sends one export request (`message`, a protobuf `Export*ServiceRequest`)
    /// and waits at most [`EXPORT_TIMEOUT`] for the collector's answer. Must
    /// run on a tokio runtime. The error says what went wrong, for a log line.
    pub async fn send(&self, message: &impl prost::Message) -> Result<(), String> {
        self.send_encoded(message.encode_to_vec()).await
    }

    /// [`Transport::send`] for a message already encoded as protobuf.
    pub async fn send_encoded(&self, message: Vec<u8>) -> Result<(), String> {
        let (body, content_type) = match self.protocol {
            OtlpProtocol::HttpProtobuf => (message, "application/x-protobuf"),
            OtlpProtocol::Grpc => {
                // A gRPC message: uncompressed flag, 4-byte big-endian length,
                // protobuf.
                let mut body = Vec::with_capacity(5 + message.len());
                body.push(0);
                body.extend_from_slice(&(message.len() as u32).to_be_bytes());
                body.extend_from_slice(&message);
                (body, "application/grpc")
            }
        };
        let mut req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, content_type)
            .header(
                http::header::USER_AGENT,
                concat!("atoll/", env!("CARGO_PKG_VERSION")),
            );
        if self.protocol == OtlpProtocol::Grpc {
            req = req.header(http::header::TE, "trailers");
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(EXPORT_TIMEOUT, self.exchange(req))
            .await
            .map_err(|_| format!("no answer within {EXPORT_TIMEOUT:?}"))?
    }

    async fn exchange(&self, req: http::Request<Full<Bytes>>) -> Result<(), String> {
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("sending to the collector: {e}"))?;
        let status = res.status();
        let headers = res.headers().clone();
        let collected = Limited::new(res.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the collector's answer: {e}"))?;
        match self.protocol {
            OtlpProtocol::HttpProtobuf if status.is_success() => Ok(()),
            OtlpProtocol::HttpProtobuf => Err(format!("the collector answered HTTP {status}")),
            OtlpProtocol::Grpc => {
                if status != http::StatusCode::OK {
                    return Err(format!("the collector answered HTTP {status}"));
                }
                // grpc-status is in the trailers, or in the headers of a
                // trailers-only answer.
                let trailers = collected.trailers().cloned().unwrap_or_default();
                let field = |name: &str| {
                    trailers
                        .get(name)
                        .or_else(|| headers.get(name))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                match field("grpc-status").as_str() {
                    "0" => Ok(()),
                    "" => Err("the collector's answer has no grpc-status".to_string()),
                    code => Err(format!(
                        "the collector answered grpc-status {code} {}",
                        field("grpc-message")
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_path_follows_the_endpoint() {
        let t = Transport::new(
            &"http://127.0.0.1:4317".parse().unwrap(),
            OtlpProtocol::Grpc,
            Signal::Metrics,
        )
        .unwrap();
        assert_eq!(
            t.url().to_string(),
            "http://127.0.0.1:4317/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
        );
        let t = Transport::new(
            &"http://127.0.0.1:4318/v1/traces".parse().unwrap(),
            OtlpProtocol::HttpProtobuf,
            Signal::Traces,
        )
        .unwrap();
        assert_eq!(t.url().to_string(), "http://127.0.0.1:4318/v1/traces");
    }
}
