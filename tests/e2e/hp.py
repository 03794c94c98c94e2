"""
hp.py - helpers for the hotplex end-to-end tests (standard library + websockets 10.4).

Gateway  starts the real binary (`hotplex serve --listen 127.0.0.1:0 ...`), reads
         its "listening on 127.0.0.1:PORT" line, keeps its stderr in a log file,
         stops it with SIGTERM and checks the exit status.
Client   one AEP WebSocket connection. Every message the server sends goes
         through one validator (`check_envelope` + per-connection seq rules in
         `Client._check`), so every test asserts the wire contract for free.

The rules enforced on every server message (spec aep-v1.md sections 2 and 4):
  * text frame, one JSON object, no trailing newline;
  * version "aep/v1", id "evt_"+UUIDv4, seq int > 0, session_id non-empty,
    timestamp int ms near now, event.type known, event.data an object,
    priority absent or exactly "control";
  * init_ack is the first message on the connection and appears once;
  * seq never decreases; stream events are contiguous (+1) from the point the
    connection attached (init_ack.seq: the session's head when the ack was
    queued, or the client's last_seq when resuming; init_ack.seq 1 may also
    mean position 0); data.last_seq >= that point; connection replies (init_ack, pong, error about the
    connection's own bad message) carry the position of the last stream event
    sent on that connection, or 1 when there is none;
  * after init_ack every message carries the session's id;
  * event ids are unique on a connection.
"""

import asyncio
import http.client
import json
import os
import re
import select
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import websockets
from websockets.exceptions import ConnectionClosed

SUITE_START_MS = int(time.time() * 1000)

# --------------------------------------------------------------------------
# Constants from the spec
# --------------------------------------------------------------------------

VERSION = "aep/v1"
STATES = {"created", "running", "idle", "terminated", "deleted"}
ERROR_CODES = {
    "INVALID_MESSAGE", "PROTOCOL_VIOLATION", "VERSION_MISMATCH", "CONFIG_INVALID",
    "UNAUTHORIZED", "SESSION_NOT_FOUND", "SESSION_BUSY", "SESSION_TERMINATED",
    "INTERNAL_ERROR", "RATE_LIMITED", "GATEWAY_OVERLOAD", "WORKER_CRASH",
    "WORKER_UNAVAILABLE", "TURN_TIMEOUT",
}
# `error` codes that answer the connection's own bad message (a reply, no seq
# of its own). Every other error code is a session-level stream event.
REPLY_ERROR_CODES = {
    "INVALID_MESSAGE", "PROTOCOL_VIOLATION", "VERSION_MISMATCH", "CONFIG_INVALID",
    "UNAUTHORIZED", "SESSION_NOT_FOUND", "RATE_LIMITED", "SESSION_BUSY",
}
SERVER_EVENT_TYPES = {
    "init_ack", "state", "message.start", "message.delta", "message.end", "message",
    "reasoning", "tool_call", "tool_result", "permission_request", "question_request",
    "elicitation_request", "done", "error", "pong", "control",
}
REPLY_TYPES = {"init_ack", "pong"}
CAPS_KEYS = {
    "protocol_version", "worker_type", "supports_resume", "supports_delta",
    "supports_tool_call", "supports_ping", "max_frame_size", "modalities",
}

