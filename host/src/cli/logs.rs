use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;

use super::client::{AdminArgs, with_query};
use super::table;
use crate::admin::MAX_LIMIT;
use crate::gateway::calllog::{self, CallRecord, StatusFilter};
use crate::telemetry::logs::{Level, LogRecord, Source, TraceId};

/// Show the gateway's call log (one row per request, rejected ones
/// included), or with --app the components' and the host's log records: the
/// newest `--limit` matching rows, oldest first.
///
/// The call log:
///   TIME       when the request arrived (UTC)
///   CLIENT     the client's IP address
///   METHOD     the request method
///   PATH       the request path, without the query
///   STATUS     the response status
///   SERVED-BY  component@version, the upstream backend, or `-`
///   LATENCY    from the request's arrival to the end of its response body
///   BYTES      request body bytes / response body bytes; a `*` after them
///              means the response body was cut off (the client went away
///              or the body failed)
///   SUBJECT    the verified token's subject, or `-`
///   TRACE      the W3C trace id (also in the response's traceparent)
///   REJECTED   why the gateway answered itself (not_found, unauthorized,
///              forbidden, rate_limited, body_too_large, body_timeout,
///              overloaded, timeout, no_backend, removed), or `-`
///
/// With --app, what components wrote to stdout and stderr, logged through
/// wasi:logging, and the host's warnings, errors and component events (the
/// host keeps the newest 10000 in memory):
///
///   TIME               when it was written (UTC)
///   LEVEL              trace, debug, info, warn, error or critical (stdout
///                      and stderr lines are info)
///   COMPONENT@VERSION  who wrote it, or `-` for a host event about no
///                      component
///   SOURCE             stdout, stderr, log (wasi:logging) or host
///   TRACE              the W3C trace id of the request or message being
///                      handled, or `-`
///   MESSAGE            the text (control characters escaped; a message
///                      longer than 8 KiB is cut, and says how much)
///
/// `--since` and `--until` take a duration ago (`10m`, `2h`, `1d`) or an
/// RFC 3339 time (`2026-01-02T15:04:05Z`, `2026-01-02T17:04:05+02:00`).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct Logs {
    /// Show log records of components and the host instead of the call log.
    #[arg(long)]
    app: bool,
    /// Only requests served by this component (with --app: only its records).
    #[arg(long, value_name = "NAME")]
    component: Option<String>,
    /// With --app: only records from stdout, stderr, log (wasi:logging) or
    /// host.
    #[arg(long, value_name = "SOURCE")]
    source: Option<String>,
    /// With --app: only records at this level or above (trace, debug, info,
    /// warn, error, critical).
    #[arg(long, value_name = "LEVEL")]
    level: Option<String>,
    /// With --app: only records of this trace (32 hex digits, as in the
    /// traceparent header and the call log's TRACE column).
    #[arg(long, value_name = "TRACE_ID")]
    trace: Option<String>,
    /// Only requests that matched this route pattern, as the manifest writes
    /// it (e.g. `/api/...`).
    #[arg(long, value_name = "PATTERN")]
    route: Option<String>,
    /// Only these statuses: a code (`404`), a class (`5xx`), or several
    /// separated by commas (`404,5xx`).
    #[arg(long, value_name = "STATUS")]
    status: Option<String>,
    /// Only requests that arrived (records made) at or after this time.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only requests that arrived before this time.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// How many of the newest matching rows (records) to show (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: usize,
    /// After the rows so far, print each new matching request as it
    /// finishes (record as it is made), until the host stops (Ctrl-C to
    /// quit).
    #[arg(long, short)]
    follow: bool,
    /// Print each row as a line of JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// The table's header.
const HEADER: [&str; 11] = [
    "TIME",
    "CLIENT",
    "METHOD",
    "PATH",
    "STATUS",
    "SERVED-BY",
    "LATENCY",
    "BYTES",
    "SUBJECT",
    "TRACE",
    "REJECTED",
];
/// Column widths while following (rows cannot be measured in advance).
const FOLLOW_WIDTHS: [usize; 11] = [24, 15, 6, 24, 6, 20, 8, 12, 12, 32, 0];

