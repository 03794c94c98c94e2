/*
 * loadgen.c - hotplex_loadgen: AEP v1 load generator.
 *
 * One thread, epoll, non-blocking sockets, and a hand-rolled client side of
 * RFC 6455 (HTTP upgrade, masked text frames out, fragmented or whole frames
 * in, ping -> pong, close). Chosen over the libwebsockets client because the
 * client must cost much less per frame than the server it measures: here a
 * received frame is one memchr-driven scan of our own envelope format, no
 * allocation, no copy unless the frame arrives fragmented across reads.
 *
 * Modes
 *   stream     --sessions N [--clients K] --turns T --count C --size B --rate R
 *              Each session: one leader connection inits a new session, K-1
 *              followers attach to it (fan-out), then the leader sends T
 *              inputs (at most --pipeline outstanding). The agent is the
 *              synthetic agent (worker claude_code: input "STREAM count=C
 *              size=B rate=R") or the gateway's echo (input "SCENARIO:long C").
 *              Every delta text carries markers "[i:t_ns]"; each receiver
 *              checks per-turn marker order and completeness, seq
 *              contiguity (a merged delta of k markers advances seq by k),
 *              and records receive - t_ns as latency.
 *   idle       --sessions N: open N connections with one new session each,
 *              print a `ready` line, hold until stdin gives a line or EOF
 *              (or --hold seconds), close.
 *   handshake  --concurrency K --duration S [--resume M]: connect, upgrade,
 *              init, init_ack, close, in K parallel slots, for S seconds;
 *              with --resume, first create M sessions, then each init
 *              resumes one of them with its last_seq.
 * Output: one JSON object on stdout (and in --json FILE). Progress and
 * errors on stderr. Every loop is bounded by --timeout.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "benchutil.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define SCRATCH (512 * 1024)
#define MAX_SAMPLES 8

/* ---- configuration ------------------------------------------------------- */

typedef enum { MODE_STREAM, MODE_IDLE, MODE_HANDSHAKE } mode_t_;

static struct {
    mode_t_ mode;
    char host[64];
    int port;
    char path[256];
    int sessions, clients, turns, pipeline;
    long count, size, rate;
    char worker[32];
    double duration_s, timeout_s, hold_s;
    int concurrency, resume, connect_conc, src_ips;
    bool ready_wait;
    char json_path[512];
    char label[64];
} cfg = {
    .mode = MODE_STREAM,
    .host = "127.0.0.1",
    .port = 0,
    .path = "/ws",
    .sessions = 1,
    .clients = 1,
    .turns = 1,
    .pipeline = 1,
    .count = 1000,
    .size = 64,
    .rate = 0,
    .worker = "claude_code",
    .duration_s = 0,
    .timeout_s = 120,
    .hold_s = 0,
    .concurrency = 16,
    .resume = 0,
    .connect_conc = 256,
    .src_ips = 1,
};

/* ---- state --------------------------------------------------------------- */

typedef enum {
    C_FREE,
    C_CONNECTING,
    C_UPGRADING,
    C_INIT_SENT,
    C_READY,
    C_FINISHED,
    C_CLOSED
} cstate_t;

struct sess;

typedef struct conn {
    int fd, idx;
    cstate_t st;
    struct sess *sess;
    bool leader, want_out, counted_open;
    bbuf_t in, out, msg;
    int msg_op;
    uint64_t t_start, t_init;
    /* stream checks */
    int64_t pos;       /* seq of the last stream event seen (-1: unknown yet) */
    int64_t ack_seq;   /* init_ack's seq */
    bool pos_lenient;  /* ack seq 1 may mean position 0 */
    int64_t expect;    /* next marker index in the current turn */
    bool in_turn;
    int turns_done;
    int64_t max_seq;
    /* handshake resume */
    int resume_idx;
} conn_t;

typedef struct sess {
    char id[96];
    int idx;
    conn_t *leader;
    int nconns, acked;
    int turns_sent, turns_final; /* turns_final: -1 until the leader stops sending */
    bool followers_opened;
    int64_t last_seq; /* handshake resume: highest seq seen */
} sess_t;

static int epfd = -1;
static conn_t *conns;
static int nconns_total;
static sess_t *sessions;
static char *scratch;

static struct {
    uint64_t frames, bytes, delta_frames, markers, merged_frames, delta_text_bytes;
    uint64_t lost, reordered, seq_errors, errors, closed_early, done_turns, failed_turns;
    uint64_t connect_fail, init_fail, acks, opened, replayed;
    hist_t lat;     /* agent write -> client receive (markers) */
    hist_t hs_lat;  /* handshake: connect start -> init_ack */
    hist_t ack_lat; /* handshake: init sent -> init_ack */
    char samples[MAX_SAMPLES][240];
    int nsamples;
} st;

static uint64_t t_begin, t_deadline, t_stream_start, t_stream_end, t_first_input;
static int inflight; /* connections between connect() and init_ack */
static int n_ready, n_finished, n_closed_total, n_failed_open;
static bool stream_started, all_ready_reported;
static volatile sig_atomic_t got_signal;

static void sample(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sample(const char *fmt, ...)
{
    char b[240];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof(b), fmt, ap);
    va_end(ap);
    if (st.nsamples < MAX_SAMPLES) snprintf(st.samples[st.nsamples++], sizeof(st.samples[0]), "%s", b);
    static int printed;
    if (printed++ < 20) fprintf(stderr, "loadgen: %s\n", b);
}

/* ---- sockets ------------------------------------------------------------- */

