/*
 * redo.h - the store's write operations as journal records (journal.h), and
 * back. The store journals every write it queues (session upsert, session
 * delete, event append, event trim) in queue order; at start-up it decodes
 * the previous run's records and applies them again, in the same order.
 * Applying a prefix of them twice is harmless: an upsert or delete sets a
 * row, an append of a stored seq is a duplicate the store keeps once, a trim
 * deletes what is already gone.
 *
 * Payloads use host byte order and sizes (a journal never leaves the machine
 * that wrote it); each kind carries a version byte so a build can refuse
 * records it does not know instead of misreading them.
 *
 * Owns: nothing (pure encode/decode). Must never: trust a payload's lengths.
 */
#ifndef HOTPLEX_STORE_REDO_H
#define HOTPLEX_STORE_REDO_H

#include <stddef.h>
#include <stdint.h>

#include "store/journal.h"
#include "store/store.h"

enum { REDO_PUT = 1, REDO_DEL = 2, REDO_APPEND = 3, REDO_TRIM = 4 };

/* Encoders: buffer one record in j (journal_add), return its end position
 * (0 on ENOMEM). */
uint64_t redo_put(journal_t *j, const store_session_t *row);
uint64_t redo_del(journal_t *j, const char *session_id);
uint64_t redo_append(journal_t *j, const char *session_id, int64_t seq, int64_t created_ms,
                     const char *type, const char *json, size_t len);
uint64_t redo_trim(journal_t *j, const char *session_id, int64_t upto);

/* One decoded record. Strings point into the payload (not NUL-terminated:
 * use the lengths) except `row`, which is a full copy. */
typedef struct redo_op {
    int kind;
    const char *sid;
    size_t sid_len;
    int64_t seq; /* APPEND: seq; TRIM: upto */
    int64_t created_ms;
    const char *type, *json;
    size_t type_len, json_len;
    store_session_t row; /* PUT */
} redo_op_t;

/* Decode a journal record. 0, or -EINVAL for a record this build cannot
 * read (unknown kind or version, lengths that do not add up). */
int redo_decode(uint8_t kind, const uint8_t *p, size_t len, redo_op_t *out);

#endif
