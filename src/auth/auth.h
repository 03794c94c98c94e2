/*
 * auth.h - who is calling: API keys and JWTs turned into an identity.
 *
 * Owns: the API key table (loaded from a keys file, reloadable), the JWT
 * verification keys (an HS256 shared secret and/or one ES256 or RS256 public
 * key), and the rules a credential must pass. Pure checks: no I/O on the
 * check path, no globals, single-threaded.
 * Must never: log or echo a secret, a key or a token (errors name the file,
 * the line and the rule, never the bytes); accept a token whose algorithm
 * does not match the configured key type (alg "none", or HS256 signed with
 * the public key bytes as the secret); reveal by timing which API key, or how
 * much of one, matched; let two different keys share one identity by
 * accident (each key resolves to the user written on its own line).
 *
 * Credentials:
 *   API key  - any string that is not a JWT; looked up by SHA-256 digest,
 *              compared with CRYPTO_memcmp against EVERY stored digest.
 *   JWT      - a string with exactly two '.' while a JWT key is configured.
 *              Header alg must be HS256 (only with jwt_secret) or the type of
 *              the configured public key (ES256 for a P-256 key, RS256 for an
 *              RSA key >= 2048 bits); a "crit" header is refused. Claims:
 *              sub (required string) -> user; bot_id (optional string); exp
 *              and nbf (optional NumericDates, checked with clock_skew_s of
 *              leeway; a token without exp does not expire); aud (string or
 *              array, required to contain jwt_audience if that is set); iss
 *              (required to equal jwt_issuer if that is set). If opts.bot_id
 *              is set the token must carry an equal bot_id claim.
 *
 * Keys file: one "user:key" per line; blank lines and lines starting with '#'
 * (after optional spaces) are skipped; spaces around user and key are
 * trimmed. user: 1..127 chars of [A-Za-z0-9._@+-]; key: 16..1024 printable
 * ASCII chars without spaces and not exactly two '.' (it would be taken for a
 * JWT). A key may appear only once; a user may have several keys (rotation).
 * A file accessible by group or others (mode & 077) loads with a warning.
 *
 * Dev mode: no keys file, no JWT secret and no public key configured. (A
 * configured keys file that holds no keys is NOT dev mode: an operator who
 * removed every key has not asked for anonymous access.) In dev mode
 * auth_check rejects every credential; allowing anonymous is the caller's
 * decision.
 */
#ifndef HOTPLEX_AUTH_H
#define HOTPLEX_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTH_MAX_CREDENTIAL 8192 /* longer credentials are refused unparsed */
#define AUTH_MIN_KEY_LEN 16
#define AUTH_MAX_KEY_LEN 1024
#define AUTH_MIN_SECRET_LEN 32 /* HS256 secret: at least the hash size (RFC 7518 3.2) */

typedef struct auth auth_t;

typedef struct auth_identity {
    char user[128];
    char bot_id[128];   /* "" when none (API keys get opts.bot_id, if set) */
    int64_t expires_ms; /* JWT exp in Unix ms; 0 = none */
} auth_identity_t;

typedef struct auth_opts {
    const char *keys_file;  /* "user:key" per line; NULL/"" = none */
    const char *jwt_secret; /* HS256 shared secret (env HOTPLEX_JWT_SECRET); never logged */
    const char *jwt_public_key_file; /* PEM "PUBLIC KEY": P-256 (ES256) or RSA (RS256) */
    const char *jwt_audience;        /* required aud if set */
    const char *jwt_issuer;          /* required iss if set */
    const char *bot_id;              /* if set, tokens must carry this bot_id claim */
    int clock_skew_s;                /* leeway for exp/nbf, 0..3600 */
} auth_opts_t;

/* Loads the keys file and the public key. 0, or a negative errno with a
 * message in err naming the file (and line) and the rule: -ENOENT/-EACCES
 * file unreadable, -EINVAL bad content or option. o may be NULL (dev mode). */
int auth_new(auth_t **out, const auth_opts_t *o, char *err, size_t cap);
void auth_free(auth_t *a);
bool auth_dev_mode(const auth_t *a);
/* Number of API keys currently loaded. */
size_t auth_key_count(const auth_t *a);

/* Checks one credential (NUL-terminated). 0: accepted, *id filled. Else
 * *id is zeroed, *why (if why != NULL) gets a static reason and the result
 * is -EACCES (unknown key, bad signature, algorithm not allowed, expired, not
 * yet valid, wrong aud/iss/bot_id, missing or invalid sub, malformed token,
 * too long, nothing configured), -ENOMEM or -EINVAL (NULL arguments). */
int auth_check(const auth_t *a, const char *credential, auth_identity_t *id, const char **why);
/* Same with an explicit wall clock (Unix ms), for tests. */
int auth_check_at(const auth_t *a, const char *credential, int64_t now_ms, auth_identity_t *id,
                  const char **why);

/* Mints an HS256 JWT with the configured secret: sub = user, bot_id = bot_id
 * (or opts.bot_id when bot_id is NULL/""), iat = now, exp = now + ttl_s
 * (ttl_s == 0: no exp), iss/aud = the configured ones, so auth_check accepts
 * it. 0; -EINVAL no secret configured, bad user/bot_id or ttl_s < 0;
 * -ENOSPC out too small (out is then "" if cap > 0); -ENOMEM. */
int auth_mint(const auth_t *a, const char *user, const char *bot_id, int ttl_s, char *out,
              size_t cap);

/* Re-reads the keys file (SIGHUP). On error the old keys stay in force and
 * err says why. 0 with no keys file configured. */
int auth_reload_keys(auth_t *a, char *err, size_t cap);

#endif /* HOTPLEX_AUTH_H */
