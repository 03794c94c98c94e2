/*
 * test_config.c - config.h: built-in defaults and config_set for every kind
 * of key (int ranges, size suffixes, strings, HOST:PORT, lists), including
 * the exact error text a user sees.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/config.h"

static hp_config_t *cfg_new(void)
{
    hp_config_t *c = malloc(sizeof(*c));
    assert_non_null(c);
    memset(c, 0xA5, sizeof(*c)); /* defaults must set everything they promise */
    config_defaults(c);
    return c;
}

static void cfg_del(hp_config_t *c)
{
    config_free(c);
    free(c);
}

static void set_ok(hp_config_t *c, const char *key, const char *value)
{
    char err[256] = "";
    int rc = config_set(c, key, value, err, sizeof(err));
    if (rc != 0) fail_msg("config_set(%s, %s) failed: %s", key, value, err);
}

/* Expects failure; returns the message in a static buffer. */
static const char *set_fail(hp_config_t *c, const char *key, const char *value)
{
    static char err[512];
    err[0] = '\0';
    hp_config_t before = *c;
    int rc = config_set(c, key, value, err, sizeof(err));
    if (rc != -1) fail_msg("config_set(%s, %s) accepted", key, value);
    assert_true(strlen(err) > 0);
    /* a failed set changes nothing */
    assert_memory_equal(&before, c, sizeof(before));
    return err;
}

static void test_defaults(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_int_equal(c->listen_port, 8888);
    assert_string_equal(c->data_dir, ".data");
    assert_int_equal(c->max_frame_size, 32768);
    assert_int_equal(c->init_timeout_ms, 30000);
    assert_int_equal(c->ping_interval_ms, 30000);
    assert_int_equal(c->client_timeout_ms, 90000);
    assert_int_equal(c->max_conns_per_session, 8);
    assert_int_equal(c->out_soft_limit, 256 * 1024);
    assert_int_equal(c->out_hard_limit, 8 * 1024 * 1024);
    assert_int_equal(c->session_ring_bytes, 256 * 1024);
    assert_int_equal(c->max_queued_inputs, 64);
    assert_int_equal(c->shutdown_grace_ms, 5000);
    assert_string_equal(c->keys_file, "");
    assert_int_equal(c->n_work_bases, 0);
    assert_string_equal(c->default_work_dir, "/tmp/hotplex/workspace");
    assert_string_equal(c->claude_bin, "claude");
    assert_int_equal(c->agent_stop_grace_ms, 5000);
    assert_int_equal(c->agent_max_line, 10 * 1024 * 1024);
    assert_int_equal(c->permission_timeout_ms, 300000);
    assert_int_equal(c->max_agents, 256);
    assert_int_equal(c->n_env_extra, 0);
    assert_int_equal(c->agent_mem_limit, 0);
    assert_int_equal(c->agent_stderr_keep, 8192);
    assert_int_equal(c->echo_delta_interval_ms, 5);
    /* env_pass: the agent's essentials and nothing of the gateway's secrets */
    assert_true(c->n_env_pass > 0 && c->n_env_pass < HP_MAX_ENV_EXTRA);
    int path = 0, home = 0, key = 0;
    for (int i = 0; i < c->n_env_pass; i++) {
        assert_non_null(c->env_pass[i]);
        if (strcmp(c->env_pass[i], "PATH") == 0) path++;
        if (strcmp(c->env_pass[i], "HOME") == 0) home++;
        if (strcmp(c->env_pass[i], "ANTHROPIC_API_KEY") == 0) key++;
        assert_null(strchr(c->env_pass[i], '='));
    }
    assert_int_equal(path, 1);
    assert_int_equal(home, 1);
    assert_int_equal(key, 1);
    /* defaults are themselves valid settings (round trip through config_set) */
    char v[32];
    snprintf(v, sizeof(v), "%zu", c->max_frame_size);
    set_ok(c, "server.max_frame_size", v);
    snprintf(v, sizeof(v), "%d", c->client_timeout_ms);
    set_ok(c, "server.client_timeout_ms", v);
    cfg_del(c);
}

