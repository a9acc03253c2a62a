"""Real memcached clients for weir's tests: pymemcache (text protocol) and
python-binary-memcached (binary protocol).

usage: memcached_client.py ADDR PROTOCOL OPS_JSON
  PROTOCOL: text | binary
  OPS_JSON: a list of [op, args...]: ["set", key, value], ["get", key],
            ["get_many", [keys]], ["delete", key], ["version"]

Prints one JSON line per op: {"ok": true, "value": ...} or
{"ok": false, "error": class name, "message": ...}.
"""

import json
import sys


def out(**fields):
    print(json.dumps(fields), flush=True)


def text_client(host, port):
    from pymemcache.client.base import Client

    # noreply=False: the test wants to see each store's answer
    return Client((host, port), default_noreply=False, connect_timeout=5, timeout=5)


def binary_client(host, port):
    import bmemcached

    return bmemcached.Client([f"{host}:{port}"], socket_timeout=5)


def main():
    addr, protocol, ops = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    host, port = addr.rsplit(":", 1)
    client = text_client(host, int(port)) if protocol == "text" else binary_client(host, int(port))
    for op, *args in ops:
        try:
            if op == "set":
                value = client.set(args[0], args[1])
            elif op == "get":
                value = client.get(args[0])
            elif op == "get_many":
                value = client.get_many(args[0]) if protocol == "text" else client.get_multi(args[0])
            elif op == "delete":
                value = client.delete(args[0])
            elif op == "version":
                value = client.version() if protocol == "text" else client.stats()
            else:
                raise ValueError(op)
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, dict):
                value = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else str(v))
                         for k, v in value.items()}
            out(ok=True, value=value)
        except Exception as e:  # the test asserts on the class the client raised
            out(ok=False, error=type(e).__name__, message=str(e))


if __name__ == "__main__":
    main()
