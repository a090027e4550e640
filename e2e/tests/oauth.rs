//! SASL/OAUTHBEARER through a proxy with real clients: librdkafka (the
//! `rdkafka` crate, its token callback handing over JWTs this test signs
//! with an EC key it made) and kafka-python (a token provider) log in over
//! SASL_SSL with tokens the proxy checks against the key's JWKS file
//! (signature, issuer, audience, expiry) and round-trip records; an
//! expired token, one signed by another key, one for another audience and
//! an unsigned one (kcat's built-in "unsecured JWT": Debian's kcat has no
//! OIDC support, so it cannot present a signed token) are refused with no
//! data written; a session lasts no longer than its token, and librdkafka
//! re-authenticates with a fresh one while it produces.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use floe_e2e::{Cluster, TestPki};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const ISSUER: &str = "https://idp.floe.test";
const AUDIENCE: &str = "floe";

/// An identity provider of the test's own: an EC P-256 key and its JWKS.
struct Idp {
    key: EncodingKey,
    kid: String,
    jwk: serde_json::Value,
}

impl Idp {
    fn new(kid: &str) -> Self {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..65]),
        });
        Self {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            kid: kid.into(),
            jwk,
        }
    }

    /// A token for `sub`, expiring `ttl_s` from now (negative: expired),
    /// for `aud`; and its expiry (ms since the epoch).
    fn mint(&self, sub: &str, ttl_s: i64, aud: &str) -> (String, i64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({
            "sub": sub, "iss": ISSUER, "aud": aud, "iat": now, "exp": now + ttl_s,
        });
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        (
            jsonwebtoken::encode(&h, &claims, &self.key).unwrap(),
            (now + ttl_s) * 1000,
        )
    }
}

/// A librdkafka context whose tokens come from `mint` (called at every
/// refresh: librdkafka asks again at 80 % of a token's lifetime).
struct Tokens {
    mint: Arc<dyn Fn() -> (String, i64) + Send + Sync>,
    minted: Arc<std::sync::atomic::AtomicUsize>,
}

impl ClientContext for Tokens {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let (token, lifetime_ms) = (self.mint)();
        self.minted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(OAuthToken {
            token,
            principal_name: "unused".into(),
            lifetime_ms,
        })
    }
}

impl ConsumerContext for Tokens {}

fn config(bootstrap: &str, ca: &std::path::Path) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("security.protocol", "sasl_ssl")
        .set("sasl.mechanisms", "OAUTHBEARER")
        .set("ssl.ca.location", ca.display().to_string())
        .set("socket.timeout.ms", "5000");
    c
}

fn tokens(mint: impl Fn() -> (String, i64) + Send + Sync + 'static) -> Tokens {
    Tokens {
        mint: Arc::new(mint),
        minted: Default::default(),
    }
}

async fn produce(
    cfg: &ClientConfig,
    ctx: Tokens,
    topic: &str,
    n: usize,
    timeout_ms: &str,
) -> Result<(), String> {
    let p: FutureProducer<Tokens> = cfg
        .clone()
        .set("acks", "all")
        .set("message.timeout.ms", timeout_ms)
        .create_with_context(ctx)
        .map_err(|e| e.to_string())?;
    for i in 0..n {
        let v = format!("v{i}");
        p.send(
            FutureRecord::<(), _>::to(topic).partition(0).payload(&v),
            Duration::from_secs(15),
        )
        .await
        .map_err(|(e, _)| e.to_string())?;
    }
    Ok(())
}

fn consume(cfg: &ClientConfig, ctx: Tokens, topic: &str, n: usize) -> Vec<String> {
    let c: BaseConsumer<Tokens> = cfg
        .clone()
        .set("group.id", "oauth-e2e")
        .set("enable.auto.commit", "false")
        .create_with_context(ctx)
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
        }
    }
    got
}

