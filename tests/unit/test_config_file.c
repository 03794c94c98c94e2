/*
 * test_config_file.c - the layers of config.h beyond config_set: YAML files
 * (every kind of key, every kind of error with its file:line:col, key, value
 * and rule, all-or-nothing loads), environment overrides, owned strings and
 * config_free, cross-key validation, diff and reload, enumeration, the JWT
 * secret, and the docs and example config kept in step with the key table.
 * Real files in a mkdtemp directory.
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

#include "util/config.h"

static char g_dir[256];

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/hp-cfg-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes g_dir/name and returns its path (static, one at a time per slot). */
static const char *write_file_n(const char *name, const char *text, size_t len)
{
    static char paths[8][512];
    static int slot;
    char *p = paths[slot++ % 8];
    snprintf(p, 512, "%s/%s", g_dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return p;
}

static const char *write_file(const char *name, const char *text)
{
    return write_file_n(name, text, strlen(text));
}

static hp_config_t *cfg_new(void)
{
    hp_config_t *c = malloc(sizeof(*c));
    assert_non_null(c);
    memset(c, 0xA5, sizeof(*c));
    config_defaults(c);
    return c;
}

static void cfg_del(hp_config_t *c)
{
    config_free(c);
    free(c);
}

static void load_ok(hp_config_t *c, const char *path)
{
    char err[512] = "";
    if (config_load_file(c, path, err, sizeof(err)) != 0) fail_msg("load %s: %s", path, err);
}

/* Loads text as g_dir/hotplex.yaml, expects failure and an unchanged config;
 * returns the message with the directory stripped ("hotplex.yaml:..."). */
static const char *load_fail_n(const char *text, size_t len)
{
    static char err[1024];
    const char *path = write_file_n("hotplex.yaml", text, len);
    hp_config_t *c = cfg_new();
    assert_int_equal(config_set_copy(c, "worker.work_bases", "/srv/pre", err, sizeof(err)), 0);
    hp_config_t before = *c;
    err[0] = '\0';
    if (config_load_file(c, path, err, sizeof(err)) != -1) fail_msg("accepted: %s", text);
    assert_memory_equal(&before, c, sizeof(before)); /* all or nothing */
    cfg_del(c);
    size_t dl = strlen(g_dir);
    assert_int_equal(strncmp(err, g_dir, dl), 0);
    memmove(err, err + dl + 1, strlen(err + dl + 1) + 1);
    return err;
}

static const char *load_fail(const char *text)
{
    return load_fail_n(text, strlen(text));
}

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        if (!strstr((hay), (needle))) fail_msg("\"%s\" lacks \"%s\"", (hay), (needle));            \
    } while (0)

/* ---- files ---------------------------------------------------------------- */

static void test_good_file(void **state)
{
    (void)state;
    const char *path = write_file("good.yaml", "# every kind of key\n"
                                               "server:\n"
                                               "  listen: \"0.0.0.0:9000\"   # listen\n"
                                               "  data_dir: /var/lib/hotplex\n"
                                               "  max_frame_size: 64k\n"
                                               "  init_timeout_ms: 1500\n"
                                               "  allowed_origins:\n"
                                               "    - https://a.example\n"
                                               "    - 'http://b.example:8080'\n"
                                               "session:\n"
                                               "  out_hard_limit: 1g\n"
                                               "  idle_timeout_ms: 1099511627776\n"
                                               "auth:\n"
                                               "  keys_file: ''\n"
                                               "  jwt_audience: hotplex\n"
                                               "  api_key_header: ~\n"
                                               "  bot_id:\n"
                                               "admin: {listen: \"[::1]:0\", tokens_file: \"\"}\n"
                                               "log:\n"
                                               "  level: WARN\n"
                                               "  format: json\n"
                                               "worker:\n"
                                               "  work_bases: [/srv/a, \"/srv/b\"]\n"
                                               "  env: [\"A=1,2\", B=x y]\n"
                                               "  env_pass: [MY_VAR]\n"
                                               "  mem_limit: 512m\n"
                                               "echo:\n");
    hp_config_t *c = cfg_new();
    int npass = c->n_env_pass;
    load_ok(c, path);
    assert_string_equal(c->listen_host, "0.0.0.0");
    assert_int_equal(c->listen_port, 9000);
    assert_string_equal(c->data_dir, "/var/lib/hotplex");
    assert_int_equal(c->max_frame_size, 65536);
    assert_int_equal(c->init_timeout_ms, 1500);
    assert_int_equal(c->n_allowed_origins, 2);
    assert_string_equal(c->allowed_origins[0], "https://a.example");
    assert_string_equal(c->allowed_origins[1], "http://b.example:8080");
    assert_true(c->out_hard_limit == (size_t)1 << 30);
    assert_true(c->idle_timeout_ms == (int64_t)1 << 40);
    assert_string_equal(c->keys_file, "");
    assert_string_equal(c->jwt_audience, "hotplex");
    assert_string_equal(c->api_key_header, ""); /* ~ is null: the empty string */
    assert_string_equal(c->bot_id, "");
    assert_string_equal(c->admin_listen_host, "[::1]");
    assert_int_equal(c->admin_listen_port, 0);
    assert_int_equal(c->log_level, 2);
    assert_int_equal(c->log_json, 1);
    assert_int_equal(c->n_work_bases, 2);
    assert_string_equal(c->work_bases[0], "/srv/a");
    assert_string_equal(c->work_bases[1], "/srv/b");
    assert_int_equal(c->n_env_extra, 2);
    assert_string_equal(c->env_extra[0], "A=1,2");
    assert_string_equal(c->env_extra[1], "B=x y");
    assert_int_equal(c->n_env_pass, npass + 1); /* appended to the defaults */
    assert_string_equal(c->env_pass[0], "PATH");
    assert_string_equal(c->env_pass[npass], "MY_VAR");
    assert_true(c->agent_mem_limit == (size_t)512 << 20);
    /* untouched keys keep their defaults */
    assert_int_equal(c->client_timeout_ms, 90000);
    assert_string_equal(c->claude_bin, "claude");
    cfg_del(c);
}

