/*
 * claude_code.c - the `claude_code` adapter: one Claude Code CLI process per
 * session, spoken to in stream-json over stdin/stdout.
 *
 *   claude -p --input-format stream-json --output-format stream-json
 *          --verbose --include-partial-messages --permission-prompt-tool stdio
 *          (--resume ID | --session-id ID) [--model M] [--allowed-tools A]
 *          [--disallowed-tools D] [--permission-mode P]
 *          [--append-system-prompt S] [--max-turns N]
 *
 * The process side lives here (spawn through proc.c, stdin writes,
 * permission timeouts, exit reporting); the line -> event mapping and the
 * stdin line formats live in claude_map.c, which does no I/O.
 *
 * Owns: the proc, the map, one uv timer per unanswered permission prompt
 * (each answers "deny" after cfg->permission_timeout_ms), the stdin line
 * being built, and, while a respawn with --resume can still happen (see
 * respawn_resume), what it needs: argv, env, cwd, pid dir and a copy of the
 * stdin written so far. Must never: run a shell, pass the gateway's
 * environment through unfiltered, use --dangerously-skip-permissions on its
 * own, or call the sink after sink->exit.
 *
 * Memory: a live session is struct wkr (the map inline, the session id; no
 * path buffers) plus the proc (see proc.h) and the map's own heap. The
 * respawn state is one block (argv and the paths at their real length) plus
 * env and the early stdin copy; it exists only from start() until the first
 * stdout line, stop, or the respawn itself, and not at all when start()
 * already resumed. The stdin line buffer is allocated on the first write and
 * freed after a line that made it grow past WBUF_KEEP.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/policy.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"
#include "worker/claude_map.h"
#include "worker/env.h"
#include "worker/proc.h"
#include "worker/worker.h"

#define CC_WHY_MAX 400 /* bytes of stderr carried in sink->exit's why */
#define WBUF_KEEP 1024 /* stdin line buffer kept between lines up to this capacity */

/* What start() spawned, kept to respawn with --resume when the CLI says the
 * id is already in use (its transcript exists: a record of ours was lost,
 * e.g. a crash before the first turn was recorded). One block: the struct,
 * argv's pointers, then the bytes of argv's strings, the pid dir and the cwd,
 * which po points to (po.env to env). Only while a respawn can happen: the
 * CLI spawned with --session-id, no stdout line seen, not stopping, not yet
 * respawned. */
typedef struct respawn {
    char **env;
    buf_t early; /* stdin written before the first stdout line */
    proc_opts_t po;
    int mode_arg; /* index of --session-id / --resume in argv */
    char *argv[];
} respawn_t;

struct wkr {
    uv_loop_t *loop;
    wkr_sink_t sink;
    proc_t *proc;
    buf_t wbuf; /* stdin line being built */
    int perm_timeout_ms;
    bool stopping;
    bool exited;
    bool got_output; /* any stdout line seen */
    bool retried;    /* already respawned once with --resume */
    char sid[64];
    respawn_t *rs;    /* NULL once a respawn can no longer happen */
    claude_map_t map; /* last: large */
};

typedef struct perm_timer {
    uv_timer_t t;
    struct wkr *w;
    char id[];
} perm_timer_t;

/* ---- stdin --------------------------------------------------------------- */

#define EARLY_MAX (1 << 20)

static int send_line(struct wkr *w, const char *line, size_t len)
{
    if (w->exited || !w->proc) return -EPIPE;
    /* kept for a respawn only while one can happen (rs != NULL implies no
     * stdout line seen and not yet respawned) */
    if (w->rs && w->rs->early.len + len <= EARLY_MAX) buf_append(&w->rs->early, line, len);
    int rc = proc_write(w->proc, line, len);
    if (rc < 0) log_warn("claude %s: stdin write failed: %s", w->sid, strerror(-rc));
    return rc;
}

static void host_reply(void *ctx, const char *line, size_t len)
{
    send_line(ctx, line, len);
}

/* After a line built in wbuf was written (proc_write copies it): let a buffer
 * that a large line grew go, so a session keeps at most WBUF_KEEP for it. */
static void wbuf_trim(struct wkr *w)
{
    buf_reset_keep(&w->wbuf, WBUF_KEEP);
}

/* ---- permission timeouts ------------------------------------------------- */

static void perm_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void perm_timer_cb(uv_timer_t *t)
{
    perm_timer_t *pt = t->data;
    struct wkr *w = pt->w;
    log_warn("claude %s: permission request %s unanswered for %d ms: denied", w->sid, pt->id,
             w->perm_timeout_ms);
    buf_reset(&w->wbuf);
    /* drops the prompt, which closes this timer (pt stays valid until the
     * close callback runs) */
    if (claude_map_permission(&w->map, &w->wbuf, pt->id, false, "permission request timed out",
                              NULL, 0) == 0)
        send_line(w, w->wbuf.p, w->wbuf.len);
    wbuf_trim(w);
}

