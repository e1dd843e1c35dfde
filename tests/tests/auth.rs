//! Bearer-token auth end to end: a real host, tokens signed by jsonwebtoken
//! with keys made here (RSA and EC P-256), JWKS from a file and from a URL
//! served by this test, the local provider with `atoll token issue`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use atoll_tests::{Reply, TestHost, send_with};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISS: &str = "https://idp.test/";
const AUD: &str = "orders-api";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_atoll-cli"))
}

/// A signing key and its public JWK.
struct Key {
    kid: String,
    alg: Algorithm,
    signing: EncodingKey,
    jwk: Value,
    /// The public key in PEM (RSA keys), as an attacker would find it.
    public_pem: String,
}

impl Key {
    /// A new 2048-bit RSA key for RS256.
    fn rsa(kid: &str) -> Key {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pem = private.to_pkcs1_pem(LineEnding::LF).unwrap();
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        Key::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            public_pem,
        )
    }

    /// A new EC P-256 key for ES256.
    fn ec(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Key::new(kid, Algorithm::ES256, signing, String::new())
    }

    fn new(kid: &str, alg: Algorithm, signing: EncodingKey, public_pem: String) -> Key {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&signing, alg).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        Key {
            kid: kid.to_string(),
            alg,
            signing,
            jwk,
            public_pem,
        }
    }

    /// A token with these claims, this key's alg and kid.
    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A token signed by this key but naming key id `kid`.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.signing).unwrap()
    }
}

fn jwks(keys: &[&Key]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims the test provider accepts, with scope `orders:write`.
fn claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "iat": now(),
        "exp": now() + 600,
        "scope": "orders:read orders:write",
        "roles": ["clerk"],
    })
}

fn with(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    c
}

async fn get_with_token(url: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send_with("GET", url, &[("authorization", &auth)], Bytes::new())
        .await
        .unwrap()
}

/// The manifest of the file-JWKS tests: `/hello` needs scope orders:write
/// from provider `idp`, `/open` needs nothing. Request heads may be large so
/// that a 64 KB token reaches the auth check (the default 16 KiB limit
/// would answer 431 first).
fn file_manifest(jwks_path: &Path) -> String {
    format!(
        r#"
[gateway]
max_header_size = "128KiB"

[auth.idp]
issuer = "{ISS}"
audience = ["{AUD}"]
jwks = "{}"
algorithms = ["RS256", "ES256"]

[components.hello]
source = "{{hello}}"
routes = ["/hello", "/open"]

[routes."/hello"]
auth = "idp"
scopes = ["orders:write"]
"#,
        jwks_path.display()
    )
}

