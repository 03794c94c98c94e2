/*
 * doctor.c - `hotplex doctor`: checks the setup `hotplex serve` would run
 * with and says, one line per check, OK / WARN / FAIL and what to fix.
 *
 * Checks are read-only as far as possible: the data dir and the work dir are
 * probed with a temporary file that is removed again, the database is opened
 * read-only, the listen port is bound and released at once, the agent
 * binaries only run with --version (with a deadline).
 * Must never: print a secret (API keys, the JWT secret, TLS keys), modify the
 * database, or hang (every probe has a timeout).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libwebsockets.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>
#include <yaml.h>

#include "auth/auth.h"
#include "auth/policy.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/net.h"
#include "cli/ws.h"
#include "store/store.h"
#include "util/json.h"

#define PROBE_TIMEOUT_MS 3000
#define VERSION_TIMEOUT_MS 10000

static const char usage[] =
    "usage: hotplex doctor [--config FILE] [--set KEY=VALUE ...] [--url ws://HOST:PORT/ws]\n"
    "\n"
    "Checks the setup `hotplex serve` would run with (same configuration layers:\n"
    "--config or $HOTPLEX_CONFIG, HOTPLEX_* environment, --set) and prints one line per\n"
    "check: OK, WARN or FAIL, and for problems what to fix:\n"
    "  libraries   versions of libuv, libwebsockets, SQLite, OpenSSL, libyaml\n"
    "  config      the configuration loads and validates\n"
    "  data dir    server.data_dir exists (or can be created) and is writable\n"
    "  database    the SQLite store opens and its schema version is one this build knows\n"
    "  listen      server.listen is free, or a hotplex gateway already answers /health there\n"
    "  admin       admin.listen is free (or in use by that gateway)\n"
    "  claude      worker.claude_bin is found and `claude --version` runs\n"
    "  node        node is installed (Claude Code is installed and updated with npm)\n"
    "  work dir    worker.default_work_dir and worker.work_bases are usable\n"
    "  auth        credentials load; dev mode (no credentials) is a warning\n"
    "  tls         server.tls_cert_file/tls_key_file load, match and have not expired\n"
    "  --url URL   also probe a running gateway: /health and a WebSocket upgrade\n"
    "\n"
    "exit status: 0 no FAIL (warnings allowed), 1 at least one FAIL, 2 usage error.\n";

typedef struct doc {
    int fails, warns;
    bool color;
    hp_config_t cfg;
    bool gateway_on_listen;
} doc_t;

enum { RES_OK, RES_WARN, RES_FAIL };

__attribute__((format(printf, 4, 5))) static void report(doc_t *d, int res, const char *what,
                                                         const char *fmt, ...)
{
    static const char *const tag[] = {"OK  ", "WARN", "FAIL"};
    static const char *const col[] = {"\033[32m", "\033[33m", "\033[1;31m"};
    if (res == RES_FAIL) d->fails++;
    if (res == RES_WARN) d->warns++;
    if (d->color)
        printf("%s%s\033[0m", col[res], tag[res]);
    else
        fputs(tag[res], stdout);
    printf("  %-9s ", what);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* ---- helpers ---------------------------------------------------------- */

/* Runs argv[0] (a path) with argv, stdout+stderr captured (first line in
 * out), stdin /dev/null, within timeout_ms. Exit status, -1 could not run,
 * -2 timed out (killed). */