static void host_pending_added(void *ctx, claude_pending_t *pe)
{
    struct wkr *w = ctx;
    if (w->perm_timeout_ms <= 0) return;
    size_t n = strlen(pe->id) + 1;
    perm_timer_t *pt = malloc(sizeof(*pt) + n);
    if (!pt) {
        log_warn("claude %s: no memory for a permission timer", w->sid);
        return;
    }
    memcpy(pt->id, pe->id, n);
    pt->w = w;
    uv_timer_init(w->loop, &pt->t);
    pt->t.data = pt;
    uv_timer_start(&pt->t, perm_timer_cb, (uint64_t)w->perm_timeout_ms, 0);
    pe->user = pt;
}

static void host_pending_removed(void *ctx, claude_pending_t *pe)
{
    (void)ctx;
    perm_timer_t *pt = pe->user;
    if (!pt) return;
    pe->user = NULL;
    uv_timer_stop(&pt->t);
    uv_close((uv_handle_t *)&pt->t, perm_timer_closed);
}

/* ---- respawn state ------------------------------------------------------- */

static void respawn_free(struct wkr *w)
{
    respawn_t *rs = w->rs;
    if (!rs) return;
    w->rs = NULL;
    buf_free(&rs->early);
    wkr_env_free(rs->env);
    free(rs);
}

/* Copies argv[0..argc) (NULL-terminated in the copy), pid_dir (bounded by
 * start()'s buffer) and cwd (NULL: none; at most PATH_MAX - 1 bytes of it,
 * as a cwd[PATH_MAX] would) into one block. Takes env (freed on failure
 * too). NULL: out of memory. */
static respawn_t *respawn_new(const char *const *argv, int argc, int mode_arg, char **env,
                              const char *pid_dir, const char *cwd)
{
    size_t n = sizeof(respawn_t) + ((size_t)argc + 1) * sizeof(char *);
    size_t pd_len = strlen(pid_dir);
    size_t cwd_len = cwd ? strnlen(cwd, PATH_MAX - 1) : 0;
    for (int i = 0; i < argc; i++)
        n += strlen(argv[i]) + 1;
    n += pd_len + 1 + (cwd ? cwd_len + 1 : 0);

    respawn_t *rs = env ? malloc(n) : NULL;
    if (!rs) {
        wkr_env_free(env);
        return NULL;
    }
    char *p = (char *)&rs->argv[argc + 1];
    for (int i = 0; i < argc; i++) {
        size_t len = strlen(argv[i]) + 1;
        rs->argv[i] = memcpy(p, argv[i], len);
        p += len;
    }
    rs->argv[argc] = NULL;
    rs->env = env;
    rs->mode_arg = mode_arg;
    buf_init(&rs->early);
    memset(&rs->po, 0, sizeof(rs->po));
    rs->po.file = rs->argv[0];
    rs->po.argv = rs->argv;
    rs->po.env = env;
    rs->po.pid_dir = memcpy(p, pid_dir, pd_len);
    p[pd_len] = '\0';
    p += pd_len + 1;
    if (cwd) {
        rs->po.cwd = memcpy(p, cwd, cwd_len);
        p[cwd_len] = '\0';
    }
    return rs;
}

/* ---- process callbacks --------------------------------------------------- */

static void on_line(void *ctx, const char *line, size_t len)
{
    struct wkr *w = ctx;
    w->got_output = true;
    respawn_free(w); /* respawn_resume needs !got_output */
    claude_map_line(&w->map, line, len, &w->sink);
}

static void on_overlong(void *ctx, size_t max_line)
{
    struct wkr *w = ctx;
    claude_map_overlong(&w->map, max_line, &w->sink);
}

static void wkr_destroy(struct wkr *w)
{
    buf_free(&w->wbuf);
    respawn_free(w);
    free(w);
}

/* The CLI refused --session-id because a transcript with this id exists:
 * continue that transcript instead, once, replaying what stdin got. */
static bool respawn_resume(struct wkr *w, const char *tail)
{
    respawn_t *rs = w->rs;
    if (!rs || w->got_output || w->stopping || w->retried || !strstr(tail, "already in use") ||
        strcmp(rs->argv[rs->mode_arg], "--session-id") != 0)
        return false;
    w->retried = true;
    rs->argv[rs->mode_arg] = (char *)"--resume"; /* the block is freed whole */
    bool ok = proc_spawn(&w->proc, w->loop, &rs->po) == 0;
    if (ok) {
        log_warn("claude %s: id already in use, resumed its transcript (pid %d)", w->sid,
                 proc_pid(w->proc));
        if (rs->early.len) proc_write(w->proc, rs->early.p, rs->early.len);
    }
    respawn_free(w); /* once only */
    return ok;
}

