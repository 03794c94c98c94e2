/*
 * test_store.c - store.h over SQLite: a real database file in a mkdtemp
 * directory and a real uv loop per test. Owns nothing outside its temp dir;
 * must never depend on timing (batch boundaries are not fixed, so every
 * assertion holds for any split of the queue into batches).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <dirent.h>
#include <ftw.h>
#include <signal.h>
#include <sys/wait.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store.h"

/* ---- a disk that fills up on demand ----------------------------------- */

/* A VFS registered as the default that forwards to the real one, except
 * that the next `g_fail_writes` xWrite calls fail with SQLITE_FULL (-1:
 * all of them). Lets a test make commits fail, deterministically. */
static _Atomic int g_fail_writes;
static sqlite3_vfs *g_real_vfs;
static sqlite3_vfs g_full_vfs;

typedef struct full_file {
    sqlite3_file base;
    sqlite3_file *real; /* lives right after this struct */
} full_file_t;

#define REAL(f) (((full_file_t *)(f))->real)
static int ff_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}
static int ff_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
    return REAL(f)->pMethods->xRead(REAL(f), b, n, o);
}
static int ff_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
    int k = g_fail_writes;
    if (k < 0) return SQLITE_FULL;
    if (k > 0) {
        g_fail_writes = k - 1;
        return SQLITE_FULL;
    }
    return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int ff_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int ff_sync(sqlite3_file *f, int flags)
{
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int ff_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int ff_lock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xLock(REAL(f), l);
}
static int ff_unlock(sqlite3_file *f, int l)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), l);
}
static int ff_check(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int ff_fctl(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int ff_sector(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int ff_devchar(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int ff_shmmap(sqlite3_file *f, int pg, int sz, int ext, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, ext, pp);
}
static int ff_shmlock(sqlite3_file *f, int off, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void ff_shmbarrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int ff_shmunmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int ff_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **pp)
{
    return REAL(f)->pMethods->xFetch(REAL(f), o, n, pp);
}
static int ff_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), o, p);
}
#undef REAL

static const sqlite3_io_methods ff_methods = {
    3,          ff_close,      ff_read,     ff_write, ff_truncate, ff_sync,    ff_size,
    ff_lock,    ff_unlock,     ff_check,    ff_fctl,  ff_sector,   ff_devchar, ff_shmmap,
    ff_shmlock, ff_shmbarrier, ff_shmunmap, ff_fetch, ff_unfetch,
};

static int ff_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
    (void)vfs;
    full_file_t *ff = (full_file_t *)f;
    ff->real = (sqlite3_file *)(ff + 1);
    int rc = g_real_vfs->xOpen(g_real_vfs, name, ff->real, flags, out);
    f->pMethods = rc == SQLITE_OK && ff->real->pMethods ? &ff_methods : NULL;
    return rc;
}

static void install_full_vfs(void)
{
    g_real_vfs = sqlite3_vfs_find(NULL);
    g_full_vfs = *g_real_vfs;
    g_full_vfs.zName = "hotplex-test-full";
    g_full_vfs.szOsFile = (int)sizeof(full_file_t) + g_real_vfs->szOsFile;
    g_full_vfs.xOpen = ff_open;
    g_full_vfs.pNext = NULL;
    sqlite3_vfs_register(&g_full_vfs, 1);
}

/* ---- fixture ----------------------------------------------------------- */

typedef struct fx {
    char dir[256];
    char path[512];
    uv_loop_t loop;
    store_t *open; /* closed by the teardown if a test failed half-way */
} fx_t;

static int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof(f->dir), "%s/hotplex-store-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/data/store.db", f->dir);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    *state = f;
    return 0;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    g_fail_writes = 0;
    if (f->open) store_close(f->open);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- durable-report recorder ------------------------------------------- */

#define MAX_SIDS 16
typedef struct dur_rec {
    struct {
        char sid[64];
        int64_t last;
        int calls;
    } s[MAX_SIDS];
    int n;
    int calls;
    int not_increasing;
} dur_rec_t;

static void on_durable(void *ctx, const char *sid, int64_t seq)
{
    dur_rec_t *d = ctx;
    d->calls++;
    for (int i = 0; i < d->n; i++) {
        if (strcmp(d->s[i].sid, sid) == 0) {
            if (seq <= d->s[i].last) {
                d->not_increasing++;
                print_message("      %s reported %lld after %lld\n", sid, (long long)seq,
                              (long long)d->s[i].last);
            }
            d->s[i].last = seq;
            d->s[i].calls++;
            return;
        }
    }
    assert_true(d->n < MAX_SIDS);
    snprintf(d->s[d->n].sid, sizeof(d->s[d->n].sid), "%s", sid);
    d->s[d->n].last = seq;
    d->s[d->n].calls = 1;
    d->n++;
}

/* The session was deleted: its seq may start again. */
static void dur_forget(dur_rec_t *d, const char *sid)
{
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->s[i].sid, sid) == 0) d->s[i].last = 0;
}

static int64_t dur_last(const dur_rec_t *d, const char *sid)
{
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->s[i].sid, sid) == 0) return d->s[i].last;
    return 0;
}

/* ---- helpers ----------------------------------------------------------- */

static store_t *open_store(fx_t *f, dur_rec_t *d)
{
    store_t *s = NULL;
    char err[512] = "";
    int rc = store_open(&s, &f->loop, f->path, &(store_hooks_t){.on_stored = on_durable, .ctx = d}, err,
                        sizeof(err));
    if (rc != 0) fail_msg("store_open: %d %s", rc, err);
    assert_non_null(s);
    f->open = s;
    return s;
}

static void close_store(fx_t *f, store_t *s)
{
    store_close(s);
    if (f->open == s) f->open = NULL;
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
}

static void barrier_cb(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                       const size_t *lens, int64_t oldest)
{
    (void)seqs, (void)json, (void)lens, (void)oldest;
    assert_int_equal(rc, 0);
    assert_int_equal(n, 0);
    *(int *)ctx = 1;
}

/* A read is answered after every write queued before it has committed. */
static void flush(fx_t *f, store_t *s)
{
    int done = 0;
    store_events_read(s, "--barrier--", 0, 1, barrier_cb, &done);
    while (!done)
        uv_run(&f->loop, UV_RUN_ONCE);
}

typedef struct rows {
    store_session_t r[16];
    int n;
} rows_t;

static void collect_row(void *arg, const store_session_t *row)
{
    rows_t *rs = arg;
    assert_true(rs->n < 16);
    rs->r[rs->n++] = *row;
}

static const store_session_t *find_row(const rows_t *rs, const char *id)
{
    for (int i = 0; i < rs->n; i++)
        if (strcmp(rs->r[i].id, id) == 0) return &rs->r[i];
    return NULL;
}

static void fill(char *dst, size_t cap, char c)
{
    memset(dst, c, cap - 1);
    dst[cap - 1] = '\0';
}

static void assert_row_eq(const store_session_t *a, const store_session_t *b)
{
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->owner, b->owner);
    assert_string_equal(a->bot_id, b->bot_id);
    assert_string_equal(a->worker_type, b->worker_type);
    assert_string_equal(a->client_key, b->client_key);
    assert_string_equal(a->work_dir, b->work_dir);
    assert_string_equal(a->state, b->state);
    assert_string_equal(a->agent_model, b->agent_model);
    assert_string_equal(a->agent_sid, b->agent_sid);
    assert_int_equal(a->last_seq, b->last_seq);
    assert_int_equal(a->created_ms, b->created_ms);
    assert_int_equal(a->updated_ms, b->updated_ms);
    assert_int_equal(a->agent_started, b->agent_started);
}

static void make_row(store_session_t *r, const char *id, const char *state, int64_t last_seq)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->id, sizeof(r->id), "%s", id);
    snprintf(r->owner, sizeof(r->owner), "owner-of-%s", id);
    snprintf(r->bot_id, sizeof(r->bot_id), "bot-1");
    snprintf(r->worker_type, sizeof(r->worker_type), "claude_code");
    snprintf(r->client_key, sizeof(r->client_key), "ck-%s", id);
    snprintf(r->work_dir, sizeof(r->work_dir), "/tmp/work/%s", id);
    snprintf(r->state, sizeof(r->state), "%s", state);
    snprintf(r->agent_model, sizeof(r->agent_model), "model-a");
    snprintf(r->agent_sid, sizeof(r->agent_sid), "agent-%s", id);
    r->last_seq = last_seq;
    r->created_ms = 1700000000000;
    r->updated_ms = 1700000000001;
    r->agent_started = false;
}

