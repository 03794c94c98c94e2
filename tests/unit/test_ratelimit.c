/*
 * test_ratelimit.c - auth/ratelimit: token buckets (burst, refill, cap at
 * burst, clock going backwards, keys independent), the failure throttle
 * (window, block, cooldown, extension, forget), the max_keys bound with
 * idle-first LRU eviction, sweep, and argument checks. Time is passed in,
 * so nothing here sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/ratelimit.h"

static void test_bucket_burst_and_refill(void **state)
{
    (void)state;
    ratelimit_t *rl = rl_new(2.0, 5.0, 100); /* 2/s, burst 5 */
    assert_non_null(rl);
    uint64_t t = 1000000;
    for (int i = 0; i < 5; i++)
        assert_true(rl_allow(rl, "1.2.3.4", t));
    assert_false(rl_allow(rl, "1.2.3.4", t));
    assert_false(rl_allow(rl, "1.2.3.4", t + 499)); /* 0.998 tokens */
    assert_true(rl_allow(rl, "1.2.3.4", t + 500));  /* 1 token after 500 ms */
    assert_false(rl_allow(rl, "1.2.3.4", t + 500));
    /* other keys are independent */
    assert_true(rl_allow(rl, "5.6.7.8", t + 500));
    /* refill is capped at burst */
    t += 1000000;
    for (int i = 0; i < 5; i++)
        assert_true(rl_allow(rl, "1.2.3.4", t));
    assert_false(rl_allow(rl, "1.2.3.4", t));
    /* a denied call takes nothing: steady 2/s is allowed exactly */
    int ok = 0;
    for (uint64_t ms = 1; ms <= 10000; ms++)
        ok += rl_allow(rl, "1.2.3.4", t + ms);
    assert_int_equal(ok, 20);
    rl_free(rl);
}

static void test_bucket_fractional_and_clock_backwards(void **state)
{
    (void)state;
    ratelimit_t *rl = rl_new(0.5, 1.0, 10); /* one every 2 s */
    uint64_t t = 50000;
    assert_true(rl_allow(rl, "k", t));
    assert_false(rl_allow(rl, "k", t + 1999));
    /* earlier time: no refill, no underflow */
    assert_false(rl_allow(rl, "k", t - 40000));
    assert_true(rl_allow(rl, "k", t + 2000));
    assert_false(rl_allow(rl, "k", t + 2001));
    rl_free(rl);
}

static void test_bucket_bound_and_lru(void **state)
{
    (void)state;
    ratelimit_t *rl = rl_new(1.0, 2.0, 3);
    uint64_t t = 1000;
    /* a, b, c each used up */
    const char *keys[] = {"a", "b", "c"};
    for (int k = 0; k < 3; k++) {
        assert_true(rl_allow(rl, keys[k], t));
        assert_true(rl_allow(rl, keys[k], t));
        assert_false(rl_allow(rl, keys[k], t));
    }
    assert_int_equal(rl_size(rl), 3);
    /* touch a, so b is the least recently used */
    assert_false(rl_allow(rl, "a", t));
    assert_true(rl_allow(rl, "d", t));
    assert_int_equal(rl_size(rl), 3);
    assert_int_equal(rl_evictions(rl), 1);
    /* b was evicted (fresh bucket), a and c were kept (still empty) */
    assert_false(rl_allow(rl, "a", t));
    assert_false(rl_allow(rl, "c", t));
    /* b is new again: full bucket; the LRU now is d (half used, not idle) */
    assert_true(rl_allow(rl, "b", t));
    assert_true(rl_allow(rl, "d", t)); /* d was evicted: a fresh bucket again */
    assert_int_equal(rl_size(rl), 3);
    rl_free(rl);
}

