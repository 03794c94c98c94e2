/*
 * session.c - see session.h.
 *
 * State changes and turn boundaries happen only here, on the loop thread,
 * so "one state event per transition" and "one done per turn" are plain
 * sequential code. The agent talks to the session only through the sink
 * callbacks below; the session never blocks on the agent.
 */
#include "core/session.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/policy.h"
#include "core/client.h"
#include "util/clock.h"
#include "util/json.h"
#include "util/log.h"
#include "util/uuid.h"

static const char *const state_names[] = {"created", "running", "idle", "terminated", "deleted"};

const char *sess_state_name(sess_state_t s)
{
    return (unsigned)s < 5 ? state_names[s] : "unknown";
}

int sess_state_parse(const char *name)
{
    for (int i = 0; i < 5; i++)
        if (strcmp(name, state_names[i]) == 0) return i;
    return -1;
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}
#define COPY(dst, src) copy_str((dst), sizeof(dst), (src))

/* The heap-held strings of sess_t: at most cap-1 bytes of src (the bound
 * the inline arrays had), never NULL. */
static char empty_str[1];
static void set_str(char **dst, const char *src, size_t cap)
{
    size_t n = src ? strnlen(src, cap - 1) : 0;
    char *p = n ? malloc(n + 1) : empty_str;
    if (!p) {
        log_error("out of memory keeping a session setting; it is left empty");
        p = empty_str;
    } else if (n) {
        memcpy(p, src, n);
        p[n] = '\0';
    }
    if (*dst && *dst != empty_str) free(*dst);
    *dst = p;
}
#define SET(dst, src, cap) set_str(&(dst), (src), (cap))

sess_t *sess_find(gateway_t *gw, const char *id)
{
    return hmap_get(&gw->sessions, id);
}

sess_t *sess_find_visible(gateway_t *gw, const char *id, const char *user, const char *bot_id)
{
    sess_t *s = hmap_get(&gw->sessions, id);
    if (!s || s->state == SESS_DELETED || strcmp(s->owner, user) != 0 ||
        strcmp(s->bot_id, bot_id ? bot_id : "") != 0)
        return NULL;
    return s;
}

static sess_t *sess_alloc(gateway_t *gw, const char *id)
{
    sess_t *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->gw = gw;
    COPY(s->id, id);
    COPY(s->agent_sid, id);
    s->client_key = s->work_dir = s->allowed_tools = s->disallowed_tools = empty_str;
    if (hmap_put(&gw->sessions, s->id, s) < 0) {
        free(s);
        return NULL;
    }
    return s;
}

sess_t *sess_create(gateway_t *gw, const char *id, const char *owner, const char *worker_type,
                    const wkr_ops_t *ops, const char *client_key, const char *work_dir)
{
    sess_t *s = sess_alloc(gw, id);
    if (!s) return NULL;
    COPY(s->owner, owner);
    COPY(s->worker_type, worker_type);
    SET(s->client_key, client_key, 256);
    SET(s->work_dir, work_dir, 1024);
    s->ops = ops;
    s->state = SESS_CREATED;
    s->created_ms = s->updated_ms = s->last_activity_ms = clock_unix_ms();
    stream_init(&s->stream, 0);
    gw_user_t *u = gw_user(gw, owner);
    if (u) u->sessions++;
    return s;
}

sess_t *sess_restore(gateway_t *gw, const store_session_t *row)
{
    sess_t *s = sess_alloc(gw, row->id);
    if (!s) return NULL;
    COPY(s->owner, row->owner);
    COPY(s->bot_id, row->bot_id);
    COPY(s->worker_type, row->worker_type);
    SET(s->client_key, row->client_key, 256);
    SET(s->work_dir, row->work_dir, 1024);
    COPY(s->agent_model, row->agent_model);
    if (row->agent_sid[0]) COPY(s->agent_sid, row->agent_sid);
    s->ops = wkr_lookup(row->worker_type);
    int st = sess_state_parse(row->state);
    s->state = st < 0 ? SESS_TERMINATED : (sess_state_t)st; /* sess_recover settles it */
    s->turn_active = row->turn_open;
    s->agent_started = row->agent_started;
    s->created_ms = row->created_ms;
    s->updated_ms = s->last_activity_ms = row->updated_ms;
    stream_init(&s->stream, row->last_seq);
    gw_user_t *u = s->state != SESS_DELETED ? gw_user(gw, s->owner) : NULL;
    if (u) u->sessions++;
    return s;
}

