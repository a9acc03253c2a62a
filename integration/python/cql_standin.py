"""A STAND-IN CQL server for weir's Cassandra tests. It is not Cassandra:
no Cassandra server can be installed on this machine. It speaks the native
protocol (v3, v4, and v5 with its checksummed segments) using the
cassandra-driver's own protocol helpers (frame header, notations, segment
codec) and answers just enough for the tests:

  OPTIONS   -> SUPPORTED, advertising lz4 and snappy (weir must hide them)
  STARTUP   -> READY, or AUTHENTICATE with --auth (AUTH_RESPONSE -> AUTH_SUCCESS)
  REGISTER  -> READY
  QUERY     -> "USE ks": RESULT SetKeyspace; a query containing "fail:":
               an Invalid error; system.local: one row describing this node,
               system.peers: none, system.peers_v2: Invalid (as Cassandra 3),
               so the driver's Cluster can connect; else RESULT Rows, one row
               (query, keyspace)
  PREPARE   -> RESULT Prepared, id = md5(keyspace + query) as Cassandra does
  EXECUTE   -> RESULT Rows (the prepared query, keyspace), or Unprepared
  BATCH     -> RESULT Void

Every request it reads is appended to LOG as a JSON line
({"op": ..., "query"/"id"/"entries": ...}), so a test can tell what never
reached the server.

usage: cql_standin.py HOST:PORT LOG [--auth]
"""

import hashlib
import io
import json
import socketserver
import struct
import sys
import threading

from cassandra.protocol import (
    ProtocolHandler,
    read_binary_string,
    read_byte,
    read_int,
    read_longstring,
    read_short,
    read_stringmap,
    read_value,
    write_int,
    write_short,
    write_string,
    write_stringmultimap,
    write_value,
)
from cassandra.segment import CRC24_LENGTH, SegmentCodec

VARCHAR = 0x000D
UUID = 0x000C
INET = 0x0010
SET = 0x0022
HOST_ID = bytes.fromhex("5a1e5e0d000040008000000000000001")
ADDR, LOG = sys.argv[1], sys.argv[2]
AUTH = "--auth" in sys.argv[3:]
log_lock = threading.Lock()
# prepared statements are per server, shared by connections (as Cassandra's)
prepared = {}


def log(**entry):
    with log_lock, open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def echo_metadata(f):
    """Result metadata of the two echo columns (query, keyspace)."""
    write_int(f, 0x0001)  # global table spec
    write_int(f, 2)
    write_string(f, "standin")
    write_string(f, "echo")
    for name in ("query", "keyspace"):
        write_string(f, name)
        write_short(f, VARCHAR)


def rows_body(keyspace, values):
    f = io.BytesIO()
    write_int(f, 2)  # Rows
    echo_metadata(f)
    write_int(f, 1)
    for v in values:
        write_value(f, v.encode() if v is not None else None)
    return f.getvalue()


def typed_rows(table, columns, rows):
    """RESULT Rows of system.TABLE: columns [(name, type)], values already encoded."""
    f = io.BytesIO()
    write_int(f, 2)
    write_int(f, 0x0001)
    write_int(f, len(columns))
    write_string(f, "system")
    write_string(f, table)
    for name, kind in columns:
        write_string(f, name)
        if kind == "set<text>":
            write_short(f, SET)
            write_short(f, VARCHAR)
        else:
            write_short(f, {"text": VARCHAR, "uuid": UUID, "inet": INET}[kind])
    write_int(f, len(rows))
    for row in rows:
        for value in row:
            write_value(f, value)
    return f.getvalue()


def text_set(items):
    out = struct.pack(">i", len(items))
    for item in items:
        out += struct.pack(">i", len(item)) + item.encode()
    return out


LOCAL_COLUMNS = [
    ("key", "text"), ("cluster_name", "text"), ("data_center", "text"), ("rack", "text"),
    ("partitioner", "text"), ("release_version", "text"), ("rpc_address", "inet"),
    ("broadcast_address", "inet"), ("listen_address", "inet"), ("host_id", "uuid"),
    ("schema_version", "uuid"), ("tokens", "set<text>"),
]
PEERS_COLUMNS = [
    ("peer", "inet"), ("data_center", "text"), ("rack", "text"), ("rpc_address", "inet"),
    ("host_id", "uuid"), ("release_version", "text"), ("schema_version", "uuid"), ("tokens", "set<text>"),
]


def system_table(query):
    """The body answering a driver's system-table query, or None."""
    loopback = bytes([127, 0, 0, 1])
    if "system.peers_v2" in query:
        return error_body(0x2200, "unconfigured table peers_v2")
    if "system.peers" in query:
        return typed_rows("peers", PEERS_COLUMNS, [])
    if "system.local" in query:
        row = [b"local", b"standin", b"dc1", b"r1", b"org.apache.cassandra.dht.Murmur3Partitioner", b"4.0.11",
               loopback, loopback, loopback, HOST_ID, HOST_ID, text_set(["0"])]
        return typed_rows("local", LOCAL_COLUMNS, [row])
    return None


def prepared_body(version, query_id):
    f = io.BytesIO()
    write_int(f, 4)  # Prepared
    write_string(f, query_id)
    if version >= 5:
        write_string(f, query_id)  # result metadata id
    write_int(f, 0)  # bind variables: no flags, none
    write_int(f, 0)
    if version >= 4:
        write_int(f, 0)  # partition key indexes
    echo_metadata(f)
    return f.getvalue()