static int64_t sql_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void sql_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

/* Events stored (chunks hold runs of consecutive seqs, no gaps inside). */
#define EVENTS_SQL "SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM event_chunks"
#define EVENTS_OF(sid) EVENTS_SQL " WHERE session_id='" sid "'"

/* Collect a whole read answer (one page) into a copy. */
typedef struct page {
    int done, rc, n;
    int64_t oldest;
    int64_t seqs[256];
    char json[256][64];
} page_t;

static void page_cb(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                    const size_t *lens, int64_t oldest)
{
    page_t *p = ctx;
    p->done = 1;
    p->rc = rc;
    p->n = n;
    p->oldest = oldest;
    assert_true(n <= 256);
    for (int i = 0; i < n; i++) {
        p->seqs[i] = seqs[i];
        assert_true(lens[i] < sizeof(p->json[i]));
        assert_int_equal(strlen(json[i]), lens[i]); /* NUL-terminated too */
        memcpy(p->json[i], json[i], lens[i] + 1);
    }
}

static void read_page(fx_t *f, store_t *s, const char *sid, int64_t after, int limit, page_t *p)
{
    memset(p, 0, sizeof(*p));
    store_events_read(s, sid, after, limit, page_cb, p);
    while (!p->done)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static void append_ev(store_t *s, const char *sid, int64_t seq, const char *type)
{
    char json[64];
    int n = snprintf(json, sizeof(json), "{\"sid\":\"%s\",\"seq\":%lld}", sid, (long long)seq);
    store_event_append(s, sid, seq, type, json, (size_t)n);
}

/* ---- tests ------------------------------------------------------------- */

static void test_open_creates_schema(void **state)
{
    fx_t *f = *state;
    char err[512];
    snprintf(f->path, sizeof(f->path), "%s/a/b/c/store.db", f->dir); /* parents missing */
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    struct stat sb;
    assert_int_equal(stat(f->path, &sb), 0);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), store_schema_version());
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM sqlite_master WHERE type='table' AND "
                                      "name IN ('sessions','event_chunks')"),
                     2);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM sqlite_master WHERE name='events'"), 0);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_int_equal(st.batches, 0);
    close_store(f, s);

    /* WAL is persistent in the file. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    sqlite3_close(db);

    /* Re-opening an up-to-date database applies nothing and works. */
    store_t *s2 = NULL;
    assert_int_equal(store_open(&s2, &f->loop, f->path, NULL, err, sizeof(err)), 0);
    close_store(f, s2);
}

static void test_session_put_load_every_column(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);

    store_session_t a;
    memset(&a, 0, sizeof(a));
    snprintf(a.id, sizeof(a.id), "11111111-2222-3333-4444-555555555555");
    fill(a.owner, sizeof(a.owner), 'o');
    fill(a.bot_id, sizeof(a.bot_id), 'b');
    fill(a.worker_type, sizeof(a.worker_type), 'w');
    fill(a.client_key, sizeof(a.client_key), 'k');
    fill(a.work_dir, sizeof(a.work_dir), 'd');
    snprintf(a.state, sizeof(a.state), "running");
    fill(a.agent_model, sizeof(a.agent_model), 'm');
    fill(a.agent_sid, sizeof(a.agent_sid), 's');
    a.last_seq = 42;
    a.created_ms = 1700000000123;
    a.updated_ms = 1700000000456;
    a.agent_started = true;

    store_session_t gone;
    make_row(&gone, "deleted-one", "deleted", 3);

    store_session_put(s, &a);
    store_session_put(s, &gone);
    flush(f, s);

    rows_t rs = {0};
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    /* deleted sessions load too: their tombstones keep ids from being reused */
    assert_int_equal(rs.n, 2);
    assert_row_eq(find_row(&rs, a.id), &a);
    assert_non_null(find_row(&rs, "deleted-one"));
    assert_string_equal(find_row(&rs, "deleted-one")->state, "deleted");

    /* Upsert: every column but the key changes. */
    store_session_t b;
    memset(&b, 0, sizeof(b));
    snprintf(b.id, sizeof(b.id), "%s", a.id);
    snprintf(b.owner, sizeof(b.owner), "alice");
    snprintf(b.bot_id, sizeof(b.bot_id), "bot-2");
    snprintf(b.worker_type, sizeof(b.worker_type), "opencode_server");
    snprintf(b.client_key, sizeof(b.client_key), "key-2");
    snprintf(b.work_dir, sizeof(b.work_dir), "/srv/work/2");
    snprintf(b.state, sizeof(b.state), "idle");
    snprintf(b.agent_model, sizeof(b.agent_model), "model-b");
    snprintf(b.agent_sid, sizeof(b.agent_sid), "99999999-8888-7777-6666-555555555555");
    b.last_seq = 43;
    b.created_ms = 1600000000000;
    b.updated_ms = 1800000000000;
    b.agent_started = false;
    store_session_put(s, &b);
    flush(f, s);

    memset(&rs, 0, sizeof(rs));
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_int_equal(rs.n, 2);
    assert_row_eq(find_row(&rs, a.id), &b);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM sessions"), 2);

    /* ... and back again, so every column is seen changing both ways. */
    store_session_put(s, &a);
    flush(f, s);
    memset(&rs, 0, sizeof(rs));
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_int_equal(rs.n, 2);
    assert_row_eq(find_row(&rs, a.id), &a);

    /* A session put as deleted loads as a tombstone. */
    snprintf(a.state, sizeof(a.state), "deleted");
    store_session_put(s, &a);
    flush(f, s);
    memset(&rs, 0, sizeof(rs));
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_int_equal(rs.n, 2);
    assert_string_equal(find_row(&rs, a.id)->state, "deleted");
    assert_int_equal(d.calls, 0); /* no events, no durability reports */
    close_store(f, s);
}

#define N_EVENTS 10000
static void test_append_10k_durable(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    const char *sids[3] = {"sess-a", "sess-b", "sess-c"};
    int64_t max[3] = {0};
    for (int i = 0; i < N_EVENTS; i++) {
        int k = i % 3;
        max[k] = i / 3 + 1;
        append_ev(s, sids[k], max[k], "message.delta");
        if (i % 1000 == 999) uv_run(&f->loop, UV_RUN_NOWAIT); /* deliver what is ready */
    }
    while (dur_last(&d, sids[0]) < max[0] || dur_last(&d, sids[1]) < max[1] ||
           dur_last(&d, sids[2]) < max[2])
        uv_run(&f->loop, UV_RUN_ONCE);

    assert_int_equal(d.not_increasing, 0);
    assert_int_equal(d.n, 3);
    for (int k = 0; k < 3; k++)
        assert_int_equal(dur_last(&d, sids[k]), max[k]);
    assert_int_equal(max[0] + max[1] + max[2], N_EVENTS);

    store_stats_t st;
    store_get_stats(s, &st);
    assert_int_equal(st.events, N_EVENTS);
    assert_int_equal(st.failed_batches, 0);
    assert_true(st.batches >= 1);
    assert_true(st.max_batch >= 1 && st.max_batch <= N_EVENTS);
    /* One report per session per batch at most. */
    assert_true((uint64_t)d.calls <= 3 * st.batches);
    print_message("      10k events: %llu batches, max batch %llu ops, %.3f ms in batches\n",
                  (unsigned long long)st.batches, (unsigned long long)st.max_batch,
                  (double)st.batch_ns_total / 1e6);
    close_store(f, s);
    assert_int_equal(sql_int(f->path, EVENTS_SQL), N_EVENTS);
}

/* Page through a session from inside the read callback. */
typedef struct pager {
    store_t *s;
    const char *sid;
    int limit;
    int64_t next; /* next expected seq */
    int pages, done, bad;
    int64_t oldest;
} pager_t;

static void pager_cb(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                     const size_t *lens, int64_t oldest)
{
    pager_t *p = ctx;
    if (rc != 0 || n > p->limit || oldest != p->oldest) p->bad++;
    if (n == 0) {
        p->done = 1;
        return;
    }
    p->pages++;
    for (int i = 0; i < n; i++) {
        char want[64];
        int wl = snprintf(want, sizeof(want), "{\"sid\":\"%s\",\"seq\":%lld}", p->sid,
                          (long long)p->next);
        if (seqs[i] != p->next || lens[i] != (size_t)wl || memcmp(json[i], want, lens[i]) != 0)
            p->bad++;
        p->next++;
    }
    store_events_read(p->s, p->sid, seqs[n - 1], p->limit, pager_cb, p);
}

