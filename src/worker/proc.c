/*
 * proc.c - agent process supervisor (see proc.h for the contract).
 *
 * Owns: the child process, its three pipes, one timer (kill escalation
 * before exit, drain deadline after exit), the stdout line buffer, the
 * stderr tail, the pid record and the agent's cgroup. Must never block the
 * loop, never run a shell, never let a line grow past max_line, and never
 * call on_exit before stdout is drained or twice.
 *
 * Memory: a gateway runs thousands of agents that sit idle most of the
 * time, so a live proc holds only its struct (libuv handles inline) and
 * whatever is pending: the stdout buffer exists only while a line is split
 * across reads and is released once the line is delivered if it grew; the
 * stderr tail and stderr log line appear on the first stderr byte (most
 * agents never write any) and the tail grows to stderr_keep only as bytes
 * arrive; the timer and the stdin shutdown request are allocated when
 * stopping or exiting needs them; paths and the tag are stored at their
 * real length.
 *
 * Shutdown order: exit_cb (group SIGKILLed, pid record removed) and EOF on
 * stdout and stderr, in any order -> every handle uv_close'd -> last
 * close_cb -> on_exit -> free. If the leader is gone but a pipe stays open
 * (a process that escaped the group still holds it), the pipes are closed
 * after PROC_DRAIN_MS.
 */
#include "worker/proc.h"

#include "util/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define PROC_DEFAULT_MAX_LINE (10u * 1024 * 1024)
#define PROC_DRAIN_MS 1000
#define PROC_MAX_WRITE_QUEUE (64u * 1024 * 1024)
#define PROC_READ_CHUNK 65536
#define PROC_ERRLINE_MAX 512
#define PROC_TAG_MAX 63 /* longer tags are cut: they only label logs and records */
/* A stdout buffer no larger than this is kept for the next split line after
 * its line was delivered; a larger one is freed. Writers that split lines
 * at their own buffer boundaries leave a short remainder at the end of
 * most reads, and reusing a small block spares a malloc per read. */
#define PROC_LINE_KEEP 1024
#define PROC_LINE_MIN 256 /* smallest stdout buffer allocated */
#define PROC_ERR_MIN 256  /* first stderr tail allocation (grows to stderr_keep) */
/* Measured with claude 2.1.197 (a Bun binary): it aborts at start-up under
 * RLIMIT_DATA = 512 MiB and runs under 1 GiB (its RSS is ~200-300 MiB; its
 * allocator maps large writable regions and scales them down on failure). */
#define PROC_RLIMIT_DATA_MIN ((size_t)1 << 30)

/* Nothing here is sized by a limit (PATH_MAX, stderr_keep, max_line): each
 * pointer is NULL until what it holds is needed, then sized by its use. */
struct proc {
    uv_process_t h;
    uv_pipe_t in, out, err;
    uv_timer_t *timer; /* created by the first proc_stop or exit that needs it */
    int open_handles;
    int pid;
    int signo;
    int stop_grace_ms;
    int64_t status;
    bool failed; /* spawn failed: close handles, free, no callback */
    bool exited; /* exit_cb seen */
    bool out_eof, err_eof;
    bool stopping; /* proc_stop called */
    bool closing;  /* all handles are being closed */
    bool discard;  /* inside an overlong stdout line */
    bool errline_cut;

    char *line; /* stdout line split across reads; NULL when none */
    size_t len, cap, max_line;

    char *err_tail; /* last err_keep bytes of stderr, linear; err_cap <= err_keep */
    size_t err_len, err_cap, err_keep;
    char *errline; /* stderr line being assembled for the log (PROC_ERRLINE_MAX) */
    size_t errline_len;

    char *tag;      /* sanitized, at most PROC_TAG_MAX bytes; NULL: none */
    char *rec_path; /* pid record written; NULL: none */
    char *cg_path;  /* agent cgroup created; NULL: none */

    void *ctx;
    void (*on_line)(void *ctx, const char *line, size_t len);
    void (*on_overlong)(void *ctx, size_t max_line);
    void (*on_exit)(void *ctx, int64_t status, int signo);
};

/* For logs and records: the tag, or "" */
static const char *tag_of(const proc_t *p)
{
    return p->tag ? p->tag : "";
}

static size_t g_live;

/* One read buffer for every pipe (all procs live on the loop thread):
 * libuv calls alloc_cb, reads and calls read_cb before it reads anything
 * else. +1 leaves room for the NUL that terminates a line delivered in place. */
static char g_rbuf[PROC_READ_CHUNK + 1];

/* ---- small file helpers ------------------------------------------------ */

static int write_file(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    size_t n = strlen(s);
    ssize_t w = write(fd, s, n);
    int e = w < 0 ? -errno : ((size_t)w == n ? 0 : -EIO);
    if (close(fd) < 0 && e == 0) e = -errno;
    return e;
}

