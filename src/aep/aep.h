/*
 * aep.h - AEP v1 codec: inbound envelope parsing and validation, init
 * payload extraction, outbound envelope encoding, error codes.
 *
 * Pure: no I/O, no allocation on the hot path beyond the caller's buffers,
 * no knowledge of sessions or sockets. Inbound parsing is lenient where the
 * spec says so ([compat]); outbound envelopes are always complete.
 */
#ifndef HOTPLEX_AEP_H
#define HOTPLEX_AEP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"
#include "util/json.h"

#define AEP_VERSION "aep/v1"
#define AEP_MAX_TOKENS 2048

typedef enum aep_code {
    AEP_OK = 0,
    AEP_INVALID_MESSAGE,
    AEP_PROTOCOL_VIOLATION,
    AEP_VERSION_MISMATCH,
    AEP_CONFIG_INVALID,
    AEP_UNAUTHORIZED,
    AEP_SESSION_NOT_FOUND,
    AEP_SESSION_BUSY,
    AEP_SESSION_TERMINATED,
    AEP_INTERNAL_ERROR,
    AEP_RATE_LIMITED,
    AEP_GATEWAY_OVERLOAD,
    AEP_WORKER_CRASH,
    AEP_WORKER_UNAVAILABLE,
    AEP_TURN_TIMEOUT,
    AEP_CODE_COUNT
} aep_code_t;

const char *aep_code_name(aep_code_t code);

typedef enum aep_in_type {
    AEP_IN_UNKNOWN = 0,
    AEP_IN_INIT,
    AEP_IN_INPUT,
    AEP_IN_PERMISSION_RESPONSE,
    AEP_IN_QUESTION_RESPONSE,
    AEP_IN_ELICITATION_RESPONSE,
    AEP_IN_CONTROL,
    AEP_IN_PING,
    AEP_IN_WORKER_COMMAND,
} aep_in_type_t;

/* A parsed inbound message. Token indexes refer to doc; -1 = absent. */
typedef struct aep_msg {
    json_doc_t doc;
    json_tok_t toks[AEP_MAX_TOKENS];
    aep_in_type_t type;
    int type_tok;       /* event.type string */
    int data;           /* event.data object, or -1 */
    int session_id;     /* envelope session_id string, or -1 */
} aep_msg_t;

/* Parse and validate one inbound message (spec section 2, lenient rules).
 * Returns AEP_OK or AEP_INVALID_MESSAGE with a static reason in *why. */
aep_code_t aep_parse(aep_msg_t *m, const char *buf, size_t len, const char **why);

/* The type name as the client sent it (for "unknown event type: X"). */
int aep_type_name(const aep_msg_t *m, char *out, size_t cap);

/* [compat] The TypeScript SDK sends its init as `control` with data.worker_type. */
bool aep_is_init(const aep_msg_t *m);

/* init.data, extracted and bounded. Strings are NUL-terminated, empty if absent. */
typedef struct aep_init {
    char version[16];
    char worker_type[32];
    char session_key[256];   /* client key: envelope session_id, else data.session_id */
    char token[4096];        /* data.auth.token */
    char work_dir[1024];
    char model[128];
    char permission_mode[32];
    char allowed_tools[1024];    /* comma separated */
    char disallowed_tools[1024]; /* comma separated */
    char *system_prompt;         /* malloc'd or NULL */
    int max_turns;
    bool has_last_seq;
    int64_t last_seq;
} aep_init_t;

aep_code_t aep_parse_init(const aep_msg_t *m, aep_init_t *out, const char **why);
void aep_init_free(aep_init_t *in);

/* Outbound envelope. `data` is a complete JSON object. `priority_control`
 * marks control-priority events. The result is written to out (appended). */
int aep_encode(buf_t *out, const char *type, int64_t seq, const char *session_id,
               int64_t timestamp_ms, const char *data, size_t data_len);

/* Whether an outbound event type carries priority "control". */
bool aep_is_control_priority(const char *type);

/* data for `error`: {"code":..,"message":..} */
int aep_data_error(buf_t *out, aep_code_t code, const char *message);

#endif