static void test_int_keys(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    set_ok(c, "server.init_timeout_ms", "100");
    assert_int_equal(c->init_timeout_ms, 100);
    set_ok(c, "server.init_timeout_ms", "50"); /* min */
    assert_int_equal(c->init_timeout_ms, 50);
    set_ok(c, "server.init_timeout_ms", "3600000"); /* max */
    assert_int_equal(c->init_timeout_ms, 3600000);
    set_ok(c, "server.ping_interval_ms", "0");
    assert_int_equal(c->ping_interval_ms, 0);
    set_ok(c, "server.client_timeout_ms", "1000");
    assert_int_equal(c->client_timeout_ms, 1000);
    set_ok(c, "server.shutdown_grace_ms", "600000");
    assert_int_equal(c->shutdown_grace_ms, 600000);
    set_ok(c, "session.max_conns", "1");
    assert_int_equal(c->max_conns_per_session, 1);
    set_ok(c, "session.max_queued_inputs", "100000");
    assert_int_equal(c->max_queued_inputs, 100000);
    set_ok(c, "worker.stop_grace_ms", "0");
    assert_int_equal(c->agent_stop_grace_ms, 0);
    set_ok(c, "worker.permission_timeout_ms", "100");
    assert_int_equal(c->permission_timeout_ms, 100);
    set_ok(c, "worker.max_agents", "0");
    assert_int_equal(c->max_agents, 0);
    set_ok(c, "echo.delta_interval_ms", "0");
    assert_int_equal(c->echo_delta_interval_ms, 0);
    set_ok(c, "echo.delta_interval_ms", "60000");
    assert_int_equal(c->echo_delta_interval_ms, 60000);

    /* range errors name the key, the value and the range */
    const char *e = set_fail(c, "server.init_timeout_ms", "49");
    assert_string_equal(
        e, "server.init_timeout_ms: invalid value \"49\" (an integer from 50 to 3600000)");
    e = set_fail(c, "server.init_timeout_ms", "3600001");
    assert_non_null(strstr(e, "server.init_timeout_ms"));
    assert_non_null(strstr(e, "\"3600001\""));
    assert_non_null(strstr(e, "50 to 3600000"));
    e = set_fail(c, "session.max_conns", "0");
    assert_string_equal(e, "session.max_conns: invalid value \"0\" (an integer from 1 to 1024)");
    e = set_fail(c, "session.max_conns", "-3");
    assert_non_null(strstr(e, "\"-3\""));
    e = set_fail(c, "echo.delta_interval_ms", "60001");
    assert_non_null(strstr(e, "0 to 60000"));
    /* not numbers */
    set_fail(c, "server.init_timeout_ms", "");
    set_fail(c, "server.init_timeout_ms", "abc");
    set_fail(c, "server.init_timeout_ms", "100ms");
    set_fail(c, "server.init_timeout_ms", "1.5");
    set_fail(c, "server.init_timeout_ms", "100 ");
    set_fail(c, "server.init_timeout_ms", "0x64");
    set_fail(c, "server.init_timeout_ms", "+100");
    set_fail(c, "server.init_timeout_ms", " 100");
    set_fail(c, "server.init_timeout_ms", "1k"); /* suffixes are for byte sizes only */
    set_fail(c, "server.init_timeout_ms", "99999999999999999999999");
    set_fail(c, "server.init_timeout_ms", "-99999999999999999999999");
    /* beyond int but within long long: still a range error, never truncated */
    e = set_fail(c, "worker.max_agents", "4294967296");
    assert_non_null(strstr(e, "0 to 1000000"));
    assert_int_equal(c->max_agents, 0);
    cfg_del(c);
}

