/*
 * chat.c - `hotplex chat`: a terminal client of the gateway's AEP v1
 * WebSocket. Interactive (a `> ` prompt, one turn per line) or one-shot
 * (`-p PROMPT`: one turn, the answer on stdout, the exit status says how it
 * went); `--json` prints every envelope received as one line for scripts.
 *
 * Design: one thread, one poll() over the WebSocket, stdin (or the terminal
 * for permission answers) and a self-pipe written by the SIGINT handler, so
 * Ctrl-C is an ordinary event: during a turn it sends control{interrupt}, a
 * second one within a second (or one at the prompt) quits.
 *
 * Where things go: the answer text on stdout, always; notes (tool calls,
 * results, reasoning, session notices) on stdout when interactive and on
 * stderr in one-shot mode (so `-p` output is just the answer); errors on
 * stderr. With --json stdout carries only the envelopes.
 *
 * Turns: a turn is ours from the input we send until the first `done` whose
 * seq is above the stream position we had when we sent it; replayed events
 * (seq <= init_ack.last_seq on a resume) are shown but never end a turn or
 * prompt for a permission the session no longer waits for.
 *
 * Resume: the last seq processed per session is saved under
 * $XDG_STATE_HOME/hotplex/chat/<session id> (default ~/.local/state), so
 * `--resume ID` replays exactly what this client missed.
 *
 * Must never: print a credential; leave the terminal waiting on a closed
 * connection; block without polling the signal pipe.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "cli/net.h"
#include "cli/ws.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/json.h"
#include "util/uuid.h"

#define CONNECT_TIMEOUT_MS 10000
#define INIT_TIMEOUT_MS 60000
#define DOUBLE_CTRL_C_MS 1000
#define MAX_PERMS 16
#define MAX_RECONNECTS 3
#define EXIT_SIGINT 130

static const char usage[] =
    "usage: hotplex chat [--url URL] [--worker echo|claude_code] [--session KEY | --resume ID]\n"
    "                    [--api-key KEY | --token JWT] [--work-dir DIR] [--model M]\n"
    "                    [-p PROMPT] [--yes | --no] [--json] [--timeout SECONDS]\n"
    "\n"
    "A terminal client of the gateway. Without -p: type a line at the `> ` prompt, the\n"
    "agent's answer streams back; /quit (or Ctrl-D) leaves. Ctrl-C during a turn interrupts\n"
    "it (the session stays); Ctrl-C twice within a second, or at the prompt, quits.\n"
    "  --url URL         gateway WebSocket, default ws://127.0.0.1:8888/ws ($HOTPLEX_URL);\n"
    "                    wss:// uses TLS (--ca FILE to trust a private CA, --insecure to skip\n"
    "                    certificate checks)\n"
    "  --worker W        agent type: claude_code (default, $HOTPLEX_WORKER) or echo\n"
    "  --session KEY     client key: the same key finds the same session again\n"
    "  --resume ID       attach to session ID and first replay the events this client has\n"
    "                    not seen (position saved per session under ~/.local/state/hotplex;\n"
    "                    --last-seq N overrides it, 0 replays everything still kept)\n"
    "  --api-key KEY     API key, sent as the X-API-Key header ($HOTPLEX_API_KEY)\n"
    "  --token JWT       JWT, sent in init (auth.token) ($HOTPLEX_TOKEN; see `hotplex token`)\n"
    "  --work-dir DIR    the agent's working directory (default: the gateway's)\n"
    "  --model M         model for the agent\n"
    "  -p, --prompt TEXT one-shot: send TEXT as one turn, print the answer, exit\n"
    "                    (TEXT \"-\" reads the prompt from stdin)\n"
    "  --yes, --no       answer permission requests automatically (default: ask on the\n"
    "                    terminal, \"Allow Bash: ...? [y/N]\"; no terminal: deny)\n"
    "  --json            print every envelope received as one JSON line on stdout\n"
    "  --timeout S       one-shot: give up after S seconds (exit 1)\n"
    "  -q, --quiet       no session notices on stderr\n"
    "The session id is printed at the start (stderr) so you can --resume it later.\n"
    "Commands at the prompt: /quit, /session, /reset (fresh agent context), /help.\n"
    "\n"
    "exit status: 0 done (one-shot: the turn succeeded); 1 the turn failed, was interrupted,\n"
    "or timed out; 2 usage, connection or handshake error (unreachable gateway, refused\n"
    "credentials, failed init, connection lost); 130 quit with a double Ctrl-C.\n"
    "examples:\n"
    "  hotplex chat --worker echo\n"
    "  hotplex chat -p \"explain src/main.c\" --work-dir ~/proj --yes\n"
    "  hotplex chat --resume 0b6d1c1e-... \n";

typedef struct perm {
    char id[256];
    char tool[128];
    char *desc;
} perm_t;

typedef struct chat {
    /* options */
    const char *url_s, *worker, *key, *resume, *api_key, *token, *work_dir, *model, *prompt;
    cli_tls_opts_t tls;
    int64_t last_seq_opt;
    bool have_last_seq;
    int auto_answer; /* 0 ask, 1 yes, -1 no */
    bool json, quiet, oneshot;
    int timeout_s;

    cli_url_t url;
    cli_ws_t ws;
    bool connected;
    int reconnects;
    char sid[128];
    int64_t ack_last_seq; /* init_ack.data.last_seq of the current connection */
    int64_t last_seq;     /* highest seq processed */
    int64_t replay_to;    /* > last_seq while a resume replay is still coming */
    bool replay_noted;

    bool prompt_shown, input_sent, turn_active, turn_ok, turn_interrupted;
    int64_t turn_base;

    perm_t perms[MAX_PERMS];
    int nperms;
    bool asking;
    perm_t replayed_perm; /* a request seen in a replay, still open when it ended */
    bool have_replayed_perm;

    FILE *deco;
    bool at_bol, out_tty, color_out, color_err, color_deco;
    char cur_msg[128];
    bool cur_streamed;

    buf_t line; /* stdin bytes not yet consumed */
    bool stdin_eof, stdin_tty;
    int ans_fd; /* where permission answers come from; -1 none, -2 not opened yet */
    buf_t ans;  /* answer bytes when ans_fd is not stdin */
    int64_t last_sigint_ms;
    int64_t deadline_ms;

    json_tok_t *tok;
    int ntok;
    json_doc_t d;
} chat_t;

