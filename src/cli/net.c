/*
 * net.c - see net.h. One connection is a non-blocking socket, wrapped in an
 * OpenSSL session for wss:// and https://. Every wait is a poll() with a
 * deadline, so no CLI command can hang on a dead peer longer than it said.
 */
#include "cli/net.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct cli_conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
};

int64_t cli_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int left_ms(int64_t deadline)
{
    int64_t l = deadline - cli_now_ms();
    return l < 0 ? 0 : l > 1000000000 ? 1000000000 : (int)l;
}

/* ---- URLs ------------------------------------------------------------ */

int cli_url_parse(const char *text, cli_url_t *u, char *err, size_t cap)
{
    memset(u, 0, sizeof(*u));
    const char *p = strstr(text, "://");
    if (!p || p - text >= (ptrdiff_t)sizeof(u->scheme)) {
        snprintf(err, cap, "bad URL \"%s\": expected scheme://host[:port][/path]", text);
        return -EINVAL;
    }
    size_t sl = (size_t)(p - text);
    for (size_t i = 0; i < sl; i++)
        u->scheme[i] = (char)tolower((unsigned char)text[i]);
    if (strcmp(u->scheme, "ws") == 0 || strcmp(u->scheme, "http") == 0) {
        u->port = 80;
    } else if (strcmp(u->scheme, "wss") == 0 || strcmp(u->scheme, "https") == 0) {
        u->port = 443;
        u->tls = true;
    } else {
        snprintf(err, cap, "bad URL \"%s\": scheme must be ws, wss, http or https", text);
        return -EINVAL;
    }
    const char *h = p + 3;
    const char *end = h + strcspn(h, "/?#");
    const char *hend, *colon = NULL;
    if (*h == '[') {
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (!rb) {
            snprintf(err, cap, "bad URL \"%s\": unterminated [IPv6] host", text);
            return -EINVAL;
        }
        h++;
        hend = rb;
        if (rb + 1 < end) {
            if (rb[1] != ':') {
                snprintf(err, cap, "bad URL \"%s\": junk after ]", text);
                return -EINVAL;
            }
            colon = rb + 1;
        }
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        hend = colon ? colon : end;
    }
    if (hend == h || (size_t)(hend - h) >= sizeof(u->host)) {
        snprintf(err, cap, "bad URL \"%s\": missing or too long host", text);
        return -EINVAL;
    }
    memcpy(u->host, h, (size_t)(hend - h));
    if (colon) {
        char *e = NULL;
        long port = strtol(colon + 1, &e, 10);
        if (e != end || colon + 1 == end || port < 1 || port > 65535) {
            snprintf(err, cap, "bad URL \"%s\": port must be 1..65535", text);
            return -EINVAL;
        }
        u->port = (int)port;
    }
    const char *path = *end == '#' ? "" : end;
    size_t plen = strcspn(path, "#");
    if (plen + 2 > sizeof(u->path)) {
        snprintf(err, cap, "bad URL: path too long");
        return -EINVAL;
    }
    if (path[0] != '/') u->path[0] = '/';
    strncat(u->path, path, plen);
    return 0;
}

int cli_url_escape(buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int rc;
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            rc = buf_append(b, p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            rc = buf_append(b, e, 3);
        }
        if (rc < 0) return rc;
    }
    return 0;
}

/* ---- connections ------------------------------------------------------ */

static int tcp_connect(const char *host, int port, int64_t deadline, char *err, size_t cap)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0) {
        snprintf(err, cap, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -EHOSTUNREACH;
    }
    int fd = -1, last = ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
        if (errno == EINPROGRESS) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            int n;
            do
                n = poll(&pf, 1, left_ms(deadline));
            while (n < 0 && errno == EINTR);
            if (n == 1) {
                int soerr = 0;
                socklen_t sl = sizeof(soerr);
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                if (soerr == 0) break;
                last = soerr;
            } else {
                last = n == 0 ? ETIMEDOUT : errno;
            }
        } else {
            last = errno;
        }
        close(fd);
        fd = -1;
        if (left_ms(deadline) == 0) break;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, cap, "cannot connect to %s:%d: %s", host, port, strerror(last));
        return -last;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static void ssl_errtext(char *err, size_t cap, const char *what, SSL *ssl)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e) ERR_error_string_n(e, buf, sizeof(buf));
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (vr != X509_V_OK)
        snprintf(err, cap, "%s: certificate verification failed: %s (use --ca FILE or --insecure)",
                 what, X509_verify_cert_error_string(vr));
    else
        snprintf(err, cap, "%s: %s", what, buf[0] ? buf : "TLS error");
    ERR_clear_error();
}

