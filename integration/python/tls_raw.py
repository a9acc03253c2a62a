"""Send raw bytes over TLS with a chosen ALPN, for weir's tests.

Usage: tls_raw.py HOST:PORT SOURCE_IP ALPN|- < BYTES

Connects from SOURCE_IP, offers ALPN (none with -), sends what stdin holds,
and prints one JSON object: the ALPN agreed, what came back (latin-1 text)
and whether the server closed within 3 seconds of quiet.
"""

import json
import socket
import ssl
import sys

host, port = sys.argv[1].rsplit(":", 1)
source, alpn = sys.argv[2], sys.argv[3]
payload = sys.stdin.buffer.read()

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
if alpn != "-":
    context.set_alpn_protocols([alpn])
raw = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
tls = context.wrap_socket(raw, server_hostname="localhost")
tls.sendall(payload)
tls.settimeout(3)
received, closed = b"", False
try:
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            closed = True
            break
        received += chunk
except (socket.timeout, TimeoutError):
    pass
except (ssl.SSLError, ConnectionError):
    closed = True
print(json.dumps({"alpn": tls.selected_alpn_protocol(), "received": received.decode("latin-1"), "closed": closed}))
