/*
 * test_aep.c - aep.h: lenient inbound parsing, init extraction, outbound
 * envelopes, code names. Tested through the public header only.
 * Owns nothing but memory; must never depend on time or randomness beyond
 * checking that event ids are well-formed and distinct.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aep/aep.h"
#include "util/buf.h"
#include "util/json.h"
#include "util/uuid.h"

/* aep_msg_t holds 2048 tokens: keep it off the stack. */
static aep_msg_t *new_msg(void)
{
    aep_msg_t *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    return m;
}

static aep_code_t parse_str(aep_msg_t *m, const char *s, const char **why)
{
    *why = NULL;
    return aep_parse(m, s, strlen(s), why);
}

static void expect_ok(const char *s, aep_in_type_t type)
{
    aep_msg_t *m = new_msg();
    const char *why = NULL;
    aep_code_t rc = parse_str(m, s, &why);
    if (rc != AEP_OK) fail_msg("rejected %s: %s", s, why ? why : "(null)");
    assert_int_equal(m->type, type);
    assert_true(m->type_tok > 0);
    free(m);
}

static void expect_invalid(const char *s, size_t len)
{
    aep_msg_t *m = new_msg();
    const char *why = NULL;
    aep_code_t rc = aep_parse(m, s, len, &why);
    if (rc != AEP_INVALID_MESSAGE) fail_msg("accepted (rc %d): %.*s", rc, (int)len, s);
    assert_non_null(why);
    assert_true(strlen(why) > 0);
    free(m);
}
#define EXPECT_INVALID(s) expect_invalid((s), strlen(s))

/* ---- aep_parse: lenient inbound forms ---------------------------------- */

static void test_parse_minimal(void **state)
{
    (void)state;
    aep_msg_t *m = new_msg();
    const char *why;
    const char *s =
        "{\"version\":\"aep/v1\",\"event\":{\"type\":\"input\",\"data\":{\"content\":\"hi\"}}}";
    assert_int_equal(parse_str(m, s, &why), AEP_OK);
    assert_int_equal(m->type, AEP_IN_INPUT);
    assert_true(m->data >= 0);
    assert_int_equal(json_type(&m->doc, m->data), JSON_OBJ);
    assert_int_equal(m->session_id, -1); /* missing session_id */
    int c = json_obj_get(&m->doc, m->data, "content");
    assert_true(json_str_eq(&m->doc, c, "hi"));
    char name[32];
    assert_int_equal(aep_type_name(m, name, sizeof(name)), 5);
    assert_string_equal(name, "input");
    free(m);
}