ID_RE = re.compile(
    r"^evt_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I)
LISTEN_RE = re.compile(rb"^listening on 127\.0\.0\.1:(\d+)\r?$")
ADMIN_LISTEN_RE = re.compile(rb"^admin listening on ([0-9.]+):(\d+)\r?$")

# Timestamps: replayed events may be as old as this test run; allow clock slack.
TS_SLACK_MS = 5000

FAST = {"echo.delta_interval_ms": "1"}
# Every test client is the dev-mode user "anonymous", so per-user quotas would
# bite long before anything under test; lift them (a test may set its own).
NO_QUOTAS = {"session.max_per_user": "1000000", "worker.max_agents_per_user": "1000000",
             "worker.max_agents": "1000000"}


def now_ms():
    return int(time.time() * 1000)


def source_dir():
    d = os.environ.get("HOTPLEX_SOURCE_DIR")
    if d:
        return d
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def bin_path():
    p = os.environ.get("HOTPLEX_BIN")
    if not p:
        p = os.path.join(source_dir(), "build", "hotplex")
    return p


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def derived_session_id(key, work_dir, owner="anonymous", worker_type="echo"):
    """Spec section 3: UUIDv5(DNS, owner|worker_type|client_key|work_dir)."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{owner}|{worker_type}|{key}|{work_dir}"))


def expected_words(n):
    return " ".join(f"w{i}" for i in range(1, n + 1))


# --------------------------------------------------------------------------
# Gateway process
# --------------------------------------------------------------------------

class Gateway:
    """One hotplex daemon. Use as a context manager or via the conftest fixtures.

    settings: dict of --set key=value (strings or numbers). `fast=True` adds
    echo.delta_interval_ms=1 unless the caller sets it.
    """

    live = []  # every Gateway not yet finished; conftest prints their logs on failure

    def __init__(self, settings=None, data_dir=None, fast=True, name="gw", env=None,
                 args=None, wrapper=None, tls_ca=None):
        self.name = name
        # args (optional): extra command-line arguments after `serve ...` (e.g.
        # ["--keys", FILE]); wrapper (optional): a command prefix (e.g. valgrind);
        # tls_ca (optional): PEM file to trust when the gateway serves TLS, which
        # makes ws_url() wss:// and http() HTTPS.
        self.args = list(args or [])
        self.wrapper = list(wrapper or [])
        self.tls_ca = tls_ca
        # env (optional): changes to the gateway's environment, applied over
        # os.environ at every start; a value of None removes that variable.
        self.env = dict(env) if env else None
        self.settings = dict(NO_QUOTAS)
        # The admin API listens too (second stdout line); on a free port so
        # gateways can run side by side (a test may set admin.listen itself).
        self.settings["admin.listen"] = "127.0.0.1:0"
        if fast:
            self.settings.update(FAST)
        for k, v in (settings or {}).items():
            self.settings[k] = str(v)
        self._own_data = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="hotplex-e2e-data-")
        self._logdir = tempfile.mkdtemp(prefix="hotplex-e2e-log-")
        self.log_path = os.path.join(self._logdir, "stderr.log")
        self.proc = None
        self.port = None
        self.admin_port = None  # from the second stdout line, `admin listening on HOST:PORT`
        self.stdout_rest = []
        self.starts = 0
        self._drain = None
        self._errf = None
        self._exited_by_test = False
        Gateway.live.append(self)

    # ---- lifecycle -------------------------------------------------------

    def command(self):
        cmd = [bin_path(), "serve", "--listen", "127.0.0.1:0", "--data-dir", self.data_dir]
        for k, v in self.settings.items():
            cmd += ["--set", f"{k}={v}"]
        return self.wrapper + cmd + self.args

    def start(self, timeout=15):
        assert self.proc is None or self.proc.poll() is not None, "gateway already running"
        b = bin_path()
        if not os.access(b, os.X_OK):
            raise AssertionError(f"hotplex binary not found or not executable: {b} "
                                 "(set HOTPLEX_BIN)")
        self.starts += 1
        self._exited_by_test = False
        self._errf = open(self.log_path, "ab")
        cmd = self.command()
        self._errf.write(f"===== start #{self.starts}: {' '.join(cmd)}\n".encode())
        self._errf.flush()
        env = None
        if self.env:
            env = dict(os.environ)
            for k, v in self.env.items():
                if v is None:
                    env.pop(k, None)
                else:
                    env[k] = str(v)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._errf, start_new_session=True, bufsize=0,
                                     env=env)
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill_quietly()
                raise AssertionError(
                    f"hotplex printed no first stdout line within {timeout}s; got {buf!r}\n"
                    + self.log_tail())
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                rc = self.proc.wait(5)
                raise AssertionError(
                    f"hotplex exited (status {rc}) before printing its listening line; "
                    f"stdout {buf!r}\n" + self.log_tail())
            buf += chunk
        line, rest = buf.split(b"\n", 1)
        m = LISTEN_RE.match(line)
        if not m:
            self._kill_quietly()
            raise AssertionError(f"first stdout line is {line!r}, expected "
                                 "'listening on 127.0.0.1:PORT'\n" + self.log_tail())
        self.port = int(m.group(1))
        assert 0 < self.port < 65536
        # The second line, printed with the first: the admin listener.
        while b"\n" not in rest and time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if r else b""
            if r and not chunk:
                break
            rest += chunk
        self.admin_port = None
        if b"\n" in rest:
            line2, after = rest.split(b"\n", 1)
            m2 = ADMIN_LISTEN_RE.match(line2)
            if m2:
                self.admin_port = int(m2.group(2))
                rest = after
        self.stdout_rest = [rest] if rest else []
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()
        return self

    def _drain_stdout(self):
        f = self.proc.stdout
        while True:
            try:
                chunk = f.read(65536)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            self.stdout_rest.append(chunk)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        if self.proc is None:
            raise AssertionError("gateway was never started")
        rc = self.proc.poll()
        if rc is not None:
            raise AssertionError(f"gateway died with status {rc}\n" + self.log_tail())

    def send_signal(self, sig):
        self.assert_alive()
        self.proc.send_signal(sig)

    def wait(self, timeout=15):
        """Wait for the process to exit (after a signal the test sent); returns
        the exit status. The teardown then does not treat the exit as a crash."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_quietly()
            raise AssertionError(f"gateway did not exit within {timeout}s\n" + self.log_tail())
        self._exited_by_test = True
        return rc

    async def await_exit(self, timeout=15):
        rc = await asyncio.to_thread(self.wait, timeout)
        self._after_exit()
        return rc

    def stop(self, sig=signal.SIGTERM, timeout=15, expect_rc=0):
        """Signal and wait; assert the exit status (None: don't check). Returns it."""
        self.assert_alive()
        self.proc.send_signal(sig)
        rc = self.wait(timeout)
        self._exited_by_test = True
        self._after_exit()
        if expect_rc is not None:
            assert rc == expect_rc, (f"gateway exit status {rc} after {signal.Signals(sig).name}, "
                                     f"expected {expect_rc}\n" + self.log_tail())
        return rc

    def kill(self):
        """SIGKILL (a crash as far as the gateway knows)."""
        self.assert_alive()
        self.proc.kill()
        rc = self.wait(10)
        self._exited_by_test = True
        self._after_exit()
        return rc

    def restart(self, **kw):
        """SIGTERM (exit 0 asserted) and start again on the same data dir."""
        if self.running():
            self.stop()
        return self.start(**kw)

    def _after_exit(self):
        if self._drain:
            self._drain.join(2)
        if self.proc and self.proc.stdout:
            try:
                self.proc.stdout.close()
            except OSError:
                pass
        if self._errf:
            self._errf.close()
            self._errf = None

    def _kill_quietly(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._after_exit()

    def finish(self, check=True):
        """Teardown: SIGTERM and assert exit 0 if still running (check=True),
        remove temporary dirs. A gateway that died on its own fails the check."""
        try:
            if self.proc is not None:
                if self.proc.poll() is None:
                    if check:
                        self.stop()
                    else:
                        self._kill_quietly()
                elif check and not self._exited_by_test:
                    raise AssertionError(
                        f"gateway exited on its own with status {self.proc.returncode}\n"
                        + self.log_tail())
        finally:
            self._kill_quietly()
            if self in Gateway.live:
                Gateway.live.remove(self)
            if self._own_data:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            shutil.rmtree(self._logdir, ignore_errors=True)

    def __enter__(self):
        if not self.running():
            self.start()
        return self

    def __exit__(self, et, ev, tb):
        if et is not None:
            sys.stderr.write(self.log_tail())
        self.finish(check=et is None)
        return False

    # ---- diagnostics -----------------------------------------------------

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=12000):
        t = self.log_text()
        if len(t) > n:
            t = "...\n" + t[-n:]
        return f"----- {self.name} stderr ({self.log_path}) -----\n{t}\n----- end -----\n"

    # ---- addresses and HTTP ----------------------------------------------

    def ws_url(self, path="/ws"):
        scheme = "wss" if self.tls_ca else "ws"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def ssl_context(self):
        """An SSL context trusting tls_ca (None when the gateway is plain)."""
        if not self.tls_ca:
            return None
        import ssl
        return ssl.create_default_context(cafile=self.tls_ca)

    def http(self, method, path, headers=None, body=None, timeout=5):
        """(status, headers dict lower-cased, body bytes)."""
        if self.tls_ca:
            c = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                            context=self.ssl_context())
        else:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def admin_http(self, method, path, token=None, headers=None, body=None, timeout=5):
        """A request to the admin API: (status, headers dict lower-cased, body bytes).
        token: sent as Authorization: Bearer."""
        assert self.admin_port, "the gateway printed no `admin listening on` line"
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def admin_json(self, method, path, token=None, expect=200, **kw):
        """admin_http, asserting the status and a JSON body; returns the parsed body."""
        st, hd, body = self.admin_http(method, path, token=token, **kw)
        assert st == expect, f"{method} {path}: status {st}, expected {expect}: {body[:500]!r}"
        assert hd.get("content-type", "").startswith("application/json"), hd
        return json.loads(body)

    def health(self, timeout=5):
        st, hd, body = self.http("GET", "/health", timeout=timeout)
        assert st == 200, f"/health status {st}: {body[:500]!r}"
        try:
            j = json.loads(body)
        except ValueError:
            raise AssertionError(f"/health body is not JSON: {body[:500]!r}")
        assert isinstance(j, dict), f"/health body is not an object: {j!r}"
        assert j.get("status") == "ok", f"/health status field: {j!r}"
        return j

    async def ahealth(self, timeout=5):
        return await asyncio.to_thread(self.health, timeout)


