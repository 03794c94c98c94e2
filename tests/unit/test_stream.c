/*
 * test_stream.c - stream.h: seq assignment, encoded frames, byte offsets,
 * the in-memory window (lookup, trim bounded by durability, ring growth and
 * wraparound). Pure memory; no loop, no store.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aep/aep.h"
#include "core/frame.h"
#include "core/stream.h"
#include "util/json.h"
#include "util/uuid.h"

#define SID "0b7e1c2a-5d1f-4c53-9d58-0a6c3b1f2e44"

/* Parses a frame's JSON and checks the envelope against what was committed. */
static void check_frame(frame_t *f, int64_t seq, const char *type, const char *data, int64_t ts)
{
    assert_non_null(f);
    assert_true(f->seq == seq);
    char *js = frame_json(f);
    assert_int_equal(strlen(js), f->len); /* NUL-terminated right after len bytes */
    json_tok_t t[128];
    json_doc_t d;
    assert_int_equal(json_parse(&d, js, f->len, t, 128), 0);
    char s[128];
    int i = json_obj_get(&d, 0, "version");
    assert_true(json_str_eq(&d, i, "aep/v1"));
    i = json_obj_get(&d, 0, "id");
    assert_true(json_str_copy(&d, i, s, sizeof(s)) == 40);
    assert_memory_equal(s, "evt_", 4);
    assert_true(uuid_is_valid(s + 4));
    int64_t v;
    assert_int_equal(json_get_i64(&d, json_obj_get(&d, 0, "seq"), &v), 0);
    assert_true(v == seq);
    assert_true(json_str_eq(&d, json_obj_get(&d, 0, "session_id"), SID));
    assert_int_equal(json_get_i64(&d, json_obj_get(&d, 0, "timestamp"), &v), 0);
    assert_true(v == ts);
    int ev = json_obj_get(&d, 0, "event");
    assert_true(json_str_eq(&d, json_obj_get(&d, ev, "type"), type));
    int dt = json_obj_get(&d, ev, "data");
    assert_int_equal(json_type(&d, dt), JSON_OBJ);
    size_t n;
    const char *raw = json_raw(&d, dt, &n);
    const char *want = data ? data : "{}";
    assert_int_equal(n, strlen(want));
    assert_memory_equal(raw, want, n);
    assert_int_equal(f->is_delta, strcmp(type, "message.delta") == 0);
}

static frame_t *commit(stream_t *st, const char *type, const char *data)
{
    return stream_commit(st, SID, type, data, data ? strlen(data) : 0, 1710000000000LL);
}

static void test_commit_from_last_seq(void **state)
{
    (void)state;
    stream_t st;
    stream_init(&st, 41);
    assert_true(st.seq == 41);
    assert_true(st.durable == 41);
    assert_int_equal(st.count, 0);
    assert_true(stream_first(&st) == 0);
    assert_null(stream_get(&st, 41));
    assert_null(stream_get(&st, 42));

    const char *data[] = {"{\"state\":\"running\"}", "{\"message_id\":\"m\",\"content\":\"hi \"}",
                          "{\"success\":true}"};
    const char *types[] = {"state", "message.delta", "done"};
    frame_t *f[3];
    uint64_t off = 0;
    for (int i = 0; i < 3; i++) {
        f[i] = commit(&st, types[i], data[i]);
        check_frame(f[i], 42 + i, types[i], data[i], 1710000000000LL);
        assert_true(f[i]->offset == off);
        off += f[i]->len;
        assert_true(st.bytes == off);
        assert_true(st.seq == 42 + i);
        assert_true(st.durable == 41); /* commit never makes anything durable */
        assert_null(f[i]->next);
    }
    assert_int_equal(st.count, 3);
    assert_int_equal(st.ring_bytes, (size_t)off);
    assert_true(stream_first(&st) == 42);
    assert_null(stream_get(&st, 0));
    assert_null(stream_get(&st, 41));
    assert_ptr_equal(stream_get(&st, 42), f[0]);
    assert_ptr_equal(stream_get(&st, 43), f[1]);
    assert_ptr_equal(stream_get(&st, 44), f[2]);
    assert_null(stream_get(&st, 45));
    assert_null(stream_get(&st, -1));
    assert_null(stream_get(&st, INT64_MAX));
    stream_free(&st);
    assert_int_equal(st.count, 0);
    assert_null(st.ring);
    stream_free(&st); /* idempotent */
}