static void test_parse_lenient_fields(void **state)
{
    (void)state;
    /* missing id/seq/timestamp/session_id */
    expect_ok("{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\"}}", AEP_IN_PING);
    /* seq 0, negative, huge (beyond int64), fractional: all ignored */
    expect_ok("{\"version\":\"aep/v1\",\"seq\":0,\"event\":{\"type\":\"ping\",\"data\":{}}}",
              AEP_IN_PING);
    expect_ok("{\"version\":\"aep/v1\",\"seq\":-5,\"event\":{\"type\":\"ping\",\"data\":{}}}",
              AEP_IN_PING);
    expect_ok("{\"version\":\"aep/v1\",\"seq\":123456789012345678901234567890,"
              "\"event\":{\"type\":\"ping\",\"data\":{}}}",
              AEP_IN_PING);
    expect_ok("{\"version\":\"aep/v1\",\"seq\":1.5e300,\"event\":{\"type\":\"ping\"}}",
              AEP_IN_PING);
    /* full envelope with every optional field */
    expect_ok("{\"version\":\"aep/v1\",\"id\":\"x\",\"seq\":7,\"session_id\":\"abc\","
              "\"timestamp\":1710000000123,\"event\":{\"type\":\"control\",\"data\":{\"action\":"
              "\"interrupt\"}}}",
              AEP_IN_CONTROL);
    /* unknown top-level fields of every kind, before and after the known ones */
    expect_ok(
        "{\"zzz\":{\"a\":[1,2,{\"b\":null}]},\"version\":\"aep/v1\",\"priority\":\"control\","
        "\"event\":{\"type\":\"input\",\"data\":{\"content\":\"x\"},\"extra\":1},\"more\":true}",
        AEP_IN_INPUT);
    /* surrounding whitespace */
    expect_ok("  \r\n{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\"}}\n\t ", AEP_IN_PING);
    /* every known type */
    static const struct {
        const char *name;
        aep_in_type_t t;
    } types[] = {
        {"init", AEP_IN_INIT},
        {"input", AEP_IN_INPUT},
        {"permission_response", AEP_IN_PERMISSION_RESPONSE},
        {"question_response", AEP_IN_QUESTION_RESPONSE},
        {"elicitation_response", AEP_IN_ELICITATION_RESPONSE},
        {"control", AEP_IN_CONTROL},
        {"ping", AEP_IN_PING},
        {"worker_command", AEP_IN_WORKER_COMMAND},
        {"bogus", AEP_IN_UNKNOWN},
        {"Input", AEP_IN_UNKNOWN},
        {"input ", AEP_IN_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        char s[256];
        snprintf(s, sizeof(s), "{\"version\":\"aep/v1\",\"event\":{\"type\":\"%s\",\"data\":{}}}",
                 types[i].name);
        expect_ok(s, types[i].t);
    }
}

static void test_parse_data_missing_or_null(void **state)
{
    (void)state;
    aep_msg_t *m = new_msg();
    const char *why;
    assert_int_equal(parse_str(m, "{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\"}}", &why),
                     AEP_OK);
    assert_int_equal(m->data, -1);
    assert_int_equal(
        parse_str(m, "{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\",\"data\":null}}", &why),
        AEP_OK);
    assert_int_equal(m->data, -1);
    assert_int_equal(m->type, AEP_IN_PING);
    free(m);
}

static void test_parse_session_id(void **state)
{
    (void)state;
    aep_msg_t *m = new_msg();
    const char *why;
    assert_int_equal(parse_str(m,
                               "{\"version\":\"aep/v1\",\"session_id\":\"sess-1\",\"event\":{"
                               "\"type\":\"ping\"}}",
                               &why),
                     AEP_OK);
    assert_true(m->session_id >= 0);
    assert_true(json_str_eq(&m->doc, m->session_id, "sess-1"));
    /* empty string: still a string token */
    assert_int_equal(
        parse_str(m, "{\"version\":\"aep/v1\",\"session_id\":\"\",\"event\":{\"type\":\"ping\"}}",
                  &why),
        AEP_OK);
    assert_true(m->session_id >= 0);
    /* non-string session_id: ignored, not an error */
    assert_int_equal(
        parse_str(m, "{\"version\":\"aep/v1\",\"session_id\":42,\"event\":{\"type\":\"ping\"}}",
                  &why),
        AEP_OK);
    assert_int_equal(m->session_id, -1);
    assert_int_equal(
        parse_str(m, "{\"version\":\"aep/v1\",\"session_id\":null,\"event\":{\"type\":\"ping\"}}",
                  &why),
        AEP_OK);
    assert_int_equal(m->session_id, -1);
    free(m);
}

static void test_parse_rejects(void **state)
{
    (void)state;
    /* not JSON */
    EXPECT_INVALID("");
    EXPECT_INVALID("   ");
    EXPECT_INVALID("hello");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\"}");   /* truncated */
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\"}}}"); /* trailing */
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\"}} x");
    EXPECT_INVALID("{'version':'aep/v1'}");
    static const char nul[] = "{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\"}}\0";
    expect_invalid(nul, sizeof(nul)); /* NUL after the object (plus the literal's own NUL) */
    expect_invalid(nul, sizeof(nul) - 1);
    /* invalid UTF-8 */
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":\"p\xff\"}}");
    /* not an object */
    EXPECT_INVALID("[{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\"}}]");
    EXPECT_INVALID("[]");
    EXPECT_INVALID("\"aep/v1\"");
    EXPECT_INVALID("42");
    EXPECT_INVALID("null");
    /* version */
    EXPECT_INVALID("{\"event\":{\"type\":\"ping\"}}");
    EXPECT_INVALID("{\"version\":\"aep/v2\",\"event\":{\"type\":\"ping\"}}");
    EXPECT_INVALID("{\"version\":\"AEP/V1\",\"event\":{\"type\":\"ping\"}}");
    EXPECT_INVALID("{\"version\":\"aep/v1 \",\"event\":{\"type\":\"ping\"}}");
    EXPECT_INVALID("{\"version\":\"\",\"event\":{\"type\":\"ping\"}}");
    EXPECT_INVALID("{\"version\":1,\"event\":{\"type\":\"ping\"}}");
    EXPECT_INVALID("{\"version\":null,\"event\":{\"type\":\"ping\"}}");
    EXPECT_INVALID("{\"version\":[\"aep/v1\"],\"event\":{\"type\":\"ping\"}}");
    /* event */
    EXPECT_INVALID("{\"version\":\"aep/v1\"}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":null}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":\"ping\"}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":[{\"type\":\"ping\"}]}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":42}");
    /* event.type */
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{}}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"data\":{}}}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":\"\"}}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":null}}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":5}}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":[\"ping\"]}}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":{}}}");
    /* event.data not an object */
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\",\"data\":\"x\"}}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\",\"data\":[]}}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\",\"data\":0}}");
    EXPECT_INVALID("{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\",\"data\":false}}");
}

static void test_parse_reasons(void **state)
{
    (void)state;
    aep_msg_t *m = new_msg();
    const char *why;
    assert_int_equal(parse_str(m, "nope", &why), AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "JSON"));
    assert_int_equal(parse_str(m, "[1]", &why), AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "object"));
    assert_int_equal(parse_str(m, "{\"event\":{\"type\":\"ping\"}}", &why), AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "version"));
    assert_int_equal(parse_str(m, "{\"version\":\"x\",\"event\":{\"type\":\"ping\"}}", &why),
                     AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "version"));
    assert_int_equal(parse_str(m, "{\"version\":\"aep/v1\"}", &why), AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "event"));
    assert_int_equal(parse_str(m, "{\"version\":\"aep/v1\",\"event\":{\"type\":\"\"}}", &why),
                     AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "event.type"));
    assert_int_equal(
        parse_str(m, "{\"version\":\"aep/v1\",\"event\":{\"type\":\"x\",\"data\":1}}", &why),
        AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "data"));
    /* too many tokens */
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"version\":\"aep/v1\",\"event\":{\"type\":\"x\",\"data\":{\"a\":[");
    for (int i = 0; i < AEP_MAX_TOKENS; i++)
        buf_puts(&b, i ? ",1" : "1");
    buf_puts(&b, "]}}}");
    assert_int_equal(aep_parse(m, b.p, b.len, &why), AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "complex"));
    /* too deep */
    buf_reset(&b);
    buf_puts(&b, "{\"version\":\"aep/v1\",\"event\":{\"type\":\"x\",\"data\":{\"a\":");
    for (int i = 0; i < JSON_MAX_DEPTH + 2; i++)
        buf_puts(&b, "[");
    for (int i = 0; i < JSON_MAX_DEPTH + 2; i++)
        buf_puts(&b, "]");
    buf_puts(&b, "}}}");
    assert_int_equal(aep_parse(m, b.p, b.len, &why), AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "deep"));
    buf_free(&b);
    free(m);
}

