"""Durability of the event stream: a gateway crash (SIGKILL), reconnects at
random moments, resuming from long ago and REST polling never lose, duplicate
or reorder an event, and every client ends up with the same stream.

Seeded chaos: HOTPLEX_CHAOS_SEED=<n> replays a run (the seed is printed)."""

import asyncio
import json
import os
import random
import signal
import time

import pytest

import hp
from hp import Client, connect_init


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def rest_page(gw, sid, after, limit, headers=None):
    st, _, body = gw.http("GET", f"/api/sessions/{sid}/events?after={after}&limit={limit}",
                          headers=headers, timeout=20)
    try:
        j = json.loads(body)
    except ValueError:
        raise AssertionError(f"REST body is not JSON: {body[:300]!r}")
    return st, j


def rest_all(gw, sid, limit=1000):
    """Every stored event of a session (full envelopes), paging with after/limit."""
    out, after = [], 0
    while True:
        st, j = rest_page(gw, sid, after, limit)
        assert st == 200, f"REST status {st}: {j}"
        if not j["events"]:
            return out, j
        out += j["events"]
        after = j["next_after"]


def keys_of(raw_events):
    return {e["seq"]: hp.check_envelope(e).key() for e in raw_events}


def delta_count(c):
    return sum(1 for e in c.stream if e.type == "message.delta")


async def rest_head(gw, sid):
    st, j = await asyncio.to_thread(rest_page, gw, sid, 0, 1)
    assert st == 200, j
    return j["last_seq"]


# --------------------------------------------------------------------------
# SIGKILL mid-stream
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(60)
async def test_sigkill_mid_stream_nothing_lost_seq_continues(gw_factory):
    gw = gw_factory({"echo.delta_interval_ms": 1})
    key = "crash-me"
    a = await connect_init(gw, key=key, name="a")
    sid = a.session_id
    t0 = await a.turn("before the crash")
    assert t0.done.data["success"] is True
    await a.send("input", {"content": "SCENARIO:long 5000"})
    while delta_count(a) < 400:
        await a.recv(10)
    seen = a.pos
    record = {e.seq: e.key() for e in a.stream}
    assert set(record) == set(range(1, seen + 1)), "a attached at 0 and must hold 1..pos"
    gw.kill()
    with pytest.raises(hp.Closed):
        while True:
            ev = await a.recv(5)
            record[ev.seq] = ev.key()  # anything still in flight was durable too
    seen = a.pos

    gw.start()  # same data dir
    b = await Client.connect(gw, name="b")
    ack = await b.init(key=key, last_seq=seen)
    assert ack.data["session_id"] == sid, "a new session after the crash"
    head = ack.data["last_seq"]
    assert ack.seq == seen
    assert head >= seen, f"the restarted gateway's head {head} is behind what a client saw ({seen})"
    await b.until_seq(head, timeout=20)
    for e in b.stream:
        assert e.seq not in record, f"seq {e.seq} sent twice with different content?"
    # the next turn works and seq continues from the head
    t = await b.turn("after the crash", timeout=20)
    assert t.done.data["success"] is True
    assert t.message.data["content"] == "after the crash"
    new_evs = [e for e in b.stream if e.seq > head]
    assert new_evs and new_evs[0].seq == head + 1
    for e in b.stream:
        record[e.seq] = e.key()
    final = b.pos

    # the store agrees with everything the clients received: same ids and seqs
    stored, j = await asyncio.to_thread(rest_all, gw, sid)
    assert j["last_seq"] == final and j["oldest_seq"] == 1
    skeys = keys_of(stored)
    assert sorted(skeys) == list(range(1, final + 1)), "stored stream has a gap"
    for s, k in record.items():
        assert skeys[s] == k, f"seq {s}: stored event differs from the one a client received"
    # ... and a resume from 0 replays exactly that
    c = await Client.connect(gw, name="c")
    ack = await c.init(key=key, last_seq=0)
    assert ack.data["last_seq"] == final
    await c.until_seq(final, timeout=20)
    assert [e.key() for e in c.stream] == [skeys[s] for s in range(1, final + 1)]
    await hp.close_all([b, c])