static int g_sigpipe[2] = {-1, -1};

static void on_sigint(int sig)
{
    (void)sig;
    int e = errno;
    char b = 1;
    if (write(g_sigpipe[1], &b, 1) < 0) { /* pipe full: a Ctrl-C is pending anyway */
    }
    errno = e;
}

/* ---- output ----------------------------------------------------------- */

#define C_DIM "\033[2m"
#define C_RED "\033[1;31m"
#define C_CYAN "\033[36m"
#define C_YEL "\033[33m"
#define C_OFF "\033[0m"

static void out_text(chat_t *c, const char *s, size_t n)
{
    if (c->json || n == 0) return;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
    c->at_bol = s[n - 1] == '\n';
}

/* A finished line on stdout before a note, when they share a screen. */
static void break_line(chat_t *c, FILE *to)
{
    if (c->at_bol) return;
    if (to == stdout || c->out_tty) {
        fputc('\n', stdout);
        fflush(stdout);
        c->at_bol = true;
    }
}

static void vnote(chat_t *c, FILE *to, const char *style, bool newline, const char *fmt, va_list ap)
{
    break_line(c, to);
    bool color = to == stdout ? c->color_out : c->color_err;
    if (color && style) fputs(style, to);
    vfprintf(to, fmt, ap);
    if (color && style) fputs(C_OFF, to);
    if (newline) fputc('\n', to);
    fflush(to);
    if (to == stdout) c->at_bol = newline;
}

/* A decoration line (tool call, result, notice): not part of the answer. */
__attribute__((format(printf, 3, 4))) static void note(chat_t *c, const char *style,
                                                       const char *fmt, ...)
{
    if (c->json) return;
    va_list ap;
    va_start(ap, fmt);
    vnote(c, c->deco, style, true, fmt, ap);
    va_end(ap);
}

/* Session notices on stderr (suppressed by --quiet). */
__attribute__((format(printf, 2, 3))) static void info(chat_t *c, const char *fmt, ...)
{
    if (c->quiet) return;
    va_list ap;
    va_start(ap, fmt);
    vnote(c, stderr, C_DIM, true, fmt, ap);
    va_end(ap);
}

__attribute__((format(printf, 2, 3))) static void fail(chat_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    break_line(c, stderr);
    if (c->color_err) fputs(C_RED, stderr);
    fputs("hotplex chat: ", stderr);
    vfprintf(stderr, fmt, ap);
    if (c->color_err) fputs(C_OFF, stderr);
    fputc('\n', stderr);
    fflush(stderr);
    va_end(ap);
}

/* Copies at most `max` bytes of s, cut at a character boundary, newlines
 * shown as spaces, with "..." when shortened. */
