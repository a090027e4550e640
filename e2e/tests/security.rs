//! Security of the Kafka listeners with real clients: TLS (SSL) and mutual
//! TLS through proxies for librdkafka (the `rdkafka` crate built with
//! OpenSSL), kcat and kafka-python; several listeners per process, each
//! answering Metadata with its own addresses; untrusted clients refused
//! with no data; a new server certificate served without a restart while
//! open connections carry on; a client that stalls in the handshake
//! closed after the deadline, alone.

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
        .set("group.id", format!("g-{topic}-{}", free_port()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
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
