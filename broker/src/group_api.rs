//! The Kafka group APIs (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups,
//! DeleteGroups, OffsetDelete): requests mapped onto `group.rs` and back,
//! version by version.

use std::collections::BTreeMap;
use std::sync::Arc;

use floe_common::PartitionId;
use floe_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::group::{partition_for, Committed, JoinRequest, OFFSETS_TOPIC};
use crate::node::Node;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn code(e: Option<ResponseError>) -> i16 {
    e.map_or(0, |e| e.code())
}

/// Make the offsets topic if it does not exist yet (the controller then
/// assigns its partitions like any topic's).
async fn ensure_offsets_topic(node: &Node) {
    if node.topic(OFFSETS_TOPIC).is_some() {
        return;
    }
    let configs = BTreeMap::from([
        ("retention.ms".to_string(), "-1".to_string()),
        ("retention.bytes".to_string(), "-1".to_string()),
    ]);
    match node
        .create_topic(
            OFFSETS_TOPIC,
            node.config.offsets_topic_partitions.max(1),
            configs,
            false,
        )
        .await
    {
        Ok(_) => tracing::info!(
            partitions = node.config.offsets_topic_partitions,
            "created the offsets topic"
        ),
        Err((ResponseError::TopicAlreadyExists, _)) => {}
        Err((e, m)) => {
            tracing::warn!(error = ?e, message = %m, "creating the offsets topic failed")
        }
    }
}

/// The broker coordinating `group` now: (node id, host, port).
fn coordinator(node: &Node, group: &str) -> Result<(i32, String, i32), ResponseError> {
    if group.is_empty() {
        return Err(ResponseError::InvalidGroupId);
    }
    let t = node
        .topic(OFFSETS_TOPIC)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    let p = PartitionId::new(t.id, partition_for(group, t.partitions));
    let (broker, _) = node
        .leader_of(p)
        .ok_or(ResponseError::CoordinatorNotAvailable)?;
    node.brokers()
        .into_iter()
        .find(|b| b.broker_id == broker)
        .map(|b| (b.broker_id, b.host, b.port))
        .ok_or(ResponseError::CoordinatorNotAvailable)
}

pub async fn find_coordinator(
    node: &Arc<Node>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    ensure_offsets_topic(node).await;
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key]
    };
    let mut resp = FindCoordinatorResponse::default();
    for key in keys {
        let mut c = Coordinator::default().with_key(key.clone());
        let found = if req.key_type != 0 {
            Err((
                ResponseError::CoordinatorNotAvailable,
                "transaction coordinators are not supported".to_string(),
            ))
        } else {
            coordinator(node, &key)
                .map_err(|e| (e, format!("no coordinator for group {key:?} yet")))
        };
        match found {
            Ok((id, host, port)) => {
                c.node_id = id.into();
                c.host = s(host);
                c.port = port;
            }
            Err((e, m)) => {
                c.node_id = (-1).into();
                c.port = -1;
                c.error_code = e.code();
                c.error_message = Some(s(m));
            }
        }
        resp.coordinators.push(c);
    }
    if version < 4 {
        single_coordinator(&mut resp);
    }
    resp
}

/// FindCoordinator before v4 answers one key in top-level fields.
pub fn single_coordinator(resp: &mut FindCoordinatorResponse) {
    let c = resp.coordinators.pop().unwrap_or_default();
    resp.error_code = c.error_code;
    resp.error_message = c.error_message;
    resp.node_id = c.node_id;
    resp.host = c.host;
    resp.port = c.port;
}

pub async fn join_group(
    node: &Arc<Node>,
    req: JoinGroupRequest,
    version: i16,
    client_id: String,
) -> JoinGroupResponse {
    let out = node
        .groups
        .join(
            node,
            JoinRequest {
                group: req.group_id.0.to_string(),
                member_id: req.member_id.to_string(),
                instance_id: req.group_instance_id.map(|i| i.to_string()),
                client_id,
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: if version >= 1 {
                    req.rebalance_timeout_ms
                } else {
                    req.session_timeout_ms
                },
                protocol_type: req.protocol_type.to_string(),
                protocols: req
                    .protocols
                    .into_iter()
                    .map(|p| (p.name.to_string(), p.metadata))
                    .collect(),
                require_known_member_id: version >= 4,
            },
        )
        .await;
    JoinGroupResponse::default()
        .with_error_code(code(out.error))
        .with_generation_id(out.generation)
        .with_protocol_type(out.protocol_type.map(s))
        .with_protocol_name(Some(s(out.protocol.unwrap_or_default())))
        .with_leader(s(out.leader))
        .with_member_id(s(out.member_id))
        .with_skip_assignment(version >= 9 && out.skip_assignment)
        .with_members(
            out.members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(s(id))
                        .with_group_instance_id(instance.map(s))
                        .with_metadata(metadata)
                })
                .collect(),
        )
}

pub async fn sync_group(node: &Arc<Node>, req: SyncGroupRequest) -> SyncGroupResponse {
    let out = node
        .groups
        .sync(
            node,
            &req.group_id.0,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
            req.assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        )
        .await;
    SyncGroupResponse::default()
        .with_error_code(code(out.error))
        .with_protocol_type(out.protocol_type.map(s))
        .with_protocol_name(out.protocol.map(s))
        .with_assignment(out.assignment)
}

pub async fn heartbeat(node: &Arc<Node>, req: HeartbeatRequest) -> HeartbeatResponse {
    let e = node
        .groups
        .heartbeat(
            node,
            &req.group_id.0,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        )
        .await;
    HeartbeatResponse::default().with_error_code(code(e))
}