static void shorten(const char *s, size_t n, size_t max, char *out, size_t cap)
{
    size_t k = 0;
    if (max > cap - 4) max = cap - 4;
    size_t i = 0;
    for (; i < n && k < max; i++)
        out[k++] = s[i] == '\n' || s[i] == '\r' ? ' ' : s[i];
    if (i < n) {
        while (k > 0 && ((unsigned char)out[k - 1] & 0xc0) == 0x80)
            k--;
        if (k > 0 && ((unsigned char)out[k - 1] & 0xc0) == 0xc0) k--;
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

/* ---- JSON in ---------------------------------------------------------- */

static int parse(chat_t *c, const char *m, size_t n)
{
    for (;;) {
        int rc = json_parse(&c->d, m, n, c->tok, c->ntok);
        if (rc != -E2BIG || c->ntok >= (1 << 22)) return rc;
        int nn = c->ntok * 4;
        json_tok_t *t = realloc(c->tok, sizeof(*t) * (size_t)nn);
        if (!t) return -ENOMEM;
        c->tok = t;
        c->ntok = nn;
    }
}

static void jcopy(chat_t *c, int obj, const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    int i = json_obj_get(&c->d, obj, key);
    if (i >= 0 && json_type(&c->d, i) == JSON_STR && json_str_copy(&c->d, i, out, cap) < 0)
        out[0] = '\0';
}

static int64_t jint(chat_t *c, int obj, const char *key, int64_t dflt)
{
    int64_t v;
    int i = json_obj_get(&c->d, obj, key);
    return i >= 0 && json_get_i64(&c->d, i, &v) == 0 ? v : dflt;
}

static bool jbool(chat_t *c, int obj, const char *key, bool dflt)
{
    bool v;
    int i = json_obj_get(&c->d, obj, key);
    return i >= 0 && json_get_bool(&c->d, i, &v) == 0 ? v : dflt;
}

/* ---- JSON out --------------------------------------------------------- */

static void env_begin(chat_t *c, jw_t *w, buf_t *b, const char *type)
{
    char id[UUID_STR_LEN + 4] = "evt_";
    uuid_v4(id + 4);
    buf_init(b);
    jw_init(w, b);
    jw_obj_begin(w);
    jw_kstr(w, "version", "aep/v1");
    jw_kstr(w, "id", id);
    if (c->sid[0]) jw_kstr(w, "session_id", c->sid);
    jw_kint(w, "timestamp", clock_unix_ms());
    jw_key(w, "event");
    jw_obj_begin(w);
    jw_kstr(w, "type", type);
    jw_key(w, "data");
    jw_obj_begin(w);
}

static int env_send(chat_t *c, jw_t *w, buf_t *b)
{
    jw_obj_end(w);
    jw_obj_end(w);
    jw_obj_end(w);
    int rc = jw_error(w);
    if (rc == 0) rc = cli_ws_send_text(&c->ws, b->p, b->len);
    buf_free(b);
    if (rc < 0 && !c->ws.closed) fail(c, "sending to the gateway failed: %s", strerror(-rc));
    return rc;
}

static int send_control(chat_t *c, const char *action)
{
    jw_t w;
    buf_t b;
    env_begin(c, &w, &b, "control");
    jw_kstr(&w, "action", action);
    return env_send(c, &w, &b);
}

static int send_input(chat_t *c, const char *text)
{
    jw_t w;
    buf_t b;
    env_begin(c, &w, &b, "input");
    jw_kstr(&w, "content", text);
    int rc = env_send(c, &w, &b);
    if (rc == 0) {
        c->turn_active = true;
        c->turn_ok = false;
        c->turn_interrupted = false;
        c->turn_base = c->last_seq > c->ack_last_seq ? c->last_seq : c->ack_last_seq;
        c->input_sent = true;
    }
    return rc;
}

static int send_permission(chat_t *c, const char *id, bool allow)
{
    jw_t w;
    buf_t b;
    env_begin(c, &w, &b, "permission_response");
    jw_kstr(&w, "id", id);
    jw_kbool(&w, "allowed", allow);
    if (!allow) jw_kstr(&w, "reason", "denied by the user");
    return env_send(c, &w, &b);
}

/* ---- state file ------------------------------------------------------- */

static bool safe_id(const char *s)
{
    if (!s[0] || strlen(s) > 100) return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_'))
            return false;
    return true;
}

static int state_path(const char *sid, char *out, size_t cap, bool mk)
{
    const char *x = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    char dir[800];
    if (x && x[0] == '/')
        snprintf(dir, sizeof(dir), "%s/hotplex", x);
    else if (home && home[0])
        snprintf(dir, sizeof(dir), "%s/.local/state/hotplex", home);
    else
        return -1;
    if (!safe_id(sid)) return -1;
    if (mk) {
        /* mkdir -p of the last levels */
        char p[900];
        snprintf(p, sizeof(p), "%s", dir);
        for (char *s = p + 1; *s; s++)
            if (*s == '/') {
                *s = '\0';
                mkdir(p, 0700);
                *s = '/';
            }
        mkdir(p, 0700);
        snprintf(p, sizeof(p), "%s/chat", dir);
        mkdir(p, 0700);
    }
    snprintf(out, cap, "%s/chat/%s", dir, sid);
    return 0;
}

static void state_save(chat_t *c)
{
    char path[1024], tmp[1100];
    if (!c->sid[0] || c->last_seq <= 0 || state_path(c->sid, path, sizeof(path), true) < 0) return;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "%lld\n", (long long)c->last_seq);
    if (fclose(f) == 0)
        rename(tmp, path);
    else
        unlink(tmp);
}

static int64_t state_load(const char *sid)
{
    char path[1024];
    if (state_path(sid, path, sizeof(path), false) < 0) return -1;
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long long v = -1;
    if (fscanf(f, "%lld", &v) != 1) v = -1;
    fclose(f);
    return v;
}

/* ---- permissions ------------------------------------------------------ */

static void perm_pop(chat_t *c)
{
    if (c->nperms == 0) return;
    free(c->perms[0].desc);
    memmove(c->perms, c->perms + 1, sizeof(perm_t) * (size_t)(c->nperms - 1));
    c->nperms--;
}

static void perms_clear(chat_t *c)
{
    while (c->nperms)
        perm_pop(c);
    c->asking = false;
}

/* The fd permission answers are read from: stdin when interactive or when it
 * is a terminal, else the controlling terminal; -1 when there is none. */
static int answer_fd(chat_t *c)
{
    if (c->ans_fd != -2) return c->ans_fd;
    if (!c->oneshot || c->stdin_tty)
        c->ans_fd = 0;
    else
        c->ans_fd = open("/dev/tty", O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (c->ans_fd < 0) c->ans_fd = -1;
    return c->ans_fd;
}

static FILE *ask_stream(chat_t *c)
{
    return c->oneshot || c->json ? stderr : stdout;
}

static void ask_next(chat_t *c)
{
    while (!c->asking && c->nperms > 0) {
        perm_t *p = &c->perms[0];
        FILE *to = ask_stream(c);
        break_line(c, to);
        bool color = to == stdout ? c->color_out : c->color_err;
        fprintf(to, "%sAllow %s: %s? [y/N] %s", color ? C_YEL : "", p->tool, p->desc,
                color ? C_OFF : "");
        fflush(to);
        if (to == stdout) c->at_bol = false;
        int fd = c->auto_answer ? 0 : answer_fd(c);
        if (c->auto_answer || fd < 0) {
            bool allow = c->auto_answer > 0;
            fprintf(to, "%s\n",
                    c->auto_answer > 0   ? "y (--yes)"
                    : c->auto_answer < 0 ? "n (--no)"
                                         : "n (no terminal to ask; see --yes)");
            fflush(to);
            if (to == stdout) c->at_bol = true;
            send_permission(c, p->id, allow);
            perm_pop(c);
            continue;
        }
        c->asking = true;
    }
}

static void answer(chat_t *c, const char *line)
{
    if (!c->asking || c->nperms == 0) return;
    while (*line == ' ' || *line == '\t')
        line++;
    bool allow = line[0] == 'y' || line[0] == 'Y';
    FILE *to = ask_stream(c);
    bool echoed = answer_fd(c) != 0 || c->stdin_tty; /* a terminal echoed the line */
    if (!echoed) {
        fprintf(to, "%s\n", allow ? "y" : "n");
        fflush(to);
    }
    if (to == stdout) c->at_bol = true;
    send_permission(c, c->perms[0].id, allow);
    perm_pop(c);
    c->asking = false;
    ask_next(c);
}

static void perm_add(chat_t *c, const char *id, const char *tool, const char *desc)
{
    if (c->nperms == MAX_PERMS) { /* the agent asks faster than anyone answers */
        send_permission(c, id, false);
        return;
    }
    perm_t *p = &c->perms[c->nperms++];
    snprintf(p->id, sizeof(p->id), "%s", id);
    snprintf(p->tool, sizeof(p->tool), "%s", tool[0] ? tool : "tool");
    p->desc = strdup(desc);
    if (!p->desc) p->desc = strdup("");
    ask_next(c);
}

/* ---- events ----------------------------------------------------------- */

static void show_tool_call(chat_t *c, int data)
{
    char name[128];
    jcopy(c, data, "name", name, sizeof(name));
    int in = json_obj_get(&c->d, data, "input");
    size_t n = 0;
    const char *raw = in >= 0 ? json_raw(&c->d, in, &n) : NULL;
    char s[400];
    shorten(raw ? raw : "{}", raw ? n : 2, 300, s, sizeof(s));
    note(c, C_CYAN, "[tool %s] %s", name[0] ? name : "?", s);
}

static void show_tool_result(chat_t *c, int data)
{
    int o = json_obj_get(&c->d, data, "output");
    int e = json_obj_get(&c->d, data, "error");
    bool is_err = false;
    if (e >= 0) {
        bool b;
        if (json_get_bool(&c->d, e, &b) == 0)
            is_err = b;
        else if (json_type(&c->d, e) == JSON_STR)
            is_err = true;
        else
            is_err = !json_is_null(&c->d, e);
    }
    char s[300];
    if (o >= 0 && json_type(&c->d, o) == JSON_STR) {
        char *t = NULL;
        int n = json_str_dup(&c->d, o, &t);
        if (n < 0) {
            snprintf(s, sizeof(s), "(unreadable)");
        } else {
            int lines = 0;
            for (int i = 0; i < n; i++)
                lines += t[i] == '\n';
            if (n > 0 && t[n - 1] == '\n') lines--;
            size_t first = strcspn(t, "\n");
            char head[240];
            shorten(t, first, 200, head, sizeof(head));
            if (lines > 0)
                snprintf(s, sizeof(s), "%s (+%d more lines)", head, lines);
            else
                snprintf(s, sizeof(s), "%s", head);
        }
        free(t);
    } else {
        size_t n = 0;
        const char *raw = o >= 0 ? json_raw(&c->d, o, &n) : NULL;
        shorten(raw ? raw : "", raw ? n : 0, 200, s, sizeof(s));
    }
    note(c, C_DIM, "[result%s] %s", is_err ? " error" : "", s);
}

static void end_turn(chat_t *c, bool ok, bool interrupted)
{
    c->turn_active = false;
    c->turn_ok = ok;
    c->turn_interrupted = interrupted;
    if (c->asking) {
        FILE *to = ask_stream(c);
        fputc('\n', to);
        if (to == stdout) c->at_bol = true;
    }
    perms_clear(c);
    if (!ok) note(c, C_YEL, interrupted ? "[interrupted]" : "[turn failed]");
    state_save(c);
}

static void on_event(chat_t *c, const char *m, size_t n)
{
    if (c->json) {
        fwrite(m, 1, n, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    if (parse(c, m, n) < 0 || json_type(&c->d, 0) != JSON_OBJ) {
        fail(c, "the gateway sent a message that is not a JSON object; ignored");
        return;
    }
    int ev = json_obj_get(&c->d, 0, "event");
    int data = json_obj_get(&c->d, ev, "data");
    char type[64];
    jcopy(c, ev, "type", type, sizeof(type));
    int64_t seq = jint(c, 0, "seq", 0);
    if (seq > c->last_seq) c->last_seq = seq;
    bool replayed = seq <= c->ack_last_seq;
    bool was_replaying = c->replay_to > 0;

    if (strcmp(type, "message.start") == 0) {
        jcopy(c, data, "id", c->cur_msg, sizeof(c->cur_msg));
        c->cur_streamed = false;
        if (replayed) c->have_replayed_perm = false;
    } else if (strcmp(type, "message.delta") == 0) {
        char id[128];
        jcopy(c, data, "message_id", id, sizeof(id));
        if (strcmp(id, c->cur_msg) != 0) snprintf(c->cur_msg, sizeof(c->cur_msg), "%s", id);
        c->cur_streamed = true;
        int i = json_obj_get(&c->d, data, "content");
        char *t = NULL;
        int len = i >= 0 ? json_str_dup(&c->d, i, &t) : -1;
        if (len > 0) out_text(c, t, (size_t)len);
        free(t);
    } else if (strcmp(type, "message.end") == 0) {
        if (c->cur_streamed && !c->json) break_line(c, stdout);
    } else if (strcmp(type, "message") == 0) {
        char id[128];
        jcopy(c, data, "id", id, sizeof(id));
        if (!(c->cur_streamed && strcmp(id, c->cur_msg) == 0)) {
            int i = json_obj_get(&c->d, data, "content");
            char *t = NULL;
            int len = i >= 0 ? json_str_dup(&c->d, i, &t) : -1;
            if (len > 0) {
                out_text(c, t, (size_t)len);
                if (!c->json) break_line(c, stdout);
            }
            free(t);
        }
        c->cur_streamed = false;
        c->cur_msg[0] = '\0';
    } else if (strcmp(type, "reasoning") == 0) {
        int i = json_obj_get(&c->d, data, "content");
        char *t = NULL;
        int len = i >= 0 ? json_str_dup(&c->d, i, &t) : -1;
        if (len > 0) {
            char s[1100];
            shorten(t, (size_t)len, 1000, s, sizeof(s));
            note(c, C_DIM, "(thinking) %s", s);
        }
        free(t);
    } else if (strcmp(type, "tool_call") == 0) {
        show_tool_call(c, data);
    } else if (strcmp(type, "tool_result") == 0) {
        show_tool_result(c, data);
        if (replayed) c->have_replayed_perm = false;
    } else if (strcmp(type, "permission_request") == 0) {
        char id[256], tool[128], desc[512];
        jcopy(c, data, "id", id, sizeof(id));
        jcopy(c, data, "tool_name", tool, sizeof(tool));
        jcopy(c, data, "description", desc, sizeof(desc));
        int in = json_obj_get(&c->d, data, "input");
        if (!desc[0]) {
            size_t rn = 0;
            const char *raw = in >= 0 ? json_raw(&c->d, in, &rn) : NULL;
            shorten(raw ? raw : "", raw ? rn : 0, 300, desc, sizeof(desc));
        } else {
            /* what is being approved: the command or file, unless the
             * description already says it */
            char what[256] = "";
            jcopy(c, in, "command", what, sizeof(what));
            if (!what[0]) jcopy(c, in, "file_path", what, sizeof(what));
            if (what[0] && !strstr(desc, what)) {
                char s2[200];
                shorten(what, strlen(what), 150, s2, sizeof(s2));
                size_t dl = strlen(desc);
                snprintf(desc + dl, sizeof(desc) - dl, " (%s)", s2);
            }
        }
        if (replayed) {
            perm_t *p = &c->replayed_perm;
            free(p->desc);
            snprintf(p->id, sizeof(p->id), "%s", id);
            snprintf(p->tool, sizeof(p->tool), "%s", tool);
            p->desc = strdup(desc);
            c->have_replayed_perm = p->desc != NULL;
            note(c, C_DIM, "[permission requested: %s: %s]", tool, desc);
        } else {
            perm_add(c, id, tool, desc);
        }
    } else if (strcmp(type, "question_request") == 0 || strcmp(type, "elicitation_request") == 0) {
        note(c, C_YEL, "[%s: this client cannot answer it]", type);
    } else if (strcmp(type, "done") == 0) {
        int st = json_obj_get(&c->d, data, "stats");
        bool ok = jbool(c, data, "success", false);
        bool intr = jbool(c, st, "interrupted", false);
        if (replayed) c->have_replayed_perm = false;
        if (c->turn_active && seq > c->turn_base)
            end_turn(c, ok, intr);
        else if (!ok)
            note(c, C_DIM, intr ? "[interrupted]" : "[turn failed]");
    } else if (strcmp(type, "error") == 0) {
        char code[64], msg[1024];
        jcopy(c, data, "code", code, sizeof(code));
        jcopy(c, data, "message", msg, sizeof(msg));
        if (!c->json) {
            break_line(c, stderr);
            if (c->color_err) fputs(C_RED, stderr);
            fprintf(stderr, "error: %s: %s", code, msg);
            if (c->color_err) fputs(C_OFF, stderr);
            fputc('\n', stderr);
            fflush(stderr);
        }
        /* an input refused outright gets no done */
        if (c->turn_active &&
            (strcmp(code, "RATE_LIMITED") == 0 || strcmp(code, "SESSION_BUSY") == 0 ||
             strcmp(code, "UNAUTHORIZED") == 0))
            end_turn(c, false, false);
    } else if (strcmp(type, "state") == 0) {
        char st[32], msg[512];
        jcopy(c, data, "state", st, sizeof(st));
        jcopy(c, data, "message", msg, sizeof(msg));
        if (strcmp(st, "terminated") == 0 || strcmp(st, "deleted") == 0 ||
            strcmp(msg, "context_reset") == 0)
            note(c, C_DIM, "[session %s%s%s]", st, msg[0] ? ": " : "", msg);
    } else if (strcmp(type, "control") == 0) {
        char action[64];
        jcopy(c, data, "action", action, sizeof(action));
        if (strcmp(action, "resync") == 0)
            note(c, C_YEL, "[older events are no longer kept; the replay starts at seq %lld]",
                 (long long)jint(c, data, "from_seq", 0));
        else
            note(c, C_DIM, "[control %s]", action);
    }

    if (was_replaying && c->last_seq >= c->replay_to) {
        c->replay_to = 0;
        info(c, "[end of replay; live from here]");
        if (c->have_replayed_perm) { /* the session still waits for this answer */
            perm_t *p = &c->replayed_perm;
            c->have_replayed_perm = false;
            perm_add(c, p->id, p->tool, p->desc ? p->desc : "");
        }
    }
}

/* ---- connection ------------------------------------------------------- */

/* Sends init and waits for init_ack. 0, or an exit status. */
static int connect_init(chat_t *c, bool resume, int64_t from)
{
    char err[1024];
    const char *hdrs[3] = {NULL, NULL, NULL};
    char hk[2048];
    if (c->api_key && c->api_key[0]) {
        snprintf(hk, sizeof(hk), "X-API-Key: %s", c->api_key);
        hdrs[0] = hk;
    }
    int rc = cli_ws_connect(&c->ws, &c->url, hdrs, &c->tls, CONNECT_TIMEOUT_MS, err, sizeof(err));
    memset(hk, 0, sizeof(hk));
    if (rc < 0) {
        fail(c, "%s (%s)", err, c->url_s);
        cli_ws_free(&c->ws);
        return CLI_USAGE;
    }
    c->connected = true;
    /* from here on Ctrl-C is an event of the loop (before, it just ends the process) */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    jw_t w;
    buf_t b;
    char keep_sid[128];
    snprintf(keep_sid, sizeof(keep_sid), "%s", c->sid);
    c->sid[0] = '\0';
    env_begin(c, &w, &b, "init");
    snprintf(c->sid, sizeof(c->sid), "%s", keep_sid);
    jw_kstr(&w, "version", "aep/v1");
    jw_kstr(&w, "worker_type", c->worker);
    const char *key = c->sid[0] ? c->sid : c->resume ? c->resume : c->key;
    if (key && key[0]) jw_kstr(&w, "session_id", key);
    if ((c->work_dir && c->work_dir[0]) || (c->model && c->model[0])) {
        jw_key(&w, "config");
        jw_obj_begin(&w);
        if (c->work_dir && c->work_dir[0]) jw_kstr(&w, "work_dir", c->work_dir);
        if (c->model && c->model[0]) jw_kstr(&w, "model", c->model);
        jw_obj_end(&w);
    }
    if (resume) jw_kint(&w, "last_seq", from);
    if (c->token && c->token[0]) {
        jw_key(&w, "auth");
        jw_obj_begin(&w);
        jw_kstr(&w, "token", c->token);
        jw_obj_end(&w);
    }
    if (env_send(c, &w, &b) < 0) return CLI_USAGE;

    int64_t deadline = cli_now_ms() + INIT_TIMEOUT_MS;
    for (;;) {
        const char *m;
        size_t n;
        int r = cli_ws_read(&c->ws, &m, &n);
        if (r < 0) {
            fail(c, "the gateway closed the connection during the handshake (%d %s)",
                 c->ws.close_code, c->ws.close_reason);
            return CLI_USAGE;
        }
        if (r == 1) {
            if (c->json) {
                fwrite(m, 1, n, stdout);
                fputc('\n', stdout);
                fflush(stdout);
            }
            if (parse(c, m, n) < 0) {
                fail(c, "the gateway's first message is not JSON");
                return CLI_USAGE;
            }
            int ev = json_obj_get(&c->d, 0, "event");
            int data = json_obj_get(&c->d, ev, "data");
            if (!json_str_eq(&c->d, json_obj_get(&c->d, ev, "type"), "init_ack")) {
                fail(c, "the gateway's first message is not init_ack");
                return CLI_USAGE;
            }
            char state[32], code[64], msg[512];
            jcopy(c, data, "state", state, sizeof(state));
            jcopy(c, data, "code", code, sizeof(code));
            if (code[0] || strcmp(state, "deleted") == 0) {
                jcopy(c, data, "error", msg, sizeof(msg));
                fail(c, "init refused: %s: %s", code[0] ? code : "?", msg);
                return CLI_USAGE;
            }
            jcopy(c, data, "session_id", c->sid, sizeof(c->sid));
            c->ack_last_seq = jint(c, data, "last_seq", 0);
            int64_t seq = jint(c, 0, "seq", 0);
            if (resume && seq > c->last_seq) c->last_seq = seq;
            c->replay_to = resume && c->ack_last_seq > from ? c->ack_last_seq : 0;
            return 0;
        }
        int64_t left = deadline - cli_now_ms();
        struct pollfd pf[2] = {{.fd = cli_ws_fd(&c->ws), .events = POLLIN},
                               {.fd = g_sigpipe[0], .events = POLLIN}};
        int pn = left <= 0 ? 0 : poll(pf, 2, cli_ws_ready(&c->ws) ? 0 : (int)left);
        if (pn < 0 && errno == EINTR) continue;
        if (pn == 0 && left <= 0) {
            fail(c, "no init_ack within %d s", INIT_TIMEOUT_MS / 1000);
            return CLI_USAGE;
        }
        if (pn > 0 && (pf[1].revents & POLLIN)) return EXIT_SIGINT;
    }
}

static int reconnect(chat_t *c)
{
    info(c, "[connection closed (%d %s); resuming after seq %lld]", c->ws.close_code,
         c->ws.close_reason, (long long)c->last_seq);
    cli_ws_free(&c->ws);
    c->connected = false;
    c->reconnects++;
    return connect_init(c, true, c->last_seq);
}

/* ---- the loop --------------------------------------------------------- */

static bool take_line(buf_t *b, char *out, size_t cap, bool eof)
{
    if (b->len == 0) return false;
    char *nl = memchr(b->p, '\n', b->len);
    if (!nl && !eof) return false;
    size_t n = nl ? (size_t)(nl - b->p) : b->len;
    size_t k = n < cap - 1 ? n : cap - 1;
    memcpy(out, b->p, k);
    out[k] = '\0';
    if (k > 0 && out[k - 1] == '\r') out[k - 1] = '\0';
    size_t used = nl ? n + 1 : n;
    memmove(b->p, b->p + used, b->len - used);
    b->len -= used;
    b->p[b->len] = '\0';
    return true;
}

static void show_prompt(chat_t *c)
{
    if (c->prompt_shown) return;
    c->prompt_shown = true;
    if (!c->stdin_tty) return;
    FILE *to = c->json ? stderr : stdout;
    break_line(c, to);
    fputs("> ", to);
    fflush(to);
    if (to == stdout) c->at_bol = false;
}

/* A line typed at the prompt. -1: quit; -2: the input could not be sent. */
static int prompt_line(chat_t *c, const char *line)
{
    c->prompt_shown = false;
    if (c->stdin_tty) c->at_bol = true; /* the terminal echoed the newline */
    while (*line == ' ' || *line == '\t')
        line++;
    if (!line[0]) return 0;
    if (strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0 || strcmp(line, "/q") == 0)
        return -1;
    if (strcmp(line, "/help") == 0) {
        note(c, NULL,
             "/quit  leave (the session stays; --resume %s)\n"
             "/session  show the session id\n"
             "/reset  give the agent a fresh context in this session\n"
             "Ctrl-C  interrupt the running turn",
             c->sid);
        return 0;
    }
    if (strcmp(line, "/session") == 0) {
        note(c, NULL, "session %s (last seq %lld)", c->sid, (long long)c->last_seq);
        return 0;
    }
    if (strcmp(line, "/reset") == 0) {
        send_control(c, "reset");
        return 0;
    }
    if (line[0] == '/' && strchr(line, ' ') == NULL && strlen(line) < 20) {
        note(c, C_YEL, "unknown command %s (/help lists them)", line);
        return 0;
    }
    return send_input(c, line) < 0 ? -2 : 0;
}

static int on_sigint_event(chat_t *c)
{
    int64_t now = cli_now_ms();
    if (c->last_sigint_ms && now - c->last_sigint_ms < DOUBLE_CTRL_C_MS) {
        break_line(c, stderr);
        return EXIT_SIGINT; /* a double Ctrl-C, wherever it lands */
    }
    if (!c->turn_active && !c->asking && !c->oneshot) {
        FILE *to = c->json ? stderr : stdout;
        fputc('\n', to);
        if (to == stdout) c->at_bol = true;
        return 0; /* at the prompt: quit */
    }
    c->last_sigint_ms = now;
    if (c->asking) {
        for (int i = 0; i < c->nperms; i++)
            send_permission(c, c->perms[i].id, false);
        FILE *to = ask_stream(c);
        fputc('\n', to);
        if (to == stdout) c->at_bol = true;
        perms_clear(c);
    }
    if (!c->turn_active && !c->input_sent) return EXIT_SIGINT;
    send_control(c, "interrupt");
    info(c, "[interrupting the turn; Ctrl-C again within a second quits]");
    return -1;
}

static int run(chat_t *c)
{
    bool resume = c->resume != NULL;
    int64_t from = 0;
    if (resume) {
        from = c->have_last_seq ? c->last_seq_opt : state_load(c->resume);
        if (from < 0) {
            info(c, "[no saved position for session %s: replaying everything still kept]",
                 c->resume);
            from = 0;
        }
        c->last_seq = from;
    }
    int rc = connect_init(c, resume, from);
    if (rc) return rc;
    info(c, "session %s  (resume: hotplex chat --resume %s)", c->sid, c->sid);
    if (c->replay_to) {
        info(c, "[replaying what you missed: seq %lld..%lld]", (long long)from + 1,
             (long long)c->replay_to);
    }
    if (c->timeout_s > 0) c->deadline_ms = cli_now_ms() + (int64_t)c->timeout_s * 1000;

    char line[65536];
    for (;;) {
        /* what to do next, when nothing is in flight */
        if (!c->replay_to && !c->turn_active && !c->asking) {
            if (c->oneshot) {
                if (!c->input_sent) {
                    if (send_input(c, c->prompt) < 0) return CLI_USAGE;
                    continue;
                }
                return c->turn_ok ? CLI_OK : CLI_FAIL;
            }
            show_prompt(c);
            if (take_line(&c->line, line, sizeof(line), c->stdin_eof)) {
                int q = prompt_line(c, line);
                if (q == -1) return CLI_OK;
                if (q == -2) {
                    fail(c,
                         "the connection to the gateway is gone; resume with: hotplex chat "
                         "--resume %s",
                         c->sid);
                    return CLI_USAGE;
                }
                continue;
            }
            if (c->stdin_eof) {
                if (c->stdin_tty) {
                    fputc('\n', stdout);
                    c->at_bol = true;
                }
                return CLI_OK;
            }
        }
        if (c->asking) {
            int fd = answer_fd(c);
            buf_t *src = fd == 0 ? &c->line : &c->ans;
            bool eof = fd == 0 && c->stdin_eof;
            if (take_line(src, line, sizeof(line), eof)) {
                answer(c, line);
                continue;
            }
            if (eof) {
                answer(c, "n");
                continue;
            }
        }

        struct pollfd pf[4];
        int np = 0;
        pf[np++] = (struct pollfd){.fd = cli_ws_fd(&c->ws), .events = POLLIN};
        pf[np++] = (struct pollfd){.fd = g_sigpipe[0], .events = POLLIN};
        int in_i = -1, ans_i = -1;
        bool want_stdin = !c->stdin_eof && ((!c->oneshot && !c->turn_active && !c->replay_to) ||
                                            (c->asking && answer_fd(c) == 0));
        if (want_stdin) {
            in_i = np;
            pf[np++] = (struct pollfd){.fd = 0, .events = POLLIN};
        }
        if (c->asking && answer_fd(c) > 0) {
            ans_i = np;
            pf[np++] = (struct pollfd){.fd = answer_fd(c), .events = POLLIN};
        }
        int timeout = cli_ws_ready(&c->ws) ? 0 : -1;
        if (c->deadline_ms) {
            int64_t left = c->deadline_ms - cli_now_ms();
            if (left <= 0) {
                if (c->turn_active) send_control(c, "interrupt");
                fail(c, "no complete answer within %d s", c->timeout_s);
                return CLI_FAIL;
            }
            if (timeout < 0 || left < timeout) timeout = (int)left;
        }
        int pn = poll(pf, (nfds_t)np, timeout);
        if (pn < 0) {
            if (errno == EINTR) continue;
            fail(c, "poll: %s", strerror(errno));
            return CLI_USAGE;
        }
        if (pf[1].revents & POLLIN) {
            char tmp[64];
            ssize_t r = read(g_sigpipe[0], tmp, sizeof(tmp));
            (void)r;
            int q = on_sigint_event(c);
            if (q >= 0) return q;
        }
        if ((pf[0].revents & (POLLIN | POLLHUP | POLLERR)) || cli_ws_ready(&c->ws)) {
            for (;;) {
                const char *m;
                size_t n;
                int r = cli_ws_read(&c->ws, &m, &n);
                if (r == 1) {
                    on_event(c, m, n);
                    continue;
                }
                if (r == 0) break;
                /* closed */
                if (c->ws.close_code == 1013 && c->reconnects < MAX_RECONNECTS) {
                    int q = reconnect(c);
                    if (q) return q;
                    break;
                }
                const char *why = c->ws.close_code == 1001 ? "the gateway is shutting down"
                                  : c->ws.close_code == 1008
                                      ? "another connection replaced this one"
                                  : c->ws.close_code == 1000 ? "closed by the gateway"
                                                             : "connection lost";
                fail(c, "%s (close %d%s%s); resume with: hotplex chat --resume %s", why,
                     c->ws.close_code, c->ws.close_reason[0] ? " " : "", c->ws.close_reason,
                     c->sid);
                return CLI_USAGE;
            }
        }
        if (in_i >= 0 && (pf[in_i].revents & (POLLIN | POLLHUP | POLLERR))) {
            char tmp[4096];
            ssize_t r = read(0, tmp, sizeof(tmp));
            if (r > 0)
                buf_append(&c->line, tmp, (size_t)r);
            else if (r == 0 || (errno != EINTR && errno != EAGAIN))
                c->stdin_eof = true;
        }
        if (ans_i >= 0 && (pf[ans_i].revents & (POLLIN | POLLHUP | POLLERR))) {
            char tmp[1024];
            ssize_t r = read(c->ans_fd, tmp, sizeof(tmp));
            if (r > 0)
                buf_append(&c->ans, tmp, (size_t)r);
            else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                close(c->ans_fd);
                c->ans_fd = -1;
                answer(c, "n");
            }
        }
    }
}

static char *read_all_stdin(void)
{
    buf_t b;
    buf_init(&b);
    char tmp[65536];
    ssize_t r;
    while ((r = read(0, tmp, sizeof(tmp))) > 0)
        buf_append(&b, tmp, (size_t)r);
    while (b.len && (b.p[b.len - 1] == '\n' || b.p[b.len - 1] == '\r'))
        b.p[--b.len] = '\0';
    return buf_steal(&b, NULL);
}

int cmd_chat(int argc, char **argv)
{
    static chat_t chat;
    chat_t *c = &chat;
    memset(c, 0, sizeof(*c));
    c->url_s = getenv("HOTPLEX_URL");
    if (!c->url_s || !c->url_s[0]) c->url_s = "ws://127.0.0.1:8888/ws";
    c->worker = getenv("HOTPLEX_WORKER");
    if (!c->worker || !c->worker[0]) c->worker = "claude_code";
    c->api_key = getenv("HOTPLEX_API_KEY");
    c->token = getenv("HOTPLEX_TOKEN");
    c->ans_fd = -2;
    const char *last_seq_s = NULL, *timeout_s = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) {
            fputs(usage, stdout);
            return CLI_OK;
        }
        if (strcmp(a, "--yes") == 0 || strcmp(a, "-y") == 0) {
            c->auto_answer = 1;
            continue;
        }
        if (strcmp(a, "--no") == 0) {
            c->auto_answer = -1;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            c->json = true;
            continue;
        }
        if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            c->quiet = true;
            continue;
        }
        if (strcmp(a, "--insecure") == 0 || strcmp(a, "-k") == 0) {
            c->tls.insecure = true;
            continue;
        }
        int r = cli_optval(argc, argv, &i, "--url", &c->url_s);
        if (r == 0) r = cli_optval(argc, argv, &i, "--worker", &c->worker);
        if (r == 0) r = cli_optval(argc, argv, &i, "--session", &c->key);
        if (r == 0) r = cli_optval(argc, argv, &i, "--resume", &c->resume);
        if (r == 0) r = cli_optval(argc, argv, &i, "--last-seq", &last_seq_s);
        if (r == 0) r = cli_optval(argc, argv, &i, "--api-key", &c->api_key);
        if (r == 0) r = cli_optval(argc, argv, &i, "--token", &c->token);
        if (r == 0) r = cli_optval(argc, argv, &i, "--work-dir", &c->work_dir);
        if (r == 0) r = cli_optval(argc, argv, &i, "--model", &c->model);
        if (r == 0) r = cli_optval(argc, argv, &i, "--prompt", &c->prompt);
        if (r == 0) r = cli_optval(argc, argv, &i, "-p", &c->prompt);
        if (r == 0) r = cli_optval(argc, argv, &i, "--timeout", &timeout_s);
        if (r == 0) r = cli_optval(argc, argv, &i, "--ca", &c->tls.ca_file);
        if (r == 1) continue;
        fprintf(stderr, "hotplex chat: unknown or incomplete option \"%s\"\n\n%s", a, usage);
        return CLI_USAGE;
    }
    char err[512];
    if (cli_url_parse(c->url_s, &c->url, err, sizeof(err)) < 0 ||
        (strcmp(c->url.scheme, "ws") != 0 && strcmp(c->url.scheme, "wss") != 0)) {
        fprintf(stderr, "hotplex chat: --url wants ws://HOST:PORT/ws or wss://...: %s\n", c->url_s);
        return CLI_USAGE;
    }
    if (c->key && c->resume) {
        fprintf(stderr, "hotplex chat: --session and --resume exclude each other\n");
        return CLI_USAGE;
    }
    if (last_seq_s) {
        char *e = NULL;
        long long v = strtoll(last_seq_s, &e, 10);
        if (!e || *e || v < 0 || !c->resume) {
            fprintf(stderr, "hotplex chat: --last-seq wants a number >= 0 and --resume ID\n");
            return CLI_USAGE;
        }
        c->last_seq_opt = v;
        c->have_last_seq = true;
    }
    if (timeout_s) {
        char *e = NULL;
        long v = strtol(timeout_s, &e, 10);
        if (!e || *e || v < 0 || v > 86400 * 365) {
            fprintf(stderr, "hotplex chat: --timeout wants seconds\n");
            return CLI_USAGE;
        }
        c->timeout_s = (int)v;
    }
    c->stdin_tty = isatty(0);
    c->oneshot = c->prompt != NULL;
    if (c->oneshot && strcmp(c->prompt, "-") == 0) {
        c->prompt = read_all_stdin();
        c->stdin_tty = false;
        c->stdin_eof = true;
    }
    if (c->oneshot && !c->prompt[0]) {
        fprintf(stderr, "hotplex chat: the prompt is empty\n");
        return CLI_USAGE;
    }
    c->out_tty = isatty(1);
    c->color_out = cli_color_ok(1);
    c->color_err = cli_color_ok(2);
    c->deco = c->oneshot ? stderr : stdout;
    c->at_bol = true;
    c->ntok = 256;
    c->tok = malloc(sizeof(json_tok_t) * (size_t)c->ntok);
    buf_init(&c->line);
    buf_init(&c->ans);

    if (pipe2(g_sigpipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        perror("hotplex chat: pipe");
        return CLI_USAGE;
    }
    signal(SIGPIPE, SIG_IGN);

    int rc = run(c);

    state_save(c);
    if (c->connected && !c->ws.closed)
        cli_ws_close(&c->ws, 1000, "bye", rc == EXIT_SIGINT ? 200 : 1000);
    if (c->connected) cli_ws_free(&c->ws);
    perms_clear(c);
    free(c->replayed_perm.desc);
    free(c->tok);
    buf_free(&c->line);
    buf_free(&c->ans);
    if (c->ans_fd > 0) close(c->ans_fd);
    close(g_sigpipe[0]);
    close(g_sigpipe[1]);
    signal(SIGINT, SIG_DFL);
    return rc;
}