@pytest.mark.timeout_s(60)
async def test_turn_cut_by_gateway_crash_ends_with_done(gw_factory):
    """A turn that was streaming when the gateway died must still end, for
    the clients, in exactly one `done` (success false, after an error), and the
    session's move to `terminated` must be a state event like any other
    transition - not a silent change that leaves a dangling message.start."""
    gw = gw_factory({"echo.delta_interval_ms": 1})
    key = "cut-turn"
    a = await connect_init(gw, key=key, name="a")
    await a.send("input", {"content": "SCENARIO:long 5000"})
    while delta_count(a) < 200:
        await a.recv(10)
    gw.kill()
    with pytest.raises(hp.Closed):
        while True:
            await a.recv(5)
    seen = a.pos
    gw.start()
    b = await Client.connect(gw, name="b")
    ack = await b.init(key=key, last_seq=seen)
    await b.until_seq(ack.data["last_seq"], timeout=20)
    t = await b.turn("next turn", timeout=20)
    after = [e for e in b.stream if e.seq > seen]
    before_next = []
    for e in after:
        if e.type == "message.start":
            break
        before_next.append(e)
    summary = [(e.seq, e.type, e.data.get("state") or e.data.get("code")) for e in before_next]
    dones = [e for e in before_next if e.type == "done"]
    assert len(dones) == 1 and dones[0].data["success"] is False, (
        f"the turn cut by the crash never ended: after the last delta the client saw only "
        f"{summary} before the next turn")
    assert any(e.type == "error" for e in before_next), summary
    states = [e.data["state"] for e in before_next if e.type == "state"]
    assert "terminated" in states, f"no state terminated after the crash: {summary}"
    assert t.done.data["success"] is True
    await b.close()


@pytest.mark.timeout_s(60)
async def test_graceful_restart_mid_turn_ends_the_turn_and_resumes(gw_factory):
    """SIGTERM while a turn streams: clients are closed with 1001, the turn is
    ended (error SESSION_TERMINATED, done{success:false}, state terminated
    "gateway shutdown"), all of it stored; after the restart a resume gets
    exactly the events the client had not seen, and the session goes on."""
    gw = gw_factory({"echo.delta_interval_ms": 1})
    a = await connect_init(gw, key="graceful", name="a")
    await a.send("input", {"content": "SCENARIO:long 5000"})
    while delta_count(a) < 300:
        await a.recv(10)
    gw.send_signal(signal.SIGTERM)
    code, _, _ = await a.expect_close(timeout=15)
    assert code == 1001
    assert await gw.await_exit(15) == 0
    seen = a.pos
    record = {e.seq: e.key() for e in a.stream}
    gw.start()
    b = await Client.connect(gw, name="b")
    ack = await b.init(key="graceful", last_seq=seen)
    head = ack.data["last_seq"]
    missed = await b.until_seq(head, timeout=20)
    t = hp.Turn(missed)
    assert t.one("error").data["code"] == "SESSION_TERMINATED"
    assert t.done.data["success"] is False
    term = [e for e in missed if e.type == "state" and e.data["state"] == "terminated"]
    assert len(term) == 1 and term[0].data.get("message") == "gateway shutdown", missed
    assert t.index("error") < t.index("done") < missed.index(term[0])
    t2 = await b.turn("after the restart", timeout=20)
    assert t2.events[0].seq == head + 1 and t2.done.data["success"] is True
    stored, _ = await asyncio.to_thread(rest_all, gw, a.session_id)
    skeys = keys_of(stored)
    assert sorted(skeys) == list(range(1, b.pos + 1))
    for s, k in record.items():
        assert skeys[s] == k
    for e in b.stream:
        assert skeys[e.seq] == e.key()
    await b.close()


# --------------------------------------------------------------------------
# seeded chaos: random disconnects and resumes during long turns
# --------------------------------------------------------------------------

CHAOS_CLIENTS = 4
CHAOS_TURNS = 3
CHAOS_WORDS = 2000


class Plan:
    """Inputs one session is to receive, sent one at a time (each confirmed by
    a pong on the same connection before the next goes out), so their order
    is known."""

    def __init__(self, key, turns, words):
        self.key = key
        self.todo = [f"SCENARIO:long {words + k}" for k in range(turns)]
        self.sent = []
        self.lock = asyncio.Lock()
        self.session_id = None

    @property
    def turns(self):
        return len(self.todo) + len(self.sent)


