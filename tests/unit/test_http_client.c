/*
 * test_http_client.c - util/http_client.c against a tiny HTTP/1.1 responder
 * that runs on the same libuv loop (no network beyond loopback): buffered
 * responses, request bodies and Basic auth, a chunked SSE stream, timeouts,
 * refused connections, cancelling (also from inside on_data), oversized
 * bodies, and closing the client with requests in flight.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "util/buf.h"
#include "util/http_client.h"

/* ---- the responder ---------------------------------------------------------- */

typedef struct conn {
    uv_tcp_t tcp;
    buf_t in;
    bool answered;
    uv_timer_t later; /* second SSE event */
    bool timer_on;
    int open; /* handles not yet closed */
} conn_t;

static uv_loop_t loop;
static uv_tcp_t listener;
static int port;

/* the tcp handle and (for a stream) the timer: freed after both closed */
static void conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (--c->open > 0) return;
    buf_free(&c->in);
    free(c);
}

static void write_done(uv_write_t *w, int status)
{
    (void)status;
    free(w->data);
    free(w);
}

static void send_str(conn_t *c, const char *s, size_t n)
{
    uv_write_t *w = malloc(sizeof(*w));
    char *copy = malloc(n);
    memcpy(copy, s, n);
    w->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)n);
    uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, write_done);
}

static void reply(conn_t *c, int status, const char *ctype, const char *body, size_t n)
{
    char head[256];
    int hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n", status,
                      ctype, n);
    send_str(c, head, (size_t)hn);
    if (n) send_str(c, body, n);
}

static void sse_second(uv_timer_t *t)
{
    conn_t *c = t->data;
    static const char part[] = "9\r\ndata: b\n\n\r\n0\r\n\r\n";
    send_str(c, part, sizeof(part) - 1);
}

static void on_request(conn_t *c, const char *req, const char *body, size_t blen)
{
    /* a stream or a hang keeps the connection; the others free it again */
    c->answered = strncmp(req, "GET /sse ", 9) == 0 || strncmp(req, "GET /hang ", 10) == 0;
    if (strncmp(req, "GET /json ", 10) == 0) {
        reply(c, 200, "application/json", "{\"ok\":true}", 11);
    } else if (strncmp(req, "POST /echo ", 11) == 0) {
        bool json = strstr(req, "Content-Type: application/json") != NULL;
        reply(c, json ? 201 : 415, "text/plain", body, blen);
    } else if (strncmp(req, "GET /auth ", 10) == 0) {
        /* base64("opencode:secret") */
        if (strstr(req, "Authorization: Basic b3BlbmNvZGU6c2VjcmV0\r\n")) reply(c, 200, "text/plain", "in", 2);
        else reply(c, 401, "text/plain", "", 0);
    } else if (strncmp(req, "GET /sse ", 9) == 0) {
        static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n9\r\ndata: a\n\n\r\n";
        send_str(c, head, sizeof(head) - 1);
        uv_timer_init(&loop, &c->later);
        c->later.data = c;
        c->timer_on = true;
        c->open++;
        uv_timer_start(&c->later, sse_second, 30, 0);
    } else if (strncmp(req, "GET /big ", 9) == 0) {
        size_t n = 2u << 20;
        char *b = malloc(n);
        memset(b, 'x', n);
        reply(c, 200, "text/plain", b, n);
        free(b);
    } else if (strncmp(req, "GET /hang ", 10) == 0) {
        /* never answers */
    } else {
        reply(c, 404, "text/html", "<html>", 6);
    }
}