static void test_commit_from_zero(void **state)
{
    (void)state;
    stream_t st;
    stream_init(&st, 0);
    frame_t *f = commit(&st, "state", "{\"state\":\"running\"}");
    check_frame(f, 1, "state", "{\"state\":\"running\"}", 1710000000000LL);
    assert_true(f->offset == 0);
    /* no data: {} */
    f = commit(&st, "message.end", NULL);
    check_frame(f, 2, "message.end", NULL, 1710000000000LL);
    /* priority on control events only */
    assert_non_null(strstr(frame_json(stream_get(&st, 1)), "\"priority\":\"control\""));
    assert_null(strstr(frame_json(stream_get(&st, 2)), "priority"));
    stream_free(&st);
}

static void test_is_delta(void **state)
{
    (void)state;
    stream_t st;
    stream_init(&st, 0);
    assert_int_equal(commit(&st, "message.delta", "{\"content\":\"x\"}")->is_delta, 1);
    assert_int_equal(commit(&st, "message", "{\"content\":\"x\"}")->is_delta, 0);
    assert_int_equal(commit(&st, "message.start", "{}")->is_delta, 0);
    assert_int_equal(commit(&st, "message.deltas", "{}")->is_delta, 0);
    assert_int_equal(commit(&st, "reasoning", "{}")->is_delta, 0);
    assert_int_equal(commit(&st, "message.delta", "{}")->is_delta, 1);
    stream_free(&st);
}

static void test_trim_respects_durable(void **state)
{
    (void)state;
    stream_t st;
    stream_init(&st, 0);
    for (int i = 0; i < 10; i++)
        assert_non_null(commit(&st, "message.delta", "{\"content\":\"x\"}"));
    size_t before = st.ring_bytes;
    /* nothing durable: nothing dropped, even with a zero bound */
    stream_trim(&st, 0);
    assert_int_equal(st.count, 10);
    assert_int_equal(st.ring_bytes, before);
    assert_true(stream_first(&st) == 1);
    /* 5 durable: exactly those go */
    st.durable = st.stored = 5;
    stream_trim(&st, 0);
    assert_int_equal(st.count, 5);
    assert_true(stream_first(&st) == 6);
    assert_null(stream_get(&st, 5));
    assert_non_null(stream_get(&st, 6));
    assert_non_null(stream_get(&st, 10));
    size_t left = 0;
    for (int64_t s = 6; s <= 10; s++)
        left += stream_get(&st, s)->len;
    assert_int_equal(st.ring_bytes, left);
    /* seq and bytes are not affected by trimming */
    assert_true(st.seq == 10);
    /* everything durable, zero bound: the window empties, the counter stays */
    st.durable = st.stored = 10;
    stream_trim(&st, 0);
    assert_int_equal(st.count, 0);
    assert_int_equal(st.ring_bytes, 0);
    assert_true(stream_first(&st) == 0);
    assert_null(stream_get(&st, 10));
    frame_t *f = commit(&st, "done", "{}");
    check_frame(f, 11, "done", "{}", 1710000000000LL);
    assert_true(stream_first(&st) == 11);
    assert_ptr_equal(stream_get(&st, 11), f);
    stream_free(&st);
}

