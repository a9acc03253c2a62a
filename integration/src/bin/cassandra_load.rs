//! A CQL load generator for `bench/cassandra.sh` that is not the bottleneck:
//! the Python driver tops out near 3,500 operations a second on one core,
//! below what the node and weir can do. One connection, native protocol
//! v4, IN_FLIGHT requests outstanding on their own stream ids: a 50/50 mix of
//! prepared INSERTs and SELECTs by key on `bench.kv` (the table
//! `cassandra_load.py setup` makes), for SECONDS. Prints one JSON line in
//! cassandra_load.py's shape: ops, seconds, p50/p99 latency, errors.
//!
//!   cassandra_load ADDR SECONDS IN_FLIGHT [VALUE_BYTES]

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const VERSION: u8 = 0x04;
const OP_STARTUP: u8 = 0x01;
const OP_READY: u8 = 0x02;
const OP_RESULT: u8 = 0x08;
const OP_PREPARE: u8 = 0x09;
const OP_EXECUTE: u8 = 0x0A;
/// Consistency ONE.
const ONE: u16 = 0x0001;
/// Query flags: values follow; the node may skip result metadata.
const VALUES_SKIP_METADATA: u8 = 0x01 | 0x02;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, seconds, in_flight, value_bytes) = match &args[1..] {
        [a, s, n] => (a, s, n, "100"),
        [a, s, n, v] => (a, s, n, v.as_str()),
        _ => {
            eprintln!("usage: cassandra_load ADDR SECONDS IN_FLIGHT [VALUE_BYTES]");
            std::process::exit(2);
        }
    };
    let duration = Duration::from_secs_f64(seconds.parse().expect("SECONDS"));
    let in_flight: i16 = in_flight.parse().expect("IN_FLIGHT (1..=32767)");
    let value = text_value(value_bytes.parse().expect("VALUE_BYTES"));

    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::with_capacity(64 << 10, stream.try_clone().unwrap());
    let mut writer = BufWriter::with_capacity(64 << 10, stream);

    // handshake and statements, one at a time on stream 0
    let startup = string_map(&[("CQL_VERSION", "3.0.0")]);
    let (op, body) = call(&mut writer, &mut reader, OP_STARTUP, &startup);
    assert_eq!(op, OP_READY, "STARTUP answered with opcode {op:#x}: {}", error_text(&body));
    let insert = prepare(&mut writer, &mut reader, "INSERT INTO bench.kv (k, v) VALUES (?, ?)");
    let select = prepare(&mut writer, &mut reader, "SELECT v FROM bench.kv WHERE k = ?");

    // stream ids free to send on; the reader hands each back with its answer
    let (free_tx, free) = mpsc::channel::<i16>();
    for id in 1..=in_flight {
        free_tx.send(id).unwrap();
    }
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..=in_flight).map(|_| AtomicU64::new(0)).collect());
    let epoch = Instant::now();
    let results = Arc::new(Mutex::new((Vec::<u64>::new(), 0u64)));
    {
        let (sent_at, results) = (sent_at.clone(), results.clone());
        std::thread::spawn(move || {
            while let Some((id, op, _body)) = read_frame(&mut reader) {
                let latency = epoch.elapsed().as_micros() as u64 - sent_at[id as usize].load(Ordering::Relaxed);
                {
                    let mut r = results.lock().unwrap();
                    r.0.push(latency);
                    r.1 += u64::from(op != OP_RESULT);
                }
                if free_tx.send(id).is_err() {
                    break;
                }
            }
        });
    }

    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        // wait for a free stream; send everything queued before blocking
        let id = match free.try_recv() {
            Ok(id) => id,
            Err(_) => {
                writer.flush().unwrap();
                free.recv().unwrap()
            }
        };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = ((rng % 10_000) as i32).to_be_bytes();
        let body = if sent.is_multiple_of(2) {
            execute(&insert, &[&key, value.as_bytes()])
        } else {
            execute(&select, &[&key])
        };
        sent_at[id as usize].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        write_frame(&mut writer, id, OP_EXECUTE, &body);
        sent += 1;
    }
    writer.flush().unwrap();
    // every answer in: all stream ids back
    for _ in 0..in_flight {
        free.recv_timeout(Duration::from_secs(30)).expect("answers outstanding after 30 s");
    }
    let seconds = started.elapsed().as_secs_f64();
    let (mut latencies, errors) = std::mem::take(&mut *results.lock().unwrap());
    latencies.sort_unstable();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied();
    println!(
        "{{\"ops\": {}, \"seconds\": {seconds:.3}, \"p50_us\": {}, \"p99_us\": {}, \"errors\": {errors}, \"sent\": {sent}}}",
        latencies.len(),
        pct(0.50).unwrap_or(0),
        pct(0.99).unwrap_or(0)
    );
}

