/*
 * json.h - the one JSON approach of hotplex: a validating reader over jsmn
 * tokens and a streaming writer. Nothing builds a document tree.
 *
 * Owns: deciding what is JSON (exactly RFC 8259 texts, UTF-8 only), string
 * unescaping, and every byte of outbound JSON (escaping, commas, depth).
 * Must never: allocate while parsing (tokens live in the caller's array), hand
 * out a token of a document json_parse rejected, or emit text that is not
 * JSON (the writer escapes everything; the only verbatim inputs are
 * jw_raw/jw_str_escaped slices the caller took from a validated document).
 *
 * Reader tokens (same layout as jsmntok_t with JSMN_PARENT_LINKS, but this
 * header does not pull in jsmn):
 *   type    JSON_OBJ / JSON_ARR / JSON_STR / JSON_PRIM
 *   start   byte offset of the first byte; for strings the first byte AFTER
 *           the opening quote
 *   end     offset one past the last byte; for strings the closing quote
 *   size    objects: number of keys; arrays: number of elements; a string
 *           used as an object key: 1; anything else: 0
 *   parent  index of the enclosing token, -1 for the root; a value inside an
 *           object has its KEY as parent, a key has the object as parent
 * Tokens are in document order (pre-order): an object at i is followed by
 * key, value, key, value, ...; json_next() skips a value with everything in it.
 *
 * Typical walk of an object:
 *   for (int k = obj + 1; k < json_next(d, obj); k = json_next(d, k + 1))
 *       key token k, value token k + 1
 */
#ifndef HOTPLEX_UTIL_JSON_H
#define HOTPLEX_UTIL_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

#define JSON_MAX_DEPTH 64 /* nesting of objects/arrays, reader and writer */

enum { JSON_OBJ = 1, JSON_ARR, JSON_STR, JSON_PRIM };

typedef struct json_tok {
    int type, start, end, size, parent;
} json_tok_t;

typedef struct json_doc {
    const char *js;
    size_t len;
    json_tok_t *tok;
    int ntok;
} json_doc_t;

/* ---- reader ---------------------------------------------------------- */

/* Parses js[0..len) (any bytes, need not be NUL-terminated) into toks.
 * 0 ok; -EINVAL not a JSON text (incl. empty input, trailing bytes after the
 * root value other than whitespace, NUL bytes outside strings); -EILSEQ
 * invalid UTF-8 anywhere in the input (takes precedence over other errors) or
 * a raw control char (< 0x20) inside a string; -ELOOP nesting deeper than
 * JSON_MAX_DEPTH; -E2BIG a valid text needing more than maxtoks tokens (or
 * len > INT_MAX). Otherwise the first error from the left wins. On error d is
 * an empty document (ntok = 0). Lone \u surrogates are accepted here (RFC 8259
 * grammar allows them) and rejected when the string is unescaped. */
int json_parse(json_doc_t *d, const char *js, size_t len, json_tok_t *toks, int maxtoks);

/* Token type, or 0 if i is not a token of d. */
int json_type(const json_doc_t *d, int i);
/* Index of the token after i and everything inside it (== d->ntok at the end;
 * for a key that is the key's value). -1 if i is not a token of d. */
int json_next(const json_doc_t *d, int i);
/* Value token of the first member whose key equals key after unescaping;
 * -1 if absent or obj is not an object. */
int json_obj_get(const json_doc_t *d, int obj, const char *key);
/* Element idx (0-based) of array arr, or -1. */
int json_arr_get(const json_doc_t *d, int arr, int idx);

bool json_is_null(const json_doc_t *d, int i);
/* i is a string equal to s after unescaping (a \u0000 inside never matches). */
bool json_str_eq(const json_doc_t *d, int i, const char *s);
/* Unescapes string i into out (NUL-terminated). Returns the length (may
 * contain NULs from \u0000), -EINVAL not a string or bad escape (incl. lone
 * surrogates), -ENOSPC cap too small (out is then "" if cap > 0). */
