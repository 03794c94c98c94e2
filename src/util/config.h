/*
 * config.h - the gateway's settings, one struct, filled in layers:
 *
 *   config_defaults   built-in defaults
 *   config_load_file  a YAML file: sections of keys (config_file.c)
 *   config_load_env   HOTPLEX_<SECTION>_<KEY> environment variables
 *   config_set        `--set section.key=value` on the command line, last
 *
 * then checked as a whole by config_validate. Every setting the gateway
 * honours is one row of the key table in config.c (name, kind, range,
 * description, reloadable, secret); docs/configuration.md lists them and a
 * unit test keeps the two in step.
 *
 * Secrets: the JWT secret itself is never a key. It comes from the
 * environment variable HOTPLEX_JWT_SECRET or from the file named by
 * auth.jwt_secret_file (config_jwt_secret); no function here logs or echoes
 * it. Keys flagged secret (their value may hold credentials, e.g. worker.env)
 * are reported as such by config_foreach so callers redact them.
 *
 * Ownership: config_set keeps list values by pointer (the caller keeps them
 * alive, e.g. argv); the loaders and config_set_copy copy them into storage
 * the config owns, released by config_free. A struct copy (`a = *b`) shares
 * that storage: free exactly one of them.
 *
 * Errors: 0, or -1 with a message in err naming where (file:line:col or the
 * environment variable), the key, the value and the rule.
 */
#ifndef HOTPLEX_CONFIG_H
#define HOTPLEX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HP_MAX_ENV_EXTRA 32                   /* entries per list key */
#define HP_CONFIG_MAX_FILE_SIZE (1024 * 1024) /* a config file larger than this is refused */
#define HP_CONFIG_ENV_PREFIX "HOTPLEX_"
#define HP_CONFIG_JWT_SECRET_ENV "HOTPLEX_JWT_SECRET"

struct hp_config_str; /* owned strings, private to config.c */

