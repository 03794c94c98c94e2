/*
 * test_claude_map.c - Claude Code stream-json -> AEP mapping, driven by
 * transcripts recorded from the real CLI (tests/fixtures/claude/NAME.jsonl),
 * plus hand-made lines for the paths the recordings do not reach
 * (subagents, unsupported control requests, cancelled prompts, full prompt
 * table, big lines, non-streamed multi-block messages).
 *
 * The delta fast path is checked differentially: a "twin" feeds the same
 * lines to a mapper with the fast path and to one with full_parse_only and
 * wants byte-identical events, replies, infos, prompt callbacks and counters
 * after every line (fixtures, hand-made variants, every one-byte mutation of
 * a delta line, random mutations). The lazily allocated prompt slots are
 * checked for slot order, pointer stability and release when empty.
 *
 * CLAUDE_MAP_BENCH=1 makes test_bench print ns/line (fast path vs full parse)
 * for a delta line and the recorded transcripts; it asserts no timing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* ---- fast path == full parse ------------------------------------------------------ */

/* One mapper and everything it says, as text: events, infos, replies, prompt
 * callbacks (with the prompt's id, input and age). */
typedef struct rec {
    claude_map_t m;
    wkr_sink_t sink;
    buf_t log;
} rec_t;

static void rec_event(void *ctx, const char *type, const char *data, size_t len)
{
    rec_t *r = ctx;
    buf_printf(&r->log, "E %s %zu:", type, len);
    buf_append(&r->log, data, len);
    buf_append(&r->log, "\n", 1);
}

static void rec_info(void *ctx, const char *key, const char *value)
{
    buf_printf(&((rec_t *)ctx)->log, "I %s=%s\n", key, value);
}

static void rec_reply(void *ctx, const char *line, size_t len)
{
    rec_t *r = ctx;
    buf_puts(&r->log, "R ");
    buf_append(&r->log, line, len);
}

static void rec_added(void *ctx, claude_pending_t *pe)
{
    buf_printf(&((rec_t *)ctx)->log, "+ %s %llu %.*s\n", pe->id, (unsigned long long)pe->age,
               (int)pe->input_len, pe->input);
}

static void rec_removed(void *ctx, claude_pending_t *pe)
{
    buf_printf(&((rec_t *)ctx)->log, "- %s\n", pe->id);
}

static void rec_init(rec_t *r, bool full_parse_only)
{
    claude_host_t host = {
        .ctx = r, .reply = rec_reply, .pending_added = rec_added, .pending_removed = rec_removed};
    claude_map_init(&r->m, &host);
    r->m.full_parse_only = full_parse_only;
    r->sink = (wkr_sink_t){.ctx = r, .event = rec_event, .info = rec_info, .exit = sink_exit};
    buf_init(&r->log);
}

typedef struct twin {
    rec_t fast, ref; /* ref: full_parse_only, the reference */
    uint64_t lines;
} twin_t;

static twin_t *twin_new(void)
{
    twin_t *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    rec_init(&t->fast, false);
    rec_init(&t->ref, true);
    return t;
}

static void show(const char *what, const char *p, size_t n)
{
    fprintf(stderr, "%s (%zu bytes): ", what, n);
    for (size_t i = 0; i < n && i < 600; i++)
        fprintf(stderr, (unsigned char)p[i] >= 0x20 && p[i] != 0x7f ? "%c" : "\\x%02x",
                (unsigned char)p[i]);
    fprintf(stderr, "\n");
}

/* both said the same since the last check */
static void twin_check(twin_t *t, const char *line, size_t len)
{
    claude_map_t *a = &t->fast.m, *b = &t->ref.m;
    buf_t *la = &t->fast.log, *lb = &t->ref.log;
    if (la->len != lb->len || (la->len && memcmp(la->p, lb->p, la->len) != 0) ||
        a->lines != b->lines || a->ignored != b->ignored || a->events != b->events ||
        claude_map_pending_count(a) != claude_map_pending_count(b)) {
        show("line", line, len);
        show("fast path", la->p ? la->p : "", la->len);
        show("full parse", lb->p ? lb->p : "", lb->len);
        fail_msg("fast path and full parse differ (lines %llu/%llu ignored %llu/%llu events "
                 "%llu/%llu)",
                 (unsigned long long)a->lines, (unsigned long long)b->lines,
                 (unsigned long long)a->ignored, (unsigned long long)b->ignored,
                 (unsigned long long)a->events, (unsigned long long)b->events);
    }
    assert_int_equal(b->fast, 0);
    buf_reset(la);
    buf_reset(lb);
}

