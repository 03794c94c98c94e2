/*
 * buf.h - growable byte buffer.
 *
 * Owns: one heap block, its length and capacity; keeps it NUL-terminated
 * whenever memory is allocated (cap > 0 implies p[len] == '\0').
 * Must never: abort or exit on allocation failure (report -ENOMEM and leave
 * the buffer exactly as it was), or interpret the bytes it holds.
 */
#ifndef HOTPLEX_UTIL_BUF_H
#define HOTPLEX_UTIL_BUF_H

#include <stddef.h>

typedef struct buf {
    char *p;
    size_t len, cap; /* cap counts the byte reserved for the NUL, so len < cap when cap > 0 */
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);                 /* releases memory and re-inits b */
void buf_reset(buf_t *b);                /* len = 0, keep memory */
/* len = 0; keep the memory only if it is at most `keep` bytes, so a buffer
 * that once held something large does not hold that much for good. */
void buf_reset_keep(buf_t *b, size_t keep);
int buf_reserve(buf_t *b, size_t extra); /* room for extra more bytes (+NUL): 0 or -ENOMEM */
int buf_append(buf_t *b, const void *p, size_t n); /* p may point into b itself */
int buf_puts(buf_t *b, const char *s);
/* Arguments must not point into b itself (append(b, b->p, b->len) is fine). */
int buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands ownership of the bytes (NUL-terminated, free() them) to the caller and
 * re-inits b. *len (if len != NULL) gets the length. An empty, never-allocated
 * buffer yields a freshly malloc'd "" (NULL only if that malloc fails). */
char *buf_steal(buf_t *b, size_t *len);

#endif /* HOTPLEX_UTIL_BUF_H */
