/*
 * ws.h - a small RFC 6455 WebSocket client for the CLI (one connection, no
 * extensions), over cli_conn (so ws:// and wss://).
 *
 * Owns: the opening handshake (key, Sec-WebSocket-Accept check), masking of
 * outbound frames, reassembly of fragmented inbound messages, answering
 * pings, and the closing handshake.
 * Must never: deliver a partial message, or block in a read (reads take what
 * the socket has; the caller polls cli_ws_fd).
 */
#ifndef HOTPLEX_CLI_WS_H
#define HOTPLEX_CLI_WS_H

#include <stdbool.h>
#include <stddef.h>

#include "cli/net.h"
#include "util/buf.h"

#define CLI_WS_MAX_MESSAGE (256u * 1024 * 1024)

typedef struct cli_ws {
    cli_conn_t *conn;
    buf_t in;  /* raw bytes not yet parsed */
    buf_t msg; /* message being reassembled / last message returned */
    int msg_op;
    size_t consumed; /* bytes of `in` used by the message last returned */
    bool close_sent, closed;
    int close_code; /* 1005 when the close frame had none, 1006 no close frame */
    char close_reason[128];
    int http_status; /* status of a refused upgrade, else 0 */
} cli_ws_t;

/* Connects and upgrades. extra_headers: "Name: value" lines, NULL-ended (may
 * be NULL). Call cli_ws_free afterwards, also when this fails. 0, or a negative errno with a
 * message: -EACCES when the server answered with an HTTP status instead of 101 (ws->http_status
 * says which; err carries the status and the JSON error message when there is one). */
int cli_ws_connect(cli_ws_t *ws, const cli_url_t *u, const char *const *extra_headers,
                   const cli_tls_opts_t *tls, int timeout_ms, char *err, size_t cap);
int cli_ws_fd(const cli_ws_t *ws);
/* True if a read may return a message without waiting for the socket. */
bool cli_ws_ready(const cli_ws_t *ws);
/* Next complete text or binary message: 1 (*msg and *len valid until the next
 * call), 0 none yet (poll the fd), -1 the connection is closed (close_code,
 * close_reason). Pings are answered and close frames acknowledged here. */
int cli_ws_read(cli_ws_t *ws, const char **msg, size_t *len);
int cli_ws_send_text(cli_ws_t *ws, const char *p, size_t n);
/* Sends a close frame (once) and waits up to timeout_ms for the server's close. */
void cli_ws_close(cli_ws_t *ws, int code, const char *reason, int timeout_ms);
/* Releases everything (no close handshake). */
void cli_ws_free(cli_ws_t *ws);

#endif
