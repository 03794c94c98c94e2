/*
 * claude_map.c - Claude Code stream-json lines -> AEP events, and the lines
 * hotplex writes to the CLI (see claude_map.h for the mapping table).
 *
 * Hot path: a content_block_delta line is tokenized into a fixed token array
 * (no tree, no allocation), and the escaped text slice is copied into the
 * outbound message.delta as it is. The full text of a block is the
 * concatenation of those escaped slices, which is itself a valid escaped
 * string body.
 *
 * Owns: streaming state, outstanding permission prompts, the interrupted
 * flag. Must never do I/O (replies go through host->reply), and must never
 * fail on any input: what it does not understand it counts and ignores.
 */
#include "worker/claude_map.h"

/* Tokens of the line being mapped. Lines are mapped one at a time on the loop
 * thread and no token outlives claude_map_line, so every agent shares one
 * array instead of carrying 20 KiB each (thread-local for the unit tests and
 * fuzzers, which may run elsewhere). */
static _Thread_local json_tok_t g_tok_fixed[CLAUDE_FIXED_TOKENS];

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

/* ---- small helpers ------------------------------------------------------ */

static int get(const json_doc_t *d, int obj, const char *key)
{
    return obj >= 0 && json_type(d, obj) == JSON_OBJ ? json_obj_get(d, obj, key) : -1;
}

static bool is_str(const json_doc_t *d, int i)
{
    return i >= 0 && json_type(d, i) == JSON_STR;
}

static bool is_num(const json_doc_t *d, int i)
{
    size_t n;
    const char *p = i >= 0 && json_type(d, i) == JSON_PRIM ? json_raw(d, i, &n) : NULL;
    return p && n > 0 && (*p == '-' || (*p >= '0' && *p <= '9'));
}

static bool get_bool(const json_doc_t *d, int obj, const char *key, bool dflt)
{
    bool v;
    int i = get(d, obj, key);
    return i >= 0 && json_get_bool(d, i, &v) == 0 ? v : dflt;
}

/* key: the escaped string at token i ("" if i is not a string) */
static void kesc(jw_t *w, const char *key, const json_doc_t *d, int i)
{
    size_t n = 0;
    const char *body = is_str(d, i) ? json_str_body(d, i, &n) : "";
    jw_key(w, key);
    jw_str_escaped(w, body, n);
}

/* key: the raw JSON value at token i, or `dflt` (raw JSON) when absent/null */
static void kraw(jw_t *w, const char *key, const json_doc_t *d, int i, const char *dflt)
{
    size_t n;
    const char *raw = i >= 0 && !json_is_null(d, i) ? json_raw(d, i, &n) : NULL;
    if (!raw) {
        raw = dflt;
        n = strlen(dflt);
    }
    jw_kraw(w, key, raw, n);
}

/* Unescaped copy of string token i into out; false if not a string or too long. */
static bool str_copy(const json_doc_t *d, int i, char *out, size_t cap)
{
    if (!is_str(d, i) || json_str_copy(d, i, out, cap) < 0) {
        out[0] = '\0';
        return false;
    }
    return strlen(out) > 0;
}

static int get_index(const json_doc_t *d, int obj)
{
    int64_t v;
    int i = get(d, obj, "index");
    return i >= 0 && json_get_i64(d, i, &v) == 0 && v >= 0 && v < 1000000 ? (int)v : 0;
}

/* ---- events ------------------------------------------------------------- */

static void ev_begin(claude_map_t *m, jw_t *w)
{
    buf_reset(&m->ev);
    jw_init(w, &m->ev);
    jw_obj_begin(w);
}

static void ev_end(claude_map_t *m, jw_t *w, const char *type, const wkr_sink_t *sink)
{
    jw_obj_end(w);
    if (jw_error(w)) {
        log_warn("claude: %s event not encoded: %s", type, strerror(-jw_error(w)));
        return;
    }
    m->events++;
    if (sink && sink->event) sink->event(sink->ctx, type, m->ev.p, m->ev.len);
}

