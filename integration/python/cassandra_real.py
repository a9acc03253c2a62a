"""The cassandra-driver's full client (Cluster, Session) against the real
Apache Cassandra node of weir's tests, with PasswordAuthenticator
(cassandra/cassandra).

usage: cassandra_real.py setup HOST:PORT      straight to the node: keyspace
           app, tables app.items and app.secrets, one secret row
       cassandra_real.py run HOST:PORT VERSION    through weir, protocol
           VERSION (4 or 5): one JSON line per step, success or the error
           class the driver raised
       cassandra_real.py count HOST:PORT      straight to the node: rows of
           app.items and app.secrets, and whether app.new_v4/app.new_v5 exist
"""

import json
import sys
import time

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.query import BatchStatement, SimpleStatement


def out(**fields):
    print(json.dumps(fields, default=str), flush=True)


def session_for(address, version):
    host, port = address.rsplit(":", 1)
    auth = PlainTextAuthProvider(username="cassandra", password="cassandra")
    cluster = Cluster([host], port=int(port), protocol_version=version, auth_provider=auth,
                      schema_metadata_enabled=False, token_metadata_enabled=False,
                      connect_timeout=10, control_connection_timeout=10)
    # the superuser appears as the node starts: a refused login is retried
    deadline = time.time() + 30
    while True:
        try:
            return cluster, cluster.connect()
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def step(name, action):
    try:
        out(step=name, ok=True, result=action())
    except Exception as e:
        out(step=name, ok=False, error=type(e).__name__, message=str(e)[:300])


def main():
    command, address = sys.argv[1], sys.argv[2]
    if command == "setup":
        cluster, s = session_for(address, 5)
        s.execute("CREATE KEYSPACE IF NOT EXISTS app WITH replication = "
                  "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        s.execute("CREATE TABLE IF NOT EXISTS app.items (id int PRIMARY KEY, name text)")
        s.execute("CREATE TABLE IF NOT EXISTS app.secrets (id int PRIMARY KEY, v text)")
        s.execute("INSERT INTO app.secrets (id, v) VALUES (1, 'the plans')")
        out(step="setup", ok=True)
        cluster.shutdown()
    elif command == "count":
        cluster, s = session_for(address, 5)
        items = s.execute("SELECT count(*) FROM app.items").one()[0]
        secrets = s.execute("SELECT count(*) FROM app.secrets").one()[0]
        tables = sorted(r[0] for r in s.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = 'app'"))
        out(items=items, secrets=secrets, tables=tables)
        cluster.shutdown()
    elif command == "run":
        version = int(sys.argv[3])
        base = 1000 * version
        cluster, s = session_for(address, version)
        out(step="connected", ok=True, result=cluster.protocol_version)
        step("use", lambda: s.set_keyspace("app") or "app")
        insert = s.prepare("INSERT INTO items (id, name) VALUES (?, ?)")
        step("insert_prepared", lambda: [s.execute(insert, (base + i, f"item {i}")) and None for i in range(20)] and 20)

        def paged():
            statement = SimpleStatement(f"SELECT id FROM app.items WHERE id >= {base} AND id < {base + 20} ALLOW FILTERING",
                                        fetch_size=5)
            result = s.execute(statement)
            pages, rows = 1, list(result.current_rows)
            while result.has_more_pages:
                result.fetch_next_page()
                pages += 1
                rows += list(result.current_rows)
            return {"pages": pages, "rows": len(rows)}
        step("paged", paged)

        def batch(tables):
            b = BatchStatement()
            for i, table in enumerate(tables):
                b.add(SimpleStatement(f"INSERT INTO app.{table} (id, {'name' if table == 'items' else 'v'}) VALUES (%s, %s)"),
                      (base + 100 + i, "batched"))
            s.execute(b)
            return len(tables)
        step("batch", lambda: batch(["items", "items", "items"]))
        step("batch_refused", lambda: batch(["items", "secrets"]))
        step("select_secrets", lambda: [list(r) for r in s.execute("SELECT * FROM app.secrets")])
        step("create_table", lambda: s.execute(f"CREATE TABLE app.new_v{version} (id int PRIMARY KEY)") and None)
        step("drop_refused", lambda: s.execute("DROP TABLE app.items") and None)
        cluster.shutdown()


if __name__ == "__main__":
    main()
