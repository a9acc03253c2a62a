#!/usr/bin/env python3
"""Write the seed corpora: a few valid messages per fuzz target, in each
target's input layout (see the doc comment at the top of each target).

    python3 fuzz/seed_corpus.py      # rewrites fuzz/corpus/<target>/seed-*

Seeds are deterministic and small; the fuzzer grows the corpus from them.
Inputs kept from fuzzing runs (crashes turned regression tests, or inputs
that reached new code) live next to them as other files and are not touched.
"""

import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, seeds):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        if old.startswith("seed-"):
            os.remove(os.path.join(d, old))
    for name, data in seeds.items():
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data)


# --- HTTP -------------------------------------------------------------------

CLEAN = (
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
    b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n"
)
write(
    "http_framing",
    {
        # first byte: how the stream is split into reads
        "pipelined": b"\x00" + CLEAN,
        "pipelined-split": b"\x47" + CLEAN,
        "cl-and-te": b"\x03POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "http10-keepalive": b"\x01GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
        "h2-preface": b"\x05PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    },
)

write(
    "http_normalize",
    {
        "dots": "/a/./b/../c//d/",
        "encoded": "/public/%2e%2E/admin%20x?q=%2e",
        "slashes": "/a%2fb%5Cc",
        "params": "/public/..;/private;jsessionid=1",
        "absolute": "http://example.com:8080/x/../y?z",
        "asterisk": "*",
    },
)

# the SDK target reads structure; a raw head seeds its raw-parse half
write(
    "sdk_head",
    {
        "head": b"GET /a?b=c example.com:80 https\nx-a: 1\naccept: text/html\nx-a: 2\n",
        "empty-authority": b"POST / \x20http\ncontent-type: application/json\n",
    },
)

# --- DNS --------------------------------------------------------------------


def dns_name(name):
    out = b""
    for label in name.split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def dns_query(qid, name, qtype, edns=False):
    header = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    q = dns_name(name) + struct.pack(">HH", qtype, 1)
    opt = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0) if edns else b""
    return header + q + opt


def dns_answer():
    header = struct.pack(">HHHHHH", 7, 0x8180, 1, 2, 0, 0)
    q = dns_name("www.example.com") + struct.pack(">HH", 1, 1)
    # www.example.com CNAME example.com (compressed), example.com A 192.0.2.1
    cname = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 300, 2) + b"\xc0\x10"
    a = b"\xc0\x10" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    return header + q + cname + a


write(
    "dns_message",
    {
        "query-a": dns_query(1, "example.com", 1),
        "query-aaaa-edns": dns_query(2, "api.corp.example", 28, edns=True),
        "answer-cname-a": dns_answer(),
        "header-only": struct.pack(">HHHHHH", 9, 0x0100, 0, 0, 0, 0),
    },
)

# --- Kafka ------------------------------------------------------------------


def kstr(s):
    return struct.pack(">h", -1) if s is None else struct.pack(">h", len(s)) + s.encode()


def kheader(key, version, corr=1, client="fuzz"):
    return struct.pack(">hhi", key, version, corr) + kstr(client)


write(
    "kafka_request",
    {
        # ApiVersions v0; Metadata v1 for one topic and for all; Produce v3
        "apiversions-v0": kheader(18, 0),
        "metadata-v1": kheader(3, 1) + struct.pack(">i", 1) + kstr("orders"),
        "metadata-v1-all": kheader(3, 1) + struct.pack(">i", -1),
        "produce-v3": kheader(0, 3)
        + kstr(None)
        + struct.pack(">hi", 1, 1000)
        + struct.pack(">i", 1)
        + kstr("orders")
        + struct.pack(">i", 1)
        + struct.pack(">ii", 0, -1),
        "findcoordinator-v0": kheader(10, 0) + kstr("group-a"),
        "unknown-api": kheader(999, 0),
    },
)


def api_versions_v0():
    keys = [(0, 0, 9), (1, 0, 13), (3, 0, 12), (18, 0, 3)]
    body = struct.pack(">hi", 0, len(keys)) + b"".join(struct.pack(">hhh", *k) for k in keys)
    msg = struct.pack(">i", 1) + body
    return struct.pack(">i", len(msg)) + msg


