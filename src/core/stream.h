/*
 * stream.h - one session's event stream: the seq counter, the encoded
 * events, and a bounded window of recent events in memory.
 *
 * An event is committed exactly once: it takes the next seq, is encoded
 * into its final envelope (that frame is what every connection sends and
 * what the store keeps), and is appended to the in-memory window. Events are
 * delivered only up to `durable`, the highest seq in the store's journal, so
 * a reader never sees an event that a gateway crash could take back.
 * `stored` is the highest seq SQLite has committed; it trails `durable` by
 * the store thread's lag and is what bounds the agent (backpressure).
 * Readers are cursors (next seq wanted); the stream never pushes or copies
 * per reader. Older events than the window are read back from the store
 * (whose reads are queued behind its writes, so they see every event).
 */
#ifndef HOTPLEX_STREAM_H
#define HOTPLEX_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "core/frame.h"

typedef struct stream {
    int64_t seq;       /* last assigned */
    int64_t durable;   /* last in the store's journal: deliverable */
    int64_t stored;    /* last committed by the store's database */
    uint64_t bytes;    /* total bytes committed (offset of the next event) */
    uint64_t durable_bytes; /* offset just past the last durable event */
    uint64_t stored_bytes;  /* offset just past the last stored event */
    frame_t **ring;    /* circular window, oldest at head */
    size_t cap, head, count;
    size_t ring_bytes; /* JSON bytes held in the window */
} stream_t;

void stream_init(stream_t *st, int64_t last_seq);
void stream_free(stream_t *st);

/* Encode and append the next event. Returns the frame (owned by the stream)
 * or NULL on ENOMEM (nothing committed then). */
frame_t *stream_commit(stream_t *st, const char *session_id, const char *type, const char *data,
                       size_t len, int64_t now_ms);

/* The event with this seq if it is still in the window, else NULL. */
frame_t *stream_get(const stream_t *st, int64_t seq);
/* Lowest seq in the window (0 if empty). */
int64_t stream_first(const stream_t *st);

/* The journal holds events up to seq: advance `durable` and `durable_bytes`. */
void stream_set_durable(stream_t *st, int64_t seq);
/* The database holds events up to seq: advance `stored` and `stored_bytes`. */
void stream_set_stored(stream_t *st, int64_t seq);

/* Bytes of durable events at or after `seq` (how far behind a reader whose
 * next event is `seq` is). Exact inside the window; behind it, estimated
 * from the window's average event size. */
uint64_t stream_backlog(const stream_t *st, int64_t seq);

/* Drop events from the front until the window holds at most max_bytes
 * (never drops an event that is not both durable and stored: the byte
 * offsets of both marks are read from the window). */
void stream_trim(stream_t *st, size_t max_bytes);
/* Drop durable, stored events with seq < `seq` (every reader is past them). */
void stream_trim_before(stream_t *st, int64_t seq);

#endif
