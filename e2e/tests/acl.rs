//! Kafka ACLs enforced at the proxies, with real clients logged in over
//! SASL: WRITE on a prefix lets a producer write there and nowhere else
//! (TOPIC_AUTHORIZATION_FAILED), READ on a topic and a group lets a
//! consumer group read it, a DENY beats an ALLOW, Metadata shows a client
//! only the topics it may describe, a super user passes everything, an ACL
//! added or removed (floectl, or Kafka's CreateAcls) applies on every
//! proxy within a second, a transactional id needs WRITE on it
//! (TRANSACTIONAL_ID_AUTHORIZATION_FAILED before), and every decision is
//! counted and logged.
//!
//! Brokers see the proxies' forwarded requests as `User:ANONYMOUS` (the
//! proxies reach them over plaintext), so that principal is a super user
//! here: the proxies, where clients are, enforce.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use floe_e2e::{Cluster, RawClient};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

const TAF: i16 = 29; // TOPIC_AUTHORIZATION_FAILED

fn sasl(bootstrap: &str, user: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanisms", "SCRAM-SHA-256")
        .set("sasl.username", user)
        .set("sasl.password", password)
        .set("message.timeout.ms", "10000");
    c
}

/// One record to partition 0 of `topic` through proxy `addr` as `user`:
/// the error code of the answer.
fn raw_produce(addr: &str, user: &str, password: &str, topic: &str) -> i16 {
    let mut raw = RawClient::connect_sasl_plain(addr, user, password).unwrap();
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from(
                    floe_protocol::batch::synthetic_batch(1, 8, 1_000),
                )))])]);
    let resp: ProduceResponse = raw.call(ApiKey::Produce, 9, &req).unwrap();
    resp.responses[0].partition_responses[0].error_code
}

