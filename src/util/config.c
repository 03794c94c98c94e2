/*
 * config.c - built-in defaults and the key table: the one place that names
 * every setting with its kind, range, one-line description, and whether it
 * can change at run time (reloadable) or may hold a credential (secret).
 * Everything else here walks that table: config_set parses one value,
 * config_foreach prints them all, config_diff / config_apply_reloadable
 * compare and copy them for a SIGHUP reload, config_validate checks the rules
 * that span keys. Reading YAML files and the environment is config_file.c.
 *
 * Owns: the strings a config keeps (hp_config_t._owned, a singly linked list
 * of allocations, newest first, so a failed load can drop exactly what it
 * added).
 * Must never: log anything, or put a secret's value in an error message (a
 * worker.env entry is named by its position, never echoed).
 */
#include "util/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

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
    snprintf(c->opencode_bin, sizeof(c->opencode_bin), "opencode");
    c->agent_stop_grace_ms = 5000;
    c->agent_max_line = 10 * 1024 * 1024;
    c->permission_timeout_ms = 300000;
    c->max_agents = 256;
    c->echo_delta_interval_ms = 5;
    c->idle_timeout_ms = 30 * 60 * 1000;
    c->max_lifetime_ms = 24LL * 3600 * 1000;
    c->zombie_timeout_ms = 15 * 60 * 1000;
    c->retention_ms = 30LL * 24 * 3600 * 1000;
    c->max_events = 200000;
    c->max_sessions_per_user = 100;
    c->max_agents_per_user = 8;
    c->agent_mem_limit = 0;
    c->agent_stderr_keep = 8192;
    snprintf(c->api_key_header, sizeof(c->api_key_header), "X-API-Key");
    c->jwt_clock_skew_s = 60;
    c->auth_max_failures = 10;
    c->auth_block_ms = 60000;
    c->input_rate = 20;
    snprintf(c->admin_listen_host, sizeof(c->admin_listen_host), "127.0.0.1");
    c->admin_listen_port = 9999;
    c->log_level = 1; /* LOG_INFO */
    c->log_json = 0;
    /* What an agent needs to find its tools and its credentials; nothing else
     * of the gateway's environment leaks into agents. */
    static const char *pass[] = {"PATH",
                                 "HOME",
                                 "USER",
                                 "LOGNAME",
                                 "LANG",
                                 "LC_ALL",
                                 "TZ",
                                 "TMPDIR",
                                 "SHELL",
                                 "TERM",
                                 "ANTHROPIC_API_KEY",
                                 "ANTHROPIC_AUTH_TOKEN",
                                 "ANTHROPIC_BASE_URL",
                                 "ANTHROPIC_MODEL",
                                 "CLAUDE_CONFIG_DIR",
                                 "DISABLE_TELEMETRY",
                                 "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"};
    for (size_t i = 0; i < sizeof(pass) / sizeof(pass[0]); i++)
        c->env_pass[c->n_env_pass++] = pass[i];
}

/* ---- owned strings ------------------------------------------------------ */

struct hp_config_str {
    struct hp_config_str *next;
    char s[];
};

char *config__strndup(hp_config_t *c, const char *s, size_t n)
{
    if (n > SIZE_MAX - sizeof(struct hp_config_str) - 1) return NULL;
    struct hp_config_str *o = malloc(sizeof(*o) + n + 1);
    if (!o) return NULL;
    memcpy(o->s, s, n);
    o->s[n] = '\0';
    o->next = c->_owned;
    c->_owned = o;
    return o->s;
}

void config__release_since(hp_config_t *c, struct hp_config_str *mark)
{
    while (c->_owned && c->_owned != mark) {
        struct hp_config_str *next = c->_owned->next;
        free(c->_owned);
        c->_owned = next;
    }
}

void config_free(hp_config_t *c)
{
    if (!c) return;
    config__release_since(c, NULL);
    config_defaults(c);
}

