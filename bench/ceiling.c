/*
 * ceiling.c - ws_ceiling: the raw ceiling. A minimal WebSocket server (one
 * thread, epoll, hand-rolled RFC 6455 server side) that speaks just enough
 * AEP for hotplex_loadgen: init -> init_ack, input -> one turn of
 * pre-formatted envelopes (state, message.start, N message.delta, message.end,
 * message, done, state) pushed as fast as the client reads (rate 0) or at a
 * steady rate. No agent process, no JSON parsing beyond finding the
 * directive, no store: what is left is the kernel, loopback TCP and WebSocket
 * framing, i.e. the hardware limit any relay on this machine runs under.
 *
 * Delta text is "[i:t_ns]" + 'x' padding, t_ns taken when the frame is
 * built, so the loadgen's latency here is server-build -> client-receive.
 *
 * usage: ws_ceiling [--listen 127.0.0.1:PORT]   (prints "listening on HOST:PORT")
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"

#define HIGH_WATER (256 * 1024) /* stop building frames for a reader above this */
#define BATCH 64                /* frames built per session between flushes */
#define MAX_TURNQ 256

typedef struct turn {
    long count, size, rate;
} turn_t;

struct sess;

typedef struct conn {
    int fd;
    bool ws, want_out, closing, dead;
    struct conn *g_next; /* graveyard link */
    bbuf_t in, out;
    struct sess *sess;
    struct conn *s_next;
} conn_t;

typedef struct sess {
    char id[96];
    struct sess *h_next;
    conn_t *conns;
    int nconns;
    int64_t seq;
    /* the running turn */
    bool active;
    turn_t cur;
    long i;           /* next delta */
    int phase;        /* 0 start, 1 deltas, 2 end */
    uint64_t t0;      /* turn start (rate pacing) */
    turn_t q[MAX_TURNQ];
    int qh, qn;
    unsigned long msgno;
    struct sess *a_next; /* list of sessions with an active turn */
    bool in_active;
} sess_t;

static int epfd;
static unsigned long id_counter;
#define HBUCKETS 65536
static sess_t *htab[HBUCKETS];
static sess_t *active_list;
static char *pad; /* 'x' * max size */
static size_t pad_len;

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % HBUCKETS;
}