static ssize_t read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = -errno;
            close(fd);
            return e;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    return (ssize_t)n;
}

/* Does the whitespace-separated list in `s` contain `word`? */
static bool has_word(const char *s, const char *word)
{
    size_t wl = strlen(word);
    for (const char *p = s; (p = strstr(p, word)) != NULL; p += wl) {
        bool start = p == s || p[-1] == ' ' || p[-1] == '\n' || p[-1] == '+';
        bool end = p[wl] == '\0' || p[wl] == ' ' || p[wl] == '\n';
        if (start && end) return true;
    }
    return false;
}

/* Start time of PID in clock ticks since boot (field 22 of /proc/PID/stat),
 * 0 if the process does not exist (or is a zombie, unless zombie_ok: our own
 * unreaped child is still the process we spawned). */
static unsigned long long pid_start_time(int pid, bool zombie_ok)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (read_file(path, buf, sizeof(buf)) <= 0) return 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return 0;
    p += 2; /* field 3: state */
    if (*p == 'X' || (*p == 'Z' && !zombie_ok)) return 0;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p) return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

/* ---- cgroup v2 / rlimit memory limit ----------------------------------- */

static int g_cg_mode;                /* 0 untried, 1 usable, -1 unusable */
static char g_cg_root[PATH_MAX];     /* parent of agent cgroups */
static char g_cg_override[PATH_MAX]; /* proc_set_cgroup_root */
static bool g_rlimit_warned;

void proc_set_cgroup_root(const char *dir)
{
    g_cg_mode = 0;
    g_cg_override[0] = '\0';
    if (dir) snprintf(g_cg_override, sizeof(g_cg_override), "%s", dir);
}

/* The gateway's own cgroup v2 directory, or -errno. */
static int cg_self_dir(char *out, size_t cap)
{
    static char buf[16384];
    char own[PATH_MAX] = "", mnt[PATH_MAX] = "", mroot[PATH_MAX] = "";

    if (read_file("/proc/self/cgroup", buf, sizeof(buf)) <= 0) return -ENOENT;
    for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, "0::", 3) == 0) {
            size_t n = strcspn(l + 3, "\n");
            if (n >= sizeof(own)) return -ENAMETOOLONG;
            memcpy(own, l + 3, n);
            own[n] = '\0';
            break;
        }
    }
    if (!own[0]) return -ENOENT;

    if (read_file("/proc/self/mountinfo", buf, sizeof(buf)) <= 0) return -ENOENT;
    for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        char root[PATH_MAX], point[PATH_MAX], fstype[64];
        const char *sep = strstr(l, " - ");
        const char *eol = strchr(l, '\n');
        if (!sep || (eol && sep > eol)) continue;
        if (sscanf(l, "%*s %*s %*s %4095s %4095s", root, point) != 2 ||
            sscanf(sep + 3, "%63s", fstype) != 1)
            continue;
        if (strcmp(fstype, "cgroup2") == 0) {
            snprintf(mnt, sizeof(mnt), "%s", point);
            snprintf(mroot, sizeof(mroot), "%s", root);
            break;
        }
    }
    if (!mnt[0]) return -ENOENT;
    /* Paths in /proc/self/cgroup are relative to the cgroup namespace root;
     * the mount shows the subtree `mroot` of the hierarchy. */
    const char *rel = own;
    size_t rl = strlen(mroot);
    if (strcmp(mroot, "/") != 0) {
        if (strncmp(own, mroot, rl) == 0 && (own[rl] == '/' || own[rl] == '\0')) rel = own + rl;
    }
    if (strcmp(rel, "/") == 0) rel = "";
    if ((size_t)snprintf(out, cap, "%s%s", mnt, rel) >= cap) return -ENAMETOOLONG;
    return 0;
}

static int cg_enable_memory(const char *dir)
{
    char path[2 * PATH_MAX], buf[512];

    snprintf(path, sizeof(path), "%s/cgroup.controllers", dir);
    if (read_file(path, buf, sizeof(buf)) < 0 || !has_word(buf, "memory")) return -ENOTSUP;
    snprintf(path, sizeof(path), "%s/cgroup.subtree_control", dir);
    if (read_file(path, buf, sizeof(buf)) >= 0 && has_word(buf, "memory")) return 0;
    if (write_file(path, "+memory") == 0) return 0;
    /* No internal processes: move the gateway into a leaf first. */
    char leaf[PATH_MAX + 32], pidbuf[32];
    snprintf(leaf, sizeof(leaf), "%s/hotplex-gateway", dir);
    if (mkdir(leaf, 0755) < 0 && errno != EEXIST) return -errno;
    snprintf(path, sizeof(path), "%s/cgroup.procs", leaf);
    snprintf(pidbuf, sizeof(pidbuf), "%d", (int)getpid());
    int e = write_file(path, pidbuf);
    if (e == 0) {
        snprintf(path, sizeof(path), "%s/cgroup.subtree_control", dir);
        e = write_file(path, "+memory");
        if (e == 0) {
            log_info("moved the gateway into %s to delegate memory to agent cgroups", leaf);
            return 0;
        }
        snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
        write_file(path, pidbuf);
    }
    rmdir(leaf);
    return e;
}