static void alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(sz);
    b->len = sz;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    conn_t *c = s->data;
    if (n > 0) buf_append(&c->in, b->base, (size_t)n);
    free(b->base);
    if (n < 0) {
        if (c->timer_on) {
            uv_timer_stop(&c->later);
            uv_close((uv_handle_t *)&c->tcp, conn_closed);
            uv_close((uv_handle_t *)&c->later, conn_closed);
        } else {
            uv_close((uv_handle_t *)&c->tcp, conn_closed);
        }
        return;
    }
    /* keep-alive: requests one after the other on the same connection */
    while (!c->answered && c->in.p) {
        char *end = strstr(c->in.p, "\r\n\r\n");
        if (!end) return;
        size_t hl = (size_t)(end - c->in.p) + 4, bl = 0;
        const char *cl = strstr(c->in.p, "Content-Length: ");
        if (cl && cl < end) bl = (size_t)strtoul(cl + 16, NULL, 10);
        if (c->in.len < hl + bl) return;
        on_request(c, c->in.p, c->in.p + hl, bl);
        memmove(c->in.p, c->in.p + hl + bl, c->in.len - hl - bl);
        c->in.len -= hl + bl;
        c->in.p[c->in.len] = '\0';
    }
}

static void on_conn(uv_stream_t *srv, int status)
{
    assert_int_equal(status, 0);
    conn_t *c = calloc(1, sizeof(*c));
    buf_init(&c->in);
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c;
    c->open = 1;
    assert_int_equal(uv_accept(srv, (uv_stream_t *)&c->tcp), 0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static int setup(void **state)
{
    (void)state;
    struct sockaddr_in a;
    struct sockaddr_storage got;
    int len = sizeof(got);
    uv_loop_init(&loop);
    uv_tcp_init(&loop, &listener);
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&listener, 16, on_conn), 0);
    uv_tcp_getsockname(&listener, (struct sockaddr *)&got, &len);
    port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    return 0;
}

/* the responder's handles; the client's are its own business (a test that
 * failed half-way may leave them: the loop is then abandoned) */
static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_closing(h) || h->type != UV_TCP) return;
    if (h == (uv_handle_t *)&listener) {
        uv_close(h, NULL);
        return;
    }
    conn_t *c = h->data;
    if (c->timer_on) {
        uv_timer_stop(&c->later);
        uv_close((uv_handle_t *)&c->later, conn_closed);
    }
    uv_close(h, conn_closed);
}

