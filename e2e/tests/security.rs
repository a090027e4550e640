//! Security of the Kafka listeners with real clients: TLS (SSL) and mutual
//! TLS through proxies for librdkafka (the `rdkafka` crate built with
//! OpenSSL), kcat and kafka-python; several listeners per process, each
//! answering Metadata with its own addresses; untrusted clients refused
//! with no data; a new server certificate served without a restart while
//! open connections carry on; a client that stalls in the handshake
//! closed after the deadline, alone.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use floe_e2e::{free_port, Cluster, Standalone, TestPki};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// TLS client settings for librdkafka: trust `pki`'s CA, and present its
/// client certificate when `mutual`.
fn tls(c: &mut ClientConfig, ca: &Path, client: Option<(&Path, &Path)>) {
    c.set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.display().to_string());
    if let Some((cert, key)) = client {
        c.set("ssl.certificate.location", cert.display().to_string())
            .set("ssl.key.location", key.display().to_string());
    }
}

async fn produce(config: &ClientConfig, topic: &str, n: usize) -> Result<(), String> {
    let p: FutureProducer = config
        .clone()
        .set("acks", "all")
        .set("message.timeout.ms", "15000")
        .create()
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

fn consume(config: &ClientConfig, topic: &str, n: usize) -> Vec<String> {
    let c: BaseConsumer = config
        .clone()
        .set("group.id", "security-e2e")
        .set("enable.auto.commit", "false")
        .create()
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

/// The ports of the nodes a Metadata answer names.
fn metadata_ports(config: &ClientConfig) -> Result<Vec<u16>, String> {
    metadata_ports_within(config, Duration::from_secs(10))
}

fn metadata_ports_within(config: &ClientConfig, wait: Duration) -> Result<Vec<u16>, String> {
    let c: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let md = c.fetch_metadata(None, wait).map_err(|e| e.to_string())?;
    Ok(md.brokers().iter().map(|b| b.port() as u16).collect())
}

/// Whether a client configured so gets no Metadata answer (refused).
fn refused(config: &ClientConfig) -> bool {
    metadata_ports_within(config, Duration::from_secs(3)).is_err()
}

fn kcat(args: &[&str], input: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (apt-get install kcat)");
    if let Some(i) = input {
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn python() -> String {
    std::env::var("FLOE_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py-venv/bin/python").to_string()
    })
}

/// The subject a fresh TLS connection to `port` is shown (openssl CLI).
fn served_subject(port: u16, ca: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
            &ca.display().to_string(),
            "-servername",
            "127.0.0.1",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_default()
        .to_string()
}

/// A standalone whose proxy serves SSL on `--listen`, mutual TLS on a
/// second listener (MTLS) and plaintext on a third (LOCAL): every client
/// round-trips records over TLS, each listener's Metadata names its own
/// port, and untrusted or certificate-less clients of the mutual listener
/// get nothing. A new server certificate is served to new connections
/// without a restart, an open connection carries on, and a client stalled
/// in its handshake is closed after the deadline without holding up others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_listeners_serve_real_clients_and_refuse_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let rogue_dir = dir.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let rogue = TestPki::generate(&rogue_dir).unwrap();
    let (mtls_port, local_port) = (free_port(), free_port());
    let p = |p: &Path| p.display().to_string();
    let config = format!(
        r#"[proxy]
protocol = "SSL"
[proxy.tls]
cert = "{cert}"
key = "{key}"
reload_check_ms = 200
[[proxy.listeners]]
name = "MTLS"
listen = "127.0.0.1:{mtls_port}"
protocol = "SSL"
tls = {{ cert = "{cert}", key = "{key}", client_ca = "{ca}", principal_mapping_rules = ["RULE:^CN=([^,]+)$/$1/"] }}
[[proxy.listeners]]
name = "LOCAL"
listen = "127.0.0.1:{local_port}"
"#,
        cert = p(&pki.server_cert),
        key = p(&pki.server_key),
        ca = p(&pki.ca),
    );
    let s = Standalone::start_with_config(&config).unwrap();
    let ssl_port: u16 = s.bootstrap().rsplit(':').next().unwrap().parse().unwrap();

    // librdkafka over SSL: records round-trip; Metadata on each listener
    // names that listener's port.
    let mut ssl = ClientConfig::new();
    ssl.set("bootstrap.servers", s.bootstrap());
    tls(&mut ssl, &pki.ca, None);
    produce(&ssl, "tls-t", 50).await.unwrap();
    assert_eq!(consume(&ssl, "tls-t", 50), values(50));
    assert_eq!(metadata_ports(&ssl).unwrap(), vec![ssl_port]);
    let mut local = ClientConfig::new();
    local.set("bootstrap.servers", format!("127.0.0.1:{local_port}"));
    assert_eq!(metadata_ports(&local).unwrap(), vec![local_port]);
    assert_eq!(consume(&local, "tls-t", 50), values(50));

    // Mutual TLS with a certificate the CA signed: served.
    let mut mtls = ClientConfig::new();
    mtls.set("bootstrap.servers", format!("127.0.0.1:{mtls_port}"));
    tls(
        &mut mtls,
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
    );
    produce(&mtls, "mtls-t", 20).await.unwrap();
    assert_eq!(consume(&mtls, "mtls-t", 20), values(20));
    assert_eq!(metadata_ports(&mtls).unwrap(), vec![mtls_port]);
    // Without a certificate, or with one another CA signed: nothing.
    let mut anon = ClientConfig::new();
    anon.set("bootstrap.servers", format!("127.0.0.1:{mtls_port}"))
        .set("socket.timeout.ms", "3000");
    tls(&mut anon, &pki.ca, None);
    assert!(refused(&anon));
    let mut stranger = anon.clone();
    tls(
        &mut stranger,
        &pki.ca,
        Some((&rogue.client_cert, &rogue.client_key)),
    );
    assert!(refused(&stranger));
    assert!(produce(
        stranger.clone().set("message.timeout.ms", "3000"),
        "mtls-t",
        1
    )
    .await
    .is_err());
    // A client that does not trust the server's CA refuses it.
    let mut distrust = ClientConfig::new();
    distrust
        .set("bootstrap.servers", s.bootstrap())
        .set("socket.timeout.ms", "3000");
    tls(&mut distrust, &rogue.ca, None);
    assert!(refused(&distrust));

    // kcat over SSL.
    let b = s.bootstrap();
    let ca = p(&pki.ca);
    let ssl_args = [
        "-X",
        "security.protocol=ssl",
        "-X",
        &format!("ssl.ca.location={ca}"),
    ];
    let input: String = (0..30).map(|i| format!("k{i}:w{i}\n")).collect();
    let (ok, _, err) = kcat(
        &[&["-P", "-b", &b, "-t", "kcat-tls", "-K:"][..], &ssl_args].concat(),
        Some(&input),
    );
    assert!(ok, "{err}");
    let (ok, out, err) = kcat(
        &[
            &["-C", "-b", &b, "-t", "kcat-tls", "-e", "-f", "%k=%s\n"][..],
            &ssl_args,
        ]
        .concat(),
        None,
    );
    assert!(ok, "{err}");
    let want: String = (0..30).map(|i| format!("k{i}=w{i}\n")).collect();
    assert_eq!(out, want);

    // kafka-python over SSL and mutual TLS.
    let script = r#"
import sys
from kafka import KafkaProducer, KafkaConsumer, TopicPartition
bootstrap, topic, ca, cert, key = sys.argv[1:6]
extra = dict(security_protocol="SSL", ssl_cafile=ca)
if cert:
    extra.update(ssl_certfile=cert, ssl_keyfile=key)
p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **extra)
for i in range(10):
    p.send(topic, value=("p%d" % i).encode(), partition=0).get(timeout=30)
p.close()
c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                  enable_auto_commit=False, group_id=None, **extra)
tp = TopicPartition(topic, 0)
c.assign([tp])
got = []
for _ in range(100):
    for recs in c.poll(timeout_ms=200).values():
        got += [r.value.decode() for r in recs]
    if len(got) >= 10:
        break
