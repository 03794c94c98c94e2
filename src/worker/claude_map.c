/*
 * claude_map.c - Claude Code stream-json lines -> AEP events, and the lines
 * hotplex writes to the CLI (see claude_map.h for the mapping table).
 *
 * Hot path: a content_block_delta line in the CLI's own layout is matched
 * byte for byte and only its strings are scanned (fast_delta); every other
 * line is tokenized into a shared token array (no tree, no allocation). Either
 * way the escaped text slice is copied into the outbound message.delta as it
 * is. The full text of a block is the concatenation of those escaped slices,
 * which is itself a valid escaped string body.
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
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/utf8.h"

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

/* The event and reply buffers and a block's text keep their memory only up
 * to this: a turn's full `message` text must not stay allocated for the
 * rest of the session (thousands of sessions each keeping their largest). */
#define MAP_KEEP_BYTES 2048

static void ev_begin(claude_map_t *m, jw_t *w)
{
    buf_reset_keep(&m->ev, MAP_KEEP_BYTES);
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
    buf_reset_keep(&m->out, MAP_KEEP_BYTES);
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

/* Slot of prompt `id`, or -1. */
static int pending_find(const claude_map_t *m, const char *id)
{
    for (int i = 0; i < m->pending_cap; i++)
        if (m->pending[i] && strcmp(m->pending[i]->id, id) == 0) return i;
    return -1;
}

/* Lowest free slot, growing the slot array when all are taken; -1 when
 * CLAUDE_MAX_PENDING are in use (or no memory). The array only ever grows
 * at its end, so slot numbers are those of a fixed table. */
static int pending_slot(claude_map_t *m)
{
    for (int i = 0; i < m->pending_cap; i++)
        if (!m->pending[i]) return i;
    if (m->pending_cap >= CLAUDE_MAX_PENDING) return -1;
    int ncap = m->pending_cap ? m->pending_cap * 2 : 4;
    if (ncap > CLAUDE_MAX_PENDING) ncap = CLAUDE_MAX_PENDING;
    claude_pending_t **np = realloc(m->pending, (size_t)ncap * sizeof(*np));
    if (!np) return -1;
    for (int i = m->pending_cap; i < ncap; i++)
        np[i] = NULL;
    int slot = m->pending_cap;
    m->pending = np;
    m->pending_cap = ncap;
    return slot;
}

/* Tells the host, then frees the prompt; the slot array stays (the caller
 * may refill the slot). The prompt is still counted while the host looks. */
static void pending_unlink(claude_map_t *m, int i)
{
    claude_pending_t *pe = m->pending[i];
    if (m->host.pending_removed) m->host.pending_removed(m->host.ctx, pe);
    m->pending[i] = NULL;
    m->pending_n--;
    free(pe);
}

/* No prompt left: give the slot array back. */
static void pending_shrink(claude_map_t *m)
{
    if (m->pending_n > 0) return;
    free(m->pending);
    m->pending = NULL;
    m->pending_cap = 0;
}

static void pending_drop(claude_map_t *m, int i)
{
    pending_unlink(m, i);
    pending_shrink(m);
}

static void pending_clear(claude_map_t *m)
{
    for (int i = 0; i < m->pending_cap; i++)
        if (m->pending[i]) pending_unlink(m, i);
    pending_shrink(m);
}

int claude_map_pending_count(const claude_map_t *m)
{
    return m->pending_n;
}

/* ---- content blocks ------------------------------------------------------ */

/* Was `id` the id of one of the last CLAUDE_RECENT_MSGS message_starts? */
static bool recent_has(const claude_map_t *m, const char *id)
{
    for (size_t at = 0; at < m->recent.len;) {
        const char *s = m->recent.p + at;
        if (strcmp(s, id) == 0) return true;
        at += strlen(s) + 1;
    }
    return false;
}

/* Remembers `id`, forgetting the oldest beyond CLAUDE_RECENT_MSGS. */
static void recent_add(claude_map_t *m, const char *id)
{
    if (m->recent_n >= CLAUDE_RECENT_MSGS) {
        size_t first = strlen(m->recent.p) + 1;
        memmove(m->recent.p, m->recent.p + first, m->recent.len - first);
        m->recent.len -= first;
        m->recent.p[m->recent.len] = '\0';
        m->recent_n--;
    }
    if (buf_append(&m->recent, id, strlen(id) + 1) < 0)
        log_warn("claude: out of memory remembering message %s", id);
    else
        m->recent_n++;
}

/* *dst = a heap copy of s (NULL, i.e. "", when out of memory). */
static void str_set(char **dst, const char *s)
{
    size_t n = strlen(s);
    free(*dst);
    *dst = malloc(n + 1);
    if (*dst)
        memcpy(*dst, s, n + 1);
    else
        log_warn("claude: out of memory keeping id %s", s);
}

/* strlen(s) if every byte is printable ASCII other than '"' and '\\' (the
 * JSON writer copies such a string as it is), else -1 */
static int plain_len(const char *s)
{
    size_t n = 0;
    for (unsigned char c; (c = (unsigned char)s[n]) != '\0'; n++)
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') return -1;
    return (int)n;
}

static void anon_id(claude_map_t *m, char *out, size_t cap)
{
    snprintf(out, cap, "msg_hp%llu", (unsigned long long)++m->anon_ids);
}

static void set_msg_id(claude_map_t *m, const char *id)
{
    str_set(&m->msg_id, id);
    m->msg_plain = m->msg_id ? plain_len(m->msg_id) : -1;
}

/* ":<index>" into out (room for 12 bytes), NUL-terminated; its length.
 * index is 0..999999 (get_index, scan_index). */
static size_t index_suffix(char *out, int index)
{
    char tmp[12];
    size_t n = 0, k = 0;
    unsigned v = (unsigned)index;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < sizeof(tmp));
    out[k++] = ':';
    while (n)
        out[k++] = tmp[--n];
    out[k] = '\0';
    return k;
}

