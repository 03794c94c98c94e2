/*
 * gateway.c - see gateway.h. The cron runs every 100 ms on the loop (Redis's
 * serverCron in spirit): connection deadlines now, lifecycle timers later.
 */
#include "core/gateway.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/client.h"
#include "core/session.h"
#include "util/clock.h"
#include "util/log.h"
#include "worker/proc.h"

#define CRON_MS 100

static void on_durable(void *ctx, const char *sid, int64_t seq)
{
    gateway_t *gw = ctx;
    sess_t *s = sess_find(gw, sid);
    if (s) sess_on_durable(s, seq);
}

static void on_stored(void *ctx, const char *sid, int64_t seq)
{
    gateway_t *gw = ctx;
    sess_t *s = sess_find(gw, sid);
    if (s) sess_on_stored(s, seq);
}

static void on_loaded(void *arg, const store_session_t *row)
{
    gateway_t *gw = arg;
    sess_t *s = sess_restore(gw, row);
    if (!s) log_error("out of memory restoring session %s", row->id);
}

static void on_cron(uv_timer_t *t)
{
    gateway_t *gw = t->data;
    int64_t now = clock_unix_ms();
    for (client_t *c = gw->clients, *n; c; c = n) {
        n = c->gw_next;
        client_cron(c, now);
    }
    /* session timers need no more than one-second resolution */
    if (++gw->cron_ticks % (1000 / CRON_MS) == 0 && !gw->shutting_down)
        for (hmap_iter_t it = {0}; hmap_next(&gw->sessions, &it);) sess_cron(it.value, now);
}

gw_user_t *gw_user(gateway_t *gw, const char *name)
{
    gw_user_t *u = hmap_get(&gw->users, name);
    if (u) return u;
    u = calloc(1, sizeof(*u));
    if (!u) return NULL;
    snprintf(u->name, sizeof(u->name), "%s", name);
    if (hmap_put(&gw->users, u->name, u) < 0) {
        free(u);
        return NULL;
    }
    return u;
}

int gw_apply_limits(gateway_t *gw)
{
    const hp_config_t *cfg = gw->cfg;
    /* a block of 0 ms means failures are counted but nobody is blocked */
    ratelimit_t *fails = rl_new_failures((unsigned)cfg->auth_max_failures, 60000,
                                         cfg->auth_block_ms > 0 ? (uint64_t)cfg->auth_block_ms : 1,
                                         65536);
    ratelimit_t *inputs = rl_new(cfg->input_rate, cfg->input_rate * 2.0, 65536);
    if (!fails || !inputs) {
        rl_free(fails);
        rl_free(inputs);
        return -1;
    }
    rl_free(gw->auth_failures);
    rl_free(gw->input_rate);
    gw->auth_failures = fails;
    gw->input_rate = inputs;
    return 0;
}

int gw_init(gateway_t *gw, hp_config_t *cfg, uv_loop_t *loop, char *err, size_t cap)
{
    memset(gw, 0, sizeof(*gw));
    gw->cfg = cfg;
    gw->loop = loop;
    gw->started_ms = clock_unix_ms();
    hmap_init(&gw->sessions);
    hmap_init(&gw->users);
    if (mkdir(cfg->data_dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, cap, "cannot create data dir %s: %s", cfg->data_dir, strerror(errno));
        return -1;
    }
    char path[1100];
    /* Agents left running by a gateway that crashed: kill them before
     * anything else (their sessions resume from the store). */
    snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, PROC_PID_DIR_NAME);
    int reaped = proc_reap_orphans(path);
    if (reaped > 0) log_warn("killed %d orphaned agent(s) left by a previous run", reaped);
    snprintf(path, sizeof(path), "%s/hotplex.db", cfg->data_dir);
    const store_hooks_t hooks = {.on_durable = on_durable, .on_stored = on_stored, .ctx = gw};
    if (store_open(&gw->store, loop, path, &hooks, err, cap) < 0) return -1;
    if (store_load_sessions(gw->store, on_loaded, gw) < 0) {
        snprintf(err, cap, "cannot load sessions from %s", path);
        return -1;
    }
    for (hmap_iter_t it = {0}; hmap_next(&gw->sessions, &it);) sess_recover(it.value);
    if (gw_apply_limits(gw) < 0) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    uv_timer_init(loop, &gw->cron);
    gw->cron.data = gw;
    uv_timer_start(&gw->cron, on_cron, CRON_MS, CRON_MS);
    return 0;
}

/* Most frequent first: the lookup runs once per committed event. */
const char *const gw_event_type_names[GW_EVT_TYPES] = {
    "message.delta", "message.start", "message.end", "message",           "reasoning",
    "tool_call",     "tool_result",   "state",       "done",              "error",
    "permission_request", "question_request", "elicitation_request", "control", "other",
};

int gw_event_type_index(const char *type)
{
    for (int i = 0; i < GW_EVT_TYPES - 1; i++)
        if (strcmp(type, gw_event_type_names[i]) == 0) return i;
    return GW_EVT_TYPES - 1;
}

int gw_session_count(const gateway_t *gw)
{
    int n = 0;
    for (hmap_iter_t it = {0}; hmap_next(&gw->sessions, &it);)
        if (((sess_t *)it.value)->state != SESS_DELETED) n++;
    return n;
}

void gw_shutdown_begin(gateway_t *gw)
{
    if (gw->shutting_down) return;
    gw->shutting_down = true;
    log_info("shutting down: %d connections, %d agents", gw->nclients, gw->nagents);
    for (client_t *c = gw->clients; c; c = c->gw_next) client_close(c, 1001, "gateway shutting down");
    for (hmap_iter_t it = {0}; hmap_next(&gw->sessions, &it);) {
        sess_t *s = it.value;
        if (s->agent) sess_stop_agent(s, AFTER_STOP_TERMINATE, "gateway shutdown");
    }
}

static void on_cron_closed(uv_handle_t *h)
{
    (void)h;
}

void gw_free(gateway_t *gw)
{
    /* safe after a partial gw_init: only what was set up is torn down */
    if (gw->cron.loop) uv_close((uv_handle_t *)&gw->cron, on_cron_closed);
    if (gw->store) store_close(gw->store);
    gw->store = NULL;
    for (hmap_iter_t it = {0}; hmap_next(&gw->sessions, &it);) sess_free(it.value);
    hmap_free(&gw->sessions);
    for (hmap_iter_t it = {0}; hmap_next(&gw->users, &it);) free(it.value);
    hmap_free(&gw->users);
    rl_free(gw->auth_failures);
    rl_free(gw->input_rate);
    gw->auth_failures = gw->input_rate = NULL;
}