static void test_empty_files(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "",          "# only a comment\n",     "---\n", "---\n...\n", "~\n",
        "server:\n", "server: {}\nworker: ~\n"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        hp_config_t *c = cfg_new();
        hp_config_t d;
        config_defaults(&d);
        load_ok(c, write_file("empty.yaml", texts[i]));
        assert_int_equal(config_diff(&d, c, NULL, NULL), 0);
        cfg_del(c);
    }
}

/* [] empties a list, defaults included; items after it are the whole list. */
static void test_list_clear(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    assert_true(c->n_env_pass > 0);
    load_ok(c, write_file("clear.yaml", "worker:\n  env_pass: []\n  work_bases: [/x]\n"));
    assert_int_equal(c->n_env_pass, 0);
    assert_int_equal(c->n_work_bases, 1);
    cfg_del(c);
}

static void test_file_errors(void **state)
{
    (void)state;
    const char *e;
    /* invalid value: file:line:col of the value, key, value, rule */
    e = load_fail("server:\n"
                  "  listen: \"127.0.0.1:1\"\n"
                  "  max_frame_size:   abc\n");
    assert_string_equal(e, "hotplex.yaml:3:21: server.max_frame_size: invalid value \"abc\" (an "
                           "integer from 256 to 67108864)");
    e = load_fail("server:\n  listen: 127.0.0.1:99999\n");
    assert_string_equal(
        e, "hotplex.yaml:2:11: server.listen: invalid value \"127.0.0.1:99999\" (HOST:PORT, port "
           "0-65535)");
    e = load_fail("log:\n  level: verbose\n");
    assert_string_equal(
        e, "hotplex.yaml:2:10: log.level: invalid value \"verbose\" (one of debug, info, warn, "
           "error)");
    e = load_fail("session:\n  out_hard_limit: \"\"\n");
    assert_string_equal(e, "hotplex.yaml:2:19: session.out_hard_limit: invalid value \"\" (an "
                           "integer from 4096 to 17179869184)");
    e = load_fail("session:\n  max_conns: 1.5\n");
    assert_contains(e, "hotplex.yaml:2:14: session.max_conns: invalid value \"1.5\"");
    /* unknown section, unknown key (suggestion; value never echoed) */
    e = load_fail("server:\n  listen: 127.0.0.1:1\nsrever:\n  x: 1\n");
    assert_string_equal(e, "hotplex.yaml:3:1: srever: unknown section (one of server, session, "
                           "auth, admin, log, worker, echo)");
    e = load_fail("server:\n  max_frame: 64k\n");
    assert_string_equal(e, "hotplex.yaml:2:3: server.max_frame: unknown setting (did you mean "
                           "server.max_frame_size?)");
    e = load_fail("server:\n  completely_different: 1\n");
    assert_string_equal(e, "hotplex.yaml:2:3: server.completely_different: unknown setting (see "
                           "docs/configuration.md)");
    e = load_fail("auth:\n  jwt_secret: s3cr3t-value-never-shown\n");
    assert_contains(e, "hotplex.yaml:2:3: auth.jwt_secret: unknown setting");
    assert_contains(e, "HOTPLEX_JWT_SECRET");
    assert_null(strstr(e, "s3cr3t"));
    e = load_fail("worker:\n  typo_key: SECRET-VALUE\n");
    assert_null(strstr(e, "SECRET-VALUE"));
    /* wrong shape */
    e = load_fail("worker:\n  claude_bin: [a, b]\n");
    assert_string_equal(e, "hotplex.yaml:2:15: worker.claude_bin: expected a single value, got a "
                           "sequence (string, at most 1023 bytes)");
    e = load_fail("server:\n  max_frame_size:\n    a: 1\n");
    assert_string_equal(e, "hotplex.yaml:3:5: server.max_frame_size: expected a single value, got "
                           "a mapping (size 256..64m (suffix k, m, g))");
    e = load_fail("worker:\n  env_pass:\n    - A\n    - [B]\n");
    assert_string_equal(
        e, "hotplex.yaml:4:7: worker.env_pass: list items must be single values, got a sequence");
    e = load_fail("worker:\n  env: [{A: 1}]\n");
    assert_contains(e, "hotplex.yaml:2:9: worker.env: list items must be single values, got a "
                       "mapping");
    e = load_fail("server: 1\n");
    assert_string_equal(e, "hotplex.yaml:1:9: server: expected a mapping of keys, got a scalar");
    e = load_fail("server:\n  - listen\n");
    assert_string_equal(e, "hotplex.yaml:2:3: server: expected a mapping of keys, got a sequence");
    e = load_fail("- server\n");
    assert_contains(e, "hotplex.yaml:1:1: expected a mapping of sections");
    e = load_fail("just text\n");
    assert_contains(e, "hotplex.yaml:1:1: expected a mapping of sections");
    e = load_fail("server:\n  ? [a]\n  : 1\n");
    assert_contains(e, "hotplex.yaml:2:5: server: keys must be names, got a sequence");
    e = load_fail("? {a: 1}\n: 1\n");
    assert_contains(e, "hotplex.yaml:1:3: section names must be names, got a mapping");
    /* duplicates */
    e = load_fail("server:\n  init_timeout_ms: 100\n  init_timeout_ms: 200\n");
    assert_string_equal(
        e, "hotplex.yaml:3:3: server.init_timeout_ms: duplicate key (first set on line 2)");
    e = load_fail("server: {}\nlog: {}\nserver: {}\n");
    assert_string_equal(e, "hotplex.yaml:3:1: server: duplicate section (first on line 1)");
    /* syntax */
    e = load_fail("server:\n  listen: a: b\n");
    assert_string_equal(
        e, "hotplex.yaml:2:12: syntax error: mapping values are not allowed in this context");
    e = load_fail("server:\n  listen: \"unterminated\n");
    assert_contains(e, "hotplex.yaml:");
    assert_contains(e, "syntax error: found unexpected end of stream while scanning a quoted "
                       "scalar (line 2)");
    e = load_fail("server: {listen: 1\n");
    assert_contains(e, "syntax error:");
    e = load_fail_n("server:\n  data_dir: \xff\xfe\n", 22);
    assert_contains(e, "hotplex.yaml:2:13: syntax error: invalid");
    /* aliases, documents, NUL */
    e = load_fail("server:\n  data_dir: &d /x\nworker:\n  default_work_dir: *d\n");
    assert_string_equal(e, "hotplex.yaml:4:21: aliases are not supported");
    e = load_fail("server: {}\n---\nlog: {}\n");
    assert_string_equal(e, "hotplex.yaml:2:1: only one YAML document is allowed");
    e = load_fail("server:\n  data_dir: \"a\\0b\"\n");
    assert_string_equal(e, "hotplex.yaml:2:13: server.data_dir: value contains a NUL byte");
    /* bounds kept by config_set */
    char big[2200];
    int n = snprintf(big, sizeof(big), "server:\n  data_dir: ");
    memset(big + n, 'd', 1024);
    snprintf(big + n + 1024, sizeof(big) - (size_t)n - 1024, "\n");
    e = load_fail(big);
    assert_string_equal(e,
                        "hotplex.yaml:2:13: server.data_dir: value too long (at most 1023 bytes)");
    char list[2048] = "worker:\n  env_pass:\n";
    for (int i = 0; i < HP_MAX_ENV_EXTRA; i++)
        strcat(list, "    - V\n");
    e = load_fail(list);
    assert_contains(e, "worker.env_pass: too many entries (at most 32)");
    /* an overlong key name is unknown, and shown cut short */
    char longkey[400];
    n = snprintf(longkey, sizeof(longkey), "server:\n  ");
    memset(longkey + n, 'k', 300);
    snprintf(longkey + n + 300, sizeof(longkey) - (size_t)n - 300, ": 1\n");
    e = load_fail(longkey);
    assert_contains(e, "hotplex.yaml:2:3: server.kkkk");
    assert_contains(e, "...: unknown setting");
}

