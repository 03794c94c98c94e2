/*
 * config_cmd.c - `hotplex config check FILE` and `hotplex config show`: the
 * configuration layers of `serve`, checked or printed. Secrets (keys flagged
 * secret by config_foreach, the JWT secret) are never printed, only whether
 * they are set.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"

static const char usage[] =
    "usage: hotplex config check FILE [--set KEY=VALUE ...]\n"
    "       hotplex config show [--config FILE] [--set KEY=VALUE ...]\n"
    "\n"
    "check  loads FILE like `hotplex serve --config FILE` would (built-in defaults, the file,\n"
    "       then HOTPLEX_<SECTION>_<KEY> environment variables and --set), validates the\n"
    "       result and prints \"ok\", or the first problem as FILE:LINE:COL: key: rule.\n"
    "show   prints every setting as `key = value` after all layers (--config or\n"
    "       $HOTPLEX_CONFIG, environment, --set); values that may hold credentials\n"
    "       are shown as ***. Problems found by validation are printed on stderr.\n"
    "\n"
    "exit status: 0 ok, 1 the configuration is invalid, 2 usage error.\n"
    "docs/configuration.md lists every key.\n";

static int config_check(int argc, char **argv)
{
    cli_cfg_args_t a = {0};
    const char *file = NULL;
    char err[1024];
    for (int i = 3; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(usage, stdout);
            return CLI_OK;
        }
        int r = cli_cfg_opt(argc, argv, &i, &a, err, sizeof(err));
        if (r == 1) continue;
        if (r == 0 && argv[i][0] != '-' && !file) {
            file = argv[i];
            continue;
        }
        fprintf(stderr, "hotplex config check: unknown or incomplete option \"%s\"\n\n%s", argv[i],
                usage);
        return CLI_USAGE;
    }
    if (!file) file = a.file;
    if (!file) {
        fprintf(stderr, "hotplex config check: which FILE?\n\n%s", usage);
        return CLI_USAGE;
    }
    a.file = file;
    static hp_config_t cfg;
    int rc = cli_config_build(&cfg, &a, false, err, sizeof(err));
    if (rc == 0 && config_validate(&cfg, err, sizeof(err)) < 0) {
        /* cross-key problems have no line: name the file */
        fprintf(stderr, "%s: %s\n", file, err);
        config_free(&cfg);
        return CLI_FAIL;
    }
    config_free(&cfg);
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        return CLI_FAIL;
    }
    puts("ok");
    return CLI_OK;
}

static void show_one(void *arg, const char *key, const char *value, const char *desc, bool secret)
{
    (void)arg;
    (void)desc;
    if (secret && value[0]) value = "***";
    printf("%s = %s\n", key, value);
}

static int config_show(int argc, char **argv)
{
    extern char **environ;
    cli_cfg_args_t a = {0};
    char err[1024];
    for (int i = 3; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(usage, stdout);
            return CLI_OK;
        }
        int r = cli_cfg_opt(argc, argv, &i, &a, err, sizeof(err));
        if (r == 1) continue;
        fprintf(stderr, "hotplex config show: unknown or incomplete option \"%s\"\n\n%s", argv[i],
                usage);
        return CLI_USAGE;
    }
    static hp_config_t cfg;
    if (cli_config_build(&cfg, &a, false, err, sizeof(err)) < 0) {
        fprintf(stderr, "hotplex config show: %s\n", err);
        config_free(&cfg);
        return CLI_FAIL;
    }
    const char *file = cli_config_file(&a);
    printf("# hotplex %s effective configuration (defaults < %s < environment < --set)\n",
           HOTPLEX_VERSION, file ? file : "no file");
    if (config_foreach(&cfg, show_one, NULL) < 0) {
        fprintf(stderr, "hotplex config show: out of memory\n");
        config_free(&cfg);
        return CLI_FAIL;
    }
    char secret[1024];
    int have = config_jwt_secret(&cfg, environ, secret, sizeof(secret), err, sizeof(err));
    memset(secret, 0, sizeof(secret));
    if (have > 0)
        printf("# JWT HS256 secret: set (%s)\n",
               getenv(HP_CONFIG_JWT_SECRET_ENV) && getenv(HP_CONFIG_JWT_SECRET_ENV)[0]
                   ? HP_CONFIG_JWT_SECRET_ENV
                   : "auth.jwt_secret_file");
    else if (have == 0)
        printf("# JWT HS256 secret: not set\n");
    else
        printf("# JWT HS256 secret: unreadable (%s)\n", err);
    int rc = CLI_OK;
    if (config_validate(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "hotplex config show: invalid configuration: %s\n", err);
        rc = CLI_FAIL;
    }
    config_free(&cfg);
    return rc;
}

int cmd_config(int argc, char **argv)
{
    const char *sub = argc > 2 ? argv[2] : NULL;
    if (!sub) {
        fputs(usage, stderr);
        return CLI_USAGE;
    }
    if (cli_is_help(sub)) {
        fputs(usage, stdout);
        return CLI_OK;
    }
    if (strcmp(sub, "check") == 0) return config_check(argc, argv);
    if (strcmp(sub, "show") == 0) return config_show(argc, argv);
    fprintf(stderr, "hotplex config: unknown subcommand \"%s\"\n\n%s", sub, usage);
    return CLI_USAGE;
}
