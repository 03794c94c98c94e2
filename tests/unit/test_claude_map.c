/*
 * test_claude_map.c - Claude Code stream-json -> AEP mapping, driven by
 * transcripts recorded from the real CLI (tests/fixtures/claude/NAME.jsonl),
 * plus hand-made lines for the paths the recordings do not reach
 * (subagents, unsupported control requests, cancelled prompts, full prompt
 * table, big lines, non-streamed multi-block messages).
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
#include "worker/claude_map.h"

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
    char info_key[256][32];
    char info_val[256][256];
    int ninfo;
    buf_t replies;
    int nreplies;
    int added, removed;
    claude_map_t *m;
    bool answer_in_event; /* answer permission prompts from inside sink->event */
} cap_t;

static cap_t *g;

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
    /* every event is one JSON object */
    static json_tok_t toks[65536];
    json_doc_t d;
    assert_int_equal(json_parse(&d, data, len, toks, 65536), 0);
    assert_int_equal(json_type(&d, 0), JSON_OBJ);
    if (c->answer_in_event && strcmp(type, "permission_request") == 0) {
        char id[128];
        assert_true(json_str_copy(&d, json_obj_get(&d, 0, "id"), id, sizeof(id)) > 0);
        buf_t out;
        buf_init(&out);
        assert_int_equal(claude_map_permission(c->m, &out, id, true, NULL, NULL, 0), 0);
        buf_append(&c->replies, out.p, out.len);
        c->nreplies++;
        buf_free(&out);
    }
}

static void sink_info(void *ctx, const char *key, const char *value)
{
    cap_t *c = ctx;
    assert_true(c->ninfo < 256);
    snprintf(c->info_key[c->ninfo], 32, "%s", key);
    snprintf(c->info_val[c->ninfo], 256, "%s", value);
    c->ninfo++;
}

static void sink_exit(void *ctx, int status, int signo, const char *why)
{
    (void)ctx;
    (void)status;
    (void)signo;
    (void)why;
    fail_msg("the map never reports an exit");
}

static void host_reply(void *ctx, const char *line, size_t len)
{
    cap_t *c = ctx;
    assert_true(len > 0 && line[len - 1] == '\n');
    assert_null(memchr(line, '\n', len - 1));
    buf_append(&c->replies, line, len);
    c->nreplies++;
}

static void host_added(void *ctx, claude_pending_t *pe)
{
    cap_t *c = ctx;
    assert_non_null(pe->id);
    assert_null(pe->user);
    pe->user = c; /* anything non-NULL: must be handed back on removal */
    c->added++;
}

static void host_removed(void *ctx, claude_pending_t *pe)
{
    cap_t *c = ctx;
    assert_ptr_equal(pe->user, c);
    c->removed++;
}

static wkr_sink_t g_sink;
static claude_map_t *g_map;

static int setup(void **state)
{
    (void)state;
    g = calloc(1, sizeof(*g));
    buf_init(&g->replies);
    g_map = malloc(sizeof(*g_map));
    claude_host_t host = {.ctx = g,
                          .reply = host_reply,
                          .pending_added = host_added,
                          .pending_removed = host_removed};
    claude_map_init(g_map, &host);
    g->m = g_map;
    g_sink = (wkr_sink_t){.ctx = g, .event = sink_event, .info = sink_info, .exit = sink_exit};
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    claude_map_free(g_map);
    assert_int_equal(g->added, g->removed); /* every prompt handed back */
    free(g_map);
    for (int i = 0; i < g->n; i++)
        free(g->ev[i].data);
    buf_free(&g->replies);
    free(g);
    return 0;
}

/* ---- event field access ----------------------------------------------------- */

typedef struct evdoc {
    json_doc_t d;
    json_tok_t tok[65536];
} evdoc_t;

static evdoc_t g_doc;

/* token of a dotted path ("stats.usage.input_tokens", "message.content.0.id") */
static int walk(const json_doc_t *d, const char *path)
{
    int t = 0;
    char key[64];
    while (*path && t >= 0) {
        size_t n = strcspn(path, ".");
        snprintf(key, sizeof(key), "%.*s", (int)n, path);
        if (json_type(d, t) == JSON_ARR)
            t = json_arr_get(d, t, atoi(key));
        else
            t = json_obj_get(d, t, key);
        path += n + (path[n] == '.');
    }
    return t;
}

static int field(int i, const char *path)
{
    assert_int_equal(json_parse(&g_doc.d, g->ev[i].data, g->ev[i].len, g_doc.tok, 65536), 0);
    return walk(&g_doc.d, path);
}

/* A string from the first line of a fixture containing `marker` (static
 * copy): the recordings are re-made from time to time, ids change. */
static const char *fx(const char *name, const char *marker, const char *path)
{
    static char out[4][512];
    static int slot;
    char file[512], *line = NULL, *res = NULL;
    size_t cap = 0;
    snprintf(file, sizeof(file), "%s/claude/%s", FIXTURES_DIR, name);
    FILE *f = fopen(file, "rb");
    assert_non_null(f);
    while (!res && getline(&line, &cap, f) >= 0) {
        if (!strstr(line, marker)) continue;
        json_doc_t d;
        assert_int_equal(json_parse(&d, line, strcspn(line, "\n"), g_doc.tok, 8192), 0);
        int t = walk(&d, path);
        assert_true(t >= 0);
        assert_true(json_str_dup(&d, t, &res) >= 0);
    }
    free(line);
    fclose(f);
    if (!res) fail_msg("%s: no line with %s", name, marker);
    slot = (slot + 1) % 4;
    snprintf(out[slot], sizeof(out[slot]), "%s", res);
    free(res);
    return out[slot];
}

