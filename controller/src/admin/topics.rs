//! The admin API's topic calls: create, delete and alter configs through
//! the one topic admin (`floe_meta::topics`), with its errors as gRPC
//! statuses; the controller assigns new partitions and removes a deleted
//! topic's metadata and objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use floe_common::topic::is_internal;
use floe_meta::schema::TopicRecord;
use floe_meta::topics::{TopicAdmin, TopicError};
use floe_meta::{MetaError, MetadataStore};
use tonic::Status;

use floe_rpc::admin as pb;

/// A topic admin error as the admin API answers it.
pub(crate) fn status(e: TopicError) -> Status {
    let m = e.to_string();
    match e {
        TopicError::InvalidName(_)
        | TopicError::InvalidPartitions(_)
        | TopicError::InvalidConfig(_)
        | TopicError::InvalidRequest(_) => Status::invalid_argument(m),
        TopicError::AlreadyExists(_) => Status::already_exists(m),
        TopicError::Unknown(_) => Status::not_found(format!("unknown topic: {m}")),
        TopicError::Concurrent(_) => Status::aborted(m),
        TopicError::Meta(MetaError::Unavailable(_) | MetaError::Indeterminate(_)) => {
            Status::unavailable(format!("metadata store: {m}"))
        }
        TopicError::Meta(_) => Status::internal(m),
    }
}

/// The admin API validates topic configs over Kafka's defaults (it has no
/// broker's `topic_defaults`).
fn admin(meta: Arc<dyn MetadataStore>) -> TopicAdmin {
    TopicAdmin::new(meta, BTreeMap::new(), Arc::new(floe_common::SystemClock))
}

pub async fn create(
    meta: Arc<dyn MetadataStore>,
    r: pb::CreateTopicRequest,
) -> Result<TopicRecord, Status> {
    let configs: BTreeMap<String, String> = r.configs.into_iter().collect();
    let t = admin(meta)
        .create(&r.name, r.partitions, configs, false)
        .await
        .map_err(status)?;
    Ok(t.record)
}

pub async fn delete(meta: Arc<dyn MetadataStore>, name: &str) -> Result<TopicRecord, Status> {
    if is_internal(name) {
        return Err(Status::failed_precondition(format!(
            "{name} is internal (consumer group offsets); it cannot be deleted"
        )));
    }
    let t = admin(meta).delete(name).await.map_err(status)?;
    Ok(t.record)
}

pub async fn alter(
    meta: Arc<dyn MetadataStore>,
    r: pb::AlterTopicConfigsRequest,
) -> Result<TopicRecord, Status> {
    let t = admin(meta)
        .alter_configs(
            &r.name,
            |configs| {
                for k in &r.delete {
                    configs.remove(k);
                }
                configs.extend(r.set.iter().map(|(k, v)| (k.clone(), v.clone())));
                Ok(())
            },
            false,
        )
        .await
        .map_err(status)?;
    Ok(t.record)
}
