/*
 * test_auth.c - auth/auth: keys file parsing and its errors, one identity per
 * key, JWT HS256/ES256/RS256 acceptance and every rejection rule (signature,
 * exp, nbf, aud, iss, sub, bot_id, alg none, alg confusion, duplicate alg,
 * crit), minting, reload. Keys are generated here with OpenSSL EVP and
 * written as PEM to a mkdtemp directory; tokens are signed with libjwt.
 * Owns nothing outside its temp dir.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "auth/auth.h"
#include "util/clock.h"

#define SECRET "0123456789abcdef0123456789abcdef-test-secret"
#define KEY_A "alice-key-0123456789"
#define KEY_B "bob-key-abcdefghijkl"

/* ---- fixture: keys generated once for the whole group ------------------ */

static char dir[256];
static char ec_pub[512], rsa_pub[512], rsa_small_pub[512], ec384_pub[512], ec_priv_file[512];
static char *ec_priv, *rsa_priv, *ec_pub_pem, *rsa_pub_pem;
static int ec_priv_len, rsa_priv_len, ec_pub_pem_len, rsa_pub_pem_len;

static char *bio_string(BIO *b, int *len)
{
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *s = malloc((size_t)n + 1);
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
    *len = (int)n;
    return s;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

static EVP_PKEY *gen(const char *type, const char *curve, size_t bits)
{
    EVP_PKEY *k = curve ? EVP_PKEY_Q_keygen(NULL, NULL, type, curve)
                        : EVP_PKEY_Q_keygen(NULL, NULL, type, bits);
    assert_non_null(k);
    return k;
}

/* Writes the public PEM to path; returns the private PEM (and the public
 * one in *pub if pub != NULL). */
static char *save(EVP_PKEY *k, const char *path, int *priv_len, char **pub, int *pub_len)
{
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(b, k), 1);
    int n;
    char *pem = bio_string(b, &n);
    BIO_free(b);
    write_file(path, pem, 0644);
    if (pub) {
        *pub = pem;
        *pub_len = n;
    } else {
        free(pem);
    }
    b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL), 1);
    char *priv = bio_string(b, priv_len);
    BIO_free(b);
    return priv;
}

static int group_setup(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/hotplex-auth-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) return -1;
    snprintf(ec_pub, sizeof(ec_pub), "%s/ec.pub.pem", dir);
    snprintf(rsa_pub, sizeof(rsa_pub), "%s/rsa.pub.pem", dir);
    snprintf(rsa_small_pub, sizeof(rsa_small_pub), "%s/rsa1024.pub.pem", dir);
    snprintf(ec384_pub, sizeof(ec384_pub), "%s/ec384.pub.pem", dir);
    snprintf(ec_priv_file, sizeof(ec_priv_file), "%s/ec.priv.pem", dir);

    EVP_PKEY *k = gen("EC", "P-256", 0);
    ec_priv = save(k, ec_pub, &ec_priv_len, &ec_pub_pem, &ec_pub_pem_len);
    write_file(ec_priv_file, ec_priv, 0600);
    EVP_PKEY_free(k);
    k = gen("RSA", NULL, 2048);
    rsa_priv = save(k, rsa_pub, &rsa_priv_len, &rsa_pub_pem, &rsa_pub_pem_len);
    EVP_PKEY_free(k);
    int n;
    k = gen("RSA", NULL, 1024);
    free(save(k, rsa_small_pub, &n, NULL, NULL));
    EVP_PKEY_free(k);
    k = gen("EC", "P-384", 0);
    free(save(k, ec384_pub, &n, NULL, NULL));
    EVP_PKEY_free(k);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) return -1;
    free(ec_priv);
    free(rsa_priv);
    free(ec_pub_pem);
    free(rsa_pub_pem);
    return 0;
}

static char *path_in_dir(const char *name)
{
    static char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return p;
}

/* ---- token helpers ----------------------------------------------------- */

static long now_s(void)
{
    return (long)(clock_unix_ms() / 1000);
}

/* libjwt-signed token with the given claims JSON; free() the result. */
static char *sign(jwt_alg_t alg, const void *key, int klen, const char *claims)
{
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    assert_int_equal(jwt_add_grants_json(j, claims), 0);
    assert_int_equal(jwt_set_alg(j, alg, key, klen), 0);
    char *t = jwt_encode_str(j);
    assert_non_null(t);
    jwt_free(j);
    return t;
}

