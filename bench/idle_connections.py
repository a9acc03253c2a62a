"""Idle keep-alive connections: what each costs a proxy in resident memory.

Usage: idle_connections.py PID PORT COUNT [PATH]

Reads the RSS of PID (and its children: nginx's workers), opens COUNT
HTTP/1.1 connections to 127.0.0.1:PORT, sends one request on each and reads
its answer, leaves them all open and idle, waits for the RSS to settle,
reads it again and prints one JSON object: the RSS before and after (KiB)
and the increase per connection (bytes). bench/idle.sh runs it per proxy.
"""

import asyncio
import json
import os
import sys
import time

pid, port, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
path = sys.argv[4] if len(sys.argv) > 4 else "/public/index.html"


def rss_kib(pid):
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except FileNotFoundError:
        pass
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def one(request):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"answered {head[:40]!r}")
    return reader, writer


async def main():
    before = rss_kib(pid)
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    held = []
    # a few hundred at a time: the proxy's accept queue is not under test
    for start in range(0, count, 200):
        held += await asyncio.gather(*(one(request) for _ in range(min(200, count - start))))
    # let allocators settle (deferred frees, purges)
    time.sleep(2)
    await asyncio.sleep(0)
    after = rss_kib(pid)
    print(json.dumps({"connections": len(held), "rss_before_kib": before, "rss_after_kib": after,
                      "bytes_per_connection": round((after - before) * 1024 / len(held))}))
    for _, writer in held:
        writer.close()


os.sched_setaffinity(0, {0})
asyncio.run(main())