static void test_events_read_pages(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    for (int64_t q = 1; q <= 250; q++)
        append_ev(s, "ra", q, "message.delta");
    for (int64_t q = 5; q <= 9; q++)
        append_ev(s, "rb", q, "state"); /* oldest = 5 */

    /* No flush: a read sees every write queued before it. */
    pager_t p = {.s = s, .sid = "ra", .limit = 64, .next = 1, .oldest = 1};
    store_events_read(s, "ra", 0, p.limit, pager_cb, &p);
    while (!p.done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(p.bad, 0);
    assert_int_equal(p.next, 251);
    assert_int_equal(p.pages, 4); /* 64 + 64 + 64 + 58 */

    page_t pg;
    read_page(f, s, "ra", 100, 10, &pg);
    assert_int_equal(pg.rc, 0);
    assert_int_equal(pg.n, 10);
    assert_int_equal(pg.oldest, 1);
    for (int i = 0; i < 10; i++)
        assert_int_equal(pg.seqs[i], 101 + i);
    assert_string_equal(pg.json[0], "{\"sid\":\"ra\",\"seq\":101}");

    read_page(f, s, "rb", 0, 100, &pg);
    assert_int_equal(pg.n, 5);
    assert_int_equal(pg.oldest, 5);
    assert_int_equal(pg.seqs[0], 5);
    assert_int_equal(pg.seqs[4], 9);

    read_page(f, s, "rb", 9, 100, &pg);
    assert_int_equal(pg.rc, 0);
    assert_int_equal(pg.n, 0);
    assert_int_equal(pg.oldest, 5);

    read_page(f, s, "nobody", 0, 100, &pg);
    assert_int_equal(pg.rc, 0);
    assert_int_equal(pg.n, 0);
    assert_int_equal(pg.oldest, 0);

    read_page(f, s, "ra", 0, 0, &pg); /* a zero limit is an error, not "no more" */
    assert_int_equal(pg.rc, -EINVAL);

    /* Empty payload and a payload with an embedded quote survive. */
    store_event_append(s, "rc", 1, "x", "", 0);
    store_event_append(s, "rc", 2, "y", "{\"t\":\"a\\\"b\"}", 12);
    read_page(f, s, "rc", 0, 10, &pg);
    assert_int_equal(pg.n, 2);
    assert_string_equal(pg.json[0], "");
    assert_string_equal(pg.json[1], "{\"t\":\"a\\\"b\"}");
    assert_int_equal(sql_int(f->path, EVENTS_OF("rc")), 2);
    close_store(f, s);
}

static void test_delete_removes_row_and_events(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    store_session_t a, b;
    make_row(&a, "del-a", "running", 0);
    make_row(&b, "del-b", "idle", 0);
    store_session_put(s, &a);
    store_session_put(s, &b);
    for (int64_t q = 1; q <= 30; q++) {
        append_ev(s, "del-a", q, "e");
        append_ev(s, "del-b", q, "e");
    }
    flush(f, s);
    store_session_delete(s, "del-a");

    page_t pg;
    read_page(f, s, "del-a", 0, 100, &pg); /* queued after the delete */
    assert_int_equal(pg.rc, 0);
    assert_int_equal(pg.n, 0);
    assert_int_equal(pg.oldest, 0);
    read_page(f, s, "del-b", 0, 100, &pg);
    assert_int_equal(pg.n, 30);
    assert_int_equal(pg.oldest, 1);

    rows_t rs = {0};
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_int_equal(rs.n, 1);
    assert_string_equal(rs.r[0].id, "del-b");
    assert_int_equal(rs.r[0].last_seq, 30); /* derived from the events */
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM event_chunks WHERE session_id='del-a'"),
                     0);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM sessions WHERE id='del-a'"), 0);
    close_store(f, s);
}

static void test_reopen_keeps_data_and_last_seq(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    store_session_t a, b;
    make_row(&a, "re-a", "running", 0); /* stale: the row was never updated */
    make_row(&b, "re-b", "idle", 50);   /* row ahead of the events */
    store_session_put(s, &a);
    store_session_put(s, &b);
    for (int64_t q = 1; q <= 20; q++)
        append_ev(s, "re-a", q, "message.delta");
    for (int64_t q = 1; q <= 10; q++)
        append_ev(s, "re-b", q, "message.delta");
    while (dur_last(&d, "re-a") < 20 || dur_last(&d, "re-b") < 10)
        uv_run(&f->loop, UV_RUN_ONCE);
    close_store(f, s);

    dur_rec_t d2 = {0};
    s = open_store(f, &d2);
    rows_t rs = {0};
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_int_equal(rs.n, 2);
    const store_session_t *ra = find_row(&rs, "re-a"), *rb = find_row(&rs, "re-b");
    assert_non_null(ra);
    assert_non_null(rb);
    assert_int_equal(ra->last_seq, 20);
    assert_int_equal(rb->last_seq, 50);
    a.last_seq = 20;
    assert_row_eq(ra, &a);
    assert_row_eq(rb, &b);

    page_t pg;
    read_page(f, s, "re-a", 0, 256, &pg);
    assert_int_equal(pg.n, 20);
    assert_int_equal(pg.seqs[19], 20);
    assert_string_equal(pg.json[19], "{\"sid\":\"re-a\",\"seq\":20}");
    close_store(f, s);
}

static void test_newer_schema_refused(void **state)
{
    fx_t *f = *state;
    snprintf(f->path, sizeof(f->path), "%s/newer.db", f->dir);
    sql_exec(f->path, "CREATE TABLE t(x); PRAGMA user_version=99;");
    store_t *s = (store_t *)0x1;
    char err[512] = "";
    int rc = store_open(&s, &f->loop, f->path, NULL, err, sizeof(err));
    assert_true(rc < 0);
    assert_null(s);
    assert_non_null(strstr(err, "99"));
    assert_non_null(strstr(err, "newer"));
    print_message("      refused: %s\n", err);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), 99); /* untouched */
}

static void test_migration_failure_reported(void **state)
{
    fx_t *f = *state;
    snprintf(f->path, sizeof(f->path), "%s/broken.db", f->dir);
    /* version 0, but a conflicting table: migration 1 must fail, loudly */
    sql_exec(f->path, "CREATE TABLE sessions(x INTEGER);");
    store_t *s = NULL;
    char err[512] = "";
    int rc = store_open(&s, &f->loop, f->path, NULL, err, sizeof(err));
    assert_true(rc < 0);
    assert_null(s);
    assert_non_null(strstr(err, "migration 1"));
    assert_non_null(strstr(err, "already exists"));
    print_message("      refused: %s\n", err);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), 0); /* rolled back */
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM sqlite_master WHERE name='events'"), 0);
}

static void test_unknown_column_refused(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    close_store(f, open_store(f, &d));
    sql_exec(f->path, "ALTER TABLE sessions ADD COLUMN surprise TEXT;");
    store_t *s = NULL;
    char err[512] = "";
    assert_true(store_open(&s, &f->loop, f->path, NULL, err, sizeof(err)) < 0);
    assert_null(s);
    assert_non_null(strstr(err, "surprise"));
}

static int late_calls;
static void late_cb(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                    const size_t *lens, int64_t oldest)
{
    (void)ctx, (void)rc, (void)n, (void)seqs, (void)json, (void)lens, (void)oldest;
    late_calls++;
}

static void test_close_with_pending_writes(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    store_session_t a;
    make_row(&a, "pend", "running", 0);
    store_session_put(s, &a);
    for (int64_t q = 1; q <= 2000; q++)
        append_ev(s, "pend", q, "message.delta");
    late_calls = 0;
    store_events_read(s, "pend", 0, 10, late_cb, NULL);
    store_session_put(s, &a);
    close_store(f, s);               /* never ran the loop while the store was open */
    assert_int_equal(late_calls, 0); /* answers not delivered before close are dropped */
    assert_int_equal(d.calls, 0);

    assert_int_equal(sql_int(f->path, EVENTS_OF("pend")), 2000);
    dur_rec_t d2 = {0};
    s = open_store(f, &d2);
    rows_t rs = {0};
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].last_seq, 2000);
    close_store(f, s);
}

/* A callback that closes the store: nothing is delivered after that. */
static store_t *g_close_me;
static void close_from_cb(void *ctx, const char *sid, int64_t seq)
{
    (void)sid, (void)seq;
    dur_rec_t *d = ctx;
    d->calls++;
    if (d->calls == 1) store_close(g_close_me);
}

