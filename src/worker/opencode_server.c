/*
 * opencode_server.c - the `opencode_server` adapter: AEP sessions served by
 * ONE shared `opencode serve` process, spoken to over its HTTP API and its
 * SSE event stream (GET /global/event), all asynchronous on the gateway's
 * loop (util/http_client.c: libcurl multi driven by libuv).
 *
 *   opencode serve --port 0 --hostname 127.0.0.1      (cwd <data_dir>/opencode)
 *   env: the agent whitelist (env.h) + OPENCODE_SERVER_PASSWORD (random, per
 *        process; every request uses HTTP Basic), OPENCODE_CONFIG_CONTENT
 *        (provider.anthropic.options.baseURL/apiKey from ANTHROPIC_BASE_URL /
 *        ANTHROPIC_API_KEY, permission bash/edit/webfetch "ask"),
 *        OPENCODE_DISABLE_AUTOUPDATE=1
 *
 * One "run" is one server process: spawned when the first opencode session
 * starts (or the first after the previous run ended), ready once it printed
 * "opencode server listening on http://127.0.0.1:PORT", GET /global/health
 * answered {healthy:true} as JSON (each probe with its own timeout: probes
 * that hit the socket too early hang) and the event stream sent
 * server.connected. It is stopped when its last session stops; that
 * session's sink->exit waits for the process to be gone, so a gateway
 * shutdown never leaves it behind. If it dies (or its event stream ends)
 * every session on it exits with the reason (the core reports WORKER_CRASH
 * and ends the turn); the next start spawns a new run.
 *
 * Per AEP session: one opencode session, POST /session?directory=<work_dir>
 * with title "hotplex <agent session id>" and per-session permission rules;
 * on resume the newest session with that title in that directory is
 * reused (GET /session?directory=&search=), else a new one is made.
 * input -> POST /session/{id}/prompt_async; interrupt -> POST .../abort;
 * permission -> POST /permission/{id}/reply. Events of the session are
 * routed from the shared stream by properties.sessionID and mapped by
 * opencode_map.c (which does no I/O).
 *
 * Owns: the run (process, HTTP client, SSE framing), the table of sessions
 * by opencode id, each session's map, its held input and its timers.
 * Must never: block the loop, run a shell, listen beyond loopback, send a
 * request without the password, or call a sink after its sink->exit.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "auth/policy.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/hmap.h"
#include "util/http_client.h"
#include "util/json.h"
#include "util/log.h"
#include "util/uuid.h"
#include "worker/env.h"
#include "worker/opencode_map.h"
#include "worker/proc.h"
#include "worker/worker.h"

#define OC_USER "opencode"
#define OC_READY_TIMEOUT_MS 120000 /* spawn -> ready (a fresh HOME installs plugins first) */
#define OC_PROBE_INTERVAL_MS 200
#define OC_PROBE_TIMEOUT_MS 2000
#define OC_REQ_TIMEOUT_MS 30000
#define OC_SETTLE_MS 1000 /* wait for the tail of an aborted/failed turn */
#define OC_SSE_IDLE_S 45  /* the server sends a heartbeat every 10 s */
#define OC_WHY_MAX 400
#define OC_MAX_CHILDREN 16 /* subagent sessions routed to one AEP session */

enum { RUN_SPAWNED = 1, RUN_PROBING, RUN_CONNECTING, RUN_READY, RUN_STOPPING };
enum { W_WAIT = 1, W_OPENING, W_READY };

typedef struct oc_run oc_run_t;

typedef struct oc_srv {
    uv_loop_t *loop;
    const hp_config_t *cfg;
    oc_run_t *run; /* the current server process, or NULL */
    struct wkr *wkrs;
    hmap_t by_sid; /* opencode session id -> wkr */
    bool init;
} oc_srv_t;

struct oc_run {
    oc_srv_t *srv;
    int state;
    proc_t *proc;
    hc_t *http;
    hc_req_t *probe, *sse;
    uv_timer_t retry, deadline;
    int open_handles;
    bool exited;
    oc_sse_t frames;
    oc_parser_t parser;
    char **argv, **env;
    char userpwd[128];
    char base[64]; /* http://127.0.0.1:PORT */
    char version[64];
    char why[OC_WHY_MAX]; /* why we stopped it, if we did */
    int id;
};

struct wkr {
    struct wkr *prev, *next;
    oc_srv_t *srv;
    oc_run_t *run; /* the server process this session uses */
    uv_loop_t *loop;
    wkr_sink_t sink;
    int state;
    bool stop_requested, gone, exit_scheduled, resume, in_table;
    int perm_timeout_ms;
    char sid[64];
    char title[96];
    char oc_sid[OC_ID_MAX];
    char children[OC_MAX_CHILDREN][OC_ID_MAX]; /* subagent sessions (keys in by_sid) */
    int next_child;
    char fail_why[OC_WHY_MAX + 64];
    char *work_dir, *model, *system_prompt, *perm_mode;
    buf_t held; /* one input not yet posted (escaped JSON string body) */
    bool has_held;
    hc_req_t *open_req, *prompt_req;
    uv_timer_t settle, exit_timer;
    int open_handles;
    struct perm_timer *perms;
    buf_t tmp;
    oc_map_t map; /* last: large */
};

typedef struct perm_timer {
    uv_timer_t t;
    struct wkr *w;
    struct perm_timer *next;
    char id[];
} perm_timer_t;

static oc_srv_t g_srv;
static int g_run_ids;

static int run_spawn(oc_srv_t *s, oc_run_t **out, char *err, size_t cap);
static void run_kill(oc_run_t *r, const char *why);
static void run_stop(oc_run_t *r);
static void wkr_open(struct wkr *w);
static void wkr_gone(struct wkr *w, int status, int signo, const char *why);
static void wkr_fail(struct wkr *w, const char *why);
static void post_held(struct wkr *w);
static void settle_cb(uv_timer_t *t);

