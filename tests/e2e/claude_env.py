"""
claude_env.py - what the claude_code end-to-end tests need besides hp.py:

* claude_bin()        the pinned Claude Code CLI, installed by
                      scripts/install-claude.sh (idempotent, fast when present);
                      pytest.skip only when the npm registry cannot be reached
                      and we are not in CI.
* Standin             the Anthropic API stand-in (tests/standin/anthropic_standin.py)
                      as a subprocess: "listening on 127.0.0.1:PORT".
* claude_gateway()    an hp.Gateway configured to run the real CLI offline
                      against a stand-in, with a private HOME.
* agent_pids() / agent_pid()   the gateway's child processes (the agents), found
                      through /proc (ppid), and which session each one serves
                      (HOTPLEX_SESSION_ID in its environment). Never by name:
                      the gateway's own command line contains "claude".
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import hp

NETWORK_ERRORS = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
    r"network|getaddrinfo|socket hang up|node and npm are required", re.I)

_bin = None
NOT_PASSED = "HOTPLEX_E2E_GATEWAY_ONLY"


def claude_bin():
    """Path of the pinned CLI (installing it if needed)."""
    global _bin
    if _bin:
        return _bin
    script = os.path.join(hp.source_dir(), "scripts", "install-claude.sh")
    try:
        r = subprocess.run([script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=900)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{script} did not finish within 900 s")
    out = r.stdout.decode("utf-8", "replace").strip().splitlines()
    err = r.stderr.decode("utf-8", "replace")
    if r.returncode != 0 or not out:
        if NETWORK_ERRORS.search(err) and not os.environ.get("CI"):
            why = next((ln.strip() for ln in err.splitlines() if NETWORK_ERRORS.search(ln)), "")
            pytest.skip("the Claude Code CLI is not installed and the npm registry is "
                        f"unreachable ({os.path.basename(script)} failed: {why[:200]})")
        raise AssertionError(f"{script} failed (status {r.returncode}):\n{err[-3000:]}")
    path = out[-1].strip()
    assert os.access(path, os.X_OK), f"{script} printed {path!r}, which is not executable"
    _bin = path
    return path


class Standin:
    """The Anthropic Messages API stand-in, one process."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hotplex-standin-")
        self.log_path = os.path.join(self.dir, "requests.log")
        self.proc = None
        self.port = None

    def start(self, timeout=15):
        script = os.path.join(hp.source_dir(), "tests", "standin", "anthropic_standin.py")
        self.proc = subprocess.Popen(
            [sys.executable, script, "--port", "0", "--log", self.log_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line or self.proc.poll() is not None:
                break
        m = re.match(rb"^listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            self.stop()
            raise AssertionError(f"stand-in did not start: first line {line!r}")
        self.port = int(m.group(1))
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                t = f.read()
        except OSError:
            return ""
        return t[-n:]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def gateway_env(home, standin):
    """The gateway's environment: the CLI reads ANTHROPIC_* and HOME through
    the default worker.env_pass whitelist. Variables that would point the CLI
    at a real account or change its behaviour are removed."""
    return {
        "HOME": home,
        "ANTHROPIC_BASE_URL": standin.url,
        "ANTHROPIC_API_KEY": "test",
        "ANTHROPIC_AUTH_TOKEN": None,
        "ANTHROPIC_MODEL": None,
        "CLAUDE_CONFIG_DIR": None,
        "CLAUDECODE": None,
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # not whitelisted: must not reach agents (agents never inherit the
        # gateway's environment)
        NOT_PASSED: "gateway-only",
    }


def claude_settings(bin_path, work_dir, extra=None):
    s = {
        "worker.claude_bin": bin_path,
        "worker.default_work_dir": work_dir,
        # API errors must not be retried for minutes (not in env_pass by default)
        "worker.env": "CLAUDE_CODE_MAX_RETRIES=0",
        "worker.stop_grace_ms": 3000,
    }
    s.update(extra or {})
    return s


def claude_gateway(standin, home, work_dir, bin_path=None, settings=None, data_dir=None,
                   name="claude_gw", env=None):
    """A started hp.Gateway that runs the real CLI against `standin`; `env`
    changes the gateway's environment further."""
    genv = gateway_env(home, standin)
    genv.update(env or {})
    g = hp.Gateway(settings=claude_settings(bin_path or claude_bin(), work_dir, settings),
                   data_dir=data_dir, name=name, env=genv)
    g.start()
    return g


# --------------------------------------------------------------------------
# Agent processes


def _stat(pid):
    """(state, ppid) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return rest[0], int(rest[1])


def agent_pids(gw):
    """Live (non-zombie) direct children of the gateway."""
    gpid = gw.proc.pid
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st and st[1] == gpid and st[0] not in ("Z", "X"):
            out.append(int(name))
    return sorted(out)


def proc_env(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def agent_pid(gw, session_id):
    """The pid of the agent serving `session_id` (None if there is none)."""
    found = [p for p in agent_pids(gw) if proc_env(p).get("HOTPLEX_SESSION_ID") == session_id]
    assert len(found) <= 1, f"several agents for session {session_id}: {found}"
    return found[0] if found else None


def pid_alive(pid):
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")
