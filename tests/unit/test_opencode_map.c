/*
 * test_opencode_map.c - `opencode serve` SSE -> AEP mapping, driven by
 * /global/event transcripts recorded from the real server
 * (tests/fixtures/opencode/NAME.sse, made by record.py beside them), plus
 * hand-made frames for the paths the recordings do not reach, the SSE
 * framing, and the request bodies.
 *
 * The harness plays the adapter: it splits the byte stream into SSE events
 * (in chunks of several sizes), parses each frame, hands the frames of the
 * recorded session to the map, and behaves like the core (an interrupt
 * after the first delta, the next prompt once the map no longer settles).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/json.h"
#include "worker/opencode_map.h"

#ifndef FIXTURES_DIR
#define FIXTURES_DIR "tests/fixtures"
#endif

#define MAX_EV 4096

typedef struct ev {
    char type[32];
    char *data;
    size_t len;
} ev_t;

typedef struct cap {
    ev_t ev[MAX_EV];
    int n;
    char info[16][256];
    int ninfo;
    int added, removed;
    char question[OC_ID_MAX];
    /* harness behaviour */
    oc_map_t *m;
    bool own_map;
    char sid[OC_ID_MAX];
    oc_parser_t parser;
    uint64_t now;
    int prompts_left;     /* prompts the "core" still sends after a done */
    bool interrupt_after_delta;
    bool interrupted;
    bool want_prompt;     /* a prompt is waiting for the map to settle */
    int frames_seen, frames_other;
} cap_t;

/* ---- sink --------------------------------------------------------------- */

static void sink_event(void *ctx, const char *type, const char *data, size_t len)
{
    cap_t *c = ctx;
    assert_true(c->n < MAX_EV);
    ev_t *e = &c->ev[c->n++];
    snprintf(e->type, sizeof(e->type), "%s", type);
    e->data = malloc(len + 1);
    memcpy(e->data, data, len);
    e->data[len] = '\0';
    e->len = len;
    static json_tok_t toks[65536];
    json_doc_t d;
    assert_int_equal(json_parse(&d, data, len, toks, 65536), 0);
    assert_int_equal(json_type(&d, 0), JSON_OBJ);
    if (strcmp(type, "done") == 0) {
        /* like the core: the next queued input is handed over at once */
        assert_false(oc_map_turn_active(c->m));
        if (c->prompts_left > 0) {
            c->prompts_left--;
            c->want_prompt = true;
        }
    }
}

static void sink_info(void *ctx, const char *key, const char *value)
{
    cap_t *c = ctx;
    assert_true(c->ninfo < 16);
    snprintf(c->info[c->ninfo++], 256, "%s=%s", key, value);
}

static void sink_exit(void *ctx, int status, int signo, const char *why)
{
    (void)ctx, (void)status, (void)signo, (void)why;
    fail_msg("the map never reports an exit");
}

static void host_added(void *ctx, const char *id)
{
    cap_t *c = ctx;
    assert_non_null(id);
    c->added++;
}

static void host_removed(void *ctx, const char *id)
{
    cap_t *c = ctx;
    assert_non_null(id);
    c->removed++;
}

static void host_question(void *ctx, const char *id)
{
    cap_t *c = ctx;
    snprintf(c->question, sizeof(c->question), "%s", id);
}

static wkr_sink_t sink_of(cap_t *c)
{
    return (wkr_sink_t){.ctx = c, .event = sink_event, .info = sink_info, .exit = sink_exit};
}

static cap_t *cap_new(oc_map_t *m)
{
    cap_t *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->m = m;
    oc_host_t host = {.ctx = c, .pending_added = host_added, .pending_removed = host_removed,
                      .question = host_question};
    oc_map_init(m, &host);
    oc_parser_init(&c->parser);
    c->now = 1000;
    return c;
}

static void cap_free(cap_t *c)
{
    for (int i = 0; i < c->n; i++) free(c->ev[i].data);
    oc_parser_free(&c->parser);
    oc_map_free(c->m);
    if (c->own_map) free(c->m);
    free(c);
}

/* ---- event inspection ---------------------------------------------------- */

typedef struct view {
    json_doc_t d;
    json_tok_t tok[4096];
} view_t;

static view_t *view(const ev_t *e)
{
    static view_t v;
    assert_int_equal(json_parse(&v.d, e->data, e->len, v.tok, 4096), 0);
    return &v;
}

/* string field of event i (unescaped, static buffer) */
static const char *str(cap_t *c, int i, const char *key)
{
    static char out[65536];
    view_t *v = view(&c->ev[i]);
    int t = json_obj_get(&v->d, 0, key);
    if (json_type(&v->d, t) != JSON_STR) return NULL;
    assert_true(json_str_copy(&v->d, t, out, sizeof(out)) >= 0);
    return out;
}

static bool boolean(cap_t *c, int i, const char *key)
{
    view_t *v = view(&c->ev[i]);
    bool b = false;
    assert_int_equal(json_get_bool(&v->d, json_obj_get(&v->d, 0, key), &b), 0);
    return b;
}

/* raw JSON of a field, or of a field of a field ("stats.usage") */
static const char *raw(cap_t *c, int i, const char *path)
{
    static char out[65536];
    char key[64];
    view_t *v = view(&c->ev[i]);
    int t = 0;
    const char *p = path;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        snprintf(key, sizeof(key), "%.*s", (int)n, p);
        t = json_obj_get(&v->d, t, key);
        if (t < 0) return NULL;
        p += n + (dot ? 1 : 0);
    }
    size_t n;
    const char *r = json_raw(&v->d, t, &n);
    snprintf(out, sizeof(out), "%.*s", (int)n, r);
    return out;
}