static void inq_clear(sess_t *s)
{
    while (s->inq_head) {
        sess_input_t *n = s->inq_head->next;
        free(s->inq_head);
        s->inq_head = n;
    }
    s->inq_tail = NULL;
    s->inq_len = 0;
}

void sess_free(sess_t *s)
{
    inq_clear(s);
    stream_free(&s->stream);
    free(s->system_prompt);
    SET(s->client_key, NULL, 1);
    SET(s->work_dir, NULL, 1);
    SET(s->allowed_tools, NULL, 1);
    SET(s->disallowed_tools, NULL, 1);
    free(s);
}

void sess_save(sess_t *s)
{
    store_session_t row;
    memset(&row, 0, sizeof(row));
    COPY(row.id, s->id);
    COPY(row.owner, s->owner);
    COPY(row.bot_id, s->bot_id);
    COPY(row.worker_type, s->worker_type);
    COPY(row.client_key, s->client_key);
    COPY(row.work_dir, s->work_dir);
    COPY(row.state, sess_state_name(s->state));
    COPY(row.agent_model, s->agent_model);
    COPY(row.agent_sid, s->agent_sid);
    row.last_seq = s->stream.seq;
    row.created_ms = s->created_ms;
    row.updated_ms = s->updated_ms = clock_unix_ms();
    row.agent_started = s->agent_started;
    row.turn_open = s->turn_active;
    store_session_put(s->gw->store, &row);
}

void sess_set_agent_options(sess_t *s, const aep_init_t *in)
{
    COPY(s->model, in->model);
    COPY(s->permission_mode, in->permission_mode);
    SET(s->allowed_tools, in->allowed_tools, 1024);
    SET(s->disallowed_tools, in->disallowed_tools, 1024);
    free(s->system_prompt);
    s->system_prompt = in->system_prompt ? strdup(in->system_prompt) : NULL;
    s->max_turns = in->max_turns;
}

/* ---- stream ---------------------------------------------------------- */

static void wake_clients(sess_t *s)
{
    for (client_t *c = s->clients; c; c = c->s_next) client_wake(c);
}

void sess_emit(sess_t *s, const char *type, const char *data, size_t len)
{
    gateway_t *gw = s->gw;
    frame_t *f = stream_commit(&s->stream, s->id, type, data, len, clock_unix_ms());
    if (!f) {
        log_error("session %s: out of memory committing %s", s->id, type);
        return;
    }
    gw->ctr.events_committed++;
    gw->ctr.events_by_type[gw_event_type_index(type)]++;
    store_event_append(gw->store, s->id, f->seq, type, frame_json(f), f->len);
    /* Backpressure: an agent faster than the database is paused (its output
     * is not read) until the store thread catches up, so memory stays
     * bounded. Delivery does not wait for the database (see stream.h). */
    if (!s->paused && s->agent && s->ops->pause &&
        s->stream.bytes - s->stream.stored_bytes > SESS_PAUSE_HIGH) {
        s->paused = true;
        s->ops->pause(s->agent, true);
    }
}

void sess_emit_error(sess_t *s, aep_code_t code, const char *message)
{
    buf_t b;
    buf_init(&b);
    aep_data_error(&b, code, message);
    if ((unsigned)code < AEP_CODE_COUNT) s->gw->ctr.errors[code]++;
    sess_emit(s, "error", b.p, b.len);
    buf_free(&b);
}

/* The window serves readers that are behind (at most session.ring_bytes).
 * While readers are attached, what every one of them has been sent is
 * dropped at once (a later reconnect reads it back from the store), so a
 * session whose readers keep up holds almost nothing in memory. The stream
 * itself keeps whatever is not yet both durable and stored. */
