/*
 * admin.h - the operator's HTTP API on its own listener (admin.listen,
 * default 127.0.0.1:9999): health and readiness, statistics, sessions
 * (list, detail, events, terminate, delete), the effective configuration,
 * reload, and Prometheus metrics at /metrics. docs/operations.md is the
 * reference of every route.
 *
 * It is a second libwebsockets vhost in the public server's lws context, so
 * it runs on the gateway's loop thread and reads the gateway's state
 * directly, like every other module on that thread.
 *
 * Auth: bearer tokens from admin.tokens_file with scopes read / write
 * (admin/tokens.h). With no tokens file the API is open, and then only on a
 * loopback address: admin_start refuses anything else.
 */
#ifndef HOTPLEX_ADMIN_H
#define HOTPLEX_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include "core/gateway.h"

struct lws_context;

#define ADMIN_MAX_BODY (64 * 1024) /* request bodies above this: 413 */
#define ADMIN_RATE_PER_S 50        /* requests per second per client address */
#define ADMIN_RATE_BURST 100       /* ... in bursts of up to this many */
#define ADMIN_PAGE_DEFAULT 50      /* GET /admin/sessions page size */
#define ADMIN_PAGE_MAX 1000

typedef struct admin admin_t;

/* Loads the tokens, then listens on gw->cfg's admin.listen as a vhost of
 * ctx. NULL with a message in err: bad tokens file, open API on a
 * non-loopback address, address in use. */
admin_t *admin_start(gateway_t *gw, struct lws_context *ctx, char *err, size_t cap);
/* The bound port (the real one when admin.listen asked for port 0). */
int admin_port(const admin_t *a);
/* Re-reads the tokens file named by cfg (the configuration about to be
 * applied). 0, or -1 with a message in err and the old tokens kept. */
int admin_reload(admin_t *a, const hp_config_t *cfg, char *err, size_t cap);
/* Frees the admin state. Call after the lws context was destroyed. */
void admin_free(admin_t *a);

/* 127.0.0.0/8, ::1 or localhost. */
bool admin_is_loopback(const char *host);

#endif
