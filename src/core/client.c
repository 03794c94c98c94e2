/*
 * client.c - see client.h.
 *
 * Ordering by construction: a connection has two sources of frames, its own
 * reply queue (init_ack, pong, errors about its own messages) and its cursor
 * in the session stream. Replies always go first, and the cursor is set in
 * the same loop iteration that queues init_ack, so init_ack is the first
 * message and every stream event follows it in seq order. Nothing is ever
 * buffered per connection for the stream: a connection that falls behind the
 * in-memory window reads the rest back from the store.
 */
#include "core/client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aep/aep.h"
#include "auth/policy.h"
#include "core/session.h"
#include "util/clock.h"
#include "util/json.h"
#include "util/log.h"
#include "util/uuid.h"

#define REPLAY_BATCH 256
#define MERGE_MAX (64 * 1024) /* bytes of text in one merged delta */

static aep_msg_t g_msg; /* one inbound message at a time: the loop is single-threaded */

client_t *client_new(gateway_t *gw, const client_transport_t *tp, void *tp_ctx, const char *peer,
                     const char *user)
{
    client_t *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->gw = gw;
    c->tp = tp;
    c->tp_ctx = tp_ctx;
    uuid_v4(c->provisional_id);
    snprintf(c->peer, sizeof(c->peer), "%s", peer ? peer : "?");
    snprintf(c->user, sizeof(c->user), "%s", user ? user : "");
    c->connected_ms = c->last_rx_ms = clock_unix_ms();
    c->connected_ns = clock_mono_ns();
    c->init_deadline_ms = c->connected_ms + gw->cfg->init_timeout_ms;
    c->gw_next = gw->clients;
    if (gw->clients) gw->clients->gw_prev = c;
    gw->clients = c;
    gw->nclients++;
    gw->ctr.conns_total++;
    return c;
}

static void frames_free(frame_t **head, frame_t **tail)
{
    while (*head) {
        frame_t *n = (*head)->next;
        frame_free(*head);
        *head = n;
    }
    *tail = NULL;
}

static void detach(client_t *c)
{
    sess_t *s = c->sess;
    if (!s) return;
    if (c->s_prev) c->s_prev->s_next = c->s_next;
    else s->clients = c->s_next;
    if (c->s_next) c->s_next->s_prev = c->s_prev;
    c->s_next = c->s_prev = NULL;
    s->nclients--;
    c->sess = NULL;
}

static void attach(client_t *c, sess_t *s)
{
    /* append at the tail: the head is the oldest connection */
    c->sess = s;
    c->s_next = NULL;
    if (!s->clients) {
        s->clients = c;
        c->s_prev = NULL;
    } else {
        client_t *t = s->clients;
        while (t->s_next) t = t->s_next;
        t->s_next = c;
        c->s_prev = t;
    }
    s->nclients++;
}

static void client_destroy(client_t *c)
{
    frames_free(&c->replies_head, &c->replies_tail);
    frames_free(&c->replay_head, &c->replay_tail);
    if (c->sent_private) frame_free(c->sent_private);
    free(c);
}

void client_on_close(client_t *c)
{
    gateway_t *gw = c->gw;
    detach(c);
    if (c->gw_prev) c->gw_prev->gw_next = c->gw_next;
    else gw->clients = c->gw_next;
    if (c->gw_next) c->gw_next->gw_prev = c->gw_prev;
    gw->nclients--;
    c->closed = true;
    if (!c->reading) client_destroy(c); /* else freed when the read answers */
}

void client_wake(client_t *c)
{
    if (!c->closed) c->tp->wake(c->tp_ctx);
}

void client_close_after(client_t *c, int code, const char *reason, int64_t flush_seq)
{
    if (c->phase == CLIENT_CLOSING) return;
    c->phase = CLIENT_CLOSING;
    c->close_code = code;
    c->close_flush_seq = flush_seq;
    snprintf(c->close_reason, sizeof(c->close_reason), "%s", reason ? reason : "");
    client_wake(c);
}

