/*
 * auth.c - API keys and JWTs (see auth.h for the rules).
 *
 * Design:
 * - API keys are kept only as SHA-256 digests (the plaintext is dropped after
 *   loading). A presented key is hashed and compared with CRYPTO_memcmp
 *   against every stored digest, with the matching index picked by masking,
 *   so the time taken depends on the table size only.
 * - JWTs are checked in layers, cheapest and most paranoid first:
 *   1. our own strict parse of the header (base64url without padding, RFC
 *      8259 JSON, exactly one "alg", no "crit"), and the alg must be the one
 *      the configured key allows. libjwt 1.x verifies with whatever alg the
 *      header names, so HS256 "signed" with the public key PEM bytes would
 *      pass it: the alg decision is made here, before libjwt sees the token.
 *   2. for HS256 our own HMAC-SHA256 check with CRYPTO_memcmp (libjwt 1.x
 *      compares signatures with strcmp, a timing oracle).
 *   3. jwt_decode() with the key (never NULL: libjwt skips verification for a
 *      NULL key), then jwt_get_alg() must still equal the alg from step 1 (a
 *      header with two "alg" members parsed differently by jansson cannot
 *      slip through).
 *   4. the verified claims, re-serialised by libjwt, are read with util/json.
 *
 * Must never: log a key, secret or token; keep plaintext keys; call
 * jwt_decode without a key.
 */
#include "auth/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "util/clock.h"
#include "util/json.h"
#include "util/log.h"

#define KEYS_MAX_LINE 4096
#define PEM_MAX_BYTES (64 * 1024)
#define HEADER_MAX_B64 1024

typedef struct key_ent {
    unsigned char digest[32];
    char user[128];
} key_ent_t;

struct auth {
    char *keys_file; /* NULL: none configured */
    key_ent_t *keys;
    size_t nkeys;
    unsigned char *secret; /* NULL: no HS256 */
    size_t secret_len;
    char *pem; /* public key PEM, NUL-terminated, as libjwt wants it */
    size_t pem_len;
    jwt_alg_t pub_alg; /* JWT_ALG_ES256 or JWT_ALG_RS256; JWT_ALG_NONE without a key */
    char *aud, *iss, *bot_id;
    int skew_s;
};

/* ---- small helpers ----------------------------------------------------- */

__attribute__((format(printf, 4, 5))) static int fail(char *err, size_t cap, int rc,
                                                      const char *fmt, ...)
{
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int deny(const char **why, const char *reason)
{
    if (why) *why = reason;
    return -EACCES;
}

static char *dup_opt(const char *s, bool *oom)
{
    if (!s || !s[0]) return NULL;
    char *d = strdup(s);
    if (!d) *oom = true;
    return d;
}

static int sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 0;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1 || len != 32) {
        ERR_clear_error();
        return -ENOMEM;
    }
    return 0;
}

static bool is_user_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '@' || c == '+' || c == '-';
}

/* An identity string from a token or a caller (sub, bot_id): 1..127 bytes, no
 * control characters (UTF-8 above 0x7f is fine). */
static bool ident_ok(const char *s, size_t n)
{
    if (n == 0 || n > 127) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return false;
    }
    return true;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Strict base64url without padding (RFC 7515 2): canonical trailing bits.
 * Decoded length, or -1. */
static long b64url_decode(const char *s, size_t n, unsigned char *out, size_t cap)
{
    if (n % 4 == 1) return -1;
    size_t need = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    if (need > cap) return -1;
    unsigned acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_val((unsigned char)s[i]);
        if (v < 0) return -1;
        acc = ((acc << 6) | (unsigned)v) & 0xffffu;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits && (acc & ((1u << bits) - 1))) return -1;
    return (long)o;
}

/* ---- keys file --------------------------------------------------------- */

static int keys_line_error(char *err, size_t cap, const char *path, int lineno, const char *what)
{
    return fail(err, cap, -EINVAL, "keys file %s line %d: %s", path, lineno, what);
}

/* Validates one "user:key" line (already trimmed, not blank, not a comment)
 * into e. Returns NULL or a static reason. */
