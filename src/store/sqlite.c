/*
 * sqlite.c - the SQLite backend of store.h (embedded default, one node).
 *
 * Owns: the database file and its schema migrations; one store thread with
 * its own connection; the op queue (loop -> thread) and the completion queue
 * (thread -> loop, delivered through one uv_async_t).
 * Must never: block the loop thread on disk once store_open and
 * store_load_sessions have returned; touch the uv loop or run a caller's
 * callback on the store thread; report a seq durable before the transaction
 * that stored it has committed.
 *
 * Connections. `db_main` belongs to the loop thread and is used only at
 * start-up (migrations in store_open, store_load_sessions). `db` belongs to
 * the store thread: it is opened and its statements prepared in store_open,
 * then handed to the thread (uv_thread_create orders the hand-over) and used
 * by nobody else until store_close has joined the thread.
 *
 * Durability. journal_mode=WAL + synchronous=NORMAL: a commit is not fsynced,
 * the WAL is synced at checkpoints (see store__wal_hook for when). That
 * survives the gateway process being killed at any point; an OS crash or
 * power loss can lose the last committed batches although they were
 * reported durable. That is the price of group commit at memory speed;
 * switch to synchronous=FULL if it is not enough.
 *
 * Journal. Every write op is also encoded into the journal (redo.h) when it
 * is queued, and the op remembers the journal position past its record. A
 * uv_prepare and a uv_check handle write the journal at the end of each loop
 * iteration (before the loop can block in poll) and then report, per
 * session with appends since the last write, "durable up to seq"
 * (on_durable). After each batch the thread publishes the highest journal
 * position it has applied; the loop then releases the journal up to it.
 * store_open applies the previous run's journal as one batch on the thread's
 * connection before the thread starts (duplicates are dropped, see Errors),
 * then removes it.
 *
 * Group commit. The loop copies each write or read into an op and queues it
 * (mutex + cond). The thread takes everything queued at once and applies it
 * in one transaction (BEGIN IMMEDIATE .. COMMIT) with prepared statements;
 * meanwhile the next batch accumulates. Since nobody waits for a write to
 * commit (delivery waits for the journal), the thread lets a batch build up
 * for up to STORE_LINGER_NS or STORE_LINGER_OPS ops, unless a read is
 * queued (a replay waits for its answer): at moderate rates that turns a
 * transaction per event into one per few ms. After COMMIT it queues, for
 * each session with appends in the batch, one "stored up to seq" result (in
 * the order the sessions first appear in the batch), then the answers of the
 * batch's reads, and wakes the loop with uv_async_send. uv_async coalesces
 * wake-ups, so the async callback drains the whole completion queue.
 *
 * Event chunks. Events are not stored one row each: a row of event_chunks
 * holds the envelopes of a run of consecutive seqs first_seq..last_seq of
 * one session, each followed by '\n'. Inside a batch, the appends of a
 * session are collected into an open chunk (the sessions may interleave in
 * the queue, as concurrent agents produce them) that is inserted with one
 * statement when the run breaks (a gap in seq, STORE_CHUNK_MAX bytes), when
 * another op of that session needs the table as it is (a read, trim or
 * delete of it: ops of one session apply in queue order), or at the end of
 * the batch. Why: with one row per event (a b-tree insert of a ~380-byte
 * row into (session_id, seq) order, every page it touched written to the
 * WAL at commit), the store thread spent 3.9 us of CPU per event for one
 * session and 16 us for 1,000 sessions appending at once, whose insertion
 * points spread the writes over many leaf pages; with chunks, 1.3 and
 * 1.6 us (bench/store_bench, 380-byte events). A chunk is one insert into
 * a rowid table (its pages are appended at the end of the file) plus one
 * small index entry. Envelopes are single-line JSON: the writer escapes every control
 * character inside strings; but an envelope is also the caller's bytes, and
 * a JSON slice copied verbatim (jw_raw) may hold a raw '\n' as whitespace,
 * so an envelope containing '\n' is stored as a chunk of its own: a chunk
 * with first_seq == last_seq is one envelope whatever its bytes (minus the
 * final '\n'); only chunks of several events are split at '\n'. The
 * event's type is not stored: reads return seq and envelope only (the
 * envelope names its type). Trim deletes whole chunks and cuts the head off
 * the one chunk that straddles the limit.
 *
 * Reads are ops in the same queue, so a read sees every write queued before
 * it. A read answered inside a batch is delivered only after that batch
 * committed, so replay never hands out an event that is not on disk.
 *
 * Errors. A batch that fails is rolled back (logged with SQLite's message)
 * and nothing of that attempt is reported. Then:
 *  - an environmental failure (busy, disk full, I/O, no memory) is retried
 *    whole after 10 ms, 100 ms and 1 s; if it still fails, its writes are
 *    dropped (logged, counted in lost_events) and its reads are answered
 *    from committed data outside a transaction;
 *  - a failure caused by one op (a constraint, a value too big) makes the
 *    thread apply the batch's ops one transaction each (an append then is a
 *    chunk of one event), so only that op is lost. A constraint that only
 *    aborts its own statement inside a healthy batch (a CHECK, a trigger's
 *    RAISE(ABORT)) aborts one chunk: its events are then inserted one chunk
 *    each, in the same transaction, so that too loses just the bad event.
 *  A duplicate (session_id, seq) keeps the stored event and is logged: seqs
 *  of a session only grow, so an append whose seq is not above the highest
 *  one stored for the session (or already in its open chunk) is dropped as
 *  a duplicate. The store thread keeps that highest seq per session in a
 *  cache (store_sess_t: read from the table on first use, updated only
 *  after a COMMIT, set by delete and trim), so it costs no query per event.
 *  A lost event is never reported durable itself, but a later event of the
 *  same session that is stored is reported as usual: the core delivers live
 *  events only up to the durable seq, and holding that back forever would
 *  freeze the session. A replay then finds a gap and resyncs the client.
 *
 * No foreign key from event_chunks to sessions: the core may append a
 * session's first events before its row is written, and an orphan event is
 * harmless. store_session_delete removes both explicitly, in one
 * transaction.
 *
 * Page cache and checkpoints: see store__tune and store__wal_hook.
 *
 * Close. store_close writes the journal, lets the thread apply everything
 * queued, joins it, closes the database and the journal (removing it when
 * nothing was lost) and starts uv_close on its handles; memory is freed in
 * the last close callback, so the caller must run the loop once more.
 * After store_close returns no callback is ever made: durable reports and
 * read answers not yet delivered are dropped (the writes are on disk).
 */
#include "store/store.h"

#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "store/journal.h"
#include "store/redo.h"
#include "util/log.h"

#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_READ_MAX 65536 /* a larger read limit is clamped to this */
/* Bytes of envelopes (+ '\n' each) a chunk is filled to; one envelope
 * larger than that is a chunk of its own. Measured with bench/store_bench
 * (batches of ~200k events, 1 and 1,000 sessions): 4 KiB chunks cost ~25%
 * more store-thread CPU per event than 16 KiB with 1,000 sessions; from
 * 16 KiB to 256 KiB the differences were within the noise. Bigger chunks
 * only make a replay of a few events read more. */
#define STORE_CHUNK_MAX (64u << 10)
/* Sessions whose highest stored seq the store thread remembers; past this
 * the cache is dropped (between batches) and rebuilt by queries. */
#define STORE_SESS_MAX 65536

/* How long a batch may build up before it is applied (see Group commit). */
#define STORE_LINGER_NS (5 * 1000000ull)
#define STORE_LINGER_OPS 512

static const unsigned store__retry_ms[] = {10, 100, 1000};
#define STORE_RETRIES ((int)(sizeof(store__retry_ms) / sizeof(store__retry_ms[0])))

/* ---- schema ------------------------------------------------------------ */

/* Ordered migrations: entry i takes the schema from version i to i+1
 * (PRAGMA user_version), in one transaction with the version bump.
 * Append only; never edit an entry that has shipped. */
static const char *const store__migrations[] = {
    /* 1: initial schema */
    "CREATE TABLE sessions ("
    " id TEXT PRIMARY KEY NOT NULL,"
    " owner TEXT NOT NULL DEFAULT '',"
    " bot_id TEXT NOT NULL DEFAULT '',"
    " worker_type TEXT NOT NULL DEFAULT '',"
    " client_key TEXT NOT NULL DEFAULT '',"
    " work_dir TEXT NOT NULL DEFAULT '',"
    " state TEXT NOT NULL DEFAULT 'created',"
    " agent_model TEXT NOT NULL DEFAULT '',"
    " last_seq INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL DEFAULT 0,"
    " updated_ms INTEGER NOT NULL DEFAULT 0,"
    " agent_started INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE TABLE events ("
    " session_id TEXT NOT NULL,"
    " seq INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " json TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " PRIMARY KEY (session_id, seq)"
    ") WITHOUT ROWID;",
    /* 2: the agent's own session id */
    "ALTER TABLE sessions ADD COLUMN agent_sid TEXT NOT NULL DEFAULT '';",
    /* 3: a turn in flight, so a restart can end it visibly */
    "ALTER TABLE sessions ADD COLUMN turn_open INTEGER NOT NULL DEFAULT 0;",
    /* 4: events packed into chunks of consecutive seqs (see "Event chunks"
     * above); each old row becomes a chunk of one event. A rowid table:
     * rows run to 64 KiB, and new rows go to the end of the file. The index
     * is built after the copy (faster than maintaining it row by row). */
    "CREATE TABLE event_chunks ("
    " id INTEGER PRIMARY KEY,"
    " session_id TEXT NOT NULL,"
    " first_seq INTEGER NOT NULL,"
    " last_seq INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " data BLOB NOT NULL"
    ");"
    "INSERT INTO event_chunks(session_id,first_seq,last_seq,created_ms,data)"
    " SELECT session_id,seq,seq,created_ms,CAST(json||char(10) AS BLOB)"
    " FROM events ORDER BY session_id,seq;"
    "CREATE INDEX event_chunks_by_session ON event_chunks(session_id,last_seq);"
    "DROP TABLE events;",
};
#define STORE_SCHEMA_VERSION ((int)(sizeof(store__migrations) / sizeof(store__migrations[0])))

