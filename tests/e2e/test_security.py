"""Security: credentials (API keys, JWT HS256/RS256/ES256), user isolation,
throttles, origin checks, hostile input and path policies.

Every test talks to gateways on 127.0.0.1 only, bounded in count and time.
After each attack the gateway must still be up (/health) and serve another
session (`still_serving`). Nothing here sends traffic to a non-loopback
address: the dev-mode refusal on 0.0.0.0 is checked by the exit status alone.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid

import pytest
import websockets
from websockets.exceptions import InvalidStatusCode
from websockets.frames import Opcode

import hp
from hp import Client

SECRET = "e2e-jwt-secret-0123456789abcdef-0123456789abcdef"
AUD = "hotplex-e2e"
ISS = "https://issuer.e2e.test"
KEYS = {
    "alice": "alice-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef-bob",
}
ALICE_KEY2 = "alice-rotated-key-fedcba9876543210"  # a second key of the same user
NOT_A_KEY = "mallory-key-0123456789abcdef"


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------

def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def secdir():
    d = tempfile.mkdtemp(prefix="hotplex-e2e-sec-")
    keys = "# e2e keys\n\n"
    keys += "".join(f"{u}:{k}\n" for u, k in KEYS.items())
    keys += f"  alice : {ALICE_KEY2}  \n"
    write_private(os.path.join(d, "keys"), keys)
    wd = os.path.join(d, "work")
    os.makedirs(wd)
    yield os.path.realpath(d)
    shutil.rmtree(d, ignore_errors=True)


def keys_file(secdir):
    return os.path.join(secdir, "keys")


def work_dir(secdir):
    return os.path.join(secdir, "work")


class GwSet:
    """Gateways started by one test or module; all stopped with SIGTERM and
    exit status 0 asserted at teardown."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.gws = []

    def __call__(self, settings=None, start=True, **kw):
        g = hp.Gateway(settings=settings, name=f"{self.prefix}{len(self.gws) + 1}", **kw)
        self.gws.append(g)
        if start:
            g.start()
        return g

    def finish(self):
        errors = []
        for g in self.gws:
            try:
                g.finish(check=True)
            except AssertionError as e:
                errors.append(str(e))
        if errors:
            raise AssertionError("\n".join(errors))


@pytest.fixture
def gws():
    s = GwSet("sec")
    yield s
    s.finish()


def auth_settings(secdir, **extra):
    s = {"worker.default_work_dir": work_dir(secdir), "auth.max_failures": 1000000,
         "auth.jwt_audience": AUD, "auth.jwt_issuer": ISS}
    s.update(extra)
    return s


@pytest.fixture(scope="module")
def auth_gw(secdir):
    """Keys (alice, bob) and HS256 JWTs (aud + iss required); throttle lifted
    so that the many refused attempts of this module do not block 127.0.0.1."""
    s = GwSet("auth_gw")
    g = s(auth_settings(secdir), args=["--keys", keys_file(secdir)],
          env={"HOTPLEX_JWT_SECRET": SECRET})
    yield g
    s.finish()


# ---- JWT minting (stdlib only; RS256/ES256 signed by the openssl CLI) -----

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_signing_input(header, claims):
    h = b64u(json.dumps(header, separators=(",", ":")).encode())
    c = b64u(json.dumps(claims, separators=(",", ":")).encode())
    return f"{h}.{c}"


def jwt_hs256(claims, secret=SECRET, header=None):
    si = jwt_signing_input(header or {"alg": "HS256", "typ": "JWT"}, claims)
    key = secret.encode() if isinstance(secret, str) else secret
    sig = hmac.new(key, si.encode(), hashlib.sha256).digest()
    return f"{si}.{b64u(sig)}"


def claims(sub="carol", **kw):
    now = int(time.time())
    c = {"sub": sub, "iat": now, "exp": now + 600, "aud": AUD, "iss": ISS}
    if sub is None:
        del c["sub"]
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def openssl(*args, input=None):
    r = subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr.decode(errors='replace')}"
    return r.stdout


