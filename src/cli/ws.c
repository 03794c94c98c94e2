/*
 * ws.c - see ws.h. Inbound bytes collect in ws->in; whole frames are taken
 * off its front one at a time; data frames are joined into ws->msg until FIN.
 */
#include "cli/ws.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/json.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_WRITE_TIMEOUT_MS 10000

enum { OP_CONT = 0, OP_TEXT = 1, OP_BIN = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };

static int send_frame(cli_ws_t *ws, int op, const void *p, size_t n)
{
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = (unsigned char)(0x80 | op);
    if (n < 126) {
        hdr[h++] = (unsigned char)(0x80 | n);
    } else if (n <= 0xffff) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (unsigned char)(n >> 8);
        hdr[h++] = (unsigned char)n;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    unsigned char mask[4];
    if (RAND_bytes(mask, 4) != 1) return -EIO;
    memcpy(hdr + h, mask, 4);
    h += 4;
    unsigned char *f = malloc(h + n);
    if (!f) return -ENOMEM;
    memcpy(f, hdr, h);
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        f[h + i] = s[i] ^ mask[i & 3];
    int rc = cli_conn_write(ws->conn, f, h + n, WS_WRITE_TIMEOUT_MS);
    free(f);
    return rc;
}

int cli_ws_send_text(cli_ws_t *ws, const char *p, size_t n)
{
    if (ws->closed || ws->close_sent) return -EPIPE;
    return send_frame(ws, OP_TEXT, p, n);
}

static void send_close(cli_ws_t *ws, int code, const char *reason)
{
    if (ws->close_sent || !ws->conn) return;
    unsigned char b[125];
    size_t n = 0;
    if (code > 0) {
        b[n++] = (unsigned char)(code >> 8);
        b[n++] = (unsigned char)code;
        size_t rl = reason ? strlen(reason) : 0;
        if (rl > sizeof(b) - 2) rl = sizeof(b) - 2;
        memcpy(b + n, reason, rl);
        n += rl;
    }
    ws->close_sent = true;
    send_frame(ws, OP_CLOSE, b, n);
}

/* Takes one frame off ws->in. 1 a message is complete, 0 need more bytes
 * (or a control frame was handled: call again), -1 closed or protocol error. */
static int take_frame(cli_ws_t *ws, bool *progress)
{
    *progress = false;
    const unsigned char *p = (const unsigned char *)ws->in.p;
    size_t have = ws->in.len;
    if (have < 2) return 0;
    bool fin = p[0] & 0x80;
    int op = p[0] & 0x0f;
    bool masked = p[1] & 0x80;
    uint64_t len = p[1] & 0x7f;
    size_t h = 2;
    if (len == 126) {
        if (have < 4) return 0;
        len = (uint64_t)p[2] << 8 | p[3];
        h = 4;
    } else if (len == 127) {
        if (have < 10) return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        h = 10;
    }
    if (len > CLI_WS_MAX_MESSAGE) {
        ws->closed = true;
        ws->close_code = 1009;
        snprintf(ws->close_reason, sizeof(ws->close_reason), "message too big (client)");
        return -1;
    }
    size_t mh = masked ? 4 : 0;
    if (have < h + mh + len) return 0;
    unsigned char *pl = (unsigned char *)ws->in.p + h + mh;
    if (masked)
        for (size_t i = 0; i < len; i++)
            pl[i] ^= p[h + (i & 3)];
    size_t flen = h + mh + (size_t)len;
    int ret = 0;
    *progress = true;
    switch (op) {
    case OP_TEXT:
    case OP_BIN:
    case OP_CONT:
        if (op != OP_CONT) {
            buf_reset(&ws->msg);
            ws->msg_op = op;
        }
        if (ws->msg.len + len > CLI_WS_MAX_MESSAGE || buf_append(&ws->msg, pl, (size_t)len) < 0) {
            ws->closed = true;
            ws->close_code = 1009;
            snprintf(ws->close_reason, sizeof(ws->close_reason), "message too big (client)");
            return -1;
        }
        if (fin) ret = 1;
        break;
    case OP_PING:
        send_frame(ws, OP_PONG, pl, (size_t)len);
        break;
    case OP_PONG:
        break;
    case OP_CLOSE:
        ws->close_code = len >= 2 ? (pl[0] << 8 | pl[1]) : 1005;
        if (len > 2) {
            size_t rl = (size_t)len - 2;
            if (rl >= sizeof(ws->close_reason)) rl = sizeof(ws->close_reason) - 1;
            memcpy(ws->close_reason, pl + 2, rl);
            ws->close_reason[rl] = '\0';
        }
        send_close(ws, ws->close_code == 1005 ? 0 : ws->close_code, "");
        ws->closed = true;
        ret = -1;
        break;
    default:
        ws->closed = true;
        ws->close_code = 1002;
        snprintf(ws->close_reason, sizeof(ws->close_reason), "unknown opcode %d", op);
        ret = -1;
    }
    memmove(ws->in.p, ws->in.p + flen, ws->in.len - flen);
    ws->in.len -= flen;
    ws->in.p[ws->in.len] = '\0';
    return ret;
}

