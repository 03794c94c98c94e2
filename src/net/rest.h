/*
 * rest.h - the gateway's HTTP API for clients (not the admin API): read a
 * session's event stream by polling. Owner-only, same identity rules as the
 * WebSocket. Answers may complete later (store reads): see rest_req_t.
 */
#ifndef HOTPLEX_REST_H
#define HOTPLEX_REST_H

#include <stdbool.h>
#include <stddef.h>

#include "core/gateway.h"
#include "util/buf.h"

struct lws;

/* A response in the making. The transport owns it while the connection
 * lives; if the connection goes first it sets wsi = NULL and the pending
 * store read frees it. */
typedef struct rest_req {
    struct lws *wsi;
    unsigned status;
    char *body;
    size_t len;
    bool ready;   /* body complete: write it when writable */
    bool pending; /* a store read is in flight */
} rest_req_t;

/* GET /api/sessions/{id}/events?after=N&limit=M for `user`/`bot`. Returns a
 * request (status+body set now, or later when ready becomes true). */
rest_req_t *rest_session_events(gateway_t *gw, struct lws *wsi, const char *id, const char *user,
                                const char *bot, long long after, long long limit);
void rest_req_free(rest_req_t *r);

/* The JSON page both event routes answer with (stored envelopes as sent). */
void rest_events_page(buf_t *b, const char *session_id, long long after, int64_t head,
                      int64_t oldest, int n, const int64_t *seqs, const char *const *json,
                      const size_t *lens);

#endif