static int run_capture(char *const argv[], char *out, size_t cap, int timeout_ms)
{
    out[0] = '\0';
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        int dn = open("/dev/null", O_RDONLY);
        if (dn >= 0) dup2(dn, 0);
        dup2(p[1], 1);
        dup2(p[1], 2);
        signal(SIGPIPE, SIG_DFL);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    size_t n = 0;
    int64_t deadline = cli_now_ms() + timeout_ms;
    bool timed_out = false;
    for (;;) {
        int64_t left = deadline - cli_now_ms();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        struct pollfd pf = {.fd = p[0], .events = POLLIN};
        int r = poll(&pf, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            timed_out = r == 0;
            break;
        }
        char tmp[1024];
        ssize_t k = read(p[0], tmp, sizeof(tmp));
        if (k <= 0) break;
        for (ssize_t i = 0; i < k && n + 1 < cap; i++)
            out[n++] = tmp[i];
        out[n] = '\0';
    }
    close(p[0]);
    if (timed_out) {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    out[strcspn(out, "\r\n")] = '\0';
    if (timed_out) return -2;
    if (WIFEXITED(st)) return WEXITSTATUS(st) == 127 && !out[0] ? -1 : WEXITSTATUS(st);
    return -1;
}

/* Resolves a program name like execvp would. 1 found (path in out), 0 not
 * found, -1 found but not executable (path in out). */
static int which(const char *name, char *out, size_t cap)
{
    if (strchr(name, '/')) {
        snprintf(out, cap, "%s", name);
        struct stat st;
        if (stat(name, &st) < 0) return 0;
        return S_ISREG(st.st_mode) && access(name, X_OK) == 0 ? 1 : -1;
    }
    const char *path = getenv("PATH");
    if (!path || !path[0]) path = "/usr/local/bin:/usr/bin:/bin";
    int found = 0;
    while (*path) {
        size_t l = strcspn(path, ":");
        char cand[2048];
        snprintf(cand, sizeof(cand), "%.*s/%s", (int)l, l ? path : ".", name);
        struct stat st;
        if (stat(cand, &st) == 0 && S_ISREG(st.st_mode)) {
            if (access(cand, X_OK) == 0) {
                snprintf(out, cap, "%s", cand);
                return 1;
            }
            if (!found) snprintf(out, cap, "%s", cand);
            found = -1;
        }
        path += l;
        if (*path == ':') path++;
    }
    return found;
}

/* Creates and removes a file in dir. 0 or -errno. */
static int probe_writable(const char *dir)
{
    char p[1200];
    snprintf(p, sizeof(p), "%s/.hotplex-doctor-XXXXXX", dir);
    int fd = mkstemp(p);
    if (fd < 0) return -errno;
    int rc = write(fd, "x", 1) == 1 ? 0 : -errno;
    close(fd);
    unlink(p);
    return rc;
}

/* The closest existing ancestor of path (path itself if it exists). */
static void existing_ancestor(const char *path, char *out, size_t cap)
{
    snprintf(out, cap, "%s", path);
    struct stat st;
    while (stat(out, &st) < 0) {
        char *s = strrchr(out, '/');
        if (!s) {
            snprintf(out, cap, ".");
            return;
        }
        if (s == out) {
            out[1] = '\0';
            return;
        }
        *s = '\0';
    }
}

static bool is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0 ||
           strcmp(host, "::1") == 0;
}

/* Binds host:port and releases it. 0 free, or -errno. */
static int try_bind(const char *host, int port)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0) return -EADDRNOTAVAIL;
    int rc = -EADDRNOTAVAIL;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        rc = bind(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : -errno;
        close(fd);
        break;
    }
    freeaddrinfo(res);
    return rc;
}

/* GET /health on host:port. 1 a hotplex gateway answered (version in ver),
 * 0 something else answered or nothing did. */
static int probe_health(const char *host, int port, bool tls, char *ver, size_t cap, char *detail,
                        size_t dcap)
{
    cli_url_t u = {0};
    snprintf(u.scheme, sizeof(u.scheme), "%s", tls ? "https" : "http");
    u.tls = tls;
    snprintf(u.host, sizeof(u.host), "%s", strcmp(host, "0.0.0.0") == 0 ? "127.0.0.1" : host);
    u.port = port;
    snprintf(u.path, sizeof(u.path), "/");
    cli_tls_opts_t to = {.insecure = true};
    cli_http_resp_t r;
    char err[512];
    ver[0] = '\0';
    if (detail) detail[0] = '\0';
    if (cli_http_request(&u, "GET", "/health", NULL, NULL, 0, &to, PROBE_TIMEOUT_MS, &r, err,
                         sizeof(err)) < 0) {
        if (detail) snprintf(detail, dcap, "%.*s", (int)(dcap > 1 ? dcap - 1 : 0), err);
        return 0;
    }
    int ok = 0;
    json_tok_t t[128];
    json_doc_t d;
    if (r.status == 200 && json_parse(&d, r.body.p ? r.body.p : "", r.body.len, t, 128) == 0) {
        int v = json_obj_get(&d, 0, "version");
        if (json_obj_get(&d, 0, "status") >= 0 && v >= 0) {
            json_str_copy(&d, v, ver, cap);
            ok = 1;
            if (detail) {
                char s[32] = "?", c[32] = "?";
                size_t n;
                const char *x;
                if ((x = json_raw(&d, json_obj_get(&d, 0, "sessions"), &n)))
                    snprintf(s, sizeof(s), "%.*s", (int)n, x);
                if ((x = json_raw(&d, json_obj_get(&d, 0, "connections"), &n)))
                    snprintf(c, sizeof(c), "%.*s", (int)n, x);
                snprintf(detail, dcap, "%s sessions, %s connections", s, c);
            }
        }
    } else if (detail) {
        snprintf(detail, dcap, "HTTP %d", r.status);
    }
    buf_free(&r.body);
    return ok;
}