# --------------------------------------------------------------------------
# Envelope validation
# --------------------------------------------------------------------------

class Ev:
    """One server message, already validated."""
    __slots__ = ("raw", "text", "type", "data", "seq", "id", "session_id", "ts", "stream",
                 "priority", "binary")

    def __init__(self, obj, text):
        self.raw = obj
        self.text = text
        self.type = obj["event"]["type"]
        self.data = obj["event"]["data"]
        self.seq = obj["seq"]
        self.id = obj["id"]
        self.session_id = obj["session_id"]
        self.ts = obj["timestamp"]
        self.priority = obj.get("priority")
        self.stream = False

    def key(self):
        """What must be identical on every connection of a session."""
        return (self.seq, self.id, self.type, json.dumps(self.data, sort_keys=True))

    def __getitem__(self, k):
        return self.data[k]

    def get(self, k, default=None):
        return self.data.get(k, default)

    def __repr__(self):
        d = json.dumps(self.data)
        if len(d) > 200:
            d = d[:200] + "..."
        return f"<{self.type} seq={self.seq}{' S' if self.stream else ''} {d}>"


def check_envelope(obj, text=""):
    """The per-message rules of spec section 2 and 7. Returns an Ev."""
    where = f"server message {text[:300]!r}"
    assert isinstance(obj, dict), f"{where}: not a JSON object"
    assert obj.get("version") == VERSION, f"{where}: version must be {VERSION!r}"
    i = obj.get("id")
    assert isinstance(i, str) and ID_RE.match(i), f"{where}: id must be evt_<uuid4>"
    seq = obj.get("seq")
    assert is_int(seq) and seq > 0, f"{where}: seq must be an int > 0"
    sid = obj.get("session_id")
    assert isinstance(sid, str) and sid, f"{where}: session_id must be a non-empty string"
    ts = obj.get("timestamp")
    assert is_int(ts), f"{where}: timestamp must be an int (ms)"
    n = now_ms()
    assert SUITE_START_MS - TS_SLACK_MS <= ts <= n + TS_SLACK_MS, (
        f"{where}: timestamp {ts} not Unix ms near now ({n})")
    if "priority" in obj:
        assert obj["priority"] == "control", f"{where}: priority must be absent or 'control'"
    ev = obj.get("event")
    assert isinstance(ev, dict), f"{where}: event must be an object"
    t = ev.get("type")
    assert isinstance(t, str) and t, f"{where}: event.type must be a non-empty string"
    assert t in SERVER_EVENT_TYPES, f"{where}: unknown server event type {t!r}"
    d = ev.get("data")
    assert isinstance(d, dict), f"{where}: event.data must be an object"
    check_data(t, d, where)
    return Ev(obj, text)


