"""The claude_code adapter end to end: the real Claude Code CLI (pinned
version, installed by scripts/install-claude.sh) run by the gateway, offline
against the Anthropic API stand-in (tests/standin/anthropic_standin.py), with
a private HOME. Every test asserts on the AEP stream as a client sees it (hp.py
validates envelopes and seq on every message).

One stand-in and one gateway serve the module; each test uses its own session
(its own key and work dir). Tests that need another configuration or a
restart start their own gateway (on the same stand-in).

Stand-in scenarios (keywords in the prompt): plain text -> "Echo: <text>",
LONGTEXT N / SLOWTEXT N MS -> "word1 ... wordN", USE_BASH <cmd> -> a Bash
tool call ("Tool said: <output>" after the result), REMEMBER w / RECALL,
THINK (a thinking block first), FAIL500 (HTTP 500, not retried).
"""

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
import uuid

import pytest

import hp
import claude_env
from claude_env import agent_pid, pid_alive
from hp import Client, connect_init

TEXT_TURN_TYPES = {"state", "message.start", "message.delta", "message.end", "message", "done"}
FIRST_TURN_S = 60  # the CLI starts in ~1 s; be generous on a loaded CI machine
TURN_S = 45


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def cbin():
    return claude_env.claude_bin()


@pytest.fixture(scope="module")
def standin():
    s = claude_env.Standin().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def base():
    """A private HOME (the CLI writes ~/.claude there) and work dirs."""
    d = tempfile.mkdtemp(prefix="hotplex-claude-e2e-")
    os.makedirs(os.path.join(d, "home"))
    os.makedirs(os.path.join(d, "work", "default"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cgw(cbin, standin, base):
    # CLAUDECODE set and even whitelisted: the gateway must still drop it
    g = claude_env.claude_gateway(standin, os.path.join(base, "home"),
                                  os.path.join(base, "work", "default"), cbin, name="claude_gw",
                                  settings={"worker.env_pass": "CLAUDECODE"},
                                  env={"CLAUDECODE": "1"})
    yield g
    g.finish(check=True)


@pytest.fixture
def extra_gws():
    """Gateways a test starts itself; stopped (exit 0 asserted) at teardown."""
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
    """Connect and init a claude_code session with its own work dir; the
    handshake's own events (state running: the agent was spawned) are drained."""
    return await connect_init(gw, name=name or key, worker_type="claude_code", key=key,
                              data={"config": {"work_dir": wd}}, **kw)


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def the_agent(gw, c):
    pid = agent_pid(gw, c.session_id)
    assert pid, (f"no agent process of session {c.session_id} among the gateway's children "
                 f"{claude_env.agent_pids(gw)}")
    return pid


def flag_value(argv, flag):
    assert flag in argv, f"{flag} not on the agent's command line: {argv}"
    return argv[argv.index(flag) + 1]


def words(n):
    return " ".join(f"word{i}" for i in range(1, n + 1))


def check_stats(done):
    st = done.data["stats"]
    assert hp.is_int(st.get("duration_ms")) and st["duration_ms"] >= 0, st
    assert hp.is_int(st.get("num_turns")) and st["num_turns"] >= 1, st
    return st


def check_text_turn(t, text, expect_running=None):
    """A streamed text turn of the CLI: message.start, deltas (one message),
    message.end, message (the full text), done{success}, state idle."""
    types = t.types()
    assert set(types) <= TEXT_TURN_TYPES, f"unexpected events in a text turn: {types}"
    start, end, msg, done = t.one("message.start"), t.one("message.end"), t.message, t.done
    i_start, i_end, i_msg, i_done = (t.index("message.start"), t.index("message.end"),
                                     t.index("message"), t.index("done"))
    assert i_start < i_end < i_msg < i_done, f"order: {types}"
    deltas = t.deltas
    assert deltas, f"no message.delta before done: {types}"
    for e in deltas:
        assert i_start < t.events.index(e) < i_end, f"delta outside start/end: {types}"
        assert e.data["message_id"] == start.data["id"]
    assert end.data["message_id"] == start.data["id"]
    assert msg.data["id"] == start.data["id"]
    assert msg.data["role"] == "assistant" and msg.data["content_type"] == "text"
    assert t.text == msg.data["content"], (
        f"deltas concatenate to {t.text!r}, message says {msg.data['content']!r}")
    assert msg.data["content"] == text, f"message {msg.data['content']!r}, expected {text!r}"
    assert done.data["success"] is True, done.raw
    check_stats(done)
    assert types[-1] == "state" and t.events[-1].data["state"] == "idle", (
        f"the turn must end with state idle after done: {types}")
    assert types[i_done + 1:] == ["state"], types
    before = t.events[:i_start]
    assert all(e.type == "state" and e.data["state"] == "running" for e in before), before
    if expect_running:
        assert len(before) == 1, f"expected state running first: {types}"
    assert all(e.stream for e in t.events)


async def deltas_then(c, n, timeout=TURN_S):
    """Receive until n message.delta events arrived; returns everything received."""
    got = []
    deadline = time.monotonic() + timeout
    while sum(e.type == "message.delta" for e in got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"{c.name}: fewer than {n} deltas within {timeout}s: {got[-6:]}"
        ev = await c.recv(left)
        assert ev.type != "done", f"{c.name}: turn ended before {n} deltas: {got}"
        got.append(ev)
    return got


async def finish(c, timeout=15):
    """Stop the session's agent (frees its memory for the next tests) and close."""
    try:
        await c.send("control", {"action": "terminate"})
        await c.until_state("terminated", timeout=timeout)
    finally:
        await c.close()


def tool_output(ev):
    out = ev.data["output"]
    return out if isinstance(out, str) else json.dumps(out)


# --------------------------------------------------------------------------
# 1, 2, 6: text turns


@pytest.mark.timeout_s(120)
async def test_streamed_text_turn(cgw, base):
    wd = work_dir(base, "text")
    c = await open_session(cgw, "text", wd)
    pid = the_agent(cgw, c)
    argv = cmdline(pid)
    assert flag_value(argv, "--session-id") == c.session_id, argv
    assert "--resume" not in argv
    for f in ("-p", "--verbose", "--include-partial-messages"):
        assert f in argv, argv
    assert flag_value(argv, "--input-format") == "stream-json"
    assert flag_value(argv, "--output-format") == "stream-json"
    assert flag_value(argv, "--permission-prompt-tool") == "stdio"
    assert "--dangerously-skip-permissions" not in argv
    assert os.path.realpath(f"/proc/{pid}/cwd") == wd
    env = claude_env.proc_env(pid)
    assert env.get("HOTPLEX_WORKER_TYPE") == "claude_code"
    assert env.get("CLAUDE_CODE_MAX_RETRIES") == "0"
    assert "CLAUDECODE" not in env
    assert env.get("HOTPLEX_SESSION_ID") == c.session_id
    assert env.get("HOME") == os.path.join(base, "home")
    assert env.get("ANTHROPIC_BASE_URL", "").startswith("http://127.0.0.1:")
    assert claude_env.NOT_PASSED not in env, "the gateway's environment leaked to the agent"

    text = "hello there, friend of mine"
    t = await c.turn(text, timeout=FIRST_TURN_S)
    check_text_turn(t, f"Echo: {text}")
    assert len(t.deltas) >= 4, f"one delta per word expected, got {len(t.deltas)}"
    pong, before = await c.ping()
    assert before == [] and pong.data["state"] == "idle"
    await finish(c)


@pytest.mark.timeout_s(120)
async def test_longtext_200_deltas(cgw, base):
    c = await open_session(cgw, "longtext", work_dir(base, "longtext"))
    t = await c.turn("LONGTEXT 200", timeout=FIRST_TURN_S)
    check_text_turn(t, words(200))
    assert len(t.deltas) == 200, f"{len(t.deltas)} deltas for 200 words"
    for i, e in enumerate(t.deltas, 1):
        assert e.data["content"].strip() == f"word{i}", f"delta {i}: {e.data['content']!r}"
    await finish(c)


@pytest.mark.timeout_s(120)
async def test_two_turns_same_agent(cgw, base):
    c = await open_session(cgw, "two-turns", work_dir(base, "two-turns"))
    pid = the_agent(cgw, c)
    t1 = await c.turn("first turn", timeout=FIRST_TURN_S)
    check_text_turn(t1, "Echo: first turn")
    t2 = await c.turn("second turn", timeout=TURN_S)
    check_text_turn(t2, "Echo: second turn", expect_running=True)
    assert t2.events[0].seq == t1.events[-1].seq + 1, "seq must be contiguous across turns"
    assert t1.message.data["id"] != t2.message.data["id"]
    assert the_agent(cgw, c) == pid, "the agent process changed between turns"
    await finish(c)


# --------------------------------------------------------------------------
# 3, 4: permissions


async def quiet_but(c, allowed, delay=0.5):
    """After `delay`, a ping: only events of the `allowed` types may come
    before its pong. Returns (pong, those events)."""
    await asyncio.sleep(delay)
    pong, before = await c.ping()
    assert all(e.type in allowed for e in before), f"{c.name}: unexpected {before}"
    return pong, before


async def until_permission(c, timeout=FIRST_TURN_S):
    evs = await c.until("permission_request", timeout=timeout)
    assert not [e for e in evs if e.type in ("done", "tool_result")], evs
    return evs, evs[-1]


def check_permission_request(pr, command):
    d = pr.data
    assert pr.stream
    assert d["tool_name"] == "Bash", d
    assert d["id"], d
    assert d["input"].get("command") == command, d
    assert isinstance(d["args"], list) and len(d["args"]) == 1, d
    assert json.loads(d["args"][0]) == d["input"], d


@pytest.mark.timeout_s(150)
async def test_bash_permission_allowed(cgw, base):
    wd = work_dir(base, "perm-allow")
    c = await open_session(cgw, "perm-allow", wd)
    pid = the_agent(cgw, c)

    # AEP permission_response
    cmd = "echo hi | tee hi.txt"
    await c.send("input", {"content": f"USE_BASH {cmd}"})
    evs, pr = await until_permission(c)
    check_permission_request(pr, cmd)
    # the CLI waits for the answer (its tool_call may still trail the prompt)
    pong, extra = await quiet_but(c, {"tool_call"})
    assert pong.data["state"] == "running"
    evs += extra
    assert not os.path.exists(os.path.join(wd, "hi.txt")), "the tool ran before the answer"
    await c.send("permission_response", {"id": pr.data["id"], "allowed": True})
    rest = await c.collect_turn(timeout=TURN_S)
    t = hp.Turn(evs + rest.events)
    call, res = t.one("tool_call"), t.one("tool_result")
    assert call.data["name"] == "Bash" and call.data["input"].get("command") == cmd, call
    if "tool_use_id" in pr.data:
        assert pr.data["tool_use_id"] == call.data["id"]
    assert res.data["id"] == call.data["id"]
    assert res.data.get("error") is not True, res
    assert "hi" in tool_output(res), res
    assert t.index("permission_request") < t.index("tool_result") < t.index("message")
    assert t.message.data["content"] == "Tool said: hi", t.message
    assert t.done.data["success"] is True
    assert check_stats(t.done)["num_turns"] >= 2
    assert t.final_state == "idle" and len(t.of("done")) == 1
    with open(os.path.join(wd, "hi.txt")) as f:
        assert f.read().strip() == "hi"

    # compat: input.metadata.permission_response{request_id, allowed}
    cmd2 = "echo there | tee there.txt"
    await c.send("input", {"content": f"USE_BASH {cmd2}"})
    evs, pr = await until_permission(c, timeout=TURN_S)
    check_permission_request(pr, cmd2)
    await c.send("input", {"content": "", "metadata": {
        "permission_response": {"request_id": pr.data["id"], "allowed": True}}})
    rest = await c.collect_turn(timeout=TURN_S)
    t = hp.Turn(evs + rest.events)
    res = t.one("tool_result")
    assert res.data.get("error") is not True and "there" in tool_output(res), res
    assert t.message.data["content"] == "Tool said: there"
    assert t.done.data["success"] is True and len(t.of("done")) == 1
    assert os.path.exists(os.path.join(wd, "there.txt"))
    # the answer did not start a turn of its own
    pong = await c.assert_quiet(delay=0.5)
    assert pong.data["state"] == "idle"
    assert the_agent(cgw, c) == pid
    await finish(c)


@pytest.mark.timeout_s(120)
async def test_bash_permission_denied(cgw, base):
    wd = work_dir(base, "perm-deny")
    c = await open_session(cgw, "perm-deny", wd)
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
    # the model was told no and answered
    assert reason in t.message.data["content"], t.message
    assert t.message.data["content"].startswith("Tool said:")
    assert len(t.of("done")) == 1 and t.index("tool_result") < t.index("done")
    assert t.final_state == "idle"
    assert not os.path.exists(os.path.join(wd, "denied.txt")), "a denied command ran"
    await finish(c)


@pytest.mark.timeout_s(120)
async def test_permission_timeout_denies(cbin, standin, base, extra_gws):
    g = claude_env.claude_gateway(standin, os.path.join(base, "home"),
                                  work_dir(base, "default"), cbin, name="perm_timeout_gw",
                                  settings={"worker.permission_timeout_ms": 1500})
    extra_gws.append(g)
    wd = work_dir(base, "perm-timeout")
    c = await open_session(g, "perm-timeout", wd)
    cmd = "echo late | tee late.txt"
    await c.send("input", {"content": f"USE_BASH {cmd}"})
    evs, pr = await until_permission(c)
    t0 = time.monotonic()
    rest = await c.collect_turn(timeout=TURN_S)  # nobody answers
    took = time.monotonic() - t0
    t = hp.Turn(evs + rest.events)
    res = t.one("tool_result")
    assert res.data.get("error") is True and "timed out" in tool_output(res), res
    assert 0.7 <= took < 30, f"denied after {took:.1f}s (permission_timeout_ms=1500)"
    assert len(t.of("done")) == 1 and t.final_state == "idle"
    assert not os.path.exists(os.path.join(wd, "late.txt"))
    # an answer that comes too late is refused, and starts nothing
    await c.send("permission_response", {"id": pr.data["id"], "allowed": True})
    err = await c.expect_error_reply("INVALID_MESSAGE")
    assert pr.data["id"] in err.data["message"]
    await finish(c)


# --------------------------------------------------------------------------
# 5: interrupt


@pytest.mark.timeout_s(120)
async def test_interrupt_keeps_agent(cgw, base):
    c = await open_session(cgw, "interrupt", work_dir(base, "interrupt"))
    pid = the_agent(cgw, c)
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
    # every started message is closed, before done
    starts, ends = t.of("message.start"), t.of("message.end")
    assert [e.data["id"] for e in starts] == [e.data["message_id"] for e in ends], t.types()
    assert t.index("message.end") < t.index("done")
    if t.of("message"):
        assert t.message.data["content"] == t.text
    # nothing more from the cut turn
    pong = await c.assert_quiet(delay=1.0)
    assert pong.data["state"] == "idle"
    # the same process takes the next turn
    t2 = await c.turn("after the interrupt", timeout=TURN_S)
    assert t2.done.data["success"] is True, t2.done
    assert t2.message.data["content"].startswith("Echo: ")
    assert "after the interrupt" in t2.message.data["content"]
    assert t2.text == t2.message.data["content"]
    assert t2.final_state == "idle"
    assert the_agent(cgw, c) == pid, "the agent was restarted by the interrupt"
    await finish(c)


@pytest.mark.timeout_s(120)
async def test_interrupt_while_permission_waits(cgw, base):
    wd = work_dir(base, "interrupt-perm")
    c = await open_session(cgw, "interrupt-perm", wd)
    pid = the_agent(cgw, c)
    await c.send("input", {"content": "USE_BASH echo x | tee x.txt"})
    evs, pr = await until_permission(c)
    await c.send("control", {"action": "interrupt"})
    rest = await c.collect_turn(timeout=TURN_S)
    t = hp.Turn(evs + rest.events)
    assert len(t.of("done")) == 1, t.types()
    assert t.done.data["success"] is False and t.done.data["stats"].get("interrupted") is True
    res = t.one("tool_result")  # the CLI tells the model the call was rejected
    assert res.data.get("error") is True, res
    assert t.final_state == "idle"
    assert not os.path.exists(os.path.join(wd, "x.txt"))
    # the prompt is gone: a late answer is refused and starts nothing
    await c.send("permission_response", {"id": pr.data["id"], "allowed": True})
    await c.expect_error_reply("INVALID_MESSAGE")
    pong = await c.assert_quiet(delay=0.5)
    assert pong.data["state"] == "idle"
    assert not os.path.exists(os.path.join(wd, "x.txt"))
    assert the_agent(cgw, c) == pid
    await finish(c)


# --------------------------------------------------------------------------
# 7: disconnect and resume mid-turn


@pytest.mark.timeout_s(120)
async def test_reconnect_mid_turn(cgw, base):
    wd = work_dir(base, "reconnect")
    c = await open_session(cgw, "reconnect", wd, name="before")
    pid = the_agent(cgw, c)
    n = 60
    await c.send("input", {"content": f"SLOWTEXT {n} 50"})
    seen = await deltas_then(c, 5, timeout=FIRST_TURN_S)
    last = c.pos
    await c.close()
    await asyncio.sleep(0.5)  # the turn goes on without a client

    c2 = await Client.connect(cgw, name="after")
    ack = await c2.init(worker_type="claude_code", key="reconnect", last_seq=last,
                        data={"config": {"work_dir": wd}})
    assert ack.data["session_id"] == c.session_id
    assert ack.data["last_seq"] >= last
    rest = await c2.collect_turn(timeout=TURN_S)
    # hp checked: the first event after the ack is last+1, contiguous, no duplicates
    assert rest.events[0].seq == last + 1
    t = hp.Turn(seen + rest.events)
    assert [e.seq for e in t.events] == list(range(t.events[0].seq, t.events[-1].seq + 1))
    check_text_turn(t, words(n))
    assert len(t.deltas) == n
    assert the_agent(cgw, c2) == pid, "the agent was restarted by the reconnect"
    await finish(c2)


# --------------------------------------------------------------------------
# 8: the agent is killed mid-turn; resume with --resume


@pytest.mark.timeout_s(150)
async def test_agent_killed_then_resumed(cgw, base):
    c = await open_session(cgw, "crash", work_dir(base, "crash"))
    pid = the_agent(cgw, c)
    sid_arg = flag_value(cmdline(pid), "--session-id")
    t = await c.turn("REMEMBER banana", timeout=FIRST_TURN_S)
    check_text_turn(t, "Echo: REMEMBER banana")

    await c.send("input", {"content": "SLOWTEXT 100 50"})
    seen = await deltas_then(c, 3)
    os.kill(pid, signal.SIGKILL)
    evs = seen + await c.until_state("terminated", timeout=TURN_S)
    t = hp.Turn(evs)
    err = t.one("error")
    assert err.data["code"] == "WORKER_CRASH", err
    assert err.stream
    assert t.done.data["success"] is False, t.done
    term = evs[-1]
    assert t.index("error") < t.index("done") < evs.index(term), t.types()
    assert len(t.of("done")) == 1
    assert [e.data["id"] for e in t.of("message.start")] == [
        e.data["message_id"] for e in t.of("message.end")], "a message left open by the crash"
    pong = await c.assert_quiet(delay=0.5)
    assert pong.data["state"] == "terminated"
    await hp.wait_for(lambda: not pid_alive(pid), timeout=5, what="killed agent gone")
    assert agent_pid(cgw, c.session_id) is None

    # the next input starts the agent again on the same transcript
    t2 = await c.turn("RECALL", timeout=FIRST_TURN_S)
    assert t2.events[0].type == "state" and t2.events[0].data["state"] == "running", t2.types()
    assert t2.events[0].data.get("message") == "resumed", t2.events[0]
    assert t2.done.data["success"] is True, t2.done
    assert t2.message.data["content"] == "Recalled: banana", t2.message
    assert t2.text == t2.message.data["content"]
    assert t2.final_state == "idle"
    pid2 = the_agent(cgw, c)
    assert pid2 != pid
    argv = cmdline(pid2)
    assert flag_value(argv, "--resume") == sid_arg and "--session-id" not in argv, argv
    await finish(c)


# --------------------------------------------------------------------------
# 9, 10: start-up failures


async def test_missing_claude_binary(standin, base, extra_gws):
    missing = "/nonexistent/claude"
    g = claude_env.claude_gateway(standin, os.path.join(base, "home"),
                                  work_dir(base, "default"), bin_path=missing, name="nobin_gw")
    extra_gws.append(g)
    c = await Client.connect(g, name="nobin")
    ack = await c.init(worker_type="claude_code", key="nobin", expect_ok=False)
    d = ack.data
    assert d["state"] == "deleted" and d["code"] == "WORKER_UNAVAILABLE", d
    assert missing in d["error"], d
    code, reason, msgs = await c.expect_close()
    assert code == 1000 and msgs == [], (code, reason, msgs)
    assert claude_env.agent_pids(g) == []
    # the failed init left no session behind: a second try fails the same way
    c = await Client.connect(g, name="nobin2")
    ack = await c.init(worker_type="claude_code", key="nobin", expect_ok=False)
    assert ack.data["code"] == "WORKER_UNAVAILABLE"
    await c.expect_close()


async def test_forbidden_work_dir(cgw):
    probe = f"/etc/hotplex-e2e-{uuid.uuid4().hex[:8]}"
    cases = ["/etc", "/tmp/../etc/x", "/tmp/.." + probe]
    existed = os.path.exists("/etc/x")
    for i, wd in enumerate(cases):
        c = await Client.connect(cgw, name=f"forbidden{i}")
        ack = await c.init(worker_type="claude_code", key=f"forbidden-{i}",
                           data={"config": {"work_dir": wd}}, expect_ok=False)
        d = ack.data
        assert d["state"] == "deleted" and d["code"] == "CONFIG_INVALID", (wd, d)
        assert "work_dir" in d["error"], d
        code, _, msgs = await c.expect_close()
        assert code == 1000 and msgs == []
    assert os.path.exists("/etc/x") == existed, "/etc/x was created"
    assert not os.path.exists(probe), f"{probe} was created"


# --------------------------------------------------------------------------
# 11, 12: reasoning, API failure


@pytest.mark.timeout_s(120)
async def test_think_gives_reasoning_first(cgw, base):
    c = await open_session(cgw, "think", work_dir(base, "think"))
    t = await c.turn("THINK about it", timeout=FIRST_TURN_S)
    r = t.one("reasoning")
    assert r.stream and r.data["content"].strip(), r
    assert "think" in r.data["content"].lower(), r
    assert t.index("reasoning") < t.index("message.start"), t.types()
    assert r.data["id"] != t.message.data["id"]
    assert t.message.data["content"] == "Echo: THINK about it"
    assert t.text == t.message.data["content"]
    assert t.done.data["success"] is True and t.final_state == "idle"
    await finish(c)


@pytest.mark.timeout_s(150)
async def test_api_failure_then_usable(cgw, base, standin):
    c = await open_session(cgw, "fail500", work_dir(base, "fail500"))
    pid = the_agent(cgw, c)
    t = await c.turn("FAIL500", timeout=FIRST_TURN_S)
    err = t.one("error")
    assert err.stream and err.data["code"] == "INTERNAL_ERROR", err
    assert "500" in err.data["message"], err
    assert len(t.of("done")) == 1 and t.index("error") < t.index("done"), t.types()
    assert t.done.data["success"] is False, t.done
    assert t.final_state == "idle"
    pong = await c.assert_quiet(delay=0.5)
    assert pong.data["state"] == "idle"

    # The same agent takes the next input. (The CLI keeps the failed prompt
    # in its history and sends it merged with the next one, so the stand-in
    # sees "FAIL500 ..." again and fails it too: that is the CLI, not us.)
    t2 = await c.turn("after the failure", timeout=TURN_S)
    assert len(t2.of("done")) == 1 and t2.final_state == "idle", t2.types()
    assert the_agent(cgw, c) == pid
    await hp.wait_for(lambda: "after the failure" in standin.log_tail(20000), timeout=5,
                      what="the next prompt reached the API")

    # a fresh agent context on the same session answers normally
    await c.send("control", {"action": "reset"})
    evs = await c.until("state", lambda e: e.data["state"] == "running", timeout=TURN_S)
    assert not [e for e in evs if e.type == "error"], evs
    t3 = await c.turn("hello again", timeout=FIRST_TURN_S)
    check_text_turn(t3, "Echo: hello again")
    await finish(c)


# --------------------------------------------------------------------------
# 13: gateway restart keeps the session and the CLI's context


@pytest.mark.timeout_s(150)
async def test_gateway_restart_resumes_context(cbin, standin, base, extra_gws):
    home = os.path.join(base, "home-restart")
    os.makedirs(home, exist_ok=True)
    g = claude_env.claude_gateway(standin, home, work_dir(base, "default"), cbin,
                                  name="restart_gw")
    extra_gws.append(g)
    wd = work_dir(base, "restart")
    c = await open_session(g, "restart", wd)
    sid = c.session_id
    pid = the_agent(g, c)
    t = await c.turn("REMEMBER kiwi", timeout=FIRST_TURN_S)
    check_text_turn(t, "Echo: REMEMBER kiwi")
    head = c.pos
    await c.close()

    g.stop()  # SIGTERM, exit 0 asserted
    await hp.wait_for(lambda: not pid_alive(pid), timeout=10, what="agent stopped with gateway")
    g.start()  # same data dir, same HOME

    c2 = await Client.connect(g, name="restarted")
    ack = await c2.init(worker_type="claude_code", key="restart", last_seq=head,
                        data={"config": {"work_dir": wd}})
    assert ack.data["session_id"] == sid, "a new session after the restart"
    assert ack.data["last_seq"] >= head
    extra = await c2.until_seq(ack.data["last_seq"], timeout=TURN_S)
    assert all(e.type == "state" for e in extra), extra
    assert extra and extra[-1].data["state"] == "running", extra
    assert extra[-1].data.get("message") == "resumed", extra
    pid2 = the_agent(g, c2)
    argv = cmdline(pid2)
    assert flag_value(argv, "--resume") == sid and "--session-id" not in argv, argv
    t2 = await c2.turn("RECALL", timeout=FIRST_TURN_S)
    assert t2.events[0].seq == ack.data["last_seq"] + 1, "seq must continue"
    assert t2.done.data["success"] is True, t2.done
    assert t2.message.data["content"] == "Recalled: kiwi", t2.message
    assert t2.final_state == "idle"
    await finish(c2)


@pytest.mark.timeout_s(150)
async def test_lost_session_record_resumes_transcript(cgw, cbin, standin, base, extra_gws):
    """The CLI's transcript exists but the gateway has no record of the session
    (another data dir, same HOME): the CLI refuses --session-id ("already in
    use") and the adapter respawns it once with --resume, replaying the input."""
    key, wd = "lost-record", work_dir(base, "lost-record")
    c = await open_session(cgw, key, wd)
    sid = c.session_id
    assert sid == hp.derived_session_id(key, wd, worker_type="claude_code")
    t = await c.turn("REMEMBER plum", timeout=FIRST_TURN_S)
    check_text_turn(t, "Echo: REMEMBER plum")
    await finish(c)

    g = claude_env.claude_gateway(standin, os.path.join(base, "home"), work_dir(base, "default"),
                                  cbin, name="fresh_data_gw")  # new data dir
    extra_gws.append(g)
    c2 = await Client.connect(g, name="lost")
    ack = await c2.init(worker_type="claude_code", key=key, data={"config": {"work_dir": wd}})
    assert ack.data["session_id"] == sid
    await c2.send("input", {"content": "RECALL"})  # at once: written before the refusal
    await hp.drain_handshake(c2)
    t2 = await c2.collect_turn(timeout=FIRST_TURN_S)
    assert not t2.of("error"), t2.types()
    assert t2.done.data["success"] is True, t2.done
    assert t2.message.data["content"] == "Recalled: plum", t2.message
    argv = cmdline(the_agent(g, c2))
    assert flag_value(argv, "--resume") == sid and "--session-id" not in argv, argv
    assert "already in use" in g.log_text(), "the respawn was not logged"
    await finish(c2)


# --------------------------------------------------------------------------
# An agent that cannot run (spec claude-code.md: as root, bypassPermissions
# makes the CLI exit at once; the gateway must say so with WORKER_UNAVAILABLE
# and the CLI's message, and must not hang).


@pytest.mark.skipif(os.geteuid() != 0, reason="the CLI refuses bypassPermissions only as root")
@pytest.mark.timeout_s(120)
async def test_bypass_permissions_as_root_reported(cgw, base):
    """The gateway refuses up front, at init, with the CLI's reason; it does
    not start an agent that would exit at once and crash every resume."""
    c = await Client.connect(cgw, name="bypass")
    ack = await c.init(worker_type="claude_code", key="bypass", expect_ok=False, data={"config": {
        "work_dir": work_dir(base, "bypass"), "permission_mode": "bypassPermissions"}})
    d = ack.data
    assert d["state"] == "deleted" and d["code"] == "WORKER_UNAVAILABLE", d
    assert "root" in d["error"] and "IS_SANDBOX" in d["error"], d
    code, _, _ = await c.expect_close()
    assert code == 1000
