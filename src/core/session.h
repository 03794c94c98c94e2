/*
 * session.h - a session: identity, state machine, its stream, its agent and
 * the connections attached to it. Turn accounting lives here: inputs queue
 * in order while a turn runs, every turn ends in exactly one `done`, an
 * agent that dies mid-turn ends the turn with WORKER_CRASH.
 */
#ifndef HOTPLEX_SESSION_H
#define HOTPLEX_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "aep/aep.h"
#include "core/gateway.h"
#include "core/stream.h"
#include "worker/worker.h"

/* Backpressure thresholds: bytes committed but not yet stored in the database
 * (the store thread commits every few ms; a fast agent fills ~0.5 MiB in that
 * time, so a lower mark would pause it at every batch). */
#define SESS_PAUSE_HIGH (1024 * 1024)
#define SESS_PAUSE_LOW (256 * 1024)

typedef enum sess_state {
    SESS_CREATED = 0,
    SESS_RUNNING,
    SESS_IDLE,
    SESS_TERMINATED,
    SESS_DELETED,
} sess_state_t;

const char *sess_state_name(sess_state_t s);
int sess_state_parse(const char *name); /* -1 if unknown */

typedef struct sess_input {
    struct sess_input *next;
    size_t len;
    char content[]; /* escaped JSON string body */
} sess_input_t;

/* What a pending stop of the agent should lead to. */
typedef enum sess_after_stop {
    AFTER_STOP_NONE = 0,
    AFTER_STOP_TERMINATE, /* state terminated */
    AFTER_STOP_RESET,     /* start a fresh agent context */
    AFTER_STOP_DELETE,
} sess_after_stop_t;

typedef struct sess {
    gateway_t *gw;
    char id[37];
    char owner[128];
    char bot_id[128];
    char worker_type[32];
    /* Long, mostly short values live on the heap at their length (never
     * NULL; "" when unset): inline they cost 3 KB per session. */
    char *client_key;          /* up to 255 bytes */
    char *work_dir;            /* up to 1023 bytes */
    char agent_model[128];
    const wkr_ops_t *ops;
    sess_state_t state;
    stream_t stream;
    int64_t created_ms, updated_ms;

    /* agent */
    wkr_t *agent;
    wkr_sink_t sink;           /* handed to the adapter; stable address */
    char agent_sid[37];        /* the agent's own session id (new after a reset) */
    bool agent_started;        /* the agent has a transcript under this id: resume it */
    sess_after_stop_t after_stop;
    const char *stop_reason;   /* state message when the stop completes */
    char stop_reason_buf[96];
    char model[128], permission_mode[32];
    char *allowed_tools, *disallowed_tools; /* up to 1023 bytes each, heap */
    char *system_prompt;
    int max_turns;

    /* lifecycle clocks (ms) */
    int64_t last_activity_ms;  /* last input or turn end */
    int64_t agent_started_ms;
    int64_t last_output_ms;    /* last event from the agent */
    uint64_t agent_t0_ns;      /* metrics: agent start (or its first input, if later);
                                  0 once its first output was observed */
    bool awaiting_permission;  /* the agent waits for a permission answer */

    bool paused;               /* agent output paused: the store is behind */

    /* turns */
    bool turn_active;
    bool turn_interrupted;
    sess_input_t *inq_head, *inq_tail;
    int inq_len;

    /* attached connections */
    struct client *clients;
    int nclients;
} sess_t;

/* Registry. */
sess_t *sess_find(gateway_t *gw, const char *id);
/* The session `id` if this user (and bot) may see it, else NULL: "not
 * found" and "not yours" are the same answer everywhere. */
sess_t *sess_find_visible(gateway_t *gw, const char *id, const char *user, const char *bot_id);
sess_t *sess_create(gateway_t *gw, const char *id, const char *owner, const char *worker_type,
                    const wkr_ops_t *ops, const char *client_key, const char *work_dir);
/* Start-up: rebuild a session from its store row (agents are gone: a live
 * state becomes terminated). */
sess_t *sess_restore(gateway_t *gw, const store_session_t *row);
/* Free a session object (registry removal is the caller's). */
void sess_free(sess_t *s);

/* Keep the agent options from init (used for every start/resume). */
void sess_set_agent_options(sess_t *s, const aep_init_t *in);

/* Start the agent if none is running (resume when it has a transcript).
 * Returns AEP_OK or a failure code with a message in err. */
aep_code_t sess_ensure_agent(sess_t *s, char *err, size_t cap);

/* A user turn (content = escaped JSON string body). */
aep_code_t sess_input(sess_t *s, const char *content, size_t len, char *err, size_t cap);
aep_code_t sess_permission(sess_t *s, const char *req_id, bool allow, const char *reason,
                           const char *updated, size_t updated_len, char *err, size_t cap);
aep_code_t sess_control(sess_t *s, const char *action, char *err, size_t cap);
/* Move the session to another work dir (policy-checked); the agent restarts there. */
aep_code_t sess_cd(sess_t *s, const char *path, char *err, size_t cap);

/* Commit one event to the stream (seq, store, wake readers). */
void sess_emit(sess_t *s, const char *type, const char *data, size_t len);
void sess_emit_error(sess_t *s, aep_code_t code, const char *message);

/* The store's journal holds events up to seq: deliver them. */
void sess_on_durable(sess_t *s, int64_t seq);
/* The store's database holds events up to seq: release backpressure. */
void sess_on_stored(sess_t *s, int64_t seq);

/* Persist the row (queued). */
void sess_save(sess_t *s);

/* Periodic lifecycle checks: idle timeout, lifetime, zombie, retention.
 * Returns true if the session was purged (freed: do not touch it again). */
bool sess_cron(sess_t *s, int64_t now_ms);
/* Start-up, after loading: end a turn the previous gateway left running and
 * mark live sessions terminated (no agent survives a restart). */
void sess_recover(sess_t *s);

/* Shutdown: stop the agent without changing the session's persisted state
 * beyond `terminated`. */
void sess_stop_agent(sess_t *s, sess_after_stop_t after, const char *reason);

#endif
