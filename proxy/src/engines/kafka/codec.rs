//! Kafka wire format: request frames read into what policy needs, refusals
//! written as responses of the request's own API and version, and the
//! ApiVersions answer narrowed to what weir can judge.
//!
//! Messages are encoded and decoded by the `kafka-protocol` crate; this
//! module decides which fields matter.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

/// Kafka error codes weir answers with.
pub mod error_code {
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
}

/// The topics a request names (the `topics` variant of the WIT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topics {
    None,
    Named(Vec<String>),
    All,
    Unknown,
}

/// A request as policy sees it, with its body when weir could decode it.
#[derive(Debug)]
pub struct Request {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    pub topics: Topics,
    pub transactional_id: Option<String>,
    /// A Produce with `acks=0`: the broker sends no response, nor may we.
    pub expects_response: bool,
    body: Option<RequestKind>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("request header too short ({0} bytes)")]
    ShortHeader(usize),
    #[error("request header: {0}")]
    Header(String),
    #[error("{api} v{version} body: {message}")]
    Body { api: String, version: i16, message: String },
}

/// The highest version of each API whose requests name their topics (newer
/// Produce and Fetch versions name topics by id only). ApiVersions answers
/// are narrowed to this, so clients never send what weir cannot read.
fn highest_judged_version(key: ApiKey) -> i16 {
    let crate_max = key.valid_versions().max;
    match key {
        ApiKey::Produce | ApiKey::Fetch => crate_max.min(12),
        ApiKey::OffsetCommit | ApiKey::OffsetFetch => crate_max.min(9),
        _ => crate_max,
    }
}

/// The name Kafka gives an API key (`Produce`, `Fetch`), or its number.
pub fn api_name(key: i16) -> String {
    match ApiKey::try_from(key) {
        Ok(k) => format!("{k:?}"),
        Err(_) => format!("ApiKey{key}"),
    }
}