class ChaosClient:
    def __init__(self, gw, plan, name, rng):
        self.gw = gw
        self.plan = plan
        self.name = name
        self.rng = rng
        self.collected = {}   # seq -> Ev, over all connections
        self.last = 0
        self.conns = 0
        self.aborts = 0
        self.closes = 0
        self.inputs = 0

    def finished(self):
        if self.plan.todo or not self.collected:
            return False
        evs = self.collected
        dones = sum(1 for e in evs.values() if e.type == "done")
        top = evs[max(evs)]
        return dones >= self.plan.turns and top.type == "state" and top.data["state"] == "idle"

    def take(self, c, ev):
        if not ev.stream:
            return
        assert ev.seq not in self.collected, (
            f"{c.name}: seq {ev.seq} received twice across resumes")
        self.collected[ev.seq] = ev

    async def run(self, deadline):
        while True:
            assert time.monotonic() < deadline, f"{self.name}: chaos did not settle"
            self.conns += 1
            c = await Client.connect(self.gw, name=f"{self.name}.{self.conns}")
            ack = await c.init(key=self.plan.key, last_seq=self.last)
            if self.plan.session_id is None:
                self.plan.session_id = ack.data["session_id"]
            assert ack.data["session_id"] == self.plan.session_id, "a different session"
            assert ack.seq == max(1, self.last) and ack.data["last_seq"] >= self.last
            life = time.monotonic() + self.rng.uniform(0.02, 0.5)
            if self.plan.todo and self.rng.random() < 0.6:
                async with self.plan.lock:
                    if self.plan.todo:
                        text = self.plan.todo[0]
                        await c.send("input", {"content": text})
                        await c.send("ping", {})
                        while True:  # the pong: the input has been taken
                            ev = await c.recv(10)
                            self.take(c, ev)
                            if ev.type == "pong":
                                break
                            assert not (ev.type == "error" and not ev.stream), ev
                        self.plan.sent.append(self.plan.todo.pop(0))
                        self.inputs += 1
            while time.monotonic() < life and not self.finished():
                ev = await c.recv_or_none(max(0.001, life - time.monotonic()))
                if ev is not None:
                    self.take(c, ev)
            if c.pos is not None:
                self.last = c.pos
            if self.finished():
                pong = await c.assert_quiet(delay=0.05)
                assert pong.seq == self.last
                await c.close()
                return
            if self.rng.random() < 0.5:
                c.abort()
                self.aborts += 1
            else:
                await c.close()
                self.closes += 1
            await asyncio.sleep(self.rng.uniform(0, 0.15))


def check_session_streams(clients, plan, stored):
    """Every client's stream is 1..head, no gap, identical to the others' and to
    the store, and holds exactly the planned turns, in order, complete."""
    skeys = keys_of(stored)
    head = max(skeys)
    assert sorted(skeys) == list(range(1, head + 1)), "store has a gap"
    for cl in clients:
        got = sorted(cl.collected)
        assert got == list(range(1, head + 1)), (
            f"{cl.name}: collected {len(got)} events, not 1..{head} "
            f"(missing {sorted(set(range(1, head + 1)) - set(got))[:10]})")
        for s in got:
            assert cl.collected[s].key() == skeys[s], (
                f"{cl.name}: seq {s} differs from the stored event (id/type/data)")
    evs = [clients[0].collected[s] for s in range(1, head + 1)]
    t = hp.Turn(evs)
    assert [m.data["content"] for m in t.of("message")] == [
        hp.expected_words(int(x.split()[1])) for x in plan.sent], "turns lost or reordered"
    assert len(t.of("done")) == plan.turns and all(d.data["success"] for d in t.of("done"))
    starts = t.of("message.start")
    for st in starts:
        mid = st.data["id"]
        i = evs.index(st)
        text = []
        for e in evs[i + 1:]:
            if e.type == "message.end":
                break
            if e.type == "message.delta":
                assert e.data["message_id"] == mid
                text.append(e.data["content"])
        msg = next(e for e in evs[i:] if e.type == "message")
        assert "".join(text) == msg.data["content"], "deltas do not add up to the message"
    return head


