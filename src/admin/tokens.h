/*
 * tokens.h - admin API tokens: a table loaded from admin.tokens_file, one
 * `token:scope1,scope2` per line, and the constant-time check of a
 * presented bearer token.
 *
 * Owns: SHA-256 digests of the tokens and their scopes (the tokens
 * themselves are wiped after hashing). Scopes: `read` (every GET) and
 * `write` (terminate, delete, reload; implies read).
 * Must never: log or echo a token (errors name the file, the line and the
 * rule); reveal by timing which token, or how much of one, matched: a
 * presented token is hashed and compared with CRYPTO_memcmp against EVERY
 * stored digest, like the API keys in auth/auth.c.
 *
 * File format: blank lines and lines starting with '#' are skipped; spaces
 * around the token and each scope are trimmed; the token is everything
 * before the last ':' (16..1024 printable ASCII characters, no spaces); at
 * least one scope; unknown scopes and duplicate tokens refuse the file.
 */
#ifndef HOTPLEX_ADMIN_TOKENS_H
#define HOTPLEX_ADMIN_TOKENS_H

#include <stddef.h>

#define ADMIN_SCOPE_READ 1u
#define ADMIN_SCOPE_WRITE 2u
#define ADMIN_TOKEN_MIN 16
#define ADMIN_TOKEN_MAX 1024

typedef struct admin_tokens admin_tokens_t;

/* Loads the file. 0, or -1 with a message in err (file, line, rule). A
 * file accessible by group or others loads with a warning; a file with no
 * tokens loads (every token is then refused) with a warning. */
int admin_tokens_load(admin_tokens_t **out, const char *path, char *err, size_t cap);
/* The same from memory (name stands for the file in messages); for tests. */
int admin_tokens_parse(admin_tokens_t **out, const char *name, const char *data, size_t len,
                       char *err, size_t cap);
void admin_tokens_free(admin_tokens_t *t);
size_t admin_tokens_count(const admin_tokens_t *t);
/* The scopes of a presented token (write includes read), 0 if unknown. */
unsigned admin_tokens_check(const admin_tokens_t *t, const char *token, size_t len);

#endif