int store_schema_version(void)
{
    return STORE_SCHEMA_VERSION;
}

/* The sessions columns and where they live in store_session_t. The upsert,
 * the load query and a start-up check against the real table are all built
 * from this one list, so a column cannot be silently left out of the upsert
 * (the bug of the original gateway). Entry 0 must be the primary key.
 * A new field of store_session_t needs: an entry here and a migration. */
enum { COL_TEXT, COL_I64, COL_BOOL };
typedef struct store__col {
    const char *name;
    int kind;
    size_t off, cap;
} store__col_t;

/* clang-format off */
#define SCOL(f, k) {#f, k, offsetof(store_session_t, f), sizeof(((store_session_t *)0)->f)}
static const store__col_t store__cols[] = {
    SCOL(id, COL_TEXT),          SCOL(owner, COL_TEXT),       SCOL(bot_id, COL_TEXT),
    SCOL(worker_type, COL_TEXT), SCOL(client_key, COL_TEXT),  SCOL(work_dir, COL_TEXT),
    SCOL(state, COL_TEXT),       SCOL(agent_model, COL_TEXT), SCOL(agent_sid, COL_TEXT),
    SCOL(last_seq, COL_I64),     SCOL(created_ms, COL_I64),   SCOL(updated_ms, COL_I64),
    SCOL(agent_started, COL_BOOL), SCOL(turn_open, COL_BOOL),
};
#undef SCOL
/* clang-format on */
#define STORE_NCOLS ((int)(sizeof(store__cols) / sizeof(store__cols[0])))

/* Every field of store_session_t is a column: sorted by offset, the bytes
 * between columns and after the last one must be no more than alignment
 * padding (< 8 bytes). Catches a field added to the struct but not here. */
static bool store__cols_cover_struct(void)
{
    size_t end = 0;
    for (;;) {
        const store__col_t *next = NULL;
        for (int i = 0; i < STORE_NCOLS; i++)
            if (store__cols[i].off >= end && (!next || store__cols[i].off < next->off))
                next = &store__cols[i];
        if (!next) break;
        if (next->off - end >= 8) return false;
        end = next->off + next->cap;
    }
    return sizeof(store_session_t) - end < 8;
}

/* ---- types ------------------------------------------------------------- */

enum { OP_PUT, OP_DEL, OP_APPEND, OP_READ, OP_TRIM };
enum { OUT_NONE, OUT_STORED, OUT_DUP, OUT_REJECTED };

struct store_res;

typedef struct store_op {
    struct store_op *next;
    struct store_op *chunk_next; /* OP_APPEND: the next op of its open chunk */
    int kind;
    int outcome;           /* OP_APPEND, set by the current attempt */
    const char *sid;       /* session id (points into buf, or into row) */
    store_session_t *row;  /* OP_PUT */
    int64_t seq;           /* OP_APPEND: seq; OP_READ: after; OP_TRIM: keep after */
    int64_t created_ms;    /* OP_APPEND */
    const char *json;      /* OP_APPEND (in buf), followed by '\n': a chunk of its own as is */
    size_t len;            /* OP_APPEND, without the '\n' */
    int limit;             /* OP_READ */
    store_events_cb cb;    /* OP_READ */
    void *ctx;             /* OP_READ */
    struct store_res *res; /* OP_READ, answer of the current attempt */
    uint64_t jpos;         /* writes: journal position past its record (0: none) */
    char buf[];
} store_op_t;

enum { RES_DURABLE, RES_READ };

typedef struct store_res {
    struct store_res *next;
    int kind;
    int64_t seq; /* RES_DURABLE */
    /* RES_READ */
    store_events_cb cb;
    void *ctx;
    int rc, n;
    int64_t oldest;
    int64_t *seqs;
    const char **json;
    size_t *lens;
    char *data;
    char sid[]; /* RES_DURABLE */
} store_res_t;

typedef struct store_reslist {
    store_res_t *head, *tail;
} store_reslist_t;

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_PUT,
    ST_DEL_EVENTS,
    ST_TRIM_EVENTS,
    ST_TRIM_HEAD,
    ST_TRIM_CUT,
    ST_DEL_SESSION,
    ST_APPEND,
    ST_MAX_SEQ,
    ST_READ,
    ST_OLDEST,
    ST_COUNT
};

/* Store thread: what it knows of one session's events (see "Errors" in the
 * header comment), and the session's open chunk in the current attempt. */
typedef struct store_sess {
    bool known;                  /* `last` is valid */
    int64_t last;                /* committed MAX(last_seq) of the session, 0 if none */
    uint64_t epoch;              /* the attempt that last touched it; the fields below
                                    are valid only while that is the current attempt */
    int64_t a_last;              /* MAX(last_seq) as the attempt has written it */
    store_op_t *c_head, *c_tail; /* the open chunk (linked by chunk_next) */
    size_t c_bytes;              /* its data: envelopes + '\n' each */
    uint32_t hash;
    char sid[];
} store_sess_t;

/* Open addressing; entries are only added (a delete or a trim sets `last`),
 * and the whole cache is dropped between batches past STORE_SESS_MAX. */
typedef struct store_sesstab {
    store_sess_t **slots;
    size_t mask, n;
} store_sesstab_t;

/* A session with appends journaled since the last journal write. */
typedef struct store_mark {
    int64_t seq;
    char *heap; /* the id when it does not fit inl */
    char inl[40];
} store_mark_t;

struct store {
    uv_loop_t *loop;
    uv_async_t async;
    uv_prepare_t jr_prepare;
    uv_check_t jr_check;
    int open_handles; /* handles not yet closed: the last close frees the store */
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    store_hooks_t hooks;
    bool sync_ready;     /* mu/cond initialised */
    bool thread_running; /* thread created, not yet joined */
    bool closing;        /* store_close called: make no more callbacks */

    /* under mu */
    bool stopping;
    store_op_t *q_head, *q_tail;
    size_t q_len, q_reads;
    store_res_t *done_head, *done_tail;
    store_stats_t stats;
    uint64_t applied_pos; /* journal position the thread has applied up to */

    /* loop thread: the journal, and what it has made durable since its last write */
    journal_t *jr;
    store_mark_t *marks;
    size_t nmarks, capmarks;
    uint64_t journal_replayed;

    /* loop thread, start-up only */
    sqlite3 *db_main;
    char path[PATH_MAX];

    /* store thread only (between store_open and store_close) */
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    store_sesstab_t sess;
    uint64_t epoch;         /* attempts started */
    store_sess_t **touched; /* sessions with appends/trims/deletes in this attempt */
    size_t ntouched, touched_cap;
    char *chunk; /* a chunk's data being assembled */
    size_t chunk_cap;
    uint64_t ckpt_ns; /* uv_hrtime() of the last checkpoint */
};

static void store__sess_clear(store_sesstab_t *t);

/* ---- small helpers ----------------------------------------------------- */

static void store__err(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void store__err(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

static int store__errno(int sqlite_rc)
{
    switch (sqlite_rc & 0xff) {
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
        return -EACCES;
    default:
        return -EIO;
    }
}

/* A failure caused by the op itself (retrying the same op cannot help, but
 * the other ops of its batch can still be stored). */
static bool store__op_specific(int sqlite_rc)
{
    switch (sqlite_rc & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_TOOBIG:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
        return true;
    default:
        return false;
    }
}

static int64_t store__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void store__copy_text(char *dst, size_t cap, const unsigned char *src)
{
    size_t n = src ? strlen((const char *)src) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, src, n);
    dst[n] = '\0';
}

/* mkdir -p of the directory holding `path`. */
static int store__mkdir_parent(const char *path)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof(buf)) return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf) return 0;
    *slash = '\0';
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -errno;
    return 0;
}

/* ---- open, configure, migrate ------------------------------------------ */

static int store__exec(sqlite3 *db, const char *sql, char *err, size_t cap, const char *what)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        store__err(err, cap, "%s: %s", what, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return store__errno(rc);
    }
    return 0;
}

static int store__connect(sqlite3 **out, const char *path, char *err, size_t cap)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(
        path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        store__err(err, cap, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : "no memory");
        sqlite3_close(db);
        return store__errno(rc);
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);

    /* journal_mode answers with the mode in effect; anything but "wal"
     * (a file system without shared memory, ...) breaks our durability
     * model, so refuse rather than run slower and weaker. */
    sqlite3_stmt *st = NULL;
    rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        store__err(err, cap, "%s: PRAGMA journal_mode=WAL: %s", path, sqlite3_errmsg(db));
        sqlite3_finalize(st);
        sqlite3_close(db);
        return store__errno(rc);
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (!mode || strcmp(mode, "wal") != 0) {
        store__err(err, cap, "%s: cannot use WAL journal (got \"%s\")", path, mode ? mode : "?");
        sqlite3_finalize(st);
        sqlite3_close(db);
        return -ENOTSUP;
    }
    sqlite3_finalize(st);

    int r = store__exec(db, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;", err, cap, path);
    if (r < 0) {
        sqlite3_close(db);
        return r;
    }
    *out = db;
    return 0;
}

/* Checkpoints copy the WAL into the database file and fsync both, on the
 * store thread (inside the COMMIT that triggers them, so every checkpoint
 * sees the whole WAL and the next transaction can restart it). SQLite's
 * default runs one whenever the WAL holds 1000 pages (4 MiB): under load
 * that is tens of checkpoints a second, and each copies again the index
 * pages that every batch rewrites (one per session with appends). Measured
 * with bench/store_bench, 1,000 sessions, one event each per batch: 16.5 us
 * of store-thread CPU per event with the default, 10.5 us with checkpoints
 * at 64 MiB; one session: no change (its pages are written once anyway).
 * So: never below 1000 pages (as before), and then at most once a second
 * unless the WAL reaches 64 MiB. What an OS crash can lose (see
 * "Durability") grows from the last 4 MiB of commits to the last second
 * or 64 MiB of them; a light load keeps the old 4 MiB. The price is longer
 * stalls: a 64 MiB checkpoint took 110-190 ms here, and the store applies
 * nothing meanwhile (the queue grows, the next batch is bigger). */
