//! `[telemetry]`: where the host's traces and, if asked, its metrics go.
//!
//! ```toml
//! [telemetry]
//! otlp_endpoint = "http://127.0.0.1:4318"   # a collector; no endpoint, no export
//! otlp_protocol = "http/protobuf"           # or "grpc" (then usually port 4317)
//! service_name = "shop"                     # default "atoll"
//! sample_ratio = 0.25                       # share of new traces kept, default 1
//! metrics_interval = "10s"                  # also push the metrics every 10 s; default off
//! ```
//!
//! What the manifest leaves out comes from the standard OpenTelemetry
//! environment variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`, `OTEL_SDK_DISABLED`):
//! see [`TelemetrySpec::resolve`]. With neither, export is off and costs
//! nothing per request.
//!
//! The metrics push ([`TelemetrySpec::resolve_metrics`]) is on when the
//! manifest sets `metrics_interval`, or when `OTEL_METRICS_EXPORTER=otlp`
//! and `OTEL_SDK_DISABLED` is not `true`. Its interval is `metrics_interval`,
//! else `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), else 60 s; 1 s to 24 h.
//! Where it goes, first match wins:
//!
//! 1. `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, used as it is (the manifest
//!    has no metrics URL of its own, so the metrics-only variable is the
//!    most specific setting);
//! 2. `otlp_endpoint`: for gRPC as it is; for http/protobuf a URL without
//!    a path gets `/v1/metrics`, and a path ending in `/v1/traces` has that
//!    end replaced by `/v1/metrics` (so one collector URL serves both
//!    signals). Any other path named a trace URL the metrics URL cannot be
//!    derived from: that is an error asking for
//!    `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`;
//! 3. `OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/metrics` (http/protobuf) or
//!    as it is (gRPC).
//!
//! The protocol follows the same order: `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`,
//! `otlp_protocol`, `OTEL_EXPORTER_OTLP_PROTOCOL`, `http/protobuf`. A push
//! that is on without any endpoint is an error.

use std::time::Duration;

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
    /// `metrics_interval`: push the metrics over OTLP this often (1 s to
    /// 24 h). Default: no push, unless the environment asks.
    pub metrics_interval: Option<Duration>,
}

impl Default for TelemetrySpec {
    fn default() -> Self {
        TelemetrySpec {
            otlp_endpoint: None,
            otlp_protocol: None,
            service_name: None,
            sample_ratio: 1.0,
            metrics_interval: None,
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

/// Where and how often the metrics are pushed: the manifest's `[telemetry]`
/// with the environment filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsPush {
    /// The URL metrics are sent to: `.../v1/metrics` for http/protobuf, the
    /// collector's address for gRPC.
    pub url: http::Uri,
    /// How they are sent.
    pub protocol: OtlpProtocol,
    /// Time between two pushes.
    pub interval: Duration,
    /// `service.name`.
    pub service_name: String,
}

impl MetricsPush {
    /// `http/protobuf http://127.0.0.1:4318/v1/metrics every 10s`, for the
    /// startup line.
    pub fn describe(&self) -> String {
        format!(
            "{} {} every {}",
            self.protocol.name(),
            self.url,
            humantime::format_duration(self.interval)
        )
    }
}

/// The shortest and longest time between two metrics pushes.
const METRICS_INTERVALS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// The push interval when neither the manifest nor the environment sets
/// one (the OpenTelemetry default).
const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);

/// Environment variables [`TelemetrySpec::resolve_metrics`] reads.
pub const OTEL_METRICS_ENV: &[&str] = &[
    "OTEL_METRICS_EXPORTER",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_SDK_DISABLED",
];

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