def _str(d, k, where, nonempty=True):
    v = d.get(k)
    assert isinstance(v, str), f"{where}: data.{k} must be a string"
    if nonempty:
        assert v, f"{where}: data.{k} must be non-empty"
    return v


def check_data(t, d, where):
    if t == "init_ack":
        _str(d, "session_id", where)
        assert d.get("state") in STATES, f"{where}: init_ack state"
        caps = d.get("server_caps")
        assert isinstance(caps, dict), f"{where}: init_ack server_caps must be an object"
        if d.get("state") == "deleted" or "code" in d:
            # failing ack
            assert d.get("state") == "deleted", f"{where}: failing init_ack state must be deleted"
            assert d.get("code") in ERROR_CODES, f"{where}: failing init_ack code"
            _str(d, "error", where)
            for k, v in caps.items():
                assert not v, f"{where}: failing init_ack server_caps.{k} must be empty/false"
        else:
            assert caps.get("protocol_version") == VERSION, f"{where}: caps.protocol_version"
            _str(caps, "worker_type", where)
            for k in ("supports_resume", "supports_delta", "supports_tool_call",
                      "supports_ping"):
                assert caps.get(k) is True, f"{where}: caps.{k} must be true"
            assert is_int(caps.get("max_frame_size")) and caps["max_frame_size"] > 0, (
                f"{where}: caps.max_frame_size")
            mods = caps.get("modalities")
            assert isinstance(mods, list) and mods and all(isinstance(m, str) for m in mods), (
                f"{where}: caps.modalities must be a non-empty list of strings")
            assert is_int(d.get("last_seq")) and d["last_seq"] >= 0, (
                f"{where}: init_ack last_seq must be an int >= 0")
    elif t == "state":
        assert d.get("state") in STATES, f"{where}: unknown state"
        if "message" in d:
            assert isinstance(d["message"], str), f"{where}: state.message must be a string"
    elif t == "message.start":
        _str(d, "id", where)
        assert d.get("role") == "assistant", f"{where}: message.start role"
        assert d.get("content_type") == "text", f"{where}: message.start content_type"
    elif t == "message.delta":
        _str(d, "message_id", where)
        _str(d, "content", where, nonempty=False)
    elif t == "message.end":
        _str(d, "message_id", where)
    elif t == "message":
        _str(d, "id", where)
        _str(d, "role", where)
        _str(d, "content", where, nonempty=False)
        _str(d, "content_type", where)
    elif t == "reasoning":
        _str(d, "id", where)
        _str(d, "content", where, nonempty=False)
    elif t == "tool_call":
        _str(d, "id", where)
        _str(d, "name", where)
        assert isinstance(d.get("input"), dict), f"{where}: tool_call.input must be an object"
    elif t == "tool_result":
        _str(d, "id", where)
        assert "output" in d, f"{where}: tool_result.output missing"
    elif t == "permission_request":
        _str(d, "id", where)
        _str(d, "tool_name", where)
        _str(d, "description", where, nonempty=False)
        assert isinstance(d.get("input"), dict), f"{where}: permission_request.input"
        assert isinstance(d.get("args"), list), f"{where}: permission_request.args"
    elif t == "done":
        assert isinstance(d.get("success"), bool), f"{where}: done.success must be a bool"
        assert isinstance(d.get("stats"), dict), f"{where}: done.stats must be an object"
    elif t == "error":
        assert d.get("code") in ERROR_CODES, f"{where}: unknown error code"
        _str(d, "message", where, nonempty=False)
    elif t == "pong":
        assert d.get("state") in STATES, f"{where}: pong.state"
    elif t == "control":
        _str(d, "action", where)


