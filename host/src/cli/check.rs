use std::path::PathBuf;

use clap::Args;

use crate::config::Manifest;
use crate::host::LoadedApp;

/// Validate an atoll.toml and load (build, compile, link) its components without serving.
#[derive(Debug, Args)]
pub struct Check {
    /// The manifest.
    #[arg(default_value = "atoll.toml")]
    manifest: PathBuf,
}

impl Check {
    pub fn execute(self) -> anyhow::Result<()> {
        let manifest = Manifest::load(&self.manifest)?;
        let n = manifest.components.len();
        super::runtime()?.block_on(LoadedApp::load(manifest))?;
        println!("{}: ok ({n} components)", self.manifest.display());
        Ok(())
    }
}
