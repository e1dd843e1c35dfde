//! Unit tests: the verifier against tokens signed by jsonwebtoken with real
//! keys, JWKS loading and its errors, rotation, the local key, the claim
//! headers and the 401/403 answers. No wasm, no gateway.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::config::{AuthProvider, KeySource};

// Test-only keys, made with `openssl genrsa -traditional 2048` and
// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
const RSA_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAyYi1RDj5bYy0QKhdjWDRfiLfZw2Yi12wuUchlIwbQKZDPnHP
sM3E2s0zMcI2X6G6HstMhlCx2VlC8bXy3n0BqdPT0epCx1JAGjvH3S3koaeQ38Er
AcXgwWpjTYo9zMmcdYGV8u7BWWU/P5n7j3AjG6MpD0FGIo1M16U5iY6r5+9MxNip
QjBhHXb8ZIT4f12DPSzFDFmCDo/ppzWeFZTlN0nB2g/CogDHL9ps1lInGxfTgfHm
srbwq+CXDbWplTecGGRM41mupgrP/w8ZdPtF171kM/Al68ulwdjNyL7jvQ/Zqzc5
BkBRcrjMC0VBKZr1wiFlU93yDEeH4tgczYJkRwIDAQABAoIBAAgT7DFmAo1jCziK
PGcLHz/UiwAjmd6ALLIIdAPzElvm2MwlyK2Crztr59DnQsGrhv0ZU0xmQJ1VyBVN
yy8iyJBzi/UeftBkGhX9w8GNnNvj466BnMUvQWvPOq1kIfJVjxQLU895xWiIDTRx
6hTc6Z3/zgitVO/T77q3BdWJ0UHJvJTvVSFZv2wkONh4dmMLR4dR498t1LQm4+5r
0T2DPqceuEhr9u6wqYRyYwqdcMOx8q1o01hxMvEa34xV2I/iCPb3JQArxROxb9zd
oq49lz62dZBLJfZbdq+AYFqH+hprNalHi8zZRqLe8uTBVh43bYtdyyqM07nWwFIR
nhF+2YECgYEA9m1ifJ6Qd3epvieB64HjJyDBJzqbjNfx6Gpnvfaz8wuLKLO87OAq
ITDtyJDecTK9vTDVCYD6UQEYy69HVtzVl7zI2IZOehu41Cz39BqxGZTPKU3FGcZe
BPd6706CPLrAFZ0IsG8+NwAAZeU+ce4doBrSSQDOb8LVcXUxh1TeSccCgYEA0Vzg
9pktIcbXZWFqAqjBqGjAnJgojasVejsfizyrS/UAx7hBdA8YbVS2BNVhMIKOD0w1
CmuOZGq4qFh/GHOu8NFjWxd3bAMyThvZLP+xxQ8IIFmqQECDDEV2pzZ9PHey86W4
s6jJVjkRI6GgdflYW3CSKDJhjlbId3JiI+yfEYECgYEA16aR8Yyx0Fqf6RCZ2Ycp
SiyX28SmK3Mu971mXA9xGtiXR19Djef99l3jOQnOIDHPaak6Rb7hT9It6NHTFGjd
YpSLDzE5rBJmhQd1VeGl6kUXpYWxXwUBckdBBfsmbg7f2go6eGxhfbA6qPEc3IcM
1fei3tAd2CAgudFdLplOjjECgYEAmlBcHEbgxiGah8YabiVWwDudpI5ebbUpWnOT
l3w7Qfwu/AZqcBHkTkl+8+cXALtp3AqumaSXSpqCysqXuz0hN60OD4knY7yjaoEK
PSmmLPocYkPUwhEKxpO4lh0Kh/QuOXnvvrRs2hmr8VhjPjFwF83MXMZts41xquDr
R1FUGYECgYBlHHX3v6k9Mzbgqyk7/vnC3MR5v1yZNTNsSmuQleVvM4zd6/tHjKX/
BHH6c9BF/uHNULWQ/WRrfKhG7ASdzI09SyCwl9NVEeXjXg0OzrGv9wOW6z+93NHt
DmGo6pigOumrZuLRTFWYd2heByPFoZNXgIPPOP3yX5GuacN6SM+sFw==
-----END RSA PRIVATE KEY-----
";
/// The public half of [`RSA_PEM`], as an attacker would find it.
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyYi1RDj5bYy0QKhdjWDR
fiLfZw2Yi12wuUchlIwbQKZDPnHPsM3E2s0zMcI2X6G6HstMhlCx2VlC8bXy3n0B
qdPT0epCx1JAGjvH3S3koaeQ38ErAcXgwWpjTYo9zMmcdYGV8u7BWWU/P5n7j3Aj
G6MpD0FGIo1M16U5iY6r5+9MxNipQjBhHXb8ZIT4f12DPSzFDFmCDo/ppzWeFZTl
N0nB2g/CogDHL9ps1lInGxfTgfHmsrbwq+CXDbWplTecGGRM41mupgrP/w8ZdPtF
171kM/Al68ulwdjNyL7jvQ/Zqzc5BkBRcrjMC0VBKZr1wiFlU93yDEeH4tgczYJk
RwIDAQAB
-----END PUBLIC KEY-----
";
const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbKRa7EQIyQtUanGp
MnCEbt7B3haJsoK2q+meHJtw9bOhRANCAARTG9oLof0MFCAQ0nH266YnUyWQGbaq
G4o+QHgYN0iyu2GEdFCvQtX043CafjI9cUkRHvRNRSsLr1swMT60BBjV
-----END PRIVATE KEY-----
";

