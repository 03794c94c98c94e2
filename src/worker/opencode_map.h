/*
 * opencode_map.h - `opencode serve` SSE events <-> AEP, without I/O.
 *
 * Three pieces, all pure (no I/O, no clock: callers pass the time in):
 *
 *   oc_sse_*    SSE framing of a byte stream: "data:" lines joined, a blank
 *               line ends an event; comments, "event:", "id:", "retry:"
 *               ignored; LF, CRLF or CR line ends, split anywhere.
 *   oc_frame_*  one event's JSON: the /global/event wrapper
 *               {directory, payload:{id, type, properties}} or the bare
 *               /event object {id, type, properties}; gives the type and
 *               properties.sessionID used to route it to a session.
 *   oc_map_*    the events of ONE opencode session -> AEP events, plus the
 *               request bodies the adapter sends.
 *
 * Mapping (observed with opencode-ai 1.18.33, docs/agents.md):
 *   message.part.updated text (assistant)  -> message.start {id, role, content_type} on first
 *                                             text; with time.end: the rest of the text as a
 *                                             message.delta, message.end {message_id},
 *                                             message {id, role, content, content_type}
 *   message.part.delta field "text"        -> message.delta {message_id, content} (text parts);
 *                                             accumulated for reasoning parts
 *   message.part.updated reasoning, ended  -> reasoning {id, content}
 *   message.part.updated tool running      -> tool_call {id: callID, name: tool, input}
 *   ... completed / error                  -> tool_result {id, output, error}
 *   permission.asked                       -> permission_request {id, tool_name: permission,
 *                                             description, input, args, tool_use_id, patterns}
 *   permission.replied                     -> the prompt is no longer pending
 *   question.asked                         -> host->question (the adapter rejects it)
 *   step-finish parts                      -> summed into done.stats
 *   message.updated (assistant)            -> sink->info agent_model "provider/model"
 *   session.status busy                    -> the posted prompt is running
 *   session.error (not MessageAbortedError) -> error {INTERNAL_ERROR, "<name>: <message>"}
 *   session.idle / session.status idle     -> done {success, stats {duration_ms, num_turns,
 *                                             total_cost_usd, usage, finish, interrupted}}
 *   anything else                          -> nothing (counted in `ignored`)
 * AEP message ids are opencode part ids (prt_...), unique per text block.
 * User parts (their message.updated says role "user") are never echoed.
 *
 * Turn rules (why they exist: docs/agents.md). A turn starts when the
 * adapter posted a prompt (oc_map_turn_begin). Idle events end it only once
 * session.status busy was seen, or after a session.error of this turn, so a
 * late idle of the previous turn cannot end a new one. After a turn that
 * ended with an abort or an error, opencode sends more of that turn (a
 * second idle pair, the final text part, sometimes a second session.error):
 * the map "settles" - ignores errors and ended parts - until an idle follows
 * other events of the session, or the adapter ends settling after a timeout;
 * the adapter holds the next prompt meanwhile. Every started message gets
 * its message.end before done; a tool_call without a result gets an error
 * tool_result before done.
 *
 * Owns: part/message tables (bounded, oldest evicted), pending permission
 * ids, the turn phase and its stats. Must never: do I/O, block, or trust an
 * event (any byte sequence is handled).
 */
#ifndef HOTPLEX_WORKER_OPENCODE_MAP_H
#define HOTPLEX_WORKER_OPENCODE_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"
#include "util/json.h"
#include "worker/worker.h"

#define OC_ID_MAX 96       /* longest opencode id kept (ses_/msg_/prt_/per_/call ids) */
#define OC_MAX_PARTS 64    /* parts remembered per session */
#define OC_MAX_MSGS 32     /* message roles remembered per session */
#define OC_MAX_PENDING 64  /* outstanding permission prompts */
#define OC_SSE_MAX (16u << 20) /* longest SSE event accepted */

/* ---- SSE framing --------------------------------------------------------- */

typedef struct oc_sse {
    buf_t line; /* the line being read */
    buf_t data; /* data of the event being read */
    bool has_data, skip_lf, line_over, overlong;
    size_t max;
    uint64_t events, dropped;
} oc_sse_t;

void oc_sse_init(oc_sse_t *s, size_t max_event); /* 0: OC_SSE_MAX */
void oc_sse_free(oc_sse_t *s);
/* Feeds bytes; on_event gets each complete event's data (NUL-terminated,
 * lines joined with '\n'). An event (or line) longer than the maximum is
 * dropped and counted in s->dropped. Returns the number of events delivered
 * by this call. on_event must not free s. */
int oc_sse_feed(oc_sse_t *s, const char *p, size_t n,
                void (*on_event)(void *ctx, const char *data, size_t len), void *ctx);

/* ---- one event ----------------------------------------------------------- */

typedef struct oc_parser {
    json_tok_t *tok;
    int cap;
} oc_parser_t;

typedef struct oc_frame {
    json_doc_t doc;
    int ev;    /* the event object {id, type, properties} */
    int type;  /* its type string token */
    int props; /* properties object, or -1 */
    char sid[OC_ID_MAX]; /* properties.sessionID, "" if none */
} oc_frame_t;

void oc_parser_init(oc_parser_t *p);
void oc_parser_free(oc_parser_t *p);
/* 0 and *f filled; -EINVAL not an event object with a type, -EILSEQ/-ELOOP/
 * -ENOMEM/-E2BIG from parsing. The frame points into `data` and p. */
