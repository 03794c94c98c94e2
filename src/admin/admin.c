/*
 * admin.c - see admin.h.
 *
 * One request at a time per connection (HTTP/1.1 keep-alive): everything
 * about a request is decided in LWS_CALLBACK_HTTP while its headers are at
 * hand (rate limit, route, credentials, method, scope), and the answer is
 * sent once its body, if any, has been read and discarded (no route takes
 * a body; a body over ADMIN_MAX_BODY is answered 413). Answers that need
 * the store (a session's events) complete from the writable callback.
 *
 * Order of checks: 429 (rate limit) -> 401 (credentials, on every route but
 * health and readiness) -> 404 -> 405 -> 403 (scope) -> 413 (body) -> the
 * route. So nobody without a token learns which routes exist.
 *
 * Owns: the admin vhost's per-request state, the token table, the rate
 * limiter. Must never: echo a token, block the loop, or change a session
 * other than through sess_control (the same path a client's control takes).
 */
#include "admin/admin.h"

#include <libwebsockets.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "admin/metrics.h"
#include "admin/tokens.h"
#include "core/client.h"
#include "core/session.h"
#include "net/rest.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/json.h"
#include "util/log.h"

#define DRAIN_MAX (1024 * 1024) /* a body above this is not even read: 413 and close */
#define EVENTS_MAX_LIMIT 1000

struct admin {
    gateway_t *gw;
    struct lws_vhost *vh;
    int port;
    char host[64];
    admin_tokens_t *tokens; /* NULL: no tokens file, open (loopback only) */
    ratelimit_t *rate;      /* requests per client address */
};

typedef enum route {
    R_NONE = 0,
    R_HEALTH,
    R_READY,
    R_STATS,
    R_SESSIONS,
    R_SESSION,   /* GET detail, DELETE */
    R_TERMINATE, /* POST */
    R_EVENTS,
    R_CONFIG,
    R_RELOAD, /* POST */
    R_METRICS,
} route_t;

#define M(x) (1u << (x))

/* A response that completes later (a store read). If the connection goes
 * first, wsi becomes NULL and the read's callback frees it. */
typedef struct pending {
    struct lws *wsi;
    unsigned status;
    char *body;
    size_t len;
    bool ready;
    char sid[37];
    long long after;
    int64_t head;
} pending_t;

typedef struct apss {
    route_t route;
    int method;
    char id[40];
    char peer[64];
    unsigned err_status; /* decided error, 0: none */
    const char *err_code, *err_msg;
    char extra_name[24], extra_val[64]; /* one extra response header */
    uint64_t body_len;
    bool body_over;
    pending_t *req;
} apss_t;

bool admin_is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0 ||
           strcmp(host, "::1") == 0;
}

/* ---- responses ----------------------------------------------------------- */

static int reply(struct lws *wsi, const apss_t *p, unsigned status, const char *type,
                 const char *body, size_t len, bool close)
{
    unsigned char hdr[LWS_PRE + 768], *start = hdr + LWS_PRE, *h = start,
                                      *end = hdr + sizeof(hdr) - 1;
    if (lws_add_http_common_headers(wsi, status, type, len, &h, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &h, end))
        return -1;
    if (p && p->extra_name[0] &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)p->extra_name,
                                    (const unsigned char *)p->extra_val, (int)strlen(p->extra_val),
                                    &h, end))
        return -1;
    if (close && lws_add_http_header_by_name(wsi, (const unsigned char *)"connection:",
                                             (const unsigned char *)"close", 5, &h, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &h, end)) return -1;
    unsigned char *b = malloc(LWS_PRE + len + 1);
    if (!b) return -1;
    memcpy(b + LWS_PRE, body, len);
    int n = lws_write(wsi, b + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
    free(b);
    if (n < (int)len || close) return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int reply_buf(struct lws *wsi, const apss_t *p, unsigned status, buf_t *b)
{
    int rc = reply(wsi, p, status, "application/json", b->p ? b->p : "", b->len, false);
    buf_free(b);
    return rc;
}

static void error_body(buf_t *b, const char *code, const char *msg)
{
    jw_t w;
    jw_init(&w, b);
    jw_obj_begin(&w);
    jw_key(&w, "error");
    jw_obj_begin(&w);
    jw_kstr(&w, "code", code);
    jw_kstr(&w, "message", msg);
    jw_obj_end(&w);
    jw_obj_end(&w);
}

static int reply_error(struct lws *wsi, const apss_t *p, unsigned status, const char *code,
                       const char *msg)
{
    buf_t b;
    buf_init(&b);
    error_body(&b, code, msg);
    return reply_buf(wsi, p, status, &b);
}

/* Decide the answer now; it is sent once the request body was read. */
static void decide(apss_t *p, unsigned status, const char *code, const char *msg)
{
    if (p->err_status) return; /* the first decision stands */
    p->err_status = status;
    p->err_code = code;
    p->err_msg = msg;
}

static void set_header(apss_t *p, const char *name, const char *val)
{
    snprintf(p->extra_name, sizeof(p->extra_name), "%s", name);
    snprintf(p->extra_val, sizeof(p->extra_val), "%s", val);
}

/* ---- request parsing ------------------------------------------------------ */

static long long urlarg_ll(struct lws *wsi, const char *name, long long def, bool *bad)
{
    char buf[64];
    const char *v = lws_get_urlarg_by_name(wsi, name, buf, sizeof(buf));
    if (!v) return def;
    char *end;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end) *bad = true;
    return x;
}