@pytest.mark.timeout_s(110)
async def test_chaos_reconnects_every_client_gets_the_same_complete_stream(gw_factory):
    seed = int(os.environ.get("HOTPLEX_CHAOS_SEED") or random.randrange(1 << 30))
    print(f"\n[chaos] seed {seed} (HOTPLEX_CHAOS_SEED={seed} replays the decisions)")
    gw = gw_factory({"echo.delta_interval_ms": 1,
                     # small window: resumes read back from the store
                     "session.ring_bytes": "64k",
                     # no merging or slow-consumer closes: every client must hold
                     # every single event, delta by delta
                     "session.out_soft_limit": "32m", "session.out_hard_limit": "64m"})
    deadline = time.monotonic() + 90
    shared = Plan("chaos-shared", CHAOS_TURNS, CHAOS_WORDS)
    clients = [ChaosClient(gw, shared, f"s{i}", random.Random(f"{seed}:shared:{i}"))
               for i in range(CHAOS_CLIENTS)]
    own_plans = [Plan(f"chaos-own-{i}", 2, 300 + 100 * i) for i in range(CHAOS_CLIENTS)]
    own = [ChaosClient(gw, p, f"o{i}", random.Random(f"{seed}:own:{i}"))
           for i, p in enumerate(own_plans)]
    t0 = time.monotonic()
    await asyncio.gather(*(c.run(deadline) for c in clients + own))
    took = time.monotonic() - t0
    stored, _ = await asyncio.to_thread(rest_all, gw, shared.session_id)
    head = check_session_streams(clients, shared, stored)
    for cl, p in zip(own, own_plans):
        st, _ = await asyncio.to_thread(rest_all, gw, p.session_id)
        check_session_streams([cl], p, st)
    assert len({p.session_id for p in own_plans} | {shared.session_id}) == CHAOS_CLIENTS + 1
    stats = ", ".join(f"{c.name}: {c.conns} conns/{c.aborts} aborts/{c.inputs} inputs"
                      for c in clients + own)
    print(f"[chaos] seed {seed}: shared head {head} in {took:.1f}s; {stats}")
    assert sum(c.conns for c in clients) >= 2 * CHAOS_CLIENTS, "too little chaos"
    await hp.wait_for(lambda: gw.health()["connections"] == 0, timeout=5,
                      what="all connections gone")


# --------------------------------------------------------------------------
# resume from long ago: read back from the store
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(60)
async def test_resume_from_zero_replays_everything_from_the_store(gw_factory):
    # no merging: the burst (3000 deltas at once) may put this reader more
    # than the default soft limit behind, and it must hold every delta
    gw = gw_factory({"echo.delta_interval_ms": 0, "session.ring_bytes": "4096",
                     "session.out_soft_limit": "32m", "session.out_hard_limit": "64m"})
    key = "old-resume"
    a = await connect_init(gw, key=key, name="a")
    assert a.stream[0].seq == 1
    t = await a.turn("SCENARIO:long 3000", timeout=30)
    assert t.text == hp.expected_words(3000)
    head = a.pos
    record = [e.key() for e in a.stream]
    assert [k[0] for k in record] == list(range(1, head + 1))

    # everything is far behind the 4 KiB window: all of it comes from the store
    b = await Client.connect(gw, name="b")
    ack = await b.init(key=key, last_seq=0)
    assert ack.seq == 1 and ack.data["last_seq"] == head
    await b.until_seq(head, timeout=30)
    assert [e.key() for e in b.stream] == record, "replay differs from the original stream"
    pong = await b.assert_quiet(delay=0.2)
    assert pong.seq == head

    # and while a turn is live: the replay from the store hands over to the
    # live stream without a gap or a duplicate
    await a.send("input", {"content": "SCENARIO:slow 25"})
    pre = await a.until("message.delta", timeout=10)
    c = await Client.connect(gw, name="c")
    ack = await c.init(key=key, last_seq=0)
    assert ack.seq == 1
    ta = hp.Turn(pre + (await a.collect_turn(timeout=20)).events)
    assert ack.data["last_seq"] < a.pos, "c must have attached while the turn was live"
    await c.until_seq(a.pos, timeout=20)
    assert [e.key() for e in c.stream] == [e.key() for e in a.stream], (
        "a resume from 0 during a live turn must equal the live client's stream")
    assert ta.text == hp.expected_words(25)
    # a later resume from the middle
    d = await Client.connect(gw, name="d")
    mid = head // 2
    await d.init(key=key, last_seq=mid)
    await d.until_seq(a.pos, timeout=20)
    assert [e.key() for e in d.stream] == [e.key() for e in a.stream if e.seq > mid]
    await hp.close_all([a, b, c, d])