    /// Whether, where and how often the metrics are pushed, with the
    /// environment (`env`, as for [`TelemetrySpec::resolve`]) filling in
    /// what the manifest leaves out; the rules are in the module docs.
    /// `None`: no push. An error names the key or variable and what to do.
    pub fn resolve_metrics(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<MetricsPush>, String> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let otlp = match env("OTEL_METRICS_EXPORTER") {
            Some(value) => {
                otlp_exporter(&value).map_err(|m| format!("OTEL_METRICS_EXPORTER: {m}"))?
            }
            None => false,
        };
        let disabled =
            env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        // Who turned the push on, for the error when there is no endpoint.
        let asked_by = match self.metrics_interval {
            Some(_) => "[telemetry] metrics_interval",
            None if otlp && !disabled => "OTEL_METRICS_EXPORTER=otlp",
            None => return Ok(None),
        };
        let interval = match self.metrics_interval {
            Some(interval) => interval,
            None => match env("OTEL_METRIC_EXPORT_INTERVAL") {
                None => DEFAULT_METRICS_INTERVAL,
                Some(value) => {
                    let (min, max) = METRICS_INTERVALS;
                    let bad = || {
                        format!(
                            "OTEL_METRIC_EXPORT_INTERVAL: `{}` must be a number of milliseconds from {} to {} (`10000` pushes every 10 s)",
                            value.trim(),
                            min.as_millis(),
                            max.as_millis()
                        )
                    };
                    let ms: u64 = value.trim().parse().map_err(|_| bad())?;
                    let interval = Duration::from_millis(ms);
                    if interval < min || interval > max {
                        return Err(bad());
                    }
                    interval
                }
            },
        };
        let protocol_var = |var: &'static str| {
            env(var)
                .map(|v| OtlpProtocol::parse(v.trim()).map_err(|m| format!("{var}: {m}")))
                .transpose()
        };
        let protocol = match protocol_var("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")? {
            Some(p) => p,
            None => match self.otlp_protocol {
                Some(p) => p,
                None => protocol_var("OTEL_EXPORTER_OTLP_PROTOCOL")?
                    .unwrap_or(OtlpProtocol::HttpProtobuf),
            },
        };
        let url = if let Some(value) = env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            parse_endpoint(value.trim())
                .map_err(|m| format!("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: {m}"))?
        } else if let Some(url) = &self.otlp_endpoint {
            match protocol {
                OtlpProtocol::HttpProtobuf => {
                    let path = url.path().trim_end_matches('/');
                    let base = path
                        .strip_suffix("/v1/traces")
                        .or(path.is_empty().then_some(""));
                    let Some(base) = base else {
                        return Err(format!(
                            "[telemetry] otlp_endpoint: the metrics URL cannot be derived from `{url}` (only from a URL without a path or one ending in `/v1/traces`); set OTEL_EXPORTER_OTLP_METRICS_ENDPOINT to the collector's metrics URL"
                        ));
                    };
                    with_path(url, &format!("{base}/v1/metrics"))
                        .map_err(|m| format!("[telemetry] otlp_endpoint: {m}"))?
                }
                OtlpProtocol::Grpc => url.clone(),
            }
        } else if let Some(value) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            let base = parse_endpoint(value.trim())
                .map_err(|m| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {m}"))?;
            match protocol {
                OtlpProtocol::HttpProtobuf => {
                    let path = format!("{}/v1/metrics", base.path().trim_end_matches('/'));
                    with_path(&base, &path)
                        .map_err(|m| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {m}"))?
                }
                OtlpProtocol::Grpc => base,
            }
        } else {
            return Err(format!(
                "{asked_by} turns the metrics push on, but no collector is named; set [telemetry] otlp_endpoint, or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT"
            ));
        };
        let service_name = match &self.service_name {
            Some(name) => name.clone(),
            None => env("OTEL_SERVICE_NAME")
                .map_or_else(|| "atoll".to_string(), |v| v.trim().to_string()),
        };
        Ok(Some(MetricsPush {
            url,
            protocol,
            interval,
            service_name,
        }))
    }
}

