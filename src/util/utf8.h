/*
 * utf8.h - UTF-8 validation (RFC 3629).
 *
 * Owns: deciding whether bytes are well-formed UTF-8 (no overlongs, no
 * surrogates U+D800..U+DFFF, nothing above U+10FFFF).
 * Must never: allocate, transcode, or read past the n bytes it is given.
 */
#ifndef HOTPLEX_UTIL_UTF8_H
#define HOTPLEX_UTIL_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* true if p[0..n) is entirely well-formed UTF-8. n == 0 is valid. NUL bytes are valid. */
bool utf8_valid(const char *p, size_t n);

/* Length (1..4) of the well-formed UTF-8 sequence starting at p, looking at
 * no more than n bytes; 0 if the bytes at p are not a well-formed sequence
 * (or n == 0). */
size_t utf8_seq_len(const char *p, size_t n);

#endif /* HOTPLEX_UTIL_UTF8_H */
