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

#include "admin/histogram.h"
#include "aep/aep.h"
#include "auth/auth.h"
#include "auth/ratelimit.h"
#include "store/store.h"
#include "util/config.h"
#include "util/hmap.h"

struct client;
struct sess;

/* Stream event types counted one by one (metrics); the last entry, "other",
 * counts every type not in the table. */
#define GW_EVT_TYPES 15
extern const char *const gw_event_type_names[GW_EVT_TYPES];
int gw_event_type_index(const char *type); /* GW_EVT_TYPES - 1 if unknown */

/* Counters for metrics: plain adds on the loop thread (admin/metrics.c). */
typedef struct gw_counters {
    uint64_t conns_total, frames_in, frames_out, bytes_out, events_committed;
    uint64_t init_ok, init_failed, slow_closes, merged_deltas;
    uint64_t auth_failed, rate_limited;
    uint64_t events_by_type[GW_EVT_TYPES]; /* committed, by gw_event_type_index */
    uint64_t errors[AEP_CODE_COUNT];       /* error events and replies sent, by code */
    uint64_t admin_auth_failed, admin_rate_limited;
    hist_t init_latency;  /* connection open -> init_ack queued */
    hist_t agent_start;   /* agent start (or its first input) -> its first output */
    hist_t event_latency; /* commit -> frame written to a socket */
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
    /* Reload the configuration and credentials (SIGHUP, POST /admin/reload):
     * the number of settings that changed, or -1 with a message in err (the
     * running configuration then stays). Set by main.c; NULL: not available. */
    int (*reload)(struct gateway *gw, char *err, size_t cap);
} gateway_t;

int gw_init(gateway_t *gw, hp_config_t *cfg, uv_loop_t *loop, char *err, size_t cap);
/* Begin shutdown: close clients (1001), stop agents. */
void gw_shutdown_begin(gateway_t *gw);
/* Release everything (store closed, sessions freed). Loop must run after. */
void gw_free(gateway_t *gw);

int gw_session_count(const gateway_t *gw); /* not deleted */
/* (Re)build the throttles from the configuration (start-up and reload). */
int gw_apply_limits(gateway_t *gw);
gw_user_t *gw_user(gateway_t *gw, const char *name); /* created on first use; NULL on ENOMEM */

#endif