static char *fstr(int i, const char *path) /* malloc'd, NULL if absent */
{
    char *s = NULL;
    int t = field(i, path);
    if (t < 0 || json_type(&g_doc.d, t) != JSON_STR) return NULL;
    assert_true(json_str_dup(&g_doc.d, t, &s) >= 0);
    return s;
}

static char *fraw(int i, const char *path)
{
    size_t n;
    int t = field(i, path);
    if (t < 0) return NULL;
    const char *r = json_raw(&g_doc.d, t, &n);
    return strndup(r, n);
}

static int64_t fint(int i, const char *path)
{
    int64_t v = -1;
    int t = field(i, path);
    assert_true(t >= 0);
    assert_int_equal(json_get_i64(&g_doc.d, t, &v), 0);
    return v;
}

static int fbool(int i, const char *path)
{
    bool v;
    int t = field(i, path);
    if (t < 0) return -1;
    assert_int_equal(json_get_bool(&g_doc.d, t, &v), 0);
    return v;
}

static void assert_fstr(int i, const char *path, const char *want)
{
    char *s = fstr(i, path);
    if (!s || strcmp(s, want) != 0)
        fail_msg("event %d (%s) %s = \"%s\", want \"%s\"", i, g->ev[i].type, path,
                 s ? s : "(absent)", want);
    free(s);
}

static void assert_fraw(int i, const char *path, const char *want)
{
    char *s = fraw(i, path);
    if (!s || strcmp(s, want) != 0)
        fail_msg("event %d (%s) %s = %s, want %s", i, g->ev[i].type, path, s ? s : "(absent)",
                 want);
    free(s);
}

/* "message.start message.delta*4 message.end" */
static void assert_types(const char *want)
{
    buf_t b;
    buf_init(&b);
    for (int i = 0; i < g->n;) {
        int j = i;
        while (j < g->n && strcmp(g->ev[j].type, g->ev[i].type) == 0)
            j++;
        if (b.len) buf_puts(&b, " ");
        buf_puts(&b, g->ev[i].type);
        if (j - i > 1) buf_printf(&b, "*%d", j - i);
        i = j;
    }
    if (strcmp(b.p ? b.p : "", want) != 0)
        fail_msg("events:\n  got  %s\n  want %s", b.p ? b.p : "", want);
    buf_free(&b);
}

static int find(const char *type, int nth)
{
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->ev[i].type, type) == 0 && nth-- == 0) return i;
    return -1;
}

static const char *info(const char *key)
{
    for (int i = g->ninfo - 1; i >= 0; i--)
        if (strcmp(g->info_key[i], key) == 0) return g->info_val[i];
    return NULL;
}

/* Invariants every transcript must satisfy: each message.start is followed
 * by its deltas, one message.end and one message whose content is the
 * concatenation of the deltas; ids are unique. Returns the number of
 * streamed messages. */
static int check_messages(void)
{
    int msgs = 0;
    for (int i = 0; i < g->n; i++) {
        if (strcmp(g->ev[i].type, "message.start") != 0) continue;
        msgs++;
        char *id = fstr(i, "id");
        assert_non_null(id);
        assert_fstr(i, "role", "assistant");
        assert_fstr(i, "content_type", "text");
        for (int k = 0; k < i; k++)
            if (strcmp(g->ev[k].type, "message.start") == 0) {
                char *other = fstr(k, "id");
                assert_string_not_equal(other, id);
                free(other);
            }
        buf_t text;
        buf_init(&text);
        buf_puts(&text, "");
        int ends = 0, deltas = 0, j;
        for (j = i + 1; j < g->n; j++) {
            char *mid = fstr(j, "message_id");
            bool mine = mid && strcmp(mid, id) == 0;
            free(mid);
            if (strcmp(g->ev[j].type, "message.delta") == 0 && mine) {
                assert_int_equal(ends, 0);
                char *c = fstr(j, "content");
                buf_puts(&text, c);
                free(c);
                deltas++;
            } else if (strcmp(g->ev[j].type, "message.end") == 0 && mine) {
                ends++;
                assert_true(j + 1 < g->n);
                assert_string_equal(g->ev[j + 1].type, "message");
                assert_fstr(j + 1, "id", id);
                assert_fstr(j + 1, "role", "assistant");
                assert_fstr(j + 1, "content_type", "text");
                if (deltas > 0) assert_fstr(j + 1, "content", text.p);
                break;
            }
        }
        assert_int_equal(ends, 1);
        buf_free(&text);
        free(id);
    }
    return msgs;
}

/* ---- feeding -------------------------------------------------------------------- */

typedef void (*before_line_fn)(const char *line, size_t len);

