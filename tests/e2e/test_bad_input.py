"""Hostile and malformed input: the gateway answers with the documented error,
keeps the connection where the spec says so, and never goes down."""

import asyncio
import json
import random
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

import hp
from hp import Client, connect_init

LIMIT = 32768


def env(type_="input", data=None, **kw):
    e = hp.envelope(type_, {"content": "x"} if data is None else data)
    e.update(kw)
    return e


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


INVALID_AFTER_INIT = [
    ("non_json", "definitely not json"),
    ("truncated", '{"version":"aep/v1","event":{"type":"input"'),
    ("json_array", json.dumps([env("ping", {})])),
    ("json_number", "1"),
    ("json_null", "null"),
    ("json_string", '"ping"'),
    ("empty_text", ""),
    ("whitespace_only", " \n\t "),
    ("empty_object", "{}"),
    ("missing_version", json.dumps(without(env("ping", {}), "version"))),
    ("wrong_version", json.dumps(env("ping", {}, version="aep/v2"))),
    ("null_version", json.dumps(env("ping", {}, version=None))),
    ("missing_event", json.dumps(without(env("ping", {}), "event"))),
    ("event_not_object", json.dumps(env("ping", {}, event=["ping"]))),
    ("missing_event_type", json.dumps(env("ping", {}, event={"data": {}}))),
    ("empty_event_type", json.dumps(env("ping", {}, event={"type": "", "data": {}}))),
    ("event_type_not_string", json.dumps(env("ping", {}, event={"type": 7, "data": {}}))),
    ("trailing_garbage", json.dumps(env("ping", {})) + " xyz"),
    ("two_objects", json.dumps(env("ping", {})) + json.dumps(env("ping", {}))),
    ("raw_nul_in_string",
     '{"version":"aep/v1","event":{"type":"input","data":{"content":"a\x00b"}}}'),
    ("raw_nul_after_object", json.dumps(env("ping", {})) + "\x00"),
    ("raw_control_char_in_string",
     '{"version":"aep/v1","event":{"type":"input","data":{"content":"a\x01b"}}}'),
    ("bad_escape", '{"version":"aep/v1","event":{"type":"input","data":{"content":"a\\qb"}}}'),
    ("deep_unterminated", "[" * 10000),
    ("deep_balanced", "[" * 10000 + "]" * 10000),
    ("deep_objects", '{"a":' * 5000 + "1" + "}" * 5000),
    ("nan_literal", '{"version":"aep/v1","seq":NaN,"event":{"type":"ping","data":{}}}'),
    ("single_quotes", "{'version':'aep/v1','event':{'type':'ping','data':{}}}"),
]


@pytest.mark.parametrize("name,payload", INVALID_AFTER_INIT, ids=[x[0] for x in INVALID_AFTER_INIT])
async def test_invalid_message_after_init(module_gw, name, payload):
    c = await connect_init(module_gw)
    await c.send_raw(payload)
    err = await c.expect_error_reply("INVALID_MESSAGE")
    assert isinstance(err.data["message"], str)
    pong = await c.assert_quiet(delay=0.1)
    assert c.open
    # nothing was started by the bad message
    assert not c.stream or all(e.type == "state" for e in c.stream), c.stream
    await c.close()


async def test_many_bad_messages_on_one_connection_then_turn(module_gw):
    c = await connect_init(module_gw)
    for name, payload in INVALID_AFTER_INIT:
        await c.send_raw(payload)
    for name, payload in INVALID_AFTER_INIT:
        ev = await c.recv(10)
        assert ev.type == "error" and ev.data["code"] == "INVALID_MESSAGE", (name, ev)
    t = await c.turn("survived")
    assert t.message.data["content"] == "survived" and t.done.data["success"] is True
    await c.close()


async def test_bad_messages_during_a_turn(module_gw):
    """Error replies interleave with stream events without disturbing seq."""
    c = await connect_init(module_gw)
    await c.send("input", {"content": "SCENARIO:long 120"})
    await c.until("message.delta")
    for payload in ("junk", "[1]", json.dumps(env("frobnicate", {}))):
        await c.send_raw(payload)
    t = await c.collect_turn(timeout=20)
    errs = [e for e in t.events if e.type == "error"]
    assert [e.data["code"] for e in errs] == ["INVALID_MESSAGE", "INVALID_MESSAGE",
                                              "PROTOCOL_VIOLATION"]
    assert all(not e.stream for e in errs)
    assert t.message.data["content"] == hp.expected_words(120)
    await c.close()


