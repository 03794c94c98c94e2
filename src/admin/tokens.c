/*
 * tokens.c - see tokens.h.
 */
#include "admin/tokens.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"

#define TOKENS_MAX_FILE (1024 * 1024)

typedef struct tok_ent {
    unsigned char digest[32];
    unsigned scopes;
    int line;
} tok_ent_t;

struct admin_tokens {
    tok_ent_t *v;
    size_t n;
};

static int sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 0;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1 || len != 32) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

static int fail(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return -1;
}

static char *trim(char *s, char *end)
{
    while (s < end && (*s == ' ' || *s == '\t' || *s == '\r'))
        s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    *end = '\0';
    return s;
}

/* One non-comment line (NUL-terminated, trimmed). NULL or the rule broken. */
static const char *parse_line(char *s, tok_ent_t *e)
{
    char *colon = strrchr(s, ':');
    if (!colon) return "expected token:scope1,scope2";
    char *tok = trim(s, colon);
    char *sc = colon + 1;
    size_t tl = strlen(tok);
    if (tl < ADMIN_TOKEN_MIN || tl > ADMIN_TOKEN_MAX)
        return "token must be 16 to 1024 characters long";
    for (size_t i = 0; i < tl; i++)
        if ((unsigned char)tok[i] <= ' ' || (unsigned char)tok[i] >= 0x7f)
            return "token must be printable ASCII without spaces";
    e->scopes = 0;
    char *save = NULL;
    for (char *p = strtok_r(sc, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        char *w = trim(p, p + strlen(p));
        if (strcmp(w, "read") == 0)
            e->scopes |= ADMIN_SCOPE_READ;
        else if (strcmp(w, "write") == 0)
            e->scopes |= ADMIN_SCOPE_WRITE | ADMIN_SCOPE_READ;
        else if (w[0])
            return "unknown scope (read or write)";
    }
    if (!e->scopes) return "no scope (read, write)";
    int rc = sha256(tok, tl, e->digest);
    OPENSSL_cleanse(tok, tl);
    return rc < 0 ? "out of memory" : NULL;
}

int admin_tokens_parse(admin_tokens_t **out, const char *name, const char *data, size_t len,
                       char *err, size_t cap)
{
    *out = NULL;
    if (memchr(data, '\0', len)) return fail(err, cap, "admin tokens file %s: NUL byte", name);
    char *copy = malloc(len + 1);
    admin_tokens_t *t = calloc(1, sizeof(*t));
    if (!copy || !t) {
        free(copy);
        free(t);
        return fail(err, cap, "admin tokens file %s: out of memory", name);
    }
    memcpy(copy, data, len);
    copy[len] = '\0';
    size_t vcap = 0;
    int rc = 0, lineno = 0;
    for (char *line = copy, *next; line && !rc; line = next) {
        lineno++;
        char *nl = strchr(line, '\n');
        next = nl ? nl + 1 : NULL;
        char *s = trim(line, nl ? nl : line + strlen(line));
        if (!s[0] || s[0] == '#') continue;
        if (t->n == vcap) {
            size_t nc = vcap ? vcap * 2 : 8;
            tok_ent_t *nv = realloc(t->v, nc * sizeof(*nv));
            if (!nv) {
                rc = fail(err, cap, "admin tokens file %s: out of memory", name);
                break;
            }
            t->v = nv;
            vcap = nc;
        }
        tok_ent_t *e = &t->v[t->n];
        const char *why = parse_line(s, e);
        if (why) {
            rc = fail(err, cap, "admin tokens file %s line %d: %s", name, lineno, why);
            break;
        }
        e->line = lineno;
        for (size_t i = 0; i < t->n; i++)
            if (memcmp(t->v[i].digest, e->digest, 32) == 0) {
                rc = fail(err, cap,
                          "admin tokens file %s line %d: duplicate token (same as line %d)", name,
                          lineno, t->v[i].line);
                break;
            }
        if (!rc) t->n++;
    }
    OPENSSL_cleanse(copy, len);
    free(copy);
    if (rc) {
        admin_tokens_free(t);
        return rc;
    }
    if (t->n == 0)
        log_warn("admin tokens file %s holds no tokens: every admin call is refused", name);
    *out = t;
    return 0;
}

int admin_tokens_load(admin_tokens_t **out, const char *path, char *err, size_t cap)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return fail(err, cap, "admin tokens file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, cap, "admin tokens file %s: not a regular file", path);
    }
    if (st.st_size > TOKENS_MAX_FILE) {
        close(fd);
        return fail(err, cap, "admin tokens file %s: larger than 1 MiB", path);
    }
    if (st.st_mode & 077)
        log_warn("admin tokens file %s is accessible by group or others (mode %04o); chmod 600 it",
                 path, (unsigned)(st.st_mode & 07777));
    char *data = malloc((size_t)st.st_size + 1);
    if (!data) {
        close(fd);
        return fail(err, cap, "admin tokens file %s: out of memory", path);
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, data + n, (size_t)st.st_size + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            free(data);
            return fail(err, cap, "admin tokens file %s: %s", path, strerror(e));
        }
        if (r == 0 || (n += (size_t)r) > (size_t)st.st_size) break;
    }
    close(fd);
    int rc = n > (size_t)st.st_size
                 ? fail(err, cap, "admin tokens file %s: changed while read", path)
                 : admin_tokens_parse(out, path, data, n, err, cap);
    OPENSSL_cleanse(data, n);
    free(data);
    return rc;
}

void admin_tokens_free(admin_tokens_t *t)
{
    if (!t) return;
    if (t->v) OPENSSL_cleanse(t->v, t->n * sizeof(*t->v));
    free(t->v);
    free(t);
}

size_t admin_tokens_count(const admin_tokens_t *t)
{
    return t ? t->n : 0;
}

unsigned admin_tokens_check(const admin_tokens_t *t, const char *token, size_t len)
{
    if (!t || !token || len == 0 || len > ADMIN_TOKEN_MAX) return 0;
    unsigned char dg[32];
    if (sha256(token, len, dg) < 0) return 0;
    unsigned scopes = 0;
    for (size_t i = 0; i < t->n; i++) {
        unsigned eq = (unsigned)(CRYPTO_memcmp(dg, t->v[i].digest, sizeof(dg)) == 0);
        scopes |= t->v[i].scopes & (0u - eq);
    }
    return scopes;
}
