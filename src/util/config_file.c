/*
 * config_file.c - the file and environment layers of config.h: a YAML file
 * read with libyaml's event parser, HOTPLEX_<SECTION>_<KEY> variables, and
 * the JWT secret (HOTPLEX_JWT_SECRET or auth.jwt_secret_file).
 *
 * The file has a fixed shape, checked event by event: a mapping of sections,
 * each a mapping of keys, each a scalar or (list keys only) a sequence of
 * scalars. Nothing deeper is ever parsed: the first node out of shape is an
 * error, so nesting is bounded by construction and aliases (the only way to
 * make a small file expand) are refused outright. Input is bounded by
 * HP_CONFIG_MAX_FILE_SIZE before libyaml sees it.
 *
 * Owns: nothing after it returns; list strings go into the config's own
 * storage (config__strndup). Loads work on a copy and commit only on success.
 * Must never: log, echo the value of an unknown key (it may be a misplaced
 * secret), or put the JWT secret's bytes in an error message.
 */
#include "util/config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#define MAX_SECTIONS 16
#define MAX_NAME 96 /* longest "section.key" looked up; longer names are unknown */

typedef struct loader {
    hp_config_t *c;
    const char *name; /* file name for messages */
    const char *data; /* the input, for positions of reader errors */
    size_t len;
    char *err;
    size_t cap;
    yaml_parser_t p;
    size_t *key_line; /* per key: line first set (0: not yet) */
    const char *sections[MAX_SECTIONS];
    size_t section_len[MAX_SECTIONS];
    size_t section_line[MAX_SECTIONS];
    int nsections;
} loader_t;

/* "name:line:col: " + message. Always returns -1. */
__attribute__((format(printf, 3, 4))) static int fail_at(loader_t *L, yaml_mark_t m,
                                                         const char *fmt, ...)
{
    int n = snprintf(L->err, L->cap, "%s:%zu:%zu: ", L->name, m.line + 1, m.column + 1);
    if (n >= 0 && (size_t)n < L->cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->err + n, L->cap - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int syntax_error(loader_t *L, const yaml_parser_t *p)
{
    yaml_mark_t m = p->problem_mark;
    if (p->error == YAML_READER_ERROR) {
        /* the reader reports a byte offset; turn it into line and column */
        size_t off = p->problem_offset < L->len ? p->problem_offset : L->len;
        memset(&m, 0, sizeof(m));
        for (size_t i = 0; i < off; i++) {
            if (L->data[i] == '\n')
                m.line++, m.column = 0;
            else
                m.column++;
        }
    }
    const char *problem = p->problem ? p->problem : "invalid YAML";
    if (p->context)
        return fail_at(L, m, "syntax error: %s %s (line %zu)", problem, p->context,
                       p->context_mark.line + 1);
    return fail_at(L, m, "syntax error: %s", problem);
}

/* Next event; aliases refused here so no caller sees one. */
static int next(loader_t *L, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&L->p, ev)) return syntax_error(L, &L->p);
    if (ev->type == YAML_ALIAS_EVENT) {
        fail_at(L, ev->start_mark, "aliases are not supported");
        yaml_event_delete(ev);
        return -1;
    }
    return 0;
}

static const char *shape(yaml_event_type_t t)
{
    switch (t) {
    case YAML_SEQUENCE_START_EVENT:
        return "a sequence";
    case YAML_MAPPING_START_EVENT:
        return "a mapping";
    case YAML_SCALAR_EVENT:
        return "a scalar";
    default:
        return "an unexpected node";
    }
}

/* YAML's null: an empty plain scalar, ~ or null. */
static bool is_null(const yaml_event_t *ev)
{
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *v = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    return n == 0 || (n == 1 && v[0] == '~') ||
           (n == 4 && (!memcmp(v, "null", 4) || !memcmp(v, "Null", 4) || !memcmp(v, "NULL", 4)));
}

static int key_index(const char *name)
{
    for (size_t i = 0; i < config_key_count(); i++)
        if (strcmp(config_key_name(i), name) == 0) return (int)i;
    return -1;
}

