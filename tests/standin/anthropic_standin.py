#!/usr/bin/python3
"""A local stand-in of the Anthropic Messages API, for driving the real
Claude Code CLI offline in tests. Standard library only.

Usage:
    /usr/bin/python3 tests/standin/anthropic_standin.py --port 0 [--log FILE]
        [--host 127.0.0.1] [--sse chunked|close] [--dump DIR]

Prints "listening on 127.0.0.1:PORT" as its first stdout line and serves until
killed (SIGTERM / SIGINT).

Endpoints:
    HEAD /, GET /                   200
    POST /v1/messages[?...]         streaming (SSE) or one JSON message
    POST /v1/messages/count_tokens  {"input_tokens": N}
    anything else                   404, Anthropic-shaped error JSON

Behaviour is picked from words in the text of the LAST user message (see
README.md beside this file): default echo, LONGTEXT N, SLOWTEXT N MS,
USE_BASH <command>, REMEMBER <word> / RECALL, THINK, FAIL500; a tool_result
in the last user message gets "Tool said: <result text>".
"""

import argparse
import itertools
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DEFAULT_MODEL = "claude-standin"
MAX_WORDS = 200000

_ids = itertools.count(1)
_log_lock = threading.Lock()
_log_file = None
_dump_dir = None
_sse_mode = "chunked"

DISCONNECT_ERRORS = (BrokenPipeError, ConnectionResetError,
                     ConnectionAbortedError, socket.timeout, TimeoutError)


def log(msg):
    if _log_file is None:
        return
    line = "%s %s\n" % (time.strftime("%H:%M:%S"), msg)
    with _log_lock:
        _log_file.write(line)
        _log_file.flush()


def new_id(prefix):
    return "%s_standin%04d%s" % (prefix, next(_ids), uuid.uuid4().hex[:12])


# --------------------------------------------------------------------------
# Reading the request


SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)


def block_text(block):
    """Text of one content block (text blocks only)."""
    if isinstance(block, str):
        return block
    if isinstance(block, dict) and block.get("type") == "text":
        t = block.get("text")
        return t if isinstance(t, str) else ""
    return ""


def tool_result_text(block):
    c = block.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "\n".join(block_text(b) for b in c if block_text(b))
    return ""


def message_text(msg):
    """Concatenated text of a message's text blocks, without the CLI's
    <system-reminder> context blocks."""
    content = msg.get("content")
    if isinstance(content, str):
        parts = [content]
    elif isinstance(content, list):
        parts = [block_text(b) for b in content]
    else:
        parts = []
    out = []
    for p in parts:
        p = SYSTEM_REMINDER.sub("", p).strip()
        if p:
            out.append(p)
    return "\n".join(out)


def last_user(messages):
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return m
    return None


def tool_results(msg):
    content = msg.get("content") if msg else None
    if not isinstance(content, list):
        return []
    return [b for b in content
            if isinstance(b, dict) and b.get("type") == "tool_result"]


# --------------------------------------------------------------------------
# Choosing the reply

def words_of(text):
    """Split text into chunks of one word plus its trailing spacing."""
    chunks = re.findall(r"\s*\S+\s*", text)
    return chunks or ([text] if text else [])


def numbered_words(n):
    n = max(0, min(n, MAX_WORDS))
    return " ".join("word%d" % i for i in range(1, n + 1))