static int teardown(void **state)
{
    (void)state;
    uv_walk(&loop, walk_close, NULL);
    for (int i = 0; i < 100 && uv_loop_alive(&loop); i++) uv_run(&loop, UV_RUN_NOWAIT);
    /* every handle of the client was closed by hc_close */
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

/* ---- the client side -------------------------------------------------------- */

typedef struct got {
    int done;
    int status;
    char ctype[64];
    char error[256];
    bool has_error;
    buf_t body;
    buf_t stream;
    int chunks;
    bool refuse, cancel_self;
    hc_req_t *req;
} got_t;

static void on_done(void *ctx, const hc_result_t *r)
{
    got_t *g = ctx;
    g->done++;
    g->status = r->status;
    snprintf(g->ctype, sizeof(g->ctype), "%s", r->content_type);
    g->has_error = r->error != NULL;
    snprintf(g->error, sizeof(g->error), "%s", r->error ? r->error : "");
    buf_append(&g->body, r->body, r->len);
    assert_int_equal(r->body[r->len], '\0');
}

static bool on_data(void *ctx, hc_req_t *r, int status, const char *p, size_t n)
{
    got_t *g = ctx;
    assert_int_equal(status, 200);
    g->chunks++;
    buf_append(&g->stream, p, n);
    if (g->cancel_self) {
        hc_cancel(r);
        return true;
    }
    return !g->refuse;
}

static void run_until(got_t *g, int n)
{
    while (g->done < n && uv_run(&loop, UV_RUN_ONCE)) {
    }
}

static char *url(const char *path)
{
    static char u[128];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d%s", port, path);
    return u;
}

static void got_free(got_t *g)
{
    buf_free(&g->body);
    buf_free(&g->stream);
}

static void test_get_json(void **state)
{
    (void)state;
    hc_t *c = hc_new(&loop);
    got_t g = {0};
    hc_opts_t o = {.url = url("/json"), .timeout_ms = 5000, .on_done = on_done, .ctx = &g};
    assert_non_null(hc_request(c, &o));
    assert_int_equal(hc_pending(c), 1);
    run_until(&g, 1);
    assert_int_equal(g.done, 1);
    assert_false(g.has_error);
    assert_int_equal(g.status, 200);
    assert_string_equal(g.ctype, "application/json");
    assert_string_equal(g.body.p, "{\"ok\":true}");
    assert_int_equal(hc_pending(c), 0);
    /* unknown path: a complete exchange, just another status */
    got_t h = {0};
    o.url = url("/nope");
    o.ctx = &h;
    assert_non_null(hc_request(c, &o));
    run_until(&h, 1);
    assert_false(h.has_error);
    assert_int_equal(h.status, 404);
    assert_string_equal(h.ctype, "text/html");
    hc_close(c);
    got_free(&g);
    got_free(&h);
}

static void test_post_and_auth(void **state)
{
    (void)state;
    hc_t *c = hc_new(&loop);
    got_t g = {0}, a = {0}, n = {0};
    hc_opts_t o = {.method = "POST", .url = url("/echo"), .body = "{\"x\":1}", .body_len = 7,
                   .timeout_ms = 5000, .on_done = on_done, .ctx = &g};
    assert_non_null(hc_request(c, &o));
    hc_opts_t o2 = {.url = url("/auth"), .userpwd = "opencode:secret", .timeout_ms = 5000,
                    .on_done = on_done, .ctx = &a};
    assert_non_null(hc_request(c, &o2));
    hc_opts_t o3 = {.url = url("/auth"), .userpwd = "opencode:wrong", .timeout_ms = 5000,
                    .on_done = on_done, .ctx = &n};
    assert_non_null(hc_request(c, &o3));
    run_until(&g, 1);
    run_until(&a, 1);
    run_until(&n, 1);
    assert_int_equal(g.status, 201);
    assert_string_equal(g.body.p, "{\"x\":1}");
    assert_int_equal(a.status, 200);
    assert_int_equal(n.status, 401);
    /* POST without a body */
    got_t e = {0};
    hc_opts_t o4 = {.method = "POST", .url = url("/echo"), .timeout_ms = 5000, .on_done = on_done,
                    .ctx = &e};
    assert_non_null(hc_request(c, &o4));
    run_until(&e, 1);
    assert_int_equal(e.status, 201);
    assert_int_equal(e.body.len, 0);
    hc_close(c);
    got_free(&g);
    got_free(&a);
    got_free(&n);
    got_free(&e);
}

static void test_stream(void **state)
{
    (void)state;
    hc_t *c = hc_new(&loop);
    got_t g = {0};
    hc_opts_t o = {.url = url("/sse"), .on_data = on_data, .on_done = on_done, .ctx = &g,
                   .idle_timeout_s = 5};
    assert_non_null(hc_request(c, &o));
    run_until(&g, 1);
    assert_false(g.has_error);
    assert_string_equal(g.stream.p, "data: a\n\ndata: b\n\n");
    assert_true(g.chunks >= 2);
    assert_int_equal(g.body.len, 0);
    hc_close(c);
    got_free(&g);
}

static void test_stream_refused_and_cancelled_inside(void **state)
{
    (void)state;
    hc_t *c = hc_new(&loop);
    got_t g = {0}, k = {0};
    g.refuse = true;
    hc_opts_t o = {.url = url("/sse"), .on_data = on_data, .on_done = on_done, .ctx = &g};
    assert_non_null(hc_request(c, &o));
    run_until(&g, 1);
    assert_true(g.has_error);
    assert_int_equal(g.chunks, 1);
    /* a request cancelled from its own on_data never calls back */
    k.cancel_self = true;
    o.ctx = &k;
    assert_non_null(hc_request(c, &o));
    for (int i = 0; i < 200 && k.chunks == 0; i++) uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(k.chunks, 1);
    assert_int_equal(hc_pending(c), 0);
    /* and a new request still works */
    got_t j = {0};
    hc_opts_t o2 = {.url = url("/json"), .timeout_ms = 5000, .on_done = on_done, .ctx = &j};
    assert_non_null(hc_request(c, &o2));
    run_until(&j, 1);
    assert_int_equal(j.status, 200);
    assert_int_equal(k.done, 0);
    hc_close(c);
    got_free(&g);
    got_free(&k);
    got_free(&j);
}

static void test_timeout_refused_big(void **state)
{
    (void)state;
    hc_t *c = hc_new(&loop);
    got_t t = {0}, r = {0}, b = {0};
    hc_opts_t o = {.url = url("/hang"), .timeout_ms = 200, .on_done = on_done, .ctx = &t};
    uint64_t t0 = uv_now(&loop);
    assert_non_null(hc_request(c, &o));
    run_until(&t, 1);
    uv_update_time(&loop);
    assert_true(t.has_error);
    assert_int_equal(t.status, 0);
    assert_true(uv_now(&loop) - t0 >= 150);
    /* a closed port */
    uv_tcp_t tmp;
    struct sockaddr_in a;
    struct sockaddr_storage got;
    int len = sizeof(got);
    uv_tcp_init(&loop, &tmp);
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_bind(&tmp, (const struct sockaddr *)&a, 0);
    uv_tcp_getsockname(&tmp, (struct sockaddr *)&got, &len);
    char u[64];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/x", ntohs(((struct sockaddr_in *)&got)->sin_port));
    uv_close((uv_handle_t *)&tmp, NULL);
    hc_opts_t o2 = {.url = u, .timeout_ms = 2000, .on_done = on_done, .ctx = &r};
    assert_non_null(hc_request(c, &o2));
    run_until(&r, 1);
    assert_true(r.has_error);
    /* a body over max_body */
    hc_opts_t o3 = {.url = url("/big"), .timeout_ms = 5000, .max_body = 1 << 20,
                    .on_done = on_done, .ctx = &b};
    assert_non_null(hc_request(c, &o3));
    run_until(&b, 1);
    assert_true(b.has_error);
    assert_string_equal(b.error, "response body too large");
    /* other schemes are refused */
    got_t f = {0};
    hc_opts_t o4 = {.url = "file:///etc/passwd", .timeout_ms = 1000, .on_done = on_done, .ctx = &f};
    hc_request(c, &o4);
    run_until(&f, 1);
    assert_true(f.has_error);
    assert_int_equal(f.body.len, 0);
    hc_close(c);
    got_free(&t);
    got_free(&r);
    got_free(&b);
    got_free(&f);
}

static void test_cancel_and_close(void **state)
{
    (void)state;
    hc_t *c = hc_new(&loop);
    got_t g = {0}, h = {0}, s = {0};
    hc_opts_t o = {.url = url("/hang"), .timeout_ms = 5000, .on_done = on_done, .ctx = &g};
    hc_req_t *r = hc_request(c, &o);
    assert_non_null(r);
    for (int i = 0; i < 20; i++) uv_run(&loop, UV_RUN_NOWAIT);
    hc_cancel(r);
    hc_cancel(NULL);
    assert_int_equal(hc_pending(c), 0);
    /* close with requests in flight: no callbacks, the handles go */
    o.ctx = &h;
    assert_non_null(hc_request(c, &o));
    hc_opts_t o2 = {.url = url("/sse"), .on_data = on_data, .on_done = on_done, .ctx = &s};
    assert_non_null(hc_request(c, &o2));
    for (int i = 0; i < 50 && s.chunks == 0; i++) uv_run(&loop, UV_RUN_ONCE);
    hc_close(c);
    for (int i = 0; i < 50; i++) uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(g.done + h.done + s.done, 0);
    got_free(&g);
    got_free(&h);
    got_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_and_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_refused_and_cancelled_inside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_refused_big, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_and_close, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