static const char *parse_key_line(char *s, key_ent_t *e)
{
    char *colon = strchr(s, ':');
    if (!colon) return "expected user:key";
    *colon = '\0';
    char *user = trim(s), *key = trim(colon + 1);
    size_t ul = strlen(user), kl = strlen(key);
    if (ul == 0) return "empty user";
    if (ul > 127) return "user longer than 127 characters";
    for (size_t i = 0; i < ul; i++)
        if (!is_user_char((unsigned char)user[i]))
            return "user may only contain A-Z a-z 0-9 . _ @ + -";
    if (kl < AUTH_MIN_KEY_LEN) return "key shorter than 16 characters";
    if (kl > AUTH_MAX_KEY_LEN) return "key longer than 1024 characters";
    int dots = 0;
    for (size_t i = 0; i < kl; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c <= 0x20 || c >= 0x7f) return "key may only contain printable ASCII without spaces";
        dots += c == '.';
    }
    if (dots == 2) return "key contains exactly two '.' and would be taken for a JWT";
    memcpy(e->user, user, ul + 1);
    if (sha256(key, kl, e->digest) < 0) return "out of memory";
    OPENSSL_cleanse(key, kl);
    return NULL;
}

static int load_keys(const char *path, key_ent_t **out, size_t *nout, char *err, size_t cap)
{
    *out = NULL;
    *nout = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        return fail(err, cap, -e, "keys file %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, cap, -EINVAL, "keys file %s: not a regular file", path);
    }
    if (st.st_mode & 077)
        log_warn("keys file %s is accessible by group or others (mode %04o); chmod 600 it", path,
                 (unsigned)(st.st_mode & 07777));
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return fail(err, cap, -ENOMEM, "keys file %s: out of memory", path);
    }

    key_ent_t *v = NULL;
    int *lines = NULL;
    size_t nv = 0, vcap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    int lineno = 0, rc = 0;
    while ((n = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        if (n > KEYS_MAX_LINE) {
            rc = keys_line_error(err, cap, path, lineno, "line longer than 4096 bytes");
            break;
        }
        if (memchr(line, '\0', (size_t)n)) {
            rc = keys_line_error(err, cap, path, lineno, "NUL byte");
            break;
        }
        char *s = trim(line);
        if (!s[0] || s[0] == '#') continue;
        if (nv == vcap) {
            size_t nc = vcap ? vcap * 2 : 16;
            key_ent_t *nvp = realloc(v, nc * sizeof(*v));
            if (!nvp) {
                rc = fail(err, cap, -ENOMEM, "keys file %s: out of memory", path);
                break;
            }
            v = nvp;
            int *nl = realloc(lines, nc * sizeof(*lines));
            if (!nl) {
                rc = fail(err, cap, -ENOMEM, "keys file %s: out of memory", path);
                break;
            }
            lines = nl;
            vcap = nc;
        }
        const char *why = parse_key_line(s, &v[nv]);
        if (why) {
            rc = keys_line_error(err, cap, path, lineno, why);
            break;
        }
        for (size_t i = 0; i < nv; i++)
            if (memcmp(v[i].digest, v[nv].digest, 32) == 0) {
                rc =
                    fail(err, cap, -EINVAL, "keys file %s line %d: duplicate key (same as line %d)",
                         path, lineno, lines[i]);
                break;
            }
        if (rc) break;
        lines[nv++] = lineno;
    }
    if (!rc && ferror(f)) rc = fail(err, cap, -EIO, "keys file %s: read error", path);
    if (line) {
        OPENSSL_cleanse(line, lcap);
        free(line);
    }
    fclose(f);
    free(lines);
    if (rc) {
        if (v) OPENSSL_cleanse(v, vcap * sizeof(*v));
        free(v);
        return rc;
    }
    if (nv == 0) log_warn("keys file %s holds no keys: every API key is refused", path);
    *out = v;
    *nout = nv;
    return 0;
}

/* ---- public key -------------------------------------------------------- */