static int feed_file(const char *name, before_line_fn before)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/claude/%s", FIXTURES_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("fixture %s missing", path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lines = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
        if (before) before(line, (size_t)n);
        claude_map_line(g_map, line, (size_t)n, &g_sink);
        lines++;
    }
    free(line);
    fclose(f);
    return lines;
}

static int feed(const char *line)
{
    return claude_map_line(g_map, line, strlen(line), &g_sink);
}

static const char *reply_line(int nth) /* static copy of the nth reply */
{
    static char out[8192];
    const char *p = g->replies.p;
    for (int i = 0; p && i < nth; i++)
        p = strchr(p, '\n') + 1;
    assert_non_null(p);
    size_t n = strcspn(p, "\n");
    assert_true(n < sizeof(out));
    memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

/* ---- recorded transcripts ---------------------------------------------------------- */

static void test_text(void **state)
{
    (void)state;
    feed_file("text.jsonl", NULL);
    assert_types("message.start message.delta*4 message.end message done");
    assert_int_equal(check_messages(), 1);
    char want[600];
    snprintf(want, sizeof(want), "%s:0", fx("text.jsonl", "\"message_start\"", "event.message.id"));
    assert_fstr(0, "id", want);
    assert_fstr(1, "content", "Echo: ");
    assert_fstr(6, "content", "Echo: hello there friend");
    int d = find("done", 0);
    assert_int_equal(fbool(d, "success"), 1);
    assert_true(fint(d, "stats.duration_ms") > 0);
    assert_true(fint(d, "stats.duration_api_ms") >= 0);
    assert_int_equal(fint(d, "stats.num_turns"), 1);
    char *cost = fraw(d, "stats.total_cost_usd");
    assert_true(cost && strtod(cost, NULL) > 0);
    free(cost);
    assert_int_equal(fint(d, "stats.usage.input_tokens"), 1657);
    assert_fstr(d, "stats.subtype", "success");
    assert_int_equal(fbool(d, "stats.interrupted"), 0);
    assert_non_null(info("agent_model"));
    assert_string_equal(info("agent_session_id"), fx("text.jsonl", "\"init\"", "session_id"));
    assert_string_equal(info("agent_model"), fx("text.jsonl", "\"init\"", "model"));
    assert_non_null(info("agent_version"));
    assert_int_equal(g->nreplies, 0);
    assert_int_equal(g_map->ignored, 0);
}

static void test_longtext(void **state)
{
    (void)state;
    feed_file("longtext.jsonl", NULL);
    assert_types("message.start message.delta*50 message.end message done");
    assert_int_equal(check_messages(), 1);
    char *full = fstr(find("message", 0), "content");
    assert_non_null(full);
    assert_int_equal(strncmp(full, "word1 word2 word3 ", 18), 0);
    assert_non_null(strstr(full, "word50"));
    free(full);
}

static void test_think(void **state)
{
    (void)state;
    feed_file("think.jsonl", NULL);
    assert_types("reasoning message.start message.delta*4 message.end message done");
    assert_int_equal(check_messages(), 1);
    const char *mid = fx("think.jsonl", "\"message_start\"", "event.message.id");
    char want[600];
    snprintf(want, sizeof(want), "%s:0", mid);
    assert_fstr(0, "id", want);
    assert_fstr(0, "content", "Let me think about this. The user wants an answer.");
    snprintf(want, sizeof(want), "%s:1", mid);
    assert_fstr(1, "id", want);
    assert_fstr(find("message", 0), "content", "Echo: THINK about it");
}

static void test_tool_allow(void **state)
{
    (void)state;
    feed_file("tool_allow.jsonl", NULL);
    /* the recording's own answer came from its stdin; here nobody answers,
     * so the prompt is still pending until the result clears it */
    assert_types("tool_call permission_request tool_result message.start message.delta*3 "
                 "message.end message done");
    assert_int_equal(check_messages(), 1);
    int tc = find("tool_call", 0), pr = find("permission_request", 0);
    int tr = find("tool_result", 0);
    const char *tuid = fx("tool_allow.jsonl", "{\"type\":\"assistant\"", "message.content.0.id");
    assert_int_equal(strncmp(tuid, "toolu_", 6), 0);
    assert_fstr(tc, "id", tuid);
    assert_fstr(tc, "name", "Bash");
    assert_fraw(tc, "input", "{\"command\":\"echo hi | tee hi.txt\",\"description\":\"run it\"}");
    assert_fstr(pr, "id", fx("tool_allow.jsonl", "\"can_use_tool\"", "request_id"));
    assert_fstr(pr, "tool_name", "Bash");
    assert_fstr(pr, "description", "run it");
    assert_fstr(pr, "tool_use_id", tuid);
    assert_fraw(pr, "input", "{\"command\":\"echo hi | tee hi.txt\",\"description\":\"run it\"}");
    assert_fstr(tr, "id", tuid);
    assert_fstr(tr, "output", "hi");
    assert_int_equal(claude_map_pending_count(g_map), 0); /* cleared by the result */
    assert_int_equal(g->removed, 1);
}

static void test_tool_allow_answered(void **state)
{
    (void)state;
    int lines = 0;
    char path[512];
    snprintf(path, sizeof(path), "%s/claude/tool_allow.jsonl", FIXTURES_DIR);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
        claude_map_line(g_map, line, (size_t)n, &g_sink);
        lines++;
        if (strstr(line, "\"control_request\"")) {
            assert_int_equal(claude_map_pending_count(g_map), 1);
            assert_int_equal(g->added, 1);
            buf_t out;
            buf_init(&out);
            /* unknown id */
            assert_int_equal(claude_map_permission(g_map, &out, "nope", true, NULL, NULL, 0),
                             -ENOENT);
            assert_int_equal(out.len, 0);
            /* allow without an edited input: the original input goes back */
            char rid[256], want[1024];
            snprintf(rid, sizeof(rid), "%s",
                     fx("tool_allow.jsonl", "\"can_use_tool\"", "request_id"));
            assert_int_equal(claude_map_permission(g_map, &out, rid, true, NULL, NULL, 0), 0);
            snprintf(want, sizeof(want),
                     "{\"type\":\"control_response\",\"response\":{\"subtype\":\"success\","
                     "\"request_id\":\"%s\",\"response\":{\"behavior\":\"allow\","
                     "\"updatedInput\":{\"command\":\"echo hi | tee hi.txt\","
                     "\"description\":\"run it\"}}}}\n",
                     rid);
            assert_string_equal(out.p, want);
            assert_int_equal(claude_map_pending_count(g_map), 0);
            assert_int_equal(g->removed, 1);
            /* answered once only */
            assert_int_equal(claude_map_permission(g_map, &out, rid, true, NULL, NULL, 0), -ENOENT);
            buf_free(&out);
        }
    }
    free(line);
    fclose(f);
    assert_true(lines > 10);
    int pr = find("permission_request", 0);
    /* args: [the input as a JSON string] */
    char *arg = fstr(pr, "args");
    assert_null(arg); /* args is an array, not a string */
    int t = field(pr, "args");
    assert_int_equal(json_type(&g_doc.d, t), JSON_ARR);
    int a0 = json_arr_get(&g_doc.d, t, 0);
    char *s = NULL;
    assert_true(json_str_dup(&g_doc.d, a0, &s) > 0);
    assert_string_equal(s, "{\"command\":\"echo hi | tee hi.txt\",\"description\":\"run it\"}");
    free(s);
    int tc = find("tool_call", 0), tr = find("tool_result", 0);
    char *id1 = fstr(tc, "id"), *id2 = fstr(pr, "tool_use_id"), *id3 = fstr(tr, "id");
    assert_string_equal(id1, id2);
    assert_string_equal(id1, id3);
    free(id1);
    free(id2);
    free(id3);
    assert_fstr(tr, "output", "hi");
    assert_int_equal(fbool(tr, "error"), 0);
    assert_fstr(find("message", 0), "content", "Tool said: hi");
    assert_int_equal(fint(find("done", 0), "stats.num_turns"), 2);
}