/// Asserts a 401 with an `invalid_token` challenge whose body names the
/// problem (`reason`) and never echoes the token.
fn assert_refused(r: &Reply, token: &str, reason: &str, case: &str) {
    assert_eq!(r.status, 401, "{case}: {}", r.body);
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge
            .starts_with("Bearer realm=\"atoll\", error=\"invalid_token\", error_description=\""),
        "{case}: {challenge}"
    );
    assert!(r.body.contains(reason), "{case}: {}", r.body);
    assert!(
        !r.body.contains(token) && !challenge.contains(token),
        "{case}: the token is echoed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attack_matrix_gets_401_and_a_valid_token_200() {
    let rsa = Key::rsa("rsa-1");
    let ec = Key::ec("ec-1");
    let stranger = Key::rsa("rsa-1");
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&rsa, &ec])).unwrap();
    let h = TestHost::start(&file_manifest(&path)).await;
    let url = h.url("/hello");

    // Valid tokens, RSA and EC.
    for key in [&rsa, &ec] {
        let r = get_with_token(&url, &key.sign(&claims())).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello from atoll: /hello\n"),
            "{:?}",
            key.alg
        );
    }

    // No token: a bare challenge.
    let r = send_with("GET", &url, &[], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"atoll\"");
    assert!(r.body.contains("needs a bearer token"), "{}", r.body);
    // A route without auth needs none.
    let r = send_with("GET", &h.url("/open"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let good = rsa.sign(&claims());
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let hmac_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
        )
        .unwrap()
    };
    let raw = |header: Value, payload: &Value, signature: &str| {
        format!(
            "{}.{}.{signature}",
            B64.encode(header.to_string()),
            B64.encode(payload.to_string())
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            raw(json!({"alg": "none", "typ": "JWT"}), &claims(), ""),
            "alg `none`",
        ),
        (
            "HS256 signed with the RSA public key",
            hmac_with_public_key,
            "alg `HS256` is not one this provider accepts",
        ),
        (
            "expired",
            rsa.sign(&with(|c| {
                c.insert("exp".into(), (now() - 300).into());
            })),
            "expired",
        ),
        (
            "not yet valid",
            rsa.sign(&with(|c| {
                c.insert("nbf".into(), (now() + 300).into());
            })),
            "not valid yet",
        ),
        (
            "wrong iss",
            rsa.sign(&with(|c| {
                c.insert("iss".into(), "https://evil.test/".into());
            })),
            "issuer",
        ),
        (
            "wrong aud",
            rsa.sign(&with(|c| {
                c.insert("aud".into(), json!(["billing-api"]));
            })),
            "audience",
        ),
        (
            "missing exp",
            rsa.sign(&with(|c| {
                c.remove("exp");
            })),
            "no `exp` claim",
        ),
        (
            "unknown kid",
            rsa.sign_as("rsa-2", &claims()),
            "unknown key id (kid) `rsa-2`",
        ),
        (
            "signed by another key under the known kid",
            stranger.sign(&claims()),
            "signature is invalid",
        ),
        (
            "tampered payload",
            format!(
                "{head}.{}.{signature}",
                B64.encode(
                    with(|c| {
                        c.insert("sub".into(), "admin".into());
                    })
                    .to_string()
                )
            ),
            "signature is invalid",
        ),
        (
            "stripped signature",
            format!("{}.", good.rsplit_once('.').unwrap().0),
            "signature is invalid",
        ),
        (
            "64 KB token",
            rsa.sign(&with(|c| {
                c.insert("pad".into(), "x".repeat(64 << 10).into());
            })),
            "longer than 8 KiB",
        ),
    ];
    for (case, token, reason) in &cases {
        let r = get_with_token(&url, token).await;
        assert_refused(&r, token, reason, case);
    }

    // A valid token without the route's scope: 403.
    let r = get_with_token(
        &url,
        &rsa.sign(&with(|c| {
            c.insert("scope".into(), "orders:read".into());
        })),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"orders:write\""),
        "{challenge}"
    );
    assert!(
        r.body.contains("lacks the scope orders:write"),
        "{}",
        r.body
    );

    // The good token still works after all that.
    assert_eq!(get_with_token(&url, &good).await.status, 200);
    h.stop().await;
}