/* Waits for the direction OpenSSL asked for. 1 ready, 0 timeout, -errno. */
static int ssl_wait(cli_conn_t *c, int sslerr, int64_t deadline)
{
    struct pollfd pf = {.fd = c->fd, .events = sslerr == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
    int n = poll(&pf, 1, left_ms(deadline));
    if (n < 0) return errno == EINTR ? 1 : -errno;
    return n;
}

static int tls_start(cli_conn_t *c, const char *host, const cli_tls_opts_t *o, int64_t deadline,
                     char *err, size_t cap)
{
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx) {
        ssl_errtext(err, cap, "TLS", NULL);
        return -ENOMEM;
    }
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    bool insecure = o && o->insecure;
    if (!insecure) {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
        int ok = o && o->ca_file ? SSL_CTX_load_verify_locations(c->ctx, o->ca_file, NULL)
                                 : SSL_CTX_set_default_verify_paths(c->ctx);
        if (ok != 1) {
            char what[1100];
            snprintf(what, sizeof(what), "cannot load CA file %s",
                     o && o->ca_file ? o->ca_file : "(system)");
            ssl_errtext(err, cap, what, NULL);
            return -EINVAL;
        }
    }
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        ssl_errtext(err, cap, "TLS", NULL);
        return -ENOMEM;
    }
    struct in6_addr a6;
    bool is_ip = inet_pton(AF_INET, host, &a6) == 1 || inet_pton(AF_INET6, host, &a6) == 1;
    if (!is_ip) SSL_set_tlsext_host_name(c->ssl, host);
    if (!insecure) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        if (is_ip)
            X509_VERIFY_PARAM_set1_ip_asc(vp, host);
        else
            X509_VERIFY_PARAM_set1_host(vp, host, 0);
    }
    for (;;) {
        int r = SSL_connect(c->ssl);
        if (r == 1) return 0;
        int e = SSL_get_error(c->ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            char what[300];
            snprintf(what, sizeof(what), "TLS handshake with %s failed", host);
            ssl_errtext(err, cap, what, c->ssl);
            return -EPROTO;
        }
        int w = ssl_wait(c, e, deadline);
        if (w == 0) {
            snprintf(err, cap, "TLS handshake with %s timed out", host);
            return -ETIMEDOUT;
        }
        if (w < 0) {
            snprintf(err, cap, "TLS handshake with %s: %s", host, strerror(-w));
            return w;
        }
    }
}

int cli_conn_open(cli_conn_t **out, const char *host, int port, bool tls, const cli_tls_opts_t *o,
                  int timeout_ms, char *err, size_t cap)
{
    *out = NULL;
    int64_t deadline = cli_now_ms() + timeout_ms;
    int fd = tcp_connect(host, port, deadline, err, cap);
    if (fd < 0) return fd;
    cli_conn_t *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        snprintf(err, cap, "out of memory");
        return -ENOMEM;
    }
    c->fd = fd;
    if (tls) {
        int rc = tls_start(c, host, o, deadline, err, cap);
        if (rc < 0) {
            cli_conn_close(c);
            return rc;
        }
    }
    *out = c;
    return 0;
}

void cli_conn_close(cli_conn_t *c)
{
    if (!c) return;
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* best effort close_notify; non-blocking */
        SSL_free(c->ssl);
    }
    if (c->ctx) SSL_CTX_free(c->ctx);
    if (c->fd >= 0) close(c->fd);
    free(c);
}

int cli_conn_fd(const cli_conn_t *c)
{
    return c->fd;
}

bool cli_conn_pending(const cli_conn_t *c)
{
    return c->ssl && SSL_pending(c->ssl) > 0;
}