/* ---- small helpers -------------------------------------------------------- */

static uint64_t now_ms(const struct wkr *w)
{
    return uv_now(w->loop);
}

/* Percent-encodes s (everything but unreserved characters) into out. */
static int url_escape(buf_t *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
        bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' || *p == '~' ||
                     *p == '/';
        if ((plain ? buf_append(out, p, 1) : buf_append(out, e, 3)) < 0) return -ENOMEM;
    }
    return 0;
}

/* base + path (+ "?directory=<dir>") into a fresh string (free it). */
static char *make_url(const oc_run_t *r, const char *path, const char *dir, const char *extra)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s%s", r->base, path);
    if (dir) {
        buf_puts(&b, strchr(path, '?') ? "&directory=" : "?directory=");
        url_escape(&b, dir);
    }
    if (extra) buf_puts(&b, extra);
    return buf_steal(&b, NULL);
}

static hc_req_t *request(oc_run_t *r, const char *method, const char *url, const char *body,
                         size_t len, long timeout_ms, void (*done)(void *, const hc_result_t *),
                         void *ctx)
{
    hc_opts_t o = {
        .method = method,
        .url = url,
        .userpwd = r->userpwd,
        .body = body,
        .body_len = len,
        .timeout_ms = timeout_ms,
        .on_done = done,
        .ctx = ctx,
    };
    return hc_request(r->http, &o);
}

/* A request nobody waits for (abort, permission replies): failures are logged. */
static void logged_done(void *ctx, const hc_result_t *res)
{
    char *what = ctx;
    if (res->error) {
        log_warn("opencode: %s failed: %s", what ? what : "request", res->error);
    } else if (res->status < 200 || res->status > 299) {
        char tail[160];
        proc_tail_line(res->body, res->len > 150 ? 150 : res->len, OC_WHY_MAX / 2, tail, sizeof(tail));
        log_warn("opencode: %s failed: HTTP %d %s", what ? what : "request", res->status, tail);
    }
    free(what);
}

static void fire_and_forget(oc_run_t *r, const char *url, const char *body, size_t len,
                            const char *what)
{
    char *w = strdup(what);
    if (!request(r, "POST", url, body, len, OC_REQ_TIMEOUT_MS, logged_done, w)) {
        log_warn("opencode: %s: request not started", what);
        free(w);
    }
}

static bool json_ok(const hc_result_t *res)
{
    return !res->error && res->status == 200 && strstr(res->content_type, "application/json");
}

/* ---- the run: one `opencode serve` process -------------------------------- */

static void run_handle_closed(uv_handle_t *h)
{
    oc_run_t *r = h->data;
    if (--r->open_handles == 0) {
        oc_sse_free(&r->frames);
        oc_parser_free(&r->parser);
        wkr_strv_free(r->argv);
        wkr_strv_free(r->env);
        free(r);
    }
}

static void run_ready(oc_run_t *r)
{
    r->state = RUN_READY;
    uv_timer_stop(&r->deadline);
    log_info("opencode: server %d ready at %s (version %s)", r->id, r->base,
             r->version[0] ? r->version : "?");
    for (struct wkr *w = r->srv->wkrs, *n; w; w = n) {
        n = w->next;
        if (w->run == r && w->state == W_WAIT && !w->stop_requested) wkr_open(w);
    }
}

/* A subagent session of w: its permission prompts and questions go to w. */
static void add_child(struct wkr *w, const char *sid)
{
    char *slot = w->children[w->next_child];
    if (slot[0]) hmap_del(&w->srv->by_sid, slot); /* the oldest one makes room */
    snprintf(slot, OC_ID_MAX, "%s", sid);
    if (hmap_put(&w->srv->by_sid, slot, w) < 0) {
        slot[0] = '\0';
        return;
    }
    w->next_child = (w->next_child + 1) % OC_MAX_CHILDREN;
    log_info("opencode %s: subagent session %s", w->sid, sid);
}

static void dispatch(oc_run_t *r, const oc_frame_t *f)
{
    oc_srv_t *s = r->srv;
    if (!f->sid[0]) {
        if (oc_frame_is(f, "server.connected")) {
            if (r->state == RUN_CONNECTING) run_ready(r);
        } else if (oc_frame_is(f, "global.disposed")) {
            log_warn("opencode: server %d disposed its instances", r->id);
        }
        return;
    }
    struct wkr *w = hmap_get(&s->by_sid, f->sid);
    if (!w) {
        char parent[OC_ID_MAX];
        if (oc_frame_child_of(f, parent, sizeof(parent)) &&
            (w = hmap_get(&s->by_sid, parent)) != NULL && !w->gone)
            add_child(w, f->sid);
        return;
    }
    if (w->gone || w->run != r) return;
    if (strcmp(f->sid, w->oc_sid) != 0 && !oc_frame_for_parent(f)) return; /* a subagent's own */
    oc_map_frame(&w->map, f, now_ms(w), &w->sink);
    if (w->gone || w->stop_requested) return;
    if (oc_map_settling(&w->map)) {
        if (!uv_is_active((uv_handle_t *)&w->settle))
            uv_timer_start(&w->settle, settle_cb, OC_SETTLE_MS, 0);
    } else if (w->has_held) {
        post_held(w);
    }
}

static void on_sse_event(void *ctx, const char *data, size_t len)
{
    oc_run_t *r = ctx;
    oc_frame_t f;
    int rc = oc_frame_parse(&r->parser, &f, data, len);
    if (rc < 0) {
        log_debug("opencode: event ignored (%s, %zu bytes)", strerror(-rc), len);
        return;
    }
    if (oc_frame_is(&f, "sync") || oc_frame_is(&f, "server.heartbeat")) return;
    dispatch(r, &f);
}

