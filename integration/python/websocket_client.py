"""A WebSocket client (the `websockets` library) for weir's tests.

Usage: websocket_client.py URL SOURCE_IP MESSAGE...

Connects from SOURCE_IP, sends each MESSAGE as text (a MESSAGE of the form
`@bytes:N` is N random bytes of binary data instead; `@wait:FILE` waits until FILE
exists (30 s at most), after writing FILE.open, and sends nothing), reads one answer for each and
prints one JSON object: {"status": 101, "answers": [...]} (binary answers as
their length), or {"status": N} when the handshake was answered with N, or
{"error": "..."} (with the answers read before it).
"""

import asyncio
import json
import os
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

url, source, messages = sys.argv[1], sys.argv[2], sys.argv[3:]


answers = []


async def main():
    try:
        async with connect(url, local_addr=(source, 0), max_size=None, open_timeout=10) as ws:
            for m in messages:
                if m.startswith("@wait:"):
                    open(m[6:] + ".open", "w").close()
                    for _ in range(600):  # 30 s at most: a failed test writes nothing
                        if os.path.exists(m[6:]):
                            break
                        await asyncio.sleep(0.05)
                    continue
                if m.startswith("@bytes:"):
                    await ws.send(os.urandom(int(m[7:])))  # random: compression cannot shrink it
                else:
                    await ws.send(m)
                answer = await asyncio.wait_for(ws.recv(), 10)
                answers.append(answer if isinstance(answer, str) else {"bytes": len(answer)})
            print(json.dumps({"status": 101, "answers": answers}))
    except InvalidStatus as e:
        print(json.dumps({"status": e.response.status_code}))
    except Exception as e:  # noqa: BLE001 - the test reads the error
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "answers": answers}))


asyncio.run(main())
