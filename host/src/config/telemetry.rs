//! `[telemetry]`: where the host's traces go.
//!
//! ```toml
//! [telemetry]
//! otlp_endpoint = "http://127.0.0.1:4318"   # a collector; no endpoint, no export
//! otlp_protocol = "http/protobuf"           # or "grpc" (then usually port 4317)
//! service_name = "shop"                     # default "atoll"
//! sample_ratio = 0.25                       # share of new traces kept, default 1
//! ```
//!
//! What the manifest leaves out comes from the standard OpenTelemetry
//! environment variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`, `OTEL_SDK_DISABLED`):
//! see [`TelemetrySpec::resolve`]. With neither, export is off and costs
//! nothing per request.

use serde::Deserialize;
use toml::Spanned;

use super::Source;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// Protobuf in an HTTP POST to `.../v1/traces` (`"http/protobuf"`).
    HttpProtobuf,
    /// The OTLP gRPC service over HTTP/2 without TLS (`"grpc"`).
    Grpc,
}

impl OtlpProtocol {
    /// The names the manifest and `OTEL_EXPORTER_OTLP_PROTOCOL` accept.
    pub const NAMES: &[&str] = &["http/protobuf", "grpc"];

    /// Parses a protocol name; the error says what is accepted.
    pub fn parse(text: &str) -> Result<OtlpProtocol, String> {
        match text {
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/json" => Err(
                "`http/json` is not supported; use `http/protobuf` (the default) or `grpc`"
                    .to_string(),
            ),
            other => Err(format!(
                "`{other}` is not an OTLP protocol; use `http/protobuf` (the default) or `grpc`"
            )),
        }
    }

    /// The manifest name.
    pub fn name(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

/// `[telemetry]` as written in the manifest; every key is optional.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySpec {
    /// The collector's URL (`otlp_endpoint`, `http://host:port`). For
    /// http/protobuf a URL without a path gets `/v1/traces`; a URL with a
    /// path is used as it is.
    pub otlp_endpoint: Option<http::Uri>,
    /// `otlp_protocol` (default `http/protobuf`).
    pub otlp_protocol: Option<OtlpProtocol>,
    /// `service.name` of the exported spans (`service_name`, default "atoll").
    pub service_name: Option<String>,
    /// Share of new traces recorded, 0 to 1 (`sample_ratio`, default 1). A
    /// request that arrives with a `traceparent` follows its sampled flag.
    pub sample_ratio: f64,
}

impl Default for TelemetrySpec {
    fn default() -> Self {
        TelemetrySpec {
            otlp_endpoint: None,
            otlp_protocol: None,
            service_name: None,
            sample_ratio: 1.0,
        }
    }
}

/// Where and how spans are exported: the manifest's `[telemetry]` with the
/// environment filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpExport {
    /// The URL spans are sent to: `.../v1/traces` for http/protobuf, the
    /// collector's address for gRPC.
    pub url: http::Uri,
    /// How they are sent.
    pub protocol: OtlpProtocol,
    /// `service.name`.
    pub service_name: String,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
}

/// Environment variables [`TelemetrySpec::resolve`] reads.
pub const OTEL_ENV: &[&str] = &[
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
];

