//! ACL enforcement in front of both tiers' handlers (written once, as
//! Kafka's KafkaApis checks each request): for each API, the operation a
//! client needs on which resource, with Kafka's error codes. A request
//! wholly refused is answered here (the handler never runs); one refused
//! in part goes on without the refused parts, and the answer gets them
//! back with their errors (`Patch`). Metadata, FindCoordinator and Fetch,
//! whose answers are written once in this crate, check in place
//! (`cluster.rs`, `read.rs`).

use std::any::Any;

use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::kafka_protocol::protocol::StrBytes;
use floe_protocol::ResponseError;

use crate::acl::{resource, Operation, CLUSTER_NAME};
use crate::listener::Peer;

/// Adds refused parts, with their errors, to the typed answer.
pub type Patch = Box<dyn FnOnce(&mut dyn Any) + Send>;

/// A response of any API, encodable for the request it answers.
pub trait AnyResponse: Send {
    fn encode_for(self: Box<Self>, r: &crate::dispatch::Request) -> Option<bytes::Bytes>;
}

impl<R: floe_protocol::kafka_protocol::protocol::Encodable + Send + 'static> AnyResponse for R {
    fn encode_for(self: Box<Self>, r: &crate::dispatch::Request) -> Option<bytes::Bytes> {
        crate::listener::respond(r.api, r.version, r.correlation_id, *self)
    }
}

/// What the guard did with a request.
#[allow(clippy::large_enum_variant)] // passed straight on, never stored
pub enum Guarded {
    /// Go on with this request (parts may be gone), patching the answer.
    Pass(RequestKind, Option<Patch>),
    /// Refused as a whole: this is the answer.
    Deny(Box<dyn AnyResponse>),
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn patch<R: 'static>(f: impl FnOnce(&mut R) + Send + 'static) -> Option<Patch> {
    Some(Box::new(move |any: &mut dyn Any| {
        if let Some(r) = any.downcast_mut::<R>() {
            f(r)
        }
    }))
}

const TOPIC_DENIED: i16 = ResponseError::TopicAuthorizationFailed.code();
const GROUP_DENIED: i16 = ResponseError::GroupAuthorizationFailed.code();
const CLUSTER_DENIED: i16 = ResponseError::ClusterAuthorizationFailed.code();

impl Peer {
    /// Whether this client may do `op` on resource `(t, name)` (anything,
    /// where no authorizer runs).
    pub fn may(&self, op: Operation, t: i8, name: &str) -> bool {
        if self.internal {
            return true;
        }
        match &self.authorizer {
            None => true,
            Some(a) => a.authorize(&self.principal(), self.addr.ip(), op, t, name),
        }
    }

    pub fn may_topic(&self, op: Operation, topic: &str) -> bool {
        self.may(op, resource::TOPIC, topic)
    }

    pub fn may_group(&self, op: Operation, group: &str) -> bool {
        self.may(op, resource::GROUP, group)
    }

    pub fn may_cluster(&self, op: Operation) -> bool {
        self.may(op, resource::CLUSTER, CLUSTER_NAME)
    }
}