static int load_pubkey(auth_t *a, const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        return fail(err, cap, -e, "jwt public key %s: %s", path, strerror(e));
    }
    char *pem = malloc(PEM_MAX_BYTES + 1);
    if (!pem) {
        fclose(f);
        return fail(err, cap, -ENOMEM, "jwt public key %s: out of memory", path);
    }
    size_t n = fread(pem, 1, PEM_MAX_BYTES + 1, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr || n > PEM_MAX_BYTES || n == 0 || memchr(pem, '\0', n)) {
        free(pem);
        return fail(err, cap, -EINVAL, "jwt public key %s: %s", path,
                    rerr     ? "read error"
                    : n == 0 ? "empty file"
                             : "not a PEM file (or over 64 KiB)");
    }
    pem[n] = '\0';

    int rc = 0;
    BIO *bio = BIO_new_mem_buf(pem, (int)n);
    EVP_PKEY *k = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!k) {
        rc = fail(err, cap, -EINVAL,
                  "jwt public key %s: no PEM \"PUBLIC KEY\" block found (private keys and "
                  "certificates are not accepted)",
                  path);
    } else if (EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {
        char group[64] = "";
        size_t gl = 0;
        if (EVP_PKEY_get_group_name(k, group, sizeof(group), &gl) != 1 ||
            (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0))
            rc = fail(err, cap, -EINVAL,
                      "jwt public key %s: EC key on curve %s; ES256 needs P-256 (prime256v1)", path,
                      group[0] ? group : "?");
        else
            a->pub_alg = JWT_ALG_ES256;
    } else if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA) {
        int bits = EVP_PKEY_get_bits(k);
        if (bits < 2048)
            rc = fail(err, cap, -EINVAL,
                      "jwt public key %s: RSA key of %d bits; RS256 needs at least 2048", path,
                      bits);
        else
            a->pub_alg = JWT_ALG_RS256;
    } else {
        rc = fail(err, cap, -EINVAL,
                  "jwt public key %s: unsupported key type (use a P-256 EC or an RSA key)", path);
    }
    EVP_PKEY_free(k);
    ERR_clear_error();
    if (rc) {
        free(pem);
        a->pub_alg = JWT_ALG_NONE;
        return rc;
    }
    a->pem = pem;
    a->pem_len = n;
    return 0;
}

/* ---- lifecycle --------------------------------------------------------- */