static void cg_init(void)
{
    char dir[PATH_MAX];
    int e;

    if (g_cg_override[0]) {
        snprintf(g_cg_root, sizeof(g_cg_root), "%s", g_cg_override);
        g_cg_mode = 1;
        return;
    }
    g_cg_mode = -1;
    if ((e = cg_self_dir(dir, sizeof(dir))) < 0) {
        log_warn("no cgroup v2 hierarchy found (%s)", strerror(-e));
        return;
    }
    if ((e = cg_enable_memory(dir)) < 0) {
        log_warn("cgroup v2 memory controller not usable in %s (%s)", dir, strerror(-e));
        return;
    }
    snprintf(g_cg_root, sizeof(g_cg_root), "%s", dir);
    g_cg_mode = 1;
}

/* Put pid into a fresh cgroup limited to `limit` bytes: 0 or -errno. The
 * path is kept (at its real length) only once the cgroup exists. */
static int cg_attach(proc_t *p, size_t limit)
{
    char dir[PATH_MAX], path[PATH_MAX + 32], val[32];
    int e;

    if (g_cg_mode == 0) cg_init();
    if (g_cg_mode < 0) return -ENOTSUP;
    if ((size_t)snprintf(dir, sizeof(dir), "%s/hotplex-agent-%d", g_cg_root, p->pid) >= sizeof(dir))
        return -ENAMETOOLONG;
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) return -errno;
    if (!(p->cg_path = strdup(dir))) {
        rmdir(dir);
        return -ENOMEM;
    }
    snprintf(val, sizeof(val), "%zu", limit);
    snprintf(path, sizeof(path), "%s/memory.max", dir);
    if ((e = write_file(path, val)) < 0) goto fail;
    snprintf(path, sizeof(path), "%s/memory.swap.max", dir);
    write_file(path, "0"); /* absent without swap accounting */
    snprintf(path, sizeof(path), "%s/memory.oom.group", dir);
    write_file(path, "1");
    snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
    snprintf(val, sizeof(val), "%d", p->pid);
    if ((e = write_file(path, val)) < 0) goto fail;
    return 0;
fail:
    rmdir(dir);
    free(p->cg_path);
    p->cg_path = NULL;
    return e;
}

static void cg_kill(const char *cg)
{
    char path[2 * PATH_MAX];
    if (!cg || !cg[0]) return;
    snprintf(path, sizeof(path), "%s/cgroup.kill", cg);
    if (access(path, F_OK) == 0) write_file(path, "1");
}

static void cg_remove(proc_t *p)
{
    if (!p->cg_path) return;
    if (rmdir(p->cg_path) == 0 || errno == ENOENT) {
        free(p->cg_path);
        p->cg_path = NULL;
    }
}

static void apply_mem_limit(proc_t *p, size_t limit)
{
    int e = cg_attach(p, limit);
    if (e == 0) {
        log_debug("agent %d [%s] in cgroup %s, memory.max=%zu", p->pid, tag_of(p), p->cg_path,
                  limit);
        return;
    }
    struct rlimit rl = {.rlim_cur = limit, .rlim_max = limit};
    if (prlimit(p->pid, RLIMIT_DATA, &rl, NULL) < 0) {
        log_warn("agent %d [%s]: no memory limit applied: prlimit: %s", p->pid, tag_of(p),
                 strerror(errno));
        return;
    }
    if (!g_rlimit_warned) {
        g_rlimit_warned = true;
        log_warn("agent memory limits fall back to RLIMIT_DATA (private writable memory, not "
                 "RSS); delegate a cgroup v2 with the memory controller for exact limits");
    }
    if (limit < PROC_RLIMIT_DATA_MIN)
        log_warn("agent %d [%s]: RLIMIT_DATA of %zu bytes is below %zu: runtimes that reserve "
                 "heap up front (claude 2.1 / Bun) may not even start",
                 p->pid, tag_of(p), limit, (size_t)PROC_RLIMIT_DATA_MIN);
}

/* ---- pid records -------------------------------------------------------- */

