"""Init handshake (spec aep-v1.md section 3): session identity, failing inits,
the TypeScript quirk, the init deadline, and init_ack-first under load."""

import asyncio
import json
import os
import random
import tempfile
import time
import uuid

import pytest

import hp
from hp import Client, connect_init


def check_ok_ack(ack, worker_type="echo", max_frame_size=32768):
    d = ack.data
    assert ack.session_id == d["session_id"]
    assert d["state"] in ("created", "running", "idle"), d
    caps = d["server_caps"]
    assert caps["protocol_version"] == "aep/v1"
    assert caps["worker_type"] == worker_type
    assert caps["supports_resume"] is True
    assert caps["supports_delta"] is True
    assert caps["supports_tool_call"] is True
    assert caps["supports_ping"] is True
    assert caps["max_frame_size"] == max_frame_size
    assert isinstance(caps["modalities"], list) and "text" in caps["modalities"]
    assert hp.is_int(d["last_seq"]) and d["last_seq"] >= 0


def d_last_seq(ack):
    return ack.data["last_seq"]


# --------------------------------------------------------------------------
# successful inits
# --------------------------------------------------------------------------

async def test_new_session_init_ack_and_first_turn(gw):
    c = await Client.connect(gw)
    ack = await c.init()
    check_ok_ack(ack)
    sid = ack.data["session_id"]
    u = uuid.UUID(sid)
    assert str(u) == sid, "session id must be a canonical lower-case UUID"
    assert u.version == 4, f"a keyless session gets a random (v4) id, got {sid}"
    assert ack.seq == 1, "a new session has no stream position yet"
    hs = await hp.drain_handshake(c)
    assert all(e.data["state"] in ("created", "running", "idle") for e in hs), hs
    t = await c.turn("hello there")
    assert t.done.data["success"] is True
    assert t.message.data["content"] == "hello there"
    await c.close()


async def test_no_key_is_a_new_session_every_time(gw):
    ids = set()
    for _ in range(4):
        c = await Client.connect(gw)
        ack = await c.init()
        ids.add(ack.data["session_id"])
        await c.close()
    # also with an explicitly empty key (envelope and data)
    c = await Client.connect(gw)
    ack = await c.init(key="", env_key="")
    ids.add(ack.data["session_id"])
    await c.close()
    assert len(ids) == 5, f"keyless inits must not share a session: {ids}"


async def test_client_key_derives_uuid5_session_id(gw_factory, tmp_path):
    wd = os.path.realpath(str(tmp_path / "workspace"))
    os.makedirs(wd)
    gw = gw_factory({"worker.default_work_dir": wd})

    # data.session_id key
    c1 = await Client.connect(gw)
    ack1 = await c1.init(key="tab-1")
    expect = hp.derived_session_id("tab-1", wd)
    assert ack1.data["session_id"] == expect, (
        f"UUIDv5('anonymous|echo|tab-1|{wd}') = {expect}, got {ack1.data['session_id']}")
    t = await c1.turn("one")
    assert t.done.data["success"] is True
    hwm = c1.pos
    await c1.close()

    # the same key again -> the same session, with its history
    c2 = await Client.connect(gw)
    ack2 = await c2.init(key="tab-1")
    assert ack2.data["session_id"] == expect
    assert ack2.seq == hwm, "re-attach at the session's head"
    assert ack2.data["last_seq"] == hwm, "re-attach must report the session's high-water mark"
    await c2.close()

    # envelope session_id is a key too, and wins over data.session_id
    c3 = await Client.connect(gw)
    ack3 = await c3.init(env_key="tab-2", key="tab-3")
    assert ack3.data["session_id"] == hp.derived_session_id("tab-2", wd), (
        "envelope session_id must take precedence over data.session_id")
    await c3.close()

    # a different key -> a different session
    c4 = await Client.connect(gw)
    ack4 = await c4.init(key="tab-3")
    assert ack4.data["session_id"] == hp.derived_session_id("tab-3", wd)
    await c4.close()