int cli_ws_read(cli_ws_t *ws, const char **msg, size_t *len)
{
    if (ws->closed) return -1;
    for (;;) {
        bool progress;
        int r;
        do
            r = take_frame(ws, &progress);
        while (r == 0 && progress);
        if (r == 1) {
            *msg = ws->msg.p ? ws->msg.p : "";
            *len = ws->msg.len;
            return 1;
        }
        if (r < 0) return -1;
        char tmp[65536];
        ssize_t n = cli_conn_read(ws->conn, tmp, sizeof(tmp));
        if (n == -EAGAIN) return 0;
        if (n <= 0) {
            ws->closed = true;
            ws->close_code = 1006;
            snprintf(ws->close_reason, sizeof(ws->close_reason), "%s",
                     n == 0 ? "connection lost" : strerror((int)-n));
            return -1;
        }
        if (buf_append(&ws->in, tmp, (size_t)n) < 0) {
            ws->closed = true;
            ws->close_code = 1006;
            snprintf(ws->close_reason, sizeof(ws->close_reason), "out of memory");
            return -1;
        }
    }
}

int cli_ws_fd(const cli_ws_t *ws)
{
    return cli_conn_fd(ws->conn);
}

/* A whole frame already read off the socket: poll() cannot see it, and
 * one read often carries several frames (the gateway packs them). */
static bool has_frame(const cli_ws_t *ws)
{
    const unsigned char *p = (const unsigned char *)ws->in.p;
    size_t have = ws->in.len, h = 2;
    if (have < 2) return false;
    uint64_t len = p[1] & 0x7f;
    if (len == 126) {
        if (have < 4) return false;
        len = (uint64_t)p[2] << 8 | p[3];
        h = 4;
    } else if (len == 127) {
        if (have < 10) return false;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        h = 10;
    }
    if (p[1] & 0x80) h += 4;
    /* an oversized length is "ready" too: reading it reports the error */
    return len > CLI_WS_MAX_MESSAGE || (have >= h && have - h >= len);
}

bool cli_ws_ready(const cli_ws_t *ws)
{
    return has_frame(ws) || cli_conn_pending(ws->conn);
}

/* The error text of a refused upgrade: the JSON error message if the body
 * has one ({"error":{"code","message"}}), else the start of the body. */
static void refusal_text(const char *body, size_t n, char *out, size_t cap)
{
    out[0] = '\0';
    json_tok_t t[64];
    json_doc_t d;
    if (n && json_parse(&d, body, n, t, 64) == 0) {
        int e = json_obj_get(&d, 0, "error");
        int code = json_obj_get(&d, e, "code"), msg = json_obj_get(&d, e, "message");
        char c[64] = "", m[256] = "";
        if (code >= 0) json_str_copy(&d, code, c, sizeof(c));
        if (msg >= 0) json_str_copy(&d, msg, m, sizeof(m));
        if (c[0] || m[0]) {
            snprintf(out, cap, "%s%s%s", c, c[0] && m[0] ? ": " : "", m);
            return;
        }
    }
    size_t l = n < cap - 1 ? n : cap - 1;
    if (l > 200) l = 200;
    for (size_t i = 0; i < l; i++)
        out[i] = body[i] >= 32 && body[i] < 127 ? body[i] : ' ';
    out[l] = '\0';
}

