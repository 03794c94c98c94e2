/*
 * test_env.c - the agent environment whitelist (worker/env.c).
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
#include "worker/env.h"

static size_t count(char **env)
{
    size_t n = 0;
    while (env[n])
        n++;
    return n;
}

static size_t occurrences(char **env, const char *name)
{
    size_t n = 0, nl = strlen(name);
    for (size_t i = 0; env[i]; i++)
        n += strncmp(env[i], name, nl) == 0 && env[i][nl] == '=';
    return n;
}

static void test_whitelist(void **state)
{
    (void)state;
    hp_config_t cfg;
    config_defaults(&cfg);
    setenv("PATH", "/usr/bin:/bin", 1);
    setenv("HOME", "/home/agent", 1);
    setenv("ANTHROPIC_API_KEY", "sk-test", 1);
    setenv("HOTPLEX_SECRET_TOKEN", "must-not-leak", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "must-not-leak", 1);
    setenv("CLAUDECODE", "1", 1);
    unsetenv("TZ");

    char **env = wkr_env_build(&cfg, "sess-1", "claude_code", NULL);
    assert_non_null(env);
    assert_string_equal(wkr_env_get(env, "PATH"), "/usr/bin:/bin");
    assert_string_equal(wkr_env_get(env, "HOME"), "/home/agent");
    assert_string_equal(wkr_env_get(env, "ANTHROPIC_API_KEY"), "sk-test");
    assert_null(wkr_env_get(env, "HOTPLEX_SECRET_TOKEN"));  /* not listed */
    assert_null(wkr_env_get(env, "AWS_SECRET_ACCESS_KEY")); /* not listed */
    assert_null(wkr_env_get(env, "CLAUDECODE"));
    assert_null(wkr_env_get(env, "TZ")); /* listed but unset: absent, not empty */
    assert_string_equal(wkr_env_get(env, "HOTPLEX_SESSION_ID"), "sess-1");
    assert_string_equal(wkr_env_get(env, "HOTPLEX_WORKER_TYPE"), "claude_code");
    for (size_t i = 0; env[i]; i++)
        assert_non_null(strchr(env[i], '='));
    wkr_env_free(env);
}

static void test_overrides_and_claudecode(void **state)
{
    (void)state;
    hp_config_t cfg;
    config_defaults(&cfg);
    setenv("HOME", "/home/gateway", 1);
    setenv("LANG", "C.UTF-8", 1);
    setenv("CLAUDECODE", "1", 1);
    /* even if an operator lists it, CLAUDECODE never reaches an agent */
    cfg.env_pass[cfg.n_env_pass++] = "CLAUDECODE";
    cfg.env_extra[cfg.n_env_extra++] = "HOME=/srv/agent-home";
    cfg.env_extra[cfg.n_env_extra++] = "CLAUDECODE=1";
    cfg.env_extra[cfg.n_env_extra++] = "MY_FLAG=from-config";
    cfg.env_extra[cfg.n_env_extra++] = "no_equals_sign";
    cfg.env_extra[cfg.n_env_extra++] = "=empty-name";
    cfg.env_extra[cfg.n_env_extra++] = "HOTPLEX_SESSION_ID=spoofed";
    const char *extra[] = {"MY_FLAG=from-adapter", "IS_SANDBOX=1", "EMPTY=", "CLAUDECODE=x", NULL};

    char **env = wkr_env_build(&cfg, "sess-2", "claude_code", extra);
    assert_non_null(env);
    assert_string_equal(wkr_env_get(env, "HOME"), "/srv/agent-home"); /* extra beats pass */
    assert_string_equal(wkr_env_get(env, "LANG"), "C.UTF-8");
    assert_string_equal(wkr_env_get(env, "MY_FLAG"), "from-adapter"); /* adapter beats config */
    assert_string_equal(wkr_env_get(env, "IS_SANDBOX"), "1");
    assert_string_equal(wkr_env_get(env, "EMPTY"), "");
    assert_string_equal(wkr_env_get(env, "HOTPLEX_SESSION_ID"), "sess-2"); /* identity last */
    assert_null(wkr_env_get(env, "CLAUDECODE"));
    assert_null(wkr_env_get(env, "no_equals_sign"));
    assert_int_equal(occurrences(env, "HOME"), 1);
    assert_int_equal(occurrences(env, "MY_FLAG"), 1);
    assert_int_equal(occurrences(env, "HOTPLEX_SESSION_ID"), 1);
    for (size_t i = 0; env[i]; i++) {
        assert_int_not_equal(env[i][0], '=');
        assert_non_null(strchr(env[i], '='));
    }
    wkr_env_free(env);
}

static void test_empty(void **state)
{
    (void)state;
    hp_config_t cfg;
    memset(&cfg, 0, sizeof(cfg)); /* nothing to pass */
    char **env = wkr_env_build(&cfg, NULL, NULL, NULL);
    assert_non_null(env);
    assert_int_equal(count(env), 0);
    wkr_env_free(env);
    env = wkr_env_build(NULL, "s", "echo", NULL);
    assert_non_null(env);
    assert_int_equal(count(env), 2);
    assert_string_equal(wkr_env_get(env, "HOTPLEX_WORKER_TYPE"), "echo");
    wkr_env_free(env);
    wkr_env_free(NULL);
}

static void test_many(void **state)
{
    (void)state;
    hp_config_t cfg;
    config_defaults(&cfg);
    char *names[100];
    const char *extra[101];
    for (int i = 0; i < 100; i++) {
        names[i] = malloc(32);
        snprintf(names[i], 32, "VAR_%d=%d", i % 50, i); /* each name twice */
        extra[i] = names[i];
    }
    extra[100] = NULL;
    char **env = wkr_env_build(&cfg, "s", "t", extra);
    assert_non_null(env);
    assert_string_equal(wkr_env_get(env, "VAR_7"), "57");
    assert_int_equal(occurrences(env, "VAR_7"), 1);
    size_t vars = 0;
    for (size_t i = 0; env[i]; i++)
        vars += strncmp(env[i], "VAR_", 4) == 0;
    assert_int_equal(vars, 50);
    wkr_env_free(env);
    for (int i = 0; i < 100; i++)
        free(names[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whitelist),
        cmocka_unit_test(test_overrides_and_claudecode),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
