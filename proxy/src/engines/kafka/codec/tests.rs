use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::*;

/// A request frame body (no length prefix) as a client would write it.
fn frame(key: ApiKey, version: i16, correlation_id: i32, body: &RequestKind) -> Bytes {
    try_frame(key, version, correlation_id, body).unwrap()
}

fn try_frame(key: ApiKey, version: i16, correlation_id: i32, body: &RequestKind) -> anyhow::Result<Bytes> {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("test-client")))
        .encode(&mut out, key.request_header_version(version))?;
    body.encode(&mut out, version)?;
    Ok(out.freeze())
}

/// Decode a refusal as a client would; returns the correlation id and body.
fn read_response(key: ApiKey, version: i16, frame: &[u8]) -> (i32, ResponseKind) {
    let len = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4, "the length prefix covers the rest of the frame");
    let mut buf = Bytes::copy_from_slice(&frame[4..]);
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(version)).unwrap();
    let body = ResponseKind::decode(key, &mut buf, version).unwrap();
    assert!(buf.is_empty(), "{key:?} v{version}: {} bytes left over", buf.len());
    (header.correlation_id, body)
}

fn topic(name: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(name))
}

fn produce(acks: i16, topics: &[&'static str]) -> RequestKind {
    RequestKind::Produce(
        ProduceRequest::default().with_acks(acks).with_timeout_ms(1000).with_topic_data(
            topics
                .iter()
                .map(|t| {
                    TopicProduceData::default().with_name(topic(t)).with_partition_data(vec![
                        PartitionProduceData::default().with_index(0),
                        PartitionProduceData::default().with_index(1),
                    ])
                })
                .collect(),
        ),
    )
}

#[test]
fn produce_topics_and_per_partition_refusals_in_every_version() {
    for version in 3..=12 {
        let request = parse_request(frame(ApiKey::Produce, version, 42, &produce(1, &["a", "b", "a"]))).unwrap();
        assert_eq!(request.topics, Topics::Named(vec!["a".into(), "b".into()]), "each topic once, in order");
        assert_eq!(request.client_id.as_deref(), Some("test-client"));
        assert!(request.expects_response);
        let refusal = request.refusal(error_code::TOPIC_AUTHORIZATION_FAILED).expect("produce refusal");
        let (correlation_id, body) = read_response(ApiKey::Produce, version, &refusal);
        assert_eq!(correlation_id, 42);
        let ResponseKind::Produce(response) = body else { panic!("not a produce response") };
        let codes: Vec<(String, i32, i16)> = response
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter().map(move |p| (t.name.0.to_string(), p.index, p.error_code)))
            .collect();
        assert_eq!(codes.len(), 6, "v{version}: every partition answered");
        assert!(codes.iter().all(|(_, _, code)| *code == 29));
        assert_eq!(codes[1], ("a".to_string(), 1, 29));
    }
}

#[test]
fn produce_without_acks_expects_no_response() {
    let request = parse_request(frame(ApiKey::Produce, 9, 7, &produce(0, &["a"]))).unwrap();
    assert!(!request.expects_response);
}

#[test]
fn metadata_topics_all_none_and_named() {
    let all = RequestKind::Metadata(MetadataRequest::default().with_topics(None));
    assert_eq!(parse_request(frame(ApiKey::Metadata, 4, 1, &all)).unwrap().topics, Topics::All);
    let brokers_only = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![])));
    assert_eq!(parse_request(frame(ApiKey::Metadata, 4, 1, &brokers_only)).unwrap().topics, Topics::Named(vec![]));
    let named = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic("deathstar-plans"))),
        MetadataRequestTopic::default().with_name(Some(topic("empire-announce"))),
    ])));
    for version in 1..=12 {
        let request = parse_request(frame(ApiKey::Metadata, version, 5, &named)).unwrap();
        assert_eq!(request.topics, Topics::Named(vec!["deathstar-plans".into(), "empire-announce".into()]));
        let (id, body) = read_response(ApiKey::Metadata, version, &request.refusal(29).unwrap());
        assert_eq!(id, 5);
        let ResponseKind::Metadata(response) = body else { panic!() };
        let topics: Vec<(String, i16)> =
            response.topics.iter().map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code)).collect();
        assert_eq!(topics, vec![("deathstar-plans".into(), 29), ("empire-announce".into(), 29)]);
    }
}