static void conn_epoll(conn_t *c, bool out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

static void conn_close(conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->st == C_CONNECTING || c->st == C_UPGRADING || c->st == C_INIT_SENT) {
        inflight--;
        n_failed_open++;
    }
    if (c->st != C_CLOSED) n_closed_total++;
    c->st = C_CLOSED;
    bbuf_free(&c->in);
    bbuf_free(&c->out);
    bbuf_free(&c->msg);
}

static int conn_flush(conn_t *c)
{
    while (bbuf_avail(&c->out)) {
        ssize_t n = write(c->fd, c->out.p + c->out.off, bbuf_avail(&c->out));
        if (n > 0) {
            bbuf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) conn_epoll(c, true);
            return 0;
        }
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
    if (c->want_out && c->st != C_CONNECTING) conn_epoll(c, false);
    return 0;
}

static uint32_t mask_key(void)
{
    static uint32_t x = 0x12345678;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x ? x : 1;
}

static int conn_send_text(conn_t *c, const char *s, size_t n)
{
    if (ws_frame_append(&c->out, WS_TEXT, s, n, mask_key()) < 0) return -1;
    return conn_flush(c);
}

static bool conn_open(conn_t *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        sample("socket: %s", strerror(errno));
        st.connect_fail++;
        c->st = C_CLOSED;
        n_closed_total++;
        n_failed_open++;
        return false;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (cfg.src_ips > 1) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(c->idx % cfg.src_ips));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        bind(fd, (struct sockaddr *)&src, sizeof(src));
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg.port)};
    inet_pton(AF_INET, cfg.host, &sa.sin_addr);
    c->fd = fd;
    c->st = C_CONNECTING;
    c->t_start = bu_now_ns();
    c->pos = -1;
    c->expect = 0;
    c->in_turn = false;
    c->turns_done = 0;
    c->max_seq = 0;
    c->counted_open = false;
    memset(&c->in, 0, sizeof(c->in));
    memset(&c->out, 0, sizeof(c->out));
    memset(&c->msg, 0, sizeof(c->msg));
    inflight++;
    st.opened++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->want_out = true;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        sample("epoll_ctl: %s", strerror(errno));
        st.connect_fail++;
        conn_close(c);
        return false;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
        sample("connect: %s", strerror(errno));
        st.connect_fail++;
        conn_close(c);
        return false;
    }
    return true;
}

static void send_upgrade(conn_t *c)
{
    unsigned char key[16];
    for (int i = 0; i < 16; i += 4) {
        uint32_t k = mask_key();
        memcpy(key + i, &k, 4);
    }
    char k64[32], req[512];
    b64_encode(key, 16, k64);
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     cfg.path, cfg.host, cfg.port, k64);
    bbuf_append(&c->out, req, (size_t)n);
    c->st = C_UPGRADING;
    conn_flush(c);
}

static void send_init(conn_t *c)
{
    char m[512];
    int n;
    sess_t *s = c->sess;
    if (cfg.mode == MODE_HANDSHAKE && c->resume_idx >= 0) {
        sess_t *r = &sessions[c->resume_idx];
        n = snprintf(m, sizeof(m),
                     "{\"version\":\"aep/v1\",\"event\":{\"type\":\"init\",\"data\":{\"version\":"
                     "\"aep/v1\",\"worker_type\":\"%s\",\"session_id\":\"%s\",\"last_seq\":%lld}}}",
                     cfg.worker, r->id, (long long)r->last_seq);
    } else if (s && !c->leader && s->id[0]) {
        n = snprintf(m, sizeof(m),
                     "{\"version\":\"aep/v1\",\"event\":{\"type\":\"init\",\"data\":{\"version\":"
                     "\"aep/v1\",\"worker_type\":\"%s\",\"session_id\":\"%s\"}}}",
                     cfg.worker, s->id);
    } else {
        n = snprintf(m, sizeof(m),
                     "{\"version\":\"aep/v1\",\"event\":{\"type\":\"init\",\"data\":{\"version\":"
                     "\"aep/v1\",\"worker_type\":\"%s\"}}}",
                     cfg.worker);
    }
    c->t_init = bu_now_ns();
    c->st = C_INIT_SENT;
    if (conn_send_text(c, m, (size_t)n) < 0) {
        sample("conn %d: write init failed", c->idx);
        st.errors++;
        conn_close(c);
    }
}

static void send_input(conn_t *c)
{
    char m[512];
    int n;
    if (strcmp(cfg.worker, "echo") == 0)
        n = snprintf(m, sizeof(m),
                     "{\"version\":\"aep/v1\",\"event\":{\"type\":\"input\",\"data\":{\"content\":"
                     "\"SCENARIO:long %ld\"}}}",
                     cfg.count);
    else
        n = snprintf(m, sizeof(m),
                     "{\"version\":\"aep/v1\",\"event\":{\"type\":\"input\",\"data\":{\"content\":"
                     "\"STREAM count=%ld size=%ld rate=%ld\"}}}",
                     cfg.count, cfg.size, cfg.rate);
    if (!t_first_input) t_first_input = bu_now_ns();
    c->sess->turns_sent++;
    if (conn_send_text(c, m, (size_t)n) < 0) {
        sample("conn %d: write input failed", c->idx);
        st.errors++;
    }
}

/* ---- stream logic -------------------------------------------------------- */

static void conn_finish(conn_t *c)
{
    if (c->st == C_FINISHED || c->st == C_CLOSED) return;
    c->st = C_FINISHED;
    n_finished++;
    t_stream_end = bu_now_ns();
}

