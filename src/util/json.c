/*
 * json.c - validating JSON reader over jsmn, and the streaming JSON writer.
 *
 * Owns: the definition of "valid JSON" for the whole gateway. jsmn (strict
 * mode, parent links) is only a tokenizer: on its own it accepts `[1 2]`,
 * `[1,]`, `{"a" 1}`, `01`, `tru`, several root values, stops at a NUL byte and
 * rejects a bare root number. So json_parse first runs json_validate(), one
 * pass over the RFC 8259 grammar (UTF-8, control characters, depth, token
 * count), and lets jsmn tokenize only texts that passed. A root primitive is
 * tokenized here (jsmn's strict mode wants a delimiter after it).
 * Must never: allocate while parsing, recurse on input (depth lives in a
 * 64-bit stack of bits), read outside [js, js+len), or emit bytes from the
 * writer that make the output invalid JSON.
 */
#include "util/json.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/utf8.h"

#define JSMN_STATIC
#define JSMN_STRICT
#define JSMN_PARENT_LINKS
#include <jsmn.h>

/* The caller's json_tok_t array is handed to jsmn as jsmntok_t: same layout. */
_Static_assert(sizeof(jsmntype_t) == sizeof(int), "jsmntype_t is int-sized");
_Static_assert(sizeof(json_tok_t) == sizeof(jsmntok_t), "token layout");
_Static_assert(offsetof(json_tok_t, type) == offsetof(jsmntok_t, type), "token layout");
_Static_assert(offsetof(json_tok_t, start) == offsetof(jsmntok_t, start), "token layout");
_Static_assert(offsetof(json_tok_t, end) == offsetof(jsmntok_t, end), "token layout");
_Static_assert(offsetof(json_tok_t, size) == offsetof(jsmntok_t, size), "token layout");
_Static_assert(offsetof(json_tok_t, parent) == offsetof(jsmntok_t, parent), "token layout");
_Static_assert((int)JSON_OBJ == (int)JSMN_OBJECT && (int)JSON_ARR == (int)JSMN_ARRAY &&
                   (int)JSON_STR == (int)JSMN_STRING && (int)JSON_PRIM == (int)JSMN_PRIMITIVE,
               "token types");
_Static_assert(JSON_MAX_DEPTH <= 64, "depth stacks are 64-bit masks");

/* jsmn writes the tokens through jsmntok_t lvalues, everyone else uses
 * json_tok_t: compiler memory barriers around the jsmn call keep type-based
 * alias analysis from moving accesses of one kind across the other. */
#define JSON_BARRIER() __asm__ __volatile__("" ::: "memory")

/* ---- validation --------------------------------------------------------- */

/* string bytes: 0 plain, 1 '"', 2 '\\', 3 control (< 0x20), 4 non-ASCII */
/* clang-format off */
static const uint8_t json_sclass[256] = {
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4,
};
/* clang-format on */

/* True if none of the 8 bytes at p needs attention inside a string: no
 * control char, '"', '\\' or non-ASCII byte (SWAR: exact as a whole word). */
static inline bool json_plain8(const unsigned char *p)
{
    const uint64_t ones = UINT64_C(0x0101010101010101), high = UINT64_C(0x8080808080808080);
    uint64_t x;
    memcpy(&x, p, sizeof x);
    uint64_t q = x ^ (ones * '"'), bs = x ^ (ones * '\\');
    uint64_t hit = ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((bs - ones) & ~bs) | x;
    return (hit & high) == 0;
}