static void test_type_name(void **state)
{
    (void)state;
    aep_msg_t *m = new_msg();
    const char *why;
    char out[16];
    assert_int_equal(
        parse_str(m, "{\"version\":\"aep/v1\",\"event\":{\"type\":\"foo\\u0062ar\"}}", &why),
        AEP_OK);
    assert_int_equal(m->type, AEP_IN_UNKNOWN);
    assert_int_equal(aep_type_name(m, out, sizeof(out)), 6);
    assert_string_equal(out, "foobar");
    /* a long name is truncated with "..." and stays NUL-terminated in cap */
    assert_int_equal(parse_str(m,
                               "{\"version\":\"aep/v1\",\"event\":{\"type\":"
                               "\"abcdefghijklmnopqrstuvwxyz0123456789\"}}",
                               &why),
                     AEP_OK);
    int n = aep_type_name(m, out, sizeof(out));
    assert_int_equal(n, 15);
    assert_string_equal(out, "abcdefghijkl...");
    /* a message that failed to parse has no type */
    assert_int_equal(parse_str(m, "{}", &why), AEP_INVALID_MESSAGE);
    assert_true(aep_type_name(m, out, sizeof(out)) < 0);
    free(m);
}

/* ---- aep_is_init ------------------------------------------------------- */

static bool is_init(const char *s)
{
    aep_msg_t *m = new_msg();
    const char *why;
    assert_int_equal(parse_str(m, s, &why), AEP_OK);
    bool r = aep_is_init(m);
    free(m);
    return r;
}

static void test_is_init(void **state)
{
    (void)state;
    assert_true(is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"init\",\"data\":{"
                        "\"version\":\"aep/v1\",\"worker_type\":\"echo\"}}}"));
    /* init is init even without data (aep_parse_init rejects it later) */
    assert_true(is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"init\"}}"));
    /* [compat] TypeScript: control carrying worker_type */
    assert_true(is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"control\",\"data\":{"
                        "\"version\":\"aep/v1\",\"worker_type\":\"claude_code\"}}}"));
    assert_true(is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"control\",\"data\":{"
                        "\"worker_type\":null}}}"));
    /* plain control is not */
    assert_false(is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"control\",\"data\":{"
                         "\"action\":\"interrupt\"}}}"));
    assert_false(is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"control\"}}"));
    assert_false(
        is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"control\",\"data\":null}}"));
    /* worker_type nested deeper does not count */
    assert_false(is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"control\",\"data\":{"
                         "\"details\":{\"worker_type\":\"echo\"}}}}"));
    /* other types never */
    assert_false(is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"input\",\"data\":{"
                         "\"worker_type\":\"echo\"}}}"));
    assert_false(is_init("{\"version\":\"aep/v1\",\"event\":{\"type\":\"ping\"}}"));
}

/* ---- aep_parse_init ---------------------------------------------------- */

/* Parses an init whose envelope extra (may be "") and data are given. */
static aep_code_t init_of(const char *envelope_extra, const char *data, aep_init_t *in,
                          const char **why)
{
    char *s = NULL;
    size_t cap = strlen(data) + strlen(envelope_extra) + 128;
    s = malloc(cap);
    assert_non_null(s);
    snprintf(s, cap, "{\"version\":\"aep/v1\"%s,\"event\":{\"type\":\"init\",\"data\":%s}}",
             envelope_extra, data);
    aep_msg_t *m = new_msg();
    const char *pwhy = NULL;
    aep_code_t rc = aep_parse(m, s, strlen(s), &pwhy);
    if (rc != AEP_OK) fail_msg("envelope rejected: %s: %s", s, pwhy);
    *why = NULL;
    rc = aep_parse_init(m, in, why);
    if (rc != AEP_OK) {
        assert_non_null(*why);
        assert_null(in->system_prompt); /* nothing to free on failure */
    }
    free(m);
    free(s);
    return rc;
}

#define V "\"version\":\"aep/v1\""
#define VW "\"version\":\"aep/v1\",\"worker_type\":\"echo\""