int cli_ws_connect(cli_ws_t *ws, const cli_url_t *u, const char *const *extra_headers,
                   const cli_tls_opts_t *tls, int timeout_ms, char *err, size_t cap)
{
    memset(ws, 0, sizeof(*ws));
    buf_init(&ws->in);
    buf_init(&ws->msg);
    ws->close_code = 1006;
    int64_t deadline = cli_now_ms() + timeout_ms;
    int rc = cli_conn_open(&ws->conn, u->host, u->port, u->tls, tls, timeout_ms, err, cap);
    if (rc < 0) return rc;

    unsigned char raw[16], sha[SHA_DIGEST_LENGTH];
    char key[32], accept[64], want[64];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        snprintf(err, cap, "no random bytes for the WebSocket key");
        return -EIO;
    }
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
    char kg[128];
    snprintf(kg, sizeof(kg), "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)kg, strlen(kg), sha);
    EVP_EncodeBlock((unsigned char *)want, sha, SHA_DIGEST_LENGTH);

    buf_t req;
    buf_init(&req);
    bool v6 = strchr(u->host, ':') != NULL;
    buf_printf(&req,
               "GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               "User-Agent: hotplex-cli/%s\r\n",
               u->path, v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, key, HOTPLEX_VERSION);
    for (int i = 0; extra_headers && extra_headers[i]; i++)
        buf_printf(&req, "%s\r\n", extra_headers[i]);
    buf_puts(&req, "\r\n");
    rc = cli_conn_write(ws->conn, req.p, req.len, timeout_ms);
    buf_free(&req);
    if (rc < 0) {
        snprintf(err, cap, "sending the upgrade request: %s", strerror(-rc));
        return rc;
    }
    /* read the response head */
    size_t head = 0;
    for (;;) {
        char tmp[4096];
        ssize_t n = cli_conn_read(ws->conn, tmp, sizeof(tmp));
        if (n == -EAGAIN) {
            int64_t left = deadline - cli_now_ms();
            if (left <= 0 || cli_conn_wait(ws->conn, (int)left) == 0) {
                snprintf(err, cap, "no WebSocket upgrade answer from %s:%d within %d ms", u->host,
                         u->port, timeout_ms);
                return -ETIMEDOUT;
            }
            continue;
        }
        if (n <= 0) {
            if (head == 0 && ws->in.len == 0)
                snprintf(err, cap, "%s:%d closed the connection during the WebSocket upgrade",
                         u->host, u->port);
            else
                snprintf(err, cap, "%s:%d: upgrade answer cut short", u->host, u->port);
            return -ECONNRESET;
        }
        buf_append(&ws->in, tmp, (size_t)n);
        char *e = ws->in.p ? strstr(ws->in.p, "\r\n\r\n") : NULL;
        if (e) {
            head = (size_t)(e - ws->in.p) + 4;
            break;
        }
        if (ws->in.len > 65536) {
            snprintf(err, cap, "%s:%d: upgrade answer too long", u->host, u->port);
            return -EPROTO;
        }
    }
    int status = 0;
    if (sscanf(ws->in.p, "HTTP/1.%*d %d", &status) != 1) {
        snprintf(err, cap, "%s:%d did not answer HTTP", u->host, u->port);
        return -EPROTO;
    }
    if (status != 101) {
        ws->http_status = status;
        /* read a short body if one is announced */
        long clen = 0;
        const char *cl = strcasestr(ws->in.p, "\ncontent-length:");
        if (cl && cl < ws->in.p + head) clen = strtol(cl + 16, NULL, 10);
        if (clen > 4096) clen = 4096;
        while ((long)(ws->in.len - head) < clen) {
            char tmp[4096];
            ssize_t n = cli_conn_read(ws->conn, tmp, sizeof(tmp));
            if (n == -EAGAIN) {
                int64_t left = deadline - cli_now_ms();
                if (left <= 0 || cli_conn_wait(ws->conn, (int)left) == 0) break;
                continue;
            }
            if (n <= 0) break;
            buf_append(&ws->in, tmp, (size_t)n);
        }
        size_t blen = ws->in.len - head;
        if (clen > 0 && (long)blen > clen) blen = (size_t)clen;
        char why[300];
        refusal_text(ws->in.p + head, blen, why, sizeof(why));
        char reason[64] = "";
        sscanf(ws->in.p, "HTTP/1.%*d %*d %63[^\r\n]", reason);
        snprintf(err, cap, "the gateway refused the WebSocket upgrade: HTTP %d %s%s%s", status,
                 reason, why[0] ? ": " : "", why);
        return -EACCES;
    }
    const char *a = strcasestr(ws->in.p, "\nsec-websocket-accept:");
    if (!a || a > ws->in.p + head || sscanf(a + 22, " %63[^\r\n ]", accept) != 1 ||
        strcmp(accept, want) != 0) {
        snprintf(err, cap, "%s:%d: bad Sec-WebSocket-Accept in the upgrade answer", u->host,
                 u->port);
        return -EPROTO;
    }
    memmove(ws->in.p, ws->in.p + head, ws->in.len - head);
    ws->in.len -= head;
    ws->in.p[ws->in.len] = '\0';
    return 0;
}

void cli_ws_close(cli_ws_t *ws, int code, const char *reason, int timeout_ms)
{
    if (!ws->conn || ws->closed) return;
    send_close(ws, code, reason);
    int64_t deadline = cli_now_ms() + timeout_ms;
    for (;;) {
        const char *m;
        size_t n;
        int r = cli_ws_read(ws, &m, &n);
        if (r < 0) break;
        if (r == 1) continue;
        int64_t left = deadline - cli_now_ms();
        if (left <= 0 || cli_conn_wait(ws->conn, (int)left) <= 0) break;
    }
}

void cli_ws_free(cli_ws_t *ws)
{
    cli_conn_close(ws->conn);
    ws->conn = NULL;
    buf_free(&ws->in);
    buf_free(&ws->msg);
}
