use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http::{HeaderName, HeaderValue};

use super::client::{AdminArgs, segment, with_query};
use crate::admin::{HEADER_PREFIX, MAX_BODY};
use crate::bus::Published;

/// Publish a message to a topic of a running host (through its admin API).
///
/// The payload is --data, the contents of --file, or standard input. The
/// message reaches every subscription of the topic. Publishing again with the
/// same --id within the topic's dedup window stores nothing new.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  atoll publish orders --data '{\"order\": 42}' --id order-42 -H content-type=application/json
  cat event.json | atoll publish orders --key customer-7")]
pub struct Publish {
    /// The topic (declared under `[topics]` in atoll.toml).
    topic: String,
    /// The payload, as text.
    #[arg(long, value_name = "TEXT", conflicts_with = "file")]
    data: Option<String>,
    /// Read the payload from this file.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Idempotency key: a message with an id already published to the topic
    /// within its dedup window is not stored again (default: a fresh id).
    #[arg(long)]
    id: Option<String>,
    /// Partition key: messages with the same key are handled one at a time,
    /// in publish order, per subscription.
    #[arg(long)]
    key: Option<String>,
    /// A message header (repeatable). Names are case-insensitive and arrive
    /// lower-cased.
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<Header>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// One `-H NAME=VALUE`, as the request header that carries it.
#[derive(Debug, Clone)]
struct Header {
    name: HeaderName,
    value: HeaderValue,
}

fn parse_header(arg: &str) -> Result<Header, String> {
    let Some((name, value)) = arg.split_once('=') else {
        return Err("write it as NAME=VALUE, e.g. content-type=application/json".into());
    };
    let name = name.trim();
    if name.is_empty() {
        return Err("the header name is empty; write NAME=VALUE".into());
    }
    let header_name =
        HeaderName::from_bytes(format!("{HEADER_PREFIX}{name}").as_bytes()).map_err(|_| {
            format!("`{name}` is not a header name (use letters, digits and !#$%&'*+-.^_`|~)")
        })?;
    let value = HeaderValue::from_bytes(value.as_bytes())
        .map_err(|_| format!("the value of `{name}` contains a control character"))?;
    Ok(Header {
        name: header_name,
        value,
    })
}

impl Publish {
    pub fn execute(self) -> anyhow::Result<()> {
        let payload = self.payload()?;
        let client = self.admin.connect()?;
        let path = with_query(
            &format!("/v1/topics/{}/messages", segment(&self.topic)),
            [("id", self.id.as_deref()), ("key", self.key.as_deref())],
        );
        let headers = self
            .headers
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect();
        let published: Published = client.post(&path, headers, payload)?;
        if published.duplicate {
            println!(
                "duplicate: {} was already published within the dedup window (not stored again)",
                published.id
            );
        } else {
            println!("published {}", published.id);
        }
        Ok(())
    }

    fn payload(&self) -> anyhow::Result<Bytes> {
        let too_large = || {
            anyhow::anyhow!(
                "the payload is larger than {} MiB, the most a topic accepts",
                MAX_BODY >> 20
            )
        };
        if let Some(data) = &self.data {
            return Ok(Bytes::from(data.clone()));
        }
        let mut payload = Vec::new();
        let read = match &self.file {
            Some(path) => std::fs::File::open(path)
                .and_then(|f| f.take(MAX_BODY + 1).read_to_end(&mut payload))
                .with_context(|| format!("reading the payload from {}", path.display())),
            None => {
                let stdin = std::io::stdin();
                if stdin.is_terminal() {
                    bail!("give --data, --file or pipe the payload");
                }
                stdin
                    .lock()
                    .take(MAX_BODY + 1)
                    .read_to_end(&mut payload)
                    .context("reading the payload from standard input")
            }
        }?;
        if read as u64 > MAX_BODY {
            return Err(too_large());
        }
        Ok(Bytes::from(payload))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        publish: Publish,
    }

    fn parse(args: &[&str]) -> Result<Publish, String> {
        Cli::try_parse_from(std::iter::once("publish").chain(args.iter().copied()))
            .map(|c| c.publish)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn headers_are_name_value_pairs() {
        let p = parse(&[
            "t",
            "-H",
            "Content-Type=application/json",
            "--header",
            "x=a=b",
            "-H",
            "e=",
        ])
        .unwrap();
        let got: Vec<(&str, &[u8])> = p
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_bytes()))
            .collect();
        assert_eq!(
            got,
            [
                ("atoll-header-content-type", &b"application/json"[..]),
                ("atoll-header-x", b"a=b"),
                ("atoll-header-e", b""),
            ]
        );
        for (arg, why) in [
            ("novalue", "write it as NAME=VALUE"),
            ("=v", "the header name is empty"),
            ("a b=v", "`a b` is not a header name"),
            ("a=\u{7}", "control character"),
        ] {
            let e = parse(&["t", "-H", arg]).unwrap_err();
            assert!(e.contains("--header <NAME=VALUE>"), "{arg}: {e}");
            assert!(e.contains(why), "{arg}: {e}");
        }
    }

    #[test]
    fn data_and_file_exclude_each_other() {
        let e = parse(&["t", "--data", "x", "--file", "f"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let p = parse(&["t", "--data", "x", "--id", "i", "--key", "k"]).unwrap();
        assert_eq!(p.payload().unwrap(), Bytes::from("x"));
    }

    #[test]
    fn the_payload_comes_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.bin");
        std::fs::write(&path, [0u8, 1, 2]).unwrap();
        let p = parse(&["t", "--file", path.to_str().unwrap()]).unwrap();
        assert_eq!(p.payload().unwrap(), Bytes::from_static(&[0, 1, 2]));
        let p = parse(&["t", "--file", "/nonexistent/p"]).unwrap();
        let e = format!("{:#}", p.payload().unwrap_err());
        assert!(e.contains("reading the payload from /nonexistent/p"), "{e}");
    }
}