/// Parse one request frame (without its length prefix).
pub fn parse_request(frame: Bytes) -> Result<Request, ParseError> {
    if frame.len() < 8 {
        return Err(ParseError::ShortHeader(frame.len()));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let mut buf = frame;
    let Ok(key) = ApiKey::try_from(api_key) else {
        // an API this build does not know: read the v1 header (key, version,
        // correlation id, client id) and nothing else
        let mut header = buf.clone();
        header.advance(4);
        let correlation_id = header.get_i32();
        let client_id = read_nullable_string(&mut header).map_err(ParseError::Header)?;
        return Ok(Request {
            api_key,
            api_version,
            correlation_id,
            client_id,
            topics: Topics::Unknown,
            transactional_id: None,
            expects_response: true,
            body: None,
        });
    };
    let header = RequestHeader::decode(&mut buf, key.request_header_version(api_version))
        .map_err(|e| ParseError::Header(format!("{e:#}")))?;
    let client_id = header.client_id.as_ref().map(|c| c.as_str().to_string());
    let range = key.valid_versions();
    if api_version < range.min || api_version > range.max {
        return Ok(Request {
            api_key,
            api_version,
            correlation_id: header.correlation_id,
            client_id,
            topics: if carries_topics(key) { Topics::Unknown } else { Topics::None },
            transactional_id: None,
            expects_response: true,
            body: None,
        });
    }
    let body = RequestKind::decode(key, &mut buf, api_version).map_err(|e| ParseError::Body {
        api: api_name(api_key),
        version: api_version,
        message: format!("{e:#}"),
    })?;
    let expects_response = !matches!(&body, RequestKind::Produce(p) if p.acks == 0);
    Ok(Request {
        api_key,
        api_version,
        correlation_id: header.correlation_id,
        client_id,
        topics: topics_of(&body, api_version),
        transactional_id: transactional_id_of(&body),
        expects_response,
        body: Some(body),
    })
}

fn read_nullable_string(buf: &mut Bytes) -> Result<Option<String>, String> {
    if buf.remaining() < 2 {
        return Err("client id length missing".into());
    }
    let len = buf.get_i16();
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if buf.remaining() < len {
        return Err("client id runs past the frame".into());
    }
    String::from_utf8(buf.split_to(len).to_vec()).map(Some).map_err(|_| "client id is not UTF-8".into())
}

fn transactional_id_of(body: &RequestKind) -> Option<String> {
    let id = match body {
        RequestKind::InitProducerId(r) => r.transactional_id.as_ref()?,
        RequestKind::AddOffsetsToTxn(r) => &r.transactional_id,
        RequestKind::EndTxn(r) => &r.transactional_id,
        RequestKind::TxnOffsetCommit(r) => &r.transactional_id,
        RequestKind::AddPartitionsToTxn(r) => match r.transactions.first() {
            Some(tx) => &tx.transactional_id,
            None => &r.v3_and_below_transactional_id,
        },
        // key type 1: the coordinator of a transaction
        RequestKind::FindCoordinator(r) if r.key_type == 1 => {
            return Some(r.coordinator_keys.first().map_or_else(|| r.key.to_string(), |k| k.to_string()));
        }
        _ => return None,
    };
    Some(id.0.to_string())
}

impl Request {
    /// The error code a refusal carries when the filter chose none.
    pub fn default_error_code(&self) -> i16 {
        use error_code::*;
        let Ok(key) = ApiKey::try_from(self.api_key) else { return CLUSTER_AUTHORIZATION_FAILED };
        match key {
            ApiKey::FindCoordinator => match &self.body {
                Some(RequestKind::FindCoordinator(r)) if r.key_type == 1 => TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                _ => GROUP_AUTHORIZATION_FAILED,
            },
            ApiKey::InitProducerId => match &self.body {
                Some(RequestKind::InitProducerId(r)) if r.transactional_id.is_some() => {
                    TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                }
                _ => CLUSTER_AUTHORIZATION_FAILED,
            },
            ApiKey::JoinGroup
            | ApiKey::Heartbeat
            | ApiKey::LeaveGroup
            | ApiKey::SyncGroup
            | ApiKey::DescribeGroups
            | ApiKey::DeleteGroups
            | ApiKey::ConsumerGroupDescribe
            | ApiKey::ShareGroupDescribe => GROUP_AUTHORIZATION_FAILED,
            // Kafka authorizes ACL changes and reads on the cluster resource
            ApiKey::CreateAcls | ApiKey::DeleteAcls | ApiKey::DescribeAcls => CLUSTER_AUTHORIZATION_FAILED,
            ApiKey::DescribeTransactions => TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            // broker, logger or client-metrics configs: cluster resources
            ApiKey::DescribeConfigs | ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs if !matches!(&self.topics, Topics::Named(t) if !t.is_empty()) => {
                CLUSTER_AUTHORIZATION_FAILED
            }
            ApiKey::OffsetCommit | ApiKey::OffsetFetch => match &self.topics {
                Topics::Named(t) if !t.is_empty() => TOPIC_AUTHORIZATION_FAILED,
                _ => GROUP_AUTHORIZATION_FAILED,
            },
            _ if carries_topics(key) => TOPIC_AUTHORIZATION_FAILED,
            _ => CLUSTER_AUTHORIZATION_FAILED,
        }
    }

    /// A complete response frame (length prefix included) refusing this
    /// request with `code` on every topic, partition or group it names.
    /// `None`: weir cannot answer this API (the caller closes the connection).
    pub fn refusal(&self, code: i16) -> Option<BytesMut> {
        let key = ApiKey::try_from(self.api_key).ok()?;
        let body = self.body.as_ref()?;
        let v = self.api_version;
        let mut out = BytesMut::with_capacity(128);
        out.put_i32(0); // length, filled in below
        let header = ResponseHeader::default().with_correlation_id(self.correlation_id);
        header.encode(&mut out, key.response_header_version(v)).ok()?;
        let encoded = match body {
            RequestKind::Produce(r) => ProduceResponse::default()
                .with_responses(
                    r.topic_data
                        .iter()
                        .map(|t| {
                            TopicProduceResponse::default().with_name(t.name.clone()).with_partition_responses(
                                t.partition_data
                                    .iter()
                                    .map(|p| {
                                        PartitionProduceResponse::default()
                                            .with_index(p.index)
                                            .with_error_code(code)
                                            .with_base_offset(-1)
                                    })
                                    .collect(),
                            )
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::Fetch(r) => FetchResponse::default()
                .with_responses(
                    r.topics
                        .iter()
                        .map(|t| {
                            FetchableTopicResponse::default().with_topic(t.topic.clone()).with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        fetch_response::PartitionData::default()
                                            .with_partition_index(p.partition)
                                            .with_error_code(code)
                                            .with_high_watermark(-1)
                                    })
                                    .collect(),
                            )
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::ListOffsets(r) => ListOffsetsResponse::default()
                .with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            ListOffsetsTopicResponse::default().with_name(t.name.clone()).with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::Metadata(r) => MetadataResponse::default()
                .with_topics(
                    r.topics
                        .iter()
                        .flatten()
                        .map(|t| MetadataResponseTopic::default().with_name(t.name.clone()).with_error_code(code))
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::OffsetCommit(r) => OffsetCommitResponse::default()
                .with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::OffsetFetch(r) => {
                let response = if v >= 8 {
                    OffsetFetchResponse::default().with_groups(
                        r.groups
                            .iter()
                            .map(|g| {
                                OffsetFetchResponseGroup::default()
                                    .with_group_id(g.group_id.clone())
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
                } else {
                    let response = OffsetFetchResponse::default().with_topics(
                        r.topics
                            .iter()
                            .flatten()
                            .map(|t| {
                                OffsetFetchResponseTopic::default().with_name(t.name.clone()).with_partitions(
                                    t.partition_indexes
                                        .iter()
                                        .map(|p| {
                                            OffsetFetchResponsePartition::default()
                                                .with_partition_index(*p)
                                                .with_committed_offset(-1)
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                            })
                            .collect(),
                    );
                    if v >= 2 { response.with_error_code(code) } else { response }
                };
                response.encode(&mut out, v)
            }
            RequestKind::FindCoordinator(r) => {
                let response = if v >= 4 {
                    FindCoordinatorResponse::default().with_coordinators(
                        r.coordinator_keys
                            .iter()
                            .map(|k| {
                                find_coordinator_response::Coordinator::default()
                                    .with_key(k.clone())
                                    .with_node_id(BrokerId(-1))
                                    .with_port(-1)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
                } else {
                    FindCoordinatorResponse::default().with_error_code(code).with_node_id(BrokerId(-1)).with_port(-1)
                };
                response.encode(&mut out, v)
            }
            RequestKind::JoinGroup(_) => {
                JoinGroupResponse::default().with_error_code(code).with_generation_id(-1).encode(&mut out, v)
            }
            RequestKind::Heartbeat(_) => HeartbeatResponse::default().with_error_code(code).encode(&mut out, v),
            RequestKind::LeaveGroup(_) => LeaveGroupResponse::default().with_error_code(code).encode(&mut out, v),
            RequestKind::SyncGroup(_) => SyncGroupResponse::default().with_error_code(code).encode(&mut out, v),
            RequestKind::DescribeGroups(r) => DescribeGroupsResponse::default()
                .with_groups(
                    r.groups
                        .iter()
                        .map(|g| DescribedGroup::default().with_group_id(g.clone()).with_error_code(code))
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::ListGroups(_) => ListGroupsResponse::default().with_error_code(code).encode(&mut out, v),
            RequestKind::ApiVersions(_) => ApiVersionsResponse::default().with_error_code(code).encode(&mut out, v),
            RequestKind::CreateTopics(r) => CreateTopicsResponse::default()
                .with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            CreatableTopicResult::default()
                                .with_name(t.name.clone())
                                .with_error_code(code)
                                .with_num_partitions(-1)
                                .with_replication_factor(-1)
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::DeleteTopics(r) => {
                let names: Vec<TopicName> = if r.topic_names.is_empty() {
                    r.topics.iter().filter_map(|t| t.name.clone()).collect()
                } else {
                    r.topic_names.clone()
                };
                DeleteTopicsResponse::default()
                    .with_responses(
                        names
                            .into_iter()
                            .map(|n| DeletableTopicResult::default().with_name(Some(n)).with_error_code(code))
                            .collect(),
                    )
                    .encode(&mut out, v)
            }
            RequestKind::DeleteRecords(r) => DeleteRecordsResponse::default()
                .with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            DeleteRecordsTopicResult::default().with_name(t.name.clone()).with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        DeleteRecordsPartitionResult::default()
                                            .with_partition_index(p.partition_index)
                                            .with_low_watermark(-1)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::DescribeConfigs(r) => DescribeConfigsResponse::default()
                .with_results(
                    r.resources
                        .iter()
                        .map(|c| {
                            describe_configs_response::DescribeConfigsResult::default()
                                .with_error_code(code)
                                .with_resource_type(c.resource_type)
                                .with_resource_name(c.resource_name.clone())
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::AlterConfigs(r) => AlterConfigsResponse::default()
                .with_responses(
                    r.resources
                        .iter()
                        .map(|c| {
                            alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_error_code(code)
                                .with_resource_type(c.resource_type)
                                .with_resource_name(c.resource_name.clone())
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::IncrementalAlterConfigs(r) => IncrementalAlterConfigsResponse::default()
                .with_responses(
                    r.resources
                        .iter()
                        .map(|c| {
                            incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                                .with_error_code(code)
                                .with_resource_type(c.resource_type)
                                .with_resource_name(c.resource_name.clone())
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::CreateAcls(r) => CreateAclsResponse::default()
                .with_results(
                    r.creations
                        .iter()
                        .map(|_| create_acls_response::AclCreationResult::default().with_error_code(code))
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::DeleteAcls(r) => DeleteAclsResponse::default()
                .with_filter_results(
                    r.filters
                        .iter()
                        .map(|_| delete_acls_response::DeleteAclsFilterResult::default().with_error_code(code))
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::DescribeAcls(_) => DescribeAclsResponse::default().with_error_code(code).encode(&mut out, v),
            RequestKind::OffsetDelete(r) => OffsetDeleteResponse::default()
                .with_error_code(code)
                .with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            offset_delete_response::OffsetDeleteResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            offset_delete_response::OffsetDeleteResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::DeleteGroups(r) => DeleteGroupsResponse::default()
                .with_results(
                    r.groups_names
                        .iter()
                        .map(|g| {
                            delete_groups_response::DeletableGroupResult::default()
                                .with_group_id(g.clone())
                                .with_error_code(code)
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::ConsumerGroupDescribe(r) => ConsumerGroupDescribeResponse::default()
                .with_groups(
                    r.group_ids
                        .iter()
                        .map(|g| {
                            consumer_group_describe_response::DescribedGroup::default()
                                .with_group_id(g.clone())
                                .with_error_code(code)
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::ConsumerGroupHeartbeat(_) => {
                ConsumerGroupHeartbeatResponse::default().with_error_code(code).encode(&mut out, v)
            }
            RequestKind::CreatePartitions(r) => CreatePartitionsResponse::default()
                .with_results(
                    r.topics
                        .iter()
                        .map(|t| {
                            create_partitions_response::CreatePartitionsTopicResult::default()
                                .with_name(t.name.clone())
                                .with_error_code(code)
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::ElectLeaders(r) => {
                let response = ElectLeadersResponse::default().with_replica_election_results(
                    r.topic_partitions
                        .iter()
                        .flatten()
                        .map(|t| {
                            elect_leaders_response::ReplicaElectionResult::default()
                                .with_topic(t.topic.clone())
                                .with_partition_result(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            elect_leaders_response::PartitionResult::default()
                                                .with_partition_id(*p)
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                // v0 has no top-level error: every partition carries it
                let response = if v >= 1 { response.with_error_code(code) } else { response };
                response.encode(&mut out, v)
            }
            RequestKind::AlterPartitionReassignments(_) => {
                AlterPartitionReassignmentsResponse::default().with_error_code(code).encode(&mut out, v)
            }
            RequestKind::ListPartitionReassignments(_) => {
                ListPartitionReassignmentsResponse::default().with_error_code(code).encode(&mut out, v)
            }
            RequestKind::DescribeProducers(r) => DescribeProducersResponse::default()
                .with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            describe_producers_response::TopicResponse::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partition_indexes
                                        .iter()
                                        .map(|p| {
                                            describe_producers_response::PartitionResponse::default()
                                                .with_partition_index(*p)
                                                .with_error_code(code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::OffsetForLeaderEpoch(r) => OffsetForLeaderEpochResponse::default()
                .with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                                .with_topic(t.topic.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            offset_for_leader_epoch_response::EpochEndOffset::default()
                                                .with_partition(p.partition)
                                                .with_error_code(code)
                                                .with_leader_epoch(-1)
                                                .with_end_offset(-1)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::TxnOffsetCommit(r) => TxnOffsetCommitResponse::default()
                .with_topics(
                    r.topics
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
                )
                .encode(&mut out, v),
            // v0-3 (what clients send): per topic and partition
            RequestKind::AddPartitionsToTxn(r) if v <= 3 => AddPartitionsToTxnResponse::default()
                .with_results_by_topic_v3_and_below(
                    r.v3_and_below_topics
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
                        .collect(),
                )
                .encode(&mut out, v),
            // v4+ (broker to broker): one top-level error for the batch
            RequestKind::AddPartitionsToTxn(_) => {
                AddPartitionsToTxnResponse::default().with_error_code(code).encode(&mut out, v)
            }
            RequestKind::DescribeLogDirs(_) => {
                // v0-2 have no error field: an empty answer is all there is
                let response = DescribeLogDirsResponse::default();
                let response = if v >= 3 { response.with_error_code(code) } else { response };
                response.encode(&mut out, v)
            }
            RequestKind::DescribeTopicPartitions(r) => DescribeTopicPartitionsResponse::default()
                .with_topics(
                    r.topics
                        .iter()
                        .map(|t| {
                            describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                                .with_name(Some(t.name.clone()))
                                .with_error_code(code)
                        })
                        .collect(),
                )
                .encode(&mut out, v),
            RequestKind::InitProducerId(_) => InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .encode(&mut out, v),
            _ => return None,
        };
        if let Err(e) = encoded {
            tracing::warn!(api = api_name(self.api_key), version = v, "cannot encode a refusal: {e:#}");
            return None;
        }
        let len = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        Some(out)
    }
}

/// An ApiVersions request newer than weir reads is answered by weir, the way
/// a broker answers one newer than it speaks: UNSUPPORTED_VERSION (35) in a
/// v0 answer naming the ApiVersions versions weir reads, so the client asks
/// again in one of them — and gets the narrowed answer. Forwarded as it was,
/// the broker's answer would reach the client unnarrowed (weir cannot decode
/// it to narrow it), and the client would send versions weir cannot judge
/// (found with Kafka 4.4's Java client, which asks in v5 and then sent
/// Produce v13, topics by id only). `None`: weir reads this version.
pub fn api_versions_too_new(request: &Request) -> Option<BytesMut> {
    let range = ApiKey::ApiVersions.valid_versions();
    if request.api_key != ApiKey::ApiVersions as i16 || request.api_version <= range.max {
        return None;
    }
    let response = ApiVersionsResponse::default().with_error_code(35).with_api_keys(vec![
        api_versions_response::ApiVersion::default()
            .with_api_key(ApiKey::ApiVersions as i16)
            .with_min_version(range.min)
            .with_max_version(range.max),
    ]);
    let mut out = BytesMut::with_capacity(32);
    out.put_i32(0);
    // as Kafka does: the v0 header and body, whatever version was asked
    ResponseHeader::default().with_correlation_id(request.correlation_id).encode(&mut out, 0).ok()?;
    response.encode(&mut out, 0).ok()?;
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// A refused Metadata request (v1 and later) is answered through the broker:
/// clients drop a Metadata answer that names no brokers (kafka-python logs
/// "No broker metadata found" and asks again until it times out), and only
/// the broker knows its brokers, cluster id and controller. So the broker is
/// asked the same request for no topics (and to create none); its answer
/// goes back with the refused topics in place of none
/// ([`metadata_answer_refusing`]). `frame` is the request without its
/// length prefix; the result has one. `None`: not such a request.
pub fn brokers_only_metadata(frame: &[u8], version: i16) -> Option<BytesMut> {
    if version < 1 {
        // in v0 an empty list asks for every topic
        return None;
    }
    let mut buf = Bytes::copy_from_slice(frame);
    let header_version = ApiKey::Metadata.request_header_version(version);
    // nothing of the refused request but its header's identity goes on: not
    // its topics, nor tagged fields weir does not know
    let header = RequestHeader::decode(&mut buf, header_version).ok()?.with_unknown_tagged_fields(Default::default());
    let request = MetadataRequest::decode(&mut buf, version).ok()?;
    // (a field a version lacks must keep its default, or it does not encode)
    let request = request
        .with_unknown_tagged_fields(Default::default())
        .with_topics(Some(Vec::new()))
        .with_allow_auto_topic_creation(version < 4)
        .with_include_topic_authorized_operations(false);
    let mut out = BytesMut::with_capacity(frame.len());
    out.put_i32(0);
    header.encode(&mut out, header_version).ok()?;
    request.encode(&mut out, version).ok()?;
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

impl Request {
    /// The topics of a refused Metadata request as its answer lists them:
    /// each with `code`.
    pub fn refused_metadata_topics(&self, code: i16) -> Option<Vec<MetadataResponseTopic>> {
        let Some(RequestKind::Metadata(r)) = &self.body else { return None };
        let topics = r.topics.iter().flatten();
        Some(topics.map(|t| MetadataResponseTopic::default().with_name(t.name.clone()).with_error_code(code)).collect())
    }
}

/// The broker's answer to [`brokers_only_metadata`] (with its length
/// prefix), carrying `topics` instead of none. `None`: not an answer weir can
/// read and write back the same way.
pub fn metadata_answer_refusing(frame: &[u8], version: i16, topics: Vec<MetadataResponseTopic>) -> Option<BytesMut> {
    let mut buf = Bytes::copy_from_slice(frame.get(4..)?);
    let header_version = ApiKey::Metadata.response_header_version(version);
    let header = ResponseHeader::decode(&mut buf, header_version).ok()?;
    let response = MetadataResponse::decode(&mut buf, version).ok()?.with_topics(topics);
    let mut out = BytesMut::with_capacity(frame.len() + 64);
    out.put_i32(0);
    header.encode(&mut out, header_version).ok()?;
    response.encode(&mut out, version).ok()?;
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// Narrow an ApiVersions response (a whole frame, length prefix included)
/// to the versions weir can judge. `None`: leave it as it is (not decodable,
/// or an error answer).
pub fn narrow_api_versions(frame: &[u8], request_version: i16) -> Option<BytesMut> {
    let mut buf = Bytes::copy_from_slice(frame.get(4..)?);
    let header_version = ApiVersionsResponse::header_version(request_version);
    let header = ResponseHeader::decode(&mut buf, header_version).ok()?;
    let mut response = ApiVersionsResponse::decode(&mut buf, request_version).ok()?;
    if response.error_code != 0 {
        return None;
    }
    response.api_keys.retain_mut(|api| {
        let Ok(key) = ApiKey::try_from(api.api_key) else { return true };
        let weir = key.valid_versions();
        api.min_version = api.min_version.max(weir.min);
        api.max_version = api.max_version.min(highest_judged_version(key));
        api.min_version <= api.max_version
    });
    let mut out = BytesMut::with_capacity(frame.len());
    out.put_i32(0);
    header.encode(&mut out, header_version).ok()?;
    response.encode(&mut out, request_version).ok()?;
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    // kafka-protocol does not encode every answer it decodes the same way
    // (tagged fields whose tag is past i32::MAX vanish): an answer that does
    // not read back as the one narrowed is passed on as the broker sent it,
    // like any answer weir cannot read. Narrowing only spares clients
    // versions weir would refuse; it is not what enforces them.
    let mut again = Bytes::copy_from_slice(&out[4..]);
    let reads_back = ResponseHeader::decode(&mut again, header_version).is_ok_and(|h| h == header)
        && ApiVersionsResponse::decode(&mut again, request_version).is_ok_and(|r| r == response)
        && again.is_empty();
    reads_back.then_some(out)
}

/// The answers that may name brokers to connect to: Metadata,
/// FindCoordinator, DescribeCluster, and the `node_endpoints` of Produce
/// (v10 and later: the new leader after NOT_LEADER_OR_FOLLOWER), ShareFetch
/// and ShareAcknowledge. (Fetch has them from v16, which weir does not let
/// clients use: `highest_judged_version`.)
pub fn names_brokers(api_key: i16, version: i16) -> bool {
    let Ok(key) = ApiKey::try_from(api_key) else { return false };
    match key {
        ApiKey::Metadata | ApiKey::FindCoordinator | ApiKey::DescribeCluster => true,
        ApiKey::ShareFetch | ApiKey::ShareAcknowledge => true,
        ApiKey::Produce => version >= 10,
        ApiKey::Fetch => version >= 16,
        _ => false,
    }
}

/// An answer naming brokers (see [`names_brokers`]; a whole frame, length
/// prefix included) with every broker `address_of` knows replaced by weir's
/// listener for it, and the ids of brokers it does not know. `Err`: an
/// answer weir cannot read, which must not reach the client (it would name
/// brokers the client then reaches around weir).
pub fn rewrite_brokers(
    frame: &[u8],
    api_key: i16,
    version: i16,
    address_of: &dyn Fn(i32) -> Option<std::net::SocketAddr>,
) -> Result<(BytesMut, Vec<i32>), String> {
    let key = ApiKey::try_from(api_key).map_err(|_| format!("api key {api_key}"))?;
    let body = frame.get(4..).ok_or("a frame without its length")?;
    let mut buf = Bytes::copy_from_slice(body);
    let header_version = key.response_header_version(version);
    let header =
        ResponseHeader::decode(&mut buf, header_version).map_err(|e| format!("{key:?} v{version} answer: {e}"))?;
    let mut unknown = Vec::new();
    let mut rewrite = |id: i32, host: &mut kafka_protocol::protocol::StrBytes, port: &mut i32| {
        if id < 0 {
            return; // no broker (an error answer)
        }
        match address_of(id) {
            Some(addr) => {
                *host = kafka_protocol::protocol::StrBytes::from_string(addr.ip().to_string());
                *port = i32::from(addr.port());
            }
            None => unknown.push(id),
        }
    };
    let bad = |e: anyhow::Error| format!("{key:?} v{version} answer: {e}");
    let mut out = BytesMut::with_capacity(frame.len() + 64);
    macro_rules! rewrite_node_endpoints {
        ($response:ty) => {{
            let mut response = <$response>::decode(&mut buf, version).map_err(bad)?;
            for n in &mut response.node_endpoints {
                rewrite(n.node_id.0, &mut n.host, &mut n.port);
            }
            response.encode(&mut out, version).map_err(bad)?;
        }};
    }
    out.put_i32(0);
    header.encode(&mut out, header_version).map_err(bad)?;
    match key {
        ApiKey::Metadata => {
            let mut response = MetadataResponse::decode(&mut buf, version).map_err(bad)?;
            for b in &mut response.brokers {
                rewrite(b.node_id.0, &mut b.host, &mut b.port);
            }
            response.encode(&mut out, version).map_err(bad)?;
        }
        ApiKey::FindCoordinator => {
            let mut response = FindCoordinatorResponse::decode(&mut buf, version).map_err(bad)?;
            if version < 4 {
                rewrite(response.node_id.0, &mut response.host, &mut response.port);
            }
            for c in &mut response.coordinators {
                rewrite(c.node_id.0, &mut c.host, &mut c.port);
            }
            response.encode(&mut out, version).map_err(bad)?;
        }
        ApiKey::DescribeCluster => {
            let mut response = DescribeClusterResponse::decode(&mut buf, version).map_err(bad)?;
            for b in &mut response.brokers {
                rewrite(b.broker_id.0, &mut b.host, &mut b.port);
            }
            response.encode(&mut out, version).map_err(bad)?;
        }
        // answers whose `node_endpoints` name a partition's new leader
        ApiKey::Produce => rewrite_node_endpoints!(ProduceResponse),
        ApiKey::ShareFetch => rewrite_node_endpoints!(ShareFetchResponse),
        ApiKey::ShareAcknowledge => rewrite_node_endpoints!(ShareAcknowledgeResponse),
        ApiKey::Fetch => rewrite_node_endpoints!(FetchResponse),
        other => return Err(format!("{other:?} answers name no brokers")),
    }
    if !buf.is_empty() {
        return Err(format!("{key:?} v{version} answer: {} bytes past its end", buf.len()));
    }
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok((out, unknown))
}

mod topics;
use topics::{carries_topics, topics_of};

#[cfg(test)]
mod tests;
