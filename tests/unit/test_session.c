/*
 * test_session.c - the session state machine (src/core/session.c) through a
 * real gateway: a real uv loop, the real SQLite store in a mkdtemp dir, and
 * the built-in echo agent. Events are read back from the session's stream
 * (stream_get + the frame's JSON), exactly what connections would send.
 *
 * Must never depend on batch boundaries of the store or on wall-clock
 * timing beyond "the loop eventually runs the callback".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aep/aep.h"
#include "core/gateway.h"
#include "core/session.h"
#include "core/stream.h"
#include "store/store.h"
#include "util/config.h"
#include "util/json.h"
#include "util/log.h"
#include "util/uuid.h"
#include "worker/worker.h"

/* ---- fixture ----------------------------------------------------------- */

typedef struct fx {
    char dir[256];
    char work[300];
    hp_config_t cfg;
    uv_loop_t loop;
    gateway_t gw;
    bool gw_up;
} fx_t;

static int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    log_set_level(LOG_ERROR);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof(f->dir), "%s/hotplex-session-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->work, sizeof(f->work), "%s/work", f->dir);
    assert_int_equal(mkdir(f->work, 0755), 0);
    config_defaults(&f->cfg);
    snprintf(f->cfg.data_dir, sizeof(f->cfg.data_dir), "%s/data", f->dir);
    f->cfg.echo_delta_interval_ms = 0;
    f->cfg.session_ring_bytes = (size_t)1 << 30; /* keep every frame readable */
    assert_int_equal(uv_loop_init(&f->loop), 0);
    *state = f;
    return 0;
}