#define STORE_CKPT_MIN_PAGES 1000
#define STORE_CKPT_MAX_PAGES 16384 /* 64 MiB of 4 KiB pages */
#define STORE_CKPT_EVERY_NS (1000 * 1000000ull)

static int store__wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    store_t *s = arg;
    uint64_t now = uv_hrtime();
    if (pages < STORE_CKPT_MAX_PAGES &&
        (pages < STORE_CKPT_MIN_PAGES || now - s->ckpt_ns < STORE_CKPT_EVERY_NS))
        return SQLITE_OK;
    int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if (rc != SQLITE_OK) log_warn("store: checkpoint of %d pages: %s", pages, sqlite3_errmsg(db));
    s->ckpt_ns = uv_hrtime();
    return SQLITE_OK; /* the commit happened either way; the next one retries */
}

/* The store thread's connection (db_main only runs start-up queries).
 *
 * Page cache: SQLite's default is 2 MB. Every session that appends has a
 * hot leaf page at its insertion point in event_chunks_by_session, plus
 * the interior pages above; with 1,000 sessions appending at once that is
 * ~4 MB, and a 2 MB cache evicts them between batches, so inserts go back
 * to pread (with one row per event, the rows' own leaf pages were the hot
 * set, and the cause of the pread seen in profiles: 16 MiB alone took that
 * schema from 16 to 11 us per event with 1,000 sessions). 16 MiB holds the
 * hot pages of a few thousand sessions; it is an upper bound, filled only
 * as pages are used.
 *
 * journal_size_limit: one huge batch grows the WAL to its size; after the
 * next restart of the WAL, the file is cut back to 64 MiB. */
static int store__tune(store_t *s, char *err, size_t cap)
{
    int r = store__exec(s->db, "PRAGMA cache_size=-16384; PRAGMA journal_size_limit=67108864;", err,
                        cap, "store tuning");
    if (r == 0) sqlite3_wal_hook(s->db, store__wal_hook, s); /* replaces wal_autocheckpoint */
    return r;
}

static int store__user_version(sqlite3 *db, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Bring the schema to STORE_SCHEMA_VERSION, one migration per transaction.
 * The version is read inside BEGIN IMMEDIATE so two processes opening the
 * same file cannot both apply a migration. */
static int store__migrate(sqlite3 *db, const char *path, char *err, size_t cap)
{
    int from = -1;
    for (;;) {
        int r = store__exec(db, "BEGIN IMMEDIATE", err, cap, "begin migration");
        if (r < 0) return r;
        int v = 0;
        int rc = store__user_version(db, &v);
        if (rc != SQLITE_OK) {
            store__err(err, cap, "%s: cannot read schema version: %s", path, sqlite3_errmsg(db));
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return store__errno(rc);
        }
        if (v > STORE_SCHEMA_VERSION || v < 0) {
            store__err(err, cap,
                       "%s: database schema version %d is newer than this build knows (%d); "
                       "refusing to open it (upgrade hotplex or use another data dir)",
                       path, v, STORE_SCHEMA_VERSION);
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return -ENOTSUP;
        }
        if (v == STORE_SCHEMA_VERSION) {
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
            if (from > 0)
                log_info("store: %s migrated from schema version %d to %d", path, from, v);
            return 0;
        }
        if (from < 0) from = v;
        char *msg = NULL;
        rc = sqlite3_exec(db, store__migrations[v], NULL, NULL, &msg);
        if (rc == SQLITE_OK) {
            char set[64];
            snprintf(set, sizeof(set), "PRAGMA user_version=%d", v + 1);
            rc = sqlite3_exec(db, set, NULL, NULL, &msg);
        }
        if (rc == SQLITE_OK) rc = sqlite3_exec(db, "COMMIT", NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
            store__err(err, cap, "%s: schema migration %d (of %d) failed: %s", path, v + 1,
                       STORE_SCHEMA_VERSION, msg ? msg : sqlite3_errstr(rc));
            sqlite3_free(msg);
            if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return store__errno(rc);
        }
    }
}

/* The sessions table must have exactly the columns in store__cols. */
static int store__check_columns(sqlite3 *db, const char *path, char *err, size_t cap)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA table_info(sessions)", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        store__err(err, cap, "%s: table_info(sessions): %s", path, sqlite3_errmsg(db));
        return store__errno(rc);
    }
    int seen = 0, r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 1);
        int i;
        for (i = 0; i < STORE_NCOLS; i++)
            if (name && strcmp(name, store__cols[i].name) == 0) break;
        if (i == STORE_NCOLS) {
            store__err(err, cap,
                       "%s: sessions column \"%s\" is not known to the store code "
                       "(add it to store__cols)",
                       path, name ? name : "?");
            r = -EPROTO;
            break;
        }
        seen++;
    }
    if (r == 0 && rc != SQLITE_DONE) {
        store__err(err, cap, "%s: table_info(sessions): %s", path, sqlite3_errmsg(db));
        r = store__errno(rc);
    }
    if (r == 0 && seen != STORE_NCOLS) {
        store__err(err, cap, "%s: sessions table has %d columns, the store code writes %d", path,
                   seen, STORE_NCOLS);
        r = -EPROTO;
    }
    sqlite3_finalize(st);
    return r;
}

static void store__sql_cols(char *buf, size_t cap, const char *prefix)
{
    size_t n = strlen(buf);
    for (int i = 0; i < STORE_NCOLS && n < cap; i++)
        n +=
            (size_t)snprintf(buf + n, cap - n, "%s%s%s", i ? "," : "", prefix, store__cols[i].name);
}

static int store__prepare(store_t *s, char *err, size_t cap)
{
    char put[2048] = "INSERT INTO sessions(";
    store__sql_cols(put, sizeof(put), "");
    size_t n = strlen(put);
    n += (size_t)snprintf(put + n, sizeof(put) - n, ") VALUES(");
    for (int i = 0; i < STORE_NCOLS && n < sizeof(put); i++)
        n += (size_t)snprintf(put + n, sizeof(put) - n, "%s?%d", i ? "," : "", i + 1);
    if (n < sizeof(put))
        n += (size_t)snprintf(put + n, sizeof(put) - n, ") ON CONFLICT(%s) DO UPDATE SET ",
                              store__cols[0].name);
    for (int i = 1; i < STORE_NCOLS && n < sizeof(put); i++)
        n += (size_t)snprintf(put + n, sizeof(put) - n, "%s%s=excluded.%s", i > 1 ? "," : "",
                              store__cols[i].name, store__cols[i].name);
    if (n >= sizeof(put)) {
        store__err(err, cap, "upsert statement too long");
        return -EOVERFLOW;
    }

    const char *sql[ST_COUNT] = {
        [ST_BEGIN] = "BEGIN IMMEDIATE",
        [ST_COMMIT] = "COMMIT",
        [ST_ROLLBACK] = "ROLLBACK",
        [ST_PUT] = put,
        /* A session's chunks hold disjoint, ascending runs of seqs, so
         * ordering them by last_seq (the index) orders their events. */
        [ST_DEL_EVENTS] = "DELETE FROM event_chunks WHERE session_id=?1",
        [ST_TRIM_EVENTS] = "DELETE FROM event_chunks WHERE session_id=?1 AND last_seq<=?2",
        /* the one chunk that may straddle the trim limit (data only if so) */
        [ST_TRIM_HEAD] = "SELECT id,first_seq,CASE WHEN first_seq<=?2 THEN data END "
                         "FROM event_chunks WHERE session_id=?1 AND last_seq>?2 "
                         "ORDER BY last_seq LIMIT 1",
        [ST_TRIM_CUT] = "UPDATE event_chunks SET first_seq=?2,data=substr(data,?3) WHERE id=?1",
        [ST_DEL_SESSION] = "DELETE FROM sessions WHERE id=?1",
        [ST_APPEND] = "INSERT INTO event_chunks(session_id,first_seq,last_seq,created_ms,data) "
                      "VALUES(?1,?2,?3,?4,?5)",
        [ST_MAX_SEQ] = "SELECT MAX(last_seq) FROM event_chunks WHERE session_id=?1",
        [ST_READ] = "SELECT first_seq,last_seq,data FROM event_chunks "
                    "WHERE session_id=?1 AND last_seq>?2 ORDER BY last_seq",
        [ST_OLDEST] = "SELECT first_seq FROM event_chunks WHERE session_id=?1 "
                      "ORDER BY last_seq LIMIT 1",
    };
    for (int i = 0; i < ST_COUNT; i++) {
        int rc = sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL);
        if (rc != SQLITE_OK) {
            store__err(err, cap, "prepare \"%s\": %s", sql[i], sqlite3_errmsg(s->db));
            return store__errno(rc);
        }
    }
    return 0;
}

static void store__close_db(store_t *s)
{
    store__sess_clear(&s->sess);
    free(s->touched);
    free(s->chunk);
    s->touched = NULL;
    s->chunk = NULL;
    s->ntouched = s->touched_cap = s->chunk_cap = 0;
    for (int i = 0; i < ST_COUNT; i++) {
        sqlite3_finalize(s->st[i]);
        s->st[i] = NULL;
    }
    if (s->db && sqlite3_close(s->db) != SQLITE_OK)
        log_error("store: close %s: %s", s->path, sqlite3_errmsg(s->db));
    if (s->db_main && sqlite3_close(s->db_main) != SQLITE_OK)
        log_error("store: close %s: %s", s->path, sqlite3_errmsg(s->db_main));
    s->db = s->db_main = NULL;
}

