/*
 * sessions.c - `hotplex sessions list|show|terminate|delete`: a client of
 * the admin HTTP API (GET /admin/sessions, GET /admin/sessions/{id},
 * POST /admin/sessions/{id}/terminate, DELETE /admin/sessions/{id}; bearer
 * admin token). Prints a table, key: value lines, or the JSON as received.
 * Must never: print the admin token.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "cli/net.h"
#include "util/buf.h"
#include "util/json.h"

#define HTTP_TIMEOUT_MS 15000
#define MAX_PAGES 10000

static const char usage[] =
    "usage: hotplex sessions list [--user U] [--state S] [--limit N] [--cursor C] [options]\n"
    "       hotplex sessions show ID [options]\n"
    "       hotplex sessions terminate ID [options]\n"
    "       hotplex sessions delete ID [options]\n"
    "\n"
    "Talks to the gateway's admin API.\n"
    "  list       sessions as a table: id, user, worker, state, last_seq, updated; every\n"
    "             page unless --limit N (then one page; the next cursor is printed on stderr)\n"
    "  show       every field of one session\n"
    "  terminate  stop the session's agent (the session stays and can be resumed)\n"
    "  delete     remove the session and its history\n"
    "options:\n"
    "  --admin-url URL    admin API, default http://127.0.0.1:9999 ($HOTPLEX_ADMIN_URL)\n"
    "  --admin-token T    bearer token from admin.tokens_file ($HOTPLEX_ADMIN_TOKEN)\n"
    "  --user U, --state S  list only the sessions of user U / in state S\n"
    "                     (created, running, idle, terminated, deleted)\n"
    "  --json             print the API's JSON instead of a table\n"
    "  --ca FILE, --insecure  TLS options for an https:// admin URL\n"
    "\n"
    "exit status: 0 ok; 1 the API answered with an error (unknown session, bad token, ...);\n"
    "2 usage error or the admin API could not be reached.\n"
    "examples:\n"
    "  HOTPLEX_ADMIN_TOKEN=... hotplex sessions list --state running\n"
    "  hotplex sessions terminate 0b6d1c1e-3f7a-4c1e-9d3b-2a6f1e0c9b7d\n";

typedef struct sess_args {
    cli_url_t base;
    const char *token;
    cli_tls_opts_t tls;
    bool json;
} sess_args_t;

/* The request; 0 with resp (2xx), 1 the API said no (printed), 2 unreachable
 * (printed). */
static int call(const sess_args_t *a, const char *method, const char *target, cli_http_resp_t *r)
{
    char err[1024];
    char auth[1200];
    const char *hdrs[2] = {NULL, NULL};
    if (a->token && a->token[0]) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", a->token);
        hdrs[0] = auth;
    }
    buf_t t;
    buf_init(&t);
    const char *prefix = strcmp(a->base.path, "/") == 0 ? "" : a->base.path;
    size_t pl = strlen(prefix);
    buf_append(&t, prefix, pl && prefix[pl - 1] == '/' ? pl - 1 : pl);
    buf_puts(&t, target);
    int rc = cli_http_request(&a->base, method, t.p, hdrs, NULL, 0, &a->tls, HTTP_TIMEOUT_MS, r,
                              err, sizeof(err));
    memset(auth, 0, sizeof(auth));
    buf_free(&t);
    if (rc < 0) {
        fprintf(stderr,
                "hotplex sessions: cannot reach the admin API at %s://%s:%d: %s\n"
                "(is the gateway running, and is admin.listen that address? see --admin-url)\n",
                a->base.tls ? "https" : "http", a->base.host, a->base.port, err);
        return CLI_USAGE;
    }
    if (r->status >= 200 && r->status < 300) return 0;
    /* {"error":{"code","message"}} */
    char code[64] = "", msg[512] = "";
    json_tok_t tok[64];
    json_doc_t d;
    if (r->body.len && json_parse(&d, r->body.p, r->body.len, tok, 64) == 0) {
        int e = json_obj_get(&d, 0, "error");
        int c = json_obj_get(&d, e, "code"), m = json_obj_get(&d, e, "message");
        if (c >= 0) json_str_copy(&d, c, code, sizeof(code));
        if (m >= 0) json_str_copy(&d, m, msg, sizeof(msg));
    }
    if (!code[0] && !msg[0] && r->body.len) snprintf(msg, sizeof(msg), "%.200s", r->body.p);
    fprintf(stderr, "hotplex sessions: %s %s: HTTP %d %s%s%s%s%s\n", method, target, r->status,
            r->reason, code[0] || msg[0] ? ": " : "", code, code[0] && msg[0] ? ": " : "", msg);
    if (r->status == 401 || r->status == 403)
        fprintf(stderr, "(the admin token is missing, unknown or lacks the scope: --admin-token "
                        "or $HOTPLEX_ADMIN_TOKEN, a token from admin.tokens_file)\n");
    buf_free(&r->body);
    return CLI_FAIL;
}

