//! Internal traffic secured (issue 18): a cluster whose processes hold
//! certificates of one cluster CA (`[internal_tls]`), on an etcd served
//! over TLS with client certificates and user authentication, runs the
//! happy path (topics, produce and consume through a proxy, a consumer
//! group, a move through the leader and one through a standby, the admin
//! API's group listing over the brokers' mutual-TLS listeners); and a
//! process without the cluster certificate cannot produce to a broker,
//! subscribe to a broker's tail push, move a partition through a
//! controller's HTTP endpoint, or use etcd.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use floe_e2e::{http_post_with, Cluster, TestPki, ADMIN_TOKEN};
use floe_meta::MetadataStore;
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "secured";

async fn produce(bootstrap: &str, extra: &[(&str, &str)], from: usize, n: usize) {
    let mut c = floe_e2e::idempotent_producer_config(bootstrap);
    for (k, v) in extra {
        c.set(*k, *v);
    }
    let p: FutureProducer = c.create().unwrap();
    let sends = (from..from + n).map(|i| {
        let payload = format!("record-{i}");
        let p = p.clone();
        async move {
            p.send(
                FutureRecord::<(), _>::to(TOPIC)
                    .partition((i % 2) as i32)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
        }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
}

/// Consume `n` records as group `group` (subscribe, commit), every one
/// of them: their payloads, sorted.
fn consume_group(bootstrap: &str, group: &str, n: usize) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[TOPIC]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < n && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            got.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    }
    c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    got.sort();
    got
}

fn expected(n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("record-{i}")).collect();
    v.sort();
    v
}

/// The topic's id and broker `b`'s tail push address, from etcd.
async fn topic_and_tail(c: &Cluster, broker: i32) -> (Vec<u8>, String) {
    let meta = c.meta().await.unwrap();
    let t = meta
        .get(&floe_meta::keys::topic(TOPIC))
        .await
        .unwrap()
        .unwrap();
    let t = floe_meta::schema::TopicRecord::decode(t.value).unwrap();
    let b = meta
        .get(&floe_meta::keys::broker(broker))
        .await
        .unwrap()
        .unwrap();
    let b = floe_meta::schema::BrokerRecord::decode(b.value).unwrap();
    (t.id, b.tail)
}

/// Subscribe to partition 0's tail push at `addr` over TLS trusting the
/// cluster CA, presenting `identity` (cert, key) if given: whether the
/// first message (the snapshot) arrived.
async fn follow(
    addr: &str,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
    topic_id: &[u8],
) -> Result<(), String> {
    use floe_rpc::tail::{pb, TailClient};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = TailClient::new(channel);
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        client.follow(pb::FollowRequest {
            topic_id: bytes::Bytes::copy_from_slice(topic_id),
            partition: 0,
        }),
    )
    .await
    .map_err(|_| "no answer".to_string())?
    .map_err(|s| format!("follow: {s:?}"))?
    .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err("stream ended".into()),
        Ok(Err(s)) => Err(format!("stream: {s:?}")),
        Err(_) => Err("no snapshot".into()),
    }
}