static void test_file_io_errors(void **state)
{
    (void)state;
    char err[512];
    hp_config_t *c = cfg_new();
    char path[512];
    snprintf(path, sizeof(path), "%s/missing.yaml", g_dir);
    assert_int_equal(config_load_file(c, path, err, sizeof(err)), -1);
    assert_contains(err, "missing.yaml: cannot open: No such file or directory");
    assert_int_equal(config_load_file(c, g_dir, err, sizeof(err)), -1);
    assert_contains(err, ": not a regular file");

    /* 1 MiB of comments loads; one byte more does not */
    size_t len = HP_CONFIG_MAX_FILE_SIZE;
    char *text = malloc(len + 1);
    assert_non_null(text);
    memset(text, '#', len);
    text[len - 1] = '\n';
    load_ok(c, write_file_n("big.yaml", text, len));
    text[len - 1] = '#';
    text[len] = '\n';
    const char *big = write_file_n("big.yaml", text, len + 1);
    assert_int_equal(config_load_file(c, big, err, sizeof(err)), -1);
    assert_contains(err, "big.yaml: file too large (1048577 bytes, at most 1048576)");
    assert_int_equal(config_load_buffer(c, "mem", text, len + 1, err, sizeof(err)), -1);
    assert_string_equal(err, "mem: file too large (1048577 bytes, at most 1048576)");
    free(text);

    /* a short error buffer is truncated, never overrun */
    char small[8];
    memset(small, 'Z', sizeof(small));
    assert_int_equal(config_load_buffer(c, "x.yaml", "nope: 1\n", 8, small, sizeof(small)), -1);
    assert_string_equal(small, "x.yaml:");
    cfg_del(c);
}

/* Deep nesting, anchors everywhere, huge flow sequences: refused at the
 * first node out of shape, quickly and without recursion. */
static void test_nesting_bounded(void **state)
{
    (void)state;
    size_t n = 500000;
    char *text = malloc(n + 16);
    assert_non_null(text);
    memset(text, '[', n);
    memcpy(text + n, "\n", 2);
    const char *e = load_fail_n(text, n + 1);
    assert_contains(e, "hotplex.yaml:1:1: expected a mapping of sections");
    memcpy(text, "server: ", 8);
    e = load_fail_n(text, n + 1);
    assert_contains(e, "hotplex.yaml:1:9: server: expected a mapping of keys, got a sequence");
    memcpy(text, "worker: {env: ", 14);
    e = load_fail_n(text, n + 1);
    assert_contains(e, "worker.env: list items must be single values, got a sequence");
    free(text);
}

/* ---- environment ---------------------------------------------------------- */