static int count(cap_t *c, const char *type)
{
    int n = 0;
    for (int i = 0; i < c->n; i++) n += strcmp(c->ev[i].type, type) == 0;
    return n;
}

static int find(cap_t *c, const char *type, int from)
{
    for (int i = from; i < c->n; i++)
        if (strcmp(c->ev[i].type, type) == 0) return i;
    return -1;
}

/* the concatenated deltas of message id */
static char *deltas_of(cap_t *c, const char *id)
{
    buf_t b;
    buf_init(&b);
    for (int i = 0; i < c->n; i++) {
        if (strcmp(c->ev[i].type, "message.delta") != 0) continue;
        char mid[OC_ID_MAX];
        snprintf(mid, sizeof(mid), "%s", str(c, i, "message_id"));
        if (strcmp(mid, id) == 0) buf_puts(&b, str(c, i, "content"));
    }
    return buf_steal(&b, NULL);
}

/* Every message.start has, in order, deltas of its id, one message.end and
 * one message whose content equals the deltas. */
static void check_messages(cap_t *c)
{
    for (int i = 0; i < c->n; i++) {
        if (strcmp(c->ev[i].type, "message.start") != 0) continue;
        char id[OC_ID_MAX];
        snprintf(id, sizeof(id), "%s", str(c, i, "id"));
        assert_string_equal(str(c, i, "role"), "assistant");
        int end = -1, msg = -1;
        for (int j = i + 1; j < c->n; j++) {
            if (strcmp(c->ev[j].type, "message.end") == 0 &&
                strcmp(str(c, j, "message_id"), id) == 0) {
                assert_int_equal(end, -1);
                end = j;
            }
            if (strcmp(c->ev[j].type, "message") == 0 && strcmp(str(c, j, "id"), id) == 0) {
                assert_int_equal(msg, -1);
                msg = j;
            }
            if (strcmp(c->ev[j].type, "message.delta") == 0 &&
                strcmp(str(c, j, "message_id"), id) == 0)
                assert_true(end < 0);
        }
        assert_true(end > i && msg == end + 1);
        char *d = deltas_of(c, id);
        assert_string_equal(str(c, msg, "content"), d);
        free(d);
    }
    assert_int_equal(count(c, "message.start"), count(c, "message.end"));
}

/* ---- the harness -------------------------------------------------------- */

static void on_sse(void *ctx, const char *data, size_t len)
{
    cap_t *c = ctx;
    oc_frame_t f;
    wkr_sink_t sink = sink_of(c);
    c->now += 10;
    if (oc_frame_parse(&c->parser, &f, data, len) < 0) return;
    if (oc_frame_is(&f, "sync")) return;
    if (strcmp(f.sid, c->sid) != 0) {
        c->frames_other++;
        return;
    }
    c->frames_seen++;
    int before = c->n;
    oc_map_frame(c->m, &f, c->now, &sink);
    if (c->interrupt_after_delta && !c->interrupted) {
        for (int i = before; i < c->n; i++)
            if (strcmp(c->ev[i].type, "message.delta") == 0) {
                oc_map_interrupt(c->m);
                c->interrupted = true;
                break;
            }
    }
    /* the adapter posts a held prompt once the map no longer settles */
    if (c->want_prompt && !oc_map_settling(c->m)) {
        c->want_prompt = false;
        oc_map_turn_begin(c->m, c->now);
    }
}

static char *load(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/opencode/%s.sse", FIXTURES_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    p[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* Plays fixture `name` in chunks of `chunk` bytes (0: all at once). */
static cap_t *play(const char *name, size_t chunk, int extra_prompts, bool interrupt)
{
    oc_map_t *m = malloc(sizeof(*m));
    assert_non_null(m);
    cap_t *c = cap_new(m);
    c->own_map = true;
    size_t len;
    char *data = load(name, &len);
    const char *s = strstr(data, "session=");
    assert_non_null(s);
    sscanf(s + 8, "%95s", c->sid);
    c->prompts_left = extra_prompts;
    c->interrupt_after_delta = interrupt;
    oc_map_turn_begin(m, c->now); /* the fixture starts as the first prompt is posted */
    oc_sse_t sse;
    oc_sse_init(&sse, 0);
    if (chunk == 0) chunk = len;
    for (size_t off = 0; off < len; off += chunk)
        oc_sse_feed(&sse, data + off, len - off < chunk ? len - off : chunk, on_sse, c);
    assert_int_equal(sse.dropped, 0);
    oc_sse_free(&sse);
    free(data);
    assert_true(c->frames_seen > 0);
    return c;
}

/* The same transcript gives the same events whatever the chunking. */
static void same_events(const char *name, int prompts, bool interrupt)
{
    cap_t *a = play(name, 0, prompts, interrupt);
    size_t sizes[] = {1, 7, 100, 4096};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        cap_t *b = play(name, sizes[k], prompts, interrupt);
        assert_int_equal(a->n, b->n);
        for (int i = 0; i < a->n; i++) {
            assert_string_equal(a->ev[i].type, b->ev[i].type);
            if (strcmp(a->ev[i].type, "done") != 0) /* duration depends on frame count only */
                assert_string_equal(a->ev[i].data, b->ev[i].data);
        }
        cap_free(b);
    }
    cap_free(a);
}

static const char *types(cap_t *c)
{
    static char out[8192];
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < c->n && o + 40 < sizeof(out); i++)
        o += (size_t)snprintf(out + o, sizeof(out) - o, "%s%s", i ? " " : "", c->ev[i].type);
    return out;
}

/* ---- recorded transcripts ---------------------------------------------------- */