static void trim_window(sess_t *s)
{
    if (s->clients) {
        int64_t oldest_needed = s->stream.durable + 1;
        for (client_t *c = s->clients; c; c = c->s_next)
            if (c->next_seq < oldest_needed) oldest_needed = c->next_seq;
        stream_trim_before(&s->stream, oldest_needed);
    }
    stream_trim(&s->stream, s->gw->cfg->session_ring_bytes);
}

void sess_on_durable(sess_t *s, int64_t seq)
{
    stream_set_durable(&s->stream, seq);
    /* Slow readers: a connection whose socket is full and that is more than
     * the hard limit behind is closed; it resumes with last_seq. The stream
     * itself never drops anything, and a reader that keeps its socket
     * drained is never closed, however much is queued for it. */
    for (client_t *c = s->clients, *n; c; c = n) {
        n = c->s_next;
        client_check_backlog(c);
    }
    wake_clients(s);
    trim_window(s);
}

void sess_on_stored(sess_t *s, int64_t seq)
{
    stream_set_stored(&s->stream, seq);
    if (s->paused && s->stream.bytes - s->stream.stored_bytes < SESS_PAUSE_LOW) {
        s->paused = false;
        if (s->agent && s->ops->pause) s->ops->pause(s->agent, false);
    }
    trim_window(s);
}

static void set_state(sess_t *s, sess_state_t st, const char *reason, bool force)
{
    if (s->state == st && !force) return; /* same-state transitions are no-ops */
    s->state = st;
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "state", sess_state_name(st));
    if (reason) jw_kstr(&w, "message", reason);
    jw_obj_end(&w);
    sess_emit(s, "state", b.p, b.len);
    buf_free(&b);
    sess_save(s);
    log_info("session %s: state %s%s%s", s->id, sess_state_name(st), reason ? " reason=" : "",
             reason ? reason : "");
}

/* End the running turn from the gateway side (crash, stop). */
static void end_turn(sess_t *s, aep_code_t code, const char *message)
{
    if (!s->turn_active) return;
    sess_emit_error(s, code, message);
    buf_t b;
    buf_init(&b);
    jw_t w;
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kbool(&w, "success", false);
    jw_key(&w, "stats");
    jw_obj_begin(&w);
    jw_kbool(&w, "interrupted", s->turn_interrupted);
    jw_kstr(&w, "reason", aep_code_name(code));
    jw_obj_end(&w);
    jw_obj_end(&w);
    sess_emit(s, "done", b.p, b.len);
    buf_free(&b);
    s->turn_active = false;
    s->turn_interrupted = false;
}

/* ---- turns ----------------------------------------------------------- */

static void dispatch_next(sess_t *s)
{
    if (s->turn_active || !s->inq_head || !s->agent || s->after_stop != AFTER_STOP_NONE) return;
    /* Take the input off the queue before handing it over: an agent may end
     * the turn (and so ask for the next input) before input() returns. */
    sess_input_t *in = s->inq_head;
    s->inq_head = in->next;
    if (!s->inq_head) s->inq_tail = NULL;
    s->inq_len--;
    set_state(s, SESS_RUNNING, NULL, false);
    s->turn_active = true;
    s->turn_interrupted = false;
    sess_save(s); /* a turn in flight: a restart must be able to end it */
    /* an agent that waits for its first input before it says anything:
     * its start-up cost is measured from that input */
    if (s->agent_t0_ns) s->agent_t0_ns = clock_mono_ns();
    int rc = s->ops->input(s->agent, in->content, in->len);
    if (rc == -EPIPE) {
        /* The agent's stdin is gone: it is dying, and its exit ends the
         * turn. The input goes back to the head of the queue for the resume. */
        log_warn("session %s: agent is not taking input", s->id);
        in->next = s->inq_head;
        s->inq_head = in;
        if (!s->inq_tail) s->inq_tail = in;
        s->inq_len++;
        return;
    }
    free(in);
    if (rc < 0) {
        /* This input cannot be delivered (e.g. text the agent cannot take):
         * the turn fails on its own and the queue moves on. */
        char msg[128];
        snprintf(msg, sizeof(msg), "the agent refused the input: %s", strerror(-rc));
        end_turn(s, AEP_INVALID_MESSAGE, msg);
        if (s->after_stop == AFTER_STOP_NONE) set_state(s, SESS_IDLE, NULL, false);
        dispatch_next(s);
    }
}