static void twin_line(twin_t *t, const char *line, size_t len)
{
    /* an exact-size copy: ASan sees any read past the line */
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, line, len);
    int na = claude_map_line(&t->fast.m, copy, len, &t->fast.sink);
    int nb = claude_map_line(&t->ref.m, copy, len, &t->ref.sink);
    assert_int_equal(na, nb);
    twin_check(t, copy, len);
    free(copy);
    t->lines++;
}

static void twin_str(twin_t *t, const char *line)
{
    twin_line(t, line, strlen(line));
}

/* finish, free, compare once more; returns the fast-path line count */
static uint64_t twin_free(twin_t *t)
{
    uint64_t fast = t->fast.m.fast;
    claude_map_finish(&t->fast.m, &t->fast.sink);
    claude_map_finish(&t->ref.m, &t->ref.sink);
    twin_check(t, "(finish)", 8);
    claude_map_free(&t->fast.m);
    claude_map_free(&t->ref.m);
    twin_check(t, "(free)", 6);
    buf_free(&t->fast.log);
    buf_free(&t->ref.log);
    free(t);
    return fast;
}

/* every line of a fixture; *deltas: lines the fast path is meant for */
static void twin_file(twin_t *t, const char *path, int *deltas)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
        if (deltas &&
            strstr(line, "{\"type\":\"stream_event\",\"event\":{\"type\":"
                         "\"content_block_delta\"") == line &&
            strstr(line, "\"parent_tool_use_id\":null") &&
            (strstr(line, "\"text_delta\"") || strstr(line, "\"thinking_delta\"") ||
             strstr(line, "\"input_json_delta\"")))
            (*deltas)++;
        twin_line(t, line, (size_t)n);
    }
    free(line);
    fclose(f);
}

/* every recorded transcript, each on its own and all in a row */
static void test_fast_path_fixtures(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/claude", FIXTURES_DIR);
    DIR *dp = opendir(dir);
    assert_non_null(dp);
    twin_t *all = twin_new();
    int files = 0, deltas_all = 0;
    struct dirent *de;
    while ((de = readdir(dp))) {
        size_t nl = strlen(de->d_name);
        if (nl < 6 || strcmp(de->d_name + nl - 6, ".jsonl") != 0) continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        twin_t *t = twin_new();
        int deltas = 0;
        twin_file(t, path, &deltas);
        /* the recordings are the CLI's own layout: each of its deltas is taken */
        uint64_t fast = twin_free(t);
        if (fast != (uint64_t)deltas)
            fail_msg("%s: %llu lines on the fast path, %d delta lines", de->d_name,
                     (unsigned long long)fast, deltas);
        twin_file(all, path, &deltas_all);
        files++;
    }
    closedir(dp);
    assert_true(files >= 15);
    assert_true(deltas_all > 100);
    assert_int_equal(twin_free(all), deltas_all);
}

#define HEAD "{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":"
#define TAIL                                                                                       \
    "\"}},\"session_id\":\"b103f3e7-07ab-5b07-b823-9190d19f63d8\",\"parent_tool_use_id\":null,"    \
    "\"uuid\":\"5e338327-6a99-4ab1-9f02-14d252eb6cf6\"}"

static const char *const k_delta_line =
    HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"word1 " TAIL;

/* a delta line: index, delta type/key, text body (all raw) */
static void delta(twin_t *t, const char *index, const char *type, const char *key, const char *text)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, HEAD "%s,\"delta\":{\"type\":\"%s\",\"%s\":\"%s" TAIL, index, type, key, text);
    twin_line(t, b.p, b.len);
    buf_free(&b);
}