/* ---- the store thread: per-batch durable map --------------------------- */

typedef struct store_dur {
    const char *sid; /* borrowed from an op of the batch */
    int64_t seq;     /* max seq stored (valid if have) */
    bool have;
} store_dur_t;

typedef struct store_durmap {
    store_dur_t *v; /* in order of first appearance */
    size_t n;
    uint32_t *slots; /* index + 1, 0 = empty */
    size_t mask;
} store_durmap_t;

static int store__durmap_init(store_durmap_t *m, size_t keys)
{
    size_t nslots = 16;
    while (nslots < keys * 2)
        nslots <<= 1;
    m->n = 0;
    m->mask = nslots - 1;
    m->v = malloc((keys ? keys : 1) * sizeof(*m->v));
    m->slots = calloc(nslots, sizeof(*m->slots));
    if (!m->v || !m->slots) {
        free(m->v);
        free(m->slots);
        m->v = NULL;
        m->slots = NULL;
        return -ENOMEM;
    }
    return 0;
}

static void store__durmap_free(store_durmap_t *m)
{
    free(m->v);
    free(m->slots);
}

static uint32_t store__hash(const char *sid)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)sid; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

/* NULL only if the map could not be allocated (then nothing is reported). */
static store_dur_t *store__durmap_get(store_durmap_t *m, const char *sid)
{
    if (!m->v) return NULL;
    uint32_t h = store__hash(sid);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        uint32_t idx = m->slots[i];
        if (idx == 0) {
            store_dur_t *e = &m->v[m->n];
            e->sid = sid;
            e->seq = 0;
            e->have = false;
            m->slots[i] = (uint32_t)++m->n;
            return e;
        }
        if (strcmp(m->v[idx - 1].sid, sid) == 0) return &m->v[idx - 1];
    }
}

/* ---- the store thread: what it knows of each session ------------------ */

static void store__sess_clear(store_sesstab_t *t)
{
    for (size_t i = 0; t->slots && i <= t->mask; i++)
        free(t->slots[i]);
    free(t->slots);
    memset(t, 0, sizeof(*t));
}

static store_sess_t *store__sess_find(const store_sesstab_t *t, const char *sid, uint32_t h)
{
    if (!t->slots) return NULL;
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        store_sess_t *e = t->slots[i];
        if (!e) return NULL;
        if (e->hash == h && strcmp(e->sid, sid) == 0) return e;
    }
}

static int store__sess_grow(store_sesstab_t *t)
{
    size_t ncap = t->slots ? (t->mask + 1) * 2 : 256;
    store_sess_t **ns = calloc(ncap, sizeof(*ns));
    if (!ns) return -ENOMEM;
    for (size_t i = 0; t->slots && i <= t->mask; i++) {
        store_sess_t *e = t->slots[i];
        if (!e) continue;
        size_t j = e->hash & (ncap - 1);
        while (ns[j])
            j = (j + 1) & (ncap - 1);
        ns[j] = e;
    }
    free(t->slots);
    t->slots = ns;
    t->mask = ncap - 1;
    return 0;
}

/* The entry of `sid`, created (not known yet) if missing; NULL if out of
 * memory. */
static store_sess_t *store__sess_get(store_sesstab_t *t, const char *sid)
{
    uint32_t h = store__hash(sid);
    store_sess_t *e = store__sess_find(t, sid, h);
    if (e) return e;
    if ((!t->slots || (t->n + 1) * 2 > t->mask + 1) && store__sess_grow(t) < 0) return NULL;
    size_t n = strlen(sid);
    e = calloc(1, sizeof(*e) + n + 1);
    if (!e) return NULL;
    e->hash = h;
    memcpy(e->sid, sid, n + 1);
    size_t i = h & t->mask;
    while (t->slots[i])
        i = (i + 1) & t->mask;
    t->slots[i] = e;
    t->n++;
    return e;
}

/* ---- the store thread: applying ops ------------------------------------ */

static void store__reset(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* A statement failed inside the batch transaction: true if only that
 * statement was undone and the batch can go on. */
static bool store__stmt_only(store_t *s, int rc)
{
    return (rc & 0xff) == SQLITE_CONSTRAINT && !sqlite3_get_autocommit(s->db);
}

static int store__step_simple(store_t *s, int which)
{
    sqlite3_stmt *st = s->st[which];
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) log_error("store: %s: %s", sqlite3_sql(st), sqlite3_errmsg(s->db));
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* The session as the current attempt has it (see store_sess_t): on first
 * use in the attempt its highest stored seq, from the cache or else from
 * the table, and no open chunk. Returns SQLITE_OK or the error. */
static int store__sess_touch(store_t *s, const char *sid, store_sess_t **out)
{
    store_sess_t *e = store__sess_get(&s->sess, sid);
    if (!e) return SQLITE_NOMEM;
    if (e->epoch != s->epoch) {
        if (s->ntouched == s->touched_cap) {
            size_t ncap = s->touched_cap ? s->touched_cap * 2 : 64;
            store_sess_t **nt = realloc(s->touched, ncap * sizeof(*nt));
            if (!nt) return SQLITE_NOMEM;
            s->touched = nt;
            s->touched_cap = ncap;
        }
        int64_t last = e->last;
        if (!e->known) {
            sqlite3_stmt *st = s->st[ST_MAX_SEQ];
            sqlite3_bind_text(st, 1, sid, -1, SQLITE_STATIC);
            int rc = sqlite3_step(st);
            if (rc == SQLITE_ROW)
                last = sqlite3_column_int64(st, 0); /* NULL -> 0 */
            else
                log_error("store: session %s: highest seq: %s", sid, sqlite3_errmsg(s->db));
            store__reset(st);
            if (rc != SQLITE_ROW) return rc;
        }
        e->epoch = s->epoch;
        e->a_last = last;
        e->c_head = e->c_tail = NULL;
        e->c_bytes = 0;
        s->touched[s->ntouched++] = e;
    }
    *out = e;
    return SQLITE_OK;
}

/* Insert ops [first, end) (linked by chunk_next: consecutive seqs of one
 * session) as one chunk. SQLITE_OK or the error (message still in db). */
static int store__insert_chunk(store_t *s, store_op_t *first, store_op_t *end)
{
    const char *data = first->json; /* one event: its buffer is the chunk */
    size_t bytes = 0;
    int64_t last = first->seq;
    for (store_op_t *op = first; op != end; op = op->chunk_next) {
        bytes += op->len + 1;
        last = op->seq;
    }
    if (first->chunk_next != end) {
        if (bytes > s->chunk_cap) {
            char *nb = realloc(s->chunk, bytes);
            if (!nb) return SQLITE_NOMEM;
            s->chunk = nb;
            s->chunk_cap = bytes;
        }
        char *p = s->chunk;
        for (store_op_t *op = first; op != end; op = op->chunk_next) {
            memcpy(p, op->json, op->len + 1); /* with its '\n' */
            p += op->len + 1;
        }
        data = s->chunk;
    }
    sqlite3_stmt *st = s->st[ST_APPEND];
    sqlite3_bind_text(st, 1, first->sid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, first->seq);
    sqlite3_bind_int64(st, 3, last);
    sqlite3_bind_int64(st, 4, first->created_ms);
    sqlite3_bind_blob64(st, 5, data, bytes, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    store__reset(st); /* keeps the error message for the caller */
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Insert the session's open chunk, if any, and close it. A chunk of several
 * events that a constraint rejects on its own (a CHECK, RAISE(ABORT): the
 * transaction goes on) is inserted again one event per chunk, so only the
 * bad event is lost. Returns SQLITE_OK to go on with the batch, else the
 * error that fails it. */
static int store__flush_chunk(store_t *s, store_sess_t *e)
{
    store_op_t *first = e->c_head;
    if (!first) return SQLITE_OK;
    int64_t last = e->c_tail->seq;
    e->c_head = e->c_tail = NULL;
    e->c_bytes = 0;
    bool single = first->chunk_next == NULL;
    int rc = store__insert_chunk(s, first, NULL);
    bool one_by_one = rc != SQLITE_OK && !single && store__stmt_only(s, rc);
    if (one_by_one)
        log_warn("store: session %s: chunk of seq %lld..%lld rejected (%s); storing its events "
                 "one by one",
                 first->sid, (long long)first->seq, (long long)last, sqlite3_errmsg(s->db));
    for (store_op_t *op = first; op; op = op->chunk_next) {
        if (one_by_one) rc = store__insert_chunk(s, op, op->chunk_next);
        if (rc == SQLITE_OK) {
            op->outcome = OUT_STORED;
            e->a_last = op->seq;
        } else if (store__stmt_only(s, rc)) {
            log_error("store: session %s: event seq %lld rejected, lost: %s", op->sid,
                      (long long)op->seq, sqlite3_errmsg(s->db));
            op->outcome = OUT_REJECTED;
        } else {
            log_error("store: append session %s seq %lld..%lld: %s", op->sid, (long long)op->seq,
                      (long long)(one_by_one ? op->seq : last), sqlite3_errmsg(s->db));
            return rc;
        }
    }
    return SQLITE_OK;
}

/* Each do_* returns SQLITE_OK to go on with the batch, else the error that
 * fails it. An append joins the session's open chunk, or closes it first
 * and opens a new one (see "Event chunks" in the header comment). */
static int store__do_append(store_t *s, store_op_t *op)
{
    store_sess_t *e;
    int rc = store__sess_touch(s, op->sid, &e);
    if (rc != SQLITE_OK) return rc;
    int64_t top = e->c_tail ? e->c_tail->seq : e->a_last;
    if (op->seq <= top) {
        log_warn("store: session %s: seq %lld appended twice (stored up to %lld); keeping the "
                 "stored event",
                 op->sid, (long long)op->seq, (long long)top);
        op->outcome = OUT_DUP;
        return SQLITE_OK;
    }
    bool alone = op->len && memchr(op->json, '\n', op->len) != NULL;
    if (e->c_tail &&
        (alone || op->seq != e->c_tail->seq + 1 || e->c_bytes + op->len + 1 > STORE_CHUNK_MAX)) {
        rc = store__flush_chunk(s, e);
        if (rc != SQLITE_OK) return rc;
    }
    op->chunk_next = NULL;
    if (e->c_tail)
        e->c_tail->chunk_next = op;
    else
        e->c_head = op;
    e->c_tail = op;
    e->c_bytes += op->len + 1;
    return alone ? store__flush_chunk(s, e) : SQLITE_OK;
}

static int store__do_put(store_t *s, store_op_t *op)
{
    sqlite3_stmt *st = s->st[ST_PUT];
    const char *base = (const char *)op->row;
    for (int i = 0; i < STORE_NCOLS; i++) {
        const store__col_t *c = &store__cols[i];
        switch (c->kind) {
        case COL_TEXT:
            sqlite3_bind_text(st, i + 1, base + c->off, (int)strnlen(base + c->off, c->cap),
                              SQLITE_STATIC);
            break;
        case COL_I64:
            sqlite3_bind_int64(st, i + 1, *(const int64_t *)(const void *)(base + c->off));
            break;
        case COL_BOOL:
            sqlite3_bind_int(st, i + 1, *(const bool *)(const void *)(base + c->off) ? 1 : 0);
            break;
        }
    }
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    } else {
        log_error("store: put session %s: %s", op->sid, sqlite3_errmsg(s->db));
        if (store__stmt_only(s, rc)) rc = SQLITE_OK; /* that row is not written; go on */
    }
    store__reset(st);
    return rc;
}

/* The events up to op->seq are cut off the front of the one chunk that
 * holds both op->seq and later events (chunks are disjoint runs). */
static int store__trim_head(store_t *s, store_op_t *op)
{
    sqlite3_stmt *st = s->st[ST_TRIM_HEAD];
    sqlite3_bind_text(st, 1, op->sid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, op->seq);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW || sqlite3_column_int64(st, 1) > op->seq) {
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            log_error("store: trim session %s: %s", op->sid, sqlite3_errmsg(s->db));
        store__reset(st);
        return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    int64_t id = sqlite3_column_int64(st, 0);
    const char *p = sqlite3_column_blob(st, 2);
    size_t n = (size_t)sqlite3_column_bytes(st, 2), off = 0;
    for (int64_t q = sqlite3_column_int64(st, 1); q <= op->seq; q++) {
        const char *nl = off < n ? memchr(p + off, '\n', n - off) : NULL;
        if (!nl) {
            /* retention is best effort: keep the chunk, fail nothing */
            log_error("store: trim session %s: chunk %lld is malformed; left as it is", op->sid,
                      (long long)id);
            store__reset(st);
            return SQLITE_OK;
        }
        off = (size_t)(nl - p) + 1;
    }
    store__reset(st);

    st = s->st[ST_TRIM_CUT];
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, op->seq + 1);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)off + 1); /* substr() counts from 1 */
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) log_error("store: trim session %s: %s", op->sid, sqlite3_errmsg(s->db));
    store__reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int store__do_trim(store_t *s, store_op_t *op)
{
    store_sess_t *e;
    int rc = store__sess_touch(s, op->sid, &e);
    if (rc == SQLITE_OK) rc = store__flush_chunk(s, e); /* ops of a session apply in order */
    if (rc != SQLITE_OK) return rc;
    sqlite3_stmt *st = s->st[ST_TRIM_EVENTS];
    sqlite3_bind_text(st, 1, op->sid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, op->seq);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) log_error("store: trim session %s: %s", op->sid, sqlite3_errmsg(s->db));
    store__reset(st);
    if (rc != SQLITE_DONE) return rc;
    rc = store__trim_head(s, op);
    if (rc == SQLITE_OK && op->seq >= e->a_last) e->a_last = 0; /* nothing left */
    return rc;
}

