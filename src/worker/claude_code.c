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
 * (each answers "deny" after cfg->permission_timeout_ms). Must never: run a
 * shell, pass the gateway's environment through unfiltered, use
 * --dangerously-skip-permissions on its own, or call the sink after
 * sink->exit.
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
    /* what start() spawned, kept to respawn with --resume when the CLI says
     * the id is already in use (its transcript exists: a record of ours was
     * lost, e.g. a crash before the first turn was recorded) */
    char **argv, **env;
    int mode_arg;    /* index of --session-id / --resume in argv */
    proc_opts_t po;
    char pid_dir[1100], cwd[PATH_MAX];
    buf_t early;     /* stdin written before the first stdout line */
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
    if (!w->got_output && !w->retried && w->early.len + len <= EARLY_MAX)
        buf_append(&w->early, line, len);
    int rc = proc_write(w->proc, line, len);
    if (rc < 0) log_warn("claude %s: stdin write failed: %s", w->sid, strerror(-rc));
    return rc;
}

static void host_reply(void *ctx, const char *line, size_t len)
{
    send_line(ctx, line, len);
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

/* ---- process callbacks --------------------------------------------------- */

static void on_line(void *ctx, const char *line, size_t len)
{
    struct wkr *w = ctx;
    w->got_output = true;
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
    buf_free(&w->early);
    wkr_strv_free(w->argv);
    wkr_strv_free(w->env);
    free(w);
}

/* The CLI refused --session-id because a transcript with this id exists:
 * continue that transcript instead, once, replaying what stdin got. */
static bool respawn_resume(struct wkr *w, const char *tail)
{
    if (w->got_output || w->stopping || w->retried || !strstr(tail, "already in use") ||
        strcmp(w->argv[w->mode_arg], "--session-id") != 0)
        return false;
    w->retried = true;
    free(w->argv[w->mode_arg]);
    w->argv[w->mode_arg] = strdup("--resume");
    if (!w->argv[w->mode_arg] || proc_spawn(&w->proc, w->loop, &w->po) < 0) return false;
    log_warn("claude %s: id already in use, resumed its transcript (pid %d)", w->sid,
             proc_pid(w->proc));
    if (w->early.len) proc_write(w->proc, w->early.p, w->early.len);
    buf_free(&w->early);
    return true;
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

    char **env = wkr_env_build(cfg, spec->session_id,
                               spec->worker_type ? spec->worker_type : "claude_code", NULL);
    struct wkr *w = calloc(1, sizeof(*w));
    char **av = calloc((size_t)argc + 1, sizeof(char *));
    bool ok = env && w && av;
    for (int i = 0; ok && i < argc; i++) ok = (av[i] = strdup(argv[i])) != NULL;
    if (!ok) {
        wkr_env_free(env);
        wkr_strv_free(av);
        free(w);
        snprintf(err, cap, "out of memory");
        return -ENOMEM;
    }
    /* The CLI refuses to skip permissions as root unless told it runs in a
     * sandbox; it would exit at once and every resume would crash again, so
     * report it as unavailable up front, with the CLI's reason. */
    if (spec->permission_mode && strcmp(spec->permission_mode, "bypassPermissions") == 0 &&
        geteuid() == 0 && !wkr_env_get(env, "IS_SANDBOX")) {
        snprintf(err, cap, "permission_mode bypassPermissions cannot be used with root privileges "
                           "(the claude CLI refuses it) unless IS_SANDBOX=1 is in the agent "
                           "environment (worker.env)");
        wkr_env_free(env);
        wkr_strv_free(av);
        free(w);
        return -EPERM;
    }
    w->argv = av;
    w->env = env;
    w->mode_arg = mode_arg;
    w->loop = loop;
    w->sink = *sink;
    w->perm_timeout_ms = cfg->permission_timeout_ms;
    snprintf(w->sid, sizeof(w->sid), "%s", spec->session_id);
    buf_init(&w->wbuf);
    buf_init(&w->early);
    claude_host_t host = {.ctx = w,
                          .reply = host_reply,
                          .pending_added = host_pending_added,
                          .pending_removed = host_pending_removed};
    claude_map_init(&w->map, &host);

    snprintf(pid_dir, sizeof(pid_dir), "%s/%s", cfg->data_dir[0] ? cfg->data_dir : ".",
             PROC_PID_DIR_NAME);
    w->po = (proc_opts_t){
        .file = w->argv[0],
        .argv = w->argv,
        .env = w->env,
        .cwd = NULL,
        .max_line = cfg->agent_max_line,
        .stop_grace_ms = cfg->agent_stop_grace_ms,
        .stderr_keep = cfg->agent_stderr_keep ? cfg->agent_stderr_keep : 4096,
        .mem_limit = cfg->agent_mem_limit,
        .pid_dir = NULL,
        .tag = w->sid,
        .ctx = w,
        .on_line = on_line,
        .on_overlong = on_overlong,
        .on_exit = on_exit_cb,
    };
    /* keep what the options point to for a respawn */
    w->po.pid_dir = w->pid_dir;
    snprintf(w->pid_dir, sizeof(w->pid_dir), "%s", pid_dir);
    snprintf(w->cwd, sizeof(w->cwd), "%s", spec->work_dir ? spec->work_dir : "");
    w->po.cwd = spec->work_dir ? w->cwd : NULL;
    int rc = proc_spawn(&w->proc, loop, &w->po);
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
    *out = (wkr_t *)w;
    return 0;
}

static int cc_input(wkr_t *wk, const char *content, size_t len)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->stopping || w->exited) return -EPIPE;
    buf_reset(&w->wbuf);
    int rc = claude_map_input(&w->wbuf, content, len);
    return rc < 0 ? rc : send_line(w, w->wbuf.p, w->wbuf.len);
}

static int cc_permission(wkr_t *wk, const char *req_id, bool allow, const char *reason,
                         const char *updated, size_t updated_len)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->exited) return -EPIPE;
    buf_reset(&w->wbuf);
    int rc = claude_map_permission(&w->map, &w->wbuf, req_id, allow, reason, updated, updated_len);
    return rc < 0 ? rc : send_line(w, w->wbuf.p, w->wbuf.len);
}

static int cc_interrupt(wkr_t *wk)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->stopping || w->exited) return -EPIPE;
    buf_reset(&w->wbuf);
    int rc = claude_map_interrupt(&w->map, &w->wbuf);
    return rc < 0 ? rc : send_line(w, w->wbuf.p, w->wbuf.len);
}

static void cc_stop(wkr_t *wk)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->stopping || w->exited) return;
    w->stopping = true;
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