/// Reads `OTEL_METRICS_EXPORTER` (a comma-separated list): whether it asks
/// for the OTLP push. `prometheus` asks for nothing more (`/metrics` is
/// always served), `none` for nothing at all.
fn otlp_exporter(value: &str) -> Result<bool, String> {
    let mut otlp = false;
    for name in value.split(',').map(str::trim) {
        match name {
            "otlp" => otlp = true,
            "none" | "prometheus" => {}
            other => {
                return Err(format!(
                    "`{other}` is not supported; use `otlp` to push to the collector, or `none` (the Prometheus text at /metrics is always served)"
                ));
            }
        }
    }
    Ok(otlp)
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
    metrics_interval: Option<Spanned<String>>,
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
    let metrics_interval = match &raw.metrics_interval {
        None => None,
        Some(i) => {
            let interval = super::parse_duration(i.get_ref())
                .map_err(|m| src.at(i.span(), format!("[telemetry] metrics_interval: {m}")))?;
            let (min, max) = METRICS_INTERVALS;
            if interval < min || interval > max {
                return Err(src.at(
                    i.span(),
                    "[telemetry] metrics_interval must be between 1s and 24h (`10s` pushes the metrics every ten seconds)",
                ));
            }
            Some(interval)
        }
    };
    Ok(TelemetrySpec {
        otlp_endpoint,
        otlp_protocol,
        service_name,
        sample_ratio,
        metrics_interval,
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
    fn metrics_push_is_off_unless_asked() {
        let s = spec("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n").unwrap();
        assert_eq!(s.metrics_interval, None);
        assert_eq!(s.resolve_metrics(env(&[])).unwrap(), None);
        // An endpoint and an interval in the environment are not a request.
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ];
        assert_eq!(s.resolve_metrics(env(&vars)).unwrap(), None);
        for exporter in ["none", "prometheus", " "] {
            let vars = [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_METRICS_EXPORTER", exporter),
            ];
            assert_eq!(s.resolve_metrics(env(&vars)).unwrap(), None, "{exporter}");
        }
    }

    #[test]
    fn manifest_interval_pushes_to_the_metrics_path() {
        let s = spec("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nmetrics_interval = \"10s\"\nservice_name = \"shop\"\n").unwrap();
        assert_eq!(s.metrics_interval, Some(Duration::from_secs(10)));
        let m = s.resolve_metrics(env(&[])).unwrap().unwrap();
        assert_eq!(
            m.describe(),
            "http/protobuf http://127.0.0.1:4318/v1/metrics every 10s"
        );
        assert_eq!(m.service_name, "shop");
        // The traces no longer go anywhere else: resolve() is unchanged.
        let e = s.resolve(env(&[])).unwrap().unwrap();
        assert_eq!(e.url.to_string(), "http://127.0.0.1:4318/v1/traces");
        // A trace URL ending in /v1/traces serves both signals.
        for (endpoint, want) in [
            ("http://c:4318/v1/traces", "http://c:4318/v1/metrics"),
            (
                "http://c:4318/otel/v1/traces/",
                "http://c:4318/otel/v1/metrics",
            ),
            ("http://c:4318/", "http://c:4318/v1/metrics"),
        ] {
            let s = spec(&format!(
                "[telemetry]\notlp_endpoint = \"{endpoint}\"\nmetrics_interval = \"1m\"\n"
            ))
            .unwrap();
            let m = s.resolve_metrics(env(&[])).unwrap().unwrap();
            assert_eq!(
                (m.url.to_string().as_str(), m.interval),
                (want, Duration::from_secs(60)),
                "{endpoint}"
            );
        }
        // gRPC keeps the address.
        let s = spec("[telemetry]\notlp_endpoint = \"http://c:4317\"\notlp_protocol = \"grpc\"\nmetrics_interval = \"1s\"\n").unwrap();
        let m = s.resolve_metrics(env(&[])).unwrap().unwrap();
        assert_eq!(m.describe(), "grpc http://c:4317/ every 1s");
    }

    #[test]
    fn a_custom_trace_path_needs_the_metrics_variable() {
        let s = spec(
            "[telemetry]\notlp_endpoint = \"http://c:9/x/traces\"\nmetrics_interval = \"10s\"\n",
        )
        .unwrap();
        let e = s.resolve_metrics(env(&[])).unwrap_err();
        assert!(e.starts_with("[telemetry] otlp_endpoint: "), "{e}");
        assert!(e.contains("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"), "{e}");
        let m = s
            .resolve_metrics(env(&[(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://c:9/x/metrics",
            )]))
            .unwrap()
            .unwrap();
        assert_eq!(m.url.to_string(), "http://c:9/x/metrics");
    }

    #[test]
    fn environment_turns_the_push_on_and_fills_in() {
        let s = TelemetrySpec::default();
        let m = s
            .resolve_metrics(env(&[
                ("OTEL_METRICS_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/base/"),
                ("OTEL_SERVICE_NAME", "svc"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(
            m,
            MetricsPush {
                url: "http://c:4318/base/v1/metrics".parse().unwrap(),
                protocol: OtlpProtocol::HttpProtobuf,
                interval: Duration::from_secs(60),
                service_name: "svc".to_string(),
            }
        );
        // The metrics variables win over the general ones; a list may name otlp.
        let m = s
            .resolve_metrics(env(&[
                ("OTEL_METRICS_EXPORTER", "prometheus, otlp"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://wrong:1"),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(m.describe(), "grpc http://c:4317/ every 5s");
        // OTEL_SDK_DISABLED turns off what the manifest did not ask for.
        let vars = [
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(s.resolve_metrics(env(&vars)).unwrap(), None);
        let asked = spec("[telemetry]\nmetrics_interval = \"2s\"\n").unwrap();
        let m = asked.resolve_metrics(env(&vars)).unwrap().unwrap();
        assert_eq!(
            m.describe(),
            "http/protobuf http://c:4318/v1/metrics every 2s"
        );
    }

    #[test]
    fn the_manifest_wins_over_the_general_variables() {
        let s = spec("[telemetry]\notlp_endpoint = \"http://c:4317\"\notlp_protocol = \"grpc\"\nmetrics_interval = \"3s\"\nservice_name = \"shop\"\n").unwrap();
        let m = s
            .resolve_metrics(env(&[
                ("OTEL_METRICS_EXPORTER", "none"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "env"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(m.describe(), "grpc http://c:4317/ every 3s");
        assert_eq!(m.service_name, "shop");
    }

    #[test]
    fn bad_metrics_settings_are_named() {
        let s = TelemetrySpec::default();
        let on = [
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = on.to_vec();
            vars.extend_from_slice(extra);
            s.resolve_metrics(env(&vars)).unwrap_err()
        };
        for (vars, want) in [
            (
                vec![("OTEL_METRICS_EXPORTER", "console")],
                "OTEL_METRICS_EXPORTER: `console` is not supported; use `otlp`",
            ),
            (
                vec![("OTEL_METRIC_EXPORT_INTERVAL", "0")],
                "OTEL_METRIC_EXPORT_INTERVAL: `0` must be a number of milliseconds from 1000 to 86400000",
            ),
            (
                vec![("OTEL_METRIC_EXPORT_INTERVAL", "999")],
                "OTEL_METRIC_EXPORT_INTERVAL: `999` must be",
            ),
            (
                vec![("OTEL_METRIC_EXPORT_INTERVAL", "10s")],
                "OTEL_METRIC_EXPORT_INTERVAL: `10s` must be a number of milliseconds",
            ),
            (
                vec![("OTEL_METRIC_EXPORT_INTERVAL", "86400001")],
                "OTEL_METRIC_EXPORT_INTERVAL: `86400001` must be",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "c:4318")],
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `c:4318` is not",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: `http/json` is not supported",
            ),
        ] {
            let e = with(&vars);
            assert!(e.starts_with(want), "{vars:?}: {e}");
        }
        // On without a collector: the error names what turned it on.
        let e = s
            .resolve_metrics(env(&[("OTEL_METRICS_EXPORTER", "otlp")]))
            .unwrap_err();
        assert!(
            e.starts_with("OTEL_METRICS_EXPORTER=otlp turns the metrics push on, but no collector is named; set [telemetry] otlp_endpoint"),
            "{e}"
        );
        let asked = spec("[telemetry]\nmetrics_interval = \"10s\"\n").unwrap();
        let e = asked.resolve_metrics(env(&[])).unwrap_err();
        assert!(
            e.starts_with("[telemetry] metrics_interval turns the metrics push on"),
            "{e}"
        );
        // A bad value is an error even where the manifest decides.
        let e = asked
            .resolve_metrics(env(&[("OTEL_METRICS_EXPORTER", "console")]))
            .unwrap_err();
        assert!(e.starts_with("OTEL_METRICS_EXPORTER: "), "{e}");
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
                "[telemetry]\nmetrics_interval = \"soon\"\n",
                "atoll.toml:2:20",
                "metrics_interval: `soon` is not a duration",
            ),
            (
                "[telemetry]\nmetrics_interval = \"500ms\"\n",
                "atoll.toml:2:20",
                "metrics_interval must be between 1s and 24h",
            ),
            (
                "[telemetry]\nmetrics_interval = \"0s\"\n",
                "atoll.toml:2:20",
                "metrics_interval must be between 1s and 24h",
            ),
            (
                "[telemetry]\nmetrics_interval = \"2d\"\n",
                "atoll.toml:2:20",
                "metrics_interval must be between 1s and 24h",
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