/// A refused Metadata request goes to the broker as a brokers-only one, and
/// the broker's answer comes back with the refused topics: the brokers,
/// cluster id and controller are the broker's own (clients drop a Metadata
/// answer without brokers, found against Apache Kafka with kafka-python).
#[test]
fn a_refused_metadata_request_is_answered_with_the_brokers_brokers() {
    let named = RequestKind::Metadata(
        MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic("deathstar-plans")))]))
            .with_allow_auto_topic_creation(true),
    );
    for version in 1..=13 {
        let request = parse_request(frame(ApiKey::Metadata, version, 9, &named)).unwrap();
        let asked = brokers_only_metadata(&frame(ApiKey::Metadata, version, 9, &named), version).unwrap();
        let mut buf = Bytes::copy_from_slice(&asked[4..]);
        let header = RequestHeader::decode(&mut buf, ApiKey::Metadata.request_header_version(version)).unwrap();
        let sent = MetadataRequest::decode(&mut buf, version).unwrap();
        assert_eq!((header.correlation_id, sent.topics, buf.len()), (9, Some(vec![]), 0), "v{version}");
        if version >= 4 {
            assert!(!sent.allow_auto_topic_creation, "v{version}: a refused name must not create its topic");
        }

        let broker = metadata_response::MetadataResponseBroker::default()
            .with_node_id(BrokerId(1))
            .with_host(StrBytes::from_static_str("10.0.0.1"))
            .with_port(9092);
        let answer = MetadataResponse::default().with_brokers(vec![broker]).with_controller_id(BrokerId(1));
        let mut wire = BytesMut::new();
        wire.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(9)
            .encode(&mut wire, ApiKey::Metadata.response_header_version(version))
            .unwrap();
        answer.encode(&mut wire, version).unwrap();
        let len = (wire.len() - 4) as i32;
        wire[..4].copy_from_slice(&len.to_be_bytes());

        let topics = request.refused_metadata_topics(29).unwrap();
        let rewritten = metadata_answer_refusing(&wire, version, topics).unwrap();
        let (id, body) = read_response(ApiKey::Metadata, version, &rewritten);
        let ResponseKind::Metadata(response) = body else { panic!() };
        assert_eq!(id, 9);
        assert_eq!(response.brokers.len(), 1, "v{version}: the broker's brokers are kept");
        let topics: Vec<(String, i16)> =
            response.topics.iter().map(|t| (t.name.as_ref().unwrap().0.to_string(), t.error_code)).collect();
        assert_eq!(topics, vec![("deathstar-plans".into(), 29)], "v{version}");
    }
    assert!(brokers_only_metadata(&frame(ApiKey::Metadata, 0, 9, &named), 0).is_none(), "v0: empty means all");
}

/// An ApiVersions request newer than the crate reads gets Kafka's own answer
/// to a version it does not speak: v0, UNSUPPORTED_VERSION, and the range to
/// ask in.
#[test]
fn a_too_new_api_versions_request_is_told_which_versions_to_use() {
    let max = ApiKey::ApiVersions.valid_versions().max;
    let mut frame = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(max + 1)
        .with_correlation_id(3)
        .with_client_id(Some(StrBytes::from_static_str("java")))
        .encode(&mut frame, 2)
        .unwrap();
    let request = parse_request(frame.freeze()).unwrap();
    let answer = api_versions_too_new(&request).unwrap();
    let (id, body) = read_response(ApiKey::ApiVersions, 0, &answer);
    let ResponseKind::ApiVersions(response) = body else { panic!() };
    assert_eq!((id, response.error_code), (3, 35));
    assert_eq!(response.api_keys.len(), 1);
    assert_eq!((response.api_keys[0].min_version, response.api_keys[0].max_version), (0, max));

    let known = RequestKind::ApiVersions(ApiVersionsRequest::default());
    assert!(api_versions_too_new(&parse_request(frame_of(ApiKey::ApiVersions, max, &known)).unwrap()).is_none());
}

fn frame_of(key: ApiKey, version: i16, body: &RequestKind) -> Bytes {
    frame(key, version, 1, body)
}

#[test]
fn topics_named_only_by_id_are_unknown() {
    let by_id = RequestKind::Fetch(
        FetchRequest::default().with_topics(vec![FetchTopic::default().with_topic_id(uuid::Uuid::from_u128(7))]),
    );
    assert_eq!(parse_request(frame(ApiKey::Fetch, 13, 1, &by_id)).unwrap().topics, Topics::Unknown);
}

#[test]
fn every_answerable_api_refuses_in_every_version() {
    // default bodies: the point is the framing and the version rules of
    // each response, which a client decodes strictly
    let answerable = [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::Metadata,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::FindCoordinator,
        ApiKey::JoinGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::SyncGroup,
        ApiKey::DescribeGroups,
        ApiKey::ListGroups,
        ApiKey::ApiVersions,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::DeleteRecords,
        ApiKey::InitProducerId,
        ApiKey::DescribeConfigs,
        ApiKey::AlterConfigs,
        ApiKey::IncrementalAlterConfigs,
        ApiKey::CreateAcls,
        ApiKey::DeleteAcls,
        ApiKey::DescribeAcls,
        ApiKey::OffsetDelete,
        ApiKey::DeleteGroups,
        ApiKey::ConsumerGroupDescribe,
        ApiKey::ConsumerGroupHeartbeat,
        ApiKey::CreatePartitions,
        ApiKey::ElectLeaders,
        ApiKey::AlterPartitionReassignments,
        ApiKey::ListPartitionReassignments,
        ApiKey::DescribeProducers,
        ApiKey::OffsetForLeaderEpoch,
        ApiKey::TxnOffsetCommit,
        ApiKey::AddPartitionsToTxn,
        ApiKey::DescribeLogDirs,
        ApiKey::DescribeTopicPartitions,
    ];
    let mut answered = 0;
    for key in answerable {
        let range = key.valid_versions();
        for version in range.min..=range.max {
            let body = default_request(key);
            // a few versions need fields a default body lacks (a client
            // could not send it either)
            let Ok(frame) = try_frame(key, version, 99, &body) else { continue };
            let request = parse_request(frame).unwrap_or_else(|e| panic!("{key:?} v{version} does not parse: {e}"));
            let code = request.default_error_code();
            let refusal = request.refusal(code).unwrap_or_else(|| panic!("{key:?} v{version}: no refusal"));
            let (id, _) = read_response(key, version, &refusal);
            assert_eq!(id, 99, "{key:?} v{version}");
            answered += 1;
        }
    }
    assert!(answered > 120, "only {answered} API versions were exercised");
}

