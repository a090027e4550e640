//! The Kafka group APIs (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups,
//! DeleteGroups, OffsetDelete, and KIP-848's ConsumerGroupHeartbeat and
//! ConsumerGroupDescribe): requests mapped onto `group.rs` and back,
//! version by version.

use std::sync::Arc;

use floe_common::Uuid;
use floe_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
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

use crate::consumer_group::{Heartbeat, Partitions};
use crate::group::{Committed, JoinRequest};
use crate::node::Node;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn code(e: Option<ResponseError>) -> i16 {
    e.map_or(0, |e| e.code())
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
            &**node,
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
            &**node,
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
            &**node,
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
        .leave(&**node, &req.group_id.0, members.clone())
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
    let now = floe_common::wall_ms();
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
            &**node,
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

/// A group's committed offsets; with `require_stable` (KIP-447), offsets
/// pending in an open transaction are UNSTABLE_OFFSET_COMMIT (the client
/// asks again once the transaction ended).
async fn fetch_group(
    node: &Arc<Node>,
    group: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Vec<(String, Vec<(i32, Result<Option<Committed>, ResponseError>)>)>, ResponseError> {
    let (fetched, mut unstable) = node.groups.fetch_offsets(&**node, group, wanted).await?;
    if !require_stable {
        unstable.clear();
    }
    Ok(fetched
        .into_iter()
        .map(|(t, parts)| {
            let parts = parts
                .into_iter()
                .map(|(p, c)| {
                    if unstable.contains(&(t.clone(), p)) {
                        (p, Err(ResponseError::UnstableOffsetCommit))
                    } else {
                        (p, Ok(c))
                    }
                })
                .collect();
            (t, parts)
        })
        .collect())
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
            match fetch_group(node, &g.group_id.0, wanted, req.require_stable).await {
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
                                            let code = c.as_ref().err().map_or(0, |e| e.code());
                                            let c = c.ok().flatten().unwrap_or_else(no_commit);
                                            OffsetFetchResponsePartitions::default()
                                                .with_error_code(code)
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
    match fetch_group(
        node,
        &req.group_id.0,
        wanted,
        version >= 7 && req.require_stable,
    )
    .await
    {
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
                                    let code = c.as_ref().err().map_or(0, |e| e.code());
                                    let c = c.ok().flatten().unwrap_or_else(no_commit);
                                    OffsetFetchResponsePartition::default()
                                        .with_error_code(code)
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
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = node.groups.list().await;
    ListGroupsResponse::default().with_groups(
        groups
            .into_iter()
            .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
            .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type))
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(GroupId(s(g.name)))
                    .with_protocol_type(s(g.protocol_type))
                    .with_group_state(s(g.state))
                    .with_group_type(s(g.group_type))
            })
            .collect(),
    )
}

fn to_partitions<'a>(tps: impl Iterator<Item = (Uuid, &'a Vec<i32>)>) -> Partitions {
    let mut out = Partitions::new();
    for (t, ps) in tps {
        out.entry(t).or_default().extend(ps.iter().copied());
    }
    out.retain(|_, ps| !ps.is_empty());
    out
}