const ISS: &str = "https://idp.test/";
const AUD: &str = "orders-api";

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PEM.as_bytes()).unwrap()
}

/// A fresh Ed25519 key (PKCS#8 v1, the form jsonwebtoken's JWK export reads).
fn ed() -> EncodingKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    der.extend_from_slice(&seed);
    EncodingKey::from_ed_der(&der)
}

/// The public JWK of a signing key, with `kid` and (when given) `alg`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, with_alg: bool) -> Value {
    let mut v = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
    v["kid"] = kid.into();
    v["use"] = "sig".into();
    if !with_alg {
        v.as_object_mut().unwrap().remove("alg");
    }
    v
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid claims for the test provider.
fn good_claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "iat": now(),
        "exp": now() + 600,
        "scope": "orders:read orders:write",
        "roles": ["admin", "ops"],
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token from raw parts: header and payload JSON, signature text.
fn raw_token(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string())
    )
}

fn provider(keys: KeySource, algorithms: &[&str]) -> AuthProvider {
    AuthProvider {
        name: "idp".into(),
        issuer: ISS.into(),
        audiences: vec!["other-api".into(), AUD.into()],
        keys,
        refresh: Duration::from_secs(300),
        algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        leeway: Duration::from_secs(30),
        scope_claim: "scope".into(),
        roles_claim: "roles".into(),
    }
}

fn write_jwks(path: &Path, keys: &[Value]) {
    // Through a new file and a rename, as deploy tools do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json!({ "keys": keys }).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A verifier over a JWKS file of the RSA key `rsa-1` (RS256) and the EC
/// key `ec-1` (ES256).
async fn file_verifier(dir: &Path) -> Arc<Verifier> {
    let path = dir.join("jwks.json");
    write_jwks(
        &path,
        &[
            jwk(&rsa(), Algorithm::RS256, "rsa-1", true),
            jwk(&ec(), Algorithm::ES256, "ec-1", false),
        ],
    );
    Verifier::load(&provider(KeySource::File(path), &["RS256", "ES256"]), dir)
        .await
        .unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

async fn body_text(res: http::Response<GatewayBody>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn a_valid_token_gives_its_claims() {
    let dir = tempfile::tempdir().unwrap();
    let v = file_verifier(dir.path()).await;
    for (alg, key, kid) in [
        (Algorithm::RS256, rsa(), "rsa-1"),
        (Algorithm::ES256, ec(), "ec-1"),
    ] {
        let token = sign(alg, &key, Some(kid), &good_claims());
        let claims = v.verify(&bearer(&token)).await.expect("accepted");
        assert_eq!(claims.subject, "alice");
        assert_eq!(claims.scopes, ["orders:read", "orders:write"]);
        assert_eq!(claims.roles, ["admin", "ops"]);
        assert_eq!(&*claims.issuer, ISS);
    }
    // The scheme is case-insensitive.
    let token = sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &good_claims());
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("bearer {token}")).unwrap(),
    );
    assert!(v.verify(&h).await.is_ok());
}

#[tokio::test]
async fn scopes_and_roles_come_in_several_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let v = file_verifier(dir.path()).await;
    let check = |claims: Value| {
        let v = v.clone();
        async move {
            let token = sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &claims);
            v.check(&bearer(&token)).await
        }
    };
    // `scp` as a list when the scope claim is absent; roles as a string.
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["a:read", "b:write"]);
    c["roles"] = json!("admin  ops");
    let claims = check(c).await.unwrap();
    assert_eq!(claims.scopes, ["a:read", "b:write"]);
    assert_eq!(claims.roles, ["admin", "ops"]);
    // List entries that could not travel space-separated are left out.
    let mut c = good_claims();
    c["roles"] = json!(["Super Admin", "ops", 7, "bad\nrole"]);
    assert_eq!(check(c).await.unwrap().roles, ["ops"]);
    // No scopes or roles at all is fine.
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("scope");
    c.as_object_mut().unwrap().remove("roles");
    let claims = check(c).await.unwrap();
    assert!(claims.scopes.is_empty() && claims.roles.is_empty());
    // A `sub` that is not text, or holds control characters, is refused.
    for sub in [json!("eve\r\nx-atoll-auth-sub: admin"), json!("")] {
        let mut c = good_claims();
        c["sub"] = sub;
        assert_eq!(check(c).await.unwrap_err(), Rejection::BadClaim("sub"));
    }
    let mut c = good_claims();
    c["sub"] = json!(42);
    assert_eq!(check(c).await.unwrap_err(), Rejection::MissingClaim("sub"));
}

