/*
 * config.h - the gateway's settings, one struct, filled from built-in
 * defaults (config_defaults) and then from the command line. Every bound the
 * gateway enforces has a field here; docs/configuration.md lists them.
 */
#ifndef HOTPLEX_CONFIG_H
#define HOTPLEX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HP_MAX_ENV_EXTRA 32

typedef struct hp_config {
    /* server */
    char listen_host[64];
    int listen_port;
    char data_dir[1024];
    size_t max_frame_size;      /* inbound WebSocket message limit (close 1009 above) */
    int init_timeout_ms;        /* first message deadline */
    int ping_interval_ms;       /* server WebSocket ping */
    int client_timeout_ms;      /* no frame from client for this long: close */
    int max_conns_per_session;  /* oldest closed with 1008 "replaced" above it */
    size_t out_soft_limit;      /* per-connection backlog where deltas start merging */
    size_t out_hard_limit;      /* per-connection backlog where the connection is closed 1013 */
    size_t session_ring_bytes;  /* recent events kept in memory per session */
    int max_queued_inputs;      /* per session, while a turn runs */
    int shutdown_grace_ms;      /* agents' grace on shutdown */

    /* auth (dev mode when no keys are configured and bound to loopback) */
    char keys_file[1024];

    /* workers */
    const char *work_bases[HP_MAX_ENV_EXTRA]; /* allowed work dir roots (none: any non-system dir) */
    int n_work_bases;
    char default_work_dir[1024];
    char claude_bin[1024];        /* "claude" looked up in PATH when not absolute */
    int agent_stop_grace_ms;      /* SIGTERM -> SIGKILL */
    size_t agent_max_line;        /* longest stdout line accepted from an agent */
    int permission_timeout_ms;    /* unanswered permission prompt -> deny */
    int max_agents;               /* live agent processes in total */
    const char *env_extra[HP_MAX_ENV_EXTRA]; /* "NAME=value" added to agent env */
    int n_env_extra;
    const char *env_pass[HP_MAX_ENV_EXTRA];  /* names copied from the gateway's env if set */
    int n_env_pass;
    size_t agent_mem_limit;       /* bytes, per agent (cgroup v2 memory.max); 0 = none */
    size_t agent_stderr_keep;     /* bytes of agent stderr kept for error reports */

    /* echo agent pacing (tests can make it fast or slow) */
    int echo_delta_interval_ms;
} hp_config_t;

void config_defaults(hp_config_t *c);
/* Set one key ("section.name") from text. 0, or -1 with a message naming the
 * key, the value and the rule. List keys append; `value` must stay alive. */
int config_set(hp_config_t *c, const char *key, const char *value, char *err, size_t cap);

#endif
