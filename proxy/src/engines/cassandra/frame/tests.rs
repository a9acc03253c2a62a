use super::*;

fn request(version: u8, stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut f = response(version, stream, opcode, body);
    f[0] = version;
    f
}

fn long_string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as i32).to_be_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

#[test]
fn crc24_and_crc32_match_the_protocols_reference_values() {
    // Values computed with the cassandra-driver's segment.py
    // (compute_crc24(0x20000 | 5, 3), zlib.crc32(b"hello", zlib.crc32(b"\xfa\x2d\x55\xca")))
    assert_eq!(crc24(0x20005), 0x9a_99_19);
    assert_eq!(crc32(b"hello"), 0xb6_0e_80_74);
}

#[test]
fn v5_segments_round_trip_self_contained_and_split() {
    let small = request(5, 1, OP_OPTIONS, b"");
    let big = request(5, 2, OP_QUERY, &long_string(&"x".repeat(300_000)));
    let mut framer = Framer::default();
    framer.push(true, &small);
    framer.push(true, &small);
    framer.push(true, &big);
    let wire = framer.bytes().to_vec();
    // one self-contained segment for the two small frames, three pieces for the big one
    let mut de = Deframer::default();
    // byte by byte: no frame before its last byte
    let mut frames = Vec::new();
    for b in &wire {
        de.raw.extend_from_slice(&[*b]);
        while let Some(f) = de.next(true, false, MAX_BODY).unwrap() {
            frames.push(f.to_vec());
        }
    }
    assert_eq!(frames, [small.clone(), small, big]);
    assert_eq!(de.partial(), 0);
}

#[test]
fn a_corrupt_segment_is_refused() {
    let mut framer = Framer::default();
    framer.push(true, &request(5, 1, OP_OPTIONS, b""));
    let mut wire = framer.bytes().to_vec();
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let mut de = Deframer::default();
    de.raw.extend_from_slice(&wire);
    assert_eq!(de.next(true, false, MAX_BODY).unwrap_err().0, "v5 segment payload CRC32 mismatch");
    wire[0] ^= 1;
    let mut de = Deframer::default();
    de.raw.extend_from_slice(&wire);
    assert!(de.next(true, false, MAX_BODY).unwrap_err().0.contains("CRC24"));
}

#[test]
fn legacy_frames_are_checked_for_direction_and_size() {
    let mut de = Deframer::default();
    de.raw.extend_from_slice(&response(4, 0, OP_READY, b""));
    assert!(de.next(false, false, MAX_BODY).unwrap_err().0.contains("expected a request"));
    let mut de = Deframer::default();
    de.raw.extend_from_slice(&request(4, 0, OP_QUERY, &[0; 64]));
    assert!(de.next(false, false, 10).unwrap_err().0.contains("over the 10-byte limit"));
    let mut de = Deframer::default();
    de.raw.extend_from_slice(&request(4, 0, OP_QUERY, &[0; 64])[..20]);
    assert_eq!(de.next(false, false, MAX_BODY).unwrap(), None);
}

#[test]
fn request_bodies_give_queries_ids_batches_and_v5_keyspaces() {
    let mut q = long_string("SELECT * FROM t");
    // v5: consistency, flags = values | page size | with keyspace, one value, page size, keyspace
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0x85, 0, 1, 0, 0, 0, 2, 0xab, 0xcd, 0, 0, 0, 100, 0, 2, b'k', b's']);
    assert_eq!(
        request_body(5, 0, OP_QUERY, &q).unwrap(),
        RequestBody::Query { query: "SELECT * FROM t", keyspace: Some("ks") }
    );
    // no flags, no keyspace
    let mut use_a = long_string("USE a");
    use_a.extend_from_slice(&[0, 1, 0]);
    assert_eq!(request_body(4, 0, OP_QUERY, &use_a).unwrap(), RequestBody::Query { query: "USE a", keyspace: None });
    assert_eq!(request_body(4, 0, OP_EXECUTE, &[0, 2, 7, 8, 0, 1, 0]).unwrap(), RequestBody::Execute { id: &[7, 8] });
    let mut b = vec![0, 0, 2];
    b.push(0);
    b.extend(long_string("INSERT INTO a.t (k) VALUES (?)"));
    b.extend([0, 1, 0, 0, 0, 1, 9]);
    b.extend([1, 0, 1, 0xee, 0, 0]);
    b.extend([0, 1, 0x20]);
    b.extend(5u64.to_be_bytes());
    assert_eq!(
        request_body(4, 0, OP_BATCH, &b).unwrap(),
        RequestBody::Batch {
            entries: vec![BatchEntry::Query("INSERT INTO a.t (k) VALUES (?)"), BatchEntry::Prepared(&[0xee])],
            keyspace: None
        }
    );
    let startup = [
        0, 2, 0, 11, b'C', b'Q', b'L', b'_', b'V', b'E', b'R', b'S', b'I', b'O', b'N', 0, 5, b'3', b'.', b'0', b'.',
        b'0',
    ]
    .into_iter()
    .chain([0, 11].into_iter().chain(*b"COMPRESSION").chain([0, 3]).chain(*b"lz4"))
    .collect::<Vec<u8>>();
    assert_eq!(request_body(4, 0, OP_STARTUP, &startup).unwrap(), RequestBody::Startup { compression: Some("lz4") });
}