#[test]
fn nested_claims_are_found_by_path() {
    let payload = json!({
        "realm_access": { "roles": ["admin"] },
        "https://example.com/roles": ["ops"],
    });
    let map = payload.as_object().unwrap();
    assert_eq!(words(claim(map, "realm_access.roles").unwrap()), ["admin"]);
    assert_eq!(
        words(claim(map, "https://example.com/roles").unwrap()),
        ["ops"]
    );
    assert!(claim(map, "realm_access.groups").is_none());
}

/// The attack matrix: every token here is refused with 401, a Bearer
/// challenge naming `invalid_token`, and a body that names the problem and
/// does not echo the token.
#[tokio::test]
async fn the_attack_matrix_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = file_verifier(dir.path()).await;
    let good = sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &good_claims());
    // Verified (and so remembered) first: no variant of it may ride on that.
    assert!(v.check(&bearer(&good)).await.is_ok());
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good_claims();
        f(&mut c);
        sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &c)
    };
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let mut tampered = good_claims();
    tampered["sub"] = "admin".into();
    let tampered = format!("{head}.{}.{signature}", B64.encode(tampered.to_string()));
    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &h,
            &good_claims(),
            &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
        )
        .unwrap()
    };
    let cases: Vec<(&str, String, Rejection, &str)> = vec![
        (
            "alg none",
            raw_token(&json!({"alg": "none", "typ": "JWT"}), &good_claims(), ""),
            Rejection::AlgorithmNone,
            "none",
        ),
        (
            "alg None",
            raw_token(&json!({"alg": "None", "kid": "rsa-1"}), &good_claims(), ""),
            Rejection::AlgorithmNone,
            "none",
        ),
        (
            "HS256 with the RSA public key as secret",
            hs256,
            Rejection::AlgorithmNotAccepted(Algorithm::HS256),
            "HS256",
        ),
        (
            "expired",
            with(&|c| c["exp"] = (now() - 120).into()),
            Rejection::Expired,
            "expired",
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = (now() + 120).into()),
            Rejection::NotYetValid,
            "not valid yet",
        ),
        (
            "wrong iss",
            with(&|c| c["iss"] = "https://evil.test/".into()),
            Rejection::Issuer,
            "issuer",
        ),
        (
            "no iss",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            Rejection::MissingClaim("iss"),
            "iss",
        ),
        (
            "wrong aud",
            with(&|c| c["aud"] = json!(["billing-api"])),
            Rejection::Audience,
            "audience",
        ),
        (
            "no aud",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            Rejection::MissingClaim("aud"),
            "aud",
        ),
        (
            "missing exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            Rejection::MissingClaim("exp"),
            "exp",
        ),
        (
            "exp not a number",
            with(&|c| c["exp"] = "tomorrow".into()),
            Rejection::MissingClaim("exp"),
            "exp",
        ),
        (
            "no sub",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            Rejection::MissingClaim("sub"),
            "sub",
        ),
        (
            "unknown kid",
            sign(Algorithm::RS256, &rsa(), Some("rsa-9"), &good_claims()),
            Rejection::UnknownKid("rsa-9".into()),
            "unknown key id",
        ),
        (
            "no kid with several keys",
            sign(Algorithm::RS256, &rsa(), None, &good_claims()),
            Rejection::NoKid,
            "key id",
        ),
        (
            "signed by another key",
            sign(Algorithm::EdDSA, &ed(), Some("rsa-1"), &good_claims()),
            Rejection::AlgorithmNotAccepted(Algorithm::EdDSA),
            "EdDSA",
        ),
        (
            "ES256 header on the RSA key",
            sign(Algorithm::ES256, &ec(), Some("rsa-1"), &good_claims()),
            Rejection::AlgorithmForKey {
                alg: Algorithm::ES256,
                key: "an RSA key",
            },
            "does not match its key",
        ),
        (
            "tampered payload",
            tampered,
            Rejection::Signature,
            "signature",
        ),
        (
            "stripped signature",
            format!("{head}.{payload}."),
            Rejection::Signature,
            "signature",
        ),
        (
            "signature of another token",
            format!("{head}.{}.{signature}", B64.encode("{}")),
            Rejection::Signature,
            "signature",
        ),
        (
            "two parts",
            format!("{head}.{payload}"),
            Rejection::Malformed(
                "the token is not a JWT (three base64url parts separated by dots)",
            ),
            "not a JWT",
        ),
        (
            "garbage",
            "not-a-token".into(),
            Rejection::Malformed(
                "the token is not a JWT (three base64url parts separated by dots)",
            ),
            "not a JWT",
        ),
        (
            "crit header",
            raw_token(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
                &good_claims(),
                signature,
            ),
            Rejection::Malformed(
                "the token has critical header extensions (crit), which this host does not support",
            ),
            "crit",
        ),
        (
            "64 KB token",
            raw_token(&header, &json!({ "pad": "a".repeat(64 << 10) }), signature),
            Rejection::TooLong,
            "8 KiB",
        ),
    ];
    for (name, token, expected, in_body) in cases {
        let got = v.check(&bearer(&token)).await;
        assert_eq!(got.as_ref().err(), Some(&expected), "{name}");
        let res = v.verify(&bearer(&token)).await.unwrap_err();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{name}");
        let challenge = res.headers()[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            challenge.starts_with(
                "Bearer realm=\"atoll\", error=\"invalid_token\", error_description=\""
            ),
            "{name}: {challenge}"
        );
        let body = body_text(res).await;
        assert!(body.contains(in_body), "{name}: {body}");
        assert!(
            !body.contains(&token) && !challenge.contains(&token),
            "{name}"
        );
        // Nor any of its parts (a payload part is the token's secret-ish bit).
        if let Some((_, rest)) = token.split_once('.')
            && let Some((payload, _)) = rest.split_once('.')
            && !payload.is_empty()
        {
            assert!(!body.contains(payload), "{name}");
        }
    }
    // The good one still passes, and only it was remembered.
    assert!(v.check(&bearer(&good)).await.is_ok());
    assert_eq!(v.cache.len(), 1);
}

