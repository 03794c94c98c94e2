/*
 * server.c - libwebsockets glue. Owns the lws context and the per-socket
 * data; translates lws callbacks into client_* calls. It assembles inbound
 * fragments into whole messages (bounded by server.max_frame_size: close
 * 1009 above it) and writes outbound frames while the socket is not choked.
 * No AEP logic here.
 */
#include "net/server.h"

#include <libwebsockets.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "auth/auth.h"
#include "auth/ratelimit.h"
#include "core/client.h"
#include "core/frame.h"
#include "core/session.h"
#include "net/rest.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/log.h"

_Static_assert(FRAME_PRE >= LWS_PRE, "FRAME_PRE must leave room for the WebSocket header");

#define WRITES_PER_CALLBACK 64

struct server {
    gateway_t *gw;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    int port;
};

typedef struct pss {
    client_t *c;
    buf_t rx;
    auth_identity_t id; /* from credentials at the upgrade */
    bool authed;        /* id is valid */
    rest_req_t *req;    /* HTTP API response in the making */
} pss_t;

static server_t *g_srv; /* lws callbacks reach the server through this */

static void tp_wake(void *t)
{
    lws_callback_on_writable((struct lws *)t);
}

static void tp_close(void *t, int code, const char *reason)
{
    (void)code;
    (void)reason;
    lws_callback_on_writable((struct lws *)t); /* the writable callback closes */
}

static const client_transport_t transport = {.wake = tp_wake, .close = tp_close};

