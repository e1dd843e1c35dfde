use clap::Args;

use super::table;

use super::client::AdminArgs;
use crate::registry::{ComponentView, Event, RegistryView, VersionView};

/// List the components of a running host: versions, canaries, traffic, health.
///
///   VERSION        the active version (`removed` when none serves)
///   DIGEST         the start of its sha256
///   CANARY         the canary's version and share of traffic, or `-`
///   IN-FLIGHT      invocations running now (all versions) / limits.max_concurrency
///   REQ/S          invocations per second over the last 10 s, active and canary together
///   ERR%           invocations that failed (5xx, trap, deadline) over the last 60 s,
///                  per version: the active one's, then the canary's after a `/`
///   CALLS          components it may call, each with its circuit breaker's state
///                  (`pricing:closed`; `open` fails calls fast, `half-open` probes)
///   HEALTH         the last health check: `ok 200`, `failing 503`, `-` without a
///                  health route, `unchecked` when none ran yet. Running versions
///                  are checked when deployed and every 10 s; per version like
///                  ERR% (the canary's after a `/`). A refused version shows as
///                  an event below the table.
///
/// Under the table: each component's last automatic canary rollback, and its
/// last change unless that was the manifest's load.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct Ps {
    /// Print the admin API's JSON instead (adds kept versions, interfaces,
    /// limits, the canary's error-rate window and the last 50 events of each
    /// component).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

impl Ps {
    pub fn execute(self) -> anyhow::Result<()> {
        let client = self.admin.connect()?;
        if self.json {
            println!("{}", client.get_pretty("/v1/components")?);
            return Ok(());
        }
        let view: RegistryView = client.get("/v1/components")?;
        print!("{}", render(&view));
        Ok(())
    }
}