static bool on_sse_data(void *ctx, hc_req_t *req, int status, const char *p, size_t n)
{
    oc_run_t *r = ctx;
    (void)req;
    if (status != 200) return false;
    oc_sse_feed(&r->frames, p, n, on_sse_event, r);
    return true;
}

static void on_sse_done(void *ctx, const hc_result_t *res)
{
    oc_run_t *r = ctx;
    char why[OC_WHY_MAX];
    r->sse = NULL;
    if (r->state == RUN_STOPPING) return;
    snprintf(why, sizeof(why), "opencode event stream ended (%s%s%d)",
             res->error ? res->error : "", res->error ? ", HTTP " : "HTTP ", res->status);
    log_warn("opencode: server %d: %s", r->id, why);
    run_kill(r, why);
}

static void sse_connect(oc_run_t *r)
{
    char *url = make_url(r, "/global/event", NULL, NULL);
    hc_opts_t o = {
        .method = "GET",
        .url = url,
        .userpwd = r->userpwd,
        .idle_timeout_s = OC_SSE_IDLE_S,
        .on_data = on_sse_data,
        .on_done = on_sse_done,
        .ctx = r,
    };
    r->state = RUN_CONNECTING;
    r->sse = url ? hc_request(r->http, &o) : NULL;
    free(url);
    if (!r->sse) run_kill(r, "cannot open the opencode event stream");
}

static void probe(oc_run_t *r);

static void retry_cb(uv_timer_t *t)
{
    oc_run_t *r = t->data;
    if (r->state == RUN_PROBING) probe(r);
}

static void on_probe(void *ctx, const hc_result_t *res)
{
    oc_run_t *r = ctx;
    r->probe = NULL;
    if (r->state != RUN_PROBING) return;
    if (json_ok(res)) {
        json_tok_t tok[32];
        json_doc_t d;
        bool healthy = false;
        if (json_parse(&d, res->body, res->len, tok, 32) == 0 && json_type(&d, 0) == JSON_OBJ) {
            int h = json_obj_get(&d, 0, "healthy");
            json_get_bool(&d, h, &healthy);
            int v = json_obj_get(&d, 0, "version");
            if (json_type(&d, v) == JSON_STR) json_str_copy(&d, v, r->version, sizeof(r->version));
        }
        if (healthy) {
            sse_connect(r);
            return;
        }
    }
    log_debug("opencode: server %d health probe: %s (HTTP %d)", r->id,
              res->error ? res->error : "not healthy", res->status);
    uv_timer_start(&r->retry, retry_cb, OC_PROBE_INTERVAL_MS, 0);
}

static void probe(oc_run_t *r)
{
    char *url = make_url(r, "/global/health", NULL, NULL);
    r->probe = url ? request(r, "GET", url, NULL, 0, OC_PROBE_TIMEOUT_MS, on_probe, r) : NULL;
    free(url);
    if (!r->probe) uv_timer_start(&r->retry, retry_cb, OC_PROBE_INTERVAL_MS, 0);
}

static void deadline_cb(uv_timer_t *t)
{
    oc_run_t *r = t->data;
    char why[128];
    if (r->state == RUN_READY || r->state == RUN_STOPPING) return;
    snprintf(why, sizeof(why), "opencode serve did not become ready within %d s%s",
             OC_READY_TIMEOUT_MS / 1000, r->state == RUN_SPAWNED ? " (no listening line)" : "");
    log_warn("opencode: server %d: %s", r->id, why);
    run_kill(r, why);
}