static void test_close_inside_callback(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    char err[256];
    g_close_me = NULL;
    assert_int_equal(
        store_open(&g_close_me, &f->loop, f->path,
                   &(store_hooks_t){.on_stored = close_from_cb, .ctx = &d}, err, sizeof(err)),
        0);
    for (int k = 0; k < 5; k++) {
        char sid[16];
        snprintf(sid, sizeof(sid), "cb-%d", k);
        for (int64_t q = 1; q <= 3; q++)
            append_ev(g_close_me, sid, q, "e");
    }
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0); /* ends once closed */
    assert_int_equal(d.calls, 1);
    assert_int_equal(sql_int(f->path, EVENTS_SQL), 15);
}

static void test_failed_writes_are_isolated(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    close_store(f, open_store(f, &d));
    /* A trigger that rolls the whole transaction back, and one that only
     * rejects its own statement: each fires on a chunk holding one of its
     * events (x:2 and x:4 are "boom", z:2 is "reject"), whatever else the
     * chunk holds. */
    sql_exec(f->path, "CREATE TRIGGER boom BEFORE INSERT ON event_chunks WHEN NEW.session_id='x' "
                      "AND (2 BETWEEN NEW.first_seq AND NEW.last_seq OR "
                      "4 BETWEEN NEW.first_seq AND NEW.last_seq) "
                      "BEGIN SELECT RAISE(ROLLBACK, 'boom trigger'); END;"
                      "CREATE TRIGGER rej BEFORE INSERT ON event_chunks WHEN NEW.session_id='z' "
                      "AND 2 BETWEEN NEW.first_seq AND NEW.last_seq "
                      "BEGIN SELECT RAISE(ABORT, 'rejected by trigger'); END;");
    store_t *s = open_store(f, &d);

    append_ev(s, "x", 1, "e");
    flush(f, s);
    assert_int_equal(dur_last(&d, "x"), 1);

    /* The batch holding x:2 fails as a whole; its other ops are then stored
     * one transaction each, and only x:2 is lost. */
    append_ev(s, "x", 2, "boom");
    append_ev(s, "y", 1, "e");
    append_ev(s, "x", 3, "e");
    append_ev(s, "y", 2, "e");
    flush(f, s);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_true(st.failed_batches >= 1);
    assert_int_equal(st.lost_events, 1);
    assert_int_equal(dur_last(&d, "y"), 2);
    assert_int_equal(dur_last(&d, "x"), 3); /* the session keeps flowing past the hole */
    page_t pg;
    read_page(f, s, "x", 0, 10, &pg);
    assert_int_equal(pg.n, 2);
    assert_int_equal(pg.seqs[0], 1);
    assert_int_equal(pg.seqs[1], 3);
    read_page(f, s, "y", 0, 10, &pg);
    assert_int_equal(pg.n, 2);

    /* A lost event alone is never reported durable. */
    int before = d.calls;
    append_ev(s, "x", 4, "boom");
    flush(f, s);
    assert_int_equal(d.calls, before);
    assert_int_equal(dur_last(&d, "x"), 3);

    /* A statement-level rejection inside a healthy batch loses only that
     * event; no transaction is rolled back for it. */
    store_get_stats(s, &st);
    uint64_t failed = st.failed_batches;
    append_ev(s, "z", 1, "e");
    append_ev(s, "w", 1, "e");
    append_ev(s, "z", 2, "reject");
    append_ev(s, "w", 2, "e");
    append_ev(s, "z", 3, "e");
    flush(f, s);
    assert_int_equal(dur_last(&d, "z"), 3);
    assert_int_equal(dur_last(&d, "w"), 2);
    read_page(f, s, "z", 0, 10, &pg);
    assert_int_equal(pg.n, 2);
    assert_int_equal(pg.seqs[1], 3);
    store_get_stats(s, &st);
    assert_int_equal(st.failed_batches, failed);
    assert_int_equal(st.lost_events, 3);

    /* A duplicate seq keeps the stored event and is not a failure. */
    store_event_append(s, "dup", 1, "e", "{\"first\":1}", 11);
    store_event_append(s, "dup", 1, "e", "{\"again\":1}", 11);
    store_event_append(s, "dup", 2, "e", "{\"second\":2}", 12);
    flush(f, s);
    assert_int_equal(dur_last(&d, "dup"), 2);
    read_page(f, s, "dup", 0, 10, &pg);
    assert_int_equal(pg.n, 2);
    assert_string_equal(pg.json[0], "{\"first\":1}");

    /* Deleting a session lets its id start again at seq 1. */
    store_session_delete(s, "x");
    dur_forget(&d, "x");
    append_ev(s, "x", 1, "e");
    flush(f, s);
    assert_int_equal(dur_last(&d, "x"), 1);

    store_get_stats(s, &st);
    assert_int_equal(st.failed_batches, failed);
    assert_int_equal(st.lost_events, 3);
    assert_int_equal(d.not_increasing, 0);
    close_store(f, s);
}

/* Another process holds the write lock longer than the busy timeout: the
 * batch is rolled back, nothing is reported, and a retry stores all of it. */
typedef struct locker {
    sqlite3 *db;
    dur_rec_t *d;
    int calls_while_locked;
} locker_t;