static void on_exit_cb(void *ctx, int64_t status, int signo)
{
    struct wkr *w = ctx;
    char why[CC_WHY_MAX + 128] = "";
    char tail[CC_WHY_MAX + 64];
    size_t n;
    const char *t = proc_stderr_tail(w->proc, &n);
    bool clean = w->stopping && status == 0 && signo == 0;

    proc_tail_line(t, n, CC_WHY_MAX, tail, sizeof(tail));
    if (respawn_resume(w, tail)) return;
    w->exited = true;
    if (!clean) {
        if (tail[0])
            snprintf(why, sizeof(why), "%s%s", w->got_output ? "" : "no output; stderr: ", tail);
        else
            snprintf(why, sizeof(why), "%s", w->got_output ? "" : "no output");
    }
    log_info("claude %s: pid %d exited (status %lld, signal %d)%s%s", w->sid, proc_pid(w->proc),
             (long long)status, signo, why[0] ? ": " : "", why);
    if (w->map.ignored)
        log_debug("claude %s: %llu of %llu stdout lines ignored", w->sid,
                  (unsigned long long)w->map.ignored, (unsigned long long)w->map.lines);

    claude_map_finish(&w->map, &w->sink); /* close a block cut off mid-stream */
    claude_map_free(&w->map);             /* closes the permission timers */
    w->proc = NULL;                       /* proc.c frees itself after we return */
    w->sink.exit(w->sink.ctx, (int)status, signo, why[0] ? why : NULL);
    wkr_destroy(w);
}

/* ---- ops ----------------------------------------------------------------- */

static int cc_start(wkr_t **out, uv_loop_t *loop, const wkr_spec_t *spec, const wkr_sink_t *sink,
                    char *err, size_t cap)
{
    const hp_config_t *cfg = spec ? spec->cfg : NULL;
    const char *argv[40];
    int argc = 0;
    char max_turns[24], pid_dir[sizeof(cfg->data_dir) + 16];
    struct stat st;

    *out = NULL;
    if (!cfg || !spec->session_id || !spec->session_id[0] || !sink || !sink->exit) {
        snprintf(err, cap, "claude adapter: incomplete start request");
        return -EINVAL;
    }
    if (spec->work_dir && (stat(spec->work_dir, &st) < 0 || !S_ISDIR(st.st_mode))) {
        snprintf(err, cap, "work dir not usable: %s", spec->work_dir);
        return -ENOENT;
    }

    const char *bin = cfg->claude_bin[0] ? cfg->claude_bin : "claude";
    const char *why;
    if (policy_agent_bin(cfg, bin, &why) < 0) {
        snprintf(err, cap, "%s: %s", why, bin);
        return -EPERM;
    }
    argv[argc++] = bin;
    argv[argc++] = "-p";
    argv[argc++] = "--input-format";
    argv[argc++] = "stream-json";
    argv[argc++] = "--output-format";
    argv[argc++] = "stream-json";
    argv[argc++] = "--verbose";
    argv[argc++] = "--include-partial-messages";
    argv[argc++] = "--permission-prompt-tool";
    argv[argc++] = "stdio";
    int mode_arg = argc;
    argv[argc++] = spec->resume ? "--resume" : "--session-id";
    argv[argc++] = spec->session_id;
#define OPT(flag, val)                                                                             \
    do {                                                                                           \
        if ((val) && (val)[0]) {                                                                   \
            argv[argc++] = (flag);                                                                 \
            argv[argc++] = (val);                                                                  \
        }                                                                                          \
    } while (0)
    OPT("--model", spec->model);
    OPT("--allowed-tools", spec->allowed_tools);
    OPT("--disallowed-tools", spec->disallowed_tools);
    OPT("--permission-mode", spec->permission_mode);
    OPT("--append-system-prompt", spec->system_prompt);
#undef OPT
    if (spec->max_turns > 0) {
        snprintf(max_turns, sizeof(max_turns), "%d", spec->max_turns);
        argv[argc++] = "--max-turns";
        argv[argc++] = max_turns;
    }
    argv[argc] = NULL;

    snprintf(pid_dir, sizeof(pid_dir), "%s/%s", cfg->data_dir[0] ? cfg->data_dir : ".",
             PROC_PID_DIR_NAME);
    char **env = wkr_env_build(cfg, spec->session_id,
                               spec->worker_type ? spec->worker_type : "claude_code", NULL);
    struct wkr *w = calloc(1, sizeof(*w));
    /* takes env */
    respawn_t *rs = respawn_new(argv, argc, mode_arg, env, pid_dir, spec->work_dir);
    if (!w || !rs) {
        if (rs) wkr_env_free(rs->env);
        free(rs);
        free(w);
        snprintf(err, cap, "out of memory");
        return -ENOMEM;
    }
    /* The CLI refuses to skip permissions as root unless told it runs in a
     * sandbox; it would exit at once and every resume would crash again, so
     * report it as unavailable up front, with the CLI's reason. */
    if (spec->permission_mode && strcmp(spec->permission_mode, "bypassPermissions") == 0 &&
        geteuid() == 0 && !wkr_env_get(rs->env, "IS_SANDBOX")) {
        snprintf(err, cap, "permission_mode bypassPermissions cannot be used with root privileges "
                           "(the claude CLI refuses it) unless IS_SANDBOX=1 is in the agent "
                           "environment (worker.env)");
        wkr_env_free(rs->env);
        free(rs);
        free(w);
        return -EPERM;
    }
    w->rs = rs;
    w->loop = loop;
    w->sink = *sink;
    w->perm_timeout_ms = cfg->permission_timeout_ms;
    snprintf(w->sid, sizeof(w->sid), "%s", spec->session_id);
    buf_init(&w->wbuf);
    claude_host_t host = {.ctx = w,
                          .reply = host_reply,
                          .pending_added = host_pending_added,
                          .pending_removed = host_pending_removed};
    claude_map_init(&w->map, &host);

    /* file, argv, env, cwd and pid_dir were set by respawn_new */
    rs->po.max_line = cfg->agent_max_line;
    rs->po.stop_grace_ms = cfg->agent_stop_grace_ms;
    rs->po.stderr_keep = cfg->agent_stderr_keep ? cfg->agent_stderr_keep : 4096;
    rs->po.mem_limit = cfg->agent_mem_limit;
    rs->po.tag = w->sid;
    rs->po.ctx = w;
    rs->po.on_line = on_line;
    rs->po.on_overlong = on_overlong;
    rs->po.on_exit = on_exit_cb;
    int rc = proc_spawn(&w->proc, loop, &rs->po);
    if (rc < 0) {
        if (rc == -ENOENT)
            snprintf(err, cap, "claude binary not found: %s", bin);
        else if (rc == -EACCES)
            snprintf(err, cap, "claude binary not executable: %s", bin);
        else
            snprintf(err, cap, "cannot start claude (%s): %s", bin, strerror(-rc));
        claude_map_free(&w->map);
        wkr_destroy(w);
        return rc;
    }
    log_info("claude %s: started pid %d (%s)", w->sid, proc_pid(w->proc),
             spec->resume ? "resume" : "new");
    if (spec->resume) respawn_free(w); /* respawn_resume only replaces --session-id */
    *out = (wkr_t *)w;
    return 0;
}