async def test_init_with_existing_session_id_attaches(gw):
    a = await Client.connect(gw, name="a")
    ack_a = await a.init()
    sid = ack_a.data["session_id"]
    ta = await a.turn("first turn")
    assert ta.done.data["success"] is True

    b = await Client.connect(gw, name="b")
    ack_b = await b.init(key=sid)
    assert ack_b.data["session_id"] == sid, "init with an existing session id must attach to it"
    assert ack_b.seq == a.pos and ack_b.data["last_seq"] == a.pos

    c = await Client.connect(gw, name="c")
    ack_c = await c.init(env_key=sid)
    assert ack_c.data["session_id"] == sid

    # all three see the next turn identically
    await b.send("input", {"content": "second turn"})
    turns = await asyncio.gather(a.collect_turn(), b.collect_turn(), c.collect_turn())
    for t in turns:
        assert t.message.data["content"] == "second turn"
    hp.assert_same_stream(a, b, lo=ack_b.seq + 1)
    hp.assert_same_stream(a, c, lo=ack_c.seq + 1)
    await hp.close_all([a, b, c])


async def test_lenient_inbound_envelope(gw):
    """id, seq, session_id, timestamp may be missing; seq any integer; unknown
    top-level fields ignored; surrounding whitespace allowed."""
    c = await Client.connect(gw)
    init = {"version": "aep/v1", "event": {"type": "init",
                                          "data": {"version": "aep/v1", "worker_type": "echo"}},
            "some_future_field": {"x": [1, 2]}}
    await c.send_raw("  \n\t" + json.dumps(init) + " \r\n ")
    ack = await c.expect_ack()
    check_ok_ack(ack)
    for seq in (None, 0, -3, 12345678):
        msg = {"version": "aep/v1", "event": {"type": "input", "data": {"content": "lenient"}}}
        if seq is not None:
            msg["seq"] = seq
        await c.send_raw(json.dumps(msg))
        t = await c.collect_turn()
        assert t.message.data["content"] == "lenient"
        assert t.done.data["success"] is True
    await c.close()


async def test_binary_frame_init(gw):
    c = await Client.connect(gw)
    env = hp.envelope("init", {"version": "aep/v1", "worker_type": "echo"})
    await c.send_raw(json.dumps(env).encode())
    ack = await c.expect_ack()
    check_ok_ack(ack)
    await c.send_raw(json.dumps(hp.envelope("input", {"content": "bin frame"})).encode())
    t = await c.collect_turn()
    assert t.message.data["content"] == "bin frame"
    await c.close()


async def test_typescript_quirk_control_with_worker_type_is_init(gw):
    c = await Client.connect(gw)
    await c.send("control", {"worker_type": "echo", "version": "aep/v1"})
    ack = await c.expect_ack(ok=True)
    check_ok_ack(ack)
    t = await c.turn("ts sdk")
    assert t.message.data["content"] == "ts sdk"
    await c.close()


async def test_typescript_quirk_with_key(gw):
    a = await connect_init(gw, key="ts-key")
    b = await Client.connect(gw)
    await b.send("control", {"worker_type": "echo", "version": "aep/v1", "session_id": "ts-key"})
    ack = await b.expect_ack(ok=True)
    assert ack.data["session_id"] == a.session_id
    await hp.close_all([a, b])


# --------------------------------------------------------------------------
# failing inits: failing init_ack, then close 1000
# --------------------------------------------------------------------------

def _env(**kw):
    e = {"version": "aep/v1", "id": f"evt_{uuid.uuid4()}", "seq": 0, "session_id": "",
         "timestamp": hp.now_ms(),
         "event": {"type": "init", "data": {"version": "aep/v1", "worker_type": "echo"}}}
    e.update(kw)
    return e


def _init_data(**kw):
    d = {"version": "aep/v1", "worker_type": "echo"}
    for k, v in kw.items():
        if v is hp.DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return _env(event={"type": "init", "data": d})