async def test_unknown_event_type(module_gw):
    c = await connect_init(module_gw)
    await c.send("frobnicate", {"x": 1})
    err = await c.expect_error_reply("PROTOCOL_VIOLATION")
    assert "unknown event type" in err.data["message"], err.raw
    assert "frobnicate" in err.data["message"], err.raw
    await c.assert_quiet(delay=0.1)
    # server-only event types sent by a client are not accepted either
    await c.send("init_ack", {})
    ev = await c.recv()
    assert ev.type == "error" and ev.data["code"] in ("PROTOCOL_VIOLATION", "INVALID_MESSAGE")
    t = await c.turn("ok")
    assert t.done.data["success"] is True
    await c.close()


async def test_binary_random_bytes_after_init(module_gw):
    c = await connect_init(module_gw)
    rnd = random.Random(1234)
    for n in (1, 64, 4096):
        await c.send_raw(bytes(rnd.randrange(256) for _ in range(n)))
        await c.expect_error_reply("INVALID_MESSAGE")
    await c.assert_quiet(delay=0.1)
    # and a binary frame holding a valid message is accepted
    await c.send_raw(json.dumps(env("input", {"content": "binary ok"})).encode())
    t = await c.collect_turn()
    assert t.message.data["content"] == "binary ok"
    await c.close()


async def test_invalid_utf8_text_frame(module_gw):
    c = await connect_init(module_gw)
    payload = b'{"version":"aep/v1","event":{"type":"input","data":{"content":"bad \xff\xfe \xc3"}}}'
    await c.send_frame(Opcode.TEXT, payload)
    try:
        ev = await c.recv(5)
    except hp.Closed as e:
        assert e.code == 1007, f"invalid UTF-8 text frame: close {e.code}, expected 1007"
    else:
        assert ev.type == "error" and ev.data["code"] == "INVALID_MESSAGE", ev
        pong = await c.assert_quiet(delay=0.1)
        await c.close()
    module_gw.health()
    c2 = await connect_init(module_gw)
    t = await c2.turn("after bad utf8")
    assert t.message.data["content"] == "after bad utf8"
    await c2.close()


async def test_invalid_utf8_in_binary_frame(module_gw):
    """A binary frame is JSON text too: invalid UTF-8 inside it must not reach
    the session (and never come back out in a text frame)."""
    c = await connect_init(module_gw)
    payload = b'{"version":"aep/v1","event":{"type":"input","data":{"content":"bad \xff\xfe"}}}'
    await c.send_raw(payload)
    ev = await c.recv(5)
    assert ev.type == "error" and ev.data["code"] == "INVALID_MESSAGE", ev
    await c.assert_quiet(delay=0.1)
    await c.close()


async def test_nul_bytes(module_gw):
    c = await connect_init(module_gw)
    # escaped NUL is valid JSON and must survive the round trip unchanged
    t = await c.turn("a\u0000b c\u0000")
    assert t.message.data["content"] == "a\u0000b c\u0000"
    assert t.text == "a\u0000b c\u0000"
    # raw NUL inside a string is invalid JSON
    await c.send_raw('{"version":"aep/v1","event":{"type":"input","data":{"content":"x\x00y"}}}')
    await c.expect_error_reply("INVALID_MESSAGE")
    # a NUL inside the event type must not truncate it to "input"
    await c.send("input\u0000junk", {"content": "must not run"})
    ev = await c.recv()
    assert ev.type == "error" and ev.data["code"] in ("PROTOCOL_VIOLATION", "INVALID_MESSAGE"), ev
    pong = await c.assert_quiet(delay=0.3)
    assert pong.data["state"] == "idle"
    await c.close()


async def test_nul_in_session_key_is_not_truncated(module_gw):
    a = await connect_init(module_gw, key="nulkey")
    b = await Client.connect(module_gw)
    ack = await b.init(key="nulkey\u0000other", expect_ok=None)
    if ack.data["state"] == "deleted":
        assert ack.data["code"] == "INVALID_MESSAGE", ack.raw
    else:
        assert ack.data["session_id"] != a.session_id, "key truncated at NUL"
        await b.close()
    await a.close()


async def test_lone_surrogate_escape(module_gw):
    """A \\ud800 escape is grammatical JSON but no Unicode text: refused with
    INVALID_MESSAGE, or echoed in a way that still yields valid frames."""
    c = await connect_init(module_gw)
    await c.send_raw('{"version":"aep/v1","event":{"type":"input","data":{"content":"x\\ud800y"}}}')
    ev = await c.recv()
    if ev.type == "error":
        assert ev.data["code"] == "INVALID_MESSAGE", ev
        await c.assert_quiet(delay=0.1)
    else:
        t = hp.Turn([ev] + (await c.collect_turn()).events)
        assert t.done.data["success"] is True
    await c.close()


HUGE_INT_SEQS = ["99999999999999999999999999999999", "-99999999999999999999",
                 "18446744073709551616", "9223372036854775807", "-9223372036854775808", "-0"]
