/*
 * config.c - built-in defaults. Loading a file and environment overrides
 * come later; the defaults are what `hotplex serve` runs with out of the box.
 */
#include "util/config.h"

#include <stdio.h>
#include <string.h>

void config_defaults(hp_config_t *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->listen_host, sizeof(c->listen_host), "127.0.0.1");
    c->listen_port = 8888;
    snprintf(c->data_dir, sizeof(c->data_dir), ".data");
    c->max_frame_size = 32768;
    c->init_timeout_ms = 30000;
    c->ping_interval_ms = 30000;
    c->client_timeout_ms = 90000;
    c->max_conns_per_session = 8;
    c->out_soft_limit = 256 * 1024;
    c->out_hard_limit = 8 * 1024 * 1024;
    c->session_ring_bytes = 256 * 1024;
    c->max_queued_inputs = 64;
    c->shutdown_grace_ms = 5000;
    snprintf(c->default_work_dir, sizeof(c->default_work_dir), "/tmp/hotplex/workspace");
    snprintf(c->claude_bin, sizeof(c->claude_bin), "claude");
    c->agent_stop_grace_ms = 5000;
    c->agent_max_line = 10 * 1024 * 1024;
    c->permission_timeout_ms = 300000;
    c->max_agents = 256;
    c->echo_delta_interval_ms = 5;
    c->agent_mem_limit = 0;
    c->agent_stderr_keep = 8192;
    /* What an agent needs to find its tools and its credentials; nothing else
     * of the gateway's environment leaks into agents. */
    static const char *pass[] = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ",
                                 "TMPDIR", "SHELL", "TERM", "ANTHROPIC_API_KEY",
                                 "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL",
                                 "CLAUDE_CONFIG_DIR", "DISABLE_TELEMETRY",
                                 "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"};
    for (size_t i = 0; i < sizeof(pass) / sizeof(pass[0]); i++)
        c->env_pass[c->n_env_pass++] = pass[i];
}

/* ---- key table: one place that names every setting ------------------- */

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>

typedef enum { K_INT, K_SIZE, K_STR, K_LISTEN, K_LIST } key_kind_t;

typedef struct key_def {
    const char *name;
    key_kind_t kind;
    size_t off;
    size_t cap;        /* K_STR: buffer size; K_LIST: offset of the count */
    long long min, max;
} key_def_t;

#define F(field) offsetof(hp_config_t, field)
static const key_def_t keys[] = {
    {"server.listen", K_LISTEN, 0, 0, 0, 0},
    {"server.data_dir", K_STR, F(data_dir), sizeof(((hp_config_t *)0)->data_dir), 0, 0},
    {"server.max_frame_size", K_SIZE, F(max_frame_size), 0, 256, 64LL << 20},
    {"server.init_timeout_ms", K_INT, F(init_timeout_ms), 0, 50, 3600000},
    {"server.ping_interval_ms", K_INT, F(ping_interval_ms), 0, 0, 3600000},
    {"server.client_timeout_ms", K_INT, F(client_timeout_ms), 0, 1000, 86400000},
    {"server.shutdown_grace_ms", K_INT, F(shutdown_grace_ms), 0, 0, 600000},
    {"session.max_conns", K_INT, F(max_conns_per_session), 0, 1, 1024},
    {"session.out_soft_limit", K_SIZE, F(out_soft_limit), 0, 1024, 1LL << 34},
    {"session.out_hard_limit", K_SIZE, F(out_hard_limit), 0, 4096, 1LL << 34},
    {"session.ring_bytes", K_SIZE, F(session_ring_bytes), 0, 0, 1LL << 34},
    {"session.max_queued_inputs", K_INT, F(max_queued_inputs), 0, 1, 100000},
    {"worker.default_work_dir", K_STR, F(default_work_dir), sizeof(((hp_config_t *)0)->default_work_dir), 0, 0},
    {"worker.work_bases", K_LIST, F(work_bases), F(n_work_bases), 0, 0},
    {"worker.claude_bin", K_STR, F(claude_bin), sizeof(((hp_config_t *)0)->claude_bin), 0, 0},
    {"worker.stop_grace_ms", K_INT, F(agent_stop_grace_ms), 0, 0, 600000},
    {"worker.max_line", K_SIZE, F(agent_max_line), 0, 4096, 1LL << 30},
    {"worker.permission_timeout_ms", K_INT, F(permission_timeout_ms), 0, 100, 86400000},
    {"worker.max_agents", K_INT, F(max_agents), 0, 0, 1000000},
    {"worker.mem_limit", K_SIZE, F(agent_mem_limit), 0, 0, 1LL << 40},
    {"worker.env", K_LIST, F(env_extra), F(n_env_extra), 0, 0},
    {"worker.env_pass", K_LIST, F(env_pass), F(n_env_pass), 0, 0},
    {"echo.delta_interval_ms", K_INT, F(echo_delta_interval_ms), 0, 0, 60000},
};
#undef F

static int parse_ll(const char *v, long long *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v) return -1;
    /* size suffixes: k, m, g (binary) */
    if (*end == 'k' || *end == 'K') x <<= 10, end++;
    else if (*end == 'm' || *end == 'M') x <<= 20, end++;
    else if (*end == 'g' || *end == 'G') x <<= 30, end++;
    if (*end) return -1;
    *out = x;
    return 0;
}

int config_set(hp_config_t *c, const char *key, const char *value, char *err, size_t cap)
{
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const key_def_t *k = &keys[i];
        if (strcmp(k->name, key) != 0) continue;
        char *base = (char *)c;
        long long x;
        switch (k->kind) {
        case K_INT:
        case K_SIZE:
            if (parse_ll(value, &x) < 0 || x < k->min || x > k->max) {
                snprintf(err, cap, "%s: invalid value \"%s\" (an integer from %lld to %lld)",
                         key, value, k->min, k->max);
                return -1;
            }
            if (k->kind == K_INT) *(int *)(base + k->off) = (int)x;
            else *(size_t *)(base + k->off) = (size_t)x;
            return 0;
        case K_STR:
            if (strlen(value) >= k->cap) {
                snprintf(err, cap, "%s: value too long (at most %zu bytes)", key, k->cap - 1);
                return -1;
            }
            memcpy(base + k->off, value, strlen(value) + 1);
            return 0;
        case K_LIST: {
            int *n = (int *)(base + k->cap);
            const char **arr = (const char **)(base + k->off);
            if (*n >= HP_MAX_ENV_EXTRA) {
                snprintf(err, cap, "%s: too many entries (at most %d)", key, HP_MAX_ENV_EXTRA);
                return -1;
            }
            arr[(*n)++] = value; /* the caller keeps value alive (argv / config text) */
            return 0;
        }
        case K_LISTEN: {
            const char *colon = strrchr(value, ':');
            if (!colon || colon == value || (size_t)(colon - value) >= sizeof(c->listen_host) ||
                parse_ll(colon + 1, &x) < 0 || x < 0 || x > 65535) {
                snprintf(err, cap, "%s: invalid value \"%s\" (HOST:PORT, port 0-65535)", key,
                         value);
                return -1;
            }
            memcpy(c->listen_host, value, (size_t)(colon - value));
            c->listen_host[colon - value] = '\0';
            c->listen_port = (int)x;
            return 0;
        }
        }
    }
    snprintf(err, cap, "unknown setting \"%s\"", key);
    return -1;
}
