"""Load for bench/cassandra.sh: the cassandra-driver (its full Session) runs a
50/50 mix of prepared INSERTs and SELECTs by key with CONCURRENCY requests in
flight, for SECONDS, and prints {"ops", "seconds", "p50_us", "p99_us", "errors"}.

usage: cassandra_load.py setup HOST:PORT
       cassandra_load.py run HOST:PORT SECONDS CONCURRENCY [lz4]

With `lz4` the connection is compressed (the driver's `lz4` module; weir
declines compression, so this is for direct runs: what compression would buy).
"""

import json
import os
import random
import socket
import sys
import threading
import time

from cassandra.cluster import Cluster


def session_for(address, compression=False):
    host, port = address.rsplit(":", 1)
    # TCP_NODELAY, as Cassandra's Java driver sets by default: without it a
    # request of a few KiB waits ~40 ms for a delayed ACK (Nagle)
    cluster = Cluster([host], port=int(port), protocol_version=5, schema_metadata_enabled=False,
                      token_metadata_enabled=False, connect_timeout=10, control_connection_timeout=10,
                      compression=compression, sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return cluster, cluster.connect()


def main():
    command, address = sys.argv[1], sys.argv[2]
    compression = "lz4" if sys.argv[5:6] == ["lz4"] else False
    cluster, s = session_for(address, compression)
    if command == "setup":
        s.execute("CREATE KEYSPACE IF NOT EXISTS bench WITH replication = "
                  "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        s.execute("CREATE TABLE IF NOT EXISTS bench.kv (k int PRIMARY KEY, v text)")
        cluster.shutdown()
        return
    seconds, concurrency = float(sys.argv[3]), int(sys.argv[4])
    insert = s.prepare("INSERT INTO bench.kv (k, v) VALUES (?, ?)")
    select = s.prepare("SELECT v FROM bench.kv WHERE k = ?")
    # VALUE_BYTES: the size of each written value (100 by default); text
    # that compresses as JSON or logs do, not as random bytes
    words = ("order", "customer", "status", "shipped", "2026-12-06", "warehouse", "42", "priority")
    size = int(os.environ.get("VALUE_BYTES", "100"))
    value = " ".join(random.choice(words) for _ in range(size))[:size]
    latencies, errors = [], [0]
    lock = threading.Lock()
    slots = threading.Semaphore(concurrency)
    deadline = time.time() + seconds
    started = time.time()

    def done(_result, sent):
        with lock:
            latencies.append((time.perf_counter() - sent) * 1e6)
        slots.release()

    def failed(_error, sent):
        with lock:
            errors[0] += 1
        slots.release()

    i = 0
    while time.time() < deadline:
        slots.acquire()
        key = random.randrange(10000)
        sent = time.perf_counter()
        future = s.execute_async(insert, (key, value)) if i % 2 == 0 else s.execute_async(select, (key,))
        future.add_callbacks(done, failed, callback_args=(sent,), errback_args=(sent,))
        i += 1
    for _ in range(concurrency):
        slots.acquire()
    elapsed = time.time() - started
    latencies.sort()
    pct = lambda p: latencies[min(int(len(latencies) * p), len(latencies) - 1)] if latencies else 0
    print(json.dumps({"ops": len(latencies), "seconds": elapsed, "p50_us": pct(0.5), "p99_us": pct(0.99),
                      "errors": errors[0]}))
    cluster.shutdown()


if __name__ == "__main__":
    main()
