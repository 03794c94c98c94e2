/*
 * redo.c - see redo.h.
 *
 * Layouts (after a version byte, 1 for every kind so far):
 *   PUT     the store_session_t fields in declaration order: text as u16
 *           length + bytes, int64 as 8 bytes, bool as 1 byte
 *   DEL     session id bytes
 *   APPEND  u8 id length, u8 type length, i64 seq, i64 created_ms, id, type,
 *           envelope JSON
 *   TRIM    i64 upto, session id bytes
 * A new store_session_t field needs a line in both field lists below and a
 * new PUT version (old records then decode with the field zeroed).
 */
#include "store/redo.h"

#include <errno.h>
#include <string.h>

#define REDO_VERSION 1

typedef struct redo_rd {
    const uint8_t *p, *end;
    int bad;
} redo_rd_t;

static const uint8_t *rd_take(redo_rd_t *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *at = r->p;
    r->p += n;
    return at;
}

static int64_t rd_i64(redo_rd_t *r)
{
    int64_t v = 0;
    const uint8_t *p = rd_take(r, 8);
    if (p) memcpy(&v, p, 8);
    return v;
}

static void rd_text(redo_rd_t *r, char *dst, size_t cap)
{
    uint16_t n = 0;
    const uint8_t *p = rd_take(r, 2);
    if (p) memcpy(&n, p, 2);
    const uint8_t *s = rd_take(r, n);
    if (!s) return;
    if (n >= cap) { /* longer than this build's field: not ours */
        r->bad = 1;
        return;
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

static void rd_bool(redo_rd_t *r, bool *dst)
{
    const uint8_t *p = rd_take(r, 1);
    if (p) *dst = *p != 0;
}

static size_t wr_text(uint8_t *out, const char *s, size_t cap)
{
    uint16_t n = (uint16_t)strnlen(s, cap - 1);
    memcpy(out, &n, 2);
    memcpy(out + 2, s, n);
    return 2 + (size_t)n;
}

static size_t wr_i64(uint8_t *out, int64_t v)
{
    memcpy(out, &v, 8);
    return 8;
}

#define TEXT(f) n += wr_text(b + n, row->f, sizeof(row->f))
uint64_t redo_put(journal_t *j, const store_session_t *row)
{
    uint8_t b[1 + sizeof(store_session_t) + 64];
    size_t n = 0;
    b[n++] = REDO_VERSION;
    TEXT(id);
    TEXT(owner);
    TEXT(bot_id);
    TEXT(worker_type);
    TEXT(client_key);
    TEXT(work_dir);
    TEXT(state);
    TEXT(agent_model);
    TEXT(agent_sid);
    n += wr_i64(b + n, row->last_seq);
    n += wr_i64(b + n, row->created_ms);
    n += wr_i64(b + n, row->updated_ms);
    b[n++] = row->agent_started;
    b[n++] = row->turn_open;
    const void *parts[1] = {b};
    return journal_add(j, REDO_PUT, parts, &n, 1);
}
#undef TEXT

uint64_t redo_del(journal_t *j, const char *session_id)
{
    static const uint8_t ver = REDO_VERSION;
    const void *parts[2] = {&ver, session_id};
    size_t lens[2] = {1, strlen(session_id)};
    return journal_add(j, REDO_DEL, parts, lens, 2);
}

uint64_t redo_append(journal_t *j, const char *session_id, int64_t seq, int64_t created_ms,
                     const char *type, const char *json, size_t len)
{
    size_t ns = strlen(session_id), nt = strlen(type);
    if (ns > 255 || nt > 255) return 0;
    uint8_t h[19];
    h[0] = REDO_VERSION;
    h[1] = (uint8_t)ns;
    h[2] = (uint8_t)nt;
    memcpy(h + 3, &seq, 8);
    memcpy(h + 11, &created_ms, 8);
    const void *parts[4] = {h, session_id, type, json};
    size_t lens[4] = {sizeof(h), ns, nt, len};
    return journal_add(j, REDO_APPEND, parts, lens, 4);
}

uint64_t redo_trim(journal_t *j, const char *session_id, int64_t upto)
{
    uint8_t h[9];
    h[0] = REDO_VERSION;
    memcpy(h + 1, &upto, 8);
    const void *parts[2] = {h, session_id};
    size_t lens[2] = {sizeof(h), strlen(session_id)};
    return journal_add(j, REDO_TRIM, parts, lens, 2);
}

#define TEXT(f) rd_text(&r, out->row.f, sizeof(out->row.f))
int redo_decode(uint8_t kind, const uint8_t *p, size_t len, redo_op_t *out)
{
    memset(out, 0, sizeof(*out));
    redo_rd_t r = {.p = p, .end = p + len};
    const uint8_t *ver = rd_take(&r, 1);
    if (!ver || *ver != REDO_VERSION) return -EINVAL;
    out->kind = kind;
    switch (kind) {
    case REDO_PUT:
        TEXT(id);
        TEXT(owner);
        TEXT(bot_id);
        TEXT(worker_type);
        TEXT(client_key);
        TEXT(work_dir);
        TEXT(state);
        TEXT(agent_model);
        TEXT(agent_sid);
        out->row.last_seq = rd_i64(&r);
        out->row.created_ms = rd_i64(&r);
        out->row.updated_ms = rd_i64(&r);
        rd_bool(&r, &out->row.agent_started);
        rd_bool(&r, &out->row.turn_open);
        if (r.bad || r.p != r.end || !out->row.id[0]) return -EINVAL;
        out->sid = out->row.id;
        out->sid_len = strlen(out->row.id);
        return 0;
    case REDO_DEL:
        out->sid = (const char *)r.p;
        out->sid_len = (size_t)(r.end - r.p);
        return out->sid_len ? 0 : -EINVAL;
    case REDO_APPEND: {
        const uint8_t *h = rd_take(&r, 2);
        if (!h) return -EINVAL;
        out->seq = rd_i64(&r);
        out->created_ms = rd_i64(&r);
        out->sid_len = h[0];
        out->type_len = h[1];
        out->sid = (const char *)rd_take(&r, out->sid_len);
        out->type = (const char *)rd_take(&r, out->type_len);
        if (r.bad || !out->sid_len) return -EINVAL;
        out->json = (const char *)r.p;
        out->json_len = (size_t)(r.end - r.p);
        return 0;
    }
    case REDO_TRIM:
        out->seq = rd_i64(&r);
        if (r.bad || r.p == r.end) return -EINVAL;
        out->sid = (const char *)r.p;
        out->sid_len = (size_t)(r.end - r.p);
        return 0;
    default:
        return -EINVAL;
    }
}
#undef TEXT