fn values(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("v{i}")).collect()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn python() -> String {
    std::env::var("FLOE_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py-venv/bin/python").to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_logins_with_signed_tokens_and_refusals_of_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let idp = Arc::new(Idp::new("key-1"));
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({ "keys": [idp.jwk.clone()] }).to_string(),
    )
    .unwrap();
    let extra = format!(
        "[proxy]\nlease_ttl_ms = 2000\nprotocol = \"SASL_SSL\"\n\
         sasl_mechanisms = [\"OAUTHBEARER\", \"SCRAM-SHA-512\"]\nreauth_ms = 60000\n\
         [proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [oauthbearer]\njwks = \"file://{}\"\nissuer = \"{ISSUER}\"\naudience = [\"{AUDIENCE}\"]\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        jwks.display(),
    );
    let mut c = Cluster::start_with(1, 1, 3_000, &extra).unwrap();
    c.add_proxy().unwrap();
    let bootstrap = c.proxy_bootstrap();
    let cfg = config(&bootstrap, &pki.ca);

    // librdkafka with a signed token: round trip.
    let i = idp.clone();
    produce(
        &cfg,
        tokens(move || i.mint("alice", 600, AUDIENCE)),
        "oauth",
        20,
        "15000",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let i = idp.clone();
    assert_eq!(
        consume(
            &cfg,
            tokens(move || i.mint("alice", 600, AUDIENCE)),
            "oauth",
            20
        ),
        values(20)
    );

    // Refused, and nothing written: expired, another key, another
    // audience.
    let metrics_before = c.proxies[0].http("/metrics").unwrap();
    let stranger = Arc::new(Idp::new("key-1"));
    let i = idp.clone();
    let bad: Vec<(&str, Tokens)> = vec![
        // librdkafka will not hand over a token it knows has expired:
        // this one says it lasts, the JWT inside says otherwise.
        (
            "expired",
            tokens(move || (i.mint("alice", -300, AUDIENCE).0, later_ms(600))),
        ),
        (
            "another key",
            tokens(move || stranger.mint("alice", 600, AUDIENCE)),
        ),
        ("another audience", {
            let i = idp.clone();
            tokens(move || i.mint("alice", 600, "someone-else"))
        }),
    ];
    for (what, ctx) in bad {
        let r = produce(&cfg, ctx, "oauth", 1, "4000").await;
        assert!(r.is_err(), "a token with {what} was accepted");
    }
    let failed = |t: &str| {
        metric(
            t,
            "floe_proxy_sasl_authentications_total{mechanism=\"OAUTHBEARER\",result=\"failed\"}",
        )
    };
    let metrics = c.proxies[0].http("/metrics").unwrap();
    assert!(
        failed(&metrics) >= failed(&metrics_before) + 3.0,
        "each refusal counted"
    );
    let log = c.proxies[0].log_text();
    for why in ["the token has expired", "bad signature", "wrong audience"] {
        assert!(log.contains(why), "the log says {why:?}");
    }
    // kcat's unsecured JWT ("alg": "none") gets nowhere either.
    let out = Command::new("kcat")
        .args([
            "-P",
            "-b",
            &bootstrap,
            "-t",
            "oauth",
            "-p",
            "0",
            "-X",
            "security.protocol=sasl_ssl",
            "-X",
            "sasl.mechanisms=OAUTHBEARER",
            "-X",
            "sasl.oauthbearer.config=principal=alice",
            "-X",
            "enable.sasl.oauthbearer.unsecure.jwt=true",
            "-X",
            &format!("ssl.ca.location={}", pki.ca.display()),
            "-X",
            "message.timeout.ms=4000",
        ])
        .stdin({
            let mut f = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut f, b"intruder\n").unwrap();
            std::io::Seek::rewind(&mut f).unwrap();
            f
        })
        .output()
        .expect("kcat is installed");
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("failed"),
        "kcat with an unsigned token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log_contains_eventually(&c, "algorithm"),
        "an unsigned token is refused for its algorithm"
    );
    let i = idp.clone();
    assert_eq!(
        consume(
            &cfg,
            tokens(move || i.mint("alice", 600, AUDIENCE)),
            "oauth",
            25
        )
        .len(),
        20,
        "nothing was written by refused clients"
    );

    // kafka-python with a token provider.
    let (token, _) = idp.mint("bob", 600, AUDIENCE);
    let script = r#"