/* Edit distance for "did you mean", bounded to short names. */
static size_t distance(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    if (na > 63 || nb > 63) return SIZE_MAX;
    size_t row[64];
    for (size_t j = 0; j <= nb; j++)
        row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

static int unknown_key(loader_t *L, yaml_mark_t m, const char *full)
{
    if (strcmp(full, "auth.jwt_secret") == 0)
        return fail_at(L, m,
                       "%s: unknown setting (the secret is never a config key: set "
                       "HOTPLEX_JWT_SECRET or auth.jwt_secret_file)",
                       full);
    const char *best = NULL;
    size_t bestd = 4; /* suggest only close names */
    size_t slen = (size_t)(strchr(full, '.') - full) + 1;
    for (size_t i = 0; i < config_key_count(); i++) {
        const char *k = config_key_name(i);
        if (strncmp(k, full, slen) != 0) continue;
        size_t d = distance(k + slen, full + slen);
        /* a prefix of a real name ("max_frame") is as good as a typo */
        if (d >= bestd && full[slen] && strncmp(k + slen, full + slen, strlen(full + slen)) == 0)
            d = bestd - 1;
        if (d < bestd) bestd = d, best = k;
    }
    if (best) return fail_at(L, m, "%s: unknown setting (did you mean %s?)", full, best);
    return fail_at(L, m, "%s: unknown setting (see docs/configuration.md)", full);
}

static void collect_sections(loader_t *L)
{
    for (size_t i = 0; i < config_key_count(); i++) {
        const char *k = config_key_name(i);
        size_t n = (size_t)(strchr(k, '.') - k);
        int j;
        for (j = 0; j < L->nsections; j++)
            if (L->section_len[j] == n && !memcmp(L->sections[j], k, n)) break;
        if (j == L->nsections && L->nsections < MAX_SECTIONS) {
            L->sections[L->nsections] = k;
            L->section_len[L->nsections++] = n;
        }
    }
}

static int unknown_section(loader_t *L, yaml_mark_t m, const char *name)
{
    char list[256];
    size_t n = 0;
    list[0] = '\0';
    for (int j = 0; j < L->nsections && n < sizeof(list); j++)
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%.*s", j ? ", " : "",
                              (int)L->section_len[j], L->sections[j]);
    return fail_at(L, m, "%.*s: unknown section (one of %s)", MAX_NAME, name, list);
}

/* One scalar value for key: NUL bytes refused, null means "". */
static int set_scalar(loader_t *L, const char *key, const yaml_event_t *ev)
{
    const char *v = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    if (memchr(v, '\0', n)) return fail_at(L, ev->start_mark, "%s: value contains a NUL byte", key);
    char msg[512];
    if (config_set_copy(L->c, key, is_null(ev) ? "" : v, msg, sizeof(msg)) < 0)
        return fail_at(L, ev->start_mark, "%s", msg);
    return 0;
}

/* The value node of one key; ev is its first event (consumed here). */
static int parse_value(loader_t *L, const char *key, yaml_event_t *ev)
{
    config_key_meta_t meta;
    config_key_meta(key, &meta);
    if (ev->type == YAML_SCALAR_EVENT) return set_scalar(L, key, ev);
    if (ev->type != YAML_SEQUENCE_START_EVENT || !meta.list)
        return fail_at(L, ev->start_mark, "%s: expected a single value, got %s (%s)", key,
                       shape(ev->type), meta.type);
    int items = 0;
    for (;;) {
        yaml_event_t it;
        if (next(L, &it) < 0) return -1;
        int rc = 0;
        if (it.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&it);
            break;
        } else if (it.type == YAML_SCALAR_EVENT) {
            rc = set_scalar(L, key, &it);
            items++;
        } else {
            rc = fail_at(L, it.start_mark, "%s: list items must be single values, got %s", key,
                         shape(it.type));
        }
        yaml_event_delete(&it);
        if (rc < 0) return -1;
    }
    if (items == 0) config__list_clear(L->c, key); /* key: [] */
    return 0;
}

