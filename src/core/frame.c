/* frame.c - see frame.h. */
#include "core/frame.h"

#include <stdlib.h>
#include <string.h>

frame_t *frame_new(const char *json, size_t len)
{
    frame_t *f = malloc(sizeof(*f) + FRAME_PRE + len + 1);
    if (!f) return NULL;
    f->next = NULL;
    f->seq = 0;
    f->offset = 0;
    f->len = (uint32_t)len;
    f->is_delta = 0;
    f->t_ns = 0;
    memcpy(f->mem + FRAME_PRE, json, len);
    f->mem[FRAME_PRE + len] = '\0';
    return f;
}

void frame_free(frame_t *f)
{
    free(f);
}