static void test_size_keys(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    set_ok(c, "server.max_frame_size", "65536");
    assert_int_equal(c->max_frame_size, 65536);
    set_ok(c, "server.max_frame_size", "64k");
    assert_int_equal(c->max_frame_size, 64 * 1024);
    set_ok(c, "server.max_frame_size", "64K");
    assert_int_equal(c->max_frame_size, 64 * 1024);
    set_ok(c, "server.max_frame_size", "1m");
    assert_int_equal(c->max_frame_size, 1024 * 1024);
    set_ok(c, "server.max_frame_size", "64M"); /* max */
    assert_int_equal(c->max_frame_size, 64u << 20);
    set_ok(c, "server.max_frame_size", "256"); /* min */
    assert_int_equal(c->max_frame_size, 256);
    set_ok(c, "session.out_hard_limit", "1g");
    assert_true(c->out_hard_limit == (size_t)1 << 30);
    set_ok(c, "session.out_hard_limit", "16G"); /* max 1 << 34 */
    assert_true(c->out_hard_limit == (size_t)16 << 30);
    set_ok(c, "session.out_soft_limit", "1k");
    assert_int_equal(c->out_soft_limit, 1024);
    set_ok(c, "session.ring_bytes", "0");
    assert_int_equal(c->session_ring_bytes, 0);
    set_ok(c, "worker.max_line", "4k");
    assert_int_equal(c->agent_max_line, 4096);
    set_ok(c, "worker.mem_limit", "512m");
    assert_true(c->agent_mem_limit == (size_t)512 << 20);
    set_ok(c, "worker.mem_limit", "1024g"); /* max 1 << 40 */
    assert_true(c->agent_mem_limit == (size_t)1 << 40);

    const char *e = set_fail(c, "server.max_frame_size", "1g");
    assert_string_equal(
        e, "server.max_frame_size: invalid value \"1g\" (an integer from 256 to 67108864)");
    e = set_fail(c, "server.max_frame_size", "255");
    assert_non_null(strstr(e, "\"255\""));
    set_fail(c, "server.max_frame_size", "65M");
    set_fail(c, "server.max_frame_size", "64kb");
    set_fail(c, "server.max_frame_size", "64 k");
    set_fail(c, "server.max_frame_size", "k");
    set_fail(c, "server.max_frame_size", "64t");
    set_fail(c, "session.out_hard_limit", "17g");
    set_fail(c, "worker.max_line", "4095");
    set_fail(c, "worker.mem_limit", "1025g");
    cfg_del(c);
}

/* A value whose suffix shift overflows long long must be rejected cleanly
 * (under UBSan a signed-shift overflow aborts the process). */
static void test_size_suffix_overflow(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    set_fail(c, "server.max_frame_size", "9223372036854775807k");
    set_fail(c, "worker.mem_limit", "17179869184g"); /* 2^34 g = 2^64 */
    set_fail(c, "worker.mem_limit", "8589934592g");  /* 2^33 g = 2^63 */
    set_fail(c, "worker.mem_limit", "-9223372036854775807g");
    set_fail(c, "server.max_frame_size", "-1k"); /* shifting a negative value is UB too */
    cfg_del(c);
}

static void test_string_keys(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    set_ok(c, "server.data_dir", "/var/lib/hotplex");
    assert_string_equal(c->data_dir, "/var/lib/hotplex");
    set_ok(c, "server.data_dir", "");
    assert_string_equal(c->data_dir, "");
    set_ok(c, "worker.default_work_dir", "/srv/work");
    assert_string_equal(c->default_work_dir, "/srv/work");
    set_ok(c, "worker.claude_bin", "/usr/local/bin/claude");
    assert_string_equal(c->claude_bin, "/usr/local/bin/claude");

    /* exactly cap-1 bytes fit, cap bytes do not */
    char v[1100];
    memset(v, 'd', 1023);
    v[1023] = '\0';
    set_ok(c, "server.data_dir", v);
    assert_int_equal(strlen(c->data_dir), 1023);
    memset(v, 'e', 1024);
    v[1024] = '\0';
    const char *e = set_fail(c, "server.data_dir", v);
    assert_string_equal(e, "server.data_dir: value too long (at most 1023 bytes)");
    assert_int_equal(c->data_dir[0], 'd'); /* unchanged */
    e = set_fail(c, "worker.claude_bin", v);
    assert_non_null(strstr(e, "worker.claude_bin"));
    cfg_del(c);
}

