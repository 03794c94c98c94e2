/*
 * common.c - see common.h.
 */
#include "cli/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_optval(int argc, char **argv, int *i, const char *name, const char **val)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0') return 0;
    if (*i + 1 >= argc) return -1;
    *val = argv[++*i];
    return 1;
}

bool cli_is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0 || strcmp(arg, "help") == 0;
}

int cli_cfg_opt(int argc, char **argv, int *i, cli_cfg_args_t *a, char *err, size_t cap)
{
    const char *v = NULL;
    int r = cli_optval(argc, argv, i, "--config", &v);
    if (r == 1) a->file = v;
    if (r != 0) return r;
    r = cli_optval(argc, argv, i, "--set", &v);
    if (r == 1) {
        if (a->nsets >= (int)(sizeof(a->sets) / sizeof(a->sets[0]))) {
            snprintf(err, cap, "too many --set options");
            return -1;
        }
        a->sets[a->nsets++] = v;
    }
    return r;
}

const char *cli_config_file(const cli_cfg_args_t *a)
{
    if (a->file) return a->file;
    const char *e = getenv("HOTPLEX_CONFIG");
    return e && e[0] ? e : NULL;
}

int cli_config_build(hp_config_t *cfg, const cli_cfg_args_t *a, bool validate, char *err,
                     size_t cap)
{
    extern char **environ;
    return config_build(cfg, cli_config_file(a), a->sets, a->nsets, environ, validate, err, cap);
}

bool cli_color_ok(int fd)
{
    const char *nc = getenv("NO_COLOR");
    const char *term = getenv("TERM");
    return isatty(fd) && !(nc && nc[0]) && !(term && strcmp(term, "dumb") == 0);
}
