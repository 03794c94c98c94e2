"""Plain HTTP on the gateway port: /health, 404s, /ws without an upgrade."""

import asyncio
import json
import os
import re
import socket
import time

import pytest
import websockets
from websockets.exceptions import InvalidMessage, InvalidStatusCode

import hp
from hp import Client, connect_init


def project_version():
    try:
        with open(os.path.join(hp.source_dir(), "CMakeLists.txt")) as f:
            m = re.search(r"project\(\s*hotplex\s+VERSION\s+([0-9.]+)", f.read())
            return m.group(1) if m else None
    except OSError:
        return None


def health_fields(j):
    assert j["status"] == "ok"
    assert isinstance(j["version"], str) and j["version"]
    for k in ("uptime_s", "sessions", "connections", "agents"):
        assert hp.is_int(j[k]) and j[k] >= 0, f"/health {k} must be an int >= 0: {j}"


async def test_health_fields_and_counts(gw):
    st, hd, body = gw.http("GET", "/health")
    assert st == 200
    assert hd.get("content-type", "").startswith("application/json"), hd
    j = json.loads(body)
    health_fields(j)
    v = project_version()
    if v:
        assert v in j["version"], f"/health version {j['version']!r} vs project {v}"
    assert j["sessions"] == 0 and j["connections"] == 0 and j["agents"] == 0, j
    assert j["uptime_s"] <= 5

    c = await connect_init(gw)
    await c.turn("count me")
    j = gw.health()
    health_fields(j)
    assert j["sessions"] == 1, j
    assert j["connections"] == 1, j
    assert j["agents"] in (0, 1), j
    c2 = await connect_init(gw, key=c.session_id)
    c3 = await connect_init(gw)
    j = gw.health()
    assert j["sessions"] == 2 and j["connections"] == 3, j
    await hp.close_all([c, c2, c3])
    j = await hp.wait_for(lambda: (lambda h: h if h["connections"] == 0 else None)(gw.health()),
                          timeout=5, what="/health connections back to 0")
    assert j["sessions"] == 2, "sessions outlive their connections"


async def test_health_uptime_advances(gw):
    u0 = gw.health()["uptime_s"]
    await asyncio.sleep(2.1)
    u1 = gw.health()["uptime_s"]
    assert u1 >= u0 + 1, (u0, u1)


async def test_health_keepalive_many_requests(gw):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    try:
        for _ in range(50):
            conn.request("GET", "/health")
            r = conn.getresponse()
            assert r.status == 200
            health_fields(json.loads(r.read()))
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/nope", "/healthz", "/health/extra", "/health.json",
                                  "/ws/extra", "/wsx", "/favicon.ico", "/HEALTH"])
async def test_unknown_paths_404(gw, path):
    st, hd, body = gw.http("GET", path)
    assert st == 404, f"GET {path} -> {st}, expected 404"
    gw.health()


@pytest.mark.parametrize("path", ["/../etc/passwd", "/%00", "/health%00", "/" + "a" * 3000,
                                  "/health?x=" + "%" * 10])
async def test_odd_paths_are_4xx_not_a_crash(gw, path):
    """A 4xx, or (libwebsockets' choice for some malformed URIs) the connection
    dropped without a response; never a 2xx for a path that is not /health, and
    the gateway stays up."""
    st = http_status_or_none(gw, "GET", path)
    if path.startswith("/health?"):
        assert st is None or st == 200 or 400 <= st < 500, st
    else:
        assert st is None or 400 <= st < 500, f"GET {path[:60]} -> {st}"
    gw.assert_alive()
    gw.health()


def http_status_or_none(gw, method, path, headers=None):
    """The response status, or None when the server closed without answering."""
    import http.client
    try:
        st, hd, body = gw.http(method, path, headers=headers)
        return st
    except (http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine):
        return None


async def test_get_ws_without_upgrade_is_4xx(gw):
    st, hd, body = gw.http("GET", "/ws")
    assert 400 <= st < 500, f"GET /ws without upgrade -> {st}"
    # half an upgrade (no key) is refused too: a 4xx, or the
    # connection dropped without a response (libwebsockets does that)
    st = http_status_or_none(gw, "GET", "/ws", {"Upgrade": "websocket", "Connection": "Upgrade"})
    assert st is None or 400 <= st < 500, f"GET /ws with an incomplete upgrade -> {st}"
    gw.assert_alive()
    j = gw.health()
    health_fields(j)
    c = await connect_init(gw)
    t = await c.turn("upgrade ok")
    assert t.done.data["success"] is True
    await c.close()


async def test_websocket_upgrade_on_unknown_path_refused(gw):
    """No upgrade anywhere but /ws: a 4xx (404 preferred), or the connection
    dropped without a response."""
    with pytest.raises((InvalidStatusCode, InvalidMessage)) as ei:
        await asyncio.wait_for(websockets.connect(gw.ws_url("/nope"), open_timeout=5), 6)
    if isinstance(ei.value, InvalidStatusCode):
        assert 400 <= ei.value.status_code < 500, ei.value.status_code
    gw.assert_alive()
    gw.health()


async def test_any_origin_on_loopback(gw):
    c = await Client.connect(gw, origin="http://evil.example")
    ack = await c.init()
    assert ack.data["server_caps"]["protocol_version"] == "aep/v1"
    await c.close()


async def test_garbage_http_does_not_crash(gw):
    for junk in (b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
                 b"GET /health HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n",
                 b"GET / HTTP/9.9\r\n\r\n", b"\r\n" * 100):
        out = await asyncio.to_thread(hp.raw_tcp, gw.port, junk, 3)
        if out:
            assert out.startswith(b"HTTP/1."), out[:80]
            status = int(out.split(b" ", 2)[1])
            assert 400 <= status < 600, out[:80]
        gw.assert_alive()
    health_fields(gw.health())


async def test_half_open_tcp_does_not_block_others(gw):
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(20)]
    try:
        socks[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
        t0 = time.monotonic()
        health_fields(gw.health())
        c = await connect_init(gw)
        t = await c.turn("not blocked")
        assert t.done.data["success"] is True
        assert time.monotonic() - t0 < 5
        await c.close()
    finally:
        for s in socks:
            s.close()
