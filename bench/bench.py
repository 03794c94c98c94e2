#!/usr/bin/env python3
"""
bench.py - runs the hotplex benchmark scenarios (called by bench/run.sh).

Targets: the gateway (build/hotplex, claude_code adapter running
bench's synth_agent, or its built-in echo worker), the Node.js reference relay
(bench/reference/relay.js, same synth_agent), and the raw ceiling
(build/bench/ws_ceiling). One load generator (build/bench/hotplex_loadgen)
drives all three over loopback.

Scenarios (results in OUT/<scenario>.json, summary in OUT/summary.md):
  throughput  one session, agent streaming deltas as fast as possible:
              events/s and bytes/s delivered, server CPU per event
  latency     100 sessions at a steady total rate (10k events/s for the
              table; a sweep of loads for the plot): agent write -> client
              receive percentiles
  fanout      one session, 100 attached clients
  scale       10,000 idle connected sessions (RSS per session); 1,000
              sessions with live synthetic agents streaming at once (RSS per
              active session, zero lost/reordered events)
  handshakes  init_ack rate for new sessions (echo worker) and for resumes
Every child process is bounded in time; every loop is bounded in count.
Only the standard library; Linux /proc for RSS and CPU.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# ---------------------------------------------------------------------------
# process helpers
# ---------------------------------------------------------------------------


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def proc_cpu_s(pid, tid=None):
    """utime+stime of a process (all threads) or of one thread, in seconds."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_children_cpu_s(pid):
    """cutime+cstime: CPU of children the process has reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[13]) + int(fields[14])) / TICK


def agents_cpu_s(pid):
    """CPU of a server's agents: live children plus reaped ones."""
    return proc_children_cpu_s(pid) + sum(proc_cpu_s(c) or 0.0 for c in children_of(pid))


