/*
 * echo.c - the built-in `echo` agent: streams each input back as a real
 * token stream (message.start, one message.delta per word, message.end,
 * message, done). It runs in-process on the loop with a timer, so a new user
 * can try the protocol without an API key and tests have a deterministic
 * agent that goes through exactly the same session code as real agents.
 *
 * Scenarios (input starting with `SCENARIO:`):
 *   long N        N words "w1 w2 ... wN", one delta each
 *   slow N        the same, 100 ms between deltas (interrupt/disconnect tests)
 *   permission    a permission_request for Bash `echo hi`; the answer decides
 *   error         the turn fails: error{INTERNAL_ERROR} then done{success:false}
 *   crash         the "process" dies mid-turn (as if killed by SIGKILL)
 *   tool          a tool_call and its tool_result, then text
 *   reasoning     a reasoning event, then text
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/buf.h"
#include "util/clock.h"
#include "util/config.h"
#include "util/json.h"
#include "worker/worker.h"

#define ECHO_SLOW_MS 100
#define ECHO_BATCH 64 /* deltas per tick when pacing is 0 */
#define ECHO_HI "{\"command\":\"echo hi\"}"
#define EMIT_LIT(w, type, lit) (w)->sink.event((w)->sink.ctx, (type), (lit), sizeof(lit) - 1)

typedef enum { PH_IDLE, PH_STREAM, PH_PERMISSION, PH_DEAD } echo_phase_t;
typedef enum { AFTER_DONE_OK, AFTER_DONE_CRASH } echo_end_t;

struct wkr {
    wkr_sink_t sink;
    uv_timer_t timer;
    const hp_config_t *cfg;
    echo_phase_t phase;
    echo_end_t end;
    int interval_ms;
    int crash_after; /* deltas before a simulated crash, -1 none */
    char *text;      /* what this turn streams (unescaped) */
    size_t len, pos;
    char msg_id[48];
    char perm_id[32];
    unsigned turn, perm_seq;
    int64_t turn_start_ms;
    bool stopping, exited;
    bool paused; /* backpressure from the session: stop producing */
};

static void emit(struct wkr *w, const char *type, buf_t *b)
{
    w->sink.event(w->sink.ctx, type, b->p, b->len);
    buf_reset(b);
}

static void emit_done(struct wkr *w, bool success, bool interrupted)
{
    buf_t b;
    buf_init(&b);
    jw_t j;
    jw_init(&j, &b);
    jw_obj_begin(&j);
    jw_kbool(&j, "success", success);
    jw_key(&j, "stats");
    jw_obj_begin(&j);
    jw_kint(&j, "duration_ms", clock_unix_ms() - w->turn_start_ms);
    jw_kint(&j, "num_turns", 1);
    jw_key(&j, "total_cost_usd");
    jw_int(&j, 0);
    jw_kbool(&j, "interrupted", interrupted);
    jw_key(&j, "usage");
    jw_obj_begin(&j);
    jw_kint(&j, "input_tokens", 0);
    jw_kint(&j, "output_tokens", (int64_t)(w->len / 4));
    jw_obj_end(&j);
    jw_obj_end(&j);
    jw_obj_end(&j);
    /* idle before `done` goes out: the core may send the next turn from
     * inside that callback */
    free(w->text);
    w->text = NULL;
    w->phase = PH_IDLE;
    emit(w, "done", &b);
    buf_free(&b);
}

static void emit_message_start(struct wkr *w)
{
    snprintf(w->msg_id, sizeof(w->msg_id), "msg_echo_%u", w->turn);
    buf_t b;
    buf_init(&b);
    jw_t j;
    jw_init(&j, &b);
    jw_obj_begin(&j);
    jw_kstr(&j, "id", w->msg_id);
    jw_kstr(&j, "role", "assistant");
    jw_kstr(&j, "content_type", "text");
    jw_obj_end(&j);
    emit(w, "message.start", &b);
    buf_free(&b);
}

/* message.end and the full message for what was streamed so far. */
static void emit_message_end(struct wkr *w)
{
    buf_t b;
    buf_init(&b);
    jw_t j;
    jw_init(&j, &b);
    jw_obj_begin(&j);
    jw_kstr(&j, "message_id", w->msg_id);
    jw_obj_end(&j);
    emit(w, "message.end", &b);
    jw_init(&j, &b);
    jw_obj_begin(&j);
    jw_kstr(&j, "id", w->msg_id);
    jw_kstr(&j, "role", "assistant");
    jw_key(&j, "content");
    jw_strn(&j, w->text, w->pos);
    jw_kstr(&j, "content_type", "text");
    jw_obj_end(&j);
    emit(w, "message", &b);
    buf_free(&b);
}

/* Next chunk: a word and the spaces after it, at most 64 bytes, never
 * splitting a UTF-8 sequence. */
