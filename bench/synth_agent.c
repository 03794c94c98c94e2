/*
 * synth_agent.c - a stand-in for the Claude Code CLI that speaks its
 * stream-json protocol on stdin/stdout with no API behind it, so the gateway
 * runs its real supervisor and claude_code adapter path under load.
 *
 * Command line: whatever the gateway passes (`-p --input-format stream-json
 * ... --session-id UUID` or `--resume UUID`); only the session id is used.
 *
 * stdin: one JSON object per line. A `user` line's content is a directive:
 *   STREAM count=N size=B rate=R
 * emits one turn of N text deltas of B bytes each at R deltas/s (0 = as fast
 * as possible). Each delta's text starts with a marker `[i:t]` (i = index of
 * the delta in the turn from 0, t = CLOCK_MONOTONIC ns just before the line
 * is written) padded with 'x' to B bytes, so a client can measure
 * agent-write -> client-receive latency and check order and loss. Any other
 * content gets a short "Echo: ..." turn. A `control_request` (interrupt,
 * set_model, ...) is answered with a success `control_response`.
 *
 * stdout mimics a recorded CLI turn (tests/fixtures/claude/longtext.jsonl):
 * system/init, system/status, stream_event message_start,
 * content_block_start, the deltas, the `assistant` line with the full text,
 * content_block_stop, message_delta, message_stop, `result`.
 * Lines are flushed one by one when rate > 0 and in 64 KiB batches when
 * rate = 0. stdin EOF -> exit 0; SIGTERM -> exit 0.
 *
 * Environment: SYNTH_START_DELAY_MS (sleep before reading stdin, to model a
 * slow-starting CLI; default 0).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_COUNT 10000000L
#define MAX_SIZE (1L << 20)
#define MAX_TEXT (64L << 20) /* bytes of text in one turn */

static char session_id[64] = "00000000-0000-4000-8000-000000000000";
static char cwd[1024] = "/";
static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static unsigned long msg_counter;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* A random version-4 UUID (not cryptographic: only shape matters). */
static void make_uuid(char out[37])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = next_rand(), b = next_rand();
    int k = 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            out[i] = '-';
            continue;
        }
        unsigned v;
        if (i == 14) v = 4;
        else if (i == 19) v = 8 | (unsigned)(b & 3);
        else {
            v = (unsigned)((k < 16 ? a >> (4 * k) : b >> (4 * (k - 16))) & 15);
            k++;
        }
        out[i] = hex[v];
    }
    out[36] = '\0';
}

static void on_term(int sig)
{
    (void)sig;
    _exit(0);
}

/* ---- output lines -------------------------------------------------------- */

static const char tools_etc[] =
    "\"tools\":[\"Task\",\"AskUserQuestion\",\"Bash\",\"CronCreate\",\"CronDelete\",\"CronList\","
    "\"Edit\",\"EnterPlanMode\",\"EnterWorktree\",\"ExitPlanMode\",\"ExitWorktree\","
    "\"NotebookEdit\",\"Read\",\"ReportFindings\",\"ScheduleWakeup\",\"SendMessage\",\"Skill\","
    "\"TaskCreate\",\"TaskGet\",\"TaskList\",\"TaskOutput\",\"TaskStop\",\"TaskUpdate\","
    "\"WebFetch\",\"WebSearch\",\"Workflow\",\"Write\"],\"mcp_servers\":[],"
    "\"model\":\"claude-opus-4-8[1m]\",\"permissionMode\":\"default\","
    "\"slash_commands\":[\"deep-research\",\"update-config\",\"verify\",\"debug\",\"code-review\","
    "\"simplify\",\"batch\",\"fewer-permission-prompts\",\"loop\",\"claude-api\",\"run\","
    "\"run-skill-generator\",\"clear\",\"compact\",\"config\",\"context\",\"heapdump\",\"init\","
    "\"reload-skills\",\"review\",\"security-review\",\"usage\",\"insights\",\"goal\","
    "\"team-onboarding\"],\"apiKeySource\":\"ANTHROPIC_API_KEY\","
    "\"claude_code_version\":\"2.1.197\",\"output_style\":\"default\","
    "\"agents\":[\"claude\",\"Explore\",\"general-purpose\",\"Plan\",\"statusline-setup\"],"
    "\"skills\":[\"deep-research\",\"update-config\",\"verify\",\"debug\",\"code-review\","
    "\"simplify\",\"batch\",\"fewer-permission-prompts\",\"loop\",\"claude-api\",\"run\","
    "\"run-skill-generator\"],\"plugins\":[],\"analytics_disabled\":true,"
    "\"product_feedback_disabled\":true,";

