/*
 * test_cli_net.c - cli/net and cli/ws: URL parsing and escaping; the HTTP
 * client against canned answers (Content-Length, chunked, close-delimited,
 * a refused connection); the WebSocket client against a scripted server
 * thread on loopback (handshake check, fragmented and large messages,
 * ping answered with a masked pong, close code and reason, refused upgrade).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "cli/net.h"
#include "cli/ws.h"

/* ---- URLs ------------------------------------------------------------- */

static void test_url_parse(void **state)
{
    (void)state;
    cli_url_t u;
    char err[256];
    assert_int_equal(cli_url_parse("ws://127.0.0.1:8888/ws", &u, err, sizeof(err)), 0);
    assert_string_equal(u.scheme, "ws");
    assert_false(u.tls);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 8888);
    assert_string_equal(u.path, "/ws");

    assert_int_equal(cli_url_parse("WSS://Example.com/ws?token=a#frag", &u, err, sizeof(err)), 0);
    assert_string_equal(u.scheme, "wss");
    assert_true(u.tls);
    assert_int_equal(u.port, 443);
    assert_string_equal(u.host, "Example.com");
    assert_string_equal(u.path, "/ws?token=a");

    assert_int_equal(cli_url_parse("http://[::1]:9999", &u, err, sizeof(err)), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 9999);
    assert_string_equal(u.path, "/");

    assert_int_equal(cli_url_parse("https://h?x=1", &u, err, sizeof(err)), 0);
    assert_string_equal(u.path, "/?x=1");
    assert_int_equal(u.port, 443);

    const char *bad[] = {"127.0.0.1:8888",   "ftp://h/",     "ws://:80/", "ws://h:0/",
                         "ws://h:65536/",    "ws://h:8x/",   "ws://[::1/", "ws://[::1]x/",
                         "ws://h:/",         "verylongscheme://h/"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(cli_url_parse(bad[i], &u, err, sizeof(err)), -EINVAL);
        assert_true(err[0] != '\0');
    }
}

static void test_url_escape(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(cli_url_escape(&b, "a b/c?d=e&f~g.h_i-j\xc3\xa9"), 0);
    assert_string_equal(b.p, "a%20b%2Fc%3Fd%3De%26f~g.h_i-j%C3%A9");
    buf_free(&b);
}

/* ---- a scripted loopback server --------------------------------------- */

typedef struct srv {
    int lfd, port;
    pthread_t th;
    void (*script)(struct srv *s, int fd);
    const char *canned; /* for the HTTP script */
    size_t canned_len;
    char request[8192]; /* what the client sent (head) */
    unsigned char pong[256];
    size_t pong_len;
    int pong_masked;
} srv_t;

static void *srv_main(void *arg)
{
    srv_t *s = arg;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd >= 0) {
        s->script(s, fd);
        close(fd);
    }
    return NULL;
}

static void srv_start(srv_t *s, void (*script)(srv_t *, int))
{
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->lfd, 4), 0);
    socklen_t l = sizeof(a);
    getsockname(s->lfd, (struct sockaddr *)&a, &l);
    s->port = ntohs(a.sin_port);
    s->script = script;
    pthread_create(&s->th, NULL, srv_main, s);
}

static void srv_join(srv_t *s)
{
    pthread_join(s->th, NULL);
    close(s->lfd);
}

/* Reads the request head into s->request. */
static void read_head(srv_t *s, int fd)
{
    size_t n = 0;
    while (n < sizeof(s->request) - 1) {
        ssize_t r = read(fd, s->request + n, 1);
        if (r <= 0) break;
        n++;
        s->request[n] = '\0';
        if (n >= 4 && memcmp(s->request + n - 4, "\r\n\r\n", 4) == 0) break;
    }
}

static void write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w <= 0) return;
        c += w;
        n -= (size_t)w;
    }
}

static void script_canned(srv_t *s, int fd)
{
    read_head(s, fd);
    /* dribble the answer in small pieces */
    for (size_t i = 0; i < s->canned_len; i += 7) {
        write_all(fd, s->canned + i, s->canned_len - i < 7 ? s->canned_len - i : 7);
        usleep(1000);
    }
}

static int http_get(srv_t *s, const char *canned, cli_http_resp_t *r, char *err, size_t cap)
{
    s->canned = canned;
    s->canned_len = strlen(canned);
    srv_start(s, script_canned);
    cli_url_t u;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/base", s->port);
    assert_int_equal(cli_url_parse(url, &u, err, cap), 0);
    const char *hdrs[] = {"Authorization: Bearer tok", NULL};
    int rc = cli_http_request(&u, "GET", "/admin/sessions?x=1", hdrs, NULL, 0, NULL, 5000, r, err,
                              cap);
    srv_join(s);
    return rc;
}