/* Routes: which methods a path takes. */
static route_t match(const char *path, char *id, size_t idcap, unsigned *methods)
{
    static const struct {
        const char *path;
        route_t r;
        unsigned m;
    } fixed[] = {
        {"/admin/health", R_HEALTH, M(LWSHUMETH_GET)},
        {"/admin/ready", R_READY, M(LWSHUMETH_GET)},
        {"/admin/stats", R_STATS, M(LWSHUMETH_GET)},
        {"/admin/sessions", R_SESSIONS, M(LWSHUMETH_GET)},
        {"/admin/config", R_CONFIG, M(LWSHUMETH_GET)},
        {"/admin/reload", R_RELOAD, M(LWSHUMETH_POST)},
        {"/metrics", R_METRICS, M(LWSHUMETH_GET)},
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (strcmp(path, fixed[i].path) == 0) {
            *methods = fixed[i].m;
            return fixed[i].r;
        }
    static const char pre[] = "/admin/sessions/";
    if (strncmp(path, pre, sizeof(pre) - 1) != 0) return R_NONE;
    const char *rest = path + sizeof(pre) - 1;
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n == 0 || n >= idcap) return R_NONE;
    memcpy(id, rest, n);
    id[n] = '\0';
    if (!slash) {
        *methods = M(LWSHUMETH_GET) | M(LWSHUMETH_DELETE);
        return R_SESSION;
    }
    if (strcmp(slash, "/terminate") == 0) {
        *methods = M(LWSHUMETH_POST);
        return R_TERMINATE;
    }
    if (strcmp(slash, "/events") == 0) {
        *methods = M(LWSHUMETH_GET);
        return R_EVENTS;
    }
    return R_NONE;
}

static void allow_header(apss_t *p, unsigned methods)
{
    static const char *const names[] = {"GET", "POST", "OPTIONS", "PUT", "PATCH", "DELETE"};
    char v[64] = "";
    for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (methods & M(i)) {
            if (v[0]) strcat(v, ", ");
            strcat(v, names[i]);
        }
    set_header(p, "allow:", v);
}