BAD_INITS = [
    ("non_json", "this is not json", "INVALID_MESSAGE"),
    ("truncated_json", '{"version":"aep/v1","event":{"type":"init"', "INVALID_MESSAGE"),
    ("json_array", json.dumps([_env()]), "INVALID_MESSAGE"),
    ("json_string", json.dumps("init"), "INVALID_MESSAGE"),
    ("json_number", "42", "INVALID_MESSAGE"),
    ("empty_object", "{}", "INVALID_MESSAGE"),
    ("missing_version", json.dumps({k: v for k, v in _env().items() if k != "version"}),
     "INVALID_MESSAGE"),
    ("wrong_version", json.dumps(_env(version="aep/v2")), "INVALID_MESSAGE"),
    ("version_not_string", json.dumps(_env(version=1)), "INVALID_MESSAGE"),
    ("missing_event", json.dumps({k: v for k, v in _env().items() if k != "event"}),
     "INVALID_MESSAGE"),
    ("event_not_object", json.dumps(_env(event="init")), "INVALID_MESSAGE"),
    ("missing_event_type", json.dumps(_env(event={"data": {"version": "aep/v1",
                                                           "worker_type": "echo"}})),
     "INVALID_MESSAGE"),
    ("empty_event_type", json.dumps(_env(event={"type": "", "data": {}})), "INVALID_MESSAGE"),
    ("first_is_input", json.dumps(_env(event={"type": "input", "data": {"content": "hi"}})),
     "PROTOCOL_VIOLATION"),
    ("first_is_ping", json.dumps(_env(event={"type": "ping", "data": {}})),
     "PROTOCOL_VIOLATION"),
    ("first_is_control_without_worker_type",
     json.dumps(_env(event={"type": "control", "data": {"action": "interrupt"}})),
     "PROTOCOL_VIOLATION"),
    ("first_is_unknown_type", json.dumps(_env(event={"type": "bogus", "data": {}})),
     "PROTOCOL_VIOLATION"),
    ("init_without_worker_type", json.dumps(_init_data(worker_type=hp.DROP)), "INVALID_MESSAGE"),
    ("init_data_version_missing", json.dumps(_init_data(version=hp.DROP)), "VERSION_MISMATCH"),
    ("init_data_version_wrong", json.dumps(_init_data(version="aep/v2")), "VERSION_MISMATCH"),
    ("init_data_version_v0", json.dumps(_init_data(version="v1")), "VERSION_MISMATCH"),
    ("unknown_worker_type", json.dumps(_init_data(worker_type="no_such_agent")),
     "WORKER_UNAVAILABLE"),
]


async def expect_failed_init(c, code, timeout=10):
    ack = await c.expect_ack(ok=False, timeout=timeout)
    d = ack.data
    assert d["code"] == code, f"failing init_ack code {d['code']!r}, expected {code!r}: {ack.raw}"
    assert d["state"] == "deleted"
    assert isinstance(d["error"], str) and d["error"].strip()
    assert isinstance(d["session_id"], str) and d["session_id"]
    assert ack.session_id == d["session_id"]
    caps = d["server_caps"]
    assert isinstance(caps, dict)
    assert all(not v for v in caps.values()), f"failing server_caps not empty: {caps}"
    code_, reason, more = await c.expect_close(timeout=5)
    assert more == [], f"messages after a failing init_ack: {more}"
    assert code_ == 1000, f"close code {code_} after failing init_ack, expected 1000"
    return ack


@pytest.mark.parametrize("name,payload,code", BAD_INITS, ids=[b[0] for b in BAD_INITS])
async def test_failing_init(module_gw, name, payload, code):
    c = await Client.connect(module_gw)
    await c.send_raw(payload)
    await expect_failed_init(c, code)


async def test_failing_init_binary_garbage(module_gw):
    c = await Client.connect(module_gw)
    await c.send_raw(bytes(random.Random(7).randrange(256) for _ in range(300)))
    await expect_failed_init(c, "INVALID_MESSAGE")


async def test_failed_init_does_not_create_a_session(module_gw):
    """A failing init (unknown worker type with a key) leaves no session behind:
    the same key with a valid worker type gets a fresh session."""
    c = await Client.connect(module_gw)
    await c.send_raw(json.dumps(_init_data(worker_type="nope", session_id="failkey")))
    await expect_failed_init(c, "WORKER_UNAVAILABLE")
    ok = await connect_init(module_gw, key="failkey")
    assert ok.ack.seq == 1 and ok.ack.data["last_seq"] <= 2, f"expected a fresh session: {ok.ack.raw}"
    await hp.drain_handshake(ok)
    t = await ok.turn("after failure")
    assert t.done.data["success"] is True
    await ok.close()
    module_gw.assert_alive()