#[test]
fn remembered_tokens_hold_only_in_their_window_and_key_set() {
    let cache = cache::TokenCache::default();
    let claims = Claims {
        subject: "alice".into(),
        ..Claims::default()
    };
    let d = [7u8; 32];
    cache.insert(d, claims, 1_000, 500, 3, 600);
    assert_eq!(cache.get(&d, 3, 600, 0).unwrap().subject, "alice");
    assert!(
        cache.get(&d, 3, 1_000, 0).is_some(),
        "exp is the last valid second"
    );
    assert!(cache.get(&d, 3, 1_001, 0).is_none(), "expired");
    assert!(
        cache.get(&d, 3, 1_020, 30).is_some(),
        "expired within the leeway"
    );
    assert!(cache.get(&d, 3, 499, 0).is_none(), "not valid yet");
    assert!(cache.get(&d, 3, 480, 30).is_some(), "nbf within the leeway");
    assert!(cache.get(&d, 4, 600, 0).is_none(), "another key set");
    assert!(cache.get(&[8u8; 32], 3, 600, 0).is_none(), "another token");
    // Bounded: a flood of distinct tokens keeps at most 4096.
    for i in 0..10_000u32 {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&i.to_le_bytes());
        cache.insert(d, Claims::default(), 2_000, 0, 3, 600);
    }
    assert!(cache.len() <= 4096, "{}", cache.len());
}

#[tokio::test]
async fn missing_and_odd_authorization_headers() {
    let dir = tempfile::tempdir().unwrap();
    let v = file_verifier(dir.path()).await;
    let res = v.verify(&HeaderMap::new()).await.unwrap_err();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()[http::header::WWW_AUTHENTICATE],
        "Bearer realm=\"atoll\""
    );
    assert!(body_text(res).await.contains("needs a bearer token"));

    let mut basic = HeaderMap::new();
    basic.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic YWxpY2U6eA=="),
    );
    assert!(matches!(
        v.check(&basic).await,
        Err(Rejection::Malformed(_))
    ));

    let token = sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &good_claims());
    let mut two = bearer(&token);
    two.append(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    assert_eq!(
        v.check(&two).await.unwrap_err(),
        Rejection::Malformed("several Authorization headers")
    );
    let empty = bearer("");
    assert!(matches!(
        v.check(&empty).await,
        Err(Rejection::Malformed(_))
    ));
}

#[tokio::test]
async fn leeway_allows_small_clock_skew() {
    let dir = tempfile::tempdir().unwrap();
    let v = file_verifier(dir.path()).await;
    let mut c = good_claims();
    c["exp"] = (now() - 10).into();
    c["nbf"] = (now() + 10).into();
    let token = sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &c);
    assert!(
        v.check(&bearer(&token)).await.is_ok(),
        "10 s is within 30 s leeway"
    );
}

