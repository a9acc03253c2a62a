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
        other => panic!("no default request for {other:?}"),
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
