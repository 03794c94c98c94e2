/*
 * opencode_map.c - `opencode serve` SSE events -> AEP events, and the
 * request bodies hotplex sends (see opencode_map.h for the mapping table
 * and the turn rules).
 *
 * Text is carried as escaped JSON string bodies taken from the validated
 * event (json_str_body), never unescaped and re-escaped: the concatenation
 * of escaped delta bodies is itself a valid escaped body, and the final
 * part text is compared with it in that form.
 *
 * Owns: the part and message tables, the pending permission ids, the turn
 * phase and stats. Must never do I/O or fail on any input.
 */
#include "worker/opencode_map.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

/* ---- SSE framing ---------------------------------------------------------- */

void oc_sse_init(oc_sse_t *s, size_t max_event)
{
    memset(s, 0, sizeof(*s));
    buf_init(&s->line);
    buf_init(&s->data);
    s->max = max_event ? max_event : OC_SSE_MAX;
}

void oc_sse_free(oc_sse_t *s)
{
    buf_free(&s->line);
    buf_free(&s->data);
}

static void sse_line(oc_sse_t *s, void (*on_event)(void *, const char *, size_t), void *ctx,
                     int *delivered)
{
    const char *l = s->line.p ? s->line.p : "";
    size_t n = s->line.len;

    if (s->line_over) { /* a line we could not keep: its event is lost */
        s->line_over = false;
        s->overlong = true;
        return;
    }
    if (n == 0) { /* blank line: end of the event */
        if (s->overlong) {
            s->dropped++;
        } else if (s->has_data) {
            s->events++;
            (*delivered)++;
            on_event(ctx, s->data.p ? s->data.p : "", s->data.len);
        }
        buf_reset(&s->data);
        s->has_data = s->overlong = false;
        return;
    }
    if (l[0] == ':') return; /* comment */
    const char *colon = memchr(l, ':', n);
    size_t fl = colon ? (size_t)(colon - l) : n;
    if (fl != 4 || memcmp(l, "data", 4) != 0) return; /* event:, id:, retry:, unknown */
    const char *v = colon ? colon + 1 : l + n;
    size_t vl = (size_t)(l + n - v);
    if (vl > 0 && *v == ' ') {
        v++;
        vl--;
    }
    if (s->overlong) return;
    if (s->data.len + vl + 1 > s->max) {
        s->overlong = true;
        buf_reset(&s->data);
        return;
    }
    if ((s->has_data && buf_append(&s->data, "\n", 1) < 0) || buf_append(&s->data, v, vl) < 0) {
        s->overlong = true; /* out of memory: drop the event */
        return;
    }
    s->has_data = true;
}

int oc_sse_feed(oc_sse_t *s, const char *p, size_t n,
                void (*on_event)(void *ctx, const char *data, size_t len), void *ctx)
{
    int delivered = 0;
    size_t i = 0;
    while (i < n) {
        if (s->skip_lf) {
            s->skip_lf = false;
            if (p[i] == '\n') {
                i++;
                continue;
            }
        }
        size_t j = i;
        while (j < n && p[j] != '\n' && p[j] != '\r') j++;
        if (!s->line_over) {
            if (s->line.len + (j - i) + 1 > s->max || buf_append(&s->line, p + i, j - i) < 0) {
                s->line_over = true;
                buf_reset(&s->line);
            }
        }
        if (j == n) break; /* the line goes on in the next chunk */
        sse_line(s, on_event, ctx, &delivered);
        buf_reset(&s->line);
        if (p[j] == '\r') s->skip_lf = true;
        i = j + 1;
    }
    return delivered;
}

/* ---- JSON helpers ------------------------------------------------------- */

static int get(const json_doc_t *d, int obj, const char *key)
{
    return obj >= 0 && json_type(d, obj) == JSON_OBJ ? json_obj_get(d, obj, key) : -1;
}

static bool is_str(const json_doc_t *d, int i)
{
    return i >= 0 && json_type(d, i) == JSON_STR;
}

static bool is_obj(const json_doc_t *d, int i)
{
    return i >= 0 && json_type(d, i) == JSON_OBJ;
}

static bool str_copy(const json_doc_t *d, int i, char *out, size_t cap)
{
    if (!is_str(d, i) || json_str_copy(d, i, out, cap) < 0) {
        out[0] = '\0';
        return false;
    }
    return out[0] != '\0';
}

static const char *body(const json_doc_t *d, int i, size_t *n)
{
    *n = 0;
    return is_str(d, i) ? json_str_body(d, i, n) : "";
}

static int64_t get_i64(const json_doc_t *d, int obj, const char *key)
{
    int64_t v;
    int i = get(d, obj, key);
    return i >= 0 && json_get_i64(d, i, &v) == 0 ? v : 0;
}

