/*
 * fuzz_claude_map.c - libFuzzer target for worker/claude_map.c: the agent's
 * stdout (untrusted: a model drives it) turned into AEP events.
 *
 * Every input is a stretch of agent stdout, split at '\n' into lines fed to
 * claude_map_line one after the other (one claude_map_t per input). How the
 * host behaves is picked from the input length (size % 4), so every seed is
 * tried with each over time:
 *   0: prompts are answered after all lines (allow with the original input,
 *      then deny), then claude_map_finish;
 *   1: a permission_request is answered from inside the sink (re-entrant,
 *      as a fast client does), alternately allow with updated input / deny;
 *   2: an interrupt is sent half way (claude_map_interrupt), finish at the end;
 *   3: claude_map_overlong between lines, user input lines built too.
 * Properties (abort on failure): never a crash or leak; every emitted event
 * has a non-empty type and its data is a JSON object that json_parse accepts;
 * info keys and values are strings; every reply to the CLI is exactly one
 * '\n'-terminated line holding a JSON object; at most CLAUDE_MAX_PENDING
 * prompts are pending and the slot array is gone whenever none is; after
 * claude_map_finish every message.start has had its message.end.
 * Fast path == full parse: every line also goes to a second pair of mappers,
 * one with the delta fast path and one with full_parse_only, and everything
 * the two say (events, infos, replies, prompt callbacks, counters, return
 * values) must be byte-identical after each line, at finish and at free. The
 * input is also wrapped whole into the text and uuid of a delta line in the
 * CLI's layout, so the fuzzer's bytes reach the fast path's string scanner.
 * Must never: keep state between inputs.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/json.h"
#include "util/log.h"
#include "worker/claude_map.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAXT (64 * 1024)
#define MAX_OPEN 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_tok_t toks[MAXT];

typedef struct state {
    claude_map_t map;
    int mode;
    int answered;
    unsigned replies, events, infos;
    char open[MAX_OPEN][CLAUDE_ID_MAX + 32]; /* message.start ids without message.end yet */
    int nopen;
    buf_t out; /* stdin lines we build (permission answers, interrupts, inputs) */
} state_t;

static state_t *g_st;

/* ---- fast path == full parse ------------------------------------------------ */

typedef struct rec {
    claude_map_t m;
    wkr_sink_t sink;
    buf_t log; /* everything the mapper said since the last compare */
} rec_t;

typedef struct twin {
    rec_t fast, ref; /* ref: full_parse_only */
} twin_t;

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
    buf_printf(&((rec_t *)ctx)->log, "+ %s %llu %zu:", pe->id, (unsigned long long)pe->age,
               pe->input_len);
    buf_append(&((rec_t *)ctx)->log, pe->input, pe->input_len);
    buf_append(&((rec_t *)ctx)->log, "\n", 1);
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
    r->sink = (wkr_sink_t){.ctx = r, .event = rec_event, .info = rec_info};
    buf_init(&r->log);
}

static void dump(const char *what, const char *p, size_t n)
{
    fprintf(stderr, "%s (%zu bytes): ", what, n);
    for (size_t i = 0; i < n && i < 2000; i++)
        fprintf(stderr, (unsigned char)p[i] >= 0x20 && p[i] != 0x7f ? "%c" : "\\x%02x",
                (unsigned char)p[i]);
    fprintf(stderr, "\n");
}

static void twin_compare(twin_t *t, const char *line, size_t len)
{
    claude_map_t *a = &t->fast.m, *b = &t->ref.m;
    buf_t *la = &t->fast.log, *lb = &t->ref.log;
    if (la->len != lb->len || (la->len && memcmp(la->p, lb->p, la->len) != 0) ||
        a->lines != b->lines || a->ignored != b->ignored || a->events != b->events ||
        claude_map_pending_count(a) != claude_map_pending_count(b) || b->fast != 0) {
        dump("line", line, len);
        dump("fast path", la->p ? la->p : "", la->len);
        dump("full parse", lb->p ? lb->p : "", lb->len);
        fprintf(stderr, "fast path and full parse differ\n");
        abort();
    }
    buf_reset(la);
    buf_reset(lb);
}

static void twin_line(twin_t *t, const char *line, size_t len)
{
    int na = claude_map_line(&t->fast.m, line, len, &t->fast.sink);
    int nb = claude_map_line(&t->ref.m, line, len, &t->ref.sink);
    CHECK(na == nb);
    twin_compare(t, line, len);
}