/// Check `kind` of `api` for `peer`.
pub fn guard(peer: &Peer, version: i16, kind: RequestKind) -> Guarded {
    if peer.authorizer.is_none() || peer.internal {
        return Guarded::Pass(kind, None);
    }
    use Operation::*;
    match kind {
        RequestKind::Produce(mut q) => {
            if let Some(t) = q.transactional_id.as_ref() {
                if !peer.may(Write, resource::TRANSACTIONAL_ID, t) {
                    let mut resp = ProduceResponse::default();
                    for td in &q.topic_data {
                        resp.responses.push(
                            produce_response::TopicProduceResponse::default()
                                .with_name(td.name.clone())
                                .with_partition_responses(
                                    td.partition_data
                                        .iter()
                                        .map(|p| {
                                            produce_response::PartitionProduceResponse::default()
                                                .with_index(p.index)
                                                .with_error_code(
                                                    ResponseError::TransactionalIdAuthorizationFailed
                                                        .code(),
                                                )
                                        })
                                        .collect(),
                                ),
                        );
                    }
                    return Guarded::Deny(Box::new(resp));
                }
            }
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .topic_data
                .into_iter()
                .partition(|t| peer.may_topic(Write, &t.name));
            q.topic_data = ok;
            let patch = (!denied.is_empty()).then(|| {
                patch::<ProduceResponse>(move |r| {
                    for t in denied {
                        r.responses.push(
                            produce_response::TopicProduceResponse::default()
                                .with_name(t.name)
                                .with_partition_responses(
                                    t.partition_data
                                        .iter()
                                        .map(|p| {
                                            produce_response::PartitionProduceResponse::default()
                                                .with_index(p.index)
                                                .with_base_offset(-1)
                                                .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                ),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::Produce(q), patch.flatten())
        }
        RequestKind::ListOffsets(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .topics
                .into_iter()
                .partition(|t| peer.may_topic(Describe, &t.name));
            q.topics = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<ListOffsetsResponse>(move |r| {
                    for t in denied {
                        r.topics.push(
                            list_offsets_response::ListOffsetsTopicResponse::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            list_offsets_response::ListOffsetsPartitionResponse::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                ),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::ListOffsets(q), p.flatten())
        }
        RequestKind::OffsetForLeaderEpoch(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .topics
                .into_iter()
                .partition(|t| peer.may_topic(Describe, &t.topic));
            q.topics = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<OffsetForLeaderEpochResponse>(move |r| {
                    for t in denied {
                        r.topics.push(
                            offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                                .with_topic(t.topic)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            offset_for_leader_epoch_response::EpochEndOffset::default()
                                                .with_partition(p.partition)
                                                .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                ),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::OffsetForLeaderEpoch(q), p.flatten())
        }
        RequestKind::DescribeProducers(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .topics
                .into_iter()
                .partition(|t| peer.may_topic(Read, &t.name));
            q.topics = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<DescribeProducersResponse>(move |r| {
                    for t in denied {
                        r.topics.push(
                            describe_producers_response::TopicResponse::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partition_indexes
                                        .iter()
                                        .map(|p| {
                                            describe_producers_response::PartitionResponse::default(
                                            )
                                            .with_partition_index(*p)
                                            .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                ),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::DescribeProducers(q), p.flatten())
        }
        RequestKind::DeleteRecords(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .topics
                .into_iter()
                .partition(|t| peer.may_topic(Delete, &t.name));
            q.topics = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<DeleteRecordsResponse>(move |r| {
                    for t in denied {
                        r.topics.push(
                            delete_records_response::DeleteRecordsTopicResult::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            delete_records_response::DeleteRecordsPartitionResult::default()
                                                .with_partition_index(p.partition_index)
                                                .with_low_watermark(-1)
                                                .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                ),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::DeleteRecords(q), p.flatten())
        }
        RequestKind::InitProducerId(q) => {
            let allowed = match &q.transactional_id {
                Some(t) => peer.may(Write, resource::TRANSACTIONAL_ID, t),
                // KIP-679: IDEMPOTENT_WRITE on the cluster, or WRITE on
                // any topic.
                None => peer.may_cluster(IdempotentWrite) || peer.may_write_any_topic(),
            };
            if allowed {
                Guarded::Pass(RequestKind::InitProducerId(q), None)
            } else {
                let code = if q.transactional_id.is_some() {
                    ResponseError::TransactionalIdAuthorizationFailed.code()
                } else {
                    CLUSTER_DENIED
                };
                Guarded::Deny(Box::new(
                    InitProducerIdResponse::default()
                        .with_error_code(code)
                        .with_producer_id((-1).into())
                        .with_producer_epoch(-1),
                ))
            }
        }
        RequestKind::JoinGroup(q) => {
            if peer.may_group(Read, &q.group_id) {
                Guarded::Pass(RequestKind::JoinGroup(q), None)
            } else {
                Guarded::Deny(Box::new(
                    JoinGroupResponse::default()
                        .with_error_code(GROUP_DENIED)
                        .with_generation_id(-1),
                ))
            }
        }
        RequestKind::SyncGroup(q) => whole(
            peer.may_group(Read, &q.group_id),
            RequestKind::SyncGroup(q),
            SyncGroupResponse::default().with_error_code(GROUP_DENIED),
        ),
        RequestKind::Heartbeat(q) => whole(
            peer.may_group(Read, &q.group_id),
            RequestKind::Heartbeat(q),
            HeartbeatResponse::default().with_error_code(GROUP_DENIED),
        ),
        RequestKind::LeaveGroup(q) => whole(
            peer.may_group(Read, &q.group_id),
            RequestKind::LeaveGroup(q),
            LeaveGroupResponse::default().with_error_code(GROUP_DENIED),
        ),
        RequestKind::ConsumerGroupHeartbeat(q) => {
            let topics_ok = q
                .subscribed_topic_names
                .as_ref()
                .is_none_or(|ts| ts.iter().all(|t| peer.may_topic(Describe, t)));
            let code = if !peer.may_group(Read, &q.group_id) {
                GROUP_DENIED
            } else if !topics_ok {
                TOPIC_DENIED
            } else {
                return Guarded::Pass(RequestKind::ConsumerGroupHeartbeat(q), None);
            };
            Guarded::Deny(Box::new(
                ConsumerGroupHeartbeatResponse::default()
                    .with_error_code(code)
                    .with_member_epoch(-1),
            ))
        }
        RequestKind::OffsetCommit(mut q) => {
            if !peer.may_group(Read, &q.group_id) {
                let resp = OffsetCommitResponse::default().with_topics(
                    q.topics
                        .iter()
                        .map(|t| {
                            offset_commit_response::OffsetCommitResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            offset_commit_response::OffsetCommitResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(GROUP_DENIED)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                return Guarded::Deny(Box::new(resp));
            }
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .topics
                .into_iter()
                .partition(|t| peer.may_topic(Read, &t.name));
            q.topics = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<OffsetCommitResponse>(move |r| {
                    for t in denied {
                        r.topics.push(
                            offset_commit_response::OffsetCommitResponseTopic::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            offset_commit_response::OffsetCommitResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                ),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::OffsetCommit(q), p.flatten())
        }
        RequestKind::OffsetFetch(q) => offset_fetch(peer, version, q),
        RequestKind::OffsetDelete(mut q) => {
            if !peer.may_group(Delete, &q.group_id) {
                return Guarded::Deny(Box::new(
                    OffsetDeleteResponse::default().with_error_code(GROUP_DENIED),
                ));
            }
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .topics
                .into_iter()
                .partition(|t| peer.may_topic(Read, &t.name));
            q.topics = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<OffsetDeleteResponse>(move |r| {
                    for t in denied {
                        r.topics.push(
                            offset_delete_response::OffsetDeleteResponseTopic::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            offset_delete_response::OffsetDeleteResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(TOPIC_DENIED)
                                        })
                                        .collect(),
                                ),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::OffsetDelete(q), p.flatten())
        }
        RequestKind::ListGroups(q) => {
            // DESCRIBE on the cluster lists every group; otherwise only the
            // groups the client may describe.
            if peer.may_cluster(Describe) {
                return Guarded::Pass(RequestKind::ListGroups(q), None);
            }
            let me = PeerRef::of(peer);
            Guarded::Pass(
                RequestKind::ListGroups(q),
                patch::<ListGroupsResponse>(move |r| {
                    r.groups.retain(|g| me.may_group(Describe, &g.group_id))
                }),
            )
        }
        RequestKind::DescribeGroups(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .groups
                .into_iter()
                .partition(|g| peer.may_group(Describe, g));
            q.groups = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<DescribeGroupsResponse>(move |r| {
                    for g in denied {
                        r.groups.push(
                            describe_groups_response::DescribedGroup::default()
                                .with_group_id(g)
                                .with_error_code(GROUP_DENIED),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::DescribeGroups(q), p.flatten())
        }
        RequestKind::ConsumerGroupDescribe(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .group_ids
                .into_iter()
                .partition(|g| peer.may_group(Describe, g));
            q.group_ids = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<ConsumerGroupDescribeResponse>(move |r| {
                    for g in denied {
                        r.groups.push(
                            consumer_group_describe_response::DescribedGroup::default()
                                .with_group_id(g)
                                .with_error_code(GROUP_DENIED),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::ConsumerGroupDescribe(q), p.flatten())
        }
        RequestKind::DeleteGroups(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .groups_names
                .into_iter()
                .partition(|g| peer.may_group(Delete, g));
            q.groups_names = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<DeleteGroupsResponse>(move |r| {
                    for g in denied {
                        r.results.push(
                            delete_groups_response::DeletableGroupResult::default()
                                .with_group_id(g)
                                .with_error_code(GROUP_DENIED),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::DeleteGroups(q), p.flatten())
        }
        RequestKind::CreateTopics(mut q) => {
            let cluster = peer.may_cluster(Create);
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .topics
                .into_iter()
                .partition(|t| cluster || peer.may_topic(Create, &t.name));
            q.topics = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<CreateTopicsResponse>(move |r| {
                    for t in denied {
                        r.topics.push(
                            create_topics_response::CreatableTopicResult::default()
                                .with_name(t.name)
                                .with_error_code(TOPIC_DENIED)
                                .with_error_message(Some(s("Authorization failed."))),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::CreateTopics(q), p.flatten())
        }
        RequestKind::DeleteTopics(mut q) => {
            // By name (a topic named only by id needs DELETE on the cluster:
            // its name is not known here).
            let cluster = peer.may_cluster(Delete);
            let may = |name: Option<&str>| match name {
                Some(n) => cluster || peer.may_topic(Delete, n),
                None => cluster,
            };
            let (ok_names, denied_names): (Vec<_>, Vec<_>) =
                q.topic_names.into_iter().partition(|n| may(Some(n)));
            let (ok_states, denied_states): (Vec<_>, Vec<_>) = q
                .topics
                .into_iter()
                .partition(|t| may(t.name.as_ref().map(|n| n.0.as_str())));
            q.topic_names = ok_names;
            q.topics = ok_states;
            let any = !(denied_names.is_empty() && denied_states.is_empty());
            let p = any.then(|| {
                patch::<DeleteTopicsResponse>(move |r| {
                    for n in denied_names {
                        r.responses.push(
                            delete_topics_response::DeletableTopicResult::default()
                                .with_name(Some(n))
                                .with_error_code(TOPIC_DENIED),
                        );
                    }
                    for t in denied_states {
                        r.responses.push(
                            delete_topics_response::DeletableTopicResult::default()
                                .with_name(t.name)
                                .with_topic_id(t.topic_id)
                                .with_error_code(TOPIC_DENIED),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::DeleteTopics(q), p.flatten())
        }
        RequestKind::CreatePartitions(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .topics
                .into_iter()
                .partition(|t| peer.may_topic(Alter, &t.name));
            q.topics = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<CreatePartitionsResponse>(move |r| {
                    for t in denied {
                        r.results.push(
                            create_partitions_response::CreatePartitionsTopicResult::default()
                                .with_name(t.name)
                                .with_error_code(TOPIC_DENIED),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::CreatePartitions(q), p.flatten())
        }
        RequestKind::DescribeConfigs(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q.resources.into_iter().partition(|r| {
                config_allowed(peer, DescribeConfigs, r.resource_type, &r.resource_name)
            });
            q.resources = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<DescribeConfigsResponse>(move |r| {
                    for x in denied {
                        r.results.push(
                            describe_configs_response::DescribeConfigsResult::default()
                                .with_resource_type(x.resource_type)
                                .with_resource_name(x.resource_name.clone())
                                .with_error_code(config_denied_code(x.resource_type)),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::DescribeConfigs(q), p.flatten())
        }
        RequestKind::AlterConfigs(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q.resources.into_iter().partition(|r| {
                config_allowed(peer, AlterConfigs, r.resource_type, &r.resource_name)
            });
            q.resources = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<AlterConfigsResponse>(move |r| {
                    for x in denied {
                        r.responses.push(
                            alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_resource_type(x.resource_type)
                                .with_resource_name(x.resource_name.clone())
                                .with_error_code(config_denied_code(x.resource_type)),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::AlterConfigs(q), p.flatten())
        }
        RequestKind::IncrementalAlterConfigs(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q.resources.into_iter().partition(|r| {
                config_allowed(peer, AlterConfigs, r.resource_type, &r.resource_name)
            });
            q.resources = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<IncrementalAlterConfigsResponse>(move |r| {
                    for x in denied {
                        r.responses.push(
                            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_resource_type(x.resource_type)
                                .with_resource_name(x.resource_name.clone())
                                .with_error_code(config_denied_code(x.resource_type)),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::IncrementalAlterConfigs(q), p.flatten())
        }
        RequestKind::DescribeUserScramCredentials(q) => whole(
            peer.may_cluster(Describe),
            RequestKind::DescribeUserScramCredentials(q),
            DescribeUserScramCredentialsResponse::default().with_error_code(CLUSTER_DENIED),
        ),
        RequestKind::AlterUserScramCredentials(q) => {
            if peer.may_cluster(Alter) {
                return Guarded::Pass(RequestKind::AlterUserScramCredentials(q), None);
            }
            let names = q
                .deletions
                .iter()
                .map(|d| d.name.clone())
                .chain(q.upsertions.iter().map(|u| u.name.clone()));
            Guarded::Deny(Box::new(AlterUserScramCredentialsResponse::default().with_results(
                names
                    .map(|n| {
                        alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                            .with_user(n)
                            .with_error_code(CLUSTER_DENIED)
                    })
                    .collect(),
            )))
        }
        RequestKind::DescribeAcls(q) => whole(
            peer.may_cluster(Describe),
            RequestKind::DescribeAcls(q),
            DescribeAclsResponse::default()
                .with_error_code(CLUSTER_DENIED)
                .with_error_message(Some(s("Authorization failed."))),
        ),
        RequestKind::CreateAcls(q) => {
            if peer.may_cluster(Alter) {
                return Guarded::Pass(RequestKind::CreateAcls(q), None);
            }
            Guarded::Deny(Box::new(
                CreateAclsResponse::default().with_results(
                    q.creations
                        .iter()
                        .map(|_| {
                            create_acls_response::AclCreationResult::default()
                                .with_error_code(CLUSTER_DENIED)
                                .with_error_message(Some(s("Authorization failed.")))
                        })
                        .collect(),
                ),
            ))
        }
        RequestKind::DeleteAcls(q) => {
            if peer.may_cluster(Alter) {
                return Guarded::Pass(RequestKind::DeleteAcls(q), None);
            }
            Guarded::Deny(Box::new(
                DeleteAclsResponse::default().with_filter_results(
                    q.filters
                        .iter()
                        .map(|_| {
                            delete_acls_response::DeleteAclsFilterResult::default()
                                .with_error_code(CLUSTER_DENIED)
                                .with_error_message(Some(s("Authorization failed.")))
                        })
                        .collect(),
                ),
            ))
        }
        // Transactions: WRITE on the transactional id; adding partitions
        // also WRITE on each topic, offsets READ on the group (Kafka's
        // rules).
        RequestKind::AddPartitionsToTxn(q) => {
            let id_ok = if version <= 3 {
                peer.may(
                    Write,
                    resource::TRANSACTIONAL_ID,
                    &q.v3_and_below_transactional_id,
                ) && q
                    .v3_and_below_topics
                    .iter()
                    .all(|t| peer.may_topic(Write, &t.name))
            } else {
                // Verification between brokers: the internal listener only.
                false
            };
            if id_ok {
                return Guarded::Pass(RequestKind::AddPartitionsToTxn(q), None);
            }
            let code = if version <= 3
                && !peer.may(
                    Write,
                    resource::TRANSACTIONAL_ID,
                    &q.v3_and_below_transactional_id,
                ) {
                ResponseError::TransactionalIdAuthorizationFailed.code()
            } else if version <= 3 {
                TOPIC_DENIED
            } else {
                CLUSTER_DENIED
            };
            let results = |topics: &[add_partitions_to_txn_request::AddPartitionsToTxnTopic]| {
                topics
                    .iter()
                    .map(|t| {
                        add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                            .with_name(t.name.clone())
                            .with_results_by_partition(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                            .with_partition_index(*p)
                                            .with_partition_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect::<Vec<_>>()
            };
            let mut resp = AddPartitionsToTxnResponse::default();
            if version <= 3 {
                resp.results_by_topic_v3_and_below = results(&q.v3_and_below_topics);
            } else {
                resp.error_code = code;
            }
            Guarded::Deny(Box::new(resp))
        }
        RequestKind::AddOffsetsToTxn(q) => {
            let code = if !peer.may(Write, resource::TRANSACTIONAL_ID, &q.transactional_id) {
                ResponseError::TransactionalIdAuthorizationFailed.code()
            } else if !peer.may_group(Read, &q.group_id) {
                GROUP_DENIED
            } else {
                return Guarded::Pass(RequestKind::AddOffsetsToTxn(q), None);
            };
            Guarded::Deny(Box::new(
                AddOffsetsToTxnResponse::default().with_error_code(code),
            ))
        }
        RequestKind::EndTxn(q) => whole(
            peer.may(Write, resource::TRANSACTIONAL_ID, &q.transactional_id),
            RequestKind::EndTxn(q),
            EndTxnResponse::default()
                .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
                .with_producer_id((-1).into())
                .with_producer_epoch(-1),
        ),
        RequestKind::TxnOffsetCommit(q) => {
            let code = if !peer.may(Write, resource::TRANSACTIONAL_ID, &q.transactional_id) {
                Some(ResponseError::TransactionalIdAuthorizationFailed.code())
            } else if !peer.may_group(Read, &q.group_id) {
                Some(GROUP_DENIED)
            } else if q.topics.iter().any(|t| !peer.may_topic(Read, &t.name)) {
                Some(TOPIC_DENIED)
            } else {
                None
            };
            let Some(code) = code else {
                return Guarded::Pass(RequestKind::TxnOffsetCommit(q), None);
            };
            Guarded::Deny(Box::new(
                TxnOffsetCommitResponse::default().with_topics(
                    q.topics
                        .iter()
                        .map(|t| {
                            txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
            ))
        }
        RequestKind::DescribeTransactions(mut q) => {
            let (ok, denied): (Vec<_>, Vec<_>) = q
                .transactional_ids
                .into_iter()
                .partition(|id| peer.may(Describe, resource::TRANSACTIONAL_ID, id));
            q.transactional_ids = ok;
            let p = (!denied.is_empty()).then(|| {
                patch::<DescribeTransactionsResponse>(move |r| {
                    for id in denied {
                        r.transaction_states.push(
                            describe_transactions_response::TransactionState::default()
                                .with_transactional_id(id)
                                .with_error_code(
                                    ResponseError::TransactionalIdAuthorizationFailed.code(),
                                )
                                .with_producer_id((-1).into())
                                .with_producer_epoch(-1),
                        );
                    }
                })
            });
            Guarded::Pass(RequestKind::DescribeTransactions(q), p.flatten())
        }
        RequestKind::ListTransactions(q) => {
            // Only the ids the client may describe.
            let peer_view = PeerRef::of(peer);
            let p = patch::<ListTransactionsResponse>(move |r| {
                r.transaction_states.retain(|t| {
                    peer_view.may(Describe, resource::TRANSACTIONAL_ID, &t.transactional_id)
                })
            });
            Guarded::Pass(RequestKind::ListTransactions(q), p)
        }
        // Checked where they are answered (Metadata, DescribeTopicPartitions,
        // FindCoordinator, Fetch), or open to every client (ApiVersions,
        // DescribeCluster, the SASL exchange).
        other => Guarded::Pass(other, None),
    }
}

fn whole<R: floe_protocol::kafka_protocol::protocol::Encodable + Send + 'static>(
    allowed: bool,
    kind: RequestKind,
    denied: R,
) -> Guarded {
    if allowed {
        Guarded::Pass(kind, None)
    } else {
        Guarded::Deny(Box::new(denied))
    }
}

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn config_allowed(peer: &Peer, op: Operation, t: i8, name: &str) -> bool {
    match t {
        RESOURCE_TOPIC => peer.may_topic(op, name),
        RESOURCE_BROKER => peer.may_cluster(op),
        _ => true,
    }
}

fn config_denied_code(t: i8) -> i16 {
    if t == RESOURCE_TOPIC {
        TOPIC_DENIED
    } else {
        CLUSTER_DENIED
    }
}

/// OffsetFetch: DESCRIBE on the group, and on each topic asked for (or,
/// for all of a group's topics, only those the client may describe).
fn offset_fetch(peer: &Peer, version: i16, mut q: OffsetFetchRequest) -> Guarded {
    use Operation::Describe;
    if version < 8 {
        if !peer.may_group(Describe, &q.group_id) {
            return Guarded::Deny(Box::new(
                OffsetFetchResponse::default().with_error_code(GROUP_DENIED),
            ));
        }
        let me = PeerRef::of(peer);
        return match q.topics.take() {
            None => Guarded::Pass(
                RequestKind::OffsetFetch(q),
                patch::<OffsetFetchResponse>(move |r| {
                    r.topics.retain(|t| me.may_topic(Describe, &t.name))
                }),
            ),
            Some(ts) => {
                let (ok, denied): (Vec<_>, Vec<_>) = ts
                    .into_iter()
                    .partition(|t| peer.may_topic(Describe, &t.name));
                q.topics = Some(ok);
                let p = (!denied.is_empty()).then(|| {
                    patch::<OffsetFetchResponse>(move |r| {
                        for t in denied {
                            r.topics.push(
                                offset_fetch_response::OffsetFetchResponseTopic::default()
                                    .with_name(t.name)
                                    .with_partitions(
                                        t.partition_indexes
                                            .iter()
                                            .map(|p| {
                                                offset_fetch_response::OffsetFetchResponsePartition::default()
                                                    .with_partition_index(*p)
                                                    .with_committed_offset(-1)
                                                    .with_error_code(TOPIC_DENIED)
                                            })
                                            .collect(),
                                    ),
                            );
                        }
                    })
                });
                Guarded::Pass(RequestKind::OffsetFetch(q), p.flatten())
            }
        };
    }
    // v8+: several groups.
    let (ok, denied): (Vec<_>, Vec<_>) = q
        .groups
        .into_iter()
        .partition(|g| peer.may_group(Describe, &g.group_id));
    q.groups = ok;
    let me = PeerRef::of(peer);
    Guarded::Pass(
        RequestKind::OffsetFetch(q),
        patch::<OffsetFetchResponse>(move |r| {
            for g in &mut r.groups {
                g.topics.retain(|t| me.may_topic(Describe, &t.name));
            }
            for g in denied {
                r.groups.push(
                    offset_fetch_response::OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id)
                        .with_error_code(GROUP_DENIED),
                );
            }
        }),
    )
}

/// What a patch needs of its peer after the request is gone.
struct PeerRef {
    authorizer: Option<std::sync::Arc<crate::acl::Authorizer>>,
    principal: std::sync::Arc<str>,
    host: std::net::IpAddr,
}

impl PeerRef {
    fn of(p: &Peer) -> Self {
        Self {
            authorizer: p.authorizer.clone(),
            principal: p.principal(),
            host: p.addr.ip(),
        }
    }

    fn may(&self, op: Operation, t: i8, name: &str) -> bool {
        self.authorizer
            .as_ref()
            .is_none_or(|a| a.authorize(&self.principal, self.host, op, t, name))
    }

    fn may_topic(&self, op: Operation, name: &str) -> bool {
        self.may(op, resource::TOPIC, name)
    }

    fn may_group(&self, op: Operation, name: &str) -> bool {
        self.may(op, resource::GROUP, name)
    }
}

impl Peer {
    /// KIP-679: whether some ALLOW binding gives this client WRITE on some
    /// topic (enough for an idempotent producer's InitProducerId).
    pub fn may_write_any_topic(&self) -> bool {
        if self.internal {
            return true;
        }
        match &self.authorizer {
            None => true,
            Some(a) => a.may_write_some_topic(&self.principal(), self.addr.ip()),
        }
    }
}