def plan_reply(body):
    """Return a dict describing the reply:
       {"status": 200|500, "blocks": [...], "stop_reason": ..., "delay": s,
        "scenario": name}
    blocks are {"type": "thinking"|"text", "text": ...} or
    {"type": "tool_use", "name": ..., "input": {...}}."""
    messages = body.get("messages") or []
    user = last_user(messages)
    text = message_text(user) if user else ""
    results = tool_results(user)
    plan = {"status": 200, "blocks": [], "stop_reason": "end_turn",
            "delay": 0.0, "scenario": "echo"}

    if results:
        said = "\n".join(tool_result_text(b) for b in results)
        plan["scenario"] = "tool_result"
        plan["blocks"].append({"type": "text", "text": "Tool said: " + said})
        return plan

    if "FAIL500" in text:
        # FAIL500_RETRY: a retryable 500 (the CLI retries with back-off, up
        # to CLAUDE_CODE_MAX_RETRIES, default 10); plain FAIL500 sends
        # x-should-retry: false so the CLI gives up at once.
        plan["scenario"] = "fail500"
        plan["status"] = 500
        plan["retry"] = "FAIL500_RETRY" in text
        return plan

    if "THINK" in text:
        plan["blocks"].append({
            "type": "thinking",
            "text": "Let me think about this. The user wants an answer."})

    m = re.search(r"USE_BASH[ \t]+([^\n]*)", text)
    if m and m.group(1).strip():
        plan["scenario"] = "use_bash"
        plan["stop_reason"] = "tool_use"
        plan["blocks"].append({
            "type": "tool_use", "name": "Bash",
            "input": {"command": m.group(1).strip(),
                      "description": "run it"}})
        return plan

    m = re.search(r"SLOWTEXT\s+(\d+)\s+(\d+)", text)
    if m:
        plan["scenario"] = "slowtext"
        plan["delay"] = int(m.group(2)) / 1000.0
        plan["blocks"].append({"type": "text",
                               "text": numbered_words(int(m.group(1)))})
        return plan

    m = re.search(r"LONGTEXT\s+(\d+)", text)
    if m:
        plan["scenario"] = "longtext"
        plan["blocks"].append({"type": "text",
                               "text": numbered_words(int(m.group(1)))})
        return plan

    if re.search(r"\bRECALL\b", text):
        plan["scenario"] = "recall"
        word = None
        for msg in messages:
            if not isinstance(msg, dict) or msg.get("role") != "user":
                continue
            for w in re.findall(r"REMEMBER\s+(\S+)", message_text(msg)):
                word = w  # the latest one wins
        plan["blocks"].append({"type": "text",
                               "text": "Recalled: %s" % (word or "nothing")})
        return plan

    if plan["blocks"]:
        plan["scenario"] = "think"
    plan["blocks"].append({"type": "text", "text": "Echo: " + text})
    return plan