/* ---- key table: one place that names every setting ------------------- */

typedef enum { K_INT, K_I64, K_SIZE, K_STR, K_LISTEN, K_LIST, K_ENUM } key_kind_t;

enum { KF_RELOAD = 1, KF_SECRET = 2 };

typedef struct key_def {
    const char *name;
    key_kind_t kind;
    size_t off;
    size_t cap; /* K_STR: buffer size; K_LIST: offset of the count; K_LISTEN: offset of the port */
    long long min, max;
    unsigned flags;
    const char *const *choices; /* K_ENUM: NULL-terminated; the field holds the index */
    const char *desc;
} key_def_t;

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_formats[] = {"text", "json", NULL};

#define F(field) offsetof(hp_config_t, field)
#define SZ(field) sizeof(((hp_config_t *)0)->field)
#define NUM(n, kind, field, lo, hi, fl, d)                                                         \
    {                                                                                              \
        n, kind, F(field), 0, lo, hi, fl, NULL, d                                                  \
    }
#define STR(n, field, fl, d)                                                                       \
    {                                                                                              \
        n, K_STR, F(field), SZ(field), 0, 0, fl, NULL, d                                           \
    }
#define LIST(n, field, count, fl, d)                                                               \
    {                                                                                              \
        n, K_LIST, F(field), F(count), 0, 0, fl, NULL, d                                           \
    }
#define LISTEN(n, host, port, fl, d)                                                               \
    {                                                                                              \
        n, K_LISTEN, F(host), F(port), 0, 65535, fl, NULL, d                                       \
    }
#define ENUM(n, field, ch, fl, d)                                                                  \
    {                                                                                              \
        n, K_ENUM, F(field), 0, 0, 0, fl, ch, d                                                    \
    }
