/*
 * fuzz_json.c - libFuzzer target for util/json (reader and writer).
 *
 * Owns: the properties every input must satisfy: json_parse never crashes and
 * its tokens are well-formed; every getter is safe on every token; the
 * writer's output always parses (strings re-encoded with jw_str, escaped
 * slices with jw_str_escaped, a full re-serialisation with keys, commas and
 * nesting) and unescapes back to the same value; utf8 and E2BIG boundaries
 * agree with the parse.
 * Must never: keep state between inputs or accept a property failure silently
 * (every check aborts).
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/json.h"
#include "util/utf8.h"

#define MAXT 4096

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_tok_t toks[MAXT], toks2[MAXT];

/* jw output must parse; its single root string must unescape to want[0..n). */
static void check_encoded_string(const buf_t *b, const char *want, int n)
{
    json_doc_t d;
    CHECK(json_parse(&d, b->p, b->len, toks2, MAXT) == 0);
    CHECK(d.ntok == 1 && json_type(&d, 0) == JSON_STR);
    char *got = NULL;
    int m = json_str_dup(&d, 0, &got);
    if (n < 0) { /* the input had a lone surrogate: so has the verbatim copy */
        CHECK(m == -EINVAL);
        return;
    }
    CHECK(m == n);
    CHECK(memcmp(got, want, (size_t)n) == 0);
    free(got);
}

static void walk_getters(const json_doc_t *d, int i)
{
    int64_t v;
    double f;
    bool bo;
    size_t n;
    char small[8];
    int t = json_type(d, i);
    CHECK(t >= JSON_OBJ && t <= JSON_PRIM);
    const char *raw = json_raw(d, i, &n);
    CHECK(raw >= d->js && raw + n <= d->js + d->len);
    (void)json_is_null(d, i);
    (void)json_get_bool(d, i, &bo);
    int r64 = json_get_i64(d, i, &v);
    int rf = json_get_f64(d, i, &f);
    if (t == JSON_PRIM) {
        CHECK(n > 0);
        bool num = raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9');
        CHECK(num == (rf == 0 || rf == -ERANGE));
        if (r64 == 0) CHECK(rf == 0 && f == (double)v);
    } else {
        CHECK(r64 == -EINVAL && rf == -EINVAL);
    }
    (void)json_str_eq(d, i, "type");
    (void)json_str_copy(d, i, small, sizeof small);
    int nx = json_next(d, i);
    CHECK(nx > i && nx <= d->ntok);
    if (t == JSON_OBJ) {
        (void)json_obj_get(d, i, "type");
        (void)json_obj_get(d, i, "");
    } else {
        CHECK(json_obj_get(d, i, "type") == -1);
    }
    if (t == JSON_ARR && d->tok[i].size > 0) {
        int last = json_arr_get(d, i, d->tok[i].size - 1);
        CHECK(last > i && last < nx && json_next(d, last) == nx);
    }
}

static void check_string_token(const json_doc_t *d, int i, buf_t *b)
{
    size_t bn;
    const char *body = json_str_body(d, i, &bn);
    CHECK(body != NULL);
    char *s = NULL;
    int n = json_str_dup(d, i, &s);
    CHECK(n >= 0 || n == -EINVAL);
    if (n >= 0) {
        CHECK((size_t)n <= bn);
        CHECK(utf8_valid(s, (size_t)n)); /* decoded JSON strings are always UTF-8 */
        /* unescaped value re-encoded with the writer parses back to the same bytes */
        jw_t w;
        buf_reset(b);
        jw_init(&w, b);
        jw_strn(&w, s, (size_t)n);
        CHECK(jw_error(&w) == 0);
        check_encoded_string(b, s, n);
        if (memchr(s, '\0', (size_t)n) == NULL) CHECK(json_str_eq(d, i, s));
        char *c = malloc((size_t)n + 1);
        CHECK(c);
        CHECK(json_str_copy(d, i, c, (size_t)n + 1) == n);
        CHECK(memcmp(c, s, (size_t)n + 1) == 0);
        if (n > 0) CHECK(json_str_copy(d, i, c, (size_t)n) == -ENOSPC);
        free(c);
    }
    /* the escaped slice copied verbatim is a valid string with the same value */
    jw_t w;
    buf_reset(b);
    jw_init(&w, b);
    jw_str_escaped(&w, body, bn);
    CHECK(jw_error(&w) == 0);
    check_encoded_string(b, s, n);
    free(s);
}

