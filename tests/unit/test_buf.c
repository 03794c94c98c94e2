/*
 * test_buf.c - util/buf: growth, NUL termination, reset, printf (fitting
 * and growing), self-append, steal, and reserve overflow reporting -ENOMEM
 * while leaving the buffer intact.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "util/buf.h"

/* Under ASan, a failing huge malloc must return NULL (as glibc does) instead
 * of aborting the test. Unused in non-sanitized builds. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

static void test_init_free(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_null(b.p);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    buf_reset(&b); /* no memory yet: must not crash */
    buf_free(&b);
    assert_null(b.p);
    buf_free(&b); /* idempotent */
}

static void test_append_grows_and_terminates(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "", 0), 0);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(buf_append(&b, "abc", 3), 0);
        assert_true(b.len < b.cap);
        assert_int_equal(b.p[b.len], '\0');
    }
    assert_int_equal(b.len, 3000);
    assert_int_equal(strlen(b.p), 3000);
    assert_memory_equal(b.p + 2997, "abc", 3);
    assert_int_equal(buf_puts(&b, "xyz"), 0);
    assert_string_equal(b.p + 3000, "xyz");
    /* binary data incl. NUL */
    assert_int_equal(buf_append(&b, "a\0b", 3), 0);
    assert_int_equal(b.len, 3006);
    assert_memory_equal(b.p + 3003, "a\0b", 4);
    buf_free(&b);
}

static void test_reset_keeps_memory(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(buf_puts(&b, "hello"), 0);
    char *p = b.p;
    size_t cap = b.cap;
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_ptr_equal(b.p, p);
    assert_int_equal(b.cap, cap);
    assert_string_equal(b.p, "");
    buf_free(&b);
}

static void test_reset_keep_gives_back_large_buffers(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "abc", 3), 0);
    size_t small = b.cap;
    buf_reset_keep(&b, 1024);
    assert_int_equal(b.len, 0);
    assert_true(b.cap == small && b.p[0] == '\0'); /* small: kept */
    char big[5000];
    memset(big, 'x', sizeof(big));
    assert_int_equal(buf_append(&b, big, sizeof(big)), 0);
    buf_reset_keep(&b, 1024);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0); /* large: given back */
    assert_null(b.p);
    assert_int_equal(buf_append(&b, "ok", 2), 0); /* and usable again */
    assert_string_equal(b.p, "ok");
    buf_free(&b);
}

static void test_reserve(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(buf_reserve(&b, 100), 0);
    assert_true(b.cap >= 101);
    assert_string_equal(b.p, "");
    char *p = b.p;
    for (int i = 0; i < 100; i++)
        assert_int_equal(buf_append(&b, "x", 1), 0);
    assert_ptr_equal(b.p, p); /* reserved room: no realloc */
    assert_int_equal(buf_puts(&b, "y"), 0);
    /* impossible sizes fail cleanly and leave b as it was */
    size_t len = b.len, cap = b.cap;
    p = b.p;
    assert_int_equal(buf_reserve(&b, SIZE_MAX), -ENOMEM);
    assert_int_equal(buf_reserve(&b, SIZE_MAX - b.len), -ENOMEM);
    assert_int_equal(buf_append(&b, "z", SIZE_MAX - 1), -ENOMEM);
    assert_int_equal(buf_reserve(&b, SIZE_MAX / 2), -ENOMEM); /* realloc refuses */
    assert_int_equal(b.len, len);
    assert_int_equal(b.cap, cap);
    assert_ptr_equal(b.p, p);
    assert_int_equal(b.p[b.len], '\0');
    assert_int_equal(buf_puts(&b, "z"), 0); /* still usable */
    buf_free(&b);
}

static void test_printf(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(buf_printf(&b, "%d-%s", 42, "x"), 0); /* from empty */
    assert_string_equal(b.p, "42-x");
    assert_int_equal(buf_printf(&b, "%s", ""), 0);
    assert_int_equal(b.len, 4);
    char big[5000];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(buf_printf(&b, "[%s]", big), 0); /* must grow */
    assert_int_equal(b.len, 4 + 2 + 4999);
    assert_int_equal(b.p[4], '[');
    assert_int_equal(b.p[b.len - 1], ']');
    assert_int_equal(b.p[b.len], '\0');
    assert_int_equal(buf_printf(&b, "%05u", 7u), 0); /* fits */
    assert_string_equal(b.p + b.len - 5, "00007");
    buf_free(&b);
}

static void test_self_append(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(buf_puts(&b, "abcdefgh"), 0);
    for (int i = 0; i < 8; i++)
        assert_int_equal(buf_append(&b, b.p, b.len), 0); /* doubles each time */
    assert_int_equal(b.len, 8u << 8);
    for (size_t i = 0; i < b.len; i++)
        assert_int_equal(b.p[i], "abcdefgh"[i % 8]);
    buf_free(&b);
}

static void test_steal(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    size_t len = 99;
    char *s = buf_steal(&b, &len); /* never allocated */
    assert_non_null(s);
    assert_string_equal(s, "");
    assert_int_equal(len, 0);
    free(s);
    assert_int_equal(buf_puts(&b, "owned"), 0);
    s = buf_steal(&b, &len);
    assert_string_equal(s, "owned");
    assert_int_equal(len, 5);
    assert_null(b.p);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    free(s);
    assert_int_equal(buf_puts(&b, "again"), 0); /* reusable after steal */
    s = buf_steal(&b, NULL);
    assert_string_equal(s, "again");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_free),
        cmocka_unit_test(test_append_grows_and_terminates),
        cmocka_unit_test(test_reset_keeps_memory),
        cmocka_unit_test(test_reset_keep_gives_back_large_buffers),
        cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_printf),
        cmocka_unit_test(test_self_append),
        cmocka_unit_test(test_steal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