def system_busy_s():
    """CPU seconds all CPUs spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq (steal: another VM's, not counted)
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / TICK


def tree_cpu_s(pid):
    """CPU seconds of a process plus its live children (the agents)."""
    total = proc_cpu_s(pid) or 0.0
    for c in children_of(pid):
        total += proc_cpu_s(c) or 0.0
    return total


def children_of(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


class Server:
    """A server process that prints `listening on HOST:PORT` first."""

    def __init__(self, name, argv, logdir, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.logpath = os.path.join(logdir, f"{name}.log")
        self.logf = open(self.logpath, "ab")
        self.logf.write(("\n==== " + " ".join(argv) + "\n").encode())
        self.logf.flush()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.logf,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        self.port = None
        deadline = time.time() + 15
        line = b""
        # the first stdout line, bounded in time
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.time() < deadline:
            chunk = self.proc.stdout.read(4096) or b""
            line += chunk
            if b"\n" in line:
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        first = line.split(b"\n")[0].decode(errors="replace")
        if not first.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{name} did not start: {first!r} (see {self.logpath})")
        self.port = int(first.rsplit(":", 1)[1])
        # drain stdout in the background so the child never blocks on it
        threading.Thread(target=self._drain, daemon=True).start()
        self.pid = self.proc.pid

    def _drain(self):
        os.set_blocking(self.proc.stdout.fileno(), True)
        for chunk in iter(lambda: self.proc.stdout.read(4096), b""):
            self.logf.write(chunk)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    def cpu(self):
        return proc_cpu_s(self.pid)

    def loop_cpu(self):
        return proc_cpu_s(self.pid, self.pid)

    def rss(self):
        return proc_rss_kib(self.pid)

    def alive(self):
        return self.proc.poll() is None

    def health(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                return json.loads(r.read())
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            return {"error": str(e)}

    def stop(self, grace=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not exit within {grace}s of SIGTERM: SIGKILL")
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        self.logf.close()
        return rc


# ---------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.build = os.path.abspath(args.build_dir)
        self.out = os.path.abspath(args.out)
        self.logdir = os.path.join(self.out, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.loadgen = os.path.join(self.build, "bench", "hotplex_loadgen")
        self.synth = os.path.join(self.build, "bench", "synth_agent")
        self.ceiling = os.path.join(self.build, "bench", "ws_ceiling")
        self.hotplex = os.path.join(self.build, "hotplex")
        self.node = shutil.which("node")
        self.ref_ok = (not args.skip_reference and self.node is not None and
                       os.path.isdir(os.path.join(HERE, "reference", "node_modules", "ws")))
        self.tmp = tempfile.mkdtemp(prefix="hotplex-bench-")
        self.failures = []  # correctness failures (lost, reordered, errors, crashes)
        self.notes = []
        self.load_log = []  # (run label, other processes' CPU in cores during it)
        self.results = {}
        self.servers = []
        self.scenarios = args.only.split(",") if args.only else [
            "throughput", "latency", "fanout", "scale", "handshakes"]

    # ---- servers ---------------------------------------------------------

    def start_gateway(self, name, sets=()):
        datadir = tempfile.mkdtemp(prefix="gw-", dir=self.tmp)
        workdir = os.path.join(self.tmp, "work")
        os.makedirs(workdir, exist_ok=True)
        base = {
            "worker.claude_bin": self.synth,
            "worker.max_agents": "1000000",
            "worker.max_agents_per_user": "0",
            "session.max_per_user": "0",
            "worker.default_work_dir": workdir,
            "worker.stop_grace_ms": "2000",
            "server.shutdown_grace_ms": "2000",
        }
        # keys newer builds have: set them only when the binary knows them
        # (an unknown key stops `serve`)
        if self.gateway_knows("auth.input_rate"):
            base["auth.input_rate"] = "1000000"  # every bench client is user "anonymous"
        if self.gateway_knows("admin.listen"):
            base["admin.listen"] = "127.0.0.1:0"  # not the shared default port 9999
        for kv in sets:
            k, v = kv.split("=", 1)
            base[k] = v
        argv = [self.gateway_copy(), "serve", "--listen", "127.0.0.1:0", "--data-dir", datadir,
                "--log-level", "info"]
        for k, v in base.items():
            argv += ["--set", f"{k}={v}"]
        s = Server(name, argv, self.logdir)
        s.datadir = datadir
        s.kind = "gateway"
        self.servers.append(s)
        return s

    def gateway_knows(self, key):
        if not hasattr(self, "_gw_bytes"):
            with open(self.hotplex, "rb") as f:
                self._gw_bytes = f.read()
        return key.encode() + b"\0" in self._gw_bytes

    def gateway_copy(self):
        """A private copy of build/hotplex under another name: on a shared
        machine, other jobs' clean-up (`pkill -f build/hotplex`, ...) must not
        stop the gateway under test mid-run (it happened: see the notes)."""
        path = os.path.join(self.tmp, "gw-under-test")
        if not os.path.exists(path):
            shutil.copy2(self.hotplex, path)
        return path

    def start_reference(self, name):
        argv = [self.node, os.path.join(HERE, "reference", "relay.js"), "--listen", "127.0.0.1:0",
                "--agent", self.synth]
        s = Server(name, argv, self.logdir, cwd=self.tmp)
        s.kind = "reference"
        self.servers.append(s)
        return s

    def start_ceiling(self, name):
        s = Server(name, [self.ceiling, "--listen", "127.0.0.1:0"], self.logdir)
        s.kind = "ceiling"
        self.servers.append(s)
        return s

    def stop(self, s):
        rc = s.stop()
        if s in self.servers:
            self.servers.remove(s)
        if getattr(s, "kind", "") == "gateway":
            if rc not in (0, None):
                self.fail(f"{s.name}: gateway exited with status {rc} after SIGTERM "
                          f"(log {os.path.relpath(s.logpath, ROOT)})")
            shutil.rmtree(s.datadir, ignore_errors=True)
        return rc

    def targets(self):
        t = ["gateway"]
        if self.ref_ok:
            t.append("reference")
        t.append("ceiling")
        return t

    def start(self, target, name, gw_sets=()):
        if target == "gateway":
            return self.start_gateway(name, gw_sets)
        if target == "reference":
            return self.start_reference(name)
        return self.start_ceiling(name)

    # ---- loadgen ---------------------------------------------------------

    def fail(self, msg):
        log("FAIL: " + msg)
        self.failures.append(msg)

    def check(self, label, r, expect_clean=True):
        """Correctness of one loadgen run: recorded as a failure if not clean."""
        if r is None:
            self.fail(f"{label}: load generator produced no result")
            return
        bad = {k: r.get(k, 0) for k in ("lost", "reordered", "seq_errors", "errors",
                                         "closed_early", "connect_fail", "init_fail",
                                         "failed_turns") if r.get(k, 0)}
        if r.get("timed_out"):
            bad["timed_out"] = True
        if bad and expect_clean:
            self.fail(f"{label}: {bad} samples={r.get('error_samples', [])[:4]}")

    def run_loadgen(self, label, url, opts, timeout, server=None, sample_rss=False,
                    ready_wait=False, on_ready=None):
        """Run the load generator; returns (result dict, measurements)."""
        argv = [self.loadgen, "--url", url, "--label", label, "--timeout", str(timeout)] + \
            [str(x) for x in opts]
        if ready_wait:
            argv.append("--ready-wait")
        m = {}
        errlog = open(os.path.join(self.logdir, "loadgen.log"), "ab")
        errlog.write(("\n==== " + " ".join(argv) + "\n").encode())
        errlog.flush()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errlog,
                             stdin=subprocess.PIPE if (ready_wait or on_ready) else subprocess.DEVNULL)
        peak = [0]
        stop_sampling = threading.Event()

        def sampler():
            while not stop_sampling.is_set():
                v = server.rss() if server else None
                if v and v > peak[0]:
                    peak[0] = v
                stop_sampling.wait(0.05)

        lines = []
        deadline = time.time() + timeout + 30
        if ready_wait or on_ready:
            # wait for the ready line, measure, then let it go
            while time.time() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if line.startswith(b'{"ready"'):
                    m["ready"] = json.loads(line)
                    if on_ready:
                        on_ready(m)
                    break
        t0 = time.time()
        cpu0 = server.cpu() if server else None
        lcpu0 = server.loop_cpu() if server else None
        kids0 = agents_cpu_s(server.pid) if server else 0.0
        sys0 = system_busy_s()
        lg0 = proc_cpu_s(p.pid) or 0.0
        if sample_rss and server:
            threading.Thread(target=sampler, daemon=True).start()
        if ready_wait or on_ready:
            try:
                p.stdin.write(b"go\n")
                p.stdin.close()
            except BrokenPipeError:
                pass
            p.stdin = None  # communicate() must not touch it again
        try:
            rest, _ = p.communicate(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            rest, _ = p.communicate()
            self.fail(f"{label}: load generator hung past its own timeout; killed")
        stop_sampling.set()
        errlog.close()
        m["wall_s"] = time.time() - t0
        sys1 = system_busy_s()
        if server:
            time.sleep(0.2)  # agents stopped at the end are reaped into cutime
            m["agents_cpu_s"] = agents_cpu_s(server.pid) - kids0
            c1, l1 = server.cpu(), server.loop_cpu()
            m["server_cpu_s"] = (c1 - cpu0) if (c1 is not None and cpu0 is not None) else None
            m["server_loop_cpu_s"] = (l1 - lcpu0) if (l1 is not None and lcpu0 is not None) else None
            m["server_rss_kib_end"] = server.rss()
            if sample_rss:
                m["server_rss_kib_peak"] = peak[0]
            if not server.alive():
                self.fail(f"{label}: {server.name} died during the run "
                          f"(exit {server.proc.returncode}, log {os.path.relpath(server.logpath, ROOT)})")
        result = None
        for line in (b"".join(lines) + rest).splitlines():
            if line.startswith(b'{"label"'):
                result = json.loads(line)
        # CPU of everything else on the machine during the run: other users'
        # work makes figures noisy, so every run records it
        ours = (m.get("server_cpu_s") or 0.0) + (m.get("agents_cpu_s") or 0.0) + \
            ((result or {}).get("loadgen_cpu_s") or 0.0) - lg0
        m["system_busy_s"] = sys1 - sys0
        m["foreign_cpu_s"] = max(0.0, (sys1 - sys0) - ours)
        if m["wall_s"] > 1:
            self.load_log.append((label, m["foreign_cpu_s"] / m["wall_s"]))
        m["loadgen_rc"] = p.returncode
        return result, m

    # ---- scenarios -------------------------------------------------------

    def scenario_throughput(self):
        if self.smoke:
            warm, meas, reps = dict(count=200, turns=2), dict(count=500, turns=4, duration=0), 1
        else:
            warm, meas, reps = dict(count=2000, turns=3), dict(count=5000, turns=1000, duration=6), 3
        size = 64
        res = {"params": {"size": size, **meas, "pipeline": 2, "repetitions": reps}, "targets": {}}
        # All targets up at once, runs interleaved (g, r, c, g, r, c, ...): on
        # a shared machine, background load then hits every target alike.
        # Raised hard limit: a fast agent must not get a fast client closed as
        # "slow" (see docs/benchmarks.md, findings).
        servers = {t: self.start(t, f"throughput-{t}", ["session.out_hard_limit=4294967296"])
                   for t in self.targets()}
        runs = {t: [] for t in servers}
        try:
            for t, s in servers.items():
                self.run_loadgen(f"throughput-warmup-{t}", s.url,
                                 ["--count", warm["count"], "--size", size, "--turns", warm["turns"],
                                  "--pipeline", 2], 60)
            for i in range(reps):
                for t, s in servers.items():
                    r, m = self.run_loadgen(
                        f"throughput-{t}-{i}", s.url,
                        ["--count", meas["count"], "--size", size, "--turns", meas["turns"],
                         "--pipeline", 2, "--duration", meas["duration"]], 120, server=s,
                        sample_rss=True)
                    self.check(f"throughput/{t}/run{i}", r)
                    runs[t].append(self.summarise_stream(r, m))
        finally:
            for s in servers.values():
                self.stop(s)
        for t, rs in runs.items():
            rs.sort(key=lambda x: x.get("events_per_s") or 0)
            med = dict(rs[len(rs) // 2])
            med["runs_events_per_s"] = [x.get("events_per_s") for x in rs]
            res["targets"][t] = med
        # the same run with the gateway's default output limits (a finding)
        if not self.smoke:
            s = self.start_gateway("throughput-gateway-defaults")
            try:
                r, m = self.run_loadgen(
                    "throughput-gateway-default-limits", s.url,
                    ["--count", 5000, "--size", size, "--turns", 10, "--pipeline", 2], 60, server=s)
                res["gateway_default_limits"] = self.summarise_stream(r, m)
                if r and (r.get("closed_early") or r.get("errors")):
                    self.notes.append(
                        "throughput with default session.out_hard_limit (8 MiB): the gateway "
                        f"closed the (fast) client: {r.get('error_samples', [])[:2]}")
            finally:
                self.stop(s)
        self.ratio(res, "events_per_s")
        self.results["throughput"] = res

    def summarise_stream(self, r, m):
        if not r:
            return {"error": "no result", **m}
        out = {k: r.get(k) for k in ("events", "events_per_s", "frames_per_s", "bytes_per_s",
                                     "bytes", "elapsed_s", "merged_frames", "lost", "reordered",
                                     "seq_errors", "errors", "closed_early", "turns_done",
                                     "loadgen_cpu_s", "latency_us", "error_samples", "timed_out")}
        out.update(m)
        ev = r.get("events") or 0
        if m.get("server_cpu_s") is not None and ev:
            out["server_cpu_us_per_event"] = m["server_cpu_s"] * 1e6 / ev
        if m.get("server_loop_cpu_s") is not None and ev:
            out["server_loop_cpu_us_per_event"] = m["server_loop_cpu_s"] * 1e6 / ev
        return out

    def ratio(self, res, key):
        t = res["targets"]
        g = t.get("gateway", {}).get(key)
        if g:
            if t.get("reference", {}).get(key):
                res.setdefault("ratios", {})[f"gateway/reference {key}"] = g / t["reference"][key]
            if t.get("ceiling", {}).get(key):
                res.setdefault("ratios", {})[f"gateway/ceiling {key}"] = g / t["ceiling"][key]

    def latency_point(self, target, s, sessions, total_rate, seconds, tag):
        rate = max(1, total_rate // sessions)
        count = max(10, int(rate * seconds))
        r, m = self.run_loadgen(
            f"latency-{tag}-{target}-{total_rate}", s.url,
            ["--sessions", sessions, "--count", count, "--size", 64, "--rate", rate,
             "--turns", 1, "--connect-concurrency", 64], seconds * 4 + 60, server=s,
            ready_wait=True)
        self.check(f"latency/{target}/{total_rate} ev/s", r)
        out = self.summarise_stream(r, m)
        out["offered_events_per_s"] = rate * sessions
        return out

    def scenario_latency(self):
        if self.smoke:
            sessions, main_rate, main_s, reps, sweep, sweep_s = 10, 1000, 1, 1, [], 1
        else:
            sessions, main_rate, main_s, reps = 100, 10000, 5, 3
            sweep, sweep_s = [1000, 2500, 5000, 10000, 20000, 40000], 4
        res = {"params": {"sessions": sessions, "total_rate": main_rate, "seconds": main_s,
                          "repetitions": reps, "size": 64}, "targets": {}, "sweep": {}}
        servers = {t: self.start(t, f"latency-{t}") for t in self.targets()}
        runs = {t: [] for t in servers}
        pts = {t: [] for t in servers}
        try:
            for t, s in servers.items():  # warm-up (JIT, page cache), not recorded
                self.latency_point(t, s, sessions, min(main_rate, 2000), 1, "warmup")
            for i in range(reps):  # interleaved, like throughput
                for t, s in servers.items():
                    runs[t].append(self.latency_point(t, s, sessions, main_rate, main_s, f"main{i}"))
            for load in sweep:
                for t, s in servers.items():
                    p = self.latency_point(t, s, sessions, load, sweep_s, "sweep")
                    pts[t].append({"offered": load, "delivered": p.get("events_per_s"),
                                   "latency_us": p.get("latency_us"),
                                   "server_cpu_s": p.get("server_cpu_s"),
                                   "foreign_cpu_s": p.get("foreign_cpu_s"),
                                   "lost": p.get("lost"), "errors": p.get("errors")})
        finally:
            for s in servers.values():
                self.stop(s)
        for t, rs in runs.items():
            rs.sort(key=lambda x: (x.get("latency_us") or {}).get("p99") or 0)
            med = dict(rs[len(rs) // 2])  # the run with the median p99
            med["runs_p99_us"] = [(x.get("latency_us") or {}).get("p99") for x in rs]
            med["runs_p50_us"] = [(x.get("latency_us") or {}).get("p50") for x in rs]
            res["targets"][t] = med
        if sweep:
            res["sweep"] = pts
        t = res["targets"]
        for q in ("p50", "p99", "p999"):
            g = t.get("gateway", {}).get("latency_us", {}).get(q)
            ref = t.get("reference", {}).get("latency_us", {}).get(q)
            if g and ref:
                res.setdefault("ratios", {})[f"gateway/reference {q}"] = g / ref
        self.results["latency"] = res

    def scenario_fanout(self):
        clients = 5 if self.smoke else 100
        steady = dict(rate=200 if self.smoke else 1000, count=200 if self.smoke else 5000)
        fast = dict(count=200 if self.smoke else 2000, turns=2 if self.smoke else 5)
        res = {"params": {"clients": clients, "steady": steady, "fast": fast, "size": 64},
               "targets": {}, "fast": {}}
        for target in self.targets():
            s = self.start(target, f"fanout-{target}",
                           [f"session.max_conns={clients + 8}", "session.out_hard_limit=4294967296"])
            try:
                r, m = self.run_loadgen(
                    f"fanout-steady-{target}", s.url,
                    ["--sessions", 1, "--clients", clients, "--count", steady["count"], "--size", 64,
                     "--rate", steady["rate"], "--turns", 1], 120, server=s, ready_wait=True)
                self.check(f"fanout-steady/{target}", r)
                res["targets"][target] = self.summarise_stream(r, m)
                r, m = self.run_loadgen(
                    f"fanout-fast-{target}", s.url,
                    ["--sessions", 1, "--clients", clients, "--count", fast["count"], "--size", 64,
                     "--rate", 0, "--turns", fast["turns"]], 120, server=s, ready_wait=True)
                self.check(f"fanout-fast/{target}", r)
                res["fast"][target] = self.summarise_stream(r, m)
            finally:
                self.stop(s)
        self.ratio(res, "events_per_s")
        self.results["fanout"] = res

    def scenario_scale(self):
        n_idle = 300 if self.smoke else 10000
        n_active = 20 if self.smoke else 1000
        rate, count = (50, 50) if self.smoke else (10, 100)
        res = {"params": {"idle_sessions": n_idle, "active_sessions": n_active,
                          "active_rate_per_session": rate, "active_count": count, "size": 64},
               "idle": {}, "active": {}}
        targets = ["gateway"] + (["reference"] if self.ref_ok else [])
        for target in targets:
            # idle: connected sessions, echo worker (in-process), nothing streaming
            s = self.start(target, f"scale-idle-{target}")
            try:
                time.sleep(0.3)
                before = s.rss()
                got = {}

                def on_ready(m, s=s, got=got):
                    time.sleep(1.0)  # let allocations settle
                    got["rss_after"] = s.rss()
                    got["health"] = s.health() if target == "gateway" else None

                r, m = self.run_loadgen(
                    f"scale-idle-{target}", s.url,
                    ["--mode", "idle", "--sessions", n_idle, "--worker", "echo",
                     "--connect-concurrency", 200], 180, server=s, on_ready=on_ready)
                self.check(f"scale-idle/{target}", r)
                after = got.get("rss_after")
                out = {"sessions": n_idle, "rss_kib_before": before, "rss_kib_after": after,
                       "health": got.get("health"),
                       "connect_s": r.get("elapsed_s") if r else None,
                       "handshake_us": r.get("handshake_us") if r else None,
                       "errors": r.get("errors") if r else None}
                if before and after:
                    out["rss_bytes_per_session"] = (after - before) * 1024 / n_idle
                res["idle"][target] = out
            finally:
                self.stop(s)
            # active: live synthetic agents streaming at once
            s = self.start(target, f"scale-active-{target}")
            try:
                time.sleep(0.3)
                before = s.rss()
                got = {}

                def on_ready2(m, s=s, got=got):
                    time.sleep(0.5)
                    got["rss_ready"] = s.rss()
                    got["health"] = s.health() if target == "gateway" else None
                    got["agents"] = len(children_of(s.pid))

                r, m = self.run_loadgen(
                    f"scale-active-{target}", s.url,
                    ["--sessions", n_active, "--count", count, "--size", 64, "--rate", rate,
                     "--turns", 1, "--connect-concurrency", 100], count / rate * 4 + 120,
                    server=s, sample_rss=True, on_ready=on_ready2, ready_wait=True)
                self.check(f"scale-active/{target}", r)
                out = self.summarise_stream(r, m)
                out.update({"sessions": n_active, "rss_kib_before": before,
                            "rss_kib_ready": got.get("rss_ready"), "health": got.get("health"),
                            "agent_processes": got.get("agents")})
                peak = m.get("server_rss_kib_peak")
                if before and peak:
                    out["rss_bytes_per_session_peak"] = (max(peak, got.get("rss_ready") or 0)
                                                         - before) * 1024 / n_active
                res["active"][target] = out
            finally:
                self.stop(s)
        self.results["scale"] = res

    def scenario_handshakes(self):
        secs = 1 if self.smoke else 5
        conc = 8 if self.smoke else 32
        nres = 50 if self.smoke else 1000
        res = {"params": {"seconds": secs, "concurrency": conc, "resume_sessions": nres},
               "new": {}, "resume": {}}
        for target in self.targets():
            s = self.start(target, f"handshakes-{target}")
            try:
                r, m = self.run_loadgen(
                    f"handshake-new-{target}", s.url,
                    ["--mode", "handshake", "--worker", "echo", "--concurrency", conc,
                     "--duration", secs, "--src-ips", 50], secs + 60, server=s)
                self.check(f"handshake-new/{target}", r)
                res["new"][target] = self.summarise_hs(r, m)
                r, m = self.run_loadgen(
                    f"handshake-resume-{target}", s.url,
                    ["--mode", "handshake", "--worker", "echo", "--concurrency", conc,
                     "--duration", secs, "--resume", nres, "--src-ips", 50], secs + 90, server=s)
                self.check(f"handshake-resume/{target}", r)
                res["resume"][target] = self.summarise_hs(r, m)
            finally:
                self.stop(s)
        for kind in ("new", "resume"):
            t = res[kind]
            g = t.get("gateway", {}).get("acks_per_s")
            if g and t.get("reference", {}).get("acks_per_s"):
                res.setdefault("ratios", {})[f"{kind}: gateway/reference acks/s"] = \
                    g / t["reference"]["acks_per_s"]
        self.results["handshakes"] = res

    def summarise_hs(self, r, m):
        if not r:
            return {"error": "no result", **m}
        out = {k: r.get(k) for k in ("acks", "acks_per_s", "elapsed_s", "handshake_us",
                                     "init_ack_us", "errors", "init_fail", "connect_fail",
                                     "closed_early", "replayed", "error_samples")}
        out.update(m)
        if m.get("server_cpu_s") is not None and r.get("acks"):
            out["server_cpu_us_per_ack"] = m["server_cpu_s"] * 1e6 / r["acks"]
        return out

    # ---- output ----------------------------------------------------------

    def machine(self):
        cpu = "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip()
        def ver(argv):
            try:
                return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
            except (OSError, subprocess.SubprocessError) as e:
                return f"? ({e})"
        src = None
        try:
            with open(os.path.join(self.build, "CMakeCache.txt")) as f:
                for line in f:
                    if line.startswith("CMAKE_HOME_DIRECTORY:"):
                        src = line.split("=", 1)[1].strip()
        except OSError:
            pass
        source = {"dir": src}
        if src and os.path.isdir(os.path.join(src, ".git")):
            source["head"] = ver(["git", "-C", src, "rev-parse", "--short", "HEAD"])
            source["dirty"] = ver(["git", "-C", src, "status", "--short", "--", "src"]).splitlines()
        return {"nproc": os.cpu_count(), "cpu_model": cpu, "free_h": mem, "source": source,
                "kernel": platform.release(), "node": ver([self.node, "--version"]) if self.node else None,
                "hotplex": ver([self.hotplex, "version"]),
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    def write(self):
        for name, res in self.results.items():
            with open(os.path.join(self.out, f"{name}.json"), "w") as f:
                json.dump(res, f, indent=2)
        meta = {"machine": self.machine(), "smoke": self.smoke, "failures": self.failures,
                "notes": self.notes}
        with open(os.path.join(self.out, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        self.write_summary(meta)
        if "latency" in self.results and self.results["latency"].get("sweep"):
            self.plot()

    def write_summary(self, meta):
        L = []
        mach = meta["machine"]
        L.append(f"# hotplex benchmark summary{' (smoke)' if self.smoke else ''}\n")
        L.append(f"Machine: {mach['nproc']} CPUs, {mach['cpu_model']}, kernel {mach['kernel']}, "
                 f"node {mach['node']}, {mach['hotplex']}, {mach['date']}\n")
        L.append("| scenario | metric | gateway | reference | ceiling | gateway/ref | gateway/ceiling |")
        L.append("|---|---|---|---|---|---|---|")

        def fmt(v, unit=""):
            if v is None:
                return "-"
            if isinstance(v, float):
                if abs(v) >= 100:
                    return f"{v:,.0f}{unit}"
                return f"{v:.2f}{unit}"
            return f"{v}{unit}"

        def row(scen, metric, vals, higher_better=True):
            g, r, c = (vals.get(k) for k in ("gateway", "reference", "ceiling"))
            gr = fmt(g / r, "x") if (g and r) else "-"
            gc = fmt(g / c, "x") if (g and c) else "-"
            L.append(f"| {scen} | {metric} | {fmt(g)} | {fmt(r)} | {fmt(c)} | {gr} | {gc} |")

        def pick(d, *path):
            for p in path:
                if not isinstance(d, dict):
                    return None
                d = d.get(p)
            return d

        t = self.results.get("throughput", {}).get("targets", {})
        if t:
            row("throughput (1 session)", "events/s", {k: v.get("events_per_s") for k, v in t.items()})
            row("throughput", "MB/s delivered", {k: (v.get("bytes_per_s") or 0) / 1e6 for k, v in t.items()})
            row("throughput", "server CPU µs/event", {k: v.get("server_cpu_us_per_event") for k, v in t.items()})
        t = self.results.get("latency", {}).get("targets", {})
        if t:
            p = self.results["latency"]["params"]
            for q in ("p50", "p99", "p999"):
                row(f"latency ({p['sessions']} sessions, {p['total_rate']} ev/s)", f"{q} µs",
                    {k: pick(v, "latency_us", q) for k, v in t.items()})
            row("latency", "server CPU µs/event", {k: v.get("server_cpu_us_per_event") for k, v in t.items()})
        f = self.results.get("fanout", {})
        if f.get("targets"):
            p = f["params"]
            row(f"fan-out ({p['clients']} clients, {p['steady']['rate']} ev/s)", "deliveries/s",
                {k: v.get("events_per_s") for k, v in f["targets"].items()})
            for q in ("p50", "p99"):
                row("fan-out steady", f"{q} µs", {k: pick(v, "latency_us", q) for k, v in f["targets"].items()})
            row("fan-out fast", "deliveries/s", {k: v.get("events_per_s") for k, v in f["fast"].items()})
        sc = self.results.get("scale", {})
        if sc.get("idle"):
            row(f"scale idle ({sc['params']['idle_sessions']} sessions)", "RSS bytes/session",
                {k: v.get("rss_bytes_per_session") for k, v in sc["idle"].items()})
        if sc.get("active"):
            row(f"scale active ({sc['params']['active_sessions']} agents)", "RSS bytes/session (peak)",
                {k: v.get("rss_bytes_per_session_peak") for k, v in sc["active"].items()})
            row("scale active", "lost+reordered",
                {k: (v.get("lost") or 0) + (v.get("reordered") or 0) for k, v in sc["active"].items()})
            row("scale active", "p99 µs", {k: pick(v, "latency_us", "p99") for k, v in sc["active"].items()})
        h = self.results.get("handshakes", {})
        if h.get("new"):
            row("handshakes new (echo)", "init_ack/s", {k: v.get("acks_per_s") for k, v in h["new"].items()})
            row("handshakes new", "p99 µs connect→ack", {k: pick(v, "handshake_us", "p99") for k, v in h["new"].items()})
            row("handshakes resume", "init_ack/s", {k: v.get("acks_per_s") for k, v in h["resume"].items()})
        L.append("")
        if self.failures:
            L.append("## Correctness failures\n")
            L += [f"- {x}" for x in self.failures]
            L.append("")
        else:
            L.append("No lost, reordered or out-of-sequence events; no errors.\n")
        if self.load_log:
            noisy = [x for x in self.load_log if x[1] > 0.25]
            worst = max(self.load_log, key=lambda x: x[1])
            mean = sum(x[1] for x in self.load_log) / len(self.load_log)
            self.notes.append(
                f"background load (CPU of processes other than the target, its agents and the load "
                f"generator): mean {mean:.2f} cores over {len(self.load_log)} runs, above 0.25 "
                f"cores in {len(noisy)}, worst {worst[1]:.2f} cores ({worst[0]}); "
                f"this machine has {os.cpu_count()} cores")
        if self.notes:
            L.append("## Notes\n")
            L += [f"- {x}" for x in self.notes]
            L.append("")
        text = "\n".join(L) + "\n"
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write(text)
        print(text)

    def plot(self):
        gp = shutil.which("gnuplot")
        sweep = self.results["latency"]["sweep"]
        dat = os.path.join(self.out, "latency_vs_load.dat")
        with open(dat, "w") as f:
            for target, pts in sweep.items():
                f.write(f"# {target}: offered delivered p50_us p99_us p999_us\n")
                for p in pts:
                    lat = p.get("latency_us") or {}
                    f.write(f"{p['offered']} {p.get('delivered') or 0} {lat.get('p50', 0)} "
                            f"{lat.get('p99', 0)} {lat.get('p999', 0)}\n")
                f.write("\n\n")
        if not gp:
            self.notes.append("gnuplot not found: latency_vs_load.png not drawn")
            return
        png = os.path.join(self.out, "latency_vs_load.png")
        names = list(sweep.keys())
        colors = {"gateway": "#1f77b4", "reference": "#d62728", "ceiling": "#2ca02c"}
        plots = []
        for i, n in enumerate(names):
            c = colors.get(n, "#000000")
            plots.append(f"'{dat}' index {i} using 1:3 with linespoints lw 2 dt 2 pt 7 lc rgb '{c}' title '{n} p50'")
            plots.append(f"'{dat}' index {i} using 1:4 with linespoints lw 2 pt 5 lc rgb '{c}' title '{n} p99'")
        script = f"""
