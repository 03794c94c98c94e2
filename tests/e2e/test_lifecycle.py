"""Session lifecycle: the timers (idle, lifetime, zombie, retention), the
quotas, every control action (also from a second connection), ownership with
API keys, delete, cd.

Timers are checked once a second by the gateway's cron, so a timeout of T ms
fires between T and T+~1100 ms."""

import asyncio
import json
import os
import tempfile

import pytest

import hp
from hp import Client, connect_init


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

KEYS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef0"}


@pytest.fixture
def keys_file():
    d = tempfile.mkdtemp(prefix="hotplex-e2e-keys-")
    p = os.path.join(d, "keys")
    with open(p, "w") as f:
        f.write("# test users\n")
        for u, k in KEYS.items():
            f.write(f"{u}:{k}\n")
    os.chmod(p, 0o600)
    yield p
    os.unlink(p)
    os.rmdir(d)


async def connect_as(gw, user, name=None, drain=True, **init_kw):
    c = await Client.connect(gw, name=name or user,
                             extra_headers={"X-API-Key": KEYS[user]})
    await c.init(**init_kw)
    if drain and not c.failed_ack:
        await hp.drain_handshake(c)
    return c


def rest(gw, sid, user=None, after=0, limit=100):
    headers = {"X-API-Key": KEYS[user]} if user else None
    st, _, body = gw.http("GET", f"/api/sessions/{sid}/events?after={after}&limit={limit}",
                          headers=headers)
    return st, json.loads(body)


def state_events(evs, state=None):
    return [e for e in evs if e.type == "state" and (state is None or e.data["state"] == state)]


async def expect_state(c, state, timeout, message=None):
    evs = await c.until_state(state, timeout=timeout)
    st = evs[-1]
    if message is not None:
        assert st.data.get("message") == message, f"state {state} message: {st.raw}"
    return evs


async def expect_refused_init(gw, code, needle, user=None, **init_kw):
    if user:
        c = await Client.connect(gw, extra_headers={"X-API-Key": KEYS[user]})
    else:
        c = await Client.connect(gw)
    ack = await c.init(expect_ok=False, **init_kw)
    assert ack.data["code"] == code, ack.raw
    assert needle in ack.data["error"], f"error text {ack.data['error']!r} should name {needle}"
    cc, _, _ = await c.expect_close(timeout=5)
    assert cc == 1000
    return ack


# --------------------------------------------------------------------------
# timers
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(40)
async def test_idle_timeout_terminates_and_input_resumes(gw_factory):
    gw = gw_factory({"session.idle_timeout_ms": 1500})
    c = await connect_init(gw, key="idle")
    # a turn longer than the idle timeout is not idle: it completes
    t = await c.turn("SCENARIO:slow 25", timeout=15)
    assert t.done.data["success"] is True and t.text == hp.expected_words(25)
    assert not state_events(t.events, "terminated")
    # then, idle: stopped after 1.5 s (+ one cron period)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    evs = await expect_state(c, "terminated", timeout=5, message="idle timeout (1500 ms)")
    took = loop.time() - t0
    assert [e.type for e in evs] == ["state"], evs
    assert 1.3 <= took <= 3.5, f"idle timeout fired after {took:.2f}s"
    assert gw.health()["agents"] == 0
    # resumable: the next input starts the agent again
    t = await c.turn("back", timeout=15)
    first = t.events[0]
    assert first.type == "state" and first.data == {"state": "running", "message": "resumed"}
    assert t.message.data["content"] == "back"
    await c.close()


@pytest.mark.timeout_s(40)
async def test_max_lifetime_stops_the_agent_even_mid_turn(gw_factory):
    gw = gw_factory({"session.max_lifetime_ms": 2000, "session.idle_timeout_ms": 0})
    c = await connect_init(gw, key="lifetime")
    await c.send("input", {"content": "SCENARIO:slow 80"})  # 8 s: longer than the lifetime
    evs = await c.until("done", timeout=8)
    evs += await c.until_state("terminated", timeout=5)
    t = hp.Turn(evs)
    err = t.one("error")
    assert err.data["code"] == "SESSION_TERMINATED" and "max lifetime" in err.data["message"], err
    assert t.done.data["success"] is False
    assert t.index("error") < t.index("done")
    term = state_events(evs, "terminated")
    assert len(term) == 1 and term[0].data["message"] == "max lifetime (2000 ms)"
    assert t.index("done") < evs.index(term[0])
    assert len(t.deltas) < 80
    # resumed by the next input; an idle agent is also stopped at its lifetime
    t2 = await c.turn("short one", timeout=10)
    # (no "resumed": the cut turn never finished, so the agent has no transcript yet)
    assert t2.events[0].type == "state" and t2.events[0].data["state"] == "running"
    t3 = await c.turn("second one", timeout=10)
    assert t3.done.data["success"] is True
    assert t2.done.data["success"] is True
    await expect_state(c, "terminated", timeout=5, message="max lifetime (2000 ms)")
    await c.close()