impl TelemetrySpec {
    /// Fills in what the manifest leaves out from the environment (`env`
    /// looks a variable up; an empty value counts as unset), following the
    /// OpenTelemetry conventions: the endpoint is `otlp_endpoint`, else
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is), else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (http/protobuf appends `/v1/traces`);
    /// `OTEL_SDK_DISABLED=true` turns off export the manifest did not ask
    /// for. `None`: export is off. An error names the variable and what to do.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpExport>, String> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let protocol = match self.otlp_protocol {
            Some(p) => p,
            None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v))
                .or_else(|| {
                    env("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v))
                }) {
                Some((var, value)) => {
                    OtlpProtocol::parse(value.trim()).map_err(|m| format!("{var}: {m}"))?
                }
                None => OtlpProtocol::HttpProtobuf,
            },
        };
        let url = match &self.otlp_endpoint {
            Some(url) => match protocol {
                OtlpProtocol::HttpProtobuf if url.path() == "/" => with_path(url, "/v1/traces")
                    .map_err(|m| format!("[telemetry] otlp_endpoint: {m}"))?,
                _ => url.clone(),
            },
            None => {
                if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
                    return Ok(None);
                }
                if let Some(value) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                    parse_endpoint(value.trim())
                        .map_err(|m| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {m}"))?
                } else if let Some(value) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    let base = parse_endpoint(value.trim())
                        .map_err(|m| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {m}"))?;
                    match protocol {
                        OtlpProtocol::HttpProtobuf => {
                            let path = format!("{}/v1/traces", base.path().trim_end_matches('/'));
                            with_path(&base, &path)
                                .map_err(|m| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {m}"))?
                        }
                        OtlpProtocol::Grpc => base,
                    }
                } else {
                    return Ok(None);
                }
            }
        };
        let service_name = match &self.service_name {
            Some(name) => name.clone(),
            None => env("OTEL_SERVICE_NAME")
                .map_or_else(|| "atoll".to_string(), |v| v.trim().to_string()),
        };
        Ok(Some(OtlpExport {
            url,
            protocol,
            service_name,
            sample_ratio: self.sample_ratio,
        }))
    }
}

/// Checks an OTLP endpoint: an absolute `http://` URL with a host.
pub fn parse_endpoint(text: &str) -> Result<http::Uri, String> {
    let example =
        "write it like `http://127.0.0.1:4318` (http/protobuf) or `http://127.0.0.1:4317` (grpc)";
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("`{text}` is not a URL; {example}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{text}`: only http:// collectors are supported (the host does not send OTLP over TLS); run the collector or an agent next to the host and {example}"
            ));
        }
        _ => return Err(format!("`{text}` is not an http:// URL; {example}")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host; {example}"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "`{text}`: an OTLP endpoint has no query; {example}"
        ));
    }
    Ok(uri)
}

fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, String> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path.parse()
            .map_err(|_| format!("`{path}` is not a URL path"))?,
    );
    http::Uri::from_parts(parts).map_err(|e| format!("{e}"))
}

// ---- raw schema ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    otlp_endpoint: Option<Spanned<String>>,
    otlp_protocol: Option<Spanned<String>>,
    service_name: Option<Spanned<String>>,
    sample_ratio: Option<Spanned<Ratio>>,
}

/// A number written as `1` or `0.5`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Ratio {
    Int(i64),
    Float(f64),
}

