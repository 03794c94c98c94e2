/*
 * claude_map.h - Claude Code stream-json <-> AEP, without I/O.
 *
 * claude_map_line() turns one stdout line of `claude -p --output-format
 * stream-json --verbose --include-partial-messages` into zero or more AEP
 * events (sink->event) and agent facts (sink->info). The builders below make
 * the lines hotplex writes to the CLI's stdin. Everything the CLI may ask of
 * its host that is not a permission prompt is answered at once (an error
 * control_response) through host->reply, so the CLI never waits on us.
 *
 * Mapping (stdout line -> events):
 *   stream_event content_block_start text   -> message.start {id, role, content_type}
 *   stream_event content_block_delta text   -> message.delta {message_id, content}
 *   stream_event content_block_stop  text   -> message.end {message_id},
 *                                              message {id, role, content, content_type}
 *   stream_event thinking block (at stop)   -> reasoning {id, content}
 *   assistant tool_use block                -> tool_call {id, name, input}
 *   assistant text/thinking not streamed    -> message.start, message.end, message / reasoning
 *   user tool_result block                  -> tool_result {id, output, error}
 *   control_request can_use_tool            -> permission_request {id, tool_name, description,
 *                                              input, args, tool_use_id}
 *   control_request (other subtypes)        -> error control_response to the CLI, no event
 *   control_cancel_request                  -> the prompt is dropped, no event
 *   result                                  -> error {INTERNAL_ERROR, message: `result`, else
 *                                              `subtype[: errors[0]]`} when is_error and not
 *                                              interrupted by us; then always done {success,
 *                                              stats {duration_ms, duration_api_ms, num_turns,
 *                                              total_cost_usd, usage, subtype, interrupted}}
 *   system init                             -> info agent_model, agent_session_id,
 *                                              agent_version
 *   anything else, non-JSON, invalid UTF-8  -> nothing (counted in `ignored`)
 * Block ids are "<API message id>:<block index>", unique per block. Text is
 * copied as escaped JSON slices, never unescaped and re-escaped. A block left
 * open (interrupted mid-stream) is closed at the next message_start,
 * message_stop or result, so every message.start gets its message.end.
 *
 * Fast path: content_block_delta lines (text, thinking and input_json
 * deltas: the token stream, most of stdout) are recognised against the exact
 * layout the CLI prints and their escaped text is sliced out without
 * tokenizing the line. A line that does not match that layout byte for byte
 * goes through the full parse; both produce the same events (the unit tests
 * and the fuzz target compare against `full_parse_only`).
 *
 * Owns: the streaming state of the current API message, the outstanding
 * permission prompts (bounded, with their original tool input; held on the
 * heap only while there are any), the interrupted flag of the current turn.
 * Must never: do I/O, block, or trust a line (any byte sequence is handled).
 */
#ifndef HOTPLEX_WORKER_CLAUDE_MAP_H
#define HOTPLEX_WORKER_CLAUDE_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"
#include "util/json.h"
#include "worker/worker.h"

#define CLAUDE_MAX_PENDING 64 /* outstanding permission prompts */
#define CLAUDE_MAX_BLOCKS 8   /* content blocks open at once in one API message */
#define CLAUDE_RECENT_MSGS 8  /* streamed message ids remembered (dedup of assistant lines) */
#define CLAUDE_ID_MAX 128     /* longest API message id kept */
#define CLAUDE_FIXED_TOKENS 1024
#define CLAUDE_MAX_TOKENS (256 * 1024) /* a line needing more is ignored */

/* One outstanding prompt: a single heap block, id and input stored after the
 * struct. Its address is stable from pending_added to pending_removed. */
typedef struct claude_pending {
    char *id;    /* request_id (unescaped) */
    char *input; /* request.input, raw JSON object */
    size_t input_len;
    uint64_t age;
    void *user; /* the host's (claude_code.c: the timeout timer) */
} claude_pending_t;

typedef struct claude_host {
    void *ctx;
    /* One complete line for the CLI's stdin, '\n'-terminated. */
    void (*reply)(void *ctx, const char *line, size_t len);
    /* A permission prompt starts / stops waiting for an answer (optional). */
    void (*pending_added)(void *ctx, claude_pending_t *pe);
    void (*pending_removed)(void *ctx, claude_pending_t *pe);
} claude_host_t;