static void emit_message_start(claude_map_t *m, const char *id, const wkr_sink_t *sink)
{
    jw_t w;
    ev_begin(m, &w);
    jw_kstr(&w, "id", id);
    jw_kstr(&w, "role", "assistant");
    jw_kstr(&w, "content_type", "text");
    ev_end(m, &w, "message.start", sink);
}

static void emit_message_end(claude_map_t *m, const char *id, const char *text, size_t n,
                             const wkr_sink_t *sink)
{
    jw_t w;
    ev_begin(m, &w);
    jw_kstr(&w, "message_id", id);
    ev_end(m, &w, "message.end", sink);

    ev_begin(m, &w);
    jw_kstr(&w, "id", id);
    jw_kstr(&w, "role", "assistant");
    jw_key(&w, "content");
    jw_str_escaped(&w, text, n);
    jw_kstr(&w, "content_type", "text");
    ev_end(m, &w, "message", sink);
}

static void emit_reasoning(claude_map_t *m, const char *id, const char *text, size_t n,
                           const wkr_sink_t *sink)
{
    jw_t w;
    ev_begin(m, &w);
    jw_kstr(&w, "id", id);
    jw_key(&w, "content");
    jw_str_escaped(&w, text, n);
    ev_end(m, &w, "reasoning", sink);
}

static void emit_error(claude_map_t *m, const char *code, const char *msg, size_t n, bool escaped,
                       const wkr_sink_t *sink)
{
    jw_t w;
    ev_begin(m, &w);
    jw_kstr(&w, "code", code);
    jw_key(&w, "message");
    if (escaped)
        jw_str_escaped(&w, msg, n);
    else
        jw_strn(&w, msg, n);
    ev_end(m, &w, "error", sink);
}

/* ---- replies to the CLI -------------------------------------------------- */

static void reply(claude_map_t *m)
{
    if (m->host.reply) m->host.reply(m->host.ctx, m->out.p, m->out.len);
}

static int build_perm_reply(buf_t *out, const char *req_id, bool allow, const char *reason,
                            const char *updated, size_t ulen)
{
    jw_t w;
    size_t mark = out->len;
    jw_init(&w, out);
    jw_obj_begin(&w);
    jw_kstr(&w, "type", "control_response");
    jw_key(&w, "response");
    jw_obj_begin(&w);
    jw_kstr(&w, "subtype", "success");
    jw_kstr(&w, "request_id", req_id);
    jw_key(&w, "response");
    jw_obj_begin(&w);
    if (allow) {
        jw_kstr(&w, "behavior", "allow");
        jw_kraw(&w, "updatedInput", updated, ulen);
    } else {
        jw_kstr(&w, "behavior", "deny");
        jw_kstr(&w, "message", reason && *reason ? reason : "denied by user");
    }
    jw_obj_end(&w);
    jw_obj_end(&w);
    jw_obj_end(&w);
    if (jw_error(&w) || buf_append(out, "\n", 1) < 0) {
        out->len = mark;
        if (out->cap) out->p[mark] = '\0';
        return -ENOMEM;
    }
    return 0;
}

static void reply_unsupported(claude_map_t *m, const json_doc_t *d, int rid)
{
    jw_t w;
    size_t n;
    buf_reset(&m->out);
    jw_init(&w, &m->out);
    jw_obj_begin(&w);
    jw_kstr(&w, "type", "control_response");
    jw_key(&w, "response");
    jw_obj_begin(&w);
    jw_kstr(&w, "subtype", "error");
    const char *raw = json_raw(d, rid, &n);
    jw_key(&w, "request_id");
    jw_raw(&w, raw, n);
    jw_kstr(&w, "error", "unsupported");
    jw_obj_end(&w);
    jw_obj_end(&w);
    if (!jw_error(&w) && buf_append(&m->out, "\n", 1) == 0) reply(m);
}

/* ---- pending permission prompts ------------------------------------------ */