void client_close(client_t *c, int code, const char *reason)
{
    client_close_after(c, code, reason, 0);
}

static const char *reply_session_id(const client_t *c)
{
    return c->sess ? c->sess->id : c->provisional_id;
}

void client_reply(client_t *c, const char *type, const char *data, size_t len)
{
    buf_t b;
    buf_init(&b);
    /* A reply is not a stream event: it carries the position of the last
     * stream event this connection was sent (spec section 4). */
    if (aep_encode(&b, type, c->last_sent > 0 ? c->last_sent : 1, reply_session_id(c),
                   clock_unix_ms(), data, len) == 0) {
        frame_t *f = frame_new(b.p, b.len);
        if (f) {
            if (c->replies_tail) c->replies_tail->next = f;
            else c->replies_head = f;
            c->replies_tail = f;
        }
    }
    buf_free(&b);
    client_wake(c);
}

void client_reply_error(client_t *c, int code, const char *message)
{
    buf_t b;
    buf_init(&b);
    aep_data_error(&b, (aep_code_t)code, message);
    if ((unsigned)code < AEP_CODE_COUNT) c->gw->ctr.errors[code]++;
    client_reply(c, "error", b.p, b.len);
    buf_free(&b);
}

static void write_caps(jw_t *w, const client_t *c, const char *worker_type, bool ok)
{
    jw_key(w, "server_caps");
    jw_obj_begin(w);
    jw_kstr(w, "protocol_version", ok ? AEP_VERSION : "");
    jw_kstr(w, "worker_type", ok ? worker_type : "");
    jw_kbool(w, "supports_resume", ok);
    jw_kbool(w, "supports_delta", ok);
    jw_kbool(w, "supports_tool_call", ok);
    jw_kbool(w, "supports_ping", ok);
    jw_kint(w, "max_frame_size", ok ? (int64_t)c->gw->cfg->max_frame_size : 0);
    jw_key(w, "modalities");
    jw_arr_begin(w);
    if (ok) {
        jw_str(w, "text");
        jw_str(w, "code");
    }
    jw_arr_end(w);
    jw_obj_end(w);
}

static void fail_init(client_t *c, aep_code_t code, const char *why)
{
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "session_id", c->provisional_id);
    jw_kstr(&w, "state", "deleted");
    jw_kstr(&w, "code", aep_code_name(code));
    jw_kstr(&w, "error", why);
    write_caps(&w, c, "", false);
    jw_obj_end(&w);
    client_reply(c, "init_ack", b.p, b.len);
    buf_free(&b);
    c->gw->ctr.init_failed++;
    if ((unsigned)code < AEP_CODE_COUNT) c->gw->ctr.errors[code]++;
    log_info("init failed peer=%s code=%s error=%s", c->peer, aep_code_name(code), why);
    client_close(c, 1000, "init failed");
}

/* Append a field of the derivation name. '%' and '|' are percent-encoded so
 * the name parses one way only (a user "a|b" cannot meet user "a" with a key
 * "b|..."); a field without them is unchanged, so ordinary names derive
 * exactly the spec's ids. */
static void name_field(buf_t *b, const char *f)
{
    for (; *f; f++) {
        if (*f == '%') buf_puts(b, "%25");
        else if (*f == '|') buf_puts(b, "%7C");
        else buf_append(b, f, 1);
    }
}

/* The session a client key names for this owner (spec section 3):
 * UUIDv5(owner|worker_type|key|work_dir), plus |bot=B for a bot identity.
 * A deleted id is never reused: the key moves on to generation N. */
static void derive_id(const client_t *c, const char *wt, const char *key, const char *work_dir,
                      char out[UUID_STR_LEN])
{
    buf_t b;
    buf_init(&b);
    name_field(&b, c->user);
    buf_puts(&b, "|");
    name_field(&b, wt);
    buf_puts(&b, "|");
    name_field(&b, key);
    buf_puts(&b, "|");
    name_field(&b, work_dir);
    if (c->bot_id[0]) {
        buf_puts(&b, "|bot=");
        name_field(&b, c->bot_id);
    }
    size_t base = b.len;
    uuid_v5(out, UUID_NS_DNS, b.p, b.len);
    for (int gen = 1; gen < 1000; gen++) {
        sess_t *s = sess_find(c->gw, out);
        if (!s || s->state != SESS_DELETED) break;
        b.len = base;
        buf_printf(&b, "|%d", gen);
        uuid_v5(out, UUID_NS_DNS, b.p, b.len);
    }
    buf_free(&b);
}