static void test_tool_deny(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof(path), "%s/claude/tool_deny.jsonl", FIXTURES_DIR);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
        claude_map_line(g_map, line, (size_t)n, &g_sink);
        if (strstr(line, "\"control_request\"")) {
            char id[128];
            int pr = find("permission_request", 0);
            char *s = fstr(pr, "id");
            snprintf(id, sizeof(id), "%s", s);
            free(s);
            buf_t out;
            buf_init(&out);
            assert_int_equal(claude_map_permission(g_map, &out, id, false, "no", NULL, 0), 0);
            char want[512];
            snprintf(want, sizeof(want),
                     "{\"type\":\"control_response\",\"response\":{\"subtype\":\"success\","
                     "\"request_id\":\"%s\",\"response\":{\"behavior\":\"deny\","
                     "\"message\":\"no\"}}}\n",
                     id);
            assert_string_equal(out.p, want);
            buf_free(&out);
        }
    }
    free(line);
    fclose(f);
    assert_types("tool_call permission_request tool_result message.start message.delta*3 "
                 "message.end message done");
    int tr = find("tool_result", 0);
    assert_fstr(tr, "output", "no");
    assert_int_equal(fbool(tr, "error"), 1);
    assert_int_equal(fbool(find("done", 0), "success"), 1);
}

static void test_deny_default_reason(void **state)
{
    (void)state;
    feed("{\"type\":\"control_request\",\"request_id\":\"r1\",\"request\":{\"subtype\":"
         "\"can_use_tool\",\"tool_name\":\"Bash\",\"input\":{\"command\":\"rm -rf /tmp/x\"}}}");
    assert_types("permission_request");
    assert_fstr(0, "description", "Bash: rm -rf /tmp/x"); /* built: the CLI sent none */
    buf_t out;
    buf_init(&out);
    assert_int_equal(claude_map_permission(g_map, &out, "r1", false, NULL, NULL, 0), 0);
    assert_non_null(strstr(out.p, "\"behavior\":\"deny\",\"message\":\"denied by user\""));
    buf_free(&out);
}

static void test_tool_autoallow(void **state)
{
    (void)state;
    feed_file("tool_autoallow.jsonl", NULL);
    assert_types("tool_call tool_result message.start message.delta*3 message.end message done");
    assert_int_equal(check_messages(), 1);
    assert_int_equal(g->added, 0);
}