def der_ecdsa_to_raw(der, n=32):
    """ECDSA-Sig-Value (DER SEQUENCE of two INTEGERs) -> r || s (JWS form)."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7f)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        ln = der[i + 1]
        v = der[i + 2:i + 2 + ln].lstrip(b"\x00")
        out += v.rjust(n, b"\x00")
        i += 2 + ln
    return out


def jwt_openssl(alg, claims_, key_pem_path, header=None):
    si = jwt_signing_input(header or {"alg": alg, "typ": "JWT"}, claims_)
    sig = openssl("dgst", "-sha256", "-sign", key_pem_path, input=si.encode())
    if alg == "ES256":
        sig = der_ecdsa_to_raw(sig)
    return f"{si}.{b64u(sig)}"


# ---- connecting ------------------------------------------------------------

def ws_url(gw, query=""):
    return gw.ws_url("/ws") + query


async def connect(gw, query="", headers=None, origin=None, name=None, timeout=10):
    kw = {}
    if headers:
        kw["extra_headers"] = headers
    if origin is not None:
        kw["origin"] = origin
    return await Client.connect(ws_url(gw, query), name=name, timeout=timeout, **kw)


async def expect_refused(gw, status, query="", headers=None, origin=None):
    """The upgrade is refused with an HTTP status (no WebSocket)."""
    try:
        c = await connect(gw, query, headers, origin)
    except InvalidStatusCode as e:
        assert e.status_code == status, f"upgrade refused with {e.status_code}, expected {status}"
        return
    await c.close()
    raise AssertionError(f"upgrade with query={query!r} headers={headers} origin={origin!r} "
                         f"succeeded, expected HTTP {status}")


async def expect_no_upgrade(gw, query="", headers=None, statuses=(400, 401, 431)):
    """Refused with one of `statuses`, or the connection dropped by the HTTP
    layer before any response (lws does that to requests it cannot parse)."""
    try:
        c = await connect(gw, query, headers)
    except InvalidStatusCode as e:
        assert e.status_code in statuses, e.status_code
        return
    except (EOFError, OSError, websockets.exceptions.InvalidMessage,
            websockets.exceptions.ConnectionClosed):
        return
    await c.close()
    raise AssertionError(f"upgrade with query={query!r} headers={headers} succeeded")


async def init_as(gw, key=None, token=None, query="", headers=None, expect_ok=True, wd=None,
                  name=None):
    c = await connect(gw, query, headers, name=name)
    data = {}
    if token is not None:
        data["auth"] = {"token": token}
    if wd is not None:
        data["config"] = {"work_dir": wd}
    ack = await c.init(key=key, data=data or None, expect_ok=expect_ok)
    if expect_ok is True:
        await hp.drain_handshake(c)
    return c, ack


async def expect_unauthorized_init(gw, token=None, query="", headers=None):
    c, ack = await init_as(gw, token=token, query=query, headers=headers, expect_ok=False)
    assert ack.data["code"] == "UNAUTHORIZED", ack.raw
    code, _, msgs = await c.expect_close(5)
    assert code == 1000 and msgs == [], (code, msgs)


async def whoami(gw, wd, **kw):
    """The owner the gateway gave this connection: the session id a client key
    derives to includes the owner (spec section 3)."""
    key = f"whoami-{uuid.uuid4()}"
    c, ack = await init_as(gw, key=key, wd=wd, **kw)
    sid = ack.data["session_id"]
    await c.close()
    return sid, key


def owner_of(sid, key, wd, candidates):
    for u in candidates:
        if hp.derived_session_id(key, wd, owner=u) == sid:
            return u
    return None


async def still_serving(gw, query="", headers=None, token=None, text="still serving"):
    """/health answers and a new session runs a full turn."""
    h = await gw.ahealth()
    assert h["status"] == "ok"
    gw.assert_alive()
    c, _ = await init_as(gw, token=token, query=query, headers=headers)
    t = await c.turn(text)
    assert t.message.data["content"] == text and t.done.data["success"] is True
    await c.close()


def alice_q():
    return f"?api_key={KEYS['alice']}"


# ---- raw sockets -------------------------------------------------------------

def raw_request(port, data, timeout=5):
    return hp.raw_tcp(port, data, timeout)


def parse_http(resp):
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0]) if lines and lines[0] else None
    status = int(m.group(1)) if m else None
    headers = []
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        headers.append((k.strip().lower(), v.strip()))
    return status, headers, body


class RawWS:
    """A WebSocket connection written by hand: for frames no client library
    sends (bogus lengths, stray continuations, ...)."""

    def __init__(self, port, path="/ws", headers=b"", timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n").encode() + headers + b"\r\n"
        self.s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            buf += chunk
        head, _, self.buf = buf.partition(b"\r\n\r\n")
        self.status, self.headers, _ = parse_http(head + b"\r\n\r\n")

    @staticmethod
    def frame(opcode, payload, fin=True, length=None, mask=True):
        b0 = (0x80 if fin else 0) | opcode
        n = len(payload) if length is None else length
        if n < 126:
            hdr = bytes([b0, (0x80 if mask else 0) | n])
        elif n < 65536:
            hdr = bytes([b0, (0x80 if mask else 0) | 126]) + struct.pack("!H", n)
        else:
            hdr = bytes([b0, (0x80 if mask else 0) | 127]) + struct.pack("!Q", n)
        if not mask:
            return hdr + payload
        mk = os.urandom(4)
        return hdr + mk + bytes(b ^ mk[i % 4] for i, b in enumerate(payload))

    def send(self, data):
        self.s.sendall(data)

    def send_frame(self, opcode, payload, **kw):
        self.send(self.frame(opcode, payload, **kw))

    def _read(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                raise TimeoutError from None
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self, timeout=10):
        """(opcode, payload); EOFError when the peer dropped the connection."""
        deadline = time.monotonic() + timeout
        h = self._read(2, deadline)
        op, n = h[0] & 0x0f, h[1] & 0x7f
        if n == 126:
            n = struct.unpack("!H", self._read(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8, deadline))[0]
        return op, self._read(n, deadline)

    def messages_until_close(self, timeout=10):
        """(list of text messages, close code or None if dropped without one)."""
        msgs = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                op, payload = self.recv_frame(max(0.01, deadline - time.monotonic()))
            except EOFError:
                return msgs, None
            if op == 0x8:
                return msgs, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if op == 0x1:
                msgs.append(json.loads(payload))

    def init(self, token=None):
        d = {"version": "aep/v1", "worker_type": "echo"}
        if token:
            d["auth"] = {"token": token}
        self.send_frame(0x1, json.dumps(hp.envelope("init", d)).encode())
        op, payload = self.recv_frame()
        assert op == 0x1
        ack = json.loads(payload)
        assert ack["event"]["type"] == "init_ack", ack
        return ack

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# credentials: API keys in every place
# --------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["header", "bearer", "query_api_key", "query_token",
                                   "init_token"])
async def test_api_key_in_each_place(auth_gw, secdir, where):
    k = KEYS["alice"]
    kw = {"header": dict(headers={"X-API-Key": k}),
          "bearer": dict(headers={"Authorization": f"Bearer {k}"}),
          "query_api_key": dict(query=f"?api_key={k}"),
          "query_token": dict(query=f"?token={k}"),
          "init_token": dict(token=k)}[where]
    sid, key = await whoami(auth_gw, work_dir(secdir), **kw)
    assert owner_of(sid, key, work_dir(secdir), ["alice", "bob", "anonymous", ""]) == "alice", (
        f"credential via {where}: session {sid} is not owned by alice")
    c, _ = await init_as(auth_gw, **kw)
    t = await c.turn(f"via {where}")
    assert t.message.data["content"] == f"via {where}"
    await c.close()


async def test_each_key_is_its_own_user(auth_gw, secdir):
    wd = work_dir(secdir)
    users = ["alice", "bob", "anonymous"]
    sid, key = await whoami(auth_gw, wd, headers={"X-API-Key": KEYS["bob"]})
    assert owner_of(sid, key, wd, users) == "bob"
    # a rotated second key of alice is alice again (spaces around user:key trimmed)
    sid, key = await whoami(auth_gw, wd, headers={"X-API-Key": ALICE_KEY2})
    assert owner_of(sid, key, wd, users) == "alice"


@pytest.mark.parametrize("where", ["header", "bearer", "query_api_key", "query_token"])
async def test_wrong_key_is_401_at_upgrade(auth_gw, where):
    bad = NOT_A_KEY
    kw = {"header": dict(headers={"X-API-Key": bad}),
          "bearer": dict(headers={"Authorization": f"Bearer {bad}"}),
          "query_api_key": dict(query=f"?api_key={bad}"),
          "query_token": dict(query=f"?token={bad}")}[where]
    await expect_refused(auth_gw, 401, **kw)
    await still_serving(auth_gw, query=alice_q())


async def test_401_body_is_json_and_names_no_secret(auth_gw):
    ws = RawWS(auth_gw.port, path=f"/ws?api_key={NOT_A_KEY}")
    try:
        assert ws.status == 401, ws.status
        hd = dict(ws.headers)
        assert hd.get(b"content-type", b"").startswith(b"application/json")
        n = int(hd[b"content-length"])
        body = ws.buf
        while len(body) < n:
            chunk = ws.s.recv(4096)
            if not chunk:
                break
            body += chunk
        j = json.loads(body[:n])
        assert j["error"]["code"] == "UNAUTHORIZED", j
        assert NOT_A_KEY.encode() not in body
    finally:
        ws.close()
    assert NOT_A_KEY not in auth_gw.log_text(), "a presented key was written to the log"


async def test_custom_api_key_header(gws, secdir):
    gw = gws(auth_settings(secdir, **{"auth.api_key_header": "X-Hotplex-Key"}),
             args=["--keys", keys_file(secdir)])
    c, _ = await init_as(gw, headers={"X-Hotplex-Key": KEYS["alice"]})
    await c.close()
    await expect_refused(gw, 401, headers={"X-Hotplex-Key": NOT_A_KEY})
    # the default header name is then just an unknown header: no credential
    await expect_unauthorized_init(gw, headers={"X-API-Key": KEYS["alice"]})
    await still_serving(gw, headers={"Authorization": f"Bearer {KEYS['bob']}"})


async def test_oversized_credential_dropped(auth_gw):
    """Request headers over 4096 bytes: the HTTP layer drops the request."""
    big = "x" * 9000
    await expect_no_upgrade(auth_gw, query=f"?api_key={big}")
    await expect_no_upgrade(auth_gw, headers={"X-API-Key": big})
    await expect_no_upgrade(auth_gw, headers={"Authorization": "Bearer " + big})
    await still_serving(auth_gw, query=alice_q())


async def test_missing_credentials_fail_at_init(auth_gw):
    await expect_unauthorized_init(auth_gw)
    # an empty or wrong init token too
    await expect_unauthorized_init(auth_gw, token="")
    await expect_unauthorized_init(auth_gw, token=NOT_A_KEY)
    # "Bearer" with nothing after it is no credential either
    await expect_unauthorized_init(auth_gw, headers={"Authorization": "Bearer "})
    await still_serving(auth_gw, query=alice_q())


BAD_KEYS = {"short": "short", "long": "x" * 2000, "fifteen": "a" * 15,
            "space": "has%20space%20in%20it%200123456789", "nul": "k%00" + KEYS["alice"],
            "nul_suffix": KEYS["alice"] + "%00", "longer": KEYS["alice"] + "x",
            "prefix": KEYS["alice"][:-1], "upper": KEYS["alice"].upper(),
            "jwt_shaped": "a.b.c", "user_colon_key": "alice:" + KEYS["alice"]}


@pytest.mark.parametrize("name", list(BAD_KEYS))
async def test_bad_key_shapes_refused(auth_gw, name):
    bad = BAD_KEYS[name]
    if name.startswith("nul"):
        await expect_no_upgrade(auth_gw, query=f"?api_key={bad}")
    else:
        await expect_refused(auth_gw, 401, query=f"?api_key={bad}")
    await still_serving(auth_gw, query=alice_q())


# --------------------------------------------------------------------------
# credentials: JWT HS256
# --------------------------------------------------------------------------

async def test_jwt_hs256_valid_everywhere(auth_gw, secdir):
    wd = work_dir(secdir)
    tok = jwt_hs256(claims("carol"))
    for kw in (dict(headers={"Authorization": f"Bearer {tok}"}), dict(query=f"?token={tok}"),
               dict(query=f"?api_key={tok}"), dict(token=tok)):
        sid, key = await whoami(auth_gw, wd, **kw)
        assert owner_of(sid, key, wd, ["carol", "alice", "anonymous"]) == "carol", kw
    # aud may be an array that contains ours
    tok = jwt_hs256(claims("carol", aud=["other", AUD]))
    c, _ = await init_as(auth_gw, token=tok)
    t = await c.turn("jwt ok")
    assert t.done.data["success"] is True
    await c.close()


def bad_tokens():
    now = int(time.time())
    good = claims("carol")
    body = jwt_signing_input({"alg": "HS256", "typ": "JWT"}, good)
    return {
        "bad_signature": jwt_hs256(good, secret="another-secret-0123456789abcdef-0123456789"),
        "tampered_claims": jwt_hs256(good).split(".")[0] + "." +
                           b64u(json.dumps(claims("alice")).encode()) + "." +
                           jwt_hs256(good).split(".")[2],
        "expired": jwt_hs256(claims("carol", exp=now - 3600)),
        "nbf_future": jwt_hs256(claims("carol", nbf=now + 3600)),
        "wrong_aud": jwt_hs256(claims("carol", aud="someone-else")),
        "no_aud": jwt_hs256(claims("carol", aud=None)),
        "wrong_iss": jwt_hs256(claims("carol", iss="https://evil.example")),
        "no_sub": jwt_hs256(claims(None)),
        "sub_not_string": jwt_hs256(claims(42)),
        "alg_none": jwt_signing_input({"alg": "none", "typ": "JWT"}, good) + ".",
        "alg_none_sig": jwt_signing_input({"alg": "none"}, good) + "." + b64u(b"x" * 32),
        "alg_HS512": jwt_hs256(good, header={"alg": "HS512"}),
        "alg_RS256_no_key": body.replace(body.split(".")[0],
                                         b64u(b'{"alg":"RS256"}')) + "." + b64u(b"x" * 256),
        "crit_header": jwt_hs256(good, header={"alg": "HS256", "crit": ["exp"]}),
        "two_alg": jwt_hs256(good, header={"alg": "HS256", "alg ": "x"}).replace(
            b64u(b'{"alg":"HS256","alg ":"x"}'), b64u(b'{"alg":"none","alg":"HS256"}')),
        "garbage_b64": "###.$$$.%%%",
        "empty_parts": "..",
        "padding": jwt_hs256(good) + "==",
        "truncated_sig": jwt_hs256(good)[:-5],
    }


@pytest.mark.parametrize("name", list(bad_tokens()))
async def test_jwt_hs256_refused(auth_gw, name):
    tok = bad_tokens()[name]
    await expect_refused(auth_gw, 401, headers={"Authorization": f"Bearer {tok}"})
    await expect_unauthorized_init(auth_gw, token=tok)
    await still_serving(auth_gw, query=alice_q(), text=f"after {name}")


async def test_jwt_exp_leeway(auth_gw):
    """exp/nbf get auth.clock_skew_s (60 s) of leeway, no more."""
    now = int(time.time())
    c, _ = await init_as(auth_gw, token=jwt_hs256(claims("carol", exp=now - 20)))
    await c.close()
    c, _ = await init_as(auth_gw, token=jwt_hs256(claims("carol", nbf=now + 20)))
    await c.close()
    await expect_unauthorized_init(auth_gw, token=jwt_hs256(claims("carol", exp=now - 120)))
    await expect_unauthorized_init(auth_gw, token=jwt_hs256(claims("carol", nbf=now + 120)))


async def test_jwt_bot_id_required(gws, secdir):
    """auth.bot_id set: a token must carry that bot_id; one for another bot
    (or none) is refused at the upgrade and at init."""
    gw = gws(auth_settings(secdir, **{"auth.bot_id": "bot-a"}), args=["--keys", keys_file(secdir)],
             env={"HOTPLEX_JWT_SECRET": SECRET})
    ok = jwt_hs256(claims("carol", bot_id="bot-a"))
    c, _ = await init_as(gw, token=ok)
    t = await c.turn("bot a")
    assert t.done.data["success"] is True
    await c.close()
    for tok in (jwt_hs256(claims("carol", bot_id="bot-b")), jwt_hs256(claims("carol")),
                jwt_hs256(claims("carol", bot_id="")), jwt_hs256(claims("carol", bot_id=7))):
        await expect_refused(gw, 401, query=f"?token={tok}")
        await expect_unauthorized_init(gw, token=tok)
    await still_serving(gw, token=ok)
    # API-key identities get the configured bot_id and keep working
    await still_serving(gw, query=alice_q())


async def test_jwt_secret_too_short_refuses_to_start(gws, secdir):
    gw = gws(auth_settings(secdir), start=False, env={"HOTPLEX_JWT_SECRET": "too-short"})
    r = subprocess.run(gw.command(), capture_output=True, timeout=20,
                       env={**os.environ, "HOTPLEX_JWT_SECRET": "too-short"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert b"too-short" not in r.stderr + r.stdout, "the secret was echoed"


# --------------------------------------------------------------------------
# credentials: JWT RS256 / ES256 with a public key file
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(secdir):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found (apt-get install openssl)")
    d = os.path.join(secdir, "pki")
    os.makedirs(d, exist_ok=True)
    out = {}
    for name, args in (("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("rsa_other", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("ec", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        key = os.path.join(d, f"{name}.key")
        pub = os.path.join(d, f"{name}.pub")
        openssl("genpkey", *args, "-out", key)
        openssl("pkey", "-in", key, "-pubout", "-out", pub)
        out[name] = (key, pub)
    return out


async def test_jwt_rs256(gws, secdir, pki):
    key, pub = pki["rsa"]
    gw = gws(auth_settings(secdir, **{"auth.jwt_public_key_file": pub}))
    wd = work_dir(secdir)
    tok = jwt_openssl("RS256", claims("dave"), key)
    sid, k = await whoami(gw, wd, headers={"Authorization": f"Bearer {tok}"})
    assert owner_of(sid, k, wd, ["dave", "anonymous"]) == "dave"
    c, _ = await init_as(gw, token=tok)
    t = await c.turn("rs256")
    assert t.done.data["success"] is True
    await c.close()
    pem = open(pub, "rb").read()
    refused = {
        "other_key": jwt_openssl("RS256", claims("dave"), pki["rsa_other"][0]),
        "expired": jwt_openssl("RS256", claims("dave", exp=int(time.time()) - 3600), key),
        "wrong_aud": jwt_openssl("RS256", claims("dave", aud="x"), key),
        # algorithm confusion: HS256 "signed" with the public key's PEM bytes
        "hs256_with_pem": jwt_hs256(claims("dave"), secret=pem),
        "hs256_no_secret": jwt_hs256(claims("dave")),
        "es256_on_rsa_key": jwt_openssl("ES256", claims("dave"), pki["ec"][0]),
        "alg_none": jwt_signing_input({"alg": "none"}, claims("dave")) + ".",
        "tampered": ".".join([tok.split(".")[0], b64u(json.dumps(claims("root")).encode()),
                              tok.split(".")[2]]),
    }
    for name, bad in refused.items():
        try:
            await expect_refused(gw, 401, headers={"Authorization": f"Bearer {bad}"})
            await expect_unauthorized_init(gw, token=bad)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
    await still_serving(gw, token=tok)


async def test_jwt_es256(gws, secdir, pki):
    key, pub = pki["ec"]
    gw = gws(auth_settings(secdir, **{"auth.jwt_public_key_file": pub}))
    wd = work_dir(secdir)
    tok = jwt_openssl("ES256", claims("erin"), key)
    sid, k = await whoami(gw, wd, query=f"?token={tok}")
    assert owner_of(sid, k, wd, ["erin", "anonymous"]) == "erin"
    for bad in (jwt_openssl("RS256", claims("erin"), pki["rsa"][0]),
                jwt_hs256(claims("erin"), secret=open(pub, "rb").read()),
                jwt_openssl("ES256", claims("erin", iss="nope"), key)):
        await expect_refused(gw, 401, query=f"?token={bad}")
    await still_serving(gw, token=tok)


# --------------------------------------------------------------------------
# isolation: user B cannot read, drive, replay or detect user A's session
# --------------------------------------------------------------------------

def hdr(user):
    return {"X-API-Key": KEYS[user]}


def rest_events(gw, sid, user=None, query=""):
    h = hdr(user) if user else {}
    return gw.http("GET", f"/api/sessions/{sid}/events{query}", headers=h)


def ack_shape(ack):
    """What an init_ack tells a client about the session, minus its id."""
    d = dict(ack.data)
    d.pop("session_id")
    return d


async def test_isolation_between_users(auth_gw, secdir):
    gw = auth_gw
    wd = work_dir(secdir)
    secret_text = f"alice-secret-{uuid.uuid4()}"
    a_key = f"alice-tab-{uuid.uuid4()}"
    a, a_ack = await init_as(gw, key=a_key, headers=hdr("alice"), name="alice")
    a_sid = a_ack.data["session_id"]
    assert a_sid == hp.derived_session_id(a_key, wd, owner="alice")
    t = await a.turn(secret_text)
    assert t.message.data["content"] == secret_text
    a_head = a.pos

    async def bob_init(key, **kw):
        c, ack = await init_as(gw, key=key, headers=hdr("bob"), name="bob", **kw)
        return c, ack

    def no_secret(c):
        for e in c.msgs:
            assert secret_text not in e.text and a_sid not in json.dumps(e.raw), (
                f"bob saw alice's session: {e!r}")

    # 1. init with alice's session id as key, and with a random id: same answer
    rnd = str(uuid.uuid4())
    b1, ack1 = await bob_init(a_sid)
    b2, ack2 = await bob_init(rnd)
    assert ack1.data["session_id"] != a_sid
    assert ack1.data["session_id"] == hp.derived_session_id(a_sid, wd, owner="bob")
    assert ack2.data["session_id"] == hp.derived_session_id(rnd, wd, owner="bob")
    assert ack_shape(ack1) == ack_shape(ack2), (ack1.raw, ack2.raw)
    for c in (b1, b2):
        await c.assert_quiet(0.2)
        no_secret(c)
        await c.close()

    # 2. init with alice's client key string: bob's own (derived) session
    b3, ack3 = await bob_init(a_key)
    assert ack3.data["session_id"] == hp.derived_session_id(a_key, wd, owner="bob")
    assert ack3.data["session_id"] != a_sid
    await b3.assert_quiet(0.2)
    no_secret(b3)
    await b3.close()

    # 3. replay: last_seq 0 with alice's id (envelope and data key) and a random id
    for key_kw in (dict(key=a_sid), dict(env_key=a_sid), dict(key=str(uuid.uuid4()))):
        c = await connect(gw, headers=hdr("bob"), name="bob-replay")
        ack = await c.init(last_seq=0, **key_kw)
        assert ack.data["session_id"] != a_sid
        assert ack.data["last_seq"] < a_head, "bob's replay reached alice's stream"
        await c.until_seq(ack.data["last_seq"])
        await c.assert_quiet(0.2)
        no_secret(c)
        await c.close()

    # 4. REST: alice reads her events; bob gets exactly what a nonexistent id gets
    st, _, body = rest_events(gw, a_sid, "alice")
    assert st == 200 and secret_text.encode() in body, (st, body[:300])
    st_b, _, body_b = rest_events(gw, a_sid, "bob")
    st_r, _, body_r = rest_events(gw, rnd, "bob")
    assert st_b == st_r == 404, (st_b, st_r)
    assert json.loads(body_b) == json.loads(body_r)
    assert json.loads(body_b)["error"]["code"] == "SESSION_NOT_FOUND"
    assert secret_text.encode() not in body_b
    for q in ("?after=0", "?after=0&limit=1000", "?limit=1"):
        st_b, _, body_b = rest_events(gw, a_sid, "bob", q)
        assert st_b == 404 and secret_text.encode() not in body_b
    # without credentials: 401, for both
    for sid in (a_sid, rnd):
        st, _, body = rest_events(gw, sid)
        assert st == 401 and json.loads(body)["error"]["code"] == "UNAUTHORIZED", (st, body)
        st, _, body = gw.http("GET", f"/api/sessions/{sid}/events",
                              headers={"X-API-Key": NOT_A_KEY})
        assert st == 401, st

    # 5. control / input from bob's connection naming alice's session act on
    #    bob's own session only
    b4, _ = await bob_init(None)
    for action in ("interrupt", "terminate", "reset", "delete"):
        await b4.send("control", {"action": action}, session_id=a_sid)
        if action == "delete":
            code, _, _ = await b4.expect_close(10)
            assert code == 1000
        else:
            await b4.assert_quiet(0.3) if action == "interrupt" else await b4.until("state")
    await a.assert_quiet(0.3)
    no_secret(b4)
    b5, _ = await bob_init(None)
    await b5.send("input", {"content": "bob writes"}, session_id=a_sid)
    t = await b5.collect_turn()
    assert t.message.data["content"] == "bob writes"
    await b5.send("control", {"action": "cd", "details": {"path": wd}}, session_id=a_sid)
    await asyncio.sleep(0.3)
    await b5.close()
    # alice's session saw none of it and still works, with its history intact
    pong = await a.assert_quiet(0.2)
    assert pong.data["state"] == "idle", pong
    t = await a.turn("alice again")
    assert t.message.data["content"] == "alice again"
    assert t.events[0].seq == a_head + 1, "something else was committed to alice's stream"
    st, _, body = rest_events(gw, a_sid, "alice")
    evs = json.loads(body)["events"]
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert "bob writes" not in body.decode()
    await a.close()


async def test_isolation_same_key_two_users_both_work(auth_gw, secdir):
    """Two users using the same client key get two sessions, concurrently."""
    key = f"shared-{uuid.uuid4()}"
    a, aa = await init_as(auth_gw, key=key, headers=hdr("alice"))
    b, bb = await init_as(auth_gw, key=key, headers=hdr("bob"))
    assert aa.data["session_id"] != bb.data["session_id"]
    ta, tb = await asyncio.gather(a.turn("from alice"), b.turn("from bob"))
    assert ta.message.data["content"] == "from alice"
    assert tb.message.data["content"] == "from bob"
    assert all("from alice" not in e.text for e in b.msgs)
    assert all("from bob" not in e.text for e in a.msgs)
    await hp.close_all([a, b])


async def test_isolation_between_bots_of_one_user(gws, secdir):
    gw = gws(auth_settings(secdir), env={"HOTPLEX_JWT_SECRET": SECRET})
    t1 = jwt_hs256(claims("frank", bot_id="bot-1"))
    t2 = jwt_hs256(claims("frank", bot_id="bot-2"))
    key = f"bot-key-{uuid.uuid4()}"
    a, aa = await init_as(gw, key=key, token=t1)
    await a.turn("bot one")
    # bot-2 with bot-1's session id: a new session of its own (like a random id)
    b, bb = await init_as(gw, key=aa.data["session_id"], token=t2)
    assert bb.data["session_id"] != aa.data["session_id"]
    await b.assert_quiet(0.2)
    await b.close()
    st, _, _ = gw.http("GET", f"/api/sessions/{aa.data['session_id']}/events",
                       headers={"Authorization": f"Bearer {t2}"})
    assert st == 404
    # bot-2 with bot-1's client key: must look like any unused key
    c, cc = await init_as(gw, key=key, token=t2, expect_ok=None)
    assert cc.data["state"] != "deleted", f"bot-2 reusing bot-1's key: {cc.raw}"
    assert cc.data["session_id"] != aa.data["session_id"]
    await c.close()
    await a.close()


async def test_isolation_owner_with_separator_in_name(auth_gw, secdir):
    key = f"k-{uuid.uuid4().hex[:8]}"
    a, aa = await init_as(auth_gw, key=f"echo|{key}", headers=hdr("alice"))
    tok = jwt_hs256(claims("alice|echo"))
    c, cc = await init_as(auth_gw, key=key, token=tok, expect_ok=None)
    await a.close()
    assert cc.data["state"] != "deleted", f"user 'alice|echo' with an unused key: {cc.raw}"
    assert cc.data["session_id"] != aa.data["session_id"]
    await c.close()


# --------------------------------------------------------------------------
# throttles
# --------------------------------------------------------------------------

@pytest.mark.timeout_s(60)
async def test_failed_handshakes_block_the_address(gws, secdir):
    gw = gws(auth_settings(secdir, **{"auth.max_failures": 10, "auth.block_ms": 3000}),
             args=["--keys", keys_file(secdir)])
    # a session established before the block keeps working through it
    keep, _ = await init_as(gw, headers=hdr("alice"), name="keep")
    # a connection upgraded before the block, with its credential still to come
    pending = await connect(gw, name="pending")
    for i in range(10):
        await expect_refused(gw, 401, query=f"?api_key={NOT_A_KEY}{i}")
    t0 = time.monotonic()
    # the 11th attempt, even with a valid key, meets 429
    await expect_refused(gw, 429, query=f"?api_key={NOT_A_KEY}")
    await expect_refused(gw, 429, headers=hdr("alice"))
    await expect_refused(gw, 429)
    st, hd, body = rest_events(gw, str(uuid.uuid4()), "alice")
    assert st == 429 and json.loads(body)["error"]["code"] == "RATE_LIMITED", (st, body)
    # init on the connection that was upgraded before: RATE_LIMITED, close 1000
    ack = await pending.init(data={"auth": {"token": KEYS["alice"]}}, expect_ok=False)
    assert ack.data["code"] == "RATE_LIMITED", ack.raw
    code, _, _ = await pending.expect_close(5)
    assert code == 1000
    # /health and the established session are unaffected
    gw.health()
    t = await keep.turn("during the block")
    assert t.done.data["success"] is True
    # after auth.block_ms the address may try again
    await asyncio.sleep(max(0, 3.0 - (time.monotonic() - t0)) + 0.5)
    await still_serving(gw, headers=hdr("bob"))
    await expect_refused(gw, 401, query=f"?api_key={NOT_A_KEY}")
    await keep.close()


async def test_missing_credentials_count_as_failures(gws, secdir):
    gw = gws(auth_settings(secdir, **{"auth.max_failures": 3, "auth.block_ms": 2000}),
             args=["--keys", keys_file(secdir)])
    for _ in range(3):
        await expect_unauthorized_init(gw)
    await expect_refused(gw, 429, headers=hdr("alice"))
    await asyncio.sleep(2.5)
    await still_serving(gw, headers=hdr("alice"))


async def test_throttle_settings_follow_a_reload(gws, secdir, tmp_path):
    conf = tmp_path / "hotplex.yaml"
    conf.write_text("auth:\n  max_failures: 1000\n")
    gw = gws(auth_settings(secdir), args=["--keys", keys_file(secdir), "--config", str(conf)],
             start=False)
    # auth_settings puts max_failures on the command line, which beats the
    # file: drop it so the file decides
    gw.settings.pop("auth.max_failures")
    gw.start()
    await still_serving(gw, query=alice_q())  # running, signal handlers in place
    conf.write_text("auth:\n  max_failures: 2\n  block_ms: 5000\n")
    gw.send_signal(signal.SIGHUP)
    await hp.wait_for(lambda: "reload: " in gw.log_text() and "differed" in gw.log_text(),
                      timeout=5, what="reload logged")
    for _ in range(2):
        await expect_refused(gw, 401, query=f"?api_key={NOT_A_KEY}")
    await expect_refused(gw, 429, query=f"?api_key={NOT_A_KEY}")


def test_block_ms_zero_starts(secdir):
    gw = hp.Gateway(auth_settings(secdir, **{"auth.block_ms": 0}), name="block0",
                    args=["--keys", keys_file(secdir)])
    try:
        gw.start()
        gw.health()
    finally:
        gw.finish(check=False)


@pytest.mark.timeout_s(60)
async def test_input_rate_limit(gws):
    gw = gws({"auth.input_rate": 2})
    c = await hp.connect_init(gw)
    n = 12
    for i in range(n):
        await c.send("input", {"content": f"burst {i}"})
    limited = done = 0
    deadline = time.monotonic() + 30
    while limited + done < n and time.monotonic() < deadline:
        ev = await c.recv(10)
        if ev.type == "error" and ev.data["code"] == "RATE_LIMITED":
            assert not ev.stream
            limited += 1
        elif ev.type == "done":
            done += 1
    assert limited >= 1, "no RATE_LIMITED for 12 inputs at once with auth.input_rate=2"
    assert done >= 2, "the burst allowance (2x the rate) must pass"
    assert limited + done == n, (limited, done)
    assert c.open, "a rate-limited connection must stay open"
    await asyncio.sleep(1.2)
    t = await c.turn("after the limit")
    assert t.message.data["content"] == "after the limit"
    # the limit is per user: the same user on another connection shares it,
    # but the gateway stays up and answers pings
    await c.assert_quiet(0.1)
    gw.health()
    await c.close()


# --------------------------------------------------------------------------
# origin
# --------------------------------------------------------------------------

async def test_allowed_origins(gws):
    gw = gws({"server.allowed_origins": "https://app.example.com"},
             args=["--set", "server.allowed_origins=http://localhost:3000"])
    for o in ("https://app.example.com", "http://localhost:3000"):
        c = await connect(gw, origin=o)
        await c.init()
        await c.close()
    for o in ("https://evil.example.com", "https://app.example.com.evil.com", "null",
              "http://app.example.com", "https://APP.EXAMPLE.COM:443"):
        await expect_refused(gw, 403, origin=o)
    # no Origin header: not a browser, nothing to check
    c = await connect(gw)
    await c.init()
    await c.close()
    await still_serving(gw)


# --------------------------------------------------------------------------
# dev mode is loopback only
# --------------------------------------------------------------------------

def test_dev_mode_refuses_non_loopback(tmp_path):
    r = subprocess.run([hp.bin_path(), "serve", "--listen", "0.0.0.0:0", "--data-dir",
                        str(tmp_path / "data")], capture_output=True, timeout=20,
                       env={k: v for k, v in os.environ.items()
                            if k not in ("HOTPLEX_JWT_SECRET",) and not k.startswith("HOTPLEX_AUTH")})
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert b"listening" not in r.stdout, r.stdout
    assert b"dev mode" in r.stderr, r.stderr


def test_port_in_use_refuses_to_start(gws, tmp_path):
    first = gws()
    second = gws({"server.listen": f"127.0.0.1:{first.port}"}, start=False)
    cmd = [a if a != "127.0.0.1:0" else f"127.0.0.1:{first.port}" for a in second.command()]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = p.communicate(timeout=8)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = None
    first.health()
    assert rc not in (None, 0), f"second gateway on a used port kept running; stdout {out!r}"
    assert b"listening on" not in out, out


# --------------------------------------------------------------------------
# hostile input (what tests/e2e/test_bad_input.py does not already cover)
# --------------------------------------------------------------------------

INPUT = b'{"version":"aep/v1","event":{"type":"input","data":{"content":"%s"}}}'

BAD_UTF8 = {
    "lone_continuation": b"\x80",
    "overlong_slash": b"\xc0\xaf",
    "overlong_nul": b"\xc0\x80",
    "utf16_surrogate": b"\xed\xa0\x80",
    "beyond_unicode": b"\xf4\x90\x80\x80",
    "truncated_at_end": b"abc\xe2\x82",
    "five_byte": b"\xf8\x88\x80\x80\x80",
}


@pytest.mark.parametrize("name", list(BAD_UTF8))
async def test_malformed_utf8_first_message(module_gw, name):
    c = await Client.connect(module_gw)
    init = json.dumps(hp.envelope("init", {"version": "aep/v1", "worker_type": "echo",
                                           "session_id": "KEY"})).encode()
    await c.send_frame(Opcode.TEXT, init.replace(b"KEY", BAD_UTF8[name]))
    try:
        ack = await c.expect_ack(ok=False, timeout=5)
        assert ack.data["code"] == "INVALID_MESSAGE", ack.raw
        code, _, _ = await c.expect_close(5)
        assert code == 1000
    except hp.Closed as e:
        assert e.code == 1007, f"malformed UTF-8 in init: close {e.code}"
    await still_serving(module_gw, text=f"after {name}")


@pytest.mark.parametrize("name", list(BAD_UTF8))
async def test_malformed_utf8_after_init(module_gw, name):
    c = await hp.connect_init(module_gw)
    await c.send_frame(Opcode.TEXT, INPUT % BAD_UTF8[name])
    try:
        await c.expect_error_reply("INVALID_MESSAGE", timeout=5)
        await c.assert_quiet(0.1)
        await c.close()
    except hp.Closed as e:
        assert e.code == 1007, f"malformed UTF-8: close {e.code}"
    await still_serving(module_gw)


async def test_utf8_split_across_fragments_is_fine(module_gw):
    """A multi-byte character cut by a fragment boundary is still valid text."""
    c = await hp.connect_init(module_gw)
    text = "snow \u2603 man \U0001F600 end"
    payload = INPUT % text.encode()
    cut = payload.index("\u2603".encode()) + 1
    cut2 = payload.index("\U0001F600".encode()) + 2
    await c.send_frame(Opcode.TEXT, payload[:cut], fin=False)
    await c.send_frame(Opcode.CONT, payload[cut:cut2], fin=False)
    await c.send_frame(Opcode.CONT, payload[cut2:], fin=True)
    t = await c.collect_turn()
    assert t.message.data["content"] == text
    await c.close()


async def test_deep_nesting_at_and_over_the_limit(module_gw):
    """JSON nesting: at the reader's depth (64) a message is fine, deeper is
    INVALID_MESSAGE; as the first message it is a failing init."""
    c = await hp.connect_init(module_gw)
    for depth, ok in ((60, True), (70, False), (3000, False)):
        nested = "[" * depth + "]" * depth
        raw = ('{"version":"aep/v1","event":{"type":"input","data":{"content":"deep %d",'
               '"metadata":{"x":%s}}}}' % (depth, nested))
        await c.send_raw(raw)
        if ok:
            t = await c.collect_turn()
            assert t.message.data["content"] == f"deep {depth}"
        else:
            await c.expect_error_reply("INVALID_MESSAGE")
    await c.close()
    c = await Client.connect(module_gw)
    await c.send_raw('{"version":"aep/v1","event":{"type":"init","data":{"version":"aep/v1",'
                     '"worker_type":"echo","config":{"metadata":' + "{\"a\":" * 200 + "1" +
                     "}" * 200 + "}}}}")
    ack = await c.expect_ack(ok=False)
    assert ack.data["code"] == "INVALID_MESSAGE", ack.raw
    await still_serving(module_gw)


async def test_huge_numbers_in_data(module_gw):
    c = await hp.connect_init(module_gw)
    big = "9" * 9000
    for num in (big, "-" + big, "1e99999", "-1e-99999", "0." + "0" * 10000 + "1"):
        raw = ('{"version":"aep/v1","event":{"type":"input","data":{"content":"num",'
               '"metadata":{"n":%s,"a":[%s,%s]}}}}' % (num, num, num))
        await c.send_raw(raw)
        t = await c.collect_turn()
        assert t.message.data["content"] == "num"
    # where a number matters it is range-checked
    for mt in (big, "1e999", "-1", "1.5", "100001"):
        c2 = await Client.connect(module_gw)
        await c2.send_raw('{"version":"aep/v1","event":{"type":"init","data":{"version":"aep/v1",'
                          '"worker_type":"echo","config":{"max_turns":%s}}}}' % mt)
        ack = await c2.expect_ack(ok=False)
        assert ack.data["code"] == "CONFIG_INVALID", (mt, ack.raw)
    await c.close()
    await still_serving(module_gw)


async def test_nul_bytes_in_identity_fields(module_gw):
    """An escaped NUL must never truncate a name: work_dir, worker_type, token."""
    for data, codes in (({"config": {"work_dir": "/tmp/ok\u0000/../../etc"}}, {"CONFIG_INVALID"}),
                        ({"worker_type": "echo\u0000x"}, {"INVALID_MESSAGE",
                                                          "WORKER_UNAVAILABLE"}),
                        ({"auth": {"token": "a\u0000b"}}, {"INVALID_MESSAGE"})):
        c = await Client.connect(module_gw)
        d = {"version": "aep/v1", "worker_type": "echo"}
        d.update(data)
        await c.send("init", d)
        ack = await c.expect_ack(ok=None)
        if "auth" in data and ack.data["state"] != "deleted":
            await c.close()  # dev mode ignores tokens: fine, as long as nothing broke
            continue
        assert ack.data["state"] == "deleted" and ack.data["code"] in codes, (data, ack.raw)
    assert not os.path.exists("/tmp/ok"), "a truncated work_dir was created"
    await still_serving(module_gw)


async def test_fragmented_with_interleaved_control_frames(module_gw):
    c = await hp.connect_init(module_gw)
    payload = INPUT % b"fragments with pings"
    parts = [payload[i:i + 7] for i in range(0, len(payload), 7)]
    await c.send_frame(Opcode.TEXT, parts[0], fin=False)
    for i, p in enumerate(parts[1:]):
        if i % 3 == 0:
            await c.send_frame(Opcode.PING, b"p%d" % i)  # allowed between fragments
        await c.send_frame(Opcode.CONT, p, fin=(i == len(parts) - 2))
    t = await c.collect_turn()
    assert t.message.data["content"] == "fragments with pings"
    await c.close()


async def test_many_tiny_fragments_over_the_limit(module_gw):
    """Thousands of tiny continuation frames adding up over the limit: 1009,
    and the memory is not kept per fragment."""
    c = await hp.connect_init(module_gw)
    chunk = b"x" * 16
    await c.send_frame(Opcode.TEXT, b'{"version":"aep/v1","pad":"', fin=False)
    try:
        for _ in range(40000 // len(chunk)):
            await c.send_frame(Opcode.CONT, chunk, fin=False)
        await c.send_frame(Opcode.CONT, b'"}', fin=True)
    except Exception:
        pass  # the server may close while we are still sending
    code, _, _ = await c.expect_close(10)
    assert code == 1009, code
    await still_serving(module_gw)


def raw_after_init(gw):
    ws = RawWS(gw.port)
    assert ws.status == 101, ws.status
    ack = ws.init()
    assert ack["event"]["data"]["state"] != "deleted", ack
    return ws


def drain_close(ws, timeout=10):
    """Close code (None: dropped without one) and the messages before it."""
    msgs, code = ws.messages_until_close(timeout)
    return code, msgs


async def test_bad_frames_on_a_raw_socket(module_gw):
    cases = {
        # a continuation with nothing to continue
        "stray_continuation": RawWS.frame(0x0, b'{"a":1}'),
        # a new data frame while a fragmented message is open
        "interleaved_data": RawWS.frame(0x1, b'{"a":', fin=False) + RawWS.frame(0x1, b"1}"),
        # reserved opcodes and bits
        "reserved_opcode": RawWS.frame(0x3, b"x"),
        "reserved_control_opcode": RawWS.frame(0xb, b"x"),
        "rsv_bits": bytes([0xf1]) + RawWS.frame(0x1, b"{}")[1:],
        # control frames must not be fragmented or longer than 125 bytes
        "fragmented_ping": RawWS.frame(0x9, b"x", fin=False),
        "long_ping": RawWS.frame(0x9, b"x" * 200),
    }
    for name, data in cases.items():
        ws = await asyncio.to_thread(raw_after_init, module_gw)
        try:
            await asyncio.to_thread(ws.send, data)
            code, msgs = await asyncio.to_thread(drain_close, ws, 10)
            assert code in (None, 1002, 1003, 1007, 1009), f"{name}: close {code}"
            assert not any(m["event"]["type"] == "done" for m in msgs), name
        finally:
            ws.close()
        await still_serving(module_gw, text=f"after {name}")


async def test_unmasked_client_frame(module_gw):
    """RFC 6455 5.1: a server must close on an unmasked client frame. lws 4.1
    accepts them (known limit, see docs/security.md); either way the frame is
    handled like any other and nothing breaks."""
    def run():
        ws = raw_after_init(module_gw)
        try:
            ws.send(RawWS.frame(0x1, json.dumps(hp.envelope("ping", {})).encode(), mask=False))
            while True:
                try:
                    op, payload = ws.recv_frame(5)
                except EOFError:
                    return "dropped"
                if op == 0x8:
                    return struct.unpack("!H", payload[:2])[0]
                if op == 0x1 and json.loads(payload)["event"]["type"] == "pong":
                    return "pong"
        finally:
            ws.close()
    r = await asyncio.to_thread(run)
    assert r in ("pong", 1002, "dropped"), r
    await still_serving(module_gw)


@pytest.mark.parametrize("before_init", [False, True])
async def test_frame_header_claiming_2_63_bytes(module_gw, before_init):
    for length in (2 ** 63, 2 ** 63 - 1, 2 ** 64 - 1):
        def attack():
            ws = RawWS(module_gw.port)
            assert ws.status == 101
            if not before_init:
                ws.init()
            mk = os.urandom(4)
            ws.send(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", length) + mk)
            try:  # then payload bytes, as if the frame really were that long
                for _ in range(8):
                    ws.send(b"A" * 8192)
            except OSError:
                pass
            try:
                return drain_close(ws, 10)
            finally:
                ws.close()
        t0 = time.monotonic()
        code, msgs = await asyncio.to_thread(attack)
        if length >> 63:  # RFC 6455: the most significant bit must be 0
            assert code in (None, 1002), f"length {length}: close {code}"
        else:  # a legal length: the message limit bites once 32 KiB arrived
            assert code == 1009, f"length {length}: close {code}"
        assert time.monotonic() - t0 < 10
        await still_serving(module_gw, text=f"after {length}")


@pytest.mark.timeout_s(60)
async def test_slow_loris_upgrade(module_gw):
    """Headers at one byte per second: dropped by the 10 s upgrade bound while
    the gateway keeps serving everyone else."""
    req = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{module_gw.port}\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\nX-Slow: " + "z" * 200 + "\r\n\r\n").encode()
    result = {}

    def loris():
        s = socket.create_connection(("127.0.0.1", module_gw.port), timeout=5)
        t0 = time.monotonic()
        try:
            for i in range(len(req)):
                if time.monotonic() - t0 > 25:
                    result["dropped_after"] = None
                    return
                try:
                    s.sendall(req[i:i + 1])
                except OSError:
                    result["dropped_after"] = time.monotonic() - t0
                    return
                r, _, _ = select.select([s], [], [], 1.0)
                if r:
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        result["dropped_after"] = time.monotonic() - t0
                        return
                    result["got"] = result.get("got", b"") + data
        finally:
            s.close()

    th = threading.Thread(target=loris, daemon=True)
    th.start()
    # meanwhile: the gateway answers and runs turns
    for i in range(4):
        await still_serving(module_gw, text=f"during slow loris {i}")
        await asyncio.sleep(1.5)
    await asyncio.to_thread(th.join, 30)
    took = result.get("dropped_after")
    assert took is not None, f"slow-loris connection not dropped within 25 s: {result}"
    assert took <= 16, f"slow-loris connection dropped only after {took:.1f}s"
    assert b"101" not in result.get("got", b""), "the slow upgrade completed"
    await still_serving(module_gw)


@pytest.mark.timeout_s(120)
async def test_thousand_connections_that_never_init(gws):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4500
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    gw = gws({"server.init_timeout_ms": 5000})  # started with the raised limit
    base = gw.health()["connections"]
    n = 1000
    t0 = time.monotonic()
    cs = []
    for i in range(0, n, 100):
        cs += await asyncio.gather(*(Client.connect(gw, name=f"idle{j}", timeout=30)
                                     for j in range(i, i + 100)))
    connected = time.monotonic() - t0
    h = gw.health()
    assert h["connections"] >= base + n - 5 or connected > 5, h
    # another client works while they all sit there
    active = await hp.connect_init(gw, name="active")
    t = await active.turn("working among the idle")
    assert t.done.data["success"] is True
    results = await asyncio.gather(*(c.expect_close(timeout=40) for c in cs))
    took = time.monotonic() - t0
    for c, (code, reason, msgs) in zip(cs, results):
        assert [m.type for m in msgs] == ["init_ack"], (c.name, msgs)
        assert msgs[0].data["code"] == "PROTOCOL_VIOLATION"
        assert code == 1000, (c.name, code)
    assert took < connected + 5 + 15, f"{n} idle connections closed after {took:.1f}s"
    await hp.wait_for(lambda: gw.health()["connections"] == base + 1, timeout=10,
                      what="/health connections back to the active client only")
    t = await active.turn("still working")
    assert t.done.data["success"] is True
    await active.close()
    await hp.wait_for(lambda: gw.health()["connections"] == base, timeout=10,
                      what="/health connections back to the base")


# --------------------------------------------------------------------------
# work_dir and cd policies
# --------------------------------------------------------------------------

@pytest.fixture
def tree():
    d = os.path.realpath(tempfile.mkdtemp(prefix="hotplex-e2e-wd-"))
    base = os.path.join(d, "base")
    outside = os.path.join(d, "outside")
    os.makedirs(os.path.join(base, "ok"))
    os.makedirs(outside)
    os.symlink("/etc", os.path.join(base, "to_etc"))
    os.symlink(outside, os.path.join(base, "to_outside"))
    os.symlink("/", os.path.join(base, "to_root"))
    os.symlink("../outside", os.path.join(base, "rel_outside"))
    yield {"root": d, "base": base, "outside": outside}
    shutil.rmtree(d, ignore_errors=True)


def created_under_system(name):
    return [p for p in (f"/etc/{name}", f"/{name}", f"/usr/{name}", f"/proc/{name}")
            if os.path.lexists(p)]


SYSTEM_DIRS = ["/", "/etc", "/bin", "/usr", "/usr/local/x", "/proc/self", "/sys", "/dev",
               "/boot", "/root", "/var", "/home", "/tmp", "/tmp/", "/tmp/.", "/lib", "/run/x",
               "//etc", "/etc/./", "/tmp/../etc", "/tmp/a/../../etc/hp-e2e-x"]


async def test_work_dir_policy_without_bases(gws, tree):
    gw = gws({"worker.default_work_dir": os.path.join(tree["base"], "ok")})
    tag = f"hp-e2e-{uuid.uuid4().hex[:8]}"
    bad = SYSTEM_DIRS + [
        "relative/dir", "./x", "../../etc", "",
        os.path.join(tree["base"], "to_etc"),
        os.path.join(tree["base"], "to_etc", tag),
        os.path.join(tree["base"], "to_root"),
        os.path.join(tree["base"], "to_root", "etc", tag),
        os.path.join(tree["base"], "to_root", "usr", tag),
        os.path.join(tree["base"], "to_root", "tmp"),
        os.path.join(tree["base"], "ok", "..", "..", "..", "..", "..", "..", "etc", tag),
        os.path.join(tree["base"], "nope", "..", "to_etc", tag),
        "/etc/" + tag, "/usr/" + tag, "/proc/" + tag,
        "/" + tag,  # a new top-level directory is never created
    ]
    for wd in bad:
        if wd == "":
            continue  # empty means the default
        c = await Client.connect(gw)
        ack = await c.init(data={"config": {"work_dir": wd}}, expect_ok=False)
        assert ack.data["code"] == "CONFIG_INVALID", (wd, ack.raw)
        code, _, _ = await c.expect_close(5)
        assert code == 1000
    assert not created_under_system(tag), created_under_system(tag)
    assert not os.path.exists("/" + tag)
    # allowed: a plain directory, one created on demand, a symlink to a plain one
    for wd in (os.path.join(tree["base"], "ok"), os.path.join(tree["base"], "new", "deeper"),
               os.path.join(tree["base"], "to_outside", "sub"),
               os.path.join(tree["base"], "rel_outside")):
        c = await Client.connect(gw)
        await c.init(data={"config": {"work_dir": wd}})
        await hp.drain_handshake(c)
        t = await c.turn("allowed dir")
        assert t.done.data["success"] is True
        await c.close()
    await still_serving(gw)


async def test_work_dir_policy_with_bases(gws, tree):
    gw = gws({"worker.default_work_dir": os.path.join(tree["base"], "ok"),
              "worker.work_bases": tree["base"]})
    tag = f"hp-e2e-{uuid.uuid4().hex[:8]}"
    bad = [
        tree["outside"],
        os.path.join(tree["outside"], tag),
        os.path.join(tree["base"], "to_outside"),              # symlink leaving the base
        os.path.join(tree["base"], "to_outside", tag),
        os.path.join(tree["base"], "rel_outside", tag),
        os.path.join(tree["base"], "..", "outside", tag),
        os.path.join(tree["base"], "ok", "..", "..", "outside"),
        tree["base"] + "-sibling",                              # prefix, not a subdirectory
        os.path.join(tree["base"], "to_etc"),
        "/etc", "/tmp",
    ]
    for wd in bad:
        c = await Client.connect(gw)
        ack = await c.init(data={"config": {"work_dir": wd}}, expect_ok=False)
        assert ack.data["code"] == "CONFIG_INVALID", (wd, ack.raw)
    assert not os.path.exists(os.path.join(tree["outside"], tag)), "created outside the base"
    assert not os.path.exists(tree["base"] + "-sibling")
    # inside the base: fine
    c = await Client.connect(gw)
    await c.init(data={"config": {"work_dir": os.path.join(tree["base"], "inside", "x")}})
    await hp.drain_handshake(c)
    # cd: the same checks; a refused cd is an error reply, the connection stays
    for path in bad + ["relative", "/", os.path.join(tree["base"], "to_root", "etc")]:
        await c.send("control", {"action": "cd", "details": {"path": path}})
        err = await c.expect_error_reply("CONFIG_INVALID")
        assert isinstance(err.data["message"], str)
    for details in ({}, {"path": 5}, {"path": ""}, {"path": "/x\u0000y"}):
        await c.send("control", {"action": "cd", "details": details})
        ev = await c.recv()
        assert ev.type == "error" and ev.data["code"] in ("INVALID_MESSAGE", "CONFIG_INVALID"), ev
    assert not os.path.exists(os.path.join(tree["outside"], tag))
    pong = await c.assert_quiet(0.1)
    assert pong.data["state"] in ("running", "idle")
    # an allowed cd works and the session keeps running turns
    await c.send("control", {"action": "cd", "details": {"path": os.path.join(tree["base"],
                                                                             "ok")}})
    t = await c.turn("after cd")
    assert t.message.data["content"] == "after cd"
    await c.close()
    await still_serving(gw)


# --------------------------------------------------------------------------
# HTTP header injection
# --------------------------------------------------------------------------

INJECTIONS = [
    b"GET /health%0d%0aX-Evil:%201 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health?x=%0d%0aX-Evil:%201 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/sessions/%0d%0aX-Evil:1/events HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/sessions/x/events?after=1%0d%0aX-Evil:1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /ws?api_key=%0d%0aX-Evil:1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n",
    b"GET /health\r\nX-Evil: 1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Api-Key: a\rX-Evil: 1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Api-Key: a\nX-Evil: 1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n X-Evil: 1\r\n\r\n",
    b"GET /api/sessions/x/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\rX-Evil: 1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Origin: http://a\r\nX-Evil: 1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n",
    b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("i", range(len(INJECTIONS)))
async def test_header_injection(auth_gw, i):
    for gw in (auth_gw,):
        resp = await asyncio.to_thread(raw_request, gw.port, INJECTIONS[i], 2)
        status, headers, body = parse_http(resp)
        names = [k for k, _ in headers]
        assert b"x-evil" not in names, f"injected header in the response: {resp[:600]!r}"
        assert not re.search(rb"\r\nx-evil", resp.split(b"\r\n\r\n")[0], re.I), resp[:600]
        assert status is None or 100 <= status < 600
    await still_serving(auth_gw, query=alice_q())


# --------------------------------------------------------------------------
# last: nothing secret ever reached the log of the module's auth gateway
# --------------------------------------------------------------------------

async def test_no_credential_in_logs(auth_gw):
    """Runs after every test above that used auth_gw: no API key, no JWT and
    not the JWT secret appear in its log."""
    text = auth_gw.log_text()
    assert "init ok" in text, "the module gateway served nothing?"
    for k in list(KEYS.values()) + [ALICE_KEY2, NOT_A_KEY, SECRET]:
        assert k not in text, f"a credential appears in the log: {k[:6]}..."
    assert not re.search(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ", text), "a JWT appears in the log"


# --------------------------------------------------------------------------
# Allow-lists: models, tools and agent executables (worker.allowed_*).

async def test_model_and_tool_allow_lists(gws, tree):
    gw = gws({"worker.default_work_dir": os.path.join(tree["base"], "ok"),
              "worker.allowed_models": "model-ok", "worker.allowed_tools": "Read"})
    refused = [{"model": "model-other"}, {"allowed_tools": ["Read", "Bash"]},
               {"allowed_tools": "Bash"}]
    for cfg in refused:
        c = await Client.connect(gw)
        ack = await c.init(data={"config": cfg}, expect_ok=False)
        assert ack.data["code"] == "CONFIG_INVALID", (cfg, ack.raw)
        assert "worker.allowed_" in ack.data["error"], ack.raw
        code, _, _ = await c.expect_close(5)
        assert code == 1000
    # within the lists (and with none asked for) the session works
    for cfg in ({"model": "model-ok", "allowed_tools": ["Read"]}, {}):
        c = await Client.connect(gw)
        await c.init(data={"config": cfg})
        await hp.drain_handshake(c)
        t = await c.turn("allowed options")
        assert t.done.data["success"] is True
        await c.close()
    await still_serving(gw)


async def test_agent_executable_allow_list(gws, tree):
    gw = gws({"worker.default_work_dir": os.path.join(tree["base"], "ok"),
              "worker.claude_bin": "/bin/true", "worker.allowed_bins": "/bin/false"})
    c = await Client.connect(gw)
    ack = await c.init(worker_type="claude_code", expect_ok=False)
    assert ack.data["code"] == "WORKER_UNAVAILABLE", ack.raw
    assert "worker.allowed_bins" in ack.data["error"], ack.raw
    await c.expect_close(5)
    await still_serving(gw)


async def test_failed_handshakes_throttle_the_session_they_name(gws, secdir):
    """Failed inits naming one session key count against that key too: after
    auth.max_failures of them (from different loopback addresses, so no single
    address is blocked) the key is refused with RATE_LIMITED even with valid
    credentials from a fresh address, while other keys keep working."""
    gw = gws(auth_settings(secdir, **{"auth.max_failures": 3, "auth.block_ms": 60000}),
             args=["--keys", keys_file(secdir)])
    for i in range(3):
        c = await Client.connect(gw, local_addr=(f"127.0.0.{10 + i}", 0))
        ack = await c.init(key="victim", data={"auth": {"token": NOT_A_KEY}}, expect_ok=False)
        assert ack.data["code"] == "UNAUTHORIZED", ack.raw
        await c.expect_close(5)
    c = await Client.connect(gw, local_addr=("127.0.0.20", 0))
    ack = await c.init(key="victim", data={"auth": {"token": KEYS["alice"]}}, expect_ok=False)
    assert ack.data["code"] == "RATE_LIMITED", ack.raw
    await c.expect_close(5)
    c = await Client.connect(gw, local_addr=("127.0.0.21", 0))
    await c.init(key="another-key", data={"auth": {"token": KEYS["alice"]}})
    await hp.drain_handshake(c)
    t = await c.turn("still serving")
    assert t.done.data["success"] is True
    await c.close()
