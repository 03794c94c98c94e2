"""Event streams of the echo agent: turns, fan-out, ping, permissions, errors,
crashes, interrupts, queued inputs, resume, control actions, max conns."""

import asyncio
import time

import pytest

import hp
from hp import Client, connect_init

TEXT_TURN_TYPES = {"state", "message.start", "message.delta", "message.end", "message", "done"}


def check_text_turn(t, text, expect_running=None):
    """A plain echo turn: [state running] message.start, deltas, message.end,
    message, done{success}, state idle - in that order, all one message."""
    types = t.types()
    assert set(types) <= TEXT_TURN_TYPES, f"unexpected events in a text turn: {types}"
    start = t.one("message.start")
    end = t.one("message.end")
    msg = t.message
    done = t.done
    i_start, i_end = t.index("message.start"), t.index("message.end")
    i_msg, i_done = t.index("message"), t.index("done")
    deltas = t.deltas
    assert len(deltas) >= 1
    for e in deltas:
        i = t.events.index(e)
        assert i_start < i < i_end, f"delta outside message.start/end: {types}"
        assert e.data["message_id"] == start.data["id"]
    assert i_start < i_end < i_msg < i_done, f"order: {types}"
    assert end.data["message_id"] == start.data["id"]
    assert msg.data["id"] == start.data["id"], "message.id must be the streamed message's id"
    assert msg.data["role"] == "assistant"
    assert msg.data["content_type"] == "text"
    assert t.text == text, f"deltas concatenate to {t.text!r}, expected {text!r}"
    assert msg.data["content"] == text
    assert done.data["success"] is True, done.raw
    last = t.events[-1]
    assert last.type == "state" and last.data["state"] == "idle", f"turn must end idle: {types}"
    assert t.events.index(last) > i_done
    before = [e for e in t.events[:i_start]]
    assert all(e.type == "state" and e.data["state"] == "running" for e in before), before
    assert len(before) <= 1
    if expect_running is True:
        assert len(before) == 1, f"expected state running before the turn: {types}"
    # nothing between message and done or after idle
    assert [e.type for e in t.events[i_done + 1:]] == ["state"], types
    for e in t.events:
        assert e.stream, f"non-stream event inside a turn: {e!r}"


async def test_echo_turn(gw):
    c = await connect_init(gw)
    text = "hello world, this is hotplex speaking"
    t = await c.turn(text)
    check_text_turn(t, text)
    assert len(t.deltas) >= 3, f"expected several deltas for a 6-word text, got {len(t.deltas)}"
    assert hp.is_int(t.done.data["stats"].get("duration_ms", 0))
    # the second turn starts from idle: state running comes first
    t2 = await c.turn("second turn")
    check_text_turn(t2, "second turn", expect_running=True)
    assert t2.events[0].type == "state" and t2.events[0].data["state"] == "running"
    await c.close()


async def test_echo_turn_escaping(gw):
    c = await connect_init(gw)
    text = 'h\u00e9llo "quoted" back\\slash\ttab\nnew line \u65e5\u672c\u8a9e \U0001f389 </script> \u2028end'
    t = await c.turn(text)
    check_text_turn(t, text)
    await c.close()


async def test_long_turn(gw):
    c = await connect_init(gw)
    n = 250
    t = await c.turn(f"SCENARIO:long {n}")
    check_text_turn(t, hp.expected_words(n))
    assert len(t.deltas) == n, f"one delta per word: {len(t.deltas)} deltas for {n} words"
    await c.close()


async def test_two_connections_identical_streams_any_may_send(gw):
    a = await connect_init(gw, key="pair", name="a")
    b = await connect_init(gw, key="pair", name="b")
    assert a.session_id == b.session_id
    await a.send("input", {"content": "from a"})
    ta, tb = await asyncio.gather(a.collect_turn(), b.collect_turn())
    check_text_turn(ta, "from a")
    check_text_turn(tb, "from a")
    await b.send("input", {"content": "SCENARIO:long 40"})
    ta, tb = await asyncio.gather(a.collect_turn(), b.collect_turn())
    check_text_turn(ta, hp.expected_words(40))
    check_text_turn(tb, hp.expected_words(40))
    sb = [e.key() for e in b.stream]
    sa = [e.key() for e in a.stream if e.seq >= b.stream[0].seq]
    assert b.stream[0].seq == b.ack.seq + 1
    assert sa == sb, "two connections of one session must see identical streams"
    await hp.close_all([a, b])