enum { CLAUDE_BLOCK_TEXT = 1, CLAUDE_BLOCK_THINKING };

/* An open content block. Its id, "<msg_id>:<index>", is built when an event
 * needs it: every open block belongs to the current API message (a new
 * message_start closes them all first), so no block stores its own. */
typedef struct claude_block {
    int32_t index; /* API content block index, -1: free slot */
    int32_t kind;
    buf_t text; /* escaped JSON string body accumulated from the deltas */
} claude_block_t;

/* Strings are held on the heap at their real length (NULL: ""), so a session
 * carries a few dozen bytes of ids, not CLAUDE_ID_MAX-sized arrays. */
typedef struct claude_map {
    claude_host_t host;
    char *msg_id;  /* API message being streamed (< CLAUDE_ID_MAX bytes) */
    int msg_plain; /* strlen(msg_id) when it needs no JSON escaping, else -1 */
    int recent_n;  /* ids in `recent` */
    /* The last CLAUDE_RECENT_MSGS ids seen in message_start (dedup of
     * assistant lines), oldest first, each NUL-terminated, in one buffer. */
    buf_t recent;
    claude_block_t blocks[CLAUDE_MAX_BLOCKS];
    char *ns_msg_id; /* last non-streamed assistant message */
    int ns_blocks;   /* its blocks emitted so far (for unique ids) */
    uint64_t anon_ids;
    /* Prompts by slot; a new one takes the lowest free slot. The slot array
     * is allocated at the first prompt, grown on demand up to
     * CLAUDE_MAX_PENDING and freed when the last prompt goes, so a session
     * without prompts carries none. */
    claude_pending_t **pending; /* [pending_cap], NULL: free slot */
    int pending_cap, pending_n;
    uint64_t pending_age;
    bool interrupted; /* we interrupted the current turn */
    unsigned interrupt_n;
    /* Tests and fuzzing only: every line through the full parse and every
     * message.delta through the JSON writer, the reference the fast paths
     * must match byte for byte. */
    bool full_parse_only;

    /* counters, for logs and metrics; `fast` lines took the fast path */
    uint64_t lines, ignored, events, fast;

    json_tok_t *tok; /* the shared token array, or a heap array for a rare big line */
    int tok_cap;
    buf_t ev;  /* event being built */
    buf_t out; /* reply being built */
} claude_map_t;

/* `host` may be NULL (no replies, no pending notifications). */
void claude_map_init(claude_map_t *m, const claude_host_t *host);
/* Drops every pending prompt (host->pending_removed for each) and frees. */
void claude_map_free(claude_map_t *m);

/* One stdout line (without '\n'). Returns the number of events emitted; 0
 * for a line that maps to nothing or was ignored. Never fails. */
int claude_map_line(claude_map_t *m, const char *line, size_t len, const wkr_sink_t *sink);

/* The agent is gone: closes any block left open (message.end + message or
 * reasoning with the text so far), so clients never see a dangling start. */
void claude_map_finish(claude_map_t *m, const wkr_sink_t *sink);

/* A stdout line longer than max_line was dropped: emits error{INTERNAL_ERROR}. */
void claude_map_overlong(claude_map_t *m, size_t max_line, const wkr_sink_t *sink);

/* ---- stdin lines (each appended to `out`, '\n'-terminated) -------------- */

/* A user turn; `content` is the inside of a JSON string literal, already
 * escaped. 0 or -ENOMEM. */
int claude_map_input(buf_t *out, const char *content, size_t len);

/* An interrupt control_request ("int_<n>"); marks the current turn as
 * interrupted until its result arrives. 0 or -ENOMEM. */
int claude_map_interrupt(claude_map_t *m, buf_t *out);

/* The answer to permission prompt `req_id`, which is then no longer pending.
 * allow: updatedInput = `updated` (a JSON object) or, when NULL, the
 * prompt's original input; deny: message = `reason` or "denied by user".
 * -ENOENT unknown req_id, -EINVAL `updated` is not a JSON object, -ENOMEM. */
int claude_map_permission(claude_map_t *m, buf_t *out, const char *req_id, bool allow,
                          const char *reason, const char *updated, size_t updated_len);

/* Number of prompts waiting for an answer. */
int claude_map_pending_count(const claude_map_t *m);

#endif