static void test_init_minimal(void **state)
{
    (void)state;
    aep_init_t in;
    const char *why;
    assert_int_equal(init_of("", "{" VW "}", &in, &why), AEP_OK);
    assert_string_equal(in.version, "aep/v1");
    assert_string_equal(in.worker_type, "echo");
    assert_string_equal(in.session_key, "");
    assert_string_equal(in.token, "");
    assert_string_equal(in.work_dir, "");
    assert_string_equal(in.model, "");
    assert_string_equal(in.permission_mode, "");
    assert_string_equal(in.allowed_tools, "");
    assert_string_equal(in.disallowed_tools, "");
    assert_null(in.system_prompt);
    assert_int_equal(in.max_turns, 0);
    assert_false(in.has_last_seq);
    aep_init_free(&in);

    /* unknown data fields and client_caps are ignored */
    assert_int_equal(init_of("",
                             "{" VW ",\"client_caps\":{\"x\":[1]},\"future\":true,\"config\":null,"
                             "\"auth\":null,\"last_seq\":null}",
                             &in, &why),
                     AEP_OK);
    assert_false(in.has_last_seq);
    aep_init_free(&in);
}

static void test_init_version(void **state)
{
    (void)state;
    aep_init_t in;
    const char *why;
    assert_int_equal(init_of("", "{\"worker_type\":\"echo\"}", &in, &why), AEP_VERSION_MISMATCH);
    assert_non_null(strstr(why, "version"));
    assert_int_equal(init_of("", "{\"version\":\"aep/v2\",\"worker_type\":\"echo\"}", &in, &why),
                     AEP_VERSION_MISMATCH);
    assert_int_equal(init_of("", "{\"version\":\"\",\"worker_type\":\"echo\"}", &in, &why),
                     AEP_VERSION_MISMATCH);
    assert_int_equal(init_of("", "{\"version\":1,\"worker_type\":\"echo\"}", &in, &why),
                     AEP_VERSION_MISMATCH);
    assert_int_equal(init_of("", "{\"version\":null,\"worker_type\":\"echo\"}", &in, &why),
                     AEP_VERSION_MISMATCH);
    assert_int_equal(init_of("",
                             "{\"version\":\"aep/v1aep/v1aep/v1aep/v1\",\"worker_type\":\"echo\"}",
                             &in, &why),
                     AEP_VERSION_MISMATCH);
    /* version is checked before worker_type */
    assert_int_equal(init_of("", "{}", &in, &why), AEP_VERSION_MISMATCH);
}

static void test_init_worker_type(void **state)
{
    (void)state;
    aep_init_t in;
    const char *why;
    assert_int_equal(init_of("", "{" V "}", &in, &why), AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "worker_type"));
    assert_int_equal(init_of("", "{" V ",\"worker_type\":\"\"}", &in, &why), AEP_INVALID_MESSAGE);
    assert_int_equal(init_of("", "{" V ",\"worker_type\":null}", &in, &why), AEP_INVALID_MESSAGE);
    assert_int_equal(init_of("", "{" V ",\"worker_type\":7}", &in, &why), AEP_INVALID_MESSAGE);
    assert_int_equal(init_of("", "{" V ",\"worker_type\":\"ab\\u0000c\"}", &in, &why),
                     AEP_INVALID_MESSAGE);
    /* 31 chars fit, 32 do not */
    assert_int_equal(
        init_of("", "{" V ",\"worker_type\":\"0123456789012345678901234567890\"}", &in, &why),
        AEP_OK);
    assert_int_equal(strlen(in.worker_type), 31);
    aep_init_free(&in);
    assert_int_equal(
        init_of("", "{" V ",\"worker_type\":\"01234567890123456789012345678901\"}", &in, &why),
        AEP_INVALID_MESSAGE);
}

static void test_init_data_required(void **state)
{
    (void)state;
    aep_msg_t *m = new_msg();
    const char *why;
    aep_init_t in;
    assert_int_equal(parse_str(m, "{\"version\":\"aep/v1\",\"event\":{\"type\":\"init\"}}", &why),
                     AEP_OK);
    assert_int_equal(aep_parse_init(m, &in, &why), AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "data"));
    assert_int_equal(
        parse_str(m, "{\"version\":\"aep/v1\",\"event\":{\"type\":\"init\",\"data\":null}}", &why),
        AEP_OK);
    assert_int_equal(aep_parse_init(m, &in, &why), AEP_INVALID_MESSAGE);
    free(m);
}

static void test_init_session_key(void **state)
{
    (void)state;
    aep_init_t in;
    const char *why;
    /* envelope wins */
    assert_int_equal(
        init_of(",\"session_id\":\"env-key\"", "{" VW ",\"session_id\":\"data-key\"}", &in, &why),
        AEP_OK);
    assert_string_equal(in.session_key, "env-key");
    aep_init_free(&in);
    /* empty envelope falls back to data */
    assert_int_equal(
        init_of(",\"session_id\":\"\"", "{" VW ",\"session_id\":\"data-key\"}", &in, &why), AEP_OK);
    assert_string_equal(in.session_key, "data-key");
    aep_init_free(&in);
    /* non-string envelope falls back too */
    assert_int_equal(
        init_of(",\"session_id\":5", "{" VW ",\"session_id\":\"data-key\"}", &in, &why), AEP_OK);
    assert_string_equal(in.session_key, "data-key");
    aep_init_free(&in);
    /* envelope only */
    assert_int_equal(init_of(",\"session_id\":\"sess_tab-abc\"", "{" VW "}", &in, &why), AEP_OK);
    assert_string_equal(in.session_key, "sess_tab-abc");
    aep_init_free(&in);
    /* data only, with an escape */
    assert_int_equal(init_of("", "{" VW ",\"session_id\":\"a\\/b\"}", &in, &why), AEP_OK);
    assert_string_equal(in.session_key, "a/b");
    aep_init_free(&in);
    /* neither: empty key */
    assert_int_equal(init_of(",\"session_id\":\"\"", "{" VW ",\"session_id\":\"\"}", &in, &why),
                     AEP_OK);
    assert_string_equal(in.session_key, "");
    aep_init_free(&in);
    /* bad keys */
    assert_int_equal(init_of("", "{" VW ",\"session_id\":3}", &in, &why), AEP_INVALID_MESSAGE);
    assert_int_equal(init_of(",\"session_id\":\"a\\u0000b\"", "{" VW "}", &in, &why),
                     AEP_INVALID_MESSAGE);
    char big[400];
    memset(big, 'k', 300);
    big[300] = '\0';
    char extra[500];
    snprintf(extra, sizeof(extra), ",\"session_id\":\"%s\"", big);
    assert_int_equal(init_of(extra, "{" VW "}", &in, &why), AEP_INVALID_MESSAGE);
    char data[500];
    snprintf(data, sizeof(data), "{" VW ",\"session_id\":\"%s\"}", big);
    assert_int_equal(init_of("", data, &in, &why), AEP_INVALID_MESSAGE);
    /* 255 fits */
    big[255] = '\0';
    snprintf(extra, sizeof(extra), ",\"session_id\":\"%s\"", big);
    assert_int_equal(init_of(extra, "{" VW "}", &in, &why), AEP_OK);
    assert_int_equal(strlen(in.session_key), 255);
    aep_init_free(&in);
}

