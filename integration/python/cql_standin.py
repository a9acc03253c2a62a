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
               so the driver's Cluster can connect; text Cassandra's lexer or
               grammar refuses: a Syntax error; else RESULT Rows, one row
               (query, keyspace)
  PREPARE   -> RESULT Prepared, id = md5(keyspace + query) as Cassandra does
  EXECUTE   -> RESULT Rows (the prepared query, keyspace), or Unprepared
  BATCH     -> RESULT Void

Where weir's judgement depends on it, it reads requests as Cassandra 5.0
does (not more: it executes nothing):
  - query options (QueryOptions.Codec): flags are a [byte] before v5 and an
    [int] from v5; the keyspace flag (0x80) is honoured in v3 and v4 too,
    for QUERY and BATCH, and v5's PREPARE keyspace flag; that keyspace
    qualifies unqualified names;
  - the lexer (Lexer.g): whitespace is space, tab, LF, CR; `--` and `//`
    comments end at LF *or* CR (one at the very end is an error); `/* */`
    does not nest; '' and "" are doubled quotes; $$ strings;
  - the grammar (Parser.g, Cql.g): one statement per QUERY (and trailing
    `;`), and the statements of BEGIN BATCH ... APPLY BATCH need no `;`
    between them (each starts with INSERT, UPDATE or DELETE).

Every request it reads is appended to LOG as a JSON line
({"op": ..., "query"/"id"/"entries": ..., "runs": [[action, table]...]}),
"runs" being each statement the request would run (its first word and its
keyspace-qualified table), as Cassandra would read it; so a test can tell
what never reached the server, and what did.

