//! TLS termination end to end: a test CA signs the server's certificate,
//! clients trust only that CA and speak HTTP/1.1 or HTTP/2 as ALPN chooses;
//! a new certificate written over the files is picked up by new handshakes
//! while open connections keep working; bad files are clear start errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use atoll_tests::TestHost;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A certificate authority for one test.
struct TestCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "atoll test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost: (cert PEM, key PEM, cert DER).
    fn server_cert(&self, cn: &str) -> (String, String, CertificateDer<'static>) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// A client that trusts only this CA and offers `alpn`.
    fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Writes the server's files into `dir`; returns (cert path, key path).
fn write_files(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

fn manifest(cert: &Path, key: &Path) -> String {
    format!(
        r#"
[components.hello]
source = "{{hello}}"
routes = ["/hello"]

[gateway]
header_timeout = "1m"

[gateway.tls]
cert = "{}"
key = "{}"
"#,
        cert.display(),
        key.display()
    )
}

/// Connects and handshakes; returns the stream (its ALPN and the server's
/// leaf certificate are in `get_ref().1`).
async fn handshake(
    h: &TestHost,
    ca: &TestCa,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(h.host.addr()).await?;
    let name = ServerName::try_from("localhost").unwrap();
    ca.connector(alpn).connect(name, tcp).await
}

fn leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// An HTTP/1.1 connection over TLS.
async fn http1(tls: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get1(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, String) {
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    // The connection takes the next request only once it has finished the last.
    send.ready().await.unwrap();
    let res = send.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_over_http1_and_http2_by_alpn() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = ca.server_cert("atoll-one");
    let (c, k) = write_files(dir.path(), &cert, &key);
    let h = TestHost::start(&manifest(&c, &k)).await;

    // A client offering only HTTP/1.1 gets it.
    let tls = handshake(&h, &ca, &[b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(leaf(&tls), der);
    let mut send = http1(tls).await;
    assert_eq!(
        get1(&mut send, "/hello").await,
        (200, "hello from atoll: /hello\n".to_string())
    );
    // Keep-alive: a second request on the same TLS connection.
    assert_eq!(get1(&mut send, "/hello").await.0, 200);

    // A client offering both gets HTTP/2 and speaks it.
    let tls = handshake(&h, &ca, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/hello")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello from atoll: /hello\n");

    // A client without ALPN is served HTTP/1.1.
    let tls = handshake(&h, &ca, &[]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert_eq!(get1(&mut http1(tls).await, "/hello").await.0, 200);

    // A certificate from another CA is not trusted: the TLS is real.
    let other = TestCa::new();
    let e = handshake(&h, &other, &[b"http/1.1"]).await.unwrap_err();
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");

    // Plain HTTP to the TLS port fails that connection, and only that one.
    let mut plain = TcpStream::connect(h.host.addr()).await.unwrap();
    plain
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got).await;
    assert!(!got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    let tls = handshake(&h, &ca, &[b"http/1.1"]).await.unwrap();
    assert_eq!(get1(&mut http1(tls).await, "/hello").await.0, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_picked_up_and_open_connections_keep_working() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first) = ca.server_cert("atoll-first");
    let (c, k) = write_files(dir.path(), &cert, &key);
    let h = TestHost::start(&manifest(&c, &k)).await;

    let old = handshake(&h, &ca, &[b"http/1.1"]).await.unwrap();
    assert_eq!(leaf(&old), first);
    let mut old = http1(old).await;
    assert_eq!(get1(&mut old, "/hello").await.0, 200);

    // Replace both files; the key goes in first and the certificate last, so
    // the host may see the new key with the old certificate for a moment.
    let (cert, key, second) = ca.server_cert("atoll-second");
    assert_ne!(first, second);
    let tmp = dir.path().join("next.pem");
    std::fs::write(&tmp, &key).unwrap();
    std::fs::rename(&tmp, &k).unwrap();
    std::fs::write(&tmp, &cert).unwrap();
    std::fs::rename(&tmp, &c).unwrap();

    // New handshakes present the new certificate within a few polls.
    let mut seen = Vec::new();
    for _ in 0..100 {
        let tls = handshake(&h, &ca, &[b"http/1.1"]).await.unwrap();
        let presented = leaf(&tls);
        seen.push(presented == second);
        if presented == second {
            assert_eq!(get1(&mut http1(tls).await, "/hello").await.0, 200);
            break;
        }
        assert_eq!(presented, first, "neither the old nor the new certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.last(),
        Some(&true),
        "the new certificate was never presented"
    );

    // The connection opened before the change still serves.
    assert_eq!(
        get1(&mut old, "/hello").await,
        (200, "hello from atoll: /hello\n".to_string())
    );

    // A broken certificate file keeps the new certificate in place.
    std::fs::write(&c, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tls = handshake(&h, &ca, &[b"http/1.1"]).await.unwrap();
    assert_eq!(leaf(&tls), second);
    assert_eq!(get1(&mut http1(tls).await, "/hello").await.0, 200);
    h.stop().await;
}

async fn start_error(cert: &Path, key: &Path) -> String {
    let data = tempfile::tempdir().unwrap();
    match TestHost::start_in(&manifest(cert, key), data.path()).await {
        Ok(_) => panic!("started with bad TLS files"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_clear_start_errors() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = ca.server_cert("atoll");
    let (c, k) = write_files(dir.path(), &cert, &key);

    let missing = dir.path().join("missing.pem");
    let e = start_error(&missing, &k).await;
    assert!(
        e.contains(&format!(
            "TLS cert file {}: cannot read it: No such file or directory",
            missing.display()
        )),
        "{e}"
    );
    let e = start_error(&c, &missing).await;
    assert!(
        e.contains(&format!(
            "TLS key file {}: cannot read it: No such file or directory",
            missing.display()
        )),
        "{e}"
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let e = start_error(&garbage, &k).await;
    assert!(
        e.contains(&format!(
            "TLS cert file {}: no certificate in it",
            garbage.display()
        )),
        "{e}"
    );
    let e = start_error(&c, &garbage).await;
    assert!(
        e.contains(&format!(
            "TLS key file {}: no private key in it",
            garbage.display()
        )),
        "{e}"
    );

    // A key from another certificate.
    let (_, other_key, _) = ca.server_cert("other");
    let other = dir.path().join("other-key.pem");
    std::fs::write(&other, other_key).unwrap();
    let e = start_error(&c, &other).await;
    assert!(
        e.contains(&format!(
            "TLS key file {} does not match the certificate in {}",
            other.display(),
            c.display()
        )),
        "{e}"
    );
}