static void test_text(void **state)
{
    (void)state;
    cap_t *c = play("text", 0, 0, false);
    assert_string_equal(types(c), "message.start message.delta message.delta message.delta "
                                  "message.end message done");
    check_messages(c);
    assert_string_equal(str(c, 5, "content"), "Echo: say hello");
    assert_string_equal(str(c, 5, "content_type"), "text");
    assert_true(strncmp(str(c, 0, "id"), "prt_", 4) == 0);
    int d = find(c, "done", 0);
    assert_true(boolean(c, d, "success"));
    assert_string_equal(raw(c, d, "stats.num_turns"), "1");
    assert_string_equal(raw(c, d, "stats.usage.input_tokens"), "27");
    assert_string_equal(raw(c, d, "stats.usage.output_tokens"), "3");
    assert_string_equal(raw(c, d, "stats.total_cost_usd"), "0.000126");
    assert_string_equal(raw(c, d, "stats.finish"), "\"stop\"");
    assert_string_equal(raw(c, d, "stats.interrupted"), "false");
    assert_false(oc_map_turn_active(c->m));
    assert_false(oc_map_settling(c->m));
    /* the model is reported once */
    int models = 0;
    for (int i = 0; i < c->ninfo; i++)
        if (strncmp(c->info[i], "agent_model=", 12) == 0) {
            models++;
            assert_string_equal(c->info[i], "agent_model=anthropic/claude-sonnet-4-5");
        }
    assert_int_equal(models, 1);
    assert_true(c->frames_other > 0); /* plugin/server noise without a session */
    cap_free(c);
    same_events("text", 0, false);
}

static void test_longtext(void **state)
{
    (void)state;
    cap_t *c = play("longtext", 0, 0, false);
    check_messages(c);
    assert_int_equal(count(c, "message.delta"), 40);
    int m = find(c, "message", 0);
    buf_t want;
    buf_init(&want);
    for (int i = 1; i <= 40; i++) buf_printf(&want, "%sword%d", i > 1 ? " " : "", i);
    assert_string_equal(str(c, m, "content"), want.p);
    buf_free(&want);
    assert_int_equal(count(c, "done"), 1);
    assert_int_equal(find(c, "done", 0), c->n - 1);
    cap_free(c);
    same_events("longtext", 0, false);
}

static void test_think(void **state)
{
    (void)state;
    cap_t *c = play("think", 0, 0, false);
    check_messages(c);
    int r = find(c, "reasoning", 0);
    assert_int_equal(r, 0);
    assert_string_equal(str(c, r, "content"), "Let me think about this. The user wants an answer.");
    assert_true(strncmp(str(c, r, "id"), "prt_", 4) == 0);
    assert_true(find(c, "message.start", 0) > r);
    assert_string_equal(str(c, find(c, "message", 0), "content"), "Echo: THINK then answer");
    assert_int_equal(count(c, "reasoning"), 1);
    assert_true(boolean(c, c->n - 1, "success"));
    cap_free(c);
}

static void test_bash_allow(void **state)
{
    (void)state;
    cap_t *c = play("bash_allow", 0, 0, false);
    check_messages(c);
    assert_string_equal(types(c), "tool_call permission_request tool_result message.start "
                                  "message.delta message.delta message.delta message.end "
                                  "message done");
    char call[OC_ID_MAX];
    snprintf(call, sizeof(call), "%s", str(c, 0, "id"));
    assert_true(strncmp(call, "toolu_", 6) == 0);
    assert_string_equal(str(c, 0, "name"), "bash");
    assert_string_equal(raw(c, 0, "input.command"), "\"echo fixture-ran\"");
    /* the prompt carries the tool's full input, linked to the call */
    assert_true(strncmp(str(c, 1, "id"), "per_", 4) == 0);
    assert_string_equal(str(c, 1, "tool_name"), "bash");
    assert_string_equal(str(c, 1, "description"), "bash: echo fixture-ran");
    assert_string_equal(str(c, 1, "tool_use_id"), call);
    assert_string_equal(raw(c, 1, "input"), "{\"command\":\"echo fixture-ran\",\"description\":\"run it\"}");
    assert_string_equal(raw(c, 1, "args"),
                        "[\"{\\\"command\\\":\\\"echo fixture-ran\\\",\\\"description\\\":\\\"run it\\\"}\"]");
    assert_string_equal(raw(c, 1, "patterns"), "[\"echo fixture-ran\"]");
    /* asked, then answered (by the fixture's driver): no longer pending */
    assert_int_equal(c->added, 1);
    assert_int_equal(c->removed, 1);
    assert_int_equal(oc_map_pending_count(c->m), 0);
    assert_string_equal(str(c, 2, "id"), call);
    assert_string_equal(str(c, 2, "output"), "fixture-ran\n");
    assert_false(boolean(c, 2, "error"));
    assert_string_equal(str(c, 8, "content"), "Tool said: fixture-ran\n");
    assert_true(boolean(c, 9, "success"));
    assert_string_equal(raw(c, 9, "stats.num_turns"), "2");
    assert_string_equal(raw(c, 9, "stats.usage.input_tokens"), "150");
    cap_free(c);
    same_events("bash_allow", 0, false);
}

static void test_bash_reject(void **state)
{
    (void)state;
    cap_t *c = play("bash_reject", 0, 0, false);
    check_messages(c);
    /* here the prompt came before the running part: its input is the
     * prompt's metadata */
    int p = find(c, "permission_request", 0);
    assert_int_equal(p, 0);
    assert_string_equal(raw(c, p, "input"), "{\"command\":\"touch nope.txt\"}");
    assert_string_equal(str(c, p, "description"), "bash: touch nope.txt");
    int call = find(c, "tool_call", 0);
    assert_int_equal(call, 1);
    assert_string_equal(str(c, p, "tool_use_id"), str(c, call, "id"));
    int r = find(c, "tool_result", 0);
    assert_true(boolean(c, r, "error"));
    assert_non_null(strstr(str(c, r, "output"), "not allowed in the fixture"));
    /* opencode tells the model and it answers */
    assert_non_null(strstr(str(c, find(c, "message", 0), "content"), "rejected permission"));
    assert_int_equal(count(c, "done"), 1);
    assert_true(boolean(c, c->n - 1, "success"));
    assert_int_equal(c->added, 1);
    assert_int_equal(c->removed, 1);
    cap_free(c);
}

