/*
 * ratelimit.c - see ratelimit.h.
 *
 * One hash table (separate chaining, power-of-two buckets, grows by doubling)
 * plus one LRU list through the same entries. Keys come from clients, so the
 * table hashes with SipHash-1-3 under a random per-table key: nobody can
 * choose keys that all land in one chain.
 *
 * Owns: its entries and their key copies. Must never: grow past max_keys,
 * block, or read a clock itself (the caller passes now_ms).
 */
#include "auth/ratelimit.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

typedef struct rl_ent {
    struct rl_ent *hnext;       /* hash chain */
    struct rl_ent *prev, *next; /* LRU list, head = most recently used */
    uint64_t hash;
    uint64_t last_ms;       /* bucket: time of the last refill; failures: window start */
    double tokens;          /* bucket */
    uint64_t blocked_until; /* failures: blocked while now < blocked_until */
    unsigned fails;         /* failures in the current window */
    char key[];
} rl_ent_t;

enum { RL_BUCKET, RL_FAILURES };

struct ratelimit {
    int kind;
    double rate_per_ms, burst;       /* bucket */
    unsigned max_fails;              /* failures */
    uint64_t window_ms, cooldown_ms; /* failures */
    size_t max_keys, count;
    rl_ent_t **buckets;
    size_t nbuckets;
    rl_ent_t *head, *tail;
    uint64_t sip_k0, sip_k1;
    uint64_t evictions;
};

/* ---- SipHash-1-3 ------------------------------------------------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

static uint64_t siphash13(const ratelimit_t *rl, const char *s, size_t n)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ rl->sip_k0, v1 = 0x646f72616e646f6dULL ^ rl->sip_k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ rl->sip_k0, v3 = 0x7465646279746573ULL ^ rl->sip_k1;
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t m = 0;
        for (int k = 0; k < 8; k++)
            m |= (uint64_t)p[i + k] << (8 * k);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)n << 56;
    for (int k = 0; i + (size_t)k < n; k++)
        b |= (uint64_t)p[i + k] << (8 * k);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static void seed(ratelimit_t *rl)
{
    uint64_t k[2];
    if (getrandom(k, sizeof(k), GRND_NONBLOCK) != (ssize_t)sizeof(k)) {
        /* No entropy yet (early boot): still differ per process and table. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        k[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
        k[1] = (uint64_t)(uintptr_t)rl * 0xbf58476d1ce4e5b9ULL ^ (uint64_t)ts.tv_sec;
    }
    rl->sip_k0 = k[0];
    rl->sip_k1 = k[1];
}

/* ---- table ------------------------------------------------------------- */

static ratelimit_t *rl_alloc(int kind, size_t max_keys)
{
    ratelimit_t *rl = calloc(1, sizeof(*rl));
    if (!rl) {
        errno = ENOMEM;
        return NULL;
    }
    rl->kind = kind;
    rl->max_keys = max_keys;
    rl->nbuckets = 64;
    rl->buckets = calloc(rl->nbuckets, sizeof(*rl->buckets));
    if (!rl->buckets) {
        free(rl);
        errno = ENOMEM;
        return NULL;
    }
    seed(rl);
    return rl;
}

ratelimit_t *rl_new(double rate_per_s, double burst, size_t max_keys)
{
    if (!isfinite(rate_per_s) || !isfinite(burst) || !(rate_per_s > 0) || !(burst >= 1) ||
        max_keys == 0) {
        errno = EINVAL;
        return NULL;
    }
    ratelimit_t *rl = rl_alloc(RL_BUCKET, max_keys);
    if (!rl) return NULL;
    rl->rate_per_ms = rate_per_s / 1000.0;
    rl->burst = burst;
    return rl;
}

ratelimit_t *rl_new_failures(unsigned max_fails, uint64_t window_ms, uint64_t cooldown_ms,
                             size_t max_keys)
{
    if (max_fails == 0 || window_ms == 0 || cooldown_ms == 0 || max_keys == 0) {
        errno = EINVAL;
        return NULL;
    }
    ratelimit_t *rl = rl_alloc(RL_FAILURES, max_keys);
    if (!rl) return NULL;
    rl->max_fails = max_fails;
    rl->window_ms = window_ms;
    rl->cooldown_ms = cooldown_ms;
    return rl;
}

void rl_free(ratelimit_t *rl)
{
    if (!rl) return;
    for (rl_ent_t *e = rl->head, *n; e; e = n) {
        n = e->next;
        free(e);
    }
    free(rl->buckets);
    free(rl);
}

size_t rl_size(const ratelimit_t *rl)
{
    return rl ? rl->count : 0;
}

uint64_t rl_evictions(const ratelimit_t *rl)
{
    return rl ? rl->evictions : 0;
}