pub async fn leave_group(
    node: &Arc<Node>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    match node
        .groups
        .leave(node, &req.group_id.0, members.clone())
        .await
    {
        Err(e) => LeaveGroupResponse::default().with_error_code(e.code()),
        Ok(results) if version < 3 => {
            LeaveGroupResponse::default().with_error_code(code(results[0]))
        }
        Ok(results) => LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(results)
                .map(|((id, instance), e)| {
                    MemberResponse::default()
                        .with_member_id(s(id))
                        .with_group_instance_id(instance.map(s))
                        .with_error_code(code(e))
                })
                .collect(),
        ),
    }
}

pub async fn offset_commit(
    node: &Arc<Node>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut flat = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            flat.push((
                t.name.0.to_string(),
                p.partition_index,
                Committed {
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                    commit_ms: now,
                },
            ));
        }
    }
    let results = node
        .groups
        .commit(
            node,
            &req.group_id.0,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id_or_member_epoch,
            flat,
        )
        .await;
    let mut results = results.into_iter();
    let mut resp = OffsetCommitResponse::default();
    for t in req.topics {
        let mut rt = OffsetCommitResponseTopic::default().with_name(t.name);
        for p in t.partitions {
            rt.partitions.push(
                OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code(results.next().flatten())),
            );
        }
        resp.topics.push(rt);
    }
    resp
}

/// What OffsetFetch says for a partition without a committed offset.
fn no_commit() -> Committed {
    Committed {
        offset: -1,
        leader_epoch: -1,
        metadata: Some(String::new()),
        commit_ms: -1,
    }
}

type Fetched = Result<Vec<(String, Vec<(i32, Option<Committed>)>)>, ResponseError>;

async fn fetch_group(
    node: &Arc<Node>,
    group: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Fetched {
    node.groups.fetch_offsets(node, group, wanted).await
}

pub async fn offset_fetch(
    node: &Arc<Node>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    if version >= 8 {
        for g in req.groups {
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let mut rg = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            match fetch_group(node, &g.group_id.0, wanted).await {
                Err(e) => rg.error_code = e.code(),
                Ok(topics) => {
                    for (t, parts) in topics {
                        rg.topics.push(
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(s(t)))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|(p, c)| {
                                            let c = c.unwrap_or_else(no_commit);
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(c.offset)
                                                .with_committed_leader_epoch(c.leader_epoch)
                                                .with_metadata(Some(s(c
                                                    .metadata
                                                    .unwrap_or_default())))
                                        })
                                        .collect(),
                                ),
                        );
                    }
                }
            }
            resp.groups.push(rg);
        }
        return resp;
    }
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    match fetch_group(node, &req.group_id.0, wanted).await {
        Err(e) => resp.error_code = e.code(),
        Ok(topics) => {
            for (t, parts) in topics {
                resp.topics.push(
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(t)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, c)| {
                                    let c = c.unwrap_or_else(no_commit);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(c.offset)
                                        .with_committed_leader_epoch(c.leader_epoch)
                                        .with_metadata(Some(s(c.metadata.unwrap_or_default())))
                                })
                                .collect(),
                        ),
                );
            }
        }
    }
    resp
}

pub async fn list_groups(node: &Arc<Node>, req: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = node.groups.list().await;
    ListGroupsResponse::default().with_groups(
        groups
            .into_iter()
            .filter(|(_, _, st)| states.is_empty() || states.contains(&st.name().to_lowercase()))
            .map(|(g, pt, st)| {
                ListedGroup::default()
                    .with_group_id(GroupId(s(g)))
                    .with_protocol_type(s(pt))
                    .with_group_state(s(st.name()))
                    .with_group_type(s("classic"))
            })
            .collect(),
    )
}

pub async fn describe_groups(
    node: &Arc<Node>,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    for g in req.groups {
        let mut d = DescribedGroup::default().with_group_id(g.clone());
        match node.groups.describe(node, &g.0).await {
            Err(e) => d.error_code = e.code(),
            Ok(v) => {
                d.group_state = s(v.state);
                d.protocol_type = s(v.protocol_type);
                d.protocol_data = s(v.protocol);
                d.members = v
                    .members
                    .into_iter()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(s(m.member_id))
                            .with_group_instance_id(m.instance_id.map(s))
                            .with_client_id(s(m.client_id))
                            .with_client_host(s(""))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect();
            }
        }
        resp.groups.push(d);
    }
    resp
}

pub async fn delete_groups(node: &Arc<Node>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut resp = DeleteGroupsResponse::default();
    for g in req.groups_names {
        let e = node.groups.delete(node, &g.0).await;
        resp.results.push(
            DeletableGroupResult::default()
                .with_group_id(g)
                .with_error_code(code(e)),
        );
    }
    resp
}

pub async fn offset_delete(node: &Arc<Node>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let parts: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    match node
        .groups
        .delete_offsets(node, &req.group_id.0, parts)
        .await
    {
        Err(e) => OffsetDeleteResponse::default().with_error_code(e.code()),
        Ok(results) => {
            let mut results = results.into_iter();
            OffsetDeleteResponse::default().with_topics(
                req.topics
                    .into_iter()
                    .map(|t| {
                        OffsetDeleteResponseTopic::default()
                            .with_name(t.name)
                            .with_partitions(
                                t.partitions
                                    .into_iter()
                                    .map(|p| {
                                        OffsetDeleteResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code(results.next().flatten()))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
        }
    }
}