/* ---- checks ----------------------------------------------------------- */

static void check_libraries(doc_t *d)
{
    char lws[64];
    snprintf(lws, sizeof(lws), "%s", lws_get_library_version());
    size_t n = strlen(lws);
    while (n && (lws[n - 1] == '-' || lws[n - 1] == ' '))
        lws[--n] = '\0'; /* "4.1.6-": no git hash */
    report(d, RES_OK, "libraries",
           "hotplex %s: libuv %s, libwebsockets %s, SQLite %s, %s, libyaml %s", HOTPLEX_VERSION,
           uv_version_string(), lws, sqlite3_libversion(), OpenSSL_version(OPENSSL_VERSION),
           yaml_get_version_string());
    if (sqlite3_libversion_number() < SQLITE_VERSION_NUMBER)
        report(d, RES_WARN, "libraries", "SQLite %s at run time is older than %s at build time",
               sqlite3_libversion(), SQLITE_VERSION);
}

/* Layers applied one by one so a broken layer is reported and the later
 * checks still run with the rest. */
static void check_config(doc_t *d, const cli_cfg_args_t *a)
{
    extern char **environ;
    char err[1024];
    hp_config_t *c = &d->cfg;
    config_defaults(c);
    bool bad = false;
    const char *file = cli_config_file(a);
    if (file && config_load_file(c, file, err, sizeof(err)) < 0) {
        report(d, RES_FAIL, "config", "%s (fix the file; `hotplex config check %s` re-checks it)",
               err, file);
        bad = true;
    }
    if (config_load_env(c, environ, err, sizeof(err)) < 0) {
        report(d, RES_FAIL, "config", "%s (fix or unset that environment variable)", err);
        bad = true;
    }
    for (int i = 0; i < a->nsets; i++) {
        char kv[4096];
        snprintf(kv, sizeof(kv), "%s", a->sets[i]);
        char *eq = strchr(kv, '=');
        if (!eq) {
            report(d, RES_FAIL, "config", "--set wants KEY=VALUE, got \"%s\"", kv);
            bad = true;
            continue;
        }
        *eq = '\0';
        if (config_set_copy(c, kv, eq + 1, err, sizeof(err)) < 0) {
            report(d, RES_FAIL, "config", "--set %s", err);
            bad = true;
        }
    }
    if (config_validate(c, err, sizeof(err)) < 0) {
        report(d, RES_FAIL, "config", "invalid: %s", err);
        bad = true;
    }
    if (!bad)
        report(d, RES_OK, "config", "%s%s%s", file ? file : "built-in defaults",
               file ? " loads and validates" : " validate",
               file ? "" : " (no --config or $HOTPLEX_CONFIG)");
}

