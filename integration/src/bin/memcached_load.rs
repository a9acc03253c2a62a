//! A memtier-style memcached load client for `bench/memcached.sh`: CONNS
//! connections, each sending PIPELINE requests at a time (half `set`, half
//! `get` of keys under `bench/`, VALUE bytes each) for SECONDS, timing every
//! batch. Prints one JSON line: requests, seconds, p50/p99 batch latency.
//!
//!   memcached_load ADDR CONNS SECONDS VALUE PIPELINE

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, conns, seconds, value, pipeline] = &args[..] else {
        eprintln!("usage: memcached_load ADDR CONNS SECONDS VALUE PIPELINE");
        std::process::exit(2);
    };
    let (conns, value, pipeline): (usize, usize, usize) =
        (conns.parse().unwrap(), value.parse().unwrap(), pipeline.parse().unwrap());
    let duration = Duration::from_secs_f64(seconds.parse().unwrap());
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || run(&addr, c, duration, value, pipeline))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut requests = 0;
    for w in workers {
        let (n, mut l) = w.join().unwrap();
        requests += n;
        latencies.append(&mut l);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    println!(
        "{{\"requests\": {requests}, \"seconds\": {seconds:.3}, \"p50_us\": {}, \"p99_us\": {}}}",
        pct(0.50).copied().unwrap_or(0),
        pct(0.99).copied().unwrap_or(0)
    );
}

/// `(requests, batch latencies in µs)` of one connection.
fn run(addr: &str, conn: usize, duration: Duration, value: usize, pipeline: usize) -> (usize, Vec<u64>) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let payload = vec![b'x'; value];
    let (mut requests, mut latencies, mut i) = (0, Vec::new(), 0usize);
    let deadline = Instant::now() + duration;
    let mut line = String::new();
    let mut data = vec![0u8; value + 2];
    while Instant::now() < deadline {
        let mut batch = Vec::new();
        for j in 0..pipeline {
            let key = format!("bench/{conn}-{}", (i + j) % 1000);
            if (i + j) % 2 == 0 {
                batch.extend_from_slice(format!("set {key} 0 0 {value}\r\n").as_bytes());
                batch.extend_from_slice(&payload);
                batch.extend_from_slice(b"\r\n");
            } else {
                batch.extend_from_slice(format!("get {key}\r\n").as_bytes());
            }
        }
        let sent = Instant::now();
        writer.write_all(&batch).unwrap();
        for j in 0..pipeline {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if (i + j) % 2 == 0 {
                assert_eq!(line, "STORED\r\n", "set answered {line:?}");
                continue;
            }
            // VALUE ... then the data, or END at once for a miss
            while line.starts_with("VALUE ") {
                reader.read_exact(&mut data).unwrap();
                line.clear();
                reader.read_line(&mut line).unwrap();
            }
            assert_eq!(line, "END\r\n", "get answered {line:?}");
        }
        latencies.push(sent.elapsed().as_micros() as u64);
        requests += pipeline;
        i += pipeline;
    }
    (requests, latencies)
}