static void message_start(twin_t *t, const char *id_json)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b,
               "{\"type\":\"stream_event\",\"event\":{\"type\":\"message_start\",\"message\":"
               "{\"id\":%s,\"type\":\"message\",\"role\":\"assistant\",\"content\":[]}},"
               "\"session_id\":\"s\",\"parent_tool_use_id\":null,\"uuid\":\"u\"}",
               id_json);
    twin_line(t, b.p, b.len);
    buf_free(&b);
}

/* hand-made deltas the fast path must take, or leave to the full parse */
static void test_fast_path_variants(void **state)
{
    (void)state;
    /* an API id as the CLI sends it, ids the writer has to escape (one reason
     * each), no id (an anonymous one is made) */
    static const char *ids[] = {"\"msg_01XFDUDYJgAACzvnptvVoYEL\"",
                                "\"m\\\"1\"",
                                "\"m\\\\1\"",
                                "\"m\\u00e91\"",
                                "\"m\\u00011\"",
                                "\"m\\u007f\"",
                                "\"m/~ 1\"",
                                "\"\"",
                                "1"};
    static const char *texts[] = {
        "", "a", "1234567", "12345678", "123456789", "123456789012345", "1234567890123456",
        "12345678901234567", "\\\"", "\\\\", "\\/", "\\b\\f\\n\\r\\t", "\\u00e9", "\\u00E9",
        "\\ud83d\\ude00", "\\ud800", "\\udfff x", "\\u0000", "caf\xc3\xa9", "\xe2\x82\xac",
        "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\x7f", "tab\\there \\\"q\\\" end\\\\",
        /* not JSON: the full parse decides (ignored) */
        "\x01", "a\tb", "a\nb", "\\x", "\\u12G4", "\\u123", "\\", "\\u", "\xc3", "\xc3(",
        "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "\xff", "\x80", "ab\xe2\x82", "\"", "\"}}",
        "a\"b"};
    static const char *indexes[] = {"0",  "1",  "7",      "12",      "999999", "1000000",   "01",
                                    "00", "-1", "-0",     "1.0",     "1e2",    "\"0\"",     "",
                                    " 0", "0 ", "123456", "9999999", "null",   "2147483648"};
    static const char *kinds[][2] = {{"text_delta", "text"},
                                     {"thinking_delta", "thinking"},
                                     {"input_json_delta", "partial_json"},
                                     {"signature_delta", "signature"},
                                     {"text_delta", "thinking"},
                                     {"thinking_delta", "text"},
                                     {"text_delt", "text"},
                                     {"text_delta\\u0000", "text"},
                                     {"text\\u005fdelta", "text"}};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        twin_t *t = twin_new();
        message_start(t, ids[i]);
        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
            for (size_t x = 0; x < sizeof(texts) / sizeof(texts[0]); x++)
                delta(t, x % 3 == 0 ? "1" : "0", kinds[k][0], kinds[k][1], texts[x]);
        for (size_t x = 0; x < sizeof(indexes) / sizeof(indexes[0]); x++)
            delta(t, indexes[x], "text_delta", "text", "i");
        uint64_t fast = t->fast.m.fast;
        assert_true(fast > 50); /* the valid ones did take it */
        twin_free(t);
    }

    /* the same delta in layouts the fast path leaves alone */
    static const char *lines[] = {
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":\"toolu_1\",\"uuid\":\"u\"}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\",\"extra\":1}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\",\"type\":\"result\"}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\",\"text\":\"y\"}},\"session_id\":"
             "\"s\",\"parent_tool_use_id\":null,\"uuid\":\"u\"}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"uuid\":\"u\",\"session_id\":"
             "\"s\",\"parent_tool_use_id\":null}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\"} ",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\"}\r",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\"}}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\"",
        HEAD "0, \"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\"}",
        " " HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
        "\"parent_tool_use_id\":null,\"uuid\":\"u\"}",
        "{\"type\":\"stream_event\",\"event\":{\"index\":0,\"type\":\"content_block_delta\","
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
        "\"parent_tool_use_id\":null,\"uuid\":\"u\"}",
        "{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"text\":\"x\",\"type\":\"text_delta\"}},\"session_id\":\"s\","
        "\"parent_tool_use_id\":null,\"uuid\":\"u\"}",
        "{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\\u0000\","
             "\"parent_tool_use_id\":null,\"uuid\":\"\\ud800\xc3\xa9\"}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\x01\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\"}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\xff\"}",
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"\\q\"}",
    };
    twin_t *t = twin_new();
    message_start(t, ids[0]);
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        twin_str(t, lines[i]);
    assert_int_equal(t->fast.m.fast, 1); /* the one with odd but valid strings */
    /* every cut of a delta line, and the line with a NUL inside */
    size_t n = strlen(k_delta_line);
    for (size_t cut = 0; cut <= n; cut++)
        twin_line(t, k_delta_line, cut);
    assert_int_equal(t->fast.m.fast, 2);
    char nul[512];
    memcpy(nul, k_delta_line, n);
    nul[n - 2] = '\0';
    twin_line(t, nul, n);
    /* a long text (grows the block buffer, crosses many SWAR words) */
    buf_t big;
    buf_init(&big);
    for (int i = 0; i < 2000; i++)
        buf_puts(&big, i % 7 ? "word \\\"\xc3\xa9\" " : "\\n\\u2028 ");
    delta(t, "0", "text_delta", "text", big.p);
    buf_free(&big);
    twin_free(t);
}