/* Metrics: the agent's first output since it was started. */
static void first_output(sess_t *s)
{
    if (!s->agent_t0_ns) return;
    hist_observe(&s->gw->ctr.agent_start, clock_mono_ns() - s->agent_t0_ns);
    s->agent_t0_ns = 0;
}

static void sink_event(void *ctx, const char *type, const char *data, size_t len)
{
    sess_t *s = ctx;
    first_output(s);
    s->last_output_ms = clock_unix_ms();
    s->awaiting_permission = strcmp(type, "permission_request") == 0;
    sess_emit(s, type, data, len);
    if (strcmp(type, "done") == 0) {
        /* retention by count: a turn boundary is a good time to drop the
         * oldest events (a resume from before them gets control{resync}) */
        int64_t keep = s->gw->cfg->max_events;
        if (keep > 0 && s->stream.seq > keep) store_events_trim(s->gw->store, s->id, s->stream.seq - keep);
        s->last_activity_ms = s->last_output_ms;
        s->turn_active = false;
        s->turn_interrupted = false;
        if (!s->agent_started) {
            s->agent_started = true; /* a transcript exists now: resume it next time */
            sess_save(s);
        }
        if (s->after_stop == AFTER_STOP_NONE) set_state(s, SESS_IDLE, NULL, false);
        dispatch_next(s);
    }
}

static void sink_info(void *ctx, const char *key, const char *value)
{
    sess_t *s = ctx;
    first_output(s);
    if (strcmp(key, "agent_model") == 0 && strcmp(s->agent_model, value) != 0) {
        COPY(s->agent_model, value);
        sess_save(s);
    }
    /* The agent announced its session: from now on it has a transcript under
     * this id, so a restart after a crash must resume it, not start anew. */
    if (strcmp(key, "agent_session_id") == 0 && !s->agent_started) {
        s->agent_started = true;
        sess_save(s);
    }
    log_debug("session %s: agent %s=%s", s->id, key, value);
}

static aep_code_t start_agent(sess_t *s, const char *reason, bool force_event, char *err,
                              size_t cap);

static void restart_for_queue(sess_t *s)
{
    char e[256];
    aep_code_t rc = start_agent(s, "resumed", false, e, sizeof(e));
    if (rc != AEP_OK) {
        /* nobody can answer the queued inputs now: fail them visibly */
        sess_emit_error(s, rc, e);
        inq_clear(s);
        return;
    }
    dispatch_next(s);
}

static void sink_exit(void *ctx, int status, int signo, const char *why)
{
    sess_t *s = ctx;
    gateway_t *gw = s->gw;
    s->agent = NULL;
    s->awaiting_permission = false;
    gw->nagents--;
    gw_user_t *u = gw_user(gw, s->owner);
    if (u) u->agents--;
    sess_after_stop_t after = s->after_stop;
    s->after_stop = AFTER_STOP_NONE;
    char msg[512];
    if (after == AFTER_STOP_NONE) {
        if (signo) snprintf(msg, sizeof(msg), "agent killed by signal %d%s%s", signo,
                            why ? ": " : "", why ? why : "");
        else snprintf(msg, sizeof(msg), "agent exited with status %d%s%s", status,
                      why ? ": " : "", why ? why : "");
        log_warn("session %s: %s", s->id, msg);
        end_turn(s, AEP_WORKER_CRASH, msg);
        if (s->state != SESS_DELETED) set_state(s, SESS_TERMINATED, msg, false);
        /* Inputs queued behind the crashed turn still get answers: resume the
         * agent for them. Each crash ends (and consumes) one turn, so this
         * cannot loop once the queue is empty. */
        if (s->inq_head && s->state != SESS_DELETED && !gw->shutting_down) restart_for_queue(s);
    } else {
        snprintf(msg, sizeof(msg), "turn ended: %s", s->stop_reason ? s->stop_reason : "stopped");
        end_turn(s, AEP_SESSION_TERMINATED, msg);
        if (after == AFTER_STOP_TERMINATE) {
            set_state(s, SESS_TERMINATED, s->stop_reason, false);
            /* inputs that arrived while the agent was stopping: the user
             * still wants them answered, so resume */
            if (s->inq_head && !gw->shutting_down) restart_for_queue(s);
        } else if (after == AFTER_STOP_RESET) {
            char e[256];
            uuid_v4(s->agent_sid);
            s->agent_started = false;
            if (start_agent(s, s->stop_reason, true, e, sizeof(e)) != AEP_OK) {
                sess_emit_error(s, AEP_WORKER_UNAVAILABLE, e);
                set_state(s, SESS_TERMINATED, e, false);
            } else {
                dispatch_next(s);
            }
        }
    }
    if (gw->shutting_down && gw->nagents == 0 && gw->on_idle_shutdown) gw->on_idle_shutdown(gw);
}

