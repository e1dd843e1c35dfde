use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;

use super::client::{AdminArgs, with_query};
use super::table;
use crate::admin::MAX_LIMIT;
use crate::gateway::calllog::{self, CallRecord, StatusFilter};

/// Show the gateway's call log: one row per request, rejected ones included,
/// the newest `--limit` matching rows, oldest first.
///
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
/// `--since` and `--until` take a duration ago (`10m`, `2h`, `1d`) or an
/// RFC 3339 time (`2026-01-02T15:04:05Z`, `2026-01-02T17:04:05+02:00`).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct Logs {
    /// Only requests served by this component.
    #[arg(long, value_name = "NAME")]
    component: Option<String>,
    /// Only requests that matched this route pattern, as the manifest writes
    /// it (e.g. `/api/...`).
    #[arg(long, value_name = "PATTERN")]
    route: Option<String>,
    /// Only these statuses: a code (`404`), a class (`5xx`), or several
    /// separated by commas (`404,5xx`).
    #[arg(long, value_name = "STATUS")]
    status: Option<String>,
    /// Only requests that arrived at or after this time.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only requests that arrived before this time.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// How many of the newest matching rows to show (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit: usize,
    /// After the rows so far, print each new matching request as it
    /// finishes, until the host stops (Ctrl-C to quit).
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

impl Logs {
    pub fn execute(self) -> anyhow::Result<()> {
        self.check()?;
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
        if !self.follow {
            let rows: Vec<CallRecord> = client.get(&path)?;
            if self.json {
                for row in &rows {
                    println!("{}", serde_json::to_string(row)?);
                }
            } else if rows.is_empty() {
                println!("no calls match");
            } else {
                print!("{}", table(&HEADER, rows.iter().map(cells).collect()));
            }
            return Ok(());
        }
        if !self.json {
            println!("{}", fixed_line(HEADER.map(String::from).to_vec()));
        }
        client.get_lines(&path, |line| {
            if line.is_empty() {
                return Ok(());
            }
            let value: serde_json::Value = serde_json::from_slice(line)
                .context("the admin API sent a line that is not JSON; is the host the same version?")?;
            if let Some(n) = value.get("lagged") {
                eprintln!("({n} rows skipped: this terminal fell behind; see them with --since)");
                return Ok(());
            }
            let row: CallRecord = serde_json::from_value(value)
                .context("the admin API sent a row this atoll does not understand; is the host the same version?")?;
            if self.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                println!("{}", fixed_line(cells(&row)));
            }
            Ok(())
        })?;
        // The host ended the stream: it is stopping.
        eprintln!("the host stopped");
        Ok(())
    }

    /// Refuses bad flags before asking the host, naming the flag.
    fn check(&self) -> anyhow::Result<()> {
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

/// A row with [`FOLLOW_WIDTHS`]; a longer cell pushes the rest right.
fn fixed_line(cells: Vec<String>) -> String {
    let mut line = String::new();
    for (cell, w) in cells.iter().zip(FOLLOW_WIDTHS) {
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
            fixed_line(cells(&row())),
            "2026-01-02T15:04:05.123Z  127.0.0.1        GET     /hello                    200     hello@1.0.0           1.2ms     0/12          -             0af7651916cd43dd8448eb211c80319c  -"
        );
    }
}