fn render(view: &RegistryView) -> String {
    if view.components.is_empty() {
        return "no components\n".to_string();
    }
    let rows = view.components.iter().map(row).collect();
    let mut out = table(
        &[
            "NAME",
            "VERSION",
            "DIGEST",
            "CANARY",
            "ROUTES",
            "SUBSCRIPTIONS",
            "IN-FLIGHT",
            "REQ/S",
            "ERR%",
            "HEALTH",
            "CALLS",
        ],
        rows,
    );
    let events: Vec<String> = view
        .components
        .iter()
        .flat_map(|c| {
            notable_events(c)
                .into_iter()
                .map(move |e| format!("{}: {} {}: {}", c.name, e.at, e.kind, e.message))
        })
        .collect();
    if !events.is_empty() {
        out.push('\n');
        for line in events {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn row(c: &ComponentView) -> Vec<String> {
    let list = |items: &[String]| match items.is_empty() {
        true => "-".to_string(),
        false => items.join(","),
    };
    let (version, digest, rate, errors) = match &c.active {
        None => ("removed".into(), "-".into(), "-".into(), "-".into()),
        Some(a) => {
            let digest = a.digest.strip_prefix("sha256:").unwrap_or(&a.digest);
            let canary = c.canary.as_ref().map(|c| &c.version);
            let rate = a.requests_per_sec + canary.map_or(0.0, |c| c.requests_per_sec);
            let mut errors = percent(a.error_rate);
            if let Some(c) = canary {
                errors = format!("{errors}/{}", percent(c.error_rate));
            }
            (
                a.version.clone(),
                format!("sha256:{}", &digest[..digest.len().min(12)]),
                format!("{rate:.1}"),
                errors,
            )
        }
    };
    vec![
        c.name.clone(),
        version,
        digest,
        c.canary.as_ref().map_or("-".into(), |canary| {
            format!("{} {}%", canary.version.version, canary.percent)
        }),
        list(&c.routes),
        list(&c.subscriptions),
        format!("{}/{}", c.in_flight, c.max_concurrency),
        rate,
        errors,
        health(c),
        calls(c),
    ]
}

fn percent(rate: f64) -> String {
    format!("{:.1}", rate * 100.0)
}

/// Each edge as `callee:circuit` (`pricing:closed,audit:open`), or `-`.
fn calls(c: &ComponentView) -> String {
    match c.calls.is_empty() {
        true => "-".into(),
        false => c
            .calls
            .iter()
            .map(|e| format!("{}:{}", e.callee, e.circuit))
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn health(c: &ComponentView) -> String {
    if c.health.is_none() {
        return "-".into();
    }
    let cell = |v: &VersionView| match &v.health {
        None => "unchecked".to_string(),
        Some(h) => {
            let word = if h.error.is_none() { "ok" } else { "failing" };
            match h.status {
                Some(status) => format!("{word} {status}"),
                None => word.to_string(),
            }
        }
    };
    let mut out = c.active.as_ref().map_or("unchecked".to_string(), cell);
    if let Some(canary) = &c.canary {
        out.push('/');
        out.push_str(&cell(&canary.version));
    }
    out
}

/// The last automatic rollback, and the last event unless it is the
/// manifest's load (the table shows its outcome); oldest first.
fn notable_events(c: &ComponentView) -> Vec<&Event> {
    let auto = c.events.iter().rposition(|e| e.kind == "auto-rollback");
    let last = c
        .events
        .len()
        .checked_sub(1)
        .filter(|&i| c.events[i].kind != "manifest");
    let mut picked: Vec<usize> = auto.into_iter().chain(last).collect();
    picked.dedup();
    picked.into_iter().map(|i| &c.events[i]).collect()
}

#[cfg(test)]
mod tests {
    use crate::registry::{CanaryView, EdgeView, HealthCheck, HealthView};

    use super::*;

    fn version(v: &str, digest: &str, rps: f64, error_rate: f64) -> VersionView {
        VersionView {
            version: v.into(),
            digest: digest.into(),
            deployed_at: "2026-11-22T08:30:00Z".into(),
            exports: vec!["wasi:http/incoming-handler@0.2.6".into()],
            imports: vec![],
            in_flight: 0,
            requests: 100,
            errors: 1,
            requests_per_sec: rps,
            recent_requests: 100,
            recent_errors: 1,
            error_rate,
            health: None,
        }
    }

    fn checked(status: u16) -> Option<HealthCheck> {
        Some(HealthCheck {
            status: Some(status),
            checked_at: "2026-11-22T08:37:00Z".into(),
            error: (status >= 300)
                .then(|| format!("its health check GET /healthz answered {status}")),
        })
    }

    fn route(path: &str) -> Option<HealthView> {
        Some(HealthView {
            path: path.into(),
            version: None,
            status: None,
            checked_at: None,
            error: None,
        })
    }

    fn event(at: &str, kind: &str, message: &str) -> Event {
        Event {
            at: at.into(),
            kind: kind.into(),
            message: message.into(),
        }
    }

    fn component(name: &str) -> ComponentView {
        ComponentView {
            name: name.into(),
            active: Some(version("1.0.0", "0123456789abcdef0123", 0.0, 0.0)),
            canary: None,
            kept: vec![],
            routes: vec![],
            subscriptions: vec![],
            publishes: vec![],
            in_flight: 0,
            max_concurrency: 100,
            memory: 64 << 20,
            deadline_ms: 30_000,
            health: None,
            calls: vec![],
            events: vec![event(
                "2026-11-22T08:30:00Z",
                "manifest",
                "1.0.0 from swap.wasm is active",
            )],
        }
    }

    #[test]
    fn ps_shows_one_aligned_row_per_component_and_notable_events() {
        let mut orders = component("orders");
        orders.active = Some(version("1.3.0", "feedfacecafebeef0000", 41.25, 0.004));
        orders.active.as_mut().unwrap().health = checked(200);
        let mut canary = version("1.4.0", "aaaa", 4.5, 0.25);
        canary.health = checked(503);
        orders.canary = Some(CanaryView {
            version: canary,
            percent: 10,
            window_error_rate: 0.3,
            window_requests: 40,
            max_error_rate: 0.1,
        });
        orders.routes = vec!["/orders".into(), "/orders/...".into()];
        orders.in_flight = 3;
        orders.calls = ["pricing:open", "audit:closed"]
            .iter()
            .map(|e| {
                let (callee, circuit) = e.split_once(':').unwrap();
                EdgeView {
                    callee: callee.into(),
                    circuit: circuit.into(),
                    failure_rate: 0.0,
                    window_calls: 0,
                    opened: 0,
                    calls: 0,
                    ok: 0,
                    failed: 0,
                    timeouts: 0,
                    retries: 0,
                    circuit_open: 0,
                    bulkhead_full: 0,
                    fallbacks: 0,
                    too_deep: 0,
                }
            })
            .collect();
        orders.health = route("/healthz");
        orders.events.push(event(
            "2026-11-22T08:38:02Z",
            "auto-rollback",
            "canary 1.5.0 rolled back automatically: error rate 50% (10 of 20) over the last 30s is above the limit of 10%",
        ));
        orders.events.push(event(
            "2026-11-22T08:39:00Z",
            "canary",
            "1.4.0 gets 10% of traffic",
        ));

        let mut mail = component("mail");
        mail.subscriptions = vec!["orders".into(), "audit (group mailers)".into()];
        mail.health = route("/healthz");
        mail.active.as_mut().unwrap().health = checked(503);

        let mut gone = component("gone");
        gone.active = None;
        gone.health = route("/healthz");
        gone.events.push(event(
            "2026-11-22T08:40:00Z",
            "remove",
            "removed (was 1.0.0)",
        ));

        let view = RegistryView {
            components: vec![orders, mail, gone, component("quiet")],
            instances: 4,
            call_denials: 0,
        };
        let expected = "\
NAME    VERSION  DIGEST               CANARY     ROUTES               SUBSCRIPTIONS                 IN-FLIGHT  REQ/S  ERR%      HEALTH              CALLS
orders  1.3.0    sha256:feedfacecafe  1.4.0 10%  /orders,/orders/...  -                             3/100      45.8   0.4/25.0  ok 200/failing 503  pricing:open,audit:closed
mail    1.0.0    sha256:0123456789ab  -          -                    orders,audit (group mailers)  0/100      0.0    0.0       failing 503         -
gone    removed  -                    -          -                    -                             0/100      -      -         unchecked           -
quiet   1.0.0    sha256:0123456789ab  -          -                    -                             0/100      0.0    0.0       -                   -

orders: 2026-11-22T08:38:02Z auto-rollback: canary 1.5.0 rolled back automatically: error rate 50% (10 of 20) over the last 30s is above the limit of 10%
orders: 2026-11-22T08:39:00Z canary: 1.4.0 gets 10% of traffic
gone: 2026-11-22T08:40:00Z remove: removed (was 1.0.0)
";
        assert_eq!(render(&view), expected);
        assert_eq!(
            render(&RegistryView {
                components: vec![],
                instances: 0,
                call_denials: 0,
            }),
            "no components\n"
        );
    }
}