static void interrupt_before(const char *line, size_t len)
{
    (void)len;
    if (strstr(line, "{\"type\":\"control_response\"") == line) {
        buf_t out;
        buf_init(&out);
        assert_int_equal(claude_map_interrupt(g_map, &out), 0);
        assert_string_equal(out.p, "{\"type\":\"control_request\",\"request_id\":\"int_1\","
                                   "\"request\":{\"subtype\":\"interrupt\"}}\n");
        buf_free(&out);
    }
}

static void test_interrupt(void **state)
{
    (void)state;
    feed_file("interrupt.jsonl", interrupt_before);
    /* turn 1: the open block is closed at the result; no error (we asked);
     * the partial assistant line and "[Request interrupted by user]" add nothing */
    assert_types("message.start message.delta*5 message.end message done message.start "
                 "message.delta*8 message.end message done");
    assert_int_equal(check_messages(), 2);
    int d1 = find("done", 0), d2 = find("done", 1);
    assert_int_equal(fbool(d1, "success"), 0);
    assert_int_equal(fbool(d1, "stats.interrupted"), 1);
    assert_fstr(d1, "stats.subtype", "error_during_execution");
    assert_int_equal(fbool(d2, "success"), 1);
    assert_int_equal(fbool(d2, "stats.interrupted"), 0); /* reset at the result */
    assert_fstr(find("message", 0), "content", "word1 word2 word3 word4 word5 ");
}

static void test_interrupt_not_ours(void **state)
{
    (void)state;
    feed_file("interrupt.jsonl", NULL); /* same transcript, but nobody asked */
    assert_types("message.start message.delta*5 message.end message error done message.start "
                 "message.delta*8 message.end message done");
    int e = find("error", 0);
    assert_fstr(e, "code", "INTERNAL_ERROR");
    char *msg = fstr(e, "message");
    assert_non_null(msg);
    assert_int_equal(strncmp(msg, "error_during_execution", 22), 0);
    free(msg);
}

static void test_two_turns(void **state)
{
    (void)state;
    feed_file("two_turns.jsonl", NULL);
    assert_types("message.start message.delta*3 message.end message done message.start "
                 "message.delta*3 message.end message done");
    assert_int_equal(check_messages(), 2);
}

static void test_queued_turns(void **state)
{
    (void)state;
    feed_file("queued_turns.jsonl", NULL);
    assert_types("message.start message.delta*3 message.end message done message.start "
                 "message.delta*3 message.end message done");
    assert_int_equal(check_messages(), 2);
}

static void test_resume(void **state)
{
    (void)state;
    feed_file("resume_1_remember.jsonl", NULL);
    feed_file("resume_2_recall.jsonl", NULL);
    assert_int_equal(check_messages(), 2);
    assert_int_equal(find("done", 2), -1);
    char *c = fstr(find("message", 1), "content");
    assert_non_null(c);
    assert_int_equal(strncmp(c, "Recalled: ", 10), 0);
    assert_string_not_equal(c, "Recalled: nothing");
    free(c);
    /* the in-use refusal prints nothing on stdout (its stderr is the adapter's business) */
    assert_int_equal(feed_file("resume_3_session_in_use.jsonl", NULL), 0);
}

static void test_fail500(void **state)
{
    (void)state;
    feed_file("fail500.jsonl", NULL);
    /* the synthetic API-error message was never streamed: start/end/message, no deltas */
    assert_types("message.start message.end message error done");
    assert_int_equal(check_messages(), 1);
    char want[600];
    snprintf(want, sizeof(want), "%s:0", fx("fail500.jsonl", "\"assistant\"", "message.id"));
    assert_fstr(0, "id", want);
    char *text = fstr(2, "content");
    assert_non_null(text);
    assert_int_equal(strncmp(text, "API Error: 500", 14), 0);
    assert_fstr(3, "code", "INTERNAL_ERROR");
    assert_fstr(3, "message", text);
    free(text);
    assert_int_equal(fbool(4, "success"), 0);
    assert_int_equal(fbool(4, "stats.interrupted"), 0);
}

static void test_fail500_retry(void **state)
{
    (void)state;
    feed_file("fail500_retry.jsonl", NULL);
    assert_types("message.start message.end message error done");
}

static void test_garbage(void **state)
{
    (void)state;
    int lines = feed_file("garbage.jsonl", NULL);
    assert_int_equal(lines, 8);
    assert_types("done"); /* nothing from the garbage, the final result still maps */
    assert_int_equal(fbool(0, "success"), 1);
    /* not JSON, empty, an array, unknown type, cut off, invalid UTF-8 */
    assert_int_equal(g_map->ignored, 6);
    assert_int_equal(g_map->lines, 8);
    assert_int_equal(g->nreplies, 0);
}