static double get_f64(const json_doc_t *d, int obj, const char *key)
{
    double v;
    int i = get(d, obj, key);
    return i >= 0 && json_get_f64(d, i, &v) == 0 ? v : 0;
}

/* ---- frames ---------------------------------------------------------------- */

#define OC_TOK_START 2048
#define OC_TOK_MAX (1 << 20)
#define OC_TOK_KEEP 16384

void oc_parser_init(oc_parser_t *p)
{
    p->tok = NULL;
    p->cap = 0;
}

void oc_parser_free(oc_parser_t *p)
{
    free(p->tok);
    p->tok = NULL;
    p->cap = 0;
}

static int grow(oc_parser_t *p, int cap)
{
    json_tok_t *t = malloc((size_t)cap * sizeof(*t));
    if (!t) return -ENOMEM;
    free(p->tok);
    p->tok = t;
    p->cap = cap;
    return 0;
}

int oc_frame_parse(oc_parser_t *p, oc_frame_t *f, const char *data, size_t len)
{
    int rc;
    f->ev = f->type = f->props = -1;
    f->sid[0] = '\0';
    if (p->cap > OC_TOK_KEEP && grow(p, OC_TOK_START) < 0) return -ENOMEM;
    if (!p->tok && grow(p, OC_TOK_START) < 0) return -ENOMEM;
    rc = json_parse(&f->doc, data, len, p->tok, p->cap);
    while (rc == -E2BIG && p->cap < OC_TOK_MAX) {
        if (grow(p, p->cap * 4 > OC_TOK_MAX ? OC_TOK_MAX : p->cap * 4) < 0) return -ENOMEM;
        rc = json_parse(&f->doc, data, len, p->tok, p->cap);
    }
    if (rc < 0) return rc;
    const json_doc_t *d = &f->doc;
    if (json_type(d, 0) != JSON_OBJ) return -EINVAL;
    int pl = get(d, 0, "payload");
    f->ev = is_obj(d, pl) ? pl : 0;
    f->type = get(d, f->ev, "type");
    if (!is_str(d, f->type)) return -EINVAL;
    int props = get(d, f->ev, "properties");
    f->props = is_obj(d, props) ? props : -1;
    str_copy(d, get(d, f->props, "sessionID"), f->sid, sizeof(f->sid));
    return 0;
}

bool oc_frame_is(const oc_frame_t *f, const char *type)
{
    return json_str_eq(&f->doc, f->type, type);
}

bool oc_frame_child_of(const oc_frame_t *f, char *out, size_t cap)
{
    if (!oc_frame_is(f, "session.created") && !oc_frame_is(f, "session.updated")) return false;
    int info = get(&f->doc, f->props, "info");
    return str_copy(&f->doc, get(&f->doc, info, "parentID"), out, cap);
}

bool oc_frame_for_parent(const oc_frame_t *f)
{
    return oc_frame_is(f, "permission.asked") || oc_frame_is(f, "permission.replied") ||
           oc_frame_is(f, "question.asked");
}

/* ---- events ---------------------------------------------------------------- */

static void ev_begin(oc_map_t *m, jw_t *w)
{
    buf_reset(&m->ev);
    jw_init(w, &m->ev);
    jw_obj_begin(w);
}

static void ev_end(oc_map_t *m, jw_t *w, const char *type, const wkr_sink_t *sink)
{
    jw_obj_end(w);
    if (jw_error(w)) {
        log_warn("opencode: %s event not encoded: %s", type, strerror(-jw_error(w)));
        return;
    }
    m->events++;
    if (sink && sink->event) sink->event(sink->ctx, type, m->ev.p, m->ev.len);
}

static void emit_start(oc_map_t *m, oc_part_t *p, const wkr_sink_t *sink)
{
    jw_t w;
    if (p->started) return;
    p->started = true;
    ev_begin(m, &w);
    jw_kstr(&w, "id", p->id);
    jw_kstr(&w, "role", "assistant");
    jw_kstr(&w, "content_type", "text");
    ev_end(m, &w, "message.start", sink);
}

static void emit_delta(oc_map_t *m, oc_part_t *p, const char *text, size_t n,
                       const wkr_sink_t *sink)
{
    jw_t w;
    if (n == 0) return;
    emit_start(m, p, sink);
    if (buf_append(&p->text, text, n) < 0) log_warn("opencode: no memory for the text of %s", p->id);
    ev_begin(m, &w);
    jw_kstr(&w, "message_id", p->id);
    jw_key(&w, "content");
    jw_str_escaped(&w, text, n);
    ev_end(m, &w, "message.delta", sink);
}

