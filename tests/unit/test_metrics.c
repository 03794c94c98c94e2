/*
 * test_metrics.c - admin/histogram.c, admin/metrics.c and admin/tokens.c:
 * histogram bucketing (bound edges, +Inf, cumulative counts, the zeroed
 * default), the Prometheus text of a counter, a labelled gauge and a
 * histogram byte for byte, value formatting and escaping, a whole render of
 * an idle gateway checked line by line against the format's grammar, and
 * the admin token table (scopes, constant-time lookup, refused files).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/histogram.h"
#include "admin/metrics.h"
#include "admin/tokens.h"
#include "core/gateway.h"
#include "util/buf.h"
#include "util/clock.h"

#define US 1000ull
#define MS 1000000ull
#define S 1000000000ull

static void test_hist_default_bounds(void **state)
{
    (void)state;
    hist_t h;
    memset(&h, 0, sizeof(h)); /* zeroed: default bounds, no init needed */
    uint32_t n;
    const uint64_t *b = hist_bounds(&h, &n);
    assert_int_equal(n, hist_latency_nbounds);
    assert_true(b[0] == 100 * US);
    assert_true(b[n - 1] == 30 * S);
    for (uint32_t i = 1; i < n; i++)
        assert_true(b[i] > b[i - 1]);

    hist_observe(&h, 0);            /* le 0.0001 */
    hist_observe(&h, 100 * US);     /* exactly on the bound: still le 0.0001 */
    hist_observe(&h, 100 * US + 1); /* le 0.00025 */
    hist_observe(&h, 3 * MS);       /* le 0.005 */
    hist_observe(&h, 31 * S);       /* +Inf */
    assert_true(h.count == 5);
    assert_true(h.sum_ns == 0 + 100 * US + 100 * US + 1 + 3 * MS + 31 * S);
    assert_true(h.counts[0] == 2);
    assert_true(h.counts[1] == 1);
    assert_true(h.counts[5] == 1); /* 2.5ms < 3ms <= 5ms: index 5 */
    assert_true(h.counts[n] == 1);
    assert_true(hist_cumulative(&h, 0) == 2);
    assert_true(hist_cumulative(&h, 1) == 3);
    assert_true(hist_cumulative(&h, 4) == 3);
    assert_true(hist_cumulative(&h, 5) == 4);
    assert_true(hist_cumulative(&h, n - 1) == 4);
    assert_true(hist_cumulative(&h, n) == 5); /* +Inf = count */
}

static const uint64_t small_bounds[] = {1 * MS, 10 * MS, 100 * MS};

static void test_hist_custom_bounds(void **state)
{
    (void)state;
    hist_t h;
    hist_init(&h, small_bounds, 3);
    for (int i = 0; i < 10; i++)
        hist_observe(&h, (uint64_t)i * MS); /* 0..9 ms */
    hist_observe(&h, 50 * MS);
    hist_observe(&h, 2 * S);
    assert_true(h.counts[0] == 2); /* 0, 1 ms */
    assert_true(h.counts[1] == 8); /* 2..9 ms */
    assert_true(h.counts[2] == 1);
    assert_true(h.counts[3] == 1);
    assert_true(hist_cumulative(&h, 2) == 11);
    assert_true(hist_cumulative(&h, 3) == 12);

    hist_t big;
    uint64_t many[40];
    for (int i = 0; i < 40; i++)
        many[i] = (uint64_t)(i + 1) * MS;
    hist_init(&big, many, 40); /* clamped */
    uint32_t n;
    hist_bounds(&big, &n);
    assert_int_equal(n, HIST_MAX_BOUNDS);
    hist_observe(&big, 1000 * MS);
    assert_true(big.counts[HIST_MAX_BOUNDS] == 1);
}

static void test_fmt_double(void **state)
{
    (void)state;
    char s[40];
    mx_fmt_double(s, sizeof(s), 0.0001);
    assert_string_equal(s, "0.0001");
    mx_fmt_double(s, sizeof(s), 0.00025);
    assert_string_equal(s, "0.00025");
    mx_fmt_double(s, sizeof(s), 0.1);
    assert_string_equal(s, "0.1");
    mx_fmt_double(s, sizeof(s), 2.5);
    assert_string_equal(s, "2.5");
    mx_fmt_double(s, sizeof(s), 30);
    assert_string_equal(s, "30");
    mx_fmt_double(s, sizeof(s), 0);
    assert_string_equal(s, "0");
    mx_fmt_double(s, sizeof(s), 1e21);
    assert_string_equal(s, "1e+21");
    mx_fmt_double(s, sizeof(s), INFINITY);
    assert_string_equal(s, "+Inf");
    mx_fmt_double(s, sizeof(s), -INFINITY);
    assert_string_equal(s, "-Inf");
    mx_fmt_double(s, sizeof(s), NAN);
    assert_string_equal(s, "NaN");
    double v = 1.0 / 3.0;
    mx_fmt_double(s, sizeof(s), v);
    assert_true(strtod(s, NULL) == v);
}