#define R KF_RELOAD
static const key_def_t keys[] = {
    /* server */
    LISTEN("server.listen", listen_host, listen_port, 0,
           "address the WebSocket server binds (port 0: any free port)"),
    STR("server.data_dir", data_dir, 0, "directory of the session store and other state"),
    NUM("server.max_frame_size", K_SIZE, max_frame_size, 256, 64LL << 20, R,
        "largest inbound WebSocket message; a larger one closes the connection with 1009"),
    NUM("server.init_timeout_ms", K_INT, init_timeout_ms, 50, 3600000, R,
        "time a new connection has to send its first message"),
    NUM("server.ping_interval_ms", K_INT, ping_interval_ms, 0, 3600000, 0,
        "interval of server WebSocket pings (0: none)"),
    NUM("server.client_timeout_ms", K_INT, client_timeout_ms, 1000, 86400000, R,
        "close a connection that sent no frame for this long"),
    NUM("server.shutdown_grace_ms", K_INT, shutdown_grace_ms, 0, 600000, R,
        "grace period agents get on shutdown before they are stopped"),
    LIST("server.allowed_origins", allowed_origins, n_allowed_origins, R,
         "Origin values accepted on a WebSocket upgrade, scheme://host[:port] or * (none: any)"),
    STR("server.tls_cert_file", tls_cert_file, 0,
        "PEM certificate chain for wss:// (empty: plain ws://)"),
    STR("server.tls_key_file", tls_key_file, 0, "PEM private key of server.tls_cert_file"),
    /* session */
    NUM("session.max_conns", K_INT, max_conns_per_session, 1, 1024, R,
        "connections attached to one session; above it the oldest is closed with 1008"),
    NUM("session.out_soft_limit", K_SIZE, out_soft_limit, 1024, 1LL << 34, R,
        "per-connection send backlog where text deltas start merging"),
    NUM("session.out_hard_limit", K_SIZE, out_hard_limit, 4096, 1LL << 34, R,
        "per-connection send backlog where a slow client is closed with 1013"),
    NUM("session.ring_bytes", K_SIZE, session_ring_bytes, 0, 1LL << 34, R,
        "recent events kept in memory per session for resuming clients"),
    NUM("session.max_queued_inputs", K_INT, max_queued_inputs, 1, 100000, R,
        "inputs queued per session while a turn runs"),
    NUM("session.idle_timeout_ms", K_I64, idle_timeout_ms, 0, 1LL << 40, R,
        "stop an idle agent and terminate its session after this long (0: never)"),
    NUM("session.max_lifetime_ms", K_I64, max_lifetime_ms, 0, 1LL << 40, R,
        "stop an agent that has been running this long (0: never)"),
    NUM("session.zombie_timeout_ms", K_I64, zombie_timeout_ms, 0, 1LL << 40, R,
        "kill a turn that produced no agent output for this long (0: never)"),
    NUM("session.max_events", K_I64, max_events, 0, 1LL << 40, R,
        "events kept per session; older ones are dropped after each turn (0: all)"),
    NUM("session.retention_ms", K_I64, retention_ms, 0, 1LL << 40, R,
        "purge terminated sessions untouched this long; deleted tombstones stay (0: never)"),
    NUM("session.max_per_user", K_INT, max_sessions_per_user, 0, 1000000, R,
        "sessions one user may own (0: unlimited)"),
    /* auth */
    STR("auth.keys_file", keys_file, R, "API keys file, one user:key per line (empty: none)"),
    STR("auth.jwt_secret_file", jwt_secret_file, R,
        "file holding the HS256 JWT secret (HOTPLEX_JWT_SECRET takes precedence)"),
    STR("auth.jwt_public_key_file", jwt_public_key_file, R,
        "PEM public key verifying ES256 (P-256) or RS256 JWTs"),
    STR("auth.jwt_audience", jwt_audience, R, "aud claim a JWT must carry (empty: not checked)"),
    STR("auth.jwt_issuer", jwt_issuer, R, "iss claim a JWT must carry (empty: not checked)"),
    STR("auth.bot_id", bot_id, R,
        "bot_id a JWT must carry, also given to API-key identities (empty: none)"),
    STR("auth.api_key_header", api_key_header, R, "HTTP request header carrying an API key"),
    NUM("auth.clock_skew_s", K_INT, jwt_clock_skew_s, 0, 3600, R,
        "leeway in seconds when checking JWT exp and nbf"),
    NUM("auth.max_failures", K_INT, auth_max_failures, 1, 1000000, R,
        "failed handshakes per client address within a minute before it is blocked"),
    NUM("auth.block_ms", K_INT, auth_block_ms, 0, 86400000, R,
        "how long a blocked client address is refused (RATE_LIMITED)"),
    NUM("auth.input_rate", K_INT, input_rate, 1, 1000000, R,
        "inputs per second one user may send (bursts of twice that)"),
    /* admin */
    LISTEN("admin.listen", admin_listen_host, admin_listen_port, 0,
           "address the admin HTTP API binds (port 0: any free port)"),
    STR("admin.tokens_file", admin_tokens_file, R,
        "admin tokens file, one token:scope1,scope2 per line (empty: none)"),
    /* log */
    ENUM("log.level", log_level, log_levels, R, "least severe level written"),
    ENUM("log.format", log_json, log_formats, R, "log line format"),
    /* worker */
    STR("worker.default_work_dir", default_work_dir, R,
        "agent working directory when a session names none"),
    LIST("worker.work_bases", work_bases, n_work_bases, R,
         "absolute directories agent work dirs must lie under (none: any non-system dir)"),
    LIST("worker.allowed_bins", allowed_bins, n_allowed_bins, R,
         "agent executables that may be started, by path (none: any)"),
    LIST("worker.allowed_models", allowed_models, n_allowed_models, R,
         "models a client may ask for in init.config.model (none: any)"),
    LIST("worker.allowed_tools", allowed_tools, n_allowed_tools, R,
         "tools a client may list in init.config.allowed_tools (none: any)"),
    STR("worker.claude_bin", claude_bin, R,
        "Claude Code executable, looked up in PATH when not absolute"),
    STR("worker.opencode_bin", opencode_bin, R,
        "OpenCode executable (opencode_server workers), looked up in PATH when not absolute"),
    NUM("worker.stop_grace_ms", K_INT, agent_stop_grace_ms, 0, 600000, R,
        "time between SIGTERM and SIGKILL when an agent is stopped"),
    NUM("worker.max_line", K_SIZE, agent_max_line, 4096, 1LL << 30, R,
        "longest stdout line accepted from an agent"),
    NUM("worker.permission_timeout_ms", K_INT, permission_timeout_ms, 100, 86400000, R,
        "an unanswered permission prompt is denied after this long"),
    NUM("worker.max_agents", K_INT, max_agents, 0, 1000000, R,
        "live agent processes in total (0: none may start)"),
    NUM("worker.max_agents_per_user", K_INT, max_agents_per_user, 0, 1000000, R,
        "live agent processes per user (0: unlimited)"),
    NUM("worker.mem_limit", K_SIZE, agent_mem_limit, 0, 1LL << 40, R,
        "memory limit per agent via cgroup v2 memory.max (0: none)"),
    NUM("worker.stderr_keep", K_SIZE, agent_stderr_keep, 0, 1LL << 20, R,
        "bytes of agent stderr kept for error reports"),
    LIST("worker.env", env_extra, n_env_extra, R | KF_SECRET,
         "NAME=value entries added to every agent's environment"),
    LIST("worker.env_pass", env_pass, n_env_pass, R,
         "variable names copied from the gateway's environment to agents when set"),
    /* echo */
    NUM("echo.delta_interval_ms", K_INT, echo_delta_interval_ms, 0, 60000, R,
        "pause between the echo agent's deltas"),
};
#undef R
#undef F
#undef SZ
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