/// Wait (up to `limit`) until `check` holds on every proxy; how long it took.
fn until_everywhere(proxies: &[String], limit: Duration, check: impl Fn(&str) -> bool) -> Duration {
    let started = Instant::now();
    for p in proxies {
        while !check(p) {
            assert!(
                started.elapsed() < limit,
                "not in effect on proxy {p} after {:?}",
                started.elapsed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    started.elapsed()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_decide_what_each_principal_may_do_on_every_proxy() {
    // Decisions are logged at debug (nextest runs this test alone in its
    // process: the variable reaches only the processes it starts).
    std::env::set_var("FLOE_E2E_LOG", "info,floe_kafka::acl=debug");
    let extra = "[proxy]\nlease_ttl_ms = 2000\nprotocol = \"SASL_PLAINTEXT\"\n\
                 [authorizer]\nenabled = true\nsuper_users = [\"User:admin\", \"User:ANONYMOUS\"]\n";
    let mut c = Cluster::start_with(1, 1, 3_000, extra).unwrap();
    c.add_proxy().unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    for (user, pw) in [
        ("admin", "admin-pw"),
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
    ] {
        let (code, out, err) = c.floectl(0, &["user", "set", user, "--password", pw]);
        assert_eq!(code, 0, "{out}{err}");
    }
    for t in ["orders-eu", "orders-secret", "orders-probe", "payments"] {
        let (code, out, err) = c.floectl(0, &["topic", "create", t, "--partitions", "1"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let acl = |args: &[&str]| {
        let (code, out, err) = c.floectl(0, &[&["acl"][..], args].concat());
        assert_eq!(code, 0, "{out}{err}");
        out
    };
    acl(&[
        "add",
        "--principal",
        "User:alice",
        "--operation",
        "WRITE",
        "--resource-type",
        "TOPIC",
        "--pattern",
        "PREFIXED",
        "--resource",
        "orders-",
    ]);
    acl(&[
        "add",
        "--principal",
        "User:alice",
        "--operation",
        "ALL",
        "--permission",
        "DENY",
        "--resource-type",
        "TOPIC",
        "--resource",
        "orders-secret",
    ]);
    acl(&[
        "add",
        "--principal",
        "User:bob",
        "--operation",
        "READ",
        "--resource-type",
        "TOPIC",
        "--resource",
        "orders-eu",
    ]);
    acl(&[
        "add",
        "--principal",
        "User:bob",
        "--operation",
        "READ",
        "--resource-type",
        "GROUP",
        "--resource",
        "billing",
    ]);
    let listed = acl(&["list", "--principal", "User:alice"]);
    assert!(
        listed.contains("PREFIXED") && listed.contains("DENY"),
        "{listed}"
    );

    let proxies: Vec<String> = c
        .proxies
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.port.unwrap()))
        .collect();
    // The ACLs reach every proxy by watch.
    until_everywhere(&proxies, Duration::from_secs(5), |p| {
        raw_produce(p, "alice", "alice-pw", "orders-probe") == 0
    });
    let bootstrap = c.proxy_bootstrap();

    // alice: WRITE on orders-*, but not on payments, and the DENY wins on
    // orders-secret.
    let alice: FutureProducer = sasl(&bootstrap, "alice", "alice-pw").create().unwrap();
    for i in 0..10 {
        alice
            .send(
                FutureRecord::<(), _>::to("orders-eu")
                    .partition(0)
                    .payload(&format!("o{i}")),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    for topic in ["payments", "orders-secret"] {
        let e = alice
            .send(
                FutureRecord::<(), _>::to(topic).partition(0).payload("x"),
                Duration::from_secs(10),
            )
            .await
            .unwrap_err()
            .0;
        assert_eq!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed),
            "{topic}: {e}"
        );
        for p in &proxies {
            assert_eq!(
                raw_produce(p, "alice", "alice-pw", topic),
                TAF,
                "{topic} at {p}"
            );
        }
    }
    // bob: READ on orders-eu and group billing: his group reads alice's
    // records; he may not write, and sees only orders-eu in Metadata.
    let bob: BaseConsumer = sasl(&bootstrap, "bob", "bob-pw")
        .set("group.id", "billing")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    bob.subscribe(&["orders-eu"]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 10 && Instant::now() < deadline {
        if let Some(m) = bob.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
        }
    }
    assert_eq!(got, (0..10).map(|i| format!("o{i}")).collect::<Vec<_>>());
    bob.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    let md = bob.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let topics: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    assert_eq!(
        topics,
        vec!["orders-eu"],
        "Metadata shows only what bob may describe"
    );
    assert_eq!(raw_produce(&proxies[0], "bob", "bob-pw", "orders-eu"), TAF);
    // Another group: refused.
    let stranger: BaseConsumer = sasl(&bootstrap, "bob", "bob-pw")
        .set("group.id", "not-his")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    stranger.subscribe(&["orders-eu"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refused = false;
    while !refused && Instant::now() < deadline {
        if let Some(Err(e)) = stranger.poll(Duration::from_millis(200)) {
            refused = e.rdkafka_error_code() == Some(RDKafkaErrorCode::GroupAuthorizationFailed);
        }
    }
    assert!(
        refused,
        "GROUP_AUTHORIZATION_FAILED for a group bob may not read"
    );
    drop(stranger);
    // admin, a super user, writes anywhere.
    for p in &proxies {
        assert_eq!(raw_produce(p, "admin", "admin-pw", "payments"), 0);
    }

    // An ACL added, then removed: in effect on every proxy within a second.
    acl(&[
        "add",
        "--principal",
        "User:bob",
        "--operation",
        "WRITE",
        "--resource-type",
        "TOPIC",
        "--resource",
        "payments",
    ]);
    let took = until_everywhere(&proxies, Duration::from_secs(1), |p| {
        raw_produce(p, "bob", "bob-pw", "payments") == 0
    });
    eprintln!("added ACL in effect on every proxy after {took:?}");
    let out = acl(&[
        "remove",
        "--principal",
        "User:bob",
        "--resource",
        "payments",
    ]);
    assert!(out.contains("removed 1 ACLs"), "{out}");
    let took = until_everywhere(&proxies, Duration::from_secs(1), |p| {
        raw_produce(p, "bob", "bob-pw", "payments") == TAF
    });
    eprintln!("removed ACL in effect on every proxy after {took:?}");

    // Kafka's own ACL API (as admin) works too: DescribeAcls through a
    // proxy lists alice's three bindings' resources.
    {
        use kafka_protocol::messages::{DescribeAclsRequest, DescribeAclsResponse};
        let mut raw = RawClient::connect_sasl_plain(&proxies[1], "admin", "admin-pw").unwrap();
        let d: DescribeAclsResponse = raw
            .call(
                ApiKey::DescribeAcls,
                3,
                &DescribeAclsRequest::default()
                    .with_resource_type_filter(1)
                    .with_resource_name_filter(None)
                    .with_host_filter(None)
                    .with_pattern_type_filter(1)
                    .with_principal_filter(Some(StrBytes::from_static_str("User:alice")))
                    .with_operation(1)
                    .with_permission_type(1),
            )
            .unwrap();
        assert_eq!(d.error_code, 0);
        let names: Vec<String> = d
            .resources
            .iter()
            .map(|r| r.resource_name.to_string())
            .collect();
        assert_eq!(names, vec!["orders-", "orders-secret"]);
        // bob may not describe ACLs.
        let mut raw = RawClient::connect_sasl_plain(&proxies[1], "bob", "bob-pw").unwrap();
        let d: DescribeAclsResponse = raw
            .call(ApiKey::DescribeAcls, 3, &DescribeAclsRequest::default())
            .unwrap();
        assert_eq!(d.error_code, 31, "CLUSTER_AUTHORIZATION_FAILED");
    }

    // Transactions: WRITE on the transactional id (alice has none yet),
    // then on a prefix of ids; a transactional producer with that id works.
    {
        use kafka_protocol::messages::{
            FindCoordinatorRequest, FindCoordinatorResponse, InitProducerIdRequest,
            InitProducerIdResponse, TransactionalId,
        };
        const TIAF: i16 = 53; // TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        let init = |addr: &str, id: &str| -> i16 {
            let mut raw = RawClient::connect_sasl_plain(addr, "alice", "alice-pw").unwrap();
            let r: InitProducerIdResponse = raw
                .call(
                    ApiKey::InitProducerId,
                    4,
                    &InitProducerIdRequest::default()
                        .with_transactional_id(Some(TransactionalId(StrBytes::from_string(
                            id.to_string(),
                        ))))
                        .with_transaction_timeout_ms(60_000)
                        .with_producer_id((-1).into())
                        .with_producer_epoch(-1),
                )
                .unwrap();
            r.error_code
        };
        assert_eq!(init(&proxies[0], "alice-tx"), TIAF);
        let mut raw = RawClient::connect_sasl_plain(&proxies[0], "alice", "alice-pw").unwrap();
        let f: FindCoordinatorResponse = raw
            .call(
                ApiKey::FindCoordinator,
                3,
                &FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_static_str("alice-tx"))
                    .with_key_type(1),
            )
            .unwrap();
        assert_eq!(f.error_code, TIAF);
        acl(&[
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "WRITE",
            "--resource-type",
            "TRANSACTIONAL_ID",
            "--pattern",
            "PREFIXED",
            "--resource",
            "alice-",
        ]);
        acl(&[
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "DESCRIBE",
            "--resource-type",
            "TRANSACTIONAL_ID",
            "--pattern",
            "PREFIXED",
            "--resource",
            "alice-",
        ]);
        until_everywhere(&proxies, Duration::from_secs(5), |p| {
            init(p, "alice-tx") != TIAF
        });
        assert_eq!(init(&proxies[1], "bob-tx"), TIAF, "only her prefix");
        let tx: FutureProducer = sasl(&bootstrap, "alice", "alice-pw")
            .set("transactional.id", "alice-tx")
            .create()
            .unwrap();
        use rdkafka::producer::Producer;
        tx.init_transactions(Duration::from_secs(30)).unwrap();
        tx.begin_transaction().unwrap();
        tx.send(
            FutureRecord::<(), _>::to("orders-eu")
                .partition(0)
                .payload("in-txn"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        tx.commit_transaction(Duration::from_secs(30)).unwrap();
    }

    // Every decision is counted and logged.
    let m = c.proxies[0].http("/metrics").unwrap();
    assert!(
        metric(
            &m,
            "floe_proxy_authorizations_total{operation=\"WRITE\",resource_type=\"TOPIC\",decision=\"denied\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "floe_proxy_authorizations_total{operation=\"WRITE\",resource_type=\"TOPIC\",decision=\"allowed\"}"
        ) >= 1.0
    );
    assert!(c.proxies[0]
        .log_text()
        .lines()
        .any(|l| l.contains("authorization")
            && l.contains("User:bob")
            && l.contains("allowed=false")));
}
