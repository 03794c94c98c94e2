/*
 * buf.c - growable byte buffer.
 *
 * Owns: growth policy (doubling, 64-byte minimum) and the NUL terminator.
 * Must never: leave b inconsistent after a failed allocation, or abort on
 * -ENOMEM; every error path returns before touching b.
 */
#include "util/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_MIN_CAP 64

void buf_init(buf_t *b)
{
    b->p = NULL;
    b->len = 0;
    b->cap = 0;
}

void buf_free(buf_t *b)
{
    free(b->p);
    buf_init(b);
}

void buf_reset(buf_t *b)
{
    b->len = 0;
    if (b->cap) b->p[0] = '\0';
}

void buf_reset_keep(buf_t *b, size_t keep)
{
    if (b->cap > keep)
        buf_free(b);
    else
        buf_reset(b);
}

int buf_reserve(buf_t *b, size_t extra)
{
    /* need = len + extra + 1 (NUL), checked for overflow */
    if (extra > SIZE_MAX - 1 - b->len) return -ENOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t ncap = b->cap ? b->cap : BUF_MIN_CAP;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2) {
            ncap = need;
            break;
        }
        ncap *= 2;
    }
    char *np = realloc(b->p, ncap);
    if (!np && ncap > need) { /* doubling was too greedy: try the exact size */
        ncap = need;
        np = realloc(b->p, ncap);
    }
    if (!np) return -ENOMEM;
    if (b->cap == 0) np[0] = '\0';
    b->p = np;
    b->cap = ncap;
    return 0;
}

int buf_append(buf_t *b, const void *p, size_t n)
{
    if (n == 0) return 0;
    const char *src = p;
    /* self-append: src may move when b->p is reallocated */
    if (b->p && src >= b->p && src < b->p + b->cap) {
        size_t off = (size_t)(src - b->p);
        int rc = buf_reserve(b, n);
        if (rc) return rc;
        src = b->p + off;
    } else {
        int rc = buf_reserve(b, n);
        if (rc) return rc;
    }
    memmove(b->p + b->len, src, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int buf_puts(buf_t *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap, ap2;
    size_t avail = b->cap ? b->cap - b->len : 0; /* includes room for the NUL */
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(avail ? b->p + b->len : NULL, avail, fmt, ap);
    va_end(ap);
    if (n < 0) {
        if (avail) b->p[b->len] = '\0';
        va_end(ap2);
        return -EINVAL;
    }
    if ((size_t)n < avail) { /* fitted first time */
        b->len += (size_t)n;
        va_end(ap2);
        return 0;
    }
    if (avail) b->p[b->len] = '\0'; /* undo the truncated partial write */
    int rc = buf_reserve(b, (size_t)n);
    if (rc) {
        va_end(ap2);
        return rc;
    }
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)n;
    return 0;
}

char *buf_steal(buf_t *b, size_t *len)
{
    char *p = b->p;
    size_t l = b->len;
    if (!p) {
        p = malloc(1);
        if (p) p[0] = '\0';
        l = 0;
    }
    if (len) *len = p ? l : 0;
    buf_init(b);
    return p;
}
