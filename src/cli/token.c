/*
 * token.c - `hotplex token`: mints an HS256 JWT the gateway accepts, with the
 * secret the gateway itself would use (HOTPLEX_JWT_SECRET, else the file named
 * by auth.jwt_secret_file, through the same configuration layers as `serve`)
 * and its aud/iss/bot_id. Prints the token and nothing else on stdout; never
 * prints the secret.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "cli/cli.h"
#include "cli/common.h"

static const char usage[] =
    "usage: hotplex token --user USER [--bot BOT_ID] [--ttl SECONDS] [--config FILE]\n"
    "                     [--set KEY=VALUE ...]\n"
    "\n"
    "Prints an HS256 JWT for USER that the gateway accepts (sub = USER, iat = now,\n"
    "exp = now + SECONDS; aud, iss and bot_id as configured).\n"
    "  --user USER     the identity (sub claim): 1..127 printable characters\n"
    "  --bot BOT_ID    bot_id claim (default: auth.bot_id, if set)\n"
    "  --ttl SECONDS   lifetime, default 3600; 0 = no expiry\n"
    "  --config FILE   configuration as for `hotplex serve` (also $HOTPLEX_CONFIG);\n"
    "                  HOTPLEX_* environment variables and --set apply on top\n"
    "The secret comes from $HOTPLEX_JWT_SECRET, else from the file named by\n"
    "auth.jwt_secret_file; it must be at least 32 bytes.\n"
    "\n"
    "exit status: 0 printed, 1 no secret or the token could not be made, 2 usage error.\n"
    "example: hotplex chat --token \"$(hotplex token --user alice --ttl 600)\"\n";

int cmd_token(int argc, char **argv)
{
    extern char **environ;
    cli_cfg_args_t a = {0};
    const char *user = NULL, *bot = NULL, *ttl_s = "3600";
    char err[1024];
    for (int i = 2; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(usage, stdout);
            return CLI_OK;
        }
        int r = cli_optval(argc, argv, &i, "--user", &user);
        if (r == 0) r = cli_optval(argc, argv, &i, "--bot", &bot);
        if (r == 0) r = cli_optval(argc, argv, &i, "--ttl", &ttl_s);
        if (r == 0) r = cli_cfg_opt(argc, argv, &i, &a, err, sizeof(err));
        if (r == 1) continue;
        fprintf(stderr, "hotplex token: unknown or incomplete option \"%s\"\n\n%s", argv[i], usage);
        return CLI_USAGE;
    }
    if (!user || !user[0]) {
        fprintf(stderr, "hotplex token: --user is required\n\n%s", usage);
        return CLI_USAGE;
    }
    char *end = NULL;
    errno = 0;
    long ttl = strtol(ttl_s, &end, 10);
    if (errno || !end || *end || end == ttl_s || ttl < 0 || ttl > INT_MAX) {
        fprintf(stderr, "hotplex token: --ttl wants seconds (0 or more), got \"%s\"\n", ttl_s);
        return CLI_USAGE;
    }

    static hp_config_t cfg;
    if (cli_config_build(&cfg, &a, false, err, sizeof(err)) < 0) {
        fprintf(stderr, "hotplex token: %s\n", err);
        config_free(&cfg);
        return CLI_FAIL;
    }
    char secret[1024];
    int have = config_jwt_secret(&cfg, environ, secret, sizeof(secret), err, sizeof(err));
    if (have <= 0) {
        if (have == 0)
            fprintf(stderr,
                    "hotplex token: no JWT secret configured: set %s (at least %d bytes) or "
                    "auth.jwt_secret_file to the secret the gateway uses\n",
                    HP_CONFIG_JWT_SECRET_ENV, AUTH_MIN_SECRET_LEN);
        else
            fprintf(stderr, "hotplex token: %s\n", err);
        config_free(&cfg);
        return CLI_FAIL;
    }
    auth_opts_t o = {
        .jwt_secret = secret,
        .jwt_audience = cfg.jwt_audience,
        .jwt_issuer = cfg.jwt_issuer,
        .bot_id = cfg.bot_id,
        .clock_skew_s = cfg.jwt_clock_skew_s,
    };
    auth_t *auth = NULL;
    int rc = auth_new(&auth, &o, err, sizeof(err));
    memset(secret, 0, sizeof(secret));
    if (rc < 0) {
        fprintf(stderr, "hotplex token: %s\n", err);
        config_free(&cfg);
        return CLI_FAIL;
    }
    char tok[AUTH_MAX_CREDENTIAL];
    rc = auth_mint(auth, user, bot, (int)ttl, tok, sizeof(tok));
    auth_free(auth);
    config_free(&cfg);
    if (rc < 0) {
        if (rc == -EINVAL)
            fprintf(stderr,
                    "hotplex token: cannot mint: user \"%s\"%s%s%s is not a valid identity "
                    "(1..127 printable characters)\n",
                    user, bot ? " or bot \"" : "", bot ? bot : "", bot ? "\"" : "");
        else
            fprintf(stderr, "hotplex token: cannot mint: %s\n", strerror(-rc));
        return CLI_FAIL;
    }
    puts(tok);
    return CLI_OK;
}