static void test_abort(void **state)
{
    (void)state;
    cap_t *c = play("abort", 0, 0, true);
    assert_true(c->interrupted);
    check_messages(c);
    assert_string_equal(types(c), "message.start message.delta message.end message done");
    assert_string_equal(str(c, 3, "content"), "word1 ");
    assert_int_equal(count(c, "error"), 0); /* an abort is not an error */
    int d = c->n - 1;
    assert_false(boolean(c, d, "success"));
    assert_string_equal(raw(c, d, "stats.interrupted"), "true");
    /* the tail (final text part, second idle pair) came and went */
    assert_false(oc_map_settling(c->m));
    assert_false(oc_map_turn_active(c->m));
    cap_free(c);
    same_events("abort", 0, true);
}

static void test_abort_then_prompt(void **state)
{
    (void)state;
    cap_t *c = play("abort_then_prompt", 0, 1, true);
    check_messages(c);
    assert_int_equal(count(c, "done"), 2);
    int d1 = find(c, "done", 0), d2 = find(c, "done", d1 + 1);
    assert_string_equal(raw(c, d1, "stats.interrupted"), "true");
    /* the second turn: its own text only (no deltas were sent for it: the
     * final part text becomes one delta) */
    int s2 = find(c, "message.start", d1);
    assert_true(s2 > d1);
    assert_string_equal(str(c, find(c, "message", d1), "content"), "Echo: after the abort");
    assert_int_equal(count(c, "message.start"), 2);
    assert_true(boolean(c, d2, "success"));
    assert_string_equal(raw(c, d2, "stats.interrupted"), "false");
    assert_int_equal(d2, c->n - 1);
    cap_free(c);
    same_events("abort_then_prompt", 1, true);
}

static void test_fail(void **state)
{
    (void)state;
    cap_t *c = play("fail", 0, 0, false);
    assert_string_equal(types(c), "error done");
    assert_string_equal(str(c, 0, "code"), "INTERNAL_ERROR");
    assert_string_equal(str(c, 0, "message"), "APIError: Internal server error (stand-in FAIL500)");
    assert_false(boolean(c, 1, "success"));
    assert_string_equal(raw(c, 1, "stats.interrupted"), "false");
    assert_false(oc_map_settling(c->m)); /* the second idle pair ended it */
    cap_free(c);
}

static void test_bad_model(void **state)
{
    (void)state;
    cap_t *c = play("bad_model", 0, 0, false);
    /* busy, error, idle: one error, one done; the second session.error that
     * follows the idle is the tail, not a new error */
    assert_string_equal(types(c), "error done");
    assert_non_null(strstr(str(c, 0, "message"), "UnknownError: Model not found: nope/x"));
    assert_false(boolean(c, 1, "success"));
    assert_true(oc_map_settling(c->m)); /* no idle after the tail: the adapter's timer ends it */
    oc_map_settle_end(c->m);
    assert_false(oc_map_settling(c->m));
    cap_free(c);
}

static void test_queued(void **state)
{
    (void)state;
    cap_t *c = play("queued", 0, 0, false);
    check_messages(c);
    assert_int_equal(count(c, "done"), 1);
    assert_int_equal(count(c, "message.start"), 1);
    assert_string_equal(str(c, find(c, "message", 0), "content"), "Echo: first of two\nsecond of two");
    cap_free(c);
}

/* ---- hand-made frames ------------------------------------------------------------ */

static void frame(cap_t *c, const char *json)
{
    oc_frame_t f;
    wkr_sink_t sink = sink_of(c);
    c->now += 5;
    assert_int_equal(oc_frame_parse(&c->parser, &f, json, strlen(json)), 0);
    oc_map_frame(c->m, &f, c->now, &sink);
}

#define S "\"sessionID\":\"ses_1\""