int oc_frame_parse(oc_parser_t *p, oc_frame_t *f, const char *data, size_t len);
bool oc_frame_is(const oc_frame_t *f, const char *type);
/* session.created / session.updated of a child session (a subagent run by
 * the task tool): its parent's id into out, true. */
bool oc_frame_child_of(const oc_frame_t *f, char *out, size_t cap);
/* Events of a child session that its parent's AEP session must see: its
 * permission prompts and questions (the rest is the subagent's own work,
 * shown as the parent's task tool call). */
bool oc_frame_for_parent(const oc_frame_t *f);

/* ---- one session ----------------------------------------------------------- */

typedef struct oc_host {
    void *ctx;
    /* a permission prompt starts / stops waiting for an answer (optional) */
    void (*pending_added)(void *ctx, const char *id);
    void (*pending_removed)(void *ctx, const char *id);
    /* the agent asks the user a question (question.asked): AEP clients of
     * this version cannot answer one, so the host rejects it (optional) */
    void (*question)(void *ctx, const char *id);
} oc_host_t;

enum { OC_PART_TEXT = 1, OC_PART_REASONING, OC_PART_TOOL };

typedef struct oc_part {
    char id[OC_ID_MAX]; /* "" free slot */
    int kind;
    bool started; /* message.start sent (text) */
    bool ended;   /* final event sent; later updates ignored */
    bool call_sent, result_sent;
    uint64_t age;
    char call_id[OC_ID_MAX];
    buf_t text;  /* escaped JSON string body from the deltas */
    char *input; /* tool input, raw JSON object (for permission prompts) */
} oc_part_t;

typedef struct oc_msg_role {
    char id[OC_ID_MAX];
    bool user;
} oc_msg_role_t;

enum { OC_TURN_NONE = 0, OC_TURN_POSTED, OC_TURN_BUSY };

typedef struct oc_map {
    oc_host_t host;
    oc_part_t parts[OC_MAX_PARTS];
    uint64_t part_age;
    oc_msg_role_t msgs[OC_MAX_MSGS];
    int msg_next;
    char *pending[OC_MAX_PENDING];

    int phase;
    bool settling;   /* the last turn ended with an abort/error: its tail may still come */
    bool last_idle;  /* the previous event of the session was an idle one */
    bool interrupted; /* abort requested (or seen) in this turn */
    bool errored;     /* a session.error (abort included) came in this turn */
    bool failed;      /* an error event was sent in this turn */
    uint64_t t0_ms;
    /* stats of the turn */
    int steps, assistant_msgs;
    double cost;
    int64_t tok_in, tok_out, tok_reason, tok_cache_read, tok_cache_write;
    char finish[32];
    char model[200]; /* "provider/model" last reported through sink->info */

    uint64_t frames, ignored, events;
    buf_t ev; /* event being built */
} oc_map_t;

void oc_map_init(oc_map_t *m, const oc_host_t *host);
/* Drops pending prompts (host->pending_removed each) and frees. */
void oc_map_free(oc_map_t *m);

/* The adapter posted a prompt: a turn begins. */
void oc_map_turn_begin(oc_map_t *m, uint64_t now_ms);
/* An abort was requested for the running turn. */
void oc_map_interrupt(oc_map_t *m);
/* One event of this session. Returns the number of AEP events emitted.
 * May emit `done` (always the last thing it does). */
int oc_map_frame(oc_map_t *m, const oc_frame_t *f, uint64_t now_ms, const wkr_sink_t *sink);
/* The turn failed outside the event stream (a request failed): error
 * {code, message}, open messages closed, done{success:false}. No-op without a
 * turn. */
void oc_map_turn_fail(oc_map_t *m, const char *code, const char *msg, uint64_t now_ms,
                      const wkr_sink_t *sink);
/* A turn the adapter never posted (interrupted while held): done{success:
 * false, interrupted:true}. */
void oc_map_turn_abandon(oc_map_t *m, uint64_t now_ms, const wkr_sink_t *sink);
/* The session is going away: closes open messages (message.end + message),
 * no done (the core ends the turn). */
void oc_map_finish(oc_map_t *m, const wkr_sink_t *sink);

bool oc_map_turn_active(const oc_map_t *m);
bool oc_map_settling(const oc_map_t *m);
void oc_map_settle_end(oc_map_t *m);

/* 0 if `id` is a pending permission prompt (and removes it: it is being
 * answered), -ENOENT otherwise. */
int oc_map_permission_take(oc_map_t *m, const char *id);
int oc_map_pending_count(const oc_map_t *m);

/* ---- request bodies (appended to out; 0 or -ENOMEM / -EINVAL) ---------- */

/* POST /session/{id}/prompt_async: {"parts":[{"type":"text","text":…}]
 * [, "model":{"providerID","modelID"}] [, "system": …]}. `content` is the
 * inside of a JSON string literal, already escaped. `model` "provider/model"
 * or "model" (provider anthropic), optional. */
int oc_map_prompt_body(buf_t *out, const char *content, size_t len, const char *model,
                       const char *system);
/* POST /permission/{id}/reply: {"reply":"once"|"reject"[, "message"]}. */
int oc_map_reply_body(buf_t *out, bool allow, const char *reason);
/* POST /session: {"title", "permission":[rules]} from an AEP permission_mode
 * (NULL/"default": bash, edit, webfetch ask; "acceptEdits": edit allowed;
 * "bypassPermissions": everything allowed; "plan": edits and bash denied). */
int oc_map_session_body(buf_t *out, const char *title, const char *permission_mode);

#endif