/* Re-serialise token i (and its subtree) with the writer. */
static int reserialise(const json_doc_t *d, int i, jw_t *w)
{
    const json_tok_t *t = &d->tok[i];
    size_t n;
    const char *raw = json_raw(d, i, &n);
    switch (t->type) {
    case JSON_PRIM:
        jw_raw(w, raw, n);
        return i + 1;
    case JSON_STR: {
        const char *body = json_str_body(d, i, &n);
        jw_str_escaped(w, body, n);
        return i + 1;
    }
    case JSON_ARR: {
        jw_arr_begin(w);
        int k = i + 1;
        for (int m = 0; m < t->size; m++)
            k = reserialise(d, k, w);
        jw_arr_end(w);
        return k;
    }
    default: {
        jw_obj_begin(w);
        int k = i + 1;
        for (int m = 0; m < t->size; m++) {
            char *key = NULL;
            int kn = json_str_dup(d, k, &key);
            if (kn >= 0)
                jw_keyn(w, key, (size_t)kn);
            else
                jw_key(w, "\xff"); /* lone surrogate: any key keeps the shape */
            free(key);
            k = reserialise(d, k + 1, w);
        }
        jw_obj_end(w);
        return k;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *js = (const char *)data;
    json_doc_t d;
    buf_t b;
    buf_init(&b);

    /* writer on arbitrary bytes always produces a valid string */
    {
        jw_t w;
        jw_init(&w, &b);
        jw_strn(&w, js, size);
        CHECK(jw_error(&w) == 0);
        json_doc_t e;
        CHECK(json_parse(&e, b.p, b.len, toks2, MAXT) == 0);
        if (utf8_valid(js, size)) {
            char *got = NULL;
            CHECK(json_str_dup(&e, 0, &got) == (int)size);
            CHECK(memcmp(got, js, size) == 0);
            free(got);
        }
    }

    int rc = json_parse(&d, js, size, toks, MAXT);
    CHECK(rc == 0 || rc == -EINVAL || rc == -EILSEQ || rc == -ELOOP || rc == -E2BIG);
    if (rc != -EILSEQ) CHECK(utf8_valid(js, size) || rc == -E2BIG);
    if (rc != 0) {
        CHECK(d.ntok == 0);
        CHECK(json_type(&d, 0) == 0 && json_next(&d, 0) == -1);
        buf_free(&b);
        return 0;
    }
    CHECK(utf8_valid(js, size));
    CHECK(d.ntok >= 1 && json_next(&d, 0) == d.ntok);

    /* token invariants */
    for (int i = 0; i < d.ntok; i++) {
        const json_tok_t *t = &d.tok[i];
        CHECK(t->start >= 0 && t->start <= t->end && (size_t)t->end <= size);
        CHECK(t->parent < i);
        if (i == 0)
            CHECK(t->parent == -1);
        else
            CHECK(t->parent >= 0);
        if (t->parent >= 0) {
            const json_tok_t *p = &d.tok[t->parent];
            if (p->type == JSON_STR) { /* a value's parent is its key */
                CHECK(t->start > p->end && p->size == 1);
                CHECK(p->parent >= 0 && d.tok[p->parent].type == JSON_OBJ);
                CHECK(t->end < d.tok[p->parent].end);
            } else {
                CHECK(p->type == JSON_OBJ || p->type == JSON_ARR);
                CHECK(p->start < t->start && t->end < p->end);
            }
        }
        if (t->type == JSON_STR && t->parent >= 0 && d.tok[t->parent].type == JSON_OBJ)
            CHECK(t->size == 1);
        walk_getters(&d, i);
        if (t->type == JSON_STR) check_string_token(&d, i, &b);
    }

    /* exactly ntok tokens are needed */
    json_doc_t d2;
    CHECK(json_parse(&d2, js, size, toks2, d.ntok) == 0 && d2.ntok == d.ntok);
    CHECK(json_parse(&d2, js, size, toks2, d.ntok - 1) == -E2BIG);

    /* full re-serialisation: commas, keys and nesting from the writer */
    jw_t w;
    buf_reset(&b);
    jw_init(&w, &b);
    CHECK(reserialise(&d, 0, &w) == d.ntok);
    CHECK(jw_error(&w) == 0 && w.depth == 0);
    CHECK(json_parse(&d2, b.p, b.len, toks2, MAXT) == 0);
    CHECK(d2.ntok == d.ntok);
    for (int i = 0; i < d.ntok; i++) {
        CHECK(d2.tok[i].type == d.tok[i].type && d2.tok[i].size == d.tok[i].size &&
              d2.tok[i].parent == d.tok[i].parent);
    }

    /* the root as a raw slice inside an array */
    size_t rn;
    const char *raw = json_raw(&d, 0, &rn);
    buf_reset(&b);
    jw_init(&w, &b);
    jw_arr_begin(&w);
    jw_raw(&w, raw, rn);
    jw_raw(&w, raw, rn);
    jw_arr_end(&w);
    rc = json_parse(&d2, b.p, b.len, toks2, MAXT);
    CHECK(rc == 0 || rc == -ELOOP || rc == -E2BIG);

    buf_free(&b);
    return 0;
}
