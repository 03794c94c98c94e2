/*
 * test_json.c - util/json: the reader accepts exactly RFC 8259 texts (every
 * jsmn laxity is checked to be rejected), error codes and their precedence,
 * depth and token limits, NUL bytes, UTF-8, escapes and surrogates, token
 * layout, getters, and the writer (escaping of every control char, invalid
 * UTF-8, numbers, commas, depth, verbatim slices, writer->parser round trips).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "util/json.h"
#include "util/utf8.h"

#define MAXT 512
static json_tok_t toks[MAXT];
static json_doc_t doc;

static int P(const char *s, size_t n)
{
    return json_parse(&doc, s, n, toks, MAXT);
}
#define PS(lit) P(lit, sizeof(lit) - 1)

/* Parse a C string, failing the test with the input shown if rc differs. */
static void expect(const char *s, size_t n, int want)
{
    int rc = P(s, n);
    if (rc != want) {
        char shown[200];
        size_t k = 0;
        for (size_t i = 0; i < n && k < sizeof shown - 5; i++) {
            unsigned char c = (unsigned char)s[i];
            k += (size_t)snprintf(shown + k, sizeof shown - k,
                                  c >= 0x20 && c < 0x7f ? "%c" : "\\x%02x", c);
        }
        fail_msg("json_parse(\"%s\") = %d, want %d", shown, rc, want);
    }
    if (rc != 0) assert_int_equal(doc.ntok, 0);
}
#define EXPECT(lit, want) expect(lit, sizeof(lit) - 1, want)

/* ---- reader: acceptance --------------------------------------------------- */

static void test_valid_documents(void **state)
{
    (void)state;
    static const char *ok[] = {
        "0",
        "-0",
        "1",
        "-1",
        "10",
        "123456789012345678901234567890",
        "1.5",
        "-1.5e10",
        "1e5",
        "1E+5",
        "1e-5",
        "0.0",
        "0e0",
        "-0.0e-0",
        "1.25E-300",
        "true",
        "false",
        "null",
        "\"\"",
        "\"a\"",
        "[]",
        "{}",
        " [ ] ",
        "\t{\n}\r\n",
        " 42 ",
        "[1,2,3]",
        "[[],{}]",
        "{\"\":0}",
        "{\"a\":{\"b\":[true,false,null]}}",
        "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\\uFFFF\\uabcd\"",
        "\"\xe2\x82\xac\"",
        "[\"\xf0\x9f\x98\x80\"]",
        "{\"a\" : 1 , \"b\" : 2}",
        "\"\x7f\"",
        "[-0,0.5,1e1,-1E-1]",
        "{\"a\":[1,{\"b\":{}}],\"c\":[[[]]]}",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "[\"\\ud83d\\ude00\"]",
        "{\"a\":\"}\",\"b\":\"]\"}",
        "[\"[\",\"{\"]",
        "[true,false]",
        "{\"k\":null}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        expect(ok[i], strlen(ok[i]), 0);
}

static void test_token_counts(void **state)
{
    (void)state;
    EXPECT("{\"a\":[1,\"x\",{\"b\":null}],\"c\":true}", 0);
    assert_int_equal(doc.ntok, 10);
    EXPECT("[]", 0);
    assert_int_equal(doc.ntok, 1);
    EXPECT("\"s\"", 0);
    assert_int_equal(doc.ntok, 1);
    EXPECT("[1, [2, [3]], {}]", 0);
    assert_int_equal(doc.ntok, 7);
}

/* Everything here is accepted by jsmn's strict mode or is otherwise a classic
 * parser laxity; none of it is JSON. */
static void test_invalid_documents(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        " ",
        "\n\t ",
        "tru",
        "nul",
        "fals",
        "truex",
        "true false",
        "nulll",
        "TRUE",
        "True",
        "01",
        "-01",
        "00",
        "1.",
        "-",
        "-.5",
        ".1",
        "+1",
        "1e",
        "1e+",
        "1E-",
        "1.e3",
        "1.5e",
        "0x10",
        "1 2",
        "Infinity",
        "NaN",
        "-Infinity",
        "'a'",
        "[1 2]",
        "[1,]",
        "[,1]",
        "[1,,2]",
        "[,]",
        "{,}",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{\"a\":}",
        "{\"a\"}",
        "{\"a\",1}",
        "{1:2}",
        "{true:1}",
        "{\"a\":1 \"b\":2}",
        "{\"a\":1,,\"b\":2}",
        "[\"a\":1]",
        "[",
        "]",
        "{",
        "}",
        "[}",
        "{]",
        "[[]",
        "[]]",
        "{} {}",
        "[] []",
        "[]x",
        "{}x",
        "1x",
        "\"a\" \"b\"",
        "\"a\"\"b\"",
        "\"abc",
        "\"\\\"",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\u12g4\"",
        "\"\\U0041\"",
        "\"\\'\"",
        "[tru]",
        "[01]",
        "[1.]",
        "[-]",
        "{\"a\":tru}",
        "{\"a\":01}",
        "[1]]",
        "\xef\xbb\xbf{}",
        "/* */{}",
        "[1,2",
        "{\"a\":1",
        "\"\\",
        "[\"\\u\"]",
        "{\"a\":[}]",
        "[\x0b]",
        "[\f]",
        "1 ,",
        ",1",
        ":",
        "[:]",
        "{:1}",
        "{\"a\"::1}",
        "[1:2]",
        "{\"a\":1:2}",
        "[1,2]3",
        "{\"a\":{}}}",
        "{\"a\"1}",
        "{\"a\":\"b\" \"c\"}",
        "[\"a\" \"b\"]",
        "[null,]",
        "[- 1]",
        "[1e]",
        "[1e5.5]",
        "[.]",
        "{'a':1}",
        "[undefined]",
        "[1 ]x",
        "\"\\u00e9",
        "\"\\ud83d\\",
        "[\"a\",]",
        "{\"a\":1}{\"b\":2}",
        "1.0.0",
        "--1",
        "1-",
        "[1]\n[2]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect(bad[i], strlen(bad[i]), -EINVAL);
}

static void test_nul_bytes(void **state)
{
    (void)state;
    EXPECT("\0", -EINVAL);
    EXPECT("[1]\0", -EINVAL); /* jsmn would stop at the NUL and accept */
    EXPECT("{\"a\":1}\0\0", -EINVAL);
    EXPECT("1\0", -EINVAL);
    EXPECT("[\0]", -EINVAL);
    EXPECT("[1,\0 2]", -EINVAL);
    EXPECT("\"a\0b\"", -EILSEQ); /* raw control char inside a string */
    EXPECT("{\"a\0\":1}", -EILSEQ);
    /* an escaped NUL is fine and survives unescaping */
    EXPECT("\"a\\u0000b\"", 0);
    char out[8];
    assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), 3);
    assert_memory_equal(out, "a\0b", 4);
    /* NULL input */
    assert_int_equal(json_parse(&doc, NULL, 0, toks, MAXT), -EINVAL);
    assert_int_equal(json_parse(&doc, NULL, 5, toks, MAXT), -EINVAL);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    EXPECT("\"\xff\"", -EILSEQ);
    EXPECT("\"\xc0\xaf\"", -EILSEQ);         /* overlong */
    EXPECT("\"\xed\xa0\x80\"", -EILSEQ);     /* encoded surrogate */
    EXPECT("\"\xf4\x90\x80\x80\"", -EILSEQ); /* > U+10FFFF */
    EXPECT("\"\xe2\x82\"", -EILSEQ);         /* truncated */
    EXPECT("\"\xe2\x82", -EILSEQ);
    EXPECT("{\"k\xff\":1}", -EILSEQ);
    /* outside strings too, and ahead of any grammar error */
    EXPECT("\xff", -EILSEQ);
    EXPECT("[1]\xff", -EILSEQ);
    EXPECT("[1,]\xff", -EILSEQ);
    EXPECT("[\xc3\xa9]", -EINVAL); /* valid UTF-8 where a value should be: just not JSON */
    /* depth error first from the left, but bad UTF-8 later still wins */
    char deep[100];
    memset(deep, '[', 70);
    memcpy(deep + 70, "\xfe", 1);
    expect(deep, 71, -EILSEQ);
    expect(deep, 70, -ELOOP);
}