async def test_ping_pong(gw):
    c = await connect_init(gw)
    pong, before = await c.ping()
    assert pong.data["state"] in ("created", "running", "idle")
    assert not pong.stream
    t = await c.turn("x")
    pong, before = await c.ping()
    assert before == []
    assert pong.data["state"] == "idle"
    assert pong.seq == c.pos
    # during a turn: the pong carries the current position and does not disturb the stream
    await c.send("input", {"content": "SCENARIO:slow 6"})
    await c.until("message.delta", timeout=5)
    await c.send("ping", {})
    t = await c.collect_turn(timeout=10)
    pongs = [e for e in t.events if e.type == "pong"]
    assert len(pongs) == 1 and pongs[0].data["state"] == "running", pongs
    assert t.done.data["success"] is True
    await c.close()


PERM_REASON = "not today, thanks"


@pytest.mark.parametrize("allowed", [True, False], ids=["allow", "deny"])
@pytest.mark.parametrize("form", ["permission_response", "input_metadata"])
async def test_permission(gw, form, allowed):
    c = await connect_init(gw)
    await c.send("input", {"content": "SCENARIO:permission"})
    evs = await c.until("permission_request", timeout=10)
    assert not [e for e in evs if e.type == "done"]
    pr = evs[-1]
    assert pr.stream
    assert pr.data["tool_name"] == "Bash"
    assert pr.data["input"] == {"command": "echo hi"}
    assert isinstance(pr.data["description"], str)
    assert isinstance(pr.data["args"], list) and len(pr.data["args"]) >= 1
    # the agent waits for the answer
    pong = await c.assert_quiet(delay=0.3)
    assert pong.data["state"] == "running"
    if form == "permission_response":
        d = {"id": pr.data["id"], "allowed": allowed}
        if not allowed:
            d["reason"] = PERM_REASON
        await c.send("permission_response", d)
    else:
        d = {"request_id": pr.data["id"], "allowed": allowed}
        if not allowed:
            d["reason"] = PERM_REASON
        await c.send("input", {"content": "", "metadata": {"permission_response": d}})
    t = await c.collect_turn(timeout=10)
    done = t.done
    assert done.data["success"] is True
    assert t.final_state == "idle"
    if allowed:
        call, res, msg = t.one("tool_call"), t.one("tool_result"), t.message
        assert res.data["id"] == call.data["id"]
        assert res.data["output"] == "hi\n"
        assert not res.data.get("error")
        assert msg.data["content"] == "permission granted"
        assert t.index("tool_call") < t.index("tool_result") < t.index("message") < t.index(
            "done")
    else:
        assert not t.of("tool_call") and not t.of("tool_result"), t.types()
        assert t.message.data["content"] == f"permission denied: {PERM_REASON}"
    # the answer itself did not start another turn
    pong = await c.assert_quiet(delay=0.3)
    assert pong.data["state"] == "idle"
    t2 = await c.turn("after permission")
    check_text_turn(t2, "after permission")
    await c.close()


async def test_error_scenario(gw):
    c = await connect_init(gw)
    t = await c.turn("SCENARIO:error")
    err = t.one("error")
    assert err.stream, "a turn's error is a stream event"
    assert err.data["code"] == "INTERNAL_ERROR"
    assert isinstance(err.data["message"], str) and err.data["message"]
    assert t.index("error") < t.index("done")
    assert t.done.data["success"] is False
    assert t.final_state == "idle"
    assert len(t.of("done")) == 1
    t2 = await c.turn("still alive")
    check_text_turn(t2, "still alive")
    await c.close()


async def test_crash_then_recovery(gw):
    c = await connect_init(gw)
    t0 = await c.turn("warm up")
    check_text_turn(t0, "warm up")
    await c.send("input", {"content": "SCENARIO:crash"})
    evs = await c.until("done", timeout=15)
    if not any(e.type == "state" and e.data["state"] == "terminated" for e in evs):
        evs += await c.until_state("terminated", timeout=10)
    t = hp.Turn(evs)
    err = t.one("error")
    assert err.data["code"] == "WORKER_CRASH" and err.stream
    assert t.done.data["success"] is False
    term = [e for e in evs if e.type == "state" and e.data["state"] == "terminated"]
    assert len(term) == 1
    assert t.index("error") < t.index("done") < evs.index(term[0]), t.types()
    assert len(t.of("done")) == 1
    pong = await c.assert_quiet(delay=0.3)
    assert pong.data["state"] == "terminated"
    # the next input restarts the agent
    t2 = await c.turn("back again", timeout=20)
    assert t2.events[0].type == "state" and t2.events[0].data["state"] == "running", t2.types()
    check_text_turn(t2, "back again", expect_running=True)
    await c.close()