/* The body of one section, after its MAPPING_START. */
static int parse_section(loader_t *L, const char *sect, size_t slen)
{
    for (;;) {
        yaml_event_t kev, vev;
        if (next(L, &kev) < 0) return -1;
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            return 0;
        }
        if (kev.type != YAML_SCALAR_EVENT) {
            fail_at(L, kev.start_mark, "%.*s: keys must be names, got %s", (int)slen, sect,
                    shape(kev.type));
            yaml_event_delete(&kev);
            return -1;
        }
        char full[MAX_NAME + 2];
        const char *kname = (const char *)kev.data.scalar.value;
        size_t klen = kev.data.scalar.length;
        yaml_mark_t km = kev.start_mark;
        int idx = -1;
        if (slen + 1 + klen <= MAX_NAME && !memchr(kname, '\0', klen)) {
            snprintf(full, sizeof(full), "%.*s.%.*s", (int)slen, sect, (int)klen, kname);
            idx = key_index(full);
        } else {
            snprintf(full, sizeof(full), "%.*s.%.*s...", (int)slen, sect, 32, kname);
        }
        yaml_event_delete(&kev);
        if (idx < 0) return unknown_key(L, km, full);
        if (L->key_line[idx])
            return fail_at(L, km, "%s: duplicate key (first set on line %zu)", full,
                           L->key_line[idx]);
        L->key_line[idx] = km.line + 1;
        if (next(L, &vev) < 0) return -1;
        int rc = parse_value(L, full, &vev);
        yaml_event_delete(&vev);
        if (rc < 0) return -1;
    }
}

/* The top-level mapping's body, after its MAPPING_START. */
static int parse_sections(loader_t *L)
{
    for (;;) {
        yaml_event_t kev, vev;
        if (next(L, &kev) < 0) return -1;
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            return 0;
        }
        if (kev.type != YAML_SCALAR_EVENT) {
            fail_at(L, kev.start_mark, "section names must be names, got %s", shape(kev.type));
            yaml_event_delete(&kev);
            return -1;
        }
        const char *name = (const char *)kev.data.scalar.value;
        size_t nlen = kev.data.scalar.length;
        yaml_mark_t km = kev.start_mark;
        int s;
        for (s = 0; s < L->nsections; s++)
            if (L->section_len[s] == nlen && !memcmp(L->sections[s], name, nlen)) break;
        if (s == L->nsections) {
            char shown[MAX_NAME + 1];
            snprintf(shown, sizeof(shown), "%.*s", (int)(nlen < MAX_NAME ? nlen : MAX_NAME), name);
            yaml_event_delete(&kev);
            return unknown_section(L, km, shown);
        }
        yaml_event_delete(&kev);
        const char *sect = L->sections[s];
        size_t slen = L->section_len[s];
        if (L->section_line[s])
            return fail_at(L, km, "%.*s: duplicate section (first on line %zu)", (int)slen, sect,
                           L->section_line[s]);
        L->section_line[s] = km.line + 1;
        if (next(L, &vev) < 0) return -1;
        int rc = 0;
        if (vev.type == YAML_MAPPING_START_EVENT)
            rc = parse_section(L, sect, slen);
        else if (vev.type != YAML_SCALAR_EVENT || !is_null(&vev)) /* "echo:" alone is fine */
            rc = fail_at(L, vev.start_mark, "%.*s: expected a mapping of keys, got %s", (int)slen,
                         sect, shape(vev.type));
        yaml_event_delete(&vev);
        if (rc < 0) return -1;
    }
}

static int parse_stream(loader_t *L)
{
    yaml_event_t ev;
    if (next(L, &ev) < 0) return -1; /* STREAM_START */
    yaml_event_delete(&ev);
    if (next(L, &ev) < 0) return -1;
    if (ev.type == YAML_STREAM_END_EVENT) { /* empty file, or comments only */
        yaml_event_delete(&ev);
        return 0;
    }
    yaml_event_delete(&ev); /* DOCUMENT_START */
    if (next(L, &ev) < 0) return -1;
    int rc = 0;
    if (ev.type == YAML_MAPPING_START_EVENT)
        rc = parse_sections(L);
    else if (ev.type != YAML_SCALAR_EVENT || !is_null(&ev))
        rc = fail_at(L, ev.start_mark,
                     "expected a mapping of sections (server:, session:, ...), "
                     "got %s",
                     shape(ev.type));
    yaml_event_delete(&ev);
    if (rc < 0) return -1;
    if (next(L, &ev) < 0) return -1; /* DOCUMENT_END */
    yaml_event_delete(&ev);
    if (next(L, &ev) < 0) return -1;
    if (ev.type != YAML_STREAM_END_EVENT) {
        rc = fail_at(L, ev.start_mark, "only one YAML document is allowed");
        yaml_event_delete(&ev);
        return rc;
    }
    yaml_event_delete(&ev);
    return 0;
}

/* A first pass for syntax only, so a syntax error anywhere is reported
 * before a value error that precedes it ("listen: a: b" is a syntax error,
 * not the invalid listen address "a"). It stops early below the deepest
 * level the file may have: the second pass reports that node. */