static void unlock_cb(uv_timer_t *t)
{
    locker_t *l = t->data;
    l->calls_while_locked = l->d->calls;
    assert_int_equal(sqlite3_exec(l->db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_busy_batch_is_retried(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    locker_t l = {.d = &d};
    assert_int_equal(sqlite3_open(f->path, &l.db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(l.db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    for (int64_t q = 1; q <= 100; q++)
        append_ev(s, "busy", q, "e");
    uv_timer_t t;
    uv_timer_init(&f->loop, &t);
    t.data = &l;
    uv_update_time(&f->loop);
    uv_timer_start(&t, unlock_cb, 6000, 0); /* > the store's 5 s busy timeout */
    while (dur_last(&d, "busy") < 100)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the timer's close */
    assert_int_equal(l.calls_while_locked, 0);
    sqlite3_close(l.db);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_true(st.failed_batches >= 1);
    assert_int_equal(st.lost_events, 0);
    assert_int_equal(st.events, 100);
    close_store(f, s);
    assert_int_equal(sql_int(f->path, EVENTS_SQL), 100);
}

/* ---- the journal --------------------------------------------------------- */

typedef struct two_recs {
    dur_rec_t journaled, stored;
} two_recs_t;

static void on_journaled2(void *ctx, const char *sid, int64_t seq)
{
    on_durable(&((two_recs_t *)ctx)->journaled, sid, seq);
}

static void on_stored2(void *ctx, const char *sid, int64_t seq)
{
    on_durable(&((two_recs_t *)ctx)->stored, sid, seq);
}

static store_t *open_store2(fx_t *f, two_recs_t *r)
{
    store_t *s = NULL;
    char err[512] = "";
    store_hooks_t h = {.on_durable = on_journaled2, .on_stored = on_stored2, .ctx = r};
    int rc = store_open(&s, &f->loop, f->path, &h, err, sizeof(err));
    if (rc != 0) fail_msg("store_open: %d %s", rc, err);
    f->open = s;
    return s;
}

static int count_journal_files(const fx_t *f)
{
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/data", f->dir);
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, "store.db.journal.") && !strstr(de->d_name, ".lock")) n++;
    if (d) closedir(d);
    return n;
}

/* Appends are durable once the loop iteration that queued them ends (the
 * journal was written), whether or not the database could commit them:
 * here another connection holds the write lock the whole time. */
static void test_durable_before_the_database_commits(void **state)
{
    fx_t *f = *state;
    two_recs_t r = {0};
    store_t *s = open_store2(f, &r);
    sqlite3 *lock;
    assert_int_equal(sqlite3_open(f->path, &lock), SQLITE_OK);
    assert_int_equal(sqlite3_exec(lock, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    for (int64_t q = 1; q <= 50; q++) {
        append_ev(s, "a", q, "e");
        append_ev(s, "b", q, "e");
    }
    assert_int_equal(dur_last(&r.journaled, "a"), 0); /* nothing before the loop runs */
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_true(dur_last(&r.journaled, "a") == 50);
    assert_true(dur_last(&r.journaled, "b") == 50);
    assert_int_equal(r.journaled.not_increasing, 0);
    assert_int_equal(r.stored.calls, 0); /* the database has none of it */
    assert_int_equal(count_journal_files(f), 1);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_true(st.journal_writes >= 1 && st.journal_bytes > 50 * 2 * 16);
    assert_int_equal(sqlite3_exec(lock, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(lock);
    while (dur_last(&r.stored, "a") < 50 || dur_last(&r.stored, "b") < 50)
        uv_run(&f->loop, UV_RUN_ONCE);
    close_store(f, s);
    assert_int_equal(sql_int(f->path, EVENTS_SQL), 100);
    assert_int_equal(count_journal_files(f), 0); /* a clean close leaves no journal */
}

/* A durable report's callback may close the store (a gateway shutting down
 * from inside one): the journal pass stops there, nothing is touched after,
 * and everything queued is still applied. */
static void test_close_inside_durable_callback(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    char err[256];
    g_close_me = NULL;
    store_hooks_t h = {.on_durable = close_from_cb, .ctx = &d};
    assert_int_equal(store_open(&g_close_me, &f->loop, f->path, &h, err, sizeof(err)), 0);
    for (int k = 0; k < 5; k++) {
        char sid[16];
        snprintf(sid, sizeof(sid), "dcb-%d", k);
        for (int64_t q = 1; q <= 3; q++) append_ev(g_close_me, sid, q, "e");
    }
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0); /* ends once closed */
    assert_int_equal(d.calls, 1);
    assert_int_equal(sql_int(f->path, EVENTS_SQL), 15);
    assert_int_equal(count_journal_files(f), 0);
}

/* The promise the journal exists for: a process killed after its appends
 * were reported durable, before the database committed them, loses none of
 * them; the next open applies them, and session rows and deletes too. */
static void test_killed_process_loses_nothing_durable(void **state)
{
    fx_t *f = *state;
    /* a row and events the database has before the crash */
    two_recs_t r0 = {0};
    store_t *s0 = open_store2(f, &r0);
    store_session_t row;
    make_row(&row, "gone", "idle", 0);
    store_session_put(s0, &row);
    append_ev(s0, "gone", 1, "e");
    close_store(f, s0);

    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* the child: the database stays locked, so only the journal has them */
        uv_loop_t loop;
        uv_loop_init(&loop);
        two_recs_t r = {0};
        store_t *s = NULL;
        char err[512];
        store_hooks_t h = {.on_durable = on_journaled2, .on_stored = on_stored2, .ctx = &r};
        if (store_open(&s, &loop, f->path, &h, err, sizeof(err)) != 0) _exit(3);
        sqlite3 *lock;
        if (sqlite3_open(f->path, &lock) != SQLITE_OK ||
            sqlite3_exec(lock, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            _exit(2);
        make_row(&row, "kept", "running", 0);
        row.turn_open = true;
        store_session_put(s, &row);
        for (int64_t q = 1; q <= 300; q++) append_ev(s, "kept", q, "e");
        store_session_delete(s, "gone");
        store_events_trim(s, "kept", 100);
        uv_run(&loop, UV_RUN_NOWAIT);
        if (dur_last(&r.journaled, "kept") != 300 || r.stored.calls) _exit(4);
        char ok = 'k';
        if (write(pipefd[1], &ok, 1) != 1) _exit(5);
        for (;;) pause(); /* killed here, the store thread still waiting for the lock */
    }
    close(pipefd[1]);
    char c = 0;
    ssize_t got = read(pipefd[0], &c, 1);
    close(pipefd[0]);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    if (got != 1) fail_msg("the child failed before the kill: exit %d", WEXITSTATUS(status));
    assert_int_equal(c, 'k');
    assert_true(WIFSIGNALED(status));
    assert_int_equal(sql_int(f->path, EVENTS_OF("kept")), 0); /* not in the database */
    assert_true(count_journal_files(f) >= 1);

    two_recs_t r = {0};
    store_t *s = open_store2(f, &r);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_int_equal(st.journal_replayed, 1 + 300 + 1 + 1);
    rows_t rows = {0};
    assert_int_equal(store_load_sessions(s, collect_row, &rows), 0);
    const store_session_t *k = find_row(&rows, "kept");
    assert_non_null(k);
    assert_true(k->last_seq == 300); /* seq continues after the crash */
    assert_true(k->turn_open);
    const store_session_t *g = find_row(&rows, "gone");
    assert_null(g);
    page_t p = {0};
    read_page(f, s, "kept", 0, 256, &p);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.n, 200); /* the trim was re-applied too */
    assert_true(p.seqs[0] == 101 && p.seqs[199] == 300);
    assert_true(p.oldest == 101);
    close_store(f, s);
    assert_int_equal(count_journal_files(f), 0);
    assert_int_equal(sql_int(f->path, EVENTS_OF("gone")), 0);
    /* and a second open re-applies nothing */
    s = open_store2(f, &r);
    store_get_stats(s, &st);
    assert_int_equal(st.journal_replayed, 0);
    close_store(f, s);
}

/* A database written by schema version 1 is migrated, keeping its rows. */
static void test_upgrade_from_v1(void **state)
{
    fx_t *f = *state;
    snprintf(f->path, sizeof(f->path), "%s/v1.db", f->dir);
    sql_exec(f->path,
             "CREATE TABLE sessions (id TEXT PRIMARY KEY NOT NULL, owner TEXT NOT NULL DEFAULT '',"
             " bot_id TEXT NOT NULL DEFAULT '', worker_type TEXT NOT NULL DEFAULT '',"
             " client_key TEXT NOT NULL DEFAULT '', work_dir TEXT NOT NULL DEFAULT '',"
             " state TEXT NOT NULL DEFAULT 'created', agent_model TEXT NOT NULL DEFAULT '',"
             " last_seq INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL DEFAULT 0,"
             " updated_ms INTEGER NOT NULL DEFAULT 0, agent_started INTEGER NOT NULL DEFAULT 0);"
             "CREATE TABLE events (session_id TEXT NOT NULL, seq INTEGER NOT NULL,"
             " type TEXT NOT NULL, json TEXT NOT NULL, created_ms INTEGER NOT NULL,"
             " PRIMARY KEY (session_id, seq)) WITHOUT ROWID;"
             "INSERT INTO sessions VALUES('old','bob','bot','claude_code','ck','/w','idle','m',"
             " 7,1,2,1);"
             "INSERT INTO events VALUES('old',8,'e','{}',3);"
             "PRAGMA user_version=1;");
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), store_schema_version());
    rows_t rs = {0};
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_int_equal(rs.n, 1);
    assert_string_equal(rs.r[0].owner, "bob");
    assert_string_equal(rs.r[0].agent_sid, "");
    assert_false(rs.r[0].turn_open); /* migration 3's default */
    assert_int_equal(rs.r[0].last_seq, 8);
    assert_true(rs.r[0].agent_started);
    store_session_t row = rs.r[0];
    snprintf(row.agent_sid, sizeof(row.agent_sid), "agent-42");
    store_session_put(s, &row);
    flush(f, s);
    memset(&rs, 0, sizeof(rs));
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_row_eq(&rs.r[0], &row);
    close_store(f, s);
}

static void test_disk_full_retried_then_given_up(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    assert_string_equal(sqlite3_vfs_find(NULL)->zName, "hotplex-test-full");

    /* Two failing commits: the batch is retried and then stored whole. */
    g_fail_writes = 2;
    for (int64_t q = 1; q <= 50; q++)
        append_ev(s, "full", q, "e");
    flush(f, s);
    assert_int_equal(g_fail_writes, 0);
    assert_int_equal(dur_last(&d, "full"), 50);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_true(st.failed_batches >= 2);
    assert_int_equal(st.lost_events, 0);
    assert_int_equal(st.events, 50);

    /* The disk stays full: after the retries the writes are dropped and not
     * reported; reads are still answered from what is committed. */
    int before = d.calls;
    g_fail_writes = -1;
    for (int64_t q = 51; q <= 60; q++)
        append_ev(s, "full", q, "e");
    page_t pg;
    read_page(f, s, "full", 40, 100, &pg);
    assert_int_equal(pg.rc, 0);
    assert_int_equal(pg.n, 10); /* 41..50: the batch's own writes are not visible */
    assert_int_equal(pg.seqs[9], 50);
    flush(f, s);
    assert_int_equal(d.calls, before);
    store_get_stats(s, &st);
    assert_int_equal(st.lost_events, 10);

    /* Space again: the store kept running. */
    g_fail_writes = 0;
    append_ev(s, "full", 61, "e");
    flush(f, s);
    assert_int_equal(dur_last(&d, "full"), 61);
    read_page(f, s, "full", 50, 100, &pg);
    assert_int_equal(pg.n, 1);
    assert_int_equal(pg.seqs[0], 61);
    assert_int_equal(d.not_increasing, 0);
    close_store(f, s);
}

/* ---- event chunks ------------------------------------------------------ */

/* Another connection takes the write lock: the store thread's next batch
 * waits in BEGIN (SQLite's busy handler) while the test queues more, so
 * whatever is queued before unlock_db lands in at most two batches, whatever
 * the timing; the store must be idle when lock_db is called (flush). Makes
 * packing deterministic enough to assert on. */
static sqlite3 *lock_db(const char *path)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    return db;
}

static void unlock_db(sqlite3 *db)
{
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* The envelope of sid:seq: deterministic, 30 to ~1,700 bytes, so a run of
 * them fills chunks to their cap unevenly. */
static size_t ev_json(const char *sid, int64_t seq, char *out, size_t cap)
{
    int n = snprintf(out, cap, "{\"sid\":\"%s\",\"seq\":%lld,\"pad\":\"", sid, (long long)seq);
    size_t len = (size_t)n, pad = (size_t)((seq * 7919) % 1601);
    assert_true(len + pad + 3 < cap);
    for (size_t i = 0; i < pad; i++)
        out[len++] = (char)('a' + (seq + (int64_t)i) % 26);
    memcpy(out + len, "\"}", 3);
    return len + 2;
}

static void append_big(store_t *s, const char *sid, int64_t seq)
{
    char json[2048];
    size_t n = ev_json(sid, seq, json, sizeof(json));
    store_event_append(s, sid, seq, "message.delta", json, n);
}

/* Every event of a read (all pages, or just the first), copied. */
typedef struct evlist {
    store_t *s;
    const char *sid;
    int limit;
    bool one_page;
    int done, rc, n, cap, pages, bad;
    int64_t oldest;
    int64_t *seqs;
    char **json;
    size_t *lens;
} evlist_t;

static void evlist_cb(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                      const size_t *lens, int64_t oldest)
{
    evlist_t *l = ctx;
    l->rc = rc;
    l->oldest = oldest;
    if (n > l->limit) l->bad++;
    for (int i = 0; i < n; i++) {
        if (l->n == l->cap) {
            l->cap = l->cap ? l->cap * 2 : 64;
            l->seqs = realloc(l->seqs, (size_t)l->cap * sizeof(*l->seqs));
            l->json = realloc(l->json, (size_t)l->cap * sizeof(*l->json));
            l->lens = realloc(l->lens, (size_t)l->cap * sizeof(*l->lens));
            assert_non_null(l->seqs);
            assert_non_null(l->json);
            assert_non_null(l->lens);
        }
        if (json[i][lens[i]] != '\0') l->bad++; /* NUL-terminated too */
        l->seqs[l->n] = seqs[i];
        l->lens[l->n] = lens[i];
        l->json[l->n] = malloc(lens[i] + 1);
        assert_non_null(l->json[l->n]);
        memcpy(l->json[l->n], json[i], lens[i] + 1);
        l->n++;
    }
    if (n > 0) l->pages++;
    if (rc != 0 || n == 0 || l->one_page) {
        l->done = 1;
        return;
    }
    store_events_read(l->s, l->sid, seqs[n - 1], l->limit, evlist_cb, l);
}

static void evlist_free(evlist_t *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->json[i]);
    free(l->json);
    free(l->seqs);
    free(l->lens);
    memset(l, 0, sizeof(*l));
}

/* Queue a read of sid after `after` (all pages unless one_page). */
static void read_start(store_t *s, const char *sid, int64_t after, int limit, bool one_page,
                       evlist_t *l)
{
    memset(l, 0, sizeof(*l));
    l->s = s;
    l->sid = sid;
    l->limit = limit;
    l->one_page = one_page;
    store_events_read(s, sid, after, limit, evlist_cb, l);
}

static void read_wait(fx_t *f, evlist_t *l)
{
    while (!l->done)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(l->rc, 0);
    assert_int_equal(l->bad, 0);
}

static void read_all(fx_t *f, store_t *s, const char *sid, int64_t after, int limit, bool one_page,
                     evlist_t *l)
{
    read_start(s, sid, after, limit, one_page, l);
    read_wait(f, l);
}

/* Event i of l is the ev_json envelope of sid:seq. */
static void assert_event(const evlist_t *l, int i, const char *sid, int64_t seq)
{
    char want[2048];
    size_t wl = ev_json(sid, seq, want, sizeof(want));
    assert_true(i < l->n);
    if (l->seqs[i] != seq || l->lens[i] != wl || memcmp(l->json[i], want, wl) != 0)
        fail_msg("%s: event %d: seq %lld (want %lld), %zu bytes (want %zu)", sid, i,
                 (long long)l->seqs[i], (long long)seq, l->lens[i], wl);
}

/* l holds exactly the ev_json envelopes of sid, seqs first..last. */
static void assert_events(const evlist_t *l, const char *sid, int64_t first, int64_t last)
{
    assert_int_equal(l->n, last - first + 1);
    for (int i = 0; i < l->n; i++)
        assert_event(l, i, sid, first + i);
}

static void wait_durable(fx_t *f, dur_rec_t *d, const char *sid, int64_t seq)
{
    while (dur_last(d, sid) < seq)
        uv_run(&f->loop, UV_RUN_ONCE);
}

/* A chunk of `sid` with at least `min` events: its first and last seq. */
static void find_chunk(fx_t *f, const char *sid, int min, int64_t *first, int64_t *last)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT first_seq FROM event_chunks WHERE session_id='%s' AND "
             "last_seq - first_seq + 1 >= %d ORDER BY last_seq LIMIT 1",
             sid, min);
    *first = sql_int(f->path, sql);
    snprintf(sql, sizeof(sql),
             "SELECT last_seq FROM event_chunks WHERE session_id='%s' AND first_seq=%lld", sid,
             (long long)*first);
    *last = sql_int(f->path, sql);
    assert_true(*last - *first + 1 >= min);
}

static void test_pack_interleaved_sessions(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    const char *sids[5] = {"pk-a", "pk-b", "pk-c", "pk-d", "pk-e"};
    const int64_t per = 3000;
    sqlite3 *lk = lock_db(f->path);
    for (int64_t q = 1; q <= per; q++)
        for (int k = 0; k < 5; k++)
            append_big(s, sids[k], q);
    unlock_db(lk);
    for (int k = 0; k < 5; k++)
        wait_durable(f, &d, sids[k], per);
    assert_int_equal(d.not_increasing, 0);

    store_stats_t st;
    store_get_stats(s, &st);
    assert_int_equal(st.events, 5 * per);
    assert_int_equal(st.lost_events, 0);
    assert_int_equal(st.failed_batches, 0);
    assert_true((uint64_t)d.calls <= 5 * st.batches); /* one report per session per batch */
    assert_int_equal(sql_int(f->path, EVENTS_SQL), 5 * per);
    /* Packed: ~13 MB of envelopes in chunks of <= 64 KiB (at most two
     * batches, so at most two runs per session plus the cap's cuts). */
    int64_t chunks = sql_int(f->path, "SELECT count(*) FROM event_chunks");
    print_message("      %lld events in %lld chunks, %llu batches\n", (long long)(5 * per),
                  (long long)chunks, (unsigned long long)st.batches);
    assert_true(chunks <= 5 * per / 20);
    assert_true(sql_int(f->path, "SELECT max(length(data)) FROM event_chunks") <= 65536);

    for (int k = 0; k < 5; k++) {
        evlist_t l;
        read_all(f, s, sids[k], 0, 97, false, &l); /* pages cut chunks anywhere */
        assert_int_equal(l.oldest, 1);
        assert_events(&l, sids[k], 1, per);
        evlist_free(&l);
    }
    close_store(f, s);
}

/* 400 big events of `sid` queued while the database is locked, so they
 * land in one batch and pack into several chunks; [*cf, *cl] is the 4th. */
static void fill_packed(fx_t *f, store_t *s, dur_rec_t *d, const char *sid, int64_t *cf,
                        int64_t *cl)
{
    sqlite3 *lk = lock_db(f->path);
    for (int64_t q = 1; q <= 400; q++)
        append_big(s, sid, q);
    unlock_db(lk);
    wait_durable(f, d, sid, 400);
    find_chunk(f, sid, 4, cf, cl);
}

static void test_read_mid_chunk_and_small_limit(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    int64_t cf, cl;
    fill_packed(f, s, &d, "mid", &cf, &cl);

    evlist_t l;
    read_all(f, s, "mid", cf, 2, true, &l); /* starts after the chunk's first event */
    assert_int_equal(l.oldest, 1);
    assert_events(&l, "mid", cf + 1, cf + 2); /* a limit smaller than the chunk */
    evlist_free(&l);
    read_all(f, s, "mid", cf, 1, true, &l);
    assert_events(&l, "mid", cf + 1, cf + 1);
    evlist_free(&l);
    read_all(f, s, "mid", cf + 1, 3, false, &l); /* pages of 3 across chunk ends */
    assert_events(&l, "mid", cf + 2, 400);
    evlist_free(&l);
    read_all(f, s, "mid", cl, 1000, true, &l); /* from the next chunk on */
    assert_events(&l, "mid", cl + 1, 400);
    evlist_free(&l);
    read_all(f, s, "mid", 400, 10, true, &l);
    assert_int_equal(l.n, 0);
    assert_int_equal(l.oldest, 1);
    evlist_free(&l);
    close_store(f, s);
}

static void test_trim_mid_chunk(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    int64_t cf, cl;
    fill_packed(f, s, &d, "tr", &cf, &cl);

    /* Cut inside a chunk: it now starts after the limit. */
    store_events_trim(s, "tr", cf + 1);
    evlist_t l;
    read_all(f, s, "tr", 0, 50, false, &l);
    assert_int_equal(l.oldest, cf + 2);
    assert_events(&l, "tr", cf + 2, 400);
    evlist_free(&l);
    char sql[160];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM event_chunks WHERE session_id='tr' AND first_seq=%lld AND "
             "last_seq=%lld",
             (long long)(cf + 2), (long long)cl);
    assert_int_equal(sql_int(f->path, sql), 1);
    read_all(f, s, "tr", cf + 2, 1, true, &l); /* and reads inside the cut chunk still work */
    assert_events(&l, "tr", cf + 3, cf + 3);
    evlist_free(&l);

    /* At a chunk's end; below what is left (nothing happens). */
    store_events_trim(s, "tr", cl);
    store_events_trim(s, "tr", 3);
    read_all(f, s, "tr", 0, 1000, false, &l);
    assert_int_equal(l.oldest, cl + 1);
    assert_events(&l, "tr", cl + 1, 400);
    evlist_free(&l);

    /* Everything: nothing left, and the session goes on. */
    store_events_trim(s, "tr", 400);
    read_all(f, s, "tr", 0, 10, false, &l);
    assert_int_equal(l.n, 0);
    assert_int_equal(l.oldest, 0);
    evlist_free(&l);
    for (int64_t q = 401; q <= 410; q++)
        append_big(s, "tr", q);
    read_all(f, s, "tr", 0, 100, false, &l);
    assert_int_equal(l.oldest, 401);
    assert_events(&l, "tr", 401, 410);
    evlist_free(&l);
    assert_int_equal(dur_last(&d, "tr"), 410);

    /* A trim between appends of one batch applies in queue order. */
    flush(f, s);
    sqlite3 *lk = lock_db(f->path);
    for (int64_t q = 411; q <= 420; q++)
        append_big(s, "tr", q);
    store_events_trim(s, "tr", 415);
    for (int64_t q = 421; q <= 425; q++)
        append_big(s, "tr", q);
    read_start(s, "tr", 0, 100, false, &l);
    unlock_db(lk);
    read_wait(f, &l);
    assert_int_equal(l.oldest, 416);
    assert_events(&l, "tr", 416, 425);
    evlist_free(&l);
    assert_int_equal(dur_last(&d, "tr"), 425);
    assert_int_equal(d.not_increasing, 0);
    close_store(f, s);
}

static void test_delete_packed_session(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    sqlite3 *lk = lock_db(f->path);
    for (int64_t q = 1; q <= 300; q++) {
        append_big(s, "dp", q);
        append_big(s, "keep", q);
    }
    store_session_delete(s, "dp");
    for (int64_t q = 1; q <= 5; q++) /* a new life of the id, same batch */
        append_big(s, "dp", q);
    evlist_t l;
    read_start(s, "dp", 0, 100, false, &l);
    unlock_db(lk);
    read_wait(f, &l);
    assert_int_equal(l.oldest, 1);
    assert_events(&l, "dp", 1, 5);
    evlist_free(&l);
    assert_int_equal(sql_int(f->path, EVENTS_OF("dp")), 5);
    assert_int_equal(dur_last(&d, "dp"), 5);

    store_session_delete(s, "dp");
    read_all(f, s, "dp", 0, 100, false, &l);
    assert_int_equal(l.n, 0);
    assert_int_equal(l.oldest, 0);
    evlist_free(&l);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM event_chunks WHERE session_id='dp'"),
                     0);
    read_all(f, s, "keep", 0, 1000, false, &l);
    assert_events(&l, "keep", 1, 300);
    evlist_free(&l);
    close_store(f, s);
}