static const char usage_json[] =
    "{\"input_tokens\":1656,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,"
    "\"output_tokens\":1,\"service_tier\":\"standard\"}";

/* Writes `s` as a JSON string body (no quotes); the directive text from the
 * user is the only thing that can hold characters needing escapes. */
static void put_json_body(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            putchar('\\');
            putchar(c);
        } else if (c < 0x20) {
            printf("\\u%04x", c);
        } else {
            putchar(c);
        }
    }
}

static void line_system_init(void)
{
    char u[37];
    make_uuid(u);
    printf("{\"type\":\"system\",\"subtype\":\"init\",\"cwd\":\"");
    put_json_body(cwd, strlen(cwd));
    printf("\",\"session_id\":\"%s\",%s\"uuid\":\"%s\",\"fast_mode_state\":\"off\"}\n", session_id,
           tools_etc, u);
    make_uuid(u);
    printf("{\"type\":\"system\",\"subtype\":\"status\",\"status\":\"requesting\",\"uuid\":\"%s\","
           "\"session_id\":\"%s\"}\n",
           u, session_id);
}

static void stream_event(const char *event_json)
{
    char u[37];
    make_uuid(u);
    printf("{\"type\":\"stream_event\",\"event\":%s,\"session_id\":\"%s\",\"parent_tool_use_id\":"
           "null,\"uuid\":\"%s\"}\n",
           event_json, session_id, u);
}

/* One text delta; the text is plain ASCII without quotes or backslashes. */
static void line_delta(const char *text, size_t n)
{
    char u[37];
    make_uuid(u);
    fputs("{\"type\":\"stream_event\",\"event\":{\"type\":\"content_block_delta\",\"index\":0,"
          "\"delta\":{\"type\":\"text_delta\",\"text\":\"",
          stdout);
    fwrite(text, 1, n, stdout);
    printf("\"}},\"session_id\":\"%s\",\"parent_tool_use_id\":null,\"uuid\":\"%s\"}\n", session_id,
           u);
}