/* The scopes the request's bearer token grants, or 0 with the error decided. */
static unsigned authenticate(admin_t *a, struct lws *wsi, apss_t *p)
{
    gateway_t *gw = a->gw;
    if (!a->tokens) return ADMIN_SCOPE_READ | ADMIN_SCOPE_WRITE;
    uint64_t now = clock_mono_ns() / 1000000;
    if (rl_blocked(gw->auth_failures, p->peer, now)) {
        char s[24];
        snprintf(s, sizeof(s), "%llu",
                 (unsigned long long)(rl_blocked_for(gw->auth_failures, p->peer, now) / 1000 + 1));
        set_header(p, "retry-after:", s);
        gw->ctr.admin_rate_limited++;
        decide(p, 429, "RATE_LIMITED", "too many failed attempts; try again later");
        return 0;
    }
    char hdr[ADMIN_TOKEN_MAX + 16];
    int total = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
    if (total <= 0) {
        set_header(p, "www-authenticate:", "Bearer");
        decide(p, 401, "UNAUTHORIZED", "an admin token is required (Authorization: Bearer)");
        return 0;
    }
    unsigned scopes = 0;
    if (total < (int)sizeof(hdr) &&
        lws_hdr_copy(wsi, hdr, sizeof(hdr), WSI_TOKEN_HTTP_AUTHORIZATION) == total &&
        strncasecmp(hdr, "Bearer ", 7) == 0) {
        const char *t = hdr + 7;
        while (*t == ' ')
            t++;
        scopes = admin_tokens_check(a->tokens, t, strlen(t));
    }
    OPENSSL_cleanse(hdr, sizeof(hdr));
    if (!scopes) {
        rl_fail(gw->auth_failures, p->peer, now);
        gw->ctr.admin_auth_failed++;
        log_info("admin: invalid token from %s", p->peer);
        set_header(p, "www-authenticate:", "Bearer error=\"invalid_token\"");
        decide(p, 401, "UNAUTHORIZED", "invalid admin token");
    }
    return scopes;
}

/* Everything but the body: rate limit, credentials, route, method, scope. */
static void classify(admin_t *a, struct lws *wsi, apss_t *p, const char *path)
{
    gateway_t *gw = a->gw;
    if (!rl_allow(a->rate, p->peer, clock_mono_ns() / 1000000)) {
        gw->ctr.admin_rate_limited++;
        set_header(p, "retry-after:", "1");
        decide(p, 429, "RATE_LIMITED", "too many requests; slow down");
        return;
    }
    unsigned methods = 0;
    p->route = match(path, p->id, sizeof(p->id), &methods);
    bool open = p->route == R_HEALTH || p->route == R_READY;
    unsigned scopes = open ? ADMIN_SCOPE_READ : authenticate(a, wsi, p);
    if (p->err_status) return;
    if (p->route == R_NONE) {
        decide(p, 404, "NOT_FOUND", "no such route");
        return;
    }
    if (p->method < 0 || !(methods & M(p->method))) {
        allow_header(p, methods);
        decide(p, 405, "METHOD_NOT_ALLOWED", "method not allowed on this route");
        return;
    }
    unsigned need = p->method == LWSHUMETH_GET ? ADMIN_SCOPE_READ : ADMIN_SCOPE_WRITE;
    if (!open && !(scopes & need))
        decide(p, 403, "FORBIDDEN",
               need == ADMIN_SCOPE_WRITE ? "this token lacks the write scope"
                                         : "this token lacks the read scope");
}

/* ---- routes --------------------------------------------------------------- */

static int64_t uptime_s(const gateway_t *gw)
{
    return (clock_unix_ms() - gw->started_ms) / 1000;
}

static int do_health(struct lws *wsi, apss_t *p, gateway_t *gw)
{
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "status", gw->shutting_down ? "stopping" : "ok");
    jw_kstr(&w, "version", HOTPLEX_VERSION);
    jw_kint(&w, "uptime_s", uptime_s(gw));
    jw_kint(&w, "started_ms", gw->started_ms);
    jw_obj_end(&w);
    return reply_buf(wsi, p, 200, &b);
}

static int do_ready(struct lws *wsi, apss_t *p, gateway_t *gw)
{
    const char *why = !gw->store ? "store not open" : gw->shutting_down ? "shutting down" : NULL;
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kbool(&w, "ready", why == NULL);
    jw_kstr(&w, "store", gw->store ? "open" : "closed");
    if (why) jw_kstr(&w, "reason", why);
    jw_obj_end(&w);
    return reply_buf(wsi, p, why ? 503 : 200, &b);
}

static void count_states(gateway_t *gw, int64_t out[5])
{
    memset(out, 0, 5 * sizeof(out[0]));
    for (hmap_iter_t it = {0}; hmap_next(&gw->sessions, &it);) {
        const sess_t *s = it.value;
        if ((unsigned)s->state < 5) out[s->state]++;
    }
}