/// The table's header with --app.
const APP_HEADER: [&str; 6] = [
    "TIME",
    "LEVEL",
    "COMPONENT@VERSION",
    "SOURCE",
    "TRACE",
    "MESSAGE",
];
/// Column widths while following with --app.
const APP_FOLLOW_WIDTHS: [usize; 6] = [24, 8, 24, 6, 32, 0];

impl Logs {
    pub fn execute(self) -> anyhow::Result<()> {
        self.check()?;
        if self.app {
            return self.app_logs();
        }
        let client = self.admin.connect()?;
        let limit = self.limit.to_string();
        let path = with_query(
            "/v1/calls",
            [
                ("component", self.component.as_deref()),
                ("route", self.route.as_deref()),
                ("status", self.status.as_deref()),
                ("since", self.since.as_deref()),
                ("until", self.until.as_deref()),
                ("limit", Some(limit.as_str())),
                ("follow", self.follow.then_some("1")),
            ],
        );
        show(
            &client,
            &path,
            self.follow,
            self.json,
            &View {
                header: &HEADER,
                follow_widths: &FOLLOW_WIDTHS,
                cells,
                none: "no calls match",
                lagged: "rows skipped: this terminal fell behind; see them with --since",
                item: "row",
            },
        )
    }

    /// `atoll logs --app`: log records from `GET /v1/logs`.
    fn app_logs(&self) -> anyhow::Result<()> {
        let client = self.admin.connect()?;
        let limit = self.limit.to_string();
        let path = with_query(
            "/v1/logs",
            [
                ("component", self.component.as_deref()),
                ("source", self.source.as_deref()),
                ("level", self.level.as_deref()),
                ("since", self.since.as_deref()),
                ("trace_id", self.trace.as_deref()),
                ("limit", Some(limit.as_str())),
                ("follow", self.follow.then_some("1")),
            ],
        );
        show(
            &client,
            &path,
            self.follow,
            self.json,
            &View {
                header: &APP_HEADER,
                follow_widths: &APP_FOLLOW_WIDTHS,
                cells: app_cells,
                none: "no log records match",
                lagged: "records skipped: this terminal fell behind; see them without --follow",
                item: "record",
            },
        )
    }

    /// Refuses bad flags before asking the host, naming the flag.
    fn check(&self) -> anyhow::Result<()> {
        let given = |flag: &'static str, set: bool| set.then_some(flag);
        if self.app {
            let calls_only = [
                given("--route", self.route.is_some()),
                given("--status", self.status.is_some()),
                given("--until", self.until.is_some()),
            ];
            if let Some(flag) = calls_only.into_iter().flatten().next() {
                bail!(
                    "{flag} applies to the call log, not to --app log records; leave out one or the other"
                );
            }
        } else {
            let app_only = [
                given("--source", self.source.is_some()),
                given("--level", self.level.is_some()),
                given("--trace", self.trace.is_some()),
            ];
            if let Some(flag) = app_only.into_iter().flatten().next() {
                bail!(
                    "{flag} applies to log records: add --app (without it, atoll logs shows the call log)"
                );
            }
        }
        if let Some(s) = &self.source {
            s.parse::<Source>()
                .map_err(|e| anyhow::anyhow!("--source: {e}"))?;
        }
        if let Some(l) = &self.level {
            l.parse::<Level>()
                .map_err(|e| anyhow::anyhow!("--level: {e}"))?;
        }
        if let Some(t) = &self.trace {
            t.parse::<TraceId>()
                .map_err(|e| anyhow::anyhow!("--trace: {e}"))?;
        }
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            bail!(
                "--limit {} is not valid; give a number from 1 to {MAX_LIMIT}",
                self.limit
            );
        }
        if let Some(s) = &self.status {
            StatusFilter::parse(s).map_err(|e| anyhow::anyhow!("--status: {e}"))?;
        }
        let now = calllog::now_ms();
        for (flag, value) in [("--since", &self.since), ("--until", &self.until)] {
            if let Some(v) = value {
                calllog::parse_time(v, now).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
            }
        }
        Ok(())
    }
}