def count_tokens(obj):
    try:
        n = len(json.dumps(obj, ensure_ascii=False))
    except (TypeError, ValueError):
        n = 0
    return max(1, n // 4)


def usage(input_tokens, output_tokens):
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def complete_block(b):
    if b["type"] == "thinking":
        return {"type": "thinking", "thinking": b["text"],
                "signature": "standin-signature"}
    if b["type"] == "text":
        return {"type": "text", "text": b["text"]}
    return {"type": "tool_use", "id": b["id"], "name": b["name"],
            "input": b["input"]}


# --------------------------------------------------------------------------
# HTTP


class ClientGone(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "anthropic-standin/1.0"

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):  # silence default stderr logging
        pass

    # -- helpers --------------------------------------------------------

    def send_error(self, code, message=None, explain=None):
        """Protocol-level errors (bad request line, unknown method, ...) as
        Anthropic-shaped JSON instead of http.server's HTML page."""
        etype = {404: "not_found_error", 413: "request_too_large"}.get(
            code, "invalid_request_error")
        data = json.dumps({"type": "error", "error": {
            "type": etype, "message": message or "HTTP %d" % code}}).encode()
        log("protocol error %d: %s" % (code, message))
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204,
                                                                       304):
                self.wfile.write(data)
        except DISCONNECT_ERRORS:
            pass
        self.close_connection = True

    def send_json(self, status, obj, extra_headers=None, head=False):
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", new_id("req"))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def send_error_json(self, status, etype, message, extra_headers=None):
        self.send_json(status, {"type": "error",
                                "error": {"type": etype, "message": message}},
                       extra_headers)

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    # -- verbs ----------------------------------------------------------

    ROOT_BODY = {"ok": True, "service": "anthropic-standin"}

    def do_HEAD(self):
        path = urlsplit(self.path).path
        log("HEAD %s" % self.path)
        if path == "/":
            self.send_json(200, self.ROOT_BODY, head=True)
        else:
            self.send_json(404, self.not_found_body(), head=True)

    def do_GET(self):
        path = urlsplit(self.path).path
        log("GET %s" % self.path)
        if path == "/":
            self.send_json(200, self.ROOT_BODY)
        else:
            self.send_json(404, self.not_found_body())

    def not_found_body(self):
        return {"type": "error",
                "error": {"type": "not_found_error",
                          "message": "Not found: %s %s"
                          % (self.command, self.path)}}

    def other(self):
        body = self.read_body()
        log("%s %s (%d bytes) -> 404" % (self.command, self.path, len(body)))
        self.send_json(404, self.not_found_body())

    def __getattr__(self, name):
        # Any other method (PUT, DELETE, FOO, ...) gets the JSON 404.
        if name.startswith("do_"):
            return self.other
        raise AttributeError(name)

    def do_POST(self):
        path = urlsplit(self.path).path.rstrip("/")
        raw = self.read_body()
        if path not in ("/v1/messages", "/v1/messages/count_tokens"):
            log("POST %s (%d bytes) -> 404" % (self.path, len(raw)))
            self.send_json(404, self.not_found_body())
            return
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            log("POST %s invalid body: %s -> 400" % (self.path, e))
            self.send_error_json(400, "invalid_request_error",
                                 "invalid JSON body: %s" % e)
            return
        if _dump_dir:
            name = "%s-%s.json" % (time.strftime("%H%M%S"), new_id("body"))
            with open(os.path.join(_dump_dir, name), "w") as f:
                json.dump({"path": self.path,
                           "headers": dict(self.headers.items()),
                           "body": body}, f, indent=1)
        if path == "/v1/messages/count_tokens":
            n = count_tokens(body.get("messages")) + count_tokens(
                body.get("tools") or []) + count_tokens(body.get("system") or "")
            log("POST %s count_tokens -> %d" % (self.path, n))
            self.send_json(200, {"input_tokens": n})
            return
        self.messages(body)

    # -- /v1/messages -----------------------------------------------------

    def messages(self, body):
        model = body.get("model") or DEFAULT_MODEL
        stream = bool(body.get("stream"))
        plan = plan_reply(body)
        user = last_user(body.get("messages"))
        summary = (message_text(user) if user else "")[:60].replace("\n", " ")
        log("POST %s model=%s stream=%s msgs=%d tools=%d scenario=%s "
            "user=%r" % (self.path, model, stream,
                         len(body.get("messages") or []),
                         len(body.get("tools") or []), plan["scenario"],
                         summary))
        if plan["status"] != 200:
            self.send_error_json(
                plan["status"], "api_error",
                "Internal server error (stand-in FAIL500)",
                {} if plan.get("retry") else {"x-should-retry": "false"})
            return
        for b in plan["blocks"]:
            if b["type"] == "tool_use":
                b["id"] = new_id("toolu")
        in_tok = count_tokens(body.get("messages"))
        msg_id = new_id("msg")
        if not stream:
            # Side requests (titles etc.): text only, never a tool call.
            content = [complete_block(b) for b in plan["blocks"]
                       if b["type"] == "text"]
            if not content:
                content = [{"type": "text", "text": "Echo: " + (
                    message_text(user) if user else "")}]
            out_tok = max(1, sum(count_tokens(c) for c in content))
            self.send_json(200, {
                "id": msg_id, "type": "message", "role": "assistant",
                "model": model, "content": content,
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": usage(in_tok, out_tok)})
            return
        try:
            self.stream_reply(model, msg_id, in_tok, plan)
        except (ClientGone,) + DISCONNECT_ERRORS:
            log("client disconnected during stream of %s" % msg_id)
            self.close_connection = True

    def write_raw(self, data):
        try:
            if _sse_mode == "chunked":
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
            self.wfile.flush()
        except DISCONNECT_ERRORS as e:
            raise ClientGone() from e

    def event(self, name, obj):
        data = "event: %s\ndata: %s\n\n" % (name, json.dumps(obj))
        self.write_raw(data.encode("utf-8"))

    def stream_reply(self, model, msg_id, in_tok, plan):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", new_id("req"))
        if _sse_mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        delay = plan["delay"]

        self.event("message_start", {
            "type": "message_start",
            "message": {"id": msg_id, "type": "message", "role": "assistant",
                        "model": model, "content": [], "stop_reason": None,
                        "stop_sequence": None, "usage": usage(in_tok, 1)}})
        self.event("ping", {"type": "ping"})
        out_tok = 0
        for idx, b in enumerate(plan["blocks"]):
            if b["type"] == "thinking":
                self.event("content_block_start", {
                    "type": "content_block_start", "index": idx,
                    "content_block": {"type": "thinking", "thinking": "",
                                      "signature": ""}})
                for w in words_of(b["text"]):
                    out_tok += 1
                    self.event("content_block_delta", {
                        "type": "content_block_delta", "index": idx,
                        "delta": {"type": "thinking_delta", "thinking": w}})
                self.event("content_block_delta", {
                    "type": "content_block_delta", "index": idx,
                    "delta": {"type": "signature_delta",
                              "signature": "standin-signature"}})
            elif b["type"] == "text":
                self.event("content_block_start", {
                    "type": "content_block_start", "index": idx,
                    "content_block": {"type": "text", "text": ""}})
                for i, w in enumerate(words_of(b["text"])):
                    if delay and i:
                        time.sleep(delay)
                    out_tok += 1
                    self.event("content_block_delta", {
                        "type": "content_block_delta", "index": idx,
                        "delta": {"type": "text_delta", "text": w}})
            else:
                self.event("content_block_start", {
                    "type": "content_block_start", "index": idx,
                    "content_block": {"type": "tool_use", "id": b["id"],
                                      "name": b["name"], "input": {}}})
                js = json.dumps(b["input"])
                step = max(1, len(js) // 3 + 1)
                for i in range(0, len(js), step):
                    out_tok += 1
                    self.event("content_block_delta", {
                        "type": "content_block_delta", "index": idx,
                        "delta": {"type": "input_json_delta",
                                  "partial_json": js[i:i + step]}})
            self.event("content_block_stop",
                       {"type": "content_block_stop", "index": idx})
        self.event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": plan["stop_reason"],
                      "stop_sequence": None},
            "usage": {"input_tokens": in_tok,
                      "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0,
                      "output_tokens": max(1, out_tok)}})
        self.event("message_stop", {"type": "message_stop"})
        if _sse_mode == "chunked":
            self.write_raw(b"")  # zero-length chunk ends the body
        log("stream of %s done (%s, %d deltas)"
            % (msg_id, plan["stop_reason"], out_tok))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, DISCONNECT_ERRORS + (ClientGone,)):
            log("connection from %s:%s dropped" % client_address[:2])
            return
        super().handle_error(request, client_address)


def main(argv=None):
    global _log_file, _dump_dir, _sse_mode
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", help="append a line per request to this file")
    ap.add_argument("--dump", help="save every POST body as JSON in this dir")
    ap.add_argument("--sse", choices=("chunked", "close"), default="chunked",
                    help="SSE framing: chunked keep-alive (default) or "
                         "Connection: close")
    args = ap.parse_args(argv)
    if args.log:
        _log_file = open(args.log, "a", encoding="utf-8")
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        _dump_dir = args.dump
    _sse_mode = args.sse

    srv = Server((args.host, args.port), Handler)
    host, port = srv.server_address[:2]
    print("listening on %s:%d" % (host, port), flush=True)
    log("listening on %s:%d (sse=%s)" % (host, port, _sse_mode))

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
