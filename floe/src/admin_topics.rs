//! The admin API's topic calls: create, delete and alter configs, written to
//! etcd with the same validation as Kafka's CreateTopics and
//! IncrementalAlterConfigs on a broker (names, partition counts, config
//! names and values); the controller assigns new partitions and removes a
//! deleted topic's metadata and objects.

use std::collections::BTreeMap;

use floe_broker::TopicConfig;
use floe_common::Uuid;
use floe_meta::schema::{TopicRecord, FORMAT};
use floe_meta::{keys, Condition, MetadataStore, Op, Txn};
use prost::Message;
use tonic::Status;

use crate::admin::unavailable;
use crate::admin_pb as pb;

/// Topics clients rely on that an operator must not delete.
const INTERNAL: &[&str] = &["__consumer_offsets"];

async fn read(meta: &dyn MetadataStore, name: &str) -> Result<(TopicRecord, i64), Status> {
    let kv = meta
        .get(&keys::topic(name))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::not_found(format!("unknown topic {name:?}")))?;
    let t = TopicRecord::decode(kv.value)
        .map_err(|e| Status::internal(format!("topic record: {e}")))?;
    Ok((t, kv.mod_revision))
}

fn validate(configs: &BTreeMap<String, String>) -> Result<(), Status> {
    TopicConfig::resolve(&BTreeMap::new(), configs)
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

pub async fn create(
    meta: &dyn MetadataStore,
    r: pb::CreateTopicRequest,
) -> Result<TopicRecord, Status> {
    floe_broker::node::valid_topic_name(&r.name).map_err(Status::invalid_argument)?;
    if r.partitions <= 0 || r.partitions > 100_000 {
        return Err(Status::invalid_argument(format!(
            "{} partitions: must be between 1 and 100000",
            r.partitions
        )));
    }
    let configs: BTreeMap<String, String> = r.configs.into_iter().collect();
    validate(&configs)?;
    let record = TopicRecord {
        format: FORMAT,
        id: Uuid::new_v4().as_bytes().to_vec(),
        name: r.name.clone(),
        partitions: r.partitions,
        configs,
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    let txn = Txn::new()
        .when(Condition::Missing(keys::topic(&r.name)))
        .then(Op::put(keys::topic(&r.name), record.encode_to_vec()));
    if !meta.txn(txn).await.map_err(unavailable)?.committed() {
        return Err(Status::already_exists(format!(
            "topic {:?} already exists",
            r.name
        )));
    }
    tracing::info!(topic = %r.name, partitions = r.partitions, "created topic (admin API)");
    Ok(record)
}

pub async fn delete(meta: &dyn MetadataStore, name: &str) -> Result<TopicRecord, Status> {
    if INTERNAL.contains(&name) {
        return Err(Status::failed_precondition(format!(
            "{name} is internal (consumer group offsets); it cannot be deleted"
        )));
    }
    let (t, rev) = read(meta, name).await?;
    let txn = Txn::new()
        .when(Condition::ModRevision(keys::topic(name), rev))
        .then(Op::delete(keys::topic(name)));
    if !meta.txn(txn).await.map_err(unavailable)?.committed() {
        return Err(Status::aborted(format!(
            "topic {name:?} changed concurrently; retry"
        )));
    }
    tracing::info!(topic = %name, "deleted topic (admin API)");
    Ok(t)
}

pub async fn alter(
    meta: &dyn MetadataStore,
    r: pb::AlterTopicConfigsRequest,
) -> Result<TopicRecord, Status> {
    let (mut t, rev) = read(meta, &r.name).await?;
    for k in &r.delete {
        t.configs.remove(k);
    }
    t.configs.extend(r.set);
    validate(&t.configs)?;
    let txn = Txn::new()
        .when(Condition::ModRevision(keys::topic(&r.name), rev))
        .then(Op::put(keys::topic(&r.name), t.encode_to_vec()));
    if !meta.txn(txn).await.map_err(unavailable)?.committed() {
        return Err(Status::aborted(format!(
            "topic {:?} changed concurrently; retry",
            r.name
        )));
    }
    tracing::info!(topic = %r.name, configs = ?t.configs, "altered topic configs (admin API)");
    Ok(t)
}
