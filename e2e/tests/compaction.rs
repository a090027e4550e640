//! Compacted topics (issue 21), what is built so far: `cleanup.policy`
//! and the compaction settings as Kafka clients set and read them
//! (librdkafka's and kafka-python's admin clients, DescribeConfigs with
//! its sources), bad values refused with INVALID_CONFIG, and KIP-467's
//! refusal of keyless records on a compacted topic as librdkafka reports
//! it record by record.

use std::process::Command;
use std::time::Duration;

use floe_e2e::Standalone;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

fn python() -> String {
    std::env::var("FLOE_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py-venv/bin/python").to_string()
    })
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

fn opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_topics_are_created_described_and_validated_by_kafka_clients() {
    let s = Standalone::start().unwrap();
    let b = s.bootstrap();
    let a = admin(&b);

    // librdkafka: a compacted topic with settings, and bad values refused.
    let t = NewTopic::new("connect-configs", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("min.cleanable.dirty.ratio", "0.2")
        .set("delete.retention.ms", "1000");
    let r = a.create_topics(&[t], &opts()).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    for (name, value) in [
        ("cleanup.policy", "compacted"),
        ("min.cleanable.dirty.ratio", "1.5"),
        ("max.compaction.lag.ms", "0"),
    ] {
        let t = NewTopic::new("bad-config", 1, TopicReplication::Fixed(1)).set(name, value);
        let r = a.create_topics(&[t], &opts()).await.unwrap();
        match &r[0] {
            Err((_, code)) => assert_eq!(*code, RDKafkaErrorCode::InvalidConfig, "{name}={value}"),
            Ok(_) => panic!("{name}={value} was accepted"),
        }
    }
    // IncrementalAlterConfigs turns a topic compact,delete.
    let t = NewTopic::new("cdc", 1, TopicReplication::Fixed(1));
    assert!(a.create_topics(&[t], &opts()).await.unwrap()[0].is_ok());
    let alter =
        AlterConfig::new(ResourceSpecifier::Topic("cdc")).set("cleanup.policy", "compact,delete");
    let r = a.alter_configs(&[alter], &opts()).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");

    // kafka-python: creates one, reads the others' configs with sources,
    // gets INVALID_CONFIG with a message for a bad policy.
    let script = r#"
import sys
from kafka.admin import KafkaAdminClient, NewTopic, ConfigResource, ConfigResourceType
from kafka.errors import InvalidConfigurationError
a = KafkaAdminClient(bootstrap_servers=sys.argv[1])
a.create_topics([NewTopic("schemas", 1, 1, topic_configs={"cleanup.policy": "compact"})])
try:
    a.create_topics([NewTopic("bad-py", 1, 1, topic_configs={"cleanup.policy": "shred"})])
    print("bad accepted")
except InvalidConfigurationError as e:
    print("invalid", "cleanup.policy" in str(e))
for topic in ["schemas", "connect-configs", "cdc"]:
    r = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, ["cleanup.policy", "min.cleanable.dirty.ratio", "delete.retention.ms"])], config_filter="all")
    for name, c in r["topic"][topic].items():
        print(topic, name, c["value"], c["config_source"], c["config_type"])
"#;
    let out = Command::new(python())
        .args(["-c", script, &b])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kafka-python: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"invalid True"), "{text}");
    // Sources: the topic's own setting or Kafka's default; types as Kafka's.
    for want in [
        "schemas cleanup.policy compact DYNAMIC_TOPIC_CONFIG LIST",
        "schemas min.cleanable.dirty.ratio 0.5 DEFAULT_CONFIG DOUBLE",
        "connect-configs cleanup.policy compact DYNAMIC_TOPIC_CONFIG LIST",
        "connect-configs min.cleanable.dirty.ratio 0.2 DYNAMIC_TOPIC_CONFIG DOUBLE",
        "connect-configs delete.retention.ms 1000 DYNAMIC_TOPIC_CONFIG LONG",
        "cdc cleanup.policy compact,delete DYNAMIC_TOPIC_CONFIG LIST",
        "cdc delete.retention.ms 86400000 DEFAULT_CONFIG LONG",
    ] {
        assert!(lines.contains(&want), "{want:?} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_on_a_compacted_topic_are_refused_record_by_record() {
    let s = Standalone::start().unwrap();
    let b = s.bootstrap();
    let t = NewTopic::new("keyed", 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    assert!(admin(&b).create_topics(&[t], &opts()).await.unwrap()[0].is_ok());
    // One batch: a long linger.
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("linger.ms", "200")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    // Two keyless records among keyed ones: librdkafka marks the records
    // the broker names INVALID_RECORD and the rest of the batch
    // INVALID_DIFFERENT_RECORD (with a single record error it reports the
    // partition's INVALID_RECORD for every record of the batch).
    let keys = [Some("k1"), None, Some("k2"), None];
    let mut sends = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let value = format!("v{i}");
        let mut r = FutureRecord::<str, str>::to("keyed")
            .partition(0)
            .payload(&value);
        if let Some(k) = k {
            r = r.key(*k);
        }
        sends.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
    }
    let mut codes = Vec::new();
    for f in sends {
        match f.await.unwrap() {
            Ok(_) => codes.push(None),
            Err((e, _)) => codes.push(e.rdkafka_error_code()),
        }
    }
    assert_eq!(
        codes,
        vec![
            Some(RDKafkaErrorCode::InvalidDifferentRecord),
            Some(RDKafkaErrorCode::InvalidRecord),
            Some(RDKafkaErrorCode::InvalidDifferentRecord),
            Some(RDKafkaErrorCode::InvalidRecord),
        ],
        "the keyless records are named; the others of their batch are not written"
    );
    // Keyed records alone are taken.
    let d = p
        .send(
            FutureRecord::to("keyed")
                .partition(0)
                .key("k3")
                .payload("v3"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(d.offset, 0, "nothing of the refused batch was written");
    // A topic that is not compacted takes keyless records.
    floe_e2e::create_topic(&b, "plain", 1).await;
    p.send(
        FutureRecord::<(), str>::to("plain")
            .partition(0)
            .payload("no key"),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}
