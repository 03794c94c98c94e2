"""Slow clients: a connection that falls behind is merged (soft limit) and then
closed with 1013 (hard limit); it resumes with last_seq and loses nothing.
The stream itself never drops an event, a client that keeps up is never
punished for the store's batching, and the gateway's memory stays bounded.

Every client here is validated by hp.Client (envelope, seq rules). Clients that
may legitimately receive merged deltas set `allow_merged`, which lets a
message.delta skip seqs (and only that)."""

import asyncio
import base64
import json
import os
import socket
import struct
import threading
import time

import pytest
import websockets

import hp
from hp import Client, connect_init

MB = 1024 * 1024
N_BIG = 100_000          # deltas in the big stream ("w1 w2 ... w100000")
RSS_LIMIT_MB = 64        # allowed RSS growth of the gateway during a big stream


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

# Under ASan+UBSan the allocator's quarantine and shadow memory make RSS
# meaningless as a bound; everything else is still checked.
SANITIZED = os.environ.get("HOTPLEX_SANITIZED") == "1"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples the gateway's VmRSS every `interval` seconds in a thread."""

    def __init__(self, pid, interval=0.02):
        self.pid = pid
        self.interval = interval
        self.base = rss_kb(pid)
        self.peak = self.base
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                v = rss_kb(self.pid)
            except (OSError, AssertionError):
                return
            self.samples += 1
            if v > self.peak:
                self.peak = v
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(2)
        return False

    @property
    def growth_mb(self):
        return (self.peak - self.base) / 1024


class FastReader:
    """A client that reads as fast as this machine can: a blocking socket in a
    thread, recv() in 1 MiB chunks, no per-message work while reading (a
    Python websockets client is slower than the gateway and the store). The
    frames are parsed afterwards and every message goes through hp.Client's
    validator (`validate`). Reading stops at EOF, or once a `done` and a
    following `state` event have arrived (the end of the turn)."""

    def __init__(self, gw, name="fast"):
        self.name = name
        self.sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            assert chunk, f"{name}: connection closed during the upgrade"
            buf += chunk
        head, self._first = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), f"{name}: upgrade refused: {head[:200]!r}"
        self.msgs = []
        self.close_code = None
        self.close_reason = None
        self.error = None
        self.bytes = 0
        self._thread = None

    def send(self, type_, data):
        payload = json.dumps(hp.envelope(type_, data)).encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(hdr + mask + masked)

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        chunks = [self._first]
        seen_done = False
        carry = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                hay = carry + chunk
                if not seen_done:
                    i = hay.find(b'"type":"done"')
                    if i >= 0:
                        seen_done = True
                        hay = hay[i:]
                if seen_done and hay.find(b'"type":"state"') >= 0:
                    break
                carry = hay[-64:]
        except OSError as e:
            self.error = e
        data = b"".join(chunks)
        self.bytes = len(data)
        self._parse(data)

    def _parse(self, buf):
        pos, frag, end = 0, None, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, h = b1 & 0x7F, 2
            if n == 126:
                if end - pos < 4:
                    break
                n, h = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, h = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if end - pos < h + n:
                break
            payload = buf[pos + h:pos + h + n]
            pos += h + n
            op = b0 & 0x0F
            if op == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if n >= 2 else 1005
                self.close_reason = payload[2:].decode("utf-8", "replace")
                return
            assert op in (0, 1), f"{self.name}: unexpected frame opcode {op}"
            frag = payload if frag is None else frag + payload
            if b0 & 0x80:
                self.msgs.append(frag.decode("utf-8"))
                frag = None

    async def wait(self, timeout):
        await asyncio.to_thread(self._thread.join, timeout)
        assert not self._thread.is_alive(), f"{self.name}: turn not over within {timeout}s"

    def validate(self):
        """Every message through hp.Client's checks; returns that Client."""
        v = Client(None, self.name)
        for m in self.msgs:
            v._check(m)
        return v

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