#define BLOCK_ID_MAX (CLAUDE_ID_MAX + 16)

/* The block's id, "<msg_id>:<index>", into out[BLOCK_ID_MAX]. */
static const char *block_id(const claude_map_t *m, const claude_block_t *b, char *out)
{
    snprintf(out, BLOCK_ID_MAX, "%s:%d", m->msg_id ? m->msg_id : "", b->index);
    return out;
}

static claude_block_t *block_find(claude_map_t *m, int index)
{
    for (int i = 0; i < CLAUDE_MAX_BLOCKS; i++)
        if (m->blocks[i].index == index) return &m->blocks[i];
    return NULL;
}

static void block_close(claude_map_t *m, claude_block_t *b, const wkr_sink_t *sink)
{
    char id[BLOCK_ID_MAX];
    block_id(m, b, id);
    if (b->kind == CLAUDE_BLOCK_TEXT)
        emit_message_end(m, id, b->text.p ? b->text.p : "", b->text.len, sink);
    else
        emit_reasoning(m, id, b->text.p ? b->text.p : "", b->text.len, sink);
    b->index = -1;
    b->kind = 0;
    buf_reset_keep(&b->text, MAP_KEEP_BYTES);
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
    if (!m->msg_id) {
        char anon[CLAUDE_ID_MAX];
        anon_id(m, anon, sizeof(anon));
        set_msg_id(m, anon);
        if (!m->msg_id) return NULL; /* out of memory: no id to give the block */
    }
    b->index = index;
    b->kind = kind;
    buf_reset(&b->text);
    if (kind == CLAUDE_BLOCK_TEXT) {
        char id[BLOCK_ID_MAX];
        emit_message_start(m, block_id(m, b, id), sink);
    }
    return b;
}

/* The message.delta of one token, {"message_id":"<id>","content":"<body>"}:
 * written piece by piece when the message id needs no escaping (API ids never
 * do; ":<index>" never does), so the id and keys are not escaped again for
 * every token; else by the JSON writer. Both give the same bytes (full_parse_only takes the writer,
 * and the tests compare). */