static void lru_unlink(ratelimit_t *rl, rl_ent_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        rl->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        rl->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(ratelimit_t *rl, rl_ent_t *e)
{
    e->prev = NULL;
    e->next = rl->head;
    if (rl->head) rl->head->prev = e;
    rl->head = e;
    if (!rl->tail) rl->tail = e;
}

static void touch(ratelimit_t *rl, rl_ent_t *e)
{
    if (rl->head == e) return;
    lru_unlink(rl, e);
    lru_push_front(rl, e);
}

static rl_ent_t *lookup(const ratelimit_t *rl, const char *key, size_t n, uint64_t h)
{
    for (rl_ent_t *e = rl->buckets[h & (rl->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && memcmp(e->key, key, n + 1) == 0) return e;
    return NULL;
}

static void remove_ent(ratelimit_t *rl, rl_ent_t *e)
{
    rl_ent_t **pp = &rl->buckets[e->hash & (rl->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(rl, e);
    rl->count--;
    free(e);
}

static void grow(ratelimit_t *rl)
{
    size_t nb = rl->nbuckets * 2;
    rl_ent_t **b = calloc(nb, sizeof(*b));
    if (!b) return; /* longer chains, still correct */
    for (size_t i = 0; i < rl->nbuckets; i++)
        for (rl_ent_t *e = rl->buckets[i], *n; e; e = n) {
            n = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    free(rl->buckets);
    rl->buckets = b;
    rl->nbuckets = nb;
}

/* Tokens the bucket would hold at now (without changing it). */
static double tokens_at(const ratelimit_t *rl, const rl_ent_t *e, uint64_t now_ms)
{
    double t = e->tokens;
    if (now_ms > e->last_ms) t += (double)(now_ms - e->last_ms) * rl->rate_per_ms;
    return t < rl->burst ? t : rl->burst;
}

static bool is_blocked(const rl_ent_t *e, uint64_t now_ms)
{
    return now_ms < e->blocked_until;
}

/* An entry that behaves exactly like an absent one. */
static bool is_idle(const ratelimit_t *rl, const rl_ent_t *e, uint64_t now_ms)
{
    if (rl->kind == RL_BUCKET) return tokens_at(rl, e, now_ms) >= rl->burst;
    if (is_blocked(e, now_ms)) return false;
    return e->fails == 0 || now_ms < e->last_ms || now_ms - e->last_ms >= rl->window_ms;
}

static void evict_one(ratelimit_t *rl, uint64_t now_ms)
{
    rl_ent_t *victim = rl->tail;
    int scanned = 0;
    for (rl_ent_t *e = rl->tail; e && scanned < RL_EVICT_SCAN; e = e->prev, scanned++)
        if (is_idle(rl, e, now_ms)) {
            victim = e;
            break;
        }
    if (victim) {
        remove_ent(rl, victim);
        rl->evictions++;
    }
}

/* The entry for key, created (fresh: full bucket / no failures) if absent.
 * NULL on allocation failure. Marks it most recently used. */
static rl_ent_t *get_or_add(ratelimit_t *rl, const char *key, uint64_t now_ms)
{
    size_t n = strlen(key);
    uint64_t h = siphash13(rl, key, n);
    rl_ent_t *e = lookup(rl, key, n, h);
    if (e) {
        touch(rl, e);
        return e;
    }
    e = malloc(sizeof(*e) + n + 1);
    if (!e) return NULL;
    memset(e, 0, sizeof(*e));
    memcpy(e->key, key, n + 1);
    e->hash = h;
    e->last_ms = now_ms;
    e->tokens = rl->burst;
    while (rl->count >= rl->max_keys)
        evict_one(rl, now_ms);
    if (rl->count + 1 > rl->nbuckets / 4 * 3) grow(rl);
    size_t bi = h & (rl->nbuckets - 1);
    e->hnext = rl->buckets[bi];
    rl->buckets[bi] = e;
    lru_push_front(rl, e);
    rl->count++;
    return e;
}

static rl_ent_t *find(ratelimit_t *rl, const char *key)
{
    size_t n = strlen(key);
    return lookup(rl, key, n, siphash13(rl, key, n));
}

/* ---- operations -------------------------------------------------------- */

bool rl_allow(ratelimit_t *rl, const char *key, uint64_t now_ms)
{
    if (!rl || !key) return true;
    assert(rl->kind == RL_BUCKET);
    if (rl->kind != RL_BUCKET) return !rl_blocked(rl, key, now_ms);
    rl_ent_t *e = get_or_add(rl, key, now_ms);
    if (!e) return true; /* fail open, see header */
    e->tokens = tokens_at(rl, e, now_ms);
    if (now_ms > e->last_ms) e->last_ms = now_ms;
    if (e->tokens < 1.0) return false;
    e->tokens -= 1.0;
    return true;
}

void rl_fail(ratelimit_t *rl, const char *key, uint64_t now_ms)
{
    if (!rl || !key) return;
    assert(rl->kind == RL_FAILURES);
    if (rl->kind != RL_FAILURES) return;
    rl_ent_t *e = get_or_add(rl, key, now_ms);
    if (!e) return;
    if (is_blocked(e, now_ms)) {
        e->blocked_until = now_ms + rl->cooldown_ms;
        return;
    }
    if (e->fails == 0 || now_ms < e->last_ms || now_ms - e->last_ms >= rl->window_ms) {
        e->last_ms = now_ms;
        e->fails = 0;
    }
    if (++e->fails >= rl->max_fails) {
        e->blocked_until = now_ms + rl->cooldown_ms;
        e->fails = 0;
    }
}

bool rl_blocked(ratelimit_t *rl, const char *key, uint64_t now_ms)
{
    return rl_blocked_for(rl, key, now_ms) > 0;
}

uint64_t rl_blocked_for(ratelimit_t *rl, const char *key, uint64_t now_ms)
{
    if (!rl || !key) return 0;
    assert(rl->kind == RL_FAILURES);
    if (rl->kind != RL_FAILURES) return 0;
    rl_ent_t *e = find(rl, key);
    if (!e) return 0;
    touch(rl, e);
    return is_blocked(e, now_ms) ? e->blocked_until - now_ms : 0;
}

void rl_forget(ratelimit_t *rl, const char *key)
{
    if (!rl || !key) return;
    rl_ent_t *e = find(rl, key);
    if (e) remove_ent(rl, e);
}

size_t rl_sweep(ratelimit_t *rl, uint64_t now_ms)
{
    if (!rl) return 0;
    size_t n = 0;
    for (rl_ent_t *e = rl->head, *nx; e; e = nx) {
        nx = e->next;
        if (is_idle(rl, e, now_ms)) {
            remove_ent(rl, e);
            n++;
        }
    }
    return n;
}