pub async fn consumer_group_heartbeat(
    node: &Arc<Node>,
    req: ConsumerGroupHeartbeatRequest,
    client_id: &str,
) -> ConsumerGroupHeartbeatResponse {
    use kafka_protocol::messages::consumer_group_heartbeat_response::{
        Assignment, TopicPartitions,
    };
    let fail = |e: ResponseError, msg: Option<String>| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(e.code())
            .with_error_message(msg.map(s))
            .with_member_id(None)
            .with_member_epoch(-1)
    };
    if req.group_id.0.is_empty() {
        return fail(ResponseError::InvalidGroupId, None);
    }
    if req.member_epoch == 0
        && req.subscribed_topic_names.is_none()
        && req.subscribed_topic_regex.is_none()
    {
        return fail(
            ResponseError::InvalidRequest,
            Some("a joining member must give its subscription".into()),
        );
    }
    let h = Heartbeat {
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|i| i.to_string()),
        rack_id: req.rack_id.map(|r| r.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .map(|ns| ns.into_iter().map(|n| n.0.to_string()).collect()),
        subscribed_topic_regex: req.subscribed_topic_regex.map(|r| r.to_string()),
        server_assignor: req.server_assignor.as_ref().map(|a| a.to_string()),
        topic_partitions: req
            .topic_partitions
            .as_ref()
            .map(|tps| to_partitions(tps.iter().map(|t| (t.topic_id, &t.partitions)))),
        client_id: client_id.to_string(),
        client_host: String::new(),
    };
    match node
        .groups
        .consumer_heartbeat(&**node, &req.group_id.0, h)
        .await
    {
        Err(e) => {
            let msg = match e {
                ResponseError::GroupIdNotFound => Some(format!(
                    "group {} has members of the classic protocol",
                    req.group_id.0
                )),
                ResponseError::UnsupportedAssignor => Some(format!(
                    "unknown server assignor {:?}; this coordinator has uniform and range",
                    req.server_assignor.as_deref().unwrap_or("")
                )),
                _ => None,
            };
            fail(e, msg)
        }
        Ok(a) => ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(s(a.member_id)))
            .with_member_epoch(a.member_epoch)
            .with_heartbeat_interval_ms(node.config.group_consumer_heartbeat_interval_ms)
            .with_assignment(a.assignment.map(|p| {
                Assignment::default().with_topic_partitions(
                    p.into_iter()
                        .map(|(t, ps)| {
                            TopicPartitions::default()
                                .with_topic_id(t)
                                .with_partitions(ps.into_iter().collect())
                        })
                        .collect(),
                )
            })),
    }
}

pub async fn consumer_group_describe(
    node: &Arc<Node>,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    use kafka_protocol::messages::consumer_group_describe_response::{
        Assignment, DescribedGroup, Member, TopicPartitions,
    };
    let view = |p: &Partitions| {
        Assignment::default().with_topic_partitions(
            p.iter()
                .map(|(t, ps)| {
                    TopicPartitions::default()
                        .with_topic_id(*t)
                        .with_topic_name(TopicName(s(node
                            .topic_by_id(*t)
                            .map(|i| i.name)
                            .unwrap_or_default())))
                        .with_partitions(ps.iter().copied().collect())
                })
                .collect(),
        )
    };
    let mut resp = ConsumerGroupDescribeResponse::default();
    for id in req.group_ids {
        let mut d = DescribedGroup::default()
            .with_group_id(id.clone())
            .with_authorized_operations(i32::MIN);
        match node.groups.consumer_describe(&**node, &id.0).await {
            Err(e) => {
                d.error_code = e.code();
                d.group_state = s("Dead");
                if e == ResponseError::GroupIdNotFound {
                    d.error_message = Some(s(format!(
                        "group {} is not a consumer-protocol group",
                        id.0
                    )));
                }
            }
            Ok(g) => {
                d.group_state = s(g.state().name());
                d.group_epoch = g.epoch;
                d.assignment_epoch = g.assignment_epoch;
                d.assignor_name = s(g.assignor.name());
                let none = Partitions::new();
                d.members = g
                    .members
                    .iter()
                    .map(|(mid, m)| {
                        Member::default()
                            .with_member_id(s(mid.clone()))
                            .with_instance_id(m.instance_id.clone().map(s))
                            .with_rack_id(m.rack_id.clone().map(s))
                            .with_member_epoch(m.epoch)
                            .with_client_id(s(m.client_id.clone()))
                            .with_client_host(s(m.client_host.clone()))
                            .with_subscribed_topic_names(
                                m.topic_names
                                    .iter()
                                    .map(|n| TopicName(s(n.clone())))
                                    .collect(),
                            )
                            .with_subscribed_topic_regex(m.topic_regex.clone().map(s))
                            .with_assignment(view(&m.assigned))
                            .with_target_assignment(view(g.target.get(mid).unwrap_or(&none)))
                            .with_member_type(1)
                    })
                    .collect();
            }
        }
        resp.groups.push(d);
    }
    resp
}

pub async fn describe_groups(
    node: &Arc<Node>,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    for g in req.groups {
        let mut d = DescribedGroup::default().with_group_id(g.clone());
        match node.groups.describe(&**node, &g.0).await {
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
        let e = node.groups.delete(&**node, &g.0).await;
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
        .delete_offsets(&**node, &req.group_id.0, parts)
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