static int store__do_delete(store_t *s, store_op_t *op)
{
    store_sess_t *e;
    int rc = store__sess_touch(s, op->sid, &e);
    if (rc == SQLITE_OK) rc = store__flush_chunk(s, e); /* stored, then deleted with the rest */
    if (rc != SQLITE_OK) return rc;
    static const int which[] = {ST_DEL_EVENTS, ST_DEL_SESSION};
    for (size_t i = 0; i < sizeof(which) / sizeof(which[0]); i++) {
        sqlite3_stmt *st = s->st[which[i]];
        sqlite3_bind_text(st, 1, op->sid, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc != SQLITE_DONE)
            log_error("store: delete session %s: %s", op->sid, sqlite3_errmsg(s->db));
        store__reset(st);
        if (rc != SQLITE_DONE) return rc;
    }
    e->a_last = 0; /* a new life of the id starts again at seq 1 */
    return SQLITE_OK;
}

static void store__res_free(store_res_t *r)
{
    if (r->kind == RES_READ) {
        free(r->seqs);
        free(r->json);
        free(r->lens);
        free(r->data);
    }
    free(r);
}

static void store__res_free_list(store_res_t *r)
{
    while (r) {
        store_res_t *next = r->next;
        store__res_free(r);
        r = next;
    }
}

static void store__res_push(store_reslist_t *l, store_res_t *r)
{
    r->next = NULL;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
}

/* A read answer being filled: seqs/lens grow to at most `limit` entries,
 * data holds each envelope followed by a NUL. */
typedef struct store_reader {
    store_res_t *r;
    int limit;
    size_t cap, dlen, dcap;
} store_reader_t;

static int store__reader_add(store_reader_t *rd, int64_t seq, const char *json, size_t len)
{
    store_res_t *r = rd->r;
    if ((size_t)r->n == rd->cap) {
        size_t ncap = rd->cap ? rd->cap * 2 : 16;
        if (ncap > (size_t)rd->limit) ncap = (size_t)rd->limit;
        int64_t *ns = realloc(r->seqs, ncap * sizeof(*ns));
        if (ns) r->seqs = ns;
        size_t *nl = realloc(r->lens, ncap * sizeof(*nl));
        if (nl) r->lens = nl;
        if (!ns || !nl) return SQLITE_NOMEM;
        rd->cap = ncap;
    }
    if (rd->dlen + len + 1 > rd->dcap) {
        size_t ndcap = rd->dcap ? rd->dcap : 4096;
        while (ndcap < rd->dlen + len + 1)
            ndcap *= 2;
        char *nd = realloc(r->data, ndcap);
        if (!nd) return SQLITE_NOMEM;
        r->data = nd;
        rd->dcap = ndcap;
    }
    if (len) memcpy(r->data + rd->dlen, json, len);
    r->data[rd->dlen + len] = '\0';
    rd->dlen += len + 1;
    r->seqs[r->n] = seq;
    r->lens[r->n] = len;
    r->n++;
    return SQLITE_OK;
}

/* Add the events of one chunk with seq > after until the answer is full.
 * SQLITE_CORRUPT if the chunk does not hold its runs' envelopes. */
static int store__reader_chunk(store_reader_t *rd, int64_t first, int64_t last, const char *p,
                               size_t n, int64_t after)
{
    if (first > last || n == 0 || p[n - 1] != '\n') return SQLITE_CORRUPT;
    if (first == last) /* one envelope, whatever its bytes */
        return first > after ? store__reader_add(rd, first, p, n - 1) : SQLITE_OK;
    size_t off = 0;
    for (int64_t seq = first; seq <= last && rd->r->n < rd->limit; seq++) {
        const char *nl = off < n ? memchr(p + off, '\n', n - off) : NULL;
        if (!nl) return SQLITE_CORRUPT;
        size_t len = (size_t)(nl - (p + off));
        if (seq > after) {
            int rc = store__reader_add(rd, seq, p + off, len);
            if (rc != SQLITE_OK) return rc;
        }
        off += len + 1;
    }
    return SQLITE_OK;
}

/* Answer one read into op->res (NULL only if out of memory for the answer
 * itself). Returns SQLITE_OK, or the error if the transaction is gone. */
static int store__do_read(store_t *s, store_op_t *op)
{
    store_res_t *r = calloc(1, sizeof(*r));
    op->res = r;
    if (!r) {
        log_error("store: read session %s: out of memory; answer dropped", op->sid);
        return SQLITE_OK;
    }
    r->kind = RES_READ;
    r->cb = op->cb;
    r->ctx = op->ctx;
    if (op->limit <= 0) {
        r->rc = -EINVAL;
        return SQLITE_OK;
    }
    store_reader_t rd = {.r = r, .limit = op->limit > STORE_READ_MAX ? STORE_READ_MAX : op->limit};

    sqlite3_stmt *st = s->st[ST_OLDEST];
    sqlite3_bind_text(st, 1, op->sid, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        r->oldest = sqlite3_column_int64(st, 0);
        rc = SQLITE_DONE;
    }
    store__reset(st);
    if (rc != SQLITE_DONE) goto fail;

    /* Chunks from the one holding after + 1; stepping stops once the
     * answer is full, so the rest of the session is never read. */
    st = s->st[ST_READ];
    sqlite3_bind_text(st, 1, op->sid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, op->seq);
    while (r->n < rd.limit) {
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) break;
        rc = store__reader_chunk(&rd, sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
                                 sqlite3_column_blob(st, 2), (size_t)sqlite3_column_bytes(st, 2),
                                 op->seq);
        if (rc != SQLITE_OK) break;
        rc = SQLITE_DONE;
    }
    store__reset(st);
    if (rc != SQLITE_DONE) goto fail;
    if (r->n > 0) {
        r->json = malloc((size_t)r->n * sizeof(*r->json));
        if (!r->json) {
            rc = SQLITE_NOMEM;
            goto fail;
        }
        char *p = r->data;
        for (int i = 0; i < r->n; i++) {
            r->json[i] = p;
            p += r->lens[i] + 1;
        }
    }
    return SQLITE_OK;