/// Text that compresses as JSON or logs do (as cassandra_load.py's values).
fn text_value(bytes: usize) -> String {
    let words = ["order", "customer", "status", "shipped", "2026-12-06", "warehouse", "42", "priority"];
    let mut s = String::new();
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(words[i % words.len()]);
        s.push(' ');
        i += 7;
    }
    s.truncate(bytes);
    s
}

fn prepare(writer: &mut BufWriter<TcpStream>, reader: &mut BufReader<TcpStream>, query: &str) -> Vec<u8> {
    let mut body = (query.len() as i32).to_be_bytes().to_vec();
    body.extend_from_slice(query.as_bytes());
    let (op, body) = call(writer, reader, OP_PREPARE, &body);
    assert_eq!(op, OP_RESULT, "PREPARE {query:?}: {}", error_text(&body));
    // RESULT kind 4 (Prepared), then the id as [short bytes]
    assert_eq!(&body[..4], &4i32.to_be_bytes(), "PREPARE {query:?} answered with result kind {:?}", &body[..4]);
    let len = u16::from_be_bytes([body[4], body[5]]) as usize;
    body[6..6 + len].to_vec()
}

fn execute(id: &[u8], values: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + values.iter().map(|v| v.len()).sum::<usize>());
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    body.extend_from_slice(&ONE.to_be_bytes());
    body.push(VALUES_SKIP_METADATA);
    body.extend_from_slice(&(values.len() as u16).to_be_bytes());
    for v in values {
        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
        body.extend_from_slice(v);
    }
    body
}

fn string_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (pairs.len() as u16).to_be_bytes().to_vec();
    for s in pairs.iter().flat_map(|(k, v)| [k, v]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

/// One request on stream 0 and its answer.
fn call(
    writer: &mut BufWriter<TcpStream>,
    reader: &mut BufReader<TcpStream>,
    opcode: u8,
    body: &[u8],
) -> (u8, Vec<u8>) {
    write_frame(writer, 0, opcode, body);
    writer.flush().unwrap();
    let (id, op, body) = read_frame(reader).expect("the node closed the connection");
    assert_eq!(id, 0, "an answer on stream {id}, asked on 0");
    (op, body)
}

fn write_frame(writer: &mut impl Write, stream: i16, opcode: u8, body: &[u8]) {
    let mut head = [0u8; 9];
    head[0] = VERSION;
    head[2..4].copy_from_slice(&stream.to_be_bytes());
    head[4] = opcode;
    head[5..9].copy_from_slice(&(body.len() as i32).to_be_bytes());
    writer.write_all(&head).unwrap();
    writer.write_all(body).unwrap();
}

/// `(stream, opcode, body)`; `None` at the end of the connection.
fn read_frame(reader: &mut impl Read) -> Option<(i16, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).ok()?;
    assert_eq!(head[0], 0x80 | VERSION, "an answer of protocol version {:#x}", head[0]);
    let len = i32::from_be_bytes(head[5..9].try_into().unwrap());
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).ok()?;
    Some((i16::from_be_bytes([head[2], head[3]]), head[4], body))
}

/// An ERROR body's message, for assertions.
fn error_text(body: &[u8]) -> String {
    if body.len() < 6 {
        return format!("{body:?}");
    }
    let len = u16::from_be_bytes([body[4], body[5]]) as usize;
    String::from_utf8_lossy(&body[6..(6 + len).min(body.len())]).into_owned()
}