static void test_frame_parse(void **state)
{
    (void)state;
    oc_parser_t p;
    oc_frame_t f;
    oc_parser_init(&p);
    const char *g = "{\"directory\":\"/x\",\"payload\":{\"id\":\"evt_1\",\"type\":\"session.idle\","
                    "\"properties\":{\"sessionID\":\"ses_a\"}}}";
    assert_int_equal(oc_frame_parse(&p, &f, g, strlen(g)), 0);
    assert_true(oc_frame_is(&f, "session.idle"));
    assert_string_equal(f.sid, "ses_a");
    const char *e = "{\"id\":\"evt_1\",\"type\":\"server.connected\",\"properties\":{}}";
    assert_int_equal(oc_frame_parse(&p, &f, e, strlen(e)), 0);
    assert_true(oc_frame_is(&f, "server.connected"));
    assert_string_equal(f.sid, "");
    assert_int_equal(oc_frame_parse(&p, &f, "[1]", 3), -EINVAL);
    assert_int_equal(oc_frame_parse(&p, &f, "{\"type\":1}", 10), -EINVAL);
    assert_int_equal(oc_frame_parse(&p, &f, "{", 1), -EINVAL);
    assert_int_equal(oc_frame_parse(&p, &f, "{\"a\":\"\xff\"}", 9), -EILSEQ);
    /* a frame needing many tokens: the parser grows */
    buf_t big;
    buf_init(&big);
    buf_puts(&big, "{\"type\":\"x\",\"properties\":{\"sessionID\":\"ses_b\",\"l\":[");
    for (int i = 0; i < 100000; i++) buf_printf(&big, "%s%d", i ? "," : "", i);
    buf_puts(&big, "]}}");
    assert_int_equal(oc_frame_parse(&p, &f, big.p, big.len), 0);
    assert_string_equal(f.sid, "ses_b");
    buf_free(&big);
    /* and shrinks again for small ones */
    assert_int_equal(oc_frame_parse(&p, &f, e, strlen(e)), 0);
    /* a subagent's session and the events its parent must see */
    char parent[OC_ID_MAX];
    assert_false(oc_frame_child_of(&f, parent, sizeof(parent)));
    const char *child = "{\"type\":\"session.created\",\"properties\":{\"sessionID\":\"ses_c\","
                        "\"info\":{\"id\":\"ses_c\",\"parentID\":\"ses_p\"}}}";
    assert_int_equal(oc_frame_parse(&p, &f, child, strlen(child)), 0);
    assert_true(oc_frame_child_of(&f, parent, sizeof(parent)));
    assert_string_equal(parent, "ses_p");
    assert_false(oc_frame_for_parent(&f));
    const char *root = "{\"type\":\"session.updated\",\"properties\":{\"sessionID\":\"ses_p\","
                       "\"info\":{\"id\":\"ses_p\"}}}";
    assert_int_equal(oc_frame_parse(&p, &f, root, strlen(root)), 0);
    assert_false(oc_frame_child_of(&f, parent, sizeof(parent)));
    const char *ask = "{\"type\":\"permission.asked\",\"properties\":{\"sessionID\":\"ses_c\",\"id\":\"per_1\"}}";
    assert_int_equal(oc_frame_parse(&p, &f, ask, strlen(ask)), 0);
    assert_true(oc_frame_for_parent(&f));
    assert_int_equal(oc_frame_parse(&p, &f, g, strlen(g)), 0);
    assert_false(oc_frame_for_parent(&f));
    oc_parser_free(&p);
}

static void test_events_outside_a_turn_ignored(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_1\","
             "\"messageID\":\"msg_1\",\"type\":\"text\",\"text\":\"hi\",\"time\":{\"start\":1,\"end\":2}}}}");
    frame(c, "{\"type\":\"session.error\",\"properties\":{" S ",\"error\":{\"name\":\"UnknownError\","
             "\"data\":{\"message\":\"x\"}}}}");
    frame(c, "{\"type\":\"session.idle\",\"properties\":{" S "}}");
    assert_int_equal(c->n, 0);
    cap_free(c);
}

static void test_stale_idle_before_busy(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    oc_map_turn_begin(&m, c->now);
    /* the late idle of an earlier turn: not ours */
    frame(c, "{\"type\":\"session.status\",\"properties\":{" S ",\"status\":{\"type\":\"idle\"}}}");
    frame(c, "{\"type\":\"session.idle\",\"properties\":{" S "}}");
    assert_int_equal(c->n, 0);
    assert_true(oc_map_turn_active(&m));
    frame(c, "{\"type\":\"session.status\",\"properties\":{" S ",\"status\":{\"type\":\"busy\"}}}");
    frame(c, "{\"type\":\"session.status\",\"properties\":{" S ",\"status\":{\"type\":\"idle\"}}}");
    assert_string_equal(types(c), "done");
    frame(c, "{\"type\":\"session.idle\",\"properties\":{" S "}}"); /* the pair's second half */
    assert_int_equal(c->n, 1);
    cap_free(c);
}

static void test_error_before_busy_ends_turn(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    oc_map_turn_begin(&m, c->now);
    frame(c, "{\"type\":\"session.error\",\"properties\":{" S ",\"error\":{\"name\":\"ProviderAuthError\","
             "\"data\":{\"providerID\":\"anthropic\",\"message\":\"bad key\"}}}}");
    frame(c, "{\"type\":\"session.idle\",\"properties\":{" S "}}");
    assert_string_equal(types(c), "error done");
    assert_string_equal(str(c, 0, "message"), "ProviderAuthError: bad key");
    assert_true(oc_map_settling(&m));
    /* the tail: another error, then other events, then idle: settled */
    frame(c, "{\"type\":\"session.error\",\"properties\":{" S ",\"error\":{\"name\":\"ProviderAuthError\"}}}");
    frame(c, "{\"type\":\"session.idle\",\"properties\":{" S "}}");
    assert_false(oc_map_settling(&m));
    assert_int_equal(c->n, 2);
    cap_free(c);
}