fail:
    log_error("store: read session %s: %s", op->sid,
              rc == SQLITE_NOMEM     ? "out of memory"
              : rc == SQLITE_CORRUPT ? "an event chunk is malformed"
                                     : sqlite3_errmsg(s->db));
    free(r->seqs);
    free(r->lens);
    free(r->data);
    r->seqs = NULL;
    r->lens = NULL;
    r->data = NULL;
    r->n = 0;
    r->oldest = 0;
    r->rc = store__errno(rc);
    return sqlite3_get_autocommit(s->db) ? rc : SQLITE_OK;
}

/* A read inside an attempt first inserts the session's open chunk: it must
 * see every write queued before it. */
static int store__do_read_in_order(store_t *s, store_op_t *op)
{
    store_sess_t *e = store__sess_find(&s->sess, op->sid, store__hash(op->sid));
    if (e && e->epoch == s->epoch && e->c_head) {
        int rc = store__flush_chunk(s, e);
        if (rc != SQLITE_OK) return rc;
    }
    return store__do_read(s, op);
}

/* Apply ops [first, end) in one transaction. SQLITE_OK if it committed,
 * else the error, with everything rolled back and the attempt's read
 * answers discarded. */
static int store__attempt(store_t *s, store_op_t *first, store_op_t *end)
{
    s->epoch++; /* every session's attempt fields are stale now */
    s->ntouched = 0;
    int rc = store__step_simple(s, ST_BEGIN);
    for (store_op_t *op = first; rc == SQLITE_OK && op != end; op = op->next) {
        op->outcome = OUT_NONE;
        switch (op->kind) {
        case OP_APPEND:
            rc = store__do_append(s, op);
            break;
        case OP_PUT:
            rc = store__do_put(s, op);
            break;
        case OP_DEL:
            rc = store__do_delete(s, op);
            break;
        case OP_TRIM:
            rc = store__do_trim(s, op);
            break;
        case OP_READ:
            rc = store__do_read_in_order(s, op);
            break;
        }
    }
    for (size_t i = 0; rc == SQLITE_OK && i < s->ntouched; i++)
        rc = store__flush_chunk(s, s->touched[i]);
    if (rc == SQLITE_OK) rc = store__step_simple(s, ST_COMMIT);
    if (rc == SQLITE_OK) {
        /* committed: what the attempt wrote is what the table holds */
        for (size_t i = 0; i < s->ntouched; i++) {
            s->touched[i]->last = s->touched[i]->a_last;
            s->touched[i]->known = true;
        }
        return SQLITE_OK;
    }

    if (!sqlite3_get_autocommit(s->db)) store__step_simple(s, ST_ROLLBACK);
    for (store_op_t *op = first; op != end; op = op->next) {
        op->outcome = OUT_NONE;
        if (op->res) store__res_free(op->res);
        op->res = NULL;
    }
    uv_mutex_lock(&s->mu);
    s->stats.failed_batches++;
    uv_mutex_unlock(&s->mu);
    return rc;
}

typedef struct store_batch {
    store_durmap_t map;
    store_reslist_t reads;
    uint64_t stored, lost;
} store_batch_t;

/* Ops [first, end) committed: record what became durable, keep the reads'
 * answers, in op order. */
static void store__fold(store_batch_t *b, store_op_t *first, store_op_t *end)
{
    for (store_op_t *op = first; op != end; op = op->next) {
        store_dur_t *e;
        switch (op->kind) {
        case OP_APPEND:
            if (op->outcome == OUT_REJECTED) b->lost++;
            /* A duplicate was reported when it was first stored; counting
             * it again could repeat an old seq. */
            if (op->outcome != OUT_STORED) break;
            b->stored++;
            e = store__durmap_get(&b->map, op->sid);
            if (e && (!e->have || op->seq > e->seq)) {
                e->seq = op->seq;
                e->have = true;
            }
            break;
        case OP_DEL:
            /* a new life of the id may follow; what came before is gone */
            e = store__durmap_get(&b->map, op->sid);
            if (e) e->have = false;
            break;
        case OP_READ:
            if (op->res) store__res_push(&b->reads, op->res);
            op->res = NULL;
            break;
        }
    }
}

/* Nothing more can be stored from this batch: drop the writes (logged,
 * counted) and answer the reads from what is committed. */
static void store__give_up(store_t *s, store_batch_t *b, store_op_t *first)
{
    uint64_t lost = 0, other = 0;
    for (store_op_t *op = first; op; op = op->next) {
        if (op->kind == OP_READ) {
            store__do_read(s, op);
            store__fold(b, op, op->next);
        } else if (op->kind == OP_APPEND) {
            lost++;
        } else {
            other++;
        }
    }
    if (lost || other)
        log_error("store: dropped %llu events and %llu session writes; they are lost",
                  (unsigned long long)lost, (unsigned long long)other);
    b->lost += lost;
}

static void store__run_batch(store_t *s, store_op_t *batch, size_t nops)
{
    uint64_t t0 = uv_hrtime();
    if (s->sess.n > STORE_SESS_MAX) store__sess_clear(&s->sess); /* a cache: rebuilt on use */
    store_batch_t b;
    memset(&b, 0, sizeof(b));
    size_t nkeys = 0;
    for (store_op_t *op = batch; op; op = op->next)
        if (op->kind == OP_APPEND || op->kind == OP_DEL) nkeys++;
    if (store__durmap_init(&b.map, nkeys) < 0)
        log_error("store: batch of %zu ops: out of memory; no durability reports", nops);

    int rc = store__attempt(s, batch, NULL);
    for (int i = 0; rc != SQLITE_OK && !store__op_specific(rc) && i < STORE_RETRIES; i++) {
        log_warn("store: batch of %zu ops rolled back (%s); retry in %u ms", nops,
                 sqlite3_errstr(rc), store__retry_ms[i]);
        uv_sleep(store__retry_ms[i]);
        rc = store__attempt(s, batch, NULL);
    }
    if (rc == SQLITE_OK) {
        store__fold(&b, batch, NULL);
    } else if (!store__op_specific(rc)) {
        log_error("store: batch of %zu ops failed after %d retries: %s", nops, STORE_RETRIES,
                  sqlite3_errstr(rc));
        store__give_up(s, &b, batch);
    } else {
        /* One op is bad: isolate it, one transaction per op. */
        if (nops > 1)
            log_warn("store: batch of %zu ops rolled back (%s); applying its ops one by one", nops,
                     sqlite3_errstr(rc));
        for (store_op_t *op = batch; op; op = op->next) {
            if (nops > 1) rc = store__attempt(s, op, op->next);
            if (rc == SQLITE_OK) {
                store__fold(&b, op, op->next);
            } else if (store__op_specific(rc)) {
                if (op->kind == OP_APPEND) {
                    b.lost++;
                    log_error("store: session %s: event seq %lld lost (%s)", op->sid,
                              (long long)op->seq, sqlite3_errstr(rc));
                } else {
                    log_error("store: session %s: %s lost (%s)", op->sid,
                              op->kind == OP_PUT ? "row update" : "operation", sqlite3_errstr(rc));
                }
            } else {
                store__give_up(s, &b, op);
                break;
            }
        }
    }

    store_reslist_t out = {0};
    for (size_t i = 0; s->hooks.on_stored && i < b.map.n; i++) {
        store_dur_t *e = &b.map.v[i];
        if (!e->have) continue;
        size_t n = strlen(e->sid);
        store_res_t *r = calloc(1, sizeof(*r) + n + 1);
        if (!r) {
            log_error("store: session %s: out of memory; durability report dropped", e->sid);
            continue;
        }
        r->kind = RES_DURABLE;
        r->seq = e->seq;
        memcpy(r->sid, e->sid, n + 1);
        store__res_push(&out, r);
    }
    store__durmap_free(&b.map);
    if (b.reads.head) {
        if (out.tail)
            out.tail->next = b.reads.head;
        else
            out.head = b.reads.head;
        out.tail = b.reads.tail;
    }
    uint64_t dt = uv_hrtime() - t0;

    uv_mutex_lock(&s->mu);
    s->stats.batches++;
    s->stats.events += b.stored;
    s->stats.lost_events += b.lost;
    s->stats.batch_ns_total += dt;
    if (nops > s->stats.max_batch) s->stats.max_batch = nops;
    if (out.head) {
        if (s->done_tail)
            s->done_tail->next = out.head;
        else
            s->done_head = out.head;
        s->done_tail = out.tail;
    }
    uv_mutex_unlock(&s->mu);
    if (out.head) uv_async_send(&s->async);
}

static void store__free_ops(store_op_t *op)
{
    while (op) {
        store_op_t *next = op->next;
        if (op->res) store__res_free(op->res);
        free(op->row);
        free(op);
        op = next;
    }
}

static void store__thread(void *arg)
{
    store_t *s = arg;
    uv_mutex_lock(&s->mu);
    for (;;) {
        while (!s->q_head && !s->stopping)
            uv_cond_wait(&s->cond, &s->mu);
        if (!s->q_head) break; /* stopping, and everything applied */
        uint64_t until = uv_hrtime() + STORE_LINGER_NS;
        while (!s->stopping && !s->q_reads && s->q_len < STORE_LINGER_OPS) {
            uint64_t now = uv_hrtime();
            if (now >= until) break;
            (void)uv_cond_timedwait(&s->cond, &s->mu, until - now);
        }
        store_op_t *batch = s->q_head;
        size_t n = s->q_len;
        s->q_head = s->q_tail = NULL;
        s->q_len = s->q_reads = 0;
        uv_mutex_unlock(&s->mu);

        store__run_batch(s, batch, n);
        uint64_t applied = 0;
        for (store_op_t *op = batch; op; op = op->next)
            if (op->jpos > applied) applied = op->jpos;
        store__free_ops(batch);

        uv_mutex_lock(&s->mu);
        if (applied > s->applied_pos) {
            s->applied_pos = applied;
            uv_async_send(&s->async);
        }
    }
    uv_mutex_unlock(&s->mu);
}