typedef struct hp_config {
    /* server */
    char listen_host[64];
    int listen_port;
    char data_dir[1024];
    size_t max_frame_size;     /* inbound WebSocket message limit (close 1009 above) */
    int init_timeout_ms;       /* first message deadline */
    int ping_interval_ms;      /* server WebSocket ping */
    int client_timeout_ms;     /* no frame from client for this long: close */
    int max_conns_per_session; /* oldest closed with 1008 "replaced" above it */
    size_t out_soft_limit;     /* per-connection backlog where deltas start merging */
    size_t out_hard_limit;     /* per-connection backlog where the connection is closed 1013 */
    size_t session_ring_bytes; /* recent events kept in memory per session */
    int max_queued_inputs;     /* per session, while a turn runs */
    int shutdown_grace_ms;     /* agents' grace on shutdown */
    const char *allowed_origins[HP_MAX_ENV_EXTRA]; /* Origin values accepted (none: any) */
    int n_allowed_origins;
    char tls_cert_file[1024]; /* PEM certificate chain; "" = plain ws:// */
    char tls_key_file[1024];  /* PEM private key for tls_cert_file */

    /* session lifecycle and quotas (0 = off) */
    int64_t idle_timeout_ms;   /* agent idle this long: stopped, session terminated */
    int64_t max_lifetime_ms;   /* agent running this long: stopped */
    int64_t zombie_timeout_ms; /* turn running with no agent output this long: killed */
    int64_t retention_ms;      /* terminated/deleted sessions untouched this long: purged */
    int64_t max_events;        /* events kept in the store per session (0: all) */
    int max_sessions_per_user;
    int max_agents_per_user;

    /* auth (dev mode when no keys are configured and bound to loopback) */
    char keys_file[1024];
    char jwt_secret_file[1024];     /* file holding the HS256 secret (see config_jwt_secret) */
    char jwt_public_key_file[1024]; /* PEM public key, ES256 or RS256 */
    char jwt_audience[256];         /* required aud if set */
    char jwt_issuer[256];           /* required iss if set */
    char bot_id[128];               /* if set, tokens must carry this bot_id claim */
    char api_key_header[64];        /* HTTP header carrying an API key */
    int jwt_clock_skew_s;           /* leeway for exp/nbf */
    int auth_max_failures;          /* failed handshakes per address per minute before a block */
    int auth_block_ms;              /* how long such an address is refused */
    int input_rate;                 /* inputs per second per user (burst: twice that) */

    /* admin API */
    char admin_listen_host[64];
    int admin_listen_port;
    char admin_tokens_file[1024]; /* "token:scope1,scope2" per line */

    /* logging */
    int log_level; /* LOG_DEBUG..LOG_ERROR (util/log.h) */
    int log_json;  /* 0 text, 1 JSON lines */

    /* workers */
    const char
        *work_bases[HP_MAX_ENV_EXTRA]; /* allowed work dir roots (none: any non-system dir) */
    int n_work_bases;
    const char *allowed_bins[HP_MAX_ENV_EXTRA];   /* agent executables that may run (none: any) */
    int n_allowed_bins;
    const char *allowed_models[HP_MAX_ENV_EXTRA]; /* init.config.model values accepted (none: any) */
    int n_allowed_models;
    const char *allowed_tools[HP_MAX_ENV_EXTRA];  /* init.config.allowed_tools accepted (none: any) */
    int n_allowed_tools;
    char default_work_dir[1024];
    char claude_bin[1024];                   /* "claude" looked up in PATH when not absolute */
    char opencode_bin[1024];                 /* "opencode" looked up in PATH when not absolute */
    int agent_stop_grace_ms;                 /* SIGTERM -> SIGKILL */
    size_t agent_max_line;                   /* longest stdout line accepted from an agent */
    int permission_timeout_ms;               /* unanswered permission prompt -> deny */
    int max_agents;                          /* live agent processes in total */
    const char *env_extra[HP_MAX_ENV_EXTRA]; /* "NAME=value" added to agent env */
    int n_env_extra;
    const char *env_pass[HP_MAX_ENV_EXTRA]; /* names copied from the gateway's env if set */
    int n_env_pass;
    size_t agent_mem_limit;   /* bytes, per agent (cgroup v2 memory.max); 0 = none */
    size_t agent_stderr_keep; /* bytes of agent stderr kept for error reports */

    /* echo agent pacing (tests can make it fast or slow) */
    int echo_delta_interval_ms;

    struct hp_config_str *_owned; /* strings the config owns (config_free) */
} hp_config_t;

/* Resets *c to the built-in defaults. Does not free owned strings: call
 * config_free first on a config that loaded a file. */
void config_defaults(hp_config_t *c);
/* Set one key ("section.name") from text. 0, or -1 with a message naming the
 * key, the value and the rule; *c is unchanged on error. List keys append;
 * `value` must stay alive. */
int config_set(hp_config_t *c, const char *key, const char *value, char *err, size_t cap);
/* Same, but a list value is copied into storage the config owns. */
int config_set_copy(hp_config_t *c, const char *key, const char *value, char *err, size_t cap);
/* Releases the strings the config owns and resets *c to the defaults (so no
 * list entry is left pointing at freed memory). Safe on a config that never
 * loaded anything, and twice. */
void config_free(hp_config_t *c);

/* ---- loading (config_file.c) ------------------------------------------ */

/* Applies a YAML file: a mapping of sections to mappings of keys, e.g.
 *   server:
 *     listen: "127.0.0.1:8888"
 *     max_frame_size: 32k
 *   worker:
 *     env_pass: [PATH, HOME]
 * Scalars go through config_set; a sequence is allowed for list keys only
 * (each item appended; an empty sequence [] clears the list, defaults
 * included). Refused, with "path:line:col: key: ..." in err: syntax errors,
 * unknown sections and keys, a sequence or mapping where a scalar belongs,
 * duplicate sections or keys, aliases, more than one document, NUL bytes,
 * files over HP_CONFIG_MAX_FILE_SIZE. All or nothing: on error *c is
 * unchanged. */
int config_load_file(hp_config_t *c, const char *path, char *err, size_t cap);
/* The same from memory; `name` stands for the file in messages. */
int config_load_buffer(hp_config_t *c, const char *name, const char *data, size_t len, char *err,
                       size_t cap);
