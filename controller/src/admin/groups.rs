//! The admin API's group listing: Kafka's ListGroups (v5, with the group
//! type of KIP-848) asked of every registered broker over its Kafka
//! listener, merged into one list with each group's coordinator.

use std::collections::BTreeMap;
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

const TIMEOUT: Duration = Duration::from_secs(5);

/// One group as kafka-consumer-groups.sh --describe shows it, asked over
/// Kafka's own APIs: FindCoordinator of any broker, DescribeGroups and
/// OffsetFetch of the coordinator, Metadata for the partitions' owners and
/// ListOffsets (latest) of each owner.
pub async fn describe(
    meta: &dyn MetadataStore,
    tls: Option<&InternalTls>,
    name: &str,
) -> Result<pb::GroupDescription, Status> {
    use floe_protocol::kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
    use floe_protocol::kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
    use floe_protocol::kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequest, OffsetFetchRequestGroup,
    };
    use floe_protocol::kafka_protocol::messages::{
        ConsumerProtocolAssignment, DescribeGroupsResponse, FindCoordinatorResponse, GroupId,
        OffsetFetchResponse,
    };
    use floe_protocol::kafka_protocol::protocol::{Decodable, StrBytes};

    if name.is_empty() {
        return Err(Status::invalid_argument("a group name is needed"));
    }
    let (kvs, _) = meta
        .range(&keys::brokers_prefix())
        .await
        .map_err(unavailable)?;
    let brokers: Vec<BrokerRecord> = kvs
        .iter()
        .filter(|kv| keys::parse_broker(&kv.key).is_some())
        .filter_map(|kv| BrokerRecord::decode(kv.value.clone()).ok())
        .collect();
    let Some(any) = brokers.first() else {
        return Err(Status::unavailable("no broker is registered"));
    };
    let client = InternalClient::new(tls.cloned().map(std::sync::Arc::new), "floe-admin");
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Status::unavailable(format!("{what} for group {name:?}: {e}"))
    };
    let fc: FindCoordinatorResponse = client
        .call(
            (&any.host, any.port),
            ApiKey::FindCoordinator,
            4,
            &FindCoordinatorRequest::default()
                .with_key_type(0)
                .with_coordinator_keys(vec![StrBytes::from_string(name.to_string())]),
            TIMEOUT,
        )
        .await
        .map_err(|e| failed("FindCoordinator", &e))?;
    let c = fc
        .coordinators
        .first()
        .ok_or_else(|| Status::unavailable("FindCoordinator answered nothing"))?;
    if c.error_code != 0 {
        return Err(Status::unavailable(format!(
            "no coordinator for group {name:?} (Kafka error {})",
            c.error_code
        )));
    }
    let coordinator = (c.host.to_string(), c.port);
    let coord = (coordinator.0.as_str(), coordinator.1);
    let dg: DescribeGroupsResponse = client
        .call(
            coord,
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_string(name.to_string()))]),
            TIMEOUT,
        )
        .await
        .map_err(|e| failed("DescribeGroups", &e))?;
    let g = dg
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| Status::unavailable("DescribeGroups answered nothing"))?;
    if g.error_code != 0 {
        return Err(Status::unavailable(format!(
            "describing group {name:?}: Kafka error {}",
            g.error_code
        )));
    }
    let of: OffsetFetchResponse = client
        .call(
            coord,
            ApiKey::OffsetFetch,
            8,
            &OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(name.to_string())))
                .with_topics(None)]),
            TIMEOUT,
        )
        .await
        .map_err(|e| failed("OffsetFetch", &e))?;
    // (topic, partition) → committed offset.
    let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for grp in of.groups {
        if grp.error_code != 0 {
            return Err(Status::unavailable(format!(
                "fetching the offsets of group {name:?}: Kafka error {}",
                grp.error_code
            )));
        }
        for t in grp.topics {
            for p in t.partitions {
                if p.error_code == 0 && p.committed_offset >= 0 {
                    committed.insert(
                        (t.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
    }
    if g.group_state.as_str() == "Dead" && committed.is_empty() {
        return Err(Status::not_found(format!("no group {name:?}")));
    }
    // Members and what they were assigned (consumer groups' assignments
    // are ConsumerProtocolAssignment, its version first).
    let mut owner_of: BTreeMap<(String, i32), (String, String)> = BTreeMap::new();
    let members: Vec<pb::GroupMember> = g
        .members
        .iter()
        .map(|m| {
            let mut assignment = Vec::new();
            if g.protocol_type.as_str() == "consumer" && m.member_assignment.len() >= 2 {
                let mut b = m.member_assignment.clone();
                let version = i16::from_be_bytes([b[0], b[1]]);
                bytes::Buf::advance(&mut b, 2);
                if let Ok(a) = ConsumerProtocolAssignment::decode(&mut b, version.clamp(0, 3)) {
                    for tp in a.assigned_partitions {
                        for p in tp.partitions {
                            let t = tp.topic.0.to_string();
                            assignment.push(format!("{t}-{p}"));
                            owner_of
                                .insert((t, p), (m.member_id.to_string(), m.client_id.to_string()));
                        }
                    }
                }
            }
            pb::GroupMember {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                instance_id: m
                    .group_instance_id
                    .as_ref()
                    .map(|i| i.to_string())
                    .unwrap_or_default(),
                assignment,
            }
        })
        .collect();
    let mut wanted: Vec<(String, i32)> = committed.keys().cloned().collect();
    wanted.extend(owner_of.keys().cloned());
    wanted.sort();
    wanted.dedup();
    let hws = high_watermarks(&client, (&any.host, any.port), &wanted).await?;
    let mut total_lag = 0;
    let partitions = wanted
        .into_iter()
        .map(|tp| {
            let c = committed.get(&tp).copied().unwrap_or(-1);
            let hw = hws.get(&tp).copied().unwrap_or(-1);
            let lag = if c >= 0 && hw >= 0 {
                (hw - c).max(0)
            } else {
                -1
            };
            total_lag += lag.max(0);
            let (member_id, client_id) = owner_of.get(&tp).cloned().unwrap_or_default();
            pb::GroupPartitionLag {
                topic: tp.0,
                partition: tp.1,
                committed_offset: c,
                high_watermark: hw,
                lag,
                member_id,
                client_id,
            }
        })
        .collect();
    Ok(pb::GroupDescription {
        name: name.to_string(),
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        coordinator: c.node_id.0,
        members,
        partitions,
        total_lag,
    })
}

/// The high watermarks of `wanted`: their owners from a Metadata answer
/// of the broker at `via`, then one ListOffsets (latest) per owner
/// (`InternalClient::latest_offsets`, as the brokers' lag export).
async fn high_watermarks(
    client: &InternalClient,
    via: (&str, i32),
    wanted: &[(String, i32)],
) -> Result<BTreeMap<(String, i32), i64>, Status> {
    use floe_protocol::kafka_protocol::messages::metadata_request::{
        MetadataRequest, MetadataRequestTopic,
    };
    use floe_protocol::kafka_protocol::messages::{MetadataResponse, TopicName};
    use floe_protocol::kafka_protocol::protocol::StrBytes;

    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let mut topics: Vec<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
    topics.dedup();
    let md: MetadataResponse = client
        .call(
            via,
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
                    })
                    .collect(),
            )),
            TIMEOUT,
        )
        .await
        .map_err(|e| Status::unavailable(format!("Metadata: {e}")))?;
    let addr: BTreeMap<i32, (String, i32)> = md
        .brokers
        .iter()
        .map(|b| (b.node_id.0, (b.host.to_string(), b.port)))
        .collect();
    let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for t in &md.topics {
        let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
            continue;
        };
        for p in &t.partitions {
            if p.leader_id.0 >= 0 && wanted.contains(&(name.clone(), p.partition_index)) {
                by_leader
                    .entry(p.leader_id.0)
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .push(p.partition_index);
            }
        }
    }
    for (leader, topics) in by_leader {
        let Some((host, port)) = addr.get(&leader) else {
            continue;
        };
        match client.latest_offsets((host, *port), topics, TIMEOUT).await {
            Ok(answers) => out.extend(answers),
            Err(e) => {
                tracing::warn!(broker = leader, error = %e, "ListOffsets for a group's lag failed")
            }
        }
    }
    Ok(out)
}