static inline bool json_is_ws(unsigned char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline bool json_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int json_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static inline size_t json_skip_ws(const unsigned char *s, size_t i, size_t n)
{
    while (i < n && json_is_ws(s[i]))
        i++;
    return i;
}

/* s[*pi] == '"'. Advances past the closing quote. */
static int json_scan_string(const unsigned char *s, size_t n, size_t *pi)
{
    size_t i = *pi + 1;
    for (;;) {
        while (n - i >= 8 && json_plain8(s + i))
            i += 8;
        while (i < n && json_sclass[s[i]] == 0)
            i++;
        if (i >= n) return -EINVAL; /* unterminated */
        switch (json_sclass[s[i]]) {
        case 1:
            *pi = i + 1;
            return 0;
        case 2:
            if (i + 1 >= n) return -EINVAL;
            switch (s[i + 1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                i += 2;
                break;
            case 'u':
                if (n - i < 6) return -EINVAL;
                for (size_t k = 2; k < 6; k++)
                    if (json_hexval(s[i + k]) < 0) return -EINVAL;
                i += 6;
                break;
            default:
                return -EINVAL;
            }
            break;
        case 3:
            return -EILSEQ;
        default: {
            size_t k = utf8_seq_len((const char *)s + i, n - i);
            if (k == 0) return -EILSEQ;
            i += k;
        }
        }
    }
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at s[*pi]. */
static int json_scan_number(const unsigned char *s, size_t n, size_t *pi)
{
    size_t i = *pi;
    if (i < n && s[i] == '-') i++;
    if (i >= n) return -EINVAL;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && json_is_digit(s[i]))
            i++;
    } else {
        return -EINVAL;
    }
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !json_is_digit(s[i])) return -EINVAL;
        while (i < n && json_is_digit(s[i]))
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || !json_is_digit(s[i])) return -EINVAL;
        while (i < n && json_is_digit(s[i]))
            i++;
    }
    *pi = i;
    return 0;
}

static int json_scan_literal(const unsigned char *s, size_t n, size_t *pi, const char *lit,
                             size_t ln)
{
    if (n - *pi < ln || memcmp(s + *pi, lit, ln) != 0) return -EINVAL;
    *pi += ln;
    return 0;
}

/* One pass over the RFC 8259 grammar; counts the tokens jsmn will produce
 * (every value and every key). Returns the first error from the left. */
static int json_validate(const char *js, size_t n, int *ntok)
{
    const unsigned char *s = (const unsigned char *)js;
    size_t i = 0;
    int depth = 0;
    uint64_t isobj = 0; /* bit depth-1 set: that level is an object */
    int count = 0;
    int rc;

value:
    i = json_skip_ws(s, i, n);
    if (i >= n) return -EINVAL;
    switch (s[i]) {
    case '{':
    case '[': {
        bool obj = s[i] == '{';
        if (depth == JSON_MAX_DEPTH) return -ELOOP;
        uint64_t bit = UINT64_C(1) << depth;
        isobj = obj ? (isobj | bit) : (isobj & ~bit);
        depth++;
        count++;
        i = json_skip_ws(s, i + 1, n);
        if (i < n && s[i] == (obj ? '}' : ']')) {
            i++;
            depth--;
            goto after;
        }
        if (obj) goto key;
        goto value;
    }
    case '"':
        rc = json_scan_string(s, n, &i);
        break;
    case 't':
        rc = json_scan_literal(s, n, &i, "true", 4);
        break;
    case 'f':
        rc = json_scan_literal(s, n, &i, "false", 5);
        break;
    case 'n':
        rc = json_scan_literal(s, n, &i, "null", 4);
        break;
    default:
        rc = json_scan_number(s, n, &i);
        break;
    }
    if (rc) return rc;
    count++;

after:
    i = json_skip_ws(s, i, n);
    if (depth == 0) {
        if (i != n) return -EINVAL; /* trailing bytes */
        *ntok = count;
        return 0;
    }
    if (i >= n) return -EINVAL;
    {
        bool obj = (isobj >> (depth - 1)) & 1;
        if (s[i] == ',') {
            i++;
            if (obj) goto key;
            goto value;
        }
        if (s[i] == (obj ? '}' : ']')) {
            i++;
            depth--;
            goto after;
        }
        return -EINVAL;
    }

key:
    i = json_skip_ws(s, i, n);
    if (i >= n || s[i] != '"') return -EINVAL;
    rc = json_scan_string(s, n, &i);
    if (rc) return rc;
    count++;
    i = json_skip_ws(s, i, n);
    if (i >= n || s[i] != ':') return -EINVAL;
    i++;
    goto value;
}

