//! OAUTHBEARER (KIP-255, RFC 7628) on the server side: the client's
//! initial response is parsed, its bearer token validated as a JWT against
//! the keys of a JWKS (a file, re-read when it changes, or a URL, fetched
//! at start, refreshed periodically and when a token names a key not yet
//! known), with its signature (asymmetric algorithms only), expiry, issuer
//! and audience checked, and the principal taken from a configured claim.
//! A token's expiry bounds the SASL session (KIP-368).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::sasl::SaslError;

/// `[oauthbearer]` of the config file (Kafka's `sasl.oauthbearer.*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthSettings {
    /// Where the identity provider's keys are: `file:///path/jwks.json`
    /// (or a plain path), or an `https://` (`http://`) URL
    /// (`sasl.oauthbearer.jwks.endpoint.url`).
    pub jwks: String,
    /// CA certificate(s) (PEM) for an `https://` JWKS URL whose server the
    /// system's roots do not know.
    pub jwks_ca: Option<PathBuf>,
    /// How often a JWKS URL is fetched again
    /// (`sasl.oauthbearer.jwks.endpoint.refresh.ms`; default 1 hour).
    pub jwks_refresh_ms: u64,
    /// The `iss` every token must carry (`sasl.oauthbearer.expected.issuer`).
    pub issuer: Option<String>,
    /// Audiences of which a token's `aud` must name one
    /// (`sasl.oauthbearer.expected.audience`).
    pub audience: Vec<String>,
    /// The claim whose value is the principal's name (`User:<value>`;
    /// `sasl.oauthbearer.sub.claim.name`; default `sub`).
    pub principal_claim: String,
    /// Clock skew allowed on `exp` and `nbf`
    /// (`sasl.oauthbearer.clock.skew.seconds`; default 30).
    pub clock_skew_s: u64,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            jwks: String::new(),
            jwks_ca: None,
            jwks_refresh_ms: 3_600_000,
            issuer: None,
            audience: Vec::new(),
            principal_claim: "sub".into(),
            clock_skew_s: 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("[oauthbearer] jwks is not set")]
    NoJwks,
    #[error("reading the JWKS {0}: {1}")]
    Read(String, String),
    #[error("the JWKS at {0} is not a JWK set: {1}")]
    Parse(String, String),
    #[error("[oauthbearer] {0}")]
    Config(String),
}

enum Source {
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
    },
}

/// Largest OAUTHBEARER initial response accepted (tokens of some
/// identity providers run to several KiB).
pub const MAX_OAUTH_TOKEN: usize = 64 << 10;

/// A token that names a key not yet known makes a JWKS URL fetched again,
/// at most this often.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// Validates bearer tokens against the current keys.
pub struct OAuthValidator {
    settings: OAuthSettings,
    source: Source,
    keys: RwLock<Arc<JwkSet>>,
    /// The file's modification time when it was read.
    file_stamp: Mutex<Option<SystemTime>>,
    refetch: tokio::sync::Notify,
    last_fetch: Mutex<Option<Instant>>,
}

/// What a valid token gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// `User:<claim value>`.
    pub principal: String,
    /// When the token expires (ms since the Unix epoch).
    pub expires_ms: i64,
}

/// Asymmetric algorithms only: a JWKS is public, so a symmetric ("oct")
/// key in it would let anyone who reads it mint tokens.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn now_ms() -> i64 {
    floe_common::wall_ms()
}

