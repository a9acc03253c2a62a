"""The cassandra-driver's full client (Cluster and Session: control
connection, pool, prepared statements, retries) for weir's tests, in two
phases so the test can restart weir in between (weir then knows no
prepared statement).

usage: cassandra_session.py HOST:PORT
  phase 1: prepare "SELECT * FROM app.orders", execute it, run a refused
           query; prints one JSON line per step, then "pause"
  (reads a line from stdin)
  phase 2: execute the statement prepared in phase 1 again (the driver must
           prepare it again when weir answers Unprepared); prints its line.
"""

import json
import sys
import time

from cassandra.cluster import Cluster, NoHostAvailable
from cassandra.policies import ConstantReconnectionPolicy


def out(**fields):
    print(json.dumps(fields, default=str), flush=True)


def rows(result):
    return [list(r) for r in result]


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    cluster = Cluster([host], port=int(port), protocol_version=4, schema_metadata_enabled=False,
                      token_metadata_enabled=False, reconnection_policy=ConstantReconnectionPolicy(0.2),
                      connect_timeout=5, control_connection_timeout=5,
                      # by default the driver prepares everything again when a host
                      # comes back; off, the EXECUTE meets weir's Unprepared answer
                      reprepare_on_up=False)
    session = cluster.connect()
    prepared = session.prepare("SELECT * FROM app.orders")
    out(step="execute", rows=rows(session.execute(prepared)))
    try:
        session.execute("SELECT * FROM app.secrets")
        out(step="refused", error=None)
    except Exception as e:
        out(step="refused", error=type(e).__name__, message=str(e))
    out(step="pause")
    sys.stdin.readline()
    deadline = time.time() + 20
    while True:
        try:
            out(step="again", rows=rows(session.execute(prepared)))
            break
        except NoHostAvailable as e:  # the pool is still reconnecting to the new weir
            if time.time() > deadline:
                out(step="again", error=type(e).__name__, message=str(e))
                break
            time.sleep(0.2)
    cluster.shutdown()


if __name__ == "__main__":
    main()