static aep_code_t start_agent(sess_t *s, const char *reason, bool force_event, char *err,
                              size_t cap)
{
    gateway_t *gw = s->gw;
    if (!s->ops) {
        snprintf(err, cap, "worker type %s is not available", s->worker_type);
        return AEP_WORKER_UNAVAILABLE;
    }
    if (gw->nagents >= gw->cfg->max_agents) {
        snprintf(err, cap, "agent limit reached (worker.max_agents=%d)", gw->cfg->max_agents);
        return AEP_GATEWAY_OVERLOAD;
    }
    gw_user_t *u = gw_user(gw, s->owner);
    if (!u) {
        snprintf(err, cap, "out of memory");
        return AEP_INTERNAL_ERROR;
    }
    if (gw->cfg->max_agents_per_user > 0 && u->agents >= gw->cfg->max_agents_per_user) {
        snprintf(err, cap, "per-user agent limit reached (worker.max_agents_per_user=%d)",
                 gw->cfg->max_agents_per_user);
        return AEP_GATEWAY_OVERLOAD;
    }
    wkr_spec_t spec = {
        .session_id = s->agent_sid,
        .worker_type = s->worker_type,
        .work_dir = s->work_dir,
        .resume = s->agent_started,
        .model = s->model[0] ? s->model : NULL,
        .permission_mode = s->permission_mode[0] ? s->permission_mode : NULL,
        .system_prompt = s->system_prompt,
        .allowed_tools = s->allowed_tools[0] ? s->allowed_tools : NULL,
        .disallowed_tools = s->disallowed_tools[0] ? s->disallowed_tools : NULL,
        .max_turns = s->max_turns,
        .cfg = gw->cfg,
    };
    s->sink = (wkr_sink_t){.ctx = s, .event = sink_event, .info = sink_info, .exit = sink_exit};
    err[0] = '\0';
    s->agent_t0_ns = clock_mono_ns();
    int rc = s->ops->start(&s->agent, gw->loop, &spec, &s->sink, err, cap);
    if (rc < 0) {
        s->agent = NULL;
        s->agent_t0_ns = 0;
        if (!err[0]) snprintf(err, cap, "agent failed to start: %s", strerror(-rc));
        log_warn("session %s: %s", s->id, err);
        return AEP_WORKER_UNAVAILABLE;
    }
    gw->nagents++;
    u->agents++;
    s->paused = false;
    s->agent_started_ms = s->last_output_ms = s->last_activity_ms = clock_unix_ms();
    set_state(s, SESS_RUNNING, reason, force_event);
    return AEP_OK;
}

aep_code_t sess_ensure_agent(sess_t *s, char *err, size_t cap)
{
    if (s->agent) return AEP_OK;
    if (s->state == SESS_DELETED) {
        snprintf(err, cap, "session deleted");
        return AEP_SESSION_NOT_FOUND;
    }
    aep_code_t rc = start_agent(s, s->agent_started ? "resumed" : NULL, false, err, cap);
    if (rc == AEP_OK) dispatch_next(s); /* inputs left from before a crash */
    return rc;
}

