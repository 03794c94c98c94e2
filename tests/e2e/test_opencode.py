"""The opencode_server adapter end to end: the real OpenCode CLI (npm package
opencode-ai, pinned by scripts/install-opencode.sh) run by the gateway as ONE
shared `opencode serve`, offline against the Anthropic API stand-in
(tests/standin/anthropic_standin.py) through its provider baseURL option,
with a private HOME per module. Every test asserts on the AEP stream as a
client sees it (hp.py validates envelopes and seq on every message).

A fresh HOME makes opencode install its plugin packages into
~/.config/opencode (npm, ~60 MB) in the background on first start; a copy is
kept in .deps/opencode-home-cache and seeded into the next module's HOME.

Stand-in scenarios (keywords in the prompt): plain text -> "Echo: <text>",
SLOWTEXT N MS -> "word1 ... wordN", USE_BASH <cmd> -> a Bash tool call
("Tool said: <output>" after the result), THINK (a thinking block first).
"""

import asyncio
import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

import hp
import claude_env
from claude_env import agent_pids, proc_env, pid_alive
from hp import Client, connect_init

FIRST_TURN_S = 90  # the first prompt of a fresh server loads its plugins (~5 s here)
TURN_S = 45
TEXT_TURN_TYPES = {"state", "message.start", "message.delta", "message.end", "message", "done"}

NETWORK_ERRORS = claude_env.NETWORK_ERRORS
_bin = None


def opencode_bin():
    """Path of the pinned CLI (installing it if needed)."""
    global _bin
    if _bin:
        return _bin
    script = os.path.join(hp.source_dir(), "scripts", "install-opencode.sh")
    try:
        r = subprocess.run([script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=900)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{script} did not finish within 900 s")
    out = r.stdout.decode("utf-8", "replace").strip().splitlines()
    err = r.stderr.decode("utf-8", "replace")
    if r.returncode != 0 or not out:
        if NETWORK_ERRORS.search(err) and not os.environ.get("CI"):
            pytest.skip("the OpenCode CLI is not installed and the npm registry is "
                        f"unreachable ({script} failed): {err.strip()[-300:]}")
        raise AssertionError(f"{script} failed (status {r.returncode}):\n{err[-3000:]}")
    path = out[-1].strip()
    assert os.access(path, os.X_OK), f"{script} printed {path!r}, which is not executable"
    _bin = path
    return path


HOME_CACHE = os.path.join(hp.source_dir(), ".deps", "opencode-home-cache")


def seed_home(home):
    """Copy the cached ~/.config/opencode (plugin packages) into a fresh HOME."""
    src = os.path.join(HOME_CACHE, "config-opencode")
    if os.path.isdir(src):
        shutil.copytree(src, os.path.join(home, ".config", "opencode"), symlinks=True,
                        dirs_exist_ok=True)


def save_home(home):
    src = os.path.join(home, ".config", "opencode")
    dst = os.path.join(HOME_CACHE, "config-opencode")
    if os.path.isdir(os.path.join(src, "node_modules")) and not os.path.isdir(dst):
        tmp = dst + f".tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(src, tmp, symlinks=True)
            os.makedirs(HOME_CACHE, exist_ok=True)
            os.rename(tmp, dst)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)


def oc_settings(bin_path, work_dir, extra=None):
    s = {
        "worker.opencode_bin": bin_path,
        "worker.default_work_dir": work_dir,
        "worker.stop_grace_ms": 3000,
    }
    s.update(extra or {})
    return s


def oc_gateway(standin, home, work_dir, bin_path=None, settings=None, data_dir=None,
               name="opencode_gw"):
    g = hp.Gateway(settings=oc_settings(bin_path or opencode_bin(), work_dir, settings),
                   data_dir=data_dir, name=name, env=claude_env.gateway_env(home, standin))
    g.start()
    return g


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def ocbin():
    return opencode_bin()


@pytest.fixture(scope="module")
def standin():
    s = claude_env.Standin().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def base():
    d = tempfile.mkdtemp(prefix="hotplex-opencode-e2e-")
    home = os.path.join(d, "home")
    os.makedirs(home)
    os.makedirs(os.path.join(d, "work", "default"))
    seed_home(home)
    yield d
    save_home(home)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ogw(ocbin, standin, base):
    g = oc_gateway(standin, os.path.join(base, "home"), os.path.join(base, "work", "default"),
                   ocbin, name="opencode_gw")
    yield g
    pids = logged_server_pids(g)
    assert pids, "no opencode server was started"
    g.finish(check=True)
    alive = [p for p in pids if pid_alive(p)]
    assert alive == [], f"opencode servers outlived the gateway: {alive}"