static int cc_input(wkr_t *wk, const char *content, size_t len)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->stopping || w->exited) return -EPIPE;
    buf_reset(&w->wbuf);
    int rc = claude_map_input(&w->wbuf, content, len);
    rc = rc < 0 ? rc : send_line(w, w->wbuf.p, w->wbuf.len);
    wbuf_trim(w);
    return rc;
}

static int cc_permission(wkr_t *wk, const char *req_id, bool allow, const char *reason,
                         const char *updated, size_t updated_len)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->exited) return -EPIPE;
    buf_reset(&w->wbuf);
    int rc = claude_map_permission(&w->map, &w->wbuf, req_id, allow, reason, updated, updated_len);
    rc = rc < 0 ? rc : send_line(w, w->wbuf.p, w->wbuf.len);
    wbuf_trim(w);
    return rc;
}

static int cc_interrupt(wkr_t *wk)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->stopping || w->exited) return -EPIPE;
    buf_reset(&w->wbuf);
    int rc = claude_map_interrupt(&w->map, &w->wbuf);
    rc = rc < 0 ? rc : send_line(w, w->wbuf.p, w->wbuf.len);
    wbuf_trim(w);
    return rc;
}

static void cc_stop(wkr_t *wk)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->stopping || w->exited) return;
    w->stopping = true;
    respawn_free(w); /* respawn_resume needs !stopping */
    proc_stop(w->proc);
}

static void cc_pause(wkr_t *wk, bool paused)
{
    struct wkr *w = (struct wkr *)wk;
    if (!w->exited && w->proc) proc_pause(w->proc, paused);
}

const wkr_ops_t wkr_claude_code_ops = {
    .type = "claude_code",
    .start = cc_start,
    .input = cc_input,
    .permission = cc_permission,
    .interrupt = cc_interrupt,
    .stop = cc_stop,
    .pause = cc_pause,
};