int json_parse(json_doc_t *d, const char *js, size_t len, json_tok_t *toks, int maxtoks)
{
    d->js = js;
    d->len = len;
    d->tok = toks;
    d->ntok = 0;
    if (!js && len) return -EINVAL;
    if (len > INT_MAX) return -E2BIG; /* token offsets are int */

    int count = 0;
    int rc = json_validate(js, len, &count);
    if (rc) {
        if (rc != -EILSEQ && !utf8_valid(js, len)) rc = -EILSEQ;
        return rc;
    }
    if (!toks || maxtoks < count) return -E2BIG;

    const unsigned char *s = (const unsigned char *)js;
    size_t r = json_skip_ws(s, 0, len);
    if (s[r] != '{' && s[r] != '[' && s[r] != '"') {
        size_t e = r;
        while (e < len && !json_is_ws(s[e]))
            e++;
        toks[0] = (json_tok_t){
            .type = JSON_PRIM, .start = (int)r, .end = (int)e, .size = 0, .parent = -1};
        d->ntok = 1;
        return 0;
    }

    jsmn_parser p;
    jsmn_init(&p);
    JSON_BARRIER();
    int n = jsmn_parse(&p, js, len, (jsmntok_t *)(void *)toks, (unsigned int)maxtoks);
    JSON_BARRIER();
    assert(n == count);
    if (n != count) return -EINVAL; /* cannot happen on validated input */
    d->ntok = n;
    return 0;
}

/* ---- token access ------------------------------------------------------- */

static inline const json_tok_t *json_tok(const json_doc_t *d, int i)
{
    return (d && i >= 0 && i < d->ntok) ? &d->tok[i] : NULL;
}

int json_type(const json_doc_t *d, int i)
{
    const json_tok_t *t = json_tok(d, i);
    return t ? t->type : 0;
}

int json_next(const json_doc_t *d, int i)
{
    const json_tok_t *t = json_tok(d, i);
    if (!t) return -1;
    if (t->type != JSON_OBJ && t->type != JSON_ARR) return i + 1;
    int j = i + 1;
    while (j < d->ntok && d->tok[j].start < t->end)
        j++;
    return j;
}

const char *json_raw(const json_doc_t *d, int i, size_t *len)
{
    const json_tok_t *t = json_tok(d, i);
    if (!t) {
        if (len) *len = 0;
        return NULL;
    }
    int q = t->type == JSON_STR; /* include the quotes */
    if (len) *len = (size_t)(t->end - t->start + 2 * q);
    return d->js + t->start - q;
}

const char *json_str_body(const json_doc_t *d, int i, size_t *len)
{
    const json_tok_t *t = json_tok(d, i);
    if (!t || t->type != JSON_STR) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)(t->end - t->start);
    return d->js + t->start;
}

/* Primitive token text, or NULL. */
static const char *json_prim(const json_doc_t *d, int i, size_t *n)
{
    const json_tok_t *t = json_tok(d, i);
    if (!t || t->type != JSON_PRIM) return NULL;
    *n = (size_t)(t->end - t->start);
    return d->js + t->start;
}

bool json_is_null(const json_doc_t *d, int i)
{
    size_t n;
    const char *p = json_prim(d, i, &n);
    return p && n == 4 && memcmp(p, "null", 4) == 0;
}

int json_get_bool(const json_doc_t *d, int i, bool *out)
{
    size_t n;
    const char *p = json_prim(d, i, &n);
    if (p && n == 4 && memcmp(p, "true", 4) == 0) {
        *out = true;
        return 0;
    }
    if (p && n == 5 && memcmp(p, "false", 5) == 0) {
        *out = false;
        return 0;
    }
    return -EINVAL;
}