static void test_env(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    load_ok(c, write_file("env.yaml", "server:\n  max_frame_size: 64k\n  init_timeout_ms: 777\n"
                                      "worker:\n  work_bases: [/from/file]\n"));
    char *env[] = {"PATH=/usr/bin",
                   "HOTPLEX_SERVER_MAX_FRAME_SIZE=1m",
                   "HOTPLEX_WORKER_DEFAULT_WORK_DIR=/srv/work",
                   "HOTPLEX_WORKER_WORK_BASES=/a,,/b,",
                   "HOTPLEX_LOG_LEVEL=debug",
                   "HOTPLEX_ADMIN_LISTEN=0.0.0.0:0",
                   "HOTPLEX_SERVER_MAX_FRAME_SIZE=2m", /* the first one wins, as getenv */
                   "HOTPLEX_JWT_SECRET=not-a-key",
                   "HOTPLEX_SESSION_ID=abc",
                   "HOTPLEX_WORKER_TYPE=claude-code",
                   "HOTPLEX_NOT_A_SECTION_X=1",
                   "HOTPLEX_SERVER_MAX_FRAME_SIZEX=1",
                   "NOEQUALS",
                   NULL};
    char err[512] = "";
    assert_int_equal(config_load_env(c, env, err, sizeof(err)), 0);
    assert_int_equal(c->max_frame_size, 1 << 20); /* env beats the file */
    assert_int_equal(c->init_timeout_ms, 777);    /* file beats the default */
    assert_string_equal(c->default_work_dir, "/srv/work");
    assert_int_equal(c->n_work_bases, 3);
    assert_string_equal(c->work_bases[0], "/from/file");
    assert_string_equal(c->work_bases[1], "/a");
    assert_string_equal(c->work_bases[2], "/b");
    assert_int_equal(c->log_level, 0);
    assert_string_equal(c->admin_listen_host, "0.0.0.0");
    assert_int_equal(c->admin_listen_port, 0);
    /* the command line comes last */
    assert_int_equal(config_set(c, "server.max_frame_size", "4k", err, sizeof(err)), 0);
    assert_int_equal(c->max_frame_size, 4096);
    /* owned: the env strings may go away */
    char wb[] = "HOTPLEX_WORKER_ENV=K=v";
    char *env2[] = {wb, NULL};
    assert_int_equal(config_load_env(c, env2, err, sizeof(err)), 0);
    memset(wb, 'X', sizeof(wb) - 1);
    assert_string_equal(c->env_extra[0], "K=v");
    assert_int_equal(config_load_env(c, NULL, err, sizeof(err)), 0);
    cfg_del(c);
}

static void test_env_errors(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    char err[512];
    char *bad[] = {"HOTPLEX_WORKER_WORK_BASES=/ok", "HOTPLEX_SERVER_MAX_FRAME_SIZE=huge", NULL};
    hp_config_t before = *c;
    assert_int_equal(config_load_env(c, bad, err, sizeof(err)), -1);
    assert_string_equal(err, "HOTPLEX_SERVER_MAX_FRAME_SIZE: server.max_frame_size: invalid "
                             "value \"huge\" (an integer from 256 to 67108864)");
    assert_memory_equal(&before, c, sizeof(before)); /* all or nothing */
    char *empty[] = {"HOTPLEX_SESSION_MAX_CONNS=", NULL};
    assert_int_equal(config_load_env(c, empty, err, sizeof(err)), -1);
    assert_contains(err, "HOTPLEX_SESSION_MAX_CONNS: session.max_conns: invalid value \"\"");
    char many[40 * 3 + 64] = "HOTPLEX_SERVER_ALLOWED_ORIGINS=";
    for (int i = 0; i < 33; i++)
        strcat(many, "*,");
    char *toomany[] = {many, NULL};
    assert_int_equal(config_load_env(c, toomany, err, sizeof(err)), -1);
    assert_string_equal(err, "HOTPLEX_SERVER_ALLOWED_ORIGINS: server.allowed_origins: too many "
                             "entries (at most 32)");
    assert_int_equal(c->n_allowed_origins, 0);
    assert_memory_equal(&before, c, sizeof(before));
    cfg_del(c);
}

/* ---- ownership ------------------------------------------------------------- */

static void test_config_free(void **state)
{
    (void)state;
    /* never loaded: safe, and twice */
    hp_config_t c;
    config_defaults(&c);
    config_free(&c);
    config_free(&c);
    config_free(NULL);
    /* loaded, reloaded, set: everything owned is released (ASan/LSan checks) */
    hp_config_t *d = cfg_new();
    const char *path = write_file("own.yaml", "worker:\n  env: [A=1, B=2]\n  work_bases: [/w]\n"
                                              "server:\n  allowed_origins: ['*']\n");
    load_ok(d, path);
    load_ok(d, path);
    char err[256];
    assert_int_equal(config_set_copy(d, "worker.env_pass", "COPIED", err, sizeof(err)), 0);
    assert_int_equal(config_set_copy(d, "server.data_dir", "/d", err, sizeof(err)), 0);
    assert_int_equal(d->n_env_extra, 4);
    assert_non_null(d->_owned);
    config_free(d);
    assert_null(d->_owned);
    /* reset to defaults: no list entry left pointing at freed memory */
    hp_config_t def;
    config_defaults(&def);
    assert_int_equal(config_diff(&def, d, NULL, NULL), 0);
    free(d);
    /* a failed config_set_copy owns nothing more */
    hp_config_t *e = cfg_new();
    for (int i = 0; i < HP_MAX_ENV_EXTRA; i++)
        assert_int_equal(config_set_copy(e, "worker.env", "X=1", err, sizeof(err)), 0);
    struct hp_config_str *mark = e->_owned;
    assert_int_equal(config_set_copy(e, "worker.env", "Y=2", err, sizeof(err)), -1);
    assert_ptr_equal(e->_owned, mark);
    cfg_del(e);
}