set terminal pngcairo size 1000,620 enhanced font 'DejaVu Sans,11' noenhanced
set output '{png}'
set title 'Added latency (agent write -> client receive) vs load, {self.results["latency"]["params"]["sessions"]} sessions, 64-byte deltas'
set xlabel 'offered load (events/s, all sessions)'
set ylabel 'latency (microseconds)'
set logscale xy
set xrange [700:60000]
set grid
set key top left
plot {', '.join(plots)}
"""
        r = subprocess.run([gp], input=script, text=True, capture_output=True)
        if r.returncode != 0:
            # pngcairo may be missing in gnuplot-nox builds: fall back to png
            script = script.replace("set terminal pngcairo size 1000,620 enhanced font 'DejaVu Sans,11' noenhanced",
                                    "set terminal png size 1000,620")
            r = subprocess.run([gp], input=script, text=True, capture_output=True)
        if r.returncode != 0:
            self.notes.append(f"gnuplot failed: {r.stderr.strip()[:300]}")

    def run(self):
        log(f"results in {self.out}; targets: {', '.join(self.targets())}"
            f"{'' if self.ref_ok else ' (reference skipped: node or ws missing)'}")
        t0 = time.time()
        try:
            for name in self.scenarios:
                ts = time.time()
                log(f"scenario {name}")
                try:
                    getattr(self, f"scenario_{name}")()
                except Exception as e:  # noqa: BLE001 - one broken scenario must not hide the rest
                    import traceback
                    traceback.print_exc()
                    self.fail(f"{name}: harness error: {e}")
                log(f"scenario {name} took {time.time() - ts:.0f} s")
        finally:
            for s in list(self.servers):
                self.stop(s)
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.write()
        log(f"total {time.time() - t0:.0f} s")
        return 1 if (self.failures and (self.smoke or self.args.strict)) else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--strict", action="store_true", help="exit 1 on any correctness failure")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--only", help="comma-separated scenarios")
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    sys.exit(Bench(args).run())


if __name__ == "__main__":
    main()
