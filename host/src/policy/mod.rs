//! Deny-by-default decisions: which outbound HTTP destinations a component may
//! reach (`allowed_outbound_hosts`) and which topics it may publish to
//! (`publishes`; subscribing to an undeclared topic is refused when the
//! manifest loads). Component-to-component edges join this module as they land.

use std::fmt;

/// One `allowed_outbound_hosts` entry: `scheme://host[:port]`, where scheme, host
/// and port may be `*`, and host may be `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    scheme: Pattern,
    host: HostPattern,
    port: Option<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Suffix(String),
    Exact(String),
}

impl OutboundRule {
    /// Parses a rule, with an error that says how to write one.
    pub fn parse(text: &str) -> Result<OutboundRule, String> {
        let bad = |why: &str| {
            Err(format!(
                "allowed_outbound_hosts entry `{text}` {why}; write `scheme://host[:port]`, e.g. `https://api.example.com` or `http://127.0.0.1:8081`"
            ))
        };
        let Some((scheme, rest)) = text.split_once("://") else {
            return bad("has no scheme");
        };
        let scheme = match scheme {
            "*" => Pattern::Any,
            "http" | "https" => Pattern::Exact(scheme.to_string()),
            _ => return bad("has a scheme other than http, https or *"),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return bad("must name only a host and port");
        }
        // `[v6]` or `[v6]:port`; a bare colon otherwise separates the port.
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !rest.starts_with('[') || h.ends_with(']') => (h, Some(p)),
            _ => (rest, None),
        };
        let port = match port {
            None => None,
            Some("*") => Some(Pattern::Any),
            Some(p) if p.parse::<u16>().is_ok() => Some(Pattern::Exact(p.to_string())),
            Some(_) => return bad("has a port that is not a number or `*`"),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Suffix(format!(".{suffix}"))
        } else if host.contains('*') {
            return bad("uses `*` other than as the whole host or a leading `*.`");
        } else {
            HostPattern::Exact(host)
        };
        Ok(OutboundRule { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` matches this rule.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = match &self.scheme {
            Pattern::Any => true,
            Pattern::Exact(s) => s == scheme,
        };
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => host.ends_with(s.as_str()),
            HostPattern::Exact(h) => *h == host,
        };
        let port_ok = match &self.port {
            Some(Pattern::Any) => true,
            Some(Pattern::Exact(p)) => p.parse() == Ok(port),
            // No port written: the scheme's default port.
            None => match &self.scheme {
                Pattern::Exact(s) => default_port(s) == Some(port),
                Pattern::Any => default_port(scheme) == Some(port),
            },
        };
        scheme_ok && host_ok && port_ok
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The outbound rules of one component.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    rules: Vec<OutboundRule>,
}

/// A refused outbound request, for logs.
#[derive(Debug)]
pub struct OutboundDenied {
    /// The destination as `scheme://host:port`.
    pub destination: String,
}

impl fmt::Display for OutboundDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "outbound request to {} denied: not in allowed_outbound_hosts",
            self.destination
        )
    }
}

impl OutboundPolicy {
    /// Builds a policy from validated manifest entries.
    pub fn new(entries: &[String]) -> Result<OutboundPolicy, String> {
        let rules = entries
            .iter()
            .map(|e| OutboundRule::parse(e))
            .collect::<Result<_, _>>()?;
        Ok(OutboundPolicy { rules })
    }

    /// Decides on a request URI; `Err` names the refused destination.
    pub fn check(&self, uri: &http::Uri) -> Result<(), OutboundDenied> {
        let scheme = uri.scheme_str().unwrap_or("http");
        let host = uri.host().unwrap_or("");
        let port = uri.port_u16().or_else(|| default_port(scheme)).unwrap_or(0);
        if !host.is_empty() && self.rules.iter().any(|r| r.allows(scheme, host, port)) {
            Ok(())
        } else {
            Err(OutboundDenied {
                destination: format!("{scheme}://{host}:{port}"),
            })
        }
    }
}

/// Which topics each component may publish to.
#[derive(Debug, Default)]
pub struct TopicPolicy {
    publishes: std::collections::HashMap<String, std::collections::HashSet<String>>,
}

impl TopicPolicy {
    /// A policy from each component's `publishes` list.
    pub fn new<'a>(grants: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Self {
        TopicPolicy {
            publishes: grants
                .into_iter()
                .map(|(c, topics)| (c.to_string(), topics.iter().cloned().collect()))
                .collect(),
        }
    }

    /// Whether `component` may publish to `topic`; the error says how to allow it.
    pub fn check_publish(&self, component: &str, topic: &str) -> Result<(), String> {
        if self
            .publishes
            .get(component)
            .is_some_and(|t| t.contains(topic))
        {
            return Ok(());
        }
        tracing::warn!(component, topic, "publish denied");
        Err(format!(
            "component `{component}` may not publish to topic `{topic}`; add it to `publishes` of [components.{component}] in atoll.toml"
        ))
    }
}

/// Calls refused because the caller may not call the callee (counted at
/// deploy and start, where the decision is made).
static CALL_DENIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one refused call edge.
pub fn count_call_denial() {
    CALL_DENIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Call edges refused since the process started.
pub fn call_denials() -> u64 {
    CALL_DENIALS.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(rules: &[&str], uri: &str) -> bool {
        let p =
            OutboundPolicy::new(&rules.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.check(&uri.parse().unwrap()).is_ok()
    }

    #[test]
    fn nothing_allowed_by_default() {
        assert!(!allowed(&[], "http://127.0.0.1:8080/"));
    }

    #[test]
    fn exact_host_and_port() {
        let r = ["http://127.0.0.1:9000"];
        assert!(allowed(&r, "http://127.0.0.1:9000/x"));
        assert!(!allowed(&r, "http://127.0.0.1:9001/x"));
        assert!(!allowed(&r, "https://127.0.0.1:9000/x"));
        assert!(!allowed(&r, "http://127.0.0.2:9000/x"));
    }

    #[test]
    fn default_ports_and_wildcards() {
        assert!(allowed(
            &["https://api.example.com"],
            "https://api.example.com/v1"
        ));
        assert!(!allowed(
            &["https://api.example.com"],
            "https://api.example.com:8443/v1"
        ));
        assert!(allowed(
            &["https://*.example.com"],
            "https://a.b.example.com/"
        ));
        assert!(!allowed(
            &["https://*.example.com"],
            "https://example.com.evil.net/"
        ));
        assert!(allowed(&["*://*:*"], "http://anything:1234/"));
    }

    #[test]
    fn ipv6_literals() {
        assert!(allowed(&["http://[::1]"], "http://[::1]/x"));
        assert!(allowed(&["http://[::1]:8080"], "http://[::1]:8080/x"));
        assert!(!allowed(&["http://[::1]:8080"], "http://[::1]:8081/x"));
    }

    #[test]
    fn bad_rules() {
        for r in [
            "example.com",
            "ftp://x",
            "http://x/path",
            "http://x:port",
            "http://a*b",
        ] {
            assert!(OutboundRule::parse(r).is_err(), "{r}");
        }
    }
}