static void val_text(const json_doc_t *d, int i, char *out, size_t cap)
{
    out[0] = '\0';
    if (i < 0) return;
    if (json_type(d, i) == JSON_STR) {
        if (json_str_copy(d, i, out, cap) < 0) snprintf(out, cap, "?");
        return;
    }
    size_t n = 0;
    const char *raw = json_raw(d, i, &n);
    if (!raw || json_is_null(d, i)) return;
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), raw);
}

static int first_of(const json_doc_t *d, int obj, const char *const *names)
{
    for (; *names; names++) {
        int i = json_obj_get(d, obj, *names);
        if (i >= 0 && !json_is_null(d, i)) return i;
    }
    return -1;
}

static void fmt_time(const json_doc_t *d, int i, char *out, size_t cap)
{
    int64_t v;
    if (i >= 0 && json_get_i64(d, i, &v) == 0) {
        time_t t = (time_t)(v > 100000000000LL ? v / 1000 : v); /* ms or s */
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
        return;
    }
    val_text(d, i, out, cap);
}

typedef struct row {
    char id[64], user[128], worker[32], state[16], last_seq[24], updated[40];
} row_t;

static const char *const F_ID[] = {"id", "session_id", NULL};
static const char *const F_USER[] = {"user", "owner", NULL};
static const char *const F_WORKER[] = {"worker_type", "worker", NULL};
static const char *const F_STATE[] = {"state", NULL};
static const char *const F_SEQ[] = {"last_seq", "seq", NULL};
static const char *const F_UPD[] = {"updated_ms", "updated_at", "updated", NULL};

static void row_of(const json_doc_t *d, int o, row_t *r)
{
    val_text(d, first_of(d, o, F_ID), r->id, sizeof(r->id));
    val_text(d, first_of(d, o, F_USER), r->user, sizeof(r->user));
    val_text(d, first_of(d, o, F_WORKER), r->worker, sizeof(r->worker));
    val_text(d, first_of(d, o, F_STATE), r->state, sizeof(r->state));
    val_text(d, first_of(d, o, F_SEQ), r->last_seq, sizeof(r->last_seq));
    fmt_time(d, first_of(d, o, F_UPD), r->updated, sizeof(r->updated));
}

static int parse_body(buf_t *body, json_doc_t *d, json_tok_t **tok)
{
    int n = 1024;
    for (;;) {
        json_tok_t *t = realloc(*tok, sizeof(**tok) * (size_t)n);
        if (!t) return -1;
        *tok = t;
        int rc = json_parse(d, body->p ? body->p : "", body->len, t, n);
        if (rc == 0) return 0;
        if (rc != -E2BIG || n > (1 << 24)) return -1;
        n *= 4;
    }
}

