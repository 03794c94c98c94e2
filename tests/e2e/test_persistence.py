"""Sessions and their streams survive a gateway restart on the same data dir;
shutdown is graceful (close 1001, exit 0)."""

import asyncio
import signal
import time

import pytest

import hp
from hp import Client, connect_init


async def _stop_with_clients(gw, clients, sig=signal.SIGTERM, timeout=15):
    """Signal the gateway; every client must get close 1001; exit status 0."""
    t0 = time.monotonic()
    gw.send_signal(sig)
    results = await asyncio.gather(*(c.expect_close(timeout=timeout) for c in clients))
    rc = await gw.await_exit(timeout)
    took = time.monotonic() - t0
    assert rc == 0, f"exit status {rc} after {signal.Signals(sig).name}\n" + gw.log_tail()
    for c, (code, reason, msgs) in zip(clients, results):
        assert code == 1001, f"{c.name}: close {code} {reason!r} on shutdown, expected 1001"
    return took, results


@pytest.mark.timeout_s(60)
async def test_restart_keeps_sessions_and_seq(gw_factory):
    gw = gw_factory()
    keys = ["persist-a", "persist-b", "persist-c"]
    clients = [await connect_init(gw, key=k, name=k) for k in keys]
    a = clients[0]
    await a.turn("before restart")
    await a.turn("SCENARIO:long 25")
    for c in clients[1:]:
        await c.turn(f"hello from {c.name}")
    await _stop_with_clients(gw, clients)
    head = {c.name: c.pos for c in clients}
    sid = {c.name: c.session_id for c in clients}
    record = {e.seq: e.key() for e in a.stream}

    gw.start()  # same data dir, new port
    for k in keys:
        c = await Client.connect(gw, name=f"{k}-again")
        # resume from what the client last saw: the shutdown may have committed
        # lifecycle events (agent stopped) after the clients were closed
        ack = await c.init(key=k, last_seq=head[k])
        assert ack.data["session_id"] == sid[k], f"{k}: a new session after restart"
        assert ack.seq == head[k]
        assert ack.data["last_seq"] >= head[k], (
            f"{k}: last_seq after restart {ack.data['last_seq']}, old high-water mark {head[k]}")
        extra = await c.until_seq(ack.data["last_seq"])
        assert all(e.type == "state" for e in extra) and len(extra) <= 3, (
            f"{k}: events after the old head that the client had not seen: {extra}")
        t = await c.turn(f"after restart {k}", timeout=20)
        assert t.events[0].seq == ack.data["last_seq"] + 1, "seq must continue from the head"
        assert t.done.data["success"] is True
        assert t.message.data["content"] == f"after restart {k}"
        if k == keys[0]:
            for e in c.stream:
                record[e.seq] = e.key()
            new_head = c.pos
        await c.close()

    # an old session resumed from 0 replays the old events (and the new ones)
    r = await Client.connect(gw, name="replay")
    ack = await r.init(key=keys[0], last_seq=0)
    assert ack.seq == 1 and ack.data["last_seq"] == new_head
    await r.until_seq(new_head, timeout=15)
    assert [e.seq for e in r.stream] == list(range(1, new_head + 1))
    for e in r.stream:
        if e.seq in record:
            assert e.key() == record[e.seq], f"seq {e.seq} changed across the restart"
    assert set(range(a.stream[0].seq, new_head + 1)) <= set(record)
    old = [e for e in r.stream if e.seq <= head[keys[0]]]
    assert [e.data["content"] for e in old if e.type == "message"] == [
        "before restart", hp.expected_words(25)]
    await r.close()