fn default_request(key: ApiKey) -> RequestKind {
    match key {
        ApiKey::Produce => produce(1, &["t"]),
        ApiKey::Fetch => RequestKind::Fetch(FetchRequest::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default()),
        ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(OffsetCommitRequest::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(OffsetFetchRequest::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(FindCoordinatorRequest::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(JoinGroupRequest::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(HeartbeatRequest::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(LeaveGroupRequest::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(SyncGroupRequest::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(DescribeGroupsRequest::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(CreateTopicsRequest::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(DeleteTopicsRequest::default()),
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(DeleteRecordsRequest::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(InitProducerIdRequest::default()),
        other => any_request(other),
    }
}

#[test]
fn group_and_cluster_apis_get_their_own_codes() {
    let join = parse_request(frame(ApiKey::JoinGroup, 5, 1, &default_request(ApiKey::JoinGroup))).unwrap();
    assert_eq!(join.default_error_code(), error_code::GROUP_AUTHORIZATION_FAILED);
    let versions = parse_request(frame(ApiKey::ApiVersions, 3, 1, &default_request(ApiKey::ApiVersions))).unwrap();
    assert_eq!(versions.default_error_code(), error_code::CLUSTER_AUTHORIZATION_FAILED);
    let txn = RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_key_type(1));
    let txn = parse_request(frame(ApiKey::FindCoordinator, 3, 1, &txn)).unwrap();
    assert_eq!(txn.default_error_code(), error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    let fetch = parse_request(frame(ApiKey::Fetch, 11, 1, &default_request(ApiKey::Fetch))).unwrap();
    assert_eq!(fetch.default_error_code(), error_code::TOPIC_AUTHORIZATION_FAILED);
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    assert!(matches!(parse_request(Bytes::from_static(&[0, 0, 0])), Err(ParseError::ShortHeader(3))));
    let whole = frame(ApiKey::Produce, 9, 1, &produce(1, &["topic"]));
    for cut in 8..whole.len() {
        // every truncation either fails cleanly or (rarely) still reads
        let _ = parse_request(whole.slice(..cut));
    }
    let truncated = parse_request(whole.slice(..whole.len() - 20));
    assert!(matches!(truncated, Err(ParseError::Body { .. })), "{truncated:?}");
    let mut garbage = BytesMut::new();
    garbage.put_i16(0); // Produce
    garbage.put_i16(9);
    garbage.put_i32(1);
    garbage.put_i16(1000); // client id longer than the frame
    assert!(parse_request(garbage.freeze()).is_err());
}

#[test]
fn unknown_api_keys_and_versions_keep_their_header() {
    let mut unknown = BytesMut::new();
    unknown.put_i16(9999);
    unknown.put_i16(0);
    unknown.put_i32(77);
    unknown.put_i16(3);
    unknown.put_slice(b"abc");
    let request = parse_request(unknown.freeze()).unwrap();
    assert_eq!((request.api_key, request.correlation_id, request.client_id.as_deref()), (9999, 77, Some("abc")));
    assert_eq!(request.topics, Topics::Unknown);
    assert!(request.refusal(31).is_none(), "no response shape is known for it");

    // Produce v2 is older than the crate reads: topics unknown, header kept
    let mut old = BytesMut::new();
    old.put_i16(0);
    old.put_i16(2);
    old.put_i32(5);
    old.put_i16(-1);
    let request = parse_request(old.freeze()).unwrap();
    assert_eq!((request.correlation_id, request.client_id.clone()), (5, None));
    assert_eq!(request.topics, Topics::Unknown);
}

#[test]
fn api_versions_are_narrowed_to_what_weir_reads() {
    let broker = ApiVersionsResponse::default().with_api_keys(vec![
        api_versions_response::ApiVersion::default().with_api_key(0).with_min_version(0).with_max_version(13),
        api_versions_response::ApiVersion::default().with_api_key(1).with_min_version(0).with_max_version(18),
        api_versions_response::ApiVersion::default().with_api_key(2).with_min_version(0).with_max_version(0),
        api_versions_response::ApiVersion::default().with_api_key(18).with_min_version(0).with_max_version(4),
        api_versions_response::ApiVersion::default().with_api_key(999).with_min_version(0).with_max_version(1),
    ]);
    for version in 0..=3 {
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        ResponseHeader::default().with_correlation_id(3).encode(&mut frame, 0).unwrap();
        broker.encode(&mut frame, version).unwrap();
        let len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&len.to_be_bytes());

        let narrowed = narrow_api_versions(&frame, version).expect("decodable");
        let (id, body) = read_response(ApiKey::ApiVersions, version, &narrowed);
        assert_eq!(id, 3);
        let ResponseKind::ApiVersions(response) = body else { panic!() };
        let ranges: Vec<(i16, i16, i16)> =
            response.api_keys.iter().map(|a| (a.api_key, a.min_version, a.max_version)).collect();
        assert_eq!(
            ranges,
            vec![(0, 3, 12), (1, 4, 12), (18, 0, 4), (999, 0, 1)],
            "v{version}: Produce/Fetch capped where topics lose their names, ListOffsets v0 dropped, unknown kept"
        );
    }
}

/// A default request body of every API the crate knows.
fn any_request(key: ApiKey) -> RequestKind {
    // exhaustive on purpose: a crate upgrade that adds an API fails here
    macro_rules! every_api {
        ($($name:ident),* $(,)?) => {
            match key {
                $(ApiKey::$name => RequestKind::$name(Default::default()),)*
            }
        };
    }
    every_api!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        OffsetCommit,
        OffsetFetch,
        FindCoordinator,
        JoinGroup,
        Heartbeat,
        LeaveGroup,
        SyncGroup,
        DescribeGroups,
        ListGroups,
        SaslHandshake,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DeleteRecords,
        InitProducerId,
        OffsetForLeaderEpoch,
        AddPartitionsToTxn,
        AddOffsetsToTxn,
        EndTxn,
        WriteTxnMarkers,
        TxnOffsetCommit,
        DescribeAcls,
        CreateAcls,
        DeleteAcls,
        DescribeConfigs,
        AlterConfigs,
        AlterReplicaLogDirs,
        DescribeLogDirs,
        SaslAuthenticate,
        CreatePartitions,
        CreateDelegationToken,
        RenewDelegationToken,
        ExpireDelegationToken,
        DescribeDelegationToken,
        DeleteGroups,
        ElectLeaders,
        IncrementalAlterConfigs,
        AlterPartitionReassignments,
        ListPartitionReassignments,
        OffsetDelete,
        DescribeClientQuotas,
        AlterClientQuotas,
        DescribeUserScramCredentials,
        AlterUserScramCredentials,
        Vote,
        BeginQuorumEpoch,
        EndQuorumEpoch,
        DescribeQuorum,
        AlterPartition,
        UpdateFeatures,
        Envelope,
        FetchSnapshot,
        DescribeCluster,
        DescribeProducers,
        BrokerRegistration,
        BrokerHeartbeat,
        UnregisterBroker,
        DescribeTransactions,
        ListTransactions,
        AllocateProducerIds,
        ConsumerGroupHeartbeat,
        ConsumerGroupDescribe,
        ControllerRegistration,
        GetTelemetrySubscriptions,
        PushTelemetry,
        AssignReplicasToDirs,
        ListConfigResources,
        DescribeTopicPartitions,
        ShareGroupHeartbeat,
        ShareGroupDescribe,
        ShareFetch,
        ShareAcknowledge,
        AddRaftVoter,
        RemoveRaftVoter,
        UpdateRaftVoter,
        InitializeShareGroupState,
        ReadShareGroupState,
        WriteShareGroupState,
        DeleteShareGroupState,
        ReadShareGroupStateSummary,
        DescribeShareGroupOffsets,
        AlterShareGroupOffsets,
        DeleteShareGroupOffsets,
    )
}

/// Parse `body` as a client would send it in `version`; its topics.
fn topics_in(key: ApiKey, version: i16, body: &RequestKind) -> Topics {
    let frame = try_frame(key, version, 1, body).unwrap_or_else(|e| panic!("{key:?} v{version} does not encode: {e}"));
    let request = parse_request(frame).unwrap_or_else(|e| panic!("{key:?} v{version} does not parse: {e}"));
    assert_eq!(request.api_key, key as i16);
    request.topics
}

fn names(list: &[&str]) -> Topics {
    Topics::Named(list.iter().map(|t| t.to_string()).collect())
}

fn s(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

/// Every API of the crate, in every version: the ones that can carry topics
/// are never judged as topic-less, and the others always are.
#[test]
fn every_api_in_every_version_is_classified() {
    let mut exercised = 0;
    for key in ApiKey::iter() {
        let range = key.valid_versions();
        for version in range.min..=range.max {
            let Ok(frame) = try_frame(key, version, 1, &any_request(key)) else { continue };
            let request = parse_request(frame).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
            let topic_less = request.topics == Topics::None;
            assert_eq!(topic_less, !carries_topics(key), "{key:?} v{version}: {:?}", request.topics);
            exercised += 1;
        }
        // a version weir does not read: unknown if the API carries topics
        let mut header = BytesMut::new();
        header.put_i16(key as i16);
        header.put_i16(range.max + 1);
        header.put_i32(1);
        header.put_i16(-1);
        header.put_u8(0); // no tagged fields, for the flexible header versions
        let beyond = parse_request(header.freeze()).unwrap();
        let expected = if carries_topics(key) { Topics::Unknown } else { Topics::None };
        assert_eq!(beyond.topics, expected, "{key:?} v{}", range.max + 1);
    }
    assert!(exercised > 280, "only {exercised} API versions were exercised");
}

#[test]
fn config_resources_name_topics_and_other_resources_are_unknown() {
    use describe_configs_request::DescribeConfigsResource;
    let describe = |resources: Vec<(i8, &'static str)>| {
        RequestKind::DescribeConfigs(
            DescribeConfigsRequest::default().with_resources(
                resources
                    .into_iter()
                    .map(|(t, n)| DescribeConfigsResource::default().with_resource_type(t).with_resource_name(s(n)))
                    .collect(),
            ),
        )
    };
    for version in 1..=4 {
        let key = ApiKey::DescribeConfigs;
        assert_eq!(
            topics_in(key, version, &describe(vec![(2, "secret"), (2, "public")])),
            names(&["secret", "public"])
        );
        assert_eq!(topics_in(key, version, &describe(vec![(2, "t"), (4, "1")])), Topics::Unknown, "a broker resource");
        assert_eq!(topics_in(key, version, &describe(vec![(8, "1")])), Topics::Unknown, "broker loggers");
        assert_eq!(topics_in(key, version, &describe(vec![(2, "")])), Topics::Unknown, "an empty topic name");
    }
    let alter = RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
        alter_configs_request::AlterConfigsResource::default().with_resource_type(2).with_resource_name(s("secret")),
    ]));
    for version in 0..=2 {
        assert_eq!(topics_in(ApiKey::AlterConfigs, version, &alter), names(&["secret"]));
    }
    let incremental = |t: i8, n: &'static str| {
        RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(t)
                    .with_resource_name(s(n)),
            ]))
    };
    for version in 0..=1 {
        assert_eq!(topics_in(ApiKey::IncrementalAlterConfigs, version, &incremental(2, "secret")), names(&["secret"]));
        assert_eq!(topics_in(ApiKey::IncrementalAlterConfigs, version, &incremental(4, "")), Topics::Unknown);
    }
}

#[test]
fn acl_patterns_name_a_topic_only_when_literal() {
    use create_acls_request::AclCreation;
    use delete_acls_request::DeleteAclsFilter;
    // (resource type, pattern type, name) -> topics
    let cases: [(i8, i8, Option<&'static str>, Topics); 8] = [
        (2, 3, Some("secret"), names(&["secret"])),
        (2, 3, Some("*"), Topics::All),
        (2, 3, None, Topics::All),
        (2, 4, Some("sec"), Topics::Unknown),
        (2, 2, Some("secret"), Topics::Unknown),
        (2, 1, Some("secret"), Topics::Unknown),
        (1, 3, Some("secret"), Topics::Unknown),
        (3, 3, Some("a-group"), Topics::Unknown),
    ];
    for (resource, pattern, name, expected) in cases {
        let what = format!("resource {resource} pattern {pattern} name {name:?}");
        for version in 1..=3 {
            let describe = RequestKind::DescribeAcls(
                DescribeAclsRequest::default()
                    .with_resource_type_filter(resource)
                    .with_pattern_type_filter(pattern)
                    .with_resource_name_filter(name.map(s)),
            );
            assert_eq!(topics_in(ApiKey::DescribeAcls, version, &describe), expected, "DescribeAcls v{version} {what}");
            let delete = RequestKind::DeleteAcls(DeleteAclsRequest::default().with_filters(vec![
                DeleteAclsFilter::default()
                    .with_resource_type_filter(resource)
                    .with_pattern_type_filter(pattern)
                    .with_resource_name_filter(name.map(s)),
            ]));
            assert_eq!(topics_in(ApiKey::DeleteAcls, version, &delete), expected, "DeleteAcls v{version} {what}");
            if let Some(name) = name {
                let create = RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![
                    AclCreation::default()
                        .with_resource_type(resource)
                        .with_resource_pattern_type(pattern)
                        .with_resource_name(s(name)),
                ]));
                assert_eq!(topics_in(ApiKey::CreateAcls, version, &create), expected, "CreateAcls v{version} {what}");
            }
        }
    }
}

#[test]
fn group_apis_name_their_topics_or_mean_every_topic_of_the_group() {
    let offset_delete = RequestKind::OffsetDelete(
        OffsetDeleteRequest::default()
            .with_group_id(GroupId(s("g")))
            .with_topics(vec![offset_delete_request::OffsetDeleteRequestTopic::default().with_name(topic("secret"))]),
    );
    assert_eq!(topics_in(ApiKey::OffsetDelete, 0, &offset_delete), names(&["secret"]));
    let groups = || vec![GroupId(s("g"))];
    for version in 0..=6 {
        let describe = RequestKind::DescribeGroups(DescribeGroupsRequest::default().with_groups(groups()));
        assert_eq!(topics_in(ApiKey::DescribeGroups, version, &describe), Topics::All);
    }
    for version in 0..=2 {
        let delete = RequestKind::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(groups()));
        assert_eq!(topics_in(ApiKey::DeleteGroups, version, &delete), Topics::All);
    }
    // OffsetFetch v8+: a batch of groups, each with topics or null (every topic)
    use offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopics};
    let batch = |second: Option<Vec<OffsetFetchRequestTopics>>| {
        RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s("a")))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default().with_name(topic("public"))])),
            OffsetFetchRequestGroup::default().with_group_id(GroupId(s("b"))).with_topics(second),
        ]))
    };
    for version in 8..=9 {
        let two = batch(Some(vec![OffsetFetchRequestTopics::default().with_name(topic("secret"))]));
        assert_eq!(topics_in(ApiKey::OffsetFetch, version, &two), names(&["public", "secret"]));
        assert_eq!(topics_in(ApiKey::OffsetFetch, version, &batch(None)), Topics::All);
    }
    // the new consumer protocol: subscriptions by name or regex, owned partitions by id
    use consumer_group_heartbeat_request::TopicPartitions;
    let heartbeat = |names: Option<Vec<&'static str>>, regex: Option<&'static str>, owned: bool| {
        RequestKind::ConsumerGroupHeartbeat(
            ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_subscribed_topic_names(names.map(|n| n.into_iter().map(topic).collect()))
                .with_subscribed_topic_regex(regex.map(s))
                .with_topic_partitions(Some(if owned {
                    vec![TopicPartitions::default().with_topic_id(uuid::Uuid::from_u128(3))]
                } else {
                    vec![]
                })),
        )
    };
    for version in 0..=1 {
        let key = ApiKey::ConsumerGroupHeartbeat;
        assert_eq!(topics_in(key, version, &heartbeat(Some(vec!["secret"]), None, false)), names(&["secret"]));
        assert_eq!(topics_in(key, version, &heartbeat(None, None, false)), names(&[]), "an unchanged subscription");
        assert_eq!(topics_in(key, version, &heartbeat(Some(vec![]), None, true)), Topics::Unknown, "owned by id");
        if version >= 1 {
            assert_eq!(topics_in(key, version, &heartbeat(None, Some("sec.*"), false)), Topics::Unknown, "a regex");
        }
    }
}