/* ---- loop side --------------------------------------------------------- */

static void store__async_cb(uv_async_t *h)
{
    store_t *s = h->data;
    uv_mutex_lock(&s->mu);
    store_res_t *r = s->done_head;
    s->done_head = s->done_tail = NULL;
    uint64_t applied = s->applied_pos;
    uv_mutex_unlock(&s->mu);
    if (!s->closing && s->jr) journal_release(s->jr, applied);
    while (r) {
        store_res_t *next = r->next;
        /* A callback may call store_close: from then on, drop the rest. */
        if (!s->closing) {
            if (r->kind == RES_DURABLE) {
                if (s->hooks.on_stored) s->hooks.on_stored(s->hooks.ctx, r->sid, r->seq);
            } else {
                r->cb(r->ctx, r->rc, r->n, r->seqs, (const char *const *)r->json, r->lens,
                      r->oldest);
            }
        }
        store__res_free(r);
        r = next;
    }
}

static void store__free(store_t *s)
{
    store__res_free_list(s->done_head);
    store__free_ops(s->q_head);
    for (size_t i = 0; i < s->nmarks; i++) free(s->marks[i].heap);
    free(s->marks);
    if (s->sync_ready) {
        uv_cond_destroy(&s->cond);
        uv_mutex_destroy(&s->mu);
    }
    free(s);
}

static void store__close_cb(uv_handle_t *h)
{
    store_t *s = h->data;
    if (--s->open_handles == 0) store__free(s);
}

/* ---- journal (loop side) ------------------------------------------------ */

static const char *store__mark_sid(const store_mark_t *m)
{
    return m->heap ? m->heap : m->inl;
}

/* Session `sid` has appends up to `seq` in the journal's pending records. */
static void store__mark(store_t *s, const char *sid, int64_t seq)
{
    if (s->nmarks && strcmp(store__mark_sid(&s->marks[s->nmarks - 1]), sid) == 0) {
        s->marks[s->nmarks - 1].seq = seq; /* the common case: a run of one session */
        return;
    }
    if (s->nmarks == s->capmarks) {
        size_t nc = s->capmarks ? s->capmarks * 2 : 64;
        store_mark_t *m = realloc(s->marks, nc * sizeof(*m));
        if (!m) goto oom;
        s->marks = m;
        s->capmarks = nc;
    }
    store_mark_t *m = &s->marks[s->nmarks];
    size_t n = strlen(sid);
    m->heap = NULL;
    if (n >= sizeof(m->inl) && !(m->heap = strdup(sid))) goto oom;
    if (!m->heap) memcpy(m->inl, sid, n + 1);
    m->seq = seq;
    s->nmarks++;
    return;
oom:
    /* The session's next append reports it; until then it waits. */
    log_error("store: session %s: out of memory noting seq %lld durable", sid, (long long)seq);
}

/* Write what the journal holds, then report it durable. A failed write is
 * logged and reported anyway: the loop must not stall on a failing disk,
 * and the thread still applies the writes (only a crash before that would
 * lose them). Reports may append more (a callback emitting an event): those
 * are written in the same pass. */
static void store__journal_write(store_t *s)
{
    /* s->jr is NULL once a report's callback has closed the store */
    for (int round = 0; round < 8 && s->jr && (journal_pending(s->jr) || s->nmarks); round++) {
        if (journal_pending(s->jr)) {
            int rc = journal_flush(s->jr);
            if (rc < 0) {
                journal_stats_t js;
                journal_get_stats(s->jr, &js);
                if (js.errors == 1 || js.errors % 1000 == 0)
                    log_error("store: journal write failed (%s; %llu failures so far): events "
                              "are delivered without crash protection until it works again",
                              strerror(-rc), (unsigned long long)js.errors);
            }
        }
        store_mark_t *m = s->marks;
        size_t n = s->nmarks, cap = s->capmarks;
        s->marks = NULL;
        s->nmarks = s->capmarks = 0;
        for (size_t i = 0; i < n; i++) {
            if (!s->closing && s->hooks.on_durable)
                s->hooks.on_durable(s->hooks.ctx, store__mark_sid(&m[i]), m[i].seq);
            free(m[i].heap);
        }
        if (!s->marks) { /* keep the array for the next round */
            s->marks = m;
            s->capmarks = cap;
        } else {
            free(m);
        }
    }
}

static void store__prepare_cb(uv_prepare_t *h)
{
    store__journal_write(h->data);
}

static void store__check_cb(uv_check_t *h)
{
    store__journal_write(h->data);
}

static void store__enqueue(store_t *s, store_op_t *op)
{
    op->next = NULL;
    uv_mutex_lock(&s->mu);
    bool was_empty = s->q_head == NULL;
    if (s->q_tail)
        s->q_tail->next = op;
    else
        s->q_head = op;
    s->q_tail = op;
    s->q_len++;
    if (op->kind == OP_READ) s->q_reads++;
    /* wake the thread: work arrived, or its linger should end now */
    if (was_empty || op->kind == OP_READ || s->q_len == STORE_LINGER_OPS)
        uv_cond_signal(&s->cond);
    uv_mutex_unlock(&s->mu);
}

/* Op constructors, shared by the public writes and the journal replay.
 * `sid` need not be NUL-terminated. NULL on ENOMEM. */
static store_op_t *store__op_sid(int kind, const char *sid, size_t n)
{
    store_op_t *op = calloc(1, sizeof(*op) + n + 1);
    if (!op) return NULL;
    memcpy(op->buf, sid, n);
    op->buf[n] = '\0';
    op->kind = kind;
    op->sid = op->buf;
    return op;
}

static store_op_t *store__op_put(const store_session_t *row)
{
    store_op_t *op = calloc(1, sizeof(*op));
    store_session_t *copy = malloc(sizeof(*copy));
    if (!op || !copy) {
        free(op);
        free(copy);
        return NULL;
    }
    memcpy(copy, row, sizeof(*copy));
    copy->id[sizeof(copy->id) - 1] = '\0';
    op->kind = OP_PUT;
    op->row = copy;
    op->sid = copy->id;
    return op;
}

static store_op_t *store__op_append(const char *sid, size_t ns, int64_t seq, int64_t created_ms,
                                    const char *json, size_t len)
{
    store_op_t *op = malloc(sizeof(*op) + ns + 1 + len + 1);
    if (!op) return NULL;
    memset(op, 0, sizeof(*op));
    char *p = op->buf;
    memcpy(p, sid, ns);
    p[ns] = '\0';
    op->sid = p;
    p += ns + 1;
    if (len) memcpy(p, json, len);
    p[len] = '\n'; /* the chunk form: a chunk of this one event is op->json as is */
    op->json = p;
    op->len = len;
    op->kind = OP_APPEND;
    op->seq = seq;
    op->created_ms = created_ms;
    return op;
}

/* ---- start-up: the previous run's journal ------------------------------- */

typedef struct store_replay {
    store_op_t *head, *tail;
    size_t n, unreadable;
} store_replay_t;

static int store__replay_record(void *arg, uint8_t kind, const uint8_t *p, size_t len)
{
    store_replay_t *rp = arg;
    redo_op_t r;
    if (redo_decode(kind, p, len, &r) < 0) {
        rp->unreadable++;
        return 0;
    }
    store_op_t *op = NULL;
    switch (r.kind) {
    case REDO_PUT: op = store__op_put(&r.row); break;
    case REDO_DEL: op = store__op_sid(OP_DEL, r.sid, r.sid_len); break;
    case REDO_TRIM:
        if ((op = store__op_sid(OP_TRIM, r.sid, r.sid_len))) op->seq = r.seq;
        break;
    case REDO_APPEND:
        op = store__op_append(r.sid, r.sid_len, r.seq, r.created_ms, r.json, r.json_len);
        break;
    }
    if (!op) return -ENOMEM;
    if (rp->tail)
        rp->tail->next = op;
    else
        rp->head = op;
    rp->tail = op;
    rp->n++;
    return 0;
}

/* Apply what the previous run journaled, as one batch on the thread's
 * connection (the thread is not running yet), then remove that journal.
 * Reports of this batch are dropped: nothing is loaded yet. */
static int store__replay(store_t *s, char *err, size_t cap)
{
    store_replay_t rp = {0};
    uint64_t nrec = 0;
    int rc = journal_replay(s->jr, store__replay_record, &rp, &nrec);
    if (rc < 0) {
        store__free_ops(rp.head);
        store__err(err, cap, "cannot re-apply the journal of %s: %s", s->path, strerror(-rc));
        return rc;
    }
    if (rp.unreadable)
        log_error("store: %zu journal records written by another build were skipped",
                  rp.unreadable);
    if (rp.n) {
        uint64_t lost_before = s->stats.lost_events;
        store__run_batch(s, rp.head, rp.n);
        uv_mutex_lock(&s->mu);
        store__res_free_list(s->done_head);
        s->done_head = s->done_tail = NULL;
        bool lost = s->stats.lost_events > lost_before;
        uv_mutex_unlock(&s->mu);
        store__free_ops(rp.head);
        log_info("store: re-applied %zu writes from the journal of the previous run", rp.n);
        s->journal_replayed = rp.n;
        if (lost) {
            /* keep it: the next start tries again */
            log_error("store: some journaled writes could not be applied; the journal is kept");
            return 0;
        }
    }
    journal_drop_replayed(s->jr);
    return 0;
}