static int do_stats(struct lws *wsi, apss_t *p, gateway_t *gw)
{
    const gw_counters_t *c = &gw->ctr;
    int64_t by_state[5];
    count_states(gw, by_state);
    int64_t users = 0;
    for (hmap_iter_t it = {0}; hmap_next(&gw->users, &it);) {
        const gw_user_t *u = it.value;
        if (u->sessions > 0 || u->agents > 0) users++;
    }
    store_stats_t st;
    memset(&st, 0, sizeof(st));
    if (gw->store) store_get_stats(gw->store, &st);
    uint64_t rss, fds;
    metrics_process(&rss, &fds);

    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "version", HOTPLEX_VERSION);
    jw_kint(&w, "uptime_s", uptime_s(gw));
    jw_kint(&w, "connections", gw->nclients);
    jw_kuint(&w, "connections_total", c->conns_total);
    jw_key(&w, "sessions");
    jw_obj_begin(&w);
    int64_t live = 0;
    for (int i = 0; i < 5; i++) {
        jw_kint(&w, sess_state_name((sess_state_t)i), by_state[i]);
        if (i != SESS_DELETED) live += by_state[i];
    }
    jw_kint(&w, "total", live);
    jw_obj_end(&w);
    jw_kint(&w, "agents", gw->nagents);
    jw_kint(&w, "users", users);
    jw_kuint(&w, "events_committed", c->events_committed);
    jw_kuint(&w, "frames_in", c->frames_in);
    jw_kuint(&w, "frames_out", c->frames_out);
    jw_kuint(&w, "bytes_out", c->bytes_out);
    jw_kuint(&w, "init_ok", c->init_ok);
    jw_kuint(&w, "init_failed", c->init_failed);
    jw_kuint(&w, "slow_client_disconnects", c->slow_closes);
    jw_kuint(&w, "merged_deltas", c->merged_deltas);
    jw_kuint(&w, "auth_failures", c->auth_failed + c->admin_auth_failed);
    jw_kuint(&w, "rate_limited", c->rate_limited + c->admin_rate_limited);
    jw_key(&w, "store");
    jw_obj_begin(&w);
    jw_kuint(&w, "batches", st.batches);
    jw_kuint(&w, "events", st.events);
    jw_key(&w, "batch_seconds_sum");
    jw_double(&w, (double)st.batch_ns_total / 1e9);
    jw_kuint(&w, "max_batch", st.max_batch);
    jw_kuint(&w, "failed_batches", st.failed_batches);
    jw_kuint(&w, "lost_events", st.lost_events);
    jw_kuint(&w, "journal_writes", st.journal_writes);
    jw_kuint(&w, "journal_bytes", st.journal_bytes);
    jw_kuint(&w, "journal_errors", st.journal_errors);
    jw_obj_end(&w);
    jw_key(&w, "process");
    jw_obj_begin(&w);
    jw_kuint(&w, "resident_memory_bytes", rss);
    jw_kuint(&w, "open_fds", fds);
    jw_obj_end(&w);
    jw_obj_end(&w);
    return reply_buf(wsi, p, 200, &b);
}

static void write_session(jw_t *w, const sess_t *s, bool detail)
{
    jw_obj_begin(w);
    jw_kstr(w, "id", s->id);
    jw_kstr(w, "owner", s->owner);
    jw_kstr(w, "bot_id", s->bot_id);
    jw_kstr(w, "worker_type", s->worker_type);
    jw_kstr(w, "state", sess_state_name(s->state));
    jw_kstr(w, "work_dir", s->work_dir);
    jw_kint(w, "seq", s->stream.seq);
    jw_kint(w, "clients", s->nclients);
    jw_kbool(w, "agent_running", s->agent != NULL);
    jw_kint(w, "created_ms", s->created_ms);
    jw_kint(w, "updated_ms", s->updated_ms);
    if (detail) {
        jw_kstr(w, "session_key", s->client_key);
        jw_kint(w, "durable_seq", s->stream.durable);
        jw_kint(w, "stored_seq", s->stream.stored);
        jw_kstr(w, "agent_model", s->agent_model);
        jw_kbool(w, "agent_resumable", s->agent_started);
        if (s->agent)
            jw_kint(w, "agent_started_ms", s->agent_started_ms);
        else
            jw_knull(w, "agent_started_ms");
        jw_kbool(w, "agent_stopping", s->agent && s->after_stop != AFTER_STOP_NONE);
        jw_kbool(w, "turn_active", s->turn_active);
        jw_kbool(w, "awaiting_permission", s->awaiting_permission);
        jw_kint(w, "queued_inputs", s->inq_len);
        jw_kint(w, "last_activity_ms", s->last_activity_ms);
        jw_key(w, "connections");
        jw_arr_begin(w);
        for (const client_t *c = s->clients; c; c = c->s_next) {
            jw_obj_begin(w);
            jw_kstr(w, "peer", c->peer);
            jw_kstr(w, "user", c->user);
            jw_kint(w, "connected_ms", c->connected_ms);
            jw_kint(w, "last_sent_seq", c->last_sent);
            jw_obj_end(w);
        }
        jw_arr_end(w);
    }
    jw_obj_end(w);
}

