/*
 * server.h - the listening socket: libwebsockets on the gateway's libuv
 * loop, serving the AEP WebSocket at /ws and plain HTTP routes (/health) on
 * one port.
 */
#ifndef HOTPLEX_SERVER_H
#define HOTPLEX_SERVER_H

#include "core/gateway.h"

typedef struct server server_t;

/* Start listening. Returns NULL with a message in err on failure. */
server_t *server_start(gateway_t *gw, char *err, size_t cap);
int server_port(const server_t *srv);
/* The lws context, for other listeners on the same loop (admin/admin.c adds
 * its vhost to it). */
struct lws_context;
struct lws_context *server_lws_context(const server_t *srv);
/* Destroy the lws context (the loop must run afterwards to close handles). */
void server_stop(server_t *srv);

#endif