#[tokio::test]
async fn a_single_key_without_kid_serves_tokens_without_kid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let mut key = jwk(&rsa(), Algorithm::RS256, "x", true);
    key.as_object_mut().unwrap().remove("kid");
    write_jwks(&path, &[key]);
    let v = Verifier::load(&provider(KeySource::File(path), &["RS256"]), dir.path())
        .await
        .unwrap();
    let token = sign(Algorithm::RS256, &rsa(), None, &good_claims());
    assert!(v.check(&bearer(&token)).await.is_ok());
    let token = sign(Algorithm::RS256, &rsa(), Some("x"), &good_claims());
    assert_eq!(
        v.check(&bearer(&token)).await.unwrap_err(),
        Rejection::UnknownKid("x".into())
    );
}

/// Loads `keys` as a JWKS file for a provider pinned to `algorithms`; the
/// error text.
async fn load_error(keys: Value, algorithms: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, keys.to_string()).unwrap();
    match Verifier::load(
        &provider(KeySource::File(path.clone()), algorithms),
        dir.path(),
    )
    .await
    {
        Ok(_) => panic!("loaded: {keys}"),
        Err(e) => {
            let text = format!("{e:#}");
            assert!(text.starts_with("[auth.idp]: "), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            text
        }
    }
}

#[tokio::test]
async fn bad_jwks_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let e = Verifier::load(
        &provider(KeySource::File(missing.clone()), &["RS256"]),
        dir.path(),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.starts_with("[auth.idp]: cannot read the JWKS file")
            && e.contains(&missing.display().to_string())
            && e.contains("No such file"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, "<html>not json</html>").unwrap();
    let e = Verifier::load(&provider(KeySource::File(path), &["RS256"]), dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("is not a JWKS") || e.contains("not a JWKS"),
        "{e}"
    );

    let e = load_error(json!({"keys": []}), &["RS256"]).await;
    assert!(
        e.contains("no usable key for algorithms RS256 (the JWKS is empty)"),
        "{e}"
    );

    // An EC key without alg fits none of RS256: skipped, and then none is left.
    let e = load_error(
        json!({"keys": [jwk(&ec(), Algorithm::ES256, "ec-1", false)]}),
        &["RS256"],
    )
    .await;
    assert!(
        e.contains("no usable key")
            && e.contains("key `ec-1`: an EC P-256 key fits none of the algorithms RS256"),
        "{e}"
    );

    // A key that names an algorithm the provider does not accept.
    let e = load_error(
        json!({"keys": [
            jwk(&rsa(), Algorithm::RS256, "rsa-1", true),
            jwk(&ec(), Algorithm::ES256, "ec-1", true),
        ]}),
        &["RS256"],
    )
    .await;
    assert!(
        e.contains("key `ec-1`: its alg is ES256, but [auth.idp] accepts only RS256; add ES256 to `algorithms` or remove the key"),
        "{e}"
    );

    // A key whose alg does not fit its type.
    let mut wrong = jwk(&rsa(), Algorithm::RS256, "rsa-1", true);
    wrong["alg"] = "ES256".into();
    let e = load_error(json!({"keys": [wrong]}), &["ES256"]).await;
    assert!(
        e.contains("its alg is ES256, which does not fit an RSA key"),
        "{e}"
    );

    // A symmetric key, an encryption key, an unsupported curve: skipped.
    let e = load_error(
        json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hs", "alg": "HS256", "k": "c2VjcmV0"},
        ]}),
        &["RS256"],
    )
    .await;
    assert!(e.contains("no usable key"), "{e}");
    assert!(e.contains("key `h`: kty `oct` is not supported"), "{e}");
    assert!(e.contains("key `enc`: use `enc` is not `sig`"), "{e}");
    assert!(
        e.contains("key `p521`: kty `EC` crv `P-521` is not supported"),
        "{e}"
    );
    assert!(e.contains("key `hs`: alg `HS256` is not supported"), "{e}");

    // Malformed keys.
    let short = B64.encode([0xffu8; 128]);
    let e = load_error(
        json!({"keys": [{"kty": "RSA", "kid": "small", "n": short, "e": "AQAB"}]}),
        &["RS256"],
    )
    .await;
    assert!(
        e.contains("key `small`: the RSA modulus has 1024 bits; at least 2048 are required"),
        "{e}"
    );
    let e = load_error(json!({"keys": [{"kty": "RSA", "kid": "r"}]}), &["RS256"]).await;
    assert!(e.contains("key `r`: `n` is missing"), "{e}");
    let e = load_error(
        json!({"keys": [{"kty": "EC", "kid": "off", "crv": "P-256",
            "x": B64.encode([1u8; 32]), "y": B64.encode([2u8; 32])}]}),
        &["ES256"],
    )
    .await;
    assert!(
        e.contains("key `off`: it is not a valid public key (an EC P-256 key)"),
        "{e}"
    );
    let e = load_error(
        json!({"keys": [
            jwk(&rsa(), Algorithm::RS256, "same", true),
            jwk(&rsa(), Algorithm::RS256, "same", true),
        ]}),
        &["RS256"],
    )
    .await;
    assert!(e.contains("key `same` appears twice"), "{e}");
    let e = load_error(json!({"keys": ["x"]}), &["RS256"]).await;
    assert!(e.contains("key #1 is not a JWK"), "{e}");
}