static void on_line(void *ctx, const char *line, size_t len)
{
    oc_run_t *r = ctx;
    const char *at = strstr(line, "listening on http://");
    (void)len;
    if (r->state == RUN_SPAWNED && at) {
        const char *hp = at + strlen("listening on http://");
        const char *colon = strrchr(hp, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (port <= 0 || port > 65535 || strncmp(hp, "127.0.0.1:", 10) != 0) {
            log_warn("opencode: server %d: unexpected listening line: %s", r->id, line);
            run_kill(r, "opencode serve listens on an unexpected address");
            return;
        }
        snprintf(r->base, sizeof(r->base), "http://127.0.0.1:%ld", port);
        log_info("opencode: server %d (pid %d) listening on port %ld", r->id, proc_pid(r->proc),
                 port);
        r->state = RUN_PROBING;
        probe(r);
        return;
    }
    log_debug("opencode: server %d: %s", r->id, line);
}

static void on_run_exit(void *ctx, int64_t status, int signo)
{
    oc_run_t *r = ctx;
    oc_srv_t *s = r->srv;
    char tail[OC_WHY_MAX], why[OC_WHY_MAX + 160];
    size_t n;
    const char *t = proc_stderr_tail(r->proc, &n);
    proc_tail_line(t, n, OC_WHY_MAX / 2, tail, sizeof(tail));
    if (r->why[0]) snprintf(why, sizeof(why), "%s", r->why);
    else if (signo) snprintf(why, sizeof(why), "opencode server killed by signal %d%s%s", signo,
                             tail[0] ? ": " : "", tail);
    else snprintf(why, sizeof(why), "opencode server exited with status %lld%s%s",
                  (long long)status, tail[0] ? ": " : "", tail);
    log_info("opencode: server %d (pid %d) exited (status %lld, signal %d)%s%s", r->id,
             proc_pid(r->proc), (long long)status, signo, r->state == RUN_STOPPING ? "" : ": ",
             r->state == RUN_STOPPING ? "" : why);
    r->exited = true;
    r->proc = NULL;
    if (s->run == r) s->run = NULL;

    /* every session of this run is gone (their requests are cancelled
     * before the HTTP client goes) */
    for (struct wkr *w = s->wkrs, *nx; w; w = nx) {
        nx = w->next;
        if (w->run != r) continue;
        if (w->stop_requested) wkr_gone(w, 0, 0, NULL);
        else wkr_gone(w, (int)status, signo, why);
    }
    r->state = RUN_STOPPING;
    hc_close(r->http);
    r->http = NULL;
    uv_timer_stop(&r->retry);
    uv_timer_stop(&r->deadline);
    uv_close((uv_handle_t *)&r->retry, run_handle_closed);
    uv_close((uv_handle_t *)&r->deadline, run_handle_closed);
}

/* {"autoupdate":false,...} for OPENCODE_CONFIG_CONTENT */
static char *config_content(char *const *env)
{
    const char *url = wkr_env_get(env, "ANTHROPIC_BASE_URL");
    const char *key = wkr_env_get(env, "ANTHROPIC_API_KEY");
    const char *model = wkr_env_get(env, "ANTHROPIC_MODEL");
    buf_t b;
    jw_t w;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kbool(&w, "autoupdate", false);
    jw_kstr(&w, "share", "disabled");
    jw_key(&w, "permission");
    jw_obj_begin(&w);
    jw_kstr(&w, "bash", "ask");
    jw_kstr(&w, "edit", "ask");
    jw_kstr(&w, "webfetch", "ask");
    jw_obj_end(&w);
    if ((url && url[0]) || (key && key[0])) {
        jw_key(&w, "provider");
        jw_obj_begin(&w);
        jw_key(&w, "anthropic");
        jw_obj_begin(&w);
        jw_key(&w, "options");
        jw_obj_begin(&w);
        if (url && url[0]) {
            /* the CLI's ANTHROPIC_BASE_URL is the API root; opencode's
             * baseURL includes the version */
            size_t n = strlen(url);
            while (n > 0 && url[n - 1] == '/') n--;
            char *v = malloc(n + 4);
            if (v) {
                memcpy(v, url, n);
                v[n] = '\0';
                if (n < 3 || strcmp(v + n - 3, "/v1") != 0) strcat(v, "/v1");
                jw_kstr(&w, "baseURL", v);
                free(v);
            }
        }
        if (key && key[0]) jw_kstr(&w, "apiKey", key);
        jw_obj_end(&w);
        jw_obj_end(&w);
        jw_obj_end(&w);
    }
    if (model && model[0]) {
        char m[300];
        snprintf(m, sizeof(m), "%s%s", strchr(model, '/') ? "" : "anthropic/", model);
        jw_kstr(&w, "model", m);
    }
    jw_obj_end(&w);
    if (jw_error(&w)) {
        buf_free(&b);
        return NULL;
    }
    return buf_steal(&b, NULL);
}

static int run_spawn(oc_srv_t *s, oc_run_t **out, char *err, size_t cap)
{
    const hp_config_t *cfg = s->cfg;
    const char *bin = cfg->opencode_bin[0] ? cfg->opencode_bin : "opencode";
    char cwd[sizeof(cfg->data_dir) + 16], pid_dir[sizeof(cfg->data_dir) + 16];
    char pw[2 * UUID_STR_LEN], u1[UUID_STR_LEN], u2[UUID_STR_LEN];

    *out = NULL;
    const char *why;
    if (policy_agent_bin(cfg, bin, &why) < 0) {
        snprintf(err, cap, "%s: %s", why, bin);
        return -EPERM;
    }
    snprintf(cwd, sizeof(cwd), "%s/opencode", cfg->data_dir[0] ? cfg->data_dir : ".");
    snprintf(pid_dir, sizeof(pid_dir), "%s/%s", cfg->data_dir[0] ? cfg->data_dir : ".",
             PROC_PID_DIR_NAME);
    if (mkdir(cwd, 0700) < 0 && errno != EEXIST) {
        snprintf(err, cap, "cannot create %s: %s", cwd, strerror(errno));
        return -errno;
    }
    /* a password nobody else knows: 244 random bits, hex */
    uuid_v4(u1);
    uuid_v4(u2);
    size_t o = 0;
    for (const char *p = u1; *p; p++) if (*p != '-') pw[o++] = *p;
    for (const char *p = u2; *p; p++) if (*p != '-') pw[o++] = *p;
    pw[o] = '\0';

    oc_run_t *r = calloc(1, sizeof(*r));
    if (!r) goto oom;
    r->srv = s;
    r->id = ++g_run_ids;
    snprintf(r->userpwd, sizeof(r->userpwd), "%s:%s", OC_USER, pw);
    oc_sse_init(&r->frames, 0);
    oc_parser_init(&r->parser);

    char **base = wkr_env_build(cfg, NULL, "opencode_server", NULL);
    char *content = base ? config_content(base) : NULL;
    wkr_env_free(base);
    if (!content) goto oom_r;
    char *kv[5] = {NULL, NULL, NULL, NULL, NULL};
    bool ok = asprintf(&kv[0], "OPENCODE_SERVER_PASSWORD=%s", pw) >= 0;
    ok = asprintf(&kv[1], "OPENCODE_SERVER_USERNAME=%s", OC_USER) >= 0 && ok;
    ok = asprintf(&kv[2], "OPENCODE_CONFIG_CONTENT=%s", content) >= 0 && ok;
    ok = (kv[3] = strdup("OPENCODE_DISABLE_AUTOUPDATE=1")) != NULL && ok;
    free(content);
    if (ok) r->env = wkr_env_build(cfg, NULL, "opencode_server", (const char *const *)kv);
    for (int i = 0; i < 4; i++) free(kv[i]);
    memset(pw, 0, sizeof(pw));
    if (!ok || !r->env) goto oom_r;
    const char *argv[] = {bin, "serve", "--port", "0", "--hostname", "127.0.0.1", NULL};
    r->argv = calloc(7, sizeof(char *));
    for (int i = 0; r->argv && argv[i]; i++)
        if (!(r->argv[i] = strdup(argv[i]))) goto oom_r;
    if (!r->argv) goto oom_r;
    r->http = hc_new(s->loop);
    if (!r->http) {
        snprintf(err, cap, "cannot start an HTTP client (libcurl)");
        oc_sse_free(&r->frames);
        wkr_strv_free(r->argv);
        wkr_strv_free(r->env);
        free(r);
        return -ENOMEM;
    }

    proc_opts_t po = {
        .file = r->argv[0],
        .argv = r->argv,
        .env = r->env,
        .cwd = cwd,
        .max_line = 64 * 1024,
        .stop_grace_ms = cfg->agent_stop_grace_ms,
        .stderr_keep = cfg->agent_stderr_keep ? cfg->agent_stderr_keep : 4096,
        .mem_limit = 0, /* shared by every opencode session: not an agent's limit */
        .pid_dir = pid_dir,
        .tag = "opencode-server",
        .ctx = r,
        .on_line = on_line,
        .on_exit = on_run_exit,
    };
    int rc = proc_spawn(&r->proc, s->loop, &po);
    if (rc < 0) {
        if (rc == -ENOENT)
            snprintf(err, cap, "opencode binary not found: %s (worker.opencode_bin)", bin);
        else if (rc == -EACCES)
            snprintf(err, cap, "opencode binary not executable: %s", bin);
        else
            snprintf(err, cap, "cannot start opencode (%s): %s", bin, strerror(-rc));
        hc_close(r->http);
        oc_sse_free(&r->frames);
        wkr_strv_free(r->argv);
        wkr_strv_free(r->env);
        free(r);
        return rc;
    }
    r->state = RUN_SPAWNED;
    uv_timer_init(s->loop, &r->retry);
    uv_timer_init(s->loop, &r->deadline);
    r->retry.data = r->deadline.data = r;
    r->open_handles = 2;
    uv_timer_start(&r->deadline, deadline_cb, OC_READY_TIMEOUT_MS, 0);
    s->run = r;
    log_info("opencode: server %d started (pid %d, %s)", r->id, proc_pid(r->proc), bin);
    *out = r;
    return 0;

oom_r:
    oc_sse_free(&r->frames);
    wkr_strv_free(r->argv);
    wkr_strv_free(r->env);
    free(r);
oom:
    snprintf(err, cap, "out of memory");
    return -ENOMEM;
}

static void run_kill(oc_run_t *r, const char *why)
{
    if (r->state == RUN_STOPPING || r->exited) return;
    snprintf(r->why, sizeof(r->why), "%s", why);
    r->state = RUN_STOPPING;
    hc_cancel(r->probe);
    r->probe = NULL;
    hc_cancel(r->sse);
    r->sse = NULL;
    if (r->srv->run == r) r->srv->run = NULL;
    proc_stop(r->proc);
}

/* The last session is gone: stop the process (no reason: a clean stop). */
static void run_stop(oc_run_t *r)
{
    if (r->state == RUN_STOPPING || r->exited) return;
    log_info("opencode: stopping server %d: no sessions left", r->id);
    run_kill(r, "");
}

/* ---- permission timeouts ------------------------------------------------ */

static void perm_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void send_reply(struct wkr *w, const char *id, bool allow, const char *reason)
{
    char path[OC_ID_MAX + 32];
    oc_run_t *r = w->run;
    if (!r || r->state != RUN_READY) return;
    snprintf(path, sizeof(path), "/permission/%s/reply", id);
    char *url = make_url(r, path, w->work_dir, NULL);
    buf_reset(&w->tmp);
    if (url && oc_map_reply_body(&w->tmp, allow, reason) == 0) {
        char what[OC_ID_MAX + 64];
        snprintf(what, sizeof(what), "permission reply %s (%s)", id, w->sid);
        fire_and_forget(r, url, w->tmp.p, w->tmp.len, what);
    }
    free(url);
}

static void perm_timer_cb(uv_timer_t *t)
{
    perm_timer_t *pt = t->data;
    struct wkr *w = pt->w;
    char id[OC_ID_MAX];
    snprintf(id, sizeof(id), "%s", pt->id);
    log_warn("opencode %s: permission request %s unanswered for %d ms: rejected", w->sid, id,
             w->perm_timeout_ms);
    /* take() closes this timer; pt stays valid until its close callback */
    if (oc_map_permission_take(&w->map, id) == 0)
        send_reply(w, id, false, "permission request timed out");
}

static void host_pending_added(void *ctx, const char *id)
{
    struct wkr *w = ctx;
    if (w->perm_timeout_ms <= 0) return;
    size_t n = strlen(id) + 1;
    perm_timer_t *pt = malloc(sizeof(*pt) + n);
    if (!pt) return;
    memcpy(pt->id, id, n);
    pt->w = w;
    uv_timer_init(w->loop, &pt->t);
    pt->t.data = pt;
    uv_timer_start(&pt->t, perm_timer_cb, (uint64_t)w->perm_timeout_ms, 0);
    pt->next = w->perms;
    w->perms = pt;
}

static void host_pending_removed(void *ctx, const char *id)
{
    struct wkr *w = ctx;
    for (perm_timer_t **pp = &w->perms; *pp; pp = &(*pp)->next) {
        perm_timer_t *pt = *pp;
        if (strcmp(pt->id, id) != 0) continue;
        *pp = pt->next;
        uv_timer_stop(&pt->t);
        uv_close((uv_handle_t *)&pt->t, perm_timer_closed);
        return;
    }
}

/* The agent asked the user something: nobody can answer through AEP in
 * this version, so the question is rejected at once rather than left to
 * hang the turn. */
static void host_question(void *ctx, const char *id)
{
    struct wkr *w = ctx;
    char path[OC_ID_MAX + 32], what[OC_ID_MAX + 80];
    oc_run_t *r = w->run;
    if (!r || r->state != RUN_READY) return;
    log_info("opencode %s: question %s rejected (questions are not supported)", w->sid, id);
    snprintf(path, sizeof(path), "/question/%s/reject", id);
    char *url = make_url(r, path, w->work_dir, NULL);
    snprintf(what, sizeof(what), "rejection of question %s (%s)", id, w->sid);
    if (url) fire_and_forget(r, url, NULL, 0, what);
    free(url);
}

/* ---- one session ---------------------------------------------------------- */

static void wkr_handle_closed(uv_handle_t *h)
{
    struct wkr *w = h->data;
    if (--w->open_handles == 0) {
        buf_free(&w->held);
        buf_free(&w->tmp);
        free(w->work_dir);
        free(w->model);
        free(w->system_prompt);
        free(w->perm_mode);
        free(w);
    }
}

/* The session is over: exactly one sink->exit, then the memory goes. */
static void wkr_gone(struct wkr *w, int status, int signo, const char *why)
{
    oc_srv_t *s = w->srv;
    if (w->gone) return;
    w->gone = true;
    hc_cancel(w->open_req);
    hc_cancel(w->prompt_req);
    w->open_req = w->prompt_req = NULL;
    if (w->in_table) hmap_del(&s->by_sid, w->oc_sid);
    w->in_table = false;
    for (int i = 0; i < OC_MAX_CHILDREN; i++)
        if (w->children[i][0] && hmap_get(&s->by_sid, w->children[i]) == w)
            hmap_del(&s->by_sid, w->children[i]);
    if (w->prev) w->prev->next = w->next;
    else if (s->wkrs == w) s->wkrs = w->next;
    if (w->next) w->next->prev = w->prev;
    w->prev = w->next = NULL;
    /* a server nobody uses any more is stopped */
    oc_run_t *r = w->run;
    if (r && !r->exited && r->state != RUN_STOPPING) {
        bool others = false;
        for (struct wkr *o = s->wkrs; o; o = o->next) others |= o->run == r && !o->gone;
        if (!others) run_stop(r);
    }

    oc_map_finish(&w->map, &w->sink); /* close a message cut off mid-stream */
    oc_map_free(&w->map);             /* closes the permission timers */
    log_info("opencode %s: session %s ended%s%s", w->sid, w->oc_sid[0] ? w->oc_sid : "(none)",
             why ? ": " : "", why ? why : "");
    w->sink.exit(w->sink.ctx, status, signo, why);
    uv_timer_stop(&w->settle);
    uv_timer_stop(&w->exit_timer);
    uv_close((uv_handle_t *)&w->settle, wkr_handle_closed);
    uv_close((uv_handle_t *)&w->exit_timer, wkr_handle_closed);
}

static void exit_cb(uv_timer_t *t)
{
    struct wkr *w = t->data;
    if (w->fail_why[0]) wkr_gone(w, -1, 0, w->fail_why);
    else wkr_gone(w, 0, 0, NULL);
}

/* The session cannot go on: it exits (asynchronously, never inside start()
 * or a caller's callback) with the reason; the core reports a crash. */
static void wkr_fail(struct wkr *w, const char *why)
{
    if (w->gone || w->exit_scheduled) return;
    w->exit_scheduled = true;
    snprintf(w->fail_why, sizeof(w->fail_why), "%s", why);
    log_warn("opencode %s: %s", w->sid, why);
    uv_timer_start(&w->exit_timer, exit_cb, 0, 0);
}

static void settle_cb(uv_timer_t *t)
{
    struct wkr *w = t->data;
    if (w->gone) return;
    oc_map_settle_end(&w->map);
    if (w->has_held) post_held(w);
}

static void on_prompt_done(void *ctx, const hc_result_t *res)
{
    struct wkr *w = ctx;
    w->prompt_req = NULL;
    if (!res->error && res->status >= 200 && res->status <= 299) return;
    char msg[OC_WHY_MAX + 64], tail[OC_WHY_MAX];
    proc_tail_line(res->body, res->len, OC_WHY_MAX / 2, tail, sizeof(tail));
    if (res->error) snprintf(msg, sizeof(msg), "opencode did not take the prompt: %s", res->error);
    else snprintf(msg, sizeof(msg), "opencode refused the prompt: HTTP %d%s%s", res->status,
                  tail[0] ? ": " : "", tail);
    log_warn("opencode %s: %s", w->sid, msg);
    oc_map_turn_fail(&w->map, "INTERNAL_ERROR", msg, now_ms(w), &w->sink);
}

static void post_held(struct wkr *w)
{
    char path[OC_ID_MAX + 32];
    oc_run_t *r = w->run;
    if (!w->has_held || w->state != W_READY || !r || r->state != RUN_READY ||
        oc_map_settling(&w->map) || oc_map_turn_active(&w->map))
        return;
    w->has_held = false;
    uv_timer_stop(&w->settle);
    buf_reset(&w->tmp);
    snprintf(path, sizeof(path), "/session/%s/prompt_async", w->oc_sid);
    char *url = make_url(r, path, w->work_dir, NULL);
    int rc = url ? oc_map_prompt_body(&w->tmp, w->held.p ? w->held.p : "", w->held.len, w->model,
                                      w->system_prompt)
                 : -ENOMEM;
    buf_reset(&w->held);
    oc_map_turn_begin(&w->map, now_ms(w));
    if (rc == 0) w->prompt_req = request(r, "POST", url, w->tmp.p, w->tmp.len, OC_REQ_TIMEOUT_MS,
                                         on_prompt_done, w);
    free(url);
    if (rc < 0 || !w->prompt_req)
        oc_map_turn_fail(&w->map, "INTERNAL_ERROR", "the prompt could not be sent", now_ms(w),
                         &w->sink);
}

static void session_ready(struct wkr *w, const char *oc_sid)
{
    snprintf(w->oc_sid, sizeof(w->oc_sid), "%s", oc_sid);
    if (hmap_put(&w->srv->by_sid, w->oc_sid, w) < 0) {
        wkr_fail(w, "out of memory");
        return;
    }
    w->in_table = true;
    w->state = W_READY;
    log_info("opencode %s: opencode session %s (%s)", w->sid, w->oc_sid,
             w->resume ? "resumed" : "new");
    if (w->run->version[0]) w->sink.info(w->sink.ctx, "agent_version", w->run->version);
    w->sink.info(w->sink.ctx, "agent_session_id", w->oc_sid);
    post_held(w);
}

/* "ses_..." from a Session object, or "" */
static void session_id_of(const json_doc_t *d, int obj, char *out, size_t cap)
{
    int id = json_type(d, obj) == JSON_OBJ ? json_obj_get(d, obj, "id") : -1;
    out[0] = '\0';
    if (json_type(d, id) == JSON_STR && json_str_copy(d, id, out, cap) < 0) out[0] = '\0';
}

static int parse_big(const hc_result_t *res, json_doc_t *d, json_tok_t **tok)
{
    int cap = 256, rc;
    *tok = NULL;
    do {
        free(*tok);
        cap *= 4;
        *tok = malloc((size_t)cap * sizeof(json_tok_t));
        if (!*tok) return -ENOMEM;
        rc = json_parse(d, res->body, res->len, *tok, cap);
    } while (rc == -E2BIG && cap < (1 << 20));
    return rc;
}

static void on_created(void *ctx, const hc_result_t *res)
{
    struct wkr *w = ctx;
    char id[OC_ID_MAX] = "", why[OC_WHY_MAX + 64], tail[OC_WHY_MAX];
    json_tok_t *tok = NULL;
    json_doc_t d;
    w->open_req = NULL;
    if (json_ok(res) && parse_big(res, &d, &tok) == 0) session_id_of(&d, 0, id, sizeof(id));
    free(tok);
    if (id[0] && !hmap_get(&w->srv->by_sid, id)) {
        session_ready(w, id);
        return;
    }
    proc_tail_line(res->body, res->len, OC_WHY_MAX / 2, tail, sizeof(tail));
    snprintf(why, sizeof(why), "cannot create an opencode session: %s%s%d %s",
             res->error ? res->error : "", res->error ? ", HTTP " : "HTTP ", res->status, tail);
    wkr_fail(w, why);
}

static void create_session(struct wkr *w)
{
    oc_run_t *r = w->run;
    char *url = make_url(r, "/session", w->work_dir, NULL);
    buf_reset(&w->tmp);
    if (url && oc_map_session_body(&w->tmp, w->title, w->perm_mode) == 0)
        w->open_req = request(r, "POST", url, w->tmp.p, w->tmp.len, OC_REQ_TIMEOUT_MS, on_created, w);
    free(url);
    if (!w->open_req) wkr_fail(w, "cannot request an opencode session");
}

/* resume: the newest session of ours (same title, same directory) */
static void on_lookup(void *ctx, const hc_result_t *res)
{
    struct wkr *w = ctx;
    char id[OC_ID_MAX] = "";
    json_tok_t *tok = NULL;
    json_doc_t d;
    w->open_req = NULL;
    if (json_ok(res) && parse_big(res, &d, &tok) == 0 && json_type(&d, 0) == JSON_ARR) {
        for (int i = 1; i < json_next(&d, 0) && !id[0]; i = json_next(&d, i)) {
            int t = json_obj_get(&d, i, "title"), dir = json_obj_get(&d, i, "directory");
            if (json_str_eq(&d, t, w->title) && json_str_eq(&d, dir, w->work_dir))
                session_id_of(&d, i, id, sizeof(id));
        }
    }
    free(tok);
    if (id[0] && !hmap_get(&w->srv->by_sid, id)) {
        session_ready(w, id);
        return;
    }
    log_info("opencode %s: no opencode session titled \"%s\" to resume: a new one", w->sid,
             w->title);
    w->resume = false;
    create_session(w);
}

static void wkr_open(struct wkr *w)
{
    oc_run_t *r = w->run;
    w->state = W_OPENING;
    if (!w->resume) {
        create_session(w);
        return;
    }
    buf_t extra;
    buf_init(&extra);
    buf_puts(&extra, "&roots=true&limit=50&search=");
    url_escape(&extra, w->title);
    char *url = make_url(r, "/session", w->work_dir, extra.p);
    buf_free(&extra);
    w->open_req = url ? request(r, "GET", url, NULL, 0, OC_REQ_TIMEOUT_MS, on_lookup, w) : NULL;
    free(url);
    if (!w->open_req) create_session(w);
}

/* ---- ops ------------------------------------------------------------------- */

static int oc_start(wkr_t **out, uv_loop_t *loop, const wkr_spec_t *spec, const wkr_sink_t *sink,
                    char *err, size_t cap)
{
    const hp_config_t *cfg = spec ? spec->cfg : NULL;
    oc_srv_t *s = &g_srv;
    struct stat st;
    char wd[PATH_MAX];

    *out = NULL;
    if (!cfg || !spec->session_id || !spec->session_id[0] || !sink || !sink->exit ||
        !sink->event || !sink->info) {
        snprintf(err, cap, "opencode adapter: incomplete start request");
        return -EINVAL;
    }
    const char *dir = spec->work_dir && spec->work_dir[0] ? spec->work_dir : cfg->default_work_dir;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || !realpath(dir, wd)) {
        snprintf(err, cap, "work dir not usable: %s", dir);
        return -ENOENT;
    }
    if (!s->init) {
        hmap_init(&s->by_sid);
        s->init = true;
    }
    s->loop = loop;
    s->cfg = cfg;

    /* the current server, or a new one (one that is stopping is no longer
     * current: a session starting meanwhile gets a new process at once) */
    oc_run_t *r = s->run;
    if (!r) {
        int rc = run_spawn(s, &r, err, cap);
        if (rc < 0) return rc;
    }

    struct wkr *w = calloc(1, sizeof(*w));
    if (w) w->work_dir = strdup(wd);
    if (!w || !w->work_dir) {
        free(w);
        snprintf(err, cap, "out of memory");
        if (r && !s->wkrs) run_stop(r);
        return -ENOMEM;
    }
    w->srv = s;
    w->run = r;
    w->loop = loop;
    w->sink = *sink;
    w->state = W_WAIT;
    w->resume = spec->resume;
    w->perm_timeout_ms = cfg->permission_timeout_ms;
    snprintf(w->sid, sizeof(w->sid), "%s", spec->session_id);
    snprintf(w->title, sizeof(w->title), "hotplex %s", spec->session_id);
    w->model = spec->model ? strdup(spec->model) : NULL;
    w->system_prompt = spec->system_prompt ? strdup(spec->system_prompt) : NULL;
    w->perm_mode = spec->permission_mode ? strdup(spec->permission_mode) : NULL;
    buf_init(&w->held);
    buf_init(&w->tmp);
    oc_host_t host = {.ctx = w,
                      .pending_added = host_pending_added,
                      .pending_removed = host_pending_removed,
                      .question = host_question};
    oc_map_init(&w->map, &host);
    uv_timer_init(loop, &w->settle);
    uv_timer_init(loop, &w->exit_timer);
    w->settle.data = w->exit_timer.data = w;
    w->open_handles = 2;
    w->next = s->wkrs;
    if (s->wkrs) s->wkrs->prev = w;
    s->wkrs = w;
    log_info("opencode %s: session starting (%s)", w->sid, spec->resume ? "resume" : "new");
    if (r->state == RUN_READY) wkr_open(w);
    *out = (wkr_t *)w;
    return 0;
}