/* Stable order: created_ms, then id. */
static int by_created(const void *x, const void *y)
{
    const sess_t *a = *(const sess_t *const *)x, *b = *(const sess_t *const *)y;
    if (a->created_ms != b->created_ms) return a->created_ms < b->created_ms ? -1 : 1;
    return strcmp(a->id, b->id);
}

/* cursor: "<created_ms>.<id>" of the last session of the previous page. */
static bool after_cursor(const sess_t *s, int64_t cms, const char *cid)
{
    if (s->created_ms != cms) return s->created_ms > cms;
    return strcmp(s->id, cid) > 0;
}

static int do_sessions(struct lws *wsi, apss_t *p, gateway_t *gw)
{
    char user[160], state[32], cursor[96], bot[160];
    const char *fu = lws_get_urlarg_by_name(wsi, "user=", user, sizeof(user));
    const char *fb = lws_get_urlarg_by_name(wsi, "bot=", bot, sizeof(bot));
    const char *fs = lws_get_urlarg_by_name(wsi, "state=", state, sizeof(state));
    const char *fc = lws_get_urlarg_by_name(wsi, "cursor=", cursor, sizeof(cursor));
    bool bad = false;
    long long limit = urlarg_ll(wsi, "limit=", ADMIN_PAGE_DEFAULT, &bad);
    if (bad || limit < 1 || limit > ADMIN_PAGE_MAX)
        return reply_error(wsi, p, 400, "INVALID_REQUEST", "limit must be an integer 1..1000");
    int want_state = -1; /* -1: every state but deleted; -2: all */
    if (fs && *fs) {
        if (strcmp(fs, "all") == 0)
            want_state = -2;
        else if ((want_state = sess_state_parse(fs)) < 0)
            return reply_error(wsi, p, 400, "INVALID_REQUEST",
                               "state must be created, running, idle, terminated, deleted or all");
    }
    int64_t cms = 0;
    char cid[40] = "";
    if (fc && *fc) {
        char *dot;
        long long v = strtoll(fc, &dot, 10);
        if (dot == fc || *dot != '.' || strlen(dot + 1) >= sizeof(cid) || v < 0)
            return reply_error(wsi, p, 400, "INVALID_REQUEST", "malformed cursor");
        cms = v;
        snprintf(cid, sizeof(cid), "%s", dot + 1);
    }
    size_t cap = gw->sessions.count ? gw->sessions.count : 1, n = 0;
    const sess_t **v = malloc(cap * sizeof(*v));
    if (!v) return reply_error(wsi, p, 500, "INTERNAL_ERROR", "out of memory");
    for (hmap_iter_t it = {0}; hmap_next(&gw->sessions, &it) && n < cap;) {
        const sess_t *s = it.value;
        if (want_state == -1 ? s->state == SESS_DELETED
                             : want_state >= 0 && (int)s->state != want_state)
            continue;
        if (fu && strcmp(s->owner, fu) != 0) continue;
        if (fb && strcmp(s->bot_id, fb) != 0) continue;
        v[n++] = s;
    }
    qsort(v, n, sizeof(*v), by_created);
    size_t i = 0;
    if (fc && *fc)
        while (i < n && !after_cursor(v[i], cms, cid))
            i++;
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "sessions");
    jw_arr_begin(&w);
    size_t end = i + (size_t)limit < n ? i + (size_t)limit : n;
    for (size_t k = i; k < end; k++)
        write_session(&w, v[k], false);
    jw_arr_end(&w);
    jw_kint(&w, "total", (int64_t)n);
    if (end < n && end > i) {
        char next[96];
        snprintf(next, sizeof(next), "%lld.%s", (long long)v[end - 1]->created_ms, v[end - 1]->id);
        jw_kstr(&w, "next_cursor", next);
    } else {
        jw_knull(&w, "next_cursor");
    }
    jw_obj_end(&w);
    free(v);
    return reply_buf(wsi, p, 200, &b);
}