def error_body(code, message, extra=b""):
    f = io.BytesIO()
    write_int(f, code)
    write_string(f, message)
    return f.getvalue() + extra


class Connection(socketserver.BaseRequestHandler):
    def setup(self):
        self.raw = b""
        self.envelopes = b""
        self.segments = False
        self.codec = SegmentCodec()
        self.keyspace = None

    def send(self, version, stream, opcode, body):
        f = io.BytesIO()
        ProtocolHandler._write_header(f, 0x80 | version, 0, stream, opcode, len(body))
        frame = f.getvalue() + body
        if self.segments:
            out = io.BytesIO()
            self.codec.encode(out, frame)
            frame = out.getvalue()
        self.request.sendall(frame)

    def frames(self):
        """Whole frames from what was read (through segments in v5)."""
        if self.segments:
            while len(self.raw) >= self.codec.header_length_with_crc:
                buf = io.BytesIO(self.raw)
                header = self.codec.decode_header(buf)
                if len(self.raw) < header.segment_length:
                    break
                segment = self.codec.decode(buf, header)
                self.raw = self.raw[header.segment_length:]
                self.envelopes += segment.payload
            data = self.envelopes
        else:
            data = self.raw
        out = []
        while len(data) >= 9:
            version, flags, stream, opcode, length = struct.unpack(">BBhBi", data[:9])
            if len(data) < 9 + length:
                break
            out.append((version, stream, opcode, data[9:9 + length]))
            data = data[9 + length:]
        if self.segments:
            self.envelopes = data
        else:
            self.raw = data
        return out

    def handle(self):
        while True:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            self.raw += chunk
            for version, stream, opcode, body in self.frames():
                self.answer(version, stream, opcode, io.BytesIO(body))

    def answer(self, version, stream, opcode, f):
        if opcode == 0x05:  # OPTIONS
            log(op="options")
            out = io.BytesIO()
            write_stringmultimap(out, {
                "CQL_VERSION": ["3.4.5"],
                "COMPRESSION": ["lz4", "snappy"],
                "PROTOCOL_VERSIONS": ["3/v3", "4/v4", "5/v5"],
            })
            self.send(version, stream, 0x06, out.getvalue())
        elif opcode == 0x01:  # STARTUP
            options = read_stringmap(f)
            log(op="startup", options=options)
            if AUTH:
                out = io.BytesIO()
                write_string(out, "org.apache.cassandra.auth.PasswordAuthenticator")
                self.send(version, stream, 0x03, out.getvalue())
            else:
                self.send(version, stream, 0x02, b"")
            # v5: segments from the next frame on, both ways
            self.segments = version >= 5
        elif opcode == 0x0F:  # AUTH_RESPONSE
            token = f.read()
            log(op="auth-response", ok=b"\x00cassandra\x00cassandra" in token)
            out = io.BytesIO()
            write_int(out, -1)
            self.send(version, stream, 0x10, out.getvalue())
        elif opcode == 0x0B:  # REGISTER
            log(op="register")
            self.send(version, stream, 0x02, b"")
        elif opcode == 0x07:  # QUERY
            query = read_longstring(f)
            log(op="query", query=query)
            words = query.strip().rstrip(";").split()
            if "fail:" in query:
                self.send(version, stream, 0x00, error_body(0x2200, "stand-in: invalid on purpose"))
            elif system_table(query) is not None:
                body = system_table(query)
                self.send(version, stream, 0x00 if "peers_v2" in query else 0x08, body)
            elif words and words[0].lower() == "use":
                self.keyspace = words[1].strip('"').lower()
                out = io.BytesIO()
                write_int(out, 3)
                write_string(out, self.keyspace)
                self.send(version, stream, 0x08, out.getvalue())
            else:
                self.send(version, stream, 0x08, rows_body(self.keyspace, [query, self.keyspace]))
        elif opcode == 0x09:  # PREPARE
            query = read_longstring(f)
            log(op="prepare", query=query)
            query_id = hashlib.md5(((self.keyspace or "") + query).encode()).digest()
            with log_lock:
                prepared[query_id] = (query, self.keyspace)
            self.send(version, stream, 0x08, prepared_body(version, query_id))
        elif opcode == 0x0A:  # EXECUTE
            query_id = read_binary_string(f)
            log(op="execute", id=query_id.hex())
            with log_lock:
                known = prepared.get(query_id)
            if known is None:
                extra = struct.pack(">H", len(query_id)) + query_id
                self.send(version, stream, 0x00, error_body(0x2500, "stand-in: unprepared", extra))
            else:
                self.send(version, stream, 0x08, rows_body(known[1], list(known)))
        elif opcode == 0x0D:  # BATCH
            read_byte(f)
            entries = []
            for _ in range(read_short(f)):
                if read_byte(f) == 0:
                    entries.append(read_longstring(f))
                else:
                    entries.append(read_binary_string(f).hex())
                for _ in range(read_short(f)):
                    read_value(f)
            log(op="batch", entries=entries)
            out = io.BytesIO()
            write_int(out, 1)
            self.send(version, stream, 0x08, out.getvalue())
        else:
            log(op="unexpected", opcode=opcode)
            self.send(version, stream, 0x00, error_body(0x000A, "stand-in: unexpected opcode"))


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    host, port = ADDR.rsplit(":", 1)
    Server((host, int(port)), Connection).serve_forever()
