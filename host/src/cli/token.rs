//! `atoll token issue`: access tokens from the local development identity
//! provider, for trying routes that need a token.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::{KeySource, Manifest};
use crate::gateway::auth::{self, LOCAL_AUDIENCE, LOCAL_ISSUER, TokenRequest};

/// Access tokens from the local development identity provider.
#[derive(Debug, Args)]
pub struct Token {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    Issue(Issue),
}

impl Token {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            TokenCommand::Issue(c) => c.execute(),
        }
    }
}

/// Sign an access token with the host's local key and print it (only it).
///
/// The key is data_dir/auth/local-ed25519.pem, made on first use. A host
/// with the same data_dir trusts the token on routes whose provider has
/// `local = true`:
///
///   [auth.dev]
///   local = true
///
///   [routes."/orders"]
///   auth = "dev"
///   scopes = ["orders:write"]
///
///   TOKEN=$(atoll token issue --sub alice --scope orders:write)
///   curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/orders
///
/// The token's iss and aud are the local provider's (by default
/// "atoll-local" and "atoll"); --aud picks another audience.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct Issue {
    /// The subject (`sub`): who the token speaks for.
    #[arg(long, value_name = "SUBJECT")]
    sub: String,
    /// A scope the token grants (repeat for more).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// A role the token grants (repeat for more).
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// How long the token is valid (e.g. 15m, 1h, 7d; at most 366d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The audience (`aud`), instead of the local provider's first one.
    #[arg(long, value_name = "AUDIENCE")]
    aud: Option<String>,
    /// The manifest whose data_dir holds the key (and whose `local = true`
    /// provider gives iss and aud).
    #[arg(long, value_name = "PATH", conflicts_with = "data_dir")]
    manifest: Option<PathBuf>,
    /// The data directory holding the key, instead of reading a manifest.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl Issue {
    fn execute(self) -> anyhow::Result<()> {
        let (data_dir, issuer, audiences) = match (&self.data_dir, &self.manifest) {
            (Some(dir), _) => (dir.clone(), LOCAL_ISSUER.to_string(), Vec::new()),
            (None, manifest) => {
                let path = manifest
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("atoll.toml"));
                if manifest.is_none() && !path.exists() {
                    anyhow::bail!(
                        "atoll.toml does not exist here; pass --manifest with the host's atoll.toml, or --data-dir"
                    );
                }
                let m = Manifest::load(&path)
                    .with_context(|| format!("reading {} to find the data_dir", path.display()))?;
                match m.edge.auth.values().find(|p| p.keys == KeySource::Local) {
                    Some(p) => (m.host.data_dir, p.issuer.clone(), p.audiences.clone()),
                    None => {
                        eprintln!(
                            "warning: {} has no provider with `local = true`; its host will not accept this token until one is added (e.g. `[auth.dev]` with `local = true`)",
                            path.display()
                        );
                        (m.host.data_dir, LOCAL_ISSUER.to_string(), Vec::new())
                    }
                }
            }
        };
        let audience = match self.aud {
            Some(aud) => {
                if !audiences.is_empty() && !audiences.contains(&aud) {
                    eprintln!(
                        "warning: the local provider accepts the audience {}, not `{aud}`",
                        audiences.join(", ")
                    );
                }
                aud
            }
            None => audiences
                .first()
                .cloned()
                .unwrap_or_else(|| LOCAL_AUDIENCE.to_string()),
        };
        let req = TokenRequest {
            subject: self.sub,
            scopes: self.scopes,
            roles: self.roles,
            ttl: self.ttl,
            audience,
            issuer,
        };
        let token = auth::issue_local(&data_dir, &req)?;
        println!("{token}");
        Ok(())
    }
}