static void record_write(proc_t *p, const char *dir)
{
    char path[PATH_MAX], tmp[PATH_MAX + 8], body[PATH_MAX + 256];
    unsigned long long st = pid_start_time(p->pid, true);

    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        log_warn("pid dir %s: %s", dir, strerror(errno));
        return;
    }
    if ((size_t)snprintf(path, sizeof(path), "%s/%d.pid", dir, p->pid) >= sizeof(path)) return;
    /* Kept before the record exists: a record we could not remove on exit
     * would only be reaped at the next start. */
    if (!(p->rec_path = strdup(path))) {
        log_warn("pid record %s: %s", path, strerror(ENOMEM));
        return;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    snprintf(body, sizeof(body), "pid %d\nstart %llu\ncgroup %s\ntag %s\n", p->pid, st,
             p->cg_path ? p->cg_path : "-", p->tag ? p->tag : "-");
    int e = write_file(tmp, body);
    if (e == 0 && rename(tmp, path) < 0) e = -errno;
    if (e < 0) {
        log_warn("pid record %s: %s", path, strerror(-e));
        unlink(tmp);
        free(p->rec_path);
        p->rec_path = NULL;
    }
}

static void record_remove(proc_t *p)
{
    if (p->rec_path) {
        unlink(p->rec_path);
        free(p->rec_path);
        p->rec_path = NULL;
    }
}

int proc_reap_orphans(const char *pid_dir)
{
    DIR *d = opendir(pid_dir);
    struct dirent *de;
    int killed = 0;

    if (!d) return errno == ENOENT ? 0 : -errno;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        size_t nl = strlen(name);
        char path[PATH_MAX], body[PATH_MAX + 256];
        bool is_rec = nl > 4 && strcmp(name + nl - 4, ".pid") == 0;
        bool is_tmp = nl > 8 && strcmp(name + nl - 8, ".pid.tmp") == 0;

        if (!is_rec && !is_tmp) continue;
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", pid_dir, name) >= sizeof(path)) continue;
        if (is_rec && read_file(path, body, sizeof(body)) > 0) {
            int pid = 0;
            unsigned long long st = 0;
            char cg[PATH_MAX] = "";
            char *l;
            if ((l = strstr(body, "pid ")) == body) pid = atoi(l + 4);
            if ((l = strstr(body, "\nstart ")) != NULL) st = strtoull(l + 7, NULL, 10);
            if ((l = strstr(body, "\ncgroup ")) != NULL) {
                size_t n = strcspn(l + 8, "\n");
                if (n < sizeof(cg) && !(n == 1 && l[8] == '-')) {
                    memcpy(cg, l + 8, n);
                    cg[n] = '\0';
                }
            }
            if (pid > 1 && st != 0 && pid_start_time(pid, false) == st) {
                if (kill(-pid, SIGKILL) == 0 || kill(pid, SIGKILL) == 0) {
                    killed++;
                    log_warn("killed orphaned agent group %d (record %s)", pid, name);
                }
            }
            if (cg[0] && strstr(cg, "/hotplex-agent-")) {
                cg_kill(cg);
                rmdir(cg); /* may still be busy while the killed die; harmless */
            }
        }
        unlink(path);
    }
    closedir(d);
    return killed;
}

/* ---- closing ------------------------------------------------------------ */

static void proc_free(proc_t *p)
{
    free(p->line);
    free(p->err_tail);
    free(p->errline);
    free(p->timer);
    free(p->tag);
    free(p->rec_path);
    free(p->cg_path);
    free(p);
}

static void close_cb(uv_handle_t *h)
{
    proc_t *p = h->data;
    if (--p->open_handles > 0) return;
    if (p->failed) {
        proc_free(p);
        return;
    }
    cg_remove(p);
    if (p->cg_path) log_warn("agent cgroup %s not removed", p->cg_path);
    p->on_exit(p->ctx, p->status, p->signo);
    g_live--;
    proc_free(p);
}

static void close_handle(uv_handle_t *h)
{
    if (h->data && !uv_is_closing(h)) uv_close(h, close_cb);
}

static void close_all(proc_t *p)
{
    close_handle((uv_handle_t *)&p->h);
    close_handle((uv_handle_t *)&p->in);
    close_handle((uv_handle_t *)&p->out);
    close_handle((uv_handle_t *)&p->err);
    if (p->timer) close_handle((uv_handle_t *)p->timer);
}

static void timer_stop(proc_t *p)
{
    if (p->timer) uv_timer_stop(p->timer);
}

/* Start the proc's one timer, creating it on first use: an idle agent needs
 * none, only stopping (grace period) and exiting (drain deadline) do. 0 or
 * -ENOMEM. Never called once the handles are closing. */