/* message.end + message with the full text (escaped body) */
static void emit_end(oc_map_t *m, oc_part_t *p, const char *text, size_t n,
                     const wkr_sink_t *sink)
{
    jw_t w;
    p->ended = true;
    if (!p->started) return;
    ev_begin(m, &w);
    jw_kstr(&w, "message_id", p->id);
    ev_end(m, &w, "message.end", sink);

    ev_begin(m, &w);
    jw_kstr(&w, "id", p->id);
    jw_kstr(&w, "role", "assistant");
    jw_key(&w, "content");
    jw_str_escaped(&w, text, n);
    jw_kstr(&w, "content_type", "text");
    ev_end(m, &w, "message", sink);
}

static void emit_reasoning(oc_map_t *m, oc_part_t *p, const char *text, size_t n,
                           const wkr_sink_t *sink)
{
    jw_t w;
    p->ended = true;
    if (n == 0) return;
    ev_begin(m, &w);
    jw_kstr(&w, "id", p->id);
    jw_key(&w, "content");
    jw_str_escaped(&w, text, n);
    ev_end(m, &w, "reasoning", sink);
}

static void emit_error(oc_map_t *m, const char *code, const char *msg, const wkr_sink_t *sink)
{
    jw_t w;
    ev_begin(m, &w);
    jw_kstr(&w, "code", code);
    jw_kstr(&w, "message", msg);
    ev_end(m, &w, "error", sink);
}

static void emit_tool_result(oc_map_t *m, oc_part_t *p, const char *out, size_t n, bool escaped,
                             bool is_error, const wkr_sink_t *sink)
{
    jw_t w;
    p->result_sent = p->ended = true;
    ev_begin(m, &w);
    jw_kstr(&w, "id", p->call_id);
    jw_key(&w, "output");
    if (escaped) jw_str_escaped(&w, out, n);
    else jw_strn(&w, out, n);
    jw_kbool(&w, "error", is_error);
    ev_end(m, &w, "tool_result", sink);
}

/* ---- tables ------------------------------------------------------------------ */

static void part_clear(oc_part_t *p)
{
    buf_free(&p->text);
    free(p->input);
    memset(p, 0, sizeof(*p));
    buf_init(&p->text);
}

static oc_part_t *part_find(oc_map_t *m, const char *id)
{
    for (int i = 0; i < OC_MAX_PARTS; i++)
        if (m->parts[i].id[0] && strcmp(m->parts[i].id, id) == 0) return &m->parts[i];
    return NULL;
}

/* A slot for a new part: free, else the oldest ended, else the oldest. */
static oc_part_t *part_add(oc_map_t *m, const char *id, int kind)
{
    oc_part_t *best = NULL;
    for (int i = 0; i < OC_MAX_PARTS; i++) {
        oc_part_t *p = &m->parts[i];
        if (!p->id[0]) {
            best = p;
            break;
        }
        if (!best || (p->ended && !best->ended) || (p->ended == best->ended && p->age < best->age))
            best = p;
    }
    if (best->id[0]) {
        if (!best->ended) log_warn("opencode: part table full, forgetting open part %s", best->id);
        part_clear(best);
    }
    snprintf(best->id, sizeof(best->id), "%s", id);
    best->kind = kind;
    best->age = ++m->part_age;
    return best;
}

static void role_set(oc_map_t *m, const char *id, bool user)
{
    for (int i = 0; i < OC_MAX_MSGS; i++)
        if (m->msgs[i].id[0] && strcmp(m->msgs[i].id, id) == 0) {
            m->msgs[i].user = user;
            return;
        }
    snprintf(m->msgs[m->msg_next].id, OC_ID_MAX, "%s", id);
    m->msgs[m->msg_next].user = user;
    m->msg_next = (m->msg_next + 1) % OC_MAX_MSGS;
}

/* 1 user, 0 assistant, -1 unknown */
static int role_get(const oc_map_t *m, const char *id)
{
    for (int i = 0; i < OC_MAX_MSGS; i++)
        if (m->msgs[i].id[0] && strcmp(m->msgs[i].id, id) == 0) return m->msgs[i].user;
    return -1;
}

static int pending_find(const oc_map_t *m, const char *id)
{
    for (int i = 0; i < OC_MAX_PENDING; i++)
        if (m->pending[i] && strcmp(m->pending[i], id) == 0) return i;
    return -1;
}

static void pending_drop(oc_map_t *m, int i)
{
    char *id = m->pending[i];
    if (!id) return;
    m->pending[i] = NULL;
    if (m->host.pending_removed) m->host.pending_removed(m->host.ctx, id);
    free(id);
}

static void pending_clear(oc_map_t *m)
{
    for (int i = 0; i < OC_MAX_PENDING; i++) pending_drop(m, i);
}

int oc_map_pending_count(const oc_map_t *m)
{
    int n = 0;
    for (int i = 0; i < OC_MAX_PENDING; i++) n += m->pending[i] != NULL;
    return n;
}