static void sess_maybe_send(sess_t *s)
{
    conn_t *l = s->leader;
    if (!l || s->turns_final >= 0) return;
    uint64_t now = bu_now_ns();
    bool time_up = cfg.duration_s > 0 && stream_started &&
                   now - t_stream_start >= (uint64_t)(cfg.duration_s * 1e9);
    while (s->turns_sent < cfg.turns && !time_up &&
           s->turns_sent - l->turns_done < cfg.pipeline && l->st == C_READY)
        send_input(l);
    if (s->turns_sent >= cfg.turns || time_up) {
        s->turns_final = s->turns_sent;
        for (int i = 0; i < nconns_total; i++) {
            conn_t *c = &conns[i];
            if (c->sess == s && c->st == C_READY && c->turns_done >= s->turns_final) conn_finish(c);
        }
    }
}

static void start_streaming(void)
{
    stream_started = true;
    t_stream_start = bu_now_ns();
    for (int i = 0; i < cfg.sessions; i++)
        sess_maybe_send(&sessions[i]);
}

/* Marker scan of one delta's content. Returns the number of markers. */
static int scan_markers(conn_t *c, const char *p, size_t n, uint64_t t_recv)
{
    const char *end = p + n;
    int k = 0;
    while (p < end) {
        const char *b = memchr(p, '[', (size_t)(end - p));
        if (!b) break;
        const char *q = b + 1;
        int64_t i = 0;
        uint64_t ts = 0;
        bool ok = false;
        while (q < end && *q >= '0' && *q <= '9')
            i = i * 10 + (*q++ - '0');
        if (q < end && *q == ':') {
            q++;
            const char *d = q;
            while (q < end && *q >= '0' && *q <= '9')
                ts = ts * 10 + (uint64_t)(*q++ - '0');
            ok = q < end && *q == ']' && q > d;
        }
        if (!ok) {
            p = b + 1;
            continue;
        }
        k++;
        hist_add(&st.lat, t_recv > ts ? t_recv - ts : 0);
        if (i == c->expect) {
            c->expect++;
        } else if (i > c->expect) {
            st.lost += (uint64_t)(i - c->expect);
            sample("conn %d: marker %lld after %lld (lost %lld)", c->idx, (long long)i,
                   (long long)c->expect - 1, (long long)(i - c->expect));
            c->expect = i + 1;
        } else {
            st.reordered++;
            sample("conn %d: marker %lld arrived after %lld (reordered/duplicate)", c->idx,
                   (long long)i, (long long)c->expect - 1);
        }
        p = q + 1;
    }
    return k;
}

static void on_stream_event(conn_t *c, const char *type, size_t tlen, int64_t seq, const char *m,
                            const char *end, uint64_t t_recv)
{
    bool is_delta = tlen == 13 && memcmp(type, "message.delta", 13) == 0;
    int64_t advance = 1;
    if (is_delta) {
        st.delta_frames++;
        const char *ct = js_find(m, end, "\"content\":\"");
        if (ct) {
            size_t n;
            const char *body = js_str(ct, end, &n);
            st.delta_text_bytes += n;
            if (strcmp(cfg.worker, "echo") != 0) {
                int k = scan_markers(c, body, n, t_recv);
                st.markers += (uint64_t)k;
                if (k > 1) {
                    st.merged_frames++;
                    advance = k;
                }
            } else {
                st.markers++;
            }
        }
    }
    bool is_error = tlen == 5 && memcmp(type, "error", 5) == 0;
    if (is_error) {
        const char *d = js_find(m, end, "\"data\":{");
        if (!d) d = m;
        st.errors++;
        sample("conn %d: error event: %.*s", c->idx, (int)((end - d) < 200 ? (end - d) : 200), d);
        /* an error about this connection's own message is a reply: it
         * repeats the connection's position instead of taking a new seq */
        if (seq == (c->pos < 0 ? c->ack_seq : c->pos)) return;
    }
    /* seq contiguity on this connection */
    if (c->pos < 0) {
        int64_t want = c->ack_seq + advance;
        if (!(seq == want || (c->pos_lenient && seq == advance))) {
            st.seq_errors++;
            sample("conn %d: first stream seq %lld after init_ack seq %lld (%.*s)", c->idx,
                   (long long)seq, (long long)c->ack_seq, (int)tlen, type);
        }
    } else if (seq != c->pos + advance) {
        if (is_delta && strcmp(cfg.worker, "echo") == 0 && seq > c->pos) {
            st.merged_frames++; /* echo deltas carry no markers: a gap is a merge */
        } else {
            st.seq_errors++;
            sample("conn %d: seq %lld after %lld (%.*s, %lld markers)", c->idx, (long long)seq,
                   (long long)c->pos, (int)tlen, type, (long long)advance);
        }
    }
    c->pos = seq;

    if (tlen == 13 && memcmp(type, "message.start", 13) == 0) {
        if (c->in_turn && c->expect > 0 && c->expect < cfg.count && strcmp(cfg.worker, "echo")) {
            st.lost += (uint64_t)(cfg.count - c->expect);
            sample("conn %d: new message after %lld of %ld deltas", c->idx, (long long)c->expect,
                   cfg.count);
        }
        c->expect = 0;
        c->in_turn = true;
    } else if (tlen == 4 && memcmp(type, "done", 4) == 0) {
        c->turns_done++;
        st.done_turns++;
        if (!js_find(m, end, "\"success\":true")) {
            st.failed_turns++;
            sample("conn %d: done without success: %.*s", c->idx,
                   (int)((end - m) < 180 ? (end - m) : 180), m);
        }
        if (strcmp(cfg.worker, "echo") != 0 && c->expect < cfg.count) {
            st.lost += (uint64_t)(cfg.count - c->expect);
            sample("conn %d: turn %d ended after %lld of %ld deltas", c->idx, c->turns_done,
                   (long long)c->expect, cfg.count);
        }
        c->expect = 0;
        c->in_turn = false;
        sess_t *s = c->sess;
        if (s) {
            if (c->leader) sess_maybe_send(s);
            if (s->turns_final >= 0 && c->turns_done >= s->turns_final) conn_finish(c);
        }
    } else if (tlen == 7 && memcmp(type, "control", 7) == 0) {
        sample("conn %d: control event: %.*s", c->idx, (int)((end - m) < 200 ? (end - m) : 200), m);
    }
}