@pytest.mark.timeout_s(40)
async def test_zombie_turn_without_output_is_ended(gw_factory):
    """A turn whose agent stops producing output: echo with a 60 s pause
    between deltas sends message.start and one delta, then nothing."""
    gw = gw_factory({"session.zombie_timeout_ms": 1500, "session.idle_timeout_ms": 0,
                     "echo.delta_interval_ms": 60000})
    c = await connect_init(gw, key="zombie")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await c.send("input", {"content": "one two three"})
    evs = await c.until("done", timeout=8)
    took = loop.time() - t0
    evs += await c.until_state("terminated", timeout=5)
    t = hp.Turn(evs)
    assert t.text == "one ", "the first delta came before the agent went silent"
    err = t.one("error")
    assert err.data["code"] == "SESSION_TERMINATED", err
    assert "zombie" in err.data["message"], err
    assert t.done.data["success"] is False
    term = state_events(evs, "terminated")
    assert len(term) == 1 and term[0].data["message"] == "zombie: no agent output for 1500 ms"
    assert 1.3 <= took <= 3.5, f"zombie check fired after {took:.2f}s"
    assert t.index("error") < t.index("done") < evs.index(term[0])
    pong = await c.assert_quiet(delay=0.2)
    assert pong.data["state"] == "terminated"
    await c.close()


@pytest.mark.timeout_s(40)
async def test_zombie_check_skips_a_pending_permission(gw_factory):
    gw = gw_factory({"session.zombie_timeout_ms": 1000, "session.idle_timeout_ms": 0})
    c = await connect_init(gw, key="zombie-perm")
    await c.send("input", {"content": "SCENARIO:permission"})
    pr = (await c.until("permission_request", timeout=5))[-1]
    # no output for 3x the zombie timeout while the user decides: not a zombie
    pong = await c.assert_quiet(delay=3.2)
    assert pong.data["state"] == "running"
    await c.send("permission_response", {"id": pr.data["id"], "allowed": True})
    t = await c.collect_turn(timeout=10)
    assert t.done.data["success"] is True
    assert t.message.data["content"] == "permission granted"
    await c.close()


@pytest.mark.timeout_s(40)
async def test_retention_purges_terminated_sessions(gw_factory):
    gw = gw_factory({"session.retention_ms": 1500})
    a = await connect_init(gw, key="old", name="a")
    sid = a.session_id
    await a.turn("to be forgotten")
    old_ids = {e.id for e in a.stream}
    await a.send("control", {"action": "terminate"})
    await expect_state(a, "terminated", timeout=5, message="terminated by client")
    # attached: kept although untouched for longer than the retention
    kept = await connect_init(gw, key="kept", name="kept")
    await kept.turn("x")
    await kept.send("control", {"action": "terminate"})
    await expect_state(kept, "terminated", timeout=5)
    # alive (idle agent), no connection: kept too (only terminated/deleted expire)
    alive = await connect_init(gw, key="alive", name="alive")
    await alive.turn("y")
    alive_id = alive.session_id
    await alive.close()
    await a.close()
    n0 = gw.health()["sessions"]
    await asyncio.sleep(3.2)
    st, j = rest(gw, sid)
    assert st == 404 and j["error"]["code"] == "SESSION_NOT_FOUND", (st, j)
    assert gw.health()["sessions"] == n0 - 1
    assert rest(gw, kept.session_id)[0] == 200, "a terminated session with a connection was purged"
    assert rest(gw, alive_id)[0] == 200, "a live session was purged"
    # the same key now starts afresh: nothing of the old stream comes back
    b = await Client.connect(gw, name="b")
    ack = await b.init(key="old", last_seq=0)
    assert ack.data["last_seq"] <= 1, ack.raw
    await hp.drain_handshake(b)
    t = await b.turn("fresh")
    assert t.message.data["content"] == "fresh"
    assert not old_ids & {e.id for e in b.stream}
    st, j = rest(gw, b.session_id)
    assert st == 200 and not old_ids & {e["id"] for e in j["events"]}
    await hp.close_all([b, kept])


@pytest.mark.timeout_s(40)
async def test_purged_delete_tombstone_does_not_fork_the_key(gw_factory):
    """key K -> session A; delete A; K -> B (a new id: A is never reused); talk
    on B. When retention purges A's tombstone, K must still lead to B - not to
    a fresh session that silently reuses A's id and leaves B's conversation
    behind."""
    gw = gw_factory({"session.retention_ms": 1500})
    a = await connect_init(gw, key="K", name="a")
    A = a.session_id
    await a.send("control", {"action": "delete"})
    await a.expect_close(timeout=5)
    b = await connect_init(gw, key="K", name="b")
    B = b.session_id
    assert B != A
    await b.turn("the conversation that matters")
    await b.close()
    await asyncio.sleep(3.2)  # A's tombstone is purged; B is idle and kept
    assert rest(gw, B)[0] == 200
    c = await connect_init(gw, key="K", name="c")
    assert c.session_id != A, "a deleted session's id was reused"
    assert c.session_id == B, (
        f"key K forked: it now names a new session {c.session_id} while its conversation "
        f"lives on in {B}")
    await c.close()