usage: cql_standin.py HOST:PORT LOG [--auth]
"""

import hashlib
import io
import json
import re
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
    read_string,
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


# Lexer.g, as far as names and statements go
TOKEN = re.compile(r"""
    (?P<ws>[ \t\n\r]+)
  | (?P<comment>(?:--|//)[^\n\r]*[\n\r])
  | (?P<block>/\*.*?\*/)
  | (?P<string>'(?:[^']|'')*'|\$\$.*?\$\$)
  | (?P<name>"(?:[^"]|"")+")
  | (?P<number>0[xX][0-9A-Fa-f]*|-?[0-9]+(?:\.[0-9]+)?)
  | (?P<ident>[A-Za-z][A-Za-z0-9_]*)
  | (?P<unended>--|//)
  | (?P<punct>[();,.=<>!\[\]{}:+\-*/%?])
""", re.S | re.X)


class CqlSyntaxError(Exception):
    pass


def tokens(text):
    out, at = [], 0
    while at < len(text):
        m = TOKEN.match(text, at)
        if not m or m.lastgroup == "unended":
            raise CqlSyntaxError(f"line 1:{at} token recognition error")
        at = m.end()
        if m.lastgroup not in ("ws", "comment", "block"):
            out.append((m.lastgroup, m.group()))
    return out


def word(token, *words):
    return token[0] == "ident" and token[1].lower() in words


def name(token):
    kind, text = token
    if kind == "ident":
        return text.lower()
    if kind == "name":
        return text[1:-1].replace('""', '"')
    raise CqlSyntaxError(f"no name at {text!r}")


def table_at(toks, at, keyspace):
    first = name(toks[at])
    if at + 2 < len(toks) and toks[at + 1] == ("punct", "."):
        return f"{first}.{name(toks[at + 2])}"
    return f"{keyspace}.{first}" if keyspace else first


def table_of(toks, keyspace):
    """The table one statement runs on (None for other statements)."""
    if not toks:
        raise CqlSyntaxError("empty statement")
    if word(toks[0], "select", "delete"):
        depth = 0
        for i, t in enumerate(toks):
            depth += (t == ("punct", "(")) - (t == ("punct", ")"))
            if depth == 0 and word(t, "from"):
                return table_at(toks, i + 1, keyspace)
        raise CqlSyntaxError("no FROM")
    if word(toks[0], "insert"):
        return table_at(toks, 2, keyspace)
    if word(toks[0], "update"):
        return table_at(toks, 1, keyspace)
    if word(toks[0], "truncate"):
        return table_at(toks, 2 if word(toks[1], "table", "columnfamily") else 1, keyspace)
    return None


def statements(text, keyspace):
    """[(first word, table)] of what a QUERY/PREPARE text runs, as Cassandra parses it."""
    toks = tokens(text)
    while toks and toks[-1] == ("punct", ";"):
        toks.pop()
    if toks and word(toks[0], "begin"):
        i = 1 + (len(toks) > 1 and word(toks[1], "unlogged", "counter"))
        if not (i < len(toks) and word(toks[i], "batch")) or len(toks) < 2 \
                or not (word(toks[-2], "apply") and word(toks[-1], "batch")):
            raise CqlSyntaxError("bad batch")
        body = toks[i + 1:-2]
        starts = [k for k, t in enumerate(body) if word(t, "insert", "update", "delete")]
        out = []
        for n, k in enumerate(starts):
            one = body[k:starts[n + 1] if n + 1 < len(starts) else len(body)]
            if one and one[-1] == ("punct", ";"):
                one = one[:-1]
            if ("punct", ";") in one:
                raise CqlSyntaxError("two ';'")
            out.append((one[0][1].lower(), table_of(one, keyspace)))
        return out
    if ("punct", ";") in toks:
        raise CqlSyntaxError("missing EOF")
    return [(toks[0][1].lower() if toks else "", table_of(toks, keyspace))]


def runs(text, keyspace):
    """[[first word, table]] of each statement the text runs ([] if refused)."""
    try:
        return [list(s) for s in statements(text, keyspace)]
    except CqlSyntaxError:
        return []


def query_options(f, version):
    """QueryOptions.Codec.decode: (consistency, flags, keyspace)."""
    consistency = read_short(f)
    flags = read_int(f) & 0xffffffff if version >= 5 else read_byte(f) & 0xff  # the driver reads them signed
    if flags & 0x01:
        for _ in range(read_short(f)):
            if flags & 0x40:
                read_string(f)
            read_value(f)
    if flags & 0x04:
        read_int(f)
    if flags & 0x08:
        read_value(f)
    if flags & 0x10:
        read_short(f)
    if flags & 0x20:
        f.read(8)
    keyspace = read_string(f) if flags & 0x80 else None
    if flags & 0x100:
        read_int(f)
    return consistency, flags, keyspace


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
            keyspace = query_options(f, version)[2] or self.keyspace
            log(op="query", query=query, keyspace=keyspace, runs=runs(query, keyspace))
            if "fail:" in query:
                self.send(version, stream, 0x00, error_body(0x2200, "stand-in: invalid on purpose"))
                return
            if system_table(query) is not None:
                body = system_table(query)
                self.send(version, stream, 0x00 if "peers_v2" in query else 0x08, body)
                return
            try:
                parsed = statements(query, keyspace)
            except CqlSyntaxError as e:
                self.send(version, stream, 0x00, error_body(0x2000, f"stand-in: {e}"))
                return
            if parsed[0][0] == "use":
                self.keyspace = name(tokens(query)[1])
                out = io.BytesIO()
                write_int(out, 3)
                write_string(out, self.keyspace)
                self.send(version, stream, 0x08, out.getvalue())
            else:
                self.send(version, stream, 0x08, rows_body(keyspace, [query, keyspace]))
        elif opcode == 0x09:  # PREPARE
            query = read_longstring(f)
            keyspace = self.keyspace
            if version >= 5 and read_int(f) & 0x01:
                keyspace = read_string(f)
            log(op="prepare", query=query, keyspace=keyspace)
            query_id = hashlib.md5(((keyspace or "") + query).encode()).digest()
            with log_lock:
                prepared[query_id] = (query, keyspace)
            self.send(version, stream, 0x08, prepared_body(version, query_id))
        elif opcode == 0x0A:  # EXECUTE
            query_id = read_binary_string(f)
            with log_lock:
                known = prepared.get(query_id)
            log(op="execute", id=query_id.hex(), runs=runs(*known) if known else [])
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
                    entries.append((True, read_longstring(f)))
                else:
                    entries.append((False, read_binary_string(f)))
                for _ in range(read_short(f)):
                    read_value(f)
            keyspace = query_options(f, version)[2] or self.keyspace
            ran = []
            with log_lock:
                for is_text, entry in entries:
                    ran += runs(entry, keyspace) if is_text else runs(*prepared.get(entry, ("", None)))
            log(op="batch", entries=[e if t else e.hex() for t, e in entries], keyspace=keyspace, runs=ran)
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