static void test_reopen_packed_and_duplicates(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    store_session_t a, b;
    make_row(&a, "ro-a", "running", 0);
    make_row(&b, "ro-b", "running", 0);
    store_session_put(s, &a);
    store_session_put(s, &b);
    flush(f, s);
    sqlite3 *lk = lock_db(f->path);
    for (int64_t q = 1; q <= 1000; q++) {
        append_big(s, "ro-a", q);
        append_big(s, "ro-b", q);
    }
    unlock_db(lk);
    close_store(f, s); /* writes everything queued */

    dur_rec_t d2 = {0};
    s = open_store(f, &d2);
    rows_t rs = {0};
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_int_equal(rs.n, 2);
    assert_int_equal(find_row(&rs, "ro-a")->last_seq, 1000); /* MAX(last_seq) */
    assert_int_equal(find_row(&rs, "ro-b")->last_seq, 1000);
    evlist_t l;
    read_all(f, s, "ro-a", 0, 333, false, &l);
    assert_events(&l, "ro-a", 1, 1000);
    evlist_free(&l);

    /* The store thread learns the highest seq from the table: a repeat of
     * a stored seq keeps the stored event, the next one is stored. */
    store_event_append(s, "ro-a", 1000, "e", "{\"again\":1}", 11);
    store_event_append(s, "ro-a", 999, "e", "{\"older\":1}", 11);
    append_big(s, "ro-a", 1001);
    read_all(f, s, "ro-a", 998, 10, false, &l);
    assert_events(&l, "ro-a", 999, 1001);
    evlist_free(&l);
    assert_int_equal(dur_last(&d2, "ro-a"), 1001);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_int_equal(st.lost_events, 0);
    assert_int_equal(st.events, 1);
    close_store(f, s);
}