/* ---- one turn ------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t len, cap;
} text_t;

static int text_reserve(text_t *t, size_t more)
{
    if (t->len + more <= t->cap) return 0;
    size_t cap = t->cap ? t->cap : 4096;
    while (cap < t->len + more)
        cap *= 2;
    char *p = realloc(t->p, cap);
    if (!p) return -1;
    t->p = p;
    t->cap = cap;
    return 0;
}

static void run_turn(const char **deltas_src, size_t fixed_n, long count, long size, long rate,
                     int stream_mode)
{
    static text_t text;
    uint64_t t_start = now_ns();
    char msg_id[48], ev[512], req[40], u[37];
    snprintf(msg_id, sizeof(msg_id), "msg_synth%08lx%08lx", (unsigned long)(next_rand() >> 32),
             ++msg_counter);
    text.len = 0;

    line_system_init();
    snprintf(ev, sizeof(ev),
             "{\"type\":\"message_start\",\"message\":{\"id\":\"%s\",\"type\":\"message\","
             "\"role\":\"assistant\",\"model\":\"claude-opus-4-8\",\"content\":[],"
             "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":%s}}",
             msg_id, usage_json);
    stream_event(ev);
    stream_event("{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":"
                 "\"text\",\"text\":\"\"}}");
    if (rate > 0) fflush(stdout);

    long n = stream_mode ? count : (long)fixed_n;
    char *chunk = malloc((size_t)(stream_mode ? (size < 64 ? 64 : size) + 1 : 1));
    uint64_t period = rate > 0 ? 1000000000ULL / (uint64_t)rate : 0;
    for (long i = 0; i < n; i++) {
        const char *d;
        size_t dn;
        if (stream_mode) {
            if (period) {
                uint64_t due = t_start + (uint64_t)i * period;
                uint64_t now = now_ns();
                if (now < due) {
                    struct timespec ts = {.tv_sec = (time_t)(due / 1000000000ULL),
                                          .tv_nsec = (long)(due % 1000000000ULL)};
                    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
                    }
                }
            }
            int m = snprintf(chunk, 64, "[%ld:%llu]", i, (unsigned long long)now_ns());
            size_t len = (size_t)m;
            if ((long)len < size) {
                memset(chunk + len, 'x', (size_t)size - len);
                len = (size_t)size;
            }
            d = chunk;
            dn = len;
        } else {
            d = deltas_src[i];
            dn = strlen(d);
        }
        line_delta(d, dn);
        if (period) fflush(stdout);
        if ((long)(text.len + dn) <= MAX_TEXT && text_reserve(&text, dn) == 0) {
            memcpy(text.p + text.len, d, dn);
            text.len += dn;
        }
    }
    free(chunk);

    /* The CLI writes the complete assistant message before the final
     * stream events (see the recorded fixtures). */
    make_uuid(u);
    snprintf(req, sizeof(req), "req_synth%016llx", (unsigned long long)next_rand());
    printf("{\"type\":\"assistant\",\"message\":{\"id\":\"%s\",\"type\":\"message\",\"role\":"
           "\"assistant\",\"model\":\"claude-opus-4-8\",\"content\":[{\"type\":\"text\",\"text\":"
           "\"",
           msg_id);
    fwrite(text.p, 1, text.len, stdout);
    printf("\"}],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":%s,\"context_management\":"
           "null},\"parent_tool_use_id\":null,\"session_id\":\"%s\",\"uuid\":\"%s\","
           "\"request_id\":\"%s\"}\n",
           usage_json, session_id, u, req);
    stream_event("{\"type\":\"content_block_stop\",\"index\":0}");
    snprintf(ev, sizeof(ev),
             "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
             "\"stop_sequence\":null},\"usage\":{\"input_tokens\":1656,"
             "\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,"
             "\"output_tokens\":%ld}}",
             n);
    stream_event(ev);
    stream_event("{\"type\":\"message_stop\"}");
    long dur_ms = (long)((now_ns() - t_start) / 1000000ULL);
    make_uuid(u);
    printf("{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,"
           "\"api_error_status\":null,\"duration_ms\":%ld,\"duration_api_ms\":%ld,\"num_turns\":1,"
           "\"result\":\"",
           dur_ms, dur_ms);
    fwrite(text.p, 1, text.len, stdout);
    printf("\",\"stop_reason\":\"end_turn\",\"session_id\":\"%s\",\"total_cost_usd\":0,"
           "\"usage\":{\"input_tokens\":1656,\"cache_creation_input_tokens\":0,"
           "\"cache_read_input_tokens\":0,\"output_tokens\":%ld,\"server_tool_use\":"
           "{\"web_search_requests\":0,\"web_fetch_requests\":0},\"service_tier\":\"standard\"},"
           "\"modelUsage\":{},\"permission_denials\":[],\"terminal_reason\":\"completed\","
           "\"fast_mode_state\":\"off\",\"uuid\":\"%s\"}\n",
           session_id, n, u);
    fflush(stdout);
}

/* ---- input --------------------------------------------------------------- */

