/*
 * env.c - builds an agent's environment from a whitelist (see env.h).
 *
 * Owns: the array it returns. Never reads anything but the names it is
 * told to pass, never passes CLAUDECODE.
 */
#include "worker/env.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct envv {
    char **v;
    size_t n, cap;
    int oom;
} envv_t;

static size_t name_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : 0;
}

static int dropped(const char *kv, size_t nl)
{
    return nl == 10 && memcmp(kv, "CLAUDECODE", 10) == 0;
}

/* Takes ownership of `kv` (a malloc'ed "NAME=VALUE"). */
static void envv_put_owned(envv_t *e, char *kv)
{
    size_t nl;
    if (!kv) {
        e->oom = 1;
        return;
    }
    nl = name_len(kv);
    if (nl == 0 || dropped(kv, nl)) {
        free(kv);
        return;
    }
    for (size_t i = 0; i < e->n; i++) {
        if (name_len(e->v[i]) == nl && memcmp(e->v[i], kv, nl) == 0) {
            free(e->v[i]);
            e->v[i] = kv;
            return;
        }
    }
    if (e->n + 1 >= e->cap) {
        size_t ncap = e->cap ? e->cap * 2 : 32;
        char **nv = realloc(e->v, ncap * sizeof(*nv));
        if (!nv) {
            free(kv);
            e->oom = 1;
            return;
        }
        e->v = nv;
        e->cap = ncap;
    }
    e->v[e->n++] = kv;
    e->v[e->n] = NULL;
}

static void envv_put(envv_t *e, const char *kv)
{
    if (kv) envv_put_owned(e, strdup(kv));
}

static void envv_set(envv_t *e, const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 2;
    char *kv = malloc(n);
    if (kv) snprintf(kv, n, "%s=%s", name, value);
    envv_put_owned(e, kv);
}

char **wkr_env_build(const hp_config_t *cfg, const char *session_id, const char *worker_type,
                     const char *const *extra)
{
    envv_t e = {0};

    if (cfg) {
        for (int i = 0; i < cfg->n_env_pass && i < HP_MAX_ENV_EXTRA; i++) {
            const char *name = cfg->env_pass[i];
            const char *val = name && *name && !strchr(name, '=') ? getenv(name) : NULL;
            if (val) envv_set(&e, name, val);
        }
        for (int i = 0; i < cfg->n_env_extra && i < HP_MAX_ENV_EXTRA; i++)
            envv_put(&e, cfg->env_extra[i]);
    }
    for (size_t i = 0; extra && extra[i]; i++)
        envv_put(&e, extra[i]);
    if (session_id) envv_set(&e, "HOTPLEX_SESSION_ID", session_id);
    if (worker_type) envv_set(&e, "HOTPLEX_WORKER_TYPE", worker_type);

    if (!e.oom && !e.v) { /* empty environment: still a valid array */
        e.v = calloc(1, sizeof(*e.v));
        if (!e.v) e.oom = 1;
    }
    if (e.oom) {
        wkr_env_free(e.v);
        return NULL;
    }
    return e.v;
}

const char *wkr_env_get(char *const *env, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; env && env[i]; i++)
        if (strncmp(env[i], name, nl) == 0 && env[i][nl] == '=') return env[i] + nl + 1;
    return NULL;
}

void wkr_strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

void wkr_env_free(char **env)
{
    wkr_strv_free(env);
}