int json_get_i64(const json_doc_t *d, int i, int64_t *out)
{
    size_t n;
    const char *p = json_prim(d, i, &n);
    if (!p) return -EINVAL;
    size_t k = 0;
    bool neg = false;
    if (k < n && p[k] == '-') {
        neg = true;
        k++;
    }
    if (k >= n) return -EINVAL;
    if (p[k] == '0' && n - k > 1) return -EINVAL;
    for (size_t j = k; j < n; j++)
        if (!json_is_digit((unsigned char)p[j])) return -EINVAL; /* fraction, exponent, literal */
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t acc = 0;
    for (; k < n; k++) {
        unsigned dig = (unsigned)(p[k] - '0');
        if (acc > (limit - dig) / 10) return -ERANGE;
        acc = acc * 10 + dig;
    }
    if (neg)
        *out = acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc;
    else
        *out = (int64_t)acc;
    return 0;
}

int json_get_f64(const json_doc_t *d, int i, double *out)
{
    size_t n;
    const char *p = json_prim(d, i, &n);
    if (!p || n == 0 || !(p[0] == '-' || json_is_digit((unsigned char)p[0]))) return -EINVAL;
    char small[64];
    char *tmp = n < sizeof small ? small : malloc(n + 1);
    if (!tmp) return -ENOMEM;
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    char *end;
    double v = strtod(tmp, &end);
    bool whole = end == tmp + n;
    if (tmp != small) free(tmp);
    if (!whole) return -EINVAL;
    if (isinf(v)) return -ERANGE;
    *out = v;
    return 0;
}

/* ---- unescaping --------------------------------------------------------- */

static int json_hex4(const char *p, const char *end)
{
    if (end - p < 4) return -1;
    int v = 0;
    for (int k = 0; k < 4; k++) {
        int h = json_hexval((unsigned char)p[k]);
        if (h < 0) return -1;
        v = v << 4 | h;
    }
    return v;
}

/* p[0] == '\\'. Decodes one escape (a surrogate pair counts as one) into
 * u8 (1..4 bytes, returned); *adv = input bytes consumed. -EINVAL if bad. */
static int json_unesc1(const char *p, const char *end, char u8[4], size_t *adv)
{
    if (end - p < 2) return -EINVAL;
    char c;
    switch (p[1]) {
    case '"':
        c = '"';
        break;
    case '\\':
        c = '\\';
        break;
    case '/':
        c = '/';
        break;
    case 'b':
        c = '\b';
        break;
    case 'f':
        c = '\f';
        break;
    case 'n':
        c = '\n';
        break;
    case 'r':
        c = '\r';
        break;
    case 't':
        c = '\t';
        break;
    case 'u': {
        int cp = json_hex4(p + 2, end);
        if (cp < 0) return -EINVAL;
        *adv = 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return -EINVAL; /* lone low surrogate */
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - p < 12 || p[6] != '\\' || p[7] != 'u') return -EINVAL;
            int lo = json_hex4(p + 8, end);
            if (lo < 0xDC00 || lo > 0xDFFF) return -EINVAL;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            *adv = 12;
        }
        if (cp < 0x80) {
            u8[0] = (char)cp;
            return 1;
        }
        if (cp < 0x800) {
            u8[0] = (char)(0xC0 | cp >> 6);
            u8[1] = (char)(0x80 | (cp & 0x3F));
            return 2;
        }
        if (cp < 0x10000) {
            u8[0] = (char)(0xE0 | cp >> 12);
            u8[1] = (char)(0x80 | (cp >> 6 & 0x3F));
            u8[2] = (char)(0x80 | (cp & 0x3F));
            return 3;
        }
        u8[0] = (char)(0xF0 | cp >> 18);
        u8[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        u8[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        u8[3] = (char)(0x80 | (cp & 0x3F));
        return 4;
    }
    default:
        return -EINVAL;
    }
    u8[0] = c;
    *adv = 2;
    return 1;
}

/* Unescapes src[0..n) into out (cap bytes incl. the NUL). Keeps decoding
 * when out is full so a bad escape is reported as -EINVAL, not -ENOSPC. */
