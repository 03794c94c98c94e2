/*
 * stream.c - see stream.h. The window is a power-of-two circular array of
 * frame pointers; commit is O(1) amortised, lookup by seq is O(1).
 */
#include "core/stream.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "aep/aep.h"
#include "util/buf.h"
#include "util/clock.h"

void stream_init(stream_t *st, int64_t last_seq)
{
    memset(st, 0, sizeof(*st));
    st->seq = st->durable = st->stored = last_seq;
}

void stream_free(stream_t *st)
{
    for (size_t i = 0; i < st->count; i++) frame_free(st->ring[(st->head + i) & (st->cap - 1)]);
    free(st->ring);
    st->ring = NULL;
    st->cap = st->count = st->head = st->ring_bytes = 0;
}

static int ring_push(stream_t *st, frame_t *f)
{
    if (st->count == st->cap) {
        size_t ncap = st->cap ? st->cap * 2 : 64;
        frame_t **r = malloc(ncap * sizeof(*r));
        if (!r) return -1;
        for (size_t i = 0; i < st->count; i++) r[i] = st->ring[(st->head + i) & (st->cap - 1)];
        free(st->ring);
        st->ring = r;
        st->cap = ncap;
        st->head = 0;
    }
    st->ring[(st->head + st->count) & (st->cap - 1)] = f;
    st->count++;
    st->ring_bytes += f->len;
    return 0;
}

frame_t *stream_commit(stream_t *st, const char *session_id, const char *type, const char *data,
                       size_t len, int64_t now_ms)
{
    /* Encode straight into the frame's memory: header room first. */
    buf_t b;
    buf_init(&b);
    const size_t head = offsetof(frame_t, mem) + FRAME_PRE;
    if (buf_reserve(&b, head + len + 256) < 0) return NULL;
    b.len = head;
    if (aep_encode(&b, type, st->seq + 1, session_id, now_ms, data, len) < 0) {
        buf_free(&b);
        return NULL;
    }
    size_t json_len = b.len - head;
    size_t total;
    frame_t *f = (frame_t *)buf_steal(&b, &total);
    if (!f) return NULL;
    /* the buffer grew by doubling: give back the slack, frames live a while */
    frame_t *exact = realloc(f, head + json_len + 1);
    if (exact) f = exact;
    f->next = NULL;
    f->len = (uint32_t)json_len;
    f->is_delta = strcmp(type, "message.delta") == 0;
    f->offset = st->bytes;
    f->seq = st->seq + 1;
    f->t_ns = clock_mono_ns();
    if (ring_push(st, f) < 0) {
        free(f);
        return NULL;
    }
    st->seq++;
    st->bytes += json_len;
    return f;
}

int64_t stream_first(const stream_t *st)
{
    return st->count ? st->ring[st->head]->seq : 0;
}

frame_t *stream_get(const stream_t *st, int64_t seq)
{
    if (!st->count) return NULL;
    int64_t first = st->ring[st->head]->seq;
    if (seq < first || seq >= first + (int64_t)st->count) return NULL;
    return st->ring[(st->head + (size_t)(seq - first)) & (st->cap - 1)];
}

/* The last seq the window may drop: both marks are past it. */
static int64_t settled(const stream_t *st)
{
    return st->durable < st->stored ? st->durable : st->stored;
}

void stream_trim_before(stream_t *st, int64_t seq)
{
    int64_t last = settled(st);
    while (st->count) {
        frame_t *f = st->ring[st->head];
        if (f->seq >= seq || f->seq > last) break;
        st->ring_bytes -= f->len;
        frame_free(f);
        st->head = (st->head + 1) & (st->cap - 1);
        st->count--;
    }
    if (!st->count) st->head = 0;
}

void stream_trim(stream_t *st, size_t max_bytes)
{
    int64_t last = settled(st);
    while (st->count && st->ring_bytes > max_bytes) {
        frame_t *f = st->ring[st->head];
        if (f->seq > last) break;
        st->ring_bytes -= f->len;
        frame_free(f);
        st->head = (st->head + 1) & (st->cap - 1);
        st->count--;
    }
    if (!st->count) st->head = 0;
}

/* Advance a mark (seq, byte offset past it). The window holds every event
 * that is not past both marks, so the offset is always found there. */
static void advance(const stream_t *st, int64_t seq, int64_t *mark, uint64_t *mark_bytes)
{
    if (seq <= *mark) return;
    *mark = seq > st->seq ? st->seq : seq;
    frame_t *f = stream_get(st, *mark);
    if (f) *mark_bytes = f->offset + f->len;
    else if (*mark == st->seq) *mark_bytes = st->bytes;
}

void stream_set_durable(stream_t *st, int64_t seq)
{
    advance(st, seq, &st->durable, &st->durable_bytes);
}

void stream_set_stored(stream_t *st, int64_t seq)
{
    advance(st, seq, &st->stored, &st->stored_bytes);
}

uint64_t stream_backlog(const stream_t *st, int64_t seq)
{
    if (seq > st->durable) return 0;
    frame_t *f = stream_get(st, seq);
    if (f) return st->durable_bytes > f->offset ? st->durable_bytes - f->offset : 0;
    if (!st->count) return 0;
    const frame_t *first = st->ring[st->head];
    if (seq > first->seq) return 0; /* beyond the window: nothing durable to send */
    uint64_t in_window = st->durable_bytes > first->offset ? st->durable_bytes - first->offset : 0;
    uint64_t avg = st->ring_bytes / st->count;
    return in_window + (uint64_t)(first->seq - seq) * avg;
}