static void test_bucket_evicts_idle_first(void **state)
{
    (void)state;
    ratelimit_t *rl = rl_new(1.0, 2.0, 3);
    uint64_t t = 1000;
    /* "hot" is older but exhausted; "idle" was used once long ago and is full again */
    assert_true(rl_allow(rl, "idle", t));
    assert_true(rl_allow(rl, "hot", t + 5000));
    assert_true(rl_allow(rl, "hot", t + 5000));
    assert_false(rl_allow(rl, "hot", t + 5000));
    assert_true(rl_allow(rl, "x", t + 5000));
    /* LRU order now: idle (oldest), hot, x. idle is full: evicted first. */
    assert_true(rl_allow(rl, "y", t + 5000));
    assert_false(rl_allow(rl, "hot", t + 5000)); /* hot kept its empty bucket */
    rl_free(rl);

    /* the bound holds under a flood of distinct keys, and a hot key that
     * keeps being used is never the LRU */
    rl = rl_new(1.0, 1.0, 64);
    assert_true(rl_allow(rl, "victim", 0));
    char k[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(k, sizeof(k), "flood-%d", i);
        rl_allow(rl, k, 0);
        assert_true(rl_size(rl) <= 64);
        if (i % 16 == 0) assert_false(rl_allow(rl, "victim", 0));
    }
    assert_int_equal(rl_size(rl), 64);
    assert_true(rl_evictions(rl) >= 10000 - 64);
    rl_free(rl);
}

static void test_failures_block_and_cooldown(void **state)
{
    (void)state;
    /* 3 failures within 10 s -> blocked for 60 s */
    ratelimit_t *rl = rl_new_failures(3, 10000, 60000, 100);
    assert_non_null(rl);
    uint64_t t = 100000;
    assert_false(rl_blocked(rl, "ip", t));
    assert_int_equal(rl_size(rl), 0); /* asking does not create entries */
    rl_fail(rl, "ip", t);
    rl_fail(rl, "ip", t + 1000);
    assert_false(rl_blocked(rl, "ip", t + 1000));
    rl_fail(rl, "ip", t + 2000);
    assert_true(rl_blocked(rl, "ip", t + 2000));
    assert_int_equal(rl_blocked_for(rl, "ip", t + 2000), 60000);
    assert_int_equal(rl_blocked_for(rl, "ip", t + 32000), 30000);
    assert_true(rl_blocked(rl, "ip", t + 61999));
    assert_false(rl_blocked(rl, "ip", t + 62000));
    assert_int_equal(rl_blocked_for(rl, "ip", t + 62000), 0);
    /* after the cooldown the count starts afresh */
    rl_fail(rl, "ip", t + 63000);
    rl_fail(rl, "ip", t + 64000);
    assert_false(rl_blocked(rl, "ip", t + 64000));
    /* other keys unaffected */
    assert_false(rl_blocked(rl, "other", t + 64000));
    rl_free(rl);
}

static void test_failures_window_expires(void **state)
{
    (void)state;
    ratelimit_t *rl = rl_new_failures(3, 10000, 60000, 100);
    uint64_t t = 0;
    rl_fail(rl, "u", t);
    rl_fail(rl, "u", t + 9000);
    rl_fail(rl, "u", t + 10000); /* window from t closed: this opens a new one */
    assert_false(rl_blocked(rl, "u", t + 10000));
    rl_fail(rl, "u", t + 15000);
    rl_fail(rl, "u", t + 19999); /* third in the window from t+10000 */
    assert_true(rl_blocked(rl, "u", t + 19999));
    rl_free(rl);
}

static void test_failures_extend_and_forget(void **state)
{
    (void)state;
    ratelimit_t *rl = rl_new_failures(2, 10000, 5000, 100);
    rl_fail(rl, "k", 1000);
    rl_fail(rl, "k", 1000);
    assert_true(rl_blocked(rl, "k", 1000));
    /* failing while blocked pushes the end out */
    rl_fail(rl, "k", 5000);
    assert_true(rl_blocked(rl, "k", 9999));
    assert_false(rl_blocked(rl, "k", 10000));
    /* a success forgets the key */
    rl_fail(rl, "k", 20000);
    rl_forget(rl, "k");
    rl_fail(rl, "k", 20001);
    assert_false(rl_blocked(rl, "k", 20001));
    rl_forget(rl, "absent"); /* harmless */
    rl_free(rl);
}