static int check_syntax(loader_t *L)
{
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        snprintf(L->err, L->cap, "%s: out of memory", L->name);
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)L->data, L->len);
    int depth = 0, rc = 0;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            rc = syntax_error(L, &p);
            break;
        }
        yaml_event_type_t t = ev.type;
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT) break;
        if (t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT) depth++;
        if (t == YAML_MAPPING_END_EVENT || t == YAML_SEQUENCE_END_EVENT) depth--;
        if (depth > 3) break; /* sections > keys > list items: deeper is a shape error */
    }
    yaml_parser_delete(&p);
    return rc;
}

int config_load_buffer(hp_config_t *c, const char *name, const char *data, size_t len, char *err,
                       size_t cap)
{
    if (len > HP_CONFIG_MAX_FILE_SIZE) {
        snprintf(err, cap, "%s: file too large (%zu bytes, at most %d)", name, len,
                 HP_CONFIG_MAX_FILE_SIZE);
        return -1;
    }
    if (!data) data = "", len = 0; /* libyaml asserts on a NULL input */
    loader_t L = {.name = name, .data = data, .len = len, .err = err, .cap = cap};
    L.key_line = calloc(config_key_count(), sizeof(*L.key_line));
    L.c = malloc(sizeof(*L.c));
    if (!L.key_line || !L.c || !yaml_parser_initialize(&L.p)) {
        free(L.key_line);
        free(L.c);
        snprintf(err, cap, "%s: out of memory", name);
        return -1;
    }
    collect_sections(&L);
    *L.c = *c; /* work on a copy: all or nothing */
    struct hp_config_str *mark = L.c->_owned;
    yaml_parser_set_input_string(&L.p, (const unsigned char *)data, len);
    int rc = check_syntax(&L);
    if (rc == 0) rc = parse_stream(&L);
    yaml_parser_delete(&L.p);
    if (rc == 0)
        *c = *L.c;
    else
        config__release_since(L.c, mark);
    free(L.c);
    free(L.key_line);
    return rc;
}

int config_load_file(hp_config_t *c, const char *path, char *err, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        snprintf(err, cap, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, cap, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_size > HP_CONFIG_MAX_FILE_SIZE) {
        snprintf(err, cap, "%s: file too large (%lld bytes, at most %d)", path,
                 (long long)st.st_size, HP_CONFIG_MAX_FILE_SIZE);
        close(fd);
        return -1;
    }
    /* read at most one byte past the bound: the file may grow meanwhile */
    size_t bufcap = HP_CONFIG_MAX_FILE_SIZE + 1, len = 0;
    char *buf = malloc(bufcap);
    if (!buf) {
        close(fd);
        snprintf(err, cap, "%s: out of memory", path);
        return -1;
    }
    for (;;) {
        ssize_t r = read(fd, buf + len, bufcap - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            snprintf(err, cap, "%s: cannot read: %s", path, strerror(errno));
            close(fd);
            free(buf);
            return -1;
        }
        if (r == 0 || (len += (size_t)r) == bufcap) break;
    }
    close(fd);
    int rc = config_load_buffer(c, path, buf, len, err, cap);
    free(buf);
    return rc;
}

/* ---- environment ------------------------------------------------------- */

