//! Which topics a request reads or changes, for every API the crate decodes.
//!
//! The rule (docs/kafka.md, "Which topics a request names"): a request is
//! judged on every topic it reads or changes. Where it names them, by name:
//! those names. Where it means every topic (a null list, an empty list that
//! Kafka reads as "all", a literal `*` ACL, a group- or transaction-wide
//! API): `All`. Where weir cannot see the names (topic ids, prefixed ACL
//! patterns, ANY/MATCH filters, resources that are not topics in an API that
//! otherwise names topics, a wrapped request): `Unknown`. Both are allowed
//! only by a rule without `topic`. APIs that never carry topics are `None`.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::Topics;

/// Whether an API's requests can name (or mean) topics. Exhaustive over the
/// crate's API keys on purpose: a crate upgrade that adds an API does not
/// build until someone decides here.
pub(super) fn carries_topics(key: ApiKey) -> bool {
    use ApiKey::*;
    match key {
        Produce
        | Fetch
        | ListOffsets
        | Metadata
        | OffsetCommit
        | OffsetFetch
        | DescribeGroups
        | CreateTopics
        | DeleteTopics
        | DeleteRecords
        | OffsetForLeaderEpoch
        | AddPartitionsToTxn
        | WriteTxnMarkers
        | TxnOffsetCommit
        | DescribeAcls
        | CreateAcls
        | DeleteAcls
        | DescribeConfigs
        | AlterConfigs
        | AlterReplicaLogDirs
        | DescribeLogDirs
        | CreatePartitions
        | DeleteGroups
        | ElectLeaders
        | IncrementalAlterConfigs
        | AlterPartitionReassignments
        | ListPartitionReassignments
        | OffsetDelete
        | Vote
        | BeginQuorumEpoch
        | EndQuorumEpoch
        | DescribeQuorum
        | AlterPartition
        | Envelope
        | FetchSnapshot
        | DescribeProducers
        | DescribeTransactions
        | ConsumerGroupHeartbeat
        | ConsumerGroupDescribe
        | AssignReplicasToDirs
        | ListConfigResources
        | DescribeTopicPartitions
        | ShareGroupHeartbeat
        | ShareGroupDescribe
        | ShareFetch
        | ShareAcknowledge
        | InitializeShareGroupState
        | ReadShareGroupState
        | WriteShareGroupState
        | DeleteShareGroupState
        | ReadShareGroupStateSummary
        | DescribeShareGroupOffsets
        | AlterShareGroupOffsets
        | DeleteShareGroupOffsets => true,
        // group membership and coordination (Cilium's consume role needs
        // them under topic rules), transactions by id, security, quotas,
        // cluster and controller plumbing
        FindCoordinator
        | JoinGroup
        | Heartbeat
        | LeaveGroup
        | SyncGroup
        | ListGroups
        | SaslHandshake
        | ApiVersions
        | InitProducerId
        | AddOffsetsToTxn
        | EndTxn
        | SaslAuthenticate
        | CreateDelegationToken
        | RenewDelegationToken
        | ExpireDelegationToken
        | DescribeDelegationToken
        | DescribeClientQuotas
        | AlterClientQuotas
        | DescribeUserScramCredentials
        | AlterUserScramCredentials
        | UpdateFeatures
        | DescribeCluster
        | BrokerRegistration
        | BrokerHeartbeat
        | UnregisterBroker
        | ListTransactions
        | AllocateProducerIds
        | ControllerRegistration
        | GetTelemetrySubscriptions
        | PushTelemetry
        | AddRaftVoter
        | RemoveRaftVoter
        | UpdateRaftVoter => false,
    }
}

/// Kafka's resource types (ACLs and configs share the numbering for topics).
const RESOURCE_TOPIC: i8 = 2;
/// ACL pattern types.
const PATTERN_LITERAL: i8 = 3;
/// The literal ACL resource name that means every resource of its type.
const WILDCARD: &str = "*";

/// The topics of one request, gathered entry by entry.
#[derive(Default)]
struct Gather {
    names: Vec<String>,
    all: bool,
    unknown: bool,
}

impl Gather {
    /// A topic by name (each once, in request order); an empty name is no
    /// topic weir can match.
    fn name(&mut self, name: &StrBytes) {
        if name.is_empty() {
            self.unknown = true;
        } else if !self.names.iter().any(|n| n == name.as_str()) {
            self.names.push(name.as_str().to_string());
        }
    }