@pytest.fixture
def extra_gws():
    gws = []
    yield gws
    errors = []
    for g in gws:
        try:
            g.finish(check=True)
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        raise AssertionError("\n".join(errors))


# --------------------------------------------------------------------------
# Helpers


def work_dir(base, name):
    d = os.path.join(base, "work", name)
    os.makedirs(d, exist_ok=True)
    return os.path.realpath(d)


async def open_session(gw, key, wd, name=None, **kw):
    return await connect_init(gw, name=name or key, worker_type="opencode_server", key=key,
                              data={"config": {"work_dir": wd}}, **kw)


def server_pids(gw):
    """The gateway's opencode server processes (children with its worker type)."""
    if gw.proc is None:
        return []
    return [p for p in agent_pids(gw)
            if proc_env(p).get("HOTPLEX_WORKER_TYPE") == "opencode_server"]


def logged_server_pids(gw):
    """Every opencode server the gateway says it started."""
    return [int(p) for p in re.findall(r"opencode: server \d+ started \(pid (\d+)", gw.log_text())]


def the_server(gw):
    pids = server_pids(gw)
    assert len(pids) == 1, f"expected one opencode server, found {pids}"
    return pids[0]


def server_port(gw):
    ports = re.findall(r"opencode: server \d+ \(pid \d+\) listening on port (\d+)", gw.log_text())
    assert ports, "the gateway did not log the opencode server's port"
    return int(ports[-1])


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def words(n):
    return " ".join(f"word{i}" for i in range(1, n + 1))


def check_stats(done):
    st = done.data["stats"]
    assert hp.is_int(st.get("duration_ms")) and st["duration_ms"] >= 0, st
    assert hp.is_int(st.get("num_turns")), st
    assert isinstance(st.get("total_cost_usd"), (int, float)), st
    assert isinstance(st.get("usage"), dict), st
    return st


def check_text_turn(t, text):
    types = t.types()
    assert set(types) <= TEXT_TURN_TYPES, f"unexpected events in a text turn: {types}"
    start, end, msg, done = t.one("message.start"), t.one("message.end"), t.message, t.done
    assert t.index("message.start") < t.index("message.end") < t.index("message") < \
        t.index("done"), types
    deltas = t.deltas
    assert deltas, f"no message.delta: {types}"
    for e in deltas:
        assert t.index("message.start") < t.events.index(e) < t.index("message.end"), types
        assert e.data["message_id"] == start.data["id"]
    assert end.data["message_id"] == start.data["id"] == msg.data["id"]
    assert msg.data["role"] == "assistant" and msg.data["content_type"] == "text"
    assert t.text == msg.data["content"], (t.text, msg.data["content"])
    assert msg.data["content"] == text, f"message {msg.data['content']!r}, expected {text!r}"
    assert done.data["success"] is True, done.raw
    st = check_stats(done)
    assert st["num_turns"] >= 1 and st["usage"]["output_tokens"] > 0, st
    assert types[-1] == "state" and t.events[-1].data["state"] == "idle", types
    assert types[t.index("done") + 1:] == ["state"], types