static void test_init_auth_token(void **state)
{
    (void)state;
    aep_init_t in;
    const char *why;
    assert_int_equal(init_of("", "{" VW ",\"auth\":{\"token\":\"eyJhbGciOi.x.y\"}}", &in, &why),
                     AEP_OK);
    assert_string_equal(in.token, "eyJhbGciOi.x.y");
    aep_init_free(&in);
    assert_int_equal(init_of("", "{" VW ",\"auth\":{}}", &in, &why), AEP_OK);
    assert_string_equal(in.token, "");
    aep_init_free(&in);
    assert_int_equal(init_of("", "{" VW ",\"auth\":{\"token\":5}}", &in, &why),
                     AEP_INVALID_MESSAGE);
    assert_non_null(strstr(why, "token"));
}

static void test_init_config_fields(void **state)
{
    (void)state;
    aep_init_t in;
    const char *why;
    assert_int_equal(
        init_of("",
                "{" VW ",\"config\":{\"work_dir\":\"/tmp/w\",\"model\":\"claude-sonnet-4\","
                "\"permission_mode\":\"bypassPermissions\",\"allowed_tools\":[\"Read\",\"Bash\","
                "\"Edit\"],\"disallowed_tools\":\"WebFetch,WebSearch\",\"system_prompt\":\"Be "
                "terse.\\nAlways.\",\"max_turns\":12,\"metadata\":{\"k\":\"v\"},\"unknown\":[]}}",
                &in, &why),
        AEP_OK);
    assert_string_equal(in.work_dir, "/tmp/w");
    assert_string_equal(in.model, "claude-sonnet-4");
    assert_string_equal(in.permission_mode, "bypassPermissions");
    assert_string_equal(in.allowed_tools, "Read,Bash,Edit");
    assert_string_equal(in.disallowed_tools, "WebFetch,WebSearch");
    assert_non_null(in.system_prompt);
    assert_string_equal(in.system_prompt, "Be terse.\nAlways.");
    assert_int_equal(in.max_turns, 12);
    aep_init_free(&in);
    assert_null(in.system_prompt);
    aep_init_free(&in); /* idempotent */

    /* allowed_tools as comma string, disallowed as array; empty array */
    assert_int_equal(init_of("",
                             "{" VW ",\"config\":{\"allowed_tools\":\"Read,Write\","
                             "\"disallowed_tools\":[\"Bash\"]}}",
                             &in, &why),
                     AEP_OK);
    assert_string_equal(in.allowed_tools, "Read,Write");
    assert_string_equal(in.disallowed_tools, "Bash");
    aep_init_free(&in);
    assert_int_equal(
        init_of("", "{" VW ",\"config\":{\"allowed_tools\":[],\"system_prompt\":\"\"}}", &in, &why),
        AEP_OK);
    assert_string_equal(in.allowed_tools, "");
    assert_non_null(in.system_prompt);
    assert_string_equal(in.system_prompt, "");
    aep_init_free(&in);
    /* nulls are absent */
    assert_int_equal(init_of("",
                             "{" VW ",\"config\":{\"work_dir\":null,\"model\":null,"
                             "\"allowed_tools\":null,\"system_prompt\":null,\"max_turns\":null}}",
                             &in, &why),
                     AEP_OK);
    assert_string_equal(in.work_dir, "");
    assert_null(in.system_prompt);
    assert_int_equal(in.max_turns, 0);
    aep_init_free(&in);
}

static void expect_config_invalid(const char *config)
{
    char data[4096];
    snprintf(data, sizeof(data), "{" VW ",\"config\":%s}", config);
    aep_init_t in;
    const char *why;
    aep_code_t rc = init_of("", data, &in, &why);
    if (rc != AEP_CONFIG_INVALID) fail_msg("config %s: rc %d, want CONFIG_INVALID", config, rc);
    assert_null(in.system_prompt);
}