#[tokio::test]
async fn a_changed_jwks_file_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let second = ed();
    write_jwks(&path, &[jwk(&rsa(), Algorithm::RS256, "rsa-1", true)]);
    let v = Verifier::load(
        &provider(KeySource::File(path.clone()), &["RS256", "EdDSA"]),
        dir.path(),
    )
    .await
    .unwrap();
    let old = sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &good_claims());
    let new = sign(Algorithm::EdDSA, &second, Some("ed-2"), &good_claims());
    assert!(v.check(&bearer(&old)).await.is_ok());
    assert_eq!(
        v.check(&bearer(&new)).await.unwrap_err(),
        Rejection::UnknownKid("ed-2".into())
    );

    // A new key: the unknown kid makes the verifier look at the file now.
    write_jwks(
        &path,
        &[
            jwk(&rsa(), Algorithm::RS256, "rsa-1", true),
            jwk(&second, Algorithm::EdDSA, "ed-2", true),
        ],
    );
    assert!(v.check(&bearer(&new)).await.is_ok());
    assert_eq!(v.key_ids(), ["ed-2", "rsa-1"]);

    // A removed key: refused after the next refresh (here called directly,
    // as the background task does every second).
    write_jwks(&path, &[jwk(&second, Algorithm::EdDSA, "ed-2", true)]);
    v.source.refresh(&v.provider, &v.keys).await;
    assert_eq!(
        v.check(&bearer(&old)).await.unwrap_err(),
        Rejection::UnknownKid("rsa-1".into())
    );
    assert!(v.check(&bearer(&new)).await.is_ok());

    // A broken file keeps the keys that work.
    std::fs::write(&path, "{ half").unwrap();
    v.source.refresh(&v.provider, &v.keys).await;
    assert!(v.check(&bearer(&new)).await.is_ok());
}

