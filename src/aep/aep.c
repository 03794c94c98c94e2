/*
 * aep.c - see aep.h. Inbound: one jsmn pass into the caller's token array,
 * then field lookups. Outbound: the envelope is written around the event
 * data, which is already JSON, so event payloads are never re-encoded.
 */
#include "aep/aep.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/uuid.h"

static const char *const code_names[AEP_CODE_COUNT] = {
    [AEP_OK] = "OK",
    [AEP_INVALID_MESSAGE] = "INVALID_MESSAGE",
    [AEP_PROTOCOL_VIOLATION] = "PROTOCOL_VIOLATION",
    [AEP_VERSION_MISMATCH] = "VERSION_MISMATCH",
    [AEP_CONFIG_INVALID] = "CONFIG_INVALID",
    [AEP_UNAUTHORIZED] = "UNAUTHORIZED",
    [AEP_SESSION_NOT_FOUND] = "SESSION_NOT_FOUND",
    [AEP_SESSION_BUSY] = "SESSION_BUSY",
    [AEP_SESSION_TERMINATED] = "SESSION_TERMINATED",
    [AEP_INTERNAL_ERROR] = "INTERNAL_ERROR",
    [AEP_RATE_LIMITED] = "RATE_LIMITED",
    [AEP_GATEWAY_OVERLOAD] = "GATEWAY_OVERLOAD",
    [AEP_WORKER_CRASH] = "WORKER_CRASH",
    [AEP_WORKER_UNAVAILABLE] = "WORKER_UNAVAILABLE",
    [AEP_TURN_TIMEOUT] = "TURN_TIMEOUT",
};

const char *aep_code_name(aep_code_t code)
{
    if ((int)code < 0 || code >= AEP_CODE_COUNT) return "INTERNAL_ERROR";
    return code_names[code];
}

static const struct {
    const char *name;
    aep_in_type_t type;
} in_types[] = {
    {"init", AEP_IN_INIT},
    {"input", AEP_IN_INPUT},
    {"permission_response", AEP_IN_PERMISSION_RESPONSE},
    {"question_response", AEP_IN_QUESTION_RESPONSE},
    {"elicitation_response", AEP_IN_ELICITATION_RESPONSE},
    {"control", AEP_IN_CONTROL},
    {"ping", AEP_IN_PING},
    {"worker_command", AEP_IN_WORKER_COMMAND},
};

aep_code_t aep_parse(aep_msg_t *m, const char *buf, size_t len, const char **why)
{
    m->type = AEP_IN_UNKNOWN;
    m->type_tok = m->data = m->session_id = -1;
    int rc = json_parse(&m->doc, buf, len, m->toks, AEP_MAX_TOKENS);
    if (rc == -E2BIG) {
        *why = "message too complex";
        return AEP_INVALID_MESSAGE;
    }
    if (rc == -ELOOP) {
        *why = "message nested too deeply";
        return AEP_INVALID_MESSAGE;
    }
    if (rc == -EILSEQ) {
        *why = "message is not valid UTF-8 JSON";
        return AEP_INVALID_MESSAGE;
    }
    if (rc < 0) {
        *why = "message is not valid JSON";
        return AEP_INVALID_MESSAGE;
    }
    if (json_type(&m->doc, 0) != JSON_OBJ) {
        *why = "message is not a JSON object";
        return AEP_INVALID_MESSAGE;
    }
    int v = json_obj_get(&m->doc, 0, "version");
    if (v < 0) {
        *why = "missing version";
        return AEP_INVALID_MESSAGE;
    }
    if (!json_str_eq(&m->doc, v, AEP_VERSION)) {
        *why = "unsupported version (want \"aep/v1\")";
        return AEP_INVALID_MESSAGE;
    }
    int ev = json_obj_get(&m->doc, 0, "event");
    if (ev < 0 || json_type(&m->doc, ev) != JSON_OBJ) {
        *why = "missing event object";
        return AEP_INVALID_MESSAGE;
    }
    int t = json_obj_get(&m->doc, ev, "type");
    if (t < 0 || json_type(&m->doc, t) != JSON_STR || m->doc.tok[t].end == m->doc.tok[t].start) {
        *why = "missing event.type";
        return AEP_INVALID_MESSAGE;
    }
    m->type_tok = t;
    for (size_t i = 0; i < sizeof(in_types) / sizeof(in_types[0]); i++)
        if (json_str_eq(&m->doc, t, in_types[i].name)) {
            m->type = in_types[i].type;
            break;
        }
    int d = json_obj_get(&m->doc, ev, "data");
    if (d >= 0) {
        if (json_type(&m->doc, d) == JSON_OBJ) m->data = d;
        else if (!json_is_null(&m->doc, d)) {
            *why = "event.data must be an object";
            return AEP_INVALID_MESSAGE;
        }
    }
    int s = json_obj_get(&m->doc, 0, "session_id");
    if (s >= 0 && json_type(&m->doc, s) == JSON_STR) m->session_id = s;
    return AEP_OK;
}