static void test_listen(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    set_ok(c, "server.listen", "0.0.0.0:9000");
    assert_string_equal(c->listen_host, "0.0.0.0");
    assert_int_equal(c->listen_port, 9000);
    set_ok(c, "server.listen", "localhost:0"); /* 0: any free port */
    assert_string_equal(c->listen_host, "localhost");
    assert_int_equal(c->listen_port, 0);
    set_ok(c, "server.listen", "127.0.0.1:65535");
    assert_int_equal(c->listen_port, 65535);
    set_ok(c, "server.listen", "::1:8080"); /* the last colon separates the port */
    assert_string_equal(c->listen_host, "::1");
    assert_int_equal(c->listen_port, 8080);
    set_ok(c, "server.listen", "[::]:80");
    assert_string_equal(c->listen_host, "[::]");
    assert_int_equal(c->listen_port, 80);
    /* host of exactly 63 bytes fits, 64 does not */
    char v[128];
    memset(v, 'h', 63);
    snprintf(v + 63, sizeof(v) - 63, ":1");
    set_ok(c, "server.listen", v);
    assert_int_equal(strlen(c->listen_host), 63);
    assert_int_equal(c->listen_port, 1);
    memset(v, 'h', 64);
    snprintf(v + 64, sizeof(v) - 64, ":1");
    set_fail(c, "server.listen", v);

    const char *e = set_fail(c, "server.listen", "127.0.0.1:65536");
    assert_string_equal(e, "server.listen: invalid value \"127.0.0.1:65536\" (HOST:PORT, port "
                           "0-65535)");
    set_fail(c, "server.listen", "127.0.0.1");
    set_fail(c, "server.listen", ":8080");
    set_fail(c, "server.listen", "127.0.0.1:");
    set_fail(c, "server.listen", "127.0.0.1:-1");
    set_fail(c, "server.listen", "127.0.0.1:http");
    set_fail(c, "server.listen", "127.0.0.1:80x");
    set_fail(c, "server.listen", "127.0.0.1:8 0");
    set_fail(c, "server.listen", "127.0.0.1:+80");
    set_fail(c, "server.listen", "127.0.0.1: 80");
    set_fail(c, "server.listen", "");
    assert_string_equal(c->listen_host,
                        "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh");
    cfg_del(c);
}

/* A port is a plain number: size suffixes belong to byte sizes only. */
static void test_listen_port_no_suffix(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    set_fail(c, "server.listen", "127.0.0.1:1k");
    set_fail(c, "server.listen", "127.0.0.1:8k");
    cfg_del(c);
}

static void test_list_keys(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    const char *a = "/srv/a", *b = "/srv/b";
    set_ok(c, "worker.work_bases", a);
    set_ok(c, "worker.work_bases", b);
    assert_int_equal(c->n_work_bases, 2);
    assert_ptr_equal(c->work_bases[0], a); /* not copied: the caller keeps it alive */
    assert_ptr_equal(c->work_bases[1], b);

    set_ok(c, "worker.env", "FOO=1");
    assert_int_equal(c->n_env_extra, 1);
    assert_string_equal(c->env_extra[0], "FOO=1");

    int n = c->n_env_pass;
    set_ok(c, "worker.env_pass", "MY_VAR");
    assert_int_equal(c->n_env_pass, n + 1);
    assert_string_equal(c->env_pass[n], "MY_VAR");
    assert_string_equal(c->env_pass[0], "PATH"); /* appended, defaults kept */

    /* bounded */
    for (int i = c->n_env_extra; i < HP_MAX_ENV_EXTRA; i++)
        set_ok(c, "worker.env", "X=1");
    assert_int_equal(c->n_env_extra, HP_MAX_ENV_EXTRA);
    const char *e = set_fail(c, "worker.env", "Y=2");
    assert_string_equal(e, "worker.env: too many entries (at most 32)");
    assert_int_equal(c->n_env_extra, HP_MAX_ENV_EXTRA);
    /* the other lists are independent */
    assert_int_equal(c->n_work_bases, 2);
    cfg_del(c);
}

static void test_unknown_key(void **state)
{
    (void)state;
    hp_config_t *c = cfg_new();
    const char *e = set_fail(c, "nope.x", "1");
    assert_string_equal(e, "unknown setting \"nope.x\"");
    e = set_fail(c, "", "1");
    assert_string_equal(e, "unknown setting \"\"");
    set_fail(c, "server", "1");
    set_fail(c, "server.listen ", "127.0.0.1:1");
    set_fail(c, "SERVER.LISTEN", "127.0.0.1:1");
    set_fail(c, "max_frame_size", "1k");
    /* a short error buffer is truncated, never overrun */
    char small[8];
    memset(small, 'Z', sizeof(small));
    assert_int_equal(config_set(c, "nope.x", "1", small, sizeof(small)), -1);
    assert_int_equal(small[7], '\0');
    assert_string_equal(small, "unknown");
    cfg_del(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_int_keys),
        cmocka_unit_test(test_size_keys),
        cmocka_unit_test(test_size_suffix_overflow),
        cmocka_unit_test(test_string_keys),
        cmocka_unit_test(test_listen),
        cmocka_unit_test(test_listen_port_no_suffix),
        cmocka_unit_test(test_list_keys),
        cmocka_unit_test(test_unknown_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
