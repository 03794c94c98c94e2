#!/usr/bin/python3
"""Send one turn to a hotplex gateway and print the streamed reply.

usage: scripts/echo_turn.py [ws://127.0.0.1:8888/ws] [TEXT] [--worker echo|claude_code] [--key KEY]
                            [--api-key API_KEY]   (or HOTPLEX_API_KEY in the environment)

Uses Debian's python3-websockets. Deltas are printed as they arrive; the
other events are summarised on their own lines.
"""
import asyncio
import json
import os
import sys

import websockets


def envelope(kind, data):
    return json.dumps({"version": "aep/v1", "event": {"type": kind, "data": data}})


async def main():
    args = [a for a in sys.argv[1:]]
    worker, key, api_key = "echo", "", os.environ.get("HOTPLEX_API_KEY", "")
    if "--worker" in args:
        i = args.index("--worker"); worker = args[i + 1]; del args[i:i + 2]
    if "--api-key" in args:
        i = args.index("--api-key"); api_key = args[i + 1]; del args[i:i + 2]
    if "--key" in args:
        i = args.index("--key"); key = args[i + 1]; del args[i:i + 2]
    url = args[0] if args else "ws://127.0.0.1:8888/ws"
    text = args[1] if len(args) > 1 else "hello from hotplex"
    headers = {"X-API-Key": api_key} if api_key else {}
    async with websockets.connect(url, max_size=None, extra_headers=headers) as ws:
        await ws.send(envelope("init", {"version": "aep/v1", "worker_type": worker, "session_id": key}))
        ack = json.loads(await ws.recv())
        data = ack["event"]["data"]
        if data.get("state") == "deleted":
            print(f"init failed: {data.get('code')}: {data.get('error')}", file=sys.stderr)
            return 1
        print(f"[session {data['session_id']} state={data['state']}]", file=sys.stderr)
        await ws.send(envelope("input", {"content": text}))
        while True:
            msg = json.loads(await ws.recv())
            kind, d = msg["event"]["type"], msg["event"]["data"]
            if kind == "message.delta":
                print(d["content"], end="", flush=True)
            elif kind == "permission_request":
                print(f"\n[permission {d['tool_name']}: {d.get('description', '')}] allowing", file=sys.stderr)
                await ws.send(envelope("permission_response", {"id": d["id"], "allowed": True}))
            elif kind in ("tool_call", "tool_result", "error"):
                print(f"\n[{kind}] {json.dumps(d)}", file=sys.stderr)
            elif kind == "done":
                print(f"\n[done success={d.get('success')}]", file=sys.stderr)
                return 0 if d.get("success") else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