/* ---- validation -------------------------------------------------------------- */

static const char *validate_fail(const hp_config_t *c)
{
    static char err[1024];
    err[0] = '\0';
    if (config_validate(c, err, sizeof(err)) != -1) fail_msg("validate accepted");
    return err;
}

static void set_ok(hp_config_t *c, const char *key, const char *value)
{
    char err[512];
    if (config_set_copy(c, key, value, err, sizeof(err)) != 0) fail_msg("%s", err);
}

static void test_validate(void **state)
{
    (void)state;
    char err[1024];
    hp_config_t *c = cfg_new();
    assert_int_equal(config_validate(c, err, sizeof(err)), 0); /* the defaults are valid */

    set_ok(c, "session.out_soft_limit", "8m");
    assert_string_equal(validate_fail(c),
                        "session.out_soft_limit: 8m must be below session.out_hard_limit (8m)");
    set_ok(c, "session.out_soft_limit", "256k");

    const char *cert = write_file("cert.pem", "cert");
    set_ok(c, "server.tls_cert_file", cert);
    assert_string_equal(validate_fail(c),
                        "server.tls_key_file: must be set together with server.tls_cert_file");
    set_ok(c, "server.tls_cert_file", "");
    set_ok(c, "server.tls_key_file", cert);
    assert_string_equal(validate_fail(c),
                        "server.tls_cert_file: must be set together with server.tls_key_file");
    set_ok(c, "server.tls_cert_file", cert);
    assert_int_equal(config_validate(c, err, sizeof(err)), 0);

    char missing[600];
    snprintf(missing, sizeof(missing), "%s/no-such-keys", g_dir);
    set_ok(c, "auth.keys_file", missing);
    char want[1024];
    snprintf(want, sizeof(want), "auth.keys_file: cannot read \"%s\": No such file or directory",
             missing);
    assert_string_equal(validate_fail(c), want);
    set_ok(c, "auth.keys_file", g_dir);
    snprintf(want, sizeof(want), "auth.keys_file: \"%s\" is not a regular file", g_dir);
    assert_string_equal(validate_fail(c), want);
    set_ok(c, "auth.keys_file", "");
    set_ok(c, "admin.tokens_file", missing);
    assert_contains(validate_fail(c), "admin.tokens_file: cannot read");
    set_ok(c, "admin.tokens_file", "");
    if (geteuid() != 0) { /* root reads anything */
        const char *secret = write_file("unreadable", "x");
        assert_int_equal(chmod(secret, 0), 0);
        set_ok(c, "auth.jwt_secret_file", secret);
        assert_contains(validate_fail(c), "auth.jwt_secret_file: cannot read");
        assert_contains(validate_fail(c), "Permission denied");
        set_ok(c, "auth.jwt_secret_file", "");
    }
    assert_int_equal(config_validate(c, err, sizeof(err)), 0);

    c->listen_host[0] = '\0'; /* config_set refuses it; validate checks anyway */
    assert_string_equal(validate_fail(c), "server.listen: the host must not be empty");
    set_ok(c, "server.listen", "127.0.0.1:9999");
    assert_string_equal(validate_fail(c), "admin.listen: 127.0.0.1:9999 is also server.listen");
    set_ok(c, "admin.listen", "127.0.0.1:0");
    set_ok(c, "server.listen", "127.0.0.1:0"); /* both "any free port": fine */
    assert_int_equal(config_validate(c, err, sizeof(err)), 0);

    set_ok(c, "server.data_dir", "");
    assert_string_equal(validate_fail(c), "server.data_dir: must not be empty");
    set_ok(c, "server.data_dir", ".data");

    set_ok(c, "server.client_timeout_ms", "30000");
    assert_string_equal(validate_fail(c), "server.client_timeout_ms: 30000 must be above "
                                          "server.ping_interval_ms (30000)");
    set_ok(c, "server.ping_interval_ms", "0");
    assert_int_equal(config_validate(c, err, sizeof(err)), 0);

    set_ok(c, "auth.api_key_header", "X Key");
    assert_string_equal(validate_fail(c),
                        "auth.api_key_header: \"X Key\" is not an HTTP header name");
    set_ok(c, "auth.api_key_header", "Authorization");

    set_ok(c, "server.allowed_origins", "https://ok.example:8443");
    set_ok(c, "server.allowed_origins", "*");
    assert_int_equal(config_validate(c, err, sizeof(err)), 0);
    set_ok(c, "server.allowed_origins", "https://x.example/path");
    assert_string_equal(validate_fail(c), "server.allowed_origins: \"https://x.example/path\" is "
                                          "not an origin (scheme://host[:port] or *)");
    config__list_clear(c, "server.allowed_origins");

    set_ok(c, "worker.work_bases", "relative/dir");
    assert_string_equal(validate_fail(c),
                        "worker.work_bases: \"relative/dir\" is not an absolute path");
    config__list_clear(c, "worker.work_bases");

    set_ok(c, "worker.env", "GOOD=1");
    set_ok(c, "worker.env", "sk-ant-secret-without-a-name");
    const char *e = validate_fail(c);
    assert_string_equal(e, "worker.env: entry 2 is not NAME=value");
    assert_null(strstr(e, "sk-ant")); /* never echo a possible credential */
    config__list_clear(c, "worker.env");
    set_ok(c, "worker.env", "1BAD=x");
    assert_string_equal(validate_fail(c), "worker.env: entry 1 is not NAME=value");
    config__list_clear(c, "worker.env");

    set_ok(c, "worker.env_pass", "A=B");
    assert_string_equal(validate_fail(c), "worker.env_pass: \"A=B\" is not a variable name");
    cfg_del(c);
}