static void test_failures_eviction_prefers_unblocked(void **state)
{
    (void)state;
    /* max_fails 2: one failure per spray key leaves it idle once its window
     * is over, so those go before the blocked (and least recently used)
     * attacker entry */
    ratelimit_t *rl = rl_new_failures(2, 1000, 1000000, 4);
    char k[32];
    rl_fail(rl, "attacker", 0);
    rl_fail(rl, "attacker", 0);
    assert_true(rl_blocked(rl, "attacker", 0));
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof(k), "spray-%d", i);
        rl_fail(rl, k, 2000 + (uint64_t)i * 2000);
        assert_true(rl_size(rl) <= 4);
    }
    assert_true(rl_blocked(rl, "attacker", 2000 + 99 * 2000));
    rl_free(rl);
}

static void test_sweep(void **state)
{
    (void)state;
    ratelimit_t *rl = rl_new(1.0, 3.0, 100);
    rl_allow(rl, "a", 0);
    rl_allow(rl, "b", 0);
    rl_allow(rl, "b", 0);
    assert_int_equal(rl_size(rl), 2);
    assert_int_equal(rl_sweep(rl, 0), 0);
    assert_int_equal(rl_sweep(rl, 1000), 1); /* a full again, b not yet */
    assert_int_equal(rl_sweep(rl, 2000), 1);
    assert_int_equal(rl_size(rl), 0);
    rl_free(rl);

    rl = rl_new_failures(3, 1000, 5000, 100);
    rl_fail(rl, "x", 0);
    for (int i = 0; i < 3; i++)
        rl_fail(rl, "y", 0);
    assert_int_equal(rl_sweep(rl, 500), 0);
    assert_int_equal(rl_sweep(rl, 1000), 1); /* x's window over; y blocked */
    assert_int_equal(rl_sweep(rl, 5000), 1);
    assert_int_equal(rl_size(rl), 0);
    rl_free(rl);
}

static void test_args_and_long_keys(void **state)
{
    (void)state;
    errno = 0;
    assert_null(rl_new(0, 1, 10));
    assert_int_equal(errno, EINVAL);
    assert_null(rl_new(1, 0.5, 10));
    assert_null(rl_new(1, 1, 0));
    assert_null(rl_new(INFINITY, 1, 10));
    assert_null(rl_new_failures(0, 1, 1, 1));
    assert_null(rl_new_failures(1, 0, 1, 1));
    assert_null(rl_new_failures(1, 1, 0, 1));
    assert_null(rl_new_failures(1, 1, 1, 0));
    rl_free(NULL);
    assert_true(rl_allow(NULL, "k", 0));
    assert_int_equal(rl_size(NULL), 0);

    ratelimit_t *rl = rl_new(1.0, 1.0, 10);
    char *big = malloc(100001);
    memset(big, 'k', 100000);
    big[100000] = '\0';
    assert_true(rl_allow(rl, big, 0));
    big[99999] = 'j'; /* differs only at the end */
    assert_true(rl_allow(rl, big, 0));
    assert_false(rl_allow(rl, big, 0));
    assert_true(rl_allow(rl, "", 0)); /* the empty key is a key */
    assert_false(rl_allow(rl, "", 0));
    free(big);
    rl_free(rl);
}

static void test_many_keys_grow(void **state)
{
    (void)state;
    ratelimit_t *rl = rl_new(1.0, 1.0, 20000);
    char k[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof(k), "user-%d", i);
        assert_true(rl_allow(rl, k, 0));
    }
    assert_int_equal(rl_size(rl), 20000);
    assert_int_equal(rl_evictions(rl), 0);
    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof(k), "user-%d", i);
        assert_false(rl_allow(rl, k, 0));
    }
    rl_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_burst_and_refill),
        cmocka_unit_test(test_bucket_fractional_and_clock_backwards),
        cmocka_unit_test(test_bucket_bound_and_lru),
        cmocka_unit_test(test_bucket_evicts_idle_first),
        cmocka_unit_test(test_failures_block_and_cooldown),
        cmocka_unit_test(test_failures_window_expires),
        cmocka_unit_test(test_failures_extend_and_forget),
        cmocka_unit_test(test_failures_eviction_prefers_unblocked),
        cmocka_unit_test(test_sweep),
        cmocka_unit_test(test_args_and_long_keys),
        cmocka_unit_test(test_many_keys_grow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