/* Owner and bot checks: the only way a connection reaches a session. */
static bool may_access(const client_t *c, const sess_t *s)
{
    return s && sess_find_visible(c->gw, s->id, c->user, c->bot_id) == s;
}

/* No credentials at the upgrade: init.data.auth.token decides who this is. */
/* A failed handshake counts against the client address and, when it named
 * one, against the session key: guessing at one session from many addresses
 * is throttled too. */
static void auth_failed(client_t *c, const char *skey, uint64_t now)
{
    rl_fail(c->gw->auth_failures, c->peer, now);
    if (skey[0]) rl_fail(c->gw->auth_failures, skey, now);
    c->gw->ctr.auth_failed++;
}

static aep_code_t authenticate_init(client_t *c, const aep_init_t *in, const char **why)
{
    gateway_t *gw = c->gw;
    uint64_t now = clock_mono_ns() / 1000000;
    char skey[sizeof(in->session_key) + 8] = "";
    if (in->session_key[0]) snprintf(skey, sizeof(skey), "session:%s", in->session_key);
    if (rl_blocked(gw->auth_failures, c->peer, now) ||
        (skey[0] && rl_blocked(gw->auth_failures, skey, now))) {
        gw->ctr.rate_limited++;
        *why = "too many failed attempts; try again later";
        return AEP_RATE_LIMITED;
    }
    if (!in->token[0]) {
        *why = "credentials required (API key or token at the upgrade, or init.data.auth.token)";
        auth_failed(c, skey, now);
        return AEP_UNAUTHORIZED;
    }
    auth_identity_t id;
    if (auth_check(gw->auth, in->token, &id, why) < 0) {
        auth_failed(c, skey, now);
        return AEP_UNAUTHORIZED;
    }
    snprintf(c->user, sizeof(c->user), "%s", id.user);
    snprintf(c->bot_id, sizeof(c->bot_id), "%s", id.bot_id);
    return AEP_OK;
}

static void set_cursor(client_t *c, sess_t *s, bool has_last, int64_t last_seq)
{
    int64_t head = s->stream.seq;
    int64_t from = has_last && last_seq < head ? last_seq : head;
    c->next_seq = from + 1;
    c->last_sent = from;
    /* history before the attach is what the client asked for, not backlog */
    c->mark_bytes = s->stream.bytes;
    c->attach_seq = s->stream.seq;
}

static void enforce_conn_limit(sess_t *s, client_t *newest)
{
    int live = 0;
    for (client_t *t = s->clients; t; t = t->s_next)
        if (t->phase == CLIENT_ATTACHED) live++;
    for (client_t *t = s->clients; t && live > s->gw->cfg->max_conns_per_session; t = t->s_next) {
        if (t == newest || t->phase != CLIENT_ATTACHED) continue;
        client_close(t, 1008, "replaced");
        live--;
    }
}