static int oc_input(wkr_t *wk, const char *content, size_t len)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->stop_requested || w->gone) return -EPIPE;
    if (w->has_held || oc_map_turn_active(&w->map)) return -EBUSY; /* the core sends one at a time */
    buf_reset(&w->held);
    if (buf_append(&w->held, content, len) < 0) return -ENOMEM;
    w->has_held = true;
    if (oc_map_settling(&w->map) && !uv_is_active((uv_handle_t *)&w->settle))
        uv_timer_start(&w->settle, settle_cb, OC_SETTLE_MS, 0);
    post_held(w);
    return 0;
}

static int oc_permission(wkr_t *wk, const char *req_id, bool allow, const char *reason,
                         const char *updated, size_t updated_len)
{
    struct wkr *w = (struct wkr *)wk;
    (void)updated_len;
    if (w->gone) return -EPIPE;
    if (oc_map_permission_take(&w->map, req_id) < 0) return -ENOENT;
    if (updated) log_info("opencode %s: updated_input is not supported by opencode; ignored", w->sid);
    send_reply(w, req_id, allow, allow ? NULL : reason && reason[0] ? reason : "denied by user");
    return 0;
}

static void send_abort(struct wkr *w)
{
    char path[OC_ID_MAX + 32], what[128];
    oc_run_t *r = w->run;
    if (!r || r->state != RUN_READY || !w->oc_sid[0]) return;
    snprintf(path, sizeof(path), "/session/%s/abort", w->oc_sid);
    char *url = make_url(r, path, w->work_dir, NULL);
    snprintf(what, sizeof(what), "abort of %s", w->sid);
    if (url) fire_and_forget(r, url, NULL, 0, what);
    free(url);
}

