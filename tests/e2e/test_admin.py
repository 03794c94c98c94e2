"""The admin API and /metrics on the admin listener (docs/operations.md).

Black box: the gateway prints `admin listening on HOST:PORT` as its second
stdout line (hp.Gateway reads it into gw.admin_port); every request here goes
there over plain HTTP/1.1. Covered: the separate listener (port 0), token
auth and scopes, the error object, health/readiness, stats, session listing
with pagination and filters, detail, terminate and delete as a connected
client sees them, events, the effective configuration with secrets redacted,
reload (POST /admin/reload and SIGHUP, config values and tokens), the body
limit, the rate limit, 404/405, and the Prometheus exposition: checked by a
strict parser here and by `promtool check metrics` when it is installed, and
watched while sessions run.
"""

import asyncio
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

import hp
from hp import Client, connect_init

READ_TOKEN = "read-" + uuid.uuid4().hex
WRITE_TOKEN = "write-" + uuid.uuid4().hex
ERROR_CODES = {"UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND", "INVALID_REQUEST", "PAYLOAD_TOO_LARGE",
               "RATE_LIMITED", "METHOD_NOT_ALLOWED", "INTERNAL_ERROR", "RELOAD_FAILED"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def write_file(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return str(path)


def tokens_file(dirpath, lines=None):
    lines = lines if lines is not None else [f"{READ_TOKEN}:read", f"{WRITE_TOKEN}:read,write"]
    return write_file(os.path.join(str(dirpath), "admin.tokens"),
                      "# admin tokens\n" + "\n".join(lines) + "\n")


def with_tokens(gw_factory, tmp_path, settings=None):
    s = {"admin.tokens_file": tokens_file(tmp_path)}
    s.update(settings or {})
    return gw_factory(settings=s)


def check_error(status, headers, body, want_status, want_code):
    assert status == want_status, f"status {status}, expected {want_status}: {body[:300]!r}"
    assert headers.get("content-type", "").startswith("application/json"), headers
    j = json.loads(body)
    assert set(j) == {"error"}, j
    assert set(j["error"]) == {"code", "message"}, j
    assert j["error"]["code"] == want_code, j
    assert j["error"]["code"] in ERROR_CODES
    assert isinstance(j["error"]["message"], str) and j["error"]["message"], j
    return j["error"]


def expect_error(gw, method, path, want_status, want_code, token=None, **kw):
    st, hd, body = gw.admin_http(method, path, token=token, **kw)
    check_error(st, hd, body, want_status, want_code)
    return hd


def list_all(gw, query="", token=None, limit=10):
    """Every page of GET /admin/sessions; returns (pages, items)."""
    pages, items, cursor = [], [], None
    for _ in range(1000):
        q = f"limit={limit}" + (f"&{query}" if query else "")
        if cursor:
            q += f"&cursor={cursor}"
        j = gw.admin_json("GET", f"/admin/sessions?{q}", token=token)
        assert isinstance(j["sessions"], list) and len(j["sessions"]) <= limit, j
        pages.append(j)
        items += j["sessions"]
        cursor = j["next_cursor"]
        if cursor is None:
            return pages, items
        assert isinstance(cursor, str) and cursor
    raise AssertionError("pagination does not end")


async def open_sessions(gw, n, prefix="k"):
    out = []
    for i in range(n):
        c = await connect_init(gw, key=f"{prefix}{i}")
        out.append(c)
    return out


# --------------------------------------------------------------------------
# Prometheus text format: a strict parser
# --------------------------------------------------------------------------

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"')
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_value(s):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    assert re.match(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$", s), f"bad sample value {s!r}"
    return float(s)


def parse_metrics(text):
    """Parse and check a text exposition (format 0.0.4). Returns
    {family: {"type", "help", "samples": {(name, ((k, v), ...)): value}}}."""
    assert text.endswith("\n"), "exposition must end with a newline"
    fams = {}
    order = []
    cur = None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {n}: {line!r}"
        assert line, f"{where}: empty line"
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert NAME_RE.match(name), where
            assert name not in fams, f"{where}: family declared twice"
            assert help_.strip(), f"{where}: empty help"
            assert not re.search(r"\\[^\\n]", help_.replace("\\\\", "")), f"{where}: bad escape"
            fams[name] = {"help": help_, "type": None, "samples": {}}
            order.append(name)
            cur = name
            continue
        if line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            assert name == cur, f"{where}: TYPE must follow the family's HELP"
            assert typ in TYPES, where
            assert fams[name]["type"] is None, f"{where}: TYPE twice"
            assert not fams[name]["samples"], f"{where}: TYPE after samples"
            fams[name]["type"] = typ
            continue
        assert not line.startswith("#"), f"{where}: unexpected comment"
        m = SAMPLE_RE.match(line)
        assert m, f"{where}: not a sample line"
        sname, labels_s, val = m.group(1), m.group(2), m.group(3)
        labels = ()
        if labels_s:
            inner = labels_s[1:-1]
            got = LABEL_RE.findall(inner)
            rebuilt = ",".join(f'{k}="{v}"' for k, v in got)
            assert rebuilt == inner, f"{where}: bad label set"
            keys = [k for k, _ in got]
            assert len(keys) == len(set(keys)), f"{where}: duplicate label"
            labels = tuple(got)
        fam = cur
        assert fam is not None and fams[fam]["type"], f"{where}: sample before HELP/TYPE"
        typ = fams[fam]["type"]
        if typ == "histogram":
            assert sname in (fam + "_bucket", fam + "_sum", fam + "_count"), \
                f"{where}: not a series of histogram {fam}"
            if sname == fam + "_bucket":
                assert any(k == "le" for k, _ in labels), f"{where}: bucket without le"
        elif typ == "summary":
            assert sname in (fam, fam + "_sum", fam + "_count"), f"{where}: not in summary {fam}"
        else:
            assert sname == fam, f"{where}: sample of another family (samples must be grouped)"
        key = (sname, labels)
        assert key not in fams[fam]["samples"], f"{where}: duplicate series"
        fams[fam]["samples"][key] = parse_value(val)

    for name in order:
        f = fams[name]
        assert f["type"], f"{name}: no TYPE"
        assert f["samples"], f"{name}: family without samples"
        assert name.startswith("hotplex_"), f"{name}: not in the hotplex_ namespace"
        if f["type"] == "counter":
            assert name.endswith("_total"), f"{name}: counter names end in _total"
            for v in f["samples"].values():
                assert v >= 0, f"{name}: negative counter"
        else:
            assert not name.endswith("_total") or f["type"] == "counter", name
        if f["type"] == "histogram":
            by_rest = {}
            for (sname, labels), v in f["samples"].items():
                rest = tuple(kv for kv in labels if kv[0] != "le")
                by_rest.setdefault(rest, {"buckets": [], "sum": None, "count": None})
                if sname.endswith("_bucket"):
                    le = dict(labels)["le"]
                    by_rest[rest]["buckets"].append((parse_value(le), v))
                elif sname.endswith("_sum"):
                    by_rest[rest]["sum"] = v
                else:
                    by_rest[rest]["count"] = v
            for rest, h in by_rest.items():
                b = h["buckets"]
                les = [le for le, _ in b]
                assert les == sorted(les) and len(set(les)) == len(les), f"{name}: le order"
                assert les and les[-1] == math.inf, f"{name}: no +Inf bucket"
                counts = [c for _, c in b]
                assert counts == sorted(counts), f"{name}: buckets not cumulative"
                assert h["count"] is not None and h["sum"] is not None, f"{name}: _sum/_count"
                assert counts[-1] == h["count"], f"{name}: +Inf bucket != _count"
    return fams


def scrape(gw, token=None):
    st, hd, body = gw.admin_http("GET", "/metrics", token=token)
    assert st == 200, (st, body[:300])
    ct = hd.get("content-type", "")
    assert ct.startswith("text/plain") and "version=0.0.4" in ct, ct
    text = body.decode()
    return text, parse_metrics(text)


def val(fams, family, series=None, **labels):
    f = fams[family]
    key = (series or family, tuple(sorted(labels.items())))
    for (sname, lab), v in f["samples"].items():
        if sname == key[0] and tuple(sorted(lab)) == key[1]:
            return v
    raise AssertionError(f"no sample {key} in {family}")


def promtool_check(text):
    tool = shutil.which("promtool")
    if not tool:
        return False
    r = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=30)
    assert r.returncode == 0, f"promtool check metrics failed:\n{r.stdout.decode()}{r.stderr.decode()}"
    return True


# --------------------------------------------------------------------------
# listener, auth, errors
# --------------------------------------------------------------------------

async def test_second_listener_and_routes_apart(gw):
    assert gw.admin_port and gw.admin_port != gw.port
    j = gw.admin_json("GET", "/admin/health")
    assert j["status"] == "ok" and isinstance(j["version"], str) and j["version"]
    assert hp.is_int(j["uptime_s"]) and 0 <= j["uptime_s"] <= 10
    # the public listener still works and does not serve admin routes
    gw.health()
    st, _, _ = gw.http("GET", "/admin/health")
    assert st == 404
    st, _, _ = gw.http("GET", "/metrics")
    assert st == 404
    # and the admin listener does not serve the public ones
    expect_error(gw, "GET", "/health", 404, "NOT_FOUND")
    # no WebSocket upgrades on the admin listener
    up = hp.raw_tcp(gw.admin_port, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n", timeout=3)
    assert b" 101 " not in up.split(b"\r\n", 1)[0], up[:200]
    gw.admin_json("GET", "/admin/health")
    # a WebSocket session works next to it
    c = await connect_init(gw)
    t = await c.turn("hello admin")
    assert t.text == "hello admin"
    await c.close()


async def test_open_without_tokens_on_loopback(gw):
    # no admin.tokens_file: open (loopback only)
    j = gw.admin_json("GET", "/admin/stats")
    assert j["connections"] == 0
    st, _, _ = gw.admin_http("GET", "/metrics")
    assert st == 200
    j = gw.admin_json("POST", "/admin/reload")
    assert j["reloaded"] is True


def test_open_admin_refused_on_non_loopback(tmp_path):
    data = tempfile.mkdtemp(prefix="hotplex-e2e-data-")
    try:
        r = subprocess.run([hp.bin_path(), "serve", "--listen", "127.0.0.1:0", "--data-dir", data,
                            "--set", "admin.listen=0.0.0.0:0"],
                           capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        assert r.stdout == b"", r.stdout
        err = r.stderr.decode()
        assert "admin" in err and "0.0.0.0" in err and "admin.tokens_file" in err, err
        # with a tokens file the same address is fine
        tok = tokens_file(tmp_path)
        p = subprocess.Popen([hp.bin_path(), "serve", "--listen", "127.0.0.1:0", "--data-dir", data,
                              "--set", "admin.listen=0.0.0.0:0", "--set", f"admin.tokens_file={tok}"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL)
        try:
            l1 = p.stdout.readline()
            l2 = p.stdout.readline()
            assert l1.startswith(b"listening on 127.0.0.1:"), l1
            m = re.match(rb"^admin listening on 0\.0\.0\.0:(\d+)\n$", l2)
            assert m, l2
            port = int(m.group(1))
            import http.client
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/admin/stats")
            r2 = c.getresponse()
            assert r2.status == 401
            r2.read()
            c.close()
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(15) == 0
    finally:
        shutil.rmtree(data, ignore_errors=True)


async def test_auth_and_scopes(gw_factory, tmp_path):
    gw = with_tokens(gw_factory, tmp_path)
    c = await connect_init(gw, key="scoped")
    sid = c.session_id
    # liveness and readiness need no token
    gw.admin_json("GET", "/admin/health")
    gw.admin_json("GET", "/admin/ready")
    # no token, bad token, wrong scheme: 401
    for path in ("/admin/stats", "/admin/sessions", f"/admin/sessions/{sid}", "/admin/config",
                 "/metrics", "/admin/nonexistent"):
        hd = expect_error(gw, "GET", path, 401, "UNAUTHORIZED")
        assert hd.get("www-authenticate", "").startswith("Bearer"), hd
    expect_error(gw, "GET", "/admin/stats", 401, "UNAUTHORIZED", token="not-a-valid-token-at-all")
    expect_error(gw, "GET", "/admin/stats", 401, "UNAUTHORIZED", token=READ_TOKEN + "x")
    expect_error(gw, "GET", "/admin/stats", 401, "UNAUTHORIZED",
                 headers={"Authorization": f"Basic {READ_TOKEN}"})
    expect_error(gw, "POST", f"/admin/sessions/{sid}/terminate", 401, "UNAUTHORIZED")
    # read token: every GET, no write
    for path in ("/admin/stats", "/admin/sessions", f"/admin/sessions/{sid}", "/admin/config"):
        gw.admin_json("GET", path, token=READ_TOKEN)
    scrape(gw, token=READ_TOKEN)
    expect_error(gw, "POST", f"/admin/sessions/{sid}/terminate", 403, "FORBIDDEN", token=READ_TOKEN)
    expect_error(gw, "DELETE", f"/admin/sessions/{sid}", 403, "FORBIDDEN", token=READ_TOKEN)
    expect_error(gw, "POST", "/admin/reload", 403, "FORBIDDEN", token=READ_TOKEN)
    assert gw.admin_json("GET", f"/admin/sessions/{sid}", token=READ_TOKEN)["state"] != "terminated"
    # write token: reads and writes
    gw.admin_json("GET", "/admin/stats", token=WRITE_TOKEN)
    j = gw.admin_json("POST", f"/admin/sessions/{sid}/terminate", token=WRITE_TOKEN)
    assert j["session_id"] == sid and j["action"] == "terminate"
    await c.until_state("terminated")
    # the failures were counted (admin listener)
    _, fams = scrape(gw, token=READ_TOKEN)
    assert val(fams, "hotplex_auth_failures_total", listener="admin") >= 3
    await c.close()


async def test_failed_tokens_get_blocked(gw_factory, tmp_path):
    gw = with_tokens(gw_factory, tmp_path, {"auth.max_failures": "3", "auth.block_ms": "60000"})
    for _ in range(3):
        expect_error(gw, "GET", "/admin/stats", 401, "UNAUTHORIZED", token="wrong-token-0000000000")
    # blocked now: even the right token is refused for a while
    hd = expect_error(gw, "GET", "/admin/stats", 429, "RATE_LIMITED", token=READ_TOKEN)
    assert int(hd.get("retry-after", "0")) >= 1, hd
    # health stays reachable (no credentials involved)
    gw.admin_json("GET", "/admin/health")


async def test_not_found_and_method_not_allowed(gw_factory, tmp_path):
    gw = with_tokens(gw_factory, tmp_path)
    t = READ_TOKEN
    for path in ("/admin", "/admin/", "/admin/nope", "/admin/sessions/", "/admin/sessions/x/y",
                 "/admin/sessions/x/events/z", "/metrics/x", "/"):
        expect_error(gw, "GET", path, 404, "NOT_FOUND", token=t)
    expect_error(gw, "GET", "/admin/sessions/00000000-0000-4000-8000-000000000000", 404,
                 "NOT_FOUND", token=t)
    expect_error(gw, "GET", "/admin/sessions/00000000-0000-4000-8000-000000000000/events", 404,
                 "NOT_FOUND", token=t)
    expect_error(gw, "POST", "/admin/sessions/00000000-0000-4000-8000-000000000000/terminate",
                 404, "NOT_FOUND", token=WRITE_TOKEN)
    expect_error(gw, "DELETE", "/admin/sessions/00000000-0000-4000-8000-000000000000",
                 404, "NOT_FOUND", token=WRITE_TOKEN)
    cases = [("GET", "/admin/reload", "POST"), ("POST", "/admin/stats", "GET"),
             ("PUT", "/admin/config", "GET"), ("DELETE", "/metrics", "GET"),
             ("POST", "/admin/health", "GET"), ("GET", "/admin/sessions/abc/terminate", "POST"),
             ("POST", "/admin/sessions/abc", "GET, DELETE"), ("PATCH", "/admin/sessions", "GET")]
    for method, path, allow in cases:
        hd = expect_error(gw, method, path, 405, "METHOD_NOT_ALLOWED", token=WRITE_TOKEN)
        assert hd.get("allow") == allow, (method, path, hd)


# --------------------------------------------------------------------------
# health, readiness, stats
# --------------------------------------------------------------------------

async def test_stats_counts(gw):
    j = gw.admin_json("GET", "/admin/stats")
    assert j["connections"] == 0 and j["agents"] == 0 and j["sessions"]["total"] == 0
    c1 = await connect_init(gw, key="a")
    c2 = await connect_init(gw, key="b")
    await c1.turn("one two three")
    j = gw.admin_json("GET", "/admin/stats")
    assert j["connections"] == 2, j
    assert j["sessions"]["total"] == 2, j
    assert sum(j["sessions"][s] for s in hp.STATES) == 2, j
    assert j["agents"] == 2, j
    assert j["users"] == 1, j
    assert j["events_committed"] >= 8, j
    assert j["frames_out"] >= 8 and j["bytes_out"] > 500, j
    assert j["init_ok"] == 2, j
    st = j["store"]
    # delivered means journaled; the database commits a few ms behind
    assert st["journal_writes"] >= 1 and st["journal_bytes"] > 500, st
    assert st["journal_errors"] == 0, st
    committed = j["events_committed"]
    await hp.wait_for(lambda: gw.admin_json("GET", "/admin/stats")["store"]["events"] >= committed,
                      what="the database catching up with the journal")
    st = gw.admin_json("GET", "/admin/stats")["store"]
    assert st["batches"] >= 1 and st["lost_events"] == 0, st
    assert isinstance(st["batch_seconds_sum"], (int, float)), st
    assert j["process"]["resident_memory_bytes"] > 1 << 20, j
    assert j["process"]["open_fds"] > 3, j
    assert gw.admin_json("GET", "/admin/ready") == {"ready": True, "store": "open"}
    await hp.close_all([c1, c2])
    await hp.wait_for(lambda: gw.admin_json("GET", "/admin/stats")["connections"] == 0,
                      what="connections back to 0")


STUBBORN_AGENT = """#!/bin/sh
# an agent that ignores SIGTERM (and passes that on to its children): the
# gateway's shutdown then waits worker.stop_grace_ms for its SIGKILL
trap '' TERM
while :; do sleep 1; done
"""


async def test_ready_reports_shutdown(gw_factory, tmp_path):
    agent = write_file(tmp_path / "stubborn-agent", STUBBORN_AGENT, mode=0o700)
    gw = gw_factory(settings={"worker.claude_bin": agent, "worker.stop_grace_ms": "3000",
                              "server.shutdown_grace_ms": "0"})
    assert gw.admin_json("GET", "/admin/ready") == {"ready": True, "store": "open"}
    c = await connect_init(gw, worker_type="claude_code", key="stubborn")
    await hp.wait_for(lambda: gw.admin_json("GET", "/admin/stats")["agents"] == 1,
                      what="agent running")
    gw.send_signal(signal.SIGTERM)
    st, body = None, None
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        st, _, body = gw.admin_http("GET", "/admin/ready")
        if st == 503:
            break
        await asyncio.sleep(0.02)
    assert st == 503, (st, body)
    j = json.loads(body)
    assert j == {"ready": False, "store": "open", "reason": "shutting down"}, j
    h = gw.admin_json("GET", "/admin/health")  # alive, but stopping
    assert h["status"] == "stopping"
    code, _, _ = await c.expect_close()
    assert code == 1001
    assert await gw.await_exit(20) == 0


# --------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(120)
async def test_sessions_pagination_and_filters(gw_factory, tmp_path):
    gw = with_tokens(gw_factory, tmp_path)
    clients = await open_sessions(gw, 25)
    ids = {c.session_id for c in clients}
    assert len(ids) == 25
    pages, items = list_all(gw, token=READ_TOKEN, limit=10)
    assert [len(p["sessions"]) for p in pages] == [10, 10, 5], [len(p["sessions"]) for p in pages]
    assert all(p["total"] == 25 for p in pages)
    got = [s["id"] for s in items]
    assert len(got) == len(set(got)) == 25, "duplicates across pages"
    assert set(got) == ids
    order = [(s["created_ms"], s["id"]) for s in items]
    assert order == sorted(order), "not ordered by created_ms, then id"
    for s in items:
        assert s["owner"] == "anonymous" and s["worker_type"] == "echo", s
        assert s["state"] in hp.STATES and s["clients"] == 1 and s["agent_running"] is True, s
        for k in ("seq", "created_ms", "updated_ms"):
            assert hp.is_int(s[k]), s
        assert isinstance(s["work_dir"], str) and s["work_dir"].startswith("/"), s
    # a page size that divides evenly ends with next_cursor null, no empty page
    pages, items = list_all(gw, token=READ_TOKEN, limit=5)
    assert [len(p["sessions"]) for p in pages] == [5] * 5
    pages, items2 = list_all(gw, token=READ_TOKEN, limit=1000)
    assert len(pages) == 1 and [s["id"] for s in items2] == got
    # new sessions during paging do not disturb the pages already seen
    j1 = gw.admin_json("GET", "/admin/sessions?limit=10", token=READ_TOKEN)
    extra = await open_sessions(gw, 2, prefix="late")
    j2 = gw.admin_json("GET", f"/admin/sessions?limit=100&cursor={j1['next_cursor']}",
                       token=READ_TOKEN)
    seen = [s["id"] for s in j1["sessions"]] + [s["id"] for s in j2["sessions"]]
    assert len(seen) == len(set(seen)) == 27

    # filters: user, state
    assert len(list_all(gw, "user=anonymous", token=READ_TOKEN)[1]) == 27
    assert list_all(gw, "user=nobody", token=READ_TOKEN)[1] == []
    victims = [c.session_id for c in clients[:7]]
    for sid in victims:
        gw.admin_json("POST", f"/admin/sessions/{sid}/terminate", token=WRITE_TOKEN)
    await asyncio.gather(*(c.until_state("terminated") for c in clients[:7]))
    term = list_all(gw, "state=terminated", token=READ_TOKEN, limit=3)[1]
    assert sorted(s["id"] for s in term) == sorted(victims)
    assert all(s["state"] == "terminated" and s["agent_running"] is False for s in term)
    live = list_all(gw, "state=running", token=READ_TOKEN)[1] + \
        list_all(gw, "state=idle", token=READ_TOKEN)[1] + \
        list_all(gw, "state=created", token=READ_TOKEN)[1]
    assert len(live) == 20 and not set(s["id"] for s in live) & set(victims)
    both = list_all(gw, "state=terminated&user=anonymous", token=READ_TOKEN)[1]
    assert len(both) == 7
    assert list_all(gw, "state=terminated&user=someone", token=READ_TOKEN)[1] == []
    # deleted sessions: only with state=deleted (or all)
    gw.admin_json("DELETE", f"/admin/sessions/{victims[0]}", token=WRITE_TOKEN)
    assert len(list_all(gw, "", token=READ_TOKEN)[1]) == 26
    dele = list_all(gw, "state=deleted", token=READ_TOKEN)[1]
    assert [s["id"] for s in dele] == [victims[0]]
    assert len(list_all(gw, "state=all", token=READ_TOKEN)[1]) == 27
    # bad parameters
    for q in ("limit=0", "limit=1001", "limit=x", "limit=", "state=bogus", "cursor=nonsense",
              "cursor=12"):
        expect_error(gw, "GET", f"/admin/sessions?{q}", 400, "INVALID_REQUEST", token=READ_TOKEN)
    await hp.close_all(clients + extra)


async def test_session_detail_terminate_delete_seen_by_client(gw_factory, tmp_path):
    gw = with_tokens(gw_factory, tmp_path)
    c = await connect_init(gw, key="detail")
    c2 = await connect_init(gw, key="detail")
    sid = c.session_id
    await c.turn("some words here")
    await c2.until_seq(c.pos)
    d = gw.admin_json("GET", f"/admin/sessions/{sid}", token=READ_TOKEN)
    assert d["id"] == sid and d["owner"] == "anonymous" and d["bot_id"] == ""
    assert d["worker_type"] == "echo" and d["state"] == "idle", d
    assert d["seq"] == c.pos and d["durable_seq"] == c.pos, (d, c.pos)
    assert d["clients"] == 2 and len(d["connections"]) == 2, d
    assert all(x["user"] == "anonymous" and x["peer"] for x in d["connections"]), d
    assert d["agent_running"] is True and hp.is_int(d["agent_started_ms"]), d
    assert d["turn_active"] is False and d["queued_inputs"] == 0, d
    assert d["session_key"] == "detail"
    assert d["created_ms"] <= d["updated_ms"] <= hp.now_ms() + 1000, d
    assert os.path.isabs(d["work_dir"]), d

    # terminate: both connections see it, the session stays
    j = gw.admin_json("POST", f"/admin/sessions/{sid}/terminate", token=WRITE_TOKEN)
    assert j["session_id"] == sid and j["action"] == "terminate"
    for cl in (c, c2):
        evs = await cl.until_state("terminated")
        assert evs[-1].data.get("message"), evs[-1]
    d = await hp.wait_for(lambda: (lambda x: x if not x["agent_running"] else None)(
        gw.admin_json("GET", f"/admin/sessions/{sid}", token=READ_TOKEN)), what="agent gone")
    assert d["state"] == "terminated" and d["agent_started_ms"] is None, d
    # terminating again is harmless
    gw.admin_json("POST", f"/admin/sessions/{sid}/terminate", token=WRITE_TOKEN)
    await c.assert_quiet()
    # input after terminate resumes the session (the client's own choice)
    t = await c.turn("back again")
    assert t.done.data["success"] is True

    # delete: both connections see state deleted, then close 1000
    j = gw.admin_json("DELETE", f"/admin/sessions/{sid}", token=WRITE_TOKEN)
    assert j["state"] == "deleted"
    for cl in (c, c2):
        code, reason, evs = await cl.expect_close()
        assert code == 1000, (code, reason)
        assert any(e.type == "state" and e.data["state"] == "deleted" for e in evs), evs
    d = gw.admin_json("GET", f"/admin/sessions/{sid}", token=READ_TOKEN)
    assert d["state"] == "deleted" and d["clients"] == 0, d
    expect_error(gw, "DELETE", f"/admin/sessions/{sid}", 404, "NOT_FOUND", token=WRITE_TOKEN)
    expect_error(gw, "POST", f"/admin/sessions/{sid}/terminate", 404, "NOT_FOUND",
                 token=WRITE_TOKEN)
    # the client's key now names a fresh session (ids are never reused)
    c3 = await connect_init(gw, key="detail")
    assert c3.session_id != sid
    await c3.close()


async def test_session_events(gw_factory, tmp_path):
    gw = with_tokens(gw_factory, tmp_path)
    c = await connect_init(gw, key="ev")
    sid = c.session_id
    await c.turn("alpha beta gamma")
    j = gw.admin_json("GET", f"/admin/sessions/{sid}/events?after=0&limit=1000", token=READ_TOKEN)
    assert j["session_id"] == sid and j["after"] == 0 and j["last_seq"] == c.pos, j
    evs = j["events"]
    assert [e["seq"] for e in evs] == list(range(1, c.pos + 1))
    mine = {e.seq: e for e in c.stream}
    for e in evs:
        assert e["session_id"] == sid and e["version"] == "aep/v1"
        if e["seq"] in mine:
            assert e["event"]["type"] == mine[e["seq"]].type
            assert e["id"] == mine[e["seq"]].id, "the stored envelope is the one sent"
    assert j["next_after"] == c.pos
    # paging with after/limit
    j = gw.admin_json("GET", f"/admin/sessions/{sid}/events?after=2&limit=3", token=READ_TOKEN)
    assert [e["seq"] for e in j["events"]] == [3, 4, 5] and j["next_after"] == 5
    j = gw.admin_json("GET", f"/admin/sessions/{sid}/events?after={c.pos}", token=READ_TOKEN)
    assert j["events"] == [] and j["next_after"] == c.pos
    for q in ("after=-1", "limit=0", "limit=1001", "after=x"):
        expect_error(gw, "GET", f"/admin/sessions/{sid}/events?{q}", 400, "INVALID_REQUEST",
                     token=READ_TOKEN)
    # many concurrent reads on one connection each, while the client keeps going
    await c.send("input", {"content": "more words while reading"})
    for _ in range(10):
        j = gw.admin_json("GET", f"/admin/sessions/{sid}/events?limit=1000", token=READ_TOKEN)
        seqs = [e["seq"] for e in j["events"]]
        assert seqs == list(range(1, len(seqs) + 1))
    await c.collect_turn()
    await c.close()


# --------------------------------------------------------------------------
# configuration and reload
# --------------------------------------------------------------------------

async def test_config_redacts_secrets(gw_factory, tmp_path):
    secret = "s3cr3t-" + uuid.uuid4().hex
    gw = with_tokens(gw_factory, tmp_path, {"worker.env": f"TOKEN={secret}",
                                            "server.max_frame_size": "48k"})
    st, hd, body = gw.admin_http("GET", "/admin/config", token=READ_TOKEN)
    assert st == 200
    assert secret.encode() not in body
    assert READ_TOKEN.encode() not in body and WRITE_TOKEN.encode() not in body
    cfg = json.loads(body)["config"]
    assert cfg["worker.env"] == "***", cfg["worker.env"]
    assert cfg["server.max_frame_size"] == "48k"
    assert cfg["admin.listen"] == "127.0.0.1:0"
    assert cfg["admin.tokens_file"].endswith("admin.tokens")  # paths are not secrets
    for k in ("server.listen", "server.data_dir", "session.max_conns", "log.level",
              "worker.default_work_dir", "echo.delta_interval_ms"):
        assert isinstance(cfg[k], str), k
    # nor does the gateway's log (the harness's own "=====" command line aside)
    log = [ln for ln in gw.log_text().splitlines() if not ln.startswith("===== ")]
    assert not [ln for ln in log if secret in ln]


@pytest.mark.timeout_s(90)
async def test_reload_config_and_tokens(tmp_path):
    conf = write_file(tmp_path / "hotplex.yaml", "session:\n  max_queued_inputs: 64\n")
    new_token = "fresh-" + uuid.uuid4().hex
    tok = tokens_file(tmp_path)
    g = hp.Gateway(settings={"admin.tokens_file": tok}, args=["--config", conf], name="reload")
    with g:
        cfg = g.admin_json("GET", "/admin/config", token=READ_TOKEN)["config"]
        assert cfg["session.max_queued_inputs"] == "64"
        # change a reloadable value and the tokens, then POST /admin/reload
        write_file(conf, "session:\n  max_queued_inputs: 77\n")
        tokens_file(tmp_path, [f"{WRITE_TOKEN}:write", f"{new_token}:read"])
        expect_error(g, "GET", "/admin/stats", 401, "UNAUTHORIZED", token=new_token)
        j = g.admin_json("POST", "/admin/reload", token=WRITE_TOKEN)
        assert j["reloaded"] is True and j["changed"] >= 1, j
        cfg = g.admin_json("GET", "/admin/config", token=new_token)["config"]
        assert cfg["session.max_queued_inputs"] == "77"
        expect_error(g, "GET", "/admin/stats", 401, "UNAUTHORIZED", token=READ_TOKEN)
        # a broken file is refused as a whole; nothing changes
        write_file(conf, "session:\n  max_queued_inputs: lots\n")
        st, hd, body = g.admin_http("POST", "/admin/reload", token=WRITE_TOKEN)
        e = check_error(st, hd, body, 500, "RELOAD_FAILED")
        assert "max_queued_inputs" in e["message"], e
        cfg = g.admin_json("GET", "/admin/config", token=new_token)["config"]
        assert cfg["session.max_queued_inputs"] == "77"
        # a broken tokens file is refused too, and the tokens in force stay
        write_file(conf, "session:\n  max_queued_inputs: 80\n")
        tokens_file(tmp_path, [f"{WRITE_TOKEN}:write", "short:read"])
        st, hd, body = g.admin_http("POST", "/admin/reload", token=WRITE_TOKEN)
        e = check_error(st, hd, body, 500, "RELOAD_FAILED")
        assert "line" in e["message"] and "short" not in e["message"], e
        cfg = g.admin_json("GET", "/admin/config", token=new_token)["config"]
        assert cfg["session.max_queued_inputs"] == "77"
        # SIGHUP does the same reload
        tokens_file(tmp_path, [f"{WRITE_TOKEN}:write", f"{new_token}:read"])
        write_file(conf, "session:\n  max_queued_inputs: 88\n")
        g.send_signal(signal.SIGHUP)
        await hp.wait_for(lambda: g.admin_json("GET", "/admin/config", token=new_token)
                          ["config"]["session.max_queued_inputs"] == "88", what="SIGHUP reload")


# --------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------

async def test_body_limit(gw_factory, tmp_path):
    gw = with_tokens(gw_factory, tmp_path)
    c = await connect_init(gw, key="body")
    sid = c.session_id
    expect_error(gw, "POST", "/admin/reload", 413, "PAYLOAD_TOO_LARGE", token=WRITE_TOKEN,
                 body=b"x" * (100 * 1024))
    expect_error(gw, "POST", f"/admin/sessions/{sid}/terminate", 413, "PAYLOAD_TOO_LARGE",
                 token=WRITE_TOKEN, body=b"{" + b" " * (64 * 1024) + b"}")
    assert gw.admin_json("GET", f"/admin/sessions/{sid}", token=READ_TOKEN)["state"] != "terminated"
    # at the limit is fine (the body is read and ignored)
    gw.admin_json("POST", f"/admin/sessions/{sid}/terminate", token=WRITE_TOKEN,
                  body=b"x" * (64 * 1024))
    await c.until_state("terminated")
    # keep-alive survives a 413 answered after reading the body
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    try:
        conn.request("POST", "/admin/reload", body=b"y" * (70 * 1024),
                     headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
        r = conn.getresponse()
        assert r.status == 413
        r.read()
        conn.request("GET", "/admin/health")
        r = conn.getresponse()
        assert r.status == 200
        r.read()
    finally:
        conn.close()
    # far too large: refused without reading it (413 or the connection dropped)
    try:
        st, _, _ = gw.admin_http("POST", "/admin/reload", token=WRITE_TOKEN,
                                 body=b"z" * (4 * 1024 * 1024))
        assert st == 413
    except (ConnectionError, OSError):
        pass
    gw.admin_json("GET", "/admin/health")
    await c.close()


async def test_rate_limit(gw):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    statuses = []
    limited = None
    try:
        for _ in range(400):
            conn.request("GET", "/admin/health")
            r = conn.getresponse()
            body = r.read()
            statuses.append(r.status)
            if r.status == 429:
                limited = (r.getheader("retry-after"), body)
                break
    finally:
        conn.close()
    assert limited, f"no 429 after {len(statuses)} requests"
    assert statuses.count(200) >= 50, statuses.count(200)
    assert int(limited[0]) >= 1
    j = json.loads(limited[1])
    assert j["error"]["code"] == "RATE_LIMITED"
    # the bucket refills
    await asyncio.sleep(1.5)
    gw.admin_json("GET", "/admin/health")
    _, fams = scrape(gw)
    assert val(fams, "hotplex_rate_limited_total", listener="admin") >= 1
    # the public listener is not affected
    gw.health()


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------

EXPECTED_FAMILIES = {
    "hotplex_connections": "gauge", "hotplex_sessions": "gauge", "hotplex_agents": "gauge",
    "hotplex_events_committed_total": "counter", "hotplex_frames_out_total": "counter",
    "hotplex_bytes_out_total": "counter", "hotplex_merged_deltas_total": "counter",
    "hotplex_slow_client_disconnects_total": "counter", "hotplex_errors_total": "counter",
    "hotplex_init_duration_seconds": "histogram",
    "hotplex_agent_start_duration_seconds": "histogram",
    "hotplex_event_latency_seconds": "histogram", "hotplex_store_batches_total": "counter",
    "hotplex_store_events_total": "counter", "hotplex_store_batch_duration_seconds": "summary",
    "hotplex_process_resident_memory_bytes": "gauge", "hotplex_process_open_fds": "gauge",
    "hotplex_auth_failures_total": "counter", "hotplex_rate_limited_total": "counter",
    "hotplex_users": "gauge", "hotplex_uptime_seconds": "gauge",
}


@pytest.mark.timeout_s(90)
async def test_metrics_move_with_sessions(gw_factory, tmp_path):
    gw = with_tokens(gw_factory, tmp_path)
    text0, m0 = scrape(gw, token=READ_TOKEN)
    for name, typ in EXPECTED_FAMILIES.items():
        assert name in m0, f"missing metric family {name}"
        assert m0[name]["type"] == typ, (name, m0[name]["type"])
    promtool_check(text0)
    assert val(m0, "hotplex_connections") == 0
    for s in hp.STATES:
        assert val(m0, "hotplex_sessions", state=s) == 0
    assert val(m0, "hotplex_process_resident_memory_bytes") > 1 << 20
    assert val(m0, "hotplex_process_open_fds") > 3

    c = await connect_init(gw, key="m1")
    c2 = await connect_init(gw, key="m2")
    await c.turn(" ".join(f"w{i}" for i in range(30)))
    await c.send("bogus_type", {})
    await c.expect_error_reply("PROTOCOL_VIOLATION")
    await c2.send_raw("this is not json")
    await c2.expect_error_reply("INVALID_MESSAGE")
    text1, m1 = scrape(gw, token=READ_TOKEN)
    promtool_check(text1)
    assert val(m1, "hotplex_connections") == 2
    assert val(m1, "hotplex_agents") == 2
    assert val(m1, "hotplex_users") == 1
    assert val(m1, "hotplex_sessions", state="idle") + \
        val(m1, "hotplex_sessions", state="running") == 2
    deltas = val(m1, "hotplex_events_committed_total", type="message.delta")
    assert deltas >= 30, deltas
    assert val(m1, "hotplex_events_committed_total", type="done") >= 1
    assert val(m1, "hotplex_events_committed_total", type="state") >= 3
    assert val(m1, "hotplex_events_committed_total", type="other") == 0
    total = sum(v for v in m1["hotplex_events_committed_total"]["samples"].values())
    assert total == c.pos + c2.pos, (total, c.pos, c2.pos)
    assert val(m1, "hotplex_frames_out_total") >= total
    assert val(m1, "hotplex_bytes_out_total") > val(m0, "hotplex_bytes_out_total")
    assert val(m1, "hotplex_errors_total", code="PROTOCOL_VIOLATION") == 1
    assert val(m1, "hotplex_errors_total", code="INVALID_MESSAGE") == 1
    h = "hotplex_init_duration_seconds"
    assert val(m1, h, h + "_count") == 2
    assert val(m1, h, h + "_bucket", le="+Inf") == 2
    assert 0 < val(m1, h, h + "_sum") < 10
    h = "hotplex_agent_start_duration_seconds"
    assert val(m1, h, h + "_count") == 1  # c2's agent has not said anything yet
    h = "hotplex_event_latency_seconds"
    assert val(m1, h, h + "_count") >= total
    assert val(m1, h, h + "_sum") < val(m1, h, h + "_count")  # well under 1 s each
    # delivered means journaled; the database commits a few ms behind
    assert val(m1, "hotplex_store_journal_writes_total") >= 1
    assert val(m1, "hotplex_store_journal_bytes_total") > 500
    assert val(m1, "hotplex_store_journal_errors_total") == 0
    await hp.wait_for(
        lambda: val(scrape(gw, token=READ_TOKEN)[1], "hotplex_store_events_total") >= total,
        what="the database catching up with the journal")
    assert val(scrape(gw, token=READ_TOKEN)[1], "hotplex_store_batches_total") >= 1
    assert val(m1, "hotplex_init_total", result="ok") == 2

    # terminate one: the state gauge moves
    gw.admin_json("POST", f"/admin/sessions/{c2.session_id}/terminate", token=WRITE_TOKEN)
    await c2.until_state("terminated")
    await hp.close_all([c, c2])

    def settled():
        _, m = scrape(gw, token=READ_TOKEN)
        return m if val(m, "hotplex_connections") == 0 else None
    m2 = await hp.wait_for(settled, what="connections gauge back to 0")
    assert val(m2, "hotplex_sessions", state="terminated") == 1
    assert val(m2, "hotplex_agents") == 1
    assert val(m2, "hotplex_connections_total") == 2
    # counters never go down
    for fam, f in m1.items():
        if f["type"] != "counter":
            continue
        for key, v in f["samples"].items():
            assert m2[fam]["samples"][key] >= v, (fam, key)
    assert val(m2, "hotplex_uptime_seconds") >= val(m1, "hotplex_uptime_seconds")


async def test_metrics_scopes(gw_factory, tmp_path):
    gw = with_tokens(gw_factory, tmp_path)
    expect_error(gw, "GET", "/metrics", 401, "UNAUTHORIZED")
    expect_error(gw, "GET", "/metrics", 401, "UNAUTHORIZED", token="nope-nope-nope-nope-nope")
    scrape(gw, token=READ_TOKEN)
    scrape(gw, token=WRITE_TOKEN)


def test_strict_parser_rejects_bad_text():
    good = ("# HELP hotplex_a_total A.\n# TYPE hotplex_a_total counter\nhotplex_a_total 1\n")
    parse_metrics(good)
    bad = [
        good.rstrip("\n"),
        "hotplex_a_total 1\n",
        "# HELP hotplex_a A.\n# TYPE hotplex_a counter\nhotplex_a 1\n",
        "# HELP hotplex_a_total A.\n# TYPE hotplex_a_total counter\nhotplex_a_total{x=\"1} 1\n",
        "# HELP hotplex_a_total A.\n# TYPE hotplex_a_total counter\nhotplex_a_total one\n",
        "# HELP hotplex_h H.\n# TYPE hotplex_h histogram\nhotplex_h_bucket{le=\"1\"} 2\n"
        "hotplex_h_bucket{le=\"+Inf\"} 1\nhotplex_h_sum 1\nhotplex_h_count 1\n",
        "# HELP hotplex_h H.\n# TYPE hotplex_h histogram\nhotplex_h_bucket{le=\"1\"} 1\n"
        "hotplex_h_sum 1\nhotplex_h_count 1\n",
    ]
    for t in bad:
        with pytest.raises(AssertionError):
            parse_metrics(t)