/* ---- diff and reload ------------------------------------------------------- */

typedef struct seen {
    char keys[64][64];
    bool reload[64];
    int n;
} seen_t;

static void on_diff(void *arg, const char *key, bool reloadable)
{
    seen_t *s = arg;
    assert_true(s->n < 64);
    snprintf(s->keys[s->n], sizeof(s->keys[0]), "%s", key);
    s->reload[s->n++] = reloadable;
}

static void test_diff(void **state)
{
    (void)state;
    hp_config_t *old = cfg_new(), *neu = cfg_new();
    seen_t s = {0};
    assert_int_equal(config_diff(old, neu, on_diff, &s), 0);
    load_ok(neu, write_file("new.yaml", "server:\n  listen: 127.0.0.1:8889\n"
                                        "  max_frame_size: 64k\n"
                                        "  tls_cert_file: /c\n"
                                        "  allowed_origins: [https://a.example]\n"
                                        "log: {level: debug}\n"
                                        "admin: {listen: 127.0.0.1:1}\n"
                                        "worker:\n  env_pass: [EXTRA]\n"));
    assert_int_equal(config_diff(old, neu, on_diff, &s), 7);
    assert_int_equal(s.n, 7);
    /* table order */
    static const char *const want[] = {"server.listen",          "server.max_frame_size",
                                       "server.allowed_origins", "server.tls_cert_file",
                                       "admin.listen",           "log.level",
                                       "worker.env_pass",        NULL};
    static const bool want_reload[] = {false, true, true, false, false, true, true};
    for (int i = 0; want[i]; i++) {
        assert_string_equal(s.keys[i], want[i]);
        assert_int_equal(s.reload[i], want_reload[i]);
    }
    /* a list differs by content too, not only by length */
    hp_config_t *a = cfg_new(), *b = cfg_new();
    set_ok(a, "worker.work_bases", "/x");
    set_ok(b, "worker.work_bases", "/y");
    assert_int_equal(config_diff(a, b, NULL, NULL), 1);
    cfg_del(a);
    cfg_del(b);

    /* reload: reloadable keys copied, restart-only kept; lists owned by dst */
    assert_int_equal(config_apply_reloadable(old, neu), 4);
    assert_int_equal(old->max_frame_size, 65536);
    assert_int_equal(old->log_level, 0);
    assert_string_equal(old->listen_host, "127.0.0.1");
    assert_int_equal(old->listen_port, 8888);
    assert_string_equal(old->tls_cert_file, "");
    assert_int_equal(old->admin_listen_port, 9999);
    assert_int_equal(old->n_allowed_origins, 1);
    assert_ptr_not_equal(old->allowed_origins[0], neu->allowed_origins[0]);
    cfg_del(neu); /* dst must not point into src's storage */
    assert_string_equal(old->allowed_origins[0], "https://a.example");
    assert_string_equal(old->env_pass[old->n_env_pass - 1], "EXTRA");
    /* what is left differs only in restart-only keys... none now */
    hp_config_t *again = cfg_new();
    load_ok(again, write_file("new.yaml", "server:\n  max_frame_size: 64k\n"
                                          "  allowed_origins: [https://a.example]\n"
                                          "log: {level: debug}\n"
                                          "worker:\n  env_pass: [EXTRA]\n"));
    assert_int_equal(config_diff(old, again, NULL, NULL), 0);
    assert_int_equal(config_apply_reloadable(old, again), 0);
    cfg_del(again);
    cfg_del(old);
}

/* ---- enumeration ------------------------------------------------------------ */

typedef struct collect {
    hp_config_t *into;
    int n, secrets;
    char secret_key[64];
} collect_t;

static void on_key(void *arg, const char *key, const char *value, const char *desc, bool secret)
{
    collect_t *k = arg;
    assert_string_equal(key, config_key_name((size_t)k->n));
    assert_non_null(desc);
    assert_true(strlen(desc) > 10);
    assert_null(strchr(desc, '\n'));
    if (secret) {
        k->secrets++;
        snprintf(k->secret_key, sizeof(k->secret_key), "%s", key);
    }
    k->n++;
    /* the text round-trips through config_set (lists: item by item) */
    char err[512];
    config_key_meta_t m;
    assert_int_equal(config_key_meta(key, &m), 0);
    if (m.list) {
        config__list_clear(k->into, key);
        char *dup = strdup(value), *save = NULL;
        for (char *it = strtok_r(dup, ",", &save); it; it = strtok_r(NULL, ",", &save))
            assert_int_equal(config_set_copy(k->into, key, it, err, sizeof(err)), 0);
        free(dup);
    } else if (config_set(k->into, key, value, err, sizeof(err)) != 0) {
        fail_msg("round trip %s=%s: %s", key, value, err);
    }
}