impl OAuthValidator {
    /// A validator over `settings`' keys: a file is read now (a bad one
    /// fails here), a URL is fetched by [`OAuthValidator::start`].
    pub fn new(settings: OAuthSettings) -> Result<Arc<Self>, OAuthError> {
        if settings.jwks.is_empty() {
            return Err(OAuthError::NoJwks);
        }
        if settings.principal_claim.is_empty() {
            return Err(OAuthError::Config("principal_claim is empty".into()));
        }
        let source =
            if settings.jwks.starts_with("https://") || settings.jwks.starts_with("http://") {
                let mut builder = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .connect_timeout(Duration::from_secs(5));
                if let Some(ca) = &settings.jwks_ca {
                    let pem = std::fs::read(ca)
                        .map_err(|e| OAuthError::Read(ca.display().to_string(), e.to_string()))?;
                    for cert in reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| OAuthError::Config(format!("jwks_ca: {e}")))?
                    {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                Source::Url {
                    url: settings.jwks.clone(),
                    client: builder
                        .build()
                        .map_err(|e| OAuthError::Config(format!("HTTP client: {e}")))?,
                }
            } else {
                Source::File(PathBuf::from(
                    settings
                        .jwks
                        .strip_prefix("file://")
                        .unwrap_or(&settings.jwks),
                ))
            };
        let v = Arc::new(Self {
            settings,
            source,
            keys: RwLock::new(Arc::new(JwkSet { keys: Vec::new() })),
            file_stamp: Mutex::new(None),
            refetch: tokio::sync::Notify::new(),
            last_fetch: Mutex::new(None),
        });
        if let Source::File(path) = &v.source {
            v.read_file(path)?;
        }
        Ok(v)
    }

    /// For a JWKS URL: fetch the keys now (waiting up to ten seconds; a
    /// failure is logged and retried), then keep them fresh until
    /// `shutdown`.
    pub async fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        let Source::Url { .. } = &self.source else {
            return;
        };
        if let Err(e) = self.fetch().await {
            tracing::error!(error = %e, "OAUTHBEARER: fetching the JWKS failed; retrying");
        }
        let me = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(me.settings.jwks_refresh_ms.max(1_000));
            let mut retry = Duration::from_secs(1);
            loop {
                let wait = if me.keys.read().unwrap().keys.is_empty() {
                    retry
                } else {
                    every
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                    _ = me.refetch.notified() => {}
                }
                match me.fetch().await {
                    Ok(()) => retry = Duration::from_secs(1),
                    Err(e) => {
                        tracing::warn!(error = %e, "OAUTHBEARER: fetching the JWKS failed");
                        retry = (retry * 2).min(Duration::from_secs(60));
                    }
                }
            }
        });
    }

    async fn fetch(&self) -> Result<(), OAuthError> {
        let Source::Url { url, client } = &self.source else {
            return Ok(());
        };
        *self.last_fetch.lock().unwrap() = Some(Instant::now());
        let read = |e: reqwest::Error| OAuthError::Read(url.clone(), e.to_string());
        let body = client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(read)?
            .bytes()
            .await
            .map_err(read)?;
        let set = parse_jwks(url, &body)?;
        tracing::info!(url, keys = set.keys.len(), "OAUTHBEARER: JWKS fetched");
        *self.keys.write().unwrap() = Arc::new(set);
        Ok(())
    }

    fn read_file(&self, path: &std::path::Path) -> Result<(), OAuthError> {
        let shown = path.display().to_string();
        let stamp = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| OAuthError::Read(shown.clone(), e.to_string()))?;
        let body =
            std::fs::read(path).map_err(|e| OAuthError::Read(shown.clone(), e.to_string()))?;
        let set = parse_jwks(&shown, &body)?;
        *self.keys.write().unwrap() = Arc::new(set);
        *self.file_stamp.lock().unwrap() = Some(stamp);
        Ok(())
    }

    /// The keys now: a JWKS file changed since it was read is read again
    /// (a broken new file keeps the old keys, with a log line).
    fn current_keys(&self) -> Arc<JwkSet> {
        if let Source::File(path) = &self.source {
            let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if stamp.is_some() && stamp != *self.file_stamp.lock().unwrap() {
                match self.read_file(path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "OAUTHBEARER: JWKS file re-read")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "OAUTHBEARER: the changed JWKS file is not usable; keeping the keys read before");
                        *self.file_stamp.lock().unwrap() = stamp;
                    }
                }
            }
        }
        self.keys.read().unwrap().clone()
    }

    /// Ask for a fresh JWKS (a token named a key not in it), at most every
    /// few seconds.
    fn ask_refetch(&self) {
        if let Source::Url { .. } = &self.source {
            let recent = self
                .last_fetch
                .lock()
                .unwrap()
                .is_some_and(|t| t.elapsed() < REFETCH_AT_MOST_EVERY);
            if !recent {
                self.refetch.notify_one();
            }
        }
    }

    /// Validate a bearer token.
    pub fn validate(&self, token: &str) -> Result<Validated, SaslError> {
        let invalid = |why: String| SaslError::Protocol(format!("invalid token: {why}"));
        // The algorithm first, by name: an unsigned token ("none") or one
        // of an algorithm not accepted is told so plainly.
        let alg = token
            .split('.')
            .next()
            .and_then(|h| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(h.trim_end_matches('='))
                    .ok()
            })
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .ok_or_else(|| invalid("not a JWT (header.claims.signature)".into()))?
            .get("alg")
            .and_then(|a| a.as_str().map(str::to_string))
            .ok_or_else(|| invalid("the header names no algorithm".into()))?;
        if !ALGORITHMS.iter().any(|a| format!("{a:?}") == alg) {
            return Err(invalid(format!("algorithm {alg:?} is not accepted")));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let keys = self.current_keys();
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        };
        let Some(jwk) = jwk else {
            self.ask_refetch();
            return Err(invalid(match &header.kid {
                Some(kid) => format!("no key {kid:?} in the JWKS"),
                None => "the token names no key (kid) and the JWKS has several".into(),
            }));
        };
        let key = decoding_key(jwk).map_err(invalid)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.settings.clock_skew_s;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.settings.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        if self.settings.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.settings.audience);
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| invalid(describe(e)))?;
        let claim = &self.settings.principal_claim;
        let name = data
            .claims
            .get(claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("no {claim:?} claim with a name")))?;
        let expires_ms = data
            .claims
            .get("exp")
            .and_then(|v| v.as_f64())
            .map_or(0, |s| (s * 1000.0) as i64);
        Ok(Validated {
            principal: format!("User:{name}"),
            expires_ms,
        })
    }
}