async def connect_slow(gw, name="slow", rcvbuf=4096):
    """A connection that reads only when the test calls recv(): a tiny kernel
    receive buffer (set before connect, so the TCP window stays small), one
    message queued in websockets at most, a small read buffer. When the test
    stops calling recv(), the gateway soon sees a choked socket."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", gw.port))
    s.setblocking(False)
    ws = await asyncio.wait_for(
        websockets.connect(gw.ws_url(), sock=s, max_queue=1, read_limit=4096,
                           max_size=256 * MB, ping_interval=None, compression=None,
                           close_timeout=3), 10)
    c = Client(ws, name)
    c.allow_merged = True
    return c


def rest_all(gw, sid, limit=1000):
    """Every stored event of a session through REST paging."""
    out, after = [], 0
    while True:
        st, _, body = gw.http("GET", f"/api/sessions/{sid}/events?after={after}&limit={limit}",
                              timeout=20)
        assert st == 200, f"REST events status {st}: {body[:300]!r}"
        j = json.loads(body)
        out += j["events"]
        if not j["events"]:
            return out, j
        after = j["next_after"]


def check_same_or_merged(events, originals):
    """Each event is the original event of its seq (same id, type, data), or a
    merged delta: a new frame carrying the seq of the last delta merged into
    it, whose text ends with that delta's text."""
    merged = 0
    for e in events:
        o = originals[e.seq]
        if e.id == o.id:
            assert e.key() == o.key(), f"seq {e.seq} differs from the original event"
            continue
        assert e.type == "message.delta" and o.type == "message.delta", (
            f"seq {e.seq}: {e!r} is neither the original {o!r} nor a merged delta")
        assert e.data["message_id"] == o.data["message_id"]
        assert e.data["content"].endswith(o.data["content"]) and len(
            e.data["content"]) > len(o.data["content"]), f"merged delta at seq {e.seq}"
        merged += 1
    return merged


def deltas_text(events, message_id):
    return "".join(e.data["content"] for e in events
                   if e.type == "message.delta" and e.data["message_id"] == message_id)


# --------------------------------------------------------------------------
# the big one: 100k deltas, a fast reader, a slow reader
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(110)
async def test_slow_client_closed_1013_fast_client_gets_all_memory_bounded(gw_factory):
    # 6 MiB: a reader that stops reading for the whole ~18 MB stream is far past
    # it, while the fast reader (a Python thread, starved now and then on a
    # loaded 2-core machine) keeps enough slack not to be cut
    gw = gw_factory({"echo.delta_interval_ms": 0,
                     "session.out_hard_limit": "6m",
                     "session.out_soft_limit": "256k"})
    key = "slow-vs-fast"
    expected = hp.expected_words(N_BIG)
    fast = FastReader(gw)
    fast.send("init", {"version": "aep/v1", "worker_type": "echo", "session_id": key})
    fast.start()
    slow = await connect_slow(gw)
    await slow.init(key=key)
    await hp.drain_handshake(slow)
    start_pos = slow.pos
    slow_log = {"slow_reads": 0, "drain_reads": 0}
    fast_over = asyncio.Event()

    async def run_slow():
        # read one message every 5 ms at the start of the stream, then stop
        # reading entirely until the fast client is done, then drain what was
        # buffered until the close
        t_end = time.monotonic() + 0.15
        try:
            while time.monotonic() < t_end and slow_log["slow_reads"] < 30:
                await slow.recv(30)
                slow_log["slow_reads"] += 1
                await asyncio.sleep(0.005)
            await fast_over.wait()
            while True:
                await slow.recv(30)
                slow_log["drain_reads"] += 1
        except hp.Closed as e:
            return e.code, e.reason

    async def run_fast():
        try:
            await fast.wait(90)
        finally:
            fast_over.set()

    with RssSampler(gw.proc.pid) as rss:
        t0 = time.monotonic()
        # any connection may send: the slow one starts the turn
        await slow.send("input", {"content": f"SCENARIO:long {N_BIG}"})
        _, (code, reason) = await asyncio.gather(run_fast(), run_slow())
        took = time.monotonic() - t0
        # the session is idle again; wait for the store to settle (RSS after the
        # burst counts too)
        await hp.wait_for(lambda: json.loads(gw.http(
            "GET", f"/api/sessions/{slow.session_id}/events?after=0&limit=1")[2])["last_seq"]
            >= start_pos + N_BIG + 5, timeout=30, what="stream stored")
        await asyncio.sleep(0.3)
    f = fast.validate()
    fast_deltas = [e for e in f.stream if e.type == "message.delta"]
    print(f"\n[slow_client] {N_BIG} deltas in {took:.2f}s; gateway RSS {rss.base // 1024} MB "
          f"-> peak {rss.peak // 1024} MB (growth {rss.growth_mb:.1f} MB, {rss.samples} samples); "
          f"fast reader: {len(f.stream)} stream events, {len(fast_deltas)} deltas, "
          f"close {fast.close_code} {fast.close_reason!r}; slow client: {slow_log}, closed "
          f"{code} {reason!r} at seq {slow.pos}, {slow.merged_frames} merged frames "
          f"({slow.merged_skips} seqs merged away)")

    # the slow client: closed with 1013 at the hard limit
    assert code == 1013, f"slow client closed with {code} {reason!r}, expected 1013"
    assert "last_seq" in reason, reason

    # it resumes with last_seq: the rest follows, and the text adds up exactly
    again = await Client.connect(gw, name="slow-resumed")
    again.allow_merged = True
    ack = await again.init(key=key, last_seq=slow.pos)
    head = ack.data["last_seq"]
    assert ack.data["session_id"] == slow.session_id
    assert ack.seq == max(1, slow.pos) and head >= start_pos + N_BIG + 5
    await again.until_seq(head, timeout=60)
    both = slow.stream + again.stream
    assert [e.seq for e in both] == sorted(set(e.seq for e in both)), "seq not increasing"
    starts = [e for e in both if e.type == "message.start"]
    assert len(starts) == 1, starts
    mid = starts[0].data["id"]
    text = deltas_text(both, mid)
    assert text == expected, (
        f"the slow client's deltas (before the close and after the resume) add up to "
        f"{len(text)} chars, expected {len(expected)}")
    types = [e.type for e in both]
    assert types.count("done") == 1 and types.count("message") == 1
    pong = await again.assert_quiet(delay=0.2)
    assert pong.seq == head

    # the stream itself dropped nothing: the store has every delta, in order,
    # and every event the slow client got is a stored event or a merged delta
    stored, _ = await asyncio.to_thread(rest_all, gw, slow.session_id)
    assert [e["seq"] for e in stored] == list(range(1, head + 1))
    assert len([e for e in stored if e["event"]["type"] == "message.delta"]) == N_BIG
    originals = {x["seq"]: hp.check_envelope(x) for x in stored}
    check_same_or_merged(both, originals)

    # the fast reader: the whole turn, one frame per delta, contiguous seqs (the
    # validator checks every envelope and the seq rules), never closed
    assert fast.close_code is None, (
        f"a client reading as fast as it can was closed with {fast.close_code} "
        f"{fast.close_reason!r} after {len(fast_deltas)} of {N_BIG} deltas (stream position "
        f"{f.pos}): the backlog is counted against events the gateway has not even stored yet")
    assert len(fast_deltas) == N_BIG, (
        f"fast reader got {len(fast_deltas)} delta frames for {N_BIG} committed deltas")
    turn = hp.Turn([e for e in f.stream if e.seq > start_pos])
    assert turn.text == expected and turn.message.data["content"] == expected
    assert turn.done.data["success"] is True
    check_same_or_merged(f.stream, originals)
    assert f.pos == head

    assert SANITIZED or rss.growth_mb < RSS_LIMIT_MB, (
        f"gateway RSS grew by {rss.growth_mb:.1f} MB during a {N_BIG}-delta stream "
        f"({rss.base // 1024} -> {rss.peak // 1024} MB); limit {RSS_LIMIT_MB} MB")
    fast.close()
    await again.close()


