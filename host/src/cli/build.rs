use std::path::PathBuf;

use clap::Args;

use crate::build::{BuildOptions, build};

/// Build a Rust guest crate into a WASI 0.2 component (rustup's wasm32-wasip2
/// target if installed, else the offline Debian toolchain).
#[derive(Debug, Args)]
pub struct Build {
    /// The crate (or workspace) directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Cargo target directory (default: the crate's own, or CARGO_TARGET_DIR).
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// Build without optimizations.
    #[arg(long)]
    debug: bool,
    /// Build every member of the workspace.
    #[arg(long)]
    workspace: bool,
}

impl Build {
    pub fn execute(self) -> anyhow::Result<()> {
        let built = build(
            &self.dir,
            &BuildOptions {
                target_dir: self.target_dir,
                debug: self.debug,
                workspace: self.workspace,
                quiet: false,
            },
        )?;
        for wasm in built {
            println!("{}", wasm.display());
        }
        Ok(())
    }
}