/* every one-byte change (replace, delete, insert) of the three delta kinds */
static void test_fast_path_mutations(void **state)
{
    (void)state;
    static const unsigned char subst[] = {0x00, 0x01, 0x1f, ' ',  '"',  '\\', '/', '0',
                                          '1',  '9',  'u',  'n',  ',',  ':',  '{', '}',
                                          'x',  0x7f, 0x80, 0xc3, 0xed, 0xf4, 0xff};
    static const char *bases[] = {
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Echo: \\\"hi\\\"\\n\\u00e9" TAIL,
        HEAD "1,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me think." TAIL,
        HEAD "0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"command\\\": "
             "\\\"ech" TAIL,
    };
    char line[1024];
    twin_t *t = twin_new();
    message_start(t, "\"msg_mut\"");
    for (size_t b = 0; b < sizeof(bases) / sizeof(bases[0]); b++) {
        size_t n = strlen(bases[b]);
        assert_true(n + 1 < sizeof(line));
        twin_str(t, bases[b]);
        for (size_t p = 0; p < n; p++) {
            for (size_t v = 0; v < sizeof(subst); v++) {
                memcpy(line, bases[b], n);
                line[p] = (char)subst[v];
                twin_line(t, line, n);
                /* insert before p */
                memcpy(line, bases[b], p);
                line[p] = (char)subst[v];
                memcpy(line + p + 1, bases[b] + p, n - p);
                twin_line(t, line, n + 1);
            }
            memcpy(line, bases[b], p); /* delete p */
            memcpy(line + p, bases[b] + p + 1, n - p - 1);
            twin_line(t, line, n - 1);
        }
    }
    assert_true(t->fast.m.fast > 300);
    twin_free(t);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* random texts from bytes JSON cares about, then random damage anywhere,
 * mixed with a whole transcript now and then so the block state moves too */
static void test_fast_path_random(void **state)
{
    (void)state;
    static const char pool[] = "\"\\/u0aF9{}[],: \x01\x1f\x7f\x80\xbf\xc3\xa9\xe2\x82\xac\xed\xf0"
                               "\x9f\xf4\xffntb";
    static const char *kinds[] = {"text_delta\",\"text", "thinking_delta\",\"thinking",
                                  "input_json_delta\",\"partial_json"};
    char path[512], text[64];
    snprintf(path, sizeof(path), "%s/claude/think.jsonl", FIXTURES_DIR);
    twin_t *t = twin_new();
    uint64_t seed = 0x9e3779b97f4a7c15u;
    buf_t b;
    buf_init(&b);
    for (int i = 0; i < 30000; i++) {
        if (i % 2000 == 0) twin_file(t, path, NULL);
        size_t tn = rng_next(&seed) % sizeof(text);
        for (size_t k = 0; k < tn; k++)
            text[k] = rng_next(&seed) % 4 ? (char)('a' + k % 26)
                                          : pool[rng_next(&seed) % (sizeof(pool) - 1)];
        buf_reset(&b);
        buf_printf(&b, HEAD "%d,\"delta\":{\"type\":\"%s\":\"", (int)(rng_next(&seed) % 3),
                   kinds[rng_next(&seed) % 3]);
        buf_append(&b, text, tn);
        buf_puts(&b, TAIL);
        for (int e = (int)(rng_next(&seed) % 4); e > 0 && i % 2; e--)
            b.p[rng_next(&seed) % b.len] = pool[rng_next(&seed) % (sizeof(pool) - 1)];
        twin_line(t, b.p, b.len);
    }
    buf_free(&b);
    assert_true(t->fast.m.fast > 1000);
    twin_free(t);
}

/* ---- lazily allocated prompt slots ---------------------------------------------------- */

/* A host that keeps every prompt pointer it was given and checks, each time,
 * that it still holds the same prompt (ASan flags a stale one). */
typedef struct ptrack {
    claude_pending_t *pe[CLAUDE_MAX_PENDING];
    char id[CLAUDE_MAX_PENDING][32];
    int n;
    buf_t order; /* "+id -id ..." */
} ptrack_t;

static void pt_added(void *ctx, claude_pending_t *pe)
{
    ptrack_t *t = ctx;
    assert_true(t->n < CLAUDE_MAX_PENDING);
    t->pe[t->n] = pe;
    snprintf(t->id[t->n], sizeof(t->id[0]), "%s", pe->id);
    t->n++;
    buf_printf(&t->order, "+%s ", pe->id);
}

static void pt_removed(void *ctx, claude_pending_t *pe)
{
    ptrack_t *t = ctx;
    for (int i = 0; i < t->n; i++)
        if (t->pe[i] == pe) {
            assert_string_equal(pe->id, t->id[i]);
            memmove(&t->pe[i], &t->pe[i + 1], (size_t)(t->n - i - 1) * sizeof(t->pe[0]));
            memmove(t->id[i], t->id[i + 1], (size_t)(t->n - i - 1) * sizeof(t->id[0]));
            t->n--;
            buf_printf(&t->order, "-%s ", pe->id);
            return;
        }
    fail_msg("pending_removed for a prompt never added");
}

static void pt_check(const ptrack_t *t, const claude_map_t *m)
{
    assert_int_equal(claude_map_pending_count(m), t->n);
    assert_int_equal(m->pending_n, t->n);
    assert_true(m->pending_cap >= 0 && m->pending_cap <= CLAUDE_MAX_PENDING);
    if (t->n == 0) {
        assert_null(m->pending); /* freed when empty */
        assert_int_equal(m->pending_cap, 0);
    }
    for (int i = 0; i < t->n; i++) {
        assert_string_equal(t->pe[i]->id, t->id[i]);
        bool listed = false;
        for (int k = 0; k < m->pending_cap && !listed; k++)
            listed = m->pending[k] == t->pe[i];
        assert_true(listed);
    }
}

static void feed_to(claude_map_t *m, const char *line)
{
    claude_map_line(m, line, strlen(line), &g_sink);
}

static void prompt(claude_map_t *m, const char *id, const char *input)
{
    char line[512];
    snprintf(line, sizeof(line),
             "{\"type\":\"control_request\",\"request_id\":\"%s\",\"request\":{\"subtype\":"
             "\"can_use_tool\",\"tool_name\":\"Bash\",\"input\":%s}}",
             id, input);
    claude_map_line(m, line, strlen(line), &g_sink);
}

static const char *slot_id(const claude_map_t *m, int slot)
{
    assert_true(slot < m->pending_cap);
    assert_non_null(m->pending[slot]);
    return m->pending[slot]->id;
}

static void test_pending_lazy_slots(void **state)
{
    (void)state;
    ptrack_t *t = calloc(1, sizeof(*t));
    buf_init(&t->order);
    claude_host_t host = {.ctx = t, .pending_added = pt_added, .pending_removed = pt_removed};
    claude_map_t *m = malloc(sizeof(*m));
    claude_map_init(m, &host);
    buf_t out;
    buf_init(&out);
    char id[32];

    /* idle and streaming: no slots at all */
    assert_null(m->pending);
    char path[512];
    snprintf(path, sizeof(path), "%s/claude/longtext.jsonl", FIXTURES_DIR);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0)
        claude_map_line(m, line, (size_t)n - (line[n - 1] == '\n'), &g_sink);
    free(line);
    fclose(f);
    pt_check(t, m);

    /* one prompt: a small array, given back when answered */
    prompt(m, "p1", "{\"command\":\"ls\"}");
    pt_check(t, m);
    assert_int_equal(m->pending_cap, 4);
    assert_string_equal(m->pending[0]->input, "{\"command\":\"ls\"}");
    assert_int_equal(m->pending[0]->input_len, 16);
    assert_int_equal(claude_map_permission(m, &out, "p1", true, NULL, NULL, 0), 0);
    pt_check(t, m);

    /* growth keeps every prompt where it was (the host's pointers stay good) */
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "r%d", i);
        prompt(m, id, "{}");
        pt_check(t, m);
    }
    assert_int_equal(m->pending_cap, 16);
    /* a freed slot is the next one taken: slot numbers as in a fixed table */
    feed_to(m, "{\"type\":\"control_cancel_request\",\"request_id\":\"r3\"}");
    assert_int_equal(claude_map_permission(m, &out, "r5", false, NULL, NULL, 0), 0);
    pt_check(t, m);
    prompt(m, "x1", "{}");
    prompt(m, "x2", "{}");
    assert_string_equal(slot_id(m, 3), "x1");
    assert_string_equal(slot_id(m, 5), "x2");
    /* asked again: same slot, newest input, a fresh age */
    uint64_t age = m->pending[5]->age;
    prompt(m, "r0", "{\"v\":2}");
    pt_check(t, m);
    assert_string_equal(slot_id(m, 0), "r0");
    assert_string_equal(m->pending[0]->input, "{\"v\":2}");
    assert_int_equal(m->pending[0]->age, age + 1);
    assert_int_equal(claude_map_pending_count(m), 10);
    /* the result drops them all, in slot order, and frees the array */
    buf_reset(&t->order);
    feed_to(m, "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false}");
    assert_string_equal(t->order.p, "-r0 -r1 -r2 -x1 -r4 -x2 -r6 -r7 -r8 -r9 ");
    pt_check(t, m);

    /* the bound: 64 at most, the next one is denied, the array goes at free */
    for (int i = 0; i <= CLAUDE_MAX_PENDING; i++) {
        snprintf(id, sizeof(id), "q%d", i);
        prompt(m, id, "{}");
    }
    pt_check(t, m);
    assert_int_equal(m->pending_cap, CLAUDE_MAX_PENDING);
    assert_int_equal(claude_map_pending_count(m), CLAUDE_MAX_PENDING);
    assert_int_equal(claude_map_permission(m, &out, "q64", true, NULL, NULL, 0), -ENOENT);
    claude_map_free(m);
    pt_check(t, m);
    assert_int_equal(t->n, 0);

    buf_free(&out);
    buf_free(&t->order);
    free(t);
    free(m);
}