static int do_list(const sess_args_t *a, const char *user, const char *state, const char *limit,
                   const char *cursor)
{
    row_t *rows = NULL;
    size_t nrows = 0, caprows = 0;
    buf_t js; /* --json: the sessions of every page, joined */
    buf_init(&js);
    jw_t w;
    jw_init(&w, &js);
    jw_obj_begin(&w);
    jw_key(&w, "sessions");
    jw_arr_begin(&w);
    char next[1024] = "";
    if (cursor) snprintf(next, sizeof(next), "%s", cursor);
    json_tok_t *tok = NULL;
    int rc = CLI_OK;
    for (int page = 0; page < MAX_PAGES; page++) {
        buf_t t;
        buf_init(&t);
        buf_puts(&t, "/admin/sessions");
        char sep = '?';
        const char *keys[] = {"user", "state", "limit", "cursor"};
        const char *vals[] = {user, state, limit, next[0] ? next : NULL};
        for (int k = 0; k < 4; k++) {
            if (!vals[k]) continue;
            buf_printf(&t, "%c%s=", sep, keys[k]);
            cli_url_escape(&t, vals[k]);
            sep = '&';
        }
        cli_http_resp_t r;
        int c = call(a, "GET", t.p, &r);
        buf_free(&t);
        if (c) {
            rc = c;
            break;
        }
        json_doc_t d;
        if (parse_body(&r.body, &d, &tok) < 0 || json_type(&d, 0) != JSON_OBJ) {
            fprintf(stderr, "hotplex sessions: the admin API answered with something that is "
                            "not a JSON object\n");
            buf_free(&r.body);
            rc = CLI_FAIL;
            break;
        }
        int arr = json_obj_get(&d, 0, "sessions");
        if (json_type(&d, arr) != JSON_ARR) {
            fprintf(stderr, "hotplex sessions: no \"sessions\" array in the answer\n");
            buf_free(&r.body);
            rc = CLI_FAIL;
            break;
        }
        for (int i = 0, o; (o = json_arr_get(&d, arr, i)) >= 0; i++) {
            size_t n;
            const char *raw = json_raw(&d, o, &n);
            jw_raw(&w, raw, n);
            if (nrows == caprows) {
                caprows = caprows ? caprows * 2 : 64;
                row_t *nr = realloc(rows, sizeof(*rows) * caprows);
                if (!nr) {
                    rc = CLI_FAIL;
                    break;
                }
                rows = nr;
            }
            row_of(&d, o, &rows[nrows++]);
        }
        next[0] = '\0';
        int nc = json_obj_get(&d, 0, "next_cursor");
        if (nc >= 0 && json_type(&d, nc) == JSON_STR)
            json_str_copy(&d, nc, next, sizeof(next));
        else if (nc >= 0 && json_type(&d, nc) == JSON_PRIM && !json_is_null(&d, nc))
            val_text(&d, nc, next, sizeof(next));
        buf_free(&r.body);
        if (rc || !next[0] || limit) break;
    }
    free(tok);
    jw_arr_end(&w);
    jw_key(&w, "next_cursor");
    if (next[0] && limit)
        jw_str(&w, next);
    else
        jw_null(&w);
    jw_obj_end(&w);
    if (rc == CLI_OK) {
        if (a->json) {
            fwrite(js.p, 1, js.len, stdout);
            fputc('\n', stdout);
        } else {
            const char *h[6] = {"ID", "USER", "WORKER", "STATE", "LAST_SEQ", "UPDATED"};
            int wd[6];
            for (int k = 0; k < 6; k++)
                wd[k] = (int)strlen(h[k]);
            for (size_t i = 0; i < nrows; i++) {
                const char *f[6] = {rows[i].id,    rows[i].user,     rows[i].worker,
                                    rows[i].state, rows[i].last_seq, rows[i].updated};
                for (int k = 0; k < 6; k++)
                    if ((int)strlen(f[k]) > wd[k]) wd[k] = (int)strlen(f[k]);
            }
            printf("%-*s  %-*s  %-*s  %-*s  %*s  %s\n", wd[0], h[0], wd[1], h[1], wd[2], h[2],
                   wd[3], h[3], wd[4], h[4], h[5]);
            for (size_t i = 0; i < nrows; i++) {
                row_t *r = &rows[i];
                printf("%-*s  %-*s  %-*s  %-*s  %*s  %s\n", wd[0], r->id, wd[1], r->user, wd[2],
                       r->worker, wd[3], r->state, wd[4], r->last_seq, r->updated);
            }
            if (nrows == 0) fprintf(stderr, "(no sessions)\n");
        }
        if (next[0] && limit)
            fprintf(stderr, "more: hotplex sessions list --limit %s --cursor %s\n", limit, next);
    }
    free(rows);
    buf_free(&js);
    return rc;
}

static int do_show(const sess_args_t *a, const char *id)
{
    buf_t t;
    buf_init(&t);
    buf_puts(&t, "/admin/sessions/");
    cli_url_escape(&t, id);
    cli_http_resp_t r;
    int rc = call(a, "GET", t.p, &r);
    buf_free(&t);
    if (rc) return rc;
    if (a->json) {
        fwrite(r.body.p ? r.body.p : "", 1, r.body.len, stdout);
        if (!r.body.len || r.body.p[r.body.len - 1] != '\n') fputc('\n', stdout);
        buf_free(&r.body);
        return CLI_OK;
    }
    json_tok_t *tok = NULL;
    json_doc_t d;
    if (parse_body(&r.body, &d, &tok) < 0 || json_type(&d, 0) != JSON_OBJ) {
        fprintf(stderr, "hotplex sessions: the admin API answered with something that is not "
                        "a JSON object\n");
        free(tok);
        buf_free(&r.body);
        return CLI_FAIL;
    }
    int obj = 0;
    int inner = json_obj_get(&d, 0, "session"); /* {"session":{...}} or the object itself */
    if (inner >= 0 && json_type(&d, inner) == JSON_OBJ) obj = inner;
    int width = 0;
    for (int k = obj + 1; k < json_next(&d, obj); k = json_next(&d, k + 1)) {
        int l = d.tok[k].end - d.tok[k].start;
        if (l > width) width = l;
    }
    for (int k = obj + 1; k < json_next(&d, obj); k = json_next(&d, k + 1)) {
        char key[128], v[4096];
        json_str_copy(&d, k, key, sizeof(key));
        const char *kn = key;
        size_t kl = strlen(key);
        if (kl > 3 && strcmp(key + kl - 3, "_ms") == 0 && json_type(&d, k + 1) == JSON_PRIM) {
            char tm[40];
            fmt_time(&d, k + 1, tm, sizeof(tm));
            val_text(&d, k + 1, v, sizeof(v));
            printf("%-*s  %s (%s)\n", width, kn, v, tm);
            continue;
        }
        val_text(&d, k + 1, v, sizeof(v));
        printf("%-*s  %s\n", width, kn, v);
    }
    free(tok);
    buf_free(&r.body);
    return CLI_OK;
}

