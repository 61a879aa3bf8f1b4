"""A Chrome DevTools Protocol pipe for tests/browser.rs: one page of a
headless Chromium, driven over the DevTools WebSocket with Python's
`websockets` library (the one tests/ws.rs already uses).

Usage: cdp.py PORT, the browser's --remote-debugging-port (Chromium writes
it to DevToolsActivePort in its profile). Attaches to the browser's first
page, then takes commands on stdin, one JSON object a line:
  {"method": "Runtime.evaluate", "params": {...}}
and prints, flushed, one JSON object a line for each:
  {"result": {...}}   the command's result
  {"error": {...}}    the browser refused it
Events the page raises are read and dropped: the tests look at the page
itself (its DOM, its variables), not at the protocol's events.
"""
import asyncio
import json
import sys
import urllib.request

import websockets


def page_url(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
        targets = json.load(r)
    pages = [t for t in targets if t.get("type") == "page"]
    if not pages:
        raise SystemExit(f"no page target in {targets}")
    return pages[0]["webSocketDebuggerUrl"]


async def main(port):
    # The asyncio client, as ws_client.py: Debian's python3-websockets
    # (10.x) has no sync one. DevTools messages (a whole DOM, say) may
    # exceed the library's 1 MiB default.
    ws = await websockets.connect(page_url(port), max_size=2**26, ping_interval=None)
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    next_id = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        if not line.strip():
            continue
        cmd = json.loads(line)
        next_id += 1
        cmd["id"] = next_id
        await ws.send(json.dumps(cmd))
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("id") == next_id:
                break
        if "error" in msg:
            print(json.dumps({"error": msg["error"]}), flush=True)
        else:
            print(json.dumps({"result": msg.get("result", {})}), flush=True)
    await ws.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