/* ---- CLAUDE_MAP_BENCH=1: ns/line, printed, never asserted ------------------------------- */

static void bench_event(void *ctx, const char *type, const char *data, size_t len)
{
    (void)type;
    (void)data;
    *(size_t *)ctx += len;
}

static double cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* one delta line over and over inside an open block (best of 7 runs) */
static double bench_delta(const char *line, bool full)
{
    static const char *start = "{\"type\":\"stream_event\",\"event\":{\"type\":\"message_start\","
                               "\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\"}},"
                               "\"parent_tool_use_id\":null}";
    static const char *stop = "{\"type\":\"stream_event\",\"event\":{\"type\":"
                              "\"content_block_stop\",\"index\":0}}";
    size_t sunk = 0, len = strlen(line);
    wkr_sink_t sink = {.ctx = &sunk, .event = bench_event};
    double best = 1e30;
    for (int run = 0; run < 7; run++) {
        claude_map_t *m = malloc(sizeof(*m));
        claude_map_init(m, NULL);
        m->full_parse_only = full;
        claude_map_line(m, start, strlen(start), &sink);
        double ns = 0;
        for (int round = 0; round < 100; round++) {
            double t0 = cpu_ns();
            for (int i = 0; i < 1000; i++)
                claude_map_line(m, line, len, &sink);
            ns += cpu_ns() - t0;
            claude_map_line(m, stop, strlen(stop), &sink); /* keeps the block text small */
        }
        claude_map_free(m);
        free(m);
        if (ns / 100000 < best) best = ns / 100000;
    }
    return best;
}