static void handle_init(client_t *c, const aep_msg_t *m)
{
    gateway_t *gw = c->gw;
    const char *why = NULL;
    aep_init_t in;
    aep_code_t code = aep_parse_init(m, &in, &why);
    if (code != AEP_OK) {
        fail_init(c, code, why);
        return;
    }
    if (!c->user[0]) {
        code = authenticate_init(c, &in, &why);
        memset(in.token, 0, sizeof(in.token));
        if (code != AEP_OK) {
            fail_init(c, code, why);
            aep_init_free(&in);
            return;
        }
    }
    memset(in.token, 0, sizeof(in.token));
    const wkr_ops_t *ops = wkr_lookup(in.worker_type);
    if (!ops) {
        char e[128];
        snprintf(e, sizeof(e), "unknown worker type: %s", in.worker_type);
        fail_init(c, AEP_WORKER_UNAVAILABLE, e);
        aep_init_free(&in);
        return;
    }
    if (gw->shutting_down) {
        fail_init(c, AEP_GATEWAY_OVERLOAD, "gateway is shutting down");
        aep_init_free(&in);
        return;
    }
    if (policy_agent_options(gw->cfg, in.model, in.allowed_tools, &why) < 0) {
        fail_init(c, AEP_CONFIG_INVALID, why);
        aep_init_free(&in);
        return;
    }

    /* Which session: an existing id the caller may use, else the id the
     * key derives to, else (no key) a new random one. Not found and not
     * yours look the same. */
    sess_t *s = NULL;
    bool created = false;
    char new_id[UUID_STR_LEN];
    const char *req_dir = in.work_dir[0] ? in.work_dir : gw->cfg->default_work_dir;
    if (in.session_key[0]) {
        s = sess_find(gw, in.session_key);
        if (!may_access(c, s)) s = NULL;
        if (!s) {
            char id[UUID_STR_LEN];
            derive_id(c, in.worker_type, in.session_key, req_dir, id);
            s = sess_find(gw, id);
            if (s && !may_access(c, s)) {
                fail_init(c, AEP_SESSION_NOT_FOUND, "session not found");
                aep_init_free(&in);
                return;
            }
            if (!s) {
                created = true;
                memcpy(new_id, id, UUID_STR_LEN);
            }
        }
    } else {
        created = true;
        uuid_v4(new_id);
    }
    if (!created && strcmp(s->worker_type, in.worker_type) != 0) {
        char e[128];
        snprintf(e, sizeof(e), "session runs worker type %s", s->worker_type);
        fail_init(c, AEP_CONFIG_INVALID, e);
        aep_init_free(&in);
        return;
    }
    if (created) {
        gw_user_t *u = gw_user(gw, c->user);
        int max = gw->cfg->max_sessions_per_user;
        if (!u || (max > 0 && u->sessions >= max)) {
            char e[128];
            snprintf(e, sizeof(e), "session limit reached (session.max_per_user=%d)", max);
            fail_init(c, AEP_GATEWAY_OVERLOAD, e);
            aep_init_free(&in);
            return;
        }
        char dir[1024];
        if (policy_work_dir(gw->cfg, req_dir, dir, sizeof(dir), &why) < 0) {
            char e[256];
            snprintf(e, sizeof(e), "%s: %.200s", why, req_dir);
            fail_init(c, AEP_CONFIG_INVALID, e);
            aep_init_free(&in);
            return;
        }
        s = sess_create(gw, new_id, c->user, in.worker_type, ops, in.session_key, dir);
        if (s) snprintf(s->bot_id, sizeof(s->bot_id), "%s", c->bot_id);
        if (!s) {
            fail_init(c, AEP_INTERNAL_ERROR, "out of memory");
            aep_init_free(&in);
            return;
        }
    }
    if (!s->agent) sess_set_agent_options(s, &in);
    aep_init_free(&in);

    /* Attach: from here on every event the session commits reaches this
     * connection after its init_ack, which goes first from the reply queue. */
    set_cursor(c, s, in.has_last_seq, in.last_seq);
    attach(c, s);
    c->phase = CLIENT_ATTACHED;
    char err[512];
    code = sess_ensure_agent(s, err, sizeof(err));
    if (code != AEP_OK) {
        detach(c);
        c->phase = CLIENT_AWAIT_INIT;
        if (created) {
            gw_user_t *u = gw_user(gw, s->owner);
            if (u) u->sessions--;
            hmap_del(&gw->sessions, s->id);
            sess_free(s);
        }
        fail_init(c, code, err);
        return;
    }
    enforce_conn_limit(s, c);

    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "session_id", s->id);
    jw_kstr(&w, "state", sess_state_name(s->state));
    write_caps(&w, c, s->worker_type, true);
    jw_kint(&w, "last_seq", s->stream.seq);
    jw_obj_end(&w);
    /* the ack goes to the head of the reply queue: nothing precedes it */
    client_reply(c, "init_ack", b.p, b.len);
    buf_free(&b);
    gw->ctr.init_ok++;
    hist_observe(&gw->ctr.init_latency, clock_mono_ns() - c->connected_ns);
    log_info("init ok peer=%s user=%s session=%s worker=%s %s last_seq=%lld", c->peer, c->user,
             s->id, s->worker_type, created ? "created" : "attached", (long long)s->stream.seq);
}