async def deltas_then(c, n, timeout=TURN_S):
    got = []
    deadline = time.monotonic() + timeout
    while sum(e.type == "message.delta" for e in got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"{c.name}: fewer than {n} deltas within {timeout}s: {got[-6:]}"
        ev = await c.recv(left)
        assert ev.type != "done", f"{c.name}: turn ended before {n} deltas: {got}"
        got.append(ev)
    return got


async def finish(c):
    """Leave the session idle (it costs the shared server little) so the
    module's server keeps running; the gateway's shutdown stops them all."""
    pong = await c.assert_quiet(delay=0.2)
    assert pong.data["state"] == "idle", pong
    await c.close()


async def until_permission(c, timeout=FIRST_TURN_S):
    evs = await c.until("permission_request", timeout=timeout)
    assert not [e for e in evs if e.type in ("done", "tool_result")], evs
    return evs, evs[-1]


def check_permission_request(pr, command):
    d = pr.data
    assert pr.stream
    assert d["tool_name"] == "bash", d
    assert d["id"].startswith("per_"), d
    assert d["input"].get("command") == command, d
    assert isinstance(d["args"], list) and len(d["args"]) == 1, d
    assert json.loads(d["args"][0]) == d["input"], d
    assert command in d["description"], d


def tool_output(ev):
    out = ev.data["output"]
    return out if isinstance(out, str) else json.dumps(out)


# --------------------------------------------------------------------------
# Text turns, one shared server


@pytest.mark.timeout_s(180)
async def test_text_turn_streams(ogw, base, standin):
    wd = work_dir(base, "text")
    c = await open_session(ogw, "text", wd)
    pid = the_server(ogw)
    argv = cmdline(pid)
    assert argv[1:] == ["serve", "--port", "0", "--hostname", "127.0.0.1"], argv
    env = proc_env(pid)
    assert len(env.get("OPENCODE_SERVER_PASSWORD", "")) >= 32, "no server password"
    cfg = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    assert cfg["provider"]["anthropic"]["options"]["baseURL"] == standin.url + "/v1", cfg
    assert cfg["permission"]["bash"] == "ask", cfg
    assert "HOTPLEX_SESSION_ID" not in env  # shared by every opencode session

    text = "hello there, friend of mine"
    t = await c.turn(text, timeout=FIRST_TURN_S)
    check_text_turn(t, f"Echo: {text}")
    assert len(t.deltas) >= 4, f"one delta per word expected, got {len(t.deltas)}"

    # the server binds loopback and wants the password
    port = server_port(ogw)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/global/health")
    r = conn.getresponse()
    r.read()
    conn.close()
    assert r.status == 401, f"/global/health without credentials: HTTP {r.status}"
    auth = base64.b64encode(f"opencode:{env['OPENCODE_SERVER_PASSWORD']}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/global/health", headers={"Authorization": "Basic " + auth})
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["healthy"] is True
    conn.close()

    # the second turn on the same server, contiguous seq
    t2 = await c.turn("second turn", timeout=TURN_S)
    check_text_turn(t2, "Echo: second turn")
    assert t2.events[0].seq == t.events[-1].seq + 1
    assert t2.message.data["id"] != t.message.data["id"]
    assert the_server(ogw) == pid
    pong, before = await c.ping()
    assert before == [] and pong.data["state"] == "idle"
    await finish(c)


@pytest.mark.timeout_s(180)
async def test_sessions_share_one_server(ogw, base):
    a = await open_session(ogw, "share-a", work_dir(base, "share-a"))
    b = await open_session(ogw, "share-b", work_dir(base, "share-b"))
    pid = the_server(ogw)
    ta, tb = await asyncio.gather(a.turn("from a", timeout=FIRST_TURN_S),
                                  b.turn("from b", timeout=FIRST_TURN_S))
    check_text_turn(ta, "Echo: from a")
    check_text_turn(tb, "Echo: from b")
    assert the_server(ogw) == pid
    # one session stopping leaves the server to the other
    await a.send("control", {"action": "terminate"})
    await a.until_state("terminated", timeout=15)
    await a.close()
    t = await b.turn("still here", timeout=TURN_S)
    check_text_turn(t, "Echo: still here")
    assert the_server(ogw) == pid
    await finish(b)


@pytest.mark.timeout_s(180)
async def test_think_gives_reasoning(ogw, base):
    c = await open_session(ogw, "think", work_dir(base, "think"))
    t = await c.turn("THINK about it", timeout=FIRST_TURN_S)
    r = t.one("reasoning")
    assert r.data["content"].strip() and "think" in r.data["content"].lower(), r
    assert t.index("reasoning") < t.index("message.start"), t.types()
    assert t.message.data["content"] == "Echo: THINK about it"
    assert t.text == t.message.data["content"]
    assert t.done.data["success"] is True and t.final_state == "idle"
    await finish(c)


# --------------------------------------------------------------------------
# Permissions


@pytest.mark.timeout_s(180)
async def test_bash_permission_allowed(ogw, base):
    wd = work_dir(base, "perm-allow")
    c = await open_session(ogw, "perm-allow", wd)
    cmd = "echo hi | tee hi.txt"
    await c.send("input", {"content": f"USE_BASH {cmd}"})
    evs, pr = await until_permission(c)
    check_permission_request(pr, cmd)
    pong = await c.assert_quiet(delay=0.5)  # opencode waits for the answer
    assert pong.data["state"] == "running"
    assert not os.path.exists(os.path.join(wd, "hi.txt")), "the tool ran before the answer"
    await c.send("permission_response", {"id": pr.data["id"], "allowed": True})
    rest = await c.collect_turn(timeout=TURN_S)
    t = hp.Turn(evs + rest.events)
    call, res = t.one("tool_call"), t.one("tool_result")
    assert call.data["name"] == "bash" and call.data["input"].get("command") == cmd, call
    assert pr.data["tool_use_id"] == call.data["id"]
    assert res.data["id"] == call.data["id"]
    assert res.data.get("error") is False, res
    assert "hi" in tool_output(res), res
    assert t.index("tool_call") < t.index("tool_result") < t.index("message")
    assert t.message.data["content"].startswith("Tool said: hi"), t.message
    assert t.done.data["success"] is True
    assert check_stats(t.done)["num_turns"] >= 2
    assert t.final_state == "idle" and len(t.of("done")) == 1
    with open(os.path.join(wd, "hi.txt")) as f:
        assert f.read().strip() == "hi"
    # an answer to a prompt that is gone is refused
    await c.send("permission_response", {"id": pr.data["id"], "allowed": True})
    await c.expect_error_reply("INVALID_MESSAGE")
    await finish(c)


@pytest.mark.timeout_s(180)
async def test_bash_permission_denied(ogw, base):
    wd = work_dir(base, "perm-deny")
    c = await open_session(ogw, "perm-deny", wd)
    cmd = "echo no | tee denied.txt"
    reason = "not allowed today"
    await c.send("input", {"content": f"USE_BASH {cmd}"})
    evs, pr = await until_permission(c)
    check_permission_request(pr, cmd)
    await c.send("permission_response", {"id": pr.data["id"], "allowed": False,
                                         "reason": reason})
    rest = await c.collect_turn(timeout=TURN_S)
    t = hp.Turn(evs + rest.events)
    res = t.one("tool_result")
    assert res.data.get("error") is True, res
    assert reason in tool_output(res), res
    assert reason in t.message.data["content"], t.message  # the model was told why
    assert len(t.of("done")) == 1 and t.index("tool_result") < t.index("done")
    assert t.done.data["success"] is True
    assert t.final_state == "idle"
    assert not os.path.exists(os.path.join(wd, "denied.txt")), "a denied command ran"
    await finish(c)


@pytest.mark.timeout_s(180)
async def test_permission_timeout_rejects(ocbin, standin, base, extra_gws):
    g = oc_gateway(standin, os.path.join(base, "home"), work_dir(base, "default"), ocbin,
                   name="perm_timeout_gw", settings={"worker.permission_timeout_ms": 1500})
    extra_gws.append(g)
    wd = work_dir(base, "perm-timeout")
    c = await open_session(g, "perm-timeout", wd)
    await c.send("input", {"content": "USE_BASH echo late | tee late.txt"})
    evs, pr = await until_permission(c)
    t0 = time.monotonic()
    rest = await c.collect_turn(timeout=TURN_S)  # nobody answers
    took = time.monotonic() - t0
    t = hp.Turn(evs + rest.events)
    res = t.one("tool_result")
    assert res.data.get("error") is True and "timed out" in tool_output(res), res
    assert 1.0 <= took < 30, f"rejected after {took:.1f}s (permission_timeout_ms=1500)"
    assert len(t.of("done")) == 1 and t.final_state == "idle"
    assert not os.path.exists(os.path.join(wd, "late.txt"))
    await c.send("permission_response", {"id": pr.data["id"], "allowed": True})
    err = await c.expect_error_reply("INVALID_MESSAGE")
    assert pr.data["id"] in err.data["message"]
    await finish(c)


@pytest.mark.timeout_s(180)
async def test_bypass_permissions_mode(ogw, base):
    """permission_mode bypassPermissions: per-session rule "*" allow."""
    wd = work_dir(base, "bypass")
    c = await connect_init(ogw, name="bypass", worker_type="opencode_server", key="bypass",
                           data={"config": {"work_dir": wd,
                                            "permission_mode": "bypassPermissions"}})
    t = await c.turn("USE_BASH echo free | tee free.txt", timeout=FIRST_TURN_S)
    assert not t.of("permission_request"), t.types()
    res = t.one("tool_result")
    assert res.data["error"] is False and "free" in tool_output(res), res
    assert t.done.data["success"] is True
    assert os.path.exists(os.path.join(wd, "free.txt"))
    await finish(c)


# --------------------------------------------------------------------------
# Interrupt


@pytest.mark.timeout_s(180)
async def test_interrupt(ogw, base):
    c = await open_session(ogw, "interrupt", work_dir(base, "interrupt"))
    pid = the_server(ogw)
    await c.send("input", {"content": "SLOWTEXT 200 50"})
    seen = await deltas_then(c, 4, timeout=FIRST_TURN_S)
    t_int = time.monotonic()
    await c.send("control", {"action": "interrupt"})
    rest = await c.collect_turn(timeout=TURN_S)
    took = time.monotonic() - t_int
    t = hp.Turn(seen + rest.events)
    assert took < 8, f"the interrupted turn took {took:.1f}s to end"
    dones = t.of("done")
    assert len(dones) == 1, t.types()
    assert dones[0].data["success"] is False, dones[0]
    assert dones[0].data["stats"].get("interrupted") is True, dones[0]
    assert not t.of("error"), f"an interrupt is not an error: {t.of('error')}"
    assert t.final_state == "idle"
    assert len(t.deltas) < 200, "the turn ran to its end"
    starts, ends = t.of("message.start"), t.of("message.end")
    assert [e.data["id"] for e in starts] == [e.data["message_id"] for e in ends], t.types()
    assert t.index("message.end") < t.index("done")
    assert t.message.data["content"] == t.text
    # nothing more from the cut turn
    pong = await c.assert_quiet(delay=1.5)
    assert pong.data["state"] == "idle"
    # the same server takes the next turn
    t2 = await c.turn("after the interrupt", timeout=TURN_S)
    check_text_turn(t2, "Echo: after the interrupt")
    assert the_server(ogw) == pid
    await finish(c)


@pytest.mark.timeout_s(180)
async def test_interrupt_then_input_at_once(ogw, base):
    """The next input right behind the interrupt: the tail of the aborted
    turn (a second idle, the final text) must not end or pollute it."""
    c = await open_session(ogw, "interrupt-fast", work_dir(base, "interrupt-fast"))
    await c.send("input", {"content": "SLOWTEXT 200 50"})
    seen = await deltas_then(c, 3, timeout=FIRST_TURN_S)
    await c.send("control", {"action": "interrupt"})
    await c.send("input", {"content": "right after"})
    t1 = hp.Turn(seen + (await c.collect_turn(timeout=TURN_S)).events)
    assert t1.done.data["stats"].get("interrupted") is True
    t2 = await c.collect_turn(timeout=TURN_S)
    check_text_turn(t2, "Echo: right after")
    await finish(c)


@pytest.mark.timeout_s(180)
async def test_interrupt_while_permission_waits(ogw, base):
    wd = work_dir(base, "interrupt-perm")
    c = await open_session(ogw, "interrupt-perm", wd)
    await c.send("input", {"content": "USE_BASH echo x | tee x.txt"})
    evs, pr = await until_permission(c)
    await c.send("control", {"action": "interrupt"})
    rest = await c.collect_turn(timeout=TURN_S)
    t = hp.Turn(evs + rest.events)
    assert len(t.of("done")) == 1, t.types()
    assert t.done.data["success"] is False and t.done.data["stats"].get("interrupted") is True
    assert not t.of("error"), t.types()
    res = t.of("tool_result")
    assert len(res) <= 1 and all(r.data["error"] is True for r in res), res
    assert t.final_state == "idle"
    # the prompt is gone: a late answer is refused and starts nothing
    await c.send("permission_response", {"id": pr.data["id"], "allowed": True})
    await c.expect_error_reply("INVALID_MESSAGE")
    pong = await c.assert_quiet(delay=1.0)
    assert pong.data["state"] == "idle"
    assert not os.path.exists(os.path.join(wd, "x.txt"))
    # the next turn runs (the model first sees the aborted call's result,
    # "Tool execution aborted", which the stand-in answers with priority)
    t2 = await c.turn("after that", timeout=TURN_S)
    assert t2.done.data["success"] is True, t2.done
    assert len(t2.of("done")) == 1 and t2.final_state == "idle"
    assert t2.text == t2.message.data["content"] != ""
    assert not os.path.exists(os.path.join(wd, "x.txt"))
    await finish(c)


# --------------------------------------------------------------------------
# Lifecycle


@pytest.mark.timeout_s(180)
async def test_server_stops_with_last_session_and_restarts(ocbin, standin, base, extra_gws):
    g = oc_gateway(standin, os.path.join(base, "home"), work_dir(base, "default"), ocbin,
                   name="lifecycle_gw")
    extra_gws.append(g)
    c = await open_session(g, "life", work_dir(base, "life"))
    pid = the_server(g)
    t = await c.turn("REMEMBER banana", timeout=FIRST_TURN_S)
    assert t.done.data["success"] is True
    await c.send("control", {"action": "terminate"})
    await c.until_state("terminated", timeout=15)
    assert not pid_alive(pid), "the server outlived its last session"
    assert server_pids(g) == []
    # the next input starts a new server; the opencode session is found again
    t = await c.turn("RECALL", timeout=FIRST_TURN_S)
    assert t.events[0].type == "state" and t.events[0].data["state"] == "running"
    assert t.message.data["content"] == "Recalled: banana", t.message
    pid2 = the_server(g)
    assert pid2 != pid
    await c.close()


@pytest.mark.timeout_s(180)
async def test_server_killed_crashes_sessions(ocbin, standin, base, extra_gws):
    g = oc_gateway(standin, os.path.join(base, "home"), work_dir(base, "default"), ocbin,
                   name="crash_gw")
    extra_gws.append(g)
    c = await open_session(g, "crash", work_dir(base, "crash"))
    pid = the_server(g)
    await c.send("input", {"content": "SLOWTEXT 100 50"})
    seen = await deltas_then(c, 3, timeout=FIRST_TURN_S)
    os.killpg(pid, 9)
    evs = seen + await c.until_state("terminated", timeout=TURN_S)
    t = hp.Turn(evs)
    err = t.one("error")
    assert err.data["code"] == "WORKER_CRASH", err
    assert t.done.data["success"] is False
    assert t.index("error") < t.index("done")
    assert [e.data["id"] for e in t.of("message.start")] == [
        e.data["message_id"] for e in t.of("message.end")], "a message left open by the crash"
    # the next input restarts the server and finds the opencode session
    # again; it still holds the cut prompt, which opencode answers together
    # with the new one (the stand-in sees "SLOWTEXT 100 50\nback again")
    t2 = await c.turn("back again", timeout=FIRST_TURN_S)
    assert t2.done.data["success"] is True, t2.done
    assert t2.message.data["content"] == words(100), t2.message
    assert t2.text == t2.message.data["content"]
    assert the_server(g) != pid
    await c.close()


async def test_missing_binary_is_worker_unavailable(standin, base, extra_gws):
    missing = os.path.join(base, "no-such-opencode")
    g = oc_gateway(standin, os.path.join(base, "home"), work_dir(base, "default"),
                   bin_path=missing, name="nobin_gw")
    extra_gws.append(g)
    c = await Client.connect(g, name="nobin")
    ack = await c.init(worker_type="opencode_server", key="nobin", expect_ok=False)
    d = ack.data
    assert d["state"] == "deleted" and d["code"] == "WORKER_UNAVAILABLE", d
    assert missing in d["error"], d
    code, reason, msgs = await c.expect_close()
    assert code == 1000 and msgs == [], (code, reason, msgs)
    assert agent_pids(g) == []


@pytest.mark.timeout_s(240)
async def test_resume_after_gateway_restart(ocbin, standin, base, extra_gws):
    """The opencode session (kept in opencode's own store under HOME) is found
    again by its title after the gateway restarted."""
    g = oc_gateway(standin, os.path.join(base, "home"), work_dir(base, "default"), ocbin,
                   name="restart_gw")
    extra_gws.append(g)
    wd = work_dir(base, "restart")
    c = await open_session(g, "restart", wd)
    t = await c.turn("REMEMBER kiwi", timeout=FIRST_TURN_S)
    assert t.done.data["success"] is True
    sid = c.session_id
    await c.close()
    g.stop()
    assert [p for p in logged_server_pids(g) if pid_alive(p)] == [], "server outlived the gateway"
    g.start()
    c = await Client.connect(g, name="after")
    ack = await c.init(worker_type="opencode_server", key="restart",
                       data={"config": {"work_dir": wd}})
    assert ack.data["session_id"] == sid
    await hp.drain_handshake(c)
    t = await c.turn("RECALL", timeout=FIRST_TURN_S)
    assert t.message.data["content"] == "Recalled: kiwi", t.message
    assert re.search(r"opencode session ses_\S+ \(resumed\)", g.log_text()), \
        "the adapter did not find the opencode session again"
    await c.close()