static void test_trim_to_byte_bound(void **state)
{
    (void)state;
    stream_t st;
    stream_init(&st, 100);
    char data[256];
    size_t lens[21] = {0};
    for (int i = 1; i <= 20; i++) {
        /* events of different sizes */
        snprintf(
            data, sizeof(data), "{\"content\":\"%.*s\"}", i * 7,
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        frame_t *f = commit(&st, "message.delta", data);
        assert_non_null(f);
        lens[i] = f->len;
    }
    st.durable = st.stored = st.seq;
    /* bound = the last 3 events exactly: they stay, the 4th-newest does not */
    size_t bound = lens[18] + lens[19] + lens[20];
    stream_trim(&st, bound);
    assert_int_equal(st.count, 3);
    assert_true(stream_first(&st) == 118);
    assert_int_equal(st.ring_bytes, bound);
    /* a bound one byte short of those 3 drops one more */
    stream_trim(&st, bound - 1);
    assert_int_equal(st.count, 2);
    assert_true(stream_first(&st) == 119);
    /* a bigger bound never brings anything back nor drops more */
    stream_trim(&st, 1 << 20);
    assert_int_equal(st.count, 2);
    stream_free(&st);

    /* mixed: byte bound would drop 15 events but only 4 are durable */
    stream_init(&st, 0);
    for (int i = 1; i <= 20; i++)
        assert_non_null(commit(&st, "message.delta", "{\"c\":1}"));
    st.durable = st.stored = 4;
    stream_trim(&st, 5 * stream_get(&st, 1)->len);
    assert_true(stream_first(&st) == 5);
    assert_int_equal(st.count, 16);
    /* durable advances: now the bound holds */
    st.durable = st.stored = 20;
    stream_trim(&st, 5 * stream_get(&st, 20)->len);
    assert_int_equal(st.count, 5);
    assert_true(stream_first(&st) == 16);
    stream_free(&st);
}

static void test_ring_growth(void **state)
{
    (void)state;
    stream_t st;
    stream_init(&st, 7);
    char data[64];
    /* across 64, 128, 256, 512 entries, nothing trimmed */
    for (int i = 1; i <= 600; i++) {
        snprintf(data, sizeof(data), "{\"n\":%d}", i);
        frame_t *f = commit(&st, "message.delta", data);
        assert_non_null(f);
        if (i == 64 || i == 65 || i == 128 || i == 129 || i == 257) {
            assert_true(st.cap >= (size_t)i);
            for (int64_t s = 8; s <= 7 + i; s++) {
                frame_t *g = stream_get(&st, s);
                assert_non_null(g);
                assert_true(g->seq == s);
            }
        }
    }
    assert_int_equal(st.cap, 1024);
    for (int i = 1; i <= 600; i++) {
        snprintf(data, sizeof(data), "{\"n\":%d}", i);
        check_frame(stream_get(&st, 7 + i), 7 + i, "message.delta", data, 1710000000000LL);
    }
    stream_free(&st);

    /* growth while wrapped: head in the middle of the ring */
    stream_init(&st, 0);
    for (int i = 0; i < 50; i++)
        commit(&st, "d", "{}");
    st.durable = st.stored = 40;
    stream_trim(&st, 0); /* head = 40, count 10, cap 64 */
    assert_int_equal(st.cap, 64);
    assert_int_equal(st.head, 40);
    for (int i = 0; i < 100; i++)
        commit(&st, "d", "{}"); /* wraps, then grows */
    assert_int_equal(st.count, 110);
    assert_int_equal(st.cap, 128);
    for (int64_t s = 41; s <= 150; s++) {
        frame_t *g = stream_get(&st, s);
        assert_non_null(g);
        assert_true(g->seq == s);
    }
    assert_null(stream_get(&st, 40));
    assert_null(stream_get(&st, 151));
    stream_free(&st);
}

/* Delivery (durable: in the journal) and the database (stored) advance
 * independently, in either order; the window keeps what is not past both,
 * so each mark's byte offset is exact. */
static void test_durable_and_stored_marks(void **state)
{
    (void)state;
    stream_t st;
    stream_init(&st, 0);
    for (int i = 0; i < 10; i++) commit(&st, "message.delta", "{\"content\":\"abc\"}");
    uint64_t off6 = stream_get(&st, 6)->offset + stream_get(&st, 6)->len;
    uint64_t off3 = stream_get(&st, 3)->offset + stream_get(&st, 3)->len;
    stream_set_durable(&st, 6);
    assert_true(st.durable == 6 && st.durable_bytes == off6);
    assert_true(st.stored == 0 && st.stored_bytes == 0);
    stream_trim(&st, 0); /* nothing stored: nothing dropped */
    assert_int_equal(st.count, 10);
    stream_set_stored(&st, 3);
    assert_true(st.stored == 3 && st.stored_bytes == off3);
    stream_trim(&st, 0);
    assert_true(stream_first(&st) == 4); /* up to the lower mark */
    /* the database ahead of the journal flush: the lower mark still rules */
    stream_set_stored(&st, 9);
    stream_trim_before(&st, 100);
    assert_true(stream_first(&st) == 7);
    assert_true(st.stored_bytes == stream_get(&st, 9)->offset + stream_get(&st, 9)->len);
    /* marks never move back, and never past the last commit */
    stream_set_stored(&st, 5);
    assert_true(st.stored == 9);
    stream_set_durable(&st, 99);
    assert_true(st.durable == 10 && st.durable_bytes == st.bytes);
    stream_trim(&st, 0);
    assert_true(stream_first(&st) == 10);
    stream_set_stored(&st, 10);
    assert_true(st.stored_bytes == st.bytes);
    stream_trim(&st, 0);
    assert_int_equal(st.count, 0);
    stream_free(&st);
}

/* Deterministic LCG so failures reproduce. */
static uint32_t rnd(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static void test_interleaved_10k(void **state)
{
    (void)state;
    stream_t st;
    stream_init(&st, 1000);
    uint32_t r = 12345;
    uint64_t bytes = 0;
    uint64_t next_off = 0;
    size_t max_cap = 0;
    char data[128];
    for (int step = 0; step < 10000; step++) {
        int k = 1 + (int)(rnd(&r) % 4);
        for (int i = 0; i < k; i++) {
            int pad = (int)(rnd(&r) % 40);
            snprintf(data, sizeof(data), "{\"step\":%d,\"pad\":\"%.*s\"}", step, pad,
                     "........................................");
            frame_t *f = commit(&st, (rnd(&r) & 1) ? "message.delta" : "message", data);
            assert_non_null(f);
            assert_true(f->seq == st.seq);
            assert_true(f->offset == next_off);
            next_off += f->len;
            bytes += f->len;
        }
        assert_true(st.bytes == bytes);
        /* durability lags behind by a random amount */
        if (rnd(&r) % 3 == 0) {
            int64_t lag = rnd(&r) % 300;
            int64_t d = st.seq - lag;
            if (d > st.durable) st.durable = st.stored = d;
        }
        size_t bound = 2000 + rnd(&r) % 8000;
        stream_trim(&st, bound);
        if (st.cap > max_cap) max_cap = st.cap;

        /* invariants */
        int64_t first = stream_first(&st);
        assert_true(first > 1000);
        assert_true((int64_t)st.count == st.seq - first + 1);
        assert_true(first <= st.durable + 1); /* nothing non-durable ever dropped */
        size_t rb = 0;
        for (int64_t s = first; s <= st.seq; s++) {
            frame_t *f = stream_get(&st, s);
            assert_non_null(f);
            assert_true(f->seq == s);
            rb += f->len;
        }
        assert_int_equal(st.ring_bytes, rb);
        /* the bound holds unless only non-durable events exceed it */
        if (st.ring_bytes > bound) {
            assert_true(first > st.durable);
        }
        assert_null(stream_get(&st, first - 1));
        assert_null(stream_get(&st, st.seq + 1));
    }
    assert_true(st.seq > 1000 + 10000);
    assert_true(max_cap >= 256); /* the ring grew past 64, 128, 256 and wrapped */
    /* the newest event is intact */
    frame_t *last = stream_get(&st, st.seq);
    json_tok_t t[64];
    json_doc_t d;
    assert_int_equal(json_parse(&d, frame_json(last), last->len, t, 64), 0);
    stream_free(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_from_last_seq),
        cmocka_unit_test(test_commit_from_zero),
        cmocka_unit_test(test_is_delta),
        cmocka_unit_test(test_trim_respects_durable),
        cmocka_unit_test(test_durable_and_stored_marks),
        cmocka_unit_test(test_trim_to_byte_bound),
        cmocka_unit_test(test_ring_growth),
        cmocka_unit_test(test_interleaved_10k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