static int json_unescape(const char *src, size_t n, char *out, size_t cap)
{
    const char *p = src, *end = src + n;
    size_t o = 0;
    bool full = false;
    while (p < end) {
        const char *bs = memchr(p, '\\', (size_t)(end - p));
        size_t run = (size_t)((bs ? bs : end) - p);
        if (!full && o + run < cap)
            memcpy(out + o, p, run);
        else
            full = true;
        o += run;
        p += run;
        if (!bs) break;
        char u8[4];
        size_t adv = 0;
        int k = json_unesc1(p, end, u8, &adv);
        if (k < 0) return -EINVAL;
        if (!full && o + (size_t)k < cap)
            memcpy(out + o, u8, (size_t)k);
        else
            full = true;
        o += (size_t)k;
        p += adv;
    }
    if (full || o >= cap || o > INT_MAX) {
        if (cap) out[0] = '\0';
        return -ENOSPC;
    }
    out[o] = '\0';
    return (int)o;
}

int json_str_copy(const json_doc_t *d, int i, char *out, size_t cap)
{
    size_t n;
    const char *p = json_str_body(d, i, &n);
    if (!p) return -EINVAL;
    return json_unescape(p, n, out, cap);
}

int json_str_dup(const json_doc_t *d, int i, char **out)
{
    *out = NULL;
    size_t n;
    const char *p = json_str_body(d, i, &n);
    if (!p) return -EINVAL;
    char *m = malloc(n + 1); /* unescaping never grows a string */
    if (!m) return -ENOMEM;
    int rc = json_unescape(p, n, m, n + 1);
    if (rc < 0) {
        free(m);
        return rc;
    }
    *out = m;
    return rc;
}

/* Compares the escaped body p[0..n) with the C string s (length sn). */
static bool json_body_eq(const char *p, size_t n, const char *s, size_t sn)
{
    if (!memchr(p, '\\', n)) return n == sn && memcmp(p, s, n) == 0;
    const char *end = p + n;
    const char *q = s, *qend = s + sn;
    while (p < end) {
        if (*p != '\\') {
            if (q >= qend || *q != *p) return false;
            p++;
            q++;
            continue;
        }
        char u8[4];
        size_t adv = 0;
        int k = json_unesc1(p, end, u8, &adv);
        if (k < 0 || (size_t)(qend - q) < (size_t)k || memcmp(q, u8, (size_t)k) != 0) return false;
        q += k;
        p += adv;
    }
    return q == qend;
}

bool json_str_eq(const json_doc_t *d, int i, const char *s)
{
    size_t n;
    const char *p = json_str_body(d, i, &n);
    return p && s && json_body_eq(p, n, s, strlen(s));
}

int json_obj_get(const json_doc_t *d, int obj, const char *key)
{
    const json_tok_t *t = json_tok(d, obj);
    if (!t || t->type != JSON_OBJ || !key) return -1;
    size_t kn = strlen(key);
    int k = obj + 1;
    for (int m = 0; m < t->size && k + 1 < d->ntok; m++) {
        const json_tok_t *kt = &d->tok[k];
        if (kt->type == JSON_STR &&
            json_body_eq(d->js + kt->start, (size_t)(kt->end - kt->start), key, kn))
            return k + 1;
        k = json_next(d, k + 1);
    }
    return -1;
}

int json_arr_get(const json_doc_t *d, int arr, int idx)
{
    const json_tok_t *t = json_tok(d, arr);
    if (!t || t->type != JSON_ARR || idx < 0 || idx >= t->size) return -1;
    int k = arr + 1;
    for (int m = 0; m < idx && k >= 0; m++)
        k = json_next(d, k);
    return k < d->ntok ? k : -1;
}

/* ---- writer ------------------------------------------------------------- */

/* 0 copy as-is; 1 non-ASCII (check UTF-8); 'u' \u00XX; else '\\' + that char */
/* clang-format off */
static const uint8_t jw_esc[256] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    0, 0, '"', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '\\', 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};
/* clang-format on */

static const char jw_hex[] = "0123456789abcdef";

