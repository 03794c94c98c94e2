/*
 * worker.h - the one interface between the session core and an agent.
 *
 * An adapter (echo.c, claude_code.c, ...) turns one agent program into AEP
 * events. The core never knows which agent it runs: it calls the ops below
 * and receives events through the sink. Turn accounting (queueing inputs,
 * one `done` per turn, crash handling) belongs to the core, not to adapters.
 *
 * Lifecycle, libuv style: start() either fails (returns <0, no callback is
 * ever made) or succeeds; after success the adapter calls sink->exit exactly
 * once, when the agent is gone for whatever reason (stop(), crash, exit).
 * After sink->exit returns the core must not touch the handle again; the
 * adapter frees its own memory.
 */
#ifndef HOTPLEX_WORKER_H
#define HOTPLEX_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct wkr wkr_t; /* opaque: each adapter defines struct wkr */

typedef struct wkr_sink {
    void *ctx;
    /* Commit one event to the session stream. `type` is the AEP event type,
     * `data` a complete JSON object (the event's data). */
    void (*event)(void *ctx, const char *type, const char *data, size_t len);
    /* A fact about the agent worth keeping on the session (agent model, tools,
     * agent-side session id). Values are plain strings. */
    void (*info)(void *ctx, const char *key, const char *value);
    /* The agent is gone. `status` is the exit code (or -1), `signo` the signal
     * that killed it (or 0), `why` a short human reason (NULL if a plain exit). */
    void (*exit)(void *ctx, int status, int signo, const char *why);
} wkr_sink_t;

/* What to start. Strings are owned by the caller and only valid during start(). */
typedef struct wkr_spec {
    const char *session_id;
    const char *worker_type;
    const char *work_dir;
    bool resume;                  /* continue the agent's own transcript of this session */
    const char *model;            /* optional */
    const char *permission_mode;  /* optional */
    const char *system_prompt;    /* optional, appended */
    const char *allowed_tools;    /* optional, comma separated */
    const char *disallowed_tools; /* optional, comma separated */
    int max_turns;                /* 0 = agent default */
    const struct hp_config *cfg;  /* gateway configuration (binaries, env, limits) */
} wkr_spec_t;

typedef struct wkr_ops {
    const char *type; /* worker_type as clients name it */
    /* Start the agent. On failure returns a negative errno-style code and
     * writes a human message into err (cap bytes). */
    int (*start)(wkr_t **out, uv_loop_t *loop, const wkr_spec_t *spec, const wkr_sink_t *sink,
                 char *err, size_t cap);
    /* One user turn. `content` is the inside of a JSON string literal, already
     * escaped and validated (no raw control characters). */
    int (*input)(wkr_t *w, const char *content, size_t len);
    /* Answer to a permission_request `req_id`. `updated_input` is a JSON object
     * or NULL (then the original tool input is used). */
    int (*permission)(wkr_t *w, const char *req_id, bool allow, const char *reason,
                      const char *updated_input, size_t updated_len);
    /* Stop the current turn; the agent must still end it with `done`. */
    int (*interrupt)(wkr_t *w);
    /* Stop the agent (graceful, then forced). sink->exit follows. Idempotent. */
    void (*stop)(wkr_t *w);
    /* Backpressure: while paused the adapter stops reading/producing agent
     * output (events already read may still be delivered). */
    void (*pause)(wkr_t *w, bool paused);
} wkr_ops_t;

/* Adapter registry: NULL if the type is unknown. */
const wkr_ops_t *wkr_lookup(const char *type);

extern const wkr_ops_t wkr_echo_ops;
extern const wkr_ops_t wkr_claude_code_ops;
extern const wkr_ops_t wkr_opencode_server_ops;

#endif