static int do_session(struct lws *wsi, apss_t *p, gateway_t *gw)
{
    sess_t *s = sess_find(gw, p->id);
    if (!s) return reply_error(wsi, p, 404, "NOT_FOUND", "session not found");
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    write_session(&w, s, true);
    return reply_buf(wsi, p, 200, &b);
}

static int do_control(struct lws *wsi, apss_t *p, gateway_t *gw, const char *action)
{
    sess_t *s = sess_find(gw, p->id);
    if (!s || s->state == SESS_DELETED)
        return reply_error(wsi, p, 404, "NOT_FOUND", "session not found");
    char err[256];
    aep_code_t rc = sess_control(s, action, err, sizeof(err));
    if (rc != AEP_OK) return reply_error(wsi, p, 500, "INTERNAL_ERROR", err);
    log_info("admin %s: %s session %s (owner %s)", p->peer, action, s->id, s->owner);
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "session_id", s->id);
    jw_kstr(&w, "action", action);
    jw_kstr(&w, "state", sess_state_name(s->state));
    jw_kbool(&w, "agent_stopping", s->agent != NULL);
    jw_obj_end(&w);
    return reply_buf(wsi, p, 200, &b);
}

static void on_events(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                      const size_t *lens, int64_t oldest)
{
    pending_t *r = ctx;
    if (!r->wsi) { /* the client went away meanwhile */
        free(r);
        return;
    }
    buf_t b;
    buf_init(&b);
    if (rc < 0) {
        r->status = 500;
        error_body(&b, "INTERNAL_ERROR", "reading the event log failed");
    } else {
        r->status = 200;
        rest_events_page(&b, r->sid, r->after, r->head, oldest, n, seqs, json, lens);
    }
    r->body = buf_steal(&b, &r->len);
    r->ready = true;
    lws_callback_on_writable(r->wsi);
}

static int do_events(struct lws *wsi, apss_t *p, gateway_t *gw)
{
    sess_t *s = sess_find(gw, p->id);
    if (!s) return reply_error(wsi, p, 404, "NOT_FOUND", "session not found");
    bool bad = false;
    long long after = urlarg_ll(wsi, "after=", 0, &bad);
    long long limit = urlarg_ll(wsi, "limit=", 100, &bad);
    if (bad || after < 0 || limit < 1 || limit > EVENTS_MAX_LIMIT)
        return reply_error(wsi, p, 400, "INVALID_REQUEST",
                           "after must be an integer >= 0 and limit 1..1000");
    pending_t *r = calloc(1, sizeof(*r));
    if (!r) return reply_error(wsi, p, 500, "INTERNAL_ERROR", "out of memory");
    r->wsi = wsi;
    r->after = after;
    r->head = s->stream.durable;
    snprintf(r->sid, sizeof(r->sid), "%s", s->id);
    p->req = r;
    store_events_read(gw->store, s->id, after, (int)limit, on_events, r);
    return 0; /* answered from the writable callback */
}

static void config_item(void *arg, const char *key, const char *value, const char *desc,
                        bool secret)
{
    (void)desc;
    jw_t *w = arg;
    jw_kstr(w, key, secret && value[0] ? "***" : value);
}

static int do_config(struct lws *wsi, apss_t *p, gateway_t *gw)
{
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "config");
    jw_obj_begin(&w);
    int rc = config_foreach(gw->cfg, config_item, &w);
    jw_obj_end(&w);
    jw_obj_end(&w);
    if (rc < 0 || jw_error(&w)) {
        buf_free(&b);
        return reply_error(wsi, p, 500, "INTERNAL_ERROR", "out of memory");
    }
    return reply_buf(wsi, p, 200, &b);
}