typedef struct lines {
    char **p;
    size_t *n;
    int count;
} lines_t;

static void lines_load(lines_t *l, const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        if (n > 0 && line[n - 1] == '\n') n--;
        l->p = realloc(l->p, (size_t)(l->count + 1) * sizeof(*l->p));
        l->n = realloc(l->n, (size_t)(l->count + 1) * sizeof(*l->n));
        l->p[l->count] = malloc((size_t)n + 1);
        memcpy(l->p[l->count], line, (size_t)n);
        l->n[l->count++] = (size_t)n;
    }
    free(line);
    fclose(f);
}

/* a whole transcript, fresh mapper each time (best of 7 runs) */
static double bench_transcript(const lines_t *l, bool full)
{
    size_t sunk = 0;
    wkr_sink_t sink = {.ctx = &sunk, .event = bench_event};
    double best = 1e30;
    for (int run = 0; run < 7; run++) {
        claude_map_t *m = malloc(sizeof(*m));
        double t0 = cpu_ns();
        for (int r = 0; r < 200; r++) {
            claude_map_init(m, NULL);
            m->full_parse_only = full;
            for (int i = 0; i < l->count; i++)
                claude_map_line(m, l->p[i], l->n[i], &sink);
            claude_map_finish(m, &sink);
            claude_map_free(m);
        }
        double ns = (cpu_ns() - t0) / (200.0 * l->count);
        free(m);
        if (ns < best) best = ns;
    }
    return best;
}

