//! Keys: a JWKS document decoded into verification keys by key id, and the
//! JOSE header of a token that picks one.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Rejection;
use crate::config::AuthProvider;

/// Largest JWKS document read from a file or URL.
pub(super) const MAX_JWKS_LEN: usize = 1 << 20;

/// base64url, with or without padding (JWKS writers differ).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One verification key, ready to use.
pub(super) struct Key {
    /// What it is, for messages: "an RSA key", "an EC P-256 key", ...
    pub kind: &'static str,
    pub decoding: DecodingKey,
    /// Its checks: the algorithms it may verify (the provider's pinned ones
    /// that fit its type), issuer, audiences, leeway, required claims.
    pub validation: Validation,
}

/// A provider's keys by key id.
pub(super) struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// The key a token without `kid` uses: the set's only key.
    sole: Option<Arc<Key>>,
    /// Unique per set made: what the verified-token cache checks entries
    /// against, so a swapped set leaves none of the old set's entries valid.
    generation: u64,
}

impl KeySet {
    fn empty() -> KeySet {
        static GENERATION: AtomicU64 = AtomicU64::new(1);
        KeySet {
            by_kid: HashMap::new(),
            sole: None,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The key for a token's `kid`; a token without one may use the set's
    /// only key.
    pub fn get(&self, kid: Option<&str>) -> Option<&Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => self.sole.as_ref(),
        }
    }

    /// The key ids, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.by_kid.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// For logs: `kid1 (an RSA key), kid2 (an EC P-256 key)`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .by_kid
            .iter()
            .map(|(kid, k)| format!("{kid} ({})", k.kind))
            .collect();
        parts.sort();
        if parts.is_empty()
            && let Some(k) = &self.sole
        {
            parts.push(format!("one key without kid ({})", k.kind));
        }
        parts.join(", ")
    }

    /// A set of one key.
    pub fn single(kid: String, key: Key) -> KeySet {
        let key = Arc::new(key);
        let mut set = KeySet::empty();
        set.by_kid.insert(kid, key.clone());
        set.sole = Some(key);
        set
    }
}

/// The checks every key of a provider applies, for `algorithms`.
pub(super) fn validation(spec: &AuthProvider, algorithms: Vec<Algorithm>) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms;
    v.leeway = spec.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[&spec.issuer]);
    v.set_audience(&spec.audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v
}

/// A claim name from a jsonwebtoken error, as a static string for messages.
pub(super) fn claim_name(name: &str) -> &'static str {
    match name {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "registered",
    }
}

/// The parts of a token's JOSE header that pick and check the key.
pub(super) struct TokenHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// Reads a token's header (the first of three dot-separated parts) without
/// trusting it: the algorithm must be a known asymmetric one or HMAC (which
/// the caller then refuses), never `none`; critical extensions are refused.
pub(super) fn parse_header(token: &str) -> Result<TokenHeader, Rejection> {
    #[derive(Deserialize)]
    struct Raw {
        alg: String,
        kid: Option<String>,
        crit: Option<serde::de::IgnoredAny>,
    }
    let not_jwt =
        Rejection::Malformed("the token is not a JWT (three base64url parts separated by dots)");
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_jwt);
    };
    let json = B64.decode(header).map_err(|_| not_jwt.clone())?;
    let raw: Raw = serde_json::from_slice(&json).map_err(|_| not_jwt.clone())?;
    if raw.crit.is_some() {
        return Err(Rejection::Malformed(
            "the token has critical header extensions (crit), which this host does not support",
        ));
    }
    if raw.alg.eq_ignore_ascii_case("none") {
        return Err(Rejection::AlgorithmNone);
    }
    let alg = Algorithm::from_str(&raw.alg).map_err(|_| Rejection::AlgorithmUnknown)?;
    Ok(TokenHeader { alg, kid: raw.kid })
}

/// One entry of a JWKS, as written.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// Decodes a JWKS for `spec`. Keys for encryption, of unsupported types or
/// algorithms, or (without `alg`) of a type none of the pinned algorithms
/// fits are skipped; a key whose `alg` is a signature algorithm the provider
/// does not accept, a malformed key or a repeated kid is an error, as is a
/// set with no usable key. Errors do not name the source: the caller adds it.
pub(super) fn parse(spec: &AuthProvider, json: &[u8]) -> anyhow::Result<KeySet> {
    let pinned: Vec<Algorithm> = spec
        .algorithms
        .iter()
        .filter_map(|a| Algorithm::from_str(a).ok())
        .collect();
    let raw: RawJwks = serde_json::from_slice(json).map_err(|e| {
        anyhow::anyhow!(
            "not a JWKS: expected JSON like {{\"keys\": [{{\"kty\": \"RSA\", \"kid\": \"...\", \"n\": \"...\", \"e\": \"AQAB\"}}]}} ({e})"
        )
    })?;
    let mut set = KeySet::empty();
    let mut skipped = Vec::new();
    let mut count = 0;
    for (i, value) in raw.keys.into_iter().enumerate() {
        let jwk: RawJwk = serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("key #{} is not a JWK: {e}", i + 1))?;
        let name = match &jwk.kid {
            Some(kid) => format!("key `{}`", super::printable(kid)),
            None => format!("key #{} (no kid)", i + 1),
        };
        match decode_key(spec, &pinned, &jwk).map_err(|e| anyhow::anyhow!("{name}: {e}"))? {
            Decoded::Skip(why) => skipped.push(format!("{name}: {why}")),
            Decoded::Key(key) => {
                count += 1;
                let key: Arc<Key> = Arc::from(key);
                if let Some(kid) = jwk.kid
                    && set.by_kid.insert(kid, key.clone()).is_some()
                {
                    anyhow::bail!("{name} appears twice; key ids must be unique");
                }
                set.sole = Some(key);
            }
        }
    }
    if count != 1 {
        set.sole = None;
    }
    if count == 0 {
        anyhow::bail!(
            "no usable key for algorithms {}{}",
            spec.algorithms.join(", "),
            if skipped.is_empty() {
                " (the JWKS is empty)".to_string()
            } else {
                format!(" (skipped: {})", skipped.join("; "))
            }
        );
    }
    Ok(set)
}