#[test]
fn null_or_empty_lists_that_kafka_reads_as_every_topic() {
    let empty_metadata = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![])));
    assert_eq!(topics_in(ApiKey::Metadata, 0, &empty_metadata), Topics::All, "v0: empty means all");
    assert_eq!(topics_in(ApiKey::Metadata, 1, &empty_metadata), names(&[]), "v1+: empty means brokers only");
    let by_id = RequestKind::Metadata(
        MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_topic_id(uuid::Uuid::from_u128(5))])),
    );
    assert_eq!(topics_in(ApiKey::Metadata, 12, &by_id), Topics::Unknown);
    let both = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic("public"))).with_topic_id(uuid::Uuid::from_u128(5)),
    ])));
    assert_eq!(topics_in(ApiKey::Metadata, 12, &both), Topics::Unknown, "a name beside an id is not trusted");

    let elect = |topics: Option<Vec<&'static str>>| {
        RequestKind::ElectLeaders(ElectLeadersRequest::default().with_topic_partitions(topics.map(|t| {
            t.into_iter()
                .map(|n| {
                    elect_leaders_request::TopicPartitions::default().with_topic(topic(n)).with_partitions(vec![0])
                })
                .collect()
        })))
    };
    for version in 0..=2 {
        assert_eq!(topics_in(ApiKey::ElectLeaders, version, &elect(None)), Topics::All);
        assert_eq!(topics_in(ApiKey::ElectLeaders, version, &elect(Some(vec!["secret"]))), names(&["secret"]));
    }
    let list = RequestKind::ListPartitionReassignments(ListPartitionReassignmentsRequest::default().with_topics(None));
    assert_eq!(topics_in(ApiKey::ListPartitionReassignments, 0, &list), Topics::All);
    let dirs = RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None));
    for version in 1..=4 {
        assert_eq!(topics_in(ApiKey::DescribeLogDirs, version, &dirs), Topics::All);
    }
    use describe_topic_partitions_request::{Cursor, TopicRequest};
    let describe = |topics: Vec<&'static str>, cursor: Option<&'static str>| {
        RequestKind::DescribeTopicPartitions(
            DescribeTopicPartitionsRequest::default()
                .with_topics(topics.into_iter().map(|t| TopicRequest::default().with_name(topic(t))).collect())
                .with_cursor(cursor.map(|c| Cursor::default().with_topic_name(topic(c)))),
        )
    };
    assert_eq!(topics_in(ApiKey::DescribeTopicPartitions, 0, &describe(vec![], None)), Topics::All);
    assert_eq!(
        topics_in(ApiKey::DescribeTopicPartitions, 0, &describe(vec!["public"], Some("secret"))),
        names(&["public", "secret"]),
        "the cursor's topic is judged too"
    );
}