# --------------------------------------------------------------------------
# a reader that keeps up is never closed, with the default limits
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(60)
async def test_reader_that_keeps_up_is_not_closed_default_limits(gw_factory):
    """One connection, default limits (soft 256k, hard 8m), reading as fast as
    the machine allows while echo streams 100k deltas at full speed: it must
    get the whole turn (merged or not), never a 1013."""
    gw = gw_factory({"echo.delta_interval_ms": 0})
    r = FastReader(gw, name="reader")
    r.send("init", {"version": "aep/v1", "worker_type": "echo"})
    r.start()
    await asyncio.sleep(0.2)
    r.send("input", {"content": f"SCENARIO:long {N_BIG}"})
    await r.wait(50)
    v = Client(None, "reader")
    v.allow_merged = True
    for m in r.msgs:
        v._check(m)
    deltas = [e for e in v.stream if e.type == "message.delta"]
    print(f"\n[slow_client] keep-up reader: {len(deltas)} delta frames for {N_BIG} deltas "
          f"({v.merged_frames} merged frames), {r.bytes} bytes read, close {r.close_code}")
    assert r.close_code is None, (
        f"closed with {r.close_code} {r.close_reason!r} after {len(v.stream)} stream events "
        f"({len(deltas)} deltas, position {v.pos}): the gateway counted events it had not "
        "stored yet (and so could not send) as this reader's backlog")
    assert "".join(e.data["content"] for e in deltas) == hp.expected_words(N_BIG)
    r.close()