async def test_inputs_queued_behind_a_crash_are_answered(gw):
    """Every input is delivered once: one queued behind a turn whose agent
    dies is answered by the resumed agent, without another input."""
    c = await connect_init(gw)
    await c.send("input", {"content": "SCENARIO:crash"})
    await c.send("input", {"content": "queued one"})
    evs = await c.until("done", timeout=15)
    t = hp.Turn(evs)
    assert t.one("error").data["code"] == "WORKER_CRASH"
    assert t.done.data["success"] is False
    # the cut-off message is closed before the crash is reported
    assert t.types().count("message.start") == t.types().count("message.end"), t.types()
    evs = await c.until("done", timeout=15)
    states = [e.data for e in evs if e.type == "state"]
    assert {"state": "terminated"} in [{"state": d["state"]} for d in states], states
    assert any(d["state"] == "running" and d.get("message") == "resumed" for d in states), states
    t2 = hp.Turn(evs)
    assert t2.one("message").data["content"] == "queued one"
    assert t2.done.data["success"] is True
    await c.close()


async def test_interrupt(gw):
    c = await connect_init(gw)
    n = 50
    await c.send("input", {"content": f"SCENARIO:slow {n}"})
    seen = []
    while len([e for e in seen if e.type == "message.delta"]) < 3:
        seen.append(await c.recv(5))
    t_int = time.monotonic()
    await c.send("control", {"action": "interrupt"})
    rest = await c.collect_turn(timeout=10)
    took = time.monotonic() - t_int
    t = hp.Turn(seen + rest.events)
    assert took < 2.0, f"interrupt took {took:.2f}s to end the turn"
    done = t.done
    assert done.data["success"] is False
    assert done.data["stats"].get("interrupted") is True, done.raw
    assert t.final_state == "idle"
    end = t.one("message.end")
    msg = t.message
    start = t.one("message.start")
    assert end.data["message_id"] == start.data["id"] == msg.data["id"]
    full = hp.expected_words(n)
    assert msg.data["content"] == t.text, "the partial message must hold what was streamed"
    assert full.startswith(t.text) and len(t.text) < len(full), t.text
    assert t.index("message.end") < t.index("message") < t.index("done")
    assert not t.of("error") or all(e.data["code"] != "WORKER_CRASH" for e in t.of("error"))
    pong = await c.assert_quiet(delay=0.4)
    assert pong.data["state"] == "idle"
    t2 = await c.turn("after interrupt")
    check_text_turn(t2, "after interrupt")
    await c.close()


async def test_interrupt_when_idle_is_harmless(gw):
    c = await connect_init(gw)
    t = await c.turn("a")
    await c.send("control", {"action": "interrupt"})
    pong = await c.assert_quiet(delay=0.3)
    assert pong.data["state"] == "idle"
    t2 = await c.turn("b")
    check_text_turn(t2, "b")
    await c.close()


async def test_queued_inputs(gw):
    c = await connect_init(gw)
    texts = ["first input here", "SCENARIO:long 30", "third and last"]
    expect = [texts[0], hp.expected_words(30), texts[2]]
    for x in texts:
        await c.send("input", {"content": x})
    evs = []
    for _ in range(3):
        evs += await c.until("done", timeout=20)
    evs += await c.until_state("idle", timeout=10)
    t = hp.Turn(evs)
    dones = t.of("done")
    assert len(dones) == 3 and all(d.data["success"] is True for d in dones)
    msgs = t.of("message")
    assert [m.data["content"] for m in msgs] == expect
    starts = t.of("message.start")
    assert len(starts) == 3
    # each turn is complete before the next starts: start_i < end_i < message_i < done_i < start_i+1
    idx = evs.index
    for i in range(3):
        assert idx(starts[i]) < idx(msgs[i]) < idx(dones[i])
        if i < 2:
            assert idx(dones[i]) < idx(starts[i + 1])
        mid = starts[i].data["id"]
        text = "".join(e.data["content"] for e in evs[idx(starts[i]):idx(dones[i])]
                       if e.type == "message.delta")
        assert text == expect[i]
        for e in evs[idx(starts[i]):idx(dones[i])]:
            if e.type == "message.delta":
                assert e.data["message_id"] == mid
    # a message only starts while the session is running
    cur = None
    for e in evs:
        if e.type == "state":
            cur = e.data["state"]
        if e.type == "message.start" and cur is not None:
            assert cur == "running", f"message.start while {cur}"
    pong = await c.assert_quiet(delay=0.3)
    assert pong.data["state"] == "idle"
    await c.close()