static inline void jw_put(jw_t *w, const void *p, size_t n)
{
    if (w->err) return;
    buf_t *b = w->b;
    if (b->len + n < b->cap) { /* room for the bytes and the NUL */
        memcpy(b->p + b->len, p, n);
        b->len += n;
        b->p[b->len] = '\0';
        return;
    }
    int rc = buf_append(b, p, n);
    if (rc) w->err = rc;
}

static inline void jw_putc(jw_t *w, char c)
{
    jw_put(w, &c, 1);
}

/* Comma bookkeeping before any value; false if the writer is in error. */
static inline bool jw_pre_value(jw_t *w)
{
    if (w->err) return false;
    if (w->depth > 0) {
        uint64_t bit = UINT64_C(1) << (w->depth - 1);
        if (w->need_comma & bit) jw_putc(w, ',');
        w->need_comma |= bit;
    }
    return !w->err;
}

void jw_init(jw_t *w, buf_t *b)
{
    w->b = b;
    w->depth = 0;
    w->need_comma = 0;
    w->err = 0;
}

int jw_error(const jw_t *w)
{
    return w->err;
}

static void jw_begin(jw_t *w, char c)
{
    if (w->err) return;
    if (w->depth >= JSON_MAX_DEPTH) {
        w->err = -EOVERFLOW;
        return;
    }
    if (!jw_pre_value(w)) return;
    jw_putc(w, c);
    w->depth++;
    w->need_comma &= ~(UINT64_C(1) << (w->depth - 1));
}

static void jw_end(jw_t *w, char c)
{
    if (w->err) return;
    if (w->depth <= 0) {
        w->err = -EINVAL;
        return;
    }
    w->depth--;
    jw_putc(w, c);
}

void jw_obj_begin(jw_t *w)
{
    jw_begin(w, '{');
}

void jw_obj_end(jw_t *w)
{
    jw_end(w, '}');
}

void jw_arr_begin(jw_t *w)
{
    jw_begin(w, '[');
}

void jw_arr_end(jw_t *w)
{
    jw_end(w, ']');
}

/* "escaped s" */
static void jw_quoted(jw_t *w, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    if (!w->err && buf_reserve(w->b, n + 2) != 0) {
        w->err = -ENOMEM;
        return;
    }
    jw_putc(w, '"');
    size_t run = 0, i = 0;
    while (i < n) {
        if (n - i >= 8 && json_plain8(u + i)) {
            i += 8;
            continue;
        }
        uint8_t e = jw_esc[u[i]];
        if (e == 0) {
            i++;
            continue;
        }
        if (e == 1) {
            size_t k = utf8_seq_len(s + i, n - i);
            if (k) {
                i += k;
                continue;
            }
        }
        jw_put(w, s + run, i - run);
        if (e == 1) {
            jw_put(w, "\\ufffd", 6);
        } else if (e == 'u') {
            char esc[6] = {'\\', 'u', '0', '0', jw_hex[u[i] >> 4], jw_hex[u[i] & 15]};
            jw_put(w, esc, 6);
        } else {
            char esc[2] = {'\\', (char)e};
            jw_put(w, esc, 2);
        }
        i++;
        run = i;
    }
    jw_put(w, s + run, n - run);
    jw_putc(w, '"');
}

void jw_keyn(jw_t *w, const char *k, size_t n)
{
    if (w->err) return;
    if (w->depth > 0) {
        uint64_t bit = UINT64_C(1) << (w->depth - 1);
        if (w->need_comma & bit) jw_putc(w, ',');
        w->need_comma &= ~bit; /* the value sets it again */
    }
    jw_quoted(w, k, n);
    jw_putc(w, ':');
}

void jw_key(jw_t *w, const char *k)
{
    jw_keyn(w, k, strlen(k));
}

void jw_strn(jw_t *w, const char *s, size_t n)
{
    if (!jw_pre_value(w)) return;
    jw_quoted(w, s, n);
}

void jw_str(jw_t *w, const char *s)
{
    if (!s) {
        jw_null(w);
        return;
    }
    jw_strn(w, s, strlen(s));
}