static void test_control_chars(void **state)
{
    (void)state;
    for (int c = 0; c < 0x20; c++) {
        char s[4] = {'"', (char)c, '"', 0};
        expect(s, 3, -EILSEQ);
        char e[16];
        int n = snprintf(e, sizeof e, "\"\\u%04x\"", c);
        expect(e, (size_t)n, 0);
        char out[4];
        assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), 1);
        assert_int_equal((unsigned char)out[0], c);
        /* outside strings only the 4 JSON whitespace chars are allowed */
        char a[4] = {'[', (char)c, ']', 0};
        bool ws = c == ' ' || c == '\t' || c == '\n' || c == '\r';
        expect(a, 3, ws ? 0 : -EINVAL);
    }
    EXPECT("\"\x7f\"", 0); /* DEL is not a control char for JSON */
}

static void nest(char *s, int depth, const char *open, const char *close, const char *mid)
{
    s[0] = '\0';
    for (int i = 0; i < depth; i++)
        strcat(s, open);
    strcat(s, mid);
    for (int i = 0; i < depth; i++)
        strcat(s, close);
}

static void test_depth_limit(void **state)
{
    (void)state;
    static char s[20000];
    nest(s, JSON_MAX_DEPTH, "[", "]", "1");
    expect(s, strlen(s), 0);
    nest(s, JSON_MAX_DEPTH + 1, "[", "]", "1");
    expect(s, strlen(s), -ELOOP);
    nest(s, JSON_MAX_DEPTH, "{\"a\":", "}", "1");
    expect(s, strlen(s), 0);
    assert_int_equal(doc.ntok, 2 * JSON_MAX_DEPTH + 1);
    nest(s, JSON_MAX_DEPTH + 1, "{\"a\":", "}", "1");
    expect(s, strlen(s), -ELOOP);
    nest(s, JSON_MAX_DEPTH / 2, "[{\"x\":", "}]", "[]");
    expect(s, strlen(s), -ELOOP); /* 64 levels + the innermost [] */
    nest(s, JSON_MAX_DEPTH / 2, "[{\"x\":", "}]", "0");
    expect(s, strlen(s), 0);
    /* very deep input is rejected without recursion, even unterminated */
    memset(s, '[', 10000);
    expect(s, 10000, -ELOOP);
    /* the limit is on nesting, not on total containers */
    strcpy(s, "[");
    for (int i = 0; i < 200; i++)
        strcat(s, i ? ",[]" : "[]");
    strcat(s, "]");
    expect(s, strlen(s), 0);
}