ODD_SEQS = ["1e400", "-1e400", "1.5", "1E3"]


@pytest.mark.parametrize("num", HUGE_INT_SEQS + ODD_SEQS)
async def test_huge_envelope_seq_is_ignored(module_gw, num):
    """Inbound seq is ignored: any integer works; a non-integer number may be
    ignored too or refused with INVALID_MESSAGE."""
    c = await connect_init(module_gw)
    raw = ('{"version":"aep/v1","seq":%s,"session_id":"",'
           '"event":{"type":"input","data":{"content":"numbers %s"}}}' % (num, num))
    await c.send_raw(raw)
    ev = await c.recv()
    if num in ODD_SEQS and ev.type == "error":
        assert ev.data["code"] == "INVALID_MESSAGE", ev
        await c.assert_quiet(delay=0.1)
    else:
        t = hp.Turn([ev] + (await c.collect_turn()).events)
        assert t.message.data["content"] == f"numbers {num}"
        assert t.done.data["success"] is True
    await c.close()


@pytest.mark.parametrize("num", ["18446744073709551617", "9223372036854775807",
                                 "100000000000000000000000000000", "-1", "-9223372036854775809"])
async def test_huge_last_seq(module_gw, num):
    """A last_seq beyond the head is clamped to it (no replay, seq continues
    from the head) or refused with INVALID_MESSAGE; a negative one is replay
    from the start or INVALID_MESSAGE. Never a decreasing seq, never a crash."""
    key = f"huge-{num}"
    a = await connect_init(module_gw, key=key)
    await a.turn("fill")
    hwm = a.pos
    await a.close()
    c = await Client.connect(module_gw)
    v = int(num)
    if v > 0:
        c.resume = v  # the validator then expects init_ack.seq == max(1, min(v, head))
    else:
        # negative: replay from the start (like 0) or plain attach at the head
        c.pos_rule = lambda ev, head: 0 if ev.seq == 1 else head
    raw = json.dumps(hp.envelope("init", {"version": "aep/v1", "worker_type": "echo",
                                          "session_id": key, "last_seq": 0}))
    raw = raw.replace('"last_seq": 0', f'"last_seq": {num}')
    assert num in raw
    await c.send_raw(raw)
    ack = await c.expect_ack(ok=None)
    if ack.data["state"] == "deleted":
        assert ack.data["code"] == "INVALID_MESSAGE", ack.raw
        await c.expect_close()
    else:
        assert ack.data["last_seq"] == hwm
        if v > 0:
            assert ack.seq == hwm, "last_seq beyond the head must be clamped to the head"
            pong = await c.assert_quiet(delay=0.2)
        elif c.pos == 0:
            await c.until_seq(hwm)
            assert c.stream[0].seq == 1
        else:
            await c.assert_quiet(delay=0.2)
        t = await c.turn("after huge")
        assert t.events[0].seq == hwm + 1
        await c.close()
    module_gw.health()


# --------------------------------------------------------------------------
# frame size
# --------------------------------------------------------------------------

def sized_input(total, content="boundary"):
    """A valid input message of exactly `total` bytes (padding in metadata)."""
    base = hp.envelope("input", {"content": content, "metadata": {"pad": ""}})
    s = json.dumps(base, separators=(",", ":"))
    pad = total - len(s.encode())
    assert pad >= 0
    base["event"]["data"]["metadata"]["pad"] = "p" * pad
    s = json.dumps(base, separators=(",", ":"))
    assert len(s.encode()) == total
    return s


async def send_and_expect_close(c, payload, timeout=15):
    task = asyncio.ensure_future(c.ws.send(payload))
    try:
        code, reason, msgs = await c.expect_close(timeout)
    finally:
        try:
            await asyncio.wait_for(task, 5)
        except (ConnectionClosed, asyncio.TimeoutError, OSError):
            pass
        if not task.done():
            task.cancel()
    return code, reason, msgs


async def test_message_at_limit_accepted_over_limit_closed(module_gw):
    c = await connect_init(module_gw)
    await c.send_raw(sized_input(LIMIT, "at the limit"))
    t = await c.collect_turn()
    assert t.message.data["content"] == "at the limit"
    code, reason, msgs = await send_and_expect_close(c, sized_input(LIMIT + 1))
    assert code == 1009, f"message of limit+1 bytes: close {code} {reason!r}, expected 1009"
    assert not [m for m in msgs if m.type == "done"], "the oversized input must not run"
    module_gw.health()


