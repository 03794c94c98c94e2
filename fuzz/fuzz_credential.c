/*
 * fuzz_credential.c - libFuzzer target for auth/auth's credential check.
 *
 * Owns: one auth_t configured with everything at once (a keys file, an HS256
 * secret, an ES256 public key, audience, issuer, bot_id, leeway), built on
 * the first input in a private temp dir. Every input runs auth_check on:
 *   1. the raw bytes as a credential (up to the first NUL);
 *   2. a JWT whose header and claims are the input (split at the first '\n';
 *      without one, a fixed HS256 header), CORRECTLY HS256-signed with the
 *      secret, so the fuzzer reaches libjwt's parser and our claim checks.
 * Properties checked (abort on failure): never a crash; 0 means a user of
 * 1..127 bytes without control chars and a NUL-terminated bot_id; otherwise
 * a reason string and an all-zero identity; a credential accepted with
 * alg other than HS256 can only come from the key table.
 * Must never: keep state between inputs other than the auth_t.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth/auth.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SECRET "fuzz-secret-0123456789abcdef-0123456789"

/* A fixed P-256 public key (its private half is not needed: the fuzzer cannot
 * forge ES256, it exercises the parsing and the alg rules around it). */
static const char ec_pub_pem[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2XVWVn3Ra9bcw2k79UJB/efcS1XS\n"
    "PQQdAYIx+hBy8S7APv2rZkLQ+apftHIJfXmZle+Q/HHs5DH2cqy3/WGE1A==\n"
    "-----END PUBLIC KEY-----\n";

static auth_t *A;

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f);
    fputs(text, f);
    fclose(f);
}

static void setup(void)
{
    char dir[] = "/tmp/hotplex-fuzz-cred-XXXXXX";
    CHECK(mkdtemp(dir));
    char keys[128], pem[128];
    snprintf(keys, sizeof(keys), "%s/keys", dir);
    snprintf(pem, sizeof(pem), "%s/ec.pub.pem", dir);
    write_text(keys, "# fuzz\nalice:alice-key-0123456789\nbob:bob-key-with.one-dot\n"
                     "carol:c4r0l-k3y-!@#$%^&*()\n");
    CHECK(chmod(keys, 0600) == 0);
    write_text(pem, ec_pub_pem);
    char err[512];
    int rc = auth_new(&A,
                      &(auth_opts_t){.keys_file = keys,
                                     .jwt_secret = SECRET,
                                     .jwt_public_key_file = pem,
                                     .jwt_audience = "hotplex",
                                     .jwt_issuer = "fuzz",
                                     .bot_id = "bot",
                                     .clock_skew_s = 30},
                      err, sizeof(err));
    if (rc != 0) fprintf(stderr, "auth_new: %s\n", err);
    CHECK(rc == 0);
    unlink(keys);
    unlink(pem);
    rmdir(dir);
}

static void check_result(int rc, const auth_identity_t *id, const char *why)
{
    if (rc == 0) {
        size_t n = strnlen(id->user, sizeof(id->user));
        CHECK(n > 0 && n < sizeof(id->user));
        for (size_t i = 0; i < n; i++)
            CHECK((unsigned char)id->user[i] >= 0x20 && id->user[i] != 0x7f);
        CHECK(strnlen(id->bot_id, sizeof(id->bot_id)) < sizeof(id->bot_id));
        CHECK(strcmp(id->bot_id, "bot") == 0); /* bot_id is required to match */
    } else {
        CHECK(rc == -EACCES || rc == -ENOMEM);
        CHECK(why != NULL && why[0]);
        static const auth_identity_t zero;
        CHECK(memcmp(id, &zero, sizeof(zero)) == 0);
    }
}

static void b64url(const unsigned char *in, size_t n, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63];
        out[o++] = tbl[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = tbl[v >> 18];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = tbl[(v >> 6) & 63];
    }
    out[o] = '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!A) setup();
    if (size > 16384) return 0;
    auth_identity_t id;
    const char *why;

    /* 1. raw credential */
    char *raw = malloc(size + 1);
    CHECK(raw);
    memcpy(raw, data, size);
    raw[size] = '\0';
    why = NULL;
    int rc = auth_check(A, raw, &id, &why);
    check_result(rc, &id, why);
    free(raw);

    /* 2. a correctly signed HS256 token around fuzzed header/claims */
    static const char def_hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    const uint8_t *nl = memchr(data, '\n', size);
    const uint8_t *hdr = nl ? data : (const uint8_t *)def_hdr;
    size_t hlen = nl ? (size_t)(nl - data) : strlen(def_hdr);
    const uint8_t *body = nl ? nl + 1 : data;
    size_t blen = nl ? size - hlen - 1 : size;
    char *tok = malloc((hlen + blen) * 4 / 3 + 64);
    CHECK(tok);
    b64url(hdr, hlen, tok);
    size_t n = strlen(tok);
    tok[n++] = '.';
    b64url(body, blen, tok + n);
    n += strlen(tok + n);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned ml = 0;
    CHECK(HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)tok, n, mac, &ml));
    tok[n++] = '.';
    b64url(mac, ml, tok + n);
    why = NULL;
    rc = auth_check(A, tok, &id, &why);
    check_result(rc, &id, why);
    free(tok);
    return 0;
}