static void all_acked_check(void);

static void on_init_ack(conn_t *c, int64_t seq, const char *m, const char *end, uint64_t t_recv)
{
    const char *data = js_find(m, end, "\"data\":{");
    if (!data || js_find(data, end, "\"code\":\"")) {
        st.init_fail++;
        const char *d = data ? data : m;
        sample("conn %d: init failed: %.*s", c->idx, (int)((end - d) < 200 ? (end - d) : 200), d);
        conn_close(c);
        return;
    }
    st.acks++;
    inflight--;
    hist_add(&st.hs_lat, t_recv - c->t_start);
    hist_add(&st.ack_lat, t_recv - c->t_init);
    c->ack_seq = seq;
    c->max_seq = seq;
    c->pos = -1;
    c->pos_lenient = seq == 1;
    if (cfg.mode == MODE_HANDSHAKE) {
        if (c->resume_idx >= 0) {
            /* resumed at our last_seq: the next stream event is last_seq+1 */
            c->ack_seq = sessions[c->resume_idx].last_seq;
            c->pos_lenient = c->ack_seq == 0;
        }
        if (cfg.resume && c->resume_idx < 0 && c->sess) {
            /* preparing a session for later resumes: remember its id */
            const char *sid = js_find(data, end, "\"session_id\":\"");
            size_t n = 0;
            if (sid) js_str(sid, end, &n);
            if (sid && n < sizeof(c->sess->id)) {
                memcpy(c->sess->id, sid, n);
                c->sess->id[n] = '\0';
            }
            c->sess->last_seq = seq;
        }
        c->st = C_READY;
        return;
    }
    sess_t *s = c->sess;
    if (c->leader) {
        const char *sid = js_find(data, end, "\"session_id\":\"");
        size_t n = 0;
        if (sid) js_str(sid, end, &n);
        if (!sid || n >= sizeof(s->id)) {
            st.errors++;
            sample("conn %d: init_ack without session_id", c->idx);
        } else {
            memcpy(s->id, sid, n);
            s->id[n] = '\0';
        }
    }
    s->acked++;
    c->st = C_READY;
    n_ready++;
    all_acked_check();
}

static void on_message(conn_t *c, const char *m, size_t n, uint64_t t_recv)
{
    const char *end = m + n;
    st.frames++;
    st.bytes += n;
    const char *sq = js_find(m, end, "\"seq\":");
    int64_t seq = sq ? js_int(sq, end) : 0;
    if (seq > c->max_seq) c->max_seq = seq;
    const char *ev = js_find(m, end, "\"event\":{");
    const char *ty = ev ? js_find(ev, end, "\"type\":\"") : NULL;
    if (!ty) {
        st.errors++;
        sample("conn %d: message without event.type: %.*s", c->idx, (int)(n < 160 ? n : 160), m);
        return;
    }
    size_t tlen;
    const char *type = js_str(ty, end, &tlen);
    if (tlen == 8 && memcmp(type, "init_ack", 8) == 0) {
        if (c->st != C_INIT_SENT) {
            st.errors++;
            sample("conn %d: unexpected init_ack", c->idx);
            return;
        }
        on_init_ack(c, seq, m, end, t_recv);
        return;
    }
    if (c->st == C_INIT_SENT) {
        st.errors++;
        sample("conn %d: %.*s before init_ack", c->idx, (int)tlen, type);
        return;
    }
    if (tlen == 4 && memcmp(type, "pong", 4) == 0) return;
    if (cfg.mode == MODE_HANDSHAKE) {
        st.replayed++;
        return;
    }
    on_stream_event(c, type, tlen, seq, m, end, t_recv);
}

/* Parse frames out of `p`; returns bytes consumed, or -1 to close. */
static ssize_t parse_frames(conn_t *c, const char *p, size_t avail, uint64_t t_recv)
{
    size_t used = 0;
    while (used < avail) {
        ws_hdr_t h;
        int hl = ws_parse_hdr((const unsigned char *)p + used, avail - used, &h);
        if (hl < 0) {
            sample("conn %d: bad frame header", c->idx);
            st.errors++;
            return -1;
        }
        if (hl == 0 || avail - used - (size_t)hl < h.len) break;
        const char *pl = p + used + hl;
        size_t plen = (size_t)h.len;
        used += (size_t)hl + plen;
        switch (h.opcode) {
        case WS_TEXT:
        case WS_BIN:
            if (h.fin && !bbuf_avail(&c->msg)) {
                on_message(c, pl, plen, t_recv);
            } else {
                c->msg_op = h.opcode;
                bbuf_append(&c->msg, pl, plen);
                if (h.fin) {
                    on_message(c, c->msg.p + c->msg.off, bbuf_avail(&c->msg), t_recv);
                    c->msg.len = c->msg.off = 0;
                }
            }
            break;
        case WS_CONT:
            bbuf_append(&c->msg, pl, plen);
            if (h.fin) {
                on_message(c, c->msg.p + c->msg.off, bbuf_avail(&c->msg), t_recv);
                c->msg.len = c->msg.off = 0;
            }
            break;
        case WS_PING:
            ws_frame_append(&c->out, WS_PONG, pl, plen, mask_key());
            conn_flush(c);
            break;
        case WS_PONG:
            break;
        case WS_CLOSE: {
            int code = plen >= 2 ? ((unsigned char)pl[0] << 8 | (unsigned char)pl[1]) : 1005;
            if (c->st != C_FINISHED && !(cfg.mode == MODE_HANDSHAKE && c->st == C_READY)) {
                st.closed_early++;
                sample("conn %d: server closed (code %d, %.*s) in state %d", c->idx, code,
                       (int)(plen > 2 ? plen - 2 : 0), pl + 2, c->st);
            }
            return -1;
        }
        default:
            break;
        }
        if (c->st == C_CLOSED) return -1;
    }
    return (ssize_t)used;
}

