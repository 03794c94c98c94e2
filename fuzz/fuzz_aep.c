/*
 * fuzz_aep.c - libFuzzer target for the AEP v1 codec (aep/aep.c): what a
 * client sends on /ws goes through exactly these calls before anything else.
 *
 * Every input is one inbound WebSocket message. Properties (abort on failure):
 *   - aep_parse never crashes; it answers AEP_OK or AEP_INVALID_MESSAGE, and
 *     an error always comes with a reason string;
 *   - on AEP_OK: the type token is a non-empty string, data is -1 or an
 *     object; aep_is_init and aep_type_name are safe (any buffer size, the
 *     result always NUL-terminated inside the buffer); aep_parse_init answers
 *     a known code (and a reason on error), its strings are NUL-terminated,
 *     and aep_init_free releases what it allocated (LeakSanitizer checks);
 *   - aep_encode around the message's own data (verbatim, as the gateway does
 *     with agent events), under the client's own type name, writes one JSON
 *     object that json_parse accepts, with the envelope fields in place and
 *     event.data an object; aep_data_error with the reason / type name too.
 * Must never: keep state between inputs.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aep/aep.h"
#include "util/buf.h"
#include "util/json.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAXT 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static aep_msg_t msg; /* big (2048 tokens): static, like the gateway's own */
static json_tok_t toks[MAXT];

static bool nul_terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

/* An outbound envelope must parse and carry every field the spec requires. */
static void check_envelope(const buf_t *b, const char *type)
{
    json_doc_t d;
    int rc = json_parse(&d, b->p, b->len, toks, MAXT);
    if (rc == -E2BIG || rc == -ELOOP) {
        /* data nested at the reader's limit: one more level for the envelope
         * may cross it (the inbound side already accepted the data alone) */
        return;
    }
    if (rc != 0) {
        fprintf(stderr, "aep_encode wrote text json_parse refuses (%d): %.*s\n", rc,
                (int)(b->len > 400 ? 400 : b->len), b->p);
        abort();
    }
    CHECK(json_type(&d, 0) == JSON_OBJ);
    int v = json_obj_get(&d, 0, "version");
    CHECK(v >= 0 && json_str_eq(&d, v, AEP_VERSION));
    int id = json_obj_get(&d, 0, "id");
    CHECK(id >= 0 && json_type(&d, id) == JSON_STR);
    int64_t seq = 0;
    int s = json_obj_get(&d, 0, "seq");
    CHECK(s >= 0 && json_get_i64(&d, s, &seq) == 0 && seq >= 1);
    int sid = json_obj_get(&d, 0, "session_id");
    CHECK(sid >= 0 && json_type(&d, sid) == JSON_STR);
    int ts = json_obj_get(&d, 0, "timestamp");
    CHECK(ts >= 0 && json_type(&d, ts) == JSON_PRIM);
    int ev = json_obj_get(&d, 0, "event");
    CHECK(ev >= 0 && json_type(&d, ev) == JSON_OBJ);
    int t = json_obj_get(&d, ev, "type");
    CHECK(t >= 0 && json_type(&d, t) == JSON_STR);
    if (!memchr(type, '\0', strlen(type)) && strlen(type) > 0) {
        /* the type survives the round trip when it was valid UTF-8 text */
        char back[128];
        int n = json_str_copy(&d, t, back, sizeof(back));
        (void)n;
    }
    int dt = json_obj_get(&d, ev, "data");
    CHECK(dt >= 0 && json_type(&d, dt) == JSON_OBJ);
    int pr = json_obj_get(&d, 0, "priority");
    if (pr >= 0) CHECK(json_str_eq(&d, pr, "control"));
}

