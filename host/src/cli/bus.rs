use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Subcommand};

use super::table;

use super::client::{AdminArgs, segment, with_query};
use crate::admin::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::bus::{DeadLetter, Overview};

/// Inspect and repair the message bus of a running host (through its admin API).
#[derive(Debug, Args)]
pub struct Bus {
    #[command(subcommand)]
    command: BusCommand,
}

#[derive(Debug, Subcommand)]
enum BusCommand {
    Ls(Ls),
    Dlq(Dlq),
    Replay(Replay),
}

impl Bus {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            BusCommand::Ls(c) => c.execute(),
            BusCommand::Dlq(c) => c.execute(),
            BusCommand::Replay(c) => c.execute(),
        }
    }
}

/// List topics and subscriptions with their counters.
///
/// DEPTH counts messages not yet handled (waiting, retrying or in flight);
/// DEAD counts the subscription's dead letters; DELIVERED, ACKED, RETRIED
/// and the topics' PUBLISHED and DUPLICATES count since the host started.
#[derive(Debug, Args)]
pub struct Ls {
    /// Print the admin API's JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

impl Ls {
    fn execute(self) -> anyhow::Result<()> {
        let client = self.admin.connect()?;
        if self.json {
            println!("{}", client.get_pretty("/v1/bus")?);
            return Ok(());
        }
        let overview: Overview = client.get("/v1/bus")?;
        print!("{}", render_overview(&overview));
        Ok(())
    }
}

/// List a topic's dead letters: messages a subscription gave up on.
///
/// Fix the cause, then send them again with `atoll bus replay`.
#[derive(Debug, Args)]
pub struct Dlq {
    /// The topic.
    topic: String,
    /// Only the dead letters of this subscription (its group as `atoll bus ls`
    /// shows it, or `topic/group`); default: all of the topic's.
    #[arg(long, short)]
    subscription: Option<String>,
    /// List at most this many, oldest first.
    #[arg(long, default_value_t = DEFAULT_LIMIT as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT as u64))]
    limit: u64,
    /// Print the admin API's JSON instead.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

impl Dlq {
    fn execute(self) -> anyhow::Result<()> {
        let client = self.admin.connect()?;
        let limit = self.limit.to_string();
        let path = with_query(
            &format!("/v1/bus/topics/{}/dead-letters", segment(&self.topic)),
            [
                ("subscription", self.subscription.as_deref()),
                ("limit", Some(limit.as_str())),
            ],
        );
        if self.json {
            println!("{}", client.get_pretty(&path)?);
            return Ok(());
        }
        let letters: Vec<DeadLetter> = client.get(&path)?;
        if letters.is_empty() {
            match &self.subscription {
                Some(s) => println!("no dead letters in topic {} for {s}", self.topic),
                None => println!("no dead letters in topic {}", self.topic),
            }
            return Ok(());
        }
        print!("{}", render_dead_letters(&letters));
        if letters.len() as u64 == self.limit {
            println!(
                "\n(showing the first {}; there may be more: raise --limit)",
                self.limit
            );
        }
        Ok(())
    }
}

/// Send dead letters back for delivery: all of a topic's, one
/// subscription's, or only the given ids.
#[derive(Debug, Args)]
pub struct Replay {
    /// The topic.
    topic: String,
    /// Only the dead letters of this subscription (its group as `atoll bus ls`
    /// shows it, or `topic/group`); default: all of the topic's.
    #[arg(long, short)]
    subscription: Option<String>,
    /// Only the message with this id (repeatable); default: every dead letter.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

impl Replay {
    fn execute(self) -> anyhow::Result<()> {
        #[derive(serde::Deserialize)]
        struct Replayed {
            replayed: u64,
        }
        let client = self.admin.connect()?;
        let params = std::iter::once(("subscription", self.subscription.as_deref()))
            .chain(self.ids.iter().map(|id| ("id", Some(id.as_str()))));
        let path = with_query(
            &format!("/v1/bus/topics/{}/replay", segment(&self.topic)),
            params,
        );
        let r: Replayed = client.post(&path, Vec::new(), Bytes::new())?;
        println!("replayed {} message(s)", r.replayed);
        Ok(())
    }
}

fn render_overview(overview: &Overview) -> String {
    if overview.topics.is_empty() {
        return "no topics; declare them under [topics] in atoll.toml\n".to_string();
    }
    let topics = overview
        .topics
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.published.to_string(),
                t.duplicates.to_string(),
                bytesize::ByteSize(t.max_payload).to_string(),
                humantime::format_duration(Duration::from_millis(t.dedup_window_ms)).to_string(),
            ]
        })
        .collect();
    let mut subscriptions = Vec::new();
    for t in &overview.topics {
        if t.subscriptions.is_empty() {
            let mut row = vec![t.name.clone()];
            row.resize(10, "-".to_string());
            subscriptions.push(row);
        }
        for s in &t.subscriptions {
            subscriptions.push(vec![
                t.name.clone(),
                s.group.clone(),
                if s.consumers.is_empty() {
                    "-".to_string()
                } else {
                    s.consumers.join(",")
                },
                s.depth.to_string(),
                s.in_flight.to_string(),
                s.retrying.to_string(),
                s.dead_letters.to_string(),
                s.delivered.to_string(),
                s.acked.to_string(),
                s.retried.to_string(),
            ]);
        }
    }
    format!(
        "{}\n{}",
        table(
            &[
                "TOPIC",
                "PUBLISHED",
                "DUPLICATES",
                "MAX-PAYLOAD",
                "DEDUP-WINDOW"
            ],
            topics
        ),
        table(
            &[
                "TOPIC",
                "SUBSCRIPTION",
                "CONSUMERS",
                "DEPTH",
                "IN-FLIGHT",
                "RETRYING",
                "DEAD",
                "DELIVERED",
                "ACKED",
                "RETRIED",
            ],
            subscriptions
        )
    )
}

