/*
 * fuzz_journal.c - libFuzzer target for the store's journal reader
 * (journal_parse) and redo record decoder (redo_decode): the bytes a
 * start-up reads back from a segment file that a crash, a full disk or a
 * stray write may have left in any state.
 * Properties checked (abort on failure): never a crash or an out-of-bounds
 * read; parse consumes whole records only (used <= size); a decoded
 * record's strings lie inside its payload; decoding is deterministic.
 * Must never: keep state between inputs.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/journal.h"
#include "store/redo.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int inside(const void *s, size_t n, const uint8_t *p, size_t len)
{
    const uint8_t *b = s;
    return n == 0 || (b >= p && b + n <= p + len);
}

static int on_record(void *arg, uint8_t kind, const uint8_t *p, size_t len)
{
    (void)arg;
    redo_op_t a, b;
    int ra = redo_decode(kind, p, len, &a);
    int rb = redo_decode(kind, p, len, &b);
    CHECK(ra == rb);
    if (ra == 0) {
        CHECK(a.kind == kind && a.seq == b.seq && a.sid_len == b.sid_len);
        if (kind != REDO_PUT) CHECK(a.sid_len > 0 && inside(a.sid, a.sid_len, p, len));
        CHECK(inside(a.type, a.type_len, p, len));
        CHECK(inside(a.json, a.json_len, p, len));
        if (kind == REDO_PUT) CHECK(strlen(a.row.id) == a.sid_len);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* as a segment */
    size_t used = 0;
    uint64_t n = 0;
    CHECK(journal_parse(data, size, on_record, NULL, &used, &n) == 0);
    CHECK(used <= size);
    /* as one record payload: first byte is the kind */
    if (size > 0) on_record(NULL, data[0], data + 1, size - 1);
    return 0;
}