enum Decoded {
    Key(Box<Key>),
    Skip(String),
}

/// One JWK as a key for the provider, skipped, or an error.
fn decode_key(spec: &AuthProvider, pinned: &[Algorithm], jwk: &RawJwk) -> anyhow::Result<Decoded> {
    let skip = |why: String| Ok(Decoded::Skip(why));
    if let Some(u) = &jwk.key_use
        && u != "sig"
    {
        return skip(format!("use `{}` is not `sig`", super::printable(u)));
    }
    // A named algorithm: only the supported asymmetric ones are keys at all
    // (others, like RSA-OAEP or ES512, are for something else here).
    let named = match &jwk.alg {
        None => None,
        Some(a) => match crate::config::ALGORITHMS
            .contains(&a.as_str())
            .then(|| Algorithm::from_str(a).ok())
            .flatten()
        {
            Some(alg) if pinned.contains(&alg) => Some(alg),
            Some(_) => anyhow::bail!(
                "its alg is {a}, but [auth.{}] accepts only {}; add {a} to `algorithms` or remove the key",
                spec.name,
                spec.algorithms.join(", ")
            ),
            None => return skip(format!("alg `{}` is not supported", super::printable(a))),
        },
    };
    let field = |name: &str, v: &Option<String>| -> anyhow::Result<Vec<u8>> {
        let text = v
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("`{name}` is missing"))?;
        B64.decode(text)
            .map_err(|_| anyhow::anyhow!("`{name}` is not base64url"))
    };
    let (kind, family, decoding): (&'static str, &[Algorithm], DecodingKey) =
        match (jwk.kty.as_deref(), jwk.crv.as_deref()) {
            (Some("RSA"), _) => {
                let n = field("n", &jwk.n)?;
                let e = field("e", &jwk.e)?;
                let bits = significant_bits(&n);
                if bits < 2048 {
                    anyhow::bail!("the RSA modulus has {bits} bits; at least 2048 are required");
                }
                if e.is_empty() || e.len() > 8 || significant_bits(&e) < 2 {
                    anyhow::bail!("the RSA exponent `e` is not valid");
                }
                (
                    "an RSA key",
                    &[
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                        Algorithm::PS384,
                        Algorithm::PS512,
                    ],
                    DecodingKey::from_rsa_raw_components(&n, &e),
                )
            }
            (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
                let (size, kind, algs): (usize, _, &[Algorithm]) = if crv == "P-256" {
                    (32, "an EC P-256 key", &[Algorithm::ES256])
                } else {
                    (48, "an EC P-384 key", &[Algorithm::ES384])
                };
                let x = field("x", &jwk.x)?;
                let y = field("y", &jwk.y)?;
                if x.len() != size || y.len() != size {
                    anyhow::bail!("`x` and `y` of a {crv} key must be {size} bytes each");
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (kind, algs, DecodingKey::from_ec_der(&point))
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = field("x", &jwk.x)?;
                if x.len() != 32 {
                    anyhow::bail!("`x` of an Ed25519 key must be 32 bytes");
                }
                (
                    "an Ed25519 key",
                    &[Algorithm::EdDSA],
                    DecodingKey::from_ed_der(&x),
                )
            }
            (kty, crv) => {
                return skip(format!(
                    "kty `{}`{} is not supported (RSA, EC P-256/P-384, OKP Ed25519 are)",
                    super::printable(kty.unwrap_or("")),
                    crv.map(|c| format!(" crv `{}`", super::printable(c)))
                        .unwrap_or_default()
                ));
            }
        };
    let algorithms: Vec<Algorithm> = match named {
        Some(alg) if family.contains(&alg) => vec![alg],
        Some(alg) => anyhow::bail!("its alg is {alg:?}, which does not fit {kind}"),
        None => family
            .iter()
            .copied()
            .filter(|a| pinned.contains(a))
            .collect(),
    };
    if algorithms.is_empty() {
        return skip(format!(
            "{kind} fits none of the algorithms {}",
            spec.algorithms.join(", ")
        ));
    }
    check_usable(&decoding, algorithms[0], kind)?;
    Ok(Decoded::Key(Box::new(Key {
        kind,
        decoding,
        validation: validation(spec, algorithms),
    })))
}

/// Catches keys that are well formed but not keys (an EC point off its
/// curve, an Ed25519 point that does not decode) at load, not per request.
fn check_usable(key: &DecodingKey, alg: Algorithm, kind: &str) -> anyhow::Result<()> {
    // A verifier is built from the key before any signature is looked at:
    // an error here is the key's, `Ok(false)` the (empty) signature's.
    match jsonwebtoken::crypto::verify("", b"probe", key, alg) {
        Ok(_) => Ok(()),
        Err(_) => anyhow::bail!("it is not a valid public key ({kind})"),
    }
}

/// Bits of a big-endian unsigned integer, leading zeros not counted.
fn significant_bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => (bytes.len() - i) * 8 - bytes[i].leading_zeros() as usize,
    }
}