static int do_reload(struct lws *wsi, apss_t *p, gateway_t *gw)
{
    if (!gw->reload) return reply_error(wsi, p, 500, "INTERNAL_ERROR", "reload not available");
    char err[512] = "";
    log_info("admin %s: reload requested", p->peer);
    int n = gw->reload(gw, err, sizeof(err));
    if (n < 0) return reply_error(wsi, p, 500, "RELOAD_FAILED", err);
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kbool(&w, "reloaded", true);
    jw_kint(&w, "changed", n);
    jw_obj_end(&w);
    return reply_buf(wsi, p, 200, &b);
}

static int do_metrics(struct lws *wsi, apss_t *p, gateway_t *gw)
{
    buf_t b;
    buf_init(&b);
    if (metrics_render(gw, &b) < 0) {
        buf_free(&b);
        return reply_error(wsi, p, 500, "INTERNAL_ERROR", "out of memory");
    }
    int rc = reply(wsi, p, 200, METRICS_CONTENT_TYPE, b.p ? b.p : "", b.len, false);
    buf_free(&b);
    return rc;
}

static int respond(admin_t *a, struct lws *wsi, apss_t *p)
{
    gateway_t *gw = a->gw;
    if (p->err_status) return reply_error(wsi, p, p->err_status, p->err_code, p->err_msg);
    if (p->body_over) {
        char msg[64];
        snprintf(msg, sizeof(msg), "request body over %d bytes", ADMIN_MAX_BODY);
        return reply_error(wsi, p, 413, "PAYLOAD_TOO_LARGE", msg);
    }
    switch (p->route) {
    case R_HEALTH:
        return do_health(wsi, p, gw);
    case R_READY:
        return do_ready(wsi, p, gw);
    case R_STATS:
        return do_stats(wsi, p, gw);
    case R_SESSIONS:
        return do_sessions(wsi, p, gw);
    case R_SESSION:
        return p->method == LWSHUMETH_DELETE ? do_control(wsi, p, gw, "delete")
                                             : do_session(wsi, p, gw);
    case R_TERMINATE:
        return do_control(wsi, p, gw, "terminate");
    case R_EVENTS:
        return do_events(wsi, p, gw);
    case R_CONFIG:
        return do_config(wsi, p, gw);
    case R_RELOAD:
        return do_reload(wsi, p, gw);
    case R_METRICS:
        return do_metrics(wsi, p, gw);
    case R_NONE:
        break;
    }
    return reply_error(wsi, p, 404, "NOT_FOUND", "no such route");
}

static int too_large_now(struct lws *wsi, apss_t *p)
{
    char msg[64];
    snprintf(msg, sizeof(msg), "request body over %d bytes", ADMIN_MAX_BODY);
    buf_t b;
    buf_init(&b);
    error_body(&b, "PAYLOAD_TOO_LARGE", msg);
    p->extra_name[0] = '\0';
    reply(wsi, p, 413, "application/json", b.p ? b.p : "", b.len, true);
    buf_free(&b);
    return -1; /* the rest of the body is not read: drop the connection */
}

