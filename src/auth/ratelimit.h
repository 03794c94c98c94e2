/*
 * ratelimit.h - bounded tables of per-key limits (client address, user id,
 * session id, ...). Two kinds, chosen at creation:
 *
 * Token bucket (rl_new): each key has a bucket of `burst` tokens that refills
 * at `rate_per_s` tokens per second, continuously, up to `burst`. rl_allow()
 * takes one token if there is one. A key seen for the first time starts full.
 *
 * Failure throttle (rl_new_failures): for handshake/authentication failures.
 * rl_fail() records one failure. Failures are counted in a fixed window that
 * opens at the first failure and lasts `window_ms`; the `max_fails`-th failure
 * inside one window blocks the key for `cooldown_ms` from that failure (and
 * starts a fresh count). A failure recorded while the key is blocked pushes
 * the end of the block to now + cooldown_ms (a client hammering through its
 * block stays blocked). rl_blocked() says whether the key is blocked now;
 * callers check it BEFORE trying the credential, and call rl_fail() after a
 * failed one and rl_forget() after a successful one.
 *
 * Bounds: at most max_keys entries. Inserting a new key into a full table
 * evicts one entry: among the RL_EVICT_SCAN least recently used, the first
 * that is "idle" (bucket full again / neither blocked nor counting failures,
 * i.e. equivalent to an absent entry); if none is idle, the least recently
 * used of all. Each key lookup marks the key most recently used. Evictions
 * are counted (rl_evictions) so a metric can show when the bound bites.
 * A caller keying by IPv6 address should key by prefix (e.g. /64): anyone
 * can spray addresses inside their own /64 to flush the table.
 *
 * Time is whatever monotonic milliseconds the caller passes (e.g.
 * clock_mono_ns()/1000000); a time earlier than one already seen for a key
 * counts as no time passing. Single-threaded, no I/O. Allocation failure
 * for a new key fails OPEN (rl_allow returns true, rl_fail records nothing):
 * a limiter must not turn memory pressure into an outage.
 *
 * Calling a function of the other kind is a programming error: asserted in
 * debug builds; otherwise rl_allow on a failure table answers !rl_blocked,
 * and rl_fail/rl_blocked on a bucket table do nothing / answer false.
 */
#ifndef HOTPLEX_RATELIMIT_H
#define HOTPLEX_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RL_EVICT_SCAN 8

typedef struct ratelimit ratelimit_t;

/* Token bucket table. NULL (errno EINVAL) unless rate_per_s > 0, burst >= 1
 * (both finite) and max_keys >= 1; NULL (errno ENOMEM) on allocation failure. */
ratelimit_t *rl_new(double rate_per_s, double burst, size_t max_keys);
/* Failure throttle table. NULL (errno EINVAL) unless max_fails >= 1,
 * window_ms >= 1, cooldown_ms >= 1 and max_keys >= 1. */
ratelimit_t *rl_new_failures(unsigned max_fails, uint64_t window_ms, uint64_t cooldown_ms,
                             size_t max_keys);
void rl_free(ratelimit_t *rl);

/* Bucket: true and one token taken, or false (no token; nothing recorded). */
bool rl_allow(ratelimit_t *rl, const char *key, uint64_t now_ms);

/* Failure throttle: record one failure for key. */
void rl_fail(ratelimit_t *rl, const char *key, uint64_t now_ms);
/* Failure throttle: is key blocked at now_ms? (An unknown key is not.) */
bool rl_blocked(ratelimit_t *rl, const char *key, uint64_t now_ms);
/* Milliseconds until key's block ends; 0 if not blocked (for Retry-After). */
uint64_t rl_blocked_for(ratelimit_t *rl, const char *key, uint64_t now_ms);

/* Either kind: drop key's entry (a success clears its failures). */
void rl_forget(ratelimit_t *rl, const char *key);
/* Either kind: drop every idle entry (periodic cron); returns how many. */
size_t rl_sweep(ratelimit_t *rl, uint64_t now_ms);
size_t rl_size(const ratelimit_t *rl);
uint64_t rl_evictions(const ratelimit_t *rl);

#endif /* HOTPLEX_RATELIMIT_H */