static void test_foreach(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    load_ok(c, write_file("fe.yaml", "server: {max_frame_size: 65537, listen: \"h:1\"}\n"
                                     "log: {format: json, level: error}\n"
                                     "worker: {env: [A=1], mem_limit: 3g}\n"));
    hp_config_t *copy = cfg_new();
    collect_t k = {.into = copy};
    assert_int_equal(config_foreach(c, on_key, &k), 0);
    assert_int_equal((size_t)k.n, config_key_count());
    assert_int_equal(k.secrets, 1);
    assert_string_equal(k.secret_key, "worker.env");
    assert_int_equal(config_diff(c, copy, NULL, NULL), 0);
    cfg_del(copy);
    cfg_del(c);

    /* names are unique, section.key, and carry their env name */
    for (size_t i = 0; i < config_key_count(); i++) {
        const char *ki = config_key_name(i);
        assert_non_null(strchr(ki, '.'));
        for (size_t j = i + 1; j < config_key_count(); j++)
            assert_string_not_equal(ki, config_key_name(j));
    }
    assert_null(config_key_name(config_key_count()));
    config_key_meta_t m;
    assert_int_equal(config_key_meta("nope.x", &m), -1);
    assert_int_equal(config_key_meta("server.max_frame_size", &m), 0);
    assert_string_equal(m.env, "HOTPLEX_SERVER_MAX_FRAME_SIZE");
    assert_true(m.reloadable);
    assert_false(m.secret);
    assert_string_equal(m.type, "size 256..64m (suffix k, m, g)");
    assert_int_equal(config_key_meta("worker.default_work_dir", &m), 0);
    assert_string_equal(m.env, "HOTPLEX_WORKER_DEFAULT_WORK_DIR");
    /* restart-only: listen addresses, data dir, TLS files */
    static const char *const restart[] = {"server.listen",       "admin.listen",
                                          "server.data_dir",     "server.tls_cert_file",
                                          "server.tls_key_file", NULL};
    for (int i = 0; restart[i]; i++) {
        assert_int_equal(config_key_meta(restart[i], &m), 0);
        assert_false(m.reloadable);
    }
    static const char *const reload[] = {"log.level",
                                         "log.format",
                                         "auth.keys_file",
                                         "admin.tokens_file",
                                         "server.allowed_origins",
                                         "session.max_per_user",
                                         "session.out_hard_limit",
                                         NULL};
    for (int i = 0; reload[i]; i++) {
        assert_int_equal(config_key_meta(reload[i], &m), 0);
        assert_true(m.reloadable);
    }
    /* the new keys and their defaults */
    hp_config_t d;
    config_defaults(&d);
    assert_string_equal(d.api_key_header, "X-API-Key");
    assert_string_equal(d.admin_listen_host, "127.0.0.1");
    assert_int_equal(d.admin_listen_port, 9999);
    assert_int_equal(d.log_level, 1);
    assert_int_equal(d.log_json, 0);
    assert_null(d._owned);
}

/* ---- the JWT secret --------------------------------------------------------- */

static void test_jwt_secret(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    char out[128], err[512];
    char *none[] = {"PATH=/bin", NULL};
    assert_int_equal(config_jwt_secret(c, none, out, sizeof(out), err, sizeof(err)), 0);
    assert_string_equal(out, "");

    const char *path = write_file("jwt.secret", "0123456789abcdef0123456789abcdef\r\n\n");
    set_ok(c, "auth.jwt_secret_file", path);
    assert_int_equal(config_jwt_secret(c, none, out, sizeof(out), err, sizeof(err)), 1);
    assert_string_equal(out, "0123456789abcdef0123456789abcdef");
    char *env[] = {"HOTPLEX_JWT_SECRET=from-the-environment-wins", NULL};
    assert_int_equal(config_jwt_secret(c, env, out, sizeof(out), err, sizeof(err)), 1);
    assert_string_equal(out, "from-the-environment-wins");
    char *empty[] = {"HOTPLEX_JWT_SECRET=", NULL}; /* empty: as if unset */
    assert_int_equal(config_jwt_secret(c, empty, out, sizeof(out), err, sizeof(err)), 1);
    assert_string_equal(out, "0123456789abcdef0123456789abcdef");

    /* too long for out: an error that shows no byte of it */
    char small[8];
    assert_int_equal(config_jwt_secret(c, none, small, sizeof(small), err, sizeof(err)), -1);
    assert_contains(err, "auth.jwt_secret_file: \"");
    assert_contains(err, "is too long (at most 7 bytes)");
    assert_null(strstr(err, "0123"));
    assert_string_equal(small, "");
    assert_int_equal(config_jwt_secret(c, env, small, sizeof(small), err, sizeof(err)), -1);
    assert_string_equal(err, "HOTPLEX_JWT_SECRET: too long (at most 7 bytes)");
    /* exactly fits, trailing newline trimmed */
    set_ok(c, "auth.jwt_secret_file", write_file("jwt7", "1234567\n"));
    assert_int_equal(config_jwt_secret(c, none, small, sizeof(small), err, sizeof(err)), 1);
    assert_string_equal(small, "1234567");

    set_ok(c, "auth.jwt_secret_file", write_file("jwt.empty", "\n\n"));
    assert_int_equal(config_jwt_secret(c, none, out, sizeof(out), err, sizeof(err)), -1);
    assert_contains(err, "jwt.empty\" is empty");
    set_ok(c, "auth.jwt_secret_file", write_file_n("jwt.nul", "ab\0cd", 5));
    assert_int_equal(config_jwt_secret(c, none, out, sizeof(out), err, sizeof(err)), -1);
    assert_contains(err, "contains a NUL byte");
    assert_null(strstr(err, "ab"));
    char missing[600];
    snprintf(missing, sizeof(missing), "%s/nope", g_dir);
    set_ok(c, "auth.jwt_secret_file", missing);
    assert_int_equal(config_jwt_secret(c, none, out, sizeof(out), err, sizeof(err)), -1);
    assert_contains(err, "auth.jwt_secret_file: cannot read \"");
    assert_contains(err, "No such file or directory");
    cfg_del(c);
}