/// A JWKS server on 127.0.0.1 serving `jwks` and counting requests.
async fn jwks_server(jwks: Arc<std::sync::Mutex<String>>, hits: Arc<AtomicUsize>) -> String {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (jwks, hits) = (jwks.clone(), hits.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let body = jwks.lock().unwrap().clone();
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_unknown_kids_cannot_hammer_it() {
    let jwks = Arc::new(std::sync::Mutex::new(
        json!({"keys": [jwk(&rsa(), Algorithm::RS256, "rsa-1", true)]}).to_string(),
    ));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = jwks_server(jwks.clone(), hits.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let v = Verifier::load(
        &provider(KeySource::Url(url.clone()), &["RS256", "EdDSA"]),
        dir.path(),
    )
    .await
    .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once at load");
    let good = sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &good_claims());
    assert!(v.check(&bearer(&good)).await.is_ok());

    // Made-up kids right after a fetch: none causes another (the cooldown
    // is 5 s; the requests below take far less).
    for i in 0..50 {
        let token = sign(
            Algorithm::RS256,
            &rsa(),
            Some(&format!("made-up-{i}")),
            &good_claims(),
        );
        assert!(matches!(
            v.check(&bearer(&token)).await,
            Err(Rejection::UnknownKid(_))
        ));
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "no fetch for unknown kids within the cooldown"
    );

    // A periodic refresh replaces the set: a rotated-out kid is refused.
    let second = ed();
    *jwks.lock().unwrap() =
        json!({"keys": [jwk(&second, Algorithm::EdDSA, "ed-2", true)]}).to_string();
    v.source.refresh(&v.provider, &v.keys).await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        v.check(&bearer(&good)).await.unwrap_err(),
        Rejection::UnknownKid("rsa-1".into())
    );
    let new = sign(Algorithm::EdDSA, &second, Some("ed-2"), &good_claims());
    assert!(v.check(&bearer(&new)).await.is_ok());

    // A failed fetch keeps the keys.
    *jwks.lock().unwrap() = "oops".into();
    v.source.refresh(&v.provider, &v.keys).await;
    assert!(v.check(&bearer(&new)).await.is_ok());

    // An unreachable URL at load is a clear error.
    let e = Verifier::load(
        &provider(KeySource::Url("http://127.0.0.1:1/jwks".into()), &["RS256"]),
        dir.path(),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.starts_with("[auth.idp]: cannot fetch the JWKS from http://127.0.0.1:1/jwks"),
        "{e}"
    );
}

#[tokio::test]
async fn an_unknown_kid_fetches_again_after_the_cooldown() {
    let jwks = Arc::new(std::sync::Mutex::new(
        json!({"keys": [jwk(&rsa(), Algorithm::RS256, "rsa-1", true)]}).to_string(),
    ));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = jwks_server(jwks.clone(), hits.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = provider(KeySource::Url(url), &["RS256", "EdDSA"]);
    spec.refresh = Duration::from_secs(1);
    let v = Verifier::load(&spec, dir.path()).await.unwrap();
    let second = ed();
    *jwks.lock().unwrap() = json!({"keys": [
        jwk(&rsa(), Algorithm::RS256, "rsa-1", true),
        jwk(&second, Algorithm::EdDSA, "ed-2", true),
    ]})
    .to_string();
    let new = sign(Algorithm::EdDSA, &second, Some("ed-2"), &good_claims());
    // Within the cooldown (the refresh, 1 s) the new kid is unknown; after
    // it, the unknown kid itself triggers the fetch that finds it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match v.check(&bearer(&new)).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e, Rejection::UnknownKid("ed-2".into()));
                assert!(Instant::now() < deadline, "the new kid was never fetched");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "one fetch at load, one for the new kid"
    );
}

#[tokio::test]
async fn the_local_key_is_made_once_and_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = TokenRequest::local("alice", Duration::from_secs(3600));
    req.scopes = vec!["orders:write".into(), "x".into()];
    req.roles = vec!["admin".into()];
    let token = issue_local(dir.path(), &req).unwrap();

    let key_file = dir.path().join(LOCAL_KEY_FILE);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(key_file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }
    let pem = std::fs::read_to_string(&key_file).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");

    let mut spec = provider(KeySource::Local, &["EdDSA"]);
    spec.issuer = LOCAL_ISSUER.into();
    spec.audiences = vec![LOCAL_AUDIENCE.into()];
    let v = Verifier::load(&spec, dir.path()).await.unwrap();
    assert!(
        v.spawn_refresh(tokio::sync::watch::channel(false).1)
            .is_none()
    );
    let kids = v.key_ids();
    assert_eq!(kids.len(), 1);
    assert!(kids[0].len() == 16 && kids[0].chars().all(|c| c.is_ascii_hexdigit()));
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kids[0].as_str()));
    assert_eq!(header.alg, Algorithm::EdDSA);

    let claims = v.check(&bearer(&token)).await.unwrap();
    assert_eq!(claims.subject, "alice");
    assert_eq!(claims.scopes, ["orders:write", "x"]);
    assert_eq!(claims.roles, ["admin"]);
    assert_eq!(&*claims.issuer, LOCAL_ISSUER);

    // The same key signs the next token; the file is not rewritten.
    let again = issue_local(
        dir.path(),
        &TokenRequest::local("bob", Duration::from_secs(60)),
    )
    .unwrap();
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), pem);
    assert_eq!(v.check(&bearer(&again)).await.unwrap().subject, "bob");

    // Another data dir is another key: its tokens are refused here.
    let other = tempfile::tempdir().unwrap();
    let foreign = issue_local(other.path(), &req).unwrap();
    assert!(matches!(
        v.check(&bearer(&foreign)).await,
        Err(Rejection::UnknownKid(_))
    ));

    // Another audience is refused.
    let mut req = TokenRequest::local("alice", Duration::from_secs(60));
    req.audience = "elsewhere".into();
    let token = issue_local(dir.path(), &req).unwrap();
    assert_eq!(
        v.check(&bearer(&token)).await.unwrap_err(),
        Rejection::Audience
    );

    // Bad requests.
    let mut req = TokenRequest::local("alice", Duration::from_secs(60));
    req.scopes = vec!["a b".into()];
    assert!(issue_local(dir.path(), &req).is_err());
    assert!(
        issue_local(
            dir.path(),
            &TokenRequest::local("", Duration::from_secs(60))
        )
        .is_err()
    );
    assert!(issue_local(dir.path(), &TokenRequest::local("a", Duration::ZERO)).is_err());

    // A local provider pinned to another algorithm is a clear error.
    let mut spec = spec.clone();
    spec.algorithms = vec!["RS256".into()];
    let e = Verifier::load(&spec, dir.path())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("[auth.idp]: the local key signs with EdDSA"),
        "{e}"
    );

    // A corrupt key file is named.
    std::fs::write(&key_file, "junk").unwrap();
    let e = issue_local(
        dir.path(),
        &TokenRequest::local("a", Duration::from_secs(60)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("is not an Ed25519 private key") && e.contains(LOCAL_KEY_FILE),
        "{e}"
    );
}