int aep_type_name(const aep_msg_t *m, char *out, size_t cap)
{
    if (m->type_tok < 0) return -EINVAL;
    int n = json_str_copy(&m->doc, m->type_tok, out, cap);
    if (n == -ENOSPC && cap > 4) {
        /* long names are truncated for the error text only */
        size_t len;
        const char *raw = json_raw(&m->doc, m->type_tok, &len);
        size_t k = len - 2 < cap - 4 ? len - 2 : cap - 4;
        memcpy(out, raw + 1, k);
        memcpy(out + k, "...", 4);
        return (int)k + 3;
    }
    return n;
}

bool aep_is_init(const aep_msg_t *m)
{
    if (m->type == AEP_IN_INIT) return true;
    return m->type == AEP_IN_CONTROL && m->data >= 0 &&
           json_obj_get(&m->doc, m->data, "worker_type") >= 0;
}

/* Copy an optional string field; absent/null is "", wrong type or too long is an error. */
static int get_str(const aep_msg_t *m, int obj, const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    if (obj < 0) return 0;
    int i = json_obj_get(&m->doc, obj, key);
    if (i < 0 || json_is_null(&m->doc, i)) return 0;
    if (json_type(&m->doc, i) != JSON_STR) return -EINVAL;
    int n = json_str_copy(&m->doc, i, out, cap);
    if (n < 0) return n;
    if (memchr(out, '\0', (size_t)n)) return -EINVAL; /* \u0000 inside: never a valid name */
    return 0;
}

/* allowed_tools may be an array of strings or a comma separated string. */
static int get_list(const aep_msg_t *m, int obj, const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    if (obj < 0) return 0;
    int i = json_obj_get(&m->doc, obj, key);
    if (i < 0 || json_is_null(&m->doc, i)) return 0;
    if (json_type(&m->doc, i) == JSON_STR) return get_str(m, obj, key, out, cap);
    if (json_type(&m->doc, i) != JSON_ARR) return -EINVAL;
    size_t used = 0;
    int n = m->doc.tok[i].size;
    int el = i + 1;
    for (int k = 0; k < n; k++, el = json_next(&m->doc, el)) {
        if (json_type(&m->doc, el) != JSON_STR) return -EINVAL;
        char item[256];
        int len = json_str_copy(&m->doc, el, item, sizeof(item));
        if (len < 0) return len;
        if (memchr(item, ',', (size_t)len) || memchr(item, '\0', (size_t)len)) return -EINVAL;
        if (used + (size_t)len + 2 > cap) return -ENOSPC;
        if (used) out[used++] = ',';
        memcpy(out + used, item, (size_t)len);
        used += (size_t)len;
        out[used] = '\0';
    }
    return 0;
}