async def test_oversized_first_message(module_gw):
    c = await Client.connect(module_gw)
    init = hp.envelope("init", {"version": "aep/v1", "worker_type": "echo",
                                "config": {"metadata": {"pad": "p" * 40000}}})
    code, reason, msgs = await send_and_expect_close(c, json.dumps(init))
    assert code == 1009, f"oversized init: close {code} {reason!r}, expected 1009"
    assert msgs == [], f"no application message expected before the 1009 close: {msgs}"


async def test_fragmented_message_over_limit(module_gw):
    c = await connect_init(module_gw)
    payload = sized_input(50000)
    frags = [payload[i:i + 8000] for i in range(0, len(payload), 8000)]
    assert all(len(f) < LIMIT for f in frags)
    code, reason, msgs = await send_and_expect_close(c, frags)
    assert code == 1009, f"fragments adding up over the limit: close {code}, expected 1009"
    assert not [m for m in msgs if m.type == "done"]
    module_gw.health()


async def test_fragmented_message_under_limit_works(module_gw):
    c = await connect_init(module_gw)
    payload = sized_input(20000, "fragmented fine")
    frags = [payload[i:i + 3000] for i in range(0, len(payload), 3000)]
    await c.send_raw(frags)
    t = await c.collect_turn()
    assert t.message.data["content"] == "fragmented fine"
    # binary fragments too
    payload = sized_input(9000, "binary fragments").encode()
    await c.send_raw([payload[i:i + 1000] for i in range(0, len(payload), 1000)])
    t = await c.collect_turn()
    assert t.message.data["content"] == "binary fragments"
    await c.close()


@pytest.mark.timeout_s(60)
async def test_ten_megabytes_of_garbage(module_gw):
    c = await connect_init(module_gw)
    rnd = random.Random(99)
    alphabet = "abcdefghijklmnopqrstuvwxyz{}[]\":,0123456789 "
    chunk = "".join(rnd.choice(alphabet) for _ in range(65536))
    garbage = chunk * 160  # 10 MiB
    t0 = time.monotonic()
    code, reason, msgs = await send_and_expect_close(c, garbage, timeout=20)
    assert code == 1009, f"10 MB frame: close {code} {reason!r}, expected 1009"
    assert time.monotonic() - t0 < 15
    h = module_gw.health()
    assert h["status"] == "ok"
    c2 = await connect_init(module_gw)
    t = await c2.turn("still serving")
    assert t.message.data["content"] == "still serving"
    await c2.close()
    # same before init, as a binary frame
    c3 = await Client.connect(module_gw)
    code, reason, msgs = await send_and_expect_close(c3, garbage.encode(), timeout=20)
    assert code == 1009, f"10 MB binary first frame: close {code}"
    module_gw.health()


async def test_websocket_level_ping(module_gw):
    c = await connect_init(module_gw)
    waiter = await c.ws.ping(b"hello")
    await asyncio.wait_for(waiter, 5)
    await c.assert_quiet(delay=0.1)
    await c.close()


# --------------------------------------------------------------------------
# clients that never init
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(30)
async def test_silent_client_closed_after_init_deadline(gw_factory):
    gw = gw_factory({"server.init_timeout_ms": 1000})
    c = await Client.connect(gw)
    t0 = time.monotonic()
    code, reason, msgs = await c.expect_close(timeout=8)
    took = time.monotonic() - t0
    assert [m.type for m in msgs] == ["init_ack"], msgs
    assert msgs[0].data["code"] == "PROTOCOL_VIOLATION"
    assert code == 1000
    assert 0.8 <= took <= 4.0, f"closed after {took:.2f}s, deadline 1s"


@pytest.mark.timeout_s(60)
async def test_many_clients_that_never_init(gw_factory):
    gw = gw_factory({"server.init_timeout_ms": 3000})
    base = gw.health()["connections"]
    n = 200
    t0 = time.monotonic()
    cs = await asyncio.gather(*(Client.connect(gw, name=f"silent{i}", timeout=20)
                                for i in range(n)))
    h = await hp.wait_for(lambda: (lambda j: j if j["connections"] >= base + n else None)(
        gw.health()), timeout=5, what=f"/health connections >= {base + n}")
    results = await asyncio.gather(*(c.expect_close(timeout=15) for c in cs))
    took = time.monotonic() - t0
    for c, (code, reason, msgs) in zip(cs, results):
        assert [m.type for m in msgs] == ["init_ack"], (c.name, msgs)
        assert msgs[0].data["code"] == "PROTOCOL_VIOLATION"
        assert code == 1000, (c.name, code)
    assert took < 12, f"closing {n} silent clients took {took:.1f}s (deadline 3s)"
    await hp.wait_for(lambda: gw.health()["connections"] == base, timeout=5,
                      what=f"/health connections back to {base}")
    c = await connect_init(gw)
    t = await c.turn("alive")
    assert t.done.data["success"] is True
    await c.close()