fn parse_jwks(source: &str, body: &[u8]) -> Result<JwkSet, OAuthError> {
    serde_json::from_slice(body).map_err(|e| OAuthError::Parse(source.to_string(), e.to_string()))
}

fn decoding_key(jwk: &Jwk) -> Result<DecodingKey, String> {
    if let AlgorithmParameters::OctetKey(_) = jwk.algorithm {
        return Err("the key is symmetric (kty oct); only public keys are accepted".into());
    }
    DecodingKey::from_jwk(jwk).map_err(|e| format!("the JWKS key is not usable: {e}"))
}

fn describe(e: jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidSignature => "bad signature".into(),
        K::MissingRequiredClaim(c) => format!("no {c:?} claim"),
        _ => e.to_string(),
    }
}

/// The client's initial response (RFC 7628 §3.1):
/// `gs2-header %x01 *(key=value %x01) %x01`, with `auth=Bearer <token>`.
/// Returns the token and the authorization id (if any).
pub fn parse_initial_response(msg: &[u8]) -> Result<(String, Option<String>), SaslError> {
    let bad = |why: &str| SaslError::Protocol(format!("OAUTHBEARER message: {why}"));
    let text = std::str::from_utf8(msg).map_err(|_| bad("not UTF-8"))?;
    let (gs2, rest) = text
        .split_once('\u{1}')
        .ok_or_else(|| bad("no key-value separator"))?;
    let mut gs2_parts = gs2.split(',');
    let (Some(flag), Some(authzid), Some(""), None) = (
        gs2_parts.next(),
        gs2_parts.next(),
        gs2_parts.next(),
        gs2_parts.next(),
    ) else {
        return Err(bad("the header is not n,[a=authzid],"));
    };
    if flag != "n" && flag != "y" {
        return Err(bad("channel binding is not supported"));
    }
    let authzid = match authzid {
        "" => None,
        a => Some(
            a.strip_prefix("a=")
                .ok_or_else(|| bad("bad authorization id"))?
                .to_string(),
        ),
    };
    let body = rest
        .strip_suffix("\u{1}\u{1}")
        .ok_or_else(|| bad("not ended by two separators"))?;
    let mut token = None;
    for kv in body.split('\u{1}').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| bad("a pair without ="))?;
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(bad("a key that is not letters"));
        }
        if k == "auth" {
            let (scheme, t) = v
                .split_once(' ')
                .ok_or_else(|| bad("auth is not \"Bearer <token>\""))?;
            if !scheme.eq_ignore_ascii_case("bearer") || t.trim().is_empty() {
                return Err(bad("auth is not \"Bearer <token>\""));
            }
            token = Some(t.trim().to_string());
        }
        // Other keys are SASL extensions; none are used.
    }
    let token = token.ok_or_else(|| bad("no auth=Bearer <token>"))?;
    Ok((token, authzid))
}