static void check_data_dir(doc_t *d)
{
    const char *dir = d->cfg.data_dir;
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            report(d, RES_FAIL, "data dir",
                   "%s is not a directory (fix: set server.data_dir / --data-dir to a directory)",
                   dir);
            return;
        }
        int rc = probe_writable(dir);
        if (rc < 0)
            report(d, RES_FAIL, "data dir",
                   "%s is not writable: %s (fix: chown/chmod it, or choose another "
                   "server.data_dir)",
                   dir, strerror(-rc));
        else
            report(d, RES_OK, "data dir", "%s is writable", dir);
        return;
    }
    char anc[1100];
    existing_ancestor(dir, anc, sizeof(anc));
    char parent[1100];
    snprintf(parent, sizeof(parent), "%s", dir);
    char *s = strrchr(parent, '/');
    if (s && s != parent)
        *s = '\0';
    else
        snprintf(parent, sizeof(parent), "%s", s ? "/" : ".");
    struct stat pst;
    if (stat(parent, &pst) < 0 || !S_ISDIR(pst.st_mode)) {
        report(d, RES_FAIL, "data dir",
               "%s does not exist and cannot be created: %s %s (serve creates only the last "
               "level; fix: mkdir -p it or choose another server.data_dir)",
               dir, parent, stat(parent, &pst) == 0 ? "is not a directory" : "does not exist");
        return;
    }
    int rc = probe_writable(parent);
    if (rc < 0)
        report(d, RES_FAIL, "data dir",
               "%s does not exist and %s is not writable: %s (fix: create it with the right "
               "owner, or choose another server.data_dir)",
               dir, parent, strerror(-rc));
    else
        report(d, RES_OK, "data dir", "%s will be created on the first start", dir);
}