static sess_t *sess_get(const char *id, bool create)
{
    unsigned h = hash(id);
    for (sess_t *s = htab[h]; s; s = s->h_next)
        if (strcmp(s->id, id) == 0) return s;
    if (!create) return NULL;
    sess_t *s = calloc(1, sizeof(*s));
    snprintf(s->id, sizeof(s->id), "%s", id);
    s->h_next = htab[h];
    htab[h] = s;
    return s;
}

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void conn_epoll(conn_t *c, bool out)
{
    if (c->want_out == out) return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static conn_t *graveyard;

/* Detach and close now; the memory goes at the end of the loop turn, since
 * later events of the same epoll batch may still name it. */
static void conn_free(conn_t *c)
{
    if (c->dead) return;
    c->dead = true;
    sess_t *s = c->sess;
    if (s) {
        for (conn_t **pp = &s->conns; *pp; pp = &(*pp)->s_next)
            if (*pp == c) {
                *pp = c->s_next;
                break;
            }
        s->nconns--;
    }
    c->sess = NULL;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    bbuf_free(&c->in);
    bbuf_free(&c->out);
    c->g_next = graveyard;
    graveyard = c;
}

static void bury(void)
{
    while (graveyard) {
        conn_t *c = graveyard;
        graveyard = c->g_next;
        free(c);
    }
}

static bool sess_blocked(const sess_t *s)
{
    for (const conn_t *c = s->conns; c; c = c->s_next)
        if (bbuf_avail(&c->out) >= HIGH_WATER) return true;
    return false;
}

/* Write what is pending. -1: the connection is gone (freed). */
static int conn_flush(conn_t *c)
{
    if (c->dead) return -1;
    while (bbuf_avail(&c->out)) {
        ssize_t n = write(c->fd, c->out.p + c->out.off, bbuf_avail(&c->out));
        if (n > 0) {
            bbuf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_epoll(c, true);
            return 0;
        }
        conn_free(c);
        return -1;
    }
    conn_epoll(c, false);
    if (c->closing) {
        conn_free(c);
        return -1;
    }
    return 0;
}

/* Append one server text frame whose payload is built by snprintf-like
 * pieces: header reserved for the max, payload written in place. */
static char *frame_begin(bbuf_t *b, size_t max_payload)
{
    if (bbuf_reserve(b, max_payload + 10) < 0) return NULL;
    return b->p + b->len + 10; /* payload goes here; header fixed in frame_end */
}

static void frame_end(bbuf_t *b, size_t n)
{
    unsigned char h[10];
    size_t hl = 0;
    h[hl++] = 0x81;
    if (n < 126) {
        h[hl++] = (unsigned char)n;
    } else if (n < 65536) {
        h[hl++] = 126;
        h[hl++] = (unsigned char)(n >> 8);
        h[hl++] = (unsigned char)n;
    } else {
        h[hl++] = 127;
        for (int i = 7; i >= 0; i--)
            h[hl++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    char *payload = b->p + b->len + 10;
    memmove(b->p + b->len + hl, payload, n);
    memcpy(b->p + b->len, h, hl);
    b->len += hl + n;
}

static int env_prefix(char *p, size_t cap, sess_t *s, int64_t seq, const char *type)
{
    unsigned long k = ++id_counter;
    return snprintf(p, cap,
                    "{\"version\":\"aep/v1\",\"id\":\"evt_%08lx-0000-4000-8000-%012lx\",\"seq\":%lld,"
                    "\"session_id\":\"%s\",\"timestamp\":%lld,\"event\":{\"type\":\"%s\",\"data\":",
                    k & 0xffffffffUL, k, (long long)seq, s->id, (long long)unix_ms(), type);
}

/* Append an event with `data` JSON to every conn of the session. */
static void sess_emit(sess_t *s, const char *type, const char *data, size_t dlen)
{
    s->seq++;
    for (conn_t *c = s->conns; c; c = c->s_next) {
        char *p = frame_begin(&c->out, dlen + 512);
        if (!p) continue;
        int n = env_prefix(p, 400, s, s->seq, type);
        memcpy(p + n, data, dlen);
        n += (int)dlen;
        p[n++] = '}';
        p[n++] = '}';
        frame_end(&c->out, (size_t)n);
    }
}

static void sess_emit_delta(sess_t *s, long i, long size)
{
    s->seq++;
    char text[64];
    int tl = snprintf(text, sizeof(text), "[%ld:%llu]", i, (unsigned long long)bu_now_ns());
    size_t padn = size > tl ? (size_t)(size - tl) : 0;
    if (padn > pad_len) padn = pad_len;
    for (conn_t *c = s->conns; c; c = c->s_next) {
        char *p = frame_begin(&c->out, padn + 800);
        if (!p) continue;
        int n = env_prefix(p, 400, s, s->seq, "message.delta");
        n += snprintf(p + n, 300, "{\"message_id\":\"msg_ceil%lu\",\"content\":\"%s", s->msgno, text);
        memcpy(p + n, pad, padn);
        n += (int)padn;
        memcpy(p + n, "\"}}}", 4);
        n += 4;
        frame_end(&c->out, (size_t)n);
    }
}

static void sess_set_active(sess_t *s, bool on)
{
    if (on == s->in_active) return;
    if (on) {
        s->a_next = active_list;
        active_list = s;
    } else {
        for (sess_t **pp = &active_list; *pp; pp = &(*pp)->a_next)
            if (*pp == s) {
                *pp = s->a_next;
                break;
            }
    }
    s->in_active = on;
}

static void turn_start(sess_t *s)
{
    if (s->active || s->qn == 0) return;
    s->cur = s->q[s->qh];
    s->qh = (s->qh + 1) % MAX_TURNQ;
    s->qn--;
    s->active = true;
    s->i = 0;
    s->phase = 0;
    s->msgno++;
    sess_set_active(s, true);
}

/* Build frames for an active session while its readers keep up. Returns
 * true if it stopped because a reader is full. */
static void sess_pump(sess_t *s, uint64_t now)
{
    char d[256];
    int n;
    while (s->active) {
        if (sess_blocked(s)) return; /* EPOLLOUT brings us back */
        if (s->phase == 0) {
            sess_emit(s, "state", "{\"state\":\"running\"}", 19);
            n = snprintf(d, sizeof(d),
                         "{\"id\":\"msg_ceil%lu\",\"role\":\"assistant\",\"content_type\":\"text\"}",
                         s->msgno);
            sess_emit(s, "message.start", d, (size_t)n);
            s->phase = 1;
            s->t0 = now;
        }
        int built = 0;
        while (s->phase == 1 && s->i < s->cur.count && built < BATCH) {
            if (s->cur.rate > 0) {
                uint64_t due = s->t0 + (uint64_t)s->i * (1000000000ULL / (uint64_t)s->cur.rate);
                if (bu_now_ns() < due) break;
            }
            sess_emit_delta(s, s->i, s->cur.size);
            s->i++;
            built++;
        }
        if (s->phase == 1 && s->i >= s->cur.count) {
            n = snprintf(d, sizeof(d), "{\"message_id\":\"msg_ceil%lu\"}", s->msgno);
            sess_emit(s, "message.end", d, (size_t)n);
            /* the full text, as a relay sends it (same size as the deltas) */
            size_t full = (size_t)s->cur.count * (size_t)s->cur.size;
            if (full > pad_len) full = pad_len;
            size_t cap = full + 200;
            char *m = malloc(cap);
            n = snprintf(m, cap,
                         "{\"id\":\"msg_ceil%lu\",\"role\":\"assistant\",\"content\":\"", s->msgno);
            memcpy(m + n, pad, full);
            n += (int)full;
            n += snprintf(m + n, cap - (size_t)n, "\",\"content_type\":\"text\"}");
            sess_emit(s, "message", m, (size_t)n);
            free(m);
            static const char done[] = "{\"success\":true,\"stats\":{\"duration_ms\":0,"
                                       "\"num_turns\":1,\"total_cost_usd\":0}}";
            sess_emit(s, "done", done, sizeof(done) - 1);
            sess_emit(s, "state", "{\"state\":\"idle\"}", 16);
            s->active = false;
            sess_set_active(s, false);
            turn_start(s);
        }
        for (conn_t *c = s->conns, *nx; c; c = nx) {
            nx = c->s_next;
            conn_flush(c);
        }
        if (s->active && s->cur.rate > 0) return; /* the timer brings us back */
    }
}

static void send_text(conn_t *c, const char *m, size_t n)
{
    char *p = frame_begin(&c->out, n);
    if (!p) return;
    memcpy(p, m, n);
    frame_end(&c->out, n);
}

static void on_init(conn_t *c, const char *m, const char *end)
{
    char sid[96] = "";
    const char *data = js_find(m, end, "\"data\":{");
    const char *k = data ? js_find(data, end, "\"session_id\":\"") : NULL;
    size_t kl = 0;
    if (k) js_str(k, end, &kl);
    if (k && kl > 0 && kl < sizeof(sid)) {
        memcpy(sid, k, kl);
        sid[kl] = '\0';
    } else {
        unsigned long x = ++id_counter;
        snprintf(sid, sizeof(sid), "ceil%08lx-0000-4000-8000-%012lx", x, x * 2654435761UL);
    }
    sess_t *s = sess_get(sid, true);
    const char *ls = data ? js_find(data, end, "\"last_seq\":") : NULL;
    int64_t pos = ls ? js_int(ls, end) : s->seq;
    c->sess = s;
    c->s_next = s->conns;
    s->conns = c;
    s->nconns++;
    char buf[1024];
    int n = env_prefix(buf, sizeof(buf), s, pos > 0 ? pos : 1, "init_ack");
    n += snprintf(buf + n, sizeof(buf) - (size_t)n,
                  "{\"session_id\":\"%s\",\"state\":\"running\",\"server_caps\":{"
                  "\"protocol_version\":\"aep/v1\",\"worker_type\":\"claude_code\","
                  "\"supports_resume\":true,\"supports_delta\":true,\"supports_tool_call\":true,"
                  "\"supports_ping\":true,\"max_frame_size\":32768,"
                  "\"modalities\":[\"text\",\"code\"]},\"last_seq\":%lld}}}",
                  s->id, (long long)s->seq);
    send_text(c, buf, (size_t)n);
}

static long directive_num(const char *s, const char *end, const char *key, long def)
{
    const char *p = js_find(s, end, key);
    return p ? (long)js_int(p, end) : def;
}

static void on_input(conn_t *c, const char *m, const char *end)
{
    sess_t *s = c->sess;
    if (!s) return;
    const char *ct = js_find(m, end, "\"content\":\"");
    if (!ct) return;
    size_t n;
    js_str(ct, end, &n);
    const char *ce = ct + n;
    turn_t t = {.count = 3, .size = 6, .rate = 0};
    if (n >= 6 && memcmp(ct, "STREAM", 6) == 0) {
        t.count = directive_num(ct, ce, "count=", 100);
        t.size = directive_num(ct, ce, "size=", 64);
        t.rate = directive_num(ct, ce, "rate=", 0);
    } else if (n > 14 && memcmp(ct, "SCENARIO:long ", 14) == 0) {
        t.count = (long)js_int(ct + 14, ce);
        t.size = 6;
    }
    if (t.size > (long)pad_len) t.size = (long)pad_len;
    if (s->qn < MAX_TURNQ) {
        s->q[(s->qh + s->qn) % MAX_TURNQ] = t;
        s->qn++;
    }
    turn_start(s);
}

static void on_message(conn_t *c, const char *m, size_t n)
{
    const char *end = m + n;
    const char *ev = js_find(m, end, "\"event\":{");
    const char *ty = ev ? js_find(ev, end, "\"type\":\"") : NULL;
    if (!ty) return;
    size_t tl;
    js_str(ty, end, &tl);
    if (tl == 4 && memcmp(ty, "init", 4) == 0) {
        if (!c->sess) on_init(c, m, end);
    } else if (tl == 5 && memcmp(ty, "input", 5) == 0) {
        on_input(c, m, end);
    } else if (tl == 4 && memcmp(ty, "ping", 4) == 0 && c->sess) {
        char buf[512];
        int k = env_prefix(buf, sizeof(buf), c->sess, c->sess->seq ? c->sess->seq : 1, "pong");
        k += snprintf(buf + k, sizeof(buf) - (size_t)k, "{\"state\":\"idle\"}}}");
        send_text(c, buf, (size_t)k);
    }
}

static int handshake(conn_t *c)
{
    char *hend = memmem(c->in.p + c->in.off, bbuf_avail(&c->in), "\r\n\r\n", 4);
    if (!hend) return bbuf_avail(&c->in) > 16384 ? -1 : 0;
    const char *req = c->in.p + c->in.off;
    const char *k = memmem(req, (size_t)(hend - req), "Sec-WebSocket-Key:", 18);
    if (!k) k = memmem(req, (size_t)(hend - req), "sec-websocket-key:", 18);
    if (!k) return -1;
    k += 18;
    while (*k == ' ')
        k++;
    const char *ke = k;
    while (ke < hend && *ke != '\r')
        ke++;
    char cat[128];
    int cl = snprintf(cat, sizeof(cat), "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", (int)(ke - k), k);
    unsigned char dig[EVP_MAX_MD_SIZE];
    unsigned dl = 0;
    EVP_Digest(cat, (size_t)cl, dig, &dl, EVP_sha1(), NULL);
    char acc[64];
    b64_encode(dig, dl, acc);
    char resp[256];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
    bbuf_append(&c->out, resp, (size_t)n);
    bbuf_consume(&c->in, (size_t)(hend + 4 - req));
    c->ws = true;
    return 1;
}

/* -1: connection freed */
static int on_readable(conn_t *c)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
            conn_free(c);
            return -1;
        }
        bbuf_append(&c->in, buf, (size_t)n);
        if ((size_t)n < sizeof(buf)) break;
    }
    if (!c->ws) {
        int r = handshake(c);
        if (r < 0) {
            conn_free(c);
            return -1;
        }
        if (r == 0) return 0;
    }
    for (;;) {
        unsigned char *p = (unsigned char *)c->in.p + c->in.off;
        size_t avail = bbuf_avail(&c->in);
        ws_hdr_t h;
        int hl = ws_parse_hdr(p, avail, &h);
        if (hl < 0) {
            conn_free(c);
            return -1;
        }
        if (hl == 0 || avail - (size_t)hl < h.len) break;
        unsigned char *pl = p + hl;
        if (h.masked)
            for (uint64_t i = 0; i < h.len; i++)
                pl[i] ^= h.mask[i & 3];
        size_t plen = (size_t)h.len;
        if (h.opcode == WS_TEXT || h.opcode == WS_BIN) {
            on_message(c, (char *)pl, plen);
        } else if (h.opcode == WS_PING) {
            ws_frame_append(&c->out, WS_PONG, pl, plen, 0);
        } else if (h.opcode == WS_CLOSE) {
            ws_frame_append(&c->out, WS_CLOSE, pl, plen > 2 ? 2 : plen, 0);
            c->closing = true;
        }
        bbuf_consume(&c->in, (size_t)hl + plen);
    }
    if (c->sess && c->sess->active) {
        sess_pump(c->sess, bu_now_ns());
        return 0; /* c may be gone: do not touch it */
    }
    return conn_flush(c);
}