static void on_readable(conn_t *c)
{
    for (int rounds = 0; rounds < 8; rounds++) {
        ssize_t n = read(c->fd, scratch, SCRATCH);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            bool expected = c->st == C_FINISHED || (cfg.mode == MODE_HANDSHAKE && c->st == C_READY);
            if (!expected) {
                st.closed_early++;
                sample("conn %d: connection closed by peer in state %d (%s)", c->idx, c->st,
                       n < 0 ? strerror(errno) : "EOF");
            }
            conn_close(c);
            return;
        }
        uint64_t t_recv = bu_now_ns();
        if (c->st == C_UPGRADING) {
            bbuf_append(&c->in, scratch, (size_t)n);
            char *hdr_end = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
            if (!hdr_end) continue;
            if (c->in.len < 12 || memcmp(c->in.p + 9, "101", 3) != 0) {
                st.connect_fail++;
                sample("conn %d: upgrade refused: %.*s", c->idx,
                       (int)(c->in.len < 80 ? c->in.len : 80), c->in.p);
                conn_close(c);
                return;
            }
            bbuf_consume(&c->in, (size_t)(hdr_end + 4 - c->in.p));
            send_init(c);
            if (c->st == C_CLOSED) return;
            if (!bbuf_avail(&c->in)) continue;
            n = 0; /* fall through with the leftover in c->in */
        }
        ssize_t used;
        if (bbuf_avail(&c->in) || n == 0) {
            if (n > 0) bbuf_append(&c->in, scratch, (size_t)n);
            used = parse_frames(c, c->in.p + c->in.off, bbuf_avail(&c->in), t_recv);
            if (used < 0) {
                conn_close(c);
                return;
            }
            bbuf_consume(&c->in, (size_t)used);
        } else {
            used = parse_frames(c, scratch, (size_t)n, t_recv);
            if (used < 0) {
                conn_close(c);
                return;
            }
            if (used < n) bbuf_append(&c->in, scratch + used, (size_t)(n - used));
        }
        if (c->st == C_CLOSED) return;
        if (cfg.mode == MODE_HANDSHAKE && c->st == C_READY) return;
        if (n < SCRATCH) return; /* drained */
    }
}

static void on_writable(conn_t *c)
{
    if (c->st == C_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            st.connect_fail++;
            sample("conn %d: connect: %s", c->idx, strerror(err));
            conn_close(c);
            return;
        }
        conn_epoll(c, false);
        send_upgrade(c);
        return;
    }
    if (conn_flush(c) < 0) {
        sample("conn %d: write: %s", c->idx, strerror(errno));
        st.errors++;
        conn_close(c);
    }
}

/* ---- orchestration ------------------------------------------------------- */

static int next_to_open;

static void open_more(void)
{
    while (next_to_open < nconns_total && inflight < cfg.connect_conc) {
        conn_t *c = &conns[next_to_open];
        /* followers wait for their leader's init_ack (they need the id) */
        if (!c->leader && c->sess && !c->sess->id[0]) {
            if (c->sess->leader->st != C_CLOSED) break;
            /* the leader failed: its followers never open */
            next_to_open++;
            c->st = C_CLOSED;
            n_failed_open++;
            st.init_fail++;
            continue;
        }
        next_to_open++;
        conn_open(c);
    }
}

static void print_ready(void)
{
    printf("{\"ready\":true,\"connections\":%d,\"acked\":%d,\"init_fail\":%llu,"
           "\"connect_fail\":%llu}\n",
           nconns_total, n_ready, (unsigned long long)st.init_fail,
           (unsigned long long)st.connect_fail);
    fflush(stdout);
}

/* Block until a line (or EOF) on stdin, or hold_s seconds. Keeps servicing
 * the sockets meanwhile (pings). */
static bool stdin_go(void)
{
    struct pollfd p = {.fd = 0, .events = POLLIN};
    if (poll(&p, 1, 0) > 0) {
        char b[256];
        ssize_t n = read(0, b, sizeof(b));
        (void)n;
        return true;
    }
    return false;
}

static uint64_t t_ready;

static void all_acked_check(void)
{
    if (all_ready_reported || cfg.mode == MODE_HANDSHAKE) return;
    if (n_ready + n_failed_open < nconns_total) return;
    all_ready_reported = true;
    t_ready = bu_now_ns();
    fprintf(stderr, "loadgen: %d/%d connections ready in %.2f s\n", n_ready, nconns_total,
            (double)(t_ready - t_begin) / 1e9);
    if (cfg.mode == MODE_IDLE || cfg.ready_wait) print_ready();
    if (cfg.mode == MODE_STREAM && !cfg.ready_wait) start_streaming();
}

static void json_hist(FILE *f, const char *name, const hist_t *h)
{
    fprintf(f,
            "\"%s\":{\"n\":%llu,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,"
            "\"max\":%.1f,\"mean\":%.1f}",
            name, (unsigned long long)h->n, hist_quantile_ns(h, 0.50) / 1e3,
            hist_quantile_ns(h, 0.90) / 1e3, hist_quantile_ns(h, 0.99) / 1e3,
            hist_quantile_ns(h, 0.999) / 1e3, (double)h->max_ns / 1e3,
            h->n ? (double)h->sum_ns / (double)h->n / 1e3 : 0.0);
}