fn cells(r: &CallRecord) -> Vec<String> {
    let or_dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(r.time_ms));
    let served_by = match (&r.component, &r.version, &r.backend) {
        (Some(c), Some(v), _) => format!("{c}@{v}"),
        (Some(c), None, _) => c.clone(),
        (None, _, Some(b)) => b.clone(),
        (None, _, None) => "-".into(),
    };
    let cut = if r.complete { "" } else { "*" };
    vec![
        time.to_string(),
        r.client.clone(),
        r.method.clone(),
        r.path.clone(),
        r.status.to_string(),
        served_by,
        latency(r.latency_us),
        format!("{}/{}{cut}", r.bytes_in, r.bytes_out),
        or_dash(&r.subject),
        if r.trace_id.is_empty() {
            "-".into()
        } else {
            r.trace_id.clone()
        },
        or_dash(&r.rejected),
    ]
}

/// `850µs`, `12.3ms`, `1.25s`.
fn latency(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// A log record's cells.
fn app_cells(r: &LogRecord) -> Vec<String> {
    let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(r.time_ms));
    let who = match (r.component.is_empty(), r.version.is_empty()) {
        (true, _) => "-".to_string(),
        (false, true) => r.component.to_string(),
        (false, false) => format!("{}@{}", r.component, r.version),
    };
    let mut message = one_line(&r.message);
    if r.truncated > 0 {
        message.push_str(&format!(" [{} more bytes cut]", r.truncated));
    }
    vec![
        time.to_string(),
        r.level.to_string(),
        who,
        r.source.to_string(),
        r.trace_id.map_or_else(|| "-".into(), |t| t.to_string()),
        message,
    ]
}

/// `s` with control characters escaped (`\\n`, `\\t`, `\\u{1b}`), so one
/// record prints as one line.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A row with fixed widths; a longer cell pushes the rest right.
/// How one kind of item (call rows, log records) is printed.
struct View<'a, T> {
    header: &'a [&'a str],
    follow_widths: &'a [usize],
    cells: fn(&T) -> Vec<String>,
    /// Printed when nothing matches.
    none: &'a str,
    /// After "(N " when a follower fell behind.
    lagged: &'a str,
    /// What one item is called in errors.
    item: &'a str,
}

/// GETs `path` and prints the items as a table or JSON lines; with
/// `follow`, keeps printing new ones (fixed-width columns) until the host
/// ends the stream.
fn show<T: serde::Serialize + serde::de::DeserializeOwned>(
    client: &super::client::AdminClient,
    path: &str,
    follow: bool,
    json: bool,
    view: &View<'_, T>,
) -> anyhow::Result<()> {
    if !follow {
        let items: Vec<T> = client.get(path)?;
        if json {
            for item in &items {
                println!("{}", serde_json::to_string(item)?);
            }
        } else if items.is_empty() {
            println!("{}", view.none);
        } else {
            print!(
                "{}",
                table(view.header, items.iter().map(view.cells).collect())
            );
        }
        return Ok(());
    }
    if !json {
        let header = view.header.iter().map(|h| h.to_string()).collect();
        println!("{}", fixed_line(header, view.follow_widths));
    }
    client.get_lines(path, |line| {
        if line.is_empty() {
            return Ok(());
        }
        let value: serde_json::Value = serde_json::from_slice(line).context(
            "the admin API sent a line that is not JSON; is the host the same version?",
        )?;
        if let Some(n) = value.get("lagged") {
            eprintln!("({n} {})", view.lagged);
            return Ok(());
        }
        let item: T = serde_json::from_value(value).with_context(|| {
            format!(
                "the admin API sent a {} this atoll does not understand; is the host the same version?",
                view.item
            )
        })?;
        if json {
            println!("{}", serde_json::to_string(&item)?);
        } else {
            println!("{}", fixed_line((view.cells)(&item), view.follow_widths));
        }
        Ok(())
    })?;
    // The host ended the stream: it is stopping.
    eprintln!("the host stopped");
    Ok(())
}

