"""The gateway under valgrind memcheck: start, authenticate (one refused and
one accepted credential), one echo turn, the REST events route, SIGTERM.
valgrind must find no memory error and no definitely lost block, and the
exit status must be 0 (valgrind's --error-exitcode=99 turns errors into 99).

Skipped when valgrind is not installed. Slow (valgrind runs the code ~20-50x
slower): every timeout here is generous. Loopback only.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import hp
from hp import Client

pytestmark = [pytest.mark.skipif(shutil.which("valgrind") is None,
                                reason="valgrind is not installed (apt-get install valgrind)"),
              pytest.mark.skipif(os.environ.get("HOTPLEX_SANITIZED") == "1",
                                 reason="valgrind cannot run an ASan build; the plain build runs this")]

KEY = "valgrind-user-key-0123456789abcdef"
SECRET = "valgrind-jwt-secret-0123456789abcdef-0123456789"


def hs256(claims):
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    si = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return si + "." + b64(hmac.new(SECRET.encode(), si.encode(), hashlib.sha256).digest())


def valgrind_cmd(log):
    return ["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite",
            "--error-exitcode=99", "--track-fds=no", "--num-callers=30",
            f"--log-file={log}"]


def check_valgrind_log(text):
    assert "ERROR SUMMARY:" in text, f"no valgrind summary in the log:\n{text[-3000:]}"
    lost = [int(x.replace(",", "")) for x in re.findall(r"definitely lost: ([\d,]+) bytes", text)]
    assert all(n == 0 for n in lost), f"definitely lost bytes {lost}:\n{text[-8000:]}"
    m = re.search(r"ERROR SUMMARY: ([\d,]+) errors", text)
    assert m and int(m.group(1).replace(",", "")) == 0, f"valgrind errors:\n{text[-8000:]}"


@pytest.mark.timeout_s(300)
@pytest.mark.parametrize("variant", ["plain_api_key", "tls_jwt"])
async def test_valgrind_start_turn_sigterm(variant):
    d = tempfile.mkdtemp(prefix="hotplex-e2e-vg-")
    try:
        tls = variant == "tls_jwt"
        extra, env, ca = {}, None, None
        if tls:
            if shutil.which("openssl") is None:
                pytest.skip("openssl CLI not found")
            crt, key = os.path.join(d, "s.crt"), os.path.join(d, "s.key")
            r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                                "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", crt],
                               capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
            extra = {"server.tls_cert_file": crt, "server.tls_key_file": key}
            env = {"HOTPLEX_JWT_SECRET": SECRET}
            ca = crt
        keys = os.path.join(d, "keys")
        fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"vg-user:{KEY}\n")
        log = os.path.join(d, "valgrind.log")
        g = hp.Gateway(name="valgrind", wrapper=valgrind_cmd(log), args=["--keys", keys],
                       settings={"auth.max_failures": 1000,
                                 "worker.default_work_dir": os.path.join(d, "work"),
                                 "server.shutdown_grace_ms": 2000, **extra},
                       env=env, tls_ca=ca)
        try:
            await asyncio.to_thread(g.start, 120)
            h = await g.ahealth(timeout=30)
            assert h["status"] == "ok"
            # a refused credential (401 at the upgrade) ...
            st, _, _ = await asyncio.to_thread(
                g.http, "GET", "/api/sessions/x/events", {"X-API-Key": "wrong-key-0123456789"},
                None, 30)
            assert st == 401
            # ... an accepted one, a full echo turn ...
            if tls:  # no credential at the upgrade: a JWT in init.data.auth.token
                c = await Client.connect(g, timeout=60)
                now = int(time.time())
                tok = hs256({"sub": "vg-user", "iat": now, "exp": now + 600})
                await c.init(timeout=60, data={"auth": {"token": tok}})
            else:
                c = await Client.connect(g.ws_url() + f"?api_key={KEY}", timeout=60)
                await c.init(timeout=60)
            await hp.drain_handshake(c, timeout=60)
            t = await c.turn("hello valgrind", timeout=120)
            assert t.message.data["content"] == "hello valgrind"
            assert t.done.data["success"] is True
            sid = c.session_id
            # ... the REST events route (a store read on the writer thread) ...
            st, _, body = await asyncio.to_thread(
                g.http, "GET", f"/api/sessions/{sid}/events", {"X-API-Key": KEY}, None, 60)
            assert st == 200 and b"hello valgrind" in body, (st, body[:300])
            # ... and SIGTERM with the connection still open
            rc = await asyncio.to_thread(g.stop, signal.SIGTERM, 180, None)
            text = open(log, encoding="utf-8", errors="replace").read()
            assert rc == 0, f"exit status {rc} under valgrind (99: memcheck errors)\n" + text[-8000:]
            check_valgrind_log(text)
            if os.environ.get("HOTPLEX_VALGRIND_SHOW"):
                print(text[-3000:])
            try:
                await asyncio.wait_for(c.ws.wait_closed(), 10)
            except asyncio.TimeoutError:
                c.abort()
        finally:
            g.finish(check=False)
    finally:
        shutil.rmtree(d, ignore_errors=True)