int store_open(store_t **out, uv_loop_t *loop, const char *path, const store_hooks_t *hooks,
               char *err, size_t cap)
{
    if (err && cap) err[0] = '\0';
    if (!out || !loop || !path || !*path) {
        store__err(err, cap, "store_open: missing argument");
        return -EINVAL;
    }
    *out = NULL;
    if (!store__cols_cover_struct()) {
        store__err(err, cap,
                   "store_session_t has fields the store does not persist "
                   "(add them to store__cols and a migration)");
        return -EPROTO;
    }
    if (!sqlite3_threadsafe()) {
        store__err(err, cap, "SQLite was built without thread support");
        return -ENOTSUP;
    }
    if (strlen(path) >= PATH_MAX) {
        store__err(err, cap, "store path too long");
        return -ENAMETOOLONG;
    }
    int r = store__mkdir_parent(path);
    if (r < 0) {
        store__err(err, cap, "cannot create the directory of %s: %s", path, strerror(-r));
        return r;
    }
    store_t *s = calloc(1, sizeof(*s));
    if (!s) {
        store__err(err, cap, "out of memory");
        return -ENOMEM;
    }
    s->loop = loop;
    if (hooks) s->hooks = *hooks;
    memcpy(s->path, path, strlen(path) + 1);

    r = store__connect(&s->db_main, path, err, cap);
    if (r == 0) r = store__migrate(s->db_main, path, err, cap);
    if (r == 0) r = store__check_columns(s->db_main, path, err, cap);
    if (r == 0) r = store__connect(&s->db, path, err, cap);
    if (r == 0) r = store__tune(s, err, cap);
    if (r == 0) r = store__prepare(s, err, cap);
    if (r == 0 && (r = uv_mutex_init(&s->mu)) < 0)
        store__err(err, cap, "cannot create the store mutex: %s", uv_strerror(r));
    if (r == 0 && (r = uv_cond_init(&s->cond)) < 0) {
        store__err(err, cap, "cannot create the store condition: %s", uv_strerror(r));
        uv_mutex_destroy(&s->mu);
    }
    if (r < 0) {
        store__close_db(s);
        free(s);
        return r;
    }
    s->sync_ready = true;

    r = uv_async_init(loop, &s->async, store__async_cb);
    if (r < 0) {
        store__err(err, cap, "uv_async_init: %s", uv_strerror(r));
        store__close_db(s);
        store__free(s);
        return r;
    }
    s->async.data = s;
    s->open_handles = 3;
    uv_prepare_init(loop, &s->jr_prepare);
    uv_check_init(loop, &s->jr_check);
    s->jr_prepare.data = s->jr_check.data = s;

    char jpath[PATH_MAX + 16];
    snprintf(jpath, sizeof(jpath), "%s.journal", path);
    r = journal_open(&s->jr, jpath, err, cap);
    if (r == 0) r = store__replay(s, err, cap);
    if (r < 0) {
        store__close_db(s);
        journal_close(s->jr, false);
        s->jr = NULL;
        s->closing = true;
        uv_close((uv_handle_t *)&s->async, store__close_cb);
        uv_close((uv_handle_t *)&s->jr_prepare, store__close_cb);
        uv_close((uv_handle_t *)&s->jr_check, store__close_cb); /* the last frees s */
        return r;
    }

    r = uv_thread_create(&s->thread, store__thread, s);
    if (r < 0) {
        store__err(err, cap, "cannot start the store thread: %s", uv_strerror(r));
        store__close_db(s);
        journal_close(s->jr, false);
        s->jr = NULL;
        s->closing = true;
        uv_close((uv_handle_t *)&s->async, store__close_cb);
        uv_close((uv_handle_t *)&s->jr_prepare, store__close_cb);
        uv_close((uv_handle_t *)&s->jr_check, store__close_cb); /* the last frees s */
        return r;
    }
    s->thread_running = true;
    /* The journal is written before the loop can block (prepare) and after
     * each round of I/O callbacks (check). Unreferenced: they must not keep
     * the loop alive on their own. */
    uv_prepare_start(&s->jr_prepare, store__prepare_cb);
    uv_check_start(&s->jr_check, store__check_cb);
    uv_unref((uv_handle_t *)&s->jr_prepare);
    uv_unref((uv_handle_t *)&s->jr_check);
    *out = s;
    return 0;
}

void store_close(store_t *s)
{
    if (!s || s->closing) return;
    s->closing = true;
    store__journal_write(s); /* no reports: closing */
    if (s->thread_running) {
        uv_mutex_lock(&s->mu);
        s->stopping = true;
        uv_cond_signal(&s->cond);
        uv_mutex_unlock(&s->mu);
        uv_thread_join(&s->thread);
        s->thread_running = false;
    }
    store__close_db(s);
    /* Everything queued is applied now; keep the journal only if some of it
     * could not be (the next start tries again). */
    uv_mutex_lock(&s->mu);
    bool clean = s->stats.lost_events == 0;
    uv_mutex_unlock(&s->mu);
    journal_close(s->jr, clean);
    s->jr = NULL;
    uv_close((uv_handle_t *)&s->async, store__close_cb);
    uv_close((uv_handle_t *)&s->jr_prepare, store__close_cb);
    uv_close((uv_handle_t *)&s->jr_check, store__close_cb); /* the last frees s */
}

int store_load_sessions(store_t *s, void (*cb)(void *arg, const store_session_t *row), void *arg)
{
    if (!s || !cb || !s->db_main) return -EINVAL;
    char sql[2048] = "SELECT ";
    store__sql_cols(sql, sizeof(sql), "s.");
    size_t n = strlen(sql);
    n += (size_t)snprintf(sql + n, sizeof(sql) - n,
                          ",(SELECT MAX(e.last_seq) FROM event_chunks e"
                          " WHERE e.session_id=s.id)"
                          " FROM sessions s ORDER BY s.created_ms,s.id");
    if (n >= sizeof(sql)) return -EOVERFLOW;

    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db_main, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        log_error("store: load sessions: %s", sqlite3_errmsg(s->db_main));
        return store__errno(rc);
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        store_session_t row;
        memset(&row, 0, sizeof(row));
        char *base = (char *)&row;
        for (int i = 0; i < STORE_NCOLS; i++) {
            const store__col_t *c = &store__cols[i];
            switch (c->kind) {
            case COL_TEXT:
                store__copy_text(base + c->off, c->cap, sqlite3_column_text(st, i));
                break;
            case COL_I64:
                *(int64_t *)(void *)(base + c->off) = sqlite3_column_int64(st, i);
                break;
            case COL_BOOL:
                *(bool *)(void *)(base + c->off) = sqlite3_column_int(st, i) != 0;
                break;
            }
        }
        /* A crash between an event append and the session update must not
         * lose the count: seq is never reused. */
        int64_t ev_max = sqlite3_column_int64(st, STORE_NCOLS);
        if (ev_max > row.last_seq) row.last_seq = ev_max;
        cb(arg, &row);
    }
    int r = 0;
    if (rc != SQLITE_DONE) {
        log_error("store: load sessions: %s", sqlite3_errmsg(s->db_main));
        r = store__errno(rc);
    }
    sqlite3_finalize(st);
    return r;
}

void store_session_put(store_t *s, const store_session_t *row)
{
    store_op_t *op = store__op_put(row);
    if (!op) {
        log_error("store: put session %.36s: out of memory; write dropped", row->id);
        return;
    }
    op->jpos = redo_put(s->jr, op->row);
    store__enqueue(s, op);
}

void store_session_delete(store_t *s, const char *session_id)
{
    store_op_t *op = store__op_sid(OP_DEL, session_id, strlen(session_id));
    if (!op) {
        log_error("store: delete session %s: out of memory; delete dropped", session_id);
        return;
    }
    op->jpos = redo_del(s->jr, op->sid);
    store__enqueue(s, op);
}

void store_events_trim(store_t *s, const char *session_id, int64_t upto)
{
    store_op_t *op = store__op_sid(OP_TRIM, session_id, strlen(session_id));
    if (!op) {
        log_error("store: trim session %s: out of memory; trim skipped", session_id);
        return;
    }
    op->seq = upto;
    op->jpos = redo_trim(s->jr, op->sid, upto);
    store__enqueue(s, op);
}

void store_event_append(store_t *s, const char *session_id, int64_t seq, const char *type,
                        const char *json, size_t len)
{
    if (!json) len = 0;
    if (len >= INT_MAX) {
        log_error("store: session %s seq %lld: event of %zu bytes is too large; dropped",
                  session_id, (long long)seq, len);
        return;
    }
    store_op_t *op =
        store__op_append(session_id, strlen(session_id), seq, store__now_ms(), json, len);
    if (!op) {
        log_error("store: session %s seq %lld: out of memory; event dropped", session_id,
                  (long long)seq);
        return;
    }
    /* The type is not stored (the envelope names it); the journal keeps it
     * for whoever reads a journal by hand. */
    op->jpos = redo_append(s->jr, op->sid, seq, op->created_ms, type ? type : "", json, len);
    if (!op->jpos)
        log_error("store: session %s seq %lld: out of memory journaling the event; it is "
                  "stored but a crash before that would lose it",
                  session_id, (long long)seq);
    store__mark(s, op->sid, seq);
    store__enqueue(s, op);
}

void store_events_read(store_t *s, const char *session_id, int64_t after, int limit,
                       store_events_cb cb, void *ctx)
{
    size_t n = strlen(session_id);
    store_op_t *op = calloc(1, sizeof(*op) + n + 1);
    if (!op) {
        /* No way to answer later without memory: answer now, on this thread. */
        cb(ctx, -ENOMEM, 0, NULL, NULL, NULL, 0);
        return;
    }
    memcpy(op->buf, session_id, n + 1);
    op->kind = OP_READ;
    op->sid = op->buf;
    op->seq = after;
    op->limit = limit;
    op->cb = cb;
    op->ctx = ctx;
    store__enqueue(s, op);
}

void store_get_stats(store_t *s, store_stats_t *out)
{
    uv_mutex_lock(&s->mu);
    *out = s->stats;
    uv_mutex_unlock(&s->mu);
    if (s->jr) {
        journal_stats_t js;
        journal_get_stats(s->jr, &js);
        out->journal_writes = js.writes;
        out->journal_bytes = js.bytes;
        out->journal_errors = js.errors;
    }
    out->journal_replayed = s->journal_replayed;
}