static int bench(void)
{
    static const char *escaped =
        HEAD "0,\"delta\":{\"type\":\"text_delta\",\"text\":\" said \\\"hi\\\" and then\\n - "
             "\\u00e9t\xc3\xa9 " TAIL;
    static const char *files[] = {"longtext.jsonl", "think.jsonl", "tool_allow.jsonl",
                                  "interrupt.jsonl", "text.jsonl"};
    printf("sizeof(claude_map_t) = %zu\n", sizeof(claude_map_t));
    printf("%-28s %10s %12s   (CPU ns/line, best of 7)\n", "", "fast path", "full parse");
    const char *dl[] = {k_delta_line, escaped};
    for (int i = 0; i < 2; i++)
        printf("delta line, %3zu bytes        %10.1f %12.1f\n", strlen(dl[i]),
               bench_delta(dl[i], false), bench_delta(dl[i], true));
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char path[512];
        lines_t l = {0};
        snprintf(path, sizeof(path), "%s/claude/%s", FIXTURES_DIR, files[i]);
        lines_load(&l, path);
        printf("%-17s %3d lines    %10.1f %12.1f\n", files[i], l.count, bench_transcript(&l, false),
               bench_transcript(&l, true));
        for (int k = 0; k < l.count; k++)
            free(l.p[k]);
        free(l.p);
        free(l.n);
    }
    return 0;
}

/* A delta in the CLI's own layout (the fast path's). */
static const char *cli_delta(int index, const char *text)
{
    static char line[512];
    snprintf(line, sizeof(line),
             "{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":%d,"
             "\"delta\":{\"type\":\"text_delta\",\"text\":\"%s\"}},\"session_id\":\"s\","
             "\"parent_tool_use_id\":null,\"uuid\":\"u\"}",
             index, text);
    return line;
}

static const char *msg_start(const char *id_body)
{
    static char line[512];
    snprintf(line, sizeof(line),
             "{\"type\":\"stream_event\",\"event\":{\"type\":\"message_start\",\"message\":{\"id\":"
             "\"%s\"}},\"parent_tool_use_id\":null}",
             id_body);
    return line;
}