aep_code_t sess_input(sess_t *s, const char *content, size_t len, char *err, size_t cap)
{
    if (s->inq_len >= s->gw->cfg->max_queued_inputs) {
        snprintf(err, cap, "too many queued inputs (session.max_queued_inputs=%d)",
                 s->gw->cfg->max_queued_inputs);
        return AEP_SESSION_BUSY;
    }
    sess_input_t *in = malloc(sizeof(*in) + len + 1);
    if (!in) {
        snprintf(err, cap, "out of memory");
        return AEP_INTERNAL_ERROR;
    }
    s->last_activity_ms = clock_unix_ms();
    in->next = NULL;
    in->len = len;
    memcpy(in->content, content, len);
    in->content[len] = '\0';
    if (!s->agent && s->after_stop == AFTER_STOP_NONE) {
        aep_code_t rc = sess_ensure_agent(s, err, cap);
        if (rc != AEP_OK) {
            free(in);
            return rc;
        }
    }
    if (s->inq_tail) s->inq_tail->next = in;
    else s->inq_head = in;
    s->inq_tail = in;
    s->inq_len++;
    dispatch_next(s);
    return AEP_OK;
}

aep_code_t sess_permission(sess_t *s, const char *req_id, bool allow, const char *reason,
                           const char *updated, size_t updated_len, char *err, size_t cap)
{
    if (!s->agent) {
        snprintf(err, cap, "no agent is running for this session");
        return AEP_SESSION_TERMINATED;
    }
    int rc = s->ops->permission(s->agent, req_id, allow, reason, updated, updated_len);
    if (rc == 0) s->awaiting_permission = false;
    if (rc == -ENOENT) {
        snprintf(err, cap, "unknown permission request id: %s", req_id);
        return AEP_INVALID_MESSAGE;
    }
    if (rc < 0) {
        snprintf(err, cap, "agent did not take the answer");
        return AEP_INTERNAL_ERROR;
    }
    return AEP_OK;
}

void sess_stop_agent(sess_t *s, sess_after_stop_t after, const char *reason)
{
    if (!s->agent) return;
    if (s->after_stop == AFTER_STOP_NONE || after == AFTER_STOP_DELETE) s->after_stop = after;
    s->stop_reason = reason;
    s->ops->stop(s->agent);
}

static void sess_delete(sess_t *s)
{
    gateway_t *gw = s->gw;
    inq_clear(s);
    if (s->agent) sess_stop_agent(s, AFTER_STOP_DELETE, "deleted");
    s->turn_active = false;
    set_state(s, SESS_DELETED, "deleted by client", false);
    /* Terminal: attached clients get everything up to the deleted event
     * without waiting for the store (which is about to drop the history),
     * then their connections close. */
    s->stream.durable = s->stream.seq;
    for (client_t *c = s->clients; c; c = c->s_next) client_close_after(c, 1000, "session deleted", s->stream.seq);
    store_session_delete(gw->store, s->id);
    sess_save(s); /* keep a tombstone row: the id is never reused */
    gw_user_t *u = gw_user(gw, s->owner);
    if (u) u->sessions--;
}

void sess_recover(sess_t *s)
{
    /* No agent survives a gateway restart. A turn that was running when the
     * previous gateway died ends here, visibly, and a live session becomes
     * terminated (resumable) with one state event, as on any other stop. */
    if (s->turn_active) end_turn(s, AEP_WORKER_CRASH, "the gateway stopped during the turn");
    if (s->state == SESS_RUNNING || s->state == SESS_IDLE)
        set_state(s, SESS_TERMINATED, "gateway restarted", false);
}