/// An HTTP server on 127.0.0.1 answering every request with `answer(request
/// headers)`; counts requests.
async fn serve(
    answer: impl Fn(&http::HeaderMap) -> String + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (answer, hits) = (answer.clone(), counter.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let body = answer(req.headers());
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

/// The claims reach the target as headers, and a client's own
/// `x-atoll-auth-*` headers never do. The hello guest does not show request
/// headers, so the target here is an upstream that echoes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_reach_the_target_and_client_claim_headers_are_stripped() {
    let rsa = Key::rsa("rsa-1");
    let keys = tempfile::tempdir().unwrap();
    let path = keys.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&rsa])).unwrap();
    let (echo, _) = serve(|headers| {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            seen.entry(name.to_string())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        serde_json::to_string(&seen).unwrap()
    })
    .await;
    let h = TestHost::start(&format!(
        r#"
[auth.idp]
issuer = "{ISS}"
audience = "{AUD}"
jwks = "{}"

[upstreams.echo]
backends = ["{echo}"]

[routes."/echo"]
upstream = "echo"
auth = "idp"
roles = ["clerk", "admin"]

[routes."/echo-open"]
upstream = "echo"
"#,
        path.display()
    ))
    .await;
    let token = rsa.sign(&claims());
    let auth = format!("Bearer {token}");
    let forged = [
        ("x-atoll-auth-sub", "mallory"),
        ("X-Atoll-Auth-Roles", "admin"),
        ("x-atoll-auth-anything", "1"),
    ];
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(forged);
    let r = send_with("GET", &h.url("/echo"), &headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen: BTreeMap<String, Vec<String>> = serde_json::from_str(&r.body).unwrap();
    let one = |name: &str| seen.get(name).cloned().unwrap_or_default();
    assert_eq!(one("x-atoll-auth-sub"), ["alice"]);
    assert_eq!(one("x-atoll-auth-scope"), ["orders:read orders:write"]);
    assert_eq!(one("x-atoll-auth-roles"), ["clerk"]);
    assert_eq!(one("x-atoll-auth-iss"), [ISS]);
    assert!(!seen.contains_key("x-atoll-auth-anything"), "{seen:?}");

    // Without auth on the route, forged claim headers are dropped all the same.
    let r = send_with("GET", &h.url("/echo-open"), &forged, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen: BTreeMap<String, Vec<String>> = serde_json::from_str(&r.body).unwrap();
    assert!(
        !seen.keys().any(|k| k.starts_with("x-atoll-auth-")),
        "{seen:?}"
    );
    h.stop().await;
}

/// Polls `url` with `token` until the status is `want` (at most 15 s).
async fn until_status(url: &str, token: &str, want: u16) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get_with_token(url, token).await;
        if r.status == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "still {} instead of {want}: {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn url_manifest(jwks_url: &str, refresh: &str) -> String {
    format!(
        r#"
[auth.idp]
issuer = "{ISS}"
audience = "{AUD}"
jwks_url = "{jwks_url}"
refresh = "{refresh}"

[components.hello]
source = "{{hello}}"
routes = ["/hello"]

[routes."/hello"]
auth = "idp"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_through_a_jwks_url() {
    let (old, new) = (Key::rsa("2024-old"), Key::rsa("2025-new"));
    let served = Arc::new(Mutex::new(jwks(&[&old])));
    let current = served.clone();
    let (base, _) = serve(move |_| current.lock().unwrap().clone()).await;
    let h = TestHost::start(&url_manifest(&format!("{base}/jwks.json"), "1s")).await;
    let url = h.url("/hello");
    let (old_token, new_token) = (old.sign(&claims()), new.sign(&claims()));
    assert_eq!(get_with_token(&url, &old_token).await.status, 200);
    let r = get_with_token(&url, &new_token).await;
    assert_refused(&r, &new_token, "unknown key id", "before the rotation");

    // The IdP publishes the new key: its kid is picked up.
    *served.lock().unwrap() = jwks(&[&old, &new]);
    until_status(&url, &new_token, 200).await;
    assert_eq!(get_with_token(&url, &old_token).await.status, 200);

    // The IdP drops the old key: its tokens are refused after the refresh.
    *served.lock().unwrap() = jwks(&[&new]);
    let r = until_status(&url, &old_token, 401).await;
    assert_refused(
        &r,
        &old_token,
        "unknown key id (kid) `2024-old`",
        "after the rotation",
    );
    assert_eq!(get_with_token(&url, &new_token).await.status, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_cannot_make_the_host_hammer_the_idp() {
    let key = Key::rsa("k1");
    let served = jwks(&[&key]);
    let (base, fetches) = serve(move |_| served.clone()).await;
    let h = TestHost::start(&url_manifest(&format!("{base}/jwks.json"), "5m")).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "fetched once at start");
    let url = h.url("/hello");
    for i in 0..40 {
        let token = key.sign_as(&format!("made-up-{i}"), &claims());
        assert_eq!(get_with_token(&url, &token).await.status, 401);
    }
    // At most one fetch per 5 s for unknown kids: none right after the start
    // (one more only if this machine stalled for seconds between them).
    let n = fetches.load(Ordering::SeqCst);
    assert!(n <= 2, "{n} fetches for 40 unknown kids");
    assert_eq!(get_with_token(&url, &key.sign(&claims())).await.status, 200);
    h.stop().await;
}

/// `atoll token issue`, run as a program; its stdout.
fn token_issue(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(["token", "issue"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "atoll token issue {args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

const LOCAL: &str = r#"
[auth.dev]
local = true

[components.hello]
source = "{hello}"
routes = ["/hello"]

[routes."/hello"]
auth = "dev"
scopes = ["orders:write"]
roles = ["admin", "ops"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atoll_token_issue_is_trusted_by_a_local_provider() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let out = token_issue(&[
        "--sub",
        "alice",
        "--scope",
        "orders:write",
        "--scope",
        "x",
        "--role",
        "admin",
        "--ttl",
        "10m",
        "--data-dir",
        dir,
    ]);
    // Only the token, on one line.
    let token = out.strip_suffix('\n').unwrap();
    assert_eq!(token.matches('.').count(), 2, "{out}");
    assert!(!token.contains(char::is_whitespace));
    let key_file = data.path().join("auth/local-ed25519.pem");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let host = TestHost::start_in(LOCAL, data.path()).await.unwrap();
    let url = format!("http://{}/hello", host.addr());
    let r = get_with_token(&url, token).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from atoll: /hello\n")
    );
    // Without the scope: 403; without any of the roles: 403.
    let no_scope = token_issue(&["--sub", "alice", "--role", "admin", "--data-dir", dir]);
    assert_eq!(get_with_token(&url, no_scope.trim()).await.status, 403);
    let no_role = token_issue(&[
        "--sub",
        "alice",
        "--scope",
        "orders:write",
        "--data-dir",
        dir,
    ]);
    assert_eq!(get_with_token(&url, no_role.trim()).await.status, 403);
    // Another data dir holds another key.
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign = token_issue(&[
        "--sub",
        "alice",
        "--scope",
        "orders:write",
        "--role",
        "admin",
        "--data-dir",
        elsewhere.path().to_str().unwrap(),
    ]);
    let r = get_with_token(&url, foreign.trim()).await;
    assert_refused(
        &r,
        foreign.trim(),
        "unknown key id",
        "another data dir's key",
    );
    // Another audience.
    let other_aud = token_issue(&[
        "--sub",
        "alice",
        "--scope",
        "orders:write",
        "--role",
        "admin",
        "--aud",
        "elsewhere",
        "--data-dir",
        dir,
    ]);
    let r = get_with_token(&url, other_aud.trim()).await;
    assert_refused(&r, other_aud.trim(), "audience", "another audience");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atoll_token_issue_reads_the_manifest() {
    // A manifest whose local provider has its own audience; its data_dir is
    // next to it. The token takes the audience and the data_dir from it.
    let project = tempfile::tempdir().unwrap();
    let text = format!("[host]\ndata_dir = \"data\"\n{}", LOCAL)
        .replace("local = true", "local = true\naudience = \"shop\"");
    let manifest: PathBuf = project.path().join("atoll.toml");
    std::fs::write(&manifest, atoll_tests::manifest_text(&text)).unwrap();
    let token = token_issue(&[
        "--sub",
        "bob",
        "--scope",
        "orders:write",
        "--role",
        "ops",
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    let payload: Value =
        serde_json::from_slice(&B64.decode(token.trim().split('.').nth(1).unwrap()).unwrap())
            .unwrap();
    assert_eq!(payload["aud"], "shop");
    assert_eq!(payload["iss"], "atoll-local");
    assert_eq!(payload["sub"], "bob");
    assert_eq!(payload["scope"], "orders:write");
    assert_eq!(payload["roles"], json!(["ops"]));
    assert!(project.path().join("data/auth/local-ed25519.pem").exists());

    let host = TestHost::start_in(&text, &project.path().join("data"))
        .await
        .unwrap();
    let r = get_with_token(&format!("http://{}/hello", host.addr()), token.trim()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    host.shutdown().await.unwrap();

    // Bad input is refused with a reason, and prints no token.
    let out = Command::new(bin())
        .args([
            "token",
            "issue",
            "--sub",
            "bob",
            "--scope",
            "a b",
            "--manifest",
        ])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("scope \"a b\" is empty or contains whitespace"),
        "{stderr}"
    );
}

/// Starts a host whose provider `idp` reads `jwks`; the start error, whole.
async fn start_error(data: &Path, jwks_line: &str, algorithms: &str) -> String {
    let toml = format!(
        r#"
[auth.idp]
issuer = "{ISS}"
audience = "{AUD}"
{jwks_line}
algorithms = {algorithms}

[components.hello]
source = "{{hello}}"
routes = ["/hello"]

[routes."/hello"]
auth = "idp"
"#
    );
    match TestHost::start_in(&toml, data).await {
        Ok(host) => {
            host.shutdown().await.unwrap();
            panic!("started with {jwks_line}");
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_jwks_is_a_clear_start_error() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let rsa = Key::rsa("rsa-1");
    let ec = Key::ec("ec-1");

    let missing = files.path().join("missing.json").display().to_string();
    let e = start_error(data.path(), &format!("jwks = \"{missing}\""), "[\"RS256\"]").await;
    assert!(
        e.contains(&format!(
            "[auth.idp]: cannot read the JWKS file {missing}: No such file"
        )),
        "{e}"
    );

    let html = file("html.json", "<html>login</html>");
    let e = start_error(data.path(), &format!("jwks = \"{html}\""), "[\"RS256\"]").await;
    assert!(
        e.contains(&format!(
            "[auth.idp]: the JWKS file {html}: not a JWKS: expected JSON like"
        )),
        "{e}"
    );

    let only_ec = file("ec.json", &jwks(&[&ec]));
    let e = start_error(data.path(), &format!("jwks = \"{only_ec}\""), "[\"PS256\"]").await;
    assert!(
        e.contains(&format!(
            "[auth.idp]: the JWKS file {only_ec}: key `ec-1`: its alg is ES256, but [auth.idp] accepts only PS256; add ES256 to `algorithms` or remove the key"
        )),
        "{e}"
    );

    let mut no_alg = ec.jwk.clone();
    no_alg.as_object_mut().unwrap().remove("alg");
    let unusable = file("unusable.json", &json!({"keys": [no_alg]}).to_string());
    let e = start_error(
        data.path(),
        &format!("jwks = \"{unusable}\""),
        "[\"RS256\"]",
    )
    .await;
    assert!(
        e.contains(&format!(
            "[auth.idp]: the JWKS file {unusable}: no usable key for algorithms RS256 (skipped: key `ec-1`: an EC P-256 key fits none of the algorithms RS256)"
        )),
        "{e}"
    );

    let e = start_error(
        data.path(),
        "jwks_url = \"http://127.0.0.1:1/jwks.json\"",
        "[\"RS256\"]",
    )
    .await;
    assert!(
        e.contains("[auth.idp]: cannot fetch the JWKS from http://127.0.0.1:1/jwks.json"),
        "{e}"
    );

    // A JWKS URL that answers with an error page.
    let (base, _) = serve(|_| "{\"error\": \"not found\"}".to_string()).await;
    let e = start_error(
        data.path(),
        &format!("jwks_url = \"{base}/jwks.json\""),
        "[\"RS256\"]",
    )
    .await;
    assert!(
        e.contains(&format!(
            "[auth.idp]: the JWKS from {base}/jwks.json: not a JWKS"
        )),
        "{e}"
    );

    // And a good one starts.
    let good = file("good.json", &jwks(&[&rsa]));
    let toml = file_manifest(Path::new(&good));
    let host = TestHost::start_in(&toml, data.path()).await.unwrap();
    host.shutdown().await.unwrap();
}