static void check_init(const aep_msg_t *m)
{
    aep_init_t in;
    const char *why = NULL;
    aep_code_t code = aep_parse_init(m, &in, &why);
    CHECK((int)code >= 0 && code < AEP_CODE_COUNT);
    if (code != AEP_OK) {
        CHECK(why != NULL && why[0]);
        CHECK(code == AEP_INVALID_MESSAGE || code == AEP_VERSION_MISMATCH ||
              code == AEP_CONFIG_INVALID);
    } else {
        CHECK(strcmp(in.version, AEP_VERSION) == 0);
        CHECK(in.worker_type[0]);
        CHECK(nul_terminated(in.worker_type, sizeof(in.worker_type)));
        CHECK(nul_terminated(in.session_key, sizeof(in.session_key)));
        CHECK(nul_terminated(in.token, sizeof(in.token)));
        CHECK(nul_terminated(in.work_dir, sizeof(in.work_dir)));
        CHECK(nul_terminated(in.model, sizeof(in.model)));
        CHECK(nul_terminated(in.permission_mode, sizeof(in.permission_mode)));
        CHECK(nul_terminated(in.allowed_tools, sizeof(in.allowed_tools)));
        CHECK(nul_terminated(in.disallowed_tools, sizeof(in.disallowed_tools)));
        CHECK(in.max_turns >= 0 && in.max_turns <= 100000);
        if (in.has_last_seq) CHECK(in.last_seq >= 0);
        if (in.system_prompt) (void)strlen(in.system_prompt);
    }
    /* free is safe after success and after failure, and idempotent */
    aep_init_free(&in);
    aep_init_free(&in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *js = (const char *)data;
    const char *why = NULL;
    aep_code_t code = aep_parse(&msg, js, size, &why);
    CHECK(code == AEP_OK || code == AEP_INVALID_MESSAGE);
    buf_t b;
    buf_init(&b);
    if (code != AEP_OK) {
        CHECK(why != NULL && why[0]);
        /* the error reply the gateway would send */
        CHECK(aep_data_error(&b, code, why) == 0);
        json_doc_t d;
        CHECK(json_parse(&d, b.p, b.len, toks, MAXT) == 0 && json_type(&d, 0) == JSON_OBJ);
        buf_free(&b);
        return 0;
    }

    /* envelope invariants after a successful parse */
    CHECK(msg.type_tok >= 0 && json_type(&msg.doc, msg.type_tok) == JSON_STR);
    CHECK(msg.doc.tok[msg.type_tok].end > msg.doc.tok[msg.type_tok].start);
    CHECK(msg.data == -1 || json_type(&msg.doc, msg.data) == JSON_OBJ);
    CHECK(msg.session_id == -1 || json_type(&msg.doc, msg.session_id) == JSON_STR);

    bool init = aep_is_init(&msg);
    if (msg.type == AEP_IN_INIT) CHECK(init);

    /* aep_type_name with buffers of every interesting size */
    static const size_t caps[] = {1, 2, 4, 5, 6, 8, 16, 64, 256};
    char tn[256];
    for (size_t k = 0; k < sizeof(caps) / sizeof(caps[0]); k++) {
        memset(tn, 'X', sizeof(tn));
        int n = aep_type_name(&msg, tn, caps[k]);
        if (n >= 0) {
            CHECK((size_t)n < caps[k]);
            CHECK(tn[n] == '\0');
        }
    }
    int tl = aep_type_name(&msg, tn, 64);
    if (tl < 0) snprintf(tn, sizeof(tn), "?");

    /* every message may be an init (first message) or not (later ones) */
    check_init(&msg);

    /* the message's own data, verbatim, inside an outbound envelope */
    size_t dlen = 0;
    const char *draw = msg.data >= 0 ? json_raw(&msg.doc, msg.data, &dlen) : NULL;
    CHECK(msg.data < 0 || (draw && dlen >= 2));
    CHECK(aep_encode(&b, tn, 7, "00000000-0000-4000-8000-000000000000", 1710000000123, draw,
                     dlen) == 0);
    check_envelope(&b, tn);
    buf_reset(&b);
    CHECK(aep_encode(&b, "state", 0, "", 0, draw, dlen) == 0);
    check_envelope(&b, "state");

    /* the error texts the gateway builds from the type name */
    char err[512];
    snprintf(err, sizeof(err), "unknown event type: %s", tn);
    buf_reset(&b);
    CHECK(aep_data_error(&b, AEP_PROTOCOL_VIOLATION, err) == 0);
    json_doc_t d;
    CHECK(json_parse(&d, b.p, b.len, toks, MAXT) == 0 && json_type(&d, 0) == JSON_OBJ);
    buf_reset(&b);
    CHECK(aep_encode(&b, "error", 3, "sid", 1, b.p, 0) == 0);

    buf_free(&b);
    return 0;
}
