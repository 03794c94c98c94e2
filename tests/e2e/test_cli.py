"""The client commands of the one binary: `hotplex chat` (one-shot, --json,
interactive in a pseudo-terminal: streaming, permission prompts, Ctrl-C,
--resume), `hotplex token` (against a JWT-only gateway), `hotplex sessions`
(against the admin API, and against a stub server), `hotplex doctor` and
`hotplex config`. The interactive tests drive the real binary through a pty
(Python's pty module), typing lines and Ctrl-C like a user would; the claude
tests run the real Claude Code CLI offline against the API stand-in
(claude_env.py).
"""

import asyncio
import http.server
import json
import os
import pty
import re
import select
import shutil
import signal
import socketserver
import stat
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

import hp
from hp import Client, connect_init

SESSION_RE = re.compile(r"session ([0-9a-f-]{36})")
JWT_SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"


# --------------------------------------------------------------------------
# Running the CLI


@pytest.fixture
def home():
    d = tempfile.mkdtemp(prefix="hotplex-cli-home-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def cli_env(home, extra=None):
    env = dict(os.environ)
    for k in ("HOTPLEX_URL", "HOTPLEX_WORKER", "HOTPLEX_API_KEY", "HOTPLEX_TOKEN",
              "HOTPLEX_CONFIG", "HOTPLEX_JWT_SECRET", "HOTPLEX_ADMIN_URL", "HOTPLEX_ADMIN_TOKEN",
              "XDG_STATE_HOME"):
        env.pop(k, None)
    env.update({"HOME": home, "NO_COLOR": "1", "TERM": "xterm"})
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run(args, home, env=None, timeout=60, stdin=subprocess.DEVNULL):
    """Runs `hotplex ARGS` without a terminal; (rc, stdout, stderr) as text."""
    r = subprocess.run([hp.bin_path()] + args, stdin=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=cli_env(home, env), timeout=timeout,
                       start_new_session=True)
    return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


async def arun(*a, **kw):
    return await asyncio.to_thread(run, *a, **kw)


def chat_args(gw, *more, worker="echo"):
    return ["chat", "--url", gw.ws_url(), "--worker", worker] + list(more)


class Pty:
    """The CLI on a pseudo-terminal: its stdin, stdout and stderr are the
    slave side, it is the session leader with the pty as controlling
    terminal, so a typed ^C reaches it as SIGINT like from a real terminal."""

    def __init__(self, args, home, env=None):
        argv = [hp.bin_path()] + args
        environ = cli_env(home, env)
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.execve(argv[0], argv, environ)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.out = b""
        self.mark = 0  # expect() searches from here
        self.rc = None

    @property
    def text(self):
        return self.out.decode("utf-8", "replace")

    def _read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            return None
        self.out += chunk
        return True

    def expect(self, pattern, timeout=15):
        """Waits until `pattern` (str or compiled regex) appears after the mark;
        moves the mark past it and returns the match."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.text, self.mark)
            if m:
                self.mark = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen within {timeout}s; terminal so far:\n"
                                     f"{self.text[-3000:]}")
            if self._read(min(left, 0.5)) is None:
                m = rx.search(self.text, self.mark)
                if m:
                    self.mark = m.end()
                    return m
                raise AssertionError(f"the CLI closed the terminal before {pattern!r}; "
                                     f"terminal:\n{self.text[-3000:]}")

    def type(self, s):
        os.write(self.fd, s.encode())

    def line(self, s):
        self.type(s + "\r")

    def ctrl_c(self):
        os.write(self.fd, b"\x03")

    def wait(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.1)
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.05):
                    pass
                self.rc = os.waitstatus_to_exitcode(st)
                return self.rc
        raise AssertionError(f"the CLI did not exit within {timeout}s; terminal:\n"
                             f"{self.text[-3000:]}")

    def close(self):
        if self.rc is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except OSError:
                pass
            self.rc = -9
        try:
            os.close(self.fd)
        except OSError:
            pass


@pytest.fixture
def ptys():
    made = []

    def make(*a, **kw):
        p = Pty(*a, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# --------------------------------------------------------------------------
# chat, one-shot


async def test_oneshot_prints_answer_and_exits_0(gw, home):
    rc, out, err = await arun(chat_args(gw, "-p", "hello there"), home)
    assert rc == 0, err
    assert out == "hello there\n", (out, err)
    m = SESSION_RE.search(err)
    assert m, f"no session id on stderr: {err!r}"
    assert gw.health()["sessions"] >= 1


async def test_oneshot_failed_turn_exits_1(gw, home):
    rc, out, err = await arun(chat_args(gw, "-p", "SCENARIO:error"), home)
    assert rc == 1, (out, err)
    assert "INTERNAL_ERROR" in err, err
    assert "simulated agent error" in err


async def test_oneshot_unreachable_exits_2(home):
    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as s:
        port = s.server_address[1]
    rc, out, err = await arun(["chat", "--worker", "echo", "--url", f"ws://127.0.0.1:{port}/ws",
                               "-p", "x"], home)
    assert rc == 2, (out, err)
    assert "cannot connect" in err and "refused" in err, err
    assert out == ""


async def test_usage_errors_exit_2_and_help(home):
    rc, out, err = await arun(["chat", "--bogus"], home)
    assert rc == 2 and "--bogus" in err
    rc, out, err = await arun(["chat", "--url", "http://x/ws", "-p", "x"], home)
    assert rc == 2 and "ws://" in err
    for cmd in ("chat", "token", "sessions", "doctor", "config"):
        rc, out, err = await arun([cmd, "--help"], home)
        assert rc == 0, (cmd, err)
        assert out.startswith("usage: hotplex " + cmd), (cmd, out[:200])
        assert "exit status" in out, cmd
    rc, out, err = await arun(["--help"], home)
    assert rc == 0
    for cmd in ("chat", "token", "sessions", "doctor", "config"):
        assert f"  {cmd} " in out, out


async def test_oneshot_json_lines(gw, home):
    rc, out, err = await arun(chat_args(gw, "-p", "SCENARIO:tool", "--json"), home)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) >= 6, out
    evs = [hp.check_envelope(json.loads(line), line) for line in lines]
    types = [e.type for e in evs]
    assert types[0] == "init_ack"
    assert "tool_call" in types and "tool_result" in types and "done" in types, types
    done = [e for e in evs if e.type == "done"][0]
    assert done.data["success"] is True
    assert "".join(e.data["content"] for e in evs if e.type == "message.delta") == "tool done"


async def test_oneshot_shows_tool_and_reasoning_on_stderr(gw, home):
    rc, out, err = await arun(chat_args(gw, "-p", "SCENARIO:tool"), home)
    assert rc == 0 and out == "tool done\n", (out, err)
    assert '[tool Bash] {"command":"echo hi"}' in err, err
    assert "[result] hi" in err, err
    rc, out, err = await arun(chat_args(gw, "-p", "SCENARIO:reasoning"), home)
    assert rc == 0 and out == "thought about it\n"
    assert "(thinking) thinking it over" in err, err


async def test_oneshot_permission_auto_answers(gw, home):
    rc, out, err = await arun(chat_args(gw, "-p", "SCENARIO:permission", "--yes"), home)
    assert rc == 0, err
    assert "permission granted" in out, (out, err)
    assert "Allow Bash: Run a shell command: echo hi? [y/N] y (--yes)" in err, err
    rc, out, err = await arun(chat_args(gw, "-p", "SCENARIO:permission", "--no"), home)
    assert rc == 0, err
    assert "permission denied" in out, (out, err)


async def test_oneshot_prompt_from_stdin(gw, home):
    r = await asyncio.to_thread(
        subprocess.run, [hp.bin_path()] + chat_args(gw, "-p", "-"), input=b"from stdin\n",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(home), timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"from stdin\n"


async def test_oneshot_timeout_exits_1(gw, home):
    rc, out, err = await arun(chat_args(gw, "-p", "SCENARIO:slow 100", "--timeout", "1"), home)
    assert rc == 1, (out, err)
    assert "within 1 s" in err


async def test_piped_interactive_lines(gw, home):
    """Without a terminal the interactive mode reads one turn per stdin line."""
    r = await asyncio.to_thread(
        subprocess.run, [hp.bin_path()] + chat_args(gw), input=b"one two\nthree\n/quit\nfour\n",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(home), timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "one two\nthree\n", r.stdout


# --------------------------------------------------------------------------
# chat, interactive in a terminal


async def test_pty_turns_and_quit(gw, home, ptys):
    p = ptys(chat_args(gw), home)
    await asyncio.to_thread(p.expect, "> ")
    p.line("hello from the terminal")
    # the terminal echoes the typed line; the answer follows it
    await asyncio.to_thread(p.expect, "hello from the terminal\r\n")
    await asyncio.to_thread(p.expect, "hello from the terminal")
    await asyncio.to_thread(p.expect, "> ")
    p.line("second line")
    await asyncio.to_thread(p.expect, re.compile(r"second line\r\n.*second line", re.S))
    await asyncio.to_thread(p.expect, "> ")
    p.line("/quit")
    assert await asyncio.to_thread(p.wait) == 0, p.text


async def test_pty_permission_prompt_answered_y(gw, home, ptys):
    p = ptys(chat_args(gw), home)
    await asyncio.to_thread(p.expect, "> ")
    p.line("SCENARIO:permission")
    await asyncio.to_thread(p.expect, "Allow Bash: Run a shell command: echo hi? [y/N] ")
    p.line("y")
    await asyncio.to_thread(p.expect, "permission granted")
    await asyncio.to_thread(p.expect, "> ")
    p.line("SCENARIO:permission")
    await asyncio.to_thread(p.expect, "[y/N] ")
    p.line("n")
    await asyncio.to_thread(p.expect, "permission denied")
    await asyncio.to_thread(p.expect, "> ")
    p.type("\x04")  # Ctrl-D at the prompt leaves
    assert await asyncio.to_thread(p.wait) == 0


@pytest.mark.timeout_s(90)
async def test_pty_ctrl_c_interrupts_turn_then_continues(gw, home, ptys):
    p = ptys(chat_args(gw), home)
    await asyncio.to_thread(p.expect, "> ")
    p.line("SCENARIO:slow 100")
    await asyncio.to_thread(p.expect, "w3 ")
    t0 = time.monotonic()
    p.ctrl_c()
    await asyncio.to_thread(p.expect, "[interrupted]", 10)
    assert time.monotonic() - t0 < 5
    assert "w60" not in p.text, "the turn ran on after Ctrl-C"
    await asyncio.to_thread(p.expect, "> ")
    await asyncio.sleep(1.2)  # not a double Ctrl-C
    p.line("still here")
    await asyncio.to_thread(p.expect, re.compile(r"still here\r\n.*still here", re.S))
    await asyncio.to_thread(p.expect, "> ")
    p.ctrl_c()  # at the prompt: quit
    assert await asyncio.to_thread(p.wait) == 0, p.text


async def test_pty_double_ctrl_c_quits(gw, home, ptys):
    p = ptys(chat_args(gw), home)
    await asyncio.to_thread(p.expect, "> ")
    p.line("SCENARIO:slow 200")
    await asyncio.to_thread(p.expect, "w2 ")
    p.ctrl_c()
    await asyncio.sleep(0.2)
    p.ctrl_c()
    assert await asyncio.to_thread(p.wait) == 130, p.text


async def test_pty_gateway_shutdown_exits_2_with_resume_hint(gw, home, ptys):
    p = ptys(chat_args(gw), home)
    m = await asyncio.to_thread(p.expect, SESSION_RE)
    await asyncio.to_thread(p.expect, "> ")
    await asyncio.to_thread(gw.stop)
    await asyncio.to_thread(p.expect, "the gateway is shutting down (close 1001")
    await asyncio.to_thread(p.expect, f"hotplex chat --resume {m.group(1)}")
    assert await asyncio.to_thread(p.wait) == 2


@pytest.mark.timeout_s(90)
async def test_resume_shows_missed_events(gw, home, ptys):
    # 1. a one-shot turn; the CLI remembers how far it got
    rc, out, err = await arun(chat_args(gw, "-p", "alpha beta"), home)
    assert rc == 0 and out == "alpha beta\n", err
    sid = SESSION_RE.search(err).group(1)
    # 2. meanwhile another client of the same session runs a turn
    c = await connect_init(gw, key=sid)
    assert c.session_id == sid
    t = await c.turn("gamma delta while you were away")
    assert t.done["success"]
    await c.close()
    # 3. --resume replays exactly what was missed, then works live
    p = ptys(chat_args(gw, "--resume", sid), home)
    await asyncio.to_thread(p.expect, "replaying what you missed")
    await asyncio.to_thread(p.expect, "gamma delta while you were away")
    await asyncio.to_thread(p.expect, "end of replay")
    await asyncio.to_thread(p.expect, "> ")
    assert "alpha beta" not in p.text, "events already seen were replayed"
    p.line("epsilon")
    await asyncio.to_thread(p.expect, re.compile(r"epsilon\r\n.*epsilon", re.S))
    await asyncio.to_thread(p.expect, "> ")
    p.line("/quit")
    assert await asyncio.to_thread(p.wait) == 0
    # 4. an explicit --last-seq 0 replays everything kept, one-shot
    rc, out, err = await arun(chat_args(gw, "--resume", sid, "--last-seq", "0", "-p", "zeta"),
                              home)
    assert rc == 0, err
    assert out.index("alpha beta") < out.index("gamma delta") < out.index("zeta"), out


# --------------------------------------------------------------------------
# chat against the real claude CLI (stand-in API)


@pytest.fixture(scope="module")
def claude_setup():
    import claude_env
    cbin = claude_env.claude_bin()
    standin = claude_env.Standin().start()
    base = tempfile.mkdtemp(prefix="hotplex-cli-claude-")
    os.makedirs(os.path.join(base, "home"))
    work = os.path.join(base, "work")
    os.makedirs(work)
    g = claude_env.claude_gateway(standin, os.path.join(base, "home"), work, cbin,
                                  name="cli_claude_gw")
    yield g, work
    try:
        g.finish(check=True)
    finally:
        standin.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout_s(120)
async def test_claude_oneshot_text(claude_setup, home):
    g, work = claude_setup
    rc, out, err = await arun(chat_args(g, "-p", "hello there friend", worker="claude_code"),
                              home, timeout=100)
    assert rc == 0, (out, err)
    assert out == "Echo: hello there friend\n", (out, err)


@pytest.mark.timeout_s(150)
async def test_claude_pty_permission_and_interrupt(claude_setup, home, ptys):
    g, work = claude_setup
    wd = tempfile.mkdtemp(prefix="perm-", dir=work)
    p = ptys(chat_args(g, "--work-dir", wd, worker="claude_code"), home)
    await asyncio.to_thread(p.expect, "> ", 30)
    p.line("USE_BASH echo hi | tee hi.txt")
    await asyncio.to_thread(p.expect, "[tool Bash]", 60)
    await asyncio.to_thread(p.expect, re.compile(r"Allow Bash: .*\? \[y/N\] "), 60)
    p.line("y")
    await asyncio.to_thread(p.expect, "Tool said: hi", 60)
    await asyncio.to_thread(p.expect, "> ", 30)
    assert open(os.path.join(wd, "hi.txt")).read() == "hi\n"
    # Ctrl-C during a slow answer: the turn ends, the session goes on
    p.line("SLOWTEXT 200 50")
    await asyncio.to_thread(p.expect, "word5", 60)
    p.ctrl_c()
    await asyncio.to_thread(p.expect, "[interrupted]", 30)
    await asyncio.to_thread(p.expect, "> ", 30)
    assert "word200" not in p.text
    await asyncio.sleep(1.2)
    p.line("after the interrupt")
    await asyncio.to_thread(p.expect, "after the interrupt\r\n")
    await asyncio.to_thread(p.expect, re.compile(r"Echo: .*after the interrupt", re.S), 60)
    await asyncio.to_thread(p.expect, "> ", 30)
    p.line("/quit")
    assert await asyncio.to_thread(p.wait) == 0


# --------------------------------------------------------------------------
# token


async def test_token_accepted_and_expired_refused(gw_factory, home):
    g = hp.Gateway(settings={"auth.clock_skew_s": 0}, env={"HOTPLEX_JWT_SECRET": JWT_SECRET},
                   name="jwt_gw")
    gw_factory.gws.append(g)  # stopped (exit 0 asserted) with the factory's
    g.start()
    senv = {"HOTPLEX_JWT_SECRET": JWT_SECRET}
    # no credentials: refused (JWT only, not dev mode)
    rc, out, err = await arun(chat_args(g, "-p", "hi"), home)
    assert rc == 2 and "UNAUTHORIZED" in err, (rc, err)
    rc, tok, err = await arun(["token", "--user", "alice", "--ttl", "600"], home, env=senv)
    assert rc == 0, err
    tok = tok.strip()
    assert tok.count(".") == 2 and "\n" not in tok
    rc, out, err = await arun(chat_args(g, "-p", "hi alice", "--token", tok), home)
    assert rc == 0 and out == "hi alice\n", err
    # the session belongs to alice
    c = await Client.connect(g)
    await c.init(data={"auth": {"token": tok}})
    await c.close()
    # a token with one second to live, used after two
    rc, short, err = await arun(["token", "--user", "alice", "--ttl", "1"], home, env=senv)
    assert rc == 0, err
    await asyncio.sleep(2.2)
    rc, out, err = await arun(chat_args(g, "-p", "too late", "--token", short.strip()), home)
    assert rc == 2, (out, err)
    assert "UNAUTHORIZED" in err, err
    # a token signed with another secret
    rc, other, err = await arun(["token", "--user", "alice"], home,
                                env={"HOTPLEX_JWT_SECRET": "x" * 40})
    rc, out, err = await arun(chat_args(g, "-p", "forged", "--token", other.strip()), home)
    assert rc == 2 and "UNAUTHORIZED" in err


async def test_token_errors(home):
    rc, out, err = await arun(["token", "--user", "alice"], home)
    assert rc == 1 and out == ""
    assert "no JWT secret" in err and "HOTPLEX_JWT_SECRET" in err, err
    rc, out, err = await arun(["token"], home, env={"HOTPLEX_JWT_SECRET": JWT_SECRET})
    assert rc == 2 and "--user" in err
    rc, out, err = await arun(["token", "--user", "alice"], home,
                              env={"HOTPLEX_JWT_SECRET": "short"})
    assert rc == 1 and "short" not in err.replace("too short", ""), err
    rc, out, err = await arun(["token", "--user", "u" * 200], home,
                              env={"HOTPLEX_JWT_SECRET": JWT_SECRET})
    assert rc == 1 and "not a valid identity" in err
    # the secret from auth.jwt_secret_file, through --config
    d = tempfile.mkdtemp(dir=home)
    sf = os.path.join(d, "secret")
    with open(sf, "w") as f:
        f.write(JWT_SECRET + "\n")
    os.chmod(sf, 0o600)
    cf = os.path.join(d, "hotplex.yaml")
    with open(cf, "w") as f:
        f.write(f"auth:\n  jwt_secret_file: {sf}\n  jwt_issuer: hotplex-test\n")
    rc, out, err = await arun(["token", "--user", "bob", "--config", cf], home)
    assert rc == 0, err
    import base64
    payload = out.strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "bob" and claims["iss"] == "hotplex-test", claims
    assert claims["exp"] - claims["iat"] == 3600


# --------------------------------------------------------------------------
# sessions


class StubAdmin:
    """A stand-in for the admin API: the documented routes, canned data,
    every request recorded."""

    TOKEN = "stub-admin-token-0123456789"

    def __init__(self):
        self.requests = []
        self.sessions = [
            {"id": f"00000000-0000-4000-8000-00000000000{i}", "owner": f"user{i % 2}",
             "worker_type": "echo", "state": "idle" if i % 2 else "running", "seq": i * 10,
             "updated_ms": 1710000000000 + i} for i in range(1, 6)]
        stub = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self, method):
                from urllib.parse import urlsplit, parse_qs, unquote
                u = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                stub.requests.append((method, u.path, q, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Bearer {StubAdmin.TOKEN}":
                    return self.reply(401, {"error": {"code": "UNAUTHORIZED",
                                                      "message": "admin token required"}})
                parts = [unquote(p) for p in u.path.split("/") if p]
                if method == "GET" and parts == ["admin", "sessions"]:
                    xs = [s for s in stub.sessions
                          if q.get("user") in (None, s["owner"])
                          and q.get("state") in (None, s["state"])]
                    start = int(q.get("cursor", "0"))
                    limit = int(q.get("limit", "2"))
                    page = xs[start:start + limit]
                    nxt = str(start + limit) if start + limit < len(xs) else None
                    return self.reply(200, {"sessions": page, "next_cursor": nxt})
                if len(parts) >= 3 and parts[:2] == ["admin", "sessions"]:
                    s = [x for x in stub.sessions if x["id"] == parts[2]]
                    if not s:
                        return self.reply(404, {"error": {"code": "SESSION_NOT_FOUND",
                                                          "message": "no such session"}})
                    if method == "GET" and len(parts) == 3:
                        return self.reply(200, s[0])
                    if method == "POST" and parts[3:] == ["terminate"]:
                        s[0]["state"] = "terminated"
                        return self.reply(200, s[0])
                    if method == "DELETE" and len(parts) == 3:
                        stub.sessions.remove(s[0])
                        return self.reply(200, {"id": parts[2], "state": "deleted"})
                return self.reply(404, {"error": {"code": "NOT_FOUND", "message": "no route"}})

            def do_GET(self):
                self.handle_any("GET")

            def do_POST(self):
                self.handle_any("POST")

            def do_DELETE(self):
                self.handle_any("DELETE")

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def stub_admin():
    s = StubAdmin()
    yield s
    s.close()


async def test_sessions_against_stub(stub_admin, home):
    env = {"HOTPLEX_ADMIN_TOKEN": StubAdmin.TOKEN}
    base = ["sessions", "--admin-url", stub_admin.url]
    rc, out, err = await arun(base + ["list"], home, env=env)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "USER", "WORKER", "STATE", "LAST_SEQ", "UPDATED"]
    assert len(lines) == 6, out  # all three pages followed
    row = lines[1].split()
    assert row[:5] == ["00000000-0000-4000-8000-000000000001", "user1", "echo", "idle", "10"]
    assert re.match(r"\d{4}-\d\d-\d\d", row[5])
    # filters and paging go to the API as query parameters
    rc, out, err = await arun(base + ["list", "--user", "user1", "--state", "idle",
                                      "--limit", "1", "--json"], home, env=env)
    assert rc == 0, err
    j = json.loads(out)
    assert [s["id"][-1] for s in j["sessions"]] == ["1"] and j["next_cursor"] == "1", j
    assert "--cursor 1" in err
    m, path, q, auth = stub_admin.requests[-1]
    assert (m, path, q) == ("GET", "/admin/sessions",
                            {"user": "user1", "state": "idle", "limit": "1"})
    sid = "00000000-0000-4000-8000-000000000002"
    rc, out, err = await arun(base + ["show", sid], home, env=env)
    assert rc == 0 and re.search(r"^state\s+running$", out, re.M), out
    rc, out, err = await arun(base + ["terminate", sid], home, env=env)
    assert rc == 0 and out == f"terminated {sid}\n"
    assert stub_admin.requests[-1][:2] == ("POST", f"/admin/sessions/{sid}/terminate")
    rc, out, err = await arun(base + ["delete", sid, "--json"], home, env=env)
    assert rc == 0 and json.loads(out)["state"] == "deleted"
    assert stub_admin.requests[-1][:2] == ("DELETE", f"/admin/sessions/{sid}")
    rc, out, err = await arun(base + ["show", sid], home, env=env)
    assert rc == 1 and "404" in err and "SESSION_NOT_FOUND" in err, err
    # no token: 401, said clearly; the token itself never printed
    rc, out, err = await arun(base + ["list"], home)
    assert rc == 1 and "401" in err and "admin token" in err, err
    rc, out, err = await arun(base + ["list", "--admin-token", "wrong-token-value"], home)
    assert rc == 1 and "wrong-token-value" not in err
    # usage
    rc, out, err = await arun(base + ["show"], home, env=env)
    assert rc == 2
    rc, out, err = await arun(["sessions", "list", "--admin-url", "http://127.0.0.1:1"], home)
    assert rc == 2 and "cannot reach" in err


async def test_sessions_against_gateway_admin_api(gw, home):
    if not getattr(gw, "admin_port", None):
        pytest.skip("this gateway has no admin API (no `admin listening on` line)")
    url = f"http://127.0.0.1:{gw.admin_port}"
    c = await connect_init(gw)
    await c.turn("listed")
    rc, out, err = await arun(["sessions", "list", "--admin-url", url], home)
    assert rc == 0, err
    assert c.session_id in out, out
    row = [line for line in out.splitlines() if c.session_id in line][0].split()
    assert row[1:4] == ["anonymous", "echo", "idle"], row
    rc, out, err = await arun(["sessions", "list", "--admin-url", url, "--json"], home)
    assert rc == 0 and c.session_id in [s["id"] for s in json.loads(out)["sessions"]]
    rc, out, err = await arun(["sessions", "terminate", c.session_id, "--admin-url", url], home)
    assert rc == 0, err
    await c.until_state("terminated")
    rc, out, err = await arun(["sessions", "show", c.session_id, "--admin-url", url], home)
    assert rc == 0 and re.search(r"^state\s+terminated$", out, re.M), out
    rc, out, err = await arun(["sessions", "delete", c.session_id, "--admin-url", url], home)
    assert rc == 0, err
    await c.close()


# --------------------------------------------------------------------------
# doctor and config


def fake_claude(d):
    p = os.path.join(d, "claude")
    with open(p, "w") as f:
        f.write("#!/bin/sh\necho '9.9.9 (Claude Code)'\n")
    os.chmod(p, 0o755)
    return p


async def test_doctor_good_setup_exits_0(home):
    d = tempfile.mkdtemp(dir=home)
    work = os.path.join(d, "work")
    os.makedirs(work)
    args = ["doctor", "--set", f"server.data_dir={d}/data", "--set", "server.listen=127.0.0.1:0",
            "--set", "admin.listen=127.0.0.1:0", "--set", f"worker.claude_bin={fake_claude(d)}",
            "--set", f"worker.default_work_dir={work}"]
    rc, out, err = await arun(args, home)
    assert rc == 0, out + err
    lines = out.splitlines()
    assert all(re.match(r"^(OK  |WARN|FAIL)  \S", line) for line in lines[:-1]), out
    assert not any(line.startswith("FAIL") for line in lines), out
    for what in ("libraries", "config", "data dir", "database", "listen", "claude", "work dir",
                 "auth", "tls"):
        assert any(line[6:].startswith(what) for line in lines), (what, out)
    assert "9.9.9 (Claude Code)" in out
    assert re.search(r"^WARN  auth\s+dev mode", out, re.M), out
    assert "libuv" in out and "SQLite" in out and "libwebsockets" in out


async def test_doctor_broken_setup_names_each_problem(home):
    d = tempfile.mkdtemp(dir=home)
    blocker = os.path.join(d, "file")
    open(blocker, "w").close()
    bad = os.path.join(d, "bad.yaml")
    with open(bad, "w") as f:
        f.write("server:\n  max_frame_size: huge\n")
    args = ["doctor", "--config", bad, "--set", f"server.data_dir={blocker}/data",
            "--set", "worker.claude_bin=/nonexistent/bin/claude",
            "--set", "admin.listen=127.0.0.1:0"]
    rc, out, err = await arun(args, home)
    assert rc == 1, out + err
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert any("config" in x and "bad.yaml:2:" in x and "max_frame_size" in x for x in fails), out
    assert any("data dir" in x and blocker in x for x in fails), out
    assert any("claude" in x and "/nonexistent/bin/claude" in x and "fix" in x for x in fails), out
    assert re.search(r"^\d+ problem\(s\)", out.splitlines()[-1])


async def test_doctor_port_in_use_and_running_gateway(gw, home):
    d = tempfile.mkdtemp(dir=home)
    common = ["--set", f"worker.claude_bin={fake_claude(d)}", "--set", f"server.data_dir={d}/x",
              "--set", "admin.listen=127.0.0.1:0", "--set", f"worker.default_work_dir={d}"]
    rc, out, err = await arun(["doctor", "--set", f"server.listen=127.0.0.1:{gw.port}",
                               "--url", gw.ws_url()] + common, home)
    assert rc == 0, out
    assert re.search(r"^OK    listen\s+a hotplex gateway", out, re.M), out
    assert "WebSocket upgrade accepted" in out
    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as s:
        port = s.server_address[1]
        rc, out, err = await arun(["doctor", "--set", f"server.listen=127.0.0.1:{port}"] + common,
                                  home)
    assert rc == 1
    assert re.search(r"^FAIL  listen\s+127\.0\.0\.1:\d+ is in use", out, re.M), out


async def test_config_check_and_show(home):
    d = tempfile.mkdtemp(dir=home)
    good = os.path.join(d, "good.yaml")
    with open(good, "w") as f:
        f.write('server:\n  listen: "127.0.0.1:7777"\n  max_frame_size: 64k\n'
                'worker:\n  env:\n    - API_TOKEN=very-secret-value\n')
    bad = os.path.join(d, "bad.yaml")
    with open(bad, "w") as f:
        f.write("server:\n  listen: \"127.0.0.1:7777\"\n  max_frme_size: 1\n")
    rc, out, err = await arun(["config", "check", good], home)
    assert (rc, out) == (0, "ok\n"), err
    rc, out, err = await arun(["config", "check", bad], home)
    assert rc == 1 and out == ""
    assert re.match(rf"^{re.escape(bad)}:3:3: server\.max_frme_size: unknown setting", err), err
    invalid = os.path.join(d, "invalid.yaml")
    with open(invalid, "w") as f:
        f.write("server:\n  tls_cert_file: /nonexistent/cert.pem\n")
    rc, out, err = await arun(["config", "check", invalid], home)
    assert rc == 1 and "tls" in err, err
    rc, out, err = await arun(["config", "check"], home)
    assert rc == 2
    rc, out, err = await arun(["config", "show", "--config", good, "--set", "log.level=debug"],
                              home, env={"HOTPLEX_JWT_SECRET": JWT_SECRET})
    assert rc == 0, err
    kv = dict(line.split(" = ", 1) for line in out.splitlines() if not line.startswith("#"))
    assert kv["server.listen"] == "127.0.0.1:7777"
    assert kv["server.max_frame_size"] == "64k"
    assert kv["log.level"] == "debug"
    assert kv["worker.env"] == "***"
    assert "very-secret-value" not in out and JWT_SECRET not in out
    assert "JWT HS256 secret: set (HOTPLEX_JWT_SECRET)" in out
    # every key of the table is shown
    assert len(kv) >= 40


# --------------------------------------------------------------------------
# credentials at the upgrade, and wss://


API_KEY = "cli-user-key-0123456789abcdef"


async def test_api_key_header(home):
    d = tempfile.mkdtemp(prefix="hotplex-cli-keys-")
    keys = os.path.join(d, "keys")
    fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"carol:{API_KEY}\n")
    g = hp.Gateway(args=["--keys", keys], name="keys_gw").start()
    try:
        rc, out, err = await arun(chat_args(g, "-p", "keyed", "--api-key", API_KEY), home)
        assert rc == 0 and out == "keyed\n", err
        rc, out, err = await arun(chat_args(g, "-p", "x", "--api-key", "wrong-key-0123456789"),
                                  home)
        assert rc == 2 and "HTTP 401" in err and "UNAUTHORIZED" in err, err
        assert "wrong-key-0123456789" not in err
        rc, out, err = await arun(chat_args(g, "-p", "from env"), home,
                                  env={"HOTPLEX_API_KEY": API_KEY})
        assert rc == 0 and out == "from env\n", err
    finally:
        g.finish(check=True)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tls_certs():
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not found")
    d = tempfile.mkdtemp(prefix="hotplex-cli-tls-")
    crt, key = os.path.join(d, "server.crt"), os.path.join(d, "server.key")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                        "-days", "365", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", key, "-out", crt], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    os.chmod(key, 0o600)
    yield crt, key
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout_s(90)
async def test_wss_chat_and_doctor_tls(tls_certs, home):
    crt, key = tls_certs
    tls = {"server.tls_cert_file": crt, "server.tls_key_file": key}
    g = hp.Gateway(settings=tls, name="cli_tls_gw", tls_ca=crt).start()
    try:
        url = g.ws_url()
        assert url.startswith("wss://")
        base = ["chat", "--url", url, "--worker", "echo"]
        rc, out, err = await arun(base + ["--ca", crt, "-p", "over tls"], home)
        assert rc == 0 and out == "over tls\n", err
        rc, out, err = await arun(base + ["-p", "x"], home)
        assert rc == 2 and "certificate verification failed" in err, err
        rc, out, err = await arun(base + ["--insecure", "-p", "anyway"], home)
        assert rc == 0 and out == "anyway\n", err
        # doctor: the certificate loads and matches; the running gateway answers
        d = tempfile.mkdtemp(dir=home)
        args = ["doctor", "--set", f"server.tls_cert_file={crt}",
                "--set", f"server.tls_key_file={key}",
                "--set", f"server.listen=127.0.0.1:{g.port}", "--set", "admin.listen=127.0.0.1:0",
                "--set", f"worker.claude_bin={fake_claude(d)}", "--set", f"server.data_dir={d}/x",
                "--set", f"worker.default_work_dir={d}", "--url", url, "--ca", crt]
        rc, out, err = await arun(args, home)
        assert rc == 0, out + err
        assert re.search(r"^OK    tls\s+certificate CN=127\.0\.0\.1 valid until .*key matches",
                         out, re.M), out
        assert re.search(r"^OK    listen\s+a hotplex gateway", out, re.M), out
        assert "WebSocket upgrade accepted" in out
        # a key that belongs to another certificate
        other_key = os.path.join(d, "other.key")
        subprocess.run(["openssl", "genrsa", "-out", other_key, "2048"], capture_output=True,
                       check=True, timeout=60)
        args[4] = f"server.tls_key_file={other_key}"
        rc, out, err = await arun(args, home)
        assert rc == 1 and re.search(r"^FAIL  tls\s+the private key does not belong", out,
                                     re.M), out
    finally:
        g.finish(check=True)