static void test_every_fixture_is_consistent(void **state)
{
    (void)state;
    static const char *all[] = {"text.jsonl",
                                "longtext.jsonl",
                                "think.jsonl",
                                "tool_allow.jsonl",
                                "tool_deny.jsonl",
                                "tool_autoallow.jsonl",
                                "interrupt.jsonl",
                                "two_turns.jsonl",
                                "queued_turns.jsonl",
                                "resume_1_remember.jsonl",
                                "resume_2_recall.jsonl",
                                "fail500.jsonl",
                                "fail500_retry.jsonl",
                                "garbage.jsonl"};
    int results = 0;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        char path[512], *line = NULL;
        size_t cap = 0;
        snprintf(path, sizeof(path), "%s/claude/%s", FIXTURES_DIR, all[i]);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        while (getline(&line, &cap, f) >= 0)
            results += strncmp(line, "{\"type\":\"result\"", 16) == 0;
        free(line);
        fclose(f);
        feed_file(all[i], NULL);
    }
    check_messages();
    int dones = 0;
    for (int i = 0; i < g->n; i++)
        dones += strcmp(g->ev[i].type, "done") == 0;
    assert_int_equal(dones, results); /* exactly one done per result */
}

/* ---- hand-made lines ------------------------------------------------------------ */

static void test_overlong(void **state)
{
    (void)state;
    claude_map_overlong(g_map, 100, &g_sink);
    assert_types("error");
    assert_fstr(0, "code", "INTERNAL_ERROR");
    assert_fstr(0, "message", "agent output line exceeded 100 bytes");
}

static void test_unsupported_control_request(void **state)
{
    (void)state;
    assert_int_equal(feed("{\"type\":\"control_request\",\"request_id\":\"x\\\"1\","
                          "\"request\":{\"subtype\":\"hook_callback\",\"callback_id\":\"c\"}}"),
                     0);
    assert_int_equal(g->n, 0);
    assert_int_equal(g->nreplies, 1);
    assert_string_equal(reply_line(0),
                        "{\"type\":\"control_response\",\"response\":{\"subtype\":\"error\","
                        "\"request_id\":\"x\\\"1\",\"error\":\"unsupported\"}}");
    /* without a request_id there is nobody to answer */
    feed("{\"type\":\"control_request\",\"request\":{\"subtype\":\"can_use_tool\"}}");
    assert_int_equal(g->nreplies, 1);
    assert_int_equal(g->n, 0);
}

static void test_cancel_request(void **state)
{
    (void)state;
    feed("{\"type\":\"control_request\",\"request_id\":\"p1\",\"request\":{\"subtype\":"
         "\"can_use_tool\",\"tool_name\":\"Write\",\"input\":{\"file_path\":\"/a\"}}}");
    assert_int_equal(claude_map_pending_count(g_map), 1);
    feed("{\"type\":\"control_cancel_request\",\"request_id\":\"p1\"}");
    assert_int_equal(claude_map_pending_count(g_map), 0);
    assert_int_equal(g->removed, 1);
    buf_t out;
    buf_init(&out);
    assert_int_equal(claude_map_permission(g_map, &out, "p1", true, NULL, NULL, 0), -ENOENT);
    buf_free(&out);
}

static void test_result_clears_pending(void **state)
{
    (void)state;
    feed("{\"type\":\"control_request\",\"request_id\":\"p1\",\"request\":{\"subtype\":"
         "\"can_use_tool\",\"tool_name\":\"Bash\",\"input\":{\"command\":\"ls\"}}}");
    feed("{\"type\":\"result\",\"subtype\":\"error_during_execution\",\"is_error\":true}");
    assert_int_equal(claude_map_pending_count(g_map), 0);
    assert_int_equal(g->removed, 1);
    assert_types("permission_request error done");
    assert_fstr(1, "message", "error_during_execution");
    assert_int_equal(fbool(2, "success"), 0);
}

static void test_updated_input(void **state)
{
    (void)state;
    feed("{\"type\":\"control_request\",\"request_id\":\"p1\",\"request\":{\"subtype\":"
         "\"can_use_tool\",\"tool_name\":\"Bash\",\"input\":{\"command\":\"rm -rf /\"}}}");
    buf_t out;
    buf_init(&out);
    const char *bad[] = {"[1]", "nope", "{\"a\":", "\"str\""};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(
            claude_map_permission(g_map, &out, "p1", true, NULL, bad[i], strlen(bad[i])), -EINVAL);
    assert_int_equal(out.len, 0);
    assert_int_equal(claude_map_pending_count(g_map), 1); /* still waiting */
    const char *upd = " {\"command\":\"ls\"} ";
    assert_int_equal(claude_map_permission(g_map, &out, "p1", true, "ignored", upd, strlen(upd)),
                     0);
    assert_string_equal(out.p, "{\"type\":\"control_response\",\"response\":{\"subtype\":"
                               "\"success\",\"request_id\":\"p1\",\"response\":{\"behavior\":"
                               "\"allow\",\"updatedInput\": {\"command\":\"ls\"} }}}\n");
    buf_free(&out);
}