#[test]
fn topics_by_id_are_unknown_wherever_they_appear() {
    use delete_topics_request::DeleteTopicState;
    let delete =
        |state: DeleteTopicState| RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topics(vec![state]));
    let named = delete(DeleteTopicState::default().with_name(Some(topic("secret"))));
    assert_eq!(topics_in(ApiKey::DeleteTopics, 6, &named), names(&["secret"]));
    let by_id = delete(DeleteTopicState::default().with_topic_id(uuid::Uuid::from_u128(1)));
    assert_eq!(topics_in(ApiKey::DeleteTopics, 6, &by_id), Topics::Unknown);
    let old = RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topic_names(vec![topic("secret")]));
    for version in 1..=5 {
        assert_eq!(topics_in(ApiKey::DeleteTopics, version, &old), names(&["secret"]));
    }
    let share = RequestKind::ShareFetch(ShareFetchRequest::default());
    assert_eq!(topics_in(ApiKey::ShareFetch, 1, &share), Topics::Unknown);
    // a fetch session's forgotten topics are named too
    let fetch = RequestKind::Fetch(
        FetchRequest::default()
            .with_topics(vec![FetchTopic::default().with_topic(topic("public"))])
            .with_forgotten_topics_data(vec![fetch_request::ForgottenTopic::default().with_topic(topic("secret"))]),
    );
    for version in 7..=12 {
        assert_eq!(topics_in(ApiKey::Fetch, version, &fetch), names(&["public", "secret"]));
    }
}