static void gw_up(fx_t *f)
{
    char err[256] = "";
    int rc = gw_init(&f->gw, &f->cfg, &f->loop, err, sizeof(err));
    if (rc != 0) fail_msg("gw_init: %s", err);
    f->gw_up = true;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void run_once(fx_t *f)
{
    uv_run(&f->loop, UV_RUN_ONCE);
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    if (f->gw_up) {
        gw_shutdown_begin(&f->gw);
        for (uint64_t t0 = uv_hrtime(); f->gw.nagents > 0;) {
            if (uv_hrtime() - t0 > 5000000000ull) fail_msg("agents did not stop");
            run_once(f);
        }
        gw_free(&f->gw);
    }
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static sess_t *new_session(fx_t *f)
{
    char id[UUID_STR_LEN];
    uuid_v4(id);
    sess_t *s = sess_create(&f->gw, id, "tester", "echo", wkr_lookup("echo"), "", f->work);
    assert_non_null(s);
    assert_ptr_equal(sess_find(&f->gw, id), s);
    assert_string_equal(s->id, id);
    assert_int_equal(s->state, SESS_CREATED);
    assert_true(s->stream.seq == 0);
    return s;
}

/* ---- reading the stream -------------------------------------------------- */

typedef struct ev {
    int64_t seq;
    char type[64];
    json_doc_t d;
    json_tok_t t[128];
    int data; /* token of event.data */
    char *js;
} ev_t;

/* Parses the committed event `seq` (must still be in the window). */
static ev_t *ev_get(sess_t *s, int64_t seq)
{
    static ev_t e;
    free(e.js);
    e.js = NULL;
    frame_t *fr = stream_get(&s->stream, seq);
    if (!fr)
        fail_msg("seq %lld not in the window (first %lld, last %lld)", (long long)seq,
                 (long long)stream_first(&s->stream), (long long)s->stream.seq);
    assert_true(fr->seq == seq);
    e.js = strndup(frame_json(fr), fr->len);
    assert_int_equal(json_parse(&e.d, e.js, fr->len, e.t, 128), 0);
    e.seq = seq;
    int64_t v;
    assert_int_equal(json_get_i64(&e.d, json_obj_get(&e.d, 0, "seq"), &v), 0);
    assert_true(v == seq);
    assert_true(json_str_eq(&e.d, json_obj_get(&e.d, 0, "session_id"), s->id));
    assert_true(json_str_eq(&e.d, json_obj_get(&e.d, 0, "version"), "aep/v1"));
    int ev = json_obj_get(&e.d, 0, "event");
    assert_true(json_str_copy(&e.d, json_obj_get(&e.d, ev, "type"), e.type, sizeof(e.type)) > 0);
    e.data = json_obj_get(&e.d, ev, "data");
    assert_int_equal(json_type(&e.d, e.data), JSON_OBJ);
    return &e;
}

static const char *ev_str(ev_t *e, const char *key)
{
    static char out[4096];
    int i = json_obj_get(&e->d, e->data, key);
    if (i < 0) return NULL;
    assert_int_equal(json_type(&e->d, i), JSON_STR);
    assert_true(json_str_copy(&e->d, i, out, sizeof(out)) >= 0);
    return out;
}

static bool ev_bool(ev_t *e, int obj, const char *key)
{
    int i = json_obj_get(&e->d, obj, key);
    if (i < 0) fail_msg("%s: no %s in %s", e->type, key, e->js);
    bool b;
    assert_int_equal(json_get_bool(&e->d, i, &b), 0);
    return b;
}

static void expect_ev(sess_t *s, int64_t seq, const char *type)
{
    if (seq > s->stream.seq)
        fail_msg("seq %lld: want %s, stream ends at %lld", (long long)seq, type,
                 (long long)s->stream.seq);
    ev_t *e = ev_get(s, seq);
    if (strcmp(e->type, type) != 0)
        fail_msg("seq %lld: want %s, got %s", (long long)seq, type, e->js);
}

static void expect_state(sess_t *s, int64_t seq, const char *state, const char *message)
{
    expect_ev(s, seq, "state");
    ev_t *e = ev_get(s, seq);
    assert_string_equal(ev_str(e, "state"), state);
    if (message) {
        const char *m = ev_str(e, "message");
        if (!m || strcmp(m, message) != 0)
            fail_msg("seq %lld: want message \"%s\": %s", (long long)seq, message, e->js);
    } else if (ev_str(e, "message")) {
        fail_msg("seq %lld: unexpected message: %s", (long long)seq, e->js);
    }
    assert_non_null(strstr(e->js, "\"priority\":\"control\""));
}

static int count_type(sess_t *s, int64_t from, const char *type)
{
    int n = 0;
    for (int64_t q = from; q <= s->stream.seq; q++)
        n += strcmp(ev_get(s, q)->type, type) == 0;
    return n;
}

static int64_t find_type(sess_t *s, int64_t from, const char *type)
{
    for (int64_t q = from; q <= s->stream.seq; q++)
        if (strcmp(ev_get(s, q)->type, type) == 0) return q;
    return -1;
}

/* One state event per transition: no two state events in a row (with
 * anything in between) carry the same state unless forced with a message. */
static void check_no_repeated_states(sess_t *s)
{
    char prev[32] = "created";
    for (int64_t q = 1; q <= s->stream.seq; q++) {
        ev_t *e = ev_get(s, q);
        if (strcmp(e->type, "state") != 0) continue;
        char cur[32];
        snprintf(cur, sizeof(cur), "%s", ev_str(e, "state"));
        bool has_msg = ev_str(e, "message") != NULL;
        if (strcmp(cur, prev) == 0 && !has_msg)
            fail_msg("seq %lld: repeated state %s", (long long)q, cur);
        snprintf(prev, sizeof(prev), "%s", cur);
    }
}

/* Seqs are 1..N without gaps. */
static void check_contiguous(sess_t *s)
{
    for (int64_t q = stream_first(&s->stream); q <= s->stream.seq; q++)
        assert_true(stream_get(&s->stream, q)->seq == q);
}

/* ---- driving the loop -------------------------------------------------- */

/* Every wait is bounded in wall time: a broken session fails fast instead of
 * hanging the suite (the cron timer wakes the loop at least every 100 ms). */
#define WAIT_NS 5000000000ull
#define PAST(t0) (uv_hrtime() - (t0) > WAIT_NS)

static void run_until_dones(fx_t *f, sess_t *s, int n)
{
    for (uint64_t t0_ = uv_hrtime(); count_type(s, 1, "done") < n;) {
        if (PAST(t0_))
            fail_msg("timeout waiting for %d done (have %d)", n, count_type(s, 1, "done"));
        run_once(f);
    }
}

static void run_until_seq(fx_t *f, sess_t *s, int64_t seq)
{
    for (uint64_t t0_ = uv_hrtime(); s->stream.seq < seq;) {
        if (PAST(t0_)) fail_msg("timeout waiting for seq %lld", (long long)seq);
        run_once(f);
    }
}

static void run_until_no_agent(fx_t *f, sess_t *s)
{
    for (uint64_t t0_ = uv_hrtime(); s->agent;) {
        if (PAST(t0_)) fail_msg("timeout waiting for the agent to exit");
        run_once(f);
    }
}

static void run_until_durable(fx_t *f, sess_t *s)
{
    for (uint64_t t0_ = uv_hrtime(); s->stream.durable < s->stream.seq;) {
        if (PAST(t0_)) fail_msg("timeout waiting for durability");
        run_once(f);
    }
}

/* Runs the loop a few rounds so anything pending would surface. */
static void settle(fx_t *f)
{
    for (int i = 0; i < 5; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
}

static aep_code_t input(sess_t *s, const char *text)
{
    char err[256] = "";
    aep_code_t rc = sess_input(s, text, strlen(text), err, sizeof(err));
    if (rc != AEP_OK) assert_true(strlen(err) > 0);
    return rc;
}

static aep_code_t control(sess_t *s, const char *action)
{
    char err[256] = "";
    aep_code_t rc = sess_control(s, action, err, sizeof(err));
    if (rc != AEP_OK) assert_true(strlen(err) > 0);
    return rc;
}

static void start(sess_t *s)
{
    char err[256] = "";
    aep_code_t rc = sess_ensure_agent(s, err, sizeof(err));
    if (rc != AEP_OK) fail_msg("sess_ensure_agent: %s", err);
}

/* Checks a plain text turn from `from`: message.start .. done{success}. Returns the seq after done.
 */
static int64_t expect_turn(sess_t *s, int64_t from, const char *text)
{
    int64_t q = from;
    expect_ev(s, q++, "message.start");
    char acc[4096] = "";
    while (q <= s->stream.seq && strcmp(ev_get(s, q)->type, "message.delta") == 0)
        strncat(acc, ev_str(ev_get(s, q++), "content"), sizeof(acc) - strlen(acc) - 1);
    assert_string_equal(acc, text);
    expect_ev(s, q++, "message.end");
    expect_ev(s, q, "message");
    assert_string_equal(ev_str(ev_get(s, q), "content"), text);
    q++;
    expect_ev(s, q, "done");
    ev_t *e = ev_get(s, q);
    assert_true(ev_bool(e, e->data, "success"));
    return q + 1;
}

/* ---- tests ------------------------------------------------------------- */

static void test_start_running(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    assert_int_equal(gw_session_count(&f->gw), 0);
    sess_t *s = new_session(f);
    assert_int_equal(gw_session_count(&f->gw), 1);
    start(s);
    assert_non_null(s->agent);
    assert_int_equal(f->gw.nagents, 1);
    assert_int_equal(s->state, SESS_RUNNING);
    assert_true(s->stream.seq == 1);
    expect_state(s, 1, "running", NULL);
    /* committed but not yet durable: the store answers through the loop */
    assert_true(s->stream.durable == 0);
    /* ensuring again is a no-op */
    start(s);
    assert_true(s->stream.seq == 1);
    assert_int_equal(f->gw.nagents, 1);
    run_until_durable(f, s);
    assert_true(s->stream.durable == 1);
    settle(f);
    assert_true(s->stream.seq == 1); /* the agent says nothing until asked */
}

static void test_turn_then_idle(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(input(s, "hello big world"), AEP_OK);
    run_until_dones(f, s, 1);
    run_until_seq(f, s, 9);
    /* running(1), start(2), 3 deltas(3-5), end(6), message(7), done(8), idle(9) */
    assert_true(expect_turn(s, 2, "hello big world") == 9);
    expect_state(s, 9, "idle", NULL);
    assert_int_equal(s->state, SESS_IDLE);
    assert_true(s->agent_started);
    settle(f);
    assert_true(s->stream.seq == 9);
    /* the next turn: running again, then idle */
    assert_int_equal(input(s, "again"), AEP_OK);
    run_until_dones(f, s, 2);
    run_until_seq(f, s, 16);
    /* running(10), start(11), delta(12), end(13), message(14), done(15), idle(16) */
    expect_state(s, 10, "running", NULL);
    assert_true(expect_turn(s, 11, "again") == 16);
    expect_state(s, 16, "idle", NULL);
    check_no_repeated_states(s);
    check_contiguous(s);
    assert_int_equal(count_type(s, 1, "state"), 4);
}

static void test_input_starts_agent(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    assert_null(s->agent);
    assert_int_equal(input(s, "hi"), AEP_OK);
    assert_non_null(s->agent);
    expect_state(s, 1, "running", NULL);
    run_until_dones(f, s, 1);
    run_until_seq(f, s, 7);
    assert_true(expect_turn(s, 2, "hi") == 7);
    expect_state(s, 7, "idle", NULL);
    assert_int_equal(count_type(s, 1, "state"), 2);
}

static void test_queued_inputs_in_order(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    run_until_durable(f, s);
    assert_int_equal(input(s, "one"), AEP_OK);
    assert_int_equal(input(s, "two 2"), AEP_OK);
    assert_int_equal(input(s, "three 3 3"), AEP_OK);
    assert_int_equal(s->inq_len, 2); /* the first is with the agent */
    run_until_dones(f, s, 3);
    settle(f);
    /* one done per input, each right after its own message, in order */
    const char *want[] = {"one", "two 2", "three 3 3"};
    int k = 0;
    for (int64_t q = 1; q <= s->stream.seq; q++) {
        ev_t *e = ev_get(s, q);
        if (strcmp(e->type, "message.start") == 0) {
            assert_true(k < 3);
            int64_t nq = expect_turn(s, q, want[k]);
            k++;
            q = nq - 1;
        }
    }
    assert_int_equal(k, 3);
    assert_int_equal(count_type(s, 1, "done"), 3);
    assert_int_equal(s->inq_len, 0);
    /* the stream ends with idle and no state repeats */
    expect_state(s, s->stream.seq, "idle", NULL);
    assert_int_equal(s->state, SESS_IDLE);
    check_no_repeated_states(s);
    check_contiguous(s);
}

static void test_max_queued_inputs(void **state)
{
    fx_t *f = *state;
    f->cfg.max_queued_inputs = 2;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    /* a turn that waits for a permission answer keeps the agent busy */
    assert_int_equal(input(s, "SCENARIO:permission"), AEP_OK);
    int64_t pr = find_type(s, 1, "permission_request");
    assert_true(pr > 0);
    char perm_id[64];
    snprintf(perm_id, sizeof(perm_id), "%s", ev_str(ev_get(s, pr), "id"));
    assert_int_equal(input(s, "a"), AEP_OK);
    assert_int_equal(input(s, "b"), AEP_OK);
    int64_t seq = s->stream.seq;
    char err[256] = "";
    assert_int_equal(sess_input(s, "c", 1, err, sizeof(err)), AEP_SESSION_BUSY);
    assert_non_null(strstr(err, "max_queued_inputs=2"));
    assert_true(s->stream.seq == seq); /* a refused input commits nothing */
    assert_int_equal(s->inq_len, 2);

    /* unknown permission id */
    assert_int_equal(sess_permission(s, "perm_nope", true, NULL, NULL, 0, err, sizeof(err)),
                     AEP_INVALID_MESSAGE);
    assert_non_null(strstr(err, "perm_nope"));
    /* deny: the turn ends, then the queue drains in order */
    assert_int_equal(sess_permission(s, perm_id, false, "no", NULL, 0, err, sizeof(err)), AEP_OK);
    run_until_dones(f, s, 3);
    settle(f);
    int64_t q = find_type(s, pr, "message.start");
    q = expect_turn(s, q, "permission denied: no");
    q = find_type(s, q, "message.start");
    q = expect_turn(s, q, "a");
    q = find_type(s, q, "message.start");
    q = expect_turn(s, q, "b");
    assert_int_equal(count_type(s, 1, "done"), 3);
    /* room again */
    assert_int_equal(input(s, "c"), AEP_OK);
    run_until_dones(f, s, 4);
}

static void test_terminate_then_input_restarts(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(input(s, "x"), AEP_OK);
    run_until_dones(f, s, 1);
    settle(f);
    assert_int_equal(s->state, SESS_IDLE);
    int64_t before = s->stream.seq;

    assert_int_equal(control(s, "terminate"), AEP_OK);
    run_until_no_agent(f, s);
    settle(f);
    assert_true(s->stream.seq == before + 1); /* exactly one event: the state */
    expect_state(s, before + 1, "terminated", "terminated by client");
    assert_int_equal(s->state, SESS_TERMINATED);
    assert_int_equal(f->gw.nagents, 0);
    /* terminated again: same state, no event */
    assert_int_equal(control(s, "terminate"), AEP_OK);
    assert_true(s->stream.seq == before + 1);
    assert_int_equal(control(s, "gc"), AEP_OK);
    assert_true(s->stream.seq == before + 1);

    /* the next input brings the agent back (resumed) and works */
    assert_int_equal(input(s, "back again"), AEP_OK);
    assert_non_null(s->agent);
    expect_state(s, before + 2, "running", "resumed");
    run_until_dones(f, s, 2);
    run_until_seq(f, s, before + 2 + 7);
    int64_t q = expect_turn(s, before + 3, "back again");
    expect_state(s, q, "idle", NULL);
    check_no_repeated_states(s);
    check_contiguous(s);
}

static void test_terminate_mid_turn(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(input(s, "SCENARIO:permission"), AEP_OK);
    int64_t pr = find_type(s, 1, "permission_request");
    assert_true(pr > 0);
    assert_int_equal(control(s, "terminate"), AEP_OK);
    assert_true(s->stream.seq == pr); /* the stop completes later */
    run_until_no_agent(f, s);
    settle(f);
    /* the turn ends with an error and exactly one done, then the state */
    expect_ev(s, pr + 1, "error");
    assert_string_equal(ev_str(ev_get(s, pr + 1), "code"), "SESSION_TERMINATED");
    expect_ev(s, pr + 2, "done");
    ev_t *e = ev_get(s, pr + 2);
    assert_false(ev_bool(e, e->data, "success"));
    expect_state(s, pr + 3, "terminated", "terminated by client");
    assert_true(s->stream.seq == pr + 3);
    assert_int_equal(count_type(s, 1, "done"), 1);
}

static void test_reset(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(input(s, "x"), AEP_OK);
    run_until_dones(f, s, 1);
    settle(f);
    assert_int_equal(s->state, SESS_IDLE);
    assert_true(s->agent_started);
    char old_sid[37];
    memcpy(old_sid, s->agent_sid, sizeof(old_sid));
    assert_string_equal(old_sid, s->id);
    int64_t before = s->stream.seq;

    assert_int_equal(control(s, "reset"), AEP_OK);
    for (uint64_t t0_ = uv_hrtime(); s->stream.seq == before;) {
        if (PAST(t0_)) fail_msg("no event after reset");
        run_once(f);
    }
    settle(f);
    assert_true(s->stream.seq == before + 1);
    expect_state(s, before + 1, "running", "context_reset");
    assert_int_equal(s->state, SESS_RUNNING);
    assert_non_null(s->agent);
    assert_int_equal(f->gw.nagents, 1);
    assert_false(s->agent_started);
    assert_string_not_equal(s->agent_sid, old_sid);
    assert_true(uuid_is_valid(s->agent_sid));
    /* the fresh agent takes turns */
    assert_int_equal(input(s, "fresh"), AEP_OK);
    run_until_dones(f, s, 2);
    run_until_seq(f, s, before + 1 + 6);
    int64_t q = expect_turn(s, before + 2, "fresh"); /* already running: no state event */
    expect_state(s, q, "idle", NULL);

    /* reset without an agent starts one right away */
    assert_int_equal(control(s, "terminate"), AEP_OK);
    run_until_no_agent(f, s);
    settle(f);
    before = s->stream.seq;
    assert_int_equal(control(s, "reset"), AEP_OK);
    assert_non_null(s->agent);
    assert_true(s->stream.seq == before + 1);
    expect_state(s, before + 1, "running", "context_reset");
    /* and once more while running: forced event */
    assert_int_equal(control(s, "reset"), AEP_OK);
    run_until_seq(f, s, before + 2);
    settle(f);
    assert_true(s->stream.seq == before + 2);
    expect_state(s, before + 2, "running", "context_reset");
    check_contiguous(s);
}

/* An input sent right after a reset (before the old agent is gone) is
 * answered by the fresh agent: every input ends in exactly one done. */
static void test_input_during_reset(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(control(s, "reset"), AEP_OK);
    assert_int_equal(input(s, "right after reset"), AEP_OK);
    uint64_t t0 = uv_hrtime();
    while (count_type(s, 1, "done") < 1) {
        if (uv_hrtime() - t0 > 2000000000ull)
            fail_msg("input sent during reset never ran (inq_len %d, agent %p, state %s)",
                     s->inq_len, (void *)s->agent, sess_state_name(s->state));
        run_once(f);
    }
    assert_int_equal(s->inq_len, 0);
}

/* Same for terminate: an input that arrives while the agent is stopping
 * is not lost (it restarts the agent or is answered). */
static void test_input_during_terminate(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(control(s, "terminate"), AEP_OK);
    assert_int_equal(input(s, "right after terminate"), AEP_OK);
    uint64_t t0 = uv_hrtime();
    while (count_type(s, 1, "done") < 1) {
        if (uv_hrtime() - t0 > 2000000000ull)
            fail_msg("input sent during terminate never ran (inq_len %d, agent %p, state %s)",
                     s->inq_len, (void *)s->agent, sess_state_name(s->state));
        run_once(f);
    }
    assert_int_equal(s->inq_len, 0);
}

/* A body the agent refuses (a lone surrogate passes the JSON grammar but
 * does not unescape) must not wedge the session: either the input is
 * refused with an error code, or its turn ends with a done. Later inputs work. */
static void test_input_refused_by_agent(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    aep_code_t rc = input(s, "bad \\ud800 body");
    if (rc == AEP_OK) {
        uint64_t t0 = uv_hrtime();
        while (count_type(s, 1, "done") < 1) {
            if (uv_hrtime() - t0 > 2000000000ull)
                fail_msg("input refused by the agent never ended (turn_active %d, inq_len %d)",
                         s->turn_active, s->inq_len);
            run_once(f);
        }
    }
    int dones = count_type(s, 1, "done");
    assert_int_equal(input(s, "good"), AEP_OK);
    run_until_dones(f, s, dones + 1);
}

static void test_delete(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(input(s, "x"), AEP_OK);
    run_until_dones(f, s, 1);
    settle(f);
    int64_t before = s->stream.seq;
    assert_int_equal(control(s, "delete"), AEP_OK);
    /* the state event is immediate and visible at once (terminal) */
    assert_true(s->stream.seq == before + 1);
    expect_state(s, before + 1, "deleted", "deleted by client");
    assert_true(s->stream.durable == s->stream.seq);
    assert_int_equal(s->state, SESS_DELETED);
    assert_int_equal(gw_session_count(&f->gw), 0);
    assert_ptr_equal(sess_find(&f->gw, s->id), s); /* tombstone */
    run_until_no_agent(f, s);
    settle(f);
    assert_true(s->stream.seq == before + 1); /* nothing after deleted */
    assert_int_equal(f->gw.nagents, 0);
    /* terminal: no agent, no input */
    char err[256];
    assert_int_equal(sess_ensure_agent(s, err, sizeof(err)), AEP_SESSION_NOT_FOUND);
    assert_int_equal(input(s, "y"), AEP_SESSION_NOT_FOUND);
    assert_true(s->stream.seq == before + 1);
    assert_int_equal(s->inq_len, 0);
}

static void test_delete_mid_turn(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(input(s, "SCENARIO:permission"), AEP_OK);
    assert_int_equal(input(s, "queued"), AEP_OK);
    assert_int_equal(control(s, "delete"), AEP_OK);
    int64_t del = s->stream.seq;
    expect_state(s, del, "deleted", "deleted by client");
    run_until_no_agent(f, s);
    settle(f);
    assert_true(s->stream.seq == del); /* no error/done/state after deleted */
    assert_int_equal(s->inq_len, 0);
}

static void test_crash_then_input(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(input(s, "SCENARIO:crash"), AEP_OK);
    run_until_no_agent(f, s);
    settle(f);
    assert_int_equal(f->gw.nagents, 0);
    expect_ev(s, 2, "message.start");
    int64_t err_q = find_type(s, 2, "error");
    assert_true(err_q > 5);
    /* the cut-off message is closed (end + the text so far) before the crash */
    for (int64_t q = 3; q < err_q - 2; q++)
        expect_ev(s, q, "message.delta");
    expect_ev(s, err_q - 2, "message.end");
    expect_ev(s, err_q - 1, "message");
    ev_t *e = ev_get(s, err_q);
    assert_string_equal(ev_str(e, "code"), "WORKER_CRASH");
    assert_non_null(strstr(ev_str(e, "message"), "signal 9"));
    expect_ev(s, err_q + 1, "done");
    e = ev_get(s, err_q + 1);
    assert_false(ev_bool(e, e->data, "success"));
    int stats = json_obj_get(&e->d, e->data, "stats");
    assert_true(json_str_eq(&e->d, json_obj_get(&e->d, stats, "reason"), "WORKER_CRASH"));
    expect_ev(s, err_q + 2, "state");
    e = ev_get(s, err_q + 2);
    assert_string_equal(ev_str(e, "state"), "terminated");
    assert_non_null(strstr(ev_str(e, "message"), "signal 9"));
    assert_true(s->stream.seq == err_q + 2);
    assert_int_equal(count_type(s, 1, "done"), 1);
    assert_int_equal(count_type(s, 1, "message.end"), 1);
    assert_int_equal(s->state, SESS_TERMINATED);

    /* the next input restarts the agent and works */
    int64_t before = s->stream.seq;
    assert_int_equal(input(s, "after crash"), AEP_OK);
    expect_ev(s, before + 1, "state");
    assert_string_equal(ev_str(ev_get(s, before + 1), "state"), "running");
    run_until_dones(f, s, 2);
    run_until_seq(f, s, before + 8);
    int64_t q = expect_turn(s, before + 2, "after crash");
    expect_state(s, q, "idle", NULL);
    check_no_repeated_states(s);
    check_contiguous(s);
}

static void test_interrupt(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    /* interrupt with no turn: nothing */
    assert_int_equal(control(s, "interrupt"), AEP_OK);
    assert_true(s->stream.seq == 1);
    assert_int_equal(input(s, "SCENARIO:slow 50"), AEP_OK);
    for (uint64_t t0_ = uv_hrtime(); count_type(s, 1, "message.delta") < 1;) {
        if (PAST(t0_)) fail_msg("no delta");
        run_once(f);
    }
    assert_int_equal(control(s, "interrupt"), AEP_OK);
    run_until_dones(f, s, 1);
    settle(f);
    int64_t d = find_type(s, 1, "done");
    expect_ev(s, d - 2, "message.end");
    expect_ev(s, d - 1, "message");
    ev_t *e = ev_get(s, d);
    assert_false(ev_bool(e, e->data, "success"));
    assert_true(ev_bool(e, json_obj_get(&e->d, e->data, "stats"), "interrupted"));
    expect_state(s, d + 1, "idle", NULL);
    assert_true(s->stream.seq == d + 1);
    assert_non_null(s->agent); /* the session and its agent stay */
    assert_int_equal(input(s, "go on"), AEP_OK);
    run_until_dones(f, s, 2);
}

static void test_unknown_action(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    char err[256] = "";
    assert_int_equal(sess_control(s, "bogus", err, sizeof(err)), AEP_PROTOCOL_VIOLATION);
    assert_string_equal(err, "unknown control action: bogus");
    assert_int_equal(sess_control(s, "", err, sizeof(err)), AEP_PROTOCOL_VIOLATION);
    assert_int_equal(sess_control(s, "Terminate", err, sizeof(err)), AEP_PROTOCOL_VIOLATION);
    assert_true(s->stream.seq == 1);
    assert_int_equal(s->state, SESS_RUNNING);
}

typedef struct readback {
    bool done;
    int rc, n;
    int64_t seqs[64];
    char *json[64];
} readback_t;

static void on_read(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                    const size_t *lens, int64_t oldest)
{
    (void)oldest;
    readback_t *r = ctx;
    r->done = true;
    r->rc = rc;
    r->n = n;
    for (int i = 0; i < n && i < 64; i++) {
        r->seqs[i] = seqs[i];
        r->json[i] = strndup(json[i], lens[i]);
    }
}

static void test_durability(void **state)
{
    fx_t *f = *state;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(input(s, "a b c"), AEP_OK);
    run_until_dones(f, s, 1);
    run_until_seq(f, s, 9);
    /* durable only advances when the loop runs the store's callback */
    int64_t seq = s->stream.seq;
    int64_t last_durable = s->stream.durable;
    for (uint64_t t0_ = uv_hrtime(); s->stream.durable < seq;) {
        if (PAST(t0_)) fail_msg("never durable");
        assert_true(s->stream.durable >= last_durable); /* monotonic */
        assert_true(s->stream.durable <= s->stream.seq);
        last_durable = s->stream.durable;
        run_once(f);
    }
    assert_true(s->stream.durable == seq);
    /* the store holds exactly the frames the stream committed */
    readback_t r = {0};
    store_events_read(f->gw.store, s->id, 0, 64, on_read, &r);
    for (uint64_t t0_ = uv_hrtime(); !r.done;) {
        if (PAST(t0_)) fail_msg("read never answered");
        run_once(f);
    }
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.n, (int)seq);
    for (int i = 0; i < r.n; i++) {
        assert_true(r.seqs[i] == i + 1);
        frame_t *fr = stream_get(&s->stream, i + 1);
        assert_string_equal(r.json[i], frame_json(fr));
        free(r.json[i]);
    }
}

static void test_trim_after_durable(void **state)
{
    fx_t *f = *state;
    f->cfg.session_ring_bytes = 0;
    gw_up(f);
    sess_t *s = new_session(f);
    start(s);
    assert_int_equal(s->stream.count, 1); /* kept until durable */
    assert_int_equal(input(s, "one two"), AEP_OK);
    for (uint64_t t0_ = uv_hrtime(); !(s->stream.durable == s->stream.seq && s->stream.seq >= 8);) {
        if (PAST(t0_)) fail_msg("never durable");
        /* every non-durable event is still in memory */
        for (int64_t q = s->stream.durable + 1; q <= s->stream.seq; q++)
            assert_non_null(stream_get(&s->stream, q));
        run_once(f);
    }
    settle(f);
    assert_int_equal(s->stream.count, 0); /* everything durable and a zero window */
    assert_true(s->stream.seq == 8);
    assert_null(stream_get(&s->stream, 1));
}

static void test_state_names(void **state)
{
    (void)state;
    const char *names[] = {"created", "running", "idle", "terminated", "deleted"};
    for (int i = 0; i < 5; i++) {
        assert_string_equal(sess_state_name((sess_state_t)i), names[i]);
        assert_int_equal(sess_state_parse(names[i]), i);
    }
    assert_int_equal(sess_state_parse("Running"), -1);
    assert_int_equal(sess_state_parse(""), -1);
    assert_string_equal(sess_state_name((sess_state_t)99), "unknown");
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
    const struct CMUnitTest tests[] = {
        T(test_start_running),
        T(test_turn_then_idle),
        T(test_input_starts_agent),
        T(test_queued_inputs_in_order),
        T(test_max_queued_inputs),
        T(test_terminate_then_input_restarts),
        T(test_terminate_mid_turn),
        T(test_reset),
        T(test_input_during_reset),
        T(test_input_during_terminate),
        T(test_input_refused_by_agent),
        T(test_delete),
        T(test_delete_mid_turn),
        T(test_crash_then_input),
        T(test_interrupt),
        T(test_unknown_action),
        T(test_durability),
        T(test_trim_after_durable),
        cmocka_unit_test(test_state_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