/* Applies HOTPLEX_<SECTION>_<KEY> variables from envp (NULL-terminated
 * "NAME=value" strings, e.g. environ), e.g. HOTPLEX_SERVER_MAX_FRAME_SIZE=64k.
 * List keys take comma-separated items, appended (empty items skipped).
 * Variables that name no key are ignored (HOTPLEX_JWT_SECRET is read by
 * config_jwt_secret). Errors name the variable. All or nothing. */
int config_load_env(hp_config_t *c, char *const *envp, char *err, size_t cap);

/* The HS256 secret: HOTPLEX_JWT_SECRET from envp if set and non-empty, else
 * the contents of auth.jwt_secret_file (trailing CR/LF/space trimmed, at most
 * cap - 1 bytes). 1: found, in out; 0: none configured (out = ""); -1: error
 * in err, naming the variable or the key and path, never the secret. The
 * caller wipes out after use. */
int config_jwt_secret(const hp_config_t *c, char *const *envp, char *out, size_t cap, char *err,
                      size_t errcap);

/* ---- the key table ----------------------------------------------------- */

typedef struct config_key_meta {
    const char *desc; /* one line */
    bool list;        /* list key: appends; sequences in files, commas in env */
    bool secret;      /* the value may hold a credential: redact it when shown */
    bool reloadable;  /* a SIGHUP reload can apply it; else it needs a restart */
    char type[96];    /* the rule, e.g. "an integer from 256 to 67108864" */
    char env[64];     /* e.g. "HOTPLEX_SERVER_MAX_FRAME_SIZE" */
} config_key_meta_t;

/* Number of keys; config_key_name(i) for i below it, NULL past the end. */
size_t config_key_count(void);
const char *config_key_name(size_t i);
/* 0, or -1 if key names no setting. */
int config_key_meta(const char *key, config_key_meta_t *out);

/* Calls cb for every key, in table order, with its current value as text
 * that config_set accepts back (sizes with a k/m/g suffix when exact; lists
 * comma-joined). secret: the value may hold a credential and must be
 * redacted before it is shown or logged. 0, or -1 out of memory. */
int config_foreach(const hp_config_t *c,
                   void (*cb)(void *arg, const char *key, const char *value, const char *desc,
                              bool secret),
                   void *arg);

/* Cross-key checks, after all layers: out_soft_limit < out_hard_limit, TLS
 * certificate and key both or neither, every *_file key names a readable
 * regular file, listen hosts non-empty and the two listeners distinct,
 * client_timeout_ms above ping_interval_ms, list entries well-formed. 0, or
 * -1 with the first problem in err. */
int config_validate(const hp_config_t *c, char *err, size_t cap);

/* All layers in order: defaults < YAML file (if any) < HOTPLEX_* environment
 * < `KEY=VALUE` settings (command line), then validation if asked. */
int config_build(hp_config_t *c, const char *file, const char *const *sets, int nsets,
                 char *const *envp, bool validate, char *err, size_t cap);

/* Calls cb (if not NULL) for every key whose value differs between old and
 * neu, in table order, saying whether it can be applied at run time. Returns
 * the number of differing keys, or -1 out of memory. */
int config_diff(const hp_config_t *old, const hp_config_t *neu,
                void (*cb)(void *arg, const char *key, bool reloadable), void *arg);
/* Copies every reloadable key from src into dst (lists replaced, their
 * strings copied into dst's storage); restart-only keys keep dst's values.
 * 0, or -1 out of memory (dst then unchanged). */
int config_apply_reloadable(hp_config_t *dst, const hp_config_t *src);

/* ---- internal to config*.c --------------------------------------------- */

/* Copies n bytes of s (plus a NUL) into the config's owned storage. */
char *config__strndup(hp_config_t *c, const char *s, size_t n);
/* Frees owned strings added since `mark` (a previous value of c->_owned). */
void config__release_since(hp_config_t *c, struct hp_config_str *mark);
/* Empties a list key (the strings stay owned until config_free). -1 if not a list. */
int config__list_clear(hp_config_t *c, const char *key);

#endif