async def test_resume_with_last_seq(gw):
    a = await connect_init(gw, key="resume-1", name="a")
    t1 = await a.turn("alpha beta gamma")
    t2 = await a.turn("SCENARIO:long 30")
    check_text_turn(t2, hp.expected_words(30))
    hwm = a.pos
    mid = t1.done.seq
    record = {e.seq: e.key() for e in a.stream}
    await a.close()

    b = await Client.connect(gw, name="b")
    ack = await b.init(key="resume-1", last_seq=mid)
    assert ack.data["session_id"] == a.session_id
    assert ack.data["last_seq"] == hwm
    assert ack.seq == mid
    replay = await b.until_seq(hwm, timeout=10)
    assert [e.seq for e in replay] == list(range(mid + 1, hwm + 1)), "replay gap or duplicate"
    assert [e.key() for e in replay] == [record[s] for s in range(mid + 1, hwm + 1)], (
        "replayed events must be identical to the originals (seq, id, type, data)")
    pong = await b.assert_quiet(delay=0.3)
    assert pong.seq == hwm
    t3 = await b.turn("live after resume")
    check_text_turn(t3, "live after resume", expect_running=True)
    assert t3.events[0].seq == hwm + 1
    for e in b.stream:
        record[e.seq] = e.key()
    hwm2 = b.pos

    # full replay from 0
    c = await Client.connect(gw, name="c")
    ack = await c.init(key="resume-1", last_seq=0)
    assert ack.seq == 1 and ack.data["last_seq"] == hwm2
    replay = await c.until_seq(hwm2, timeout=10)
    assert [e.seq for e in replay] == list(range(1, hwm2 + 1))
    for e in replay:
        if e.seq in record:
            assert e.key() == record[e.seq], f"replayed seq {e.seq} differs"
    assert set(record) >= set(range(a.stream[0].seq, hwm2 + 1))

    # resume exactly at the head: nothing to replay
    d = await Client.connect(gw, name="d")
    ack = await d.init(key="resume-1", last_seq=hwm2)
    assert ack.seq == hwm2
    pong = await d.assert_quiet(delay=0.3)
    assert pong.seq == hwm2
    await hp.close_all([b, c, d])


@pytest.mark.timeout_s(40)
async def test_client_vanishes_mid_stream(gw):
    n = 20
    a = await connect_init(gw, key="vanish", name="a")
    await a.send("input", {"content": f"SCENARIO:slow {n}"})
    seen = []
    while len([e for e in seen if e.type == "message.delta"]) < 5:
        seen.append(await a.recv(5))
    last = a.pos
    a.abort()  # TCP gone, no close handshake
    await asyncio.sleep(0.5)

    b = await Client.connect(gw, name="b")
    ack = await b.init(key="vanish", last_seq=last)
    assert ack.data["session_id"] == a.session_id
    assert ack.seq == last
    rest = await b.collect_turn(timeout=15)
    assert "message.start" not in rest.types(), "replay must start after the client's last_seq"
    assert rest.events[0].seq == last + 1
    full = hp.Turn(seen + rest.events)
    assert full.text == hp.expected_words(n), "deltas before and after the drop must add up"
    assert rest.message.data["content"] == hp.expected_words(n)
    assert rest.done.data["success"] is True, "a vanished client must not break the turn"
    assert rest.final_state == "idle"
    assert not [e for e in rest.of("state") if e.data["state"] == "terminated"]
    await hp.wait_for(lambda: gw.health()["connections"] == 1, timeout=5,
                      what="/health connections == 1 after the dropped client")
    await b.close()


# --------------------------------------------------------------------------
# control actions
# --------------------------------------------------------------------------

async def test_control_terminate(gw):
    c = await connect_init(gw, key="ctl-term")
    check_text_turn(await c.turn("before"), "before")
    await c.send("control", {"action": "terminate"})
    evs = await c.until_state("terminated", timeout=10)
    assert [e.type for e in evs] == ["state"], evs
    # same-state transition is a no-op: no new state event
    await c.send("control", {"action": "terminate"})
    pong = await c.assert_quiet(delay=0.3)
    assert pong.data["state"] == "terminated"
    t = await c.turn("after terminate", timeout=20)
    assert t.events[0].type == "state" and t.events[0].data["state"] == "running"
    check_text_turn(t, "after terminate", expect_running=True)
    await c.close()