static int timer_arm(proc_t *p, uv_timer_cb cb, uint64_t ms)
{
    if (!p->timer) {
        uv_timer_t *t = malloc(sizeof(*t));
        if (!t) return -ENOMEM;
        uv_timer_init(p->out.loop, t); /* cannot fail on unix */
        t->data = p;
        p->open_handles++;
        p->timer = t;
    }
    uv_timer_start(p->timer, cb, ms, 0);
    return 0;
}

static void maybe_finish(proc_t *p)
{
    if (p->closing || !p->exited || !p->out_eof || !p->err_eof) return;
    p->closing = true;
    timer_stop(p);
    close_all(p);
}

/* ---- stdout lines -------------------------------------------------------- */

/* Room for n more bytes and the NUL. The buffer is sized by what is
 * pending: the first block fits the partial line, later ones at least
 * double (so copying stays linear in the length of a line arriving over
 * many reads), and none exceeds max_line + 1 (feed_stdout never lets len
 * pass max_line). */
static int line_reserve(proc_t *p, size_t n)
{
    size_t need = p->len + n + 1;
    if (need <= p->cap) return 0;
    size_t ncap = p->cap * 2;
    if (ncap < need) ncap = need;
    if (ncap < PROC_LINE_MIN) ncap = PROC_LINE_MIN;
    if (ncap > p->max_line + 1) ncap = p->max_line + 1;
    char *nl = realloc(p->line, ncap);
    if (!nl) return -ENOMEM;
    p->line = nl;
    p->cap = ncap;
    return 0;
}

static int line_append(proc_t *p, const char *s, size_t n)
{
    if (line_reserve(p, n) < 0) return -ENOMEM;
    memcpy(p->line + p->len, s, n);
    p->len += n;
    return 0;
}

/* The buffered line was delivered or dropped. A buffer that grew past
 * PROC_LINE_KEEP goes back to the heap (or with `all`, any buffer): one
 * long line must not pin its size for the rest of the session. */
static void line_release(proc_t *p, bool all)
{
    p->len = 0;
    if (p->line && (all || p->cap > PROC_LINE_KEEP)) {
        free(p->line);
        p->line = NULL;
        p->cap = 0;
    }
}

static void overlong(proc_t *p)
{
    log_warn("agent %d [%s]: stdout line longer than %zu bytes discarded", p->pid, tag_of(p),
             p->max_line);
    line_release(p, false);
    if (p->on_overlong) p->on_overlong(p->ctx, p->max_line);
}

static void deliver_buffered(proc_t *p)
{
    p->line[p->len] = '\0';
    size_t n = p->len;
    p->len = 0;
    p->on_line(p->ctx, p->line, n);
    line_release(p, false); /* also safe if on_line ended stdout (freed it already) */
}

/* `data` is writable (g_rbuf) with one spare byte after data[n]. */
static void feed_stdout(proc_t *p, char *data, size_t n)
{
    while (n > 0) {
        char *nl = memchr(data, '\n', n);
        size_t seg = nl ? (size_t)(nl - data) : n;
        size_t used = nl ? seg + 1 : seg;

        if (p->discard) {
            if (nl) p->discard = false;
        } else if (p->len + seg > p->max_line) {
            overlong(p);
            p->discard = nl == NULL;
        } else if (nl && p->len == 0) {
            *nl = '\0'; /* the whole line is in the read buffer: deliver in place */
            p->on_line(p->ctx, data, seg);
        } else if (line_append(p, data, seg) < 0) {
            log_error("agent %d [%s]: out of memory for a stdout line", p->pid, tag_of(p));
            line_release(p, true);
            p->discard = nl == NULL;
        } else if (nl) {
            deliver_buffered(p);
        }
        data += used;
        n -= used;
    }
}

static void stdout_eof(proc_t *p)
{
    if (p->out_eof) return;
    p->out_eof = true;
    if (p->len > 0 && !p->discard) deliver_buffered(p); /* unterminated last line */
    line_release(p, true);
    p->discard = false;
    uv_read_stop((uv_stream_t *)&p->out);
    close_handle((uv_handle_t *)&p->out);
}

/* ---- stderr tail and log -------------------------------------------------- */

/* Room in the tail for what it will hold after n more bytes, i.e.
 * min(err_len + n, err_keep). Allocated on the first stderr byte and grown
 * by doubling, never past err_keep: an agent that prints one warning keeps
 * a small block, not stderr_keep bytes. false if out of memory. */
static bool err_tail_reserve(proc_t *p, size_t n)
{
    size_t need = n >= p->err_keep - p->err_len ? p->err_keep : p->err_len + n;
    if (need <= p->err_cap) return true;
    size_t ncap = p->err_cap ? p->err_cap * 2 : PROC_ERR_MIN;
    if (ncap < need) ncap = need;
    if (ncap > p->err_keep) ncap = p->err_keep;
    char *t = realloc(p->err_tail, ncap);
    if (!t) return false;
    p->err_tail = t;
    p->err_cap = ncap;
    return true;
}