/* A version-3 database (events one row each) is migrated to chunks and
 * reads back byte for byte, raw newlines and all. */
static void test_migrate_events_from_v3(void **state)
{
    fx_t *f = *state;
    snprintf(f->path, sizeof(f->path), "%s/v3.db", f->dir);
    sql_exec(f->path,
             "CREATE TABLE sessions (id TEXT PRIMARY KEY NOT NULL, owner TEXT NOT NULL DEFAULT '',"
             " bot_id TEXT NOT NULL DEFAULT '', worker_type TEXT NOT NULL DEFAULT '',"
             " client_key TEXT NOT NULL DEFAULT '', work_dir TEXT NOT NULL DEFAULT '',"
             " state TEXT NOT NULL DEFAULT 'created', agent_model TEXT NOT NULL DEFAULT '',"
             " last_seq INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL DEFAULT 0,"
             " updated_ms INTEGER NOT NULL DEFAULT 0, agent_started INTEGER NOT NULL DEFAULT 0,"
             " agent_sid TEXT NOT NULL DEFAULT '', turn_open INTEGER NOT NULL DEFAULT 0);"
             "CREATE TABLE events (session_id TEXT NOT NULL, seq INTEGER NOT NULL,"
             " type TEXT NOT NULL, json TEXT NOT NULL, created_ms INTEGER NOT NULL,"
             " PRIMARY KEY (session_id, seq)) WITHOUT ROWID;"
             "INSERT INTO sessions(id,owner,state,last_seq,agent_sid,turn_open)"
             " VALUES('old','bob','idle',2,'ag',1);"
             "INSERT INTO events VALUES('old',1,'e','{\"a\":1}',10);"
             "INSERT INTO events VALUES('old',2,'e','{\"b\":' || char(10) || '2}',11);"
             "INSERT INTO events VALUES('old',3,'e','',12);"
             "INSERT INTO events VALUES('old',4,'e','{\"q\":\"x\\\"y\"}' || char(10),13);"
             "INSERT INTO events VALUES('orph',5,'e','{\"o\":5}',14);"
             "INSERT INTO events VALUES('orph',6,'e','{\"o\":6}',15);"
             "PRAGMA user_version=3;");
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    assert_int_equal(sql_int(f->path, "PRAGMA user_version"), store_schema_version());
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM sqlite_master WHERE name='events'"), 0);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM event_chunks WHERE first_seq=last_seq"),
                     6);
    rows_t rs = {0};
    assert_int_equal(store_load_sessions(s, collect_row, &rs), 0);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].last_seq, 4); /* from the events */
    assert_string_equal(rs.r[0].agent_sid, "ag");
    assert_true(rs.r[0].turn_open);

    static const char *const want[] = {"{\"a\":1}", "{\"b\":\n2}", "", "{\"q\":\"x\\\"y\"}\n"};
    evlist_t l;
    read_all(f, s, "old", 0, 2, false, &l);
    assert_int_equal(l.n, 4);
    assert_int_equal(l.oldest, 1);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(l.seqs[i], i + 1);
        assert_int_equal(l.lens[i], strlen(want[i]));
        assert_memory_equal(l.json[i], want[i], l.lens[i]);
    }
    evlist_free(&l);
    read_all(f, s, "orph", 0, 10, false, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.oldest, 5);
    assert_string_equal(l.json[1], "{\"o\":6}");
    evlist_free(&l);

    /* New events pack after the migrated ones; a duplicate of a migrated
     * seq keeps it; trim and read across both kinds. */
    store_event_append(s, "old", 4, "e", "{\"dup\":4}", 9);
    for (int64_t q = 5; q <= 8; q++)
        append_big(s, "old", q);
    store_events_trim(s, "old", 3);
    read_all(f, s, "old", 0, 3, false, &l);
    assert_int_equal(l.oldest, 4);
    assert_int_equal(l.n, 5);
    assert_string_equal(l.json[0], want[3]);
    for (int i = 1; i < 5; i++) {
        char w[2048];
        size_t wl = ev_json("old", 4 + i, w, sizeof(w));
        assert_int_equal(l.seqs[i], 4 + i);
        assert_int_equal(l.lens[i], wl);
        assert_memory_equal(l.json[i], w, wl);
    }
    evlist_free(&l);
    assert_int_equal(dur_last(&d, "old"), 8);
    close_store(f, s);
}