@pytest.mark.timeout_s(60)
async def test_sigkill_keeps_committed_events(gw_factory):
    gw = gw_factory()
    a = await connect_init(gw, key="kill-9")
    await a.turn("durable one")
    await a.turn("durable two")
    head, sid = a.pos, a.session_id
    await asyncio.sleep(1.0)
    gw.kill()
    try:
        await a.expect_close(timeout=5)
    except AssertionError:
        a.abort()
    gw.start()
    b = await Client.connect(gw)
    ack = await b.init(key="kill-9", last_seq=0)
    assert ack.data["session_id"] == sid
    assert ack.data["last_seq"] >= head, (
        f"after SIGKILL the session's head is {ack.data['last_seq']}, committed was {head}")
    await b.until_seq(ack.data["last_seq"])
    assert [e.seq for e in b.stream] == list(range(1, ack.data["last_seq"] + 1))
    assert all(e.type == "state" for e in b.stream if e.seq > head)
    old = {e.seq: e.key() for e in a.stream}
    for e in b.stream:
        if e.seq in old:
            assert e.key() == old[e.seq], f"seq {e.seq} differs after SIGKILL + restart"
    t = await b.turn("after crash", timeout=20)
    assert t.done.data["success"] is True and t.events[0].seq == ack.data["last_seq"] + 1
    await b.close()


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_shutdown_during_a_turn(gw_factory, sig):
    gw = gw_factory()
    a = await connect_init(gw, key="cut", name="busy")
    idle = await connect_init(gw, key="bystander", name="idle")
    plain = await connect_init(gw, name="plain")
    await a.send("input", {"content": "SCENARIO:slow 60"})
    await a.until("message.delta", timeout=5)
    await a.until("message.delta", timeout=5)
    took, results = await _stop_with_clients(gw, [a, idle, plain], sig=sig)
    assert took < 10, f"shutdown took {took:.1f}s"
    dones_before_close = [m for m in results[0][2] if m.type == "done"]
    assert len(dones_before_close) <= 1

    # restart: the cut turn ended with exactly one done (architecture invariant:
    # every turn ends in exactly one done, also when the agent is killed)
    gw.start()
    r = await Client.connect(gw, name="after")
    ack = await r.init(key="cut", last_seq=0)
    head = ack.data["last_seq"]
    assert head >= a.pos
    await r.until_seq(head, timeout=10)
    for e in r.stream:
        if e.seq <= a.pos:
            assert e.key() == next(x.key() for x in a.stream if x.seq == e.seq)
    dones = [e for e in r.stream if e.type == "done"]
    assert len(dones) == 1, f"the cut turn must end with exactly one done, got {dones}"
    assert dones[0].data["success"] is False
    t = await r.turn("after shutdown", timeout=20)
    assert t.done.data["success"] is True and t.message.data["content"] == "after shutdown"
    await r.close()


@pytest.mark.timeout_s(40)
async def test_deleted_session_stays_deleted_after_restart(gw_factory):
    gw = gw_factory()
    a = await connect_init(gw, key="gone")
    await a.turn("soon deleted")
    old_ids = {e.id for e in a.stream}
    await a.send("control", {"action": "delete"})
    await a.until_state("deleted")
    await a.expect_close(timeout=5)
    gw.restart()
    b = await Client.connect(gw)
    ack = await b.init(key="gone", last_seq=0)
    assert ack.data["last_seq"] <= 2, f"deleted session came back: {ack.raw}"
    assert ack.seq == 1
    await hp.drain_handshake(b)
    pong, before = await b.ping()
    assert not old_ids & {e.id for e in b.stream}
    await b.close()


async def test_idle_gateway_sigterm_exit_zero(gw):
    c = await connect_init(gw)
    await c.turn("x")
    took, _ = await _stop_with_clients(gw, [c])
    assert took < 5, f"idle shutdown took {took:.1f}s"


@pytest.mark.timeout_s(30)
async def test_second_gateway_on_the_same_data_dir_is_refused(gw_factory):
    """It would re-apply and remove the journal the first one is writing: it
    must exit with a clear reason, and the first must keep serving."""
    import subprocess
    gw = gw_factory()
    c = await connect_init(gw, key="lock-holder")
    p = await asyncio.to_thread(
        subprocess.run,
        [hp.bin_path(), "serve", "--listen", "127.0.0.1:0", "--data-dir", gw.data_dir,
         "--set", "admin.listen=127.0.0.1:0"],
        capture_output=True, text=True, timeout=20)
    assert p.returncode != 0, p.stderr
    assert "locked by another process" in p.stderr, p.stderr
    t = await c.turn("still here")
    assert t.done["success"]
    await c.close()
