//! The files in `data_dir` through which the CLI finds a running host: the
//! admin token and the discovery file.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Environment variable that sets the admin token (for the host and the CLI).
pub const TOKEN_ENV: &str = "ATOLL_ADMIN_TOKEN";
/// The token file in `data_dir`.
pub const TOKEN_FILE: &str = "admin.token";
/// The discovery file in `data_dir`.
pub const DISCOVERY_FILE: &str = "admin.json";

/// Where a running host's admin API listens (`<data_dir>/admin.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// The admin API's address.
    pub addr: SocketAddr,
    /// The host's process id.
    pub pid: u32,
}

/// The admin token: `ATOLL_ADMIN_TOKEN` when set, else the one in
/// `<data_dir>/admin.token`, which is created (32 random bytes, hex, mode
/// 0600) on first start and reused after.
pub fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    token_from(std::env::var_os(TOKEN_ENV), data_dir)
}

fn token_from(env: Option<std::ffi::OsString>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(token) = env {
        let token = token
            .into_string()
            .map_err(|_| anyhow::anyhow!("{TOKEN_ENV} is not valid UTF-8"))?;
        let token = token.trim();
        anyhow::ensure!(
            !token.is_empty(),
            "{TOKEN_ENV} is set but empty; unset it to use {} or give it a token",
            data_dir.join(TOKEN_FILE).display()
        );
        return Ok(token.to_string());
    }
    let path = data_dir.join(TOKEN_FILE);
    match read_token(&path)? {
        Some(token) => Ok(token),
        None => create_token(data_dir, &path),
    }
}

/// Reads a token file; `None` when it does not exist.
pub fn read_token(path: &Path) -> anyhow::Result<Option<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "{} is empty; delete it and the host makes a new token on its next start",
        path.display()
    );
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{} is readable by other users; restrict it with `chmod 600`",
            path.display()
        );
    }
    Ok(Some(token.to_string()))
}

fn create_token(data_dir: &Path, path: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data_dir {}", data_dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("generating the admin token: {e}"))?;
    let token = hex::encode(bytes);
    // create_new: two hosts starting at once cannot overwrite each other's token.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!("created the admin token in {}", path.display());
    Ok(token)
}

/// Writes `<data_dir>/admin.json` naming `addr` and this process.
pub fn write_discovery(data_dir: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let path = data_dir.join(DISCOVERY_FILE);
    let discovery = Discovery {
        addr,
        pid: std::process::id(),
    };
    let json = serde_json::to_vec_pretty(&discovery)?;
    // Write then rename, so a reader never sees half a file.
    let tmp = data_dir.join(format!("{DISCOVERY_FILE}.{}.tmp", discovery.pid));
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads `<data_dir>/admin.json`; `None` when it does not exist.
pub fn read_discovery(data_dir: &Path) -> anyhow::Result<Option<Discovery>> {
    let path = discovery_path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&text).map(Some).with_context(|| {
        format!(
            "{} is not a discovery file; delete it and restart the host",
            path.display()
        )
    })
}

/// Removes `<data_dir>/admin.json` if this process wrote it (a newer host on
/// the same data_dir keeps its own). Errors are logged, not returned: this
/// runs on shutdown.
pub fn remove_discovery(data_dir: &Path) {
    let path = discovery_path(data_dir);
    match read_discovery(data_dir) {
        Ok(Some(d)) if d.pid == std::process::id() => {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, "cannot remove {}", path.display());
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "leaving {} in place", path.display()),
    }
}

/// `<data_dir>/admin.json`.
pub fn discovery_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DISCOVERY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let token = token_from(None, &data_dir).unwrap();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let path = data_dir.join(TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(token_from(None, &data_dir).unwrap(), token);

        let other = tempfile::tempdir().unwrap();
        assert_ne!(token_from(None, other.path()).unwrap(), token);
    }

    #[test]
    fn the_environment_wins_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "from-file\n").unwrap();
        let env = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            token_from(env(" from-env\n"), dir.path()).unwrap(),
            "from-env"
        );
        assert_eq!(token_from(None, dir.path()).unwrap(), "from-file");
        let e = token_from(env(" "), dir.path()).unwrap_err().to_string();
        assert!(e.contains("ATOLL_ADMIN_TOKEN is set but empty"), "{e}");
        // Nothing was created for the environment's token.
        let fresh = tempfile::tempdir().unwrap();
        token_from(env("t"), fresh.path()).unwrap();
        assert!(!fresh.path().join(TOKEN_FILE).exists());
    }

    #[test]
    fn an_existing_token_file_is_trimmed_and_an_empty_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(read_token(&path).unwrap(), None);
        std::fs::write(&path, "  secret \n").unwrap();
        assert_eq!(read_token(&path).unwrap().as_deref(), Some("secret"));
        std::fs::write(&path, "\n").unwrap();
        let e = read_token(&path).unwrap_err().to_string();
        assert!(e.contains("is empty; delete it"), "{e}");
    }

    #[test]
    fn discovery_round_trips_and_is_removed_only_by_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_discovery(dir.path()).unwrap(), None);
        let addr: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        write_discovery(dir.path(), addr).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(DISCOVERY_FILE)).unwrap())
                .unwrap();
        assert_eq!(json["addr"], "127.0.0.1:8081");
        assert_eq!(json["pid"], std::process::id());
        let d = read_discovery(dir.path()).unwrap().unwrap();
        assert_eq!(d.addr, addr);
        remove_discovery(dir.path());
        assert_eq!(read_discovery(dir.path()).unwrap(), None);
        // Removing twice is fine.
        remove_discovery(dir.path());

        // Another process's file stays.
        let other = Discovery {
            addr,
            pid: std::process::id().wrapping_add(1),
        };
        std::fs::write(
            dir.path().join(DISCOVERY_FILE),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        remove_discovery(dir.path());
        assert_eq!(read_discovery(dir.path()).unwrap(), Some(other));
    }

    #[test]
    fn a_garbled_discovery_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DISCOVERY_FILE), "{").unwrap();
        let e = format!("{:#}", read_discovery(dir.path()).unwrap_err());
        assert!(e.contains("delete it and restart the host"), "{e}");
    }
}