/* Envelopes are single-line JSON as the gateway writes them, but a raw
 * '\n' (JSON whitespace copied verbatim) must not corrupt a chunk: such an
 * envelope is a chunk of its own and reads back as it was. */
static void test_newline_in_envelope(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    store_t *s = open_store(f, &d);
    char json[21][32];
    sqlite3 *lk = lock_db(f->path);
    for (int q = 1; q <= 20; q++) {
        switch (q) {
        case 5:
            snprintf(json[q], sizeof(json[q]), "{\n\"a\":5}");
            break;
        case 9:
            snprintf(json[q], sizeof(json[q]), "\n");
            break;
        case 10:
            json[q][0] = '\0';
            break; /* empty: fine inside a chunk */
        case 12:
            snprintf(json[q], sizeof(json[q]), "{\"x\":12}\n");
            break;
        case 13:
            snprintf(json[q], sizeof(json[q]), "\n\n{\"y\":13}");
            break;
        default:
            snprintf(json[q], sizeof(json[q]), "{\"n\":%d}", q);
            break;
        }
        store_event_append(s, "nl", q, "e", json[q], strlen(json[q]));
    }
    unlock_db(lk);
    wait_durable(f, &d, "nl", 20);
    assert_int_equal(sql_int(f->path, "SELECT count(*) FROM event_chunks WHERE session_id='nl' AND "
                                      "first_seq=last_seq AND first_seq IN (5,9,12,13)"),
                     4);
    for (int limit = 1; limit <= 20; limit += 6) {
        evlist_t l;
        read_all(f, s, "nl", 0, limit, false, &l);
        assert_int_equal(l.n, 20);
        for (int i = 0; i < 20; i++) {
            assert_int_equal(l.seqs[i], i + 1);
            assert_int_equal(l.lens[i], strlen(json[i + 1]));
            assert_memory_equal(l.json[i], json[i + 1], l.lens[i]);
        }
        evlist_free(&l);
    }
    store_events_trim(s, "nl", 11);
    evlist_t l;
    read_all(f, s, "nl", 0, 5, false, &l);
    assert_int_equal(l.n, 9);
    assert_int_equal(l.oldest, 12);
    assert_string_equal(l.json[0], json[12]);
    assert_string_equal(l.json[1], json[13]);
    evlist_free(&l);
    close_store(f, s);
}

/* Inside one packed chunk, a statement-level rejection and a transaction
 * rollback each still lose only the bad event. */
static void test_chunk_failures_lose_one_event(void **state)
{
    fx_t *f = *state;
    dur_rec_t d = {0};
    close_store(f, open_store(f, &d));
    sql_exec(f->path, "CREATE TRIGGER rej BEFORE INSERT ON event_chunks WHEN NEW.session_id='cr' "
                      "AND 5 BETWEEN NEW.first_seq AND NEW.last_seq "
                      "BEGIN SELECT RAISE(ABORT, 'rejected by trigger'); END;"
                      "CREATE TRIGGER boom BEFORE INSERT ON event_chunks WHEN NEW.session_id='cb' "
                      "AND 7 BETWEEN NEW.first_seq AND NEW.last_seq "
                      "BEGIN SELECT RAISE(ROLLBACK, 'boom trigger'); END;");
    store_t *s = open_store(f, &d);

    /* The chunk holding cr:5 has several events (a prefix of 1..10 goes in
     * the first batch, the rest in the second): it is rejected, and its
     * events are inserted again one by one, in the same transaction. */
    sqlite3 *lk = lock_db(f->path);
    for (int64_t q = 1; q <= 10; q++)
        append_big(s, "cr", q);
    unlock_db(lk);
    wait_durable(f, &d, "cr", 10);
    store_stats_t st;
    store_get_stats(s, &st);
    assert_int_equal(st.lost_events, 1);
    assert_int_equal(st.failed_batches, 0);
    evlist_t l;
    read_all(f, s, "cr", 0, 100, false, &l);
    assert_int_equal(l.n, 9);
    for (int i = 0; i < 9; i++)
        assert_event(&l, i, "cr", i < 4 ? i + 1 : i + 2);
    evlist_free(&l);
    read_all(f, s, "cr", 5, 100, false, &l);
    assert_events(&l, "cr", 6, 10);
    evlist_free(&l);

    /* A rollback: the batch is applied again one op (one event) at a time. */
    lk = lock_db(f->path);
    for (int64_t q = 1; q <= 10; q++) {
        append_big(s, "cb", q);
        append_big(s, "ok", q);
    }
    unlock_db(lk);
    wait_durable(f, &d, "cb", 10);
    wait_durable(f, &d, "ok", 10);
    store_get_stats(s, &st);
    assert_int_equal(st.lost_events, 2);
    assert_true(st.failed_batches >= 1);
    read_all(f, s, "cb", 0, 100, false, &l);
    assert_int_equal(l.n, 9);
    for (int i = 0; i < 9; i++)
        assert_event(&l, i, "cb", i < 6 ? i + 1 : i + 2);
    evlist_free(&l);
    read_all(f, s, "ok", 0, 100, false, &l);
    assert_events(&l, "ok", 1, 10);
    evlist_free(&l);
    assert_int_equal(d.not_increasing, 0);
    close_store(f, s);
}

int main(void)
{
    install_full_vfs();
    alarm(300); /* a hang is a failure, not a stuck CI job */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_creates_schema, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_session_put_load_every_column, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_append_10k_durable, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_events_read_pages, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_delete_removes_row_and_events, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_data_and_last_seq, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_newer_schema_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_migration_failure_reported, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_column_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_with_pending_writes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_inside_callback, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_failed_writes_are_isolated, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_from_v1, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_busy_batch_is_retried, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_retried_then_given_up, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_pack_interleaved_sessions, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_read_mid_chunk_and_small_limit, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_trim_mid_chunk, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_delete_packed_session, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reopen_packed_and_duplicates, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_migrate_events_from_v3, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_newline_in_envelope, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_chunk_failures_lose_one_event, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_durable_before_the_database_commits, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_killed_process_loses_nothing_durable, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_inside_durable_callback, fx_setup,
                                        fx_teardown),
    };
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
