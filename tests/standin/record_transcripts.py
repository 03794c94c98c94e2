#!/usr/bin/python3
"""Drive the real Claude Code CLI against the Anthropic stand-in and record
raw transcripts as fixtures. Standard library only.

Usage:
    /usr/bin/python3 tests/standin/record_transcripts.py [--claude PATH]
        [--out DIR] [--only NAME[,NAME...]] [--keep]

For each scenario it writes, under --out (default tests/fixtures/claude):
    <scenario>.jsonl         every line the CLI printed on stdout, verbatim
    <scenario>.stdin.jsonl   every line the driver wrote to the CLI's stdin
    <scenario>.stderr.txt    what the CLI printed on stderr (only if any)
and prints one PASS/FAIL line per scenario; exits non-zero if any failed.
The CLI binary defaults to .deps/claude/node_modules/.bin/claude
(install it with scripts/install-claude.sh).
"""

import argparse
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STANDIN = os.path.join(HERE, "anthropic_standin.py")
DEFAULT_CLAUDE = os.path.join(ROOT, ".deps", "claude", "node_modules",
                              ".bin", "claude")
DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "claude")
WAIT = 60.0  # seconds for any single expected line

BASE_ARGS = ["-p", "--input-format", "stream-json", "--output-format",
             "stream-json", "--verbose", "--include-partial-messages",
             "--permission-prompt-tool", "stdio"]


class ScenarioError(Exception):
    pass


def user_line(text):
    return {"type": "user", "message": {"role": "user", "content": text}}


def session_uuid(name):
    # Stable per scenario so re-recording gives small diffs.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "hotplex-fixture:" + name))


