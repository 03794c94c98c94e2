/*
 * frame.h - an outbound WebSocket message with room in front of it for the
 * frame header, so the transport writes it without copying. Frames are
 * immutable once built; a stream event's frame is shared by every
 * connection that sends it.
 */
#ifndef HOTPLEX_FRAME_H
#define HOTPLEX_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_PRE 32 /* >= LWS_PRE; checked where the transport is built */

typedef struct frame {
    struct frame *next; /* queue link (per-connection reply queues) */
    int64_t seq;        /* stream position (0 for connection-only replies) */
    uint64_t offset;    /* bytes of the stream before this event */
    uint32_t len;       /* bytes of JSON */
    uint8_t is_delta;   /* message.delta: may be merged for a lagging reader */
    uint64_t t_ns;      /* stream events: monotonic time of the commit (event latency
                           metric); 0 for replies, replayed and merged frames */
    char mem[];         /* FRAME_PRE bytes of header room, then len bytes + NUL */
} frame_t;

static inline char *frame_json(frame_t *f)
{
    return f->mem + FRAME_PRE;
}

/* The frame whose frame_json() this is (what client_next_frame hands out). */
static inline frame_t *frame_of_json(char *json)
{
    return (frame_t *)(void *)(json - FRAME_PRE - offsetof(frame_t, mem));
}

frame_t *frame_new(const char *json, size_t len); /* NULL on ENOMEM */
void frame_free(frame_t *f);

#endif