/* Keep the last err_keep bytes of stderr. Out of memory, the tail keeps
 * what it had: it only feeds crash reports. */
static void err_tail_add(proc_t *p, const char *data, size_t n)
{
    if (p->err_keep == 0 || !err_tail_reserve(p, n)) return;
    if (n >= p->err_keep) {
        memcpy(p->err_tail, data + n - p->err_keep, p->err_keep);
        p->err_len = p->err_keep;
        return;
    }
    if (p->err_len + n > p->err_keep) {
        size_t drop = p->err_len + n - p->err_keep;
        memmove(p->err_tail, p->err_tail + drop, p->err_len - drop);
        p->err_len -= drop;
    }
    memcpy(p->err_tail + p->err_len, data, n);
    p->err_len += n;
}

/* Log the stderr line assembled so far and free its buffer: agents write
 * stderr rarely, so an idle one holds no line buffer. */
static void errline_flush(proc_t *p)
{
    if (p->errline_len == 0 && !p->errline_cut) return;
    log_info("agent %d [%s] stderr: %.*s%s", p->pid, tag_of(p), (int)p->errline_len,
             p->errline ? p->errline : "", p->errline_cut ? " [...]" : "");
    free(p->errline);
    p->errline = NULL;
    p->errline_len = 0;
    p->errline_cut = false;
}

static void errline_add(proc_t *p, char c)
{
    if (p->errline_len == PROC_ERRLINE_MAX ||
        (!p->errline && !(p->errline = malloc(PROC_ERRLINE_MAX)))) {
        p->errline_cut = true; /* logged with " [...]" (out of memory: only that) */
        return;
    }
    p->errline[p->errline_len++] = (c == '\r' || c == '\t') ? ' ' : c;
}

static void feed_stderr(proc_t *p, const char *data, size_t n)
{
    err_tail_add(p, data, n);
    for (size_t i = 0; i < n; i++) {
        if (data[i] == '\n')
            errline_flush(p);
        else
            errline_add(p, data[i]);
    }
}

static void stderr_eof(proc_t *p)
{
    if (p->err_eof) return;
    p->err_eof = true;
    errline_flush(p);
    uv_read_stop((uv_stream_t *)&p->err);
    close_handle((uv_handle_t *)&p->err);
}

/* ---- libuv callbacks ------------------------------------------------------ */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = g_rbuf;
    b->len = PROC_READ_CHUNK;
}

static void out_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    proc_t *p = s->data;
    if (nread > 0)
        feed_stdout(p, b->base, (size_t)nread);
    else if (nread < 0) {
        if (nread != UV_EOF) log_debug("agent %d stdout: %s", p->pid, uv_strerror((int)nread));
        stdout_eof(p);
        maybe_finish(p);
    }
}

static void err_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    proc_t *p = s->data;
    if (nread > 0)
        feed_stderr(p, b->base, (size_t)nread);
    else if (nread < 0) {
        stderr_eof(p);
        maybe_finish(p);
    }
}

static void kill_group(proc_t *p, int sig)
{
    if (kill(-p->pid, sig) < 0 && errno == ESRCH) kill(p->pid, sig);
}

static void timer_cb(uv_timer_t *t)
{
    proc_t *p = t->data;
    if (!p->exited) { /* grace period over */
        log_warn("agent %d [%s] ignored SIGTERM for %d ms: SIGKILL", p->pid, tag_of(p),
                 p->stop_grace_ms);
        kill_group(p, SIGKILL);
        cg_kill(p->cg_path);
        return;
    }
    /* drain deadline: the leader is gone, something else holds the pipes */
    log_warn("agent %d [%s] exited but its output pipes stayed open: closing them", p->pid,
             tag_of(p));
    stdout_eof(p);
    stderr_eof(p);
    maybe_finish(p);
}

static void exit_cb(uv_process_t *h, int64_t status, int signo)
{
    proc_t *p = h->data;
    p->exited = true;
    p->status = status;
    p->signo = signo;
    log_debug("agent %d [%s] exited status %lld signal %d", p->pid, tag_of(p), (long long)status,
              signo);
    /* Nothing of the agent may outlive it: its tools' background shells are
     * in its process group (and its cgroup). The pgid cannot be reused while
     * any member of the group lives. */
    kill(-p->pid, SIGKILL);
    cg_kill(p->cg_path);
    cg_remove(p);
    record_remove(p);
    timer_stop(p);
    /* Out of memory for the timer, wait for EOF without a deadline: the
     * group was killed, so only an escaped process can hold the pipes. */
    if ((!p->out_eof || !p->err_eof) && timer_arm(p, timer_cb, PROC_DRAIN_MS) < 0)
        log_warn("agent %d [%s]: no memory for the drain deadline", p->pid, tag_of(p));
    maybe_finish(p);
}

