/*
 * http_client.c - libcurl multi-socket on libuv (see http_client.h).
 *
 * The classic integration: curl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION -> one uv_poll_t each) and when to wake it
 * (CURLMOPT_TIMERFUNCTION -> one uv_timer_t); libuv tells curl what
 * happened (curl_multi_socket_action); finished transfers are reaped with
 * curl_multi_info_read.
 *
 * libcurl forbids calling multi functions from inside its own callbacks,
 * and a streaming request's on_data runs inside the write callback. So
 * while curl is on the stack (depth > 0) hc_request only queues the new
 * handle and hc_cancel only marks the request; both are applied as soon as
 * curl_multi_socket_action returns. on_done always runs with curl off the
 * stack.
 */
#include "util/http_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/log.h"

typedef struct hc_sock {
    uv_poll_t poll;
    hc_t *c;
    curl_socket_t fd;
    struct hc_sock *prev, *next;
} hc_sock_t;

struct hc_req {
    hc_t *c;
    CURL *easy;
    struct curl_slist *hdrs;
    hc_req_t *prev, *next;
    buf_t body;
    size_t max_body;
    bool (*on_data)(void *ctx, hc_req_t *r, int status, const char *p, size_t n);
    void (*on_done)(void *ctx, const hc_result_t *res);
    void *ctx;
    bool added;     /* handed to the multi handle */
    bool cancelled; /* no callbacks any more; freed at the next safe point */
    bool in_done;   /* on_done is running */
    bool too_big;
    bool refused; /* on_data returned false */
    char errbuf[CURL_ERROR_SIZE];
};

struct hc {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    hc_req_t *reqs;
    hc_sock_t *socks;
    size_t nreqs;
    int depth;        /* curl_multi_* calls on the stack */
    bool closing;     /* hc_close was called */
    bool closed;      /* curl torn down, handles closing */
    int open_handles; /* libuv handles not yet closed */
};

static bool g_curl_ready;

/* ---- helpers ----------------------------------------------------------- */

static void req_unlink(hc_req_t *r)
{
    hc_t *c = r->c;
    if (r->prev) r->prev->next = r->next;
    else if (c->reqs == r) c->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    c->nreqs--;
}

static void req_free(hc_req_t *r)
{
    if (r->easy) curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->hdrs);
    buf_free(&r->body);
    free(r);
}

/* Removes r from curl and frees it; only with curl off the stack. */
static void req_drop(hc_req_t *r)
{
    if (r->added) curl_multi_remove_handle(r->c->multi, r->easy);
    r->added = false;
    req_unlink(r);
    req_free(r);
}

static void maybe_free(hc_t *c)
{
    if (c->closed && c->open_handles == 0) free(c);
}

static void handle_closed(uv_handle_t *h)
{
    hc_t *c = h->data;
    c->open_handles--;
    maybe_free(c);
}

static void sock_closed(uv_handle_t *h)
{
    hc_sock_t *s = (hc_sock_t *)h;
    hc_t *c = s->c;
    free(s);
    c->open_handles--;
    maybe_free(c);
}

