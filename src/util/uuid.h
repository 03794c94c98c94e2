/*
 * uuid.h - RFC 4122 UUIDs: random v4 event ids, name-based v5 session ids.
 *
 * Owns: the 36-char lowercase text form, the per-thread random pool for v4,
 * SHA-1 name hashing for v5 (OpenSSL libcrypto).
 * Must never: use a non-cryptographic RNG, hand out the same pool bytes
 * twice (also not across fork()), or accept non-canonical text forms.
 */
#ifndef HOTPLEX_UTIL_UUID_H
#define HOTPLEX_UTIL_UUID_H

#include <stdbool.h>
#include <stddef.h>

#define UUID_STR_LEN 37 /* 36 chars + NUL */

/* Random UUID from getrandom(), lowercase. Cheap: served from a 4 KiB
 * thread-local pool. Aborts only if the kernel cannot supply randomness at all. */
void uuid_v4(char out[UUID_STR_LEN]);

/* RFC 4122 name-based UUID (SHA-1) of name[0..n) in namespace ns.
 * If libcrypto fails (out of memory), out is set to "" (which uuid_is_valid
 * rejects); use uuid_v5_r to see the error. */
void uuid_v5(char out[UUID_STR_LEN], const unsigned char ns[16], const void *name, size_t n);
int uuid_v5_r(char out[UUID_STR_LEN], const unsigned char ns[16], const void *name,
              size_t n); /* 0 or -ENOMEM */

extern const unsigned char UUID_NS_DNS[16]; /* 6ba7b810-9dad-11d1-80b4-00c04fd430c8 */

/* Canonical 8-4-4-4-12 hex form only (either case, exactly 36 chars, no braces/urn:). */
bool uuid_parse(const char *s, unsigned char out[16]);
bool uuid_is_valid(const char *s);

/* Formats 16 bytes as lowercase 8-4-4-4-12. */
void uuid_format(char out[UUID_STR_LEN], const unsigned char u[16]);

#endif /* HOTPLEX_UTIL_UUID_H */