static void test_flush_on_turn_end(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    oc_map_turn_begin(&m, c->now);
    frame(c, "{\"type\":\"session.status\",\"properties\":{" S ",\"status\":{\"type\":\"busy\"}}}");
    frame(c, "{\"type\":\"message.updated\",\"properties\":{" S ",\"info\":{\"id\":\"msg_a\","
             "\"role\":\"assistant\"}}}");
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_r\","
             "\"messageID\":\"msg_a\",\"type\":\"reasoning\",\"text\":\"\",\"time\":{\"start\":1}}}}");
    frame(c, "{\"type\":\"message.part.delta\",\"properties\":{" S ",\"messageID\":\"msg_a\","
             "\"partID\":\"prt_r\",\"field\":\"text\",\"delta\":\"hmm \\\"quoted\\\"\"}}");
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_t\","
             "\"messageID\":\"msg_a\",\"type\":\"text\",\"text\":\"\",\"time\":{\"start\":1}}}}");
    frame(c, "{\"type\":\"message.part.delta\",\"properties\":{" S ",\"messageID\":\"msg_a\","
             "\"partID\":\"prt_t\",\"field\":\"text\",\"delta\":\"line\\n\\u00e9\"}}");
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_x\","
             "\"messageID\":\"msg_a\",\"type\":\"tool\",\"tool\":\"read\",\"callID\":\"call_1\","
             "\"state\":{\"status\":\"running\",\"input\":{\"filePath\":\"/a\"}}}}}");
    assert_string_equal(types(c), "message.start message.delta tool_call");
    frame(c, "{\"type\":\"session.idle\",\"properties\":{" S "}}");
    check_messages(c);
    /* closed in the order the parts came */
    assert_string_equal(types(c), "message.start message.delta tool_call reasoning message.end "
                                  "message tool_result done");
    assert_string_equal(str(c, 5, "content"), "line\n\xc3\xa9");
    assert_string_equal(str(c, 3, "content"), "hmm \"quoted\"");
    assert_true(boolean(c, 6, "error"));
    assert_string_equal(str(c, 6, "id"), "call_1");
    /* late updates of those parts change nothing */
    oc_map_turn_begin(&m, c->now);
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_t\","
             "\"messageID\":\"msg_a\",\"type\":\"text\",\"text\":\"line\\n\\u00e9 more\","
             "\"time\":{\"start\":1,\"end\":2}}}}");
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_x\","
             "\"messageID\":\"msg_a\",\"type\":\"tool\",\"tool\":\"read\",\"callID\":\"call_1\","
             "\"state\":{\"status\":\"completed\",\"input\":{},\"output\":\"x\"}}}}");
    assert_int_equal(c->n, 8);
    /* oc_map_finish closes what is open, without a done */
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_u\","
             "\"messageID\":\"msg_a\",\"type\":\"text\",\"text\":\"cut\",\"time\":{\"start\":1}}}}");
    wkr_sink_t sink = sink_of(c);
    oc_map_finish(&m, &sink);
    assert_string_equal(types(c) + strlen(types(c)) - strlen("message.start message.delta message.end message"),
                        "message.start message.delta message.end message");
    assert_int_equal(count(c, "done"), 1);
    cap_free(c);
}

static void test_user_parts_not_echoed(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    oc_map_turn_begin(&m, c->now);
    frame(c, "{\"type\":\"message.updated\",\"properties\":{" S ",\"info\":{\"id\":\"msg_u\",\"role\":\"user\"}}}");
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_u\","
             "\"messageID\":\"msg_u\",\"type\":\"text\",\"text\":\"my prompt\",\"time\":{\"start\":1,\"end\":1}}}}");
    /* a part of an unknown message without time: a user part too */
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_v\","
             "\"messageID\":\"msg_z\",\"type\":\"text\",\"text\":\"prompt\"}}}");
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_s\","
             "\"messageID\":\"msg_b\",\"type\":\"text\",\"synthetic\":true,\"text\":\"syn\",\"time\":{\"start\":1,\"end\":1}}}}");
    frame(c, "{\"type\":\"message.part.delta\",\"properties\":{" S ",\"messageID\":\"msg_u\","
             "\"partID\":\"prt_unknown\",\"field\":\"text\",\"delta\":\"x\"}}");
    assert_int_equal(c->n, 0);
    cap_free(c);
}

static void test_tool_paths(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    oc_map_turn_begin(&m, c->now);
    frame(c, "{\"type\":\"session.status\",\"properties\":{" S ",\"status\":{\"type\":\"busy\"}}}");
    /* pending: no call yet */
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_1\","
             "\"messageID\":\"msg_a\",\"type\":\"tool\",\"tool\":\"Write\",\"callID\":\"c1\","
             "\"state\":{\"status\":\"pending\",\"input\":{},\"raw\":\"\"}}}}");
    assert_int_equal(c->n, 0);
    /* straight to error: the call first, then its result */
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_1\","
             "\"messageID\":\"msg_a\",\"type\":\"tool\",\"tool\":\"write\",\"callID\":\"c1\","
             "\"state\":{\"status\":\"error\",\"input\":{\"filePath\":\"/x\"},\"error\":\"nope\"}}}}");
    assert_string_equal(types(c), "tool_call tool_result");
    assert_string_equal(str(c, 0, "name"), "write");
    assert_string_equal(raw(c, 0, "input"), "{\"filePath\":\"/x\"}");
    assert_string_equal(str(c, 1, "output"), "nope");
    assert_true(boolean(c, 1, "error"));
    /* a non-string output is carried as its JSON text */
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_2\","
             "\"messageID\":\"msg_a\",\"type\":\"tool\",\"tool\":\"x\",\"callID\":\"c2\","
             "\"state\":{\"status\":\"completed\",\"input\":{},\"output\":{\"a\":1}}}}}");
    assert_string_equal(str(c, 3, "output"), "{\"a\":1}");
    /* an unknown status is ignored */
    frame(c, "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"prt_3\","
             "\"messageID\":\"msg_a\",\"type\":\"tool\",\"tool\":\"x\",\"callID\":\"c3\","
             "\"state\":{\"status\":\"weird\"}}}}");
    assert_int_equal(c->n, 4);
    cap_free(c);
}

