"""The cassandra-driver's connection layer as a client for weir's tests: its
framing (v3, v4, v5 segments), handshake, compression negotiation, stream
ids and error decoding, one request (or several at once) exactly as asked.
(cassandra_session.py drives the full Cluster and Session.)

usage: cassandra_client.py HOST:PORT VERSION OPS_JSON [--auth] [--compression]
  OPS_JSON: a list of
    ["query", cql]             QUERY
    ["query", cql, n]          QUERY with PAD in cql replaced by n x's
    ["query_in", ks, cql]      QUERY with the keyspace option (the driver sends it in v5)
    ["prepare", name, cql]     PREPARE, the id kept under name
    ["execute", name]          EXECUTE a kept id
    ["execute_id", hex]        EXECUTE an id weir never saw prepared
    ["batch", [entry, ...]]    BATCH; entry: cql, or ["prepared", name]
    ["together", [op, ...]]    send several at once (one stream each)

Prints {"connected": ...} then one JSON line per op result:
{"ok": true, "kind": RESULT kind, "rows": [...], "id": prepared id} or
{"ok": false, "error": class name, "code": ..., "message": ...}.
"""

import json
import sys

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.protocol import (BatchMessage, ExecuteMessage, PrepareMessage, QueryMessage, ResultMessage)
from cassandra.query import BatchType

try:
    from cassandra.io.libevreactor import LibevConnection as Connection
except ImportError:  # no libev: the pure-Python reactor
    from cassandra.io.asyncorereactor import AsyncoreConnection as Connection

ONE = ConsistencyLevel.ONE
prepared = {}


def out(**fields):
    print(json.dumps(fields, default=str), flush=True)


def message(op):
    kind, *args = op
    if kind == "query":
        # ["query", cql, n]: PAD in cql becomes n x's (argv cannot hold big queries)
        query = args[0].replace("PAD", "x" * args[1]) if len(args) > 1 else args[0]
        return QueryMessage(query=query, consistency_level=ONE)
    if kind == "query_in":
        return QueryMessage(query=args[1], consistency_level=ONE, keyspace=args[0])
    if kind == "prepare":
        return PrepareMessage(query=args[1])
    if kind == "execute":
        query_id, metadata_id = prepared[args[0]]
        return ExecuteMessage(query_id=query_id, query_params=[], consistency_level=ONE,
                              result_metadata_id=metadata_id)
    if kind == "execute_id":
        return ExecuteMessage(query_id=bytes.fromhex(args[0]), query_params=[], consistency_level=ONE,
                              result_metadata_id=bytes.fromhex(args[0]))
    if kind == "batch":
        entries = []
        for e in args[0]:
            if isinstance(e, list):
                entries.append((True, prepared[e[1]][0], []))
            else:
                entries.append((False, e, []))
        return BatchMessage(BatchType.LOGGED, entries, ONE)
    raise ValueError(kind)


def report(op, success, response):
    if not success:
        out(ok=False, error=type(response).__name__, code=getattr(response, "code", None),
            message=getattr(response, "message", str(response)))
        return
    if isinstance(response, ResultMessage):
        if op[0] == "prepare":
            prepared[op[1]] = (response.query_id, response.result_metadata_id)
        rows = [list(r) for r in (response.parsed_rows or [])] if response.kind == 2 else None
        query_id = response.query_id.hex() if op[0] == "prepare" else None
        out(ok=True, kind=response.kind, rows=rows, id=query_id)
    else:
        out(ok=True, kind=type(response).__name__, rows=None)


def main():
    addr, version, ops = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    host, port = addr.rsplit(":", 1)
    auth = PlainTextAuthProvider("cassandra", "cassandra").new_authenticator(host) if "--auth" in sys.argv else None
    Connection.initialize_reactor()
    try:
        conn = Connection.factory(host, 5, port=int(port), protocol_version=version, authenticator=auth,
                                  compression="--compression" in sys.argv)
    except Exception as e:  # the test reads why
        out(connected=False, error=type(e).__name__, message=str(e))
        return
    out(connected=True, compressor=getattr(conn, "_compression_type", None))
    for op in ops:
        group = op[1] if op[0] == "together" else [op]
        try:
            results = conn.wait_for_responses(*[message(o) for o in group], timeout=5, fail_on_error=False)
        except Exception as e:
            out(ok=False, error=type(e).__name__, code=None, message=str(e))
            break
        for o, (success, response) in zip(group, results):
            report(o, success, response)
    conn.close()


if __name__ == "__main__":
    main()