    /// An entry that may name its topic by id (`no_id`: its id is nil): an
    /// id makes it unknown even when a name is there too (which one would
    /// the broker use?).
    fn entry(&mut self, name: Option<&StrBytes>, no_id: bool) {
        match name {
            Some(name) if no_id => self.name(name),
            _ => self.unknown = true,
        }
    }

    fn names<'a>(&mut self, names: impl IntoIterator<Item = &'a StrBytes>) {
        names.into_iter().for_each(|n| self.name(n));
    }

    fn finish(self) -> Topics {
        if self.unknown {
            Topics::Unknown
        } else if self.all {
            Topics::All
        } else {
            Topics::Named(self.names)
        }
    }
}

fn names<'a>(list: impl IntoIterator<Item = &'a StrBytes>) -> Topics {
    let mut g = Gather::default();
    g.names(list);
    g.finish()
}

/// A null list means every topic.
fn names_or_all<'a, T: 'a>(list: Option<&'a [T]>, name: impl Fn(&'a T) -> &'a StrBytes) -> Topics {
    match list {
        None => Topics::All,
        Some(list) => names(list.iter().map(name)),
    }
}

/// A config resource (DescribeConfigs, AlterConfigs, IncrementalAlterConfigs):
/// a topic by name, anything else (broker, logger, client metrics, group
/// configs) is not a topic a rule can name.
fn config_resource(g: &mut Gather, resource_type: i8, name: &StrBytes) {
    if resource_type == RESOURCE_TOPIC {
        g.name(name);
    } else {
        g.unknown = true;
    }
}

/// An ACL binding or filter on a resource pattern. Only a literal pattern on
/// a topic names one topic; a literal `*` (or a filter with no name) is every
/// topic; prefixed patterns, ANY/MATCH filters and other resource types are
/// not topics a rule can name.
fn acl_pattern(g: &mut Gather, resource_type: i8, pattern_type: i8, name: Option<&StrBytes>) {
    if resource_type != RESOURCE_TOPIC || pattern_type != PATTERN_LITERAL {
        g.unknown = true;
        return;
    }
    match name {
        None => g.all = true,
        Some(n) if n.as_str() == WILDCARD => g.all = true,
        Some(n) => g.name(n),
    }
}