static claude_pending_t *pending_find(claude_map_t *m, const char *id)
{
    for (int i = 0; i < CLAUDE_MAX_PENDING; i++)
        if (m->pending[i].id && strcmp(m->pending[i].id, id) == 0) return &m->pending[i];
    return NULL;
}

static void pending_drop(claude_map_t *m, claude_pending_t *pe)
{
    if (!pe->id) return;
    if (m->host.pending_removed) m->host.pending_removed(m->host.ctx, pe);
    free(pe->id);
    free(pe->input);
    memset(pe, 0, sizeof(*pe));
}

static void pending_clear(claude_map_t *m)
{
    for (int i = 0; i < CLAUDE_MAX_PENDING; i++)
        pending_drop(m, &m->pending[i]);
}

int claude_map_pending_count(const claude_map_t *m)
{
    int n = 0;
    for (int i = 0; i < CLAUDE_MAX_PENDING; i++)
        n += m->pending[i].id != NULL;
    return n;
}

/* ---- content blocks ------------------------------------------------------ */

static bool recent_has(const claude_map_t *m, const char *id)
{
    for (int i = 0; i < CLAUDE_RECENT_MSGS; i++)
        if (m->recent[i][0] && strcmp(m->recent[i], id) == 0) return true;
    return false;
}

static void anon_id(claude_map_t *m, char *out, size_t cap)
{
    snprintf(out, cap, "msg_hp%llu", (unsigned long long)++m->anon_ids);
}

static claude_block_t *block_find(claude_map_t *m, int index)
{
    for (int i = 0; i < CLAUDE_MAX_BLOCKS; i++)
        if (m->blocks[i].index == index) return &m->blocks[i];
    return NULL;
}

static void block_close(claude_map_t *m, claude_block_t *b, const wkr_sink_t *sink)
{
    if (b->kind == CLAUDE_BLOCK_TEXT)
        emit_message_end(m, b->id, b->text.p ? b->text.p : "", b->text.len, sink);
    else
        emit_reasoning(m, b->id, b->text.p ? b->text.p : "", b->text.len, sink);
    b->index = -1;
    b->kind = 0;
    if (b->text.cap > 65536)
        buf_free(&b->text);
    else
        buf_reset(&b->text);
}

static void blocks_flush(claude_map_t *m, const wkr_sink_t *sink)
{
    for (;;) {
        claude_block_t *low = NULL;
        for (int i = 0; i < CLAUDE_MAX_BLOCKS; i++)
            if (m->blocks[i].index >= 0 && (!low || m->blocks[i].index < low->index))
                low = &m->blocks[i];
        if (!low) return;
        block_close(m, low, sink);
    }
}

static claude_block_t *block_open(claude_map_t *m, int index, int kind, const wkr_sink_t *sink)
{
    claude_block_t *b = block_find(m, index);
    if (b) block_close(m, b, sink); /* a second start for the same index */
    b = block_find(m, -1);
    if (!b) {
        log_warn("claude: more than %d content blocks open at once; block %d dropped",
                 CLAUDE_MAX_BLOCKS, index);
        return NULL;
    }
    if (!m->msg_id[0]) anon_id(m, m->msg_id, sizeof(m->msg_id));
    b->index = index;
    b->kind = kind;
    snprintf(b->id, sizeof(b->id), "%s:%d", m->msg_id, index);
    buf_reset(&b->text);
    if (kind == CLAUDE_BLOCK_TEXT) emit_message_start(m, b->id, sink);
    return b;
}

static void block_text(claude_map_t *m, claude_block_t *b, const char *body, size_t n,
                       const wkr_sink_t *sink)
{
    if (buf_append(&b->text, body, n) < 0)
        log_warn("claude: out of memory accumulating block %s", b->id);
    if (b->kind == CLAUDE_BLOCK_TEXT) {
        jw_t w;
        ev_begin(m, &w);
        jw_kstr(&w, "message_id", b->id);
        jw_key(&w, "content");
        jw_str_escaped(&w, body, n);
        ev_end(m, &w, "message.delta", sink);
    }
}