#[test]
fn admin_and_transaction_apis_name_their_topics() {
    use add_partitions_to_txn_request::{AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction};
    let txn_topic = |n| AddPartitionsToTxnTopic::default().with_name(topic(n)).with_partitions(vec![0]);
    let v3 = RequestKind::AddPartitionsToTxn(
        AddPartitionsToTxnRequest::default().with_v3_and_below_topics(vec![txn_topic("secret")]),
    );
    for version in 0..=3 {
        assert_eq!(topics_in(ApiKey::AddPartitionsToTxn, version, &v3), names(&["secret"]));
    }
    let batched = RequestKind::AddPartitionsToTxn(AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default().with_topics(vec![txn_topic("public")]),
        AddPartitionsToTxnTransaction::default().with_topics(vec![txn_topic("secret")]),
    ]));
    for version in 4..=5 {
        assert_eq!(topics_in(ApiKey::AddPartitionsToTxn, version, &batched), names(&["public", "secret"]));
    }
    let cases: Vec<(ApiKey, RequestKind)> = vec![
        (
            ApiKey::TxnOffsetCommit,
            RequestKind::TxnOffsetCommit(TxnOffsetCommitRequest::default().with_topics(vec![
                txn_offset_commit_request::TxnOffsetCommitRequestTopic::default().with_name(topic("secret")),
            ])),
        ),
        (
            ApiKey::DescribeProducers,
            RequestKind::DescribeProducers(
                DescribeProducersRequest::default()
                    .with_topics(vec![describe_producers_request::TopicRequest::default().with_name(topic("secret"))]),
            ),
        ),
        (
            ApiKey::WriteTxnMarkers,
            RequestKind::WriteTxnMarkers(WriteTxnMarkersRequest::default().with_markers(vec![
                write_txn_markers_request::WritableTxnMarker::default().with_topics(vec![
                    write_txn_markers_request::WritableTxnMarkerTopic::default().with_name(topic("secret")),
                ]),
            ])),
        ),
        (
            ApiKey::CreatePartitions,
            RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default().with_name(topic("secret")),
            ])),
        ),
        (
            ApiKey::AlterPartitionReassignments,
            RequestKind::AlterPartitionReassignments(AlterPartitionReassignmentsRequest::default().with_topics(vec![
                alter_partition_reassignments_request::ReassignableTopic::default().with_name(topic("secret")),
            ])),
        ),
        (
            ApiKey::ListPartitionReassignments,
            RequestKind::ListPartitionReassignments(ListPartitionReassignmentsRequest::default().with_topics(Some(
                vec![list_partition_reassignments_request::ListPartitionReassignmentsTopics::default()
                    .with_name(topic("secret"))],
            ))),
        ),
        (
            ApiKey::OffsetForLeaderEpoch,
            RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default().with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default().with_topic(topic("secret")),
            ])),
        ),
        (
            ApiKey::AlterReplicaLogDirs,
            RequestKind::AlterReplicaLogDirs(AlterReplicaLogDirsRequest::default().with_dirs(vec![
                alter_replica_log_dirs_request::AlterReplicaLogDir::default().with_topics(vec![
                    alter_replica_log_dirs_request::AlterReplicaLogDirTopic::default().with_name(topic("secret")),
                ]),
            ])),
        ),
        (
            ApiKey::DescribeLogDirs,
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(Some(vec![
                describe_log_dirs_request::DescribableLogDirTopic::default().with_topic(topic("secret")),
            ]))),
        ),
        (
            ApiKey::DeleteRecords,
            RequestKind::DeleteRecords(
                DeleteRecordsRequest::default().with_topics(vec![
                    delete_records_request::DeleteRecordsTopic::default().with_name(topic("secret")),
                ]),
            ),
        ),
    ];
    for (key, body) in cases {
        let range = key.valid_versions();
        for version in range.min..=range.max {
            assert_eq!(topics_in(key, version, &body), names(&["secret"]), "{key:?} v{version}");
        }
    }
}