/// Same over plaintext gRPC.
async fn follow_plaintext(addr: &str, topic_id: &[u8]) -> Result<(), String> {
    use floe_rpc::tail::{pb, TailClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = TailClient::new(channel);
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        client.follow(pb::FollowRequest {
            topic_id: bytes::Bytes::copy_from_slice(topic_id),
            partition: 0,
        }),
    )
    .await
    .map_err(|_| "no answer".to_string())?
    .map_err(|s| format!("follow: {s:?}"))?
    .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(_))) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_cluster_works_and_refuses_processes_without_the_cluster_certificate() {
    let mut c = Cluster::start_secure(2, 2, 3_000, "").unwrap();
    c.add_proxy().unwrap();
    let proxy = c.proxy_bootstrap();
    let pki = c.pki();
    let ca = pki.join("ca.pem");
    let (cluster_cert, cluster_key) =
        (pki.join("floe-internal.pem"), pki.join("floe-internal.key"));

    // The happy path, every internal hop over mutual TLS and etcd secured.
    floe_e2e::create_topic(&proxy, TOPIC, 2).await;
    produce(&proxy, &[], 0, 200).await;
    assert_eq!(
        consume_group(&proxy, "readers", 200),
        expected(200),
        "logs:\n{}",
        c.logs()
    );
    let owner = floe_e2e::leaders(&proxy, TOPIC);
    let state = Cluster::partition_state(&c.meta().await.unwrap(), TOPIC, 0)
        .await
        .unwrap()
        .unwrap();
    let other = if state.broker_id == 1 { 2 } else { 1 };
    let epoch = c.move_partition(TOPIC, 0, other).unwrap();
    assert!(epoch > state.epoch, "a move makes a new epoch");
    // A move asked of a standby is handed to the leader with the token.
    let leader = c.wait_leader(Duration::from_secs(30)).unwrap();
    let standby = 1 - leader;
    let back = if other == 1 { 2 } else { 1 };
    let (rc, out, err) = c.floectl(standby, &["move", TOPIC, "1", "--to", &back.to_string()]);
    assert_eq!(rc, 0, "floectl move through the standby: {out}{err}");
    produce(&proxy, &[], 200, 100).await;
    let all = floe_e2e::read_all(&proxy, TOPIC, 2);
    let mut payloads: Vec<String> = all
        .values()
        .flatten()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect();
    payloads.sort();
    assert_eq!(payloads, expected(300), "owners before: {owner:?}");
    // The admin API lists groups by asking every broker over its
    // mutual-TLS listener.
    let (rc, out, err) = c.floectl(0, &["groups"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("readers"), "floectl groups: {out}");
    assert!(!out.contains("unreachable"), "floectl groups: {out}");

    // A producer straight to a broker: with the cluster certificate it
    // is admitted (the listener works); with a certificate of another
    // CA, or none, or over plaintext, nothing is written.
    let broker = format!("127.0.0.1:{}", c.brokers[0].port.unwrap());
    let tls_with = |cert: &std::path::Path, key: &std::path::Path| {
        vec![
            ("security.protocol", "ssl".to_string()),
            ("ssl.ca.location", ca.display().to_string()),
            ("ssl.certificate.location", cert.display().to_string()),
            ("ssl.key.location", key.display().to_string()),
        ]
    };
    let good = tls_with(&cluster_cert, &cluster_key);
    let good: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    produce(&broker, &good, 300, 2).await;

    let foreign = tempfile::tempdir().unwrap();
    TestPki::generate(foreign.path()).unwrap();
    let (f_cert, f_key) = TestPki::generate_peer_from(foreign.path(), "floe-internal").unwrap();
    let bad = tls_with(&f_cert, &f_key);
    let no_cert = [
        ("security.protocol", "ssl".to_string()),
        ("ssl.ca.location", ca.display().to_string()),
    ];
    let plain = [("security.protocol", "plaintext".to_string())];
    for (what, settings) in [
        ("a foreign CA's certificate", bad.clone()),
        ("no certificate", no_cert.to_vec()),
        ("plaintext", plain.to_vec()),
    ] {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &broker)
            .set("message.timeout.ms", "5000")
            .set("acks", "all");
        for (k, v) in &settings {
            cfg.set(*k, v);
        }
        let p: FutureProducer = cfg.create().unwrap();
        let r = p
            .send(
                FutureRecord::<(), _>::to(TOPIC)
                    .partition(0)
                    .payload("intruder"),
                Duration::from_secs(10),
            )
            .await;
        assert!(r.is_err(), "a producer with {what} was admitted: {r:?}");
    }
    let all = floe_e2e::read_all(&proxy, TOPIC, 2);
    let payloads: Vec<&[u8]> = all.values().flatten().map(|(_, v)| v.as_slice()).collect();
    assert_eq!(
        payloads.len(),
        302,
        "only the admitted records were written"
    );
    assert!(!payloads.contains(&b"intruder".as_slice()));

    // The tail push: with the cluster certificate a subscription gets its
    // snapshot; without one, with a foreign one, or over plaintext, none.
    let state = Cluster::partition_state(&c.meta().await.unwrap(), TOPIC, 0)
        .await
        .unwrap()
        .unwrap();
    let (topic_id, tail) = topic_and_tail(&c, state.broker_id).await;
    follow(&tail, &ca, Some((&cluster_cert, &cluster_key)), &topic_id)
        .await
        .unwrap();
    let refused = follow(&tail, &ca, None, &topic_id).await;
    assert!(
        refused.is_err(),
        "a follower without a certificate: {refused:?}"
    );
    let refused = follow(&tail, &ca, Some((&f_cert, &f_key)), &topic_id).await;
    assert!(
        refused.is_err(),
        "a follower with a foreign certificate: {refused:?}"
    );
    let refused = follow_plaintext(&tail, &topic_id).await;
    assert!(refused.is_err(), "a plaintext follower: {refused:?}");

    // The controller's move call takes the admin token only.
    let leader = c.wait_leader(Duration::from_secs(30)).unwrap();
    let port = c.controllers[leader].http_port;
    let target = if state.broker_id == 1 { 2 } else { 1 };
    let path = format!("/v1/move?topic={TOPIC}&partition=0&broker={target}");
    for token in [None, Some("wrong-token"), Some("e2e-admin-tokenX")] {
        let r = http_post_with(port, &path, token);
        let e = r.expect_err("a move without the token was taken");
        assert!(e.to_string().contains(" 401 "), "{e}");
    }
    let after = Cluster::partition_state(&c.meta().await.unwrap(), TOPIC, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (after.broker_id, after.epoch),
        (state.broker_id, state.epoch),
        "refused moves moved nothing"
    );
    let moved: i32 = http_post_with(port, &path, Some(ADMIN_TOKEN))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(moved > state.epoch);
    let log = c.controllers[leader].log_text();
    assert!(
        log.contains("move refused: missing or wrong bearer token"),
        "refusals are logged"
    );

    // etcd: a client whose certificate names no etcd user, and who gives
    // none, is refused; the cluster's own settings work.
    let (o_cert, o_key) = TestPki::generate_peer_from(&pki, "outsider").unwrap();
    let outsider = floe_meta::EtcdSecurity {
        ca: Some(ca.clone()),
        cert: Some(o_cert),
        key: Some(o_key),
        user: None,
        password_file: None,
    };
    let refused = match floe_meta::EtcdStore::connect_with(&[c.etcd.url()], &outsider).await {
        Err(e) => e.to_string(),
        Ok(store) => match store.get(&floe_meta::keys::topic(TOPIC)).await {
            Err(e) => e.to_string(),
            Ok(v) => panic!("etcd served an outsider: {v:?}"),
        },
    };
    assert!(
        refused.to_lowercase().contains("permission")
            || refused.to_lowercase().contains("user")
            || refused.to_lowercase().contains("auth"),
        "{refused}"
    );
    let no_tls = floe_meta::EtcdStore::connect(&[c.etcd.url().replace("https", "http")]).await;
    assert!(no_tls.is_err(), "etcd answered plaintext");
}
