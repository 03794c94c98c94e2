/*
 * gateway.h - the process-wide state the event loop owns: configuration,
 * the session registry, live connections, the store, counters, the cron
 * timer. Exactly one thread (the loop's) touches any of it.
 */
#ifndef HOTPLEX_GATEWAY_H
#define HOTPLEX_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "auth/auth.h"
#include "auth/ratelimit.h"
#include "store/store.h"
#include "util/config.h"
#include "util/hmap.h"

struct client;
struct sess;

typedef struct gw_counters {
    uint64_t conns_total, frames_in, frames_out, bytes_out, events_committed;
    uint64_t init_ok, init_failed, slow_closes, merged_deltas;
    uint64_t auth_failed, rate_limited;
} gw_counters_t;

/* Per-user usage for quotas. */
typedef struct gw_user {
    char name[128];
    int sessions; /* not deleted */
    int agents;   /* live */
} gw_user_t;

typedef struct gateway {
    hp_config_t *cfg;
    uv_loop_t *loop;
    store_t *store;
    auth_t *auth;                /* credentials; dev mode when none are configured */
    ratelimit_t *auth_failures;  /* handshake throttle per client address */
    ratelimit_t *input_rate;     /* inputs per user */
    hmap_t sessions;           /* id -> sess_t (including deleted tombstones) */
    hmap_t users;              /* user -> gw_user_t */
    unsigned cron_ticks;
    struct client *clients;    /* every open WebSocket connection */
    int nclients;
    int nagents;               /* live agents */
    int64_t started_ms;
    uv_timer_t cron;
    bool shutting_down;
    gw_counters_t ctr;
    void (*on_idle_shutdown)(struct gateway *gw); /* all agents gone during shutdown */
} gateway_t;

int gw_init(gateway_t *gw, hp_config_t *cfg, uv_loop_t *loop, char *err, size_t cap);
/* Begin shutdown: close clients (1001), stop agents. */
void gw_shutdown_begin(gateway_t *gw);
/* Release everything (store closed, sessions freed). Loop must run after. */
void gw_free(gateway_t *gw);

int gw_session_count(const gateway_t *gw); /* not deleted */
gw_user_t *gw_user(gateway_t *gw, const char *name); /* created on first use; NULL on ENOMEM */

#endif