static void test_pending_table_full(void **state)
{
    (void)state;
    char line[256];
    for (int i = 0; i <= CLAUDE_MAX_PENDING; i++) {
        snprintf(line, sizeof(line),
                 "{\"type\":\"control_request\",\"request_id\":\"r%d\",\"request\":{\"subtype\":"
                 "\"can_use_tool\",\"tool_name\":\"Bash\",\"input\":{}}}",
                 i);
        feed(line);
    }
    assert_int_equal(claude_map_pending_count(g_map), CLAUDE_MAX_PENDING);
    assert_int_equal(g->n, CLAUDE_MAX_PENDING); /* no prompt event for the refused one */
    assert_int_equal(g->nreplies, 1);
    char want[256];
    snprintf(want, sizeof(want),
             "{\"type\":\"control_response\",\"response\":{\"subtype\":\"success\","
             "\"request_id\":\"r%d\",\"response\":{\"behavior\":\"deny\",\"message\":\"too many "
             "pending permission requests\"}}}",
             CLAUDE_MAX_PENDING);
    assert_string_equal(reply_line(0), want);
    /* the same id asked again replaces its entry instead of taking a slot */
    feed("{\"type\":\"control_request\",\"request_id\":\"r0\",\"request\":{\"subtype\":"
         "\"can_use_tool\",\"tool_name\":\"Bash\",\"input\":{\"v\":2}}}");
    assert_int_equal(claude_map_pending_count(g_map), CLAUDE_MAX_PENDING);
    buf_t out;
    buf_init(&out);
    assert_int_equal(claude_map_permission(g_map, &out, "r0", true, NULL, NULL, 0), 0);
    assert_non_null(strstr(out.p, "\"updatedInput\":{\"v\":2}"));
    buf_free(&out);
}

static void test_answer_inside_event(void **state)
{
    (void)state;
    g->answer_in_event = true; /* a core that auto-approves synchronously */
    feed("{\"type\":\"control_request\",\"request_id\":\"s1\",\"request\":{\"subtype\":"
         "\"can_use_tool\",\"tool_name\":\"Read\",\"input\":{\"file_path\":\"/etc/hosts\"}}}");
    assert_types("permission_request");
    assert_int_equal(claude_map_pending_count(g_map), 0);
    assert_int_equal(g->added, 1);
    assert_int_equal(g->removed, 1);
    assert_non_null(strstr(reply_line(0), "\"updatedInput\":{\"file_path\":\"/etc/hosts\"}"));
}

static void test_not_streamed_blocks(void **state)
{
    (void)state;
    /* without --include-partial-messages: whole blocks, maybe split over lines */
    feed("{\"type\":\"assistant\",\"message\":{\"id\":\"m1\",\"content\":["
         "{\"type\":\"thinking\",\"thinking\":\"hmm\"},"
         "{\"type\":\"text\",\"text\":\"a \\\"quoted\\\" \\u00e9 line\\n\"},"
         "{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"Bash\",\"input\":{\"command\":\"ls\"}}]}"
         "}");
    feed("{\"type\":\"assistant\",\"message\":{\"id\":\"m1\",\"content\":["
         "{\"type\":\"text\",\"text\":\"more\"}]}}");
    assert_types("reasoning message.start message.end message tool_call message.start "
                 "message.end message");
    assert_int_equal(check_messages(), 2);
    assert_fstr(0, "id", "m1:0");
    assert_fstr(0, "content", "hmm");
    assert_fstr(1, "id", "m1:1");
    assert_fstr(3, "content", "a \"quoted\" \xc3\xa9 line\n");
    /* the escaped slice is passed through as it was */
    assert_non_null(strstr(g->ev[3].data, "\"a \\\"quoted\\\" \\u00e9 line\\n\""));
    assert_fstr(4, "id", "t1");
    assert_fraw(4, "input", "{\"command\":\"ls\"}");
    assert_fstr(5, "id", "m1:3"); /* numbering goes on across lines of one message */
}

static void test_streamed_then_assistant_no_duplicates(void **state)
{
    (void)state;
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"message_start\",\"message\":{\"id\":"
         "\"m9\"}},\"parent_tool_use_id\":null}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_start\",\"index\":0,"
         "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":0,"
         "\"delta\":{\"type\":\"text_delta\",\"text\":\"tab\\there\"}}}");
    /* the assistant line may come before the block stops */
    feed("{\"type\":\"assistant\",\"message\":{\"id\":\"m9\",\"content\":[{\"type\":\"text\","
         "\"text\":\"tab\\there\"},{\"type\":\"tool_use\",\"id\":\"t9\",\"name\":\"Read\"}]}}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":0,"
         "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\"}}}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_stop\",\"index\":0}}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"message_stop\"}}");
    assert_types("message.start message.delta tool_call message.end message");
    assert_fstr(2, "id", "t9");
    assert_fraw(2, "input", "{}"); /* absent input: an empty object */
    assert_fstr(4, "content", "tab\there");
}

static void test_subagent_stream_ignored(void **state)
{
    (void)state;
    feed(
        "{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_start\",\"index\":0,"
        "\"content_block\":{\"type\":\"text\",\"text\":\"\"}},\"parent_tool_use_id\":\"toolu_1\"}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":0,"
         "\"delta\":{\"type\":\"text_delta\",\"text\":\"inner\"}},\"parent_tool_use_id\":\"toolu_"
         "1\"}");
    feed("{\"type\":\"assistant\",\"message\":{\"id\":\"sub1\",\"content\":[{\"type\":\"text\","
         "\"text\":\"inner\"},{\"type\":\"tool_use\",\"id\":\"t2\",\"name\":\"Grep\",\"input\":{}}]"
         "},"
         "\"parent_tool_use_id\":\"toolu_1\"}");
    feed("{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
         "\"tool_use_id\":\"t2\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}]},"
         "\"parent_tool_use_id\":\"toolu_1\"}");
    assert_types("tool_call tool_result");
    assert_fraw(1, "output", "[{\"type\":\"text\",\"text\":\"x\"}]"); /* blocks as JSON */
    assert_int_equal(fbool(1, "error"), 0);
}

