/*
 * store.h - durable sessions and event log.
 *
 * The event loop never waits on disk. Every write is appended to the
 * store's journal (journal.h) in memory and queued to a store thread. At the
 * end of each loop iteration the journal is written with one write(2); the
 * writes it carried are then durable (they survive the process being
 * killed) and on_durable reports the appended events. The store thread
 * applies the queue to the database in batches, one transaction per batch
 * (group commit), and reports through uv_async which events are stored
 * (on_stored); stored writes are dropped from the journal. At start-up,
 * store_open re-applies the previous run's journal, so nothing reported
 * durable is ever missing from the database after a crash. Reads that
 * happen while serving (event replay) run on the store thread, behind every
 * write queued before them, and answer on the loop. Only open/migrate/load
 * at start-up run synchronously, before the loop serves anyone.
 *
 * Backends: SQLite (embedded default, WAL). All calls below are made from
 * the loop thread only; callbacks are invoked on the loop thread.
 */
#ifndef HOTPLEX_STORE_H
#define HOTPLEX_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct store store_t;

/* One persisted session row. Strings are NUL-terminated copies. */
typedef struct store_session {
    char id[37];
    char owner[128];
    char bot_id[128];
    char worker_type[32];
    char client_key[256];
    char work_dir[1024];
    char state[16];       /* created/running/idle/terminated/deleted */
    char agent_model[128];
    char agent_sid[37];   /* the agent's own session id (differs from id after a reset) */
    int64_t last_seq;     /* highest seq durably appended for this session */
    int64_t created_ms;
    int64_t updated_ms;
    bool agent_started;   /* the agent has a transcript for this id (resume with it) */
    bool turn_open;       /* a turn was running when this row was written */
} store_session_t;

/* Progress of one session's appended events: every event of `session_id`
 * up to and including `seq` is durable (on_durable) or stored (on_stored).
 * At most one call per session per journal write / per batch.
 * on_stored exception: an event the database could not take at all (logged
 * as lost, counted in lost_events) is never reported stored itself, but a
 * later stored seq of the same session still is, so the session keeps
 * flowing; a replay then finds the gap. */
typedef void (*store_durable_cb)(void *ctx, const char *session_id, int64_t seq);

typedef struct store_hooks {
    store_durable_cb on_durable; /* in the journal: may be delivered (may be NULL) */
    store_durable_cb on_stored;  /* in the database (may be NULL) */
    void *ctx;
} store_hooks_t;

/* Open (create) the database at `path` and its journal (`<path>.journal.*`),
 * apply migrations, re-apply the previous run's journal, start the thread.
 * Fails loudly: returns negative and a message in err on any migration error. */
int store_open(store_t **out, uv_loop_t *loop, const char *path, const store_hooks_t *hooks,
               char *err, size_t cap);
/* Write everything queued, stop the thread, close. Blocks (shutdown only). */
void store_close(store_t *s);

/* Start-up only (synchronous): call cb for every session, deleted tombstones
 * included (their ids are never reused). */
int store_load_sessions(store_t *s, void (*cb)(void *arg, const store_session_t *row), void *arg);

/* Queued writes (never block the loop). */
void store_session_put(store_t *s, const store_session_t *row);  /* upsert, all columns */
void store_session_delete(store_t *s, const char *session_id);  /* row and its events */
void store_event_append(store_t *s, const char *session_id, int64_t seq, const char *type,
                        const char *json, size_t len);
/* Retention by count: drop the session's events with seq <= upto. */
void store_events_trim(store_t *s, const char *session_id, int64_t upto);

/* Replay: events of a session with seq > after, ascending, at most limit.
 * cb runs on the loop thread; `json[i]`/`lens[i]`/`seqs[i]` are valid only
 * during the call. n == 0 means nothing more. rc < 0 on error. oldest is the
 * smallest seq still stored for the session (0 if none). */
typedef void (*store_events_cb)(void *ctx, int rc, int n, const int64_t *seqs,
                                const char *const *json, const size_t *lens, int64_t oldest);
void store_events_read(store_t *s, const char *session_id, int64_t after, int limit,
                       store_events_cb cb, void *ctx);

/* Statistics for metrics/benchmarks. */
typedef struct store_stats {
    uint64_t batches, events, batch_ns_total, max_batch;
    /* Added by the SQLite backend: transactions rolled back (each retry
     * counts; logged), and events that could not be stored at all. */
    uint64_t failed_batches, lost_events;
    /* The journal: writes (one per loop iteration with something to
     * write), bytes written, failed writes, records re-applied at start. */
    uint64_t journal_writes, journal_bytes, journal_errors, journal_replayed;
} store_stats_t;
void store_get_stats(store_t *s, store_stats_t *out);

/* The schema version (PRAGMA user_version) this build migrates databases to. */
int store_schema_version(void);

#endif
