"""A WebSocket echo server (the `websockets` library) for weir's tests.

Usage: websocket_server.py HOST:PORT LOG

Every handshake request it reads is appended to LOG as one JSON line (path
and headers), so a test can say what reached the server. Messages are
echoed back with "echo: " in front (bytes as they came). A request without
a WebSocket upgrade gets a plain 200 answer naming its path, so a test can
tell a plain request from an upgrade.
"""

import asyncio
import http
import json
import logging
import sys

from websockets.asyncio.server import serve
from websockets.http11 import Response
from websockets.datastructures import Headers

# the harness's port probe is no handshake: not worth a traceback
logging.getLogger("websockets").setLevel(logging.CRITICAL)

host, port = sys.argv[1].rsplit(":", 1)
log_path = sys.argv[2]


def log(request):
    with open(log_path, "a") as f:
        f.write(json.dumps({"path": request.path, "headers": [[k, v] for k, v in request.headers.raw_items()]}) + "\n")


def process_request(connection, request):
    log(request)
    if request.headers.get("Upgrade", "").lower() != "websocket":
        body = f"plain request for {request.path}\n".encode()
        headers = Headers([("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return Response(http.HTTPStatus.OK.value, "OK", headers, body)
    return None


async def echo(websocket):
    async for message in websocket:
        if isinstance(message, bytes):
            await websocket.send(b"echo: " + message)
        else:
            await websocket.send("echo: " + message)


async def main():
    async with serve(echo, host, int(port), process_request=process_request, max_size=None):
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