#ifndef NDEBUG
/* An escaped body: no raw control chars, every '"' escaped, no dangling '\\'. */
static bool jw_escaped_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"') return false;
        if (c == '\\' && ++i >= n) return false;
    }
    return true;
}
#endif

void jw_str_escaped(jw_t *w, const char *body, size_t n)
{
    assert(jw_escaped_ok(body, n));
    if (!jw_pre_value(w)) return;
    if (buf_reserve(w->b, n + 2) != 0) {
        w->err = -ENOMEM;
        return;
    }
    jw_putc(w, '"');
    jw_put(w, body, n);
    jw_putc(w, '"');
}

void jw_raw(jw_t *w, const char *json, size_t n)
{
    if (!jw_pre_value(w)) return;
    jw_put(w, json, n);
}

static const char jw_digits2[] = "00010203040506070809"
                                 "10111213141516171819"
                                 "20212223242526272829"
                                 "30313233343536373839"
                                 "40414243444546474849"
                                 "50515253545556575859"
                                 "60616263646566676869"
                                 "70717273747576777879"
                                 "80818283848586878889"
                                 "90919293949596979899";

/* Writes v's decimal digits so they END at end; returns the first char. */
static char *jw_utoa(uint64_t v, char *end)
{
    char *p = end;
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        p -= 2;
        memcpy(p, jw_digits2 + 2 * r, 2);
    }
    if (v >= 10) {
        p -= 2;
        memcpy(p, jw_digits2 + 2 * v, 2);
    } else {
        *--p = (char)('0' + v);
    }
    return p;
}

void jw_uint(jw_t *w, uint64_t v)
{
    char tmp[24];
    char *end = tmp + sizeof tmp;
    char *p = jw_utoa(v, end);
    if (!jw_pre_value(w)) return;
    jw_put(w, p, (size_t)(end - p));
}

void jw_int(jw_t *w, int64_t v)
{
    char tmp[24];
    char *end = tmp + sizeof tmp;
    uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    char *p = jw_utoa(mag, end);
    if (v < 0) *--p = '-';
    if (!jw_pre_value(w)) return;
    jw_put(w, p, (size_t)(end - p));
}

void jw_double(jw_t *w, double v)
{
    if (!isfinite(v)) {
        jw_null(w);
        return;
    }
    char tmp[40];
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) { /* the shortest of these that round-trips */
        n = snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (n > 0 && (size_t)n < sizeof tmp && strtod(tmp, NULL) == v) break;
    }
    if (n < 0 || (size_t)n >= sizeof tmp) { /* cannot happen for %g */
        jw_null(w);
        return;
    }
    for (int k = 0; k < n; k++)
        if (tmp[k] == ',') tmp[k] = '.'; /* a non-C LC_NUMERIC */
    if (!jw_pre_value(w)) return;
    jw_put(w, tmp, (size_t)n);
}

void jw_bool(jw_t *w, bool v)
{
    if (!jw_pre_value(w)) return;
    if (v)
        jw_put(w, "true", 4);
    else
        jw_put(w, "false", 5);
}

void jw_null(jw_t *w)
{
    if (!jw_pre_value(w)) return;
    jw_put(w, "null", 4);
}

void jw_kstr(jw_t *w, const char *k, const char *v)
{
    jw_key(w, k);
    jw_str(w, v);
}

void jw_kint(jw_t *w, const char *k, int64_t v)
{
    jw_key(w, k);
    jw_int(w, v);
}

void jw_kuint(jw_t *w, const char *k, uint64_t v)
{
    jw_key(w, k);
    jw_uint(w, v);
}

void jw_kbool(jw_t *w, const char *k, bool v)
{
    jw_key(w, k);
    jw_bool(w, v);
}

void jw_knull(jw_t *w, const char *k)
{
    jw_key(w, k);
    jw_null(w);
}

void jw_kraw(jw_t *w, const char *k, const char *json, size_t n)
{
    jw_key(w, k);
    jw_raw(w, json, n);
}