static int http_reply(struct lws *wsi, unsigned status, const char *type, const char *body,
                      size_t len)
{
    unsigned char hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start,
                                      *end = hdr + sizeof(hdr) - 1;
    if (lws_add_http_common_headers(wsi, status, type, len, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    unsigned char *b = malloc(LWS_PRE + len + 1);
    if (!b) return -1;
    memcpy(b + LWS_PRE, body, len);
    int n = lws_write(wsi, b + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
    free(b);
    if (n < (int)len) return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int serve_health(struct lws *wsi)
{
    gateway_t *gw = g_srv->gw;
    char body[512];
    int n = snprintf(body, sizeof(body),
                     "{\"status\":\"%s\",\"version\":\"%s\",\"uptime_s\":%lld,\"sessions\":%d,"
                     "\"connections\":%d,\"agents\":%d}",
                     gw->shutting_down ? "stopping" : "ok", HOTPLEX_VERSION,
                     (long long)((clock_unix_ms() - gw->started_ms) / 1000),
                     gw_session_count(gw), gw->nclients, gw->nagents);
    return http_reply(wsi, gw->shutting_down ? 503 : 200, "application/json", body, (size_t)n);
}

static int find_credential(struct lws *wsi, char *out, size_t cap);

/* Who is asking over plain HTTP: dev mode anonymous, else a valid credential. */
static int http_identity(struct lws *wsi, auth_identity_t *id)
{
    gateway_t *gw = g_srv->gw;
    memset(id, 0, sizeof(*id));
    if (auth_dev_mode(gw->auth)) {
        snprintf(id->user, sizeof(id->user), "anonymous");
        return 0;
    }
    char peer[64], cred[AUTH_MAX_CREDENTIAL + 1];
    lws_get_peer_simple(wsi, peer, sizeof(peer));
    uint64_t now = clock_mono_ns() / 1000000;
    if (rl_blocked(gw->auth_failures, peer, now)) return 429;
    const char *why;
    int rc = find_credential(wsi, cred, sizeof(cred)) && auth_check(gw->auth, cred, id, &why) == 0;
    memset(cred, 0, sizeof(cred));
    if (!rc) {
        rl_fail(gw->auth_failures, peer, now);
        gw->ctr.auth_failed++;
        return 401;
    }
    return 0;
}

static int write_rest(struct lws *wsi, pss_t *p)
{
    rest_req_t *r = p->req;
    p->req = NULL;
    int rc = http_reply(wsi, r->status, "application/json", r->body, r->len);
    rest_req_free(r);
    return rc;
}

static long long urlarg_ll(struct lws *wsi, const char *name, long long def)
{
    char buf[64];
    const char *v = lws_get_urlarg_by_name(wsi, name, buf, sizeof(buf));
    if (!v) return def;
    char *end;
    long long x = strtoll(v, &end, 10);
    return *v && !*end ? x : -1;
}

static int serve_api(struct lws *wsi, pss_t *p, const char *path)
{
    static const char prefix[] = "/api/sessions/";
    char id[64];
    const char *rest = path + sizeof(prefix) - 1;
    const char *slash = strchr(rest, '/');
    if (!slash || (size_t)(slash - rest) >= sizeof(id) || strcmp(slash, "/events") != 0)
        return -2;
    memcpy(id, rest, (size_t)(slash - rest));
    id[slash - rest] = '\0';
    auth_identity_t who;
    int st = http_identity(wsi, &who);
    if (st) {
        static const char unauth[] =
            "{\"error\":{\"code\":\"UNAUTHORIZED\",\"message\":\"valid credentials required\"}}";
        static const char limited[] =
            "{\"error\":{\"code\":\"RATE_LIMITED\",\"message\":\"too many failed attempts\"}}";
        return st == 401 ? http_reply(wsi, 401, "application/json", unauth, sizeof(unauth) - 1)
                         : http_reply(wsi, 429, "application/json", limited, sizeof(limited) - 1);
    }
    p->req = rest_session_events(g_srv->gw, wsi, id, who.user, who.bot_id,
                                 urlarg_ll(wsi, "after=", 0), urlarg_ll(wsi, "limit=", 100));
    if (!p->req) return -1;
    if (p->req->ready) return write_rest(wsi, p);
    return 0; /* answered from the writable callback once the store replied */
}

static int serve_http(struct lws *wsi, pss_t *p, const char *path)
{
    static const char not_found[] = "{\"error\":{\"code\":\"NOT_FOUND\",\"message\":\"no such route\"}}";
    static const char upgrade[] =
        "{\"error\":{\"code\":\"UPGRADE_REQUIRED\",\"message\":\"/ws is a WebSocket endpoint\"}}";
    if (strcmp(path, "/health") == 0) return serve_health(wsi);
    if (strncmp(path, "/api/sessions/", 14) == 0) {
        int rc = serve_api(wsi, p, path);
        if (rc != -2) return rc;
    }
    if (strcmp(path, "/ws") == 0)
        return http_reply(wsi, 426, "application/json", upgrade, sizeof(upgrade) - 1);
    return http_reply(wsi, 404, "application/json", not_found, sizeof(not_found) - 1);
}

static void peer_name(struct lws *wsi, char *out, size_t cap)
{
    char ip[64] = "?";
    lws_get_peer_simple(wsi, ip, sizeof(ip));
    snprintf(out, cap, "%s", ip);
}

/* Write the close frame ourselves and drop the connection: lws 4.1 does not
 * send the status set with lws_close_reason() when the close starts from a
 * writable callback (the peer would see 1006). */
static int send_close(struct lws *wsi, int code, const char *reason)
{
    unsigned char frame[LWS_PRE + 125];
    size_t rlen = strlen(reason);
    if (rlen > 123) rlen = 123;
    frame[LWS_PRE] = (unsigned char)(code >> 8);
    frame[LWS_PRE + 1] = (unsigned char)(code & 0xff);
    memcpy(frame + LWS_PRE + 2, reason, rlen);
    lws_write(wsi, frame + LWS_PRE, 2 + rlen, (enum lws_write_protocol)4 /* close */);
    return -1;
}

/* The credential a request carries, in the places the spec lists: the API
 * key header, Authorization: Bearer, ?api_key= or ?token=. 1 if found. */
static int find_credential(struct lws *wsi, char *out, size_t cap)
{
    const hp_config_t *cfg = g_srv->gw->cfg;
    char name[80];
    size_t n = 0;
    for (const char *h = cfg->api_key_header; *h && n + 2 < sizeof(name); h++)
        name[n++] = (char)(*h >= 'A' && *h <= 'Z' ? *h + 32 : *h);
    name[n++] = ':';
    name[n] = '\0';
    if (lws_hdr_custom_length(wsi, name, (int)n) > 0 &&
        lws_hdr_custom_copy(wsi, out, (int)cap, name, (int)n) > 0)
        return 1;
    char bearer[AUTH_MAX_CREDENTIAL + 16];
    if (lws_hdr_copy(wsi, bearer, sizeof(bearer), WSI_TOKEN_HTTP_AUTHORIZATION) > 0 &&
        strncasecmp(bearer, "Bearer ", 7) == 0) {
        size_t bl = strlen(bearer + 7);
        if (bl >= cap) return 0; /* longer than any credential we accept */
        memcpy(out, bearer + 7, bl + 1);
        return out[0] != '\0';
    }
    const char *v = lws_get_urlarg_by_name(wsi, "api_key=", out, (int)cap);
    if (!v) v = lws_get_urlarg_by_name(wsi, "token=", out, (int)cap);
    if (v) {
        memmove(out, v, strlen(v) + 1);
        return out[0] != '\0';
    }
    return 0;
}

static bool origin_allowed(struct lws *wsi)
{
    const hp_config_t *cfg = g_srv->gw->cfg;
    if (cfg->n_allowed_origins == 0) return true;
    char origin[256];
    if (lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN) <= 0)
        return true; /* not a browser: nothing to check */
    for (int i = 0; i < cfg->n_allowed_origins; i++)
        if (strcmp(origin, cfg->allowed_origins[i]) == 0) return true;
    return false;
}

/* Refuse a WebSocket upgrade with a real HTTP status. lws 4.1 cannot send a
 * response from the protocol filter (the client just sees the socket drop),
 * so the few bytes go straight to the socket, which has just been read from
 * and has room; then the connection is dropped. */
static int reject_upgrade(struct lws *wsi, unsigned status, const char *why, int retry_s)
{
    char resp[512];
    const char *text = status == 401 ? "Unauthorized" : status == 403 ? "Forbidden"
                                                     : "Too Many Requests";
    char body[160];
    int bn = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}",
                      status == 429 ? "RATE_LIMITED" : status == 401 ? "UNAUTHORIZED" : "FORBIDDEN",
                      why);
    char retry[48] = "";
    if (status == 429) snprintf(retry, sizeof(retry), "retry-after: %d\r\n", retry_s > 0 ? retry_s : 1);
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 %u %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     "%sconnection: close\r\n\r\n%s",
                     status, text, bn, retry, body);
    if (lws_is_ssl(wsi)) {
        /* under TLS the bytes go through the connection's SSL object */
        SSL *ssl = (SSL *)lws_get_ssl(wsi);
        if (ssl) SSL_write(ssl, resp, n);
    } else {
        ssize_t w = send(lws_get_socket_fd(wsi), resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    return -1;
}

/* Upgrade-time checks: origin, throttle, credentials (spec section 1).
 * Invalid credentials present: 401, no upgrade. None: the upgrade succeeds
 * and init.data.auth.token decides. */
static int filter_upgrade(struct lws *wsi, pss_t *p)
{
    gateway_t *gw = g_srv->gw;
    char peer[64];
    peer_name(wsi, peer, sizeof(peer));
    if (!origin_allowed(wsi)) {
        log_info("upgrade refused peer=%s: origin not allowed", peer);
        return reject_upgrade(wsi, 403, "origin not allowed", 0);
    }
    uint64_t now = clock_mono_ns() / 1000000;
    if (rl_blocked(gw->auth_failures, peer, now)) {
        gw->ctr.rate_limited++;
        return reject_upgrade(wsi, 429, "too many failed attempts",
                              (int)((rl_blocked_for(gw->auth_failures, peer, now) + 999) / 1000));
    }
    if (auth_dev_mode(gw->auth)) return 0;
    char cred[AUTH_MAX_CREDENTIAL + 1];
    if (!find_credential(wsi, cred, sizeof(cred))) return 0;
    const char *why = NULL;
    if (auth_check(gw->auth, cred, &p->id, &why) < 0) {
        memset(cred, 0, sizeof(cred));
        rl_fail(gw->auth_failures, peer, now);
        gw->ctr.auth_failed++;
        log_info("upgrade refused peer=%s: %s", peer, why);
        return reject_upgrade(wsi, 401, "invalid credentials", 0);
    }
    memset(cred, 0, sizeof(cred));
    p->authed = true;
    return 0;
}

/* Several frames in one writable callback: cork the socket so the kernel
 * packs them into full segments instead of sending one per frame (on
 * loopback every segment runs the whole TCP receive path in the sender's
 * system call). Uncorking sends what is left at once. */
static void set_cork(struct lws *wsi, int on)
{
    int fd = (int)lws_get_socket_fd(wsi);
    if (fd >= 0) (void)setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
}

static int on_writable(struct lws *wsi, pss_t *p)
{
    client_t *c = p->c;
    gateway_t *gw = g_srv->gw;
    uint64_t now_ns = 0; /* read once per callback, at the first stream frame */
    bool corked = false;
    int ret = 0;
    client_set_choked(c, false); /* writable again: the client is reading */
    for (int i = 0; i < WRITES_PER_CALLBACK; i++) {
        char *json;
        size_t len;
        int rc = client_next_frame(c, &json, &len);
        if (rc < 0) {
            /* the close frame needs a writable callback of its own: lws
             * drops it when frames were written in this one */
            if (i > 0) break;
            return send_close(wsi, c->close_code, c->close_reason);
        }
        if (rc == 0) goto out;
        if (i == 1) {
            set_cork(wsi, 1);
            corked = true;
        }
        int n = lws_write(wsi, (unsigned char *)json, len, LWS_WRITE_TEXT);
        if (n < (int)len) {
            ret = -1;
            goto out;
        }
        gw->ctr.frames_out++;
        gw->ctr.bytes_out += len;
        const frame_t *f = frame_of_json(json);
        if (f->t_ns) { /* a stream event: commit -> socket latency */
            if (!now_ns) now_ns = clock_mono_ns();
            hist_observe(&gw->ctr.event_latency, now_ns > f->t_ns ? now_ns - f->t_ns : 0);
        }
        /* Never write after a partial write (lws holds the rest and must send
         * it first). lws_send_pipe_choked costs a poll(2): ask it only every
         * 8 frames; a socket that fills in between shows up as a partial. */
        if (lws_partial_buffered(wsi) || ((i & 7) == 7 && lws_send_pipe_choked(wsi))) {
            client_set_choked(c, true); /* the socket is full: the backlog bound applies */
            break;
        }
    }
    lws_callback_on_writable(wsi); /* more may be pending */
out:
    if (corked) set_cork(wsi, 0);
    return ret;
}

static int on_receive(struct lws *wsi, pss_t *p, const void *in, size_t len)
{
    size_t max = g_srv->gw->cfg->max_frame_size;
    if (p->rx.len + len > max) {
        static const char why[] = "message too large";
        log_info("closing %s: inbound message over %zu bytes", p->c->peer, max);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)why,
                         sizeof(why) - 1);
        return -1;
    }
    if (buf_append(&p->rx, in, len) < 0) return -1;
    if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
        client_on_message(p->c, p->rx.p ? p->rx.p : "", p->rx.len);
        buf_reset(&p->rx);
        if (p->rx.cap > 65536) { /* do not keep a large buffer around */
            buf_free(&p->rx);
            buf_init(&p->rx);
        }
    }
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    pss_t *p = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
        return g_srv && g_srv->gw->shutting_down ? 1 : 0;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char uri[64];
        if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0 || strcmp(uri, "/ws") != 0)
            return 1; /* only /ws upgrades */
        return filter_upgrade(wsi, p);
    }
    case LWS_CALLBACK_ESTABLISHED: {
        char peer[64];
        peer_name(wsi, peer, sizeof(peer));
        buf_init(&p->rx);
        gateway_t *gw = g_srv->gw;
        /* dev mode: anonymous; credentials at the upgrade: that user; else
         * the user is decided by init.data.auth.token */
        const char *who = auth_dev_mode(gw->auth) ? "anonymous" : p->authed ? p->id.user : "";
        p->c = client_new(gw, &transport, wsi, peer, who);
        if (p->c && p->authed) snprintf(p->c->bot_id, sizeof(p->c->bot_id), "%s", p->id.bot_id);
        return p->c ? 0 : -1;
    }
    case LWS_CALLBACK_RECEIVE:
        return p->c ? on_receive(wsi, p, in, len) : -1;
    case LWS_CALLBACK_RECEIVE_PONG:
        if (p->c) p->c->last_rx_ms = clock_unix_ms();
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return p->c ? on_writable(wsi, p) : -1;
    case LWS_CALLBACK_CLOSED:
        if (p->c) client_on_close(p->c);
        p->c = NULL;
        buf_free(&p->rx);
        return 0;
    case LWS_CALLBACK_HTTP:
        return serve_http(wsi, p, (const char *)in);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (p && p->req && p->req->ready) return write_rest(wsi, p);
        return 0;
    case LWS_CALLBACK_CLOSED_HTTP:
        if (p && p->req) {
            if (p->req->pending) p->req->wsi = NULL; /* the store read frees it */
            else rest_req_free(p->req);
            p->req = NULL;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols protocols[] = {
    {"aep", callback, sizeof(pss_t), 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void lws_log(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
    log_msg(level == LLL_ERR ? LOG_ERROR : level == LLL_WARN ? LOG_WARN : LOG_DEBUG, "lws: %.*s",
            (int)n, line);
}

server_t *server_start(gateway_t *gw, char *err, size_t cap)
{
    server_t *srv = calloc(1, sizeof(*srv));
    if (!srv) return NULL;
    srv->gw = gw;
    g_srv = srv;
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log);
    void *loops[] = {gw->loop};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    info.port = gw->cfg->listen_port;
    info.iface = gw->cfg->listen_host;
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DISABLE_IPV6;
    info.foreign_loops = loops;
    /* lws pings an idle connection and hangs up when nothing came back */
    static lws_retry_bo_t retry;
    retry.secs_since_valid_ping = (uint16_t)(gw->cfg->ping_interval_ms / 1000);
    retry.secs_since_valid_hangup = (uint16_t)(gw->cfg->client_timeout_ms / 1000);
    if (retry.secs_since_valid_ping) info.retry_and_idle_policy = &retry;
    info.timeout_secs = 10; /* HTTP and upgrade stages: slow-loris bound */
    info.max_http_header_data = 4096;
    info.vhost_name = "default";
    if (gw->cfg->tls_cert_file[0]) { /* wss:// and https:// on the same port */
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = gw->cfg->tls_cert_file;
        info.ssl_private_key_filepath = gw->cfg->tls_key_file;
    }
    srv->ctx = lws_create_context(&info);
    if (!srv->ctx) {
        snprintf(err, cap, "cannot listen on %s:%d", gw->cfg->listen_host, gw->cfg->listen_port);
        free(srv);
        g_srv = NULL;
        return NULL;
    }
    srv->vh = lws_get_vhost_by_name(srv->ctx, "default");
    srv->port = srv->vh ? lws_get_vhost_listen_port(srv->vh) : 0;
    if (srv->port <= 0) {
        /* lws keeps a context without its listener when binding or TLS setup
         * fails: serving nothing while claiming to listen is worse than exiting */
        snprintf(err, cap, "cannot listen on %s:%d (address in use, bad address, or TLS files "
                           "unusable)", gw->cfg->listen_host, gw->cfg->listen_port);
        lws_context_destroy(srv->ctx);
        free(srv);
        g_srv = NULL;
        return NULL;
    }
    return srv;
}

int server_port(const server_t *srv)
{
    return srv->port;
}

struct lws_context *server_lws_context(const server_t *srv)
{
    return srv->ctx;
}

void server_stop(server_t *srv)
{
    if (!srv) return;
    lws_context_destroy(srv->ctx);
    g_srv = NULL;
    free(srv);
}