# --------------------------------------------------------------------------
# quotas
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(40)
async def test_quota_max_agents(gw_factory):
    gw = gw_factory({"worker.max_agents": 2})
    c1 = await connect_init(gw, key="q1", name="c1")
    c2 = await connect_init(gw, key="q2", name="c2")
    await expect_refused_init(gw, "GATEWAY_OVERLOAD", "worker.max_agents", key="q3")
    assert gw.health()["agents"] == 2
    # a terminated session cannot resume while the limit is reached
    await c1.send("control", {"action": "terminate"})
    await expect_state(c1, "terminated", timeout=5)
    c3 = await connect_init(gw, key="q3", name="c3")  # the freed slot
    c1.extra_reply_codes = {"GATEWAY_OVERLOAD"}
    await c1.send("input", {"content": "wake up"})
    err = await c1.expect_error_reply("GATEWAY_OVERLOAD")
    assert "worker.max_agents" in err.data["message"]
    pong = await c1.assert_quiet(delay=0.2)
    assert pong.data["state"] == "terminated"
    # freeing one lets it resume
    await c3.send("control", {"action": "terminate"})
    await expect_state(c3, "terminated", timeout=5)
    t = await c1.turn("wake up", timeout=10)
    assert t.events[0].type == "state" and t.events[0].data["state"] == "running"
    assert t.message.data["content"] == "wake up"
    await hp.close_all([c1, c2, c3])


@pytest.mark.timeout_s(40)
async def test_quota_max_agents_per_user(gw_factory, keys_file):
    gw = gw_factory({"auth.keys_file": keys_file, "worker.max_agents_per_user": 1})
    a1 = await connect_as(gw, "alice", key="a1")
    await expect_refused_init(gw, "GATEWAY_OVERLOAD", "worker.max_agents_per_user",
                              user="alice", key="a2")
    b1 = await connect_as(gw, "bob", key="b1")  # another user's quota
    # another connection to alice's existing session needs no new agent
    a1b = await connect_as(gw, "alice", name="alice-2", key="a1")
    assert a1b.session_id == a1.session_id
    await a1.send("control", {"action": "terminate"})
    await expect_state(a1, "terminated", timeout=5)
    a2 = await connect_as(gw, "alice", name="alice-3", key="a2")
    assert a2.session_id != a1.session_id
    await hp.close_all([a1, a1b, a2, b1])


@pytest.mark.timeout_s(40)
async def test_quota_sessions_per_user(gw_factory, keys_file):
    gw = gw_factory({"auth.keys_file": keys_file, "session.max_per_user": 2})
    s1 = await connect_as(gw, "alice", key="s1")
    s2 = await connect_as(gw, "alice", key="s2")
    await expect_refused_init(gw, "GATEWAY_OVERLOAD", "session.max_per_user",
                              user="alice", key="s3")
    await expect_refused_init(gw, "GATEWAY_OVERLOAD", "session.max_per_user",
                              user="alice")  # no key: a new session too
    # terminated sessions still count; attaching to an existing one is fine
    await s2.send("control", {"action": "terminate"})
    await expect_state(s2, "terminated", timeout=5)
    await expect_refused_init(gw, "GATEWAY_OVERLOAD", "session.max_per_user",
                              user="alice", key="s3")
    again = await connect_as(gw, "alice", name="again", key="s2")
    assert again.session_id == s2.session_id
    b = await connect_as(gw, "bob", key="s1")
    assert b.session_id != s1.session_id
    # deleting one frees its place
    await s1.send("control", {"action": "delete"})
    await s1.expect_close(timeout=5)
    s3 = await connect_as(gw, "alice", name="s3", key="s3")
    await hp.close_all([s2, again, b, s3])