static void handle_permission(client_t *c, const aep_msg_t *m, int obj, const char *id_key)
{
    char id[256], reason[1024];
    int ti = json_obj_get(&m->doc, obj, id_key);
    if (ti < 0 && strcmp(id_key, "request_id") == 0) ti = json_obj_get(&m->doc, obj, "id");
    int ta = json_obj_get(&m->doc, obj, "allowed");
    bool allowed;
    if (ti < 0 || json_str_copy(&m->doc, ti, id, sizeof(id)) <= 0 || ta < 0 ||
        json_get_bool(&m->doc, ta, &allowed) < 0) {
        client_reply_error(c, AEP_INVALID_MESSAGE,
                           "permission_response needs id (string) and allowed (bool)");
        return;
    }
    reason[0] = '\0';
    int tr = json_obj_get(&m->doc, obj, "reason");
    if (tr >= 0 && json_type(&m->doc, tr) == JSON_STR)
        json_str_copy(&m->doc, tr, reason, sizeof(reason));
    const char *upd = NULL;
    size_t upd_len = 0;
    int tu = json_obj_get(&m->doc, obj, "updated_input");
    if (tu >= 0 && json_type(&m->doc, tu) == JSON_OBJ) upd = json_raw(&m->doc, tu, &upd_len);
    char err[512];
    aep_code_t code =
        sess_permission(c->sess, id, allowed, reason[0] ? reason : NULL, upd, upd_len, err,
                        sizeof(err));
    if (code != AEP_OK) client_reply_error(c, code, err);
}