static void test_http_answers(void **state)
{
    (void)state;
    srv_t s = {0};
    cli_http_resp_t r;
    char err[512];
    assert_int_equal(http_get(&s,
                              "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              "Content-Length: 11\r\n\r\n{\"a\":true}\nEXTRA",
                              &r, err, sizeof(err)),
                     0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.reason, "OK");
    assert_string_equal(r.content_type, "application/json");
    assert_int_equal(r.body.len, 11);
    assert_memory_equal(r.body.p, "{\"a\":true}\n", 11);
    assert_non_null(strstr(s.request, "GET /admin/sessions?x=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(s.request, "\r\nAuthorization: Bearer tok\r\n"));
    assert_non_null(strstr(s.request, "\r\nConnection: close\r\n"));
    buf_free(&r.body);

    assert_int_equal(http_get(&s,
                              "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
                              "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n",
                              &r, err, sizeof(err)),
                     0);
    assert_int_equal(r.status, 404);
    assert_string_equal(r.reason, "Not Found");
    assert_int_equal(r.body.len, 12);
    assert_memory_equal(r.body.p, "hello, world", 12);
    buf_free(&r.body);

    assert_int_equal(http_get(&s, "HTTP/1.0 200 OK\r\n\r\nuntil close", &r, err, sizeof(err)), 0);
    assert_int_equal(r.body.len, 11);
    buf_free(&r.body);

    assert_true(http_get(&s, "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", &r, err,
                         sizeof(err)) < 0);
    assert_non_null(strstr(err, "closed the connection"));
    assert_true(http_get(&s, "SSH-2.0-OpenSSH\r\n\r\n", &r, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "did not answer HTTP"));

    /* nobody listening */
    cli_url_t u;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", ntohs(a.sin_port));
    close(fd);
    cli_url_parse(url, &u, err, sizeof(err));
    assert_true(cli_http_request(&u, "GET", "/", NULL, NULL, 0, NULL, 2000, &r, err,
                                 sizeof(err)) < 0);
    assert_non_null(strstr(err, "Connection refused"));
}

/* ---- WebSocket -------------------------------------------------------- */

static void ws_frame(int fd, int fin, int op, const void *p, size_t n)
{
    unsigned char h[10];
    size_t hl = 0;
    h[hl++] = (unsigned char)((fin ? 0x80 : 0) | op);
    if (n < 126) {
        h[hl++] = (unsigned char)n;
    } else if (n < 65536) {
        h[hl++] = 126;
        h[hl++] = (unsigned char)(n >> 8);
        h[hl++] = (unsigned char)n;
    } else {
        h[hl++] = 127;
        for (int i = 7; i >= 0; i--) h[hl++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    write_all(fd, h, hl);
    write_all(fd, p, n);
}

/* Answers the upgrade read into s->request with 101; false without a key. */
static bool upgrade_ok(srv_t *s, int fd)
{
    const char *k = strstr(s->request, "Sec-WebSocket-Key: ");
    if (!k) return false;
    char key[64] = "", kg[128];
    sscanf(k + 19, "%63[^\r]", key);
    snprintf(kg, sizeof(kg), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    unsigned char sha[SHA_DIGEST_LENGTH];
    SHA1((unsigned char *)kg, strlen(kg), sha);
    char acc[64];
    EVP_EncodeBlock((unsigned char *)acc, sha, SHA_DIGEST_LENGTH);
    char resp[256];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    write_all(fd, resp, (size_t)n);
    return true;
}

static void script_ws(srv_t *s, int fd)
{
    read_head(s, fd);
    if (!upgrade_ok(s, fd)) return;
    ws_frame(fd, 0, 1, "hel", 3); /* fragmented "hello" with a ping in between */
    ws_frame(fd, 0, 0, "l", 1);
    ws_frame(fd, 1, 9, "pp", 2);
    ws_frame(fd, 1, 0, "o", 1);
    size_t big = 70000;
    char *b = malloc(big);
    memset(b, 'x', big);
    ws_frame(fd, 1, 1, b, big);
    free(b);
    ws_frame(fd, 1, 1, "{}", 2);
    /* read the client's pong: masked, payload "pp" */
    unsigned char f[16];
    size_t got = 0;
    while (got < 8) {
        ssize_t r = read(fd, f + got, 8 - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got == 8 && (f[0] & 0x0f) == 10) {
        s->pong_masked = f[1] & 0x80;
        s->pong_len = f[1] & 0x7f;
        for (size_t i = 0; i < s->pong_len && i < 2; i++) s->pong[i] = f[6 + i] ^ f[2 + (i & 3)];
    }
    unsigned char cl[] = {0x03, 0xe8, 'b', 'y', 'e'};
    ws_frame(fd, 1, 8, cl, sizeof(cl));
    usleep(50000);
}

/* Two whole frames and the start of a third in one write, as a gateway
 * packing frames sends them; the rest of the third follows later. */
static void script_ws_packed(srv_t *s, int fd)
{
    read_head(s, fd);
    upgrade_ok(s, fd);
    usleep(20000); /* the client takes the 101 alone */
    unsigned char b[] = {0x81, 3, 'o', 'n', 'e', 0x81, 3, 't', 'w', 'o', 0x81, 5, 't', 'h'};
    write_all(fd, b, sizeof(b));
    usleep(200000);
    write_all(fd, "ree", 3);
    usleep(50000);
}

static void test_ws_ready_after_packed_frames(void **state)
{
    (void)state;
    srv_t s = {0};
    srv_start(&s, script_ws_packed);
    char url[64], err[512];
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/ws", s.port);
    cli_url_t u;
    cli_url_parse(url, &u, err, sizeof(err));
    cli_ws_t ws;
    assert_int_equal(cli_ws_connect(&ws, &u, NULL, NULL, 5000, err, sizeof(err)), 0);
    const char *m;
    size_t n;
    int r;
    while ((r = cli_ws_read(&ws, &m, &n)) == 0) cli_conn_wait(ws.conn, 1000);
    assert_int_equal(r, 1);
    assert_memory_equal(m, "one", 3);
    /* "two" was read off the socket with "one": poll() would not wake for
     * it, so the client must say it is ready, and hand it out at once */
    assert_true(cli_ws_ready(&ws));
    assert_int_equal(cli_ws_read(&ws, &m, &n), 1);
    assert_memory_equal(m, "two", 3);
    /* only part of "three" is here: not ready (no busy loop) */
    assert_false(cli_ws_ready(&ws));
    while ((r = cli_ws_read(&ws, &m, &n)) == 0) cli_conn_wait(ws.conn, 1000);
    assert_int_equal(r, 1);
    assert_int_equal(n, 5);
    assert_memory_equal(m, "three", 5);
    cli_ws_free(&ws);
    srv_join(&s);
}

static void test_ws_client(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    srv_t s = {0};
    srv_start(&s, script_ws);
    char url[64], err[512];
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/ws", s.port);
    cli_url_t u;
    cli_url_parse(url, &u, err, sizeof(err));
    cli_ws_t ws;
    const char *hdrs[] = {"X-API-Key: k", NULL};
    assert_int_equal(cli_ws_connect(&ws, &u, hdrs, NULL, 5000, err, sizeof(err)), 0);
    assert_non_null(strstr(s.request, "GET /ws HTTP/1.1\r\n"));
    assert_non_null(strstr(s.request, "\r\nX-API-Key: k\r\n"));
    const char *want[] = {"hello", NULL, "{}"};
    for (int i = 0; i < 3; i++) {
        const char *m;
        size_t n;
        int r;
        while ((r = cli_ws_read(&ws, &m, &n)) == 0) cli_conn_wait(ws.conn, 1000);
        assert_int_equal(r, 1);
        if (want[i]) {
            assert_int_equal(n, strlen(want[i]));
            assert_memory_equal(m, want[i], n);
        } else {
            assert_int_equal(n, 70000);
            assert_int_equal(m[0], 'x');
            assert_int_equal(m[69999], 'x');
        }
    }
    const char *m;
    size_t n;
    int r;
    while ((r = cli_ws_read(&ws, &m, &n)) == 0) cli_conn_wait(ws.conn, 1000);
    assert_int_equal(r, -1);
    assert_int_equal(ws.close_code, 1000);
    assert_string_equal(ws.close_reason, "bye");
    cli_ws_free(&ws);
    srv_join(&s);
    assert_true(s.pong_masked);
    assert_int_equal(s.pong_len, 2);
    assert_memory_equal(s.pong, "pp", 2);
}

static void test_ws_refused_upgrade(void **state)
{
    (void)state;
    srv_t s = {0};
    static const char r401[] =
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 59\r\n"
        "connection: close\r\n\r\n{\"error\":{\"code\":\"UNAUTHORIZED\",\"message\":\"invalid creds\"}}";
    s.canned = r401;
    s.canned_len = sizeof(r401) - 1;
    srv_start(&s, script_canned);
    char url[64], err[512];
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/ws", s.port);
    cli_url_t u;
    cli_url_parse(url, &u, err, sizeof(err));
    cli_ws_t ws;
    assert_int_equal(cli_ws_connect(&ws, &u, NULL, NULL, 5000, err, sizeof(err)), -EACCES);
    assert_int_equal(ws.http_status, 401);
    assert_non_null(strstr(err, "HTTP 401 Unauthorized: UNAUTHORIZED: invalid creds"));
    cli_ws_free(&ws);
    srv_join(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parse),          cmocka_unit_test(test_url_escape),
        cmocka_unit_test(test_http_answers),       cmocka_unit_test(test_ws_client),
        cmocka_unit_test(test_ws_refused_upgrade), cmocka_unit_test(test_ws_ready_after_packed_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
