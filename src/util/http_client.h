/*
 * http_client.h - asynchronous HTTP/1.1 client on the gateway's libuv loop.
 *
 * libcurl's multi-socket API driven by libuv: one uv_poll_t per socket curl
 * opens, one uv_timer_t for curl's timeouts, completions reaped after every
 * curl_multi_socket_action. Nothing here blocks the loop (numeric hosts
 * only: a name would need curl's resolver, which is not wanted here).
 *
 * A request either buffers its whole response body (on_done gets it) or
 * streams it (on_data gets each chunk as it arrives, for SSE); both end with
 * exactly one on_done, unless the request was cancelled first.
 *
 * Lifecycle: hc_new() / hc_close(). A request lives from hc_request() until
 * its on_done returned or hc_cancel() was called; after either the handle
 * must not be used. hc_cancel() never calls back. Callbacks may start or
 * cancel any request (including their own, which is then just freed).
 * hc_close() cancels every request and frees the client once its libuv
 * handles are closed (asynchronously; the loop must run on).
 * Single-threaded: call everything on the loop's thread.
 *
 * Owns: the curl multi handle, every easy handle, their buffers and the
 * libuv handles of their sockets. Must never: follow redirects, use a proxy
 * (loopback traffic stays on loopback whatever http_proxy says), speak
 * anything but http://.
 */
#ifndef HOTPLEX_UTIL_HTTP_CLIENT_H
#define HOTPLEX_UTIL_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct hc hc_t;
typedef struct hc_req hc_req_t;

typedef struct hc_result {
    int status;               /* HTTP status, 0 if no response */
    const char *content_type; /* "" if none */
    const char *body;         /* buffered body (NUL-terminated; "" for streams) */
    size_t len;
    const char *error; /* NULL on a complete HTTP exchange, else what failed */
} hc_result_t;

typedef struct hc_opts {
    const char *method;   /* "GET", "POST", "DELETE", ... */
    const char *url;      /* http://127.0.0.1:PORT/... */
    const char *userpwd;  /* "user:password" for HTTP Basic, or NULL */
    const char *body;     /* request body (copied), or NULL */
    size_t body_len;
    const char *content_type; /* of the request body (default application/json) */
    long timeout_ms;          /* whole request; 0: none (streams) */
    long connect_timeout_ms;  /* 0: 5000 */
    size_t max_body;          /* buffered responses: larger bodies fail (0: 8 MiB) */
    long idle_timeout_s;      /* streams: fail when nothing arrived for this long (0: none) */
    /* streaming: called for each body chunk once the status is known; return
     * false to abort the request (on_done follows with an error) */
    bool (*on_data)(void *ctx, hc_req_t *r, int status, const char *p, size_t n);
    void (*on_done)(void *ctx, const hc_result_t *res);
    void *ctx;
} hc_opts_t;

/* NULL out of memory / libcurl unusable. */
hc_t *hc_new(uv_loop_t *loop);
/* Cancels every request; frees once the libuv handles are closed. */
void hc_close(hc_t *c);

/* Starts a request. NULL out of memory (no callback ever). */
hc_req_t *hc_request(hc_t *c, const hc_opts_t *o);
/* Forgets a request: no callback is made for it any more. NULL is a no-op. */
void hc_cancel(hc_req_t *r);

/* Requests in flight (for tests and leak checks). */
size_t hc_pending(const hc_t *c);

#endif