#[tokio::test]
async fn scopes_are_all_required_and_roles_any() {
    let claims = Claims {
        subject: "alice".into(),
        scopes: vec!["orders:read".into(), "orders:write".into()],
        roles: vec!["ops".into()],
        issuer: ISS.into(),
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(authorize(&claims, &[], &[]).is_ok());
    assert!(authorize(&claims, &s(&["orders:write"]), &[]).is_ok());
    assert!(
        authorize(
            &claims,
            &s(&["orders:read", "orders:write"]),
            &s(&["admin", "ops"])
        )
        .is_ok()
    );

    let res = authorize(&claims, &s(&["orders:write", "orders:delete"]), &[]).unwrap_err();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        res.headers()[http::header::WWW_AUTHENTICATE],
        "Bearer realm=\"atoll\", error=\"insufficient_scope\", error_description=\"missing scope\", scope=\"orders:write orders:delete\""
    );
    assert!(
        body_text(res)
            .await
            .contains("lacks the scope orders:delete")
    );

    let res = authorize(&claims, &[], &s(&["admin"])).unwrap_err();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(
        res.headers()[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
    assert!(body_text(res).await.contains("none of the roles admin"));
}

#[test]
fn claim_headers_are_stripped_and_set() {
    let mut h = HeaderMap::new();
    h.insert("X-Atoll-Auth-Sub", HeaderValue::from_static("admin"));
    h.append("x-atoll-auth-roles", HeaderValue::from_static("root"));
    h.append("x-atoll-auth-roles", HeaderValue::from_static("more"));
    h.insert("x-atoll-authz", HeaderValue::from_static("kept"));
    h.insert("x-request-id", HeaderValue::from_static("kept"));
    strip_claim_headers(&mut h);
    assert_eq!(h.len(), 2);
    assert!(h.contains_key("x-atoll-authz") && h.contains_key("x-request-id"));

    add_claim_headers(
        &mut h,
        &Claims {
            subject: "alice".into(),
            scopes: vec!["a".into(), "b".into()],
            roles: vec![],
            issuer: ISS.into(),
        },
    );
    assert_eq!(h[SUBJECT_HEADER], "alice");
    assert_eq!(h[SCOPE_HEADER], "a b");
    assert_eq!(h[ROLES_HEADER], "");
    assert_eq!(h[ISSUER_HEADER], ISS);
    strip_claim_headers(&mut h);
    assert_eq!(h.len(), 2);
}

/// What verification costs per token, by algorithm; printed, not asserted
/// (`cargo test -p atoll --lib gateway::auth::tests::verify_cost -- --nocapture`).
#[tokio::test]
async fn verify_cost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let edk = ed();
    write_jwks(
        &path,
        &[
            jwk(&rsa(), Algorithm::RS256, "rsa-1", true),
            jwk(&ec(), Algorithm::ES256, "ec-1", true),
            jwk(&edk, Algorithm::EdDSA, "ed-1", true),
        ],
    );
    let v = Verifier::load(
        &provider(KeySource::File(path), &["RS256", "ES256", "EdDSA"]),
        dir.path(),
    )
    .await
    .unwrap();
    const N: u32 = 300;
    for (alg, key, kid) in [
        (Algorithm::RS256, rsa(), "rsa-1"),
        (Algorithm::ES256, ec(), "ec-1"),
        (Algorithm::EdDSA, edk.clone(), "ed-1"),
    ] {
        // Distinct tokens: each takes the full path.
        let tokens: Vec<HeaderMap> = (0..N)
            .map(|i| {
                let mut c = good_claims();
                c["jti"] = i.into();
                bearer(&sign(alg, &key, Some(kid), &c))
            })
            .collect();
        let start = Instant::now();
        for headers in &tokens {
            assert!(v.verify(headers).await.is_ok());
        }
        let full = start.elapsed() / N;
        // The same token again: the verified-token cache answers.
        let start = Instant::now();
        for _ in 0..N {
            assert!(v.verify(&tokens[0]).await.is_ok());
        }
        let cached = start.elapsed() / N;
        println!("verify {alg:?}: {full:?} per new token, {cached:?} per repeated token");
    }
    let headers = bearer(&sign(Algorithm::RS256, &rsa(), Some("rsa-1"), &{
        let mut c = good_claims();
        c["exp"] = (now() - 3600).into();
        c
    }));
    let start = Instant::now();
    for _ in 0..N {
        assert!(v.verify(&headers).await.is_err());
    }
    println!(
        "refuse an expired RS256 token: {:?} per token",
        start.elapsed() / N
    );
    let mut h = HeaderMap::new();
    for i in 0..20 {
        h.insert(
            http::HeaderName::from_bytes(format!("x-header-{i}").as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
    }
    let start = Instant::now();
    for _ in 0..100_000 {
        strip_claim_headers(&mut h);
    }
    println!(
        "strip_claim_headers, 20 headers, none to strip: {:?} per request",
        start.elapsed() / 100_000
    );
}