/// Complete one OAUTHBEARER exchange with `validator`.
pub fn authenticate(validator: &OAuthValidator, msg: &[u8]) -> Result<Validated, SaslError> {
    let (token, authzid) = parse_initial_response(msg)?;
    let v = validator.validate(&token)?;
    if let Some(a) = authzid {
        if Some(a.as_str()) != v.principal.strip_prefix("User:") {
            return Err(SaslError::Protocol(
                "the authorization id differs from the token's principal".into(),
            ));
        }
    }
    if v.expires_ms <= now_ms() - (validator.settings.clock_skew_s as i64) * 1000 {
        return Err(SaslError::Protocol(
            "invalid token: the token has expired".into(),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// An ES256 key pair as (EncodingKey, JWK with `kid`).
    fn keypair(kid: &str) -> (EncodingKey, serde_json::Value) {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let public = pair.public_key().as_ref();
        // Uncompressed point: 0x04 || x || y.
        let (x, y) = (&public[1..33], &public[33..65]);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": B64.encode(x), "y": B64.encode(y),
        });
        (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn token(key: &EncodingKey, kid: &str, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        encode(&h, &claims, key).unwrap()
    }

    fn validator(dir: &std::path::Path, keys: &[serde_json::Value]) -> Arc<OAuthValidator> {
        let path = dir.join("jwks.json");
        std::fs::write(&path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
        OAuthValidator::new(OAuthSettings {
            jwks: format!("file://{}", path.display()),
            issuer: Some("https://idp.example".into()),
            audience: vec!["floe".into()],
            ..Default::default()
        })
        .unwrap()
    }

    fn claims(sub: &str, exp_in_s: i64) -> serde_json::Value {
        let now = now_ms() / 1000;
        serde_json::json!({ "sub": sub, "iss": "https://idp.example", "aud": "floe", "exp": now + exp_in_s, "iat": now })
    }

    fn message(token: &str) -> Vec<u8> {
        format!("n,,\u{1}auth=Bearer {token}\u{1}\u{1}").into_bytes()
    }

    #[test]
    fn a_signed_token_gives_its_subject_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (key, jwk) = keypair("k1");
        let v = validator(dir.path(), &[jwk]);
        let t = token(&key, "k1", claims("alice", 600));
        let got = authenticate(&v, &message(&t)).unwrap();
        assert_eq!(got.principal, "User:alice");
        assert!((got.expires_ms - now_ms() - 600_000).abs() < 5_000);
    }

    #[test]
    fn wrong_issuer_audience_expiry_key_or_signature_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, jwk) = keypair("k1");
        let (other, _) = keypair("k1");
        let v = validator(dir.path(), &[jwk]);
        let mut c = claims("alice", 600);
        c["iss"] = "https://evil.example".into();
        let e = authenticate(&v, &message(&token(&key, "k1", c))).unwrap_err();
        assert!(e.to_string().contains("wrong issuer"), "{e}");
        let mut c = claims("alice", 600);
        c["aud"] = "other".into();
        let e = authenticate(&v, &message(&token(&key, "k1", c))).unwrap_err();
        assert!(e.to_string().contains("wrong audience"), "{e}");
        let e = authenticate(&v, &message(&token(&key, "k1", claims("alice", -120)))).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let e = authenticate(&v, &message(&token(&key, "k2", claims("alice", 600)))).unwrap_err();
        assert!(e.to_string().contains("no key \"k2\""), "{e}");
        let e = authenticate(&v, &message(&token(&other, "k1", claims("alice", 600)))).unwrap_err();
        assert!(e.to_string().contains("bad signature"), "{e}");
        let mut c = claims("alice", 600);
        c.as_object_mut().unwrap().remove("sub");
        let e = authenticate(&v, &message(&token(&key, "k1", c))).unwrap_err();
        assert!(e.to_string().contains("\"sub\""), "{e}");
        // An unsigned token ("alg": "none") and an HMAC one are refused.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","kid":"k1"}"#),
            B64.encode(claims("alice", 600).to_string())
        );
        assert!(authenticate(&v, &message(&none)).is_err());
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = encode(&h, &claims("alice", 600), &EncodingKey::from_secret(b"x")).unwrap();
        let e = authenticate(&v, &message(&hs)).unwrap_err();
        assert!(e.to_string().contains("not accepted"), "{e}");
    }

    #[test]
    fn a_changed_jwks_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, j1) = keypair("k1");
        let (k2, j2) = keypair("k2");
        let v = validator(dir.path(), std::slice::from_ref(&j1));
        assert!(authenticate(&v, &message(&token(&k2, "k2", claims("bob", 600)))).is_err());
        // A later modification time (file systems may keep whole seconds):
        // real time, which the file system's clock follows.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(
            dir.path().join("jwks.json"),
            serde_json::json!({ "keys": [j1, j2] }).to_string(),
        )
        .unwrap();
        assert_eq!(
            authenticate(&v, &message(&token(&k2, "k2", claims("bob", 600))))
                .unwrap()
                .principal,
            "User:bob"
        );
        assert!(authenticate(&v, &message(&token(&k1, "k1", claims("bob", 600)))).is_ok());
    }

    /// An HTTP server answering every GET with the JWKS in `keys`.
    async fn jwks_server(keys: Arc<Mutex<Vec<serde_json::Value>>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = serde_json::json!({ "keys": *keys.lock().unwrap() }).to_string();
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        format!("http://{addr}/jwks.json")
    }

    #[tokio::test]
    async fn a_jwks_url_is_fetched_and_fetched_again_for_a_new_key() {
        let (k1, j1) = keypair("k1");
        let (k2, j2) = keypair("k2");
        let keys = Arc::new(Mutex::new(vec![j1]));
        let url = jwks_server(keys.clone()).await;
        let v = OAuthValidator::new(OAuthSettings {
            jwks: url,
            issuer: Some("https://idp.example".into()),
            audience: vec!["floe".into()],
            ..Default::default()
        })
        .unwrap();
        let stop = CancellationToken::new();
        v.start(stop.clone()).await;
        assert_eq!(
            authenticate(&v, &message(&token(&k1, "k1", claims("alice", 600))))
                .unwrap()
                .principal,
            "User:alice"
        );
        // The provider rotates in a new key: the first token naming it
        // fails (and asks for the set again), a later one passes.
        keys.lock().unwrap().push(j2);
        *v.last_fetch.lock().unwrap() = None;
        let t2 = token(&k2, "k2", claims("bob", 600));
        assert!(authenticate(&v, &message(&t2)).is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match authenticate(&v, &message(&t2)) {
                Ok(got) => {
                    assert_eq!(got.principal, "User:bob");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    }

    #[test]
    fn initial_responses_are_parsed_as_rfc_7628_says() {
        assert_eq!(
            parse_initial_response(b"n,,\x01auth=Bearer abc\x01\x01").unwrap(),
            ("abc".into(), None)
        );
        assert_eq!(
            parse_initial_response(b"n,a=alice,\x01host=x\x01auth=bearer abc\x01\x01").unwrap(),
            ("abc".into(), Some("alice".into()))
        );
        for bad in [
            &b""[..],
            b"n,,",
            b"n,,\x01auth=Bearer abc\x01",
            b"p=tls-unique,,\x01auth=Bearer abc\x01\x01",
            b"n,,\x01auth=Basic abc\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"n,,\x01\x01",
            b"n,,\x01a-b=c\x01auth=Bearer abc\x01\x01",
            b"\xff\xfe",
        ] {
            assert!(parse_initial_response(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic_the_parser_or_the_validator(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_initial_response(&bytes);
            let dir = tempfile::tempdir().unwrap();
            let (_, jwk) = keypair("k1");
            let v = validator(dir.path(), &[jwk]);
            let _ = authenticate(&v, &bytes);
            let _ = v.validate(&String::from_utf8_lossy(&bytes));
        }
    }
}