aep_code_t aep_parse_init(const aep_msg_t *m, aep_init_t *in, const char **why)
{
    memset(in, 0, sizeof(*in));
    int d = m->data;
    if (d < 0) {
        *why = "init.data is required";
        return AEP_INVALID_MESSAGE;
    }
    if (get_str(m, d, "version", in->version, sizeof(in->version)) < 0 ||
        strcmp(in->version, AEP_VERSION) != 0) {
        *why = "init.data.version must be \"aep/v1\"";
        return AEP_VERSION_MISMATCH;
    }
    if (get_str(m, d, "worker_type", in->worker_type, sizeof(in->worker_type)) < 0 ||
        !in->worker_type[0]) {
        *why = "init.data.worker_type is required";
        return AEP_INVALID_MESSAGE;
    }
    /* client key: envelope session_id if non-empty, else data.session_id */
    if (m->session_id >= 0 && m->doc.tok[m->session_id].end > m->doc.tok[m->session_id].start) {
        int n = json_str_copy(&m->doc, m->session_id, in->session_key, sizeof(in->session_key));
        if (n < 0 || memchr(in->session_key, '\0', (size_t)n)) {
            *why = "session_id too long or invalid";
            return AEP_INVALID_MESSAGE;
        }
    } else if (get_str(m, d, "session_id", in->session_key, sizeof(in->session_key)) < 0) {
        *why = "init.data.session_id too long or invalid";
        return AEP_INVALID_MESSAGE;
    }
    int auth = json_obj_get(&m->doc, d, "auth");
    if (auth >= 0 && json_type(&m->doc, auth) == JSON_OBJ &&
        get_str(m, auth, "token", in->token, sizeof(in->token)) < 0) {
        *why = "init.data.auth.token invalid";
        return AEP_INVALID_MESSAGE;
    }
    int cfg = json_obj_get(&m->doc, d, "config");
    if (cfg >= 0 && !json_is_null(&m->doc, cfg)) {
        if (json_type(&m->doc, cfg) != JSON_OBJ) {
            *why = "init.data.config must be an object";
            return AEP_CONFIG_INVALID;
        }
        if (get_str(m, cfg, "work_dir", in->work_dir, sizeof(in->work_dir)) < 0) {
            *why = "config.work_dir invalid";
            return AEP_CONFIG_INVALID;
        }
        if (get_str(m, cfg, "model", in->model, sizeof(in->model)) < 0) {
            *why = "config.model invalid";
            return AEP_CONFIG_INVALID;
        }
        if (get_str(m, cfg, "permission_mode", in->permission_mode,
                    sizeof(in->permission_mode)) < 0) {
            *why = "config.permission_mode invalid";
            return AEP_CONFIG_INVALID;
        }
        if (get_list(m, cfg, "allowed_tools", in->allowed_tools, sizeof(in->allowed_tools)) < 0 ||
            get_list(m, cfg, "disallowed_tools", in->disallowed_tools,
                     sizeof(in->disallowed_tools)) < 0) {
            *why = "config.allowed_tools/disallowed_tools must be a list of tool names";
            return AEP_CONFIG_INVALID;
        }
        int sp = json_obj_get(&m->doc, cfg, "system_prompt");
        if (sp >= 0 && !json_is_null(&m->doc, sp)) {
            if (json_type(&m->doc, sp) != JSON_STR ||
                json_str_dup(&m->doc, sp, &in->system_prompt) < 0) {
                *why = "config.system_prompt must be a string";
                return AEP_CONFIG_INVALID;
            }
        }
        int mt = json_obj_get(&m->doc, cfg, "max_turns");
        if (mt >= 0 && !json_is_null(&m->doc, mt)) {
            int64_t v;
            if (json_get_i64(&m->doc, mt, &v) < 0 || v < 0 || v > 100000) {
                aep_init_free(in);
                *why = "config.max_turns must be an integer 0..100000";
                return AEP_CONFIG_INVALID;
            }
            in->max_turns = (int)v;
        }
    }
    int ls = json_obj_get(&m->doc, d, "last_seq");
    if (ls >= 0 && !json_is_null(&m->doc, ls)) {
        int64_t v;
        if (json_get_i64(&m->doc, ls, &v) < 0 || v < 0) {
            aep_init_free(in);
            *why = "init.data.last_seq must be a non-negative integer";
            return AEP_INVALID_MESSAGE;
        }
        in->has_last_seq = true;
        in->last_seq = v;
    }
    return AEP_OK;
}

void aep_init_free(aep_init_t *in)
{
    free(in->system_prompt);
    in->system_prompt = NULL;
}

bool aep_is_control_priority(const char *type)
{
    switch (type[0]) {
    case 's': return strcmp(type, "state") == 0;
    case 'c': return strcmp(type, "control") == 0;
    case 'e': return strcmp(type, "error") == 0;
    case 'i': return strcmp(type, "init_ack") == 0;
    case 'p': return strcmp(type, "pong") == 0 || strcmp(type, "permission_request") == 0;
    default: return false;
    }
}

int aep_encode(buf_t *out, const char *type, int64_t seq, const char *session_id,
               int64_t timestamp_ms, const char *data, size_t data_len)
{
    char id[UUID_STR_LEN];
    uuid_v4(id);
    jw_t w;
    jw_init(&w, out);
    jw_obj_begin(&w);
    jw_kstr(&w, "version", AEP_VERSION);
    jw_key(&w, "id");
    char evt[4 + UUID_STR_LEN];
    memcpy(evt, "evt_", 4);
    memcpy(evt + 4, id, UUID_STR_LEN);
    jw_str(&w, evt);
    jw_kint(&w, "seq", seq > 0 ? seq : 1);
    jw_kstr(&w, "session_id", session_id);
    jw_kint(&w, "timestamp", timestamp_ms);
    if (aep_is_control_priority(type)) jw_kstr(&w, "priority", "control");
    jw_key(&w, "event");
    jw_obj_begin(&w);
    jw_kstr(&w, "type", type);
    jw_key(&w, "data");
    if (data && data_len) jw_raw(&w, data, data_len);
    else jw_raw(&w, "{}", 2);
    jw_obj_end(&w);
    jw_obj_end(&w);
    return jw_error(&w);
}

int aep_data_error(buf_t *out, aep_code_t code, const char *message)
{
    jw_t w;
    jw_init(&w, out);
    jw_obj_begin(&w);
    jw_kstr(&w, "code", aep_code_name(code));
    jw_kstr(&w, "message", message ? message : "");
    jw_obj_end(&w);
    return jw_error(&w);
}
