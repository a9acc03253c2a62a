"""Keep-alive HTTP/1.1 clients that go quiet between requests, for weir's tests.

Usage: keepalive_client.py HOST:PORT SOURCE_IP COUNT plain|tls PATH WAIT_FILE

Opens COUNT connections from SOURCE_IP (TLS offering ALPN http/1.1 with
`tls`), sends one GET for PATH on each and reads its answer, prints
"quiet" and then waits, every connection open and silent, until WAIT_FILE
exists (30 s at most). Then sends two pipelined GETs on each connection,
reads both answers, and prints one JSON object: the statuses of the first
round, and those of the second round per connection (0 where the
connection had ended).
"""

import json
import os
import socket
import ssl
import sys
import time

host, port = sys.argv[1].rsplit(":", 1)
source, count, mode, path, wait_file = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
request = f"GET {path} HTTP/1.1\r\nHost: web\r\n\r\n".encode()


def connect():
    raw = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
    if mode == "plain":
        return raw
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context.wrap_socket(raw, server_hostname="localhost")


class Answers:
    """Reads answers with Content-Length bodies off one connection."""

    def __init__(self, conn):
        self.conn, self.buffered = conn, b""

    def status(self):
        try:
            while b"\r\n\r\n" not in self.buffered:
                chunk = self.conn.recv(65536)
                if not chunk:
                    return 0
                self.buffered += chunk
            head, _, rest = self.buffered.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = next(int(l.split(b":")[1]) for l in lines if l.lower().startswith(b"content-length:"))
            while len(rest) < length:
                chunk = self.conn.recv(65536)
                if not chunk:
                    return 0
                rest += chunk
            self.buffered = rest[length:]
            return int(lines[0].split()[1])
        except (OSError, StopIteration):
            return 0


connections = [connect() for _ in range(count)]
answers = [Answers(c) for c in connections]
first = []
for conn, reader in zip(connections, answers):
    conn.sendall(request)
    first.append(reader.status())
print("quiet", flush=True)

deadline = time.monotonic() + 30
while not os.path.exists(wait_file) and time.monotonic() < deadline:
    time.sleep(0.05)

second = []
for conn, reader in zip(connections, answers):
    try:
        conn.sendall(request + request)
    except OSError:
        second.append([0, 0])
        continue
    second.append([reader.status(), reader.status()])
print(json.dumps({"first": first, "second": second}), flush=True)