/* ---- line types ---------------------------------------------------------- */

static void on_stream_event(claude_map_t *m, const json_doc_t *d, const wkr_sink_t *sink)
{
    int ev = get(d, 0, "event");
    int ptu = get(d, 0, "parent_tool_use_id");
    int et = get(d, ev, "type");

    if (ptu >= 0 && !json_is_null(d, ptu))
        return; /* a subagent's token stream: its result arrives as a tool_result */
    if (!is_str(d, et)) {
        m->ignored++;
        return;
    }
    if (json_str_eq(d, et, "content_block_delta")) {
        int delta = get(d, ev, "delta");
        int dt = get(d, delta, "type");
        int kind, txt;
        if (json_str_eq(d, dt, "text_delta")) {
            kind = CLAUDE_BLOCK_TEXT;
            txt = get(d, delta, "text");
        } else if (json_str_eq(d, dt, "thinking_delta")) {
            kind = CLAUDE_BLOCK_THINKING;
            txt = get(d, delta, "thinking");
        } else {
            return; /* input_json_delta, signature_delta, ... */
        }
        if (!is_str(d, txt)) return;
        int index = get_index(d, ev);
        claude_block_t *b = block_find(m, index);
        if (!b || b->kind != kind)
            b = block_open(m, index, kind, sink); /* start missed: open it now */
        if (b) {
            size_t n;
            const char *body = json_str_body(d, txt, &n);
            block_text(m, b, body, n, sink);
        }
    } else if (json_str_eq(d, et, "content_block_start")) {
        int cb = get(d, ev, "content_block");
        int ct = get(d, cb, "type");
        int index = get_index(d, ev);
        int kind = json_str_eq(d, ct, "text")       ? CLAUDE_BLOCK_TEXT
                   : json_str_eq(d, ct, "thinking") ? CLAUDE_BLOCK_THINKING
                                                    : 0;
        if (!kind) return; /* tool_use: the complete call comes in the assistant line */
        claude_block_t *b = block_open(m, index, kind, sink);
        int txt = get(d, cb, kind == CLAUDE_BLOCK_TEXT ? "text" : "thinking");
        size_t n = 0;
        const char *body = is_str(d, txt) ? json_str_body(d, txt, &n) : NULL;
        if (b && body && n > 0) block_text(m, b, body, n, sink);
    } else if (json_str_eq(d, et, "content_block_stop")) {
        claude_block_t *b = block_find(m, get_index(d, ev));
        if (b) block_close(m, b, sink);
    } else if (json_str_eq(d, et, "message_start")) {
        int msg = get(d, ev, "message");
        blocks_flush(m, sink);
        if (!str_copy(d, get(d, msg, "id"), m->msg_id, sizeof(m->msg_id)))
            anon_id(m, m->msg_id, sizeof(m->msg_id));
        snprintf(m->recent[m->recent_next], CLAUDE_ID_MAX, "%s", m->msg_id);
        m->recent_next = (m->recent_next + 1) % CLAUDE_RECENT_MSGS;
    } else if (json_str_eq(d, et, "message_stop")) {
        blocks_flush(m, sink);
    }
    /* message_delta, ping, ...: nothing */
}