def api_versions_v3():
    keys = [(0, 0, 11), (1, 0, 16), (3, 0, 12), (18, 0, 4)]
    body = struct.pack(">h", 0) + bytes([len(keys) + 1])
    body += b"".join(struct.pack(">hhh", *k) + b"\x00" for k in keys)
    body += struct.pack(">i", 0) + b"\x00"
    msg = struct.pack(">i", 1) + body
    return struct.pack(">i", len(msg)) + msg


write(
    "kafka_response",
    {
        # two bytes of request version, then the broker's frame
        "apiversions-v0": struct.pack(">h", 0) + api_versions_v0(),
        "apiversions-v3": struct.pack(">h", 3) + api_versions_v3(),
    },
)

# --- memcached --------------------------------------------------------------


def mc_binary(magic, opcode, key=b"", extras=b"", value=b"", opaque=1, status=0):
    body = extras + key + value
    return (
        struct.pack(">BBHBBHII", magic, opcode, len(key), len(extras), 0, status, len(body), opaque)
        + b"\x00" * 8
        + body
    )


write(
    "memcached_request",
    {
        "text": b"get a b\r\nset k 0 0 5\r\nhello\r\ndelete k noreply\r\nincr n 1\r\nstats\r\nquit\r\n",
        "meta": b"mg k v t\r\nms k 2 T60\r\nhi\r\nmd k q\r\nmn\r\n",
        "binary": mc_binary(0x80, 0x00, b"key") + mc_binary(0x80, 0x01, b"k", b"\x00" * 8, b"val") + mc_binary(0x80, 0x0A),
    },
)
write(
    "memcached_reply",
    {
        # first byte: bit 0 protocol (0 text, 1 binary), the rest the request kind
        "values": b"\x02VALUE k 0 5\r\nhello\r\nVALUE j 1 0\r\n\r\nEND\r\n",
        "meta": b"\x00VA 2 t\r\nhi\r\nHD\r\nEN\r\nMN\r\n",
        "stats": b"\x04STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n",
        "binary": b"\x01" + mc_binary(0x81, 0x00, b"", b"\x00\x00\x00\x00", b"v") + mc_binary(0x81, 0x10, b"pid", b"", b"1"),
    },
)

# --- Cassandra --------------------------------------------------------------


def cql_frame(version, opcode, body, stream=1, response=False, flags=0):
    return struct.pack(">BBhBI", version | (0x80 if response else 0), flags, stream, opcode, len(body)) + body


def cql_string(s):
    return struct.pack(">H", len(s)) + s.encode()


def cql_long_string(s):
    return struct.pack(">i", len(s)) + s.encode()


def crc24(bits):
    crc = 0x875060
    for i in range(3):
        crc ^= ((bits >> (8 * i)) & 0xFF) << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1974F0B
    return crc


def segment(payload, self_contained=True):
    bits = len(payload) | (int(self_contained) << 17)
    crc = zlib.crc32(payload, zlib.crc32(b"\xfa\x2d\x55\xca"))
    return bits.to_bytes(3, "little") + crc24(bits).to_bytes(3, "little") + payload + struct.pack("<I", crc)


