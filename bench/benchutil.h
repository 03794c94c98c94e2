/*
 * benchutil.h - small pieces shared by the load generator and the ceiling
 * server: monotonic time, a log-linear latency histogram, growable byte
 * buffers, and RFC 6455 framing (client and server side). Header only,
 * static functions, no global state.
 */
#ifndef HOTPLEX_BENCHUTIL_H
#define HOTPLEX_BENCHUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- time ---------------------------------------------------------------- */

static inline uint64_t bu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- histogram ----------------------------------------------------------- */
/* Values in ns. Exact below 128 ns, then 64 sub-buckets per power of two
 * (<= 1.6 % relative error), up to 2^40 ns (~18 min). */
#define HIST_SUB 64
#define HIST_MAXEXP 34
#define HIST_BUCKETS (2 * HIST_SUB + HIST_MAXEXP * HIST_SUB)

typedef struct hist {
    uint64_t n, sum_ns, max_ns, min_ns;
    uint64_t b[HIST_BUCKETS];
} hist_t;

static inline void hist_init(hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->min_ns = UINT64_MAX;
}

static inline int hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 6; /* v >> shift is in [64, 128) */
    int idx = shift * HIST_SUB + (int)(v >> shift);
    if (idx >= HIST_BUCKETS) idx = HIST_BUCKETS - 1;
    return idx;
}

/* Lower bound of a bucket's values. */
static inline uint64_t hist_value(int idx)
{
    if (idx < 2 * HIST_SUB) return (uint64_t)idx;
    int shift = idx / HIST_SUB - 1;
    uint64_t m = (uint64_t)(idx - shift * HIST_SUB);
    return m << shift;
}

static inline void hist_add(hist_t *h, uint64_t v)
{
    h->n++;
    h->sum_ns += v;
    if (v > h->max_ns) h->max_ns = v;
    if (v < h->min_ns) h->min_ns = v;
    h->b[hist_index(v)]++;
}

static inline void hist_merge(hist_t *into, const hist_t *h)
{
    into->n += h->n;
    into->sum_ns += h->sum_ns;
    if (h->max_ns > into->max_ns) into->max_ns = h->max_ns;
    if (h->min_ns < into->min_ns) into->min_ns = h->min_ns;
    for (int i = 0; i < HIST_BUCKETS; i++)
        into->b[i] += h->b[i];
}

/* Value at quantile q (0..1): the midpoint of the bucket holding it. */
static inline double hist_quantile_ns(const hist_t *h, double q)
{
    if (!h->n) return 0;
    uint64_t rank = (uint64_t)(q * (double)h->n);
    if (rank >= h->n) rank = h->n - 1;
    uint64_t acc = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        acc += h->b[i];
        if (acc > rank) {
            uint64_t lo = hist_value(i), hi = i + 1 < HIST_BUCKETS ? hist_value(i + 1) : lo + 1;
            double mid = ((double)lo + (double)hi) / 2.0;
            if (mid > (double)h->max_ns) mid = (double)h->max_ns;
            if (mid < (double)h->min_ns) mid = (double)h->min_ns;
            return mid;
        }
    }
    return (double)h->max_ns;
}

/* ---- buffers ------------------------------------------------------------- */

typedef struct bbuf {
    char *p;
    size_t len, cap, off; /* off: bytes already consumed from the front */
} bbuf_t;

