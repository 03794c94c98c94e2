/*
 * test_echo.c - the built-in echo agent (src/worker/echo.c) through the
 * worker interface (wkr_lookup("echo")), on a real uv loop, with a fake sink
 * that records every (type, data) pair and every exit.
 *
 * Checks the exact event sequence of a turn, the scenarios, permission
 * answers, interrupt, crash, and the libuv-style lifecycle: exit exactly
 * once, never synchronously inside stop(), no events after exit.
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

#include "util/config.h"
#include "util/json.h"
#include "worker/worker.h"

/* ---- fake sink ----------------------------------------------------------- */

typedef struct ev {
    char *type;
    char *data;
    size_t len;
} ev_t;

typedef struct fx {
    uv_loop_t loop;
    hp_config_t cfg;
    const wkr_ops_t *ops;
    wkr_t *w;
    wkr_sink_t sink;
    ev_t *ev;
    int nev, cap;
    int exits;
    int exit_status, exit_signo;
    char exit_why[128];
    bool exit_why_null;
    int events_after_exit;
    bool in_stop;
    const char *next_on_done; /* input to send from inside the done callback */
    int next_rc;
    int exits_in_stop;
    int infos;
} fx_t;

static void on_event(void *ctx, const char *type, const char *data, size_t len)
{
    fx_t *f = ctx;
    if (f->exits) f->events_after_exit++;
    if (f->nev == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 64;
        f->ev = realloc(f->ev, (size_t)f->cap * sizeof(*f->ev));
        assert_non_null(f->ev);
    }
    /* data must be exactly one JSON object */
    json_tok_t t[256];
    json_doc_t d;
    int rc = json_parse(&d, data, len, t, 256);
    if (rc != 0) fail_msg("event %s: data is not JSON (%d): %.*s", type, rc, (int)len, data);
    assert_int_equal(json_type(&d, 0), JSON_OBJ);
    ev_t *e = &f->ev[f->nev++];
    e->type = strdup(type);
    e->data = strndup(data, len);
    e->len = len;
    /* the session core sends the next queued turn from inside this callback */
    if (strcmp(type, "done") == 0 && f->next_on_done) {
        const char *next = f->next_on_done;
        f->next_on_done = NULL;
        f->next_rc = f->ops->input(f->w, next, strlen(next));
    }
}

static void on_info(void *ctx, const char *key, const char *value)
{
    fx_t *f = ctx;
    (void)key;
    (void)value;
    f->infos++;
}

static void on_exit_cb(void *ctx, int status, int signo, const char *why)
{
    fx_t *f = ctx;
    f->exits++;
    if (f->in_stop) f->exits_in_stop++;
    f->exit_status = status;
    f->exit_signo = signo;
    f->exit_why_null = why == NULL;
    snprintf(f->exit_why, sizeof(f->exit_why), "%s", why ? why : "");
}

static int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    config_defaults(&f->cfg);
    f->cfg.echo_delta_interval_ms = 0;
    f->ops = wkr_lookup("echo");
    assert_non_null(f->ops);
    assert_ptr_equal(f->ops, &wkr_echo_ops);
    assert_string_equal(f->ops->type, "echo");
    f->sink = (wkr_sink_t){.ctx = f, .event = on_event, .info = on_info, .exit = on_exit_cb};
    *state = f;
    return 0;
}

static void start(fx_t *f)
{
    wkr_spec_t spec = {
        .session_id = "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        .worker_type = "echo",
        .work_dir = "/tmp",
        .cfg = &f->cfg,
    };
    char err[256] = "";
    assert_int_equal(f->ops->start(&f->w, &f->loop, &spec, &f->sink, err, sizeof(err)), 0);
    assert_non_null(f->w);
}

