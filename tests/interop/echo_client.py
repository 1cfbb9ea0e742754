"""Interop: the Python `websockets` library (a client nobody here wrote) against wsgate's echo app.

Usage: echo_client.py URL [--ca CERT_PEM]

Checks, each with a clear failure message:
- text and binary messages come back unchanged and with their type (small, 125/126/65535/65536
  bytes, 512 KiB, multi-byte UTF-8);
- a fragmented message (sent by the library as an async iterator of fragments) comes back whole;
- ping gets a pong with the same payload;
- with and without the library's permessage-deflate offer (negotiated exactly when offered);
- the close handshake completes with the client's code (1000) echoed;
- a 2 MiB message (over the configured 1 MiB limit) is answered with close code 1009.
Prints `N passed, M failed` and exits non-zero on any failure.
"""

import asyncio
import os
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

PASSED = 0
FAILED = 0


def check(name, ok, detail=""):
    global PASSED, FAILED
    if ok:
        PASSED += 1
        print(f"  ok   {name}")
    else:
        FAILED += 1
        print(f"  FAIL {name} {detail}")


async def round_trips(url, ssl_ctx, compression):
    label = f"[{'deflate offered' if compression else 'no deflate'}]"
    async with connect(url, ssl=ssl_ctx, compression=compression, max_size=2**22, open_timeout=5) as ws:
        negotiated = [e.name for e in ws.protocol.extensions]
        check(f"{label} permessage-deflate negotiated exactly when offered",
              ("permessage-deflate" in negotiated) == bool(compression), f"(extensions={negotiated})")
        payloads = ["hello", "ünïcödé ✓ 𝄞", "x" * 125, "y" * 126, "z" * 65535, "w" * 65536, "v" * (512 * 1024)]
        for p in payloads:
            await ws.send(p)
            got = await asyncio.wait_for(ws.recv(), 10)
            check(f"{label} text {len(p.encode())} B echoed", got == p, f"(got {type(got).__name__} len {len(got)})")
        for n in (0, 1, 126, 65536, 300000):
            data = os.urandom(n)
            await ws.send(data)
            got = await asyncio.wait_for(ws.recv(), 10)
            check(f"{label} binary {n} B echoed", got == data, f"(got {type(got).__name__} len {len(got)})")

        async def fragments():
            for part in ("frag-", "ment", "ed ✓"):
                yield part
        await ws.send(fragments())
        got = await asyncio.wait_for(ws.recv(), 10)
        check(f"{label} fragmented text reassembled", got == "frag-mented ✓", repr(got))

        pong = await ws.ping(b"are-you-there")
        latency = await asyncio.wait_for(pong, 5)
        check(f"{label} ping answered", latency >= 0)

        await ws.close(code=1000, reason="bye")
        check(f"{label} close handshake: server echoed 1000", ws.close_code == 1000 and ws.protocol.close_rcvd is not None,
              f"(close_code={ws.close_code}, rcvd={ws.protocol.close_rcvd})")


async def too_big(url, ssl_ctx):
    async with connect(url, ssl=ssl_ctx, compression=None, max_size=2**22, open_timeout=5) as ws:
        try:
            await ws.send("a" * (2 * 1024 * 1024))
            await asyncio.wait_for(ws.recv(), 10)
            check("2 MiB message closed with 1009", False, "(server echoed it)")
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            check("2 MiB message closed with 1009", code == 1009, f"(code={code})")


async def main():
    url = sys.argv[1]
    ssl_ctx = None
    if "--ca" in sys.argv:
        ssl_ctx = ssl.create_default_context(cafile=sys.argv[sys.argv.index("--ca") + 1])
    print(f"websockets interop against {url}")
    await round_trips(url, ssl_ctx, None)
    await round_trips(url, ssl_ctx, "deflate")
    await too_big(url, ssl_ctx)
    print(f"{PASSED} passed, {FAILED} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