# --------------------------------------------------------------------------
# init deadline
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(30)
async def test_idle_client_closed_after_init_timeout(gw_factory):
    gw = gw_factory({"server.init_timeout_ms": 1000})
    c = await Client.connect(gw)
    t0 = time.monotonic()
    ack = await c.expect_ack(ok=False, timeout=6)
    elapsed = time.monotonic() - t0
    assert ack.data["code"] == "PROTOCOL_VIOLATION", ack.raw
    assert 0.8 <= elapsed <= 4.0, f"init deadline fired after {elapsed:.2f}s, expected ~1s"
    code, _, more = await c.expect_close(timeout=5)
    assert more == [] and code == 1000, (code, more)
    # a client that inits in time is not affected
    c2 = await Client.connect(gw)
    await asyncio.sleep(0.5)
    await c2.init()
    await asyncio.sleep(1.5)
    pong, _ = await c2.ping()
    assert c2.open
    await c2.close()


# --------------------------------------------------------------------------
# init_ack first, under load
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(110)
async def test_init_ack_first_under_load(gw_factory):
    """300 concurrent connections: 150 new sessions, 150 inits against 10
    existing session keys while those sessions stream a long turn. Every
    connection's first message is init_ack and its seq rules hold (the Client
    validator); the keyed connections then see exactly the driver's events."""
    n_keys, per_key, n_new, words = 10, 15, 150, 600
    gw = gw_factory({"echo.delta_interval_ms": 5, "session.max_conns": per_key + 4})
    keys = [f"load-{i}" for i in range(n_keys)]
    drivers = await asyncio.gather(*(connect_init(gw, key=k, name=f"drv-{k}") for k in keys))

    # start the long turns and wait until each is streaming
    for d in drivers:
        await d.send("input", {"content": f"SCENARIO:long {words}"})
    for d in drivers:
        await d.until("message.delta", timeout=20)

    final = {}
    drivers_done = asyncio.Event()

    async def drive(d):
        t = await d.collect_turn(timeout=90)
        assert t.done.data["success"] is True
        assert t.final_state == "idle"
        final[d.session_id] = d.pos

    async def keyed(k, i):
        c = await Client.connect(gw, name=f"{k}#{i}", timeout=30)
        ack = await c.init(key=k, timeout=30)
        await drivers_done.wait()
        await c.until_seq(final[c.session_id], timeout=60)
        return c, ack

    async def fresh(i):
        c = await Client.connect(gw, name=f"new#{i}", timeout=30)
        await c.init(timeout=30)
        pong, _ = await c.ping(timeout=30)
        await c.close()
        return c

    async def drive_all():
        await asyncio.gather(*(drive(d) for d in drivers))
        drivers_done.set()

    jobs = [keyed(k, i) for k in keys for i in range(per_key)] + [fresh(i) for i in range(n_new)]
    random.Random(42).shuffle(jobs)
    res = await asyncio.gather(drive_all(), *jobs)
    results = res[1:]
    keyed_res = [r for r in results if isinstance(r, tuple)]
    fresh_res = [r for r in results if isinstance(r, Client)]
    assert len(keyed_res) == n_keys * per_key and len(fresh_res) == n_new

    by_sid = {d.session_id: d for d in drivers}
    assert len(by_sid) == n_keys
    mid_stream = 0
    for c, ack in keyed_res:
        assert c.msgs[0].type == "init_ack"
        d = by_sid[c.session_id]
        drv = {e.seq: e.key() for e in d.stream}
        for e in c.stream:
            assert drv.get(e.seq) == e.key(), (
                f"{c.name} seq {e.seq} differs from the driver's event: {e.raw}")
        if any(e.type == "message.delta" for e in c.stream):
            mid_stream += 1
    assert mid_stream > 0, "no keyed connection attached while its session was streaming"
    sids = {c.session_id for c in fresh_res}
    assert len(sids) == n_new, "keyless inits must all get distinct sessions"
    await hp.close_all(drivers + [c for c, _ in keyed_res])
    h = await gw.ahealth()
    assert h["sessions"] >= n_keys + n_new