ssize_t cli_conn_read(cli_conn_t *c, void *p, size_t n)
{
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return -EAGAIN;
        if (e == SSL_ERROR_ZERO_RETURN) return 0;
        if (e == SSL_ERROR_SYSCALL && (r == 0 || errno == 0 || errno == ECONNRESET)) return 0;
        return -EIO;
    }
    for (;;) {
        ssize_t r = recv(c->fd, p, n, 0);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return -EAGAIN;
        if (errno == ECONNRESET) return 0;
        return -errno;
    }
}

int cli_conn_write(cli_conn_t *c, const void *p, size_t n, int timeout_ms)
{
    int64_t deadline = cli_now_ms() + timeout_ms;
    const char *s = p;
    while (n > 0) {
        int want = POLLOUT;
        if (c->ssl) {
            ERR_clear_error();
            int r = SSL_write(c->ssl, s, n > INT32_MAX ? INT32_MAX : (int)n);
            if (r > 0) {
                s += r;
                n -= (size_t)r;
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ)
                want = POLLIN;
            else if (e != SSL_ERROR_WANT_WRITE)
                return -EPIPE;
        } else {
            ssize_t r = send(c->fd, s, n, MSG_NOSIGNAL);
            if (r > 0) {
                s += r;
                n -= (size_t)r;
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
        }
        struct pollfd pf = {.fd = c->fd, .events = (short)want};
        int w = poll(&pf, 1, left_ms(deadline));
        if (w == 0) return -ETIMEDOUT;
        if (w < 0 && errno != EINTR) return -errno;
    }
    return 0;
}

int cli_conn_wait(cli_conn_t *c, int timeout_ms)
{
    if (cli_conn_pending(c)) return 1;
    struct pollfd pf = {.fd = c->fd, .events = POLLIN};
    int n = poll(&pf, 1, timeout_ms);
    if (n < 0) return -errno;
    return n > 0 ? 1 : 0;
}

/* ---- HTTP ------------------------------------------------------------- */

static const char *find_crlf2(const char *p, size_t n)
{
    for (size_t i = 3; i < n; i++)
        if (p[i - 3] == '\r' && p[i - 2] == '\n' && p[i - 1] == '\r' && p[i] == '\n')
            return p + i + 1;
    return NULL;
}

/* Header value of `name` in the head block (lines after the status line),
 * copied into out. 1 found, 0 not. */
static int head_value(const char *head, size_t hlen, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = head, *end = head + hlen;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            size_t l = (size_t)(ve - v) < cap - 1 ? (size_t)(ve - v) : cap - 1;
            memcpy(out, v, l);
            out[l] = '\0';
            return 1;
        }
        p = eol + 1;
    }
    return 0;
}

/* Decodes a chunked body in place. 1 complete, 0 needs more, -1 malformed. */
static int dechunk(const char *p, size_t n, buf_t *out)
{
    size_t i = 0;
    buf_reset(out);
    for (;;) {
        const char *eol = memchr(p + i, '\n', n - i);
        if (!eol) return 0;
        char *e = NULL;
        unsigned long long sz = strtoull(p + i, &e, 16);
        if (e == p + i) return -1;
        i = (size_t)(eol - p) + 1;
        if (sz == 0) return 1; /* trailers ignored */
        if (sz > n || n - i < sz + 2) return 0;
        if (buf_append(out, p + i, (size_t)sz) < 0) return -1;
        i += (size_t)sz + 2;
    }
}