class Cli:
    """One running CLI process with recorded stdin/stdout/stderr."""

    def __init__(self, claude, args, cwd, env, name):
        self.name = name
        self.stdout_raw = []   # bytes, verbatim lines
        self.stdin_raw = []    # bytes, verbatim lines
        self.stderr_raw = b""
        self.lines = queue.Queue()
        self.seen = []         # parsed (or None) stdout lines, in order
        self.t0 = time.monotonic()
        self.first_line_at = None
        self.proc = subprocess.Popen(
            [claude] + args, cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    def _read_out(self):
        for raw in iter(self.proc.stdout.readline, b""):
            if self.first_line_at is None:
                self.first_line_at = time.monotonic() - self.t0
            self.stdout_raw.append(raw)
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            self.lines.put(obj)
        self.lines.put(EOFError)

    def _read_err(self):
        self.stderr_raw = self.proc.stderr.read()

    def send(self, obj):
        data = (json.dumps(obj) + "\n").encode("utf-8")
        self.stdin_raw.append(data)
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def wait_for(self, pred, what, timeout=WAIT):
        """Consume lines until pred(line) is true; return that line."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScenarioError("timeout waiting for " + what)
            try:
                obj = self.lines.get(timeout=left)
            except queue.Empty:
                raise ScenarioError("timeout waiting for " + what)
            if obj is EOFError:
                self.lines.put(EOFError)
                raise ScenarioError("CLI exited (rc=%s) while waiting for %s"
                                    % (self.proc.poll(), what))
            self.seen.append(obj)
            if obj is not None and pred(obj):
                return obj

    def wait_result(self):
        return self.wait_for(lambda o: o.get("type") == "result", "result")

    def finish(self, timeout=20.0):
        self.close_stdin()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        self._out.join(5)
        self._err.join(5)
        # drain remaining parsed lines into seen
        while True:
            try:
                obj = self.lines.get_nowait()
            except queue.Empty:
                break
            if obj is not EOFError:
                self.seen.append(obj)
        self.rc = rc
        return rc

    def save(self, out_dir, name):
        with open(os.path.join(out_dir, name + ".jsonl"), "wb") as f:
            f.writelines(self.stdout_raw)
        with open(os.path.join(out_dir, name + ".stdin.jsonl"), "wb") as f:
            f.writelines(self.stdin_raw)
        err_path = os.path.join(out_dir, name + ".stderr.txt")
        if self.stderr_raw:
            with open(err_path, "wb") as f:
                f.write(self.stderr_raw)
        elif os.path.exists(err_path):
            os.unlink(err_path)


def expect(cond, msg):
    if not cond:
        raise ScenarioError(msg)


def text_deltas(lines):
    return [o for o in lines if o and o.get("type") == "stream_event"
            and o["event"].get("type") == "content_block_delta"
            and o["event"]["delta"].get("type") == "text_delta"]


def line_types(lines):
    out = []
    for o in lines:
        if o is None:
            out.append("<non-json>")
            continue
        t = o.get("type")
        if t == "stream_event":
            ev = o.get("event", {})
            s = ev.get("type")
            if s == "content_block_delta":
                s += ":" + ev.get("delta", {}).get("type", "?")
            elif s == "content_block_start":
                s += ":" + ev.get("content_block", {}).get("type", "?")
            out.append("stream_event/" + s)
        elif t == "system":
            out.append("system/" + str(o.get("subtype")))
        elif t == "result":
            out.append("result/" + str(o.get("subtype")))
        elif t == "control_request":
            out.append("control_request/" + str(
                o.get("request", {}).get("subtype")))
        elif t == "control_response":
            out.append("control_response/" + str(
                o.get("response", {}).get("subtype")))
        elif t in ("assistant", "user"):
            c = o.get("message", {}).get("content")
            if isinstance(c, list):
                kinds = ",".join(b.get("type", "?") for b in c
                                 if isinstance(b, dict))
            else:
                kinds = "str"
            out.append("%s[%s]" % (t, kinds))
        else:
            out.append(str(t))
    return out


def compress(types):
    """Collapse runs of identical entries: a, b x5, c."""
    out = []
    for t in types:
        if out and out[-1][0] == t:
            out[-1][1] += 1
        else:
            out.append([t, 1])
    return ["%s x%d" % (t, n) if n > 1 else t for t, n in out]


# --------------------------------------------------------------------------
# Scenarios. Each gets a Runner and returns a list of (name, Cli) to save.

class Runner:
    def __init__(self, claude, env, base, name):
        self.claude = claude
        self.env = env
        self.name = name
        self.dir = os.path.join(base, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.home = os.path.join(self.dir, "home")
        self.work = os.path.join(self.dir, "work")
        os.makedirs(self.home)
        os.makedirs(self.work)
        self.sid = session_uuid(name)
        self.clis = []

    def start(self, extra=None, resume=False, label=None, env_extra=None):
        env = dict(self.env, HOME=self.home, **(env_extra or {}))
        args = BASE_ARGS + (["--resume", self.sid] if resume
                            else ["--session-id", self.sid]) + (extra or [])
        cli = Cli(self.claude, args, self.work, env, label or self.name)
        self.clis.append(cli)
        return cli


def sc_text(r):
    c = r.start()
    c.send(user_line("hello there friend"))
    res = c.wait_result()
    c.finish()
    expect(res.get("subtype") == "success", "result not success")
    expect(res.get("result") == "Echo: hello there friend",
           "unexpected result %r" % res.get("result"))
    expect(len(text_deltas(c.seen)) >= 3, "expected several text deltas")
    return [(r.name, c)]


def sc_longtext(r):
    c = r.start()
    c.send(user_line("LONGTEXT 50"))
    res = c.wait_result()
    c.finish()
    expect(res.get("result") == " ".join("word%d" % i for i in range(1, 51)),
           "unexpected result %r" % res.get("result"))
    expect(len(text_deltas(c.seen)) == 50, "expected 50 text deltas, got %d"
           % len(text_deltas(c.seen)))
    return [(r.name, c)]


def sc_think(r):
    c = r.start()
    c.send(user_line("THINK about it"))
    res = c.wait_result()
    c.finish()
    expect(res.get("result") == "Echo: THINK about it",
           "unexpected result %r" % res.get("result"))
    expect(any(o and o.get("type") == "stream_event"
               and o["event"].get("delta", {}).get("type") == "thinking_delta"
               for o in c.seen), "no thinking_delta seen")
    return [(r.name, c)]


def sc_tool_autoallow(r):
    """A read-only command: the CLI runs it WITHOUT asking the host."""
    c = r.start()
    c.send(user_line("USE_BASH echo hi"))
    res = c.wait_result()
    c.finish()
    expect(not any(o and o.get("type") == "control_request" for o in c.seen),
           "unexpected control_request for a read-only command")
    expect(res.get("result") == "Tool said: hi",
           "unexpected result %r" % res.get("result"))
    return [(r.name, c)]


def _tool(r, allow):
    # "echo hi" alone is auto-allowed (read-only); writing a file is not.
    c = r.start()
    c.send(user_line("USE_BASH echo hi | tee hi.txt"))
    req = c.wait_for(lambda o: o.get("type") == "control_request"
                     and o.get("request", {}).get("subtype") == "can_use_tool",
                     "control_request can_use_tool")
    if allow:
        answer = {"behavior": "allow",
                  "updatedInput": req["request"].get("input", {})}
    else:
        answer = {"behavior": "deny", "message": "no"}
    c.send({"type": "control_response",
            "response": {"subtype": "success",
                         "request_id": req["request_id"],
                         "response": answer}})
    res = c.wait_result()
    c.finish()
    tr = [b for o in c.seen if o and o.get("type") == "user"
          for b in (o["message"].get("content") or [])
          if isinstance(b, dict) and b.get("type") == "tool_result"]
    expect(tr, "no tool_result user line")
    if allow:
        expect(res.get("result", "").startswith("Tool said: hi"),
               "unexpected result %r" % res.get("result"))
    else:
        expect(tr[0].get("is_error") is True, "deny: tool_result not is_error")
        expect(res.get("result", "").startswith("Tool said: "),
               "unexpected result %r" % res.get("result"))
    expect(res.get("num_turns") == 2, "num_turns %r" % res.get("num_turns"))
    return [(r.name, c)]


def sc_tool_allow(r):
    return _tool(r, True)


def sc_tool_deny(r):
    return _tool(r, False)


def sc_interrupt(r):
    c = r.start()
    c.send(user_line("SLOWTEXT 200 50"))
    n = [0]

    def fifth_delta(o):
        if (o.get("type") == "stream_event"
                and o["event"].get("delta", {}).get("type") == "text_delta"):
            n[0] += 1
        return n[0] >= 5

    c.wait_for(fifth_delta, "5 text deltas")
    c.send({"type": "control_request", "request_id": "int1",
            "request": {"subtype": "interrupt"}})
    c.wait_for(lambda o: o.get("type") == "control_response"
               and o.get("response", {}).get("request_id") == "int1",
               "control_response to int1")
    res = c.wait_result()
    expect(res.get("is_error") is True or res.get("subtype") != "success",
           "interrupted result looks like success: %r" % res.get("subtype"))
    # The process must stay usable for the next turn.
    c.send(user_line("after the interrupt"))
    res2 = c.wait_result()
    c.finish()
    # The CLI puts "[Request interrupted by user]" into the next request's
    # last user message, so the echo contains it too.
    expect((res2.get("result") or "").endswith("after the interrupt"),
           "unexpected second result %r" % res2.get("result"))
    return [(r.name, c)]


def sc_two_turns(r):
    c = r.start()
    c.send(user_line("first turn"))
    res1 = c.wait_result()
    # content may also be a list of blocks
    c.send({"type": "user", "message": {
        "role": "user", "content": [{"type": "text", "text": "second turn"}]}})
    res2 = c.wait_result()
    c.finish()
    expect(res1.get("result") == "Echo: first turn", "turn 1 %r"
           % res1.get("result"))
    expect(res2.get("result") == "Echo: second turn", "turn 2 %r"
           % res2.get("result"))
    return [(r.name, c)]


def sc_queued_turns(r):
    """Two user lines written at once, before the first result."""
    c = r.start()
    c.send(user_line("queued one"))
    c.send(user_line("queued two"))
    res = c.wait_result()
    results = [res]
    c.close_stdin()
    try:
        results.append(c.wait_result())
    except ScenarioError:
        pass
    c.finish()
    texts = [x.get("result") for x in results]
    expect(any("queued two" in (t or "") for t in texts),
           "second queued line never answered: %r" % texts)
    return [(r.name, c)]


def sc_resume(r):
    c1 = r.start(label="resume_1_remember")
    c1.send(user_line("REMEMBER banana"))
    res1 = c1.wait_result()
    c1.finish()
    expect(res1.get("subtype") == "success", "remember turn failed")
    c2 = r.start(resume=True, label="resume_2_recall")
    c2.send(user_line("RECALL"))
    res2 = c2.wait_result()
    c2.finish()
    expect(res2.get("result") == "Recalled: banana",
           "unexpected recall %r" % res2.get("result"))
    # Starting a new session with the same id again must fail.
    c3 = r.start(label="resume_3_session_in_use")
    c3.send(user_line("hello again"))
    c3.close_stdin()
    try:
        c3.wait_result()
    except ScenarioError:
        pass
    rc3 = c3.finish()
    expect(rc3 != 0 or b"already in use" in c3.stderr_raw,
           "reusing --session-id did not fail")
    return [("resume_1_remember", c1), ("resume_2_recall", c2),
            ("resume_3_session_in_use", c3)]


def sc_fail500(r):
    c = r.start()
    c.send(user_line("FAIL500"))
    res = c.wait_result()
    c.finish()
    expect(res.get("is_error") is True, "FAIL500 result not is_error")
    return [(r.name, c)]


def sc_fail500_retry(r):
    c = r.start(env_extra={"CLAUDE_CODE_MAX_RETRIES": "2"})
    c.send(user_line("FAIL500_RETRY"))
    res = c.wait_result()
    c.finish()
    expect(res.get("is_error") is True, "FAIL500_RETRY result not is_error")
    expect(any(o and o.get("type") == "system"
               and o.get("subtype") == "api_retry" for o in c.seen),
           "no system/api_retry line")
    return [(r.name, c)]


SCENARIOS = [
    ("text", sc_text),
    ("longtext", sc_longtext),
    ("think", sc_think),
    ("tool_autoallow", sc_tool_autoallow),
    ("tool_allow", sc_tool_allow),
    ("tool_deny", sc_tool_deny),
    ("interrupt", sc_interrupt),
    ("two_turns", sc_two_turns),
    ("queued_turns", sc_queued_turns),
    ("resume", sc_resume),
    ("fail500", sc_fail500),
    ("fail500_retry", sc_fail500_retry),
]


def start_standin(log_path, err_path):
    with open(err_path, "wb") as err:
        p = subprocess.Popen([sys.executable, STANDIN, "--port", "0",
                              "--log", log_path],
                             stdout=subprocess.PIPE, stderr=err)
    first = p.stdout.readline().decode()
    m = re.match(r"listening on ([\d.]+):(\d+)", first)
    if not m:
        p.kill()
        raise SystemExit("stand-in did not start: %r" % first)
    return p, "http://%s:%s" % (m.group(1), m.group(2))


def base_env(url):
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("ANTHROPIC_") or k.startswith("CLAUDE")
                   or k.startswith("OTEL_"))}
    env.update({
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "test",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    })
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--claude", default=DEFAULT_CLAUDE)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary HOME/work dirs")
    args = ap.parse_args()
    if not os.access(args.claude, os.X_OK):
        raise SystemExit("no CLI at %s (run scripts/install-claude.sh)"
                         % args.claude)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(tempfile.gettempdir(), "hotplex-claude-rec")
    os.makedirs(base, exist_ok=True)
    log_path = os.path.join(base, "standin.log")
    if os.path.exists(log_path):
        os.unlink(log_path)
    err_path = os.path.join(base, "standin.stderr")
    standin, url = start_standin(log_path, err_path)
    env = base_env(url)
    only = set(args.only.split(",")) if args.only else None
    failed = 0
    try:
        for name, fn in SCENARIOS:
            if only and name not in only:
                continue
            r = Runner(args.claude, env, base, name)
            t0 = time.monotonic()
            saved = []
            try:
                saved = fn(r)
                status = "PASS"
                why = ""
            except ScenarioError as e:
                status = "FAIL"
                why = str(e)
                failed += 1
                for cli in r.clis:  # show (but do not save) what happened
                    if cli.proc.poll() is None or not hasattr(cli, "rc"):
                        cli.finish(timeout=5)
                    print("  [not saved] %s: rc=%s\n    %s" % (
                        cli.name, cli.rc,
                        ", ".join(compress(line_types(cli.seen)))))
                    if cli.stderr_raw:
                        print("    stderr: %r" % cli.stderr_raw[:500])
            dt = time.monotonic() - t0
            print("%s %s (%.1fs)%s" % (status, name, dt,
                                       " -- " + why if why else ""),
                  flush=True)
            for label, cli in saved:
                cli.save(args.out, label)
                first = (" first line after %.2fs" % cli.first_line_at
                         if cli.first_line_at is not None else "")
                print("  %s: rc=%s, %d lines%s" % (
                    label, cli.rc, len(cli.stdout_raw), first))
                print("    " + ", ".join(compress(line_types(cli.seen))))
                if cli.stderr_raw:
                    print("    stderr: %r" % cli.stderr_raw[:300])
            if not args.keep:
                shutil.rmtree(r.dir, ignore_errors=True)
    finally:
        standin.terminate()
        standin.wait(5)
    print("%d passed, %d failed" % (len(SCENARIOS if not only else
                                        [s for s in SCENARIOS
                                         if s[0] in only]) - failed, failed))
    print("stand-in log: %s" % log_path)
    if os.path.getsize(err_path):
        print("stand-in stderr (%s) is not empty:" % err_path)
        with open(err_path, errors="replace") as f:
            print(f.read()[:2000])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