static volatile sig_atomic_t stop;
static void on_sig(int s)
{
    (void)s;
    stop = 1;
}

int main(int argc, char **argv)
{
    char host[64] = "127.0.0.1";
    int port = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--listen") == 0) {
            const char *colon = strrchr(argv[i + 1], ':');
            if (colon) {
                snprintf(host, sizeof(host), "%.*s", (int)(colon - argv[i + 1]), argv[i + 1]);
                port = atoi(colon + 1);
            }
        }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_sig);
    signal(SIGINT, on_sig);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    pad_len = 16 << 20;
    pad = malloc(pad_len);
    memset(pad, 'x', pad_len);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 4096) < 0) {
        perror("ws_ceiling: bind/listen");
        return 1;
    }
    socklen_t sl = sizeof(sa);
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    printf("listening on %s:%d\n", host, ntohs(sa.sin_port));
    fflush(stdout);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, ls, &lev);
    struct epoll_event evs[256];
    while (!stop) {
        /* paced sessions: sleep until the earliest is due */
        int timeout = 1000;
        uint64_t now = bu_now_ns();
        for (sess_t *s = active_list; s; s = s->a_next) {
            if (s->cur.rate <= 0) {
                if (!sess_blocked(s)) timeout = 0;
                continue;
            }
            uint64_t due = s->t0 + (uint64_t)s->i * (1000000000ULL / (uint64_t)s->cur.rate);
            int ms = due <= now ? 0 : (int)((due - now + 999999) / 1000000);
            if (ms < timeout) timeout = ms;
        }
        int n = epoll_wait(epfd, evs, 256, timeout);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                for (int k = 0; k < 64; k++) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    conn_t *nc = calloc(1, sizeof(*nc));
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (c->dead) continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (on_readable(c) < 0 || c->dead) continue;
            }
            if (evs[i].events & EPOLLOUT) {
                sess_t *s = c->sess;
                if (conn_flush(c) < 0) continue;
                if (s && s->active) sess_pump(s, bu_now_ns());
            }
        }
        now = bu_now_ns();
        for (sess_t *s = active_list, *nx; s; s = nx) {
            nx = s->a_next;
            sess_pump(s, now);
        }
        bury();
    }
    return 0;
}