static int on_http(admin_t *a, struct lws *wsi, apss_t *p, const char *path)
{
    memset(p, 0, sizeof(*p));
    char *uri;
    int ulen;
    p->method = lws_http_get_uri_and_method(wsi, &uri, &ulen);
    lws_get_peer_simple(wsi, p->peer, sizeof(p->peer));
    classify(a, wsi, p, path ? path : "");
    char cl[32];
    uint64_t expect = 0;
    if (lws_hdr_copy(wsi, cl, sizeof(cl), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0)
        expect = strtoull(cl, NULL, 10);
    if (expect > DRAIN_MAX) return too_large_now(wsi, p);
    if (expect > ADMIN_MAX_BODY) p->body_over = true;
    if (expect > 0) return 0; /* answered at LWS_CALLBACK_HTTP_BODY_COMPLETION */
    return respond(a, wsi, p);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    apss_t *p = user;
    admin_t *a = NULL;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return 1; /* plain HTTP only: no WebSocket upgrades here */
    case LWS_CALLBACK_HTTP:
        a = lws_vhost_user(lws_get_vhost(wsi));
        return a && p ? on_http(a, wsi, p, in) : -1;
    case LWS_CALLBACK_HTTP_BODY:
        if (!p) return -1;
        p->body_len += len;
        if (p->body_len > DRAIN_MAX) return too_large_now(wsi, p);
        if (p->body_len > ADMIN_MAX_BODY) p->body_over = true;
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        a = lws_vhost_user(lws_get_vhost(wsi));
        return a && p ? respond(a, wsi, p) : -1;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (p && p->req && p->req->ready) {
            pending_t *r = p->req;
            p->req = NULL;
            int rc = reply(wsi, p, r->status, "application/json", r->body, r->len, false);
            free(r->body);
            free(r);
            return rc;
        }
        return 0;
    case LWS_CALLBACK_CLOSED_HTTP:
        if (p && p->req) {
            if (p->req->ready) {
                free(p->req->body);
                free(p->req);
            } else {
                p->req->wsi = NULL; /* the store read frees it */
            }
            p->req = NULL;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols protocols[] = {
    {"hotplex-admin", callback, sizeof(apss_t), 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ---- lifecycle ------------------------------------------------------------ */

static int load_tokens(const hp_config_t *cfg, const char *host, admin_tokens_t **out, char *err,
                       size_t cap)
{
    *out = NULL;
    if (cfg->admin_tokens_file[0]) return admin_tokens_load(out, cfg->admin_tokens_file, err, cap);
    if (!admin_is_loopback(host)) {
        snprintf(err, cap,
                 "refusing an open admin API on non-loopback address %s: set admin.tokens_file "
                 "or listen on 127.0.0.1",
                 host);
        return -1;
    }
    return 0;
}

admin_t *admin_start(gateway_t *gw, struct lws_context *ctx, char *err, size_t cap)
{
    const hp_config_t *cfg = gw->cfg;
    admin_t *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    a->gw = gw;
    snprintf(a->host, sizeof(a->host), "%s", cfg->admin_listen_host);
    if (load_tokens(cfg, a->host, &a->tokens, err, cap) < 0) {
        free(a);
        return NULL;
    }
    a->rate = rl_new(ADMIN_RATE_PER_S, ADMIN_RATE_BURST, 4096);
    if (!a->rate) {
        snprintf(err, cap, "out of memory");
        admin_free(a);
        return NULL;
    }
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    info.port = cfg->admin_listen_port;
    info.iface = a->host;
    info.protocols = protocols;
    info.vhost_name = "admin";
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    info.user = a;
    a->vh = lws_create_vhost(ctx, &info);
    if (!a->vh) {
        snprintf(err, cap, "admin API: cannot listen on %s:%d", a->host, cfg->admin_listen_port);
        admin_free(a);
        return NULL;
    }
    a->port = lws_get_vhost_listen_port(a->vh);
    if (a->tokens)
        log_info("admin API on http://%s:%d (%zu token(s) from %s)", a->host, a->port,
                 admin_tokens_count(a->tokens), cfg->admin_tokens_file);
    else
        log_warn("admin API on http://%s:%d is OPEN: no admin.tokens_file configured, anyone "
                 "who can reach this loopback address can terminate sessions",
                 a->host, a->port);
    return a;
}

int admin_port(const admin_t *a)
{
    return a->port;
}

int admin_reload(admin_t *a, const hp_config_t *cfg, char *err, size_t cap)
{
    admin_tokens_t *t = NULL;
    if (load_tokens(cfg, a->host, &t, err, cap) < 0) return -1;
    admin_tokens_free(a->tokens);
    a->tokens = t;
    if (t)
        log_info("admin tokens reloaded: %zu token(s) from %s", admin_tokens_count(t),
                 cfg->admin_tokens_file);
    else
        log_warn("admin API is OPEN (loopback only): no admin.tokens_file configured");
    return 0;
}

void admin_free(admin_t *a)
{
    if (!a) return;
    admin_tokens_free(a->tokens);
    rl_free(a->rate);
    free(a);
}