static void test_counter_and_gauge_text(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    mx_family(&b, "hotplex_frames_out_total", "counter", "Frames written.");
    mx_u64(&b, "hotplex_frames_out_total", NULL, NULL, 18446744073709551615ull);
    mx_family(&b, "hotplex_sessions", "gauge", "Sessions by state.");
    mx_u64(&b, "hotplex_sessions", "state", "idle", 3);
    mx_f64(&b, "hotplex_sessions", "state", "running", 0.5);
    assert_string_equal(b.p, "# HELP hotplex_frames_out_total Frames written.\n"
                             "# TYPE hotplex_frames_out_total counter\n"
                             "hotplex_frames_out_total 18446744073709551615\n"
                             "# HELP hotplex_sessions Sessions by state.\n"
                             "# TYPE hotplex_sessions gauge\n"
                             "hotplex_sessions{state=\"idle\"} 3\n"
                             "hotplex_sessions{state=\"running\"} 0.5\n");
    buf_free(&b);
}

static void test_escaping(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    mx_family(&b, "x", "gauge", "a \\ back\nslash \"quoted\"");
    mx_u64(&b, "x", "l", "q\"b\\n\nz", 1);
    /* help: backslash and newline escaped, quotes kept; label: all three */
    assert_string_equal(b.p, "# HELP x a \\\\ back\\nslash \"quoted\"\n"
                             "# TYPE x gauge\n"
                             "x{l=\"q\\\"b\\\\n\\nz\"} 1\n");
    buf_free(&b);
}

static void test_histogram_text(void **state)
{
    (void)state;
    hist_t h;
    hist_init(&h, small_bounds, 3);
    hist_observe(&h, 500 * US);
    hist_observe(&h, 1 * MS);
    hist_observe(&h, 20 * MS);
    hist_observe(&h, 3 * S);
    buf_t b;
    buf_init(&b);
    mx_hist(&b, "hotplex_x_seconds", "X.", &h);
    assert_string_equal(b.p, "# HELP hotplex_x_seconds X.\n"
                             "# TYPE hotplex_x_seconds histogram\n"
                             "hotplex_x_seconds_bucket{le=\"0.001\"} 2\n"
                             "hotplex_x_seconds_bucket{le=\"0.01\"} 2\n"
                             "hotplex_x_seconds_bucket{le=\"0.1\"} 3\n"
                             "hotplex_x_seconds_bucket{le=\"+Inf\"} 4\n"
                             "hotplex_x_seconds_sum 3.0215\n"
                             "hotplex_x_seconds_count 4\n");
    buf_free(&b);

    hist_t empty;
    memset(&empty, 0, sizeof(empty));
    buf_init(&b);
    mx_hist(&b, "e_seconds", "E.", &empty);
    assert_non_null(strstr(b.p, "e_seconds_bucket{le=\"0.0001\"} 0\n"));
    assert_non_null(strstr(b.p, "e_seconds_bucket{le=\"30\"} 0\n"));
    assert_non_null(strstr(b.p, "e_seconds_bucket{le=\"+Inf\"} 0\n"));
    assert_non_null(strstr(b.p, "e_seconds_sum 0\ne_seconds_count 0\n"));
    buf_free(&b);
}

/* ---- a whole render, checked against the text format ------------------- */

static bool valid_name(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':')) return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':')) return false;
    return true;
}

typedef struct fam {
    char name[96];
    char type[16];
} fam_t;

/* The family a sample name belongs to, given the declared families. */
static const fam_t *family_of(const fam_t *f, int nf, const char *name)
{
    for (int i = 0; i < nf; i++) {
        size_t l = strlen(f[i].name);
        if (strncmp(name, f[i].name, l) != 0) continue;
        const char *suf = name + l;
        if (!*suf) return &f[i];
        if (strcmp(f[i].type, "histogram") == 0 &&
            (!strcmp(suf, "_bucket") || !strcmp(suf, "_sum") || !strcmp(suf, "_count")))
            return &f[i];
        if (strcmp(f[i].type, "summary") == 0 && (!strcmp(suf, "_sum") || !strcmp(suf, "_count")))
            return &f[i];
    }
    return NULL;
}