static void test_permissions(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    oc_map_turn_begin(&m, c->now);
    frame(c, "{\"type\":\"permission.asked\",\"properties\":{\"id\":\"per_1\"," S ",\"permission\":\"edit\","
             "\"patterns\":[\"a.txt\",\"b.txt\"],\"metadata\":{},\"always\":[\"*\"]}}");
    assert_string_equal(types(c), "permission_request");
    assert_string_equal(str(c, 0, "description"), "edit: a.txt, b.txt");
    assert_string_equal(raw(c, 0, "input"), "{}");
    assert_null(raw(c, 0, "tool_use_id"));
    assert_int_equal(oc_map_pending_count(&m), 1);
    /* asked again (same id): still one */
    frame(c, "{\"type\":\"permission.asked\",\"properties\":{\"id\":\"per_1\"," S ",\"permission\":\"edit\"}}");
    assert_int_equal(oc_map_pending_count(&m), 1);
    assert_int_equal(oc_map_permission_take(&m, "per_nope"), -ENOENT);
    assert_int_equal(oc_map_permission_take(&m, "per_1"), 0);
    assert_int_equal(oc_map_permission_take(&m, "per_1"), -ENOENT);
    assert_int_equal(c->added, 1);
    assert_int_equal(c->removed, 1);
    /* prompts left at the turn end are dropped */
    frame(c, "{\"type\":\"permission.asked\",\"properties\":{\"id\":\"per_2\"," S ",\"permission\":\"bash\"}}");
    frame(c, "{\"type\":\"permission.asked\",\"properties\":{\"id\":\"per_3\"," S ",\"permission\":\"bash\"}}");
    frame(c, "{\"type\":\"permission.replied\",\"properties\":{" S ",\"requestID\":\"per_2\",\"reply\":\"reject\"}}");
    assert_int_equal(oc_map_pending_count(&m), 1);
    frame(c, "{\"type\":\"session.status\",\"properties\":{" S ",\"status\":{\"type\":\"busy\"}}}");
    frame(c, "{\"type\":\"session.idle\",\"properties\":{" S "}}");
    assert_int_equal(oc_map_pending_count(&m), 0);
    assert_int_equal(c->added, c->removed);
    /* a full table: the prompt is still shown, just not tracked */
    oc_map_turn_begin(&m, c->now);
    char buf[256];
    for (int i = 0; i < OC_MAX_PENDING + 3; i++) {
        snprintf(buf, sizeof(buf), "{\"type\":\"permission.asked\",\"properties\":{\"id\":\"per_f%d\","
                                   S ",\"permission\":\"bash\"}}", i);
        frame(c, buf);
    }
    assert_int_equal(oc_map_pending_count(&m), OC_MAX_PENDING);
    cap_free(c); /* oc_map_free drops them */
}

static void test_question_handed_to_host(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    oc_map_turn_begin(&m, c->now);
    frame(c, "{\"type\":\"question.asked\",\"properties\":{\"id\":\"que_1\"," S ",\"questions\":[]}}");
    assert_string_equal(c->question, "que_1");
    assert_int_equal(c->n, 0);
    cap_free(c);
}

static void test_turn_fail_and_abandon(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    wkr_sink_t sink = sink_of(c);
    oc_map_turn_fail(&m, "INTERNAL_ERROR", "no turn", c->now, &sink);
    assert_int_equal(c->n, 0);
    oc_map_turn_begin(&m, c->now);
    oc_map_turn_fail(&m, "INTERNAL_ERROR", "opencode refused the prompt: HTTP 400", c->now + 7, &sink);
    assert_string_equal(types(c), "error done");
    assert_false(boolean(c, 1, "success"));
    assert_string_equal(raw(c, 1, "stats.duration_ms"), "7");
    assert_false(oc_map_settling(&m));
    oc_map_turn_abandon(&m, c->now, &sink);
    assert_string_equal(types(c), "error done done");
    assert_string_equal(raw(c, 2, "stats.interrupted"), "true");
    assert_false(oc_map_turn_active(&m));
    cap_free(c);
}

static void test_garbage(void **state)
{
    (void)state;
    oc_map_t m;
    cap_t *c = cap_new(&m);
    oc_map_turn_begin(&m, c->now);
    static const char *odd[] = {
        "{\"type\":\"message.part.updated\",\"properties\":{" S "}}",
        "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":1}}",
        "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":3}}}",
        "{\"type\":\"message.part.delta\",\"properties\":{" S ",\"partID\":\"p\",\"field\":\"x\"}}",
        "{\"type\":\"message.part.delta\"}",
        "{\"type\":\"permission.asked\",\"properties\":{" S "}}",
        "{\"type\":\"permission.replied\",\"properties\":[]}",
        "{\"type\":\"message.updated\",\"properties\":{\"info\":[]}}",
        "{\"type\":\"session.status\",\"properties\":{\"status\":\"busy\"}}",
        "{\"type\":\"step\",\"properties\":null}",
        "{\"type\":\"message.part.updated\",\"properties\":{" S ",\"part\":{\"id\":\"p\",\"type\":\"step-finish\","
        "\"tokens\":\"many\",\"cost\":\"free\"}}}",
    };
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) frame(c, odd[i]);
    assert_int_equal(c->n, 0);
    /* random bytes through the whole path never crash */
    oc_sse_t sse;
    oc_sse_init(&sse, 4096);
    unsigned seed = 12345;
    char chunk[512];
    for (int round = 0; round < 2000; round++) {
        for (size_t i = 0; i < sizeof(chunk); i++) {
            seed = seed * 1103515245 + 12345;
            static const char alpha[] = "data: {}[]\",:\n\r tpye\\u0a";
            chunk[i] = (seed >> 16) % 7 == 0 ? (char)(seed >> 8) : alpha[(seed >> 16) % (sizeof(alpha) - 1)];
        }
        snprintf(c->sid, sizeof(c->sid), "%s", "");
        oc_sse_feed(&sse, chunk, sizeof(chunk), on_sse, c);
    }
    oc_sse_free(&sse);
    cap_free(c);
}

/* ---- SSE framing ---------------------------------------------------------- */

typedef struct sse_cap {
    char ev[16][256];
    int n;
} sse_cap_t;

static void sse_on(void *ctx, const char *data, size_t len)
{
    sse_cap_t *s = ctx;
    assert_true(s->n < 16);
    assert_int_equal(strlen(data), len);
    snprintf(s->ev[s->n++], 256, "%s", data);
}