#[test]
fn refusals_of_the_resource_apis_carry_the_code_per_resource() {
    let describe = RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
            describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("secret")),
        ]));
    for version in 1..=4 {
        let request = parse_request(frame(ApiKey::DescribeConfigs, version, 8, &describe)).unwrap();
        assert_eq!(request.default_error_code(), error_code::TOPIC_AUTHORIZATION_FAILED);
        let (id, ResponseKind::DescribeConfigs(response)) =
            read_response(ApiKey::DescribeConfigs, version, &request.refusal(29).unwrap())
        else {
            panic!()
        };
        assert_eq!(id, 8);
        let results: Vec<(i8, String, i16)> =
            response.results.iter().map(|r| (r.resource_type, r.resource_name.to_string(), r.error_code)).collect();
        assert_eq!(results, vec![(2, "secret".to_string(), 29)]);
    }
    let acl = RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![
        create_acls_request::AclCreation::default().with_resource_type(2).with_resource_pattern_type(3),
    ]));
    let request = parse_request(frame(ApiKey::CreateAcls, 3, 8, &acl)).unwrap();
    assert_eq!(request.default_error_code(), error_code::CLUSTER_AUTHORIZATION_FAILED, "ACLs are cluster operations");
    let delete = RequestKind::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]));
    let request = parse_request(frame(ApiKey::DeleteGroups, 2, 8, &delete)).unwrap();
    assert_eq!(request.default_error_code(), error_code::GROUP_AUTHORIZATION_FAILED);
    let (_, ResponseKind::DeleteGroups(response)) =
        read_response(ApiKey::DeleteGroups, 2, &request.refusal(30).unwrap())
    else {
        panic!()
    };
    assert_eq!((response.results[0].group_id.0.as_str(), response.results[0].error_code), ("g", 30));
}