static void test_render_idle_gateway(void **state)
{
    (void)state;
    gateway_t *gw = calloc(1, sizeof(*gw));
    assert_non_null(gw);
    hmap_init(&gw->sessions);
    hmap_init(&gw->users);
    gw->started_ms = clock_unix_ms() - 1500;
    gw->nclients = 2;
    gw->ctr.events_by_type[gw_event_type_index("message.delta")] = 7;
    gw->ctr.events_by_type[gw_event_type_index("no.such.type")] = 1;
    gw->ctr.errors[AEP_RATE_LIMITED] = 4;
    hist_observe(&gw->ctr.event_latency, 300 * US);
    buf_t b;
    buf_init(&b);
    assert_int_equal(metrics_render(gw, &b), 0);
    assert_non_null(b.p);
    assert_true(b.len > 0 && b.p[b.len - 1] == '\n');

    fam_t fams[128];
    int nf = 0;
    char *save = NULL;
    char *text = strdup(b.p);
    int samples = 0;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# HELP ", 7) == 0) {
            const char *name = line + 7;
            const char *sp = strchr(name, ' ');
            assert_non_null(sp);
            assert_true(valid_name(name, (size_t)(sp - name)));
            assert_true(nf < 128);
            snprintf(fams[nf].name, sizeof(fams[nf].name), "%.*s", (int)(sp - name), name);
            for (int i = 0; i < nf; i++)
                assert_string_not_equal(fams[i].name, fams[nf].name);
            fams[nf].type[0] = '\0';
            nf++;
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            assert_true(nf > 0);
            size_t l = strlen(fams[nf - 1].name);
            assert_memory_equal(line + 7, fams[nf - 1].name, l); /* right after its HELP */
            const char *type = line + 7 + l + 1;
            assert_true(!strcmp(type, "counter") || !strcmp(type, "gauge") ||
                        !strcmp(type, "histogram") || !strcmp(type, "summary"));
            snprintf(fams[nf - 1].type, sizeof(fams[nf - 1].type), "%s", type);
            if (!strcmp(type, "counter")) {
                size_t n = strlen(fams[nf - 1].name);
                assert_true(n > 6 && !strcmp(fams[nf - 1].name + n - 6, "_total"));
            }
            assert_memory_equal(fams[nf - 1].name, "hotplex_", 8);
            continue;
        }
        assert_true(line[0] != '#');
        /* sample: name[{k="v"}] value */
        size_t nl = strcspn(line, "{ ");
        char name[128];
        snprintf(name, sizeof(name), "%.*s", (int)nl, line);
        assert_true(valid_name(name, nl));
        const fam_t *f = family_of(fams, nf, name);
        assert_non_null(f);
        assert_ptr_equal(f, &fams[nf - 1]); /* samples follow their own family */
        const char *rest = line + nl;
        if (*rest == '{') {
            const char *close = strstr(rest, "\"} ");
            assert_non_null(close);
            rest = close + 2;
        }
        assert_true(*rest == ' ');
        char *end;
        double v = strtod(rest + 1, &end);
        assert_true(*end == '\0');
        assert_true(v >= 0);
        samples++;
    }
    assert_true(nf >= 25);
    assert_true(samples > nf);
    free(text);

    assert_non_null(strstr(b.p, "\nhotplex_connections 2\n"));
    assert_non_null(strstr(b.p, "\nhotplex_events_committed_total{type=\"message.delta\"} 7\n"));
    assert_non_null(strstr(b.p, "\nhotplex_events_committed_total{type=\"other\"} 1\n"));
    assert_non_null(strstr(b.p, "\nhotplex_errors_total{code=\"RATE_LIMITED\"} 4\n"));
    assert_non_null(strstr(b.p, "\nhotplex_sessions{state=\"running\"} 0\n"));
    assert_non_null(strstr(b.p, "\nhotplex_event_latency_seconds_bucket{le=\"0.00025\"} 0\n"));
    assert_non_null(strstr(b.p, "\nhotplex_event_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
    assert_non_null(strstr(b.p, "\nhotplex_event_latency_seconds_count 1\n"));
    assert_non_null(strstr(b.p, "\nhotplex_store_batches_total 0\n"));
    assert_non_null(strstr(b.p, "\nhotplex_process_resident_memory_bytes "));
    assert_null(strstr(b.p, "\nhotplex_process_resident_memory_bytes 0\n"));
    buf_free(&b);
    hmap_free(&gw->sessions);
    hmap_free(&gw->users);
    free(gw);
}

static void test_event_type_table(void **state)
{
    (void)state;
    for (int i = 0; i < GW_EVT_TYPES - 1; i++)
        assert_int_equal(gw_event_type_index(gw_event_type_names[i]), i);
    assert_string_equal(gw_event_type_names[GW_EVT_TYPES - 1], "other");
    assert_int_equal(gw_event_type_index("other"), GW_EVT_TYPES - 1);
    assert_int_equal(gw_event_type_index(""), GW_EVT_TYPES - 1);
    assert_int_equal(gw_event_type_index("message.delt"), GW_EVT_TYPES - 1);
}

/* ---- admin tokens -------------------------------------------------------- */

#define TOK_R "read-token-0123456789"
#define TOK_W "write-token-0123456789"
#define TOK_RW "rw:token:with:colons-0123"

static void test_tokens_parse_and_check(void **state)
{
    (void)state;
    const char file[] = "# admin tokens\n"
                        "\n"
                        "  " TOK_R " : read \n" TOK_W ":write\r\n" TOK_RW ":read, write\n";
    admin_tokens_t *t = NULL;
    char err[256];
    assert_int_equal(admin_tokens_parse(&t, "mem", file, sizeof(file) - 1, err, sizeof(err)), 0);
    assert_int_equal(admin_tokens_count(t), 3);
    assert_int_equal(admin_tokens_check(t, TOK_R, strlen(TOK_R)), ADMIN_SCOPE_READ);
    assert_int_equal(admin_tokens_check(t, TOK_W, strlen(TOK_W)),
                     ADMIN_SCOPE_READ | ADMIN_SCOPE_WRITE); /* write implies read */
    assert_int_equal(admin_tokens_check(t, TOK_RW, strlen(TOK_RW)),
                     ADMIN_SCOPE_READ | ADMIN_SCOPE_WRITE);
    assert_int_equal(admin_tokens_check(t, TOK_R "x", strlen(TOK_R) + 1), 0);
    assert_int_equal(admin_tokens_check(t, TOK_R, strlen(TOK_R) - 1), 0);
    assert_int_equal(admin_tokens_check(t, "", 0), 0);
    assert_int_equal(admin_tokens_check(t, NULL, 0), 0);
    admin_tokens_free(t);

    /* no tokens at all: loads, refuses everything */
    assert_int_equal(admin_tokens_parse(&t, "mem", "# none\n", 7, err, sizeof(err)), 0);
    assert_int_equal(admin_tokens_count(t), 0);
    assert_int_equal(admin_tokens_check(t, TOK_R, strlen(TOK_R)), 0);
    admin_tokens_free(t);
}

static void test_tokens_refused(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *why;
    } bad[] = {
        {"no-colon-token-0123456789\n", "expected token:scope"},
        {"short:read\n", "16 to 1024"},
        {"has space token 0123456789:read\n", "printable ASCII"},
        {TOK_R ":admin\n", "unknown scope"},
        {TOK_R ":\n", "no scope"},
        {TOK_R ": , \n", "no scope"},
        {TOK_R ":read\n" TOK_R ":write\n", "duplicate token (same as line 1)"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        admin_tokens_t *t = (admin_tokens_t *)1;
        char err[256] = "";
        assert_int_equal(
            admin_tokens_parse(&t, "f.tokens", bad[i].text, strlen(bad[i].text), err, sizeof(err)),
            -1);
        assert_null(t);
        assert_non_null(strstr(err, "f.tokens line"));
        assert_non_null(strstr(err, bad[i].why));
        assert_null(strstr(err, "0123456789")); /* never echoes a token */
    }
    admin_tokens_t *t = NULL;
    char err[256];
    assert_int_equal(admin_tokens_load(&t, "/nonexistent/admin.tokens", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "/nonexistent/admin.tokens"));
    assert_int_equal(admin_tokens_parse(&t, "m", "a\0b", 3, err, sizeof(err)), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist_default_bounds),
        cmocka_unit_test(test_hist_custom_bounds),
        cmocka_unit_test(test_fmt_double),
        cmocka_unit_test(test_counter_and_gauge_text),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_histogram_text),
        cmocka_unit_test(test_render_idle_gateway),
        cmocka_unit_test(test_event_type_table),
        cmocka_unit_test(test_tokens_parse_and_check),
        cmocka_unit_test(test_tokens_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
