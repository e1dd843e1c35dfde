//! The local identity provider for development: an Ed25519 key in
//! `data_dir/auth/local-ed25519.pem` (PKCS#8, mode 0600, made on first use)
//! that `atoll token issue` signs with and `local = true` providers trust.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use sha2::{Digest, Sha256};

use super::TokenRequest;
use super::jwks::{self, Key, KeySet};
use crate::config::AuthProvider;

/// The key file, relative to the data dir.
pub const LOCAL_KEY_FILE: &str = "auth/local-ed25519.pem";
/// The longest lifetime `issue_local` gives a token.
const MAX_TTL_SECS: u64 = 366 * 24 * 3600;

/// The host's local signing key and its key id.
struct LocalKey {
    signing: SigningKey,
    /// A short hash of the public key: the first 16 hex digits of its SHA-256.
    kid: String,
}

/// The local key, created (with a new random key) when it does not exist.
fn load_or_create(data_dir: &Path) -> anyhow::Result<LocalKey> {
    let path = data_dir.join(LOCAL_KEY_FILE);
    let signing = match std::fs::read_to_string(&path) {
        Ok(pem) => parse(&path, &pem)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path)?,
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the local auth key {}", path.display()));
        }
    };
    let kid = hex::encode(&Sha256::digest(signing.verifying_key().as_bytes())[..8]);
    Ok(LocalKey { signing, kid })
}

fn parse(path: &Path, pem: &str) -> anyhow::Result<SigningKey> {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{} is readable by other users; restrict it with `chmod 600`",
            path.display()
        );
    }
    SigningKey::from_pkcs8_pem(pem).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an Ed25519 private key in PKCS#8 PEM ({e}); delete it and a new key is made (tokens signed with the old one stop working)",
            path.display()
        )
    })
}

/// Writes a new key: to a private temporary file first, then linked into
/// place, so a concurrent reader never sees half a key and two processes
/// creating it at once agree on one (the loser reads the winner's).
fn create(path: &Path) -> anyhow::Result<SigningKey> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // The data dir as every other part makes it; `auth/` private to the user.
    if let Some(data_dir) = dir.parent() {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow::anyhow!("generating the local auth key: {e}"))?;
    let signing = SigningKey::from_bytes(&seed);
    let pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the local auth key: {e}"))?;
    let tmp: PathBuf = dir.join(format!(".local-ed25519.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(pem.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            tracing::info!("created the local auth key {}", path.display());
            Ok(signing)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading the local auth key {}", path.display()))?;
            parse(path, &pem)
        }
        Err(e) => Err(e).with_context(|| format!("writing the local auth key {}", path.display())),
    }
}

/// A local provider's key set: the one local key, for EdDSA.
pub(super) fn key_set(spec: &AuthProvider, data_dir: &Path) -> anyhow::Result<KeySet> {
    if !spec.algorithms.iter().any(|a| a == "EdDSA") {
        anyhow::bail!(
            "the local key signs with EdDSA, but `algorithms` is {}; leave `algorithms` out",
            spec.algorithms.join(", ")
        );
    }
    let local = load_or_create(data_dir)?;
    let key = Key {
        kind: "an Ed25519 key",
        decoding: DecodingKey::from_ed_der(local.signing.verifying_key().as_bytes()),
        validation: jwks::validation(spec, vec![Algorithm::EdDSA]),
    };
    Ok(KeySet::single(local.kid, key))
}

/// Signs a token with the host's local development key (made on first use):
/// `iss`, `aud`, `sub`, `iat`, `nbf`, `exp`, `scope` (space-separated, when
/// any) and `roles` (a list, when any); EdDSA with the key's `kid`.
pub fn issue_local(data_dir: &Path, req: &TokenRequest) -> anyhow::Result<String> {
    if req.subject.is_empty() || req.subject.chars().any(char::is_control) {
        anyhow::bail!("the subject must be non-empty text without control characters");
    }
    for (what, list) in [("scope", &req.scopes), ("role", &req.roles)] {
        if let Some(bad) = list
            .iter()
            .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            anyhow::bail!(
                "{what} {bad:?} is empty or contains whitespace; give each {what} separately"
            );
        }
    }
    let ttl = req.ttl.as_secs();
    if ttl == 0 || ttl > MAX_TTL_SECS {
        anyhow::bail!("the lifetime must be between 1s and 366d");
    }
    let local = load_or_create(data_dir)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({
        "iss": req.issuer,
        "aud": req.audience,
        "sub": req.subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    });
    if !req.scopes.is_empty() {
        claims["scope"] = req.scopes.join(" ").into();
    }
    if !req.roles.is_empty() {
        claims["roles"] = req.roles.clone().into();
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(local.kid);
    let der = local
        .signing
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encoding the local auth key: {e}"))?;
    let key = EncodingKey::from_ed_der(der.as_bytes());
    jsonwebtoken::encode(&header, &claims, &key).context("signing the token")
}