static void handle_attached(client_t *c, const aep_msg_t *m)
{
    sess_t *s = c->sess;
    char err[512];
    aep_code_t code = AEP_OK;
    int d = m->data;
    switch (m->type) {
    case AEP_IN_INPUT: {
        int meta = d >= 0 ? json_obj_get(&m->doc, d, "metadata") : -1;
        int pr = meta >= 0 && json_type(&m->doc, meta) == JSON_OBJ
                     ? json_obj_get(&m->doc, meta, "permission_response")
                     : -1;
        if (pr >= 0 && json_type(&m->doc, pr) == JSON_OBJ) {
            handle_permission(c, m, pr, "request_id");
            return;
        }
        /* per user; in dev mode everyone is "anonymous", so per connection */
        const char *rl_key = auth_dev_mode(c->gw->auth) ? c->provisional_id : c->user;
        if (!rl_allow(c->gw->input_rate, rl_key, clock_mono_ns() / 1000000)) {
            c->gw->ctr.rate_limited++;
            client_reply_error(c, AEP_RATE_LIMITED, "too many inputs; slow down (auth.input_rate)");
            return;
        }
        int ct = d >= 0 ? json_obj_get(&m->doc, d, "content") : -1;
        if (ct < 0 || json_type(&m->doc, ct) != JSON_STR) {
            client_reply_error(c, AEP_INVALID_MESSAGE, "input.data.content must be a string");
            return;
        }
        /* The agent gets the escaped text as it came; check it also decodes
         * to Unicode text (json_parse allows lone surrogate escapes). */
        char *text = NULL;
        if (json_str_dup(&m->doc, ct, &text) < 0) {
            client_reply_error(c, AEP_INVALID_MESSAGE, "input.data.content is not valid Unicode text");
            return;
        }
        free(text);
        size_t len;
        const char *body = json_str_body(&m->doc, ct, &len);
        code = sess_input(s, body, len, err, sizeof(err));
        break;
    }
    case AEP_IN_PERMISSION_RESPONSE:
        if (d < 0) {
            client_reply_error(c, AEP_INVALID_MESSAGE, "permission_response needs data");
            return;
        }
        handle_permission(c, m, d, "id");
        return;
    case AEP_IN_CONTROL: {
        char action[64];
        int a = d >= 0 ? json_obj_get(&m->doc, d, "action") : -1;
        if (a < 0 || json_str_copy(&m->doc, a, action, sizeof(action)) <= 0) {
            client_reply_error(c, AEP_INVALID_MESSAGE, "control.data.action must be a string");
            return;
        }
        if (strcmp(action, "cd") == 0) {
            char path[1024];
            int det = json_obj_get(&m->doc, d, "details");
            int p = det >= 0 && json_type(&m->doc, det) == JSON_OBJ
                        ? json_obj_get(&m->doc, det, "path")
                        : -1;
            int n = p >= 0 ? json_str_copy(&m->doc, p, path, sizeof(path)) : -1;
            if (n <= 0 || memchr(path, '\0', (size_t)n)) {
                client_reply_error(c, AEP_INVALID_MESSAGE, "cd needs details.path (string)");
                return;
            }
            code = sess_cd(s, path, err, sizeof(err));
            break;
        }
        code = sess_control(s, action, err, sizeof(err));
        break;
    }
    case AEP_IN_PING: {
        char data[64];
        int n = snprintf(data, sizeof(data), "{\"state\":\"%s\"}", sess_state_name(s->state));
        client_reply(c, "pong", data, (size_t)n);
        return;
    }
    case AEP_IN_INIT:
        client_reply_error(c, AEP_PROTOCOL_VIOLATION, "already initialised");
        return;
    case AEP_IN_QUESTION_RESPONSE:
    case AEP_IN_ELICITATION_RESPONSE:
    case AEP_IN_WORKER_COMMAND: {
        char tn[64];
        aep_type_name(m, tn, sizeof(tn));
        snprintf(err, sizeof(err), "%s is not supported by worker type %s", tn, s->worker_type);
        code = AEP_PROTOCOL_VIOLATION;
        break;
    }
    default: {
        char tn[64];
        aep_type_name(m, tn, sizeof(tn));
        snprintf(err, sizeof(err), "unknown event type: %s", tn);
        code = AEP_PROTOCOL_VIOLATION;
        break;
    }
    }
    if (code != AEP_OK) client_reply_error(c, code, err);
}

void client_on_message(client_t *c, const char *buf, size_t len)
{
    c->last_rx_ms = clock_unix_ms();
    c->gw->ctr.frames_in++;
    if (c->phase == CLIENT_CLOSING) return;
    const char *why = NULL;
    aep_code_t code = aep_parse(&g_msg, buf, len, &why);
    if (c->phase == CLIENT_AWAIT_INIT) {
        if (code != AEP_OK) fail_init(c, code, why);
        else if (!aep_is_init(&g_msg))
            fail_init(c, AEP_PROTOCOL_VIOLATION, "first message must be init");
        else handle_init(c, &g_msg);
        return;
    }
    if (code != AEP_OK) {
        client_reply_error(c, code, why);
        return;
    }
    handle_attached(c, &g_msg);
}