static void on_assistant(claude_map_t *m, const json_doc_t *d, const wkr_sink_t *sink)
{
    int msg = get(d, 0, "message");
    int content = get(d, msg, "content");
    int ptu = get(d, 0, "parent_tool_use_id");
    bool sub = ptu >= 0 && !json_is_null(d, ptu);
    char id[CLAUDE_ID_MAX];

    if (json_type(d, content) != JSON_ARR) {
        m->ignored++;
        return;
    }
    if (!str_copy(d, get(d, msg, "id"), id, sizeof(id))) anon_id(m, id, sizeof(id));
    bool streamed = recent_has(m, id);
    if (!streamed && strcmp(id, m->ns_msg_id) != 0) {
        snprintf(m->ns_msg_id, sizeof(m->ns_msg_id), "%s", id);
        m->ns_blocks = 0;
    }

    for (int b = content + 1; b < json_next(d, content); b = json_next(d, b)) {
        int bt = get(d, b, "type");
        int pos = streamed ? 0 : m->ns_blocks++;
        char bid[CLAUDE_ID_MAX + 16];
        jw_t w;

        if (json_str_eq(d, bt, "tool_use")) {
            ev_begin(m, &w);
            kesc(&w, "id", d, get(d, b, "id"));
            kesc(&w, "name", d, get(d, b, "name"));
            kraw(&w, "input", d, get(d, b, "input"), "{}");
            ev_end(m, &w, "tool_call", sink);
            continue;
        }
        if (streamed || sub)
            continue; /* already streamed as it was generated / a subagent's inner text */
        snprintf(bid, sizeof(bid), "%s:%d", id, pos);
        if (json_str_eq(d, bt, "text")) {
            size_t n = 0;
            int t = get(d, b, "text");
            const char *body = is_str(d, t) ? json_str_body(d, t, &n) : "";
            emit_message_start(m, bid, sink);
            emit_message_end(m, bid, body, n, sink);
        } else if (json_str_eq(d, bt, "thinking")) {
            size_t n = 0;
            int t = get(d, b, "thinking");
            const char *body = is_str(d, t) ? json_str_body(d, t, &n) : "";
            emit_reasoning(m, bid, body, n, sink);
        }
    }
}

static void on_user(claude_map_t *m, const json_doc_t *d, const wkr_sink_t *sink)
{
    int msg = get(d, 0, "message");
    int content = get(d, msg, "content");

    if (json_type(d, content) != JSON_ARR) return; /* a plain user prompt echo */
    for (int b = content + 1; b < json_next(d, content); b = json_next(d, b)) {
        if (!json_str_eq(d, get(d, b, "type"), "tool_result")) continue;
        jw_t w;
        int c = get(d, b, "content");
        ev_begin(m, &w);
        kesc(&w, "id", d, get(d, b, "tool_use_id"));
        if (is_str(d, c))
            kesc(&w, "output", d, c);
        else
            kraw(&w, "output", d, c, "\"\"");
        jw_kbool(&w, "error", get_bool(d, b, "is_error", false));
        ev_end(m, &w, "tool_result", sink);
    }
}

/* "Bash: ls -la" from the tool input, for prompts that carry no description */
static char *describe(const json_doc_t *d, int tool, int input)
{
    static const char *keys[] = {"command", "file_path", "path", "url", "pattern", "description"};
    char name[64] = "tool";
    char *detail = NULL, *out;
    str_copy(d, tool, name, sizeof(name));
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]) && !detail; i++) {
        int v = get(d, input, keys[i]);
        if (is_str(d, v) && json_str_dup(d, v, &detail) < 0) detail = NULL;
    }
    if (detail && strlen(detail) > 200) strcpy(detail + 197, "...");
    if (asprintf(&out, "%s%s%s", name, detail ? ": " : "", detail ? detail : "") < 0) out = NULL;
    free(detail);
    return out;
}

