/*
 * env.h - the environment an agent process gets.
 *
 * Agents never inherit the gateway's environment: they get a whitelist
 * (cfg->env_pass names that are set in the gateway's environment), the
 * configured extras, the adapter's extras, and the HOTPLEX_* identity
 * variables, in that order; a later NAME=... replaces an earlier one.
 * CLAUDECODE is always dropped (a CLI that sees it believes it runs nested
 * inside another Claude Code and changes behaviour).
 */
#ifndef HOTPLEX_WORKER_ENV_H
#define HOTPLEX_WORKER_ENV_H

#include "util/config.h"

/* A NULL-terminated, malloc'ed array of malloc'ed "NAME=VALUE" strings for
 * execve (uv_process_options_t.env), or NULL when out of memory.
 * `session_id`, `worker_type` and `extra` may be NULL. Entries without '='
 * or with an empty name are ignored. Free with wkr_env_free. */
char **wkr_env_build(const hp_config_t *cfg, const char *session_id, const char *worker_type,
                     const char *const *extra);

/* Value of NAME in an environment array built above, or NULL. */
const char *wkr_env_get(char *const *env, const char *name);

/* Free a NULL-terminated vector of malloc'd strings (argv, env). */
void wkr_strv_free(char **v);
void wkr_env_free(char **env);

#endif