# --------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------

class Closed(AssertionError):
    """The connection closed while the test waited for a message."""

    def __init__(self, code, reason, who=""):
        super().__init__(f"{who}: connection closed (code {code}, reason {reason!r})")
        self.code = code
        self.reason = reason


DROP = object()  # pass as an envelope field value to leave that field out


def envelope(type_, data=None, **env):
    obj = {"version": VERSION, "id": f"evt_{uuid.uuid4()}", "seq": 0, "session_id": "",
           "timestamp": now_ms(), "event": {"type": type_, "data": {} if data is None else data}}
    for k, v in env.items():
        if v is DROP:
            obj.pop(k, None)
        else:
            obj[k] = v
    return obj


class Turn:
    def __init__(self, events):
        self.events = events

    def of(self, t):
        return [e for e in self.events if e.type == t]

    def one(self, t):
        xs = self.of(t)
        assert len(xs) == 1, f"expected exactly one {t}, got {len(xs)}: {self.events}"
        return xs[0]

    def types(self):
        return [e.type for e in self.events]

    def index(self, t):
        for i, e in enumerate(self.events):
            if e.type == t:
                return i
        raise AssertionError(f"no {t} in {self.types()}")

    @property
    def done(self):
        return self.one("done")

    @property
    def deltas(self):
        return self.of("message.delta")

    @property
    def text(self):
        return "".join(e.data["content"] for e in self.deltas)

    @property
    def message(self):
        return self.one("message")

    @property
    def final_state(self):
        st = self.of("state")
        assert st, f"no state event in turn {self.types()}"
        return st[-1].data["state"]


