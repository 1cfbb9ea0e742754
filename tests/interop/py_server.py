"""An echo server on the Python `websockets` library (a server nobody here wrote), for
`wsgate client`.

Usage: py_server.py PORT

Every message is echoed with its type; permessage-deflate is enabled (the library's default).
The path /info answers with one JSON text message telling what was negotiated:
{"extensions": "...", "protocol": ...}. Subprotocols offered are accepted: the first one.
"""

import asyncio
import json
import sys

from websockets.asyncio.server import serve


async def handler(ws):
    if ws.request.path.startswith("/info"):
        ext = ",".join(e.name for e in ws.protocol.extensions)
        await ws.send(json.dumps({"extensions": ext, "protocol": ws.subprotocol}, separators=(",", ":")))
    async for message in ws:
        await ws.send(message)


def select_subprotocol(connection, subprotocols):
    return subprotocols[0] if subprotocols else None


async def main():
    port = int(sys.argv[1])
    async with serve(handler, "127.0.0.1", port, max_size=2**24, select_subprotocol=select_subprotocol) as server:
        print(f"py_server listening on {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