static size_t next_chunk(const struct wkr *w)
{
    size_t i = w->pos, end = w->len;
    while (i < end && w->text[i] != ' ' && i - w->pos < 64) i++;
    while (i < end && w->text[i] == ' ') i++;
    while (i < end && i > w->pos && ((unsigned char)w->text[i] & 0xC0) == 0x80) i--;
    if (i == w->pos) { /* a single long UTF-8 sequence: take it whole */
        i++;
        while (i < end && ((unsigned char)w->text[i] & 0xC0) == 0x80) i++;
    }
    return i - w->pos;
}

static void die(struct wkr *w, int status, int signo, const char *why);

static void on_tick(uv_timer_t *t)
{
    struct wkr *w = t->data;
    if (w->phase != PH_STREAM) return;
    buf_t b;
    buf_init(&b);
    int batch = w->interval_ms > 0 ? 1 : ECHO_BATCH;
    for (int k = 0; k < batch && w->pos < w->len && !w->paused; k++) {
        if (w->crash_after == 0) {
            buf_free(&b);
            die(w, -1, 9, "simulated crash");
            return;
        }
        if (w->crash_after > 0) w->crash_after--;
        size_t n = next_chunk(w);
        jw_t j;
        jw_init(&j, &b);
        jw_obj_begin(&j);
        jw_kstr(&j, "message_id", w->msg_id);
        jw_key(&j, "content");
        jw_strn(&j, w->text + w->pos, n);
        jw_obj_end(&j);
        w->pos += n;
        emit(w, "message.delta", &b);
    }
    buf_free(&b);
    if (w->pos < w->len) {
        if (!w->paused) uv_timer_start(&w->timer, on_tick, (uint64_t)w->interval_ms, 0);
        return;
    }
    emit_message_end(w);
    if (w->end == AFTER_DONE_CRASH) {
        die(w, -1, 9, "simulated crash");
        return;
    }
    emit_done(w, true, false);
}

static void stream_text(struct wkr *w, char *text, size_t len, int interval_ms)
{
    free(w->text);
    w->text = text;
    w->len = len;
    w->pos = 0;
    w->interval_ms = interval_ms;
    w->phase = PH_STREAM;
    emit_message_start(w);
    uv_timer_start(&w->timer, on_tick, 0, 0);
}

#define STREAM_LIT(w, lit)                                                                         \
    stream_text((w), strdup(lit), sizeof(lit) - 1, (w)->cfg->echo_delta_interval_ms)

static char *words(int n, size_t *len)
{
    buf_t b;
    buf_init(&b);
    for (int i = 1; i <= n; i++) buf_printf(&b, i > 1 ? " w%d" : "w%d", i);
    if (!b.p) buf_puts(&b, "");
    return buf_steal(&b, len);
}

static void on_close(uv_handle_t *h)
{
    struct wkr *w = h->data;
    free(w->text);
    free(w);
}

/* The agent is gone: exactly one exit callback, then the memory goes. */
static void die(struct wkr *w, int status, int signo, const char *why)
{
    if (w->exited) return;
    /* like the claude adapter on an agent's death: close a message cut off
     * mid-stream so clients never see a start without its end */
    if (w->phase == PH_STREAM && w->text) emit_message_end(w);
    w->exited = true;
    w->phase = PH_DEAD;
    uv_timer_stop(&w->timer);
    w->sink.exit(w->sink.ctx, status, signo, why);
    uv_close((uv_handle_t *)&w->timer, on_close);
}

static void scenario(struct wkr *w, const char *s)
{
    int n = 0;
    buf_t b;
    buf_init(&b);
    if (sscanf(s, "long %d", &n) == 1 || sscanf(s, "slow %d", &n) == 1) {
        if (n < 1) n = 1;
        if (n > 10000000) n = 10000000;
        size_t len;
        char *t = words(n, &len);
        stream_text(w, t, len, s[0] == 's' ? ECHO_SLOW_MS : w->cfg->echo_delta_interval_ms);
    } else if (strncmp(s, "permission", 10) == 0) {
        snprintf(w->perm_id, sizeof(w->perm_id), "perm_%u", ++w->perm_seq);
        jw_t j;
        jw_init(&j, &b);
        jw_obj_begin(&j);
        jw_kstr(&j, "id", w->perm_id);
        jw_kstr(&j, "tool_name", "Bash");
        jw_kstr(&j, "description", "Run a shell command: echo hi");
        jw_key(&j, "input");
        jw_raw(&j, ECHO_HI, sizeof(ECHO_HI) - 1);
        jw_key(&j, "args");
        jw_arr_begin(&j);
        jw_str(&j, "{\"command\":\"echo hi\"}");
        jw_arr_end(&j);
        jw_obj_end(&j);
        emit(w, "permission_request", &b);
        w->phase = PH_PERMISSION;
    } else if (strncmp(s, "error", 5) == 0) {
        EMIT_LIT(w, "error", "{\"code\":\"INTERNAL_ERROR\",\"message\":\"echo: simulated agent error\"}");
        emit_done(w, false, false);
    } else if (strncmp(s, "crash", 5) == 0) {
        size_t len;
        char *t = words(20, &len);
        w->crash_after = 3;
        stream_text(w, t, len, w->cfg->echo_delta_interval_ms);
    } else if (strncmp(s, "tool", 4) == 0) {
        EMIT_LIT(w, "tool_call", "{\"id\":\"tool_echo\",\"name\":\"Bash\",\"input\":{\"command\":\"echo hi\"}}");
        EMIT_LIT(w, "tool_result", "{\"id\":\"tool_echo\",\"output\":\"hi\\n\"}");
        STREAM_LIT(w, "tool done");
    } else if (strncmp(s, "reasoning", 9) == 0) {
        EMIT_LIT(w, "reasoning", "{\"id\":\"rsn_echo\",\"content\":\"thinking it over\"}");
        STREAM_LIT(w, "thought about it");
    } else {
        STREAM_LIT(w, "echo: unknown scenario");
    }
    buf_free(&b);
}