static char *hs(const char *claims)
{
    return sign(JWT_ALG_HS256, SECRET, (int)strlen(SECRET), claims);
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

/* Hand-made token: header and payload JSON, signature HS256 over them with
 * key (NULL: sig used verbatim). */
static void handmade(char *out, const char *header, const char *payload, const void *key,
                     size_t klen, const char *sig)
{
    char h[1024], p[2048];
    b64url((const unsigned char *)header, strlen(header), h);
    b64url((const unsigned char *)payload, strlen(payload), p);
    sprintf(out, "%s.%s.", h, p);
    if (key) {
        unsigned char mac[32];
        unsigned ml = 0;
        HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)out, strlen(out) - 1, mac, &ml);
        b64url(mac, ml, out + strlen(out));
    } else {
        strcat(out, sig);
    }
}

static auth_t *mk(const auth_opts_t *o)
{
    auth_t *a = NULL;
    char err[512];
    int rc = auth_new(&a, o, err, sizeof(err));
    if (rc != 0) fail_msg("auth_new: %s", err);
    return a;
}

static void expect_ok(const auth_t *a, const char *cred, const char *user)
{
    auth_identity_t id;
    const char *why = NULL;
    int rc = auth_check(a, cred, &id, &why);
    if (rc != 0) fail_msg("expected ok, got %d (%s)", rc, why ? why : "?");
    assert_string_equal(id.user, user);
}

static void expect_deny(const auth_t *a, const char *cred, const char *reason)
{
    auth_identity_t id;
    const char *why = NULL;
    memset(&id, 'x', sizeof(id));
    int rc = auth_check(a, cred, &id, &why);
    assert_int_equal(rc, -EACCES);
    assert_non_null(why);
    if (reason && !strstr(why, reason)) fail_msg("reason '%s', expected '%s'", why, reason);
    assert_string_equal(id.user, ""); /* never a half-filled identity */
}

/* ---- keys file --------------------------------------------------------- */

static void test_keys_file_parsing(void **state)
{
    (void)state;
    char *p = path_in_dir("keys1");
    write_file(p,
               "# hotplex keys\n"
               "\n"
               "   \n"
               "alice:" KEY_A "\n"
               "  # indented comment\n"
               "bob : " KEY_B "  \r\n"
               "alice:alice-second-key-for-rotation\n"
               "svc.bot-1@corp:key.with.three.dots!\n"
               "carol:last-line-without-newline",
               0600);
    auth_t *a = mk(&(auth_opts_t){.keys_file = p});
    assert_false(auth_dev_mode(a));
    assert_int_equal(auth_key_count(a), 5);
    expect_ok(a, KEY_A, "alice");
    expect_ok(a, KEY_B, "bob");
    expect_ok(a, "alice-second-key-for-rotation", "alice");
    expect_ok(a, "key.with.three.dots!", "svc.bot-1@corp");
    expect_ok(a, "last-line-without-newline", "carol");
    auth_identity_t id;
    assert_int_equal(auth_check(a, KEY_A, &id, NULL), 0);
    assert_string_equal(id.bot_id, "");
    assert_int_equal(id.expires_ms, 0);
    auth_free(a);
}

static void test_each_key_own_user_wrong_keys_rejected(void **state)
{
    (void)state;
    char *p = path_in_dir("keys2");
    write_file(p, "u1:key-number-one-0000\nu2:key-number-two-0000\nu3:key-number-three-00\n", 0600);
    auth_t *a = mk(&(auth_opts_t){.keys_file = p});
    expect_ok(a, "key-number-one-0000", "u1");
    expect_ok(a, "key-number-two-0000", "u2");
    expect_ok(a, "key-number-three-00", "u3");
    expect_deny(a, "key-number-four-000", "invalid API key");
    expect_deny(a, "key-number-one-000", "invalid API key");   /* prefix */
    expect_deny(a, "key-number-one-00000", "invalid API key"); /* extension */
    expect_deny(a, "KEY-NUMBER-ONE-0000", "invalid API key");
    expect_deny(a, " key-number-one-0000", "invalid API key");
    expect_deny(a, "u1:key-number-one-0000", "invalid API key");
    expect_deny(a, "", "empty");
    /* a JWT-shaped string with no JWT configured goes to the key table */
    expect_deny(a, "a.b.c", "invalid API key");
    /* too long: refused before hashing */
    char *big = malloc(AUTH_MAX_CREDENTIAL + 2);
    memset(big, 'k', AUTH_MAX_CREDENTIAL + 1);
    big[AUTH_MAX_CREDENTIAL + 1] = '\0';
    expect_deny(a, big, "too long");
    free(big);
    /* NULL arguments */
    auth_identity_t id;
    assert_int_equal(auth_check(a, NULL, &id, NULL), -EINVAL);
    assert_int_equal(auth_check(NULL, "x", &id, NULL), -EINVAL);
    assert_int_equal(auth_check(a, "x", NULL, NULL), -EINVAL);
    auth_free(a);
}