static inline int bbuf_reserve(bbuf_t *b, size_t more)
{
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->len + more <= b->cap) return 0;
    if (b->off) { /* compact first */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + more <= b->cap) return 0;
    }
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int bbuf_append(bbuf_t *b, const void *d, size_t n)
{
    if (bbuf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

static inline size_t bbuf_avail(const bbuf_t *b)
{
    return b->len - b->off;
}

static inline void bbuf_consume(bbuf_t *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len) b->off = b->len = 0;
}

static inline void bbuf_free(bbuf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ---- WebSocket framing --------------------------------------------------- */

enum { WS_CONT = 0, WS_TEXT = 1, WS_BIN = 2, WS_CLOSE = 8, WS_PING = 9, WS_PONG = 10 };

/* Append one frame. mask != 0: client frame masked with that key. */
static inline int ws_frame_append(bbuf_t *b, int opcode, const void *payload, size_t n,
                                  uint32_t mask)
{
    unsigned char h[14];
    size_t hl = 0;
    h[hl++] = (unsigned char)(0x80 | opcode);
    unsigned char mbit = mask ? 0x80 : 0;
    if (n < 126) {
        h[hl++] = (unsigned char)(mbit | n);
    } else if (n < 65536) {
        h[hl++] = mbit | 126;
        h[hl++] = (unsigned char)(n >> 8);
        h[hl++] = (unsigned char)n;
    } else {
        h[hl++] = mbit | 127;
        for (int i = 7; i >= 0; i--)
            h[hl++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    if (mask) {
        memcpy(h + hl, &mask, 4);
        hl += 4;
    }
    if (bbuf_reserve(b, hl + n) < 0) return -1;
    memcpy(b->p + b->len, h, hl);
    b->len += hl;
    unsigned char *dst = (unsigned char *)b->p + b->len;
    memcpy(dst, payload, n);
    if (mask) {
        const unsigned char *mk = (const unsigned char *)&mask;
        for (size_t i = 0; i < n; i++)
            dst[i] ^= mk[i & 3];
    }
    b->len += n;
    return 0;
}

/* Parse one frame header at p (avail bytes). Returns header length, 0 if
 * more bytes are needed, -1 on a malformed header. Unmasks nothing. */
typedef struct ws_hdr {
    int fin, opcode, masked;
    uint64_t len;
    unsigned char mask[4];
} ws_hdr_t;

static inline int ws_parse_hdr(const unsigned char *p, size_t avail, ws_hdr_t *h)
{
    if (avail < 2) return 0;
    h->fin = p[0] >> 7;
    h->opcode = p[0] & 15;
    h->masked = p[1] >> 7;
    uint64_t len = p[1] & 127;
    size_t hl = 2;
    if (len == 126) {
        if (avail < 4) return 0;
        len = ((uint64_t)p[2] << 8) | p[3];
        hl = 4;
    } else if (len == 127) {
        if (avail < 10) return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | p[2 + i];
        hl = 10;
    }
    if (h->masked) {
        if (avail < hl + 4) return 0;
        memcpy(h->mask, p + hl, 4);
        hl += 4;
    }
    if (len > (1ULL << 40)) return -1;
    h->len = len;
    return (int)hl;
}

/* ---- base64 / accept key ------------------------------------------------- */

static inline size_t b64_encode(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = t[(v >> 6) & 63];
        out[o++] = t[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

/* ---- tiny JSON scanning (the inputs are our own well-formed envelopes) ---- */

/* Pointer just after `"key":` at or after p within [p, end), or NULL. */
static inline const char *js_find(const char *p, const char *end, const char *key_pat)
{
    size_t kl = strlen(key_pat);
    if ((size_t)(end - p) < kl) return NULL;
    const char *last = end - kl;
    while (p <= last) {
        const char *q = memchr(p, key_pat[0], (size_t)(last - p) + 1);
        if (!q) return NULL;
        if (memcmp(q, key_pat, kl) == 0) return q + kl;
        p = q + 1;
    }
    return NULL;
}

static inline int64_t js_int(const char *p, const char *end)
{
    while (p < end && *p == ' ')
        p++;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    int64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9')
        v = v * 10 + (*p++ - '0');
    return neg ? -v : v;
}

/* String body after `"key":"`: sets *len to the bytes up to the closing quote
 * (escapes are skipped over, not decoded). */
static inline const char *js_str(const char *p, const char *end, size_t *len)
{
    const char *q = p;
    while (q < end && *q != '"') {
        if (*q == '\\') q++;
        q++;
    }
    if (q > end) q = end;
    *len = (size_t)(q - p);
    return p;
}

#endif