class Client:
    counter = 0

    def __init__(self, ws, name):
        self.ws = ws
        self.name = name
        self.msgs = []          # every validated Ev
        self.stream = []        # stream events only
        self.ack = None
        self.failed_ack = False
        self.session_id = None
        self.pos = None         # last stream seq sent to this connection (attach point)
        self.last_seen = 0      # highest seq seen (never decreases)
        self.resume = None      # last_seq the client asked for
        self.pos_rule = None    # optional (init_ack Ev, head) -> attach position override
        self.pos_alt = None     # second possible attach position (init_ack seq 1)
        self.ids = set()
        self.sent = 0
        # Optional relaxations (all off by default; set after connect):
        #  allow_merged: a message.delta may skip seqs (a lagging connection gets
        #    adjacent deltas merged into one frame carrying the last one's seq);
        #    the skipped count is added to merged_skips.
        #  accept_resync: control{action:resync, from_seq:M} is a connection reply
        #    (seq = position before it) after which the stream continues at M.
        #  extra_reply_codes: more error codes taken as replies to this
        #    connection's own message (e.g. GATEWAY_OVERLOAD refusing an input).
        self.allow_merged = False
        self.merged_skips = 0
        self.merged_frames = 0
        self.accept_resync = False
        self.resyncs = []
        self.extra_reply_codes = set()

    # ---- connecting ------------------------------------------------------

    @classmethod
    async def connect(cls, target, path="/ws", timeout=10, name=None, **kw):
        url = target.ws_url(path) if isinstance(target, Gateway) else target
        Client.counter += 1
        name = name or f"c{Client.counter}"
        opts = dict(max_size=256 * 1024 * 1024, max_queue=None, ping_interval=None,
                    compression=None, open_timeout=timeout, close_timeout=3)
        if isinstance(target, Gateway) and target.tls_ca and "ssl" not in kw:
            opts["ssl"] = target.ssl_context()
        opts.update(kw)
        ws = await asyncio.wait_for(websockets.connect(url, **opts), timeout + 1)
        return cls(ws, name)

    # ---- sending ---------------------------------------------------------

    async def send(self, type_, data=None, **env):
        obj = envelope(type_, data, **env)
        await self.send_raw(json.dumps(obj))
        return obj

    async def send_raw(self, payload, timeout=10):
        """str -> text frame, bytes -> binary frame, list -> fragmented message."""
        self.sent += 1
        await asyncio.wait_for(self.ws.send(payload), timeout)

    async def send_frame(self, opcode, data, fin=True, timeout=10):
        """Raw frame (e.g. a text frame whose payload is not valid UTF-8)."""
        await asyncio.wait_for(self.ws.write_frame(fin, opcode, data), timeout)

    async def init(self, worker_type="echo", key=None, env_key=None, last_seq=None,
                   version="aep/v1", data=None, expect_ok=True, timeout=10, type_="init"):
        """Send init and return the init_ack Ev. key -> data.session_id,
        env_key -> envelope session_id."""
        d = {}
        if version is not None:
            d["version"] = version
        if worker_type is not None:
            d["worker_type"] = worker_type
        if key is not None:
            d["session_id"] = key
        if last_seq is not None:
            d["last_seq"] = last_seq
            self.resume = last_seq
        if data:
            d.update(data)
        env = {}
        if env_key is not None:
            env["session_id"] = env_key
        await self.send(type_, d, **env)
        return await self.expect_ack(ok=expect_ok, timeout=timeout)

    async def expect_ack(self, ok=True, timeout=10):
        ev = await self.recv(timeout)
        assert ev.type == "init_ack", f"{self.name}: first message is {ev!r}, not init_ack"
        if ok is True:
            assert not self.failed_ack, (
                f"{self.name}: init failed: {ev.data.get('code')} {ev.data.get('error')!r}")
        elif ok is False:
            assert self.failed_ack, f"{self.name}: init unexpectedly succeeded: {ev!r}"
        return ev

    # ---- receiving -------------------------------------------------------

    async def recv(self, timeout=10):
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            last = self.msgs[-3:]
            raise AssertionError(
                f"{self.name}: no message within {timeout}s (last received: {last})") from None
        except ConnectionClosed:
            raise Closed(self.ws.close_code, self.ws.close_reason, self.name) from None
        return self._check(raw)

    async def recv_or_none(self, timeout):
        """Like recv, but None when nothing arrives within timeout."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            return None
        except ConnectionClosed:
            raise Closed(self.ws.close_code, self.ws.close_reason, self.name) from None
        return self._check(raw)

    def _check(self, raw):
        who = self.name
        assert isinstance(raw, str), f"{who}: server sent a binary frame: {raw[:100]!r}"
        assert not raw.endswith("\n"), f"{who}: server message has a trailing newline"
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise AssertionError(f"{who}: server sent invalid JSON ({e}): {raw[:300]!r}")
        ev = check_envelope(obj, raw)
        where = f"{who}: {ev!r}"
        assert ev.id not in self.ids, f"{where}: duplicate event id on this connection"
        self.ids.add(ev.id)

        if not self.msgs:
            assert ev.type == "init_ack", f"{where}: the first message must be init_ack"
        else:
            assert ev.type != "init_ack", f"{where}: a second init_ack"
            assert not self.failed_ack, f"{where}: message after a failing init_ack"
        assert ev.seq >= self.last_seen, (
            f"{where}: seq decreased ({self.last_seen} -> {ev.seq})")

        if ev.type == "init_ack":
            d = ev.data
            assert ev.session_id == d["session_id"], (
                f"{where}: envelope session_id != init_ack.data.session_id")
            if d["state"] == "deleted":
                self.failed_ack = True
                assert ev.seq == 1, f"{where}: failing init_ack seq must be 1"
            else:
                self.session_id = d["session_id"]
                hwm = d["last_seq"]
                self.pos_alt = None
                if self.pos_rule is not None:
                    pos = self.pos_rule(ev, hwm)
                elif self.resume is None:
                    # Attached at the head as it was when the ack was queued; the
                    # handshake's own events (state running, ...) follow the ack and
                    # are included in data.last_seq. init_ack.seq is that position,
                    # or 1 when it is 0 - so seq 1 means "next is 1 or 2".
                    pos = ev.seq
                    if ev.seq == 1:
                        pos = 0
                        if hwm >= 1:
                            self.pos_alt = 1
                else:
                    r = self.resume if is_int(self.resume) else 0
                    pos = max(0, min(r, hwm))
                assert ev.seq == max(1, pos), (
                    f"{where}: init_ack seq must be {max(1, pos)} (position: "
                    f"resume={self.resume}, session last_seq={hwm})")
                assert pos <= hwm, (
                    f"{where}: init_ack seq {ev.seq} is beyond data.last_seq {hwm}")
                self.pos = pos
            self.ack = ev
        else:
            assert self.session_id is not None, f"{where}: message before a successful init_ack"
            assert ev.session_id == self.session_id, (
                f"{where}: envelope session_id {ev.session_id} != session {self.session_id}")
            reply = ev.type in REPLY_TYPES or (
                ev.type == "error" and ev.data.get("code") in REPLY_ERROR_CODES)
            if (not reply and ev.type == "error"
                    and ev.data.get("code") in self.extra_reply_codes):
                reply = True
            if (self.accept_resync and ev.type == "control"
                    and ev.data.get("action") == "resync"):
                assert ev.seq == max(1, self.pos), (
                    f"{where}: resync must carry seq {max(1, self.pos)} (position before it)")
                frm = ev.data.get("from_seq")
                assert is_int(frm) and frm > self.pos + 1, (
                    f"{where}: resync from_seq must skip ahead of position {self.pos}")
                self.pos = frm - 1
                self.pos_alt = None
                self.resyncs.append(ev)
            elif reply:
                assert ev.seq == max(1, self.pos), (
                    f"{where}: a connection reply must carry seq {max(1, self.pos)} "
                    "(last stream event sent on this connection)")
            else:
                ev.stream = True
                if self.pos_alt is not None and ev.seq == self.pos_alt + 1:
                    self.pos = self.pos_alt
                self.pos_alt = None
                if (self.allow_merged and ev.type == "message.delta"
                        and ev.seq > self.pos + 1):
                    self.merged_skips += ev.seq - self.pos - 1
                    self.merged_frames += 1
                    self.pos = ev.seq - 1
                assert ev.seq == self.pos + 1, (
                    f"{where}: stream seq gap/duplicate: expected {self.pos + 1}")
                self.pos = ev.seq
                self.stream.append(ev)
        self.last_seen = ev.seq
        self.msgs.append(ev)
        return ev

    async def until(self, type_, pred=None, timeout=10):
        """Receive until an event of `type_` (satisfying pred) arrives; return all
        received events, that one last."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.name}: no {type_} within {timeout}s; got {out[-8:]}")
            ev = await self.recv(left)
            out.append(ev)
            if ev.type == type_ and (pred is None or pred(ev)):
                return out

    async def until_state(self, state, timeout=10):
        return await self.until("state", lambda e: e.data["state"] == state, timeout)

    async def until_seq(self, seq, timeout=10):
        """Receive until this connection's stream position reaches seq."""
        deadline = time.monotonic() + timeout
        out = []
        while self.pos is None or self.pos < seq:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: stream did not reach seq {seq} "
                                     f"within {timeout}s (at {self.pos})")
            out.append(await self.recv(left))
        return out

    async def collect_turn(self, timeout=30):
        """Events through `done` and the next `state` event."""
        evs = await self.until("done", timeout=timeout)
        evs += await self.until("state", timeout=timeout)
        return Turn(evs)

    async def turn(self, text, metadata=None, timeout=30):
        d = {"content": text}
        if metadata is not None:
            d["metadata"] = metadata
        await self.send("input", d)
        return await self.collect_turn(timeout)

    async def ping(self, timeout=10):
        await self.send("ping", {})
        evs = await self.until("pong", timeout=timeout)
        return evs[-1], evs[:-1]

    async def assert_quiet(self, delay=0.2, timeout=10):
        """Nothing arrives unprompted: after `delay`, a ping is answered by a
        pong with no other message before it."""
        await asyncio.sleep(delay)
        await self.send("ping", {})
        ev = await self.recv(timeout)
        assert ev.type == "pong", f"{self.name}: expected pong, got unexpected {ev!r}"
        return ev

    async def expect_error_reply(self, code, timeout=10):
        ev = await self.recv(timeout)
        assert ev.type == "error", f"{self.name}: expected error {code}, got {ev!r}"
        assert ev.data["code"] == code, f"{self.name}: expected error {code}, got {ev!r}"
        assert not ev.stream
        return ev

    async def expect_close(self, timeout=10):
        """Receive (validating) until the connection closes. Returns
        (code, reason, events received meanwhile)."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: connection not closed within {timeout}s; "
                                     f"got {got[-8:]}")
            try:
                got.append(await self.recv(left))
            except Closed as c:
                return c.code, c.reason, got

    async def close(self, timeout=5):
        try:
            await asyncio.wait_for(self.ws.close(), timeout)
        except (asyncio.TimeoutError, ConnectionClosed, OSError):
            self.abort()

    def abort(self):
        """Drop the TCP connection without a close handshake."""
        t = self.ws.transport
        if t is not None:
            t.abort()

    @property
    def open(self):
        return self.ws.open


async def drain_handshake(c, timeout=10):
    """Receive what the handshake itself committed after the ack (events up to
    init_ack.data.last_seq); they must all be state changes (agent start)."""
    evs = []
    if c.pos_alt is not None:
        # init_ack.seq 1 with data.last_seq >= 1: attached at 0 (seq 1 follows
        # at once: it was committed before the ack) or at 1 (nothing follows).
        # Replies may overtake queued stream events, so a ping cannot tell;
        # wait briefly for the event instead.
        ev = await c.recv_or_none(0.5)
        if ev is not None:
            evs.append(ev)
        if c.pos_alt is not None:
            c.pos, c.pos_alt = c.pos_alt, None
    evs += await c.until_seq(c.ack.data["last_seq"], timeout)
    assert all(e.type == "state" for e in evs if e.stream), (
        f"{c.name}: unexpected events right after init_ack: {evs}")
    return evs


async def connect_init(gw, name=None, drain=True, **kw):
    """Connect, init, and (drain=True) receive the events the handshake itself
    committed (e.g. state running of a new session), so tests start clean."""
    c = await Client.connect(gw, name=name)
    await c.init(**kw)
    if drain:
        await drain_handshake(c)
    return c


async def close_all(clients):
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def assert_same_stream(a, b, lo=None, hi=None):
    """Stream events of two connections agree on the seq range both saw."""
    sa = {e.seq: e for e in a.stream}
    sb = {e.seq: e for e in b.stream}
    common = sorted(set(sa) & set(sb))
    if lo is not None:
        common = [s for s in common if s >= lo]
    if hi is not None:
        common = [s for s in common if s <= hi]
    assert common, f"{a.name} and {b.name} share no stream events"
    for s in common:
        assert sa[s].key() == sb[s].key(), (
            f"seq {s} differs: {a.name} {sa[s].raw} vs {b.name} {sb[s].raw}")
    return common


async def wait_for(pred, timeout=10, interval=0.1, what="condition"):
    """Poll an async or sync predicate until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last value {last!r})")


def raw_tcp(port, data, timeout=5):
    """Send raw bytes on a TCP connection, return what comes back until close/timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()
