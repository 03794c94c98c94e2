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

/* Client-requested agent options against the allow-lists: init.config.model
 * must be in worker.allowed_models and every init.config.allowed_tools entry
 * (comma separated) in worker.allowed_tools, when those lists are set.
 * 0, or -1 with a static reason. */
int policy_agent_options(const hp_config_t *cfg, const char *model, const char *tools,
                         const char **why);

/* An agent executable may be started: `bin` (a path, or a name looked up in
 * PATH) resolves to one of worker.allowed_bins (also resolved), when set.
 * 0, or -1 with a static reason. */
int policy_agent_bin(const hp_config_t *cfg, const char *bin, const char **why);

#endif