static void emit_delta(claude_map_t *m, const claude_block_t *b, const char *body, size_t n,
                       const wkr_sink_t *sink)
{
    static const char k1[] = "{\"message_id\":\"", k2[] = "\",\"content\":\"", k3[] = "\"}";
    jw_t w;

    if (m->msg_plain < 0 || m->full_parse_only) {
        char id[BLOCK_ID_MAX];
        ev_begin(m, &w);
        jw_kstr(&w, "message_id", block_id(m, b, id));
        jw_key(&w, "content");
        jw_str_escaped(&w, body, n);
        ev_end(m, &w, "message.delta", sink);
        return;
    }
    char sfx[12];
    size_t mn = (size_t)m->msg_plain, sn = index_suffix(sfx, b->index);
    size_t len = sizeof(k1) - 1 + mn + sn + sizeof(k2) - 1 + n + 2;
    buf_reset(&m->ev);
    if (buf_reserve(&m->ev, len) < 0) {
        log_warn("claude: message.delta event not encoded: %s", strerror(ENOMEM));
        return;
    }
    char *p = m->ev.p;
    memcpy(p, k1, sizeof(k1) - 1);
    p += sizeof(k1) - 1;
    memcpy(p, m->msg_id, mn);
    p += mn;
    memcpy(p, sfx, sn);
    p += sn;
    memcpy(p, k2, sizeof(k2) - 1);
    p += sizeof(k2) - 1;
    memcpy(p, body, n);
    p += n;
    memcpy(p, k3, 3); /* with the NUL buf_t keeps */
    m->ev.len = len;
    m->events++;
    if (sink && sink->event) sink->event(sink->ctx, "message.delta", m->ev.p, m->ev.len);
}

static void block_text(claude_map_t *m, claude_block_t *b, const char *body, size_t n,
                       const wkr_sink_t *sink)
{
    if (buf_append(&b->text, body, n) < 0) {
        char id[BLOCK_ID_MAX];
        log_warn("claude: out of memory accumulating block %s", block_id(m, b, id));
    }
    if (b->kind == CLAUDE_BLOCK_TEXT) emit_delta(m, b, body, n, sink);
}

/* A text or thinking delta of block `index`; body is the escaped slice. Both
 * the full parse and the fast path end here, so they cannot disagree on
 * what a delta does. */
