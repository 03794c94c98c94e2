/*
 * common.h - small pieces the CLI commands share: option parsing, the
 * configuration layers (the same order as `hotplex serve`), exit codes.
 * Must never: print secrets; exit the process (commands return exit codes).
 */
#ifndef HOTPLEX_CLI_COMMON_H
#define HOTPLEX_CLI_COMMON_H

#include <stdbool.h>
#include <stddef.h>

#include "util/config.h"

/* Exit codes shared by the client commands. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Option with a value, as "--name VALUE" or "--name=VALUE". 1: matched, *val
 * set, *i advanced past it; 0: argv[*i] is another option; -1: matched but
 * the value is missing. */
int cli_optval(int argc, char **argv, int *i, const char *name, const char **val);
/* argv[i] is --help or -h */
bool cli_is_help(const char *arg);

/* Command-line layers of a configuration: --config FILE and --set KEY=VALUE. */
typedef struct cli_cfg_args {
    const char *file; /* NULL: $HOTPLEX_CONFIG if set */
    const char *sets[64];
    int nsets;
} cli_cfg_args_t;

/* Handles --config and --set for a command; same contract as cli_optval. */
int cli_cfg_opt(int argc, char **argv, int *i, cli_cfg_args_t *a, char *err, size_t cap);
/* defaults < file (--config or $HOTPLEX_CONFIG) < HOTPLEX_* environment <
 * --set, then config_validate when validate is true. 0 or -1 with err. */
int cli_config_build(hp_config_t *cfg, const cli_cfg_args_t *a, bool validate, char *err,
                     size_t cap);
/* The file the layers use (a->file, else $HOTPLEX_CONFIG, else NULL). */
const char *cli_config_file(const cli_cfg_args_t *a);

/* ANSI styling only when the stream is a terminal and NO_COLOR is unset. */
bool cli_color_ok(int fd);

#endif