static void do_stop(fx_t *f)
{
    f->in_stop = true;
    f->ops->stop(f->w);
    f->in_stop = false;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    if (f->w && !f->exits) do_stop(f);
    /* every handle closes: the loop ends on its own */
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(f->exits, f->w ? 1 : 0);
    assert_int_equal(f->exits_in_stop, 0);
    assert_int_equal(f->events_after_exit, 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (int i = 0; i < f->nev; i++) {
        free(f->ev[i].type);
        free(f->ev[i].data);
    }
    free(f->ev);
    free(f);
    return 0;
}

/* ---- helpers --------------------------------------------------------- */

static int count_type(fx_t *f, const char *type)
{
    int n = 0;
    for (int i = 0; i < f->nev; i++)
        n += strcmp(f->ev[i].type, type) == 0;
    return n;
}

/* Runs the loop until `type` has been seen `n` times (or the agent exited). */
static void run_until(fx_t *f, const char *type, int n)
{
    for (int guard = 0; count_type(f, type) < n; guard++) {
        if (f->exits) fail_msg("agent exited while waiting for %s", type);
        if (guard > 1000000)
            fail_msg("timeout waiting for %d x %s (have %d)", n, type, count_type(f, type));
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

static void run_until_exit(fx_t *f)
{
    for (int guard = 0; !f->exits; guard++) {
        if (guard > 1000000) fail_msg("timeout waiting for exit");
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}

/* Runs the loop for about ms milliseconds of wall time. */
static void on_wait_timer(uv_timer_t *t)
{
    *(bool *)t->data = true;
}
static void on_wait_closed(uv_handle_t *h)
{
    (void)h;
}
static void run_for(fx_t *f, uint64_t ms)
{
    uv_timer_t t;
    bool fired = false;
    uv_timer_init(&f->loop, &t);
    t.data = &fired;
    uv_timer_start(&t, on_wait_timer, ms, 0);
    while (!fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, on_wait_closed);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

typedef struct pdoc {
    json_doc_t d;
    json_tok_t t[256];
} pdoc_t;

static pdoc_t *pd_of(const ev_t *e)
{
    static pdoc_t p;
    assert_int_equal(json_parse(&p.d, e->data, e->len, p.t, 256), 0);
    return &p;
}

/* String field of an event's data (unescaped into a static buffer). */
static const char *str_of(const ev_t *e, const char *key)
{
    static char out[65536];
    pdoc_t *p = pd_of(e);
    int i = json_obj_get(&p->d, 0, key);
    if (i < 0) fail_msg("%s: no %s in %s", e->type, key, e->data);
    assert_int_equal(json_type(&p->d, i), JSON_STR);
    assert_true(json_str_copy(&p->d, i, out, sizeof(out)) >= 0);
    return out;
}

static bool bool_of(const ev_t *e, const char *key)
{
    pdoc_t *p = pd_of(e);
    int i = json_obj_get(&p->d, 0, key);
    if (i < 0) fail_msg("%s: no %s in %s", e->type, key, e->data);
    bool b;
    assert_int_equal(json_get_bool(&p->d, i, &b), 0);
    return b;
}

static bool stats_interrupted(const ev_t *e)
{
    pdoc_t *p = pd_of(e);
    int st = json_obj_get(&p->d, 0, "stats");
    assert_int_equal(json_type(&p->d, st), JSON_OBJ);
    int i = json_obj_get(&p->d, st, "interrupted");
    assert_true(i >= 0);
    bool b;
    assert_int_equal(json_get_bool(&p->d, i, &b), 0);
    assert_true(json_obj_get(&p->d, st, "duration_ms") >= 0);
    assert_true(json_obj_get(&p->d, st, "num_turns") >= 0);
    assert_true(json_obj_get(&p->d, st, "usage") >= 0);
    return b;
}

static void expect_type(fx_t *f, int i, const char *type)
{
    if (i >= f->nev) fail_msg("event %d: want %s, have only %d events", i, type, f->nev);
    if (strcmp(f->ev[i].type, type) != 0)
        fail_msg("event %d: want %s, got %s %s", i, type, f->ev[i].type, f->ev[i].data);
}

static int input(fx_t *f, const char *body)
{
    return f->ops->input(f->w, body, strlen(body));
}

/* Checks one text turn starting at event `from`: message.start, deltas,
 * message.end, message, done. Returns the index after done. */
static int expect_text_turn(fx_t *f, int from, const char *text, bool success)
{
    int i = from;
    expect_type(f, i, "message.start");
    char id[64];
    snprintf(id, sizeof(id), "%s", str_of(&f->ev[i], "id"));
    assert_true(strlen(id) > 0);
    assert_string_equal(str_of(&f->ev[i], "role"), "assistant");
    assert_string_equal(str_of(&f->ev[i], "content_type"), "text");
    i++;
    size_t cap = strlen(text) + 1;
    char *acc = calloc(1, cap + 1024);
    size_t n = 0;
    int deltas = 0;
    while (i < f->nev && strcmp(f->ev[i].type, "message.delta") == 0) {
        assert_string_equal(str_of(&f->ev[i], "message_id"), id);
        const char *c = str_of(&f->ev[i], "content");
        assert_true(strlen(c) > 0);
        assert_true(n + strlen(c) <= cap + 1000);
        memcpy(acc + n, c, strlen(c));
        n += strlen(c);
        i++;
        deltas++;
    }
    acc[n] = '\0';
    assert_string_equal(acc, text);
    free(acc);
    assert_true(deltas > 0 || text[0] == '\0');
    expect_type(f, i, "message.end");
    assert_string_equal(str_of(&f->ev[i], "message_id"), id);
    i++;
    expect_type(f, i, "message");
    assert_string_equal(str_of(&f->ev[i], "id"), id);
    assert_string_equal(str_of(&f->ev[i], "role"), "assistant");
    assert_string_equal(str_of(&f->ev[i], "content"), text);
    assert_string_equal(str_of(&f->ev[i], "content_type"), "text");
    i++;
    expect_type(f, i, "done");
    assert_int_equal(bool_of(&f->ev[i], "success"), success);
    assert_false(stats_interrupted(&f->ev[i]));
    return i + 1;
}

/* ---- tests ----------------------------------------------------------- */

static void test_hello(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(f->nev, 0); /* start emits nothing */
    assert_int_equal(input(f, "hello big world"), 0);
    run_until(f, "done", 1);
    int end = expect_text_turn(f, 0, "hello big world", true);
    assert_int_equal(end, f->nev);
    /* one delta per word, spaces kept with the word before */
    assert_int_equal(count_type(f, "message.delta"), 3);
    assert_string_equal(str_of(&f->ev[1], "content"), "hello ");
    assert_string_equal(str_of(&f->ev[2], "content"), "big ");
    assert_string_equal(str_of(&f->ev[3], "content"), "world");
    /* nothing more without input */
    run_for(f, 20);
    assert_int_equal(f->nev, end);
    /* second turn: new message id */
    char id1[64];
    snprintf(id1, sizeof(id1), "%s", str_of(&f->ev[0], "id"));
    assert_int_equal(input(f, "again"), 0);
    run_until(f, "done", 2);
    assert_int_equal(expect_text_turn(f, end, "again", true), f->nev);
    assert_string_not_equal(str_of(&f->ev[end], "id"), id1);
    assert_int_equal(f->exits, 0);
}

static void test_escapes(void **state)
{
    fx_t *f = *state;
    start(f);
    /* body as it sits inside a JSON string literal */
    assert_int_equal(input(f, "a\\\"b\\nc \\u00e9 \\\\ \\/ \\ud83d\\ude00 \xe2\x82\xac"), 0);
    run_until(f, "done", 1);
    assert_int_equal(
        expect_text_turn(f, 0, "a\"b\nc \xc3\xa9 \\ / \xf0\x9f\x98\x80 \xe2\x82\xac", true),
        f->nev);
}

static void test_bad_body(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_true(input(f, "bad \\x escape") < 0);
    assert_true(input(f, "lone \\ud800") < 0);
    assert_true(input(f, "quote \" inside") < 0);
    run_for(f, 10);
    assert_int_equal(f->nev, 0);
    /* still usable */
    assert_int_equal(input(f, "ok"), 0);
    run_until(f, "done", 1);
    assert_int_equal(expect_text_turn(f, 0, "ok", true), f->nev);
}

static void test_busy(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "one two three"), 0);
    assert_int_equal(input(f, "second"), -EBUSY); /* one turn at a time */
    run_until(f, "done", 1);
    assert_int_equal(expect_text_turn(f, 0, "one two three", true), f->nev);
}

/* The next turn may be sent from inside the sink's `done` callback (that is
 * how the core drains its queue): the agent must take it. */
static void test_input_from_done_callback(void **state)
{
    fx_t *f = *state;
    start(f);
    f->next_on_done = "second turn";
    f->next_rc = 12345;
    assert_int_equal(input(f, "first"), 0);
    run_until(f, "done", 1);
    assert_int_equal(f->next_rc, 0);
    run_until(f, "done", 2);
    int i = expect_text_turn(f, 0, "first", true);
    assert_int_equal(expect_text_turn(f, i, "second turn", true), f->nev);
}

/* The same when `done` is emitted synchronously inside input() (the error
 * scenario): the nested turn must run to its own done, not be dropped. */
static void test_input_from_done_callback_error(void **state)
{
    fx_t *f = *state;
    start(f);
    f->next_on_done = "third";
    f->next_rc = 12345;
    assert_int_equal(input(f, "SCENARIO:error"), 0);
    assert_int_equal(f->next_rc, 0);
    run_until(f, "done", 2);
    expect_type(f, 0, "error");
    expect_type(f, 1, "done");
    assert_int_equal(expect_text_turn(f, 2, "third", true), f->nev);
}

static void test_long_1000(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:long 1000"), 0);
    run_until(f, "done", 1);
    char *want = malloc(8000);
    size_t n = 0;
    for (int i = 1; i <= 1000; i++)
        n += (size_t)sprintf(want + n, i > 1 ? " w%d" : "w%d", i);
    assert_int_equal(expect_text_turn(f, 0, want, true), f->nev);
    free(want);
    assert_int_equal(count_type(f, "message.delta"), 1000);
    assert_int_equal(f->nev, 1004); /* start, 1000 deltas, end, message, done */
    for (int i = 1; i <= 1000; i++) {
        char w[16];
        snprintf(w, sizeof(w), i < 1000 ? "w%d " : "w%d", i);
        assert_string_equal(str_of(&f->ev[i], "content"), w);
    }
}

static void test_paced_deltas(void **state)
{
    fx_t *f = *state;
    f->cfg.echo_delta_interval_ms = 20;
    start(f);
    uint64_t t0 = uv_hrtime();
    assert_int_equal(input(f, "SCENARIO:long 6"), 0);
    run_until(f, "done", 1);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    /* one delta per tick: 5 waits of 20 ms between 6 deltas */
    assert_true(ms >= 95);
    assert_int_equal(count_type(f, "message.delta"), 6);
    assert_int_equal(expect_text_turn(f, 0, "w1 w2 w3 w4 w5 w6", true), f->nev);
}

static void test_permission_allow(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:permission"), 0);
    run_for(f, 10);
    assert_int_equal(f->nev, 1);
    expect_type(f, 0, "permission_request");
    char id[64];
    snprintf(id, sizeof(id), "%s", str_of(&f->ev[0], "id"));
    assert_true(strlen(id) > 0);
    assert_string_equal(str_of(&f->ev[0], "tool_name"), "Bash");
    assert_true(strlen(str_of(&f->ev[0], "description")) > 0);
    pdoc_t *p = pd_of(&f->ev[0]);
    int inp = json_obj_get(&p->d, 0, "input");
    assert_int_equal(json_type(&p->d, inp), JSON_OBJ);
    assert_true(json_str_eq(&p->d, json_obj_get(&p->d, inp, "command"), "echo hi"));
    int args = json_obj_get(&p->d, 0, "args");
    assert_int_equal(json_type(&p->d, args), JSON_ARR);
    assert_int_equal(p->d.tok[args].size, 1);
    assert_true(json_str_eq(&p->d, json_arr_get(&p->d, args, 0), "{\"command\":\"echo hi\"}"));
    /* the turn is not over: no done, and input is refused */
    assert_int_equal(count_type(f, "done"), 0);
    assert_int_equal(input(f, "x"), -EBUSY);

    /* unknown id */
    assert_int_equal(f->ops->permission(f->w, "perm_nope", true, NULL, NULL, 0), -ENOENT);
    assert_int_equal(f->ops->permission(f->w, "", true, NULL, NULL, 0), -ENOENT);
    assert_int_equal(f->nev, 1);

    assert_int_equal(f->ops->permission(f->w, id, true, NULL, NULL, 0), 0);
    /* answered: the same id again is unknown */
    assert_int_equal(f->ops->permission(f->w, id, true, NULL, NULL, 0), -ENOENT);
    run_until(f, "done", 1);
    expect_type(f, 1, "tool_call");
    assert_string_equal(str_of(&f->ev[1], "name"), "Bash");
    char tool_id[64];
    snprintf(tool_id, sizeof(tool_id), "%s", str_of(&f->ev[1], "id"));
    p = pd_of(&f->ev[1]);
    inp = json_obj_get(&p->d, 0, "input");
    assert_true(json_str_eq(&p->d, json_obj_get(&p->d, inp, "command"), "echo hi"));
    expect_type(f, 2, "tool_result");
    assert_string_equal(str_of(&f->ev[2], "id"), tool_id);
    assert_string_equal(str_of(&f->ev[2], "output"), "hi\n");
    assert_int_equal(expect_text_turn(f, 3, "permission granted", true), f->nev);
    /* after the turn, the old id stays unknown */
    assert_int_equal(f->ops->permission(f->w, id, true, NULL, NULL, 0), -ENOENT);
}

static void test_permission_updated_input(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:permission"), 0);
    expect_type(f, 0, "permission_request");
    char id[64];
    snprintf(id, sizeof(id), "%s", str_of(&f->ev[0], "id"));
    const char *upd = "{\"command\":\"ls -la\"}";
    assert_int_equal(f->ops->permission(f->w, id, true, NULL, upd, strlen(upd)), 0);
    expect_type(f, 1, "tool_call");
    pdoc_t *p = pd_of(&f->ev[1]);
    int inp = json_obj_get(&p->d, 0, "input");
    assert_true(json_str_eq(&p->d, json_obj_get(&p->d, inp, "command"), "ls -la"));
    run_until(f, "done", 1);
    /* a second permission turn gets a new id */
    assert_int_equal(input(f, "SCENARIO:permission"), 0);
    int k = f->nev - 1;
    expect_type(f, k, "permission_request");
    assert_string_not_equal(str_of(&f->ev[k], "id"), id);
}

static void test_permission_deny(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:permission"), 0);
    expect_type(f, 0, "permission_request");
    char id[64];
    snprintf(id, sizeof(id), "%s", str_of(&f->ev[0], "id"));
    assert_int_equal(f->ops->permission(f->w, id, false, "not \"today\"", NULL, 0), 0);
    run_until(f, "done", 1);
    assert_int_equal(count_type(f, "tool_call"), 0);
    assert_int_equal(count_type(f, "tool_result"), 0);
    assert_int_equal(expect_text_turn(f, 1, "permission denied: not \"today\"", true), f->nev);

    /* deny without a reason */
    int base = f->nev;
    assert_int_equal(input(f, "SCENARIO:permission"), 0);
    snprintf(id, sizeof(id), "%s", str_of(&f->ev[base], "id"));
    assert_int_equal(f->ops->permission(f->w, id, false, NULL, NULL, 0), 0);
    run_until(f, "done", 2);
    assert_int_equal(expect_text_turn(f, base + 1, "permission denied: denied by user", true),
                     f->nev);
}

static void test_permission_without_request(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(f->ops->permission(f->w, "perm_1", true, NULL, NULL, 0), -ENOENT);
    assert_int_equal(input(f, "streaming now"), 0);
    assert_int_equal(f->ops->permission(f->w, "perm_1", true, NULL, NULL, 0), -ENOENT);
    run_until(f, "done", 1);
    assert_int_equal(count_type(f, "tool_call"), 0);
}

static void test_error(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:error"), 0);
    run_for(f, 10);
    assert_int_equal(f->nev, 2);
    expect_type(f, 0, "error");
    assert_string_equal(str_of(&f->ev[0], "code"), "INTERNAL_ERROR");
    assert_true(strlen(str_of(&f->ev[0], "message")) > 0);
    expect_type(f, 1, "done");
    assert_false(bool_of(&f->ev[1], "success"));
    assert_false(stats_interrupted(&f->ev[1]));
    assert_int_equal(f->exits, 0);
    /* the agent lives on */
    assert_int_equal(input(f, "fine"), 0);
    run_until(f, "done", 2);
    assert_int_equal(expect_text_turn(f, 2, "fine", true), f->nev);
}

static void test_tool_and_reasoning(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:tool"), 0);
    run_until(f, "done", 1);
    expect_type(f, 0, "tool_call");
    expect_type(f, 1, "tool_result");
    assert_string_equal(str_of(&f->ev[0], "id"), str_of(&f->ev[1], "id"));
    int i = expect_text_turn(f, 2, "tool done", true);
    assert_int_equal(input(f, "SCENARIO:reasoning"), 0);
    run_until(f, "done", 2);
    expect_type(f, i, "reasoning");
    assert_true(strlen(str_of(&f->ev[i], "content")) > 0);
    assert_int_equal(expect_text_turn(f, i + 1, "thought about it", true), f->nev);
}

static void test_crash(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:crash"), 0);
    run_until_exit(f);
    assert_int_equal(f->exits, 1);
    assert_int_equal(f->exit_signo, 9);
    assert_int_equal(f->exit_status, -1);
    assert_false(f->exit_why_null);
    assert_true(strlen(f->exit_why) > 0);
    /* a partial turn: start, some deltas, the cut-off message closed (end and
     * the text so far, as the claude adapter does on a death), never done */
    expect_type(f, 0, "message.start");
    assert_true(count_type(f, "message.delta") > 0);
    assert_int_equal(count_type(f, "message.end"), 1);
    assert_int_equal(count_type(f, "message"), 1);
    assert_int_equal(count_type(f, "done"), 0);
    int n = f->nev;
    /* the handle is gone: the loop ends on its own with no further callbacks */
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(f->nev, n);
    assert_int_equal(f->exits, 1);
    assert_int_equal(f->events_after_exit, 0);
}

static void test_interrupt_slow(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:slow 50"), 0);
    run_until(f, "message.delta", 2);
    int deltas = count_type(f, "message.delta");
    assert_true(deltas < 50);
    char partial[1024] = "";
    for (int i = 0; i < f->nev; i++)
        if (strcmp(f->ev[i].type, "message.delta") == 0)
            strncat(partial, str_of(&f->ev[i], "content"), sizeof(partial) - strlen(partial) - 1);
    int before = f->nev;
    assert_int_equal(f->ops->interrupt(f->w), 0);
    /* the turn ends right away */
    assert_int_equal(f->nev, before + 3);
    expect_type(f, before, "message.end");
    expect_type(f, before + 1, "message");
    assert_string_equal(str_of(&f->ev[before + 1], "content"), partial);
    assert_true(strlen(partial) > 0);
    assert_null(strstr(partial, "w50"));
    expect_type(f, before + 2, "done");
    assert_false(bool_of(&f->ev[before + 2], "success"));
    assert_true(stats_interrupted(&f->ev[before + 2]));
    /* no more deltas after the interrupt */
    run_for(f, 250);
    assert_int_equal(f->nev, before + 3);
    /* interrupt when idle: nothing */
    assert_int_equal(f->ops->interrupt(f->w), 0);
    assert_int_equal(f->nev, before + 3);
    /* next turn works */
    assert_int_equal(input(f, "after"), 0);
    run_until(f, "done", 2);
    assert_int_equal(expect_text_turn(f, before + 3, "after", true), f->nev);
    assert_int_equal(f->exits, 0);
}

static void test_interrupt_permission(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:permission"), 0);
    char id[64];
    snprintf(id, sizeof(id), "%s", str_of(&f->ev[0], "id"));
    assert_int_equal(f->ops->interrupt(f->w), 0);
    assert_int_equal(f->nev, 2);
    expect_type(f, 1, "done");
    assert_false(bool_of(&f->ev[1], "success"));
    assert_true(stats_interrupted(&f->ev[1]));
    /* the prompt is withdrawn */
    assert_int_equal(f->ops->permission(f->w, id, true, NULL, NULL, 0), -ENOENT);
}

static void test_stop_idle(void **state)
{
    fx_t *f = *state;
    start(f);
    do_stop(f);
    assert_int_equal(f->exits, 0); /* never synchronously inside stop() */
    do_stop(f);                    /* idempotent */
    assert_int_equal(f->exits, 0);
    assert_true(input(f, "late") < 0); /* stopping: no new turns */
    run_until_exit(f);
    assert_int_equal(f->exits, 1);
    assert_int_equal(f->exit_status, 0);
    assert_int_equal(f->exit_signo, 0);
    assert_true(f->exit_why_null);
    assert_int_equal(f->nev, 0);
}

static void test_stop_mid_turn(void **state)
{
    fx_t *f = *state;
    f->cfg.echo_delta_interval_ms = 1;
    start(f);
    assert_int_equal(input(f, "SCENARIO:long 1000"), 0);
    run_until(f, "message.delta", 3);
    do_stop(f);
    assert_int_equal(f->exits, 0);
    int n = f->nev;
    run_until_exit(f);
    assert_int_equal(f->exits, 1);
    assert_int_equal(f->nev, n); /* nothing between stop and exit */
    assert_int_equal(count_type(f, "done"), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(f->exits, 1);
}

static void test_stop_during_permission(void **state)
{
    fx_t *f = *state;
    start(f);
    assert_int_equal(input(f, "SCENARIO:permission"), 0);
    char id[64];
    snprintf(id, sizeof(id), "%s", str_of(&f->ev[0], "id"));
    do_stop(f);
    assert_int_equal(f->exits, 0);
    /* an answer after stop is not acted on */
    assert_true(f->ops->permission(f->w, id, true, NULL, NULL, 0) < 0);
    run_until_exit(f);
    assert_int_equal(f->nev, 1);
}

static void test_unknown_type(void **state)
{
    (void)state;
    assert_null(wkr_lookup("nope"));
    assert_null(wkr_lookup(""));
    assert_null(wkr_lookup("Echo"));
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
    const struct CMUnitTest tests[] = {
        T(test_hello),
        T(test_escapes),
        T(test_bad_body),
        T(test_busy),
        T(test_input_from_done_callback),
        T(test_input_from_done_callback_error),
        T(test_long_1000),
        T(test_paced_deltas),
        T(test_permission_allow),
        T(test_permission_updated_input),
        T(test_permission_deny),
        T(test_permission_without_request),
        T(test_error),
        T(test_tool_and_reasoning),
        T(test_crash),
        T(test_interrupt_slow),
        T(test_interrupt_permission),
        T(test_stop_idle),
        T(test_stop_mid_turn),
        T(test_stop_during_permission),
        cmocka_unit_test(test_unknown_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