int oc_map_permission_take(oc_map_t *m, const char *id)
{
    int i = id ? pending_find(m, id) : -1;
    if (i < 0) return -ENOENT;
    pending_drop(m, i);
    return 0;
}

/* ---- turn end ------------------------------------------------------------------ */

/* Closes whatever the turn left open, so no message.start dangles and no
 * tool_call stays without a result. */
static void flush_open(oc_map_t *m, const wkr_sink_t *sink)
{
    for (;;) { /* oldest first: the order the parts came */
        oc_part_t *p = NULL;
        for (int i = 0; i < OC_MAX_PARTS; i++) {
            oc_part_t *q = &m->parts[i];
            if (q->id[0] && !q->ended && (!p || q->age < p->age)) p = q;
        }
        if (!p) break;
        if (p->kind == OC_PART_TEXT) {
            emit_end(m, p, p->text.p ? p->text.p : "", p->text.len, sink);
        } else if (p->kind == OC_PART_REASONING) {
            emit_reasoning(m, p, p->text.p ? p->text.p : "", p->text.len, sink);
        } else if (p->kind == OC_PART_TOOL) {
            if (p->call_sent && !p->result_sent) {
                static const char why[] = "the tool call did not finish (turn ended)";
                emit_tool_result(m, p, why, sizeof(why) - 1, false, true, sink);
            }
        }
        p->ended = true;
    }
}

static void stats_reset(oc_map_t *m)
{
    m->interrupted = m->failed = m->errored = false;
    m->steps = m->assistant_msgs = 0;
    m->cost = 0;
    m->tok_in = m->tok_out = m->tok_reason = m->tok_cache_read = m->tok_cache_write = 0;
    m->finish[0] = '\0';
}

static void end_turn(oc_map_t *m, bool errored, uint64_t now_ms, const wkr_sink_t *sink)
{
    jw_t w;
    bool interrupted = m->interrupted;
    bool success = !m->failed && !interrupted;
    int turns = m->steps > 0 ? m->steps : m->assistant_msgs > 0 ? 1 : 0;

    flush_open(m, sink);
    pending_clear(m); /* the turn is over: nobody waits for those answers */

    ev_begin(m, &w);
    jw_kbool(&w, "success", success);
    jw_key(&w, "stats");
    jw_obj_begin(&w);
    jw_kint(&w, "duration_ms", now_ms >= m->t0_ms ? (int64_t)(now_ms - m->t0_ms) : 0);
    jw_kint(&w, "num_turns", turns);
    jw_key(&w, "total_cost_usd");
    jw_double(&w, m->cost);
    jw_key(&w, "usage");
    jw_obj_begin(&w);
    jw_kint(&w, "input_tokens", m->tok_in);
    jw_kint(&w, "output_tokens", m->tok_out);
    jw_kint(&w, "reasoning_tokens", m->tok_reason);
    jw_kint(&w, "cache_read_input_tokens", m->tok_cache_read);
    jw_kint(&w, "cache_creation_input_tokens", m->tok_cache_write);
    jw_obj_end(&w);
    if (m->finish[0]) jw_kstr(&w, "finish", m->finish);
    jw_kbool(&w, "interrupted", interrupted);
    jw_obj_end(&w);

    /* state first: sink->event("done") may start the next turn at once */
    m->phase = OC_TURN_NONE;
    m->settling = errored;
    stats_reset(m);
    ev_end(m, &w, "done", sink);
}

/* ---- event handlers ------------------------------------------------------------ */

static void on_text_part(oc_map_t *m, const json_doc_t *d, int part, const char *id,
                         const wkr_sink_t *sink)
{
    oc_part_t *p = part_find(m, id);
    if (!p) p = part_add(m, id, OC_PART_TEXT);
    if (p->ended || p->kind != OC_PART_TEXT) return;
    size_t n;
    const char *full = body(d, get(d, part, "text"), &n);
    int time = get(d, part, "time");
    bool done = get(d, time, "end") >= 0 && !json_is_null(d, get(d, time, "end"));
    /* text the deltas did not bring (none are sent for some parts) */
    if (n > p->text.len && (p->text.len == 0 || memcmp(full, p->text.p, p->text.len) == 0))
        emit_delta(m, p, full + p->text.len, n - p->text.len, sink);
    if (done) emit_end(m, p, full, n, sink);
}

static void on_reasoning_part(oc_map_t *m, const json_doc_t *d, int part, const char *id,
                              const wkr_sink_t *sink)
{
    oc_part_t *p = part_find(m, id);
    if (!p) p = part_add(m, id, OC_PART_REASONING);
    if (p->ended || p->kind != OC_PART_REASONING) return;
    int time = get(d, part, "time");
    if (get(d, time, "end") < 0 || json_is_null(d, get(d, time, "end"))) return;
    size_t n;
    const char *full = body(d, get(d, part, "text"), &n);
    emit_reasoning(m, p, full, n, sink);
}