int json_str_copy(const json_doc_t *d, int i, char *out, size_t cap);
/* Same into a malloc'd buffer (*out, free() it); length, -EINVAL or -ENOMEM
 * (*out = NULL on error). */
int json_str_dup(const json_doc_t *d, int i, char **out);
/* Plain integer primitive (-?(0|[1-9][0-9]*)), no fraction/exponent even if
 * integral: 0; -ERANGE outside int64; -EINVAL anything else. */
int json_get_i64(const json_doc_t *d, int i, int64_t *out);
/* Any number primitive as double (strtod; assumes the "C" LC_NUMERIC locale):
 * 0, -ERANGE on overflow to infinity, -EINVAL not a number. */
int json_get_f64(const json_doc_t *d, int i, double *out);
int json_get_bool(const json_doc_t *d, int i, bool *out); /* 0 or -EINVAL */
/* Raw input bytes of token i; strings INCLUDING the quotes. NULL if bad i. */
const char *json_raw(const json_doc_t *d, int i, size_t *len);
/* The still-escaped body of string i WITHOUT the quotes (what
 * jw_str_escaped wants). NULL if i is not a string. */
const char *json_str_body(const json_doc_t *d, int i, size_t *len);

/* ---- writer ---------------------------------------------------------- */

/* Streams JSON into a buf_t. Commas are automatic: need_comma has one bit per
 * open container; a key clears its level's bit and the value sets it again.
 * Errors are sticky: after the first one every call is a no-op. Misuse
 * (a value without a key inside an object, ...) is not detected. */
typedef struct jw {
    buf_t *b;
    int depth;
    uint64_t need_comma; /* bit (depth-1) set: the next item at this depth needs a ',' */
    int err;
} jw_t;

void jw_init(jw_t *w, buf_t *b);
void jw_obj_begin(jw_t *w);
void jw_obj_end(jw_t *w);
void jw_arr_begin(jw_t *w);
void jw_arr_end(jw_t *w);
void jw_key(jw_t *w, const char *k); /* key (escaped like jw_str), then ':' */
void jw_keyn(jw_t *w, const char *k, size_t n);
/* RFC 8259 escaping: '"', '\\', \b \f \n \r \t, other controls as \u00XX;
 * valid UTF-8 kept as-is; each byte that is not part of a well-formed UTF-8
 * sequence becomes \ufffd. jw_str(w, NULL) writes null. */
void jw_str(jw_t *w, const char *s);
void jw_strn(jw_t *w, const char *s, size_t n);
/* body is the inside of a JSON string literal that is ALREADY escaped (e.g.
 * json_str_body() of a validated document): appended between quotes as-is.
 * Debug builds assert it holds no raw control chars and no unescaped quote. */
void jw_str_escaped(jw_t *w, const char *body, size_t n);
void jw_int(jw_t *w, int64_t v);
void jw_uint(jw_t *w, uint64_t v);
/* %.15g, %.16g or %.17g, the first that round-trips; non-finite -> null */
void jw_double(jw_t *w, double v);
void jw_bool(jw_t *w, bool v);
void jw_null(jw_t *w);
void jw_raw(jw_t *w, const char *json, size_t n); /* a complete JSON value, verbatim */

/* convenience: key + value in one call */
void jw_kstr(jw_t *w, const char *k, const char *v);
void jw_kint(jw_t *w, const char *k, int64_t v);
void jw_kuint(jw_t *w, const char *k, uint64_t v);
void jw_kbool(jw_t *w, const char *k, bool v);
void jw_knull(jw_t *w, const char *k);
void jw_kraw(jw_t *w, const char *k, const char *json, size_t n);

/* 0, or the first error: -ENOMEM, -EOVERFLOW (nesting deeper than
 * JSON_MAX_DEPTH), -EINVAL (an end without a matching begin). */
int jw_error(const jw_t *w);

#endif /* HOTPLEX_UTIL_JSON_H */