assert got == ["p%d" % i for i in range(10)], got
print("ok", len(got))
"#;
    for (bootstrap, topic, client) in [
        (s.bootstrap(), "py-tls", None),
        (
            format!("127.0.0.1:{mtls_port}"),
            "py-mtls",
            Some((p(&pki.client_cert), p(&pki.client_key))),
        ),
    ] {
        let (cert, key) = client.unwrap_or_default();
        let out = Command::new(python())
            .args(["-c", script, &bootstrap, topic, &ca, &cert, &key])
            .output()
            .expect("kafka-python (FLOE_PYTHON)");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Rotation: an open producer, then a new certificate on disk.
    let open: FutureProducer = ssl.clone().set("acks", "all").create().unwrap();
    open.send(
        FutureRecord::<(), _>::to("rotate")
            .partition(0)
            .payload("before"),
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    assert!(served_subject(ssl_port, &pki.ca).contains("floe-e2e-server"));
    let renewed = TestPki::generate_server_from(dir.path(), "floe-e2e-renewed").unwrap();
    std::fs::copy(&renewed.0, &pki.server_cert).unwrap();
    std::fs::copy(&renewed.1, &pki.server_key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served_subject(ssl_port, &pki.ca).contains("floe-e2e-renewed") {
        assert!(
            Instant::now() < deadline,
            "the new certificate is never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connection opened before carries on.
    open.send(
        FutureRecord::<(), _>::to("rotate")
            .partition(0)
            .payload("after"),
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    assert_eq!(consume(&ssl, "rotate", 2), vec!["before", "after"]);

    // A client stalled in its handshake is closed after the deadline; the
    // listener serves others meanwhile.
    let mut stalled = std::net::TcpStream::connect(s.bootstrap()).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00]).unwrap();
    assert_eq!(metadata_ports(&ssl).unwrap(), vec![ssl_port]);
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let closed = matches!(std::io::Read::read(&mut stalled, &mut buf), Ok(0) | Err(_));
    assert!(closed && started.elapsed() < Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s
        .log_text()
        .contains("TLS handshake failed: not finished within")
    {
        assert!(
            Instant::now() < deadline,
            "no log line for the stalled handshake"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Proxies serving clients over SSL in a cluster (brokers on plaintext
/// behind them): a librdkafka client that knows only the proxies' SSL
/// listeners round-trips records through both, and every node of the
/// Metadata answer (proxies and owner nodes) is at an SSL port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_serve_clients_over_tls_in_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let extra = format!(
        "[proxy]\nlease_ttl_ms = 2000\nprotocol = \"SSL\"\n[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let mut c = Cluster::start_with(2, 1, 3_000, &extra).unwrap();
    c.add_proxy().unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let mut ssl = ClientConfig::new();
    ssl.set("bootstrap.servers", c.proxy_bootstrap());
    tls(&mut ssl, &pki.ca, None);
    let proxy_ports: Vec<u16> = c.proxies.iter().filter_map(|p| p.port).collect();
    let ports = metadata_ports(&ssl).unwrap();
    assert!(ports.iter().all(|p| proxy_ports.contains(p)), "{ports:?}");
    produce(&ssl, "cluster-tls", 100).await.unwrap();
    assert_eq!(consume(&ssl, "cluster-tls", 100), values(100));
    // A plaintext client gets nothing from an SSL listener.
    let mut plain = ClientConfig::new();
    plain
        .set("bootstrap.servers", c.proxy_bootstrap())
        .set("socket.timeout.ms", "3000");
    assert!(refused(&plain));
}

/// SASL settings for librdkafka on a SASL_SSL listener.
fn sasl(c: &mut ClientConfig, ca: &Path, mechanism: &str, user: &str, password: &str) {
    c.set("security.protocol", "sasl_ssl")
        .set("ssl.ca.location", ca.display().to_string())
        .set("sasl.mechanisms", mechanism)
        .set("sasl.username", user)
        .set("sasl.password", password);
}

/// The value of a metric line starting with `prefix` in `text` (0 if none).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A cluster whose proxy serves SASL_SSL on `--listen` (sessions of 2 s,
/// KIP-368) and plaintext on LOCAL: users set with floectl log in with
/// PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 from librdkafka, kcat and
/// kafka-python and round-trip records; a wrong password and an unknown
/// user get the same failure and no data, each logged and counted; a user
/// deleted with floectl can no longer log in; a user made with Kafka's
/// AlterUserScramCredentials logs in; a client re-authenticates on its
/// open connection when its session ends, and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_users_log_in_through_proxies_with_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let local_port = free_port();
    let extra = format!(
        "[proxy]\nlease_ttl_ms = 2000\nprotocol = \"SASL_SSL\"\nreauth_ms = 2000\n\
         [proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[proxy.listeners]]\nname = \"LOCAL\"\nlisten = \"127.0.0.1:{local_port}\"\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let mut c = Cluster::start_with(1, 1, 3_000, &extra).unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let (code, out, err) = c.floectl(0, &["user", "set", "alice", "--password", "alice-pw"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("SCRAM-SHA-256") && out.contains("SCRAM-SHA-512"),
        "{out}"
    );
    let (code, out, err) = c.floectl(
        0,
        &[
            "user",
            "set",
            "bob",
            "--password",
            "bob-pw",
            "--mechanism",
            "SCRAM-SHA-256",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = c.floectl(0, &["user", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("alice") && out.contains("bob"), "{out}");
    assert!(!out.contains("alice-pw"), "no secret is shown");

    let bootstrap = c.proxy_bootstrap();
    let client = |mechanism: &str, user: &str, password: &str| {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &bootstrap)
            .set("socket.timeout.ms", "5000");
        sasl(&mut cfg, &pki.ca, mechanism, user, password);
        cfg
    };
    // Users take effect on the proxy by watch: wait for the first login.
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused(&client("PLAIN", "alice", "alice-pw")) {
        assert!(Instant::now() < deadline, "alice never logs in");
    }
    for (i, (m, user, pw)) in [
        ("PLAIN", "alice", "alice-pw"),
        ("SCRAM-SHA-256", "alice", "alice-pw"),
        ("SCRAM-SHA-512", "alice", "alice-pw"),
        ("SCRAM-SHA-256", "bob", "bob-pw"),
        ("PLAIN", "bob", "bob-pw"),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = client(m, user, pw);
        let topic = format!("sasl-{i}");
        produce(&cfg, &topic, 20)
            .await
            .unwrap_or_else(|e| panic!("{m} {user}: {e}"));
        assert_eq!(consume(&cfg, &topic, 20), values(20), "{m} {user}");
    }
    // Wrong password, unknown user, a mechanism the user has none of: no
    // answer, no data.
    let metrics_before = c.proxies[0].http("/metrics").unwrap();
    for (m, user, pw) in [
        ("PLAIN", "alice", "nope"),
        ("SCRAM-SHA-512", "alice", "nope"),
        ("PLAIN", "mallory", "alice-pw"),
        ("SCRAM-SHA-256", "mallory", "x"),
        ("SCRAM-SHA-512", "bob", "bob-pw"),
    ] {
        assert!(refused(&client(m, user, pw)), "{m} {user} {pw}");
    }
    assert!(produce(
        client("PLAIN", "alice", "nope").set("message.timeout.ms", "3000"),
        "sasl-0",
        1
    )
    .await
    .is_err());
    let metrics = c.proxies[0].http("/metrics").unwrap();
    let failed = |t: &str, m: &str| {
        metric(
            t,
            &format!(
                "floe_proxy_sasl_authentications_total{{mechanism=\"{m}\",result=\"failed\"}}"
            ),
        )
    };
    assert!(failed(&metrics, "PLAIN") > failed(&metrics_before, "PLAIN"));
    assert!(failed(&metrics, "SCRAM-SHA-512") > failed(&metrics_before, "SCRAM-SHA-512"));
    assert!(c.proxies[0]
        .log_text()
        .contains("SASL authentication failed"));
    // Nothing was written by them.
    assert_eq!(
        consume(&client("PLAIN", "alice", "alice-pw"), "sasl-0", 25).len(),
        20
    );

    // kcat and kafka-python.
    let ca = pki.ca.display().to_string();
    let kcat_sasl = [
        "-X",
        "security.protocol=sasl_ssl",
        "-X",
        "sasl.mechanisms=SCRAM-SHA-512",
        "-X",
        "sasl.username=alice",
        "-X",
        "sasl.password=alice-pw",
        "-X",
        &format!("ssl.ca.location={ca}"),
    ];
    let input: String = (0..10).map(|i| format!("k{i}:w{i}\n")).collect();
    let (ok, _, err) = kcat(
        &[
            &["-P", "-b", &bootstrap, "-t", "kcat-sasl", "-K:"][..],
            &kcat_sasl,
        ]
        .concat(),
        Some(&input),
    );
    assert!(ok, "{err}");
    let (ok, out, err) = kcat(
        &[
            &[
                "-C",
                "-b",
                &bootstrap,
                "-t",
                "kcat-sasl",
                "-e",
                "-f",
                "%k=%s\n",
            ][..],
            &kcat_sasl,
        ]
        .concat(),
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        (0..10).map(|i| format!("k{i}=w{i}\n")).collect::<String>()
    );
    let script = r#"
import sys
from kafka import KafkaProducer, KafkaConsumer, TopicPartition
bootstrap, topic, ca, mechanism, user, password = sys.argv[1:7]
extra = dict(security_protocol="SASL_SSL", ssl_cafile=ca, sasl_mechanism=mechanism,
             sasl_plain_username=user, sasl_plain_password=password)
p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **extra)
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
    for (topic, m, user, pw) in [
        ("py-plain", "PLAIN", "alice", "alice-pw"),
        ("py-scram256", "SCRAM-SHA-256", "bob", "bob-pw"),
        ("py-scram512", "SCRAM-SHA-512", "alice", "alice-pw"),
    ] {
        let out = Command::new(python())
            .args(["-c", script, &bootstrap, topic, &ca, m, user, pw])
            .output()
            .expect("kafka-python (FLOE_PYTHON)");
        assert!(
            out.status.success(),
            "{m}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Re-authentication: a producer writing for longer than its 2 s
    // session keeps going; the proxy counts its logins.
    let ok_before = metric(
        &c.proxies[0].http("/metrics").unwrap(),
        "floe_proxy_sasl_authentications_total{mechanism=\"SCRAM-SHA-512\",result=\"ok\"}",
    );
    let long: FutureProducer = client("SCRAM-SHA-512", "alice", "alice-pw")
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..12 {
        long.send(
            FutureRecord::<(), _>::to("reauth")
                .partition(0)
                .payload(&format!("r{i}")),
            Duration::from_secs(15),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ok_after = metric(
        &c.proxies[0].http("/metrics").unwrap(),
        "floe_proxy_sasl_authentications_total{mechanism=\"SCRAM-SHA-512\",result=\"ok\"}",
    );
    assert!(
        ok_after >= ok_before + 3.0,
        "logins while producing for 6 s with 2 s sessions: {ok_before} -> {ok_after}"
    );

    // Kafka's own user API (on the plaintext LOCAL listener): a user made
    // with AlterUserScramCredentials logs in.
    {
        use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
        use kafka_protocol::messages::{
            AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
        };
        use kafka_protocol::protocol::StrBytes;
        let salt = b"e2e-salt-0123456".to_vec();
        let salted = floe_kafka::sasl::salted_password(
            floe_kafka::sasl::ScramMechanism::Sha256,
            b"carol-pw",
            &salt,
            4096,
        );
        let mut raw = floe_e2e::RawClient::connect(&format!("127.0.0.1:{local_port}")).unwrap();
        let resp: AlterUserScramCredentialsResponse = raw
            .call(
                ApiKey::AlterUserScramCredentials,
                0,
                &AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                    ScramCredentialUpsertion::default()
                        .with_name(StrBytes::from_static_str("carol"))
                        .with_mechanism(1)
                        .with_iterations(4096)
                        .with_salt(salt.into())
                        .with_salted_password(salted.into()),
                ]),
            )
            .unwrap();
        assert_eq!(resp.results[0].error_code, 0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused(&client("SCRAM-SHA-256", "carol", "carol-pw")) {
        assert!(Instant::now() < deadline, "carol never logs in");
    }

    // Deleted: no more logins.
    let (code, out, err) = c.floectl(0, &["user", "delete", "bob"]);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused(&client("SCRAM-SHA-256", "bob", "bob-pw")) {
        assert!(Instant::now() < deadline, "bob still logs in");
    }
}

/// Raw requests to a SASL_PLAINTEXT listener: a request before
/// authentication, a malformed or wrong PLAIN message, an unknown
/// mechanism and an oversized frame each close only their own connection
/// (with an answer where Kafka gives one), while a good login on another
/// connection goes on.
#[test]
fn bad_sasl_input_closes_only_its_own_connection() {
    use kafka_protocol::messages::{
        ApiKey, MetadataRequest, SaslAuthenticateRequest, SaslAuthenticateResponse,
        SaslHandshakeRequest, SaslHandshakeResponse,
    };
    use kafka_protocol::protocol::StrBytes;
    let sasl_port = free_port();
    let s = Standalone::start_with_config(&format!(
        "[[proxy.listeners]]\nname = \"SASL\"\nlisten = \"127.0.0.1:{sasl_port}\"\nprotocol = \"SASL_PLAINTEXT\"\n"
    ))
    .unwrap();
    let addr = format!("127.0.0.1:{sasl_port}");
    // A user, through Kafka's API on the plaintext listener.
    {
        use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
        use kafka_protocol::messages::{
            AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
        };
        let salt = b"e2e-salt-0123456".to_vec();
        let salted = floe_kafka::sasl::salted_password(
            floe_kafka::sasl::ScramMechanism::Sha512,
            b"pw",
            &salt,
            4096,
        );
        let mut raw = floe_e2e::RawClient::connect(&s.bootstrap()).unwrap();
        let resp: AlterUserScramCredentialsResponse = raw
            .call(
                ApiKey::AlterUserScramCredentials,
                0,
                &AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                    ScramCredentialUpsertion::default()
                        .with_name(StrBytes::from_static_str("dave"))
                        .with_mechanism(2)
                        .with_iterations(4096)
                        .with_salt(salt.into())
                        .with_salted_password(salted.into()),
                ]),
            )
            .unwrap();
        assert_eq!(resp.results[0].error_code, 0);
    }
    let handshake = |raw: &mut floe_e2e::RawClient, m: &str| -> SaslHandshakeResponse {
        raw.call(
            ApiKey::SaslHandshake,
            1,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(m.into())),
        )
        .unwrap()
    };
    let authenticate = |raw: &mut floe_e2e::RawClient, token: &[u8]| {
        raw.call::<_, SaslAuthenticateResponse>(
            ApiKey::SaslAuthenticate,
            2,
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(bytes::Bytes::copy_from_slice(token)),
        )
    };
    // A good login holds its connection throughout.
    let mut good = floe_e2e::RawClient::connect(&addr).unwrap();
    assert_eq!(handshake(&mut good, "PLAIN").error_code, 0);
    let ok = authenticate(&mut good, b"\0dave\0pw").unwrap();
    assert_eq!(ok.error_code, 0);

    // A request before authentication: closed.
    let mut early = floe_e2e::RawClient::connect(&addr).unwrap();
    assert!(early
        .request(ApiKey::Metadata, 12, &MetadataRequest::default())
        .is_err());
    // Malformed PLAIN, and a wrong password: SASL_AUTHENTICATION_FAILED, closed.
    for token in [&b"garbage-without-nuls"[..], b"\0dave\0wrong"] {
        let mut raw = floe_e2e::RawClient::connect(&addr).unwrap();
        assert_eq!(handshake(&mut raw, "PLAIN").error_code, 0);
        let r = authenticate(&mut raw, token).unwrap();
        assert_eq!(
            r.error_code,
            kafka_protocol::ResponseError::SaslAuthenticationFailed.code()
        );
        assert!(r.error_message.is_some());
        assert!(raw.closed_by_server());
    }
    // A SCRAM final message with a forged nonce.
    let mut raw = floe_e2e::RawClient::connect(&addr).unwrap();
    assert_eq!(handshake(&mut raw, "SCRAM-SHA-512").error_code, 0);
    let first = authenticate(&mut raw, b"n,,n=dave,r=abcdef").unwrap();
    assert_eq!(first.error_code, 0);
    let r = authenticate(&mut raw, b"c=biws,r=forged,p=AAAA").unwrap();
    assert_eq!(
        r.error_code,
        kafka_protocol::ResponseError::SaslAuthenticationFailed.code()
    );
    assert!(raw.closed_by_server());
    // An unknown mechanism: UNSUPPORTED_SASL_MECHANISM with the list.
    let mut raw = floe_e2e::RawClient::connect(&addr).unwrap();
    let h = handshake(&mut raw, "GSSAPI");
    assert_eq!(
        h.error_code,
        kafka_protocol::ResponseError::UnsupportedSaslMechanism.code()
    );
    assert!(h.mechanisms.iter().any(|m| m.as_str() == "SCRAM-SHA-512"));
    assert!(raw.closed_by_server());
    // An oversized frame before authentication: closed.
    let mut raw = floe_e2e::RawClient::connect(&addr).unwrap();
    let mut big = ((1u32 << 20) as i32).to_be_bytes().to_vec();
    big.extend(vec![0u8; 64]);
    raw.send_raw(&big).unwrap();
    assert!(raw.closed_by_server());
    // The good connection still works, as dave.
    let md: kafka_protocol::messages::MetadataResponse = good
        .call(ApiKey::Metadata, 12, &MetadataRequest::default())
        .unwrap();
    assert!(!md.brokers.is_empty());
    assert!(s.log_text().contains("SASL authentication failed"));
}

/// `floe standalone --try-security`: the listener is SASL_SSL with a
/// certificate and a user made on the spot, printed at start; librdkafka
/// logs in with what was printed and round-trips records, a plaintext
/// client and a wrong password get nothing, and after a restart the same
/// CA and password still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_try_security_serves_sasl_ssl_with_the_login_it_prints() {
    let mut s = Standalone::start_with_args("", &["--try-security"]).unwrap();
    assert!(s.wait_log("Security try-out"), "{}", s.log_text());
    let log = s.log_text();
    let field = |name: &str| -> String {
        log.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} line in:\n{log}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let (ca, user, password) = (field("CA certificate"), field("user"), field("password"));
    assert_eq!(user, "admin");
    let dir = s.data_dir.join("try-security");
    assert_eq!(Path::new(&ca), dir.join("ca.pem"));
    assert_eq!(
        std::fs::read_to_string(dir.join("admin.password"))
            .unwrap()
            .trim(),
        password
    );
    let bootstrap = s.bootstrap();
    let login = |password: &str| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &bootstrap)
            .set("socket.timeout.ms", "5000");
        sasl(&mut c, Path::new(&ca), "SCRAM-SHA-512", "admin", password);
        c
    };
    produce(&login(&password), "try", 10).await.unwrap();
    assert_eq!(consume(&login(&password), "try", 10), values(10));
    assert!(refused(&login("wrong")));
    let mut plain = ClientConfig::new();
    plain.set("bootstrap.servers", s.bootstrap());
    assert!(refused(&plain));

    s.restart().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("admin.password"))
            .unwrap()
            .trim(),
        password,
        "the password is kept"
    );
    assert_eq!(consume(&login(&password), "try", 10), values(10));
}