static int echo_start(wkr_t **out, uv_loop_t *loop, const wkr_spec_t *spec,
                      const wkr_sink_t *sink, char *err, size_t cap)
{
    struct wkr *w = calloc(1, sizeof(*w));
    if (!w) {
        snprintf(err, cap, "out of memory");
        return -ENOMEM;
    }
    w->sink = *sink;
    w->cfg = spec->cfg;
    w->crash_after = -1;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    *out = w;
    return 0;
}

static int echo_input(wkr_t *w, const char *content, size_t len)
{
    if (w->phase == PH_DEAD || w->stopping) return -EPIPE;
    if (w->phase != PH_IDLE) return -EBUSY; /* the core sends one turn at a time */
    /* content is an escaped JSON string body: unescape it through the reader */
    buf_t q;
    buf_init(&q);
    buf_puts(&q, "\"");
    buf_append(&q, content, len);
    buf_puts(&q, "\"");
    json_tok_t tok[2];
    json_doc_t d;
    char *text = NULL;
    int n = -EINVAL;
    if (json_parse(&d, q.p, q.len, tok, 2) == 0) n = json_str_dup(&d, 0, &text);
    buf_free(&q);
    if (n < 0) return n;
    w->turn++;
    w->turn_start_ms = clock_unix_ms();
    w->crash_after = -1;
    w->end = AFTER_DONE_OK;
    if (strncmp(text, "SCENARIO:", 9) == 0) {
        scenario(w, text + 9);
        free(text);
    } else {
        stream_text(w, text, (size_t)n, w->cfg->echo_delta_interval_ms);
    }
    return 0;
}

static int echo_permission(wkr_t *w, const char *req_id, bool allow, const char *reason,
                           const char *updated, size_t updated_len)
{
    if (w->phase != PH_PERMISSION || strcmp(req_id, w->perm_id) != 0) return -ENOENT;
    w->perm_id[0] = '\0';
    if (allow) {
        buf_t b;
        buf_init(&b);
        jw_t j;
        jw_init(&j, &b);
        jw_obj_begin(&j);
        jw_kstr(&j, "id", "tool_perm");
        jw_kstr(&j, "name", "Bash");
        jw_key(&j, "input");
        if (updated && updated_len) jw_raw(&j, updated, updated_len);
        else jw_raw(&j, ECHO_HI, sizeof(ECHO_HI) - 1);
        jw_obj_end(&j);
        emit(w, "tool_call", &b);
        buf_free(&b);
        EMIT_LIT(w, "tool_result", "{\"id\":\"tool_perm\",\"output\":\"hi\\n\"}");
        STREAM_LIT(w, "permission granted");
    } else {
        buf_t t;
        buf_init(&t);
        buf_printf(&t, "permission denied: %s", reason ? reason : "denied by user");
        size_t len;
        char *s = buf_steal(&t, &len);
        stream_text(w, s, len, w->cfg->echo_delta_interval_ms);
    }
    return 0;
}

static int echo_interrupt(wkr_t *w)
{
    if (w->phase == PH_STREAM) {
        uv_timer_stop(&w->timer);
        emit_message_end(w);
        emit_done(w, false, true);
    } else if (w->phase == PH_PERMISSION) {
        w->perm_id[0] = '\0';
        emit_done(w, false, true);
    }
    return 0;
}

static void on_stop(uv_timer_t *t)
{
    die(t->data, 0, 0, NULL);
}

static void echo_pause(wkr_t *w, bool paused)
{
    if (w->paused == paused) return;
    w->paused = paused;
    if (!paused && w->phase == PH_STREAM && !w->exited)
        uv_timer_start(&w->timer, on_tick, 0, 0);
}

static void echo_stop(wkr_t *w)
{
    if (w->stopping || w->exited) return;
    /* a message cut off by the stop is closed, as on a death */
    if (w->phase == PH_STREAM && w->text) emit_message_end(w);
    w->stopping = true;
    w->phase = PH_DEAD;
    /* like a process: the exit is reported after stop() returns */
    uv_timer_start(&w->timer, on_stop, 0, 0);
}

const wkr_ops_t wkr_echo_ops = {
    .type = "echo",
    .start = echo_start,
    .input = echo_input,
    .permission = echo_permission,
    .interrupt = echo_interrupt,
    .stop = echo_stop,
    .pause = echo_pause,
};