/* The request is allocated by proc_stop (an idle agent carries none); libuv
 * calls this (UV_ECANCELED if stdin is closed first) before the pipe's
 * close callback, so p is still alive. */
static void shutdown_cb(uv_shutdown_t *req, int status)
{
    proc_t *p = req->data;
    (void)status;
    free(req);
    close_handle((uv_handle_t *)&p->in);
}

typedef struct proc_wreq {
    uv_write_t req;
    char data[];
} proc_wreq_t;

static void write_cb(uv_write_t *req, int status)
{
    if (status < 0 && status != UV_ECANCELED) log_debug("stdin write: %s", uv_strerror(status));
    free(req);
}

/* ---- spawn ---------------------------------------------------------------- */

/* Resolve like execvp would, with PATH taken from the child's environment. */
static int check_exec(const char *file, char *const *env)
{
    if (!file || !*file) return -EINVAL;
    if (strchr(file, '/')) return access(file, X_OK) == 0 ? 0 : -errno;

    const char *path = NULL;
    if (env) {
        for (size_t i = 0; env[i]; i++)
            if (strncmp(env[i], "PATH=", 5) == 0) path = env[i] + 5;
    } else {
        path = getenv("PATH");
    }
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    int best = -ENOENT;
    size_t fl = strlen(file);
    while (*path) {
        size_t dl = strcspn(path, ":");
        char cand[PATH_MAX];
        if (dl + 1 + fl < sizeof(cand)) {
            if (dl == 0)
                snprintf(cand, sizeof(cand), "./%s", file);
            else
                snprintf(cand, sizeof(cand), "%.*s/%s", (int)dl, path, file);
            struct stat st;
            if (stat(cand, &st) == 0 && S_ISREG(st.st_mode)) {
                if (access(cand, X_OK) == 0) return 0;
                best = -EACCES;
            }
        }
        path += dl;
        if (*path == ':') path++;
    }
    return best;
}

static void ignore_sigpipe(void)
{
    static bool done;
    struct sigaction sa;
    if (done) return;
    done = true;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_IGN;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGPIPE, &sa, NULL);
    }
}

static int init_handle(proc_t *p, uv_handle_t *h, int rc)
{
    if (rc == 0) {
        h->data = p;
        p->open_handles++;
    }
    return rc;
}

int proc_spawn(proc_t **out, uv_loop_t *loop, const proc_opts_t *o)
{
    int rc;
    struct stat st;

    *out = NULL;
    if (!loop || !o || !o->file || !o->argv || !o->argv[0] || !o->on_line || !o->on_exit)
        return -EINVAL;
    if (o->cwd) {
        if (stat(o->cwd, &st) < 0) return -errno;
        if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
    }
    if ((rc = check_exec(o->file, o->env)) < 0) return rc;

    proc_t *p = calloc(1, sizeof(*p));
    if (!p) return -ENOMEM;
    p->max_line = o->max_line ? o->max_line : PROC_DEFAULT_MAX_LINE;
    p->stop_grace_ms = o->stop_grace_ms;
    p->err_keep = o->stderr_keep;
    p->ctx = o->ctx;
    p->on_line = o->on_line;
    p->on_overlong = o->on_overlong;
    p->on_exit = o->on_exit;
    if (o->tag && o->tag[0]) {
        if (!(p->tag = strndup(o->tag, PROC_TAG_MAX))) {
            free(p);
            return -ENOMEM;
        }
        for (char *c = p->tag; *c; c++)
            if ((unsigned char)*c < 0x20) *c = '?';
    }

    p->failed = true; /* until the process runs */
    if ((rc = init_handle(p, (uv_handle_t *)&p->in, uv_pipe_init(loop, &p->in, 0))) < 0 ||
        (rc = init_handle(p, (uv_handle_t *)&p->out, uv_pipe_init(loop, &p->out, 0))) < 0 ||
        (rc = init_handle(p, (uv_handle_t *)&p->err, uv_pipe_init(loop, &p->err, 0))) < 0)
        goto fail;

    ignore_sigpipe();

    uv_stdio_container_t stdio[3];
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&p->in;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&p->out;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&p->err;

    uv_process_options_t po;
    memset(&po, 0, sizeof(po));
    po.exit_cb = exit_cb;
    po.file = o->file;
    po.args = (char **)o->argv;
    po.env = (char **)o->env;
    po.cwd = o->cwd;
    po.flags = UV_PROCESS_DETACHED; /* setsid(): own session and group, pgid == pid */
    po.stdio_count = 3;
    po.stdio = stdio;

    p->h.data = p;
    rc = uv_spawn(loop, &p->h, &po);
    p->open_handles++; /* the process handle needs closing even if uv_spawn failed */
    if (rc < 0) goto fail;

    p->failed = false;
    p->pid = p->h.pid;
    g_live++;

    if (o->mem_limit) apply_mem_limit(p, o->mem_limit);
    if (o->pid_dir) record_write(p, o->pid_dir);

    if (uv_read_start((uv_stream_t *)&p->out, alloc_cb, out_read_cb) < 0) stdout_eof(p);
    if (uv_read_start((uv_stream_t *)&p->err, alloc_cb, err_read_cb) < 0) stderr_eof(p);
    log_debug("spawned %s pid %d [%s]", o->file, p->pid, tag_of(p));
    *out = p;
    return 0;

fail:
    if (p->open_handles == 0) {
        proc_free(p);
    } else {
        p->closing = true;
        close_all(p); /* close_cb frees p; no user callback */
    }
    return rc;
}