static void report(FILE *f, double elapsed_s, bool timed_out)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    const char *mode = cfg.mode == MODE_STREAM ? "stream" : cfg.mode == MODE_IDLE ? "idle" : "handshake";
    fprintf(f, "{\"label\":\"%s\",\"mode\":\"%s\",\"worker\":\"%s\",\"sessions\":%d,\"clients\":%d,",
            cfg.label, mode, cfg.worker, cfg.sessions, cfg.clients);
    fprintf(f, "\"turns\":%d,\"count\":%ld,\"size\":%ld,\"rate\":%ld,\"pipeline\":%d,",
            cfg.turns, cfg.count, cfg.size, cfg.rate, cfg.pipeline);
    fprintf(f, "\"elapsed_s\":%.4f,\"timed_out\":%s,", elapsed_s, timed_out ? "true" : "false");
    fprintf(f,
            "\"frames\":%llu,\"bytes\":%llu,\"delta_frames\":%llu,\"events\":%llu,"
            "\"merged_frames\":%llu,\"delta_text_bytes\":%llu,",
            (unsigned long long)st.frames, (unsigned long long)st.bytes,
            (unsigned long long)st.delta_frames, (unsigned long long)st.markers,
            (unsigned long long)st.merged_frames, (unsigned long long)st.delta_text_bytes);
    double el = elapsed_s > 0 ? elapsed_s : 1e-9;
    fprintf(f, "\"events_per_s\":%.1f,\"frames_per_s\":%.1f,\"bytes_per_s\":%.1f,",
            (double)st.markers / el, (double)st.frames / el, (double)st.bytes / el);
    fprintf(f,
            "\"turns_done\":%llu,\"failed_turns\":%llu,\"lost\":%llu,\"reordered\":%llu,"
            "\"seq_errors\":%llu,\"errors\":%llu,\"closed_early\":%llu,\"connect_fail\":%llu,"
            "\"init_fail\":%llu,\"acks\":%llu,\"replayed\":%llu,\"opened\":%llu,",
            (unsigned long long)st.done_turns, (unsigned long long)st.failed_turns,
            (unsigned long long)st.lost, (unsigned long long)st.reordered,
            (unsigned long long)st.seq_errors, (unsigned long long)st.errors,
            (unsigned long long)st.closed_early, (unsigned long long)st.connect_fail,
            (unsigned long long)st.init_fail, (unsigned long long)st.acks,
            (unsigned long long)st.replayed, (unsigned long long)st.opened);
    fprintf(f, "\"acks_per_s\":%.1f,", (double)st.acks / el);
    json_hist(f, "latency_us", &st.lat);
    fputc(',', f);
    json_hist(f, "handshake_us", &st.hs_lat);
    fputc(',', f);
    json_hist(f, "init_ack_us", &st.ack_lat);
    fprintf(f, ",\"loadgen_cpu_s\":%.3f,\"error_samples\":[", cpu);
    for (int i = 0; i < st.nsamples; i++) {
        fputc('"', f);
        for (const char *p = st.samples[i]; *p; p++) {
            unsigned char ch = (unsigned char)*p;
            if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
            else if (ch < 0x20) fputc(' ', f);
            else fputc(ch, f);
        }
        fprintf(f, "\"%s", i + 1 < st.nsamples ? "," : "");
    }
    fprintf(f, "]}\n");
}

static void on_sig(int s)
{
    (void)s;
    got_signal = 1;
}

static void usage(void)
{
    fputs("usage: hotplex_loadgen --url ws://127.0.0.1:PORT/ws [--mode stream|idle|handshake]\n"
          "  stream:    --sessions N --clients K --turns T --pipeline P --count C --size B\n"
          "             --rate R --duration S --worker claude_code|echo [--ready-wait]\n"
          "  idle:      --sessions N [--hold S]  (prints a ready line; a stdin line ends it)\n"
          "  handshake: --concurrency K --duration S [--resume M]\n"
          "  common:    --timeout S --connect-concurrency N --src-ips N --json FILE --label L\n",
          stderr);
}

