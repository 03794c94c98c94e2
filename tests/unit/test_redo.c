/*
 * test_redo.c - redo.h: every store write survives the trip through a real
 * journal file unchanged, a session row keeps every field, and truncated or
 * foreign payloads are refused instead of misread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/journal.h"
#include "store/redo.h"

#define SID "0b7e1c2a-5d1f-4c53-9d58-0a6c3b1f2e44"

typedef struct rec {
    uint8_t kind;
    uint8_t *p;
    size_t len;
} rec_t;

typedef struct recs {
    rec_t v[16];
    int n;
} recs_t;

static int keep(void *arg, uint8_t kind, const uint8_t *p, size_t len)
{
    recs_t *r = arg;
    if (r->n == 16) return 1;
    r->v[r->n].kind = kind;
    r->v[r->n].p = malloc(len ? len : 1);
    memcpy(r->v[r->n].p, p, len);
    r->v[r->n].len = len;
    r->n++;
    return 0;
}

/* Write with `write`, read the records back from the files. */
static void through_journal(void (*write)(journal_t *), recs_t *out)
{
    char dir[] = "/tmp/hp-redo-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char prefix[64], path[96], err[256];
    snprintf(prefix, sizeof(prefix), "%s/db.journal", dir);
    journal_t *j;
    assert_int_equal(journal_open(&j, prefix, err, sizeof(err)), 0);
    write(j);
    journal_close(j, false);
    assert_int_equal(journal_open(&j, prefix, err, sizeof(err)), 0);
    assert_int_equal(journal_replay(j, keep, out, NULL), 0);
    journal_drop_replayed(j);
    journal_close(j, true);
    snprintf(path, sizeof(path), "%s.lock", prefix); /* stays: see journal.h */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

static store_session_t full_row(void)
{
    store_session_t r;
    memset(&r, 0, sizeof(r));
    snprintf(r.id, sizeof(r.id), "%s", SID);
    snprintf(r.owner, sizeof(r.owner), "alice");
    snprintf(r.bot_id, sizeof(r.bot_id), "bot-7");
    snprintf(r.worker_type, sizeof(r.worker_type), "claude_code");
    memset(r.client_key, 'k', sizeof(r.client_key) - 1); /* longest value */
    memset(r.work_dir, 'w', sizeof(r.work_dir) - 1);
    r.work_dir[0] = '/';
    snprintf(r.state, sizeof(r.state), "running");
    snprintf(r.agent_model, sizeof(r.agent_model), "claude-sonnet");
    snprintf(r.agent_sid, sizeof(r.agent_sid), "11111111-2222-4333-8444-555555555555");
    r.last_seq = 1234567890123LL;
    r.created_ms = 1700000000000LL;
    r.updated_ms = -5;
    r.agent_started = true;
    r.turn_open = true;
    return r;
}

static void write_all(journal_t *j)
{
    store_session_t row = full_row();
    assert_true(redo_put(j, &row) > 0);
    assert_true(redo_append(j, SID, 42, 1700000000001LL, "message.delta", "{\"a\":\"\\n\"}", 10) > 0);
    assert_true(redo_append(j, SID, 43, 7, "", "", 0) > 0);
    assert_true(redo_trim(j, SID, 40) > 0);
    assert_true(redo_del(j, SID) > 0);
}

static void test_roundtrip_every_kind(void **state)
{
    (void)state;
    recs_t r = {0};
    through_journal(write_all, &r);
    assert_int_equal(r.n, 5);
    redo_op_t op;

    assert_int_equal(redo_decode(r.v[0].kind, r.v[0].p, r.v[0].len, &op), 0);
    assert_int_equal(op.kind, REDO_PUT);
    store_session_t want = full_row();
    /* field by field: padding bytes are not part of the contract */
    assert_string_equal(op.row.id, want.id);
    assert_string_equal(op.row.owner, want.owner);
    assert_string_equal(op.row.bot_id, want.bot_id);
    assert_string_equal(op.row.worker_type, want.worker_type);
    assert_string_equal(op.row.client_key, want.client_key);
    assert_string_equal(op.row.work_dir, want.work_dir);
    assert_string_equal(op.row.state, want.state);
    assert_string_equal(op.row.agent_model, want.agent_model);
    assert_string_equal(op.row.agent_sid, want.agent_sid);
    assert_true(op.row.last_seq == want.last_seq);
    assert_true(op.row.created_ms == want.created_ms);
    assert_true(op.row.updated_ms == want.updated_ms);
    assert_true(op.row.agent_started && op.row.turn_open);
    assert_int_equal(op.sid_len, 36);

    assert_int_equal(redo_decode(r.v[1].kind, r.v[1].p, r.v[1].len, &op), 0);
    assert_int_equal(op.kind, REDO_APPEND);
    assert_int_equal(op.sid_len, 36);
    assert_memory_equal(op.sid, SID, 36);
    assert_true(op.seq == 42 && op.created_ms == 1700000000001LL);
    assert_int_equal(op.type_len, 13);
    assert_memory_equal(op.type, "message.delta", 13);
    assert_int_equal(op.json_len, 10);
    assert_memory_equal(op.json, "{\"a\":\"\\n\"}", 10);

    assert_int_equal(redo_decode(r.v[2].kind, r.v[2].p, r.v[2].len, &op), 0);
    assert_true(op.seq == 43 && op.type_len == 0 && op.json_len == 0);

    assert_int_equal(redo_decode(r.v[3].kind, r.v[3].p, r.v[3].len, &op), 0);
    assert_int_equal(op.kind, REDO_TRIM);
    assert_true(op.seq == 40);
    assert_memory_equal(op.sid, SID, 36);

    assert_int_equal(redo_decode(r.v[4].kind, r.v[4].p, r.v[4].len, &op), 0);
    assert_int_equal(op.kind, REDO_DEL);
    assert_int_equal(op.sid_len, 36);
    for (int i = 0; i < r.n; i++) free(r.v[i].p);
}

/* A tripwire: a new store_session_t field must be added to redo.c's PUT
 * layout (and its version bumped), or a restart would drop it silently. */
static void test_session_row_layout_is_known(void **state)
{
    (void)state;
    assert_int_equal(sizeof(store_session_t), 1824);
}

/* Every truncation of every record is refused or decodes within bounds;
 * unknown kinds and versions are refused. */
static void test_malformed_payloads(void **state)
{
    (void)state;
    recs_t r = {0};
    through_journal(write_all, &r);
    redo_op_t op;
    for (int i = 0; i < r.n; i++) {
        for (size_t n = 0; n < r.v[i].len; n++) {
            uint8_t *cut = malloc(n ? n : 1);
            memcpy(cut, r.v[i].p, n);
            int rc = redo_decode(r.v[i].kind, cut, n, &op);
            if (rc == 0) {
                /* only kinds whose tail is free-form may decode shorter */
                assert_true(op.kind == REDO_APPEND || op.kind == REDO_DEL ||
                            op.kind == REDO_TRIM);
                if (op.kind == REDO_APPEND) assert_true(op.json + op.json_len <= (char *)cut + n);
            }
            free(cut);
        }
        r.v[i].p[0] = 2; /* a future version */
        assert_int_equal(redo_decode(r.v[i].kind, r.v[i].p, r.v[i].len, &op), -EINVAL);
        r.v[i].p[0] = 1;
        assert_int_equal(redo_decode(99, r.v[i].p, r.v[i].len, &op), -EINVAL);
    }
    /* a PUT with trailing bytes or an oversized text field is not ours */
    uint8_t *big = malloc(r.v[0].len + 1);
    memcpy(big, r.v[0].p, r.v[0].len);
    big[r.v[0].len] = 0;
    assert_int_equal(redo_decode(REDO_PUT, big, r.v[0].len + 1, &op), -EINVAL);
    uint16_t huge = 60000;
    memcpy(big + 1, &huge, 2);
    assert_int_equal(redo_decode(REDO_PUT, big, r.v[0].len, &op), -EINVAL);
    free(big);
    for (int i = 0; i < r.n; i++) free(r.v[i].p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_every_kind),
        cmocka_unit_test(test_session_row_layout_is_known),
        cmocka_unit_test(test_malformed_payloads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