static void on_tool_part(oc_map_t *m, const json_doc_t *d, int part, const char *id,
                         const wkr_sink_t *sink)
{
    oc_part_t *p = part_find(m, id);
    if (!p) p = part_add(m, id, OC_PART_TOOL);
    if (p->ended || p->kind != OC_PART_TOOL) return;
    if (!p->call_id[0]) str_copy(d, get(d, part, "callID"), p->call_id, sizeof(p->call_id));
    if (!p->call_id[0]) snprintf(p->call_id, sizeof(p->call_id), "%s", p->id);
    int state = get(d, part, "state");
    int status = get(d, state, "status");
    int input = get(d, state, "input");
    bool pending = json_str_eq(d, status, "pending");
    bool completed = json_str_eq(d, status, "completed");
    bool failed = json_str_eq(d, status, "error");
    bool running = json_str_eq(d, status, "running");
    if (!pending && !completed && !failed && !running) return; /* unknown status */

    size_t ilen = 0;
    const char *iraw = is_obj(d, input) ? json_raw(d, input, &ilen) : NULL;
    if (iraw && (!pending || json_next(d, input) > input + 1)) { /* keep the newest real input */
        char *copy = malloc(ilen + 1);
        if (copy) {
            memcpy(copy, iraw, ilen);
            copy[ilen] = '\0';
            free(p->input);
            p->input = copy;
        }
    }
    if (pending) return; /* the input is not complete yet */
    if (!p->call_sent) {
        jw_t w;
        size_t tn;
        const char *tool = body(d, get(d, part, "tool"), &tn);
        p->call_sent = true;
        ev_begin(m, &w);
        jw_kstr(&w, "id", p->call_id);
        jw_key(&w, "name");
        jw_str_escaped(&w, tool, tn);
        if (p->input) jw_kraw(&w, "input", p->input, strlen(p->input));
        else jw_kraw(&w, "input", "{}", 2);
        ev_end(m, &w, "tool_call", sink);
    }
    if (completed || failed) {
        int o = get(d, state, completed ? "output" : "error");
        size_t n;
        if (is_str(d, o)) {
            const char *text = body(d, o, &n);
            emit_tool_result(m, p, text, n, true, failed, sink);
        } else if (o >= 0 && !json_is_null(d, o)) {
            /* not a string: its JSON text as the output string */
            const char *raw = json_raw(d, o, &n);
            emit_tool_result(m, p, raw, n, false, failed, sink);
        } else {
            emit_tool_result(m, p, "", 0, true, failed, sink);
        }
    }
}

static void on_part_updated(oc_map_t *m, const json_doc_t *d, int props, const wkr_sink_t *sink)
{
    int part = get(d, props, "part");
    int type = get(d, part, "type");
    char id[OC_ID_MAX], msg[OC_ID_MAX];
    if (!str_copy(d, get(d, part, "id"), id, sizeof(id))) {
        m->ignored++;
        return;
    }
    str_copy(d, get(d, part, "messageID"), msg, sizeof(msg));
    int role = msg[0] ? role_get(m, msg) : -1;

    if (json_str_eq(d, type, "text")) {
        /* the user's own prompt comes back as a text part: not an answer */
        if (role == 1 || (role < 0 && get(d, part, "time") < 0)) return;
        int synth = get(d, part, "synthetic");
        bool b = false;
        if (synth >= 0 && json_get_bool(d, synth, &b) == 0 && b) return;
        on_text_part(m, d, part, id, sink);
    } else if (json_str_eq(d, type, "reasoning")) {
        on_reasoning_part(m, d, part, id, sink);
    } else if (json_str_eq(d, type, "tool")) {
        on_tool_part(m, d, part, id, sink);
    } else if (json_str_eq(d, type, "step-finish")) {
        int tok = get(d, part, "tokens");
        int cache = get(d, tok, "cache");
        m->steps++;
        m->cost += get_f64(d, part, "cost");
        m->tok_in += get_i64(d, tok, "input");
        m->tok_out += get_i64(d, tok, "output");
        m->tok_reason += get_i64(d, tok, "reasoning");
        m->tok_cache_read += get_i64(d, cache, "read");
        m->tok_cache_write += get_i64(d, cache, "write");
        str_copy(d, get(d, part, "reason"), m->finish, sizeof(m->finish));
    }
    /* step-start, patch, file, snapshot, ...: nothing */
}