/* ---- public operations --------------------------------------------------- */

int proc_write(proc_t *p, const char *data, size_t len)
{
    if (!p || p->closing || p->exited || p->stopping || uv_is_closing((uv_handle_t *)&p->in))
        return -EPIPE;
    if (len == 0) return 0;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&p->in) + len > PROC_MAX_WRITE_QUEUE)
        return -ENOBUFS;
    proc_wreq_t *w = malloc(sizeof(*w) + len);
    if (!w) return -ENOMEM;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&p->in, &b, 1, write_cb);
    if (rc < 0) {
        free(w);
        return rc == UV_EPIPE || rc == UV_EBADF ? -EPIPE : rc;
    }
    return 0;
}

/* Close stdin once the queued writes are out (at once if that cannot be
 * arranged). */
static void stdin_shutdown(proc_t *p)
{
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (req) {
        req->data = p;
        if (uv_shutdown(req, (uv_stream_t *)&p->in, shutdown_cb) == 0) return;
        free(req);
    }
    close_handle((uv_handle_t *)&p->in);
}

void proc_stop(proc_t *p)
{
    if (!p || p->stopping || p->closing) return;
    p->stopping = true;
    if (!uv_is_closing((uv_handle_t *)&p->in)) stdin_shutdown(p);
    if (p->exited) return;
    if (p->stop_grace_ms > 0) {
        if (timer_arm(p, timer_cb, (uint64_t)p->stop_grace_ms) == 0) {
            kill_group(p, SIGTERM);
            return;
        }
        /* without a timer nothing would escalate a SIGTERM later */
        log_warn("agent %d [%s]: no memory for the grace timer: SIGKILL", p->pid, tag_of(p));
    }
    kill_group(p, SIGKILL);
    cg_kill(p->cg_path);
}

/* Backpressure: while paused, stdout is not read, the pipe fills and the
 * agent blocks on its own writes. */
void proc_pause(proc_t *p, bool paused)
{
    if (!p || p->out_eof) return;
    if (paused) uv_read_stop((uv_stream_t *)&p->out);
    else if (uv_read_start((uv_stream_t *)&p->out, alloc_cb, out_read_cb) < 0) stdout_eof(p);
}

int proc_pid(const proc_t *p)
{
    return p ? p->pid : 0;
}

const char *proc_stderr_tail(const proc_t *p, size_t *len)
{
    if (!p || !p->err_tail) {
        *len = 0;
        return "";
    }
    *len = p->err_len;
    return p->err_tail;
}

size_t proc_live_count(void)
{
    return g_live;
}

size_t proc_heap_bytes(const proc_t *p)
{
    if (!p) return 0;
    size_t n = sizeof(*p) + p->cap + p->err_cap;
    if (p->errline) n += PROC_ERRLINE_MAX;
    if (p->timer) n += sizeof(*p->timer);
    if (p->tag) n += strlen(p->tag) + 1;
    if (p->rec_path) n += strlen(p->rec_path) + 1;
    if (p->cg_path) n += strlen(p->cg_path) + 1;
    return n;
}

void proc_tail_line(const char *s, size_t n, size_t max, char *out, size_t cap)
{
    size_t o = 0;
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) n--;
    if (n > max) {
        s += n - max;
        n = max;
    }
    while (n > 0 && ((unsigned char)*s & 0xC0) == 0x80) { /* cut inside a UTF-8 sequence */
        s++;
        n--;
    }
    for (size_t i = 0; i < n && o + 4 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') {
            if (o > 0) {
                memcpy(out + o, " | ", 3);
                o += 3;
            }
        } else if (c != '\r') {
            out[o++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
        }
    }
    if (cap) out[o] = '\0';
}