/* The value of NAME in envp, or NULL. The first occurrence wins, as getenv. */
static const char *env_get(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (char *const *e = envp; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

int config_load_env(hp_config_t *c, char *const *envp, char *err, size_t cap)
{
    hp_config_t *tmp = malloc(sizeof(*tmp));
    if (!tmp) {
        snprintf(err, cap, "environment: out of memory");
        return -1;
    }
    *tmp = *c;
    struct hp_config_str *mark = tmp->_owned;
    char msg[512];
    int rc = 0;
    for (size_t i = 0; i < config_key_count() && rc == 0; i++) {
        const char *key = config_key_name(i);
        config_key_meta_t meta;
        config_key_meta(key, &meta);
        const char *v = env_get(envp, meta.env);
        if (!v) continue;
        if (!meta.list) {
            if (config_set_copy(tmp, key, v, msg, sizeof(msg)) < 0) rc = -1;
        } else {
            /* comma-separated items, each appended; empty items skipped */
            for (const char *p = v; rc == 0 && *p;) {
                const char *comma = strchr(p, ',');
                size_t n = comma ? (size_t)(comma - p) : strlen(p);
                if (n > 0) {
                    char *item = config__strndup(tmp, p, n);
                    if (!item) {
                        snprintf(msg, sizeof(msg), "%s: out of memory", key);
                        rc = -1;
                    } else if (config_set(tmp, key, item, msg, sizeof(msg)) < 0) {
                        rc = -1;
                    }
                }
                p += n + (comma != NULL);
            }
        }
        if (rc < 0) snprintf(err, cap, "%s: %s", meta.env, msg);
    }
    if (rc == 0)
        *c = *tmp;
    else
        config__release_since(tmp, mark);
    free(tmp);
    return rc;
}

/* ---- the JWT secret ---------------------------------------------------- */

int config_jwt_secret(const hp_config_t *c, char *const *envp, char *out, size_t cap, char *err,
                      size_t errcap)
{
    if (cap) out[0] = '\0';
    const char *v = env_get(envp, HP_CONFIG_JWT_SECRET_ENV);
    if (v && *v) {
        size_t n = strlen(v);
        if (n >= cap) {
            snprintf(err, errcap, "%s: too long (at most %zu bytes)", HP_CONFIG_JWT_SECRET_ENV,
                     cap ? cap - 1 : 0);
            return -1;
        }
        memcpy(out, v, n + 1);
        return 1;
    }
    const char *path = c->jwt_secret_file;
    if (!path[0]) return 0;
    if (cap == 0) {
        snprintf(err, errcap, "auth.jwt_secret_file: no room for the secret");
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        snprintf(err, errcap, "auth.jwt_secret_file: cannot read \"%s\": %s", path,
                 strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(err, errcap, "auth.jwt_secret_file: \"%s\" is not a regular file", path);
        return -1;
    }
    /* Read all of it (bounded) so trailing newlines can be trimmed, then
     * copy; the scratch buffer is wiped before it is freed. */
    size_t bufcap = cap + 4096, len = 0;
    char *buf = malloc(bufcap);
    if (!buf) {
        close(fd);
        snprintf(err, errcap, "auth.jwt_secret_file: out of memory");
        return -1;
    }
    const char *why = NULL;
    int e = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, bufcap - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            e = errno;
            break;
        }
        if (r == 0) break;
        if ((len += (size_t)r) == bufcap) {
            why = "is too long";
            break;
        }
    }
    close(fd);
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ' ||
                       buf[len - 1] == '\t'))
        len--;
    if (!e && !why) {
        if (len == 0)
            why = "is empty";
        else if (len >= cap)
            why = "is too long";
        else if (memchr(buf, '\0', len))
            why = "contains a NUL byte";
    }
    if (!e && !why) {
        memcpy(out, buf, len);
        out[len] = '\0';
    }
    explicit_bzero(buf, bufcap);
    free(buf);
    if (e) {
        snprintf(err, errcap, "auth.jwt_secret_file: cannot read \"%s\": %s", path, strerror(e));
        return -1;
    }
    if (why) {
        if (strcmp(why, "is too long") == 0)
            snprintf(err, errcap, "auth.jwt_secret_file: \"%s\" is too long (at most %zu bytes)",
                     path, cap - 1);
        else
            snprintf(err, errcap, "auth.jwt_secret_file: \"%s\" %s", path, why);
        return -1;
    }
    return 1;
}

int config_build(hp_config_t *c, const char *file, const char *const *sets, int nsets,
                 char *const *envp, bool validate, char *err, size_t cap)
{
    config_defaults(c);
    if (file && file[0] && config_load_file(c, file, err, cap) < 0) return -1;
    if (config_load_env(c, envp, err, cap) < 0) return -1;
    for (int i = 0; i < nsets; i++) {
        const char *eq = strchr(sets[i], '=');
        if (!eq || eq == sets[i]) {
            snprintf(err, cap, "--set wants KEY=VALUE, got \"%.200s\"", sets[i]);
            return -1;
        }
        char key[128];
        size_t n = (size_t)(eq - sets[i]);
        if (n >= sizeof(key)) {
            snprintf(err, cap, "unknown setting \"%.100s...\"", sets[i]);
            return -1;
        }
        memcpy(key, sets[i], n);
        key[n] = '\0';
        if (config_set_copy(c, key, eq + 1, err, cap) < 0) return -1;
    }
    return validate ? config_validate(c, err, cap) : 0;
}