static const char *msg_stop(void)
{
    return "{\"type\":\"stream_event\",\"event\":{\"type\":\"message_stop\"}}";
}

static const char *assistant_text(const char *id, const char *text)
{
    static char line[512];
    snprintf(line, sizeof(line),
             "{\"type\":\"assistant\",\"message\":{\"id\":\"%s\",\"content\":[{\"type\":\"text\","
             "\"text\":\"%s\"}]}}",
             id, text);
    return line;
}

/* Block ids are built from the message id when emitted ("<id>:<index>"): an
 * anonymous id, one that needs escaping, the longest kept, one too long, the
 * largest index; and only the last CLAUDE_RECENT_MSGS streamed messages are
 * remembered. Every line also goes through the reference mapper. */
static void test_block_ids(void **state)
{
    (void)state;
    char a127[128], b128[129], want[200];
    memset(a127, 'a', 127);
    a127[127] = '\0';
    memset(b128, 'b', 128);
    b128[128] = '\0';
    twin_t *t = twin_new();
#define BOTH(l)                                                                                    \
    do {                                                                                           \
        const char *l_ = (l);                                                                      \
        twin_str(t, l_);                                                                           \
        feed(l_);                                                                                  \
    } while (0)

    BOTH(cli_delta(3, "x")); /* no message_start yet */
    assert_int_equal(g_map->fast, 1);
    BOTH(msg_start("m\\\"q"));
    BOTH(cli_delta(10, "y"));
    BOTH(msg_stop());
    BOTH(msg_start(a127));
    BOTH(cli_delta(999999, "z"));
    BOTH(msg_stop());
    BOTH(msg_start(b128)); /* too long to keep: an anonymous id instead */
    BOTH(cli_delta(0, "w"));
    BOTH(msg_stop());
    assert_int_equal(g_map->fast, 4);
    char rid[8];
    for (int i = 1; i <= CLAUDE_RECENT_MSGS + 1; i++) {
        snprintf(rid, sizeof(rid), "r%d", i);
        BOTH(msg_start(rid));
        BOTH(msg_stop());
    }
    BOTH(assistant_text("r1", "one")); /* forgotten: taken as not streamed */
    BOTH(assistant_text("r2", "two")); /* still remembered: already streamed */
    BOTH(assistant_text("r1", "three"));
#undef BOTH
    assert_true(twin_free(t) > 0);

    assert_types("message.start message.delta message.end message "
                 "message.start message.delta message.end message "
                 "message.start message.delta message.end message "
                 "message.start message.delta message.end message "
                 "message.start message.end message message.start message.end message");
    assert_fstr(0, "id", "msg_hp1:3");
    assert_fstr(1, "message_id", "msg_hp1:3");
    assert_fstr(3, "id", "msg_hp1:3");
    assert_fstr(3, "content", "x");
    assert_fstr(4, "id", "m\"q:10");
    assert_fstr(5, "message_id", "m\"q:10");
    assert_fstr(7, "content", "y");
    snprintf(want, sizeof(want), "%s:999999", a127);
    assert_fstr(8, "id", want);
    assert_fstr(9, "message_id", want);
    assert_fstr(11, "id", want);
    assert_fstr(12, "id", "msg_hp2:0");
    assert_fstr(13, "message_id", "msg_hp2:0");
    assert_fstr(16, "id", "r1:0");
    assert_fstr(18, "content", "one");
    assert_fstr(19, "id", "r1:1");
    assert_fstr(21, "content", "three");
    assert_int_equal(check_messages(), 6);
}

/* Per-session memory: ids live on the heap at their real length. */
static void test_map_size(void **state)
{
    (void)state;
    print_message("sizeof(claude_map_t) = %zu\n", sizeof(claude_map_t));
    assert_true(sizeof(claude_map_t) <= 512);
}

int main(void)
{
    if (getenv("CLAUDE_MAP_BENCH")) return bench();
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
        T(test_fast_path_fixtures),
        T(test_fast_path_variants),
        T(test_fast_path_mutations),
        T(test_fast_path_random),
        T(test_pending_lazy_slots),
        T(test_block_ids),
        T(test_map_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