fn fixed_line(cells: Vec<String>, widths: &[usize]) -> String {
    let mut line = String::new();
    for (cell, &w) in cells.iter().zip(widths) {
        line.push_str(&format!("{cell:<w$}  "));
    }
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> CallRecord {
        CallRecord {
            time_ms: 1_767_366_245_123,
            client: "127.0.0.1".into(),
            method: "GET".into(),
            path: "/hello".into(),
            route: Some("/hello".into()),
            component: Some("hello".into()),
            version: Some("1.0.0".into()),
            status: 200,
            latency_us: 1_234,
            bytes_out: 12,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            complete: true,
            ..CallRecord::default()
        }
    }

    #[test]
    fn records_show_every_column() {
        let component: std::sync::Arc<str> = "orders".into();
        let mut out = LogRecord::new(Level::Info, Source::Stdout, "line\twith\ncontrols\u{1b}")
            .from(&component, &"1.2.0".into())
            .in_trace(Some(TraceId(0x0af7651916cd43dd8448eb211c80319c)));
        out.time_ms = 1_767_366_245_123;
        let mut host = LogRecord::new(Level::Warn, Source::Host, "admin request refused");
        host.time_ms = out.time_ms;
        let mut cut = out.clone();
        cut.level = Level::Critical;
        cut.source = Source::Log;
        cut.message = "xx".into();
        cut.truncated = 1_040_384;
        let text = table(
            &APP_HEADER,
            [out, host, cut].iter().map(app_cells).collect(),
        );
        let expected = "\
TIME                      LEVEL     COMPONENT@VERSION  SOURCE  TRACE                             MESSAGE
2026-01-02T15:04:05.123Z  info      orders@1.2.0       stdout  0af7651916cd43dd8448eb211c80319c  line\\twith\\ncontrols\\u{1b}
2026-01-02T15:04:05.123Z  warn      -                  host    -                                 admin request refused
2026-01-02T15:04:05.123Z  critical  orders@1.2.0       log     0af7651916cd43dd8448eb211c80319c  xx [1040384 more bytes cut]
";
        assert_eq!(text, expected);
    }

    #[test]
    fn rows_show_every_column() {
        let mut rejected = row();
        rejected.path = "/nope".into();
        rejected.status = 404;
        rejected.component = None;
        rejected.version = None;
        rejected.route = None;
        rejected.latency_us = 85;
        rejected.bytes_out = 10;
        rejected.rejected = Some("not_found".into());
        let mut proxied = row();
        proxied.component = None;
        proxied.backend = Some("http://127.0.0.1:9001".into());
        proxied.subject = Some("alice".into());
        proxied.latency_us = 2_500_000;
        proxied.bytes_in = 5;
        proxied.complete = false;
        let out = table(
            &HEADER,
            [row(), rejected, proxied].iter().map(cells).collect(),
        );
        let expected = "\
TIME                      CLIENT     METHOD  PATH    STATUS  SERVED-BY              LATENCY  BYTES  SUBJECT  TRACE                             REJECTED
2026-01-02T15:04:05.123Z  127.0.0.1  GET     /hello  200     hello@1.0.0            1.2ms    0/12   -        0af7651916cd43dd8448eb211c80319c  -
2026-01-02T15:04:05.123Z  127.0.0.1  GET     /nope   404     -                      85µs     0/10   -        0af7651916cd43dd8448eb211c80319c  not_found
2026-01-02T15:04:05.123Z  127.0.0.1  GET     /hello  200     http://127.0.0.1:9001  2.50s    5/12*  alice    0af7651916cd43dd8448eb211c80319c  -
";
        assert_eq!(out, expected);
        assert_eq!(
            fixed_line(cells(&row()), &FOLLOW_WIDTHS),
            "2026-01-02T15:04:05.123Z  127.0.0.1        GET     /hello                    200     hello@1.0.0           1.2ms     0/12          -             0af7651916cd43dd8448eb211c80319c  -"
        );
    }
}