static bool parse_url(const char *u)
{
    if (strncmp(u, "ws://", 5) != 0) return false;
    u += 5;
    const char *colon = strchr(u, ':');
    if (!colon || colon - u >= (long)sizeof(cfg.host)) return false;
    memcpy(cfg.host, u, (size_t)(colon - u));
    cfg.host[colon - u] = '\0';
    cfg.port = atoi(colon + 1);
    const char *slash = strchr(colon, '/');
    snprintf(cfg.path, sizeof(cfg.path), "%s", slash ? slash : "/");
    return cfg.port > 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", 1, 0, 'u'},         {"mode", 1, 0, 'm'},      {"sessions", 1, 0, 'n'},
        {"clients", 1, 0, 'k'},     {"turns", 1, 0, 't'},     {"pipeline", 1, 0, 'P'},
        {"count", 1, 0, 'c'},       {"size", 1, 0, 's'},      {"rate", 1, 0, 'r'},
        {"worker", 1, 0, 'w'},      {"duration", 1, 0, 'd'},  {"timeout", 1, 0, 'T'},
        {"hold", 1, 0, 'H'},        {"concurrency", 1, 0, 'C'}, {"resume", 1, 0, 'R'},
        {"connect-concurrency", 1, 0, 'X'}, {"src-ips", 1, 0, 'I'}, {"ready-wait", 0, 0, 'W'},
        {"json", 1, 0, 'j'},        {"label", 1, 0, 'l'},     {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            if (!parse_url(optarg)) {
                fprintf(stderr, "bad --url %s\n", optarg);
                return 2;
            }
            break;
        case 'm':
            if (!strcmp(optarg, "stream")) cfg.mode = MODE_STREAM;
            else if (!strcmp(optarg, "idle")) cfg.mode = MODE_IDLE;
            else if (!strcmp(optarg, "handshake")) cfg.mode = MODE_HANDSHAKE;
            else {
                usage();
                return 2;
            }
            break;
        case 'n': cfg.sessions = atoi(optarg); break;
        case 'k': cfg.clients = atoi(optarg); break;
        case 't': cfg.turns = atoi(optarg); break;
        case 'P': cfg.pipeline = atoi(optarg); break;
        case 'c': cfg.count = atol(optarg); break;
        case 's': cfg.size = atol(optarg); break;
        case 'r': cfg.rate = atol(optarg); break;
        case 'w': snprintf(cfg.worker, sizeof(cfg.worker), "%s", optarg); break;
        case 'd': cfg.duration_s = atof(optarg); break;
        case 'T': cfg.timeout_s = atof(optarg); break;
        case 'H': cfg.hold_s = atof(optarg); break;
        case 'C': cfg.concurrency = atoi(optarg); break;
        case 'R': cfg.resume = atoi(optarg); break;
        case 'X': cfg.connect_conc = atoi(optarg); break;
        case 'I': cfg.src_ips = atoi(optarg); break;
        case 'W': cfg.ready_wait = true; break;
        case 'j': snprintf(cfg.json_path, sizeof(cfg.json_path), "%s", optarg); break;
        case 'l': snprintf(cfg.label, sizeof(cfg.label), "%s", optarg); break;
        default: usage(); return 2;
        }
    }
    if (!cfg.port || cfg.sessions < 1 || cfg.clients < 1 || cfg.turns < 1 || cfg.pipeline < 1 ||
        cfg.concurrency < 1 || cfg.src_ips < 1 || cfg.src_ips > 250 || cfg.connect_conc < 1) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_sig);
    signal(SIGTERM, on_sig);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    hist_init(&st.lat);
    hist_init(&st.hs_lat);
    hist_init(&st.ack_lat);
    scratch = malloc(SCRATCH);
    epfd = epoll_create1(EPOLL_CLOEXEC);

    t_begin = bu_now_ns();
    t_deadline = t_begin + (uint64_t)(cfg.timeout_s * 1e9);

    int nslots = 0;
    if (cfg.mode == MODE_HANDSHAKE) {
        nslots = cfg.concurrency;
        nconns_total = nslots;
        conns = calloc((size_t)nslots, sizeof(conn_t));
        int nres = cfg.resume > 0 ? cfg.resume : 1;
        sessions = calloc((size_t)nres, sizeof(sess_t));
        for (int i = 0; i < nslots; i++) {
            conns[i].fd = -1;
            conns[i].idx = i;
            conns[i].resume_idx = -1;
            conns[i].st = C_FREE;
        }
    } else {
        nconns_total = cfg.sessions * cfg.clients;
        conns = calloc((size_t)nconns_total, sizeof(conn_t));
        sessions = calloc((size_t)cfg.sessions, sizeof(sess_t));
        /* leaders first, so followers find their session's id */
        for (int s = 0; s < cfg.sessions; s++) {
            sessions[s].idx = s;
            sessions[s].turns_final = -1;
            sessions[s].nconns = cfg.clients;
        }
        int k = 0;
        for (int j = 0; j < cfg.clients; j++)
            for (int s = 0; s < cfg.sessions; s++) {
                conn_t *c = &conns[k];
                c->fd = -1;
                c->idx = k++;
                c->sess = &sessions[s];
                c->leader = j == 0;
                c->resume_idx = -1;
                if (j == 0) sessions[s].leader = c;
            }
        if (!conns || !sessions) {
            fprintf(stderr, "loadgen: out of memory\n");
            return 1;
        }
    }

    /* handshake mode state */
    int hs_phase = cfg.mode == MODE_HANDSHAKE && cfg.resume > 0 ? 0 : 1; /* 0: preparing */
    int prep_next = 0, prep_done = 0;
    uint64_t hs_start = 0, hs_end = 0;
    uint64_t hs_stop = 0;
    int resume_rr = 0;
    bool timed_out = false;
    uint64_t t_hold_end = 0;

    struct epoll_event evs[512];
    for (;;) {
        uint64_t now = bu_now_ns();
        if (got_signal) {
            sample("interrupted by signal");
            timed_out = true;
            break;
        }
        if (now > t_deadline) {
            timed_out = true;
            sample("timeout after %.0f s: %d ready, %d finished of %d", cfg.timeout_s, n_ready,
                   n_finished, nconns_total);
            break;
        }
        if (cfg.mode == MODE_HANDSHAKE) {
            /* recycle finished slots; keep `concurrency` handshakes going */
            if (hs_phase == 0) {
                for (int i = 0; i < nslots; i++) {
                    conn_t *c = &conns[i];
                    if (c->st == C_READY) {
                        c->sess->last_seq = c->max_seq;
                        prep_done++;
                        conn_close(c);
                    }
                    if ((c->st == C_FREE || c->st == C_CLOSED) && prep_next < cfg.resume) {
                        c->sess = &sessions[prep_next++];
                        c->resume_idx = -1;
                        conn_open(c);
                    }
                }
                if (prep_done >= cfg.resume ||
                    (prep_next >= cfg.resume && inflight == 0)) {
                    int nok = 0;
                    for (int i = 0; i < cfg.resume; i++)
                        if (sessions[i].id[0]) nok++;
                    fprintf(stderr, "loadgen: prepared %d sessions for resume\n", nok);
                    for (int i = 0; i < nslots; i++)
                        if (conns[i].st != C_FREE && conns[i].st != C_CLOSED) conn_close(&conns[i]);
                    hs_phase = 1;
                    memset(&st, 0, sizeof(st));
                    hist_init(&st.lat);
                    hist_init(&st.hs_lat);
                    hist_init(&st.ack_lat);
                    inflight = 0;
                }
            }
            if (hs_phase == 1) {
                if (!hs_start) {
                    hs_start = bu_now_ns();
                    hs_stop = hs_start + (uint64_t)((cfg.duration_s > 0 ? cfg.duration_s : 3) * 1e9);
                }
                bool stopping = now >= hs_stop;
                int active = 0;
                for (int i = 0; i < nslots; i++) {
                    conn_t *c = &conns[i];
                    if (c->st == C_READY) {
                        hs_end = bu_now_ns();
                        conn_close(c);
                    }
                    if ((c->st == C_FREE || c->st == C_CLOSED) && !stopping) {
                        c->sess = NULL;
                        if (cfg.resume > 0) {
                            int tries = 0;
                            while (!sessions[resume_rr % cfg.resume].id[0] && tries++ < cfg.resume)
                                resume_rr++;
                            c->resume_idx = resume_rr++ % cfg.resume;
                        }
                        conn_open(c);
                    }
                    if (c->st != C_FREE && c->st != C_CLOSED) active++;
                }
                if (stopping && active == 0) break;
            }
        } else {
            open_more();
            all_acked_check();
            if (cfg.mode == MODE_STREAM && all_ready_reported && !stream_started) {
                if (stdin_go()) start_streaming();
            }
            if (cfg.mode == MODE_STREAM && stream_started) {
                if (cfg.duration_s > 0)
                    for (int s = 0; s < cfg.sessions; s++)
                        sess_maybe_send(&sessions[s]);
                int live = 0;
                for (int i = 0; i < nconns_total; i++)
                    if (conns[i].st == C_READY) live++;
                if (live == 0) break;
            }
            if (cfg.mode == MODE_IDLE && all_ready_reported) {
                if (!t_hold_end && cfg.hold_s > 0) t_hold_end = now + (uint64_t)(cfg.hold_s * 1e9);
                if (stdin_go() || (t_hold_end && now >= t_hold_end)) break;
            }
        }
        int timeout_ms = 20;
        int n = epoll_wait(epfd, evs, 512, timeout_ms);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (c->st == C_CONNECTING && (evs[i].events & (EPOLLHUP | EPOLLERR))) {
                    on_writable(c); /* reports the connect error */
                    continue;
                }
                on_readable(c);
            }
            if (c->fd >= 0 && (evs[i].events & EPOLLOUT)) on_writable(c);
        }
    }

    double elapsed;
    if (cfg.mode == MODE_HANDSHAKE)
        elapsed = (double)((hs_end ? hs_end : bu_now_ns()) - hs_start) / 1e9;
    else if (cfg.mode == MODE_STREAM)
        /* up to the last finished connection, or now if some never finished */
        elapsed = !t_stream_start ? 0
                  : (double)((n_finished == nconns_total && t_stream_end > t_stream_start
                                  ? t_stream_end
                                  : bu_now_ns()) -
                             t_stream_start) / 1e9;
    else
        elapsed = (double)(t_ready ? t_ready - t_begin : bu_now_ns() - t_begin) / 1e9;

    if (cfg.mode == MODE_STREAM) {
        int unfinished = 0;
        for (int i = 0; i < nconns_total; i++)
            if (conns[i].st != C_FINISHED) unfinished++;
        if (unfinished) {
            st.errors++;
            sample("%d of %d connections did not finish their turns", unfinished, nconns_total);
        }
    }
    if (cfg.mode == MODE_IDLE) {
        int not_ready = nconns_total - n_ready;
        if (not_ready) sample("%d of %d connections never became ready", not_ready, nconns_total);
    }
    for (int i = 0; i < nconns_total; i++)
        if (conns[i].fd >= 0) conn_close(&conns[i]);

    report(stdout, elapsed, timed_out);
    fflush(stdout);
    /* one human line on stderr */
    double el = elapsed > 0 ? elapsed : 1e-9;
    fprintf(stderr,
            "loadgen: %s %.2f s: %llu events (%.0f/s), %llu frames, %.1f MB/s, %llu acks (%.0f/s); "
            "latency p50 %.0f us p99 %.0f us p99.9 %.0f us; lost %llu reordered %llu seq_errors "
            "%llu errors %llu\n",
            cfg.mode == MODE_STREAM ? "stream" : cfg.mode == MODE_IDLE ? "idle" : "handshake", elapsed,
            (unsigned long long)st.markers, (double)st.markers / el, (unsigned long long)st.frames,
            (double)st.bytes / el / 1e6, (unsigned long long)st.acks, (double)st.acks / el,
            hist_quantile_ns(&st.lat, 0.5) / 1e3, hist_quantile_ns(&st.lat, 0.99) / 1e3,
            hist_quantile_ns(&st.lat, 0.999) / 1e3, (unsigned long long)st.lost,
            (unsigned long long)st.reordered, (unsigned long long)st.seq_errors,
            (unsigned long long)(st.errors + st.closed_early + st.connect_fail + st.init_fail));
    if (cfg.json_path[0]) {
        FILE *f = fopen(cfg.json_path, "w");
        if (f) {
            report(f, elapsed, timed_out);
            fclose(f);
        }
    }
    bool bad = timed_out || st.lost || st.reordered || st.seq_errors || st.errors ||
               st.closed_early || st.connect_fail || st.init_fail || st.failed_turns;
    return bad ? 1 : 0;
}