fn render_dead_letters(letters: &[DeadLetter]) -> String {
    let mut out = String::new();
    for (i, d) in letters.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let dead_at =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(d.dead_at_ms));
        let mut preview: String = d
            .payload_preview
            .chars()
            .flat_map(|c| {
                // One line per field: escape newlines and other control characters.
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect();
        if d.payload_size > d.payload_preview.len() {
            preview.push('…');
        }
        let mut fields = vec![
            ("id", d.id.clone()),
            ("subscription", d.subscription.clone()),
            ("attempts", d.attempts.to_string()),
            ("reason", d.reason.clone()),
            (
                "last error",
                d.last_error.clone().unwrap_or_else(|| "-".into()),
            ),
            ("dead at", dead_at.to_string()),
        ];
        if let Some(key) = &d.partition_key {
            fields.push(("key", key.clone()));
        }
        fields.push(("payload", format!("{preview} ({} bytes)", d.payload_size)));
        for (name, value) in fields {
            out.push_str(&format!("{:<13} {value}\n", format!("{name}:")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::bus::{SubscriptionInfo, TopicInfo};

    use super::*;

    fn sub(group: &str, consumers: &[&str], depth: u64) -> SubscriptionInfo {
        SubscriptionInfo {
            id: format!("orders/{group}"),
            group: group.into(),
            consumers: consumers.iter().map(|c| c.to_string()).collect(),
            depth,
            in_flight: 1,
            retrying: 2,
            dead_letters: 3,
            delivered: 40,
            acked: 35,
            retried: 4,
            dead_lettered: 3,
            max_deliver: 5,
            prefetch: 16,
        }
    }

    #[test]
    fn ls_shows_topics_and_one_row_per_subscription() {
        let overview = Overview {
            topics: vec![
                TopicInfo {
                    name: "audit".into(),
                    max_payload: 1 << 20,
                    dedup_window_ms: 300_000,
                    published: 0,
                    duplicates: 0,
                    subscriptions: vec![],
                },
                TopicInfo {
                    name: "orders".into(),
                    max_payload: 64 << 10,
                    dedup_window_ms: 1_500,
                    published: 120,
                    duplicates: 3,
                    subscriptions: vec![
                        sub("billing", &["billing", "billing-v2"], 7),
                        sub("mail", &[], 0),
                    ],
                },
            ],
        };
        let expected = "\
TOPIC   PUBLISHED  DUPLICATES  MAX-PAYLOAD  DEDUP-WINDOW
audit   0          0           1.0 MiB      5m
orders  120        3           64.0 KiB     1s 500ms

TOPIC   SUBSCRIPTION  CONSUMERS           DEPTH  IN-FLIGHT  RETRYING  DEAD  DELIVERED  ACKED  RETRIED
audit   -             -                   -      -          -         -     -          -      -
orders  billing       billing,billing-v2  7      1          2         3     40         35     4
orders  mail          -                   0      1          2         3     40         35     4
";
        assert_eq!(render_overview(&overview), expected);
        assert!(render_overview(&Overview { topics: vec![] }).starts_with("no topics"));
    }

    #[test]
    fn dlq_shows_one_block_per_dead_letter() {
        let letter = |id: &str, last_error: Option<&str>, preview: &str, size: usize| DeadLetter {
            subscription: "orders/billing".into(),
            id: id.into(),
            seq: 7,
            reason: "max_deliver (5) reached".into(),
            attempts: 5,
            last_error: last_error.map(str::to_string),
            dead_at_ms: 1_700_000_000_123,
            published_at_ms: 1_699_999_999_000,
            partition_key: None,
            headers: vec![],
            payload_size: size,
            payload_preview: preview.into(),
        };
        let mut keyed = letter("b", None, "x", 1);
        keyed.partition_key = Some("customer-7".into());
        let text = render_dead_letters(&[
            letter("a", Some("trap: unreachable"), "{\"n\":\n1}", 300),
            keyed,
        ]);
        let expected = "\
id:           a
subscription: orders/billing
attempts:     5
reason:       max_deliver (5) reached
last error:   trap: unreachable
dead at:      2023-11-14T22:13:20.123Z
payload:      {\"n\":\\n1}… (300 bytes)

id:           b
subscription: orders/billing
attempts:     5
reason:       max_deliver (5) reached
last error:   -
dead at:      2023-11-14T22:13:20.123Z
key:          customer-7
payload:      x (1 bytes)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn limits_are_checked_by_the_parser() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            dlq: Dlq,
        }
        let e = Cli::try_parse_from(["dlq", "t", "--limit", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--limit"), "{e}");
        let e = Cli::try_parse_from(["dlq", "t", "--limit", "10001"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--limit"), "{e}");
        let c = Cli::try_parse_from(["dlq", "t"]).unwrap();
        assert_eq!(c.dlq.limit, 100);
    }
}