static void on_part_delta(oc_map_t *m, const json_doc_t *d, int props, const wkr_sink_t *sink)
{
    char id[OC_ID_MAX];
    if (!json_str_eq(d, get(d, props, "field"), "text") ||
        !str_copy(d, get(d, props, "partID"), id, sizeof(id))) {
        m->ignored++;
        return;
    }
    oc_part_t *p = part_find(m, id);
    if (!p || p->ended) return; /* a part we do not show (a user part) or a closed one */
    size_t n;
    const char *delta = body(d, get(d, props, "delta"), &n);
    if (p->kind == OC_PART_TEXT) {
        emit_delta(m, p, delta, n, sink);
    } else if (p->kind == OC_PART_REASONING) {
        if (buf_append(&p->text, delta, n) < 0) log_warn("opencode: no memory for reasoning");
    }
}

static void on_message_updated(oc_map_t *m, const json_doc_t *d, int props,
                               const wkr_sink_t *sink)
{
    int info = get(d, props, "info");
    char id[OC_ID_MAX], prov[64], model[128], both[200];
    if (!str_copy(d, get(d, info, "id"), id, sizeof(id))) return;
    bool user = json_str_eq(d, get(d, info, "role"), "user");
    if (!user && role_get(m, id) < 0 && m->phase != OC_TURN_NONE) m->assistant_msgs++;
    role_set(m, id, user);
    /* the model that answers, once per change */
    if (!user && str_copy(d, get(d, info, "providerID"), prov, sizeof(prov)) &&
        str_copy(d, get(d, info, "modelID"), model, sizeof(model))) {
        snprintf(both, sizeof(both), "%s/%s", prov, model);
        if (strcmp(both, m->model) != 0) {
            snprintf(m->model, sizeof(m->model), "%s", both);
            if (sink && sink->info) sink->info(sink->ctx, "agent_model", both);
        }
    }
}

/* "bash: echo hi | tee hi.txt": the whole command if the prompt carries
 * it, else the patterns it asks for (a pipeline is split into several) */
static void describe(const json_doc_t *d, int props, char *out, size_t cap)
{
    char perm[64] = "tool", item[256];
    size_t o;
    str_copy(d, get(d, props, "permission"), perm, sizeof(perm));
    o = (size_t)snprintf(out, cap, "%s", perm);
    int meta = get(d, props, "metadata");
    if (str_copy(d, get(d, meta, "command"), item, sizeof(item)) ||
        str_copy(d, get(d, meta, "filepath"), item, sizeof(item)) ||
        str_copy(d, get(d, meta, "url"), item, sizeof(item))) {
        snprintf(out + o, cap > o ? cap - o : 0, ": %s", item);
    } else {
        int pats = get(d, props, "patterns");
        int any = 0;
        if (pats >= 0 && json_type(d, pats) == JSON_ARR) {
            for (int i = pats + 1; i < json_next(d, pats) && o + 8 < cap; i = json_next(d, i)) {
                if (!str_copy(d, i, item, sizeof(item))) continue;
                o += (size_t)snprintf(out + o, cap - o, "%s%s", any++ ? ", " : ": ", item);
            }
        }
    }
    if (strlen(out) > 200) strcpy(out + 197, "...");
}

static void on_permission_asked(oc_map_t *m, const json_doc_t *d, int props,
                                const wkr_sink_t *sink)
{
    char id[OC_ID_MAX], call[OC_ID_MAX], desc[512];
    jw_t w;
    if (!str_copy(d, get(d, props, "id"), id, sizeof(id))) {
        m->ignored++;
        return;
    }
    int tool = get(d, props, "tool");
    str_copy(d, get(d, tool, "callID"), call, sizeof(call));

    if (pending_find(m, id) < 0) {
        int slot = -1;
        for (int i = 0; i < OC_MAX_PENDING && slot < 0; i++)
            if (!m->pending[i]) slot = i;
        char *copy = slot >= 0 ? strdup(id) : NULL;
        if (copy) {
            m->pending[slot] = copy;
            if (m->host.pending_added) m->host.pending_added(m->host.ctx, copy);
        } else {
            log_warn("opencode: %d permission prompts pending; %s not tracked", OC_MAX_PENDING, id);
        }
    }

    /* the tool's own input if its part was seen, else the prompt's metadata */
    const char *iraw = "{}";
    size_t ilen = 2;
    for (int i = 0; call[0] && i < OC_MAX_PARTS; i++) {
        oc_part_t *p = &m->parts[i];
        if (p->id[0] && p->kind == OC_PART_TOOL && p->input && strcmp(p->call_id, call) == 0) {
            iraw = p->input;
            ilen = strlen(p->input);
        }
    }
    int meta = get(d, props, "metadata");
    if (ilen == 2 && is_obj(d, meta)) iraw = json_raw(d, meta, &ilen);

    describe(d, props, desc, sizeof(desc));
    ev_begin(m, &w);
    jw_kstr(&w, "id", id);
    size_t pn;
    const char *perm = body(d, get(d, props, "permission"), &pn);
    jw_key(&w, "tool_name");
    jw_str_escaped(&w, perm, pn);
    jw_kstr(&w, "description", desc);
    jw_kraw(&w, "input", iraw, ilen);
    jw_key(&w, "args");
    jw_arr_begin(&w);
    jw_strn(&w, iraw, ilen);
    jw_arr_end(&w);
    if (call[0]) jw_kstr(&w, "tool_use_id", call);
    int pats = get(d, props, "patterns");
    if (pats >= 0 && json_type(d, pats) == JSON_ARR) {
        size_t n;
        const char *raw = json_raw(d, pats, &n);
        jw_kraw(&w, "patterns", raw, n);
    }
    ev_end(m, &w, "permission_request", sink);
}