static void test_sse(void **state)
{
    (void)state;
    const char *in = ": comment\n\n"
                     "data: one\n\n"
                     "event: x\r\nid: 7\r\ndata:two\r\ndata: lines\r\n\r\n"
                     "data: cr\r\rdata\n\n"
                     "retry: 5\n\n"
                     "data:  spaced\n\n"
                     "data: tail";
    sse_cap_t s = {0};
    oc_sse_t sse;
    for (size_t chunk = 1; chunk <= strlen(in); chunk++) {
        memset(&s, 0, sizeof(s));
        oc_sse_init(&sse, 0);
        for (size_t off = 0; off < strlen(in); off += chunk)
            oc_sse_feed(&sse, in + off, strlen(in) - off < chunk ? strlen(in) - off : chunk, sse_on, &s);
        oc_sse_free(&sse);
        assert_int_equal(s.n, 5);
        assert_string_equal(s.ev[0], "one");
        assert_string_equal(s.ev[1], "two\nlines");
        assert_string_equal(s.ev[2], "cr");
        assert_string_equal(s.ev[3], "");
        assert_string_equal(s.ev[4], " spaced");
    }
    /* too long: dropped, counted, and the stream goes on */
    memset(&s, 0, sizeof(s));
    oc_sse_init(&sse, 16);
    const char *big = "data: 0123456789abcdefghij\n\ndata: ok\n\ndata: 0123456789\ndata: 0123456789\n\n"
                      "data: fine\n\n";
    assert_int_equal(oc_sse_feed(&sse, big, strlen(big), sse_on, &s), 2);
    assert_int_equal(sse.dropped, 2);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.ev[0], "ok");
    assert_string_equal(s.ev[1], "fine");
    oc_sse_free(&sse);
}

/* ---- request bodies ------------------------------------------------------- */

static void test_bodies(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b);
    assert_int_equal(oc_map_prompt_body(&b, "hi \\\"there\\\"\\n", 14, NULL, NULL), 0);
    assert_string_equal(b.p, "{\"parts\":[{\"type\":\"text\",\"text\":\"hi \\\"there\\\"\\n\"}]}");
    buf_reset(&b);
    assert_int_equal(oc_map_prompt_body(&b, "x", 1, "openai/gpt-5", "be brief"), 0);
    assert_string_equal(b.p, "{\"parts\":[{\"type\":\"text\",\"text\":\"x\"}],\"model\":{\"providerID\":"
                             "\"openai\",\"modelID\":\"gpt-5\"},\"system\":\"be brief\"}");
    buf_reset(&b);
    assert_int_equal(oc_map_prompt_body(&b, "x", 1, "claude-sonnet-4-5", NULL), 0);
    assert_non_null(strstr(b.p, "{\"providerID\":\"anthropic\",\"modelID\":\"claude-sonnet-4-5\"}"));
    buf_reset(&b);
    assert_int_equal(oc_map_reply_body(&b, true, "ignored"), 0);
    assert_string_equal(b.p, "{\"reply\":\"once\"}");
    buf_reset(&b);
    assert_int_equal(oc_map_reply_body(&b, false, "no \"way\""), 0);
    assert_string_equal(b.p, "{\"reply\":\"reject\",\"message\":\"no \\\"way\\\"\"}");
    buf_reset(&b);
    assert_int_equal(oc_map_reply_body(&b, false, NULL), 0);
    assert_string_equal(b.p, "{\"reply\":\"reject\"}");
    buf_reset(&b);
    assert_int_equal(oc_map_session_body(&b, "hotplex s1", NULL), 0);
    assert_string_equal(b.p, "{\"title\":\"hotplex s1\",\"permission\":["
                             "{\"permission\":\"bash\",\"pattern\":\"*\",\"action\":\"ask\"},"
                             "{\"permission\":\"edit\",\"pattern\":\"*\",\"action\":\"ask\"},"
                             "{\"permission\":\"webfetch\",\"pattern\":\"*\",\"action\":\"ask\"}]}");
    buf_reset(&b);
    assert_int_equal(oc_map_session_body(&b, "t", "acceptEdits"), 0);
    assert_non_null(strstr(b.p, "{\"permission\":\"edit\",\"pattern\":\"*\",\"action\":\"allow\"}"));
    buf_reset(&b);
    assert_int_equal(oc_map_session_body(&b, "t", "bypassPermissions"), 0);
    assert_string_equal(b.p, "{\"title\":\"t\",\"permission\":[{\"permission\":\"*\",\"pattern\":\"*\","
                             "\"action\":\"allow\"}]}");
    buf_reset(&b);
    assert_int_equal(oc_map_session_body(&b, "t", "plan"), 0);
    assert_non_null(strstr(b.p, "{\"permission\":\"bash\",\"pattern\":\"*\",\"action\":\"deny\"}"));
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_longtext),
        cmocka_unit_test(test_think),
        cmocka_unit_test(test_bash_allow),
        cmocka_unit_test(test_bash_reject),
        cmocka_unit_test(test_abort),
        cmocka_unit_test(test_abort_then_prompt),
        cmocka_unit_test(test_fail),
        cmocka_unit_test(test_bad_model),
        cmocka_unit_test(test_queued),
        cmocka_unit_test(test_frame_parse),
        cmocka_unit_test(test_events_outside_a_turn_ignored),
        cmocka_unit_test(test_stale_idle_before_busy),
        cmocka_unit_test(test_error_before_busy_ends_turn),
        cmocka_unit_test(test_flush_on_turn_end),
        cmocka_unit_test(test_user_parts_not_echoed),
        cmocka_unit_test(test_tool_paths),
        cmocka_unit_test(test_permissions),
        cmocka_unit_test(test_question_handed_to_host),
        cmocka_unit_test(test_turn_fail_and_abandon),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_sse),
        cmocka_unit_test(test_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