static void test_keys_file_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want1, *want2;
    } cases[] = {
        {"# c\nalice:" KEY_A "\nno colon here at all\n", "line 3", "expected user:key"},
        {"\nalice:short-key\n", "line 2", "shorter than 16"},
        {":" KEY_A "\n", "line 1", "empty user"},
        {"al ice:" KEY_A "\n", "line 1", "user may only contain"},
        {"al|ice:" KEY_A "\n", "line 1", "user may only contain"},
        {"alice:" KEY_A "\n# x\nbob:" KEY_A "\n", "line 3", "duplicate key (same as line 1)"},
        {"alice:has space inside key\n", "line 1", "without spaces"},
        {"alice:looks.like.ajwt-1234\n", "line 1", "two '.'"},
        {"alice:\n", "line 1", "shorter than 16"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *p = path_in_dir("bad_keys");
        write_file(p, cases[i].text, 0600);
        auth_t *a = (auth_t *)0x1;
        err[0] = '\0';
        int rc = auth_new(&a, &(auth_opts_t){.keys_file = p}, err, sizeof(err));
        assert_int_equal(rc, -EINVAL);
        assert_null(a);
        if (!strstr(err, cases[i].want1) || !strstr(err, cases[i].want2) || !strstr(err, p))
            fail_msg("case %zu: error '%s' lacks '%s'/'%s'/path", i, err, cases[i].want1,
                     cases[i].want2);
        /* the key bytes never appear in the message */
        assert_null(strstr(err, KEY_A));
    }
    /* a line over 4096 bytes */
    char *p = path_in_dir("long_keys");
    char *text = malloc(6000);
    strcpy(text, "alice:" KEY_A "\nbob:");
    size_t n = strlen(text);
    memset(text + n, 'k', 5000);
    strcpy(text + n + 5000, "\n");
    write_file(p, text, 0600);
    free(text);
    auth_t *a = NULL;
    assert_int_equal(auth_new(&a, &(auth_opts_t){.keys_file = p}, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "line 2"));
    /* missing file */
    assert_int_equal(
        auth_new(&a, &(auth_opts_t){.keys_file = "/nonexistent/keys"}, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/keys"));
    /* a directory */
    assert_int_equal(auth_new(&a, &(auth_opts_t){.keys_file = dir}, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not a regular file"));
}

static void test_keys_file_world_readable_loads_with_warning(void **state)
{
    (void)state;
    char *p = path_in_dir("keys_open");
    write_file(p, "alice:" KEY_A "\n", 0644);
    auth_t *a = mk(&(auth_opts_t){.keys_file = p});
    expect_ok(a, KEY_A, "alice");
    auth_free(a);
}

static void test_dev_mode(void **state)
{
    (void)state;
    auth_t *a = mk(NULL);
    assert_true(auth_dev_mode(a));
    expect_deny(a, "anything-at-all-0000", "no API keys or JWT configured");
    auth_free(a);
    a = mk(&(auth_opts_t){.keys_file = "", .jwt_secret = ""});
    assert_true(auth_dev_mode(a));
    auth_free(a);
    /* a configured but empty keys file is not dev mode */
    char *p = path_in_dir("keys_empty");
    write_file(p, "# nobody yet\n", 0600);
    a = mk(&(auth_opts_t){.keys_file = p});
    assert_false(auth_dev_mode(a));
    assert_int_equal(auth_key_count(a), 0);
    expect_deny(a, KEY_A, "invalid API key");
    auth_free(a);
    a = mk(&(auth_opts_t){.jwt_secret = SECRET});
    assert_false(auth_dev_mode(a));
    auth_free(a);
    a = mk(&(auth_opts_t){.jwt_public_key_file = ec_pub});
    assert_false(auth_dev_mode(a));
    auth_free(a);
}

static void test_option_errors(void **state)
{
    (void)state;
    auth_t *a = NULL;
    char err[512];
    assert_int_equal(auth_new(&a, &(auth_opts_t){.jwt_secret = "short"}, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "too short"));
    assert_null(strstr(err, "short\"")); /* the secret is not echoed */
    assert_int_equal(
        auth_new(&a, &(auth_opts_t){.jwt_secret = SECRET, .clock_skew_s = -1}, err, sizeof(err)),
        -EINVAL);
    assert_int_equal(
        auth_new(&a, &(auth_opts_t){.jwt_public_key_file = "/nonexistent.pem"}, err, sizeof(err)),
        -ENOENT);
    assert_non_null(strstr(err, "/nonexistent.pem"));
    assert_int_equal(
        auth_new(&a, &(auth_opts_t){.jwt_public_key_file = ec_priv_file}, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "PUBLIC KEY"));
    assert_int_equal(
        auth_new(&a, &(auth_opts_t){.jwt_public_key_file = rsa_small_pub}, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "1024 bits"));
    assert_int_equal(
        auth_new(&a, &(auth_opts_t){.jwt_public_key_file = ec384_pub}, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "P-256"));
    char *p = path_in_dir("garbage.pem");
    write_file(p, "not a pem\n", 0644);
    assert_int_equal(auth_new(&a, &(auth_opts_t){.jwt_public_key_file = p}, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, p));
    assert_null(a);
}

/* ---- JWT HS256 --------------------------------------------------------- */

static void test_hs256_valid(void **state)
{
    (void)state;
    auth_t *a = mk(&(auth_opts_t){.jwt_secret = SECRET});
    char claims[256];
    long exp = now_s() + 600;
    snprintf(claims, sizeof(claims), "{\"sub\":\"carol\",\"exp\":%ld,\"bot_id\":\"b7\"}", exp);
    char *t = hs(claims);
    auth_identity_t id;
    const char *why = NULL;
    assert_int_equal(auth_check(a, t, &id, &why), 0);
    assert_string_equal(id.user, "carol");
    assert_string_equal(id.bot_id, "b7");
    assert_int_equal(id.expires_ms, (int64_t)exp * 1000);
    free(t);
    /* no exp: accepted, never expires; sub may be any printable text */
    t = hs("{\"sub\":\"auth0|12345\"}");
    assert_int_equal(auth_check(a, t, &id, &why), 0);
    assert_string_equal(id.user, "auth0|12345");
    assert_int_equal(id.expires_ms, 0);
    free(t);
    auth_free(a);
}

static void test_hs256_bad_signature(void **state)
{
    (void)state;
    auth_t *a = mk(&(auth_opts_t){.jwt_secret = SECRET});
    char *t = hs("{\"sub\":\"carol\"}");
    size_t n = strlen(t);
    t[n - 2] = t[n - 2] == 'A' ? 'B' : 'A';
    expect_deny(a, t, "bad signature");
    free(t);
    const char *other = "another-secret-that-is-long-enough-000";
    t = sign(JWT_ALG_HS256, other, (int)strlen(other), "{\"sub\":\"carol\"}");
    expect_deny(a, t, "bad signature");
    free(t);
    /* payload swapped under a valid signature */
    char *good = hs("{\"sub\":\"carol\"}");
    char *evil = hs("{\"sub\":\"admin\"}");
    char mix[1024];
    char *g1 = strchr(good, '.'), *g2 = strrchr(good, '.');
    char *e1 = strchr(evil, '.'), *e2 = strrchr(evil, '.');
    snprintf(mix, sizeof(mix), "%.*s%.*s%s", (int)(g1 - good), good, (int)(e2 - e1), e1, g2);
    expect_deny(a, mix, "bad signature");
    free(good);
    free(evil);
    /* truncated / empty signature */
    t = hs("{\"sub\":\"carol\"}");
    *(strrchr(t, '.') + 1) = '\0';
    expect_deny(a, t, "bad signature");
    free(t);
    expect_deny(a, "..", "malformed");
    expect_deny(a, "a.b.c", "malformed");
    auth_free(a);
}

static void test_expired_and_not_yet_valid(void **state)
{
    (void)state;
    auth_t *a = mk(&(auth_opts_t){.jwt_secret = SECRET});
    auth_t *lax = mk(&(auth_opts_t){.jwt_secret = SECRET, .clock_skew_s = 30});
    char c[256];
    snprintf(c, sizeof(c), "{\"sub\":\"u\",\"exp\":%ld}", now_s() - 3600);
    char *t = hs(c);
    expect_deny(a, t, "expired");
    expect_deny(lax, t, "expired");
    free(t);
    snprintf(c, sizeof(c), "{\"sub\":\"u\",\"exp\":%ld}", now_s() - 10);
    t = hs(c);
    expect_deny(a, t, "expired");
    expect_ok(lax, t, "u"); /* within leeway */
    free(t);
    snprintf(c, sizeof(c), "{\"sub\":\"u\",\"nbf\":%ld}", now_s() + 3600);
    t = hs(c);
    expect_deny(a, t, "not yet valid");
    expect_deny(lax, t, "not yet valid");
    free(t);
    snprintf(c, sizeof(c), "{\"sub\":\"u\",\"nbf\":%ld}", now_s() + 10);
    t = hs(c);
    expect_deny(a, t, "not yet valid");
    expect_ok(lax, t, "u");
    free(t);
    /* exact boundaries with an explicit clock: exp is exclusive */
    t = hs("{\"sub\":\"u\",\"exp\":2000000000,\"nbf\":1000000000}");
    auth_identity_t id;
    assert_int_equal(auth_check_at(a, t, 1999999999999LL, &id, NULL), 0);
    assert_int_equal(auth_check_at(a, t, 2000000000000LL, &id, NULL), -EACCES);
    assert_int_equal(auth_check_at(a, t, 1000000000000LL, &id, NULL), 0);
    assert_int_equal(auth_check_at(a, t, 999999999999LL, &id, NULL), -EACCES);
    free(t);
    /* malformed exp */
    t = hs("{\"sub\":\"u\",\"exp\":\"tomorrow\"}");
    expect_deny(a, t, "malformed exp");
    free(t);
    auth_free(a);
    auth_free(lax);
}

static void test_audience_and_issuer(void **state)
{
    (void)state;
    auth_t *a = mk(&(auth_opts_t){
        .jwt_secret = SECRET, .jwt_audience = "hotplex", .jwt_issuer = "https://idp.example"});
    char *t = hs("{\"sub\":\"u\",\"aud\":\"hotplex\",\"iss\":\"https://idp.example\"}");
    expect_ok(a, t, "u");
    free(t);
    t = hs("{\"sub\":\"u\",\"aud\":[\"other\",\"hotplex\"],\"iss\":\"https://idp.example\"}");
    expect_ok(a, t, "u");
    free(t);
    t = hs("{\"sub\":\"u\",\"aud\":\"other\",\"iss\":\"https://idp.example\"}");
    expect_deny(a, t, "wrong audience");
    free(t);
    t = hs("{\"sub\":\"u\",\"aud\":[\"a\",\"b\"],\"iss\":\"https://idp.example\"}");
    expect_deny(a, t, "wrong audience");
    free(t);
    t = hs("{\"sub\":\"u\",\"iss\":\"https://idp.example\"}");
    expect_deny(a, t, "wrong audience");
    free(t);
    t = hs("{\"sub\":\"u\",\"aud\":\"hotplex\",\"iss\":\"https://evil.example\"}");
    expect_deny(a, t, "wrong issuer");
    free(t);
    t = hs("{\"sub\":\"u\",\"aud\":\"hotplex\"}");
    expect_deny(a, t, "wrong issuer");
    free(t);
    auth_free(a);
}

static void test_missing_or_bad_sub(void **state)
{
    (void)state;
    auth_t *a = mk(&(auth_opts_t){.jwt_secret = SECRET});
    char *t = hs("{\"name\":\"u\"}");
    expect_deny(a, t, "missing sub");
    free(t);
    t = hs("{\"sub\":\"\"}");
    expect_deny(a, t, "missing sub");
    free(t);
    t = hs("{\"sub\":42}");
    expect_deny(a, t, "invalid sub");
    free(t);
    t = hs("{\"sub\":\"line\\nbreak\"}");
    expect_deny(a, t, "invalid sub");
    free(t);
    char c[512] = "{\"sub\":\"";
    memset(c + 8, 'x', 200);
    strcpy(c + 208, "\"}");
    t = hs(c);
    expect_deny(a, t, "invalid sub");
    free(t);
    auth_free(a);
}

static void test_alg_none_rejected(void **state)
{
    (void)state;
    auth_t *a = mk(&(auth_opts_t){.jwt_secret = SECRET, .jwt_public_key_file = ec_pub});
    char t[4096];
    handmade(t, "{\"alg\":\"none\",\"typ\":\"JWT\"}", "{\"sub\":\"admin\"}", NULL, 0, "");
    expect_deny(a, t, "algorithm not allowed");
    handmade(t, "{\"alg\":\"none\"}", "{\"sub\":\"admin\"}", NULL, 0, "c2lnbmF0dXJl");
    expect_deny(a, t, "algorithm not allowed");
    handmade(t, "{\"alg\":\"None\"}", "{\"sub\":\"admin\"}", NULL, 0, "");
    expect_deny(a, t, "algorithm not allowed");
    handmade(t, "{\"alg\":\"hs256\"}", "{\"sub\":\"admin\"}", SECRET, strlen(SECRET), NULL);
    expect_deny(a, t, "algorithm not allowed");
    handmade(t, "{\"typ\":\"JWT\"}", "{\"sub\":\"admin\"}", SECRET, strlen(SECRET), NULL);
    expect_deny(a, t, "malformed");
    /* HS512 and ES384 are not configured algorithms even with a valid key */
    const char *s = SECRET;
    char *tok = sign(JWT_ALG_HS512, s, (int)strlen(s), "{\"sub\":\"admin\"}");
    expect_deny(a, tok, "algorithm not allowed");
    free(tok);
    /* a hand-made HS256 token passes (the helper is right) */
    handmade(t, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", "{\"sub\":\"ok\"}", SECRET, strlen(SECRET),
             NULL);
    expect_ok(a, t, "ok");
    auth_free(a);
}

static void test_alg_confusion_rejected(void **state)
{
    (void)state;
    /* HS256 "signed" with the public key bytes as the secret: libjwt itself
     * accepts this when handed the PEM, so auth must refuse it first. */
    char *t = sign(JWT_ALG_HS256, ec_pub_pem, ec_pub_pem_len, "{\"sub\":\"admin\"}");
    char *tr = sign(JWT_ALG_HS256, rsa_pub_pem, rsa_pub_pem_len, "{\"sub\":\"admin\"}");
    auth_t *a = mk(&(auth_opts_t){.jwt_public_key_file = ec_pub});
    expect_deny(a, t, "algorithm not allowed");
    auth_free(a);
    a = mk(&(auth_opts_t){.jwt_public_key_file = rsa_pub});
    expect_deny(a, tr, "algorithm not allowed");
    auth_free(a);
    /* with a secret configured too, HS256 is checked against the secret */
    a = mk(&(auth_opts_t){.jwt_secret = SECRET, .jwt_public_key_file = ec_pub});
    expect_deny(a, t, "bad signature");
    auth_free(a);
    free(t);
    free(tr);

    /* two "alg" members: ours would see ES256, jansson the last one */
    a = mk(&(auth_opts_t){.jwt_public_key_file = ec_pub});
    char h[8192];
    handmade(h, "{\"alg\":\"ES256\",\"alg\":\"HS256\"}", "{\"sub\":\"admin\"}", ec_pub_pem,
             (size_t)ec_pub_pem_len, NULL);
    expect_deny(a, h, "malformed");
    /* crit header */
    handmade(h, "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", "{\"sub\":\"admin\"}", SECRET,
             strlen(SECRET), NULL);
    auth_free(a);
    a = mk(&(auth_opts_t){.jwt_secret = SECRET});
    expect_deny(a, h, "critical");
    auth_free(a);
}

/* ---- ES256 / RS256 ----------------------------------------------------- */

static void test_es256(void **state)
{
    (void)state;
    auth_t *a = mk(&(auth_opts_t){.jwt_public_key_file = ec_pub, .jwt_audience = "hotplex"});
    char c[256];
    snprintf(c, sizeof(c), "{\"sub\":\"erin\",\"aud\":\"hotplex\",\"exp\":%ld}", now_s() + 60);
    char *t = sign(JWT_ALG_ES256, ec_priv, ec_priv_len, c);
    expect_ok(a, t, "erin");
    /* tampered payload */
    char *p = strchr(t, '.') + 1;
    p[3] = p[3] == 'A' ? 'B' : 'A';
    expect_deny(a, t, NULL);
    free(t);
    /* RS256 token against an EC key */
    t = sign(JWT_ALG_RS256, rsa_priv, rsa_priv_len, c);
    expect_deny(a, t, "algorithm not allowed");
    free(t);
    /* HS256 with no secret configured */
    t = hs(c);
    expect_deny(a, t, "algorithm not allowed");
    free(t);
    /* claims still enforced */
    t = sign(JWT_ALG_ES256, ec_priv, ec_priv_len, "{\"sub\":\"erin\",\"aud\":\"x\"}");
    expect_deny(a, t, "wrong audience");
    free(t);
    auth_free(a);
}

static void test_rs256(void **state)
{
    (void)state;
    auth_t *a = mk(&(auth_opts_t){.jwt_public_key_file = rsa_pub, .jwt_secret = SECRET});
    char *t = sign(JWT_ALG_RS256, rsa_priv, rsa_priv_len, "{\"sub\":\"rick\"}");
    expect_ok(a, t, "rick");
    size_t n = strlen(t);
    t[n - 3] = t[n - 3] == 'A' ? 'B' : 'A';
    expect_deny(a, t, "bad signature");
    free(t);
    t = sign(JWT_ALG_ES256, ec_priv, ec_priv_len, "{\"sub\":\"rick\"}");
    expect_deny(a, t, "algorithm not allowed");
    free(t);
    /* the secret still works alongside */
    t = hs("{\"sub\":\"hank\"}");
    expect_ok(a, t, "hank");
    free(t);
    auth_free(a);
}

/* ---- bot_id, mint, reload ---------------------------------------------- */

static void test_bot_id_required(void **state)
{
    (void)state;
    char *p = path_in_dir("keys_bot");
    write_file(p, "alice:" KEY_A "\n", 0600);
    auth_t *a = mk(&(auth_opts_t){.jwt_secret = SECRET, .bot_id = "bot1", .keys_file = p});
    char *t = hs("{\"sub\":\"u\"}");
    expect_deny(a, t, "wrong bot_id");
    free(t);
    t = hs("{\"sub\":\"u\",\"bot_id\":\"bot2\"}");
    expect_deny(a, t, "wrong bot_id");
    free(t);
    t = hs("{\"sub\":\"u\",\"bot_id\":7}");
    expect_deny(a, t, "bot_id");
    free(t);
    t = hs("{\"sub\":\"u\",\"bot_id\":\"bot1\"}");
    auth_identity_t id;
    assert_int_equal(auth_check(a, t, &id, NULL), 0);
    assert_string_equal(id.user, "u");
    assert_string_equal(id.bot_id, "bot1");
    free(t);
    /* API keys carry the configured bot */
    assert_int_equal(auth_check(a, KEY_A, &id, NULL), 0);
    assert_string_equal(id.user, "alice");
    assert_string_equal(id.bot_id, "bot1");
    auth_free(a);
}

static void test_mint_round_trip(void **state)
{
    (void)state;
    auth_t *a = mk(&(auth_opts_t){.jwt_secret = SECRET,
                                  .jwt_audience = "hotplex",
                                  .jwt_issuer = "hotplex-test",
                                  .bot_id = "bot9"});
    char tok[2048];
    int64_t before = clock_unix_ms();
    assert_int_equal(auth_mint(a, "mia", NULL, 3600, tok, sizeof(tok)), 0);
    auth_identity_t id;
    const char *why = NULL;
    assert_int_equal(auth_check(a, tok, &id, &why), 0);
    assert_string_equal(id.user, "mia");
    assert_string_equal(id.bot_id, "bot9");
    assert_true(id.expires_ms >= before / 1000 * 1000 + 3600000);
    assert_true(id.expires_ms <= clock_unix_ms() + 3600000);
    /* minted for another bot: refused here (bot_id is required to match) */
    assert_int_equal(auth_mint(a, "mia", "other", 60, tok, sizeof(tok)), 0);
    expect_deny(a, tok, "wrong bot_id");
    /* ttl 0: no exp */
    assert_int_equal(auth_mint(a, "mia", NULL, 0, tok, sizeof(tok)), 0);
    assert_int_equal(auth_check(a, tok, &id, NULL), 0);
    assert_int_equal(id.expires_ms, 0);
    /* too small, bad arguments */
    char small[16];
    assert_int_equal(auth_mint(a, "mia", NULL, 60, small, sizeof(small)), -ENOSPC);
    assert_string_equal(small, "");
    assert_int_equal(auth_mint(a, "", NULL, 60, tok, sizeof(tok)), -EINVAL);
    assert_int_equal(auth_mint(a, "a\nb", NULL, 60, tok, sizeof(tok)), -EINVAL);
    assert_int_equal(auth_mint(a, "mia", NULL, -1, tok, sizeof(tok)), -EINVAL);
    auth_free(a);
    /* no secret: cannot mint */
    a = mk(&(auth_opts_t){.jwt_public_key_file = ec_pub});
    assert_int_equal(auth_mint(a, "mia", NULL, 60, tok, sizeof(tok)), -EINVAL);
    auth_free(a);
    /* a token minted by one gateway is refused by one with another secret */
    a = mk(&(auth_opts_t){.jwt_secret = SECRET});
    assert_int_equal(auth_mint(a, "mia", NULL, 60, tok, sizeof(tok)), 0);
    auth_free(a);
    a = mk(&(auth_opts_t){.jwt_secret = "ffffffffffffffffffffffffffffffffffff"});
    expect_deny(a, tok, "bad signature");
    auth_free(a);
}

static void test_reload(void **state)
{
    (void)state;
    char *p = path_in_dir("keys_reload");
    write_file(p, "alice:" KEY_A "\n", 0600);
    auth_t *a = mk(&(auth_opts_t){.keys_file = p});
    expect_ok(a, KEY_A, "alice");
    expect_deny(a, KEY_B, "invalid API key");
    write_file(p, "bob:" KEY_B "\n", 0600);
    char err[512];
    assert_int_equal(auth_reload_keys(a, err, sizeof(err)), 0);
    expect_deny(a, KEY_A, "invalid API key");
    expect_ok(a, KEY_B, "bob");
    /* a broken file keeps the old keys */
    write_file(p, "bob:" KEY_B "\ncarol:tiny\n", 0600);
    assert_int_equal(auth_reload_keys(a, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "line 2"));
    expect_ok(a, KEY_B, "bob");
    unlink(p);
    assert_int_equal(auth_reload_keys(a, err, sizeof(err)), -ENOENT);
    expect_ok(a, KEY_B, "bob");
    auth_free(a);
    /* no keys file: reload is a no-op */
    a = mk(&(auth_opts_t){.jwt_secret = SECRET});
    assert_int_equal(auth_reload_keys(a, err, sizeof(err)), 0);
    auth_free(a);
}

/* Keys and JWTs together: routing by the two-dot rule. */
static void test_keys_and_jwt_together(void **state)
{
    (void)state;
    char *p = path_in_dir("keys_mixed");
    write_file(p, "alice:" KEY_A "\n", 0600);
    auth_t *a = mk(&(auth_opts_t){.keys_file = p, .jwt_secret = SECRET});
    expect_ok(a, KEY_A, "alice");
    char *t = hs("{\"sub\":\"jwt-user\"}");
    expect_ok(a, t, "jwt-user");
    free(t);
    expect_deny(a, "x.y.z", "malformed");
    expect_deny(a, KEY_B, "invalid API key");
    auth_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_file_parsing),
        cmocka_unit_test(test_each_key_own_user_wrong_keys_rejected),
        cmocka_unit_test(test_keys_file_errors),
        cmocka_unit_test(test_keys_file_world_readable_loads_with_warning),
        cmocka_unit_test(test_dev_mode),
        cmocka_unit_test(test_option_errors),
        cmocka_unit_test(test_hs256_valid),
        cmocka_unit_test(test_hs256_bad_signature),
        cmocka_unit_test(test_expired_and_not_yet_valid),
        cmocka_unit_test(test_audience_and_issuer),
        cmocka_unit_test(test_missing_or_bad_sub),
        cmocka_unit_test(test_alg_none_rejected),
        cmocka_unit_test(test_alg_confusion_rejected),
        cmocka_unit_test(test_es256),
        cmocka_unit_test(test_rs256),
        cmocka_unit_test(test_bot_id_required),
        cmocka_unit_test(test_mint_round_trip),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_keys_and_jwt_together),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