/// The topics `body` (of `version`) reads or changes.
pub(super) fn topics_of(body: &RequestKind, version: i16) -> Topics {
    let mut g = Gather::default();
    match body {
        RequestKind::Produce(r) => r.topic_data.iter().for_each(|t| g.entry(Some(&t.name.0), t.topic_id.is_nil())),
        RequestKind::Fetch(r) => {
            r.topics.iter().for_each(|t| g.entry(Some(&t.topic.0), t.topic_id.is_nil()));
            // a topic taken out of the fetch session is named too
            r.forgotten_topics_data.iter().for_each(|t| g.entry(Some(&t.topic.0), t.topic_id.is_nil()));
        }
        RequestKind::ListOffsets(r) => g.names(r.topics.iter().map(|t| &t.name.0)),
        RequestKind::Metadata(r) => match &r.topics {
            None => g.all = true,
            // v0 has no null: an empty list asks for every topic
            Some(topics) if topics.is_empty() && version == 0 => g.all = true,
            Some(topics) => topics.iter().for_each(|t| g.entry(t.name.as_ref().map(|n| &n.0), t.topic_id.is_nil())),
        },
        RequestKind::OffsetCommit(r) => r.topics.iter().for_each(|t| g.entry(Some(&t.name.0), t.topic_id.is_nil())),
        RequestKind::OffsetFetch(r) => {
            if r.groups.is_empty() {
                // v0-7: one group; null topics: every topic it has offsets for
                match &r.topics {
                    None => g.all = true,
                    Some(topics) => g.names(topics.iter().map(|t| &t.name.0)),
                }
            } else {
                // v8+: a batch of groups, each with its own topics or null
                for group in &r.groups {
                    match &group.topics {
                        None => g.all = true,
                        Some(topics) => topics.iter().for_each(|t| g.entry(Some(&t.name.0), t.topic_id.is_nil())),
                    }
                }
            }
        }
        // group-wide: the group's members, assignments and committed
        // offsets span every topic it consumes
        RequestKind::DescribeGroups(_)
        | RequestKind::DeleteGroups(_)
        | RequestKind::ConsumerGroupDescribe(_)
        | RequestKind::ShareGroupDescribe(_) => g.all = true,
        RequestKind::CreateTopics(r) => g.names(r.topics.iter().map(|t| &t.name.0)),
        RequestKind::DeleteTopics(r) => {
            // v0-5 name topics in topic_names, v6 in topics (by name or id)
            g.names(r.topic_names.iter().map(|t| &t.0));
            r.topics.iter().for_each(|t| g.entry(t.name.as_ref().map(|n| &n.0), t.topic_id.is_nil()));
        }
        RequestKind::DeleteRecords(r) => g.names(r.topics.iter().map(|t| &t.name.0)),
        RequestKind::OffsetForLeaderEpoch(r) => g.names(r.topics.iter().map(|t| &t.topic.0)),
        RequestKind::AddPartitionsToTxn(r) => {
            g.names(r.v3_and_below_topics.iter().map(|t| &t.name.0));
            g.names(r.transactions.iter().flat_map(|tx| tx.topics.iter()).map(|t| &t.name.0));
        }
        RequestKind::WriteTxnMarkers(r) => g.names(r.markers.iter().flat_map(|m| m.topics.iter()).map(|t| &t.name.0)),
        RequestKind::TxnOffsetCommit(r) => g.names(r.topics.iter().map(|t| &t.name.0)),
        RequestKind::DescribeAcls(r) => {
            acl_pattern(&mut g, r.resource_type_filter, r.pattern_type_filter, r.resource_name_filter.as_ref())
        }
        RequestKind::CreateAcls(r) => r
            .creations
            .iter()
            .for_each(|c| acl_pattern(&mut g, c.resource_type, c.resource_pattern_type, Some(&c.resource_name))),
        RequestKind::DeleteAcls(r) => r.filters.iter().for_each(|f| {
            acl_pattern(&mut g, f.resource_type_filter, f.pattern_type_filter, f.resource_name_filter.as_ref())
        }),
        RequestKind::DescribeConfigs(r) => {
            r.resources.iter().for_each(|c| config_resource(&mut g, c.resource_type, &c.resource_name))
        }
        RequestKind::AlterConfigs(r) => {
            r.resources.iter().for_each(|c| config_resource(&mut g, c.resource_type, &c.resource_name))
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            r.resources.iter().for_each(|c| config_resource(&mut g, c.resource_type, &c.resource_name))
        }
        RequestKind::ListConfigResources(r) => {
            // v0 lists client-metrics resources only, v1 the given types
            // (none: every type, topics included)
            if (r.resource_types.is_empty() && version >= 1) || r.resource_types.contains(&RESOURCE_TOPIC) {
                g.all = true;
            } else {
                g.unknown = true;
            }
        }
        RequestKind::AlterReplicaLogDirs(r) => g.names(r.dirs.iter().flat_map(|d| d.topics.iter()).map(|t| &t.name.0)),
        RequestKind::DescribeLogDirs(r) => return names_or_all(r.topics.as_deref(), |t| &t.topic.0),
        RequestKind::CreatePartitions(r) => g.names(r.topics.iter().map(|t| &t.name.0)),
        RequestKind::ElectLeaders(r) => return names_or_all(r.topic_partitions.as_deref(), |t| &t.topic.0),
        RequestKind::AlterPartitionReassignments(r) => g.names(r.topics.iter().map(|t| &t.name.0)),
        RequestKind::ListPartitionReassignments(r) => return names_or_all(r.topics.as_deref(), |t| &t.name.0),
        RequestKind::OffsetDelete(r) => g.names(r.topics.iter().map(|t| &t.name.0)),
        RequestKind::DescribeProducers(r) => g.names(r.topics.iter().map(|t| &t.name.0)),
        // the transaction's partitions, whatever topics they are
        RequestKind::DescribeTransactions(_) => g.all = true,
        RequestKind::DescribeTopicPartitions(r) => {
            if r.topics.is_empty() {
                // Kafka describes every topic for an empty list
                g.all = true;
            }
            g.names(r.topics.iter().map(|t| &t.name.0));
            if let Some(cursor) = &r.cursor {
                g.name(&cursor.topic_name.0);
            }
        }
        RequestKind::ConsumerGroupHeartbeat(r) => {
            // null subscriptions: unchanged since the last heartbeat
            g.names(r.subscribed_topic_names.iter().flatten().map(|t| &t.0));
            if r.subscribed_topic_regex.as_ref().is_some_and(|re| !re.is_empty()) {
                g.unknown = true;
            }
            // the partitions the member says it owns, by topic id
            if r.topic_partitions.as_ref().is_some_and(|p| !p.is_empty()) {
                g.unknown = true;
            }
        }
        RequestKind::ShareGroupHeartbeat(r) => g.names(r.subscribed_topic_names.iter().flatten().map(|t| &t.0)),
        RequestKind::DescribeShareGroupOffsets(r) => {
            for group in &r.groups {
                match &group.topics {
                    None => g.all = true,
                    Some(topics) => g.names(topics.iter().map(|t| &t.topic_name.0)),
                }
            }
        }
        RequestKind::AlterShareGroupOffsets(r) => g.names(r.topics.iter().map(|t| &t.topic_name.0)),
        RequestKind::DeleteShareGroupOffsets(r) => g.names(r.topics.iter().map(|t| &t.topic_name.0)),
        // KRaft quorum APIs name the metadata log's topic
        RequestKind::Vote(r) => g.names(r.topics.iter().map(|t| &t.topic_name.0)),
        RequestKind::BeginQuorumEpoch(r) => g.names(r.topics.iter().map(|t| &t.topic_name.0)),
        RequestKind::EndQuorumEpoch(r) => g.names(r.topics.iter().map(|t| &t.topic_name.0)),
        RequestKind::DescribeQuorum(r) => g.names(r.topics.iter().map(|t| &t.topic_name.0)),
        RequestKind::FetchSnapshot(r) => g.names(r.topics.iter().map(|t| &t.name.0)),
        // topics by id only, or a whole other request inside
        RequestKind::AlterPartition(_)
        | RequestKind::AssignReplicasToDirs(_)
        | RequestKind::ShareFetch(_)
        | RequestKind::ShareAcknowledge(_)
        | RequestKind::InitializeShareGroupState(_)
        | RequestKind::ReadShareGroupState(_)
        | RequestKind::WriteShareGroupState(_)
        | RequestKind::DeleteShareGroupState(_)
        | RequestKind::ReadShareGroupStateSummary(_)
        | RequestKind::Envelope(_) => g.unknown = true,
        RequestKind::FindCoordinator(_)
        | RequestKind::JoinGroup(_)
        | RequestKind::Heartbeat(_)
        | RequestKind::LeaveGroup(_)
        | RequestKind::SyncGroup(_)
        | RequestKind::ListGroups(_)
        | RequestKind::SaslHandshake(_)
        | RequestKind::ApiVersions(_)
        | RequestKind::InitProducerId(_)
        | RequestKind::AddOffsetsToTxn(_)
        | RequestKind::EndTxn(_)
        | RequestKind::SaslAuthenticate(_)
        | RequestKind::CreateDelegationToken(_)
        | RequestKind::RenewDelegationToken(_)
        | RequestKind::ExpireDelegationToken(_)
        | RequestKind::DescribeDelegationToken(_)
        | RequestKind::DescribeClientQuotas(_)
        | RequestKind::AlterClientQuotas(_)
        | RequestKind::DescribeUserScramCredentials(_)
        | RequestKind::AlterUserScramCredentials(_)
        | RequestKind::UpdateFeatures(_)
        | RequestKind::DescribeCluster(_)
        | RequestKind::BrokerRegistration(_)
        | RequestKind::BrokerHeartbeat(_)
        | RequestKind::UnregisterBroker(_)
        | RequestKind::ListTransactions(_)
        | RequestKind::AllocateProducerIds(_)
        | RequestKind::ControllerRegistration(_)
        | RequestKind::GetTelemetrySubscriptions(_)
        | RequestKind::PushTelemetry(_)
        | RequestKind::AddRaftVoter(_)
        | RequestKind::RemoveRaftVoter(_)
        | RequestKind::UpdateRaftVoter(_) => return Topics::None,
        // an API a newer crate added and nobody classified yet
        _ => g.unknown = true,
    }
    g.finish()
}
