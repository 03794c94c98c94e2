/*
 * test_utf8.c - util/utf8: RFC 3629 well-formedness, boundaries of every
 * sequence length, overlongs, surrogates, > U+10FFFF, truncation, and the
 * word-at-a-time ASCII path at every alignment.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "util/utf8.h"

#define V(lit) utf8_valid(lit, sizeof(lit) - 1)

static void test_ascii_and_empty(void **state)
{
    (void)state;
    assert_true(utf8_valid("", 0));
    assert_true(utf8_valid(NULL, 0));
    assert_true(V("hello, world"));
    assert_true(V("a\0b")); /* NUL is a valid code point */
    assert_true(V("\x7f"));
    assert_false(V("\x80"));
    assert_false(V("\xff"));
    assert_false(V("\xfe"));
}

static void test_boundaries(void **state)
{
    (void)state;
    assert_true(V("\xc2\x80"));                                   /* U+0080 */
    assert_true(V("\xdf\xbf"));                                   /* U+07FF */
    assert_true(V("\xe0\xa0\x80"));                               /* U+0800 */
    assert_true(V("\xed\x9f\xbf"));                               /* U+D7FF */
    assert_true(V("\xee\x80\x80"));                               /* U+E000 */
    assert_true(V("\xef\xbf\xbf"));                               /* U+FFFF */
    assert_true(V("\xf0\x90\x80\x80"));                           /* U+10000 */
    assert_true(V("\xf4\x8f\xbf\xbf"));                           /* U+10FFFF */
    assert_true(V("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80")); /* é € 😀 */
}

static void test_overlong(void **state)
{
    (void)state;
    assert_false(V("\xc0\x80")); /* overlong NUL */
    assert_false(V("\xc0\xaf")); /* overlong '/' */
    assert_false(V("\xc1\xbf"));
    assert_false(V("\xe0\x80\x80"));
    assert_false(V("\xe0\x9f\xbf")); /* overlong U+07FF */
    assert_false(V("\xf0\x80\x80\x80"));
    assert_false(V("\xf0\x8f\xbf\xbf")); /* overlong U+FFFF */
}

static void test_surrogates_and_range(void **state)
{
    (void)state;
    assert_false(V("\xed\xa0\x80"));             /* U+D800 */
    assert_false(V("\xed\xbf\xbf"));             /* U+DFFF */
    assert_false(V("\xed\xa0\xbd\xed\xb8\x80")); /* CESU-8 pair */
    assert_false(V("\xf4\x90\x80\x80"));         /* U+110000 */
    assert_false(V("\xf5\x80\x80\x80"));
    assert_false(V("\xf8\x88\x80\x80\x80"));
    assert_false(V("\xfc\x84\x80\x80\x80\x80"));
}

static void test_truncated_and_bad_continuation(void **state)
{
    (void)state;
    assert_false(V("\xc3"));
    assert_false(V("\xe2\x82"));
    assert_false(V("\xf0\x9f\x98"));
    assert_false(V("\xc3\x41"));
    assert_false(V("\xe2\x41\xac"));
    assert_false(V("\xe2\x82\x41"));
    assert_false(V("\xf0\x9f\x41\x80"));
    assert_false(V("\xf0\x9f\x98\x41"));
    assert_false(V("abc\xbf")); /* stray continuation */
    /* n limits the view: a valid sequence cut by n is invalid */
    assert_false(utf8_valid("\xe2\x82\xac", 2));
    assert_true(utf8_valid("\xe2\x82\xac", 3));
}

static void test_seq_len(void **state)
{
    (void)state;
    assert_int_equal(utf8_seq_len("a", 1), 1);
    assert_int_equal(utf8_seq_len("\xc3\xa9", 2), 2);
    assert_int_equal(utf8_seq_len("\xe2\x82\xac", 3), 3);
    assert_int_equal(utf8_seq_len("\xf0\x9f\x98\x80", 4), 4);
    assert_int_equal(utf8_seq_len("\xf0\x9f\x98\x80", 3), 0);
    assert_int_equal(utf8_seq_len("\x80", 1), 0);
    assert_int_equal(utf8_seq_len("", 0), 0);
}

/* The 8-byte fast path must not skip a bad byte at any position. */
static void test_fast_path_alignment(void **state)
{
    (void)state;
    char buf[64];
    for (size_t pos = 0; pos < 40; pos++) {
        memset(buf, 'x', sizeof buf);
        assert_true(utf8_valid(buf, sizeof buf));
        buf[pos] = (char)0xff;
        assert_false(utf8_valid(buf, sizeof buf));
        buf[pos] = (char)0xc3;
        buf[pos + 1] = (char)0xa9;
        assert_true(utf8_valid(buf, sizeof buf));
        assert_false(utf8_valid(buf, pos + 1)); /* cut inside the sequence */
    }
}

/* Exhaustive over all 2-byte and 3-byte inputs against a reference decoder. */
static bool ref_valid_cp(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t need;
    if (s[0] < 0x80) return n == 1;
    if ((s[0] & 0xE0) == 0xC0)
        need = 2, cp = s[0] & 0x1F;
    else if ((s[0] & 0xF0) == 0xE0)
        need = 3, cp = s[0] & 0x0F;
    else if ((s[0] & 0xF8) == 0xF0)
        need = 4, cp = s[0] & 0x07;
    else
        return false;
    if (n != need) return false;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return false;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    return true;
}

static void test_exhaustive_short(void **state)
{
    (void)state;
    unsigned char s[3];
    for (unsigned a = 0xC0; a < 0x100; a++)
        for (unsigned b = 0; b < 0x100; b++) {
            s[0] = (unsigned char)a, s[1] = (unsigned char)b;
            assert_int_equal(utf8_seq_len((char *)s, 2) == 2, ref_valid_cp(s, 2));
            if (a >= 0xE0 && a < 0xF0)
                for (unsigned c = 0x70; c < 0xC8; c++) {
                    s[2] = (unsigned char)c;
                    assert_int_equal(utf8_valid((char *)s, 3), ref_valid_cp(s, 3));
                }
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ascii_and_empty),
        cmocka_unit_test(test_boundaries),
        cmocka_unit_test(test_overlong),
        cmocka_unit_test(test_surrogates_and_range),
        cmocka_unit_test(test_truncated_and_bad_continuation),
        cmocka_unit_test(test_seq_len),
        cmocka_unit_test(test_fast_path_alignment),
        cmocka_unit_test(test_exhaustive_short),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