_Static_assert(sizeof(((hp_config_t *)0)->listen_host) ==
                   sizeof(((hp_config_t *)0)->admin_listen_host),
               "K_LISTEN host buffers share one size");

static const key_def_t *find_key(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

size_t config_key_count(void)
{
    return NKEYS;
}

const char *config_key_name(size_t i)
{
    return i < NKEYS ? keys[i].name : NULL;
}

/* Decimal integer, no leading space or '+'. Sizes may end in k, m or g
 * (binary); a value whose shift would overflow, or a negative one with a
 * suffix, is refused. */
static int parse_ll(const char *v, bool suffix, long long *out)
{
    if (!isdigit((unsigned char)v[0]) && !(v[0] == '-' && isdigit((unsigned char)v[1]))) return -1;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v) return -1;
    int shift = 0;
    if (suffix) {
        if (*end == 'k' || *end == 'K')
            shift = 10;
        else if (*end == 'm' || *end == 'M')
            shift = 20;
        else if (*end == 'g' || *end == 'G')
            shift = 30;
    }
    if (shift) {
        if (x < 0 || x > (LLONG_MAX >> shift)) return -1;
        x <<= shift;
        end++;
    }
    if (*end) return -1;
    *out = x;
    return 0;
}

/* "32k" for exact multiples, else plain bytes. */
static void fmt_size(long long x, char *out, size_t cap)
{
    if (x > 0 && x % (1LL << 30) == 0)
        snprintf(out, cap, "%lldg", x >> 30);
    else if (x > 0 && x % (1LL << 20) == 0)
        snprintf(out, cap, "%lldm", x >> 20);
    else if (x > 0 && x % (1LL << 10) == 0)
        snprintf(out, cap, "%lldk", x >> 10);
    else
        snprintf(out, cap, "%lld", x);
}

static void enum_list(const key_def_t *k, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; k->choices[i] && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? ", " : "", k->choices[i]);
}

