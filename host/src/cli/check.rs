use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::Manifest;
use crate::host::LoadedApp;

/// Validate an atoll.toml and load (build, compile, link) its components
/// without serving. Nothing in the data_dir is touched (stores, registry,
/// artifact cache): the check runs in a temporary directory, so it is safe
/// next to a running host.
#[derive(Debug, Args)]
pub struct Check {
    /// The manifest.
    #[arg(default_value = "atoll.toml")]
    manifest: PathBuf,
}

impl Check {
    pub fn execute(self) -> anyhow::Result<()> {
        let mut manifest = Manifest::load(&self.manifest)?;
        let n = manifest.components.len();
        let scratch = tempfile::Builder::new()
            .prefix("atoll-check-")
            .tempdir()
            .context("creating a temporary directory for the check")?;
        manifest.host.data_dir = scratch.path().to_path_buf();
        super::runtime()?.block_on(LoadedApp::load(manifest))?;
        println!("{}: ok ({n} components)", self.manifest.display());
        Ok(())
    }
}