static void test_interrupted_mid_block_finish(void **state)
{
    (void)state;
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"message_start\",\"message\":{\"id\":"
         "\"mx\"}}}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_start\",\"index\":0,"
         "\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":0,"
         "\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"part\"}}}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_start\",\"index\":1,"
         "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}}");
    feed("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":1,"
         "\"delta\":{\"type\":\"text_delta\",\"text\":\"half\"}}}");
    claude_map_finish(g_map, &g_sink); /* the agent died here */
    assert_types("message.start message.delta reasoning message.end message");
    assert_fstr(2, "content", "part");
    assert_fstr(4, "content", "half");
    claude_map_finish(g_map, &g_sink);
    assert_int_equal(g->n, 5);
}

static void test_big_line(void **state)
{
    (void)state;
    /* more tokens than the fixed array holds */
    buf_t b;
    buf_init(&b);
    buf_puts(&b, "{\"type\":\"assistant\",\"message\":{\"id\":\"big\",\"content\":[{\"type\":"
                 "\"tool_use\",\"id\":\"tb\",\"name\":\"X\",\"input\":{\"list\":[");
    for (int i = 0; i < 5000; i++)
        buf_printf(&b, "%s%d", i ? "," : "", i);
    buf_puts(&b, "]}}]}}");
    assert_int_equal(claude_map_line(g_map, b.p, b.len, &g_sink), 1);
    assert_types("tool_call");
    char *in = fraw(0, "input");
    assert_int_equal(strncmp(in, "{\"list\":[0,1,2,", 15), 0);
    free(in);
    buf_free(&b);
    /* and back to normal lines */
    feed("{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"num_turns\":1}");
    assert_types("tool_call done");
}

static void test_input_line(void **state)
{
    (void)state;
    buf_t out;
    buf_init(&out);
    const char *content = "say \\\"hi\\\"\\n\\u00e9";
    assert_int_equal(claude_map_input(&out, content, strlen(content)), 0);
    assert_string_equal(out.p, "{\"type\":\"user\",\"message\":{\"role\":\"user\",\"content\":"
                               "\"say \\\"hi\\\"\\n\\u00e9\"}}\n");
    /* successive interrupts get distinct ids */
    buf_reset(&out);
    claude_map_interrupt(g_map, &out);
    claude_map_interrupt(g_map, &out);
    assert_non_null(strstr(out.p, "\"int_1\""));
    assert_non_null(strstr(out.p, "\"int_2\""));
    buf_free(&out);
}

static void test_odd_lines(void **state)
{
    (void)state;
    const char *odd[] = {"",
                         "   ",
                         "null",
                         "42",
                         "\"str\"",
                         "{}",
                         "{\"type\":1}",
                         "{\"type\":\"stream_event\"}",
                         "{\"type\":\"stream_event\",\"event\":[]}",
                         "{\"type\":\"assistant\"}",
                         "{\"type\":\"assistant\",\"message\":{}}",
                         "{\"type\":\"user\",\"message\":{\"content\":\"plain\"}}",
                         "{\"type\":\"system\",\"subtype\":\"init\"}",
                         "{\"type\":\"control_response\",\"response\":{}}",
                         "{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_stop\","
                         "\"index\":7}}",
                         "{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\","
                         "\"index\":-3,\"delta\":{\"type\":\"text_delta\",\"text\":5}}}",
                         "{\"a\":1,\"a\":2,\"type\":\"result\"",
                         "\xff\xfe",
                         "{\"type\":\"x\"}\0z"};
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++)
        assert_int_equal(feed(odd[i]), 0);
    assert_int_equal(g->n, 0);
    assert_int_equal(g->nreplies, 0);
    /* embedded NUL: not JSON */
    assert_int_equal(claude_map_line(g_map, "{\"type\":\"result\"}\0x", 20, &g_sink), 0);
    assert_int_equal(g->n, 0);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_text),
        T(test_longtext),
        T(test_think),
        T(test_tool_allow),
        T(test_tool_allow_answered),
        T(test_tool_deny),
        T(test_deny_default_reason),
        T(test_tool_autoallow),
        T(test_interrupt),
        T(test_interrupt_not_ours),
        T(test_two_turns),
        T(test_queued_turns),
        T(test_resume),
        T(test_fail500),
        T(test_fail500_retry),
        T(test_garbage),
        T(test_every_fixture_is_consistent),
        T(test_overlong),
        T(test_unsupported_control_request),
        T(test_cancel_request),
        T(test_result_clears_pending),
        T(test_updated_input),
        T(test_pending_table_full),
        T(test_answer_inside_event),
        T(test_not_streamed_blocks),
        T(test_streamed_then_assistant_no_duplicates),
        T(test_subagent_stream_ignored),
        T(test_interrupted_mid_block_finish),
        T(test_big_line),
        T(test_input_line),
        T(test_odd_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
