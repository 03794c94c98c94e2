/*
 * client.h - one WebSocket connection as the AEP layer sees it: handshake
 * state, identity, its reply queue, and its cursor in the session stream.
 *
 * The transport (net/) owns the socket and calls in: client_on_message for
 * every complete inbound message, client_next_frame when the socket can take
 * more, client_on_close when it is gone. The client calls out through the
 * transport hooks to ask for a writable callback or a close.
 */
#ifndef HOTPLEX_CLIENT_H
#define HOTPLEX_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/frame.h"
#include "core/gateway.h"

struct sess;

typedef struct client_transport {
    void (*wake)(void *t);                                       /* ask for a writable callback */
    void (*close)(void *t, int code, const char *reason); /* close now (after pending writes) */
} client_transport_t;

typedef enum client_phase {
    CLIENT_AWAIT_INIT = 0,
    CLIENT_ATTACHED,
    CLIENT_CLOSING, /* flushing replies, then closing with close_code */
} client_phase_t;

typedef struct client {
    gateway_t *gw;
    const client_transport_t *tp;
    void *tp_ctx;
    struct client *gw_next, *gw_prev;     /* gateway's list */
    struct client *s_next, *s_prev;       /* session's list */
    struct sess *sess;
    client_phase_t phase;
    char user[128];                       /* "" until init authenticates it */
    char bot_id[128];
    char provisional_id[37];
    char peer[64];
    int64_t connected_ms;
    uint64_t connected_ns;                /* monotonic, for the init latency metric */
    int64_t init_deadline_ms;
    int64_t last_rx_ms;

    /* output */
    frame_t *replies_head, *replies_tail; /* connection-only messages, sent first */
    frame_t *replay_head, *replay_tail;   /* events read back from the store */
    frame_t *sent_private;                /* last handed-out owned frame, freed next call */
    int64_t next_seq;                     /* next stream seq this connection needs */
    int64_t last_sent;                    /* last stream seq sent (reply envelopes carry it) */
    bool choked;                          /* the socket could not take more (transport says) */
    uint64_t mark_bytes;                  /* stream offset this connection is accounted up to:
                                             its attach point, then each event sent */
    int64_t attach_seq;                   /* stream head when it attached */
    bool reading;                         /* a store read is in flight */
    bool closed;                          /* transport gone; freed when no read is in flight */
    int64_t close_flush_seq;              /* while closing: stream events still to send */
    int close_code;
    char close_reason[64];
} client_t;

client_t *client_new(gateway_t *gw, const client_transport_t *tp, void *tp_ctx, const char *peer,
                     const char *user);
/* One complete inbound message (text or binary). */
void client_on_message(client_t *c, const char *buf, size_t len);
/* Next frame to write: 1 and json, len set (valid until the next call),
 * 0 nothing to write now, -1 close now (close_code and close_reason set). */
int client_next_frame(client_t *c, char **json, size_t *len);
/* Transport gone: detach and free (deferred while a store read is in flight). */
void client_on_close(client_t *c);

/* Close after flushing queued replies. */
void client_close(client_t *c, int code, const char *reason);
/* Close after flushing queued replies and the stream up to flush_seq. */
void client_close_after(client_t *c, int code, const char *reason, int64_t flush_seq);
/* Queue a connection-only reply (error, pong, control). */
void client_reply(client_t *c, const char *type, const char *data, size_t len);
void client_reply_error(client_t *c, int code, const char *message);
/* New stream events may be available. */
void client_wake(client_t *c);
/* The transport's socket is full (or took data again). A full socket while
 * more than session.out_hard_limit bytes committed since the connection's
 * mark wait for it closes the connection with 1013 (history it asked for with
 * last_seq does not count). */
void client_set_choked(client_t *c, bool choked);
void client_check_backlog(client_t *c);
/* Periodic check (init deadline). */
void client_cron(client_t *c, int64_t now_ms);

#endif