static void check_database(doc_t *d)
{
    char path[1100];
    snprintf(path, sizeof(path), "%s/hotplex.db", d->cfg.data_dir);
    struct stat st;
    if (stat(path, &st) < 0) {
        report(d, RES_OK, "database", "%s not created yet (schema %d on the first start)", path,
               store_schema_version());
        return;
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
    sqlite3_busy_timeout(db, 2000);
    int ver = -1;
    long long sessions = -1;
    sqlite3_stmt *q = NULL;
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL);
    if (rc == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
        ver = sqlite3_column_int(q, 0);
    else if (rc == SQLITE_OK)
        rc = sqlite3_errcode(db);
    sqlite3_finalize(q);
    q = NULL;
    if (rc == SQLITE_OK && ver > 0 &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM sessions", -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW)
        sessions = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    int want = store_schema_version();
    if (rc != SQLITE_OK || ver < 0) {
        report(d, RES_FAIL, "database",
               "%s cannot be read: %s (fix: restore it from a backup or move it away to start "
               "empty)",
               path, msg);
    } else if (ver > want) {
        report(d, RES_FAIL, "database",
               "%s has schema version %d, newer than this build knows (%d) (fix: run the newer "
               "hotplex, or restore a backup)",
               path, ver, want);
    } else if (ver < want) {
        report(d, RES_OK, "database",
               "%s schema %d, migrated to %d on the next start (%lld sessions)", path, ver, want,
               sessions);
    } else {
        report(d, RES_OK, "database", "%s schema %d (current), %lld sessions", path, ver, sessions);
    }
}

static void check_listen(doc_t *d)
{
    const hp_config_t *c = &d->cfg;
    if (c->listen_port == 0) {
        report(d, RES_OK, "listen", "%s:0 (any free port)", c->listen_host);
    } else {
        int rc = try_bind(c->listen_host, c->listen_port);
        char ver[64], det[256];
        if (rc == 0) {
            report(d, RES_OK, "listen", "%s:%d is free", c->listen_host, c->listen_port);
        } else if (rc == -EADDRINUSE &&
                   probe_health(c->listen_host, c->listen_port, c->tls_cert_file[0] != '\0', ver,
                                sizeof(ver), det, sizeof(det))) {
            d->gateway_on_listen = true;
            report(d, RES_OK, "listen", "a hotplex gateway (%s) is already serving %s:%d (%s)", ver,
                   c->listen_host, c->listen_port, det);
        } else if (rc == -EADDRINUSE) {
            report(d, RES_FAIL, "listen",
                   "%s:%d is in use by another program (fix: stop it, or choose another "
                   "--listen / server.listen)",
                   c->listen_host, c->listen_port);
        } else {
            report(d, RES_FAIL, "listen", "cannot bind %s:%d: %s (fix: server.listen)",
                   c->listen_host, c->listen_port, strerror(-rc));
        }
    }
    if (!is_loopback(c->listen_host) && !c->tls_cert_file[0])
        report(d, RES_WARN, "listen",
               "%s is not loopback and TLS is off: credentials and conversations travel in "
               "clear (fix: server.tls_cert_file/tls_key_file, or a TLS proxy in front)",
               c->listen_host);
    if (c->admin_listen_port != 0) {
        int rc = try_bind(c->admin_listen_host, c->admin_listen_port);
        if (rc == 0)
            report(d, RES_OK, "admin", "%s:%d is free", c->admin_listen_host, c->admin_listen_port);
        else if (rc == -EADDRINUSE && d->gateway_on_listen)
            report(d, RES_OK, "admin", "%s:%d is in use (by the running gateway, presumably)",
                   c->admin_listen_host, c->admin_listen_port);
        else
            report(d, RES_WARN, "admin", "cannot bind %s:%d: %s (fix: admin.listen)",
                   c->admin_listen_host, c->admin_listen_port, strerror(-rc));
    }
}

static void check_claude(doc_t *d)
{
    const char *bin = d->cfg.claude_bin;
    char path[2048];
    int w = which(bin, path, sizeof(path));
    if (w == 0) {
        report(d, RES_FAIL, "claude",
               "worker.claude_bin \"%s\" not found%s (fix: install Claude Code, e.g. `npm "
               "install -g @anthropic-ai/claude-code`, or set worker.claude_bin to its path; "
               "the echo worker works without it)",
               bin, strchr(bin, '/') ? "" : " in PATH");
        return;
    }
    if (w < 0) {
        report(d, RES_FAIL, "claude",
               "%s is not an executable file (fix: chmod +x, or "
               "worker.claude_bin)",
               path);
        return;
    }
    char out[512];
    char *argv[] = {path, "--version", NULL};
    int rc = run_capture(argv, out, sizeof(out), VERSION_TIMEOUT_MS);
    if (rc == 0 && out[0])
        report(d, RES_OK, "claude", "%s (%s)", out, path);
    else if (rc == -2)
        report(d, RES_FAIL, "claude",
               "`%s --version` did not finish within %d s (fix: check the installation)", path,
               VERSION_TIMEOUT_MS / 1000);
    else {
        char why[64] = "";
        if (rc > 0)
            snprintf(why, sizeof(why), " with status %d", rc);
        else
            snprintf(why, sizeof(why), " to run");
        report(d, RES_FAIL, "claude", "`%s --version` failed%s%s%s (fix: reinstall Claude Code)",
               path, why, out[0] ? ": " : "", out);
    }
}

static void check_node(doc_t *d)
{
    char path[2048];
    if (which("node", path, sizeof(path)) != 1) {
        report(d, RES_WARN, "node",
               "node not found in PATH (needed to install and update Claude Code with npm; "
               "fix: install Node.js 18+)");
        return;
    }
    char out[256];
    char *argv[] = {path, "--version", NULL};
    int rc = run_capture(argv, out, sizeof(out), VERSION_TIMEOUT_MS);
    if (rc == 0)
        report(d, RES_OK, "node", "%s (%s)", out, path);
    else
        report(d, RES_WARN, "node", "`%s --version` failed (fix: reinstall Node.js)", path);
}

static void check_work_dir(doc_t *d)
{
    const hp_config_t *c = &d->cfg;
    bool bad = false;
    for (int i = 0; i < c->n_work_bases; i++) {
        struct stat st;
        const char *b = c->work_bases[i];
        if (stat(b, &st) < 0 || !S_ISDIR(st.st_mode)) {
            report(d, RES_FAIL, "work dir",
                   "worker.work_bases entry %s %s (fix: create it or remove the entry)", b,
                   stat(b, &st) < 0 ? "does not exist" : "is not a directory");
            bad = true;
        }
    }
    const char *wd = c->default_work_dir;
    struct stat st;
    if (stat(wd, &st) == 0) {
        char resolved[4096];
        const char *why = NULL;
        if (!S_ISDIR(st.st_mode)) {
            report(d, RES_FAIL, "work dir",
                   "worker.default_work_dir %s is not a directory (fix: point it at a directory)",
                   wd);
            return;
        }
        if (policy_work_dir(c, wd, resolved, sizeof(resolved), &why) < 0) {
            report(d, RES_FAIL, "work dir",
                   "worker.default_work_dir %s is refused by the policy: %s (fix: choose a "
                   "directory under worker.work_bases, not a system directory)",
                   wd, why ? why : "?");
            return;
        }
        int rc = probe_writable(resolved);
        if (rc < 0) {
            report(d, RES_FAIL, "work dir", "%s is not writable: %s (fix: chown/chmod it)",
                   resolved, strerror(-rc));
            return;
        }
        if (!bad)
            report(d, RES_OK, "work dir", "%s is usable%s", resolved,
                   c->n_work_bases ? " and inside worker.work_bases" : "");
        return;
    }
    char anc[1100];
    existing_ancestor(wd, anc, sizeof(anc));
    int rc = probe_writable(anc);
    if (rc < 0)
        report(d, RES_FAIL, "work dir",
               "worker.default_work_dir %s does not exist and cannot be created under %s: %s "
               "(fix: create it, or set worker.default_work_dir)",
               wd, anc, strerror(-rc));
    else if (!bad)
        report(d, RES_OK, "work dir", "%s will be created when the first agent starts", wd);
}

static void check_auth(doc_t *d)
{
    extern char **environ;
    const hp_config_t *c = &d->cfg;
    char err[1024], secret[1024];
    int have = config_jwt_secret(c, environ, secret, sizeof(secret), err, sizeof(err));
    if (have < 0) {
        report(d, RES_FAIL, "auth", "%s", err);
        return;
    }
    auth_opts_t o = {
        .keys_file = c->keys_file,
        .jwt_secret = have ? secret : NULL,
        .jwt_public_key_file = c->jwt_public_key_file,
        .jwt_audience = c->jwt_audience,
        .jwt_issuer = c->jwt_issuer,
        .bot_id = c->bot_id,
        .clock_skew_s = c->jwt_clock_skew_s,
    };
    auth_t *a = NULL;
    int rc = auth_new(&a, &o, err, sizeof(err));
    memset(secret, 0, sizeof(secret));
    if (rc < 0) {
        report(d, RES_FAIL, "auth", "%s", err);
        return;
    }
    if (auth_dev_mode(a)) {
        if (is_loopback(c->listen_host))
            report(d, RES_WARN, "auth",
                   "dev mode: no API keys or JWT key configured, every client is user "
                   "\"anonymous\" (loopback only; fix for real use: auth.keys_file or %s)",
                   HP_CONFIG_JWT_SECRET_ENV);
        else
            report(d, RES_FAIL, "auth",
                   "no credentials configured and server.listen %s is not loopback: serve "
                   "refuses to start (fix: auth.keys_file or %s, or listen on 127.0.0.1)",
                   c->listen_host, HP_CONFIG_JWT_SECRET_ENV);
    } else {
        report(d, RES_OK, "auth", "%zu API key(s)%s%s", auth_key_count(a),
               have ? ", JWT HS256" : "", c->jwt_public_key_file[0] ? ", JWT public key" : "");
    }
    auth_free(a);
}

static void check_tls(doc_t *d)
{
    const hp_config_t *c = &d->cfg;
    if (!c->tls_cert_file[0] && !c->tls_key_file[0]) {
        report(d, RES_OK, "tls", "off (plain ws://)");
        return;
    }
    if (!c->tls_cert_file[0] || !c->tls_key_file[0]) {
        report(d, RES_FAIL, "tls",
               "server.tls_cert_file and server.tls_key_file must be set together");
        return;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    const char *step = NULL;
    if (!ctx)
        step = "out of memory";
    else if (SSL_CTX_use_certificate_chain_file(ctx, c->tls_cert_file) != 1)
        step = "cannot load server.tls_cert_file (a PEM certificate chain)";
    else if (SSL_CTX_use_PrivateKey_file(ctx, c->tls_key_file, SSL_FILETYPE_PEM) != 1)
        step = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH
                   ? "the private key does not belong to the certificate"
                   : "cannot load server.tls_key_file (a PEM private key)";
    else if (SSL_CTX_check_private_key(ctx) != 1)
        step = "the private key does not belong to the certificate";
    if (step) {
        char e[256] = "";
        unsigned long ec = ERR_get_error();
        if (ec) ERR_error_string_n(ec, e, sizeof(e));
        ERR_clear_error();
        report(d, RES_FAIL, "tls", "%s (%s, %s)%s%s", step, c->tls_cert_file, c->tls_key_file,
               e[0] ? ": " : "", e);
        SSL_CTX_free(ctx);
        return;
    }
    X509 *x = SSL_CTX_get0_certificate(ctx);
    char cn[256] = "?", until[64] = "?";
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn));
    const ASN1_TIME *na = X509_get0_notAfter(x);
    BIO *b = BIO_new(BIO_s_mem());
    if (b && ASN1_TIME_print(b, na) == 1) {
        int n = BIO_read(b, until, sizeof(until) - 1);
        until[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
    int days = 0, secs = 0;
    ASN1_TIME_diff(&days, &secs, NULL, na);
    if (days < 0 || (days == 0 && secs < 0))
        report(d, RES_FAIL, "tls", "certificate CN=%s expired %s (fix: renew it)", cn, until);
    else if (days < 30)
        report(d, RES_WARN, "tls",
               "certificate CN=%s expires %s, in %d day(s), key matches (fix: renew it)", cn, until,
               days);
    else
        report(d, RES_OK, "tls", "certificate CN=%s valid until %s, key matches", cn, until);
    SSL_CTX_free(ctx);
}

static void check_url(doc_t *d, const char *url_s, const cli_tls_opts_t *tls)
{
    cli_url_t u;
    char err[1024];
    if (cli_url_parse(url_s, &u, err, sizeof(err)) < 0) {
        report(d, RES_FAIL, "url", "%s", err);
        return;
    }
    char ver[64], det[256];
    if (probe_health(u.host, u.port, u.tls, ver, sizeof(ver), det, sizeof(det)))
        report(d, RES_OK, "url", "%s: gateway %s answers /health (%s)", url_s, ver, det);
    else
        report(d, RES_FAIL, "url",
               "%s: no hotplex /health answer: %s (fix: start `hotplex serve`, check the "
               "address)",
               url_s, det);
    if (strcmp(u.scheme, "ws") != 0 && strcmp(u.scheme, "wss") != 0) return;
    cli_ws_t ws;
    int rc = cli_ws_connect(&ws, &u, NULL, tls, PROBE_TIMEOUT_MS, err, sizeof(err));
    if (rc == 0) {
        report(d, RES_OK, "url", "%s: WebSocket upgrade accepted", url_s);
        cli_ws_close(&ws, 1000, "doctor", 500);
    } else {
        report(d, RES_FAIL, "url", "%s: %s", url_s, err);
    }
    cli_ws_free(&ws);
}

int cmd_doctor(int argc, char **argv)
{
    static doc_t doc;
    doc_t *d = &doc;
    memset(d, 0, sizeof(*d));
    cli_cfg_args_t a = {0};
    cli_tls_opts_t tls = {0};
    const char *url = NULL;
    char err[512];
    for (int i = 2; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(usage, stdout);
            return CLI_OK;
        }
        if (strcmp(argv[i], "--insecure") == 0 || strcmp(argv[i], "-k") == 0) {
            tls.insecure = true;
            continue;
        }
        int r = cli_cfg_opt(argc, argv, &i, &a, err, sizeof(err));
        if (r == 0) r = cli_optval(argc, argv, &i, "--url", &url);
        if (r == 0) r = cli_optval(argc, argv, &i, "--ca", &tls.ca_file);
        if (r == 1) continue;
        fprintf(stderr, "hotplex doctor: unknown or incomplete option \"%s\"\n\n%s", argv[i],
                usage);
        return CLI_USAGE;
    }
    signal(SIGPIPE, SIG_IGN);
    d->color = cli_color_ok(1);
    check_libraries(d);
    check_config(d, &a);
    check_data_dir(d);
    check_database(d);
    check_listen(d);
    check_claude(d);
    check_node(d);
    check_work_dir(d);
    check_auth(d);
    check_tls(d);
    if (url) check_url(d, url, &tls);
    config_free(&d->cfg);
    printf("%d problem(s), %d warning(s)\n", d->fails, d->warns);
    return d->fails ? CLI_FAIL : CLI_OK;
}