int config_set(hp_config_t *c, const char *key, const char *value, char *err, size_t cap)
{
    const key_def_t *k = find_key(key);
    if (!k) {
        snprintf(err, cap, "unknown setting \"%s\"", key);
        return -1;
    }
    char *base = (char *)c;
    long long x;
    switch (k->kind) {
    case K_INT:
    case K_I64:
    case K_SIZE:
        if (parse_ll(value, k->kind == K_SIZE, &x) < 0 || x < k->min || x > k->max) {
            snprintf(err, cap, "%s: invalid value \"%s\" (an integer from %lld to %lld)", key,
                     value, k->min, k->max);
            return -1;
        }
        if (k->kind == K_INT)
            *(int *)(base + k->off) = (int)x;
        else if (k->kind == K_I64)
            *(int64_t *)(base + k->off) = (int64_t)x;
        else
            *(size_t *)(base + k->off) = (size_t)x;
        return 0;
    case K_STR: {
        size_t n = strlen(value);
        if (n >= k->cap) {
            snprintf(err, cap, "%s: value too long (at most %zu bytes)", key, k->cap - 1);
            return -1;
        }
        memcpy(base + k->off, value, n + 1);
        return 0;
    }
    case K_ENUM:
        for (int i = 0; k->choices[i]; i++) {
            if (strcasecmp(value, k->choices[i]) == 0) {
                *(int *)(base + k->off) = i;
                return 0;
            }
        }
        {
            char list[128];
            enum_list(k, list, sizeof(list));
            snprintf(err, cap, "%s: invalid value \"%s\" (one of %s)", key, value, list);
        }
        return -1;
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
        char *host = base + k->off;
        const size_t hcap = sizeof(c->listen_host);
        const char *colon = strrchr(value, ':');
        if (!colon || colon == value || (size_t)(colon - value) >= hcap ||
            parse_ll(colon + 1, false, &x) < 0 || x < 0 || x > 65535) {
            snprintf(err, cap, "%s: invalid value \"%s\" (HOST:PORT, port 0-65535)", key, value);
            return -1;
        }
        memcpy(host, value, (size_t)(colon - value));
        host[colon - value] = '\0';
        *(int *)(base + k->cap) = (int)x;
        return 0;
    }
    }
    snprintf(err, cap, "%s: internal error (unknown kind)", key);
    return -1;
}

int config_set_copy(hp_config_t *c, const char *key, const char *value, char *err, size_t cap)
{
    const key_def_t *k = find_key(key);
    if (!k || k->kind != K_LIST) return config_set(c, key, value, err, cap);
    struct hp_config_str *mark = c->_owned;
    char *dup = config__strndup(c, value, strlen(value));
    if (!dup) {
        snprintf(err, cap, "%s: out of memory", key);
        return -1;
    }
    if (config_set(c, key, dup, err, cap) < 0) {
        config__release_since(c, mark);
        return -1;
    }
    return 0;
}

int config__list_clear(hp_config_t *c, const char *key)
{
    const key_def_t *k = find_key(key);
    if (!k || k->kind != K_LIST) return -1;
    *(int *)((char *)c + k->cap) = 0;
    return 0;
}

/* ---- describing and printing keys -------------------------------------- */