static void on_permission_replied(oc_map_t *m, const json_doc_t *d, int props)
{
    char id[OC_ID_MAX];
    if (!str_copy(d, get(d, props, "requestID"), id, sizeof(id))) return;
    int i = pending_find(m, id);
    if (i >= 0) pending_drop(m, i);
}

static void on_session_error(oc_map_t *m, const json_doc_t *d, int props, const wkr_sink_t *sink)
{
    int err = get(d, props, "error");
    int name = get(d, err, "name");
    m->errored = true; /* idle ends the turn even before busy; its tail follows */
    if (json_str_eq(d, name, "MessageAbortedError")) {
        m->interrupted = true; /* an abort is not a failure of its own */
        return;
    }
    char nm[64] = "", msg[1024] = "";
    char text[1100];
    str_copy(d, name, nm, sizeof(nm));
    int data = get(d, err, "data");
    if (!str_copy(d, get(d, data, "message"), msg, sizeof(msg)))
        str_copy(d, get(d, err, "message"), msg, sizeof(msg));
    if (nm[0] && msg[0]) snprintf(text, sizeof(text), "%s: %s", nm, msg);
    else snprintf(text, sizeof(text), "%s", nm[0] ? nm : msg[0] ? msg : "agent error");
    if (m->failed) return; /* one error per turn */
    m->failed = true;
    emit_error(m, "INTERNAL_ERROR", text, sink);
}

/* ---- public ------------------------------------------------------------------ */

void oc_map_init(oc_map_t *m, const oc_host_t *host)
{
    memset(m, 0, sizeof(*m));
    if (host) m->host = *host;
    for (int i = 0; i < OC_MAX_PARTS; i++) buf_init(&m->parts[i].text);
    buf_init(&m->ev);
}

void oc_map_free(oc_map_t *m)
{
    pending_clear(m);
    for (int i = 0; i < OC_MAX_PARTS; i++) part_clear(&m->parts[i]);
    buf_free(&m->ev);
}

void oc_map_turn_begin(oc_map_t *m, uint64_t now_ms)
{
    stats_reset(m);
    m->phase = OC_TURN_POSTED;
    m->settling = false;
    m->t0_ms = now_ms;
}

void oc_map_interrupt(oc_map_t *m)
{
    if (m->phase != OC_TURN_NONE) m->interrupted = true;
}

bool oc_map_turn_active(const oc_map_t *m)
{
    return m->phase != OC_TURN_NONE;
}

bool oc_map_settling(const oc_map_t *m)
{
    return m->settling;
}

void oc_map_settle_end(oc_map_t *m)
{
    m->settling = false;
}

int oc_map_frame(oc_map_t *m, const oc_frame_t *f, uint64_t now_ms, const wkr_sink_t *sink)
{
    const json_doc_t *d = &f->doc;
    uint64_t before = m->events;
    int props = f->props;
    bool was_idle = m->last_idle;
    bool idle = false;

    m->frames++;
    if (oc_frame_is(f, "session.idle")) {
        idle = true;
    } else if (oc_frame_is(f, "session.status")) {
        int st = get(d, get(d, props, "status"), "type");
        if (json_str_eq(d, st, "idle")) idle = true;
        else if (json_str_eq(d, st, "busy") && m->phase == OC_TURN_POSTED) m->phase = OC_TURN_BUSY;
    } else if (oc_frame_is(f, "message.updated")) {
        on_message_updated(m, d, props, sink);
    } else if (m->phase == OC_TURN_NONE) {
        m->ignored++; /* no turn of ours: the tail of an earlier one, or noise */
    } else if (oc_frame_is(f, "message.part.delta")) {
        on_part_delta(m, d, props, sink);
    } else if (oc_frame_is(f, "message.part.updated")) {
        on_part_updated(m, d, props, sink);
    } else if (oc_frame_is(f, "permission.asked")) {
        on_permission_asked(m, d, props, sink);
    } else if (oc_frame_is(f, "permission.replied")) {
        on_permission_replied(m, d, props);
    } else if (oc_frame_is(f, "question.asked")) {
        char id[OC_ID_MAX];
        if (str_copy(d, get(d, props, "id"), id, sizeof(id)) && m->host.question)
            m->host.question(m->host.ctx, id);
    } else if (oc_frame_is(f, "session.error")) {
        on_session_error(m, d, props, sink);
    } else {
        m->ignored++;
    }
    m->last_idle = idle;
    if (idle) {
        if (m->phase == OC_TURN_NONE) {
            /* the tail of a cut turn is over once an idle follows other events */
            if (m->settling && !was_idle) m->settling = false;
        } else if (m->phase == OC_TURN_BUSY || m->errored) {
            end_turn(m, m->errored, now_ms, sink); /* last: may start the next turn */
        }
    }
    return (int)(m->events - before);
}