static void on_delta(claude_map_t *m, int kind, int index, const char *body, size_t n,
                     const wkr_sink_t *sink)
{
    claude_block_t *b = block_find(m, index);
    if (!b || b->kind != kind) b = block_open(m, index, kind, sink); /* start missed: open it now */
    if (b) block_text(m, b, body, n, sink);
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
        size_t n;
        const char *body = json_str_body(d, txt, &n);
        on_delta(m, kind, get_index(d, ev), body, n, sink);
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
        char id[CLAUDE_ID_MAX];
        blocks_flush(m, sink);
        if (!str_copy(d, get(d, msg, "id"), id, sizeof(id))) anon_id(m, id, sizeof(id));
        set_msg_id(m, id);
        recent_add(m, id);
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
    if (!streamed && strcmp(id, m->ns_msg_id ? m->ns_msg_id : "") != 0) {
        str_set(&m->ns_msg_id, id);
        m->ns_blocks = 0;
    }

    for (int b = content + 1; b < json_next(d, content); b = json_next(d, b)) {
        int bt = get(d, b, "type");
        int pos = streamed ? 0 : m->ns_blocks++;
        char bid[BLOCK_ID_MAX];
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

/* One heap block: the struct, the unescaped id (room for rlen, its escaped
 * length) and the raw input, each NUL-terminated. NULL on a bad escape or no
 * memory. */
static claude_pending_t *pending_new(const json_doc_t *d, int rid, size_t rlen, const char *iraw,
                                     size_t ilen)
{
    claude_pending_t *pe = malloc(sizeof(*pe) + rlen + 1 + ilen + 1);
    if (!pe) return NULL;
    memset(pe, 0, sizeof(*pe));
    pe->id = (char *)(pe + 1);
    if (json_str_copy(d, rid, pe->id, rlen + 1) < 0) {
        free(pe);
        return NULL;
    }
    pe->input = pe->id + rlen + 1;
    memcpy(pe->input, iraw, ilen);
    pe->input[ilen] = '\0';
    pe->input_len = ilen;
    return pe;
}

static void on_control_request(claude_map_t *m, const json_doc_t *d, const wkr_sink_t *sink)
{
    int rid = get(d, 0, "request_id");
    int req = get(d, 0, "request");
    int sub = get(d, req, "subtype");

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
    int tool = get(d, req, "tool_name");
    int input = get(d, req, "input");
    size_t ilen = 2, rlen;
    const char *iraw = json_type(d, input) == JSON_OBJ ? json_raw(d, input, &ilen) : "{}";
    json_str_body(d, rid, &rlen); /* unescaping never lengthens a string */
    claude_pending_t *pe = pending_new(d, rid, rlen, iraw, ilen);
    if (!pe) return;
    const char *id = pe->id;

    int slot = pending_find(m, id);
    if (slot >= 0)
        pending_unlink(m, slot); /* asked again: the newest input counts, same slot */
    else
        slot = pending_slot(m);
    if (slot < 0) {
        log_warn("claude: %d permission prompts pending; %s denied", CLAUDE_MAX_PENDING, id);
        buf_reset_keep(&m->out, MAP_KEEP_BYTES);
        if (build_perm_reply(&m->out, id, false, "too many pending permission requests", NULL, 0) ==
            0)
            reply(m);
        free(pe);
        return;
    }
    m->pending[slot] = pe;
    m->pending_n++;
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
    int slot = pending_find(m, id);
    if (slot >= 0) {
        log_info("claude: permission prompt %s cancelled by the agent", id);
        pending_drop(m, slot);
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
            buf_reset_keep(&m->out, MAP_KEEP_BYTES);
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

/* ---- fast path: the token stream ------------------------------------------ */

/* The CLI (JSON.stringify, fixed key order, no whitespace) prints a delta as
 *   {"type":"stream_event","event":{"type":"content_block_delta","index":N,
 *    "delta":{"type":"text_delta","text":"..."}},"session_id":"...",
 *    "parent_tool_use_id":null,"uuid":"..."}
 * One such line per token makes most of stdout. fast_delta() takes exactly
 * that layout and only when each of its strings is a body json_parse accepts,
 * i.e. only lines the full parse would read the same way: a valid JSON text,
 * one member per key (first-member lookup is moot), a plain integer index
 * below 1000000 (get_index() takes it as it is), parent_tool_use_id null.
 * Anything else - other key order, whitespace, a field more or less, a
 * subagent's delta - is left to the full parse, so a CLI that changes its
 * layout costs speed, never correctness. */

#define LIT(s) s, sizeof(s) - 1

static const struct fast_kind {
    const char *lit; /* from the delta type's value to the text's opening quote */
    size_t n;
    int kind; /* 0: input_json_delta, which maps to nothing */
} fast_kinds[] = {
    {LIT("text_delta\",\"text\":\""), CLAUDE_BLOCK_TEXT},
    {LIT("thinking_delta\",\"thinking\":\""), CLAUDE_BLOCK_THINKING},
    {LIT("input_json_delta\",\"partial_json\":\""), 0},
};

/* line[*i..] starts with lit: step over it */
static inline bool eat(const char *line, size_t len, size_t *i, const char *lit, size_t n)
{
    if (len - *i < n || memcmp(line + *i, lit, n) != 0) return false;
    *i += n;
    return true;
}

/* High bit of each of the 8 bytes at p that needs a closer look inside a
 * string: a control byte, '"', '\\' or a non-ASCII byte (SWAR; the same test
 * json.c's scanner makes). Borrows only run upwards from a byte that is a
 * hit, so the lowest bit set always marks a real one: with little-endian
 * loads, the first such byte in memory. */
static inline uint64_t special8(const unsigned char *p)
{
    const uint64_t ones = UINT64_C(0x0101010101010101), high = UINT64_C(0x8080808080808080);
    uint64_t x;
    memcpy(&x, p, sizeof x);
    uint64_t q = x ^ (ones * '"'), bs = x ^ (ones * '\\');
    return (((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((bs - ones) & ~bs) | x) & high;
}

static inline bool is_plain(unsigned char c)
{
    return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

/* Index of the first byte at or after k that is not plain, or len. */
static inline size_t skip_plain(const unsigned char *s, size_t len, size_t k)
{
    while (len - k >= 8) {
        uint64_t hit = special8(s + k);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (hit) return k + (size_t)__builtin_ctzll(hit) / 8;
#else
        if (hit) break;
#endif
        k += 8;
    }
    while (k < len && is_plain(s[k]))
        k++;
    return k;
}

static inline bool is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* line[*i] is the first byte of a string body: moves *i to its closing quote.
 * False unless json_parse would take the body: escapes \" \\ \/ \b \f \n \r \t
 * \uXXXX (a lone surrogate too: the grammar allows it and nothing here
 * unescapes), no raw byte below 0x20, well-formed UTF-8. */
static bool scan_body(const char *line, size_t len, size_t *i)
{
    const unsigned char *s = (const unsigned char *)line;
    size_t k = *i;
    for (;;) {
        k = skip_plain(s, len, k);
        if (k >= len) return false; /* unterminated */
        unsigned char c = s[k];
        if (c == '"') {
            *i = k;
            return true;
        }
        if (c == '\\') {
            if (len - k < 2) return false;
            c = s[k + 1];
            if (c == 'u') {
                if (len - k < 6 || !is_hex(s[k + 2]) || !is_hex(s[k + 3]) || !is_hex(s[k + 4]) ||
                    !is_hex(s[k + 5]))
                    return false;
                k += 6;
            } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' ||
                       c == 'r' || c == 't') {
                k += 2;
            } else {
                return false;
            }
        } else if (c < 0x20) {
            return false;
        } else {
            size_t u = utf8_seq_len(line + k, len - k); /* c >= 0x80 */
            if (u == 0) return false;
            k += u;
        }
    }
}

/* 0 or [1-9][0-9]{0,5}; what follows is checked by the caller's next literal,
 * so "01" or a seventh digit does not match. */
static bool scan_index(const char *line, size_t len, size_t *i, int *index)
{
    size_t k = *i;
    int v = 0;
    if (k < len && line[k] == '0') {
        k++;
    } else {
        while (k < len && k - *i < 6 && line[k] >= '0' && line[k] <= '9')
            v = v * 10 + (line[k++] - '0');
        if (k == *i) return false;
    }
    *i = k;
    *index = v;
    return true;
}

/* Maps a delta line of the exact layout above; false: not sure, nothing done. */
static bool fast_delta(claude_map_t *m, const char *line, size_t len, const wkr_sink_t *sink)
{
    const struct fast_kind *fk = NULL;
    size_t i = 0, body, end;
    int index;

    if (len > INT_MAX) return false; /* json_parse refuses those */
    if (!eat(line, len, &i,
             LIT("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\","
                 "\"index\":")) ||
        !scan_index(line, len, &i, &index) || !eat(line, len, &i, LIT(",\"delta\":{\"type\":\"")))
        return false;
    for (size_t k = 0; k < sizeof(fast_kinds) / sizeof(fast_kinds[0]) && !fk; k++)
        if (eat(line, len, &i, fast_kinds[k].lit, fast_kinds[k].n)) fk = &fast_kinds[k];
    if (!fk) return false;
    body = i;
    if (!scan_body(line, len, &i)) return false;
    end = i;
    if (!eat(line, len, &i, LIT("\"}},\"session_id\":\"")) || !scan_body(line, len, &i) ||
        !eat(line, len, &i, LIT("\",\"parent_tool_use_id\":null,\"uuid\":\"")) ||
        !scan_body(line, len, &i) || !eat(line, len, &i, LIT("\"}")) || i != len)
        return false;
    if (fk->kind) on_delta(m, fk->kind, index, line + body, end - body, sink);
    return true;
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
    m->msg_plain = -1;
    buf_init(&m->recent);
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
    free(m->msg_id);
    free(m->ns_msg_id);
    m->msg_id = m->ns_msg_id = NULL;
    m->msg_plain = -1;
    m->recent_n = 0;
    buf_free(&m->recent);
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
    if (!m->full_parse_only && fast_delta(m, line, len, sink)) {
        m->fast++;
        return (int)(m->events - before);
    }
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
    int slot = req_id ? pending_find(m, req_id) : -1;
    if (slot < 0) return -ENOENT;
    const claude_pending_t *pe = m->pending[slot];
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
    if (rc == 0) pending_drop(m, slot);
    return rc;
}
