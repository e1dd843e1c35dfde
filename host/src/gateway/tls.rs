//! TLS termination with rustls: the certificate chain and key come from PEM
//! files (`[gateway.tls]`), HTTP/2 and HTTP/1.1 are offered through ALPN, and
//! the files are read again when they change.
//!
//! One `ServerConfig` lives for the acceptor's whole life; its certificate
//! resolver reads the current key from an `ArcSwap`, so a reload swaps the
//! certificate for new handshakes while open connections keep theirs.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::TlsSpec;

/// How often [`TlsAcceptor::spawn_reload`] looks at the files. Polling the
/// contents (two small files) also catches what file watchers miss: a
/// Kubernetes secret's symlink swap, a copy that keeps the mtime, an editor
/// that writes a new inode.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Protocols offered in ALPN, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Accepts TLS connections with the current certificate.
pub struct TlsAcceptor {
    spec: TlsSpec,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// Digest of the files the current certificate was loaded from.
    loaded: [u8; 32],
}

/// The certificate new handshakes present.
struct Current(ArcSwap<CertifiedKey>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Current")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl TlsAcceptor {
    /// Loads the certificate and key; errors name the file and the problem.
    pub fn load(spec: &TlsSpec) -> anyhow::Result<Arc<TlsAcceptor>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = (read(&spec.cert, "cert")?, read(&spec.key, "key")?);
        let certified = certified_key(spec, &cert, &key, &provider)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(certified)));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS: the ring provider supports no protocol version")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(TlsAcceptor {
            spec: spec.clone(),
            provider,
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            loaded: digest(&cert, &key),
        }))
    }

    /// Reloads the files when they change, until `shutdown` flips or the
    /// acceptor is dropped. A file that does not load (half written, a key
    /// that does not match) keeps the previous certificate and is logged
    /// as an error once per content.
    pub fn spawn_reload(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        let mut seen = Seen {
            digest: Some(self.loaded),
            error: None,
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let Some(this) = this.upgrade() else { return };
                this.check(&mut seen).await;
            }
        })
    }

    /// Runs the handshake. The caller bounds it with a timeout.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// Reads the files; when their contents differ from the last look,
    /// loads them and swaps the certificate in, or logs why not.
    async fn check(&self, seen: &mut Seen) {
        let spec = &self.spec;
        let files = async {
            let cert = tokio::fs::read(&spec.cert).await;
            let cert = cert.map_err(|e| read_error(&spec.cert, "cert", e))?;
            let key = tokio::fs::read(&spec.key).await;
            let key = key.map_err(|e| read_error(&spec.key, "key", e))?;
            anyhow::Ok((cert, key))
        };
        let loaded = match files.await {
            Ok((cert, key)) => {
                let d = digest(&cert, &key);
                if seen.digest == Some(d) {
                    return;
                }
                seen.digest = Some(d);
                certified_key(spec, &cert, &key, &self.provider)
            }
            Err(e) => {
                // Load the files when they are back, even unchanged.
                seen.digest = None;
                Err(e)
            }
        };
        match loaded {
            Ok(certified) => {
                self.current.0.store(Arc::new(certified));
                seen.error = None;
                tracing::info!(cert = %spec.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                let e = format!("{e:#}");
                if seen.error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "TLS certificate not reloaded; new connections keep the previous one");
                    seen.error = Some(e);
                }
            }
        }
    }

    /// The leaf certificate new handshakes present.
    #[cfg(test)]
    fn leaf(&self) -> CertificateDer<'static> {
        self.current.0.load().cert[0].clone()
    }
}

/// What the reload task last saw.
struct Seen {
    /// Digest of the files last loaded or tried; `None` after a read error.
    digest: Option<[u8; 32]>,
    /// The last error logged, so a broken file is reported once.
    error: Option<String>,
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_le_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

fn read(path: &Path, setting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| read_error(path, setting, e))
}

fn read_error(path: &Path, setting: &str, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "TLS {setting} file {}: cannot read it: {e}; check `[gateway.tls] {setting}` (relative paths are from the manifest's directory)",
        path.display()
    )
}