static void test_token_limit(void **state)
{
    (void)state;
    json_tok_t t[8];
    const char *s = "[1,2,3]"; /* 4 tokens */
    assert_int_equal(json_parse(&doc, s, strlen(s), t, 4), 0);
    assert_int_equal(doc.ntok, 4);
    assert_int_equal(json_parse(&doc, s, strlen(s), t, 3), -E2BIG);
    assert_int_equal(doc.ntok, 0);
    s = "{\"a\":1}"; /* 3 */
    assert_int_equal(json_parse(&doc, s, strlen(s), t, 3), 0);
    assert_int_equal(json_parse(&doc, s, strlen(s), t, 2), -E2BIG);
    s = " 7 ";
    assert_int_equal(json_parse(&doc, s, strlen(s), t, 1), 0);
    assert_int_equal(json_parse(&doc, s, strlen(s), t, 0), -E2BIG);
    assert_int_equal(json_parse(&doc, s, strlen(s), NULL, 0), -E2BIG);
    s = "\"x\"";
    assert_int_equal(json_parse(&doc, s, strlen(s), t, 0), -E2BIG);
    /* invalid beats too-big */
    s = "[1,2,3,4,5,6,7,8,9,]";
    assert_int_equal(json_parse(&doc, s, strlen(s), t, 2), -EINVAL);
    /* the caller's array beyond the tokens needed is untouched */
    memset(t, 0x5a, sizeof t);
    s = "[1]";
    assert_int_equal(json_parse(&doc, s, strlen(s), t, 8), 0);
    unsigned char *raw = (unsigned char *)&t[2];
    for (size_t k = 0; k < sizeof t[2]; k++)
        assert_int_equal(raw[k], 0x5a);
}

/* ---- reader: token layout and navigation ---------------------------------- */

static void test_token_layout(void **state)
{
    (void)state;
    const char *s = "{\"a\":[1,\"x\",{\"b\":null}],\"c\":true}";
    assert_int_equal(P(s, strlen(s)), 0);
    /* 0 {  1 "a"  2 [  3 1  4 "x"  5 {  6 "b"  7 null  8 "c"  9 true */
    static const int type[] = {JSON_OBJ, JSON_STR, JSON_ARR,  JSON_PRIM, JSON_STR,
                               JSON_OBJ, JSON_STR, JSON_PRIM, JSON_STR,  JSON_PRIM};
    static const int size[] = {2, 1, 3, 0, 0, 1, 1, 0, 1, 0};
    static const int parent[] = {-1, 0, 1, 2, 2, 2, 5, 6, 0, 8};
    assert_int_equal(doc.ntok, 10);
    for (int i = 0; i < doc.ntok; i++) {
        assert_int_equal(json_type(&doc, i), type[i]);
        assert_int_equal(doc.tok[i].size, size[i]);
        assert_int_equal(doc.tok[i].parent, parent[i]);
    }
    size_t n;
    const char *r = json_raw(&doc, 2, &n);
    assert_int_equal(n, strlen("[1,\"x\",{\"b\":null}]"));
    assert_memory_equal(r, "[1,\"x\",{\"b\":null}]", n);
    r = json_raw(&doc, 4, &n); /* strings include the quotes */
    assert_int_equal(n, 3);
    assert_memory_equal(r, "\"x\"", 3);
    r = json_str_body(&doc, 4, &n);
    assert_int_equal(n, 1);
    assert_memory_equal(r, "x", 1);
    assert_null(json_str_body(&doc, 3, &n));
    assert_int_equal(doc.tok[4].start, (int)(strchr(s, 'x') - s));
    r = json_raw(&doc, 0, &n);
    assert_ptr_equal(r, s);
    assert_int_equal(n, strlen(s));

    assert_int_equal(json_next(&doc, 0), 10);
    assert_int_equal(json_next(&doc, 1), 2); /* a key: its value comes next */
    assert_int_equal(json_next(&doc, 2), 8);
    assert_int_equal(json_next(&doc, 5), 8);
    assert_int_equal(json_next(&doc, 9), 10);
    assert_int_equal(json_next(&doc, 10), -1);
    assert_int_equal(json_next(&doc, -1), -1);
    assert_int_equal(json_type(&doc, 10), 0);
    assert_int_equal(json_type(&doc, -1), 0);
    assert_null(json_raw(&doc, 99, &n));
    assert_int_equal(n, 0);

    /* the documented member walk */
    int k, seen = 0;
    for (k = 1; k < json_next(&doc, 0); k = json_next(&doc, k + 1))
        seen++;
    assert_int_equal(seen, 2);

    assert_int_equal(json_arr_get(&doc, 2, 0), 3);
    assert_int_equal(json_arr_get(&doc, 2, 1), 4);
    assert_int_equal(json_arr_get(&doc, 2, 2), 5);
    assert_int_equal(json_arr_get(&doc, 2, 3), -1);
    assert_int_equal(json_arr_get(&doc, 2, -1), -1);
    assert_int_equal(json_arr_get(&doc, 0, 0), -1);
}

static void test_root_values(void **state)
{
    (void)state;
    size_t n;
    EXPECT("  -12.5e3 \n", 0);
    assert_int_equal(doc.ntok, 1);
    assert_int_equal(json_type(&doc, 0), JSON_PRIM);
    assert_int_equal(doc.tok[0].start, 2);
    assert_int_equal(doc.tok[0].end, 9);
    assert_int_equal(doc.tok[0].parent, -1);
    assert_memory_equal(json_raw(&doc, 0, &n), "-12.5e3", 7);
    assert_int_equal(n, 7);
    EXPECT("true", 0);
    bool b = false;
    assert_int_equal(json_get_bool(&doc, 0, &b), 0);
    assert_true(b);
    EXPECT("null", 0);
    assert_true(json_is_null(&doc, 0));
    EXPECT(" \"str\" ", 0);
    assert_true(json_str_eq(&doc, 0, "str"));
    int64_t v;
    EXPECT("9", 0);
    assert_int_equal(json_get_i64(&doc, 0, &v), 0);
    assert_int_equal(v, 9);
}

/* ---- reader: strings ------------------------------------------------------ */