static int do_action(const sess_args_t *a, const char *id, bool del)
{
    buf_t t;
    buf_init(&t);
    buf_puts(&t, "/admin/sessions/");
    cli_url_escape(&t, id);
    if (!del) buf_puts(&t, "/terminate");
    cli_http_resp_t r;
    int rc = call(a, del ? "DELETE" : "POST", t.p, &r);
    buf_free(&t);
    if (rc) return rc;
    if (a->json) {
        fwrite(r.body.len ? r.body.p : "{}", 1, r.body.len ? r.body.len : 2, stdout);
        if (!r.body.len || r.body.p[r.body.len - 1] != '\n') fputc('\n', stdout);
    } else {
        printf("%s %s\n", del ? "deleted" : "terminated", id);
    }
    buf_free(&r.body);
    return CLI_OK;
}

int cmd_sessions(int argc, char **argv)
{
    sess_args_t a = {0};
    const char *url = getenv("HOTPLEX_ADMIN_URL");
    if (!url || !url[0]) url = "http://127.0.0.1:9999";
    a.token = getenv("HOTPLEX_ADMIN_TOKEN");
    const char *sub = NULL, *id = NULL, *user = NULL, *state = NULL, *limit = NULL, *cursor = NULL;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        if (cli_is_help(o)) {
            fputs(usage, stdout);
            return CLI_OK;
        }
        if (strcmp(o, "--json") == 0) {
            a.json = true;
            continue;
        }
        if (strcmp(o, "--insecure") == 0 || strcmp(o, "-k") == 0) {
            a.tls.insecure = true;
            continue;
        }
        int r = cli_optval(argc, argv, &i, "--admin-url", &url);
        if (r == 0) r = cli_optval(argc, argv, &i, "--admin-token", &a.token);
        if (r == 0) r = cli_optval(argc, argv, &i, "--user", &user);
        if (r == 0) r = cli_optval(argc, argv, &i, "--state", &state);
        if (r == 0) r = cli_optval(argc, argv, &i, "--limit", &limit);
        if (r == 0) r = cli_optval(argc, argv, &i, "--cursor", &cursor);
        if (r == 0) r = cli_optval(argc, argv, &i, "--ca", &a.tls.ca_file);
        if (r == 1) continue;
        if (r == 0 && o[0] != '-') {
            if (!sub)
                sub = o;
            else if (!id)
                id = o;
            else
                r = -1;
            if (r == 0) continue;
        }
        fprintf(stderr, "hotplex sessions: unknown or incomplete option \"%s\"\n\n%s", o, usage);
        return CLI_USAGE;
    }
    if (!sub) {
        fputs(usage, stderr);
        return CLI_USAGE;
    }
    bool list = strcmp(sub, "list") == 0 || strcmp(sub, "ls") == 0;
    bool show = strcmp(sub, "show") == 0 || strcmp(sub, "get") == 0;
    bool term = strcmp(sub, "terminate") == 0;
    bool del = strcmp(sub, "delete") == 0 || strcmp(sub, "rm") == 0;
    if (!list && !show && !term && !del) {
        fprintf(stderr, "hotplex sessions: unknown subcommand \"%s\"\n\n%s", sub, usage);
        return CLI_USAGE;
    }
    if (list ? id != NULL : !id || !id[0]) {
        fprintf(stderr, "hotplex sessions %s: %s\n\n%s", sub,
                list ? "takes no session id" : "which session ID?", usage);
        return CLI_USAGE;
    }
    if (limit) {
        char *e = NULL;
        long v = strtol(limit, &e, 10);
        if (!e || *e || v < 1) {
            fprintf(stderr, "hotplex sessions: --limit wants a number >= 1\n");
            return CLI_USAGE;
        }
    }
    char err[512];
    if (cli_url_parse(url, &a.base, err, sizeof(err)) < 0 ||
        (strcmp(a.base.scheme, "http") != 0 && strcmp(a.base.scheme, "https") != 0)) {
        fprintf(stderr, "hotplex sessions: --admin-url wants http://HOST:PORT: %s\n", url);
        return CLI_USAGE;
    }
    if (list) return do_list(&a, user, state, limit, cursor);
    if (show) return do_show(&a, id);
    return do_action(&a, id, del);
}