/// Validates `[telemetry]`.
pub(super) fn parse(
    raw: RawTelemetry,
    src: &Source<'_>,
) -> Result<TelemetrySpec, super::ManifestError> {
    let otlp_endpoint = match &raw.otlp_endpoint {
        None => None,
        Some(e) => Some(
            parse_endpoint(e.get_ref().trim())
                .map_err(|m| src.at(e.span(), format!("[telemetry] otlp_endpoint: {m}")))?,
        ),
    };
    let otlp_protocol = match &raw.otlp_protocol {
        None => None,
        Some(p) => Some(
            OtlpProtocol::parse(p.get_ref())
                .map_err(|m| src.at(p.span(), format!("[telemetry] otlp_protocol: {m}")))?,
        ),
    };
    let service_name = match &raw.service_name {
        None => None,
        Some(n) if n.get_ref().trim().is_empty() || n.get_ref().len() > 255 => {
            return Err(src.at(
                n.span(),
                "[telemetry] service_name must be 1 to 255 characters (it becomes `service.name` on every span)",
            ));
        }
        Some(n) => Some(n.get_ref().trim().to_string()),
    };
    let sample_ratio = match &raw.sample_ratio {
        None => 1.0,
        Some(r) => {
            let value = match r.get_ref() {
                Ratio::Int(i) => *i as f64,
                Ratio::Float(f) => *f,
            };
            if !(0.0..=1.0).contains(&value) {
                return Err(src.at(
                    r.span(),
                    "[telemetry] sample_ratio must be between 0 and 1 (0.25 records a quarter of new traces; 1 records all)",
                ));
            }
            value
        }
    };
    Ok(TelemetrySpec {
        otlp_endpoint,
        otlp_protocol,
        service_name,
        sample_ratio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec(text: &str) -> Result<TelemetrySpec, super::super::ManifestError> {
        super::super::Manifest::parse(text, "atoll.toml", std::path::Path::new("/app"))
            .map(|m| m.telemetry)
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn off_by_default() {
        let s = spec("").unwrap();
        assert_eq!(s, TelemetrySpec::default());
        assert_eq!(s.resolve(env(&[])).unwrap(), None);
    }

    #[test]
    fn manifest_endpoint_gets_the_traces_path() {
        let s = spec("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.5\nservice_name = \"shop\"\n").unwrap();
        let e = s.resolve(env(&[])).unwrap().unwrap();
        assert_eq!(e.url.to_string(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(e.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!((e.service_name.as_str(), e.sample_ratio), ("shop", 0.5));
        // A path is kept; the manifest wins over the environment.
        let s = spec("[telemetry]\notlp_endpoint = \"http://c:9/x/traces\"\nsample_ratio = 0\n")
            .unwrap();
        let e = s
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:1"),
                ("OTEL_SERVICE_NAME", "svc"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(e.url.to_string(), "http://c:9/x/traces");
        assert_eq!((e.service_name.as_str(), e.sample_ratio), ("svc", 0.0));
    }

    #[test]
    fn grpc_keeps_the_address() {
        let s = spec(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\notlp_protocol = \"grpc\"\n",
        )
        .unwrap();
        let e = s.resolve(env(&[])).unwrap().unwrap();
        assert_eq!(
            (e.url.to_string().as_str(), e.protocol),
            ("http://127.0.0.1:4317/", OtlpProtocol::Grpc)
        );
    }

    #[test]
    fn environment_enables_and_fills_in() {
        let s = TelemetrySpec::default();
        let e = s
            .resolve(env(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://c:4318/base/",
            )]))
            .unwrap()
            .unwrap();
        assert_eq!(e.url.to_string(), "http://c:4318/base/v1/traces");
        assert_eq!(e.service_name, "atoll");
        let e = s
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://wrong:1"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(e.url.to_string(), "http://c:4318/custom");
        let e = s
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.url.to_string().as_str(), e.protocol),
            ("http://c:4317/", OtlpProtocol::Grpc)
        );
        // Empty is unset; OTEL_SDK_DISABLED turns the environment's export off.
        assert_eq!(
            s.resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]))
                .unwrap(),
            None
        );
        assert_eq!(
            s.resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
                ("OTEL_SDK_DISABLED", "true")
            ]))
            .unwrap(),
            None
        );
    }

    #[test]
    fn bad_environment_is_named() {
        let s = TelemetrySpec::default();
        let e = s
            .resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")]))
            .unwrap_err();
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "), "{e}");
        let e = s
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]))
            .unwrap_err();
        assert!(e.contains("`http/json` is not supported"), "{e}");
    }

    #[test]
    fn bad_manifest_values_are_located() {
        for (text, at, want) in [
            (
                "[telemetry]\notlp_endpoint = \"127.0.0.1:4318\"\n",
                "atoll.toml:2:17",
                "is not an http:// URL",
            ),
            (
                "[telemetry]\notlp_endpoint = \"https://c:4318\"\n",
                "atoll.toml:2:17",
                "only http:// collectors",
            ),
            (
                "[telemetry]\notlp_protocol = \"udp\"\n",
                "atoll.toml:2:17",
                "`udp` is not an OTLP protocol",
            ),
            (
                "[telemetry]\nsample_ratio = 2\n",
                "atoll.toml:2:16",
                "sample_ratio must be between 0 and 1",
            ),
            (
                "[telemetry]\nsample_ratio = -0.5\n",
                "atoll.toml:2:16",
                "sample_ratio must be between 0 and 1",
            ),
            (
                "[telemetry]\nservice_name = \"\"\n",
                "atoll.toml:2:16",
                "service_name must be",
            ),
            (
                "[telemetry]\nendpoint = \"http://c\"\n",
                "atoll.toml:2:1",
                "unknown field `endpoint`",
            ),
        ] {
            let e = spec(text).unwrap_err();
            assert_eq!(e.location, at, "{text}: {e}");
            assert!(e.message.contains(want), "{text}: {e}");
        }
    }
}
