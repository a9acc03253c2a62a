//! A Kafka load generator for `bench/kafka.sh`: one connection, a window of
//! pipelined requests, every response timed. Written on the `kafka-protocol`
//! crate so that the same client drives the broker directly and through weir.
//!
//!   kafka_load ADDR TOPIC produce|fetch SECONDS [RECORDS_PER_BATCH] [RECORD_BYTES] [WINDOW]
//!
//! Prints one JSON line: requests, records, bytes, seconds, p50_us, p99_us.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 11;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (addr, topic, mode) = (arg(0, "127.0.0.1:9092"), arg(1, "bench"), arg(2, "produce"));
    let seconds: f64 = arg(3, "5").parse().unwrap();
    let batch: usize = arg(4, "100").parse().unwrap();
    let record_bytes: usize = arg(5, "1024").parse().unwrap();
    let window: usize = arg(6, "8").parse().unwrap();

    let topic_name = TopicName(StrBytes::from_string(topic));
    let (key, version, body, records_per_request) = match mode.as_str() {
        "produce" => {
            let value = Bytes::from(vec![b'x'; record_bytes]);
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            let records: Vec<Record> = (0..batch)
                .map(|i| Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: 0,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: i as i64,
                    // kafka-protocol starts a new batch wherever offset minus
                    // sequence changes: this keeps the request one batch (base
                    // sequence -1, no producer id), which Apache Kafka requires
                    // of Produce v3+; several batches (sequence -1 on every
                    // record) are refused with INVALID_RECORD, and tansu took them
                    sequence: i as i32 - 1,
                    // now: Apache Kafka 4 refuses a batch stamped at the epoch
                    timestamp: now_ms,
                    key: None,
                    value: Some(value.clone()),
                    headers: Default::default(),
                })
                .collect();
            let mut encoded = BytesMut::new();
            let options = RecordEncodeOptions { version: 2, compression: Compression::None };
            RecordBatchEncoder::encode(&mut encoded, &records, &options).unwrap();
            let request = ProduceRequest::default().with_acks(1).with_timeout_ms(30_000).with_topic_data(vec![
                TopicProduceData::default().with_name(topic_name).with_partition_data(vec![
                    PartitionProduceData::default().with_index(0).with_records(Some(encoded.freeze())),
                ]),
            ]);
            (ApiKey::Produce, PRODUCE_VERSION, RequestKind::Produce(request), batch)
        }
        "fetch" => {
            // re-read the partition from the start each time: large responses
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default().with_topic(topic_name).with_partitions(vec![
                    FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1 << 20),
                ])]);
            (ApiKey::Fetch, FETCH_VERSION, RequestKind::Fetch(request), 0)
        }
        other => panic!("mode {other}: produce or fetch"),
    };

    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    let mut next_id = 1i32;
    let frame = |id: i32| {
        let mut out = BytesMut::new();
        out.extend_from_slice(&[0; 4]);
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("kafka-load")))
            .encode(&mut out, key.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        let len = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    };

    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut in_flight: VecDeque<(i32, Instant)> = VecDeque::new();
    let mut latencies: Vec<u64> = Vec::new();
    let (mut records, mut bytes) = (0u64, 0u64);
    loop {
        while in_flight.len() < window && Instant::now() < deadline {
            let id = next_id;
            next_id += 1;
            stream.write_all(&frame(id)).unwrap();
            in_flight.push_back((id, Instant::now()));
        }
        let Some((id, sent)) = in_flight.pop_front() else { break };
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let mut response = vec![0u8; i32::from_be_bytes(len) as usize];
        stream.read_exact(&mut response).unwrap();
        latencies.push(sent.elapsed().as_micros() as u64);
        let mut buf = Bytes::from(response);
        let header = ResponseHeader::decode(&mut buf, key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, id, "responses in order");
        match ResponseKind::decode(key, &mut buf, version).unwrap() {
            ResponseKind::Produce(r) => {
                let partition = &r.responses[0].partition_responses[0];
                let code = partition.error_code;
                assert_eq!(
                    code, 0,
                    "produce failed with error {code}: {:?} {:?}",
                    partition.error_message, partition.record_errors
                );
                records += records_per_request as u64;
                bytes += (records_per_request * record_bytes) as u64;
            }
            ResponseKind::Fetch(r) => {
                let partition = &r.responses[0].partitions[0];
                assert_eq!(partition.error_code, 0, "fetch failed");
                bytes += partition.records.as_ref().map_or(0, |b| b.len() as u64);
            }
            _ => unreachable!(),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\":{},\"records\":{records},\"bytes\":{bytes},\"seconds\":{elapsed:.3},\"p50_us\":{},\"p99_us\":{}}}",
        latencies.len(),
        pct(0.50),
        pct(0.99)
    );
}