# --------------------------------------------------------------------------
# REST polling
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(60)
async def test_rest_polling_pages_match_the_ws_stream(gw_factory):
    # no merging: the burst may put the reader more than the default soft
    # limit behind, and the test compares every single delta with REST
    gw = gw_factory({"echo.delta_interval_ms": 0,
                     "session.out_soft_limit": "32m", "session.out_hard_limit": "64m"})
    a = await connect_init(gw, key="poll", name="a")
    sid = a.session_id
    await a.turn("hello poller")
    await a.turn("SCENARIO:long 2500", timeout=30)
    head = a.pos
    ws = {e.seq: e.raw for e in a.stream}
    assert sorted(ws) == list(range(1, head + 1))

    limit, after, pages, got = 137, 0, 0, []
    while True:
        st, j = await asyncio.to_thread(rest_page, gw, sid, after, limit)
        assert st == 200, j
        assert j["session_id"] == sid and j["after"] == after
        assert j["last_seq"] == head and j["oldest_seq"] == 1 and j["resync"] is False, j
        evs = j["events"]
        assert len(evs) == min(limit, head - after), (after, len(evs))
        if not evs:
            assert j["next_after"] == after
            break
        assert [e["seq"] for e in evs] == list(range(after + 1, after + len(evs) + 1))
        assert j["next_after"] == evs[-1]["seq"]
        got += evs
        after = j["next_after"]
        pages += 1
    assert pages == -(-head // limit)
    assert len(got) == head
    for e in got:
        hp.check_envelope(e)
        assert e == ws[e["seq"]], f"REST event {e['seq']} differs from the WebSocket one"

    # the largest page, and the bounds
    st, j = await asyncio.to_thread(rest_page, gw, sid, 0, 1000)
    assert st == 200 and len(j["events"]) == 1000 and j["next_after"] == 1000
    for bad in ("after=0&limit=1001", "after=0&limit=0", "after=-1&limit=5", "after=x"):
        st, _, body = await asyncio.to_thread(
            gw.http, "GET", f"/api/sessions/{sid}/events?{bad}")
        assert st == 400, f"{bad}: status {st} {body[:200]!r}"
    st, j = await asyncio.to_thread(rest_page, gw, sid, head, 10)
    assert st == 200 and j["events"] == [] and j["next_after"] == head
    st, j = await asyncio.to_thread(rest_page, gw, "00000000-0000-4000-8000-000000000000", 0, 10)
    assert st == 404 and j["error"]["code"] == "SESSION_NOT_FOUND", j

    # polling while a turn streams: the pages still line up with the stream
    await a.send("input", {"content": "SCENARIO:slow 15"})
    after, polled = head, []
    t_end = time.monotonic() + 15
    while time.monotonic() < t_end:
        st, j = await asyncio.to_thread(rest_page, gw, sid, after, 7)
        assert st == 200
        polled += j["events"]
        after = j["next_after"]
        if any(e["event"]["type"] == "state" and e["event"]["data"]["state"] == "idle"
               for e in j["events"]):
            break
        await asyncio.sleep(0.05)
    ta = await a.collect_turn(timeout=15)
    assert [e["seq"] for e in polled] == list(range(head + 1, a.pos + 1))
    assert polled == [e.raw for e in a.stream if e.seq > head]
    assert ta.text == hp.expected_words(15)
    await a.close()


async def test_retention_by_count_resyncs_old_resumes(gw_factory):
    """session.max_events keeps the newest events after each turn; a resume
    from before them starts with control{resync, from_seq} and continues from
    the oldest kept event, in order, with nothing after it missing."""
    gw = gw_factory({"echo.delta_interval_ms": 0, "session.ring_bytes": "4096",
                     "session.max_events": 100})
    key = "count-retention"
    a = await connect_init(gw, key=key, name="a")
    for _ in range(3):
        await a.turn("SCENARIO:long 80", timeout=30)
    head = a.pos
    assert head > 200
    b = await Client.connect(gw, name="b")
    b.accept_resync = True
    await b.init(key=key, last_seq=0)
    ev = await b.recv(timeout=10)
    assert ev.type == "control" and ev.data["action"] == "resync", ev.raw
    from_seq = ev.data["from_seq"]
    # the trim runs after each turn: at most max_events (plus the turn's
    # tail committed after the last trim) are kept
    assert head - 100 - 20 <= from_seq - 1 <= head - 100 + 1, (from_seq, head)
    await b.until_seq(head, timeout=20)
    got = [e.seq for e in b.stream if e.seq >= from_seq]
    assert got == list(range(from_seq, head + 1))
    want = {e.seq: e.key() for e in a.stream}
    assert all(e.key() == want[e.seq] for e in b.stream if e.seq >= from_seq)
    await a.close()
    await b.close()