static void on_replay(void *ctx, int rc, int n, const int64_t *seqs, const char *const *json,
                      const size_t *lens, int64_t oldest)
{
    client_t *c = ctx;
    c->reading = false;
    if (c->closed) {
        client_destroy(c);
        return;
    }
    if (rc < 0) {
        log_error("replay read failed for %s: %d", c->peer, rc);
        client_close(c, 1011, "replay failed");
        return;
    }
    sess_t *s = c->sess;
    if (!s) return;
    int64_t first = n > 0 ? seqs[0] : 0;
    if (n == 0) {
        /* Nothing stored at or after the cursor: it was removed (retention
         * or deletion); continue from what the window still has. */
        first = s->stream.count ? stream_first(&s->stream) : s->stream.durable + 1;
    }
    if (first > c->next_seq) {
        char data[96];
        int k = snprintf(data, sizeof(data), "{\"action\":\"resync\",\"from_seq\":%lld}",
                         (long long)first);
        client_reply(c, "control", data, (size_t)k);
        log_info("resync peer=%s session=%s wanted=%lld from=%lld", c->peer, s->id,
                 (long long)c->next_seq, (long long)first);
        c->next_seq = first;
        c->last_sent = first - 1;
    }
    for (int i = 0; i < n; i++) {
        frame_t *f = frame_new(json[i], lens[i]);
        if (!f) break;
        f->seq = seqs[i];
        if (c->replay_tail) c->replay_tail->next = f;
        else c->replay_head = f;
        c->replay_tail = f;
    }
    (void)oldest;
    client_wake(c);
}

/* message_id and content (escaped body) of a delta frame. */
static bool delta_parts(frame_t *f, json_tok_t *tok, int ntok, const char **mid, size_t *mid_len,
                        const char **body, size_t *body_len)
{
    json_doc_t d;
    if (json_parse(&d, frame_json(f), f->len, tok, ntok) < 0) return false;
    int ev = json_obj_get(&d, 0, "event");
    int data = ev >= 0 ? json_obj_get(&d, ev, "data") : -1;
    int m = data >= 0 ? json_obj_get(&d, data, "message_id") : -1;
    int c = data >= 0 ? json_obj_get(&d, data, "content") : -1;
    if (m < 0 || c < 0 || json_type(&d, m) != JSON_STR || json_type(&d, c) != JSON_STR) return false;
    *mid = json_str_body(&d, m, mid_len);
    *body = json_str_body(&d, c, body_len);
    return true;
}

/* A lagging connection gets adjacent deltas of one message as one frame
 * (seq of the last one merged): fewer frames to catch up, same text. The
 * stream itself is untouched; other connections still get every delta. */
static frame_t *merge_deltas(client_t *c, sess_t *s, frame_t *first)
{
    json_tok_t tok[32];
    const char *mid, *body;
    size_t mid_len, body_len;
    if (!delta_parts(first, tok, 32, &mid, &mid_len, &body, &body_len)) return NULL;
    char msg_id[128];
    if (mid_len >= sizeof(msg_id)) return NULL;
    memcpy(msg_id, mid, mid_len);
    msg_id[mid_len] = '\0';
    buf_t text;
    buf_init(&text);
    buf_append(&text, body, body_len);
    frame_t *last = first;
    int merged = 1;
    for (int64_t seq = first->seq + 1; seq <= s->stream.durable && text.len < MERGE_MAX; seq++) {
        frame_t *f = stream_get(&s->stream, seq);
        if (!f || !f->is_delta ||
            !delta_parts(f, tok, 32, &mid, &mid_len, &body, &body_len) ||
            mid_len != strlen(msg_id) || memcmp(mid, msg_id, mid_len) != 0)
            break;
        buf_append(&text, body, body_len);
        last = f;
        merged++;
    }
    if (merged == 1) {
        buf_free(&text);
        return NULL;
    }
    buf_t data, env;
    buf_init(&data);
    buf_init(&env);
    jw_t w;
    jw_init(&w, &data);
    jw_obj_begin(&w);
    jw_kstr(&w, "message_id", msg_id);
    jw_key(&w, "content");
    jw_str_escaped(&w, text.p, text.len);
    jw_obj_end(&w);
    frame_t *out = NULL;
    if (jw_error(&w) == 0 && aep_encode(&env, "message.delta", last->seq, s->id, clock_unix_ms(),
                                        data.p, data.len) == 0)
        out = frame_new(env.p, env.len);
    buf_free(&text);
    buf_free(&data);
    buf_free(&env);
    if (!out) return NULL;
    out->seq = last->seq;
    c->next_seq = last->seq + 1;
    c->last_sent = last->seq;
    if (last->offset + last->len > c->mark_bytes) c->mark_bytes = last->offset + last->len;
    c->gw->ctr.merged_deltas += (uint64_t)(merged - 1);
    return out;
}