/* the input as the text (or the uuid) of a delta line in the CLI's layout */
static void twin_wrapped(twin_t *t, const uint8_t *data, size_t size, bool in_uuid)
{
    static const char head[] = "{\"type\":\"stream_event\",\"event\":{\"type\":"
                               "\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
                               "\"text_delta\",\"text\":\"";
    static const char mid[] = "\"}},\"session_id\":\"s\",\"parent_tool_use_id\":null,\"uuid\":\"";
    buf_t b;
    buf_init(&b);
    buf_puts(&b, head);
    if (in_uuid) {
        buf_puts(&b, "x");
        buf_puts(&b, mid);
    }
    buf_append(&b, data, size);
    if (!in_uuid) buf_puts(&b, mid);
    buf_puts(&b, "u\"}");
    char *line = malloc(b.len); /* exact size: ASan sees any over-read */
    CHECK(line);
    memcpy(line, b.p, b.len);
    twin_line(t, line, b.len);
    free(line);
    buf_free(&b);
}

static void twin_free(twin_t *t)
{
    claude_map_finish(&t->fast.m, &t->fast.sink);
    claude_map_finish(&t->ref.m, &t->ref.sink);
    twin_compare(t, "(finish)", 8);
    claude_map_free(&t->fast.m);
    claude_map_free(&t->ref.m);
    twin_compare(t, "(free)", 6);
    buf_free(&t->fast.log);
    buf_free(&t->ref.log);
}

/* ---- the main mapper's host and sink ----------------------------------------- */

static void check_object(const char *what, const char *p, size_t n)
{
    json_doc_t d;
    int rc = json_parse(&d, p, n, toks, MAXT);
    if (rc != 0 || json_type(&d, 0) != JSON_OBJ) {
        fprintf(stderr, "%s is not a JSON object (json_parse %d): %.*s\n", what, rc,
                (int)(n > 600 ? 600 : n), p);
        abort();
    }
}

static void check_line(const char *what, const char *p, size_t n)
{
    CHECK(n >= 2 && p[n - 1] == '\n');
    CHECK(memchr(p, '\n', n - 1) == NULL); /* exactly one line */
    check_object(what, p, n - 1);
}

/* message_id / id string of an event's data (unescaped), or "" */
static void data_id(const char *p, size_t n, const char *key, char *out, size_t cap)
{
    json_doc_t d;
    out[0] = '\0';
    if (json_parse(&d, p, n, toks, MAXT) != 0) return;
    int i = json_obj_get(&d, 0, key);
    if (i < 0 || json_type(&d, i) != JSON_STR || json_str_copy(&d, i, out, cap) < 0) out[0] = '\0';
}

static void answer_in_sink(state_t *st, const char *p, size_t n)
{
    char id[512];
    data_id(p, n, "id", id, sizeof(id));
    if (!id[0]) return;
    buf_reset(&st->out);
    bool allow = (st->answered++ & 1) == 0;
    static const char upd[] = "{\"command\":\"ls -la\",\"n\":[1,2.5e3,null,true]}";
    int rc = claude_map_permission(&st->map, &st->out, id, allow, allow ? NULL : "no",
                                   allow ? upd : NULL, allow ? sizeof(upd) - 1 : 0);
    CHECK(rc == 0 || rc == -ENOENT);
    if (rc == 0) check_line("permission answer", st->out.p, st->out.len);
}

static void on_event(void *ctx, const char *type, const char *p, size_t n)
{
    state_t *st = ctx;
    st->events++;
    CHECK(type && type[0]);
    CHECK(p && n >= 2);
    check_object(type, p, n);
    if (strcmp(type, "message.start") == 0) {
        char id[sizeof(st->open[0])];
        data_id(p, n, "id", id, sizeof(id));
        CHECK(id[0]);
        if (st->nopen < MAX_OPEN) snprintf(st->open[st->nopen++], sizeof(st->open[0]), "%s", id);
    } else if (strcmp(type, "message.end") == 0) {
        char id[sizeof(st->open[0])];
        data_id(p, n, "message_id", id, sizeof(id));
        CHECK(id[0]);
        for (int i = 0; i < st->nopen; i++)
            if (strcmp(st->open[i], id) == 0) {
                memmove(st->open[i], st->open[i + 1], (size_t)(st->nopen - i - 1) * sizeof(st->open[0]));
                st->nopen--;
                break;
            }
    } else if (strcmp(type, "permission_request") == 0 && st->mode == 1) {
        answer_in_sink(st, p, n);
    }
}

static void on_info(void *ctx, const char *key, const char *value)
{
    state_t *st = ctx;
    st->infos++;
    CHECK(key && key[0]);
    CHECK(value);
    (void)strlen(value);
}

static void on_exit_cb(void *ctx, int status, int signo, const char *why)
{
    (void)ctx;
    (void)status;
    (void)signo;
    (void)why;
}