startup = cql_frame(4, 0x01, struct.pack(">H", 1) + cql_string("CQL_VERSION") + cql_string("3.0.0"))
query_v4 = cql_frame(4, 0x07, cql_long_string("SELECT * FROM ks.t WHERE k = 'a'") + struct.pack(">HB", 1, 0))
query_v5 = cql_frame(
    5, 0x07, cql_long_string("SELECT * FROM t") + struct.pack(">HI", 1, 0x80) + cql_string("ks"), stream=2
)
batch_v4 = cql_frame(
    4,
    0x0D,
    b"\x00"
    + struct.pack(">H", 2)
    + b"\x00"
    + cql_long_string("INSERT INTO ks.t (k) VALUES (1)")
    + struct.pack(">H", 0)
    + b"\x01"
    + struct.pack(">H", 2)
    + b"\x01\x02"
    + struct.pack(">H", 0)
    + struct.pack(">HB", 1, 0),
    stream=3,
)
prepare_v4 = cql_frame(4, 0x09, cql_long_string("UPDATE ks.t SET v = ? WHERE k = ?"), stream=4)
execute_v4 = cql_frame(4, 0x0A, struct.pack(">H", 2) + b"\x01\x02" + struct.pack(">HB", 1, 0), stream=5)
ready = cql_frame(4, 0x02, b"", response=True)
set_keyspace = cql_frame(4, 0x08, struct.pack(">i", 3) + cql_string("ks"), response=True, stream=2)
prepared = cql_frame(4, 0x08, struct.pack(">iH", 4, 2) + b"\x01\x02", response=True, stream=4)
supported = cql_frame(
    4,
    0x06,
    struct.pack(">H", 2)
    + cql_string("COMPRESSION")
    + struct.pack(">H", 2)
    + cql_string("lz4")
    + cql_string("snappy")
    + cql_string("CQL_VERSION")
    + struct.pack(">H", 1)
    + cql_string("3.4.5"),
    response=True,
)
error = cql_frame(4, 0x00, struct.pack(">I", 0x2200) + cql_string("no such table"), response=True, stream=6)
write(
    "cql_frames",
    {
        # first byte: bit 0 v5 segments, bit 1 responses, the rest the read size
        "requests-v4": b"\x00" + startup + query_v4 + batch_v4 + prepare_v4 + execute_v4,
        "requests-v4-split": b"\x1c" + startup + query_v4,
        "responses-v4": b"\x02" + ready + set_keyspace + prepared + supported + error,
        "requests-v5": b"\x01" + segment(query_v5 + query_v4.replace(b"\x04", b"\x05", 1)),
        "responses-v5": b"\x03" + segment(set_keyspace.replace(b"\x84", b"\x85", 1)),
    },
)

write(
    "cql_statement",
    {
        # keyspace NUL query
        "select": "SELECT a, \"B\" FROM ks.\"Tab\" WHERE a = 'it''s' -- comment\n",
        "insert-keyspace": "shop\0INSERT INTO orders (id, v) VALUES (1, $$text$$);",
        "batch": "BEGIN UNLOGGED BATCH USING TIMESTAMP 1 INSERT INTO a.b (k) VALUES (1); "
        "UPDATE a.c SET v = 2 WHERE k = 1; DELETE FROM d WHERE k = 3; APPLY BATCH;",
        "schema": "/* c */ CREATE TABLE IF NOT EXISTS ks.t (k int PRIMARY KEY) WITH comment = 'x';",
        "use": "USE \"MyKs\"",
        "grant": "GRANT SELECT ON KEYSPACE ks TO role1",
    },
)

# --- policies ---------------------------------------------------------------

CNP = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: demo-api
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: demo-api
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: frontend
      toPorts:
        - ports:
            - port: "80"
              protocol: TCP
          rules:
            http:
              - method: GET
                path: "/public/.*"
                headers: ["Content-Type: application/json"]
  egress:
    - toFQDNs:
        - matchPattern: "*.example.com"
      toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns: [{matchPattern: "*"}]
    - toCIDRSet:
        - cidr: 10.0.0.0/8
          except: [10.9.0.0/16]
      toPorts:
        - ports: [{port: "9092"}]
          rules:
            kafka: [{role: produce, topic: orders}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: cache}
spec:
  endpointSelector: {matchLabels: {app: cache}}
  ingress:
    - fromEntities: [cluster]
      toPorts:
        - ports: [{port: "11211", protocol: TCP}]
          rules:
            l7proto: memcache
            l7: [{command: get, keyPrefix: "pub/"}]
"""

K8S = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector: {matchLabels: {app: web}}
        - namespaceSelector: {}
          podSelector: {matchLabels: {app: backup}}
        - ipBlock: {cidr: 10.9.0.0/16, except: [10.9.9.0/24]}
      ports: [{port: 5432}, {port: 9000, endPort: 9002, protocol: UDP}]
"""

JSON = (
    '{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"j"},'
    '"spec":{"endpointSelector":{},"ingress":[{"fromEndpoints":[{"matchExpressions":'
    '[{"key":"app","operator":"In","values":["a","b"]}]}],"toPorts":[{"ports":[{"port":"9042"}],'
    '"rules":{"l7proto":"cassandra","l7":[{"query_action":"select","query_table":"ks\\\\..*"}]}}]}]}}'
)

write("policy_document", {"cilium.yaml": CNP, "k8s.yaml": K8S, "json.json": JSON})