int auth_new(auth_t **out, const auth_opts_t *o, char *err, size_t cap)
{
    if (err && cap) err[0] = '\0';
    if (!out) return fail(err, cap, -EINVAL, "auth: no output pointer");
    *out = NULL;
    static const auth_opts_t none;
    if (!o) o = &none;
    if (o->clock_skew_s < 0 || o->clock_skew_s > 3600)
        return fail(err, cap, -EINVAL, "jwt clock skew %d s out of range 0..3600", o->clock_skew_s);
    if (o->jwt_secret && o->jwt_secret[0] && strlen(o->jwt_secret) < AUTH_MIN_SECRET_LEN)
        return fail(err, cap, -EINVAL, "jwt secret too short: at least %d bytes required",
                    AUTH_MIN_SECRET_LEN);
    if (o->bot_id && o->bot_id[0] && !ident_ok(o->bot_id, strlen(o->bot_id)))
        return fail(err, cap, -EINVAL, "bot_id must be 1..127 characters without control chars");

    auth_t *a = calloc(1, sizeof(*a));
    if (!a) return fail(err, cap, -ENOMEM, "auth: out of memory");
    a->pub_alg = JWT_ALG_NONE;
    a->skew_s = o->clock_skew_s;
    bool oom = false;
    a->keys_file = dup_opt(o->keys_file, &oom);
    a->aud = dup_opt(o->jwt_audience, &oom);
    a->iss = dup_opt(o->jwt_issuer, &oom);
    a->bot_id = dup_opt(o->bot_id, &oom);
    if (o->jwt_secret && o->jwt_secret[0]) {
        a->secret_len = strlen(o->jwt_secret);
        a->secret = malloc(a->secret_len + 1);
        if (a->secret)
            memcpy(a->secret, o->jwt_secret, a->secret_len + 1);
        else
            oom = true;
    }
    if (oom) {
        auth_free(a);
        return fail(err, cap, -ENOMEM, "auth: out of memory");
    }
    int rc;
    if (a->keys_file && (rc = load_keys(a->keys_file, &a->keys, &a->nkeys, err, cap)) < 0) {
        auth_free(a);
        return rc;
    }
    if (o->jwt_public_key_file && o->jwt_public_key_file[0] &&
        (rc = load_pubkey(a, o->jwt_public_key_file, err, cap)) < 0) {
        auth_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void auth_free(auth_t *a)
{
    if (!a) return;
    if (a->secret) OPENSSL_cleanse(a->secret, a->secret_len);
    free(a->secret);
    if (a->keys) OPENSSL_cleanse(a->keys, a->nkeys * sizeof(*a->keys));
    free(a->keys);
    free(a->keys_file);
    free(a->pem);
    free(a->aud);
    free(a->iss);
    free(a->bot_id);
    free(a);
}

bool auth_dev_mode(const auth_t *a)
{
    return !a || (!a->keys_file && !a->secret && !a->pem);
}

size_t auth_key_count(const auth_t *a)
{
    return a ? a->nkeys : 0;
}

int auth_reload_keys(auth_t *a, char *err, size_t cap)
{
    if (err && cap) err[0] = '\0';
    if (!a) return fail(err, cap, -EINVAL, "auth: null");
    if (!a->keys_file) return 0;
    key_ent_t *v;
    size_t n;
    int rc = load_keys(a->keys_file, &v, &n, err, cap);
    if (rc < 0) return rc;
    if (a->keys) OPENSSL_cleanse(a->keys, a->nkeys * sizeof(*a->keys));
    free(a->keys);
    a->keys = v;
    a->nkeys = n;
    log_info("keys file %s reloaded: %zu keys", a->keys_file, n);
    return 0;
}

/* ---- checking ---------------------------------------------------------- */

static int check_key(const auth_t *a, const char *cred, size_t len, auth_identity_t *id,
                     const char **why)
{
    unsigned char dg[32];
    if (sha256(cred, len, dg) < 0) return -ENOMEM;
    size_t match = 0;
    unsigned found = 0;
    for (size_t i = 0; i < a->nkeys; i++) {
        unsigned eq = (unsigned)(CRYPTO_memcmp(dg, a->keys[i].digest, sizeof(dg)) == 0);
        size_t m = (size_t)0 - (size_t)eq;
        match = (match & ~m) | (i & m);
        found |= eq;
    }
    if (!found) return deny(why, "invalid API key");
    memcpy(id->user, a->keys[match].user, sizeof(id->user));
    if (a->bot_id) snprintf(id->bot_id, sizeof(id->bot_id), "%s", a->bot_id);
    return 0;
}

/* Our own look at the header: exactly one string "alg", no "crit". */
static const char *check_header(const char *h, size_t hlen, jwt_alg_t *alg)
{
    unsigned char hb[HEADER_MAX_B64];
    if (hlen == 0 || hlen > HEADER_MAX_B64) return "malformed token";
    long n = b64url_decode(h, hlen, hb, sizeof(hb));
    if (n <= 0) return "malformed token";
    json_tok_t t[64];
    json_doc_t d;
    if (json_parse(&d, (const char *)hb, (size_t)n, t, 64) != 0 || json_type(&d, 0) != JSON_OBJ)
        return "malformed token";
    int nalg = 0, algi = -1;
    for (int k = 1; k < json_next(&d, 0); k = json_next(&d, k + 1)) {
        if (json_str_eq(&d, k, "alg")) {
            nalg++;
            algi = k + 1;
        } else if (json_str_eq(&d, k, "crit")) {
            return "unsupported critical header";
        }
    }
    if (nalg != 1 || json_type(&d, algi) != JSON_STR) return "malformed token";
    if (json_str_eq(&d, algi, "HS256"))
        *alg = JWT_ALG_HS256;
    else if (json_str_eq(&d, algi, "ES256"))
        *alg = JWT_ALG_ES256;
    else if (json_str_eq(&d, algi, "RS256"))
        *alg = JWT_ALG_RS256;
    else
        return "algorithm not allowed";
    return NULL;
}

static int check_claims(const auth_t *a, const char *claims, int64_t now_ms, auth_identity_t *id,
                        const char **why)
{
    size_t n = strlen(claims);
    int maxt = (int)(n / 2 + 4); /* every token but the root takes >= 2 bytes incl. separator */
    json_tok_t *t = malloc((size_t)maxt * sizeof(*t));
    if (!t) return -ENOMEM;
    json_doc_t d;
    int rc = 0;
    if (json_parse(&d, claims, n, t, maxt) != 0 || json_type(&d, 0) != JSON_OBJ) {
        rc = deny(why, "malformed claims");
        goto out;
    }
    double skew_ms = (double)a->skew_s * 1000.0, now = (double)now_ms;

    int i = json_obj_get(&d, 0, "sub");
    if (i < 0 || json_is_null(&d, i)) {
        rc = deny(why, "missing sub");
        goto out;
    }
    int ul = json_type(&d, i) == JSON_STR ? json_str_copy(&d, i, id->user, sizeof(id->user)) : -1;
    if (ul == 0) {
        rc = deny(why, "missing sub");
        goto out;
    }
    if (ul < 0 || !ident_ok(id->user, (size_t)ul) || strlen(id->user) != (size_t)ul) {
        rc = deny(why, "invalid sub");
        goto out;
    }

    double exp = 0;
    int ei = json_obj_get(&d, 0, "exp");
    if (ei >= 0) {
        if (json_get_f64(&d, ei, &exp) != 0) {
            rc = deny(why, "malformed exp");
            goto out;
        }
        if (!(now < exp * 1000.0 + skew_ms)) {
            rc = deny(why, "token expired");
            goto out;
        }
    }
    i = json_obj_get(&d, 0, "nbf");
    if (i >= 0) {
        double nbf;
        if (json_get_f64(&d, i, &nbf) != 0) {
            rc = deny(why, "malformed nbf");
            goto out;
        }
        if (now + skew_ms < nbf * 1000.0) {
            rc = deny(why, "token not yet valid");
            goto out;
        }
    }
    if (a->iss) {
        i = json_obj_get(&d, 0, "iss");
        if (i < 0 || !json_str_eq(&d, i, a->iss)) {
            rc = deny(why, "wrong issuer");
            goto out;
        }
    }
    if (a->aud) {
        i = json_obj_get(&d, 0, "aud");
        bool ok = false;
        if (i >= 0 && json_type(&d, i) == JSON_STR) {
            ok = json_str_eq(&d, i, a->aud);
        } else if (i >= 0 && json_type(&d, i) == JSON_ARR) {
            for (int k = 0, e; !ok && (e = json_arr_get(&d, i, k)) >= 0; k++)
                ok = json_str_eq(&d, e, a->aud);
        }
        if (!ok) {
            rc = deny(why, "wrong audience");
            goto out;
        }
    }
    i = json_obj_get(&d, 0, "bot_id");
    if (i >= 0 && !json_is_null(&d, i)) {
        int bl = json_type(&d, i) == JSON_STR ? json_str_copy(&d, i, id->bot_id, sizeof(id->bot_id))
                                              : -1;
        if (bl < 0 || !ident_ok(id->bot_id, (size_t)bl) || strlen(id->bot_id) != (size_t)bl) {
            rc = deny(why, "invalid bot_id");
            goto out;
        }
    }
    if (a->bot_id && strcmp(id->bot_id, a->bot_id) != 0) {
        rc = deny(why, "wrong bot_id");
        goto out;
    }
    if (ei >= 0) {
        double ms = exp * 1000.0;
        id->expires_ms = ms >= 9.2e18 ? INT64_MAX : ms < 1.0 ? 1 : (int64_t)ms;
    }
out:
    free(t);
    return rc;
}

static int check_jwt(const auth_t *a, const char *cred, size_t len, int64_t now_ms,
                     auth_identity_t *id, const char **why)
{
    const char *d1 = strchr(cred, '.'), *d2 = strchr(d1 + 1, '.');
    jwt_alg_t alg = JWT_ALG_NONE;
    const char *r = check_header(cred, (size_t)(d1 - cred), &alg);
    if (r) return deny(why, r);

    const unsigned char *key;
    int klen;
    if (alg == JWT_ALG_HS256) {
        if (!a->secret) return deny(why, "algorithm not allowed");
        unsigned char mac[EVP_MAX_MD_SIZE], sig[64];
        unsigned int ml = 0;
        const char *s = d2 + 1;
        long sl = b64url_decode(s, len - (size_t)(s - cred), sig, sizeof(sig));
        if (!HMAC(EVP_sha256(), a->secret, (int)a->secret_len, (const unsigned char *)cred,
                  (size_t)(d2 - cred), mac, &ml) ||
            ml != 32) {
            ERR_clear_error();
            return -ENOMEM;
        }
        if (sl != 32 || CRYPTO_memcmp(mac, sig, 32) != 0) return deny(why, "bad signature");
        key = a->secret;
        klen = (int)a->secret_len;
    } else if (a->pem && alg == a->pub_alg) {
        key = (const unsigned char *)a->pem;
        klen = (int)a->pem_len;
    } else {
        return deny(why, "algorithm not allowed");
    }

    jwt_t *j = NULL;
    int rc = jwt_decode(&j, cred, key, klen);
    ERR_clear_error();
    if (rc != 0) {
        if (j) jwt_free(j);
        if (rc == ENOMEM) return -ENOMEM;
        return deny(why, alg == JWT_ALG_HS256 ? "malformed token" : "bad signature");
    }
    if (jwt_get_alg(j) != alg) {
        jwt_free(j);
        return deny(why, "algorithm not allowed");
    }
    char *claims = jwt_get_grants_json(j, NULL);
    jwt_free(j);
    if (!claims) return deny(why, "malformed claims");
    rc = check_claims(a, claims, now_ms, id, why);
    free(claims);
    return rc;
}

int auth_check_at(const auth_t *a, const char *credential, int64_t now_ms, auth_identity_t *id,
                  const char **why)
{
    if (why) *why = NULL;
    if (id) memset(id, 0, sizeof(*id));
    if (!a || !credential || !id) {
        if (why) *why = "internal error";
        return -EINVAL;
    }
    size_t len = strnlen(credential, AUTH_MAX_CREDENTIAL + 1);
    if (len == 0) return deny(why, "empty credential");
    if (len > AUTH_MAX_CREDENTIAL) return deny(why, "credential too long");
    if (auth_dev_mode(a)) return deny(why, "no API keys or JWT configured");

    int dots = 0;
    for (size_t i = 0; i < len; i++)
        dots += credential[i] == '.';
    int rc;
    if (dots == 2 && (a->secret || a->pem))
        rc = check_jwt(a, credential, len, now_ms, id, why);
    else if (a->keys_file)
        rc = check_key(a, credential, len, id, why);
    else
        rc = deny(why, "invalid credential");
    if (rc != 0) {
        memset(id, 0, sizeof(*id));
        if (rc == -ENOMEM && why) *why = "out of memory";
    }
    return rc;
}

int auth_check(const auth_t *a, const char *credential, auth_identity_t *id, const char **why)
{
    return auth_check_at(a, credential, clock_unix_ms(), id, why);
}

/* ---- minting ----------------------------------------------------------- */

int auth_mint(const auth_t *a, const char *user, const char *bot_id, int ttl_s, char *out,
              size_t cap)
{
    if (out && cap) out[0] = '\0';
    if (!a || !user || !out || !a->secret || ttl_s < 0) return -EINVAL;
    if (!ident_ok(user, strlen(user))) return -EINVAL;
    const char *bot = bot_id && bot_id[0] ? bot_id : a->bot_id;
    if (bot && !ident_ok(bot, strlen(bot))) return -EINVAL;

    jwt_t *j = NULL;
    if (jwt_new(&j) != 0) return -ENOMEM;
    long now = (long)(clock_unix_ms() / 1000);
    int rc = jwt_add_grant(j, "sub", user);
    if (!rc && bot) rc = jwt_add_grant(j, "bot_id", bot);
    if (!rc && a->iss) rc = jwt_add_grant(j, "iss", a->iss);
    if (!rc && a->aud) rc = jwt_add_grant(j, "aud", a->aud);
    if (!rc) rc = jwt_add_grant_int(j, "iat", now);
    if (!rc && ttl_s > 0) rc = jwt_add_grant_int(j, "exp", now + ttl_s);
    if (!rc) rc = jwt_set_alg(j, JWT_ALG_HS256, a->secret, (int)a->secret_len);
    char *tok = rc ? NULL : jwt_encode_str(j);
    jwt_free(j);
    ERR_clear_error();
    if (!tok) return rc == EINVAL ? -EINVAL : -ENOMEM;
    size_t n = strlen(tok);
    if (n + 1 > cap) {
        free(tok);
        return -ENOSPC;
    }
    memcpy(out, tok, n + 1);
    free(tok);
    return 0;
}