int cli_http_request(const cli_url_t *base, const char *method, const char *target,
                     const char *const *headers, const char *body, size_t blen,
                     const cli_tls_opts_t *tls, int timeout_ms, cli_http_resp_t *resp, char *err,
                     size_t cap)
{
    memset(resp, 0, sizeof(*resp));
    buf_init(&resp->body);
    int64_t deadline = cli_now_ms() + timeout_ms;
    cli_conn_t *c = NULL;
    int rc = cli_conn_open(&c, base->host, base->port, base->tls, tls, timeout_ms, err, cap);
    if (rc < 0) return rc;
    buf_t req, in;
    buf_init(&req);
    buf_init(&in);
    bool v6 = strchr(base->host, ':') != NULL;
    buf_printf(&req,
               "%s %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: hotplex-cli/%s\r\n"
               "Accept: application/json\r\nConnection: close\r\n",
               method, target, v6 ? "[" : "", base->host, v6 ? "]" : "", base->port,
               HOTPLEX_VERSION);
    for (int i = 0; headers && headers[i]; i++)
        buf_printf(&req, "%s\r\n", headers[i]);
    if (body) buf_printf(&req, "Content-Type: application/json\r\n");
    if (body || strcmp(method, "GET") != 0) buf_printf(&req, "Content-Length: %zu\r\n", blen);
    buf_puts(&req, "\r\n");
    if (body) buf_append(&req, body, blen);
    rc = cli_conn_write(c, req.p, req.len, left_ms(deadline));
    if (rc < 0) {
        snprintf(err, cap, "sending the request to %s:%d: %s", base->host, base->port,
                 strerror(-rc));
        goto out;
    }
    size_t boff = 0; /* offset of the body in `in`, 0 until the head is complete */
    long long clen = -1;
    bool chunked = false;
    for (;;) {
        char tmp[16384];
        ssize_t r = cli_conn_read(c, tmp, sizeof(tmp));
        if (r == -EAGAIN) {
            int w = cli_conn_wait(c, left_ms(deadline));
            if (w == 0) {
                snprintf(err, cap, "no complete answer from %s:%d within %d ms", base->host,
                         base->port, timeout_ms);
                rc = -ETIMEDOUT;
                goto out;
            }
            continue;
        }
        if (r < 0) {
            snprintf(err, cap, "reading from %s:%d: %s", base->host, base->port, strerror((int)-r));
            rc = (int)r;
            goto out;
        }
        if (r > 0 && buf_append(&in, tmp, (size_t)r) < 0) {
            snprintf(err, cap, "out of memory");
            rc = -ENOMEM;
            goto out;
        }
        const char *bodyp = boff ? in.p + boff : NULL;
        if (!bodyp && (bodyp = find_crlf2(in.p, in.len)) != NULL) {
            boff = (size_t)(bodyp - in.p);
            size_t hlen = boff;
            if (sscanf(in.p, "HTTP/1.%*d %d", &resp->status) != 1) {
                snprintf(err, cap, "%s:%d did not answer HTTP", base->host, base->port);
                rc = -EPROTO;
                goto out;
            }
            const char *sp = memchr(in.p, ' ', hlen);
            sp = sp ? memchr(sp + 1, ' ', hlen - (size_t)(sp + 1 - in.p)) : NULL;
            if (sp) {
                size_t l = strcspn(sp + 1, "\r\n");
                if (l >= sizeof(resp->reason)) l = sizeof(resp->reason) - 1;
                memcpy(resp->reason, sp + 1, l);
            }
            const char *h1 = memchr(in.p, '\n', hlen);
            const char *hs = h1 ? h1 + 1 : bodyp;
            size_t hl = (size_t)(bodyp - hs);
            char v[64];
            if (head_value(hs, hl, "content-length", v, sizeof(v))) clen = atoll(v);
            if (head_value(hs, hl, "transfer-encoding", v, sizeof(v)) && strcasestr(v, "chunked"))
                chunked = true;
            head_value(hs, hl, "content-type", resp->content_type, sizeof(resp->content_type));
            if (resp->status == 204 || resp->status == 304 || strcmp(method, "HEAD") == 0) clen = 0;
        }
        if (bodyp) {
            size_t off = boff, have = in.len - off;
            if (chunked) {
                int d = dechunk(in.p + off, have, &resp->body);
                if (d < 0) {
                    snprintf(err, cap, "malformed chunked body from %s:%d", base->host, base->port);
                    rc = -EPROTO;
                    goto out;
                }
                if (d == 1) break;
            } else if (clen >= 0 && (long long)have >= clen) {
                buf_append(&resp->body, in.p + off, (size_t)clen);
                break;
            } else if (r == 0 && clen < 0) {
                buf_append(&resp->body, in.p + off, have);
                break;
            }
        }
        if (r == 0) {
            snprintf(err, cap, "%s:%d closed the connection before a complete answer", base->host,
                     base->port);
            rc = -EPROTO;
            goto out;
        }
    }
    rc = 0;
out:
    cli_conn_close(c);
    buf_free(&req);
    buf_free(&in);
    if (rc < 0) buf_free(&resp->body);
    return rc;
}