/* Value of `key=` in the directive, or def. */
static long directive_num(const char *s, const char *key, long def, long max)
{
    size_t kl = strlen(key);
    for (const char *p = s; (p = strstr(p, key)); p++) {
        if ((p == s || p[-1] == ' ') && p[kl] == '=') {
            long v = strtol(p + kl + 1, NULL, 10);
            if (v < 0) v = 0;
            return v > max ? max : v;
        }
    }
    return def;
}

/* The user text: content string, or the first text block's text. Returns a
 * pointer into line (escapes left as they are) and its length. */
static const char *user_text(const char *line, size_t *n)
{
    const char *p = strstr(line, "\"content\":");
    if (!p) return NULL;
    p += 10;
    while (*p == ' ')
        p++;
    if (*p == '[') {
        p = strstr(p, "\"text\":");
        if (!p) return NULL;
        p += 7;
        while (*p == ' ')
            p++;
    }
    if (*p != '"') return NULL;
    p++;
    const char *q = p;
    while (*q && *q != '"') {
        if (*q == '\\' && q[1]) q++;
        q++;
    }
    *n = (size_t)(q - p);
    return p;
}

static void on_user(const char *line)
{
    size_t n = 0;
    const char *t = user_text(line, &n);
    char directive[512];
    if (!t) t = "", n = 0;
    snprintf(directive, sizeof(directive), "%.*s", (int)(n < 500 ? n : 500), t);
    if (strncmp(directive, "STREAM", 6) == 0) {
        long count = directive_num(directive, "count", 100, MAX_COUNT);
        long size = directive_num(directive, "size", 64, MAX_SIZE);
        long rate = directive_num(directive, "rate", 0, 100000000L);
        run_turn(NULL, 0, count, size, rate, 1);
    } else {
        /* Echo: like the two_turns fixture, three deltas. The directive
         * text is re-escaped for the delta. */
        static char body[1200];
        size_t o = 0;
        for (size_t i = 0; directive[i] && o + 8 < sizeof(body); i++) {
            unsigned char c = (unsigned char)directive[i];
            if (c == '"' || c == '\\' || c < 0x20) c = ' ';
            body[o++] = (char)c;
        }
        body[o] = '\0';
        const char *parts[3] = {"Echo: ", body, ""};
        run_turn(parts, o ? 2 : 1, 0, 0, 0, 0);
    }
}

static void on_control_request(const char *line)
{
    const char *p = strstr(line, "\"request_id\":\"");
    char id[128] = "";
    if (p) {
        p += 14;
        size_t i = 0;
        while (p[i] && p[i] != '"' && i + 1 < sizeof(id)) {
            id[i] = p[i];
            i++;
        }
        id[i] = '\0';
    }
    printf("{\"type\":\"control_response\",\"response\":{\"subtype\":\"success\",\"request_id\":"
           "\"%s\"}}\n",
           id);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--session-id") == 0 || strcmp(argv[i], "--resume") == 0)
            snprintf(session_id, sizeof(session_id), "%s", argv[i + 1]);
    if (!getcwd(cwd, sizeof(cwd))) snprintf(cwd, sizeof(cwd), "/");
    rng ^= now_ns() ^ ((uint64_t)getpid() << 32);
    if (!rng) rng = 1;

    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    static char obuf[64 * 1024];
    setvbuf(stdout, obuf, _IOFBF, sizeof(obuf));

    const char *delay = getenv("SYNTH_START_DELAY_MS");
    if (delay && atoi(delay) > 0) usleep((useconds_t)atoi(delay) * 1000);

    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        if (strstr(line, "\"type\":\"user\"")) on_user(line);
        else if (strstr(line, "\"type\":\"control_request\"")) on_control_request(line);
        /* control_response (permission answers) and anything else: ignored */
        if (ferror(stdout)) break; /* the reader went away */
    }
    free(line);
    return 0;
}