static void on_control_request(claude_map_t *m, const json_doc_t *d, const wkr_sink_t *sink)
{
    int rid = get(d, 0, "request_id");
    int req = get(d, 0, "request");
    int sub = get(d, req, "subtype");
    char *id = NULL;

    if (!is_str(d, rid)) {
        m->ignored++;
        return;
    }
    if (!json_str_eq(d, sub, "can_use_tool")) {
        char name[64] = "?";
        str_copy(d, sub, name, sizeof(name));
        log_info("claude: unsupported control_request %s answered with an error", name);
        reply_unsupported(m, d, rid);
        return;
    }
    if (json_str_dup(d, rid, &id) < 0) return;

    int tool = get(d, req, "tool_name");
    int input = get(d, req, "input");
    size_t ilen = 2;
    const char *iraw = json_type(d, input) == JSON_OBJ ? json_raw(d, input, &ilen) : "{}";

    claude_pending_t *pe = pending_find(m, id);
    if (pe) {
        pending_drop(m, pe); /* asked again: the newest input counts */
    }
    for (int i = 0; i < CLAUDE_MAX_PENDING && !pe; i++)
        if (!m->pending[i].id) pe = &m->pending[i];
    if (!pe) {
        log_warn("claude: %d permission prompts pending; %s denied", CLAUDE_MAX_PENDING, id);
        buf_reset(&m->out);
        if (build_perm_reply(&m->out, id, false, "too many pending permission requests", NULL, 0) ==
            0)
            reply(m);
        free(id);
        return;
    }
    pe->input = malloc(ilen + 1);
    if (!pe->input) {
        free(id);
        return;
    }
    memcpy(pe->input, iraw, ilen);
    pe->input[ilen] = '\0';
    pe->input_len = ilen;
    pe->id = id;
    pe->age = ++m->pending_age;
    if (m->host.pending_added) m->host.pending_added(m->host.ctx, pe);

    jw_t w;
    int desc = get(d, req, "description");
    ev_begin(m, &w);
    jw_kstr(&w, "id", id); /* pe may be answered (and freed) inside sink->event */
    kesc(&w, "tool_name", d, tool);
    if (is_str(d, desc)) {
        kesc(&w, "description", d, desc);
    } else {
        char *text = describe(d, tool, input);
        jw_kstr(&w, "description", text ? text : "permission requested");
        free(text);
    }
    jw_kraw(&w, "input", iraw, ilen);
    jw_key(&w, "args");
    jw_arr_begin(&w);
    jw_strn(&w, iraw, ilen);
    jw_arr_end(&w);
    int tuid = get(d, req, "tool_use_id");
    if (is_str(d, tuid)) kesc(&w, "tool_use_id", d, tuid);
    ev_end(m, &w, "permission_request", sink);
}

static void on_cancel(claude_map_t *m, const json_doc_t *d)
{
    char id[256];
    if (!str_copy(d, get(d, 0, "request_id"), id, sizeof(id))) return;
    claude_pending_t *pe = pending_find(m, id);
    if (pe) {
        log_info("claude: permission prompt %s cancelled by the agent", id);
        pending_drop(m, pe);
    }
}

static void on_result(claude_map_t *m, const json_doc_t *d, const wkr_sink_t *sink)
{
    int subtype = get(d, 0, "subtype");
    bool is_error = get_bool(d, 0, "is_error", !json_str_eq(d, subtype, "success"));
    bool interrupted = m->interrupted;
    jw_t w;

    blocks_flush(m, sink);
    pending_clear(m); /* the turn is over: nobody waits for those answers any more */
    m->interrupted = false;

    if (is_error && !interrupted) {
        int r = get(d, 0, "result");
        int errs = get(d, 0, "errors");
        int e0 = json_type(d, errs) == JSON_ARR ? json_arr_get(d, errs, 0) : -1;
        size_t n = 0, sn = 0, en = 0;
        const char *msg = is_str(d, r) ? json_str_body(d, r, &n) : NULL;
        const char *sub = is_str(d, subtype) ? json_str_body(d, subtype, &sn) : NULL;
        const char *e = is_str(d, e0) ? json_str_body(d, e0, &en) : NULL;
        if (msg && n > 0) {
            emit_error(m, "INTERNAL_ERROR", msg, n, true, sink);
        } else if (sub || e) {
            /* escaped slices joined: "error_during_execution: <errors[0]>" */
            buf_reset(&m->out);
            if (sub) buf_append(&m->out, sub, sn);
            if (sub && e) buf_append(&m->out, ": ", 2);
            if (e) buf_append(&m->out, e, en);
            emit_error(m, "INTERNAL_ERROR", m->out.p ? m->out.p : "", m->out.len, true, sink);
        } else {
            emit_error(m, "INTERNAL_ERROR", "agent turn failed", 17, false, sink);
        }
    }

    static const char *nums[] = {"duration_ms", "duration_api_ms", "num_turns", "total_cost_usd"};
    ev_begin(m, &w);
    jw_kbool(&w, "success", !is_error);
    jw_key(&w, "stats");
    jw_obj_begin(&w);
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        int v = get(d, 0, nums[i]);
        if (is_num(d, v)) kraw(&w, nums[i], d, v, "0");
    }
    int usage = get(d, 0, "usage");
    if (json_type(d, usage) == JSON_OBJ) kraw(&w, "usage", d, usage, "{}");
    if (is_str(d, subtype)) kesc(&w, "subtype", d, subtype);
    jw_kbool(&w, "interrupted", interrupted);
    jw_obj_end(&w);
    ev_end(m, &w, "done", sink);
}