# --------------------------------------------------------------------------
# memory while the store catches up
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(60)
async def test_memory_bounded_during_a_burst(gw_factory):
    """No reader at all: the agent streams 100k deltas as fast as it can. The
    gateway's memory must not grow with the length of the burst (the window is
    bounded by session.ring_bytes; per-connection state is constant)."""
    gw = gw_factory({"echo.delta_interval_ms": 0})
    c = await connect_init(gw, name="starter")
    sid = c.session_id
    head0 = c.pos
    with RssSampler(gw.proc.pid) as rss:
        await c.send("input", {"content": f"SCENARIO:long {N_BIG}"})
        await asyncio.sleep(0.05)
        c.abort()
        await hp.wait_for(lambda: json.loads(gw.http(
            "GET", f"/api/sessions/{sid}/events?after=0&limit=1")[2])["last_seq"]
            >= head0 + N_BIG + 5, timeout=40, what="stream stored")
        await asyncio.sleep(0.3)
    print(f"\n[slow_client] burst of {N_BIG} deltas, no reader: gateway RSS "
          f"{rss.base // 1024} -> peak {rss.peak // 1024} MB (growth {rss.growth_mb:.1f} MB)")
    assert SANITIZED or rss.growth_mb < RSS_LIMIT_MB, (
        f"gateway RSS grew by {rss.growth_mb:.1f} MB while {N_BIG} deltas were committed and "
        "stored (no client attached): the agent is not held back while the store lags, so "
        "the in-memory window and the store queue grow with the burst")


# --------------------------------------------------------------------------
# a new connection at the head has no backlog
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(60)
async def test_new_connection_at_head_is_not_behind(gw_factory):
    """A connection that attaches at the head (no last_seq) has nothing to
    catch up. Even when the session's in-memory window holds more than
    out_hard_limit bytes, the next event must not close it with 1013."""
    n = 8000  # ~1.5 MB of deltas, all kept in the 8 MiB window
    gw = gw_factory({"echo.delta_interval_ms": 0, "session.ring_bytes": "8m",
                     "session.out_hard_limit": "1m", "session.out_soft_limit": "512k"})
    a = await connect_init(gw, key="at-head", name="producer")
    sid, head0 = a.session_id, a.pos
    await a.send("input", {"content": f"SCENARIO:long {n}"})
    await asyncio.sleep(0.05)
    a.abort()  # whatever happens to it; the turn goes on
    await hp.wait_for(lambda: json.loads(gw.http(
        "GET", f"/api/sessions/{sid}/events?after=0&limit=1")[2])["last_seq"] >= head0 + n + 5,
        timeout=30, what="turn stored")
    b = await connect_init(gw, key="at-head", name="at-head")
    assert b.session_id == sid
    try:
        t = await b.turn("hello at the head")
    except hp.Closed as e:
        raise AssertionError(
            f"a connection attached at the head (seq {b.ack.seq}) was closed with {e.code} "
            f"{e.reason!r} on the first new event: its backlog was counted from the start of "
            "the in-memory window, not from the head") from None
    assert t.text == "hello at the head"
    await b.close()


# --------------------------------------------------------------------------
# merging below the hard limit
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(60)
async def test_lagging_client_gets_merged_deltas_same_text(gw_factory):
    n = 20_000  # ~4 MB of delta envelopes
    gw = gw_factory({"echo.delta_interval_ms": 0,
                     "session.out_soft_limit": "64k",
                     "session.out_hard_limit": "64m",
                     "session.ring_bytes": "16m"})
    key = "merge"
    ref = await connect_init(gw, key=key, name="ref")
    ref.allow_merged = True  # the reference only tells when the turn is over
    lag = await connect_slow(gw, name="lagging")
    await lag.init(key=key)
    await hp.drain_handshake(lag)
    start = lag.pos
    await ref.send("input", {"content": f"SCENARIO:long {n}"})
    ref_turn = await ref.collect_turn(timeout=40)  # meanwhile `lag` reads nothing
    head = ref.pos
    t = await lag.collect_turn(timeout=40)
    assert lag.pos == head, "the lagging client did not reach the head"
    expected = hp.expected_words(n)
    assert t.text == expected, "merged deltas must concatenate to exactly the same text"
    assert t.message.data["content"] == expected
    mid = t.one("message.start").data["id"]
    assert all(e.data["message_id"] == mid for e in t.deltas)
    seqs = [e.seq for e in lag.stream if e.seq > start]
    assert seqs == sorted(set(seqs)), "seq must increase"
    assert len(t.deltas) < n, (
        f"a client {head - start} events behind got all {n} deltas unmerged "
        f"(soft limit 64k)")
    assert lag.merged_skips == n - len(t.deltas)
    # merged frames are the connection's own: the stream and the store keep every delta
    stored, _ = await asyncio.to_thread(rest_all, gw, ref.session_id)
    assert len([e for e in stored if e["event"]["type"] == "message.delta"]) == n
    check_same_or_merged([e for e in lag.stream if e.seq > start],
                         {x["seq"]: hp.check_envelope(x) for x in stored})
    print(f"\n[slow_client] lagging client: {len(t.deltas)} delta frames for {n} committed "
          f"deltas ({lag.merged_frames} merged frames, {lag.merged_skips} seqs merged away); "
          f"reference client: {len(ref_turn.deltas)} delta frames")
    await hp.close_all([ref, lag])