static void test_escapes(void **state)
{
    (void)state;
    char out[64];
    EXPECT("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", 0);
    assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), 8);
    assert_string_equal(out, "\"\\/\b\f\n\r\t");
    EXPECT("\"caf\\u00e9 \\u00E9 \\u20ac \\u0041\"", 0);
    assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), 14);
    assert_string_equal(out, "caf\xc3\xa9 \xc3\xa9 \xe2\x82\xac A");
    EXPECT("\"\\u007f\\u0080\\u07ff\\u0800\\uffff\"", 0);
    assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), 1 + 2 + 2 + 3 + 3);
    assert_string_equal(out, "\x7f\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf");
    assert_true(utf8_valid(out, strlen(out)));
    /* surrogate pairs */
    EXPECT("\"\\ud83d\\ude00\"", 0);
    assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), 4);
    assert_string_equal(out, "\xf0\x9f\x98\x80");
    EXPECT("\"\\uD800\\uDC00|\\uDBFF\\uDFFF\"", 0);
    assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), 9);
    assert_string_equal(out, "\xf0\x90\x80\x80|\xf4\x8f\xbf\xbf");
    /* lone surrogates: valid JSON text, but no string value */
    static const char *lone[] = {
        "\"\\ud800\"",    "\"\\udc00\"",          "\"\\udfff\"",        "\"a\\ud83d\"",
        "\"\\ud83dx\"",   "\"\\ud83d\\u0041\"",   "\"\\ud83d\\ud83d\"", "\"\\ude00\\ud83d\"",
        "\"\\ud83d\\n\"", "\"\\ud83d\\\\ude00\"",
    };
    for (size_t i = 0; i < sizeof lone / sizeof lone[0]; i++) {
        expect(lone[i], strlen(lone[i]), 0);
        assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), -EINVAL);
        char *dup = (char *)1;
        assert_int_equal(json_str_dup(&doc, 0, &dup), -EINVAL);
        assert_null(dup);
        assert_false(json_str_eq(&doc, 0, "a"));
    }
    /* raw UTF-8 passes through */
    EXPECT("\"\xe6\x97\xa5\xe6\x9c\xac\"", 0);
    assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), 6);
    assert_string_equal(out, "\xe6\x97\xa5\xe6\x9c\xac");
}

static void test_str_copy_space(void **state)
{
    (void)state;
    char out[8];
    EXPECT("[\"abc\",\"a\\nc\",1,\"\"]", 0);
    assert_int_equal(json_str_copy(&doc, 1, out, 4), 3);
    assert_string_equal(out, "abc");
    memset(out, 'Z', sizeof out);
    assert_int_equal(json_str_copy(&doc, 1, out, 3), -ENOSPC);
    assert_int_equal(out[0], '\0');
    assert_int_equal(out[3], 'Z'); /* nothing written past cap */
    assert_int_equal(json_str_copy(&doc, 1, NULL, 0), -ENOSPC);
    assert_int_equal(json_str_copy(&doc, 2, out, 4), 3);
    assert_string_equal(out, "a\nc");
    assert_int_equal(json_str_copy(&doc, 2, out, 3), -ENOSPC);
    assert_int_equal(json_str_copy(&doc, 3, out, sizeof out), -EINVAL); /* not a string */
    assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), -EINVAL); /* array */
    assert_int_equal(json_str_copy(&doc, 9, out, sizeof out), -EINVAL); /* no token */
    assert_int_equal(json_str_copy(&doc, 4, out, 1), 0);
    assert_string_equal(out, "");
    /* a bad escape is reported even when the buffer is too small */
    EXPECT("\"aaaaaaaaaaaa\\ud800\"", 0);
    assert_int_equal(json_str_copy(&doc, 0, out, 4), -EINVAL);
    /* escapes shrink: \u20ac (6 bytes) -> 3 bytes */
    EXPECT("\"\\u20ac\"", 0);
    assert_int_equal(json_str_copy(&doc, 0, out, 4), 3);
    assert_int_equal(json_str_copy(&doc, 0, out, 3), -ENOSPC);
}

static void test_str_dup(void **state)
{
    (void)state;
    char *s = NULL;
    EXPECT("{\"k\":\"x\\ty\\u00e9\",\"n\":1}", 0);
    assert_int_equal(json_str_dup(&doc, 2, &s), 5);
    assert_string_equal(s, "x\ty\xc3\xa9");
    free(s);
    assert_int_equal(json_str_dup(&doc, 1, &s), 1);
    assert_string_equal(s, "k");
    free(s);
    assert_int_equal(json_str_dup(&doc, 4, &s), -EINVAL);
    assert_null(s);
    EXPECT("\"\"", 0);
    assert_int_equal(json_str_dup(&doc, 0, &s), 0);
    assert_string_equal(s, "");
    free(s);
}

static void test_str_eq(void **state)
{
    (void)state;
    EXPECT("[\"abc\",\"a\\u0062c\",\"a\\u0000\",\"\",1,\"\\u00e9\",\"ab\\\"c\"]", 0);
    assert_true(json_str_eq(&doc, 1, "abc"));
    assert_false(json_str_eq(&doc, 1, "ab"));
    assert_false(json_str_eq(&doc, 1, "abcd"));
    assert_true(json_str_eq(&doc, 2, "abc"));
    assert_false(json_str_eq(&doc, 2, "ab"));
    assert_false(json_str_eq(&doc, 2, "abcd"));
    assert_false(json_str_eq(&doc, 3, "a")); /* the decoded NUL is not a terminator */
    assert_false(json_str_eq(&doc, 3, "a\0"));
    assert_true(json_str_eq(&doc, 4, ""));
    assert_false(json_str_eq(&doc, 4, "x"));
    assert_false(json_str_eq(&doc, 5, "1")); /* not a string */
    assert_true(json_str_eq(&doc, 6, "\xc3\xa9"));
    assert_true(json_str_eq(&doc, 7, "ab\"c"));
    assert_false(json_str_eq(&doc, 7, "ab\\\"c"));
    assert_false(json_str_eq(&doc, 0, "abc"));
    assert_false(json_str_eq(&doc, 99, "abc"));
    assert_false(json_str_eq(&doc, 1, NULL));
}