bool sess_cron(sess_t *s, int64_t now)
{
    const hp_config_t *cfg = s->gw->cfg;
    char why[96];
    if (s->agent && s->after_stop == AFTER_STOP_NONE) {
        if (cfg->idle_timeout_ms && !s->turn_active && !s->inq_head &&
            now - s->last_activity_ms > cfg->idle_timeout_ms) {
            snprintf(why, sizeof(why), "idle timeout (%lld ms)", (long long)cfg->idle_timeout_ms);
        } else if (cfg->max_lifetime_ms && now - s->agent_started_ms > cfg->max_lifetime_ms) {
            snprintf(why, sizeof(why), "max lifetime (%lld ms)", (long long)cfg->max_lifetime_ms);
        } else if (cfg->zombie_timeout_ms && s->turn_active && !s->awaiting_permission &&
                   now - s->last_output_ms > cfg->zombie_timeout_ms) {
            snprintf(why, sizeof(why), "zombie: no agent output for %lld ms",
                     (long long)cfg->zombie_timeout_ms);
        } else {
            return false;
        }
        /* the reason must outlive this call: the stop completes later */
        snprintf(s->stop_reason_buf, sizeof(s->stop_reason_buf), "%s", why);
        log_info("session %s: stopping agent: %s", s->id, why);
        sess_stop_agent(s, AFTER_STOP_TERMINATE, s->stop_reason_buf);
        return false;
    }
    /* Deleted sessions keep their tombstone (their events are gone already):
     * purging it would let the key derive the deleted id again. */
    if (cfg->retention_ms && !s->agent && !s->clients && s->state == SESS_TERMINATED &&
        now - s->updated_ms > cfg->retention_ms) {
        log_info("session %s: retention expired, purging", s->id);
        gw_user_t *u = gw_user(s->gw, s->owner);
        if (u) u->sessions--;
        store_session_delete(s->gw->store, s->id);
        hmap_del(&s->gw->sessions, s->id);
        sess_free(s);
        return true;
    }
    return false;
}

aep_code_t sess_cd(sess_t *s, const char *path, char *err, size_t cap)
{
    char dir[1024];
    const char *why;
    if (policy_work_dir(s->gw->cfg, path, dir, sizeof(dir), &why) < 0) {
        snprintf(err, cap, "%s: %.200s", why, path);
        return AEP_CONFIG_INVALID;
    }
    if (strcmp(dir, s->work_dir) == 0) return AEP_OK;
    SET(s->work_dir, dir, 1024);
    /* Claude Code keeps transcripts per directory: the agent restarts in the
     * new directory with a fresh context. */
    snprintf(s->stop_reason_buf, sizeof(s->stop_reason_buf), "work_dir %.80s", dir);
    log_info("session %s: cd %s", s->id, dir);
    if (s->agent) {
        sess_stop_agent(s, AFTER_STOP_RESET, s->stop_reason_buf);
        sess_save(s);
        return AEP_OK;
    }
    uuid_v4(s->agent_sid);
    s->agent_started = false;
    return start_agent(s, s->stop_reason_buf, true, err, cap);
}

aep_code_t sess_control(sess_t *s, const char *action, char *err, size_t cap)
{
    if (strcmp(action, "interrupt") == 0) {
        if (s->turn_active && s->agent) {
            s->turn_interrupted = true;
            if (s->ops->interrupt(s->agent) < 0) {
                snprintf(err, cap, "agent could not be interrupted");
                return AEP_INTERNAL_ERROR;
            }
        }
        return AEP_OK;
    }
    if (strcmp(action, "terminate") == 0 || strcmp(action, "gc") == 0) {
        const char *why = action[0] == 't' ? "terminated by client" : "gc";
        if (s->agent) sess_stop_agent(s, AFTER_STOP_TERMINATE, why);
        else set_state(s, SESS_TERMINATED, why, false);
        return AEP_OK;
    }
    if (strcmp(action, "reset") == 0) {
        if (s->agent) {
            sess_stop_agent(s, AFTER_STOP_RESET, "context_reset");
            return AEP_OK;
        }
        uuid_v4(s->agent_sid);
        s->agent_started = false;
        return start_agent(s, "context_reset", true, err, cap);
    }
    if (strcmp(action, "delete") == 0) {
        sess_delete(s);
        return AEP_OK;
    }
    snprintf(err, cap, "unknown control action: %.64s", action);
    return AEP_PROTOCOL_VIOLATION;
}