static void on_system(claude_map_t *m, const json_doc_t *d, const wkr_sink_t *sink)
{
    static const char *keys[][2] = {{"model", "agent_model"},
                                    {"session_id", "agent_session_id"},
                                    {"claude_code_version", "agent_version"}};
    if (!json_str_eq(d, get(d, 0, "subtype"), "init")) return;
    (void)m;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char *v = NULL;
        int t = get(d, 0, keys[i][0]);
        if (is_str(d, t) && json_str_dup(d, t, &v) >= 0) {
            if (sink && sink->info) sink->info(sink->ctx, keys[i][1], v);
            free(v);
        }
    }
}

/* ---- public ------------------------------------------------------------- */

void claude_map_init(claude_map_t *m, const claude_host_t *host)
{
    memset(m, 0, sizeof(*m));
    if (host) m->host = *host;
    for (int i = 0; i < CLAUDE_MAX_BLOCKS; i++) {
        m->blocks[i].index = -1;
        buf_init(&m->blocks[i].text);
    }
    m->tok = g_tok_fixed;
    m->tok_cap = CLAUDE_FIXED_TOKENS;
    buf_init(&m->ev);
    buf_init(&m->out);
}

void claude_map_free(claude_map_t *m)
{
    pending_clear(m);
    for (int i = 0; i < CLAUDE_MAX_BLOCKS; i++)
        buf_free(&m->blocks[i].text);
    if (m->tok != g_tok_fixed) free(m->tok);
    m->tok = g_tok_fixed;
    m->tok_cap = CLAUDE_FIXED_TOKENS;
    buf_free(&m->ev);
    buf_free(&m->out);
}

static int parse(claude_map_t *m, json_doc_t *d, const char *line, size_t len)
{
    int rc = json_parse(d, line, len, m->tok, m->tok_cap);
    while (rc == -E2BIG && m->tok_cap < CLAUDE_MAX_TOKENS) {
        int ncap = m->tok_cap * 8 > CLAUDE_MAX_TOKENS ? CLAUDE_MAX_TOKENS : m->tok_cap * 8;
        json_tok_t *nt = malloc((size_t)ncap * sizeof(*nt));
        if (!nt) return -ENOMEM;
        if (m->tok != g_tok_fixed) free(m->tok);
        m->tok = nt;
        m->tok_cap = ncap;
        rc = json_parse(d, line, len, m->tok, m->tok_cap);
    }
    return rc;
}

