use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::Manifest;
use crate::host::RunningHost;

/// Load the components of an atoll.toml and serve them until Ctrl-C.
#[derive(Debug, Args)]
pub struct Up {
    /// The manifest.
    #[arg(default_value = "atoll.toml")]
    manifest: PathBuf,
    /// Listen address, overriding `[host] listen` (e.g. 127.0.0.1:0 for any free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin API listen address, overriding `[host] admin_listen` (e.g. 127.0.0.1:0).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Data directory, overriding `[host] data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Rebuild and hot swap a component when its source (crate directory or
    /// .wasm file) changes; a build that fails, or a version that fails to
    /// link or pass its health check, leaves the running version serving.
    #[arg(long)]
    watch: bool,
}

impl Up {
    pub fn execute(self) -> anyhow::Result<()> {
        let mut manifest = Manifest::load(&self.manifest)?;
        let runtime = super::runtime()?;
        if let Some(l) = self.listen {
            manifest.host.listen = l;
        }
        if let Some(a) = self.admin_listen {
            manifest.host.admin_listen = a;
        }
        if let Some(d) = self.data_dir {
            manifest.host.data_dir = d;
        }
        runtime.block_on(async move {
            let routes: Vec<String> = manifest.edge.routes.iter().map(route_line).collect();
            let data_dir = manifest.host.data_dir.clone();
            let topics: Vec<String> = manifest
                .components
                .values()
                .flat_map(|c| {
                    c.subscriptions
                        .iter()
                        .map(move |s| format!("  {} -> {} (group {})", s.topic, c.name, s.group))
                })
                .collect();
            let host = RunningHost::start(manifest).await?;
            if self.watch {
                host.watch_sources();
            }
            // Tests and scripts read these lines to find the ports.
            let scheme = if host.gateway().tls().is_some() {
                "https"
            } else {
                "http"
            };
            println!("atoll listening on {scheme}://{}", host.addr());
            let token = match std::env::var_os(crate::admin::TOKEN_ENV) {
                Some(_) => format!("token from ${}", crate::admin::TOKEN_ENV),
                None => format!(
                    "token in {}",
                    data_dir.join(crate::admin::TOKEN_FILE).display()
                ),
            };
            println!("atoll admin on http://{} ({token})", host.admin_addr());
            if let Some(traces) = host.trace_export() {
                println!("atoll traces to {traces}");
            }
            if let Some(m) = host.metrics_push() {
                println!("atoll metrics to {}", m.describe());
            }
            for r in routes.iter().chain(&topics) {
                println!("{r}");
            }
            wait_for_signal().await?;
            tracing::info!("signal received: finishing in-flight requests");
            // The host sends the spans of its last requests as it stops.
            host.shutdown().await
        })
    }
}

/// `  /orders/... -> orders (auth idp, scopes orders:write, rate limit 10/1s)`.
fn route_line(r: &crate::config::RouteSpec) -> String {
    use crate::config::RouteTarget;
    let target = match &r.target {
        RouteTarget::Component(c) => c.clone(),
        RouteTarget::Upstream(u) => format!("upstream {u}"),
        RouteTarget::Static(s) => format!("files in {}", s.dir.display()),
    };
    let mut policy = Vec::new();
    if let Some(a) = &r.auth {
        policy.push(format!("auth {a}"));
    }
    if !r.scopes.is_empty() {
        policy.push(format!("scopes {}", r.scopes.join(" ")));
    }
    if !r.roles.is_empty() {
        policy.push(format!("roles {}", r.roles.join(" ")));
    }
    if let Some(l) = &r.rate_limit {
        policy.push(format!(
            "rate limit {}/{}",
            l.rate,
            humantime::format_duration(l.per)
        ));
    }
    match policy.is_empty() {
        true => format!("  {} -> {target}", r.route),
        false => format!("  {} -> {target} ({})", r.route, policy.join(", ")),
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