static void test_init_config_bad_types(void **state)
{
    (void)state;
    expect_config_invalid("\"x\"");
    expect_config_invalid("[]");
    expect_config_invalid("5");
    expect_config_invalid("{\"work_dir\":5}");
    expect_config_invalid("{\"work_dir\":[\"/tmp\"]}");
    expect_config_invalid("{\"model\":true}");
    expect_config_invalid("{\"permission_mode\":{}}");
    expect_config_invalid("{\"allowed_tools\":5}");
    expect_config_invalid("{\"allowed_tools\":{\"Read\":true}}");
    expect_config_invalid("{\"allowed_tools\":[\"Read\",1]}");
    expect_config_invalid("{\"allowed_tools\":[null]}");
    expect_config_invalid("{\"allowed_tools\":[\"Read,Write\"]}"); /* comma inside an item */
    expect_config_invalid("{\"allowed_tools\":[\"a\\u0000b\"]}");
    expect_config_invalid("{\"disallowed_tools\":false}");
    expect_config_invalid("{\"system_prompt\":5}");
    expect_config_invalid("{\"system_prompt\":[\"x\"]}");
    expect_config_invalid("{\"system_prompt\":\"lone \\ud800 surrogate\"}");
    expect_config_invalid("{\"max_turns\":\"3\"}");
    expect_config_invalid("{\"max_turns\":true}");
    expect_config_invalid("{\"max_turns\":1.5}");
    expect_config_invalid("{\"max_turns\":1e2}");
    /* a string too long for its field */
    char cfg[512];
    char model[200];
    memset(model, 'm', 150);
    model[150] = '\0';
    snprintf(cfg, sizeof(cfg), "{\"model\":\"%s\"}", model);
    expect_config_invalid(cfg);
    /* a list too long */
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"allowed_tools\":[");
    for (int i = 0; i < 200; i++)
        buf_printf(&b, "%s\"Tool%03d\"", i ? "," : "", i);
    buf_puts(&b, "]}");
    expect_config_invalid(b.p);
    buf_free(&b);
}

static void test_init_max_turns_bounds(void **state)
{
    (void)state;
    aep_init_t in;
    const char *why;
    assert_int_equal(init_of("", "{" VW ",\"config\":{\"max_turns\":0}}", &in, &why), AEP_OK);
    assert_int_equal(in.max_turns, 0);
    assert_int_equal(init_of("", "{" VW ",\"config\":{\"max_turns\":100000}}", &in, &why), AEP_OK);
    assert_int_equal(in.max_turns, 100000);
    expect_config_invalid("{\"max_turns\":100001}");
    expect_config_invalid("{\"max_turns\":-1}");
    expect_config_invalid("{\"max_turns\":99999999999999999999}");
    expect_config_invalid("{\"max_turns\":-9223372036854775808}");
    /* the failure after system_prompt was allocated frees it (ASan/LSan) */
    expect_config_invalid("{\"system_prompt\":\"will be freed\",\"max_turns\":-1}");
    assert_int_equal(init_of("", "{" VW ",\"config\":{\"max_turns\":5}}", &in, &why), AEP_OK);
    assert_int_equal(in.max_turns, 5);
}

static void test_init_last_seq(void **state)
{
    (void)state;
    aep_init_t in;
    const char *why;
    assert_int_equal(init_of("", "{" VW "}", &in, &why), AEP_OK);
    assert_false(in.has_last_seq);
    assert_int_equal(in.last_seq, 0);
    assert_int_equal(init_of("", "{" VW ",\"last_seq\":41}", &in, &why), AEP_OK);
    assert_true(in.has_last_seq);
    assert_int_equal(in.last_seq, 41);
    assert_int_equal(init_of("", "{" VW ",\"last_seq\":0}", &in, &why), AEP_OK);
    assert_true(in.has_last_seq);
    assert_int_equal(in.last_seq, 0);
    assert_int_equal(init_of("", "{" VW ",\"last_seq\":9223372036854775807}", &in, &why), AEP_OK);
    assert_true(in.has_last_seq);
    assert_true(in.last_seq == INT64_MAX);

    static const char *bad[] = {
        "-1", "1.5", "\"5\"", "true", "[]", "{}", "1e3", "9223372036854775808", "-0.0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char data[256];
        snprintf(data, sizeof(data), "{" VW ",\"last_seq\":%s}", bad[i]);
        aep_code_t rc = init_of("", data, &in, &why);
        if (rc != AEP_INVALID_MESSAGE) fail_msg("last_seq %s: rc %d", bad[i], rc);
        assert_non_null(strstr(why, "last_seq"));
    }
    /* system_prompt allocated, then last_seq fails: freed, not leaked */
    assert_int_equal(
        init_of("", "{" VW ",\"config\":{\"system_prompt\":\"p\"},\"last_seq\":-3}", &in, &why),
        AEP_INVALID_MESSAGE);
    assert_null(in.system_prompt);
}

static void test_init_system_prompt_alloc(void **state)
{
    (void)state;
    /* a big prompt is heap-allocated and released by aep_init_free */
    buf_t d;
    buf_init(&d);
    buf_puts(&d, "{" VW ",\"config\":{\"system_prompt\":\"");
    for (int i = 0; i < 5000; i++)
        buf_puts(&d, "x\\n");
    buf_puts(&d, "\"}}");
    aep_init_t in;
    const char *why;
    assert_int_equal(init_of("", d.p, &in, &why), AEP_OK);
    assert_non_null(in.system_prompt);
    assert_int_equal(strlen(in.system_prompt), 10000);
    assert_int_equal(in.system_prompt[1], '\n');
    aep_init_free(&in);
    assert_null(in.system_prompt);
    buf_free(&d);
}

