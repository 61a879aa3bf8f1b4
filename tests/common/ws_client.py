"""A WebSocket client for tests/ws.rs, on Python's `websockets` library (a
client written by others, to check haoshuo against).

Usage: ws_client.py URL. Prints one JSON object a line, flushed:
  {"open": true}                  the handshake succeeded
  {"msg": "<text>"}               each message received
  {"pong": "<data>"}              the answer to a ping we sent
  {"closed": CODE, "reason": R}   the connection ended (the server's close code)
  {"error": "<text>"}             the handshake or the connection failed
and takes commands on stdin, one a line:
  ping DATA      send a ping, report its pong
  close CODE     send a close frame with CODE
Heartbeats of the library itself are off: the tests send their own pings.
"""
import asyncio
import json
import os
import sys

import websockets


def emit(**fields):
    print(json.dumps(fields), flush=True)


async def main(url):
    try:
        ws = await websockets.connect(url, ping_interval=None, max_size=2**24)
    except Exception as e:  # the handshake was refused: say how, then stop
        emit(error=f"{type(e).__name__}: {e}")
        os._exit(0)
    emit(open=True)

    async def commands():
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "ping":
                pong = await ws.ping(arg.encode())
                await pong
                emit(pong=arg)
            elif cmd == "close":
                await ws.close(int(arg), "bye")

    asyncio.create_task(commands())
    try:
        async for msg in ws:
            emit(msg=msg)
    except websockets.ConnectionClosed:
        pass
    emit(closed=ws.close_code, reason=ws.close_reason)
    # The stdin reader thread may still be blocked, and asyncio.run would
    # wait for it: end here.
    os._exit(0)


asyncio.run(main(sys.argv[1]))
os._exit(0)