/// A broker's answer (a whole frame, length prefix included) as it comes.
fn answer(key: ApiKey, version: i16, correlation_id: i32, body: &ResponseKind) -> BytesMut {
    let mut wire = BytesMut::new();
    wire.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut wire, key.response_header_version(version))
        .unwrap();
    body.encode(&mut wire, version).unwrap();
    let len = (wire.len() - 4) as i32;
    wire[..4].copy_from_slice(&len.to_be_bytes());
    wire
}

/// Every answer that names brokers names weir's listener for each broker
/// it has one for, in every version; brokers without one are kept and
/// reported; an answer that does not read is an error, never passed on.
#[test]
fn answers_naming_brokers_name_weirs_listeners() {
    let weir = |id: i32| -> Option<std::net::SocketAddr> {
        (1..=2).contains(&id).then(|| format!("127.0.0.9:{}", 19100 + id).parse().unwrap())
    };
    let broker = |id: i32| {
        metadata_response::MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_string(format!("broker-{id}.kafka")))
            .with_port(9092)
    };
    for version in ApiKey::Metadata.valid_versions().min..=ApiKey::Metadata.valid_versions().max {
        let body =
            ResponseKind::Metadata(MetadataResponse::default().with_brokers(vec![broker(1), broker(2), broker(3)]));
        let wire = answer(ApiKey::Metadata, version, 5, &body);
        let (rewritten, unknown) = rewrite_brokers(&wire, ApiKey::Metadata as i16, version, &weir).unwrap();
        assert_eq!(unknown, vec![3], "v{version}");
        let (id, ResponseKind::Metadata(response)) = read_response(ApiKey::Metadata, version, &rewritten) else {
            panic!()
        };
        assert_eq!(id, 5);
        let named: Vec<(i32, String, i32)> =
            response.brokers.iter().map(|b| (b.node_id.0, b.host.to_string(), b.port)).collect();
        assert_eq!(
            named,
            vec![(1, "127.0.0.9".into(), 19101), (2, "127.0.0.9".into(), 19102), (3, "broker-3.kafka".into(), 9092)],
            "v{version}"
        );
    }
    for version in ApiKey::FindCoordinator.valid_versions().min..=ApiKey::FindCoordinator.valid_versions().max {
        let mut response = FindCoordinatorResponse::default();
        if version < 4 {
            response = response.with_node_id(BrokerId(2)).with_host(StrBytes::from_static_str("b2")).with_port(9092);
        } else {
            response = response.with_coordinators(vec![
                find_coordinator_response::Coordinator::default()
                    .with_key(StrBytes::from_static_str("group"))
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("b2"))
                    .with_port(9092),
            ]);
        }
        let wire = answer(ApiKey::FindCoordinator, version, 6, &ResponseKind::FindCoordinator(response));
        let (rewritten, unknown) = rewrite_brokers(&wire, ApiKey::FindCoordinator as i16, version, &weir).unwrap();
        assert!(unknown.is_empty());
        let (_, ResponseKind::FindCoordinator(response)) = read_response(ApiKey::FindCoordinator, version, &rewritten)
        else {
            panic!()
        };
        let (host, port) = match response.coordinators.first() {
            Some(c) => (c.host.to_string(), c.port),
            None => (response.host.to_string(), response.port),
        };
        assert_eq!((host.as_str(), port), ("127.0.0.9", 19102), "v{version}");
    }
    let described = DescribeClusterResponse::default().with_brokers(vec![
        describe_cluster_response::DescribeClusterBroker::default()
            .with_broker_id(BrokerId(1))
            .with_host(StrBytes::from_static_str("b1"))
            .with_port(9092),
    ]);
    let version = ApiKey::DescribeCluster.valid_versions().max;
    let wire = answer(ApiKey::DescribeCluster, version, 7, &ResponseKind::DescribeCluster(described));
    let (rewritten, _) = rewrite_brokers(&wire, ApiKey::DescribeCluster as i16, version, &weir).unwrap();
    let (_, ResponseKind::DescribeCluster(response)) = read_response(ApiKey::DescribeCluster, version, &rewritten)
    else {
        panic!()
    };
    assert_eq!((response.brokers[0].host.to_string(), response.brokers[0].port), ("127.0.0.9".into(), 19101));

    // a Produce answer names the new leader after NOT_LEADER_OR_FOLLOWER
    assert!(!names_brokers(ApiKey::Produce as i16, 9) && names_brokers(ApiKey::Produce as i16, 10));
    for version in 10..=12 {
        let produced = ProduceResponse::default().with_node_endpoints(vec![
            produce_response::NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(StrBytes::from_static_str("b2"))
                .with_port(9092),
        ]);
        let wire = answer(ApiKey::Produce, version, 8, &ResponseKind::Produce(produced));
        let (rewritten, _) = rewrite_brokers(&wire, ApiKey::Produce as i16, version, &weir).unwrap();
        let (_, ResponseKind::Produce(response)) = read_response(ApiKey::Produce, version, &rewritten) else {
            panic!()
        };
        let n = &response.node_endpoints[0];
        assert_eq!((n.host.to_string(), n.port), ("127.0.0.9".into(), 19102), "v{version}");
    }

    // cut short: an error, not the broker's addresses
    let body = ResponseKind::Metadata(MetadataResponse::default().with_brokers(vec![broker(1)]));
    let mut wire = answer(ApiKey::Metadata, 12, 5, &body);
    wire.truncate(wire.len() - 3);
    assert!(rewrite_brokers(&wire, ApiKey::Metadata as i16, 12, &weir).is_err());
}