static void on_reply(void *ctx, const char *line, size_t len)
{
    state_t *st = ctx;
    st->replies++;
    check_line("reply to the CLI", line, len);
}

static void on_pending(void *ctx, claude_pending_t *pe)
{
    (void)ctx;
    CHECK(pe && pe->id && pe->input);
    check_object("pending input", pe->input, pe->input_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool once;
    if (!once) {
        once = true;
        log_set_level(LOG_ERROR); /* the mapper logs what it ignores; keep the run quiet */
    }
    state_t *st = calloc(1, sizeof(*st));
    CHECK(st);
    g_st = st;
    st->mode = (int)(size % 4);
    buf_init(&st->out);
    claude_host_t host = {.ctx = st,
                          .reply = on_reply,
                          .pending_added = on_pending,
                          .pending_removed = on_pending};
    claude_map_init(&st->map, &host);
    wkr_sink_t sink = {.ctx = st, .event = on_event, .info = on_info, .exit = on_exit_cb};

    twin_t *twin = calloc(1, sizeof(*twin));
    CHECK(twin);
    rec_init(&twin->fast, false);
    rec_init(&twin->ref, true);

    const char *p = (const char *)data, *end = p + size;
    size_t half = size / 2;
    bool interrupted = false;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        /* the line is handed over without its '\n' and is not NUL-terminated:
         * copy it into an exact-size buffer so ASan sees any over-read */
        char *line = malloc(len ? len : 1);
        CHECK(line);
        memcpy(line, p, len);
        int n = claude_map_line(&st->map, line, len, &sink);
        CHECK(n >= 0);
        twin_line(twin, line, len);
        free(line);
        CHECK(claude_map_pending_count(&st->map) <= CLAUDE_MAX_PENDING);
        CHECK(st->map.pending_cap <= CLAUDE_MAX_PENDING);
        CHECK(claude_map_pending_count(&st->map) > 0 || st->map.pending == NULL); /* freed */
        if (st->mode == 2 && !interrupted && (size_t)(p - (const char *)data) >= half) {
            interrupted = true;
            buf_reset(&st->out);
            CHECK(claude_map_interrupt(&st->map, &st->out) == 0);
            check_line("interrupt", st->out.p, st->out.len);
        }
        if (st->mode == 3 && len % 7 == 3) claude_map_overlong(&st->map, 4096, &sink);
        p += len + (nl ? 1 : 0);
    }

    if (st->mode == 3) {
        /* a user turn built from the input's own text, when it is a valid
         * escaped string body (what the gateway hands over) */
        json_doc_t d;
        buf_t q;
        buf_init(&q);
        buf_append(&q, "\"", 1);
        buf_append(&q, data, size);
        buf_append(&q, "\"", 1);
        if (json_parse(&d, q.p, q.len, toks, MAXT) == 0 && json_type(&d, 0) == JSON_STR) {
            size_t bn;
            const char *body = json_str_body(&d, 0, &bn);
            buf_reset(&st->out);
            CHECK(claude_map_input(&st->out, body, bn) == 0);
            check_line("user input", st->out.p, st->out.len);
        }
        buf_free(&q);
    }

    twin_wrapped(twin, data, size, size % 2 == 1);
    twin_free(twin);
    free(twin);

    if (st->mode == 0) {
        /* answer what is still pending, first allow (original input), then
         * deny; answering the last one frees the slot array (pending_cap 0) */
        for (int i = 0; i < st->map.pending_cap; i++) {
            if (!st->map.pending[i]) continue;
            char *id = strdup(st->map.pending[i]->id);
            CHECK(id);
            buf_reset(&st->out);
            bool allow = i % 2 == 0;
            CHECK(claude_map_permission(&st->map, &st->out, id, allow, allow ? NULL : "denied",
                                        NULL, 0) == 0);
            check_line("permission answer", st->out.p, st->out.len);
            buf_reset(&st->out);
            CHECK(claude_map_permission(&st->map, &st->out, id, true, NULL, NULL, 0) == -ENOENT);
            free(id);
        }
        CHECK(claude_map_pending_count(&st->map) == 0);
        CHECK(st->map.pending == NULL && st->map.pending_cap == 0);
        /* updated input that is not an object is refused */
        buf_reset(&st->out);
        CHECK(claude_map_permission(&st->map, &st->out, "nope", true, NULL, "[1]", 3) == -ENOENT);
    }

    claude_map_finish(&st->map, &sink);
    if (st->nopen != 0) {
        fprintf(stderr, "message.start without message.end after finish: %s (%d open)\n",
                st->open[0], st->nopen);
        abort();
    }
    claude_map_free(&st->map);
    buf_free(&st->out);
    free(st);
    g_st = NULL;
    return 0;
}