# --------------------------------------------------------------------------
# control actions, from a second connection
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(60)
async def test_control_actions_from_a_second_connection(gw_factory):
    work = tempfile.mkdtemp(prefix="hotplex-e2e-cd-")
    gw = gw_factory()
    a = await connect_init(gw, key="ctl", name="a")
    b = await connect_init(gw, key="ctl", name="b")
    sid = a.session_id
    assert b.session_id == sid

    async def both_state(state, message):
        for c in (a, b):
            evs = await expect_state(c, state, timeout=10, message=message)
        return evs

    # interrupt a turn a started
    await a.send("input", {"content": "SCENARIO:slow 40"})
    await b.until("message.delta", timeout=5)
    await b.send("control", {"action": "interrupt"})
    for c in (a, b):
        evs = await c.until("done", timeout=5)
        assert evs[-1].data["success"] is False and evs[-1].data["stats"]["interrupted"] is True
        await expect_state(c, "idle", timeout=5)

    # terminate, then a's input resumes
    await b.send("control", {"action": "terminate"})
    await both_state("terminated", "terminated by client")
    await a.send("input", {"content": "resume me"})
    for c in (a, b):
        t = await c.collect_turn(timeout=10)
        assert t.events[0].data == {"state": "running", "message": "resumed"}
        assert t.message.data["content"] == "resume me"

    # gc
    await b.send("control", {"action": "gc"})
    await both_state("terminated", "gc")
    assert gw.health()["agents"] == 0

    # reset with no agent, then with one
    await b.send("control", {"action": "reset"})
    await both_state("running", "context_reset")
    await b.send("control", {"action": "reset"})
    await both_state("running", "context_reset")
    for c in (a, b):
        pong = await c.assert_quiet(delay=0.2)
        assert pong.data["state"] == "running"

    # cd: refused for a system directory (an error for b only), fine elsewhere
    for bad in ("/etc", "/usr/lib", "relative/dir"):
        await b.send("control", {"action": "cd", "details": {"path": bad}})
        err = await b.expect_error_reply("CONFIG_INVALID")
        assert bad in err.data["message"] or "absolute" in err.data["message"], err
    target = os.path.join(work, "project")
    await b.send("control", {"action": "cd", "details": {"path": target}})
    await both_state("running", f"work_dir {os.path.realpath(target)}")
    assert os.path.isdir(target)
    await a.assert_quiet(delay=0.2)
    t = await a.turn("in the new dir", timeout=10)
    assert t.message.data["content"] == "in the new dir"
    await b.collect_turn(timeout=10)

    # delete: both closed with 1000 after the state event; history gone; the
    # id is not reused by the key
    old_ids = {e.id for e in a.stream}
    await b.send("control", {"action": "delete"})
    for c in (a, b):
        await expect_state(c, "deleted", timeout=5, message="deleted by client")
        code, _, more = await c.expect_close(timeout=5)
        assert code == 1000 and not [e for e in more if e.stream]
    st, j = rest(gw, sid)
    assert st == 404 and j["error"]["code"] == "SESSION_NOT_FOUND"
    c = await Client.connect(gw, name="c")
    ack = await c.init(key="ctl", last_seq=0)
    assert ack.data["session_id"] != sid, "a deleted id was reused"
    assert ack.data["last_seq"] <= 1
    await hp.drain_handshake(c)
    assert not old_ids & {e.id for e in c.stream}
    # nor by addressing it directly
    d = await Client.connect(gw, name="d")
    ack = await d.init(key=sid)
    assert ack.data["session_id"] not in (sid, c.session_id)
    await hp.close_all([c, d])


@pytest.mark.timeout_s(40)
async def test_non_owner_cannot_attach_read_or_control(gw_factory, keys_file):
    gw = gw_factory({"auth.keys_file": keys_file})
    alice = await connect_as(gw, "alice", key="secret-plans")
    sid = alice.session_id
    await alice.turn("alice only")
    head = alice.pos
    assert rest(gw, sid, user="alice")[0] == 200

    # bob names alice's session by its id: he gets a new session of his own
    bob = await connect_as(gw, "bob", key=sid, last_seq=0)
    assert bob.session_id != sid
    assert bob.ack.data["last_seq"] <= 1
    assert not {e.id for e in alice.stream} & {e.id for e in bob.stream}
    # and by alice's key: his own derivation, not hers
    bob2 = await connect_as(gw, "bob", name="bob2", key="secret-plans")
    assert bob2.session_id not in (sid, bob.session_id)
    # he cannot read its events
    st, j = rest(gw, sid, user="bob")
    assert st == 404 and j["error"]["code"] == "SESSION_NOT_FOUND", (st, j)
    # his control actions reach only his own sessions
    for action in ("interrupt", "terminate", "reset", "delete"):
        await bob.send("control", {"action": action})
    await bob.expect_close(timeout=10)
    pong = await alice.assert_quiet(delay=0.3)
    assert pong.data["state"] == "idle" and pong.seq == head
    t = await alice.turn("still mine")
    assert t.message.data["content"] == "still mine"
    assert rest(gw, sid, user="alice")[0] == 200
    # no credentials at all: refused
    c = await Client.connect(gw)
    ack = await c.init(key=sid, expect_ok=False)
    assert ack.data["code"] == "UNAUTHORIZED"
    assert gw.http("GET", f"/api/sessions/{sid}/events")[0] == 401
    await hp.close_all([alice, bob2])