static void test_obj_get(void **state)
{
    (void)state;
    const char *s =
        "{\"t\\u0079pe\":\"x\",\"a\\\"b\":1,\"nul\\u0000\":2,\"o\":{\"deep\":3,\"o\":4},"
        "\"arr\":[{\"deep\":5}],\"dup\":6,\"dup\":7,\"deep\":8,\"\":9,\"\\u00e9\":10}";
    assert_int_equal(P(s, strlen(s)), 0);
    int64_t v;
    int i = json_obj_get(&doc, 0, "type");
    assert_true(i > 0);
    assert_true(json_str_eq(&doc, i, "x"));
    i = json_obj_get(&doc, 0, "a\"b");
    assert_int_equal(json_get_i64(&doc, i, &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(json_obj_get(&doc, 0, "nul"), -1);        /* key has a NUL after "nul" */
    assert_int_equal(json_obj_get(&doc, 0, "t\\u0079pe"), -1); /* compared unescaped */
    i = json_obj_get(&doc, 0, "deep");                         /* not the nested ones */
    assert_int_equal(json_get_i64(&doc, i, &v), 0);
    assert_int_equal(v, 8);
    i = json_obj_get(&doc, 0, "dup"); /* first occurrence wins */
    assert_int_equal(json_get_i64(&doc, i, &v), 0);
    assert_int_equal(v, 6);
    i = json_obj_get(&doc, 0, "");
    assert_int_equal(json_get_i64(&doc, i, &v), 0);
    assert_int_equal(v, 9);
    i = json_obj_get(&doc, 0, "\xc3\xa9");
    assert_int_equal(json_get_i64(&doc, i, &v), 0);
    assert_int_equal(v, 10);
    int o = json_obj_get(&doc, 0, "o");
    assert_int_equal(json_type(&doc, o), JSON_OBJ);
    i = json_obj_get(&doc, o, "o");
    assert_int_equal(json_get_i64(&doc, i, &v), 0);
    assert_int_equal(v, 4);
    assert_int_equal(json_obj_get(&doc, 0, "missing"), -1);
    assert_int_equal(json_obj_get(&doc, 0, "typ"), -1);
    assert_int_equal(json_obj_get(&doc, 0, "types"), -1);
    assert_int_equal(json_obj_get(&doc, 0, NULL), -1);
    int arr = json_obj_get(&doc, 0, "arr");
    assert_int_equal(json_obj_get(&doc, arr, "deep"), -1); /* not an object */
    assert_int_equal(json_obj_get(&doc, 1, "x"), -1);      /* a key token */
    assert_int_equal(json_obj_get(&doc, -1, "x"), -1);
    EXPECT("{}", 0);
    assert_int_equal(json_obj_get(&doc, 0, ""), -1);
    /* getters on a failed parse find nothing */
    EXPECT("{\"a\":1,}", -EINVAL);
    assert_int_equal(json_obj_get(&doc, 0, "a"), -1);
    assert_int_equal(json_type(&doc, 0), 0);
}

/* ---- reader: scalars ------------------------------------------------------ */

static void test_get_i64(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int rc;
        int64_t v;
    } cases[] = {
        {"0", 0, 0},
        {"-0", 0, 0},
        {"42", 0, 42},
        {"-42", 0, -42},
        {"9223372036854775807", 0, INT64_MAX},
        {"-9223372036854775808", 0, INT64_MIN},
        {"9223372036854775808", -ERANGE, 0},
        {"-9223372036854775809", -ERANGE, 0},
        {"18446744073709551615", -ERANGE, 0},
        {"18446744073709551616", -ERANGE, 0},
        {"99999999999999999999999999", -ERANGE, 0},
        {"1.0", -EINVAL, 0},
        {"1e3", -EINVAL, 0},
        {"-1E0", -EINVAL, 0},
        {"0.5", -EINVAL, 0},
        {"99999999999999999999.5", -EINVAL, 0},
        {"true", -EINVAL, 0},
        {"null", -EINVAL, 0},
        {"\"1\"", -EINVAL, 0},
        {"[1]", -EINVAL, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        expect(cases[k].s, strlen(cases[k].s), 0);
        int64_t v = 12345;
        int rc = json_get_i64(&doc, 0, &v);
        if (rc != cases[k].rc)
            fail_msg("json_get_i64(%s) = %d, want %d", cases[k].s, rc, cases[k].rc);
        if (rc == 0)
            assert_true(v == cases[k].v);
        else
            assert_true(v == 12345); /* untouched on error */
    }
    assert_int_equal(json_get_i64(&doc, 7, &(int64_t){0}), -EINVAL);
}

static void test_get_f64_bool_null(void **state)
{
    (void)state;
    EXPECT("[1.5,-2e-3,1e400,7,true,false,null,\"true\",\"null\",0]", 0);
    double d;
    assert_int_equal(json_get_f64(&doc, 1, &d), 0);
    assert_true(d == 1.5);
    assert_int_equal(json_get_f64(&doc, 2, &d), 0);
    assert_true(d == -2e-3);
    assert_int_equal(json_get_f64(&doc, 3, &d), -ERANGE);
    assert_int_equal(json_get_f64(&doc, 4, &d), 0);
    assert_true(d == 7.0);
    assert_int_equal(json_get_f64(&doc, 5, &d), -EINVAL);
    assert_int_equal(json_get_f64(&doc, 8, &d), -EINVAL);
    bool b;
    assert_int_equal(json_get_bool(&doc, 5, &b), 0);
    assert_true(b);
    assert_int_equal(json_get_bool(&doc, 6, &b), 0);
    assert_false(b);
    assert_int_equal(json_get_bool(&doc, 7, &b), -EINVAL);
    assert_int_equal(json_get_bool(&doc, 8, &b), -EINVAL);
    assert_int_equal(json_get_bool(&doc, 10, &b), -EINVAL);
    assert_int_equal(json_get_bool(&doc, 0, &b), -EINVAL);
    assert_true(json_is_null(&doc, 7));
    assert_false(json_is_null(&doc, 9));
    assert_false(json_is_null(&doc, 10));
    assert_false(json_is_null(&doc, 0));
    assert_false(json_is_null(&doc, 100));
    /* long numbers (beyond the small stack copy) */
    char s[300];
    memset(s, '0', sizeof s);
    s[0] = '0', s[1] = '.';
    s[298] = '5';
    expect(s, 299, 0);
    assert_int_equal(json_get_f64(&doc, 0, &d), 0);
    assert_true(d > 0 && d < 1e-290);
}

/* ---- writer --------------------------------------------------------------- */

static const char *wdone(jw_t *w, buf_t *b)
{
    assert_int_equal(jw_error(w), 0);
    assert_int_equal(w->depth, 0);
    return b->p ? b->p : "";
}

static void test_writer_structure(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "type", "message.delta");
    jw_kint(&w, "seq", 42);
    jw_key(&w, "data");
    jw_obj_begin(&w);
    jw_key(&w, "arr");
    jw_arr_begin(&w);
    jw_int(&w, 1);
    jw_arr_begin(&w);
    jw_arr_end(&w);
    jw_obj_begin(&w);
    jw_obj_end(&w);
    jw_str(&w, "x");
    jw_null(&w);
    jw_bool(&w, false);
    jw_arr_end(&w);
    jw_key(&w, "empty");
    jw_obj_begin(&w);
    jw_obj_end(&w);
    jw_obj_end(&w);
    jw_kbool(&w, "ok", true);
    jw_knull(&w, "none");
    jw_kuint(&w, "u", UINT64_MAX);
    jw_kraw(&w, "raw", "{\"r\":[1]}", 9);
    jw_key(&w, "n");
    jw_str(&w, NULL);
    jw_obj_end(&w);
    assert_string_equal(
        wdone(&w, &b),
        "{\"type\":\"message.delta\",\"seq\":42,\"data\":{\"arr\":[1,[],{},\"x\",null,"
        "false],\"empty\":{}},\"ok\":true,\"none\":null,\"u\":18446744073709551615,"
        "\"raw\":{\"r\":[1]},\"n\":null}");
    assert_int_equal(b.len, strlen(b.p));
    assert_int_equal(P(b.p, b.len), 0);

    /* scalars at the top level */
    buf_reset(&b);
    jw_init(&w, &b);
    jw_int(&w, -5);
    assert_string_equal(wdone(&w, &b), "-5");
    buf_reset(&b);
    jw_init(&w, &b);
    jw_arr_begin(&w);
    jw_arr_end(&w);
    assert_string_equal(wdone(&w, &b), "[]");
    buf_free(&b);
}

static void wstr(buf_t *b, const char *s, size_t n)
{
    jw_t w;
    buf_reset(b);
    jw_init(&w, b);
    jw_strn(&w, s, n);
    assert_int_equal(jw_error(&w), 0);
}

static void test_writer_escapes(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    /* every control char */
    for (int c = 0; c < 0x20; c++) {
        char in = (char)c, want[16];
        switch (c) {
        case '\b':
            strcpy(want, "\"\\b\"");
            break;
        case '\t':
            strcpy(want, "\"\\t\"");
            break;
        case '\n':
            strcpy(want, "\"\\n\"");
            break;
        case '\f':
            strcpy(want, "\"\\f\"");
            break;
        case '\r':
            strcpy(want, "\"\\r\"");
            break;
        default:
            snprintf(want, sizeof want, "\"\\u%04x\"", c);
        }
        wstr(&b, &in, 1);
        assert_string_equal(b.p, want);
        assert_int_equal(P(b.p, b.len), 0);
        char out[4];
        assert_int_equal(json_str_copy(&doc, 0, out, sizeof out), 1);
        assert_int_equal(out[0], c);
    }
    wstr(&b, "\"\\/", 3);
    assert_string_equal(b.p, "\"\\\"\\\\/\"");
    wstr(&b,
         "a\x7f"
         "b",
         3);
    assert_string_equal(b.p, "\"a\x7f"
                             "b\"");
    wstr(&b, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14);
    assert_string_equal(b.p, "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    wstr(&b, "", 0);
    assert_string_equal(b.p, "\"\"");
    wstr(&b, "a\0b", 3);
    assert_string_equal(b.p, "\"a\\u0000b\"");
    /* invalid UTF-8: each offending byte becomes \ufffd */
    wstr(&b, "\xff", 1);
    assert_string_equal(b.p, "\"\\ufffd\"");
    wstr(&b, "a\xc3", 2);
    assert_string_equal(b.p, "\"a\\ufffd\"");
    wstr(&b,
         "\xc3"
         "a",
         2);
    assert_string_equal(b.p, "\"\\ufffda\"");
    wstr(&b, "\xed\xa0\x80", 3); /* encoded surrogate */
    assert_string_equal(b.p, "\"\\ufffd\\ufffd\\ufffd\"");
    wstr(&b, "\xc0\xaf", 2); /* overlong */
    assert_string_equal(b.p, "\"\\ufffd\\ufffd\"");
    wstr(&b, "\xf4\x90\x80\x80!", 5);
    assert_string_equal(b.p, "\"\\ufffd\\ufffd\\ufffd\\ufffd!\"");
    wstr(&b, "ok\xe2\x82\xac\xe2\x82", 7); /* valid then truncated */
    assert_string_equal(b.p, "\"ok\xe2\x82\xac\\ufffd\\ufffd\"");
    assert_int_equal(P(b.p, b.len), 0);
    /* keys are escaped the same way */
    jw_t w;
    buf_reset(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "a\"\n\xff", "v");
    jw_obj_end(&w);
    assert_string_equal(wdone(&w, &b), "{\"a\\\"\\n\\ufffd\":\"v\"}");
    assert_int_equal(P(b.p, b.len), 0);
    assert_true(json_obj_get(&doc, 0, "a\"\n\xef\xbf\xbd") > 0);
    buf_free(&b);
}

static void test_writer_numbers(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_arr_begin(&w);
    jw_int(&w, 0);
    jw_int(&w, -1);
    jw_int(&w, 9);
    jw_int(&w, 10);
    jw_int(&w, 99);
    jw_int(&w, 100);
    jw_int(&w, 1234567);
    jw_int(&w, INT64_MAX);
    jw_int(&w, INT64_MIN);
    jw_uint(&w, 0);
    jw_uint(&w, UINT64_MAX);
    jw_double(&w, 0.1);
    jw_double(&w, 1.5);
    jw_double(&w, -0.0);
    jw_double(&w, 1e300);
    jw_double(&w, NAN);
    jw_double(&w, INFINITY);
    jw_double(&w, -INFINITY);
    jw_double(&w, 100.0);
    jw_arr_end(&w);
    assert_string_equal(wdone(&w, &b),
                        "[0,-1,9,10,99,100,1234567,9223372036854775807,-9223372036854775808,0,"
                        "18446744073709551615,0.1,1.5,-0,1e+300,null,null,"
                        "null,100]");
    assert_int_equal(P(b.p, b.len), 0);
    int64_t v;
    assert_int_equal(json_get_i64(&doc, json_arr_get(&doc, 0, 7), &v), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(json_get_i64(&doc, json_arr_get(&doc, 0, 8), &v), 0);
    assert_true(v == INT64_MIN);
    /* doubles round-trip exactly */
    static const double ds[] = {
        0.1,      1.0 / 3, 2.5e-8, 123456789.125,          -9.87654321e123,
        1e21,     0.3,     5e-324, 1.7976931348623157e308, 2.2250738585072014e-308,
        0.1 + 0.2};
    for (size_t k = 0; k < sizeof ds / sizeof ds[0]; k++) {
        buf_reset(&b);
        jw_init(&w, &b);
        jw_double(&w, ds[k]);
        assert_int_equal(P(b.p, b.len), 0);
        double d;
        assert_int_equal(json_get_f64(&doc, 0, &d), 0);
        assert_true(d == ds[k]);
    }
    /* every int64 decimal length round-trips */
    int64_t x = 1;
    for (int k = 0; k < 19; k++, x = k < 19 ? x * 10 : x) {
        int64_t vals[] = {x, x - 1, -x, -(x - 1), x + 7};
        for (size_t j = 0; j < 5; j++) {
            buf_reset(&b);
            jw_init(&w, &b);
            jw_int(&w, vals[j]);
            char want[32];
            snprintf(want, sizeof want, "%lld", (long long)vals[j]);
            assert_string_equal(b.p, want);
        }
    }
    buf_free(&b);
}

static void test_writer_depth_and_errors(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    for (int i = 0; i < JSON_MAX_DEPTH; i++) {
        if (i & 1)
            jw_arr_begin(&w);
        else {
            jw_obj_begin(&w);
            jw_key(&w, "k");
        }
    }
    assert_int_equal(jw_error(&w), 0);
    jw_int(&w, 1);
    jw_int(&w, 2); /* in the innermost array (depth 64 is an array): comma at bit 63 */
    for (int i = JSON_MAX_DEPTH - 1; i >= 0; i--) {
        if (i & 1)
            jw_arr_end(&w);
        else
            jw_obj_end(&w);
    }
    wdone(&w, &b);
    assert_int_equal(P(b.p, b.len), 0);
    assert_non_null(strstr(b.p, "[1,2]"));

    buf_reset(&b);
    jw_init(&w, &b);
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        jw_arr_begin(&w);
    assert_int_equal(jw_error(&w), 0);
    jw_arr_begin(&w);
    assert_int_equal(jw_error(&w), -EOVERFLOW);
    size_t len = b.len;
    jw_str(&w, "ignored"); /* sticky: no more output */
    jw_arr_end(&w);
    jw_obj_begin(&w);
    assert_int_equal(b.len, len);
    assert_int_equal(jw_error(&w), -EOVERFLOW);

    buf_reset(&b);
    jw_init(&w, &b);
    jw_arr_end(&w);
    assert_int_equal(jw_error(&w), -EINVAL);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

/* Many siblings at several levels: commas exactly between items. */
static void test_writer_commas(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_arr_begin(&w);
    for (int i = 0; i < 3; i++) {
        jw_obj_begin(&w);
        for (int j = 0; j < 3; j++) {
            char k[4] = {'k', (char)('0' + j), 0};
            jw_key(&w, k);
            jw_arr_begin(&w);
            for (int m = 0; m < j; m++)
                jw_int(&w, m);
            jw_arr_end(&w);
        }
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    const char *one = "{\"k0\":[],\"k1\":[0],\"k2\":[0,1]}";
    char want[256];
    snprintf(want, sizeof want, "[%s,%s,%s]", one, one, one);
    assert_string_equal(wdone(&w, &b), want);
    buf_free(&b);
}

static void test_writer_str_escaped_and_raw(void **state)
{
    (void)state;
    /* the hot path: an agent line's text slice goes out without unescaping */
    const char *line = "{\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\","
                       "\"text\":\"line1\\nline2 \\\"q\\\" \\u00e9 \\ud83d\\ude00 \xe2\x82\xac\"}}";
    json_tok_t t[32];
    json_doc_t in;
    assert_int_equal(json_parse(&in, line, strlen(line), t, 32), 0);
    int delta = json_obj_get(&in, 0, "delta");
    int text = json_obj_get(&in, delta, "text");
    size_t n;
    const char *body = json_str_body(&in, text, &n);
    assert_non_null(body);

    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "type", "message.delta");
    jw_key(&w, "data");
    jw_obj_begin(&w);
    jw_key(&w, "content");
    jw_str_escaped(&w, body, n);
    jw_key(&w, "orig");
    size_t rn;
    const char *raw = json_raw(&in, delta, &rn);
    jw_raw(&w, raw, rn);
    jw_obj_end(&w);
    jw_obj_end(&w);
    wdone(&w, &b);
    assert_int_equal(P(b.p, b.len), 0);
    int data = json_obj_get(&doc, 0, "data");
    int content = json_obj_get(&doc, data, "content");
    char a[64], c[64];
    assert_int_equal(json_str_copy(&doc, content, a, sizeof a),
                     json_str_copy(&in, text, c, sizeof c));
    assert_string_equal(a, c);
    assert_string_equal(a, "line1\nline2 \"q\" \xc3\xa9 \xf0\x9f\x98\x80 \xe2\x82\xac");
    int orig = json_obj_get(&doc, data, "orig");
    assert_true(json_str_eq(&doc, json_obj_get(&doc, orig, "type"), "text_delta"));
    /* empty body */
    buf_reset(&b);
    jw_init(&w, &b);
    jw_str_escaped(&w, "", 0);
    assert_string_equal(wdone(&w, &b), "\"\"");
    buf_free(&b);
}

/* Writer -> parser -> unescape gives back the input, for every byte value and
 * for random valid UTF-8 (incl. controls and 4-byte sequences); for random
 * bytes the output is at least always valid JSON. */
static uint64_t rng = 0x9E3779B97F4A7C15u;
static uint32_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)rng;
}

static size_t put_cp(char *o, uint32_t cp)
{
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)), o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static void roundtrip(buf_t *b, const char *s, size_t n)
{
    jw_t w;
    buf_reset(b);
    jw_init(&w, b);
    jw_obj_begin(&w);
    jw_keyn(&w, s, n);
    jw_strn(&w, s, n);
    jw_obj_end(&w);
    assert_int_equal(jw_error(&w), 0);
    assert_int_equal(P(b->p, b->len), 0);
    static char out[4096];
    assert_true(n < sizeof out);
    if (utf8_valid(s, n)) {
        assert_int_equal(json_str_copy(&doc, 1, out, sizeof out), (int)n);
        assert_memory_equal(out, s, n);
        assert_int_equal(json_str_copy(&doc, 2, out, sizeof out), (int)n);
        assert_memory_equal(out, s, n);
    } else {
        int k = json_str_copy(&doc, 2, out, sizeof out);
        assert_true(k >= 0);
        assert_true(utf8_valid(out, (size_t)k));
    }
}

static void test_roundtrip(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    char s[1024];
    for (int c = 0; c < 256; c++) {
        s[0] = 'x', s[1] = (char)c, s[2] = 'y';
        roundtrip(&b, s, 3);
    }
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = 0, want = rnd() % 200;
        while (n < want) {
            uint32_t cp;
            switch (rnd() % 4) {
            case 0:
                cp = rnd() % 0x80;
                break;
            case 1:
                cp = rnd() % 0x800;
                break;
            case 2:
                cp = rnd() % 0x10000;
                break;
            default:
                cp = 0x10000 + rnd() % 0x100000;
                break;
            }
            if (cp >= 0xD800 && cp <= 0xDFFF) continue;
            n += put_cp(s + n, cp);
        }
        roundtrip(&b, s, n);
    }
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = rnd() % 100;
        for (size_t k = 0; k < n; k++)
            s[k] = (char)rnd();
        roundtrip(&b, s, n);
    }
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_documents),
        cmocka_unit_test(test_token_counts),
        cmocka_unit_test(test_invalid_documents),
        cmocka_unit_test(test_nul_bytes),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_control_chars),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_token_limit),
        cmocka_unit_test(test_token_layout),
        cmocka_unit_test(test_root_values),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_str_copy_space),
        cmocka_unit_test(test_str_dup),
        cmocka_unit_test(test_str_eq),
        cmocka_unit_test(test_obj_get),
        cmocka_unit_test(test_get_i64),
        cmocka_unit_test(test_get_f64_bool_null),
        cmocka_unit_test(test_writer_structure),
        cmocka_unit_test(test_writer_escapes),
        cmocka_unit_test(test_writer_numbers),
        cmocka_unit_test(test_writer_depth_and_errors),
        cmocka_unit_test(test_writer_commas),
        cmocka_unit_test(test_writer_str_escaped_and_raw),
        cmocka_unit_test(test_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
