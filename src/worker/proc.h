/*
 * proc.h - agent process supervisor on libuv.
 *
 * One proc_t is one child process started without a shell, in its own
 * session and process group (pgid == pid), with stdin/stdout/stderr pipes.
 * Stdout is delivered as lines (bounded by max_line); stderr is kept as a
 * bounded tail and logged line by line. Stopping closes stdin and signals
 * the whole group: SIGTERM, then SIGKILL after a grace period. When the
 * group leader exits, whatever is left of its group (background shells of
 * the agent's tools) is killed, so nothing outlives the agent.
 *
 * Lifecycle, libuv style: proc_spawn() either fails (negative errno, no
 * callback ever) or succeeds; then on_exit is called exactly once, after the
 * process has exited, after stdout and stderr were drained (the last on_line
 * comes before it) and after every libuv handle of the proc was closed. The
 * proc is still readable (proc_pid, proc_stderr_tail) inside on_exit and is
 * freed when on_exit returns. Single-threaded: call everything on the loop's
 * thread.
 *
 * Memory: an idle running proc is one ~1.1 KB struct (its libuv handles
 * inline) plus its tag and pid-record path at their real length. The stdout
 * buffer exists only while a line is split across reads, sized by what is
 * pending (never above max_line + 1) and freed after the line if it grew
 * past 1 KiB; the stderr tail and log line are allocated on the first
 * stderr byte, the tail growing to stderr_keep as bytes arrive; the kill /
 * drain timer and the stdin shutdown request when stopping or exiting.
 * proc_heap_bytes() reports the total.
 *
 * Memory limit (mem_limit > 0), decided per spawn:
 *   1. cgroup v2: if the gateway's own cgroup (or the directory given to
 *      proc_set_cgroup_root) offers the memory controller, each agent gets a
 *      child cgroup "hotplex-agent-<pid>" with memory.max = mem_limit,
 *      memory.swap.max = 0 and memory.oom.group = 1, and the agent is moved
 *      into it right after spawn (its children inherit it). When the
 *      gateway's cgroup does not yet delegate memory to children, the
 *      gateway moves itself into a leaf "hotplex-gateway" and enables
 *      +memory in subtree_control (the cgroup v2 no-internal-process rule
 *      requires it); if that is refused, step 2.
 *   2. Otherwise RLIMIT_DATA (set with prlimit on the child right after
 *      spawn), with a warning logged once. RLIMIT_DATA counts private
 *      writable mappings (heap, anonymous mmaps) but not PROT_NONE
 *      reservations, so node/V8 runs under it; RLIMIT_AS is not used
 *      because V8 reserves far more address space than it uses. It is not
 *      RSS: claude 2.1.197 (Bun) has ~250 MiB RSS but aborts at start-up
 *      under 512 MiB of RLIMIT_DATA and runs under 1 GiB, so a limit
 *      below 1 GiB logs a warning.
 *   In both cases the first few milliseconds after exec run unlimited
 *   (libuv offers no pre-exec hook).
 */
#ifndef HOTPLEX_WORKER_PROC_H
#define HOTPLEX_WORKER_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Adapters keep pid records in <cfg->data_dir>/PROC_PID_DIR_NAME; the
 * gateway calls proc_reap_orphans() on that directory at start-up. */
#define PROC_PID_DIR_NAME "agents"

typedef struct proc proc_t;

typedef struct proc_opts {
    const char *file;    /* absolute path or name searched in PATH (-ENOENT if missing) */
    char *const *argv;   /* NULL-terminated */
    char *const *env;    /* NULL-terminated, complete environment of the child (NULL: inherit) */
    const char *cwd;     /* NULL: the gateway's */
    size_t max_line;     /* longest stdout line delivered (0: 10 MiB) */
    int stop_grace_ms;   /* SIGTERM -> SIGKILL (<= 0: SIGKILL at once) */
    size_t stderr_keep;  /* last N bytes of stderr kept (allocated as they come) */
    size_t mem_limit;    /* bytes, 0 = none; see the file comment */
    const char *pid_dir; /* directory for pid records (NULL: none) */
    const char *tag;     /* e.g. session id, for logs and the pid record (first 63 bytes) */
    void *ctx;
    /* one stdout line, without '\n', NUL-terminated at line[len]; the bytes
     * are only valid during the call */
    void (*on_line)(void *ctx, const char *line, size_t len);
    /* a line exceeded max_line: it is discarded up to its newline (optional) */
    void (*on_overlong)(void *ctx, size_t max_line);
    /* exactly once after a successful spawn, after the last on_line; the proc
     * frees itself after this returns. status: exit code (0 when killed by a
     * signal), signo: the terminating signal or 0 */
    void (*on_exit)(void *ctx, int64_t status, int signo);
} proc_opts_t;

/* 0 or -errno (-ENOENT: program or cwd missing, -EACCES: not executable);
 * on failure no callback is ever made. */
int proc_spawn(proc_t **out, uv_loop_t *loop, const proc_opts_t *o);

/* Copies `data` and queues it for the child's stdin. -EPIPE once the child
 * exited or stdin was closed by proc_stop, -ENOBUFS if more than 64 MiB are
 * already queued. */
int proc_write(proc_t *p, const char *data, size_t len);

/* Close stdin (after queued writes), SIGTERM the process group, SIGKILL the
 * group after stop_grace_ms. Idempotent; a no-op once the process exited. */
void proc_stop(proc_t *p);

/* The last `max` bytes of agent text (stderr, an error body) as one printable
 * line for a report: newlines become " | ", control bytes spaces, never cut
 * inside a UTF-8 sequence. Shared by the adapters. */
void proc_tail_line(const char *s, size_t n, size_t max, char *out, size_t cap);
/* Stop or resume reading the agent's stdout (backpressure). */
void proc_pause(proc_t *p, bool paused);
int proc_pid(const proc_t *p);

/* The last stderr_keep bytes of the child's stderr (not NUL-terminated;
 * may start inside a UTF-8 sequence). */
const char *proc_stderr_tail(const proc_t *p, size_t *len);

/* At start-up: for each record in pid_dir left by a crashed gateway, if the
 * pid is alive and still the same process (start time from /proc/PID/stat
 * equals the recorded one), SIGKILL its process group (and its cgroup, if
 * one was recorded); remove every record. Returns the number of process
 * groups killed, or -errno if pid_dir cannot be read (a missing dir is 0). */
int proc_reap_orphans(const char *pid_dir);

/* Procs spawned and not yet finished (on_exit not yet returned). */
size_t proc_live_count(void);

/* Heap bytes `p` holds right now: its struct, stdout line buffer, stderr
 * tail and line, timer, tag and paths (sizes requested, without allocator
 * overhead; stdin writes in flight not counted). For memory accounting. */
size_t proc_heap_bytes(const proc_t *p);

/* Use `dir` (an existing cgroup v2 directory delegated to the gateway, with
 * "memory" in its cgroup.subtree_control) as the parent of agent cgroups
 * instead of discovering one; NULL restores discovery. For deployments with
 * a prepared delegation (systemd Delegate=yes) and for tests. */
void proc_set_cgroup_root(const char *dir);

#endif
