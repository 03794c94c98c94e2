/*
 * policy.h - checks applied before the gateway acts for a user: where an
 * agent may run. Pure functions over the configuration (and the file system
 * for resolving paths).
 */
#ifndef HOTPLEX_POLICY_H
#define HOTPLEX_POLICY_H

#include <stddef.h>

#include "util/config.h"

/* Resolve a requested work dir: absolute, normalised, created if missing,
 * symlinks resolved, never a system directory, inside the allowed bases when
 * any are configured. Writes the resolved path to out. Returns 0 or -1 with
 * a static reason in *why. */
int policy_work_dir(const hp_config_t *cfg, const char *requested, char *out, size_t cap,
                    const char **why);

#endif
