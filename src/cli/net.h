/*
 * net.h - the client side of the network for the CLI commands: URLs, one
 * TCP (optionally TLS) connection, and a tiny HTTP/1.1 client on top.
 *
 * Owns: name resolution, connect with a deadline, TLS (OpenSSL: system CAs or
 * a given CA file, SNI and host name checks, or no checks with `insecure`),
 * non-blocking reads and blocking writes on the connection.
 * Must never: block without a deadline (every wait takes a timeout), raise
 * SIGPIPE (sends use MSG_NOSIGNAL; TLS callers ignore SIGPIPE), or print
 * anything: errors go back as text in err.
 *
 * Errors: 0 / a positive count, or a negative errno with a message in err.
 */
#ifndef HOTPLEX_CLI_NET_H
#define HOTPLEX_CLI_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "util/buf.h"

typedef struct cli_url {
    char scheme[8]; /* ws, wss, http, https */
    bool tls;
    char host[256]; /* without brackets for IPv6 literals */
    int port;
    char path[2048]; /* starts with '/', query included */
} cli_url_t;

/* Parses "scheme://host[:port][/path[?query]]" with scheme ws, wss, http or
 * https (default ports 80/443). 0 or -EINVAL with a message. */
int cli_url_parse(const char *text, cli_url_t *u, char *err, size_t cap);

typedef struct cli_tls_opts {
    const char *ca_file; /* PEM CA bundle; NULL: the system's */
    bool insecure;       /* skip certificate and host name checks */
} cli_tls_opts_t;

typedef struct cli_conn cli_conn_t;

/* Connects to host:port within timeout_ms (TLS handshake included when tls).
 * The socket is non-blocking afterwards. */
int cli_conn_open(cli_conn_t **out, const char *host, int port, bool tls, const cli_tls_opts_t *o,
                  int timeout_ms, char *err, size_t cap);
void cli_conn_close(cli_conn_t *c);
int cli_conn_fd(const cli_conn_t *c);
/* Bytes already decrypted and waiting (poll() would not show them). */
bool cli_conn_pending(const cli_conn_t *c);
/* Reads what is there: > 0 bytes, 0 end of stream, -EAGAIN nothing yet,
 * other negative errno on error. */
ssize_t cli_conn_read(cli_conn_t *c, void *p, size_t n);
/* Writes everything, waiting for room at most timeout_ms in total. */
int cli_conn_write(cli_conn_t *c, const void *p, size_t n, int timeout_ms);
/* Waits until the connection is readable (or has pending bytes). 1 readable,
 * 0 timeout, -errno (-EINTR on a signal). */
int cli_conn_wait(cli_conn_t *c, int timeout_ms);

/* ---- HTTP/1.1 -------------------------------------------------------- */

typedef struct cli_http_resp {
    int status;
    char reason[64];
    char content_type[128];
    buf_t body;
} cli_http_resp_t;

/* One request on its own connection (Connection: close). `target` is the
 * path with query; headers are complete "Name: value" lines (NULL-ended
 * array, may be NULL). The response body is de-chunked. 0 with resp filled
 * (any status), or a negative errno with a message (connection, timeout,
 * malformed response). resp->body must be freed with buf_free. */
int cli_http_request(const cli_url_t *base, const char *method, const char *target,
                     const char *const *headers, const char *body, size_t blen,
                     const cli_tls_opts_t *tls, int timeout_ms, cli_http_resp_t *resp, char *err,
                     size_t cap);

/* Percent-encodes s for a path segment or query value into b (unreserved
 * characters kept). */
int cli_url_escape(buf_t *b, const char *s);

/* Monotonic milliseconds. */
int64_t cli_now_ms(void);

#endif