async def test_control_delete(gw):
    a = await connect_init(gw, key="ctl-del", name="a")
    b = await connect_init(gw, key="ctl-del", name="b")
    sid = a.session_id
    check_text_turn(await a.turn("to be deleted"), "to be deleted")
    await b.until("done")
    old_ids = {e.id for e in a.stream}
    old_hwm = a.pos
    await a.send("control", {"action": "delete"})
    for c in (a, b):
        evs = await c.until_state("deleted", timeout=10)
        code, reason, more = await c.expect_close(timeout=5)
        assert code in (1000, 1001, 1008), f"{c.name}: close code {code} after delete"
        assert not [e for e in more if e.stream], f"{c.name}: stream events after deleted: {more}"

    c = await Client.connect(gw, name="c")
    ack = await c.init(key="ctl-del", last_seq=0)
    # The spec's derivation gives the same id again; a server may also mint a
    # new one so that a deleted id is never reused. Either way the stream is new.
    new_sid = ack.data["session_id"]
    if new_sid != sid:
        print(f"note: re-init after delete got a new id {new_sid} (derived id was {sid})")
    assert ack.data["last_seq"] < old_hwm, "a deleted session's stream must not come back"
    assert ack.seq == 1 and ack.data["last_seq"] <= 2, ack.raw
    await hp.drain_handshake(c)
    pong, before = await c.ping()
    before = c.stream
    assert not [e for e in before if e.id in old_ids], "old events replayed after delete"
    t = await c.turn("fresh")
    check_text_turn(t, "fresh")
    assert not old_ids & {e.id for e in c.stream}
    await c.close()


async def test_control_reset(gw):
    c = await connect_init(gw)
    check_text_turn(await c.turn("remember me"), "remember me")
    await c.send("control", {"action": "reset"})
    evs = await c.until("state", timeout=10)
    st = evs[-1]
    assert [e.type for e in evs] == ["state"], evs
    assert st.data["state"] == "running" and st.data.get("message") == "context_reset", st.raw
    t = await c.turn("after reset", timeout=20)
    assert t.done.data["success"] is True
    assert t.message.data["content"] == "after reset"
    assert t.final_state == "idle"
    await c.close()


async def test_control_gc(gw):
    c = await connect_init(gw)
    check_text_turn(await c.turn("x"), "x")
    await c.send("control", {"action": "gc"})
    evs = await c.until("state", timeout=10)
    assert evs[-1].data["state"] == "terminated", evs
    pong = await c.assert_quiet(delay=0.2)
    assert pong.data["state"] == "terminated"
    t = await c.turn("after gc", timeout=20)
    check_text_turn(t, "after gc", expect_running=True)
    await c.close()


async def test_control_unknown_action(gw):
    c = await connect_init(gw)
    await c.send("control", {"action": "frobnicate"})
    err = await c.expect_error_reply("PROTOCOL_VIOLATION")
    assert isinstance(err.data["message"], str)
    pong = await c.assert_quiet(delay=0.2)
    t = await c.turn("still fine")
    check_text_turn(t, "still fine")
    await c.close()


# --------------------------------------------------------------------------
# connections per session
# --------------------------------------------------------------------------

async def _max_conns(gw, limit):
    cs = []
    for i in range(limit):
        cs.append(await connect_init(gw, key="many", name=f"m{i}"))
    for c in cs:
        await c.ping()
    newest = await connect_init(gw, key="many", name=f"m{limit}")
    code, reason, more = await cs[0].expect_close(timeout=5)
    assert code == 1008 and reason == "replaced", (
        f"oldest connection closed with {code} {reason!r}, expected 1008 'replaced'")
    rest = cs[1:] + [newest]
    for c in rest:
        pong, _ = await c.ping()
        assert c.open, f"{c.name} closed"
    await newest.send("input", {"content": "to all"})
    turns = await asyncio.gather(*(c.collect_turn() for c in rest))
    for t in turns:
        check_text_turn(t, "to all")
    base = rest[-1]
    for c in rest[:-1]:
        hp.assert_same_stream(base, c)
    await hp.close_all(rest)


async def test_max_conns_oldest_replaced(gw_factory):
    await _max_conns(gw_factory({"session.max_conns": 3}), 3)


async def test_max_conns_default_8(gw):
    await _max_conns(gw, 8)