/// Parses the chain and key and checks that they belong together.
fn certified_key(
    spec: &TlsSpec,
    cert: &[u8],
    key: &[u8],
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let (cert_file, key_file) = (spec.cert.display(), spec.key.display());
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| anyhow::anyhow!("TLS cert file {cert_file}: not valid PEM: {e}"))?;
    if chain.is_empty() {
        anyhow::bail!(
            "TLS cert file {cert_file}: no certificate in it; expected PEM blocks `-----BEGIN CERTIFICATE-----`, the server's certificate first"
        );
    }
    let key = match PrivateKeyDer::from_pem_slice(key) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            let encrypted = String::from_utf8_lossy(key).contains("ENCRYPTED PRIVATE KEY");
            anyhow::bail!(
                "TLS key file {key_file}: {}",
                if encrypted {
                    "the private key is encrypted; give an unencrypted one (`openssl pkcs8 -in KEY -nocrypt -topk8`)"
                } else {
                    "no private key in it; expected a PEM block `BEGIN PRIVATE KEY` (PKCS#8), `BEGIN RSA PRIVATE KEY` (PKCS#1) or `BEGIN EC PRIVATE KEY` (SEC1)"
                }
            );
        }
        Err(e) => anyhow::bail!("TLS key file {key_file}: not valid PEM: {e}"),
    };
    let signer = provider.key_provider.load_private_key(key).map_err(|e| {
        anyhow::anyhow!(
            "TLS key file {key_file}: unsupported private key ({e}); use an RSA, ECDSA P-256/P-384 or Ed25519 key"
        )
    })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            anyhow::bail!(
                "TLS key file {key_file} does not match the certificate in {cert_file} (their public keys differ); give the key the certificate was issued for, and the server's certificate first in the chain"
            )
        }
        Err(e) => anyhow::bail!("TLS cert file {cert_file}: not a usable certificate: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Self-signed P-256 certificates for CN=atoll-test-a and -b, valid until 2126.
    const CERT_A: &str = "-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUEQBpBxXAYxwtIsVVvMhPdqQssFIwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMYXRvbGwtdGVzdC1hMCAXDTI2MTEyMjExMjIyNFoYDzIxMjYx
MDI5MTEyMjI0WjAXMRUwEwYDVQQDDAxhdG9sbC10ZXN0LWEwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAATrf7f1fi+7c+tQm4GgLVaGiKo9y9/xcmYMHQiHimfLUNyI
metXniB7arCRaqphztqHX+a+3MBeqNNFLqjkx50Uo2kwZzAdBgNVHQ4EFgQUd8sj
g5HtWR1AwkDZmmK2jTmf9CIwHwYDVR0jBBgwFoAUd8sjg5HtWR1AwkDZmmK2jTmf
9CIwDwYDVR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZI
zj0EAwIDSAAwRQIhAPebNDYDozzJ/IF5ZOWwcR7IDm0AHQ+StZUgwjgi4bHSAiAs
oAbWwkhHnLO+BCPu6si1l+Zacko5RFxzbIFZgnOKQQ==
-----END CERTIFICATE-----
";
    const KEY_A: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKDYpAD+y/aKVc27P
m9+k0yWC/dMXEWB45XrWYVhafNChRANCAATrf7f1fi+7c+tQm4GgLVaGiKo9y9/x
cmYMHQiHimfLUNyImetXniB7arCRaqphztqHX+a+3MBeqNNFLqjkx50U
-----END PRIVATE KEY-----
";
    /// KEY_A as SEC1 (`BEGIN EC PRIVATE KEY`).
    const KEY_A_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEICg2KQA/sv2ilXNuz5vfpNMlgv3TFxFgeOV61mFYWnzQoAoGCCqGSM49
AwEHoUQDQgAE63+39X4vu3PrUJuBoC1WhoiqPcvf8XJmDB0Ih4pny1DciJnrV54g
e2qwkWqqYc7ah1/mvtzAXqjTRS6o5MedFA==
-----END EC PRIVATE KEY-----
";
    const CERT_B: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUEWmPaIzN9l15N/8fXGTzwYK9l2YwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMYXRvbGwtdGVzdC1iMCAXDTI2MTEyMjExMjIyNFoYDzIxMjYx
MDI5MTEyMjI0WjAXMRUwEwYDVQQDDAxhdG9sbC10ZXN0LWIwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAASreiSJmULP1j+IJREnq4MSM5UiUy17NdTlEw5N6gkOeSQ2
VksJWRGDNramXluFCOW0RrnQHxX9Ta3bTzUZ3hWso2kwZzAdBgNVHQ4EFgQURg2d
zUgrmseQo7KqThLv8dJFZY4wHwYDVR0jBBgwFoAURg2dzUgrmseQo7KqThLv8dJF
ZY4wDwYDVR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZI
zj0EAwIDSQAwRgIhAOQSiX9+8uOnjwT4WDeXFdzBR9+L68/SLdQWto6qU79cAiEA
2IqI0FxGiEURldf+TbTnbkdJ/uuK1Bs6QLs9u37hgaA=
-----END CERTIFICATE-----
";
    const KEY_B: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg89QWj+DSnHdvFonP
wS5LjTYoDikBIQ3VmhLJ+hIeHMehRANCAASreiSJmULP1j+IJREnq4MSM5UiUy17
NdTlEw5N6gkOeSQ2VksJWRGDNramXluFCOW0RrnQHxX9Ta3bTzUZ3hWs
-----END PRIVATE KEY-----
";
    /// An Ed448 key: valid PKCS#8 that ring cannot sign with.
    const KEY_ED448: &str = "-----BEGIN PRIVATE KEY-----
MEcCAQAwBQYDK2VxBDsEOcJChPKScZm3/hufEh9RRdbIlk/C5wcXA/Y2ZbOodRZQ
Kch19c3RxZrVgprdmxbdvjkt7BVv+qELTw==
-----END PRIVATE KEY-----
";

    struct Files {
        dir: tempfile::TempDir,
        spec: TlsSpec,
    }

    fn files(cert: &str, key: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let spec = TlsSpec {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        std::fs::write(&spec.cert, cert).unwrap();
        std::fs::write(&spec.key, key).unwrap();
        Files { dir, spec }
    }

    fn error(cert: &str, key: &str) -> (String, Files) {
        let f = files(cert, key);
        let e = match TlsAcceptor::load(&f.spec) {
            Ok(_) => panic!("loaded"),
            Err(e) => format!("{e:#}"),
        };
        (e, f)
    }

    fn leaf(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn loads_pkcs8_and_sec1_keys_and_a_combined_file() {
        for key in [KEY_A, KEY_A_SEC1] {
            let f = files(CERT_A, key);
            assert_eq!(TlsAcceptor::load(&f.spec).unwrap().leaf(), leaf(CERT_A));
        }
        // Certificate and key in one file, key first.
        let f = files(&format!("{KEY_A}{CERT_A}"), "");
        let spec = TlsSpec {
            cert: f.spec.cert.clone(),
            key: f.spec.cert.clone(),
        };
        assert_eq!(TlsAcceptor::load(&spec).unwrap().leaf(), leaf(CERT_A));
    }

    #[test]
    fn bad_files_are_named_with_the_problem() {
        let f = files(CERT_A, KEY_A);
        let missing = TlsSpec {
            cert: f.dir.path().join("nope.pem"),
            key: f.spec.key.clone(),
        };
        let e = format!("{:#}", TlsAcceptor::load(&missing).err().unwrap());
        assert!(
            e.starts_with(&format!(
                "TLS cert file {}: cannot read it: No such file or directory",
                missing.cert.display()
            )),
            "{e}"
        );
        assert!(e.contains("check `[gateway.tls] cert`"), "{e}");

        let (e, f) = error("hello, not a certificate\n", KEY_A);
        assert_eq!(
            e,
            format!(
                "TLS cert file {}: no certificate in it; expected PEM blocks `-----BEGIN CERTIFICATE-----`, the server's certificate first",
                f.spec.cert.display()
            )
        );
        let (e, f) = error(
            "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
            KEY_A,
        );
        assert!(
            e.starts_with(&format!(
                "TLS cert file {}: not valid PEM: base64 decode error",
                f.spec.cert.display()
            )),
            "{e}"
        );
        // Valid PEM around bytes that are no certificate.
        let (e, f) = error(
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
            KEY_A,
        );
        assert!(
            e.starts_with(&format!(
                "TLS cert file {}: not a usable certificate",
                f.spec.cert.display()
            )),
            "{e}"
        );

        let (e, f) = error(CERT_A, CERT_A);
        assert!(
            e.starts_with(&format!(
                "TLS key file {}: no private key in it",
                f.spec.key.display()
            )),
            "{e}"
        );
        let (e, _) = error(
            CERT_A,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\naGVsbG8=\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        assert!(e.contains("the private key is encrypted"), "{e}");
        let (e, f) = error(CERT_A, KEY_ED448);
        assert!(
            e.starts_with(&format!(
                "TLS key file {}: unsupported private key",
                f.spec.key.display()
            )),
            "{e}"
        );

        let (e, f) = error(CERT_A, KEY_B);
        assert_eq!(
            e,
            format!(
                "TLS key file {} does not match the certificate in {} (their public keys differ); give the key the certificate was issued for, and the server's certificate first in the chain",
                f.spec.key.display(),
                f.spec.cert.display()
            )
        );
    }

    #[tokio::test]
    async fn a_change_swaps_the_certificate_and_a_broken_one_keeps_it() {
        let f = files(CERT_A, KEY_A);
        let tls = TlsAcceptor::load(&f.spec).unwrap();
        let mut seen = Seen {
            digest: Some(tls.loaded),
            error: None,
        };
        tls.check(&mut seen).await;
        assert_eq!(tls.leaf(), leaf(CERT_A), "unchanged files: nothing to do");

        // Half written: the new certificate with the old key does not load.
        std::fs::write(&f.spec.cert, CERT_B).unwrap();
        tls.check(&mut seen).await;
        assert_eq!(tls.leaf(), leaf(CERT_A));
        assert!(
            seen.error.as_deref().unwrap().contains("does not match"),
            "{:?}",
            seen.error
        );
        // The key arrives: swapped.
        std::fs::write(&f.spec.key, KEY_B).unwrap();
        tls.check(&mut seen).await;
        assert_eq!(tls.leaf(), leaf(CERT_B));
        assert_eq!(seen.error, None);

        // A deleted file keeps the certificate until it is back.
        std::fs::remove_file(&f.spec.key).unwrap();
        tls.check(&mut seen).await;
        assert_eq!(tls.leaf(), leaf(CERT_B));
        assert!(seen.error.as_deref().unwrap().contains("cannot read it"));
        std::fs::write(&f.spec.key, KEY_A).unwrap();
        std::fs::write(&f.spec.cert, CERT_A).unwrap();
        tls.check(&mut seen).await;
        assert_eq!(tls.leaf(), leaf(CERT_A));
        assert_eq!(seen.error, None);
    }
}