int claude_map_line(claude_map_t *m, const char *line, size_t len, const wkr_sink_t *sink)
{
    json_doc_t d;
    uint64_t before = m->events;
    int rc, t;

    m->lines++;
    rc = parse(m, &d, line, len);
    if (rc < 0) {
        m->ignored++;
        log_debug("claude: stdout line ignored (%s, %zu bytes)",
                  rc == -EILSEQ ? "invalid UTF-8 or control character" : strerror(-rc), len);
        goto out;
    }
    t = json_type(&d, 0) == JSON_OBJ ? get(&d, 0, "type") : -1;
    if (!is_str(&d, t)) {
        m->ignored++;
        log_debug("claude: stdout line ignored (not an object with a type)");
    } else if (json_str_eq(&d, t, "stream_event")) {
        on_stream_event(m, &d, sink);
    } else if (json_str_eq(&d, t, "assistant")) {
        on_assistant(m, &d, sink);
    } else if (json_str_eq(&d, t, "user")) {
        on_user(m, &d, sink);
    } else if (json_str_eq(&d, t, "control_request")) {
        on_control_request(m, &d, sink);
    } else if (json_str_eq(&d, t, "control_cancel_request")) {
        on_cancel(m, &d);
    } else if (json_str_eq(&d, t, "result")) {
        on_result(m, &d, sink);
    } else if (json_str_eq(&d, t, "system")) {
        on_system(m, &d, sink);
    } else if (json_str_eq(&d, t, "control_response")) {
        /* the CLI's answer to our interrupt: nothing to tell clients */
    } else {
        m->ignored++;
        log_debug("claude: stdout line of unknown type ignored");
    }
out:
    if (m->tok != g_tok_fixed) { /* a rare big line: give the memory back */
        free(m->tok);
        m->tok = g_tok_fixed;
        m->tok_cap = CLAUDE_FIXED_TOKENS;
    }
    return (int)(m->events - before);
}

void claude_map_finish(claude_map_t *m, const wkr_sink_t *sink)
{
    blocks_flush(m, sink);
}

void claude_map_overlong(claude_map_t *m, size_t max_line, const wkr_sink_t *sink)
{
    char msg[96];
    int n = snprintf(msg, sizeof(msg), "agent output line exceeded %zu bytes", max_line);
    m->ignored++;
    emit_error(m, "INTERNAL_ERROR", msg, (size_t)n, false, sink);
}

int claude_map_input(buf_t *out, const char *content, size_t len)
{
    jw_t w;
    size_t mark = out->len;
    jw_init(&w, out);
    jw_obj_begin(&w);
    jw_kstr(&w, "type", "user");
    jw_key(&w, "message");
    jw_obj_begin(&w);
    jw_kstr(&w, "role", "user");
    jw_key(&w, "content");
    jw_str_escaped(&w, content, len);
    jw_obj_end(&w);
    jw_obj_end(&w);
    if (jw_error(&w) || buf_append(out, "\n", 1) < 0) {
        out->len = mark;
        if (out->cap) out->p[mark] = '\0';
        return -ENOMEM;
    }
    return 0;
}

int claude_map_interrupt(claude_map_t *m, buf_t *out)
{
    size_t mark = out->len;
    if (buf_printf(out,
                   "{\"type\":\"control_request\",\"request_id\":\"int_%u\","
                   "\"request\":{\"subtype\":\"interrupt\"}}\n",
                   ++m->interrupt_n) < 0) {
        out->len = mark;
        if (out->cap) out->p[mark] = '\0';
        return -ENOMEM;
    }
    m->interrupted = true;
    return 0;
}

int claude_map_permission(claude_map_t *m, buf_t *out, const char *req_id, bool allow,
                          const char *reason, const char *updated, size_t updated_len)
{
    claude_pending_t *pe = req_id ? pending_find(m, req_id) : NULL;
    if (!pe) return -ENOENT;
    if (allow && updated) {
        json_tok_t toks[CLAUDE_FIXED_TOKENS];
        json_doc_t d;
        int rc = json_parse(&d, updated, updated_len, toks, CLAUDE_FIXED_TOKENS);
        /* -E2BIG: valid, just large; only the root type matters here */
        if (rc == -E2BIG) {
            size_t i = 0;
            while (i < updated_len && strchr(" \t\r\n", updated[i]))
                i++;
            if (i >= updated_len || updated[i] != '{') return -EINVAL;
        } else if (rc < 0 || json_type(&d, 0) != JSON_OBJ) {
            return -EINVAL;
        }
    }
    int rc = allow ? build_perm_reply(out, pe->id, true, NULL, updated ? updated : pe->input,
                                      updated ? updated_len : pe->input_len)
                   : build_perm_reply(out, pe->id, false, reason, NULL, 0);
    if (rc == 0) pending_drop(m, pe);
    return rc;
}