int client_next_frame(client_t *c, char **json, size_t *len)
{
    if (c->sent_private) {
        frame_free(c->sent_private);
        c->sent_private = NULL;
    }
    frame_t *f = c->replies_head;
    if (f) {
        c->replies_head = f->next;
        if (!c->replies_head) c->replies_tail = NULL;
        c->sent_private = f;
        *json = frame_json(f);
        *len = f->len;
        return 1;
    }
    sess_t *s = c->sess;
    if (c->phase == CLIENT_CLOSING && (!s || c->next_seq > c->close_flush_seq)) return -1;
    if (c->phase == CLIENT_AWAIT_INIT || !s) return 0;

    while ((f = c->replay_head)) {
        c->replay_head = f->next;
        if (!c->replay_head) c->replay_tail = NULL;
        if (f->seq < c->next_seq) {
            frame_free(f);
            continue;
        }
        c->next_seq = f->seq + 1;
        c->last_sent = f->seq;
        /* read back from the store: an event committed since the attach
         * still counts, by its size (the stored envelope is the sent one) */
        if (f->seq > c->attach_seq) c->mark_bytes += f->len;
        c->sent_private = f;
        *json = frame_json(f);
        *len = f->len;
        return 1;
    }
    if (c->next_seq > s->stream.durable) return 0;
    f = stream_get(&s->stream, c->next_seq);
    if (f && f->is_delta && stream_backlog(&s->stream, c->next_seq) > c->gw->cfg->out_soft_limit) {
        frame_t *m = merge_deltas(c, s, f);
        if (m) {
            c->sent_private = m;
            *json = frame_json(m);
            *len = m->len;
            return 1;
        }
    }
    if (f) {
        c->next_seq = f->seq + 1;
        c->last_sent = f->seq;
        if (f->offset + f->len > c->mark_bytes) c->mark_bytes = f->offset + f->len;
        *json = frame_json(f);
        *len = f->len;
        return 1;
    }
    /* Behind the in-memory window: read the next events from the store. */
    if (!c->reading && c->next_seq <= s->stream.durable) {
        c->reading = true;
        store_events_read(c->gw->store, s->id, c->next_seq - 1, REPLAY_BATCH, on_replay, c);
    }
    return 0;
}

void client_check_backlog(client_t *c)
{
    sess_t *s = c->sess;
    gateway_t *gw = c->gw;
    if (!s || c->phase != CLIENT_ATTACHED || !c->choked || c->next_seq > s->stream.durable ||
        s->stream.durable_bytes - c->mark_bytes <= gw->cfg->out_hard_limit)
        return;
    gw->ctr.slow_closes++;
    log_warn("session %s: closing slow connection %s (backlog over %zu bytes)", s->id, c->peer,
             gw->cfg->out_hard_limit);
    client_close(c, 1013, "slow consumer: resume with last_seq");
}

void client_set_choked(client_t *c, bool choked)
{
    c->choked = choked;
    if (choked) client_check_backlog(c); /* the stream may have stopped growing */
}

void client_cron(client_t *c, int64_t now_ms)
{
    if (c->phase == CLIENT_AWAIT_INIT && now_ms >= c->init_deadline_ms) {
        char e[96];
        snprintf(e, sizeof(e), "no init within %d ms", c->gw->cfg->init_timeout_ms);
        fail_init(c, AEP_PROTOCOL_VIOLATION, e);
    } else if (c->phase == CLIENT_ATTACHED) {
        client_check_backlog(c); /* also when the stream has stopped growing */
    }
    if (c->phase == CLIENT_ATTACHED && now_ms - c->last_rx_ms > c->gw->cfg->client_timeout_ms) {
        log_info("closing idle connection %s (no frame for %d ms)", c->peer,
                 c->gw->cfg->client_timeout_ms);
        client_close(c, 1001, "client timeout");
    }
}