/* ---- docs and the example stay in step with the table ---------------------- */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s: %s", path, strerror(errno));
    char *buf = malloc(1 << 20);
    assert_non_null(buf);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The source tree's root, from this file's own path. */
static void source_path(const char *rel, char *out, size_t cap)
{
    const char *self = __FILE__;
    const char *cut = strstr(self, "tests/unit/test_config_file.c");
    if (self[0] == '/' && cut) {
        snprintf(out, cap, "%.*s%s", (int)(cut - self), self, rel);
    } else {
#ifdef FIXTURES_DIR
        snprintf(out, cap, "%s/../../%s", FIXTURES_DIR, rel);
#else
        snprintf(out, cap, "%s", rel);
#endif
    }
}

static void trim(char *s)
{
    size_t n = strlen(s), i = 0;
    while (n && s[n - 1] == ' ')
        s[--n] = '\0';
    while (s[i] == ' ')
        i++;
    memmove(s, s + i, n - i + 1);
}

typedef struct docs {
    const char *text;
    int n;
} docs_t;

/* Each key has exactly one row "| `key` | default | type | `ENV` | yes/restart | desc |"
 * and every cell agrees with the table. */
static void on_doc_key(void *arg, const char *key, const char *value, const char *desc, bool secret)
{
    docs_t *d = arg;
    char head[128];
    snprintf(head, sizeof(head), "\n| `%s` |", key);
    const char *row = strstr(d->text, head);
    if (!row) fail_msg("docs/configuration.md has no row for %s", key);
    if (strstr(row + 1, head)) fail_msg("docs/configuration.md has two rows for %s", key);
    row++;
    const char *end = strchr(row, '\n');
    size_t len = end ? (size_t)(end - row) : strlen(row);
    char line[2048];
    assert_true(len < sizeof(line));
    memcpy(line, row, len);
    line[len] = '\0';
    char *cells[8];
    int nc = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, "|", &save); t && nc < 8; t = strtok_r(NULL, "|", &save)) {
        trim(t);
        cells[nc++] = t;
    }
    if (nc != 6) fail_msg("row for %s has %d cells, want 6", key, nc);
    config_key_meta_t m;
    assert_int_equal(config_key_meta(key, &m), 0);
    char want[1200];
    if (value[0])
        snprintf(want, sizeof(want), "`%s`", value);
    else
        snprintf(want, sizeof(want), "(none)");
    if (strcmp(cells[1], want) != 0) fail_msg("%s: docs default %s, table %s", key, cells[1], want);
    if (strcmp(cells[2], m.type) != 0)
        fail_msg("%s: docs type %s, table %s", key, cells[2], m.type);
    snprintf(want, sizeof(want), "`%s`", m.env);
    if (strcmp(cells[3], want) != 0) fail_msg("%s: docs env %s, table %s", key, cells[3], want);
    if (strcmp(cells[4], m.reloadable ? "yes" : "restart") != 0)
        fail_msg("%s: docs reload %s, table %s", key, cells[4], m.reloadable ? "yes" : "restart");
    if (strcmp(cells[5], desc) != 0)
        fail_msg("%s: docs description \"%s\", table \"%s\"", key, cells[5], desc);
    d->n++;
}

static void test_docs_cover_every_key(void **state)
{
    (void)state;
    char path[1024];
    source_path("docs/configuration.md", path, sizeof(path));
    char *text = slurp(path);
    hp_config_t c;
    config_defaults(&c);
    docs_t d = {text, 0};
    assert_int_equal(config_foreach(&c, on_doc_key, &d), 0);
    assert_int_equal((size_t)d.n, config_key_count());
    /* and no row for a key that no longer exists */
    int rows = 0;
    for (const char *p = text; (p = strstr(p, "\n| `")); p++)
        rows++;
    assert_int_equal((size_t)rows, config_key_count());
    free(text);
}

static void test_example_config(void **state)
{
    (void)state;
    char path[1024];
    source_path("config/hotplex.example.yaml", path, sizeof(path));
    hp_config_t *c = cfg_new();
    load_ok(c, path);
    char err[512];
    assert_int_equal(config_validate(c, err, sizeof(err)), 0);
    /* it shows the defaults: loading it changes nothing */
    hp_config_t d;
    config_defaults(&d);
    assert_int_equal(config_diff(&d, c, NULL, NULL), 0);
    cfg_del(c);
    /* every key is in it (set or commented out) under its section */
    char *text = slurp(path);
    for (size_t i = 0; i < config_key_count(); i++) {
        const char *k = config_key_name(i);
        const char *dot = strchr(k, '.');
        char sect[64], name[80];
        snprintf(sect, sizeof(sect), "\n%.*s:", (int)(dot - k), k);
        snprintf(name, sizeof(name), " %s:", dot + 1);
        const char *s = strstr(text, sect);
        if (!s) fail_msg("example lacks section %s", sect + 1);
        const char *next = strstr(s + 1, "\n\n");
        const char *hit = strstr(s, name);
        if (!hit || (next && hit > next)) fail_msg("example lacks %s", k);
    }
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_file),
        cmocka_unit_test(test_empty_files),
        cmocka_unit_test(test_list_clear),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_file_io_errors),
        cmocka_unit_test(test_nesting_bounded),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_env_errors),
        cmocka_unit_test(test_config_free),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_diff),
        cmocka_unit_test(test_foreach),
        cmocka_unit_test(test_jwt_secret),
        cmocka_unit_test(test_docs_cover_every_key),
        cmocka_unit_test(test_example_config),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