int config_key_meta(const char *key, config_key_meta_t *out)
{
    const key_def_t *k = find_key(key);
    if (!k) return -1;
    memset(out, 0, sizeof(*out));
    out->desc = k->desc;
    out->list = k->kind == K_LIST;
    out->secret = (k->flags & KF_SECRET) != 0;
    out->reloadable = (k->flags & KF_RELOAD) != 0;
    char lo[32], hi[32], list[64];
    switch (k->kind) {
    case K_INT:
    case K_I64:
        snprintf(out->type, sizeof(out->type), "integer %lld..%lld", k->min, k->max);
        break;
    case K_SIZE:
        fmt_size(k->min, lo, sizeof(lo));
        fmt_size(k->max, hi, sizeof(hi));
        snprintf(out->type, sizeof(out->type), "size %s..%s (suffix k, m, g)", lo, hi);
        break;
    case K_STR:
        snprintf(out->type, sizeof(out->type), "string, at most %zu bytes", k->cap - 1);
        break;
    case K_LISTEN:
        snprintf(out->type, sizeof(out->type), "HOST:PORT, port 0-65535");
        break;
    case K_LIST:
        snprintf(out->type, sizeof(out->type), "list, at most %d entries", HP_MAX_ENV_EXTRA);
        break;
    case K_ENUM:
        enum_list(k, list, sizeof(list));
        snprintf(out->type, sizeof(out->type), "one of %s", list);
        break;
    }
    size_t n = strlen(HP_CONFIG_ENV_PREFIX);
    memcpy(out->env, HP_CONFIG_ENV_PREFIX, n);
    for (const char *p = k->name; *p && n + 1 < sizeof(out->env); p++)
        out->env[n++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
    out->env[n] = '\0';
    return 0;
}

/* The value of k in c as text config_set accepts back; malloc'd. */
static char *value_text(const hp_config_t *c, const key_def_t *k)
{
    const char *base = (const char *)c;
    char tmp[96];
    switch (k->kind) {
    case K_INT:
    case K_ENUM: {
        int v = *(const int *)(base + k->off);
        if (k->kind == K_ENUM) {
            int n = 0;
            while (k->choices[n])
                n++;
            return strdup(v >= 0 && v < n ? k->choices[v] : "?");
        }
        snprintf(tmp, sizeof(tmp), "%d", v);
        return strdup(tmp);
    }
    case K_I64:
        snprintf(tmp, sizeof(tmp), "%lld", (long long)*(const int64_t *)(base + k->off));
        return strdup(tmp);
    case K_SIZE:
        fmt_size((long long)*(const size_t *)(base + k->off), tmp, sizeof(tmp));
        return strdup(tmp);
    case K_STR:
        return strndup(base + k->off, k->cap - 1);
    case K_LISTEN: {
        const char *host = base + k->off;
        size_t hn = strnlen(host, sizeof(c->listen_host) - 1);
        char *s = malloc(hn + 16);
        if (s) snprintf(s, hn + 16, "%.*s:%d", (int)hn, host, *(const int *)(base + k->cap));
        return s;
    }
    case K_LIST: {
        int n = *(const int *)(base + k->cap);
        const char *const *arr = (const char *const *)(base + k->off);
        size_t len = 1;
        for (int i = 0; i < n; i++)
            len += strlen(arr[i]) + 1;
        char *s = malloc(len), *p = s;
        if (!s) return NULL;
        for (int i = 0; i < n; i++) {
            if (i) *p++ = ',';
            size_t l = strlen(arr[i]);
            memcpy(p, arr[i], l);
            p += l;
        }
        *p = '\0';
        return s;
    }
    }
    return NULL;
}

int config_foreach(const hp_config_t *c,
                   void (*cb)(void *arg, const char *key, const char *value, const char *desc,
                              bool secret),
                   void *arg)
{
    for (size_t i = 0; i < NKEYS; i++) {
        char *v = value_text(c, &keys[i]);
        if (!v) return -1;
        cb(arg, keys[i].name, v, keys[i].desc, (keys[i].flags & KF_SECRET) != 0);
        free(v);
    }
    return 0;
}

/* ---- comparing and reloading ------------------------------------------- */

/* 1 differs, 0 same, -1 out of memory. */
static int key_differs(const hp_config_t *a, const hp_config_t *b, const key_def_t *k)
{
    if (k->kind == K_LIST) {
        int na = *(const int *)((const char *)a + k->cap);
        int nb = *(const int *)((const char *)b + k->cap);
        if (na != nb) return 1;
        const char *const *xa = (const char *const *)((const char *)a + k->off);
        const char *const *xb = (const char *const *)((const char *)b + k->off);
        for (int i = 0; i < na; i++)
            if (strcmp(xa[i], xb[i]) != 0) return 1;
        return 0;
    }
    char *va = value_text(a, k), *vb = value_text(b, k);
    int rc = (!va || !vb) ? -1 : strcmp(va, vb) != 0;
    free(va);
    free(vb);
    return rc;
}

int config_diff(const hp_config_t *old, const hp_config_t *neu,
                void (*cb)(void *arg, const char *key, bool reloadable), void *arg)
{
    int n = 0;
    for (size_t i = 0; i < NKEYS; i++) {
        int d = key_differs(old, neu, &keys[i]);
        if (d < 0) return -1;
        if (!d) continue;
        n++;
        if (cb) cb(arg, keys[i].name, (keys[i].flags & KF_RELOAD) != 0);
    }
    return n;
}

int config_apply_reloadable(hp_config_t *dst, const hp_config_t *src)
{
    hp_config_t *tmp = malloc(sizeof(*tmp));
    if (!tmp) return -1;
    *tmp = *dst;
    struct hp_config_str *mark = tmp->_owned;
    int n = 0;
    for (size_t i = 0; i < NKEYS; i++) {
        const key_def_t *k = &keys[i];
        if (!(k->flags & KF_RELOAD)) continue;
        int d = key_differs(tmp, src, k);
        if (d < 0) goto oom;
        if (!d) continue;
        n++;
        char *to = (char *)tmp + k->off;
        const char *from = (const char *)src + k->off;
        switch (k->kind) {
        case K_INT:
        case K_ENUM:
            memcpy(to, from, sizeof(int));
            break;
        case K_I64:
            memcpy(to, from, sizeof(int64_t));
            break;
        case K_SIZE:
            memcpy(to, from, sizeof(size_t));
            break;
        case K_STR:
            memcpy(to, from, k->cap);
            break;
        case K_LISTEN:
            memcpy(to, from, sizeof(tmp->listen_host));
            memcpy((char *)tmp + k->cap, (const char *)src + k->cap, sizeof(int));
            break;
        case K_LIST: {
            int cnt = *(const int *)((const char *)src + k->cap);
            const char *const *items = (const char *const *)from;
            const char **out = (const char **)to;
            for (int j = 0; j < cnt; j++)
                if (!(out[j] = config__strndup(tmp, items[j], strlen(items[j])))) goto oom;
            *(int *)((char *)tmp + k->cap) = cnt;
            break;
        }
        }
    }
    *dst = *tmp;
    free(tmp);
    return n;
oom:
    config__release_since(tmp, mark);
    free(tmp);
    return -1;
}

/* ---- cross-key validation ---------------------------------------------- */

static bool env_name_ok(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_')) return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_')) return false;
    return true;
}