#[test]
fn truncated_or_odd_request_bodies_are_errors_not_panics() {
    let q = long_string("SELECT * FROM t");
    for cut in 0..q.len() {
        assert!(request_body(4, 0, OP_QUERY, &q[..cut]).is_err(), "cut at {cut}");
    }
    assert!(request_body(4, 0, OP_QUERY, &[0xff, 0xff, 0xff, 0xff]).unwrap_err().0.contains("negative"));
    assert!(request_body(4, 0, OP_RESULT, b"").unwrap_err().0.contains("not a request"));
    assert!(request_body(4, FLAG_COMPRESSED, OP_QUERY, &q).unwrap_err().0.contains("compressed"));
    assert!(request_body(4, 0, OP_BATCH, &[0, 0, 1, 7]).unwrap_err().0.contains("batch entry kind 7"));
}

#[test]
fn supported_offers_no_compression_and_keeps_the_rest() {
    let mut body = vec![0, 2];
    for (k, vs) in [("CQL_VERSION", &["3.4.5"][..]), ("COMPRESSION", &["lz4", "snappy"][..])] {
        body.extend((k.len() as u16).to_be_bytes());
        body.extend(k.as_bytes());
        body.extend((vs.len() as u16).to_be_bytes());
        for v in vs {
            body.extend((v.len() as u16).to_be_bytes());
            body.extend(v.as_bytes());
        }
    }
    let frame = response(4, 3, OP_SUPPORTED, &body);
    let out = supported_without_compression(&frame).unwrap().unwrap();
    let options = Reader(&out[HEADER..]).string_multimap().unwrap();
    assert_eq!(options, [("CQL_VERSION", vec!["3.4.5"]), ("COMPRESSION", vec![])]);
    assert_eq!(Header::parse(&out).stream, 3);
}

#[test]
fn responses_teach_keyspaces_and_prepared_ids_past_a_tracing_prefix() {
    let mut body = vec![0; 16]; // tracing id
    body.extend([0, 0, 0, 3, 0, 3, b'a', b'p', b'p']);
    assert_eq!(response_body(0x02, OP_RESULT, &body).unwrap(), ResponseBody::SetKeyspace("app"));
    assert_eq!(
        response_body(0, OP_RESULT, &[0, 0, 0, 4, 0, 2, 1, 2, 0, 0]).unwrap(),
        ResponseBody::Prepared { id: &[1, 2] }
    );
    assert_eq!(response_body(0, OP_ERROR, &[0, 0, 0x22, 0, 0, 0]).unwrap(), ResponseBody::Error { code: 0x2200 });
}

#[test]
fn query_options_are_read_as_cassandra_reads_them_in_every_version() {
    // v3 and v4: a [byte] of flags, and Cassandra 4/5 honour 0x80 (with keyspace) there too
    for version in [3, 4] {
        let mut q = long_string("SELECT * FROM t");
        // values with names | page size | paging state | serial | timestamp | keyspace
        q.extend_from_slice(&[0, 1, 0xfd, 0, 1, 0, 1, b'v', 0, 0, 0, 1, 7]);
        q.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 2, 1, 2, 0, 8]);
        q.extend(5u64.to_be_bytes());
        q.extend_from_slice(&[0, 5, b'o', b't', b'h', b'e', b'r']);
        assert_eq!(
            request_body(version, 0, OP_QUERY, &q).unwrap(),
            RequestBody::Query { query: "SELECT * FROM t", keyspace: Some("other") },
            "v{version}"
        );
        // a batch's options are the same codec (values included)
        let mut b = vec![1, 0, 1, 0];
        b.extend(long_string("INSERT INTO t (k) VALUES (1)"));
        b.extend_from_slice(&[0, 0, 0, 1, 0x81, 0, 0, 0, 2, b'k', b's']);
        assert_eq!(
            request_body(version, 0, OP_BATCH, &b).unwrap(),
            RequestBody::Batch {
                entries: vec![BatchEntry::Query("INSERT INTO t (k) VALUES (1)")],
                keyspace: Some("ks")
            },
        );
    }
    // v5: an [int] of flags; now_in_seconds (0x100) comes after the keyspace
    let mut q = long_string("SELECT * FROM t");
    q.extend_from_slice(&[0, 1, 0, 0, 0x01, 0x80, 0, 2, b'k', b's', 0, 0, 0, 42]);
    assert_eq!(
        request_body(5, 0, OP_QUERY, &q).unwrap(),
        RequestBody::Query { query: "SELECT * FROM t", keyspace: Some("ks") }
    );
    // a flag Cassandra 5.0 does not define: weir cannot know what follows it
    let mut q = long_string("SELECT * FROM t");
    q.extend_from_slice(&[0, 1, 0, 0, 0x02, 0x80, 0, 2, b'k', b's', 0, 0, 0, 42]);
    assert!(request_body(5, 0, OP_QUERY, &q).unwrap_err().0.contains("0x200"));
    // v5 PREPARE: flags always, 0x01 with keyspace
    let mut p = long_string("SELECT * FROM t");
    p.extend_from_slice(&[0, 0, 0, 1, 0, 2, b'k', b's']);
    assert_eq!(
        request_body(5, 0, OP_PREPARE, &p).unwrap(),
        RequestBody::Prepare { query: "SELECT * FROM t", keyspace: Some("ks") }
    );
    assert!(request_body(5, 0, OP_PREPARE, &long_string("SELECT * FROM t")).is_err());
    assert_eq!(
        request_body(4, 0, OP_PREPARE, &long_string("SELECT * FROM t")).unwrap(),
        RequestBody::Prepare { query: "SELECT * FROM t", keyspace: None }
    );
    // a keyspace flag with the keyspace missing is broken, not ignored
    let mut q = long_string("SELECT * FROM t");
    q.extend_from_slice(&[0, 1, 0x80]);
    assert!(request_body(4, 0, OP_QUERY, &q).is_err());
}