void oc_map_turn_fail(oc_map_t *m, const char *code, const char *msg, uint64_t now_ms,
                      const wkr_sink_t *sink)
{
    if (m->phase == OC_TURN_NONE) return;
    if (!m->failed) emit_error(m, code, msg, sink);
    m->failed = true;
    end_turn(m, false, now_ms, sink);
}

void oc_map_turn_abandon(oc_map_t *m, uint64_t now_ms, const wkr_sink_t *sink)
{
    m->phase = OC_TURN_POSTED;
    m->t0_ms = now_ms;
    m->interrupted = true;
    end_turn(m, false, now_ms, sink);
}

void oc_map_finish(oc_map_t *m, const wkr_sink_t *sink)
{
    flush_open(m, sink);
}

/* ---- request bodies ---------------------------------------------------------- */

static int finish_body(buf_t *out, size_t mark, jw_t *w)
{
    if (jw_error(w)) {
        out->len = mark;
        if (out->cap) out->p[mark] = '\0';
        return jw_error(w);
    }
    return 0;
}

int oc_map_prompt_body(buf_t *out, const char *content, size_t len, const char *model,
                       const char *system)
{
    jw_t w;
    size_t mark = out->len;
    jw_init(&w, out);
    jw_obj_begin(&w);
    jw_key(&w, "parts");
    jw_arr_begin(&w);
    jw_obj_begin(&w);
    jw_kstr(&w, "type", "text");
    jw_key(&w, "text");
    jw_str_escaped(&w, content, len);
    jw_obj_end(&w);
    jw_arr_end(&w);
    if (model && model[0]) {
        const char *slash = strchr(model, '/');
        jw_key(&w, "model");
        jw_obj_begin(&w);
        if (slash && slash != model && slash[1]) {
            jw_key(&w, "providerID");
            jw_strn(&w, model, (size_t)(slash - model));
            jw_kstr(&w, "modelID", slash + 1);
        } else {
            jw_kstr(&w, "providerID", "anthropic");
            jw_kstr(&w, "modelID", slash ? slash + 1 : model);
        }
        jw_obj_end(&w);
    }
    if (system && system[0]) jw_kstr(&w, "system", system);
    jw_obj_end(&w);
    return finish_body(out, mark, &w);
}

int oc_map_reply_body(buf_t *out, bool allow, const char *reason)
{
    jw_t w;
    size_t mark = out->len;
    jw_init(&w, out);
    jw_obj_begin(&w);
    jw_kstr(&w, "reply", allow ? "once" : "reject");
    if (!allow && reason && reason[0]) jw_kstr(&w, "message", reason);
    jw_obj_end(&w);
    return finish_body(out, mark, &w);
}

static void rule(jw_t *w, const char *perm, const char *action)
{
    jw_obj_begin(w);
    jw_kstr(w, "permission", perm);
    jw_kstr(w, "pattern", "*");
    jw_kstr(w, "action", action);
    jw_obj_end(w);
}

int oc_map_session_body(buf_t *out, const char *title, const char *mode)
{
    jw_t w;
    size_t mark = out->len;
    const char *m = mode ? mode : "";
    jw_init(&w, out);
    jw_obj_begin(&w);
    if (title) jw_kstr(&w, "title", title);
    jw_key(&w, "permission");
    jw_arr_begin(&w);
    if (strcmp(m, "bypassPermissions") == 0) {
        rule(&w, "*", "allow");
    } else if (strcmp(m, "plan") == 0) {
        rule(&w, "bash", "deny");
        rule(&w, "edit", "deny");
        rule(&w, "webfetch", "ask");
    } else {
        rule(&w, "bash", "ask");
        rule(&w, "edit", strcmp(m, "acceptEdits") == 0 ? "allow" : "ask");
        rule(&w, "webfetch", "ask");
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    return finish_body(out, mark, &w);
}
