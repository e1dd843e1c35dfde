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
    /// Data directory, overriding `[host] data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Up {
    pub fn execute(self) -> anyhow::Result<()> {
        let mut manifest = Manifest::load(&self.manifest)?;
        if let Some(l) = self.listen {
            manifest.host.listen = l;
        }
        if let Some(d) = self.data_dir {
            manifest.host.data_dir = d;
        }
        super::runtime()?.block_on(async move {
            let routes: Vec<String> = manifest
                .components
                .values()
                .flat_map(|c| c.routes.iter().map(move |r| format!("  {r} -> {}", c.name)))
                .collect();
            let host = RunningHost::start(manifest).await?;
            // Tests and scripts read this line to find the port.
            println!("atoll listening on http://{}", host.addr());
            for r in routes {
                println!("{r}");
            }
            wait_for_signal().await?;
            tracing::info!("signal received: finishing in-flight requests");
            host.shutdown().await
        })
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
