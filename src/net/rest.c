/*
 * rest.c - see rest.h. Events come back exactly as they were sent on the
 * WebSocket (the stored envelopes), in seq order, so a polling client and a
 * streaming client see the same stream.
 */
#include "net/rest.h"

#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/session.h"
#include "util/buf.h"
#include "util/json.h"

#define REST_MAX_LIMIT 1000

static void set_body(rest_req_t *r, unsigned status, buf_t *b)
{
    size_t len;
    r->status = status;
    r->body = buf_steal(b, &len);
    r->len = len;
    r->ready = true;
}

static void set_error(rest_req_t *r, unsigned status, const char *code, const char *msg)
{
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "error");
    jw_obj_begin(&w);
    jw_kstr(&w, "code", code);
    jw_kstr(&w, "message", msg);
    jw_obj_end(&w);
    jw_obj_end(&w);
    set_body(r, status, &b);
}

typedef struct read_ctx {
    rest_req_t *r;
    char session_id[37];
    long long after;
    int64_t head;
} read_ctx_t;

static void on_read(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                    const size_t *lens, int64_t oldest)
{
    read_ctx_t *x = ctx;
    rest_req_t *r = x->r;
    r->pending = false;
    if (!r->wsi) { /* the client went away meanwhile */
        rest_req_free(r);
        free(x);
        return;
    }
    if (rc < 0) {
        set_error(r, 500, "INTERNAL_ERROR", "reading the event log failed");
    } else {
        buf_t b;
        buf_init(&b);
        rest_events_page(&b, x->session_id, x->after, x->head, oldest, n, seqs, json, lens);
        set_body(r, 200, &b);
    }
    lws_callback_on_writable(r->wsi);
    free(x);
}

void rest_events_page(buf_t *b, const char *session_id, long long after, int64_t head,
                      int64_t oldest, int n, const int64_t *seqs, const char *const *json,
                      const size_t *lens)
{
    jw_t w;
    jw_init(&w, b);
    jw_obj_begin(&w);
    jw_kstr(&w, "session_id", session_id);
    jw_kint(&w, "after", after);
    jw_kint(&w, "last_seq", head);
    jw_kint(&w, "oldest_seq", oldest);
    /* events older than what is kept are gone: tell the client where to resume */
    jw_kbool(&w, "resync", n > 0 && seqs[0] > after + 1);
    jw_key(&w, "events");
    jw_arr_begin(&w);
    for (int i = 0; i < n; i++) jw_raw(&w, json[i], lens[i]);
    jw_arr_end(&w);
    jw_kint(&w, "next_after", n > 0 ? seqs[n - 1] : after);
    jw_obj_end(&w);
}

rest_req_t *rest_session_events(gateway_t *gw, struct lws *wsi, const char *id, const char *user,
                                const char *bot, long long after, long long limit)
{
    rest_req_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->wsi = wsi;
    sess_t *s = sess_find_visible(gw, id, user, bot);
    if (!s) {
        set_error(r, 404, "SESSION_NOT_FOUND", "session not found");
        return r;
    }
    if (after < 0 || limit < 1 || limit > REST_MAX_LIMIT) {
        set_error(r, 400, "INVALID_MESSAGE", "after must be >= 0 and limit 1..1000");
        return r;
    }
    read_ctx_t *x = calloc(1, sizeof(*x));
    if (!x) {
        set_error(r, 500, "INTERNAL_ERROR", "out of memory");
        return r;
    }
    x->r = r;
    x->after = after;
    x->head = s->stream.durable;
    snprintf(x->session_id, sizeof(x->session_id), "%s", s->id);
    r->pending = true;
    store_events_read(gw->store, s->id, after, (int)limit, on_read, x);
    return r;
}

void rest_req_free(rest_req_t *r)
{
    if (!r) return;
    free(r->body);
    free(r);
}
