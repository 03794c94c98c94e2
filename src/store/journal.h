/*
 * journal.h - the store's redo log: every write handed to the store is
 * appended here, by the loop thread, before anyone is told about it.
 *
 * Why it exists. A client may be sent an event only once a gateway crash can
 * no longer take it back. Waiting for the SQLite commit (a thread hand-off,
 * a group commit, periodic checkpoints with fsync, a wake-up back to the
 * loop) put all of that on every event's delivery path. Instead, the loop
 * writes the records of one loop iteration with one write(2) at the end of
 * the iteration; once that returned, the bytes are in the kernel and survive
 * the process being killed (the same promise as SQLite's WAL with
 * synchronous=NORMAL, which the store uses: neither survives power loss).
 * SQLite stays the store everyone reads from; the journal is only read at
 * start-up, to re-apply what the store thread had not committed yet.
 *
 * Files: `<prefix>.<n>` segments (n: 8 decimal digits, increasing), and
 * `<prefix>.lock`, flock()ed by the one process that has the journal open
 * (a second one is refused: it would remove segments the first writes). A run
 * writes new segments only; the segments found at open are the previous
 * run's, read by journal_replay and removed by journal_drop_replayed once
 * their records are safely in the store. A segment is removed (or, for the
 * one being written, truncated) when every record in it has been applied to
 * the store (journal_release), so a healthy journal is small.
 *
 * Record: 16-byte header (kind, format version, payload length, 64-bit
 * check of kind, length and payload) + payload. A crash in the middle of a
 * write leaves a torn last record: replay stops there, since nothing after
 * it was ever reported.
 *
 * Owns: the segment files and the pending write buffer. Must never: be
 * called from any thread but the loop's, or report a record before the
 * write(2) that carries it has returned.
 */
#ifndef HOTPLEX_STORE_JOURNAL_H
#define HOTPLEX_STORE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct journal journal_t;

#define JOURNAL_SEGMENT_BYTES (16u << 20) /* start a new segment past this size */

/* Open: take the lock, find the previous run's segments (kept for
 * journal_replay) and create a new segment to write to. 0 or negative
 * errno (message in err); -EBUSY when another process holds the journal. */
int journal_open(journal_t **out, const char *prefix, char *err, size_t cap);
/* Flush what is pending, close the files. With `clean` (every record has
 * been applied to the store), remove this run's segments too. */
void journal_close(journal_t *j, bool clean);

/* Buffer one record whose payload is the concatenation of `parts` (no copy
 * is kept of them). Returns the journal position just past the record: the
 * record is applied once journal_release has been called with at least it.
 * 0 on ENOMEM (nothing buffered). */
uint64_t journal_add(journal_t *j, uint8_t kind, const void *const *parts, const size_t *lens,
                     int nparts);
/* Bytes buffered and not yet written. */
size_t journal_pending(const journal_t *j);
/* Write everything buffered with one write(2) (or a few, for a short
 * write). 0, or negative errno: then the buffer is dropped (logged by the
 * caller) so the loop never stalls on a failing disk. */
int journal_flush(journal_t *j);
/* Every record up to position `pos` is applied to the store: segments
 * wholly before it are removed, and the current one is truncated when it is
 * wholly applied and large. */
void journal_release(journal_t *j, uint64_t pos);

/* Start-up: hand every record of the previous run's segments, in order, to
 * cb (payload valid during the call only). A torn record ends its segment.
 * cb returning nonzero stops the replay with that value. Returns 0, cb's
 * value, or negative errno; *nrecords (if not NULL) gets the count. */
typedef int (*journal_record_cb)(void *arg, uint8_t kind, const uint8_t *payload, size_t len);
int journal_replay(journal_t *j, journal_record_cb cb, void *arg, uint64_t *nrecords);
/* The parser under journal_replay, over one segment's bytes: whole records
 * from the start, until a torn or invalid one, the end, or cb's nonzero
 * return (returned). *used: bytes of whole records consumed. */
int journal_parse(const uint8_t *p, size_t n, journal_record_cb cb, void *arg, size_t *used,
                  uint64_t *nrecords);
/* The replayed records are in the store: remove the previous run's segments. */
void journal_drop_replayed(journal_t *j);

/* Statistics (metrics). */
typedef struct journal_stats {
    uint64_t writes, bytes, errors, segments_removed;
} journal_stats_t;
void journal_get_stats(const journal_t *j, journal_stats_t *out);

#endif