static void sock_release(hc_t *c, hc_sock_t *s)
{
    if (s->prev) s->prev->next = s->next;
    else if (c->socks == s) c->socks = s->next;
    if (s->next) s->next->prev = s->prev;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

/* ---- completion -------------------------------------------------------- */

static void finish(hc_req_t *r, CURLcode code)
{
    hc_t *c = r->c;
    long status = 0;
    char *ctype = NULL;
    hc_result_t res;

    curl_multi_remove_handle(c->multi, r->easy);
    r->added = false;
    req_unlink(r);
    if (!r->cancelled && r->on_done) {
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(r->easy, CURLINFO_CONTENT_TYPE, &ctype);
        res.status = (int)status;
        res.content_type = ctype ? ctype : "";
        res.body = r->body.p ? r->body.p : "";
        res.len = r->body.len;
        if (r->too_big) res.error = "response body too large";
        else if (r->refused) res.error = "stream refused by the receiver";
        else if (code != CURLE_OK) res.error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(code);
        else res.error = NULL;
        r->in_done = true;
        r->on_done(r->ctx, &res);
    }
    req_free(r);
}

static void reap(hc_t *c)
{
    CURLMsg *m;
    int left;
    while (!c->closed && (m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        char *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        if (priv) finish((hc_req_t *)priv, m->data.result);
    }
}

static void teardown(hc_t *c);

/* curl just left the stack: apply what was deferred, reap completions. */
static void settle(hc_t *c)
{
    if (c->depth > 0 || c->closed) return;
    for (hc_req_t *r = c->reqs, *n; r; r = n) {
        n = r->next;
        if (r->cancelled) {
            req_drop(r);
        } else if (!r->added) {
            c->depth++;
            CURLMcode mc = curl_multi_add_handle(c->multi, r->easy);
            c->depth--;
            if (mc == CURLM_OK) {
                r->added = true;
            } else {
                log_warn("http: cannot start a request: %s", curl_multi_strerror(mc));
                r->cancelled = true; /* reported below as a failure */
                req_unlink(r);
                if (r->on_done) {
                    hc_result_t res = {0, "", "", 0, curl_multi_strerror(mc)};
                    r->in_done = true;
                    r->on_done(r->ctx, &res);
                }
                req_free(r);
                n = c->reqs; /* the list may have changed in on_done: rescan */
            }
        }
    }
    reap(c);
    if (c->closing && !c->closed) teardown(c);
}

static void action(hc_t *c, curl_socket_t fd, int flags)
{
    int running = 0;
    c->depth++;
    curl_multi_socket_action(c->multi, fd, flags, &running);
    c->depth--;
    settle(c);
}

/* ---- curl -> libuv ----------------------------------------------------- */

static void poll_cb(uv_poll_t *h, int status, int events)
{
    hc_sock_t *s = (hc_sock_t *)h;
    int flags = 0;
    if (status < 0) flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    action(s->c, s->fd, flags);
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    hc_t *c = userp;
    hc_sock_t *s = socketp;
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(c->multi, fd, NULL);
            sock_release(c, s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s) return -1;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->c = c;
        s->fd = fd;
        s->next = c->socks;
        if (c->socks) c->socks->prev = s;
        c->socks = s;
        c->open_handles++;
        curl_multi_assign(c->multi, fd, s);
    }
    int ev = 0;
    if (what & CURL_POLL_IN) ev |= UV_READABLE;
    if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, poll_cb);
    return 0;
}