static int oc_interrupt(wkr_t *wk)
{
    struct wkr *w = (struct wkr *)wk;
    if (w->stop_requested || w->gone) return -EPIPE;
    if (w->has_held) { /* never posted: the turn ends here */
        w->has_held = false;
        buf_reset(&w->held);
        oc_map_turn_abandon(&w->map, now_ms(w), &w->sink);
        return 0;
    }
    if (!oc_map_turn_active(&w->map)) return 0;
    oc_map_interrupt(&w->map);
    send_abort(w);
    return 0;
}

static void oc_stop(wkr_t *wk)
{
    struct wkr *w = (struct wkr *)wk;
    oc_srv_t *s = w->srv;
    if (w->stop_requested || w->gone) return;
    w->stop_requested = true;
    if (oc_map_turn_active(&w->map)) send_abort(w);
    w->has_held = false;
    hc_cancel(w->open_req);
    hc_cancel(w->prompt_req);
    w->open_req = w->prompt_req = NULL;

    oc_run_t *r = w->run;
    bool others = false;
    for (struct wkr *o = s->wkrs; o; o = o->next)
        others |= o != w && o->run == r && !o->stop_requested && !o->gone;
    if (!others && r->state != RUN_STOPPING) {
        /* the last session of this server: its exit waits for the process */
        run_stop(r);
        return;
    }
    if (r->state == RUN_STOPPING) return; /* exits with the process */
    if (!w->exit_scheduled) {
        w->exit_scheduled = true;
        uv_timer_start(&w->exit_timer, exit_cb, 0, 0);
    }
}

const wkr_ops_t wkr_opencode_server_ops = {
    .type = "opencode_server",
    .start = oc_start,
    .input = oc_input,
    .permission = oc_permission,
    .interrupt = oc_interrupt,
    .stop = oc_stop,
};