static bool origin_ok(const char *s)
{
    if (strcmp(s, "*") == 0) return true;
    const char *sep = strstr(s, "://");
    if (!sep || sep == s) return false;
    for (const char *p = s; p < sep; p++)
        if (!(isalnum((unsigned char)*p) || *p == '+' || *p == '-' || *p == '.')) return false;
    const char *host = sep + 3;
    if (!*host) return false;
    for (const char *p = host; *p; p++)
        if (*p == '/' || *p <= ' ' || *p == 0x7f) return false;
    return true;
}

static bool header_name_ok(const char *s)
{
    if (!*s) return false;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr("!#$%&'*+-.^_`|~", *p))) return false;
    return true;
}

static int check_file(const char *key, const char *path, char *err, size_t cap)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, cap, "%s: cannot read \"%s\": %s", key, path, strerror(errno));
        return -1;
    }
    struct stat st;
    int rc = fstat(fd, &st);
    int e = errno;
    close(fd);
    if (rc < 0) {
        snprintf(err, cap, "%s: cannot read \"%s\": %s", key, path, strerror(e));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, cap, "%s: \"%s\" is not a regular file", key, path);
        return -1;
    }
    return 0;
}

int config_validate(const hp_config_t *c, char *err, size_t cap)
{
    char a[32], b[32];
    if (c->out_soft_limit >= c->out_hard_limit) {
        fmt_size((long long)c->out_soft_limit, a, sizeof(a));
        fmt_size((long long)c->out_hard_limit, b, sizeof(b));
        snprintf(err, cap, "session.out_soft_limit: %s must be below session.out_hard_limit (%s)",
                 a, b);
        return -1;
    }
    if (!c->tls_cert_file[0] != !c->tls_key_file[0]) {
        snprintf(err, cap, "%s: must be set together with %s",
                 c->tls_cert_file[0] ? "server.tls_key_file" : "server.tls_cert_file",
                 c->tls_cert_file[0] ? "server.tls_cert_file" : "server.tls_key_file");
        return -1;
    }
    if (!c->listen_host[0]) {
        snprintf(err, cap, "server.listen: the host must not be empty");
        return -1;
    }
    if (!c->admin_listen_host[0]) {
        snprintf(err, cap, "admin.listen: the host must not be empty");
        return -1;
    }
    if (c->admin_listen_port != 0 && c->admin_listen_port == c->listen_port &&
        strcmp(c->admin_listen_host, c->listen_host) == 0) {
        snprintf(err, cap, "admin.listen: %s:%d is also server.listen", c->admin_listen_host,
                 c->admin_listen_port);
        return -1;
    }
    if (!c->data_dir[0]) {
        snprintf(err, cap, "server.data_dir: must not be empty");
        return -1;
    }
    if (c->ping_interval_ms > 0 && c->client_timeout_ms <= c->ping_interval_ms) {
        snprintf(err, cap,
                 "server.client_timeout_ms: %d must be above server.ping_interval_ms (%d)",
                 c->client_timeout_ms, c->ping_interval_ms);
        return -1;
    }
    if (!header_name_ok(c->api_key_header)) {
        snprintf(err, cap, "auth.api_key_header: \"%s\" is not an HTTP header name",
                 c->api_key_header);
        return -1;
    }
    for (int i = 0; i < c->n_allowed_origins; i++) {
        if (!origin_ok(c->allowed_origins[i])) {
            snprintf(err, cap,
                     "server.allowed_origins: \"%s\" is not an origin (scheme://host[:port] or *)",
                     c->allowed_origins[i]);
            return -1;
        }
    }
    for (int i = 0; i < c->n_work_bases; i++) {
        if (c->work_bases[i][0] != '/') {
            snprintf(err, cap, "worker.work_bases: \"%s\" is not an absolute path",
                     c->work_bases[i]);
            return -1;
        }
    }
    for (int i = 0; i < c->n_env_extra; i++) {
        /* the value may be a credential: name the entry, never print it */
        const char *eq = strchr(c->env_extra[i], '=');
        if (!eq || !env_name_ok(c->env_extra[i], (size_t)(eq - c->env_extra[i]))) {
            snprintf(err, cap, "worker.env: entry %d is not NAME=value", i + 1);
            return -1;
        }
    }
    for (int i = 0; i < c->n_env_pass; i++) {
        if (!env_name_ok(c->env_pass[i], strlen(c->env_pass[i]))) {
            snprintf(err, cap, "worker.env_pass: \"%s\" is not a variable name", c->env_pass[i]);
            return -1;
        }
    }
    for (size_t i = 0; i < NKEYS; i++) {
        const key_def_t *k = &keys[i];
        size_t n = strlen(k->name);
        if (k->kind != K_STR || n < 5 || strcmp(k->name + n - 5, "_file") != 0) continue;
        const char *path = (const char *)c + k->off;
        if (path[0] && check_file(k->name, path, err, cap) < 0) return -1;
    }
    return 0;
}