static void timer_cb(uv_timer_t *t)
{
    action(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static int timer_fn(CURLM *m, long timeout_ms, void *userp)
{
    hc_t *c = userp;
    (void)m;
    if (timeout_ms < 0) uv_timer_stop(&c->timer);
    else uv_timer_start(&c->timer, timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- body -------------------------------------------------------------- */

static size_t write_cb(char *p, size_t size, size_t nmemb, void *userp)
{
    hc_req_t *r = userp;
    size_t n = size * nmemb;
    if (r->cancelled) return n;
    if (r->on_data) {
        long status = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        if (!r->on_data(r->ctx, r, (int)status, p, n)) {
            r->refused = true;
            return 0; /* CURLE_WRITE_ERROR */
        }
        return n;
    }
    if (r->body.len + n > r->max_body || buf_append(&r->body, p, n) < 0) {
        r->too_big = true;
        return 0;
    }
    return n;
}

/* ---- public ------------------------------------------------------------ */

hc_t *hc_new(uv_loop_t *loop)
{
    if (!g_curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return NULL;
        g_curl_ready = true;
    }
    hc_t *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->loop = loop;
    c->multi = curl_multi_init();
    if (!c->multi) {
        free(c);
        return NULL;
    }
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 1;
    return c;
}

static void teardown(hc_t *c)
{
    while (c->reqs) req_drop(c->reqs);
    c->depth++;
    curl_multi_cleanup(c->multi); /* may still report sockets removed */
    c->depth--;
    c->multi = NULL;
    c->closed = true;
    while (c->socks) sock_release(c, c->socks);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, handle_closed);
}

void hc_close(hc_t *c)
{
    if (!c || c->closing) return;
    c->closing = true;
    for (hc_req_t *r = c->reqs; r; r = r->next) r->cancelled = true;
    if (c->depth == 0) teardown(c);
}

hc_req_t *hc_request(hc_t *c, const hc_opts_t *o)
{
    if (!c || c->closing || !o->url) return NULL;
    hc_req_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->c = c;
    r->on_data = o->on_data;
    r->on_done = o->on_done;
    r->ctx = o->ctx;
    r->max_body = o->max_body ? o->max_body : 8u << 20;
    buf_init(&r->body);
    r->easy = curl_easy_init();
    if (!r->easy) {
        free(r);
        return NULL;
    }
    CURL *e = r->easy;
    bool ok = true;
#define SET(opt, val) ok = ok && curl_easy_setopt(e, opt, val) == CURLE_OK
    SET(CURLOPT_URL, o->url);
    SET(CURLOPT_PRIVATE, (void *)r);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROXY, "");
    SET(CURLOPT_NOPROXY, "*");
    SET(CURLOPT_PROTOCOLS_STR, "http");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SET(CURLOPT_ERRORBUFFER, r->errbuf);
    SET(CURLOPT_WRITEFUNCTION, write_cb);
    SET(CURLOPT_WRITEDATA, (void *)r);
    SET(CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 5000L);
    if (o->timeout_ms > 0) SET(CURLOPT_TIMEOUT_MS, o->timeout_ms);
    if (o->idle_timeout_s > 0) {
        SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
        SET(CURLOPT_LOW_SPEED_TIME, o->idle_timeout_s);
    }
    if (o->userpwd) {
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SET(CURLOPT_USERPWD, o->userpwd);
    }
    const char *method = o->method ? o->method : "GET";
    if (o->body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
        strcmp(method, "PATCH") == 0) {
        SET(CURLOPT_POSTFIELDSIZE, (long)(o->body ? o->body_len : 0));
        SET(CURLOPT_COPYPOSTFIELDS, o->body ? o->body : "");
        char ct[128];
        snprintf(ct, sizeof(ct), "Content-Type: %s",
                 o->content_type ? o->content_type : "application/json");
        struct curl_slist *h = curl_slist_append(r->hdrs, ct);
        if (h) r->hdrs = h;
        ok = ok && h;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0) SET(CURLOPT_CUSTOMREQUEST, method);
    struct curl_slist *h = curl_slist_append(r->hdrs, "Expect:");
    if (h) r->hdrs = h;
    h = h ? curl_slist_append(r->hdrs, o->on_data ? "Accept: text/event-stream"
                                                  : "Accept: application/json")
          : NULL;
    if (h) r->hdrs = h;
    ok = ok && h;
    SET(CURLOPT_HTTPHEADER, r->hdrs);
#undef SET
    if (!ok) {
        req_free(r);
        return NULL;
    }
    r->next = c->reqs;
    if (c->reqs) c->reqs->prev = r;
    c->reqs = r;
    c->nreqs++;
    if (c->depth == 0) {
        c->depth++;
        CURLMcode mc = curl_multi_add_handle(c->multi, e);
        c->depth--;
        if (mc != CURLM_OK) {
            log_warn("http: cannot start a request: %s", curl_multi_strerror(mc));
            req_unlink(r);
            req_free(r);
            return NULL;
        }
        r->added = true;
    }
    /* else added by settle() once curl is off the stack */
    return r;
}

void hc_cancel(hc_req_t *r)
{
    if (!r || r->cancelled) return;
    r->cancelled = true;
    if (r->in_done) return; /* finish() frees it after on_done */
    if (r->c->depth == 0 && !r->c->closed) req_drop(r);
    /* else dropped by settle() */
}

size_t hc_pending(const hc_t *c)
{
    size_t n = 0;
    for (const hc_req_t *r = c ? c->reqs : NULL; r; r = r->next) n += !r->cancelled;
    return n;
}