/* ---- aep_encode -------------------------------------------------------- */

typedef struct env {
    json_doc_t d;
    json_tok_t t[256];
} env_t;

static int64_t get_i64(const json_doc_t *d, int obj, const char *key)
{
    int i = json_obj_get(d, obj, key);
    assert_true(i >= 0);
    assert_int_equal(json_type(d, i), JSON_PRIM);
    int64_t v;
    assert_int_equal(json_get_i64(d, i, &v), 0);
    return v;
}

static void get_str(const json_doc_t *d, int obj, const char *key, char *out, size_t cap)
{
    int i = json_obj_get(d, obj, key);
    if (i < 0) fail_msg("missing key %s", key);
    assert_int_equal(json_type(d, i), JSON_STR);
    assert_true(json_str_copy(d, i, out, cap) >= 0);
}

/* Encodes and checks every envelope field; returns the event.data token. */
static int encode_check(buf_t *b, env_t *e, const char *type, int64_t seq, const char *sid,
                        int64_t ts, const char *data, size_t len, int64_t want_seq)
{
    buf_reset(b);
    assert_int_equal(aep_encode(b, type, seq, sid, ts, data, len), 0);
    assert_int_equal(strlen(b->p), b->len);
    assert_true(b->len > 0);
    assert_int_equal(b->p[0], '{');
    assert_int_equal(b->p[b->len - 1], '}'); /* no trailing newline */
    assert_int_equal(json_parse(&e->d, b->p, b->len, e->t, 256), 0);
    json_doc_t *d = &e->d;
    assert_int_equal(json_type(d, 0), JSON_OBJ);
    char s[128];
    get_str(d, 0, "version", s, sizeof(s));
    assert_string_equal(s, "aep/v1");
    get_str(d, 0, "id", s, sizeof(s));
    assert_int_equal(strlen(s), 4 + 36);
    assert_memory_equal(s, "evt_", 4);
    assert_true(uuid_is_valid(s + 4));
    assert_int_equal(s[4 + 14], '4'); /* version 4 */
    assert_non_null(strchr("89ab", s[4 + 19]));
    for (const char *p = s + 4; *p; p++)
        assert_true(*p == '-' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'));
    assert_true(get_i64(d, 0, "seq") == want_seq);
    assert_true(get_i64(d, 0, "seq") > 0);
    get_str(d, 0, "session_id", s, sizeof(s));
    assert_string_equal(s, sid);
    assert_true(get_i64(d, 0, "timestamp") == ts);
    int pr = json_obj_get(d, 0, "priority");
    if (aep_is_control_priority(type)) {
        assert_true(pr >= 0);
        assert_true(json_str_eq(d, pr, "control"));
        assert_non_null(strstr(b->p, "\"priority\":\"control\""));
    } else {
        assert_int_equal(pr, -1);
        assert_null(strstr(b->p, "\"priority\""));
    }
    int ev = json_obj_get(d, 0, "event");
    assert_int_equal(json_type(d, ev), JSON_OBJ);
    get_str(d, ev, "type", s, sizeof(s));
    assert_string_equal(s, type);
    int dt = json_obj_get(d, ev, "data");
    assert_true(dt >= 0);
    assert_int_equal(json_type(d, dt), JSON_OBJ);
    /* exactly these top-level keys */
    int keys = d->tok[0].size;
    assert_int_equal(keys, aep_is_control_priority(type) ? 7 : 6);
    assert_int_equal(d->tok[ev].size, 2);
    return dt;
}

static void test_encode_envelope(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    env_t *e = calloc(1, sizeof(*e));
    const char *data = "{\"message_id\":\"m1\",\"content\":\"h\\u00e9\\n\"}";
    int dt = encode_check(&b, e, "message.delta", 7, "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
                          1710000000123LL, data, strlen(data), 7);
    size_t n;
    const char *raw = json_raw(&e->d, dt, &n);
    assert_int_equal(n, strlen(data));
    assert_memory_equal(raw, data, n); /* data is embedded verbatim */
    char c[32];
    get_str(&e->d, dt, "content", c, sizeof(c));
    assert_string_equal(c, "h\xc3\xa9\n");

    /* seq 0 and negative encode as 1; large seqs are kept */
    encode_check(&b, e, "pong", 0, "s", 1, "{\"state\":\"idle\"}", 16, 1);
    encode_check(&b, e, "pong", -9, "s", 1, NULL, 0, 1);
    encode_check(&b, e, "done", INT64_C(9007199254740993), "s", 0, "{}", 2,
                 INT64_C(9007199254740993));
    /* absent data becomes {} */
    dt = encode_check(&b, e, "message.end", 3, "s", 5, NULL, 0, 3);
    raw = json_raw(&e->d, dt, &n);
    assert_int_equal(n, 2);
    assert_memory_equal(raw, "{}", 2);
    dt = encode_check(&b, e, "message.end", 3, "s", 5, "{\"x\":1}", 0, 3); /* len 0 */
    raw = json_raw(&e->d, dt, &n);
    assert_memory_equal(raw, "{}", 2);
    /* a session id needing escapes is escaped */
    encode_check(&b, e, "state", 2, "we\"ird\\id", 5, "{\"state\":\"running\"}", 19, 2);

    /* aep_encode appends */
    buf_reset(&b);
    buf_puts(&b, "PREFIX");
    assert_int_equal(aep_encode(&b, "done", 1, "s", 1, "{}", 2), 0);
    assert_memory_equal(b.p, "PREFIX{\"version\":\"aep/v1\"", 6 + 19);

    free(e);
    buf_free(&b);
}

static void test_encode_ids_unique(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    env_t *e = calloc(1, sizeof(*e));
    char prev[64] = "";
    for (int i = 0; i < 100; i++) {
        encode_check(&b, e, "message.delta", i + 1, "s", 1, "{}", 2, i + 1);
        char id[64];
        get_str(&e->d, 0, "id", id, sizeof(id));
        assert_string_not_equal(id, prev);
        memcpy(prev, id, sizeof(id));
    }
    free(e);
    buf_free(&b);
}

static void test_encode_priority(void **state)
{
    (void)state;
    static const char *control[] = {"init_ack", "state", "control",
                                    "error",    "pong",  "permission_request"};
    static const char *normal[] = {"message.start",
                                   "message.delta",
                                   "message.end",
                                   "message",
                                   "reasoning",
                                   "tool_call",
                                   "tool_result",
                                   "done",
                                   "question_request",
                                   "elicitation_request",
                                   "ping",
                                   "init",
                                   "states",
                                   "errors",
                                   "permission_response",
                                   "p",
                                   "",
                                   "control_x",
                                   "pongs",
                                   "input"};
    buf_t b;
    buf_init(&b);
    env_t *e = calloc(1, sizeof(*e));
    for (size_t i = 0; i < sizeof(control) / sizeof(control[0]); i++) {
        assert_true(aep_is_control_priority(control[i]));
        encode_check(&b, e, control[i], 4, "sid", 99, "{}", 2, 4);
    }
    for (size_t i = 0; i < sizeof(normal) / sizeof(normal[0]); i++) {
        if (aep_is_control_priority(normal[i])) fail_msg("%s marked control", normal[i]);
        if (normal[i][0]) encode_check(&b, e, normal[i], 4, "sid", 99, "{}", 2, 4);
    }
    free(e);
    buf_free(&b);
}

/* ---- codes ------------------------------------------------------------- */

static void test_code_names(void **state)
{
    (void)state;
    static const char *names[AEP_CODE_COUNT] = {
        "OK",
        "INVALID_MESSAGE",
        "PROTOCOL_VIOLATION",
        "VERSION_MISMATCH",
        "CONFIG_INVALID",
        "UNAUTHORIZED",
        "SESSION_NOT_FOUND",
        "SESSION_BUSY",
        "SESSION_TERMINATED",
        "INTERNAL_ERROR",
        "RATE_LIMITED",
        "GATEWAY_OVERLOAD",
        "WORKER_CRASH",
        "WORKER_UNAVAILABLE",
        "TURN_TIMEOUT",
    };
    assert_int_equal(AEP_CODE_COUNT, 15);
    for (int i = 0; i < AEP_CODE_COUNT; i++) {
        assert_non_null(aep_code_name((aep_code_t)i));
        assert_string_equal(aep_code_name((aep_code_t)i), names[i]);
    }
    assert_string_equal(aep_code_name(AEP_WORKER_CRASH), "WORKER_CRASH");
    assert_string_equal(aep_code_name(AEP_CODE_COUNT), "INTERNAL_ERROR");
    assert_string_equal(aep_code_name((aep_code_t)-1), "INTERNAL_ERROR");
    assert_string_equal(aep_code_name((aep_code_t)1000), "INTERNAL_ERROR");
}

static void test_data_error(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(aep_data_error(&b, AEP_SESSION_BUSY, "too \"many\"\n"), 0);
    assert_string_equal(b.p, "{\"code\":\"SESSION_BUSY\",\"message\":\"too \\\"many\\\"\\n\"}");
    buf_reset(&b);
    assert_int_equal(aep_data_error(&b, AEP_TURN_TIMEOUT, NULL), 0);
    assert_string_equal(b.p, "{\"code\":\"TURN_TIMEOUT\",\"message\":\"\"}");
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_minimal),
        cmocka_unit_test(test_parse_lenient_fields),
        cmocka_unit_test(test_parse_data_missing_or_null),
        cmocka_unit_test(test_parse_session_id),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_parse_reasons),
        cmocka_unit_test(test_type_name),
        cmocka_unit_test(test_is_init),
        cmocka_unit_test(test_init_minimal),
        cmocka_unit_test(test_init_version),
        cmocka_unit_test(test_init_worker_type),
        cmocka_unit_test(test_init_data_required),
        cmocka_unit_test(test_init_session_key),
        cmocka_unit_test(test_init_auth_token),
        cmocka_unit_test(test_init_config_fields),
        cmocka_unit_test(test_init_config_bad_types),
        cmocka_unit_test(test_init_max_turns_bounds),
        cmocka_unit_test(test_init_last_seq),
        cmocka_unit_test(test_init_system_prompt_alloc),
        cmocka_unit_test(test_encode_envelope),
        cmocka_unit_test(test_encode_ids_unique),
        cmocka_unit_test(test_encode_priority),
        cmocka_unit_test(test_code_names),
        cmocka_unit_test(test_data_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
