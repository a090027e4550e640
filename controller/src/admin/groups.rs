//! The admin API's group listing: Kafka's ListGroups (v5, with the group
//! type of KIP-848) asked of every registered broker over its Kafka
//! listener, merged into one list with each group's coordinator.

use std::time::Duration;

use floe_kafka::client::InternalClient;
use floe_kafka::tls::InternalTls;
use floe_meta::schema::BrokerRecord;
use floe_meta::{keys, MetadataStore};
use floe_protocol::kafka_protocol::messages::{ApiKey, ListGroupsRequest, ListGroupsResponse};
use prost::Message;
use tonic::Status;

use super::unavailable;
use floe_rpc::admin as pb;

const VERSION: i16 = 5;

/// One ListGroups round trip to a broker's Kafka listener (over mutual TLS
/// with the cluster's identity when there is one).
async fn list_one(
    client: &InternalClient,
    host: &str,
    port: i32,
) -> anyhow::Result<ListGroupsResponse> {
    Ok(client
        .call(
            (host, port),
            ApiKey::ListGroups,
            VERSION,
            &ListGroupsRequest::default(),
            Duration::from_secs(5),
        )
        .await?)
}

pub async fn list(
    meta: &dyn MetadataStore,
    tls: Option<&InternalTls>,
) -> Result<pb::GroupList, Status> {
    let (kvs, _) = meta
        .range(&keys::brokers_prefix())
        .await
        .map_err(unavailable)?;
    let brokers: Vec<BrokerRecord> = kvs
        .iter()
        .filter(|kv| keys::parse_broker(&kv.key).is_some())
        .filter_map(|kv| BrokerRecord::decode(kv.value.clone()).ok())
        .collect();
    let client = InternalClient::new(tls.cloned().map(std::sync::Arc::new), "floe-admin");
    let client = &client;
    let answers = futures::future::join_all(
        brokers
            .iter()
            .map(|b| async move { (b.broker_id, list_one(client, &b.host, b.port).await) }),
    )
    .await;
    let mut out = pb::GroupList::default();
    for (broker, answer) in answers {
        match answer {
            Ok(r) if r.error_code == 0 => {
                out.groups
                    .extend(r.groups.into_iter().map(|g| pb::GroupSummary {
                        name: g.group_id.0.to_string(),
                        group_type: g.group_type.to_string(),
                        protocol_type: g.protocol_type.to_string(),
                        state: g.group_state.to_string(),
                        coordinator: broker,
                    }))
            }
            Ok(r) => {
                tracing::warn!(broker, error_code = r.error_code, "ListGroups failed");
                out.unreachable.push(broker);
            }
            Err(e) => {
                tracing::warn!(broker, error = %e, "ListGroups: the broker did not answer");
                out.unreachable.push(broker);
            }
        }
    }
    out.groups.sort_by(|a, b| a.name.cmp(&b.name));
    out.unreachable.sort();
    Ok(out)
}