import sys
from kafka import KafkaProducer, KafkaConsumer, TopicPartition
try:
    from kafka.net.sasl.oauth import AbstractTokenProvider
except ImportError:
    from kafka.sasl.oauth import AbstractTokenProvider
bootstrap, topic, ca, token = sys.argv[1:5]
class Provider(AbstractTokenProvider):
    def token(self):
        return token
extra = dict(security_protocol="SASL_SSL", ssl_cafile=ca, sasl_mechanism="OAUTHBEARER",
             sasl_oauth_token_provider=Provider())
p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_block_ms=10000, **extra)
for i in range(10):
    p.send(topic, value=("p%d" % i).encode(), partition=0).get(timeout=30)
p.close()
c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                  enable_auto_commit=False, group_id=None, **extra)
c.assign([TopicPartition(topic, 0)])
got = []
for _ in range(100):
    for recs in c.poll(timeout_ms=200).values():
        got += [r.value.decode() for r in recs]
    if len(got) >= 10:
        break
assert got == ["p%d" % i for i in range(10)], got
print("ok")
"#;
    let ca = pki.ca.display().to_string();
    let out = Command::new(python())
        .args(["-c", script, &bootstrap, "py-oauth", &ca, &token])
        .output()
        .expect("kafka-python (FLOE_PYTHON)");
    assert!(
        out.status.success(),
        "kafka-python: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (expired, _) = idp.mint("bob", -300, AUDIENCE);
    let started = Instant::now();
    let failed_before = failed(&c.proxies[0].http("/metrics").unwrap());
    let refused_script = r#"
import sys
from kafka import KafkaProducer
try:
    from kafka.net.sasl.oauth import AbstractTokenProvider
except ImportError:
    from kafka.sasl.oauth import AbstractTokenProvider
bootstrap, topic, ca, token = sys.argv[1:5]
class Provider(AbstractTokenProvider):
    def token(self):
        return token
try:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_block_ms=5000, bootstrap_timeout_ms=5000,
                      security_protocol="SASL_SSL", ssl_cafile=ca, sasl_mechanism="OAUTHBEARER",
                      sasl_oauth_token_provider=Provider())
    p.send(topic, value=b"intruder", partition=0).get(timeout=5)
except Exception as e:
    print("refused:", type(e).__name__, e)
    sys.exit(3)
print("admitted")
"#;
    let out = Command::new(python())
        .args(["-c", refused_script, &bootstrap, "py-oauth", &ca, &expired])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "kafka-python with an expired token: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kafka-python refused in {:?}", started.elapsed());
    assert!(
        failed(&c.proxies[0].http("/metrics").unwrap()) > failed_before,
        "kafka-python's expired token was refused by the proxy"
    );

    // A session lasts no longer than its token: with 4-second tokens a
    // producer writing for 8 seconds logs in again with fresh ones.
    let ok = |t: &str| {
        metric(
            t,
            "floe_proxy_sasl_authentications_total{mechanism=\"OAUTHBEARER\",result=\"ok\"}",
        )
    };
    let ok_before = ok(&c.proxies[0].http("/metrics").unwrap());
    let i = idp.clone();
    let ctx = tokens(move || i.mint("alice", 4, AUDIENCE));
    let minted = ctx.minted.clone();
    let long: FutureProducer<Tokens> = cfg
        .clone()
        .set("acks", "all")
        .create_with_context(ctx)
        .unwrap();
    for i in 0..16 {
        long.send(
            FutureRecord::<(), _>::to("oauth-long")
                .partition(0)
                .payload(&format!("r{i}")),
            Duration::from_secs(15),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("record {i}: {e}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ok_after = ok(&c.proxies[0].http("/metrics").unwrap());
    assert!(
        ok_after >= ok_before + 2.0,
        "logins while producing for 8 s with 4 s tokens: {ok_before} -> {ok_after}"
    );
    assert!(minted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

fn later_ms(s: i64) -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + s * 1000
}

fn log_contains_eventually(c: &Cluster, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if c.proxies[0].log_text().contains(what) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
